//! `taskweave run`: start a run and follow it.

use super::OutputFormat;
use super::report::{human_result, json_result, one_line, symbol};
use crate::config::Config;
use crate::diag;
use crate::engine::{Engine, EngineError, RunOptions};
use crate::run::executor::RunEvent;
use crate::run::{RunStatus, TaskStatus};
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
    /// Start at most one run for this key (within `[engine] idempotency_window`, 24h by default): run again with the
    /// same key and input, and the first run is followed instead of a new one started; with other input it is an error.
    #[arg(long, value_name = "KEY")]
    pub idempotency_key: Option<String>,
    #[arg(long, value_enum, default_value = "human")]
    pub format: OutputFormat,
}

pub(super) fn usage(msg: impl std::fmt::Display) -> ExitCode {
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
        idempotency_key: args.idempotency_key.clone(),
        ..Default::default()
    };
    let run_id = match engine.submit(Arc::clone(&wf), opts).await {
        Ok(id) => id,
        // Nothing started: the request itself cannot run here.
        Err(
            e @ (EngineError::InvalidInput { .. }
            | EngineError::UnknownBackend { .. }
            | EngineError::IdempotencyConflict { .. }
            | EngineError::InvalidIdempotencyKey(_)
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
