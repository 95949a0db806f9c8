//! The activities `taskweave worker` executes: one activity type per action
//! kind (`taskweave.run`, `taskweave.shell`, `taskweave.http`,
//! `taskweave.uses`), each running one attempt of one task with the same
//! action code as every other backend.
//!
//! An activity's input names its task and the definition's version; the
//! definition itself is read once per worker from the execution's first
//! event (where the workflow's input pinned it) and compiled once.

use super::protocol::{DagInput, PERMANENT, TIMED_OUT, TaskInput};
use crate::backend::definitions::Definitions;
use crate::plan::Workflow;
use crate::run::actions::ActionError;
use crate::run::executor::Executor;
use futures::StreamExt;
use serde_json::Value;
use std::sync::Arc;
use std::time::Duration;
use temporalio_client::{Client, WorkflowFetchHistoryOptions};
use temporalio_common::error::ApplicationFailure;
use temporalio_common::protos::temporal::api::history::v1::history_event::Attributes;
use temporalio_macros::activities;
use temporalio_sdk::activities::{ActivityContext, ActivityError};
use tokio_util::sync::CancellationToken;

/// How often a running attempt heartbeats (the SDK throttles what it sends
/// to the server to a fraction of the heartbeat timeout).
const HEARTBEAT_EVERY: Duration = Duration::from_millis(500);

pub struct TaskActivities {
    executor: Executor,
    client: Client,
    /// Compiled definitions by version.
    workflows: Definitions,
}

impl TaskActivities {
    pub fn new(executor: Executor, client: Client) -> TaskActivities {
        TaskActivities { executor, client, workflows: Definitions::new() }
    }

    /// The compiled definition of the run that scheduled this activity.
    async fn workflow(&self, ctx: &ActivityContext, version: &str) -> Result<Arc<Workflow>, String> {
        if let Some(wf) = self.workflows.get(version) {
            return Ok(wf);
        }
        let workflow_id = ctx.info().workflow_id.clone().ok_or("the activity has no workflow")?;
        let input = first_input(&self.client, &workflow_id).await?;
        let wf = crate::plan::compile(
            serde_json::from_value(input.definition).map_err(|e| format!("the definition of run `{workflow_id}` does not parse: {e}"))?,
        )
        .map_err(|e| format!("the definition of run `{workflow_id}` does not compile: {e}"))?;
        if wf.version != version {
            return Err(format!("run `{workflow_id}` pins definition {} but the task asks for {version}", wf.version));
        }
        self.workflows.insert(version, Arc::clone(&wf));
        Ok(wf)
    }

    async fn execute(&self, ctx: ActivityContext, input: TaskInput) -> Result<Value, ActivityError> {
        let wf = self.workflow(&ctx, &input.version).await.map_err(|e| failure(PERMANENT, e, true))?;
        let Some(task) = wf.task(&input.task) else {
            return Err(failure(PERMANENT, format!("the definition has no task `{}`", input.task), true));
        };
        let attempt = ctx.info().attempt.max(1);
        let mut tctx = input.ctx;
        if let Some(c) = tctx.as_mut() {
            c["run"]["attempt"] = Value::from(attempt);
        }
        let token = CancellationToken::new();
        let limits = &self.executor.limits;
        let handlers = &self.executor.handlers;
        let attempt_fut =
            crate::run::executor::run_attempt(&wf, task.id, attempt, tctx.as_ref(), &input.run_id, token.clone(), limits, handlers);
        tokio::pin!(attempt_fut);
        // Heartbeat while the attempt runs; the server's answer carries
        // cancellation. The first one goes out after HEARTBEAT_EVERY, not at
        // once: the SDK sends a first heartbeat straight to the server, a
        // round trip per attempt that a short task does not need.
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + HEARTBEAT_EVERY, HEARTBEAT_EVERY);
        let mut cancelled = false;
        let (result, timed_out) = loop {
            tokio::select! {
                r = &mut attempt_fut => break r,
                _ = ctx.cancelled(), if !cancelled => {
                    cancelled = true;
                    token.cancel();
                }
                _ = tick.tick() => {
                    let _ = ctx.record_heartbeat(()).await;
                }
            }
        };
        // The task's own retries end at its `attempts`; Temporal's policy
        // allows more tries only for attempts whose worker was lost.
        let last = attempt >= task.retry.attempts.max(1);
        match result {
            Ok(v) => Ok(v),
            Err(_) if timed_out => Err(failure(
                TIMED_OUT,
                format!("attempt {attempt} timed out after {}", humantime::format_duration(task.timeout.unwrap_or_default())),
                last,
            )),
            Err(ActionError::Cancelled) if cancelled => Err(ActivityError::cancelled()),
            Err(e @ ActionError::Permanent(_)) => Err(failure(PERMANENT, e.to_string(), true)),
            Err(e) => Err(failure("Failed", e.to_string(), last)),
        }
    }
}

fn failure(type_name: &str, message: String, non_retryable: bool) -> ActivityError {
    let err: Box<dyn std::error::Error + Send + Sync> = message.into();
    ActivityError::application(ApplicationFailure::builder(err).type_name(type_name.to_string()).non_retryable(non_retryable).build())
}

/// The input a run's execution started with (its first history event).
pub async fn first_input(client: &Client, workflow_id: &str) -> Result<DagInput, String> {
    let handle = client.get_workflow_handle::<temporalio_client::UntypedWorkflow>(workflow_id.to_string());
    let mut history = handle.fetch_history(WorkflowFetchHistoryOptions::default());
    let first = history.next().await.ok_or_else(|| format!("run `{workflow_id}` has no history"))?;
    let first = first.map_err(|e| format!("could not read the history of run `{workflow_id}`: {e}"))?;
    match first.attributes {
        Some(Attributes::WorkflowExecutionStartedEventAttributes(a)) => {
            let payload = a.input.and_then(|p| p.payloads.into_iter().next()).ok_or("the run has no input")?;
            serde_json::from_slice(&payload.data).map_err(|e| format!("the input of run `{workflow_id}` does not parse: {e}"))
        }
        _ => Err(format!("the history of run `{workflow_id}` does not start with its start event")),
    }
}

#[activities]
impl TaskActivities {
    #[activity(name = "taskweave.run")]
    pub async fn run_task(self: Arc<Self>, ctx: ActivityContext, input: TaskInput) -> Result<Value, ActivityError> {
        self.execute(ctx, input).await
    }

    #[activity(name = "taskweave.shell")]
    pub async fn shell_task(self: Arc<Self>, ctx: ActivityContext, input: TaskInput) -> Result<Value, ActivityError> {
        self.execute(ctx, input).await
    }

    #[activity(name = "taskweave.http")]
    pub async fn http_task(self: Arc<Self>, ctx: ActivityContext, input: TaskInput) -> Result<Value, ActivityError> {
        self.execute(ctx, input).await
    }

    #[activity(name = "taskweave.uses")]
    pub async fn uses_task(self: Arc<Self>, ctx: ActivityContext, input: TaskInput) -> Result<Value, ActivityError> {
        self.execute(ctx, input).await
    }
}
