//! The result of a run, as the CLI, the API and the store show it.

use super::state::{RunStatus, TaskStatus};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;
use time::OffsetDateTime;

/// How a flag routed a run to its backend: decided once, when the run was
/// created, and never changed after.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Routing {
    pub flag: String,
    /// The variant key (variant flags), `None` when the flag gave none.
    pub variant: Option<String>,
    /// Flipt's reason (`MATCH`, `DEFAULT`, `UNKNOWN`, `FLAG_DISABLED`), or
    /// `ERROR` when the flag could not be evaluated.
    pub reason: String,
    /// The backend the run went to.
    #[serde(default)]
    pub backend: String,
    /// Boolean flags: the value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    /// The segments that matched.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub segment_keys: Vec<String>,
    /// Why the flag could not be evaluated (the rule's default backend was used).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The chosen backend refused the run before accepting it, so it went to the rule's default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fallback: Option<Fallback>,
}

/// A refusal that sent a routed run to the rule's default backend.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Fallback {
    /// The backend the flag chose, which refused.
    pub from: String,
    /// What it said.
    pub error: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskResult {
    pub status: TaskStatus,
    pub output: Option<Value>,
    pub attempts: u32,
    pub error: Option<String>,
    pub skip_reason: Option<String>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub started_at: Option<OffsetDateTime>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub finished_at: Option<OffsetDateTime>,
}

impl TaskResult {
    pub fn pending() -> Self {
        TaskResult {
            status: TaskStatus::Pending,
            output: None,
            attempts: 0,
            error: None,
            skip_reason: None,
            started_at: None,
            finished_at: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunResult {
    pub run_id: String,
    pub workflow: String,
    pub version: String,
    pub status: RunStatus,
    pub backend: String,
    pub routing: Option<Routing>,
    /// The run's error, when it ended without a task to blame (timeout, refusal).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The workflow's `output:`, rendered when the run succeeded (absent
    /// otherwise, and for a workflow that declares none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<Value>,
    /// The run this one retries (`taskweave runs retry`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_of: Option<String>,
    pub entity_id: String,
    #[serde(default)]
    pub context: Value,
    #[serde(default)]
    pub input: Value,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339::option")]
    pub started_at: Option<OffsetDateTime>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub finished_at: Option<OffsetDateTime>,
    /// Per task, keyed by task name, in the workflow's task order when serialised by the engine.
    pub tasks: BTreeMap<String, TaskResult>,
}

impl RunResult {
    pub fn is_done(&self) -> bool {
        self.status.is_terminal()
    }

    /// About how many bytes of memory the result holds (its strings and
    /// values, plus a fixed cost per entry); what bounds an in-memory cache
    /// of results.
    pub fn approx_bytes(&self) -> usize {
        let strings = [&self.run_id, &self.workflow, &self.version, &self.backend, &self.entity_id].iter().map(|s| s.len()).sum::<usize>()
            + self.error.as_ref().map_or(0, String::len);
        let tasks: usize = self
            .tasks
            .iter()
            .map(|(name, t)| {
                64 + name.len()
                    + t.output.as_ref().map_or(0, approx_value_bytes)
                    + t.error.as_ref().map_or(0, String::len)
                    + t.skip_reason.as_ref().map_or(0, String::len)
            })
            .sum();
        std::mem::size_of::<Self>()
            + strings
            + approx_value_bytes(&self.context)
            + approx_value_bytes(&self.input)
            + self.output.as_ref().map_or(0, approx_value_bytes)
            + tasks
    }
}

/// About how many bytes a JSON value holds in memory: string and key
/// lengths plus a fixed cost per node (serde_json's `Value` is 32 bytes, a
/// map entry about twice that).
pub fn approx_value_bytes(v: &Value) -> usize {
    match v {
        Value::Null | Value::Bool(_) | Value::Number(_) => 32,
        Value::String(s) => 32 + s.len(),
        Value::Array(a) => 32 + a.iter().map(approx_value_bytes).sum::<usize>(),
        Value::Object(m) => 32 + m.iter().map(|(k, v)| 32 + k.len() + approx_value_bytes(v)).sum::<usize>(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn approximate_sizes_follow_the_data() {
        let small = approx_value_bytes(&json!({"a": "x"}));
        let big = approx_value_bytes(&json!({"a": "x".repeat(1_000_000)}));
        assert!(small < 200, "{small}");
        assert!((1_000_000..1_001_000).contains(&big), "{big}");
        assert_eq!(approx_value_bytes(&json!([1, 2, 3])), 32 * 4);
    }
}
