//! From a workflow's `backend:` rollout rule and a flag evaluation to the
//! backend a run goes to, and the [`Routing`] record kept on the run.
//!
//! A variant flag picks the backend its variant key maps to in `variants`;
//! a boolean flag picks `enabled` or `disabled`. Anything else (no variant,
//! a variant the rule does not map, an evaluation error) goes to the rule's
//! `default`, and an error is recorded as such: never silently.

use super::eval::Evaluation;
use super::model::FlagType;
use crate::run::Routing;
use crate::spec::raw::Rollout;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

/// The flag type a rule expects: `enabled`/`disabled` without `variants` is boolean.
pub fn expected_type(rule: &Rollout) -> FlagType {
    if rule.variants.is_empty() && (rule.enabled.is_some() || rule.disabled.is_some()) { FlagType::Boolean } else { FlagType::Variant }
}

/// The routing of a run: `fallback_backend` is the rule's `default`, else
/// the engine's default backend.
pub fn decide(rule: &Rollout, evaluation: Result<&Evaluation, String>, fallback_backend: &str) -> Routing {
    let default = rule.default.clone().unwrap_or_else(|| fallback_backend.to_string());
    match evaluation {
        Err(error) => Routing {
            flag: rule.flag.clone(),
            variant: None,
            reason: "ERROR".into(),
            backend: default,
            error: Some(error),
            ..Default::default()
        },
        Ok(e) => {
            let (variant, enabled, chosen) = match e.flag_type {
                FlagType::Variant => {
                    let v = Some(e.variant.clone()).filter(|v| !v.is_empty());
                    let chosen = v.as_ref().and_then(|v| rule.variants.get(v)).cloned();
                    (v, None, chosen)
                }
                FlagType::Boolean => {
                    let chosen = if e.enabled { rule.enabled.clone() } else { rule.disabled.clone() };
                    (None, Some(e.enabled), chosen)
                }
            };
            Routing {
                flag: rule.flag.clone(),
                variant,
                reason: e.reason.as_str().to_string(),
                backend: chosen.unwrap_or(default),
                enabled,
                segment_keys: e.segment_keys.clone(),
                ..Default::default()
            }
        }
    }
}

/// Counters of routing decisions, shared by the engine (which counts) and
/// every API router (which exposes them under `/metrics`).
#[derive(Debug, Clone, Default)]
pub struct RoutingMetrics {
    decisions: Family<DecisionLabels, Counter>,
    errors: Family<ErrorLabels, Counter>,
    fallbacks: Family<FallbackLabels, Counter>,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DecisionLabels {
    workflow: String,
    flag: String,
    variant: String,
    reason: String,
    backend: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ErrorLabels {
    workflow: String,
    flag: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FallbackLabels {
    workflow: String,
    from: String,
    to: String,
}

impl RoutingMetrics {
    /// Count a run's final routing (after any fallback).
    pub fn record(&self, workflow: &str, r: &Routing) {
        self.decisions
            .get_or_create(&DecisionLabels {
                workflow: workflow.into(),
                flag: r.flag.clone(),
                variant: r.variant.clone().or_else(|| r.enabled.map(|e| e.to_string())).unwrap_or_default(),
                reason: r.reason.clone(),
                backend: r.backend.clone(),
            })
            .inc();
        if r.error.is_some() {
            self.errors.get_or_create(&ErrorLabels { workflow: workflow.into(), flag: r.flag.clone() }).inc();
        }
        if let Some(f) = &r.fallback {
            self.fallbacks.get_or_create(&FallbackLabels { workflow: workflow.into(), from: f.from.clone(), to: r.backend.clone() }).inc();
        }
    }

    /// Register the counters (`taskweave_routing_decisions_total`,
    /// `taskweave_flag_evaluation_errors_total`, `taskweave_routing_fallbacks_total`
    /// under a `taskweave` prefix).
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "routing_decisions",
            "Runs routed by a flag, by workflow, flag, variant (or boolean value), reason and backend",
            self.decisions.clone(),
        );
        registry.register(
            "flag_evaluation_errors",
            "Flag evaluations that failed (the rule's default backend was used), by workflow and flag",
            self.errors.clone(),
        );
        registry.register(
            "routing_fallbacks",
            "Routed runs refused by the chosen backend and sent to the rule's default, by workflow and backends",
            self.fallbacks.clone(),
        );
    }
}
