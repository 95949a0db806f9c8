//! Flag evaluation, decision for decision the same as Flipt's client-side
//! engine (`flipt-engine-ffi` 0.21.4, shipped in `flipt-client` 1.4.5).
//!
//! Written here rather than taken from a crate: Flipt's own evaluation crate
//! is not published on crates.io, and the `flipt` crate only calls a server.
//! `tests/flags.rs` compares this code with decisions recorded from that
//! engine (bucketing and every constraint operator).

use super::model::{Constraint, ConstraintType, Features, Flag, FlagType, MatchType, Op, Operand, Rollout, SegmentOperator};
use serde::Serialize;
use serde_json::Value;
use std::collections::HashMap;

/// The context of an evaluation: string keys to string values, as Flipt takes it.
pub type Context = HashMap<String, String>;

/// Why an evaluation came out as it did (Flipt's names).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
pub enum Reason {
    #[serde(rename = "MATCH")]
    Match,
    #[serde(rename = "DEFAULT")]
    Default,
    #[serde(rename = "UNKNOWN")]
    Unknown,
    #[serde(rename = "FLAG_DISABLED")]
    FlagDisabled,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Match => "MATCH",
            Reason::Default => "DEFAULT",
            Reason::Unknown => "UNKNOWN",
            Reason::FlagDisabled => "FLAG_DISABLED",
        }
    }

    /// Flipt's REST names (`MATCH_EVALUATION_REASON`, ...) and the short ones.
    pub fn parse(s: &str) -> Option<Reason> {
        Some(match s.trim_end_matches("_EVALUATION_REASON") {
            "MATCH" => Reason::Match,
            "DEFAULT" => Reason::Default,
            "UNKNOWN" => Reason::Unknown,
            "FLAG_DISABLED" => Reason::FlagDisabled,
            _ => return None,
        })
    }
}

/// The answer for one flag and entity.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Evaluation {
    pub flag: String,
    pub flag_type: FlagType,
    /// Variant flags: whether a rule matched (Flipt's `match`). Boolean flags: whether a rollout did.
    #[serde(rename = "match")]
    pub matched: bool,
    /// Variant flags: the variant key, `""` when none.
    pub variant: String,
    pub attachment: Option<Value>,
    /// Boolean flags: the value.
    pub enabled: bool,
    pub reason: Reason,
    pub segment_keys: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EvalError {
    #[error("flag `{flag}` not found in namespace `{namespace}`")]
    NotFound { namespace: String, flag: String },
    #[error("flag `{flag}` is a {actual} flag, not a {expected} flag")]
    WrongType { flag: String, expected: &'static str, actual: &'static str },
    /// Flipt refuses an evaluation without an entity id.
    #[error("flag `{flag}`: the entity id is empty, and Flipt evaluates only for an entity")]
    EmptyEntity { flag: String },
}

/// Flipt's bucket count for variant distributions.
const BUCKETS: u32 = 1000;

impl Features {
    /// The flag, if it exists and `entity_id` is one Flipt evaluates for.
    fn checked(&self, flag: &str, entity_id: &str) -> Result<&Flag, EvalError> {
        let f = self.flag(flag).ok_or_else(|| EvalError::NotFound { namespace: self.namespace.clone(), flag: flag.to_string() })?;
        if entity_id.is_empty() {
            return Err(EvalError::EmptyEntity { flag: flag.to_string() });
        }
        Ok(f)
    }

    /// Evaluate a flag of either type.
    pub fn evaluate(&self, flag: &str, entity_id: &str, ctx: &Context) -> Result<Evaluation, EvalError> {
        let f = self.checked(flag, entity_id)?;
        Ok(match f.ty {
            FlagType::Variant => self.variant_of(f, entity_id, ctx),
            FlagType::Boolean => self.boolean_of(f, entity_id, ctx),
        })
    }

    /// Evaluate a variant flag (an error for a boolean flag, as Flipt's variant API).
    pub fn variant(&self, flag: &str, entity_id: &str, ctx: &Context) -> Result<Evaluation, EvalError> {
        let f = self.checked(flag, entity_id)?;
        if f.ty != FlagType::Variant {
            return Err(EvalError::WrongType { flag: flag.to_string(), expected: "variant", actual: "boolean" });
        }
        Ok(self.variant_of(f, entity_id, ctx))
    }

    /// Evaluate a boolean flag (an error for a variant flag, as Flipt's boolean API).
    pub fn boolean(&self, flag: &str, entity_id: &str, ctx: &Context) -> Result<Evaluation, EvalError> {
        let f = self.checked(flag, entity_id)?;
        if f.ty != FlagType::Boolean {
            return Err(EvalError::WrongType { flag: flag.to_string(), expected: "boolean", actual: "variant" });
        }
        Ok(self.boolean_of(f, entity_id, ctx))
    }

    fn variant_of(&self, f: &Flag, entity_id: &str, ctx: &Context) -> Evaluation {
        let default = f.default_variant.map(|i| &f.variants[i]);
        let mut out = Evaluation {
            flag: f.key.clone(),
            flag_type: FlagType::Variant,
            matched: false,
            variant: default.map(|v| v.key.clone()).unwrap_or_default(),
            attachment: default.and_then(|v| v.attachment.clone()),
            enabled: false,
            reason: if default.is_some() { Reason::Default } else { Reason::Unknown },
            segment_keys: Vec::new(),
        };
        if !f.enabled {
            out.reason = Reason::FlagDisabled;
            return out;
        }
        for rule in &f.rules {
            let Some(keys) = self.segments_match(&rule.segments, rule.operator, entity_id, ctx) else { continue };
            out.segment_keys = keys;
            out.matched = true;
            out.reason = Reason::Match;
            let valid: Vec<_> = rule.distributions.iter().filter(|d| d.rollout > 0.0).collect();
            if valid.is_empty() {
                return out;
            }
            let bucket = crc32(&[f.key.as_bytes(), entity_id.as_bytes()]) % BUCKETS;
            let total: f32 = valid.iter().map(|d| d.rollout).sum();
            let mut cumulative = 0f32;
            let last = valid.len() - 1;
            for (i, d) in valid.iter().enumerate() {
                cumulative += d.rollout;
                // f32::round rounds half away from zero, as Flipt's engine does.
                let bound = if i == last { BUCKETS } else { (cumulative / total * 100.0 * 10.0).round() as u32 };
                if bound > bucket {
                    let v = &f.variants[d.variant];
                    out.variant = v.key.clone();
                    out.attachment = v.attachment.clone();
                    return out;
                }
            }
            return out;
        }
        out
    }

    fn boolean_of(&self, f: &Flag, entity_id: &str, ctx: &Context) -> Evaluation {
        let mut out = Evaluation {
            flag: f.key.clone(),
            flag_type: FlagType::Boolean,
            matched: false,
            variant: String::new(),
            attachment: None,
            enabled: f.enabled,
            reason: Reason::Default,
            segment_keys: Vec::new(),
        };
        for r in &f.rollouts {
            match r {
                Rollout::Threshold { percentage, value } => {
                    // Entity first, then the flag key: the reverse of variant bucketing.
                    let n = crc32(&[entity_id.as_bytes(), f.key.as_bytes()]) % 100;
                    if (n as f32) < *percentage {
                        out.enabled = *value;
                        out.matched = true;
                        out.reason = Reason::Match;
                        return out;
                    }
                }
                Rollout::Segment { segments, operator, value } => {
                    if let Some(keys) = self.segments_match(segments, *operator, entity_id, ctx) {
                        out.enabled = *value;
                        out.matched = true;
                        out.reason = Reason::Match;
                        out.segment_keys = keys;
                        return out;
                    }
                }
            }
        }
        out
    }

    /// The keys of the matching segments when the set matches under `op`.
    fn segments_match(&self, segments: &[usize], op: SegmentOperator, entity_id: &str, ctx: &Context) -> Option<Vec<String>> {
        let mut keys = Vec::new();
        for &i in segments {
            let s = &self.segments[i];
            if segment_matches(s.match_type, &s.constraints, entity_id, ctx) {
                keys.push(s.key.clone());
            }
        }
        let ok = match op {
            SegmentOperator::Or => !keys.is_empty(),
            SegmentOperator::And => keys.len() == segments.len(),
        };
        ok.then_some(keys)
    }
}

fn crc32(parts: &[&[u8]]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    for p in parts {
        h.update(p);
    }
    h.finalize()
}

/// Whether a segment matches: no constraints matches everyone; ALL needs
/// every constraint, ANY at least one.
pub fn segment_matches(match_type: MatchType, constraints: &[Constraint], entity_id: &str, ctx: &Context) -> bool {
    if constraints.is_empty() {
        return true;
    }
    let mut one = |c: &Constraint| {
        let v = match c.ty {
            ConstraintType::EntityId => entity_id,
            _ => ctx.get(&c.property).map_or("", String::as_str),
        };
        constraint_matches(c, v)
    };
    match match_type {
        MatchType::All => constraints.iter().all(&mut one),
        MatchType::Any => constraints.iter().any(&mut one),
    }
}

/// One constraint against the context value (`""` when the key is missing).
pub fn constraint_matches(c: &Constraint, v: &str) -> bool {
    match c.ty {
        ConstraintType::String | ConstraintType::EntityId => match c.op {
            Op::Empty => return v.is_empty(),
            Op::NotEmpty => return !v.is_empty(),
            _ => {}
        },
        _ => match c.op {
            Op::Present => return !v.is_empty(),
            Op::NotPresent => return v.is_empty(),
            _ => {}
        },
    }
    if v.is_empty() {
        return false;
    }
    match c.ty {
        ConstraintType::String | ConstraintType::EntityId => {
            let value = c.value.as_str();
            match (c.op, &c.operand) {
                (Op::Eq, _) => v == value,
                (Op::Neq, _) => v != value,
                (Op::Prefix, _) => v.starts_with(value),
                (Op::Suffix, _) => v.ends_with(value),
                (Op::Contains, _) => v.contains(value),
                (Op::NotContains, _) => !v.contains(value),
                (Op::IsOneOf, Operand::Strings(list)) => list.iter().any(|s| s == v),
                (Op::IsNotOneOf, Operand::Strings(list)) => !list.iter().any(|s| s == v),
                _ => false,
            }
        }
        ConstraintType::Number => {
            let Ok(n) = v.parse::<i32>() else { return false };
            match (c.op, &c.operand) {
                (Op::IsOneOf, Operand::Numbers(list)) => list.contains(&n),
                (Op::IsNotOneOf, Operand::Numbers(list)) => !list.contains(&n),
                (op, Operand::Number(x)) => compare(op, n.cmp(x)),
                _ => false,
            }
        }
        ConstraintType::Boolean => matches!((c.op, v), (Op::True, "true") | (Op::False, "false")),
        ConstraintType::DateTime => {
            let (Some(t), Operand::Time(x)) = (super::model::parse_time(v), &c.operand) else { return false };
            compare(c.op, t.cmp(x))
        }
    }
}

fn compare(op: Op, ord: std::cmp::Ordering) -> bool {
    use std::cmp::Ordering::*;
    match op {
        Op::Eq => ord == Equal,
        Op::Neq => ord != Equal,
        Op::Lt => ord == Less,
        Op::Lte => ord != Greater,
        Op::Gt => ord == Greater,
        Op::Gte => ord != Less,
        _ => false,
    }
}

/// A context from the JSON object a run carries: its string values. Like
/// Flipt's client engine, which takes a map of strings, values of other
/// types (numbers, booleans, objects, null) are left out, so a constraint
/// on them sees a missing key.
pub fn context_of(v: &Value) -> Context {
    let mut ctx = Context::new();
    if let Some(m) = v.as_object() {
        for (k, v) in m {
            if let Value::String(s) = v {
                ctx.insert(k.clone(), s.clone());
            }
        }
    }
    ctx
}
