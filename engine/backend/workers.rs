//! Which workers are live on a backend, and what is waiting for one: the
//! answer of [`super::Backend::workers`], shown by `taskweave workers`,
//! `GET /v1/workers` and `doctor`. Each driver finds its workers its own way
//! (a table, a Redis record, Celery's remote control, Temporal's pollers);
//! this module holds the shape they all answer in and the survey of every
//! configured backend. It touches nothing but the backends it is given.

use super::{Backend, BackendError, Backends};
use serde::Serialize;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use time::OffsetDateTime;

/// One live worker of a backend.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct WorkerInfo {
    /// How the backend names this worker (unique among its workers).
    pub id: String,
    /// What it is: `taskweave` (a `taskweave worker` or this process),
    /// `celery` (a Python Celery worker) or `other` (a poller of another
    /// Temporal SDK).
    pub runtime: String,
    pub host: String,
    /// The process id, when the worker says.
    pub pid: Option<u32>,
    /// The queues it takes tasks from.
    pub queues: Vec<String>,
    /// Tasks it executes at once, when it says.
    pub concurrency: Option<u32>,
    /// Tasks it is executing now, when it says.
    pub running: Option<u32>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub started_at: Option<OffsetDateTime>,
    /// When the backend last heard of it.
    #[serde(with = "time::serde::rfc3339::option")]
    pub last_heartbeat: Option<OffsetDateTime>,
}

/// The live workers of one backend, and the tasks waiting for one.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct WorkerReport {
    pub backend: String,
    pub kind: String,
    pub workers: Vec<WorkerInfo>,
    /// Tasks ready and waiting for a worker, per queue, as far as the
    /// backend can count them (queues with none may be left out).
    pub queued: BTreeMap<String, u64>,
    /// What the list means when it is not the whole story (for example:
    /// runs execute in the process that starts them).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

impl WorkerReport {
    pub fn new(backend: &str, kind: &str) -> Self {
        WorkerReport { backend: backend.to_string(), kind: kind.to_string(), workers: Vec::new(), queued: BTreeMap::new(), note: None }
    }

    /// The queues with tasks waiting that no live worker takes from, with
    /// how many wait there. A worker with no queues listed takes from all.
    pub fn unserved(&self) -> Vec<(&str, u64)> {
        self.queued
            .iter()
            .filter(|(q, n)| **n > 0 && !self.workers.iter().any(|w| w.queues.is_empty() || w.queues.iter().any(|x| x == *q)))
            .map(|(q, n)| (q.as_str(), *n))
            .collect()
    }
}

/// One backend's answer in a survey: its report, or why it could not be asked.
#[derive(Debug, Clone, PartialEq)]
pub struct Surveyed {
    pub backend: String,
    pub kind: String,
    pub report: Result<WorkerReport, BackendError>,
}

/// The longest a survey waits for one backend.
pub const SURVEY_TIMEOUT: Duration = Duration::from_secs(10);

/// Ask every backend for its workers, at once, in name order; a backend
/// that does not answer within [`SURVEY_TIMEOUT`] is unavailable.
pub async fn survey(backends: &Backends) -> Vec<Surveyed> {
    let asks = backends.iter().map(|b| ask(Arc::clone(b)));
    futures::future::join_all(asks).await
}

/// Ask one backend for its workers, within [`SURVEY_TIMEOUT`].
pub async fn ask(b: Arc<dyn Backend>) -> Surveyed {
    let report = match tokio::time::timeout(SURVEY_TIMEOUT, b.workers()).await {
        Ok(r) => r,
        Err(_) => Err(BackendError::Unavailable {
            backend: b.name().to_string(),
            reason: format!("no answer about its workers within {}s", SURVEY_TIMEOUT.as_secs()),
        }),
    };
    Surveyed { backend: b.name().to_string(), kind: b.kind().to_string(), report }
}

/// This machine's name.
pub fn hostname() -> &'static str {
    crate::store::hostname()
}

/// How a taskweave worker names itself to systems that keep one string per
/// worker (Temporal's poller identity): `taskweave:PID@HOST:c=N`.
pub fn identity(concurrency: usize) -> String {
    format!("taskweave:{}@{}:c={concurrency}", std::process::id(), hostname())
}

/// Reads an [`identity`] back: (pid, host, concurrency); `None` for any
/// other string.
pub fn parse_identity(s: &str) -> Option<(u32, String, u32)> {
    let rest = s.strip_prefix("taskweave:")?;
    let (pid, rest) = rest.split_once('@')?;
    let (host, c) = rest.rsplit_once(":c=")?;
    Some((pid.parse().ok()?, host.to_string(), c.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn worker(queues: &[&str]) -> WorkerInfo {
        WorkerInfo {
            id: "w".into(),
            runtime: "taskweave".into(),
            host: "h".into(),
            pid: Some(1),
            queues: queues.iter().map(|q| q.to_string()).collect(),
            concurrency: Some(1),
            running: Some(0),
            started_at: None,
            last_heartbeat: None,
        }
    }

    #[test]
    fn unserved_queues_are_those_with_tasks_and_no_worker() {
        let mut r = WorkerReport::new("pg", "postgres");
        r.queued.insert("default".into(), 3);
        r.queued.insert("gpu".into(), 2);
        r.queued.insert("idle".into(), 0);
        assert_eq!(r.unserved(), vec![("default", 3), ("gpu", 2)]);
        r.workers.push(worker(&["default"]));
        assert_eq!(r.unserved(), vec![("gpu", 2)]);
        r.workers.push(worker(&[]));
        assert!(r.unserved().is_empty());
    }

    #[test]
    fn identities_read_back() {
        let id = identity(4);
        let (pid, host, c) = parse_identity(&id).unwrap();
        assert_eq!((pid, host.as_str(), c), (std::process::id(), hostname(), 4));
        assert_eq!(parse_identity("taskweave:12@a:b:c=2"), Some((12, "a:b".into(), 2)));
        assert_eq!(parse_identity("1234@host"), None);
        assert_eq!(parse_identity("taskweave:x@h:c=1"), None);
    }

    #[test]
    fn reports_serialise_with_rfc3339_times() {
        let mut w = worker(&["default"]);
        w.last_heartbeat = Some(time::macros::datetime!(2026-12-07 10:00:00 UTC));
        let mut r = WorkerReport::new("pg", "postgres");
        r.workers.push(w);
        let v = serde_json::to_value(&r).unwrap();
        assert_eq!(v["workers"][0]["last_heartbeat"], "2026-12-07T10:00:00Z");
        assert_eq!(v["workers"][0]["started_at"], serde_json::Value::Null);
        assert!(v.get("note").is_none());
    }
}
