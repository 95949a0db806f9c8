//! Runs over HTTP: start one (`POST /v1/workflows/{name}/runs`), read its
//! result with an optional long-poll (`GET /v1/runs/{id}?wait=30s`), cancel
//! it, list history.
//!
//! A submission runs on its own task, so a client hanging up mid-request
//! never abandons a run half-recorded: once the engine has accepted it, it
//! goes on whatever happens to the connection.

use super::AppState;
use super::error::{ApiError, ErrorCode};
use super::extract::{JsonBody, PathParams, QueryParams};
use crate::engine::{Engine, RunOptions};
use crate::run::{RunResult, RunStatus};
use crate::store::RunFilter;
use axum::Json;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Map, Value, json};
use std::sync::Arc;
use std::time::Duration;

/// The most runs one `GET /v1/runs` returns.
pub const MAX_LIST_LIMIT: u32 = 1000;

/// The body of `POST /v1/workflows/{name}/runs`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunBody {
    /// The run input, checked against the workflow's input schema.
    #[serde(default)]
    pub input: Option<Value>,
    /// What flags bucket on (default: the run id).
    #[serde(default)]
    pub entity_id: Option<String>,
    /// The caller's context (`user_id`, `organization_id`, ...).
    #[serde(default)]
    pub context: Option<Map<String, Value>>,
    /// A backend name (default: the workflow's, else the configured default).
    #[serde(default)]
    pub backend: Option<String>,
}

/// The header that makes a start idempotent.
pub const IDEMPOTENCY_KEY: &str = "idempotency-key";

pub async fn submit(
    State(st): State<Arc<AppState>>,
    PathParams(name): PathParams<String>,
    headers: axum::http::HeaderMap,
    JsonBody(body): JsonBody<RunBody>,
) -> Result<Response, ApiError> {
    let requested = body.backend.clone();
    let idempotency_key = match headers.get(IDEMPOTENCY_KEY) {
        None => None,
        Some(v) => Some(
            v.to_str()
                .map(str::to_string)
                .map_err(|_| ApiError::new(ErrorCode::InvalidIdempotencyKey, "invalid idempotency key: use visible ASCII characters"))?,
        ),
    };
    let opts = RunOptions {
        input: body.input,
        entity_id: body.entity_id,
        context: body.context.map(Value::Object),
        backend: body.backend,
        run_id: None,
        idempotency_key,
        ..Default::default()
    };
    let engine = st.engine.clone();
    let started = tokio::spawn(async move { engine.start_workflow(&name, opts).await })
        .await
        .map_err(|e| ApiError::new(ErrorCode::Internal, format!("the submission failed: {e}")))??;
    let run_id = started.run_id;
    // The run is accepted: whatever happens next, answer 202 with its id.
    let (backend, routing) = match st.engine.get_result(&run_id, None).await {
        Ok(r) => (Some(r.backend), r.routing),
        Err(e) => {
            tracing::warn!(run_id, "accepted run not readable yet: {e}");
            (requested, None)
        }
    };
    // A repeated start with the same key: the run it started, 200.
    let status = if started.created { StatusCode::ACCEPTED } else { StatusCode::OK };
    let mut resp = (status, Json(json!({"run_id": run_id, "backend": backend, "routing": routing}))).into_response();
    if let Ok(loc) = HeaderValue::from_str(&format!("/v1/runs/{run_id}")) {
        resp.headers_mut().insert(header::LOCATION, loc);
    }
    Ok(resp)
}

#[derive(Debug, Default, Deserialize)]
pub struct ResultQuery {
    pub wait: Option<String>,
}

/// A `wait` parameter: a duration such as `500ms`, `30s`, `1m`.
pub fn parse_wait(s: &str) -> Result<Duration, ApiError> {
    humantime::parse_duration(s.trim()).map_err(|e| {
        ApiError::new(ErrorCode::InvalidWait, format!("`wait` must be a duration such as `30s` or `500ms`, not `{s}` ({e})"))
            .with_details(json!({"parameter": "wait", "value": s}))
    })
}

pub async fn show(
    State(st): State<Arc<AppState>>,
    PathParams(id): PathParams<String>,
    QueryParams(q): QueryParams<ResultQuery>,
) -> Result<Json<Value>, ApiError> {
    let wait = q.wait.as_deref().map(parse_wait).transpose()?.map(|w| w.min(st.max_wait));
    let r = st.engine.get_result(&id, wait.filter(|w| !w.is_zero())).await?;
    Ok(Json(run_json(&st.engine, &r).await))
}

/// The run result as JSON, its tasks in the order of the workflow version the run pinned.
pub async fn run_json(engine: &Engine, r: &RunResult) -> Value {
    let order: Option<Vec<String>> = match engine.workflow(&r.workflow).filter(|w| w.version == r.version) {
        Some(wf) => Some(wf.tasks.iter().map(|t| t.name.clone()).collect()),
        None => match engine.store() {
            Some(s) => s.get_definition(&r.run_id).await.ok().flatten().and_then(|d| {
                d.get("tasks")?.as_array().map(|ts| ts.iter().filter_map(|t| Some(t.get("name")?.as_str()?.to_string())).collect())
            }),
            None => None,
        },
    };
    let mut v = serde_json::to_value(r).unwrap_or(Value::Null);
    if let (Some(order), Some(Value::Object(mut tasks))) = (order, v.get_mut("tasks").map(Value::take)) {
        let mut ordered = Map::new();
        for name in order {
            if let Some(t) = tasks.remove(&name) {
                ordered.insert(name, t);
            }
        }
        // Anything the definition did not list keeps its place at the end.
        ordered.append(&mut tasks);
        v["tasks"] = Value::Object(ordered);
    }
    v
}

pub async fn cancel(State(st): State<Arc<AppState>>, PathParams(id): PathParams<String>) -> Result<Response, ApiError> {
    st.engine.cancel(&id).await?;
    let status = st.engine.status(&id).await.ok().map(RunStatus::as_str);
    Ok((StatusCode::ACCEPTED, Json(json!({"run_id": id, "status": status}))).into_response())
}

#[derive(Debug, Default, Deserialize)]
pub struct RetryQuery {
    /// Run this task, and every task below it, again too.
    pub from: Option<String>,
}

/// A new run that retries a failed one: the tasks that succeeded keep their
/// outputs, the others run again (see [`Engine::retry`]).
pub async fn retry(
    State(st): State<Arc<AppState>>,
    PathParams(id): PathParams<String>,
    QueryParams(q): QueryParams<RetryQuery>,
) -> Result<Response, ApiError> {
    let engine = st.engine.clone();
    let started = tokio::spawn(async move { engine.retry(&id, q.from.as_deref().filter(|f| !f.is_empty())).await })
        .await
        .map_err(|e| ApiError::new(ErrorCode::Internal, format!("the retry failed: {e}")))??;
    let run_id = started.run_id;
    let mut resp = (StatusCode::ACCEPTED, Json(json!({"run_id": run_id}))).into_response();
    if let Ok(loc) = HeaderValue::from_str(&format!("/v1/runs/{run_id}")) {
        resp.headers_mut().insert(header::LOCATION, loc);
    }
    Ok(resp)
}

#[derive(Debug, Default, Deserialize)]
pub struct ListQuery {
    pub workflow: Option<String>,
    pub status: Option<String>,
    pub limit: Option<String>,
}

pub async fn list(State(st): State<Arc<AppState>>, QueryParams(q): QueryParams<ListQuery>) -> Result<Json<Value>, ApiError> {
    let status = match q.status.as_deref().filter(|s| !s.is_empty()) {
        None => None,
        Some(s) => Some(RunStatus::parse(s).ok_or_else(|| {
            let allowed: Vec<&str> = RunStatus::ALL.iter().map(|s| s.as_str()).collect();
            ApiError::new(ErrorCode::InvalidQuery, format!("`status` must be one of {}, not `{s}`", allowed.join(", ")))
                .with_details(json!({"parameter": "status", "value": s, "allowed": allowed}))
        })?),
    };
    let limit = match q.limit.as_deref().filter(|s| !s.is_empty()) {
        None => None,
        Some(s) => Some(s.parse::<u32>().ok().filter(|n| (1..=MAX_LIST_LIMIT).contains(n)).ok_or_else(|| {
            ApiError::new(ErrorCode::InvalidQuery, format!("`limit` must be a whole number from 1 to {MAX_LIST_LIMIT}, not `{s}`"))
                .with_details(json!({"parameter": "limit", "value": s}))
        })?),
    };
    let filter = RunFilter { workflow: q.workflow.filter(|w| !w.is_empty()), status, limit };
    let runs = st.engine.list_runs(&filter).await?;
    Ok(Json(json!({"runs": runs})))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits() {
        assert_eq!(parse_wait("30s").unwrap(), Duration::from_secs(30));
        assert_eq!(parse_wait("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_wait("1m").unwrap(), Duration::from_secs(60));
        for bad in ["30", "soon", "-1s", ""] {
            assert_eq!(parse_wait(bad).unwrap_err().code, ErrorCode::InvalidWait, "{bad}");
        }
    }
}
