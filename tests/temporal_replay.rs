//! Determinism guard for the workflow type `taskweave.dag.v1`: saved
//! histories of real executions (`tests/fixtures/temporal/histories/`) must
//! replay against today's workflow code. A change to the commands the
//! workflow issues for an existing history fails here; such a change needs
//! `ctx.patched(..)` or a new workflow type.
//!
//! The histories are recorded against a real dev server by the ignored test
//! `record_histories` (`cargo test --features temporal --test temporal_replay
//! -- --ignored record_histories`), which writes the files this test reads.

#![cfg(feature = "temporal")]

#[path = "support/temporal.rs"]
mod temporal_server;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use taskweave::backend::temporal::workflow::DagWorkflow;
use taskweave::backend::{RunRequest, WorkerOptions};
use taskweave::run::RunStatus;
use temporalio_client::WorkflowHistory;
use temporalio_sdk::workflow_replayer::{WorkflowReplayer, WorkflowReplayerOptions};
use tokio_util::sync::CancellationToken;

fn histories_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/temporal/histories")
}

fn saved() -> Vec<(String, Vec<u8>)> {
    let mut out: Vec<(String, Vec<u8>)> = std::fs::read_dir(histories_dir())
        .expect("the saved histories")
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .map(|p| (p.file_name().unwrap().to_string_lossy().into_owned(), std::fs::read(&p).unwrap()))
        .collect();
    out.sort();
    out
}

fn replayer() -> WorkflowReplayer {
    let options = WorkflowReplayerOptions::new().register_workflow::<DagWorkflow>().expect("register").build();
    WorkflowReplayer::new(options).expect("replayer")
}

#[tokio::test]
async fn saved_histories_replay() {
    let histories = saved();
    assert!(histories.len() >= 5, "expected the saved histories, found {}", histories.len());
    let replayer = replayer();
    for (name, bytes) in histories {
        let history = WorkflowHistory::from_json(&bytes).unwrap_or_else(|e| panic!("{name}: {e}"));
        if let Err(e) = replayer.replay_workflow(history).await {
            panic!("{name} no longer replays: {e}");
        }
    }
}

/// The result the history reader derives from the saved history `name`.
fn derived(name: &str) -> taskweave::run::RunResult {
    use taskweave::backend::temporal::history::{derive, start_input};
    let (_, bytes) = saved().into_iter().find(|(n, _)| n == name).unwrap_or_else(|| panic!("the {name} history"));
    let history: temporalio_common::protos::temporal::api::history::v1::History = serde_json::from_slice(&bytes).unwrap();
    let input = start_input(&history.events).expect("the start event");
    let wf = taskweave::plan::compile(serde_json::from_value(input.definition.clone()).unwrap()).unwrap();
    derive(&wf, &input, "temporal", &history.events, &[]).unwrap()
}

/// A run's result is read off its history: tasks a condition skipped, or
/// failed, scheduled no activity, and the reader evaluates the conditions
/// again, as the workflow did.
#[test]
fn results_of_conditions_are_derived_from_the_history() {
    use taskweave::run::TaskStatus;
    let r = derived("conditions.json");
    assert_eq!(r.status, RunStatus::Failed, "{r:#?}");
    let t = |n: &str| &r.tasks[n];
    assert_eq!(t("summarise").status, TaskStatus::Skipped);
    assert_eq!(t("summarise").skip_reason.as_deref(), Some("condition false: size(tasks.split.output.pages) > 0"));
    assert_eq!(t("after").skip_reason.as_deref(), Some("parent summarise was skipped"));
    assert_eq!(t("store").status, TaskStatus::Succeeded);
    assert_eq!(t("always").status, TaskStatus::Succeeded);
    assert_eq!(t("broken").status, TaskStatus::Failed);
    assert!(t("broken").error.as_deref().unwrap_or("").starts_with("condition `tasks.split.output.nope == 1`"), "{r:#?}");
}

/// A run with handlers times itself out (a timer in its history): its
/// result reads timed out, the task it stopped too, and the handlers ran.
#[test]
fn results_of_handlers_after_a_timeout_are_derived_from_the_history() {
    use taskweave::run::TaskStatus;
    let r = derived("handlers-timeout.json");
    assert_eq!(r.status, RunStatus::TimedOut, "{r:#?}");
    assert_eq!(r.tasks["slow"].status, TaskStatus::TimedOut, "{r:#?}");
    assert_eq!(r.tasks["alert"].output, Some(serde_json::json!("timed_out")), "{r:#?}");
    assert_eq!(r.tasks["cleanup"].status, TaskStatus::Succeeded, "{r:#?}");
}

/// A run's output is rendered again from its history, as the workflow
/// rendered it to decide the run's end; one that could not be rendered
/// failed the execution, and the reader says why.
#[test]
fn outputs_are_derived_from_the_history() {
    let r = derived("output.json");
    assert_eq!(r.status, RunStatus::Succeeded, "{r:#?}");
    assert_eq!(
        r.output,
        Some(serde_json::json!({"pages": ["p1", "p2"], "n": 2, "summaries": null, "text": "replay-output: 2 pages"})),
        "{r:#?}"
    );
    let r = derived("output-unrenderable.json");
    assert_eq!(r.status, RunStatus::Failed, "{r:#?}");
    assert_eq!(r.output, None);
    let error = r.error.as_deref().unwrap_or("");
    assert!(error.starts_with("workflow output: ") && error.contains("tasks.a.output.nope"), "{r:#?}");
}

/// The guard is real: a history whose commands differ from what the code
/// does now (its first task scheduled as an `http` activity, as if the
/// workflow code had changed) fails to replay.
#[tokio::test]
async fn a_changed_history_does_not_replay() {
    let (name, bytes) = saved().into_iter().find(|(n, _)| n.starts_with("diamond")).expect("the diamond history");
    let mut json: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
    let events = json["events"].as_array_mut().unwrap();
    let scheduled =
        events.iter_mut().find_map(|e| e["attributes"].get_mut("ActivityTaskScheduledEventAttributes")).expect("a scheduled activity");
    assert_eq!(scheduled["activity_type"]["name"], "taskweave.run");
    scheduled["activity_type"]["name"] = serde_json::json!("taskweave.http");
    let history = WorkflowHistory::from_json(&serde_json::to_vec(&json).unwrap()).unwrap();
    let r = replayer().replay_workflow(history).await;
    let err = r.expect_err("a history with another activity replayed without error").to_string();
    assert!(err.to_lowercase().contains("nondetermin"), "{name}: {err}");
}

const WORKFLOWS: &[(&str, &str)] = &[
    (
        "diamond",
        r#"
version: 1
name: replay-diamond
tasks:
  - name: a
    run: ["echo", "{\"n\": 1}"]
    output: json
  - name: b
    parents: [a]
    run: ["echo", "b{{ tasks.a.output.n }}"]
  - name: c
    parents: [a]
    run: ["echo", "c"]
  - name: d
    parents: [b, c]
    run: ["echo", "d"]
"#,
    ),
    (
        "failure",
        r#"
version: 1
name: replay-failure
tasks:
  - name: a
    run: ["sh", "-c", "echo boom >&2; exit 3"]
  - name: below
    parents: [a]
    run: ["echo", "never"]
  - name: other
    run: ["echo", "other"]
"#,
    ),
    (
        "retries",
        r#"
version: 1
name: replay-retries
tasks:
  - name: flaky
    run: ["sh", "-c", "exit 1"]
    retry: {attempts: 2, delay: 10ms}
"#,
    ),
    (
        "concurrency",
        r#"
version: 1
name: replay-concurrency
concurrency: 2
tasks:
  - {name: s1, run: ["echo", "1"]}
  - {name: s2, run: ["echo", "2"]}
  - {name: s3, run: ["echo", "3"]}
  - {name: join, parents: [s1, s2, s3], run: ["echo", "j"]}
"#,
    ),
    (
        "cancelled",
        r#"
version: 1
name: replay-cancelled
tasks:
  - name: long
    run: ["sleep", "30"]
  - name: after
    parents: [long]
    run: ["echo", "after"]
"#,
    ),
    (
        "triggers",
        r#"
version: 1
name: replay-triggers
tasks:
  - name: bad
    run: ["sh", "-c", "exit 1"]
  - {name: good, run: ["echo", "good"]}
  - {name: alert, parents: [bad, good], trigger: one_failed, run: ["echo", "alert"]}
  - {name: below-bad, parents: [bad], run: ["echo", "never"]}
  - {name: join, parents: [below-bad, good], trigger: none_failed, run: ["echo", "join"]}
"#,
    ),
    (
        "conditions",
        r#"
version: 1
name: replay-conditions
tasks:
  - name: split
    run: ["echo", "{\"pages\": []}"]
    output: json
  - {name: summarise, parents: [split], when: 'size(tasks.split.output.pages) > 0', run: ["echo", "s"]}
  - {name: after, parents: [summarise], run: ["echo", "never"]}
  - {name: store, parents: [summarise, split], trigger: none_failed, run: ["echo", "stored"]}
  - {name: always, parents: [split], when: 'tasks.split.status == "succeeded"', run: ["echo", "yes"]}
  - {name: broken, parents: [split], when: 'tasks.split.output.nope == 1', run: ["echo", "never"]}
"#,
    ),
    (
        "handlers",
        r#"
version: 1
name: replay-handlers
tasks:
  - name: bad
    run: ["sh", "-c", "exit 1"]
on_failure:
  - {name: alert, run: ["echo", "{{run.status}}"]}
finally:
  - {name: cleanup, run: ["echo", "clean"]}
"#,
    ),
    (
        "handlers-timeout",
        r#"
version: 1
name: replay-handlers-timeout
timeout: 1s
tasks:
  - {name: slow, run: ["sleep", "30"]}
on_failure:
  - {name: alert, run: ["echo", "{{run.status}}"]}
finally:
  - {name: cleanup, run: ["echo", "clean"]}
"#,
    ),
    (
        "output",
        r#"
version: 1
name: replay-output
tasks:
  - name: split
    run: ["echo", "{\"pages\": [\"p1\", \"p2\"], \"n\": 2}"]
    output: json
  - {name: summarise, parents: [split], when: 'size(tasks.split.output.pages) > 5', run: ["echo", "s"]}
output:
  pages: "{{tasks.split.output.pages}}"
  n: "{{tasks.split.output.n}}"
  summaries: "{{tasks.summarise.output}}"
  text: "{{workflow.name}}: {{tasks.split.output.n}} pages"
"#,
    ),
    (
        "output-unrenderable",
        r#"
version: 1
name: replay-output-unrenderable
tasks:
  - {name: a, run: ["echo", "a"]}
output:
  v: "{{tasks.a.output.nope}}"
"#,
    ),
];

/// Record the saved histories from a real dev server. A history already
/// saved is kept: it stands for the workflow code it was recorded with.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "records tests/fixtures/temporal/histories from a real server"]
async fn record_histories() {
    let server = temporal_server::shared("record histories").expect("a temporal CLI");
    let backend =
        temporal_server::open_backend(&[("address", &server.address()), ("task_queue", "replay"), ("heartbeat", "2s")], None).await;
    let stop = CancellationToken::new();
    let b = Arc::clone(&backend);
    let s = stop.clone();
    tokio::spawn(async move { b.work(WorkerOptions::default(), s).await });
    std::fs::create_dir_all(histories_dir()).unwrap();
    let client = taskweave::backend::temporal::connect(
        &taskweave::backend::temporal::Settings::from_options("tp", &temporal_server::options(&[("address", &server.address())])).unwrap(),
        Duration::from_secs(5),
    )
    .await
    .unwrap();
    for (name, text) in WORKFLOWS {
        if histories_dir().join(format!("{name}.json")).exists() {
            continue;
        }
        let wf = taskweave::backend::conformance::workflow(text);
        let id = backend.submit(RunRequest::new(wf, serde_json::json!({}))).await.unwrap();
        if *name == "cancelled" {
            tokio::time::sleep(Duration::from_secs(2)).await;
            backend.cancel(&id).await.unwrap();
        }
        let r = backend.result(&id, Some(Duration::from_secs(60))).await.unwrap();
        assert!(r.status.is_terminal(), "{name}: {r:?}");
        if *name == "handlers-timeout" {
            assert_eq!(r.status, RunStatus::TimedOut, "{name}: {r:#?}");
            assert_eq!(r.tasks["cleanup"].status, taskweave::run::TaskStatus::Succeeded, "{name}: {r:#?}");
        }
        if *name == "diamond" || *name == "concurrency" {
            assert_eq!(r.status, RunStatus::Succeeded, "{name}: {r:#?}");
        }
        let handle = client.get_workflow_handle::<DagWorkflow>(id.clone());
        let json = handle.fetch_history(Default::default()).to_json().await.unwrap();
        let pretty = serde_json::to_vec_pretty(&serde_json::from_slice::<serde_json::Value>(&json).unwrap()).unwrap();
        std::fs::write(histories_dir().join(format!("{name}.json")), pretty).unwrap();
    }
    stop.cancel();
}
