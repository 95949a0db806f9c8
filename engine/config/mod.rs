//! `taskweave.toml`: which folders hold workflows, where history is stored,
//! which backends exist, the limits of actions and the settings of the
//! built-in handlers. Every key, its environment variable and its default
//! are listed once, in [`keys::KEYS`]: the loader applies the environment
//! through that table and records where each value came from
//! ([`Config::sources`]), `taskweave config` prints it, and
//! `docs/configuration.md` is generated from it.

pub mod actions;
pub mod backends;
pub mod handlers;
pub mod instance;
pub mod keys;
pub mod serve;
mod validate;

pub use handlers::{HandlersConfig, LlmSection};
pub use keys::Source;
pub use serve::{ServeConfig, parse_positive_duration};
pub use validate::ValidateConfig;

use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The Flipt namespace flags are evaluated in when `[flags] namespace` is unset.
pub const FLAGS_NAMESPACE: &str = "default";
/// How long one request to a Flipt server may take (`[flags] timeout`).
pub const FLAGS_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);
/// How long a Flipt server's answers are kept (`[flags] cache_ttl`).
pub const FLAGS_CACHE_TTL: std::time::Duration = std::time::Duration::from_secs(5);

pub const FILE_NAME: &str = "taskweave.toml";

/// The backend kinds a configuration may name.
pub const KINDS: [&str; 4] = ["local", "postgres", "celery", "temporal"];

/// The keys a `[backends.NAME]` table of each kind may hold besides `kind`:
/// one list that configuration checks and the drivers' option parsers share,
/// whether or not the driver is built into this binary.
pub fn backend_keys(kind: &str) -> &'static [&'static str] {
    match kind {
        "local" => &["cache_runs", "cache_bytes"],
        "postgres" => &["url", "schema", "lease", "poll", "crash_budget", "max_connections", "shutdown_grace", "synchronous_completions"],
        "celery" => {
            &["broker", "result_backend", "queue", "celery_queue", "key_prefix", "visibility_timeout", "result_expires", "worker_lease"]
        }
        "temporal" => &["address", "namespace", "task_queue", "heartbeat", "sticky_timeout", "connect_timeout"],
        _ => &[],
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EngineConfig {
    #[serde(default = "default_workflows")]
    pub workflows: Vec<PathBuf>,
    #[serde(default = "default_store")]
    pub store: String,
    #[serde(default = "default_backend")]
    pub default_backend: String,
    /// How long an idempotency key names the run it started (default 24h).
    #[serde(default, deserialize_with = "serve::positive_duration")]
    pub idempotency_window: Option<std::time::Duration>,
    /// Whether runs of the local backend that a stopped process left
    /// behind are resumed (default) or marked failed.
    #[serde(default)]
    pub resume: Option<bool>,
    /// Whether `run`/`shell` tasks get the engine's whole environment
    /// (default: only `PATH`, `HOME`, `LANG` and what they declare).
    #[serde(default)]
    pub inherit_env: Option<bool>,
}

/// The default of `[engine] idempotency_window`.
pub const IDEMPOTENCY_WINDOW: std::time::Duration = std::time::Duration::from_secs(24 * 3600);

impl EngineConfig {
    pub fn idempotency_window(&self) -> std::time::Duration {
        self.idempotency_window.unwrap_or(IDEMPOTENCY_WINDOW)
    }

    pub fn resume(&self) -> bool {
        self.resume.unwrap_or(true)
    }
}

fn default_workflows() -> Vec<PathBuf> {
    vec![PathBuf::from("workflows")]
}
fn default_store() -> String {
    "sqlite://.taskweave/state.db".into()
}
fn default_backend() -> String {
    "local".into()
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            workflows: default_workflows(),
            store: default_store(),
            default_backend: default_backend(),
            idempotency_window: None,
            resume: None,
            inherit_env: None,
        }
    }
}

/// One `[backends.NAME]` table. Driver-specific keys stay in `options`.
#[derive(Debug, Clone, Deserialize)]
pub struct BackendConfig {
    pub kind: String,
    #[serde(flatten)]
    pub options: BTreeMap<String, toml::Value>,
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct FlagsConfig {
    /// A Flipt features file (relative to the config file), or the
    /// `http(s)://` URL of a Flipt server (`FLIPT_SERVER_URL`).
    pub source: Option<String>,
    /// The Flipt namespace (`FLIPT_NAMESPACE`); default `default`.
    pub namespace: Option<String>,
    /// How long a Flipt server may take to answer (default `2s`; `TASKWEAVE_FLAGS_TIMEOUT`).
    pub timeout: Option<String>,
    /// How long a server's answer is reused (default `5s`; `0s` for never).
    pub cache_ttl: Option<String>,
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub engine: EngineConfig,
    #[serde(default)]
    pub backends: BTreeMap<String, BackendConfig>,
    #[serde(default)]
    pub flags: FlagsConfig,
    /// `[actions]`: limits of task actions (output caps, `extract-text` root, `http:` egress).
    #[serde(default)]
    pub actions: actions::ActionsConfig,
    /// Connection limits of `taskweave serve`.
    #[serde(default)]
    pub serve: ServeConfig,
    /// `[instance]`: how this process holds its lease in the store.
    #[serde(default)]
    pub instance: instance::InstanceConfig,
    /// `[validate]`: how validation reports.
    #[serde(default)]
    pub validate: ValidateConfig,
    /// `[handlers]`: settings of the built-in handlers (`[handlers.llm]`).
    #[serde(default)]
    pub handlers: HandlersConfig,
    /// Where the file was read from, if anywhere.
    #[serde(skip)]
    pub path: Option<PathBuf>,
    /// Where each value that is not a default came from, by TOML path
    /// (`engine.store`, `backends.pg.url`).
    #[serde(skip)]
    pub sources: BTreeMap<String, Source>,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file is not a valid configuration; `diagnostic` is positioned in `text`.
    #[error("{}:{}:{}: {}", .diagnostic.file, .diagnostic.span.start.line, .diagnostic.span.start.column, .diagnostic.message)]
    Invalid { diagnostic: Box<crate::diag::Diagnostic>, text: String },
    #[error("{path}: {source}")]
    Io { path: String, source: std::io::Error },
}

impl Config {
    /// Read `path`, or `./taskweave.toml` when present, else the defaults;
    /// then apply environment overrides.
    pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
        let found = match path {
            Some(p) => Some(p.to_path_buf()),
            None => Some(PathBuf::from(FILE_NAME)).filter(|p| p.is_file()),
        };
        let mut cfg = match &found {
            Some(p) => {
                let text = std::fs::read_to_string(p).map_err(|e| ConfigError::Io { path: p.display().to_string(), source: e })?;
                let mut c = Config::parse_file(&p.display().to_string(), &text)
                    .map_err(|d| ConfigError::Invalid { diagnostic: Box::new(d), text: text.clone() })?;
                // Relative folders and SQLite paths are relative to the config file.
                if let Some(dir) = p.parent().filter(|d| !d.as_os_str().is_empty()) {
                    for w in &mut c.engine.workflows {
                        if w.is_relative() {
                            *w = dir.join(&*w);
                        }
                    }
                    if let Some(rest) = c.engine.store.strip_prefix("sqlite://")
                        && !rest.starts_with('/')
                        && !rest.starts_with(':')
                    {
                        c.engine.store = format!("sqlite://{}", dir.join(rest).display());
                    }
                    if let Some(src) = &c.flags.source
                        && !src.contains("://")
                        && Path::new(src).is_relative()
                    {
                        c.flags.source = Some(dir.join(src).display().to_string());
                    }
                    c.actions.relative_to(dir);
                }
                c.path = Some(p.clone());
                c
            }
            None => Config::default(),
        };
        cfg.apply_env(|k| std::env::var(k).ok());
        Ok(cfg)
    }

    /// Parse a config file's text into a positioned diagnostic on error
    /// (the key or value at fault, like workflow diagnostics).
    pub fn parse_file(file: &str, text: &str) -> Result<Config, crate::diag::Diagnostic> {
        use crate::diag::{Code, Diagnostic, Span};
        let positioned = |span: Option<std::ops::Range<usize>>, msg: String| {
            let (line, col) = span.map_or((1, 1), |r| {
                let before = &text[..r.start.min(text.len())];
                (before.matches('\n').count() as u32 + 1, before.rsplit('\n').next().map_or(0, |l| l.chars().count()) as u32 + 1)
            });
            Diagnostic::new(Code::Schema, file, Span::point(line, col), msg)
        };
        let c: Config = match toml::from_str(text) {
            Ok(c) => c,
            Err(e) => {
                let msg = e.message().trim().to_string();
                let mut d = positioned(e.span(), format!("invalid configuration: {msg}"));
                if let Some(field) = msg.strip_prefix("unknown field `").and_then(|r| r.split('`').next()) {
                    let expected = keys::words();
                    if field == "api_key" {
                        d = d.with_help(
                            "an API key is never written in the file: keep it in an environment variable and name that variable with `api_key_env`",
                        );
                        return Err(d);
                    }
                    if let Some(s) = crate::diag::did_you_mean(field, expected.iter().copied()) {
                        d = d.with_help(format!("did you mean `{s}`?"));
                    }
                }
                return Err(d);
            }
        };
        // Semantic checks, positioned through the spanned document.
        let doc = crate::spec::parse(file, text, crate::spec::Format::Toml).ok();
        let span_of = |ptr: &str| doc.as_ref().map_or(Span::point(1, 1), |d| d.span(ptr));
        for (name, b) in &c.backends {
            if !KINDS.contains(&b.kind.as_str()) {
                let mut d = Diagnostic::new(
                    Code::Schema,
                    file,
                    span_of(&format!("/backends/{name}/kind")),
                    format!("backend `{name}`: unknown kind `{}`", b.kind),
                );
                d = match crate::diag::did_you_mean(&b.kind, KINDS) {
                    Some(s) => d.with_help(format!("did you mean `{s}`?")),
                    None => d.with_help("the kinds are local, postgres, celery and temporal"),
                };
                return Err(d);
            }
            // Every unknown key at once, positioned at the first.
            let known = backend_keys(&b.kind);
            let unknown: Vec<&String> = b.options.keys().filter(|k| !known.contains(&k.as_str())).collect();
            if let Some(first) = unknown.first() {
                let listed = unknown.iter().map(|k| format!("`{k}`")).collect::<Vec<_>>().join(", ");
                let d = Diagnostic::new(
                    Code::Schema,
                    file,
                    doc.as_ref()
                        .map_or(Span::point(1, 1), |d| d.key_span(&format!("/backends/{name}/{}", crate::spec::node::pointer_seg(first)))),
                    format!("backend `{name}` ({}): unknown key{} {listed}", b.kind, if unknown.len() > 1 { "s" } else { "" }),
                );
                let d = match crate::diag::did_you_mean(first, known.iter().copied()) {
                    Some(s) => d.with_help(format!("did you mean `{s}`? A `{}` backend takes: {}", b.kind, known.join(", "))),
                    None => d.with_help(format!("a `{}` backend takes: {}", b.kind, known.join(", "))),
                };
                return Err(d);
            }
            // Values of the wrong type, at the value.
            if let Err(e) = backends::check(&b.kind, &b.options) {
                let at = match &e.key {
                    Some(k) => format!("/backends/{name}/{}", crate::spec::node::pointer_seg(k)),
                    None => format!("/backends/{name}"),
                };
                return Err(Diagnostic::new(Code::Schema, file, span_of(&at), format!("backend `{name}` ({}): {e}", b.kind)));
            }
        }
        if let Some(problem) = c.instance.problem() {
            return Err(Diagnostic::new(Code::Schema, file, span_of("/instance/lease"), format!("[instance]: {problem}")));
        }
        let names = c.backend_names();
        if !names.contains(&c.engine.default_backend) {
            let d = Diagnostic::new(
                Code::UnknownBackend,
                file,
                span_of("/engine/default_backend"),
                format!("`default_backend` names no configured backend: `{}`", c.engine.default_backend),
            );
            let d = match crate::diag::did_you_mean(&c.engine.default_backend, names.iter().map(String::as_str)) {
                Some(s) => d.with_help(format!("did you mean `{s}`?")),
                None => d.with_help(format!("configured backends: {}", names.join(", "))),
            };
            return Err(d);
        }
        let mut c = c;
        if let Ok(table) = text.parse::<toml::Table>() {
            keys::file_sources(&mut c, file, &table);
        }
        Ok(c)
    }

    /// Parse the text of a config file (no environment applied).
    pub fn parse(text: &str) -> Result<Config, String> {
        Config::parse_file(FILE_NAME, text).map_err(|d| format!("{}:{}: {}", d.span.start.line, d.span.start.column, d.message))
    }

    /// Environment overrides: the variables of [`keys::KEYS`]. A value that
    /// does not parse is ignored with a warning.
    pub fn apply_env(&mut self, var: impl Fn(&str) -> Option<String>) {
        keys::apply_env(self, &var);
    }

    /// The `llm` handler's settings: `[handlers.llm]` and its variables,
    /// with the API key read from the variable `api_key_env` names.
    pub fn llm(&self) -> crate::run::actions::handlers::LlmConfig {
        self.handlers.llm.resolve(&|k: &str| std::env::var(k).ok())
    }

    /// Configured backend names; `local` always exists.
    pub fn backend_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.backends.keys().cloned().collect();
        if !names.iter().any(|n| n == "local") {
            names.push("local".into());
        }
        names.sort();
        names
    }

    /// The backends whose runs execute inside the process that starts them
    /// (kind `local`): a run of theirs whose process is gone was interrupted.
    pub fn in_process_backends(&self) -> Vec<String> {
        self.backend_names().into_iter().filter(|n| self.kind_of(n) == Some("local")).collect()
    }

    pub fn kind_of(&self, backend: &str) -> Option<&str> {
        match self.backends.get(backend) {
            Some(b) => Some(b.kind.as_str()),
            None if backend == "local" => Some("local"),
            None => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_env_overrides() {
        let mut c = Config::parse("[backends.celery]\nkind = \"celery\"\nbroker = \"redis://x\"\n").unwrap();
        assert_eq!(c.engine.default_backend, "local");
        c.apply_env(|k| match k {
            "TASK_QUEUE_BACKEND" => Some("celery".into()),
            "CELERY_BROKER_URL" => Some("redis://127.0.0.1:6379/3".into()),
            _ => None,
        });
        assert_eq!(c.engine.default_backend, "celery");
        assert_eq!(c.backends["celery"].options["broker"].as_str(), Some("redis://127.0.0.1:6379/3"));
        assert_eq!(c.backend_names(), vec!["celery".to_string(), "local".to_string()]);
    }

    #[test]
    fn unknown_kind_and_keys_are_rejected_at_their_position() {
        let d = Config::parse_file("t.toml", "[backends.x]\nkind = \"celey\"\n").unwrap_err();
        assert!(d.message.contains("unknown kind `celey`"), "{d:?}");
        assert_eq!((d.span.start.line, d.span.start.column), (2, 8));
        assert_eq!(d.help.as_deref(), Some("did you mean `celery`?"));
        let d = Config::parse_file("t.toml", "[engine]\nstorr = \"x\"\n").unwrap_err();
        assert!(d.message.contains("storr"), "{d:?}");
        assert_eq!((d.span.start.line, d.span.start.column), (2, 1));
        assert_eq!(d.help.as_deref(), Some("did you mean `store`?"));
        let d = Config::parse_file("t.toml", "[backends.x]\nkind = \"local\"\ncache_runs = 5\nurl = \"y\"\n").unwrap_err();
        assert_eq!(d.message, "backend `x` (local): unknown key `url`");
        assert_eq!((d.span.start.line, d.span.start.column), (4, 1));
        let d = Config::parse_file("t.toml", "[backends.pg]\nkind = \"postgres\"\nurll = \"y\"\nleese = \"1s\"\n").unwrap_err();
        assert_eq!(d.message, "backend `pg` (postgres): unknown keys `leese`, `urll`");
        assert_eq!((d.span.start.line, d.span.start.column), (4, 1));
        assert!(d.help.as_deref().unwrap().starts_with("did you mean `lease`?"), "{d:?}");
        // A value of the wrong type, at the value, for kinds built in or not.
        let d = Config::parse_file("t.toml", "[backends.pg]\nkind = \"postgres\"\nlease = 30\n").unwrap_err();
        assert_eq!(d.message, "backend `pg` (postgres): `lease` must be a duration such as \"30s\", not 30");
        assert_eq!((d.span.start.line, d.span.start.column), (3, 9));
        let d = Config::parse_file("t.toml", "[backends.t]\nkind = \"temporal\"\ntask_queue = [\"a\"]\n").unwrap_err();
        assert_eq!(d.message, "backend `t` (temporal): `task_queue` must be a string, not array");
        assert_eq!((d.span.start.line, d.span.start.column), (3, 14));
        let d = Config::parse_file("t.toml", "[engine]\ndefault_backend = \"pg\"\n").unwrap_err();
        assert_eq!(d.code, crate::diag::Code::UnknownBackend);
        assert_eq!((d.span.start.line, d.span.start.column), (2, 19));
    }

    #[test]
    fn flags_source_relative_to_the_file_and_env_overrides() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("taskweave.toml");
        std::fs::write(&path, "[flags]\nsource = \"flipt/features.yml\"\ntimeout = \"300ms\"\n").unwrap();
        let c = Config::load(Some(&path)).unwrap();
        assert_eq!(c.flags.source.as_deref(), Some(dir.path().join("flipt/features.yml").to_str().unwrap()));
        assert_eq!(c.flags.timeout.as_deref(), Some("300ms"));
        let mut c = Config::parse("[flags]\nsource = \"f.yml\"\n").unwrap();
        c.apply_env(|k| match k {
            "FLIPT_SERVER_URL" => Some("http://127.0.0.1:8080".into()),
            "FLIPT_NAMESPACE" => Some("prod".into()),
            "TASKWEAVE_FLAGS_TIMEOUT" => Some("1s".into()),
            _ => None,
        });
        assert_eq!(
            (c.flags.source.as_deref(), c.flags.namespace.as_deref(), c.flags.timeout.as_deref()),
            (Some("http://127.0.0.1:8080"), Some("prod"), Some("1s"))
        );
        let d = Config::parse_file("t.toml", "[flags]\nsorce = \"x\"\n").unwrap_err();
        assert_eq!(d.help.as_deref(), Some("did you mean `source`?"));
    }
}
