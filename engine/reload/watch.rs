//! Live reload: watch the registry's folders and reload what changed.
//!
//! Each configured folder is watched recursively through
//! notify-debouncer-full, always as a directory (a watch on a single file
//! goes silent after an editor's save-by-rename). Events only say *which
//! paths* to look at; the registry reads the disk to learn what they are now,
//! so a create, an edit, a delete, a rename (both sides), an editor's atomic
//! save (write a temp file, rename it over) and a `git checkout` all come
//! down to "reload these paths". Dot-files, other extensions and files under
//! hidden or build folders are ignored, as `taskweave validate` does; a
//! rename from a workflow file to a temporary name is a delete.
//!
//! The debouncer paces the reloads: its first event after a quiet spell
//! wakes the watcher, which then waits until no relevant raw event has come
//! for `debounce` and reloads everything they named in one
//! [`Registry::reload_paths`] transaction (so a whole branch switch is one
//! reload). The paths come from a [`Probe`] that sees the raw events. Reloads
//! run on the watcher's own thread, never on an async runtime; each is logged
//! at info with its report, and each diagnostic of a file that failed at warn
//! as `file:line:col` (at most `[validate] max_diagnostics` per file).
//!
//! A folder that does not exist yet is waited for by watching its nearest
//! existing ancestor (non-recursively); when it appears it is watched
//! recursively and loaded. A folder that is deleted (or renamed away) unloads
//! its workflows and is waited for again.

use super::{Registry, ReloadError, ReloadReport};
use notify_debouncer_full::notify::event::{AccessKind, AccessMode, ModifyKind};
use notify_debouncer_full::notify::{self, Event, EventKind, RecommendedWatcher, RecursiveMode, WatcherKind};
use notify_debouncer_full::{DebounceEventResult, Debouncer, RecommendedCache};
use std::cell::Cell;
use std::collections::BTreeSet;
use std::path::{Component, Path, PathBuf};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The debounce used by `taskweave serve` unless told otherwise.
pub const DEFAULT_DEBOUNCE: Duration = Duration::from_millis(50);

/// The longest a reload waits for files that keep changing.
const MAX_GATHER: Duration = Duration::from_secs(2);

/// Watches the registry's folders while it lives; dropping it stops
/// watching (and waits for a reload in progress to finish).
pub struct Watcher {
    tx: mpsc::Sender<Msg>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for Watcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Watcher").finish_non_exhaustive()
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        let _ = self.tx.send(Msg::Stop);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

enum Msg {
    /// The debouncer emitted events (what they name, the probe has seen).
    Events,
    Errors(Vec<notify::Error>),
    Stop,
}

/// Watch every folder of the registry (recursively) and reload changed
/// files into it, `debounce` after they stop changing ([`DEFAULT_DEBOUNCE`]
/// is a good value). Before it returns, it brings the registry in step with
/// the disk ([`Registry::load_all`]: cheap for files already loaded, whose
/// bytes are only checksummed), so nothing changed between a first load and
/// the watch is missed, and every change after it returns is seen.
pub fn watch(registry: Arc<Registry>, debounce: Duration) -> Result<Watcher, ReloadError> {
    let debounce = debounce.max(Duration::from_millis(1));
    let tick = (debounce / 4).max(Duration::from_millis(1));
    let roots: Vec<Root> = registry
        .folders()
        .iter()
        .map(|folder| Root { folder: folder.clone(), abs: std::path::absolute(folder).unwrap_or_else(|_| folder.clone()), watch: None })
        .collect();
    let (tx, rx) = mpsc::channel();
    let probe = Arc::new(Probe { roots: roots.iter().map(|r| r.abs.clone()).collect(), seen: Mutex::default(), wake: tx.clone() });
    let events = tx.clone();
    let handler = move |result: DebounceEventResult| {
        let _ = events.send(match result {
            Ok(_) => Msg::Events,
            Err(errs) => Msg::Errors(errs),
        });
    };
    NEXT_PROBE.set(Some(Arc::clone(&probe)));
    let debouncer = notify_debouncer_full::new_debouncer_opt::<_, ProbedWatcher, RecommendedCache>(
        debounce,
        Some(tick),
        handler,
        RecommendedCache::new(),
        notify::Config::default(),
    );
    NEXT_PROBE.set(None);
    let mut worker = Worker { registry, debouncer: debouncer.map_err(ReloadError::Notify)?, roots, probe, rx, debounce };
    for i in 0..worker.roots.len() {
        worker.establish(i)?;
    }
    // Watching first, then reading: a change made meanwhile is seen by both,
    // never by neither.
    let started = Instant::now();
    let report = worker.registry.load_all();
    log_reload(&worker.registry, &report, started.elapsed());
    let thread = std::thread::Builder::new().name("taskweave-reload".into()).spawn(move || worker.run()).map_err(ReloadError::Thread)?;
    Ok(Watcher { tx, thread: Some(thread) })
}

/// One configured folder.
struct Root {
    /// As configured: the form the registry's paths take.
    folder: PathBuf,
    /// Absolute: the form the watcher's events take.
    abs: PathBuf,
    /// What is watched for it: the folder (recursively) or, while it does
    /// not exist, its nearest existing ancestor (non-recursively).
    watch: Option<(PathBuf, RecursiveMode)>,
}

struct Worker {
    registry: Arc<Registry>,
    debouncer: Debouncer<ProbedWatcher, RecommendedCache>,
    roots: Vec<Root>,
    probe: Arc<Probe>,
    rx: mpsc::Receiver<Msg>,
    debounce: Duration,
}

impl Worker {
    fn run(mut self) {
        loop {
            let Ok(msg) = self.rx.recv() else { return };
            if !self.take(msg) {
                return;
            }
            // Gather until files have been quiet for `debounce`: one
            // transaction for a whole branch switch.
            let first = Instant::now();
            let seen = loop {
                let force = first.elapsed() >= MAX_GATHER;
                match self.probe.take_when_quiet(self.debounce, force) {
                    Ok(seen) => break seen,
                    Err(due) => match self.rx.recv_timeout(due.min(first + MAX_GATHER).saturating_duration_since(Instant::now())) {
                        Ok(msg) => {
                            if !self.take(msg) {
                                return;
                            }
                        }
                        Err(RecvTimeoutError::Disconnected) => return,
                        Err(RecvTimeoutError::Timeout) => {}
                    },
                }
            };
            // Wake-ups already queued are covered by this reload.
            while let Ok(msg) = self.rx.try_recv() {
                if !self.take(msg) {
                    return;
                }
            }
            self.flush(seen);
        }
    }

    /// Note what a message says; false to stop. The events themselves
    /// only pace the reloads: the paths come from the [`Probe`].
    fn take(&mut self, msg: Msg) -> bool {
        match msg {
            Msg::Stop => return false,
            Msg::Errors(errs) => {
                for e in errs {
                    tracing::warn!("file watcher: {e}");
                }
            }
            Msg::Events => {}
        }
        true
    }

    /// Watch a folder (again), or its nearest existing ancestor while it is missing.
    fn establish(&mut self, i: usize) -> Result<(), ReloadError> {
        if let Some((old, _)) = self.roots[i].watch.take()
            && !self.roots.iter().any(|r| r.watch.as_ref().is_some_and(|(p, _)| *p == old))
        {
            // Fails when the kernel already dropped it with the folder: fine.
            let _ = self.debouncer.unwatch(&old);
        }
        let abs = &self.roots[i].abs;
        let (target, mode) = if abs.is_dir() {
            (abs.clone(), RecursiveMode::Recursive)
        } else {
            let ancestor = abs.ancestors().skip(1).find(|a| a.is_dir()).unwrap_or(Path::new("/"));
            (ancestor.to_path_buf(), RecursiveMode::NonRecursive)
        };
        // Never downgrade another folder's recursive watch of the same path.
        let covered = mode == RecursiveMode::NonRecursive && self.roots.iter().any(|r| r.watch.as_ref().is_some_and(|(p, _)| *p == target));
        if !covered {
            self.debouncer.watch(&target, mode).map_err(|source| ReloadError::Watch { path: target.clone(), source })?;
        }
        if mode == RecursiveMode::NonRecursive {
            // A problem to see, not an empty folder: its workflows are unloaded.
            tracing::warn!("workflow folder {} is missing: waiting for it in {}", self.roots[i].folder.display(), target.display());
        }
        self.roots[i].watch = Some((target, mode));
        Ok(())
    }

    fn flush(&mut self, seen: Seen) {
        let mut paths: Vec<PathBuf> = seen
            .paths
            .iter()
            .filter_map(|p| registry_path(&self.roots, p))
            .filter(|p| crate::validate::is_workflow_file(p) || !p.is_file())
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        if seen.overflow {
            tracing::warn!("file watcher lost events: reloading every folder");
            paths.extend(self.roots.iter().map(|r| r.folder.clone()));
        }
        for i in seen.hits {
            if let Err(e) = self.establish(i) {
                tracing::warn!("live reload of {} is off: {e}", self.roots[i].folder.display());
            }
            // Load (or unload) the folder as a whole: files may have
            // appeared before the new watch was in place.
            paths.push(self.roots[i].folder.clone());
        }
        if paths.is_empty() {
            return;
        }
        let started = Instant::now();
        let report = self.registry.reload_paths(&paths);
        log_reload(&self.registry, &report, started.elapsed());
    }
}

/// The registry's form of an event's path inside a folder, unless it is
/// the folder itself or lies under a dot-file or a build folder.
fn registry_path(roots: &[Root], p: &Path) -> Option<PathBuf> {
    let root = roots.iter().find(|r| p.starts_with(&r.abs))?;
    let rel = p.strip_prefix(&root.abs).ok()?;
    let ignored = |c: Component<'_>| match c {
        Component::Normal(n) => n.to_str().is_none_or(|n| n.starts_with('.') || n == "target" || n == "node_modules"),
        _ => true,
    };
    if rel.as_os_str().is_empty() || rel.components().any(ignored) {
        return None;
    }
    Some(root.folder.join(rel))
}

/// Whether an event may mean a changed file (opening or reading one does not).
fn is_change(kind: &EventKind) -> bool {
    match kind {
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
        EventKind::Access(_) => false,
        _ => true,
    }
}

fn log_reload(registry: &Registry, report: &ReloadReport, elapsed: Duration) {
    if report.is_noop() {
        tracing::debug!(elapsed_ms = elapsed.as_secs_f64() * 1e3, "workflows reloaded: nothing changed");
        return;
    }
    let ms = elapsed.as_secs_f64() * 1e3;
    if report.updated.is_empty() && report.removed.is_empty() {
        tracing::warn!("workflows not reloaded: {report} in {ms:.1} ms");
    } else {
        tracing::info!("workflows reloaded: {report} in {ms:.1} ms");
    }
    for file in &report.failed {
        let Some(status) = registry.file_status(Path::new(file)) else { continue };
        // At most `[validate] max_diagnostics` of them, the last saying how many more.
        for d in &status.last_attempt.diagnostics {
            tracing::warn!(
                "{}:{}:{}: {}[{}]: {} (the last good version, if any, keeps serving)",
                d.file,
                d.span.start.line,
                d.span.start.column,
                d.severity.as_str(),
                d.code.as_str(),
                d.message
            );
        }
    }
}

/// What the raw events said since the last reload: when the last relevant
/// one happened, which paths inside the folders they named, which folders
/// (or their ancestors) were created, removed or renamed.
///
/// It sits between notify and the debouncer (see [`ProbedWatcher`]) for two
/// reasons. Timing: the debouncer emits each event `debounce` after it
/// happened, path by path, so a burst of writes comes out over several of
/// its ticks; the time of the last raw event tells when the burst is over.
/// Paths: the debouncer drops a create followed by a remove of the same
/// path, which is right unless the registry learnt of the file by a folder
/// scan meanwhile (then it must hear of the remove).
struct Probe {
    roots: Vec<PathBuf>,
    seen: Mutex<Seen>,
    /// Wakes the worker on every relevant raw event: the debouncer may emit
    /// nothing at all for them (a remove that cancels a create it still
    /// held), and the worker must still reload.
    wake: mpsc::Sender<Msg>,
}

#[derive(Default)]
struct Seen {
    last: Option<Instant>,
    /// Absolute paths inside the folders.
    paths: BTreeSet<PathBuf>,
    /// Indexes of the folders that were hit.
    hits: BTreeSet<usize>,
    /// Events were lost, or too many paths to keep: reload everything.
    overflow: bool,
}

/// Past this many changed paths between two reloads, reload whole folders.
const MAX_PATHS: usize = 100_000;

impl Probe {
    fn seen(&self) -> std::sync::MutexGuard<'_, Seen> {
        self.seen.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn saw(&self, ev: &Event) {
        let mut seen = self.seen();
        if ev.need_rescan() {
            seen.overflow = true;
            seen.last = Some(Instant::now());
            drop(seen);
            let _ = self.wake.send(Msg::Events);
            return;
        }
        if !is_change(&ev.kind) {
            return;
        }
        let structural = matches!(ev.kind, EventKind::Create(_) | EventKind::Remove(_) | EventKind::Modify(ModifyKind::Name(_)));
        let mut relevant = false;
        for p in &ev.paths {
            for (i, root) in self.roots.iter().enumerate() {
                if structural && root.starts_with(p) {
                    seen.hits.insert(i);
                    relevant = true;
                } else if p.starts_with(root) {
                    if seen.paths.len() < MAX_PATHS {
                        seen.paths.insert(p.clone());
                    } else {
                        seen.overflow = true;
                    }
                    // Editors' temporary files alone do not hold a reload back.
                    relevant |= !p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with('.'));
                }
            }
        }
        if relevant {
            seen.last = Some(Instant::now());
            drop(seen);
            let _ = self.wake.send(Msg::Events);
        }
    }

    /// Take the paths, hits and overflow seen so far once no relevant raw
    /// event came for `quiet` (or when `force`d); else when that will be.
    /// Checked and taken under one lock, so a write that begins meanwhile
    /// holds the reload back instead of being read half done.
    fn take_when_quiet(&self, quiet: Duration, force: bool) -> Result<Seen, Instant> {
        let mut seen = self.seen();
        match seen.last.map(|t| t + quiet) {
            Some(due) if !force && due > Instant::now() => Err(due),
            _ => Ok(Seen {
                last: seen.last,
                paths: std::mem::take(&mut seen.paths),
                hits: std::mem::take(&mut seen.hits),
                overflow: std::mem::take(&mut seen.overflow),
            }),
        }
    }
}

thread_local! {
    /// Hands the probe to [`ProbedWatcher::new`], which the debouncer calls
    /// with no room for extra arguments, on the thread that creates it.
    static NEXT_PROBE: Cell<Option<Arc<Probe>>> = const { Cell::new(None) };
}

/// The platform's watcher, with a [`Probe`] that sees every raw event
/// before the debouncer does. The debouncer exposes no raw events, and a
/// second watcher would double the kernel watches.
struct ProbedWatcher {
    inner: RecommendedWatcher,
}

impl notify::Watcher for ProbedWatcher {
    fn new<F: notify::EventHandler>(mut handler: F, config: notify::Config) -> notify::Result<Self> {
        let probe = NEXT_PROBE.take();
        let inner = RecommendedWatcher::new(
            move |e: notify::Result<Event>| {
                if let (Some(probe), Ok(ev)) = (&probe, &e) {
                    probe.saw(ev);
                }
                handler.handle_event(e);
            },
            config,
        )?;
        Ok(ProbedWatcher { inner })
    }

    fn watch(&mut self, path: &Path, mode: RecursiveMode) -> notify::Result<()> {
        self.inner.watch(path, mode)
    }

    fn unwatch(&mut self, path: &Path) -> notify::Result<()> {
        self.inner.unwatch(path)
    }

    fn configure(&mut self, option: notify::Config) -> notify::Result<bool> {
        self.inner.configure(option)
    }

    fn kind() -> WatcherKind {
        RecommendedWatcher::kind()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn root(folder: &str, abs: &str) -> Root {
        Root { folder: PathBuf::from(folder), abs: PathBuf::from(abs), watch: None }
    }

    #[test]
    fn event_paths_map_to_the_configured_form() {
        let roots = [root("flows", "/srv/app/flows"), root("./more", "/srv/app/more"), root("/abs/w", "/abs/w")];
        let map = |p: &str| registry_path(&roots, Path::new(p)).map(|p| p.display().to_string());
        assert_eq!(map("/srv/app/flows/a.yaml").as_deref(), Some("flows/a.yaml"));
        assert_eq!(map("/srv/app/flows/team/b.toml").as_deref(), Some("flows/team/b.toml"));
        assert_eq!(map("/srv/app/more/c.yml").as_deref(), Some("./more/c.yml"));
        assert_eq!(map("/abs/w/d.yaml").as_deref(), Some("/abs/w/d.yaml"));
        // Events as notify builds them from a relative watch: `cwd/./more/...`.
        assert_eq!(map("/srv/app/./more/e.yaml").as_deref(), Some("./more/e.yaml"));
        // The folder itself, things outside, dot-files, hidden and build folders: not files to reload.
        for p in [
            "/srv/app/flows",
            "/srv/app/other/a.yaml",
            "/srv/app/flows/.a.yaml.tmp",
            "/srv/app/flows/.git/x.yaml",
            "/srv/app/flows/target/x.yaml",
        ] {
            assert_eq!(map(p), None, "{p}");
        }
    }

    #[test]
    fn opening_and_reading_files_are_not_changes() {
        assert!(!is_change(&EventKind::Access(AccessKind::Open(AccessMode::Any))));
        assert!(!is_change(&EventKind::Access(AccessKind::Close(AccessMode::Read))));
        assert!(is_change(&EventKind::Access(AccessKind::Close(AccessMode::Write))));
        assert!(is_change(&EventKind::Modify(ModifyKind::Any)));
    }

    #[test]
    fn the_probe_notes_paths_inside_folders_and_hits_on_their_ancestors() {
        let probe = Probe { roots: vec![PathBuf::from("/w/flows")], seen: Mutex::default(), wake: mpsc::channel().0 };
        let ev = |kind, p: &str| Event::new(kind).add_path(PathBuf::from(p));
        probe.saw(&ev(EventKind::Access(AccessKind::Open(AccessMode::Any)), "/w/flows/a.yaml"));
        probe.saw(&ev(EventKind::Create(notify::event::CreateKind::File), "/w/other/a.yaml"));
        assert!(probe.seen().last.is_none(), "nothing relevant yet");
        probe.saw(&ev(EventKind::Create(notify::event::CreateKind::File), "/w/flows/.a.yaml.tmp"));
        assert!(probe.seen().last.is_none(), "temporary files alone do not hold a reload back");
        probe.saw(&ev(EventKind::Modify(ModifyKind::Any), "/w/flows/a.yaml"));
        probe.saw(&ev(EventKind::Create(notify::event::CreateKind::Folder), "/w"));
        // Not quiet yet.
        assert!(probe.take_when_quiet(Duration::from_secs(60), false).is_err());
        let seen = probe.take_when_quiet(Duration::from_secs(60), true).unwrap_or_else(|_| panic!("forced"));
        assert_eq!(seen.paths.into_iter().collect::<Vec<_>>(), [PathBuf::from("/w/flows/.a.yaml.tmp"), PathBuf::from("/w/flows/a.yaml")]);
        assert_eq!(seen.hits.into_iter().collect::<Vec<_>>(), [0]);
        assert!(probe.take_when_quiet(Duration::ZERO, false).is_ok_and(|s| s.paths.is_empty() && s.hits.is_empty()));
    }
}
