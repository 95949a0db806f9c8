//! `taskweave flags eval` and `taskweave flags validate`: evaluate a flag
//! for an entity (one query, or a JSON-lines batch), check a features file.

use super::OutputFormat;
use crate::config::Config;
use crate::diag;
use crate::flags::{Context, EvalError, Evaluation, Features, FlagError, FlagSource, FlagType};
use serde::Deserialize;
use serde_json::{Map, Value, json};
use std::io::{BufRead, BufWriter, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

#[derive(Debug, clap::Subcommand)]
pub enum FlagsCommand {
    /// Evaluate a flag for an entity, as Flipt would: the decision, its reason and matched segments.
    Eval(EvalArgs),
    /// Check a Flipt features file.
    Validate {
        file: PathBuf,
        #[arg(long, value_enum, default_value = "human")]
        format: super::DiagFormat,
    },
}

#[derive(Debug, clap::Args)]
pub struct EvalArgs {
    /// The flag key (omit with --queries).
    #[arg(required_unless_present = "queries")]
    pub flag: Option<String>,
    /// The entity id the flag buckets on.
    #[arg(long, required_unless_present = "queries")]
    pub entity: Option<String>,
    /// Context: `key=value`, repeatable.
    #[arg(long = "context", value_name = "KEY=VALUE")]
    pub context: Vec<String>,
    /// A features file (default: `[flags] source` of the configuration).
    #[arg(long)]
    pub file: Option<PathBuf>,
    /// Batch mode: one JSON query a line (`{"flag", "entity_id", "context", "namespace"}`), one JSON answer a line.
    #[arg(long, requires = "file", conflicts_with_all = ["flag", "entity"])]
    pub queries: Option<PathBuf>,
    /// The namespace (default: the configured one, else `default`).
    #[arg(long)]
    pub namespace: Option<String>,
    #[arg(long, value_enum, default_value = "human")]
    pub format: OutputFormat,
}

pub async fn flags(cmd: FlagsCommand, config: Option<&Path>) -> anyhow::Result<ExitCode> {
    match cmd {
        FlagsCommand::Validate { file, format } => validate(&file, format),
        FlagsCommand::Eval(args) => match &args.queries {
            Some(q) => batch(args.file.as_deref().unwrap_or(Path::new("")), q, args.namespace.as_deref()),
            None => eval(args, config).await,
        },
    }
}

fn print_diagnostics(file: &Path, diags: &[diag::Diagnostic], format: super::DiagFormat) {
    match format {
        super::DiagFormat::Json => println!("{}", diag::render_json(diags)),
        super::DiagFormat::Github => diags.iter().for_each(|d| println!("{}", diag::render_github(d))),
        super::DiagFormat::Human => {
            let text = std::fs::read_to_string(file).ok();
            let source = text.as_deref().map(diag::Source::new);
            for d in diags {
                eprintln!("{}\n", diag::render_human_in(d, source.as_ref(), std::io::stderr().is_terminal()));
            }
        }
    }
}

fn validate(file: &Path, format: super::DiagFormat) -> anyhow::Result<ExitCode> {
    let loaded = match crate::flags::file::load_path(file) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("error: {}: {e}", file.display());
            return Ok(ExitCode::from(2));
        }
    };
    print_diagnostics(file, &loaded.diagnostics, format);
    match loaded.features {
        Some(f) => {
            if format == super::DiagFormat::Human {
                let segs = f.segments.len();
                println!("{}: valid ({} flag(s), {segs} segment(s), namespace `{}`)", file.display(), f.flags.len(), f.namespace);
            }
            Ok(ExitCode::SUCCESS)
        }
        None => {
            if format == super::DiagFormat::Human {
                let n = loaded.diagnostics.iter().filter(|d| d.is_error()).count();
                eprintln!("error: {} has {n} error(s)", file.display());
            }
            Ok(ExitCode::from(1))
        }
    }
}

/// Load a features file for evaluation, or say why not (exit status 2).
fn load_features(file: &Path) -> Result<Features, ExitCode> {
    match crate::flags::file::load_path(file) {
        Ok(l) => match l.features {
            Some(f) => Ok(f),
            None => {
                print_diagnostics(file, &l.diagnostics, super::DiagFormat::Human);
                eprintln!("error: {} is not a valid features file", file.display());
                Err(ExitCode::from(2))
            }
        },
        Err(e) => {
            eprintln!("error: {}: {e}", file.display());
            Err(ExitCode::from(2))
        }
    }
}

async fn eval(args: EvalArgs, config: Option<&Path>) -> anyhow::Result<ExitCode> {
    let (Some(flag), Some(entity)) = (args.flag.as_deref(), args.entity.as_deref()) else {
        eprintln!("error: a flag and --entity are required");
        return Ok(ExitCode::from(2));
    };
    // Flipt's context is strings: `--context tier=5` is the text "5".
    let mut ctx = crate::flags::Context::new();
    for p in &args.context {
        match p.split_once('=') {
            Some((k, v)) if !k.is_empty() => {
                ctx.insert(k.to_string(), v.to_string());
            }
            _ => {
                eprintln!("error: `{p}` is not KEY=VALUE");
                return Ok(ExitCode::from(2));
            }
        }
    }
    let source = match &args.file {
        Some(f) => match load_features(f) {
            Ok(features) => FlagSource::from_features(features),
            Err(code) => return Ok(code),
        },
        None => {
            let mut cfg = match Config::load(config) {
                Ok(c) => c,
                Err(e) => return Ok(super::config_error(&e)),
            };
            if let Some(ns) = &args.namespace {
                cfg.flags.namespace = Some(ns.clone());
            }
            match FlagSource::from_config(&cfg.flags) {
                Ok(Some(s)) => s,
                Ok(None) => {
                    eprintln!("error: no flag source: give --file, or set `[flags] source` in taskweave.toml (or FLIPT_SERVER_URL)");
                    return Ok(ExitCode::from(2));
                }
                Err(e) => {
                    eprintln!("error: {e}");
                    return Ok(ExitCode::from(2));
                }
            }
        }
    };
    if let Some(ns) = &args.namespace
        && args.file.is_some()
        && ns != source.namespace()
    {
        let e = FlagError::Eval(EvalError::NotFound { namespace: ns.clone(), flag: flag.to_string() });
        eprintln!("error: {e}");
        return Ok(ExitCode::from(1));
    }
    match source.evaluate(flag, None, entity, &ctx).await {
        Ok(e) => {
            match args.format {
                OutputFormat::Json => println!("{}", serde_json::to_string_pretty(&answer(&e, entity))?),
                OutputFormat::Human => print!("{}", human(&e, entity)),
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            eprintln!("error: {e}");
            Ok(ExitCode::from(1))
        }
    }
}

fn human(e: &Evaluation, entity: &str) -> String {
    let segments = if e.segment_keys.is_empty() { "none".to_string() } else { e.segment_keys.join(", ") };
    match e.flag_type {
        FlagType::Variant => {
            let variant = if e.variant.is_empty() { "(none)".to_string() } else { e.variant.clone() };
            let mut s = format!(
                "flag      {}\nentity    {entity}\nmatch     {}\nvariant   {variant}\nreason    {}\nsegments  {segments}\n",
                e.flag,
                e.matched,
                e.reason.as_str()
            );
            if let Some(a) = &e.attachment {
                s.push_str(&format!("attachment {a}\n"));
            }
            s
        }
        FlagType::Boolean => format!(
            "flag      {}\nentity    {entity}\nenabled   {}\nreason    {}\nsegments  {segments}\n",
            e.flag,
            e.enabled,
            e.reason.as_str()
        ),
    }
}

/// One answer of `flags eval` in JSON: the batch format.
pub fn answer(e: &Evaluation, entity: &str) -> Value {
    serde_json::to_value(Answer::of(e, entity)).unwrap_or(Value::Null)
}

/// An answer serialised straight from the evaluation (no intermediate JSON
/// value: the batch mode writes one per query).
#[derive(serde::Serialize)]
#[serde(untagged)]
enum Answer<'a> {
    Variant {
        flag: &'a str,
        entity_id: &'a str,
        #[serde(rename = "match")]
        matched: bool,
        variant: &'a str,
        reason: &'static str,
        segment_keys: &'a [String],
    },
    Boolean {
        flag: &'a str,
        entity_id: &'a str,
        enabled: bool,
        reason: &'static str,
        segment_keys: &'a [String],
    },
    Error {
        flag: &'a str,
        entity_id: &'a str,
        error: String,
    },
}

impl<'a> Answer<'a> {
    fn of(e: &'a Evaluation, entity_id: &'a str) -> Answer<'a> {
        let (flag, reason, segment_keys) = (e.flag.as_str(), e.reason.as_str(), e.segment_keys.as_slice());
        match e.flag_type {
            FlagType::Variant => Answer::Variant { flag, entity_id, matched: e.matched, variant: &e.variant, reason, segment_keys },
            FlagType::Boolean => Answer::Boolean { flag, entity_id, enabled: e.enabled, reason, segment_keys },
        }
    }
}

#[derive(Debug, Deserialize)]
struct Query {
    flag: String,
    entity_id: String,
    #[serde(default)]
    context: Option<Map<String, Value>>,
    #[serde(default)]
    namespace: Option<String>,
}

/// Batch mode: reads queries from a file (`-` for stdin), answers in order.
/// A line that is not a query gets `{"line": N, "error": ...}` and the
/// batch goes on; the exit status is then 1.
fn batch(file: &Path, queries: &Path, namespace: Option<&str>) -> anyhow::Result<ExitCode> {
    let features = match load_features(file) {
        Ok(f) => f,
        Err(code) => return Ok(code),
    };
    let reader: Box<dyn BufRead> = if queries == Path::new("-") {
        Box::new(std::io::stdin().lock())
    } else {
        match std::fs::File::open(queries) {
            Ok(f) => Box::new(std::io::BufReader::with_capacity(1 << 16, f)),
            Err(e) => {
                eprintln!("error: {}: {e}", queries.display());
                return Ok(ExitCode::from(2));
            }
        }
    };
    let default_ns = namespace.unwrap_or(&features.namespace).to_string();
    let mut out = BufWriter::with_capacity(1 << 16, std::io::stdout().lock());
    let mut bad = false;
    let empty = Context::new();
    for (i, line) in reader.lines().enumerate() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        let q: Query = match serde_json::from_str(&line) {
            Ok(q) => q,
            Err(e) => {
                bad = true;
                serde_json::to_writer(&mut out, &json!({"line": i + 1, "error": format!("not a query: {e}")}))?;
                out.write_all(b"\n")?;
                continue;
            }
        };
        let ctx = q.context.map(|m| crate::flags::context_of(&Value::Object(m)));
        let ns = q.namespace.as_deref().unwrap_or(&default_ns);
        let result = if ns != features.namespace {
            Err(EvalError::NotFound { namespace: ns.to_string(), flag: q.flag.clone() })
        } else {
            features.evaluate(&q.flag, &q.entity_id, ctx.as_ref().unwrap_or(&empty))
        };
        match &result {
            Ok(e) => serde_json::to_writer(&mut out, &Answer::of(e, &q.entity_id))?,
            Err(e) => serde_json::to_writer(&mut out, &Answer::Error { flag: &q.flag, entity_id: &q.entity_id, error: e.to_string() })?,
        }
        out.write_all(b"\n")?;
    }
    out.flush()?;
    Ok(if bad { ExitCode::from(1) } else { ExitCode::SUCCESS })
}
