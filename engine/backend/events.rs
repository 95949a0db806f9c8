//! Run events derived from a distributed backend's state of a run, for the
//! process that submitted it.
//!
//! The workers of the PostgreSQL and Celery backends commit transitions to
//! the database or to Redis and do not announce them, so the submitting
//! process (the one serving the API, or `taskweave run`) derives them: it
//! reads each of its unfinished runs when a notification says that something
//! moved and at every poll, compares with what it announced last, and sends
//! what changed on the executor's event channel, in the shape the local
//! executor sends. A task that ran and ended between two reads still gets its
//! `running` event(s) (one per attempt) before its end. Each run's events are
//! derived by one loop per process only, so each goes out once, whether or
//! not the process is also a worker.

use crate::run::executor::RunEvent;
use crate::run::{RunResult, RunStatus, TaskStatus};
use std::collections::HashMap;

/// What this process last announced of one run.
#[derive(Debug, Default)]
pub(crate) struct Seen {
    started: bool,
    /// Task -> (status, attempt) last announced.
    tasks: HashMap<String, (TaskStatus, u32)>,
}

fn event(r: &RunResult, task: Option<&str>, status: &str, attempt: u32, error: Option<&str>) -> RunEvent {
    RunEvent {
        run_id: r.run_id.clone(),
        workflow: r.workflow.clone(),
        task: task.map(str::to_string),
        status: status.to_string(),
        attempt,
        error: error.map(str::to_string),
    }
}

/// The events that take `seen` to the run's state `r`, in the order the
/// local executor sends them: the run's start, the tasks' starts (and
/// retries), their ends in the order they ended, the run's end. Returns
/// whether the run has ended (nothing more will come).
pub(crate) fn diff(seen: &mut Seen, r: &RunResult, out: &mut Vec<RunEvent>) -> bool {
    if r.status == RunStatus::Queued {
        return false;
    }
    if !seen.started {
        seen.started = true;
        out.push(event(r, None, RunStatus::Running.as_str(), 0, None));
    }
    // Each event with the time it happened, so that what several passes
    // would have seen one by one comes out in that order.
    let mut found: Vec<(Option<time::OffsetDateTime>, RunEvent)> = Vec::new();
    for (name, t) in &r.tasks {
        let (before, before_attempt) = seen.tasks.get(name).copied().unwrap_or((TaskStatus::Pending, 0));
        if before.is_terminal() || (before == t.status && before_attempt == t.attempts) {
            continue;
        }
        // Each attempt that started since, whatever its end.
        for attempt in (before_attempt + 1)..=t.attempts {
            found.push((t.started_at, event(r, Some(name), TaskStatus::Running.as_str(), attempt, None)));
        }
        if t.status.is_terminal() {
            found.push((t.finished_at, event(r, Some(name), t.status.as_str(), t.attempts, t.error.as_deref())));
        }
        seen.tasks.insert(name.clone(), (t.status, t.attempts.max(before_attempt)));
    }
    // Stable: a task's start stays before its end when both have one time.
    found.sort_by_key(|(at, _)| *at);
    out.extend(found.into_iter().map(|(_, e)| e));
    if r.status.is_terminal() {
        out.push(event(r, None, r.status.as_str(), 0, r.error.as_deref()));
        return true;
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::run::TaskResult;
    use time::OffsetDateTime;

    fn run(status: RunStatus, tasks: &[(&str, TaskStatus, u32, Option<&str>, i64)]) -> RunResult {
        let mut r = RunResult {
            run_id: "r1".into(),
            workflow: "wf".into(),
            version: "v".into(),
            status,
            backend: "pg".into(),
            routing: None,
            error: None,
            output: None,
            retry_of: None,
            entity_id: "e".into(),
            context: serde_json::Value::Null,
            input: serde_json::Value::Null,
            created_at: OffsetDateTime::UNIX_EPOCH,
            started_at: None,
            finished_at: None,
            tasks: Default::default(),
        };
        for (name, s, attempts, error, at) in tasks {
            let mut t = TaskResult::pending();
            t.status = *s;
            t.attempts = *attempts;
            t.error = error.map(str::to_string);
            if *attempts > 0 {
                t.started_at = Some(OffsetDateTime::UNIX_EPOCH);
            }
            if s.is_terminal() {
                t.finished_at = Some(OffsetDateTime::UNIX_EPOCH + time::Duration::seconds(*at));
            }
            r.tasks.insert(name.to_string(), t);
        }
        r
    }

    fn pairs(evs: &[RunEvent]) -> Vec<(Option<&str>, &str, u32)> {
        evs.iter().map(|e| (e.task.as_deref(), e.status.as_str(), e.attempt)).collect()
    }

    #[test]
    fn announces_each_transition_once_in_order() {
        use TaskStatus::*;
        let mut seen = Seen::default();
        let mut out = Vec::new();
        assert!(!diff(&mut seen, &run(RunStatus::Queued, &[("a", Pending, 0, None, 0)]), &mut out));
        assert!(out.is_empty());
        let mid = run(RunStatus::Running, &[("a", Running, 1, None, 0), ("b", Pending, 0, None, 0)]);
        assert!(!diff(&mut seen, &mid, &mut out));
        assert!(!diff(&mut seen, &mid, &mut out), "nothing new");
        assert_eq!(pairs(&out), vec![(None, "running", 0), (Some("a"), "running", 1)]);
        out.clear();
        // b ran twice and failed within one poll; c was skipped.
        let end = run(RunStatus::Failed, &[("a", Succeeded, 1, None, 1), ("b", Failed, 2, Some("boom"), 2), ("c", Skipped, 0, None, 3)]);
        assert!(diff(&mut seen, &end, &mut out));
        assert_eq!(
            pairs(&out),
            vec![
                (Some("b"), "running", 1),
                (Some("b"), "running", 2),
                (Some("a"), "succeeded", 1),
                (Some("b"), "failed", 2),
                (Some("c"), "skipped", 0),
                (None, "failed", 0)
            ]
        );
        assert_eq!(out[3].error.as_deref(), Some("boom"));
        assert!(out[1].error.is_none());
    }
}
