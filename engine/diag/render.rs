//! Rendering diagnostics: rustc-like text (annotate-snippets, the renderer
//! rustc itself uses), a JSON array, and GitHub Actions annotations.

use super::{Diagnostic, Severity};
use annotate_snippets::renderer::DecorStyle;
use annotate_snippets::{AnnotationKind, Level, Renderer, Snippet};

/// Render one diagnostic like rustc: `error[code]: message`, `--> file:line:col`,
/// the source lines with a caret under the span, then the help.
///
/// `source` is the file's text; without it only the header and help are shown.
pub fn render_human(d: &Diagnostic, source: Option<&str>, color: bool) -> String {
    let level = match d.severity {
        Severity::Error => Level::ERROR,
        Severity::Warning => Level::WARNING,
    };
    let title = level.primary_title(d.message.as_str()).id(d.code.as_str());
    let mut group = annotate_snippets::Group::with_title(title);
    if let Some((excerpt, first_line, range)) = source.and_then(|s| excerpt(s, d)) {
        group = group.element(
            Snippet::source(excerpt)
                .line_start(first_line)
                .path(d.file.as_str())
                .fold(true)
                .annotation(AnnotationKind::Primary.span(range)),
        );
    } else {
        group = group.element(
            annotate_snippets::Origin::path(d.file.as_str())
                .line(d.span.start.line as usize)
                .char_column(d.span.start.column.saturating_sub(1) as usize),
        );
    }
    if let Some(help) = &d.help {
        group = group.element(Level::HELP.message(help.as_str()));
    }
    let renderer = if color { Renderer::styled() } else { Renderer::plain() }.decor_style(DecorStyle::Ascii);
    renderer.render(&[group])
}

/// The lines a span covers (at most 6), the first line's number, and the
/// span as a byte range inside that excerpt.
fn excerpt<'a>(source: &'a str, d: &Diagnostic) -> Option<(&'a str, usize, std::ops::Range<usize>)> {
    let start_line = d.span.start.line.max(1) as usize;
    let end_line = d.span.end.line.max(d.span.start.line).min(d.span.start.line + 5) as usize;
    let mut offset = 0usize;
    let mut line_starts = Vec::new();
    for (i, line) in source.split_inclusive('\n').enumerate() {
        let n = i + 1;
        if n == start_line || (n > start_line && n <= end_line) {
            line_starts.push(offset);
        }
        if n > end_line {
            break;
        }
        offset += line.len();
    }
    let first = *line_starts.first()?;
    let last_line_start = *line_starts.last()?;
    let last_end = source[last_line_start..].find('\n').map_or(source.len(), |i| last_line_start + i);
    let text = &source[first..last_end];
    let char_to_byte = |line_start: usize, col: u32| -> usize {
        let line = &source[line_start..];
        let line = &line[..line.find('\n').unwrap_or(line.len())];
        line.char_indices().nth(col.saturating_sub(1) as usize).map_or(line.len(), |(b, _)| b) + line_start - first
    };
    let start = char_to_byte(first, d.span.start.column);
    let end = if (d.span.end.line as usize) <= end_line && d.span.end.line >= d.span.start.line {
        let idx = (d.span.end.line as usize) - start_line;
        char_to_byte(line_starts[idx.min(line_starts.len() - 1)], d.span.end.column)
    } else {
        text.len()
    };
    let end = end.max(start).min(text.len());
    let start = start.min(text.len());
    Some((text, start_line, start..end))
}

/// A JSON array of diagnostics (the documented flat form).
pub fn render_json(diags: &[Diagnostic]) -> String {
    serde_json::to_string_pretty(diags).unwrap_or_else(|_| "[]".into())
}

/// GitHub Actions workflow commands: `::error file=..,line=..,col=..::message`.
pub fn render_github(d: &Diagnostic) -> String {
    let kind = match d.severity {
        Severity::Error => "error",
        Severity::Warning => "warning",
    };
    let mut msg = format!("[{}] {}", d.code, d.message);
    if let Some(h) = &d.help {
        msg.push_str(&format!(" (help: {h})"));
    }
    format!(
        "::{kind} file={},line={},col={},endLine={},endColumn={},title={}::{}",
        escape_property(&d.file),
        d.span.start.line,
        d.span.start.column,
        d.span.end.line,
        d.span.end.column,
        escape_property(d.code.as_str()),
        escape_data(&msg)
    )
}

// GitHub's workflow-command escaping; tiny and specific, no crate does it.
fn escape_data(s: &str) -> String {
    s.replace('%', "%25").replace('\r', "%0D").replace('\n', "%0A")
}

fn escape_property(s: &str) -> String {
    escape_data(s).replace(':', "%3A").replace(',', "%2C")
}
