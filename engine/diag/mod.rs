//! Diagnostics: what validation says about a file, and how it is shown.
//!
//! Every finding of every phase (parse, schema, semantic rules) becomes a
//! [`Diagnostic`] with a stable [`Code`], a severity and the exact source span
//! of the node at fault. This module knows nothing about workflows; it only
//! carries positions and renders them (human, JSON, GitHub annotations).

mod codes;
mod lines;
mod render;

pub use codes::Code;
pub use lines::{LineIndex, Source};
pub use render::{render_github, render_human, render_human_in, render_json};

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
            let c_len = c.chars().count();
            // Cheap bounds first: the edit distance is at least the
            // difference in length, and a Jaro-Winkler of 0.9 needs a
            // Jaro of 0.83, so the shorter at least half the longer.
            let may_edit = len.abs_diff(c_len) <= max_edits;
            let may_jw = len >= 4 && c_len >= 4 && 2 * len.min(c_len) >= len.max(c_len);
            if !may_edit && !may_jw {
                return None;
            }
            let edits = may_edit.then(|| strsim::levenshtein(name, c));
            if edits.is_some_and(|e| e <= max_edits) || may_jw {
                let jw = strsim::jaro_winkler(name, c);
                if edits.is_some_and(|e| e <= max_edits) || jw >= 0.9 {
                    let edits = edits.unwrap_or_else(|| strsim::levenshtein(name, c));
                    return Some((edits, std::cmp::Reverse(ordered(jw)), c));
                }
            }
            None
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

/// How many diagnostics one file reports by default; the rest are counted
/// in one final `too-many-diagnostics` diagnostic.
pub const DEFAULT_MAX_PER_FILE: usize = 200;

/// Drop repeated diagnostics (same code, span and message), keeping the
/// first of each and the order. Linear: one hash set of borrowed keys.
pub fn dedup(diags: &mut Vec<Diagnostic>) {
    let keep: Vec<bool> = {
        let mut seen = std::collections::HashSet::with_capacity(diags.len());
        diags.iter().map(|d| seen.insert((d.code, d.span, d.message.as_str()))).collect()
    };
    let mut keep = keep.into_iter();
    diags.retain(|_| keep.next().unwrap_or(true));
}

/// Keep at most `max` of one file's diagnostics (`0`: all of them): errors
/// before warnings, each in file order, shown sorted by position. The rest
/// are counted, exactly, in one final `too-many-diagnostics` diagnostic
/// ("and N more"), placed at the first of them in the file; it is an error
/// when any of them is one, so a capped file never looks cleaner than it is.
pub fn cap(diags: &mut Vec<Diagnostic>, max: usize) {
    if max == 0 || diags.len() <= max {
        return;
    }
    diags.sort_by(|a, b| (a.severity, a.file.as_str(), a.span.start).cmp(&(b.severity, b.file.as_str(), b.span.start)));
    let omitted = diags.split_off(max);
    sort(diags);
    let errors = omitted.iter().filter(|d| d.is_error()).count();
    let warnings = omitted.len() - errors;
    let Some(first) = omitted.iter().min_by_key(|d| d.span.start) else { return };
    let plural = |n: usize, what: &str| format!("{n} {what}{}", if n == 1 { "" } else { "s" });
    let kinds = match (errors, warnings) {
        (e, 0) => plural(e, "error"),
        (0, w) => plural(w, "warning"),
        (e, w) => format!("{}, {}", plural(e, "error"), plural(w, "warning")),
    };
    let mut d = Diagnostic::new(
        Code::TooManyDiagnostics,
        first.file.clone(),
        first.span,
        format!("and {} more not shown ({kinds}), the first of them here", omitted.len()),
    )
    .with_help(format!("only the first {max} diagnostics of a file are reported; fix these and check again"));
    if errors > 0 {
        d.severity = Severity::Error;
    }
    diags.push(d);
}

/// A URL as shown in messages: without its query string and credentials,
/// which may carry secrets.
pub(crate) fn display_url(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) => {
            u.set_query(None);
            u.set_fragment(None);
            let _ = u.set_password(None);
            let _ = u.set_username("");
            u.to_string()
        }
        Err(_) => url.split(['?', '#']).next().unwrap_or(url).to_string(),
    }
}

/// `10 MiB`, `64 KiB`, `1000 bytes`: a size as a person reads it.
pub fn human_bytes(n: usize) -> String {
    const KIB: usize = 1024;
    const MIB: usize = 1024 * 1024;
    if n >= MIB && n.is_multiple_of(MIB) {
        format!("{} MiB", n / MIB)
    } else if n >= KIB && n.is_multiple_of(KIB) {
        format!("{} KiB", n / KIB)
    } else {
        format!("{n} bytes")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(code: Code, line: u32, message: &str) -> Diagnostic {
        Diagnostic::new(code, "f.yaml", Span::point(line, 1), message)
    }

    #[test]
    fn dedup_keeps_the_first_of_each_and_the_order() {
        let mut v = vec![
            d(Code::Schema, 3, "a"),
            d(Code::Schema, 1, "b"),
            d(Code::Schema, 3, "a"),
            d(Code::Cycle, 3, "a"),
            d(Code::Schema, 3, "c"),
            d(Code::Schema, 1, "b"),
        ];
        dedup(&mut v);
        let got: Vec<(Code, u32, &str)> = v.iter().map(|d| (d.code, d.span.start.line, d.message.as_str())).collect();
        assert_eq!(got, [(Code::Schema, 3, "a"), (Code::Schema, 1, "b"), (Code::Cycle, 3, "a"), (Code::Schema, 3, "c")]);
    }

    /// Linear, not pairwise: 200,000 diagnostics, half of them repeats,
    /// finish well within a generous bound even in a debug build.
    #[test]
    fn dedup_is_linear() {
        let n = 100_000;
        let mut v: Vec<Diagnostic> = (0..2 * n).map(|i| d(Code::UnknownParent, (i % n) as u32 + 1, "unknown parent")).collect();
        let started = std::time::Instant::now();
        dedup(&mut v);
        assert_eq!(v.len(), n as usize);
        assert!(started.elapsed() < std::time::Duration::from_secs(10), "{:?}", started.elapsed());
    }

    #[test]
    fn cap_keeps_errors_first_and_counts_the_rest_exactly() {
        let mut v: Vec<Diagnostic> = (1..=10).map(|i| d(Code::TimeoutExceeds, i, "w")).collect();
        v.extend((11..=15).map(|i| d(Code::Schema, i, "e")));
        cap(&mut v, 7);
        assert_eq!(v.len(), 8);
        let kept: Vec<(Severity, u32)> = v[..7].iter().map(|d| (d.severity, d.span.start.line)).collect();
        // The five errors, then the first two warnings, shown in file order.
        assert_eq!(
            kept,
            [
                (Severity::Warning, 1),
                (Severity::Warning, 2),
                (Severity::Error, 11),
                (Severity::Error, 12),
                (Severity::Error, 13),
                (Severity::Error, 14),
                (Severity::Error, 15)
            ]
        );
        let more = &v[7];
        assert_eq!((more.code, more.severity, more.span.start.line), (Code::TooManyDiagnostics, Severity::Warning, 3));
        assert_eq!(more.message, "and 8 more not shown (8 warnings), the first of them here");

        let mut v: Vec<Diagnostic> = (1..=5).map(|i| d(Code::Schema, i, "e")).collect();
        cap(&mut v, 2);
        assert_eq!((v.len(), v[2].severity), (3, Severity::Error));
        assert_eq!(v[2].message, "and 3 more not shown (3 errors), the first of them here");
        // Under the cap, or no cap: untouched.
        let mut v: Vec<Diagnostic> = (1..=5).map(|i| d(Code::Schema, i, "e")).collect();
        cap(&mut v, 5);
        cap(&mut v, 0);
        assert_eq!(v.len(), 5);
    }
}
