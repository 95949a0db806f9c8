//! YAML to [`Node`], from the event stream of `granit-parser` (the parser
//! under serde-saphyr, re-exported by it).
//!
//! We build the tree from events rather than deserialising because we need a
//! span on every key and value, our own duplicate-key diagnostics, and our own
//! scalar resolution: YAML 1.2 core schema, strict, so `no` stays a string and
//! `0755` is not silently the number 755.

use super::node::{Key, Node, NodeKind};
use super::{MAX_ALIAS_NODES, MAX_DEPTH, MAX_NODES};
use crate::diag::{Code, Diagnostic, Span};
use serde_saphyr::granit_parser::{ErrorKind, Event, Options, Parser, ScalarStyle, Span as YSpan};
use std::collections::HashMap;

fn span(s: &YSpan) -> Span {
    Span::new(s.start.line() as u32, s.start.col() as u32 + 1, s.end.line() as u32, s.end.col() as u32 + 1)
}

enum Frame {
    Seq { start: Span, anchor: usize, items: Vec<Node> },
    Map { start: Span, anchor: usize, entries: Vec<(Key, Node)>, seen: Seen, pending: Option<Key>, merges: Vec<Node> },
}

struct Builder<'f> {
    file: &'f str,
    stack: Vec<Frame>,
    /// Anchored nodes and their node counts (so an alias is priced before it
    /// is copied).
    anchors: HashMap<usize, (Node, usize)>,
    root: Option<Node>,
    nodes: usize,
    /// Nodes created by alias expansion so far.
    alias_nodes: usize,
    diags: Vec<Diagnostic>,
}

pub fn parse(file: &str, text: &str) -> Result<Node, Vec<Diagnostic>> {
    // Comments are still checked as syntax, but we have no use for their
    // text, and capturing it costs a good part of the parse.
    let mut options = Options::default();
    options.set_emit_comments(false);
    let mut parser = Parser::new_from_str_with_options(text, options);
    let mut b = Builder { file, stack: Vec::new(), anchors: HashMap::new(), root: None, nodes: 0, alias_nodes: 0, diags: Vec::new() };
    let mut documents = 0;
    while let Some(ev) = parser.next_event() {
        let (event, ys) = match ev {
            Ok(e) => e,
            Err(err) => {
                let m = err.marker();
                let line = (m.line() as u32).max(1);
                let col = m.col() as u32 + 1;
                b.diags.extend(syntax_error(file, text, line, col, err.kind(), err.info()));
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
                let Some((anchored, size)) = b.anchors.get(&id) else {
                    b.diags.push(Diagnostic::new(Code::Parse, file, sp, "unknown alias"));
                    return Err(b.diags);
                };
                // Price the copy before making it: an alias bomb ("billion
                // laughs") must fail here, not after exhausting memory.
                let size = *size;
                b.alias_nodes = b.alias_nodes.saturating_add(size);
                b.nodes = b.nodes.saturating_add(size);
                if b.alias_nodes > MAX_ALIAS_NODES || b.nodes > MAX_NODES {
                    b.diags.push(
                        Diagnostic::new(
                            Code::Parse,
                            file,
                            sp,
                            format!("aliases expand the document beyond {MAX_ALIAS_NODES} nodes (an alias bomb?)"),
                        )
                        .with_help("use fewer nested aliases"),
                    );
                    return Err(b.diags);
                }
                let mut node = anchored.clone();
                node.span = sp;
                b.deliver(node, ScalarStyle::DoubleQuoted);
            }
            Event::Scalar(value, style, anchor, tag) => {
                b.nodes += 1;
                let forced_str = tag.as_ref().is_some_and(|t| t.is_yaml_core_schema_tag("str"));
                let kind =
                    if style == ScalarStyle::Plain && !forced_str { resolve_plain(&value) } else { NodeKind::Str(value.into_owned()) };
                let node = Node { span: sp, kind };
                if anchor != 0 {
                    b.anchors.insert(anchor, (node.clone(), 1));
                }
                b.deliver(node, style);
            }
            Event::SequenceStart(_, anchor, _) | Event::MappingStart(_, anchor, _) => {
                b.nodes += 1;
                if b.stack.len() >= MAX_DEPTH {
                    b.diags.push(Diagnostic::new(Code::Parse, file, sp, format!("the document is nested deeper than {MAX_DEPTH} levels")));
                    return Err(b.diags);
                }
                let frame = if matches!(event, Event::SequenceStart(..)) {
                    Frame::Seq { start: sp, anchor, items: Vec::new() }
                } else {
                    Frame::Map { start: sp, anchor, entries: Vec::new(), seen: Seen::default(), pending: None, merges: Vec::new() }
                };
                b.stack.push(frame);
            }
            Event::SequenceEnd | Event::MappingEnd => {
                let Some(frame) = b.stack.pop() else { continue };
                let (node, anchor) = match frame {
                    Frame::Seq { start, anchor, items } => {
                        (Node { span: Span { start: start.start, end: sp.end }, kind: NodeKind::Seq(items) }, anchor)
                    }
                    Frame::Map { start, anchor, mut entries, mut seen, merges, .. } => {
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
                                        if seen.first_time(&k.name, &entries) {
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
                        (Node { span: Span { start: start.start, end: sp.end }, kind: NodeKind::Map(entries) }, anchor)
                    }
                };
                if anchor != 0 {
                    b.anchors.insert(anchor, (node.clone(), count(&node)));
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
            Some(Frame::Map { entries, seen, pending, merges, .. }) => match pending.take() {
                None => {
                    let name = match node.kind {
                        NodeKind::Str(s) => s,
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
                    let name = if style == ScalarStyle::Plain && name == "<<" { "\0merge".to_string() } else { name };
                    *pending = Some(Key { name, span: node.span });
                }
                Some(key) => {
                    if key.name == "\0merge" {
                        merges.push(node);
                    } else if !seen.first_time(&key.name, entries) {
                        let first = seen.first_span(&key.name, entries);
                        let mut d = Diagnostic::new(Code::DuplicateKey, self.file, key.span, format!("duplicate key `{}`", key.name));
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

/// The keys of a mapping so far, for duplicate detection: most mappings are
/// small, so their entries are scanned; an index (name to the key's place
/// among the entries) is built only for large ones, so that a mapping with
/// thousands of repeated keys costs linear time.
#[derive(Default)]
struct Seen(Option<HashMap<String, usize>>);

impl Seen {
    const SCAN: usize = 16;

    /// Whether `name` is not yet among the keys (`entries` are the keys so
    /// far, and `name` is about to be pushed after them when it is new).
    fn first_time(&mut self, name: &str, entries: &[(Key, Node)]) -> bool {
        if let Some(index) = &mut self.0 {
            if index.contains_key(name) {
                return false;
            }
            index.insert(name.to_string(), entries.len());
            return true;
        }
        if entries.iter().any(|(k, _)| k.name == name) {
            return false;
        }
        if entries.len() >= Self::SCAN {
            let mut index: HashMap<String, usize> = HashMap::with_capacity(entries.len() * 2);
            for (i, (k, _)) in entries.iter().enumerate() {
                index.entry(k.name.clone()).or_insert(i);
            }
            index.insert(name.to_string(), entries.len());
            self.0 = Some(index);
        }
        true
    }

    /// The span of the first key named `name`.
    fn first_span(&self, name: &str, entries: &[(Key, Node)]) -> Option<Span> {
        match &self.0 {
            Some(index) => index.get(name).and_then(|&i| entries.get(i)).map(|(k, _)| k.span),
            None => entries.iter().find(|(k, _)| k.name == name).map(|(k, _)| k.span),
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
    // `from_str_radix` also takes a sign, which YAML does not after `0x`/`0o`.
    if let Some(hex) = s.strip_prefix("0x").filter(|h| h.bytes().all(|b| b.is_ascii_hexdigit()))
        && let Ok(i) = i64::from_str_radix(hex, 16)
    {
        return NodeKind::Int(i);
    }
    if let Some(oct) = s.strip_prefix("0o").filter(|o| o.bytes().all(|b| (b'0'..=b'7').contains(&b)))
        && let Ok(i) = i64::from_str_radix(oct, 8)
    {
        return NodeKind::Int(i);
    }
    if is_float(digits)
        && let Ok(f) = s.parse::<f64>()
    {
        return NodeKind::Float(f);
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

/// The diagnostics for a syntax error the parser reported at `line:col`.
///
/// The parser notices a tab used for indentation late and sometimes on
/// another line (e.g. at the start of the scalar it was scanning), so when the
/// file indents with a tab we find that tab ourselves and point at it.
fn syntax_error(file: &str, text: &str, line: u32, col: u32, kind: &ErrorKind, info: String) -> Vec<Diagnostic> {
    let error = Diagnostic::new(Code::Parse, file, Span::point(line, col), info);
    let tab_error = matches!(
        kind,
        ErrorKind::TabNotAllowed
            | ErrorKind::TabInBlockIndentation
            | ErrorKind::TabAtBlockScalarStart
            | ErrorKind::TabInIndentation
            | ErrorKind::TabInPlainScalar
    );
    let Some((tl, tc)) = indentation_tab(text, line.saturating_add(1)) else {
        return vec![error];
    };
    let tab = Diagnostic::new(Code::Parse, file, Span::point(tl, tc), "a tab is used for indentation")
        .with_help("YAML indentation must use spaces, never tabs");
    // The parser's own message is about the same tab when it names a tab or
    // stops next to it; otherwise the file has two problems.
    if tab_error || line.abs_diff(tl) <= 1 { vec![tab] } else { vec![tab, error] }
}

/// The position (1-based line, column in characters) of the first tab that
/// indents a line, on lines `1..=last_line`.
///
/// A lexical pass, run only once parsing has failed: tabs inside block
/// scalars, quoted scalars and flow collections are content or separation,
/// not indentation, so those are tracked line by line. Why by hand: the
/// parser stops at the first error and reports where it noticed the problem,
/// which is not always where the tab is.
fn indentation_tab(text: &str, last_line: u32) -> Option<(u32, u32)> {
    if !text.contains('\t') {
        return None;
    }
    let mut lex = Lexer::default();
    for (i, line) in text.lines().enumerate() {
        let n = i as u32 + 1;
        if n > last_line {
            break;
        }
        if let Some(col) = lex.line(line) {
            return Some((n, col as u32 + 1));
        }
    }
    None
}

#[derive(Default)]
struct Lexer {
    /// Inside a block scalar: the parent's indentation and, once known, the
    /// content's.
    block: Option<(usize, Option<usize>)>,
    /// Inside a quoted scalar that continues on the next line.
    quote: Option<char>,
    /// Depth of open flow collections (`[`, `{`).
    flow: usize,
    /// While a quoted scalar or flow collection continues: the indentation
    /// its continuation lines need (the column of the key or `-` that holds it).
    cont_indent: usize,
}

impl Lexer {
    /// Read one line; the character index of a tab that indents it, if any.
    fn line(&mut self, line: &str) -> Option<usize> {
        if (line.starts_with("---") || line.starts_with("...")) && line[3..].starts_with([' ', '\t']) | (line.len() == 3) {
            *self = Lexer::default();
            return None;
        }
        let spaces = line.bytes().take_while(|&b| b == b' ').count();
        let blank = line.trim_matches([' ', '\t', '\r']).is_empty();
        if let Some((parent, content)) = self.block {
            if blank {
                return None;
            }
            match content {
                Some(k) if spaces >= k => return None,
                None if spaces > parent => {
                    self.block = Some((parent, Some(spaces)));
                    return None;
                }
                _ => self.block = None,
            }
        }
        let continued = self.quote.is_some() || self.flow > 0;
        let chars: Vec<char> = line.chars().collect();
        let first = chars.iter().position(|c| *c != ' ' && *c != '\t');
        // Continuation lines of a flow collection may use tabs as separation
        // once indented enough; those of a quoted scalar may always (as the
        // parser accepts them).
        if let Some(f) = first.filter(|&f| chars[f] != '#' || continued)
            && let Some(t) = chars[..f].iter().position(|c| *c == '\t')
            && (!continued || self.quote.is_none() && t < self.cont_indent)
        {
            return Some(t);
        }
        self.scan(&chars, spaces);
        None
    }

    /// Track quotes, flow collections and block scalar headers across a line.
    fn scan(&mut self, chars: &[char], indent: usize) {
        let continued_before = self.flow > 0 || self.quote.is_some();
        let mut i = 0;
        // Where the current token started, to tell `key:` columns and
        // whether a quote or bracket opens a token.
        let mut token_start = true;
        let mut last_key_col: Option<usize> = None;
        let mut last_dash_col: Option<usize> = None;
        let mut last_token: Option<(usize, usize)> = None;
        while i < chars.len() {
            let c = chars[i];
            if let Some(q) = self.quote {
                if q == '"' && c == '\\' {
                    i += 2;
                    continue;
                }
                if c == q {
                    if q == '\'' && chars.get(i + 1) == Some(&'\'') {
                        i += 2;
                        continue;
                    }
                    self.quote = None;
                }
                i += 1;
                continue;
            }
            match c {
                ' ' | '\t' | '\r' => {
                    token_start = true;
                    i += 1;
                    continue;
                }
                '#' if token_start => break,
                '\'' | '"' if token_start || self.flow > 0 && matches!(chars.get(i.wrapping_sub(1)), Some('[' | '{' | ',' | ':')) => {
                    self.quote = Some(c);
                    last_token = None;
                    i += 1;
                    continue;
                }
                '[' | '{' if token_start || self.flow > 0 => {
                    self.flow += 1;
                    last_token = None;
                    i += 1;
                    token_start = true;
                    continue;
                }
                ']' | '}' if self.flow > 0 => {
                    self.flow -= 1;
                    last_token = None;
                    i += 1;
                    token_start = true;
                    continue;
                }
                ',' if self.flow > 0 => {
                    i += 1;
                    token_start = true;
                    continue;
                }
                _ => {}
            }
            // A plain token: up to the next blank (or flow indicator in flow).
            let start = i;
            while i < chars.len()
                && !matches!(chars[i], ' ' | '\t' | '\r')
                && !(self.flow > 0 && matches!(chars[i], ',' | '[' | ']' | '{' | '}'))
            {
                i += 1;
            }
            token_start = false;
            if self.flow == 0 {
                if chars[start] == '-' && i - start == 1 {
                    last_dash_col = Some(start);
                    last_key_col = None;
                } else if chars[i - 1] == ':' || chars[start] == '?' && i - start == 1 {
                    last_key_col.get_or_insert(start);
                }
            }
            last_token = Some((start, i));
        }
        if self.flow > 0 || self.quote.is_some() {
            if !continued_before {
                self.cont_indent = last_key_col.or(last_dash_col).unwrap_or(indent);
            }
            return;
        }
        // A block scalar header is the last token: `|`, `>`, with indicators.
        if let Some((s, e)) = last_token {
            let tok = &chars[s..e];
            if matches!(tok[0], '|' | '>')
                && tok.len() <= 3
                && tok[1..].iter().all(|c| c.is_ascii_digit() && *c != '0' || *c == '+' || *c == '-')
            {
                let parent = last_key_col.or(last_dash_col).unwrap_or(indent);
                let explicit = tok[1..].iter().find_map(|c| c.to_digit(10)).map(|d| parent + d as usize);
                self.block = Some((parent, explicit));
            }
        }
    }
}
