//! Every key of `taskweave.toml` in one table: its TOML path, environment
//! variable, type, default and meaning.
//!
//! The loader applies the environment overrides through this table and
//! records where each value came from ([`Source`]); `taskweave config`
//! prints the effective configuration from it; and `docs/configuration.md`
//! is generated from it ([`reference_markdown`]), so the documentation,
//! the loader and the command cannot disagree.

use super::Config;
use serde_json::{Value, json};
use std::time::Duration;

/// Where a configuration value came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// Nothing set it: the built-in default.
    Default,
    /// The configuration file, by its path.
    File(String),
    /// An environment variable, by its name.
    Env(String),
    /// A command-line flag, by its name.
    Flag(String),
}

impl Source {
    /// `default`, `file`, `env` or `flag`.
    pub fn kind(&self) -> &'static str {
        match self {
            Source::Default => "default",
            Source::File(_) => "file",
            Source::Env(_) => "env",
            Source::Flag(_) => "flag",
        }
    }

    /// The file's path, the variable's or the flag's name.
    pub fn origin(&self) -> Option<&str> {
        match self {
            Source::Default => None,
            Source::File(s) | Source::Env(s) | Source::Flag(s) => Some(s),
        }
    }
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Source::Default => f.write_str("default"),
            Source::File(p) => write!(f, "file {p}"),
            Source::Env(v) => write!(f, "env {v}"),
            Source::Flag(n) => write!(f, "flag {n}"),
        }
    }
}

type Getter = fn(&Config) -> Value;
type Setter = fn(&mut Config, &str) -> Result<(), String>;

/// One configuration key.
#[derive(Clone, Copy)]
pub struct Key {
    /// The TOML path; `backends.<name>.KEY` for a backend's key.
    pub path: &'static str,
    /// The kind of a `[backends.NAME]` table that takes this key (`""` for
    /// `kind`, which every backend has); `None` outside `[backends]`.
    pub backend: Option<&'static str>,
    /// The value's type, in words.
    pub ty: &'static str,
    /// The default, as documented.
    pub default: &'static str,
    /// The variable that overrides the file.
    pub env: Option<&'static str>,
    /// A variable read only when the file does not set the key.
    pub fallback_env: Option<&'static str>,
    /// The command-line flag that overrides both (and the command that has it).
    pub flag: Option<(&'static str, &'static str)>,
    /// One line.
    pub doc: &'static str,
    /// The effective value (with defaults filled in); `None` for backend keys.
    get: Option<Getter>,
    /// Applies an environment value.
    set: Option<Setter>,
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Key").field("path", &self.path).field("env", &self.env).finish()
    }
}

impl Key {
    const fn new(path: &'static str, ty: &'static str, default: &'static str, doc: &'static str, get: Getter) -> Key {
        Key { path, backend: None, ty, default, env: None, fallback_env: None, flag: None, doc, get: Some(get), set: None }
    }

    const fn backend(kind: &'static str, path: &'static str, ty: &'static str, default: &'static str, doc: &'static str) -> Key {
        Key { path, backend: Some(kind), ty, default, env: None, fallback_env: None, flag: None, doc, get: None, set: None }
    }

    const fn env(mut self, name: &'static str, set: Setter) -> Key {
        self.env = Some(name);
        self.set = Some(set);
        self
    }

    const fn fallback(mut self, name: &'static str) -> Key {
        self.fallback_env = Some(name);
        self
    }

    const fn fallback_set(mut self, name: &'static str, set: Setter) -> Key {
        self.fallback_env = Some(name);
        self.set = Some(set);
        self
    }

    const fn flag(mut self, flag: &'static str, command: &'static str) -> Key {
        self.flag = Some((flag, command));
        self
    }

    /// The last segment of the path: the key as written in its table.
    pub fn name(&self) -> &'static str {
        self.path.rsplit('.').next().unwrap_or(self.path)
    }

    /// The table the key is written in: `engine`, `actions.http`, `backends.<name>`.
    pub fn table(&self) -> &'static str {
        self.path.rsplit_once('.').map_or("", |(t, _)| t)
    }
}

fn dur(d: Duration) -> Value {
    Value::String(humantime::format_duration(d).to_string())
}

fn dur_opt(d: Option<Duration>, default: Duration) -> Value {
    dur(d.unwrap_or(default))
}

fn duration_env(s: &str) -> Result<Duration, String> {
    super::instance::parse_duration(s)
}

fn positive_env(s: &str) -> Result<Duration, String> {
    super::parse_positive_duration(s.trim())
}

fn bool_env(s: &str) -> Result<bool, String> {
    match s.trim().to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "on" => Ok(true),
        "0" | "false" | "no" | "off" => Ok(false),
        other => Err(format!("`{other}` is not true or false")),
    }
}

/// A comma-separated list of host rules (`10.0.0.0/8, *.example.com`).
fn host_rules(v: &str) -> Result<Vec<crate::run::actions::HostRule>, String> {
    v.split(',').map(str::trim).filter(|r| !r.is_empty()).map(str::parse).collect()
}

fn string_list(v: &[impl std::fmt::Display]) -> Value {
    Value::Array(v.iter().map(|x| Value::String(x.to_string())).collect())
}

/// Every key, in the order of the documentation.
pub static KEYS: &[Key] = &[
    // [engine]
    Key::new(
        "engine.workflows",
        "list of paths",
        "[\"workflows\"]",
        "Folders whose workflow files are loaded and watched (relative to the file).",
        |c| string_list(&c.engine.workflows.iter().map(|p| p.display()).collect::<Vec<_>>()),
    )
    .env("TASKWEAVE_WORKFLOWS", |c, v| {
        c.engine.workflows = std::env::split_paths(v).collect();
        Ok(())
    }),
    Key::new(
        "engine.store",
        "URL",
        "sqlite://.taskweave/state.db",
        "Where run history lives: `sqlite://PATH` (relative to the file) or a `postgres://` URL.",
        |c| json!(c.engine.store),
    )
    .env("TASKWEAVE_STORE", |c, v| {
        c.engine.store = v.to_string();
        Ok(())
    }),
    Key::new("engine.default_backend", "backend name", "local", "The backend of runs whose workflow and request name none.", |c| {
        json!(c.engine.default_backend)
    })
    .env("TASK_QUEUE_BACKEND", |c, v| {
        c.engine.default_backend = v.trim().to_string();
        Ok(())
    }),
    Key::new(
        "engine.idempotency_window",
        "duration",
        "24h",
        "How long an idempotency key of a start request names the run it started.",
        |c| dur(c.engine.idempotency_window()),
    )
    .env("TASKWEAVE_IDEMPOTENCY_WINDOW", |c, v| {
        c.engine.idempotency_window = Some(positive_env(v)?);
        Ok(())
    }),
    Key::new(
        "engine.resume",
        "bool",
        "true",
        "Resume runs of the local backend that a stopped process left behind (false: mark them failed).",
        |c| json!(c.engine.resume()),
    )
    .env("TASKWEAVE_RESUME", |c, v| {
        c.engine.resume = Some(bool_env(v)?);
        Ok(())
    }),
    Key::new(
        "engine.inherit_env",
        "bool",
        "false",
        "Give `run` and `shell` tasks the engine's whole environment (false: only PATH, HOME, LANG and what the workflow and task declare).",
        |c| json!(c.engine.inherit_env.unwrap_or(false)),
    )
    .env("TASKWEAVE_INHERIT_ENV", |c, v| {
        c.engine.inherit_env = Some(bool_env(v)?);
        Ok(())
    }),
    // [backends.NAME]
    Key::backend("", "backends.<name>.kind", "string", "(required)", "The driver: `local`, `postgres`, `celery` or `temporal`."),
    Key::backend("local", "backends.<name>.cache_runs", "integer", "10000", "Finished runs kept in memory for fast result reads."),
    Key::backend(
        "local",
        "backends.<name>.cache_bytes",
        "integer",
        "67108864",
        "Bytes of finished runs' inputs, contexts and outputs kept in memory (64 MiB).",
    ),
    Key::backend("postgres", "backends.<name>.url", "URL", "(required)", "The `postgres://` URL of the queue's database.")
        .fallback("DATABASE_URL"),
    Key::backend("postgres", "backends.<name>.schema", "string", "taskweave_queue", "The schema that holds the queue's tables."),
    Key::backend("postgres", "backends.<name>.lease", "duration", "30s", "How long a claimed task stays a worker's without a heartbeat."),
    Key::backend("postgres", "backends.<name>.poll", "duration", "1s", "How often idle workers look for work without a notification."),
    Key::backend("postgres", "backends.<name>.crash_budget", "integer", "3", "Tries of a task whose worker may be lost before it fails."),
    Key::backend("postgres", "backends.<name>.max_connections", "integer", "16", "Connections of this process's pool."),
    Key::backend(
        "postgres",
        "backends.<name>.shutdown_grace",
        "duration",
        "30s",
        "How long a stopping worker lets running tasks finish before handing them back.",
    ),
    Key::backend(
        "postgres",
        "backends.<name>.synchronous_completions",
        "bool",
        "false",
        "Claims and attempt ends wait for the server's disk too.",
    ),
    Key::backend("celery", "backends.<name>.broker", "URL", "(required)", "The `redis://` URL of the broker.")
        .env("CELERY_BROKER_URL", |_, _| Ok(())),
    Key::backend("celery", "backends.<name>.result_backend", "URL", "(the `broker` URL)", "The `redis://` URL where results are stored.")
        .env("CELERY_RESULT_BACKEND", |_, _| Ok(())),
    Key::backend("celery", "backends.<name>.queue", "string", "taskweave", "The queue taskweave's own tasks are sent to."),
    Key::backend(
        "celery",
        "backends.<name>.celery_queue",
        "string",
        "celery",
        "The queue `celery:` tasks are sent to, for Python workers.",
    ),
    Key::backend("celery", "backends.<name>.key_prefix", "string", "", "A prefix of every Redis key."),
    Key::backend(
        "celery",
        "backends.<name>.visibility_timeout",
        "duration",
        "1h",
        "How long an unacknowledged task waits before it is delivered again.",
    ),
    Key::backend("celery", "backends.<name>.result_expires", "duration", "1d", "How long results are kept."),
    Key::backend(
        "celery",
        "backends.<name>.worker_lease",
        "duration",
        "30s",
        "How long a taskweave worker stays listed by `taskweave workers` without a heartbeat.",
    ),
    Key::backend("temporal", "backends.<name>.address", "address", "http://127.0.0.1:7233", "The frontend's gRPC address.")
        .fallback("TEMPORAL_ADDRESS"),
    Key::backend("temporal", "backends.<name>.namespace", "string", "default", "The Temporal namespace.").fallback("TEMPORAL_NAMESPACE"),
    Key::backend("temporal", "backends.<name>.task_queue", "string", "taskweave", "The task queue of runs and activities."),
    Key::backend(
        "temporal",
        "backends.<name>.heartbeat",
        "duration",
        "10s",
        "Activity heartbeat timeout: how soon the task of a lost worker is tried again.",
    ),
    Key::backend(
        "temporal",
        "backends.<name>.sticky_timeout",
        "duration",
        "3s",
        "How long a run's next workflow task waits for the worker that cached it.",
    ),
    Key::backend("temporal", "backends.<name>.connect_timeout", "duration", "5s", "How long submission waits for the server."),
    // [flags]
    Key::new(
        "flags.source",
        "path or URL",
        "(none)",
        "A Flipt features file (relative to the file), or the `http(s)://` URL of a Flipt server.",
        |c| json!(c.flags.source),
    )
    .env("FLIPT_SERVER_URL", |c, v| {
        c.flags.source = Some(v.to_string());
        Ok(())
    }),
    Key::new("flags.namespace", "string", "default", "The Flipt namespace.", |c| {
        json!(c.flags.namespace.clone().unwrap_or_else(|| super::FLAGS_NAMESPACE.into()))
    })
    .env("FLIPT_NAMESPACE", |c, v| {
        c.flags.namespace = Some(v.to_string());
        Ok(())
    }),
    Key::new("flags.timeout", "duration", "2s", "How long a Flipt server may take to answer.", |c| {
        json!(c.flags.timeout.clone().unwrap_or_else(|| humantime::format_duration(super::FLAGS_TIMEOUT).to_string()))
    })
    .env("TASKWEAVE_FLAGS_TIMEOUT", |c, v| {
        c.flags.timeout = Some(v.to_string());
        Ok(())
    }),
    Key::new("flags.cache_ttl", "duration", "5s", "How long a Flipt server's answer is reused (`0s`: never).", |c| {
        json!(c.flags.cache_ttl.clone().unwrap_or_else(|| humantime::format_duration(super::FLAGS_CACHE_TTL).to_string()))
    })
    .env("TASKWEAVE_FLAGS_CACHE_TTL", |c, v| {
        crate::plan::parse_duration(v.trim())?;
        c.flags.cache_ttl = Some(v.trim().to_string());
        Ok(())
    }),
    // [actions]
    Key::new(
        "actions.max_output_bytes",
        "byte size",
        "10MiB",
        "Captured stdout/stderr per stream, an HTTP response body, the text one template renders.",
        |c| json!(c.actions.limits().max_output_bytes),
    )
    .env("TASKWEAVE_MAX_OUTPUT_BYTES", |c, v| {
        c.actions.max_output_bytes = Some(v.parse()?);
        Ok(())
    }),
    Key::new("actions.kill_grace", "duration", "2s", "Time between SIGTERM and SIGKILL when a task is stopped.", |c| {
        dur(c.actions.limits().kill_grace)
    })
    .env("TASKWEAVE_KILL_GRACE", |c, v| {
        c.actions.kill_grace = Some(crate::plan::parse_duration(v.trim())?);
        Ok(())
    }),
    Key::new(
        "actions.extract_text.root",
        "path",
        "(the working folder)",
        "The folder `extract-text` reads from (relative to the file).",
        |c| json!(c.actions.extract_text.root.as_ref().map(|p| p.display().to_string())),
    )
    .env("TASKWEAVE_EXTRACT_TEXT_ROOT", |c, v| {
        c.actions.extract_text.root = Some(v.into());
        Ok(())
    }),
    Key::new("actions.extract_text.max_bytes", "byte size", "10MiB", "The largest file `extract-text` reads.", |c| {
        json!(c.actions.extract_text_settings().max_bytes)
    })
    .env("TASKWEAVE_EXTRACT_TEXT_MAX_BYTES", |c, v| {
        c.actions.extract_text.max_bytes = Some(v.parse()?);
        Ok(())
    }),
    Key::new("actions.http.timeout", "duration", "5m", "Time limit of an `http:` request whose task has no timeout.", |c| {
        dur(c.actions.limits().http_timeout)
    })
    .env("TASKWEAVE_HTTP_TIMEOUT", |c, v| {
        c.actions.http.timeout = Some(crate::plan::parse_duration(v.trim())?);
        Ok(())
    }),
    Key::new("actions.http.deny_private", "bool", "false", "Refuse private, loopback, link-local and other internal addresses.", |c| {
        json!(c.actions.http.deny_private)
    })
    .env("TASKWEAVE_HTTP_DENY_PRIVATE", |c, v| {
        // A switch that guards the network fails closed.
        c.actions.http.deny_private = bool_env(v).unwrap_or_else(|e| {
            tracing::warn!("TASKWEAVE_HTTP_DENY_PRIVATE: {e}; denying private addresses");
            true
        });
        Ok(())
    }),
    Key::new(
        "actions.http.allow",
        "list of host rules",
        "[]",
        "CIDRs, addresses, host names or `*.example.com` that `http:` tasks may reach even when denied otherwise.",
        |c| string_list(&c.actions.http.allow),
    )
    .env("TASKWEAVE_HTTP_ALLOW", |c, v| {
        c.actions.http.allow = host_rules(v)?;
        Ok(())
    }),
    Key::new(
        "actions.http.deny",
        "list of host rules",
        "[]",
        "CIDRs, addresses, host names or `*.example.com` that `http:` tasks may not reach.",
        |c| string_list(&c.actions.http.deny),
    )
    .env("TASKWEAVE_HTTP_DENY", |c, v| {
        c.actions.http.deny = host_rules(v)?;
        Ok(())
    }),
    Key::new("actions.http.follow_redirects", "bool", "true", "Whether `http:` tasks follow redirects (each hop checked again).", |c| {
        json!(c.actions.http.follow_redirects)
    })
    .env("TASKWEAVE_HTTP_FOLLOW_REDIRECTS", |c, v| {
        c.actions.http.follow_redirects = bool_env(v)?;
        Ok(())
    }),
    Key::new("actions.http.max_redirects", "integer", "10", "Redirects followed at most.", |c| json!(c.actions.http.max_redirects)).env(
        "TASKWEAVE_HTTP_MAX_REDIRECTS",
        |c, v| {
            c.actions.http.max_redirects = v.trim().parse().map_err(|_| format!("`{v}` is not a number"))?;
            Ok(())
        },
    ),
    // [handlers.llm]
    Key::new(
        "handlers.llm.base_url",
        "URL",
        "https://api.openai.com/v1",
        "The API root of an OpenAI-compatible service; `/chat/completions` is appended.",
        |c| json!(c.handlers.llm.base_url.clone().unwrap_or_else(|| crate::run::actions::handlers::LlmConfig::default().base_url)),
    )
    .env("TASKWEAVE_LLM_BASE_URL", set_llm_base_url)
    .fallback_set("OPENAI_BASE_URL", set_llm_base_url),
    Key::new("handlers.llm.model", "string", "gpt-4o-mini", "The model of `llm` tasks that name none.", |c| {
        json!(c.handlers.llm.model.clone().unwrap_or_else(|| crate::run::actions::handlers::LlmConfig::default().model))
    })
    .env("TASKWEAVE_LLM_MODEL", |c, v| {
        c.handlers.llm.model = Some(v.trim().to_string());
        Ok(())
    }),
    Key::new(
        "handlers.llm.api_key_env",
        "variable name",
        "TASKWEAVE_LLM_API_KEY, else OPENAI_API_KEY",
        "The environment variable that holds the API key (never the key itself).",
        |c| json!(c.handlers.llm.api_key_env.clone().unwrap_or_else(|| super::handlers::DEFAULT_API_KEY_ENV.into())),
    )
    .env("TASKWEAVE_LLM_API_KEY_ENV", |c, v| match super::handlers::env_name_problem(v.trim()) {
        None => {
            c.handlers.llm.api_key_env = Some(v.trim().to_string());
            Ok(())
        }
        Some(p) => Err(p),
    }),
    Key::new("handlers.llm.timeout", "duration", "2m", "Time limit of one request; a task timeout does not lengthen it.", |c| {
        dur_opt(c.handlers.llm.timeout, crate::run::actions::handlers::LlmConfig::default().timeout)
    })
    .env("TASKWEAVE_LLM_TIMEOUT", |c, v| {
        c.handlers.llm.timeout = Some(positive_env(v)?);
        Ok(())
    }),
    // [serve]
    Key::new("serve.header_timeout", "duration", "10s", "How long a client may take to send a request's headers.", |c| {
        dur_opt(c.serve.header_timeout, super::serve::HEADER_TIMEOUT)
    })
    .env("TASKWEAVE_HEADER_TIMEOUT", |c, v| {
        c.serve.header_timeout = Some(positive_env(v)?);
        Ok(())
    })
    .flag("--header-timeout", "serve"),
    Key::new("serve.body_timeout", "duration", "30s", "How long a client may take to send a whole request body.", |c| {
        dur_opt(c.serve.body_timeout, super::serve::BODY_TIMEOUT)
    })
    .env("TASKWEAVE_BODY_TIMEOUT", |c, v| {
        c.serve.body_timeout = Some(positive_env(v)?);
        Ok(())
    })
    .flag("--body-timeout", "serve"),
    Key::new("serve.idle_timeout", "duration", "60s", "How long a kept-alive connection may wait for its next request.", |c| {
        dur_opt(c.serve.idle_timeout, super::serve::IDLE_TIMEOUT)
    })
    .env("TASKWEAVE_IDLE_TIMEOUT", |c, v| {
        c.serve.idle_timeout = Some(positive_env(v)?);
        Ok(())
    })
    .flag("--idle-timeout", "serve"),
    Key::new("serve.max_connections", "integer", "1024", "Client connections served at once; more wait to be accepted.", |c| {
        json!(c.serve.max_connections.unwrap_or(super::serve::MAX_CONNECTIONS))
    })
    .env("TASKWEAVE_MAX_CONNECTIONS", |c, v| match v.trim().parse::<usize>() {
        Ok(n) if n >= 1 => {
            c.serve.max_connections = Some(n);
            Ok(())
        }
        _ => Err(format!("`{v}` is not a number of at least 1")),
    })
    .flag("--max-connections", "serve"),
    // [instance]
    Key::new("instance.heartbeat", "duration", "5s", "How often this process renews its lease in the store.", |c| {
        dur(c.instance.heartbeat)
    })
    .env("TASKWEAVE_HEARTBEAT", |c, v| {
        c.instance.heartbeat = duration_env(v)?;
        Ok(())
    }),
    Key::new("instance.lease", "duration", "30s", "How long a lease lasts without renewal before its runs are marked interrupted.", |c| {
        dur(c.instance.lease)
    })
    .env("TASKWEAVE_LEASE", |c, v| {
        c.instance.lease = duration_env(v)?;
        Ok(())
    }),
    // [validate]
    Key::new("validate.max_diagnostics", "integer", "200", "Diagnostics one file reports at most (`0`: all).", |c| {
        json!(c.validate.max_diagnostics)
    })
    .env("TASKWEAVE_MAX_DIAGNOSTICS", |c, v| {
        c.validate.max_diagnostics = v.trim().parse().map_err(|_| format!("`{v}` is not a number"))?;
        Ok(())
    }),
    Key::new(
        "validate.handlers",
        "list of names",
        "[]",
        "Handlers another process registers (an embedding program): `uses:` may name them; their arguments are not checked.",
        |c| json!(c.validate.handlers),
    )
    .env("TASKWEAVE_VALIDATE_HANDLERS", |c, v| {
        c.validate.handlers = v.split(',').map(str::trim).filter(|s| !s.is_empty()).map(str::to_string).collect();
        Ok(())
    }),
];

fn set_llm_base_url(c: &mut Config, v: &str) -> Result<(), String> {
    match super::handlers::base_url_problem(v) {
        None => {
            c.handlers.llm.base_url = Some(v.trim().to_string());
            Ok(())
        }
        Some(p) => Err(p),
    }
}

/// The variable that sets `key` of the backend `backend`:
/// `TASKWEAVE_BACKEND_PG_URL` for `[backends.pg] url`.
pub fn backend_env(backend: &str, key: &str) -> String {
    let upper = |s: &str| s.chars().map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_uppercase() } else { '_' }).collect::<String>();
    format!("TASKWEAVE_BACKEND_{}_{}", upper(backend), upper(key))
}

/// The key of a path (`engine.store`, `backends.<name>.url`).
pub fn key(path: &str) -> Option<&'static Key> {
    KEYS.iter().find(|k| k.path == path)
}

/// Every word that may be a key or a table name in the file, for
/// "did you mean" help.
pub fn words() -> Vec<&'static str> {
    let mut w: Vec<&'static str> = KEYS.iter().flat_map(|k| k.path.split('.')).filter(|s| !s.starts_with('<')).collect();
    w.sort_unstable();
    w.dedup();
    w
}

/// Apply the environment overrides of `KEYS` to `c`, recording each source.
/// A value that does not parse is ignored with a warning.
pub(super) fn apply_env(c: &mut Config, var: &impl Fn(&str) -> Option<String>) {
    let get = |name: &str| var(name).filter(|v| !v.trim().is_empty());
    for k in KEYS {
        if let Some(kind) = k.backend {
            // A backend key's variable applies to every backend of its kind.
            if let Some((name, v)) = k.env.and_then(|n| get(n).map(|v| (n, v))) {
                let key = k.name();
                let targets: Vec<String> = c.backends.iter().filter(|(_, b)| b.kind == kind).map(|(n, _)| n.clone()).collect();
                for b in targets {
                    if let Some(cfg) = c.backends.get_mut(&b) {
                        cfg.options.insert(key.to_string(), toml::Value::String(v.clone()));
                    }
                    c.sources.insert(format!("backends.{b}.{key}"), Source::Env(name.into()));
                }
            }
            // And its own variable, `TASKWEAVE_BACKEND_<NAME>_<KEY>`, to each.
            if k.name() != "kind" {
                let targets: Vec<String> = c.backends.iter().filter(|(_, b)| b.kind == kind).map(|(n, _)| n.clone()).collect();
                for b in targets {
                    let name = backend_env(&b, k.name());
                    let Some(v) = get(&name) else { continue };
                    let value = match k.ty {
                        "integer" => v.trim().parse::<i64>().map(toml::Value::Integer).map_err(|_| format!("`{v}` is not an integer")),
                        "bool" => bool_env(&v).map(toml::Value::Boolean),
                        _ => Ok(toml::Value::String(v.clone())),
                    };
                    match value {
                        Ok(value) => {
                            if let Some(cfg) = c.backends.get_mut(&b) {
                                cfg.options.insert(k.name().to_string(), value);
                            }
                            c.sources.insert(format!("backends.{b}.{}", k.name()), Source::Env(name));
                        }
                        Err(e) => tracing::warn!("{name}: {e}; ignored"),
                    }
                }
            }
            continue;
        }
        let Some(set) = k.set else { continue };
        let from_file = matches!(c.sources.get(k.path), Some(Source::File(_)));
        let chosen = k.env.and_then(|n| get(n).map(|v| (n, v))).or_else(|| {
            // A fallback variable stands in for the default, never for the file.
            k.fallback_env.filter(|_| !from_file).and_then(|n| get(n).map(|v| (n, v)))
        });
        if let Some((name, v)) = chosen {
            match set(c, &v) {
                Ok(()) => {
                    c.sources.insert(k.path.to_string(), Source::Env(name.to_string()));
                }
                Err(e) => tracing::warn!("{name}: {e}; keeping {}", c.sources.get(k.path).unwrap_or(&Source::Default)),
            }
        }
    }
}

/// Record which keys the file at `file` sets.
pub(super) fn file_sources(c: &mut Config, file: &str, table: &toml::Table) {
    for k in KEYS.iter().filter(|k| k.backend.is_none()) {
        let mut node: Option<&toml::Value> = None;
        let mut t = Some(table);
        for seg in k.path.split('.') {
            node = t.and_then(|t| t.get(seg));
            t = node.and_then(toml::Value::as_table);
        }
        if node.is_some() {
            c.sources.insert(k.path.to_string(), Source::File(file.to_string()));
        }
    }
    if let Some(backends) = table.get("backends").and_then(toml::Value::as_table) {
        for (name, b) in backends {
            for key in b.as_table().into_iter().flat_map(|t| t.keys()) {
                c.sources.insert(format!("backends.{name}.{key}"), Source::File(file.to_string()));
            }
        }
    }
}

/// One line of the effective configuration.
#[derive(Debug, Clone)]
pub struct Entry {
    /// The TOML path, with backend names filled in.
    pub key: String,
    /// The value, secrets masked.
    pub value: Value,
    pub source: Source,
}

/// The effective configuration: every key with its value (secrets and URL
/// passwords masked) and where it came from. `var` reads the environment
/// (for the variables the drivers and the `llm` handler read themselves).
pub fn effective(c: &Config, var: &impl Fn(&str) -> Option<String>) -> Vec<Entry> {
    let get = |name: &str| var(name).filter(|v| !v.trim().is_empty());
    let source = |path: &str| c.sources.get(path).cloned().unwrap_or(Source::Default);
    let mut out = Vec::new();
    let mut backends_done = false;
    for k in KEYS {
        if k.backend.is_some() {
            if !backends_done {
                backends_done = true;
                out.extend(backend_entries(c, &get));
            }
            continue;
        }
        let Some(getter) = k.get else { continue };
        out.push(Entry { key: k.path.to_string(), value: mask(getter(c)), source: source(k.path) });
        if k.path == "handlers.llm.api_key_env" {
            // The key itself: whether it is set, and where from; never its value.
            let found = c.handlers.llm.key_source(var);
            out.push(Entry {
                key: "handlers.llm.api_key".into(),
                value: if found.is_some() { json!("***") } else { Value::Null },
                source: found.map_or(Source::Default, Source::Env),
            });
        }
    }
    out
}

fn backend_entries(c: &Config, get: &impl Fn(&str) -> Option<String>) -> Vec<Entry> {
    let mut out = Vec::new();
    for name in c.backend_names() {
        let kind = c.kind_of(&name).unwrap_or("local");
        let options = c.backends.get(&name).map(|b| &b.options);
        let source = |path: &str| c.sources.get(path).cloned().unwrap_or(Source::Default);
        let kind_path = format!("backends.{name}.kind");
        out.push(Entry { value: json!(kind), source: source(&kind_path), key: kind_path });
        for k in KEYS.iter().filter(|k| k.backend == Some(kind)) {
            let path = format!("backends.{name}.{}", k.name());
            let (value, src) = match options.and_then(|o| o.get(k.name())) {
                Some(v) => (serde_json::to_value(v).unwrap_or(Value::Null), source(&path)),
                // Results go where the tasks go unless told otherwise.
                None if k.name() == "result_backend" => (
                    options.and_then(|o| o.get("broker")).and_then(|v| serde_json::to_value(v).ok()).unwrap_or(Value::Null),
                    Source::Default,
                ),
                None => match k.fallback_env.and_then(|n| get(n).map(|v| (n, v))) {
                    Some((n, v)) => (json!(v), Source::Env(n.to_string())),
                    None => (default_value(k.default), Source::Default),
                },
            };
            out.push(Entry { key: path, value: mask(value), source: src });
        }
    }
    out
}

/// A documented default as a JSON value.
fn default_value(text: &str) -> Value {
    if text.starts_with('(') {
        return Value::Null;
    }
    if let Ok(n) = text.parse::<u64>() {
        return json!(n);
    }
    match text {
        "true" => json!(true),
        "false" => json!(false),
        _ => json!(text),
    }
}

/// Passwords in URLs, and credentials in their query strings, as `***`.
fn mask(v: Value) -> Value {
    match v {
        Value::String(s) => Value::String(mask_url(&s)),
        Value::Array(a) => Value::Array(a.into_iter().map(mask).collect()),
        v => v,
    }
}

/// A URL with its password, and the values of query parameters that look
/// like credentials, replaced by `***`; anything else unchanged.
pub fn mask_url(s: &str) -> String {
    if !s.contains("://") {
        return s.to_string();
    }
    let Ok(mut u) = url::Url::parse(s) else { return s.to_string() };
    let mut changed = false;
    if u.password().is_some() {
        let _ = u.set_password(Some("***"));
        changed = true;
    }
    let secret_param = |k: &str| {
        let k = k.to_ascii_lowercase();
        ["pass", "secret", "token", "key", "auth", "sig"].iter().any(|w| k.contains(w))
    };
    if u.query_pairs().any(|(k, _)| secret_param(&k)) {
        let pairs: Vec<(String, String)> = u
            .query_pairs()
            .map(|(k, v)| {
                let v = if secret_param(&k) { "***".to_string() } else { v.into_owned() };
                (k.into_owned(), v)
            })
            .collect();
        u.query_pairs_mut().clear().extend_pairs(pairs);
        changed = true;
    }
    if changed { u.to_string() } else { s.to_string() }
}

/// The reference section of `docs/configuration.md`: one table per TOML
/// table, every key with its type, default, environment variable and
/// meaning.
pub fn reference_markdown() -> String {
    let mut out = String::new();
    let mut table = "";
    for k in KEYS {
        let t = match k.backend {
            Some("") | None => k.table(),
            Some(kind) => kind,
        };
        if t != table {
            table = t;
            let heading = match k.backend {
                None => format!("`[{t}]`"),
                Some("") => "`[backends.NAME]`, every kind".to_string(),
                Some(kind) => format!("`[backends.NAME]` with `kind = \"{kind}\"`"),
            };
            out.push_str(&format!("\n### {heading}\n\n| Key | Type | Default | Environment | Description |\n|---|---|---|---|---|\n"));
        }
        let mut env = Vec::new();
        if k.backend.is_some_and(|b| !b.is_empty()) {
            env.push(format!("`TASKWEAVE_BACKEND_<NAME>_{}`", k.name().to_ascii_uppercase()));
        }
        if let Some(e) = k.env {
            env.push(format!("`{e}`"));
        }
        if let Some(e) = k.fallback_env {
            env.push(format!("`{e}` (when the file does not set it)"));
        }
        if let Some((flag, cmd)) = k.flag {
            env.push(format!("flag `{flag}` of `taskweave {cmd}`"));
        }
        let env = if env.is_empty() { "—".to_string() } else { env.join("; ") };
        let default = match k.default {
            "" => "`\"\"`".to_string(),
            d if d.starts_with('(') => d.trim_start_matches('(').trim_end_matches(')').to_string(),
            "TASKWEAVE_LLM_API_KEY, else OPENAI_API_KEY" => "`TASKWEAVE_LLM_API_KEY`, else `OPENAI_API_KEY`".to_string(),
            d => format!("`{d}`"),
        };
        out.push_str(&format!("| `{}` | {} | {default} | {env} | {} |\n", k.name(), k.ty, k.doc));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_key_of_the_file_is_in_the_table() {
        // Each key a struct of the loader accepts is documented, and each
        // documented key is accepted.
        for k in KEYS.iter().filter(|k| k.backend.is_none()) {
            let (table, name) = k.path.rsplit_once('.').unwrap();
            let value = match k.ty {
                _ if k.path == "engine.default_backend" => "\"local\"".to_string(),
                _ if k.path == "instance.lease" => "\"1m\"".to_string(),
                "duration" => "\"3s\"".to_string(),
                "bool" => "true".into(),
                "integer" | "byte size" => "7".into(),
                "list of paths" | "list of host rules" | "list of names" => "[\"x\"]".into(),
                "URL" if k.path == "engine.store" => "\"sqlite://x.db\"".into(),
                "URL" => "\"http://127.0.0.1:1/v1\"".into(),
                "variable name" => "\"MY_KEY\"".into(),
                _ => "\"x\"".into(),
            };
            let text = format!("[{table}]\n{name} = {value}\n");
            let c = crate::config::Config::parse(&text).unwrap_or_else(|e| panic!("{text}: {e}"));
            assert!(matches!(c.sources.get(k.path), Some(Source::File(_))), "{}", k.path);
        }
        for kind in crate::config::KINDS {
            let documented: Vec<&str> = KEYS.iter().filter(|k| k.backend == Some(kind)).map(|k| k.name()).collect();
            assert_eq!(documented, crate::config::backend_keys(kind), "{kind}");
        }
    }

    #[test]
    fn every_key_has_a_variable() {
        let mut c = crate::config::Config::parse(
            "[backends.pg-main]\nkind = \"postgres\"\n[backends.q]\nkind = \"celery\"\nbroker = \"redis://h\"\n",
        )
        .unwrap();
        c.apply_env(|k| match k {
            "TASKWEAVE_BACKEND_PG_MAIN_CRASH_BUDGET" => Some("5".into()),
            "TASKWEAVE_BACKEND_PG_MAIN_SYNCHRONOUS_COMPLETIONS" => Some("yes".into()),
            "TASKWEAVE_BACKEND_PG_MAIN_MAX_CONNECTIONS" => Some("many".into()),
            "CELERY_BROKER_URL" => Some("redis://from-celery-env".into()),
            "TASKWEAVE_BACKEND_Q_QUEUE" => Some("jobs".into()),
            "TASKWEAVE_HTTP_ALLOW" => Some("10.0.0.0/8, *.example.com".into()),
            "TASKWEAVE_HTTP_MAX_REDIRECTS" => Some("3".into()),
            "TASKWEAVE_MAX_OUTPUT_BYTES" => Some("1KiB".into()),
            "TASKWEAVE_KILL_GRACE" => Some("soon".into()),
            _ => None,
        });
        let pg = &c.backends["pg-main"].options;
        assert_eq!(pg.get("crash_budget"), Some(&toml::Value::Integer(5)));
        assert_eq!(pg.get("synchronous_completions"), Some(&toml::Value::Boolean(true)));
        assert_eq!(pg.get("max_connections"), None, "a value that does not parse is ignored");
        assert_eq!(c.sources["backends.pg-main.crash_budget"], Source::Env("TASKWEAVE_BACKEND_PG_MAIN_CRASH_BUDGET".into()));
        let q = &c.backends["q"].options;
        assert_eq!((q["broker"].as_str(), q["queue"].as_str()), (Some("redis://from-celery-env"), Some("jobs")));
        assert_eq!(c.sources["backends.q.broker"], Source::Env("CELERY_BROKER_URL".into()));
        let l = c.actions.limits();
        assert_eq!(l.egress.allow.iter().map(ToString::to_string).collect::<Vec<_>>(), ["10.0.0.0/8", "*.example.com"]);
        assert_eq!((l.egress.max_redirects, l.max_output_bytes), (3, 1024));
        assert_eq!(l.kill_grace, crate::run::actions::Limits::default().kill_grace);
        assert!(!c.sources.contains_key("actions.kill_grace"));
        // Every key of the file has a variable of its own.
        for k in KEYS.iter().filter(|k| k.backend.is_none()) {
            assert!(k.env.is_some(), "{} has no variable", k.path);
        }
    }

    #[test]
    fn urls_lose_their_passwords() {
        assert_eq!(mask_url("postgres://tw:hunter2@db:5432/tw"), "postgres://tw:***@db:5432/tw");
        assert_eq!(mask_url("redis://:pw@127.0.0.1:6379/0"), "redis://:***@127.0.0.1:6379/0");
        assert_eq!(mask_url("https://h/v1?api_key=abc&x=1"), "https://h/v1?api_key=***&x=1");
        assert_eq!(mask_url("sqlite://.taskweave/state.db"), "sqlite://.taskweave/state.db");
        assert_eq!(mask_url("workflows"), "workflows");
    }
}
