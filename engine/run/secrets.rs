//! Secrets: the values `{{secrets.NAME}}` reads, resolved by the process
//! that runs an attempt (so they never travel in a message, a queue row or
//! a Temporal history), and masked (`***`) wherever they would leave it: in
//! the attempt's output and its error.

use super::actions::ActionError;
use crate::plan::{Task, Workflow};
use crate::spec::raw::SecretSource;
use serde_json::{Map, Value};

/// What masks a secret's value.
pub const MASK: &str = "***";

/// Resolved secrets: the values by name (for the template context) and
/// the values to mask, longest first.
pub type Resolved = (Map<String, Value>, Vec<String>);

/// The secrets `task` reads, resolved. `None` when it reads none.
pub fn resolve(wf: &Workflow, task: &Task) -> Result<Option<Resolved>, ActionError> {
    if task.secrets.is_empty() {
        return Ok(None);
    }
    let mut by_name = Map::new();
    let mut values = Vec::new();
    for name in &task.secrets {
        let source = wf.raw.secrets.get(name).ok_or_else(|| ActionError::Permanent(format!("the workflow declares no secret `{name}`")))?;
        let value = match source {
            SecretSource::Env(e) => std::env::var(&e.env)
                .map_err(|_| ActionError::Permanent(format!("secret `{name}`: the environment variable `{}` is not set", e.env)))?,
            SecretSource::File(f) => std::fs::read_to_string(&f.file)
                .map(|s| s.strip_suffix('\n').map(|s| s.strip_suffix('\r').unwrap_or(s)).unwrap_or(&s).to_string())
                .map_err(|e| ActionError::Permanent(format!("secret `{name}`: cannot read `{}`: {e}", f.file)))?,
        };
        if !value.is_empty() {
            values.push(value.clone());
        }
        by_name.insert(name.clone(), Value::String(value));
    }
    // Longest first, so a value that contains another is masked whole.
    values.sort_by_key(|v| std::cmp::Reverse(v.len()));
    Ok(Some((by_name, values)))
}

/// `ctx` with `secrets` added.
pub fn with_secrets(ctx: Option<&Value>, secrets: Map<String, Value>) -> Value {
    let mut ctx = ctx.cloned().unwrap_or_else(|| Value::Object(Map::new()));
    ctx["secrets"] = Value::Object(secrets);
    ctx
}

/// Every occurrence of a value in `s`, masked.
pub fn mask_text(s: &str, values: &[String]) -> String {
    let mut out = s.to_string();
    for v in values {
        if out.contains(v.as_str()) {
            out = out.replace(v.as_str(), MASK);
        }
    }
    out
}

/// Every occurrence of a value in the strings (and keys) of `v`, masked.
pub fn mask_value(v: &mut Value, values: &[String]) {
    match v {
        Value::String(s) if values.iter().any(|x| s.contains(x.as_str())) => *s = mask_text(s, values),
        Value::Array(a) => a.iter_mut().for_each(|x| mask_value(x, values)),
        Value::Object(m) => {
            let masked: Map<String, Value> = std::mem::take(m)
                .into_iter()
                .map(|(k, mut x)| {
                    mask_value(&mut x, values);
                    (mask_text(&k, values), x)
                })
                .collect();
            *m = masked;
        }
        _ => {}
    }
}

/// An attempt's result with every secret value masked.
pub fn mask_result(r: Result<Value, ActionError>, values: &[String]) -> Result<Value, ActionError> {
    match r {
        Ok(mut v) => {
            mask_value(&mut v, values);
            Ok(v)
        }
        Err(ActionError::Failed(e)) => Err(ActionError::Failed(mask_text(&e, values))),
        Err(ActionError::Permanent(e)) => Err(ActionError::Permanent(mask_text(&e, values))),
        Err(ActionError::Skipped(e)) => Err(ActionError::Skipped(mask_text(&e, values))),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn values_are_masked_in_outputs_and_errors() {
        let values = vec!["hunter2-long".to_string(), "hunter2".to_string()];
        let mut v = json!({"a": "token hunter2-long and hunter2", "hunter2": [1, "x hunter2"]});
        mask_value(&mut v, &values);
        assert_eq!(v, json!({"a": "token *** and ***", "***": [1, "x ***"]}));
        let e = mask_result(Err(ActionError::Failed("exit 1: hunter2".into())), &values).unwrap_err();
        assert_eq!(e.to_string(), "exit 1: ***");
    }
}
