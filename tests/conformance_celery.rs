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
use taskweave::store::Store;
use tokio_util::sync::CancellationToken;

const REDIS: &str = "redis://127.0.0.1:6379/9";

use taskweave::backend::conformance::{WithWorkers, require_services};

/// A backend with its own prefix and two in-process workers; `None` (and a
/// SKIPPED line) when Redis is absent.
async fn celery() -> Option<Arc<dyn Backend>> {
    let client = redis::Client::open(REDIS).expect("url");
    if let Err(e) = client.get_multiplexed_async_connection().await {
        if require_services() {
            panic!("Redis is required (TASKWEAVE_REQUIRE_SERVICES=1) but {REDIS} does not answer: {e}");
        }
        taskweave::backend::conformance::skipped(&format!("conformance_celery: Redis at {REDIS} does not answer: {e}"));
        return None;
    }
    let prefix = format!("tw-conf-{}:", uuid::Uuid::now_v7().simple());
    let mut options = BTreeMap::new();
    options.insert("broker".to_string(), toml::Value::String(REDIS.into()));
    options.insert("key_prefix".to_string(), toml::Value::String(prefix.clone()));
    options.insert("visibility_timeout".to_string(), toml::Value::String("5s".into()));
    let backend = CeleryBackend::open(driver_context(options, Some(sqlite_store().await))).await.expect("open");
    // Two workers, as two machines would run them; the suite's widest
    // fan-out (four sleeps at once) needs that much room.
    Some(WithWorkers::start(backend, 2, 4, Cleanup { stop: CancellationToken::new(), prefix }))
}

/// Stop the workers and delete the case's keys when dropped.
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

taskweave::conformance_tests!(celery());

/// A run history in a fresh SQLite file, as `taskweave serve` keeps one.
async fn sqlite_store() -> Store {
    let dir = tempfile::tempdir().expect("tempdir").keep();
    Store::open(&format!("sqlite://{}", dir.join("state.db").display())).await.expect("store")
}

fn driver_context(options: BTreeMap<String, toml::Value>, store: Option<Store>) -> DriverContext {
    DriverContext {
        name: "celery".into(),
        kind: "celery".into(),
        options,
        executor: Executor {
            handlers: Arc::new(Handlers::with_builtins()),
            limits: Arc::new(Limits { kill_grace: Duration::from_millis(500), ..Limits::default() }),
            writer: store.as_ref().map(Store::recorder),
            events: None,
        },
        store,
        registry: Arc::new(taskweave::reload::Registry::new(Vec::new(), Default::default())),
    }
}

/// `doctor` with a broker that is down: the backend still opens (the engine
/// starts), and its check is one line naming the broker, without the password.
#[tokio::test]
async fn unreachable_broker_is_one_clear_line() {
    let mut options = BTreeMap::new();
    options.insert("broker".to_string(), toml::Value::String("redis://:hunter2@127.0.0.1:1/0".into()));
    let b = CeleryBackend::open(driver_context(options, None)).await.expect("opening does not need the broker");
    let e = b.check().await.expect_err("nothing listens on port 1");
    let line = e.to_string();
    assert!(e.is_retryable(), "{line}");
    assert!(line.contains("redis://***@127.0.0.1:1/0") && line.contains("does not answer"), "{line}");
    assert!(!line.contains("hunter2") && !line.contains('\n'), "{line}");
    let err = b
        .submit(taskweave::backend::RunRequest::new(
            taskweave::backend::conformance::workflow("version: 1\nname: x\ntasks: [{name: a, uses: echo}]\n"),
            serde_json::json!({}),
        ))
        .await
        .expect_err("no broker, no run");
    assert!(err.is_retryable(), "{err}");
}

/// A private Redis with an append-only file, restarted (SIGKILL) while a
/// task runs: the workers reconnect and the run completes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_survive_a_redis_restart() {
    let Some(server) = which("redis-server") else {
        if require_services() {
            panic!("redis-server is required (TASKWEAVE_REQUIRE_SERVICES=1)");
        }
        taskweave::backend::conformance::skipped("runs_survive_a_redis_restart: no redis-server binary");
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
        l.local_addr().unwrap().port()
    };
    let start = || RedisProc::start(&server, port, dir.path());
    let mut redis = start();
    let url = format!("redis://127.0.0.1:{port}/0");
    let mut options = BTreeMap::new();
    options.insert("broker".to_string(), toml::Value::String(url.clone()));
    let backend = CeleryBackend::open(driver_context(options, None)).await.expect("open");
    let stop = CancellationToken::new();
    let (b, s) = (Arc::clone(&backend), stop.clone());
    tokio::spawn(async move { b.work(WorkerOptions { concurrency: 2, queues: Vec::new() }, s).await });
    let wf = taskweave::backend::conformance::workflow(
        "version: 1\nname: restart\ntasks:\n  - {name: a, uses: sleep, with: {duration: 2s}}\n  - {name: b, parents: [a], uses: echo, with: {after: \"{{tasks.a.output}}\"}}\n",
    );
    let id = backend.submit(taskweave::backend::RunRequest::new(wf, serde_json::json!({}))).await.expect("submit");
    let mut started = false;
    // Up to 20 s: a loaded machine may be slow to start the first task.
    for _ in 0..800 {
        if backend.result(&id, None).await.is_ok_and(|r| r.tasks["a"].status == taskweave::run::TaskStatus::Running) {
            started = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(started, "task a never started");
    redis.kill();
    tokio::time::sleep(Duration::from_millis(700)).await;
    redis = start();
    let r = backend.result(&id, Some(Duration::from_secs(60))).await.expect("result after the restart");
    assert_eq!(r.status, taskweave::run::RunStatus::Succeeded, "{r:#?}");
    assert_eq!(r.tasks["b"].status, taskweave::run::TaskStatus::Succeeded);
    stop.cancel();
    backend.shutdown().await;
    drop(redis);
}

fn which(bin: &str) -> Option<std::path::PathBuf> {
    std::env::var_os("PATH")?.to_str()?.split(':').map(|d| std::path::Path::new(d).join(bin)).find(|p| p.is_file())
}

/// A redis-server of the test's own, killed by PID when dropped.
struct RedisProc(std::process::Child);

impl RedisProc {
    fn start(server: &std::path::Path, port: u16, dir: &std::path::Path) -> RedisProc {
        let child = std::process::Command::new(server)
            .args(["--bind", "127.0.0.1", "--port", &port.to_string(), "--save", "", "--appendonly", "yes", "--appendfsync", "always"])
            .arg("--dir")
            .arg(dir)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start redis-server");
        for _ in 0..100 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        RedisProc(child)
    }

    fn kill(&mut self) {
        // SAFETY: signalling our own child by PID.
        unsafe { libc::kill(self.0.id() as i32, libc::SIGKILL) };
        let _ = self.0.wait();
    }
}

impl Drop for RedisProc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Runs are in the history from submission, with their backend, and their
/// end is recorded there by whichever worker finished them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_history_records_celery_runs() {
    let client = redis::Client::open(REDIS).expect("url");
    if let Err(e) = client.get_multiplexed_async_connection().await {
        if require_services() {
            panic!("Redis is required (TASKWEAVE_REQUIRE_SERVICES=1): {e}");
        }
        taskweave::backend::conformance::skipped(&format!("the_history_records_celery_runs: {e}"));
        return;
    }
    let store = sqlite_store().await;
    let prefix = format!("tw-hist-{}:", uuid::Uuid::now_v7().simple());
    let mut options = BTreeMap::new();
    options.insert("broker".to_string(), toml::Value::String(REDIS.into()));
    options.insert("key_prefix".to_string(), toml::Value::String(prefix.clone()));
    let backend = CeleryBackend::open(driver_context(options, Some(store.clone()))).await.expect("open");
    let _cleanup = Cleanup { stop: CancellationToken::new(), prefix };
    let id = backend
        .submit(taskweave::backend::RunRequest::new(
            taskweave::backend::conformance::workflow(
                "version: 1\nname: hist\ntasks:\n  - {name: a, uses: echo, with: {x: 1}}\n  - {name: b, parents: [a], uses: fail, with: {message: nope}}\n",
            ),
            serde_json::json!({}),
        ))
        .await
        .expect("submit");
    let queued = store.get_run(&id).await.expect("store").expect("recorded at submission");
    assert_eq!((queued.backend.as_str(), queued.status), ("celery", taskweave::run::RunStatus::Queued));
    let (b, stop) = (Arc::clone(&backend), _cleanup.stop.clone());
    tokio::spawn(async move { b.work(WorkerOptions { concurrency: 2, queues: Vec::new() }, stop).await });
    let r = backend.result(&id, Some(Duration::from_secs(60))).await.expect("result");
    assert_eq!(r.status, taskweave::run::RunStatus::Failed);
    let mut recorded = None;
    for _ in 0..100 {
        recorded = store.get_run(&id).await.expect("store");
        if recorded.as_ref().is_some_and(|r| r.status.is_terminal()) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let recorded = recorded.expect("the run");
    assert_eq!(recorded.status, taskweave::run::RunStatus::Failed, "{recorded:#?}");
    assert_eq!(recorded.tasks["a"].output, Some(serde_json::json!({"x": 1})));
    assert_eq!(recorded.tasks["b"].error.as_deref(), Some("nope"));
}

/// A task that runs longer than the visibility timeout is not handed to a
/// second worker: its worker keeps the `unacked_index` score fresh.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_tasks_stay_with_their_worker() {
    let client = redis::Client::open(REDIS).expect("url");
    let mut c = match client.get_multiplexed_async_connection().await {
        Ok(c) => c,
        Err(e) => {
            if require_services() {
                panic!("Redis is required (TASKWEAVE_REQUIRE_SERVICES=1): {e}");
            }
            taskweave::backend::conformance::skipped(&format!("long_tasks_stay_with_their_worker: {e}"));
            return;
        }
    };
    let prefix = format!("tw-vis-{}:", uuid::Uuid::now_v7().simple());
    let mut options = BTreeMap::new();
    options.insert("broker".to_string(), toml::Value::String(REDIS.into()));
    options.insert("key_prefix".to_string(), toml::Value::String(prefix.clone()));
    options.insert("visibility_timeout".to_string(), toml::Value::String("1s".into()));
    let backend = CeleryBackend::open(driver_context(options, None)).await.expect("open");
    let cleanup = Cleanup { stop: CancellationToken::new(), prefix: prefix.clone() };
    // Two workers, each restoring what looks abandoned every half second.
    for _ in 0..2 {
        let (b, stop) = (Arc::clone(&backend), cleanup.stop.clone());
        tokio::spawn(async move { b.work(WorkerOptions { concurrency: 2, queues: Vec::new() }, stop).await });
    }
    let id = backend
        .submit(taskweave::backend::RunRequest::new(
            taskweave::backend::conformance::workflow(
                "version: 1\nname: vis\ntasks:\n  - {name: long, uses: sleep, with: {duration: 3500ms}}\n",
            ),
            serde_json::json!({}),
        ))
        .await
        .expect("submit");
    // While it runs, its in-flight entry is never older than the timeout.
    let mut seen = 0;
    for _ in 0..25 {
        let entries: Vec<(String, f64)> =
            redis::AsyncCommands::zrange_withscores(&mut c, format!("{prefix}unacked_index"), 0, -1).await.unwrap();
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs_f64();
        for (_, score) in &entries {
            assert!(now - score < 1.0, "an in-flight score went stale: {:.2}s old", now - score);
            seen += 1;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(seen > 0, "the task was never in flight");
    let r = backend.result(&id, Some(Duration::from_secs(60))).await.expect("result");
    assert_eq!(r.status, taskweave::run::RunStatus::Succeeded, "{r:#?}");
    assert_eq!(r.tasks["long"].attempts, 1, "the task ran once, on one worker");
}
