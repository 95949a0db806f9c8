//! `taskweave validate`, `graph` and `explain`.

use super::{DiagFormat, GraphFormat};
use crate::diag::{self, Code, Diagnostic};
use crate::validate::{self, Options};
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// Whether a file found in a folder is plainly not a workflow: the
/// configuration, or a YAML/TOML file that never mentions `tasks` (a Flipt
/// features file, say). A workflow being written always does, and a file
/// named on the command line is always checked.
fn not_a_workflow(c: &validate::Checked) -> bool {
    Path::new(&c.file).file_name().is_some_and(|n| n == crate::config::FILE_NAME) || c.text.as_deref().is_some_and(|t| !t.contains("tasks"))
}

pub fn validate(paths: &[PathBuf], format: DiagFormat, deny_warnings: bool, config: Option<&Path>) -> anyhow::Result<ExitCode> {
    // With a configuration (given, or ./taskweave.toml), `backend` names are checked against it.
    let cfg = match crate::config::Config::load(config) {
        Ok(c) => c,
        Err(e) => return Ok(super::config_error(&e)),
    };
    let opts = crate::engine::validate_options(&cfg);
    // No paths: the configured workflow folders.
    let defaulted = paths.is_empty();
    let paths: Vec<PathBuf> = if defaulted { cfg.engine.workflows.clone() } else { paths.to_vec() };
    for p in &paths {
        if !p.exists() {
            let why = if defaulted { " (a configured workflow folder; give files or folders, or set `[engine] workflows`)" } else { "" };
            eprintln!("error: {}: no such file or folder{why}", p.display());
            return Ok(ExitCode::from(2));
        }
    }
    let checked = match validate::check_paths(&paths, &opts) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return Ok(ExitCode::from(2));
        }
    };
    let named: Vec<String> = paths.iter().filter(|p| p.is_file()).map(|p| p.display().to_string()).collect();
    let (skipped, checked): (Vec<_>, Vec<_>) = checked.into_iter().partition(|c| !named.contains(&c.file) && not_a_workflow(c));
    let all: Vec<&Diagnostic> = checked.iter().flat_map(|c| c.diagnostics.iter()).collect();
    let errors = all.iter().filter(|d| d.is_error()).count();
    let warnings = all.len() - errors;
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    match format {
        DiagFormat::Json => {
            let owned: Vec<Diagnostic> = all.iter().map(|d| (*d).clone()).collect();
            writeln!(out, "{}", diag::render_json(&owned))?;
        }
        DiagFormat::Github => {
            for d in &all {
                writeln!(out, "{}", diag::render_github(d))?;
            }
        }
        DiagFormat::Human => {
            let color = std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none();
            for c in &checked {
                // One line index per file, however many diagnostics it has.
                let source = c.text.as_deref().filter(|_| !c.diagnostics.is_empty()).map(diag::Source::new);
                for d in &c.diagnostics {
                    writeln!(out, "{}\n", diag::render_human_in(d, source.as_ref(), color))?;
                }
            }
            let files = checked.len();
            let mut summary = format!(
                "{files} file{} checked: {errors} error{}, {warnings} warning{}",
                if files == 1 { "" } else { "s" },
                if errors == 1 { "" } else { "s" },
                if warnings == 1 { "" } else { "s" }
            );
            if !skipped.is_empty() {
                let names: Vec<&str> = skipped.iter().map(|c| c.file.as_str()).collect();
                summary.push_str(&format!("; {} skipped, not workflows (no `tasks`): {}", skipped.len(), names.join(", ")));
            }
            writeln!(out, "{summary}")?;
        }
    }
    let failed = errors > 0 || (deny_warnings && warnings > 0);
    Ok(if failed { ExitCode::from(1) } else { ExitCode::SUCCESS })
}

/// `taskweave graph FILE|NAME`: a file, or a workflow name from the
/// configured folders (as `taskweave run` takes them).
pub fn graph(target: &str, format: GraphFormat, config: Option<&Path>) -> anyhow::Result<ExitCode> {
    let checked = if super::run::looks_like_file(target) {
        match validate::check_file(Path::new(target), &Options::default()) {
            Ok(c) => c,
            Err(e) => {
                eprintln!("error: {target}: {e}");
                return Ok(ExitCode::from(2));
            }
        }
    } else {
        let cfg = match crate::config::Config::load(config) {
            Ok(c) => c,
            Err(e) => return Ok(super::config_error(&e)),
        };
        let folders: Vec<_> = cfg.engine.workflows.iter().filter(|f| f.is_dir()).cloned().collect();
        let all = validate::check_paths(&folders, &Options::default())?;
        let names: Vec<String> = all.iter().filter_map(|c| c.name.as_ref().map(|(n, _)| n.clone())).collect();
        match all.into_iter().find(|c| c.name.as_ref().is_some_and(|(n, _)| n == target)) {
            Some(c) => c,
            None => {
                let hint = diag::did_you_mean(target, names.iter().map(String::as_str))
                    .map(|s| format!(" (did you mean `{s}`?)"))
                    .unwrap_or_default();
                eprintln!("error: no workflow `{target}` in the configured folders{hint}");
                return Ok(ExitCode::from(2));
            }
        }
    };
    let Some(wf) = checked.workflow else {
        let source = checked.text.as_deref().map(diag::Source::new);
        for d in &checked.diagnostics {
            eprintln!("{}\n", diag::render_human_in(d, source.as_ref(), false));
        }
        return Ok(ExitCode::from(1));
    };
    print!(
        "{}",
        match format {
            GraphFormat::Mermaid => wf.mermaid(),
            GraphFormat::Dot => wf.dot(),
        }
    );
    Ok(ExitCode::SUCCESS)
}

pub fn explain(code: Option<&str>) -> ExitCode {
    match code {
        None => {
            for c in Code::ALL {
                println!("{:<20} {:<8} {}", c.as_str(), c.severity().as_str(), c.summary());
            }
            ExitCode::SUCCESS
        }
        Some(name) => match Code::parse(name) {
            Some(c) => {
                print!("{}", c.explain());
                if c == Code::UnknownHelper {
                    // The helper set lives with the templates, above the codes.
                    print!(
                        "\nThe helpers (examples with input {}):\n\n{}",
                        crate::plan::helpers::EXAMPLE_INPUT,
                        crate::plan::helpers::helper_table()
                    );
                }
                ExitCode::SUCCESS
            }
            None => {
                let help = diag::did_you_mean(name, Code::ALL.iter().map(|c| c.as_str()))
                    .map(|s| format!(" (did you mean `{s}`?)"))
                    .unwrap_or_default();
                eprintln!("error: unknown code `{name}`{help}; `taskweave explain` lists them");
                ExitCode::from(2)
            }
        },
    }
}
