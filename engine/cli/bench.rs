//! `taskweave bench`: run a workload and print its figures.

use super::OutputFormat;
use crate::bench::workloads::{self, Workload};
use crate::config::Config;
use crate::engine::EngineBuilder;
use std::path::Path;
use std::process::ExitCode;

#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    #[command(subcommand)]
    pub workload: BenchWorkload,
    /// Backend to run on (default: the configured default).
    #[arg(long, global = true)]
    pub backend: Option<String>,
    /// Measured repetitions (after one warm-up).
    #[arg(long, global = true, default_value_t = 5)]
    pub repeat: usize,
    /// Store URL for the run history (default: a fresh SQLite file in a temp folder).
    #[arg(long, global = true, conflicts_with = "no_store")]
    pub store: Option<String>,
    /// Keep no run history (measures the scheduler alone).
    #[arg(long, global = true)]
    pub no_store: bool,
    #[arg(long, global = true, value_enum, default_value = "human")]
    pub format: OutputFormat,
    /// Start N `taskweave worker --backend B` processes for the run (for backends with workers); stopped by PID at the end.
    #[arg(long, global = true, default_value_t = 0)]
    pub workers: usize,
    /// Concurrency of each worker started by `--workers`.
    #[arg(long, global = true, default_value_t = 16)]
    pub worker_concurrency: u32,
    /// Concurrent callers submitting the runs of a repetition (`runs` workload).
    #[arg(long, global = true, default_value_t = 1)]
    pub submitters: usize,
    /// Put this `when:` condition on every task (`chain`, `fanout`, `runs`), e.g. 'true'.
    #[arg(long, global = true)]
    pub when: Option<String>,
}

#[derive(Debug, clap::Subcommand)]
pub enum BenchWorkload {
    /// A chain of N no-op tasks (default 100).
    Chain { n: Option<usize> },
    /// N independent no-op tasks and one join (default 1000).
    Fanout { n: Option<usize> },
    /// N concurrent runs of a -> (b, c) (default 1000).
    Runs { n: Option<usize> },
    /// Hot reload: N edits of a watched workflow file, each timed from the write to the new version serving (default 100).
    Reload {
        n: Option<usize>,
        /// The watcher's debounce.
        #[arg(long, default_value = "50ms", value_parser = humantime::parse_duration)]
        debounce: std::time::Duration,
    },
    /// HTTP API throughput: N runs of a no-op workflow, each POSTed and long-polled, by C concurrent clients.
    Api {
        n: Option<usize>,
        #[arg(long, default_value_t = 32)]
        concurrency: usize,
    },
    /// Conditions: N evaluations of a compiled `when:` expression (default 100,000) against a task's context.
    Condition {
        n: Option<usize>,
        #[arg(long, default_value = "size(tasks.split.output.pages) > 0 && input.mode == \"full\"")]
        expr: String,
    },
    /// Validation: FILES generated workflows of TASKS tasks each, plus one 10,000-task workflow.
    Validate {
        #[arg(long, default_value_t = 1000)]
        files: usize,
        #[arg(long, default_value_t = 50)]
        tasks: usize,
    },
}

pub async fn bench(args: BenchArgs, config: Option<&Path>) -> anyhow::Result<ExitCode> {
    let config_path = config;
    let config = match Config::load(config) {
        Ok(c) => c,
        Err(e) => return Ok(super::config_error(&e)),
    };
    let (w, n) = match args.workload {
        BenchWorkload::Validate { files, tasks } => return validate(files, tasks, args.repeat, args.format),
        BenchWorkload::Condition { n, expr } => return condition(&expr, n.unwrap_or(100_000).max(1), args.repeat, args.format),
        BenchWorkload::Api { n, concurrency } => return api(n.unwrap_or(2000), concurrency, args.repeat, args.format).await,
        BenchWorkload::Reload { n, debounce } => return reload(n.unwrap_or(100).max(1), debounce, args.format).await,
        BenchWorkload::Chain { n } => (Workload::Chain, n),
        BenchWorkload::Fanout { n } => (Workload::Fanout, n),
        BenchWorkload::Runs { n } => (Workload::Runs, n),
    };
    let n = n.unwrap_or(w.default_size()).max(1);
    let tmp = tempfile::tempdir()?;
    let store = args.store.clone().unwrap_or_else(|| format!("sqlite://{}", tmp.path().join("bench.db").display()));
    let backend = args.backend.clone().unwrap_or_else(|| config.engine.default_backend.clone());
    let builder = EngineBuilder::new().config(config);
    let (builder, store) =
        if args.no_store { (builder.without_store(), "none".to_string()) } else { (builder.store(store.clone()), store) };
    let engine = match builder.build().await {
        Ok(e) => e,
        Err(e) => {
            eprintln!("error: {e}");
            return Ok(ExitCode::from(2));
        }
    };
    let workers = match workloads::WorkerProcesses::start(args.workers, &backend, args.worker_concurrency, config_path) {
        Ok(w) => w,
        Err(e) => {
            eprintln!("error: starting workers: {e}");
            engine.shutdown().await;
            return Ok(ExitCode::from(2));
        }
    };
    let report = workloads::run_with(&engine, w, n, &backend, args.repeat.max(1), args.submitters.max(1), args.when.as_deref()).await;
    workers.stop();
    engine.shutdown().await;
    let report = match report {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: {e}");
            return Ok(ExitCode::from(1));
        }
    };
    match args.format {
        OutputFormat::Json => println!("{}", serde_json::to_string_pretty(&report)?),
        OutputFormat::Human => {
            println!(
                "{:?} {} on {} ({} tasks per repetition, {} repetitions, store {})",
                report.workload, report.size, report.backend, report.tasks_per_rep, report.repeat, store
            );
            println!("  wall time     median {:.2} ms  (min {:.2}, max {:.2})", report.median_ms, report.min_ms, report.max_ms);
            println!("  throughput    {:.0} tasks/s", report.tasks_per_sec);
            println!("  per task      {:.1} µs", report.per_task_us);
            if args.workers > 0 {
                println!("  workers       {} processes x concurrency {}", args.workers, args.worker_concurrency);
            }
            println!("  compile       {:.2} ms (validation + plan, once)", report.compile_ms);
            println!("  peak RSS      {:.1} MiB", report.peak_rss_mb);
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn validate(files: usize, tasks: usize, repeat: usize, format: OutputFormat) -> anyhow::Result<ExitCode> {
    let tmp = tempfile::tempdir()?;
    let r = crate::bench::validate::bench_validate_with(tmp.path(), files, tasks, repeat)?;
    match format {
        OutputFormat::Json => println!("{}", serde_json::to_string_pretty(&r)?),
        OutputFormat::Human => {
            println!(
                "validate {} files x {} tasks ({:.1} MiB, {} threads, {} repetitions)",
                r.files,
                r.tasks_per_file,
                r.folder_bytes as f64 / 1048576.0,
                r.threads,
                r.repeat
            );
            println!("  folder        median {:.1} ms  (min {:.1}, max {:.1})", r.folder.median_ms, r.folder.min_ms, r.folder.max_ms);
            println!("  throughput    {:.0} files/s, {:.0} tasks/s", r.files_per_sec, r.tasks_per_sec);
            println!(
                "  {}-task file  median {:.1} ms  (min {:.1}, max {:.1})",
                r.large_tasks, r.large.median_ms, r.large.min_ms, r.large.max_ms
            );
            println!("  diagnostics   {}", r.diagnostics);
            println!("  peak RSS      {:.1} MiB", r.peak_rss_mb);
        }
    }
    Ok(if r.diagnostics == 0 { ExitCode::SUCCESS } else { ExitCode::from(1) })
}

/// `taskweave bench reload [N]`: edit a watched file N times, time each until it serves.
async fn reload(edits: usize, debounce: std::time::Duration, format: OutputFormat) -> anyhow::Result<ExitCode> {
    let report = match tokio::task::spawn_blocking(move || crate::bench::reload::reload_latency_with(edits, debounce)).await? {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: {e}");
            return Ok(ExitCode::from(1));
        }
    };
    match format {
        OutputFormat::Json => println!("{}", serde_json::to_string_pretty(&report)?),
        OutputFormat::Human => {
            println!(
                "reload: {} edits of one watched file ({} files in the folder, debounce {:.0} ms)",
                report.edits, report.files, report.debounce_ms
            );
            println!("  write -> serving   median {:.1} ms  p95 {:.1} ms", report.median_ms, report.p95_ms);
            println!("                     mean {:.1} ms  (min {:.1}, max {:.1})", report.mean_ms, report.min_ms, report.max_ms);
            if report.missed > 0 {
                println!("  missed             {} (not served within {:?})", report.missed, crate::bench::reload::EDIT_TIMEOUT);
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn api(runs: usize, concurrency: usize, repeat: usize, format: OutputFormat) -> anyhow::Result<ExitCode> {
    let b = crate::bench::api::ApiBench { runs, concurrency, repeat: repeat.max(1), store: None };
    let r = match crate::bench::api::api_throughput_with(&b).await {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: {e}");
            return Ok(ExitCode::from(1));
        }
    };
    match format {
        OutputFormat::Json => println!("{}", serde_json::to_string_pretty(&r)?),
        OutputFormat::Human => {
            println!("api: {} runs (POST + long-poll) by {} clients, {} repetitions, store {}", r.runs, r.concurrency, r.repeat, r.store);
            println!("  throughput    median {:.0} runs/s  (min {:.0}, max {:.0})", r.runs_per_sec, r.min_runs_per_sec, r.max_runs_per_sec);
            println!("  latency       p50 {:.2} ms, p99 {:.2} ms", r.latency_p50_ms, r.latency_p99_ms);
            println!("  peak RSS      {:.1} MiB", r.peak_rss_mb);
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn condition(expr: &str, n: usize, repeat: usize, format: OutputFormat) -> anyhow::Result<ExitCode> {
    let (median, rounds) = match workloads::condition_ns(expr, n, repeat.max(1)) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: {e}");
            return Ok(ExitCode::from(2));
        }
    };
    match format {
        OutputFormat::Json => {
            let report =
                serde_json::json!({"workload": "condition", "expr": expr, "evaluations": n, "median_ns": median, "rounds_ns": rounds});
            println!("{}", serde_json::to_string_pretty(&report)?);
        }
        OutputFormat::Human => {
            println!("Condition `{expr}` ({n} evaluations per round, {} rounds)", rounds.len());
            println!("  per evaluation  median {median:.0} ns");
        }
    }
    Ok(ExitCode::SUCCESS)
}
