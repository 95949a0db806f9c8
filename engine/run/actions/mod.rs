//! Actions: the work one task attempt does (`run`, `shell`, `http`, `uses`;
//! `celery` needs the Celery backend).
//!
//! An action renders its templates against the task's context, does its
//! work, and returns the task output as JSON. It watches `cancel`: when the
//! scheduler cancels (task timeout, workflow timeout, run cancellation) the
//! action stops its work — a process group gets SIGTERM, then SIGKILL after
//! the grace period — and returns [`ActionError::Cancelled`] promptly.

pub mod egress;
pub mod handlers;
pub(crate) mod http;
mod process;
mod watchdog;

pub use egress::{Egress, HostRule};
pub use handlers::{BuiltinSettings, ExtractTextSettings, Handler, HandlerCtx, Handlers, WithSchemas};

use crate::plan::template::RenderError;
use crate::plan::{Action, Task, Workflow};
use serde_json::Value;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Limits and settings that apply to every action (`[actions]` of
/// `taskweave.toml`).
#[derive(Debug, Clone)]
pub struct Limits {
    /// Captured stdout/stderr per stream, an HTTP response body, and the text
    /// one template renders; more is a task error.
    pub max_output_bytes: usize,
    /// Time between SIGTERM and SIGKILL.
    pub kill_grace: Duration,
    /// Default time limit of an HTTP request with no task timeout.
    pub http_timeout: Duration,
    /// Where `http:` tasks may connect, and how they follow redirects.
    pub egress: Egress,
    /// `run`/`shell` processes get the engine's whole environment (`true`)
    /// rather than a minimal base (`PATH`, `HOME`, `LANG`) plus what the
    /// workflow and task declare (`false`, the default), so the engine's
    /// own credentials never reach a task unasked.
    pub inherit_env: bool,
}

/// The default of [`Limits::max_output_bytes`] (10 MiB).
pub const DEFAULT_MAX_OUTPUT_BYTES: usize = 10 * 1024 * 1024;

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_output_bytes: DEFAULT_MAX_OUTPUT_BYTES,
            kill_grace: Duration::from_secs(2),
            http_timeout: Duration::from_secs(300),
            egress: Egress::default(),
            inherit_env: false,
        }
    }
}

/// Why an attempt did not produce an output.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ActionError {
    /// The attempt failed; retrying may help.
    #[error("{0}")]
    Failed(String),
    /// The attempt failed in a way a retry cannot fix (bad template, unknown handler).
    #[error("{0}")]
    Permanent(String),
    /// The task's `when:` condition is false: the task is skipped, with
    /// this reason.
    #[error("{0}")]
    Skipped(String),
    /// The attempt was stopped because `cancel` fired.
    #[error("cancelled")]
    Cancelled,
}

impl ActionError {
    pub fn is_retryable(&self) -> bool {
        matches!(self, ActionError::Failed(_))
    }
}

impl From<RenderError> for ActionError {
    fn from(e: RenderError) -> Self {
        ActionError::Permanent(e.to_string())
    }
}

/// Everything one attempt needs.
pub struct Attempt<'a> {
    pub workflow: &'a Workflow,
    pub task: &'a Task,
    /// The template context: `input`, `tasks.<ancestor>.output`, `run`, `workflow`, `context`.
    pub ctx: &'a Value,
    pub run_id: &'a str,
    pub attempt: u32,
    pub cancel: CancellationToken,
    pub limits: &'a Limits,
    pub handlers: &'a Handlers,
}

/// Run one attempt of a task's action.
pub async fn execute(a: Attempt<'_>) -> Result<Value, ActionError> {
    if a.cancel.is_cancelled() {
        return Err(ActionError::Cancelled);
    }
    match &a.task.action {
        // Boxed: these futures hold I/O buffers, and an unboxed variant would
        // make every attempt's future (even a no-op `echo`) that large.
        Action::Run { .. } | Action::Shell { .. } => Box::pin(process::execute(&a)).await,
        Action::Http { .. } => Box::pin(http::execute(&a)).await,
        Action::Uses { handler, with } => {
            let args = a.workflow.templates.capped(a.limits.max_output_bytes).render(with, a.ctx)?;
            let h = a.handlers.get(handler).ok_or_else(|| ActionError::Permanent(format!("unknown handler `{handler}`")))?;
            let hctx = HandlerCtx {
                run_id: a.run_id.to_string(),
                task: a.task.name.clone(),
                attempt: a.attempt,
                cancel: a.cancel.clone(),
                timeout: a.task.timeout,
            };
            tokio::select! {
                biased;
                _ = a.cancel.cancelled() => Err(ActionError::Cancelled),
                r = h.call(args, hctx) => r,
            }
        }
        Action::Celery { task, .. } => {
            Err(ActionError::Permanent(format!("task `{}` sends `{task}` to Celery, which needs a Celery backend", a.task.name)))
        }
    }
}
