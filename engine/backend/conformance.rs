//! The conformance suite every backend driver passes: ordering, parallelism,
//! output passing, failure and skip, task and workflow timeouts, retries,
//! cancellation, result retrieval, unknown ids, the workflow's output.
//!
//! Each case is a plain async function taking a backend; the
//! [`conformance_tests!`](crate::conformance_tests) macro turns them into one
//! `#[tokio::test]` per case for a driver's own test target.

use super::{Backend, BackendError, RunRequest};
use crate::run::{RunResult, RunStatus, TaskStatus};
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(60);

/// Compile a YAML workflow for a test; panics with the diagnostics if invalid.
pub fn workflow(yaml: &str) -> Arc<crate::plan::Workflow> {
    let c = crate::validate::check_source("conformance.yaml", yaml.to_string(), crate::spec::Format::Yaml, &Default::default());
    match c.workflow {
        Some(w) => w,
        None => panic!("invalid test workflow: {:#?}", c.diagnostics),
    }
}

async fn run_to_end(b: &dyn Backend, yaml: &str, input: Value) -> RunResult {
    let id = b.submit(RunRequest::new(workflow(yaml), input)).await.expect("submit");
    let r = b.result(&id, Some(WAIT)).await.expect("result");
    assert!(r.status.is_terminal(), "run did not finish within {WAIT:?}: {r:#?}");
    r
}

fn task<'a>(r: &'a RunResult, name: &str) -> &'a crate::run::TaskResult {
    r.tasks.get(name).unwrap_or_else(|| panic!("no task {name} in {r:#?}"))
}

/// Parents finish before children start; outputs flow along the edges.
pub async fn ordering_and_outputs(b: Arc<dyn Backend>) {
    let r = run_to_end(
        &*b,
        r#"
version: 1
name: conf-chain
tasks:
  - {name: a, uses: echo, with: {n: "{{input.n}}", s: "x{{input.n}}"}}
  - {name: b, parents: [a], uses: echo, with: {from_a: "{{tasks.a.output.n}}"}}
  - {name: c, parents: [b], uses: echo, with: {all: "{{tasks.b.output}}", text: "b said {{tasks.b.output.from_a}}"}}
"#,
        json!({"n": 41}),
    )
    .await;
    assert_eq!(r.status, RunStatus::Succeeded, "{r:#?}");
    assert_eq!(task(&r, "a").output, Some(json!({"n": 41, "s": "x41"})));
    assert_eq!(task(&r, "b").output, Some(json!({"from_a": 41})), "a whole-expression template keeps the JSON type");
    assert_eq!(task(&r, "c").output, Some(json!({"all": {"from_a": 41}, "text": "b said 41"})));
    for (p, c) in [("a", "b"), ("b", "c")] {
        let (p, c) = (task(&r, p), task(&r, c));
        assert!(p.finished_at.unwrap() <= c.started_at.unwrap(), "child started before its parent finished");
    }
    for t in r.tasks.values() {
        assert_eq!(t.attempts, 1);
        assert_eq!(t.status, TaskStatus::Succeeded);
    }
    assert!(r.started_at.is_some() && r.finished_at.is_some());
    assert!(r.version.starts_with("sha256:"));
}

/// Independent tasks overlap in time; `concurrency` caps how many.
pub async fn parallelism_and_concurrency(b: Arc<dyn Backend>) {
    let overlaps = |r: &RunResult, names: &[&str]| -> usize {
        // the largest number of task intervals covering one instant
        let mut points: Vec<(time::OffsetDateTime, i32)> = Vec::new();
        for n in names {
            let t = task(r, n);
            points.push((t.started_at.unwrap(), 1));
            points.push((t.finished_at.unwrap(), -1));
        }
        points.sort();
        let (mut cur, mut max) = (0, 0);
        for (_, d) in points {
            cur += d;
            max = max.max(cur);
        }
        max as usize
    };
    let wide = r#"
version: 1
name: conf-wide
tasks:
  - {name: s1, uses: sleep, with: {duration: 300ms}}
  - {name: s2, uses: sleep, with: {duration: 300ms}}
  - {name: s3, uses: sleep, with: {duration: 300ms}}
  - {name: s4, uses: sleep, with: {duration: 300ms}}
  - {name: join, parents: [s1, s2, s3, s4], uses: echo}
"#;
    let r = run_to_end(&*b, wide, json!({})).await;
    assert_eq!(r.status, RunStatus::Succeeded, "{r:#?}");
    assert_eq!(overlaps(&r, &["s1", "s2", "s3", "s4"]), 4, "independent tasks must run in parallel");
    let capped = wide.replace("name: conf-wide", "name: conf-capped\nconcurrency: 2");
    let r = run_to_end(&*b, &capped, json!({})).await;
    assert_eq!(r.status, RunStatus::Succeeded, "{r:#?}");
    assert_eq!(overlaps(&r, &["s1", "s2", "s3", "s4"]), 2, "concurrency: 2 allows two at once");
}

/// Trigger rules decide from the parents' final states: joins after a
/// failure or a skipped branch, handlers for a failure, and skips whose
/// reason names the parent and its state.
pub async fn trigger_rules(b: Arc<dyn Backend>) {
    let r = run_to_end(
        &*b,
        r#"
version: 1
name: conf-trigger
tasks:
  - {name: bad, uses: fail, with: {message: boom}}
  - {name: good, uses: echo, with: {v: 1}}
  - {name: below-bad, parents: [bad], uses: echo}
  - {name: all-done, parents: [bad, good], trigger: all_done, uses: echo, with: {seen: "{{tasks.good.output.v}}"}}
  - {name: one-failed, parents: [bad, good], trigger: one_failed, uses: echo}
  - {name: one-success, parents: [bad, good], trigger: one_success, uses: echo}
  - {name: none-failed, parents: [bad, good], trigger: none_failed, uses: echo}
  - {name: all-failed, parents: [bad, good], trigger: all_failed, uses: echo}
  - {name: join-skipped, parents: [below-bad, good], trigger: none_failed, uses: echo}
  - {name: only-failures, parents: [bad], trigger: all_failed, uses: echo}
  - {name: no-failure, parents: [good], trigger: one_failed, uses: echo}
  - {name: after-no-failure, parents: [no-failure], uses: echo}
"#,
        json!({}),
    )
    .await;
    assert_eq!(r.status, RunStatus::Failed, "a failed task fails the run: {r:#?}");
    for n in ["good", "all-done", "one-failed", "one-success", "join-skipped", "only-failures"] {
        assert_eq!(task(&r, n).status, TaskStatus::Succeeded, "{n}: {r:#?}");
    }
    // Every parent was final when `all-done` started: it reads their outputs.
    assert_eq!(task(&r, "all-done").output, Some(json!({"seen": 1})));
    for (n, why) in [
        ("below-bad", "parent bad failed"),
        ("none-failed", "parent bad failed"),
        ("all-failed", "parent good succeeded"),
        ("no-failure", "no parent failed"),
        ("after-no-failure", "parent no-failure was skipped"),
    ] {
        assert_eq!(task(&r, n).status, TaskStatus::Skipped, "{n}: {r:#?}");
        assert_eq!(task(&r, n).skip_reason.as_deref(), Some(why), "{n}");
        assert_eq!(task(&r, n).attempts, 0, "{n}");
    }

    // Skipped tasks alone do not fail a run.
    let r = run_to_end(
        &*b,
        r#"
version: 1
name: conf-trigger-ok
tasks:
  - {name: a, uses: echo}
  - {name: alert, parents: [a], trigger: one_failed, uses: echo}
  - {name: last, parents: [a, alert], trigger: none_failed, uses: echo}
"#,
        json!({}),
    )
    .await;
    assert_eq!(r.status, RunStatus::Succeeded, "{r:#?}");
    assert_eq!(task(&r, "alert").skip_reason.as_deref(), Some("no parent failed"));
    assert_eq!(task(&r, "last").status, TaskStatus::Succeeded);
}

/// `when:` conditions: false skips the task (reason recorded, no attempt,
/// the run not failed), a join after the skipped branch runs; a condition
/// that cannot be evaluated, or returns no bool, fails its task.
pub async fn conditions(b: Arc<dyn Backend>) {
    let yaml = r#"
version: 1
name: conf-when
tasks:
  - {name: split, uses: echo, with: {pages: "{{input.pages}}"}}
  - name: extract-text
    uses: echo
    with: {text: "{{input.text}}"}
  - name: summarise
    parents: [split]
    when: 'size(tasks.split.output.pages) > 0'
    uses: echo
    with: {n: "{{input.pages}}"}
  - {name: after-summarise, parents: [summarise], uses: echo}
  - {name: store, parents: [summarise, split], trigger: none_failed, uses: echo, with: {v: 1}}
  - name: ocr
    parents: [extract-text]
    when: 'tasks["extract-text"].output.text == "" && tasks["extract-text"].status == "succeeded"'
    uses: echo
  - name: full-only
    when: 'input.mode == "full"'
    uses: echo
"#;
    let r = run_to_end(&*b, yaml, json!({"pages": [], "text": "", "mode": "quick"})).await;
    assert_eq!(r.status, RunStatus::Succeeded, "a task skipped by its condition does not fail the run: {r:#?}");
    for (n, why) in [
        ("summarise", "condition false: size(tasks.split.output.pages) > 0"),
        ("after-summarise", "parent summarise was skipped"),
        ("full-only", "condition false: input.mode == \"full\""),
    ] {
        assert_eq!(task(&r, n).status, TaskStatus::Skipped, "{n}: {r:#?}");
        assert_eq!(task(&r, n).skip_reason.as_deref(), Some(why), "{n}");
        assert_eq!(task(&r, n).attempts, 0, "{n}: {r:#?}");
        assert_eq!(task(&r, n).started_at, None, "{n}: {r:#?}");
    }
    for n in ["split", "extract-text", "store", "ocr"] {
        assert_eq!(task(&r, n).status, TaskStatus::Succeeded, "{n}: {r:#?}");
    }
    assert_eq!(task(&r, "store").output, Some(json!({"v": 1})));

    let r = run_to_end(&*b, yaml, json!({"pages": ["p1"], "text": "words", "mode": "full"})).await;
    assert_eq!(r.status, RunStatus::Succeeded, "{r:#?}");
    for n in ["summarise", "after-summarise", "store", "full-only"] {
        assert_eq!(task(&r, n).status, TaskStatus::Succeeded, "{n}: {r:#?}");
    }
    assert_eq!(task(&r, "summarise").attempts, 1);
    assert_eq!(task(&r, "ocr").status, TaskStatus::Skipped, "{r:#?}");

    // Errors at run time fail the task (no retry fixes them), never the engine.
    let r = run_to_end(
        &*b,
        r#"
version: 1
name: conf-when-bad
tasks:
  - {name: a, uses: echo, with: {n: 0}}
  - {name: divide, parents: [a], when: '10 / tasks.a.output.n > 1', retry: {attempts: 3, delay: 10ms}, uses: echo}
  - {name: not-bool, parents: [a], when: 'tasks.a.output.n + 1', uses: echo}
  - {name: missing, parents: [a], when: 'tasks.a.output.nope == 1', uses: echo}
  - {name: below, parents: [divide], uses: echo}
  - {name: fine, parents: [a], when: 'tasks.a.output.n == 0', uses: echo}
"#,
        json!({}),
    )
    .await;
    assert_eq!(r.status, RunStatus::Failed, "{r:#?}");
    for (n, says) in [("divide", "division by zero"), ("not-bool", "returned an int, not a bool"), ("missing", "nope")] {
        let t = task(&r, n);
        assert_eq!(t.status, TaskStatus::Failed, "{n}: {r:#?}");
        let e = t.error.as_deref().unwrap_or("");
        assert!(e.starts_with("condition `") && e.to_lowercase().contains(says), "{n}: {e}");
    }
    assert_eq!(task(&r, "below").skip_reason.as_deref(), Some("parent divide failed"));
    assert_eq!(task(&r, "fine").status, TaskStatus::Succeeded);
}

/// `on_failure` and `finally`: after every task is final, in order, reading
/// the run's status, its failed tasks and any task's output and status; a
/// failing handler fails a succeeded run; `finally` runs after a cancel
/// and after the workflow timeout.
pub async fn failure_handlers(b: Arc<dyn Backend>) {
    let r = run_to_end(
        &*b,
        r#"
version: 1
name: conf-handlers
tasks:
  - {name: a, uses: echo, with: {v: 1}}
  - {name: bad, parents: [a], uses: fail, with: {message: boom}}
  - {name: below, parents: [bad], uses: echo}
on_failure:
  - name: alert
    uses: echo
    with: {status: "{{run.status}}", failed: "{{run.failed_tasks}}", a: "{{tasks.a.output.v}}"}
  - {name: after-alert, parents: [alert], uses: echo, with: {bad: "{{tasks.bad.status}}"}}
finally:
  - {name: cleanup, uses: echo, with: {status: "{{run.status}}"}}
"#,
        json!({}),
    )
    .await;
    assert_eq!(r.status, RunStatus::Failed, "{r:#?}");
    assert_eq!(task(&r, "below").skip_reason.as_deref(), Some("parent bad failed"));
    let alert = task(&r, "alert").output.clone().unwrap_or_else(|| panic!("alert did not run: {r:#?}"));
    assert_eq!(alert["status"], "failed", "{alert}");
    assert_eq!(alert["a"], 1, "{alert}");
    assert_eq!(alert["failed"][0]["name"], "bad", "{alert}");
    assert!(alert["failed"][0]["error"].as_str().unwrap_or("").contains("boom"), "{alert}");
    assert_eq!(task(&r, "after-alert").output, Some(json!({"bad": "failed"})));
    assert_eq!(task(&r, "cleanup").output, Some(json!({"status": "failed"})));
    let (alert_end, cleanup_start) = (task(&r, "after-alert").finished_at, task(&r, "cleanup").started_at);
    assert!(alert_end <= cleanup_start, "finally runs after on_failure: {r:#?}");

    let r = run_to_end(
        &*b,
        r#"
version: 1
name: conf-handlers-ok
tasks:
  - {name: a, uses: echo}
on_failure:
  - {name: alert, uses: echo}
finally:
  - {name: cleanup, uses: fail, with: {message: nope}}
"#,
        json!({}),
    )
    .await;
    assert_eq!(r.status, RunStatus::Failed, "a failing handler fails a succeeded run: {r:#?}");
    assert_eq!(task(&r, "a").status, TaskStatus::Succeeded);
    assert_eq!(task(&r, "alert").status, TaskStatus::Skipped);
    assert_eq!(task(&r, "alert").skip_reason.as_deref(), Some("the run succeeded: on_failure runs when it fails or times out"));
    assert_eq!(task(&r, "cleanup").status, TaskStatus::Failed);

    let r = run_to_end(
        &*b,
        r#"
version: 1
name: conf-handlers-timeout
timeout: 500ms
tasks:
  - {name: slow, uses: sleep, with: {duration: 30s}}
on_failure:
  - {name: alert, uses: echo, with: {status: "{{run.status}}"}}
finally:
  - {name: cleanup, uses: sleep, with: {duration: 600ms}}
"#,
        json!({}),
    )
    .await;
    assert_eq!(r.status, RunStatus::TimedOut, "{r:#?}");
    assert_eq!(task(&r, "slow").status, TaskStatus::TimedOut);
    assert_eq!(task(&r, "alert").output, Some(json!({"status": "timed_out"})));
    assert_eq!(task(&r, "cleanup").status, TaskStatus::Succeeded, "finally outlives the workflow timeout: {r:#?}");

    let id = b
        .submit(RunRequest::new(
            workflow(
                r#"
version: 1
name: conf-handlers-cancel
tasks:
  - {name: long, uses: sleep, with: {duration: 60s}}
on_failure:
  - {name: alert, uses: echo}
finally:
  - {name: cleanup, uses: echo, with: {status: "{{run.status}}"}}
"#,
            ),
            json!({}),
        ))
        .await
        .expect("submit");
    eventually("the task to start", WAIT, Duration::from_millis(25), || {
        let (b, id) = (Arc::clone(&b), id.clone());
        async move {
            let r = b.result(&id, None).await.ok()?;
            (task(&r, "long").status == TaskStatus::Running).then_some(())
        }
    })
    .await;
    b.cancel(&id).await.expect("cancel");
    let r = b.result(&id, Some(WAIT)).await.expect("result");
    assert_eq!(r.status, RunStatus::Cancelled, "{r:#?}");
    assert_eq!(task(&r, "long").status, TaskStatus::Cancelled);
    assert_eq!(task(&r, "alert").status, TaskStatus::Skipped);
    assert_eq!(task(&r, "cleanup").output, Some(json!({"status": "cancelled"})), "{r:#?}");
}

/// A retry of a failed run: the tasks it reuses are succeeded with their
/// outputs from the start (never run again), their children read those
/// outputs, the others run; the run names the run it retries.
pub async fn retry_reuses_outputs(b: Arc<dyn Backend>) {
    let wf = workflow(
        r#"
version: 1
name: conf-retry
tasks:
  - {name: a, uses: fail, with: {message: "a reused task ran again"}}
  - {name: b, parents: [a], uses: echo, with: {x: "{{tasks.a.output.v}}"}}
  - {name: c, uses: echo, with: {y: 2}}
"#,
    );
    let mut req = RunRequest::new(Arc::clone(&wf), json!({}));
    req.reuse = vec![(wf.task("a").unwrap().id, json!({"v": 5}))];
    req.retry_of = Some("the-failed-run".into());
    let id = b.submit(req).await.expect("submit");
    let r = b.result(&id, Some(WAIT)).await.expect("result");
    assert_eq!(r.status, RunStatus::Succeeded, "{r:#?}");
    assert_eq!(r.retry_of.as_deref(), Some("the-failed-run"));
    assert_eq!(task(&r, "a").status, TaskStatus::Succeeded);
    assert_eq!(task(&r, "a").output, Some(json!({"v": 5})));
    assert_eq!(task(&r, "a").attempts, 0, "a reused task made no attempt: {r:#?}");
    assert_eq!(task(&r, "b").output, Some(json!({"x": 5})));
    assert_eq!(task(&r, "c").output, Some(json!({"y": 2})));
}

/// Secrets: resolved where the task runs, masked (`***`) in every output
/// and error that leaves it, so no result, queue row, hash or history holds
/// the value.
pub async fn secrets_are_masked(b: Arc<dyn Backend>) {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("token");
    let value = "s3cr3t-token-value";
    std::fs::write(&file, format!("{value}\n")).unwrap();
    let yaml = format!(
        r#"
version: 1
name: conf-secrets
secrets:
  token: {{file: "{}"}}
tasks:
  - {{name: say, shell: 'echo "got {{{{secrets.token}}}} here"', output: text}}
  - {{name: fail, shell: 'echo "bad {{{{secrets.token}}}}" >&2; exit 3'}}
  - {{name: json, run: [echo, '{{"t": "{{{{secrets.token}}}}"}}'], output: json}}
"#,
        file.display()
    );
    let r = run_to_end(&*b, &yaml, json!({})).await;
    assert_eq!(task(&r, "say").output, Some(json!("got *** here")), "{r:#?}");
    assert_eq!(task(&r, "json").output, Some(json!({"t": "***"})), "{r:#?}");
    assert_eq!(task(&r, "fail").status, TaskStatus::Failed);
    assert!(task(&r, "fail").error.as_deref().unwrap_or("").contains("bad ***"), "{r:#?}");
    let all = serde_json::to_string(&r).unwrap();
    assert!(!all.contains(value), "the secret leaked into the result: {all}");
}

/// A failure skips the descendants with a reason; independent branches go on.
pub async fn failure_skips_descendants(b: Arc<dyn Backend>) {
    let r = run_to_end(
        &*b,
        r#"
version: 1
name: conf-fail
tasks:
  - {name: a, uses: fail, with: {message: boom}}
  - {name: b, parents: [a], uses: echo}
  - {name: c, parents: [b], uses: echo}
  - {name: other, uses: echo}
  - {name: after-other, parents: [other], uses: echo}
"#,
        json!({}),
    )
    .await;
    assert_eq!(r.status, RunStatus::Failed);
    assert_eq!(task(&r, "a").status, TaskStatus::Failed);
    assert!(task(&r, "a").error.as_deref().unwrap_or("").contains("boom"), "{r:#?}");
    for n in ["b", "c"] {
        assert_eq!(task(&r, n).status, TaskStatus::Skipped);
        assert_eq!(task(&r, n).skip_reason.as_deref(), Some("parent a failed"));
        assert_eq!(task(&r, n).attempts, 0);
    }
    assert_eq!(task(&r, "other").status, TaskStatus::Succeeded);
    assert_eq!(task(&r, "after-other").status, TaskStatus::Succeeded);
}

/// A task timeout stops the attempt and counts as a failed try.
pub async fn task_timeout(b: Arc<dyn Backend>) {
    let r = run_to_end(
        &*b,
        r#"
version: 1
name: conf-task-timeout
tasks:
  - {name: slow, timeout: 200ms, retry: {attempts: 2, delay: 10ms}, uses: sleep, with: {duration: 30s}}
  - {name: next, parents: [slow], uses: echo}
"#,
        json!({}),
    )
    .await;
    assert_eq!(r.status, RunStatus::Failed);
    let slow = task(&r, "slow");
    assert_eq!(slow.status, TaskStatus::TimedOut);
    assert_eq!(slow.attempts, 2, "a timed-out attempt is retried");
    assert!(slow.error.as_deref().unwrap_or("").contains("timed out"), "{slow:?}");
    assert_eq!(task(&r, "next").skip_reason.as_deref(), Some("parent slow timed out"));
    let took = slow.finished_at.unwrap() - slow.started_at.unwrap();
    assert!(took < time::Duration::seconds(20), "the attempts were not stopped: {took}");
}

/// The workflow timeout stops everything; the run ends `timed_out`.
pub async fn workflow_timeout(b: Arc<dyn Backend>) {
    let r = run_to_end(
        &*b,
        r#"
version: 1
name: conf-run-timeout
timeout: 300ms
tasks:
  - {name: slow, uses: sleep, with: {duration: 30s}}
  - {name: later, parents: [slow], uses: echo}
"#,
        json!({}),
    )
    .await;
    assert_eq!(r.status, RunStatus::TimedOut, "{r:#?}");
    assert_eq!(task(&r, "slow").status, TaskStatus::TimedOut);
    assert_eq!(task(&r, "later").status, TaskStatus::Skipped);
    assert!(task(&r, "later").skip_reason.as_deref().unwrap_or("").contains("timed out"));
    let took = r.finished_at.unwrap() - r.started_at.unwrap();
    assert!(took < time::Duration::seconds(20), "the run was not stopped: {took}");
}

/// `attempts` counts all tries; a task that fails twice then succeeds ends succeeded.
pub async fn retries(b: Arc<dyn Backend>) {
    let dir = tempfile::tempdir().expect("tempdir");
    let r = run_to_end(
        &*b,
        r#"
version: 1
name: conf-retry
tasks:
  - name: flaky
    retry: {attempts: 3, delay: 10ms, backoff: 2.0}
    shell: 'n=$(cat {{input.counter}} 2>/dev/null || echo 0); n=$((n+1)); echo $n > {{input.counter}}; [ $n -ge 3 ] && echo ok'
  - name: hopeless
    retry: {attempts: 2, delay: 10ms}
    uses: fail
    with: {message: still broken}
  - name: permanent
    retry: {attempts: 5, delay: 10ms}
    uses: fail
    with: {message: bad request, retryable: false}
"#,
        json!({"counter": dir.path().join("n").display().to_string()}),
    )
    .await;
    assert_eq!(r.status, RunStatus::Failed);
    let flaky = task(&r, "flaky");
    assert_eq!((flaky.status, flaky.attempts), (TaskStatus::Succeeded, 3), "{flaky:?}");
    assert_eq!(flaky.output, Some(json!("ok")));
    let hopeless = task(&r, "hopeless");
    assert_eq!((hopeless.status, hopeless.attempts), (TaskStatus::Failed, 2));
    assert!(hopeless.error.as_deref().unwrap_or("").contains("still broken"));
    let permanent = task(&r, "permanent");
    assert_eq!((permanent.status, permanent.attempts), (TaskStatus::Failed, 1), "a permanent error is not retried");
}

/// Cancelling stops running work (processes included) and records `cancelled`.
pub async fn cancellation(b: Arc<dyn Backend>) {
    let dir = tempfile::tempdir().expect("tempdir");
    let pidfile = dir.path().join("pid");
    let id = b
        .submit(RunRequest::new(
            workflow(
                r#"
version: 1
name: conf-cancel
tasks:
  - {name: long, shell: 'echo $$ > {{input.pidfile}}; sleep 100; echo never'}
  - {name: after, parents: [long], uses: echo}
"#,
            ),
            json!({"pidfile": pidfile.display().to_string()}),
        ))
        .await
        .expect("submit");
    // Wait until the process is up.
    let mut pid = None;
    for _ in 0..200 {
        if let Some(p) = std::fs::read_to_string(&pidfile).ok().and_then(|s| s.trim().parse::<i32>().ok()) {
            pid = Some(p);
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let pid = pid.expect("the task never started");
    let mid = b.result(&id, None).await.expect("result while running");
    assert_eq!(mid.status, RunStatus::Running);
    assert_eq!(task(&mid, "long").status, TaskStatus::Running);
    b.cancel(&id).await.expect("cancel");
    let r = b.result(&id, Some(WAIT)).await.expect("result");
    assert_eq!(r.status, RunStatus::Cancelled, "{r:#?}");
    assert_eq!(task(&r, "long").status, TaskStatus::Cancelled);
    assert_eq!(task(&r, "after").status, TaskStatus::Cancelled);
    // No orphan: the shell is gone (and with it its process group).
    // SAFETY: kill with signal 0 only checks for existence.
    let alive = unsafe { libc::kill(pid, 0) } == 0;
    assert!(!alive, "process {pid} survived the cancellation");
    b.cancel(&id).await.expect("cancelling a finished run is a no-op");
    assert_eq!(b.result(&id, None).await.unwrap().status, RunStatus::Cancelled);
}

/// Results: waiting returns the final state; an unknown id is NotFound.
pub async fn results_and_unknown_ids(b: Arc<dyn Backend>) {
    let id = b
        .submit(RunRequest::new(
            workflow("version: 1\nname: conf-result\ntasks:\n  - {name: nap, uses: sleep, with: {duration: 300ms}}\n"),
            json!({}),
        ))
        .await
        .expect("submit");
    let early = b.result(&id, None).await.expect("result");
    assert!(!early.status.is_terminal(), "a 300ms run cannot be over already: {early:?}");
    let short = b.result(&id, Some(Duration::from_millis(10))).await.expect("result");
    assert!(!short.status.is_terminal());
    let done = b.result(&id, Some(WAIT)).await.expect("result");
    assert_eq!(done.status, RunStatus::Succeeded);
    assert_eq!(done.run_id, id);
    assert_eq!(done.entity_id, id, "the entity id defaults to the run id");
    match b.result("no-such-run", None).await {
        Err(BackendError::NotFound(x)) => assert_eq!(x, "no-such-run"),
        other => panic!("expected NotFound, got {other:?}"),
    }
    // Waiting for a run that does not exist is NotFound too, not a wait.
    let waited = tokio::time::timeout(WAIT / 2, b.result("no-such-run", Some(WAIT))).await;
    match waited {
        Ok(Err(BackendError::NotFound(x))) => assert_eq!(x, "no-such-run"),
        Ok(other) => panic!("expected NotFound, got {other:?}"),
        Err(_) => panic!("waiting for an unknown run did not end with NotFound"),
    }
    assert!(matches!(b.cancel("no-such-run").await, Err(BackendError::NotFound(_))));
}

/// The caller's entity id and context reach the run and its templates.
pub async fn entity_and_context(b: Arc<dyn Backend>) {
    let mut req = RunRequest::new(
        workflow(
            "version: 1\nname: conf-ctx\ntasks:\n  - {name: who, uses: echo, with: {user: \"{{context.user_id}}\", run: \"{{run.id}}\", wf: \"{{workflow.name}}\"}}\n",
        ),
        json!({}),
    );
    req.entity_id = Some("org-7".into());
    req.context = json!({"user_id": "u-42"});
    let id = b.submit(req).await.expect("submit");
    let r = b.result(&id, Some(WAIT)).await.expect("result");
    assert_eq!(r.status, RunStatus::Succeeded, "{r:#?}");
    assert_eq!(r.entity_id, "org-7");
    assert_eq!(task(&r, "who").output, Some(json!({"user": "u-42", "run": id, "wf": "conf-ctx"})));
}

/// The workflow's `output:`: rendered when the run succeeds, each value
/// with its JSON type (a lone read keeps it: a number stays a number, an
/// array an array), the output of a skipped task read as null; a failed
/// run has no output; an output that cannot be rendered fails the run.
pub async fn workflow_output(b: Arc<dyn Backend>) {
    let yaml = r#"
version: 1
name: conf-output
tasks:
  - {name: split, uses: echo, with: {pages: "{{input.pages}}", n: "{{input.n}}"}}
  - {name: summarise, parents: [split], when: 'size(tasks.split.output.pages) > 5', uses: echo}
  - {name: count, parents: [split], uses: echo, with: {n: "{{tasks.split.output.n}}"}}
output:
  pages: "{{tasks.split.output.pages}}"
  n: "{{tasks.count.output.n}}"
  summaries: "{{tasks.summarise.output}}"
  summarise: "{{tasks.summarise.status}}"
  text: "{{workflow.name}}: {{tasks.split.output.n}} pages for {{context.who}}"
  nested: {run: "{{run.id}}", list: ["{{input.n}}", 2], fixed: true}
"#;
    let mut req = RunRequest::new(workflow(yaml), json!({"pages": ["p1", "p2"], "n": 3}));
    req.context = json!({"who": "ops"});
    let id = b.submit(req).await.expect("submit");
    let r = b.result(&id, Some(WAIT)).await.expect("result");
    assert_eq!(r.status, RunStatus::Succeeded, "{r:#?}");
    assert_eq!(task(&r, "summarise").status, TaskStatus::Skipped, "{r:#?}");
    assert_eq!(
        r.output,
        Some(json!({
            "pages": ["p1", "p2"],
            "n": 3,
            "summaries": null,
            "summarise": "skipped",
            "text": "conf-output: 3 pages for ops",
            "nested": {"run": id, "list": [3, 2], "fixed": true},
        })),
        "{r:#?}"
    );
    assert_eq!(r.error, None);

    // A failed run renders no output.
    let r = run_to_end(
        &*b,
        r#"
version: 1
name: conf-output-failed
tasks:
  - {name: a, uses: echo, with: {v: 1}}
  - {name: bad, parents: [a], uses: fail, with: {message: boom}}
output:
  v: "{{tasks.a.output.v}}"
"#,
        json!({}),
    )
    .await;
    assert_eq!(r.status, RunStatus::Failed, "{r:#?}");
    assert_eq!(r.output, None, "{r:#?}");

    // Every task succeeded, but the output reads what is not there: the run fails, saying why.
    let r = run_to_end(
        &*b,
        r#"
version: 1
name: conf-output-unrenderable
tasks:
  - {name: a, uses: echo, with: {v: 1}}
output:
  v: "{{tasks.a.output.nope}}"
"#,
        json!({}),
    )
    .await;
    assert_eq!(r.status, RunStatus::Failed, "{r:#?}");
    assert_eq!(task(&r, "a").status, TaskStatus::Succeeded, "{r:#?}");
    assert_eq!(r.output, None, "{r:#?}");
    let error = r.error.as_deref().unwrap_or("");
    assert!(error.starts_with("workflow output: ") && error.contains("tasks.a.output.nope"), "{r:#?}");
}

/// A backend with in-process workers beside it, for a driver whose runs
/// need workers: the workers stop when this value is dropped, and what
/// `keep` holds (a database, a folder) goes after them.
pub struct WithWorkers {
    inner: Arc<dyn Backend>,
    stop: tokio_util::sync::CancellationToken,
    _keep: Box<dyn std::any::Any + Send + Sync>,
}

impl WithWorkers {
    /// Start `workers` workers of `concurrency` tasks each on `backend`
    /// (default queue), on the current runtime.
    pub fn start(
        backend: Arc<dyn Backend>,
        workers: usize,
        concurrency: usize,
        keep: impl std::any::Any + Send + Sync,
    ) -> Arc<dyn Backend> {
        let stop = tokio_util::sync::CancellationToken::new();
        for _ in 0..workers {
            let (b, stop) = (Arc::clone(&backend), stop.clone());
            tokio::spawn(async move { b.work(super::WorkerOptions { concurrency, queues: Vec::new() }, stop).await });
        }
        Arc::new(WithWorkers { inner: backend, stop, _keep: Box::new(keep) })
    }
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
    fn capabilities(&self) -> super::Capabilities {
        self.inner.capabilities()
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

/// The PostgreSQL server's URL (`DATABASE_URL`, else the local server) with
/// `db` as the database: tests give each case a database of its own.
pub fn postgres_url(db: &str) -> String {
    let base = std::env::var("DATABASE_URL")
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "postgres://postgres@127.0.0.1:5432/postgres".into());
    with_database(&base, db)
}

/// `url` (a `postgres://` URL) with its database name replaced by `db`;
/// the query, if any, stays.
pub fn with_database(url: &str, db: &str) -> String {
    let (scheme, rest) = url.split_once("://").expect("a PostgreSQL URL");
    let (before_query, query) = match rest.split_once('?') {
        Some((a, q)) => (a, Some(q)),
        None => (rest, None),
    };
    let authority = before_query.split('/').next().unwrap_or(before_query);
    let mut out = format!("{scheme}://{authority}/{db}");
    if let Some(q) = query {
        out.push('?');
        out.push_str(q);
    }
    out
}

/// How long a test waits for the PostgreSQL server to answer before it
/// counts as absent.
const POSTGRES_CONNECT: Duration = Duration::from_secs(10);

/// A PostgreSQL database of one test's own, created on the server and
/// dropped (`WITH (FORCE)`, so open connections do not keep it) when this
/// value is, panics included.
pub struct FreshDatabase {
    name: String,
    server: String,
}

impl FreshDatabase {
    /// A new database `PREFIX_PID_UUID` on the server of
    /// [`postgres_url`]. `Err` says why the server is not available.
    pub async fn create(prefix: &str) -> Result<FreshDatabase, String> {
        FreshDatabase::create_on(&postgres_url("postgres"), prefix).await
    }

    /// The same on the server of `server_url` (the URL of a database there
    /// to connect to while creating and dropping).
    pub async fn create_on(server_url: &str, prefix: &str) -> Result<FreshDatabase, String> {
        use sqlx::Connection;
        let mut conn = match tokio::time::timeout(POSTGRES_CONNECT, sqlx::PgConnection::connect(server_url)).await {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => return Err(format!("PostgreSQL at {server_url} is not available: {e}")),
            Err(_) => return Err(format!("PostgreSQL at {server_url} is not available: no answer within {POSTGRES_CONNECT:?}")),
        };
        let name = format!("{prefix}_{}_{}", std::process::id(), uuid::Uuid::now_v7().simple());
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}"))).execute(&mut conn).await.expect("create the test database");
        let _ = conn.close().await;
        Ok(FreshDatabase { name, server: server_url.to_string() })
    }

    /// [`create`](Self::create), or `None` after saying SKIPPED (see
    /// [`skipped`]) with `test` and the reason.
    pub async fn or_skip(test: &str, prefix: &str) -> Option<FreshDatabase> {
        match FreshDatabase::create(prefix).await {
            Ok(db) => Some(db),
            Err(why) => {
                skipped(&format!("{test}: {why}"));
                None
            }
        }
    }

    /// The database's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The database's URL.
    pub fn url(&self) -> String {
        with_database(&self.server, &self.name)
    }
}

impl Drop for FreshDatabase {
    fn drop(&mut self) {
        let (name, server) = (self.name.clone(), self.server.clone());
        // Drop may run inside a runtime: use a thread with a runtime of its own.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
            rt.block_on(async {
                use sqlx::Connection;
                if let Ok(mut c) = sqlx::PgConnection::connect(&server).await {
                    let _ = sqlx::query(sqlx::AssertSqlSafe(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))).execute(&mut c).await;
                    let _ = c.close().await;
                }
            });
        })
        .join();
    }
}

/// Poll `f` every `every` until it gives `Some`, and return that; panics
/// with `what` once `within` has passed without.
pub async fn eventually<T, F, Fut>(what: &str, within: Duration, every: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let start = std::time::Instant::now();
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(start.elapsed() < within, "timed out waiting for {what} (within {within:?})");
        tokio::time::sleep(every).await;
    }
}

/// [`eventually`] for a blocking `f`, sleeping the thread between tries.
pub fn eventually_blocking<T>(what: &str, within: Duration, every: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let start = std::time::Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(start.elapsed() < within, "timed out waiting for {what} (within {within:?})");
        std::thread::sleep(every);
    }
}

/// What `/proc/PID/stat` says of a process (Linux): the fields tests look at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcStat {
    /// `R`, `S`, `Z` (a zombie waiting for its reaper), ...
    pub state: char,
    pub ppid: i32,
    /// The process group.
    pub pgrp: i32,
    /// CPU time in user and in system mode, in clock ticks.
    pub utime: u64,
    pub stime: u64,
}

impl ProcStat {
    /// CPU time (user + system) used so far.
    pub fn cpu_time(&self) -> Duration {
        // SAFETY: sysconf has no preconditions.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as u64;
        Duration::from_millis((self.utime + self.stime) * 1000 / hz)
    }
}

/// `/proc/PID/stat` of `pid`, or `None` when there is no such process.
pub fn proc_stat(pid: i32) -> Option<ProcStat> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // pid (comm) state ppid pgrp ...; comm may hold spaces and parentheses.
    let f: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    Some(ProcStat {
        state: f.first()?.chars().next()?,
        ppid: f.get(1)?.parse().ok()?,
        pgrp: f.get(2)?.parse().ok()?,
        utime: f.get(11)?.parse().ok()?,
        stime: f.get(12)?.parse().ok()?,
    })
}

/// Whether a process is running: it exists (signal 0 does not say "no such
/// process") and is not a zombie waiting for its reaper.
pub fn alive(pid: i32) -> bool {
    // SAFETY: signal 0 only checks for existence.
    if unsafe { libc::kill(pid, 0) } != 0 {
        return std::io::Error::last_os_error().raw_os_error() != Some(libc::ESRCH);
    }
    proc_stat(pid).is_some_and(|s| s.state != 'Z')
}

/// The running (not zombie) processes of process group `pgid`, from /proc.
pub fn group_members(pgid: i32) -> Vec<i32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_string_lossy().parse::<i32>().ok())
        .filter(|pid| proc_stat(*pid).is_some_and(|s| s.pgrp == pgid && s.state != 'Z'))
        .collect()
}

/// Whether every service a test needs is mandatory
/// (`TASKWEAVE_REQUIRE_SERVICES=1`, as `scripts/test` and CI set it).
pub fn require_services() -> bool {
    std::env::var("TASKWEAVE_REQUIRE_SERVICES").as_deref() == Ok("1")
}

/// A test that cannot have a service it needs. With
/// `TASKWEAVE_REQUIRE_SERVICES=1` that is a failure; otherwise the test says
/// `SKIPPED: <why>` on the process's real stderr (the test harness does not
/// capture it, so `cargo test` shows it) and appends the line to the file
/// `TASKWEAVE_SKIPPED_LOG` names, which `scripts/test` sums up at the end.
pub fn skipped(why: &str) {
    if require_services() {
        panic!("a service is required (TASKWEAVE_REQUIRE_SERVICES=1): {why}");
    }
    use std::io::Write;
    let line = format!("SKIPPED: {why}\n");
    let _ = std::io::stderr().write_all(line.as_bytes());
    if let Some(path) = std::env::var_os("TASKWEAVE_SKIPPED_LOG")
        && let Ok(mut f) = std::fs::OpenOptions::new().create(true).append(true).open(path)
    {
        let _ = f.write_all(line.as_bytes());
    }
}

/// Declare one `#[tokio::test]` per conformance case for a backend.
/// `$make` is an async expression producing `Option<Arc<dyn Backend>>`
/// (`None` = the service is absent; the case says SKIPPED).
#[macro_export]
macro_rules! conformance_tests {
    ($make:expr) => {
        $crate::conformance_tests!(@cases $make;
            ordering_and_outputs, parallelism_and_concurrency, failure_skips_descendants, trigger_rules,
            conditions, failure_handlers, retry_reuses_outputs, secrets_are_masked,
            task_timeout, workflow_timeout, retries, cancellation, results_and_unknown_ids,
            entity_and_context, workflow_output);
    };
    (@cases $make:expr; $($case:ident),*) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                let Some(b) = $make.await else {
                    $crate::backend::conformance::skipped(&format!("{}: backend not available", stringify!($case)));
                    return;
                };
                $crate::backend::conformance::$case(b).await;
            }
        )*
    };
}
