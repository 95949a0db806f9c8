//! The semantic rules of the spec language, beyond the schema: unique task
//! names, parents that resolve, no cycles, one action per task, durations,
//! templates and what they may read, timeouts, backends.
//!
//! The rules read the untyped document so they still report everything when
//! another part of the file breaks the schema.

use crate::diag::{did_you_mean, Code, Diagnostic, Span};
use crate::plan::{parse_duration, template};
use crate::spec::raw::RawTask;
use crate::spec::Document;
use petgraph::graph::{DiGraph, NodeIndex};
use serde_json::Value;
use std::collections::{HashMap, HashSet};
use std::time::Duration;

pub const ACTIONS: [&str; 5] = ["run", "shell", "http", "celery", "uses"];
const ROOTS: [&str; 5] = ["input", "tasks", "run", "workflow", "context"];

pub struct Rules<'a> {
    pub file: &'a str,
    pub text: &'a str,
    pub doc: &'a Document,
    pub backends: Option<&'a [String]>,
    pub out: &'a mut Vec<Diagnostic>,
    /// Byte offset of each line start, for mapping spans back to text.
    pub line_starts: Vec<usize>,
}

/// Byte offsets of the line starts of a text.
pub fn line_starts(text: &str) -> Vec<usize> {
    let mut v = vec![0];
    v.extend(text.match_indices('\n').map(|(i, _)| i + 1));
    v
}

impl Rules<'_> {
    fn push(&mut self, d: Diagnostic) {
        self.out.push(d);
    }

    fn duration(&mut self, pointer: &str) -> Option<Duration> {
        let s = self.doc.value.pointer(pointer)?.as_str()?;
        match parse_duration(s) {
            Ok(d) if d.is_zero() && pointer.ends_with("timeout") => {
                self.push(Diagnostic::new(Code::Duration, self.file, self.doc.span(pointer), "a timeout must be longer than zero"));
                None
            }
            Ok(d) => Some(d),
            Err(msg) => {
                self.push(Diagnostic::new(Code::Duration, self.file, self.doc.span(pointer), msg));
                None
            }
        }
    }

    pub fn check(mut self) {
        let v = &self.doc.value;
        let wf_timeout = self.duration("/timeout");
        let default_timeout = self.duration("/defaults/timeout");
        self.duration("/defaults/retry/delay");
        self.duration("/defaults/retry/max_delay");
        self.backend();

        let Some(tasks) = v.get("tasks").and_then(Value::as_array) else { return };
        // Names.
        let mut ids: HashMap<&str, usize> = HashMap::with_capacity(tasks.len());
        for (i, t) in tasks.iter().enumerate() {
            let Some(name) = t.get("name").and_then(Value::as_str) else { continue };
            if let Some(&first) = ids.get(name) {
                let fs = self.doc.span(&format!("/tasks/{first}/name"));
                self.push(
                    Diagnostic::new(Code::DuplicateTask, self.file, self.doc.span(&format!("/tasks/{i}/name")), format!("duplicate task name `{name}`"))
                        .with_help(format!("`{name}` is first defined at line {}, column {}", fs.start.line, fs.start.column)),
                );
            } else {
                ids.insert(name, i);
            }
        }
        let names: Vec<&str> = ids.keys().copied().collect();
        // Parents, actions, durations.
        let mut graph: DiGraph<usize, ()> = DiGraph::with_capacity(tasks.len(), tasks.len());
        for i in 0..tasks.len() {
            graph.add_node(i);
        }
        let mut parents_of: Vec<Vec<usize>> = vec![Vec::new(); tasks.len()];
        for (i, t) in tasks.iter().enumerate() {
            let name = t.get("name").and_then(Value::as_str).unwrap_or("");
            if let Some(ps) = t.get("parents").and_then(Value::as_array) {
                for (j, p) in ps.iter().enumerate() {
                    let Some(p) = p.as_str() else { continue };
                    let ptr = format!("/tasks/{i}/parents/{j}");
                    if p == name {
                        self.push(Diagnostic::new(Code::SelfParent, self.file, self.doc.span(&ptr), format!("task `{name}` lists itself as a parent")));
                    } else if let Some(&pid) = ids.get(p) {
                        if !parents_of[i].contains(&pid) {
                            parents_of[i].push(pid);
                            graph.add_edge(NodeIndex::new(pid), NodeIndex::new(i), ());
                        }
                    } else {
                        let mut d = Diagnostic::new(Code::UnknownParent, self.file, self.doc.span(&ptr), format!("unknown parent `{p}` of task `{name}`"));
                        if let Some(s) = did_you_mean(p, names.iter().copied()) {
                            d = d.with_help(format!("did you mean `{s}`?"));
                        }
                        self.push(d);
                    }
                }
            }
            if let Some(obj) = t.as_object() {
                let present: Vec<&str> = ACTIONS.iter().copied().filter(|a| obj.contains_key(*a)).collect();
                if present.is_empty() {
                    let d = Diagnostic::new(
                        Code::Action,
                        self.file,
                        self.doc.span(&format!("/tasks/{i}/name")),
                        format!("task `{name}` has no action"),
                    );
                    let d = if obj.contains_key("with") {
                        d.with_help("`with` gives arguments to a handler: add `uses: NAME`")
                    } else {
                        d.with_help("add one of `run`, `shell`, `http`, `celery` or `uses`")
                    };
                    self.push(d);
                } else if present.len() > 1 {
                    let first = self.doc.key_span(&format!("/tasks/{i}/{}", present[0]));
                    for extra in &present[1..] {
                        self.push(
                            Diagnostic::new(
                                Code::Action,
                                self.file,
                                self.doc.key_span(&format!("/tasks/{i}/{extra}")),
                                format!("task `{name}` has more than one action (`{}` and `{extra}`)", present[0]),
                            )
                            .with_help(format!("a task has exactly one action; `{}` is at line {}; split this into two tasks", present[0], first.start.line)),
                        );
                    }
                }
                if obj.contains_key("with") && !obj.contains_key("uses") && !present.is_empty() {
                    self.push(Diagnostic::new(
                        Code::Schema,
                        self.file,
                        self.doc.key_span(&format!("/tasks/{i}/with")),
                        format!("`with` only applies to `uses` tasks, and task `{name}` is a `{}` task", present[0]),
                    ));
                }
            }
            let task_timeout = self.duration(&format!("/tasks/{i}/timeout"));
            self.duration(&format!("/tasks/{i}/retry/delay"));
            self.duration(&format!("/tasks/{i}/retry/max_delay"));
            if let Some(w) = wf_timeout {
                let (tt, ptr) = match task_timeout {
                    Some(tt) => (Some(tt), format!("/tasks/{i}/timeout")),
                    None => (default_timeout, "/defaults/timeout".to_string()),
                };
                if let Some(tt) = tt.filter(|tt| *tt > w) {
                    self.push(
                        Diagnostic::new(
                            Code::TimeoutExceeds,
                            self.file,
                            self.doc.span(&ptr),
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
        self.cycles(&graph, tasks);
        self.templates(tasks, &ids, &parents_of);
    }

    fn backend(&mut self) {
        let Some(backends) = self.backends else { return };
        let Some(b) = self.doc.value.get("backend") else { return };
        let mut named: Vec<(String, &str)> = Vec::new();
        match b {
            Value::String(s) => named.push(("/backend".into(), s)),
            Value::Object(m) => {
                for k in ["enabled", "disabled", "default"] {
                    if let Some(s) = m.get(k).and_then(Value::as_str) {
                        named.push((format!("/backend/{k}"), s));
                    }
                }
                if let Some(vs) = m.get("variants").and_then(Value::as_object) {
                    for (k, v) in vs {
                        if let Some(s) = v.as_str() {
                            named.push((format!("/backend/variants/{}", crate::spec::node::pointer_seg(k)), s));
                        }
                    }
                }
            }
            _ => {}
        }
        for (ptr, name) in named {
            if !backends.iter().any(|b| b == name) {
                let mut d = Diagnostic::new(Code::UnknownBackend, self.file, self.doc.span(&ptr), format!("unknown backend `{name}`"));
                d = match did_you_mean(name, backends.iter().map(String::as_str)) {
                    Some(s) => d.with_help(format!("did you mean `{s}`?")),
                    None => d.with_help(format!("configured backends: {}", backends.join(", "))),
                };
                self.push(d);
            }
        }
    }

    fn cycles(&mut self, graph: &DiGraph<usize, ()>, tasks: &[Value]) {
        let name = |i: usize| tasks[i].get("name").and_then(Value::as_str).unwrap_or("?").to_string();
        let mut sccs = petgraph::algo::tarjan_scc(graph);
        sccs.retain(|c| c.len() > 1);
        sccs.sort_by_key(|c| c.iter().map(|n| n.index()).min());
        for scc in sccs {
            let members: HashSet<usize> = scc.iter().map(|n| n.index()).collect();
            let start = *members.iter().min().unwrap_or(&0);
            // Walk parent edges inside the component from the first task back
            // to itself: `start` needs p1, p1 needs p2, ... -> start.
            let mut path = vec![start];
            let mut seen = HashSet::from([start]);
            let mut cur = start;
            loop {
                let preds: Vec<usize> = graph
                    .neighbors_directed(NodeIndex::new(cur), petgraph::Direction::Incoming)
                    .map(|n| n.index())
                    .filter(|n| members.contains(n))
                    .collect();
                if preds.contains(&start) && path.len() > 1 || preds.is_empty() {
                    break;
                }
                match preds.iter().find(|p| !seen.contains(p)) {
                    Some(&next) => {
                        path.push(next);
                        seen.insert(next);
                        cur = next;
                    }
                    None => break,
                }
                if preds.contains(&start) {
                    break;
                }
            }
            // path is in "depends on" order; print in execution order a -> b -> a.
            path.reverse();
            let mut names: Vec<String> = path.iter().map(|&i| name(i)).collect();
            names.push(names[0].clone());
            let first = path[0];
            let second = path.get(1).copied().unwrap_or(first);
            let ptr = tasks[second]
                .get("parents")
                .and_then(Value::as_array)
                .and_then(|ps| ps.iter().position(|p| p.as_str() == Some(&name(first))))
                .map(|j| format!("/tasks/{second}/parents/{j}"))
                .unwrap_or(format!("/tasks/{second}/name"));
            self.push(
                Diagnostic::new(Code::Cycle, self.file, self.doc.span(&ptr), format!("the parents form a cycle: {}", names.join(" -> ")))
                    .with_help("remove one of these parent links"),
            );
        }
    }

    fn templates(&mut self, tasks: &[Value], ids: &HashMap<&str, usize>, parents_of: &[Vec<usize>]) {
        let input = self.doc.value.get("input");
        let closed_input: Option<Vec<String>> = input
            .filter(|i| i.get("additionalProperties") == Some(&Value::Bool(false)))
            .map(|i| i.get("properties").and_then(Value::as_object).map(|p| p.keys().cloned().collect()).unwrap_or_default());
        let mut ancestors_cache: HashMap<usize, HashSet<usize>> = HashMap::new();
        // Workflow-level templates: env values and the rollout entity.
        let mut strings: Vec<(String, String, bool, Option<usize>)> = Vec::new();
        if let Some(env) = self.doc.value.get("env").and_then(Value::as_object) {
            for (k, v) in env {
                if let Some(s) = v.as_str() {
                    strings.push((format!("/env/{}", crate::spec::node::pointer_seg(k)), s.to_string(), false, None));
                }
            }
        }
        if let Some(s) = self.doc.value.pointer("/backend/entity").and_then(Value::as_str) {
            strings.push(("/backend/entity".into(), s.to_string(), false, None));
        }
        for (i, t) in tasks.iter().enumerate() {
            let Ok(rt) = serde_json::from_value::<RawTask>(t.clone()) else { continue };
            for (ptr, s, shell) in crate::plan::task_template_strings(&rt) {
                if s.contains("{{") {
                    strings.push((format!("/tasks/{i}{ptr}"), s.to_string(), shell, Some(i)));
                }
            }
        }
        for (ptr, s, shell, task) in strings {
            if !s.contains("{{") {
                continue;
            }
            let node_span = self.doc.span(&ptr);
            let tpl = match handlebars::Template::compile(&s) {
                Ok(t) => t,
                Err(e) => {
                    let (line, col) = e.pos().unwrap_or((1, 1));
                    let span = self.locate_line_col(node_span, &s, line, col);
                    let reason = e.reason().to_string();
                    self.push(
                        Diagnostic::new(Code::Template, self.file, span, format!("invalid template: {reason}"))
                            .with_help("templates are Handlebars: `{{input.name}}`, `{{tasks.NAME.output}}`"),
                    );
                    continue;
                }
            };
            if shell && template::has_raw_output(&tpl) {
                let span = self.locate(node_span, "{{{").unwrap_or(node_span);
                self.push(
                    Diagnostic::new(Code::Template, self.file, span, "raw `{{{ }}}` output is not allowed in a `shell` script")
                        .with_help("use `{{...}}`: the value is then shell-quoted, so it can never become shell syntax"),
                );
            }
            for raw in template::referenced_paths(&tpl) {
                if raw.starts_with('@') || raw == "this" || raw.starts_with("this.") || raw.starts_with("../") {
                    continue;
                }
                let segs: Vec<&str> = raw.split(['.', '/']).collect();
                let span = self.locate(node_span, &raw).unwrap_or(node_span);
                let root = segs[0];
                if !ROOTS.contains(&root) {
                    if ["if", "unless", "each", "with", "lookup", "else", "log"].contains(&root) {
                        continue;
                    }
                    let mut d = Diagnostic::new(Code::TemplateRef, self.file, span, format!("template reads `{raw}`, but `{root}` is not a template variable"));
                    d = match did_you_mean(root, ROOTS) {
                        Some(s) => d.with_help(format!("did you mean `{s}`? The variables are input, tasks, run, workflow and context")),
                        None => d.with_help("the variables are input, tasks, run, workflow and context"),
                    };
                    self.push(d);
                    continue;
                }
                match root {
                    "tasks" => {
                        let Some(target) = segs.get(1) else {
                            self.push(
                                Diagnostic::new(Code::TemplateRef, self.file, span, "read one task's output: `tasks.NAME.output`")
                                    .with_help("templates may read only the outputs of a task's ancestors, by name"),
                            );
                            continue;
                        };
                        let Some(task) = task else {
                            self.push(Diagnostic::new(
                                Code::TemplateRef,
                                self.file,
                                span,
                                format!("`{raw}`: task outputs are not available here, only in a task's own templates"),
                            ));
                            continue;
                        };
                        let me = tasks[task].get("name").and_then(Value::as_str).unwrap_or("?");
                        match ids.get(target) {
                            None => {
                                let mut d = Diagnostic::new(Code::TemplateRef, self.file, span, format!("template reads `{raw}`, but there is no task `{target}`"));
                                if let Some(s) = did_you_mean(target, ids.keys().copied()) {
                                    d = d.with_help(format!("did you mean `{s}`?"));
                                }
                                self.push(d);
                            }
                            Some(&tid) => {
                                let anc = ancestors_cache.entry(task).or_insert_with(|| ancestors(task, parents_of));
                                if !anc.contains(&tid) {
                                    self.push(
                                        Diagnostic::new(
                                            Code::TemplateRef,
                                            self.file,
                                            span,
                                            format!("task `{me}` reads `{raw}`, but `{target}` is not an ancestor of `{me}`"),
                                        )
                                        .with_help(format!("add `{target}` to the parents of `{me}`, so its output exists when `{me}` starts")),
                                    );
                                } else if segs.get(2).is_some_and(|s| *s != "output") {
                                    self.push(Diagnostic::new(
                                        Code::TemplateRef,
                                        self.file,
                                        span,
                                        format!("`{raw}`: a task exposes only `output` (`tasks.{target}.output`)"),
                                    ));
                                }
                            }
                        }
                    }
                    "input" => {
                        if let (Some(prop), Some(props)) = (segs.get(1), &closed_input) {
                            if !props.iter().any(|p| p == prop) {
                                let mut d = Diagnostic::new(
                                    Code::TemplateRef,
                                    self.file,
                                    span,
                                    format!("template reads `{raw}`, but the input schema declares no property `{prop}` and forbids others"),
                                );
                                if let Some(s) = did_you_mean(prop, props.iter().map(String::as_str)) {
                                    d = d.with_help(format!("did you mean `{s}`?"));
                                }
                                self.push(d);
                            }
                        }
                    }
                    "run" | "workflow" => {
                        let allowed: &[&str] = if root == "run" { &["id", "attempt"] } else { &["name", "version"] };
                        if let Some(f) = segs.get(1).filter(|f| !allowed.contains(f)) {
                            self.push(Diagnostic::new(
                                Code::TemplateRef,
                                self.file,
                                span,
                                format!("`{raw}`: `{root}` has only {}", allowed.iter().map(|a| format!("`{a}`")).collect::<Vec<_>>().join(" and ")),
                            ));
                            let _ = f;
                        }
                    }
                    _ => {}
                }
            }
        }
    }

    /// The span of `needle` inside the source text of a node, when found.
    fn locate(&self, node: Span, needle: &str) -> Option<Span> {
        let (start, end) = (self.byte_of(node.start)?, self.byte_of(node.end).unwrap_or(self.text.len()));
        let hay = self.text.get(start..end.max(start))?;
        let at = hay.find(needle)? + start;
        let before = &self.text[..at];
        let line = before.matches('\n').count() as u32 + 1;
        let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) as u32 + 1;
        Some(Span::new(line, col, line, col + needle.chars().count() as u32))
    }

    /// Byte offset of a 1-based line/column (characters).
    fn byte_of(&self, pos: crate::diag::Pos) -> Option<usize> {
        let start = *self.line_starts.get((pos.line as usize).checked_sub(1)?)?;
        let end = self.line_starts.get(pos.line as usize).copied().unwrap_or(self.text.len());
        let line = &self.text[start..end];
        let col = line.char_indices().nth(pos.column.saturating_sub(1) as usize).map_or(line.len(), |(b, _)| b);
        Some(start + col)
    }

    /// Map a line/column inside a template string to the source.
    fn locate_line_col(&self, node: Span, template: &str, line: usize, col: usize) -> Span {
        let Some(l) = template.lines().nth(line.saturating_sub(1)) else { return node };
        let from = l.char_indices().nth(col.saturating_sub(1)).map_or(0, |(b, _)| b);
        // Back up to the `{{` that opened the broken expression.
        let from = l[..from.min(l.len())].rfind("{{").unwrap_or(from);
        let needle: String = l[from..].chars().take(24).collect();
        self.locate(node, &needle)
            .map(|s| Span::new(s.start.line, s.start.column, s.start.line, s.start.column + 2))
            .unwrap_or(node)
    }
}

fn ancestors(task: usize, parents_of: &[Vec<usize>]) -> HashSet<usize> {
    let mut seen = HashSet::new();
    let mut stack: Vec<usize> = parents_of[task].clone();
    while let Some(p) = stack.pop() {
        if seen.insert(p) {
            stack.extend(parents_of[p].iter().copied());
        }
    }
    seen
}

