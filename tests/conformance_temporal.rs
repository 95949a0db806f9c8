//! The backend conformance suite on the Temporal backend, against a real
//! Temporal dev server started for this test process. Each case gets its own
//! task queue (so cases run in parallel on one server), two in-process
//! workers and its own SQLite run store.

#![cfg(feature = "temporal")]

#[path = "support/temporal.rs"]
mod temporal_server;

use std::sync::Arc;
use std::time::Duration;
use taskweave::backend::{Backend, BackendError, DriverContext, RunRequest, WorkerOptions};
use taskweave::run::RunResult;
use taskweave::run::actions::{Handlers, Limits};
use taskweave::run::executor::Executor;
use taskweave::store::Store;
use tokio_util::sync::CancellationToken;

/// The backend under test with its workers; stops them when dropped.
struct WithWorkers {
    inner: Arc<dyn Backend>,
    stop: CancellationToken,
    _dir: tempfile::TempDir,
}

impl Drop for WithWorkers {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

#[async_trait::async_trait]
impl Backend for WithWorkers {
    fn name(&self) -> &str {
        self.inner.name()
    }
    fn kind(&self) -> &'static str {
        self.inner.kind()
    }
    async fn submit(&self, req: RunRequest) -> Result<String, BackendError> {
        self.inner.submit(req).await
    }
    async fn result(&self, run_id: &str, wait: Option<Duration>) -> Result<RunResult, BackendError> {
        self.inner.result(run_id, wait).await
    }
    async fn cancel(&self, run_id: &str) -> Result<(), BackendError> {
        self.inner.cancel(run_id).await
    }
}

async fn temporal() -> Option<Arc<dyn Backend>> {
    let server = temporal_server::shared("temporal conformance")?;
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&format!("sqlite://{}", dir.path().join("state.db").display())).await.expect("store");
    let executor = Executor {
        handlers: Arc::new(Handlers::with_builtins()),
        limits: Arc::new(Limits { kill_grace: Duration::from_millis(500), ..Limits::default() }),
        writer: Some(store.writer()),
        events: None,
    };
    let mut options = std::collections::BTreeMap::new();
    options.insert("address".to_string(), toml::Value::String(server.address()));
    options.insert("task_queue".to_string(), toml::Value::String(format!("conf-{}", uuid::Uuid::now_v7().simple())));
    options.insert("heartbeat".to_string(), toml::Value::String("2s".into()));
    let ctx = DriverContext {
        name: "tp".into(),
        kind: "temporal".into(),
        options,
        executor,
        store: Some(store),
        registry: Arc::new(taskweave::reload::Registry::new(Vec::new(), Default::default())),
    };
    let backend = taskweave::backend::temporal::open(ctx).await.expect("open the temporal backend");
    backend.check().await.expect("the backend answers");
    let stop = CancellationToken::new();
    for _ in 0..2 {
        let (b, stop) = (Arc::clone(&backend), stop.clone());
        tokio::spawn(async move { b.work(WorkerOptions { concurrency: 4, queues: Vec::new() }, stop).await });
    }
    Some(Arc::new(WithWorkers { inner: backend, stop, _dir: dir }))
}

taskweave::conformance_tests!(temporal());
