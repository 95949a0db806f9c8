//! A run's result read off its Temporal execution: the history is the truth
//! (what `temporal workflow show` prints), and for a run still going, the
//! execution's pending activities say which tasks are running and on which
//! attempt. Tasks the execution never reached get their statuses and
//! reasons from the scheduler core, fed the history as the workflow fed it
//! (skipped when a trigger can no longer be met), or from the run's end
//! (cancelled with a cancelled run, skipped by a run timeout).

use super::protocol::{DagInput, RUN_TIMED_OUT, TASK_FAILED, TIMED_OUT, failure_type, root_message};
use crate::plan::Workflow;
use crate::run::executor::{attempt_context, condition_outcome, failed_tasks, handler_fields};
use crate::run::output;
use crate::run::sched::{Core, Decision, Event, Outcome};
use crate::run::state::IllegalTransition;
use crate::run::{RunResult, RunStatus, TaskStatus};
use serde_json::Value;
use std::collections::HashMap;
use temporalio_common::protos::temporal::api::common::v1::Payloads;
use temporalio_common::protos::temporal::api::enums::v1::PendingActivityState;
use temporalio_common::protos::temporal::api::failure::v1::Failure;
use temporalio_common::protos::temporal::api::history::v1::{HistoryEvent, history_event::Attributes};
use temporalio_common::protos::temporal::api::workflow::v1::PendingActivityInfo;
use time::OffsetDateTime;

pub(crate) fn at(t: &Option<prost_wkt_types::Timestamp>) -> Option<OffsetDateTime> {
    let t = t.as_ref()?;
    OffsetDateTime::from_unix_timestamp_nanos(t.seconds as i128 * 1_000_000_000 + t.nanos as i128).ok()
}

fn first_payload(p: &Option<Payloads>) -> Value {
    p.as_ref().and_then(|p| p.payloads.first()).and_then(|p| serde_json::from_slice(&p.data).ok()).unwrap_or(Value::Null)
}

/// The input of the execution: its first event's payload.
pub fn start_input(events: &[HistoryEvent]) -> Option<DagInput> {
    match events.first()?.attributes.as_ref()? {
        Attributes::WorkflowExecutionStartedEventAttributes(a) => serde_json::from_value(first_payload(&a.input)).ok(),
        _ => None,
    }
}

/// Derive the run's result. `pending` is the execution's pending activities
/// (empty for a closed run).
pub fn derive(
    wf: &Workflow,
    input: &DagInput,
    backend: &str,
    events: &[HistoryEvent],
    pending: &[PendingActivityInfo],
) -> Result<RunResult, IllegalTransition> {
    let routing = input.routing.clone().and_then(|r| serde_json::from_value(r).ok());
    let mut r = crate::run::executor::new_result(
        wf,
        input.run_id.clone(),
        backend,
        input.input.clone(),
        Some(input.entity_id.clone()),
        input.context.clone(),
    );
    r.routing = routing;
    let (reused, reused_outputs) = input.reused(wf);
    crate::backend::reuse_into(
        &mut r,
        wf,
        &reused.iter().map(|&id| (id, reused_outputs[id].clone().unwrap_or(Value::Null))).collect::<Vec<_>>(),
        &input.retry_of,
    );
    if let Ok(t) = OffsetDateTime::parse(&input.created_at, &time::format_description::well_known::Rfc3339) {
        r.created_at = t;
    }
    let mut scheduled: HashMap<i64, String> = HashMap::new();
    let mut in_flight: Vec<String> = Vec::new();
    let mut close_failure: Option<Failure> = None;
    // The scheduler core, fed the history as the workflow fed it: the
    // tasks it skips, and why, are the ones the workflow's core skipped.
    let seed = crate::run::sched::seed(&input.run_id);
    let mut core = Core::with_done(wf, seed, &reused);
    let mut decisions = Vec::new();
    let base_ctx = serde_json::json!({
        "input": input.input,
        "run": {"id": input.run_id},
        "workflow": {"name": wf.name, "version": wf.version},
        "context": input.context,
    });
    let mut feed = |r: &mut RunResult, event: Event| -> Result<(), IllegalTransition> {
        // In batches, as the workflow feeds them: the events of one wake-up,
        // then the conditions of the tasks they started (no activity, so
        // nothing in the history), evaluated as the workflow evaluated them.
        let mut batch = vec![event];
        while !batch.is_empty() {
            for event in batch.drain(..) {
                if let Err(e) = core.handle(wf, event, &mut decisions) {
                    tracing::debug!(run_id = %r.run_id, "the history does not follow the scheduler: {e}");
                }
            }
            for d in decisions.drain(..) {
                match d {
                    Decision::Start { task: id } if wf.tasks[id].when.is_some() => {
                        let mut ctx = attempt_context(wf, id, 1, &base_ctx, |p| {
                            (r.tasks.get(&wf.tasks[p].name).and_then(|t| t.output.clone()), core.task_status(p))
                        });
                        if wf.tasks[id].phase != crate::plan::Phase::Main
                            && let Some(c) = ctx.as_mut()
                        {
                            let error = |t: usize| r.tasks.get(&wf.tasks[t].name).and_then(|x| x.error.clone());
                            handler_fields(c, core.outcome(wf), failed_tasks(wf, |t| core.task_status(t), error));
                        }
                        if let Some(outcome) = condition_outcome(&wf.tasks[id], ctx.as_ref()) {
                            batch.push(Event::Ended { task: id, attempt: 1, outcome });
                        }
                    }
                    Decision::Skip { task, status, reason } => {
                        if let Some(t) = r.tasks.get_mut(&wf.tasks[task].name)
                            && !t.status.is_terminal()
                        {
                            task_to(&mut t.status, status)?;
                            t.skip_reason = Some(reason);
                        }
                    }
                    // A condition that could not be evaluated.
                    Decision::Finish { task, status, error } => {
                        if let Some(t) = r.tasks.get_mut(&wf.tasks[task].name)
                            && t.status == TaskStatus::Pending
                        {
                            task_to(&mut t.status, status)?;
                            t.error = error;
                        }
                    }
                    _ => {}
                }
            }
        }
        Ok(())
    };
    let mut deadline_fired = false;
    let ended = |name: &str, outcome: Outcome| wf.task(name).map(|t| Event::Ended { task: t.id, attempt: 1, outcome });
    for e in events {
        let when = at(&e.event_time);
        let Some(a) = &e.attributes else { continue };
        match a {
            Attributes::WorkflowTaskStartedEventAttributes(_) if r.started_at.is_none() => {
                run_to(&mut r.status, RunStatus::Running)?;
                r.started_at = when;
                feed(&mut r, Event::Start)?;
            }
            Attributes::WorkflowExecutionCancelRequestedEventAttributes(_) => feed(&mut r, Event::Cancel)?,
            // The only timer the workflow starts: its own timeout (with handlers).
            Attributes::TimerFiredEventAttributes(_) => {
                deadline_fired = true;
                feed(&mut r, Event::Deadline)?
            }
            Attributes::ActivityTaskScheduledEventAttributes(s) => {
                scheduled.insert(e.event_id, s.activity_id.clone());
                in_flight.push(s.activity_id.clone());
            }
            Attributes::ActivityTaskStartedEventAttributes(s) => {
                if let Some(t) = scheduled.get(&s.scheduled_event_id).and_then(|n| r.tasks.get_mut(n)) {
                    task_to(&mut t.status, TaskStatus::Running)?;
                    t.attempts = s.attempt.max(1) as u32;
                    t.started_at = t.started_at.or(when);
                }
            }
            Attributes::ActivityTaskCompletedEventAttributes(c) => {
                if let Some(name) = scheduled.get(&c.scheduled_event_id) {
                    in_flight.retain(|n| n != name);
                    if let Some(t) = r.tasks.get_mut(name) {
                        task_to(&mut t.status, TaskStatus::Succeeded)?;
                        t.output = Some(first_payload(&c.result));
                        t.attempts = t.attempts.max(1);
                        t.finished_at = when;
                    }
                    if let Some(ev) = ended(name, Outcome::Succeeded) {
                        feed(&mut r, ev)?;
                    }
                }
            }
            Attributes::ActivityTaskFailedEventAttributes(c) => {
                if let Some(name) = scheduled.get(&c.scheduled_event_id) {
                    in_flight.retain(|n| n != name);
                    if let Some(t) = r.tasks.get_mut(name) {
                        let f = c.failure.as_ref();
                        let timed_out = f.and_then(failure_type) == Some(TIMED_OUT);
                        let status = if timed_out { TaskStatus::TimedOut } else { TaskStatus::Failed };
                        task_to(&mut t.status, status)?;
                        let error = f.map(root_message).unwrap_or_else(|| "failed".into());
                        t.error = Some(error.clone());
                        t.attempts = t.attempts.max(1);
                        t.finished_at = when;
                        if let Some(ev) = ended(name, Outcome::GaveUp { status, error }) {
                            feed(&mut r, ev)?;
                        }
                    }
                }
            }
            Attributes::ActivityTaskTimedOutEventAttributes(c) => {
                if let Some(name) = scheduled.get(&c.scheduled_event_id) {
                    in_flight.retain(|n| n != name);
                    if let Some(t) = r.tasks.get_mut(name) {
                        let why = c.failure.as_ref().map(root_message).unwrap_or_default();
                        task_to(&mut t.status, TaskStatus::TimedOut)?;
                        let error = format!("attempt {} timed out ({why})", t.attempts.max(1));
                        t.error = Some(error.clone());
                        t.attempts = t.attempts.max(1);
                        t.finished_at = when;
                        if let Some(ev) = ended(name, Outcome::GaveUp { status: TaskStatus::TimedOut, error }) {
                            feed(&mut r, ev)?;
                        }
                    }
                }
            }
            Attributes::ActivityTaskCanceledEventAttributes(c) => {
                if let Some(name) = scheduled.get(&c.scheduled_event_id) {
                    in_flight.retain(|n| n != name);
                    if let Some(t) = r.tasks.get_mut(name) {
                        // Stopped by the run's own timeout, or by a cancel.
                        let (status, why) = if deadline_fired {
                            (TaskStatus::TimedOut, "stopped: the run timed out")
                        } else {
                            (TaskStatus::Cancelled, "cancelled")
                        };
                        task_to(&mut t.status, status)?;
                        t.error = Some(why.into());
                        t.finished_at = when;
                    }
                    if let Some(ev) = ended(name, Outcome::Stopped) {
                        feed(&mut r, ev)?;
                    }
                }
            }
            Attributes::WorkflowExecutionCompletedEventAttributes(_) => {
                run_to(&mut r.status, RunStatus::Succeeded)?;
                r.finished_at = when;
            }
            Attributes::WorkflowExecutionFailedEventAttributes(f) if f.failure.as_ref().and_then(failure_type) == Some(RUN_TIMED_OUT) => {
                run_to(&mut r.status, RunStatus::TimedOut)?;
                r.finished_at = when;
            }
            Attributes::WorkflowExecutionFailedEventAttributes(f) => {
                run_to(&mut r.status, RunStatus::Failed)?;
                r.finished_at = when;
                close_failure = f.failure.clone();
            }
            Attributes::WorkflowExecutionTimedOutEventAttributes(_) => {
                run_to(&mut r.status, RunStatus::TimedOut)?;
                r.finished_at = when;
            }
            Attributes::WorkflowExecutionCanceledEventAttributes(_) => {
                run_to(&mut r.status, RunStatus::Cancelled)?;
                r.finished_at = when;
            }
            Attributes::WorkflowExecutionTerminatedEventAttributes(t) => {
                run_to(&mut r.status, RunStatus::Cancelled)?;
                r.finished_at = when;
                r.error = Some(format!("the run was terminated in Temporal: {}", t.reason));
            }
            _ => {}
        }
    }
    // Attempts in flight: running, or waiting for their next try.
    for p in pending {
        if let Some(t) = r.tasks.get_mut(&p.activity_id) {
            let started = p.state == PendingActivityState::Started as i32;
            if started || p.attempt > 1 {
                task_to(&mut t.status, TaskStatus::Running)?;
                t.attempts = p.attempt.max(1) as u32;
                t.started_at = t.started_at.or(at(&p.last_started_time));
                if let Some(f) = &p.last_failure {
                    t.error = Some(root_message(f));
                }
            }
        }
    }
    if r.status.is_terminal() {
        finish(wf, &mut r, &in_flight, close_failure.as_ref())?;
    }
    if output::wanted(wf, r.status) {
        // What the workflow rendered before it completed (it renders only to
        // decide the run's end): the same templates over the same results.
        let read = |t: usize| r.tasks.get(&wf.tasks[t].name).map_or((None, TaskStatus::Pending), |x| (x.output.clone(), x.status));
        match output::render(wf, &base_ctx, read) {
            Ok(v) => r.output = v,
            Err(e) => tracing::warn!(run_id = %r.run_id, "the output of a succeeded run does not render from its history: {e}"),
        }
    }
    Ok(r)
}

/// A task's next status, through the transition table. The history may skip
/// a step the scheduler took: an activity scheduled (the core started the
/// task) whose start was never recorded before it timed out or failed
/// passes through `running`.
fn task_to(status: &mut TaskStatus, to: TaskStatus) -> Result<(), IllegalTransition> {
    if *status == TaskStatus::Pending && !status.can_become(to) {
        status.transition(TaskStatus::Running)?;
    }
    status.transition(to)
}

/// The run's next status, through the transition table; a run that closes
/// before its first workflow task started passes through `running`.
fn run_to(status: &mut RunStatus, to: RunStatus) -> Result<(), IllegalTransition> {
    if *status == RunStatus::Queued && !status.can_become(to) {
        status.transition(RunStatus::Running)?;
    }
    status.transition(to)
}

/// Statuses of the tasks a closed execution left unfinished.
fn finish(wf: &Workflow, r: &mut RunResult, in_flight: &[String], close_failure: Option<&Failure>) -> Result<(), IllegalTransition> {
    let timeout = humantime::format_duration(wf.timeout.unwrap_or_default()).to_string();
    match r.status {
        RunStatus::TimedOut => r.error = Some(format!("the run timed out after {timeout}")),
        RunStatus::Cancelled if r.error.is_none() => r.error = Some("the run was cancelled".into()),
        RunStatus::Failed => {
            // A failed task speaks for itself; anything else is the run's own error.
            if let Some(f) = close_failure
                && failure_type(f) != Some(TASK_FAILED)
            {
                r.error = Some(root_message(f));
            }
        }
        _ => {}
    }
    let end = r.status;
    for id in wf.order.iter().copied() {
        let name = &wf.tasks[id].name;
        let status = r.tasks[name].status;
        if status.is_terminal() {
            continue;
        }
        let finished_at = r.finished_at;
        let was_in_flight = in_flight.contains(name) || status == TaskStatus::Running;
        let Some(t) = r.tasks.get_mut(name) else { continue };
        t.finished_at = finished_at;
        if was_in_flight {
            let (status, error) = match end {
                RunStatus::TimedOut => (TaskStatus::TimedOut, "stopped: the run timed out"),
                _ => (TaskStatus::Cancelled, "cancelled"),
            };
            task_to(&mut t.status, status)?;
            t.error = Some(error.into());
            continue;
        }
        // What the core did not skip while the run went on.
        let (status, reason) = match end {
            RunStatus::Cancelled => (TaskStatus::Cancelled, Some("run cancelled".into())),
            RunStatus::TimedOut => (TaskStatus::Skipped, Some(format!("run timed out after {timeout}"))),
            _ => (TaskStatus::Skipped, Some("not reached".into())),
        };
        task_to(&mut t.status, status)?;
        t.skip_reason = reason;
    }
    Ok(())
}
