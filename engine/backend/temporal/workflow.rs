//! The Temporal workflow type `taskweave.dag.v1`: one generic workflow that
//! runs any taskweave DAG. Its input is the pinned definition plus the run's
//! input, so a hot reload never changes an execution in flight.
//!
//! This is workflow code: it must be deterministic. It reads nothing but its
//! input and the results Temporal hands back, and makes its decisions in an
//! order fixed by them (the order in which activity results arrive is part
//! of the history). Any change to the commands it issues for a given history
//! needs `ctx.patched(..)` or a new workflow type (`taskweave.dag.v2`); the
//! replay tests (`tests/temporal_replay.rs`) fail when a change breaks the
//! saved histories.

use super::activities::TaskActivities;
use super::protocol::{
    BAD_DEFINITION, DagInput, DagOutput, OUTPUT_FAILED, PERMANENT, RUN_TIMED_OUT, TASK_FAILED, TIMED_OUT, TaskInput, failure_type,
    root_message,
};
use crate::plan::{Phase, Task, TaskId, Workflow};
use crate::run::executor::{attempt_context, condition_outcome, failed_tasks, handler_fields};
use crate::run::output;
use crate::run::sched::{Core, Decision, Event, Outcome, seed};
use crate::run::state::{RunStatus, TaskStatus};
use futures::future::{FutureExt, LocalBoxFuture};
use serde_json::{Map, Value, json};
use std::time::Duration;
use temporalio_common::RetryPolicy;
use temporalio_common::error::ApplicationFailure;
use temporalio_macros::{workflow, workflow_methods};
use temporalio_sdk::{
    ActivityCancellationType, ActivityExecutionError, ActivityOptions, WorkflowContext, WorkflowResult, WorkflowTermination,
};

/// Extra tries Temporal may make of a task whose worker was lost (its
/// heartbeat or start-to-close timeout fired with no answer). The task's own
/// failures stop at its `retry.attempts`: the activity marks its last
/// allowed failure non-retryable.
pub const CRASH_BUDGET: u32 = 3;

/// Longest start-to-close timeout given to a task without one (Temporal
/// needs one; crashes are found by the heartbeat timeout instead).
const NO_TIMEOUT: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

#[workflow]
#[derive(Default)]
pub struct DagWorkflow;

fn app_failure(type_name: &str, message: String, non_retryable: bool) -> ApplicationFailure {
    let err: Box<dyn std::error::Error + Send + Sync> = message.into();
    ApplicationFailure::builder(err).type_name(type_name.to_string()).non_retryable(non_retryable).build()
}

/// The activity options of a task: its timeout, its retry policy (never
/// Temporal's unlimited default: the task's attempts plus [`CRASH_BUDGET`]
/// tries for lost workers), cancellation that waits for the worker to stop
/// the attempt, and the heartbeat that detects lost workers.
pub fn activity_options(wf: &Workflow, task: &Task, heartbeat: Duration) -> ActivityOptions {
    // The worker enforces the task timeout itself (it stops the process and
    // reports `timed out`, a try of the task); Temporal's start-to-close gets
    // a grace second so it fires only for a worker that cannot answer.
    let start_to_close = match task.timeout {
        Some(t) => t + Duration::from_secs(1),
        None => wf.timeout.unwrap_or(NO_TIMEOUT),
    };
    let retry = &task.retry;
    let initial = retry.delay.max(Duration::from_millis(1));
    let policy = RetryPolicy::builder()
        .initial_interval(initial)
        .backoff_coefficient(retry.backoff.max(1.0))
        .maximum_interval(retry.max_delay.max(initial))
        .maximum_attempts(retry.attempts.max(1) + CRASH_BUDGET)
        .non_retryable_error_types([PERMANENT])
        .build();
    ActivityOptions::with_start_to_close_timeout(start_to_close)
        .activity_id(task.name.clone())
        .heartbeat_timeout(heartbeat)
        .cancellation_type(ActivityCancellationType::WaitCancellationCompleted)
        .retry_policy(policy)
        .summary(task.name.clone())
        .build()
}

type Finished = (TaskId, Result<Value, ActivityExecutionError>);

/// An event the scheduler core refused: a bug, reported as a permanent failure.
fn illegal(e: crate::run::state::IllegalTransition) -> WorkflowTermination {
    WorkflowTermination::failed_application(app_failure(BAD_DEFINITION, format!("scheduler: {e}"), true))
}

#[workflow_methods]
impl DagWorkflow {
    #[run(name = "taskweave.dag.v1")]
    pub async fn run(ctx: &mut WorkflowContext<Self>, input: DagInput) -> WorkflowResult<DagOutput> {
        let raw: crate::spec::raw::RawWorkflow = serde_json::from_value(input.definition.clone())
            .map_err(|e| app_failure(BAD_DEFINITION, format!("the definition does not parse: {e}"), true))?;
        let wf =
            crate::plan::compile(raw).map_err(|e| app_failure(BAD_DEFINITION, format!("the definition does not compile: {e}"), true))?;
        let heartbeat = Duration::from_millis(input.heartbeat_ms.max(100));
        let base_ctx = json!({
            "input": input.input,
            "run": {"id": input.run_id},
            "workflow": {"name": wf.name, "version": wf.version},
            "context": input.context,
        });
        // A retry starts with the tasks it reuses succeeded (none otherwise).
        let (reused, mut outputs) = input.reused(&wf);
        let (mut core, first) = Core::started(&wf, seed(&input.run_id), &reused).map_err(illegal)?;
        // The tasks that failed, in the order they did.
        let mut failed: Vec<(TaskId, String)> = Vec::new();
        let ctx: &WorkflowContext<Self> = ctx;
        let cancelled = ctx.cancellation_token();
        if cancelled.is_cancelled() {
            return Err(WorkflowTermination::cancelled());
        }
        let mut decisions = Vec::new();
        decisions.extend(first);
        let mut told_cancel = false;
        // A workflow with handlers stops its own tasks (a cancel reaches
        // them through this child of the workflow's token; its timeout
        // through its own timer) and runs its handlers unstopped. Without
        // handlers, Temporal stops everything, as before.
        let handlers = wf.has_handlers();
        let stop_tasks = ctx.cancellation_token().child_token();
        let mut deadline: Option<LocalBoxFuture<'_, ()>> = match wf.timeout {
            Some(t) if handlers => Some(ctx.timer(t).map(|_| ()).boxed_local()),
            _ => None,
        };
        let mut deadline_hit = false;
        // A plain vector polled by `select_all`: each activity future keeps
        // the SDK's own waker (combinators with wakers of their own, like
        // `FuturesUnordered`, trip the SDK's nondeterminism detector).
        let mut running: Vec<LocalBoxFuture<'_, Finished>> = Vec::new();
        loop {
            // Tasks whose condition decided them here, without an activity.
            let mut decided: Vec<(TaskId, Outcome)> = Vec::new();
            for decision in decisions.drain(..) {
                match decision {
                    Decision::Start { task: id } => {
                        let task = &wf.tasks[id];
                        let mut tctx = attempt_context(&wf, id, 1, &base_ctx, |r| (outputs[r].clone(), core.task_status(r)));
                        if task.phase != Phase::Main
                            && let Some(c) = tctx.as_mut()
                        {
                            let error = |t: TaskId| failed.iter().find(|(f, _)| *f == t).map(|(_, e)| e.clone());
                            handler_fields(c, core.outcome(&wf), failed_tasks(&wf, |t| core.task_status(t), error));
                        }
                        // Deterministic: the condition reads only the input and
                        // the results already in the history.
                        if let Some(outcome) = condition_outcome(task, tctx.as_ref()) {
                            decided.push((id, outcome));
                            continue;
                        }
                        let task_input =
                            TaskInput { run_id: input.run_id.clone(), version: wf.version.clone(), task: task.name.clone(), ctx: tctx };
                        let mut opts = activity_options(&wf, task, heartbeat);
                        if handlers {
                            opts.cancellation_token = Some(if task.phase == Phase::Main {
                                stop_tasks.clone()
                            } else {
                                temporalio_workflow::WorkflowCancellationToken::new()
                            });
                        }
                        let fut: LocalBoxFuture<'_, Result<Value, ActivityExecutionError>> = match task.action.kind() {
                            "run" => ctx.execute_activity(TaskActivities::run_task, task_input, opts).boxed_local(),
                            "shell" => ctx.execute_activity(TaskActivities::shell_task, task_input, opts).boxed_local(),
                            "http" => ctx.execute_activity(TaskActivities::http_task, task_input, opts).boxed_local(),
                            _ => ctx.execute_activity(TaskActivities::uses_task, task_input, opts).boxed_local(),
                        };
                        running.push(fut.map(move |r| (id, r)).boxed_local());
                    }
                    Decision::Finish { task, status: TaskStatus::Failed | TaskStatus::TimedOut, error } => {
                        failed.push((task, error.unwrap_or_default()));
                    }
                    // Activities are cancelled by Temporal with the workflow;
                    // skips and attempts are derived from the history.
                    _ => {}
                }
            }
            if !decided.is_empty() {
                for (id, outcome) in decided {
                    core.handle(&wf, Event::Ended { task: id, attempt: 1, outcome }, &mut decisions).map_err(illegal)?;
                }
                continue;
            }
            if running.is_empty() {
                break;
            }
            let ((id, result), _, rest) = match deadline.take() {
                None => futures::future::select_all(running).await,
                Some(timer) => match futures::future::select(futures::future::select_all(running), timer).await {
                    futures::future::Either::Left((woke, timer)) => {
                        deadline = Some(timer);
                        woke
                    }
                    futures::future::Either::Right(((), all)) => {
                        // The workflow's timeout: its tasks stop, its handlers run.
                        running = all.into_inner();
                        deadline_hit = true;
                        core.handle(&wf, Event::Deadline, &mut decisions).map_err(illegal)?;
                        if decisions.contains(&Decision::StopAll) {
                            stop_tasks.cancel();
                        }
                        continue;
                    }
                },
            };
            running = rest;
            // A cancel seen now comes before this result, so that nothing
            // new starts after it.
            if cancelled.is_cancelled() && !told_cancel {
                told_cancel = true;
                core.handle(&wf, Event::Cancel, &mut decisions).map_err(illegal)?;
            }
            let outcome = match result {
                Ok(output) => {
                    outputs[id] = Some(output);
                    Outcome::Succeeded
                }
                Err(ActivityExecutionError::Cancelled(_)) if cancelled.is_cancelled() || deadline_hit => Outcome::Stopped,
                // Temporal made the retries its policy allows: this failure is final.
                Err(e) => {
                    let error = e.failure().map(root_message).unwrap_or_else(|| e.to_string());
                    let timed_out = e.failure().and_then(failure_type) == Some(TIMED_OUT);
                    Outcome::GaveUp { status: if timed_out { TaskStatus::TimedOut } else { TaskStatus::Failed }, error }
                }
            };
            core.handle(&wf, Event::Ended { task: id, attempt: 1, outcome }, &mut decisions).map_err(illegal)?;
        }
        if cancelled.is_cancelled() || core.status() == RunStatus::Cancelled {
            return Err(WorkflowTermination::cancelled());
        }
        if core.status() == RunStatus::TimedOut {
            let after = humantime::format_duration(wf.timeout.unwrap_or_default());
            return Err(WorkflowTermination::failed_application(app_failure(
                RUN_TIMED_OUT,
                format!("the run timed out after {after}"),
                true,
            )));
        }
        if let Some((id, message)) = failed.first() {
            let more = failed.len() - 1;
            let tail = if more > 0 { format!(" (and {more} more)") } else { String::new() };
            let msg = format!("task `{}` failed: {message}{tail}", wf.tasks[*id].name);
            return Err(WorkflowTermination::failed_application(app_failure(TASK_FAILED, msg, true)));
        }
        // The run's output is rendered here, deterministically (from the
        // input and the results in the history), only to decide whether the
        // run succeeds: the history reader renders it again for the result.
        let end = output::end(&wf, core.status(), None, &base_ctx, |r| (outputs[r].clone(), core.task_status(r)));
        if end.status != core.status() {
            let msg = end.error.unwrap_or_default();
            return Err(WorkflowTermination::failed_application(app_failure(OUTPUT_FAILED, msg, true)));
        }
        let mut out = Map::new();
        for (t, o) in wf.tasks.iter().zip(outputs) {
            out.insert(t.name.clone(), o.unwrap_or(Value::Null));
        }
        Ok(out)
    }
}
