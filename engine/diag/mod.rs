//! Diagnostics: what validation says about a file, and how it is shown.
//!
//! Every finding of every phase (parse, schema, semantic rules) becomes a
//! [`Diagnostic`] with a stable [`Code`], a severity and the exact source span
//! of the node at fault. This module knows nothing about workflows; it only
//! carries positions and renders them (human, JSON, GitHub annotations).

mod codes;
mod render;

pub use codes::Code;
pub use render::{render_github, render_human, render_json};

use serde::Serialize;

/// A 1-based line and column (columns count characters, not bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize)]
pub struct Pos {
    pub line: u32,
    pub column: u32,
}

/// A source range: `start` inclusive, `end` exclusive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize)]
pub struct Span {
    pub start: Pos,
    pub end: Pos,
}

impl Span {
    pub fn new(line: u32, column: u32, end_line: u32, end_column: u32) -> Self {
        Span { start: Pos { line, column }, end: Pos { line: end_line, column: end_column } }
    }

    /// A one-character span at a position.
    pub fn point(line: u32, column: u32) -> Self {
        Span::new(line, column, line, column + 1)
    }

    /// A sub-span starting `offset` characters into a single-line span.
    pub fn shifted(self, line_delta: u32, column: u32, len: u32) -> Self {
        if line_delta == 0 {
            let col = self.start.column + column;
            Span::new(self.start.line, col, self.start.line, col + len.max(1))
        } else {
            let line = self.start.line + line_delta;
            Span::new(line, column + 1, line, column + 1 + len.max(1))
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Error,
    Warning,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Error => "error",
            Severity::Warning => "warning",
        }
    }
}

/// One finding, positioned at the node at fault.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    pub severity: Severity,
    pub code: Code,
    pub message: String,
    pub file: String,
    pub span: Span,
    pub help: Option<String>,
}

impl Diagnostic {
    pub fn new(code: Code, file: impl Into<String>, span: Span, message: impl Into<String>) -> Self {
        Diagnostic { severity: code.severity(), code, message: message.into(), file: file.into(), span, help: None }
    }

    pub fn with_help(mut self, help: impl Into<String>) -> Self {
        self.help = Some(help.into());
        self
    }

    pub fn is_error(&self) -> bool {
        self.severity == Severity::Error
    }
}

/// The flat JSON form documented in DESIGN.md.
impl Serialize for Diagnostic {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let mut st = s.serialize_struct("Diagnostic", 9)?;
        st.serialize_field("severity", &self.severity)?;
        st.serialize_field("code", self.code.as_str())?;
        st.serialize_field("message", &self.message)?;
        st.serialize_field("file", &self.file)?;
        st.serialize_field("line", &self.span.start.line)?;
        st.serialize_field("column", &self.span.start.column)?;
        st.serialize_field("end_line", &self.span.end.line)?;
        st.serialize_field("end_column", &self.span.end.column)?;
        st.serialize_field("help", &self.help)?;
        st.end()
    }
}

/// Names longer than this get no suggestion: string similarity is quadratic,
/// and a hostile file may hold megabyte-long names.
const MAX_SUGGEST_LEN: usize = 256;

/// The closest candidate to `name`, for "did you mean" help: a candidate at
/// most a third of its length (and at most 3 edits) away, or very similar by
/// Jaro-Winkler when both are long enough for that to mean something.
pub fn did_you_mean<'a>(name: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    let len = name.chars().count();
    if len == 0 || len > MAX_SUGGEST_LEN {
        return None;
    }
    let max_edits = (len / 3).clamp(1, 3);
    candidates
        .into_iter()
        .filter(|c| *c != name && c.len() <= MAX_SUGGEST_LEN * 4)
        .filter_map(|c| {
            let edits = strsim::levenshtein(name, c);
            let jw = strsim::jaro_winkler(name, c);
            let close = edits <= max_edits || (len >= 4 && c.chars().count() >= 4 && jw >= 0.9);
            close.then_some((edits, std::cmp::Reverse(ordered(jw)), c))
        })
        .min()
        .map(|(_, _, c)| c)
}

/// A float as a totally ordered integer key (for similarity scores in 0..=1).
fn ordered(x: f64) -> u64 {
    (x.clamp(0.0, 1.0) * 1e9) as u64
}

/// Sort diagnostics by file and position, errors first on the same node.
pub fn sort(diags: &mut [Diagnostic]) {
    diags.sort_by(|a, b| (a.file.as_str(), a.span.start, a.severity).cmp(&(b.file.as_str(), b.span.start, b.severity)));
}
