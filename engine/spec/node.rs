//! A format-neutral document tree where every key and value has a span.

use crate::diag::Span;
use serde_json::{Map, Number, Value};

#[derive(Debug, Clone)]
pub struct Key {
    pub name: String,
    pub span: Span,
}

#[derive(Debug, Clone)]
pub enum NodeKind {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    Seq(Vec<Node>),
    Map(Vec<(Key, Node)>),
}

#[derive(Debug, Clone)]
pub struct Node {
    pub span: Span,
    pub kind: NodeKind,
}

impl Node {
    pub fn to_json(&self) -> Value {
        match &self.kind {
            NodeKind::Null => Value::Null,
            NodeKind::Bool(b) => Value::Bool(*b),
            NodeKind::Int(i) => Value::Number((*i).into()),
            NodeKind::Float(f) => Number::from_f64(*f).map_or(Value::Null, Value::Number),
            NodeKind::Str(s) => Value::String(s.clone()),
            NodeKind::Seq(items) => Value::Array(items.iter().map(Node::to_json).collect()),
            NodeKind::Map(entries) => {
                let mut m = Map::with_capacity(entries.len());
                for (k, v) in entries {
                    m.insert(k.name.clone(), v.to_json());
                }
                Value::Object(m)
            }
        }
    }

    fn child(&self, seg: &str) -> Option<(&Node, Option<&Key>)> {
        match &self.kind {
            NodeKind::Map(entries) => entries.iter().find(|(k, _)| k.name == seg).map(|(k, v)| (v, Some(k))),
            NodeKind::Seq(items) => seg.parse::<usize>().ok().and_then(|i| items.get(i)).map(|n| (n, None)),
            _ => None,
        }
    }
}

/// A parsed file: the positioned tree and its JSON value.
#[derive(Debug, Clone)]
pub struct Document {
    pub root: Node,
    pub value: Value,
}

impl Document {
    pub fn new(root: Node) -> Self {
        let value = root.to_json();
        Document { root, value }
    }

    /// The span of the value at a JSON pointer (or of the deepest ancestor that exists).
    pub fn span(&self, pointer: &str) -> Span {
        self.root.span_at(pointer)
    }

    /// The span of the key of the mapping entry at a pointer; the value's span
    /// for sequence items and the root.
    pub fn key_span(&self, pointer: &str) -> Span {
        self.root.key_span_at(pointer)
    }

    /// The node at a pointer, when it exists.
    pub fn node(&self, pointer: &str) -> Option<&Node> {
        self.root.pointer(pointer)
    }
}

/// Lookups in a tree, much as in a `serde_json::Value`: by key, by JSON
/// pointer, and by type.
impl Node {
    /// Walk a JSON pointer as far as it resolves: the deepest node reached,
    /// its key when it is a mapping entry, and whether the whole pointer resolved.
    fn walk(&self, pointer: &str) -> (&Node, Option<&Key>, bool) {
        let mut node = self;
        let mut key = None;
        if pointer.is_empty() {
            return (node, None, true);
        }
        for raw in pointer.trim_start_matches('/').split('/') {
            let seg = if raw.contains('~') {
                std::borrow::Cow::Owned(raw.replace("~1", "/").replace("~0", "~"))
            } else {
                std::borrow::Cow::Borrowed(raw)
            };
            match node.child(&seg) {
                Some((n, k)) => {
                    node = n;
                    key = k;
                }
                None => return (node, key, false),
            }
        }
        (node, key, true)
    }

    /// The span of the node at a JSON pointer below this one (or of the
    /// deepest one that exists).
    pub fn span_at(&self, pointer: &str) -> Span {
        self.walk(pointer).0.span
    }

    /// The span of the key of the mapping entry at a pointer; the node's span
    /// for sequence items and this node.
    pub fn key_span_at(&self, pointer: &str) -> Span {
        let (node, key, _) = self.walk(pointer);
        key.map_or(node.span, |k| k.span)
    }

    /// The node at a JSON pointer below this one, when it exists.
    pub fn pointer(&self, pointer: &str) -> Option<&Node> {
        let (node, _, ok) = self.walk(pointer);
        ok.then_some(node)
    }

    /// The value of a mapping entry.
    pub fn get(&self, key: &str) -> Option<&Node> {
        match &self.kind {
            NodeKind::Map(entries) => entries.iter().find(|(k, _)| k.name == key).map(|(_, v)| v),
            _ => None,
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match &self.kind {
            NodeKind::Str(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_seq(&self) -> Option<&[Node]> {
        match &self.kind {
            NodeKind::Seq(items) => Some(items),
            _ => None,
        }
    }

    pub fn as_map(&self) -> Option<&[(Key, Node)]> {
        match &self.kind {
            NodeKind::Map(entries) => Some(entries),
            _ => None,
        }
    }

    pub fn is_str(&self) -> bool {
        matches!(self.kind, NodeKind::Str(_))
    }

    pub fn is_seq(&self) -> bool {
        matches!(self.kind, NodeKind::Seq(_))
    }

    pub fn is_map(&self) -> bool {
        matches!(self.kind, NodeKind::Map(_))
    }

    /// Whether a mapping has an entry for `key`.
    pub fn contains_key(&self, key: &str) -> bool {
        self.get(key).is_some()
    }
}

/// Escape one JSON-pointer segment.
pub fn pointer_seg(s: &str) -> String {
    s.replace('~', "~0").replace('/', "~1")
}
