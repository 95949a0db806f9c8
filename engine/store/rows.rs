//! Rows of the store read back into runs, tasks, summaries and attempts.

use super::sql::parse_ts;
use super::{AttemptRecord, DbRow, Result, RunSummary, StoreError};
use crate::run::{RunResult, RunStatus, TaskResult, TaskStatus};
use serde_json::Value;
use std::collections::BTreeMap;

pub(super) fn run_from_row(r: &dyn DbRow) -> Result<RunResult> {
    let status = r.req_text("status")?;
    Ok(RunResult {
        run_id: r.req_text("run_id")?,
        workflow: r.req_text("workflow")?,
        version: r.req_text("version")?,
        status: RunStatus::parse(&status).ok_or_else(|| StoreError::Db(format!("unknown run status `{status}` in the store")))?,
        backend: r.req_text("backend")?,
        routing: r
            .text("routing")?
            .map(|s| serde_json::from_str(&s).map_err(|e| StoreError::Db(format!("bad routing in the store: {e}"))))
            .transpose()?,
        error: r.text("error")?,
        output: r.text("output")?.map(|s| parse_json("output", &s)).transpose()?,
        retry_of: r.text("retry_of")?,
        entity_id: r.req_text("entity_id")?,
        context: r.text("context")?.map(|s| parse_json("context", &s)).transpose()?.unwrap_or(Value::Null),
        input: r.text("input")?.map(|s| parse_json("input", &s)).transpose()?.unwrap_or(Value::Null),
        created_at: parse_ts(&r.req_text("created_at")?)?,
        started_at: r.text("started_at")?.map(|s| parse_ts(&s)).transpose()?,
        finished_at: r.text("finished_at")?.map(|s| parse_ts(&s)).transpose()?,
        tasks: BTreeMap::new(),
    })
}

pub(super) fn task_from_row(r: &dyn DbRow) -> Result<(String, TaskResult)> {
    let status = r.req_text("status")?;
    Ok((
        r.req_text("name")?,
        TaskResult {
            status: task_status(&status)?,
            output: r.text("output")?.map(|s| parse_json("output", &s)).transpose()?,
            attempts: count(r.int("attempts")?)?,
            error: r.text("error")?,
            skip_reason: r.text("skip_reason")?,
            started_at: r.text("started_at")?.map(|s| parse_ts(&s)).transpose()?,
            finished_at: r.text("finished_at")?.map(|s| parse_ts(&s)).transpose()?,
        },
    ))
}

pub(super) fn summary_from_row(r: &dyn DbRow) -> Result<RunSummary> {
    let status = r.req_text("status")?;
    Ok(RunSummary {
        run_id: r.req_text("run_id")?,
        workflow: r.req_text("workflow")?,
        status: RunStatus::parse(&status).ok_or_else(|| StoreError::Db(format!("unknown run status `{status}` in the store")))?,
        backend: r.req_text("backend")?,
        created_at: parse_ts(&r.req_text("created_at")?)?,
        finished_at: r.text("finished_at")?.map(|s| parse_ts(&s)).transpose()?,
    })
}

pub(super) fn attempt_from_row(r: &dyn DbRow) -> Result<AttemptRecord> {
    Ok(AttemptRecord {
        run_id: r.req_text("run_id")?,
        task: r.req_text("task")?,
        attempt: count(r.int("attempt")?)?,
        status: task_status(&r.req_text("status")?)?,
        error: r.text("error")?,
        started_at: parse_ts(&r.req_text("started_at")?)?,
        finished_at: r.text("finished_at")?.map(|s| parse_ts(&s)).transpose()?,
    })
}

fn task_status(s: &str) -> Result<TaskStatus> {
    TaskStatus::parse(s).ok_or_else(|| StoreError::Db(format!("unknown task status `{s}` in the store")))
}

fn count(n: Option<i64>) -> Result<u32> {
    u32::try_from(n.unwrap_or(0)).map_err(|_| StoreError::Db(format!("bad count {n:?} in the store")))
}

pub(super) fn parse_json(what: &str, s: &str) -> Result<Value> {
    serde_json::from_str(s).map_err(|e| StoreError::Db(format!("bad {what} JSON in the store: {e}")))
}
