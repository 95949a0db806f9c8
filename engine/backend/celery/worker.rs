//! `taskweave worker --backend NAME` for a Celery backend: a Celery worker
//! in all the ways Redis can see. It BRPOPs its queues' priority lists,
//! records each message in `unacked`/`unacked_index` and refreshes its score
//! while the task runs, acks when done, hands messages back when it stops,
//! and restores the messages of workers that died (visibility timeout).
//!
//! Messages it serves: `taskweave.run.task` (one task of a run), and for
//! Python callers `taskweave.<handler>` and `taskweave.workflow.<name>`.
//! Anything else, and anything it cannot decode, gets a FAILURE result that
//! says why; a message without even a delivery tag is logged and dropped.

use super::apply;
use super::broker::Broker;
use super::runs::{self, Claim, Progress, StopReason};
use super::wire::{self, Incoming, Outgoing, PyError, TaskOutcome};
use super::{CeleryBackend, RUN_TASK, WORKFLOW_PREFIX};
use crate::backend::{BackendError, RunRequest, WorkerOptions};
use crate::plan::{Action, Phase, Task, Workflow};
use crate::run::actions::{self, ActionError, Attempt, HandlerCtx};
use crate::run::executor::{failed_tasks, handler_fields};
use crate::run::sched::{Decision, Outcome};
use crate::run::{RunStatus, TaskResult, TaskStatus};
use futures::stream::{FuturesUnordered, StreamExt};
use futures::{FutureExt, future::BoxFuture};
use serde_json::{Map, Value, json};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;

/// What to do with a message once its work is over.
enum Settle {
    Ack,
    /// Put it back at the head of its queue (the worker is stopping).
    HandBack,
    /// Leave it in `unacked` (Redis failed us): it is restored after the
    /// visibility timeout.
    Leave,
}

/// Runs with attempts in this worker: who to tell when a run is stopped.
#[derive(Default)]
struct Stops {
    next: std::sync::atomic::AtomicU64,
    map: Mutex<HashMap<String, Vec<StopEntry>>>,
}

type StopEntry = (u64, CancellationToken, Arc<Mutex<Option<StopReason>>>);

impl Stops {
    /// An entry no stop reaches.
    fn detached() -> StopEntry {
        (u64::MAX, CancellationToken::new(), Arc::new(Mutex::new(None)))
    }

    fn register(&self, run: &str) -> StopEntry {
        let id = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let entry = (id, CancellationToken::new(), Arc::new(Mutex::new(None)));
        self.map.lock().unwrap_or_else(|e| e.into_inner()).entry(run.to_string()).or_default().push(entry.clone());
        entry
    }

    fn unregister(&self, run: &str, id: u64) {
        let mut m = self.map.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(v) = m.get_mut(run) {
            v.retain(|(i, _, _)| *i != id);
            if v.is_empty() {
                m.remove(run);
            }
        }
    }

    fn fire(&self, run: &str, reason: StopReason) {
        if let Some(v) = self.map.lock().unwrap_or_else(|e| e.into_inner()).get(run) {
            for (_, t, r) in v {
                *r.lock().unwrap_or_else(|e| e.into_inner()) = Some(reason);
                t.cancel();
            }
        }
    }

    fn runs(&self) -> Vec<String> {
        self.map.lock().unwrap_or_else(|e| e.into_inner()).keys().cloned().collect()
    }
}

pub(super) async fn work(b: &CeleryBackend, opts: WorkerOptions, stop: CancellationToken) -> Result<(), BackendError> {
    let queues = if opts.queues.is_empty() { vec![b.opts.queue.clone()] } else { opts.queues.clone() };
    // Priority-major over the queues: every queue's step 0 before any step 3.
    let mut keys = Vec::new();
    for step in 0..4 {
        for q in &queues {
            keys.push(b.broker.key(&wire::priority_keys(q)[step]));
        }
    }
    // The BRPOP connection, (re)made by the pop itself when Redis was away.
    let mut consumer: Option<redis::aio::MultiplexedConnection> = None;
    let capacity = opts.concurrency.max(1);
    let handback = CancellationToken::new();
    let stops = Stops::default();
    let inflight: Mutex<HashMap<String, ()>> = Mutex::new(HashMap::new());
    let mut running: FuturesUnordered<BoxFuture<'_, ()>> = FuturesUnordered::new();
    let mut events = b.broker.watch(b.runs.events());
    let beat = (b.broker.visibility / 4).clamp(Duration::from_millis(200), Duration::from_secs(60));
    let mut refresh = tokio::time::interval(beat);
    refresh.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut restore = tokio::time::interval((b.broker.visibility / 2).clamp(Duration::from_millis(500), Duration::from_secs(60)));
    restore.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut poll_stops = tokio::time::interval(Duration::from_secs(1));
    // Listed by `taskweave workers` while it beats (see `fleet`).
    let me = super::fleet::worker_id();
    let mut record = super::fleet::Record::new(queues.clone(), capacity);
    if let Err(e) = super::fleet::beat(&b.broker, &me, &record, Some(b.opts.worker_lease)).await {
        tracing::warn!("could not record this worker in Redis: {e}");
    }
    let mut heartbeat = tokio::time::interval(b.opts.worker_lease / 3);
    heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The BRPOP in progress is never dropped mid-flight: a popped message
    // would be lost. It lives across loop turns until it answers.
    type Popped = (redis::RedisResult<Option<String>>, Option<redis::aio::MultiplexedConnection>);
    let mut pop: Option<BoxFuture<'static, Popped>> = None;
    let mut backoff = Duration::from_millis(100);
    tracing::info!(queues = ?queues, "celery worker started on {}", b.broker.url);
    loop {
        if pop.is_none() && !stop.is_cancelled() && running.len() < capacity {
            let (broker, keys, c, pause) = (b.broker.clone(), keys.clone(), consumer.take(), backoff);
            pop = Some(Box::pin(async move {
                let mut c = match c {
                    Some(c) => c,
                    None => match broker.consumer().await {
                        Ok(c) => c,
                        Err(e) => {
                            tokio::time::sleep(pause).await;
                            return (Err(e), None);
                        }
                    },
                };
                match broker.pop(&mut c, &keys, Duration::from_secs(1)).await {
                    Ok(r) => (Ok(r), Some(c)),
                    Err(e) => {
                        tokio::time::sleep(pause).await;
                        (Err(e), None)
                    }
                }
            }));
        }
        if stop.is_cancelled() && pop.is_none() {
            break;
        }
        tokio::select! {
            got = async { pop.as_mut().expect("guarded").await }, if pop.is_some() => {
                pop = None;
                let (r, c) = got;
                consumer = c;
                match r {
                    Ok(Some(raw)) => {
                        backoff = Duration::from_millis(100);
                        match wire::decode(&raw) {
                            Ok(m) => {
                                if let Err(e) = b.broker.track(&m).await {
                                    tracing::error!("could not record message {} as in flight: {e}", m.delivery_tag);
                                }
                                inflight.lock().unwrap_or_else(|e| e.into_inner()).insert(m.delivery_tag.clone(), ());
                                let (hb, stops, inflight) = (&handback, &stops, &inflight);
                                running.push(Box::pin(async move {
                                    let tag = m.delivery_tag.clone();
                                    let settle = handle(b, &m, hb, stops).await;
                                    let r = match settle {
                                        Settle::Ack => b.broker.ack(&tag).await,
                                        Settle::HandBack => b.broker.hand_back(&m).await,
                                        Settle::Leave => Ok(()),
                                    };
                                    if let Err(e) = r {
                                        tracing::error!("could not settle message {tag}: {e}");
                                    }
                                    inflight.lock().unwrap_or_else(|e| e.into_inner()).remove(&tag);
                                }));
                            }
                            Err(e) => {
                                let shown: String = raw.chars().take(300).collect();
                                tracing::error!("dropped a queue element that is no Celery message ({e}): {shown}");
                            }
                        }
                    }
                    Ok(None) => {}
                    Err(e) => {
                        tracing::warn!("broker {}: {e}; reconnecting", b.broker.url);
                        backoff = (backoff * 2).min(Duration::from_secs(5));
                    }
                }
            }
            Some(()) = running.next(), if !running.is_empty() => {}
            m = events.recv() => {
                if let Some(rest) = m.as_deref().and_then(|m| m.strip_prefix("stop:"))
                    && let Some((reason, run)) = rest.split_once(':')
                    && let Some(reason) = StopReason::parse(reason)
                {
                    stops.fire(run, reason);
                }
            }
            _ = refresh.tick() => {
                let tags: Vec<String> = inflight.lock().unwrap_or_else(|e| e.into_inner()).keys().cloned().collect();
                if let Err(e) = b.broker.refresh(&tags).await {
                    tracing::warn!("could not refresh in-flight messages: {e}");
                }
            }
            _ = restore.tick() => {
                match b.broker.restore_stale().await {
                    Ok(0) => {}
                    Ok(n) => tracing::warn!("restored {n} message(s) of workers that stopped answering"),
                    Err(e) => tracing::warn!("could not restore stale messages: {e}"),
                }
            }
            _ = poll_stops.tick() => {
                for run in stops.runs() {
                    if let Ok(v) = b.runs.get(&run, &["stop".into()]).await
                        && let Some(Some(s)) = v.first()
                        && let Some(reason) = StopReason::parse(s)
                    {
                        stops.fire(&run, reason);
                    }
                }
            }
            _ = heartbeat.tick() => {
                record.running = u32::try_from(inflight.lock().unwrap_or_else(|e| e.into_inner()).len()).unwrap_or(u32::MAX);
                if let Err(e) = super::fleet::beat(&b.broker, &me, &record, None).await {
                    tracing::debug!("could not renew this worker's record: {e}");
                }
            }
            _ = stop.cancelled(), if !handback.is_cancelled() => {
                handback.cancel();
            }
        }
    }
    // Hand back what is still running, then wait for it to settle.
    handback.cancel();
    while running.next().await.is_some() {}
    if let Err(e) = super::fleet::leave(&b.broker, &me).await {
        tracing::warn!("could not remove this worker's record: {e}");
    }
    Ok(())
}

fn failure(exc_type: &str, module: &str, msg: impl Into<String>) -> TaskOutcome {
    TaskOutcome::Failure(PyError::new(exc_type, module, msg))
}

/// Write the result of a message served for a Celery client (unless it
/// asked for none with `ignore_result`).
async fn answer(broker: &Broker, m: &Incoming, id: &str, outcome: &TaskOutcome) -> Settle {
    if m.ignore_result {
        return Settle::Ack;
    }
    let value = wire::encode_result(id, outcome, OffsetDateTime::now_utc());
    match broker.store_result(id, &value).await {
        Ok(()) => Settle::Ack,
        Err(e) => {
            tracing::error!(task_id = id, "could not store a result: {e}");
            Settle::Leave
        }
    }
}

async fn handle(b: &CeleryBackend, m: &Incoming, handback: &CancellationToken, stops: &Stops) -> Settle {
    let Some(id) = m.id.clone() else {
        tracing::error!("message {} has no `headers.id`: no result can be written for it; dropped", m.delivery_tag);
        return Settle::Ack;
    };
    let task = m.task.clone().unwrap_or_default();
    let now = OffsetDateTime::now_utc();
    if let Some(expires) = m.expires
        && expires < now
    {
        let e = PyError::new("TaskRevokedError", "celery.exceptions", "expired");
        return answer(&b.broker, m, &id, &TaskOutcome::Revoked(e)).await;
    }
    // A task with an ETA waits for it here, kept in flight (and refreshed).
    if let Some(eta) = m.eta
        && eta > now
    {
        let wait = Duration::try_from(eta - now).unwrap_or_default();
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = handback.cancelled() => return Settle::HandBack,
        }
    }
    let (args, kwargs) = match &m.body {
        Ok(b) => b.clone(),
        Err(why) => {
            tracing::error!(task_id = id, "cannot decode `{task}`: {why}");
            return answer(&b.broker, m, &id, &failure("InvalidTaskMessage", "taskweave", format!("`{task}`: {why}"))).await;
        }
    };
    if task == RUN_TASK {
        let (Some(run), Some(name)) = (kwargs.get("run_id").and_then(Value::as_str), kwargs.get("task").and_then(Value::as_str)) else {
            return answer(&b.broker, m, &id, &failure("TypeError", "builtins", format!("{RUN_TASK} needs kwargs `run_id` and `task`")))
                .await;
        };
        return run_task(b, run, name, handback, stops).await;
    }
    if let Some(name) = task.strip_prefix(WORKFLOW_PREFIX) {
        return serve_workflow(b, m, &id, name, args, kwargs).await;
    }
    if let Some(name) = task.strip_prefix("taskweave.") {
        return serve_handler(b, m, &id, name, args, kwargs, handback).await;
    }
    let msg = format!(
        "task `{task}` is not served by taskweave workers (queue `{}`); they serve `taskweave.<handler>` and `taskweave.workflow.<name>`",
        m.routing_key
    );
    tracing::error!(task_id = id, "{msg}");
    answer(&b.broker, m, &id, &failure("NotRegistered", "celery.exceptions", msg)).await
}

/// The one JSON value a handler or workflow takes from Celery's args and kwargs.
fn single_argument(task: &str, args: Vec<Value>, kwargs: Map<String, Value>) -> Result<Value, String> {
    match (args.len(), kwargs.is_empty()) {
        (0, _) => Ok(Value::Object(kwargs)),
        (1, true) if args[0].is_object() => Ok(args.into_iter().next().unwrap_or_default()),
        _ => Err(format!("`{task}` takes keyword arguments only (or one object as its only positional argument)")),
    }
}

async fn serve_handler(
    b: &CeleryBackend,
    m: &Incoming,
    id: &str,
    name: &str,
    args: Vec<Value>,
    kwargs: Map<String, Value>,
    handback: &CancellationToken,
) -> Settle {
    let full = format!("taskweave.{name}");
    let Some(h) = b.executor.handlers.get(name).cloned() else {
        let mut known: Vec<&str> = b.executor.handlers.names().collect();
        known.sort();
        let msg = format!("no handler `{name}` (for task `{full}`); this worker serves: {}", known.join(", "));
        return answer(&b.broker, m, id, &failure("NotRegistered", "celery.exceptions", msg)).await;
    };
    let with = match single_argument(&full, args, kwargs) {
        Ok(w) => w,
        Err(msg) => return answer(&b.broker, m, id, &failure("TypeError", "builtins", msg)).await,
    };
    let cancel = CancellationToken::new();
    let hard = m.timelimit.0.or(m.timelimit.1).filter(|s| *s > 0.0).map(Duration::from_secs_f64);
    let ctx = HandlerCtx { run_id: id.to_string(), task: full.clone(), attempt: m.retries + 1, cancel: cancel.clone(), timeout: hard };
    let fut = std::panic::AssertUnwindSafe(h.call(with, ctx)).catch_unwind();
    tokio::pin!(fut);
    let limit = async move {
        match hard {
            Some(d) => tokio::time::sleep(d).await,
            None => std::future::pending().await,
        }
    };
    let outcome = tokio::select! {
        r = &mut fut => match r {
            Ok(Ok(v)) => TaskOutcome::Success(v),
            Ok(Err(e)) => failure("TaskweaveError", "taskweave", e.to_string()),
            Err(_) => failure("TaskweaveError", "taskweave", format!("handler `{name}` panicked")),
        },
        _ = limit => {
            cancel.cancel();
            let _ = fut.await;
            failure("TimeLimitExceeded", "billiard.exceptions", format!("{}", hard.map(|d| d.as_secs_f64()).unwrap_or_default()))
        }
        _ = handback.cancelled() => {
            cancel.cancel();
            let _ = fut.await;
            return Settle::HandBack;
        }
    };
    answer(&b.broker, m, id, &outcome).await
}

async fn serve_workflow(b: &CeleryBackend, m: &Incoming, id: &str, name: &str, args: Vec<Value>, kwargs: Map<String, Value>) -> Settle {
    let Some(wf) = b.registry.get(name) else {
        let mut known = b.registry.names();
        known.sort();
        let msg = format!(
            "no workflow `{name}` is loaded by this worker; loaded: {}",
            if known.is_empty() { "none".into() } else { known.join(", ") }
        );
        return answer(&b.broker, m, id, &failure("NotRegistered", "celery.exceptions", msg)).await;
    };
    let input = match single_argument(&format!("{WORKFLOW_PREFIX}{name}"), args, kwargs) {
        Ok(i) => i,
        Err(msg) => return answer(&b.broker, m, id, &failure("TypeError", "builtins", msg)).await,
    };
    let input = match wf.prepare_input(input) {
        Ok(i) => i,
        Err(e) => return answer(&b.broker, m, id, &failure("ValueError", "builtins", format!("invalid input for `{name}`: {e}"))).await,
    };
    // The run id is the Celery task id: a redelivered message finds its run
    // already started and is only acked.
    let reply = if m.ignore_result { None } else { Some(id) };
    match b.start_run(RunRequest::new(wf, input).with_run_id(id), reply).await {
        Ok(_) => Settle::Ack,
        Err(e) => {
            tracing::error!(task_id = id, "could not start workflow `{name}`: {e}");
            Settle::Leave
        }
    }
}

/// Why an attempt ended other than by its own result.
#[derive(Clone, Copy, PartialEq)]
enum Interrupted {
    No,
    TaskTimeout,
    Run(StopReason),
    HandBack,
}

async fn run_task(b: &CeleryBackend, run: &str, name: &str, handback: &CancellationToken, stops: &Stops) -> Settle {
    let meta = match b.runs.get(run, &["version".into(), "input".into(), "context".into(), "deadline".into(), "queue".into()]).await {
        Ok(m) => m,
        Err(e) => {
            tracing::error!(run_id = run, "could not read the run: {e}");
            return Settle::Leave;
        }
    };
    let field = |i: usize| meta.get(i).cloned().flatten();
    let wf = match b.workflow_of(run, field(0).as_deref()).await {
        Ok(Some(w)) => w,
        Ok(None) => return Settle::Ack,
        Err(e) => {
            tracing::error!(run_id = run, "{e}");
            return if e.is_retryable() { Settle::Leave } else { Settle::Ack };
        }
    };
    let Some(task) = wf.task(name) else {
        tracing::error!(run_id = run, "the run's workflow has no task `{name}`; message dropped");
        return Settle::Ack;
    };
    // Handlers run after the run's stop and past its deadline.
    let handler = task.phase != Phase::Main;
    let claim = match b.runs.claim(run, name, handler).await {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(run_id = run, task = name, "could not claim: {e}");
            return Settle::Leave;
        }
    };
    if matches!(claim, Claim::Done | Claim::Gone) {
        return Settle::Ack;
    }
    let queue = field(4).unwrap_or_else(|| b.run_queue(&wf));
    let (mut result, mut sched) = match claim {
        Claim::Go { previous, sched } => (*previous, sched),
        Claim::Stopped(_) => return end_stopped(b, run, &wf, task, &queue).await,
        Claim::Late { was_running } => {
            if let Err(e) = b.stop_run(run, StopReason::TimedOut, &wf).await {
                tracing::error!(run_id = run, "{e}");
                return Settle::Leave;
            }
            return if was_running { end_stopped(b, run, &wf, task, &queue).await } else { Settle::Ack };
        }
        Claim::Done | Claim::Gone => return Settle::Ack,
    };
    // The core's number for this attempt: tries lost with a worker do not
    // count against `retry.attempts`.
    let Some(mut counted) = sched.as_ref().and_then(|s| apply::attempt_in_progress(&wf, run, s, task.id)) else {
        tracing::error!(
            run_id = run,
            task = name,
            "the run has no scheduling state for this task (started by an older version?); message dropped"
        );
        return Settle::Ack;
    };
    let parse = |s: Option<String>| s.and_then(|s| serde_json::from_str::<Value>(&s).ok()).unwrap_or(Value::Null);
    let (input, context) = (parse(field(1)), parse(field(2)));
    let deadline = field(3).filter(|_| !handler).and_then(|d| d.parse::<i64>().ok()).map(|ms| {
        let left = ms - (OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64;
        tokio::time::Instant::now() + Duration::from_millis(left.max(0) as u64)
    });
    // The outputs of the ancestors the task reads.
    let mut tasks = Map::new();
    if task.templated && !task.reads.is_empty() {
        let names: Vec<String> = task.reads.iter().map(|&r| format!("t:{}", wf.tasks[r].name)).collect();
        match b.runs.get(run, &names).await {
            Ok(v) => {
                for (&r, t) in task.reads.iter().zip(v) {
                    let t = t.and_then(|t| serde_json::from_str::<TaskResult>(&t).ok()).unwrap_or_else(TaskResult::pending);
                    let out = t.output.unwrap_or(Value::Null);
                    tasks.insert(wf.tasks[r].name.clone(), json!({ "output": out, "status": t.status.as_str() }));
                }
            }
            Err(e) => {
                tracing::error!(run_id = run, "could not read parent outputs: {e}");
                return Settle::Leave;
            }
        }
    }
    let mut ctx = json!({
        "input": input,
        "run": {"id": run},
        "workflow": {"name": wf.name, "version": wf.version},
        "context": context,
        "tasks": tasks,
    });

    if handler {
        match handler_run(b, run, &wf).await {
            Ok((status, failed)) => handler_fields(&mut ctx, status, failed),
            Err(e) => {
                tracing::error!(run_id = run, "could not read the run's failed tasks: {e}");
                return Settle::Leave;
            }
        }
    }
    // A handler is not stopped by its run's stop: it gets a token nothing fires.
    let (stop_id, stop_token, stop_reason) = if handler { Stops::detached() } else { stops.register(run) };
    let mut attempt = result.attempts + 1;
    if result.started_at.is_none() {
        result.started_at = Some(OffsetDateTime::now_utc());
    }
    let settle = loop {
        result.status = TaskStatus::Running;
        result.attempts = attempt;
        if let Err(e) = b.runs.update_task(run, name, &result).await {
            tracing::warn!(run_id = run, task = name, "could not record the attempt: {e}");
        }
        ctx["run"]["attempt"] = json!(attempt);
        let (r, why) = one_attempt(b, run, &wf, task, &ctx, attempt, deadline, handback, &stop_token, &stop_reason).await;
        let outcome = match (r, why) {
            (_, Interrupted::HandBack) => break Settle::HandBack,
            (Ok(v), _) => {
                result.output = Some(v);
                result.error = None;
                Outcome::Succeeded
            }
            (Err(_), Interrupted::TaskTimeout) => Outcome::TimedOut,
            (Err(_), Interrupted::Run(_)) => Outcome::Stopped,
            (Err(ActionError::Skipped(reason)), _) => Outcome::Skipped { reason },
            (Err(e), Interrupted::No) => Outcome::Failed { retryable: e.is_retryable(), error: e.to_string() },
        };
        let step = apply::Step::Ended { task: task.id, attempt: Some(counted), outcome };
        let Some(retry) = record(b, run, &wf, step, sched.take(), &result, &queue).await else {
            break Settle::Ack;
        };
        let Ok((next, delay, error)) = retry else { break Settle::Leave };
        // The core retries the task: here, after its delay.
        result.error = Some(error);
        let stopped = tokio::select! {
            _ = tokio::time::sleep(delay) => false,
            _ = stop_token.cancelled() => true,
            _ = handback.cancelled() => break Settle::HandBack,
        };
        if stopped || stop_reason.lock().unwrap_or_else(|e| e.into_inner()).is_some() {
            let step = apply::Step::Ended { task: task.id, attempt: Some(next), outcome: Outcome::NotStarted };
            break match record(b, run, &wf, step, None, &result, &queue).await {
                Some(Err(())) => Settle::Leave,
                _ => Settle::Ack,
            };
        }
        counted = next;
        attempt += 1;
    };
    if !handler {
        stops.unregister(run, stop_id);
    }
    settle
}

/// What a handler reads of its run: how it ends so far (`run.status`) and
/// its failed tasks (`run.failed_tasks`).
async fn handler_run(b: &CeleryBackend, run: &str, wf: &Workflow) -> redis::RedisResult<(RunStatus, Vec<Value>)> {
    let main: Vec<&Task> = wf.tasks.iter().filter(|t| t.phase == Phase::Main).collect();
    let mut fields: Vec<String> = main.iter().map(|t| format!("t:{}", t.name)).collect();
    fields.push("stop".into());
    let got = b.runs.get(run, &fields).await?;
    let results: Vec<Option<TaskResult>> =
        got.iter().take(main.len()).map(|t| t.as_deref().and_then(|t| serde_json::from_str::<TaskResult>(t).ok())).collect();
    let by_id = |id: usize| main.iter().position(|t| t.id == id).and_then(|i| results[i].as_ref());
    let failed = failed_tasks(wf, |id| by_id(id).map_or(TaskStatus::Pending, |r| r.status), |id| by_id(id).and_then(|r| r.error.clone()));
    let status = match got.last().cloned().flatten().as_deref().and_then(StopReason::parse) {
        Some(StopReason::Cancelled) => RunStatus::Cancelled,
        Some(StopReason::TimedOut) => RunStatus::TimedOut,
        None if failed.is_empty() => RunStatus::Succeeded,
        None => RunStatus::Failed,
    };
    Ok((status, failed))
}

/// Record an attempt's end. `None`: the task is done with (or the run is
/// gone); `Some(Ok(..))`: the core retries it (attempt, delay, the error
/// to show meanwhile); `Some(Err(()))`: Redis failed us (logged).
async fn record(
    b: &CeleryBackend,
    run: &str,
    wf: &Workflow,
    step: apply::Step,
    known: Option<runs::Sched>,
    result: &TaskResult,
    queue: &str,
) -> Option<Result<(u32, Duration, String), ()>> {
    let apply::Step::Ended { task, .. } = step else { return None };
    match b.event(run, wf, step, known, Some(result), queue).await {
        Err(e) => {
            tracing::error!(run_id = run, task = wf.tasks[task].name, "could not record the task's end: {e}");
            Some(Err(()))
        }
        Ok(None) => None,
        Ok(Some((p, decisions))) => {
            if matches!(p, Progress::Finished { .. }) {
                b.after(run, &p).await;
            }
            decisions.into_iter().find_map(|d| match d {
                Decision::Retry { task: t, attempt, delay, error } if t == task => Some(Ok((attempt, delay, error))),
                _ => None,
            })
        }
    }
}

/// Record the end of a task whose run was stopped while it ran on a worker
/// that is gone.
async fn end_stopped(b: &CeleryBackend, run: &str, wf: &Workflow, task: &Task, queue: &str) -> Settle {
    let mut r = TaskResult::pending();
    let got = b.runs.get(run, &[format!("t:{}", task.name)]).await.ok().and_then(|v| v.into_iter().next().flatten());
    if let Some(prev) = got.and_then(|t| serde_json::from_str::<TaskResult>(&t).ok()) {
        r = prev;
    }
    let step = apply::Step::Ended { task: task.id, attempt: None, outcome: Outcome::Stopped };
    match record(b, run, wf, step, None, &r, queue).await {
        Some(Err(())) => Settle::Leave,
        _ => Settle::Ack,
    }
}

#[allow(clippy::too_many_arguments)]
async fn one_attempt(
    b: &CeleryBackend,
    run: &str,
    wf: &Arc<Workflow>,
    task: &Task,
    ctx: &Value,
    attempt: u32,
    deadline: Option<tokio::time::Instant>,
    handback: &CancellationToken,
    stop_token: &CancellationToken,
    stop_reason: &Arc<Mutex<Option<StopReason>>>,
) -> (Result<Value, ActionError>, Interrupted) {
    if let Some(reason) = *stop_reason.lock().unwrap_or_else(|e| e.into_inner()) {
        return (Err(ActionError::Cancelled), Interrupted::Run(reason));
    }
    if let Err(e) = crate::run::executor::condition(task, Some(ctx)) {
        return (Err(e), Interrupted::No);
    }
    // Secrets join the context in this worker, and are masked in what leaves it.
    let (with_secrets, masked) = match crate::run::secrets::resolve(wf, task) {
        Ok(Some((secrets, values))) => (Some(crate::run::secrets::with_secrets(Some(ctx), secrets)), values),
        Ok(None) => (None, Vec::new()),
        Err(e) => return (Err(e), Interrupted::No),
    };
    let ctx = with_secrets.as_ref().unwrap_or(ctx);
    // `return` in this block ends the attempt, not the function: what it
    // returns is masked below.
    let (r, why) = async {
        let cancel = CancellationToken::new();
        let fut = async {
            match &task.action {
                Action::Celery { .. } => call_celery(b, wf, task, ctx, cancel.clone()).await,
                _ => {
                    actions::execute(Attempt {
                        workflow: wf,
                        task,
                        ctx,
                        run_id: run,
                        attempt,
                        cancel: cancel.clone(),
                        limits: &b.executor.limits,
                        handlers: &b.executor.handlers,
                    })
                    .await
                }
            }
        };
        // A panicking action fails its attempt, not the worker.
        let fut = std::panic::AssertUnwindSafe(fut).catch_unwind().map(|r| {
            r.unwrap_or_else(|p| {
                let msg =
                    p.downcast_ref::<&str>().map(|s| s.to_string()).or_else(|| p.downcast_ref::<String>().cloned()).unwrap_or_default();
                Err(ActionError::Permanent(format!("the action panicked: {msg}")))
            })
        });
        tokio::pin!(fut);
        let timeout = async {
            match task.timeout {
                Some(t) => tokio::time::sleep(t).await,
                None => std::future::pending().await,
            }
        };
        let run_deadline = async {
            match deadline {
                Some(d) => tokio::time::sleep_until(d).await,
                None => std::future::pending().await,
            }
        };
        let why = tokio::select! {
            r = &mut fut => return (r, Interrupted::No),
            _ = timeout => Interrupted::TaskTimeout,
            _ = stop_token.cancelled() => {
                Interrupted::Run(stop_reason.lock().unwrap_or_else(|e| e.into_inner()).unwrap_or(StopReason::Cancelled))
            }
            _ = run_deadline => {
                *stop_reason.lock().unwrap_or_else(|e| e.into_inner()) = Some(StopReason::TimedOut);
                if let Err(e) = b.stop_run(run, StopReason::TimedOut, wf).await {
                    tracing::error!(run_id = run, "could not stop the run at its deadline: {e}");
                }
                Interrupted::Run(StopReason::TimedOut)
            }
            _ = handback.cancelled() => Interrupted::HandBack,
        };
        cancel.cancel();
        let _ = fut.await;
        (Err(ActionError::Cancelled), why)
    }
    .await;
    if masked.is_empty() {
        return (r, why);
    }
    (crate::run::secrets::mask_result(r, &masked), why)
}

/// Send a `celery:` task to Celery workers and wait for its result.
async fn call_celery(b: &CeleryBackend, wf: &Workflow, task: &Task, ctx: &Value, cancel: CancellationToken) -> Result<Value, ActionError> {
    let Action::Celery { task: name, args, kwargs, queue, priority } = &task.action else {
        return Err(ActionError::Permanent(format!("task `{}` is not a `celery:` task", task.name)));
    };
    let t = wf.templates.capped(b.executor.limits.max_output_bytes);
    let args = match t.render(args, ctx)? {
        Value::Array(a) => a,
        other => return Err(ActionError::Permanent(format!("`celery.args` must render to a list, not {other}"))),
    };
    let kwargs = match t.render(kwargs, ctx)? {
        Value::Object(m) => m,
        other => return Err(ActionError::Permanent(format!("`celery.kwargs` must render to a map, not {other}"))),
    };
    let mut m = Outgoing::new(name.clone(), queue.clone().unwrap_or_else(|| b.opts.celery_queue.clone()));
    m.args = args;
    m.kwargs = kwargs;
    m.priority = priority.unwrap_or(0);
    if let Some(t) = task.timeout {
        // The Python worker's own hard limit, a little after ours, so that
        // nothing runs on there after taskweave gave up on it.
        m.timelimit = (Some((t + b.executor.limits.kill_grace).as_secs_f64().ceil()), None);
    }
    let key = b.broker.key(&wire::result_key(&m.id));
    let mut watch = b.broker.watch(key);
    b.broker.publish(&m).await.map_err(|e| ActionError::Failed(format!("could not send `{name}` to Celery: {e}")))?;
    let settle = |raw: &str| -> Option<Result<Value, ActionError>> {
        match wire::decode_result(raw) {
            Ok(TaskOutcome::Success(v)) => Some(Ok(v)),
            Ok(TaskOutcome::Failure(e)) => Some(Err(ActionError::Failed(e.summary()))),
            Ok(TaskOutcome::Revoked(e)) => Some(Err(ActionError::Failed(format!("{} (the Celery task was revoked)", e.summary())))),
            Ok(TaskOutcome::NotReady(_)) => None,
            Err(e) => Some(Err(ActionError::Failed(format!("`{name}` returned an unreadable result: {e}")))),
        }
    };
    loop {
        // Read the key too: a result stored before the subscription, or
        // published while the pub/sub connection was down, is found here.
        match b.broker.get_result(&m.id).await {
            Ok(Some(raw)) => {
                if let Some(r) = settle(&raw) {
                    return r;
                }
            }
            Ok(None) => {}
            Err(e) => tracing::warn!("could not read the result of {}: {e}", m.id),
        }
        tokio::select! {
            _ = cancel.cancelled() => {
                // Nothing is to run on for a task taskweave gave up on.
                if let Err(e) = b.broker.revoke(&m.id).await {
                    tracing::warn!("could not revoke Celery task {}: {e}", m.id);
                }
                return Err(ActionError::Cancelled);
            }
            got = watch.next(Duration::from_secs(1)) => {
                if let Some(raw) = got && let Some(r) = settle(&raw) {
                    return r;
                }
            }
        }
    }
}
