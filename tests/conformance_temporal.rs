//! The backend conformance suite on the Temporal backend, against a real
//! Temporal dev server started for this test process. Each case gets its own
//! task queue (so cases run in parallel on one server), two in-process
//! workers and its own SQLite run store.

#![cfg(feature = "temporal")]

#[path = "support/temporal.rs"]
mod temporal_server;

use std::sync::Arc;
use std::time::Duration;
use taskweave::backend::conformance::WithWorkers;
use taskweave::backend::{Backend, RunRequest};
use taskweave::store::Store;

async fn temporal() -> Option<Arc<dyn Backend>> {
    Some(with_store().await?.0)
}

async fn with_store() -> Option<(Arc<dyn Backend>, Store)> {
    let server = temporal_server::shared("temporal conformance")?;
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&format!("sqlite://{}", dir.path().join("state.db").display())).await.expect("store");
    let queue = format!("conf-{}", uuid::Uuid::now_v7().simple());
    let backend =
        temporal_server::open_backend(&[("address", &server.address()), ("task_queue", &queue), ("heartbeat", "2s")], Some(store.clone()))
            .await;
    backend.check().await.expect("the backend answers");
    Some((WithWorkers::start(backend, 2, 4, dir), store))
}

/// The run store holds what Temporal says: the final status and every
/// task's status, output and attempts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_store_records_the_outcome() {
    let Some((b, store)) = with_store().await else { return };
    let wf = taskweave::backend::conformance::workflow(
        r#"
version: 1
name: recorded
tasks:
  - {name: a, run: ["echo", "{\"n\": 7}"], output: json}
  - {name: bad, parents: [a], run: ["sh", "-c", "echo nope >&2; exit 4"]}
  - {name: below, parents: [bad], run: ["echo", "never"]}
"#,
    );
    let id = b.submit(RunRequest::new(wf, serde_json::json!({}))).await.expect("submit");
    // The store is written behind the submission, through the batching writer.
    let mut queued = None;
    for _ in 0..100 {
        queued = store.get_run(&id).await.unwrap();
        if queued.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let queued = queued.expect("recorded at submission");
    assert_eq!((queued.workflow.as_str(), queued.backend.as_str()), ("recorded", "tp"));
    let r = b.result(&id, Some(Duration::from_secs(60))).await.unwrap();
    assert_eq!(r.status, taskweave::run::RunStatus::Failed, "{r:#?}");
    let mut stored = None;
    for _ in 0..100 {
        let s = store.get_run(&id).await.unwrap().unwrap();
        if s.status.is_terminal() {
            stored = Some(s);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let stored = stored.expect("the store learns the end of the run");
    assert_eq!(stored.status, r.status);
    for (name, t) in &r.tasks {
        let s = &stored.tasks[name];
        assert_eq!((s.status, &s.output, s.attempts, &s.skip_reason), (t.status, &t.output, t.attempts, &t.skip_reason), "{name}");
    }
    assert_eq!(stored.tasks["a"].output, Some(serde_json::json!({"n": 7})));
    assert_eq!(stored.tasks["below"].skip_reason.as_deref(), Some("parent bad failed"));
}

taskweave::conformance_tests!(temporal());
