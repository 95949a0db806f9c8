//! The Temporal backend under faults, against real dev servers: a `taskweave
//! worker` killed with SIGKILL mid-task and another started; the Temporal
//! server killed and restarted on its SQLite file mid-run; a server that is
//! not there at all.

#![cfg(feature = "temporal")]

#[path = "support/temporal.rs"]
mod temporal_server;

use serde_json::json;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};
use taskweave::backend::{Backend, BackendError, RunRequest, WorkerOptions};
use taskweave::run::{RunStatus, TaskStatus};
use tokio_util::sync::CancellationToken;

const WAIT: Duration = Duration::from_secs(90);

async fn backend(pairs: &[(&str, &str)]) -> Arc<dyn Backend> {
    temporal_server::open_backend(pairs, None).await
}

#[path = "support/processes.rs"]
mod processes;

/// A `taskweave worker` process; killed with SIGKILL when dropped.
fn start_worker(dir: &std::path::Path) -> processes::Killed {
    start_worker_logging(dir, Stdio::inherit())
}

fn start_worker_logging(dir: &std::path::Path, stderr: impl Into<Stdio>) -> processes::Killed {
    let child = processes::worker(dir, &["--backend", "tp", "--concurrency", "2"])
        .stdout(Stdio::null())
        .stderr(stderr)
        .spawn()
        .expect("start taskweave worker");
    processes::Killed(child)
}

async fn wait_running(b: &dyn Backend, id: &str, task: &str) {
    let what = format!("`{task}` to start running");
    taskweave::backend::conformance::eventually(&what, WAIT, Duration::from_millis(100), || async {
        (b.result(id, None).await.expect("result").tasks[task].status == TaskStatus::Running).then_some(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_mid_task_leaves_the_run_to_another() {
    let Some(server) = temporal_server::shared("a_worker_killed_mid_task_leaves_the_run_to_another") else { return };
    let dir = tempfile::tempdir().unwrap();
    let queue = format!("kill-{}", uuid::Uuid::now_v7().simple());
    std::fs::write(
        dir.path().join("taskweave.toml"),
        format!(
            "[backends.tp]\nkind = \"temporal\"\naddress = \"{}\"\ntask_queue = \"{queue}\"\nheartbeat = \"2s\"\nsticky_timeout = \"1s\"\n",
            server.address()
        ),
    )
    .unwrap();
    let b = backend(&[("address", &server.address()), ("task_queue", &queue), ("heartbeat", "2s")]).await;
    let log = dir.path().join("log");
    let wf = taskweave::backend::conformance::workflow(
        r#"
version: 1
name: survive
tasks:
  - {name: slow, run: ["sh", "-c", "echo start >> {{input.log}}; sleep 3; echo end >> {{input.log}}"]}
  - {name: after, parents: [slow], shell: "echo after >> {{input.log}}"}
"#,
    );
    let id = b.submit(RunRequest::new(wf, json!({"log": log.display().to_string()}))).await.expect("submit");
    let mut first = start_worker(dir.path());
    wait_running(b.as_ref(), &id, "slow").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    first.kill();
    let killed_at = Instant::now();
    let _second = start_worker(dir.path());
    let r = b.result(&id, Some(WAIT)).await.expect("result");
    assert_eq!(r.status, RunStatus::Succeeded, "{r:#?}");
    // No `retry`: the second try comes from the crash budget, not the task's attempts.
    assert_eq!(r.tasks["slow"].attempts, 2, "the killed attempt and the one that finished: {:?}", r.tasks["slow"]);
    let ran = std::fs::read_to_string(&log).unwrap();
    assert_eq!(ran.lines().filter(|l| *l == "start").count(), 2, "{ran:?}");
    assert_eq!(ran.lines().filter(|l| *l == "after").count(), 1, "the child ran exactly once: {ran:?}");
    // The killed worker's process group died with it: only the second try ended.
    assert_eq!(ran.lines().filter(|l| *l == "end").count(), 1, "the killed try's process outlived its worker: {ran:?}");
    eprintln!("the run completed {:?} after its worker was killed", killed_at.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_resume_after_the_server_restarts_on_its_database() {
    let Some(binary) = temporal_server::binary_or_skip("runs_resume_after_the_server_restarts_on_its_database") else { return };
    let dir = tempfile::tempdir().unwrap();
    let server = temporal_server::Server::start(&binary, &dir.path().join("temporal.db"));
    let b = backend(&[("address", &server.address()), ("task_queue", "restart"), ("heartbeat", "2s"), ("sticky_timeout", "1s")]).await;
    let stop = CancellationToken::new();
    let (w, s) = (Arc::clone(&b), stop.clone());
    tokio::spawn(async move { w.work(WorkerOptions { concurrency: 4, queues: Vec::new() }, s).await });
    let wf = taskweave::backend::conformance::workflow(
        r#"
version: 1
name: restart
tasks:
  - {name: a, run: ["echo", "a"]}
  - {name: slow, parents: [a], run: ["sleep", "4"]}
  - {name: c, parents: [slow], run: ["echo", "c"]}
"#,
    );
    let id = b.submit(RunRequest::new(wf, json!({}))).await.expect("submit");
    wait_running(b.as_ref(), &id, "slow").await;
    server.restart();
    let r = b.result(&id, Some(WAIT)).await.expect("result after the restart");
    assert_eq!(r.status, RunStatus::Succeeded, "{r:#?}");
    for t in ["a", "slow", "c"] {
        assert_eq!(r.tasks[t].status, TaskStatus::Succeeded, "{t}: {r:#?}");
    }
    assert_eq!(r.tasks["a"].output, Some(json!("a")), "outputs from before the restart are kept");
    // A run submitted after the restart runs too.
    let wf = taskweave::backend::conformance::workflow("version: 1\nname: after-restart\ntasks:\n  - {name: x, run: [\"echo\", \"x\"]}\n");
    let id = b.submit(RunRequest::new(wf, json!({}))).await.expect("submit after the restart");
    let r = b.result(&id, Some(WAIT)).await.expect("result");
    assert_eq!(r.status, RunStatus::Succeeded, "{r:#?}");
    stop.cancel();
}

#[tokio::test]
async fn an_unreachable_server_fails_submission_fast_and_clearly() {
    // A port nothing listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let address = format!("127.0.0.1:{port}");
    let b = backend(&[("address", &address), ("connect_timeout", "2s")]).await;
    let wf = taskweave::backend::conformance::workflow("version: 1\nname: nowhere\ntasks:\n  - {name: x, run: [\"echo\", \"x\"]}\n");
    let start = Instant::now();
    let err = b.submit(RunRequest::new(wf, json!({}))).await.expect_err("no server");
    assert!(start.elapsed() < Duration::from_secs(10), "submission hung for {:?}", start.elapsed());
    match &err {
        BackendError::Unavailable { reason, .. } => assert!(reason.contains(&address), "{reason}"),
        other => panic!("expected Unavailable, got {other:?}"),
    }
    assert!(err.allows_fallback(), "routing may fall back from an unreachable Temporal");
    let check = b.check().await.expect_err("doctor sees it too");
    assert!(!check.to_string().contains('\n'), "one line: {check}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_started_before_the_server_waits_for_it() {
    let Some(binary) = temporal_server::binary_or_skip("a_worker_started_before_the_server_waits_for_it") else { return };
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let address = format!("127.0.0.1:{port}");
    std::fs::write(
        dir.path().join("taskweave.toml"),
        format!("[backends.tp]\nkind = \"temporal\"\naddress = \"{address}\"\ntask_queue = \"late\"\nconnect_timeout = \"1s\"\n"),
    )
    .unwrap();
    let log_path = dir.path().join("worker.log");
    let _worker = start_worker_logging(dir.path(), std::fs::File::create(&log_path).unwrap());
    let start = Instant::now();
    let mut log = String::new();
    while start.elapsed() < Duration::from_secs(30) && !log.contains("retrying") {
        tokio::time::sleep(Duration::from_millis(200)).await;
        log = std::fs::read_to_string(&log_path).unwrap_or_default();
    }
    assert!(log.contains(&address) && log.contains("retrying"), "the worker says it waits for the server: {log}");
    let server = temporal_server::Server::start_on(&binary, &dir.path().join("temporal.db"), port);
    let b = backend(&[("address", &server.address()), ("task_queue", "late")]).await;
    let wf = taskweave::backend::conformance::workflow("version: 1\nname: late\ntasks:\n  - {name: x, run: [\"echo\", \"x\"]}\n");
    let id = b.submit(RunRequest::new(wf, json!({}))).await.expect("submit");
    let r = b.result(&id, Some(WAIT)).await.expect("result");
    assert_eq!(r.status, RunStatus::Succeeded, "the worker connected once the server came: {r:#?}");
}
