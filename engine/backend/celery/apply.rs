//! The Celery driver of the scheduler core. An event of a run (an attempt
//! ended, a stop) restores the run's [`Core`] from the state its hash
//! keeps, feeds the event, and writes the decisions with the `apply`
//! script: task results, the messages of the tasks that start, the run's
//! stop or end, and the core's new state. The script refuses when the
//! state moved on since it was read (another worker's event came first);
//! the event is then decided again from the state the script returns.
//! Nothing about what is ready, skipped or final is decided here.

use super::CeleryBackend;
use super::runs::{Applied, Changes, Progress, Sched, StopReason};
use super::wire;
use crate::plan::{TaskId, Workflow};
use crate::run::output;
use crate::run::sched::{Core, Decision, Event, Outcome, seed};
use crate::run::{TaskResult, TaskStatus};
use time::OffsetDateTime;

/// Decisions made from a state that moved on are made again; past this
/// many tries in a row something is wrong (a run changing faster than one
/// round trip, for ever).
const MAX_TRIES: usize = 1000;

/// An event of a run, as a Celery process sees it.
#[derive(Debug, Clone)]
pub(super) enum Step {
    /// An attempt of `task` ended; `attempt` is the core's number for it
    /// (`None`: the attempt the core has in progress).
    Ended { task: TaskId, attempt: Option<u32>, outcome: Outcome },
    /// The run is asked to stop.
    Stop(StopReason),
}

/// The attempt of `task` the core has in progress, from a recorded state.
pub(super) fn attempt_in_progress(wf: &Workflow, run: &str, sched: &Sched, task: TaskId) -> Option<u32> {
    let core = Core::restore(wf, seed(run), &sched.bytes).ok()?;
    (core.task_status(task) == TaskStatus::Running).then(|| core.attempt(task))
}

impl CeleryBackend {
    /// Feed `step` to the core of `run` and write its decisions. `known`:
    /// the state as last seen (by the claim), tried first. `mine`: the
    /// result the ended attempt's worker holds (output, attempts, start).
    /// `None`: the run is gone. The decisions come back for the worker
    /// (a retry of its task is its to carry out).
    pub(super) async fn event(
        &self,
        run: &str,
        wf: &Workflow,
        step: Step,
        mut known: Option<Sched>,
        mine: Option<&TaskResult>,
        queue: &str,
    ) -> Result<Option<(Progress, Vec<Decision>)>, crate::backend::BackendError> {
        let queue_key = self.broker.key(&wire::queue_key(queue, 0));
        for _ in 0..MAX_TRIES {
            let from = match known.take() {
                Some(s) => s,
                None => match self.runs.sched(run).await.map_err(|e| self.unavailable(e))? {
                    Some(s) => s,
                    None => return Ok(None),
                },
            };
            let mut core = Core::restore(wf, seed(run), &from.bytes)
                .map_err(|e| crate::backend::BackendError::Permanent { backend: self.name.clone(), reason: format!("run {run}: {e}") })?;
            let mut decisions = Vec::new();
            let mut changes = Changes::default();
            match &step {
                Step::Ended { task, attempt, outcome } => {
                    let attempt = attempt.unwrap_or_else(|| core.attempt(*task));
                    let event = Event::Ended { task: *task, attempt, outcome: outcome.clone() };
                    if let Err(e) = core.handle(wf, event, &mut decisions) {
                        tracing::debug!(run_id = run, "an attempt's end the run no longer expects: {e}");
                        return Ok(Some((Progress::Duplicate, Vec::new())));
                    }
                }
                Step::Stop(reason) => {
                    if core.stop().is_some() || core.is_finished() {
                        return Ok(Some((Progress::Duplicate, Vec::new())));
                    }
                    let event = match reason {
                        StopReason::Cancelled => Event::Cancel,
                        StopReason::TimedOut => Event::Deadline,
                    };
                    core.handle(wf, event, &mut decisions).map_err(|e| self.unavailable(e))?;
                    changes.stop = Some(*reason);
                    if decisions.contains(&Decision::StopAll) {
                        // Messages no worker claimed yet never begin; the
                        // claimed attempts end when their workers hear of the stop.
                        let started: Vec<TaskId> = (0..wf.tasks.len()).filter(|&t| core.task_status(t) == TaskStatus::Running).collect();
                        let names: Vec<String> = started.iter().map(|&t| format!("s:{}", wf.tasks[t].name)).collect();
                        let states = self.runs.get(run, &names).await.map_err(|e| self.unavailable(e))?;
                        for (&t, s) in started.iter().zip(states) {
                            if s.as_deref() == Some("pending") {
                                let event = Event::Ended { task: t, attempt: core.attempt(t), outcome: Outcome::NotStarted };
                                core.handle(wf, event, &mut decisions).map_err(|e| self.unavailable(e))?;
                                changes.pending.push(wf.tasks[t].name.clone());
                            }
                        }
                    }
                }
            }
            let ended = match &step {
                Step::Ended { task, .. } => Some(*task),
                Step::Stop(_) => None,
            };
            self.changes(run, wf, queue, &decisions, ended.zip(mine), &mut changes);
            self.end_with_output(run, wf, &core, ended.zip(mine), &mut changes).await?;
            match self.runs.apply(run, &queue_key, &from, &core.snapshot(), &changes).await.map_err(|e| self.unavailable(e))? {
                Applied::Done(Progress::Gone) => return Ok(None),
                Applied::Done(p) => return Ok(Some((p, decisions))),
                Applied::Conflict(None) => return Ok(None),
                Applied::Conflict(now) => known = now,
            }
        }
        Err(self.unavailable(format!("run {run} kept changing while an event of it was recorded")))
    }

    /// The run's end with its output ([`output::end`]): when the core ends
    /// the run succeeded and its workflow declares an output, the outputs
    /// of the tasks it reads are read from the run's hash (final, so the
    /// state version the decisions are checked against covers them) and the
    /// output rendered; one that cannot be rendered fails the run. `mine`:
    /// the task whose attempt ended, with its worker's result.
    async fn end_with_output(
        &self,
        run: &str,
        wf: &Workflow,
        core: &Core,
        mine: Option<(TaskId, &TaskResult)>,
        ch: &mut Changes,
    ) -> Result<(), crate::backend::BackendError> {
        let Some((status, error)) = ch.end.take() else { return Ok(()) };
        if !output::wanted(wf, status) {
            ch.end = Some((status, error));
            return Ok(());
        }
        let reads: Vec<TaskId> = wf.output.iter().flat_map(|o| o.reads.iter().copied()).collect();
        let mut names = vec!["input".to_string(), "context".to_string()];
        names.extend(reads.iter().map(|&r| format!("t:{}", wf.tasks[r].name)));
        let mut got = self.runs.get(run, &names).await.map_err(|e| self.unavailable(e))?.into_iter();
        let mut json = || got.next().flatten().and_then(|s| serde_json::from_str::<serde_json::Value>(&s).ok());
        let (input, context) = (json().unwrap_or_default(), json().unwrap_or_default());
        let stored: Vec<(TaskId, Option<serde_json::Value>)> =
            reads.iter().map(|&r| (r, json().and_then(|t| serde_json::from_value::<TaskResult>(t).ok()).and_then(|t| t.output))).collect();
        let base = output::base_context(wf, run, &input, &context);
        let end = output::end(wf, status, error, &base, |task| {
            let value = match mine {
                Some((t, r)) if t == task => r.output.clone(),
                _ => stored.iter().find(|(r, _)| *r == task).and_then(|(_, v)| v.clone()),
            };
            (value, core.task_status(task))
        });
        ch.end = Some((end.status, end.error));
        ch.output = end.output.map(|v| v.to_string());
        Ok(())
    }

    /// The core's decisions as changes to the run's hash. `mine`: the task
    /// whose attempt ended, with its worker's result.
    fn changes(
        &self,
        run: &str,
        wf: &Workflow,
        queue: &str,
        decisions: &[Decision],
        mine: Option<(TaskId, &TaskResult)>,
        ch: &mut Changes,
    ) {
        let now = OffsetDateTime::now_utc();
        let base = |task: TaskId| match mine {
            Some((t, r)) if t == task => r.clone(),
            _ => TaskResult::pending(),
        };
        let json = |r: &TaskResult| serde_json::to_string(r).ok();
        for d in decisions {
            match d {
                // The claim marks the run running: a queued run waits for a worker.
                Decision::RunStarted | Decision::Attempt { .. } | Decision::StopAll => {}
                Decision::Start { task } => ch.messages.push(self.task_message(queue, run, &wf.tasks[*task].name)),
                Decision::Retry { task, error, .. } => {
                    let mut r = base(*task);
                    r.status = TaskStatus::Running;
                    r.error = Some(error.clone());
                    ch.tasks.push((wf.tasks[*task].name.clone(), None, json(&r)));
                }
                Decision::Finish { task, status, error } => {
                    let mut r = base(*task);
                    r.status = *status;
                    r.error = error.clone();
                    if *status != TaskStatus::Succeeded {
                        r.output = None;
                    }
                    r.finished_at = Some(now);
                    ch.tasks.push((wf.tasks[*task].name.clone(), Some(*status), json(&r)));
                }
                Decision::Skip { task, status, reason } => {
                    let mut r = TaskResult::pending();
                    r.status = *status;
                    r.skip_reason = Some(reason.clone());
                    r.finished_at = Some(now);
                    ch.tasks.push((wf.tasks[*task].name.clone(), Some(*status), json(&r)));
                }
                Decision::RunFinished { status, error } => ch.end = Some((*status, error.clone())),
            }
        }
    }
}
