//! Run history: every run and every task attempt, in SQLite (embedded, the
//! default: `.taskweave/state.db`) or PostgreSQL, through sqlx with embedded
//! migrations.
//!
//! The executor writes through a [`StoreWriter`] that batches events into
//! transactions, so recording history costs the hot path an update of an
//! in-memory batch; the local backend queues new runs through it too and
//! waits for the commit of their batch ([`StoreWriter::create_acked`]), so
//! a run is accepted only once it is recorded. [`StoreHealth`] says
//! whether writes succeed; `lease.rs` holds the instance leases that tell
//! runs whose process died.
//! Everything else (the CLI's `runs`, the API, cancel requests from other
//! processes, recovery of runs whose process died) goes through [`Store`].
//!
//! This module touches only the database it is given; it knows nothing of
//! backends or workflows beyond the pinned definition it keeps as JSON.

mod health;
mod lease;
mod rollout;
mod sql;
mod writer;

pub use health::{StoreFailure, StoreHealth};
pub use lease::{HEARTBEAT, LEASE, Lease, Recovered, instance_id};
pub use rollout::{BackendStats, RolloutFilter, RolloutStats, VariantStats};

pub use writer::StoreWriter;

use crate::run::{RunResult, RunStatus, TaskResult};
use serde_json::Value;
use sql::{Dialect, Sql, Stmt, Val, definition_id, json_text};
use sqlx::postgres::{PgPool, PgRow};
use sqlx::sqlite::{SqlitePool, SqliteRow};
use std::collections::{HashMap, VecDeque};
use std::path::Path;
use std::sync::{Arc, OnceLock};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store: {0}")]
    Db(String),
    #[error("store: bad URL `{0}` (expected sqlite://PATH, sqlite::memory: or postgres://...)")]
    BadUrl(String),
    /// The database could not be reached, created or opened.
    #[error("store: cannot open the store at {location}: {reason}")]
    Open { location: String, reason: String },
    /// The database was migrated by a later release than this one.
    #[error(
        "the store at {location} was created by a newer taskweave (schema version {version}); \
         this taskweave knows schema versions up to {known}"
    )]
    NewerSchema { location: String, version: i64, known: i64 },
    /// A write failed: the store cannot record anything now (a full disk,
    /// a read-only file, a database that went away).
    #[error("store: cannot write to {location}: {reason}")]
    Unavailable { location: String, reason: String },
    #[error("store: a run `{0}` exists already")]
    RunExists(String),
    /// The background writer is gone (its runtime shut down, or it was never started).
    #[error("store: the history writer has stopped; recent updates were not recorded")]
    WriterStopped,
}

pub type Result<T> = std::result::Result<T, StoreError>;

/// Filters of `runs list` / `GET /v1/runs`.
#[derive(Debug, Clone, Default)]
pub struct RunFilter {
    pub workflow: Option<String>,
    pub status: Option<RunStatus>,
    pub limit: Option<u32>,
}

/// How many runs [`Store::list_runs`] returns when the filter sets no limit.
pub const DEFAULT_LIST_LIMIT: u32 = 50;

/// How many ids [`Store::run_ids_by_prefix`] returns at most.
pub const PREFIX_MATCH_LIMIT: u32 = 100;

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

pub use crate::run::record::AttemptRecord;

/// The process executing a run: what orphan recovery checks.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Owner {
    pub host: String,
    pub pid: u32,
    /// The engine instance (see [`Lease`]); `None` for runs recorded before
    /// instances existed, judged by host and pid alone.
    pub instance: Option<String>,
}

impl Owner {
    /// This process on this host, as the instance [`instance_id`] names.
    pub fn current() -> Owner {
        Owner { host: hostname().to_string(), pid: std::process::id(), instance: Some(instance_id().to_string()) }
    }
}

/// The location of an in-memory SQLite store.
const MEMORY: &str = "sqlite::memory:";

/// The newest schema this build knows.
pub const SCHEMA_VERSION: i64 = 7;

/// Where sqlx records applied migrations. Not sqlx's default name, so the
/// store can share a PostgreSQL database with other sqlx users.
const MIGRATIONS_TABLE: &str = "_taskweave_store_migrations";

/// Migration files, embedded. A file is never edited once released (sqlx
/// checks a checksum); a change is a new numbered file.
const SQLITE_MIGRATIONS: &[(i64, &str, &str)] = &[
    (1, "run history", include_str!("migrations/sqlite/0001_run_history.sql")),
    (2, "definitions and implicit tasks", include_str!("migrations/sqlite/0002_definitions_and_implicit_tasks.sql")),
    (3, "routing columns", include_str!("migrations/sqlite/0003_routing_columns.sql")),
    (4, "instance leases", include_str!("migrations/sqlite/0004_instance_leases.sql")),
    (5, "run output", include_str!("migrations/sqlite/0005_run_output.sql")),
    (6, "idempotency keys", include_str!("migrations/sqlite/0006_idempotency_keys.sql")),
    (7, "retry of", include_str!("migrations/sqlite/0007_retry_of.sql")),
];
const POSTGRES_MIGRATIONS: &[(i64, &str, &str)] = &[
    (1, "run history", include_str!("migrations/postgres/0001_run_history.sql")),
    (2, "definitions and implicit tasks", include_str!("migrations/postgres/0002_definitions_and_implicit_tasks.sql")),
    (3, "routing columns", include_str!("migrations/postgres/0003_routing_columns.sql")),
    (4, "instance leases", include_str!("migrations/postgres/0004_instance_leases.sql")),
    (5, "run output", include_str!("migrations/postgres/0005_run_output.sql")),
    (6, "idempotency keys", include_str!("migrations/postgres/0006_idempotency_keys.sql")),
    (7, "retry of", include_str!("migrations/postgres/0007_retry_of.sql")),
];

/// What [`Store::claim_idempotency_key`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IdempotencyClaim {
    /// The key is now the new run's.
    Taken,
    /// A run started with this key within the window.
    Held { run_id: String, fingerprint: String },
}

fn sql_str(s: &'static str) -> sqlx::SqlStr {
    sqlx::SqlSafeStr::into_sql_str(s)
}

/// A handle on the run history. Cheap to clone; every clone shares one pool.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("location", &self.inner.location).field("dialect", &self.inner.sql.dialect).finish()
    }
}

pub(crate) struct Inner {
    pool: Pool,
    pub(crate) sql: Sql,
    location: String,
    pub(crate) owner: Owner,
    /// An SQLite file in WAL mode, whose log the writer checkpoints.
    pub(crate) wal: bool,
    /// Whether writes succeed, as the last one found.
    pub(crate) health: Arc<StoreHealth>,
}

enum Pool {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

/// Runs `$body` once per pool kind, with `$p` the pool and `$db` the sqlx
/// database type, so one piece of code serves both databases.
macro_rules! with_pool {
    ($pool:expr, |$p:ident, $db:ident| $body:block) => {
        match $pool {
            Pool::Sqlite($p) => {
                #[allow(clippy::upper_case_acronyms)]
                type $db = sqlx::Sqlite;
                $body
            }
            Pool::Postgres($p) => {
                #[allow(clippy::upper_case_acronyms)]
                type $db = sqlx::Postgres;
                $body
            }
        }
    };
}

/// A query for `$db` with the statement's arguments bound.
macro_rules! bound {
    ($db:ty, $stmt:expr) => {{
        let Stmt { sql, args } = $stmt;
        args.into_iter().fold(sqlx::query::<$db>(sql), |q, a| BindVal::bind_val(q, a))
    }};
}

/// Binding a [`Val`], which arrays make database-specific.
trait BindVal {
    fn bind_val(self, v: Val) -> Self;
}

impl BindVal for sqlx::query::Query<'_, sqlx::Sqlite, <sqlx::Sqlite as sqlx::Database>::Arguments> {
    fn bind_val(self, v: Val) -> Self {
        match v {
            Val::Text(v) => self.bind(v),
            Val::Shared(v) => self.bind(v),
            Val::Int(v) => self.bind(v),
            Val::Bool(v) => self.bind(v),
            // Never built for SQLite; bound as JSON should that change.
            Val::Texts(v) => self.bind(serde_json::to_string(&v).unwrap_or_default()),
            Val::Ints(v) => self.bind(serde_json::to_string(&v).unwrap_or_default()),
            Val::Bools(v) => self.bind(serde_json::to_string(&v).unwrap_or_default()),
        }
    }
}

impl BindVal for sqlx::query::Query<'_, sqlx::Postgres, <sqlx::Postgres as sqlx::Database>::Arguments> {
    fn bind_val(self, v: Val) -> Self {
        match v {
            Val::Text(v) => self.bind(v),
            Val::Shared(v) => self.bind(v.map(|s| s.to_string())),
            Val::Int(v) => self.bind(v),
            Val::Bool(v) => self.bind(v),
            Val::Texts(v) => self.bind(v),
            Val::Ints(v) => self.bind(v),
            Val::Bools(v) => self.bind(v),
        }
    }
}

/// Column access common to both databases' rows.
trait DbRow {
    fn text(&self, col: &str) -> Result<Option<String>>;
    fn int(&self, col: &str) -> Result<Option<i64>>;

    fn req_text(&self, col: &str) -> Result<String> {
        self.text(col)?.ok_or_else(|| StoreError::Db(format!("column `{col}` is unexpectedly empty")))
    }
}

macro_rules! impl_db_row {
    ($row:ty) => {
        impl DbRow for $row {
            fn text(&self, col: &str) -> Result<Option<String>> {
                sqlx::Row::try_get::<Option<String>, _>(self, col).map_err(|e| StoreError::Db(format!("reading column `{col}`: {e}")))
            }
            fn int(&self, col: &str) -> Result<Option<i64>> {
                sqlx::Row::try_get::<Option<i64>, _>(self, col).map_err(|e| StoreError::Db(format!("reading column `{col}`: {e}")))
            }
        }
    };
}
impl_db_row!(SqliteRow);
impl_db_row!(PgRow);

/// One statement of a [`Script`].
pub(crate) enum Step {
    Execute(Stmt),
    /// An insert returning the keys of the rows it inserted.
    Insert(Stmt),
}

/// Statements run in one transaction, each made once the previous one ran,
/// so a long script never holds all its values at once and can depend on
/// what came before.
pub(crate) trait Script: Send {
    /// The next statement; `None` commits.
    fn next(&mut self) -> Option<Step>;
    /// What the statement `next` gave last did: the rows it affected and,
    /// for an [`Step::Insert`], the keys it returned.
    fn done(&mut self, affected: u64, inserted: Vec<String>);
}

/// Statements given up front. With `stop_unless`, the rest is skipped when
/// the statement at that index affects no row.
struct Steps {
    steps: VecDeque<Step>,
    stop_unless: Option<usize>,
    affected: Vec<u64>,
}

impl Steps {
    fn new(steps: impl IntoIterator<Item = Step>, stop_unless: Option<usize>) -> Steps {
        Steps { steps: steps.into_iter().collect(), stop_unless, affected: Vec::new() }
    }

    /// Whether the statement at `i` ran and affected no row.
    fn none_at(&self, i: usize) -> bool {
        self.affected.get(i) == Some(&0)
    }
}

impl Script for Steps {
    fn next(&mut self) -> Option<Step> {
        if self.stop_unless.is_some_and(|i| self.none_at(i)) {
            return None;
        }
        self.steps.pop_front()
    }

    fn done(&mut self, affected: u64, _inserted: Vec<String>) {
        self.affected.push(affected);
    }
}

/// How a new run's tasks are recorded.
pub(crate) struct NewRun<'a> {
    /// Every task is named by the definition, and the definition names no
    /// other: its pending tasks need no row.
    pub implicit_pending: bool,
    /// The tasks written now, `(name, position, state)`: every task, or with
    /// `implicit_pending` those not pending.
    pub rows: Vec<(&'a str, i64, &'a TaskResult)>,
}

impl<'a> NewRun<'a> {
    /// Tasks keep the order of `definition.tasks` when it lists them.
    pub fn of(run: &'a RunResult, definition: &'a Value) -> NewRun<'a> {
        let mut order: HashMap<&str, i64> = HashMap::new();
        if let Some(tasks) = definition.get("tasks").and_then(Value::as_array) {
            order.reserve(tasks.len());
            for (i, t) in tasks.iter().enumerate() {
                if let Some(name) = t.get("name").and_then(Value::as_str) {
                    order.entry(name).or_insert(i as i64);
                }
            }
        }
        let implicit_pending =
            !run.tasks.is_empty() && order.len() == run.tasks.len() && run.tasks.keys().all(|name| order.contains_key(name.as_str()));
        let fallback = order.len() as i64;
        let pending = TaskResult::pending();
        let rows = run
            .tasks
            .iter()
            .enumerate()
            .filter(|(_, (_, t))| !implicit_pending || **t != pending)
            .map(|(i, (name, t))| (name.as_str(), order.get(name.as_str()).copied().unwrap_or(fallback + i as i64), t))
            .collect();
        NewRun { implicit_pending, rows }
    }
}

impl Inner {
    async fn fetch<T>(&self, what: &str, stmt: Stmt, f: impl Fn(&dyn DbRow) -> Result<T>) -> Result<Vec<T>> {
        with_pool!(&self.pool, |p, DB| {
            let rows = bound!(DB, stmt).fetch_all(p).await.map_err(|e| db_error(what, &e))?;
            rows.iter().map(|r| f(r)).collect()
        })
    }

    async fn execute(&self, what: &str, stmt: Stmt) -> Result<u64> {
        with_pool!(&self.pool, |p, DB| { bound!(DB, stmt).execute(p).await.map(|r| r.rows_affected()).map_err(|e| db_error(what, &e)) })
    }

    /// Runs the statements in one transaction; rows affected by each.
    pub(crate) async fn transaction(&self, stmts: Vec<Stmt>) -> std::result::Result<Vec<u64>, sqlx::Error> {
        let mut script = Steps::new(stmts.into_iter().map(Step::Execute), None);
        self.run_script(&mut script).await?;
        Ok(script.affected)
    }

    /// Copies what SQLite's write-ahead log holds into the database, as far
    /// as readers allow, without blocking anyone.
    pub(crate) async fn checkpoint(&self) -> std::result::Result<(), sqlx::Error> {
        if let Pool::Sqlite(p) = &self.pool {
            sqlx::query("PRAGMA wal_checkpoint(PASSIVE)").execute(p).await?;
        }
        Ok(())
    }

    /// Runs the script in one transaction.
    ///
    /// A connection whose transaction failed is closed, never given back
    /// to the pool: SQLite may leave a transaction open after a failed
    /// COMMIT (a full disk, an I/O error), and a connection reused in that
    /// state would take later writes into a transaction that never
    /// commits, while holding the write lock.
    pub(crate) async fn run_script(&self, script: &mut dyn Script) -> std::result::Result<(), sqlx::Error> {
        with_pool!(&self.pool, |p, DB| {
            let mut conn = p.acquire().await?;
            let result = async {
                let mut tx = sqlx::Connection::begin(&mut *conn).await?;
                while let Some(step) = script.next() {
                    match step {
                        Step::Execute(s) => {
                            let n = bound!(DB, s).execute(&mut *tx).await?.rows_affected();
                            script.done(n, Vec::new());
                        }
                        Step::Insert(s) => {
                            let rows = bound!(DB, s).fetch_all(&mut *tx).await?;
                            let keys =
                                rows.iter().map(|r| sqlx::Row::try_get::<String, _>(r, 0)).collect::<std::result::Result<Vec<_>, _>>()?;
                            script.done(keys.len() as u64, keys);
                        }
                    }
                }
                tx.commit().await
            }
            .await;
            // The one connection of an in-memory database is the database.
            if result.is_err() && self.location != MEMORY {
                let _ = conn.close().await;
            }
            result
        })
    }
}

impl Store {
    /// Opens (creating and migrating when needed) the store at `url`:
    /// `sqlite://PATH`, `sqlite::memory:`, `postgres://...` or `postgresql://...`.
    pub async fn open(url: &str) -> Result<Store> {
        Store::open_as(url, true).await
    }

    /// Opens the store at `url` when it exists, creating nothing: `Ok(None)`
    /// when it is an SQLite file that does not exist (no run history yet).
    /// What read-only commands use, so that looking creates no file.
    pub async fn open_existing(url: &str) -> Result<Option<Store>> {
        if let Some(path) = sqlite_file(url.trim())
            && !path.exists()
        {
            return Ok(None);
        }
        Store::open_as(url, false).await.map(Some)
    }

    /// Where an SQLite file store lives, if `url` names one.
    pub fn sqlite_path(url: &str) -> Option<&Path> {
        sqlite_file(url.trim())
    }

    async fn open_as(url: &str, create: bool) -> Result<Store> {
        let url = url.trim();
        let (pool, dialect, location) = if url.starts_with("sqlite::memory:") {
            (open_sqlite_memory().await?, Dialect::Sqlite, "sqlite::memory:".to_string())
        } else if let Some(path) = url.strip_prefix("sqlite://").or_else(|| url.strip_prefix("sqlite:")) {
            if path.is_empty() || path.contains('?') {
                return Err(StoreError::BadUrl(url.to_string()));
            }
            (open_sqlite_file(Path::new(path), create).await?, Dialect::Sqlite, path.to_string())
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            let location = redact(url);
            (open_postgres(url, &location).await?, Dialect::Postgres, location)
        } else {
            return Err(StoreError::BadUrl(url.to_string()));
        };
        let wal = dialect == Dialect::Sqlite && location != "sqlite::memory:";
        let inner =
            Inner { pool, sql: Sql::new(dialect, MIGRATIONS_TABLE), location, owner: Owner::current(), wal, health: Arc::default() };
        migrate(&inner).await?;
        Ok(Store { inner: Arc::new(inner) })
    }

    /// Where the store lives, for messages (a PostgreSQL password is masked).
    pub fn location(&self) -> &str {
        &self.inner.location
    }

    /// Whether writes succeed: failed writes are counted, and the store is
    /// failing from a failed write until one succeeds.
    pub fn health(&self) -> &Arc<StoreHealth> {
        &self.inner.health
    }

    /// Closes every connection; later calls on any clone fail.
    pub async fn close(&self) {
        match &self.inner.pool {
            Pool::Sqlite(p) => p.close().await,
            Pool::Postgres(p) => p.close().await,
        }
    }

    /// Records a new run and its tasks as they are (normally pending), with
    /// the pinned workflow definition, owned by this process; in one
    /// transaction. Tasks keep the order of `definition.tasks` when it lists
    /// them. When the definition names exactly the run's tasks, pending
    /// tasks get no row: they are read back as pending from the definition.
    /// [`StoreWriter::create`] does the same without waiting.
    pub async fn create_run(&self, run: &RunResult, definition: &Value) -> Result<()> {
        let sql = &self.inner.sql;
        let new = NewRun::of(run, definition);
        let text = json_text(definition);
        let id = definition_id(&text);
        let insert_definition = sql.insert_definitions.stmt(1, vec![Val::Text(Some(id.clone())), Val::Text(Some(text))]);
        let mut args = Vec::with_capacity(sql.insert_runs.width());
        sql::push_run(run, &self.inner.owner, &mut args);
        args.push(Val::Text(Some(id)));
        args.push(Val::Bool(new.implicit_pending));
        let insert_run = sql.insert_runs.stmt(1, args);
        let tasks: Vec<(&str, &str, i64, &TaskResult)> =
            new.rows.iter().map(|(name, position, t)| (run.run_id.as_str(), *name, *position, *t)).collect();
        let mut stmts = Vec::new();
        sql.upsert_tasks(&tasks, &mut stmts);
        let steps = [Step::Execute(insert_definition), Step::Insert(insert_run)].into_iter().chain(stmts.into_iter().map(Step::Execute));
        let mut script = Steps::new(steps, Some(1));
        if let Err(e) = self.inner.run_script(&mut script).await {
            let reason = format!("recording run {}: {}", run.run_id, describe(&e));
            self.inner.health.failed(&reason);
            return Err(StoreError::Unavailable { location: self.inner.location.clone(), reason });
        }
        self.inner.health.succeeded();
        if script.none_at(1) {
            return Err(StoreError::RunExists(run.run_id.clone()));
        }
        Ok(())
    }

    /// Writes the run's fields and every task (inserting what is missing),
    /// in one transaction. The owner, definition and cancel request are kept.
    /// Not ordered with a [`StoreWriter`]'s queue: flush it first.
    pub async fn save_run(&self, run: &RunResult) -> Result<()> {
        let sql = &self.inner.sql;
        let mut stmts = Vec::new();
        sql.upsert_runs(&[run], &self.inner.owner, &mut stmts);
        let tasks: Vec<(&str, &str, i64, &TaskResult)> =
            run.tasks.iter().enumerate().map(|(i, (name, t))| (run.run_id.as_str(), name.as_str(), i as i64, t)).collect();
        sql.upsert_tasks(&tasks, &mut stmts);
        self.inner.transaction(stmts).await.map_err(|e| db_error(&format!("saving run {}", run.run_id), &e))?;
        Ok(())
    }

    pub async fn get_run(&self, id: &str) -> Result<Option<RunResult>> {
        let sql = &self.inner.sql;
        let what = format!("reading run {id}");
        let Some(mut run) = self.inner.fetch(&what, stmt(&sql.get_run, [id]), run_from_row).await?.pop() else {
            return Ok(None);
        };
        let tasks = self.inner.fetch(&what, stmt(&sql.get_tasks, [id]), task_from_row).await?;
        run.tasks = tasks.into_iter().collect();
        Ok(Some(run))
    }

    /// Runs matching the filter, newest first, at most `limit` (default 50).
    pub async fn list_runs(&self, f: &RunFilter) -> Result<Vec<RunSummary>> {
        let limit = i64::from(f.limit.unwrap_or(DEFAULT_LIST_LIMIT));
        let q = self.inner.sql.list_runs(f.workflow.as_deref(), f.status.map(RunStatus::as_str), limit);
        self.inner.fetch("listing runs", q, summary_from_row).await
    }

    /// The workflow definition the run pinned when it was created.
    pub async fn get_definition(&self, id: &str) -> Result<Option<Value>> {
        let rows = self
            .inner
            .fetch(&format!("reading the definition of run {id}"), stmt(&self.inner.sql.get_definition, [id]), |r| {
                r.text("definition")?.map(|s| parse_json("definition", &s)).transpose()
            })
            .await?;
        Ok(rows.into_iter().next().flatten())
    }

    /// Every recorded attempt of the run's tasks, in the order they started.
    pub async fn attempts(&self, run_id: &str) -> Result<Vec<AttemptRecord>> {
        self.inner
            .fetch(&format!("reading the attempts of run {run_id}"), stmt(&self.inner.sql.get_attempts, [run_id]), attempt_from_row)
            .await
    }

    /// Take `key` for the run `run_id` about to start, unless a run took it
    /// within `window`: then that run's id and its request's fingerprint.
    /// One statement decides, so of concurrent requests with one key
    /// exactly one takes it (the key is the table's primary key); a key
    /// older than the window is taken anew.
    pub async fn claim_idempotency_key(
        &self,
        key: &str,
        fingerprint: &str,
        run_id: &str,
        window: std::time::Duration,
    ) -> Result<IdempotencyClaim> {
        let now_ms = (time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64;
        let expired_before = now_ms.saturating_sub(window.as_millis().min(i64::MAX as u128) as i64);
        for _ in 0..3 {
            let take = Stmt {
                sql: sql_str(
                    "INSERT INTO idempotency_keys (key, fingerprint, run_id, created_ms) VALUES ($1, $2, $3, $4) \
                     ON CONFLICT (key) DO UPDATE SET fingerprint = excluded.fingerprint, run_id = excluded.run_id, \
                     created_ms = excluded.created_ms WHERE idempotency_keys.created_ms < $5 RETURNING run_id",
                ),
                args: vec![
                    Val::Text(Some(key.to_string())),
                    Val::Text(Some(fingerprint.to_string())),
                    Val::Text(Some(run_id.to_string())),
                    Val::Int(Some(now_ms)),
                    Val::Int(Some(expired_before)),
                ],
            };
            if !self.inner.fetch("taking an idempotency key", take, |r| r.req_text("run_id")).await?.is_empty() {
                return Ok(IdempotencyClaim::Taken);
            }
            let read = Stmt {
                sql: sql_str("SELECT run_id, fingerprint FROM idempotency_keys WHERE key = $1"),
                args: vec![Val::Text(Some(key.to_string()))],
            };
            let held =
                self.inner.fetch("reading an idempotency key", read, |r| Ok((r.req_text("run_id")?, r.req_text("fingerprint")?))).await?;
            if let Some((run_id, fingerprint)) = held.into_iter().next() {
                return Ok(IdempotencyClaim::Held { run_id, fingerprint });
            }
            // Released between the two statements: try again.
        }
        Err(StoreError::Db(format!("the idempotency key `{key}` changed hands while it was read")))
    }

    /// Give back a key taken for a run that did not start.
    pub async fn release_idempotency_key(&self, key: &str, run_id: &str) -> Result<()> {
        let q = Stmt {
            sql: sql_str("DELETE FROM idempotency_keys WHERE key = $1 AND run_id = $2"),
            args: vec![Val::Text(Some(key.to_string())), Val::Text(Some(run_id.to_string()))],
        };
        self.inner.execute("releasing an idempotency key", q).await.map(|_| ())
    }

    /// Asks whoever executes the run to cancel it. `false` when the run is
    /// unknown or already finished.
    pub async fn request_cancel(&self, id: &str) -> Result<bool> {
        let q = Stmt { sql: self.inner.sql.request_cancel.clone(), args: vec![Val::Text(Some(id.to_string())), Val::Bool(true)] };
        let n = self.inner.execute(&format!("requesting cancellation of run {id}"), q).await?;
        Ok(n > 0)
    }

    /// Which of these runs (still queued or running) have a cancel request.
    pub async fn cancel_requested(&self, ids: &[String]) -> Result<Vec<String>> {
        if ids.is_empty() {
            return Ok(vec![]);
        }
        let q = Stmt {
            sql: self.inner.sql.cancel_requested.clone(),
            args: vec![Val::Text(Some(serde_json::to_string(ids).unwrap_or_else(|_| "[]".into()))), Val::Bool(true)],
        };
        self.inner.fetch("reading cancel requests", q, |r| r.req_text("run_id")).await
    }

    /// Ids starting with `prefix` (at most [`PREFIX_MATCH_LIMIT`], sorted), so
    /// a short id can name a run. An empty prefix matches nothing.
    /// Ids ending with `suffix` (at most [`PREFIX_MATCH_LIMIT`], sorted): the
    /// end of a UUIDv7 is random, where its start is the time, so a few
    /// characters from the end name a run. An empty suffix matches nothing.
    pub async fn run_ids_by_suffix(&self, suffix: &str) -> Result<Vec<String>> {
        if suffix.is_empty() {
            return Ok(vec![]);
        }
        let q = self.inner.sql.ids_by_suffix(suffix, i64::from(PREFIX_MATCH_LIMIT));
        self.inner.fetch("looking up run ids", q, |r| r.req_text("run_id")).await
    }

    pub async fn run_ids_by_prefix(&self, prefix: &str) -> Result<Vec<String>> {
        if prefix.is_empty() {
            return Ok(vec![]);
        }
        let q = self.inner.sql.ids_by_prefix(prefix, i64::from(PREFIX_MATCH_LIMIT));
        self.inner.fetch("looking up run ids", q, |r| r.req_text("run_id")).await
    }

    /// The process recorded as executing the run.
    pub async fn owner(&self, run_id: &str) -> Result<Option<Owner>> {
        let rows = self
            .inner
            .fetch(&format!("reading the owner of run {run_id}"), stmt(&self.inner.sql.get_owner, [run_id]), |r| {
                Ok(match (r.text("owner_host")?, r.int("owner_pid")?) {
                    (Some(host), Some(pid)) => {
                        Some(Owner { host, pid: u32::try_from(pid).unwrap_or(0), instance: r.text("owner_instance")? })
                    }
                    _ => None,
                })
            })
            .await?;
        Ok(rows.into_iter().next().flatten())
    }

    /// Records `owner` as the process executing the run (a worker taking it
    /// over). `false` when the run is unknown.
    pub async fn set_owner(&self, run_id: &str, owner: &Owner) -> Result<bool> {
        let q = Stmt {
            sql: self.inner.sql.set_owner.clone(),
            args: vec![
                Val::Text(Some(run_id.to_string())),
                Val::Text(Some(owner.host.clone())),
                Val::Int(Some(i64::from(owner.pid))),
                Val::Text(owner.instance.clone()),
            ],
        };
        let n = self.inner.execute(&format!("setting the owner of run {run_id}"), q).await?;
        Ok(n > 0)
    }

    /// A batched writer for the executor. Each call starts one background
    /// task (within the current Tokio runtime) shared by the writer's clones;
    /// it ends when they are all dropped, after writing what they sent.
    pub fn writer(&self) -> StoreWriter {
        writer::spawn(self.inner.clone())
    }

    /// A batched writer (see [`Store::writer`]) as the executor records
    /// through it.
    pub fn recorder(&self) -> std::sync::Arc<dyn crate::run::record::Recorder> {
        std::sync::Arc::new(self.writer())
    }
}

fn stmt<const N: usize>(sql: &sqlx::SqlStr, args: [&str; N]) -> Stmt {
    Stmt { sql: sql.clone(), args: args.iter().map(|a| Val::Text(Some(a.to_string()))).collect() }
}

fn db_error(what: &str, e: &sqlx::Error) -> StoreError {
    StoreError::Db(format!("{what}: {}", describe(e)))
}

/// The database's own words when it gave any, without sqlx's wrapping.
pub(crate) fn describe(e: &sqlx::Error) -> String {
    match e {
        sqlx::Error::Database(d) => d.message().to_string(),
        sqlx::Error::PoolTimedOut => "timed out waiting for a database connection".into(),
        sqlx::Error::PoolClosed => "the store was closed".into(),
        sqlx::Error::Io(io) => io.to_string(),
        other => other.to_string(),
    }
}

/// Whether a failed write may succeed later without anyone changing what
/// is written: the database is full, read-only, locked or unreachable,
/// rather than refusing the data itself.
pub(crate) fn may_recover(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut | sqlx::Error::Tls(_) | sqlx::Error::Protocol(_) => true,
        sqlx::Error::Database(d) => {
            let code = d.code().unwrap_or_default();
            if d.try_downcast_ref::<sqlx::sqlite::SqliteError>().is_some() {
                // BUSY, LOCKED, NOMEM, READONLY, IOERR, FULL, CANTOPEN (extended codes keep the primary in the low byte).
                code.parse::<i32>().is_ok_and(|c| matches!(c & 0xff, 5 | 6 | 7 | 8 | 10 | 13 | 14))
            } else {
                // SQLSTATE: connection exceptions, insufficient resources
                // (disk full), operator intervention, read-only
                // transactions, serialization failures and deadlocks.
                code.starts_with("08")
                    || code.starts_with("53")
                    || code.starts_with("57P")
                    || matches!(code.as_ref(), "25006" | "40001" | "40P01")
            }
        }
        _ => false,
    }
}

/// `postgres://user:secret@host/db` -> `postgres://user:***@host/db`.
fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, _)) => format!("{scheme}://{user}:***@{host}{tail}"),
            None => url.to_string(),
        },
        None => url.to_string(),
    }
}

pub(crate) fn hostname() -> &'static str {
    static HOST: OnceLock<String> = OnceLock::new();
    HOST.get_or_init(|| {
        let mut buf = [0u8; 256];
        // SAFETY: `buf` is valid for writes of `buf.len()` bytes; the result
        // is read up to the first NUL or the end of the buffer.
        let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
        if rc != 0 {
            return "localhost".to_string();
        }
        let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
        String::from_utf8_lossy(&buf[..end]).into_owned()
    })
}

/// Whether a process with this pid exists on this host.
fn process_exists(pid: i64) -> bool {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return false;
    };
    if pid <= 0 {
        return false;
    }
    if u32::try_from(pid).ok() == Some(std::process::id()) {
        return true;
    }
    // SAFETY: signal 0 sends nothing; it only checks that the process exists.
    let rc = unsafe { libc::kill(pid, 0) };
    rc == 0 || std::io::Error::last_os_error().raw_os_error() != Some(libc::ESRCH)
}

// After the macros above, which they use.
mod open;
mod rows;
use open::{migrate, open_postgres, open_sqlite_file, open_sqlite_memory, sqlite_file};
use rows::{attempt_from_row, parse_json, run_from_row, summary_from_row, task_from_row};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_masked_in_locations() {
        assert_eq!(redact("postgres://u:secret@h:5432/db"), "postgres://u:***@h:5432/db");
        assert_eq!(redact("postgres://u@h/db"), "postgres://u@h/db");
        assert_eq!(redact("postgresql://h/db?user=x"), "postgresql://h/db?user=x");
    }

    #[test]
    fn this_process_exists_and_a_reaped_child_does_not() {
        assert!(process_exists(i64::from(std::process::id())));
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        child.wait().unwrap();
        assert!(!process_exists(i64::from(pid)));
        assert!(!process_exists(0));
        assert!(!process_exists(-1));
    }

    #[tokio::test]
    async fn bad_urls_are_refused() {
        for url in ["mysql://x", "sqlite://", "", "state.db"] {
            assert!(matches!(Store::open(url).await, Err(StoreError::BadUrl(_))), "{url}");
        }
    }
}
