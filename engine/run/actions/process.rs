//! `run` and `shell` actions: child processes in their own process group.

use super::{ActionError, Attempt};
use serde_json::Value;

pub async fn execute(a: &Attempt<'_>) -> Result<Value, ActionError> {
    Err(ActionError::Permanent(format!("task `{}`: process actions are not available in this build", a.task.name)))
}
