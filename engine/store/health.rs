//! Whether the store can write, as its last write found it.
//!
//! A store that cannot write (a full disk, a read-only file, a database that
//! went away) must not look healthy: every failed write is counted, and the
//! store is reported failing from the first failed write until a write
//! succeeds again. `/healthz`, `/metrics` and the refusal of new runs read
//! this; the writes themselves (the batching writer and direct creations)
//! update it.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use std::sync::Mutex;
use time::OffsetDateTime;

/// The failure that made the store unhealthy.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct StoreFailure {
    /// What the database said of the last failed write.
    pub error: String,
    /// When writes started failing.
    #[serde(with = "time::serde::rfc3339")]
    pub since: OffsetDateTime,
}

/// The write health of one store, shared by its clones and writers.
#[derive(Debug)]
pub struct StoreHealth {
    failing: Mutex<Option<StoreFailure>>,
    write_errors: Counter,
    /// 1 while healthy, 0 while failing.
    healthy: Gauge,
}

impl Default for StoreHealth {
    fn default() -> Self {
        let healthy = Gauge::default();
        healthy.set(1);
        StoreHealth { failing: Mutex::new(None), write_errors: Counter::default(), healthy }
    }
}

impl StoreHealth {
    /// The current failure; `None` while writes succeed.
    pub fn failure(&self) -> Option<StoreFailure> {
        self.lock().clone()
    }

    /// Writes that failed for good (after their retry) since the store was opened.
    pub fn write_errors(&self) -> u64 {
        self.write_errors.get()
    }

    /// Exposes `taskweave_store_write_errors_total` and `taskweave_store_healthy`.
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "store_write_errors",
            "Writes to the run store that failed (a batch of run history or a run's creation), after their retry",
            self.write_errors.clone(),
        );
        registry.register("store_healthy", "1 while the run store writes, 0 from a failed write until one succeeds", self.healthy.clone());
    }

    pub(crate) fn failed(&self, error: &str) {
        self.write_errors.inc();
        self.healthy.set(0);
        let mut f = self.lock();
        match &mut *f {
            Some(f) => f.error = error.to_string(),
            None => *f = Some(StoreFailure { error: error.to_string(), since: OffsetDateTime::now_utc() }),
        }
    }

    pub(crate) fn succeeded(&self) {
        let mut f = self.lock();
        if f.is_some() {
            tracing::info!("store: writes succeed again");
            *f = None;
            self.healthy.set(1);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<StoreFailure>> {
        self.failing.lock().unwrap_or_else(|e| e.into_inner())
    }
}
