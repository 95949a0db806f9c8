//! `taskweave run` and `taskweave runs`: start a run and follow it; list,
//! show and cancel recorded runs.

use super::OutputFormat;
use crate::config::Config;
use crate::diag;
use crate::engine::{Engine, EngineError, RunOptions};
use crate::run::executor::RunEvent;
use crate::run::{RunResult, RunStatus, TaskStatus};
use crate::store::{RunFilter, Store};
use serde_json::{Map, Value};
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

/// Arguments of `taskweave run`.
#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// A workflow file, or the name of a workflow in the configured folders.
    pub target: String,
    /// The run input as JSON.
    #[arg(long, conflicts_with = "input_file")]
    pub input: Option<String>,
    /// Read the input JSON from a file (`-` for stdin).
    #[arg(long)]
    pub input_file: Option<PathBuf>,
    /// Set one input value: `key=value` (JSON values are parsed; dots nest).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
    /// The backend to run on (default: the workflow's, else the configured default).
    #[arg(long)]
    pub backend: Option<String>,
    /// The entity id flags bucket on (default: the run id).
    #[arg(long)]
    pub entity: Option<String>,
    /// Caller context: `key=value`, repeatable.
    #[arg(long = "context", value_name = "KEY=VALUE")]
    pub context: Vec<String>,
    #[arg(long, value_enum, default_value = "human")]
    pub format: OutputFormat,
}

fn usage(msg: impl std::fmt::Display) -> ExitCode {
    eprintln!("error: {msg}");
    ExitCode::from(2)
}

/// Parse `k=v` pairs into a JSON object; values that parse as JSON keep their type.
pub fn parse_pairs(pairs: &[String], into: &mut Map<String, Value>) -> Result<(), String> {
    for p in pairs {
        let (k, v) = p.split_once('=').ok_or_else(|| format!("`{p}` is not KEY=VALUE"))?;
        if k.is_empty() {
            return Err(format!("`{p}` has an empty key"));
        }
        let value = serde_json::from_str::<Value>(v).unwrap_or_else(|_| Value::String(v.to_string()));
        let mut obj = &mut *into;
        let parts: Vec<&str> = k.split('.').collect();
        for part in &parts[..parts.len() - 1] {
            let entry = obj.entry(part.to_string()).or_insert_with(|| Value::Object(Map::new()));
            if !entry.is_object() {
                *entry = Value::Object(Map::new());
            }
            obj = entry.as_object_mut().expect("just made an object");
        }
        obj.insert(parts[parts.len() - 1].to_string(), value);
    }
    Ok(())
}

fn read_input(args: &RunArgs) -> Result<Value, String> {
    let mut input = match (&args.input, &args.input_file) {
        (Some(s), _) => serde_json::from_str::<Value>(s).map_err(|e| format!("--input is not valid JSON: {e}"))?,
        (None, Some(f)) => {
            let text = if f.as_os_str() == "-" {
                std::io::read_to_string(std::io::stdin()).map_err(|e| format!("reading stdin: {e}"))?
            } else {
                std::fs::read_to_string(f).map_err(|e| format!("{}: {e}", f.display()))?
            };
            serde_json::from_str::<Value>(&text).map_err(|e| format!("{}: not valid JSON: {e}", f.display()))?
        }
        (None, None) => Value::Object(Map::new()),
    };
    if !args.set.is_empty() {
        let obj = input.as_object_mut().ok_or("--set needs the input to be a JSON object")?;
        parse_pairs(&args.set, obj)?;
    }
    Ok(input)
}

pub(crate) fn looks_like_file(target: &str) -> bool {
    let p = Path::new(target);
    p.exists() || crate::spec::Format::from_path(p).is_some() || target.contains('/')
}

pub async fn run(args: RunArgs, config: Option<&Path>) -> anyhow::Result<ExitCode> {
    let mut config = match Config::load(config) {
        Ok(c) => c,
        Err(e) => return Ok(super::config_error(&e)),
    };
    // `--backend` is this command's default: the workflow is checked
    // (`backend-action`) against the backend its run goes to.
    if let Some(b) = &args.backend {
        config.engine.default_backend = b.clone();
    }
    let input = match read_input(&args) {
        Ok(i) => i,
        Err(e) => return Ok(usage(e)),
    };
    let mut context = Map::new();
    if let Err(e) = parse_pairs(&args.context, &mut context) {
        return Ok(usage(e));
    }
    let engine = match Engine::startup(config).await {
        Ok(e) => e,
        Err(e) => {
            eprintln!("error: {e}");
            return Ok(ExitCode::from(2));
        }
    };
    let wf = if looks_like_file(&args.target) {
        match engine.register_file(Path::new(&args.target)) {
            Ok(wf) => wf,
            Err(EngineError::Invalid { file, diagnostics }) => {
                let text = std::fs::read_to_string(&file).ok();
                let source = text.as_deref().map(diag::Source::new);
                for d in &diagnostics {
                    eprintln!("{}\n", diag::render_human_in(d, source.as_ref(), std::io::stderr().is_terminal()));
                }
                eprintln!("error: {file} is not a valid workflow");
                return Ok(ExitCode::from(2));
            }
            Err(e) => return Ok(usage(e)),
        }
    } else {
        let bad = engine.load_workflows();
        match engine.workflow(&args.target) {
            Some(wf) => wf,
            None => {
                let names = engine.workflow_names();
                let hint = diag::did_you_mean(&args.target, names.iter().map(String::as_str))
                    .map(|s| format!(" (did you mean `{s}`?)"))
                    .unwrap_or_default();
                if let Some(c) = bad.iter().find(|c| c.workflow.as_deref() == Some(args.target.as_str())) {
                    return Ok(usage(format!("workflow `{}` in {} has errors; run `taskweave validate {}`", args.target, c.path, c.path)));
                }
                return Ok(usage(format!("no workflow file or workflow named `{}`{hint}", args.target)));
            }
        }
    };

    let mut events = engine.subscribe();
    let opts = RunOptions {
        input: Some(input),
        entity_id: args.entity.clone(),
        context: Some(Value::Object(context)),
        backend: args.backend.clone(),
        run_id: None,
    };
    let run_id = match engine.submit(Arc::clone(&wf), opts).await {
        Ok(id) => id,
        // Nothing started: the request itself cannot run here.
        Err(
            e @ (EngineError::InvalidInput { .. }
            | EngineError::UnknownBackend { .. }
            | EngineError::Backend(crate::backend::BackendError::Refused { .. })),
        ) => {
            engine.shutdown().await;
            return Ok(usage(e));
        }
        Err(e) => {
            eprintln!("error: {e}");
            engine.shutdown().await;
            return Ok(ExitCode::from(1));
        }
    };

    let human = args.format == OutputFormat::Human;
    let progress = human.then(|| Progress::new(wf.tasks.len(), &run_id, &wf.name));
    let mut interrupted = 0;
    let result = loop {
        tokio::select! {
            ev = events.recv() => {
                match ev {
                    Ok(ev) if ev.run_id == run_id => {
                        if let Some(p) = &progress { p.event(&ev); }
                    }
                    Ok(_) => {}
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => {
                        break engine.get_result(&run_id, Some(Duration::from_secs(u64::MAX / 4))).await;
                    }
                }
                if let Ok(r) = engine.get_result(&run_id, None).await
                    && r.status.is_terminal()
                {
                    break Ok(r);
                }
            }
            _ = tokio::signal::ctrl_c() => {
                interrupted += 1;
                if interrupted > 1 {
                    eprintln!("interrupted again: exiting without waiting");
                    return Ok(ExitCode::from(130));
                }
                eprintln!("cancelling run {run_id} (Ctrl-C again to exit at once)");
                let _ = engine.cancel(&run_id).await;
            }
            r = engine.get_result(&run_id, Some(Duration::from_millis(250))) => {
                if let Ok(r) = &r
                    && r.status.is_terminal()
                {
                    break Ok(r.clone());
                }
            }
        }
    };
    engine.shutdown().await;
    if let Some(p) = &progress {
        p.finish();
    }
    let result = match result {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: {e}");
            return Ok(ExitCode::from(1));
        }
    };
    match args.format {
        OutputFormat::Json => println!("{}", serde_json::to_string_pretty(&json_result(&result, &wf))?),
        OutputFormat::Human => print!("{}", human_result(&result, Some(&wf))),
    }
    Ok(if result.status == RunStatus::Succeeded { ExitCode::SUCCESS } else { ExitCode::from(1) })
}

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

fn symbol(s: TaskStatus) -> &'static str {
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
fn one_line(v: &Value, max: usize) -> String {
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
    out
}

/// Live progress on stderr: a bar on a terminal, plain lines otherwise.
/// When stderr and stdout are one file that is not a terminal (a CI log
/// taking `2>&1`), the result printed at the end lists every task, so no
/// task line is written live: each appears once.
struct Progress {
    bar: Option<indicatif::ProgressBar>,
    quiet_tasks: bool,
}

/// Whether stdout and stderr are the same file (same device and inode).
fn stdout_is_stderr() -> bool {
    // SAFETY: fstat only fills the struct it is given.
    let stat = |fd| unsafe {
        let mut st: libc::stat = std::mem::zeroed();
        (libc::fstat(fd, &mut st) == 0).then_some((st.st_dev, st.st_ino))
    };
    matches!((stat(1), stat(2)), (Some(a), Some(b)) if a == b)
}

impl Progress {
    fn new(total: usize, run_id: &str, name: &str) -> Self {
        if std::io::stderr().is_terminal() {
            let bar = indicatif::ProgressBar::new(total as u64);
            bar.set_style(
                indicatif::ProgressStyle::with_template("{spinner} {prefix} [{bar:30}] {pos}/{len} tasks {msg}")
                    .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
                    .progress_chars("=> "),
            );
            bar.set_prefix(name.to_string());
            bar.enable_steady_tick(Duration::from_millis(120));
            bar.println(format!("run {run_id} of {name}"));
            Progress { bar: Some(bar), quiet_tasks: false }
        } else {
            eprintln!("run {run_id} of {name}");
            Progress { bar: None, quiet_tasks: stdout_is_stderr() }
        }
    }

    fn event(&self, ev: &RunEvent) {
        let Some(task) = &ev.task else { return };
        let status = TaskStatus::parse(&ev.status);
        let line = match status {
            Some(TaskStatus::Running) if ev.attempt > 1 => format!("  retry     {task} (attempt {})", ev.attempt),
            Some(TaskStatus::Running) => {
                if let Some(b) = &self.bar {
                    b.set_message(task.clone());
                }
                return;
            }
            Some(s) if s.is_terminal() => {
                if let Some(b) = &self.bar {
                    b.inc(1);
                }
                if self.quiet_tasks {
                    return;
                }
                let mut l = format!("  {:<9} {task}", symbol(s));
                if let Some(e) = &ev.error
                    && s != TaskStatus::Succeeded
                {
                    l.push_str(&format!(": {}", one_line(&Value::String(e.clone()), 160)));
                }
                l
            }
            _ => return,
        };
        match &self.bar {
            Some(b) => b.println(line),
            None => eprintln!("{line}"),
        }
    }

    fn finish(&self) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
    }
}

/// `taskweave runs ...`
#[derive(Debug, clap::Subcommand)]
pub enum RunsCommand {
    /// Recent runs, newest first.
    List {
        #[arg(long)]
        workflow: Option<String>,
        #[arg(long)]
        status: Option<String>,
        #[arg(long, default_value_t = 20)]
        limit: u32,
        #[arg(long, value_enum, default_value = "human")]
        format: OutputFormat,
    },
    /// One run with its tasks (an id, or a unique prefix or suffix of one).
    Show {
        id: String,
        #[arg(long, value_enum, default_value = "human")]
        format: OutputFormat,
    },
    /// Ask a run to stop.
    Cancel { id: String },
}

/// What `runs ...` says when the store does not exist yet: an empty list
/// (exit 0), or no such run (exit 1).
fn no_history(cmd: &RunsCommand, url: &str) -> ExitCode {
    let at = Store::sqlite_path(url).map_or_else(|| url.to_string(), |p| p.display().to_string());
    match cmd {
        RunsCommand::List { format: OutputFormat::Json, .. } => {
            println!("[]");
            ExitCode::SUCCESS
        }
        RunsCommand::List { .. } => {
            println!("no run history at {at} yet");
            ExitCode::SUCCESS
        }
        RunsCommand::Show { id, .. } | RunsCommand::Cancel { id } => {
            eprintln!("error: no run `{id}` (no run history at {at} yet)");
            ExitCode::from(1)
        }
    }
}

/// A run named by its id, a unique prefix or a unique suffix (the end of a
/// UUIDv7 is random, its start is the time: `runs show 3f9c` is enough).
async fn resolve_id(store: &Store, id: &str) -> Result<String, ExitCode> {
    let fail = |e: crate::store::StoreError| {
        eprintln!("error: {e}");
        Err(ExitCode::from(2))
    };
    let by_prefix = match store.run_ids_by_prefix(id).await {
        Ok(ids) => ids,
        Err(e) => return fail(e),
    };
    if by_prefix.iter().any(|x| x == id) {
        return Ok(id.to_string());
    }
    if let [one] = by_prefix.as_slice() {
        return Ok(one.clone());
    }
    let by_suffix = match store.run_ids_by_suffix(id).await {
        Ok(ids) => ids,
        Err(e) => return fail(e),
    };
    match (by_prefix.len(), by_suffix.as_slice()) {
        (0, [one]) => Ok(one.clone()),
        (0, []) => {
            eprintln!("error: no run `{id}`");
            Err(ExitCode::from(1))
        }
        (n, ends) => {
            eprintln!(
                "error: `{id}` matches {} runs; give more of the id (its last characters are enough)",
                n + ends.iter().filter(|e| !by_prefix.contains(e)).count()
            );
            Err(ExitCode::from(2))
        }
    }
}

pub async fn runs(cmd: Option<RunsCommand>, config: Option<&Path>) -> anyhow::Result<ExitCode> {
    let config = match Config::load(config) {
        Ok(c) => c,
        Err(e) => return Ok(super::config_error(&e)),
    };
    let cmd = cmd.unwrap_or(RunsCommand::List { workflow: None, status: None, limit: 20, format: OutputFormat::Human });
    // Looking creates nothing: without a store there is no history yet.
    let store = match Store::open_existing(&config.engine.store).await {
        Ok(Some(s)) => s,
        Ok(None) => return Ok(no_history(&cmd, &config.engine.store)),
        Err(e) => return Ok(usage(e)),
    };
    let _ = store.recover_orphans_of(&config.in_process_backends()).await;
    match cmd {
        RunsCommand::List { workflow, status, limit, format } => {
            let status = match status.as_deref().map(|s| RunStatus::parse(s).ok_or(s)) {
                Some(Err(s)) => {
                    return Ok(usage(format!("unknown status `{s}` (queued, running, succeeded, failed, timed_out, cancelled)")));
                }
                Some(Ok(s)) => Some(s),
                None => None,
            };
            let runs = store.list_runs(&RunFilter { workflow, status, limit: Some(limit) }).await?;
            match format {
                OutputFormat::Json => println!("{}", serde_json::to_string_pretty(&runs)?),
                OutputFormat::Human => {
                    if runs.is_empty() {
                        println!("no runs recorded in {}", config.engine.store);
                    }
                    for r in runs {
                        let fmt = time::format_description::well_known::Rfc3339;
                        println!(
                            "{}  {:<10} {:<28} {:<8} {}",
                            r.run_id,
                            r.status.as_str(),
                            r.workflow,
                            r.backend,
                            r.created_at.format(&fmt).unwrap_or_default()
                        );
                    }
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        RunsCommand::Show { id, format } => {
            let id = match resolve_id(&store, &id).await {
                Ok(i) => i,
                Err(c) => return Ok(c),
            };
            let Some(r) = store.get_run(&id).await? else {
                eprintln!("error: no run `{id}`");
                return Ok(ExitCode::from(1));
            };
            // The pinned definition gives the task order.
            let wf = store
                .get_definition(&id)
                .await
                .ok()
                .flatten()
                .and_then(|d| serde_json::from_value::<crate::spec::raw::RawWorkflow>(d).ok())
                .and_then(|raw| crate::plan::compile(raw).ok());
            match format {
                OutputFormat::Json => match &wf {
                    Some(w) => println!("{}", serde_json::to_string_pretty(&json_result(&r, w))?),
                    None => println!("{}", serde_json::to_string_pretty(&r)?),
                },
                OutputFormat::Human => print!("{}", human_result(&r, wf.as_deref())),
            }
            Ok(ExitCode::SUCCESS)
        }
        RunsCommand::Cancel { id } => {
            let id = match resolve_id(&store, &id).await {
                Ok(i) => i,
                Err(c) => return Ok(c),
            };
            if store.request_cancel(&id).await? {
                println!("cancel requested for run {id}; the process running it stops it within a second");
                return Ok(ExitCode::SUCCESS);
            }
            // Only a finished (or vanished) run refuses the request.
            match store.get_run(&id).await? {
                Some(r) => eprintln!("error: run {id} has already finished ({}); nothing to cancel", r.status),
                None => eprintln!("error: no run `{id}`"),
            }
            Ok(ExitCode::from(1))
        }
    }
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
