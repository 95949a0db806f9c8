//! The run store suite: written once as async functions taking a store, run
//! against SQLite in a temporary folder and against a real PostgreSQL (each
//! test in a fresh database of its own, dropped at the end).
//!
//! PostgreSQL is found at `TASKWEAVE_TEST_DATABASE_URL` (default
//! `postgres://postgres@127.0.0.1:5432/postgres`). When it cannot be reached
//! the PostgreSQL tests say SKIPPED and pass, unless
//! `TASKWEAVE_REQUIRE_SERVICES=1`, where they fail.

use futures::FutureExt;
use serde_json::{Value, json};
use sqlx::Connection;
use std::future::Future;
use std::io::Write;
use std::panic::AssertUnwindSafe;
use std::time::{Duration, Instant};
use taskweave::backend::conformance::{FreshDatabase, with_database};
use taskweave::run::{Routing, RunResult, RunStatus, TaskResult, TaskStatus};
use taskweave::store::{AttemptRecord, Lease, Owner, RunFilter, Store, StoreError};
use time::OffsetDateTime;

const DEFAULT_PG_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

/// What a test gets: an open store, and its URL for tests that reopen it.
struct Ctx {
    store: Store,
    url: String,
}

enum Cleanup {
    Dir(#[allow(dead_code)] tempfile::TempDir),
    Postgres(#[allow(dead_code)] FreshDatabase),
}

struct Fixture {
    ctx: Ctx,
    cleanup: Cleanup,
}

/// Say something past the test harness's output capture.
fn say(line: &str) {
    let _ = writeln!(std::io::stderr(), "{line}");
}

impl Fixture {
    async fn sqlite() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("nested/state.db").display());
        let store = Store::open(&url).await.unwrap();
        Fixture { ctx: Ctx { store, url }, cleanup: Cleanup::Dir(dir) }
    }

    async fn postgres(test: &str) -> Option<Fixture> {
        let admin_url = std::env::var("TASKWEAVE_TEST_DATABASE_URL").unwrap_or_else(|_| DEFAULT_PG_URL.to_string());
        let db = match FreshDatabase::create_on(&admin_url, "tw_store").await {
            Ok(db) => db,
            Err(why) => {
                taskweave::backend::conformance::skipped(&format!("{test}: {why}"));
                return None;
            }
        };
        let url = db.url();
        let store = Store::open(&url).await.unwrap();
        Some(Fixture { ctx: Ctx { store, url }, cleanup: Cleanup::Postgres(db) })
    }

    async fn finish(self) {
        self.ctx.store.close().await;
        drop(self.cleanup);
    }
}

/// Run one case with its fixture, cleaning up even when the case panics.
async fn drive<F, Fut>(fixture: Fixture, case: F)
where
    F: FnOnce(Ctx) -> Fut,
    Fut: Future<Output = ()>,
{
    let ctx = Ctx { store: fixture.ctx.store.clone(), url: fixture.ctx.url.clone() };
    let outcome = AssertUnwindSafe(case(ctx)).catch_unwind().await;
    fixture.finish().await;
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
}

macro_rules! suite {
    ($($case:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    super::drive(super::Fixture::sqlite().await, super::$case).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    let Some(fx) = super::Fixture::postgres(concat!("postgres::", stringify!($case))).await else {
                        return;
                    };
                    super::drive(fx, super::$case).await;
                }
            )*
        }
    };
}

suite!(
    round_trip_of_a_run_with_outputs_errors_skips_and_routing,
    the_run_output_is_recorded_with_the_end,
    list_filters_orders_newest_first_and_limits,
    attempts_keep_their_last_state_in_start_order,
    cancel_requests_apply_to_unfinished_runs_only,
    orphans_of_dead_local_processes_are_failed,
    runs_of_an_expired_lease_are_failed_even_under_our_pid,
    writer_acknowledges_a_creation_once_committed,
    writer_coalesces_and_flush_waits_for_commit,
    writer_drains_its_queue_after_being_dropped,
    writer_takes_100k_task_updates,
    writer_reports_a_failed_write_through_flush,
    a_creation_that_may_find_its_run_recorded_is_quiet,
    short_ids_find_their_runs,
    reopening_keeps_history,
    a_newer_schema_is_refused_clearly,
    idempotency_keys_name_one_run_per_window,
    orphans_are_adopted_by_one_process_to_resume,
);

// ---------------------------------------------------------------- helpers

/// A time both databases keep exactly (microseconds).
fn at(secs: i64) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp(1_750_000_000 + secs).unwrap() + time::Duration::microseconds(123_456)
}

fn new_run(id: &str, workflow: &str, created: OffsetDateTime, tasks: &[&str]) -> RunResult {
    RunResult {
        run_id: id.to_string(),
        workflow: workflow.to_string(),
        version: "sha256:abc".to_string(),
        status: RunStatus::Queued,
        backend: "local".to_string(),
        routing: None,
        error: None,
        output: None,
        retry_of: None,
        entity_id: id.to_string(),
        context: json!({}),
        input: json!({}),
        created_at: created,
        started_at: None,
        finished_at: None,
        tasks: tasks.iter().map(|t| (t.to_string(), TaskResult::pending())).collect(),
    }
}

fn definition(tasks: &[&str]) -> Value {
    json!({"version": 1, "name": "wf", "tasks": tasks.iter().map(|t| json!({"name": t, "uses": "echo"})).collect::<Vec<_>>()})
}

fn done(status: TaskStatus, output: Option<Value>, at_secs: i64) -> TaskResult {
    TaskResult {
        status,
        output,
        attempts: 1,
        error: None,
        skip_reason: None,
        started_at: Some(at(at_secs)),
        finished_at: Some(at(at_secs + 1)),
    }
}

/// A pid that surely belonged to a process that has exited.
fn dead_pid() -> u32 {
    let mut child = std::process::Command::new("true").spawn().unwrap();
    let pid = child.id();
    child.wait().unwrap();
    pid
}

/// Run one statement on the store's database, outside the store.
async fn raw_exec(url: &str, sql: String) {
    if url.starts_with("sqlite:") {
        let mut c = sqlx::SqliteConnection::connect(url).await.unwrap();
        sqlx::query(sqlx::AssertSqlSafe(sql)).execute(&mut c).await.unwrap();
        c.close().await.unwrap();
    } else {
        let mut c = sqlx::PgConnection::connect(url).await.unwrap();
        sqlx::query(sqlx::AssertSqlSafe(sql)).execute(&mut c).await.unwrap();
        c.close().await.unwrap();
    }
}

// ---------------------------------------------------------------- the suite

async fn round_trip_of_a_run_with_outputs_errors_skips_and_routing(cx: Ctx) {
    let s = &cx.store;
    let created = at(0).to_offset(time::macros::offset!(+2));
    let mut run = new_run("0193-round-trip", "diamond", created, &["a", "b", "c", "d", "e"]);
    run.routing = Some(Routing {
        flag: "task_abstraction_enabled".into(),
        variant: Some("100".into()),
        reason: "MATCH".into(),
        ..Default::default()
    });
    run.entity_id = "user-7".into();
    run.context = json!({"user_id": "user-7", "organization_id": 3});
    run.input = json!({"document_path": "/tmp/a b.pdf", "n": [1, 2.5, null]});
    let def = definition(&["e", "d", "c", "b", "a"]);

    s.create_run(&run, &def).await.unwrap();
    assert_eq!(s.get_run(&run.run_id).await.unwrap().as_ref(), Some(&run));
    assert_eq!(s.get_definition(&run.run_id).await.unwrap(), Some(def.clone()));
    assert_eq!(s.owner(&run.run_id).await.unwrap(), Some(Owner::current()));
    assert!(matches!(
        s.create_run(&run, &def).await,
        Err(StoreError::RunExists(id)) if id == run.run_id
    ));

    run.status = RunStatus::Failed;
    run.started_at = Some(at(1));
    run.finished_at = Some(at(30));
    run.error = Some("one task failed".into());
    run.tasks.insert("a".into(), done(TaskStatus::Succeeded, Some(json!({"x": 1, "text": "héllo ✓"})), 2));
    run.tasks.insert("b".into(), done(TaskStatus::Succeeded, Some(json!("plain text\n")), 3));
    run.tasks.insert("c".into(), done(TaskStatus::Succeeded, Some(Value::Null), 4));
    let mut failed = done(TaskStatus::Failed, None, 5);
    failed.attempts = 3;
    failed.error = Some("exit status 2: no such file".into());
    run.tasks.insert("d".into(), failed);
    let mut skipped = TaskResult::pending();
    skipped.status = TaskStatus::Skipped;
    skipped.skip_reason = Some("parent `d` failed".into());
    skipped.finished_at = Some(at(9));
    run.tasks.insert("e".into(), skipped);
    s.save_run(&run).await.unwrap();

    let back = s.get_run(&run.run_id).await.unwrap().unwrap();
    assert_eq!(back, run);
    // Output `null` and no output stay different.
    assert_eq!(back.tasks["c"].output, Some(Value::Null));
    assert_eq!(back.tasks["d"].output, None);
    // Saving keeps what only create_run writes.
    assert_eq!(s.get_definition(&run.run_id).await.unwrap(), Some(def));
    // The JSON of a stored run is the contract's.
    let j = serde_json::to_value(&back).unwrap();
    assert_eq!(j["routing"]["reason"], "MATCH");
    assert_eq!(j["tasks"]["e"]["skip_reason"], "parent `d` failed");
    assert_eq!(j["created_at"], "2025-06-15T15:06:40.123456Z");

    assert_eq!(s.get_run("no-such-run").await.unwrap(), None);
    assert_eq!(s.get_definition("no-such-run").await.unwrap(), None);
}

/// A succeeded run's `output` is recorded with its end, typed as it was
/// rendered, and comes back in the run's JSON; a run without one has none.
async fn the_run_output_is_recorded_with_the_end(cx: Ctx) {
    let s = &cx.store;
    let w = s.writer();
    let mut run = new_run("0193-output", "wf", at(0), &["a"]);
    w.create_acked(&run, definition(&["a"])).await.unwrap();
    assert_eq!(s.get_run(&run.run_id).await.unwrap().unwrap().output, None);
    run.status = RunStatus::Succeeded;
    run.started_at = Some(at(1));
    run.finished_at = Some(at(2));
    run.output = Some(json!({"pages": ["p1", "p2"], "n": 3, "none": null, "text": "héllo ✓"}));
    w.run_fields(&run);
    w.flush().await.unwrap();
    let back = s.get_run(&run.run_id).await.unwrap().unwrap();
    assert_eq!(back.output, run.output);
    assert_eq!(serde_json::to_value(&back).unwrap()["output"]["n"], 3);
    // Written whole, too.
    run.output = Some(json!(["a list", 1]));
    s.save_run(&run).await.unwrap();
    assert_eq!(s.get_run(&run.run_id).await.unwrap().unwrap().output, Some(json!(["a list", 1])));
    let plain = new_run("0193-no-output", "wf", at(3), &["a"]);
    s.create_run(&plain, &definition(&["a"])).await.unwrap();
    assert!(serde_json::to_value(s.get_run(&plain.run_id).await.unwrap().unwrap()).unwrap().get("output").is_none());
}

async fn list_filters_orders_newest_first_and_limits(cx: Ctx) {
    let s = &cx.store;
    for i in 0..55 {
        let wf = if i % 2 == 0 { "even" } else { "odd" };
        let mut r = new_run(&format!("run-{i:03}"), wf, at(i), &["t"]);
        if i % 5 == 0 {
            r.status = RunStatus::Succeeded;
            r.finished_at = Some(at(i + 100));
        }
        s.create_run(&r, &definition(&["t"])).await.unwrap();
    }
    // Same creation time: the larger id (later uuid v7) first.
    s.create_run(&new_run("run-054b", "odd", at(54), &[]), &json!({})).await.unwrap();

    let all = s.list_runs(&RunFilter::default()).await.unwrap();
    assert_eq!(all.len(), 50);
    assert_eq!(all[0].run_id, "run-054b");
    assert_eq!(all[1].run_id, "run-054");
    assert_eq!(all[49].run_id, "run-006");
    assert!(all.windows(2).all(|w| w[0].created_at >= w[1].created_at));

    let odd = s.list_runs(&RunFilter { workflow: Some("odd".into()), limit: Some(100), ..Default::default() }).await.unwrap();
    assert_eq!(odd.len(), 28);
    assert!(odd.iter().all(|r| r.workflow == "odd"));

    let done = s.list_runs(&RunFilter { status: Some(RunStatus::Succeeded), ..Default::default() }).await.unwrap();
    let ids: Vec<&str> = done.iter().map(|r| r.run_id.as_str()).collect();
    assert_eq!(
        ids,
        ["run-050", "run-045", "run-040", "run-035", "run-030", "run-025", "run-020", "run-015", "run-010", "run-005", "run-000"]
    );
    assert_eq!(done[0].finished_at, Some(at(150)));
    assert_eq!(done[0].backend, "local");

    let both = s.list_runs(&RunFilter { workflow: Some("odd".into()), status: Some(RunStatus::Succeeded), limit: Some(2) }).await.unwrap();
    let ids: Vec<&str> = both.iter().map(|r| r.run_id.as_str()).collect();
    assert_eq!(ids, ["run-045", "run-035"]);

    let none = s.list_runs(&RunFilter { workflow: Some("nope".into()), ..Default::default() }).await.unwrap();
    assert!(none.is_empty());
}

async fn attempts_keep_their_last_state_in_start_order(cx: Ctx) {
    let s = &cx.store;
    s.create_run(&new_run("r-att", "wf", at(0), &["a", "b"]), &definition(&["a", "b"])).await.unwrap();
    let w = s.writer();
    let attempt = |task: &str, n: u32, status: TaskStatus, error: Option<&str>, start: i64, end: Option<i64>| AttemptRecord {
        run_id: "r-att".into(),
        task: task.into(),
        attempt: n,
        status,
        error: error.map(str::to_string),
        started_at: at(start),
        finished_at: end.map(at),
    };
    w.attempt(attempt("a", 1, TaskStatus::Running, None, 1, None));
    w.attempt(attempt("b", 1, TaskStatus::Running, None, 2, None));
    w.flush().await.unwrap();
    w.attempt(attempt("a", 1, TaskStatus::Failed, Some("exit status 1"), 1, Some(3)));
    w.attempt(attempt("a", 2, TaskStatus::Succeeded, None, 5, Some(6)));
    w.attempt(attempt("b", 1, TaskStatus::TimedOut, Some("timed out after 1s"), 2, Some(4)));
    w.flush().await.unwrap();

    let got = s.attempts("r-att").await.unwrap();
    assert_eq!(
        got,
        vec![
            attempt("a", 1, TaskStatus::Failed, Some("exit status 1"), 1, Some(3)),
            attempt("b", 1, TaskStatus::TimedOut, Some("timed out after 1s"), 2, Some(4)),
            attempt("a", 2, TaskStatus::Succeeded, None, 5, Some(6)),
        ]
    );
    assert!(s.attempts("other").await.unwrap().is_empty());
}

async fn cancel_requests_apply_to_unfinished_runs_only(cx: Ctx) {
    let s = &cx.store;
    let mut running = new_run("r-running", "wf", at(0), &["a"]);
    running.status = RunStatus::Running;
    let queued = new_run("r-queued", "wf", at(1), &["a"]);
    let mut finished = new_run("r-done", "wf", at(2), &["a"]);
    finished.status = RunStatus::Succeeded;
    for r in [&running, &queued, &finished] {
        s.create_run(r, &definition(&["a"])).await.unwrap();
    }
    let ids: Vec<String> = ["r-running", "r-queued", "r-done", "r-unknown"].map(String::from).to_vec();

    assert_eq!(s.cancel_requested(&ids).await.unwrap(), Vec::<String>::new());
    assert!(s.request_cancel("r-running").await.unwrap());
    assert!(s.request_cancel("r-running").await.unwrap(), "asking twice is fine");
    assert!(!s.request_cancel("r-done").await.unwrap());
    assert!(!s.request_cancel("r-unknown").await.unwrap());
    assert_eq!(s.cancel_requested(&ids).await.unwrap(), ["r-running"]);
    assert_eq!(s.cancel_requested(&ids[1..]).await.unwrap(), Vec::<String>::new());
    assert_eq!(s.cancel_requested(&[]).await.unwrap(), Vec::<String>::new());

    // Saving the run (the executor's own writes) keeps the request ...
    running.tasks.insert("a".into(), done(TaskStatus::Running, None, 3));
    s.save_run(&running).await.unwrap();
    assert_eq!(s.cancel_requested(&ids).await.unwrap(), ["r-running"]);
    // ... until the run ends: then nothing is pending.
    running.status = RunStatus::Cancelled;
    s.save_run(&running).await.unwrap();
    assert_eq!(s.cancel_requested(&ids).await.unwrap(), Vec::<String>::new());
}

async fn orphans_of_dead_local_processes_are_failed(cx: Ctx) {
    let s = &cx.store;
    let here = Owner::current();
    let dead = Owner { host: here.host.clone(), pid: dead_pid(), instance: None };
    let elsewhere = Owner { host: format!("{}-other-host", here.host), pid: dead.pid, instance: None };
    let def = definition(&["a", "b", "c"]);
    let make = |id: &str, status: RunStatus| {
        let mut r = new_run(id, "wf", at(0), &["a", "b", "c"]);
        r.status = status;
        if status != RunStatus::Queued {
            r.tasks.insert("a".into(), done(TaskStatus::Succeeded, Some(json!(1)), 1));
            r.tasks.insert("b".into(), done(TaskStatus::Running, None, 2));
        }
        r
    };
    for (id, status, owner) in [
        ("o-dead-running", RunStatus::Running, &dead),
        ("o-dead-queued", RunStatus::Queued, &dead),
        ("o-alive", RunStatus::Running, &here),
        ("o-other-host", RunStatus::Running, &elsewhere),
        ("o-dead-but-done", RunStatus::Succeeded, &dead),
    ] {
        s.create_run(&make(id, status), &def).await.unwrap();
        assert!(s.set_owner(id, owner).await.unwrap());
    }
    assert!(!s.set_owner("o-unknown", &here).await.unwrap());
    // A run of a distributed backend outlives the process that submitted it.
    let mut distributed = make("o-dead-distributed", RunStatus::Running);
    distributed.backend = "pg".into();
    s.create_run(&distributed, &def).await.unwrap();
    assert!(s.set_owner("o-dead-distributed", &dead).await.unwrap());

    let mut recovered = s.recover_orphans_of(&["local".to_string()]).await.unwrap();
    recovered.sort();
    assert_eq!(recovered, ["o-dead-queued", "o-dead-running"]);
    assert_eq!(s.get_run("o-dead-distributed").await.unwrap().unwrap().status, RunStatus::Running);
    assert_eq!(s.recover_orphans().await.unwrap(), ["o-dead-distributed"], "without a filter every backend's runs are checked");

    let message = format!("interrupted: the process running it (pid {}) exited", dead.pid);
    let r = s.get_run("o-dead-running").await.unwrap().unwrap();
    assert_eq!(r.status, RunStatus::Failed);
    assert_eq!(r.error.as_deref(), Some(message.as_str()));
    assert!(r.finished_at.is_some());
    assert_eq!(r.tasks["a"].status, TaskStatus::Succeeded);
    assert_eq!(r.tasks["a"].error, None);
    for t in ["b", "c"] {
        assert_eq!(r.tasks[t].status, TaskStatus::Cancelled, "{t}");
        assert_eq!(r.tasks[t].error.as_deref(), Some(message.as_str()));
    }
    assert_eq!(r.tasks["b"].started_at, Some(at(2)));

    for (id, status) in [("o-alive", RunStatus::Running), ("o-other-host", RunStatus::Running), ("o-dead-but-done", RunStatus::Succeeded)] {
        assert_eq!(s.get_run(id).await.unwrap().unwrap().status, status, "{id}");
    }
    assert!(s.recover_orphans().await.unwrap().is_empty(), "recovery happens once");
}

async fn orphans_are_adopted_by_one_process_to_resume(cx: Ctx) {
    let s = &cx.store;
    let here = Owner::current();
    let dead = Owner { host: here.host.clone(), pid: dead_pid(), instance: None };
    let def = definition(&["a", "b"]);
    for id in ["r-1", "r-2"] {
        let mut r = new_run(id, "wf", at(0), &["a", "b"]);
        r.status = RunStatus::Running;
        r.tasks.insert("a".into(), done(TaskStatus::Succeeded, Some(json!(1)), 1));
        s.create_run(&r, &def).await.unwrap();
        assert!(s.set_owner(id, &dead).await.unwrap());
    }
    // Two recoveries at once: each run is adopted by one of them.
    let local = ["local".to_string()];
    let (x, y) = tokio::join!(s.adopt_orphans_of(&local), s.adopt_orphans_of(&local));
    let mut adopted: Vec<String> = x.unwrap().adopted.into_iter().chain(y.unwrap().adopted).map(|(id, _)| id).collect();
    adopted.sort();
    assert_eq!(adopted, ["r-1", "r-2"]);
    // Adopted, not failed: still running, with what it recorded, owned here.
    let r = s.get_run("r-1").await.unwrap().unwrap();
    assert_eq!(r.status, RunStatus::Running);
    assert_eq!(r.tasks["a"].output, Some(json!(1)));
    assert_eq!(s.owner("r-1").await.unwrap(), Some(here));
    assert!(s.adopt_orphans_of(&local).await.unwrap().adopted.is_empty(), "a run of a live process is not adopted");
}

/// Inside a container every start of taskweave has the same pid: a run of
/// a crashed instance carries our own pid, and only its lease tells.
async fn runs_of_an_expired_lease_are_failed_even_under_our_pid(cx: Ctx) {
    let s = &cx.store;
    let here = Owner::current();
    let now = OffsetDateTime::now_utc();
    let lease = |instance: &str, heartbeat: OffsetDateTime| Lease {
        instance: instance.to_string(),
        host: here.host.clone(),
        pid: here.pid,
        started_at: heartbeat,
        heartbeat_at: heartbeat,
        ttl: Duration::from_secs(30),
    };
    s.renew_lease(&lease("i-crashed", now - Duration::from_secs(120))).await.unwrap();
    s.renew_lease(&lease("i-live", now - Duration::from_secs(5))).await.unwrap();
    let def = definition(&["a", "b"]);
    let mine = here.instance.clone().unwrap();
    for (id, instance) in [("l-crashed", "i-crashed"), ("l-live", "i-live"), ("l-mine", mine.as_str())] {
        let mut r = new_run(id, "wf", at(0), &["a", "b"]);
        r.status = RunStatus::Running;
        r.tasks.insert("a".into(), done(TaskStatus::Running, None, 1));
        s.create_run(&r, &def).await.unwrap();
        let owner = Owner { host: here.host.clone(), pid: here.pid, instance: Some(instance.to_string()) };
        assert!(s.set_owner(id, &owner).await.unwrap());
        assert_eq!(s.owner(id).await.unwrap(), Some(owner));
    }
    assert_eq!(s.recover_orphans_of(&["local".to_string()]).await.unwrap(), ["l-crashed"]);
    let r = s.get_run("l-crashed").await.unwrap().unwrap();
    assert_eq!(r.status, RunStatus::Failed);
    let error = r.error.unwrap();
    assert!(error.starts_with("interrupted: ") && error.contains("stopped renewing its lease"), "{error}");
    assert!(error.contains("i-crashed"), "{error}");
    for t in ["a", "b"] {
        assert_eq!(r.tasks[t].status, TaskStatus::Cancelled, "{t}");
    }
    for id in ["l-live", "l-mine"] {
        assert_eq!(s.get_run(id).await.unwrap().unwrap().status, RunStatus::Running, "{id}");
    }
    // A renewed lease keeps its runs; once it lapses they are recovered.
    s.renew_lease(&lease("i-live", now)).await.unwrap();
    assert!(s.recover_orphans().await.unwrap().is_empty());
    s.renew_lease(&lease("i-live", now - Duration::from_secs(31))).await.unwrap();
    assert_eq!(s.recover_orphans().await.unwrap(), ["l-live"]);
}

async fn writer_acknowledges_a_creation_once_committed(cx: Ctx) {
    let s = &cx.store;
    let w = s.writer();
    let def = definition(&["a"]);
    w.create_acked(&new_run("ack-1", "wf", at(0), &["a"]), def.clone()).await.unwrap();
    // Committed: another reader sees it without a flush.
    assert_eq!(s.get_run("ack-1").await.unwrap().unwrap().status, RunStatus::Queued);
    // Concurrent creations share commits; each hears of its own.
    let runs: Vec<RunResult> = (0..50).map(|i| new_run(&format!("ack-c{i:02}"), "wf", at(i), &["a"])).collect();
    let acks = futures::future::join_all(runs.iter().map(|r| w.create_acked(r, def.clone()))).await;
    assert!(acks.iter().all(Result::is_ok), "{acks:?}");
    assert_eq!(s.list_runs(&RunFilter { limit: Some(100), ..Default::default() }).await.unwrap().len(), 51);
    // A taken id is refused through the acknowledgement, and only there.
    let taken = w.create_acked(&new_run("ack-1", "wf", at(0), &["a"]), def.clone()).await;
    assert!(matches!(&taken, Err(StoreError::RunExists(id)) if id == "ack-1"), "{taken:?}");
    w.flush().await.unwrap();
    assert_eq!(s.health().failure(), None);
    assert_eq!(s.health().write_errors(), 0);
    // A store that cannot write refuses the creation and says so.
    s.close().await;
    let refused = w.create_acked(&new_run("ack-2", "wf", at(0), &["a"]), def).await;
    assert!(matches!(&refused, Err(StoreError::Unavailable { .. })), "{refused:?}");
    let failure = s.health().failure().expect("the store is failing");
    assert!(failure.error.contains("could not record"), "{failure:?}");
    assert!(s.health().write_errors() >= 1);
}

async fn writer_coalesces_and_flush_waits_for_commit(cx: Ctx) {
    let s = &cx.store;
    let w = s.writer();
    let mut run = new_run("w-1", "wf", at(0), &["a", "b"]);
    run.status = RunStatus::Running;
    run.started_at = Some(at(1));
    w.run(&run);
    let mut a = TaskResult::pending();
    for n in 1..=1000 {
        a.status = TaskStatus::Running;
        a.attempts = n;
        a.started_at = Some(at(2));
        w.task("w-1", "a", &a);
    }
    // A later run snapshot overrides earlier task updates ...
    w.run(&run);
    // ... and later task updates override it.
    a.status = TaskStatus::Succeeded;
    a.output = Some(json!({"n": 1000}));
    a.finished_at = Some(at(3));
    w.task("w-1", "a", &a);
    w.flush().await.unwrap();

    let back = s.get_run("w-1").await.unwrap().unwrap();
    assert_eq!(back.status, RunStatus::Running);
    assert_eq!(back.tasks["a"], a);
    assert_eq!(back.tasks["b"], TaskResult::pending());

    // Clones share one ordered queue.
    let w2 = w.clone();
    run.status = RunStatus::Succeeded;
    run.finished_at = Some(at(4));
    run.tasks.insert("a".into(), a.clone());
    run.tasks.insert("b".into(), done(TaskStatus::Succeeded, Some(json!("b")), 3));
    w.task("w-1", "b", &TaskResult::pending());
    w2.run(&run);
    w2.flush().await.unwrap();
    assert_eq!(s.get_run("w-1").await.unwrap().unwrap(), run);
    // Nothing queued: flush returns at once.
    w.flush().await.unwrap();
}

async fn writer_drains_its_queue_after_being_dropped(cx: Ctx) {
    let s = &cx.store;
    let w = s.writer();
    let mut run = new_run("w-drop", "wf", at(0), &["a"]);
    run.status = RunStatus::Succeeded;
    w.run(&run);
    drop(w);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if s.get_run("w-drop").await.unwrap().is_some_and(|r| r == run) {
            break;
        }
        assert!(Instant::now() < deadline, "the dropped writer never wrote its queue");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn writer_takes_100k_task_updates(cx: Ctx) {
    let s = &cx.store;
    const RUNS: usize = 100;
    const TASKS: usize = 1000;
    let names: Vec<String> = (0..TASKS).map(|i| format!("task-{i:04}")).collect();
    let w = s.writer();
    for r in 0..RUNS {
        let mut run = new_run(&format!("bulk-{r:03}"), "bulk", at(r as i64), &[]);
        run.status = RunStatus::Running;
        w.run(&run);
    }
    w.flush().await.unwrap();

    let started = Instant::now();
    for r in 0..RUNS {
        let run_id = format!("bulk-{r:03}");
        for (i, name) in names.iter().enumerate() {
            let t = TaskResult {
                status: TaskStatus::Succeeded,
                output: Some(json!({"i": i})),
                attempts: 1,
                error: None,
                skip_reason: None,
                started_at: Some(at(1)),
                finished_at: Some(at(2)),
            };
            w.task(&run_id, name, &t);
        }
    }
    let sent = started.elapsed();
    w.flush().await.unwrap();
    let total = started.elapsed();
    say(&format!(
        "writer: {} task updates sent in {sent:.2?}, committed in {total:.2?} ({})",
        RUNS * TASKS,
        s.location().split(':').next().unwrap_or("?"),
    ));
    assert!(total < Duration::from_secs(120), "sanity bound only: {total:?}");

    for (r, expected) in names.iter().enumerate().take(RUNS) {
        let run = s.get_run(&format!("bulk-{r:03}")).await.unwrap().unwrap();
        assert_eq!(run.tasks.len(), TASKS);
        let (name, t) = run.tasks.iter().nth(r).unwrap();
        assert_eq!(name, expected);
        assert_eq!(t.output, Some(json!({"i": r})));
        assert!(run.tasks.values().all(|t| t.status == TaskStatus::Succeeded));
    }
}

async fn writer_reports_a_failed_write_through_flush(cx: Ctx) {
    let s = &cx.store;
    let w = s.writer();
    w.run(&new_run("w-err", "wf", at(0), &["a"]));
    w.flush().await.unwrap();
    s.close().await;
    w.task("w-err", "a", &done(TaskStatus::Succeeded, None, 1));
    let err = w.flush().await.unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, StoreError::Unavailable { .. }), "{err:?}");
    assert!(text.contains("could not record 1 updates"), "{text}");
    assert!(!text.contains('\n'), "one line: {text}");
    // Reported once: the next flush has nothing new to say.
    w.flush().await.unwrap();
}

async fn a_creation_that_may_find_its_run_recorded_is_quiet(cx: Ctx) {
    let s = &cx.store;
    let def = definition(&["a"]);
    let mut finished = new_run("dup-1", "wf", at(0), &["a"]);
    finished.status = RunStatus::Succeeded;
    s.create_run(&finished, &def).await.unwrap();
    let w = s.writer();
    // Another process recorded the run first (a worker finished it): quiet, and the record stays.
    w.create_if_absent(&new_run("dup-1", "wf", at(0), &["a"]), def.clone());
    w.flush().await.unwrap();
    assert_eq!(s.get_run("dup-1").await.unwrap().unwrap().status, RunStatus::Succeeded);
    // A plain creation of a taken id is still reported.
    w.create(&new_run("dup-1", "wf", at(0), &["a"]), def.clone());
    assert!(matches!(w.flush().await, Err(StoreError::RunExists(id)) if id == "dup-1"));
    // A new id is recorded as usual.
    w.create_if_absent(&new_run("dup-2", "wf", at(0), &["a"]), def);
    w.flush().await.unwrap();
    assert_eq!(s.get_run("dup-2").await.unwrap().unwrap().status, RunStatus::Queued);
}

async fn short_ids_find_their_runs(cx: Ctx) {
    let s = &cx.store;
    for id in ["0193a1b2-0000", "0193a1b3-0000", "0194ffff-0000", "0193A1B2-9999"] {
        s.create_run(&new_run(id, "wf", at(0), &[]), &json!({})).await.unwrap();
    }
    assert_eq!(s.run_ids_by_prefix("0193a1b").await.unwrap(), ["0193a1b2-0000", "0193a1b3-0000"]);
    assert_eq!(s.run_ids_by_prefix("0193a1b2").await.unwrap(), ["0193a1b2-0000"]);
    assert_eq!(s.run_ids_by_prefix("0194ffff-0000").await.unwrap(), ["0194ffff-0000"]);
    assert_eq!(s.run_ids_by_prefix("0193A").await.unwrap(), ["0193A1B2-9999"]);
    assert!(s.run_ids_by_prefix("0195").await.unwrap().is_empty());
    assert!(s.run_ids_by_prefix("%").await.unwrap().is_empty());
    assert!(s.run_ids_by_prefix("").await.unwrap().is_empty());
}

async fn reopening_keeps_history(cx: Ctx) {
    let run = new_run("keep-me", "wf", at(0), &["a"]);
    cx.store.create_run(&run, &definition(&["a"])).await.unwrap();
    let again = Store::open(&cx.url).await.unwrap();
    assert_eq!(again.get_run("keep-me").await.unwrap(), Some(run));
    again.close().await;
}

async fn idempotency_keys_name_one_run_per_window(cx: Ctx) {
    use taskweave::store::IdempotencyClaim;
    let s = &cx.store;
    let day = Duration::from_secs(24 * 3600);
    assert_eq!(s.claim_idempotency_key("k1", "f1", "run-1", day).await.unwrap(), IdempotencyClaim::Taken);
    let held = IdempotencyClaim::Held { run_id: "run-1".into(), fingerprint: "f1".into() };
    assert_eq!(s.claim_idempotency_key("k1", "f1", "run-2", day).await.unwrap(), held);
    assert_eq!(s.claim_idempotency_key("k1", "other", "run-3", day).await.unwrap(), held, "the first request's fingerprint");
    // Concurrent claims of a new key: one takes it, the others see its run.
    let claims = futures::future::join_all(
        (0..20).map(|i| async move { s.claim_idempotency_key("k2", "f", &format!("run-{i}"), day).await.unwrap() }),
    )
    .await;
    let taken = claims.iter().filter(|c| **c == IdempotencyClaim::Taken).count();
    assert_eq!(taken, 1, "{claims:?}");
    let owners: std::collections::BTreeSet<String> = claims
        .iter()
        .filter_map(|c| match c {
            IdempotencyClaim::Held { run_id, .. } => Some(run_id.clone()),
            IdempotencyClaim::Taken => None,
        })
        .collect();
    assert_eq!(owners.len(), 1, "every other claim sees the one run: {claims:?}");
    // Released by a run that did not start: taken anew. Only its run releases it.
    s.release_idempotency_key("k1", "run-9").await.unwrap();
    assert_eq!(s.claim_idempotency_key("k1", "f1", "run-4", day).await.unwrap(), held);
    s.release_idempotency_key("k1", "run-1").await.unwrap();
    assert_eq!(s.claim_idempotency_key("k1", "f9", "run-5", day).await.unwrap(), IdempotencyClaim::Taken);
    // Past the window the key names a new run.
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert_eq!(s.claim_idempotency_key("k1", "f10", "run-6", Duration::from_millis(10)).await.unwrap(), IdempotencyClaim::Taken);
    let held = IdempotencyClaim::Held { run_id: "run-6".into(), fingerprint: "f10".into() };
    assert_eq!(s.claim_idempotency_key("k1", "f10", "run-7", day).await.unwrap(), held);
}

async fn a_newer_schema_is_refused_clearly(cx: Ctx) {
    cx.store.close().await;
    let checksum = if cx.url.starts_with("sqlite:") { "x'00'" } else { "'\\x00'::bytea" };
    raw_exec(
        &cx.url,
        format!(
            "INSERT INTO _taskweave_store_migrations (version, description, success, checksum, execution_time) \
             VALUES (99, 'from the future', TRUE, {checksum}, 0)"
        ),
    )
    .await;
    let err = Store::open(&cx.url).await.unwrap_err();
    assert!(matches!(err, StoreError::NewerSchema { version: 99, .. }), "{err:?}");
    let text = err.to_string();
    assert!(text.contains("was created by a newer taskweave (schema version 99)"), "{text}");
    assert!(text.starts_with("the store at "), "{text}");
}

// ---------------------------------------------------------------- SQLite only

#[tokio::test]
async fn sqlite_creates_folders_and_uses_wal() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a/b/state.db");
    let store = Store::open(&format!("sqlite://{}", path.display())).await.unwrap();
    assert!(path.is_file());
    assert_eq!(store.location(), path.display().to_string());
    store.create_run(&new_run("x", "wf", at(0), &[]), &json!({})).await.unwrap();
    let mut c = sqlx::SqliteConnection::connect(&format!("sqlite://{}", path.display())).await.unwrap();
    let mode: (String,) = sqlx::query_as("PRAGMA journal_mode").fetch_one(&mut c).await.unwrap();
    assert_eq!(mode.0, "wal");
    store.close().await;
}

#[tokio::test]
async fn processes_opening_a_new_sqlite_store_at_once_all_succeed() {
    for round in 0..5 {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("state.db").display());
        let opens = (0..4).map(|_| Store::open(&url));
        for (i, opened) in futures::future::join_all(opens).await.into_iter().enumerate() {
            let store = opened.unwrap_or_else(|e| panic!("round {round}, opener {i}: {e}"));
            store.close().await;
        }
    }
}

#[tokio::test]
async fn sqlite_in_memory_works_with_the_writer() {
    let store = Store::open("sqlite::memory:").await.unwrap();
    let w = store.writer();
    let mut run = new_run("m", "wf", at(0), &["a"]);
    store.create_run(&run, &definition(&["a"])).await.unwrap();
    run.status = RunStatus::Succeeded;
    run.tasks.insert("a".into(), done(TaskStatus::Succeeded, Some(json!([1])), 1));
    w.run(&run);
    w.flush().await.unwrap();
    assert_eq!(store.get_run("m").await.unwrap(), Some(run));
    let other = Store::open("sqlite::memory:").await.unwrap();
    assert_eq!(other.get_run("m").await.unwrap(), None, "each in-memory store is its own");
}

#[tokio::test]
async fn unusable_sqlite_locations_give_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("plain-file");
    std::fs::write(&file, "not a folder").unwrap();

    let in_file = file.join("state.db");
    let err = Store::open(&format!("sqlite://{}", in_file.display())).await.unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, StoreError::Open { .. }), "{err:?}");
    assert!(text.contains(&in_file.display().to_string()), "{text}");
    assert!(text.contains("is not a folder"), "{text}");

    let err = Store::open(&format!("sqlite://{}", file.display())).await.unwrap_err();
    let text = err.to_string();
    assert!(text.contains(&file.display().to_string()), "{text}");
    assert!(text.contains("not a database"), "{text}");

    let err = Store::open(&format!("sqlite://{}", dir.path().display())).await.unwrap_err();
    assert!(err.to_string().contains("it is a folder"), "{err}");

    // A read-only folder (meaningless for root, who may write anywhere).
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        use std::os::unix::fs::PermissionsExt;
        let ro = dir.path().join("read-only");
        std::fs::create_dir(&ro).unwrap();
        std::fs::set_permissions(&ro, std::fs::Permissions::from_mode(0o555)).unwrap();
        let err = Store::open(&format!("sqlite://{}", ro.join("state.db").display())).await.unwrap_err();
        assert!(matches!(err, StoreError::Open { .. }), "{err:?}");
        assert!(err.to_string().contains("ermission denied"), "{err}");
    }
}

#[tokio::test]
async fn an_unreachable_postgres_is_a_clear_error() {
    let err = Store::open("postgres://someone:secret@127.0.0.1:1/taskweave").await.unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, StoreError::Open { .. }), "{err:?}");
    assert!(text.contains("postgres://someone:***@127.0.0.1:1/taskweave"), "{text}");
    assert!(!text.contains("secret"), "{text}");
}

#[test]
fn with_database_swaps_only_the_name() {
    assert_eq!(with_database("postgres://u@h:5432/postgres", "x"), "postgres://u@h:5432/x");
    assert_eq!(with_database("postgres://u@h?sslmode=disable", "x"), "postgres://u@h/x?sslmode=disable");
}
