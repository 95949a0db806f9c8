//! `GET /metrics`: Prometheus figures of one router.
//!
//! Each router owns its [`Metrics`] (a `prometheus-client` registry, no
//! global state), fed by a background task that listens to the engine's run
//! events and the registry's reload reports. The feed never slows the
//! engine: it reads broadcast channels (a lagging feed skips events and
//! counts them in `taskweave_events_missed_total`) and looks run details up
//! off its own loop. Starts are counted within half a second, with the end
//! for short runs.
//!
//! Exposed series (Prometheus text format 0.0.4):
//! - `taskweave_runs_started_total{workflow, backend}`
//! - `taskweave_runs_finished_total{workflow, backend, status}`
//! - `taskweave_task_duration_seconds{workflow, status}` (histogram, first start to final end of a task)
//! - `taskweave_reloads_total{outcome}` (`success` or `failure`)
//! - `taskweave_active_runs{workflow}` (gauge)
//! - `taskweave_events_missed_total`
//! - `taskweave_routed_runs_finished_total{workflow, backend, variant, status}` (runs a flag routed)
//! - `taskweave_routing_decisions_total{workflow, flag, variant, reason, backend}`,
//!   `taskweave_flag_evaluation_errors_total{workflow, flag}` and
//!   `taskweave_routing_fallbacks_total{workflow, from, to}`: counted by the
//!   engine when runs are created (shared by every router of one engine)
//! - `taskweave_store_write_errors_total` (writes to the run store that
//!   failed) and `taskweave_store_healthy` (0 from a failed write until one
//!   succeeds): kept by the store, shared by every router of one engine

use crate::engine::{Engine, EngineError};
use crate::reload::ReloadReport;
use crate::run::executor::RunEvent;
use crate::run::{RunResult, RunStatus};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};
use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::broadcast::error::RecvError;
use tokio_util::sync::CancellationToken;

/// The `Content-Type` of the exposition.
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// Upper bounds of the task duration buckets, in seconds.
const DURATION_BUCKETS: [f64; 18] =
    [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0];

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StartedLabels {
    workflow: String,
    backend: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FinishedLabels {
    workflow: String,
    backend: String,
    status: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RoutedLabels {
    workflow: String,
    backend: String,
    variant: String,
    status: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TaskLabels {
    workflow: String,
    status: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReloadLabels {
    outcome: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct WorkflowLabels {
    workflow: String,
}

type HistogramFamily = Family<TaskLabels, Histogram, fn() -> Histogram>;

fn duration_histogram() -> Histogram {
    Histogram::new(DURATION_BUCKETS)
}

/// The metrics of one router.
pub struct Metrics {
    registry: Registry,
    runs_started: Family<StartedLabels, Counter>,
    runs_finished: Family<FinishedLabels, Counter>,
    routed_finished: Family<RoutedLabels, Counter>,
    task_duration: HistogramFamily,
    reloads: Family<ReloadLabels, Counter>,
    active_runs: Family<WorkflowLabels, Gauge>,
    events_missed: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        Self::build(None, None)
    }

    /// Metrics that also expose an engine's routing counters.
    pub fn with_routing(routing: &crate::flags::routing::RoutingMetrics) -> Self {
        Self::build(Some(routing), None)
    }

    /// Metrics that also expose an engine's routing counters and the
    /// write health of its store.
    pub fn of_engine(engine: &Engine) -> Self {
        Self::build(Some(engine.routing_metrics()), engine.store().map(|s| &**s.health()))
    }

    fn build(routing: Option<&crate::flags::routing::RoutingMetrics>, store: Option<&crate::store::StoreHealth>) -> Self {
        let mut registry = Registry::with_prefix("taskweave");
        let runs_started = Family::<StartedLabels, Counter>::default();
        let runs_finished = Family::<FinishedLabels, Counter>::default();
        let routed_finished = Family::<RoutedLabels, Counter>::default();
        let task_duration: HistogramFamily = Family::new_with_constructor(duration_histogram);
        let reloads = Family::<ReloadLabels, Counter>::default();
        let active_runs = Family::<WorkflowLabels, Gauge>::default();
        let events_missed = Counter::default();
        registry.register("runs_started", "Runs that started, by workflow and backend", runs_started.clone());
        registry.register("runs_finished", "Runs that ended, by workflow, backend and final status", runs_finished.clone());
        registry.register(
            "routed_runs_finished",
            "Runs routed by a flag that ended, by workflow, backend, variant (or boolean value) and final status",
            routed_finished.clone(),
        );
        if let Some(r) = routing {
            r.register(&mut registry);
        }
        if let Some(s) = store {
            s.register(&mut registry);
        }
        registry.register_with_unit(
            "task_duration",
            "Task durations from first start to final end, by workflow and final status",
            Unit::Seconds,
            task_duration.clone(),
        );
        registry.register("reloads", "Workflow reloads that changed something or failed, by outcome", reloads.clone());
        registry.register("active_runs", "Runs in flight, by workflow", active_runs.clone());
        registry.register("events_missed", "Run and reload events the metrics feed skipped because it lagged", events_missed.clone());
        Metrics { registry, runs_started, runs_finished, routed_finished, task_duration, reloads, active_runs, events_missed }
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(4096);
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::prometheus_text::encode(&mut out, &self.registry);
        out
    }

    fn started(&self, workflow: &str, backend: &str) {
        self.runs_started.get_or_create(&StartedLabels { workflow: workflow.into(), backend: backend.into() }).inc();
    }

    fn finished(&self, workflow: &str, status: &str, result: Option<&RunResult>) {
        let backend = result.map_or("unknown", |r| r.backend.as_str());
        self.runs_finished
            .get_or_create(&FinishedLabels { workflow: workflow.into(), backend: backend.into(), status: status.into() })
            .inc();
        let Some(r) = result else { return };
        if let Some(routing) = &r.routing {
            let variant = routing.variant.clone().or_else(|| routing.enabled.map(|e| e.to_string())).unwrap_or_default();
            self.routed_finished
                .get_or_create(&RoutedLabels { workflow: workflow.into(), backend: backend.into(), variant, status: status.into() })
                .inc();
        }
        for t in r.tasks.values() {
            if let (Some(a), Some(b)) = (t.started_at, t.finished_at)
                && t.status.is_terminal()
            {
                let secs = (b - a).as_seconds_f64().max(0.0);
                self.task_duration.get_or_create(&TaskLabels { workflow: workflow.into(), status: t.status.as_str().into() }).observe(secs);
            }
        }
    }

    fn active(&self, workflow: &str) -> Gauge {
        self.active_runs.get_or_create_owned(&WorkflowLabels { workflow: workflow.into() })
    }

    fn missed(&self, n: u64) {
        self.events_missed.inc_by(n);
    }

    fn reload(&self, r: &ReloadReport) {
        let outcome = if r.failed.is_empty() { "success" } else { "failure" };
        self.reloads.get_or_create(&ReloadLabels { outcome: outcome.into() }).inc();
    }
}

/// A run's result, for its backend and task times. A run announced before
/// the engine has recorded where it went is retried briefly.
async fn lookup(engine: &Engine, run_id: &str) -> Option<RunResult> {
    for i in 0..10u32 {
        match engine.get_result(run_id, None).await {
            Ok(r) => return Some(r),
            Err(EngineError::RunNotFound(_)) => tokio::time::sleep(Duration::from_millis(2u64 << i.min(6))).await,
            Err(e) => {
                tracing::debug!(run_id, "metrics: cannot read the run: {e}");
                return None;
            }
        }
    }
    None
}

/// A run seen starting and not yet seen ending.
struct InFlight {
    workflow: String,
    since: Instant,
    /// Whether `runs_started` has counted it (or a look-up doing so is under way).
    counted: bool,
}

/// How often runs still in flight get their start counted.
const SWEEP: Duration = Duration::from_millis(500);

/// Feed `metrics` from the engine until `stop` is cancelled.
///
/// A run's backend is not in its events, so it is read from the run: once
/// when the run ends (counting its start, its end and its task durations
/// together), or, for a run still going after [`SWEEP`], once to count its
/// start. Short runs, the common case, cost one look-up.
pub fn spawn_feed(engine: Engine, metrics: Arc<Metrics>, stop: CancellationToken) {
    let mut runs = engine.subscribe();
    let mut reloads = engine.registry().subscribe();
    tokio::spawn(async move {
        let mut in_flight: HashMap<String, InFlight> = HashMap::new();
        let mut reloads_open = true;
        let mut sweep = tokio::time::interval(SWEEP);
        sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                ev = runs.recv() => match ev {
                    Ok(ev) => on_run_event(&engine, &metrics, &mut in_flight, ev),
                    Err(RecvError::Lagged(n)) => metrics.missed(n),
                    Err(RecvError::Closed) => return,
                },
                r = reloads.recv(), if reloads_open => match r {
                    Ok(r) => metrics.reload(&r),
                    Err(RecvError::Lagged(n)) => metrics.missed(n),
                    Err(RecvError::Closed) => reloads_open = false,
                },
                _ = sweep.tick() => {
                    for (id, run) in in_flight.iter_mut().filter(|(_, r)| !r.counted && r.since.elapsed() >= SWEEP / 2) {
                        run.counted = true;
                        let (engine, metrics, id, workflow) = (engine.clone(), Arc::clone(&metrics), id.clone(), run.workflow.clone());
                        tokio::spawn(async move {
                            let backend = lookup(&engine, &id).await.map(|r| r.backend);
                            metrics.started(&workflow, backend.as_deref().unwrap_or("unknown"));
                        });
                    }
                }
            }
        }
    });
}

fn on_run_event(engine: &Engine, metrics: &Arc<Metrics>, in_flight: &mut HashMap<String, InFlight>, ev: RunEvent) {
    if ev.task.is_some() {
        // Task durations come from the run's result when it ends.
        return;
    }
    let Some(status) = RunStatus::parse(&ev.status) else { return };
    if status == RunStatus::Running {
        if let Entry::Vacant(slot) = in_flight.entry(ev.run_id) {
            metrics.active(&ev.workflow).inc();
            slot.insert(InFlight { workflow: ev.workflow, since: Instant::now(), counted: false });
        }
    } else if status.is_terminal() {
        // A run that started before this feed listened: only its end is counted.
        let count_start = match in_flight.remove(&ev.run_id) {
            Some(run) => {
                metrics.active(&ev.workflow).dec();
                !run.counted
            }
            None => false,
        };
        let (engine, metrics) = (engine.clone(), Arc::clone(metrics));
        tokio::spawn(async move {
            let result = lookup(&engine, &ev.run_id).await;
            if count_start {
                metrics.started(&ev.workflow, result.as_ref().map_or("unknown", |r| r.backend.as_str()));
            }
            metrics.finished(&ev.workflow, status.as_str(), result.as_ref());
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_series_with_labels() {
        let m = Metrics::new();
        m.started("wf", "local");
        m.finished("wf", "succeeded", None);
        m.active("wf").inc();
        m.reload(&ReloadReport::default());
        let text = m.render();
        assert!(text.contains(r#"taskweave_runs_started_total{workflow="wf",backend="local"} 1"#), "{text}");
        assert!(text.contains(r#"taskweave_runs_finished_total{workflow="wf",backend="unknown",status="succeeded"} 1"#), "{text}");
        assert!(text.contains(r#"taskweave_active_runs{workflow="wf"} 1"#), "{text}");
        assert!(text.contains(r#"taskweave_reloads_total{outcome="success"} 1"#), "{text}");
        assert!(!text.contains("taskweave_task_duration_seconds"), "no series yet: {text}");
        m.task_duration.get_or_create(&TaskLabels { workflow: "wf".into(), status: "succeeded".into() }).observe(0.002);
        let text = m.render();
        assert!(text.contains("# TYPE taskweave_task_duration_seconds histogram"), "{text}");
        assert!(text.contains(r#"taskweave_task_duration_seconds_bucket{workflow="wf",status="succeeded",le="0.0025"} 1"#), "{text}");
        assert!(text.contains(r#"taskweave_task_duration_seconds_bucket{workflow="wf",status="succeeded",le="0.001"} 0"#), "{text}");
    }
}
