//! Durations (`duration`) and timeouts (`timeout-exceeds`).

use super::context::Rules;
use crate::diag::{Code, Diagnostic};
use crate::plan::parse_duration;
use crate::spec::node::Node;
use std::time::Duration;

impl Rules<'_> {
    pub(super) fn duration(&mut self, pointer: &str) -> Option<Duration> {
        let s = self.root.pointer(pointer)?.as_str()?;
        self.parse_duration_at(s, pointer)
    }

    /// A task's duration field, looked up without building its pointer
    /// unless it is there.
    fn task_duration(&mut self, task: &Node, i: usize, path: &[&str]) -> Option<Duration> {
        let mut v = task;
        for seg in path {
            v = v.get(seg)?;
        }
        let s = v.as_str()?;
        // The pointer is built only for a finding.
        match parse_duration(s) {
            Ok(d) if !d.is_zero() => Some(d),
            _ => self.parse_duration_at(s, &format!("{}/{}", self.task_ptr(i), path.join("/"))),
        }
    }

    fn parse_duration_at(&mut self, s: &str, pointer: &str) -> Option<Duration> {
        match parse_duration(s) {
            Ok(d) if d.is_zero() && pointer.ends_with("timeout") => {
                self.push(Diagnostic::new(Code::Duration, self.file, self.root.span_at(pointer), "a timeout must be longer than zero"));
                None
            }
            Ok(d) => Some(d),
            Err(msg) => {
                self.push(Diagnostic::new(Code::Duration, self.file, self.root.span_at(pointer), msg));
                None
            }
        }
    }

    /// A task's durations, and `timeout-exceeds`: a task that may run
    /// longer (by its own timeout or the default one) than the workflow.
    pub(super) fn task_durations(
        &mut self,
        i: usize,
        t: &Node,
        name: &str,
        wf_timeout: Option<Duration>,
        default_timeout: Option<Duration>,
    ) {
        let task_timeout = self.task_duration(t, i, &["timeout"]);
        self.task_duration(t, i, &["retry", "delay"]);
        self.task_duration(t, i, &["retry", "max_delay"]);
        if let Some(w) = wf_timeout {
            let (tt, ptr) = match task_timeout {
                Some(tt) => (Some(tt), format!("{}/timeout", self.task_ptr(i))),
                None => (default_timeout, "/defaults/timeout".to_string()),
            };
            if let Some(tt) = tt.filter(|tt| *tt > w) {
                self.push(
                    Diagnostic::new(
                        Code::TimeoutExceeds,
                        self.file,
                        self.root.span_at(&ptr),
                        format!(
                            "task `{name}` may run for {}, longer than the workflow timeout of {}",
                            humantime::format_duration(tt),
                            humantime::format_duration(w)
                        ),
                    )
                    .with_help("the workflow timeout will stop the task first; shorten the task timeout or lengthen the workflow's"),
                );
            }
        }
    }
}
