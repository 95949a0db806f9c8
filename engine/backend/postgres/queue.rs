//! The queue's SQL: submit, claim, reap, heartbeat, the workers' list,
//! read results (ending attempts and stopping runs: `apply.rs`). Every statement names its tables unqualified;
//! the pool's `search_path` is the queue's schema.
//!
//! Locking rule: a transaction that changes a run's tasks after they were
//! created first locks the run's row (`FOR NO KEY UPDATE`), so completions,
//! cancels and reaps of one run happen one at a time and the last one sees
//! every task final. Claims lock only `ready` task rows, with `SKIP LOCKED`,
//! and never wait for a run's row, so they cannot deadlock with those.

use super::Settings;
use crate::backend::definitions::Definitions;
use crate::plan::Workflow;
use crate::run::{RunResult, RunStatus, TaskResult, TaskStatus};
use crate::store::AttemptRecord;
use serde_json::Value;
use sqlx::postgres::{PgPool, PgRow};
use sqlx::{AssertSqlSafe, Row, SqlSafeStr};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Mutex;
use std::time::Duration;
use time::OffsetDateTime;

#[derive(Debug, thiserror::Error)]
pub(crate) enum DbError {
    #[error("{}", describe(.0))]
    Sql(#[from] sqlx::Error),
    #[error("{0}")]
    Data(String),
}

fn describe(e: &sqlx::Error) -> String {
    match e {
        sqlx::Error::Database(d) => d.message().to_string(),
        sqlx::Error::PoolTimedOut => "timed out waiting for a database connection".into(),
        sqlx::Error::PoolClosed => "the connection pool was closed".into(),
        sqlx::Error::Io(io) => format!("cannot connect: {io}"),
        other => other.to_string(),
    }
}

impl DbError {
    /// The server could not be reached or dropped the connection: retrying may work.
    pub(crate) fn is_connection(&self) -> bool {
        match self {
            DbError::Sql(sqlx::Error::Database(d)) => {
                let code = d.code().unwrap_or_default();
                // 08: connection exception; 57P0x: shutdown, crash, cannot connect now.
                code.starts_with("08") || code.starts_with("57P")
            }
            DbError::Sql(
                sqlx::Error::Io(_)
                | sqlx::Error::Tls(_)
                | sqlx::Error::Protocol(_)
                | sqlx::Error::PoolTimedOut
                | sqlx::Error::WorkerCrashed
                | sqlx::Error::BeginFailed,
            ) => true,
            _ => false,
        }
    }
}

pub(crate) type Result<T> = std::result::Result<T, DbError>;

/// A time from Unix microseconds.
fn at_micros(us: i64) -> Option<OffsetDateTime> {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(us) * 1000).ok()
}

/// What a worker records of itself in the `workers` table.
#[derive(Debug, Clone)]
pub(crate) struct WorkerRow {
    pub(crate) id: String,
    pub(crate) host: String,
    pub(crate) pid: u32,
    pub(crate) queues: Vec<String>,
    pub(crate) concurrency: usize,
    pub(crate) running: usize,
    pub(crate) started_at: OffsetDateTime,
}

/// Runs an idempotent operation again when the connection dropped.
pub(crate) async fn retrying<T, F, Fut>(f: F) -> Result<T>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<T>>,
{
    let mut tries = 0u32;
    loop {
        tries += 1;
        match f().await {
            Err(e) if e.is_connection() && tries < 6 => tokio::time::sleep(Duration::from_millis(50 << tries.min(4))).await,
            other => return other,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StopKind {
    Cancelled,
    TimedOut,
}

impl StopKind {
    pub(super) fn as_str(self) -> &'static str {
        match self {
            StopKind::Cancelled => "cancelled",
            StopKind::TimedOut => "timed_out",
        }
    }

    pub(super) fn parse(s: Option<&str>) -> Option<StopKind> {
        match s {
            Some("cancelled") => Some(StopKind::Cancelled),
            Some("timed_out") => Some(StopKind::TimedOut),
            _ => None,
        }
    }
}

/// A task claimed by a worker, with what its attempt needs.
#[derive(Debug, Clone)]
pub(crate) struct Claimed {
    pub run_id: String,
    pub position: i32,
    pub attempt: i32,
    pub definition_id: String,
    pub run_status: String,
    pub stop: Option<String>,
    pub input: Value,
    pub context: Value,
    pub deadline_us: Option<i64>,
    /// The claim marked the run as running.
    pub marked: bool,
    /// Outputs and statuses of the ancestors the task reads, by position.
    pub outputs: HashMap<i32, (Value, TaskStatus)>,
}

/// A claimed task whose lease expired.
#[derive(Debug)]
pub(crate) struct LostTask {
    pub run_id: String,
    pub position: i32,
    pub attempt: i32,
    pub crashes: i32,
}

/// Claims ready tasks and marks their runs as running. A run whose row
/// another transaction holds is skipped, never waited for (the locking rule);
/// `marked` tells which runs still need [`Db::mark_started`].
macro_rules! claim_sql {
    ($filter:literal) => {
        concat!(
            "WITH s AS (SELECT set_config('synchronous_commit', $6, true) AS v), \
             c AS (SELECT run_id, position FROM tasks WHERE (SELECT v FROM s) IS NOT NULL AND ",
            $filter,
            " AND state = 'ready' AND ready_at <= clock_timestamp() \
             ORDER BY ready_at, run_id, position LIMIT $2 FOR UPDATE SKIP LOCKED), \
             u AS (UPDATE tasks t SET state = 'claimed', attempt = t.attempt + 1, lease_owner = $3, \
             lease_expires = clock_timestamp() + $4 * interval '1 millisecond', \
             started_at = COALESCE(t.started_at, clock_timestamp()), attempt_started_at = clock_timestamp() \
             FROM c WHERE t.run_id = c.run_id AND t.position = c.position \
             RETURNING t.run_id, t.position, t.attempt, t.reads), \
             m AS (SELECT run_id FROM runs WHERE run_id IN (SELECT run_id FROM u) AND status = 'queued' \
             FOR NO KEY UPDATE SKIP LOCKED), \
             mu AS (UPDATE runs SET status = 'running', started_at = COALESCE(runs.started_at, clock_timestamp()) \
             FROM m WHERE runs.run_id = m.run_id RETURNING runs.run_id) \
             SELECT u.run_id, u.position, u.attempt, r.definition_id, r.status, r.stop, \
             u.run_id IN (SELECT run_id FROM mu) AS marked, \
             r.input::text AS input, r.context::text AS context, \
             (extract(epoch FROM r.deadline) * 1000000)::int8 AS deadline_us, \
             (SELECT jsonb_object_agg(p.position::text, jsonb_build_object('o', p.output, 's', p.state))::text FROM tasks p \
              WHERE p.run_id = u.run_id AND p.position = ANY(u.reads)) AS outputs \
             FROM u JOIN runs r ON r.run_id = u.run_id"
        )
    };
}

const CLAIM_FROM_QUEUES: &str = claim_sql!("queue = ANY($1) AND $5::int[] IS NULL");
pub(super) const CLAIM_FROM_RUN: &str = claim_sql!("run_id = $1 AND position = ANY($5)");

const SUBMIT: &str = "WITH d AS (INSERT INTO definitions (id, definition) SELECT $1, $2::jsonb WHERE $2::text IS NOT NULL \
       ON CONFLICT (id) DO NOTHING), \
     r AS (INSERT INTO runs (run_id, backend, workflow, version, definition_id, queue, status, entity_id, context, input, \
       routing, concurrency, timeout_ms, deadline, sched, created_at, retry_of) \
       VALUES ($3, $4, $5, $6, $1, $7, 'queued', $8, $9::jsonb, $10::jsonb, $11::jsonb, $12, $13, \
       clock_timestamp() + $13 * interval '1 millisecond', $14, clock_timestamp(), $20) \
       ON CONFLICT (run_id) DO NOTHING RETURNING run_id), \
     t AS (INSERT INTO tasks (run_id, position, name, queue, state, reads, ready_at, output, finished_at) \
       SELECT r.run_id, u.position, u.name, $7, u.state, u.reads::int[], \
       CASE WHEN u.state = 'ready' THEN clock_timestamp() END, u.output::jsonb, \
       CASE WHEN u.state = 'succeeded' THEN clock_timestamp() END \
       FROM r, UNNEST($15::int[], $16::text[], $17::text[], $18::text[], $19::text[]) AS u(position, name, state, reads, output)) \
     SELECT (SELECT count(*) FROM r) AS inserted";

/// Sends notifications (`$1` channels, `$2` payloads) in a transaction of
/// their own, which does not wait for the disk. PostgreSQL lets one
/// notifying transaction commit at a time (holding its lock until the
/// commit is flushed), so submits and attempt ends do not notify
/// themselves: each process sends what they would have, after they
/// committed, gathered into one statement.
const NOTIFY: &str = "WITH s AS (SELECT set_config('synchronous_commit', 'off', true) AS v) \
     SELECT pg_notify(n.c, n.p) FROM s, UNNEST($1::text[], $2::text[]) AS n(c, p) WHERE s.v IS NOT NULL";

const RUN_COLS: &str = "run_id, backend, workflow, version, status, error, output::text AS output, retry_of, entity_id, \
     context::text AS context, input::text AS input, routing::text AS routing, \
     (extract(epoch FROM created_at) * 1000000)::int8 AS created_us, \
     (extract(epoch FROM started_at) * 1000000)::int8 AS started_us, (extract(epoch FROM finished_at) * 1000000)::int8 AS finished_us";

const TASK_COLS: &str = "run_id, name, state, attempt, output::text AS output, error, skip_reason, \
     (extract(epoch FROM started_at) * 1000000)::int8 AS started_us, (extract(epoch FROM finished_at) * 1000000)::int8 AS finished_us";

pub(crate) struct Db {
    pub(super) pool: PgPool,
    schema: String,
    pub(super) lease_ms: i64,
    pub(super) ready_channel: String,
    pub(super) stop_channel: String,
    pub(super) done_channel: String,
    /// The definitions of the runs this process schedules or executes.
    pub(super) definitions: Definitions,
    /// Definitions known to be in the database: submits send only their id.
    known: Mutex<HashSet<String>>,
    /// `synchronous_commit` of claims and attempt ends (`off` unless
    /// `synchronous_completions`): one lost in a server crash is the same as
    /// a worker lost before it committed, and the lease runs the task again.
    /// Submits, cancels and stops always wait for the disk.
    pub(super) completion_commit: &'static str,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn int_array(v: &[usize]) -> String {
    let items: Vec<String> = v.iter().map(|x| x.to_string()).collect();
    format!("{{{}}}", items.join(","))
}

fn ts(us: Option<i64>) -> Option<OffsetDateTime> {
    us.and_then(|us| OffsetDateTime::from_unix_timestamp_nanos(i128::from(us) * 1000).ok())
}

fn json(text: Option<String>, what: &str) -> Result<Option<Value>> {
    text.map(|t| serde_json::from_str(&t).map_err(|e| DbError::Data(format!("bad {what} JSON in the queue: {e}")))).transpose()
}

/// The task status a queue state shows as.
fn task_status(state: &str, attempt: i32) -> Result<TaskStatus> {
    Ok(match state {
        "waiting" | "held" => TaskStatus::Pending,
        "ready" if attempt == 0 => TaskStatus::Pending,
        "ready" | "claimed" => TaskStatus::Running,
        other => TaskStatus::parse(other).ok_or_else(|| DbError::Data(format!("unknown task state `{other}` in the queue")))?,
    })
}

fn run_from_row(r: &PgRow) -> Result<RunResult> {
    let status: String = r.try_get("status")?;
    Ok(RunResult {
        run_id: r.try_get("run_id")?,
        workflow: r.try_get("workflow")?,
        version: r.try_get("version")?,
        status: RunStatus::parse(&status).ok_or_else(|| DbError::Data(format!("unknown run status `{status}` in the queue")))?,
        backend: r.try_get("backend")?,
        routing: json(r.try_get("routing")?, "routing")?
            .map(serde_json::from_value)
            .transpose()
            .map_err(|e| DbError::Data(e.to_string()))?,
        error: r.try_get("error")?,
        output: json(r.try_get("output")?, "output")?,
        retry_of: r.try_get("retry_of")?,
        entity_id: r.try_get("entity_id")?,
        context: json(r.try_get("context")?, "context")?.unwrap_or(Value::Null),
        input: json(r.try_get("input")?, "input")?.unwrap_or(Value::Null),
        created_at: ts(r.try_get("created_us")?).unwrap_or(OffsetDateTime::UNIX_EPOCH),
        started_at: ts(r.try_get("started_us")?),
        finished_at: ts(r.try_get("finished_us")?),
        tasks: BTreeMap::new(),
    })
}

fn task_from_row(r: &PgRow) -> Result<(String, String, TaskResult)> {
    let state: String = r.try_get("state")?;
    let attempt: i32 = r.try_get("attempt")?;
    Ok((
        r.try_get("run_id")?,
        r.try_get("name")?,
        TaskResult {
            status: task_status(&state, attempt)?,
            output: json(r.try_get("output")?, "output")?,
            attempts: attempt.max(0) as u32,
            error: r.try_get("error")?,
            skip_reason: r.try_get("skip_reason")?,
            started_at: ts(r.try_get("started_us")?),
            finished_at: ts(r.try_get("finished_us")?),
        },
    ))
}

pub(super) fn claimed_from_row(r: &PgRow) -> Result<Claimed> {
    let outputs: Option<Value> = json(r.try_get("outputs")?, "outputs")?;
    let outputs = match outputs {
        Some(Value::Object(m)) => m
            .into_iter()
            .filter_map(|(k, mut v)| {
                let status = match v.get("s").and_then(Value::as_str) {
                    Some("waiting") => TaskStatus::Pending,
                    Some(s) => TaskStatus::parse(s).unwrap_or(TaskStatus::Running),
                    None => TaskStatus::Running,
                };
                k.parse::<i32>().ok().map(|k| (k, (v["o"].take(), status)))
            })
            .collect(),
        _ => HashMap::new(),
    };
    Ok(Claimed {
        run_id: r.try_get("run_id")?,
        position: r.try_get("position")?,
        attempt: r.try_get("attempt")?,
        definition_id: r.try_get("definition_id")?,
        run_status: r.try_get("status")?,
        stop: r.try_get("stop")?,
        input: json(r.try_get("input")?, "input")?.unwrap_or(Value::Null),
        context: json(r.try_get("context")?, "context")?.unwrap_or(Value::Null),
        deadline_us: r.try_get("deadline_us")?,
        marked: r.try_get::<Option<bool>, _>("marked")?.unwrap_or(false),
        outputs,
    })
}

impl Db {
    pub(crate) fn new(pool: PgPool, s: &Settings) -> Db {
        Db {
            pool,
            schema: s.schema.clone(),
            lease_ms: s.lease.as_millis() as i64,
            ready_channel: s.channel("ready"),
            stop_channel: s.channel("stop"),
            done_channel: s.channel("done"),
            known: Mutex::new(HashSet::new()),
            definitions: Definitions::new(),
            completion_commit: if s.synchronous_completions { "on" } else { "off" },
        }
    }

    /// The newest applied migration of the queue schema, if it exists.
    pub(crate) async fn schema_version(&self) -> Result<Option<i64>> {
        let exists: bool = sqlx::query_scalar(AssertSqlSafe(format!("SELECT to_regclass('{}._sqlx_migrations') IS NOT NULL", self.schema)))
            .fetch_one(&self.pool)
            .await?;
        if !exists {
            return Ok(None);
        }
        let v: Option<i64> =
            sqlx::query_scalar(AssertSqlSafe(format!("SELECT max(version) FROM {}._sqlx_migrations", self.schema)).into_sql_str())
                .fetch_one(&self.pool)
                .await?;
        Ok(v)
    }

    /// The server's version and the number of unfinished runs.
    pub(crate) async fn describe(&self) -> Result<(String, i64)> {
        let r = sqlx::query("SELECT current_setting('server_version') AS v, (SELECT count(*) FROM runs WHERE finished_at IS NULL) AS n")
            .fetch_one(&self.pool)
            .await?;
        Ok((format!("PostgreSQL {}", r.try_get::<String, _>("v")?), r.try_get("n")?))
    }

    /// Insert a run, its tasks and (unless known) its definition in one
    /// statement. `false`: a run with this id exists. The caller wakes the
    /// workers afterwards ([`Db::notify_queues`]).
    pub(crate) async fn submit(&self, wf: &Workflow, run: &RunResult, definition: &Value) -> Result<bool> {
        let def_id = wf.version.clone();
        let reused: Vec<usize> =
            wf.tasks.iter().filter(|t| run.tasks.get(&t.name).is_some_and(|x| x.status == TaskStatus::Succeeded)).map(|t| t.id).collect();
        let (states, sched) = Db::first_decisions(wf, &run.run_id, &reused).map_err(|e| DbError::Data(e.to_string()))?;
        let outputs: Vec<Option<String>> = wf
            .tasks
            .iter()
            .map(|t| {
                run.tasks
                    .get(&t.name)
                    .filter(|x| x.status == TaskStatus::Succeeded)
                    .map(|x| serde_json::to_string(&x.output).unwrap_or_else(|_| "null".into()))
            })
            .collect();
        let positions: Vec<i32> = wf.tasks.iter().map(|t| t.id as i32).collect();
        let names: Vec<&str> = wf.tasks.iter().map(|t| t.name.as_str()).collect();
        let reads: Vec<String> = wf.tasks.iter().map(|t| int_array(&t.reads)).collect();
        let queue = wf.queue.clone().unwrap_or_else(|| "default".into());
        let json_text = |v: &Value| serde_json::to_string(v).unwrap_or_else(|_| "null".into());
        let routing = run.routing.as_ref().map(|r| serde_json::to_string(r).unwrap_or_else(|_| "null".into()));
        for first in [true, false] {
            let send_definition = !lock(&self.known).contains(&def_id);
            let q = sqlx::query(SUBMIT)
                .bind(&def_id)
                .bind(send_definition.then(|| json_text(definition)))
                .bind(&run.run_id)
                .bind(&run.backend)
                .bind(&run.workflow)
                .bind(&run.version)
                .bind(&queue)
                .bind(&run.entity_id)
                .bind(json_text(&run.context))
                .bind(json_text(&run.input))
                .bind(&routing)
                .bind(wf.concurrency.map(|c| c.min(i32::MAX as usize) as i32))
                .bind(wf.timeout.map(|t| t.as_millis().min(i64::MAX as u128) as i64))
                .bind(&sched)
                .bind(&positions)
                .bind(&names)
                .bind(&states)
                .bind(&reads)
                .bind(&outputs)
                .bind(&run.retry_of);
            match q.fetch_one(&self.pool).await {
                Ok(row) => {
                    lock(&self.known).insert(def_id.clone());
                    let inserted: i64 = row.try_get("inserted")?;
                    return Ok(inserted == 1);
                }
                // The definition is not there after all (another database, a cleanup): send it.
                Err(e) if first && is_fk_violation(&e) => {
                    lock(&self.known).remove(&def_id);
                }
                Err(e) => return Err(e.into()),
            }
        }
        Err(DbError::Data("the run's definition could not be recorded".into()))
    }

    /// Tell the workers of these queues that tasks became ready, and the
    /// waiters of these runs that they ended.
    pub(crate) async fn notify(&self, queues: &[String], ended: &[String]) -> Result<()> {
        let mut channels = Vec::with_capacity(queues.len() + ended.len());
        channels.resize(queues.len(), self.ready_channel.as_str());
        channels.resize(queues.len() + ended.len(), self.done_channel.as_str());
        let payloads: Vec<&str> = queues.iter().chain(ended).map(String::as_str).collect();
        sqlx::query(NOTIFY).bind(&channels).bind(&payloads).execute(&self.pool).await?;
        Ok(())
    }

    /// The compiled definition `id`, read with `conn` (the pool, or a
    /// transaction's connection) when this process has not compiled it yet.
    pub(crate) async fn workflow<'c>(&self, conn: impl sqlx::PgExecutor<'c>, id: &str) -> Result<std::sync::Arc<Workflow>> {
        if let Some(wf) = self.definitions.get(id) {
            return Ok(wf);
        }
        let text: Option<String> =
            sqlx::query_scalar("SELECT definition::text FROM definitions WHERE id = $1").bind(id).fetch_optional(conn).await?;
        let text = text.ok_or_else(|| DbError::Data(format!("no definition {id} in the queue")))?;
        self.definitions.compile_text(id, &text).map_err(DbError::Data)
    }

    /// Claim up to `limit` ready tasks of these queues for `owner`.
    pub(crate) async fn claim(&self, queues: &[String], limit: usize, owner: &str) -> Result<Vec<Claimed>> {
        let rows = sqlx::query(CLAIM_FROM_QUEUES)
            .bind(queues)
            .bind(limit as i64)
            .bind(owner)
            .bind(self.lease_ms)
            .bind(None::<Vec<i32>>)
            .bind(self.completion_commit)
            .fetch_all(&self.pool)
            .await?;
        let claimed = rows.iter().map(claimed_from_row).collect::<Result<Vec<_>>>()?;
        self.mark_started(&claimed).await;
        Ok(claimed)
    }

    /// Runs whose first task was just claimed are running (those the
    /// claim itself could not mark).
    async fn mark_started(&self, claimed: &[Claimed]) {
        let mut ids: Vec<&str> = claimed.iter().filter(|c| c.run_status == "queued" && !c.marked).map(|c| c.run_id.as_str()).collect();
        if ids.is_empty() {
            return;
        }
        ids.sort_unstable();
        ids.dedup();
        let r = sqlx::query(
            "WITH s AS (SELECT set_config('synchronous_commit', $2, true) AS v) \
             UPDATE runs SET status = 'running', started_at = COALESCE(started_at, clock_timestamp()) \
             WHERE run_id = ANY($1) AND status = 'queued' AND (SELECT v FROM s) IS NOT NULL",
        )
        .bind(&ids)
        .bind(self.completion_commit)
        .execute(&self.pool)
        .await;
        if let Err(e) = r {
            tracing::debug!("marking runs as running: {e}");
        }
    }

    pub(crate) async fn expired_leases(&self, limit: i64) -> Result<Vec<LostTask>> {
        let rows = sqlx::query(
            "SELECT run_id, position, attempt, crashes FROM tasks WHERE state = 'claimed' AND lease_expires < clock_timestamp() LIMIT $1",
        )
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(LostTask {
                    run_id: r.try_get("run_id")?,
                    position: r.try_get("position")?,
                    attempt: r.try_get("attempt")?,
                    crashes: r.try_get("crashes")?,
                })
            })
            .collect()
    }

    pub(crate) async fn past_deadline(&self, limit: i64) -> Result<Vec<String>> {
        Ok(sqlx::query_scalar(
            "SELECT run_id FROM runs WHERE finished_at IS NULL AND deadline IS NOT NULL AND stop IS NULL \
             AND deadline < clock_timestamp() LIMIT $1",
        )
        .bind(limit)
        .fetch_all(&self.pool)
        .await?)
    }

    /// Finished runs not yet written to a run store, finished more than `age` ago.
    pub(crate) async fn unsynced(&self, age: Duration, limit: i64) -> Result<Vec<String>> {
        Ok(sqlx::query_scalar(
            "SELECT run_id FROM runs WHERE NOT store_synced AND finished_at IS NOT NULL \
             AND finished_at < clock_timestamp() - $1 * interval '1 millisecond' LIMIT $2",
        )
        .bind(age.as_millis() as i64)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?)
    }

    pub(crate) async fn mark_synced(&self, ids: &[String]) -> Result<()> {
        sqlx::query("UPDATE runs SET store_synced = TRUE WHERE run_id = ANY($1)").bind(ids).execute(&self.pool).await?;
        Ok(())
    }

    /// Renew the leases of these attempts held by `owner`. Returns those
    /// still held, with their run's stop request.
    pub(crate) async fn heartbeat(&self, owner: &str, held: &[(String, i32, i32)]) -> Result<Vec<(String, i32, Option<String>)>> {
        if held.is_empty() {
            return Ok(Vec::new());
        }
        let runs: Vec<&str> = held.iter().map(|h| h.0.as_str()).collect();
        let positions: Vec<i32> = held.iter().map(|h| h.1).collect();
        let attempts: Vec<i32> = held.iter().map(|h| h.2).collect();
        let rows = sqlx::query(
            "UPDATE tasks t SET lease_expires = clock_timestamp() + $2 * interval '1 millisecond' \
             FROM UNNEST($3::text[], $4::int[], $5::int[]) AS k(run_id, position, attempt) \
             WHERE t.run_id = k.run_id AND t.position = k.position AND t.attempt = k.attempt \
             AND t.state = 'claimed' AND t.lease_owner = $1 \
             RETURNING t.run_id, t.position, (SELECT r.stop FROM runs r WHERE r.run_id = t.run_id) AS stop",
        )
        .bind(owner)
        .bind(self.lease_ms)
        .bind(&runs)
        .bind(&positions)
        .bind(&attempts)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(|r| Ok((r.try_get("run_id")?, r.try_get("position")?, r.try_get("stop")?))).collect()
    }

    /// Record a worker, or renew its row: its heartbeat and how many tasks
    /// it runs now. The first call also deletes the rows of workers gone
    /// for ten leases.
    pub(crate) async fn beat_worker(&self, w: &WorkerRow, first: bool) -> Result<()> {
        if first {
            sqlx::query("DELETE FROM workers WHERE last_heartbeat < clock_timestamp() - $1 * interval '10 millisecond'")
                .bind(self.lease_ms)
                .execute(&self.pool)
                .await?;
        }
        sqlx::query(
            "INSERT INTO workers (id, host, pid, queues, concurrency, running, started_at, last_heartbeat) \
             VALUES ($1, $2, $3, $4, $5, $6, to_timestamp($7::float8 / 1e6), clock_timestamp()) \
             ON CONFLICT (id) DO UPDATE SET running = EXCLUDED.running, last_heartbeat = EXCLUDED.last_heartbeat",
        )
        .bind(&w.id)
        .bind(&w.host)
        .bind(w.pid as i32)
        .bind(&w.queues)
        .bind(w.concurrency as i32)
        .bind(w.running as i32)
        .bind((w.started_at.unix_timestamp_nanos() / 1000) as i64)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// A worker that stops cleanly is gone at once.
    pub(crate) async fn remove_worker(&self, id: &str) -> Result<()> {
        sqlx::query("DELETE FROM workers WHERE id = $1").bind(id).execute(&self.pool).await?;
        Ok(())
    }

    /// The workers heard of within the lease, oldest first.
    pub(crate) async fn live_workers(&self) -> Result<Vec<crate::backend::WorkerInfo>> {
        let rows = sqlx::query(
            "SELECT id, host, pid, queues, concurrency, running, \
             (extract(epoch FROM started_at) * 1e6)::int8 AS started_us, \
             (extract(epoch FROM last_heartbeat) * 1e6)::int8 AS beat_us FROM workers \
             WHERE last_heartbeat > clock_timestamp() - $1 * interval '1 millisecond' ORDER BY started_at, id",
        )
        .bind(self.lease_ms)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(crate::backend::WorkerInfo {
                    id: r.try_get("id")?,
                    runtime: "taskweave".into(),
                    host: r.try_get("host")?,
                    pid: u32::try_from(r.try_get::<i32, _>("pid")?).ok(),
                    queues: r.try_get("queues")?,
                    concurrency: u32::try_from(r.try_get::<i32, _>("concurrency")?).ok(),
                    running: u32::try_from(r.try_get::<i32, _>("running")?).ok(),
                    started_at: at_micros(r.try_get("started_us")?),
                    last_heartbeat: at_micros(r.try_get("beat_us")?),
                })
            })
            .collect()
    }

    /// Tasks that may be claimed now, per queue (a retry waiting for its
    /// delay is not counted).
    pub(crate) async fn ready_per_queue(&self) -> Result<BTreeMap<String, u64>> {
        let rows = sqlx::query(
            "SELECT queue, count(*) AS n FROM tasks WHERE state = 'ready' \
             AND (ready_at IS NULL OR ready_at <= clock_timestamp()) GROUP BY queue",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(|r| Ok((r.try_get("queue")?, r.try_get::<i64, _>("n")?.max(0) as u64))).collect()
    }

    pub(crate) async fn load_result(&self, run_id: &str) -> Result<Option<RunResult>> {
        let Some(row) = sqlx::query(AssertSqlSafe(format!("SELECT {RUN_COLS} FROM runs WHERE run_id = $1")))
            .bind(run_id)
            .fetch_optional(&self.pool)
            .await?
        else {
            return Ok(None);
        };
        let mut run = run_from_row(&row)?;
        let rows = sqlx::query(AssertSqlSafe(format!("SELECT {TASK_COLS} FROM tasks WHERE run_id = $1 ORDER BY position")))
            .bind(run_id)
            .fetch_all(&self.pool)
            .await?;
        for r in &rows {
            let (_, name, t) = task_from_row(r)?;
            run.tasks.insert(name, t);
        }
        Ok(Some(run))
    }

    /// Results and attempts of these runs, for the run store.
    pub(crate) async fn load_for_store(&self, ids: &[String]) -> Result<Vec<(RunResult, Vec<AttemptRecord>)>> {
        let rows = sqlx::query(AssertSqlSafe(format!("SELECT {RUN_COLS} FROM runs WHERE run_id = ANY($1)")))
            .bind(ids)
            .fetch_all(&self.pool)
            .await?;
        let mut runs: HashMap<String, (RunResult, Vec<AttemptRecord>)> = HashMap::with_capacity(rows.len());
        for r in &rows {
            let run = run_from_row(r)?;
            runs.insert(run.run_id.clone(), (run, Vec::new()));
        }
        let rows = sqlx::query(AssertSqlSafe(format!("SELECT {TASK_COLS} FROM tasks WHERE run_id = ANY($1) ORDER BY run_id, position")))
            .bind(ids)
            .fetch_all(&self.pool)
            .await?;
        for r in &rows {
            let (run_id, name, t) = task_from_row(r)?;
            if let Some((run, _)) = runs.get_mut(&run_id) {
                run.tasks.insert(name, t);
            }
        }
        let rows = sqlx::query(
            "SELECT a.run_id, t.name, a.attempt, a.status, a.error, \
             (extract(epoch FROM a.started_at) * 1000000)::int8 AS started_us, \
             (extract(epoch FROM a.finished_at) * 1000000)::int8 AS finished_us \
             FROM attempts a JOIN tasks t ON t.run_id = a.run_id AND t.position = a.position \
             WHERE a.run_id = ANY($1) AND t.run_id = ANY($1) ORDER BY a.run_id, a.started_at",
        )
        .bind(ids)
        .fetch_all(&self.pool)
        .await?;
        for r in &rows {
            let run_id: String = r.try_get("run_id")?;
            let status: String = r.try_get("status")?;
            let rec = AttemptRecord {
                run_id: run_id.clone(),
                task: r.try_get("name")?,
                attempt: r.try_get::<i32, _>("attempt")?.max(0) as u32,
                status: TaskStatus::parse(&status).ok_or_else(|| DbError::Data(format!("unknown attempt status `{status}`")))?,
                error: r.try_get("error")?,
                started_at: ts(r.try_get("started_us")?).unwrap_or(OffsetDateTime::UNIX_EPOCH),
                finished_at: ts(r.try_get("finished_us")?),
            };
            if let Some((_, attempts)) = runs.get_mut(&run_id) {
                attempts.push(rec);
            }
        }
        Ok(runs.into_values().collect())
    }
}

fn is_fk_violation(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(d) if d.code().as_deref() == Some("23503"))
}
