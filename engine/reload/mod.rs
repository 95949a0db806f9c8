//! The workflow registry and hot reload.
//!
//! The registry maps workflow names to the active, validated
//! [`Workflow`] version, and keeps a status object per file: which workflow
//! it declares, which version is active, how the last attempt to load it
//! went (with diagnostics), since when. A reload compiles every changed file
//! off to the side and swaps the good ones in at once; a broken file keeps
//! its last good version serving. Runs pin the `Arc<Workflow>` they started
//! with, so a reload never changes a run in flight.
//!
//! [`watch`] keeps a registry in step with its folders on disk. This module
//! touches the file system only to read workflow files and list folders;
//! validation itself stays pure.

pub mod watch;

pub use watch::{DEFAULT_DEBOUNCE, Watcher, watch};

use crate::diag::{Code, Diagnostic, Span};
use crate::plan::Workflow;
use crate::spec::Format;
use crate::validate::Checked;
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use time::OffsetDateTime;

/// Why live reload could not start.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error("cannot watch {}: {source}", .path.display())]
    Watch {
        path: PathBuf,
        #[source]
        source: notify::Error,
    },
    #[error("cannot start the file watcher: {0}")]
    Notify(#[source] notify::Error),
    #[error("cannot start the reload thread: {0}")]
    Thread(#[source] std::io::Error),
    #[error(transparent)]
    Io(std::io::Error),
}

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

/// Whether a configured workflow folder is there to load from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FolderState {
    /// A folder that can be listed.
    Ok,
    /// Nothing at the path (never created, moved away or deleted): its
    /// workflows are unloaded, and it is watched for until it returns.
    Missing,
    /// Something is there, but not a folder that can be listed.
    Unreadable,
}

/// The state of one configured workflow folder, read from the disk when asked.
#[derive(Debug, Clone, Serialize)]
pub struct FolderStatus {
    pub path: String,
    pub state: FolderState,
    /// Why it cannot be listed, for `unreadable`.
    pub error: Option<String>,
}

impl FolderState {
    pub fn as_str(self) -> &'static str {
        match self {
            FolderState::Ok => "ok",
            FolderState::Missing => "missing",
            FolderState::Unreadable => "unreadable",
        }
    }
}

impl FolderStatus {
    fn of(folder: &Path) -> FolderStatus {
        let (state, error) = match std::fs::read_dir(folder) {
            Ok(_) => (FolderState::Ok, None),
            Err(e) if matches!(e.kind(), std::io::ErrorKind::NotFound) => (FolderState::Missing, None),
            Err(e) => (FolderState::Unreadable, Some(e.to_string())),
        };
        FolderStatus { path: key(folder), state, error }
    }

    pub fn is_ok(&self) -> bool {
        self.state == FolderState::Ok
    }
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

/// `updated hello, report; removed old; 1 file failed (workflows/bad.yaml)`.
impl std::fmt::Display for ReloadReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut parts = Vec::new();
        if !self.updated.is_empty() {
            parts.push(format!("updated {}", self.updated.join(", ")));
        }
        if !self.removed.is_empty() {
            parts.push(format!("removed {}", self.removed.join(", ")));
        }
        if !self.failed.is_empty() {
            let files = if self.failed.len() == 1 { "file" } else { "files" };
            parts.push(format!("{} {files} failed ({})", self.failed.len(), self.failed.join(", ")));
        }
        if parts.is_empty() {
            return f.write_str("nothing changed");
        }
        f.write_str(&parts.join("; "))
    }
}

/// A file's content fingerprint: CRC-32 and length.
type Sum = (u32, usize);

#[derive(Default)]
struct State {
    /// name -> (active workflow, file it came from)
    active: BTreeMap<String, (Arc<Workflow>, Option<String>)>,
    files: BTreeMap<String, FileStatus>,
    /// The fingerprint of each file's last read, kept only when the outcome
    /// depends on that file alone: the same bytes again are a no-op.
    sums: HashMap<String, Sum>,
    /// Valid workflows whose name another file already serves (a
    /// `duplicate-workflow`), by file: one takes over when the name frees up.
    standby: BTreeMap<String, Arc<Workflow>>,
    /// file -> the names it serves (`active` the other way round).
    by_file: HashMap<String, BTreeSet<String>>,
}

impl State {
    /// The names a file serves (at most one, but an embedding program may insert more).
    fn served_by(&self, key: &str) -> Vec<String> {
        self.by_file.get(key).map(|names| names.iter().cloned().collect()).unwrap_or_default()
    }

    fn serve(&mut self, wf: Arc<Workflow>, file: Option<String>) {
        let name = wf.name.clone();
        self.unserve(&name);
        if let Some(f) = &file {
            self.by_file.entry(f.clone()).or_default().insert(name.clone());
        }
        self.active.insert(name, (wf, file));
    }

    fn unserve(&mut self, name: &str) {
        if let Some((_, Some(f))) = self.active.remove(name)
            && let Some(names) = self.by_file.get_mut(&f)
        {
            names.remove(name);
            if names.is_empty() {
                self.by_file.remove(&f);
            }
        }
    }
}

/// What reading and compiling one file gave.
enum Outcome {
    /// Same bytes as last time: nothing to do.
    Unchanged,
    /// The file is gone.
    Deleted,
    /// The file exists but cannot be read.
    Unreadable(std::io::Error),
    /// A symbolic link that leads out of its folder (given): not read.
    Outside(PathBuf),
    Checked(Box<Checked>, Sum),
}

/// Name -> active workflow, plus per-file reload status.
pub struct Registry {
    folders: Vec<PathBuf>,
    options: crate::validate::Options,
    state: RwLock<State>,
    events: tokio::sync::broadcast::Sender<ReloadReport>,
    /// One reload at a time; readers are never blocked by a compile.
    reloading: Mutex<()>,
}

impl Registry {
    pub fn new(folders: Vec<PathBuf>, options: crate::validate::Options) -> Self {
        let (events, _) = tokio::sync::broadcast::channel(256);
        Registry { folders, options, state: RwLock::new(State::default()), events, reloading: Mutex::new(()) }
    }

    pub fn folders(&self) -> &[PathBuf] {
        &self.folders
    }

    /// What validation of this registry's files knows (backends, handlers, flags).
    pub fn options(&self) -> &crate::validate::Options {
        &self.options
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
        self.write().serve(wf, file);
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

    /// The state of every configured folder, in configuration order: a
    /// folder that is missing (moved away, deleted) or cannot be listed is a
    /// problem to report, not an empty folder.
    pub fn folder_status(&self) -> Vec<FolderStatus> {
        self.folders.iter().map(|f| FolderStatus::of(f)).collect()
    }

    /// The status of the file a workflow is served from, or that declares it.
    pub fn status_of(&self, name: &str) -> Vec<FileStatus> {
        self.read().files.values().filter(|f| f.workflow.as_deref() == Some(name)).cloned().collect()
    }

    /// The status of one file, by the path it was loaded under.
    pub fn file_status(&self, path: &Path) -> Option<FileStatus> {
        self.read().files.get(&key(path)).cloned()
    }

    /// Scan every folder and load everything (the first load, or a full resync).
    /// Files whose bytes did not change since their last load are skipped.
    pub fn load_all(&self) -> ReloadReport {
        let mut paths = self.folders.clone();
        paths.extend(self.read().files.keys().map(PathBuf::from));
        self.reload_paths(&paths)
    }

    /// Reload a set of changed paths as one transaction: every file is
    /// compiled first; then the good ones swap in together, broken ones keep
    /// their last good version, deleted ones disappear for new runs.
    ///
    /// A path may be a workflow file (present or deleted) or a folder: a
    /// folder stands for the workflow files found in it and every file
    /// loaded from under it before (so a deleted folder removes them all).
    /// Other paths are ignored. A file whose bytes are the same as at its
    /// last load is skipped.
    pub fn reload_paths(&self, paths: &[PathBuf]) -> ReloadReport {
        let _one_at_a_time = self.reloading.lock().unwrap_or_else(|e| e.into_inner());
        // 1. Compile off to the side (no lock held while compiling).
        let (keys, sums): (Vec<String>, Vec<Option<Sum>>) = {
            let st = self.read();
            let keys = expand(&st, paths);
            let sums = keys.iter().map(|k| st.sums.get(k).copied()).collect();
            (keys, sums)
        };
        // Each folder resolved once, to tell links that lead out of it.
        let roots: Vec<(PathBuf, Option<PathBuf>)> = self.folders.iter().map(|f| (f.clone(), f.canonicalize().ok())).collect();
        let outcomes = compile_all(&keys, &sums, &self.options, &roots);
        // 2. Swap under the write lock.
        let now = OffsetDateTime::now_utc();
        let mut st = self.write();
        let report = apply(&mut st, keys.into_iter().zip(outcomes).collect(), now);
        // Sent before the new state shows: whoever sees it finds the event queued.
        if !report.is_noop() {
            let _ = self.events.send(report.clone());
        }
        drop(st);
        report
    }
}

/// The registry's key of a path.
fn key(p: &Path) -> String {
    p.display().to_string()
}

/// The files a set of changed paths stands for, sorted and without repeats.
fn expand(st: &State, paths: &[PathBuf]) -> Vec<String> {
    let mut keys = BTreeSet::new();
    let known_under = |dir: &Path| st.files.keys().filter(|k| Path::new(k.as_str()).starts_with(dir)).cloned().collect::<Vec<_>>();
    for p in paths {
        if p.is_dir() {
            // Links that lead out of the folder too: reading them is refused
            // (and reported) in `compile`.
            if let Ok(found) = crate::validate::walk(p) {
                keys.extend(found.files.iter().chain(&found.outside).map(|f| key(f)));
            }
            keys.extend(known_under(p));
        } else if crate::validate::is_workflow_file(p) {
            keys.insert(key(p));
        } else if !p.exists() {
            // Perhaps a deleted folder: what was loaded from under it goes too.
            keys.extend(known_under(p));
        }
    }
    keys.into_iter().collect()
}

/// Read and compile files, in parallel when there are several (a branch
/// switch changes dozens at once; and one huge file must not hold the
/// others up behind it), keeping their order.
fn compile_all(
    keys: &[String],
    sums: &[Option<Sum>],
    opts: &crate::validate::Options,
    roots: &[(PathBuf, Option<PathBuf>)],
) -> Vec<Outcome> {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get()).min(8).min(keys.len());
    if threads <= 1 {
        return keys.iter().zip(sums).map(|(k, s)| compile(k, *s, opts, roots)).collect();
    }
    let next = std::sync::atomic::AtomicUsize::new(0);
    let mut done: Vec<(usize, Outcome)> = std::thread::scope(|s| {
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                s.spawn(|| {
                    let mut out = Vec::new();
                    loop {
                        let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        let (Some(k), Some(sum)) = (keys.get(i), sums.get(i)) else { break };
                        out.push((i, compile(k, *sum, opts, roots)));
                    }
                    out
                })
            })
            .collect();
        workers.into_iter().flat_map(|w| w.join().unwrap_or_else(|e| std::panic::resume_unwind(e))).collect()
    });
    done.sort_by_key(|(i, _)| *i);
    done.into_iter().map(|(_, o)| o).collect()
}

/// Read and check one file. A file whose path resolves (through symbolic
/// links) outside its folder is not read; one inside is read from where
/// it resolves, so what is read is what was checked.
fn compile(key: &str, last: Option<Sum>, opts: &crate::validate::Options, roots: &[(PathBuf, Option<PathBuf>)]) -> Outcome {
    let path = Path::new(key);
    let mut from = std::borrow::Cow::Borrowed(path);
    if let Some((folder, Some(root))) = roots.iter().find(|(f, _)| path.starts_with(f))
        && let Ok(real) = path.canonicalize()
    {
        if !real.starts_with(root) {
            return Outcome::Outside(folder.clone());
        }
        from = std::borrow::Cow::Owned(real);
    }
    match std::fs::read(&from) {
        Ok(bytes) => {
            let sum = (crc32fast::hash(&bytes), bytes.len());
            if last == Some(sum) {
                return Outcome::Unchanged;
            }
            let format = Format::from_path(path).unwrap_or(Format::Yaml);
            Outcome::Checked(Box::new(crate::validate::check_bytes(key, &bytes, format, opts)), sum)
        }
        Err(e) if matches!(e.kind(), std::io::ErrorKind::NotFound | std::io::ErrorKind::NotADirectory) || path.is_dir() => Outcome::Deleted,
        Err(e) => Outcome::Unreadable(e),
    }
}

/// The names a transaction touched, with what served them before it:
/// (version, when that version started serving).
#[derive(Default)]
struct Before(BTreeMap<String, Option<(String, Option<OffsetDateTime>)>>);

impl Before {
    fn touch(&mut self, st: &State, name: &str) {
        if !self.0.contains_key(name) {
            let was = st.active.get(name).map(|(w, f)| (w.version.clone(), f.as_ref().and_then(|f| st.files.get(f)).and_then(|s| s.since)));
            self.0.insert(name.to_string(), was);
        }
    }
}

/// Swap a transaction's outcomes in: deletions first (so a file renamed in
/// the same transaction does not clash with itself), then new and changed
/// files, then workflows that were waiting for a name another file freed.
fn apply(st: &mut State, outcomes: Vec<(String, Outcome)>, now: OffsetDateTime) -> ReloadReport {
    let mut before = Before::default();
    let mut touched = BTreeSet::new();
    let mut failed = BTreeSet::new();
    let mut freed = BTreeSet::new();

    for (key, _) in outcomes.iter().filter(|(_, o)| matches!(o, Outcome::Deleted)) {
        for name in st.served_by(key) {
            before.touch(st, &name);
            st.unserve(&name);
            freed.insert(name);
        }
        st.files.remove(key);
        st.sums.remove(key);
        st.standby.remove(key);
    }

    // Valid files claim their names together (see `settle`); statuses are written after.
    let mut claims: BTreeMap<String, Claim> = BTreeMap::new();
    let mut results: Vec<(String, Option<String>, Vec<Diagnostic>)> = Vec::new();
    for (key, outcome) in outcomes {
        match outcome {
            Outcome::Unchanged | Outcome::Deleted => {}
            Outcome::Unreadable(e) => {
                let d = Diagnostic::new(Code::Parse, key.clone(), Span::point(1, 1), format!("cannot read the file: {e}"));
                results.push(not_loaded(st, key, d));
            }
            Outcome::Outside(folder) => {
                let d = crate::validate::external_symlink(&key, &folder);
                results.push(not_loaded(st, key, d));
            }
            Outcome::Checked(c, sum) => {
                let c = *c;
                st.standby.remove(&key);
                match c.workflow {
                    Some(wf) => {
                        let span = c.name.as_ref().map(|(_, s)| *s).unwrap_or_default();
                        claims.insert(key.clone(), Claim { wf, span, sum });
                    }
                    // Broken: the last good version (if any) keeps serving.
                    None => {
                        st.sums.insert(key.clone(), sum);
                    }
                }
                results.push((key, c.name.map(|(n, _)| n), c.diagnostics));
            }
        }
    }
    let winners = settle(st, &claims);
    // Winners give up the names they served before (a workflow renamed in
    // its file), then take their new ones.
    for key in &winners {
        for old in st.served_by(key).into_iter().filter(|n| *n != claims[key].wf.name) {
            before.touch(st, &old);
            st.unserve(&old);
            freed.insert(old);
        }
    }
    for key in &winners {
        let claim = &claims[key];
        before.touch(st, &claim.wf.name);
        st.serve(Arc::clone(&claim.wf), Some(key.clone()));
        st.sums.insert(key.clone(), claim.sum);
    }
    for (key, declared, mut diagnostics) in results {
        let ok = winners.contains(&key);
        if let Some(claim) = claims.get(&key).filter(|_| !ok) {
            // Another file serves this name: duplicate-workflow, the first keeps serving.
            let other = st.active.get(&claim.wf.name).and_then(|(_, f)| f.clone()).unwrap_or_default();
            diagnostics.push(
                Diagnostic::new(
                    Code::DuplicateWorkflow,
                    key.clone(),
                    claim.span,
                    format!("workflow `{}` is also declared in {other}", claim.wf.name),
                )
                .with_help("workflow names must be unique across the watched folders; the file loaded first keeps serving"),
            );
            st.sums.remove(&key);
            st.standby.insert(key.clone(), Arc::clone(&claim.wf));
        }
        let prev = st.files.remove(&key);
        st.files.insert(
            key.clone(),
            FileStatus {
                path: key.clone(),
                workflow: declared,
                active_version: prev.as_ref().and_then(|p| p.active_version.clone()),
                last_attempt: LoadAttempt { ok, diagnostics, at: now },
                since: prev.and_then(|p| p.since),
            },
        );
        if !ok {
            failed.insert(key.clone());
        }
        touched.insert(key);
    }

    // A freed name goes to a valid file that lost the clash for it (the first by path).
    for name in freed {
        if st.active.contains_key(&name) {
            continue;
        }
        let Some(file) = st.standby.iter().find(|(_, w)| w.name == name).map(|(f, _)| f.clone()) else { continue };
        let Some(wf) = st.standby.remove(&file) else { continue };
        before.touch(st, &name);
        st.serve(wf, Some(file.clone()));
        if let Some(s) = st.files.get_mut(&file) {
            s.last_attempt.ok = true;
            s.last_attempt.diagnostics.retain(|d| d.code != Code::DuplicateWorkflow);
            s.last_attempt.at = now;
        }
        failed.remove(&file);
        touched.insert(file);
    }

    // Which version each touched file now serves, and since when. A version
    // that only moved to another file (a renamed file) keeps its `since`.
    for key in &touched {
        let serving = st.served_by(key).into_iter().next().and_then(|n| st.active.get(&n).map(|(w, _)| (n, w.version.clone())));
        let Some(status) = st.files.get_mut(key) else { continue };
        let version = serving.as_ref().map(|(_, v)| v.clone());
        if status.active_version != version {
            status.since = serving.map(|(name, v)| match before.0.get(&name) {
                Some(Some((old, since))) if *old == v => since.unwrap_or(now),
                _ => now,
            });
            status.active_version = version;
        }
    }

    let mut report = ReloadReport { failed: failed.into_iter().collect(), ..Default::default() };
    for (name, was) in before.0 {
        match (was.map(|(v, _)| v), st.active.get(&name).map(|(w, _)| &w.version)) {
            (Some(_), None) => report.removed.push(name),
            (old, Some(new)) if old.as_ref() != Some(new) => report.updated.push(name),
            _ => {}
        }
    }
    report
}

/// The result of a file that was not read: its last good version (if any)
/// keeps serving, under the name it declared.
fn not_loaded(st: &mut State, key: String, d: Diagnostic) -> (String, Option<String>, Vec<Diagnostic>) {
    st.sums.remove(&key);
    st.standby.remove(&key);
    let declared = st.files.get(&key).and_then(|s| s.workflow.clone());
    (key, declared, vec![d])
}

/// A valid file's claim on the workflow name it declares.
struct Claim {
    wf: Arc<Workflow>,
    /// Where the name is in the file.
    span: Span,
    sum: Sum,
}

/// Which valid files of a reload get the name they declare. A name stays
/// with the file that serves it unless that file gives it up in this very
/// reload (it now declares another name it gets); otherwise the first
/// claimant by path gets it. A file that loses keeps serving what it served,
/// which may block another claim in turn, so this repeats until nothing
/// changes (at most once per claim).
fn settle(st: &State, claims: &BTreeMap<String, Claim>) -> BTreeSet<String> {
    let mut winners: BTreeSet<String> = claims.keys().cloned().collect();
    loop {
        let mut first: HashMap<&str, &str> = HashMap::new();
        for key in &winners {
            first.entry(claims[key].wf.name.as_str()).or_insert(key.as_str());
        }
        let lost = winners.iter().find(|key| {
            let name = &claims[key.as_str()].wf.name;
            let held = st.active.get(name).and_then(|(_, f)| f.as_ref()).filter(|holder| *holder != *key).is_some_and(|holder| {
                let releases = winners.contains(holder) && claims[holder].wf.name != *name;
                !releases
            });
            held || first.get(name.as_str()).is_some_and(|k| *k != key.as_str())
        });
        match lost.cloned() {
            Some(key) => winners.remove(&key),
            None => return winners,
        };
    }
}

/// Whether a path is inside one of the folders.
pub fn is_watched(folders: &[PathBuf], p: &Path) -> bool {
    folders.iter().any(|f| p.starts_with(f))
}
