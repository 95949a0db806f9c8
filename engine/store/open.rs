//! Opening a store: SQLite (a file, or memory for tests) or PostgreSQL,
//! and bringing its schema up to date with the embedded migrations.

use super::sql::{Dialect, Stmt};
use super::{
    BindVal, DbRow, Inner, MIGRATIONS_TABLE, POSTGRES_MIGRATIONS, Pool, Result, SCHEMA_VERSION, SQLITE_MIGRATIONS, StoreError, describe,
};
use sqlx::migrate::{MigrateError, Migration, MigrationType, Migrator};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{AssertSqlSafe, SqlSafeStr};
use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

pub(super) async fn open_sqlite_memory() -> Result<Pool> {
    let location = || "sqlite::memory:".to_string();
    let opts =
        SqliteConnectOptions::from_str("sqlite::memory:").map_err(|e| StoreError::Open { location: location(), reason: describe(&e) })?;
    // One connection that never closes: the database lives as long as it does.
    let pool = SqlitePoolOptions::new()
        .max_connections(1)
        .min_connections(1)
        .idle_timeout(None)
        .max_lifetime(None)
        .connect_with(opts)
        .await
        .map_err(|e| StoreError::Open { location: location(), reason: describe(&e) })?;
    Ok(Pool::Sqlite(pool))
}

/// The file of an `sqlite://PATH` (or `sqlite:PATH`) URL; not the in-memory one.
pub(super) fn sqlite_file(url: &str) -> Option<&Path> {
    if url.starts_with("sqlite::memory:") {
        return None;
    }
    let path = url.strip_prefix("sqlite://").or_else(|| url.strip_prefix("sqlite:"))?;
    (!path.is_empty() && !path.contains('?')).then(|| Path::new(path))
}

/// Opens an SQLite file; with `create`, creates it and its folder when missing.
pub(super) async fn open_sqlite_file(path: &Path, create: bool) -> Result<Pool> {
    let open_err = |reason: String| StoreError::Open { location: path.display().to_string(), reason };
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty() && create) {
        if parent.exists() && !parent.is_dir() {
            return Err(open_err(format!("{} is not a folder", parent.display())));
        }
        std::fs::create_dir_all(parent).map_err(|e| open_err(format!("cannot create the folder {}: {e}", parent.display())))?;
    }
    if path.is_dir() {
        return Err(open_err("it is a folder, not a file".into()));
    }
    // The writer checkpoints the log in the background after each batch
    // (see `Inner::checkpoint`), so a commit seldom pays for one; the
    // automatic checkpoint stays as a backstop for a log past 64 MB.
    let opts = SqliteConnectOptions::new()
        .filename(path)
        .create_if_missing(create)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Normal)
        .pragma("wal_autocheckpoint", "16384")
        .busy_timeout(Duration::from_secs(10));
    // Processes creating the same new file at once race for the switch to
    // WAL, which takes an exclusive lock that SQLite does not wait for (no
    // busy handler on that path): the loser sees "database is locked" at
    // once. Retried a few times, briefly; any other error is final.
    let mut tries = 0u32;
    let pool = loop {
        tries += 1;
        // No ping before each use: an embedded file's connection cannot
        // drop like a network one, and every transaction would pay for it.
        let options = SqlitePoolOptions::new().max_connections(4).acquire_timeout(Duration::from_secs(30)).test_before_acquire(false);
        match options.connect_with(opts.clone()).await {
            Ok(pool) => break pool,
            Err(e) if tries < 20 && is_sqlite_busy(&e) => tokio::time::sleep(Duration::from_millis(20 * u64::from(tries))).await,
            Err(e) => return Err(open_err(sqlite_open_reason(path, &e))),
        }
    };
    Ok(Pool::Sqlite(pool))
}

/// SQLITE_BUSY (5) or SQLITE_LOCKED (6), in their primary or extended form.
fn is_sqlite_busy(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Database(d) => d.code().and_then(|c| c.parse::<i32>().ok()).is_some_and(|c| matches!(c & 0xff, 5 | 6)),
        _ => false,
    }
}

/// SQLite's "unable to open database file" says nothing of why; add what
/// the file system says.
fn sqlite_open_reason(path: &Path, e: &sqlx::Error) -> String {
    let reason = describe(e);
    let probe = if path.exists() {
        std::fs::OpenOptions::new().read(true).write(true).open(path).err()
    } else {
        let parent = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
        std::fs::metadata(parent).err().or_else(|| can_create_in(parent).err())
    };
    match probe {
        Some(io) => format!("{reason} ({io})"),
        None => reason,
    }
}

/// Can a file be created in `dir`? (Removes what it creates.)
fn can_create_in(dir: &Path) -> std::io::Result<()> {
    let probe = dir.join(format!(".taskweave-probe-{}", std::process::id()));
    std::fs::File::create(&probe)?;
    let _ = std::fs::remove_file(&probe);
    Ok(())
}

pub(super) async fn open_postgres(url: &str, location: &str) -> Result<Pool> {
    let opts = PgConnectOptions::from_str(url).map_err(|_| StoreError::BadUrl(location.to_string()))?;
    let pool = PgPoolOptions::new()
        .max_connections(8)
        .acquire_timeout(Duration::from_secs(10))
        .connect_with(opts)
        .await
        .map_err(|e| StoreError::Open { location: location.to_string(), reason: describe(&e) })?;
    Ok(Pool::Postgres(pool))
}

fn migrator(dialect: Dialect) -> Migrator {
    let files = match dialect {
        Dialect::Sqlite => SQLITE_MIGRATIONS,
        Dialect::Postgres => POSTGRES_MIGRATIONS,
    };
    let migrations = files
        .iter()
        .map(|(version, description, text)| {
            Migration::new(*version, (*description).into(), MigrationType::Simple, AssertSqlSafe(*text).into_sql_str(), false)
        })
        .collect();
    let mut m = Migrator::with_migrations(migrations);
    m.dangerous_set_table_name(MIGRATIONS_TABLE);
    m
}

/// Refuses a database from a newer release, then applies missing migrations.
pub(super) async fn migrate(inner: &Inner) -> Result<()> {
    let open_err = |e: &sqlx::Error| StoreError::Open { location: inner.location.clone(), reason: describe(e) };
    let exists = with_pool!(&inner.pool, |p, DB| {
        bound!(DB, Stmt { sql: inner.sql.table_exists.clone(), args: vec![] })
            .fetch_one(p)
            .await
            .map_err(|e| open_err(&e))
            .and_then(|r| r.int("n"))?
    });
    if exists.unwrap_or(0) > 0 {
        let newest = with_pool!(&inner.pool, |p, DB| {
            let q = AssertSqlSafe(format!("SELECT max(version) AS v FROM {MIGRATIONS_TABLE}"));
            sqlx::query::<DB>(q.into_sql_str()).fetch_one(p).await.map_err(|e| open_err(&e)).and_then(|r| r.int("v"))?
        });
        if let Some(v) = newest.filter(|v| *v > SCHEMA_VERSION) {
            return Err(StoreError::NewerSchema { location: inner.location.clone(), version: v, known: SCHEMA_VERSION });
        }
    }
    let m = migrator(inner.sql.dialect);
    let result = match &inner.pool {
        Pool::Sqlite(p) => {
            // sqlx takes no lock on SQLite, so two processes opening a new
            // file at once both run the first migration and one fails on
            // the other's tables; once the winner has committed, running
            // again finds the migrations applied.
            let mut tries = 0;
            loop {
                match m.run(p).await {
                    Err(MigrateError::Execute(_) | MigrateError::ExecuteMigration(..)) if tries < 5 => {
                        tries += 1;
                        tokio::time::sleep(std::time::Duration::from_millis(50 * tries)).await;
                    }
                    other => break other,
                }
            }
        }
        Pool::Postgres(p) => m.run(p).await,
    };
    result.map_err(|e| match e {
        MigrateError::VersionMissing(v) => StoreError::NewerSchema { location: inner.location.clone(), version: v, known: SCHEMA_VERSION },
        MigrateError::Execute(e) | MigrateError::ExecuteMigration(e, _) => {
            StoreError::Open { location: inner.location.clone(), reason: format!("cannot prepare its tables: {}", describe(&e)) }
        }
        other => StoreError::Open { location: inner.location.clone(), reason: other.to_string() },
    })
}
