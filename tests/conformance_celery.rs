//! The backend conformance suite on the Celery backend against a real
//! Redis, with in-process taskweave workers. Each case gets its own key
//! prefix and queue on Redis DB 9, and deletes its keys at the end.
#![cfg(feature = "celery")]

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use taskweave::backend::celery::CeleryBackend;
use taskweave::backend::{Backend, DriverContext, WorkerOptions};
use taskweave::run::actions::{Handlers, Limits};
use taskweave::run::executor::Executor;
use tokio_util::sync::CancellationToken;

const REDIS: &str = "redis://127.0.0.1:6379/9";

fn require_services() -> bool {
    std::env::var("TASKWEAVE_REQUIRE_SERVICES").is_ok_and(|v| v == "1")
}

/// A backend with its own prefix and two in-process workers; `None` (and a
/// SKIPPED line) when Redis is absent.
async fn celery() -> Option<Arc<dyn Backend>> {
    let client = redis::Client::open(REDIS).expect("url");
    if let Err(e) = client.get_multiplexed_async_connection().await {
        if require_services() {
            panic!("Redis is required (TASKWEAVE_REQUIRE_SERVICES=1) but {REDIS} does not answer: {e}");
        }
        eprintln!("SKIPPED: conformance_celery: Redis at {REDIS} does not answer: {e}");
        return None;
    }
    let prefix = format!("tw-conf-{}:", uuid::Uuid::now_v7().simple());
    let mut options = BTreeMap::new();
    options.insert("broker".to_string(), toml::Value::String(REDIS.into()));
    options.insert("key_prefix".to_string(), toml::Value::String(prefix.clone()));
    options.insert("visibility_timeout".to_string(), toml::Value::String("5s".into()));
    let executor = Executor {
        handlers: Arc::new(Handlers::with_builtins()),
        limits: Arc::new(Limits { kill_grace: Duration::from_millis(500), ..Limits::default() }),
        writer: None,
        events: None,
    };
    let ctx = DriverContext {
        name: "celery".into(),
        kind: "celery".into(),
        options,
        executor,
        store: None,
        registry: Arc::new(taskweave::reload::Registry::new(Vec::new(), Default::default())),
    };
    let backend = CeleryBackend::open(ctx).await.expect("open");
    let stop = CancellationToken::new();
    // Two workers, as two machines would run them; the suite's widest
    // fan-out (four sleeps at once) needs that much room.
    for _ in 0..2 {
        let (b, stop) = (Arc::clone(&backend), stop.clone());
        tokio::spawn(async move { b.work(WorkerOptions { concurrency: 4, queues: Vec::new() }, stop).await });
    }
    CLEANUP.with(|c| c.borrow_mut().push(Cleanup { stop, prefix }));
    Some(backend)
}

/// Stop the workers and delete the case's keys when the test thread ends.
struct Cleanup {
    stop: CancellationToken,
    prefix: String,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        self.stop.cancel();
        if let Ok(client) = redis::Client::open(REDIS)
            && let Ok(mut c) = client.get_connection()
        {
            let keys: Vec<String> = redis::cmd("KEYS").arg(format!("{}*", self.prefix)).query(&mut c).unwrap_or_default();
            if !keys.is_empty() {
                let _: Result<(), _> = redis::cmd("DEL").arg(keys).query(&mut c);
            }
        }
    }
}

thread_local! {
    static CLEANUP: std::cell::RefCell<Vec<Cleanup>> = const { std::cell::RefCell::new(Vec::new()) };
}

taskweave::conformance_tests!(celery());
