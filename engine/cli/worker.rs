//! `taskweave worker --backend NAME`: execute the tasks of a distributed
//! backend (PostgreSQL, Celery, Temporal) until SIGTERM or Ctrl-C.

use crate::backend::WorkerOptions;
use crate::config::Config;
use crate::engine::EngineBuilder;
use std::path::Path;
use std::process::ExitCode;
use tokio_util::sync::CancellationToken;

#[derive(Debug, clap::Args)]
pub struct WorkerArgs {
    /// The backend to work for: a `[backends.NAME]` of the configuration.
    #[arg(long, env = "TASKWEAVE_WORKER_BACKEND")]
    pub backend: String,
    /// Tasks executed at once by this worker.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..=4096))]
    pub concurrency: u32,
    /// A queue to take tasks from (repeatable); default: the backend's default queue.
    #[arg(long = "queue")]
    pub queues: Vec<String>,
}

pub async fn worker(args: WorkerArgs, config: Option<&Path>) -> anyhow::Result<ExitCode> {
    let config = match Config::load(config) {
        Ok(c) => c,
        Err(e) => return Ok(super::config_error(&e)),
    };
    let Some(kind) = config.kind_of(&args.backend).map(str::to_string) else {
        let names = config.backend_names();
        let hint = crate::diag::did_you_mean(&args.backend, names.iter().map(String::as_str))
            .map(|s| format!(" (did you mean `{s}`?)"))
            .unwrap_or_default();
        eprintln!("error: no backend `{}`{hint}; configured: {}", args.backend, names.join(", "));
        return Ok(ExitCode::from(2));
    };
    if !crate::backend::is_built(&kind) {
        eprintln!("error: backend `{}`: {}", args.backend, crate::backend::not_built(&kind));
        return Ok(ExitCode::from(2));
    }
    let engine = match EngineBuilder::new().config(config).build().await {
        Ok(e) => e,
        Err(e) => {
            eprintln!("error: {e}");
            return Ok(ExitCode::from(2));
        }
    };
    super::load_workflows(&engine).await?;
    let Some(backend) = engine.backends().get(&args.backend).cloned() else {
        eprintln!("error: backend `{}` could not be started", args.backend);
        return Ok(ExitCode::from(2));
    };
    let stop = CancellationToken::new();
    let terminated = super::serve::terminated();
    tokio::spawn({
        let stop = stop.clone();
        async move {
            terminated.await;
            stop.cancel();
        }
    });
    let opts = WorkerOptions { concurrency: args.concurrency as usize, queues: args.queues };
    eprintln!("taskweave worker for backend `{}` ({kind}), concurrency {}", args.backend, opts.concurrency);
    let outcome = backend.work(opts, stop).await;
    engine.shutdown().await;
    match outcome {
        Ok(()) => Ok(ExitCode::SUCCESS),
        Err(e) => {
            eprintln!("error: {e}");
            Ok(ExitCode::from(2))
        }
    }
}
