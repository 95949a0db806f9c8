//! `taskweave migration status`: the rollout dashboard from the run
//! store (runs per backend, success rates, durations, runs per flag
//! variant, fallbacks, flag evaluation errors).

use super::OutputFormat;
use crate::config::Config;
use crate::engine::{Engine, RolloutReport};
use std::path::Path;
use std::process::ExitCode;

#[derive(Debug, clap::Subcommand)]
pub enum RolloutCommand {
    /// Runs per backend and flag variant over a recent window.
    Status {
        /// The window counted: runs created within it (`24h`, `30m`, `7d`).
        #[arg(long, default_value = "24h")]
        since: String,
        /// Count one workflow only.
        #[arg(long)]
        workflow: Option<String>,
        #[arg(long, value_enum, default_value = "human")]
        format: OutputFormat,
    },
}

pub async fn rollout(cmd: RolloutCommand, config: Option<&Path>) -> anyhow::Result<ExitCode> {
    let RolloutCommand::Status { since, workflow, format } = cmd;
    let window = match humantime::parse_duration(since.trim()) {
        Ok(d) if !d.is_zero() => d,
        _ => {
            eprintln!("error: --since must be a duration such as `24h` or `30m`, not `{since}`");
            return Ok(ExitCode::from(2));
        }
    };
    let config = match Config::load(config) {
        Ok(c) => c,
        Err(e) => return Ok(super::config_error(&e)),
    };
    // Looking creates nothing: without a store there is no history yet.
    let builder = Engine::builder().watch_flags(false);
    let builder = match crate::store::Store::sqlite_path(&config.engine.store) {
        Some(path) if !path.exists() => {
            eprintln!("no run history at {} yet", path.display());
            builder.without_store()
        }
        _ => builder,
    };
    let engine = match builder.config(config).build().await {
        Ok(e) => e,
        Err(e) => {
            eprintln!("error: {e}");
            return Ok(ExitCode::from(2));
        }
    };
    let report = engine.rollout_status(window, workflow).await;
    engine.shutdown().await;
    let mut report = match report {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: {e}");
            return Ok(ExitCode::from(1));
        }
    };
    report.window = since.trim().to_string();
    match format {
        OutputFormat::Json => println!("{}", serde_json::to_string_pretty(&report)?),
        OutputFormat::Human => print!("{}", human(&report)),
    }
    Ok(ExitCode::SUCCESS)
}

fn opt<T: std::fmt::Display>(v: Option<T>, unit: &str) -> String {
    v.map_or_else(|| "-".to_string(), |x| format!("{x}{unit}"))
}

/// The dashboard as a text table.
pub fn human(r: &RolloutReport) -> String {
    let s = &r.stats;
    let scope = s.workflow.as_deref().map(|w| format!(" of workflow {w}")).unwrap_or_default();
    let mut out = format!("{} run(s){scope} in the last {}\n\n", s.total, r.window);
    if !s.backends.is_empty() {
        out.push_str(&format!(
            "{:<16} {:>7} {:>7} {:>9} {:>7} {:>9} {:>9} {:>9}\n",
            "backend", "runs", "share", "success", "active", "p50", "p95", "fallback"
        ));
        for b in &s.backends {
            out.push_str(&format!(
                "{:<16} {:>7} {:>6.1}% {:>9} {:>7} {:>9} {:>9} {:>9}\n",
                b.backend,
                b.runs,
                b.share,
                opt(b.success_rate.map(|x| format!("{x:.1}")), "%"),
                b.active,
                opt(b.p50_ms, "ms"),
                opt(b.p95_ms, "ms"),
                b.fallbacks_in
            ));
        }
        out.push('\n');
    }
    if !s.variants.is_empty() {
        out.push_str(&format!("{:<28} {:<12} {:<14} {:<16} {:>7} {:>9}\n", "flag", "variant", "reason", "backend", "runs", "success"));
        for v in &s.variants {
            let rate = if v.runs == 0 { 0.0 } else { v.succeeded as f64 * 100.0 / v.runs as f64 };
            out.push_str(&format!(
                "{:<28} {:<12} {:<14} {:<16} {:>7} {:>8.1}%\n",
                v.flag,
                v.variant.as_deref().unwrap_or("-"),
                v.reason.as_deref().unwrap_or("-"),
                v.backend,
                v.runs,
                rate
            ));
        }
        out.push('\n');
    }
    out.push_str(&format!("fallbacks: {}   flag evaluation errors: {}\n", s.fallbacks, s.flag_errors));
    if let Some(f) = &r.flags {
        let state = if f.ok { "ok".to_string() } else { format!("{} error(s); serving the last good flags", f.diagnostics.len()) };
        out.push_str(&format!("flags: {} (namespace {}): {state}\n", f.source, f.namespace));
    }
    out
}
