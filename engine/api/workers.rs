//! `GET /v1/workers[?backend=B]`: the live workers of every backend (or of
//! one), with the tasks waiting for a worker per queue. A backend that
//! cannot be asked is listed with its error; when it is the one backend
//! asked for, the answer is that error (503 when it may work later).

use super::AppState;
use super::error::ApiError;
use super::extract::QueryParams;
use crate::backend::workers::Surveyed;
use crate::engine::EngineError;
use axum::Json;
use axum::extract::State;
use serde::Deserialize;
use serde_json::{Value, json};
use std::sync::Arc;

#[derive(Debug, Default, Deserialize)]
pub struct WorkersQuery {
    pub backend: Option<String>,
}

pub async fn list(State(st): State<Arc<AppState>>, QueryParams(q): QueryParams<WorkersQuery>) -> Result<Json<Value>, ApiError> {
    let named = q.backend.as_deref().map(str::trim).filter(|b| !b.is_empty());
    let surveyed = st.engine.workers(named).await?;
    if named.is_some()
        && let Some(Surveyed { report: Err(e), .. }) = surveyed.first()
    {
        return Err(ApiError::from(EngineError::Backend(e.clone())));
    }
    Ok(Json(json!({"backends": surveyed.iter().map(entry).collect::<Vec<_>>()})))
}

/// One backend's entry of `GET /v1/workers` (and `taskweave workers
/// --format json`): its report, or `{backend, kind, error}`.
pub fn entry(s: &Surveyed) -> Value {
    match &s.report {
        Ok(r) => serde_json::to_value(r).unwrap_or(Value::Null),
        Err(e) => {
            let a = ApiError::from(EngineError::Backend(e.clone()));
            json!({"backend": s.backend, "kind": s.kind, "error": {"code": a.code.as_str(), "message": a.message}})
        }
    }
}
