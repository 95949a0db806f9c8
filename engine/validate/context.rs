//! The state of one check of a document ([`Rules`]): what it knows beyond
//! the file, the findings so far, and how a finding gets its place in the
//! source (looked up in the text only when there is a finding).

use super::handlers::HandlerCatalog;
use super::suggest::{Pending, Pool};
use crate::diag::{Diagnostic, Span};
use crate::plan::Phase;
use crate::spec::node::Node;
use std::collections::BTreeMap;

pub struct Rules<'a> {
    pub file: &'a str,
    pub text: &'a str,
    /// The document's tree.
    pub root: &'a Node,
    pub backends: Option<&'a [String]>,
    /// The handlers `uses:` may name, with their schemas, when known.
    pub handlers: Option<&'a HandlerCatalog>,
    /// The kind of each configured backend and the default backend, when a
    /// configuration is known.
    pub kinds: Option<(&'a BTreeMap<String, String>, &'a str)>,
    /// The flags of the configured features file (its name, and its flags),
    /// when one loaded.
    pub flags: Option<&'a super::FlagKeys>,
    pub out: &'a mut Vec<Diagnostic>,
    /// Byte offset of each line start, for mapping spans back to text;
    /// found on first use (only findings need it).
    pub line_starts: std::cell::OnceCell<Vec<usize>>,
    pub budget: Budget,
    pub pending: Pending,
    pub cursor: std::cell::Cell<Option<Cursor>>,
    /// Where the handler lists begin among the tasks the rules number:
    /// `tasks`, then `on_failure` from `.0`, then `finally` from `.1`.
    pub split: (usize, usize),
}

/// Bounds the lookups whose cost grows with the file: searching a
/// template's text again from its start for the exact place of a reference
/// that comes before the last one found (see [`Cursor`]). Without a bound,
/// a template node with thousands of references out of order costs time
/// quadratic in its size. Only a file's first findings are shown (see
/// [`crate::diag::cap`]), and the rules find them in file order, so the
/// first ones get exact places; later ones sit on their template's node.
pub struct Budget {
    locates: std::cell::Cell<usize>,
}

impl Rules<'_> {
    /// The JSON pointer of task `i` of the numbering the rules use
    /// (`tasks`, then `on_failure`, then `finally`).
    pub(super) fn task_ptr(&self, i: usize) -> String {
        match self.phase_of(i) {
            Phase::Main => format!("/tasks/{i}"),
            Phase::OnFailure => format!("/on_failure/{}", i - self.split.0),
            Phase::Finally => format!("/finally/{}", i - self.split.1),
        }
    }

    /// The list task `i` belongs to.
    pub(super) fn phase_of(&self, i: usize) -> Phase {
        if i < self.split.0 {
            Phase::Main
        } else if i < self.split.1 {
            Phase::OnFailure
        } else {
            Phase::Finally
        }
    }
}

impl Budget {
    /// A budget for a file that shows `max_diagnostics` findings (`0`: all, no bound).
    pub fn new(max_diagnostics: usize) -> Self {
        let n = if max_diagnostics == 0 { usize::MAX } else { max_diagnostics.saturating_mul(4) };
        Budget { locates: n.into() }
    }

    fn take(c: &std::cell::Cell<usize>) -> bool {
        let left = c.get();
        c.set(left.saturating_sub(1));
        left > 0
    }
}

/// Where [`Rules::locate`] last found a reference in a node, so that the
/// next search in the same node goes on from there: the references of a
/// template are looked up in the order they appear, so a node's text is
/// read once, not once per finding (a single-line template with 20,000
/// references would otherwise cost time quadratic in its length).
#[derive(Debug, Clone, Copy)]
pub struct Cursor {
    node: Span,
    /// The node's text, as a byte range.
    start: usize,
    end: usize,
    /// The last place found, and its line and column.
    at: usize,
    line: u32,
    column: u32,
}

/// Byte offsets of the line starts of a text.
pub fn line_starts(text: &str) -> Vec<usize> {
    let mut v = vec![0];
    v.extend(text.match_indices('\n').map(|(i, _)| i + 1));
    v
}

impl Rules<'_> {
    fn line_starts(&self) -> &[usize] {
        self.line_starts.get_or_init(|| line_starts(self.text))
    }

    pub(super) fn push(&mut self, d: Diagnostic) {
        self.out.push(d);
    }

    /// Push a diagnostic whose "did you mean" help is computed only if it is shown.
    pub(super) fn push_suggesting(&mut self, d: Diagnostic, name: &str, pool: Pool) {
        self.pending.insert((d.code, d.span, d.message.clone()), (name.to_string(), pool));
        self.push(d);
    }

    /// The span of `needle` inside the source text of a node, when found.
    pub(super) fn locate(&self, node: Span, needle: &str) -> Option<Span> {
        let cur = match self.cursor.get().filter(|c| c.node == node) {
            Some(c) => c,
            None => {
                let start = self.byte_of(node.start)?;
                let end = self.byte_of(node.end).unwrap_or(self.text.len()).max(start);
                let pos = Cursor { node, start, end, at: start, line: node.start.line, column: node.start.column };
                self.cursor.set(Some(pos));
                pos
            }
        };
        let from_start = || Cursor { at: cur.start, line: node.start.line, column: node.start.column, ..cur };
        // From the last place found on; from the node's start again (a
        // reference before the last one) while the budget lasts.
        let (base, at) = match self.text.get(cur.at..cur.end)?.find(needle) {
            Some(i) => (cur, cur.at + i),
            None if cur.at > cur.start && Budget::take(&self.budget.locates) => {
                (from_start(), cur.start + self.text.get(cur.start..cur.end)?.find(needle)?)
            }
            None => return None,
        };
        // Line and column of `at`, counted on from the base.
        let between = &self.text[base.at..at];
        let (line, column) = match between.rfind('\n') {
            Some(nl) => (base.line + between.matches('\n').count() as u32, between[nl + 1..].chars().count() as u32 + 1),
            None => (base.line, base.column + between.chars().count() as u32),
        };
        self.cursor.set(Some(Cursor { at, line, column, ..cur }));
        Some(Span::new(line, column, line, column + needle.chars().count() as u32))
    }

    /// Byte offset of a 1-based line/column (characters).
    fn byte_of(&self, pos: crate::diag::Pos) -> Option<usize> {
        let line_starts = self.line_starts();
        let start = *line_starts.get((pos.line as usize).checked_sub(1)?)?;
        let end = line_starts.get(pos.line as usize).copied().unwrap_or(self.text.len());
        let line = &self.text[start..end];
        let col = line.char_indices().nth(pos.column.saturating_sub(1) as usize).map_or(line.len(), |(b, _)| b);
        Some(start + col)
    }
}
