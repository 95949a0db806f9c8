//! Checking the API token before the server starts.
//!
//! A token that no client can send would lock everyone out, and an empty
//! one (a missing secret in systemd or Kubernetes gives `TASKWEAVE_TOKEN=`)
//! would turn authentication off while the operator believes it is on. Both
//! are refused here, before anything listens. Messages say what is wrong
//! and never contain the token.

use std::io::Read;
use std::path::{Path, PathBuf};

/// The largest token file read; a token is a short line, so anything bigger is the wrong file.
pub const MAX_TOKEN_FILE: u64 = 4096;

/// Why a token cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error(
        "{origin} is empty, which would turn authentication off; set a token, or leave it unset to serve without one (a missing secret often looks like this)"
    )]
    Empty { origin: String },
    #[error(
        "{origin} begins or ends with whitespace (often a newline from `$(cat FILE)`); clients could not send it, so every request would be refused: remove it, or use --token-file, which ignores one trailing newline"
    )]
    Whitespace { origin: String },
    #[error(
        "{origin} contains a character that cannot be sent in an `Authorization` header (a control character or non-ASCII); every request would be refused: use printable ASCII only"
    )]
    Unsendable { origin: String },
    #[error("cannot read the token file {}: {source}", .path.display())]
    File { path: PathBuf, source: std::io::Error },
    #[error("the token file {} is larger than {MAX_TOKEN_FILE} bytes; is it the right file?", .path.display())]
    FileTooLarge { path: PathBuf },
}

/// Check a token given as a value; `origin` names where it came from (`--token`).
pub fn check(token: &str, origin: &str) -> Result<(), TokenError> {
    let origin = origin.to_string();
    if token.trim().is_empty() {
        return Err(TokenError::Empty { origin });
    }
    if token.trim() != token {
        return Err(TokenError::Whitespace { origin });
    }
    // Header values a client can send and `Authorization: Bearer` compares: printable ASCII.
    if !token.bytes().all(|b| (0x20..0x7f).contains(&b)) {
        return Err(TokenError::Unsendable { origin });
    }
    Ok(())
}

/// Read a token from a file (a mounted secret): one trailing newline (`\n`
/// or `\r\n`) is dropped, as editors and `echo` add it; the rest must pass [`check`].
pub fn read_file(path: &Path) -> Result<String, TokenError> {
    let file_error = |source| TokenError::File { path: path.to_path_buf(), source };
    let mut bytes = Vec::new();
    std::fs::File::open(path).and_then(|f| f.take(MAX_TOKEN_FILE + 1).read_to_end(&mut bytes)).map_err(file_error)?;
    if bytes.len() as u64 > MAX_TOKEN_FILE {
        return Err(TokenError::FileTooLarge { path: path.to_path_buf() });
    }
    let origin = format!("the token in {}", path.display());
    let mut text = String::from_utf8(bytes).map_err(|_| TokenError::Unsendable { origin: origin.clone() })?;
    if text.ends_with('\n') {
        text.pop();
        if text.ends_with('\r') {
            text.pop();
        }
    }
    check(&text, &origin)?;
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_clients_can_send_pass() {
        for ok in ["s3cret", "a b", "Zm9vYmFy+/=", "~!@#$%^&*()"] {
            check(ok, "--token").unwrap_or_else(|e| panic!("{ok:?}: {e}"));
        }
    }

    #[test]
    fn empty_padded_and_unsendable_tokens_are_refused_without_showing_them() {
        for (bad, what) in [
            ("", "is empty"),
            ("   ", "is empty"),
            ("hunter2\n", "whitespace"),
            (" hunter2", "whitespace"),
            ("hunter2\t", "whitespace"),
            ("hun\nter2", "cannot be sent"),
            ("hünter2", "cannot be sent"),
            ("hunter\u{7f}2", "cannot be sent"),
        ] {
            let e = check(bad, "--token").unwrap_err().to_string();
            assert!(e.contains(what), "{bad:?}: {e}");
            assert!(e.starts_with("--token "), "{e}");
            assert!(bad.trim().is_empty() || !e.contains("hunter") && !e.contains("ter2"), "the token leaked: {e}");
        }
    }

    #[test]
    fn token_files_lose_one_trailing_newline() {
        let dir = tempfile::tempdir().unwrap();
        let file = |name: &str, text: &[u8]| {
            let p = dir.path().join(name);
            std::fs::write(&p, text).unwrap();
            p
        };
        assert_eq!(read_file(&file("a", b"s3cret\n")).unwrap(), "s3cret");
        assert_eq!(read_file(&file("b", b"s3cret\r\n")).unwrap(), "s3cret");
        assert_eq!(read_file(&file("c", b"s3cret")).unwrap(), "s3cret");
        assert!(matches!(read_file(&file("d", b"s3cret\n\n")), Err(TokenError::Whitespace { .. })));
        assert!(matches!(read_file(&file("e", b"\n")), Err(TokenError::Empty { .. })));
        assert!(matches!(read_file(&file("f", b"")), Err(TokenError::Empty { .. })));
        assert!(matches!(read_file(&file("g", b"\xff\xfe")), Err(TokenError::Unsendable { .. })));
        assert!(matches!(read_file(&file("h", &[b'a'; 5000])), Err(TokenError::FileTooLarge { .. })));
        assert!(matches!(read_file(&dir.path().join("missing")), Err(TokenError::File { .. })));
        let e = read_file(&file("i", b" s3cret\n")).unwrap_err().to_string();
        assert!(e.contains(&dir.path().join("i").display().to_string()) && !e.contains("s3cret"), "{e}");
    }
}
