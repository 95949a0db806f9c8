//! The PostgreSQL backend under faults, with real `taskweave worker`
//! processes and a real server (127.0.0.1:5432, or `DATABASE_URL`'s
//! server): a worker killed mid-task, a task that kills its worker again and
//! again, every connection terminated mid-run, two workers and one lease,
//! 10,000 runs while workers come and go; and `doctor` / `worker` on a bad
//! URL or a newer schema. Each test has its own database and folder.

#![cfg(feature = "postgres")]

use serde_json::json;
use sqlx::{Connection, Row};
use std::path::Path;
use std::process::{Child, Command};
use std::sync::Arc;
use std::time::{Duration, Instant};
use taskweave::config::Config;
use taskweave::engine::{Engine, EngineBuilder, RunOptions};
use taskweave::run::{RunStatus, TaskStatus};

const WAIT: Duration = Duration::from_secs(120);

#[path = "support/processes.rs"]
mod processes;

use taskweave::backend::conformance::{FreshDatabase, eventually, postgres_url as url_for, proc_stat};

/// A database and a folder of its own, with worker processes; all gone when dropped.
struct Env {
    db: FreshDatabase,
    dir: tempfile::TempDir,
    workers: Vec<Child>,
}

impl Env {
    /// `extra`: more keys of `[backends.pg]`.
    async fn new(test: &str, extra: &str) -> Option<Env> {
        let db = FreshDatabase::or_skip(test, "tw_fault").await?;
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir(dir.path().join("workflows")).expect("workflows folder");
        let url = db.url();
        std::fs::write(
            dir.path().join("taskweave.toml"),
            format!(
                "[engine]\nworkflows = [\"workflows\"]\nstore = \"{url}\"\ndefault_backend = \"pg\"\n\n\
                 [backends.pg]\nkind = \"postgres\"\nurl = \"{url}\"\npoll = \"200ms\"\n{extra}\n"
            ),
        )
        .expect("config");
        Some(Env { db, dir, workers: Vec::new() })
    }

    fn url(&self) -> String {
        self.db.url()
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn cmd(&self) -> Command {
        processes::taskweave(self.path())
    }

    /// Start a worker process; its output goes to `worker-N.log`.
    fn start_worker(&mut self, concurrency: u32) -> u32 {
        let n = self.workers.len();
        let mut cmd = processes::worker(self.path(), &["--backend", "pg", "--concurrency", &concurrency.to_string()]);
        cmd.env("TASKWEAVE_LOG", "taskweave=info");
        let child = processes::spawn_logged(cmd, &self.path().join(format!("worker-{n}.log")));
        let pid = child.id();
        self.workers.push(child);
        pid
    }

    fn signal(&mut self, pid: u32, sig: i32) {
        // SAFETY: signalling a child process this test started.
        unsafe { libc::kill(pid as i32, sig) };
        if sig == libc::SIGKILL
            && let Some(c) = self.workers.iter_mut().find(|c| c.id() == pid)
        {
            let _ = c.wait();
        }
    }

    fn wait_worker(&mut self, pid: u32) -> std::process::ExitStatus {
        let c = self.workers.iter_mut().find(|c| c.id() == pid).expect("a worker of this test");
        c.wait().expect("wait for the worker")
    }

    fn worker_logs(&self) -> String {
        (0..self.workers.len())
            .map(|n| {
                format!("--- worker-{n}.log\n{}", std::fs::read_to_string(self.path().join(format!("worker-{n}.log"))).unwrap_or_default())
            })
            .collect()
    }

    async fn engine(&self) -> Engine {
        let config = Config::load(Some(&self.path().join("taskweave.toml"))).expect("config");
        EngineBuilder::new().config(config).build().await.expect("engine")
    }

    async fn connect(&self) -> sqlx::PgConnection {
        sqlx::PgConnection::connect(&self.url()).await.expect("connect to the test database")
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        for c in &mut self.workers {
            // SAFETY: killing a child process this test started.
            unsafe { libc::kill(c.id() as i32, libc::SIGKILL) };
            let _ = c.wait();
        }
    }
}

fn workflow(yaml: &str) -> Arc<taskweave::plan::Workflow> {
    taskweave::backend::conformance::workflow(yaml)
}

fn on_pg() -> RunOptions {
    RunOptions { backend: Some("pg".into()), ..Default::default() }
}

fn read_lines(p: &Path) -> Vec<String> {
    std::fs::read_to_string(p).unwrap_or_default().lines().map(str::to_string).collect()
}

async fn wait_for_line(p: &Path, needle: &str, within: Duration) -> String {
    let what = format!("a line with `{needle}` in {}", p.display());
    eventually(&what, within, Duration::from_millis(50), || async { read_lines(p).into_iter().find(|l| l.contains(needle)) }).await
}

/// (task name, attempt, status) of every attempt the queue recorded for a run.
async fn queue_attempts(conn: &mut sqlx::PgConnection, run_id: &str) -> Vec<(String, i32, String)> {
    sqlx::query(
        "SELECT t.name, a.attempt, a.status FROM taskweave_queue.attempts a \
         JOIN taskweave_queue.tasks t USING (run_id, position) WHERE a.run_id = $1 ORDER BY t.name, a.attempt",
    )
    .bind(run_id)
    .fetch_all(conn)
    .await
    .expect("attempts")
    .iter()
    .map(|r| (r.get("name"), r.get("attempt"), r.get("status")))
    .collect()
}

/// Wait until the run store shows the run finished, and return it.
async fn stored_run(engine: &Engine, run_id: &str) -> taskweave::run::RunResult {
    let store = engine.store().expect("a store");
    let until = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(r) = store.get_run(run_id).await.expect("store")
            && r.status.is_terminal()
        {
            return r;
        }
        assert!(Instant::now() < until, "the store never recorded the end of run {run_id}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_mid_task_leaves_the_run_to_another() {
    let Some(mut env) = Env::new("a_worker_killed_mid_task_leaves_the_run_to_another", "lease = \"2s\"").await else { return };
    env.start_worker(2);
    env.start_worker(2);
    let engine = env.engine().await;
    let log = env.path().join("tasks.log");
    let wf = workflow(&format!(
        r#"
version: 1
name: kill-me
tasks:
  - {{name: a, shell: 'echo "a {{{{run.attempt}}}}" >> {log}; echo a'}}
  - name: slow
    parents: [a]
    shell: 'echo "slow start $$ {{{{run.attempt}}}}" >> {log}; sleep 2; echo "slow end {{{{run.attempt}}}}" >> {log}; echo done-{{{{run.attempt}}}}'
  - {{name: c, parents: [slow], uses: echo, with: {{got: "{{{{tasks.slow.output}}}}"}}}}
"#,
        log = log.display()
    ));
    let id = engine.submit(wf, on_pg()).await.expect("submit");
    let line = wait_for_line(&log, "slow start", Duration::from_secs(30)).await;
    let shell: u32 = line.split_whitespace().nth(2).and_then(|s| s.parse().ok()).expect("pid");
    let worker = proc_stat(shell as i32).expect("the task's process").ppid as u32;
    assert!(env.workers.iter().any(|c| c.id() == worker), "the task runs in a worker process ({worker}):\n{}", env.worker_logs());
    env.signal(worker, libc::SIGKILL);

    let r = engine.get_result(&id, Some(WAIT)).await.expect("result");
    assert_eq!(r.status, RunStatus::Succeeded, "{r:#?}\n{}", env.worker_logs());
    let slow = &r.tasks["slow"];
    assert_eq!(slow.attempts, 2, "the killed try and the one that finished: {slow:?}");
    assert_eq!(slow.output, Some(json!("done-2")));
    assert_eq!(r.tasks["c"].output, Some(json!({"got": "done-2"})));
    let lines = read_lines(&log);
    assert_eq!(lines.iter().filter(|l| l.starts_with("a ")).count(), 1, "a ran once: {lines:?}");
    assert_eq!(lines.iter().filter(|l| l.starts_with("slow start")).count(), 2, "{lines:?}");
    // The killed worker's process group died with it: the first try never ended.
    assert!(!lines.iter().any(|l| l == "slow end 1"), "the killed try's process outlived its worker: {lines:?}");
    let mut conn = env.connect().await;
    let attempts = queue_attempts(&mut conn, &id).await;
    assert_eq!(
        attempts,
        vec![
            ("a".to_string(), 1, "succeeded".to_string()),
            ("c".to_string(), 1, "succeeded".to_string()),
            ("slow".to_string(), 1, "failed".to_string()),
            ("slow".to_string(), 2, "succeeded".to_string()),
        ],
        "each attempt recorded once"
    );
    // The run store shows the same outcome.
    let stored = stored_run(&engine, &id).await;
    assert_eq!(stored.status, RunStatus::Succeeded);
    for (name, t) in &r.tasks {
        assert_eq!((stored.tasks[name].status, &stored.tasks[name].output), (t.status, &t.output), "{name}");
    }
    let history = engine.store().unwrap().attempts(&id).await.expect("attempts");
    assert_eq!(history.len(), 4, "{history:#?}");
    engine.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_that_kills_its_worker_fails_after_its_crash_budget() {
    let Some(mut env) = Env::new("a_task_that_kills_its_worker_fails_after_its_crash_budget", "lease = \"1s\"\ncrash_budget = 3").await
    else {
        return;
    };
    for _ in 0..3 {
        env.start_worker(1);
    }
    let engine = env.engine().await;
    let log = env.path().join("tasks.log");
    let wf = workflow(&format!(
        r#"
version: 1
name: poison
tasks:
  - name: poison
    retry: {{attempts: 5, delay: 10ms}}
    shell: 'echo "start {{{{run.attempt}}}}" >> {log}; kill -9 $PPID; sleep 5'
  - {{name: after, parents: [poison], uses: echo}}
  - {{name: fine, uses: echo}}
"#,
        log = log.display()
    ));
    let id = engine.submit(wf, on_pg()).await.expect("submit");
    // Every worker dies; the submitting process's reaper records the end.
    let r = engine.get_result(&id, Some(WAIT)).await.expect("result");
    assert_eq!(r.status, RunStatus::Failed, "{r:#?}\n{}", env.worker_logs());
    let poison = &r.tasks["poison"];
    assert_eq!(poison.status, TaskStatus::Failed);
    assert_eq!(poison.attempts, 3, "{poison:?}");
    let error = poison.error.as_deref().unwrap_or_default();
    assert!(error.contains("lost 3 times") && error.contains("crash budget of 3"), "{error}");
    assert_eq!(r.tasks["after"].skip_reason.as_deref(), Some("parent poison failed"));
    assert_eq!(r.tasks["fine"].status, TaskStatus::Succeeded);
    assert_eq!(read_lines(&log).iter().filter(|l| l.starts_with("start")).count(), 3);
    for c in &mut env.workers {
        let status = c.wait().expect("wait");
        assert!(!status.success(), "every worker was killed by the task");
    }
    engine.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_and_the_submitter_reconnect_after_every_connection_is_terminated() {
    let Some(mut env) = Env::new("workers_and_the_submitter_reconnect_after_every_connection_is_terminated", "lease = \"3s\"").await else {
        return;
    };
    env.start_worker(4);
    env.start_worker(4);
    let engine = env.engine().await;
    let wf = workflow(
        r#"
version: 1
name: through-outage
tasks:
  - {name: a, uses: sleep, with: {duration: 200ms}}
  - {name: b, parents: [a], uses: sleep, with: {duration: 200ms}}
  - {name: c, parents: [a], uses: sleep, with: {duration: 200ms}}
  - {name: d, parents: [b, c], uses: echo, with: {run: "{{run.id}}"}}
"#,
    );
    let mut ids = Vec::new();
    for _ in 0..20 {
        ids.push(engine.submit(Arc::clone(&wf), on_pg()).await.expect("submit"));
    }
    let mut admin = sqlx::PgConnection::connect(&url_for("postgres")).await.expect("admin connection");
    let mut terminated = 0i64;
    for round in 0..3 {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let n: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE datname = $1 AND pid <> pg_backend_pid()) t",
        )
        .bind(env.db.name())
        .fetch_one(&mut admin)
        .await
        .expect("terminate");
        terminated += n;
        // The submitter keeps submitting through the outage.
        for _ in 0..5 {
            ids.push(engine.submit(Arc::clone(&wf), on_pg()).await.unwrap_or_else(|e| panic!("submit after round {round}: {e}")));
        }
    }
    assert!(terminated >= 6, "connections of the workers and the submitter were terminated ({terminated})");
    for id in &ids {
        let r = engine.get_result(id, Some(WAIT)).await.expect("result after the outage");
        assert_eq!(r.status, RunStatus::Succeeded, "{r:#?}\n{}", env.worker_logs());
        assert_eq!(r.tasks["d"].output, Some(json!({"run": id})));
    }
    for id in &ids {
        assert_eq!(stored_run(&engine, id).await.status, RunStatus::Succeeded);
    }
    engine.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_workers_never_run_the_same_attempt_at_once() {
    // Tasks outlive the lease several times: only the heartbeat keeps them.
    let Some(mut env) = Env::new("two_workers_never_run_the_same_attempt_at_once", "lease = \"1s\"").await else { return };
    env.start_worker(4);
    env.start_worker(4);
    let engine = env.engine().await;
    let log = env.path().join("tasks.log");
    let mut yaml = String::from("version: 1\nname: no-doubles\ntasks:\n");
    for t in ["w", "x", "y", "z"] {
        yaml.push_str(&format!(
            "  - name: {t}\n    shell: 'echo \"start {{{{run.id}}}} {t} {{{{run.attempt}}}} $(date +%s%N)\" >> {log}; sleep 2.5; \
             echo \"end {{{{run.id}}}} {t} {{{{run.attempt}}}} $(date +%s%N)\" >> {log}'\n",
            log = log.display()
        ));
    }
    let wf = workflow(&yaml);
    let mut ids = Vec::new();
    for _ in 0..4 {
        ids.push(engine.submit(Arc::clone(&wf), on_pg()).await.expect("submit"));
    }
    for id in &ids {
        let r = engine.get_result(id, Some(WAIT)).await.expect("result");
        assert_eq!(r.status, RunStatus::Succeeded, "{r:#?}\n{}", env.worker_logs());
        for t in r.tasks.values() {
            assert_eq!(t.attempts, 1, "a renewed lease is never taken over: {t:?}");
        }
    }
    let lines = read_lines(&log);
    // Each (run, task, attempt) started and ended exactly once.
    let mut seen = std::collections::HashMap::<(String, String, String), (usize, usize)>::new();
    for l in &lines {
        let f: Vec<&str> = l.split_whitespace().collect();
        let e = seen.entry((f[1].to_string(), f[2].to_string(), f[3].to_string())).or_default();
        if f[0] == "start" { e.0 += 1 } else { e.1 += 1 }
    }
    assert_eq!(seen.len(), ids.len() * 4, "{lines:#?}");
    assert!(seen.values().all(|&(s, e)| s == 1 && e == 1), "{seen:#?}");
    let mut conn = env.connect().await;
    let doubles: i64 =
        sqlx::query_scalar("SELECT count(*) FROM taskweave_queue.attempts WHERE attempt > 1").fetch_one(&mut conn).await.expect("count");
    assert_eq!(doubles, 0);
    engine.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_runs_while_workers_start_and_stop() {
    let Some(mut env) = Env::new("ten_thousand_runs_while_workers_start_and_stop", "lease = \"5s\"\nshutdown_grace = \"10s\"").await else {
        return;
    };
    const RUNS: usize = 10_000;
    let first = env.start_worker(16);
    let engine = env.engine().await;
    let wf = workflow(
        "version: 1\nname: fan\ntasks:\n  - {name: a, uses: echo}\n  - {name: b, parents: [a], uses: echo}\n  - {name: c, parents: [a], uses: echo}\n",
    );
    let started = Instant::now();
    // Submit from 8 concurrent callers.
    let mut submitters = tokio::task::JoinSet::new();
    for part in 0..8 {
        let (engine, wf) = (engine.clone(), Arc::clone(&wf));
        submitters.spawn(async move {
            let mut ids = Vec::new();
            for _ in (part..RUNS).step_by(8) {
                ids.push(engine.submit(Arc::clone(&wf), on_pg()).await.expect("submit"));
            }
            ids
        });
    }
    // Meanwhile workers come and go: every 1.5 s one starts and the oldest
    // still running is stopped (SIGTERM: it finishes what it holds).
    let mut live = vec![first];
    let mut cycles = 0;
    let mut ids = Vec::new();
    loop {
        tokio::select! {
            joined = submitters.join_next() => match joined {
                Some(r) => { ids.extend(r.expect("submitter")); continue; }
                None => break,
            },
            _ = tokio::time::sleep(Duration::from_millis(1500)) => {}
        }
        live.push(env.start_worker(16));
        let old = live.remove(0);
        env.signal(old, libc::SIGTERM);
        cycles += 1;
    }
    // Keep cycling until the runs are done.
    let mut conn = env.connect().await;
    loop {
        let open: i64 = sqlx::query_scalar("SELECT count(*) FROM taskweave_queue.runs WHERE finished_at IS NULL")
            .fetch_one(&mut conn)
            .await
            .expect("count");
        if open == 0 {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(600), "{open} runs still open after 10 minutes\n{}", env.worker_logs());
        tokio::time::sleep(Duration::from_millis(1500)).await;
        if cycles < 6 {
            live.push(env.start_worker(16));
            let old = live.remove(0);
            env.signal(old, libc::SIGTERM);
            cycles += 1;
        }
    }
    eprintln!("{RUNS} runs done in {:.1}s with {cycles} worker restarts", started.elapsed().as_secs_f64());
    assert_eq!(ids.len(), RUNS);
    assert!(cycles >= 2, "workers started and stopped during the runs");
    let stopped: Vec<u32> = env.workers.iter().map(|c| c.id()).filter(|p| !live.contains(p)).collect();
    for pid in stopped {
        let status = env.wait_worker(pid);
        assert!(status.success(), "a worker stopped with SIGTERM exits cleanly: {status}\n{}", env.worker_logs());
    }
    let row = sqlx::query("SELECT count(*) FILTER (WHERE status = 'succeeded') AS ok, count(*) AS n FROM taskweave_queue.runs")
        .fetch_one(&mut conn)
        .await
        .expect("runs");
    assert_eq!((row.get::<i64, _>("ok"), row.get::<i64, _>("n")), (RUNS as i64, RUNS as i64));
    let row = sqlx::query(
        "SELECT count(*) AS n, count(DISTINCT (run_id, position)) AS tasks, max(attempt) AS top, \
         count(*) FILTER (WHERE status <> 'succeeded') AS bad FROM taskweave_queue.attempts",
    )
    .fetch_one(&mut conn)
    .await
    .expect("attempts");
    assert_eq!(row.get::<i64, _>("n"), 3 * RUNS as i64, "each task recorded exactly once");
    assert_eq!(row.get::<i64, _>("tasks"), 3 * RUNS as i64);
    assert_eq!(row.get::<Option<i32>, _>("top"), Some(1));
    assert_eq!(row.get::<i64, _>("bad"), 0);
    // The run store learns of every run's end.
    let until = Instant::now() + Duration::from_secs(60);
    loop {
        let n: i64 =
            sqlx::query_scalar("SELECT count(*) FROM public.runs WHERE status = 'succeeded'").fetch_one(&mut conn).await.expect("store");
        if n == RUNS as i64 {
            break;
        }
        assert!(Instant::now() < until, "the store recorded {n} of {RUNS} runs as succeeded");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM public.attempts").fetch_one(&mut conn).await.expect("store attempts");
    assert_eq!(n, 3 * RUNS as i64);
    engine.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_run_on_postgres_and_runs_show_agree() {
    let Some(mut env) = Env::new("cli_run_on_postgres_and_runs_show_agree", "lease = \"3s\"").await else { return };
    env.start_worker(2);
    let file = env.path().join("workflows/hello.yaml");
    std::fs::write(
        &file,
        "version: 1\nname: hello\ntasks:\n  - {name: a, uses: echo, with: {n: 1}}\n  - {name: b, parents: [a], uses: fail, with: {message: nope}}\n  - {name: c, parents: [b], uses: echo}\n",
    )
    .expect("workflow");
    let out = env.cmd().args(["run", "hello", "--backend", "pg", "--format", "json"]).output().expect("taskweave run");
    assert_eq!(out.status.code(), Some(1), "a failed run exits 1: {}", String::from_utf8_lossy(&out.stderr));
    let run: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON result");
    assert_eq!(run["status"], "failed");
    assert_eq!(run["backend"], "pg");
    assert_eq!(run["tasks"]["a"]["output"], json!({"n": 1}));
    assert_eq!(run["tasks"]["c"]["skip_reason"], "parent b failed");
    let id = run["run_id"].as_str().expect("run id").to_string();
    let until = Instant::now() + Duration::from_secs(30);
    let shown = loop {
        let out = env.cmd().args(["runs", "show", &id, "--format", "json"]).output().expect("taskweave runs show");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let shown: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
        if shown["status"] == "failed" || Instant::now() > until {
            break shown;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(shown["status"], run["status"]);
    for t in ["a", "b", "c"] {
        for field in ["status", "output", "attempts", "error", "skip_reason"] {
            assert_eq!(shown["tasks"][t][field], run["tasks"][t][field], "{t}.{field}");
        }
    }
    // `runs cancel` of the finished run changes nothing and says so.
    let out = env.cmd().args(["runs", "cancel", &id]).output().expect("taskweave runs cancel");
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("already finished (failed)"), "{}", String::from_utf8_lossy(&out.stderr));
}

fn doctor_line(dir: &Path) -> (Option<i32>, String) {
    let out = processes::taskweave(dir).arg("doctor").output().expect("taskweave doctor");
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let line = stdout.lines().find(|l| l.contains("backend pg")).unwrap_or_default().to_string();
    (out.status.code(), line)
}

fn bad_config(url: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("taskweave.toml"), format!("[backends.pg]\nkind = \"postgres\"\nurl = \"{url}\"\n")).expect("config");
    dir
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn doctor_and_worker_say_what_is_wrong_in_one_line() {
    // A refused connection (nothing listens on port 1).
    let dir = bad_config("postgres://postgres:secret@127.0.0.1:1/taskweave");
    let (code, line) = doctor_line(dir.path());
    assert_eq!(code, Some(1));
    assert!(line.starts_with("FAIL") && line.contains("127.0.0.1:1") && line.contains("refused"), "{line}");
    assert!(!line.contains("secret"), "the password is masked: {line}");
    let out = processes::worker(dir.path(), &["--backend", "pg"]).output().expect("taskweave worker");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    let errors: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(errors.len(), 1, "{stderr}");
    assert!(errors[0].contains("unavailable") && errors[0].contains("refused"), "{stderr}");
    // Not a PostgreSQL URL at all.
    let dir = bad_config("mysql://127.0.0.1/x");
    let (code, line) = doctor_line(dir.path());
    assert_eq!(code, Some(1));
    assert!(line.contains("must be a postgres:// URL"), "{line}");

    let Some(db) = FreshDatabase::or_skip("doctor_and_worker_say_what_is_wrong_in_one_line (server part)", "tw_fault").await else {
        return;
    };
    // A database that does not exist.
    let dir = bad_config(&url_for("tw_no_such_database"));
    let (code, line) = doctor_line(dir.path());
    assert_eq!(code, Some(1));
    assert!(line.contains("tw_no_such_database") && line.contains("does not exist"), "{line}");
    // A queue schema from a newer release: refused, left as it is.
    let dir = bad_config(&db.url());
    let (_, line) = doctor_line(dir.path());
    assert!(line.starts_with("ok"), "a fresh database is prepared: {line}");
    let version = format!("queue schema `taskweave_queue` version {}", taskweave::backend::postgres::QUEUE_SCHEMA_VERSION);
    assert!(line.contains(&version), "{line}");
    {
        let mut c = sqlx::PgConnection::connect(&db.url()).await.expect("connect");
        sqlx::query(
            "INSERT INTO taskweave_queue._sqlx_migrations (version, description, success, checksum, execution_time) \
             VALUES (99, 'from the future', TRUE, '\\x00', 0)",
        )
        .execute(&mut c)
        .await
        .expect("a newer migration");
    }
    let (code, line) = doctor_line(dir.path());
    assert_eq!(code, Some(1));
    assert!(line.contains("newer taskweave (version 99)"), "{line}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_submits_to_postgres_and_cancels_across_processes() {
    let Some(mut env) = Env::new("serve_submits_to_postgres_and_cancels_across_processes", "lease = \"5s\"").await else { return };
    std::fs::write(
        env.path().join("workflows/hello.yaml"),
        "version: 1\nname: hello\ntasks:\n  - {name: a, uses: echo, with: {n: 1}}\n  - {name: b, parents: [a], uses: echo, with: {got: \"{{tasks.a.output.n}}\"}}\n",
    )
    .expect("workflow");
    std::fs::write(
        env.path().join("workflows/slow.yaml"),
        "version: 1\nname: slow\ntasks:\n  - {name: s, uses: sleep, with: {seconds: 60}}\n",
    )
    .expect("workflow");
    env.start_worker(4);
    // The server is one more child of this test: killed on drop like the workers.
    let log = env.path().join("serve.log");
    let mut serve = env.cmd();
    serve.args(["serve", "--bind", "127.0.0.1:0"]);
    let server = processes::spawn_logged(serve, &log);
    env.workers.push(server);
    let line = wait_for_line(&log, "taskweave serving http://", WAIT).await;
    let base = line.split_whitespace().find(|w| w.starts_with("http://")).expect("address").to_string();
    let http = reqwest::Client::new();

    let accepted = http.post(format!("{base}/v1/workflows/hello/runs")).json(&json!({"input": {}})).send().await.expect("POST");
    assert_eq!(accepted.status().as_u16(), 202);
    let accepted: serde_json::Value = accepted.json().await.expect("JSON");
    assert_eq!(accepted["backend"], "pg");
    let id = accepted["run_id"].as_str().expect("run id").to_string();
    let done: serde_json::Value = http.get(format!("{base}/v1/runs/{id}?wait=60s")).send().await.expect("GET").json().await.expect("JSON");
    assert_eq!(done["status"], "succeeded", "{done}");
    assert_eq!(done["backend"], "pg");
    assert_eq!(done["tasks"]["b"]["output"], json!({"got": 1}));
    // Cancelling the finished run is a conflict on this backend too, and changes nothing.
    let refused = http.post(format!("{base}/v1/runs/{id}/cancel")).send().await.expect("POST cancel");
    assert_eq!(refused.status().as_u16(), 409);
    let refused: serde_json::Value = refused.json().await.expect("JSON");
    assert_eq!(refused["error"]["code"], "run_finished", "{refused}");
    assert_eq!(refused["error"]["details"]["status"], "succeeded", "{refused}");

    // Cancel through the server a task that runs in a worker process.
    let slow: serde_json::Value =
        http.post(format!("{base}/v1/workflows/slow/runs")).json(&json!({})).send().await.expect("POST").json().await.expect("JSON");
    let slow_id = slow["run_id"].as_str().expect("run id").to_string();
    let until = Instant::now() + WAIT;
    loop {
        let r: serde_json::Value = http.get(format!("{base}/v1/runs/{slow_id}")).send().await.expect("GET").json().await.expect("JSON");
        if r["tasks"]["s"]["status"] == "running" {
            break;
        }
        assert!(Instant::now() < until, "the slow task never started: {r}\n{}", env.worker_logs());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let cancel = http.post(format!("{base}/v1/runs/{slow_id}/cancel")).send().await.expect("POST cancel");
    assert!(cancel.status().is_success(), "cancel: {}", cancel.status());
    let ended: serde_json::Value =
        http.get(format!("{base}/v1/runs/{slow_id}?wait=60s")).send().await.expect("GET").json().await.expect("JSON");
    assert_eq!(ended["status"], "cancelled", "{ended}");
    assert_eq!(ended["tasks"]["s"]["status"], "cancelled", "{ended}");

    // The history lists both runs (it is written behind the queue: wait for it).
    let until = Instant::now() + WAIT;
    loop {
        let listed: serde_json::Value = http.get(format!("{base}/v1/runs?limit=10")).send().await.expect("GET").json().await.expect("JSON");
        let text = listed.to_string();
        if text.contains(&id) && text.contains(&slow_id) {
            break;
        }
        assert!(Instant::now() < until, "the history never listed both runs: {listed}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_without_a_recorded_scheduler_state_is_rebuilt_from_its_tasks() {
    // Runs submitted before the queue schema kept the scheduler's state
    // carry none: their next event rebuilds it from the task rows.
    let Some(mut env) = Env::new("a_run_without_a_recorded_scheduler_state_is_rebuilt_from_its_tasks", "").await else { return };
    let engine = env.engine().await;
    let wf = workflow(
        r#"
version: 1
name: legacy
concurrency: 1
tasks:
  - {name: a, uses: echo, with: {n: 1}}
  - {name: b, parents: [a], uses: echo, with: {got: "{{tasks.a.output.n}}"}}
  - {name: c, parents: [a], uses: echo, with: {n: 3}}
  - {name: d, parents: [b, c], uses: echo, with: {n: 4}}
"#,
    );
    let id = engine.submit(wf, on_pg()).await.expect("submit");
    let mut conn = env.connect().await;
    let cleared =
        sqlx::query("UPDATE taskweave_queue.runs SET sched = NULL WHERE run_id = $1").bind(&id).execute(&mut conn).await.expect("clear");
    assert_eq!(cleared.rows_affected(), 1);
    env.start_worker(2);
    let r = engine.get_result(&id, Some(WAIT)).await.expect("result");
    assert_eq!(r.status, RunStatus::Succeeded, "{r:#?}\n{}", env.worker_logs());
    assert_eq!(r.tasks["b"].output, Some(json!({"got": 1})));
    assert!(r.tasks.values().all(|t| t.attempts == 1), "{r:#?}");
    engine.shutdown().await;
}
