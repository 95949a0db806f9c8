//! Rendering diagnostics: rustc-like text (annotate-snippets, the renderer
//! rustc itself uses), a JSON array, and GitHub Actions annotations.

use super::lines::Source;
use super::{Diagnostic, Severity};
use annotate_snippets::renderer::DecorStyle;
use annotate_snippets::{AnnotationKind, Level, Renderer, Snippet};

/// Render one diagnostic like rustc: `error[code]: message`, `--> file:line:col`,
/// the source lines with a caret under the span, then the help.
///
/// `source` is the file's text; without it only the header and help are
/// shown. This indexes the text's lines for this one diagnostic: to render
/// several of one file, index it once with [`Source`] and call
/// [`render_human_in`].
pub fn render_human(d: &Diagnostic, source: Option<&str>, color: bool) -> String {
    let source = source.map(Source::new);
    render_human_in(d, source.as_ref(), color)
}

/// [`render_human`] with the file's line index already built.
pub fn render_human_in(d: &Diagnostic, source: Option<&Source<'_>>, color: bool) -> String {
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
                // Shown as given: the 1-based column, like the excerpt's header.
                .char_column(d.span.start.column as usize),
        );
    }
    if let Some(help) = &d.help {
        group = group.element(Level::HELP.message(help.as_str()));
    }
    let renderer = if color { Renderer::styled() } else { Renderer::plain() }.decor_style(DecorStyle::Ascii);
    renderer.render(&[group])
}

/// The lines a span covers (at most 6), the first line's number, and the
/// span as a byte range inside that excerpt; None when the span lies
/// outside the text.
fn excerpt<'a>(source: &Source<'a>, d: &Diagnostic) -> Option<(&'a str, usize, std::ops::Range<usize>)> {
    let (text, index) = (source.text, &source.index);
    let start_line = d.span.start.line.max(1) as usize;
    let end_line = (d.span.end.line.max(d.span.start.line).min(d.span.start.line + 5) as usize).min(index.lines()).max(start_line);
    let first = index.line(text, start_line)?;
    let last = index.line(text, end_line)?;
    let excerpt = &text[first.start..last.end.max(first.start)];
    let start = index.offset(text, d.span.start)?.max(first.start) - first.start;
    let end = if (d.span.end.line as usize) <= end_line && d.span.end.line >= d.span.start.line {
        index.offset(text, d.span.end).map_or(excerpt.len(), |e| e.saturating_sub(first.start))
    } else {
        excerpt.len()
    };
    let end = end.max(start).min(excerpt.len());
    let start = start.min(excerpt.len());
    Some((excerpt, start_line, start..end))
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
