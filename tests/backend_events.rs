//! Run events of distributed backends reach the process that submitted the
//! run (the one serving the API), exactly once, in the shape the local
//! backend sends: checked against a real PostgreSQL and a real Redis, with
//! workers in their own processes and in the submitting process.

#![cfg(any(feature = "postgres", feature = "celery"))]

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use taskweave::backend::WorkerOptions;
use taskweave::config::Config;
use taskweave::engine::{Engine, RunOptions};
use taskweave::run::executor::RunEvent;
use tokio_util::sync::CancellationToken;

/// a -> b (fails) -> c.
const CHAIN: &str = "version: 1\nname: events-chain\ntasks:\n  - {name: a, uses: echo}\n  - {name: b, parents: [a], uses: fail, with: {message: boom}}\n  - {name: c, parents: [b], uses: echo}\n";

fn require(test: &str, why: &str) {
    taskweave::backend::conformance::skipped(&format!("{test}: {why}"));
}

/// (task, status, attempt) with the count of each, for one run.
type Multiset = BTreeMap<(Option<String>, String, u32), usize>;

fn multiset(evs: &[RunEvent]) -> Multiset {
    let mut m = Multiset::new();
    for e in evs {
        *m.entry((e.task.clone(), e.status.clone(), e.attempt)).or_default() += 1;
    }
    m
}

fn expected() -> Multiset {
    let mut m = Multiset::new();
    for (t, s, a) in [
        (None, "running", 0),
        (Some("a"), "running", 1),
        (Some("a"), "succeeded", 1),
        (Some("b"), "running", 1),
        (Some("b"), "failed", 1),
        (Some("c"), "skipped", 0),
        (None, "failed", 0),
    ] {
        m.insert((t.map(str::to_string), s.to_string(), a), 1);
    }
    m
}

/// Every event of `run_id` until its run-level end, then whatever else
/// arrives within `linger` (which must be nothing: each event comes once).
async fn collect(rx: &mut tokio::sync::broadcast::Receiver<RunEvent>, run_id: &str, linger: Duration) -> Vec<RunEvent> {
    let mut out = Vec::new();
    let ended = tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            let ev = rx.recv().await.expect("the event channel stays open and keeps up");
            if ev.run_id != run_id {
                continue;
            }
            let end = ev.task.is_none() && ev.status != "running";
            out.push(ev);
            if end {
                return;
            }
        }
    })
    .await;
    assert!(ended.is_ok(), "no run-level end within 60s; got {out:#?}");
    let deadline = tokio::time::Instant::now() + linger;
    while let Ok(Ok(ev)) = tokio::time::timeout_at(deadline, rx.recv()).await {
        if ev.run_id == run_id {
            out.push(ev);
        }
    }
    out
}

/// Check one run's events against the local backend's shape.
fn check(evs: &[RunEvent], run_id: &str, backend: &str) {
    assert_eq!(multiset(evs), expected(), "{backend}: events of run {run_id}: {evs:#?}");
    assert!(evs.iter().all(|e| e.workflow == "events-chain"), "{evs:#?}");
    let first = &evs[0];
    assert_eq!((first.task.as_deref(), first.status.as_str()), (None, "running"), "{backend}: the run starts first: {evs:#?}");
    let last = evs.last().expect("events");
    assert_eq!((last.task.as_deref(), last.status.as_str()), (None, "failed"), "{backend}: the run ends last: {evs:#?}");
    let failed = evs.iter().find(|e| e.task.as_deref() == Some("b") && e.status == "failed").expect("b failed");
    assert!(failed.error.as_deref().unwrap_or("").contains("boom"), "{backend}: the failure carries its error: {failed:#?}");
    let pos = |t: &str, s: &str| evs.iter().position(|e| e.task.as_deref() == Some(t) && e.status == s).expect("event");
    assert!(pos("a", "running") < pos("a", "succeeded"), "{evs:#?}");
    assert!(pos("a", "succeeded") < pos("b", "running"), "{evs:#?}");
    assert!(pos("b", "running") < pos("b", "failed"), "{evs:#?}");
    for e in evs.iter().filter(|e| e.status == "running" || e.status == "succeeded") {
        assert!(e.error.is_none(), "{backend}: no error on {e:#?}");
    }
}

/// The same workflow on the local backend of `engine`: the reference.
async fn local_reference(engine: &Engine) {
    let mut rx = engine.subscribe();
    let wf = taskweave::backend::conformance::workflow(CHAIN);
    let id = engine.submit(wf, RunOptions { backend: Some("local".into()), ..Default::default() }).await.expect("submit locally");
    let evs = collect(&mut rx, &id, Duration::from_millis(300)).await;
    check(&evs, &id, "local");
}

#[path = "support/processes.rs"]
mod processes;

/// A `taskweave worker` process for `backend` in `dir`, stopped when dropped.
fn start_worker(dir: &Path, backend: &str) -> processes::Killed {
    let cmd = processes::worker(dir, &["--backend", backend, "--concurrency", "2"]);
    processes::Killed(processes::spawn_logged(cmd, &dir.join(format!("worker-{backend}.log"))))
}

/// Submit the chain on `backend` from an engine that runs no worker (a
/// worker process does), then from one that is also a worker: each time
/// the submitter sees the local backend's events, once each.
async fn submitter_sees_each_event_once(dir: &Path, config: &str, backend: &str) {
    std::fs::write(dir.join("taskweave.toml"), config).expect("config");
    let engine = Engine::builder().config(Config::parse(config).expect("config")).without_store().build().await.expect("engine");
    local_reference(&engine).await;

    // A worker in its own process.
    let worker = start_worker(dir, backend);
    let mut rx = engine.subscribe();
    let wf = taskweave::backend::conformance::workflow(CHAIN);
    let opts = RunOptions { backend: Some(backend.into()), ..Default::default() };
    let id = engine.submit(Arc::clone(&wf), opts.clone()).await.expect("submit");
    let evs = collect(&mut rx, &id, Duration::from_millis(800)).await;
    check(&evs, &id, backend);
    drop(worker);

    // The submitting process is the worker too: still once each.
    let stop = CancellationToken::new();
    let b = Arc::clone(engine.backends().get(backend).expect("the backend"));
    let (s, w) = (stop.clone(), Arc::clone(&b));
    let working = tokio::spawn(async move { w.work(WorkerOptions { concurrency: 2, queues: Vec::new() }, s).await });
    let id = engine.submit(wf, opts).await.expect("submit");
    let evs = collect(&mut rx, &id, Duration::from_millis(800)).await;
    check(&evs, &id, backend);
    stop.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(10), working).await;
    engine.shutdown().await;
}

#[cfg(feature = "postgres")]
mod postgres {
    use super::*;

    use taskweave::backend::conformance::FreshDatabase;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn postgres_runs_send_their_events_to_the_submitter() {
        let test = "postgres_runs_send_their_events_to_the_submitter";
        let Some(db) = FreshDatabase::or_skip(test, "tw_events").await else { return };
        let dir = tempfile::tempdir().expect("tempdir");
        let url = db.url();
        let config = format!(
            "[engine]\ndefault_backend = \"local\"\n\n[backends.local]\nkind = \"local\"\n\n\
             [backends.pg]\nkind = \"postgres\"\nurl = \"{url}\"\npoll = \"200ms\"\n"
        );
        submitter_sees_each_event_once(dir.path(), &config, "pg").await;
        metrics_count_the_run(&config, "pg").await;
    }
}

#[cfg(feature = "celery")]
mod celery {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn celery_runs_send_their_events_to_the_submitter() {
        let test = "celery_runs_send_their_events_to_the_submitter";
        let redis = "redis://127.0.0.1:6379/0";
        let up = tokio::time::timeout(Duration::from_secs(3), tokio::net::TcpStream::connect("127.0.0.1:6379")).await;
        if !matches!(up, Ok(Ok(_))) {
            return require(test, "Redis is not available at 127.0.0.1:6379");
        }
        let dir = tempfile::tempdir().expect("tempdir");
        // A queue and key prefix of its own: other tests share the server.
        let prefix = format!("tw-events-{}-{}:", std::process::id(), uuid::Uuid::now_v7().simple());
        let config = format!(
            "[engine]\ndefault_backend = \"local\"\n\n[backends.local]\nkind = \"local\"\n\n\
             [backends.cel]\nkind = \"celery\"\nbroker = \"{redis}\"\nkey_prefix = \"{prefix}\"\nvisibility_timeout = \"3s\"\n"
        );
        submitter_sees_each_event_once(dir.path(), &config, "cel").await;
    }
}

/// `/metrics` of `taskweave serve` counts a run on `backend` from its events.
#[cfg(feature = "postgres")]
async fn metrics_count_the_run(config: &str, backend: &str) {
    use http_body_util::BodyExt;
    use tower::ServiceExt;
    let engine = Engine::builder().config(Config::parse(config).expect("config")).without_store().build().await.expect("engine");
    let app = taskweave::api::router(engine.clone(), taskweave::api::ApiOptions::default());
    let metrics = || async {
        let req = axum::http::Request::get("/metrics").body(axum::body::Body::empty()).expect("request");
        let resp = app.clone().oneshot(req).await.expect("the router answers");
        String::from_utf8_lossy(&resp.into_body().collect().await.expect("body").to_bytes()).into_owned()
    };
    // The metrics feed listens once the router is up.
    let _ = metrics().await;
    let stop = CancellationToken::new();
    let b = Arc::clone(engine.backends().get(backend).expect("the backend"));
    let (s, w) = (stop.clone(), Arc::clone(&b));
    let working = tokio::spawn(async move { w.work(WorkerOptions { concurrency: 2, queues: Vec::new() }, s).await });
    let wf = taskweave::backend::conformance::workflow(CHAIN);
    let id = engine.submit(wf, RunOptions { backend: Some(backend.into()), ..Default::default() }).await.expect("submit");
    let r = engine.get_result(&id, Some(Duration::from_secs(60))).await.expect("result");
    assert_eq!(r.status.as_str(), "failed", "{r:#?}");
    let want = format!(r#"taskweave_runs_finished_total{{workflow="events-chain",backend="{backend}",status="failed"}} 1"#);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let text = loop {
        let t = metrics().await;
        if t.contains(&want) || tokio::time::Instant::now() > deadline {
            break t;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(text.contains(&want), "{text}");
    assert!(text.contains(r#"taskweave_active_runs{workflow="events-chain"} 0"#), "{text}");
    assert!(text.contains(&format!(r#"taskweave_runs_started_total{{workflow="events-chain",backend="{backend}"}} 1"#)), "{text}");
    stop.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(10), working).await;
    engine.shutdown().await;
}
