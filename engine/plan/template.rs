//! Compiled templates and their rendering.
//!
//! Strings in a workflow are Handlebars templates, in strict mode (a missing
//! value is an error, never an empty string) and without HTML escaping. A
//! string that is exactly one `{{path}}` is replaced by the JSON value itself,
//! so numbers stay numbers and objects stay objects. `shell` scripts render
//! through a second registry whose escape function shell-quotes every value.

use handlebars::template::{Parameter, TemplateElement};
use handlebars::{Handlebars, Path, PathSeg, Template};
use serde_json::{Map, Value};

/// A value whose strings may be templates, compiled once.
#[derive(Debug, Clone)]
pub enum TValue {
    /// No template anywhere inside: used as is.
    Lit(Value),
    /// Exactly one `{{a.b.c}}`: the value at that path, with its JSON type.
    Expr(Vec<String>),
    /// Any other template: rendered as text (a registered template name).
    Text(String),
    Arr(Vec<TValue>),
    Obj(Vec<(String, TValue)>),
}

impl TValue {
    pub fn is_static(&self) -> bool {
        matches!(self, TValue::Lit(_))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    #[error("template reads `{0}`, which has no value")]
    Missing(String),
    #[error("template error: {0}")]
    Handlebars(String),
}

/// The template registries of one workflow.
pub struct Templates {
    text: Handlebars<'static>,
    shell: Handlebars<'static>,
}

impl std::fmt::Debug for Templates {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Templates").finish_non_exhaustive()
    }
}

impl Default for Templates {
    fn default() -> Self {
        Self::new()
    }
}

/// Quote a value for `sh`, so that input can never become shell syntax.
pub fn shell_quote(s: &str) -> String {
    if !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_./=:,+@%".contains(&b)) {
        return s.to_string();
    }
    format!("'{}'", s.replace('\'', r"'\''"))
}

impl Templates {
    pub fn new() -> Self {
        let mut text = Handlebars::new();
        text.set_strict_mode(true);
        text.register_escape_fn(handlebars::no_escape);
        let mut shell = Handlebars::new();
        shell.set_strict_mode(true);
        shell.register_escape_fn(shell_quote);
        Templates { text, shell }
    }

    /// Compile a JSON value whose strings are templates; `key` names the
    /// registered templates (a JSON pointer is unique per workflow).
    pub fn compile_value(&mut self, key: &str, v: &Value) -> Result<TValue, handlebars::TemplateError> {
        Ok(match v {
            Value::String(s) => self.compile_str(key, s)?,
            Value::Array(items) => {
                let mut out = Vec::with_capacity(items.len());
                for (i, x) in items.iter().enumerate() {
                    out.push(self.compile_value(&format!("{key}/{i}"), x)?);
                }
                if out.iter().all(TValue::is_static) { TValue::Lit(v.clone()) } else { TValue::Arr(out) }
            }
            Value::Object(m) => {
                let mut out = Vec::with_capacity(m.len());
                for (k, x) in m {
                    out.push((k.clone(), self.compile_value(&format!("{key}/{}", super::super::spec::node::pointer_seg(k)), x)?));
                }
                if out.iter().all(|(_, t)| t.is_static()) { TValue::Lit(v.clone()) } else { TValue::Obj(out) }
            }
            other => TValue::Lit(other.clone()),
        })
    }

    pub fn compile_str(&mut self, key: &str, s: &str) -> Result<TValue, handlebars::TemplateError> {
        if !s.contains("{{") {
            return Ok(TValue::Lit(Value::String(s.to_string())));
        }
        let t = Template::compile(s)?;
        if let Some(path) = whole_path(&t) {
            return Ok(TValue::Expr(path));
        }
        self.text.register_template(key, t);
        Ok(TValue::Text(key.to_string()))
    }

    /// Compile a shell script; returns the registered name.
    pub fn compile_shell(&mut self, key: &str, s: &str) -> Result<String, handlebars::TemplateError> {
        let t = Template::compile(s)?;
        self.shell.register_template(key, t);
        Ok(key.to_string())
    }

    pub fn render(&self, t: &TValue, ctx: &Value) -> Result<Value, RenderError> {
        Ok(match t {
            TValue::Lit(v) => v.clone(),
            TValue::Expr(path) => lookup(ctx, path).cloned().ok_or_else(|| RenderError::Missing(path.join(".")))?,
            TValue::Text(name) => Value::String(self.render_text(&self.text, name, ctx)?),
            TValue::Arr(items) => Value::Array(items.iter().map(|x| self.render(x, ctx)).collect::<Result<_, _>>()?),
            TValue::Obj(entries) => {
                let mut m = Map::with_capacity(entries.len());
                for (k, x) in entries {
                    m.insert(k.clone(), self.render(x, ctx)?);
                }
                Value::Object(m)
            }
        })
    }

    /// Render to text: a JSON value that is not a string becomes its JSON text.
    pub fn render_string(&self, t: &TValue, ctx: &Value) -> Result<String, RenderError> {
        Ok(match self.render(t, ctx)? {
            Value::String(s) => s,
            other => other.to_string(),
        })
    }

    pub fn render_shell(&self, name: &str, ctx: &Value) -> Result<String, RenderError> {
        self.render_text(&self.shell, name, ctx)
    }

    fn render_text(&self, reg: &Handlebars<'static>, name: &str, ctx: &Value) -> Result<String, RenderError> {
        reg.render(name, ctx).map_err(|e| {
            let reason = e.reason().to_string();
            match reason.find("strict mode") {
                Some(_) => RenderError::Missing(reason.split('"').nth(1).unwrap_or(reason.as_str()).to_string()),
                None => RenderError::Handlebars(reason),
            }
        })
    }
}

/// The path of a template that is exactly one plain `{{path}}` expression.
fn whole_path(t: &Template) -> Option<Vec<String>> {
    let [TemplateElement::Expression(h)] = t.elements.as_slice() else {
        return None;
    };
    if !h.params.is_empty() || !h.hash.is_empty() || h.block {
        return None;
    }
    match &h.name {
        Parameter::Path(Path::Relative((segs, _))) => segs
            .iter()
            .map(|s| match s {
                PathSeg::Named(n) => Some(n.clone()),
                _ => None,
            })
            .collect(),
        Parameter::Name(n) => Some(n.split('.').map(str::to_string).collect()),
        _ => None,
    }
}

fn lookup<'a>(mut v: &'a Value, path: &[String]) -> Option<&'a Value> {
    for seg in path {
        v = match v {
            Value::Object(m) => m.get(seg)?,
            Value::Array(a) => a.get(seg.trim_start_matches('[').trim_end_matches(']').parse::<usize>().ok()?)?,
            _ => return None,
        };
    }
    Some(v)
}

/// Every path a template reads, as written, with the paths of block helpers
/// that change the context (`each`, `with`) left out of their bodies.
pub fn referenced_paths(t: &Template) -> Vec<String> {
    let mut out = Vec::new();
    collect(t, &mut out);
    out
}

fn collect(t: &Template, out: &mut Vec<String>) {
    for el in &t.elements {
        match el {
            TemplateElement::Expression(h) | TemplateElement::HtmlExpression(h) | TemplateElement::HelperBlock(h) => {
                let is_helper_call = !h.params.is_empty() || !h.hash.is_empty() || h.block;
                if !is_helper_call {
                    param(&h.name, out);
                }
                for p in &h.params {
                    param(p, out);
                }
                for p in h.hash.values() {
                    param(p, out);
                }
                let name = match &h.name {
                    Parameter::Name(n) => n.as_str(),
                    Parameter::Path(p) => path_raw(p),
                    _ => "",
                };
                let changes_context = matches!(name, "each" | "with") || h.block_param.is_some();
                if !changes_context && let Some(inner) = &h.template {
                    collect(inner, out);
                }
                if let Some(inv) = &h.inverse {
                    collect(inv, out);
                }
            }
            _ => {}
        }
    }
}

fn path_raw(p: &Path) -> &str {
    match p {
        Path::Relative((_, raw)) => raw,
        Path::Local((_, _, raw)) => raw,
    }
}

fn param(p: &Parameter, out: &mut Vec<String>) {
    match p {
        Parameter::Path(Path::Relative((_, raw))) => out.push(raw.clone()),
        Parameter::Name(n) => out.push(n.clone()),
        Parameter::Subexpression(s) => {
            for p in s.params().into_iter().flatten() {
                param(p, out);
            }
        }
        _ => {}
    }
}

/// Whether a template uses raw `{{{ }}}` / `{{& }}` output (forbidden in shell scripts).
pub fn has_raw_output(t: &Template) -> bool {
    t.elements.iter().any(|el| match el {
        TemplateElement::HtmlExpression(_) => true,
        TemplateElement::HelperBlock(h) => {
            h.template.as_ref().is_some_and(has_raw_output) || h.inverse.as_ref().is_some_and(has_raw_output)
        }
        _ => false,
    })
}
