//! The `extract-text` built-in handler: the text of a plain-text or PDF file.
//!
//! Its `path` usually comes from run input, and run input comes from API
//! callers, so the handler treats it as hostile:
//!
//! - paths resolve against a root folder ([`ExtractTextSettings::root`]) and
//!   must stay inside it: `..`, absolute paths elsewhere and symbolic links
//!   that lead out are refused, and so are hidden files and folders (`.env`,
//!   `.git`, the store in `.taskweave/`). The file is then opened through `cap-std`,
//!   which resolves the path beneath the root folder's descriptor (with
//!   `openat2(RESOLVE_BENEATH)` where the kernel has it), so a link swapped
//!   in after the check cannot lead out either;
//! - only regular files are read: the file is opened with `O_NONBLOCK` (so
//!   opening a FIFO cannot wait for a writer) and the `fstat` of the opened
//!   descriptor must say "regular file", which rules out FIFOs, devices
//!   (`/dev/zero`), sockets and folders;
//! - at most [`ExtractTextSettings::max_bytes`] are read: a file whose size
//!   is larger is refused before reading, and reading stops one byte past the
//!   cap, since files such as those under /proc report a size of 0;
//! - reads are asynchronous and stop when the attempt is cancelled or times
//!   out; nothing waits on a call that cannot be abandoned.
//!
//! PDF parsing is CPU-bound and runs on the blocking pool over the capped
//! bytes; a panic inside the PDF parser becomes a task failure instead of
//! taking the worker down.

use crate::run::actions::process::human_bytes;
use crate::run::actions::{ActionError, DEFAULT_MAX_OUTPUT_BYTES, Handler, HandlerCtx};
use serde_json::{Value, json};
use std::fs::FileType;
use std::os::unix::fs::FileTypeExt;
use std::path::{Component, Path, PathBuf};
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio_util::sync::CancellationToken;

/// Where `extract-text` may read, and how much (`[actions.extract_text]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExtractTextSettings {
    /// The folder paths resolve against and must stay inside. `None`: the
    /// working directory of the process, unless that is `/`, which is never
    /// a default root (a service started by an init system runs in `/`).
    pub root: Option<PathBuf>,
    /// The largest file read, in bytes.
    pub max_bytes: usize,
}

impl Default for ExtractTextSettings {
    fn default() -> Self {
        ExtractTextSettings { root: None, max_bytes: DEFAULT_MAX_OUTPUT_BYTES }
    }
}

/// The `extract-text` handler: `{path}` of a plain-text or PDF file inside
/// the root folder; returns `{text, page_count, extraction_method: "plain" |
/// "pdf"}`.
pub(super) struct ExtractText {
    pub(super) settings: ExtractTextSettings,
}

#[async_trait::async_trait]
impl Handler for ExtractText {
    async fn call(&self, with: Value, ctx: HandlerCtx) -> Result<Value, ActionError> {
        let given = match with.get("path") {
            Some(Value::String(s)) if !s.is_empty() => s.clone(),
            Some(other) => {
                return Err(ActionError::Permanent(format!("extract-text: `path` must be a file path, not {other}")));
            }
            None => {
                return Err(ActionError::Permanent("extract-text: needs `with: {path: ...}`".into()));
            }
        };
        tokio::select! {
            biased;
            _ = ctx.cancel.cancelled() => Err(ActionError::Cancelled),
            r = extract(&self.settings, given, &ctx.cancel) => r,
        }
    }

    fn with_schema(&self) -> Option<Value> {
        Some(json!({
            "type": "object",
            "properties": {"path": {"type": "string", "minLength": 1, "description": "a plain-text or PDF file inside the root folder"}},
            "required": ["path"],
            "additionalProperties": false
        }))
    }

    fn output_schema(&self) -> Option<Value> {
        Some(json!({
            "type": "object",
            "properties": {
                "text": {"type": "string"},
                "page_count": {"type": "integer", "minimum": 0},
                "extraction_method": {"enum": ["plain", "pdf"]}
            },
            "required": ["text", "page_count", "extraction_method"],
            "additionalProperties": false
        }))
    }
}

async fn extract(s: &ExtractTextSettings, given: String, cancel: &CancellationToken) -> Result<Value, ActionError> {
    let max = s.max_bytes;
    let root = s.root.clone();
    let shown = given.clone();
    // Resolving and opening are quick system calls (the open cannot wait on a
    // FIFO), made on the blocking pool as tokio::fs does.
    let (file, real) = tokio::task::spawn_blocking(move || open_inside(root.as_deref(), &shown, max))
        .await
        .map_err(|e| ActionError::Failed(format!("extract-text: opening `{given}` stopped: {e}")))??;
    let bytes = match read_capped(tokio::fs::File::from_std(file), max, cancel).await {
        Ok(b) => b,
        Err(ReadError::Cancelled) => return Err(ActionError::Cancelled),
        Err(ReadError::TooBig) => return Err(too_big(&given, max)),
        Err(ReadError::Io(e)) => return Err(ActionError::Failed(format!("extract-text: cannot read `{given}`: {e}"))),
    };
    if is_pdf(&real, &bytes) {
        let (text, pages) = tokio::task::spawn_blocking(move || pdf_text(&bytes, &given))
            .await
            .map_err(|e| ActionError::Failed(format!("extract-text: PDF extraction stopped: {e}")))??;
        return Ok(json!({"text": text, "page_count": pages, "extraction_method": "pdf"}));
    }
    if bytes.contains(&0) {
        return Err(ActionError::Permanent(format!("extract-text: `{given}` is neither a text file nor a PDF")));
    }
    let text = match String::from_utf8(bytes) {
        Ok(s) => s,
        Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
    };
    Ok(json!({"text": text, "page_count": 1, "extraction_method": "plain"}))
}

fn too_big(given: &str, max: usize) -> ActionError {
    ActionError::Permanent(format!(
        "extract-text: `{given}` is larger than the limit of {} ([actions.extract_text] max_bytes)",
        human_bytes(max)
    ))
}

/// The root folder, absolute as configured and canonical (links resolved).
fn root_dir(root: Option<&Path>) -> Result<(PathBuf, PathBuf), ActionError> {
    let cwd = std::env::current_dir()
        .map_err(|e| ActionError::Permanent(format!("extract-text: no root folder: the working directory cannot be read: {e}")))?;
    let dir = match root {
        Some(r) => cwd.join(r),
        None => cwd.clone(),
    };
    let canonical = std::fs::canonicalize(&dir).map_err(|e| {
        ActionError::Permanent(format!("extract-text: the root folder {} cannot be used: {e} ([actions.extract_text] root)", dir.display()))
    })?;
    if root.is_none() && canonical.parent().is_none() {
        return Err(ActionError::Permanent(
            "extract-text: no root folder: the working directory is `/`, which is never a default root; set [actions.extract_text] root \
             (or TASKWEAVE_EXTRACT_TEXT_ROOT) to the folder documents are read from"
                .into(),
        ));
    }
    Ok((normalise(&dir), canonical))
}

/// `.` and `..` resolved by name only, without looking at the disk.
fn normalise(p: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                out.pop();
            }
            other => out.push(other),
        }
    }
    out
}

/// Open `given` for reading if it is a regular file of at most `max` bytes
/// inside the root folder; also return its canonical path.
fn open_inside(root: Option<&Path>, given: &str, max: usize) -> Result<(std::fs::File, PathBuf), ActionError> {
    let (root_abs, root) = root_dir(root)?;
    let joined = root.join(given);
    // First by name, so that a path outside is refused without a look at the
    // disk (whether it exists there is none of the caller's business).
    let by_name = normalise(&root_abs.join(given));
    if !normalise(&joined).starts_with(&root) && !by_name.starts_with(&root_abs) {
        return Err(ActionError::Permanent(format!(
            "extract-text: `{given}` is outside the root folder {} ([actions.extract_text] root)",
            root.display()
        )));
    }
    let unreadable = |e: std::io::Error| match e.kind() {
        std::io::ErrorKind::NotFound => ActionError::Failed(format!("extract-text: file `{given}` not found")),
        _ => ActionError::Failed(format!("extract-text: cannot read `{given}`: {e}")),
    };
    let real = std::fs::canonicalize(&joined).map_err(unreadable)?;
    let Ok(inside) = real.strip_prefix(&root) else {
        return Err(ActionError::Permanent(format!(
            "extract-text: `{given}` leads outside the root folder {} through a symbolic link ([actions.extract_text] root)",
            root.display()
        )));
    };
    // Hidden files and folders under the root (`.env`, `.git`, the store in
    // `.taskweave/`) hold configuration and credentials, not documents.
    if let Some(hidden) = inside.components().find_map(|c| match c {
        Component::Normal(n) if n.as_encoded_bytes().starts_with(b".") => Some(n.to_string_lossy().into_owned()),
        _ => None,
    }) {
        return Err(ActionError::Permanent(format!(
            "extract-text: `{given}` is or lies in a hidden file or folder (`{hidden}`), which extract-text does not read"
        )));
    }
    let not_regular = |t: FileType| ActionError::Permanent(format!("extract-text: `{given}` is {}, not a regular file", file_kind(t)));
    // Refuse what is plainly not a regular file before opening it (opening a
    // device may have effects of its own); the descriptor is checked again below.
    let t = std::fs::metadata(&real).map_err(unreadable)?.file_type();
    if !t.is_file() {
        return Err(not_regular(t));
    }
    let inside = if inside.as_os_str().is_empty() { Path::new(".") } else { inside };
    let dir = cap_std::fs::Dir::open_ambient_dir(&root, cap_std::ambient_authority()).map_err(|e| {
        ActionError::Permanent(format!(
            "extract-text: the root folder {} cannot be opened: {e} ([actions.extract_text] root)",
            root.display()
        ))
    })?;
    let mut opts = cap_std::fs::OpenOptions::new();
    opts.read(true);
    cap_std::fs::OpenOptionsExt::custom_flags(&mut opts, libc::O_NONBLOCK | libc::O_NOCTTY);
    let file = dir.open_with(inside, &opts).map_err(unreadable)?.into_std();
    let meta = file.metadata().map_err(unreadable)?;
    if !meta.file_type().is_file() {
        return Err(not_regular(meta.file_type()));
    }
    if meta.len() > max as u64 {
        return Err(too_big(given, max));
    }
    Ok((file, real))
}

fn file_kind(t: FileType) -> &'static str {
    if t.is_dir() {
        "a folder"
    } else if t.is_fifo() {
        "a FIFO (named pipe)"
    } else if t.is_char_device() {
        "a character device"
    } else if t.is_block_device() {
        "a block device"
    } else if t.is_socket() {
        "a socket"
    } else if t.is_symlink() {
        "a symbolic link"
    } else {
        "something else"
    }
}

#[derive(Debug)]
enum ReadError {
    TooBig,
    Cancelled,
    Io(std::io::Error),
}

/// Read all of `r` if it holds at most `cap` bytes; stop one byte past the
/// cap, or as soon as `cancel` fires.
async fn read_capped<R: AsyncRead + Unpin>(r: R, cap: usize, cancel: &CancellationToken) -> Result<Vec<u8>, ReadError> {
    let mut buf = Vec::new();
    let mut limited = r.take(cap as u64 + 1);
    tokio::select! {
        biased;
        _ = cancel.cancelled() => return Err(ReadError::Cancelled),
        r = limited.read_to_end(&mut buf) => {
            r.map_err(ReadError::Io)?;
        }
    }
    if buf.len() > cap {
        return Err(ReadError::TooBig);
    }
    Ok(buf)
}

/// A PDF by its extension or its `%PDF-` header (which may follow up to
/// 1 KiB of junk).
fn is_pdf(path: &Path, bytes: &[u8]) -> bool {
    let by_name = path.extension().is_some_and(|e| e.eq_ignore_ascii_case("pdf"));
    let head = &bytes[..bytes.len().min(1024)];
    by_name || head.windows(5).any(|w| w == b"%PDF-")
}

/// The text and page count of a PDF. Runs on a blocking thread.
fn pdf_text(bytes: &[u8], shown: &str) -> Result<(String, usize), ActionError> {
    let parse = || -> Result<(String, usize), String> {
        let mut doc = pdf_extract::Document::load_mem(bytes).map_err(|e| e.to_string())?;
        if doc.is_encrypted() {
            doc.decrypt("").map_err(|e| format!("it is encrypted and needs a password ({e})"))?;
        }
        let pages = doc.get_pages().len();
        let mut text = String::new();
        {
            let mut out = pdf_extract::PlainTextOutput::new(&mut text);
            pdf_extract::output_doc(&doc, &mut out).map_err(|e| e.to_string())?;
        }
        Ok((text, pages))
    };
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(parse)) {
        Ok(Ok(r)) => Ok(r),
        Ok(Err(e)) => Err(ActionError::Failed(format!("extract-text: cannot read the PDF `{shown}`: {e}"))),
        Err(panic) => {
            let why = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown error".into());
            Err(ActionError::Failed(format!("extract-text: the PDF parser failed on `{shown}`: {why}")))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    fn handler(root: &Path, max_bytes: usize) -> ExtractText {
        ExtractText { settings: ExtractTextSettings { root: Some(root.to_path_buf()), max_bytes } }
    }

    fn ctx() -> HandlerCtx {
        HandlerCtx { run_id: "r".into(), task: "t".into(), attempt: 1, cancel: CancellationToken::new(), timeout: None }
    }

    async fn call(h: &ExtractText, path: &str) -> Result<Value, ActionError> {
        // A generous bound: every case here must answer at once, never hang.
        tokio::time::timeout(Duration::from_secs(20), h.call(json!({"path": path}), ctx())).await.expect("extract-text answered")
    }

    fn permanent(r: Result<Value, ActionError>) -> String {
        match r {
            Err(ActionError::Permanent(m)) => m,
            other => panic!("expected a permanent failure, got {other:?}"),
        }
    }

    #[test]
    fn pdfs_are_recognised_by_name_or_header() {
        assert!(is_pdf(Path::new("a.PDF"), b""));
        assert!(is_pdf(Path::new("a.bin"), b"%PDF-1.4\n"));
        assert!(!is_pdf(Path::new("a.txt"), b"hello"));
    }

    #[test]
    fn garbage_pdfs_fail_cleanly() {
        let r = pdf_text(b"%PDF-1.4 this is not a pdf", "x.pdf");
        assert!(matches!(r, Err(ActionError::Failed(ref m)) if m.contains("x.pdf")), "{r:?}");
    }

    #[tokio::test]
    async fn text_inside_the_root_is_read_by_relative_or_absolute_path() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        std::fs::write(dir.path().join("sub/a.txt"), "hello\n").unwrap();
        let h = handler(dir.path(), 1024);
        let want = json!({"text": "hello\n", "page_count": 1, "extraction_method": "plain"});
        assert_eq!(call(&h, "sub/a.txt").await, Ok(want.clone()));
        assert_eq!(call(&h, "./sub/../sub/a.txt").await, Ok(want.clone()));
        assert_eq!(call(&h, dir.path().join("sub/a.txt").to_str().unwrap()).await, Ok(want.clone()));
        // A link that stays inside the root is fine.
        std::os::unix::fs::symlink("sub/a.txt", dir.path().join("inner-link")).unwrap();
        assert_eq!(call(&h, "inner-link").await, Ok(want));
    }

    #[tokio::test]
    async fn paths_outside_the_root_are_refused() {
        let outer = tempfile::tempdir().unwrap();
        let root = outer.path().join("root");
        std::fs::create_dir(&root).unwrap();
        std::fs::write(outer.path().join("secret.txt"), "secret").unwrap();
        std::os::unix::fs::symlink(outer.path().join("secret.txt"), root.join("link-out")).unwrap();
        std::os::unix::fs::symlink("/etc", root.join("etc")).unwrap();
        let h = handler(&root, 1024);
        for p in ["/etc/passwd", "/etc/shadow", "../secret.txt", "a/../../secret.txt", "/dev/zero"] {
            let m = permanent(call(&h, p).await);
            assert!(m.contains("outside the root folder"), "{p}: {m}");
            assert!(m.contains("[actions.extract_text] root"), "{p}: {m}");
        }
        // Missing or not, a path outside says the same.
        let m = permanent(call(&h, "../no-such-file").await);
        assert!(m.contains("outside the root folder"), "{m}");
        for p in ["link-out", "etc/passwd"] {
            let m = permanent(call(&h, p).await);
            assert!(m.contains("through a symbolic link"), "{p}: {m}");
        }
    }

    #[tokio::test]
    async fn hidden_files_and_folders_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join(".taskweave")).unwrap();
        std::fs::write(dir.path().join(".taskweave/state.txt"), "runs").unwrap();
        std::fs::write(dir.path().join(".env"), "API_KEY=k").unwrap();
        std::os::unix::fs::symlink(".env", dir.path().join("settings.txt")).unwrap();
        let h = handler(dir.path(), 1024);
        for (p, hidden) in [(".env", ".env"), (".taskweave/state.txt", ".taskweave"), ("settings.txt", ".env")] {
            let m = permanent(call(&h, p).await);
            assert!(m.contains(&format!("hidden file or folder (`{hidden}`)")), "{p}: {m}");
        }
    }

    #[tokio::test]
    async fn only_regular_files_are_read() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("pipe");
        let c = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0, "mkfifo");
        std::fs::create_dir(dir.path().join("folder")).unwrap();
        let h = handler(dir.path(), 1024);
        let started = Instant::now();
        let m = permanent(call(&h, "pipe").await);
        assert!(m.contains("is a FIFO (named pipe), not a regular file"), "{m}");
        let m = permanent(call(&h, "folder").await);
        assert!(m.contains("is a folder"), "{m}");
        let m = permanent(call(&h, ".").await);
        assert!(m.contains("is a folder"), "{m}");
        assert!(started.elapsed() < Duration::from_secs(10));

        // With `/` as the root (an operator's explicit choice), devices are
        // still refused, and so is a /proc file past the cap (it claims size 0).
        let h = handler(Path::new("/"), 64);
        let m = permanent(call(&h, "/dev/zero").await);
        assert!(m.contains("is a character device"), "{m}");
        let m = permanent(call(&h, "/proc/self/status").await);
        assert!(m.contains("larger than the limit of 64 bytes ([actions.extract_text] max_bytes)"), "{m}");
    }

    #[tokio::test]
    async fn files_over_the_cap_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("big.txt"), "x".repeat(2048)).unwrap();
        std::fs::write(dir.path().join("fits.txt"), "x".repeat(1024)).unwrap();
        let h = handler(dir.path(), 1024);
        let m = permanent(call(&h, "big.txt").await);
        assert_eq!(m, "extract-text: `big.txt` is larger than the limit of 1 KiB ([actions.extract_text] max_bytes)");
        assert!(call(&h, "fits.txt").await.is_ok());
    }

    #[tokio::test]
    async fn reads_stop_at_the_cap_and_on_cancel() {
        let never = CancellationToken::new();
        let r = read_capped(&b"0123456789"[..], 4, &never).await;
        assert!(matches!(r, Err(ReadError::TooBig)), "{r:?}");
        assert_eq!(read_capped(&b"0123"[..], 4, &never).await.unwrap(), b"0123");

        // A reader that never ends (nothing is ever written to it): the read
        // stops when the token fires.
        let (_writer, reader) = tokio::io::duplex(64);
        let cancel = CancellationToken::new();
        let c = cancel.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            c.cancel();
        });
        let r = tokio::time::timeout(Duration::from_secs(20), read_capped(reader, 1024, &cancel)).await.expect("the read stopped");
        assert!(matches!(r, Err(ReadError::Cancelled)), "{r:?}");
    }

    #[tokio::test]
    async fn a_missing_root_is_a_permanent_error() {
        let dir = tempfile::tempdir().unwrap();
        let h = handler(&dir.path().join("nowhere"), 1024);
        let m = permanent(call(&h, "a.txt").await);
        assert!(m.contains("root folder") && m.contains("nowhere"), "{m}");
    }
}
