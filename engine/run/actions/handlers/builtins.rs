//! The small built-in handlers: `echo`, `sleep` and `fail`.
//!
//! They exist so that workflows (and the engine's own tests) can pass values
//! along, take time and fail on demand without external programs.

use crate::run::actions::{ActionError, HandlerCtx};
use serde_json::{Value, json};
use std::time::Duration;

/// `echo`: its `with` value, unchanged.
pub async fn echo(with: Value, _ctx: HandlerCtx) -> Result<Value, ActionError> {
    Ok(with)
}

/// `sleep`: `{duration: "200ms"}` or `{seconds: 0.2}`; returns `{slept_ms}`.
pub async fn sleep(with: Value, ctx: HandlerCtx) -> Result<Value, ActionError> {
    let d = sleep_duration(&with)?;
    tokio::select! {
        biased;
        _ = ctx.cancel.cancelled() => Err(ActionError::Cancelled),
        _ = tokio::time::sleep(d) => Ok(json!({"slept_ms": u64::try_from(d.as_millis()).unwrap_or(u64::MAX)})),
    }
}

/// The schema of `sleep`'s `with`: exactly one of `duration` and `seconds`.
pub fn sleep_with() -> Value {
    json!({
        "type": "object",
        "properties": {
            "duration": {"type": "string", "description": "how long, e.g. \"200ms\""},
            "seconds": {"type": "number", "minimum": 0, "description": "how long, in seconds"}
        },
        "additionalProperties": false,
        "oneOf": [{"required": ["duration"]}, {"required": ["seconds"]}]
    })
}

/// The schema of `sleep`'s output.
pub fn sleep_output() -> Value {
    json!({
        "type": "object",
        "properties": {"slept_ms": {"type": "integer", "minimum": 0}},
        "required": ["slept_ms"],
        "additionalProperties": false
    })
}

/// The schema of `fail`'s `with`.
pub fn fail_with() -> Value {
    json!({
        "type": "object",
        "properties": {
            "message": {"description": "the error (text, or any value shown as JSON)"},
            "retryable": {"type": ["boolean", "null"], "description": "false: fail for good, without retries"}
        },
        "additionalProperties": false
    })
}

fn sleep_duration(with: &Value) -> Result<Duration, ActionError> {
    let bad = |why: String| ActionError::Permanent(format!("sleep: {why}"));
    match (with.get("duration"), with.get("seconds")) {
        (Some(Value::String(s)), None) => crate::plan::parse_duration(s).map_err(bad),
        (None, Some(Value::Number(n))) => {
            let secs = n.as_f64().unwrap_or(f64::NAN);
            Duration::try_from_secs_f64(secs).map_err(|_| bad(format!("`seconds` must be a non-negative number, not {n}")))
        }
        (Some(_), Some(_)) => Err(bad("give `duration` or `seconds`, not both".into())),
        (Some(other), None) => Err(bad(format!("`duration` must be a string like \"200ms\", not {other}"))),
        (None, Some(other)) => Err(bad(format!("`seconds` must be a number, not {other}"))),
        (None, None) => Err(bad("needs `with: {duration: \"200ms\"}` or `with: {seconds: 0.2}`".into())),
    }
}

/// `fail`: `{message?, retryable?}`; fails with that message, retryable
/// unless `retryable: false`.
pub async fn fail(with: Value, _ctx: HandlerCtx) -> Result<Value, ActionError> {
    let message = match with.get("message") {
        None | Some(Value::Null) => "failed on purpose".to_string(),
        Some(Value::String(s)) => s.clone(),
        Some(other) => other.to_string(),
    };
    match with.get("retryable") {
        None | Some(Value::Null) | Some(Value::Bool(true)) => Err(ActionError::Failed(message)),
        Some(Value::Bool(false)) => Err(ActionError::Permanent(message)),
        Some(other) => Err(ActionError::Permanent(format!("fail: `retryable` must be true or false, not {other}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sleep_takes_a_duration_or_seconds() {
        assert_eq!(sleep_duration(&json!({"duration": "200ms"})).unwrap(), Duration::from_millis(200));
        assert_eq!(sleep_duration(&json!({"seconds": 0.25})).unwrap(), Duration::from_millis(250));
        assert!(matches!(sleep_duration(&json!({"seconds": -1})), Err(ActionError::Permanent(_))));
        assert!(matches!(sleep_duration(&json!({"duration": "soon"})), Err(ActionError::Permanent(_))));
        assert!(matches!(sleep_duration(&json!({})), Err(ActionError::Permanent(_))));
    }
}
