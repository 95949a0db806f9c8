//! One line index per file: the byte offset of every line start, found in
//! one pass, so that turning a position into a byte range (or back) costs a
//! binary search and a walk along one line, never a scan from the top of the
//! file. Rendering many diagnostics of one file, or positioning many
//! findings in it, stays linear in their number.

use super::Pos;

/// The line starts of a text.
#[derive(Debug, Clone)]
pub struct LineIndex {
    starts: Vec<usize>,
    len: usize,
}

impl LineIndex {
    pub fn new(text: &str) -> Self {
        let mut starts = Vec::with_capacity(text.len() / 32 + 1);
        starts.push(0);
        starts.extend(text.match_indices('\n').map(|(i, _)| i + 1));
        LineIndex { starts, len: text.len() }
    }

    /// How many lines the text has (a final line without a newline counts).
    pub fn lines(&self) -> usize {
        self.starts.len()
    }

    /// The byte offsets of the line starts.
    pub fn starts(&self) -> &[usize] {
        &self.starts
    }

    /// The byte range of a 1-based line, without its line break.
    pub fn line(&self, text: &str, line: usize) -> Option<std::ops::Range<usize>> {
        let start = *self.starts.get(line.checked_sub(1)?)?;
        let end = self.starts.get(line).map_or(self.len, |&next| next - 1);
        let end = if end > start && text.as_bytes().get(end - 1) == Some(&b'\r') { end - 1 } else { end };
        Some(start..end.max(start))
    }

    /// The byte offset of a 1-based line and column (in characters); a
    /// column past the end of its line gives the line's end.
    pub fn offset(&self, text: &str, pos: Pos) -> Option<usize> {
        let range = self.line(text, pos.line as usize)?;
        let line = &text[range.clone()];
        Some(range.start + line.char_indices().nth(pos.column.saturating_sub(1) as usize).map_or(line.len(), |(b, _)| b))
    }

    /// The 1-based line and column (in characters) of a byte offset.
    pub fn pos(&self, text: &str, offset: usize) -> Pos {
        let offset = offset.min(text.len());
        let line = self.starts.partition_point(|&s| s <= offset);
        let start = self.starts[line - 1];
        let column = text.get(start..offset).map_or(0, |s| s.chars().count()) as u32 + 1;
        Pos { line: line as u32, column }
    }
}

/// A file's text with its line index, for rendering many diagnostics of it.
#[derive(Debug, Clone)]
pub struct Source<'a> {
    pub text: &'a str,
    pub index: LineIndex,
}

impl<'a> Source<'a> {
    pub fn new(text: &'a str) -> Self {
        Source { text, index: LineIndex::new(text) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_and_offsets_round_trip() {
        let text = "ab\r\nçd\n\nlast";
        let ix = LineIndex::new(text);
        assert_eq!(ix.lines(), 4);
        assert_eq!(ix.line(text, 1), Some(0..2));
        assert_eq!(&text[ix.line(text, 2).unwrap()], "çd");
        assert_eq!(ix.line(text, 3), Some(8..8));
        assert_eq!(&text[ix.line(text, 4).unwrap()], "last");
        assert_eq!(ix.line(text, 5), None);
        assert_eq!(ix.line(text, 0), None);
        for offset in [0, 1, 4, 6, 8, 9, 12] {
            let pos = ix.pos(text, offset);
            assert_eq!(ix.offset(text, pos), Some(offset), "{offset} -> {pos:?}");
        }
        assert_eq!(ix.pos(text, 7), Pos { line: 2, column: 3 });
        // A column past the end of the line: the line's end.
        assert_eq!(ix.offset(text, Pos { line: 1, column: 40 }), Some(2));
    }
}
