//! The executor's way into the store: ordered, batched, never blocking.
//!
//! Sending folds the event into a pending batch shared by the writer's clones
//! (a short critical section, no database work), keeping only the last state
//! of each run, task and attempt. One background task per [`StoreWriter`]
//! takes the whole pending batch and writes it in one transaction; what is
//! sent meanwhile gathers in the next batch. It writes at once when a flush
//! waits, when the writer is dropped or when [`MAX_PENDING`] rows are
//! pending; otherwise once events pause for [`QUIET`], and at the latest
//! [`MAX_DELAY`] after the first pending one. So while events pour in, the
//! states they replace are never written: a task that starts and ends
//! meanwhile is written once. The pending batch holds at most one entry per
//! run, task and attempt, however fast events come, and the statements of a
//! write are made one chunk of rows at a time.
//!
//! Each batch commits as a whole, so the database always holds the state
//! at some point of the sequence of events sent.
//!
//! A new run's creation can be acknowledged ([`StoreWriter::create_acked`]):
//! the caller waits until the batch holding it has committed, and a
//! waiting acknowledgement makes the write start at once, so concurrent
//! creations share one transaction (group commit) and the run starts only
//! once it is recorded. The events of a run that follow stay
//! fire-and-forget: the executor never waits on the database except when
//! it asks to.
//!
//! A failed batch is retried once. Then it is counted in the store's
//! [`super::StoreHealth`] (which stays failing until a write succeeds),
//! its acknowledgements and flushes get the error, and the creations that
//! were waiting are dropped (their runs do not start). When the failure is
//! one the database may recover from (a full disk, a read-only or locked
//! file, a lost connection), the rest of the batch is kept and written with
//! the next one, newer states winning, so a run that goes on through an
//! outage is recorded once the store writes again; any other failure drops
//! the batch and the next flush reports it.

use super::sql::{Stmt, Val, definition_id, json_text, push_attempt_parts, push_run, push_task};
use super::{Inner, NewRun, Result, Script, Step, StoreError, describe};
use crate::run::{RunResult, TaskResult, TaskStatus};
use serde_json::Value;
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::hash::BuildHasherDefault;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use time::OffsetDateTime;
use tokio::sync::{Notify, oneshot};
use tokio::time::Instant;

/// The least time between two checkpoints of SQLite's write-ahead log
/// started by the writer (SQLite's own, past 64 MB of log, stays as a backstop).
const CHECKPOINT_EVERY: Duration = Duration::from_millis(100);

/// Pause before the one retry of a failed batch.
const RETRY_DELAY: Duration = Duration::from_millis(200);

/// A pause in events this long starts a write.
pub const QUIET: Duration = Duration::from_millis(20);

/// The longest an event waits to be written when nobody flushes (plus the
/// time the write before it takes): how stale the store may look from
/// another process, or what a crash may lose.
pub const MAX_DELAY: Duration = Duration::from_secs(1);

/// Pending rows (runs, tasks, attempts) that start a write at once: bounds
/// the memory the pending batch takes (some 200 bytes a row).
pub const MAX_PENDING: usize = 250_000;

/// The batch's maps: keys are run ids and task names from this process, so
/// a fast hash with no defence against chosen keys is enough.
type Map<K, V> = HashMap<K, V, BuildHasherDefault<FxHasher>>;

/// FxHash (as in rustc), with the final rotation of rustc-hash 2 so the
/// low bits hashbrown indexes by are mixed too.
#[derive(Default, Clone, Copy)]
struct FxHasher(u64);

impl FxHasher {
    const K: u64 = 0xf135_7aea_2e62_a9c5;

    fn add(&mut self, word: u64) {
        self.0 = (self.0.rotate_left(5) ^ word).wrapping_mul(Self::K);
    }
}

impl std::hash::Hasher for FxHasher {
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            let mut w = [0u8; 8];
            w.copy_from_slice(c);
            self.add(u64::from_le_bytes(w));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut w = [0u8; 8];
            w[..rest.len()].copy_from_slice(rest);
            self.add(u64::from_le_bytes(w) ^ ((rest.len() as u64) << 59));
        }
    }

    fn write_u8(&mut self, i: u8) {
        self.add(u64::from(i));
    }

    fn write_u32(&mut self, i: u32) {
        self.add(u64::from(i));
    }

    fn write_u64(&mut self, i: u64) {
        self.add(i);
    }

    fn write_usize(&mut self, i: usize) {
        self.add(i as u64);
    }

    fn finish(&self) -> u64 {
        self.0.rotate_left(26)
    }
}

/// Batched, ordered writes from the executor.
///
/// Events sent through one writer (and its clones) reach the database in the
/// order they were sent. Writers from separate [`super::Store::writer`] calls
/// are not ordered with each other.
#[derive(Clone)]
pub struct StoreWriter {
    handle: Option<Arc<Handle>>,
}

impl std::fmt::Debug for StoreWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoreWriter").field("running", &self.handle.is_some()).finish()
    }
}

/// Shared by a writer's clones; the last one dropped tells the background
/// task to finish.
struct Handle {
    shared: Arc<Shared>,
}

impl Drop for Handle {
    fn drop(&mut self) {
        lock(&self.shared.pending).closed = true;
        self.shared.wake.notify_one();
        self.shared.urgent.notify_one();
    }
}

struct Shared {
    pending: Mutex<Pending>,
    /// Something was sent.
    wake: Notify,
    /// Something waits for a write: a flush, a full batch, the end.
    urgent: Notify,
}

#[derive(Default)]
struct Pending {
    batch: Batch,
    /// When the first and the last event of the batch came.
    first: Option<Instant>,
    last: Option<Instant>,
    /// Flushes waiting for everything sent before them.
    flushes: Vec<oneshot::Sender<Result<()>>>,
    /// Creations waiting for the commit of their batch, by run id.
    acks: Vec<(Arc<str>, oneshot::Sender<Result<()>>)>,
    /// Every writer handle is gone: write what is left, then stop.
    closed: bool,
    /// The background task is gone (its runtime shut down).
    stopped: bool,
}

pub(super) fn spawn(inner: Arc<Inner>) -> StoreWriter {
    match tokio::runtime::Handle::try_current() {
        Ok(rt) => {
            let shared = Arc::new(Shared { pending: Mutex::new(Pending::default()), wake: Notify::new(), urgent: Notify::new() });
            rt.spawn(write_loop(inner, Arc::clone(&shared)));
            StoreWriter { handle: Some(Arc::new(Handle { shared })) }
        }
        Err(_) => {
            tracing::error!("the store writer was created outside a Tokio runtime; run history will not be recorded");
            StoreWriter { handle: None }
        }
    }
}

impl StoreWriter {
    /// Records a new run, as [`super::Store::create_run`] does, but queued:
    /// it reaches the database with the events sent after it, and nothing
    /// here waits. Should the id exist already, the run and every later
    /// event of it are left out and the next flush reports
    /// [`StoreError::RunExists`].
    pub fn create(&self, run: &RunResult, definition: Value) {
        self.create_run(run, definition, false, None)
    }

    /// [`StoreWriter::create`], acknowledged: resolves once the batch
    /// holding the creation has committed, or with the error that kept it
    /// out ([`StoreError::Unavailable`] when the write failed,
    /// [`StoreError::RunExists`] when the id is taken). A failed creation
    /// is dropped from the queue, so a run whose creation failed must not
    /// start. Waiting creations are written at once, together.
    pub async fn create_acked(&self, run: &RunResult, definition: Value) -> Result<()> {
        let (done, wait) = oneshot::channel();
        if self.handle.is_none() {
            return Err(StoreError::WriterStopped);
        }
        self.create_run(run, definition, false, Some(done));
        wait.await.unwrap_or(Err(StoreError::WriterStopped))
    }

    /// [`StoreWriter::create`] for a run that another process may record
    /// first (a distributed backend's worker finishing it quickly): when the
    /// id exists already, this creation is dropped without a report.
    pub fn create_if_absent(&self, run: &RunResult, definition: Value) {
        self.create_run(run, definition, true, None)
    }

    fn create_run(&self, run: &RunResult, definition: Value, may_exist: bool, ack: Option<oneshot::Sender<Result<()>>>) {
        let layout = NewRun::of(run, &definition);
        let rows: Vec<(Arc<str>, i64, TaskResult)> =
            layout.rows.iter().map(|(name, position, t)| (Arc::from(*name), *position, (*t).clone())).collect();
        let implicit_pending = layout.implicit_pending;
        let fields = fields_of(run);
        let urgent = ack.is_some();
        self.with_pending(urgent, |p| {
            let b = &mut p.batch;
            if b.creates.contains_key(run.run_id.as_str()) {
                match ack {
                    Some(ack) => {
                        let _ = ack.send(Err(StoreError::RunExists(run.run_id.clone())));
                    }
                    None => b.duplicates.push(run.run_id.clone()),
                }
                return;
            }
            if b.runs.remove(run.run_id.as_str()).is_none() {
                b.rows += 1;
            }
            let id = b.key(&run.run_id);
            if !rows.is_empty() {
                let tasks = b.tasks.entry(Arc::clone(&id)).or_default();
                let before = tasks.len();
                for (name, position, state) in rows {
                    tasks.insert(name, TaskRow { position: Some(position), state });
                }
                b.rows += tasks.len() - before;
            }
            let acked = ack.is_some();
            if let Some(ack) = ack {
                p.acks.push((Arc::clone(&id), ack));
            }
            b.creates.insert(id, Create { run: fields, definition: Definition::Value(definition), implicit_pending, may_exist, acked });
        });
    }

    /// Records the task's current state.
    pub fn task(&self, run_id: &str, task: &str, t: &TaskResult) {
        self.with_batch(|b| {
            let tasks = b.tasks_of(run_id);
            match tasks.get_mut(task) {
                Some(row) => row.state.clone_from(t),
                None => {
                    tasks.insert(Arc::from(task), TaskRow { position: None, state: t.clone() });
                    b.rows += 1;
                }
            }
        });
    }

    /// Records one attempt (again when it finishes: the last state wins).
    pub fn attempt(&self, a: super::AttemptRecord) {
        self.with_batch(|b| {
            let super::AttemptRecord { run_id, task, attempt, status, error, started_at, finished_at } = a;
            let row = AttemptRow { status, error, started_at, finished_at };
            // Share the task name with its task row when there is one.
            let name = b.tasks.get(run_id.as_str()).and_then(|m| m.get_key_value(task.as_str())).map(|(k, _)| Arc::clone(k));
            let tries = match b.attempts.get_mut(run_id.as_str()) {
                Some(m) => m,
                None => {
                    let id = b.key(&run_id);
                    b.attempts.entry(id).or_default()
                }
            };
            let tries = match tries.get_mut(task.as_str()) {
                Some(v) => v,
                None => tries.entry(name.unwrap_or_else(|| Arc::from(task))).or_default(),
            };
            match tries.iter_mut().find(|(n, _)| *n == attempt) {
                Some((_, r)) => *r = row,
                None => {
                    tries.push((attempt, row));
                    b.rows += 1;
                }
            }
        });
    }

    /// Records the run's fields and every one of its tasks.
    pub fn run(&self, r: &RunResult) {
        let fields = fields_of(r);
        self.with_batch(|b| {
            let tasks = b.tasks_of(&r.run_id);
            let before = tasks.len();
            for (i, (name, t)) in r.tasks.iter().enumerate() {
                match tasks.get_mut(name.as_str()) {
                    Some(row) => {
                        row.state.clone_from(t);
                        row.position.get_or_insert(i as i64);
                    }
                    None => {
                        tasks.insert(Arc::from(name.as_str()), TaskRow { position: Some(i as i64), state: t.clone() });
                    }
                }
            }
            b.rows += tasks.len() - before;
            b.set_fields(fields);
        });
    }

    /// Records the run's own fields (status, error, times...), not its
    /// tasks: what the executor sends when a run starts and ends, its
    /// tasks going through [`StoreWriter::task`]. Costs the same whatever
    /// the number of tasks.
    pub fn run_fields(&self, r: &RunResult) {
        let fields = fields_of(r);
        self.with_batch(|b| b.set_fields(fields));
    }

    /// Waits until everything sent before is committed. Returns the first
    /// write error since the previous flush, if any.
    pub async fn flush(&self) -> Result<()> {
        let Some(h) = &self.handle else {
            return Err(StoreError::WriterStopped);
        };
        let (done, wait) = oneshot::channel();
        {
            let mut p = lock(&h.shared.pending);
            if p.stopped {
                return Err(StoreError::WriterStopped);
            }
            p.flushes.push(done);
        }
        h.shared.wake.notify_one();
        h.shared.urgent.notify_one();
        wait.await.unwrap_or(Err(StoreError::WriterStopped))
    }

    fn with_batch(&self, f: impl FnOnce(&mut Batch)) {
        self.with_pending(false, |p| f(&mut p.batch))
    }

    /// Updates the pending state; `urgent` starts a write at once.
    /// Once the background task is gone nothing is kept (a dropped
    /// acknowledgement reads as [`StoreError::WriterStopped`]); flush says so.
    fn with_pending(&self, urgent: bool, f: impl FnOnce(&mut Pending)) {
        let Some(h) = &self.handle else { return };
        let full = {
            let mut p = lock(&h.shared.pending);
            if p.stopped {
                return;
            }
            let before = p.batch.rows;
            f(&mut p);
            let now = Instant::now();
            p.first.get_or_insert(now);
            p.last = Some(now);
            before < MAX_PENDING && p.batch.rows >= MAX_PENDING
        };
        h.shared.wake.notify_one();
        if full || urgent {
            h.shared.urgent.notify_one();
        }
    }
}

/// A run's own fields, without its tasks.
fn fields_of(r: &RunResult) -> RunResult {
    RunResult {
        run_id: r.run_id.clone(),
        workflow: r.workflow.clone(),
        version: r.version.clone(),
        status: r.status,
        backend: r.backend.clone(),
        routing: r.routing.clone(),
        error: r.error.clone(),
        output: r.output.clone(),
        retry_of: r.retry_of.clone(),
        entity_id: r.entity_id.clone(),
        context: r.context.clone(),
        input: r.input.clone(),
        created_at: r.created_at,
        started_at: r.started_at,
        finished_at: r.finished_at,
        tasks: BTreeMap::new(),
    }
}

struct Create {
    /// Another process may have recorded the run already: no report then.
    may_exist: bool,
    /// Its sender waits for the commit (and hears of a taken id from it).
    acked: bool,
    /// Its fields as last sent (tasks go to [`Batch::tasks`]).
    run: RunResult,
    definition: Definition,
    implicit_pending: bool,
}

enum Definition {
    /// As sent; turned into text by the background task.
    Value(Value),
    /// As written: its id and text.
    Text(Arc<str>, Arc<str>),
}

struct TaskRow {
    /// Its place in the workflow, when the sender knew it.
    position: Option<i64>,
    state: TaskResult,
}

struct AttemptRow {
    status: TaskStatus,
    error: Option<String>,
    started_at: OffsetDateTime,
    finished_at: Option<OffsetDateTime>,
}

/// The last state of everything sent since the previous write began.
/// One task's attempts in a batch: (attempt number, latest state).
type AttemptRows = Vec<(u32, AttemptRow)>;

#[derive(Default)]
struct Batch {
    creates: Map<Arc<str>, Create>,
    /// Fields of runs not created in this batch.
    runs: Map<Arc<str>, RunResult>,
    /// Per run, per task.
    tasks: Map<Arc<str>, Map<Arc<str>, TaskRow>>,
    /// Per run, per task: (attempt, state).
    attempts: Map<Arc<str>, Map<Arc<str>, AttemptRows>>,
    /// Ids created a second time in this batch.
    duplicates: Vec<String>,
    /// How many rows the batch writes.
    rows: usize,
}

#[async_trait::async_trait]
impl crate::run::record::Recorder for StoreWriter {
    fn run_fields(&self, run: &RunResult) {
        StoreWriter::run_fields(self, run)
    }
    fn task(&self, run_id: &str, task: &str, t: &TaskResult) {
        StoreWriter::task(self, run_id, task, t)
    }
    fn attempt(&self, a: super::AttemptRecord) {
        StoreWriter::attempt(self, a)
    }
    async fn flush(&self) -> std::result::Result<(), String> {
        StoreWriter::flush(self).await.map_err(|e| e.to_string())
    }
    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}

impl Batch {
    /// The batch's key for a run id, shared by its maps.
    fn key(&self, run_id: &str) -> Arc<str> {
        let known = self
            .tasks
            .get_key_value(run_id)
            .map(|(k, _)| k)
            .or_else(|| self.creates.get_key_value(run_id).map(|(k, _)| k))
            .or_else(|| self.runs.get_key_value(run_id).map(|(k, _)| k))
            .or_else(|| self.attempts.get_key_value(run_id).map(|(k, _)| k));
        known.map_or_else(|| Arc::from(run_id), Arc::clone)
    }

    fn tasks_of(&mut self, run_id: &str) -> &mut Map<Arc<str>, TaskRow> {
        if !self.tasks.contains_key(run_id) {
            let id = self.key(run_id);
            self.tasks.insert(id, Map::default());
        }
        self.tasks.get_mut(run_id).expect("inserted above")
    }

    fn set_fields(&mut self, fields: RunResult) {
        if let Some(c) = self.creates.get_mut(fields.run_id.as_str()) {
            c.run = fields;
            return;
        }
        match self.runs.get_mut(fields.run_id.as_str()) {
            Some(r) => *r = fields,
            None => {
                let id = self.key(&fields.run_id);
                self.runs.insert(id, fields);
                self.rows += 1;
            }
        }
    }

    /// Takes in what an older batch (one whose write failed) holds that
    /// this one does not replace: the newer states win.
    fn absorb_older(&mut self, old: Batch) {
        let Batch { creates, runs, tasks, attempts, duplicates, rows: _ } = old;
        for (id, mut c) in creates {
            if self.creates.contains_key(&id) {
                continue;
            }
            if let Some(newer) = self.runs.remove(&id) {
                c.run = newer;
            }
            self.creates.insert(id, c);
        }
        for (id, r) in runs {
            if !self.creates.contains_key(&id) && !self.runs.contains_key(&id) {
                self.runs.insert(id, r);
            }
        }
        for (id, old_tasks) in tasks {
            let mine = self.tasks.entry(id).or_default();
            for (name, row) in old_tasks {
                match mine.get_mut(&name) {
                    Some(newer) => {
                        if newer.position.is_none() {
                            newer.position = row.position;
                        }
                    }
                    None => {
                        mine.insert(name, row);
                    }
                }
            }
        }
        for (id, old_attempts) in attempts {
            let mine = self.attempts.entry(id).or_default();
            for (task, rows) in old_attempts {
                let tries = mine.entry(task).or_default();
                for (n, row) in rows {
                    if !tries.iter().any(|(m, _)| *m == n) {
                        tries.push((n, row));
                    }
                }
            }
        }
        self.duplicates.extend(duplicates);
        self.recount();
    }

    /// Leaves out everything of one run.
    fn forget(&mut self, run_id: &str) {
        self.creates.remove(run_id);
        self.runs.remove(run_id);
        self.tasks.remove(run_id);
        self.attempts.remove(run_id);
        self.recount();
    }

    fn recount(&mut self) {
        let tasks: usize = self.tasks.values().map(|m| m.len()).sum();
        let attempts: usize = self.attempts.values().flat_map(|m| m.values()).map(Vec::len).sum();
        self.rows = self.creates.len() + self.runs.len() + tasks + attempts;
    }

    fn is_empty(&self) -> bool {
        self.creates.is_empty() && self.runs.is_empty() && self.tasks.is_empty() && self.attempts.is_empty() && self.duplicates.is_empty()
    }
}

/// What the background task keeps between batches.
#[derive(Default)]
struct Memory {
    /// Task positions of the runs created here whose pending tasks have no
    /// row, until they end: a task's row is written when it first moves.
    positions: Map<Arc<str>, Map<String, i64>>,
    /// Runs whose creation found the id taken: their events are dropped.
    rejected: HashSet<Arc<str>>,
    /// The first error not yet returned by a flush.
    unreported: Option<StoreError>,
    /// A checkpoint runs (SQLite).
    checkpointing: Arc<AtomicBool>,
    /// When the last checkpoint started.
    checkpointed: Option<Instant>,
    /// Definitions this writer has committed lately, oldest first: runs of
    /// a workflow send its definition once.
    written: VecDeque<Arc<str>>,
}

/// How many definition ids [`Memory::written`] keeps.
const KNOWN_DEFINITIONS: usize = 64;

/// Locks a mutex even if a panicking thread poisoned it: the batch stays
/// consistent between our own updates.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Ends the writer when its task is dropped (runtime shutdown) or returns:
/// waiting flushes then fail with [`StoreError::WriterStopped`].
struct StopGuard(Arc<Shared>);

impl Drop for StopGuard {
    fn drop(&mut self) {
        let mut p = lock(&self.0.pending);
        p.stopped = true;
        p.flushes.clear();
        p.acks.clear();
        p.batch = Batch::default();
    }
}

/// How long a batch kept after a failed write waits to be written again
/// when nothing asks for a write sooner; doubled after each failure up to
/// [`MAX_RETRY_WAIT`].
const FIRST_RETRY_WAIT: Duration = Duration::from_millis(500);
const MAX_RETRY_WAIT: Duration = Duration::from_secs(5);

async fn write_loop(inner: Arc<Inner>, shared: Arc<Shared>) {
    let _guard = StopGuard(Arc::clone(&shared));
    let mut memory = Memory::default();
    // What a failed write left behind, written again with the next batch.
    let mut kept: Option<Batch> = None;
    let mut retry_wait = FIRST_RETRY_WAIT;
    loop {
        let (idle, urgent, closed) = {
            let p = lock(&shared.pending);
            let idle = p.batch.is_empty() && p.flushes.is_empty() && p.acks.is_empty();
            (idle, p.closed || !p.flushes.is_empty() || !p.acks.is_empty() || p.batch.rows >= MAX_PENDING, p.closed)
        };
        if idle && kept.is_none() {
            if closed {
                return;
            }
            shared.wake.notified().await;
            continue;
        }
        if idle && !closed {
            // Only what a failed write left: try again after a pause, or
            // at once when a flush or a creation waits.
            tokio::select! {
                _ = tokio::time::sleep(retry_wait) => {}
                _ = shared.urgent.notified() => {}
            }
        } else if !urgent {
            gather(&shared).await;
        }
        let (mut batch, flushes, acks) = {
            let mut p = lock(&shared.pending);
            (p.first, p.last) = (None, None);
            (std::mem::take(&mut p.batch), std::mem::take(&mut p.flushes), std::mem::take(&mut p.acks))
        };
        if let Some(old) = kept.take() {
            batch.absorb_older(old);
        }
        if batch.is_empty() {
            for done in flushes {
                let _ = done.send(memory.unreported.take().map_or(Ok(()), Err));
            }
            continue;
        }
        match memory.write(&inner, &mut batch).await {
            Ok(rejected) => {
                retry_wait = FIRST_RETRY_WAIT;
                memory.checkpoint(&inner);
                for (id, ack) in acks {
                    let _ = ack.send(if rejected.contains(&id) { Err(StoreError::RunExists(id.to_string())) } else { Ok(()) });
                }
                for done in flushes {
                    let _ = done.send(memory.unreported.take().map_or(Ok(()), Err));
                }
            }
            Err(failure) => {
                let unavailable = || StoreError::Unavailable { location: inner.location.clone(), reason: failure.reason.clone() };
                let told = !flushes.is_empty();
                // A creation that was waiting fails, and its run does not
                // start: nothing of it may reach the database later.
                for (id, ack) in acks {
                    batch.forget(&id);
                    let _ = ack.send(Err(unavailable()));
                }
                for done in flushes {
                    let _ = done.send(Err(unavailable()));
                }
                let closing = lock(&shared.pending).closed;
                if batch.is_empty() {
                    // Only creations that were refused: nothing to keep.
                } else if failure.may_recover && !closing {
                    tracing::warn!("store: keeping {} updates to write again once the store writes", batch.rows);
                    kept = Some(batch);
                    if idle {
                        retry_wait = (retry_wait * 2).min(MAX_RETRY_WAIT);
                    }
                } else if !told {
                    // Nobody waited to hear of it: the next flush does.
                    memory.report(StoreError::Unavailable { location: inner.location.clone(), reason: failure.reason });
                }
            }
        }
    }
}

/// A write that failed after its retry.
struct WriteFailure {
    reason: String,
    /// The database may write again later (a full disk, a locked or
    /// read-only file, a lost connection): the batch is worth keeping.
    may_recover: bool,
}

/// Lets events gather until they pause for [`QUIET`], [`MAX_DELAY`] after
/// the first, or until something is urgent (a flush, a creation waiting
/// for its commit, a full batch).
async fn gather(shared: &Shared) {
    loop {
        let wake_at = {
            let p = lock(&shared.pending);
            if p.closed || !p.flushes.is_empty() || !p.acks.is_empty() || p.batch.rows >= MAX_PENDING {
                return;
            }
            match (p.first, p.last) {
                (Some(first), Some(last)) => (last + QUIET).min(first + MAX_DELAY),
                _ => return,
            }
        };
        if Instant::now() >= wake_at {
            return;
        }
        tokio::select! {
            _ = tokio::time::sleep_until(wake_at) => {}
            _ = shared.urgent.notified() => return,
        }
    }
}

impl Memory {
    /// Writes the batch (retrying once); the runs whose creation found
    /// their id taken. Records the outcome in the store's health.
    async fn write(&mut self, inner: &Inner, batch: &mut Batch) -> std::result::Result<HashSet<Arc<str>>, WriteFailure> {
        for id in std::mem::take(&mut batch.duplicates) {
            self.report(StoreError::RunExists(id));
        }
        for (id, c) in &mut batch.creates {
            if let Definition::Value(v) = &mut c.definition {
                let v = std::mem::take(v);
                let text = json_text(&v);
                let def_id: Arc<str> = definition_id(&text).into();
                if c.implicit_pending {
                    self.positions.insert(Arc::clone(id), positions(v));
                }
                c.definition = Definition::Text(def_id, text.into());
            }
        }
        if batch.is_empty() {
            return Ok(HashSet::new());
        }
        let mut result = self.attempt(inner, batch).await;
        if let Err(e) = &result {
            tracing::warn!("store: writing {} updates failed ({}); retrying once", batch.rows, describe(e));
            tokio::time::sleep(RETRY_DELAY).await;
            result = self.attempt(inner, batch).await;
        }
        match result {
            Ok(rejected) => {
                inner.health.succeeded();
                for c in batch.creates.values() {
                    if let Definition::Text(id, _) = &c.definition
                        && !self.written.contains(id)
                    {
                        if self.written.len() == KNOWN_DEFINITIONS {
                            self.written.pop_front();
                        }
                        self.written.push_back(Arc::clone(id));
                    }
                }
                for id in &rejected {
                    // An acknowledged creation hears of it from its acknowledgement.
                    if !batch.creates.get(id).is_some_and(|c| c.may_exist || c.acked) {
                        self.report(StoreError::RunExists(id.to_string()));
                    }
                    self.positions.remove(id);
                    self.rejected.insert(Arc::clone(id));
                }
                let ended = batch.creates.iter().map(|(id, c)| (id, &c.run)).chain(&batch.runs).filter(|(_, r)| r.status.is_terminal());
                for (id, _) in ended {
                    self.positions.remove(id);
                }
                Ok(rejected.into_iter().collect())
            }
            Err(e) => {
                let reason = format!("could not record {} updates at {}: {}", batch.rows, inner.location, describe(&e));
                tracing::error!("store: {reason}");
                inner.health.failed(&reason);
                Err(WriteFailure { reason, may_recover: super::may_recover(&e) })
            }
        }
    }

    /// Starts a checkpoint of SQLite's write-ahead log unless one runs or
    /// one started less than [`CHECKPOINT_EVERY`] ago: in the background,
    /// so a commit never waits for it. (Acknowledged creations commit in
    /// small batches; a checkpoint, which syncs the database file, after
    /// each would cost more than the commits.)
    fn checkpoint(&mut self, inner: &Arc<Inner>) {
        if !inner.wal || self.checkpointed.is_some_and(|at| at.elapsed() < CHECKPOINT_EVERY) {
            return;
        }
        if self.checkpointing.swap(true, Ordering::AcqRel) {
            return;
        }
        self.checkpointed = Some(Instant::now());
        let (inner, running) = (Arc::clone(inner), Arc::clone(&self.checkpointing));
        tokio::spawn(async move {
            if let Err(e) = inner.checkpoint().await {
                tracing::debug!("store: checkpoint: {}", describe(&e));
            }
            running.store(false, Ordering::Release);
        });
    }

    fn report(&mut self, e: StoreError) {
        tracing::error!("{e}");
        self.unreported.get_or_insert(e);
    }

    /// One try at writing the batch; the runs whose creation found their id taken.
    async fn attempt(&self, inner: &Inner, batch: &Batch) -> std::result::Result<Vec<Arc<str>>, sqlx::Error> {
        let mut script = BatchScript::new(inner, batch, self);
        inner.run_script(&mut script).await?;
        Ok(script.rejected)
    }
}

/// The position of each named task of a definition, taking the names out of it.
fn positions(definition: Value) -> Map<String, i64> {
    let Value::Object(mut d) = definition else { return Map::default() };
    let Some(Value::Array(tasks)) = d.remove("tasks") else { return Map::default() };
    let mut out = Map::with_capacity_and_hasher(tasks.len(), Default::default());
    for (i, t) in tasks.into_iter().enumerate() {
        if let Value::Object(mut t) = t
            && let Some(Value::String(name)) = t.remove("name")
        {
            out.entry(name).or_insert(i as i64);
        }
    }
    out
}

/// The first 8 bytes of a name as a number that sorts as the name does
/// (sorting by it first spares most string comparisons).
fn prefix(name: &str) -> u64 {
    let mut b = [0u8; 8];
    let n = name.len().min(8);
    b[..n].copy_from_slice(&name.as_bytes()[..n]);
    u64::from_be_bytes(b)
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Phase {
    Definitions,
    Creates,
    Runs,
    Tasks,
    Attempts,
    Done,
}

/// A batch as statements, made one chunk at a time: definitions not yet
/// written, new runs (their inserts say which ids were free), then run
/// fields, tasks and attempts in key order, leaving out the runs whose id
/// was taken.
struct BatchScript<'a> {
    inner: &'a Inner,
    memory: &'a Memory,
    phase: Phase,
    definitions: Vec<(&'a Arc<str>, &'a Arc<str>)>,
    creates: Vec<(&'a Arc<str>, &'a Create)>,
    runs: Vec<(&'a Arc<str>, &'a RunResult)>,
    tasks: Vec<(&'a Arc<str>, &'a Arc<str>, &'a TaskRow)>,
    attempts: Vec<(&'a Arc<str>, &'a Arc<str>, u32, &'a AttemptRow)>,
    /// Rows of the current phase already written.
    at: usize,
    created: HashSet<String>,
    rejected: Vec<Arc<str>>,
}

impl<'a> BatchScript<'a> {
    fn new(inner: &'a Inner, batch: &'a Batch, memory: &'a Memory) -> BatchScript<'a> {
        let mut creates: Vec<_> = batch.creates.iter().collect();
        creates.sort_unstable_by(|a, b| a.0.cmp(b.0));
        let mut definitions: Vec<_> = creates
            .iter()
            .filter_map(|(_, c)| match &c.definition {
                Definition::Text(id, text) if !memory.written.contains(id) => Some((id, text)),
                _ => None,
            })
            .collect();
        definitions.sort_unstable_by(|a, b| a.0.cmp(b.0));
        definitions.dedup_by(|a, b| a.0 == b.0);
        let mut runs: Vec<_> = batch.runs.iter().collect();
        runs.sort_unstable_by(|a, b| a.0.cmp(b.0));
        // Runs in id order, then each run's rows in key order.
        let mut task_runs: Vec<_> = batch.tasks.iter().collect();
        task_runs.sort_unstable_by(|a, b| a.0.cmp(b.0));
        let mut tasks = Vec::with_capacity(task_runs.iter().map(|(_, m)| m.len()).sum());
        let mut keyed = Vec::new();
        for (run, m) in task_runs {
            keyed.clear();
            keyed.extend(m.iter().map(|(name, row)| (prefix(name), name, row)));
            keyed.sort_unstable_by(|a, b| a.0.cmp(&b.0).then_with(|| a.1.cmp(b.1)));
            tasks.extend(keyed.iter().map(|(_, name, row)| (run, *name, *row)));
        }
        let mut attempt_runs: Vec<_> = batch.attempts.iter().collect();
        attempt_runs.sort_unstable_by(|a, b| a.0.cmp(b.0));
        let mut attempts = Vec::new();
        let mut keyed = Vec::new();
        for (run, m) in attempt_runs {
            keyed.clear();
            keyed.extend(m.iter().flat_map(|(task, v)| v.iter().map(move |(n, row)| (prefix(task), task, *n, row))));
            keyed.sort_unstable_by(|a, b| a.0.cmp(&b.0).then_with(|| a.1.cmp(b.1)).then(a.2.cmp(&b.2)));
            attempts.extend(keyed.iter().map(|(_, task, n, row)| (run, *task, *n, *row)));
        }
        BatchScript {
            inner,
            memory,
            phase: Phase::Definitions,
            definitions,
            creates,
            runs,
            tasks,
            attempts,
            at: 0,
            created: HashSet::new(),
            rejected: Vec::new(),
        }
    }

    /// Rows left in the current phase.
    fn left(&self) -> usize {
        match self.phase {
            Phase::Definitions => self.definitions.len(),
            Phase::Creates => self.creates.len(),
            Phase::Runs => self.runs.len(),
            Phase::Tasks => self.tasks.len(),
            Phase::Attempts => self.attempts.len(),
            Phase::Done => 0,
        }
        .saturating_sub(self.at)
    }

    fn advance(&mut self) {
        if self.phase == Phase::Creates {
            for (id, _) in &self.creates {
                if !self.created.contains(&***id) {
                    self.rejected.push(Arc::clone(id));
                }
            }
            let out: HashSet<&str> = self.rejected.iter().map(|id| &**id).chain(self.memory.rejected.iter().map(|id| &**id)).collect();
            if !out.is_empty() {
                self.runs.retain(|(id, _)| !out.contains(&***id));
                self.tasks.retain(|(id, _, _)| !out.contains(&***id));
                self.attempts.retain(|(id, _, _, _)| !out.contains(&***id));
            }
        }
        self.phase = match self.phase {
            Phase::Definitions => Phase::Creates,
            Phase::Creates => Phase::Runs,
            Phase::Runs => Phase::Tasks,
            Phase::Tasks => Phase::Attempts,
            Phase::Attempts | Phase::Done => Phase::Done,
        };
        self.at = 0;
    }
}

impl Script for BatchScript<'_> {
    fn next(&mut self) -> Option<Step> {
        while self.phase != Phase::Done && self.left() == 0 {
            self.advance();
        }
        let sql = &self.inner.sql;
        let owner = &self.inner.owner;
        let shared = |s: &Arc<str>| Val::Shared(Some(Arc::clone(s)));
        let (start, phase) = (self.at, self.phase);
        let upsert = match phase {
            Phase::Definitions => &sql.insert_definitions,
            Phase::Creates => &sql.insert_runs,
            Phase::Runs => &sql.upsert_runs,
            Phase::Tasks => &sql.upsert_tasks,
            Phase::Attempts => &sql.upsert_attempts,
            Phase::Done => return None,
        };
        let n = upsert.chunk(self.left());
        let mut args = Vec::with_capacity(n * upsert.width());
        match phase {
            Phase::Definitions => {
                for (id, text) in &self.definitions[start..start + n] {
                    args.extend([shared(id), shared(text)]);
                }
            }
            Phase::Creates => {
                for (_, c) in &self.creates[start..start + n] {
                    push_run(&c.run, owner, &mut args);
                    args.push(match &c.definition {
                        Definition::Text(id, _) => shared(id),
                        Definition::Value(v) => Val::Text(Some(definition_id(&json_text(v)))),
                    });
                    args.push(Val::Bool(c.implicit_pending));
                }
            }
            Phase::Runs => {
                for (_, r) in &self.runs[start..start + n] {
                    push_run(r, owner, &mut args);
                }
            }
            Phase::Tasks => {
                for (run, name, row) in &self.tasks[start..start + n] {
                    let position =
                        row.position.or_else(|| self.memory.positions.get(&***run).and_then(|p| p.get(&***name)).copied()).unwrap_or(0);
                    push_task(shared(run), shared(name), position, &row.state, &mut args);
                }
            }
            Phase::Attempts => {
                for (run, task, attempt, a) in &self.attempts[start..start + n] {
                    push_attempt_parts(
                        shared(run),
                        shared(task),
                        *attempt,
                        a.status,
                        a.error.as_deref(),
                        a.started_at,
                        a.finished_at,
                        &mut args,
                    );
                }
            }
            Phase::Done => unreachable!("returned above"),
        }
        self.at += n;
        let stmt: Stmt = upsert.stmt(n, args);
        Some(if phase == Phase::Creates { Step::Insert(stmt) } else { Step::Execute(stmt) })
    }

    fn done(&mut self, _affected: u64, inserted: Vec<String>) {
        self.created.extend(inserted);
    }
}
