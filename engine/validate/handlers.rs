//! What validation knows of the handlers `uses:` tasks may call: their names,
//! the JSON Schema of the `with` value each takes, and of the output each
//! returns. The CLI knows the built-ins; an engine knows its registered
//! handlers too.
//!
//! A task's `with:` is checked against its handler's schema where it is
//! literal: a value that is a template is only known when the task runs, so
//! it is never judged, nor is an alternative (`oneOf`, `anyOf`) that holds
//! one. Key names and required keys are always checked.

use super::schema::{kind_names, type_name};
use crate::diag::{Code, Diagnostic, did_you_mean};
use crate::plan::template;
use crate::spec::node::{Node, NodeKind, pointer_seg};
use jsonschema::error::ValidationErrorKind;
use serde_json::Value;
use std::collections::BTreeMap;
use std::sync::Arc;

/// The handlers a workflow may call, by name, with their schemas.
#[derive(Clone, Default)]
pub struct HandlerCatalog {
    map: BTreeMap<String, Entry>,
}

#[derive(Clone)]
struct Entry {
    /// The `with` schema and its validator, when the handler declares a valid one.
    with: Option<(Arc<Value>, Arc<jsonschema::Validator>)>,
    output: Option<Arc<Value>>,
}

impl std::fmt::Debug for HandlerCatalog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_set().entries(self.map.keys()).finish()
    }
}

impl HandlerCatalog {
    /// Add (or replace) a handler. A `with` schema that is not a valid JSON
    /// Schema is left out (with a warning in the log): nothing is checked
    /// against it.
    pub fn insert(&mut self, name: impl Into<String>, with: Option<Value>, output: Option<Value>) {
        let name = name.into();
        let with = with.and_then(|s| match jsonschema::validator_for(&s) {
            Ok(v) => Some((Arc::new(s), Arc::new(v))),
            Err(e) => {
                tracing::warn!("handler `{name}`: its `with` schema is not a valid JSON Schema ({e}); its arguments are not checked");
                None
            }
        });
        self.map.insert(name, Entry { with, output: output.map(Arc::new) });
    }

    pub fn contains(&self, name: &str) -> bool {
        self.map.contains_key(name)
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.map.keys().map(String::as_str)
    }

    /// The output schema a handler declares.
    pub fn output_schema(&self, name: &str) -> Option<&Value> {
        self.map.get(name)?.output.as_deref()
    }

    /// The `with` schema a handler declares.
    pub fn with_schema(&self, name: &str) -> Option<&Value> {
        self.map.get(name)?.with.as_ref().map(|(s, _)| &**s)
    }

    fn validator(&self, name: &str) -> Option<(&Value, &jsonschema::Validator)> {
        self.map.get(name)?.with.as_ref().map(|(s, v)| (&**s, &**v))
    }
}

/// Check the `with:` of task `i`, which calls `handler` (a known name).
pub(super) fn check_with(
    file: &str,
    root: &Node,
    catalog: &HandlerCatalog,
    handler: &str,
    task_ptr: &str,
    task: &Node,
    out: &mut Vec<Diagnostic>,
) {
    let Some((schema, validator)) = catalog.validator(handler) else { return };
    // `with: null` reads as no `with`.
    let node = task.get("with").filter(|n| !matches!(n.kind, NodeKind::Null));
    // A `with` that is one template is only known when the task runs.
    if node.and_then(Node::as_str).is_some_and(template::is_template) {
        return;
    }
    // A task without `with` calls its handler with an empty mapping.
    let value = node.map_or_else(|| Value::Object(Default::default()), Node::to_json);
    if validator.is_valid(&value) {
        return;
    }
    let mut templated = Vec::new();
    if let Some(n) = node {
        templates_in(n, &mut String::new(), &mut templated);
    }
    let base = format!("{task_ptr}/with");
    for err in validator.iter_errors(&value) {
        let at = err.instance_path().as_str();
        // A template at or below the value at fault, or the value inside a template.
        let holds_template = templated.iter().any(|t| under(t, at));
        if templated.iter().any(|t| under(at, t)) {
            continue;
        }
        let pointer = format!("{base}{at}");
        let label = if at.is_empty() {
            "`with`".to_string()
        } else {
            format!("`with.{}`", at.trim_start_matches('/').split('/').map(unescape).collect::<Vec<_>>().join("."))
        };
        // The schema object whose keyword failed.
        let keyword_parent = {
            let sp = err.schema_path().as_str();
            schema.pointer(sp.rsplit_once('/').map_or("", |(p, _)| p)).unwrap_or(schema)
        };
        match err.kind() {
            ValidationErrorKind::AdditionalProperties { unexpected } => {
                let allowed: Vec<&str> = keyword_parent
                    .get("properties")
                    .and_then(Value::as_object)
                    .map(|p| p.keys().map(String::as_str).collect())
                    .unwrap_or_default();
                for key in unexpected {
                    let span = root.key_span_at(&format!("{pointer}/{}", pointer_seg(key)));
                    let where_ = if at.is_empty() { String::new() } else { format!(" in {label}") };
                    let mut d =
                        Diagnostic::new(Code::HandlerArgs, file, span, format!("handler `{handler}` takes no argument `{key}`{where_}"));
                    d = match did_you_mean(key, allowed.iter().copied()) {
                        Some(s) => d.with_help(format!("did you mean `{s}`?")),
                        None if allowed.is_empty() => d.with_help(format!("handler `{handler}` takes no arguments here")),
                        None => d.with_help(format!("handler `{handler}` takes: {}", allowed.join(", "))),
                    };
                    out.push(d);
                }
            }
            ValidationErrorKind::Required { property } => {
                let prop = property.as_str().unwrap_or_default();
                let span = match node {
                    Some(_) => root.key_span_at(&pointer),
                    None => root.span_at(&format!("{task_ptr}/uses")),
                };
                let where_ = if at.is_empty() { String::new() } else { format!(" in {label}") };
                let example = if at.is_empty() && node.is_none() { format!(": add `with: {{{prop}: ...}}`") } else { String::new() };
                out.push(
                    Diagnostic::new(Code::HandlerArgs, file, span, format!("handler `{handler}` needs the argument `{prop}`{where_}"))
                        .with_help(format!("`{prop}` is required{example}")),
                );
            }
            ValidationErrorKind::Type { kind } => {
                let instance = value.pointer(at).unwrap_or(&Value::Null);
                // A null that a schema allows is the same as leaving the argument out.
                let names: Vec<String> = kind_names(kind).into_iter().filter(|k| k != "null").collect();
                out.push(Diagnostic::new(
                    Code::HandlerArgs,
                    file,
                    root.span_at(&pointer),
                    format!("handler `{handler}`: {label} must be {}, found {}", names.join(" or "), type_name(instance)),
                ));
            }
            ValidationErrorKind::Enum { options } => {
                let instance = value.pointer(at).unwrap_or(&Value::Null);
                let opts: Vec<String> = options
                    .as_array()
                    .map(|a| a.iter().map(|o| o.as_str().map_or(o.to_string(), str::to_string)).collect())
                    .unwrap_or_default();
                let mut d = Diagnostic::new(
                    Code::HandlerArgs,
                    file,
                    root.span_at(&pointer),
                    format!(
                        "handler `{handler}`: {label} must be one of {}, found {}",
                        opts.join(", "),
                        instance.as_str().map_or_else(|| instance.to_string(), |s| format!("`{s}`"))
                    ),
                );
                if let Some(s) = instance.as_str().and_then(|v| did_you_mean(v, opts.iter().map(String::as_str))) {
                    d = d.with_help(format!("did you mean `{s}`?"));
                }
                out.push(d);
            }
            ValidationErrorKind::OneOfNotValid { .. }
            | ValidationErrorKind::OneOfMultipleValid { .. }
            | ValidationErrorKind::AnyOf { .. }
            | ValidationErrorKind::Not { .. }
                if holds_template =>
            {
                // A template inside may be what decides it.
            }
            kind @ (ValidationErrorKind::OneOfNotValid { .. }
            | ValidationErrorKind::OneOfMultipleValid { .. }
            | ValidationErrorKind::AnyOf { .. }) => {
                let alternatives =
                    err.schema_path().as_str().rsplit('/').next().and_then(|k| keyword_parent.get(k)).and_then(Value::as_array);
                // Alternatives that each require keys: "one of these keys".
                let keys: Option<Vec<&str>> = alternatives.and_then(|alts| {
                    let mut keys = Vec::new();
                    for a in alts {
                        let req = a.get("required")?.as_array()?;
                        keys.extend(req.iter().filter_map(Value::as_str));
                    }
                    (!keys.is_empty()).then_some(keys)
                });
                let span = if at.is_empty() {
                    match node {
                        Some(_) => root.key_span_at(&pointer),
                        None => root.span_at(&format!("{task_ptr}/uses")),
                    }
                } else {
                    root.span_at(&pointer)
                };
                let listed = |ks: &[&str]| ks.iter().map(|k| format!("`{k}`")).collect::<Vec<_>>().join(" or ");
                let message = match (keys, kind) {
                    (Some(ks), ValidationErrorKind::OneOfMultipleValid { .. }) => {
                        format!("handler `{handler}` takes one of {} in {label}, not several", listed(&ks))
                    }
                    (Some(ks), _) => format!("handler `{handler}` needs one of {} in {label}", listed(&ks)),
                    (None, _) => format!("handler `{handler}`: {label} {}", err.masked()),
                };
                out.push(Diagnostic::new(Code::HandlerArgs, file, span, message));
            }
            _ => {
                out.push(Diagnostic::new(
                    Code::HandlerArgs,
                    file,
                    root.span_at(&pointer),
                    format!("handler `{handler}`: {label}: {}", err.masked()),
                ));
            }
        }
    }
}

/// The pointers (relative to `with`) of the template strings in a value.
fn templates_in(n: &Node, at: &mut String, out: &mut Vec<String>) {
    match &n.kind {
        NodeKind::Str(s) if template::is_template(s) => out.push(at.clone()),
        NodeKind::Seq(items) => {
            for (i, x) in items.iter().enumerate() {
                let len = at.len();
                at.push_str(&format!("/{i}"));
                templates_in(x, at, out);
                at.truncate(len);
            }
        }
        NodeKind::Map(entries) => {
            for (k, x) in entries {
                let len = at.len();
                at.push('/');
                at.push_str(&pointer_seg(&k.name));
                templates_in(x, at, out);
                at.truncate(len);
            }
        }
        _ => {}
    }
}

/// Whether pointer `p` is `base` or lies below it.
fn under(p: &str, base: &str) -> bool {
    p.strip_prefix(base).is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

fn unescape(seg: &str) -> String {
    seg.replace("~1", "/").replace("~0", "~")
}

/// Why a read below a task's output cannot succeed, at `depth` segments
/// after `output`.
#[derive(Debug, PartialEq)]
pub(super) enum NoField<'s> {
    /// A closed object (`additionalProperties: false`) without that field;
    /// the fields it has, sorted.
    Closed { depth: usize, fields: Vec<&'s str> },
    /// A string, number, boolean or null, which has no fields.
    Scalar { depth: usize, kind: &'static str },
}

/// Whether an output schema says that a read cannot succeed. `path` holds
/// the segments read after `output` (`["text"]` for `output.text`). Only
/// closed objects and scalar types are judged; anything else may hold the
/// field.
pub(super) fn missing_output_field<'s>(schema: &'s Value, path: &[&str]) -> Option<NoField<'s>> {
    let mut s = schema;
    for (depth, seg) in path.iter().enumerate() {
        let ty = s.get("type");
        let is =
            |t: &str| ty.is_some_and(|v| v.as_str() == Some(t) || v.as_array().is_some_and(|a| a.len() == 1 && a[0].as_str() == Some(t)));
        let scalar =
            [("string", "a string"), ("integer", "an integer"), ("number", "a number"), ("boolean", "a boolean"), ("null", "null")]
                .into_iter()
                .find(|(t, _)| is(t));
        if let Some((_, kind)) = scalar {
            return Some(NoField::Scalar { depth, kind });
        }
        if is("array") {
            // `output.items.0` reads an element: look no further.
            return None;
        }
        let props = s.get("properties").and_then(Value::as_object);
        match props.and_then(|p| p.get(*seg)) {
            Some(sub) => s = sub,
            None if s.get("additionalProperties").is_some_and(|a| a == &Value::Bool(false)) => {
                let mut fields: Vec<&str> = props.map(|p| p.keys().map(String::as_str).collect()).unwrap_or_default();
                fields.sort_unstable();
                return Some(NoField::Closed { depth, fields });
            }
            None => return None,
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// A built-in's schema that did not compile would silently check nothing.
    #[test]
    fn the_builtin_schemas_are_valid_and_match_what_the_handlers_take() {
        let c = HandlerCatalog::builtin();
        assert_eq!(c.names().collect::<Vec<_>>(), ["echo", "extract-text", "fail", "llm", "sleep"]);
        for name in ["extract-text", "fail", "llm", "sleep"] {
            assert!(c.validator(name).is_some(), "{name} declares a valid `with` schema");
        }
        assert!(c.validator("echo").is_none() && c.output_schema("echo").is_none(), "echo takes and returns anything");
        let ok = |h: &str, v: Value| c.validator(h).expect("schema").1.is_valid(&v);
        assert!(ok("llm", json!({"prompt": "hi", "system": "s", "model": "m", "temperature": 0.2, "max_tokens": 50})));
        assert!(!ok("llm", json!({"promt": "hi"})));
        assert!(ok("sleep", json!({"duration": "200ms"})) && ok("sleep", json!({"seconds": 0.2})));
        assert!(!ok("sleep", json!({})) && !ok("sleep", json!({"duration": "1s", "seconds": 1})) && !ok("sleep", json!({"seconds": -1})));
        assert!(ok("fail", json!({})) && ok("fail", json!({"message": {"any": 1}, "retryable": false})));
        assert!(ok("extract-text", json!({"path": "a.txt"})) && !ok("extract-text", json!({"path": ""})));
        for name in ["extract-text", "llm", "sleep"] {
            let out = c.output_schema(name).expect("an output schema");
            assert!(jsonschema::validator_for(out).is_ok(), "{name}");
        }
    }

    #[test]
    fn output_fields_are_judged_only_where_the_schema_is_closed() {
        let s = json!({"type": "object", "additionalProperties": false, "properties": {
            "text": {"type": "string"},
            "meta": {"type": "object", "properties": {"a": {}}},
            "pages": {"type": "array"}
        }});
        assert_eq!(missing_output_field(&s, &["text"]), None);
        assert_eq!(missing_output_field(&s, &["txt"]), Some(NoField::Closed { depth: 0, fields: vec!["meta", "pages", "text"] }));
        assert_eq!(missing_output_field(&s, &["text", "x"]), Some(NoField::Scalar { depth: 1, kind: "a string" }));
        assert_eq!(missing_output_field(&s, &["meta", "anything"]), None, "an open object may hold it");
        assert_eq!(missing_output_field(&s, &["pages", "0"]), None);
        assert_eq!(missing_output_field(&json!({"type": "object"}), &["x"]), None);
    }
}
