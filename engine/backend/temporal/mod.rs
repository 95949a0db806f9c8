//! The Temporal backend (`kind = "temporal"`): a run is a Temporal workflow
//! execution of the generic workflow type `taskweave.dag.v1` (its workflow id
//! is the run id), and each task is an activity executed by `taskweave
//! worker --backend NAME`. Temporal owns durability, timers, retries and
//! history; `temporal workflow list/show` and its web UI show taskweave runs
//! with their activities.
//!
//! - [`workflow`]: the deterministic workflow code (the DAG scheduler).
//! - [`activities`]: one activity type per action kind, running one attempt
//!   with the shared action code.
//! - [`history`]: a run's result derived from its execution history, the
//!   same result shape every backend returns.
//!
//! Submission connects lazily and fails fast (`connect_timeout`) when the
//! server is down, so flag routing can fall back; workers retry the
//! connection with backoff. Touches: the Temporal server, the store.

pub mod activities;
pub mod history;
pub mod protocol;
pub mod workflow;

use super::{Backend, BackendError, DriverContext, RunRequest, WorkerOptions};
use crate::config::backends::TemporalSettings;
use crate::run::RunResult;
use crate::run::executor::{Executor, lock};
use crate::store::Store;
use protocol::DagInput;
use std::collections::{BTreeMap, HashMap};
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use temporalio_client::HistoryEventFilterType;
use temporalio_client::WorkflowIdReusePolicy;
use temporalio_client::{
    Client, ClientOptions, Connection, ConnectionOptions, Url, WorkflowCancelOptions, WorkflowDescribeOptions, WorkflowFetchHistoryOptions,
    WorkflowStartOptions,
};
use temporalio_common::protos::temporal::api::history::v1::HistoryEvent;
use tokio_util::sync::CancellationToken;
use workflow::DagWorkflow;

/// The driver's settings, from `[backends.NAME]`.
#[derive(Debug, Clone)]
pub struct Settings {
    /// `address`: the frontend's gRPC address (else `TEMPORAL_ADDRESS`, else `127.0.0.1:7233`).
    pub address: String,
    /// `namespace` (else `TEMPORAL_NAMESPACE`, else `default`).
    pub namespace: String,
    /// `task_queue` (default `taskweave`).
    pub task_queue: String,
    /// `heartbeat`: activity heartbeat timeout, how soon the task of a lost
    /// worker is tried again (default 10s).
    pub heartbeat: Duration,
    /// `sticky_timeout`: how long a run's next workflow task waits for the
    /// worker that cached it before any worker takes it (default 3s).
    pub sticky_timeout: Duration,
    /// `connect_timeout`: how long submission waits for the server (default 5s).
    pub connect_timeout: Duration,
}

impl Settings {
    pub fn from_options(name: &str, options: &BTreeMap<String, toml::Value>) -> Result<Settings, BackendError> {
        let bad = |reason: String| BackendError::Permanent { backend: name.to_string(), reason };
        let o: TemporalSettings = crate::config::backends::read("temporal", options).map_err(|e| bad(e.to_string()))?;
        // Like Temporal's own CLI and SDKs: TEMPORAL_ADDRESS / TEMPORAL_NAMESPACE
        // when the section does not say.
        let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        let mut address = o.address.map(|t| t.0).or_else(|| env("TEMPORAL_ADDRESS")).unwrap_or_else(|| "http://127.0.0.1:7233".into());
        if !address.contains("://") {
            address = format!("http://{address}");
        }
        Url::from_str(&address).map_err(|e| bad(format!("`address` `{address}` is not a URL: {e}")))?;
        let s = Settings {
            address,
            namespace: o.namespace.map(|t| t.0).or_else(|| env("TEMPORAL_NAMESPACE")).unwrap_or_else(|| "default".into()),
            task_queue: o.task_queue.map_or_else(|| "taskweave".into(), |t| t.0),
            heartbeat: o.heartbeat.map_or(Duration::from_secs(10), |d| d.0),
            sticky_timeout: o.sticky_timeout.map_or(Duration::from_secs(3), |d| d.0),
            connect_timeout: o.connect_timeout.map_or(Duration::from_secs(5), |d| d.0),
        };
        if s.heartbeat < Duration::from_secs(1) {
            return Err(bad("`heartbeat` must be at least 1s".into()));
        }
        if s.sticky_timeout < Duration::from_secs(1) {
            return Err(bad("`sticky_timeout` must be at least 1s".into()));
        }
        Ok(s)
    }
}

/// Open the driver. Nothing connects yet: submission, results and workers
/// connect on first use.
pub async fn open(ctx: DriverContext) -> Result<Arc<dyn Backend>, BackendError> {
    let settings = Settings::from_options(&ctx.name, &ctx.options)?;
    Ok(Arc::new_cyclic(|me| TemporalBackend {
        me: me.clone(),
        name: ctx.name,
        settings,
        executor: ctx.executor,
        store: ctx.store,
        client: tokio::sync::Mutex::new(None),
        workflows: Mutex::new(HashMap::new()),
        recorded: Mutex::new(Default::default()),
        shutdown: CancellationToken::new(),
    }))
}

pub struct TemporalBackend {
    /// This backend, for the tasks that record finished runs.
    me: std::sync::Weak<TemporalBackend>,
    name: String,
    settings: Settings,
    executor: Executor,
    store: Option<Store>,
    client: tokio::sync::Mutex<Option<Client>>,
    /// Compiled definitions by version, for deriving results.
    workflows: Mutex<HashMap<String, Arc<crate::plan::Workflow>>>,
    /// Finished runs this process wrote to the store.
    recorded: Mutex<std::collections::HashSet<String>>,
    shutdown: CancellationToken,
}

/// Connect to the server within `timeout`.
pub async fn connect(settings: &Settings, timeout: Duration) -> Result<Client, String> {
    let url = Url::from_str(&settings.address).map_err(|e| e.to_string())?;
    let options = ConnectionOptions::new(url).identity(format!("taskweave@{}", std::process::id())).build();
    let connection = match tokio::time::timeout(timeout, Connection::connect(options)).await {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => return Err(format!("cannot connect to Temporal at {}: {e}", settings.address)),
        Err(_) => return Err(format!("Temporal at {} did not answer within {}", settings.address, humantime::format_duration(timeout))),
    };
    Client::new(connection, ClientOptions::new(settings.namespace.clone()).build()).map_err(|e| format!("Temporal client: {e}"))
}

fn is_not_found(e: &impl std::fmt::Display) -> bool {
    let s = e.to_string().to_ascii_lowercase();
    s.contains("notfound") || s.contains("not found")
}

impl TemporalBackend {
    fn unavailable(&self, reason: String) -> BackendError {
        BackendError::Unavailable { backend: self.name.clone(), reason }
    }

    async fn client(&self) -> Result<Client, BackendError> {
        let mut guard = self.client.lock().await;
        if let Some(c) = guard.as_ref() {
            return Ok(c.clone());
        }
        let c = connect(&self.settings, self.settings.connect_timeout).await.map_err(|e| self.unavailable(e))?;
        *guard = Some(c.clone());
        Ok(c)
    }

    fn workflow_of(&self, input: &DagInput) -> Result<Arc<crate::plan::Workflow>, String> {
        let raw: crate::spec::raw::RawWorkflow = serde_json::from_value(input.definition.clone()).map_err(|e| e.to_string())?;
        let wf = crate::plan::compile(raw)?;
        if let Some(w) = lock(&self.workflows).get(&wf.version) {
            return Ok(Arc::clone(w));
        }
        lock(&self.workflows).insert(wf.version.clone(), Arc::clone(&wf));
        Ok(wf)
    }

    async fn events(&self, client: &Client, run_id: &str) -> Result<Vec<HistoryEvent>, BackendError> {
        let handle = client.get_workflow_handle::<DagWorkflow>(run_id.to_string());
        handle.fetch_history(WorkflowFetchHistoryOptions::default()).into_events().await.map_err(|e| {
            if is_not_found(&e) {
                BackendError::NotFound(run_id.to_string())
            } else {
                self.unavailable(format!("history of run `{run_id}`: {e}"))
            }
        })
    }

    /// The run's result now.
    async fn current(&self, client: &Client, run_id: &str) -> Result<RunResult, BackendError> {
        let events = self.events(client, run_id).await?;
        let input = history::start_input(&events).ok_or_else(|| BackendError::Permanent {
            backend: self.name.clone(),
            reason: format!("execution `{run_id}` is not a taskweave run (no `{}` input)", protocol::WORKFLOW_TYPE),
        })?;
        let wf = self.workflow_of(&input).map_err(|e| BackendError::Permanent { backend: self.name.clone(), reason: e })?;
        let closed = events.last().is_some_and(is_close_event);
        let pending = if closed {
            Vec::new()
        } else {
            let handle = client.get_workflow_handle::<DagWorkflow>(run_id.to_string());
            match handle.describe(WorkflowDescribeOptions::default()).await {
                Ok(d) => d.raw_description.pending_activities,
                Err(e) => {
                    tracing::debug!(run_id, "describe: {e}");
                    Vec::new()
                }
            }
        };
        history::derive(&wf, &input, &self.name, &events, &pending)
            .map_err(|e| BackendError::Permanent { backend: self.name.clone(), reason: format!("history of run `{run_id}`: {e}") })
    }

    /// Wait until the run's execution closes or `within` elapses: one long
    /// poll for the close event. An unknown run is `NotFound` at once.
    async fn wait_closed(&self, client: &Client, run_id: &str, within: Duration) -> Result<(), BackendError> {
        let handle = client.get_workflow_handle::<DagWorkflow>(run_id.to_string());
        let opts =
            WorkflowFetchHistoryOptions::builder().wait_new_event(true).event_filter_type(HistoryEventFilterType::CloseEvent).build();
        let waited = tokio::time::timeout(within, async {
            use futures::StreamExt;
            let mut events = handle.fetch_history(opts);
            while let Some(e) = events.next().await {
                match e {
                    Ok(e) if is_close_event(&e) => return Ok(()),
                    Ok(_) => {}
                    Err(e) if is_not_found(&e) => return Err(BackendError::NotFound(run_id.to_string())),
                    Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
                }
            }
            Ok(())
        })
        .await;
        waited.unwrap_or(Ok(()))
    }

    /// Wait for the run's end and record it, unless a caller of `result`
    /// did first. One long poll while the run goes on.
    async fn record_when_closed(&self, client: Client, run_id: &str) {
        loop {
            if let Err(BackendError::NotFound(_)) = self.wait_closed(&client, run_id, Duration::from_secs(3600)).await {
                return;
            }
            if lock(&self.recorded).contains(run_id) {
                return;
            }
            match self.current(&client, run_id).await {
                Ok(r) if r.status.is_terminal() => return self.record(&r).await,
                Ok(_) => {}
                Err(BackendError::NotFound(_)) => return,
                Err(_) => tokio::time::sleep(Duration::from_secs(1)).await,
            }
        }
    }

    /// Record a finished run in the store, once per process.
    async fn record(&self, r: &RunResult) {
        if self.shutdown.is_cancelled() || !lock(&self.recorded).insert(r.run_id.clone()) {
            return;
        }
        if let Some(w) = super::store_writer(&self.executor) {
            w.run(r);
            if let Err(e) = w.flush().await {
                tracing::warn!(run_id = r.run_id, "could not record the run: {e}");
            }
        } else if let Some(store) = &self.store
            && let Err(e) = store.save_run(r).await
        {
            tracing::warn!(run_id = r.run_id, "could not record the run: {e}");
        }
    }
}

fn is_close_event(e: &HistoryEvent) -> bool {
    use temporalio_common::protos::temporal::api::history::v1::history_event::Attributes as A;
    matches!(
        e.attributes,
        Some(
            A::WorkflowExecutionCompletedEventAttributes(_)
                | A::WorkflowExecutionFailedEventAttributes(_)
                | A::WorkflowExecutionTimedOutEventAttributes(_)
                | A::WorkflowExecutionCanceledEventAttributes(_)
                | A::WorkflowExecutionTerminatedEventAttributes(_)
                | A::WorkflowExecutionContinuedAsNewEventAttributes(_)
        )
    )
}

#[async_trait::async_trait]
impl Backend for TemporalBackend {
    fn name(&self) -> &str {
        &self.name
    }

    fn kind(&self) -> &'static str {
        "temporal"
    }

    fn accepting(&self) -> bool {
        !self.shutdown.is_cancelled()
    }

    async fn submit(&self, req: RunRequest) -> Result<String, BackendError> {
        let client = self.client().await?;
        let wf = Arc::clone(&req.workflow);
        let run_id = req.run_id.clone();
        let mut result = crate::run::executor::new_result(&wf, run_id.clone(), &self.name, req.input, req.entity_id, req.context);
        result.routing = req.routing;
        super::reuse_into(&mut result, &wf, &req.reuse, &req.retry_of);
        let reused = req.reuse.iter().map(|(id, v)| (wf.tasks[*id].name.clone(), v.clone())).collect();
        let definition = serde_json::to_value(&wf.raw).unwrap_or_default();
        let input = DagInput {
            run_id: run_id.clone(),
            definition: definition.clone(),
            input: result.input.clone(),
            context: result.context.clone(),
            entity_id: result.entity_id.clone(),
            routing: result.routing.as_ref().and_then(|r| serde_json::to_value(r).ok()),
            created_at: result.created_at.format(&time::format_description::well_known::Rfc3339).unwrap_or_default(),
            heartbeat_ms: self.settings.heartbeat.as_millis() as u64,
            reused,
            retry_of: req.retry_of.clone(),
        };
        let options = WorkflowStartOptions::new(self.settings.task_queue.clone(), run_id.clone())
            .id_reuse_policy(WorkflowIdReusePolicy::RejectDuplicate)
            // A workflow with handlers times itself out (a timer), so that
            // `on_failure` and `finally` still run after its timeout.
            .maybe_execution_timeout(if wf.has_handlers() { None } else { wf.timeout })
            .build();
        let started = tokio::time::timeout(self.settings.connect_timeout, client.start_workflow(DagWorkflow::run, input, options)).await;
        match started {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => {
                let msg = e.to_string();
                if msg.to_ascii_lowercase().contains("already") {
                    return Err(BackendError::Refused { backend: self.name.clone(), reason: format!("a run `{run_id}` exists already") });
                }
                return Err(self.unavailable(format!("could not start run `{run_id}`: {msg}")));
            }
            Err(_) => return Err(self.unavailable(format!("Temporal at {} did not accept run `{run_id}` in time", self.settings.address))),
        }
        super::record_accepted(&self.executor, self.store.as_ref(), &result, definition).await;
        // The store learns the end of the run from this process while it lives
        // (and from any later `result`).
        if self.executor.writer.is_some() || self.store.is_some() {
            let me = self.me.clone();
            let id = run_id.clone();
            let stop = self.shutdown.clone();
            tokio::spawn(async move {
                let Some(b) = me.upgrade() else { return };
                tokio::select! {
                    _ = stop.cancelled() => {}
                    _ = b.record_when_closed(client, &id) => {}
                }
            });
        }
        Ok(run_id)
    }

    async fn result(&self, run_id: &str, wait: Option<Duration>) -> Result<RunResult, BackendError> {
        let client = self.client().await?;
        let until = wait.map(|w| tokio::time::Instant::now() + w);
        loop {
            // Waiting callers long-poll for the end first, then read the
            // history once, rather than reading it before and after.
            if let Some(until) = until {
                self.wait_closed(&client, run_id, until.saturating_duration_since(tokio::time::Instant::now())).await?;
            }
            let r = self.current(&client, run_id).await?;
            if r.status.is_terminal() {
                if self.executor.writer.is_some() || self.store.is_some() {
                    self.record(&r).await;
                }
                return Ok(r);
            }
            match until {
                Some(until) if tokio::time::Instant::now() < until => {}
                _ => return Ok(r),
            }
        }
    }

    async fn cancel(&self, run_id: &str) -> Result<(), BackendError> {
        let client = self.client().await?;
        let handle = client.get_workflow_handle::<DagWorkflow>(run_id.to_string());
        if let Err(e) = handle.cancel(WorkflowCancelOptions::default()).await {
            // A run that ended already is left as it is; an unknown one is a 404.
            return match handle.describe(WorkflowDescribeOptions::default()).await {
                Ok(_) => Ok(()),
                Err(d) if is_not_found(&d) => Err(BackendError::NotFound(run_id.to_string())),
                Err(_) => Err(self.unavailable(format!("could not cancel run `{run_id}`: {e}"))),
            };
        }
        Ok(())
    }

    async fn shutdown(&self) {
        self.shutdown.cancel();
    }

    async fn check(&self) -> Result<String, BackendError> {
        self.client().await?;
        Ok(format!(
            "temporal backend: Temporal at {} answers (namespace `{}`, task queue `{}`)",
            self.settings.address, self.settings.namespace, self.settings.task_queue
        ))
    }

    /// The pollers of the backend's task queue (workflow and activity
    /// tasks) seen within [`POLLER_LIVE`], one per identity, and the tasks
    /// waiting in it (Temporal's approximate backlog).
    async fn workers(&self) -> Result<super::WorkerReport, BackendError> {
        use temporalio_common::protos::temporal::api::enums::v1::TaskQueueType;
        use temporalio_common::protos::temporal::api::taskqueue::v1::TaskQueue;
        use temporalio_common::protos::temporal::api::workflowservice::v1::DescribeTaskQueueRequest;
        let client = self.client().await?;
        let now = time::OffsetDateTime::now_utc();
        let mut seen: BTreeMap<String, Option<time::OffsetDateTime>> = BTreeMap::new();
        let mut backlog = 0u64;
        for kind in [TaskQueueType::Workflow, TaskQueueType::Activity] {
            let req = DescribeTaskQueueRequest {
                namespace: self.settings.namespace.clone(),
                task_queue: Some(TaskQueue { name: self.settings.task_queue.clone(), ..Default::default() }),
                task_queue_type: kind as i32,
                report_stats: true,
                ..Default::default()
            };
            let mut svc = client.connection().workflow_service();
            let call =
                tokio::time::timeout(self.settings.connect_timeout, svc.describe_task_queue(temporalio_client::tonic::Request::new(req)));
            let resp = match call.await {
                Ok(Ok(r)) => r.into_inner(),
                Ok(Err(e)) => {
                    return Err(self.unavailable(format!("describing task queue `{}`: {}", self.settings.task_queue, e.message())));
                }
                Err(_) => {
                    return Err(self.unavailable(format!("Temporal at {} did not describe the task queue in time", self.settings.address)));
                }
            };
            backlog += resp.stats.map(|s| s.approximate_backlog_count.max(0) as u64).unwrap_or(0);
            for p in resp.pollers {
                let at = history::at(&p.last_access_time);
                let e = seen.entry(p.identity).or_insert(at);
                *e = (*e).max(at);
            }
        }
        let mut r = super::WorkerReport::new(&self.name, self.kind());
        r.queued.insert(self.settings.task_queue.clone(), backlog);
        for (identity, at) in seen {
            if at.is_some_and(|t| now - t > POLLER_LIVE) {
                continue;
            }
            let parsed = super::workers::parse_identity(&identity);
            // Other SDKs name themselves `PID@HOST` by default.
            let sdk = identity.split_once('@').and_then(|(pid, host)| Some((pid.parse::<u32>().ok()?, host.to_string())));
            r.workers.push(super::WorkerInfo {
                runtime: if parsed.is_some() { "taskweave" } else { "other" }.into(),
                host: parsed.as_ref().map(|p| p.1.clone()).or_else(|| sdk.as_ref().map(|s| s.1.clone())).unwrap_or_default(),
                pid: parsed.as_ref().map(|p| p.0).or(sdk.map(|s| s.0)),
                queues: vec![self.settings.task_queue.clone()],
                concurrency: parsed.map(|p| p.2),
                running: None,
                started_at: None,
                last_heartbeat: at,
                id: identity,
            });
        }
        r.note = Some("pollers seen by the Temporal server within the last 2 minutes; running tasks are not reported".into());
        Ok(r)
    }

    async fn work(&self, opts: WorkerOptions, stop: CancellationToken) -> Result<(), BackendError> {
        let settings = self.settings.clone();
        let executor = self.executor.clone();
        let name = self.name.clone();
        if !opts.queues.is_empty() && opts.queues != [settings.task_queue.clone()] {
            return Err(BackendError::Permanent {
                backend: name,
                reason: format!(
                    "a temporal worker serves the backend's task queue `{}`; set `task_queue` instead of --queue",
                    settings.task_queue
                ),
            });
        }
        // The SDK's worker is not `Send` (workflow code runs on one thread):
        // it gets a thread and a runtime of its own.
        let (tx, rx) = tokio::sync::oneshot::channel();
        std::thread::Builder::new()
            .name(format!("temporal-worker-{name}"))
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = tx.send(Err(format!("runtime: {e}")));
                        return;
                    }
                };
                let r = rt.block_on(run_worker(settings, executor, opts.concurrency, stop));
                let _ = tx.send(r);
            })
            .map_err(|e| BackendError::Permanent { backend: self.name.clone(), reason: format!("worker thread: {e}") })?;
        match rx.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(reason)) => Err(BackendError::Permanent { backend: self.name.clone(), reason }),
            Err(_) => Err(BackendError::Permanent { backend: self.name.clone(), reason: "the worker thread stopped".into() }),
        }
    }
}

/// How recently a poller must have polled to count as live: a poll waits
/// up to about a minute on an idle queue, and Temporal keeps pollers it has
/// not heard of for some minutes.
const POLLER_LIVE: time::Duration = time::Duration::seconds(120);

/// Poll the task queue until `stop` fires: workflow tasks (the DAG
/// scheduler) and activity tasks (the task attempts).
async fn run_worker(settings: Settings, executor: Executor, concurrency: usize, stop: CancellationToken) -> Result<(), String> {
    // Connect, retrying with backoff while the server is away.
    let mut delay = Duration::from_millis(200);
    let client = loop {
        match connect(&settings, settings.connect_timeout).await {
            Ok(c) => break c,
            Err(e) => {
                tracing::warn!("{e}; retrying in {}", humantime::format_duration(delay));
                tokio::select! {
                    _ = stop.cancelled() => return Ok(()),
                    _ = tokio::time::sleep(delay) => {}
                }
                delay = (delay * 2).min(Duration::from_secs(10));
            }
        }
    };
    tracing::info!(address = settings.address, task_queue = settings.task_queue, "connected to Temporal");
    let runtime = temporalio_sdk::Runtime::from_current_tokio(Default::default()).map_err(|e| format!("Temporal runtime: {e}"))?;
    let activities = activities::TaskActivities::new(executor, client.clone());
    let slots = concurrency.max(1);
    use temporalio_sdk::runtime::worker_tuner::{FixedSizeSlotSupplier, SlotSupplier, TunerHolder};
    let fixed = |n: usize| SlotSupplier::FixedSize(FixedSizeSlotSupplier::new(n));
    let tuner = TunerHolder::builder()
        .workflow_task_slot_supplier(fixed(slots.max(2)))
        .activity_task_slot_supplier(fixed(slots))
        .local_activity_task_slot_supplier(fixed(1))
        .nexus_task_slot_supplier(fixed(1))
        .build();
    let options = temporalio_sdk::WorkerOptions::new(settings.task_queue.clone())
        .register_workflow::<DagWorkflow>()
        .map_err(|e| format!("registering the workflow: {e}"))?
        .register_activities(activities)
        .sticky_queue_schedule_to_start_timeout(settings.sticky_timeout)
        .tuner(tuner)
        .graceful_shutdown_period(Duration::from_secs(5))
        // `taskweave workers` reads pid, host and concurrency back from it.
        .client_identity_override(super::workers::identity(slots))
        .build();
    let mut worker = temporalio_sdk::Worker::new(&runtime, client, options).map_err(|e| format!("Temporal worker: {e}"))?;
    let shutdown = worker.shutdown_handle();
    let watcher = tokio::spawn(async move {
        stop.cancelled().await;
        shutdown();
    });
    let r = worker.run().await.map_err(|e| format!("Temporal worker: {e}"));
    watcher.abort();
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(pairs: &[(&str, &str)]) -> BTreeMap<String, toml::Value> {
        pairs.iter().map(|(k, v)| (k.to_string(), toml::Value::String(v.to_string()))).collect()
    }

    #[test]
    fn settings_defaults_and_addresses() {
        let s = Settings::from_options("t", &opts(&[("address", "10.0.0.5:7233"), ("heartbeat", "3s")])).unwrap();
        assert_eq!(s.address, "http://10.0.0.5:7233", "a bare host:port gets a scheme");
        assert_eq!(s.heartbeat, Duration::from_secs(3));
        assert_eq!((s.task_queue.as_str(), s.sticky_timeout), ("taskweave", Duration::from_secs(3)));
        let s = Settings::from_options("t", &opts(&[("address", "https://tw.example:7233"), ("namespace", "prod")])).unwrap();
        assert_eq!((s.address.as_str(), s.namespace.as_str()), ("https://tw.example:7233", "prod"));
    }

    #[test]
    fn settings_refuse_what_they_do_not_know() {
        let err = |pairs: &[(&str, &str)]| Settings::from_options("t", &opts(pairs)).unwrap_err().to_string();
        assert!(err(&[("adress", "x:1")]).contains("unknown key `adress`"));
        assert!(err(&[("heartbeat", "soon")]).contains("`heartbeat`"));
        assert!(err(&[("heartbeat", "100ms")]).contains("at least 1s"));
        let mut o = opts(&[]);
        o.insert("task_queue".into(), toml::Value::Integer(3));
        assert!(Settings::from_options("t", &o).unwrap_err().to_string().contains("`task_queue` must be a string"));
    }
}
