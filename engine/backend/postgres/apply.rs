//! The PostgreSQL driver of the scheduler core: each event of a run (an
//! attempt ended, a cancel, the deadline) is one transaction that locks
//! the run's row, reads the core's state from it (`runs.sched`), feeds the
//! event to [`Core`], and applies the decisions in one statement: task rows
//! made ready, retried, finished or skipped, the attempt recorded, the
//! run finished, the new state written back. No rule about what is ready,
//! skipped or final lives here: the core decides, the SQL carries it out.
//!
//! A worker lost or stopping is not an event of the run: its attempt goes
//! back to the queue as it was (a redelivery) and the core never hears of
//! it, unless the crash budget is spent, which fails the attempt for good.

use super::queue::{CLAIM_FROM_RUN, Claimed, Db, DbError, Result, StopKind, claimed_from_row};
use crate::plan::Workflow;
use crate::run::output;
use crate::run::sched::{Core, Decision, Event, Outcome, seed};
use crate::run::{RunStatus, TaskStatus};
use serde_json::Value;
use sqlx::postgres::PgRow;
use sqlx::{Postgres, Row, Transaction};
use std::time::Duration;

/// What a worker (or the reaper) saw of an attempt.
#[derive(Debug, Clone)]
pub(crate) enum Report {
    Succeeded(Value),
    /// The action failed; `retryable` is false for errors no retry fixes.
    Failed {
        error: String,
        retryable: bool,
    },
    /// The task's timeout stopped it.
    TimedOut,
    /// The task's condition was false (the reason).
    Skipped(String),
    /// The attempt was stopped: by the run's stop when it has one, else by
    /// its worker stopping, which hands the task back.
    Stopped,
    /// The worker was lost (its lease expired). `give_up`: the crash budget
    /// is spent and the task fails.
    Crashed {
        error: String,
        give_up: bool,
    },
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
    /// When a retry decided here is due.
    pub retry_in: Option<Duration>,
}

/// Locks the run's row (the locking rule: the run before its tasks) and
/// reads the core's state; with `$2`, the ended attempt's task row too.
const LOCK_RUN: &str = "SELECT r.definition_id, r.queue, r.status, r.stop, r.sched, r.finished_at IS NOT NULL AS finished, \
       t.lost, t.attempt FROM runs r LEFT JOIN tasks t ON t.run_id = r.run_id AND t.position = $2 \
     WHERE r.run_id = $1 AND set_config('synchronous_commit', $3, true) IS NOT NULL FOR NO KEY UPDATE OF r";

/// Carries out one event's decisions. The guard `g`: the ended attempt
/// (`$11`, `$12`) is still claimed by `$13` (`NULL`: the reaper, for an
/// expired lease); when it is not, nothing changes and `ours` is false.
const APPLY: &str = "WITH v AS (SELECT * FROM UNNEST($2::int[], $3::text[], $4::text[], $5::bool[], $6::text[], $7::text[], \
       $8::int8[], $9::int[], $10::int[]) AS v(position, state, output, set_error, error, skip_reason, delay_ms, lost, crashes)), \
     g AS (SELECT 1 AS ok WHERE $11::int IS NULL UNION ALL \
       SELECT 1 FROM tasks WHERE run_id = $1 AND position = $11 AND attempt = $12 AND state = 'claimed' \
       AND (lease_owner = $13 OR ($13::text IS NULL AND lease_expires < clock_timestamp()))), \
     u AS (UPDATE tasks t SET state = v.state, output = COALESCE(v.output::jsonb, t.output), \
       error = CASE WHEN v.set_error THEN v.error ELSE t.error END, skip_reason = COALESCE(v.skip_reason, t.skip_reason), \
       ready_at = CASE WHEN v.state = 'ready' THEN clock_timestamp() + v.delay_ms * interval '1 millisecond' ELSE t.ready_at END, \
       finished_at = CASE WHEN v.state IN ('ready', 'waiting') THEN NULL ELSE clock_timestamp() END, \
       lost = t.lost + v.lost, crashes = t.crashes + v.crashes, lease_owner = NULL, lease_expires = NULL, \
       attempt = CASE WHEN v.skip_reason IS NULL THEN t.attempt ELSE 0 END, \
       started_at = CASE WHEN v.skip_reason IS NULL THEN t.started_at END \
       FROM v WHERE EXISTS (SELECT 1 FROM g) AND t.run_id = $1 AND t.position = v.position \
       RETURNING t.position, t.attempt_started_at), \
     a AS (INSERT INTO attempts (run_id, position, attempt, status, error, worker, started_at, finished_at) \
       SELECT $1, $11, $12, $14, $15, $16, COALESCE(u.attempt_started_at, clock_timestamp()), clock_timestamp() \
       FROM u WHERE u.position = $11 AND $14::text IS NOT NULL ON CONFLICT DO NOTHING), \
     r AS (UPDATE runs SET sched = COALESCE($17, sched), stop = COALESCE($18, stop), status = COALESCE($19, status), \
       error = CASE WHEN $19::text IS NULL THEN error ELSE $20 END, \
       output = CASE WHEN $19::text IS NULL THEN output ELSE $21::jsonb END, \
       started_at = CASE WHEN $19::text IS NULL THEN started_at ELSE COALESCE(started_at, created_at) END, \
       finished_at = CASE WHEN $19::text IS NULL THEN finished_at ELSE clock_timestamp() END \
       WHERE run_id = $1 AND EXISTS (SELECT 1 FROM g)) \
     SELECT EXISTS (SELECT 1 FROM g) AS ours";

/// The changes to task rows, the attempt and the run that one event makes.
#[derive(Default)]
struct Changes {
    position: Vec<i32>,
    state: Vec<&'static str>,
    output: Vec<Option<String>>,
    set_error: Vec<bool>,
    error: Vec<Option<String>>,
    skip_reason: Vec<Option<String>>,
    delay_ms: Vec<i64>,
    lost: Vec<i32>,
    crashes: Vec<i32>,
    /// The ended attempt's record: status and error.
    attempt: Option<(&'static str, Option<String>)>,
    end: Option<(RunStatus, Option<String>)>,
    /// The run's output, when it ends succeeded with one (see [`Db::end_with_output`]).
    run_output: Option<Value>,
    /// Tasks made ready now (to claim or announce).
    ready_now: Vec<i32>,
    retry_in: Option<Duration>,
    stop_all: bool,
}

impl Changes {
    #[allow(clippy::too_many_arguments)]
    fn task(
        &mut self,
        position: usize,
        state: &'static str,
        output: Option<String>,
        error: Option<Option<String>>,
        skip_reason: Option<String>,
        delay: Duration,
        lost: i32,
        crashes: i32,
    ) {
        self.position.push(position as i32);
        self.state.push(state);
        self.output.push(output);
        self.set_error.push(error.is_some());
        self.error.push(error.flatten());
        self.skip_reason.push(skip_reason);
        self.delay_ms.push(delay.as_millis().min(i64::MAX as u128) as i64);
        self.lost.push(lost);
        self.crashes.push(crashes);
    }

    /// The core's decisions, as row changes. `ended`: the task whose
    /// attempt ended, with its output and whether a lost worker ended it.
    fn decisions(&mut self, decisions: Vec<Decision>, ended: Option<(usize, Option<&Value>, bool)>) {
        let crash = ended.is_some_and(|(_, _, c)| c);
        for d in decisions {
            match d {
                // The claim marks the run running: a queued run waits for a worker.
                Decision::RunStarted => {}
                Decision::Start { task } => {
                    self.task(task, "ready", None, None, None, Duration::ZERO, 0, 0);
                    self.ready_now.push(task as i32);
                }
                Decision::Retry { task, delay, error, .. } => {
                    let crashes = i32::from(crash && ended.is_some_and(|(t, _, _)| t == task));
                    self.task(task, "ready", None, Some(Some(error)), None, delay, 0, crashes);
                    if delay.is_zero() {
                        self.ready_now.push(task as i32);
                    }
                    self.retry_in = Some(self.retry_in.map_or(delay, |d| d.min(delay)));
                }
                Decision::Attempt { status, error, .. } => {
                    // A lost worker's attempt shows as failed, whatever the run's stop made of it.
                    let status = if crash { TaskStatus::Failed } else { status };
                    self.attempt = Some((status.as_str(), error));
                }
                Decision::Finish { task, status, error } => {
                    let output = match ended {
                        Some((t, Some(v), _)) if t == task && status == TaskStatus::Succeeded => {
                            Some(serde_json::to_string(v).unwrap_or_else(|_| "null".into()))
                        }
                        _ => None,
                    };
                    let crashes = i32::from(crash && ended.is_some_and(|(t, _, _)| t == task));
                    self.task(task, status.as_str(), output, Some(error), None, Duration::ZERO, 0, crashes);
                }
                Decision::Skip { task, status, reason } => {
                    self.task(task, status.as_str(), None, None, Some(reason), Duration::ZERO, 0, 0);
                }
                Decision::StopAll => self.stop_all = true,
                Decision::RunFinished { status, error } => self.end = Some((status, error)),
            }
        }
    }
}

/// The event an attempt's report is to the core, or `None` for a
/// redelivery (the worker lost or stopping, the run going on).
fn event_of(report: &Report, stop: Option<RunStatus>) -> Option<Outcome> {
    match report {
        Report::Succeeded(_) => Some(Outcome::Succeeded),
        Report::Failed { error, retryable } => Some(Outcome::Failed { error: error.clone(), retryable: *retryable }),
        Report::TimedOut => Some(Outcome::TimedOut),
        Report::Skipped(reason) => Some(Outcome::Skipped { reason: reason.clone() }),
        Report::Stopped | Report::Crashed { .. } if stop.is_some() => Some(Outcome::Stopped),
        Report::Crashed { error, give_up: true } => Some(Outcome::Failed { error: error.clone(), retryable: false }),
        Report::Stopped | Report::Crashed { .. } => None,
    }
}

pub(super) fn stop_status(kind: StopKind) -> RunStatus {
    match kind {
        StopKind::Cancelled => RunStatus::Cancelled,
        StopKind::TimedOut => RunStatus::TimedOut,
    }
}

impl Db {
    /// The failed (or timed-out) tasks of the workflow's own in a run, as
    /// its handlers read them (`run.failed_tasks`).
    pub(crate) async fn failed_tasks(&self, run_id: &str, wf: &Workflow) -> Result<Vec<Value>> {
        let rows =
            sqlx::query("SELECT position, error FROM tasks WHERE run_id = $1 AND state IN ('failed', 'timed_out') ORDER BY position")
                .bind(run_id)
                .fetch_all(&self.pool)
                .await?;
        let mut out = Vec::new();
        for r in rows {
            let p: i32 = r.try_get("position")?;
            if let Some(t) = wf.tasks.get(p as usize).filter(|t| t.phase == crate::plan::Phase::Main) {
                out.push(serde_json::json!({"name": t.name, "error": r.try_get::<Option<String>, _>("error")?}));
            }
        }
        Ok(out)
    }

    /// The core of the run whose row `run` (from [`LOCK_RUN`]) locked.
    async fn core_of(&self, tx: &mut Transaction<'_, Postgres>, run_id: &str, wf: &Workflow, run: &PgRow) -> Result<Core> {
        let seed = seed(run_id);
        if let Some(bytes) = run.try_get::<Option<Vec<u8>>, _>("sched")? {
            return Core::restore(wf, seed, &bytes).map_err(|e| DbError::Data(e.to_string()));
        }
        // A run submitted by an older version: its state is in its task rows.
        let rows = sqlx::query("SELECT state, attempt, lost FROM tasks WHERE run_id = $1 ORDER BY position")
            .bind(run_id)
            .fetch_all(&mut **tx)
            .await?;
        let mut tasks = Vec::with_capacity(rows.len());
        for r in &rows {
            let state: String = r.try_get("state")?;
            let made = (r.try_get::<i32, _>("attempt")? - r.try_get::<i32, _>("lost")?).max(0) as u32;
            tasks.push(match state.as_str() {
                "waiting" | "held" => (TaskStatus::Pending, 0),
                // Started, or a retry, waiting for a worker.
                "ready" => (TaskStatus::Running, made + 1),
                "claimed" => (TaskStatus::Running, made.max(1)),
                other => {
                    let s = TaskStatus::parse(other).ok_or_else(|| DbError::Data(format!("unknown task state `{other}` in the queue")))?;
                    (s, made)
                }
            });
        }
        let status: String = run.try_get("status")?;
        let status = match RunStatus::parse(&status) {
            Some(s) if s.is_terminal() => s,
            Some(_) => RunStatus::Running,
            None => return Err(DbError::Data(format!("unknown run status `{status}` in the queue"))),
        };
        let stop = StopKind::parse(run.try_get::<Option<String>, _>("stop")?.as_deref()).map(stop_status);
        Core::resume(wf, seed, status, stop, tasks).map_err(|e| DbError::Data(e.to_string()))
    }

    /// The run's end with its output ([`output::end`]): when the core ends
    /// the run succeeded and its workflow declares an output, the outputs of
    /// the tasks the output reads are loaded in `tx` (the run's row is
    /// locked: they are final and stay so) and the output rendered; one that
    /// cannot be rendered fails the run. `ended`: the task whose attempt
    /// ended with this event, and its output (not written yet).
    async fn end_with_output(
        &self,
        tx: &mut Transaction<'_, Postgres>,
        run_id: &str,
        wf: &Workflow,
        core: &Core,
        changes: &mut Changes,
        ended: Option<(usize, Option<&Value>)>,
    ) -> Result<()> {
        let Some((status, error)) = changes.end.take() else { return Ok(()) };
        if !output::wanted(wf, status) {
            changes.end = Some((status, error));
            return Ok(());
        }
        let reads: Vec<i32> = wf.output.iter().flat_map(|o| o.reads.iter().map(|&r| r as i32)).collect();
        let row = sqlx::query(
            "SELECT r.input::text AS input, r.context::text AS context, \
             (SELECT jsonb_object_agg(t.position::text, t.output)::text FROM tasks t \
              WHERE t.run_id = r.run_id AND t.position = ANY($2) AND t.state = 'succeeded') AS outputs \
             FROM runs r WHERE r.run_id = $1",
        )
        .bind(run_id)
        .bind(&reads)
        .fetch_one(&mut **tx)
        .await?;
        let json = |col: &str| -> Result<Value> {
            let text: Option<String> = row.try_get(col)?;
            text.map(|t| serde_json::from_str(&t).map_err(|e| DbError::Data(format!("bad {col} JSON in the queue: {e}"))))
                .transpose()
                .map(Option::unwrap_or_default)
        };
        let (input, context, stored) = (json("input")?, json("context")?, json("outputs")?);
        let base = output::base_context(wf, run_id, &input, &context);
        let end = output::end(wf, status, error, &base, |task| {
            let value = match ended {
                Some((t, v)) if t == task => v.cloned(),
                _ => stored.get(task.to_string().as_str()).cloned(),
            };
            (value, core.task_status(task))
        });
        changes.end = Some((end.status, end.error));
        changes.run_output = end.output;
        Ok(())
    }

    /// Apply `changes` (and the core's new state) in `tx`; `ended`: the
    /// attempt that must still be `owner`'s. `false`: it was not.
    #[allow(clippy::too_many_arguments)]
    async fn apply(
        &self,
        tx: &mut Transaction<'_, Postgres>,
        run_id: &str,
        core: &Core,
        changes: &Changes,
        ended: Option<(i32, i32)>,
        owner: Option<&str>,
        worker: &str,
        stop: Option<StopKind>,
    ) -> Result<bool> {
        let (attempt_status, attempt_error) = match &changes.attempt {
            Some((s, e)) => (Some(*s), e.clone()),
            None => (None, None),
        };
        let (end, end_error) = match &changes.end {
            Some((s, e)) => (Some(s.as_str()), e.clone()),
            None => (None, None),
        };
        let row = sqlx::query(APPLY)
            .bind(run_id)
            .bind(&changes.position)
            .bind(&changes.state)
            .bind(&changes.output)
            .bind(&changes.set_error)
            .bind(&changes.error)
            .bind(&changes.skip_reason)
            .bind(&changes.delay_ms)
            .bind(&changes.lost)
            .bind(&changes.crashes)
            .bind(ended.map(|e| e.0))
            .bind(ended.map(|e| e.1))
            .bind(owner)
            .bind(attempt_status)
            .bind(attempt_error)
            .bind(worker)
            .bind(core.snapshot())
            .bind(stop.map(StopKind::as_str))
            .bind(end)
            .bind(end_error)
            .bind(changes.run_output.as_ref().map(Value::to_string))
            .fetch_one(&mut **tx)
            .await?;
        Ok(row.try_get("ours")?)
    }

    /// End an attempt in one transaction: the core decides what follows
    /// (the children start, a retry, descendants skipped, the run's end)
    /// and the decisions are applied. `owner`: the worker holding the lease
    /// (`None`: the reaper, for an expired lease). `claim_max`: how many
    /// tasks made ready to claim for `owner` in the same transaction.
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn finish_attempt(
        &self,
        run_id: &str,
        position: i32,
        attempt: i32,
        owner: Option<&str>,
        worker: &str,
        report: Report,
        claim_max: usize,
    ) -> Result<Finish> {
        let stale = || Ok(Finish { stale: true, ..Finish::default() });
        let mut tx = self.pool.begin().await?;
        let Some(run) = sqlx::query(LOCK_RUN).bind(run_id).bind(position).bind(self.completion_commit).fetch_optional(&mut *tx).await?
        else {
            return stale();
        };
        let (Some(lost), Some(made)) = (run.try_get::<Option<i32>, _>("lost")?, run.try_get::<Option<i32>, _>("attempt")?) else {
            return stale();
        };
        if made != attempt || run.try_get::<bool, _>("finished")? {
            return stale();
        }
        let definition_id: String = run.try_get("definition_id")?;
        let queue: String = run.try_get("queue")?;
        let wf = self.workflow(&mut *tx, &definition_id).await?;
        let mut core = self.core_of(&mut tx, run_id, &wf, &run).await?;
        let task = position as usize;
        if task >= wf.tasks.len() {
            return Err(DbError::Data(format!("definition {definition_id} has no task at position {position}")));
        }
        let mut changes = Changes::default();
        let crash = matches!(report, Report::Crashed { .. });
        match event_of(&report, core.stop()) {
            None => {
                // Back to the queue as it was, for another worker.
                let (status, error) = match &report {
                    Report::Crashed { error, .. } => (TaskStatus::Failed, error.clone()),
                    _ => (TaskStatus::Cancelled, "handed back: the worker running it stopped".to_string()),
                };
                changes.task(task, "ready", None, Some(Some(error.clone())), None, Duration::ZERO, 1, i32::from(crash));
                changes.attempt = Some((status.as_str(), Some(error)));
                changes.ready_now.push(position);
            }
            Some(outcome) => {
                // Tries lost with a worker do not count against `retry.attempts`.
                let counted = (attempt - lost).max(1) as u32;
                let mut out = Vec::new();
                if let Err(e) = core.handle(&wf, Event::Ended { task, attempt: counted, outcome }, &mut out) {
                    tracing::debug!(run_id, position, "an attempt's end the run no longer expects: {e}");
                    return stale();
                }
                let output = match &report {
                    Report::Succeeded(v) => Some(v),
                    _ => None,
                };
                changes.decisions(out, Some((task, output, crash)));
                self.end_with_output(&mut tx, run_id, &wf, &core, &mut changes, Some((task, output))).await?;
            }
        }
        if !self.apply(&mut tx, run_id, &core, &changes, Some((position, attempt)), owner, worker, None).await? {
            tx.rollback().await?;
            return stale();
        }
        let mut claimed = Vec::new();
        if claim_max > 0
            && let Some(owner) = owner
        {
            let direct: Vec<i32> = changes.ready_now.iter().copied().filter(|p| *p != position).collect();
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
        tx.commit().await?;
        let run_finished = changes.end.is_some();
        let wake = (changes.ready_now.len() > claimed.len() && !run_finished).then_some(queue);
        Ok(Finish { stale: false, run_finished, announce_end: run_finished, wake, claimed, retry_in: changes.retry_in })
    }

    /// Ask a run to stop: attempts waiting in the queue end now, running
    /// ones when their workers stop them (or their lease expires).
    /// `true`: the run finished.
    pub(crate) async fn stop_run(&self, run_id: &str, kind: StopKind) -> Result<bool> {
        Ok(self.stop_run_checked(run_id, kind).await?.unwrap_or(false))
    }

    /// As [`Db::stop_run`]; `None` when there is no such run.
    pub(crate) async fn stop_run_checked(&self, run_id: &str, kind: StopKind) -> Result<Option<bool>> {
        let mut tx = self.pool.begin().await?;
        let Some(run) = sqlx::query(LOCK_RUN).bind(run_id).bind(None::<i32>).bind("on").fetch_optional(&mut *tx).await? else {
            return Ok(None);
        };
        if run.try_get::<bool, _>("finished")? || run.try_get::<Option<String>, _>("stop")?.is_some() {
            tx.rollback().await?;
            return Ok(Some(false));
        }
        let definition_id: String = run.try_get("definition_id")?;
        let wf = self.workflow(&mut *tx, &definition_id).await?;
        let mut core = self.core_of(&mut tx, run_id, &wf, &run).await?;
        let event = match kind {
            StopKind::Cancelled => Event::Cancel,
            StopKind::TimedOut => Event::Deadline,
        };
        let mut out = Vec::new();
        core.handle(&wf, event, &mut out).map_err(|e| DbError::Data(e.to_string()))?;
        let mut changes = Changes::default();
        changes.decisions(std::mem::take(&mut out), None);
        if changes.stop_all {
            // Attempts no worker holds yet never begin; the claimed ones
            // end when their workers hear of the stop.
            let waiting: Vec<i32> =
                sqlx::query_scalar("SELECT position FROM tasks WHERE run_id = $1 AND state = 'ready' ORDER BY position")
                    .bind(run_id)
                    .fetch_all(&mut *tx)
                    .await?;
            for p in waiting {
                let task = p as usize;
                if task >= wf.tasks.len() || core.task_status(task) != TaskStatus::Running {
                    continue;
                }
                let event = Event::Ended { task, attempt: core.attempt(task), outcome: Outcome::NotStarted };
                core.handle(&wf, event, &mut out).map_err(|e| DbError::Data(e.to_string()))?;
                changes.decisions(std::mem::take(&mut out), None);
            }
        }
        self.end_with_output(&mut tx, run_id, &wf, &core, &mut changes, None).await?;
        self.apply(&mut tx, run_id, &core, &changes, None, None, "", Some(kind)).await?;
        let finished = changes.end.is_some();
        let channel = if finished { &self.done_channel } else { &self.stop_channel };
        sqlx::query("SELECT pg_notify($1, $2)").bind(channel).bind(run_id).execute(&mut *tx).await?;
        // The stop let the handlers start.
        if !changes.ready_now.is_empty() {
            let queue: String = run.try_get("queue")?;
            sqlx::query("SELECT pg_notify($1, $2)").bind(&self.ready_channel).bind(queue).execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(Some(finished))
    }

    /// The core's first decisions for a run about to be submitted: which
    /// tasks are ready from the start, and the state to record.
    /// `reused`: tasks that succeeded already (a retry of another run).
    pub(crate) fn first_decisions(
        wf: &Workflow,
        run_id: &str,
        reused: &[usize],
    ) -> std::result::Result<(Vec<&'static str>, Vec<u8>), crate::run::state::IllegalTransition> {
        let (core, out) = Core::started(wf, seed(run_id), reused)?;
        let mut states = vec!["waiting"; wf.tasks.len()];
        for &t in reused {
            states[t] = "succeeded";
        }
        for d in &out {
            if let Decision::Start { task } = d {
                states[*task] = "ready";
            }
        }
        Ok((states, core.snapshot()))
    }
}
