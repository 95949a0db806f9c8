//! The executor's way into the store: ordered, batched, never blocking.
//!
//! Sending is a push onto an unbounded channel. One background task per
//! [`StoreWriter`] (shared by its clones) takes whatever is queued, keeps
//! only the last state of each task, attempt and run, and writes it all in
//! one transaction. A failed batch is retried once, then reported by the
//! next [`StoreWriter::flush`] and logged; the executor never waits on the
//! database except when it asks to.

use super::{AttemptRecord, Inner, Result, StoreError, describe};
use crate::run::{RunResult, TaskResult};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

/// Most events taken into one batch (bounds the memory and the transaction).
const MAX_BATCH: usize = 50_000;
/// Pause before the one retry of a failed batch.
const RETRY_DELAY: Duration = Duration::from_millis(200);

enum Msg {
    Task(String, String, TaskResult),
    Attempt(AttemptRecord),
    Run(Box<RunResult>),
    Flush(oneshot::Sender<Result<()>>),
}

/// Batched, ordered writes from the executor.
///
/// Events sent through one writer (and its clones) reach the database in the
/// order they were sent. Writers from separate [`super::Store::writer`] calls
/// are not ordered with each other.
#[derive(Clone, Debug)]
pub struct StoreWriter {
    tx: Option<mpsc::UnboundedSender<Msg>>,
}

pub(super) fn spawn(inner: Arc<Inner>) -> StoreWriter {
    let (tx, rx) = mpsc::unbounded_channel();
    match tokio::runtime::Handle::try_current() {
        Ok(rt) => {
            rt.spawn(write_loop(inner, rx));
            StoreWriter { tx: Some(tx) }
        }
        Err(_) => {
            tracing::error!("the store writer was created outside a Tokio runtime; run history will not be recorded");
            StoreWriter { tx: None }
        }
    }
}

impl StoreWriter {
    /// Records the task's current state.
    pub fn task(&self, run_id: &str, task: &str, t: &TaskResult) {
        self.send(Msg::Task(run_id.to_string(), task.to_string(), t.clone()));
    }

    /// Records one attempt (again when it finishes: the last state wins).
    pub fn attempt(&self, a: AttemptRecord) {
        self.send(Msg::Attempt(a));
    }

    /// Records the run's fields and every one of its tasks.
    pub fn run(&self, r: &RunResult) {
        self.send(Msg::Run(Box::new(r.clone())));
    }

    /// Waits until everything sent before is committed. Returns the first
    /// write error since the previous flush, if any.
    pub async fn flush(&self) -> Result<()> {
        let Some(tx) = &self.tx else {
            return Err(StoreError::WriterStopped);
        };
        let (done, wait) = oneshot::channel();
        if tx.send(Msg::Flush(done)).is_err() {
            return Err(StoreError::WriterStopped);
        }
        wait.await.unwrap_or(Err(StoreError::WriterStopped))
    }

    fn send(&self, msg: Msg) {
        if let Some(tx) = &self.tx {
            // Fails only once the background task is gone; flush says so.
            let _ = tx.send(msg);
        }
    }
}

/// The last state of everything one batch touches, in key order (so two
/// writers touching the same rows lock them in the same order).
#[derive(Default)]
struct Batch {
    runs: BTreeMap<String, RunResult>,
    /// (run, task) -> (position if new, state)
    tasks: BTreeMap<(String, String), (i64, TaskResult)>,
    attempts: BTreeMap<(String, String, u32), AttemptRecord>,
}

impl Batch {
    fn add(&mut self, msg: Msg) {
        match msg {
            Msg::Task(run_id, name, t) => {
                self.tasks.insert((run_id, name), (0, t));
            }
            Msg::Attempt(a) => {
                self.attempts.insert((a.run_id.clone(), a.task.clone(), a.attempt), a);
            }
            Msg::Run(mut r) => {
                let tasks = std::mem::take(&mut r.tasks);
                for (i, (name, t)) in tasks.into_iter().enumerate() {
                    self.tasks.insert((r.run_id.clone(), name), (i as i64, t));
                }
                self.runs.insert(r.run_id.clone(), *r);
            }
            Msg::Flush(_) => {}
        }
    }

    fn is_empty(&self) -> bool {
        self.runs.is_empty() && self.tasks.is_empty() && self.attempts.is_empty()
    }

    fn len(&self) -> usize {
        self.runs.len() + self.tasks.len() + self.attempts.len()
    }

    fn statements(&self, inner: &Inner) -> Vec<super::Stmt> {
        let mut out = Vec::new();
        let runs: Vec<&RunResult> = self.runs.values().collect();
        inner.sql.upsert_runs(&runs, &inner.owner, &mut out);
        let tasks: Vec<(&str, &str, i64, &TaskResult)> =
            self.tasks.iter().map(|((run_id, name), (pos, t))| (run_id.as_str(), name.as_str(), *pos, t)).collect();
        inner.sql.upsert_tasks(&tasks, &mut out);
        let attempts: Vec<&AttemptRecord> = self.attempts.values().collect();
        inner.sql.upsert_attempts(&attempts, &mut out);
        out
    }
}

async fn write_loop(inner: Arc<Inner>, mut rx: mpsc::UnboundedReceiver<Msg>) {
    let mut unreported: Option<StoreError> = None;
    let mut queued = Vec::with_capacity(1024);
    // Ends when every sender is dropped and the queue is drained.
    while rx.recv_many(&mut queued, MAX_BATCH).await > 0 {
        let mut batch = Batch::default();
        let mut flushes = Vec::new();
        for msg in queued.drain(..) {
            match msg {
                Msg::Flush(done) => flushes.push(done),
                other => batch.add(other),
            }
        }
        if !batch.is_empty()
            && let Err(e) = write(&inner, &batch).await
        {
            tracing::error!("{e}");
            unreported.get_or_insert(e);
        }
        for done in flushes {
            let _ = done.send(unreported.take().map_or(Ok(()), Err));
        }
    }
}

async fn write(inner: &Inner, batch: &Batch) -> Result<()> {
    let first = match inner.transaction(batch.statements(inner)).await {
        Ok(_) => return Ok(()),
        Err(e) => e,
    };
    tracing::warn!("store: writing {} updates failed ({}); retrying once", batch.len(), describe(&first));
    tokio::time::sleep(RETRY_DELAY).await;
    inner
        .transaction(batch.statements(inner))
        .await
        .map(|_| ())
        .map_err(|e| StoreError::Db(format!("could not record {} updates at {}: {}", batch.len(), inner.location, describe(&e))))
}
