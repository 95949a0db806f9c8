//! The scheduler: drives one run of a validated workflow to its end.
//!
//! Event-driven over the DAG: a task becomes ready when its last parent
//! succeeds; ready tasks start while fewer than `concurrency` are running;
//! each attempt runs in its own tokio task with its own cancellation token, so
//! a task timeout stops one attempt and a workflow timeout or a cancel stops
//! them all. A task that fails for good skips its descendants (with the
//! reason recorded) while independent branches go on. Every transition goes
//! through the state machines in [`super::state`] and is recorded in the
//! store through the batched writer.

use super::actions::{self, ActionError, Attempt, Handlers, Limits};
use super::result::{RunResult, TaskResult};
use super::state::{RunStatus, TaskStatus};
use crate::plan::{TaskId, Workflow};
use crate::store::{AttemptRecord, StoreWriter};
use futures::FutureExt;
use rand::Rng;
use serde_json::{Map, Value, json};
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use time::OffsetDateTime;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// A transition, for progress displays and event streams.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct RunEvent {
    pub run_id: String,
    pub workflow: String,
    /// `None` for run-level transitions.
    pub task: Option<String>,
    /// The new status (`TaskStatus` or `RunStatus` as text).
    pub status: String,
    pub attempt: u32,
    pub error: Option<String>,
}

pub type EventSink = tokio::sync::mpsc::UnboundedSender<RunEvent>;

/// What the executor shares across runs.
#[derive(Clone)]
pub struct Executor {
    pub handlers: Arc<Handlers>,
    pub limits: Arc<Limits>,
    pub writer: Option<StoreWriter>,
    pub events: Option<tokio::sync::broadcast::Sender<RunEvent>>,
}

/// The live state of one run, shared with whoever asks for its result.
pub type SharedResult = Arc<Mutex<RunResult>>;

struct Outcome {
    task: TaskId,
    attempt: u32,
    result: Result<Value, ActionError>,
    timed_out: bool,
    started_at: OffsetDateTime,
}

fn now() -> OffsetDateTime {
    OffsetDateTime::now_utc()
}

/// Lock a mutex even if a panicking thread poisoned it: the data is plain
/// state that stays consistent between our own updates.
pub fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Executor {
    fn emit(&self, run: &RunResult, task: Option<&str>, status: &str, attempt: u32, error: Option<&str>) {
        if let Some(tx) = &self.events
            && tx.receiver_count() > 0
        {
            let _ = tx.send(RunEvent {
                run_id: run.run_id.clone(),
                workflow: run.workflow.clone(),
                task: task.map(str::to_string),
                status: status.to_string(),
                attempt,
                error: error.map(str::to_string),
            });
        }
    }

    /// Run to completion. `shared` holds the queued run (tasks pending); it is
    /// updated in place and holds the final result when this returns.
    pub async fn drive(&self, wf: Arc<Workflow>, shared: SharedResult, cancel: CancellationToken) -> RunStatus {
        let n = wf.tasks.len();
        let (run_id, input, context) = {
            let r = lock(&shared);
            (r.run_id.clone(), r.input.clone(), r.context.clone())
        };
        let mut status = vec![TaskStatus::Pending; n];
        let mut waiting: Vec<usize> = wf.tasks.iter().map(|t| t.parents.len()).collect();
        let mut outputs: Vec<Option<Value>> = vec![None; n];
        let mut ready: VecDeque<TaskId> = wf.roots().collect();
        let limit = wf.concurrency.unwrap_or(usize::MAX);
        let mut running = 0usize;
        let mut set: JoinSet<Outcome> = JoinSet::new();
        let base_ctx = Arc::new(json!({
            "input": input,
            "run": {"id": run_id},
            "workflow": {"name": wf.name, "version": wf.version},
            "context": context,
        }));

        // queued -> running
        {
            let mut r = lock(&shared);
            let _ = r.status.transition(RunStatus::Running);
            r.started_at = Some(now());
            if let Some(w) = &self.writer {
                w.run_fields(&r);
            }
            self.emit(&r, None, RunStatus::Running.as_str(), 0, None);
        }
        // The backend recorded the run before driving it, so a process
        // killed mid-run leaves a record behind; its start goes with the
        // next batch.

        let deadline = wf.timeout.map(|t| tokio::time::Instant::now() + t);
        let sleep_until = async move {
            match deadline {
                Some(d) => tokio::time::sleep_until(d).await,
                None => std::future::pending().await,
            }
        };
        tokio::pin!(sleep_until);
        let mut stop: Option<RunStatus> = None;

        loop {
            // Start what is ready, up to the concurrency limit.
            while stop.is_none() && running < limit {
                let Some(id) = ready.pop_front() else { break };
                running += 1;
                self.set_task(&shared, &wf, id, &mut status, TaskStatus::Running, |t| {
                    t.started_at = Some(now());
                    t.attempts = 1;
                });
                self.spawn_attempt(&mut set, &wf, id, 1, None, &base_ctx, &outputs, &cancel);
            }
            if running == 0 {
                break;
            }
            tokio::select! {
                biased;
                _ = cancel.cancelled(), if stop.is_none() => {
                    stop = Some(RunStatus::Cancelled);
                    // attempts see the same token and return Cancelled
                }
                _ = &mut sleep_until, if stop.is_none() => {
                    stop = Some(RunStatus::TimedOut);
                    cancel.cancel();
                }
                joined = set.join_next() => {
                    let Some(joined) = joined else { break };
                    let out = match joined {
                        Ok(o) => o,
                        Err(e) => {
                            // Attempts catch their own panics; this is a runtime
                            // shutdown aborting them.
                            tracing::error!(run_id, "an attempt was aborted: {e}");
                            running -= 1;
                            continue;
                        }
                    };
                    let id = out.task;
                    let task = &wf.tasks[id];
                    match out.result {
                        Ok(v) => {
                            running -= 1;
                            self.record_attempt(&run_id, &task.name, out.attempt, TaskStatus::Succeeded, None, out.started_at);
                            self.set_task(&shared, &wf, id, &mut status, TaskStatus::Succeeded, |t| {
                                t.output = Some(v.clone());
                                t.error = None;
                                t.finished_at = Some(now());
                            });
                            outputs[id] = Some(v);
                            for &c in &task.children {
                                waiting[c] -= 1;
                                if waiting[c] == 0 && status[c] == TaskStatus::Pending {
                                    ready.push_back(c);
                                }
                            }
                        }
                        Err(err) => {
                            let stopped_by_run = matches!(err, ActionError::Cancelled) && !out.timed_out;
                            let (attempt_status, msg) = if out.timed_out {
                                (TaskStatus::TimedOut, format!("attempt {} timed out after {}", out.attempt, humantime::format_duration(task.timeout.unwrap_or_default())))
                            } else if stopped_by_run {
                                let why = if stop == Some(RunStatus::TimedOut) { "stopped: the run timed out" } else { "cancelled" };
                                (if stop == Some(RunStatus::TimedOut) { TaskStatus::TimedOut } else { TaskStatus::Cancelled }, why.to_string())
                            } else {
                                (TaskStatus::Failed, err.to_string())
                            };
                            self.record_attempt(&run_id, &task.name, out.attempt, attempt_status, Some(&msg), out.started_at);
                            let retryable = out.timed_out || err.is_retryable();
                            if !stopped_by_run && stop.is_none() && retryable && out.attempt < task.retry.attempts {
                                let next = out.attempt + 1;
                                let delay = retry_delay(&task.retry, next);
                                self.set_task(&shared, &wf, id, &mut status, TaskStatus::Running, |t| {
                                    t.attempts = next;
                                    t.error = Some(msg.clone());
                                });
                                self.spawn_attempt(&mut set, &wf, id, next, Some(delay), &base_ctx, &outputs, &cancel);
                                continue;
                            }
                            running -= 1;
                            let final_status = if stopped_by_run {
                                attempt_status
                            } else if out.timed_out {
                                TaskStatus::TimedOut
                            } else {
                                TaskStatus::Failed
                            };
                            self.set_task(&shared, &wf, id, &mut status, final_status, |t| {
                                t.error = Some(msg.clone());
                                t.finished_at = Some(now());
                            });
                            if !stopped_by_run {
                                let verb = if final_status == TaskStatus::TimedOut { "timed out" } else { "failed" };
                                self.skip_descendants(&shared, &wf, id, &mut status, &format!("parent {} {verb}", task.name));
                            }
                        }
                    }
                }
            }
        }

        // Whatever never started: skipped (timeout) or cancelled (cancel).
        let end = match stop {
            Some(s) => s,
            None if status.iter().all(|s| *s == TaskStatus::Succeeded) => RunStatus::Succeeded,
            None => RunStatus::Failed,
        };
        for id in 0..n {
            if status[id] == TaskStatus::Pending {
                let (to, reason) = match end {
                    RunStatus::Cancelled => (TaskStatus::Cancelled, "run cancelled".to_string()),
                    RunStatus::TimedOut => {
                        (TaskStatus::Skipped, format!("run timed out after {}", humantime::format_duration(wf.timeout.unwrap_or_default())))
                    }
                    _ => (TaskStatus::Skipped, "not reached".to_string()),
                };
                self.set_task(&shared, &wf, id, &mut status, to, |t| {
                    t.skip_reason = Some(reason.clone());
                    t.finished_at = Some(now());
                });
            }
        }
        // Record the end first, then publish it: whoever sees the run finished
        // can rely on its history being written (or on the error saying why not).
        let mut fin = {
            let mut r = lock(&shared);
            let tasks = std::mem::take(&mut r.tasks);
            let snapshot = r.clone();
            r.tasks = tasks;
            snapshot
        };
        let _ = fin.status.transition(end);
        fin.finished_at = Some(now());
        if end == RunStatus::TimedOut {
            fin.error = Some(format!("the run timed out after {}", humantime::format_duration(wf.timeout.unwrap_or_default())));
        } else if end == RunStatus::Cancelled && fin.error.is_none() {
            fin.error = Some("the run was cancelled".into());
        }
        if let Some(w) = &self.writer {
            w.run_fields(&fin);
            if let Err(e) = w.flush().await {
                tracing::error!(run_id, "could not record the run: {e}");
                fin.error = Some(match fin.error.take() {
                    Some(prev) => format!("{prev}; the run history could not be recorded: {e}"),
                    None => format!("the run history could not be recorded: {e}"),
                });
            }
        }
        {
            let mut r = lock(&shared);
            r.status = fin.status;
            r.finished_at = fin.finished_at;
            r.error = fin.error;
            self.emit(&r, None, end.as_str(), 0, r.error.as_deref());
        }
        end
    }

    /// Apply a task transition through the state machine, update the shared
    /// result, record it and announce it.
    fn set_task(
        &self,
        shared: &SharedResult,
        wf: &Workflow,
        id: TaskId,
        status: &mut [TaskStatus],
        to: TaskStatus,
        update: impl FnOnce(&mut TaskResult),
    ) {
        if let Err(e) = status[id].transition(to) {
            tracing::error!("{e} (task {})", wf.tasks[id].name);
            return;
        }
        let name = &wf.tasks[id].name;
        let mut guard = lock(shared);
        let r = &mut *guard;
        let Some(t) = r.tasks.get_mut(name) else { return };
        t.status = to;
        update(t);
        if let Some(w) = &self.writer {
            w.task(&r.run_id, name, t);
        }
        let (attempt, error) = (t.attempts, t.error.clone());
        self.emit(r, Some(name), to.as_str(), attempt, if to.is_terminal() { error.as_deref() } else { None });
    }

    fn skip_descendants(&self, shared: &SharedResult, wf: &Workflow, failed: TaskId, status: &mut [TaskStatus], reason: &str) {
        let mut stack: Vec<TaskId> = wf.tasks[failed].children.clone();
        while let Some(c) = stack.pop() {
            if status[c] != TaskStatus::Pending {
                continue;
            }
            self.set_task(shared, wf, c, status, TaskStatus::Skipped, |t| {
                t.skip_reason = Some(reason.to_string());
                t.finished_at = Some(now());
            });
            stack.extend(wf.tasks[c].children.iter().copied());
        }
    }

    fn record_attempt(&self, run_id: &str, task: &str, attempt: u32, status: TaskStatus, error: Option<&str>, started_at: OffsetDateTime) {
        if let Some(w) = &self.writer {
            w.attempt(AttemptRecord {
                run_id: run_id.to_string(),
                task: task.to_string(),
                attempt,
                status,
                error: error.map(str::to_string),
                started_at,
                finished_at: Some(now()),
            });
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn spawn_attempt(
        &self,
        set: &mut JoinSet<Outcome>,
        wf: &Arc<Workflow>,
        id: TaskId,
        attempt: u32,
        delay: Option<Duration>,
        base_ctx: &Arc<Value>,
        outputs: &[Option<Value>],
        run_cancel: &CancellationToken,
    ) {
        let ctx = attempt_context(wf, id, attempt, base_ctx, |r| outputs[r].clone());
        let wf = Arc::clone(wf);
        let handlers = Arc::clone(&self.handlers);
        let limits = Arc::clone(&self.limits);
        let token = run_cancel.child_token();
        let run_id = base_ctx["run"]["id"].as_str().unwrap_or_default().to_string();
        set.spawn(async move {
            if let Some(d) = delay {
                tokio::select! {
                    _ = token.cancelled() => {
                        return Outcome { task: id, attempt, result: Err(ActionError::Cancelled), timed_out: false, started_at: now() };
                    }
                    _ = tokio::time::sleep(d) => {}
                }
            }
            let started_at = now();
            let (result, timed_out) = run_attempt(&wf, id, attempt, ctx.as_ref(), &run_id, token, &limits, &handlers).await;
            Outcome { task: id, attempt, result, timed_out, started_at }
        });
    }
}

/// The delay before try number `next` (2 for the first retry): the policy's
/// backoff, with jitter when the policy asks for it.
pub fn retry_delay(policy: &crate::plan::RetryPolicy, next: u32) -> Duration {
    let mut delay = policy.delay_before(next);
    if policy.jitter && !delay.is_zero() {
        let f: f64 = rand::rng().random_range(0.8..1.2);
        delay = Duration::from_secs_f64((delay.as_secs_f64() * f).min(policy.max_delay.as_secs_f64()));
    }
    delay
}

/// The template context of one attempt of task `id`: `base_ctx` (`input`,
/// `run.id`, `workflow`, `context`) with the outputs of the ancestors the
/// task reads and `run.attempt`; `None` when the task has no templates.
pub fn attempt_context(
    wf: &Workflow,
    id: TaskId,
    attempt: u32,
    base_ctx: &Value,
    output: impl Fn(TaskId) -> Option<Value>,
) -> Option<Value> {
    let task = &wf.tasks[id];
    if !task.templated {
        return None;
    }
    let mut ctx = base_ctx.clone();
    let mut tasks = Map::new();
    for &r in &task.reads {
        tasks.insert(wf.tasks[r].name.clone(), json!({"output": output(r).unwrap_or(Value::Null)}));
    }
    ctx["tasks"] = Value::Object(tasks);
    ctx["run"]["attempt"] = json!(attempt);
    Some(ctx)
}

/// Run one attempt of task `id` to its end: the action under the task's
/// timeout, a panic turned into a permanent error. Returns the outcome and
/// whether the task timeout stopped it. Drivers that execute tasks outside
/// [`Executor::drive`] (remote workers) use this too.
#[allow(clippy::too_many_arguments)]
pub async fn run_attempt(
    wf: &Workflow,
    id: TaskId,
    attempt: u32,
    ctx: Option<&Value>,
    run_id: &str,
    token: CancellationToken,
    limits: &Limits,
    handlers: &Handlers,
) -> (Result<Value, ActionError>, bool) {
    let empty = Value::Null;
    let task = &wf.tasks[id];
    let fut = actions::execute(Attempt {
        workflow: wf,
        task,
        ctx: ctx.unwrap_or(&empty),
        run_id,
        attempt,
        cancel: token.clone(),
        limits,
        handlers,
    });
    // A panicking action fails its attempt instead of the run.
    let fut = std::panic::AssertUnwindSafe(fut).catch_unwind().map(|r| {
        r.unwrap_or_else(|p| {
            let msg = p.downcast_ref::<&str>().map(|s| s.to_string()).or_else(|| p.downcast_ref::<String>().cloned()).unwrap_or_default();
            Err(ActionError::Permanent(format!("the action panicked: {msg}")))
        })
    });
    tokio::pin!(fut);
    match task.timeout {
        None => (fut.await, false),
        Some(t) => tokio::select! {
            r = &mut fut => (r, false),
            _ = tokio::time::sleep(t) => {
                token.cancel();
                let _ = fut.await;
                (Err(ActionError::Cancelled), true)
            }
        },
    }
}

/// A fresh, queued result for a run of `wf`.
pub fn new_result(wf: &Workflow, run_id: String, backend: &str, input: Value, entity_id: Option<String>, context: Value) -> RunResult {
    RunResult {
        entity_id: entity_id.unwrap_or_else(|| run_id.clone()),
        run_id,
        workflow: wf.name.clone(),
        version: wf.version.clone(),
        status: RunStatus::Queued,
        backend: backend.to_string(),
        routing: None,
        error: None,
        context,
        input,
        created_at: now(),
        started_at: None,
        finished_at: None,
        tasks: wf.tasks.iter().map(|t| (t.name.clone(), TaskResult::pending())).collect(),
    }
}
