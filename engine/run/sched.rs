//! The scheduler core: what runs next, decided in one place for every backend.
//!
//! Sans-IO and deterministic: the core holds one run's task states and
//! counters, takes [`Event`]s (the run starts, an attempt ended, a cancel was
//! asked, the workflow deadline passed) and answers with [`Decision`]s
//! (start a task, retry it after a delay, record an attempt, end a task,
//! skip one with its reason, stop the running attempts, finish the run). It
//! reads no clock, draws no random number and does no I/O, so a driver may
//! be an in-process executor, a worker applying decisions in one database
//! transaction, or replay-safe Temporal workflow code: the same events give
//! the same decisions.
//!
//! Every state change goes through the transition tables of
//! [`super::state`]; an event that would need an illegal one (an attempt
//! ending twice, a task that is not running) is refused with an error and
//! changes nothing.

use super::state::{IllegalTransition, RunStatus, TaskStatus};
use crate::plan::{Phase, RetryPolicy, TaskId, Trigger, Workflow};
use std::collections::BTreeSet;
use std::time::Duration;

/// How an attempt ended, as the driver saw it.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// The action returned an output (the driver keeps it).
    Succeeded,
    /// The action failed; `retryable` is false for errors no retry can fix
    /// (a missing program, a template that cannot render).
    Failed { error: String, retryable: bool },
    /// The task's own timeout stopped the attempt.
    TimedOut,
    /// The attempt failed (`failed`) or timed out (`timed_out`) for good:
    /// the platform running it made the retries already (Temporal).
    GaveUp { status: TaskStatus, error: String },
    /// The attempt was stopped from outside: the run was cancelled or its
    /// deadline passed (see [`Event::Cancel`], [`Event::Deadline`]).
    Stopped,
    /// The task's `when:` condition was false: it is skipped with `reason`
    /// and no attempt is recorded.
    Skipped { reason: String },
    /// The run stopped before the attempt began: it was still waiting in a
    /// queue for a worker, or for its retry delay. A first attempt that
    /// never began leaves the task unstarted (as if it had been pending);
    /// a retry that never began ends the task without recording an attempt.
    NotStarted,
}

/// What happened to a run.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// Begin: the run leaves `queued`.
    Start,
    /// Attempt `attempt` of `task` ended.
    Ended { task: TaskId, attempt: u32, outcome: Outcome },
    /// Someone asked to cancel the run.
    Cancel,
    /// The workflow's `timeout` passed.
    Deadline,
}

/// What a driver must do, in order.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// The run is running (queued -> running).
    RunStarted,
    /// Start the first attempt of `task` now (pending -> running).
    Start { task: TaskId },
    /// Start attempt `attempt` of `task` after `delay`; the task stays
    /// running and shows `error`, the previous attempt's.
    Retry { task: TaskId, attempt: u32, delay: Duration, error: String },
    /// Record the end of an attempt.
    Attempt { task: TaskId, attempt: u32, status: TaskStatus, error: Option<String> },
    /// `task` reached its final state (the output, for `succeeded`, is the
    /// driver's: it came with the event).
    Finish { task: TaskId, status: TaskStatus, error: Option<String> },
    /// `task` will not run.
    Skip { task: TaskId, status: TaskStatus, reason: String },
    /// Stop every running attempt (and every retry waiting for its delay):
    /// the run was cancelled or timed out. Each stopped attempt comes back
    /// as [`Outcome::Stopped`].
    StopAll,
    /// The run ended.
    RunFinished { status: RunStatus, error: Option<String> },
}

#[derive(Debug, Clone, Copy)]
struct TaskState {
    status: TaskStatus,
    /// The attempt in progress or last made (0: none yet).
    attempt: u32,
    /// Parents not final yet.
    open: u32,
    /// Parents that succeeded.
    ok: u32,
    /// Parents that failed or timed out.
    bad: u32,
}

impl TaskState {
    fn new(status: TaskStatus, attempt: u32, parents: usize) -> TaskState {
        TaskState { status, attempt, open: parents as u32, ok: 0, bad: 0 }
    }

    /// Count a parent that became final.
    fn count(&mut self, parent: TaskStatus) {
        self.open = self.open.saturating_sub(1);
        match parent {
            TaskStatus::Succeeded => self.ok += 1,
            TaskStatus::Failed | TaskStatus::TimedOut => self.bad += 1,
            _ => {}
        }
    }
}

/// What a task's trigger makes of its parents' states so far.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Verdict {
    Ready,
    Wait,
    /// The trigger can no longer be met.
    Never,
}

fn judge(trigger: Trigger, parents: usize, t: &TaskState) -> Verdict {
    let n = parents as u32;
    let skipped = n.saturating_sub(t.open + t.ok + t.bad);
    let (ready, never) = match trigger {
        Trigger::AllSuccess => (t.ok == n, t.bad + skipped > 0),
        Trigger::NoneFailed => (t.open == 0 && t.bad == 0, t.bad > 0),
        Trigger::AllDone => (t.open == 0, false),
        Trigger::OneSuccess => (t.ok > 0, t.open == 0 && t.ok == 0),
        Trigger::OneFailed => (t.bad > 0, t.open == 0 && t.bad == 0),
        Trigger::AllFailed => (t.bad == n, t.ok + skipped > 0),
    };
    if ready {
        Verdict::Ready
    } else if never {
        Verdict::Never
    } else {
        Verdict::Wait
    }
}

/// How a final state reads in a skip reason.
fn verb(s: TaskStatus) -> &'static str {
    match s {
        TaskStatus::Succeeded => "succeeded",
        TaskStatus::Failed => "failed",
        TaskStatus::TimedOut => "timed out",
        TaskStatus::Cancelled => "was cancelled",
        _ => "was skipped",
    }
}

/// The failed (or timed-out) task a cascade of skips goes back to.
type Root = Option<(TaskId, TaskStatus)>;

/// One run's scheduling state.
#[derive(Debug, Clone)]
pub struct Core {
    tasks: Vec<TaskState>,
    /// Pending tasks whose parents all succeeded; they start in plan order
    /// (so a run resumed from its persisted states decides as the original).
    ready: BTreeSet<TaskId>,
    /// Tasks holding a slot: an attempt running or a retry waiting.
    running: usize,
    limit: usize,
    run: RunStatus,
    /// Set once the run is cancelled or timed out: no task of the
    /// workflow's own starts any more (handlers still do).
    stop: Option<RunStatus>,
    /// The list being run: the workflow's tasks, then its handlers.
    phase: Phase,
    /// Mixed into retry jitter so two runs do not retry in lockstep while
    /// one run's decisions stay reproducible.
    seed: u32,
}

impl Core {
    /// A queued run of `wf`; `seed` varies retry jitter between runs (use a
    /// hash of the run id, see [`seed`]).
    pub fn new(wf: &Workflow, seed: u32) -> Core {
        Core {
            tasks: wf.tasks.iter().map(|t| TaskState::new(TaskStatus::Pending, 0, t.parents.len())).collect(),
            ready: wf.roots(Phase::Main).collect(),
            running: 0,
            limit: wf.concurrency.unwrap_or(usize::MAX).max(1),
            run: RunStatus::Queued,
            stop: None,
            phase: Phase::Main,
            seed,
        }
    }

    /// A run in progress, from what a driver persisted: the run's status,
    /// its stop (cancelled or timed out) if one was asked, and each task's
    /// status and attempt (in progress or last made), in plan order. What
    /// is ready and what holds a slot follow from those: a pending task
    /// whose parents all succeeded is ready (in plan order), a running
    /// task holds a slot.
    pub fn resume(
        wf: &Workflow,
        seed: u32,
        run: RunStatus,
        stop: Option<RunStatus>,
        tasks: impl IntoIterator<Item = (TaskStatus, u32)>,
    ) -> Result<Core, Unreadable> {
        let tasks: Vec<TaskState> = tasks.into_iter().map(|(status, attempt)| TaskState::new(status, attempt, 0)).collect();
        if tasks.len() != wf.tasks.len() {
            return Err(Unreadable(format!("{} task states for a workflow of {} tasks", tasks.len(), wf.tasks.len())));
        }
        if stop.is_some_and(|s| !matches!(s, RunStatus::Cancelled | RunStatus::TimedOut)) {
            return Err(Unreadable(format!("a run cannot stop as {}", stop.map_or("", RunStatus::as_str))));
        }
        // The handler list under way is the last one with a task that left
        // `pending` (a list that is not run has its tasks skipped at once).
        let phase = wf.tasks.iter().zip(&tasks).filter(|(_, s)| s.status != TaskStatus::Pending).map(|(t, _)| t.phase).max();
        let phase = phase.unwrap_or(Phase::Main);
        let mut core =
            Core { tasks, ready: BTreeSet::new(), running: 0, limit: wf.concurrency.unwrap_or(usize::MAX).max(1), run, stop, phase, seed };
        let can_start = stop.is_none() || phase != Phase::Main;
        for t in &wf.tasks {
            let mut state = TaskState::new(core.tasks[t.id].status, core.tasks[t.id].attempt, t.parents.len());
            for &p in &t.parents {
                if core.tasks[p].status.is_terminal() {
                    state.count(core.tasks[p].status);
                }
            }
            core.tasks[t.id] = state;
            match state.status {
                TaskStatus::Running => core.running += 1,
                TaskStatus::Pending
                    if can_start
                        && t.phase == phase
                        && (t.parents.is_empty() || judge(t.trigger, t.parents.len(), &state) == Verdict::Ready) =>
                {
                    core.ready.insert(t.id);
                }
                _ => {}
            }
        }
        Ok(core)
    }

    /// The state a driver persists between events, compact: read it back
    /// with [`Core::restore`].
    pub fn snapshot(&self) -> Vec<u8> {
        // Written by hand: one byte per status and a LEB128 attempt per
        // task, stable across releases, a few bytes per task where a
        // general serializer would add field names or framing.
        let mut out = Vec::with_capacity(3 + 2 * self.tasks.len());
        out.push(SNAPSHOT_FORMAT);
        out.push(run_code(self.run));
        out.push(self.stop.map_or(0, |s| run_code(s) + 1));
        for t in &self.tasks {
            out.push(task_code(t.status));
            let mut n = t.attempt;
            loop {
                let byte = (n & 0x7f) as u8;
                n >>= 7;
                if n == 0 {
                    out.push(byte);
                    break;
                }
                out.push(byte | 0x80);
            }
        }
        out
    }

    /// A run from its [`Core::snapshot`].
    pub fn restore(wf: &Workflow, seed: u32, bytes: &[u8]) -> Result<Core, Unreadable> {
        let bad = |what: &str| Unreadable(format!("the snapshot {what}"));
        let [format, run, stop, rest @ ..] = bytes else { return Err(bad("is too short")) };
        if *format != SNAPSHOT_FORMAT {
            return Err(bad(&format!("has format {format}, not {SNAPSHOT_FORMAT}")));
        }
        let run = *RunStatus::ALL.get(*run as usize).ok_or_else(|| bad("has no valid run status"))?;
        let stop = match stop {
            0 => None,
            s => Some(*RunStatus::ALL.get(*s as usize - 1).ok_or_else(|| bad("has no valid stop"))?),
        };
        let mut tasks = Vec::with_capacity(wf.tasks.len());
        let mut bytes = rest.iter();
        while let Some(&code) = bytes.next() {
            let status = *TaskStatus::ALL.get(code as usize).ok_or_else(|| bad("has an invalid task status"))?;
            let (mut attempt, mut shift) = (0u32, 0);
            loop {
                let &b = bytes.next().ok_or_else(|| bad("ends inside an attempt"))?;
                if shift > 28 {
                    return Err(bad("has an attempt out of range"));
                }
                attempt |= u32::from(b & 0x7f) << shift;
                shift += 7;
                if b & 0x80 == 0 {
                    break;
                }
            }
            tasks.push((status, attempt));
        }
        Core::resume(wf, seed, run, stop, tasks)
    }

    /// A queued run whose tasks `done` succeeded already (a retry reusing
    /// the outputs of another run), started: the core and its first
    /// decisions.
    pub fn started(wf: &Workflow, seed: u32, done: &[TaskId]) -> Result<(Core, Vec<Decision>), IllegalTransition> {
        let mut core = Core::with_done(wf, seed, done);
        let mut out = Vec::new();
        core.handle(wf, Event::Start, &mut out)?;
        Ok((core, out))
    }

    /// A queued run whose tasks `done` succeeded already, not started yet
    /// (a retry's run, as its history reader rebuilds it).
    pub fn with_done(wf: &Workflow, seed: u32, done: &[TaskId]) -> Core {
        if done.is_empty() {
            return Core::new(wf, seed);
        }
        let mut succeeded = vec![false; wf.tasks.len()];
        for &t in done {
            if let Some(s) = succeeded.get_mut(t) {
                *s = true;
            }
        }
        let states = succeeded.into_iter().map(|s| (if s { TaskStatus::Succeeded } else { TaskStatus::Pending }, 0));
        // As many states as tasks and no stop: `resume` accepts them.
        Core::resume(wf, seed, RunStatus::Queued, None, states).unwrap_or_else(|_| Core::new(wf, seed))
    }

    /// Start what is ready (a run read back with [`Core::resume`] whose
    /// ready tasks have not started), or finish the run when nothing is
    /// left to run.
    pub fn kick(&mut self, wf: &Workflow, out: &mut Vec<Decision>) {
        if self.run == RunStatus::Running {
            self.advance(wf, out);
        }
    }

    /// The run's stop, once it was cancelled or timed out.
    pub fn stop(&self) -> Option<RunStatus> {
        self.stop
    }

    /// The attempt of `task` in progress, or the last one made (0: none).
    pub fn attempt(&self, task: TaskId) -> u32 {
        self.tasks[task].attempt
    }

    pub fn status(&self) -> RunStatus {
        self.run
    }

    pub fn task_status(&self, task: TaskId) -> TaskStatus {
        self.tasks[task].status
    }

    /// Tasks holding a concurrency slot (running, or waiting to retry).
    pub fn running(&self) -> usize {
        self.running
    }

    pub fn is_finished(&self) -> bool {
        self.run.is_terminal()
    }

    /// Feed one event; the decisions are appended to `out`. On error
    /// nothing changed.
    pub fn handle(&mut self, wf: &Workflow, event: Event, out: &mut Vec<Decision>) -> Result<(), IllegalTransition> {
        match event {
            Event::Start => self.start(wf, out),
            Event::Ended { task, attempt, outcome } => self.ended(wf, task, attempt, outcome, out),
            Event::Cancel => {
                self.stop_with(wf, RunStatus::Cancelled, out);
                Ok(())
            }
            Event::Deadline => {
                self.stop_with(wf, RunStatus::TimedOut, out);
                Ok(())
            }
        }
    }

    fn start(&mut self, wf: &Workflow, out: &mut Vec<Decision>) -> Result<(), IllegalTransition> {
        let mut run = self.run;
        run.transition(RunStatus::Running)?;
        self.run = run;
        out.push(Decision::RunStarted);
        self.advance(wf, out);
        Ok(())
    }

    fn ended(
        &mut self,
        wf: &Workflow,
        id: TaskId,
        attempt: u32,
        outcome: Outcome,
        out: &mut Vec<Decision>,
    ) -> Result<(), IllegalTransition> {
        let Some(state) = self.tasks.get(id) else {
            return Err(IllegalTransition { what: "task", from: "unknown", to: "ended" });
        };
        if state.status != TaskStatus::Running || state.attempt != attempt {
            return Err(IllegalTransition { what: "attempt", from: state.status.as_str(), to: "ended" });
        }
        let task = &wf.tasks[id];
        match outcome {
            Outcome::Succeeded => {
                self.set(id, TaskStatus::Succeeded)?;
                self.running -= 1;
                out.push(Decision::Attempt { task: id, attempt, status: TaskStatus::Succeeded, error: None });
                out.push(Decision::Finish { task: id, status: TaskStatus::Succeeded, error: None });
                self.settle(wf, id, None, out);
            }
            Outcome::Skipped { reason } => {
                self.set(id, TaskStatus::Skipped)?;
                self.running -= 1;
                out.push(Decision::Skip { task: id, status: TaskStatus::Skipped, reason });
                self.settle(wf, id, None, out);
            }
            Outcome::Stopped => {
                let (status, why) = stopped(self.stop.unwrap_or(RunStatus::Cancelled));
                self.set(id, status)?;
                self.running -= 1;
                out.push(Decision::Attempt { task: id, attempt, status, error: Some(why.to_string()) });
                out.push(Decision::Finish { task: id, status, error: Some(why.to_string()) });
            }
            Outcome::NotStarted => {
                let Some(stop) = self.stop else {
                    // Only a stop keeps an attempt from beginning.
                    return Err(IllegalTransition { what: "attempt", from: "running", to: "not started" });
                };
                self.running -= 1;
                if attempt <= 1 {
                    let (status, reason) = unstarted(wf, stop);
                    self.set(id, status)?;
                    out.push(Decision::Skip { task: id, status, reason });
                } else {
                    let (status, why) = stopped(stop);
                    self.set(id, status)?;
                    out.push(Decision::Finish { task: id, status, error: Some(why.to_string()) });
                }
            }
            Outcome::Failed { .. } | Outcome::TimedOut | Outcome::GaveUp { .. } => {
                let (status, error, retryable) = match outcome {
                    Outcome::Failed { error, retryable } => (TaskStatus::Failed, error, retryable),
                    Outcome::GaveUp { status: TaskStatus::TimedOut, error } => (TaskStatus::TimedOut, error, false),
                    Outcome::GaveUp { error, .. } => (TaskStatus::Failed, error, false),
                    _ => (
                        TaskStatus::TimedOut,
                        format!("attempt {attempt} timed out after {}", pretty(task.timeout.unwrap_or_default())),
                        true,
                    ),
                };
                out.push(Decision::Attempt { task: id, attempt, status, error: Some(error.clone()) });
                if retryable && (self.stop.is_none() || task.phase != Phase::Main) && attempt < task.retry.attempts {
                    let next = attempt + 1;
                    self.set(id, TaskStatus::Running)?;
                    self.tasks[id].attempt = next;
                    let delay = retry_delay(&task.retry, next, self.seed, id);
                    out.push(Decision::Retry { task: id, attempt: next, delay, error });
                    return Ok(());
                }
                self.set(id, status)?;
                self.running -= 1;
                out.push(Decision::Finish { task: id, status, error: Some(error) });
                self.settle(wf, id, None, out);
            }
        }
        self.advance(wf, out);
        Ok(())
    }

    /// Cancel or time out the run: nothing new starts, running attempts are
    /// told to stop; the run ends once they have (and its handlers ran).
    /// Once the handlers run, a stop sets how the run ends but stops
    /// nothing: each handler is bounded by its own timeout.
    fn stop_with(&mut self, wf: &Workflow, why: RunStatus, out: &mut Vec<Decision>) {
        if self.stop.is_some() || self.run.is_terminal() {
            return;
        }
        self.stop = Some(why);
        if self.phase != Phase::Main {
            return;
        }
        if self.running > 0 {
            out.push(Decision::StopAll);
        }
        if self.run == RunStatus::Running {
            self.advance(wf, out);
        }
    }

    /// Start what is ready within the concurrency limit; when nothing is
    /// left running, go on to the next handler list, or finish the run.
    fn advance(&mut self, wf: &Workflow, out: &mut Vec<Decision>) {
        loop {
            while (self.stop.is_none() || self.phase != Phase::Main) && self.running < self.limit {
                let Some(id) = self.ready.pop_first() else { break };
                // A ready task is pending: it was queued when its last parent
                // succeeded, and only this loop takes it out of `pending`.
                if self.set(id, TaskStatus::Running).is_err() {
                    continue;
                }
                self.tasks[id].attempt = 1;
                self.running += 1;
                out.push(Decision::Start { task: id });
            }
            if self.running > 0 {
                return;
            }
            if !self.next_phase(wf, out) {
                self.finish(wf, out);
                return;
            }
        }
    }

    /// How the run ends so far: its stop, else `failed` when a task of the
    /// workflow's own failed or timed out, else `succeeded`. Handlers read
    /// it as `run.status`.
    pub fn outcome(&self, wf: &Workflow) -> RunStatus {
        match self.stop {
            Some(s) => s,
            None if wf
                .tasks
                .iter()
                .zip(&self.tasks)
                .any(|(t, s)| t.phase == Phase::Main && matches!(s.status, TaskStatus::Failed | TaskStatus::TimedOut)) =>
            {
                RunStatus::Failed
            }
            None => RunStatus::Succeeded,
        }
    }

    /// The list under way is over: its tasks that never started will not;
    /// start the next handler list that runs. `false`: none is left.
    fn next_phase(&mut self, wf: &Workflow, out: &mut Vec<Decision>) -> bool {
        let end = self.outcome(wf);
        self.ready.clear();
        loop {
            for id in 0..self.tasks.len() {
                if wf.tasks[id].phase != self.phase || self.tasks[id].status != TaskStatus::Pending {
                    continue;
                }
                let (status, reason) =
                    if self.phase == Phase::Main { unstarted(wf, end) } else { (TaskStatus::Skipped, "not reached".into()) };
                if self.set(id, status).is_ok() {
                    out.push(Decision::Skip { task: id, status, reason });
                }
            }
            self.phase = match self.phase {
                Phase::Main => Phase::OnFailure,
                Phase::OnFailure => Phase::Finally,
                Phase::Finally => return false,
            };
            if self.phase == Phase::OnFailure && !matches!(end, RunStatus::Failed | RunStatus::TimedOut) {
                for id in 0..self.tasks.len() {
                    if wf.tasks[id].phase == Phase::OnFailure && self.set(id, TaskStatus::Skipped).is_ok() {
                        let reason = format!("the run {}: on_failure runs when it fails or times out", end_verb(end));
                        out.push(Decision::Skip { task: id, status: TaskStatus::Skipped, reason });
                    }
                }
                continue;
            }
            self.ready.extend(wf.roots(self.phase));
            if !self.ready.is_empty() {
                return true;
            }
        }
    }

    fn finish(&mut self, wf: &Workflow, out: &mut Vec<Decision>) {
        let end = match self.stop {
            Some(s) => s,
            // Skipped tasks do not fail a run; failed ones (handlers too) do.
            None if self.tasks.iter().any(|t| matches!(t.status, TaskStatus::Failed | TaskStatus::TimedOut)) => RunStatus::Failed,
            None => RunStatus::Succeeded,
        };
        for id in 0..self.tasks.len() {
            if self.tasks[id].status != TaskStatus::Pending {
                continue;
            }
            let (status, reason) = unstarted(wf, end);
            if self.set(id, status).is_ok() {
                out.push(Decision::Skip { task: id, status, reason });
            }
        }
        let error = match end {
            RunStatus::TimedOut => Some(format!("the run timed out after {}", pretty(wf.timeout.unwrap_or_default()))),
            RunStatus::Cancelled => Some("the run was cancelled".to_string()),
            _ => None,
        };
        let mut run = self.run;
        if run.transition(end).is_ok() {
            self.run = run;
            out.push(Decision::RunFinished { status: end, error });
        }
    }

    /// `id` became final: count it in its children, start those whose
    /// trigger is met, skip those whose trigger can no longer be met (and
    /// so on down). A stopping run decides nothing new.
    fn settle(&mut self, wf: &Workflow, id: TaskId, root: Root, out: &mut Vec<Decision>) {
        if self.stop.is_some() && wf.tasks[id].phase == Phase::Main {
            return;
        }
        let mut stack = vec![(id, root)];
        while let Some((p, root)) = stack.pop() {
            let parent = self.tasks[p].status;
            for &c in &wf.tasks[p].children {
                if self.tasks[c].status != TaskStatus::Pending {
                    continue;
                }
                self.tasks[c].count(parent);
                let task = &wf.tasks[c];
                match judge(task.trigger, task.parents.len(), &self.tasks[c]) {
                    Verdict::Wait => {}
                    Verdict::Ready => {
                        self.ready.insert(c);
                    }
                    Verdict::Never => {
                        let (reason, root) = self.why_never(wf, c, p, root);
                        if self.set(c, TaskStatus::Skipped).is_ok() {
                            out.push(Decision::Skip { task: c, status: TaskStatus::Skipped, reason });
                            stack.push((c, root));
                        }
                    }
                }
            }
        }
    }

    /// Why `task`'s trigger can no longer be met, now that `parent` is
    /// final (`root`: the failure `parent` was skipped for, if it was).
    fn why_never(&self, wf: &Workflow, task: TaskId, parent: TaskId, root: Root) -> (String, Root) {
        let status = self.tasks[parent].status;
        let name = &wf.tasks[parent].name;
        match (wf.tasks[task].trigger, status) {
            (Trigger::OneSuccess, _) => ("no parent succeeded".to_string(), None),
            (Trigger::OneFailed, _) => ("no parent failed".to_string(), None),
            (_, TaskStatus::Failed | TaskStatus::TimedOut) => (format!("parent {name} {}", verb(status)), Some((parent, status))),
            // A cascade of skips names the failure it goes back to.
            (Trigger::AllSuccess, TaskStatus::Skipped) if let Some((r, s)) = root => {
                (format!("parent {} {}", wf.tasks[r].name, verb(s)), root)
            }
            _ => (format!("parent {name} {}", verb(status)), None),
        }
    }

    fn set(&mut self, id: TaskId, to: TaskStatus) -> Result<(), IllegalTransition> {
        self.tasks[id].status.transition(to)
    }
}

const SNAPSHOT_FORMAT: u8 = 1;

fn run_code(s: RunStatus) -> u8 {
    RunStatus::ALL.iter().position(|&x| x == s).unwrap_or(0) as u8
}

fn task_code(s: TaskStatus) -> u8 {
    TaskStatus::ALL.iter().position(|&x| x == s).unwrap_or(0) as u8
}

/// A persisted scheduler state that does not fit the run's workflow.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the run's scheduling state is unreadable: {0}")]
pub struct Unreadable(pub String);

fn end_verb(end: RunStatus) -> &'static str {
    match end {
        RunStatus::Succeeded => "succeeded",
        RunStatus::Cancelled => "was cancelled",
        RunStatus::TimedOut => "timed out",
        _ => "failed",
    }
}

/// How an attempt stopped by the run's end ends, and its error.
fn stopped(end: RunStatus) -> (TaskStatus, &'static str) {
    match end {
        RunStatus::TimedOut => (TaskStatus::TimedOut, "stopped: the run timed out"),
        _ => (TaskStatus::Cancelled, "cancelled"),
    }
}

/// How a task that never started ends when the run ends `end`, and why.
fn unstarted(wf: &Workflow, end: RunStatus) -> (TaskStatus, String) {
    match end {
        RunStatus::Cancelled => (TaskStatus::Cancelled, "run cancelled".to_string()),
        RunStatus::TimedOut => (TaskStatus::Skipped, format!("run timed out after {}", pretty(wf.timeout.unwrap_or_default()))),
        _ => (TaskStatus::Skipped, "not reached".to_string()),
    }
}

/// A jitter seed for a run: the same run id always gives the same seed.
pub fn seed(run_id: &str) -> u32 {
    crc32fast::hash(run_id.as_bytes())
}

/// The delay before try number `next` (2 for the first retry) of `task`:
/// the policy's backoff, with jitter (0.8–1.2×, capped at `max_delay`)
/// drawn from the run's `seed`, the task and `next` when the policy asks for
/// it.
pub fn retry_delay(policy: &RetryPolicy, next: u32, seed: u32, task: TaskId) -> Duration {
    let delay = policy.delay_before(next);
    if !policy.jitter || delay.is_zero() {
        return delay;
    }
    let mut h = crc32fast::Hasher::new();
    h.update(&seed.to_le_bytes());
    h.update(&(task as u64).to_le_bytes());
    h.update(&next.to_le_bytes());
    let f = 0.8 + 0.4 * (h.finalize() as f64 / u32::MAX as f64);
    Duration::from_secs_f64((delay.as_secs_f64() * f).min(policy.max_delay.as_secs_f64()))
}

fn pretty(d: Duration) -> humantime::FormattedDuration {
    humantime::format_duration(d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::sync::Arc;

    /// A workflow of `echo` tasks named t0..tN with the given parents.
    fn workflow(parents: &[Vec<usize>], concurrency: Option<usize>, attempts: u32) -> Arc<Workflow> {
        workflow_with(parents, &[], concurrency, attempts)
    }

    /// As [`workflow`], task i with trigger `triggers[i]` (default when absent).
    fn workflow_with(parents: &[Vec<usize>], triggers: &[Trigger], concurrency: Option<usize>, attempts: u32) -> Arc<Workflow> {
        workflow_full(parents, triggers, concurrency, attempts, (0, 0))
    }

    /// As [`workflow_with`], with chains of `handlers.0` on_failure tasks
    /// (f0..) and `handlers.1` finally tasks (z0..).
    fn workflow_full(
        parents: &[Vec<usize>],
        triggers: &[Trigger],
        concurrency: Option<usize>,
        attempts: u32,
        handlers: (usize, usize),
    ) -> Arc<Workflow> {
        let chain = |prefix: &str, n: usize| -> Vec<serde_json::Value> {
            (0..n)
                .map(|i| {
                    let parents: Vec<String> = if i == 0 { vec![] } else { vec![format!("{prefix}{}", i - 1)] };
                    serde_json::json!({"name": format!("{prefix}{i}"), "uses": "echo", "parents": parents,
                        "retry": {"attempts": attempts, "delay": "1s"}})
                })
                .collect()
        };
        let tasks: Vec<serde_json::Value> = parents
            .iter()
            .enumerate()
            .map(|(i, ps)| {
                let mut t = serde_json::json!({
                    "name": format!("t{i}"),
                    "uses": "echo",
                    "parents": ps.iter().map(|p| format!("t{p}")).collect::<Vec<_>>(),
                    "retry": {"attempts": attempts, "delay": "1s", "jitter": true},
                    "timeout": "5s",
                });
                if let Some(tr) = triggers.get(i) {
                    t["trigger"] = tr.as_str().into();
                }
                t
            })
            .collect();
        let mut doc = serde_json::json!({"version": 1, "name": "w", "timeout": "1m", "tasks": tasks,
            "on_failure": chain("f", handlers.0), "finally": chain("z", handlers.1)});
        if let Some(c) = concurrency {
            doc["concurrency"] = c.into();
        }
        crate::plan::compile(serde_json::from_value(doc).unwrap()).unwrap()
    }

    fn feed(core: &mut Core, wf: &Workflow, event: Event) -> Vec<Decision> {
        let mut out = Vec::new();
        core.handle(wf, event, &mut out).unwrap();
        out
    }

    #[test]
    fn a_chain_runs_in_order_and_succeeds() {
        let wf = workflow(&[vec![], vec![0], vec![1]], None, 1);
        let mut core = Core::new(&wf, 0);
        assert_eq!(feed(&mut core, &wf, Event::Start), vec![Decision::RunStarted, Decision::Start { task: 0 }]);
        let d = feed(&mut core, &wf, Event::Ended { task: 0, attempt: 1, outcome: Outcome::Succeeded });
        assert_eq!(d.last(), Some(&Decision::Start { task: 1 }));
        feed(&mut core, &wf, Event::Ended { task: 1, attempt: 1, outcome: Outcome::Succeeded });
        let d = feed(&mut core, &wf, Event::Ended { task: 2, attempt: 1, outcome: Outcome::Succeeded });
        assert_eq!(d.last(), Some(&Decision::RunFinished { status: RunStatus::Succeeded, error: None }));
        assert!(core.is_finished());
    }

    /// `main` tasks m0..mN (each with its parents), then `on_failure`
    /// tasks f0.. and `finally` tasks z0.. (each after the one before it).
    fn with_handlers(main: &[Vec<usize>], on_failure: usize, finally: usize) -> Arc<Workflow> {
        let list = |prefix: &str, n: usize| -> Vec<serde_json::Value> {
            (0..n)
                .map(|i| {
                    let parents: Vec<String> = if i == 0 { vec![] } else { vec![format!("{prefix}{}", i - 1)] };
                    serde_json::json!({"name": format!("{prefix}{i}"), "uses": "echo", "parents": parents, "retry": {"attempts": 2}})
                })
                .collect()
        };
        let tasks: Vec<serde_json::Value> = main
            .iter()
            .enumerate()
            .map(|(i, ps)| {
                serde_json::json!({"name": format!("m{i}"), "uses": "echo", "parents": ps.iter().map(|p| format!("m{p}")).collect::<Vec<_>>()})
            })
            .collect();
        let doc = serde_json::json!({"version": 1, "name": "w", "timeout": "1m", "tasks": tasks,
            "on_failure": list("f", on_failure), "finally": list("z", finally)});
        crate::plan::compile(serde_json::from_value(doc).unwrap()).unwrap()
    }

    fn ok(task: TaskId) -> Event {
        Event::Ended { task, attempt: 1, outcome: Outcome::Succeeded }
    }

    #[test]
    fn handlers_run_after_a_failure_in_order_and_the_run_stays_failed() {
        // m0 -> m1; on_failure f0 -> f1; finally z0 (ids 2, 3, 4)
        let wf = with_handlers(&[vec![], vec![0]], 2, 1);
        let mut core = Core::new(&wf, 0);
        assert_eq!(feed(&mut core, &wf, Event::Start), vec![Decision::RunStarted, Decision::Start { task: 0 }]);
        let d =
            feed(&mut core, &wf, Event::Ended { task: 0, attempt: 1, outcome: Outcome::Failed { error: "boom".into(), retryable: false } });
        assert_eq!(
            d[2..],
            [Decision::Skip { task: 1, status: TaskStatus::Skipped, reason: "parent m0 failed".into() }, Decision::Start { task: 2 }]
        );
        assert_eq!(core.outcome(&wf), RunStatus::Failed);
        assert_eq!(feed(&mut core, &wf, ok(2)).last(), Some(&Decision::Start { task: 3 }));
        // A handler's state survives a restore: the list under way is read back.
        let mut core = Core::restore(&wf, 0, &core.snapshot()).unwrap();
        assert_eq!(feed(&mut core, &wf, ok(3)).last(), Some(&Decision::Start { task: 4 }));
        let d = feed(&mut core, &wf, ok(4));
        assert_eq!(d.last(), Some(&Decision::RunFinished { status: RunStatus::Failed, error: None }));
    }

    #[test]
    fn a_succeeded_run_skips_on_failure_and_a_failing_finally_fails_it() {
        let wf = with_handlers(&[vec![]], 1, 1);
        let mut core = Core::new(&wf, 0);
        feed(&mut core, &wf, Event::Start);
        let d = feed(&mut core, &wf, ok(0));
        assert_eq!(
            d[2..],
            [
                Decision::Skip {
                    task: 1,
                    status: TaskStatus::Skipped,
                    reason: "the run succeeded: on_failure runs when it fails or times out".into()
                },
                Decision::Start { task: 2 },
            ]
        );
        // Handlers retry by their own policy.
        let d = feed(&mut core, &wf, Event::Ended { task: 2, attempt: 1, outcome: Outcome::Failed { error: "x".into(), retryable: true } });
        assert!(matches!(d.last(), Some(Decision::Retry { task: 2, attempt: 2, .. })), "{d:?}");
        let d = feed(&mut core, &wf, Event::Ended { task: 2, attempt: 2, outcome: Outcome::Failed { error: "y".into(), retryable: true } });
        assert_eq!(d.last(), Some(&Decision::RunFinished { status: RunStatus::Failed, error: None }));
    }

    #[test]
    fn finally_runs_after_a_cancel_and_a_later_stop_stops_no_handler() {
        let wf = with_handlers(&[vec![], vec![0]], 1, 2);
        let mut core = Core::new(&wf, 0);
        feed(&mut core, &wf, Event::Start);
        assert_eq!(feed(&mut core, &wf, Event::Cancel), vec![Decision::StopAll]);
        let d = feed(&mut core, &wf, Event::Ended { task: 0, attempt: 1, outcome: Outcome::Stopped });
        assert!(d.contains(&Decision::Skip { task: 1, status: TaskStatus::Cancelled, reason: "run cancelled".into() }), "{d:?}");
        assert!(
            d.contains(&Decision::Skip {
                task: 2,
                status: TaskStatus::Skipped,
                reason: "the run was cancelled: on_failure runs when it fails or times out".into()
            }),
            "{d:?}"
        );
        assert_eq!(d.last(), Some(&Decision::Start { task: 3 }), "finally starts although the run is stopping");
        let mut core = Core::restore(&wf, 0, &core.snapshot()).unwrap();
        // The deadline passing now stops no handler.
        assert!(feed(&mut core, &wf, Event::Deadline).is_empty());
        assert_eq!(feed(&mut core, &wf, ok(3)).last(), Some(&Decision::Start { task: 4 }));
        let d = feed(&mut core, &wf, ok(4));
        assert_eq!(d.last(), Some(&Decision::RunFinished { status: RunStatus::Cancelled, error: Some("the run was cancelled".into()) }));
    }

    #[test]
    fn a_deadline_during_finally_times_the_run_out_once_finally_ends() {
        let wf = with_handlers(&[vec![]], 0, 1);
        let mut core = Core::new(&wf, 0);
        feed(&mut core, &wf, Event::Start);
        assert_eq!(feed(&mut core, &wf, ok(0)).last(), Some(&Decision::Start { task: 1 }));
        assert!(feed(&mut core, &wf, Event::Deadline).is_empty());
        let d = feed(&mut core, &wf, ok(1));
        assert!(matches!(d.last(), Some(Decision::RunFinished { status: RunStatus::TimedOut, .. })), "{d:?}");
    }

    #[test]
    fn a_false_condition_skips_the_task_and_does_not_fail_the_run() {
        // 0 -> 1 -> 2, and 3 joins 0 and 1 with none_failed
        let wf = workflow_with(
            &[vec![], vec![0], vec![1], vec![0, 1]],
            &[Trigger::AllSuccess, Trigger::AllSuccess, Trigger::AllSuccess, Trigger::NoneFailed],
            None,
            3,
        );
        let mut core = Core::new(&wf, 0);
        feed(&mut core, &wf, Event::Start);
        feed(&mut core, &wf, Event::Ended { task: 0, attempt: 1, outcome: Outcome::Succeeded });
        let d =
            feed(&mut core, &wf, Event::Ended { task: 1, attempt: 1, outcome: Outcome::Skipped { reason: "condition false: x".into() } });
        assert_eq!(
            d,
            vec![
                Decision::Skip { task: 1, status: TaskStatus::Skipped, reason: "condition false: x".into() },
                Decision::Skip { task: 2, status: TaskStatus::Skipped, reason: "parent t1 was skipped".into() },
                Decision::Start { task: 3 },
            ],
            "no attempt is recorded and no retry is made"
        );
        let d = feed(&mut core, &wf, Event::Ended { task: 3, attempt: 1, outcome: Outcome::Succeeded });
        assert_eq!(d.last(), Some(&Decision::RunFinished { status: RunStatus::Succeeded, error: None }));
    }

    #[test]
    fn a_failure_skips_descendants_and_spares_other_branches() {
        // 0 -> 1 -> 2, and 3 independent
        let wf = workflow(&[vec![], vec![0], vec![1], vec![]], None, 1);
        let mut core = Core::new(&wf, 0);
        feed(&mut core, &wf, Event::Start);
        let d =
            feed(&mut core, &wf, Event::Ended { task: 0, attempt: 1, outcome: Outcome::Failed { error: "boom".into(), retryable: true } });
        assert!(d.contains(&Decision::Skip { task: 1, status: TaskStatus::Skipped, reason: "parent t0 failed".into() }), "{d:?}");
        assert!(d.contains(&Decision::Skip { task: 2, status: TaskStatus::Skipped, reason: "parent t0 failed".into() }), "{d:?}");
        assert!(!core.is_finished(), "t3 is still running");
        let d = feed(&mut core, &wf, Event::Ended { task: 3, attempt: 1, outcome: Outcome::Succeeded });
        assert_eq!(d.last(), Some(&Decision::RunFinished { status: RunStatus::Failed, error: None }));
    }

    #[test]
    fn retries_follow_the_policy_and_permanent_errors_do_not_retry() {
        let wf = workflow(&[vec![], vec![]], None, 3);
        let mut core = Core::new(&wf, 7);
        feed(&mut core, &wf, Event::Start);
        let d = feed(&mut core, &wf, Event::Ended { task: 0, attempt: 1, outcome: Outcome::TimedOut });
        let Some(Decision::Retry { attempt: 2, delay, error, .. }) = d.last() else { panic!("{d:?}") };
        assert_eq!(error, "attempt 1 timed out after 5s");
        assert!((0.8..=1.2).contains(&delay.as_secs_f64()), "{delay:?}");
        let d = feed(
            &mut core,
            &wf,
            Event::Ended { task: 1, attempt: 1, outcome: Outcome::Failed { error: "no such program".into(), retryable: false } },
        );
        assert_eq!(d.last(), Some(&Decision::Finish { task: 1, status: TaskStatus::Failed, error: Some("no such program".into()) }));
        // The old attempt cannot end twice.
        let mut out = Vec::new();
        assert!(core.handle(&wf, Event::Ended { task: 0, attempt: 1, outcome: Outcome::Succeeded }, &mut out).is_err());
        assert!(out.is_empty());
        feed(&mut core, &wf, Event::Ended { task: 0, attempt: 2, outcome: Outcome::Failed { error: "x".into(), retryable: true } });
        let d = feed(&mut core, &wf, Event::Ended { task: 0, attempt: 3, outcome: Outcome::Failed { error: "y".into(), retryable: true } });
        assert!(d.contains(&Decision::Finish { task: 0, status: TaskStatus::Failed, error: Some("y".into()) }), "{d:?}");
        assert_eq!(d.last(), Some(&Decision::RunFinished { status: RunStatus::Failed, error: None }));
    }

    #[test]
    fn cancel_stops_running_attempts_and_cancels_the_rest() {
        let wf = workflow(&[vec![], vec![0]], None, 3);
        let mut core = Core::new(&wf, 0);
        feed(&mut core, &wf, Event::Start);
        assert_eq!(feed(&mut core, &wf, Event::Cancel), vec![Decision::StopAll]);
        assert!(feed(&mut core, &wf, Event::Cancel).is_empty(), "a second cancel changes nothing");
        let d = feed(&mut core, &wf, Event::Ended { task: 0, attempt: 1, outcome: Outcome::Stopped });
        assert_eq!(
            d,
            vec![
                Decision::Attempt { task: 0, attempt: 1, status: TaskStatus::Cancelled, error: Some("cancelled".into()) },
                Decision::Finish { task: 0, status: TaskStatus::Cancelled, error: Some("cancelled".into()) },
                Decision::Skip { task: 1, status: TaskStatus::Cancelled, reason: "run cancelled".into() },
                Decision::RunFinished { status: RunStatus::Cancelled, error: Some("the run was cancelled".into()) },
            ]
        );
    }

    #[test]
    fn a_failure_during_a_stop_is_not_retried() {
        let wf = workflow(&[vec![]], None, 3);
        let mut core = Core::new(&wf, 0);
        feed(&mut core, &wf, Event::Start);
        feed(&mut core, &wf, Event::Deadline);
        let d = feed(&mut core, &wf, Event::Ended { task: 0, attempt: 1, outcome: Outcome::Failed { error: "x".into(), retryable: true } });
        assert_eq!(
            d.last(),
            Some(&Decision::RunFinished { status: RunStatus::TimedOut, error: Some("the run timed out after 1m".into()) })
        );
    }

    #[test]
    fn a_run_cancelled_before_it_starts_starts_nothing() {
        let wf = workflow(&[vec![], vec![0]], None, 1);
        let mut core = Core::new(&wf, 0);
        assert!(feed(&mut core, &wf, Event::Cancel).is_empty());
        let d = feed(&mut core, &wf, Event::Start);
        assert!(!d.iter().any(|d| matches!(d, Decision::Start { .. })), "{d:?}");
        assert_eq!(core.status(), RunStatus::Cancelled);
    }

    #[test]
    fn an_attempt_that_never_began_leaves_its_task_unstarted() {
        let wf = workflow(&[vec![], vec![]], None, 3);
        let mut core = Core::new(&wf, 0);
        feed(&mut core, &wf, Event::Start);
        feed(&mut core, &wf, Event::Ended { task: 1, attempt: 1, outcome: Outcome::Failed { error: "x".into(), retryable: true } });
        let mut out = Vec::new();
        assert!(
            core.handle(&wf, Event::Ended { task: 0, attempt: 1, outcome: Outcome::NotStarted }, &mut out).is_err(),
            "no stop, no excuse"
        );
        feed(&mut core, &wf, Event::Cancel);
        let d = feed(&mut core, &wf, Event::Ended { task: 0, attempt: 1, outcome: Outcome::NotStarted });
        assert_eq!(d, vec![Decision::Skip { task: 0, status: TaskStatus::Cancelled, reason: "run cancelled".into() }]);
        // A retry waiting for its delay ends without another attempt.
        let d = feed(&mut core, &wf, Event::Ended { task: 1, attempt: 2, outcome: Outcome::NotStarted });
        assert_eq!(d[0], Decision::Finish { task: 1, status: TaskStatus::Cancelled, error: Some("cancelled".into()) });
        assert_eq!(d[1], Decision::RunFinished { status: RunStatus::Cancelled, error: Some("the run was cancelled".into()) });
    }

    #[test]
    fn a_snapshot_reads_back_and_refuses_what_does_not_fit() {
        let wf = workflow(&[vec![], vec![0], vec![0]], Some(1), 200);
        let mut core = Core::new(&wf, 3);
        feed(&mut core, &wf, Event::Start);
        for attempt in 1..150 {
            feed(&mut core, &wf, Event::Ended { task: 0, attempt, outcome: Outcome::TimedOut });
        }
        let bytes = core.snapshot();
        let back = Core::restore(&wf, 3, &bytes).unwrap();
        assert_eq!(back.attempt(0), 150);
        assert_eq!(back.snapshot(), bytes);
        assert_eq!(back.running(), 1);
        let other = workflow(&[vec![], vec![0]], None, 1);
        assert_eq!(Core::restore(&other, 3, &bytes).unwrap_err().0, "3 task states for a workflow of 2 tasks");
        assert!(Core::restore(&wf, 3, &bytes[..bytes.len() - 1]).is_err());
        assert!(Core::restore(&wf, 3, &[9, 0, 0]).is_err());
    }

    /// Whether `trigger` lets a task start given its parents' states (an
    /// independent reading of the rules, for the property test).
    fn allows(trigger: Trigger, parents: &[TaskStatus]) -> bool {
        let n = parents.len();
        let ok = parents.iter().filter(|s| **s == TaskStatus::Succeeded).count();
        let bad = parents.iter().filter(|s| matches!(s, TaskStatus::Failed | TaskStatus::TimedOut)).count();
        let done = parents.iter().all(|s| s.is_terminal());
        n == 0
            || match trigger {
                Trigger::AllSuccess => ok == n,
                Trigger::NoneFailed => done && bad == 0,
                Trigger::AllDone => done,
                Trigger::OneSuccess => ok > 0,
                Trigger::OneFailed => bad > 0,
                Trigger::AllFailed => bad == n,
            }
    }

    /// Whether `trigger` can no longer be met, whatever the open parents do.
    fn never(trigger: Trigger, parents: &[TaskStatus]) -> bool {
        let ok = parents.iter().filter(|s| **s == TaskStatus::Succeeded).count();
        let bad = parents.iter().filter(|s| matches!(s, TaskStatus::Failed | TaskStatus::TimedOut)).count();
        let other = parents.iter().filter(|s| s.is_terminal()).count() - ok - bad;
        let done = parents.iter().all(|s| s.is_terminal());
        match trigger {
            Trigger::AllSuccess => bad + other > 0,
            Trigger::NoneFailed => bad > 0,
            Trigger::AllDone => false,
            Trigger::OneSuccess => done && ok == 0,
            Trigger::OneFailed => done && bad == 0,
            Trigger::AllFailed => ok + other > 0,
        }
    }

    /// Random DAGs: task i's parents are drawn from tasks before it.
    fn dag() -> impl Strategy<Value = Vec<Vec<usize>>> {
        (1usize..12)
            .prop_flat_map(|n| (0..n).map(|i| proptest::sample::subsequence((0..i).collect::<Vec<_>>(), 0..=i.min(3))).collect::<Vec<_>>())
    }

    #[derive(Debug, Clone)]
    enum Step {
        /// End the `k`-th running attempt (mod how many run) with an outcome.
        End(usize, u8),
        Cancel,
        Deadline,
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            20 => (any::<usize>(), 0u8..4).prop_map(|(k, o)| Step::End(k, o)),
            1 => Just(Step::Cancel),
            1 => Just(Step::Deadline),
        ]
    }

    /// Drive a run to its end with a script of steps; returns every
    /// decision. `restore`: before each event, persist the core and read it
    /// back, as the queue-backed drivers do.
    fn drive(wf: &Workflow, script: &[Step], seed: u32, restore: bool) -> (Core, Vec<Decision>) {
        let mut core = Core::new(wf, seed);
        let mut all = Vec::new();
        // (task, attempt) of every attempt in flight, in start order.
        let mut live: Vec<(TaskId, u32)> = Vec::new();
        let mut out = Vec::new();
        core.handle(wf, Event::Start, &mut out).unwrap();
        // The script, then successes until the run ends.
        let mut steps = script.iter().cloned().chain(std::iter::repeat(Step::End(0, 0)));
        let mut guard = 0;
        loop {
            for d in out.drain(..) {
                match &d {
                    Decision::Start { task } => live.push((*task, 1)),
                    Decision::Retry { task, attempt, .. } => live.push((*task, *attempt)),
                    _ => {}
                }
                all.push(d);
            }
            if core.is_finished() {
                break;
            }
            guard += 1;
            assert!(guard < 10_000, "the run never ended");
            assert!(!live.is_empty(), "the run is stuck: nothing runs and it has not finished");
            let step = steps.next().unwrap_or(Step::End(0, 0));
            let event = match step {
                Step::Cancel => Event::Cancel,
                Step::Deadline => Event::Deadline,
                Step::End(k, o) => {
                    let (task, attempt) = live.remove(k % live.len());
                    // Handlers are never stopped: they run to their end.
                    let stopping = core.stop.is_some() && wf.tasks[task].phase == Phase::Main;
                    let outcome = match (o, stopping) {
                        (0 | 1, true) => Outcome::Stopped,
                        (_, true) => Outcome::NotStarted,
                        (0 | 1, _) => Outcome::Succeeded,
                        (2, _) => Outcome::Failed { error: format!("e{attempt}"), retryable: attempt % 2 == 1 },
                        _ => Outcome::TimedOut,
                    };
                    Event::Ended { task, attempt, outcome }
                }
            };
            if restore {
                core = Core::restore(wf, seed, &core.snapshot()).unwrap();
            }
            core.handle(wf, event, &mut out).unwrap();
        }
        (core, all)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(400))]

        #[test]
        fn invariants_hold_for_random_runs(
            parents in dag(),
            triggers in proptest::collection::vec(proptest::sample::select(Trigger::ALL.to_vec()), 12),
            concurrency in proptest::option::of(1usize..4),
            attempts in 1u32..4,
            steps in proptest::collection::vec(step(), 1..40),
            seed in any::<u32>(),
            handlers in (0usize..3, 0usize..3),
        ) {
            let wf = workflow_full(&parents, &triggers, concurrency, attempts, handlers);
            let (core, decisions) = drive(&wf, &steps, seed, false);
            let stopped = steps.iter().any(|s| matches!(s, Step::Cancel | Step::Deadline));

            // Every task ends in exactly one final state, once.
            let mut finals = vec![0; wf.tasks.len()];
            let mut started = vec![false; wf.tasks.len()];
            let mut status = vec![TaskStatus::Pending; wf.tasks.len()];
            let mut in_flight = 0usize;
            let mut peak = 0usize;
            for d in &decisions {
                match d {
                    Decision::Start { task } => {
                        // A task starts only once, and only when its trigger allows it.
                        prop_assert!(!started[*task]);
                        let t = &wf.tasks[*task];
                        let ps: Vec<TaskStatus> = t.parents.iter().map(|&p| status[p]).collect();
                        prop_assert!(allows(t.trigger, &ps), "t{} ({:?}) started with parents {:?}", task, t.trigger, ps);
                        // Handlers start once every task of the workflow's own is final.
                        if t.phase != Phase::Main {
                            prop_assert!(wf.tasks.iter().filter(|x| x.phase == Phase::Main).all(|x| status[x.id].is_terminal()));
                        }
                        started[*task] = true;
                        in_flight += 1;
                        peak = peak.max(in_flight);
                    }
                    Decision::Finish { task, status: s, .. } => {
                        finals[*task] += 1;
                        status[*task] = *s;
                        in_flight -= 1;
                    }
                    Decision::Skip { task, status: s, reason } => {
                        if started[*task] {
                            // Only a run's stop ends an attempt that never began.
                            prop_assert!(reason.starts_with("run "), "a started task skipped: {}", reason);
                            in_flight -= 1;
                        } else if wf.tasks[*task].phase == Phase::OnFailure && reason.starts_with("the run ") {
                            // A run that did not fail skips its on_failure list.
                        } else if !stopped {
                            // Skipped only when its trigger can no longer be met.
                            let t = &wf.tasks[*task];
                            let ps: Vec<TaskStatus> = t.parents.iter().map(|&p| status[p]).collect();
                            prop_assert!(never(t.trigger, &ps), "t{} ({:?}) skipped ({}) with parents {:?}", task, t.trigger, reason, ps);
                        }
                        finals[*task] += 1;
                        status[*task] = *s;
                    }
                    Decision::Retry { task, attempt, .. } => {
                        prop_assert!(*attempt <= wf.tasks[*task].retry.attempts);
                    }
                    _ => {}
                }
            }
            prop_assert!(finals.iter().all(|&n| n == 1), "final states per task: {:?}", finals);
            // `finally` runs whatever the outcome.
            if let Some(z0) = wf.task("z0") {
                prop_assert!(started[z0.id], "finally did not run");
            }
            prop_assert!(status.iter().all(|s| s.is_terminal()));
            prop_assert!(peak <= concurrency.unwrap_or(usize::MAX));
            for (i, s) in status.iter().enumerate() {
                prop_assert_eq!(*s, core.task_status(i));
            }

            // The run's status follows from its tasks.
            let Some(Decision::RunFinished { status: end, .. }) = decisions.last() else { panic!("no end: {decisions:?}") };
            prop_assert_eq!(decisions.iter().filter(|d| matches!(d, Decision::RunFinished { .. })).count(), 1);
            match end {
                RunStatus::Succeeded => prop_assert!(status.iter().all(|s| matches!(s, TaskStatus::Succeeded | TaskStatus::Skipped))),
                RunStatus::Failed => prop_assert!(status.iter().any(|s| matches!(s, TaskStatus::Failed | TaskStatus::TimedOut))),
                RunStatus::Cancelled | RunStatus::TimedOut => prop_assert!(stopped),
                other => prop_assert!(false, "the run ended {:?}", other),
            }

            // The same events give the same decisions, also when the core
            // is persisted and read back between events.
            let (_, again) = drive(&wf, &steps, seed, false);
            prop_assert_eq!(&again, &decisions);
            let (_, restored) = drive(&wf, &steps, seed, true);
            prop_assert_eq!(restored, decisions);
        }
    }
}
