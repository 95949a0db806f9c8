//! One `taskweave worker` of the PostgreSQL backend: claims ready tasks of
//! its queues up to its concurrency, runs each attempt with the executor's
//! actions, renews its leases by heartbeat, and finishes each attempt in one
//! transaction (which may hand it the children it just made ready).
//!
//! A worker that cannot renew its leases for most of a lease stops its
//! attempts itself, so an attempt never runs on two workers at once: by the
//! time a reaper hands the task to another worker, this one has let go.

use super::PgBackend;
use super::apply::{Report, stop_status};
use super::queue::{self, Claimed, StopKind, retrying};
use crate::backend::WorkerOptions;
use crate::plan::Phase;
use crate::run::actions::ActionError;
use crate::run::executor::{attempt_context, handler_fields, run_attempt};
use crate::run::{RunStatus, TaskStatus};
use serde_json::json;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Why a running attempt was stopped.
const WHY_NONE: u8 = 0;
/// Its run was cancelled or timed out.
const WHY_STOP: u8 = 1;
/// Its lease is no longer this worker's: nothing may be recorded.
const WHY_LOST: u8 = 2;
/// This worker is stopping: the task is handed back.
const WHY_SHUTDOWN: u8 = 3;

struct Running {
    attempt: i32,
    token: CancellationToken,
    why: Arc<AtomicU8>,
    /// An `on_failure`/`finally` task: its run's stop does not stop it.
    handler: Arc<AtomicBool>,
}

impl Running {
    fn stop(&self, why: u8) {
        if why == WHY_STOP && self.handler.load(Ordering::SeqCst) {
            return;
        }
        let _ = self.why.compare_exchange(WHY_NONE, why, Ordering::SeqCst, Ordering::SeqCst);
        self.token.cancel();
    }
}

type Key = (String, i32);

pub(crate) struct Worker {
    b: Arc<PgBackend>,
    id: String,
    queues: Vec<String>,
    concurrency: usize,
    sem: Arc<Semaphore>,
    running: Mutex<HashMap<Key, Running>>,
    /// When a retry this worker scheduled becomes ready.
    next_wake: Mutex<Option<Instant>>,
    /// No more direct claims: the worker is stopping.
    stopping: CancellationToken,
    /// Permits the claim loop holds while its claim is in flight: most come
    /// back when it returns, so a completion may count them for its children.
    claiming: AtomicUsize,
    /// When this worker started (its row in the `workers` table says so).
    started_at: time::OffsetDateTime,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Worker {
    pub(crate) fn new(b: Arc<PgBackend>, opts: WorkerOptions) -> Arc<Worker> {
        let concurrency = opts.concurrency.max(1);
        let queues = if opts.queues.is_empty() { vec!["default".to_string()] } else { opts.queues };
        let id = format!("{}:{}:{}", crate::backend::workers::hostname(), std::process::id(), uuid::Uuid::now_v7().simple());
        Arc::new(Worker {
            b,
            id,
            queues,
            concurrency,
            sem: Arc::new(Semaphore::new(concurrency)),
            running: Mutex::new(HashMap::new()),
            next_wake: Mutex::new(None),
            stopping: CancellationToken::new(),
            claiming: AtomicUsize::new(0),
            started_at: time::OffsetDateTime::now_utc(),
        })
    }

    /// Work until `stop` fires, then let running attempts finish (up to the
    /// shutdown grace) and hand back the rest.
    pub(crate) async fn run(self: Arc<Self>, stop: CancellationToken) {
        // Visible in `taskweave workers` from the start.
        if let Err(e) = self.b.db.beat_worker(&self.row(), true).await {
            tracing::warn!("worker {}: recording this worker: {e}", self.id);
        }
        let tracker = tokio_util::task::TaskTracker::new();
        let background = CancellationToken::new();
        let hb = tokio::spawn(Arc::clone(&self).heartbeat(background.clone()));
        let stops = tokio::spawn(Arc::clone(&self).follow_stops(background.clone()));
        let mut ready = self.b.hub.ready.subscribe();
        let poll = self.b.settings.poll;
        let mut failures = 0u32;
        loop {
            let first = tokio::select! {
                biased;
                _ = stop.cancelled() => break,
                p = Arc::clone(&self.sem).acquire_owned() => match p { Ok(p) => p, Err(_) => break },
            };
            let mut permits = vec![first];
            while permits.len() < self.concurrency
                && let Ok(p) = Arc::clone(&self.sem).try_acquire_owned()
            {
                permits.push(p);
            }
            ready.borrow_and_update();
            self.claiming.store(permits.len(), Ordering::SeqCst);
            let result = self.b.db.claim(&self.queues, permits.len(), &self.id).await;
            self.claiming.store(0, Ordering::SeqCst);
            match result {
                Ok(claimed) => {
                    failures = 0;
                    let got = claimed.len();
                    for c in claimed {
                        let Some(p) = permits.pop() else { break };
                        self.register(&c);
                        tracker.spawn(Arc::clone(&self).execute_chain(c, p));
                    }
                    drop(permits);
                    if got > 0 {
                        continue;
                    }
                    let wake = lock(&self.next_wake).take();
                    let until = Instant::now() + poll;
                    let until = wake.map_or(until, |w| w.min(until));
                    tokio::select! {
                        biased;
                        _ = stop.cancelled() => break,
                        _ = ready.changed() => {}
                        _ = tokio::time::sleep_until(until) => {}
                    }
                }
                Err(e) => {
                    drop(permits);
                    failures += 1;
                    if failures == 1 || failures.is_multiple_of(50) {
                        tracing::warn!("worker {}: claiming tasks: {e}", self.id);
                    }
                    let pause = Duration::from_millis(50 << failures.min(5)).min(poll);
                    tokio::select! {
                        _ = stop.cancelled() => break,
                        _ = tokio::time::sleep(pause) => {}
                    }
                }
            }
        }
        // Stopping: no new claims; running attempts get the grace period.
        self.stopping.cancel();
        tracker.close();
        if tokio::time::timeout(self.b.settings.shutdown_grace, tracker.wait()).await.is_err() {
            for r in lock(&self.running).values() {
                r.stop(WHY_SHUTDOWN);
            }
            tracker.wait().await;
        }
        background.cancel();
        let _ = hb.await;
        let _ = stops.await;
        // A clean stop leaves the list at once.
        if let Err(e) = queue::retrying(|| self.b.db.remove_worker(&self.id)).await {
            tracing::warn!("worker {}: removing this worker from the list: {e}", self.id);
        }
    }

    /// This worker's row in the `workers` table, as of now.
    fn row(&self) -> queue::WorkerRow {
        queue::WorkerRow {
            id: self.id.clone(),
            host: crate::backend::workers::hostname().to_string(),
            pid: std::process::id(),
            queues: self.queues.clone(),
            concurrency: self.concurrency,
            running: lock(&self.running).len(),
            started_at: self.started_at,
        }
    }

    fn register(&self, c: &Claimed) -> (CancellationToken, Arc<AtomicU8>, Arc<AtomicBool>) {
        let token = CancellationToken::new();
        let why = Arc::new(AtomicU8::new(WHY_NONE));
        let handler = Arc::new(AtomicBool::new(false));
        let running = Running { attempt: c.attempt, token: token.clone(), why: Arc::clone(&why), handler: Arc::clone(&handler) };
        lock(&self.running).insert((c.run_id.clone(), c.position), running);
        (token, why, handler)
    }

    /// Run a claimed task, then the children its completion claimed for us.
    /// (Boxed: it spawns itself for the children beyond the first.)
    fn execute_chain(self: Arc<Self>, first: Claimed, permit: OwnedSemaphorePermit) -> futures::future::BoxFuture<'static, ()> {
        Box::pin(async move {
            let mut next = Some((first, permit));
            while let Some((c, permit)) = next.take() {
                let mut claimed = self.execute(c, &permit).await.into_iter();
                if let Some(c) = claimed.next() {
                    next = Some((c, permit));
                }
                for c in claimed {
                    let w = Arc::clone(&self);
                    tokio::spawn(async move {
                        // Children beyond the first wait for a free slot.
                        if let Ok(p) = Arc::clone(&w.sem).acquire_owned().await {
                            w.execute_chain(c, p).await;
                        }
                    });
                }
            }
        })
    }

    /// One attempt: run it, finish it; returns the children claimed for us.
    async fn execute(&self, c: Claimed, _permit: &OwnedSemaphorePermit) -> Vec<Claimed> {
        let key = (c.run_id.clone(), c.position);
        let (token, why, handler) = {
            let r = lock(&self.running);
            match r.get(&key) {
                Some(x) => (x.token.clone(), Arc::clone(&x.why), Arc::clone(&x.handler)),
                None => {
                    drop(r);
                    self.register(&c)
                }
            }
        };
        let wf = retrying(|| self.b.workflow(&c.definition_id)).await;
        let report = match wf {
            Err(e) => Report::Failed { error: format!("cannot read the run's definition: {e}"), retryable: false },
            Ok(wf) if c.position < 0 || c.position as usize >= wf.tasks.len() => {
                Report::Failed { error: format!("the run's definition has no task at position {}", c.position), retryable: false }
            }
            // Handlers run after the run's stop; nothing else starts.
            Ok(wf) if c.stop.is_some() && wf.tasks[c.position as usize].phase == Phase::Main => Report::Stopped,
            Ok(wf) => {
                let id = c.position as usize;
                let is_handler = wf.tasks[id].phase != Phase::Main;
                handler.store(is_handler, Ordering::SeqCst);
                let base = json!({
                    "input": c.input,
                    "run": {"id": c.run_id},
                    "workflow": {"name": wf.name, "version": wf.version},
                    "context": c.context,
                });
                let ctx = attempt_context(&wf, id, c.attempt as u32, &base, |r| match c.outputs.get(&(r as i32)) {
                    Some((o, s)) => (Some(o.clone()), *s),
                    None => (None, TaskStatus::Pending),
                });
                let mut ctx = ctx;
                if is_handler && let Some(ctx) = ctx.as_mut() {
                    let failed = retrying(|| self.b.db.failed_tasks(&c.run_id, &wf)).await.unwrap_or_default();
                    let status = match c.stop.as_deref() {
                        Some(s) => stop_status(StopKind::parse(Some(s)).unwrap_or(StopKind::Cancelled)),
                        None if failed.is_empty() => RunStatus::Succeeded,
                        None => RunStatus::Failed,
                    };
                    handler_fields(ctx, status, failed);
                }
                // The run's deadline: stop the run (every worker's attempts)
                // when it passes; handlers are bounded by their own timeouts.
                let deadline = c.deadline_us.filter(|_| !is_handler).map(|us| {
                    let now_us = time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1000;
                    let left = Duration::from_micros((i128::from(us) - now_us).max(0) as u64);
                    let (b, run_id, token, why) = (Arc::clone(&self.b), c.run_id.clone(), token.clone(), Arc::clone(&why));
                    tokio::spawn(async move {
                        tokio::time::sleep(left).await;
                        let _ = why.compare_exchange(WHY_NONE, WHY_STOP, Ordering::SeqCst, Ordering::SeqCst);
                        match retrying(|| b.db.stop_run(&run_id, StopKind::TimedOut)).await {
                            Ok(true) => b.finished(&run_id),
                            Ok(false) => {}
                            Err(e) => tracing::warn!(run_id, "stopping a run past its deadline: {e}"),
                        }
                        token.cancel();
                    })
                });
                let limits = &self.b.executor.limits;
                let handlers = &self.b.executor.handlers;
                let (result, timed_out) =
                    run_attempt(&wf, id, c.attempt as u32, ctx.as_ref(), &c.run_id, token.clone(), limits, handlers).await;
                if let Some(d) = deadline {
                    d.abort();
                }
                match result {
                    Ok(v) => Report::Succeeded(v),
                    Err(_) if timed_out => Report::TimedOut,
                    Err(ActionError::Cancelled) => Report::Stopped,
                    Err(ActionError::Skipped(reason)) => Report::Skipped(reason),
                    Err(e) => Report::Failed { retryable: e.is_retryable(), error: e.to_string() },
                }
            }
        };
        lock(&self.running).remove(&key);
        if why.load(Ordering::SeqCst) == WHY_LOST {
            // Another worker may have it now: record nothing.
            return Vec::new();
        }
        // Children this completion may claim for us: our permit, plus what is free.
        let mut extra: Vec<OwnedSemaphorePermit> = Vec::new();
        let children = match (&report, self.b.workflow(&c.definition_id).await) {
            (Report::Succeeded(_), Ok(wf)) if (c.position as usize) < wf.tasks.len() => wf.tasks[c.position as usize].children.len(),
            _ => 0,
        };
        let claim_max = if self.stopping.is_cancelled() || children == 0 {
            0
        } else {
            while extra.len() + 1 < children
                && let Ok(p) = Arc::clone(&self.sem).try_acquire_owned()
            {
                extra.push(p);
            }
            // Slots the claim loop holds for a moment count too: children
            // claimed for them wait for a slot in `execute_chain`, rather
            // than being announced to every worker and claimed again.
            let soon = self.claiming.load(Ordering::SeqCst).min(children - 1 - extra.len());
            extra.len() + 1 + soon
        };
        let started = Instant::now();
        let mut tries = 0u32;
        let finish = loop {
            tries += 1;
            match self.b.db.finish_attempt(&c.run_id, c.position, c.attempt, Some(&self.id), &self.id, report.clone(), claim_max).await {
                Ok(f) => break f,
                Err(e) if e.is_connection() && started.elapsed() < self.b.settings.lease => {
                    if tries == 1 {
                        tracing::warn!("worker {}: recording the end of {} {}: {e}; retrying", self.id, c.run_id, c.position);
                    }
                    tokio::time::sleep(Duration::from_millis(20 << tries.min(5))).await;
                }
                Err(e) => {
                    tracing::error!("worker {}: recording the end of {} {}: {e}", self.id, c.run_id, c.position);
                    return Vec::new();
                }
            }
        };
        self.b.finished_attempt(&c.run_id, &finish);
        if let Some(at) = finish.retry_in.map(|d| Instant::now() + d) {
            let mut w = lock(&self.next_wake);
            *w = Some(w.map_or(at, |x| x.min(at)));
        }
        for n in &finish.claimed {
            self.register(n);
        }
        // The permits taken for children beyond the first go back; the
        // children take them again in `execute_chain`.
        drop(extra);
        if finish.stale {
            tracing::debug!("worker {}: attempt {} of {} {} was no longer ours", self.id, c.attempt, c.run_id, c.position);
        }
        finish.claimed
    }

    /// Renew the leases; stop what is no longer ours or whose run stops.
    async fn heartbeat(self: Arc<Self>, stop: CancellationToken) {
        let lease = self.b.settings.lease;
        let every = (lease / 4).max(Duration::from_millis(100));
        let mut last_ok = Instant::now();
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(every) => {}
            }
            if let Err(e) = self.b.db.beat_worker(&self.row(), false).await {
                tracing::debug!("worker {}: renewing this worker's row: {e}", self.id);
            }
            let held: Vec<(String, i32, i32)> = lock(&self.running).iter().map(|((r, p), x)| (r.clone(), *p, x.attempt)).collect();
            if held.is_empty() {
                last_ok = Instant::now();
                continue;
            }
            match self.b.db.heartbeat(&self.id, &held).await {
                Ok(rows) => {
                    last_ok = Instant::now();
                    let alive: HashSet<Key> = rows.iter().map(|(r, p, _)| (r.clone(), *p)).collect();
                    let running = lock(&self.running);
                    for (run_id, position, stop) in &rows {
                        if stop.is_some()
                            && let Some(r) = running.get(&(run_id.clone(), *position))
                        {
                            r.stop(WHY_STOP);
                        }
                    }
                    for (run_id, position, attempt) in held {
                        let key = (run_id, position);
                        if !alive.contains(&key)
                            && let Some(r) = running.get(&key)
                            && r.attempt == attempt
                        {
                            r.stop(WHY_LOST);
                        }
                    }
                }
                Err(e) => {
                    tracing::warn!("worker {}: renewing leases: {e}", self.id);
                    // Let go before a reaper can give the tasks to another worker.
                    if last_ok.elapsed() > lease.mul_f64(0.75) {
                        for r in lock(&self.running).values() {
                            r.stop(WHY_LOST);
                        }
                    }
                }
            }
        }
    }

    /// Stop the attempts of runs that are cancelled or timed out.
    async fn follow_stops(self: Arc<Self>, stop: CancellationToken) {
        let mut rx = self.b.hub.stops.subscribe();
        loop {
            let run_id = tokio::select! {
                _ = stop.cancelled() => return,
                m = rx.recv() => match m {
                    Ok(id) => id,
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                    Err(_) => return,
                },
            };
            for ((r, _), x) in lock(&self.running).iter() {
                if *r == run_id {
                    x.stop(WHY_STOP);
                }
            }
        }
    }
}
