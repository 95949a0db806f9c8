//! JSON Schema validation of a document against `workflow.schema.json`,
//! with every error placed on the node at fault.

use crate::diag::{Code, Diagnostic, did_you_mean};
use crate::spec::Document;
use crate::spec::node::pointer_seg;
use jsonschema::error::{TypeKind, ValidationErrorKind};
use serde_json::Value;
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

/// One schema error as diagnostics, placed on the node at fault.
fn report(file: &str, doc: &Document, err: &jsonschema::ValidationError<'_>, out: &mut Vec<Diagnostic>) {
    let pointer = err.instance_path().as_str().to_string();
    let instance = doc.value.pointer(&pointer).unwrap_or(&Value::Null);
    let field = pointer.rsplit('/').next().unwrap_or("");
    match err.kind() {
        ValidationErrorKind::AdditionalProperties { unexpected } => {
            let allowed = allowed_fields(&pointer);
            for key in unexpected {
                let kp = format!("{pointer}/{}", pointer_seg(key));
                let mut d = Diagnostic::new(Code::Schema, file, doc.key_span(&kp), format!("unknown field `{key}`"));
                if let Some(s) = did_you_mean(key, allowed.iter().map(String::as_str)) {
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

fn type_name(v: &Value) -> &'static str {
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

fn kind_names(k: &TypeKind) -> Vec<String> {
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
    if let Some(input) = doc.value.get("input").filter(|v| v.is_object())
        && let Err(e) = jsonschema::meta::validate(input)
    {
        let p = format!("/input{}", e.instance_path().as_str());
        out.push(Diagnostic::new(Code::Schema, file, doc.span(&p), format!("`input` is not a valid JSON Schema: {}", e.masked())));
    }
}
