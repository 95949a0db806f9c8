//! Feature flags: Flipt features files and Flipt servers, evaluated exactly
//! as Flipt decides, so that a workflow's `backend:` rollout moves runs
//! between backends a few percent at a time and rolls back by editing a flag.
//!
//! - `model.rs`: the validated flag model (flags, variants, segments,
//!   constraints, rules, rollouts);
//! - `file.rs`: features files (`version: "1.x"`) to the model, with
//!   positioned diagnostics;
//! - `eval.rs`: evaluation identical to Flipt's client engine;
//! - `remote.rs`: evaluation by a Flipt server over REST (timeout, cache);
//! - `routing.rs`: a rollout rule and an evaluation to a backend decision.
//!
//! [`FlagSource`] is what the engine holds: a file (reloaded when it changes;
//! a broken edit keeps the last good flags, with its diagnostics in
//! [`FlagSource::status`]) or a server. It touches only that file or server.

pub mod eval;
pub mod file;
pub mod model;
pub mod remote;
pub mod routing;

pub use eval::{Context, EvalError, Evaluation, Reason, context_of};
pub use model::{Features, FlagType};

use crate::config::FlagsConfig;
use crate::diag::Diagnostic;
use notify_debouncer_full::notify::RecursiveMode;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

/// The namespace used when none is configured.
pub const DEFAULT_NAMESPACE: &str = crate::config::FLAGS_NAMESPACE;
/// How long a remote evaluation may take by default.
pub const DEFAULT_TIMEOUT: Duration = crate::config::FLAGS_TIMEOUT;
/// How long a remote answer is reused by default.
pub const DEFAULT_CACHE_TTL: Duration = crate::config::FLAGS_CACHE_TTL;

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum FlagError {
    #[error(transparent)]
    Eval(#[from] EvalError),
    /// The file has errors and no earlier version loaded.
    #[error("the flag file {file} has {count} error(s); no flags are loaded")]
    Invalid { file: String, count: usize },
    #[error("flag server: {0}")]
    Remote(String),
    #[error("{path}: {message}")]
    Io { path: String, message: String },
    #[error("flags: {0}")]
    Config(String),
}

/// What a source is serving, for `doctor`, `GET /v1/migration` and logs.
#[derive(Debug, Clone, serde::Serialize)]
pub struct SourceStatus {
    pub source: String,
    pub namespace: String,
    /// Whether the last load (or reload) of a file succeeded.
    pub ok: bool,
    /// Flags served (files only).
    pub flags: Option<usize>,
    /// Findings of the last load attempt.
    pub diagnostics: Vec<Diagnostic>,
}

struct FileState {
    /// The flags served: the last good load.
    features: Option<Arc<Features>>,
    /// The bytes last read, so an event that changed nothing reloads nothing.
    last_bytes: Option<Vec<u8>>,
    ok: bool,
    diagnostics: Vec<Diagnostic>,
}

enum Kind {
    /// A features file; `None` for flags handed over already loaded.
    File {
        path: Option<PathBuf>,
        state: RwLock<FileState>,
    },
    Remote(remote::Remote),
}

/// A place flags come from. Cheap to clone.
#[derive(Clone)]
pub struct FlagSource {
    inner: Arc<Inner>,
}

struct Inner {
    namespace: String,
    kind: Kind,
}

impl std::fmt::Debug for FlagSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FlagSource").field("source", &self.describe()).field("namespace", &self.inner.namespace).finish()
    }
}

fn read<T>(l: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(|e| e.into_inner())
}
fn write<T>(l: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(|e| e.into_inner())
}

impl FlagSource {
    /// The source a configuration names, if any: an `http(s)://` URL is a
    /// Flipt server, anything else a features file.
    pub fn from_config(c: &FlagsConfig) -> Result<Option<FlagSource>, FlagError> {
        let Some(src) = c.source.as_deref().map(str::trim).filter(|s| !s.is_empty()) else { return Ok(None) };
        let ns = c.namespace.clone().filter(|n| !n.is_empty()).unwrap_or_else(|| DEFAULT_NAMESPACE.to_string());
        if src.starts_with("http://") || src.starts_with("https://") {
            let timeout = parse_dur(c.timeout.as_deref(), DEFAULT_TIMEOUT, "timeout")?;
            let ttl = parse_dur(c.cache_ttl.as_deref(), DEFAULT_CACHE_TTL, "cache_ttl")?;
            Ok(Some(FlagSource::remote(src, &ns, timeout, ttl)?))
        } else {
            Ok(Some(FlagSource::file(Path::new(src), &ns)))
        }
    }

    /// A features file, loaded now (a broken or missing file serves no
    /// flags and says why in [`FlagSource::status`]).
    pub fn file(path: &Path, namespace: &str) -> FlagSource {
        let state = FileState { features: None, last_bytes: None, ok: false, diagnostics: Vec::new() };
        let s = FlagSource {
            inner: Arc::new(Inner {
                namespace: namespace.to_string(),
                kind: Kind::File { path: Some(path.to_path_buf()), state: RwLock::new(state) },
            }),
        };
        s.reload();
        s
    }

    /// Features already loaded (tests, embedding programs).
    pub fn from_features(features: Features) -> FlagSource {
        let namespace = features.namespace.clone();
        let state = FileState { features: Some(Arc::new(features)), last_bytes: None, ok: true, diagnostics: Vec::new() };
        FlagSource { inner: Arc::new(Inner { namespace, kind: Kind::File { path: None, state: RwLock::new(state) } }) }
    }

    pub fn remote(url: &str, namespace: &str, timeout: Duration, cache_ttl: Duration) -> Result<FlagSource, FlagError> {
        let r = remote::Remote::new(url, timeout, cache_ttl)?;
        Ok(FlagSource { inner: Arc::new(Inner { namespace: namespace.to_string(), kind: Kind::Remote(r) }) })
    }

    pub fn namespace(&self) -> &str {
        &self.inner.namespace
    }

    /// The file path or server URL.
    pub fn describe(&self) -> String {
        match &self.inner.kind {
            Kind::File { path, .. } => path.as_ref().map_or_else(|| "<memory>".to_string(), |p| p.display().to_string()),
            Kind::Remote(r) => r.url().to_string(),
        }
    }

    /// The flags a file source serves now.
    pub fn features(&self) -> Option<Arc<Features>> {
        match &self.inner.kind {
            Kind::File { state, .. } => read(state).features.clone(),
            Kind::Remote(_) => None,
        }
    }

    /// Read the file again. Returns whether the flags served changed. A
    /// broken file keeps the last good flags; its diagnostics are in the status.
    pub fn reload(&self) -> bool {
        let Kind::File { path: Some(path), state } = &self.inner.kind else { return false };
        let file = path.display().to_string();
        let bytes = match std::fs::read(path) {
            Ok(b) => b,
            Err(e) => {
                let mut st = write(state);
                st.ok = false;
                st.last_bytes = None;
                st.diagnostics = vec![Diagnostic::new(
                    crate::diag::Code::Parse,
                    &file,
                    crate::diag::Span::point(1, 1),
                    format!("cannot read the flag file: {e}"),
                )];
                tracing::warn!("flags: cannot read {file}: {e}; serving the last good flags");
                return false;
            }
        };
        if read(state).last_bytes.as_deref() == Some(bytes.as_slice()) {
            return false;
        }
        let loaded = match crate::spec::decode(&file, &bytes) {
            Ok(text) => file::load_str(&file, &text),
            Err(d) => file::Loaded { features: None, diagnostics: vec![d] },
        };
        let mut st = write(state);
        st.last_bytes = Some(bytes);
        st.diagnostics = loaded.diagnostics;
        match loaded.features {
            Some(f) => {
                tracing::info!("flags: loaded {} flag(s) from {file}", f.flags.len());
                st.features = Some(Arc::new(f));
                st.ok = true;
                true
            }
            None => {
                st.ok = false;
                for d in st.diagnostics.iter().filter(|d| d.is_error()) {
                    tracing::warn!("flags: {}:{}:{}: {}", d.file, d.span.start.line, d.span.start.column, d.message);
                }
                false
            }
        }
    }

    pub fn status(&self) -> SourceStatus {
        match &self.inner.kind {
            Kind::File { state, .. } => {
                let st = read(state);
                SourceStatus {
                    source: self.describe(),
                    namespace: self.inner.namespace.clone(),
                    ok: st.ok,
                    flags: st.features.as_ref().map(|f| f.flags.len()),
                    diagnostics: st.diagnostics.clone(),
                }
            }
            Kind::Remote(r) => SourceStatus {
                source: r.url().to_string(),
                namespace: self.inner.namespace.clone(),
                ok: true,
                flags: None,
                diagnostics: Vec::new(),
            },
        }
    }

    /// Evaluate `flag` for an entity: through the API of `kind` when given
    /// (an error when the flag has the other type), else by the flag's type.
    pub async fn evaluate(&self, flag: &str, kind: Option<FlagType>, entity: &str, ctx: &Context) -> Result<Evaluation, FlagError> {
        if entity.is_empty() {
            return Err(EvalError::EmptyEntity { flag: flag.to_string() }.into());
        }
        match &self.inner.kind {
            Kind::File { state, .. } => {
                let features = {
                    let st = read(state);
                    match &st.features {
                        Some(f) => Arc::clone(f),
                        None => {
                            let count = st.diagnostics.iter().filter(|d| d.is_error()).count();
                            return Err(FlagError::Invalid { file: self.describe(), count });
                        }
                    }
                };
                if features.namespace != self.inner.namespace {
                    return Err(EvalError::NotFound { namespace: self.inner.namespace.clone(), flag: flag.to_string() }.into());
                }
                Ok(match kind {
                    Some(FlagType::Variant) => features.variant(flag, entity, ctx)?,
                    Some(FlagType::Boolean) => features.boolean(flag, entity, ctx)?,
                    None => features.evaluate(flag, entity, ctx)?,
                })
            }
            Kind::Remote(r) => r.evaluate(&self.inner.namespace, flag, kind, entity, ctx).await,
        }
    }

    /// Reload a file source whenever its file changes, until the returned
    /// watcher is dropped. `None` for a server.
    pub fn watch(&self, debounce: Duration) -> Result<Option<FileWatcher>, FlagError> {
        let Kind::File { path: Some(path), .. } = &self.inner.kind else { return Ok(None) };
        // Watch the folder, not the file: an editor's save-by-rename would
        // leave a watch on the file itself silent.
        let dir = match path.parent().filter(|d| !d.as_os_str().is_empty()) {
            Some(d) => d.to_path_buf(),
            None => PathBuf::from("."),
        };
        let name = path.file_name().map(|n| n.to_os_string());
        let me = self.clone();
        let mut debouncer = notify_debouncer_full::new_debouncer(debounce, None, move |res: notify_debouncer_full::DebounceEventResult| {
            let relevant = match &res {
                Ok(events) => events.iter().any(|e| e.paths.iter().any(|p| p.file_name().map(|n| n.to_os_string()) == name)),
                Err(_) => true,
            };
            if relevant && me.reload() {
                tracing::info!("flags: reloaded {}", me.describe());
            }
        })
        .map_err(|e| FlagError::Io { path: dir.display().to_string(), message: e.to_string() })?;
        debouncer
            .watch(&dir, RecursiveMode::NonRecursive)
            .map_err(|e| FlagError::Io { path: dir.display().to_string(), message: e.to_string() })?;
        // Nothing changed between the first load and the watch is missed.
        self.reload();
        Ok(Some(FileWatcher { _debouncer: debouncer }))
    }
}

/// Keeps a flag file watched while it lives.
pub struct FileWatcher {
    _debouncer:
        notify_debouncer_full::Debouncer<notify_debouncer_full::notify::RecommendedWatcher, notify_debouncer_full::RecommendedCache>,
}

impl std::fmt::Debug for FileWatcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileWatcher").finish_non_exhaustive()
    }
}

fn parse_dur(s: Option<&str>, default: Duration, what: &str) -> Result<Duration, FlagError> {
    match s {
        None => Ok(default),
        Some(s) => humantime::parse_duration(s.trim())
            .map_err(|e| FlagError::Config(format!("`{what}` must be a duration such as `500ms`, not `{s}` ({e})"))),
    }
}

/// Validation asks a flag source which flags exist (`unknown-flag`): those
/// a features file serves now, in the namespace the source evaluates in
/// (another namespace serves none of them).
impl crate::validate::KnownFlags for FlagSource {
    fn known(&self) -> Option<crate::validate::FlagKeys> {
        let f = self.features().filter(|x| x.namespace == self.namespace())?;
        Some(crate::validate::FlagKeys {
            source: self.describe(),
            namespace: f.namespace.clone(),
            keys: f.flags.iter().map(|x| x.key.clone()).collect(),
        })
    }
}
