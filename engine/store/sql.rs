//! The SQL of the run store, written once and rendered for each dialect.
//!
//! Statements are written in PostgreSQL's form; for SQLite the type casts on
//! parameters are dropped and timestamp/JSON columns are read as they are
//! stored (text). Everything is bound as text, integers or booleans, so the
//! same bind code serves both databases.
//!
//! Batched writes differ by dialect. SQLite (in process, no round trips)
//! gets multi-row `VALUES` prepared for power-of-two row counts only, so a
//! batch of any size re-uses a handful of cached statements. PostgreSQL gets
//! one statement per table and chunk of rows, each column bound as an array
//! and `UNNEST`ed. Either way a batch is turned into statements one chunk at
//! a time ([`Upsert::chunk`], [`Upsert::stmt`]), so the values bound at any
//! moment stay bounded whatever the batch size.
//!
//! A run created with its tasks all pending and all named by its definition
//! (the normal case) gets no task rows: its `implicit_pending` flag says that
//! a task of the definition without a row is pending, and [`Sql::get_tasks`]
//! reads them so. Rows appear as tasks move.

use super::StoreError;
use crate::run::{RunResult, RunStatus, TaskResult, TaskStatus};
use serde_json::Value;
use sqlx::{AssertSqlSafe, SqlSafeStr, SqlStr};
use std::sync::{Arc, OnceLock};
use time::format_description::well_known::Rfc3339;
use time::{OffsetDateTime, UtcOffset};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Dialect {
    Sqlite,
    Postgres,
}

/// One bound value. The arrays are built for PostgreSQL only.
#[derive(Debug, Clone)]
pub(crate) enum Val {
    Text(Option<String>),
    /// Text shared by many rows (a run id, a task name, a status): SQLite
    /// binds it without a copy.
    Shared(Option<Arc<str>>),
    Int(Option<i64>),
    Bool(bool),
    Texts(Vec<Option<String>>),
    Ints(Vec<Option<i64>>),
    Bools(Vec<bool>),
}

/// A statement with its arguments, ready to run.
#[derive(Debug)]
pub(crate) struct Stmt {
    pub sql: SqlStr,
    pub args: Vec<Val>,
}

/// How a column is bound (as text, integer or boolean) and stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Text,
    Int,
    Bool,
    /// JSON text; JSONB in PostgreSQL.
    Json,
    /// RFC 3339 text; TIMESTAMPTZ in PostgreSQL.
    Ts,
}

impl Kind {
    /// The cast PostgreSQL needs from the bound type to the column's.
    fn pg_cast(self) -> &'static str {
        match self {
            Kind::Json => "::jsonb",
            Kind::Ts => "::timestamptz",
            Kind::Text | Kind::Int | Kind::Bool => "",
        }
    }

    fn pg_array(self) -> &'static str {
        match self {
            Kind::Int => "int8[]",
            Kind::Bool => "bool[]",
            Kind::Text | Kind::Json | Kind::Ts => "text[]",
        }
    }
}

/// What a batched write does with a row whose key exists.
enum OnConflict {
    /// Replaces these columns.
    Update(&'static [&'static str]),
    /// Keeps the existing row.
    Skip,
    /// Keeps the existing row; the statement returns the keys it inserted.
    SkipReturning,
}

/// A table written in batches.
struct Table {
    name: &'static str,
    /// Columns in bind order.
    cols: &'static [(&'static str, Kind)],
    key: &'static str,
    on_conflict: OnConflict,
    /// Largest row count of one SQLite statement: keeps it well under
    /// SQLite's 32,766 parameters.
    max_rows: usize,
}

use Kind::{Bool, Int, Json, Text, Ts};

/// Rows of one PostgreSQL statement at most (bounds the arrays bound at once).
const PG_MAX_ROWS: usize = 8192;

const RUN_COLS: &[(&str, Kind)] = &[
    ("run_id", Text),
    ("workflow", Text),
    ("version", Text),
    ("status", Text),
    ("backend", Text),
    ("routing", Json),
    ("error", Text),
    ("output", Json),
    ("retry_of", Text),
    ("entity_id", Text),
    ("context", Json),
    ("input", Json),
    ("owner_host", Text),
    ("owner_pid", Int),
    ("owner_instance", Text),
    ("created_at", Ts),
    ("started_at", Ts),
    ("finished_at", Ts),
];

const RUNS: Table = Table {
    name: "runs",
    cols: RUN_COLS,
    key: "run_id",
    // Never the owner, the definition or a cancel request.
    on_conflict: OnConflict::Update(&[
        "workflow",
        "version",
        "status",
        "backend",
        "routing",
        "error",
        "output",
        "entity_id",
        "context",
        "input",
        "created_at",
        "started_at",
        "finished_at",
    ]),
    max_rows: 64,
};

/// Definitions, named by the SHA-256 of their text (see [`definition_id`]).
const DEFINITIONS: Table =
    Table { name: "definitions", cols: &[("id", Text), ("definition", Json)], key: "id", on_conflict: OnConflict::Skip, max_rows: 16 };

/// New runs, naming their definition: inserted unless the id exists.
const CREATES: Table = Table {
    name: "runs",
    cols: &[
        ("run_id", Text),
        ("workflow", Text),
        ("version", Text),
        ("status", Text),
        ("backend", Text),
        ("routing", Json),
        ("error", Text),
        ("output", Json),
        ("retry_of", Text),
        ("entity_id", Text),
        ("context", Json),
        ("input", Json),
        ("owner_host", Text),
        ("owner_pid", Int),
        ("owner_instance", Text),
        ("created_at", Ts),
        ("started_at", Ts),
        ("finished_at", Ts),
        ("definition_id", Text),
        ("implicit_pending", Bool),
    ],
    key: "run_id",
    on_conflict: OnConflict::SkipReturning,
    max_rows: 64,
};

const TASKS: Table = Table {
    name: "tasks",
    cols: &[
        ("run_id", Text),
        ("name", Text),
        ("position", Int),
        ("status", Text),
        ("output", Json),
        ("attempts", Int),
        ("error", Text),
        ("skip_reason", Text),
        ("started_at", Ts),
        ("finished_at", Ts),
    ],
    key: "run_id, name",
    // Never the position: a task keeps its place in the workflow.
    on_conflict: OnConflict::Update(&["status", "output", "attempts", "error", "skip_reason", "started_at", "finished_at"]),
    max_rows: 1024,
};

const ATTEMPTS: Table = Table {
    name: "attempts",
    cols: &[("run_id", Text), ("task", Text), ("attempt", Int), ("status", Text), ("error", Text), ("started_at", Ts), ("finished_at", Ts)],
    key: "run_id, task, attempt",
    on_conflict: OnConflict::Update(&["status", "error", "started_at", "finished_at"]),
    max_rows: 1024,
};

/// The batched write of one table, rendered for one dialect.
#[derive(Debug)]
pub(crate) struct Upsert {
    dialect: Dialect,
    kinds: Vec<Kind>,
    /// SQLite: `stmts[k]` writes `2^k` rows. PostgreSQL: one `UNNEST` statement.
    stmts: Vec<SqlStr>,
}

impl Upsert {
    fn new(d: Dialect, t: &Table) -> Upsert {
        let names: Vec<&str> = t.cols.iter().map(|(c, _)| *c).collect();
        let tail = match t.on_conflict {
            OnConflict::Update(cols) => {
                let set: Vec<String> = cols.iter().map(|c| format!("{c} = excluded.{c}")).collect();
                format!("ON CONFLICT ({}) DO UPDATE SET {}", t.key, set.join(", "))
            }
            OnConflict::Skip => format!("ON CONFLICT ({}) DO NOTHING", t.key),
            OnConflict::SkipReturning => format!("ON CONFLICT ({key}) DO NOTHING RETURNING {key}", key = t.key),
        };
        let stmts = match d {
            Dialect::Sqlite => {
                let row = format!("({})", vec!["?"; t.cols.len()].join(", "));
                let mut out = Vec::new();
                let mut n = 1;
                while n <= t.max_rows {
                    out.push(sql(format!(
                        "INSERT INTO {} ({}) VALUES {} {tail}",
                        t.name,
                        names.join(", "),
                        vec![row.as_str(); n].join(", ")
                    )));
                    n *= 2;
                }
                out
            }
            Dialect::Postgres => {
                let select: Vec<String> = t.cols.iter().map(|(c, k)| format!("{c}{}", k.pg_cast())).collect();
                let arrays: Vec<String> = t.cols.iter().enumerate().map(|(i, (_, k))| format!("${}::{}", i + 1, k.pg_array())).collect();
                vec![sql(format!(
                    "INSERT INTO {table} ({names}) SELECT {select} FROM UNNEST({arrays}) AS u({names}) {tail}",
                    table = t.name,
                    names = names.join(", "),
                    select = select.join(", "),
                    arrays = arrays.join(", "),
                ))]
            }
        };
        Upsert { dialect: d, kinds: t.cols.iter().map(|(_, k)| *k).collect(), stmts }
    }

    /// Values per row.
    pub fn width(&self) -> usize {
        self.kinds.len()
    }

    /// How many of `left` rows the next statement writes (`left` > 0).
    pub fn chunk(&self, left: usize) -> usize {
        match self.dialect {
            Dialect::Sqlite => (1usize << (self.stmts.len() - 1)).min(1usize << left.max(1).ilog2()),
            Dialect::Postgres => left.clamp(1, PG_MAX_ROWS),
        }
    }

    /// The statement writing `rows` rows (a count [`Upsert::chunk`] gave),
    /// whose values `args` holds row after row, in column order.
    pub fn stmt(&self, rows: usize, args: Vec<Val>) -> Stmt {
        debug_assert_eq!(args.len(), rows * self.kinds.len());
        match self.dialect {
            Dialect::Sqlite => Stmt { sql: self.stmts[rows.ilog2() as usize].clone(), args },
            Dialect::Postgres => {
                let width = self.kinds.len();
                let mut cols: Vec<Val> = self
                    .kinds
                    .iter()
                    .map(|k| match k {
                        Kind::Int => Val::Ints(Vec::with_capacity(rows)),
                        Kind::Bool => Val::Bools(Vec::with_capacity(rows)),
                        _ => Val::Texts(Vec::with_capacity(rows)),
                    })
                    .collect();
                for (i, v) in args.into_iter().enumerate() {
                    let kind = self.kinds[i % width];
                    match (&mut cols[i % width], v) {
                        (Val::Texts(col), Val::Text(v)) => col.push(v.map(|s| pg_text(kind, s))),
                        (Val::Texts(col), Val::Shared(v)) => col.push(v.map(|s| pg_text(kind, s.to_string()))),
                        (Val::Ints(col), Val::Int(v)) => col.push(v),
                        (Val::Bools(col), Val::Bool(v)) => col.push(v),
                        (Val::Texts(col), _) => col.push(None),
                        (Val::Ints(col), _) => col.push(None),
                        (Val::Bools(col), _) => col.push(false),
                        _ => {}
                    }
                }
                Stmt { sql: self.stmts[0].clone(), args: cols }
            }
        }
    }

    /// Statements writing all of `rows`; `bind` pushes one row's values in column order.
    fn add<T>(&self, rows: &[T], out: &mut Vec<Stmt>, mut bind: impl FnMut(&T, &mut Vec<Val>)) {
        let mut rest = rows;
        while !rest.is_empty() {
            let n = self.chunk(rest.len());
            let (chunk, tail) = rest.split_at(n);
            let mut args = Vec::with_capacity(n * self.width());
            for row in chunk {
                bind(row, &mut args);
            }
            out.push(self.stmt(n, args));
            rest = tail;
        }
    }
}

/// Every statement of the store, rendered once for one dialect.
#[derive(Debug)]
pub(crate) struct Sql {
    pub dialect: Dialect,
    pub upsert_runs: Upsert,
    pub upsert_tasks: Upsert,
    pub upsert_attempts: Upsert,
    pub insert_runs: Upsert,
    pub insert_definitions: Upsert,
    pub get_run: SqlStr,
    pub get_tasks: SqlStr,
    pub get_definition: SqlStr,
    pub get_attempts: SqlStr,
    pub get_owner: SqlStr,
    pub set_owner: SqlStr,
    pub adopt_run: SqlStr,
    pub request_cancel: SqlStr,
    pub cancel_requested: SqlStr,
    pub orphan_candidates: SqlStr,
    pub renew_lease: SqlStr,
    pub forget_instances: SqlStr,
    pub fail_orphan_run: SqlStr,
    pub cancel_orphan_tasks: SqlStr,
    pub cancel_orphan_implicit_tasks: SqlStr,
    pub cancel_orphan_attempts: SqlStr,
    ids_by_prefix: SqlStr,
    ids_by_suffix: SqlStr,
    list_runs: [SqlStr; 4],
    pub table_exists: SqlStr,
}

fn sql(s: String) -> SqlStr {
    AssertSqlSafe(s).into_sql_str()
}

impl Sql {
    pub fn new(dialect: Dialect, migrations_table: &str) -> Sql {
        let d = dialect;
        let run_sel = format!(
            "run_id, workflow, version, status, backend, {}, error, {}, retry_of, entity_id, {}, {}, {}, {}, {}",
            json_col(d, "routing"),
            json_col(d, "output"),
            json_col(d, "context"),
            json_col(d, "input"),
            ts_col(d, "created_at"),
            ts_col(d, "started_at"),
            ts_col(d, "finished_at"),
        );
        let summary_sel = format!("run_id, workflow, status, backend, {}, {}", ts_col(d, "created_at"), ts_col(d, "finished_at"));
        let list = |filter: &str, limit_param: usize| {
            sql(format!("SELECT {summary_sel} FROM runs {filter} ORDER BY created_at DESC, run_id DESC LIMIT ${limit_param}"))
        };
        let now = match d {
            Dialect::Sqlite => "$3",
            Dialect::Postgres => "$3::timestamptz",
        };
        // The tasks a run's definition names, as `(name, position)` rows of
        // `d`, for runs whose tasks without a row are pending.
        let (defined_tasks, defined_name, defined_position) = match d {
            Dialect::Sqlite => (
                "runs r JOIN definitions df ON df.id = r.definition_id, json_each(df.definition, '$.tasks') AS d \
                 WHERE r.run_id = $1 AND r.implicit_pending AND json_type(d.value, '$.name') = 'text'",
                "json_extract(d.value, '$.name')",
                "d.key",
            ),
            Dialect::Postgres => (
                "runs r JOIN definitions df ON df.id = r.definition_id \
                 CROSS JOIN LATERAL jsonb_array_elements(CASE WHEN jsonb_typeof(df.definition -> 'tasks') = 'array' \
                 THEN df.definition -> 'tasks' ELSE '[]'::jsonb END) WITH ORDINALITY AS d(value, ord) \
                 WHERE r.run_id = $1 AND r.implicit_pending AND jsonb_typeof(d.value -> 'name') = 'string'",
                "(d.value ->> 'name')",
                "(d.ord - 1)",
            ),
        };
        let typed_null = match d {
            Dialect::Sqlite => "NULL",
            Dialect::Postgres => "NULL::text",
        };
        Sql {
            dialect,
            upsert_runs: Upsert::new(d, &RUNS),
            upsert_tasks: Upsert::new(d, &TASKS),
            upsert_attempts: Upsert::new(d, &ATTEMPTS),
            insert_runs: Upsert::new(d, &CREATES),
            insert_definitions: Upsert::new(d, &DEFINITIONS),
            get_run: sql(format!("SELECT {run_sel} FROM runs WHERE run_id = $1")),
            get_tasks: sql(format!(
                "SELECT name, status, {output}, attempts, error, skip_reason, {started}, {finished} FROM tasks WHERE run_id = $1 \
                 UNION ALL \
                 SELECT {defined_name}, 'pending', {typed_null}, 0, {typed_null}, {typed_null}, {typed_null}, {typed_null} \
                 FROM {defined_tasks} \
                 AND NOT EXISTS (SELECT 1 FROM tasks t WHERE t.run_id = r.run_id AND t.name = {defined_name})",
                output = json_col(d, "output"),
                started = ts_col(d, "started_at"),
                finished = ts_col(d, "finished_at"),
            )),
            get_definition: sql(format!(
                "SELECT COALESCE(df.definition, r.definition){} AS definition \
                 FROM runs r LEFT JOIN definitions df ON df.id = r.definition_id WHERE r.run_id = $1",
                if d == Dialect::Postgres { "::text" } else { "" }
            )),
            get_attempts: sql(format!(
                "SELECT run_id, task, attempt, status, error, {}, {} FROM attempts WHERE run_id = $1 \
                 ORDER BY started_at, task, attempt",
                ts_col(d, "started_at"),
                ts_col(d, "finished_at"),
            )),
            get_owner: sql("SELECT owner_host, owner_pid, owner_instance FROM runs WHERE run_id = $1".into()),
            set_owner: sql("UPDATE runs SET owner_host = $2, owner_pid = $3, owner_instance = $4 WHERE run_id = $1".into()),
            // The owner changes only from the one the caller found gone.
            adopt_run: sql("UPDATE runs SET owner_host = $2, owner_pid = $3, owner_instance = $4 \
                 WHERE run_id = $1 AND status IN ('queued', 'running') AND owner_pid = $5 AND COALESCE(owner_instance, '') = $6"
                .into()),
            request_cancel: sql("UPDATE runs SET cancel_requested = $2 WHERE run_id = $1 AND status IN ('queued', 'running')".into()),
            cancel_requested: sql(match d {
                Dialect::Sqlite => "SELECT run_id FROM runs WHERE cancel_requested = $2 \
                     AND status IN ('queued', 'running') \
                     AND run_id IN (SELECT value FROM json_each($1)) ORDER BY run_id"
                    .into(),
                Dialect::Postgres => "SELECT run_id FROM runs WHERE cancel_requested = $2 \
                     AND status IN ('queued', 'running') \
                     AND run_id IN (SELECT jsonb_array_elements_text($1::jsonb)) ORDER BY run_id"
                    .into(),
            }),
            // Unfinished runs with their owner's lease, when it has one.
            orphan_candidates: sql(format!(
                "SELECT r.run_id, r.backend, r.owner_host, r.owner_pid, r.owner_instance, {}, i.lease_ms \
                 FROM runs r LEFT JOIN instances i ON i.instance_id = r.owner_instance \
                 WHERE r.status IN ('queued', 'running') ORDER BY r.run_id",
                match d {
                    Dialect::Sqlite => "i.heartbeat_at AS heartbeat_at".to_string(),
                    Dialect::Postgres => ts_col(d, "i.heartbeat_at").replace(" AS i.heartbeat_at", " AS heartbeat_at"),
                },
            )),
            renew_lease: sql(format!(
                "INSERT INTO instances (instance_id, host, pid, started_at, heartbeat_at, lease_ms) \
                 VALUES ($1, $2, $3, {ts4}, {ts5}, $6) \
                 ON CONFLICT (instance_id) DO UPDATE SET heartbeat_at = excluded.heartbeat_at, lease_ms = excluded.lease_ms",
                ts4 = if d == Dialect::Postgres { "$4::timestamptz" } else { "$4" },
                ts5 = if d == Dialect::Postgres { "$5::timestamptz" } else { "$5" },
            )),
            // Instances silent since before $1 that own no unfinished run.
            forget_instances: sql(format!(
                "DELETE FROM instances WHERE heartbeat_at < {} \
                 AND NOT EXISTS (SELECT 1 FROM runs r WHERE r.owner_instance = instances.instance_id \
                 AND r.status IN ('queued', 'running'))",
                if d == Dialect::Postgres { "$1::timestamptz" } else { "$1" },
            )),
            fail_orphan_run: sql(format!(
                "UPDATE runs SET status = 'failed', error = $2, finished_at = {now} \
                 WHERE run_id = $1 AND status IN ('queued', 'running')"
            )),
            cancel_orphan_tasks: sql(format!(
                "UPDATE tasks SET status = 'cancelled', error = $2, finished_at = COALESCE(finished_at, {now}) \
                 WHERE run_id = $1 AND status IN ('pending', 'running')"
            )),
            // The pending tasks that have no row yet get one, cancelled.
            cancel_orphan_implicit_tasks: sql(format!(
                "INSERT INTO tasks (run_id, name, position, status, attempts, error, finished_at) \
                 SELECT r.run_id, {defined_name}, {defined_position}, 'cancelled', 0, $2, {now} \
                 FROM {defined_tasks} \
                 ON CONFLICT (run_id, name) DO NOTHING"
            )),
            cancel_orphan_attempts: sql(format!(
                "UPDATE attempts SET status = 'cancelled', error = $2, finished_at = COALESCE(finished_at, {now}) \
                 WHERE run_id = $1 AND status = 'running'"
            )),
            // SQLite compares text bytewise, so a range finds a prefix through
            // the primary key; PostgreSQL's collation may not, so it asks
            // starts_with.
            ids_by_prefix: sql(match d {
                Dialect::Sqlite => "SELECT run_id FROM runs WHERE run_id >= $1 AND run_id < $2 \
                     AND substr(run_id, 1, length($1)) = $1 ORDER BY run_id LIMIT $3"
                    .into(),
                Dialect::Postgres => "SELECT run_id FROM runs WHERE starts_with(run_id, $1) ORDER BY run_id LIMIT $2".into(),
            }),
            // A scan: for a person typing a short id, not for a hot path.
            ids_by_suffix: sql(match d {
                Dialect::Sqlite => "SELECT run_id FROM runs WHERE substr(run_id, -length($1)) = $1 ORDER BY run_id LIMIT $2".into(),
                Dialect::Postgres => "SELECT run_id FROM runs WHERE right(run_id, length($1)) = $1 ORDER BY run_id LIMIT $2".into(),
            }),
            list_runs: [
                list("", 1),
                list("WHERE workflow = $1", 2),
                list("WHERE status = $1", 2),
                list("WHERE workflow = $1 AND status = $2", 3),
            ],
            table_exists: sql(match d {
                Dialect::Sqlite => format!("SELECT count(*) AS n FROM sqlite_master WHERE type = 'table' AND name = '{migrations_table}'"),
                Dialect::Postgres => format!(
                    "SELECT count(*) AS n FROM information_schema.tables \
                     WHERE table_schema = current_schema() AND table_name = '{migrations_table}'"
                ),
            }),
        }
    }

    /// The list query for a filter, with its arguments.
    pub fn list_runs(&self, workflow: Option<&str>, status: Option<&str>, limit: i64) -> Stmt {
        let text = |s: &str| Val::Text(Some(s.to_string()));
        let (i, args) = match (workflow, status) {
            (None, None) => (0, vec![]),
            (Some(w), None) => (1, vec![text(w)]),
            (None, Some(s)) => (2, vec![text(s)]),
            (Some(w), Some(s)) => (3, vec![text(w), text(s)]),
        };
        let mut args = args;
        args.push(Val::Int(Some(limit)));
        Stmt { sql: self.list_runs[i].clone(), args }
    }

    /// Run ids ending with `suffix`, at most `limit`.
    pub fn ids_by_suffix(&self, suffix: &str, limit: i64) -> Stmt {
        Stmt { sql: self.ids_by_suffix.clone(), args: vec![Val::Text(Some(suffix.to_string())), Val::Int(Some(limit))] }
    }

    /// Run ids starting with `prefix`, at most `limit`.
    pub fn ids_by_prefix(&self, prefix: &str, limit: i64) -> Stmt {
        let mut args = vec![Val::Text(Some(prefix.to_string()))];
        if self.dialect == Dialect::Sqlite {
            // Every id with the prefix sorts below the prefix followed by the
            // highest code point.
            args.push(Val::Text(Some(format!("{prefix}\u{10FFFF}"))));
        }
        args.push(Val::Int(Some(limit)));
        Stmt { sql: self.ids_by_prefix.clone(), args }
    }

    /// Upserts of runs (their own fields; tasks go through [`Sql::upsert_tasks`]).
    /// A new row is owned by `owner`; an existing one keeps its owner.
    pub fn upsert_runs(&self, runs: &[&RunResult], owner: &super::Owner, out: &mut Vec<Stmt>) {
        self.upsert_runs.add(runs, out, |r, args| push_run(r, owner, args));
    }

    /// Upserts of task rows: `(run_id, name, position, result)`. The position
    /// is only written when the row is new.
    pub fn upsert_tasks(&self, tasks: &[(&str, &str, i64, &TaskResult)], out: &mut Vec<Stmt>) {
        self.upsert_tasks.add(tasks, out, |(run_id, name, position, t), args| {
            push_task(Val::Text(Some(run_id.to_string())), Val::Text(Some(name.to_string())), *position, t, args)
        });
    }
}

/// The values of the runs table's own columns for one run (the first 18 of
/// [`CREATES`]). PostgreSQL's NULs are dealt with when the statement is made.
pub(crate) fn push_run(r: &RunResult, owner: &super::Owner, args: &mut Vec<Val>) {
    let routing = r.routing.as_ref().map(|x| json_text(&serde_json::to_value(x).unwrap_or(Value::Null)));
    args.extend([
        Val::Text(Some(r.run_id.clone())),
        Val::Text(Some(r.workflow.clone())),
        Val::Text(Some(r.version.clone())),
        run_status(r.status),
        Val::Text(Some(r.backend.clone())),
        Val::Text(routing),
        Val::Text(r.error.clone()),
        Val::Text(r.output.as_ref().map(json_text)),
        Val::Text(r.retry_of.clone()),
        Val::Text(Some(r.entity_id.clone())),
        Val::Text(Some(json_text(&r.context))),
        Val::Text(Some(json_text(&r.input))),
        Val::Text(Some(owner.host.clone())),
        Val::Int(Some(i64::from(owner.pid))),
        Val::Text(owner.instance.clone()),
        Val::Text(Some(ts_text(r.created_at))),
        Val::Text(r.started_at.map(ts_text)),
        Val::Text(r.finished_at.map(ts_text)),
    ])
}

/// The values of one task row.
pub(crate) fn push_task(run_id: Val, name: Val, position: i64, t: &TaskResult, args: &mut Vec<Val>) {
    args.extend([
        run_id,
        name,
        Val::Int(Some(position)),
        task_status(t.status),
        Val::Text(t.output.as_ref().map(json_text)),
        Val::Int(Some(i64::from(t.attempts))),
        Val::Text(t.error.clone()),
        Val::Text(t.skip_reason.clone()),
        Val::Text(t.started_at.map(ts_text)),
        Val::Text(t.finished_at.map(ts_text)),
    ])
}

/// The values of one attempt row.
#[allow(clippy::too_many_arguments)]
pub(crate) fn push_attempt_parts(
    run_id: Val,
    task: Val,
    attempt: u32,
    status: TaskStatus,
    error: Option<&str>,
    started_at: OffsetDateTime,
    finished_at: Option<OffsetDateTime>,
    args: &mut Vec<Val>,
) {
    args.extend([
        run_id,
        task,
        Val::Int(Some(i64::from(attempt))),
        task_status(status),
        Val::Text(error.map(str::to_string)),
        Val::Text(Some(ts_text(started_at))),
        Val::Text(finished_at.map(ts_text)),
    ])
}

/// The name of a definition in the definitions table: the SHA-256 of its text.
pub(crate) fn definition_id(text: &str) -> String {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(text.as_bytes());
    let mut id = String::with_capacity(7 + 64);
    id.push_str("sha256:");
    for b in digest {
        id.push(char::from(b"0123456789abcdef"[usize::from(b >> 4)]));
        id.push(char::from(b"0123456789abcdef"[usize::from(b & 15)]));
    }
    id
}

/// A status as shared text: statuses are bound on every row.
fn task_status(s: TaskStatus) -> Val {
    static ALL: OnceLock<Vec<(TaskStatus, Arc<str>)>> = OnceLock::new();
    let all = ALL.get_or_init(|| TaskStatus::ALL.iter().map(|s| (*s, Arc::from(s.as_str()))).collect());
    Val::Shared(Some(all.iter().find(|(x, _)| *x == s).map_or_else(|| Arc::from(s.as_str()), |(_, a)| a.clone())))
}

fn run_status(s: RunStatus) -> Val {
    static ALL: OnceLock<Vec<(RunStatus, Arc<str>)>> = OnceLock::new();
    let all = ALL.get_or_init(|| RunStatus::ALL.iter().map(|s| (*s, Arc::from(s.as_str()))).collect());
    Val::Shared(Some(all.iter().find(|(x, _)| *x == s).map_or_else(|| Arc::from(s.as_str()), |(_, a)| a.clone())))
}

fn ts_col(d: Dialect, col: &str) -> String {
    match d {
        Dialect::Sqlite => col.to_string(),
        Dialect::Postgres => format!("to_char({col} AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"') AS {col}"),
    }
}

fn json_col(d: Dialect, col: &str) -> String {
    match d {
        Dialect::Sqlite => col.to_string(),
        Dialect::Postgres => format!("{col}::text AS {col}"),
    }
}

/// UTC with exactly six fractional digits: valid RFC 3339 whose text order
/// is time order. Written by hand because the writer formats two of these
/// per task update, and `time`'s general formatter costs several times more.
pub(crate) fn ts_text(t: OffsetDateTime) -> String {
    let u = t.to_offset(UtcOffset::UTC);
    let (year, month, day) = u.to_calendar_date();
    let Ok(year) = u32::try_from(year) else {
        return u.format(&Rfc3339).unwrap_or_default();
    };
    let (hour, minute, second, micro) = u.to_hms_micro();
    let mut b = *b"0000-00-00T00:00:00.000000Z";
    digits(&mut b[0..4], year);
    digits(&mut b[5..7], u32::from(u8::from(month)));
    digits(&mut b[8..10], u32::from(day));
    digits(&mut b[11..13], u32::from(hour));
    digits(&mut b[14..16], u32::from(minute));
    digits(&mut b[17..19], u32::from(second));
    digits(&mut b[20..26], micro);
    // Only ASCII digits and punctuation were written.
    String::from_utf8_lossy(&b).into_owned()
}

fn digits(dst: &mut [u8], mut v: u32) {
    for d in dst.iter_mut().rev() {
        *d = b'0' + (v % 10) as u8;
        v /= 10;
    }
}

pub(crate) fn parse_ts(s: &str) -> Result<OffsetDateTime, StoreError> {
    OffsetDateTime::parse(s, &Rfc3339).map_err(|e| StoreError::Db(format!("bad timestamp `{s}` in the store: {e}")))
}

/// Text for PostgreSQL, which cannot hold NUL in text nor `\u0000` in
/// JSONB: replaced rather than fail a whole batch.
fn pg_text(kind: Kind, s: String) -> String {
    match kind {
        Kind::Json => pg_json(s),
        _ if s.contains('\0') => s.replace('\0', "\u{FFFD}"),
        _ => s,
    }
}

/// JSON as text. A NUL inside a string is written `\u0000`, which
/// PostgreSQL's JSONB rejects: [`Upsert::stmt`] replaces those for it.
pub(crate) fn json_text(v: &Value) -> String {
    v.to_string()
}

/// JSON text made acceptable to PostgreSQL's JSONB: NULs inside strings are
/// replaced (rare: binary noise in a process output).
fn pg_json(s: String) -> String {
    if !s.contains("\\u0000") {
        return s;
    }
    match serde_json::from_str::<Value>(&s) {
        Ok(mut v) => {
            strip_nul(&mut v);
            v.to_string()
        }
        Err(_) => s,
    }
}

fn strip_nul(v: &mut Value) {
    match v {
        Value::String(s) if s.contains('\0') => *s = s.replace('\0', "\u{FFFD}"),
        Value::Array(a) => a.iter_mut().for_each(strip_nul),
        Value::Object(o) => {
            let keys: Vec<String> = o.keys().filter(|k| k.contains('\0')).cloned().collect();
            for k in keys {
                if let Some(x) = o.remove(&k) {
                    o.insert(k.replace('\0', "\u{FFFD}"), x);
                }
            }
            o.values_mut().for_each(strip_nul)
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlite_chunks_are_powers_of_two_and_cover_every_row() {
        let sql = Sql::new(Dialect::Sqlite, "m");
        let t = TaskResult::pending();
        let rows: Vec<(&str, &str, i64, &TaskResult)> = (0..3000).map(|_| ("r", "t", 0, &t)).collect();
        let mut out = Vec::new();
        sql.upsert_tasks(&rows, &mut out);
        let sizes: Vec<usize> = out.iter().map(|s| s.args.len() / TASKS.cols.len()).collect();
        assert_eq!(sizes, vec![1024, 1024, 512, 256, 128, 32, 16, 8]);
        assert!(out[7].sql.as_str().contains("VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?), (?, "));
    }

    #[test]
    fn postgres_writes_a_chunk_as_one_statement_of_column_arrays() {
        let sql = Sql::new(Dialect::Postgres, "m");
        let mut t = TaskResult::pending();
        t.error = Some("boom\0".into());
        let rows: Vec<(&str, &str, i64, &TaskResult)> = (0..1000).map(|i| ("r", "t", i, &t)).collect();
        let mut out = Vec::new();
        sql.upsert_tasks(&rows, &mut out);
        assert_eq!(out.len(), 1);
        let s = out[0].sql.as_str();
        assert!(s.contains("UNNEST($1::text[], $2::text[], $3::int8[]"), "{s}");
        assert!(s.contains("output::jsonb"), "{s}");
        assert_eq!(out[0].args.len(), TASKS.cols.len());
        match (&out[0].args[2], &out[0].args[3], &out[0].args[6]) {
            (Val::Ints(pos), Val::Texts(status), Val::Texts(err)) => {
                assert_eq!(pos.len(), 1000);
                assert_eq!(pos[999], Some(999));
                assert_eq!(status[0].as_deref(), Some("pending"));
                assert_eq!(err[0].as_deref(), Some("boom\u{FFFD}"));
            }
            other => panic!("{other:?}"),
        }
        let many: Vec<(&str, &str, i64, &TaskResult)> = (0..PG_MAX_ROWS + 1).map(|i| ("r", "t", i as i64, &t)).collect();
        let mut out = Vec::new();
        sql.upsert_tasks(&many, &mut out);
        assert_eq!(out.len(), 2);
    }

    #[test]
    fn definitions_are_named_by_their_hash() {
        assert_eq!(definition_id(""), "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
        assert_ne!(definition_id("{}"), definition_id("[]"));
    }

    #[test]
    fn new_runs_carry_the_runs_columns_then_definition_and_flag() {
        assert_eq!(&CREATES.cols[..RUN_COLS.len()], RUN_COLS);
        assert_eq!(CREATES.cols.len(), RUN_COLS.len() + 2);
        let sql = Sql::new(Dialect::Sqlite, "m");
        let s = sql.insert_runs.stmt(1, vec![Val::Int(None); CREATES.cols.len()]);
        assert!(s.sql.as_str().ends_with("ON CONFLICT (run_id) DO NOTHING RETURNING run_id"), "{}", s.sql.as_str());
    }

    #[test]
    fn timestamps_sort_as_text_and_round_trip() {
        let a = time::macros::datetime!(2024-05-01 10:00:00 +02:00);
        let b = time::macros::datetime!(2024-05-01 08:00:00.5 UTC);
        assert_eq!(ts_text(a), "2024-05-01T08:00:00.000000Z");
        assert!(ts_text(a) < ts_text(b));
        assert_eq!(parse_ts(&ts_text(b)).unwrap(), b);
        let c = time::macros::datetime!(0987-12-31 23:59:59.999999999 UTC);
        assert_eq!(ts_text(c), "0987-12-31T23:59:59.999999Z");
    }

    #[test]
    fn nul_is_replaced_for_postgres_only() {
        let v = serde_json::json!({"out": "a\u{0}b"});
        assert!(json_text(&v).contains("\\u0000"));
        assert_eq!(pg_text(Kind::Json, json_text(&v)), "{\"out\":\"a\u{FFFD}b\"}");
        assert_eq!(pg_text(Kind::Text, "a\0b".into()), "a\u{FFFD}b");
        assert_eq!(pg_text(Kind::Json, "\"plain\"".into()), "\"plain\"");
    }
}
