//! The embedded local backend: runs execute in this process on tokio, with
//! their history in the store. Nothing to start.

use super::{Backend, BackendError, RunRequest};
use crate::run::executor::{Executor, SharedResult, lock, new_result};
use crate::run::{RunResult, RunStatus};
use crate::store::{Store, StoreError};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

struct LocalRun {
    result: SharedResult,
    done: watch::Receiver<bool>,
    cancel: CancellationToken,
}

/// How many finished runs stay in memory for fast result reads, by count
/// and by approximate size; older ones are read from the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LocalOptions {
    /// At most this many finished runs (`cache_runs`, default 10,000).
    pub cache_runs: usize,
    /// At most this many bytes of finished runs' inputs, contexts and
    /// outputs (`cache_bytes`, default 64 MiB).
    pub cache_bytes: usize,
}

impl Default for LocalOptions {
    fn default() -> Self {
        LocalOptions { cache_runs: 10_000, cache_bytes: 64 * 1024 * 1024 }
    }
}

impl LocalOptions {
    /// The keys of a `[backends.NAME]` table of kind `local`.
    pub fn parse(name: &str, options: &std::collections::BTreeMap<String, toml::Value>) -> Result<Self, BackendError> {
        let o: crate::config::backends::LocalSettings = crate::config::backends::read("local", options)
            .map_err(|e| BackendError::Permanent { backend: name.to_string(), reason: e.to_string() })?;
        let d = LocalOptions::default();
        Ok(LocalOptions {
            cache_runs: o.cache_runs.map_or(d.cache_runs, |n| n.0),
            cache_bytes: o.cache_bytes.map_or(d.cache_bytes, |n| n.0),
        })
    }
}

/// The finished runs still in memory, oldest first, with their sizes.
#[derive(Default)]
struct Finished {
    runs: std::collections::VecDeque<(String, usize)>,
    bytes: usize,
}

pub struct LocalBackend {
    name: String,
    executor: Executor,
    store: Option<Store>,
    runs: Arc<Mutex<HashMap<String, Arc<LocalRun>>>>,
    finished: Arc<Mutex<Finished>>,
    options: LocalOptions,
    shutdown: CancellationToken,
    tracker: tokio_util::task::TaskTracker,
    started_at: time::OffsetDateTime,
}

impl LocalBackend {
    pub fn new(name: impl Into<String>, executor: Executor, store: Option<Store>) -> Arc<Self> {
        Self::with_options(name, executor, store, LocalOptions::default())
    }

    pub fn with_options(name: impl Into<String>, executor: Executor, store: Option<Store>, options: LocalOptions) -> Arc<Self> {
        let b = Arc::new(LocalBackend {
            name: name.into(),
            executor,
            store,
            runs: Arc::new(Mutex::new(HashMap::new())),
            finished: Arc::new(Mutex::new(Finished::default())),
            options,
            shutdown: CancellationToken::new(),
            tracker: tokio_util::task::TaskTracker::new(),
            started_at: time::OffsetDateTime::now_utc(),
        });
        if b.store.is_some() {
            // Cancel requests made by other processes (`taskweave runs cancel`).
            let weak = Arc::downgrade(&b);
            let stop = b.shutdown.clone();
            tokio::spawn(async move {
                loop {
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                    }
                    let Some(b) = weak.upgrade() else { return };
                    b.poll_cancel_requests().await;
                }
            });
        }
        b
    }

    async fn poll_cancel_requests(&self) {
        let Some(store) = &self.store else { return };
        let active: Vec<String> = lock(&self.runs).iter().filter(|(_, r)| !*r.done.borrow()).map(|(id, _)| id.clone()).collect();
        if active.is_empty() {
            return;
        }
        if let Ok(ids) = store.cancel_requested(&active).await {
            for id in ids {
                if let Some(r) = lock(&self.runs).get(&id) {
                    r.cancel.cancel();
                }
            }
        }
    }

    fn refused(&self, reason: impl Into<String>) -> BackendError {
        BackendError::Refused { backend: self.name.clone(), reason: reason.into() }
    }

    /// Drive `result` (recorded already) in this process: a new run, or
    /// (`resumed`) one adopted from a process that stopped.
    fn drive(&self, wf: Arc<crate::plan::Workflow>, result: RunResult, resumed: bool) {
        let run_id = result.run_id.clone();
        let shared: SharedResult = Arc::new(Mutex::new(result));
        let (tx, rx) = watch::channel(false);
        let cancel = self.shutdown.child_token();
        lock(&self.runs).insert(run_id.clone(), Arc::new(LocalRun { result: Arc::clone(&shared), done: rx, cancel: cancel.clone() }));
        let executor = self.executor.clone();
        let (runs, finished, id, limits) = (Arc::clone(&self.runs), Arc::clone(&self.finished), run_id, self.options);
        self.tracker.spawn(async move {
            if resumed {
                executor.resume(wf, Arc::clone(&shared), cancel).await;
            } else {
                executor.drive(wf, Arc::clone(&shared), cancel).await;
            }

            let _ = tx.send(true);
            // Keep the latest finished runs in memory, within the limits;
            // older ones are read from the store.
            let size = lock(&shared).approx_bytes();
            let mut f = lock(&finished);
            f.runs.push_back((id, size));
            f.bytes += size;
            while f.runs.len() > limits.cache_runs || (f.bytes > limits.cache_bytes && !f.runs.is_empty()) {
                if let Some((old, size)) = f.runs.pop_front() {
                    f.bytes -= size;
                    lock(&runs).remove(&old);
                }
            }
        });
    }
}

#[async_trait::async_trait]
impl Backend for LocalBackend {
    fn name(&self) -> &str {
        &self.name
    }

    fn kind(&self) -> &'static str {
        "local"
    }

    fn accepting(&self) -> bool {
        !self.shutdown.is_cancelled()
    }

    async fn submit(&self, req: RunRequest) -> Result<String, BackendError> {
        let run_id = req.run_id.clone();
        if lock(&self.runs).contains_key(&run_id) {
            return Err(self.refused(format!("a run `{run_id}` exists already")));
        }
        let mut result = new_result(&req.workflow, run_id.clone(), &self.name, req.input, req.entity_id, req.context);
        result.routing = req.routing;
        super::reuse_into(&mut result, &req.workflow, &req.reuse, &req.retry_of);
        // The run is recorded before it is accepted and before anything of
        // it runs: a run the store could not record is refused, never lost.
        if let Some(store) = &self.store {
            let definition = serde_json::to_value(&req.workflow.raw).unwrap_or_default();
            let recorded = match super::store_writer(&self.executor) {
                // A fresh id cannot be taken: queue the creation ahead of the
                // run's events and wait for the commit of its batch, which
                // concurrent submissions share.
                Some(w) if !req.chosen_id => w.create_acked(&result, definition).await,
                // A caller's id may be: ask the store, which says so.
                _ => store.create_run(&result, &definition).await,
            };
            recorded.map_err(|e| match e {
                StoreError::RunExists(id) => self.refused(format!("a run `{id}` exists already")),
                e => BackendError::StoreUnavailable { backend: self.name.clone(), reason: e.to_string() },
            })?;
        }
        self.drive(Arc::clone(&req.workflow), result, false);
        Ok(run_id)
    }

    async fn resume(&self, run_id: &str) -> Result<(), BackendError> {
        let unavailable = |e: StoreError| BackendError::Unavailable { backend: self.name.clone(), reason: e.to_string() };
        let Some(store) = &self.store else { return Err(self.refused("no run store to resume from")) };
        if lock(&self.runs).contains_key(run_id) {
            return Ok(());
        }
        let result = store.get_run(run_id).await.map_err(unavailable)?.ok_or_else(|| BackendError::NotFound(run_id.to_string()))?;
        let definition = store
            .get_definition(run_id)
            .await
            .map_err(unavailable)?
            .ok_or_else(|| self.refused(format!("run `{run_id}` has no recorded definition")))?;
        let wf = serde_json::from_value(definition)
            .map_err(|e| e.to_string())
            .and_then(crate::plan::compile)
            .map_err(|e| self.refused(format!("the definition of run `{run_id}` does not compile: {e}")))?;
        if wf.version != result.version {
            return Err(self.refused(format!("run `{run_id}` pins {} but its recorded definition is {}", result.version, wf.version)));
        }
        self.drive(wf, result, true);
        Ok(())
    }

    async fn result(&self, run_id: &str, wait: Option<Duration>) -> Result<RunResult, BackendError> {
        let run = lock(&self.runs).get(run_id).cloned();
        let Some(run) = run else {
            return match &self.store {
                Some(s) => s
                    .get_run(run_id)
                    .await
                    .map_err(|e| BackendError::Unavailable { backend: self.name.clone(), reason: e.to_string() })?
                    .ok_or_else(|| BackendError::NotFound(run_id.to_string())),
                None => Err(BackendError::NotFound(run_id.to_string())),
            };
        };
        if let Some(w) = wait {
            let mut done = run.done.clone();
            let _ = tokio::time::timeout(w, done.wait_for(|d| *d)).await;
        }
        Ok(lock(&run.result).clone())
    }

    async fn cancel(&self, run_id: &str) -> Result<(), BackendError> {
        let run = lock(&self.runs).get(run_id).cloned();
        match run {
            Some(r) => {
                r.cancel.cancel();
                Ok(())
            }
            None => match &self.store {
                Some(s) => match s.request_cancel(run_id).await {
                    Ok(true) => Ok(()),
                    Ok(false) => match s.get_run(run_id).await {
                        Ok(Some(_)) => Ok(()),
                        _ => Err(BackendError::NotFound(run_id.to_string())),
                    },
                    Err(e) => Err(BackendError::Unavailable { backend: self.name.clone(), reason: e.to_string() }),
                },
                None => Err(BackendError::NotFound(run_id.to_string())),
            },
        }
    }

    async fn drain(&self) {
        let pending: Vec<_> = lock(&self.runs).values().map(|r| r.done.clone()).collect();
        for mut d in pending {
            let _ = d.wait_for(|x| *x).await;
        }
    }

    async fn check(&self) -> Result<String, BackendError> {
        Ok("local (embedded): always available".into())
    }

    /// This process is the backend's one worker: it executes the runs it
    /// accepted, so nothing ever waits for another.
    async fn workers(&self) -> Result<super::WorkerReport, BackendError> {
        let running = lock(&self.runs).values().filter(|r| !*r.done.borrow()).count();
        let mut r = super::WorkerReport::new(&self.name, self.kind());
        r.workers.push(super::WorkerInfo {
            id: format!("{}@{}", std::process::id(), super::workers::hostname()),
            runtime: "taskweave".into(),
            host: super::workers::hostname().to_string(),
            pid: Some(std::process::id()),
            queues: Vec::new(),
            concurrency: None,
            running: Some(u32::try_from(running).unwrap_or(u32::MAX)),
            started_at: Some(self.started_at),
            last_heartbeat: Some(time::OffsetDateTime::now_utc()),
        });
        r.note = Some("runs execute in the process that starts them (this one)".into());
        Ok(r)
    }

    async fn shutdown(&self) {
        self.shutdown.cancel();
        self.tracker.close();
        self.tracker.wait().await;
        if let Some(w) = super::store_writer(&self.executor) {
            let _ = w.flush().await;
        }
    }
}

impl LocalBackend {
    /// Whether a run's result is held in memory here (in flight, or
    /// finished and still within the cache's limits).
    pub fn is_cached(&self, run_id: &str) -> bool {
        lock(&self.runs).contains_key(run_id)
    }

    /// Whether a run is still in flight here.
    pub fn is_active(&self, run_id: &str) -> bool {
        lock(&self.runs).get(run_id).is_some_and(|r| !*r.done.borrow())
    }
}

#[allow(dead_code)]
fn _assert_send_sync() {
    fn f<T: Send + Sync>() {}
    f::<LocalBackend>();
    let _ = RunStatus::Queued;
}
