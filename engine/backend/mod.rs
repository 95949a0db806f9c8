//! Backends: where runs execute. One small async trait that every driver
//! implements (local today; PostgreSQL, Celery and Temporal behind cargo
//! features), and a registry from backend name to instance.
//!
//! Backend errors are classified by what the caller should do, never by
//! message text: a refusal before acceptance lets flag routing fall back to
//! the rule's default backend; `Unavailable` may be retried; `NotFound` is a
//! 404 at the API.

#[cfg(feature = "celery")]
pub mod celery;
pub mod conformance;
pub mod definitions;
#[cfg(any(feature = "postgres", feature = "celery"))]
pub(crate) mod events;
pub mod local;
#[cfg(feature = "postgres")]
pub mod postgres;
#[cfg(feature = "temporal")]
pub mod temporal;
pub mod workers;

use crate::plan::Workflow;
use crate::run::executor::Executor;
use crate::run::{Routing, RunResult};
use crate::store::Store;
use serde_json::Value;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
pub use workers::{WorkerInfo, WorkerReport};

/// A run to start.
#[derive(Debug, Clone)]
pub struct RunRequest {
    pub workflow: Arc<Workflow>,
    /// Validated input (defaults applied).
    pub input: Value,
    /// What flags bucket on; defaults to the run id.
    pub entity_id: Option<String>,
    /// The caller's context (`user_id`, `organization_id`, ...).
    pub context: Value,
    /// The run's id: the caller's (see [`RunRequest::with_run_id`]), else a
    /// UUIDv7 chosen when the request was made, for every driver alike.
    pub run_id: String,
    /// The caller chose `run_id`: a run with that id already there is an
    /// error, not a retried submission.
    pub chosen_id: bool,
    /// The routing decision, when a flag chose this backend.
    pub routing: Option<Routing>,
    /// Tasks that succeeded already, with their outputs: a retry of a
    /// failed run reuses them and runs the others.
    pub reuse: Vec<(crate::plan::TaskId, Value)>,
    /// The run this one retries.
    pub retry_of: Option<String>,
}

/// A run's first result with what a retry reuses: the tasks that
/// succeeded already, with their outputs, and the run it retries.
pub(crate) fn reuse_into(result: &mut RunResult, wf: &Workflow, reuse: &[(crate::plan::TaskId, Value)], retry_of: &Option<String>) {
    result.retry_of.clone_from(retry_of);
    for (id, output) in reuse {
        if let Some(t) = wf.tasks.get(*id).and_then(|t| result.tasks.get_mut(&t.name)) {
            t.status = crate::run::TaskStatus::Succeeded;
            t.output = Some(output.clone());
        }
    }
}

impl RunRequest {
    pub fn new(workflow: Arc<Workflow>, input: Value) -> Self {
        RunRequest {
            workflow,
            input,
            entity_id: None,
            context: Value::Object(Default::default()),
            run_id: uuid::Uuid::now_v7().to_string(),
            chosen_id: false,
            routing: None,
            reuse: Vec::new(),
            retry_of: None,
        }
    }

    /// The same request under the caller's run id.
    pub fn with_run_id(mut self, run_id: impl Into<String>) -> Self {
        self.run_id = run_id.into();
        self.chosen_id = true;
        self
    }
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum BackendError {
    /// No run with this id.
    #[error("no run `{0}`")]
    NotFound(String),
    /// The backend refused the run before accepting it (routing may fall back).
    #[error("backend `{backend}` refused the run: {reason}")]
    Refused { backend: String, reason: String },
    /// The backend cannot be reached now; retrying later may work.
    #[error("backend `{backend}` is unavailable: {reason}")]
    Unavailable { backend: String, reason: String },
    /// The run store cannot record the run now, so it was not accepted;
    /// retrying later may work. No other backend would do better: they
    /// share the store.
    #[error("backend `{backend}` cannot record the run: {reason}")]
    StoreUnavailable { backend: String, reason: String },
    /// Anything else; not worth retrying.
    #[error("backend `{backend}`: {reason}")]
    Permanent { backend: String, reason: String },
}

impl BackendError {
    pub fn is_retryable(&self) -> bool {
        matches!(self, BackendError::Unavailable { .. } | BackendError::StoreUnavailable { .. })
    }

    /// Whether flag routing may fall back to the default backend.
    pub fn allows_fallback(&self) -> bool {
        matches!(self, BackendError::Refused { .. } | BackendError::Unavailable { .. })
    }
}

/// A place where runs execute.
#[async_trait::async_trait]
pub trait Backend: Send + Sync + 'static {
    /// The configured name (`local`, `pg`, ...).
    fn name(&self) -> &str;
    /// The driver kind (`local`, `postgres`, `celery`, `temporal`).
    fn kind(&self) -> &'static str;
    /// What the driver can do (from [`DRIVERS`]).
    fn capabilities(&self) -> Capabilities {
        driver(self.kind()).map(|d| d.capabilities).unwrap_or_default()
    }
    /// Accept a run and return its id. Once this returns Ok the run is durable
    /// (recorded) and will reach a terminal state.
    async fn submit(&self, req: RunRequest) -> Result<String, BackendError>;
    /// The run's result; with `wait`, block until it is done or `wait` elapses
    /// (then the current state is returned).
    async fn result(&self, run_id: &str, wait: Option<Duration>) -> Result<RunResult, BackendError>;
    /// Ask a run to stop. Idempotent; a finished run is left as it is.
    async fn cancel(&self, run_id: &str) -> Result<(), BackendError>;
    /// Go on with a run of this backend that this process adopted from one
    /// that stopped while running it (see [`crate::store::Store::adopt_orphans_of`]).
    /// Only backends that run in the process that started the run have any
    /// to resume.
    async fn resume(&self, run_id: &str) -> Result<(), BackendError> {
        Err(BackendError::Refused { backend: self.name().to_string(), reason: format!("run `{run_id}`: this backend resumes no runs") })
    }
    /// Wait until the runs in flight here have finished (graceful shutdown).
    async fn drain(&self) {}
    /// Stop accepting runs and cancel those in flight, recording them.
    async fn shutdown(&self) {}
    /// Whether the backend takes new runs (false once it shuts down).
    fn accepting(&self) -> bool {
        true
    }
    /// Check that the backend answers (`doctor`): one line saying what was found.
    async fn check(&self) -> Result<String, BackendError> {
        Ok(format!("{} backend: available", self.kind()))
    }
    /// Execute this backend's tasks until `stop` fires (`taskweave worker`),
    /// then finish or hand back what was claimed and return.
    async fn work(&self, opts: WorkerOptions, stop: CancellationToken) -> Result<(), BackendError> {
        let _ = (opts, stop);
        Err(BackendError::Refused {
            backend: self.name().to_string(),
            reason: format!("a `{}` backend has no workers: its runs execute in the process that starts them", self.kind()),
        })
    }
    /// The live workers of this backend and the tasks waiting for one
    /// (`taskweave workers`, `GET /v1/workers`, `doctor`). A backend that
    /// cannot tell says so in the report's note.
    async fn workers(&self) -> Result<WorkerReport, BackendError> {
        let mut r = WorkerReport::new(self.name(), self.kind());
        r.note = Some(format!("a `{}` backend does not report its workers", self.kind()));
        Ok(r)
    }
}

/// Refuses a run with `celery:` tasks on a backend that cannot send them
/// (every kind but `celery`), before anything is accepted.
fn refuse_celery_tasks(name: &str, kind: &str, wf: &Workflow) -> Result<(), BackendError> {
    match wf.tasks.iter().find(|t| matches!(t.action, crate::plan::Action::Celery { .. })) {
        Some(t) => Err(BackendError::Refused {
            backend: name.to_string(),
            reason: format!("task `{}` is a `celery:` task, which needs a backend of kind `celery`; this is `{name}` ({kind})", t.name),
        }),
        None => Ok(()),
    }
}

/// The store writer an executor records through, when it has one: the
/// executor knows it only as a [`crate::run::record::Recorder`].
pub(crate) fn store_writer(executor: &Executor) -> Option<&crate::store::StoreWriter> {
    executor.writer.as_deref()?.as_any().downcast_ref()
}

/// Records a run a distributed backend just accepted in the run store (the
/// backend stays the truth about it): through the batching writer when the
/// executor has one, else straight to the store. A failure is logged, never
/// returned: the run is accepted already.
#[cfg(any(feature = "postgres", feature = "temporal"))]
pub(crate) async fn record_accepted(executor: &Executor, store: Option<&Store>, result: &RunResult, definition: Value) {
    if let Some(w) = store_writer(executor) {
        w.create_if_absent(result, definition);
    } else if let Some(store) = store
        && let Err(e) = store.create_run(result, &definition).await
    {
        tracing::warn!(run_id = result.run_id, "could not record the run in the store: {e}");
    }
}

/// How a `taskweave worker` works.
#[derive(Debug, Clone)]
pub struct WorkerOptions {
    /// Tasks executed at once by this worker.
    pub concurrency: usize,
    /// Queues to take tasks from; empty means the backend's default queue.
    pub queues: Vec<String>,
}

impl Default for WorkerOptions {
    fn default() -> Self {
        WorkerOptions { concurrency: 8, queues: Vec::new() }
    }
}

/// What a driver is given when it is opened.
#[derive(Clone)]
pub struct DriverContext {
    /// The configured name.
    pub name: String,
    /// The configured kind.
    pub kind: String,
    /// The driver's own keys of `[backends.NAME]` (everything but `kind`).
    pub options: BTreeMap<String, toml::Value>,
    /// Runs tasks: handlers, limits, the store writer and the event bus.
    pub executor: Executor,
    /// The run store, when there is one.
    pub store: Option<Store>,
    /// The loaded workflows (drivers that serve workflows by name read it).
    pub registry: Arc<crate::reload::Registry>,
}

/// What a driver can do: what the layers above ask instead of its kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
pub struct Capabilities {
    /// Runs `celery:` tasks (by sending them to Python Celery workers);
    /// other backends are refused runs that have one, before they see them.
    pub celery_tasks: bool,
    /// Executes tasks in `taskweave worker` processes (`worker`, `workers`
    /// and doctor's queue warnings apply).
    pub workers: bool,
    /// Runs outlive the process that submitted them.
    pub durable: bool,
}

type OpenFn = fn(DriverContext) -> futures::future::BoxFuture<'static, Result<Arc<dyn Backend>, BackendError>>;

/// One driver: its kind, the cargo feature that builds it in, what it can
/// do, and how to open it (`None`: not built into this binary).
pub struct Driver {
    pub kind: &'static str,
    pub feature: Option<&'static str>,
    pub capabilities: Capabilities,
    open: Option<OpenFn>,
}

impl Driver {
    pub fn is_built(&self) -> bool {
        self.open.is_some()
    }
}

/// Every driver, built in or not. Adding a driver is a row here (plus its
/// keys in `config::keys` and its folder).
pub static DRIVERS: &[Driver] = &[
    Driver {
        kind: "local",
        feature: None,
        capabilities: Capabilities { celery_tasks: false, workers: false, durable: false },
        open: Some(|ctx| Box::pin(open_local(ctx))),
    },
    Driver {
        kind: "postgres",
        feature: Some("postgres"),
        capabilities: Capabilities { celery_tasks: false, workers: true, durable: true },
        #[cfg(feature = "postgres")]
        open: Some(|ctx| Box::pin(postgres::open(ctx))),
        #[cfg(not(feature = "postgres"))]
        open: None,
    },
    Driver {
        kind: "celery",
        feature: Some("celery"),
        capabilities: Capabilities { celery_tasks: true, workers: true, durable: true },
        #[cfg(feature = "celery")]
        open: Some(|ctx| Box::pin(celery::open(ctx))),
        #[cfg(not(feature = "celery"))]
        open: None,
    },
    Driver {
        kind: "temporal",
        feature: Some("temporal"),
        capabilities: Capabilities { celery_tasks: false, workers: true, durable: true },
        #[cfg(feature = "temporal")]
        open: Some(|ctx| Box::pin(temporal::open(ctx))),
        #[cfg(not(feature = "temporal"))]
        open: None,
    },
];

/// The driver of a kind.
pub fn driver(kind: &str) -> Option<&'static Driver> {
    DRIVERS.iter().find(|d| d.kind == kind)
}

async fn open_local(ctx: DriverContext) -> Result<Arc<dyn Backend>, BackendError> {
    let options = local::LocalOptions::parse(&ctx.name, &ctx.options)?;
    Ok(local::LocalBackend::with_options(ctx.name, ctx.executor, ctx.store, options))
}

/// Open the backend a configuration names. `Ok(None)`: its kind is not
/// built into this binary (a cargo feature that was left out).
pub async fn open(ctx: DriverContext) -> Result<Option<Arc<dyn Backend>>, BackendError> {
    match driver(&ctx.kind).and_then(|d| d.open) {
        Some(open) => open(ctx).await.map(Some),
        None => Ok(None),
    }
}

/// Whether this binary was built with the driver for `kind`.
pub fn is_built(kind: &str) -> bool {
    driver(kind).is_some_and(Driver::is_built)
}

/// Why a kind cannot be opened here: its driver was left out of this
/// binary, and the cargo feature that builds it in.
pub fn not_built(kind: &str) -> String {
    match driver(kind).and_then(|d| d.feature) {
        Some(f) => format!("kind `{kind}` is not built into this binary (build with `--features {f}`)"),
        None => format!("kind `{kind}` is not a backend kind (kinds: {})", DRIVERS.iter().map(|d| d.kind).collect::<Vec<_>>().join(", ")),
    }
}

/// Refuse a run a backend cannot execute, before it sees it: the one
/// place where what every driver would check is checked.
pub fn admit(backend: &dyn Backend, wf: &Workflow) -> Result<(), BackendError> {
    if !backend.accepting() {
        return Err(BackendError::Refused { backend: backend.name().to_string(), reason: "shutting down".into() });
    }
    if !backend.capabilities().celery_tasks {
        refuse_celery_tasks(backend.name(), backend.kind(), wf)?;
    }
    Ok(())
}

/// Backend name -> instance.
#[derive(Clone, Default)]
pub struct Backends {
    map: std::collections::BTreeMap<String, Arc<dyn Backend>>,
}

impl Backends {
    pub fn insert(&mut self, b: Arc<dyn Backend>) {
        self.map.insert(b.name().to_string(), b);
    }

    pub fn get(&self, name: &str) -> Option<&Arc<dyn Backend>> {
        self.map.get(name)
    }

    pub fn names(&self) -> Vec<String> {
        self.map.keys().cloned().collect()
    }

    pub fn iter(&self) -> impl Iterator<Item = &Arc<dyn Backend>> {
        self.map.values()
    }
}

#[cfg(test)]
mod driver_tests {
    use super::*;

    #[test]
    fn the_driver_table_covers_every_configurable_kind() {
        let kinds: Vec<&str> = DRIVERS.iter().map(|d| d.kind).collect();
        assert_eq!(kinds, crate::config::KINDS);
        assert!(driver("local").is_some_and(Driver::is_built));
        assert_eq!(is_built("postgres"), cfg!(feature = "postgres"));
        assert_eq!(is_built("temporal"), cfg!(feature = "temporal"));
        assert!(!is_built("nope"));
        let only_celery: Vec<&str> = DRIVERS.iter().filter(|d| d.capabilities.celery_tasks).map(|d| d.kind).collect();
        assert_eq!(only_celery, ["celery"]);
        assert_eq!(not_built("temporal"), "kind `temporal` is not built into this binary (build with `--features temporal`)");
    }
}
