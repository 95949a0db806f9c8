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
        writer: Some(store.writer()),
        events: None,
    };
    Some(LocalBackend::new("local", executor, Some(store)))
}

taskweave::conformance_tests!(local());
