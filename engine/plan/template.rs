//! Compiled templates and their rendering.
//!
//! Strings in a workflow are Handlebars templates, in strict mode (a missing
//! value is an error, never an empty string) and without HTML escaping. A
//! string that is exactly one `{{path}}` is replaced by the JSON value itself,
//! so numbers stay numbers and objects stay objects; inside text, an object
//! or an array is its compact JSON (see [`super::helpers`], which also holds
//! the helpers a template may call). `shell` scripts render through a second
//! registry whose escape function passes every value as one variable.
//!
//! Most templates are text with plain `{{root.a.b}}` reads. [`plain`]
//! recognises those with a linear scan and gives what Handlebars' parser would
//! (the paths read, and whether the string is one lone read), so validation and
//! [`Templates`] compile them without running the parser; such a template is
//! parsed by Handlebars only when it is first rendered as text. Everything
//! else (blocks, helpers, escapes, raw output, whitespace control...) is
//! parsed by Handlebars at once, behind the [`MAX_TEMPLATE_NESTING`] guard.

use super::helpers;
use handlebars::template::{Parameter, TemplateElement};
use handlebars::{Handlebars, Path, PathSeg, RenderContext, Renderable, Template};
use serde_json::{Map, Value};
use std::collections::HashMap;
use std::sync::OnceLock;

/// The variables a template may read.
pub const ROOTS: [&str; 6] = ["input", "tasks", "run", "workflow", "context", "secrets"];

/// How deeply a template may nest blocks (`{{#if}}`) or subexpressions
/// (`(lookup (lookup ...))`): Handlebars builds them recursively, so deeper
/// templates could exhaust the stack.
pub const MAX_TEMPLATE_NESTING: usize = 64;

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
    /// The text one template renders is over the cap (`[actions] max_output_bytes`).
    #[error("template renders more than {} of text (the cap is `[actions] max_output_bytes`); pass a large value as a lone `{{{{...}}}}` read, which keeps it as it is", crate::diag::human_bytes(*.0))]
    TooLarge(usize),
    /// A helper such as `lookup` asked for a key that has no value.
    #[error("template looks up a value that does not exist (a helper such as `lookup` found nothing)")]
    MissingLookup,
    #[error("template error: {0}")]
    Handlebars(String),
    #[error("shell script: {0}")]
    Shell(#[from] super::shell::BindError),
}

impl From<&handlebars::RenderError> for RenderError {
    /// In words, never Handlebars' debug text (`Some("context.tenant")`).
    fn from(e: &handlebars::RenderError) -> Self {
        match e.reason() {
            handlebars::RenderErrorReason::MissingVariable(Some(path)) => RenderError::Missing(path.clone()),
            handlebars::RenderErrorReason::MissingVariable(None) => RenderError::MissingLookup,
            other => RenderError::Handlebars(other.to_string()),
        }
    }
}

/// Why a template does not compile.
#[derive(Debug, thiserror::Error)]
pub enum CompileError {
    #[error(transparent)]
    Parse(#[from] handlebars::TemplateError),
    #[error("blocks or subexpressions nested deeper than {MAX_TEMPLATE_NESTING} levels")]
    TooDeep,
    /// Raw output, a partial or an inline template in a `shell` script.
    #[error("{0}")]
    UnsafeShell(&'static str),
}

/// A template made only of text and plain reads, as [`plain`] finds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plain<'a> {
    /// The paths read, as written (`tasks.a.output`), in order.
    pub reads: Vec<&'a str>,
    /// Whether the string is exactly one read (`{{input.x}}`, no text around
    /// it), which renders as the JSON value itself.
    pub lone: bool,
}

/// Recognise a template made only of text and plain `{{root.a.b}}`
/// expressions: a root from [`ROOTS`], at least one `.segment`, segments of
/// ASCII letters, digits, `_` and `-`, optionally padded with spaces inside
/// the braces. `None` for anything else (blocks, helpers, raw `{{{ }}}`
/// output, whitespace control, comments, backslash escapes...), which
/// Handlebars parses. Every template accepted here parses in Handlebars to the
/// same paths and the same lone expression (the tests prove it on a table and
/// on generated templates).
///
/// Hand-written because Handlebars' own parser (pest) is most of the cost of
/// validating a workflow, and nearly every real template is this simple.
pub fn plain(s: &str) -> Option<Plain<'_>> {
    if s.contains('\\') {
        return None;
    }
    let mut reads = Vec::new();
    let mut text = false;
    let mut rest = s;
    while let Some(open) = find_pair(rest, '{') {
        text |= open > 0;
        let inner = &rest[open + 2..];
        let close = find_pair(inner, '}')?;
        let after = &inner[close + 2..];
        if after.starts_with('}') {
            return None;
        }
        let path = inner[..close].trim_matches(' ');
        let mut segs = path.split('.');
        if !segs.next().is_some_and(|root| ROOTS.contains(&root)) {
            return None;
        }
        let mut count = 0;
        for seg in segs {
            if seg.is_empty() || !seg.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-') {
                return None;
            }
            count += 1;
        }
        if count == 0 {
            return None;
        }
        reads.push(path);
        rest = after;
    }
    text |= !rest.is_empty();
    let lone = reads.len() == 1 && !text;
    Some(Plain { reads, lone })
}

/// The byte offset of the first `{{` (`c` = `{`) or `}}` (`c` = `}`).
///
/// Hand-written because `str::find` with a two-character pattern sets up a
/// general substring searcher on every call, which costs more than the
/// search itself on strings as short as most templates.
fn find_pair(s: &str, c: char) -> Option<usize> {
    let bytes = s.as_bytes();
    let mut from = 0;
    while let Some(i) = s[from..].find(c) {
        let at = from + i;
        if bytes.get(at + 1) == Some(&(c as u8)) {
            return Some(at);
        }
        from = at + 1;
    }
    None
}

/// Whether a string is a template at all: whether it contains `{{`.
pub fn is_template(s: &str) -> bool {
    find_pair(s, '{').is_some()
}

/// Whether any string inside a JSON value is a template.
fn has_template(v: &Value) -> bool {
    match v {
        Value::String(s) => is_template(s),
        Value::Array(items) => items.iter().any(has_template),
        Value::Object(m) => m.values().any(has_template),
        _ => false,
    }
}

/// The deepest nesting of blocks, and of parentheses or brackets inside one
/// expression, of a template, by a lexical scan (it only has to bound what
/// Handlebars would recurse on, not to parse).
pub fn nesting(s: &str) -> usize {
    let (mut blocks, mut deepest) = (0usize, 0usize);
    let mut rest = s;
    while let Some(open) = rest.find("{{") {
        let inner = rest[open + 2..].trim_start_matches(['{', '~']);
        match inner.as_bytes().first() {
            Some(b'#' | b'^') => blocks += 1,
            Some(b'/') => blocks = blocks.saturating_sub(1),
            _ => {}
        }
        let end = inner.find("}}").unwrap_or(inner.len());
        let mut parens = 0usize;
        for b in inner[..end].bytes() {
            match b {
                b'(' | b'[' => {
                    parens += 1;
                    deepest = deepest.max(parens);
                }
                b')' | b']' => parens = parens.saturating_sub(1),
                _ => {}
            }
        }
        deepest = deepest.max(blocks);
        rest = &inner[end..];
    }
    deepest
}

/// Parse a template with Handlebars, refusing first what is nested too
/// deeply for its recursive parser.
pub fn parse(s: &str) -> Result<Template, CompileError> {
    if nesting(s) > MAX_TEMPLATE_NESTING {
        return Err(CompileError::TooDeep);
    }
    Ok(Template::compile(s)?)
}

/// The paths a group of template strings read, gathered as they compile.
#[derive(Debug, Default)]
pub struct Reads {
    /// Whether any of the strings is a template at all (contains `{{`).
    pub templated: bool,
    /// Every path read, as written (`tasks.a.output`), in order.
    pub paths: Vec<String>,
}

impl Reads {
    /// Gather what a string reads without compiling it; a template that does
    /// not parse reads nothing.
    pub fn scan(&mut self, s: &str) {
        if !is_template(s) {
            return;
        }
        self.templated = true;
        match plain(s) {
            Some(p) => self.paths.extend(p.reads.iter().map(|r| r.to_string())),
            None => {
                if let Ok(t) = parse(s) {
                    self.paths.extend(referenced_paths(&t));
                }
            }
        }
    }
}

/// A text template: its source and, unless it is [`plain`] (or no template
/// at all), what Handlebars parsed. Plain templates render without
/// Handlebars ([`render_plain`]): no parse, and no copy of the context.
struct Lazy {
    source: String,
    parsed: OnceLock<Result<Template, String>>,
    plain: bool,
}

impl Lazy {
    fn unparsed(source: &str) -> Lazy {
        Lazy { source: source.to_string(), parsed: OnceLock::new(), plain: true }
    }

    fn parsed(source: &str, mut t: Template) -> Lazy {
        helpers::textify(&mut t);
        Lazy { source: source.to_string(), parsed: OnceLock::from(Ok(t)), plain: false }
    }

    fn template(&self) -> Result<&Template, RenderError> {
        self.parsed
            .get_or_init(|| {
                let mut t = Template::compile(&self.source).map_err(|e| e.to_string())?;
                helpers::textify(&mut t);
                Ok(t)
            })
            .as_ref()
            .map_err(|e| RenderError::Handlebars(e.clone()))
    }
}

/// The text templates of one workflow, by name (a JSON pointer, unique per
/// workflow); shell scripts apart, as they render with shell quoting.
pub struct Templates {
    text: HashMap<String, Lazy>,
    shell: HashMap<String, Lazy>,
}

impl std::fmt::Debug for Templates {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Templates").field("text", &self.text.len()).field("shell", &self.shell.len()).finish()
    }
}

impl Default for Templates {
    fn default() -> Self {
        Self::new()
    }
}

/// The two Handlebars registries: strict, no HTML escaping, and for shell
/// scripts each value as a hole that [`super::shell::bind`] turns into an
/// environment variable. Both hold the helpers of [`helpers::HELPERS`] and no
/// templates, so one pair serves every workflow.
fn registry(shell: bool) -> &'static Handlebars<'static> {
    static TEXT: OnceLock<Handlebars<'static>> = OnceLock::new();
    static SHELL: OnceLock<Handlebars<'static>> = OnceLock::new();
    let (cell, escape): (_, fn(&str) -> String) = if shell { (&SHELL, super::shell::hole) } else { (&TEXT, handlebars::no_escape) };
    cell.get_or_init(|| {
        let mut h = Handlebars::new();
        h.set_strict_mode(true);
        h.register_escape_fn(escape);
        helpers::register(&mut h);
        h
    })
}

impl Templates {
    pub fn new() -> Self {
        Templates { text: HashMap::new(), shell: HashMap::new() }
    }

    /// Compile a JSON value whose strings are templates, gathering what they
    /// read; `key` names the text templates (a JSON pointer is unique per
    /// workflow).
    pub fn compile_value_reading(&mut self, key: &str, v: &Value, reads: &mut Reads) -> Result<TValue, CompileError> {
        // Most values hold no template at all: one copy, no names to build.
        if !has_template(v) {
            return Ok(TValue::Lit(v.clone()));
        }
        Ok(match v {
            Value::String(s) => self.compile_str_reading(key, s, reads)?,
            Value::Array(items) => {
                let mut out = Vec::with_capacity(items.len());
                for (i, x) in items.iter().enumerate() {
                    out.push(self.compile_value_reading(&format!("{key}/{i}"), x, reads)?);
                }
                if out.iter().all(TValue::is_static) { TValue::Lit(v.clone()) } else { TValue::Arr(out) }
            }
            Value::Object(m) => {
                let mut out = Vec::with_capacity(m.len());
                for (k, x) in m {
                    out.push((
                        k.clone(),
                        self.compile_value_reading(&format!("{key}/{}", super::super::spec::node::pointer_seg(k)), x, reads)?,
                    ));
                }
                if out.iter().all(|(_, t)| t.is_static()) { TValue::Lit(v.clone()) } else { TValue::Obj(out) }
            }
            other => TValue::Lit(other.clone()),
        })
    }

    /// Compile one string: a literal, a lone read, or a text template.
    pub fn compile_str(&mut self, key: &str, s: &str) -> Result<TValue, CompileError> {
        self.compile_str_reading(key, s, &mut Reads::default())
    }

    /// [`Templates::compile_str`], gathering what the template reads into `reads`.
    pub fn compile_str_reading(&mut self, key: &str, s: &str, reads: &mut Reads) -> Result<TValue, CompileError> {
        if !is_template(s) {
            return Ok(TValue::Lit(Value::String(s.to_string())));
        }
        reads.templated = true;
        if let Some(p) = plain(s) {
            reads.paths.extend(p.reads.iter().map(|r| r.to_string()));
            if p.lone {
                return Ok(TValue::Expr(p.reads[0].split('.').map(str::to_string).collect()));
            }
            self.text.insert(key.to_string(), Lazy::unparsed(s));
            return Ok(TValue::Text(key.to_string()));
        }
        let t = parse(s)?;
        reads.paths.extend(referenced_paths(&t));
        if let Some(path) = whole_path(&t) {
            return Ok(TValue::Expr(path));
        }
        self.text.insert(key.to_string(), Lazy::parsed(s, t));
        Ok(TValue::Text(key.to_string()))
    }

    /// Compile a shell script, gathering what it reads; returns its name.
    pub fn compile_shell_reading(&mut self, key: &str, s: &str, reads: &mut Reads) -> Result<String, CompileError> {
        let lazy = if !is_template(s) {
            Lazy::unparsed(s)
        } else {
            reads.templated = true;
            match plain(s) {
                Some(p) => {
                    reads.paths.extend(p.reads.iter().map(|r| r.to_string()));
                    Lazy::unparsed(s)
                }
                None => {
                    let t = parse(s)?;
                    if let Some(why) = shell_unsafe(&t) {
                        return Err(CompileError::UnsafeShell(why));
                    }
                    reads.paths.extend(referenced_paths(&t));
                    Lazy::parsed(s, t)
                }
            }
        };
        self.shell.insert(key.to_string(), lazy);
        Ok(key.to_string())
    }

    /// Render with no cap on the text a template produces; see [`Templates::capped`].
    pub fn render(&self, t: &TValue, ctx: &Value) -> Result<Value, RenderError> {
        self.capped(usize::MAX).render(t, ctx)
    }

    /// [`Templates::render`] to text; see [`Capped::render_string`].
    pub fn render_string(&self, t: &TValue, ctx: &Value) -> Result<String, RenderError> {
        self.capped(usize::MAX).render_string(t, ctx)
    }

    /// [`Capped::render_shell`] with no cap.
    pub fn render_shell(&self, name: &str, ctx: &Value) -> Result<super::shell::Bound, RenderError> {
        self.capped(usize::MAX).render_shell(name, ctx)
    }

    /// These templates rendering at most `max` bytes of text per template
    /// (a lone read keeps its value and is not counted: it copies nothing
    /// into text). A template that repeats a large value is stopped as it
    /// crosses the cap instead of growing the process by multiples of it.
    pub fn capped(&self, max: usize) -> Capped<'_> {
        Capped { templates: self, max }
    }
}

/// Render one template as text, once (a rule's `entity`): with the helpers,
/// and objects and arrays as JSON, like every other text template.
pub fn render_text_once(source: &str, ctx: &Value) -> Result<String, RenderError> {
    let mut t = Templates::new();
    let lazy = Lazy::parsed(source, parse(source).map_err(|e| RenderError::Handlebars(e.to_string()))?);
    t.text.insert(String::new(), lazy);
    t.capped(usize::MAX).render_text(false, "", ctx)
}

/// [`Templates`] rendering under a cap on the text of one template.
pub struct Capped<'a> {
    templates: &'a Templates,
    max: usize,
}

impl Capped<'_> {
    pub fn render(&self, t: &TValue, ctx: &Value) -> Result<Value, RenderError> {
        Ok(match t {
            TValue::Lit(v) => v.clone(),
            TValue::Expr(path) => lookup(ctx, path).cloned().ok_or_else(|| RenderError::Missing(path.join(".")))?,
            TValue::Text(name) => Value::String(self.render_text(false, name, ctx)?),
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

    /// Render a shell script: the script for `sh -c`, with every templated
    /// value moved into an environment variable it references.
    pub fn render_shell(&self, name: &str, ctx: &Value) -> Result<super::shell::Bound, RenderError> {
        Ok(super::shell::bind(&self.render_text(true, name, ctx)?)?)
    }

    fn render_text(&self, shell: bool, name: &str, ctx: &Value) -> Result<String, RenderError> {
        let (reg, templates) = if shell { (registry(true), &self.templates.shell) } else { (registry(false), &self.templates.text) };
        let Some(lazy) = templates.get(name) else {
            return Err(RenderError::Handlebars(handlebars::RenderErrorReason::TemplateNotFound(name.to_string()).to_string()));
        };
        // A shell script's values are hex in their holes: twice their size.
        let max = if shell { self.max.saturating_mul(2) } else { self.max };
        if lazy.plain {
            return render_plain(&lazy.source, ctx, shell, max);
        }
        let template = lazy.template()?;
        // What `Handlebars::render` does for a registered template.
        let ctx = handlebars::Context::from(ctx.clone());
        let mut out = CappedOutput { text: String::new(), max, over: false };
        let mut rc = RenderContext::new(None);
        match template.render(reg, &ctx, &mut rc, &mut out) {
            Ok(()) => Ok(out.text),
            Err(_) if out.over => Err(RenderError::TooLarge(self.max)),
            Err(e) => Err(RenderError::from(&e)),
        }
    }
}

/// Handlebars' output into a string that refuses to grow past `max`.
struct CappedOutput {
    text: String,
    max: usize,
    over: bool,
}

impl handlebars::Output for CappedOutput {
    fn write(&mut self, seg: &str) -> Result<(), std::io::Error> {
        if self.text.len().saturating_add(seg.len()) > self.max {
            self.over = true;
            return Err(std::io::Error::other("over the cap"));
        }
        self.text.push_str(seg);
        Ok(())
    }
}

/// Render a [`plain`] template (or a string with no template) as
/// Handlebars would, without it: the text, and each read's value as
/// [`helpers::text`] writes it (strings as they are, `null` as nothing,
/// objects and arrays as compact JSON), through the shell registry's escape
/// for a shell script. A missing value is an error, as in strict mode.
fn render_plain(source: &str, ctx: &Value, shell: bool, max: usize) -> Result<String, RenderError> {
    let mut out = String::with_capacity(source.len());
    let mut rest = source;
    let mut value = String::new();
    while let Some(open) = find_pair(rest, '{') {
        out.push_str(&rest[..open]);
        let inner = &rest[open + 2..];
        let Some(close) = find_pair(inner, '}') else { break };
        let path = inner[..close].trim_matches(' ');
        let segs: Vec<String> = path.split('.').map(str::to_string).collect();
        let v = lookup(ctx, &segs).ok_or_else(|| RenderError::Missing(path.to_string()))?;
        value.clear();
        helpers::text(v, &mut value);
        let grown = out.len() + if shell { value.len() * 2 + 6 } else { value.len() };
        if grown > max {
            return Err(RenderError::TooLarge(if shell { max / 2 } else { max }));
        }
        if shell {
            out.push_str(&super::shell::hole(&value));
        } else {
            out.push_str(&value);
        }
        rest = &inner[close + 2..];
    }
    out.push_str(rest);
    Ok(out)
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

/// Why a template cannot be a `shell` script, if it cannot: raw `{{{ }}}` /
/// `{{& }}` output anywhere (it would bypass the variables values travel
/// in), or a partial or inline template (`{{> p}}`, `{{#*inline}}`), whose
/// bodies are rendered from elsewhere.
pub fn shell_unsafe(t: &Template) -> Option<&'static str> {
    t.elements.iter().find_map(|el| match el {
        TemplateElement::HtmlExpression(_) => Some("raw `{{{ }}}` output is not allowed in a `shell` script"),
        TemplateElement::DecoratorExpression(_)
        | TemplateElement::DecoratorBlock(_)
        | TemplateElement::PartialExpression(_)
        | TemplateElement::PartialBlock(_) => Some("partials and inline templates are not allowed in a `shell` script"),
        TemplateElement::HelperBlock(h) => h.template.as_ref().and_then(shell_unsafe).or_else(|| h.inverse.as_ref().and_then(shell_unsafe)),
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    /// What Handlebars makes of a template: the paths read and the lone
    /// expression, or `None` when it does not parse.
    fn by_handlebars(s: &str) -> Option<(Vec<String>, Option<Vec<String>>)> {
        let t = Template::compile(s).ok()?;
        Some((referenced_paths(&t), whole_path(&t)))
    }

    /// What the fast path makes of it, in the same shape.
    fn by_plain(s: &str) -> Option<(Vec<String>, Option<Vec<String>>)> {
        let p = plain(s)?;
        let lone = p.lone.then(|| p.reads[0].split('.').map(str::to_string).collect());
        Some((p.reads.iter().map(|r| r.to_string()).collect(), lone))
    }

    fn compiled(s: &str) -> (Result<TValue, CompileError>, Reads, Templates) {
        let mut t = Templates::new();
        let mut reads = Reads::default();
        let v = t.compile_str_reading("/x", s, &mut reads);
        (v, reads, t)
    }

    /// The same template compiled the way it was before the fast path:
    /// Handlebars only.
    fn compiled_by_handlebars(s: &str) -> Result<(Option<Vec<String>>, Vec<String>), CompileError> {
        let t = parse(s)?;
        Ok((whole_path(&t), referenced_paths(&t)))
    }

    #[test]
    fn finds_braces_pairs() {
        for (s, open, close) in [
            ("", None, None),
            ("{x}", None, None),
            ("a{b{{c}}", Some(3), Some(6)),
            ("}{{", Some(1), None),
            ("{{{x}}}", Some(0), Some(4)),
            ("é{{", Some(2), None),
        ] {
            assert_eq!(find_pair(s, '{'), open, "{s}");
            assert_eq!(find_pair(s, '}'), close, "{s}");
            assert_eq!(is_template(s), s.contains("{{"), "{s}");
        }
    }

    #[test]
    fn plain_examples() {
        assert_eq!(
            plain("a {{input.x}} b {{ tasks.step-1.output }}"),
            Some(Plain { reads: vec!["input.x", "tasks.step-1.output"], lone: false })
        );
        assert_eq!(plain("no template"), Some(Plain { reads: vec![], lone: false }));
        assert_eq!(plain("{{tasks.a.output.b}}"), Some(Plain { reads: vec!["tasks.a.output.b"], lone: true }));
        assert_eq!(plain("{{ input.x }}"), Some(Plain { reads: vec!["input.x"], lone: true }));
        assert_eq!(plain(" {{input.x}}"), Some(Plain { reads: vec!["input.x"], lone: false }));
        assert_eq!(plain("{{input.x}}{{input.y}}"), Some(Plain { reads: vec!["input.x", "input.y"], lone: false }));
        for s in [
            "{{x}}",
            "{{x.y}}",
            "{{input}}",
            "{{{input.x}}}",
            "{{#if input.x}}{{/if}}",
            "\\{{input.x}}",
            "{{input.x",
            "{{input..x}}",
            "{{input.x }}}",
            "{{~input.x~}}",
            "{{lookup input 'x'}}",
            "{{input.x (lookup input 'y')}}",
            "{{! comment }}",
            "{{input.[x]}}",
            "{{&input.x}}",
            "{{input.x\n}}",
        ] {
            assert_eq!(plain(s), None, "{s}");
        }
    }

    /// The table of the brief: for every template, the fast path either
    /// declines or agrees with Handlebars, and `compile_str` gives what a
    /// Handlebars-only compile gives.
    #[test]
    fn fast_path_agrees_with_handlebars_on_a_table() {
        let deep = |n: usize| format!("{}x{}", "{{#if input.a}}".repeat(n), "{{/if}}".repeat(n));
        let deep_sub = |n: usize| format!("{{{{lookup input {}'a'{}}}}}", "(lookup input ".repeat(n), ")".repeat(n));
        let table: Vec<(String, bool)> = vec![
            // (template, taken by the fast path)
            ("plain text".into(), true),
            ("{{x}}".into(), false),
            ("{{input.x}}".into(), true),
            ("{{tasks.a.output.b}}".into(), true),
            ("{{ tasks.step-1.output }}".into(), true),
            ("Summarise: {{tasks.extract-text.output.text}}!".into(), true),
            ("{{run.id}}-{{run.attempt}}".into(), true),
            ("{{input.items.0}}".into(), true),
            ("{{lookup input 'x'}}".into(), false),
            ("{{#if input.x}}yes{{else}}no{{/if}}".into(), false),
            ("{{#each input.list}}{{this}}{{/each}}".into(), false),
            ("\\{{input.x}}".into(), false),
            ("a \\\\{{input.x}}".into(), false),
            ("{{{input.x}}}".into(), false),
            ("{{{tasks.a.output}}} and {{input.y}}".into(), false),
            ("{{~input.x~}}".into(), false),
            ("  {{~ input.x}}  ".into(), false),
            ("{{lookup (lookup input 'a') 'b'}}".into(), false),
            ("{{input.x".into(), false),
            ("{{#if input.x}}".into(), false),
            (deep(MAX_TEMPLATE_NESTING), false),
            (deep(MAX_TEMPLATE_NESTING + 1), false),
            (deep_sub(MAX_TEMPLATE_NESTING - 1), false),
            (deep_sub(MAX_TEMPLATE_NESTING), false),
        ];
        for (s, fast) in &table {
            assert_eq!(plain(s).is_some(), *fast, "fast path taken for {s:?}");
            if let Some(got) = by_plain(s) {
                assert_eq!(Some(got), by_handlebars(s), "{s}");
            }
            let (v, reads, _) = compiled(s);
            match (v, compiled_by_handlebars(s)) {
                (Ok(v), Ok((whole, paths))) => {
                    if s.contains("{{") {
                        assert_eq!(reads.paths, paths, "{s}");
                        match (&v, whole) {
                            (TValue::Expr(a), Some(b)) => assert_eq!(a, &b, "{s}"),
                            (TValue::Text(_), None) => {}
                            (v, w) => panic!("{s:?}: compiled to {v:?}, Handlebars' lone path is {w:?}"),
                        }
                    } else {
                        assert!(matches!(v, TValue::Lit(_)), "{s}");
                    }
                }
                (Err(CompileError::TooDeep), Err(CompileError::TooDeep)) => {}
                (Err(CompileError::Parse(_)), Err(CompileError::Parse(_))) => {}
                (a, b) => panic!("{s:?}: {a:?} vs {b:?}"),
            }
        }
    }

    #[test]
    fn nesting_guard_is_enforced_by_compile() {
        let at = |n: usize| format!("{}x{}", "{{#if input.a}}".repeat(n), "{{/if}}".repeat(n));
        assert!(compiled(&at(MAX_TEMPLATE_NESTING)).0.is_ok());
        assert!(matches!(compiled(&at(MAX_TEMPLATE_NESTING + 1)).0, Err(CompileError::TooDeep)));
        let mut t = Templates::new();
        assert!(matches!(t.compile_shell_reading("/s", &at(MAX_TEMPLATE_NESTING + 1), &mut Reads::default()), Err(CompileError::TooDeep)));
        // Far deeper than any stack would take: refused, not parsed.
        let huge = format!("{{{{x {}a{}}}}}", "(lookup ".repeat(100_000), ")".repeat(100_000));
        assert!(matches!(compiled(&huge).0, Err(CompileError::TooDeep)));
    }

    #[test]
    fn nesting_depth() {
        assert_eq!(nesting("plain"), 0);
        assert_eq!(nesting("{{#if a}}{{#each b}}{{(lookup (lookup x 'a') 'b')}}{{/each}}{{/if}}"), 2);
        assert_eq!(nesting(&format!("{{{{x {}a{}}}}}", "(lookup ".repeat(100), ")".repeat(100))), 100);
        assert_eq!(nesting(&"{{#if a}}".repeat(70)), 70);
    }

    /// What the Handlebars path renders for a template (parsed, rewritten
    /// by [`helpers::textify`], rendered by the registry), whether or not
    /// the fast path would take it.
    fn by_registry(s: &str, ctx: &Value, shell: bool) -> Result<String, RenderError> {
        if !shell {
            return render_text_once(s, ctx);
        }
        let mut t = Templates::new();
        let lazy = Lazy::parsed(s, parse(s).map_err(|e| RenderError::Handlebars(e.to_string()))?);
        if shell { &mut t.shell } else { &mut t.text }.insert("/t".into(), lazy);
        t.capped(usize::MAX).render_text(shell, "/t", ctx)
    }

    /// A bound shell script with each variable reference replaced by its
    /// value, as `sh` would see the words.
    fn unbound(b: &crate::plan::shell::Bound) -> String {
        let mut script = b.script.clone();
        for (name, value) in b.vars.iter().rev() {
            script = script.replace(&format!("\"${{{name}}}\""), value).replace(&format!("${{{name}}}"), value);
        }
        script
    }

    fn sample() -> Value {
        json!({
            "input": {"x": "it's", "n": 3, "list": [1, "a", null, {"k": "v"}], "obj": {"k": [1, 2], "s": "a b"}, "nul": null, "t": true},
            "tasks": {"a": {"output": {"b": "$(rm -rf /)"}}},
            "run": {"id": "r1", "attempt": 2},
        })
    }

    /// Rendering a fast-path template (parsed on first use) gives what the
    /// Handlebars path gives for the same template.
    #[test]
    fn renders_like_a_registered_template() {
        let ctx = sample();
        let cases = [
            "x={{input.x}} n={{input.n}}",
            "{{input.list}} {{input.obj}} [{{input.nul}}] {{input.t}}",
            "echo {{tasks.a.output.b}} {{input.x}}",
            "{{run.id}}/{{run.attempt}}",
            "{{#if input.t}}{{input.x}}{{/if}}",
            "missing: {{input.nope}}",
        ];
        for shell in [false, true] {
            for s in cases {
                let want = by_registry(s, &ctx, shell);
                let want = if shell { want.map(|w| format!("{:?}", crate::plan::shell::bind(&w).expect("binds"))) } else { want };
                let mut t = Templates::new();
                let got = if shell {
                    let name = t.compile_shell_reading("/s", s, &mut Reads::default()).expect("compiles");
                    t.render_shell(&name, &ctx).map(|b| format!("{b:?}"))
                } else {
                    let v = t.compile_str("/s", s).expect("compiles");
                    t.render_string(&v, &ctx)
                };
                match (&want, &got) {
                    (Ok(w), Ok(g)) => assert_eq!(w, g, "{s} (shell: {shell})"),
                    (Err(RenderError::Missing(w)), Err(RenderError::Missing(p))) => assert_eq!(w, p, "{s}"),
                    _ => panic!("{s} (shell: {shell}): {want:?} vs {got:?}"),
                }
            }
        }
    }

    /// Inside text, an object or an array is its compact JSON, never
    /// `[object]`: on the fast path, in blocks, from helpers and from `each`.
    /// Strings, numbers, booleans and null are as before.
    #[test]
    fn objects_and_arrays_render_as_json_in_text() {
        let ctx = sample();
        for (src, want) in [
            ("obj: {{input.obj}}", r#"obj: {"k":[1,2],"s":"a b"}"#),
            ("list: {{ input.list }}", r#"list: [1,"a",null,{"k":"v"}]"#),
            ("{{#if input.t}}{{input.obj}}{{/if}}", r#"{"k":[1,2],"s":"a b"}"#),
            ("{{#each input.list}}<{{this}}>{{/each}}", r#"<1><a><><{"k":"v"}>"#),
            ("{{#with input.obj}}{{k}}{{/with}}", "[1,2]"),
            ("{{lookup input.list 3}}", r#"{"k":"v"}"#),
            ("{{{input.obj}}}", r#"{"k":[1,2],"s":"a b"}"#),
            ("{{input.x}}|{{input.n}}|{{input.nul}}|{{input.t}}", "it's|3||true"),
            ("{{#each input.obj}}{{@key}}={{this}};{{/each}}", r#"k=[1,2];s=a b;"#),
            ("{{#each input.list as |item i|}}{{i}}:{{item}};{{/each}}", r#"0:1;1:a;2:;3:{"k":"v"};"#),
            ("{{#each input.obj.k}}{{@first}}{{../run.id}}{{@root.input.n}};{{/each}}", "truer13;falser13;"),
            ("{{#with input.obj as |o|}}{{o.k}}{{/with}}", "[1,2]"),
        ] {
            let mut t = Templates::new();
            let v = t.compile_str("/x", src).expect("compiles");
            assert_eq!(t.render_string(&v, &ctx).expect("renders"), want, "{src}");
            assert_eq!(by_registry(src, &ctx, false).expect("renders"), want, "{src} (Handlebars path)");
            assert!(!t.render_string(&v, &ctx).unwrap().contains("[object]"));
        }
    }

    /// In a `shell` script, an object or an array reaches the script as one
    /// variable holding its whole JSON text: one word, never split.
    #[test]
    fn shell_gets_json_as_one_variable() {
        let ctx = sample();
        for src in ["echo {{input.obj}} \"{{input.list}}\"", "{{#if input.t}}echo {{input.obj}} \"{{input.list}}\"{{/if}}"] {
            let mut t = Templates::new();
            let name = t.compile_shell_reading("/s", src, &mut Reads::default()).expect("compiles");
            let b = t.render_shell(&name, &ctx).expect("renders");
            assert_eq!(b.script, "echo \"${TW_1}\" \"${TW_2}\"", "{src}");
            assert_eq!(
                b.vars,
                [
                    ("TW_1".to_string(), r#"{"k":[1,2],"s":"a b"}"#.to_string()),
                    ("TW_2".to_string(), r#"[1,"a",null,{"k":"v"}]"#.to_string())
                ],
                "{src}"
            );
        }
        // The whole output of a helper is one value too.
        let mut t = Templates::new();
        let name = t
            .compile_shell_reading("/s", "printf '%s\\n' {{json input.x}} {{join input.obj.k \" \"}}", &mut Reads::default())
            .expect("compiles");
        let b = t.render_shell(&name, &ctx).expect("renders");
        assert_eq!(b.script, "printf '%s\\n' \"${TW_1}\" \"${TW_2}\"");
        assert_eq!(b.vars, [("TW_1".to_string(), "\"it's\"".to_string()), ("TW_2".to_string(), "1 2".to_string())]);
        let out = std::process::Command::new("sh").arg("-c").arg(&b.script).envs(b.vars.iter().cloned()).output().expect("sh runs");
        assert_eq!(String::from_utf8_lossy(&out.stdout), "\"it's\"\n1 2\n");
    }

    /// Every helper of the documented list renders its example as
    /// documented, in text and in `shell` scripts.
    #[test]
    fn every_helper_renders_its_example() {
        let input: Value = serde_json::from_str(helpers::EXAMPLE_INPUT).expect("example input is JSON");
        let ctx = json!({ "input": input });
        for h in helpers::HELPERS {
            assert!(h.example.contains(h.name), "{}: its example calls it", h.name);
            let mut t = Templates::new();
            let v = t.compile_str("/x", h.example).unwrap_or_else(|e| panic!("{}: {e}", h.name));
            assert_eq!(t.render_string(&v, &ctx).unwrap_or_else(|e| panic!("{}: {e}", h.name)), h.renders, "{}", h.name);
            let name = t.compile_shell_reading("/s", h.example, &mut Reads::default()).unwrap_or_else(|e| panic!("{}: {e}", h.name));
            let b = t.render_shell(&name, &ctx).unwrap_or_else(|e| panic!("{} (shell): {e}", h.name));
            assert_eq!(unbound(&b), h.renders, "{} (shell)", h.name);
        }
        assert!(helpers::is_helper("json") && !helpers::is_helper("log") && !helpers::is_helper("taskweave text"));
    }

    /// The helpers, case by case: values keep their JSON type through
    /// subexpressions, `default` takes a missing value in strict mode, and
    /// misuse is an error in words.
    #[test]
    fn helpers_case_by_case() {
        let ctx = sample();
        let ok = |src: &str| {
            let mut t = Templates::new();
            let v = t.compile_str("/x", src).expect("compiles");
            t.render_string(&v, &ctx).unwrap_or_else(|e| panic!("{src}: {e}"))
        };
        let err = |src: &str| {
            let mut t = Templates::new();
            let v = t.compile_str("/x", src).expect("compiles");
            t.render_string(&v, &ctx).expect_err(src)
        };
        for (src, want) in [
            ("{{json input.obj}}", r#"{"k":[1,2],"s":"a b"}"#),
            ("{{json input.x}}", r#""it's""#),
            ("{{json input.n}} {{json input.nul}} {{json input.t}}", "3 null true"),
            ("{{json tasks.a.output}}", r#"{"b":"$(rm -rf /)"}"#),
            ("{{len input.list}} {{len input.obj}} {{len input.x}}", "4 2 4"),
            ("{{default input.nope \"none\"}}", "none"),
            ("{{default input.nul \"none\"}}", "none"),
            ("{{default input.n \"none\"}}", "3"),
            ("{{default input.obj \"none\"}}", r#"{"k":[1,2],"s":"a b"}"#),
            ("{{default input.nope input.obj}}", r#"{"k":[1,2],"s":"a b"}"#),
            ("{{json (default input.nope input.list)}}", r#"[1,"a",null,{"k":"v"}]"#),
            ("{{default input.x \"\"}}", "it's"),
            ("{{join input.list \", \"}}", r#"1, a, , {"k":"v"}"#),
            ("{{join input.obj.k}}", "1, 2"),
            ("{{join input.obj.k \"\"}}", "12"),
            ("{{upper input.x}} {{lower \"ÀB\"}} [{{trim \" a b \"}}]", "IT'S àb [a b]"),
            ("{{upper (join input.obj.k \"-\")}}", "1-2"),
            ("{{#if (eq (len input.list) 4)}}four{{/if}}", "four"),
            ("{{#each (default input.nope input.obj.k)}}{{this}};{{/each}}", "1;2;"),
            ("{{#json input.obj}}{{/json}}", r#"{"k":[1,2],"s":"a b"}"#),
        ] {
            assert_eq!(ok(src), want, "{src}");
        }
        for (src, want) in [
            ("{{json input.nope}}", "template reads `input.nope`, which has no value"),
            ("{{upper input.nope}} x", "template reads `input.nope`, which has no value"),
            ("{{join input.nope \", \"}}", "template reads `input.nope`, which has no value"),
            ("{{default input.nope input.nada}}", "template reads `input.nada`, which has no value"),
            ("{{join input.obj \", \"}}", "`join` needs an array, and its value is an object"),
            ("x {{json}}", "`json` needs a value"),
            ("{{default input.x}}", "`default` needs a value and a fallback"),
        ] {
            let e = err(src).to_string();
            assert!(e.contains(want), "{src}: {e}");
        }
    }

    /// A template that would render more text than the cap stops there:
    /// plain or not, text or shell; a lone read is its value, not text, and
    /// is not counted.
    #[test]
    fn rendering_stops_at_the_cap() {
        let big = "x".repeat(600);
        let ctx = json!({"input": {"big": big}});
        for src in ["{{input.big}} {{input.big}}", "{{#if input.big}}{{input.big}}{{/if}} {{input.big}}"] {
            let mut t = Templates::new();
            let v = t.compile_str("/x", src).expect("compiles");
            let e = t.capped(1000).render(&v, &ctx).unwrap_err();
            assert!(matches!(e, RenderError::TooLarge(1000)), "{src}: {e:?}");
            assert!(e.to_string().contains("more than 1000 bytes"), "{e}");
            assert_eq!(t.capped(1300).render_string(&v, &ctx).expect("under the cap").len(), 1201, "{src}");
            let name = t.compile_shell_reading("/s", &format!("echo {src}"), &mut Reads::default()).expect("compiles");
            assert!(matches!(t.capped(1000).render_shell(&name, &ctx), Err(RenderError::TooLarge(_))), "{src}");
            assert_eq!(t.capped(1300).render_shell(&name, &ctx).expect("under the cap").vars.len(), 2, "{src}");
        }
        let mut t = Templates::new();
        let lone = t.compile_str("/l", "{{input.big}}").expect("compiles");
        assert_eq!(t.capped(10).render(&lone, &ctx).expect("a lone read is not text"), json!(big));
    }

    /// Missing values are named in words, never as Handlebars' debug text.
    #[test]
    fn missing_values_are_reported_in_words() {
        let ctx = json!({"context": {}});
        for (src, want) in [
            ("x {{context.tenant}}", "template reads `context.tenant`, which has no value"),
            ("{{lookup context 'tenant'}} y", "template looks up a value that does not exist (a helper such as `lookup` found nothing)"),
        ] {
            let mut t = Templates::new();
            let v = t.compile_str("/x", src).expect("compiles");
            let e = t.render(&v, &ctx).unwrap_err().to_string();
            assert_eq!(e, want, "{src}");
            assert!(!e.contains("Some(") && !e.contains("None"), "{e}");
        }
    }

    #[test]
    fn lone_reads_keep_their_json_type() {
        let ctx = json!({"input": {"n": 3, "obj": {"k": [1, 2]}}});
        for (s, want) in [("{{input.n}}", json!(3)), ("{{ input.obj }}", json!({"k": [1, 2]})), ("n={{input.n}}", json!("n=3"))] {
            let (v, _, t) = compiled(s);
            assert_eq!(t.render(&v.expect("compiles"), &ctx).expect("renders"), want, "{s}");
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 2_000, failure_persistence: None, ..ProptestConfig::default() })]

        /// Whenever the fast path answers, Handlebars parses the template and
        /// reads the same paths, with the same lone expression.
        #[test]
        fn plain_agrees_with_handlebars(parts in proptest::collection::vec(prop_oneof![
            "[a-z {}.\\-~#/!&]{0,6}",
            proptest::sample::select(&["{{", "}}", "{{{", "input", "tasks", "run", ".", "-", "a-b", "x_1", "0", " ", "\\", "else", "this"][..]).prop_map(str::to_string),
        ], 0..12)) {
            let s: String = parts.concat();
            if let Some(got) = by_plain(&s) {
                prop_assert_eq!(Some(got), by_handlebars(&s), "{}", s);
            }
        }

        /// A plain template renders, without Handlebars, to what the
        /// Handlebars path renders (text and shell scripts, objects and
        /// arrays as JSON; a missing value is an error in both).
        #[test]
        fn plain_renders_agree(pieces in proptest::collection::vec((
            "[a-z ,:']{0,5}",
            proptest::sample::select(&[
                "input.s", "input.n", "input.f", "input.t", "input.nul", "input.list", "input.obj", "input.a-b",
                "tasks.x_1.output", "tasks.x_1.output.deep", "input.list.0", "input.missing", "run.id",
            ][..]),
            proptest::bool::ANY,
        ), 1..5)) {
            let ctx = json!({
                "input": {"s": "it's $(x)", "n": 3, "f": 1.5, "t": true, "nul": null, "list": [1, "a", null, [2], {"k": 1}],
                          "obj": {"k": [1]}, "a-b": "dash"},
                "tasks": {"x_1": {"output": {"deep": "d"}}},
                "run": {"id": "r1"},
            });
            let mut s = String::new();
            for (text, path, pad) in &pieces {
                let pad = if *pad { " " } else { "" };
                s.push_str(text);
                s.push_str(&format!("{{{{{pad}{path}{pad}}}}}"));
            }
            prop_assume!(plain(&s).is_some());
            for shell in [false, true] {
                let want = by_registry(&s, &ctx, shell).ok();
                let got = render_plain(&s, &ctx, shell, usize::MAX).ok();
                prop_assert_eq!(got, want, "{} (shell: {})", s, shell);
            }
        }

        /// Well-formed reads are taken by the fast path, and agree.
        #[test]
        fn plain_reads_agree(pieces in proptest::collection::vec((
            "[a-z ,:}{]{0,5}",
            proptest::sample::select(&ROOTS[..]),
            proptest::collection::vec("[a-zA-Z0-9_-]{1,6}", 1..4),
            proptest::bool::ANY,
        ), 1..5)) {
            let mut s = String::new();
            for (text, root, segs, pad) in &pieces {
                let pad = if *pad { " " } else { "" };
                s.push_str(&text.replace("{{", "{").replace("}}", "}"));
                s.push_str(&format!("{{{{{pad}{root}.{}{pad}}}}}", segs.join(".")));
            }
            let got = by_plain(&s);
            if pieces.iter().all(|(text, ..)| !text.contains(['{', '}'])) {
                prop_assert!(got.is_some(), "{}", s);
            }
            if let Some(got) = got {
                prop_assert_eq!(Some(got), by_handlebars(&s), "{}", s);
            }
        }
    }
}
