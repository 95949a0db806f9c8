//! `when:` conditions: CEL expressions (the Common Expression Language, as
//! in Kubernetes and Hatchet), compiled once per definition and evaluated
//! against an attempt's context (`input`, `tasks`, `run`, `workflow`,
//! `context`).
//!
//! Compiling also lists what an expression reads, so validation can check
//! each `tasks.NAME` / `tasks["NAME"]` against the task's ancestors and a
//! compiled task knows which outputs its condition needs.

use cel::common::ast::{Expr, IdedExpr, LiteralValue};
use serde_json::Value as Json;
use std::sync::{Arc, LazyLock};

/// The variables a condition may read.
pub const VARIABLES: &[&str] = &["input", "tasks", "run", "workflow", "context"];

/// One shared standard environment: building it per evaluation would cost
/// more than most conditions.
static ENV: LazyLock<Arc<cel::Env>> = LazyLock::new(|| Arc::new(cel::Env::stdlib()));

/// A compiled condition.
pub struct Condition {
    /// The expression as written.
    pub source: String,
    program: cel::Program,
    /// The variables the expression reads: only those are converted to CEL
    /// values for an evaluation.
    vars: Vec<&'static str>,
    /// Where it was written (`file:line:col`), when it came from a file.
    pub at: Option<String>,
}

impl std::fmt::Debug for Condition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Condition").field("source", &self.source).field("at", &self.at).finish()
    }
}

/// A condition that does not parse: the byte offset of the offending
/// character in the expression, and what is wrong there.
#[derive(Debug, Clone, PartialEq)]
pub struct ParseError {
    pub offset: usize,
    pub message: String,
}

/// What an expression reads.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Refs {
    /// `tasks.NAME` or `tasks["NAME"]`: the name, the byte range of the
    /// whole reference in the expression, and the field read after it
    /// (`output`, `status`) if any.
    pub tasks: Vec<TaskRef>,
    /// Identifiers that are no variable (nor a comprehension's own), with
    /// their byte offset.
    pub unknown: Vec<(String, usize)>,
    /// `tasks` read as a whole (`tasks[x]` with a computed key, `size(tasks)`):
    /// its offset.
    pub whole_tasks: Vec<usize>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct TaskRef {
    pub name: String,
    pub range: std::ops::Range<usize>,
    pub field: Option<String>,
}

impl Condition {
    pub fn compile(source: &str) -> Result<Condition, ParseError> {
        let program = cel::Program::compile(source).map_err(|e| {
            let first = e.errors.into_iter().next();
            let (line, col) = first.as_ref().map_or((1, 0), |e| e.pos);
            let mut message = first.map_or_else(|| "the expression does not parse".to_string(), |e| e.msg);
            // The parser lists every token it would take: a long list hides
            // the point.
            if let Some(at) = message.find(" expecting {")
                && message[at..].matches(',').count() > 4
            {
                message.truncate(at);
            }
            ParseError { offset: byte_offset(source, line, col - 1), message }
        })?;
        let refs = program.references();
        let vars = VARIABLES.iter().copied().filter(|v| refs.has_variable(v)).collect();
        Ok(Condition { source: source.to_string(), program, vars, at: None })
    }

    /// Whether the expression reads any variable (a literal does not need
    /// an attempt's context built).
    pub fn reads_variables(&self) -> bool {
        !self.vars.is_empty()
    }

    /// What the expression reads.
    pub fn refs(&self) -> Refs {
        let mut refs = Refs::default();
        let info = self.program.source_info();
        let offset = |id: u64| info.offset_for(id).map_or(0, |(start, _)| char_to_byte(&self.source, start as usize));
        walk(&self.source, self.program.expression(), &mut Vec::new(), &offset, &mut refs);
        refs
    }

    /// Evaluate against an attempt's context (a JSON object with the
    /// variables; a missing one reads as null). `Ok(false)`: skip the task.
    pub fn eval(&self, ctx: &Json) -> Result<bool, String> {
        let mut c = cel::Context::with_env(Arc::clone(&ENV));
        for v in &self.vars {
            c.add_variable_from_value(*v, to_cel(ctx.get(*v).unwrap_or(&Json::Null)));
        }
        match self.program.execute(&c) {
            Ok(cel::Value::Bool(b)) => Ok(b),
            Ok(other) => Err(format!("returned {}, not a bool", type_name(&other))),
            Err(e) => Err(e.to_string()),
        }
    }

    /// The reason a task is skipped when this condition is false.
    pub fn skip_reason(&self) -> String {
        format!("condition false: {}", self.source)
    }

    /// The error of a task whose condition could not be evaluated.
    pub fn failure(&self, why: &str) -> String {
        match &self.at {
            Some(at) => format!("condition `{}` ({at}) {why}", self.source),
            None => format!("condition `{}` {why}", self.source),
        }
    }
}

fn type_name(v: &cel::Value) -> &'static str {
    match v {
        cel::Value::List(_) => "a list",
        cel::Value::Map(_) => "a map",
        cel::Value::Int(_) | cel::Value::UInt(_) => "an int",
        cel::Value::Float(_) => "a double",
        cel::Value::String(_) => "a string",
        cel::Value::Bytes(_) => "bytes",
        cel::Value::Null => "null",
        _ => "a value",
    }
}

/// JSON to CEL. Written by hand rather than through `cel::to_value`: that
/// serializer turns non-negative JSON integers into CEL `uint`, and
/// `input.count == 1` (an `int` literal) would then never hold.
pub fn to_cel(v: &Json) -> cel::Value {
    match v {
        Json::Null => cel::Value::Null,
        Json::Bool(b) => cel::Value::Bool(*b),
        Json::Number(n) => match (n.as_i64(), n.as_u64()) {
            (Some(i), _) => cel::Value::Int(i),
            (None, Some(u)) => cel::Value::UInt(u),
            _ => cel::Value::Float(n.as_f64().unwrap_or(f64::NAN)),
        },
        Json::String(s) => cel::Value::String(Arc::new(s.clone())),
        Json::Array(a) => cel::Value::List(Arc::new(a.iter().map(to_cel).collect())),
        Json::Object(m) => {
            let map: std::collections::HashMap<String, cel::Value> = m.iter().map(|(k, v)| (k.clone(), to_cel(v))).collect();
            cel::Value::Map(map.into())
        }
    }
}

/// The task a node names when it is `tasks.NAME` or `tasks["NAME"]`.
fn task_ref(e: &IdedExpr, bound: &[String]) -> Option<(String, u64)> {
    match &e.expr {
        Expr::Select(s) if !s.test && is_tasks(&s.operand, bound) => Some((s.field.clone(), s.operand.id)),
        Expr::Call(c) if c.func_name == "_[_]" && c.target.is_none() && c.args.len() == 2 && is_tasks(&c.args[0], bound) => {
            match &c.args[1].expr {
                Expr::Literal(LiteralValue::String(s)) => Some((s.to_string(), c.args[0].id)),
                _ => None,
            }
        }
        _ => None,
    }
}

fn is_tasks(e: &IdedExpr, bound: &[String]) -> bool {
    matches!(&e.expr, Expr::Ident(n) if n == "tasks" && !bound.iter().any(|b| b == "tasks"))
}

fn walk(source: &str, e: &IdedExpr, bound: &mut Vec<String>, offset: &dyn Fn(u64) -> usize, refs: &mut Refs) {
    // `tasks.X.field` / `tasks["X"].field`: the reference with its field.
    if let Expr::Select(s) = &e.expr
        && let Some((name, id)) = task_ref(&s.operand, bound)
    {
        refs.tasks.push(TaskRef { name, range: offset(id)..offset(e.id) + 1 + s.field.len(), field: Some(s.field.clone()) });
        return;
    }
    if let Some((name, id)) = task_ref(e, bound) {
        let end = match &e.expr {
            Expr::Select(s) => offset(e.id) + 1 + s.field.len(),
            // `tasks["NAME"]`: to the closing bracket.
            _ => source[offset(e.id)..].find(']').map_or(source.len(), |i| offset(e.id) + i + 1),
        };
        refs.tasks.push(TaskRef { name, range: offset(id)..end, field: None });
        return;
    }
    match &e.expr {
        Expr::Ident(n) => {
            if bound.iter().any(|b| b == n) {
            } else if n == "tasks" {
                refs.whole_tasks.push(offset(e.id));
            } else if !VARIABLES.contains(&n.as_str()) {
                refs.unknown.push((n.clone(), offset(e.id)));
            }
        }
        Expr::Select(s) => walk(source, &s.operand, bound, offset, refs),
        Expr::Call(c) => {
            if let Some(t) = &c.target {
                walk(source, t, bound, offset, refs);
            }
            for a in &c.args {
                walk(source, a, bound, offset, refs);
            }
        }
        Expr::Comprehension(c) => {
            walk(source, &c.iter_range, bound, offset, refs);
            walk(source, &c.accu_init, bound, offset, refs);
            let n = bound.len();
            bound.push(c.iter_var.clone());
            if let Some(v) = &c.iter_var2 {
                bound.push(v.clone());
            }
            bound.push(c.accu_var.clone());
            walk(source, &c.loop_cond, bound, offset, refs);
            walk(source, &c.loop_step, bound, offset, refs);
            walk(source, &c.result, bound, offset, refs);
            bound.truncate(n);
        }
        Expr::List(l) => {
            for x in &l.elements {
                walk(source, x, bound, offset, refs);
            }
        }
        Expr::Map(m) => {
            for entry in &m.entries {
                if let cel::common::ast::EntryExpr::MapEntry(me) = &entry.expr {
                    walk(source, &me.key, bound, offset, refs);
                    walk(source, &me.value, bound, offset, refs);
                }
            }
        }
        Expr::Struct(s) => {
            for entry in &s.entries {
                if let cel::common::ast::EntryExpr::StructField(f) = &entry.expr {
                    walk(source, &f.value, bound, offset, refs);
                }
            }
        }
        Expr::Literal(_) | Expr::Unspecified => {}
    }
}

fn char_to_byte(s: &str, chars: usize) -> usize {
    s.char_indices().nth(chars).map_or(s.len(), |(b, _)| b)
}

/// The byte offset of a parser position (1-based line, 0-based column in
/// characters; the parser's columns are 1-based).
fn byte_offset(s: &str, line: isize, col: isize) -> usize {
    let mut start = 0;
    for (i, l) in s.split_inclusive('\n').enumerate() {
        if i as isize + 1 == line {
            return start + char_to_byte(l, col.max(0) as usize).min(l.len());
        }
        start += l.len();
    }
    s.len()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn conditions_read_the_context() {
        let c = Condition::compile(r#"size(tasks.split.output.pages) > 0 && input.n == 1 && tasks["a-b"].status == "succeeded""#).unwrap();
        let ctx = json!({"input": {"n": 1}, "tasks": {"split": {"output": {"pages": [1]}}, "a-b": {"status": "succeeded"}}});
        assert_eq!(c.eval(&ctx), Ok(true));
        let ctx = json!({"input": {"n": 1}, "tasks": {"split": {"output": {"pages": []}}, "a-b": {"status": "succeeded"}}});
        assert_eq!(c.eval(&ctx), Ok(false));
        assert_eq!(c.skip_reason(), format!("condition false: {}", c.source));
    }

    #[test]
    fn a_value_that_is_not_a_bool_or_an_error_is_an_error() {
        let c = Condition::compile("input.n + 1").unwrap();
        assert_eq!(c.eval(&json!({"input": {"n": 1}})), Err("returned an int, not a bool".into()));
        let c = Condition::compile("1 / input.n == 1").unwrap();
        assert!(c.eval(&json!({"input": {"n": 0}})).unwrap_err().contains("ivision by zero"), "{:?}", c.eval(&json!({"input": {"n": 0}})));
        let c = Condition::compile("input.missing == 1").unwrap();
        assert!(c.eval(&json!({"input": {}})).is_err());
    }

    #[test]
    fn parse_errors_point_at_the_offending_character() {
        let e = Condition::compile("input.a == )").unwrap_err();
        assert_eq!(e.offset, 11, "{e:?}");
        let e = Condition::compile("input.a ==\n  = 2").unwrap_err();
        assert_eq!(&"input.a ==\n  = 2"[e.offset..e.offset + 1], "=", "{e:?}");
    }

    #[test]
    fn references_are_listed_with_their_place() {
        let src = r#"tasks.a.output.x > 1 && tasks["b-c"].status == "failed" && [1].all(x, x > zed) && tasks.d"#;
        let r = Condition::compile(src).unwrap().refs();
        let names: Vec<(&str, &str, Option<&str>)> =
            r.tasks.iter().map(|t| (t.name.as_str(), &src[t.range.clone()], t.field.as_deref())).collect();
        assert_eq!(
            names,
            vec![("a", "tasks.a.output", Some("output")), ("b-c", r#"tasks["b-c"].status"#, Some("status")), ("d", "tasks.d", None)]
        );
        assert_eq!(r.unknown, vec![("zed".to_string(), src.find("zed").unwrap())]);
        assert!(r.whole_tasks.is_empty());
        let r = Condition::compile("size(tasks) > 0").unwrap().refs();
        assert_eq!(r.whole_tasks, vec![5]);
    }
}
