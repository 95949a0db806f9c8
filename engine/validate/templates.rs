//! Templates (`template`, `unknown-helper`) and what they read
//! (`template-ref`, `output-field`): the variables there are, the outputs
//! of a task's ancestors only (any task's in the workflow's `output:`,
//! rendered once every task is final), the fields a handler returns, the
//! input properties a closed schema declares.

use super::context::Rules;
use super::graph::Reach;
use super::handlers::{NoField, missing_output_field};
use super::suggest::Pool;
use crate::diag::{Code, Diagnostic, Span, did_you_mean};
use crate::plan::helpers;
use crate::plan::template::{self, MAX_TEMPLATE_NESTING, ROOTS, nesting};
use crate::spec::node::{Node, NodeKind, pointer_seg};
use std::borrow::Cow;
use std::collections::HashMap;

/// Where a template string sits, which decides what it may read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Site {
    /// A workflow-level value (`env`, the rollout entity): no task outputs.
    Workflow,
    /// The workflow's `output:`, rendered once every task is final: any task.
    Output,
    /// A field of task `i`: the outputs of its ancestors.
    Task(usize),
}

impl Rules<'_> {
    pub(super) fn templates(&mut self, tasks: &[Node], ids: &HashMap<&str, usize>, reach: &mut Reach) {
        let input = self.root.get("input");
        let closed_input: Option<Vec<String>> =
            input.filter(|i| i.get("additionalProperties").is_some_and(|a| matches!(a.kind, NodeKind::Bool(false)))).map(|i| {
                i.get("properties").and_then(Node::as_map).map(|p| p.iter().map(|(k, _)| k.name.clone()).collect()).unwrap_or_default()
            });
        // References whose ancestry a short walk could not settle; answered
        // together at the end.
        let mut deferred: Vec<(usize, usize, String, String, Option<String>)> = Vec::new();
        // Workflow-level templates: env values and the rollout entity.
        let root = self.root;
        // The template strings: (pointer as a range of `pointers`, text,
        // shell script, where it sits).
        // Sized for about one template per task, to grow seldom.
        let mut pointers = String::with_capacity(tasks.len() * 24);
        let mut strings: Vec<(std::ops::Range<usize>, &str, bool, Site)> = Vec::with_capacity(tasks.len() + 4);
        let mut ptr = String::new();
        if let Some(env) = root.get("env").and_then(Node::as_map) {
            for (k, v) in env {
                let k = &k.name;
                if let Some(s) = v.as_str().filter(|s| template::is_template(s)) {
                    ptr.clear();
                    ptr.push_str("/env");
                    push_seg(&mut ptr, k);
                    pointers.push_str(&ptr);
                    strings.push((pointers.len() - ptr.len()..pointers.len(), s, false, Site::Workflow));
                }
            }
        }
        if let Some(s) = root.pointer("/backend/entity").and_then(Node::as_str).filter(|s| template::is_template(s)) {
            pointers.push_str("/backend/entity");
            strings.push((pointers.len() - "/backend/entity".len()..pointers.len(), s, false, Site::Workflow));
        }
        for (i, t) in tasks.iter().enumerate() {
            ptr.clear();
            if i < self.split.0 {
                ptr.push_str("/tasks");
                push_index(&mut ptr, i);
            } else {
                ptr.push_str(&self.task_ptr(i));
            }
            task_templates(t, &mut ptr, &mut |p, s, shell| {
                pointers.push_str(p);
                strings.push((pointers.len() - p.len()..pointers.len(), s, shell, Site::Task(i)));
            });
        }
        if let Some(output) = root.get("output").filter(|o| o.is_map()) {
            ptr.clear();
            ptr.push_str("/output");
            walk(&mut ptr, output, &mut |p, s, shell| {
                pointers.push_str(p);
                strings.push((pointers.len() - p.len()..pointers.len(), s, shell, Site::Output));
            });
        }
        for (range, s, shell, site) in strings {
            let ptr = &pointers[range];
            // Spans are looked up only for a finding: most templates have none.
            let node_cell = std::cell::OnceCell::new();
            let node_span = || *node_cell.get_or_init(|| root.span_at(ptr));
            // Most templates are plain `{{root.path}}` reads, which need no
            // parser; anything else goes through Handlebars.
            let (paths, unsafe_shell, calls) = match template::plain(s) {
                Some(p) => (p.reads.into_iter().map(Cow::Borrowed).collect::<Vec<_>>(), None, Vec::new()),
                // Handlebars builds nested blocks and subexpressions
                // recursively: refuse what could exhaust the stack.
                None if nesting(s) > MAX_TEMPLATE_NESTING => {
                    self.push(
                        Diagnostic::new(
                            Code::Template,
                            self.file,
                            node_span(),
                            format!("invalid template: blocks or subexpressions nested deeper than {MAX_TEMPLATE_NESTING} levels"),
                        )
                        .with_help("split the template, or compute the value in a task"),
                    );
                    continue;
                }
                None => match handlebars::Template::compile(s) {
                    Ok(tpl) => (
                        template::referenced_paths(&tpl).into_iter().map(Cow::Owned).collect(),
                        template::shell_unsafe(&tpl),
                        helpers::calls(&tpl),
                    ),
                    Err(e) => {
                        let (span, message) = match unclosed(s) {
                            // The parser's message for this common slip names a
                            // grammar rule; say it plainly, at the `{{`.
                            Some(at) => {
                                let needle: String = s[at..].chars().take(24).collect();
                                let span = self.locate(node_span(), &needle).map_or(node_span(), |sp| {
                                    Span::new(sp.start.line, sp.start.column, sp.start.line, sp.start.column + 2)
                                });
                                (span, "invalid template: `{{` is never closed with `}}`".to_string())
                            }
                            None => {
                                let (line, col) = e.pos().unwrap_or((1, 1));
                                (
                                    self.locate_line_col(node_span(), s, line, col),
                                    format!("invalid template: {}", clip(&e.reason().to_string(), 200)),
                                )
                            }
                        };
                        self.push(
                            Diagnostic::new(Code::Template, self.file, span, message)
                                .with_help("templates are Handlebars: `{{input.name}}`, `{{tasks.NAME.output}}`"),
                        );
                        continue;
                    }
                },
            };
            if shell && let Some(why) = unsafe_shell {
                let needle = if why.starts_with("raw") { "{{{" } else { "{{" };
                let span = self.locate(node_span(), needle).unwrap_or_else(node_span);
                self.push(Diagnostic::new(Code::Template, self.file, span, why).with_help(
                    "use `{{...}}`: each value then reaches the script as an environment variable, so it can never become shell syntax",
                ));
            }
            if shell {
                for (range, ctx) in crate::plan::shell::holes_in_source(s) {
                    let Some(why) = ctx.refusal() else { continue };
                    let span = self.locate(node_span(), &s[range]).unwrap_or_else(node_span);
                    self.push(Diagnostic::new(Code::Template, self.file, span, why).with_help(
                        "move the template out of the single quotes, e.g. 'text '\"{{input.x}}\"' more'; inside double quotes or unquoted, the value is passed as a variable and never parsed by the shell",
                    ));
                }
            }
            self.unknown_helpers(node_span, s, &calls);
            for raw in paths {
                if raw.starts_with('@') || raw == "this" || raw.starts_with("this.") || raw.starts_with("../") {
                    continue;
                }
                let segs: Vec<&str> = raw.split(['.', '/']).take(3).collect();
                let span = |me: &Self| me.locate(node_span(), &raw).unwrap_or_else(node_span);
                let root = segs[0];
                if !ROOTS.contains(&root) {
                    if root == "else" || helpers::is_helper(root) {
                        continue;
                    }
                    let mut d = Diagnostic::new(
                        Code::TemplateRef,
                        self.file,
                        span(self),
                        format!("template reads `{raw}`, but `{root}` is not a template variable"),
                    );
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
                            let help = match site {
                                Site::Output => "the output may read any task's `output` and `status`, by name",
                                _ => "templates may read only the outputs of a task's ancestors, by name",
                            };
                            self.push(
                                Diagnostic::new(Code::TemplateRef, self.file, span(self), "read one task's output: `tasks.NAME.output`")
                                    .with_help(help),
                            );
                            continue;
                        };
                        if site == Site::Workflow {
                            self.push(Diagnostic::new(
                                Code::TemplateRef,
                                self.file,
                                span(self),
                                format!("`{raw}`: task outputs are not available here, only in a task's own templates and the workflow's `output`"),
                            ));
                            continue;
                        }
                        match ids.get(target) {
                            None => {
                                let d = Diagnostic::new(
                                    Code::TemplateRef,
                                    self.file,
                                    span(self),
                                    format!("template reads `{raw}`, but there is no task `{target}`"),
                                );
                                self.push_suggesting(d, target, Pool::Tasks { except: None });
                            }
                            Some(&tid) => {
                                let field = segs.get(2).copied();
                                match site {
                                    // Rendered once every task is final: any
                                    // task reads as an ancestor would.
                                    Site::Output => self.task_ref(true, &span, &raw, tasks, tid, tid, field),
                                    Site::Task(task) => {
                                        // Handlers read any task of the lists before theirs.
                                        let earlier = self.phase_of(tid) < self.phase_of(task);
                                        match if earlier { Some(true) } else { reach.quick(tid, task) } {
                                            Some(ancestor) => self.task_ref(ancestor, &span, &raw, tasks, tid, task, field),
                                            None => deferred.push((tid, task, ptr.to_string(), raw.to_string(), field.map(str::to_string))),
                                        }
                                    }
                                    Site::Workflow => {}
                                }
                            }
                        }
                    }
                    "secrets" => {
                        let doc = self.root;
                        let declared = doc.get("secrets").and_then(Node::as_map);
                        let names: Vec<&str> = declared.map(|m| m.iter().map(|(k, _)| k.name.as_str()).collect()).unwrap_or_default();
                        let persisted = match site {
                            Site::Output => Some("the workflow's `output:` is recorded with the run"),
                            Site::Workflow => Some("workflow-level values are rendered where no secret is resolved"),
                            Site::Task(i) if ptr.contains("/with") && tasks[i].get("uses").and_then(Node::as_str) == Some("echo") => {
                                Some("an `echo` task's `with:` is its output, recorded with the run")
                            }
                            Site::Task(i) if ptr.contains("/celery") && tasks[i].get("celery").is_some() => {
                                Some("a `celery:` task's arguments travel in a broker message")
                            }
                            Site::Task(_) => None,
                        };
                        match segs.get(1) {
                            Some(name) if !names.contains(name) => {
                                let d = Diagnostic::new(
                                    Code::TemplateRef,
                                    self.file,
                                    span(self),
                                    format!("template reads `{raw}`, but the workflow declares no secret `{name}`"),
                                );
                                self.push(match did_you_mean(name, names.iter().copied()) {
                                    Some(s) => d.with_help(format!(
                                        "did you mean `{s}`? Declare secrets under `secrets:` (`NAME: {{env: VAR}}` or `{{file: PATH}}`)"
                                    )),
                                    None => d.with_help("declare it under `secrets:` (`NAME: {env: VAR}` or `{file: PATH}`)"),
                                });
                            }
                            None => self.push(Diagnostic::new(Code::TemplateRef, self.file, span(self), "read one secret: `secrets.NAME`")),
                            Some(_) => {
                                if let Some(why) = persisted {
                                    self.push(
                                        Diagnostic::new(Code::TemplateRef, self.file, span(self), format!("`{raw}` would be recorded: {why}"))
                                            .with_help("use secrets in `run`, `shell`, `http` and handler arguments, where they are masked in what the task returns"),
                                    );
                                }
                            }
                        }
                    }
                    "input" => {
                        if let (Some(prop), Some(props)) = (segs.get(1), &closed_input)
                            && !props.iter().any(|p| p == prop)
                        {
                            let d = Diagnostic::new(
                                Code::TemplateRef,
                                self.file,
                                span(self),
                                format!("template reads `{raw}`, but the input schema declares no property `{prop}` and forbids others"),
                            );
                            self.push_suggesting(d, prop, Pool::InputProps);
                        }
                    }
                    "run" | "workflow" => {
                        let handler = matches!(site, Site::Task(t) if self.phase_of(t) != crate::plan::Phase::Main);
                        // The output is rendered once per run, not per attempt.
                        let allowed: &[&str] = match (root, site) {
                            ("run", Site::Output) => &["id"],
                            ("run", _) if handler => &["id", "attempt", "status", "failed_tasks"],
                            ("run", _) => &["id", "attempt"],
                            _ => &["name", "version"],
                        };
                        if let Some(f) = segs.get(1).filter(|f| !allowed.contains(f)) {
                            let mut d = Diagnostic::new(
                                Code::TemplateRef,
                                self.file,
                                span(self),
                                format!(
                                    "`{raw}`: `{root}` has only {}",
                                    allowed.iter().map(|a| format!("`{a}`")).collect::<Vec<_>>().join(" and ")
                                ),
                            );
                            if root == "run" && matches!(*f, "status" | "failed_tasks") {
                                d = d.with_help("`run.status` and `run.failed_tasks` are read by `on_failure` and `finally` tasks, which run after every task is final");
                            }
                            self.push(d);
                        }
                    }
                    _ => {}
                }
            }
        }
        let queries: Vec<(usize, usize)> = deferred.iter().map(|(x, t, ..)| (*x, *t)).collect();
        let answers = reach.batch(&queries);
        for ((tid, task, ptr, raw, field), ancestor) in deferred.into_iter().zip(answers) {
            let span = |me: &Self| {
                let node = me.root.span_at(&ptr);
                me.locate(node, &raw).unwrap_or(node)
            };
            self.task_ref(ancestor, &span, &raw, tasks, tid, task, field.as_deref());
        }
    }

    /// An `unknown-helper` error for each call of a helper that does not
    /// exist, at the helper's name (the place of each call is found in the
    /// template's text, in order).
    fn unknown_helpers(&mut self, node_span: impl Fn() -> Span, s: &str, calls: &[String]) {
        let mut from = 0;
        for name in calls.iter().filter(|n| !helpers::is_helper(n)) {
            let site = helpers::call_site(s, name, from);
            let span = match site {
                Some(site) => {
                    from = site.end;
                    self.locate_range(node_span(), s, site)
                }
                None => None,
            }
            .unwrap_or_else(&node_span);
            let d = Diagnostic::new(Code::UnknownHelper, self.file, span, format!("template calls `{name}`, which is not a helper"));
            let list = "`taskweave explain unknown-helper` lists them";
            self.push(match did_you_mean(name, helpers::HELPERS.iter().map(|h| h.name)) {
                Some(h) => d.with_help(format!("did you mean `{h}`? {list}")),
                None => d.with_help(format!(
                    "the helpers are {}; {list}",
                    helpers::HELPERS.iter().map(|h| format!("`{}`", h.name)).collect::<Vec<_>>().join(", ")
                )),
            });
        }
    }

    /// The span of a byte range of a template's text in the source: found
    /// with the text from the `{{` or `(` before it, so a word that also
    /// occurs in plain text earlier is not taken for it.
    fn locate_range(&self, node: Span, template: &str, range: std::ops::Range<usize>) -> Option<Span> {
        let before = &template[..range.start];
        let open = before.rfind("{{").into_iter().chain(before.rfind('(')).max().unwrap_or(range.start);
        let lead = &template[open..range.start];
        let word = &template[range.clone()];
        let width = word.chars().count() as u32;
        if lead.contains(['\n', '"', '\'', '\\']) {
            let at = self.locate(node, word)?;
            return Some(Span::new(at.start.line, at.start.column, at.start.line, at.start.column + width));
        }
        let at = self.locate(node, &template[open..range.end])?;
        let column = at.start.column + lead.chars().count() as u32;
        Some(Span::new(at.start.line, column, at.start.line, column + width))
    }

    /// The verdict on a template of `task` reading `tasks.<target>...`.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn task_ref(
        &mut self,
        ancestor: bool,
        span: &dyn Fn(&Self) -> Span,
        raw: &str,
        tasks: &[Node],
        target: usize,
        task: usize,
        field: Option<&str>,
    ) {
        let name = |i: usize| tasks[i].get("name").and_then(Node::as_str).unwrap_or("?");
        let target_id = target;
        let (me, target) = (name(task), name(target));
        if !ancestor {
            self.push(
                Diagnostic::new(
                    Code::TemplateRef,
                    self.file,
                    span(self),
                    format!("task `{me}` reads `{raw}`, but `{target}` is not an ancestor of `{me}`"),
                )
                .with_help(format!("add `{target}` to the parents of `{me}`, so its output exists when `{me}` starts")),
            );
        } else if field.is_some_and(|f| f != "output" && f != "status") {
            self.push(Diagnostic::new(
                Code::TemplateRef,
                self.file,
                span(self),
                format!("`{raw}`: a task exposes only `output` and `status` (`tasks.{target}.output`)"),
            ));
        } else if field == Some("output")
            && let Some(catalog) = self.handlers
            && let Some(handler) = tasks[target_id].get("uses").and_then(Node::as_str)
            && let Some(schema) = catalog.output_schema(handler)
        {
            let path: Vec<&str> = raw.split(['.', '/']).skip(3).collect();
            let d = match missing_output_field(schema, &path) {
                None => return,
                Some(NoField::Scalar { depth, kind }) => {
                    let at = std::iter::once("output").chain(path[..depth].iter().copied()).collect::<Vec<_>>().join(".");
                    Diagnostic::new(
                        Code::OutputField,
                        self.file,
                        span(self),
                        format!("template reads `{raw}`, but `{at}` of task `{target}` (handler `{handler}`) is {kind}"),
                    )
                }
                Some(NoField::Closed { depth, fields }) => {
                    let at = std::iter::once("output").chain(path[..depth].iter().copied()).collect::<Vec<_>>().join(".");
                    let seg = path[depth];
                    let has = if fields.is_empty() {
                        format!("`{at}` has no fields")
                    } else {
                        format!("`{at}` has only {}", fields.iter().map(|f| format!("`{f}`")).collect::<Vec<_>>().join(", "))
                    };
                    let d = Diagnostic::new(
                        Code::OutputField,
                        self.file,
                        span(self),
                        format!("template reads `{raw}`, but handler `{handler}` returns no `{seg}` in `{at}` of task `{target}`"),
                    );
                    match did_you_mean(seg, fields.iter().copied()) {
                        Some(s) => d.with_help(format!("did you mean `{s}`? {has}")),
                        None => d.with_help(has),
                    }
                }
            };
            self.push(d);
        }
    }

    /// Map a line/column inside a template string to the source.
    fn locate_line_col(&self, node: Span, template: &str, line: usize, col: usize) -> Span {
        let Some(l) = template.lines().nth(line.saturating_sub(1)) else { return node };
        let from = l.char_indices().nth(col.saturating_sub(1)).map_or(0, |(b, _)| b);
        // Back up to the `{{` that opened the broken expression.
        let from = l[..from.min(l.len())].rfind("{{").unwrap_or(from);
        let needle: String = l[from..].chars().take(24).collect();
        self.locate(node, &needle).map(|s| Span::new(s.start.line, s.start.column, s.start.line, s.start.column + 2)).unwrap_or(node)
    }
}

/// Every template string of a task (those containing `{{`), with its JSON
/// pointer and whether it is a shell script: the strings that `plan::compile`
/// compiles in a typed task, read from the untyped value so that a task with
/// a schema error elsewhere is still checked.
///
/// `ptr` holds the task's pointer (`/tasks/3`) and is extended in place for
/// each string (and restored), so listing the strings allocates nothing.
fn task_templates<'v>(task: &'v Node, ptr: &mut String, out: &mut impl FnMut(&str, &'v str, bool)) {
    /// A string, or the strings directly inside a list or a mapping.
    fn strings<'v>(ptr: &mut String, v: Option<&'v Node>, out: &mut impl FnMut(&str, &'v str, bool)) {
        match v.map(|v| &v.kind) {
            Some(NodeKind::Str(s)) if template::is_template(s) => out(ptr, s, false),
            Some(NodeKind::Seq(a)) => {
                for (i, x) in a.iter().enumerate() {
                    if let Some(s) = x.as_str().filter(|s| template::is_template(s)) {
                        let len = ptr.len();
                        push_index(ptr, i);
                        out(ptr, s, false);
                        ptr.truncate(len);
                    }
                }
            }
            Some(NodeKind::Map(m)) => {
                for (k, x) in m {
                    if let Some(s) = x.as_str().filter(|s| template::is_template(s)) {
                        let len = ptr.len();
                        push_seg(ptr, &k.name);
                        out(ptr, s, false);
                        ptr.truncate(len);
                    }
                }
            }
            _ => {}
        }
    }
    /// Run `f` with `suffix` appended to the pointer.
    fn at<'v, O: FnMut(&str, &'v str, bool)>(ptr: &mut String, suffix: &str, out: &mut O, f: impl FnOnce(&mut String, &mut O)) {
        let len = ptr.len();
        ptr.push_str(suffix);
        f(ptr, out);
        ptr.truncate(len);
    }
    let Some(entries) = task.as_map() else { return };
    // The fields that hold templates, found in one pass over the task.
    let mut fields: [Option<&'v Node>; 7] = [None; 7];
    for (k, v) in entries {
        let slot = match k.name.as_str() {
            "run" => 0,
            "shell" => 1,
            "env" => 2,
            "cwd" => 3,
            "http" => 4,
            "celery" => 5,
            "with" => 6,
            _ => continue,
        };
        fields[slot].get_or_insert(v);
    }
    let [run, shell, env, cwd, http, celery, with] = fields;
    if let Some(run) = run.filter(|v| v.is_seq()) {
        at(ptr, "/run", out, |p, o| strings(p, Some(run), o));
    }
    if let Some(s) = shell.and_then(Node::as_str).filter(|s| template::is_template(s)) {
        at(ptr, "/shell", out, |p, o| o(p, s, true));
    }
    if let Some(env) = env.filter(|v| v.is_map()) {
        at(ptr, "/env", out, |p, o| strings(p, Some(env), o));
    }
    if let Some(cwd) = cwd.filter(|v| v.is_str()) {
        at(ptr, "/cwd", out, |p, o| strings(p, Some(cwd), o));
    }
    if let Some(h) = http.filter(|h| h.is_map()) {
        at(ptr, "/http", out, |ptr, out| {
            if let Some(v) = h.get("url").filter(|v| v.is_str()) {
                at(ptr, "/url", out, |p, o| strings(p, Some(v), o));
            }
            if let Some(v) = h.get("headers").filter(|v| v.is_map()) {
                at(ptr, "/headers", out, |p, o| strings(p, Some(v), o));
            }
            if let Some(v) = h.get("query").filter(|v| v.is_map()) {
                at(ptr, "/query", out, |p, o| strings(p, Some(v), o));
            }
            if let Some(j) = h.get("json") {
                at(ptr, "/json", out, |p, o| walk(p, j, o));
            }
            if let Some(v) = h.get("body").filter(|v| v.is_str()) {
                at(ptr, "/body", out, |p, o| strings(p, Some(v), o));
            }
        });
    }
    if let Some(c) = celery.filter(|c| c.is_map()) {
        if let Some(a) = c.get("args").filter(|v| v.is_seq()) {
            at(ptr, "/celery/args", out, |p, o| walk(p, a, o));
        }
        if let Some(k) = c.get("kwargs").filter(|v| v.is_map()) {
            at(ptr, "/celery/kwargs", out, |p, o| walk(p, k, o));
        }
    }
    if let Some(w) = with {
        at(ptr, "/with", out, |p, o| walk(p, w, o));
    }
}

/// Every template string inside a value (a `with:`, an HTTP `json`, the
/// workflow's `output`), at any depth, with its JSON pointer: `ptr` holds
/// the value's pointer and is extended in place for each string (and
/// restored).
fn walk<'v>(ptr: &mut String, v: &'v Node, out: &mut impl FnMut(&str, &'v str, bool)) {
    match &v.kind {
        NodeKind::Str(s) if template::is_template(s) => out(ptr, s, false),
        NodeKind::Seq(a) => {
            for (i, x) in a.iter().enumerate() {
                let len = ptr.len();
                push_index(ptr, i);
                walk(ptr, x, out);
                ptr.truncate(len);
            }
        }
        NodeKind::Map(m) => {
            for (k, x) in m {
                let len = ptr.len();
                push_seg(ptr, &k.name);
                walk(ptr, x, out);
                ptr.truncate(len);
            }
        }
        _ => {}
    }
}

/// Append `/i` to a JSON pointer.
fn push_index(ptr: &mut String, i: usize) {
    use std::fmt::Write as _;
    let _ = write!(ptr, "/{i}");
}

/// Append `/seg` to a JSON pointer, escaped.
fn push_seg(ptr: &mut String, seg: &str) {
    ptr.push('/');
    if seg.contains(['~', '/']) {
        ptr.push_str(&pointer_seg(seg));
    } else {
        ptr.push_str(seg);
    }
}

/// At most `max` characters of a message part, marked when cut.
fn clip(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((at, _)) => format!("{}…", &s[..at]),
        None => s.to_string(),
    }
}

/// The byte offset of the first `{{` with no `}}` after it.
fn unclosed(s: &str) -> Option<usize> {
    let mut from = 0;
    while let Some(open) = s[from..].find("{{").map(|i| i + from) {
        match s[open + 2..].find("}}") {
            Some(close) => from = open + 2 + close + 2,
            None => return Some(open),
        }
    }
    None
}
