//! The workflow registry and hot reload.
//!
//! The registry maps workflow names to the active, validated
//! [`Workflow`] version, and keeps a status object per file: which workflow
//! it declares, which version is active, how the last attempt to load it
//! went (with diagnostics), since when. A reload compiles every changed file
//! off to the side and swaps the good ones in at once; a broken file keeps
//! its last good version serving. Runs pin the `Arc<Workflow>` they started
//! with, so a reload never changes a run in flight.

use crate::diag::Diagnostic;
use crate::plan::Workflow;
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use time::OffsetDateTime;

/// How the last attempt to load a file went.
#[derive(Debug, Clone, Serialize)]
pub struct LoadAttempt {
    pub ok: bool,
    pub diagnostics: Vec<Diagnostic>,
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
}

/// The reload status of one file.
#[derive(Debug, Clone, Serialize)]
pub struct FileStatus {
    pub path: String,
    /// The workflow name the file declares (when readable).
    pub workflow: Option<String>,
    /// The version serving from this file, if any.
    pub active_version: Option<String>,
    pub last_attempt: LoadAttempt,
    /// When the active version started serving.
    #[serde(with = "time::serde::rfc3339::option")]
    pub since: Option<OffsetDateTime>,
}

/// One registered workflow, as listed by the API.
#[derive(Debug, Clone, Serialize)]
pub struct WorkflowEntry {
    pub name: String,
    pub version: String,
    pub file: Option<String>,
    pub tasks: usize,
    pub description: Option<String>,
}

/// What one reload did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ReloadReport {
    /// Workflows whose active version changed (added or updated).
    pub updated: Vec<String>,
    /// Workflows that no longer exist (their file was deleted).
    pub removed: Vec<String>,
    /// Files that failed to load (their last good version, if any, keeps serving).
    pub failed: Vec<String>,
}

impl ReloadReport {
    pub fn is_noop(&self) -> bool {
        self.updated.is_empty() && self.removed.is_empty() && self.failed.is_empty()
    }
}

#[derive(Default)]
struct State {
    /// name -> (active workflow, file it came from)
    active: BTreeMap<String, (Arc<Workflow>, Option<String>)>,
    files: BTreeMap<String, FileStatus>,
}

/// Name -> active workflow, plus per-file reload status.
pub struct Registry {
    folders: Vec<PathBuf>,
    options: crate::validate::Options,
    state: RwLock<State>,
    events: tokio::sync::broadcast::Sender<ReloadReport>,
}

impl Registry {
    pub fn new(folders: Vec<PathBuf>, options: crate::validate::Options) -> Self {
        let (events, _) = tokio::sync::broadcast::channel(256);
        Registry {
            folders,
            options,
            state: RwLock::new(State::default()),
            events,
        }
    }

    pub fn folders(&self) -> &[PathBuf] {
        &self.folders
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, State> {
        self.state.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, State> {
        self.state.write().unwrap_or_else(|e| e.into_inner())
    }

    /// Reload events (one per reload that changed something or failed).
    pub fn subscribe(&self) -> tokio::sync::broadcast::Receiver<ReloadReport> {
        self.events.subscribe()
    }

    /// Register a workflow that comes from no watched file (an embedding program's).
    pub fn insert(&self, wf: Arc<Workflow>) {
        let file = wf.source.as_ref().map(|p| p.display().to_string());
        self.write().active.insert(wf.name.clone(), (wf, file));
    }

    pub fn get(&self, name: &str) -> Option<Arc<Workflow>> {
        self.read().active.get(name).map(|(w, _)| Arc::clone(w))
    }

    pub fn names(&self) -> Vec<String> {
        self.read().active.keys().cloned().collect()
    }

    pub fn list(&self) -> Vec<WorkflowEntry> {
        self.read()
            .active
            .values()
            .map(|(w, f)| WorkflowEntry {
                name: w.name.clone(),
                version: w.version.clone(),
                file: f.clone(),
                tasks: w.tasks.len(),
                description: w.description.clone(),
            })
            .collect()
    }

    /// Per-file status, sorted by path.
    pub fn status(&self) -> Vec<FileStatus> {
        self.read().files.values().cloned().collect()
    }

    /// The status of the file a workflow is served from, or that declares it.
    pub fn status_of(&self, name: &str) -> Vec<FileStatus> {
        self.read().files.values().filter(|f| f.workflow.as_deref() == Some(name)).cloned().collect()
    }

    /// Scan every folder and load everything (the first load, or a full resync).
    pub fn load_all(&self) -> ReloadReport {
        let mut files = Vec::new();
        for dir in &self.folders {
            if let Ok(found) = crate::validate::find_files(dir) {
                files.extend(found);
            }
        }
        let known: Vec<PathBuf> = self.read().files.keys().map(PathBuf::from).collect();
        files.extend(known);
        files.sort();
        files.dedup();
        self.reload_paths(&files)
    }

    /// Reload a set of changed paths as one transaction: every file is
    /// compiled first; then the good ones swap in together, broken ones keep
    /// their last good version, deleted ones disappear for new runs.
    pub fn reload_paths(&self, paths: &[PathBuf]) -> ReloadReport {
        let now = OffsetDateTime::now_utc();
        // 1. Compile off to the side (no lock held).
        let mut compiled: Vec<(String, Option<crate::validate::Checked>)> = Vec::new();
        for p in paths {
            let key = p.display().to_string();
            if p.is_file() && crate::validate::is_workflow_file(p) {
                match crate::validate::check_file(p, &self.options) {
                    Ok(c) => compiled.push((key, Some(c))),
                    Err(_) => compiled.push((key, None)),
                }
            } else if !p.exists() {
                compiled.push((key, None));
            }
        }
        // 2. Swap under the write lock.
        let mut report = ReloadReport::default();
        let mut st = self.write();
        for (key, checked) in compiled {
            match checked {
                None => {
                    // Deleted (or unreadable): its workflow disappears for new runs.
                    if let Some(old) = st.files.remove(&key)
                        && let Some(name) = old.workflow
                        && st.active.get(&name).is_some_and(|(_, f)| f.as_deref() == Some(key.as_str()))
                    {
                        st.active.remove(&name);
                        report.removed.push(name);
                    }
                }
                Some(c) => {
                    let name = c.name.as_ref().map(|(n, _)| n.clone());
                    let prev = st.files.get(&key).cloned();
                    // Another file already serves this name: duplicate-workflow.
                    let clash = name.as_ref().and_then(|n| {
                        st.active.get(n).and_then(|(_, f)| f.clone()).filter(|f| f != &key)
                    });
                    let mut diagnostics = c.diagnostics.clone();
                    if let (Some(other), Some((n, span))) = (&clash, &c.name) {
                        diagnostics.push(
                            Diagnostic::new(crate::diag::Code::DuplicateWorkflow, key.clone(), *span, format!("workflow `{n}` is also declared in {other}"))
                                .with_help("workflow names must be unique across the watched folders; the file loaded first keeps serving"),
                        );
                    }
                    let serving = if clash.is_none() { c.workflow.clone() } else { None };
                    let ok = serving.is_some();
                    let mut status = FileStatus {
                        path: key.clone(),
                        workflow: name.clone(),
                        active_version: prev.as_ref().and_then(|p| p.active_version.clone()),
                        last_attempt: LoadAttempt { ok, diagnostics, at: now },
                        since: prev.as_ref().and_then(|p| p.since),
                    };
                    if let Some(wf) = serving {
                        // A renamed workflow: the old name stops serving from this file.
                        if let Some(old) = prev.as_ref().and_then(|p| p.workflow.clone()).filter(|o| Some(o) != name.as_ref())
                            && st.active.get(&old).is_some_and(|(_, f)| f.as_deref() == Some(key.as_str()))
                        {
                            st.active.remove(&old);
                            report.removed.push(old);
                        }
                        let changed = status.active_version.as_deref() != Some(wf.version.as_str());
                        if changed {
                            status.active_version = Some(wf.version.clone());
                            status.since = Some(now);
                            report.updated.push(wf.name.clone());
                        }
                        st.active.insert(wf.name.clone(), (wf, Some(key.clone())));
                    } else {
                        report.failed.push(key.clone());
                    }
                    st.files.insert(key, status);
                }
            }
        }
        drop(st);
        if !report.is_noop() {
            let _ = self.events.send(report.clone());
        }
        report
    }
}

/// Whether a path is inside one of the folders.
pub fn is_watched(folders: &[PathBuf], p: &Path) -> bool {
    folders.iter().any(|f| p.starts_with(f))
}
