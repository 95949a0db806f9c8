//! `taskweave config`: the effective configuration, every key with its
//! value and where it came from (the default, the file, an environment
//! variable). Secrets are masked: API keys show as `***`, passwords in URLs
//! too.

use super::OutputFormat;
use crate::config::Config;
use crate::config::keys::{Entry, effective};
use serde_json::{Value, json};
use std::io::Write;
use std::path::Path;
use std::process::ExitCode;

pub fn config(format: OutputFormat, path: Option<&Path>) -> anyhow::Result<ExitCode> {
    let c = match Config::load(path) {
        Ok(c) => c,
        Err(e) => return Ok(super::config_error(&e)),
    };
    let entries = effective(&c, &|k: &str| std::env::var(k).ok());
    let file = c.path.as_ref().map(|p| p.display().to_string());
    let chosen_by = match path {
        None if file.is_some() => "found in the working folder",
        None => "none found in the working folder",
        Some(p) if std::env::var_os("TASKWEAVE_CONFIG").is_some_and(|v| Path::new(&v) == p) && !given_as_flag() => "env TASKWEAVE_CONFIG",
        Some(_) => "flag --config",
    };
    let mut out = std::io::stdout().lock();
    match format {
        OutputFormat::Json => {
            let keys: Vec<Value> = entries.iter().map(entry_json).collect();
            let doc = json!({"file": file, "file_from": chosen_by, "keys": keys});
            writeln!(out, "{}", serde_json::to_string_pretty(&doc)?)?;
        }
        OutputFormat::Human => {
            match &file {
                Some(f) => writeln!(out, "# configuration file: {f} ({chosen_by})")?,
                None => writeln!(out, "# configuration file: none; defaults and environment only")?,
            }
            let kw = entries.iter().map(|e| e.key.len()).max().unwrap_or(0);
            let shown: Vec<String> = entries.iter().map(|e| value_text(&e.value)).collect();
            let vw = shown.iter().map(|s| s.chars().count()).filter(|n| *n <= 48).max().unwrap_or(0);
            for (e, v) in entries.iter().zip(&shown) {
                writeln!(out, "{:<kw$} = {:<vw$}  # {}", e.key, v, e.source)?;
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Whether `--config` was on the command line (else `TASKWEAVE_CONFIG` gave the path).
fn given_as_flag() -> bool {
    std::env::args().any(|a| a == "--config" || a.starts_with("--config="))
}

fn entry_json(e: &Entry) -> Value {
    let mut v = json!({"key": e.key, "value": e.value, "source": e.source.kind()});
    if let Some(from) = e.source.origin() {
        v["from"] = json!(from);
    }
    v
}

/// A value as TOML would write it; `(unset)` for none.
fn value_text(v: &Value) -> String {
    match v {
        Value::Null => "(unset)".into(),
        other => other.to_string(),
    }
}
