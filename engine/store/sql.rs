//! The SQL of the run store, written once and rendered for each dialect.
//!
//! Statements are written in PostgreSQL's form; for SQLite the type casts on
//! parameters are dropped and timestamp/JSON columns are read as they are
//! stored (text). Everything is bound as text, integers or booleans, so the
//! same bind code serves both databases.
//!
//! Batched upserts differ by dialect. SQLite (in process, no round trips)
//! gets multi-row `VALUES` prepared for power-of-two row counts only, so a
//! batch of any size re-uses a handful of cached statements. PostgreSQL gets
//! one statement per table per batch, each column bound as an array and
//! `UNNEST`ed: one round trip whatever the batch size.

use super::StoreError;
use crate::run::{RunResult, TaskResult};
use serde_json::Value;
use sqlx::{AssertSqlSafe, SqlSafeStr, SqlStr};
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
    Int(Option<i64>),
    Bool(bool),
    Texts(Vec<Option<String>>),
    Ints(Vec<Option<i64>>),
}

/// A statement with its arguments, ready to run.
#[derive(Debug)]
pub(crate) struct Stmt {
    pub sql: SqlStr,
    pub args: Vec<Val>,
}

/// How a column is bound (always as text or integer) and stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Text,
    Int,
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
            Kind::Text | Kind::Int => "",
        }
    }

    fn pg_array(self) -> &'static str {
        match self {
            Kind::Int => "int8[]",
            Kind::Text | Kind::Json | Kind::Ts => "text[]",
        }
    }
}

/// A table written in batches.
struct Table {
    name: &'static str,
    /// Columns in bind order.
    cols: &'static [(&'static str, Kind)],
    key: &'static str,
    /// Columns a later write of an existing row replaces.
    updated: &'static [&'static str],
    /// Largest row count of one SQLite statement: keeps it well under
    /// SQLite's 32,766 parameters.
    max_rows: usize,
}

use Kind::{Int, Json, Text, Ts};

const RUNS: Table = Table {
    name: "runs",
    cols: &[
        ("run_id", Text),
        ("workflow", Text),
        ("version", Text),
        ("status", Text),
        ("backend", Text),
        ("routing", Json),
        ("error", Text),
        ("entity_id", Text),
        ("context", Json),
        ("input", Json),
        ("owner_host", Text),
        ("owner_pid", Int),
        ("created_at", Ts),
        ("started_at", Ts),
        ("finished_at", Ts),
    ],
    key: "run_id",
    // Never the owner, the definition or a cancel request.
    updated: &[
        "workflow",
        "version",
        "status",
        "backend",
        "routing",
        "error",
        "entity_id",
        "context",
        "input",
        "created_at",
        "started_at",
        "finished_at",
    ],
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
    updated: &["status", "output", "attempts", "error", "skip_reason", "started_at", "finished_at"],
    max_rows: 512,
};

const ATTEMPTS: Table = Table {
    name: "attempts",
    cols: &[("run_id", Text), ("task", Text), ("attempt", Int), ("status", Text), ("error", Text), ("started_at", Ts), ("finished_at", Ts)],
    key: "run_id, task, attempt",
    updated: &["status", "error", "started_at", "finished_at"],
    max_rows: 512,
};

/// The batched upsert of one table, rendered for one dialect.
#[derive(Debug)]
struct Upsert {
    dialect: Dialect,
    kinds: Vec<Kind>,
    /// SQLite: `stmts[k]` writes `2^k` rows. PostgreSQL: one `UNNEST` statement.
    stmts: Vec<SqlStr>,
}

impl Upsert {
    fn new(d: Dialect, t: &Table) -> Upsert {
        let names: Vec<&str> = t.cols.iter().map(|(c, _)| *c).collect();
        let set: Vec<String> = t.updated.iter().map(|c| format!("{c} = excluded.{c}")).collect();
        let tail = format!("ON CONFLICT ({}) DO UPDATE SET {}", t.key, set.join(", "));
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

    /// Statements writing `rows`; `bind` pushes one row's values in column order.
    fn add<T>(&self, rows: &[T], out: &mut Vec<Stmt>, mut bind: impl FnMut(&T, &mut Vec<Val>)) {
        if rows.is_empty() {
            return;
        }
        let width = self.kinds.len();
        match self.dialect {
            Dialect::Postgres => {
                let mut flat = Vec::with_capacity(rows.len() * width);
                for row in rows {
                    bind(row, &mut flat);
                }
                let mut cols: Vec<Val> = self
                    .kinds
                    .iter()
                    .map(|k| match k {
                        Kind::Int => Val::Ints(Vec::with_capacity(rows.len())),
                        _ => Val::Texts(Vec::with_capacity(rows.len())),
                    })
                    .collect();
                for (i, v) in flat.into_iter().enumerate() {
                    match (&mut cols[i % width], v) {
                        (Val::Texts(col), Val::Text(v)) => col.push(v),
                        (Val::Ints(col), Val::Int(v)) => col.push(v),
                        (Val::Texts(col), _) => col.push(None),
                        (Val::Ints(col), _) => col.push(None),
                        _ => {}
                    }
                }
                out.push(Stmt { sql: self.stmts[0].clone(), args: cols });
            }
            Dialect::Sqlite => {
                let max = 1usize << (self.stmts.len() - 1);
                let mut rest = rows;
                while !rest.is_empty() {
                    let n = max.min(1usize << rest.len().ilog2());
                    let (chunk, tail) = rest.split_at(n);
                    let mut args = Vec::with_capacity(n * width);
                    for row in chunk {
                        bind(row, &mut args);
                    }
                    out.push(Stmt { sql: self.stmts[n.ilog2() as usize].clone(), args });
                    rest = tail;
                }
            }
        }
    }
}

/// Every statement of the store, rendered once for one dialect.
#[derive(Debug)]
pub(crate) struct Sql {
    pub dialect: Dialect,
    upsert_runs: Upsert,
    upsert_tasks: Upsert,
    upsert_attempts: Upsert,
    insert_run: SqlStr,
    pub get_run: SqlStr,
    pub get_tasks: SqlStr,
    pub get_definition: SqlStr,
    pub get_attempts: SqlStr,
    pub get_owner: SqlStr,
    pub set_owner: SqlStr,
    pub request_cancel: SqlStr,
    pub cancel_requested: SqlStr,
    pub orphan_candidates: SqlStr,
    pub fail_orphan_run: SqlStr,
    pub cancel_orphan_tasks: SqlStr,
    pub cancel_orphan_attempts: SqlStr,
    ids_by_prefix: SqlStr,
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
            "run_id, workflow, version, status, backend, {}, error, entity_id, {}, {}, {}, {}, {}",
            json_col(d, "routing"),
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
        let mut insert_cols: Vec<(&str, Kind)> = RUNS.cols.to_vec();
        insert_cols.push(("definition", Kind::Json));
        let insert_params: Vec<String> = insert_cols
            .iter()
            .enumerate()
            .map(|(i, (_, k))| match d {
                Dialect::Sqlite => format!("${}", i + 1),
                Dialect::Postgres => format!("${}{}", i + 1, k.pg_cast()),
            })
            .collect();
        let insert_names: Vec<&str> = insert_cols.iter().map(|(c, _)| *c).collect();
        let now = match d {
            Dialect::Sqlite => "$3",
            Dialect::Postgres => "$3::timestamptz",
        };
        Sql {
            dialect,
            upsert_runs: Upsert::new(d, &RUNS),
            upsert_tasks: Upsert::new(d, &TASKS),
            upsert_attempts: Upsert::new(d, &ATTEMPTS),
            insert_run: sql(format!(
                "INSERT INTO runs ({}, cancel_requested) VALUES ({}, FALSE)",
                insert_names.join(", "),
                insert_params.join(", ")
            )),
            get_run: sql(format!("SELECT {run_sel} FROM runs WHERE run_id = $1")),
            get_tasks: sql(format!(
                "SELECT name, status, {}, attempts, error, skip_reason, {}, {} FROM tasks WHERE run_id = $1 ORDER BY position, name",
                json_col(d, "output"),
                ts_col(d, "started_at"),
                ts_col(d, "finished_at"),
            )),
            get_definition: sql(format!("SELECT {} FROM runs WHERE run_id = $1", json_col(d, "definition"))),
            get_attempts: sql(format!(
                "SELECT run_id, task, attempt, status, error, {}, {} FROM attempts WHERE run_id = $1 \
                 ORDER BY started_at, task, attempt",
                ts_col(d, "started_at"),
                ts_col(d, "finished_at"),
            )),
            get_owner: sql("SELECT owner_host, owner_pid FROM runs WHERE run_id = $1".into()),
            set_owner: sql("UPDATE runs SET owner_host = $2, owner_pid = $3 WHERE run_id = $1".into()),
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
            orphan_candidates: sql("SELECT run_id, owner_pid FROM runs WHERE status IN ('queued', 'running') AND owner_host = $1 \
                 ORDER BY run_id"
                .into()),
            fail_orphan_run: sql(format!(
                "UPDATE runs SET status = 'failed', error = $2, finished_at = {now} \
                 WHERE run_id = $1 AND status IN ('queued', 'running')"
            )),
            cancel_orphan_tasks: sql(format!(
                "UPDATE tasks SET status = 'cancelled', error = $2, finished_at = COALESCE(finished_at, {now}) \
                 WHERE run_id = $1 AND status IN ('pending', 'running')"
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
        let d = self.dialect;
        self.upsert_runs.add(runs, out, |r, args| run_row(d, r, owner, args));
    }

    /// Upserts of task rows: `(run_id, name, position, result)`. The position
    /// is only written when the row is new.
    pub fn upsert_tasks(&self, tasks: &[(&str, &str, i64, &TaskResult)], out: &mut Vec<Stmt>) {
        let d = self.dialect;
        self.upsert_tasks.add(tasks, out, |(run_id, name, position, t), args| {
            args.extend([
                text(d, run_id),
                text(d, name),
                Val::Int(Some(*position)),
                text(d, t.status.as_str()),
                Val::Text(t.output.as_ref().map(|v| json_text(d, v))),
                Val::Int(Some(i64::from(t.attempts))),
                opt_text(d, t.error.as_deref()),
                opt_text(d, t.skip_reason.as_deref()),
                Val::Text(t.started_at.map(ts_text)),
                Val::Text(t.finished_at.map(ts_text)),
            ])
        });
    }

    pub fn upsert_attempts(&self, attempts: &[&super::AttemptRecord], out: &mut Vec<Stmt>) {
        let d = self.dialect;
        self.upsert_attempts.add(attempts, out, |a, args| {
            args.extend([
                text(d, &a.run_id),
                text(d, &a.task),
                Val::Int(Some(i64::from(a.attempt))),
                text(d, a.status.as_str()),
                opt_text(d, a.error.as_deref()),
                Val::Text(Some(ts_text(a.started_at))),
                Val::Text(a.finished_at.map(ts_text)),
            ])
        });
    }

    /// The insert of a new run, with its definition and owner.
    pub fn insert_run(&self, r: &RunResult, definition: &Value, owner: &super::Owner) -> Stmt {
        let mut args = Vec::with_capacity(RUNS.cols.len() + 1);
        run_row(self.dialect, r, owner, &mut args);
        args.push(Val::Text(Some(json_text(self.dialect, definition))));
        Stmt { sql: self.insert_run.clone(), args }
    }
}

/// The values of [`RUNS`]' columns for one run.
fn run_row(d: Dialect, r: &RunResult, owner: &super::Owner, args: &mut Vec<Val>) {
    let routing = r.routing.as_ref().map(|x| json_text(d, &serde_json::to_value(x).unwrap_or(Value::Null)));
    args.extend([
        text(d, &r.run_id),
        text(d, &r.workflow),
        text(d, &r.version),
        text(d, r.status.as_str()),
        text(d, &r.backend),
        Val::Text(routing),
        opt_text(d, r.error.as_deref()),
        text(d, &r.entity_id),
        Val::Text(Some(json_text(d, &r.context))),
        Val::Text(Some(json_text(d, &r.input))),
        text(d, &owner.host),
        Val::Int(Some(i64::from(owner.pid))),
        Val::Text(Some(ts_text(r.created_at))),
        Val::Text(r.started_at.map(ts_text)),
        Val::Text(r.finished_at.map(ts_text)),
    ])
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

fn text(d: Dialect, s: &str) -> Val {
    Val::Text(Some(clean(d, s)))
}

fn opt_text(d: Dialect, s: Option<&str>) -> Val {
    Val::Text(s.map(|s| clean(d, s)))
}

/// PostgreSQL text cannot hold NUL; replace it rather than fail a whole batch.
fn clean(d: Dialect, s: &str) -> String {
    if d == Dialect::Postgres && s.contains('\0') { s.replace('\0', "\u{FFFD}") } else { s.to_string() }
}

/// JSON as text. PostgreSQL's JSONB rejects `\u0000` in strings, so for it
/// NULs inside strings are replaced (rare: binary noise in a process output).
pub(crate) fn json_text(d: Dialect, v: &Value) -> String {
    let s = v.to_string();
    if d == Dialect::Postgres && s.contains("\\u0000") {
        let mut v = v.clone();
        strip_nul(&mut v);
        return v.to_string();
    }
    s
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
        let rows: Vec<(&str, &str, i64, &TaskResult)> = (0..1000).map(|_| ("r", "t", 0, &t)).collect();
        let mut out = Vec::new();
        sql.upsert_tasks(&rows, &mut out);
        let sizes: Vec<usize> = out.iter().map(|s| s.args.len() / TASKS.cols.len()).collect();
        assert_eq!(sizes, vec![512, 256, 128, 64, 32, 8]);
        assert!(out[5].sql.as_str().contains("VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?), (?, "));
    }

    #[test]
    fn postgres_writes_a_batch_as_one_statement_of_column_arrays() {
        let sql = Sql::new(Dialect::Postgres, "m");
        let mut t = TaskResult::pending();
        t.error = Some("boom".into());
        let rows: Vec<(&str, &str, i64, &TaskResult)> = (0..1000).map(|i| ("r", "t", i, &t)).collect();
        let mut out = Vec::new();
        sql.upsert_tasks(&rows, &mut out);
        assert_eq!(out.len(), 1);
        let s = out[0].sql.as_str();
        assert!(s.contains("UNNEST($1::text[], $2::text[], $3::int8[]"), "{s}");
        assert!(s.contains("output::jsonb"), "{s}");
        assert_eq!(out[0].args.len(), TASKS.cols.len());
        match (&out[0].args[2], &out[0].args[6]) {
            (Val::Ints(pos), Val::Texts(err)) => {
                assert_eq!(pos.len(), 1000);
                assert_eq!(pos[999], Some(999));
                assert_eq!(err[0].as_deref(), Some("boom"));
            }
            other => panic!("{other:?}"),
        }
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
        assert!(json_text(Dialect::Sqlite, &v).contains("\\u0000"));
        assert_eq!(json_text(Dialect::Postgres, &v), "{\"out\":\"a\u{FFFD}b\"}");
    }
}
