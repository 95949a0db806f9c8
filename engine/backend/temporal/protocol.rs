//! What the driver, the workflow and the activities exchange: the run's
//! input, each task's activity input, the failure types, and how a
//! failure's message is read. Shared by all three, so none of them imports
//! another for it.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// The workflow type's name in Temporal.
pub const WORKFLOW_TYPE: &str = "taskweave.dag.v1";

/// Failure type of an attempt that a retry cannot fix.
pub const PERMANENT: &str = "Permanent";
/// Failure type of an attempt stopped by the task's timeout on the worker.
pub const TIMED_OUT: &str = "TimedOut";
/// Failure type of a run that ended with a failed task.
pub const TASK_FAILED: &str = "TaskFailed";
/// The failure type of a run whose own timer (a workflow with handlers)
/// timed it out: its result reads as `timed_out`.
pub const RUN_TIMED_OUT: &str = "RunTimedOut";
/// Failure type of a run whose tasks all ended well but whose `output:`
/// cannot be rendered.
pub const OUTPUT_FAILED: &str = "OutputFailed";
/// Failure type of a definition the workflow cannot compile.
pub const BAD_DEFINITION: &str = "BadDefinition";

/// What a run starts with. It travels in the execution's first event, which
/// is also where workers read the definition from.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DagInput {
    pub run_id: String,
    /// The definition (`RawWorkflow` as JSON), pinned at submission.
    pub definition: Value,
    pub input: Value,
    #[serde(default)]
    pub context: Value,
    pub entity_id: String,
    /// The routing decision, when a flag chose this backend.
    #[serde(default)]
    pub routing: Option<Value>,
    /// Submission time, RFC 3339.
    pub created_at: String,
    /// Activity heartbeat timeout in milliseconds: how soon a lost worker's
    /// task is tried again.
    pub heartbeat_ms: u64,
    /// A retry of another run: the tasks it reuses, with their outputs.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub reused: std::collections::BTreeMap<String, Value>,
    /// The run this one retries.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_of: Option<String>,
}

impl DagInput {
    /// The ids of the tasks a retry reuses, and the outputs by task id.
    pub fn reused(&self, wf: &crate::plan::Workflow) -> (Vec<usize>, Vec<Option<Value>>) {
        let mut outputs = vec![None; wf.tasks.len()];
        let mut ids = Vec::new();
        for (name, output) in &self.reused {
            if let Some(t) = wf.task(name) {
                outputs[t.id] = Some(output.clone());
                ids.push(t.id);
            }
        }
        ids.sort_unstable();
        (ids, outputs)
    }
}

/// One task's activity input.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TaskInput {
    pub run_id: String,
    /// `sha256:...` of the definition; workers compile each one once.
    pub version: String,
    pub task: String,
    /// The template context (input, ancestors' outputs...), when the task has templates.
    pub ctx: Option<Value>,
}

/// The result of a run that succeeded: every task's output.
pub type DagOutput = Map<String, Value>;

/// The message of the innermost cause: an activity failure wraps the
/// attempt's own failure.
/// The application failure type of a failure or of one of its causes.
pub fn failure_type(f: &temporalio_common::protos::temporal::api::failure::v1::Failure) -> Option<&str> {
    use temporalio_common::protos::temporal::api::failure::v1::failure::FailureInfo;
    let mut f = f;
    loop {
        if let Some(FailureInfo::ApplicationFailureInfo(a)) = &f.failure_info {
            return Some(a.r#type.as_str());
        }
        f = f.cause.as_deref()?;
    }
}

pub fn root_message(f: &temporalio_common::protos::temporal::api::failure::v1::Failure) -> String {
    let mut f = f;
    while let Some(c) = f.cause.as_deref() {
        f = c;
    }
    f.message.clone()
}
