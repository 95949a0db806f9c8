//! The semantic rules of the spec language, beyond the schema: unique task
//! names, parents that resolve, no cycles, one action per task, durations,
//! templates and what they may read, timeouts, backends.
//!
//! The rules read the untyped document so they still report everything when
//! another part of the file breaks the schema.

use super::handlers::{HandlerCatalog, NoField, check_with, missing_output_field};
use crate::diag::{Code, Diagnostic, Span, did_you_mean};
use crate::plan::helpers;
use crate::plan::parse_duration;
use crate::plan::template::{self, MAX_TEMPLATE_NESTING, ROOTS, nesting};
use crate::spec::node::{Node, NodeKind, pointer_seg};
use petgraph::graph::{DiGraph, NodeIndex};
use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

pub const ACTIONS: [&str; 5] = ["run", "shell", "http", "celery", "uses"];

pub struct Rules<'a> {
    pub file: &'a str,
    pub text: &'a str,
    /// The document's tree.
    pub root: &'a Node,
    pub backends: Option<&'a [String]>,
    /// The handlers `uses:` may name, with their schemas, when known.
    pub handlers: Option<&'a HandlerCatalog>,
    /// The kind of each configured backend and the default backend, when a
    /// configuration is known.
    pub kinds: Option<(&'a BTreeMap<String, String>, &'a str)>,
    /// The flags of the configured features file (its name, and its flags),
    /// when one loaded.
    pub flags: Option<&'a super::FlagKeys>,
    pub out: &'a mut Vec<Diagnostic>,
    /// Byte offset of each line start, for mapping spans back to text;
    /// found on first use (only findings need it).
    pub line_starts: std::cell::OnceCell<Vec<usize>>,
    pub budget: Budget,
    pub pending: Pending,
    pub cursor: std::cell::Cell<Option<Cursor>>,
}

/// Bounds the lookups whose cost grows with the file: searching a
/// template's text again from its start for the exact place of a reference
/// that comes before the last one found (see [`Cursor`]). Without a bound,
/// a template node with thousands of references out of order costs time
/// quadratic in its size. Only a file's first findings are shown (see
/// [`crate::diag::cap`]), and the rules find them in file order, so the
/// first ones get exact places; later ones sit on their template's node.
pub struct Budget {
    locates: std::cell::Cell<usize>,
}

impl Budget {
    /// A budget for a file that shows `max_diagnostics` findings (`0`: all, no bound).
    pub fn new(max_diagnostics: usize) -> Self {
        let n = if max_diagnostics == 0 { usize::MAX } else { max_diagnostics.saturating_mul(4) };
        Budget { locates: n.into() }
    }

    fn take(c: &std::cell::Cell<usize>) -> bool {
        let left = c.get();
        c.set(left.saturating_sub(1));
        left > 0
    }
}

/// Where [`Rules::locate`] last found a reference in a node, so that the
/// next search in the same node goes on from there: the references of a
/// template are looked up in the order they appear, so a node's text is
/// read once, not once per finding (a single-line template with 20,000
/// references would otherwise cost time quadratic in its length).
#[derive(Debug, Clone, Copy)]
pub struct Cursor {
    node: Span,
    /// The node's text, as a byte range.
    start: usize,
    end: usize,
    /// The last place found, and its line and column.
    at: usize,
    line: u32,
    column: u32,
}

/// "Did you mean" help left for later, by the diagnostic it belongs to
/// (code, span, message: unique once repeats are dropped). A suggestion
/// compares a name with every task name, so computing one per finding is
/// quadratic in a file of 50,000 unknown parents; [`suggest`] computes
/// them for the diagnostics that are shown only.
pub type Pending = HashMap<(Code, Span, String), (String, Pool)>;

/// Where the candidates of a pending suggestion come from.
pub enum Pool {
    /// The task names, but this one.
    Tasks { except: Option<String> },
    /// The properties of a closed input schema.
    InputProps,
}

/// How many name comparisons the suggestions of one file may cost: all
/// the shown findings of a file of a thousand tasks get one, the first
/// twenty of a file of 50,000.
const MAX_SUGGEST_COMPARISONS: usize = 1_000_000;

/// Add the pending "did you mean" help of the diagnostics that were kept
/// (in file order, within [`MAX_SUGGEST_COMPARISONS`]).
pub fn suggest(root: &Node, diags: &mut [Diagnostic], mut pending: Pending) {
    if pending.is_empty() {
        return;
    }
    let tasks = root.get("tasks").and_then(Node::as_seq).unwrap_or_default();
    let names: Vec<&str> = {
        let mut seen = HashSet::new();
        tasks.iter().filter_map(|t| t.get("name").and_then(Node::as_str)).filter(|n| seen.insert(*n)).collect()
    };
    let props: Vec<&str> = root
        .get("input")
        .and_then(|i| i.get("properties"))
        .and_then(Node::as_map)
        .map(|p| p.iter().map(|(k, _)| k.name.as_str()).collect())
        .unwrap_or_default();
    let mut comparisons = MAX_SUGGEST_COMPARISONS;
    for d in diags.iter_mut().filter(|d| d.help.is_none()) {
        let Some((name, pool)) = pending.remove(&(d.code, d.span, d.message.clone())) else { continue };
        let size = match &pool {
            Pool::Tasks { .. } => names.len(),
            Pool::InputProps => props.len(),
        };
        let Some(left) = comparisons.checked_sub(size) else { break };
        comparisons = left;
        let found = match &pool {
            Pool::Tasks { except } => did_you_mean(&name, names.iter().copied().filter(|n| Some(*n) != except.as_deref())),
            Pool::InputProps => did_you_mean(&name, props.iter().copied()),
        };
        if let Some(s) = found {
            d.help = Some(format!("did you mean `{s}`?"));
        }
    }
}

/// Byte offsets of the line starts of a text.
pub fn line_starts(text: &str) -> Vec<usize> {
    let mut v = vec![0];
    v.extend(text.match_indices('\n').map(|(i, _)| i + 1));
    v
}

impl Rules<'_> {
    fn line_starts(&self) -> &[usize] {
        self.line_starts.get_or_init(|| line_starts(self.text))
    }

    fn push(&mut self, d: Diagnostic) {
        self.out.push(d);
    }

    /// Push a diagnostic whose "did you mean" help is computed only if it is shown.
    fn push_suggesting(&mut self, d: Diagnostic, name: &str, pool: Pool) {
        self.pending.insert((d.code, d.span, d.message.clone()), (name.to_string(), pool));
        self.push(d);
    }

    fn duration(&mut self, pointer: &str) -> Option<Duration> {
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
            _ => self.parse_duration_at(s, &format!("/tasks/{i}/{}", path.join("/"))),
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

    /// Check the document; the help left for later comes back (see [`suggest`]).
    pub fn check(mut self) -> Pending {
        self.check_all();
        self.pending
    }

    fn check_all(&mut self) {
        let v = self.root;
        let wf_timeout = self.duration("/timeout");
        let default_timeout = self.duration("/defaults/timeout");
        self.duration("/defaults/retry/delay");
        self.duration("/defaults/retry/max_delay");
        self.backend();
        self.flag();

        let Some(tasks) = v.get("tasks").and_then(Node::as_seq) else { return };
        // Names.
        let mut ids: HashMap<&str, usize> = HashMap::with_capacity(tasks.len());
        for (i, t) in tasks.iter().enumerate() {
            let Some(name) = t.get("name").and_then(Node::as_str) else { continue };
            if let Some(&first) = ids.get(name) {
                let fs = self.root.span_at(&format!("/tasks/{first}/name"));
                self.push(
                    Diagnostic::new(
                        Code::DuplicateTask,
                        self.file,
                        self.root.span_at(&format!("/tasks/{i}/name")),
                        format!("duplicate task name `{name}`"),
                    )
                    .with_help(format!("`{name}` is first defined at line {}, column {}", fs.start.line, fs.start.column)),
                );
            } else {
                ids.insert(name, i);
            }
        }
        // Parents, actions, durations.
        let mut graph: DiGraph<usize, ()> = DiGraph::with_capacity(tasks.len(), tasks.len());
        for i in 0..tasks.len() {
            graph.add_node(i);
        }
        let mut parents_of: Vec<Vec<usize>> = vec![Vec::new(); tasks.len()];
        // The `celery:` tasks, for `backend-action`.
        let mut celery_tasks = Vec::new();
        for (i, t) in tasks.iter().enumerate() {
            let name = t.get("name").and_then(Node::as_str).unwrap_or("");
            if let Some(ps) = t.get("parents").and_then(Node::as_seq) {
                for (j, p) in ps.iter().enumerate() {
                    let Some(p) = p.as_str() else { continue };
                    let ptr = format!("/tasks/{i}/parents/{j}");
                    if p == name {
                        self.push(Diagnostic::new(
                            Code::SelfParent,
                            self.file,
                            self.root.span_at(&ptr),
                            format!("task `{name}` lists itself as a parent"),
                        ));
                    } else if let Some(&pid) = ids.get(p) {
                        if !parents_of[i].contains(&pid) {
                            parents_of[i].push(pid);
                            graph.add_edge(NodeIndex::new(pid), NodeIndex::new(i), ());
                        }
                    } else {
                        let d = Diagnostic::new(
                            Code::UnknownParent,
                            self.file,
                            self.root.span_at(&ptr),
                            format!("unknown parent `{p}` of task `{name}`"),
                        );
                        self.push_suggesting(d, p, Pool::Tasks { except: Some(name.to_string()) });
                    }
                }
            }
            if let Some(obj) = Some(t).filter(|t| t.is_map()) {
                let present: Vec<&str> = ACTIONS.iter().copied().filter(|a| obj.contains_key(a)).collect();
                if present.is_empty() {
                    let d = Diagnostic::new(
                        Code::Action,
                        self.file,
                        self.root.span_at(&format!("/tasks/{i}/name")),
                        format!("task `{name}` has no action"),
                    );
                    let d = if obj.contains_key("with") {
                        d.with_help("`with` gives arguments to a handler: add `uses: NAME`")
                    } else {
                        d.with_help("add one of `run`, `shell`, `http`, `celery` or `uses`")
                    };
                    self.push(d);
                } else if present.len() > 1 {
                    let first = self.root.key_span_at(&format!("/tasks/{i}/{}", present[0]));
                    for extra in &present[1..] {
                        self.push(
                            Diagnostic::new(
                                Code::Action,
                                self.file,
                                self.root.key_span_at(&format!("/tasks/{i}/{extra}")),
                                format!("task `{name}` has more than one action (`{}` and `{extra}`)", present[0]),
                            )
                            .with_help(format!(
                                "a task has exactly one action; `{}` is at line {}; split this into two tasks",
                                present[0], first.start.line
                            )),
                        );
                    }
                }
                if obj.contains_key("with") && !obj.contains_key("uses") && !present.is_empty() {
                    self.push(Diagnostic::new(
                        Code::Schema,
                        self.file,
                        self.root.key_span_at(&format!("/tasks/{i}/with")),
                        format!("`with` only applies to `uses` tasks, and task `{name}` is a `{}` task", present[0]),
                    ));
                }
            }
            if let Some(u) = t.get("uses").and_then(Node::as_str) {
                self.uses(i, t, name, u);
            }
            if let Some(url) = t.get("http").and_then(|h| h.get("url")).and_then(Node::as_str) {
                self.url(i, url);
            }
            if t.get("celery").is_some_and(Node::is_map) {
                celery_tasks.push(i);
            }
            let task_timeout = self.task_duration(t, i, &["timeout"]);
            self.task_duration(t, i, &["retry", "delay"]);
            self.task_duration(t, i, &["retry", "max_delay"]);
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
        self.backend_action(tasks, &celery_tasks);
        let position = topological_positions(&parents_of);
        if position.1.len() < tasks.len() {
            self.cycles(&graph, tasks);
        }
        self.templates(tasks, &ids, &parents_of, position);
    }

    fn backend(&mut self) {
        let Some(backends) = self.backends else { return };
        let Some(b) = self.root.get("backend") else { return };
        let mut named: Vec<(String, &str)> = Vec::new();
        match b {
            Node { kind: NodeKind::Str(s), .. } => named.push(("/backend".into(), s)),
            m @ Node { kind: NodeKind::Map(_), .. } => {
                for k in ["enabled", "disabled", "default"] {
                    if let Some(s) = m.get(k).and_then(Node::as_str) {
                        named.push((format!("/backend/{k}"), s));
                    }
                }
                if let Some(vs) = m.get("variants").and_then(Node::as_map) {
                    for (k, v) in vs {
                        let k = &k.name;
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
                let mut d = Diagnostic::new(Code::UnknownBackend, self.file, self.root.span_at(&ptr), format!("unknown backend `{name}`"));
                d = match did_you_mean(name, backends.iter().map(String::as_str)) {
                    Some(s) => d.with_help(format!("did you mean `{s}`?")),
                    None => d.with_help(format!("configured backends: {}", backends.join(", "))),
                };
                self.push(d);
            }
        }
    }

    /// `unknown-flag`: a rollout rule's flag that the configured features
    /// file does not define.
    fn flag(&mut self) {
        let Some(flags) = self.flags else { return };
        let Some(key) = self.root.pointer("/backend/flag").and_then(Node::as_str) else { return };
        if flags.keys.iter().any(|k| k == key) {
            return;
        }
        let mut d = Diagnostic::new(
            Code::UnknownFlag,
            self.file,
            self.root.span_at("/backend/flag"),
            format!(
                "flag `{key}` is not defined in {} (namespace `{}`), so every run goes to the rule's default backend",
                flags.source, flags.namespace
            ),
        );
        let keys = flags.keys.iter().map(String::as_str);
        d = match did_you_mean(key, keys.clone()) {
            Some(s) => d.with_help(format!("did you mean `{s}`?")),
            None if flags.keys.is_empty() => d.with_help("the file defines no flags"),
            None => d.with_help(format!("defined flags: {}", keys.collect::<Vec<_>>().join(", "))),
        };
        self.push(d);
    }

    /// `unknown-handler` and `handler-args` of a `uses:` task.
    fn uses(&mut self, i: usize, task: &Node, name: &str, handler: &str) {
        let Some(catalog) = self.handlers else { return };
        if catalog.contains(handler) {
            check_with(self.file, self.root, catalog, handler, i, task, self.out);
            return;
        }
        let mut d = Diagnostic::new(
            Code::UnknownHandler,
            self.file,
            self.root.span_at(&format!("/tasks/{i}/uses")),
            format!("task `{name}` uses handler `{handler}`, which does not exist"),
        );
        d = match did_you_mean(handler, catalog.names()) {
            Some(s) => d.with_help(format!("did you mean `{s}`?")),
            None => d.with_help(format!(
                "the handlers are {}; a program that embeds the engine registers its own (list them in `[validate] handlers` of taskweave.toml for `taskweave validate`)",
                catalog.names().map(|n| format!("`{n}`")).collect::<Vec<_>>().join(", ")
            )),
        };
        self.push(d);
    }

    /// `url`: a literal `http.url` that cannot be sent.
    fn url(&mut self, i: usize, url: &str) {
        if template::is_template(url) {
            return;
        }
        let shown = crate::diag::display_url(url);
        let (message, help) = match url::Url::parse(url) {
            // `localhost:8080` parses, with `localhost` as its scheme.
            Ok(u) if !matches!(u.scheme(), "http" | "https") && !url.contains("://") => {
                (format!("`{shown}` is not an HTTP URL: its scheme is `{}`", u.scheme()), format!("write the whole URL: `https://{shown}`"))
            }
            Ok(u) if !matches!(u.scheme(), "http" | "https") => (
                format!("`{shown}` is not an HTTP URL: its scheme is `{}`", u.scheme()),
                "an `http:` task sends HTTP requests: the URL starts with `http://` or `https://`".to_string(),
            ),
            // A parsed `http(s)` URL always has a host.
            Ok(_) => return,
            Err(url::ParseError::RelativeUrlWithoutBase) => (
                format!("`{shown}` is not a URL: it has no scheme"),
                format!("write the whole URL: `https://{}`", shown.trim_start_matches('/')),
            ),
            Err(e) => (format!("`{shown}` is not a valid URL: {e}"), "write the whole URL, e.g. `https://example.com/path`".to_string()),
        };
        self.push(Diagnostic::new(Code::Url, self.file, self.root.span_at(&format!("/tasks/{i}/http/url")), message).with_help(help));
    }

    /// `backend-action`: `celery:` tasks in a workflow that may run on a
    /// backend of another kind.
    fn backend_action(&mut self, tasks: &[Node], celery_tasks: &[usize]) {
        let Some((kinds, default)) = self.kinds else { return };
        if celery_tasks.is_empty() {
            return;
        }
        // The backends a run may land on, and how the workflow names them.
        let backend = self.root.get("backend");
        let (candidates, how): (Vec<&str>, &str) = match backend.map(|b| (b, &b.kind)) {
            None | Some((_, NodeKind::Null)) => (vec![default], "runs on the default backend"),
            Some((_, NodeKind::Str(b))) => (vec![b.as_str()], "runs on backend"),
            Some((rule, NodeKind::Map(_))) => {
                let mut c: Vec<&str> = ["enabled", "disabled"].iter().filter_map(|k| rule.get(k).and_then(Node::as_str)).collect();
                if let Some(vs) = rule.get("variants").and_then(Node::as_map) {
                    c.extend(vs.iter().filter_map(|(_, v)| v.as_str()));
                }
                // When the flag does not decide, the rule's default, else the configured one.
                c.push(rule.get("default").and_then(Node::as_str).unwrap_or(default));
                (c, "may run on backend")
            }
            Some(_) => return,
        };
        let mut bad: Vec<(&str, &str)> = Vec::new();
        for b in candidates {
            if let Some(k) = kinds.get(b).filter(|k| *k != "celery")
                && !bad.iter().any(|(n, _)| *n == b)
            {
                bad.push((b, k));
            }
        }
        if bad.is_empty() {
            return;
        }
        let on = bad.iter().map(|(n, k)| format!("`{n}` (kind `{k}`)")).collect::<Vec<_>>().join(" and ");
        let celery: Vec<&str> = kinds.iter().filter(|(_, k)| *k == "celery").map(|(n, _)| n.as_str()).collect();
        let help = match celery.first() {
            Some(c) => format!("only a backend of kind `celery` runs `celery:` tasks: set `backend: {c}`, or move the task to a workflow that runs there"),
            None => "only a backend of kind `celery` runs `celery:` tasks: configure one in taskweave.toml (`[backends.NAME] kind = \"celery\"`) and set `backend:` to it".to_string(),
        };
        for &i in celery_tasks {
            let name = tasks[i].get("name").and_then(Node::as_str).unwrap_or("?");
            self.push(
                Diagnostic::new(
                    Code::BackendAction,
                    self.file,
                    self.root.key_span_at(&format!("/tasks/{i}/celery")),
                    format!("task `{name}` is a `celery:` task, but the workflow {how} {on}, which cannot run it"),
                )
                .with_help(help.clone()),
            );
        }
    }

    /// One `cycle` diagnostic per strongly connected component: the
    /// shortest cycle through its first task (in file order), listed in
    /// execution order from that task, reported at the parent link that
    /// closes it (in the first task's `parents`).
    fn cycles(&mut self, graph: &DiGraph<usize, ()>, tasks: &[Node]) {
        let name = |i: usize| tasks[i].get("name").and_then(Node::as_str).unwrap_or("?").to_string();
        // Kosaraju's, not Tarjan's: petgraph's Tarjan recurses once per task
        // of a chain, and a long chain would overflow the stack.
        let mut sccs = petgraph::algo::kosaraju_scc(graph);
        sccs.retain(|c| c.len() > 1);
        sccs.sort_by_key(|c| c.iter().map(|n| n.index()).min());
        for scc in sccs {
            let members: HashSet<usize> = scc.iter().map(|n| n.index()).collect();
            let Some(&start) = members.iter().min() else { continue };
            // Breadth-first along parent -> child edges, inside the component,
            // until an edge leads back to `start`.
            let mut came_from: HashMap<usize, usize> = HashMap::new();
            let mut queue = std::collections::VecDeque::from([start]);
            let mut last = None;
            'search: while let Some(cur) = queue.pop_front() {
                for child in graph.neighbors_directed(NodeIndex::new(cur), petgraph::Direction::Outgoing) {
                    let child = child.index();
                    if child == start {
                        last = Some(cur);
                        break 'search;
                    }
                    if members.contains(&child) && !came_from.contains_key(&child) {
                        came_from.insert(child, cur);
                        queue.push_back(child);
                    }
                }
            }
            let Some(last) = last else { continue };
            let mut path = vec![last];
            while let Some(&prev) = came_from.get(path.last().unwrap_or(&start)) {
                path.push(prev);
            }
            if path.last() != Some(&start) {
                path.push(start);
            }
            path.reverse();
            let mut names: Vec<String> = path.iter().map(|&i| name(i)).collect();
            names.push(names[0].clone());
            let closing = name(last);
            let ptr = tasks[start]
                .get("parents")
                .and_then(Node::as_seq)
                .and_then(|ps| ps.iter().position(|p| p.as_str() == Some(closing.as_str())))
                .map_or_else(|| format!("/tasks/{start}/name"), |j| format!("/tasks/{start}/parents/{j}"));
            self.push(
                Diagnostic::new(
                    Code::Cycle,
                    self.file,
                    self.root.span_at(&ptr),
                    format!("the parents form a cycle: {}", names.join(" -> ")),
                )
                .with_help("remove one of these parent links"),
            );
        }
    }

    fn templates(&mut self, tasks: &[Node], ids: &HashMap<&str, usize>, parents_of: &[Vec<usize>], position: (Vec<usize>, Vec<usize>)) {
        let input = self.root.get("input");
        let closed_input: Option<Vec<String>> =
            input.filter(|i| i.get("additionalProperties").is_some_and(|a| matches!(a.kind, NodeKind::Bool(false)))).map(|i| {
                i.get("properties").and_then(Node::as_map).map(|p| p.iter().map(|(k, _)| k.name.clone()).collect()).unwrap_or_default()
            });
        let mut reach = Reach::new(parents_of, position);
        // References whose ancestry a short walk could not settle; answered
        // together at the end.
        let mut deferred: Vec<(usize, usize, String, String, Option<String>)> = Vec::new();
        // Workflow-level templates: env values and the rollout entity.
        let root = self.root;
        // The template strings: (pointer as a range of `pointers`, text,
        // shell script, task).
        // Sized for about one template per task, to grow seldom.
        let mut pointers = String::with_capacity(tasks.len() * 24);
        let mut strings: Vec<(std::ops::Range<usize>, &str, bool, Option<usize>)> = Vec::with_capacity(tasks.len() + 4);
        let mut ptr = String::new();
        if let Some(env) = root.get("env").and_then(Node::as_map) {
            for (k, v) in env {
                let k = &k.name;
                if let Some(s) = v.as_str().filter(|s| template::is_template(s)) {
                    ptr.clear();
                    ptr.push_str("/env");
                    push_seg(&mut ptr, k);
                    pointers.push_str(&ptr);
                    strings.push((pointers.len() - ptr.len()..pointers.len(), s, false, None));
                }
            }
        }
        if let Some(s) = root.pointer("/backend/entity").and_then(Node::as_str).filter(|s| template::is_template(s)) {
            pointers.push_str("/backend/entity");
            strings.push((pointers.len() - "/backend/entity".len()..pointers.len(), s, false, None));
        }
        for (i, t) in tasks.iter().enumerate() {
            ptr.clear();
            ptr.push_str("/tasks");
            push_index(&mut ptr, i);
            task_templates(t, &mut ptr, &mut |p, s, shell| {
                pointers.push_str(p);
                strings.push((pointers.len() - p.len()..pointers.len(), s, shell, Some(i)));
            });
        }
        for (range, s, shell, task) in strings {
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
                            self.push(
                                Diagnostic::new(Code::TemplateRef, self.file, span(self), "read one task's output: `tasks.NAME.output`")
                                    .with_help("templates may read only the outputs of a task's ancestors, by name"),
                            );
                            continue;
                        };
                        let Some(task) = task else {
                            self.push(Diagnostic::new(
                                Code::TemplateRef,
                                self.file,
                                span(self),
                                format!("`{raw}`: task outputs are not available here, only in a task's own templates"),
                            ));
                            continue;
                        };
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
                                match reach.quick(tid, task) {
                                    Some(ancestor) => self.task_ref(ancestor, &span, &raw, tasks, tid, task, field),
                                    None => deferred.push((tid, task, ptr.to_string(), raw.to_string(), field.map(str::to_string))),
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
                        let allowed: &[&str] = if root == "run" { &["id", "attempt"] } else { &["name", "version"] };
                        if let Some(f) = segs.get(1).filter(|f| !allowed.contains(f)) {
                            self.push(Diagnostic::new(
                                Code::TemplateRef,
                                self.file,
                                span(self),
                                format!(
                                    "`{raw}`: `{root}` has only {}",
                                    allowed.iter().map(|a| format!("`{a}`")).collect::<Vec<_>>().join(" and ")
                                ),
                            ));
                            let _ = f;
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
    fn task_ref(
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
        } else if field.is_some_and(|f| f != "output") {
            self.push(Diagnostic::new(
                Code::TemplateRef,
                self.file,
                span(self),
                format!("`{raw}`: a task exposes only `output` (`tasks.{target}.output`)"),
            ));
        } else if let Some(catalog) = self.handlers
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

    /// The span of `needle` inside the source text of a node, when found.
    fn locate(&self, node: Span, needle: &str) -> Option<Span> {
        let cur = match self.cursor.get().filter(|c| c.node == node) {
            Some(c) => c,
            None => {
                let start = self.byte_of(node.start)?;
                let end = self.byte_of(node.end).unwrap_or(self.text.len()).max(start);
                let pos = Cursor { node, start, end, at: start, line: node.start.line, column: node.start.column };
                self.cursor.set(Some(pos));
                pos
            }
        };
        let from_start = || Cursor { at: cur.start, line: node.start.line, column: node.start.column, ..cur };
        // From the last place found on; from the node's start again (a
        // reference before the last one) while the budget lasts.
        let (base, at) = match self.text.get(cur.at..cur.end)?.find(needle) {
            Some(i) => (cur, cur.at + i),
            None if cur.at > cur.start && Budget::take(&self.budget.locates) => {
                (from_start(), cur.start + self.text.get(cur.start..cur.end)?.find(needle)?)
            }
            None => return None,
        };
        // Line and column of `at`, counted on from the base.
        let between = &self.text[base.at..at];
        let (line, column) = match between.rfind('\n') {
            Some(nl) => (base.line + between.matches('\n').count() as u32, between[nl + 1..].chars().count() as u32 + 1),
            None => (base.line, base.column + between.chars().count() as u32),
        };
        self.cursor.set(Some(Cursor { at, line, column, ..cur }));
        Some(Span::new(line, column, line, column + needle.chars().count() as u32))
    }

    /// Byte offset of a 1-based line/column (characters).
    fn byte_of(&self, pos: crate::diag::Pos) -> Option<usize> {
        let line_starts = self.line_starts();
        let start = *line_starts.get((pos.line as usize).checked_sub(1)?)?;
        let end = line_starts.get(pos.line as usize).copied().unwrap_or(self.text.len());
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
        self.locate(node, &needle).map(|s| Span::new(s.start.line, s.start.column, s.start.line, s.start.column + 2)).unwrap_or(node)
    }
}

/// "Is X an ancestor of T?" for many pairs, without building every task's
/// ancestor set (quadratic on long chains, and templates commonly read the
/// first task from everywhere).
///
/// [`Reach::quick`] walks up the parents of T for a few steps, skipping tasks
/// placed before X in a topological order (they cannot descend from X):
/// templates mostly read a parent or a near ancestor, which this settles.
/// [`Reach::batch`] answers the rest exactly, 64 targets per pass over the
/// tasks in topological order with one bit per target, so the cost is
/// `O(targets / 64 * (tasks + parent links))` even for hostile files.
///
/// Tasks in or behind a cycle have no position; the cycle is reported, so
/// their references are not judged (and nothing in a cycle is an ancestor of
/// a task outside it).
struct Reach<'a> {
    parents_of: &'a [Vec<usize>],
    /// Each task's position in a topological order; `NONE` in or behind a cycle.
    position: Vec<usize>,
    /// The positioned tasks in topological order.
    order: Vec<usize>,
    /// Visit stamps, so the buffer needs no clearing between walks.
    seen: Vec<u32>,
    stamp: u32,
    stack: Vec<usize>,
}

const NONE: usize = usize::MAX;
/// Steps of a quick walk before the question is left to [`Reach::batch`].
const QUICK_STEPS: usize = 64;

impl<'a> Reach<'a> {
    fn new(parents_of: &'a [Vec<usize>], (position, order): (Vec<usize>, Vec<usize>)) -> Self {
        Reach { parents_of, position, order, seen: vec![0; parents_of.len()], stamp: 0, stack: Vec::new() }
    }

    /// Settle "is `x` an ancestor of `task`" with a short walk, when it can.
    fn quick(&mut self, x: usize, task: usize) -> Option<bool> {
        let (px, pt) = (self.position[x], self.position[task]);
        if pt == NONE {
            return Some(true);
        }
        if px == NONE || px >= pt {
            return Some(false);
        }
        self.stamp = self.stamp.wrapping_add(1);
        if self.stamp == 0 {
            self.seen.fill(0);
            self.stamp = 1;
        }
        self.stack.clear();
        self.stack.extend(self.parents_of[task].iter().copied());
        let mut steps = 0;
        while let Some(p) = self.stack.pop() {
            if p == x {
                return Some(true);
            }
            if self.seen[p] == self.stamp || self.position[p] < px {
                continue;
            }
            steps += 1;
            if steps > QUICK_STEPS {
                return None;
            }
            self.seen[p] = self.stamp;
            self.stack.extend(self.parents_of[p].iter().copied());
        }
        Some(false)
    }

    /// Answer many `(x, task)` questions exactly; see the type's docs.
    fn batch(&self, queries: &[(usize, usize)]) -> Vec<bool> {
        let mut answers = vec![false; queries.len()];
        let mut targets: Vec<usize> = queries.iter().map(|&(x, _)| x).collect();
        targets.sort_unstable();
        targets.dedup();
        let n = self.parents_of.len();
        let mut bit_of = vec![NONE; n];
        let mut reach = vec![0u64; n];
        for chunk in targets.chunks(64) {
            for (b, &x) in chunk.iter().enumerate() {
                bit_of[x] = b;
            }
            // reach[t]: the bits of the chunk's targets among t and its ancestors.
            for &t in &self.order {
                let mut m = if bit_of[t] == NONE { 0 } else { 1u64 << bit_of[t] };
                for &p in &self.parents_of[t] {
                    m |= reach[p];
                }
                reach[t] = m;
            }
            for (i, &(x, t)) in queries.iter().enumerate() {
                if bit_of[x] != NONE && x != t {
                    answers[i] = (reach[t] >> bit_of[x]) & 1 == 1;
                }
            }
            for &x in chunk {
                bit_of[x] = NONE;
            }
        }
        answers
    }
}

/// Kahn's algorithm over the parent lists: each task's position in a
/// topological order (`NONE` for tasks in or behind a cycle), and the
/// positioned tasks in that order.
fn topological_positions(parents_of: &[Vec<usize>]) -> (Vec<usize>, Vec<usize>) {
    let n = parents_of.len();
    let mut children: Vec<Vec<usize>> = vec![Vec::new(); n];
    let mut waiting: Vec<usize> = vec![0; n];
    for (t, ps) in parents_of.iter().enumerate() {
        waiting[t] = ps.len();
        for &p in ps {
            children[p].push(t);
        }
    }
    let mut ready: Vec<usize> = (0..n).rev().filter(|&t| waiting[t] == 0).collect();
    let mut position = vec![NONE; n];
    let mut order = Vec::with_capacity(n);
    while let Some(t) = ready.pop() {
        position[t] = order.len();
        order.push(t);
        for &c in &children[t] {
            waiting[c] -= 1;
            if waiting[c] == 0 {
                ready.push(c);
            }
        }
    }
    (position, order)
}

/// Every template string of a task (those containing `{{`), with its JSON
/// pointer and whether it is a shell script: the strings that `plan::compile`
/// compiles in a typed task, read from the untyped value so that a task with
/// a schema error elsewhere is still checked.
///
/// `ptr` holds the task's pointer (`/tasks/3`) and is extended in place for
/// each string (and restored), so listing the strings allocates nothing.
fn task_templates<'v>(task: &'v Node, ptr: &mut String, out: &mut impl FnMut(&str, &'v str, bool)) {
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
