//! Interoperability with real Python Celery (5.x from PyPI), both ways:
//! a workflow mixing `celery:` tasks served by a Python worker with native
//! tasks served by taskweave; Python `send_task` to taskweave workers, read
//! with `AsyncResult.get()`; a taskweave worker process killed with SIGKILL
//! mid-task, whose task is redelivered and recorded once.
//!
//! Python: `TASKWEAVE_CELERY_PYTHON`, else `.ci/.venv/bin/python`, with
//! celery importable; without it the tests say SKIPPED (and fail under
//! `TASKWEAVE_REQUIRE_SERVICES=1`). Each test owns one Redis DB (10-12),
//! flushed before and after.
#![cfg(feature = "celery")]

use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;
use taskweave::backend::celery::CeleryBackend;
use taskweave::backend::{Backend, DriverContext, RunRequest, WorkerOptions};
use taskweave::run::actions::{Handlers, Limits};
use taskweave::run::executor::Executor;
use taskweave::run::{RunStatus, TaskStatus};
use tokio_util::sync::CancellationToken;

const WAIT: Duration = Duration::from_secs(90);

#[path = "support/processes.rs"]
mod processes;

fn skip(test: &str, why: &str) {
    taskweave::backend::conformance::skipped(&format!("{test}: {why}"));
}

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/celery")
}

/// The Python with celery, if there is one.
fn python() -> Result<PathBuf, String> {
    let p = match std::env::var_os("TASKWEAVE_CELERY_PYTHON") {
        Some(p) => PathBuf::from(p),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join(".ci/.venv/bin/python"),
    };
    let ok = Command::new(&p).args(["-c", "import celery, redis"]).stdout(Stdio::null()).stderr(Stdio::null()).status();
    match ok {
        Ok(s) if s.success() => Ok(p),
        _ => Err(format!("no Python with celery[redis] at {} (set TASKWEAVE_CELERY_PYTHON)", p.display())),
    }
}

fn redis_url(db: u8) -> String {
    format!("redis://127.0.0.1:6379/{db}")
}

fn flush(db: u8) -> Result<(), String> {
    let client = redis::Client::open(redis_url(db)).map_err(|e| e.to_string())?;
    let mut c = client.get_connection_with_timeout(Duration::from_secs(2)).map_err(|e| format!("Redis does not answer: {e}"))?;
    redis::cmd("FLUSHDB").query::<()>(&mut c).map_err(|e| e.to_string())
}

/// Everything a test needs up, or why not.
fn services(test: &str, db: u8) -> Option<PathBuf> {
    let py = match python() {
        Ok(p) => p,
        Err(e) => {
            skip(test, &e);
            return None;
        }
    };
    if let Err(e) = flush(db) {
        skip(test, &e);
        return None;
    }
    Some(py)
}

/// A child process killed (SIGKILL, by PID) and reaped when dropped, also
/// when the test panics; its Redis DB is flushed afterwards.
struct Proc {
    child: Child,
    db: Option<u8>,
}

impl Proc {
    fn kill(&mut self) {
        // SAFETY: signalling a child we started, by its PID.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGKILL) };
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
        if let Some(db) = self.db {
            let _ = flush(db);
        }
    }
}

/// A Python Celery worker with the fixture tasks on DB `db`, queue `celery`.
fn python_worker(py: &Path, db: u8) -> Proc {
    python_worker_with(py, db, &["--pool", "solo"])
}

fn python_worker_with(py: &Path, db: u8, pool: &[&str]) -> Proc {
    let child = Command::new(py)
        .args(["-m", "celery", "-A", "tasks", "worker", "-Q", "celery", "--without-heartbeat", "--without-gossip"])
        .args(pool)
        .args(["--without-mingle", "-l", "warning"])
        .current_dir(fixtures())
        .env("CELERY_BROKER_URL", redis_url(db))
        .env("CELERY_RESULT_BACKEND", redis_url(db))
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start the Python Celery worker");
    Proc { child, db: Some(db) }
}

/// Call tasks from Python (`send_task` + `AsyncResult.get()`).
fn python_calls(py: &Path, db: u8, calls: Value) -> Vec<Value> {
    let out = Command::new(py)
        .arg("client.py")
        .arg(calls.to_string())
        .current_dir(fixtures())
        .env("CELERY_BROKER_URL", redis_url(db))
        .env("CELERY_RESULT_BACKEND", redis_url(db))
        .output()
        .expect("run the Python client");
    assert!(out.status.success(), "python client failed: {}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    let v: Value = serde_json::from_str(text.trim()).unwrap_or_else(|e| panic!("client output {text:?}: {e}"));
    v.as_array().cloned().expect("a list")
}

async fn backend(db: u8, registry: Arc<taskweave::reload::Registry>) -> Arc<CeleryBackend> {
    let mut options = BTreeMap::new();
    options.insert("broker".to_string(), toml::Value::String(redis_url(db)));
    options.insert("visibility_timeout".to_string(), toml::Value::String("3s".into()));
    let executor = Executor {
        handlers: Arc::new(Handlers::with_builtins()),
        limits: Arc::new(Limits { kill_grace: Duration::from_millis(500), ..Limits::default() }),
        writer: None,
        events: None,
    };
    let ctx = DriverContext { name: "celery".into(), kind: "celery".into(), options, executor, store: None, registry };
    CeleryBackend::open(ctx).await.expect("open the celery backend")
}

fn start_worker(b: &Arc<CeleryBackend>) -> CancellationToken {
    let stop = CancellationToken::new();
    let (b, s) = (Arc::clone(b), stop.clone());
    tokio::spawn(async move { b.work(WorkerOptions { concurrency: 4, queues: Vec::new() }, s).await });
    stop
}

fn empty_registry() -> Arc<taskweave::reload::Registry> {
    Arc::new(taskweave::reload::Registry::new(Vec::new(), Default::default()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workflow_mixes_python_and_native_tasks() {
    const DB: u8 = 10;
    let Some(py) = services("workflow_mixes_python_and_native_tasks", DB) else { return };
    let _python = python_worker(&py, DB);
    let b = backend(DB, empty_registry()).await;
    let stop = start_worker(&b);
    let wf = taskweave::backend::conformance::workflow(
        r#"
version: 1
name: mixed
tasks:
  - {name: sum, celery: {task: tasks.add, args: ["{{input.a}}", "{{input.b}}"]}}
  - {name: shout, parents: [sum], celery: {task: tasks.shout, kwargs: {text: "total {{tasks.sum.output}}"}, priority: 9}}
  - {name: native, parents: [sum], uses: echo, with: {total: "{{tasks.sum.output}}"}}
  - {name: join, parents: [shout, native], uses: echo, with: {a: "{{tasks.shout.output.text}}", b: "{{tasks.native.output.total}}"}}
  - {name: broken, parents: [native], celery: {task: tasks.fail, args: ["bad pdf"]}}
  - {name: after, parents: [broken], uses: echo}
"#,
    );
    let id = b.submit(RunRequest::new(wf, json!({"a": 2, "b": 3}))).await.expect("submit");
    let r = b.result(&id, Some(WAIT)).await.expect("result");
    stop.cancel();
    assert_eq!(r.status, RunStatus::Failed, "{r:#?}");
    let t = |n: &str| r.tasks.get(n).unwrap_or_else(|| panic!("no task {n}"));
    assert_eq!(t("sum").output, Some(json!(5)), "a Python result is the task output");
    assert_eq!(t("shout").output, Some(json!({"text": "TOTAL 5"})));
    assert_eq!(t("native").output, Some(json!({"total": 5})));
    assert_eq!(t("join").output, Some(json!({"a": "TOTAL 5", "b": 5})), "fan-in after a Python and a native task");
    assert_eq!(t("broken").status, TaskStatus::Failed);
    assert_eq!(t("broken").error.as_deref(), Some("ValueError: bad pdf"), "the Python exception type and message");
    assert_eq!(t("after").status, TaskStatus::Skipped);
    assert_eq!(t("after").skip_reason.as_deref(), Some("parent broken failed"));
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_calls_taskweave_handlers_and_workflows() {
    const DB: u8 = 11;
    let Some(py) = services("python_calls_taskweave_handlers_and_workflows", DB) else { return };
    let registry = empty_registry();
    registry.insert(taskweave::backend::conformance::workflow(
        r#"
version: 1
name: greet
input: {type: object, required: [name], properties: {name: {type: string}}}
tasks:
  - {name: hello, uses: echo, with: {greeting: "hello {{input.name}}"}}
  - {name: loud, parents: [hello], uses: echo, with: {text: "{{tasks.hello.output.greeting}}!"}}
"#,
    ));
    registry.insert(taskweave::backend::conformance::workflow(
        "version: 1\nname: doomed\ntasks:\n  - {name: a, uses: fail, with: {message: out of paper}}\n  - {name: b, parents: [a], uses: echo}\n",
    ));
    let b = backend(DB, registry).await;
    let stop = start_worker(&b);
    // Cleans the DB at the end, also on panic.
    let _clean = Proc { child: Command::new("true").spawn().expect("true"), db: Some(DB) };
    let out = python_calls(
        &py,
        DB,
        json!([
            {"task": "taskweave.echo", "kwargs": {"x": 1, "y": [true, null]}},
            {"task": "taskweave.fail", "kwargs": {"message": "no such invoice"}},
            {"task": "taskweave.workflow.greet", "kwargs": {"name": "ada"}},
            {"task": "taskweave.workflow.doomed", "kwargs": {}},
            {"task": "taskweave.no-such-handler", "kwargs": {}},
            {"task": "taskweave.workflow.greet", "kwargs": {"nom": "x"}},
        ]),
    );
    assert_eq!(out[0]["ok"], json!({"x": 1, "y": [true, null]}), "{out:#?}");
    assert_eq!(out[1]["error"], "TaskweaveError", "{out:#?}");
    assert!(out[1]["message"].as_str().unwrap_or("").contains("no such invoice"), "{out:#?}");
    let run = &out[2]["ok"];
    assert_eq!(run["status"], "succeeded", "{out:#?}");
    assert_eq!(run["run_id"], out[2]["id"], "the run id is the Celery task id");
    assert_eq!(run["tasks"]["loud"]["output"], json!({"text": "hello ada!"}));
    assert_eq!(out[3]["error"], "WorkflowFailed", "{out:#?}");
    let msg = out[3]["message"].as_str().unwrap_or("");
    assert!(msg.contains("task `a` failed") && msg.contains("out of paper"), "{msg}");
    assert_eq!(out[4]["error"], "NotRegistered", "{out:#?}");
    assert!(out[4]["message"].as_str().unwrap_or("").contains("no handler `no-such-handler`"), "{out:#?}");
    assert_eq!(out[5]["error"], "ValueError", "{out:#?}");
    assert!(out[5]["message"].as_str().unwrap_or("").contains("missing required property `name`"), "{out:#?}");
    // The runs Python started are runs of this backend too.
    let r = b.result(out[2]["id"].as_str().unwrap(), None).await.expect("the run");
    assert_eq!(r.workflow, "greet");

    // Bad input on the wire: a FAILURE that says why, and the worker lives on.
    let client = redis::Client::open(redis_url(DB)).unwrap();
    let mut c = client.get_multiplexed_async_connection().await.unwrap();
    let mut bad = taskweave::backend::celery::wire::Outgoing::new("taskweave.echo", "taskweave");
    bad.kwargs.insert("x".into(), json!(1));
    let mut v: Value = serde_json::from_str(&bad.encode()).unwrap();
    use base64::Engine as _;
    v["body"] = json!(base64::engine::general_purpose::STANDARD.encode("[[], {\"x\": 1}]"));
    let _: () = redis::AsyncCommands::lpush(&mut c, "taskweave", v.to_string()).await.unwrap();
    let mut wrong_type =
        serde_json::from_str::<Value>(&taskweave::backend::celery::wire::Outgoing::new("taskweave.echo", "taskweave").encode()).unwrap();
    wrong_type["content-type"] = json!("application/x-python-serialize");
    let _: () = redis::AsyncCommands::lpush(&mut c, "taskweave", wrong_type.to_string()).await.unwrap();
    for (id, want) in
        [(bad.id.clone(), "2 elements"), (wrong_type["headers"]["id"].as_str().unwrap().to_string(), "application/x-python-serialize")]
    {
        let key = format!("celery-task-meta-{id}");
        let mut got: Option<String> = None;
        for _ in 0..200 {
            got = redis::AsyncCommands::get(&mut c, &key).await.unwrap();
            if got.is_some() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let got: Value = serde_json::from_str(&got.expect("a FAILURE result for the bad message")).unwrap();
        assert_eq!(got["status"], "FAILURE");
        assert_eq!(got["task_id"], json!(id));
        assert_eq!(got["result"]["exc_type"], "InvalidTaskMessage");
        assert!(got["result"]["exc_message"][0].as_str().unwrap().contains(want), "{got}");
    }
    let again = python_calls(&py, DB, json!([{"task": "taskweave.echo", "kwargs": {"still": "alive"}}]));
    assert_eq!(again[0]["ok"], json!({"still": "alive"}));
    let unacked: i64 = redis::AsyncCommands::hlen(&mut c, "unacked").await.unwrap();
    assert_eq!(unacked, 0, "every message was acked");
    stop.cancel();
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_worker_task_is_redelivered_and_recorded_once() {
    const DB: u8 = 12;
    let Some(_py) = services("killed_worker_task_is_redelivered_and_recorded_once", DB) else { return };
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir_all(dir.path().join("workflows")).unwrap();
    std::fs::write(
        dir.path().join("taskweave.toml"),
        format!(
            "[engine]\nworkflows = [\"workflows\"]\nstore = \"sqlite://{}/state.db\"\n\n[backends.celery]\nkind = \"celery\"\nbroker = \"{}\"\nvisibility_timeout = \"3s\"\n",
            dir.path().display(),
            redis_url(DB)
        ),
    )
    .unwrap();
    let worker = || {
        let child = processes::worker(dir.path(), &["--backend", "celery", "--concurrency", "2"])
            .env_remove("CELERY_BROKER_URL")
            .env_remove("CELERY_RESULT_BACKEND")
            .env_remove("TASK_QUEUE_BACKEND")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start taskweave worker");
        Proc { child, db: None }
    };
    let b = backend(DB, empty_registry()).await;
    let _clean = Proc { child: Command::new("true").spawn().expect("true"), db: Some(DB) };
    let log = dir.path().join("log");
    let wf = taskweave::backend::conformance::workflow(
        r#"
version: 1
name: survive
tasks:
  - {name: slow, shell: "sleep 4; echo slow-end >> {{input.log}}"}
  - {name: count, parents: [slow], shell: "echo ran >> {{input.log}}"}
"#,
    );
    let id = b.submit(RunRequest::new(wf, json!({"log": log.display().to_string()}))).await.expect("submit");
    let mut first = worker();
    let mut running = false;
    // A debug build starting next to Python workers on two cores can be slow.
    for _ in 0..1200 {
        let r = b.result(&id, None).await.expect("result");
        if r.tasks["slow"].status == TaskStatus::Running {
            running = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(running, "the first worker never started the task");
    tokio::time::sleep(Duration::from_millis(500)).await;
    first.kill();
    let client = redis::Client::open(redis_url(DB)).unwrap();
    let mut c = client.get_multiplexed_async_connection().await.unwrap();
    let in_flight: i64 = redis::AsyncCommands::hlen(&mut c, "unacked").await.unwrap();
    assert_eq!(in_flight, 1, "the killed worker's message stays in `unacked`");
    let _second = worker();
    let r = b.result(&id, Some(WAIT)).await.expect("result");
    assert_eq!(r.status, RunStatus::Succeeded, "{r:#?}");
    assert_eq!(r.tasks["slow"].attempts, 2, "the task ran again after its worker died");
    let ran = std::fs::read_to_string(&log).unwrap_or_default();
    assert_eq!(ran.lines().filter(|l| *l == "ran").count(), 1, "the child ran exactly once: {ran:?}");
    // The killed worker's process group died with it: only the second try ended.
    assert_eq!(ran.lines().filter(|l| *l == "slow-end").count(), 1, "the killed try's process outlived its worker: {ran:?}");
    for _ in 0..100 {
        let n: i64 = redis::AsyncCommands::hlen(&mut c, "unacked").await.unwrap();
        if n == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let n: i64 = redis::AsyncCommands::hlen(&mut c, "unacked").await.unwrap();
    assert_eq!(n, 0, "the redelivered message was acked");
    b.shutdown().await;
}

/// Python-side ends of `celery:` tasks: a hard time limit, a revoke by an
/// operator, and taskweave's own timeout, which revokes the Python task.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_time_limits_revokes_and_our_timeouts() {
    const DB: u8 = 13;
    let Some(py) = services("python_time_limits_revokes_and_our_timeouts", DB) else { return };
    // Time limits and terminating revokes need the prefork pool.
    let _python = python_worker_with(&py, DB, &["--pool", "prefork", "-c", "2"]);
    let b = backend(DB, empty_registry()).await;
    let stop = start_worker(&b);
    let client = redis::Client::open(redis_url(DB)).unwrap();
    let mut c = client.get_multiplexed_async_connection().await.unwrap();

    // A hard time limit in Python: the task fails with Python's exception.
    let wf = taskweave::backend::conformance::workflow(
        "version: 1\nname: limits\ntasks:\n  - {name: limited, celery: {task: tasks.limited, args: [5000]}}\n",
    );
    let id = b.submit(RunRequest::new(wf, json!({}))).await.expect("submit");
    let r = b.result(&id, Some(WAIT)).await.expect("result");
    assert_eq!(r.tasks["limited"].status, TaskStatus::Failed, "{r:#?}");
    assert!(r.tasks["limited"].error.as_deref().unwrap_or("").starts_with("TimeLimitExceeded"), "{r:#?}");

    // Revoked by an operator while it runs: REVOKED fails the task.
    let wf = taskweave::backend::conformance::workflow(
        "version: 1\nname: revoked\ntasks:\n  - {name: long, celery: {task: tasks.sleep_ms, args: [30000]}}\n",
    );
    let id = b.submit(RunRequest::new(wf, json!({}))).await.expect("submit");
    let python_id = running_python_task(&mut c, "tasks.sleep_ms").await;
    let out = Command::new(&py)
        .arg("revoke.py")
        .arg(&python_id)
        .current_dir(fixtures())
        .env("CELERY_BROKER_URL", redis_url(DB))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let r = b.result(&id, Some(WAIT)).await.expect("result");
    assert_eq!(r.tasks["long"].status, TaskStatus::Failed, "{r:#?}");
    let err = r.tasks["long"].error.clone().unwrap_or_default();
    assert!(err.starts_with("TaskRevokedError") && err.contains("revoked"), "{err}");

    // taskweave's own timeout: the task times out here and is revoked there.
    let wf = taskweave::backend::conformance::workflow(
        "version: 1\nname: ours\ntasks:\n  - {name: long, timeout: 2s, celery: {task: tasks.sleep_ms, args: [30000]}}\n",
    );
    let id = b.submit(RunRequest::new(wf, json!({}))).await.expect("submit");
    let python_id = running_python_task(&mut c, "tasks.sleep_ms").await;
    let r = b.result(&id, Some(WAIT)).await.expect("result");
    assert_eq!(r.tasks["long"].status, TaskStatus::TimedOut, "{r:#?}");
    assert_eq!(r.tasks["long"].error.as_deref(), Some("attempt 1 timed out after 2s"));
    let key = format!("celery-task-meta-{python_id}");
    let mut status = None;
    for _ in 0..200 {
        let got: Option<String> = redis::AsyncCommands::get(&mut c, &key).await.unwrap();
        if let Some(v) = got {
            status = serde_json::from_str::<Value>(&v).ok().and_then(|v| v["status"].as_str().map(str::to_string));
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(status.as_deref(), Some("REVOKED"), "the Python task was terminated by taskweave's revoke");
    stop.cancel();
    b.shutdown().await;
}

/// The id of the `task` a Python worker is running (from `unacked`).
async fn running_python_task(c: &mut redis::aio::MultiplexedConnection, task: &str) -> String {
    for _ in 0..400 {
        let entries: Vec<String> = redis::AsyncCommands::hvals(c, "unacked").await.unwrap();
        for e in entries {
            let v: Value = serde_json::from_str(&e).unwrap_or_default();
            if v[0]["headers"]["task"] == task {
                return v[0]["headers"]["id"].as_str().unwrap().to_string();
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("no Python worker took `{task}`");
}
