//! `GET /v1/migration?since=24h&workflow=W`: the rollout dashboard as JSON
//! (runs per backend with share, success rate, p50/p95 duration; runs per
//! flag variant; fallbacks and flag evaluation errors; the flag source's
//! status), computed from the run store.

use super::AppState;
use super::error::{ApiError, ErrorCode};
use super::extract::QueryParams;
use axum::Json;
use axum::extract::State;
use serde::Deserialize;
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::Duration;

/// The window counted when `since` is not given.
pub const DEFAULT_WINDOW: Duration = Duration::from_secs(24 * 3600);

#[derive(Debug, Default, Deserialize)]
pub struct RolloutQuery {
    pub since: Option<String>,
    pub workflow: Option<String>,
}

/// A `since` window: a duration such as `24h`, `30m`, `7d`.
pub fn parse_window(s: &str) -> Result<Duration, ApiError> {
    humantime::parse_duration(s.trim()).ok().filter(|d| !d.is_zero() && d.as_secs() <= 100 * 365 * 86400).ok_or_else(|| {
        ApiError::new(ErrorCode::InvalidQuery, format!("`since` must be a duration such as `24h` or `30m`, not `{s}`"))
            .with_details(json!({"parameter": "since", "value": s}))
    })
}

pub async fn status(State(st): State<Arc<AppState>>, QueryParams(q): QueryParams<RolloutQuery>) -> Result<Json<Value>, ApiError> {
    let window = match q.since.as_deref().filter(|s| !s.is_empty()) {
        Some(s) => parse_window(s)?,
        None => DEFAULT_WINDOW,
    };
    let mut report = st.engine.rollout_status(window, q.workflow.filter(|w| !w.is_empty())).await?;
    if let Some(s) = q.since.as_deref().filter(|s| !s.is_empty()) {
        report.window = s.trim().to_string();
    }
    Ok(Json(serde_json::to_value(report).unwrap_or(Value::Null)))
}
