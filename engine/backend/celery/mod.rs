//! The Celery backend: runs over Redis, wire-compatible with Celery 5 in both
//! directions.
//!
//! - Every task of a run is a Celery task message (`taskweave.run.task`)
//!   that any `taskweave worker --backend NAME` takes from the queue; run
//!   state lives in Redis ([`runs`]), and whichever worker finishes a task
//!   advances the run. No process is the orchestrator; no Celery chords.
//! - `celery:` tasks are sent to Python Celery workers by name; their
//!   result is the task output, their exception the task error.
//! - taskweave workers serve Python callers: `taskweave.<handler>` runs a
//!   handler, `taskweave.workflow.<name>` runs a loaded workflow; results are
//!   written where `AsyncResult(id).get()` reads them.
//!
//! Options of `[backends.NAME]`: `broker` (a `redis://` URL; env
//! `CELERY_BROKER_URL`), `result_backend` (default: the broker; env
//! `CELERY_RESULT_BACKEND`), `queue` (the queue taskweave workers serve,
//! default `taskweave`), `celery_queue` (where `celery:` tasks without a
//! `queue` go, default `celery`), `key_prefix` (kombu's `global_keyprefix`),
//! `visibility_timeout` (default `1h`), `result_expires` (default `1d`),
//! `worker_lease` (how long a taskweave worker stays listed without a
//! heartbeat, default `30s`; see [`fleet`]).

mod apply;
pub mod broker;
use super::events;
mod fleet;
pub mod runs;
pub mod wire;
mod worker;

use super::{Backend, BackendError, DriverContext, RunRequest, WorkerOptions};
use crate::backend::definitions::Definitions;
use crate::config::backends::{CelerySettings, Text};
use crate::run::executor::Executor;
use crate::run::sched::{Core, Decision, seed};
use crate::run::{RunResult, TaskResult, TaskStatus};
use broker::Broker;
use runs::{Progress, Runs, StopReason};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;
use wire::Outgoing;

/// The Celery task name of one task of a run.
pub const RUN_TASK: &str = "taskweave.run.task";
/// Prefix of the Celery names of served workflows.
pub const WORKFLOW_PREFIX: &str = "taskweave.workflow.";

/// Options of a `[backends.NAME]` of kind `celery`.
#[derive(Debug, Clone, PartialEq)]
pub struct CeleryOptions {
    pub broker: String,
    pub result_backend: String,
    pub queue: String,
    pub celery_queue: String,
    pub key_prefix: String,
    pub visibility_timeout: Duration,
    pub result_expires: Duration,
    pub worker_lease: Duration,
}

impl CeleryOptions {
    pub fn parse(o: &std::collections::BTreeMap<String, toml::Value>) -> Result<Self, String> {
        let o: CelerySettings = crate::config::backends::read("celery", o).map_err(|e| e.to_string())?;
        let broker = o.broker.ok_or("no `broker` (a redis:// URL; or set CELERY_BROKER_URL)")?.0;
        let redis_url = |u: &str, what: &str| -> Result<(), String> {
            if u.starts_with("redis://") || u.starts_with("rediss://") || u.starts_with("unix://") || u.starts_with("redis+unix://") {
                Ok(())
            } else {
                Err(format!("`{what}` must be a redis:// URL, not `{}`", broker::redact(u)))
            }
        };
        redis_url(&broker, "broker")?;
        let result_backend = o.result_backend.map_or_else(|| broker.clone(), |t| t.0);
        redis_url(&result_backend, "result_backend")?;
        let text = |t: Option<Text>, default: &str| t.map_or_else(|| default.to_string(), |t| t.0);
        Ok(CeleryOptions {
            broker,
            result_backend,
            queue: text(o.queue, "taskweave"),
            celery_queue: text(o.celery_queue, "celery"),
            key_prefix: text(o.key_prefix, ""),
            visibility_timeout: o.visibility_timeout.map_or(Duration::from_secs(3600), |d| d.0),
            result_expires: o.result_expires.map_or(Duration::from_secs(86400), |d| d.0),
            worker_lease: match o.worker_lease {
                Some(d) if d.0 < Duration::from_millis(500) => return Err("`worker_lease` must be at least 500ms".into()),
                Some(d) => d.0,
                None => Duration::from_secs(30),
            },
        })
    }
}

/// A Celery-over-Redis backend.
pub struct CeleryBackend {
    name: String,
    opts: CeleryOptions,
    broker: Broker,
    runs: Runs,
    executor: Executor,
    /// The run history, when there is one: runs are recorded there when
    /// submitted and when they end (Redis holds them while they run).
    store: Option<crate::store::Store>,
    registry: Arc<crate::reload::Registry>,
    /// The definitions of the runs this process executes.
    definitions: Definitions,
    shutdown: CancellationToken,
    /// Unfinished runs submitted here, with what was announced of them.
    watched: Arc<Mutex<HashMap<String, events::Seen>>>,
}

/// Open the backend a configuration names. Redis is reached on first use,
/// so a broker that is down does not keep the engine from starting.
pub async fn open(ctx: DriverContext) -> Result<Arc<dyn Backend>, BackendError> {
    Ok(CeleryBackend::open(ctx).await?)
}

impl CeleryBackend {
    pub async fn open(ctx: DriverContext) -> Result<Arc<CeleryBackend>, BackendError> {
        let opts = CeleryOptions::parse(&ctx.options).map_err(|reason| BackendError::Permanent { backend: ctx.name.clone(), reason })?;
        let broker = Broker::connect(
            &opts.broker,
            &opts.result_backend,
            opts.key_prefix.clone(),
            opts.visibility_timeout,
            opts.result_expires.as_secs().max(1),
        )
        .await
        .map_err(|e| BackendError::Permanent {
            backend: ctx.name.clone(),
            reason: format!("broker {}: {e}", broker::redact(&opts.broker)),
        })?;
        let runs = Runs { broker: broker.clone(), keep: opts.result_expires.as_secs().max(1) };
        let watched = Arc::new(Mutex::new(HashMap::new()));
        let shutdown = CancellationToken::new();
        if let Some(tx) = ctx.executor.events.clone() {
            let wake = broker.watch(runs.events());
            tokio::spawn(announce_loop(runs.clone(), tx, Arc::clone(&watched), wake, shutdown.clone()));
        }
        Ok(Arc::new(CeleryBackend {
            name: ctx.name,
            opts,
            broker,
            runs,
            executor: ctx.executor,
            store: ctx.store,
            registry: ctx.registry,
            definitions: Definitions::new(),
            shutdown,
            watched,
        }))
    }

    pub fn options(&self) -> &CeleryOptions {
        &self.opts
    }

    fn unavailable(&self, e: impl std::fmt::Display) -> BackendError {
        BackendError::Unavailable { backend: self.name.clone(), reason: format!("{} ({})", e, self.broker.url) }
    }

    /// The queue list of a run's own task messages.
    fn run_queue(&self, wf: &crate::plan::Workflow) -> String {
        wf.queue.clone().unwrap_or_else(|| self.opts.queue.clone())
    }

    /// The message that runs task `task` of run `run`.
    fn task_message(&self, queue: &str, run: &str, task: &str) -> String {
        let mut m = Outgoing::new(RUN_TASK, queue);
        m.kwargs.insert("run_id".into(), json!(run));
        m.kwargs.insert("task".into(), json!(task));
        m.root_id = Some(run.to_string());
        m.encode()
    }

    /// Write a run to Redis and queue its first tasks. `reply`: a Celery task
    /// id to answer with the run result when it ends.
    async fn start_run(&self, req: RunRequest, reply: Option<&str>) -> Result<bool, BackendError> {
        let wf = &req.workflow;
        let run_id = req.run_id.clone();
        let now = OffsetDateTime::now_utc();
        let queue = self.run_queue(wf);
        let mut fields: Vec<(String, String)> = vec![
            ("def".into(), serde_json::to_string(&wf.raw).unwrap_or_default()),
            ("version".into(), wf.version.clone()),
            ("workflow".into(), wf.name.clone()),
            ("backend".into(), self.name.clone()),
            ("input".into(), req.input.to_string()),
            ("context".into(), req.context.to_string()),
            ("entity".into(), req.entity_id.clone().unwrap_or_else(|| run_id.clone())),
            ("created".into(), runs::rfc3339(now)),
            ("status".into(), "queued".into()),
            ("queue".into(), queue.clone()),
        ];
        if let Some(r) = &req.routing {
            fields.push(("routing".into(), serde_json::to_string(r).unwrap_or_default()));
        }
        if let Some(r) = &req.retry_of {
            fields.push(("retry_of".into(), r.clone()));
        }
        if let Some(r) = reply {
            fields.push(("reply".into(), r.to_string()));
        }
        if let Some(t) = wf.timeout {
            let deadline = now + t;
            fields.push(("deadline".into(), ((deadline.unix_timestamp_nanos() / 1_000_000) as i64).to_string()));
        }
        let pending = serde_json::to_string(&TaskResult::pending()).unwrap_or_default();
        for t in &wf.tasks {
            match req.reuse.iter().find(|(id, _)| *id == t.id) {
                // A retry reuses what succeeded.
                Some((_, output)) => {
                    let mut r = TaskResult::pending();
                    r.status = crate::run::TaskStatus::Succeeded;
                    r.output = Some(output.clone());
                    fields.push((format!("s:{}", t.name), "succeeded".into()));
                    fields.push((format!("t:{}", t.name), serde_json::to_string(&r).unwrap_or_default()));
                }
                None => {
                    fields.push((format!("s:{}", t.name), "pending".into()));
                    fields.push((format!("t:{}", t.name), pending.clone()));
                }
            }
        }
        // The core's first decisions: the tasks that start at once.
        let reused: Vec<usize> = req.reuse.iter().map(|(id, _)| *id).collect();
        let (core, first) = Core::started(wf, seed(&run_id), &reused).map_err(|e| self.unavailable(e))?;
        let messages: Vec<String> = first
            .iter()
            .filter_map(|d| match d {
                Decision::Start { task } => Some(self.task_message(&queue, &run_id, &wf.tasks[*task].name)),
                _ => None,
            })
            .collect();
        let mut fields: Vec<(String, Vec<u8>)> = fields.into_iter().map(|(k, v)| (k, v.into_bytes())).collect();
        fields.push(("sched".into(), core.snapshot()));
        fields.push(("v".into(), b"0".to_vec()));
        let qkey = self.broker.key(&wire::queue_key(&queue, 0));
        self.runs.submit(&run_id, fields, &qkey, messages).await.map_err(|e| self.unavailable(e))
    }

    /// Stop a run for `reason` and answer its Celery caller if that ended it.
    async fn stop_run(&self, run_id: &str, reason: StopReason, wf: &crate::plan::Workflow) -> Result<Progress, BackendError> {
        let queue = self.run_queue(wf);
        let Some((p, _)) = self.event(run_id, wf, apply::Step::Stop(reason), None, None, &queue).await? else {
            return Ok(Progress::Gone);
        };
        self.after(run_id, &p).await;
        Ok(p)
    }

    /// When a transition ended a run: answer the Celery client waiting for
    /// it, and record the end in the run history (when this process's store
    /// knows the run).
    async fn after(&self, run_id: &str, p: &Progress) {
        let Progress::Finished { reply, .. } = p else { return };
        if reply.is_none() && self.store.is_none() {
            return;
        }
        let r = match self.runs.fields(run_id).await {
            Ok(Some(f)) => runs::result_from(run_id, &f),
            Ok(None) => return,
            Err(e) => {
                tracing::error!(run_id, "could not read the finished run: {e}");
                return;
            }
        };
        if let Some(reply) = reply {
            let value = wire::encode_result(reply, &run_outcome(&r), OffsetDateTime::now_utc());
            if let Err(e) = self.broker.store_result(reply, &value).await {
                tracing::error!(run_id, "could not store the Celery result of the run: {e}");
            }
        }
        if let (Some(store), Some(w)) = (&self.store, super::store_writer(&self.executor))
            && matches!(store.get_run(run_id).await, Ok(Some(_)))
        {
            w.run_fields(&r);
            for (name, t) in &r.tasks {
                w.task(run_id, name, t);
            }
            if let Err(e) = w.flush().await {
                tracing::error!(run_id, "could not record the end of the run: {e}");
            }
        }
    }

    /// The compiled definition a run pinned.
    async fn workflow_of(&self, run_id: &str, version: Option<&str>) -> Result<Option<Arc<crate::plan::Workflow>>, BackendError> {
        if let Some(w) = version.and_then(|v| self.definitions.get(v)) {
            return Ok(Some(w));
        }
        let got = self.runs.get(run_id, &["def".into(), "version".into()]).await.map_err(|e| self.unavailable(e))?;
        let [Some(def), version] = <[Option<String>; 2]>::try_from(got).unwrap_or_default() else { return Ok(None) };
        let id = version.unwrap_or_else(|| run_id.to_string());
        let wf = self
            .definitions
            .compile_text(&id, &def)
            .map_err(|e| BackendError::Permanent { backend: self.name.clone(), reason: format!("run {run_id}: {e}") })?;
        Ok(Some(wf))
    }
}

/// A finished run as a Celery result: the run result JSON on success; on
/// failure a `WorkflowFailed` naming the failing task and its error.
fn run_outcome(r: &RunResult) -> wire::TaskOutcome {
    let value = serde_json::to_value(r).unwrap_or(Value::Null);
    if r.status == crate::run::RunStatus::Succeeded {
        return wire::TaskOutcome::Success(value);
    }
    let failing = r
        .tasks
        .iter()
        .filter(|(_, t)| matches!(t.status, TaskStatus::Failed | TaskStatus::TimedOut))
        .min_by_key(|(_, t)| t.finished_at)
        .map(|(n, t)| format!("; task `{n}` {}: {}", t.status, t.error.as_deref().unwrap_or("")))
        .unwrap_or_default();
    let why = r.error.as_deref().map(|e| format!(": {e}")).unwrap_or_default();
    wire::TaskOutcome::Failure(wire::PyError::new(
        "WorkflowFailed",
        "taskweave",
        format!("run {} of `{}` {}{why}{failing}", r.run_id, r.workflow, r.status),
    ))
}

#[async_trait::async_trait]
impl Backend for CeleryBackend {
    fn name(&self) -> &str {
        &self.name
    }

    fn kind(&self) -> &'static str {
        "celery"
    }

    fn accepting(&self) -> bool {
        !self.shutdown.is_cancelled()
    }

    async fn submit(&self, req: RunRequest) -> Result<String, BackendError> {
        let run_id = req.run_id.clone();
        let record = self.store.as_ref().map(|_| {
            let mut r = crate::run::executor::new_result(
                &req.workflow,
                run_id.clone(),
                &self.name,
                req.input.clone(),
                req.entity_id.clone(),
                req.context.clone(),
            );
            r.routing = req.routing.clone();
            (r, serde_json::to_value(&req.workflow.raw).unwrap_or_default())
        });
        if !self.start_run(req, None).await? {
            return Err(BackendError::Refused { backend: self.name.clone(), reason: format!("a run `{run_id}` exists already") });
        }
        if self.executor.events.as_ref().is_some_and(|tx| tx.receiver_count() > 0) {
            crate::run::executor::lock(&self.watched).entry(run_id.clone()).or_default();
        }
        // The history knows the run from now on (its backend included, so
        // `taskweave runs show` in another process finds where it runs).
        if let (Some(store), Some((r, def))) = (&self.store, record)
            && let Err(e) = store.create_run(&r, &def).await
        {
            tracing::warn!(run_id, "could not record the run in the history: {e}");
        }
        Ok(run_id)
    }

    async fn result(&self, run_id: &str, wait: Option<Duration>) -> Result<RunResult, BackendError> {
        let until = wait.map(|w| tokio::time::Instant::now() + w);
        let mut watch = wait.map(|_| self.broker.watch(format!("{}#{run_id}", self.runs.events())));
        loop {
            let f = match self.runs.fields(run_id).await {
                Ok(f) => f,
                // Redis restarting: keep waiting while the caller is willing to.
                Err(e) if until.is_some_and(|u| tokio::time::Instant::now() + Duration::from_millis(250) < u) => {
                    tracing::debug!(run_id, "reading the run: {e}; retrying");
                    tokio::time::sleep(Duration::from_millis(250)).await;
                    continue;
                }
                Err(e) => return Err(self.unavailable(e)),
            };
            let Some(f) = f else {
                // Expired from Redis: the history may still have it.
                if let Some(store) = &self.store
                    && let Ok(Some(r)) = store.get_run(run_id).await
                {
                    return Ok(r);
                }
                return Err(BackendError::NotFound(run_id.to_string()));
            };
            let r = runs::result_from(run_id, &f);
            let Some(until) = until else { return Ok(r) };
            if r.is_done() || tokio::time::Instant::now() >= until {
                return Ok(r);
            }
            // A run past its deadline with nobody left to notice ends here.
            let now_ms = (OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64;
            if f.get("deadline").and_then(|d| d.parse::<i64>().ok()).is_some_and(|d| d + 1000 < now_ms)
                && !f.contains_key("stop")
                && let Some(wf) = self.workflow_of(run_id, f.get("version").map(String::as_str)).await?
            {
                self.stop_run(run_id, StopReason::TimedOut, &wf).await?;
                continue;
            }
            let left = until.saturating_duration_since(tokio::time::Instant::now()).min(Duration::from_millis(500));
            if let Some(w) = watch.as_mut() {
                let want = format!("done:{run_id}");
                let t0 = tokio::time::Instant::now();
                while let Some(m) = w.next(left.saturating_sub(t0.elapsed())).await {
                    if m == want {
                        break;
                    }
                }
            }
        }
    }

    async fn cancel(&self, run_id: &str) -> Result<(), BackendError> {
        let got = self.runs.get(run_id, &["version".into(), "status".into()]).await.map_err(|e| self.unavailable(e))?;
        let version = got.first().cloned().flatten();
        if version.is_none() {
            return Err(BackendError::NotFound(run_id.to_string()));
        }
        let Some(wf) = self.workflow_of(run_id, version.as_deref()).await? else {
            return Err(BackendError::NotFound(run_id.to_string()));
        };
        self.stop_run(run_id, StopReason::Cancelled, &wf).await?;
        Ok(())
    }

    async fn check(&self) -> Result<String, BackendError> {
        match tokio::time::timeout(Duration::from_secs(3), self.broker.ping()).await {
            Ok(Ok(v)) => Ok(format!("celery: broker {} answers (Redis {v}); taskweave queue `{}`", self.broker.url, self.opts.queue)),
            Ok(Err(e)) => Err(BackendError::Unavailable {
                backend: self.name.clone(),
                reason: format!("the broker at {} does not answer: {e}", self.broker.url),
            }),
            Err(_) => Err(BackendError::Unavailable {
                backend: self.name.clone(),
                reason: format!("the broker at {} did not answer within 3s", self.broker.url),
            }),
        }
    }

    async fn shutdown(&self) {
        self.shutdown.cancel();
        self.broker.close();
    }

    async fn work(&self, opts: WorkerOptions, stop: CancellationToken) -> Result<(), BackendError> {
        worker::work(self, opts, stop).await
    }

    /// The taskweave workers heard of within `worker_lease`, the Python
    /// Celery workers that answer remote control within a second, and the
    /// tasks waiting in the queues they or the loaded workflows use.
    async fn workers(&self) -> Result<super::WorkerReport, BackendError> {
        let (ours, python) = tokio::join!(fleet::live(&self.broker, self.opts.worker_lease), fleet::inspect(&self.broker, INSPECT_WINDOW));
        let mut r = super::WorkerReport::new(&self.name, self.kind());
        r.workers = ours.map_err(|e| self.unavailable(e))?;
        r.workers.extend(python.map_err(|e| self.unavailable(e))?);
        let mut queues = vec![self.opts.queue.clone(), self.opts.celery_queue.clone()];
        queues.extend(r.workers.iter().flat_map(|w| w.queues.iter().cloned()));
        for name in self.registry.names() {
            if let Some(wf) = self.registry.get(&name) {
                queues.extend(wf.queue.clone());
                queues.extend(wf.tasks.iter().filter_map(|t| match &t.action {
                    crate::plan::Action::Celery { queue, .. } => Some(queue.clone().unwrap_or_else(|| self.opts.celery_queue.clone())),
                    _ => None,
                }));
            }
        }
        queues.sort();
        queues.dedup();
        r.queued = fleet::queued(&self.broker, &queues).await.map_err(|e| self.unavailable(e))?;
        Ok(r)
    }
}

/// How long Python Celery workers have to answer a remote-control
/// inspection (what `celery inspect` waits by default).
const INSPECT_WINDOW: Duration = Duration::from_secs(1);

/// How often the runs submitted here are read for their events without a
/// message on the events channel (task starts and ends publish none).
const EVENTS_POLL: Duration = Duration::from_millis(200);

/// Announce the transitions of the runs submitted in this process: at every
/// message on the events channel (a run ended or stopped) and every poll.
async fn announce_loop(
    runs: Runs,
    tx: tokio::sync::broadcast::Sender<crate::run::executor::RunEvent>,
    watched: Arc<Mutex<HashMap<String, events::Seen>>>,
    mut wake: broker::Watch,
    stop: CancellationToken,
) {
    use crate::run::executor::lock;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = wake.next(EVENTS_POLL) => {}
        }
        if tx.receiver_count() == 0 {
            // Nobody listens (as with the local executor, what nobody hears is not kept).
            lock(&watched).clear();
            continue;
        }
        let ids: Vec<String> = lock(&watched).keys().cloned().collect();
        for run_id in ids {
            let r = match runs.fields(&run_id).await {
                Ok(Some(f)) => runs::result_from(&run_id, &f),
                Ok(None) => {
                    lock(&watched).remove(&run_id);
                    continue;
                }
                Err(e) => {
                    tracing::debug!(run_id, "reading the run for its events: {e}");
                    break;
                }
            };
            let mut out = Vec::new();
            {
                let mut w = lock(&watched);
                let Some(seen) = w.get_mut(&run_id) else { continue };
                if events::diff(seen, &r, &mut out) {
                    w.remove(&run_id);
                }
            }
            for ev in out {
                let _ = tx.send(ev);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_are_checked() {
        let mut o = std::collections::BTreeMap::new();
        assert!(CeleryOptions::parse(&o).unwrap_err().contains("broker"));
        o.insert("broker".into(), toml::Value::String("amqp://x".into()));
        assert!(CeleryOptions::parse(&o).unwrap_err().contains("redis://"));
        o.insert("broker".into(), toml::Value::String("redis://:pw@127.0.0.1:6379/3".into()));
        o.insert("visibility_timeout".into(), toml::Value::String("30s".into()));
        let c = CeleryOptions::parse(&o).unwrap();
        assert_eq!(c.result_backend, c.broker);
        assert_eq!(c.visibility_timeout, Duration::from_secs(30));
        assert_eq!((c.queue.as_str(), c.celery_queue.as_str()), ("taskweave", "celery"));
        o.insert("brokr".into(), toml::Value::String("x".into()));
        assert!(CeleryOptions::parse(&o).unwrap_err().contains("unknown key `brokr`"));
    }
}
