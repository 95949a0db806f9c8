//! YAML to [`Node`], from the event stream of `granit-parser` (the parser
//! under serde-saphyr, re-exported by it).
//!
//! We build the tree from events rather than deserialising because we need a
//! span on every key and value, our own duplicate-key diagnostics, and our own
//! scalar resolution: YAML 1.2 core schema, strict, so `no` stays a string and
//! `0755` is not silently the number 755.

use super::node::{Key, Node, NodeKind};
use super::{MAX_DEPTH, MAX_NODES};
use crate::diag::{Code, Diagnostic, Span};
use serde_saphyr::granit_parser::{Event, Parser, ScalarStyle, Span as YSpan};
use std::collections::{HashMap, HashSet};

fn span(s: &YSpan) -> Span {
    Span::new(
        s.start.line() as u32,
        s.start.col() as u32 + 1,
        s.end.line() as u32,
        s.end.col() as u32 + 1,
    )
}

enum Frame {
    Seq {
        start: Span,
        anchor: usize,
        items: Vec<Node>,
    },
    Map {
        start: Span,
        anchor: usize,
        entries: Vec<(Key, Node)>,
        seen: HashSet<String>,
        pending: Option<Key>,
        merges: Vec<Node>,
    },
}

struct Builder<'f> {
    file: &'f str,
    stack: Vec<Frame>,
    anchors: HashMap<usize, Node>,
    root: Option<Node>,
    nodes: usize,
    diags: Vec<Diagnostic>,
}

pub fn parse(file: &str, text: &str) -> Result<Node, Vec<Diagnostic>> {
    let mut parser = Parser::new_from_str(text);
    let mut b = Builder {
        file,
        stack: Vec::new(),
        anchors: HashMap::new(),
        root: None,
        nodes: 0,
        diags: Vec::new(),
    };
    let mut documents = 0;
    while let Some(ev) = parser.next_event() {
        let (event, ys) = match ev {
            Ok(e) => e,
            Err(err) => {
                let m = err.marker();
                let mut msg = err.info().to_string();
                let line = m.line() as u32;
                let col = m.col() as u32 + 1;
                let help = tab_help(text, line, &mut msg);
                let mut d = Diagnostic::new(Code::Parse, file, Span::point(line.max(1), col), msg);
                if let Some(h) = help {
                    d = d.with_help(h);
                }
                b.diags.push(d);
                return Err(b.diags);
            }
        };
        let sp = span(&ys);
        match event {
            Event::StreamStart | Event::StreamEnd | Event::DocumentEnd => {}
            Event::DocumentStart(..) => {
                documents += 1;
                if documents > 1 {
                    b.diags.push(
                        Diagnostic::new(Code::Parse, file, sp, "a workflow file holds exactly one YAML document")
                            .with_help("split the documents into separate files"),
                    );
                    return Err(b.diags);
                }
            }
            Event::Alias(id) => {
                let node = match b.anchors.get(&id) {
                    Some(n) => {
                        let mut n = n.clone();
                        n.span = sp;
                        n
                    }
                    None => {
                        b.diags.push(Diagnostic::new(Code::Parse, file, sp, "unknown alias"));
                        return Err(b.diags);
                    }
                };
                b.nodes += count(&node);
                if b.nodes > MAX_NODES {
                    b.diags.push(Diagnostic::new(
                        Code::Parse,
                        file,
                        sp,
                        format!("the document expands to more than {MAX_NODES} nodes (alias expansion)"),
                    ));
                    return Err(b.diags);
                }
                b.deliver(node, ScalarStyle::DoubleQuoted);
            }
            Event::Scalar(value, style, anchor, tag) => {
                b.nodes += 1;
                let forced_str = tag.as_ref().is_some_and(|t| t.is_yaml_core_schema_tag("str"));
                let kind = if style == ScalarStyle::Plain && !forced_str {
                    resolve_plain(&value)
                } else {
                    NodeKind::Str(value.into_owned())
                };
                let node = Node { span: sp, kind };
                if anchor != 0 {
                    b.anchors.insert(anchor, node.clone());
                }
                b.deliver(node, style);
            }
            Event::SequenceStart(_, anchor, _) | Event::MappingStart(_, anchor, _) => {
                b.nodes += 1;
                if b.stack.len() >= MAX_DEPTH {
                    b.diags.push(Diagnostic::new(
                        Code::Parse,
                        file,
                        sp,
                        format!("the document is nested deeper than {MAX_DEPTH} levels"),
                    ));
                    return Err(b.diags);
                }
                let frame = if matches!(event, Event::SequenceStart(..)) {
                    Frame::Seq {
                        start: sp,
                        anchor,
                        items: Vec::new(),
                    }
                } else {
                    Frame::Map {
                        start: sp,
                        anchor,
                        entries: Vec::new(),
                        seen: HashSet::new(),
                        pending: None,
                        merges: Vec::new(),
                    }
                };
                b.stack.push(frame);
            }
            Event::SequenceEnd | Event::MappingEnd => {
                let Some(frame) = b.stack.pop() else { continue };
                let (node, anchor) = match frame {
                    Frame::Seq { start, anchor, items } => (
                        Node {
                            span: Span { start: start.start, end: sp.end },
                            kind: NodeKind::Seq(items),
                        },
                        anchor,
                    ),
                    Frame::Map {
                        start,
                        anchor,
                        mut entries,
                        mut seen,
                        merges,
                        ..
                    } => {
                        // YAML merge keys (`<<: *base`): explicit keys win, the
                        // first merged mapping wins over later ones.
                        for m in merges {
                            let maps = match m.kind {
                                NodeKind::Seq(items) => items,
                                _ => vec![m],
                            };
                            for map in maps {
                                if let NodeKind::Map(es) = map.kind {
                                    for (k, v) in es {
                                        if seen.insert(k.name.clone()) {
                                            entries.push((k, v));
                                        }
                                    }
                                } else {
                                    b.diags.push(Diagnostic::new(
                                        Code::Parse,
                                        file,
                                        map.span,
                                        "a merge key (`<<`) takes a mapping or a list of mappings",
                                    ));
                                }
                            }
                        }
                        (
                            Node {
                                span: Span { start: start.start, end: sp.end },
                                kind: NodeKind::Map(entries),
                            },
                            anchor,
                        )
                    }
                };
                if anchor != 0 {
                    b.anchors.insert(anchor, node.clone());
                }
                b.deliver(node, ScalarStyle::DoubleQuoted);
            }
            _ => {}
        }
    }
    if !b.diags.is_empty() {
        return Err(b.diags);
    }
    match b.root {
        Some(root) => Ok(root),
        None => Err(vec![Diagnostic::new(Code::Parse, file, Span::point(1, 1), "the file holds no YAML document")]),
    }
}

impl Builder<'_> {
    /// Hand a finished node to its parent (or make it the root).
    fn deliver(&mut self, node: Node, style: ScalarStyle) {
        match self.stack.last_mut() {
            None => self.root = Some(node),
            Some(Frame::Seq { items, .. }) => items.push(node),
            Some(Frame::Map {
                entries,
                seen,
                pending,
                merges,
                ..
            }) => match pending.take() {
                None => {
                    let name = match &node.kind {
                        NodeKind::Str(s) => s.clone(),
                        NodeKind::Null => String::new(),
                        NodeKind::Bool(b) => b.to_string(),
                        NodeKind::Int(i) => i.to_string(),
                        NodeKind::Float(f) => f.to_string(),
                        NodeKind::Seq(_) | NodeKind::Map(_) => {
                            self.diags.push(Diagnostic::new(
                                Code::Parse,
                                self.file,
                                node.span,
                                "mapping keys must be plain strings, not collections",
                            ));
                            String::from("?")
                        }
                    };
                    let name = if style == ScalarStyle::Plain && name == "<<" {
                        "\0merge".to_string()
                    } else {
                        name
                    };
                    *pending = Some(Key { name, span: node.span });
                }
                Some(key) => {
                    if key.name == "\0merge" {
                        merges.push(node);
                    } else if !seen.insert(key.name.clone()) {
                        let first = entries.iter().find(|(k, _)| k.name == key.name).map(|(k, _)| k.span);
                        let mut d = Diagnostic::new(
                            Code::DuplicateKey,
                            self.file,
                            key.span,
                            format!("duplicate key `{}`", key.name),
                        );
                        if let Some(f) = first {
                            d = d.with_help(format!("`{}` is first set at line {}, column {}", key.name, f.start.line, f.start.column));
                        }
                        self.diags.push(d);
                    } else {
                        entries.push((key, node));
                    }
                }
            },
        }
    }
}

fn count(n: &Node) -> usize {
    match &n.kind {
        NodeKind::Seq(items) => 1 + items.iter().map(count).sum::<usize>(),
        NodeKind::Map(es) => 1 + es.iter().map(|(_, v)| count(v)).sum::<usize>(),
        _ => 1,
    }
}

/// YAML 1.2 core-schema resolution of a plain scalar, strictly: only
/// `true`/`false` are booleans, numbers with leading zeros stay strings.
fn resolve_plain(s: &str) -> NodeKind {
    match s {
        "" | "~" | "null" | "Null" | "NULL" => return NodeKind::Null,
        "true" | "True" | "TRUE" => return NodeKind::Bool(true),
        "false" | "False" | "FALSE" => return NodeKind::Bool(false),
        ".inf" | ".Inf" | ".INF" | "+.inf" | "+.Inf" | "+.INF" => return NodeKind::Float(f64::INFINITY),
        "-.inf" | "-.Inf" | "-.INF" => return NodeKind::Float(f64::NEG_INFINITY),
        ".nan" | ".NaN" | ".NAN" => return NodeKind::Float(f64::NAN),
        _ => {}
    }
    let digits = s.strip_prefix(['-', '+']).unwrap_or(s);
    if !digits.is_empty() && digits.bytes().all(|c| c.is_ascii_digit()) {
        if digits.len() > 1 && digits.starts_with('0') {
            return NodeKind::Str(s.to_owned());
        }
        return match s.parse::<i64>() {
            Ok(i) => NodeKind::Int(i),
            Err(_) => s.parse::<f64>().map_or_else(|_| NodeKind::Str(s.to_owned()), NodeKind::Float),
        };
    }
    if let Some(hex) = s.strip_prefix("0x") {
        if let Ok(i) = i64::from_str_radix(hex, 16) {
            return NodeKind::Int(i);
        }
    }
    if let Some(oct) = s.strip_prefix("0o") {
        if let Ok(i) = i64::from_str_radix(oct, 8) {
            return NodeKind::Int(i);
        }
    }
    if is_float(digits) {
        if let Ok(f) = s.parse::<f64>() {
            return NodeKind::Float(f);
        }
    }
    NodeKind::Str(s.to_owned())
}

/// `[0-9]*\.[0-9]*([eE][-+]?[0-9]+)?` or `[0-9]+[eE][-+]?[0-9]+`, no leading zeros.
fn is_float(s: &str) -> bool {
    let (mantissa, exp) = match s.find(['e', 'E']) {
        Some(i) => (&s[..i], Some(&s[i + 1..])),
        None => (s, None),
    };
    if let Some(e) = exp {
        let e = e.strip_prefix(['-', '+']).unwrap_or(e);
        if e.is_empty() || !e.bytes().all(|c| c.is_ascii_digit()) {
            return false;
        }
    }
    let (int, frac) = match mantissa.find('.') {
        Some(i) => (&mantissa[..i], Some(&mantissa[i + 1..])),
        None => (mantissa, None),
    };
    if frac.is_none() && exp.is_none() {
        return false;
    }
    if int.is_empty() && frac.is_none_or(str::is_empty) {
        return false;
    }
    if int.len() > 1 && int.starts_with('0') {
        return false;
    }
    int.bytes().all(|c| c.is_ascii_digit()) && frac.is_none_or(|f| f.bytes().all(|c| c.is_ascii_digit()))
}

/// When a syntax error sits on a line indented with a tab, say so plainly.
fn tab_help(text: &str, line: u32, msg: &mut String) -> Option<String> {
    let lines: Vec<&str> = text.lines().collect();
    let candidates = [line as usize, (line as usize).saturating_sub(1), line as usize + 1];
    for l in candidates {
        if l == 0 {
            continue;
        }
        if let Some(src) = lines.get(l - 1) {
            let indent: String = src.chars().take_while(|c| c.is_whitespace()).collect();
            if indent.contains('\t') {
                *msg = format!("{msg} (a tab is used for indentation on line {l})");
                return Some("YAML indentation must use spaces, never tabs".into());
            }
        }
    }
    None
}
