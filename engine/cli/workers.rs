//! `taskweave workers [--backend B] [--format human|json]`: the live workers
//! of every configured backend (or of one), and the tasks waiting for one.
//! Exit 0 when every backend asked answered, 1 when one could not be asked,
//! 2 for a backend that is not configured or not built in.

use super::OutputFormat;
use crate::backend::workers::{Surveyed, WorkerReport};
use crate::backend::{BackendError, WorkerInfo};
use crate::config::Config;
use std::fmt::Write as _;
use std::path::Path;
use std::process::ExitCode;
use time::OffsetDateTime;

#[derive(Debug, clap::Args)]
pub struct WorkersArgs {
    /// Only this backend (a `[backends.NAME]` of the configuration).
    #[arg(long)]
    pub backend: Option<String>,
    #[arg(long, value_enum, default_value = "human")]
    pub format: OutputFormat,
}

/// What a local backend's entry says here: its runs execute in whichever
/// process starts them, not in this one.
const LOCAL_NOTE: &str =
    "runs execute in the process that starts them (`taskweave serve`, `taskweave run`); GET /v1/workers of a server lists it";

pub async fn workers(args: WorkersArgs, config: Option<&Path>) -> anyhow::Result<ExitCode> {
    let config = match Config::load(config) {
        Ok(c) => c,
        Err(e) => return Ok(super::config_error(&e)),
    };
    let names = config.backend_names();
    let asked: Vec<String> = match &args.backend {
        Some(b) if config.kind_of(b).is_none() => {
            let hint = crate::diag::did_you_mean(b, names.iter().map(String::as_str))
                .map(|s| format!(" (did you mean `{s}`?)"))
                .unwrap_or_default();
            eprintln!("error: no backend `{b}`{hint}; configured: {}", names.join(", "));
            return Ok(ExitCode::from(2));
        }
        Some(b) => vec![b.clone()],
        None => names,
    };
    let registry = std::sync::Arc::new(crate::reload::Registry::new(Vec::new(), crate::engine::validate_options(&config)));
    let asks = asked.iter().map(|name| {
        let (config, registry) = (&config, &registry);
        async move {
            let kind = config.kind_of(name).unwrap_or("?").to_string();
            let report = if kind == "local" {
                let mut r = WorkerReport::new(name, &kind);
                r.note = Some(LOCAL_NOTE.into());
                Ok(r)
            } else if !crate::backend::is_built(&kind) {
                Err(BackendError::Permanent { backend: name.clone(), reason: crate::backend::not_built(&kind) })
            } else {
                match super::doctor::open_backend(config, name, &kind, registry).await {
                    Ok(b) => {
                        let s = crate::backend::workers::ask(std::sync::Arc::clone(&b)).await;
                        b.shutdown().await;
                        s.report
                    }
                    Err(e) => Err(e),
                }
            };
            Surveyed { backend: name.clone(), kind, report }
        }
    });
    let surveyed = futures::future::join_all(asks).await;
    match args.format {
        OutputFormat::Json => {
            let entries: Vec<_> = surveyed.iter().map(crate::api::workers_entry).collect();
            println!("{}", serde_json::to_string_pretty(&serde_json::json!({"backends": entries}))?);
        }
        OutputFormat::Human => print!("{}", human(&surveyed, OffsetDateTime::now_utc())),
    }
    if args.backend.is_some()
        && let Some(Surveyed { report: Err(BackendError::Permanent { reason, .. }), .. }) = surveyed.first()
        && reason.contains("not built into this binary")
    {
        return Ok(ExitCode::from(2));
    }
    Ok(if surveyed.iter().all(|s| s.report.is_ok()) { ExitCode::SUCCESS } else { ExitCode::from(1) })
}

/// The survey as text: a heading per backend, a table of its workers.
fn human(surveyed: &[Surveyed], now: OffsetDateTime) -> String {
    let mut out = String::new();
    for (i, s) in surveyed.iter().enumerate() {
        if i > 0 {
            out.push('\n');
        }
        let r = match &s.report {
            Ok(r) => r,
            Err(e) => {
                let _ = writeln!(out, "backend {} ({}): cannot be asked: {e}", s.backend, s.kind);
                continue;
            }
        };
        let queued: u64 = r.queued.values().sum();
        let mut head = format!("backend {} ({}): {} live worker(s)", s.backend, s.kind, r.workers.len());
        if queued > 0 {
            let per: Vec<String> = r.queued.iter().filter(|(_, n)| **n > 0).map(|(q, n)| format!("{q}: {n}")).collect();
            let _ = write!(head, ", {queued} task(s) queued ({})", per.join(", "));
        }
        let _ = writeln!(out, "{head}");
        if let Some(note) = &r.note {
            let _ = writeln!(out, "  {note}");
        }
        for (q, n) in r.unserved() {
            let _ = writeln!(out, "  warning: {n} task(s) queued in `{q}` and no live worker takes from it");
        }
        if !r.workers.is_empty() {
            out.push_str(&table(&r.workers, now));
        }
    }
    out
}

fn table(workers: &[WorkerInfo], now: OffsetDateTime) -> String {
    let header = ["RUNTIME", "HOST", "PID", "QUEUES", "CONCURRENCY", "RUNNING", "UP", "LAST HEARTBEAT", "ID"];
    let or_dash = |v: Option<u32>| v.map_or("-".to_string(), |n| n.to_string());
    let rows: Vec<[String; 9]> = workers
        .iter()
        .map(|w| {
            [
                w.runtime.clone(),
                w.host.clone(),
                or_dash(w.pid),
                if w.queues.is_empty() { "*".into() } else { w.queues.join(",") },
                or_dash(w.concurrency),
                or_dash(w.running),
                w.started_at.map_or("-".into(), |t| ago(now, t, false)),
                w.last_heartbeat.map_or("-".into(), |t| ago(now, t, true)),
                w.id.clone(),
            ]
        })
        .collect();
    let mut widths = header.map(str::len);
    for r in &rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: Vec<&str>| {
        let mut l = String::from(" ");
        for (i, c) in cells.iter().enumerate() {
            let _ = write!(l, " {c:<w$}", w = widths[i]);
        }
        let _ = writeln!(out, "{}", l.trim_end());
    };
    line(header.to_vec());
    for r in &rows {
        line(r.iter().map(String::as_str).collect());
    }
    out
}

/// A time before `now` in words: `3s ago` (or `3s` for a duration so far).
fn ago(now: OffsetDateTime, t: OffsetDateTime, suffix: bool) -> String {
    let secs = (now - t).whole_seconds().max(0) as u64;
    let text = match secs {
        s if s < 120 => format!("{s}s"),
        s if s < 7200 => format!("{}m", s / 60),
        s if s < 172_800 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86_400),
    };
    if suffix { format!("{text} ago") } else { text }
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    #[test]
    fn the_human_survey_shows_workers_queues_and_errors() {
        let now = datetime!(2026-12-07 10:00:00 UTC);
        let mut r = WorkerReport::new("pg", "postgres");
        r.workers.push(WorkerInfo {
            id: "h:1:x".into(),
            runtime: "taskweave".into(),
            host: "h".into(),
            pid: Some(1),
            queues: vec!["default".into()],
            concurrency: Some(8),
            running: Some(2),
            started_at: Some(datetime!(2026-12-07 09:00:00 UTC)),
            last_heartbeat: Some(datetime!(2026-12-07 09:59:57 UTC)),
        });
        r.queued.insert("default".into(), 1);
        r.queued.insert("gpu".into(), 4);
        let surveyed = vec![
            Surveyed {
                backend: "celery".into(),
                kind: "celery".into(),
                report: Err(BackendError::Unavailable { backend: "celery".into(), reason: "connection refused".into() }),
            },
            Surveyed { backend: "pg".into(), kind: "postgres".into(), report: Ok(r) },
        ];
        let text = human(&surveyed, now);
        assert_eq!(
            text,
            "backend celery (celery): cannot be asked: backend `celery` is unavailable: connection refused\n\
             \n\
             backend pg (postgres): 1 live worker(s), 5 task(s) queued (default: 1, gpu: 4)\n  \
             warning: 4 task(s) queued in `gpu` and no live worker takes from it\n  \
             RUNTIME   HOST PID QUEUES  CONCURRENCY RUNNING UP  LAST HEARTBEAT ID\n  \
             taskweave h    1   default 8           2       60m 3s ago         h:1:x\n"
        );
    }
}
