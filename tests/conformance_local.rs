//! The backend conformance suite on the embedded local backend, with its
//! history in a real SQLite store.

use std::sync::Arc;
use std::time::Duration;
use taskweave::backend::Backend;
use taskweave::backend::local::LocalBackend;
use taskweave::run::actions::{Handlers, Limits};
use taskweave::run::executor::Executor;
use taskweave::store::Store;

async fn local() -> Option<Arc<dyn Backend>> {
    let dir = tempfile::tempdir().expect("tempdir").keep();
    let store = Store::open(&format!("sqlite://{}", dir.join("state.db").display())).await.expect("store");
    let executor = Executor {
        handlers: Arc::new(Handlers::with_builtins()),
        limits: Arc::new(Limits { kill_grace: Duration::from_millis(500), ..Limits::default() }),
        writer: Some(store.recorder()),
        events: None,
    };
    Some(LocalBackend::new("local", executor, Some(store)))
}

taskweave::conformance_tests!(local());

/// Finished runs stay in memory only up to `cache_bytes`: a stream of runs
/// with 1 MB inputs keeps at most a few of them; the others are still read,
/// in full, from the store.
#[tokio::test]
async fn finished_runs_in_memory_are_bounded_in_bytes() {
    use taskweave::backend::RunRequest;
    use taskweave::backend::local::LocalOptions;
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(&format!("sqlite://{}", dir.path().join("state.db").display())).await.expect("store");
    let executor = Executor {
        handlers: Arc::new(Handlers::with_builtins()),
        limits: Arc::new(Limits::default()),
        writer: Some(store.recorder()),
        events: None,
    };
    let options = LocalOptions { cache_runs: 10_000, cache_bytes: 3 * 1024 * 1024 };
    let b = LocalBackend::with_options("local", executor, Some(store), options);
    let yaml = "version: 1\nname: big\ntasks:\n  - {name: a, uses: echo, with: {n: 1}}\n";
    let wf = taskweave::validate::check_source("big.yaml", yaml.into(), taskweave::spec::Format::Yaml, &Default::default())
        .workflow
        .expect("valid");
    let big = "x".repeat(1024 * 1024);
    let mut ids = Vec::new();
    for _ in 0..12 {
        let id = b.submit(RunRequest::new(Arc::clone(&wf), serde_json::json!({"blob": big}))).await.expect("submitted");
        let r = b.result(&id, Some(Duration::from_secs(30))).await.expect("a result");
        assert!(r.is_done(), "{r:?}");
        ids.push(id);
    }
    let in_memory = ids.iter().filter(|id| b.is_cached(id)).count();
    assert!((1..=3).contains(&in_memory), "{in_memory} runs of 1 MB kept under a 3 MiB bound");
    for id in &ids {
        let r = b.result(id, None).await.expect("every run is still readable");
        assert_eq!(r.input["blob"].as_str().map(str::len), Some(big.len()));
    }
    b.shutdown().await;
}
