//! The library facade: an [`Engine`] owns the configuration, the store, the
//! backends, the registered workflows and handlers, and offers what an
//! embedding program needs: start up, register workflows and handlers, start
//! runs, read results, cancel, shut down.

use crate::backend::{Backend, BackendError, Backends, DriverContext, RunRequest};
use crate::config::Config;
use crate::diag::Diagnostic;
use crate::flags::FlagSource;
use crate::flags::routing::RoutingMetrics;
use crate::plan::Workflow;
use crate::run::actions::handlers::BuiltinSettings;
use crate::run::actions::{Handler, Handlers, Limits};
use crate::run::executor::{Executor, RunEvent};
use crate::run::{RunResult, RunStatus};
use crate::store::{IdempotencyClaim, RunFilter, RunSummary, Store};
use serde_json::Value;
use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, RwLock};
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("no workflow `{name}`{}", .suggestion.as_ref().map(|s| format!(" (did you mean `{s}`?)")).unwrap_or_default())]
    UnknownWorkflow { name: String, suggestion: Option<String> },
    #[error("invalid input: {message}")]
    InvalidInput { message: String, pointer: String },
    #[error("no backend `{name}` (configured: {})", .known.join(", "))]
    UnknownBackend { name: String, known: Vec<String> },
    #[error("no run `{0}`")]
    RunNotFound(String),
    /// A cancel asked of a run that has already reached a final state.
    #[error("run `{run_id}` has already finished ({status}); nothing to cancel")]
    RunFinished { run_id: String, status: RunStatus },
    #[error(transparent)]
    Backend(BackendError),
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error("{} error(s) in {file}", .diagnostics.iter().filter(|d| d.is_error()).count())]
    Invalid { file: String, diagnostics: Vec<Diagnostic> },
    #[error(transparent)]
    Flags(#[from] crate::flags::FlagError),
    /// A run that cannot be retried: not finished, succeeded, or nothing
    /// left to run again.
    #[error("cannot retry run `{run_id}`: {reason}")]
    NotRetryable { run_id: String, reason: String },
    /// The idempotency key started another request's run within the window.
    #[error("the idempotency key `{key}` started run `{run_id}` with another request; use a new key for a new run")]
    IdempotencyConflict { key: String, run_id: String },
    #[error("invalid idempotency key: {0}")]
    InvalidIdempotencyKey(String),
}

impl From<BackendError> for EngineError {
    fn from(e: BackendError) -> Self {
        match e {
            BackendError::NotFound(id) => EngineError::RunNotFound(id),
            other => EngineError::Backend(other),
        }
    }
}

/// How to start a run.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    pub input: Option<Value>,
    pub entity_id: Option<String>,
    pub context: Option<Value>,
    /// A backend name; default: the workflow's `backend`, else the configured default.
    pub backend: Option<String>,
    pub run_id: Option<String>,
    /// A caller's key for this start: a second start with the same key
    /// and the same request within `[engine] idempotency_window` returns
    /// the first run instead of starting another; with another request it
    /// is an [`EngineError::IdempotencyConflict`].
    pub idempotency_key: Option<String>,
    /// A retry of another run: the tasks that succeeded there, with their
    /// outputs, reused as they are (see [`Engine::retry`]).
    pub reuse: Vec<(crate::plan::TaskId, Value)>,
    /// The run this one retries.
    pub retry_of: Option<String>,
}

/// A run started, or found started with the same idempotency key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Started {
    pub run_id: String,
    /// `false`: an earlier start with the same key and request made it.
    pub created: bool,
}

/// The longest idempotency key.
pub const MAX_IDEMPOTENCY_KEY: usize = 255;

pub struct EngineBuilder {
    config: Config,
    /// Registered handlers; they replace built-ins of the same name.
    handlers: Handlers,
    /// `None`: from `[actions]` of the config.
    limits: Option<Limits>,
    store: Option<Option<String>>,
    flags: Option<Option<FlagSource>>,
    watch_flags: bool,
    resume: bool,
}

impl EngineBuilder {
    pub fn new() -> Self {
        EngineBuilder {
            config: Config::default(),
            handlers: Handlers::empty(),
            limits: None,
            store: None,
            flags: None,
            watch_flags: true,
            resume: false,
        }
    }

    /// The flag source rollout rules evaluate against (default: from `[flags]` of the config).
    pub fn flags(mut self, source: FlagSource) -> Self {
        self.flags = Some(Some(source));
        self
    }

    /// Whether a flag file is reloaded when it changes (default: yes).
    pub fn watch_flags(mut self, watch: bool) -> Self {
        self.watch_flags = watch;
        self
    }

    pub fn config(mut self, c: Config) -> Self {
        self.config = c;
        self
    }

    /// Register a handler for `uses: NAME` tasks (replaces a built-in of that name).
    pub fn handler(mut self, name: impl Into<String>, h: impl Handler) -> Self {
        self.handlers.register(name, h);
        self
    }

    /// Store URL (`sqlite://PATH`, `sqlite::memory:`, `postgres://...`); default from config.
    pub fn store(mut self, url: impl Into<String>) -> Self {
        self.store = Some(Some(url.into()));
        self
    }

    /// Adopt and resume the runs of local backends that a stopped process
    /// (killed, crashed) left behind, on start and at each heartbeat (as
    /// `taskweave serve` does), unless `[engine] resume = false`. Without
    /// it (the default, for short-lived processes), such runs are marked
    /// failed as interrupted.
    pub fn resume_interrupted(mut self, on: bool) -> Self {
        self.resume = on;
        self
    }

    /// Keep no history (results live in memory only).
    pub fn without_store(mut self) -> Self {
        self.store = Some(None);
        self
    }

    /// Action limits (default: from `[actions]` of the config).
    pub fn limits(mut self, l: Limits) -> Self {
        self.limits = Some(l);
        self
    }

    /// Open the store, take this process's lease, mark runs left behind by
    /// dead processes, start backends.
    pub async fn build(self) -> Result<Engine, EngineError> {
        let url = match self.store {
            Some(u) => u,
            None => Some(self.config.engine.store.clone()),
        };
        let mut instance = self.config.instance.clone();
        if let Some(problem) = instance.problem() {
            instance.lease = instance.heartbeat.max(std::time::Duration::from_millis(1)) * 2;
            instance.heartbeat = instance.heartbeat.max(std::time::Duration::from_millis(1));
            tracing::warn!("[instance]: {problem}; using a lease of {}", humantime::format_duration(instance.lease));
        }
        let in_process = self.config.in_process_backends();
        let store = match url {
            Some(u) => {
                let s = Store::open(&u).await?;
                if let Err(e) = s.renew_lease(&crate::store::Lease::current(instance.lease)).await {
                    tracing::warn!("could not record this instance's lease: {e}");
                }
                Some(s)
            }
            None => None,
        };
        let lease_keeper = tokio_util::sync::CancellationToken::new();
        let (events, _) = tokio::sync::broadcast::channel(4096);
        let mut handlers =
            Handlers::builtin_with(BuiltinSettings { llm: self.config.llm(), extract_text: self.config.actions.extract_text_settings() });
        handlers.extend(self.handlers);
        let limits = self.limits.unwrap_or_else(|| {
            let mut l = self.config.actions.limits();
            l.inherit_env = self.config.engine.inherit_env.unwrap_or(false);
            l
        });
        let flags = match self.flags {
            Some(f) => f,
            None => FlagSource::from_config(&self.config.flags)?,
        };
        // Validation knows the handlers this engine runs, and the flags it reads.
        let validate = validate_options_with(&self.config, &handlers, flags.clone());
        let executor = Executor {
            handlers: Arc::new(handlers),
            limits: Arc::new(limits),
            writer: store.as_ref().map(Store::recorder),
            events: Some(events.clone()),
        };
        let registry = Arc::new(crate::reload::Registry::new(self.config.engine.workflows.clone(), validate));
        let mut backends = Backends::default();
        for name in self.config.backend_names() {
            let Some(kind) = self.config.kind_of(&name) else { continue };
            let ctx = DriverContext {
                name: name.clone(),
                kind: kind.to_string(),
                options: self.config.backends.get(&name).map(|b| b.options.clone()).unwrap_or_default(),
                executor: executor.clone(),
                store: store.clone(),
                registry: Arc::clone(&registry),
            };
            match crate::backend::open(ctx).await? {
                Some(b) => backends.insert(b),
                None => tracing::debug!("backend `{name}`: {}", crate::backend::not_built(kind)),
            }
        }
        let flag_watcher = match (&flags, self.watch_flags) {
            (Some(f), true) => match f.watch(crate::reload::watch::DEFAULT_DEBOUNCE) {
                Ok(w) => w,
                Err(e) => {
                    tracing::warn!("flags: cannot watch {} for changes: {e}", f.describe());
                    None
                }
            },
            _ => None,
        };
        let resume = self.resume && self.config.engine.resume();
        let engine = Engine {
            inner: Arc::new(Inner {
                config: self.config,
                store,
                backends,
                registry,
                events,
                run_backends: RwLock::new(HashMap::new()),
                flags,
                _flag_watcher: flag_watcher,
                routing_metrics: RoutingMetrics::default(),
                lease_keeper,
                keys: MemoryKeys::default(),
                resume,
            }),
        };
        // Runs a stopped process left behind: resumed here (or failed, with
        // `[engine] resume = false`); then checked again at every heartbeat.
        if engine.inner.store.is_some() {
            if let Err(e) = recover_interrupted(&engine.inner, &in_process).await {
                tracing::warn!("could not check for interrupted runs: {e}");
            }
            tokio::spawn(keep_lease(Arc::downgrade(&engine.inner), instance, in_process, engine.inner.lease_keeper.clone()));
        }
        Ok(engine)
    }
}

impl Default for EngineBuilder {
    fn default() -> Self {
        Self::new()
    }
}

struct Inner {
    config: Config,
    store: Option<Store>,
    backends: Backends,
    registry: Arc<crate::reload::Registry>,
    events: tokio::sync::broadcast::Sender<RunEvent>,
    /// Which backend holds each run started here.
    run_backends: RwLock<HashMap<String, String>>,
    /// Where `backend:` rollout rules read their flags.
    flags: Option<FlagSource>,
    _flag_watcher: Option<crate::flags::FileWatcher>,
    routing_metrics: RoutingMetrics,
    /// Stops the renewal of this process's lease.
    lease_keeper: tokio_util::sync::CancellationToken,
    /// Idempotency keys, when there is no store to hold them.
    keys: MemoryKeys,
    /// Whether interrupted local runs are adopted and resumed here.
    resume: bool,
}

/// Idempotency keys of an engine without a store, in memory: they hold in
/// this process only.
#[derive(Default)]
struct MemoryKeys(std::sync::Mutex<HashMap<String, (String, String, std::time::Instant)>>);

impl MemoryKeys {
    fn claim(&self, key: &str, fingerprint: &str, run_id: &str, window: std::time::Duration) -> IdempotencyClaim {
        let mut m = crate::run::executor::lock(&self.0);
        let now = std::time::Instant::now();
        m.retain(|_, (_, _, at)| now.duration_since(*at) < window);
        match m.get(key) {
            Some((f, r, _)) => IdempotencyClaim::Held { run_id: r.clone(), fingerprint: f.clone() },
            None => {
                m.insert(key.to_string(), (fingerprint.to_string(), run_id.to_string(), now));
                IdempotencyClaim::Taken
            }
        }
    }

    fn release(&self, key: &str, run_id: &str) {
        let mut m = crate::run::executor::lock(&self.0);
        if m.get(key).is_some_and(|(_, r, _)| r == run_id) {
            m.remove(key);
        }
    }
}

/// An idempotency key is 1 to 255 visible ASCII characters.
fn check_idempotency_key(key: &str) -> Result<(), EngineError> {
    if key.is_empty() || key.len() > MAX_IDEMPOTENCY_KEY {
        return Err(EngineError::InvalidIdempotencyKey(format!("it must be 1 to {MAX_IDEMPOTENCY_KEY} characters, not {}", key.len())));
    }
    if let Some(c) = key.chars().find(|c| !c.is_ascii_graphic()) {
        return Err(EngineError::InvalidIdempotencyKey(format!("it holds {c:?}; use visible ASCII characters")));
    }
    Ok(())
}

/// What makes two start requests the same: the workflow and everything
/// the caller sent (input, entity, context, backend).
fn request_fingerprint(workflow: &str, o: &RunOptions) -> String {
    // Keys sorted at every level: the same request written in another key
    // order is the same request.
    fn canonical(v: &Value) -> Value {
        match v {
            Value::Object(m) => {
                let sorted: std::collections::BTreeMap<&String, Value> = m.iter().map(|(k, v)| (k, canonical(v))).collect();
                Value::Object(sorted.into_iter().map(|(k, v)| (k.clone(), v)).collect())
            }
            Value::Array(a) => Value::Array(a.iter().map(canonical).collect()),
            other => other.clone(),
        }
    }
    let request = canonical(&serde_json::json!([workflow, o.input, o.entity_id, o.context, o.backend]));
    let bytes = serde_json::to_vec(&request).unwrap_or_default();
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &bytes);
    digest.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.lease_keeper.cancel();
    }
}

/// The runs of in-process backends whose process stopped (its lease
/// expired, or its pid on this host is gone): adopted and resumed by this
/// process, or with `[engine] resume = false` marked failed.
async fn recover_interrupted(inner: &Arc<Inner>, in_process: &[String]) -> Result<(), crate::store::StoreError> {
    let Some(store) = &inner.store else { return Ok(()) };
    if !inner.resume {
        store.recover_orphans_of(in_process).await?;
        return Ok(());
    }
    for (run_id, backend) in store.adopt_orphans_of(in_process).await?.adopted {
        let resumed = match inner.backends.get(&backend) {
            Some(b) => b.resume(&run_id).await,
            None => Err(BackendError::Unavailable { backend: backend.clone(), reason: "the backend is not configured here".into() }),
        };
        match resumed {
            Ok(()) => {
                inner.run_backends.write().unwrap_or_else(|e| e.into_inner()).insert(run_id, backend);
            }
            Err(e) => {
                tracing::error!(run_id, "could not resume the interrupted run: {e}");
                if let Some(mut r) = store.get_run(&run_id).await? {
                    let _ = r.status.transition(RunStatus::Failed);
                    r.error = Some(format!("interrupted, and could not be resumed: {e}"));
                    r.finished_at = Some(time::OffsetDateTime::now_utc());
                    store.save_run(&r).await?;
                }
            }
        }
    }
    Ok(())
}

/// Renews this process's lease every `heartbeat` and recovers the runs of
/// instances whose lease expired, until `stop` (or the engine is gone).
async fn keep_lease(
    engine: std::sync::Weak<Inner>,
    instance: crate::config::instance::InstanceConfig,
    in_process: Vec<String>,
    stop: tokio_util::sync::CancellationToken,
) {
    let mut tick = tokio::time::interval(instance.heartbeat);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The first tick is now: the lease was just taken.
    tick.tick().await;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let Some(inner) = engine.upgrade() else { return };
        let Some(store) = &inner.store else { return };
        if let Err(e) = store.renew_lease(&crate::store::Lease::current(instance.lease)).await {
            tracing::warn!("could not renew this instance's lease: {e}");
        }
        if let Err(e) = recover_interrupted(&inner, &in_process).await {
            tracing::debug!("could not check for interrupted runs: {e}");
        }
    }
}

/// The engine, cheap to clone.
#[derive(Clone)]
pub struct Engine {
    inner: Arc<Inner>,
}

fn read<T>(l: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(|e| e.into_inner())
}
fn write<T>(l: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(|e| e.into_inner())
}

impl Engine {
    pub fn builder() -> EngineBuilder {
        EngineBuilder::new()
    }

    /// Start an engine from a configuration (store and backends as configured).
    pub async fn startup(config: Config) -> Result<Engine, EngineError> {
        EngineBuilder::new().config(config).build().await
    }

    pub fn config(&self) -> &Config {
        &self.inner.config
    }

    pub fn store(&self) -> Option<&Store> {
        self.inner.store.as_ref()
    }

    pub fn backends(&self) -> &Backends {
        &self.inner.backends
    }

    /// Events for every run and task transition.
    pub fn subscribe(&self) -> tokio::sync::broadcast::Receiver<RunEvent> {
        self.inner.events.subscribe()
    }

    /// The workflow registry (names, versions, per-file reload status).
    pub fn registry(&self) -> &Arc<crate::reload::Registry> {
        &self.inner.registry
    }

    /// Register (or replace) a validated workflow under its name.
    pub fn register_workflow(&self, wf: Arc<Workflow>) {
        self.inner.registry.insert(wf);
    }

    /// Validate a file and register its workflow.
    pub fn register_file(&self, path: &Path) -> Result<Arc<Workflow>, EngineError> {
        let checked = crate::validate::check_file(path, self.inner.registry.options())
            .map_err(|e| crate::config::ConfigError::Io { path: path.display().to_string(), source: e })?;
        match checked.workflow {
            Some(wf) => {
                self.register_workflow(Arc::clone(&wf));
                Ok(wf)
            }
            None => Err(EngineError::Invalid { file: checked.file, diagnostics: checked.diagnostics }),
        }
    }

    /// Load every workflow of the configured folders into the registry;
    /// returns the status of the files that failed.
    pub fn load_workflows(&self) -> Vec<crate::reload::FileStatus> {
        self.inner.registry.load_all();
        self.inner.registry.status().into_iter().filter(|f| !f.last_attempt.ok).collect()
    }

    pub fn workflow(&self, name: &str) -> Option<Arc<Workflow>> {
        self.inner.registry.get(name)
    }

    pub fn workflow_names(&self) -> Vec<String> {
        self.inner.registry.names()
    }

    /// Start a run of a registered workflow by name.
    pub async fn run_workflow(&self, name: &str, opts: RunOptions) -> Result<String, EngineError> {
        Ok(self.start_workflow(name, opts).await?.run_id)
    }

    /// Start a run of a registered workflow by name, telling whether it
    /// was started now or, with the same idempotency key and request,
    /// earlier.
    pub async fn start_workflow(&self, name: &str, opts: RunOptions) -> Result<Started, EngineError> {
        let wf = self.workflow(name).ok_or_else(|| {
            let names = self.workflow_names();
            EngineError::UnknownWorkflow {
                name: name.to_string(),
                suggestion: crate::diag::did_you_mean(name, names.iter().map(String::as_str)).map(str::to_string),
            }
        })?;
        self.start(wf, opts).await
    }

    /// Retry a run that failed, timed out or was cancelled: a new run of
    /// the same pinned definition (whatever the workflow's file says now),
    /// input, context and backend, that reuses the outputs of the tasks
    /// that succeeded and runs the others again. `from`: run this task and
    /// every task below it again too. The new run records `retry_of`.
    pub async fn retry(&self, run_id: &str, from: Option<&str>) -> Result<Started, EngineError> {
        let refuse = |reason: String| EngineError::NotRetryable { run_id: run_id.to_string(), reason };
        let old = self.get_result(run_id, None).await?;
        if !old.status.is_terminal() {
            return Err(refuse(format!("it is still {}", old.status.as_str())));
        }
        if old.status == RunStatus::Succeeded && from.is_none() {
            return Err(refuse("it succeeded; name a task with `from` to run it and what is below it again".into()));
        }
        let store = self.inner.store.as_ref().ok_or_else(|| refuse("there is no run store to read its definition from".into()))?;
        let definition = store.get_definition(run_id).await?.ok_or_else(|| refuse("its definition is not recorded".into()))?;
        let wf = serde_json::from_value(definition)
            .map_err(|e| e.to_string())
            .and_then(crate::plan::compile)
            .map_err(|e| refuse(format!("its definition does not compile: {e}")))?;
        // `from` and everything below it run again.
        let mut again = vec![false; wf.tasks.len()];
        if let Some(name) = from {
            let t = wf.task(name).ok_or_else(|| {
                let names = wf.tasks.iter().map(|t| t.name.as_str());
                let hint = crate::diag::did_you_mean(name, names).map(|s| format!(" (did you mean `{s}`?)")).unwrap_or_default();
                refuse(format!("its workflow has no task `{name}`{hint}"))
            })?;
            let mut stack = vec![t.id];
            while let Some(id) = stack.pop() {
                if !again[id] {
                    again[id] = true;
                    stack.extend(wf.tasks[id].children.iter().copied());
                }
            }
        }
        let reuse: Vec<(crate::plan::TaskId, Value)> = wf
            .tasks
            .iter()
            .filter(|t| t.phase == crate::plan::Phase::Main && !again[t.id])
            .filter_map(|t| {
                old.tasks
                    .get(&t.name)
                    .filter(|x| x.status == crate::run::TaskStatus::Succeeded)
                    .map(|x| (t.id, x.output.clone().unwrap_or(Value::Null)))
            })
            .collect();
        if reuse.len() == wf.tasks.len() {
            return Err(refuse("every task succeeded: nothing to run again".into()));
        }
        let opts = RunOptions {
            input: Some(old.input.clone()),
            entity_id: Some(old.entity_id.clone()),
            context: Some(old.context.clone()),
            backend: Some(old.backend.clone()),
            reuse,
            retry_of: Some(run_id.to_string()),
            ..Default::default()
        };
        self.start(wf, opts).await
    }

    /// As [`Engine::submit`], telling whether the run was started now; with
    /// an idempotency key, a repeated request returns the run it started.
    pub async fn start(&self, wf: Arc<Workflow>, mut opts: RunOptions) -> Result<Started, EngineError> {
        let Some(key) = opts.idempotency_key.take() else {
            return Ok(Started { run_id: self.submit_now(wf, opts).await?, created: true });
        };
        check_idempotency_key(&key)?;
        let fingerprint = request_fingerprint(&wf.name, &opts);
        let run_id = opts.run_id.get_or_insert_with(|| uuid::Uuid::now_v7().to_string()).clone();
        let window = self.inner.config.engine.idempotency_window();
        let claim = match &self.inner.store {
            Some(store) => store.claim_idempotency_key(&key, &fingerprint, &run_id, window).await?,
            None => self.inner.keys.claim(&key, &fingerprint, &run_id, window),
        };
        match claim {
            IdempotencyClaim::Taken => match self.submit_now(wf, opts).await {
                Ok(id) => Ok(Started { run_id: id, created: true }),
                Err(e) => {
                    // Nothing started: the key is free again.
                    match &self.inner.store {
                        Some(store) => {
                            if let Err(re) = store.release_idempotency_key(&key, &run_id).await {
                                tracing::warn!(run_id, "could not release idempotency key: {re}");
                            }
                        }
                        None => self.inner.keys.release(&key, &run_id),
                    }
                    Err(e)
                }
            },
            IdempotencyClaim::Held { run_id, fingerprint: held } if held == fingerprint => Ok(Started { run_id, created: false }),
            IdempotencyClaim::Held { run_id, .. } => Err(EngineError::IdempotencyConflict { key, run_id }),
        }
    }

    /// Start a run of a workflow. The input is checked against the workflow's
    /// input schema (defaults applied) before anything runs.
    ///
    /// A workflow whose `backend:` is a rollout rule gets its backend from
    /// the rule's flag, evaluated once here with the run's entity id and
    /// context; the decision is recorded on the run. When the chosen backend
    /// refuses the run before accepting it, the run goes to the rule's
    /// `default` instead (recorded as a fallback). A caller's `backend` wins
    /// over any rule.
    pub async fn submit(&self, wf: Arc<Workflow>, opts: RunOptions) -> Result<String, EngineError> {
        Ok(self.start(wf, opts).await?.run_id)
    }

    async fn submit_now(&self, wf: Arc<Workflow>, opts: RunOptions) -> Result<String, EngineError> {
        let input = prepare_input(&wf, opts.input.unwrap_or(Value::Object(Default::default())))?;
        let context = opts.context.unwrap_or(Value::Object(Default::default()));
        let default_backend = &self.inner.config.engine.default_backend;
        let mut run_id = opts.run_id;
        let mut entity_id = opts.entity_id;
        let (backend_name, routing, rule_default) = match (opts.backend, &wf.backend) {
            (Some(b), _) => (b, None, None),
            (None, Some(crate::spec::raw::BackendSpec::Name(n))) => (n.clone(), None, None),
            (None, Some(crate::spec::raw::BackendSpec::Rollout(rule))) => {
                // The entity the flag buckets on: the rule's template, else the
                // caller's entity id, else the run id (chosen now).
                let entity = match &rule.entity {
                    Some(t) => {
                        let id = run_id.get_or_insert_with(|| uuid::Uuid::now_v7().to_string()).clone();
                        render_entity(t, &wf, &input, &context, &id, entity_id.as_deref())
                    }
                    None => Ok(match &entity_id {
                        Some(e) => e.clone(),
                        None => run_id.get_or_insert_with(|| uuid::Uuid::now_v7().to_string()).clone(),
                    }),
                };
                let evaluation = match (entity, &self.inner.flags) {
                    (Err(e), _) => Err(e),
                    (Ok(_), None) => Err("no flag source is configured (`[flags] source` or FLIPT_SERVER_URL)".to_string()),
                    (Ok(entity), Some(src)) => {
                        if rule.entity.is_some() && entity_id.is_none() {
                            entity_id = Some(entity.clone());
                        }
                        let ctx = crate::flags::context_of(&context);
                        src.evaluate(&rule.flag, Some(crate::flags::routing::expected_type(rule)), &entity, &ctx)
                            .await
                            .map_err(|e| e.to_string())
                    }
                };
                let routing = crate::flags::routing::decide(rule, evaluation.as_ref().map_err(Clone::clone), default_backend);
                if let Some(err) = &routing.error {
                    tracing::warn!(workflow = %wf.name, flag = %rule.flag, backend = %routing.backend, "flag evaluation failed, using the rule's default backend: {err}");
                }
                let fallback = rule.default.clone().unwrap_or_else(|| default_backend.clone());
                (routing.backend.clone(), Some(routing), Some(fallback))
            }
            (None, None) => (default_backend.clone(), None, None),
        };
        let mut req = RunRequest::new(Arc::clone(&wf), input);
        req.entity_id = entity_id;
        req.context = context;
        req.reuse = opts.reuse;
        req.retry_of = opts.retry_of;
        if let Some(id) = run_id {
            req = req.with_run_id(id);
        }
        req.routing = routing;
        let (id, backend_name) = match self.dispatch(&backend_name, req.clone()).await {
            Ok(id) => (id, backend_name),
            Err(e) => {
                let refused = match &e {
                    EngineError::Backend(b) => b.allows_fallback(),
                    EngineError::UnknownBackend { .. } => true,
                    _ => false,
                };
                match (req.routing.as_mut(), rule_default) {
                    (Some(routing), Some(fallback)) if refused && fallback != backend_name => {
                        tracing::warn!(workflow = %wf.name, from = %backend_name, to = %fallback, "backend refused a routed run; falling back: {e}");
                        routing.fallback = Some(crate::run::result::Fallback { from: backend_name.clone(), error: e.to_string() });
                        routing.backend = fallback.clone();
                        let id = self.dispatch(&fallback, req.clone()).await?;
                        (id, fallback)
                    }
                    _ => return Err(e),
                }
            }
        };
        if let Some(r) = &req.routing {
            self.inner.routing_metrics.record(&wf.name, r);
        }
        write(&self.inner.run_backends).insert(id.clone(), backend_name);
        Ok(id)
    }

    async fn dispatch(&self, backend: &str, req: RunRequest) -> Result<String, EngineError> {
        let b = self.backend(backend)?;
        crate::backend::admit(&**b, &req.workflow)?;
        Ok(b.submit(req).await?)
    }

    /// The flag source rollout rules read, when one is configured.
    pub fn flags(&self) -> Option<&FlagSource> {
        self.inner.flags.as_ref()
    }

    /// Counters of routing decisions (exposed by the API's `/metrics`).
    pub fn routing_metrics(&self) -> &RoutingMetrics {
        &self.inner.routing_metrics
    }

    /// The rollout dashboard: runs created within `since` (of one
    /// workflow when given), from the run store, with the flag source's status.
    pub async fn rollout_status(&self, since: Duration, workflow: Option<String>) -> Result<RolloutReport, EngineError> {
        let from = time::OffsetDateTime::now_utc() - since;
        let filter = crate::store::RolloutFilter { since: from, workflow };
        let stats = match &self.inner.store {
            Some(s) => s.rollout_stats(&filter).await?,
            None => crate::store::RolloutStats {
                since: from,
                workflow: filter.workflow,
                total: 0,
                backends: Vec::new(),
                variants: Vec::new(),
                fallbacks: 0,
                flag_errors: 0,
            },
        };
        Ok(RolloutReport {
            window: humantime::format_duration(since).to_string(),
            stats,
            flags: self.inner.flags.as_ref().map(FlagSource::status),
        })
    }

    /// The live workers of one backend (`Some(name)`; an unknown name is
    /// [`EngineError::UnknownBackend`]) or of every backend, in name order,
    /// each with its answer or why it could not be asked.
    pub async fn workers(&self, backend: Option<&str>) -> Result<Vec<crate::backend::workers::Surveyed>, EngineError> {
        match backend {
            Some(name) => Ok(vec![crate::backend::workers::ask(Arc::clone(self.backend(name)?)).await]),
            None => Ok(crate::backend::workers::survey(&self.inner.backends).await),
        }
    }

    fn backend(&self, name: &str) -> Result<&Arc<dyn Backend>, EngineError> {
        self.inner
            .backends
            .get(name)
            .ok_or_else(|| EngineError::UnknownBackend { name: name.to_string(), known: self.inner.backends.names() })
    }

    async fn backend_of(&self, run_id: &str) -> Result<&Arc<dyn Backend>, EngineError> {
        let known = read(&self.inner.run_backends).get(run_id).cloned();
        let name = match known {
            Some(n) => n,
            None => match &self.inner.store {
                Some(s) => s.get_run(run_id).await?.map(|r| r.backend).ok_or_else(|| EngineError::RunNotFound(run_id.to_string()))?,
                None => return Err(EngineError::RunNotFound(run_id.to_string())),
            },
        };
        self.backend(&name)
    }

    /// The run's result; with `wait`, long-poll until it is done or `wait` elapses.
    pub async fn get_result(&self, run_id: &str, wait: Option<Duration>) -> Result<RunResult, EngineError> {
        match self.backend_of(run_id).await {
            Ok(b) => Ok(b.result(run_id, wait).await?),
            // A run recorded by a backend not running here: history only.
            Err(EngineError::UnknownBackend { .. }) => match &self.inner.store {
                Some(s) => s.get_run(run_id).await?.ok_or_else(|| EngineError::RunNotFound(run_id.to_string())),
                None => Err(EngineError::RunNotFound(run_id.to_string())),
            },
            Err(e) => Err(e),
        }
    }

    pub async fn status(&self, run_id: &str) -> Result<RunStatus, EngineError> {
        Ok(self.get_result(run_id, None).await?.status)
    }

    /// Ask a run to stop (it ends `cancelled`).
    ///
    /// A run that has already finished is left as it is and answered with
    /// [`EngineError::RunFinished`], whatever its backend: the check is made
    /// here, not by each driver (whose `cancel` is idempotent). When the
    /// status cannot be read now, the backend decides.
    pub async fn cancel(&self, run_id: &str) -> Result<(), EngineError> {
        match self.get_result(run_id, None).await {
            Ok(r) if r.status.is_terminal() => return Err(EngineError::RunFinished { run_id: run_id.to_string(), status: r.status }),
            Err(e @ EngineError::RunNotFound(_)) => return Err(e),
            _ => {}
        }
        Ok(self.backend_of(run_id).await?.cancel(run_id).await?)
    }

    pub async fn list_runs(&self, f: &RunFilter) -> Result<Vec<RunSummary>, EngineError> {
        match &self.inner.store {
            Some(s) => Ok(s.list_runs(f).await?),
            None => Ok(Vec::new()),
        }
    }

    /// Cancel what is in flight, wait for it to be recorded, stop the backends.
    pub async fn shutdown(&self) {
        for b in self.inner.backends.iter() {
            b.shutdown().await;
        }
        self.inner.lease_keeper.cancel();
    }
}

/// The rollout dashboard (`taskweave migration status`, `GET /v1/migration`).
#[derive(Debug, Clone, serde::Serialize)]
pub struct RolloutReport {
    /// The window counted, as given (`24h`).
    pub window: String,
    #[serde(flatten)]
    pub stats: crate::store::RolloutStats,
    /// The flag source and its last load, when one is configured.
    pub flags: Option<crate::flags::SourceStatus>,
}

/// Render a rule's `entity` template for a run.
fn render_entity(t: &str, wf: &Workflow, input: &Value, context: &Value, run_id: &str, entity_id: Option<&str>) -> Result<String, String> {
    let ctx = serde_json::json!({
        "input": input,
        "context": context,
        "run": {"id": run_id, "entity_id": entity_id.unwrap_or(run_id)},
        "workflow": {"name": wf.name, "version": wf.version},
    });
    let entity = crate::plan::template::render_text_once(t, &ctx).map_err(|e| format!("the rule's `entity` template `{t}`: {e}"))?;
    if entity.is_empty() {
        return Err(format!("the rule's `entity` template `{t}` rendered an empty entity id"));
    }
    Ok(entity)
}

/// Validation options from a configuration: backend names and kinds are
/// checked only when a configuration file was read; handlers are the
/// built-ins and those `[validate] handlers` names; flags are checked
/// against a configured features file (a Flipt server is not asked).
pub fn validate_options(c: &Config) -> crate::validate::Options {
    let flags =
        c.flags.source.as_deref().map(str::trim).filter(|s| !s.is_empty() && !s.starts_with("http://") && !s.starts_with("https://")).map(
            |src| {
                let ns = c.flags.namespace.as_deref().filter(|n| !n.is_empty()).unwrap_or(crate::flags::DEFAULT_NAMESPACE);
                FlagSource::file(Path::new(src), ns)
            },
        );
    validate_options_with(c, &Handlers::builtin(Default::default()), flags)
}

/// [`validate_options`] for an engine: its handlers, its flag source.
fn validate_options_with(c: &Config, handlers: &Handlers, flags: Option<FlagSource>) -> crate::validate::Options {
    let known = c.path.is_some();
    let kinds = known.then(|| {
        let kinds = c.backend_names().into_iter().filter_map(|n| Some((n.clone(), c.kind_of(&n)?.to_string()))).collect();
        (kinds, c.engine.default_backend.clone())
    });
    crate::validate::Options {
        backends: known.then(|| c.backend_names()),
        backend_kinds: kinds,
        handlers: Some(Arc::new(handler_catalog(handlers, c))),
        flags: flags.map(|f| Arc::new(f) as Arc<dyn crate::validate::KnownFlags>),
        max_diagnostics: c.validate.max_diagnostics,
    }
}

/// What validation knows of a set of handlers, plus the names that
/// `[validate] handlers` declares (handlers another process registers;
/// their arguments are not checked).
fn handler_catalog(handlers: &Handlers, c: &Config) -> crate::validate::HandlerCatalog {
    let mut catalog = handlers.catalog();
    for name in &c.validate.handlers {
        if !catalog.contains(name) {
            catalog.insert(name.clone(), None, None);
        }
    }
    catalog
}

/// The run's input with the schema's defaults filled in, checked against
/// the workflow's input schema.
pub fn prepare_input(wf: &Workflow, input: Value) -> Result<Value, EngineError> {
    wf.prepare_input(input).map_err(|crate::plan::InvalidInput { message, pointer }| EngineError::InvalidInput { message, pointer })
}
