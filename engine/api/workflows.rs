//! `GET /v1/workflows` and `GET /v1/workflows/{name}`: what the registry
//! serves, how each watched file last loaded, and whether each configured
//! folder is there.

use super::AppState;
use super::error::ApiError;
use super::extract::PathParams;
use crate::plan::Workflow;
use axum::Json;
use axum::extract::State;
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::Duration;

fn duration(d: Option<Duration>) -> Value {
    d.map_or(Value::Null, |d| Value::String(humantime::format_duration(d).to_string()))
}

pub async fn list(State(st): State<Arc<AppState>>) -> Json<Value> {
    let reg = st.engine.registry();
    Json(json!({"workflows": reg.list(), "files": reg.status(), "folders": reg.folder_status()}))
}

pub async fn show(State(st): State<Arc<AppState>>, PathParams(name): PathParams<String>) -> Result<Json<Value>, ApiError> {
    let reg = st.engine.registry();
    let Some(wf) = reg.get(&name) else {
        let names = reg.names();
        return Err(ApiError::unknown_workflow(&name, crate::diag::did_you_mean(&name, names.iter().map(String::as_str))));
    };
    let file = reg.list().into_iter().find(|e| e.name == name).and_then(|e| e.file);
    let mut v = describe(&wf);
    v["file"] = json!(file);
    v["files"] = json!(reg.status_of(&name));
    Ok(Json(v))
}

/// A workflow as the API shows it: its compiled shape and the raw definition.
pub fn describe(wf: &Workflow) -> Value {
    let tasks: Vec<Value> = wf
        .tasks
        .iter()
        .map(|t| {
            let mut v = json!({
                "name": t.name,
                "parents": t.parents.iter().map(|&p| wf.tasks[p].name.as_str()).collect::<Vec<_>>(),
                "action": t.action.kind(),
                "timeout": duration(t.timeout),
                "retry": {
                    "attempts": t.retry.attempts,
                    "delay": duration(Some(t.retry.delay)),
                    "backoff": t.retry.backoff,
                    "max_delay": duration(Some(t.retry.max_delay)),
                },
            });
            if let crate::plan::Action::Uses { handler, .. } = &t.action {
                v["handler"] = json!(handler);
            }
            v
        })
        .collect();
    json!({
        "name": wf.name,
        "version": wf.version,
        "file": wf.source.as_ref().map(|p| p.display().to_string()),
        "description": wf.description,
        "timeout": duration(wf.timeout),
        "backend": wf.backend,
        "queue": wf.queue,
        "concurrency": wf.concurrency,
        "input": wf.input_schema,
        "tasks": tasks,
        "definition": serde_json::to_value(&wf.raw).unwrap_or(Value::Null),
    })
}
