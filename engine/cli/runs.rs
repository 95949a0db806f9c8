//! `taskweave runs`: list, show and cancel recorded runs.

use super::OutputFormat;
use super::report::{human_result, json_result};
use super::run::usage;
use crate::config::Config;
use crate::run::RunStatus;
use crate::store::{RunFilter, Store};
use std::path::Path;
use std::process::ExitCode;

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
    /// Run a failed, timed-out or cancelled run again as a new run of the same pinned definition: the tasks that
    /// succeeded keep their outputs, the others run; followed to its end like `run`.
    Retry {
        id: String,
        /// Run this task and every task below it again too.
        #[arg(long, value_name = "TASK")]
        from: Option<String>,
        #[arg(long, value_enum, default_value = "human")]
        format: OutputFormat,
    },
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
        RunsCommand::Show { id, .. } | RunsCommand::Cancel { id } | RunsCommand::Retry { id, .. } => {
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
        RunsCommand::Retry { id, from, format } => {
            let id = match resolve_id(&store, &id).await {
                Ok(i) => i,
                Err(c) => return Ok(c),
            };
            store.close().await;
            retry(config, &id, from.as_deref(), format).await
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

/// `runs retry`: start the retry, follow it to its end, print it as `run`
/// does. Exit 0 when it succeeded, 1 when it did not, 2 when it could not
/// start.
async fn retry(config: Config, id: &str, from: Option<&str>, format: OutputFormat) -> anyhow::Result<ExitCode> {
    let engine = match crate::engine::EngineBuilder::new().config(config).build().await {
        Ok(e) => e,
        Err(e) => return Ok(usage(e)),
    };
    let started = match engine.retry(id, from).await {
        Ok(s) => s,
        Err(e) => {
            engine.shutdown().await;
            return Ok(usage(e));
        }
    };
    if format == OutputFormat::Human {
        println!("run {} retries run {id}", started.run_id);
    }
    let r = loop {
        match engine.get_result(&started.run_id, Some(std::time::Duration::from_secs(30))).await {
            Ok(r) if r.status.is_terminal() => break r,
            Ok(_) => {}
            Err(e) => {
                engine.shutdown().await;
                return Ok(usage(e));
            }
        }
    };
    match format {
        OutputFormat::Json => println!("{}", serde_json::to_string_pretty(&r)?),
        OutputFormat::Human => print!("{}", human_result(&r, None)),
    }
    engine.shutdown().await;
    Ok(if r.status == RunStatus::Succeeded { ExitCode::SUCCESS } else { ExitCode::from(1) })
}
