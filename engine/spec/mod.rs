//! The spec language: text (YAML or TOML) in, a positioned document out.
//!
//! Both formats are parsed into one [`Node`] tree where every value and every
//! key carries its source [`Span`]. The tree deserialises straight into
//! [`raw::RawWorkflow`] (see `de`), and converts to a `serde_json::Value`
//! where one is needed (schema validation of a file with errors).
//! This module does no validation beyond syntax (and duplicate keys); it
//! touches no files: callers hand it text.

mod de;
pub mod node;
pub mod raw;
mod toml_doc;
mod yaml;

pub use node::{Document, Key, Node, NodeKind};

use crate::diag::{Code, Diagnostic, Span};

/// Limits that keep hostile input (deep nesting, alias bombs) from exhausting
/// the stack or memory.
pub const MAX_DEPTH: usize = 128;
pub const MAX_NODES: usize = 5_000_000;
/// The most nodes that YAML aliases may add to a document by expansion.
pub const MAX_ALIAS_NODES: usize = 1_000_000;

/// The formats a workflow file may be written in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Yaml,
    Toml,
}

impl Format {
    /// The format for a file name, by extension.
    pub fn from_path(path: &std::path::Path) -> Option<Format> {
        match path.extension()?.to_str()? {
            "yaml" | "yml" => Some(Format::Yaml),
            "toml" => Some(Format::Toml),
            _ => None,
        }
    }
}

/// Turn raw bytes into text, or a `parse` diagnostic for empty, binary and
/// non-UTF-8 files.
pub fn decode(file: &str, bytes: &[u8]) -> Result<String, Diagnostic> {
    let text = match std::str::from_utf8(bytes) {
        Ok(t) => t,
        Err(e) => {
            let valid = &bytes[..e.valid_up_to()];
            let prefix = std::str::from_utf8(valid).unwrap_or_default();
            let line = prefix.matches('\n').count() as u32 + 1;
            let col = prefix.rsplit('\n').next().map_or(0, |l| l.chars().count()) as u32 + 1;
            return Err(Diagnostic::new(
                Code::Parse,
                file,
                Span::point(line, col),
                format!("the file is not valid UTF-8 (invalid byte at offset {})", e.valid_up_to()),
            )
            .with_help("save the file as UTF-8"));
        }
    };
    if let Some(idx) = text.find('\0') {
        let prefix = &text[..idx];
        let line = prefix.matches('\n').count() as u32 + 1;
        let col = prefix.rsplit('\n').next().map_or(0, |l| l.chars().count()) as u32 + 1;
        return Err(Diagnostic::new(Code::Parse, file, Span::point(line, col), "the file looks binary (it contains a NUL byte)"));
    }
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    if text.trim().is_empty() {
        return Err(Diagnostic::new(Code::Parse, file, Span::point(1, 1), "the file is empty")
            .with_help("a workflow needs at least `version: 1`, a `name` and one task"));
    }
    Ok(text.to_owned())
}

/// Parse text into a positioned document. Syntax errors and duplicate keys
/// come back as diagnostics (all that can be found).
pub fn parse(file: &str, text: &str, format: Format) -> Result<Document, Vec<Diagnostic>> {
    parse_tree(file, text, format).map(Document::new)
}

/// [`parse`] without the JSON value: the positioned tree alone.
pub fn parse_tree(file: &str, text: &str, format: Format) -> Result<Node, Vec<Diagnostic>> {
    match format {
        Format::Yaml => yaml::parse(file, text),
        Format::Toml => toml_doc::parse(file, text),
    }
}
