//! The queue's SQL: submit, claim, finish an attempt, stop a run, reap,
//! heartbeat, read results. Every statement names its tables unqualified;
//! the pool's `search_path` is the queue's schema.
//!
//! Locking rule: a transaction that changes a run's tasks after they were
//! created first locks the run's row (`FOR NO KEY UPDATE`), so completions,
//! cancels and reaps of one run happen one at a time and the last one sees
//! every task final. Claims lock only `ready` task rows, with `SKIP LOCKED`,
//! and never wait for a run's row, so they cannot deadlock with those.

use super::Settings;
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
    fn as_str(self) -> &'static str {
        match self {
            StopKind::Cancelled => "cancelled",
            StopKind::TimedOut => "timed_out",
        }
    }

    fn parse(s: Option<&str>) -> Option<StopKind> {
        match s {
            Some("cancelled") => Some(StopKind::Cancelled),
            Some("timed_out") => Some(StopKind::TimedOut),
            _ => None,
        }
    }

    /// The status and error of an attempt stopped because the run stopped.
    fn attempt_end(self) -> (TaskStatus, &'static str) {
        match self {
            StopKind::Cancelled => (TaskStatus::Cancelled, "cancelled"),
            StopKind::TimedOut => (TaskStatus::TimedOut, "stopped: the run timed out"),
        }
    }
}

/// How an attempt ended, as the worker (or the reaper) saw it.
#[derive(Debug, Clone)]
pub(crate) enum Outcome {
    Succeeded(Value),
    /// Failed; try again after `delay`. `status` is the attempt's (failed or timed out).
    Retry {
        status: TaskStatus,
        error: String,
        delay: Duration,
    },
    /// Failed for good (or cancelled). `crash`: the worker was lost.
    Final {
        status: TaskStatus,
        error: String,
        crash: bool,
    },
    /// The worker was lost (its lease expired): try again now.
    Crashed {
        error: String,
    },
    /// The attempt was stopped: by the run's stop when it has one, else by
    /// its worker stopping, which hands the task back.
    Stopped,
}

/// A task claimed by a worker, with what its attempt needs.
#[derive(Debug, Clone)]
pub(crate) struct Claimed {
    pub run_id: String,
    pub position: i32,
    pub attempt: i32,
    pub lost: i32,
    pub definition_id: String,
    pub run_status: String,
    pub stop: Option<String>,
    pub input: Value,
    pub context: Value,
    pub deadline_us: Option<i64>,
    /// The claim marked the run as running.
    pub marked: bool,
    /// Outputs of the ancestors the task reads, by position.
    pub outputs: HashMap<i32, Value>,
}

/// What finishing an attempt did.
#[derive(Debug, Default)]
pub(crate) struct Finish {
    /// The attempt was no longer this worker's (reaped, or the run finished).
    pub stale: bool,
    pub run_finished: bool,
    /// The run finished and the caller announces it ([`Db::notify`]).
    pub announce_end: bool,
    /// Tasks of this queue became ready and the caller announces it.
    pub wake: Option<String>,
    /// Children claimed for the finishing worker in the same transaction.
    pub claimed: Vec<Claimed>,
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
             RETURNING t.run_id, t.position, t.attempt, t.lost, t.reads), \
             m AS (SELECT run_id FROM runs WHERE run_id IN (SELECT run_id FROM u) AND status = 'queued' \
             FOR NO KEY UPDATE SKIP LOCKED), \
             mu AS (UPDATE runs SET status = 'running', started_at = COALESCE(runs.started_at, clock_timestamp()) \
             FROM m WHERE runs.run_id = m.run_id RETURNING runs.run_id) \
             SELECT u.run_id, u.position, u.attempt, u.lost, r.definition_id, r.status, r.stop, \
             u.run_id IN (SELECT run_id FROM mu) AS marked, \
             r.input::text AS input, r.context::text AS context, \
             (extract(epoch FROM r.deadline) * 1000000)::int8 AS deadline_us, \
             (SELECT jsonb_object_agg(p.position::text, p.output)::text FROM tasks p \
              WHERE p.run_id = u.run_id AND p.position = ANY(u.reads)) AS outputs \
             FROM u JOIN runs r ON r.run_id = u.run_id"
        )
    };
}

const CLAIM_FROM_QUEUES: &str = claim_sql!("queue = ANY($1) AND $5::int[] IS NULL");
const CLAIM_FROM_RUN: &str = claim_sql!("run_id = $1 AND position = ANY($5)");

const SUBMIT: &str = "WITH d AS (INSERT INTO definitions (id, definition) SELECT $1, $2::jsonb WHERE $2::text IS NOT NULL \
       ON CONFLICT (id) DO NOTHING), \
     r AS (INSERT INTO runs (run_id, backend, workflow, version, definition_id, queue, status, entity_id, context, input, \
       routing, concurrency, timeout_ms, deadline, total, open, created_at) \
       VALUES ($3, $4, $5, $6, $1, $7, 'queued', $8, $9::jsonb, $10::jsonb, $11::jsonb, $12, $13, \
       clock_timestamp() + $13 * interval '1 millisecond', $14, $14, clock_timestamp()) \
       ON CONFLICT (run_id) DO NOTHING RETURNING run_id), \
     t AS (INSERT INTO tasks (run_id, position, name, queue, state, waiting, children, reads, ready_at) \
       SELECT r.run_id, u.position, u.name, $7, u.state, u.waiting, u.children::int[], u.reads::int[], \
       CASE WHEN u.state = 'ready' THEN clock_timestamp() END \
       FROM r, UNNEST($15::int[], $16::text[], $17::text[], $18::int[], $19::text[], $20::text[]) \
       AS u(position, name, state, waiting, children, reads)) \
     SELECT (SELECT count(*) FROM r) AS inserted";

/// Sends notifications (`$1` channels, `$2` payloads) in a transaction of
/// their own, which does not wait for the disk. PostgreSQL lets one
/// notifying transaction commit at a time (holding its lock until the
/// commit is flushed), so submits and attempt ends do not notify
/// themselves: each process sends what they would have, after they
/// committed, gathered into one statement.
const NOTIFY: &str = "WITH s AS (SELECT set_config('synchronous_commit', 'off', true) AS v) \
     SELECT pg_notify(n.c, n.p) FROM s, UNNEST($1::text[], $2::text[]) AS n(c, p) WHERE s.v IS NOT NULL";

/// Ends an attempt: locks the run's row first (the locking rule), records
/// the attempt; a success also promotes its children (to `held` when the run
/// has a `concurrency`) and counts the task final, and when that was the
/// run's last open task and the run was not asked to stop, finishes the run
/// (whose end the caller announces), so the common case costs one
/// statement. `$14`: `synchronous_commit` of the transaction.
const FINISH_TASK: &str = "WITH r AS (SELECT stop, concurrency, timeout_ms, queue FROM runs \
       WHERE run_id = $1 AND set_config('synchronous_commit', $14, true) IS NOT NULL FOR NO KEY UPDATE), \
     u AS (UPDATE tasks SET state = $5, output = $6::jsonb, error = $7, \
       ready_at = CASE WHEN $5 = 'ready' THEN clock_timestamp() + $8 * interval '1 millisecond' ELSE ready_at END, \
       finished_at = CASE WHEN $5 = 'ready' THEN NULL ELSE clock_timestamp() END, \
       lost = lost + $9, crashes = crashes + $10, lease_owner = NULL, lease_expires = NULL \
       WHERE run_id = $1 AND position = $2 AND attempt = $3 AND state = 'claimed' AND EXISTS (SELECT 1 FROM r) \
       AND (lease_owner = $4 OR ($4::text IS NULL AND lease_expires < clock_timestamp())) \
       RETURNING run_id, position, attempt, name, children, attempt_started_at), \
     a AS (INSERT INTO attempts (run_id, position, attempt, status, error, worker, started_at, finished_at) \
       SELECT run_id, position, attempt, $11, $12, $13, COALESCE(attempt_started_at, clock_timestamp()), clock_timestamp() \
       FROM u ON CONFLICT DO NOTHING), \
     p AS (UPDATE tasks t SET waiting = t.waiting - 1, \
       state = CASE WHEN t.waiting > 1 THEN t.state WHEN (SELECT concurrency FROM r) IS NULL THEN 'ready' ELSE 'held' END, \
       ready_at = CASE WHEN t.waiting = 1 THEN clock_timestamp() ELSE t.ready_at END \
       FROM u WHERE $5 = 'succeeded' AND t.run_id = u.run_id AND t.position = ANY(u.children) AND t.state = 'waiting' \
       RETURNING t.position, t.state), \
     c AS (UPDATE runs SET open = open - 1, succeeded = succeeded + 1, \
       status = CASE WHEN open = 1 AND stop IS NULL AND finished_at IS NULL \
         THEN CASE WHEN succeeded + 1 = total THEN 'succeeded' ELSE 'failed' END ELSE status END, \
       error = CASE WHEN open = 1 AND stop IS NULL AND finished_at IS NULL THEN NULL ELSE error END, \
       started_at = CASE WHEN open = 1 AND stop IS NULL THEN COALESCE(started_at, created_at) ELSE started_at END, \
       finished_at = CASE WHEN open = 1 AND stop IS NULL AND finished_at IS NULL THEN clock_timestamp() ELSE finished_at END \
       WHERE $5 = 'succeeded' AND run_id IN (SELECT run_id FROM u) \
       RETURNING run_id, open, succeeded, total, stop, timeout_ms, open = 0 AND stop IS NULL AS finished) \
     SELECT u.name, u.children, (SELECT array_agg(p.position) FROM p WHERE p.state = 'ready') AS ready, \
       r.stop AS run_stop, r.concurrency, r.timeout_ms AS run_timeout_ms, r.queue, \
       c.open, c.succeeded, c.total, c.stop, c.timeout_ms, c.finished \
       FROM u CROSS JOIN r LEFT JOIN c ON TRUE";

const FILL: &str = "UPDATE tasks SET state = 'ready', ready_at = clock_timestamp() \
     WHERE run_id = $1 AND state = 'held' AND position IN (\
       SELECT position FROM tasks WHERE run_id = $1 AND state = 'held' ORDER BY position \
       LIMIT GREATEST(0, $2 - (SELECT count(*) FROM tasks WHERE run_id = $1 AND state IN ('ready', 'claimed')))) \
     RETURNING position";

const SKIP_DESCENDANTS: &str = "WITH RECURSIVE d(position) AS (\
       SELECT unnest($2::int[]) \
       UNION SELECT unnest(t.children) FROM tasks t JOIN d ON t.run_id = $1 AND t.position = d.position) \
     UPDATE tasks SET state = 'skipped', skip_reason = $3, finished_at = clock_timestamp() \
     WHERE run_id = $1 AND state IN ('waiting', 'held') AND position IN (SELECT position FROM d)";

const COUNT_FINAL: &str =
    "UPDATE runs SET open = open - $2, succeeded = succeeded + $3 WHERE run_id = $1 RETURNING open, succeeded, total, stop, timeout_ms";

const FINISH_RUN: &str = "WITH f AS (UPDATE runs SET status = $2, error = $3, finished_at = clock_timestamp(), \
       started_at = COALESCE(started_at, created_at) WHERE run_id = $1 AND finished_at IS NULL RETURNING run_id) \
     SELECT pg_notify($4, run_id) FROM f";

const STOP_TASKS: &str = "UPDATE tasks SET \
       state = CASE WHEN attempt > 0 THEN $2 ELSE $3 END, \
       error = CASE WHEN attempt > 0 THEN $4 ELSE error END, \
       skip_reason = CASE WHEN attempt > 0 THEN skip_reason ELSE $5 END, \
       finished_at = clock_timestamp() \
     WHERE run_id = $1 AND state IN ('waiting', 'held', 'ready')";

const RUN_COLS: &str = "run_id, backend, workflow, version, status, error, entity_id, context::text AS context, input::text AS input, \
     routing::text AS routing, (extract(epoch FROM created_at) * 1000000)::int8 AS created_us, \
     (extract(epoch FROM started_at) * 1000000)::int8 AS started_us, (extract(epoch FROM finished_at) * 1000000)::int8 AS finished_us";

const TASK_COLS: &str = "run_id, name, state, attempt, output::text AS output, error, skip_reason, \
     (extract(epoch FROM started_at) * 1000000)::int8 AS started_us, (extract(epoch FROM finished_at) * 1000000)::int8 AS finished_us";

pub(crate) struct Db {
    pool: PgPool,
    schema: String,
    lease_ms: i64,
    ready_channel: String,
    stop_channel: String,
    done_channel: String,
    /// Definitions known to be in the database: submits send only their id.
    known: Mutex<HashSet<String>>,
    /// `synchronous_commit` of claims and attempt ends (`off` unless
    /// `synchronous_completions`): one lost in a server crash is the same as
    /// a worker lost before it committed, and the lease runs the task again.
    /// Submits, cancels and stops always wait for the disk.
    completion_commit: &'static str,
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

fn claimed_from_row(r: &PgRow) -> Result<Claimed> {
    let outputs: Option<Value> = json(r.try_get("outputs")?, "outputs")?;
    let outputs = match outputs {
        Some(Value::Object(m)) => m.into_iter().filter_map(|(k, v)| k.parse::<i32>().ok().map(|k| (k, v))).collect(),
        _ => HashMap::new(),
    };
    Ok(Claimed {
        run_id: r.try_get("run_id")?,
        position: r.try_get("position")?,
        attempt: r.try_get("attempt")?,
        lost: r.try_get("lost")?,
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
        let n = wf.tasks.len();
        let mut positions = Vec::with_capacity(n);
        let mut names = Vec::with_capacity(n);
        let mut states = Vec::with_capacity(n);
        let mut waiting = Vec::with_capacity(n);
        let mut children = Vec::with_capacity(n);
        let mut reads = Vec::with_capacity(n);
        let mut ready_slots = wf.concurrency.unwrap_or(usize::MAX);
        for t in &wf.tasks {
            positions.push(t.id as i32);
            names.push(t.name.clone());
            let state = if !t.parents.is_empty() {
                "waiting"
            } else if ready_slots > 0 {
                ready_slots -= 1;
                "ready"
            } else {
                "held"
            };
            states.push(state.to_string());
            waiting.push(t.parents.len() as i32);
            children.push(int_array(&t.children));
            reads.push(int_array(&t.reads));
        }
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
                .bind(n as i32)
                .bind(&positions)
                .bind(&names)
                .bind(&states)
                .bind(&waiting)
                .bind(&children)
                .bind(&reads);
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

    pub(crate) async fn definition(&self, id: &str) -> Result<String> {
        let text: Option<String> =
            sqlx::query_scalar("SELECT definition::text FROM definitions WHERE id = $1").bind(id).fetch_optional(&self.pool).await?;
        text.ok_or_else(|| DbError::Data(format!("no definition {id} in the queue")))
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

    /// End an attempt in one transaction: record it, then promote the
    /// children (success), retry it, or fail it and skip its descendants;
    /// finish the run when nothing is left. `owner`: the worker holding the
    /// lease (`None`: the reaper, for an expired lease). `claim_max`: how
    /// many promoted children to claim for `owner` in the same transaction.
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn finish_attempt(
        &self,
        run_id: &str,
        position: i32,
        attempt: i32,
        owner: Option<&str>,
        worker: &str,
        outcome: Outcome,
        claim_max: usize,
    ) -> Result<Finish> {
        let mut tx = self.pool.begin().await?;
        // Only an attempt that may retry depends on the run's stop before it
        // is recorded; the others learn it from FINISH_TASK.
        let early_stop = if matches!(outcome, Outcome::Stopped | Outcome::Retry { .. } | Outcome::Crashed { .. }) {
            let run =
                sqlx::query("SELECT stop FROM runs WHERE run_id = $1 FOR NO KEY UPDATE").bind(run_id).fetch_optional(&mut *tx).await?;
            let Some(run) = run else {
                return Ok(Finish { stale: true, ..Finish::default() });
            };
            StopKind::parse(run.try_get::<Option<String>, _>("stop")?.as_deref())
        } else {
            None
        };
        // A stopped run retries nothing; a stopped attempt ends as the run's stop says.
        let outcome = match (outcome, early_stop) {
            (Outcome::Stopped, Some(k)) | (Outcome::Retry { .. }, Some(k)) => {
                let (status, error) = k.attempt_end();
                Outcome::Final { status, error: error.into(), crash: false }
            }
            (Outcome::Crashed { .. }, Some(k)) => {
                let (status, error) = k.attempt_end();
                Outcome::Final { status, error: error.into(), crash: true }
            }
            (o, _) => o,
        };
        // (task state, output, task error, delay ms, lost, crash, attempt status, attempt error)
        let (state, output, task_error, delay_ms, lost, crash, attempt_status, attempt_error) = match &outcome {
            Outcome::Succeeded(v) => {
                ("succeeded", Some(serde_json::to_string(v).unwrap_or_else(|_| "null".into())), None, 0i64, 0, 0, "succeeded", None)
            }
            Outcome::Retry { status, error, delay } => {
                ("ready", None, Some(error.clone()), delay.as_millis() as i64, 0, 0, status.as_str(), Some(error.clone()))
            }
            Outcome::Final { status, error, crash } => {
                let attempt_status = if *crash { "failed" } else { status.as_str() };
                (status.as_str(), None, Some(error.clone()), 0, 0, i32::from(*crash), attempt_status, Some(error.clone()))
            }
            Outcome::Crashed { error } => ("ready", None, Some(error.clone()), 0, 1, 1, "failed", Some(error.clone())),
            Outcome::Stopped => {
                let msg = "handed back: the worker running it stopped".to_string();
                ("ready", None, Some(msg.clone()), 0, 1, 0, "cancelled", Some(msg))
            }
        };
        let row = sqlx::query(FINISH_TASK)
            .bind(run_id)
            .bind(position)
            .bind(attempt)
            .bind(owner)
            .bind(state)
            .bind(output)
            .bind(task_error)
            .bind(delay_ms)
            .bind(lost)
            .bind(crash)
            .bind(attempt_status)
            .bind(attempt_error)
            .bind(worker)
            .bind(self.completion_commit)
            .fetch_optional(&mut *tx)
            .await?;
        let Some(row) = row else {
            tx.rollback().await?;
            return Ok(Finish { stale: true, ..Finish::default() });
        };
        let stop = StopKind::parse(row.try_get::<Option<String>, _>("run_stop")?.as_deref());
        let concurrency: Option<i32> = row.try_get("concurrency")?;
        let timeout_ms: Option<i64> = row.try_get("run_timeout_ms")?;
        let queue: String = row.try_get("queue")?;
        let name: String = row.try_get("name")?;
        let children: Vec<i32> = row.try_get("children")?;
        let mut ready: Vec<i32> = Vec::new();
        let mut finals = 0i32;
        let succeeded = matches!(outcome, Outcome::Succeeded(_));
        match &outcome {
            Outcome::Succeeded(_) => {
                // FINISH_TASK promoted the children and counted the task.
                let promoted: Option<Vec<i32>> = row.try_get("ready")?;
                ready.extend(promoted.unwrap_or_default());
            }
            Outcome::Final { status, .. } => {
                finals += 1;
                if stop.is_none() && !children.is_empty() {
                    let verb = if *status == TaskStatus::TimedOut { "timed out" } else { "failed" };
                    let skipped = sqlx::query(SKIP_DESCENDANTS)
                        .bind(run_id)
                        .bind(&children)
                        .bind(format!("parent {name} {verb}"))
                        .execute(&mut *tx)
                        .await?;
                    finals += skipped.rows_affected() as i32;
                }
            }
            Outcome::Retry { .. } | Outcome::Crashed { .. } | Outcome::Stopped => {
                if delay_ms == 0 {
                    ready.push(position);
                }
            }
        }
        if let Some(cap) = concurrency
            && stop.is_none()
        {
            let filled = sqlx::query(FILL).bind(run_id).bind(i64::from(cap)).fetch_all(&mut *tx).await?;
            for p in filled {
                ready.push(p.try_get("position")?);
            }
        }
        let mut claimed = Vec::new();
        if claim_max > 0
            && let Some(owner) = owner
        {
            let direct: Vec<i32> = ready.iter().copied().filter(|p| *p != position).collect();
            if !direct.is_empty() {
                let rows = sqlx::query(CLAIM_FROM_RUN)
                    .bind(run_id)
                    .bind(claim_max as i64)
                    .bind(owner)
                    .bind(self.lease_ms)
                    .bind(&direct)
                    .bind(self.completion_commit)
                    .fetch_all(&mut *tx)
                    .await?;
                claimed = rows.iter().map(claimed_from_row).collect::<Result<Vec<_>>>()?;
            }
        }
        let mut run_finished = false;
        let mut announce_end = false;
        if succeeded {
            // FINISH_TASK finished the run unless it was asked to stop.
            announce_end = row.try_get::<Option<bool>, _>("finished")?.unwrap_or(false);
            run_finished = announce_end || self.finish_run_if_done(&mut tx, run_id, &row, timeout_ms).await?;
        } else if finals > 0 {
            let c = sqlx::query(COUNT_FINAL).bind(run_id).bind(finals).bind(0i32).fetch_one(&mut *tx).await?;
            run_finished = self.finish_run_if_done(&mut tx, run_id, &c, timeout_ms).await?;
        }
        let wake = (ready.len() > claimed.len() && !run_finished).then_some(queue);
        tx.commit().await?;
        Ok(Finish { stale: false, run_finished, announce_end, wake, claimed })
    }

    /// After the open-task count changed: finish the run when no task is open.
    async fn finish_run_if_done(
        &self,
        tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
        run_id: &str,
        counts: &PgRow,
        timeout_ms: Option<i64>,
    ) -> Result<bool> {
        let open: i32 = counts.try_get("open")?;
        if open > 0 {
            return Ok(false);
        }
        let ok: i32 = counts.try_get("succeeded")?;
        let total: i32 = counts.try_get("total")?;
        let stop = StopKind::parse(counts.try_get::<Option<String>, _>("stop")?.as_deref());
        let timeout = humantime::format_duration(Duration::from_millis(timeout_ms.unwrap_or(0).max(0) as u64)).to_string();
        let (status, error) = match stop {
            Some(StopKind::TimedOut) => (RunStatus::TimedOut, Some(format!("the run timed out after {timeout}"))),
            Some(StopKind::Cancelled) => (RunStatus::Cancelled, Some("the run was cancelled".to_string())),
            None if ok == total => (RunStatus::Succeeded, None),
            None => (RunStatus::Failed, None),
        };
        sqlx::query(FINISH_RUN).bind(run_id).bind(status.as_str()).bind(error).bind(&self.done_channel).execute(&mut **tx).await?;
        Ok(true)
    }

    /// Ask a run to stop: unstarted tasks end now, running ones when their
    /// workers stop them (or their lease expires). `true`: the run finished.
    pub(crate) async fn stop_run(&self, run_id: &str, kind: StopKind) -> Result<bool> {
        Ok(self.stop_run_checked(run_id, kind).await?.unwrap_or(false))
    }

    /// As [`Db::stop_run`]; `None` when there is no such run.
    pub(crate) async fn stop_run_checked(&self, run_id: &str, kind: StopKind) -> Result<Option<bool>> {
        let mut tx = self.pool.begin().await?;
        let run = sqlx::query("SELECT stop, finished_at IS NOT NULL AS finished, timeout_ms FROM runs WHERE run_id = $1 FOR NO KEY UPDATE")
            .bind(run_id)
            .fetch_optional(&mut *tx)
            .await?;
        let Some(run) = run else { return Ok(None) };
        if run.try_get::<bool, _>("finished")? || run.try_get::<Option<String>, _>("stop")?.is_some() {
            tx.rollback().await?;
            return Ok(Some(false));
        }
        let timeout_ms: Option<i64> = run.try_get("timeout_ms")?;
        let (stopped, stopped_error) = kind.attempt_end();
        let (unstarted, reason) = match kind {
            StopKind::Cancelled => (TaskStatus::Cancelled, "run cancelled".to_string()),
            StopKind::TimedOut => (
                TaskStatus::Skipped,
                format!("run timed out after {}", humantime::format_duration(Duration::from_millis(timeout_ms.unwrap_or(0).max(0) as u64))),
            ),
        };
        let n = sqlx::query(STOP_TASKS)
            .bind(run_id)
            .bind(stopped.as_str())
            .bind(unstarted.as_str())
            .bind(stopped_error)
            .bind(reason)
            .execute(&mut *tx)
            .await?
            .rows_affected() as i32;
        let c =
            sqlx::query("UPDATE runs SET stop = $2, open = open - $3 WHERE run_id = $1 RETURNING open, succeeded, total, stop, timeout_ms")
                .bind(run_id)
                .bind(kind.as_str())
                .bind(n)
                .fetch_one(&mut *tx)
                .await?;
        let finished = self.finish_run_if_done(&mut tx, run_id, &c, timeout_ms).await?;
        if !finished {
            sqlx::query("SELECT pg_notify($1, $2)").bind(&self.stop_channel).bind(run_id).execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(Some(finished))
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
