//! Which engine instance executes a run, and when a run has lost it.
//!
//! Runs of the in-process backends live as long as the process that runs
//! them. A process id cannot tell whether that process is gone: inside a
//! container taskweave is pid 1 at every start, so after a crash and a
//! restart the dead process's pid is alive again (it is the new process).
//! So each engine process is an instance with its own id (a UUIDv7) and a
//! lease row in the store (instance id, host, pid, start, last heartbeat,
//! lease length) that the engine renews every [`HEARTBEAT`]; runs record
//! the instance that executes them; and a run whose instance has not
//! renewed its lease for its length is interrupted. The pid is only a
//! shortcut: a run of another process of this host whose pid no longer
//! exists is interrupted at once, without waiting for its lease to expire.
//!
//! This module touches the `instances` table and the unfinished runs it
//! recovers; the engine decides when to renew and to recover.

use super::sql::{self, Stmt, Val, parse_ts};
use super::{Owner, Result, Step, Steps, Store, db_error, hostname, process_exists};
use std::sync::OnceLock;
use std::time::Duration;
use time::OffsetDateTime;

/// How often an engine renews its lease, by default.
pub const HEARTBEAT: Duration = Duration::from_secs(5);

/// How long a lease lasts without renewal, by default: after this, the
/// runs of its instance are interrupted.
pub const LEASE: Duration = Duration::from_secs(30);

/// How long an instance that stopped renewing its lease stays recorded
/// once it owns no unfinished run.
const FORGET_AFTER: Duration = Duration::from_secs(24 * 3600);

/// The id of this process's engine instance: a UUIDv7 chosen once per
/// process, shared by every store and engine it opens.
pub fn instance_id() -> &'static str {
    static ID: OnceLock<String> = OnceLock::new();
    ID.get_or_init(|| uuid::Uuid::now_v7().to_string())
}

/// When this process's instance began (its first lease).
fn instance_started() -> OffsetDateTime {
    static AT: OnceLock<OffsetDateTime> = OnceLock::new();
    *AT.get_or_init(OffsetDateTime::now_utc)
}

/// One instance's lease, as renewed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub instance: String,
    pub host: String,
    pub pid: u32,
    pub started_at: OffsetDateTime,
    pub heartbeat_at: OffsetDateTime,
    /// How long the lease holds after `heartbeat_at`.
    pub ttl: Duration,
}

impl Lease {
    /// This process's lease, renewed now, lasting `ttl`.
    pub fn current(ttl: Duration) -> Lease {
        Lease {
            instance: instance_id().to_string(),
            host: hostname().to_string(),
            pid: std::process::id(),
            started_at: instance_started(),
            heartbeat_at: OffsetDateTime::now_utc(),
            ttl,
        }
    }
}

/// An unfinished run and what is known of its owner.
/// What a recovery of interrupted runs did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Recovered {
    /// Runs marked failed.
    pub failed: Vec<String>,
    /// Runs this process adopted, with their backend, to resume.
    pub adopted: Vec<(String, String)>,
}

struct Candidate {
    run_id: String,
    backend: String,
    host: Option<String>,
    pid: i64,
    instance: Option<String>,
    /// The owner's last heartbeat and lease length, when it has a lease.
    lease: Option<(OffsetDateTime, Duration)>,
}

impl Store {
    /// Records an instance's lease, or renews it (its start and host are
    /// kept from the first time).
    pub async fn renew_lease(&self, lease: &Lease) -> Result<()> {
        let q = Stmt {
            sql: self.inner.sql.renew_lease.clone(),
            args: vec![
                Val::Text(Some(lease.instance.clone())),
                Val::Text(Some(lease.host.clone())),
                Val::Int(Some(i64::from(lease.pid))),
                Val::Text(Some(sql::ts_text(lease.started_at))),
                Val::Text(Some(sql::ts_text(lease.heartbeat_at))),
                Val::Int(Some(i64::try_from(lease.ttl.as_millis()).unwrap_or(i64::MAX))),
            ],
        };
        self.inner.execute(&format!("renewing the lease of instance {}", lease.instance), q).await?;
        Ok(())
    }

    /// Marks as failed the queued or running runs whose executor is gone,
    /// cancelling their unfinished tasks; returns their ids. A run's
    /// executor is gone when its instance's lease expired, or when it is a
    /// process of this host, other than this one, that no longer exists.
    /// Runs recorded without an instance, or whose instance has no lease,
    /// are judged by host and pid: gone when their pid on this host no
    /// longer exists or is this process (which runs none of them).
    pub async fn recover_orphans(&self) -> Result<Vec<String>> {
        Ok(self.recover(None, false).await?.failed)
    }

    /// [`Store::recover_orphans`], limited to runs of the named backends:
    /// those that execute inside the process that started them. Runs of a
    /// distributed backend outlive the process that submitted them.
    pub async fn recover_orphans_of(&self, in_process: &[String]) -> Result<Vec<String>> {
        Ok(self.recover(Some(in_process), false).await?.failed)
    }

    /// As [`Store::recover_orphans_of`], but each interrupted run is
    /// adopted by this process instead of failed (its owner becomes this
    /// instance, compared and set in one statement, so of processes
    /// recovering at once exactly one adopts it), for this process to
    /// resume it.
    pub async fn adopt_orphans_of(&self, in_process: &[String]) -> Result<Recovered> {
        self.recover(Some(in_process), true).await
    }

    async fn recover(&self, in_process: Option<&[String]>, adopt: bool) -> Result<Recovered> {
        let sql = &self.inner.sql;
        let me = &self.inner.owner;
        let candidates = self
            .inner
            .fetch("looking for interrupted runs", Stmt { sql: sql.orphan_candidates.clone(), args: vec![] }, |r| {
                let lease = match (r.text("heartbeat_at")?, r.int("lease_ms")?) {
                    (Some(at), Some(ms)) => Some((parse_ts(&at)?, Duration::from_millis(u64::try_from(ms).unwrap_or(0)))),
                    _ => None,
                };
                Ok(Candidate {
                    run_id: r.req_text("run_id")?,
                    backend: r.req_text("backend")?,
                    host: r.text("owner_host")?,
                    pid: r.int("owner_pid")?.unwrap_or(0),
                    instance: r.text("owner_instance")?,
                    lease,
                })
            })
            .await?;
        let now = OffsetDateTime::now_utc();
        let mut recovered = Recovered::default();
        for c in candidates.into_iter().filter(|c| in_process.is_none_or(|names| names.contains(&c.backend))) {
            let Some(message) = orphaned(&c, me, now) else { continue };
            if adopt {
                let q = Stmt {
                    sql: sql.adopt_run.clone(),
                    args: vec![
                        Val::Text(Some(c.run_id.clone())),
                        Val::Text(Some(me.host.clone())),
                        Val::Int(Some(i64::from(me.pid))),
                        Val::Text(me.instance.clone()),
                        Val::Int(Some(c.pid)),
                        Val::Text(Some(c.instance.clone().unwrap_or_default())),
                    ],
                };
                if self.inner.execute(&format!("adopting run {}", c.run_id), q).await? == 1 {
                    tracing::warn!(run_id = c.run_id, pid = c.pid, "adopted an interrupted run to resume it ({message})");
                    recovered.adopted.push((c.run_id, c.backend));
                }
                continue;
            }
            let run_id = c.run_id;
            let now = sql::ts_text(now);
            let args = || vec![Val::Text(Some(run_id.clone())), Val::Text(Some(message.clone())), Val::Text(Some(now.clone()))];
            let steps = [&sql.fail_orphan_run, &sql.cancel_orphan_tasks, &sql.cancel_orphan_implicit_tasks, &sql.cancel_orphan_attempts]
                .map(|q| Step::Execute(Stmt { sql: q.clone(), args: args() }));
            // Only a run this call fails has its tasks and attempts cancelled.
            let mut script = Steps::new(steps, Some(0));
            self.inner.run_script(&mut script).await.map_err(|e| db_error(&format!("recovering run {run_id}"), &e))?;
            if script.affected.first() == Some(&1) {
                tracing::warn!(run_id, pid = c.pid, instance = c.instance.as_deref().unwrap_or("-"), "marked an interrupted run as failed");
                recovered.failed.push(run_id);
            }
        }
        let forget = Stmt { sql: sql.forget_instances.clone(), args: vec![Val::Text(Some(sql::ts_text(now - FORGET_AFTER)))] };
        self.inner.execute("forgetting stopped instances", forget).await?;
        Ok(recovered)
    }
}

/// Why the run's executor is gone, or `None` while it may be alive.
fn orphaned(c: &Candidate, me: &Owner, now: OffsetDateTime) -> Option<String> {
    if c.instance.is_some() && c.instance == me.instance {
        return None;
    }
    let here = c.host.as_deref() == Some(me.host.as_str());
    let pid = c.pid;
    let mine = u32::try_from(pid).ok() == Some(me.pid);
    let exited = || format!("interrupted: the process running it (pid {pid}) exited");
    // A process of this host, not this one, that no longer exists.
    if here && !mine && !process_exists(pid) {
        return Some(exited());
    }
    match (&c.instance, c.lease) {
        (Some(instance), Some((heartbeat, ttl))) => (heartbeat + ttl < now).then(|| {
            let at = heartbeat.format(&time::format_description::well_known::Rfc3339).unwrap_or_default();
            let host = c.host.as_deref().unwrap_or("?");
            format!("interrupted: the process running it (pid {pid} on {host}, instance {instance}) stopped renewing its lease at {at}")
        }),
        // No lease to go by: a pid of this host that is this process runs
        // none of these runs (its own carry its instance).
        _ => (here && mine).then(exited),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn me() -> Owner {
        Owner { host: "box".into(), pid: 1, instance: Some("me".into()) }
    }

    fn candidate(host: &str, pid: i64, instance: Option<&str>, lease: Option<(OffsetDateTime, Duration)>) -> Candidate {
        Candidate {
            run_id: "r".into(),
            backend: "local".into(),
            host: Some(host.into()),
            pid,
            instance: instance.map(str::to_string),
            lease,
        }
    }

    #[test]
    fn leases_decide_and_pids_only_shorten() {
        let now = OffsetDateTime::now_utc();
        let fresh = Some((now - Duration::from_secs(5), LEASE));
        let expired = Some((now - Duration::from_secs(60), LEASE));
        let dead = {
            let mut child = std::process::Command::new("true").spawn().unwrap();
            let pid = child.id();
            child.wait().unwrap();
            i64::from(pid)
        };
        let alive = i64::from(std::process::id());
        let cases: Vec<(&str, Candidate, bool)> = vec![
            ("our own instance", candidate("box", 1, Some("me"), expired), false),
            ("same pid as ours, lease expired: the container restart", candidate("box", 1, Some("old"), expired), true),
            ("same pid as ours, lease fresh", candidate("box", 1, Some("old"), fresh), false),
            ("another host, lease expired", candidate("elsewhere", 1, Some("x"), expired), true),
            ("another host, lease fresh", candidate("elsewhere", dead, Some("x"), fresh), false),
            ("this host, another pid that exited, lease fresh", candidate("box", dead, Some("x"), fresh), true),
            ("this host, another pid alive, lease fresh", candidate("box", alive, Some("x"), fresh), false),
            ("no instance, our pid", candidate("box", 1, None, None), true),
            ("no instance, a live pid", candidate("box", alive, None, None), false),
            ("no instance, another host", candidate("elsewhere", 1, None, None), false),
            ("an instance without a lease row, another host", candidate("elsewhere", 1, Some("x"), None), false),
        ];
        for (what, c, gone) in cases {
            assert_eq!(orphaned(&c, &me(), now).is_some(), gone, "{what}");
        }
    }
}
