//! Run and task lifecycles as explicit state machines.
//!
//! One table per lifecycle; every transition the engine makes goes through
//! [`TaskStatus::transition`] or [`RunStatus::transition`], and an illegal
//! transition is an error, never a silent overwrite. The same states drive
//! the store, the API and the CLI.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskStatus {
    Pending,
    Running,
    Succeeded,
    Failed,
    TimedOut,
    Cancelled,
    Skipped,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
    Queued,
    Running,
    Succeeded,
    Failed,
    TimedOut,
    Cancelled,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("illegal {what} transition: {from} -> {to}")]
pub struct IllegalTransition {
    pub what: &'static str,
    pub from: &'static str,
    pub to: &'static str,
}

impl TaskStatus {
    pub const ALL: [TaskStatus; 7] = [
        TaskStatus::Pending,
        TaskStatus::Running,
        TaskStatus::Succeeded,
        TaskStatus::Failed,
        TaskStatus::TimedOut,
        TaskStatus::Cancelled,
        TaskStatus::Skipped,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            TaskStatus::Pending => "pending",
            TaskStatus::Running => "running",
            TaskStatus::Succeeded => "succeeded",
            TaskStatus::Failed => "failed",
            TaskStatus::TimedOut => "timed_out",
            TaskStatus::Cancelled => "cancelled",
            TaskStatus::Skipped => "skipped",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|x| x.as_str() == s)
    }

    pub fn is_terminal(self) -> bool {
        !matches!(self, TaskStatus::Pending | TaskStatus::Running)
    }

    /// The task transition table.
    ///
    /// | from      | to                                                  |
    /// |-----------|-----------------------------------------------------|
    /// | pending   | running, skipped, cancelled                         |
    /// | running   | running (next attempt), succeeded, failed, timed_out, cancelled, skipped (*) |
    /// | terminal  | nothing                                             |
    ///
    /// (*) a task whose first attempt never began (it waited in a queue for
    /// a worker) when the run timed out.
    pub fn can_become(self, to: TaskStatus) -> bool {
        use TaskStatus::*;
        matches!(
            (self, to),
            (Pending, Running | Skipped | Cancelled) | (Running, Running | Succeeded | Failed | TimedOut | Cancelled | Skipped)
        )
    }

    pub fn transition(&mut self, to: TaskStatus) -> Result<(), IllegalTransition> {
        if self.can_become(to) {
            *self = to;
            Ok(())
        } else {
            Err(IllegalTransition { what: "task", from: self.as_str(), to: to.as_str() })
        }
    }
}

impl RunStatus {
    pub const ALL: [RunStatus; 6] =
        [RunStatus::Queued, RunStatus::Running, RunStatus::Succeeded, RunStatus::Failed, RunStatus::TimedOut, RunStatus::Cancelled];

    pub fn as_str(self) -> &'static str {
        match self {
            RunStatus::Queued => "queued",
            RunStatus::Running => "running",
            RunStatus::Succeeded => "succeeded",
            RunStatus::Failed => "failed",
            RunStatus::TimedOut => "timed_out",
            RunStatus::Cancelled => "cancelled",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|x| x.as_str() == s)
    }

    pub fn is_terminal(self) -> bool {
        !matches!(self, RunStatus::Queued | RunStatus::Running)
    }

    /// The run transition table.
    ///
    /// | from    | to                                                  |
    /// |---------|-----------------------------------------------------|
    /// | queued  | running, cancelled, failed (refused before start)   |
    /// | running | succeeded, failed, timed_out, cancelled             |
    /// | terminal| nothing                                             |
    pub fn can_become(self, to: RunStatus) -> bool {
        use RunStatus::*;
        matches!((self, to), (Queued, Running | Cancelled | Failed) | (Running, Succeeded | Failed | TimedOut | Cancelled))
    }

    pub fn transition(&mut self, to: RunStatus) -> Result<(), IllegalTransition> {
        if self.can_become(to) {
            *self = to;
            Ok(())
        } else {
            Err(IllegalTransition { what: "run", from: self.as_str(), to: to.as_str() })
        }
    }
}

impl std::fmt::Display for TaskStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::fmt::Display for RunStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_task_transition_matches_the_table() {
        use TaskStatus::*;
        let allowed = [
            (Pending, Running),
            (Pending, Skipped),
            (Pending, Cancelled),
            (Running, Running),
            (Running, Succeeded),
            (Running, Failed),
            (Running, TimedOut),
            (Running, Cancelled),
            (Running, Skipped),
        ];
        for from in TaskStatus::ALL {
            for to in TaskStatus::ALL {
                let mut s = from;
                let ok = s.transition(to).is_ok();
                assert_eq!(ok, allowed.contains(&(from, to)), "{from} -> {to}");
                assert_eq!(s, if ok { to } else { from });
            }
        }
    }

    #[test]
    fn every_run_transition_matches_the_table() {
        use RunStatus::*;
        let allowed = [
            (Queued, Running),
            (Queued, Cancelled),
            (Queued, Failed),
            (Running, Succeeded),
            (Running, Failed),
            (Running, TimedOut),
            (Running, Cancelled),
        ];
        for from in RunStatus::ALL {
            for to in RunStatus::ALL {
                let mut s = from;
                let ok = s.transition(to).is_ok();
                assert_eq!(ok, allowed.contains(&(from, to)), "{from} -> {to}");
            }
        }
    }

    #[test]
    fn statuses_round_trip_as_text() {
        for s in TaskStatus::ALL {
            assert_eq!(TaskStatus::parse(s.as_str()), Some(s));
        }
        for s in RunStatus::ALL {
            assert_eq!(RunStatus::parse(s.as_str()), Some(s));
        }
    }
}
