//! The PostgreSQL backend (`kind = "postgres"`): durable runs in PostgreSQL,
//! executed by any number of `taskweave worker --backend NAME` processes,
//! in the model of Hatchet, River and Oban.
//!
//! Submitting a run is one statement: the pinned definition (by content
//! hash), the run and its tasks. Workers claim ready tasks with `FOR UPDATE
//! SKIP LOCKED`, hold a lease they renew by heartbeat, and commit each
//! attempt's end in one transaction that also promotes the children whose
//! parents all succeeded, skips the descendants of a failure and finishes
//! the run ([`queue`]). LISTEN/NOTIFY wakes idle workers, stops cancelled
//! runs and answers waiting callers; polling is only the fallback. A reaper,
//! run by every worker and every process that submits, retries the tasks of
//! workers whose lease expired (up to a crash budget) and stops runs past
//! their deadline.
//!
//! The queue is the truth about a run. The run store learns of it twice: the
//! process that accepts a run records it (queued), and the process that
//! finishes it (a worker, a reaper or a canceller) writes its final result
//! and attempts to its configured store and marks the run synced; a reaper
//! writes again the finished runs whose sync was lost.
//!
//! Everything lives in its own schema (default `taskweave_queue`, set as
//! the connections' `search_path`), with its own sqlx migrations, so it can
//! share a database with the run store. Touches: that schema, the store, the
//! executor's actions.

use super::events;
mod apply;
mod queue;
mod worker;

use super::{Backend, BackendError, DriverContext, RunRequest, WorkerOptions};
use crate::config::backends::PostgresSettings;
use crate::plan::Workflow;
use crate::run::RunResult;
use crate::run::executor::Executor;
use crate::store::Store;
use queue::{Db, StopKind};
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use std::collections::{HashMap, HashSet};
use std::str::FromStr;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// The newest queue schema this build knows.
pub const QUEUE_SCHEMA_VERSION: i64 = 5;

const MIGRATIONS: &[(i64, &str, &str)] = &[
    (1, "queue", include_str!("migrations/0001_queue.sql")),
    (2, "workers", include_str!("migrations/0002_workers.sql")),
    (3, "sched", include_str!("migrations/0003_sched.sql")),
    (4, "run output", include_str!("migrations/0004_run_output.sql")),
    (5, "retry", include_str!("migrations/0005_retry.sql")),
];

/// How long the store sync waits after a run finished for more to finish,
/// so that they are read from the queue and written in one batch.
const SYNC_GATHER: Duration = Duration::from_millis(25);

/// The driver's settings, from `[backends.NAME]`.
#[derive(Debug, Clone)]
pub struct Settings {
    /// `url`, else `DATABASE_URL`.
    pub url: String,
    /// The URL with its password masked, for messages.
    pub location: String,
    /// `schema`: where the queue's tables live (default `taskweave_queue`).
    pub schema: String,
    /// `lease`: how long a claimed task stays a worker's without a heartbeat (default 30s).
    pub lease: Duration,
    /// `poll`: how often idle workers and reapers look without a notification (default 1s).
    pub poll: Duration,
    /// `crash_budget`: tries of a task whose worker may be lost before it fails (default 3).
    pub crash_budget: u32,
    /// `max_connections` of this process's pool (default 16).
    pub max_connections: u32,
    /// `shutdown_grace`: how long a stopping worker lets running tasks finish before handing them back (default 30s).
    pub shutdown_grace: Duration,
    /// `synchronous_completions`: claims and attempt ends wait for the
    /// server's disk too (default false: a server crash may lose the last
    /// ones, whose tasks then run again when their lease expires).
    pub synchronous_completions: bool,
}

impl Settings {
    pub fn from_options(name: &str, options: &std::collections::BTreeMap<String, toml::Value>) -> Result<Settings, BackendError> {
        let bad = |reason: String| BackendError::Permanent { backend: name.to_string(), reason };
        let o: PostgresSettings = crate::config::backends::read("postgres", options).map_err(|e| bad(e.to_string()))?;
        let url = match o.url {
            Some(u) => u.0,
            None => std::env::var("DATABASE_URL")
                .ok()
                .filter(|s| !s.is_empty())
                .ok_or_else(|| bad("no `url` in its configuration and no DATABASE_URL in the environment".into()))?,
        };
        let location = redact(&url);
        if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
            return Err(bad(format!("`url` must be a postgres:// URL, not `{location}`")));
        }
        let schema = o.schema.map_or_else(|| "taskweave_queue".into(), |s| s.0);
        let valid = schema.len() <= 63
            && schema.bytes().next().is_some_and(|b| b.is_ascii_lowercase() || b == b'_')
            && schema.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
        if !valid {
            return Err(bad(format!("`schema` must be a lower-case SQL name (letters, digits, `_`), not `{schema}`")));
        }
        let lease = o.lease.map_or(Duration::from_secs(30), |d| d.0);
        if lease < Duration::from_millis(500) {
            return Err(bad("`lease` must be at least 500ms".into()));
        }
        Ok(Settings {
            url,
            location,
            schema,
            lease,
            poll: o.poll.map_or(Duration::from_secs(1), |d| d.0).max(Duration::from_millis(10)),
            crash_budget: o.crash_budget.map_or(3, |c| c.0),
            max_connections: o.max_connections.map_or(16, |c| c.0),
            shutdown_grace: o.shutdown_grace.map_or(Duration::from_secs(30), |d| d.0),
            synchronous_completions: o.synchronous_completions.is_some_and(|f| f.0),
        })
    }

    fn channel(&self, what: &str) -> String {
        format!("{}_{what}", self.schema)
    }
}

/// `postgres://user:secret@host/db` -> `postgres://user:***@host/db`.
fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, _)) => format!("{scheme}://{user}:***@{host}{tail}"),
            None => url.to_string(),
        },
        None => url.to_string(),
    }
}

/// Open the driver. Nothing connects yet: the first use (or `doctor`)
/// connects, creates or checks the schema, and says what went wrong.
pub async fn open(ctx: DriverContext) -> Result<Arc<dyn Backend>, BackendError> {
    let settings = Settings::from_options(&ctx.name, &ctx.options)?;
    let opts = PgConnectOptions::from_str(&settings.url)
        .map_err(|e| BackendError::Permanent { backend: ctx.name.clone(), reason: format!("bad `url` {}: {e}", settings.location) })?
        .options([("search_path", settings.schema.as_str())])
        .application_name("taskweave");
    let pool = PgPoolOptions::new()
        .max_connections(settings.max_connections)
        .min_connections(0)
        .acquire_timeout(Duration::from_secs(10))
        // Dead connections (a restarted server) fail their next statement,
        // which is retried: no ping before every statement.
        .test_before_acquire(false)
        .connect_lazy_with(opts.clone());
    let db = Db::new(pool.clone(), &settings);
    let backend = Arc::new_cyclic(|me| PgBackend {
        me: me.clone(),
        name: ctx.name,
        connect: opts,
        settings,
        pool,
        db,
        executor: ctx.executor,
        store: ctx.store,
        prepared: tokio::sync::Mutex::new(false),
        hub: Hub::default(),
        shutdown: CancellationToken::new(),
        tracker: tokio_util::task::TaskTracker::new(),
        sync_tx: Mutex::new(None),
        watched: Mutex::new(HashMap::new()),
        notes: Mutex::new(Notes::default()),
        notes_pending: tokio::sync::Notify::new(),
    });
    Ok(backend)
}

/// What the LISTEN connection hears, shared with this process's workers and waiters.
pub(crate) struct Hub {
    /// Bumped when tasks may have become ready (or notifications were missed).
    ready: tokio::sync::watch::Sender<u64>,
    /// Runs asked to stop.
    stops: tokio::sync::broadcast::Sender<String>,
    /// Runs that finished.
    done: tokio::sync::broadcast::Sender<String>,
}

impl Default for Hub {
    fn default() -> Self {
        Hub {
            ready: tokio::sync::watch::channel(0).0,
            stops: tokio::sync::broadcast::channel(1024).0,
            done: tokio::sync::broadcast::channel(4096).0,
        }
    }
}

impl Hub {
    fn wake(&self) {
        self.ready.send_modify(|n| *n = n.wrapping_add(1));
    }
}

pub struct PgBackend {
    me: Weak<PgBackend>,
    name: String,
    settings: Settings,
    connect: PgConnectOptions,
    pool: PgPool,
    db: Db,
    executor: Executor,
    store: Option<Store>,
    /// Whether the schema was checked and migrated (and the background started).
    prepared: tokio::sync::Mutex<bool>,
    hub: Hub,
    shutdown: CancellationToken,
    tracker: tokio_util::task::TaskTracker,
    /// Finished runs whose result goes to the store.
    sync_tx: Mutex<Option<tokio::sync::mpsc::UnboundedSender<String>>>,
    /// Unfinished runs submitted here, with what was announced of them.
    watched: Mutex<HashMap<String, events::Seen>>,
    /// Notifications of what committed here, not sent yet.
    notes: Mutex<Notes>,
    notes_pending: tokio::sync::Notify,
}

/// Notifications to send (see `queue::NOTIFY`).
#[derive(Default)]
struct Notes {
    /// Queues with tasks made ready (runs submitted, children promoted, retries).
    queues: HashSet<String>,
    /// Runs that ended.
    ended: Vec<String>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl PgBackend {
    fn unavailable(&self, reason: impl std::fmt::Display) -> BackendError {
        BackendError::Unavailable { backend: self.name.clone(), reason: reason.to_string() }
    }

    fn db_error(&self, e: &queue::DbError) -> BackendError {
        if e.is_connection() {
            self.unavailable(format!("{}: {e}", self.settings.location))
        } else {
            BackendError::Permanent { backend: self.name.clone(), reason: e.to_string() }
        }
    }

    /// Connect, refuse a newer schema, apply migrations, start the background
    /// (LISTEN, reaper, store sync). Once it succeeded it is not repeated.
    async fn prepare(&self) -> Result<(), BackendError> {
        let mut done = self.prepared.lock().await;
        if *done {
            return Ok(());
        }
        // One connection first: its error says what is wrong (the pool's would only time out).
        let conn =
            tokio::time::timeout(Duration::from_secs(10), <sqlx::PgConnection as sqlx::Connection>::connect_with(&self.connect)).await;
        match conn {
            Ok(Ok(c)) => {
                let _ = sqlx::Connection::close(c).await;
            }
            Ok(Err(e)) => return Err(self.db_error(&queue::DbError::from(e))),
            Err(_) => return Err(self.unavailable(format!("{}: no answer within 10s", self.settings.location))),
        }
        let version = self.db.schema_version().await.map_err(|e| self.db_error(&e))?;
        if let Some(v) = version.filter(|v| *v > QUEUE_SCHEMA_VERSION) {
            return Err(BackendError::Permanent {
                backend: self.name.clone(),
                reason: format!(
                    "the queue schema `{}` at {} was created by a newer taskweave (version {v}); this one knows versions up to {QUEUE_SCHEMA_VERSION}",
                    self.settings.schema, self.settings.location
                ),
            });
        }
        let mut m = sqlx::migrate::Migrator::with_migrations(
            MIGRATIONS
                .iter()
                .map(|(v, d, text)| {
                    sqlx::migrate::Migration::new(
                        *v,
                        (*d).into(),
                        sqlx::migrate::MigrationType::Simple,
                        sqlx::SqlSafeStr::into_sql_str(sqlx::AssertSqlSafe(*text)),
                        false,
                    )
                })
                .collect(),
        );
        m.create_schema(self.settings.schema.clone());
        m.dangerous_set_table_name(format!("{}._sqlx_migrations", self.settings.schema));
        m.run(&self.pool).await.map_err(|e| match e {
            sqlx::migrate::MigrateError::VersionMissing(v) => BackendError::Permanent {
                backend: self.name.clone(),
                reason: format!(
                    "the queue schema `{}` at {} has migration {v}, unknown to this taskweave (a newer release?)",
                    self.settings.schema, self.settings.location
                ),
            },
            sqlx::migrate::MigrateError::Execute(e) | sqlx::migrate::MigrateError::ExecuteMigration(e, _) => {
                self.db_error(&queue::DbError::from(e))
            }
            other => self.unavailable(format!("{}: preparing the queue schema: {other}", self.settings.location)),
        })?;
        *done = true;
        self.start_background();
        Ok(())
    }

    fn start_background(&self) {
        let Some(me) = self.me.upgrade() else { return };
        // LISTEN: wake workers, stop runs, answer waiters.
        let b = Arc::clone(&me);
        self.tracker.spawn(async move { b.listen().await });
        // Notify what committed here: ready tasks, ended runs.
        let b = Arc::clone(&me);
        self.tracker.spawn(async move { b.notify_loop().await });
        // The reaper: expired leases, run deadlines, lost store writes.
        let b = Arc::clone(&me);
        self.tracker.spawn(async move { b.reap_loop().await });
        // Run events of the runs submitted here.
        if self.executor.events.is_some() {
            let b = Arc::clone(&me);
            self.tracker.spawn(async move { b.events_loop().await });
        }
        if let Some(writer) = super::store_writer(&self.executor).cloned() {
            let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
            *lock(&self.sync_tx) = Some(tx);
            let b = Arc::clone(&me);
            self.tracker.spawn(async move { b.sync_loop(writer, rx).await });
        }
    }

    async fn listen(self: Arc<Self>) {
        let channels = [self.settings.channel("ready"), self.settings.channel("stop"), self.settings.channel("done")];
        loop {
            let listener = async {
                let mut l = sqlx::postgres::PgListener::connect_with(&self.pool).await?;
                l.listen_all(channels.iter().map(String::as_str)).await?;
                Ok::<_, sqlx::Error>(l)
            };
            let mut l = tokio::select! {
                _ = self.shutdown.cancelled() => return,
                l = listener => match l {
                    Ok(l) => l,
                    Err(e) => {
                        tracing::debug!("LISTEN on {}: {e}", self.settings.location);
                        tokio::select! {
                            _ = self.shutdown.cancelled() => return,
                            _ = tokio::time::sleep(Duration::from_millis(250)) => continue,
                        }
                    }
                },
            };
            // Anything may have been missed while not listening.
            self.hub.wake();
            loop {
                let next = tokio::select! {
                    _ = self.shutdown.cancelled() => return,
                    n = l.try_recv() => n,
                };
                match next {
                    Ok(Some(n)) => {
                        let ch = n.channel();
                        if ch == channels[0] {
                            self.hub.wake();
                        } else if ch == channels[1] {
                            let _ = self.hub.stops.send(n.payload().to_string());
                        } else {
                            let _ = self.hub.done.send(n.payload().to_string());
                        }
                    }
                    // The connection was lost; it reconnects on the next call.
                    Ok(None) => self.hub.wake(),
                    Err(e) => {
                        tracing::debug!("LISTEN connection lost: {e}");
                        break;
                    }
                }
            }
        }
    }

    /// Tasks of this queue became ready: wake its workers.
    fn announce_ready(&self, queue: String) {
        lock(&self.notes).queues.insert(queue);
        self.notes_pending.notify_one();
    }

    /// What an attempt's end committed: announce it, record it in the store.
    fn finished_attempt(&self, run_id: &str, f: &apply::Finish) {
        if f.wake.is_some() || f.announce_end {
            let mut notes = lock(&self.notes);
            if let Some(q) = &f.wake {
                notes.queues.insert(q.clone());
            }
            if f.announce_end {
                notes.ended.push(run_id.to_string());
            }
            drop(notes);
            self.notes_pending.notify_one();
        }
        if f.run_finished {
            self.finished(run_id);
        }
    }

    /// Send the notifications of what committed here: one statement for all
    /// gathered since the last one. (A lost notification costs the workers'
    /// and the waiters' poll interval, nothing more.)
    async fn notify_loop(self: Arc<Self>) {
        loop {
            let stopping = tokio::select! {
                _ = self.shutdown.cancelled() => true,
                _ = self.notes_pending.notified() => false,
            };
            let notes = std::mem::take(&mut *lock(&self.notes));
            if !notes.queues.is_empty() || !notes.ended.is_empty() {
                let queues: Vec<String> = notes.queues.into_iter().collect();
                let sent = tokio::time::timeout(Duration::from_secs(2), queue::retrying(|| self.db.notify(&queues, &notes.ended))).await;
                if let Ok(Err(e)) = sent {
                    tracing::debug!("sending notifications: {e}");
                }
            }
            if stopping {
                return;
            }
        }
    }

    /// Announce the transitions of the runs submitted here: on every
    /// notification that something moved, and at every poll.
    async fn events_loop(self: Arc<Self>) {
        let mut ready = self.hub.ready.subscribe();
        let mut done = self.hub.done.subscribe();
        loop {
            tokio::select! {
                _ = self.shutdown.cancelled() => return,
                _ = tokio::time::sleep(self.settings.poll) => {}
                r = ready.changed() => if r.is_err() { return },
                m = done.recv() => if let Err(tokio::sync::broadcast::error::RecvError::Closed) = m { return },
            }
            self.announce().await;
        }
    }

    /// One pass: read each watched run, send what changed since the last pass.
    async fn announce(&self) {
        let Some(tx) = &self.executor.events else { return };
        if tx.receiver_count() == 0 {
            // Nobody listens (as with the local executor, what nobody hears is not kept).
            lock(&self.watched).clear();
            return;
        }
        let ids: Vec<String> = lock(&self.watched).keys().cloned().collect();
        for run_id in ids {
            let r = match self.db.load_result(&run_id).await {
                Ok(Some(r)) => r,
                Ok(None) => {
                    lock(&self.watched).remove(&run_id);
                    continue;
                }
                Err(e) => {
                    tracing::debug!(run_id, "reading the run for its events: {e}");
                    return;
                }
            };
            let mut out = Vec::new();
            {
                let mut watched = lock(&self.watched);
                let Some(seen) = watched.get_mut(&run_id) else { continue };
                if events::diff(seen, &r, &mut out) {
                    watched.remove(&run_id);
                }
            }
            if tx.receiver_count() > 0 {
                for ev in out {
                    let _ = tx.send(ev);
                }
            }
        }
    }

    async fn reap_loop(self: Arc<Self>) {
        loop {
            let jitter = rand::random_range(0.8..1.2);
            tokio::select! {
                _ = self.shutdown.cancelled() => return,
                _ = tokio::time::sleep(self.settings.poll.mul_f64(jitter)) => {}
            }
            if let Err(e) = self.reap_once().await {
                tracing::debug!("reaper: {e}");
            }
        }
    }

    /// One pass of the reaper: expired leases, run deadlines, store writes.
    pub(crate) async fn reap_once(&self) -> Result<(), queue::DbError> {
        for lost in self.db.expired_leases(100).await? {
            let report = if lost.crashes + 1 >= self.settings.crash_budget as i32 {
                apply::Report::Crashed {
                    give_up: true,
                    error: format!(
                        "the worker running it was lost {} times (its lease expired each time); giving up after the crash budget of {}",
                        lost.crashes + 1,
                        self.settings.crash_budget
                    ),
                }
            } else {
                apply::Report::Crashed {
                    give_up: false,
                    error: format!("attempt {}: the worker running it stopped renewing its lease; trying again", lost.attempt),
                }
            };
            let fin = self.db.finish_attempt(&lost.run_id, lost.position, lost.attempt, None, "reaper", report, 0).await?;
            self.finished_attempt(&lost.run_id, &fin);
        }
        for run_id in self.db.past_deadline(100).await? {
            if self.db.stop_run(&run_id, StopKind::TimedOut).await? {
                self.finished(&run_id);
            }
        }
        if lock(&self.sync_tx).is_some() {
            for run_id in self.db.unsynced(Duration::from_secs(5), 500).await? {
                self.finished(&run_id);
            }
        }
        Ok(())
    }

    /// A run finished here: its result goes to the store.
    fn finished(&self, run_id: &str) {
        if let Some(tx) = &*lock(&self.sync_tx) {
            let _ = tx.send(run_id.to_string());
        }
    }

    async fn sync_loop(self: Arc<Self>, writer: crate::store::StoreWriter, mut rx: tokio::sync::mpsc::UnboundedReceiver<String>) {
        loop {
            let first = tokio::select! {
                _ = self.shutdown.cancelled() => None,
                r = rx.recv() => r,
            };
            let Some(first) = first else { break };
            // Runs finishing meanwhile share the write (and its reads of the queue).
            tokio::select! {
                _ = self.shutdown.cancelled() => {}
                _ = tokio::time::sleep(SYNC_GATHER) => {}
            }
            let mut ids = vec![first];
            while ids.len() < 500
                && let Ok(id) = rx.try_recv()
            {
                ids.push(id);
            }
            self.sync(&writer, &ids).await;
        }
        // Whatever finished before the end.
        let mut ids = Vec::new();
        while let Ok(id) = rx.try_recv() {
            ids.push(id);
        }
        if !ids.is_empty() {
            self.sync(&writer, &ids).await;
        }
    }

    async fn sync(&self, writer: &crate::store::StoreWriter, ids: &[String]) {
        let mut ids = ids.to_vec();
        ids.sort();
        ids.dedup();
        let loaded = match self.db.load_for_store(&ids).await {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!("reading finished runs for the store: {e}");
                return;
            }
        };
        let mut synced = Vec::with_capacity(loaded.len());
        for (result, attempts) in loaded {
            if !result.status.is_terminal() {
                continue;
            }
            writer.run(&result);
            for a in attempts {
                writer.attempt(a);
            }
            synced.push(result.run_id);
        }
        if synced.is_empty() {
            return;
        }
        match writer.flush().await {
            Ok(()) => {
                if let Err(e) = self.db.mark_synced(&synced).await {
                    tracing::debug!("marking runs as recorded: {e}");
                }
            }
            Err(e) => tracing::warn!("recording finished runs in the store: {e}"),
        }
    }

    /// The compiled workflow of a definition, compiled once per process.
    async fn workflow(&self, definition_id: &str) -> Result<Arc<Workflow>, queue::DbError> {
        self.db.workflow(&self.pool, definition_id).await
    }
}

#[async_trait::async_trait]
impl Backend for PgBackend {
    fn name(&self) -> &str {
        &self.name
    }

    fn kind(&self) -> &'static str {
        "postgres"
    }

    fn accepting(&self) -> bool {
        !self.shutdown.is_cancelled()
    }

    async fn submit(&self, req: RunRequest) -> Result<String, BackendError> {
        self.prepare().await?;
        let wf = &req.workflow;
        self.db.definitions.insert(&wf.version, Arc::clone(wf));
        let chosen = req.chosen_id;
        let run_id = req.run_id.clone();
        let mut result = crate::run::executor::new_result(wf, run_id.clone(), &self.name, req.input, req.entity_id, req.context);
        result.routing = req.routing;
        super::reuse_into(&mut result, wf, &req.reuse, &req.retry_of);
        let definition = serde_json::to_value(&wf.raw).unwrap_or_default();
        // One statement; retried when the connection drops (a retry that
        // finds the run inserted by the lost try is a success).
        let mut tries = 0;
        loop {
            tries += 1;
            match self.db.submit(wf, &result, &definition).await {
                Ok(true) => break,
                Ok(false) if chosen || tries == 1 => {
                    return Err(BackendError::Refused { backend: self.name.clone(), reason: format!("a run `{run_id}` exists already") });
                }
                Ok(false) => break,
                Err(e) if e.is_connection() && tries < 5 => {
                    tokio::time::sleep(Duration::from_millis(50 * tries)).await;
                }
                Err(e) => return Err(self.db_error(&e)),
            }
        }
        self.announce_ready(wf.queue.clone().unwrap_or_else(|| "default".into()));
        if self.executor.events.as_ref().is_some_and(|tx| tx.receiver_count() > 0) {
            lock(&self.watched).entry(run_id.clone()).or_default();
        }
        // The run store records the accepted run; the queue stays the truth.
        super::record_accepted(&self.executor, self.store.as_ref(), &result, definition).await;
        Ok(run_id)
    }

    async fn result(&self, run_id: &str, wait: Option<Duration>) -> Result<RunResult, BackendError> {
        self.prepare().await?;
        let until = wait.map(|w| tokio::time::Instant::now() + w);
        let mut done = self.hub.done.subscribe();
        loop {
            let r = queue::retrying(|| self.db.load_result(run_id)).await.map_err(|e| self.db_error(&e))?;
            let Some(r) = r else { return Err(BackendError::NotFound(run_id.to_string())) };
            let Some(until) = until.filter(|_| !r.status.is_terminal()) else { return Ok(r) };
            if tokio::time::Instant::now() >= until {
                return Ok(r);
            }
            // Until the run's notification, the deadline, or a poll.
            let poll = tokio::time::Instant::now() + self.settings.poll;
            loop {
                tokio::select! {
                    _ = tokio::time::sleep_until(until.min(poll)) => break,
                    m = done.recv() => match m {
                        Ok(id) if id == run_id => break,
                        Ok(_) => {}
                        Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => break,
                        Err(_) => {
                            tokio::time::sleep_until(until.min(poll)).await;
                            break;
                        }
                    },
                }
            }
        }
    }

    async fn cancel(&self, run_id: &str) -> Result<(), BackendError> {
        self.prepare().await?;
        match queue::retrying(|| self.db.stop_run_checked(run_id, StopKind::Cancelled)).await {
            Ok(None) => Err(BackendError::NotFound(run_id.to_string())),
            Ok(Some(finished)) => {
                if finished {
                    self.finished(run_id);
                }
                Ok(())
            }
            Err(e) => Err(self.db_error(&e)),
        }
    }

    async fn check(&self) -> Result<String, BackendError> {
        self.prepare().await?;
        let (server, in_flight) = self.db.describe().await.map_err(|e| self.db_error(&e))?;
        Ok(format!(
            "postgres at {} ({server}): queue schema `{}` version {QUEUE_SCHEMA_VERSION}, {in_flight} run(s) in flight",
            self.settings.location, self.settings.schema
        ))
    }

    async fn work(&self, opts: WorkerOptions, stop: CancellationToken) -> Result<(), BackendError> {
        self.prepare().await?;
        let Some(me) = self.me.upgrade() else { return Ok(()) };
        worker::Worker::new(me, opts).run(stop).await;
        Ok(())
    }

    /// The `taskweave worker`s whose heartbeat is within the lease, and
    /// the tasks ready to be claimed now, per queue.
    async fn workers(&self) -> Result<super::WorkerReport, BackendError> {
        self.prepare().await?;
        let mut r = super::WorkerReport::new(&self.name, self.kind());
        r.workers = queue::retrying(|| self.db.live_workers()).await.map_err(|e| self.db_error(&e))?;
        r.queued = queue::retrying(|| self.db.ready_per_queue()).await.map_err(|e| self.db_error(&e))?;
        Ok(r)
    }

    async fn drain(&self) {}

    async fn shutdown(&self) {
        self.shutdown.cancel();
        self.tracker.close();
        self.tracker.wait().await;
        if let Some(w) = super::store_writer(&self.executor) {
            let _ = w.flush().await;
        }
    }
}
