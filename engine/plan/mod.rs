//! The validated, immutable workflow model and its DAG.
//!
//! [`compile`] turns a [`RawWorkflow`] that passed validation into a
//! [`Workflow`]: parents resolved to [`TaskId`]s, durations parsed, templates
//! compiled, the DAG built (petgraph) and a content hash computed. The
//! executor only accepts a `Workflow`, so an unresolved name can never reach a
//! backend. Pure: no I/O.

pub mod cond;
pub mod helpers;
pub mod shell;
pub mod template;

pub use crate::spec::raw::Trigger;
use crate::spec::raw::{BackendSpec, HttpMethod, OutputFormat, RawTask, RawWorkflow, RetrySpec};
use petgraph::graph::{DiGraph, NodeIndex};
use serde_json::Value;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
pub use template::{TValue, Templates};

/// Index of a task in [`Workflow::tasks`].
pub type TaskId = usize;

/// Parse a duration string (`500ms`, `30s`, `10m`, `1h30m`).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    if t.is_empty() {
        return Err("empty duration".into());
    }
    if t.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        return Err(format!("`{s}` has no unit; write e.g. `{t}s` or `{t}m`"));
    }
    humantime::parse_duration(t).map_err(|e| format!("`{s}` is not a duration ({e}); write e.g. `500ms`, `30s`, `10m`, `1h30m`"))
}

#[derive(Debug, Clone, PartialEq)]
pub struct RetryPolicy {
    pub attempts: u32,
    pub delay: Duration,
    pub backoff: f64,
    pub max_delay: Duration,
    pub jitter: bool,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy { attempts: 1, delay: Duration::from_secs(1), backoff: 2.0, max_delay: Duration::from_secs(3600), jitter: true }
    }
}

impl RetryPolicy {
    fn from_spec(s: &RetrySpec) -> Result<Self, String> {
        let d = RetryPolicy::default();
        Ok(RetryPolicy {
            attempts: s.attempts.max(1),
            delay: s.delay.as_ref().map(|x| parse_duration(&x.0)).transpose()?.unwrap_or(d.delay),
            backoff: s.backoff.unwrap_or(d.backoff).max(1.0),
            max_delay: s.max_delay.as_ref().map(|x| parse_duration(&x.0)).transpose()?.unwrap_or(d.max_delay),
            jitter: s.jitter.unwrap_or(true),
        })
    }

    /// The delay before try number `next_attempt` (2 for the first retry),
    /// without jitter.
    pub fn delay_before(&self, next_attempt: u32) -> Duration {
        let n = next_attempt.saturating_sub(2) as i32;
        let secs = self.delay.as_secs_f64() * self.backoff.powi(n.min(1000));
        Duration::from_secs_f64(secs.min(self.max_delay.as_secs_f64()).max(0.0))
    }
}

#[derive(Debug)]
pub enum Action {
    Run {
        argv: Vec<TValue>,
        env: Vec<(String, TValue)>,
        cwd: Option<TValue>,
        output: OutputFormat,
    },
    Shell {
        /// Registered shell template name.
        script: String,
        env: Vec<(String, TValue)>,
        cwd: Option<TValue>,
        output: OutputFormat,
    },
    Http {
        method: HttpMethod,
        url: TValue,
        headers: Vec<(String, TValue)>,
        query: Vec<(String, TValue)>,
        json: Option<TValue>,
        body: Option<TValue>,
    },
    Celery {
        task: String,
        args: TValue,
        kwargs: TValue,
        queue: Option<String>,
        priority: Option<u8>,
    },
    Uses {
        handler: String,
        with: TValue,
    },
}

impl Action {
    pub fn kind(&self) -> &'static str {
        match self {
            Action::Run { .. } => "run",
            Action::Shell { .. } => "shell",
            Action::Http { .. } => "http",
            Action::Celery { .. } => "celery",
            Action::Uses { .. } => "uses",
        }
    }
}

/// Which list a task belongs to: the workflow's `tasks`, or one of the
/// handler lists that run after every task is final.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Phase {
    Main,
    /// `on_failure:`: when the run ends failed or timed out.
    OnFailure,
    /// `finally:`: whatever the outcome.
    Finally,
}

impl Phase {
    /// The key of the list in a workflow file.
    pub fn key(self) -> &'static str {
        match self {
            Phase::Main => "tasks",
            Phase::OnFailure => "on_failure",
            Phase::Finally => "finally",
        }
    }
}

#[derive(Debug)]
pub struct Task {
    pub id: TaskId,
    pub name: String,
    /// The list the task belongs to.
    pub phase: Phase,
    pub parents: Vec<TaskId>,
    pub children: Vec<TaskId>,
    /// When the task may start, from its parents' final states.
    pub trigger: Trigger,
    pub timeout: Option<Duration>,
    pub retry: RetryPolicy,
    pub action: Action,
    /// The `when:` condition: false skips the task.
    pub when: Option<cond::Condition>,
    /// Ancestors whose output this task's templates and condition read.
    pub reads: Vec<TaskId>,
    /// Whether any template of the task needs a context at all.
    pub templated: bool,
    /// The secrets its templates read (`{{secrets.NAME}}`): resolved by the
    /// process that runs the attempt, never in a context that travels.
    pub secrets: Vec<String>,
}

/// A workflow's `output:`: its templates, compiled once, and the tasks they
/// read (any task: the output is rendered once every task is final).
#[derive(Debug)]
pub struct Output {
    pub value: TValue,
    /// The tasks whose output or status the templates read, each once, in order.
    pub reads: Vec<TaskId>,
}

/// A validated workflow, immutable and shared (`Arc`) by every run that pins it.
#[derive(Debug)]
pub struct Workflow {
    pub name: String,
    /// `sha256:<hex>` of the canonical definition.
    pub version: String,
    pub description: Option<String>,
    pub timeout: Option<Duration>,
    pub backend: Option<BackendSpec>,
    pub queue: Option<String>,
    pub concurrency: Option<usize>,
    pub input_schema: Option<Value>,
    pub env: Vec<(String, String)>,
    pub tasks: Vec<Task>,
    pub dag: DiGraph<TaskId, ()>,
    /// A topological order of the tasks.
    pub order: Vec<TaskId>,
    pub templates: Templates,
    /// The workflow's `output:`, compiled; `None` when it declares none.
    pub output: Option<Output>,
    /// The definition itself; it travels with runs to remote backends.
    pub raw: RawWorkflow,
    /// Where it was loaded from, if from a file.
    pub source: Option<std::path::PathBuf>,
    input_check: std::sync::OnceLock<Result<jsonschema::Validator, String>>,
}

impl Workflow {
    pub fn task(&self, name: &str) -> Option<&Task> {
        self.tasks.iter().find(|t| t.name == name)
    }

    /// Task ids of `phase` with no parents.
    pub fn roots(&self, phase: Phase) -> impl Iterator<Item = TaskId> + '_ {
        self.tasks.iter().filter(move |t| t.phase == phase && t.parents.is_empty()).map(|t| t.id)
    }

    /// Whether the workflow has `on_failure` or `finally` tasks.
    pub fn has_handlers(&self) -> bool {
        self.tasks.last().is_some_and(|t| t.phase != Phase::Main)
    }

    /// Whether any task is a `celery:` action.
    pub fn uses_celery(&self) -> bool {
        self.tasks.iter().any(|t| matches!(t.action, Action::Celery { .. }))
    }

    /// Mermaid flowchart of the DAG.
    pub fn mermaid(&self) -> String {
        let mut s = String::from("flowchart TD\n");
        for t in &self.tasks {
            s.push_str(&format!(
                "    t{}[\"{} ({}){}\"]\n",
                t.id,
                t.name.replace('"', "'"),
                t.action.kind(),
                rule(t, "<br/>", mermaid_text)
            ));
        }
        for t in &self.tasks {
            // A task that may run after a parent did not succeed: dotted edges.
            let arrow = if t.trigger == Trigger::AllSuccess { "-->" } else { "-.->" };
            for p in &t.parents {
                s.push_str(&format!("    t{p} {arrow} t{}\n", t.id));
            }
        }
        s
    }

    /// Graphviz DOT of the DAG.
    pub fn dot(&self) -> String {
        let mut s = format!("digraph \"{}\" {{\n    rankdir=TB;\n    node [shape=box];\n", self.name);
        for t in &self.tasks {
            s.push_str(&format!("    \"{}\" [label=\"{}\\n({}){}\"];\n", t.name, t.name, t.action.kind(), rule(t, "\\n", dot_text)));
        }
        for t in &self.tasks {
            let style = if t.trigger == Trigger::AllSuccess { "" } else { " [style=dashed]" };
            for p in &t.parents {
                s.push_str(&format!("    \"{}\" -> \"{}\"{style};\n", self.tasks[*p].name, t.name));
            }
        }
        s.push_str("}\n");
        s
    }
}

/// A task's trigger rule for a graph label, when it is not the default.
/// The lines a node label adds for a task's trigger rule and condition;
/// `escape` makes the condition's text safe inside the label.
fn rule(t: &Task, newline: &str, escape: fn(&str) -> String) -> String {
    let mut s = String::new();
    if t.trigger != Trigger::AllSuccess {
        s.push_str(&format!("{newline}trigger: {}", t.trigger.as_str()));
    }
    if let Some(c) = &t.when {
        s.push_str(&format!("{newline}when: {}", escape(&c.source)));
    }
    s
}

fn mermaid_text(s: &str) -> String {
    s.replace('"', "#quot;").replace('<', "#lt;").replace('>', "#gt;").replace('\n', " ")
}

fn dot_text(s: &str) -> String {
    s.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', " ")
}

/// Content hash of a definition: sha256 of its canonical JSON.
///
/// The digest comes from AWS-LC (already linked for TLS), whose assembly
/// SHA-256 is about twice as fast as the portable code of `sha2` on CPUs
/// without SHA extensions; hashing is a good part of compiling a workflow.
pub fn content_hash(raw: &RawWorkflow) -> String {
    use std::fmt::Write as _;
    let bytes = serde_json::to_vec(raw).unwrap_or_default();
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &bytes);
    let mut hex = String::with_capacity(71);
    hex.push_str("sha256:");
    for b in digest.as_ref() {
        let _ = write!(hex, "{b:02x}");
    }
    hex
}

/// Compile a definition that passed validation. Errors here mean validation
/// let something through; they are reported, never panicked on.
pub fn compile(raw: RawWorkflow) -> Result<Arc<Workflow>, String> {
    // Every task, handlers after the workflow's own: one id space.
    let all: Vec<(Phase, usize, &RawTask)> = raw
        .tasks
        .iter()
        .enumerate()
        .map(|(i, t)| (Phase::Main, i, t))
        .chain(raw.on_failure.iter().enumerate().map(|(i, t)| (Phase::OnFailure, i, t)))
        .chain(raw.finally.iter().enumerate().map(|(i, t)| (Phase::Finally, i, t)))
        .collect();
    let mut ids: HashMap<&str, TaskId> = HashMap::with_capacity(all.len());
    for (i, (_, _, t)) in all.iter().enumerate() {
        if ids.insert(t.name.as_str(), i).is_some() {
            return Err(format!("duplicate task `{}`", t.name));
        }
    }
    let dur = |d: &Option<crate::spec::raw::DurationText>| d.as_ref().map(|x| parse_duration(&x.0)).transpose();
    let default_timeout = dur(&raw.defaults.as_ref().and_then(|d| d.timeout.clone()))?;
    let default_retry = raw.defaults.as_ref().and_then(|d| d.retry.as_ref()).map(RetryPolicy::from_spec).transpose()?;
    let mut templates = Templates::new();
    let mut tasks = Vec::with_capacity(all.len());
    let mut dag = DiGraph::with_capacity(all.len(), all.len());
    for i in 0..all.len() {
        dag.add_node(i);
    }
    for (i, &(phase, at, rt)) in all.iter().enumerate() {
        let mut parents = Vec::with_capacity(rt.parents.len());
        for p in &rt.parents {
            let pid = *ids.get(p.as_str()).ok_or_else(|| format!("unknown parent `{p}`"))?;
            if all[pid].0 != phase {
                return Err(format!("`{}` lists `{p}` as a parent, from another list", rt.name));
            }
            if !parents.contains(&pid) {
                parents.push(pid);
                dag.add_edge(NodeIndex::new(pid), NodeIndex::new(i), ());
            }
        }
        let key = format!("/{}/{at}", phase.key());
        let mut read = template::Reads::default();
        let action = compile_action(rt, &key, &mut templates, &mut read)?;
        let when = match &rt.when {
            Some(src) => {
                let c = cond::Condition::compile(src).map_err(|e| format!("condition at {key}/when: {}", e.message))?;
                read.templated |= c.reads_variables();
                Some(c)
            }
            None => None,
        };
        let (mut reads, templated) = task_reads(&read, &ids);
        for r in when.iter().flat_map(|c| c.refs().tasks) {
            if let Some(&id) = ids.get(r.name.as_str())
                && !reads.contains(&id)
            {
                reads.push(id);
            }
        }
        tasks.push(Task {
            id: i,
            name: rt.name.clone(),
            phase,
            parents,
            children: Vec::new(),
            trigger: rt.trigger.unwrap_or_default(),
            timeout: dur(&rt.timeout)?.or(default_timeout),
            retry: match &rt.retry {
                Some(r) => RetryPolicy::from_spec(r)?,
                None => default_retry.clone().unwrap_or_default(),
            },
            action,
            when,
            reads,
            templated,
            secrets: read
                .paths
                .iter()
                .filter_map(|p| p.strip_prefix("secrets.").map(|n| n.split(['.', '/']).next().unwrap_or(n).to_string()))
                .fold(Vec::new(), |mut v, n| {
                    if !v.contains(&n) {
                        v.push(n);
                    }
                    v
                }),
        });
    }
    for i in 0..tasks.len() {
        for p in tasks[i].parents.clone() {
            tasks[p].children.push(i);
        }
    }
    let output = match &raw.output {
        Some(map) => {
            let mut read = template::Reads::default();
            let value =
                templates.compile_value_reading("/output", &Value::Object(map.clone()), &mut read).map_err(|e| tmpl_err("/output", e))?;
            Some(Output { value, reads: task_reads(&read, &ids).0 })
        }
        None => None,
    };
    let order = petgraph::algo::toposort(&dag, None)
        .map_err(|c| format!("cycle through `{}`", all[c.node_id().index()].2.name))?
        .into_iter()
        .map(|n| n.index())
        .collect();
    Ok(Arc::new(Workflow {
        name: raw.name.clone(),
        version: content_hash(&raw),
        description: raw.description.clone(),
        timeout: dur(&raw.timeout)?,
        backend: raw.backend.clone(),
        queue: raw.queue.clone(),
        concurrency: raw.concurrency.map(|c| c.max(1) as usize),
        input_schema: raw.input.clone().map(Value::Object),
        env: raw.env.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        tasks,
        dag,
        order,
        templates,
        output,
        raw,
        source: None,
        input_check: std::sync::OnceLock::new(),
    }))
}

fn tmpl_err(key: &str, e: template::CompileError) -> String {
    format!("template at {key}: {e}")
}

fn compile_env(
    env: &std::collections::BTreeMap<String, String>,
    key: &str,
    t: &mut Templates,
    r: &mut template::Reads,
) -> Result<Vec<(String, TValue)>, String> {
    env.iter()
        .map(|(k, v)| {
            let kk = format!("{key}/env/{k}");
            t.compile_str_reading(&kk, v, r).map(|x| (k.clone(), x)).map_err(|e| tmpl_err(&kk, e))
        })
        .collect()
}

/// Compile a task's action; `r` gathers what its templates read.
fn compile_action(rt: &RawTask, key: &str, t: &mut Templates, r: &mut template::Reads) -> Result<Action, String> {
    let output = rt.output.unwrap_or_default();
    let cwd = |t: &mut Templates, r: &mut template::Reads| -> Result<Option<TValue>, String> {
        rt.cwd.as_ref().map(|c| t.compile_str_reading(&format!("{key}/cwd"), c, r).map_err(|e| tmpl_err(key, e))).transpose()
    };
    if let Some(argv) = &rt.run {
        let argv = argv
            .iter()
            .enumerate()
            .map(|(i, a)| t.compile_str_reading(&format!("{key}/run/{i}"), a, r).map_err(|e| tmpl_err(key, e)))
            .collect::<Result<_, _>>()?;
        return Ok(Action::Run { argv, env: compile_env(&rt.env, key, t, r)?, cwd: cwd(t, r)?, output });
    }
    if let Some(script) = &rt.shell {
        let k = format!("{key}/shell");
        let script = t.compile_shell_reading(&k, script, r).map_err(|e| tmpl_err(&k, e))?;
        return Ok(Action::Shell { script, env: compile_env(&rt.env, key, t, r)?, cwd: cwd(t, r)?, output });
    }
    // Only `run` and `shell` use `env` and `cwd`; what they would read still
    // counts as read, in the order the fields come in a task.
    for v in rt.env.values().chain(&rt.cwd) {
        r.scan(v);
    }
    if let Some(h) = &rt.http {
        let k = format!("{key}/http");
        let map = |m: &std::collections::BTreeMap<String, String>,
                   part: &str,
                   t: &mut Templates,
                   r: &mut template::Reads|
         -> Result<Vec<(String, TValue)>, String> {
            m.iter()
                .map(|(name, v)| {
                    let kk = format!("{k}/{part}/{name}");
                    t.compile_str_reading(&kk, v, r).map(|x| (name.clone(), x)).map_err(|e| tmpl_err(&kk, e))
                })
                .collect()
        };
        return Ok(Action::Http {
            method: h.method.unwrap_or(if h.json.is_some() || h.body.is_some() { HttpMethod::POST } else { HttpMethod::GET }),
            url: t.compile_str_reading(&format!("{k}/url"), &h.url, r).map_err(|e| tmpl_err(&k, e))?,
            headers: map(&h.headers, "headers", t, r)?,
            query: map(&h.query, "query", t, r)?,
            json: h.json.as_ref().map(|j| t.compile_value_reading(&format!("{k}/json"), j, r).map_err(|e| tmpl_err(&k, e))).transpose()?,
            body: h.body.as_ref().map(|b| t.compile_str_reading(&format!("{k}/body"), b, r).map_err(|e| tmpl_err(&k, e))).transpose()?,
        });
    }
    if let Some(c) = &rt.celery {
        let k = format!("{key}/celery");
        return Ok(Action::Celery {
            task: c.task.clone(),
            args: t.compile_value_reading(&format!("{k}/args"), &Value::Array(c.args.clone()), r).map_err(|e| tmpl_err(&k, e))?,
            kwargs: t.compile_value_reading(&format!("{k}/kwargs"), &Value::Object(c.kwargs.clone()), r).map_err(|e| tmpl_err(&k, e))?,
            queue: c.queue.clone(),
            priority: c.priority,
        });
    }
    if let Some(h) = &rt.uses {
        let with = match &rt.with_ {
            Some(w) => t.compile_value_reading(&format!("{key}/with"), w, r).map_err(|e| tmpl_err(key, e))?,
            None => TValue::Lit(Value::Object(Default::default())),
        };
        return Ok(Action::Uses { handler: h.clone(), with });
    }
    Err(format!("task `{}` has no action", rt.name))
}

/// Which tasks' outputs a task's templates read (each once, in order), and
/// whether it has templates at all.
fn task_reads(r: &template::Reads, ids: &HashMap<&str, TaskId>) -> (Vec<TaskId>, bool) {
    let mut reads = Vec::new();
    for p in &r.paths {
        let mut segs = p.split(['.', '/']);
        if segs.next() == Some("tasks")
            && let Some(&id) = segs.next().and_then(|n| ids.get(n))
            && !reads.contains(&id)
        {
            reads.push(id);
        }
    }
    (reads, r.templated)
}

impl Workflow {
    /// The run's input with the schema's defaults filled in (top-level
    /// properties), checked against the input schema.
    pub fn prepare_input(&self, mut input: Value) -> Result<Value, InvalidInput> {
        let Some(schema) = &self.input_schema else { return Ok(input) };
        if let (Some(obj), Some(props)) = (input.as_object_mut(), schema.get("properties").and_then(Value::as_object)) {
            for (k, p) in props {
                if let Some(d) = p.get("default") {
                    obj.entry(k.clone()).or_insert_with(|| d.clone());
                }
            }
        }
        let validator = self.input_validator().map_err(|message| InvalidInput { message, pointer: String::new() })?;
        if let Some(err) = validator.iter_errors(&input).next() {
            let pointer = err.instance_path().as_str().to_string();
            let message = match err.kind() {
                jsonschema::error::ValidationErrorKind::Required { property } => {
                    let at = if pointer.is_empty() {
                        String::new()
                    } else {
                        format!(" in `{}`", pointer.trim_start_matches('/').replace('/', "."))
                    };
                    format!("missing required property `{}`{at}", property.as_str().unwrap_or_default())
                }
                jsonschema::error::ValidationErrorKind::AdditionalProperties { unexpected } => {
                    format!("unknown property `{}`", unexpected.join("`, `"))
                }
                _ => format!("`{}`: {}", pointer.trim_start_matches('/').replace('/', "."), err.masked()),
            };
            return Err(InvalidInput { message, pointer });
        }
        Ok(input)
    }

    /// The compiled input schema (compiled once, on first use). `format`
    /// (`uri`, `email`, `date-time`, …) is enforced, not only annotated as
    /// draft 2020-12 allows: an author who writes it means it.
    pub fn input_validator(&self) -> Result<&jsonschema::Validator, String> {
        let schema = self.input_schema.as_ref().ok_or("the workflow declares no input schema")?;
        self.input_check
            .get_or_init(|| {
                jsonschema::options().should_validate_formats(true).build(schema).map_err(|e| format!("the input schema is invalid: {e}"))
            })
            .as_ref()
            .map_err(Clone::clone)
    }
}

/// An input its workflow's schema refuses.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{message}")]
pub struct InvalidInput {
    pub message: String,
    /// JSON pointer of the value at fault (empty: the whole input).
    pub pointer: String,
}

#[cfg(test)]
mod tests {
    use super::*;
    use sha2::{Digest, Sha256};

    /// `format` in an input schema is enforced: a `uri` property refuses
    /// text that is not a URI, an `email` one text that is not an address.
    #[test]
    fn input_formats_are_enforced() {
        let raw: RawWorkflow = serde_json::from_value(serde_json::json!({
            "version": 1, "name": "formats",
            "input": {"type": "object", "properties": {"u": {"type": "string", "format": "uri"}, "e": {"type": "string", "format": "email"}}},
            "tasks": [{"name": "a", "uses": "echo"}]
        }))
        .expect("a valid definition");
        let wf = compile(raw).expect("compiles");
        let v = wf.input_validator().expect("a validator");
        assert!(v.is_valid(&serde_json::json!({"u": "https://example.com/x", "e": "a@example.com"})));
        assert!(!v.is_valid(&serde_json::json!({"u": "not a uri"})));
        assert!(!v.is_valid(&serde_json::json!({"e": "nobody"})));
    }

    /// The version of a workflow is the sha256 of its canonical JSON, as
    /// any other SHA-256 implementation computes it.
    #[test]
    fn content_hash_is_the_sha256_of_the_canonical_json() {
        let raw: RawWorkflow = serde_json::from_value(serde_json::json!({
            "version": 1, "name": "hash-me", "timeout": "5m",
            "tasks": [{"name": "a", "uses": "echo", "with": {"m": "{{input.x}}"}}, {"name": "b", "parents": ["a"], "run": ["true"]}]
        }))
        .expect("a valid definition");
        let json = serde_json::to_vec(&raw).expect("serialises");
        let want: String = Sha256::digest(&json).iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(content_hash(&raw), format!("sha256:{want}"));
        assert_eq!(content_hash(&raw).len(), 71);
    }
}
