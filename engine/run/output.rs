//! The workflow's `output:`: rendered when a run succeeds, by every driver
//! through [`end`], the one rule of what a run's end becomes with it.
//!
//! The scheduler core decides that a run ended and how; it renders nothing
//! (it stays sans-IO and keeps no outputs). Each driver, when it sees the
//! core's `RunFinished`, hands the core's end to [`end`] with a way to read
//! the outputs and statuses of the tasks the output reads, and records what
//! comes back: a succeeded run with its output, or, when the output cannot
//! be rendered, a failed run with the error `workflow output: <why>`.

use super::state::{RunStatus, TaskStatus};
use crate::plan::{TaskId, Workflow};
use serde_json::{Map, Value, json};

/// The most text one template of an output renders (a lone `{{read}}`
/// keeps its value and is not counted). A fixed number, the default of
/// `[actions] max_output_bytes`, so that every backend (Temporal's
/// replayed workflow code too) renders an output the same way whatever a
/// process's configuration says.
pub const MAX_TEXT_BYTES: usize = super::actions::DEFAULT_MAX_OUTPUT_BYTES;

/// How a run ends, as the driver records it.
#[derive(Debug, Clone, PartialEq)]
pub struct End {
    pub status: RunStatus,
    pub error: Option<String>,
    /// The rendered output: only for a succeeded run of a workflow that declares one.
    pub output: Option<Value>,
}

/// The template context of a run before any task: `input`, `run.id`,
/// `workflow` (`name`, `version`) and `context`.
pub fn base_context(wf: &Workflow, run_id: &str, input: &Value, context: &Value) -> Value {
    json!({
        "input": input,
        "run": {"id": run_id},
        "workflow": {"name": wf.name, "version": wf.version},
        "context": context,
    })
}

/// Whether a run that ends `status` renders an output: it succeeded and its
/// workflow declares one. A driver that must load outputs first asks this.
pub fn wanted(wf: &Workflow, status: RunStatus) -> bool {
    status == RunStatus::Succeeded && wf.output.is_some()
}

/// Render the output of `wf` (`None` when it declares none): `base_ctx`
/// (see [`base_context`]) with `tasks.NAME = {output, status}` for each
/// task the output reads; `read(task)` gives its output (used only if it
/// succeeded: any other task's output reads as null) and its status.
pub fn render(
    wf: &Workflow,
    base_ctx: &Value,
    read: impl Fn(TaskId) -> (Option<Value>, TaskStatus),
) -> Result<Option<Value>, crate::plan::template::RenderError> {
    let Some(out) = &wf.output else { return Ok(None) };
    let mut ctx = base_ctx.clone();
    let mut tasks = Map::with_capacity(out.reads.len());
    for &r in &out.reads {
        let (output, status) = read(r);
        let output = if status == TaskStatus::Succeeded { output.unwrap_or(Value::Null) } else { Value::Null };
        tasks.insert(wf.tasks[r].name.clone(), json!({"output": output, "status": status.as_str()}));
    }
    ctx["tasks"] = Value::Object(tasks);
    wf.templates.capped(MAX_TEXT_BYTES).render(&out.value, &ctx).map(Some)
}

/// The end of a run the scheduler core finished as `status` with `error`:
/// a succeeded run gets its output ([`render`]); a succeeded run whose
/// output cannot be rendered ends `failed` with the error
/// `workflow output: <why>` instead. Any other end is kept as it is, with
/// no output, and `read` is not called.
pub fn end(
    wf: &Workflow,
    status: RunStatus,
    error: Option<String>,
    base_ctx: &Value,
    read: impl Fn(TaskId) -> (Option<Value>, TaskStatus),
) -> End {
    if !wanted(wf, status) {
        return End { status, error, output: None };
    }
    match render(wf, base_ctx, read) {
        Ok(output) => End { status, error, output },
        Err(e) => End { status: RunStatus::Failed, error: Some(format!("workflow output: {e}")), output: None },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wf(yaml_output: Value) -> std::sync::Arc<Workflow> {
        let raw = serde_json::from_value(json!({
            "version": 1, "name": "out",
            "tasks": [{"name": "a", "uses": "echo"}, {"name": "b", "uses": "echo"}, {"name": "c", "uses": "echo"}],
            "output": yaml_output,
        }))
        .expect("a definition");
        crate::plan::compile(raw).expect("compiles")
    }

    fn outputs(id: TaskId) -> (Option<Value>, TaskStatus) {
        match id {
            0 => (Some(json!({"n": 2, "pages": ["p1", "p2"]})), TaskStatus::Succeeded),
            1 => (Some(json!("left over")), TaskStatus::Skipped),
            _ => (None, TaskStatus::Failed),
        }
    }

    #[test]
    fn values_keep_their_types_and_tasks_that_did_not_succeed_read_as_null() {
        let wf = wf(json!({
            "n": "{{tasks.a.output.n}}", "pages": "{{tasks.a.output.pages}}", "text": "n={{tasks.a.output.n}} run {{run.id}}",
            "skipped": "{{tasks.b.output}}", "status": "{{tasks.b.status}}", "nested": {"list": ["{{input.x}}", 1, "{{workflow.name}}"]},
            "plain": "no template",
        }));
        assert_eq!(wf.output.as_ref().unwrap().reads, vec![0, 1]);
        let base = base_context(&wf, "r1", &json!({"x": true}), &Value::Null);
        let e = end(&wf, RunStatus::Succeeded, None, &base, outputs);
        assert_eq!(e.status, RunStatus::Succeeded);
        assert_eq!(e.error, None);
        assert_eq!(
            e.output,
            Some(json!({
                "n": 2, "pages": ["p1", "p2"], "text": "n=2 run r1", "skipped": null, "status": "skipped",
                "nested": {"list": [true, 1, "out"]}, "plain": "no template",
            }))
        );
    }

    #[test]
    fn an_output_that_cannot_render_fails_the_run_and_other_ends_are_kept() {
        let wf = wf(json!({"missing": "{{tasks.a.output.nope}}"}));
        let base = base_context(&wf, "r1", &json!({}), &Value::Null);
        let e = end(&wf, RunStatus::Succeeded, None, &base, outputs);
        assert_eq!(e.status, RunStatus::Failed);
        assert_eq!(e.output, None);
        let error = e.error.unwrap();
        assert!(error.starts_with("workflow output: ") && error.contains("tasks.a.output.nope"), "{error}");
        for status in [RunStatus::Failed, RunStatus::Cancelled, RunStatus::TimedOut] {
            let kept = end(&wf, status, Some("why".into()), &base, |_| panic!("nothing is read for a run that did not succeed"));
            assert_eq!(kept, End { status, error: Some("why".into()), output: None });
        }
    }

    #[test]
    fn a_workflow_without_output_has_none() {
        let raw = serde_json::from_value(json!({"version": 1, "name": "plain", "tasks": [{"name": "a", "uses": "echo"}]})).unwrap();
        let wf = crate::plan::compile(raw).unwrap();
        let base = base_context(&wf, "r1", &json!({}), &Value::Null);
        assert!(!wanted(&wf, RunStatus::Succeeded));
        assert_eq!(end(&wf, RunStatus::Succeeded, None, &base, |_| panic!("no reads")).output, None);
    }
}
