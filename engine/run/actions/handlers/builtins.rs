//! The small built-in handlers: `echo`, `sleep`, `fail` and `extract-text`.
//!
//! `echo`, `sleep` and `fail` exist so that workflows (and the engine's own
//! tests) can pass values along, take time and fail on demand without
//! external programs. `extract-text` reads a plain-text or PDF file; PDF
//! parsing is CPU-bound and runs on the blocking pool, and a panic inside the
//! PDF parser becomes a task failure instead of taking the worker down.

use crate::run::actions::{ActionError, HandlerCtx};
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// `echo`: its `with` value, unchanged.
pub async fn echo(with: Value, _ctx: HandlerCtx) -> Result<Value, ActionError> {
    Ok(with)
}

/// `sleep`: `{duration: "200ms"}` or `{seconds: 0.2}`; returns `{slept_ms}`.
pub async fn sleep(with: Value, ctx: HandlerCtx) -> Result<Value, ActionError> {
    let d = sleep_duration(&with)?;
    tokio::select! {
        biased;
        _ = ctx.cancel.cancelled() => Err(ActionError::Cancelled),
        _ = tokio::time::sleep(d) => Ok(json!({"slept_ms": u64::try_from(d.as_millis()).unwrap_or(u64::MAX)})),
    }
}

fn sleep_duration(with: &Value) -> Result<Duration, ActionError> {
    let bad = |why: String| ActionError::Permanent(format!("sleep: {why}"));
    match (with.get("duration"), with.get("seconds")) {
        (Some(Value::String(s)), None) => crate::plan::parse_duration(s).map_err(bad),
        (None, Some(Value::Number(n))) => {
            let secs = n.as_f64().unwrap_or(f64::NAN);
            Duration::try_from_secs_f64(secs).map_err(|_| bad(format!("`seconds` must be a non-negative number, not {n}")))
        }
        (Some(_), Some(_)) => Err(bad("give `duration` or `seconds`, not both".into())),
        (Some(other), None) => Err(bad(format!("`duration` must be a string like \"200ms\", not {other}"))),
        (None, Some(other)) => Err(bad(format!("`seconds` must be a number, not {other}"))),
        (None, None) => Err(bad("needs `with: {duration: \"200ms\"}` or `with: {seconds: 0.2}`".into())),
    }
}

/// `fail`: `{message?, retryable?}`; fails with that message, retryable
/// unless `retryable: false`.
pub async fn fail(with: Value, _ctx: HandlerCtx) -> Result<Value, ActionError> {
    let message = match with.get("message") {
        None | Some(Value::Null) => "failed on purpose".to_string(),
        Some(Value::String(s)) => s.clone(),
        Some(other) => other.to_string(),
    };
    match with.get("retryable") {
        None | Some(Value::Null) | Some(Value::Bool(true)) => Err(ActionError::Failed(message)),
        Some(Value::Bool(false)) => Err(ActionError::Permanent(message)),
        Some(other) => Err(ActionError::Permanent(format!("fail: `retryable` must be true or false, not {other}"))),
    }
}

/// `extract-text`: `{path}` of a plain-text or PDF file; returns `{text,
/// page_count, extraction_method: "plain" | "pdf"}`.
pub async fn extract_text(with: Value, _ctx: HandlerCtx) -> Result<Value, ActionError> {
    let path = match with.get("path") {
        Some(Value::String(s)) if !s.is_empty() => PathBuf::from(s),
        Some(other) => {
            return Err(ActionError::Permanent(format!("extract-text: `path` must be a file path, not {other}")));
        }
        None => {
            return Err(ActionError::Permanent("extract-text: needs `with: {path: ...}`".into()));
        }
    };
    let bytes = tokio::fs::read(&path).await.map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => ActionError::Failed(format!("extract-text: file `{}` not found", path.display())),
        _ => ActionError::Failed(format!("extract-text: cannot read `{}`: {e}", path.display())),
    })?;
    if is_pdf(&path, &bytes) {
        let shown = path.display().to_string();
        let (text, pages) = tokio::task::spawn_blocking(move || pdf_text(&bytes, &shown))
            .await
            .map_err(|e| ActionError::Failed(format!("extract-text: PDF extraction stopped: {e}")))??;
        return Ok(json!({"text": text, "page_count": pages, "extraction_method": "pdf"}));
    }
    if bytes.contains(&0) {
        return Err(ActionError::Permanent(format!("extract-text: `{}` is neither a text file nor a PDF", path.display())));
    }
    let text = match String::from_utf8(bytes) {
        Ok(s) => s,
        Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
    };
    Ok(json!({"text": text, "page_count": 1, "extraction_method": "plain"}))
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

    #[test]
    fn sleep_takes_a_duration_or_seconds() {
        assert_eq!(sleep_duration(&json!({"duration": "200ms"})).unwrap(), Duration::from_millis(200));
        assert_eq!(sleep_duration(&json!({"seconds": 0.25})).unwrap(), Duration::from_millis(250));
        assert!(matches!(sleep_duration(&json!({"seconds": -1})), Err(ActionError::Permanent(_))));
        assert!(matches!(sleep_duration(&json!({"duration": "soon"})), Err(ActionError::Permanent(_))));
        assert!(matches!(sleep_duration(&json!({})), Err(ActionError::Permanent(_))));
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
}
