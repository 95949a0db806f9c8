//! The backend conformance suite on the PostgreSQL backend, against a real
//! server (127.0.0.1:5432, or `DATABASE_URL`'s server). Each case gets its
//! own database, created here and dropped when the case ends, with two
//! in-process workers and the run store in the same database.

#![cfg(feature = "postgres")]

use std::sync::Arc;
use std::time::Duration;
use taskweave::backend::{Backend, BackendError, DriverContext, RunRequest, WorkerOptions};
use taskweave::run::RunResult;
use taskweave::run::actions::{Handlers, Limits};
use taskweave::run::executor::Executor;
use taskweave::store::Store;
use tokio_util::sync::CancellationToken;

use taskweave::backend::conformance::postgres_url as url_for;

/// A database of its own, dropped with this value.
struct TestDb {
    name: String,
}

impl TestDb {
    async fn create() -> Option<TestDb> {
        use sqlx::Connection;
        let admin = url_for("postgres");
        let conn = tokio::time::timeout(Duration::from_secs(5), sqlx::PgConnection::connect(&admin)).await;
        let mut conn = match conn {
            Ok(Ok(c)) => c,
            other => {
                let why = match other {
                    Ok(Err(e)) => e.to_string(),
                    _ => "no answer within 5s".into(),
                };
                if taskweave::backend::conformance::require_services() {
                    panic!("PostgreSQL is required (TASKWEAVE_REQUIRE_SERVICES=1) but {admin} is not available: {why}");
                }
                taskweave::backend::conformance::skipped(&format!("PostgreSQL at {admin} is not available: {why}"));
                return None;
            }
        };
        let name = format!("tw_conf_{}_{}", std::process::id(), uuid::Uuid::now_v7().simple());
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}"))).execute(&mut conn).await.expect("create the test database");
        Some(TestDb { name })
    }

    fn url(&self) -> String {
        url_for(&self.name)
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let name = self.name.clone();
        // Drop runs inside the test's runtime: use a thread with its own.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
            rt.block_on(async {
                use sqlx::Connection;
                if let Ok(mut c) = sqlx::PgConnection::connect(&url_for("postgres")).await {
                    let _ = sqlx::query(sqlx::AssertSqlSafe(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))).execute(&mut c).await;
                }
            });
        })
        .join();
    }
}

/// The backend under test, with its workers and database; stops them when dropped.
struct WithWorkers {
    inner: Arc<dyn Backend>,
    stop: CancellationToken,
    _db: TestDb,
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

async fn postgres() -> Option<Arc<dyn Backend>> {
    let db = TestDb::create().await?;
    let store = Store::open(&db.url()).await.expect("store in the test database");
    let executor = Executor {
        handlers: Arc::new(Handlers::with_builtins()),
        limits: Arc::new(Limits { kill_grace: Duration::from_millis(500), ..Limits::default() }),
        writer: Some(store.recorder()),
        events: None,
    };
    let mut options = std::collections::BTreeMap::new();
    options.insert("url".to_string(), toml::Value::String(db.url()));
    options.insert("lease".to_string(), toml::Value::String("3s".into()));
    options.insert("poll".to_string(), toml::Value::String("200ms".into()));
    let ctx = DriverContext {
        name: "pg".into(),
        kind: "postgres".into(),
        options,
        executor,
        store: Some(store),
        registry: Arc::new(taskweave::reload::Registry::new(Vec::new(), Default::default())),
    };
    let backend = taskweave::backend::postgres::open(ctx).await.expect("open the postgres backend");
    backend.check().await.expect("the backend answers");
    let stop = CancellationToken::new();
    for _ in 0..2 {
        let (b, stop) = (Arc::clone(&backend), stop.clone());
        tokio::spawn(async move { b.work(WorkerOptions { concurrency: 4, queues: Vec::new() }, stop).await });
    }
    Some(Arc::new(WithWorkers { inner: backend, stop, _db: db }))
}

taskweave::conformance_tests!(postgres());
