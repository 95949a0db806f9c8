//! Typed deserialisation straight from the positioned [`Node`] tree, without
//! building a `serde_json::Value` first.
//!
//! It reads a node exactly as the `serde_json::Value` that [`Node::to_json`]
//! makes of it would be read: integers as `u64` when not negative, floats
//! that are not finite as null (JSON has no such numbers), mappings in source
//! order. Where that deserialiser is lenient it is stricter: a struct is read
//! only from a mapping (never from a list), so a value that deserialises here
//! has the shape the generated schema describes.

use super::node::{Node, NodeKind};
use serde::de::{self, DeserializeSeed, Deserializer, IntoDeserializer, MapAccess, SeqAccess, Visitor};
use std::fmt;

/// A deserialisation error: a message, as serde gives it.
#[derive(Debug)]
pub struct Error(String);

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Error {}

impl de::Error for Error {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        Error(msg.to_string())
    }
}

impl Node {
    /// What the node is, for error messages.
    fn unexpected(&self) -> de::Unexpected<'_> {
        match &self.kind {
            NodeKind::Null => de::Unexpected::Unit,
            NodeKind::Bool(b) => de::Unexpected::Bool(*b),
            NodeKind::Int(i) => de::Unexpected::Signed(*i),
            NodeKind::Float(f) if f.is_finite() => de::Unexpected::Float(*f),
            NodeKind::Float(_) => de::Unexpected::Unit,
            NodeKind::Str(s) => de::Unexpected::Str(s),
            NodeKind::Seq(_) => de::Unexpected::Seq,
            NodeKind::Map(_) => de::Unexpected::Map,
        }
    }

    /// Whether the node reads as null (as its JSON value is: null, or a
    /// float that is not finite).
    pub fn is_null_like(&self) -> bool {
        match self.kind {
            NodeKind::Null => true,
            NodeKind::Float(f) => !f.is_finite(),
            _ => false,
        }
    }
}

impl<'de> Deserializer<'de> for &'de Node {
    type Error = Error;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        match &self.kind {
            NodeKind::Null => visitor.visit_unit(),
            NodeKind::Bool(b) => visitor.visit_bool(*b),
            NodeKind::Int(i) if *i >= 0 => visitor.visit_u64(*i as u64),
            NodeKind::Int(i) => visitor.visit_i64(*i),
            NodeKind::Float(f) if f.is_finite() => visitor.visit_f64(*f),
            NodeKind::Float(_) => visitor.visit_unit(),
            NodeKind::Str(s) => visitor.visit_borrowed_str(s),
            NodeKind::Seq(items) => {
                let mut seq = Seq { items: items.iter() };
                let v = visitor.visit_seq(&mut seq)?;
                match seq.items.len() {
                    0 => Ok(v),
                    _ => Err(de::Error::invalid_length(items.len(), &"fewer elements in array")),
                }
            }
            NodeKind::Map(entries) => {
                let mut map = Map { entries: entries.iter(), value: None };
                let v = visitor.visit_map(&mut map)?;
                match map.entries.len() {
                    0 => Ok(v),
                    _ => Err(de::Error::invalid_length(entries.len(), &"fewer elements in map")),
                }
            }
        }
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        if self.is_null_like() { visitor.visit_none() } else { visitor.visit_some(self) }
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(self, _name: &'static str, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_newtype_struct(self)
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Error> {
        match &self.kind {
            NodeKind::Map(_) => self.deserialize_any(visitor),
            _ => Err(de::Error::invalid_type(self.unexpected(), &visitor)),
        }
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Error> {
        match &self.kind {
            NodeKind::Str(s) => visitor.visit_enum(s.as_str().into_deserializer()),
            _ => Err(de::Error::invalid_type(self.unexpected(), &"a string")),
        }
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
        bytes byte_buf unit unit_struct seq tuple tuple_struct map identifier ignored_any
    }
}

struct Seq<'de> {
    items: std::slice::Iter<'de, Node>,
}

impl<'de> SeqAccess<'de> for Seq<'de> {
    type Error = Error;

    fn next_element_seed<T: DeserializeSeed<'de>>(&mut self, seed: T) -> Result<Option<T::Value>, Error> {
        self.items.next().map(|n| seed.deserialize(n)).transpose()
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.items.len())
    }
}

struct Map<'de> {
    entries: std::slice::Iter<'de, (super::node::Key, Node)>,
    value: Option<&'de Node>,
}

impl<'de> MapAccess<'de> for Map<'de> {
    type Error = Error;

    fn next_key_seed<K: DeserializeSeed<'de>>(&mut self, seed: K) -> Result<Option<K::Value>, Error> {
        match self.entries.next() {
            Some((k, v)) => {
                self.value = Some(v);
                seed.deserialize(de::value::BorrowedStrDeserializer::new(&k.name)).map(Some)
            }
            None => Ok(None),
        }
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, Error> {
        match self.value.take() {
            Some(v) => seed.deserialize(v),
            None => Err(de::Error::custom("value is missing")),
        }
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.entries.len())
    }
}

#[cfg(test)]
mod tests {
    use crate::spec::raw::RawWorkflow;
    use crate::spec::{Format, parse};

    fn both(text: &str, format: Format) -> (Result<RawWorkflow, String>, Result<RawWorkflow, String>) {
        let doc = parse("t", text, format).expect("parses");
        let from_node = <RawWorkflow as serde::Deserialize>::deserialize(&doc.root).map_err(|e| e.to_string());
        let from_value = <RawWorkflow as serde::Deserialize>::deserialize(&doc.value).map_err(|e| e.to_string());
        (from_node, from_value)
    }

    #[test]
    fn reads_what_the_json_value_reads() {
        let yaml = "version: 1\nname: wf\ndescription: d\ntimeout: 1h\nbackend: {flag: f, variants: {a: local}, default: local}\n\
                    queue: q\nconcurrency: 4\ninput: {type: object, properties: {x: {type: integer, default: -3, n: .nan}}}\n\
                    defaults: {timeout: 5m, retry: {attempts: 3, backoff: 2, max_delay: 1m, jitter: false}}\nenv: {A: b}\n\
                    tasks:\n  - name: a\n    run: [echo, '{{input.x}}']\n    output: json\n    retry: {attempts: 2, backoff: .inf}\n\
                    \x20 - name: b\n    parents: [a]\n    http: {method: POST, url: u, headers: {h: v}, json: {k: [1, 2.5, null, true]}}\n\
                    \x20 - name: c\n    celery: {task: t.add, args: [1, -2], kwargs: {x: 1}, priority: 9}\n\
                    \x20 - name: d\n    uses: echo\n    with: {message: hi, nested: {a: [~]}}\n";
        let (n, v) = both(yaml, Format::Yaml);
        assert_eq!(n.expect("from the node"), v.expect("from the value"));
        let toml = "version = 1\nname = \"wf\"\nbackend = \"local\"\n[[tasks]]\nname = \"a\"\nshell = \"echo\"\nenv = { A = \"1\" }\n";
        let (n, v) = both(toml, Format::Toml);
        assert_eq!(n.expect("from the node"), v.expect("from the value"));
    }

    #[test]
    fn refuses_what_the_json_value_refuses() {
        for yaml in [
            "version: 1.0\nname: wf\ntasks: [{name: a, shell: x}]\n",
            "version: 1\nname: 3\ntasks: [{name: a, shell: x}]\n",
            "version: 1\nname: wf\nbogus: 1\ntasks: [{name: a, shell: x}]\n",
            "version: 1\nname: wf\ntasks: [{name: a, shell: x, retry: {attempts: -1}}]\n",
            "version: 1\nname: wf\ntasks: [{name: a, http: {method: FETCH, url: u}}]\n",
            "version: 1\nname: wf\ntasks: {name: a}\n",
            "version: 1\nname: wf\nenv: null\ntasks: [{name: a, shell: x}]\n",
        ] {
            let (n, v) = both(yaml, Format::Yaml);
            assert!(n.is_err(), "{yaml}");
            assert!(v.is_err(), "{yaml}");
        }
    }

    /// A struct is read from a mapping only, where the JSON value would also
    /// take a list of its fields in order (which the schema refuses).
    #[test]
    fn structs_come_from_mappings_only() {
        let (n, v) = both("version: 1\nname: wf\ntasks: [{name: a, shell: x, retry: [3]}]\n", Format::Yaml);
        assert!(n.is_err());
        assert!(v.is_ok());
    }
}
