//! JSON Schema validation of a document against `workflow.schema.json`,
//! with every error placed on the node at fault.

use crate::diag::{Code, Diagnostic, did_you_mean};
use crate::spec::Document;
use crate::spec::node::{Node, NodeKind, pointer_seg};
use crate::spec::raw::{RawWorkflow, RetrySpec};
use jsonschema::error::{TypeKind, ValidationErrorKind};
use serde_json::{Map, Value};
use std::sync::OnceLock;

struct Compiled {
    validator: jsonschema::Validator,
    schema: Value,
}

fn compiled() -> &'static Compiled {
    static C: OnceLock<Compiled> = OnceLock::new();
    C.get_or_init(|| {
        let schema = crate::spec::raw::json_schema();
        let validator = jsonschema::validator_for(&schema).expect("the generated schema is valid");
        Compiled { validator, schema }
    })
}

/// What authors coming from other engines write for one of our fields,
/// which edit distance cannot guess: (our field, help).
fn other_tools_spelling(key: &str) -> Option<(&'static str, &'static str)> {
    Some(match key {
        "needs" | "depends_on" | "depends-on" | "depends" | "dependencies" | "after" | "requires" | "upstream" => (
            "parents",
            "taskweave calls the tasks that must succeed first `parents`: `parents: [a, b]` (GitHub Actions' `needs`, Argo's `dependencies`, Dagu's `depends`)",
        ),
        "command" | "cmd" => ("run", "a program and its arguments is `run: [program, arg, ...]`; a script is `shell: \"...\"`"),
        "retries" | "max_retries" | "retry_count" => {
            ("retry", "retries are `retry: {attempts: 3, delay: 5s}` (`attempts` counts every try)")
        }
        "environment" | "env_vars" => ("env", "the environment of `run` and `shell` is `env: {NAME: value}`"),
        _ => return None,
    })
}

/// One schema error as diagnostics, placed on the node at fault.
fn report(file: &str, doc: &Document, err: &jsonschema::ValidationError<'_>, out: &mut Vec<Diagnostic>) {
    let pointer = err.instance_path().as_str().to_string();
    let instance = doc.value.pointer(&pointer).unwrap_or(&Value::Null);
    let field = pointer.rsplit('/').next().unwrap_or("");
    match err.kind() {
        ValidationErrorKind::AdditionalProperties { unexpected } => {
            let allowed = allowed_fields(&pointer);
            // The mapping's key spans, found once: looking each key up by
            // pointer would scan the mapping per key, quadratic in a
            // mapping of thousands of unknown keys.
            let keys: std::collections::HashMap<&str, crate::diag::Span> = doc
                .node(&pointer)
                .and_then(Node::as_map)
                .map(|entries| entries.iter().rev().map(|(k, _)| (k.name.as_str(), k.span)).collect())
                .unwrap_or_default();
            for key in unexpected {
                let span = keys.get(key.as_str()).copied().unwrap_or_else(|| doc.key_span(&format!("{pointer}/{}", pointer_seg(key))));
                let mut d = Diagnostic::new(Code::Schema, file, span, format!("unknown field `{key}`"));
                if let Some(help) = other_tools_spelling(key).filter(|(ours, _)| allowed.iter().any(|a| a == ours)).map(|(_, h)| h) {
                    d = d.with_help(help);
                } else if let Some(s) = did_you_mean(key, allowed.iter().map(String::as_str)) {
                    d = d.with_help(format!("did you mean `{s}`?"));
                } else if !allowed.is_empty() {
                    d = d.with_help(format!("expected one of: {}", allowed.join(", ")));
                }
                out.push(d);
            }
        }
        ValidationErrorKind::Required { property } => {
            let prop = property.as_str().unwrap_or_default();
            let what = if pointer.is_empty() {
                "the workflow".to_string()
            } else {
                format!("`{}`", pointer.trim_start_matches('/').replace('/', "."))
            };
            let span = doc.span(&pointer);
            let span = crate::diag::Span::new(span.start.line, span.start.column, span.start.line, span.start.column + 1);
            let mut d = Diagnostic::new(Code::Schema, file, span, format!("missing required field `{prop}` in {what}"));
            if prop == "version" {
                d = d.with_help("add `version: 1` at the top of the file");
            }
            out.push(d);
        }
        ValidationErrorKind::Type { kind } => {
            let names: Vec<String> = kind_names(kind).into_iter().filter(|k| k != "null").collect();
            out.push(type_error(file, doc, &pointer, field, &names.join(" or "), instance));
        }
        ValidationErrorKind::Pattern { .. } if field == "name" => {
            let name = instance.as_str().unwrap_or_default();
            let suggestion = name
                .to_lowercase()
                .chars()
                .map(|c| if c.is_ascii_alphanumeric() || "._-".contains(c) { c } else { '-' })
                .collect::<String>();
            let mut d = Diagnostic::new(
                Code::Schema,
                file,
                doc.span(&pointer),
                format!("invalid name `{name}`: names match {}", crate::spec::raw::NAME_PATTERN),
            );
            if !suggestion.is_empty() && suggestion != name {
                d = d.with_help(format!("try `{suggestion}`"));
            }
            out.push(d);
        }
        ValidationErrorKind::AnyOf { context } | ValidationErrorKind::OneOfNotValid { context } => {
            // An alternative that fails only because the value has another
            // type is not the one the author meant; report the errors of the
            // one that is left, or the types when none is.
            let mut expected: Vec<String> = Vec::new();
            let meant: Vec<&Vec<jsonschema::ValidationError<'static>>> = context
                .iter()
                .filter(|branch| {
                    let type_only = !branch.is_empty()
                        && branch
                            .iter()
                            .all(|e| matches!(e.kind(), ValidationErrorKind::Type { .. }) && e.instance_path().as_str() == pointer);
                    if type_only {
                        for e in branch.iter() {
                            if let ValidationErrorKind::Type { kind } = e.kind() {
                                expected.extend(kind_names(kind));
                            }
                        }
                    }
                    !type_only
                })
                .collect();
            match meant.as_slice() {
                [one] => {
                    for e in one.iter() {
                        report(file, doc, e, out);
                    }
                }
                [] => {
                    let mut names: Vec<String> = Vec::new();
                    for e in expected.into_iter().filter(|e| e != "null") {
                        if !names.contains(&e) {
                            names.push(e);
                        }
                    }
                    out.push(type_error(file, doc, &pointer, field, &names.join(" or "), instance));
                }
                _ if pointer == "/backend" => out.push(Diagnostic::new(
                    Code::Schema,
                    file,
                    doc.span(&pointer),
                    "`backend` must be a backend name or a rollout rule ({flag, variants | enabled/disabled, default})",
                )),
                _ => {
                    let at = if pointer.is_empty() {
                        String::new()
                    } else {
                        format!("`{}`: ", pointer.trim_start_matches('/').replace('/', "."))
                    };
                    out.push(Diagnostic::new(Code::Schema, file, doc.span(&pointer), format!("{at}{}", err.masked())));
                }
            }
        }
        ValidationErrorKind::Minimum { .. } | ValidationErrorKind::Maximum { .. } if pointer == "/version" => {
            out.push(
                Diagnostic::new(Code::Schema, file, doc.span(&pointer), format!("`version` must be 1, found {instance}"))
                    .with_help("this is version 1 of the spec language: write `version: 1`"),
            );
        }
        ValidationErrorKind::MinItems { .. } if pointer == "/tasks" => {
            out.push(Diagnostic::new(Code::Schema, file, doc.span(&pointer), "a workflow needs at least one task"));
        }
        ValidationErrorKind::Enum { options } => {
            let opts: Vec<String> = options
                .as_array()
                .map(|a| a.iter().map(|o| o.as_str().map_or(o.to_string(), str::to_string)).collect())
                .unwrap_or_default();
            let mut d = Diagnostic::new(
                Code::Schema,
                file,
                doc.span(&pointer),
                format!(
                    "`{}` must be one of {}, found {}",
                    label(&pointer),
                    opts.join(", "),
                    instance.as_str().map_or_else(|| instance.to_string(), |s| format!("`{s}`"))
                ),
            );
            if let Some(s) = instance.as_str().and_then(|v| did_you_mean(v, opts.iter().map(String::as_str))) {
                d = d.with_help(format!("did you mean `{s}`?"));
            }
            out.push(d);
        }
        _ => {
            let at = if pointer.is_empty() { String::new() } else { format!("`{}`: ", pointer.trim_start_matches('/').replace('/', ".")) };
            out.push(Diagnostic::new(Code::Schema, file, doc.span(&pointer), format!("{at}{}", err.masked())));
        }
    }
}

/// The `$defs` entry that describes the object at an instance pointer.
fn def_for(pointer: &str) -> Option<&'static str> {
    let segs: Vec<&str> = pointer.split('/').skip(1).collect();
    Some(match segs.as_slice() {
        [] => return None,
        ["defaults"] => "Defaults",
        ["defaults", "retry"] | ["tasks", _, "retry"] => "RetrySpec",
        ["backend"] => "Rollout",
        ["tasks", _] => "RawTask",
        ["tasks", _, "http"] => "HttpSpec",
        ["tasks", _, "celery"] => "CelerySpec",
        _ => return None,
    })
}

/// Field names allowed at an instance pointer.
fn allowed_fields(pointer: &str) -> Vec<String> {
    let schema = &compiled().schema;
    let props = match def_for(pointer) {
        None if pointer.is_empty() => schema.get("properties"),
        None => None,
        Some(def) => schema.pointer(&format!("/$defs/{def}/properties")),
    };
    props.and_then(Value::as_object).map(|m| m.keys().cloned().collect()).unwrap_or_default()
}

pub(super) fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "an integer",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "a mapping",
    }
}

pub(super) fn kind_names(k: &TypeKind) -> Vec<String> {
    let one = |t: &jsonschema::JsonType| match t.to_string().as_str() {
        "object" => "a mapping".to_string(),
        "array" => "a list".to_string(),
        "string" => "a string".to_string(),
        "integer" => "an integer".to_string(),
        "number" => "a number".to_string(),
        "boolean" => "a boolean".to_string(),
        other => other.to_string(),
    };
    match k {
        TypeKind::Single(t) => vec![one(t)],
        TypeKind::Multiple(ts) => ts.iter().map(|t| one(&t)).collect(),
    }
}

/// "`field` must be a string, found an integer", with help for the usual slips.
fn type_error(file: &str, doc: &Document, pointer: &str, field: &str, expected: &str, instance: &Value) -> Diagnostic {
    let mut d = Diagnostic::new(
        Code::Schema,
        file,
        doc.span(pointer),
        format!("`{}` must be {expected}, found {}", label(pointer), type_name(instance)),
    );
    if is_duration_field(pointer) && instance.is_number() {
        d = d.with_help(format!("durations are strings with a unit, e.g. `{instance}s`"));
    } else if field == "parents" && instance.is_string() {
        d = d.with_help(format!("write a list: `parents: [{}]`", instance.as_str().unwrap_or_default()));
    } else if field == "run" && instance.is_string() {
        d = d.with_help("`run` takes a list of arguments (`run: [echo, hi]`); use `shell` for a script");
    }
    d
}

/// How a message names the value at a pointer: its key, or `list[i]` for
/// list items.
fn label(pointer: &str) -> String {
    let mut segs = pointer.rsplit('/');
    let last = segs.next().unwrap_or("").replace("~1", "/").replace("~0", "~");
    match (last.parse::<usize>(), segs.next()) {
        (Ok(i), Some(list)) if !list.is_empty() => format!("{list}[{i}]"),
        _ => last,
    }
}

fn is_duration_field(pointer: &str) -> bool {
    pointer.ends_with("/timeout") || pointer == "/timeout" || pointer.ends_with("/delay") || pointer.ends_with("/max_delay")
}

pub fn check(file: &str, doc: &Document, out: &mut Vec<Diagnostic>) {
    let c = compiled();
    for err in c.validator.iter_errors(&doc.value) {
        report(file, doc, &err, out);
    }
    // The input schema must itself be a valid JSON Schema.
    if let Some(input) = doc.value.get("input").filter(|v| v.is_object()) {
        meta_check(file, &doc.root, input, out);
    }
}

/// The check of `input` that [`check`] makes, for a file whose typed
/// definition [`accepts`] took: `input` is the definition's (put back as it was).
pub fn check_input(file: &str, root: &Node, input: &mut Option<Map<String, Value>>, out: &mut Vec<Diagnostic>) {
    if let Some(map) = input.take() {
        let value = Value::Object(map);
        meta_check(file, root, &value, out);
        if let Value::Object(map) = value {
            *input = Some(map);
        }
    }
}

fn meta_check(file: &str, root: &Node, input: &Value, out: &mut Vec<Diagnostic>) {
    if let Err(e) = jsonschema::meta::validate(input) {
        let p = format!("/input{}", e.instance_path().as_str());
        out.push(Diagnostic::new(Code::Schema, file, root.span_at(&p), format!("`input` is not a valid JSON Schema: {}", e.masked())));
    }
}

/// Whether the workflow schema accepts a document, given its typed
/// definition (which deserialised from the tree): the definition has the
/// schema's shape (the deserialiser takes structs from mappings only, and
/// refuses unknown fields, missing required ones and values of another
/// type), so what is left are the schema's bounds, checked here. `true` means
/// the validator would find nothing; `false` only that it must run.
pub fn accepts(root: &Node, raw: &RawWorkflow) -> bool {
    fn name_ok(s: &str) -> bool {
        let b = s.as_bytes();
        !b.is_empty()
            && b.len() <= 128
            && (b[0].is_ascii_lowercase() || b[0].is_ascii_digit())
            && b[1..].iter().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || b"._-".contains(c))
    }
    fn retry_ok(r: Option<&RetrySpec>) -> bool {
        r.is_none_or(|r| (1..=1000).contains(&r.attempts) && r.backoff.is_none_or(|b| (1.0..=100.0).contains(&b)))
    }
    // A rollout rule is read as an untagged enum, which (unlike the
    // deserialiser of the tree) would also take a list of its fields.
    let backend_ok = root.get("backend").is_none_or(|b| matches!(b.kind, NodeKind::Str(_) | NodeKind::Map(_)) || b.is_null_like());
    // A JSON map is also read from null (as empty), which the schema refuses.
    let kwargs_ok = |i: usize| {
        root.get("tasks").and_then(Node::as_seq).and_then(|ts| ts.get(i)?.get("celery")?.get("kwargs")).is_none_or(|k| k.is_map())
    };
    raw.version == 1
        && name_ok(&raw.name)
        && raw.concurrency.is_none_or(|c| c >= 1)
        && backend_ok
        && retry_ok(raw.defaults.as_ref().and_then(|d| d.retry.as_ref()))
        && !raw.tasks.is_empty()
        && raw.tasks.iter().enumerate().all(|(i, t)| {
            name_ok(&t.name)
                && retry_ok(t.retry.as_ref())
                && t.run.as_ref().is_none_or(|r| !r.is_empty())
                && t.celery.as_ref().is_none_or(|c| c.priority.is_none_or(|p| p <= 9) && kwargs_ok(i))
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::{Format, Key, parse_tree};

    const BASE: &str = "version: 1\nname: wf\ndescription: d\ntimeout: 1h\n\
        backend: {flag: f, entity: '{{input.id}}', variants: {a: local}, enabled: local, disabled: local, default: local}\n\
        queue: q\nconcurrency: 4\ninput: {type: object, properties: {id: {type: string}}}\n\
        defaults: {timeout: 5m, retry: {attempts: 3, delay: 1s, backoff: 2.5, max_delay: 1m, jitter: true}}\nenv: {A: b}\n\
        tasks:\n\
        \x20 - {name: a, description: x, timeout: 1m, run: [echo, '{{input.id}}'], env: {B: c}, cwd: /tmp, output: json, \
               retry: {attempts: 2, backoff: 1}}\n\
        \x20 - {name: b, parents: [a], http: {method: POST, url: u, headers: {h: v}, query: {q: v}, json: {k: [1]}, body: t}}\n\
        \x20 - {name: c, celery: {task: t.add, args: [1], kwargs: {x: 1}, queue: q, priority: 9}}\n\
        \x20 - {name: d, uses: echo, with: {m: [1]}}\n\
        output: {s: '{{tasks.d.output}}', n: [1, {k: x}]}\n";

    fn validator_accepts(root: &Node) -> bool {
        compiled().validator.iter_errors(&root.to_json()).next().is_none()
    }

    fn fast_accepts(root: &Node) -> bool {
        <RawWorkflow as serde::Deserialize>::deserialize(root).is_ok_and(|raw| accepts(root, &raw))
    }

    /// Every node's pointer, depth first.
    fn pointers(n: &Node, at: String, out: &mut Vec<String>) {
        match &n.kind {
            NodeKind::Seq(items) => items.iter().enumerate().for_each(|(i, x)| pointers(x, format!("{at}/{i}"), out)),
            NodeKind::Map(es) => es.iter().for_each(|(k, x)| pointers(x, format!("{at}/{}", pointer_seg(&k.name)), out)),
            _ => {}
        }
        out.push(at);
    }

    fn at_mut<'a>(n: &'a mut Node, pointer: &str) -> &'a mut Node {
        let mut n = n;
        for seg in pointer.split('/').skip(1) {
            n = match &mut n.kind {
                NodeKind::Seq(items) => &mut items[seg.parse::<usize>().expect("index")],
                NodeKind::Map(es) => &mut es.iter_mut().find(|(k, _)| pointer_seg(&k.name) == seg).expect("key").1,
                _ => unreachable!("pointers lead to collections"),
            };
        }
        n
    }

    /// The shortcut that skips the validator is sound: whenever it accepts a
    /// document, the validator finds nothing. Checked on the base document
    /// with every node replaced by values of every type and bound, and with
    /// an unknown field added to every mapping.
    #[test]
    fn the_shortcut_accepts_only_what_the_schema_accepts() {
        let base = parse_tree("t", BASE, Format::Yaml).expect("parses");
        assert!(fast_accepts(&base) && validator_accepts(&base));
        let replacements: Vec<NodeKind> = "~|.nan|true|0|-1|1|2|9|10|1000|1001|0.5|1.0|2.5|100.0|100.5|x|Bad Name|-x|GET|FETCH|text|\
                                              []|[1]|[x]|{}|{flag: f}|{a: 1}|{attempts: 2}"
            .split('|')
            .map(|s| parse_tree("t", &format!("v: {s}\n"), Format::Yaml).expect("parses").get("v").expect("v").kind.clone())
            .collect();
        let mut all = Vec::new();
        pointers(&base, String::new(), &mut all);
        let mut accepted = 0;
        for p in &all {
            for r in &replacements {
                let mut doc = base.clone();
                at_mut(&mut doc, p).kind = r.clone();
                if fast_accepts(&doc) {
                    accepted += 1;
                    assert!(validator_accepts(&doc), "the shortcut accepts {p} = {r:?}, the schema does not");
                }
            }
            let mut doc = base.clone();
            if let NodeKind::Map(es) = &mut at_mut(&mut doc, p).kind {
                es.push((Key { name: "unknown_field".into(), span: base.span }, base.clone()));
                if fast_accepts(&doc) {
                    assert!(validator_accepts(&doc), "the shortcut accepts an unknown field at {p}, the schema does not");
                }
            }
        }
        // The test sees both verdicts.
        assert!(accepted > 0 && accepted < all.len() * replacements.len());
    }
}
