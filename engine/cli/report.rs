//! A run's result as the CLI shows it: JSON, or lines for people with
//! previews of outputs held to a width.

use crate::run::{RunResult, TaskStatus};
use serde_json::{Map, Value};
use std::time::Duration;

/// The documented JSON shape of a run result (tasks in workflow order).
pub fn json_result(r: &RunResult, wf: &crate::plan::Workflow) -> Value {
    let mut v = serde_json::to_value(r).unwrap_or(Value::Null);
    let mut tasks = Map::new();
    for t in &wf.tasks {
        if let Some(tr) = r.tasks.get(&t.name) {
            tasks.insert(t.name.clone(), serde_json::to_value(tr).unwrap_or(Value::Null));
        }
    }
    v["tasks"] = Value::Object(tasks);
    v
}

pub(super) fn symbol(s: TaskStatus) -> &'static str {
    match s {
        TaskStatus::Succeeded => "ok",
        TaskStatus::Failed => "FAILED",
        TaskStatus::TimedOut => "TIMED OUT",
        TaskStatus::Cancelled => "cancelled",
        TaskStatus::Skipped => "skipped",
        TaskStatus::Pending => "pending",
        TaskStatus::Running => "running",
    }
}

/// The first `max` characters of a value on one line, with `…` when cut.
/// Only what is shown is copied or serialised: an output of many megabytes
/// costs its preview, not a copy of itself.
pub(super) fn one_line(v: &Value, max: usize) -> String {
    // Up to 4 bytes a character, plus one more to know that there is more.
    let budget = max * 4 + 4;
    let head = match v {
        Value::String(s) => {
            let mut end = s.len().min(budget);
            while !s.is_char_boundary(end) {
                end -= 1;
            }
            s[..end].to_string()
        }
        other => {
            let mut w = Bounded { buf: Vec::new(), budget };
            let _ = serde_json::to_writer(&mut w, other);
            String::from_utf8_lossy(&w.buf).into_owned()
        }
    };
    let s = head.replace('\n', "⏎");
    if s.chars().count() > max { format!("{}…", s.chars().take(max).collect::<String>()) } else { s }
}

/// A writer that keeps its first `budget` bytes and then refuses more.
struct Bounded {
    buf: Vec<u8>,
    budget: usize,
}

impl std::io::Write for Bounded {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        let room = self.budget.saturating_sub(self.buf.len());
        if room == 0 {
            return Err(std::io::Error::other("enough"));
        }
        let n = room.min(b.len());
        self.buf.extend_from_slice(&b[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn duration_of(t: &crate::run::TaskResult) -> String {
    match (t.started_at, t.finished_at) {
        (Some(a), Some(b)) => format_span(b - a),
        _ => "-".into(),
    }
}

fn format_span(d: time::Duration) -> String {
    let ms = d.whole_milliseconds();
    if ms < 1000 {
        format!("{ms}ms")
    } else if ms < 60_000 {
        format!("{:.2}s", ms as f64 / 1000.0)
    } else {
        humantime::format_duration(Duration::from_secs(d.whole_seconds().max(0) as u64)).to_string()
    }
}

/// A human summary: one line per task, then the run's verdict.
pub fn human_result(r: &RunResult, wf: Option<&crate::plan::Workflow>) -> String {
    let mut out = String::new();
    let names: Vec<String> = match wf {
        Some(w) => w.tasks.iter().map(|t| t.name.clone()).collect(),
        None => r.tasks.keys().cloned().collect(),
    };
    let width = names.iter().map(|n| n.len()).max().unwrap_or(4).min(40);
    for n in &names {
        let Some(t) = r.tasks.get(n) else { continue };
        let mut line = format!("  {:<9} {n:<width$}  {:>8}", symbol(t.status), duration_of(t));
        if t.attempts > 1 {
            line.push_str(&format!("  ({} attempts)", t.attempts));
        }
        match t.status {
            TaskStatus::Succeeded => {
                if let Some(o) = &t.output {
                    line.push_str(&format!("  → {}", one_line(o, 80)));
                }
            }
            TaskStatus::Skipped | TaskStatus::Cancelled if t.skip_reason.is_some() => {
                line.push_str(&format!("  ({})", t.skip_reason.as_deref().unwrap_or_default()));
            }
            _ => {
                if let Some(e) = &t.error {
                    line.push_str(&format!("  {}", one_line(&Value::String(e.clone()), 160)));
                }
            }
        }
        out.push_str(&line);
        out.push('\n');
    }
    let took = match (r.started_at, r.finished_at) {
        (Some(a), Some(b)) => format!(" in {}", format_span(b - a)),
        _ => String::new(),
    };
    let count = |s: TaskStatus| r.tasks.values().filter(|t| t.status == s).count();
    let mut parts = vec![format!("{} succeeded", count(TaskStatus::Succeeded))];
    for s in [TaskStatus::Failed, TaskStatus::TimedOut, TaskStatus::Skipped, TaskStatus::Cancelled] {
        let n = count(s);
        if n > 0 {
            parts.push(format!("{n} {}", s.as_str().replace('_', " ")));
        }
    }
    out.push_str(&format!(
        "run {} of {} {}{took} on {} ({})\n",
        r.run_id,
        r.workflow,
        r.status.as_str().replace('_', " "),
        r.backend,
        parts.join(", ")
    ));
    if let Some(e) = &r.error {
        out.push_str(&format!("  {e}\n"));
    }
    // The workflow's `output:`, one line per key (previews: `--format json` shows it whole).
    match &r.output {
        Some(Value::Object(fields)) => {
            out.push_str("output:\n");
            for (k, v) in fields {
                out.push_str(&format!("  {k}: {}\n", one_line(v, 160)));
            }
        }
        Some(other) => out.push_str(&format!("output: {}\n", one_line(other, 160))),
        None => {}
    }
    out
}

#[cfg(test)]
mod tests {
    use super::one_line;
    use serde_json::json;

    #[test]
    fn previews_show_the_start_of_any_value() {
        assert_eq!(one_line(&json!("a\nb"), 10), "a⏎b");
        assert_eq!(one_line(&json!({"k": [1, 2]}), 80), r#"{"k":[1,2]}"#);
        assert_eq!(one_line(&json!("héllo wörld"), 5), "héllo…");
        let big = json!({"s": "x".repeat(5_000_000)});
        let p = one_line(&big, 20);
        assert_eq!(p, format!("{{\"s\":\"{}…", "x".repeat(14)));
        assert_eq!(one_line(&json!("ü".repeat(100)), 3), "üüü…");
    }
}
