//! Workers are visible: `taskweave workers`, `GET /v1/workers` and the
//! `doctor` warning, against real worker processes (PostgreSQL at
//! 127.0.0.1:5432 or `DATABASE_URL`'s server; Redis at 127.0.0.1:6379, with
//! a Python Celery worker from `TASKWEAVE_CELERY_PYTHON` (else the CI
//! venv); a Temporal dev server with `--features temporal`). Tests that need a
//! service say SKIPPED without it, and fail under
//! `TASKWEAVE_REQUIRE_SERVICES=1`. Each test has its own database (the
//! Celery test a Redis database of its own), task queue and folder.

#![cfg(all(feature = "postgres", feature = "celery"))]

use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use serde_json::Value;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use taskweave::config::Config;
use taskweave::engine::{Engine, EngineBuilder, RunOptions};
use tower::ServiceExt;

use taskweave::backend::conformance::{FreshDatabase, eventually, skipped};

#[path = "support/processes.rs"]
mod processes;

/// A database and a folder of its own, with worker processes; all gone when dropped.
struct Env {
    _db: Option<FreshDatabase>,
    dir: tempfile::TempDir,
    children: Vec<Child>,
}

impl Env {
    /// A folder with `config` and no database.
    fn without_db(config: &str) -> Env {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir(dir.path().join("workflows")).expect("workflows folder");
        let store = format!("sqlite://{}/state.db", dir.path().display());
        std::fs::write(
            dir.path().join("taskweave.toml"),
            format!("[engine]\nworkflows = [\"workflows\"]\nstore = \"{store}\"\n\n{config}\n"),
        )
        .expect("config");
        Env { _db: None, dir, children: Vec::new() }
    }

    /// `config`: the rest of taskweave.toml; `{url}` is the database's URL.
    async fn new(test: &str, config: &str) -> Option<Env> {
        let db = FreshDatabase::or_skip(test, "tw_workers").await?;
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir(dir.path().join("workflows")).expect("workflows folder");
        let url = db.url();
        let store = format!("sqlite://{}/state.db", dir.path().display());
        std::fs::write(
            dir.path().join("taskweave.toml"),
            format!("[engine]\nworkflows = [\"workflows\"]\nstore = \"{store}\"\n\n{}\n", config.replace("{url}", &url)),
        )
        .expect("config");
        Some(Env { _db: Some(db), dir, children: Vec::new() })
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn cmd(&self) -> Command {
        processes::taskweave(self.path())
    }

    /// Start `taskweave worker ARGS...`; its output goes to `worker-N.log`.
    fn start_worker(&mut self, args: &[&str]) -> u32 {
        self.start(processes::worker(self.path(), args))
    }

    /// Start a process of this test; its output goes to `worker-N.log`.
    fn start(&mut self, cmd: Command) -> u32 {
        let n = self.children.len();
        let child = processes::spawn_logged(cmd, &self.path().join(format!("worker-{n}.log")));
        let pid = child.id();
        self.children.push(child);
        pid
    }

    fn signal(&mut self, pid: u32, sig: i32) {
        // SAFETY: signalling a child process this test started.
        unsafe { libc::kill(pid as i32, sig) };
        if let Some(c) = self.children.iter_mut().find(|c| c.id() == pid) {
            let _ = c.wait();
        }
    }

    /// `taskweave ARGS...`: exit code, stdout, stderr.
    fn run(&self, args: &[&str]) -> (Option<i32>, String, String) {
        let out = self.cmd().args(args).output().expect("taskweave");
        (out.status.code(), String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
    }

    /// `taskweave workers --format json [ARGS...]`, parsed.
    fn workers_json(&self, args: &[&str]) -> (Option<i32>, Value) {
        let mut all = vec!["workers", "--format", "json"];
        all.extend_from_slice(args);
        let (code, out, err) = self.run(&all);
        (code, serde_json::from_str(&out).unwrap_or_else(|e| panic!("not JSON ({e}): {out}\nstderr: {err}")))
    }

    async fn engine(&self) -> Engine {
        let config = Config::load(Some(&self.path().join("taskweave.toml"))).expect("config");
        EngineBuilder::new().config(config).build().await.expect("engine")
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        for c in &mut self.children {
            // SAFETY: killing a child process this test started.
            unsafe { libc::kill(c.id() as i32, libc::SIGKILL) };
            let _ = c.wait();
        }
    }
}

/// The entry of `backend` in a `{"backends": [...]}` answer.
fn entry<'a>(v: &'a Value, backend: &str) -> &'a Value {
    v["backends"].as_array().and_then(|a| a.iter().find(|e| e["backend"] == backend)).unwrap_or_else(|| panic!("no `{backend}` in {v}"))
}

fn workers_of(v: &Value, backend: &str) -> Vec<Value> {
    entry(v, backend)["workers"].as_array().cloned().unwrap_or_default()
}

/// How often a test asks again while it waits.
const POLL: Duration = Duration::from_millis(200);

const PG: &str = "[backends.pg]\nkind = \"postgres\"\nurl = \"{url}\"\npoll = \"200ms\"\nlease = \"2s\"\nshutdown_grace = \"1s\"\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_workers_are_listed_while_they_live() {
    let Some(mut env) = Env::new("postgres_workers_are_listed_while_they_live", PG).await else { return };
    // No worker yet: an empty list, and nothing queued.
    let (code, v) = env.workers_json(&["--backend", "pg"]);
    assert_eq!(code, Some(0), "{v}");
    assert_eq!(v["backends"].as_array().map(Vec::len), Some(1), "{v}");
    assert_eq!(entry(&v, "pg")["kind"], "postgres");
    assert_eq!(workers_of(&v, "pg"), Vec::<Value>::new());

    let a = env.start_worker(&["--backend", "pg", "--concurrency", "3", "--queue", "default", "--queue", "gpu"]);
    let b = env.start_worker(&["--backend", "pg", "--concurrency", "2"]);
    let v = eventually("two workers listed", Duration::from_secs(30), POLL, || async {
        let (_, v) = env.workers_json(&["--backend", "pg"]);
        (workers_of(&v, "pg").len() == 2).then_some(v)
    })
    .await;
    let ws = workers_of(&v, "pg");
    let wa = ws.iter().find(|w| w["pid"] == a).unwrap_or_else(|| panic!("worker {a} in {v}"));
    let wb = ws.iter().find(|w| w["pid"] == b).unwrap_or_else(|| panic!("worker {b} in {v}"));
    assert_eq!(wa["queues"], serde_json::json!(["default", "gpu"]));
    assert_eq!(wa["concurrency"], 3);
    assert_eq!(wb["queues"], serde_json::json!(["default"]));
    assert_eq!(wb["concurrency"], 2);
    assert_eq!(wa["runtime"], "taskweave");
    assert_eq!(wa["host"], taskweave::backend::workers::hostname());
    assert!(wa["last_heartbeat"].as_str().is_some_and(|t| t.ends_with('Z')), "{wa}");
    assert!(wa["started_at"].is_string(), "{wa}");

    // A task running on one of them is counted.
    let engine = env.engine().await;
    let wf = taskweave::backend::conformance::workflow("version: 1\nname: slow\ntasks:\n  - {name: s, uses: sleep, with: {seconds: 60}}\n");
    let run = engine.submit(wf, RunOptions { backend: Some("pg".into()), ..Default::default() }).await.expect("submit");
    eventually("one task running", Duration::from_secs(30), POLL, || async {
        let (_, v) = env.workers_json(&["--backend", "pg"]);
        let running: u64 = workers_of(&v, "pg").iter().filter_map(|w| w["running"].as_u64()).sum();
        (running == 1).then_some(())
    })
    .await;
    engine.cancel(&run).await.expect("cancel");

    // The human table shows both, with their pids and queues.
    let (code, out, _) = env.run(&["workers", "--backend", "pg"]);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.starts_with("backend pg (postgres): 2 live worker(s)"), "{out}");
    assert!(out.contains("RUNTIME") && out.contains("LAST HEARTBEAT"), "{out}");
    assert!(out.lines().any(|l| l.contains(&a.to_string()) && l.contains("default,gpu")), "{out}");

    // A worker that stops cleanly leaves the list at once ...
    env.signal(a, libc::SIGTERM);
    let (_, v) = env.workers_json(&["--backend", "pg"]);
    let pids: Vec<Value> = workers_of(&v, "pg").iter().map(|w| w["pid"].clone()).collect();
    assert_eq!(pids, vec![Value::from(b)], "{v}");
    // ... and one that dies leaves it when its lease (2s) runs out.
    env.signal(b, libc::SIGKILL);
    let started = Instant::now();
    eventually("the killed worker is gone", Duration::from_secs(15), POLL, || async {
        let (_, v) = env.workers_json(&["--backend", "pg"]);
        workers_of(&v, "pg").is_empty().then_some(())
    })
    .await;
    assert!(started.elapsed() < Duration::from_secs(10));
    engine.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn doctor_warns_when_tasks_wait_and_no_worker_takes_them() {
    let Some(mut env) = Env::new("doctor_warns_when_tasks_wait_and_no_worker_takes_them", PG).await else { return };
    // Nothing queued: no warning.
    let (code, out, _) = env.run(&["doctor"]);
    assert_eq!(code, Some(0), "{out}");
    assert!(!out.contains("warn"), "{out}");
    assert!(out.trim_end().ends_with("everything answers"), "{out}");

    let engine = env.engine().await;
    let on_pg = || RunOptions { backend: Some("pg".into()), ..Default::default() };
    let hello = taskweave::backend::conformance::workflow("version: 1\nname: hello\ntasks:\n  - {name: a, uses: echo, with: {n: 1}}\n");
    let gpu =
        taskweave::backend::conformance::workflow("version: 1\nname: gpu\nqueue: gpu\ntasks:\n  - {name: a, uses: echo, with: {n: 1}}\n");
    let first = engine.submit(hello.clone(), on_pg()).await.expect("submit");
    engine.submit(hello, on_pg()).await.expect("submit");
    engine.submit(gpu, on_pg()).await.expect("submit");

    // No worker at all: both queues are named, with their counts; a warning is no failure.
    let (code, out, _) = env.run(&["doctor"]);
    assert_eq!(code, Some(0), "{out}");
    let warn = out.lines().find(|l| l.starts_with("warn")).unwrap_or_else(|| panic!("no warning: {out}"));
    assert!(warn.contains("workers pg"), "{warn}");
    assert!(warn.contains("2 in `default`") && warn.contains("1 in `gpu`"), "{warn}");
    assert!(warn.contains("taskweave worker --backend pg --queue default --queue gpu"), "{warn}");
    assert!(out.trim_end().ends_with("everything answers, 1 warning(s)"), "{out}");
    // `taskweave workers` says the same.
    let (_, v) = env.workers_json(&[]);
    assert_eq!(entry(&v, "pg")["queued"], serde_json::json!({"default": 2, "gpu": 1}), "{v}");

    // A worker on `default` takes those; `gpu` still waits.
    env.start_worker(&["--backend", "pg"]);
    let r = engine.get_result(&first, Some(Duration::from_secs(30))).await.expect("result");
    assert!(r.status.is_terminal(), "{r:?}");
    let out = eventually("only gpu waits", Duration::from_secs(30), POLL, || async {
        let (_, out, _) = env.run(&["doctor"]);
        out.lines().any(|l| l.starts_with("warn") && l.contains("1 in `gpu`") && !l.contains("default")).then_some(out)
    })
    .await;
    assert!(out.contains("--queue gpu`"), "{out}");
    engine.shutdown().await;
}

async fn call(app: &axum::Router, uri: &str) -> (StatusCode, Value) {
    let resp = app.clone().oneshot(Request::get(uri).body(Body::empty()).expect("request")).await.expect("response");
    let status = resp.status();
    let bytes = resp.into_body().collect().await.expect("body").to_bytes();
    (status, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_lists_workers_per_backend() {
    let config = format!("{PG}\n[backends.down]\nkind = \"postgres\"\nurl = \"postgres://postgres@127.0.0.1:1/nothing\"\n");
    let Some(mut env) = Env::new("the_api_lists_workers_per_backend", &config).await else { return };
    let pid = env.start_worker(&["--backend", "pg", "--concurrency", "4"]);
    let engine = env.engine().await;
    let app = taskweave::api::router(engine.clone(), taskweave::api::ApiOptions::default());

    // Every backend, in name order; the one that cannot be asked says why.
    let v = {
        let until = Instant::now() + Duration::from_secs(30);
        loop {
            let (status, v) = call(&app, "/v1/workers").await;
            assert_eq!(status, StatusCode::OK, "{v}");
            if workers_of(&v, "pg").len() == 1 {
                break v;
            }
            assert!(Instant::now() < until, "the worker never showed: {v}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    };
    let names: Vec<&str> = v["backends"].as_array().expect("backends").iter().filter_map(|e| e["backend"].as_str()).collect();
    assert_eq!(names, vec!["down", "local", "pg"]);
    assert_eq!(entry(&v, "down")["error"]["code"], "backend_unavailable", "{v}");
    assert!(entry(&v, "down").get("workers").is_none(), "{v}");
    // The local backend's worker is this process.
    let local = workers_of(&v, "local");
    assert_eq!(local.len(), 1, "{v}");
    assert_eq!(local[0]["pid"], std::process::id());
    let w = &workers_of(&v, "pg")[0];
    assert_eq!((w["pid"].as_u64(), w["concurrency"].as_u64(), w["running"].as_u64()), (Some(pid as u64), Some(4), Some(0)), "{w}");

    // One backend.
    let (status, one) = call(&app, "/v1/workers?backend=pg").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(one["backends"].as_array().map(Vec::len), Some(1), "{one}");
    // An unknown backend is 422, one that cannot be asked 503.
    let (status, e) = call(&app, "/v1/workers?backend=nope").await;
    assert_eq!((status, e["error"]["code"].as_str()), (StatusCode::UNPROCESSABLE_ENTITY, Some("unknown_backend")), "{e}");
    let (status, e) = call(&app, "/v1/workers?backend=down").await;
    assert_eq!((status, e["error"]["code"].as_str()), (StatusCode::SERVICE_UNAVAILABLE, Some("backend_unavailable")), "{e}");
    engine.shutdown().await;
}

#[test]
fn the_cli_refuses_an_unknown_backend_and_says_what_local_means() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        dir.path().join("taskweave.toml"),
        "[engine]\nworkflows = []\n\n[backends.pg]\nkind = \"postgres\"\nurl = \"postgres://postgres@127.0.0.1:1/nothing\"\n",
    )
    .expect("config");
    let run = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_taskweave"))
            .args(args)
            .current_dir(dir.path())
            .env_remove("TASKWEAVE_CONFIG")
            .output()
            .expect("taskweave");
        (out.status.code(), String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
    };
    let (code, _, err) = run(&["workers", "--backend", "pgg"]);
    assert_eq!(code, Some(2), "{err}");
    assert_eq!(err.trim(), "error: no backend `pgg` (did you mean `pg`?); configured: local, pg");
    // A backend that cannot be asked: exit 1, and the line says why.
    let (code, out, _) = run(&["workers"]);
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("backend pg (postgres): cannot be asked: backend `pg` is unavailable"), "{out}");
    assert!(out.contains("backend local (local): 0 live worker(s)\n  runs execute in the process that starts them"), "{out}");
    let (code, out, _) = run(&["workers", "--backend", "local", "--format", "json"]);
    assert_eq!(code, Some(0), "{out}");
    let v: Value = serde_json::from_str(&out).expect("json");
    assert_eq!(v["backends"][0]["workers"], serde_json::json!([]));
    assert!(v["backends"][0]["note"].as_str().is_some_and(|n| n.contains("process that starts them")), "{v}");
}

/// The Redis database of the Celery test (Celery's remote control cannot
/// carry a key prefix the Python worker does not know, so it gets a whole
/// database, flushed before and after).
const CELERY_DB: u8 = 13;

fn celery_redis() -> String {
    format!("redis://127.0.0.1:6379/{CELERY_DB}")
}

fn flush_celery_db() -> Result<(), String> {
    let client = redis::Client::open(celery_redis()).map_err(|e| e.to_string())?;
    let mut c = client
        .get_connection_with_timeout(Duration::from_secs(2))
        .map_err(|e| format!("Redis at {} does not answer: {e}", celery_redis()))?;
    redis::cmd("FLUSHDB").query::<()>(&mut c).map_err(|e| e.to_string())
}

/// The Python with celery, if there is one.
fn celery_python() -> Result<std::path::PathBuf, String> {
    let p = match std::env::var_os("TASKWEAVE_CELERY_PYTHON") {
        Some(p) => std::path::PathBuf::from(p),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join(".ci/.venv/bin/python"),
    };
    let ok = Command::new(&p).args(["-c", "import celery, redis"]).stdout(Stdio::null()).stderr(Stdio::null()).status();
    match ok {
        Ok(s) if s.success() => Ok(p),
        _ => Err(format!("no Python with celery[redis] at {} (set TASKWEAVE_CELERY_PYTHON)", p.display())),
    }
}

/// Flushes the Celery test's database when dropped (after the processes are gone).
struct FlushOnDrop;

impl Drop for FlushOnDrop {
    fn drop(&mut self) {
        let _ = flush_celery_db();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn celery_lists_taskweave_and_python_workers() {
    let test = "celery_lists_taskweave_and_python_workers";
    let py = match celery_python() {
        Ok(p) => p,
        Err(e) => return skipped(&format!("{test}: {e}")),
    };
    if let Err(e) = flush_celery_db() {
        return skipped(&format!("{test}: {e}"));
    }
    let _flush = FlushOnDrop;
    let broker = celery_redis();
    let mut env = Env::without_db(&format!("[backends.cel]\nkind = \"celery\"\nbroker = \"{broker}\"\nworker_lease = \"1500ms\"\n"));
    let ours = env.start_worker(&["--backend", "cel", "--concurrency", "2"]);
    let mut python = Command::new(&py);
    python
        .args(["-m", "celery", "-A", "tasks", "worker", "-Q", "celery,extra", "--pool", "solo", "--concurrency", "1"])
        .args(["--hostname", "twtest@%h", "--without-heartbeat", "--without-gossip", "--without-mingle", "-l", "warning"])
        .current_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/celery"))
        .env("CELERY_BROKER_URL", &broker)
        .env("CELERY_RESULT_BACKEND", &broker);
    let theirs = env.start(python);

    let v = eventually("both workers listed", Duration::from_secs(60), POLL, || async {
        let (_, v) = env.workers_json(&["--backend", "cel"]);
        let ws = workers_of(&v, "cel");
        (ws.iter().any(|w| w["pid"] == ours) && ws.iter().any(|w| w["pid"] == theirs)).then_some(v)
    })
    .await;
    let ws = workers_of(&v, "cel");
    let tw = ws.iter().find(|w| w["pid"] == ours).expect("ours");
    assert_eq!(tw["runtime"], "taskweave", "{tw}");
    assert_eq!(tw["queues"], serde_json::json!(["taskweave"]), "{tw}");
    assert_eq!((tw["concurrency"].as_u64(), tw["running"].as_u64()), (Some(2), Some(0)), "{tw}");
    assert_eq!(tw["host"], taskweave::backend::workers::hostname());
    let pw = ws.iter().find(|w| w["pid"] == theirs).expect("theirs");
    assert_eq!(pw["runtime"], "celery", "{pw}");
    assert_eq!(pw["id"], format!("twtest@{}", taskweave::backend::workers::hostname()), "{pw}");
    let mut queues: Vec<&str> = pw["queues"].as_array().expect("queues").iter().filter_map(Value::as_str).collect();
    queues.sort();
    assert_eq!(queues, vec!["celery", "extra"], "{pw}");
    assert_eq!((pw["concurrency"].as_u64(), pw["running"].as_u64()), (Some(1), Some(0)), "{pw}");
    assert!(pw["started_at"].is_string() && pw["last_heartbeat"].is_string(), "{pw}");
    assert_eq!(entry(&v, "cel")["queued"]["celery"], 0, "{v}");

    // The Python worker goes; a `celery:` task of a run waits in `celery` for one.
    env.signal(theirs, libc::SIGKILL);
    let engine = env.engine().await;
    let wf = taskweave::backend::conformance::workflow(
        "version: 1\nname: py\ntasks:\n  - name: add\n    celery: {task: tasks.add, args: [1, 2]}\n",
    );
    engine.submit(wf, RunOptions { backend: Some("cel".into()), ..Default::default() }).await.expect("submit");
    let out = eventually("doctor warns about `celery`", Duration::from_secs(60), POLL, || async {
        let (code, out, _) = env.run(&["doctor"]);
        (code == Some(0) && out.lines().any(|l| l.starts_with("warn") && l.contains("1 in `celery`"))).then_some(out)
    })
    .await;
    assert!(out.contains("a Python Celery worker with `-Q celery`"), "{out}");
    let (_, v) = env.workers_json(&["--backend", "cel"]);
    assert!(workers_of(&v, "cel").iter().all(|w| w["pid"] != theirs), "the killed Python worker is not listed: {v}");
    // The running `celery:` task counts on our worker.
    eventually("our worker runs one task", Duration::from_secs(30), POLL, || async {
        let (_, v) = env.workers_json(&["--backend", "cel"]);
        workers_of(&v, "cel").iter().any(|w| w["pid"] == ours && w["running"] == 1).then_some(())
    })
    .await;

    // Ours stops cleanly and leaves the list at once.
    env.signal(ours, libc::SIGTERM);
    let (_, v) = env.workers_json(&["--backend", "cel"]);
    assert_eq!(workers_of(&v, "cel"), Vec::<Value>::new(), "{v}");
    engine.shutdown().await;
}

#[cfg(feature = "temporal")]
#[path = "support/temporal.rs"]
mod temporal_server;

#[cfg(feature = "temporal")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn temporal_lists_the_pollers_of_its_task_queue() {
    let Some(server) = temporal_server::shared("temporal_lists_the_pollers_of_its_task_queue") else { return };
    let queue = format!("tw-workers-{}", uuid::Uuid::now_v7().simple());
    let mut env =
        Env::without_db(&format!("[backends.tp]\nkind = \"temporal\"\naddress = \"{}\"\ntask_queue = \"{queue}\"\n", server.address()));
    // Nobody polls yet.
    let (code, v) = env.workers_json(&["--backend", "tp"]);
    assert_eq!(code, Some(0), "{v}");
    assert_eq!(workers_of(&v, "tp"), Vec::<Value>::new(), "{v}");
    let pid = env.start_worker(&["--backend", "tp", "--concurrency", "3"]);
    let v = eventually("the worker polls", Duration::from_secs(60), POLL, || async {
        let (_, v) = env.workers_json(&["--backend", "tp"]);
        workers_of(&v, "tp").iter().any(|w| w["pid"] == pid).then_some(v)
    })
    .await;
    let w = workers_of(&v, "tp").into_iter().find(|w| w["pid"] == pid).expect("ours");
    assert_eq!(w["id"], format!("taskweave:{pid}@{}:c=3", taskweave::backend::workers::hostname()), "{w}");
    assert_eq!((w["runtime"].as_str(), w["concurrency"].as_u64()), (Some("taskweave"), Some(3)), "{w}");
    assert_eq!(w["queues"], serde_json::json!([queue]), "{w}");
    assert!(w["last_heartbeat"].is_string(), "{w}");
}
