//! The command line: argument parsing and glue. Exit codes are decided here,
//! in one place: 0 success, 1 invalid / failed, 2 usage or I/O error.

mod validate;

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
pub enum GraphFormat {
    Mermaid,
    Dot,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Validate workflow files and folders.
    Validate {
        #[arg(required = true)]
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
        file: PathBuf,
        #[arg(long, value_enum, default_value = "mermaid")]
        format: GraphFormat,
    },
    /// Explain a diagnostic code, with an example and its fix.
    Explain {
        /// A code such as `unknown-parent`; omit to list all codes.
        code: Option<String>,
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
    match run(cli) {
        Ok(code) => code,
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
        Command::Graph { file, format } => validate::graph(&file, format),
        Command::Explain { code } => Ok(validate::explain(code.as_deref())),
    }
}
