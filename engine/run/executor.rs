//! The in-process driver of the scheduler core: drives one run of a
//! validated workflow to its end.
//!
//! The core ([`super::sched`]) decides what runs next; this executor runs
//! each attempt in its own tokio task with its own cancellation token (a
//! child of the run's), so a task timeout stops one attempt and a workflow
//! timeout or a cancel stops them all, and records every transition in the
//! store through the batched writer.

use super::actions::{self, ActionError, Attempt, Handlers, Limits};
use super::output::{self, End};
use super::record::{AttemptRecord, Recorder};
use super::result::{RunResult, TaskResult};
use super::sched::{self, Core, Decision, Event, Outcome};
use super::state::{RunStatus, TaskStatus};
use crate::plan::{Phase, Task, TaskId, Workflow};
use futures::FutureExt;
use serde_json::{Map, Value, json};
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
    pub writer: Option<Arc<dyn Recorder>>,
    pub events: Option<tokio::sync::broadcast::Sender<RunEvent>>,
}

/// The live state of one run, shared with whoever asks for its result.
pub type SharedResult = Arc<Mutex<RunResult>>;

/// One run's driving state: what the core's decisions act on.
struct Run {
    shared: SharedResult,
    /// Outputs of the tasks that succeeded.
    outputs: Vec<Option<Value>>,
    /// Each task's status, as the core decided it.
    statuses: Vec<TaskStatus>,
    /// When each task's latest attempt started.
    started_at: Vec<Option<OffsetDateTime>>,
    set: JoinSet<AttemptEnd>,
    base_ctx: Arc<Value>,
    cancel: CancellationToken,
    /// Set by the core's last decision, with the run's output.
    end: Option<End>,
}

struct AttemptEnd {
    task: TaskId,
    attempt: u32,
    result: Result<Value, ActionError>,
    timed_out: bool,
    /// The run stopped while the attempt waited for its retry delay.
    never_began: bool,
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
    ///
    /// What runs next is the scheduler core's decision ([`Core`]); this loop
    /// feeds it what happens (attempts ending, cancel, the deadline) and
    /// carries out its decisions: attempts in tokio tasks, transitions into
    /// the shared result, the store and the event stream.
    pub async fn drive(&self, wf: Arc<Workflow>, shared: SharedResult, cancel: CancellationToken) -> RunStatus {
        self.drive_from(wf, shared, cancel, false).await
    }

    /// Go on with a run this process adopted from one that stopped (killed,
    /// crashed) while running it: `shared` holds the run as recorded. Tasks
    /// that succeeded keep their outputs; an attempt that was running is
    /// lost, and its task retries under its policy; what was ready starts.
    /// The workflow timeout counts from the run's recorded start.
    pub async fn resume(&self, wf: Arc<Workflow>, shared: SharedResult, cancel: CancellationToken) -> RunStatus {
        let queued = lock(&shared).status == RunStatus::Queued;
        self.drive_from(wf, shared, cancel, !queued).await
    }

    async fn drive_from(&self, wf: Arc<Workflow>, shared: SharedResult, cancel: CancellationToken, resumed: bool) -> RunStatus {
        let n = wf.tasks.len();
        let (run_id, input, context) = {
            let r = lock(&shared);
            (r.run_id.clone(), r.input.clone(), r.context.clone())
        };
        let mut outputs = vec![None; n];
        let mut statuses = vec![TaskStatus::Pending; n];
        // What the record holds of each task, for a resumed run: its status
        // and attempt, in plan order.
        let mut recorded = Vec::with_capacity(if resumed { n } else { 0 });
        let mut started_in = None;
        // A retry's run starts with the tasks it reuses succeeded.
        let mut reused = Vec::new();
        if !resumed {
            let r = lock(&shared);
            if r.retry_of.is_some() {
                for t in &wf.tasks {
                    if let Some(x) = r.tasks.get(&t.name).filter(|x| x.status == TaskStatus::Succeeded) {
                        outputs[t.id] = x.output.clone();
                        statuses[t.id] = TaskStatus::Succeeded;
                        reused.push(t.id);
                    }
                }
            }
        }
        if resumed {
            let r = lock(&shared);
            started_in = r.started_at.map(|t| now() - t);
            for t in &wf.tasks {
                let (status, attempts, output) =
                    r.tasks.get(&t.name).map_or((TaskStatus::Pending, 0, None), |x| (x.status, x.attempts, x.output.clone()));
                if status == TaskStatus::Succeeded {
                    outputs[t.id] = output;
                }
                statuses[t.id] = status;
                recorded.push((status, if status == TaskStatus::Running { attempts.max(1) } else { attempts }));
            }
        }
        let mut run = Run {
            shared,
            outputs,
            statuses,
            started_at: vec![None; n],
            set: JoinSet::new(),
            base_ctx: Arc::new(json!({
                "input": input,
                "run": {"id": run_id},
                "workflow": {"name": wf.name, "version": wf.version},
                "context": context,
            })),
            cancel,
            end: None,
        };
        let mut decisions = Vec::new();
        let mut core = match resumed {
            // The backend recorded the run before driving it, so a process
            // killed mid-run leaves a record behind; its start goes with the
            // next batch.
            false => match Core::started(&wf, sched::seed(&run_id), &reused) {
                Ok((core, first)) => {
                    decisions = first;
                    core
                }
                Err(e) => {
                    tracing::error!(run_id, "{e}");
                    Core::new(&wf, sched::seed(&run_id))
                }
            },
            true => match Core::resume(&wf, sched::seed(&run_id), RunStatus::Running, None, recorded) {
                Ok(mut core) => {
                    // The attempts the stopped process was running are lost.
                    for t in &wf.tasks {
                        if core.task_status(t.id) == TaskStatus::Running {
                            let error = "interrupted: the process running this attempt stopped".to_string();
                            let event = Event::Ended {
                                task: t.id,
                                attempt: core.attempt(t.id),
                                outcome: Outcome::Failed { error, retryable: true },
                            };
                            if let Err(e) = core.handle(&wf, event, &mut decisions) {
                                tracing::error!(run_id, "{e}");
                            }
                        }
                    }
                    core.kick(&wf, &mut decisions);
                    core
                }
                Err(e) => {
                    tracing::error!(run_id, "cannot resume the run: {e}");
                    let mut r = lock(&run.shared);
                    let _ = r.status.transition(RunStatus::Failed);
                    r.error = Some(format!("interrupted, and could not be resumed: {e}"));
                    r.finished_at = Some(now());
                    if let Some(w) = &self.writer {
                        w.run_fields(&r);
                    }
                    return RunStatus::Failed;
                }
            },
        };
        self.apply(&wf, &mut run, &mut decisions, &core);

        let deadline =
            wf.timeout.map(|t| tokio::time::Instant::now() + t.saturating_sub(started_in.map_or(Duration::ZERO, |d| d.unsigned_abs())));
        let sleep_until = async move {
            match deadline {
                Some(d) => tokio::time::sleep_until(d).await,
                None => std::future::pending().await,
            }
        };
        tokio::pin!(sleep_until);
        let (mut cancel_seen, mut deadline_seen) = (false, false);

        while !core.is_finished() {
            let event = tokio::select! {
                biased;
                _ = run.cancel.cancelled(), if !cancel_seen => {
                    cancel_seen = true;
                    Event::Cancel
                }
                _ = &mut sleep_until, if !deadline_seen => {
                    deadline_seen = true;
                    Event::Deadline
                }
                joined = run.set.join_next() => {
                    let Some(joined) = joined else {
                        // Nothing left to wait for, yet the core waits:
                        // attempts were aborted by a runtime shutdown.
                        tracing::error!(run_id, "the run lost its attempts");
                        break;
                    };
                    let out = match joined {
                        Ok(o) => o,
                        Err(e) => {
                            // Attempts catch their own panics; this is a runtime
                            // shutdown aborting them.
                            tracing::error!(run_id, "an attempt was aborted: {e}");
                            continue;
                        }
                    };
                    run.started_at[out.task] = Some(out.started_at);
                    let outcome = match out.result {
                        Err(_) if out.never_began => Outcome::NotStarted,
                        Ok(v) => {
                            run.outputs[out.task] = Some(v);
                            Outcome::Succeeded
                        }
                        Err(_) if out.timed_out => Outcome::TimedOut,
                        Err(ActionError::Cancelled) => Outcome::Stopped,
                        Err(ActionError::Skipped(reason)) => Outcome::Skipped { reason },
                        Err(e) => Outcome::Failed { retryable: e.is_retryable(), error: e.to_string() },
                    };
                    Event::Ended { task: out.task, attempt: out.attempt, outcome }
                }
            };
            if let Err(e) = core.handle(&wf, event, &mut decisions) {
                tracing::error!(run_id, "{e}");
            }
            self.apply(&wf, &mut run, &mut decisions, &core);
        }
        let Some(end) = run.end.take() else { return core.status() };
        self.finish_run(run, end).await
    }

    /// Carry out the core's decisions, in order.
    fn apply(&self, wf: &Arc<Workflow>, run: &mut Run, decisions: &mut Vec<Decision>, core: &Core) {
        for d in decisions.drain(..) {
            match d {
                Decision::RunStarted => {
                    let mut r = lock(&run.shared);
                    let _ = r.status.transition(RunStatus::Running);
                    r.started_at = Some(now());
                    if let Some(w) = &self.writer {
                        w.run_fields(&r);
                    }
                    self.emit(&r, None, RunStatus::Running.as_str(), 0, None);
                }
                Decision::Start { task } => {
                    run.statuses[task] = TaskStatus::Running;
                    self.set_task(&run.shared, wf, task, TaskStatus::Running, |t| {
                        t.started_at = Some(now());
                        t.attempts = 1;
                    });
                    let handler = self.handler_run(wf, task, run, core);
                    self.spawn_attempt(wf, task, 1, None, run, handler);
                }
                Decision::Retry { task, attempt, delay, error } => {
                    self.set_task(&run.shared, wf, task, TaskStatus::Running, |t| {
                        t.attempts = attempt;
                        t.error = Some(error);
                    });
                    let handler = self.handler_run(wf, task, run, core);
                    self.spawn_attempt(wf, task, attempt, Some(delay), run, handler);
                }
                Decision::Attempt { task, attempt, status, error } => {
                    let started_at = run.started_at[task].unwrap_or_else(now);
                    self.record_attempt(&lock(&run.shared).run_id, &wf.tasks[task].name, attempt, status, error.as_deref(), started_at);
                }
                Decision::Finish { task, status, error } => {
                    run.statuses[task] = status;
                    let output = if status == TaskStatus::Succeeded { run.outputs[task].clone() } else { None };
                    self.set_task(&run.shared, wf, task, status, |t| {
                        if output.is_some() {
                            t.output = output;
                        }
                        t.error = error;
                        t.finished_at = Some(now());
                    });
                }
                Decision::Skip { task, status, reason } => {
                    run.statuses[task] = status;
                    self.set_task(&run.shared, wf, task, status, |t| {
                        // A task skipped by its condition made no attempt.
                        t.attempts = 0;
                        t.started_at = None;
                        t.skip_reason = Some(reason);
                        t.finished_at = Some(now());
                    });
                }
                // Attempts hold child tokens of the run's: they stop and come
                // back as `Stopped`.
                Decision::StopAll => run.cancel.cancel(),
                Decision::RunFinished { status, error } => {
                    let (outputs, statuses) = (&run.outputs, &run.statuses);
                    run.end = Some(output::end(wf, status, error, &run.base_ctx, |r| (outputs[r].clone(), statuses[r])));
                }
            }
        }
    }

    /// Record the end first, then publish it: whoever sees the run finished
    /// can rely on its history being written (or on the error saying why not).
    async fn finish_run(&self, run: Run, End { status: end, error, output }: End) -> RunStatus {
        let run_id = lock(&run.shared).run_id.clone();
        let mut fin = {
            let mut r = lock(&run.shared);
            let tasks = std::mem::take(&mut r.tasks);
            let snapshot = r.clone();
            r.tasks = tasks;
            snapshot
        };
        let _ = fin.status.transition(end);
        fin.finished_at = Some(now());
        fin.output = output;
        // A cancel may carry its own reason; keep it.
        if end != RunStatus::Cancelled || fin.error.is_none() {
            fin.error = error;
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
            let mut r = lock(&run.shared);
            r.status = fin.status;
            r.finished_at = fin.finished_at;
            r.error = fin.error;
            r.output = fin.output;
            self.emit(&r, None, end.as_str(), 0, r.error.as_deref());
        }
        end
    }

    /// Apply a task transition (the core has checked it against the
    /// transition table) to the shared result, record it and announce it.
    fn set_task(&self, shared: &SharedResult, wf: &Workflow, id: TaskId, to: TaskStatus, update: impl FnOnce(&mut TaskResult)) {
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

    /// What a handler task reads of the run (`run.status`,
    /// `run.failed_tasks`); `None` for a task of the workflow's own.
    fn handler_run(&self, wf: &Workflow, id: TaskId, run: &Run, core: &Core) -> Option<(RunStatus, Vec<Value>)> {
        if wf.tasks[id].phase == Phase::Main {
            return None;
        }
        let r = lock(&run.shared);
        let failed = failed_tasks(wf, |t| run.statuses[t], |t| r.tasks.get(&wf.tasks[t].name).and_then(|x| x.error.clone()));
        Some((core.outcome(wf), failed))
    }

    fn spawn_attempt(
        &self,
        wf: &Arc<Workflow>,
        id: TaskId,
        attempt: u32,
        delay: Option<Duration>,
        run: &mut Run,
        handler: Option<(RunStatus, Vec<Value>)>,
    ) {
        let mut ctx = attempt_context(wf, id, attempt, &run.base_ctx, |r| (run.outputs[r].clone(), run.statuses[r]));
        if let (Some(c), Some((status, failed))) = (ctx.as_mut(), handler.as_ref()) {
            handler_fields(c, *status, failed.clone());
        }
        let wf = Arc::clone(wf);
        let handlers = Arc::clone(&self.handlers);
        let limits = Arc::clone(&self.limits);
        // Handlers run after a stop too: the run's cancel does not reach them.
        let token = if handler.is_some() { CancellationToken::new() } else { run.cancel.child_token() };
        let run_id = run.base_ctx["run"]["id"].as_str().unwrap_or_default().to_string();
        let set = &mut run.set;
        set.spawn(async move {
            if let Some(d) = delay {
                tokio::select! {
                    _ = token.cancelled() => {
                        return AttemptEnd {
                            task: id,
                            attempt,
                            result: Err(ActionError::Cancelled),
                            timed_out: false,
                            never_began: true,
                            started_at: now(),
                        };
                    }
                    _ = tokio::time::sleep(d) => {}
                }
            }
            let started_at = now();
            let (result, timed_out) = run_attempt(&wf, id, attempt, ctx.as_ref(), &run_id, token, &limits, &handlers).await;
            AttemptEnd { task: id, attempt, result, timed_out, never_began: false, started_at }
        });
    }
}

/// The template context of one attempt of task `id`: `base_ctx` (`input`,
/// `run.id`, `workflow`, `context`) with the outputs and statuses of the
/// ancestors the task reads (`read(ancestor)`: its output if it succeeded,
/// and its status) and `run.attempt`; `None` when the task has no
/// templates and no condition.
pub fn attempt_context(
    wf: &Workflow,
    id: TaskId,
    attempt: u32,
    base_ctx: &Value,
    read: impl Fn(TaskId) -> (Option<Value>, TaskStatus),
) -> Option<Value> {
    let task = &wf.tasks[id];
    if !task.templated {
        return None;
    }
    let mut ctx = base_ctx.clone();
    let mut tasks = Map::new();
    for &r in &task.reads {
        let (output, status) = read(r);
        tasks.insert(wf.tasks[r].name.clone(), json!({"output": output.unwrap_or(Value::Null), "status": status.as_str()}));
    }
    ctx["tasks"] = Value::Object(tasks);
    ctx["run"]["attempt"] = json!(attempt);
    Some(ctx)
}

/// The task's `when:` condition against the attempt's context: `Ok` to
/// run it, [`ActionError::Skipped`] when it is false, a permanent error
/// when it cannot be evaluated or is not a bool.
pub fn condition(task: &Task, ctx: Option<&Value>) -> Result<(), ActionError> {
    let Some(c) = &task.when else { return Ok(()) };
    match c.eval(ctx.unwrap_or(&Value::Null)) {
        Ok(true) => Ok(()),
        Ok(false) => Err(ActionError::Skipped(c.skip_reason())),
        Err(e) => Err(ActionError::Permanent(c.failure(&e))),
    }
}

/// What a driver that evaluates a condition itself (before scheduling the
/// task anywhere) feeds the core: `None` when the task is to run.
pub fn condition_outcome(task: &Task, ctx: Option<&Value>) -> Option<Outcome> {
    match condition(task, ctx) {
        Ok(()) => None,
        Err(ActionError::Skipped(reason)) => Some(Outcome::Skipped { reason }),
        Err(e) => Some(Outcome::Failed { error: e.to_string(), retryable: false }),
    }
}

/// The failed (or timed-out) tasks of the workflow's own, as handlers read
/// them in `run.failed_tasks`: `{name, error}` in plan order.
pub fn failed_tasks(wf: &Workflow, status: impl Fn(TaskId) -> TaskStatus, error: impl Fn(TaskId) -> Option<String>) -> Vec<Value> {
    wf.tasks
        .iter()
        .filter(|t| t.phase == Phase::Main && matches!(status(t.id), TaskStatus::Failed | TaskStatus::TimedOut))
        .map(|t| json!({"name": t.name, "error": error(t.id)}))
        .collect()
}

/// Add what a handler reads of its run to an attempt's context:
/// `run.status` (how the run ends so far) and `run.failed_tasks`.
pub fn handler_fields(ctx: &mut Value, status: RunStatus, failed: Vec<Value>) {
    ctx["run"]["status"] = json!(status.as_str());
    ctx["run"]["failed_tasks"] = Value::Array(failed);
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
    let task = &wf.tasks[id];
    if let Err(e) = condition(task, ctx) {
        return (Err(e), false);
    }
    // Secrets join the context here, in the process that runs the attempt,
    // and are masked in what leaves it.
    let (with_secrets, masked) = match super::secrets::resolve(wf, task) {
        Ok(Some((secrets, values))) => (Some(super::secrets::with_secrets(ctx, secrets)), values),
        Ok(None) => (None, Vec::new()),
        Err(e) => return (Err(e), false),
    };
    let ctx = with_secrets.as_ref().or(ctx);
    let empty = Value::Null;
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
    let (result, timed_out) = match task.timeout {
        None => (fut.await, false),
        Some(t) => tokio::select! {
            r = &mut fut => (r, false),
            _ = tokio::time::sleep(t) => {
                token.cancel();
                let _ = fut.await;
                (Err(ActionError::Cancelled), true)
            }
        },
    };
    if masked.is_empty() {
        return (result, timed_out);
    }
    (super::secrets::mask_result(result, &masked), timed_out)
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
        output: None,
        retry_of: None,
        context,
        input,
        created_at: now(),
        started_at: None,
        finished_at: None,
        tasks: wf.tasks.iter().map(|t| (t.name.clone(), TaskResult::pending())).collect(),
    }
}
