//! TOML to [`Node`], from `toml`'s spanned `DeTable` (byte spans on every key
//! and value), converted to 1-based line/column.

use super::MAX_DEPTH;
use super::node::{Key, Node, NodeKind};
use crate::diag::{Code, Diagnostic, Span};
use toml::Spanned;
use toml::de::{DeTable, DeValue};

/// Byte offset to 1-based line/column (columns in characters).
pub(crate) struct LineIndex<'a> {
    text: &'a str,
    starts: Vec<usize>,
}

impl<'a> LineIndex<'a> {
    pub(crate) fn new(text: &'a str) -> Self {
        let mut starts = vec![0];
        starts.extend(text.match_indices('\n').map(|(i, _)| i + 1));
        LineIndex { text, starts }
    }

    pub(crate) fn pos(&self, offset: usize) -> (u32, u32) {
        let offset = offset.min(self.text.len());
        let line = self.starts.partition_point(|&s| s <= offset) - 1;
        let start = self.starts[line];
        let col = self.text.get(start..offset).map_or(offset - start, |s| s.chars().count());
        (line as u32 + 1, col as u32 + 1)
    }

    pub(crate) fn span(&self, r: std::ops::Range<usize>) -> Span {
        let (l1, c1) = self.pos(r.start);
        let (l2, c2) = self.pos(r.end.max(r.start));
        Span::new(l1, c1, l2, c2.max(if l1 == l2 { c1 + 1 } else { c2 }))
    }
}

pub fn parse(file: &str, text: &str) -> Result<Node, Vec<Diagnostic>> {
    let index = LineIndex::new(text);
    let table = match DeTable::parse(text) {
        Ok(t) => t,
        Err(e) => {
            let range = e.span();
            let sp = range.clone().map_or(Span::point(1, 1), |r| index.span(r));
            let mut msg = e.message().trim().to_string();
            let code = if msg.contains("duplicate key") {
                // Name the key: the message does not, the span does.
                let key = range
                    .and_then(|r| text.get(r))
                    .map(|k| k.trim().trim_matches(['"', '\'']))
                    .filter(|k| !k.is_empty() && !k.contains('\n'));
                if let Some(k) = key {
                    msg = format!("duplicate key `{k}`");
                }
                Code::DuplicateKey
            } else {
                Code::Parse
            };
            return Err(vec![Diagnostic::new(code, file, sp, msg)]);
        }
    };
    let mut diags = Vec::new();
    let root_span = index.span(table.span());
    let node = table_node(table.get_ref(), root_span, &index, file, 0, &mut diags);
    if diags.is_empty() { Ok(node) } else { Err(diags) }
}

fn table_node(t: &DeTable<'_>, sp: Span, ix: &LineIndex<'_>, file: &str, depth: usize, diags: &mut Vec<Diagnostic>) -> Node {
    let mut entries = Vec::with_capacity(t.len());
    // toml's table keeps keys sorted; restore source order for stable output.
    let mut items: Vec<_> = t.iter().collect();
    items.sort_by_key(|(k, _)| k.span().start);
    for (k, v) in items {
        let key = Key { name: k.get_ref().to_string(), span: ix.span(k.span()) };
        entries.push((key, value_node(v, ix, file, depth + 1, diags)));
    }
    Node { span: sp, kind: NodeKind::Map(entries) }
}

fn value_node(v: &Spanned<DeValue<'_>>, ix: &LineIndex<'_>, file: &str, depth: usize, diags: &mut Vec<Diagnostic>) -> Node {
    let sp = ix.span(v.span());
    if depth > MAX_DEPTH {
        if diags.is_empty() {
            diags.push(Diagnostic::new(Code::Parse, file, sp, format!("the document is nested deeper than {MAX_DEPTH} levels")));
        }
        return Node { span: sp, kind: NodeKind::Null };
    }
    let kind = match v.get_ref() {
        DeValue::String(s) => NodeKind::Str(s.to_string()),
        DeValue::Integer(i) => match i64::from_str_radix(i.as_str(), i.radix()) {
            Ok(n) => NodeKind::Int(n),
            Err(_) => {
                diags.push(Diagnostic::new(Code::Parse, file, sp, "integer out of range"));
                NodeKind::Null
            }
        },
        DeValue::Float(f) => {
            let s = f.as_str();
            let parsed = match s {
                "inf" | "+inf" => Ok(f64::INFINITY),
                "-inf" => Ok(f64::NEG_INFINITY),
                "nan" | "+nan" | "-nan" => Ok(f64::NAN),
                _ => s.replace('_', "").parse::<f64>(),
            };
            match parsed {
                Ok(x) => NodeKind::Float(x),
                Err(_) => {
                    diags.push(Diagnostic::new(Code::Parse, file, sp, "invalid float"));
                    NodeKind::Null
                }
            }
        }
        DeValue::Boolean(b) => NodeKind::Bool(*b),
        DeValue::Datetime(d) => NodeKind::Str(d.to_string()),
        DeValue::Array(a) => NodeKind::Seq(a.iter().map(|x| value_node(x, ix, file, depth + 1, diags)).collect()),
        DeValue::Table(t) => return table_node(t, sp, ix, file, depth, diags),
    };
    Node { span: sp, kind }
}
