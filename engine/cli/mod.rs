//! The command line: argument parsing and glue. Exit codes are decided here,
//! in one place: 0 success, 1 invalid / failed, 2 usage or I/O error.

mod bench;
mod config;
mod doctor;
mod flags;
mod report;
mod rollout;
mod run;
mod runs;
mod serve;
mod validate;
mod worker;
mod workers;

use clap::{Parser, Subcommand, ValueEnum};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser, Debug)]
#[command(name = "taskweave", version, about = "A declarative workflow engine", propagate_version = true)]
pub struct Cli {
    /// Configuration file (default: ./taskweave.toml when present).
    #[arg(long, global = true, env = "TASKWEAVE_CONFIG")]
    pub config: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum DiagFormat {
    Human,
    Json,
    Github,
}

#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum OutputFormat {
    Human,
    Json,
}

#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum GraphFormat {
    Mermaid,
    Dot,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Validate workflow files and folders.
    Validate {
        /// Files and folders; none: the configured workflow folders.
        paths: Vec<PathBuf>,
        #[arg(long, value_enum, default_value = "human")]
        format: DiagFormat,
        /// Fail on warnings too.
        #[arg(long)]
        deny_warnings: bool,
    },
    /// Print the workflow JSON Schema.
    Schema,
    /// Print a workflow's DAG.
    Graph {
        /// A workflow file, or a workflow name from the configured folders.
        target: String,
        #[arg(long, value_enum, default_value = "mermaid")]
        format: GraphFormat,
    },
    /// Explain a diagnostic code, with an example and its fix.
    Explain {
        /// A code such as `unknown-parent`; omit to list all codes.
        code: Option<String>,
    },
    /// Run a workflow and follow it to the end (exit 0 succeeded, 1 failed, 2 invalid).
    Run(run::RunArgs),
    /// Recorded runs: list, show, cancel.
    Runs {
        #[command(subcommand)]
        command: Option<runs::RunsCommand>,
    },
    /// Measure the engine: run workloads and validation, report figures.
    Bench(bench::BenchArgs),
    /// Serve the HTTP API; workflows in the configured folders reload live.
    Serve(serve::ServeArgs),
    /// The reload status of a running server.
    Status(serve::StatusArgs),
    /// Check that the store, every backend, the flag source, the `llm` service and the workflow folders answer.
    Doctor,
    /// Print the effective configuration: every key, its value and where it came from.
    Config {
        #[arg(long, value_enum, default_value = "human")]
        format: OutputFormat,
    },
    /// Execute the tasks of a distributed backend (PostgreSQL, Celery, Temporal).
    Worker(worker::WorkerArgs),
    /// The live workers of every backend (host, pid, queues, concurrency, running tasks, last heartbeat).
    Workers(workers::WorkersArgs),
    /// Feature flags: evaluate a flag as Flipt would, check a features file.
    Flags {
        #[command(subcommand)]
        command: flags::FlagsCommand,
    },
    // The rollout dashboard, under its user-facing name `migration` (the
    // `about` text is its help line).
    #[command(name = "migration", about = "The migration dashboard: runs per backend and flag variant")]
    Rollout {
        #[command(subcommand)]
        command: rollout::RolloutCommand,
    },
}

pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let code = if e.use_stderr() { 2 } else { 0 };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    // A command whose output goes to a closed pipe (`taskweave run … | head`)
    // ends at its next write, as Unix tools do, instead of failing writes
    // one by one (a failed write panics `eprintln!` on whatever thread made
    // it). Servers keep going: their logs are dropped instead.
    let server = matches!(cli.command, Command::Serve(_) | Command::Worker(_));
    if !server {
        // SAFETY: restoring the default disposition of a signal before any
        // thread is started.
        unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    }
    init_tracing(if server { SERVER_LOG } else { "warn" });
    match run(cli) {
        Ok(code) => code,
        // A closed stdout (`taskweave validate ... | head`) ends the command quietly.
        Err(e) if e.chain().any(|c| c.downcast_ref::<std::io::Error>().is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)) => {
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Validate { paths, format, deny_warnings } => validate::validate(&paths, format, deny_warnings, cli.config.as_deref()),
        Command::Schema => {
            print!("{}", crate::spec::raw::json_schema_text());
            Ok(ExitCode::SUCCESS)
        }
        Command::Graph { target, format } => validate::graph(&target, format, cli.config.as_deref()),
        Command::Explain { code } => Ok(validate::explain(code.as_deref())),
        Command::Run(args) => runtime()?.block_on(run::run(args, cli.config.as_deref())),
        Command::Runs { command } => runtime()?.block_on(runs::runs(command, cli.config.as_deref())),
        Command::Bench(args) => runtime()?.block_on(bench::bench(args, cli.config.as_deref())),
        Command::Serve(args) => runtime()?.block_on(serve::serve(args, cli.config.as_deref())),
        Command::Status(args) => runtime()?.block_on(serve::status(args)),
        Command::Doctor => runtime()?.block_on(doctor::doctor(cli.config.as_deref())),
        Command::Config { format } => config::config(format, cli.config.as_deref()),
        Command::Worker(args) => runtime()?.block_on(worker::worker(args, cli.config.as_deref())),
        Command::Workers(args) => runtime()?.block_on(workers::workers(args, cli.config.as_deref())),
        Command::Flags { command } => runtime()?.block_on(flags::flags(command, cli.config.as_deref())),
        Command::Rollout { command } => runtime()?.block_on(rollout::rollout(command, cli.config.as_deref())),
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread().enable_all().build()?)
}

/// What long-running commands (`serve`, `worker`) log when neither variable
/// is set: their own progress (reloads, connections) and every library's
/// warnings.
const SERVER_LOG: &str = "taskweave=info,warn";

/// Logs go to stderr, filtered by `TASKWEAVE_LOG`, else `RUST_LOG` (both in
/// `tracing`'s `EnvFilter` syntax: `info`, `taskweave=debug,sqlx=warn`),
/// else `default`.
fn init_tracing(default: &str) {
    let filter = ["TASKWEAVE_LOG", "RUST_LOG"]
        .into_iter()
        .find_map(|var| std::env::var(var).ok().filter(|v| !v.trim().is_empty()).map(|_| var))
        .and_then(|var| tracing_subscriber::EnvFilter::try_from_env(var).ok())
        .unwrap_or_else(|| tracing_subscriber::EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(|| LogWriter)
        .try_init();
}

/// stderr for logs, dropping what cannot be written: a log line must never
/// stop the engine (a failed write makes `tracing-subscriber` report it with
/// `eprintln!`, which panics on the thread that logged).
struct LogWriter;

impl std::io::Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let _ = std::io::stderr().write_all(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        let _ = std::io::stderr().flush();
        Ok(())
    }
}

/// Load the configured workflow folders into the engine's registry (off the
/// async threads) and log each finding of the files that fail; returns the
/// load report.
pub(crate) async fn load_workflows(engine: &crate::engine::Engine) -> anyhow::Result<crate::reload::ReloadReport> {
    let registry = std::sync::Arc::clone(engine.registry());
    let report = tokio::task::spawn_blocking(move || registry.load_all()).await?;
    for f in engine.registry().folder_status().iter().filter(|f| !f.is_ok()) {
        tracing::warn!("workflow folder {} is {}: no workflows load from it", f.path, f.state.as_str());
    }
    for f in engine.registry().status().iter().filter(|f| !f.last_attempt.ok) {
        for d in &f.last_attempt.diagnostics {
            tracing::warn!("{}:{}:{}: {} [{}]", d.file, d.span.start.line, d.span.start.column, d.message, d.code);
        }
    }
    let registry = engine.registry();
    let folders: Vec<String> = registry.folders().iter().map(|f| f.display().to_string()).collect();
    tracing::info!("{} workflow(s) loaded from {}", registry.names().len(), folders.join(", "));
    Ok(report)
}

/// Print a configuration error (positioned, with the source line) and return exit status 2.
pub(crate) fn config_error(e: &crate::config::ConfigError) -> ExitCode {
    match e {
        crate::config::ConfigError::Invalid { diagnostic, text } => {
            use std::io::IsTerminal;
            eprintln!("{}", crate::diag::render_human(diagnostic, Some(text), std::io::stderr().is_terminal()));
        }
        other => eprintln!("error: {other}"),
    }
    ExitCode::from(2)
}
