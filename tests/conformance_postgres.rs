//! The backend conformance suite on the PostgreSQL backend, against a real
//! server (127.0.0.1:5432, or `DATABASE_URL`'s server). Each case gets its
//! own database, created here and dropped when the case ends, with two
//! in-process workers and the run store in the same database.

#![cfg(feature = "postgres")]

use std::sync::Arc;
use std::time::Duration;
use taskweave::backend::{Backend, DriverContext};
use taskweave::run::actions::{Handlers, Limits};
use taskweave::run::executor::Executor;
use taskweave::store::Store;

use taskweave::backend::conformance::{FreshDatabase, WithWorkers};

async fn postgres() -> Option<Arc<dyn Backend>> {
    let db = FreshDatabase::or_skip("postgres conformance", "tw_conf").await?;
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
    Some(WithWorkers::start(backend, 2, 4, db))
}

taskweave::conformance_tests!(postgres());
