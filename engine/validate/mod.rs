//! Validation: text in, diagnostics (and, when clean, a compiled
//! [`Workflow`]) out.
//!
//! Pure: it reads the files it is given and nothing else — no sockets, no
//! processes, no clock — so the CLI, the editor integration and hot reload can
//! call it freely. Every finding is reported at once, each at its node.

mod actions;
mod backends;
mod conditions;
mod context;
mod durations;
mod graph;
mod handlers;
mod rules;
mod schema;
mod suggest;
mod templates;

pub use actions::ACTIONS;
pub use handlers::HandlerCatalog;

use crate::diag::{Code, Diagnostic, Span};
use crate::plan::Workflow;
use crate::spec::{self, Format};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The flags a flag source defines, as validation sees them (implemented by
/// the flag sources, which live above validation).
pub trait KnownFlags: Send + Sync + std::fmt::Debug {
    /// The source's name (a file path), its namespace and its flag keys
    /// now; `None` when they cannot be known (a server, a file that never
    /// loaded).
    fn known(&self) -> Option<FlagKeys>;
}

/// What [`KnownFlags::known`] answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlagKeys {
    pub source: String,
    pub namespace: String,
    pub keys: Vec<String>,
}

/// What validation may know beyond the file itself.
#[derive(Debug, Clone)]
pub struct Options {
    /// The configured backend names, when a configuration is given;
    /// enables `unknown-backend`.
    pub backends: Option<Vec<String>>,
    /// The kind of each configured backend (name -> kind) and the default
    /// backend, when a configuration is given; enables `backend-action`.
    pub backend_kinds: Option<(BTreeMap<String, String>, String)>,
    /// The handlers `uses:` may name, with their schemas; enables
    /// `unknown-handler`, `handler-args` and `output-field`. `None`: any
    /// name is accepted and nothing is checked against a schema.
    pub handlers: Option<Arc<HandlerCatalog>>,
    /// The configured flag source; when it knows its flags (a features file
    /// that loaded), enables `unknown-flag` (asked at each check, so a
    /// reloaded file counts).
    pub flags: Option<Arc<dyn KnownFlags>>,
    /// How many diagnostics one file reports at most (`0`: all); the rest
    /// are counted in a final `too-many-diagnostics` diagnostic.
    pub max_diagnostics: usize,
}

impl Default for Options {
    fn default() -> Self {
        Options { backends: None, backend_kinds: None, handlers: None, flags: None, max_diagnostics: crate::diag::DEFAULT_MAX_PER_FILE }
    }
}

impl Options {
    /// These options, knowing `handlers` (see [`crate::run::actions::Handlers::catalog`]).
    pub fn with_handlers(mut self, handlers: HandlerCatalog) -> Self {
        self.handlers = Some(Arc::new(handlers));
        self
    }
}

/// The outcome of checking one file.
#[derive(Debug)]
pub struct Checked {
    pub file: String,
    /// The text, when the file decoded (for rendering excerpts).
    pub text: Option<String>,
    pub diagnostics: Vec<Diagnostic>,
    /// The compiled workflow, when there is no error.
    pub workflow: Option<Arc<Workflow>>,
    /// The declared workflow name and its span, when readable.
    pub name: Option<(String, Span)>,
}

impl Checked {
    pub fn has_errors(&self) -> bool {
        self.diagnostics.iter().any(Diagnostic::is_error)
    }
}

/// Check bytes read from `file`.
///
/// A file that is not text (not UTF-8, or binary) keeps no text: its
/// diagnostic is positioned, but rendering quotes none of its bytes.
pub fn check_bytes(file: &str, bytes: &[u8], format: Format, opts: &Options) -> Checked {
    match spec::decode(file, bytes) {
        Ok(text) => check_source(file, text, format, opts),
        Err(d) => Checked { file: file.to_string(), text: None, diagnostics: vec![d], workflow: None, name: None },
    }
}

/// Check the text of one workflow file.
///
/// The tree is first read as a typed definition; when that succeeds and
/// [`schema::accepts`] finds it within the schema's bounds, the schema would
/// report nothing, so the JSON Schema validator (and the JSON value it needs)
/// is skipped. Any other file goes through the validator, which places every
/// error on its node.
pub fn check_source(file: &str, text: String, format: Format, opts: &Options) -> Checked {
    let mut out = Checked { file: file.to_string(), text: None, diagnostics: Vec::new(), workflow: None, name: None };
    let root = match spec::parse_tree(file, &text, format) {
        Ok(root) => root,
        Err(mut diags) => {
            finish(&mut diags, opts);
            out.diagnostics = diags;
            out.text = Some(text);
            return out;
        }
    };
    let root_span = root.span;
    if let Some(n) = root.get("name").and_then(spec::Node::as_str) {
        out.name = Some((n.to_string(), root.span_at("/name")));
    }
    let mut diags = Vec::new();
    // Where each `when:` is written, for the errors of conditions at run time.
    let mut when_at: Vec<(usize, Span)> = Vec::new();
    // The typed definition, when the schema accepts the file as it is.
    let mut typed = None;
    // The document with its JSON value, when the schema validator ran.
    let mut doc = None;
    if !root.is_map() {
        diags.push(Diagnostic::new(Code::Schema, file, root_span, "a workflow file must be a mapping with `version`, `name` and `tasks`"));
    } else {
        typed = <spec::raw::RawWorkflow as serde::Deserialize>::deserialize(&root).ok().filter(|raw| schema::accepts(&root, raw));
        // The tree alone when the validator is skipped; in `doc` otherwise.
        let tree = match &mut typed {
            Some(raw) => {
                schema::check_input(file, &root, &mut raw.input, &mut diags);
                Some(root)
            }
            None => {
                let d = spec::Document::new(root);
                schema::check(file, &d, &mut diags);
                doc = Some(d);
                None
            }
        };
        if let Some(root) = tree.as_ref().or(doc.as_ref().map(|d| &d.root)) {
            for (i, t) in root.get("tasks").and_then(spec::Node::as_seq).unwrap_or_default().iter().enumerate() {
                if let Some(w) = t.get("when") {
                    when_at.push((i, w.span));
                }
            }
            // The flags a features file serves now, in the namespace the
            // source evaluates in (another namespace serves none of them).
            let features = opts.flags.as_ref().and_then(|f| f.known());
            let pending = context::Rules {
                file,
                text: &text,
                root,
                backends: opts.backends.as_deref(),
                handlers: opts.handlers.as_deref(),
                kinds: opts.backend_kinds.as_ref().map(|(k, d)| (k, d.as_str())),
                flags: features.as_ref(),
                out: &mut diags,
                line_starts: std::cell::OnceCell::new(),
                budget: context::Budget::new(opts.max_diagnostics),
                pending: Default::default(),
                cursor: Default::default(),
                split: (usize::MAX, usize::MAX),
            }
            .check();
            finish(&mut diags, opts);
            suggest::suggest(root, &mut diags, pending);
        }
    }
    if !diags.iter().any(Diagnostic::is_error) {
        let compiled = match (typed, &doc) {
            (Some(raw), _) => crate::plan::compile(raw),
            // Deserialise from a borrowed value: no copy of the document.
            (None, Some(doc)) => <spec::raw::RawWorkflow as serde::Deserialize>::deserialize(&doc.value)
                .map_err(|e| e.to_string())
                .and_then(crate::plan::compile),
            (None, None) => Err("a workflow file must be a mapping".to_string()),
        };
        match compiled {
            Ok(mut wf) => {
                if let Some(w) = Arc::get_mut(&mut wf) {
                    w.source = Some(PathBuf::from(file));
                    for (i, span) in when_at {
                        if let Some(c) = w.tasks.get_mut(i).and_then(|t| t.when.as_mut()) {
                            c.at = Some(format!("{file}:{}:{}", span.start.line, span.start.column));
                        }
                    }
                }
                out.workflow = Some(wf);
            }
            Err(msg) => diags.push(Diagnostic::new(Code::Schema, file, root_span, msg)),
        }
    }
    out.diagnostics = diags;
    out.text = Some(text);
    out
}

/// Drop repeats, sort by position, keep at most the options' number (the
/// `too-many-diagnostics` one last).
fn finish(diags: &mut Vec<Diagnostic>, opts: &Options) {
    crate::diag::dedup(diags);
    crate::diag::sort(diags);
    crate::diag::cap(diags, opts.max_diagnostics);
}

/// Whether a path looks like a workflow file (by extension; `*.test.yaml` and
/// dot-files are not workflows).
pub fn is_workflow_file(p: &Path) -> bool {
    let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
    !name.starts_with('.') && !name.contains(".test.") && Format::from_path(p).is_some()
}

/// All workflow files under a folder, recursively, sorted; symbolic links
/// that lead out of the folder are left out (see [`walk`]).
pub fn find_files(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    walk(dir).map(|w| w.files)
}

/// What a walk of a folder found.
#[derive(Debug, Default)]
pub struct Walk {
    /// Workflow files to read, sorted: regular files, and symbolic links
    /// whose target lies inside the folder.
    pub files: Vec<PathBuf>,
    /// Workflow file names that are symbolic links to a target outside the
    /// folder, sorted. They are not read: a link could otherwise bring any
    /// file the process may read (keys, password files) into diagnostics,
    /// logs and the API.
    pub outside: Vec<PathBuf>,
}

/// The workflow files under a folder, recursively (hidden and build
/// folders left out, symbolic links to folders not followed), split into
/// those to read and the links that lead out of it.
pub fn walk(dir: &Path) -> std::io::Result<Walk> {
    let mut out = Walk::default();
    // Resolved once, when a link needs it.
    let mut root: Option<PathBuf> = None;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d)? {
            let entry = entry?;
            let p = entry.path();
            let ft = entry.file_type()?;
            if ft.is_dir() {
                if !p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with('.') || n == "target" || n == "node_modules") {
                    stack.push(p);
                }
            } else if is_workflow_file(&p) {
                if ft.is_symlink() {
                    let root = match &root {
                        Some(r) => r,
                        None => root.insert(dir.canonicalize()?),
                    };
                    if !resolves_inside(root, &p) {
                        out.outside.push(p);
                        continue;
                    }
                }
                out.files.push(p);
            }
        }
    }
    out.files.sort();
    out.outside.sort();
    Ok(out)
}

/// Whether a path resolves (through every symbolic link) to a place inside
/// `root`, itself resolved. A link that leads nowhere counts as inside: it
/// reads as a missing file, which quotes nothing.
pub fn resolves_inside(root: &Path, path: &Path) -> bool {
    match path.canonicalize() {
        Ok(real) => real.starts_with(root),
        Err(_) => true,
    }
}

/// The `external-symlink` diagnostic of a link that leads out of its folder:
/// at the file, quoting nothing of it.
pub fn external_symlink(file: &str, folder: &Path) -> Diagnostic {
    Diagnostic::new(
        Code::ExternalSymlink,
        file,
        Span::point(1, 1),
        format!("not read: a symbolic link to a file outside {}", folder.display()),
    )
    .with_help("copy the file into the folder, or link to a file inside it")
}

/// Check a file by path.
pub fn check_file(path: &Path, opts: &Options) -> std::io::Result<Checked> {
    let bytes = std::fs::read(path)?;
    let format = Format::from_path(path).unwrap_or(Format::Yaml);
    let file = path.display().to_string();
    // The usual file is plain UTF-8 text, taken as it was read, without a copy;
    // `check_bytes` explains any other.
    match String::from_utf8(bytes) {
        Ok(text) if !text.starts_with('\u{feff}') && !text.contains('\0') && !text.trim().is_empty() => {
            Ok(check_source(&file, text, format, opts))
        }
        Ok(text) => Ok(check_bytes(&file, text.as_bytes(), format, opts)),
        Err(e) => Ok(check_bytes(&file, e.as_bytes(), format, opts)),
    }
}

/// Check files and folders. Folders are searched recursively, and two files
/// found under one folder argument must not declare the same workflow name;
/// a symbolic link in a folder that leads out of it is not read, and is
/// reported (after the folder's files) with an `external-symlink` warning.
/// Files are checked in parallel (see [`threads`]); the result keeps the order
/// of the arguments, and of the sorted files within a folder.
pub fn check_paths(paths: &[PathBuf], opts: &Options) -> std::io::Result<Vec<Checked>> {
    let mut all = Vec::new();
    for p in paths {
        if p.is_dir() {
            let found = walk(p)?;
            let mut group = check_files(&found.files, opts)?;
            duplicate_workflows(&mut group);
            all.extend(group);
            all.extend(found.outside.iter().map(|f| {
                let file = f.display().to_string();
                Checked { diagnostics: vec![external_symlink(&file, p)], file, text: None, workflow: None, name: None }
            }));
        } else {
            all.push(check_file(p, opts)?);
        }
    }
    Ok(all)
}

/// How many threads [`check_paths`] uses: the available parallelism, at most 16.
pub fn threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get()).min(16)
}

/// Check many files, in parallel, keeping their order.
fn check_files(files: &[PathBuf], opts: &Options) -> std::io::Result<Vec<Checked>> {
    let threads = threads().min(files.len());
    if threads <= 1 {
        return files.iter().map(|f| check_file(f, opts)).collect();
    }
    // Work stealing by index: files differ a lot in size, so fixed chunks
    // would leave a thread idle.
    let next = std::sync::atomic::AtomicUsize::new(0);
    let mut results: Vec<(usize, std::io::Result<Checked>)> = std::thread::scope(|s| {
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                s.spawn(|| {
                    let mut done = Vec::new();
                    loop {
                        let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        let Some(f) = files.get(i) else { break };
                        done.push((i, check_file(f, opts)));
                    }
                    done
                })
            })
            .collect();
        workers.into_iter().flat_map(|w| w.join().unwrap_or_else(|e| std::panic::resume_unwind(e))).collect()
    });
    results.sort_by_key(|(i, _)| *i);
    results.into_iter().map(|(_, r)| r).collect()
}

/// Report `duplicate-workflow` at the name of every later file that reuses a name.
pub fn duplicate_workflows(group: &mut [Checked]) {
    let mut first: HashMap<String, String> = HashMap::new();
    for c in group.iter_mut() {
        let Some((name, span)) = c.name.clone() else { continue };
        match first.get(&name) {
            Some(prev) => {
                c.diagnostics.push(
                    Diagnostic::new(Code::DuplicateWorkflow, c.file.clone(), span, format!("workflow `{name}` is also declared in {prev}"))
                        .with_help("workflow names must be unique in a folder; rename one of them"),
                );
                c.workflow = None;
            }
            None => {
                first.insert(name, c.file.clone());
            }
        }
    }
}
