//! The helpers a template may call, and how a value becomes text.
//!
//! [`HELPERS`] is the one list of them: Handlebars' built-ins that taskweave
//! keeps and its own. Both registries (text and `shell`) hold exactly these,
//! validation refuses a call to any other name (`unknown-helper`), and
//! `taskweave explain unknown-helper` prints the list.
//!
//! A value becomes text as JSON would say it, except that a string is its
//! own text and `null` is nothing: an object or an array inserted into text
//! is its compact JSON (`{"id":7}`, `["a","b"]`), never Handlebars' own
//! `[object]` or `[a, b]`. [`textify`] rewrites a parsed template so that
//! every value it inserts goes through [`write_text`]; the fast path of plain
//! templates calls [`text`] directly.

use handlebars::template::{Parameter, Subexpression, TemplateElement};
use handlebars::{Context, Handlebars, Helper, HelperDef, HelperResult, Output, RenderContext, RenderError, RenderErrorReason, ScopedJson};
use handlebars::{JsonRender, Template};
use serde_json::Value;

/// One helper a template may call.
#[derive(Debug, Clone, Copy)]
pub struct HelperDoc {
    pub name: &'static str,
    /// Handlebars' own, or taskweave's.
    pub builtin: bool,
    /// What it does, in one line.
    pub does: &'static str,
    /// A template that calls it, and what that renders with [`EXAMPLE_INPUT`] as `input`.
    pub example: &'static str,
    pub renders: &'static str,
}

/// The `input` the examples of [`HELPERS`] render with.
pub const EXAMPLE_INPUT: &str = r#"{"name": "Ada", "n": 3, "note": null, "tags": ["a", "b"], "user": {"id": 7}}"#;

const fn h(name: &'static str, builtin: bool, does: &'static str, example: &'static str, renders: &'static str) -> HelperDoc {
    HelperDoc { name, builtin, does, example, renders }
}

/// Every helper a template may call, in the order the documentation lists them.
pub const HELPERS: &[HelperDoc] = &[
    h(
        "if",
        true,
        "renders its block when the value is truthy (not false, null, 0, \"\", [] or {}), else its `{{else}}` part",
        "{{#if input.note}}{{input.note}}{{else}}no note{{/if}}",
        "no note",
    ),
    h("unless", true, "the opposite of `if`", "{{#unless input.note}}no note{{/unless}}", "no note"),
    h(
        "each",
        true,
        "renders its block once per item of an array (or entry of an object), as `this`, with `@index` (`@key`), `@first` and `@last`",
        "{{#each input.tags}}{{@index}}={{this}};{{/each}}",
        "0=a;1=b;",
    ),
    h("with", true, "renders its block with a value as `this`", "{{#with input.user}}id {{id}}{{/with}}", "id 7"),
    h("lookup", true, "the item of an array at an index, or the entry of an object at a key", "{{lookup input.tags 1}}", "b"),
    h("raw", true, "a block whose text is written as it is, braces included", "{{{{raw}}}}{{input.n}}{{{{/raw}}}}", "{{input.n}}"),
    h("eq", true, "whether two values are equal (as a block, like `if`)", "{{#eq input.n 3}}three{{else}}other{{/eq}}", "three"),
    h("ne", true, "whether two values differ", "{{ne input.name \"Bob\"}}", "true"),
    h("gt", true, "whether the first value is greater than the second (numbers, or strings)", "{{gt input.n 2}}", "true"),
    h("gte", true, "greater than or equal", "{{gte input.n 3}}", "true"),
    h("lt", true, "less than", "{{lt input.n 3}}", "false"),
    h("lte", true, "less than or equal", "{{lte input.n 3}}", "true"),
    h("and", true, "whether both values are truthy", "{{and input.n input.note}}", "false"),
    h("or", true, "whether either value is truthy", "{{or input.n input.note}}", "true"),
    h("not", true, "whether the value is falsy", "{{#if (not input.note)}}no note{{/if}}", "no note"),
    h("len", true, "the length of an array, the number of entries of an object, or the bytes of a string", "{{len input.tags}}", "2"),
    h("json", false, "the value as compact JSON, strings in quotes", "{{json input.name}} {{json input.tags}}", "\"Ada\" [\"a\",\"b\"]"),
    h(
        "default",
        false,
        "the value when it exists and is not null, else the fallback (no error for a missing value)",
        "{{default input.note \"none\"}} {{default input.nope 0}}",
        "none 0",
    ),
    h(
        "join",
        false,
        "the items of an array as text, between a separator (`, ` when none is given)",
        "{{join input.tags \" | \"}}",
        "a | b",
    ),
    h("upper", false, "the text in upper case", "{{upper input.name}}", "ADA"),
    h("lower", false, "the text in lower case", "{{lower input.name}}", "ada"),
    h("trim", false, "the text without leading and trailing whitespace", "[{{trim \"  x \"}}]", "[x]"),
];

/// Whether a template may call `name`.
pub fn is_helper(name: &str) -> bool {
    HELPERS.iter().any(|h| h.name == name)
}

/// The helper list as a table for `taskweave explain unknown-helper`.
pub fn helper_table() -> String {
    let width = HELPERS.iter().map(|h| h.name.len()).max().unwrap_or(0);
    let mut s = String::new();
    for h in HELPERS {
        s.push_str(&format!("    {:width$}  {}\n    {:width$}  e.g. {} -> {}\n", h.name, h.does, "", h.example, h.renders));
    }
    s
}

/// The name of the helper every inserted value goes through. A template
/// cannot call it: Handlebars' parser never makes a name with a space.
const TEXT: &str = "taskweave text";

/// A value as text: a string as it is, `null` as nothing, a number or a
/// boolean as JSON writes it, an object or an array as compact JSON.
pub fn text(v: &Value, out: &mut String) {
    match v {
        Value::String(s) => out.push_str(s),
        Value::Null => {}
        Value::Array(_) | Value::Object(_) => out.push_str(&v.to_string()),
        other => out.push_str(&other.render()),
    }
}

fn text_of(v: &Value) -> String {
    let mut s = String::new();
    text(v, &mut s);
    s
}

/// Write a value as text through the registry's escape function (the shell
/// registry's makes it a hole), unless escaping is off (`{{{raw output}}}`).
fn write_text(v: &Value, r: &Handlebars<'_>, rc: &RenderContext<'_, '_>, out: &mut dyn Output) -> HelperResult {
    let s = text_of(v);
    // An empty value is still written: the shell registry makes it a hole,
    // so `{{x}}` stays one (empty) word.
    let s = if rc.is_disable_escape() { s } else { r.get_escape_fn()(&s) };
    out.write(&s)?;
    Ok(())
}

/// Rewrite a parsed template so that every value it inserts goes through
/// the [`TEXT`] helper: `{{a.b}}` becomes `{{TEXT a.b}}` and `{{h x}}`
/// becomes `{{TEXT (h x)}}`. Blocks keep their helper; their bodies are
/// rewritten. Element positions (and so error positions) do not change.
pub fn textify(t: &mut Template) {
    for el in &mut t.elements {
        match el {
            TemplateElement::Expression(h) | TemplateElement::HtmlExpression(h) => {
                let name_only = h.params.is_empty() && h.hash.is_empty() && !h.block;
                if name_only {
                    if name_of(&h.name).is_some_and(is_helper) {
                        // `{{json}}` alone calls the helper, as Handlebars does.
                        continue;
                    }
                    let value = std::mem::replace(&mut h.name, Parameter::Name(TEXT.to_string()));
                    h.params = vec![value];
                } else {
                    let name = std::mem::replace(&mut h.name, Parameter::Name(TEXT.to_string()));
                    let params = std::mem::take(&mut h.params);
                    let hash = std::mem::take(&mut h.hash);
                    h.params = vec![Parameter::Subexpression(Subexpression::new(name, params, hash))];
                }
            }
            TemplateElement::HelperBlock(h) => {
                if let Some(inner) = &mut h.template {
                    textify(inner);
                }
                if let Some(inverse) = &mut h.inverse {
                    textify(inverse);
                }
            }
            TemplateElement::DecoratorBlock(d) | TemplateElement::PartialBlock(d) => {
                if let Some(inner) = &mut d.template {
                    textify(inner);
                }
            }
            _ => {}
        }
    }
}

/// The name a helper is called by, as written.
pub fn name_of(p: &Parameter) -> Option<&str> {
    match p {
        Parameter::Name(n) => Some(n),
        Parameter::Path(handlebars::Path::Relative((_, raw)) | handlebars::Path::Local((_, _, raw))) => Some(raw),
        _ => None,
    }
}

/// Register [`HELPERS`] (and the [`TEXT`] helper) on a registry: add
/// taskweave's, drop the built-ins that are not listed.
pub fn register(reg: &mut Handlebars<'static>) {
    reg.unregister_helper("log");
    reg.register_helper(TEXT, Box::new(Text));
    reg.register_helper("json", Box::new(Value1("json", |v| Ok(Value::String(v.to_string())))));
    reg.register_helper("upper", Box::new(Value1("upper", |v| Ok(Value::String(text_of(v).to_uppercase())))));
    reg.register_helper("lower", Box::new(Value1("lower", |v| Ok(Value::String(text_of(v).to_lowercase())))));
    reg.register_helper("trim", Box::new(Value1("trim", |v| Ok(Value::String(text_of(v).trim().to_string())))));
    reg.register_helper("join", Box::new(Join));
    reg.register_helper("default", Box::new(Default));
}

/// Why a helper call has no value for a parameter: the missing path, in
/// strict mode's own words (rendered as "template reads `x`, which has no value").
fn missing(h: &Helper<'_>, i: usize) -> RenderError {
    RenderErrorReason::MissingVariable(h.param(i).and_then(|p| p.relative_path().cloned())).into()
}

/// Parameter `i`, which must exist and have a value.
fn value<'a>(h: &'a Helper<'_>, name: &str, i: usize, usage: &str) -> Result<&'a Value, RenderError> {
    match h.param(i) {
        None => Err(RenderErrorReason::Other(format!("`{name}` needs {usage}")).into()),
        Some(p) if p.is_value_missing() => Err(missing(h, i)),
        Some(p) => Ok(p.value()),
    }
}

/// Write a helper's value as text when it is called on its own (as a block,
/// or by a bare name); in expressions, [`textify`] routes its value through [`Text`].
fn call_as_text<'reg: 'rc, 'rc, H: HelperDef + ?Sized>(
    helper: &H,
    h: &Helper<'rc>,
    r: &'reg Handlebars<'reg>,
    ctx: &'rc Context,
    rc: &mut RenderContext<'reg, 'rc>,
    out: &mut dyn Output,
) -> HelperResult {
    let v = helper.call_inner(h, r, ctx, rc)?;
    write_text(v.as_json(), r, rc, out)
}

/// Inserts a value as text (see [`textify`]); a missing value is strict mode's error.
struct Text;

impl HelperDef for Text {
    fn call<'reg: 'rc, 'rc>(
        &self,
        h: &Helper<'rc>,
        r: &'reg Handlebars<'reg>,
        _: &'rc Context,
        rc: &mut RenderContext<'reg, 'rc>,
        out: &mut dyn Output,
    ) -> HelperResult {
        let v = value(h, TEXT, 0, "a value")?;
        write_text(v, r, rc, out)
    }
}

/// A helper of one value.
struct Value1(&'static str, fn(&Value) -> Result<Value, RenderError>);

impl HelperDef for Value1 {
    fn call_inner<'reg: 'rc, 'rc>(
        &self,
        h: &Helper<'rc>,
        _: &'reg Handlebars<'reg>,
        _: &'rc Context,
        _: &mut RenderContext<'reg, 'rc>,
    ) -> Result<ScopedJson<'rc>, RenderError> {
        let v = value(h, self.0, 0, &format!("a value: `{{{{{} input.x}}}}`", self.0))?;
        Ok(ScopedJson::Derived((self.1)(v)?))
    }

    fn call<'reg: 'rc, 'rc>(
        &self,
        h: &Helper<'rc>,
        r: &'reg Handlebars<'reg>,
        ctx: &'rc Context,
        rc: &mut RenderContext<'reg, 'rc>,
        out: &mut dyn Output,
    ) -> HelperResult {
        call_as_text(self, h, r, ctx, rc, out)
    }
}

/// `{{join array ", "}}`: the items as text between a separator.
struct Join;

impl HelperDef for Join {
    fn call_inner<'reg: 'rc, 'rc>(
        &self,
        h: &Helper<'rc>,
        _: &'reg Handlebars<'reg>,
        _: &'rc Context,
        _: &mut RenderContext<'reg, 'rc>,
    ) -> Result<ScopedJson<'rc>, RenderError> {
        let usage = "an array and a separator: `{{join tasks.a.output \", \"}}`";
        let items = value(h, "join", 0, usage)?;
        let sep = match h.param(1) {
            None => ", ".to_string(),
            Some(_) => text_of(value(h, "join", 1, usage)?),
        };
        let Value::Array(items) = items else {
            let what = match items {
                Value::Object(_) => "an object",
                Value::String(_) => "a string",
                Value::Null => "null",
                Value::Bool(_) => "a boolean",
                _ => "a number",
            };
            return Err(RenderErrorReason::Other(format!("`join` needs an array, and its value is {what}")).into());
        };
        let joined = items.iter().map(text_of).collect::<Vec<_>>().join(&sep);
        Ok(ScopedJson::Derived(Value::String(joined)))
    }

    fn call<'reg: 'rc, 'rc>(
        &self,
        h: &Helper<'rc>,
        r: &'reg Handlebars<'reg>,
        ctx: &'rc Context,
        rc: &mut RenderContext<'reg, 'rc>,
        out: &mut dyn Output,
    ) -> HelperResult {
        call_as_text(self, h, r, ctx, rc, out)
    }
}

/// `{{default value fallback}}`: the value when it exists and is not null,
/// else the fallback. A missing value is not an error here: that is the point.
struct Default;

impl HelperDef for Default {
    fn call_inner<'reg: 'rc, 'rc>(
        &self,
        h: &Helper<'rc>,
        _: &'reg Handlebars<'reg>,
        _: &'rc Context,
        _: &mut RenderContext<'reg, 'rc>,
    ) -> Result<ScopedJson<'rc>, RenderError> {
        let usage = "a value and a fallback: `{{default input.x \"none\"}}`";
        let (Some(v), Some(_)) = (h.param(0), h.param(1)) else {
            return Err(RenderErrorReason::Other(format!("`default` needs {usage}")).into());
        };
        if !v.is_value_missing() && !v.value().is_null() {
            return Ok(ScopedJson::Derived(v.value().clone()));
        }
        Ok(ScopedJson::Derived(value(h, "default", 1, usage)?.clone()))
    }

    fn call<'reg: 'rc, 'rc>(
        &self,
        h: &Helper<'rc>,
        r: &'reg Handlebars<'reg>,
        ctx: &'rc Context,
        rc: &mut RenderContext<'reg, 'rc>,
        out: &mut dyn Output,
    ) -> HelperResult {
        call_as_text(self, h, r, ctx, rc, out)
    }
}

/// The helpers a template calls, by name as written, in the order they
/// appear: block helpers, calls with arguments, and subexpressions.
/// A bare `{{name}}` is a read, not a call.
pub fn calls(t: &Template) -> Vec<String> {
    let mut out = Vec::new();
    collect_calls(t, &mut out);
    out
}

fn collect_calls(t: &Template, out: &mut Vec<String>) {
    for el in &t.elements {
        match el {
            TemplateElement::Expression(h) | TemplateElement::HtmlExpression(h) | TemplateElement::HelperBlock(h) => {
                let call = !h.params.is_empty() || !h.hash.is_empty() || h.block;
                match &h.name {
                    Parameter::Subexpression(s) => param_calls(s, out),
                    name if call => out.extend(name_of(name).map(str::to_string)),
                    _ => {}
                }
                for p in h.params.iter().chain(h.hash.values()) {
                    if let Parameter::Subexpression(s) = p {
                        param_calls(s, out);
                    }
                }
                if let Some(inner) = &h.template {
                    collect_calls(inner, out);
                }
                if let Some(inverse) = &h.inverse {
                    collect_calls(inverse, out);
                }
            }
            TemplateElement::DecoratorBlock(d) | TemplateElement::PartialBlock(d) => {
                if let Some(inner) = &d.template {
                    collect_calls(inner, out);
                }
            }
            _ => {}
        }
    }
}

fn param_calls(s: &Subexpression, out: &mut Vec<String>) {
    let TemplateElement::Expression(h) = s.as_element() else { return };
    // A subexpression always calls: `(x)` is a call of `x` with no arguments.
    match &h.name {
        Parameter::Subexpression(inner) => param_calls(inner, out),
        name => out.extend(name_of(name).map(str::to_string)),
    }
    for p in h.params.iter().chain(h.hash.values()) {
        if let Parameter::Subexpression(inner) = p {
            param_calls(inner, out);
        }
    }
}

/// The byte range of the first call of helper `name` in a template's source
/// at or after `from`: the name right after `{{` (with `#`, `^`, `~`, `&`,
/// `{` or spaces between), after `(` or after `else `, and followed by
/// something that ends a name. `None` when the scan finds none.
pub fn call_site(source: &str, name: &str, from: usize) -> Option<std::ops::Range<usize>> {
    if name.is_empty() {
        return None;
    }
    let mut at = from;
    while let Some(i) = source.get(at..)?.find(name) {
        let start = at + i;
        let end = start + name.len();
        let before = source[..start].trim_end_matches([' ', '\t', '\n', '\r']);
        let opens = before.ends_with('(')
            || before.trim_end_matches(['#', '^', '~', '&', ' ']).ends_with("{{")
            || (before.ends_with("else") && start > before.len());
        let closes = source[end..].chars().next().is_none_or(|c| c.is_whitespace() || matches!(c, '}' | ')' | '~'));
        if opens && closes {
            return Some(start..end);
        }
        at = start + name.len().max(1);
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_call_sites() {
        assert_eq!(call_site("a jsn {{jsn x}}", "jsn", 0), Some(8..11));
        assert_eq!(call_site("{{#eachh xs}}{{/eachh}}", "eachh", 0), Some(3..8));
        assert_eq!(call_site("{{~# eachh xs}}", "eachh", 0), Some(5..10));
        assert_eq!(call_site("{{json (jsn x)}}", "jsn", 0), Some(8..11));
        assert_eq!(call_site("{{#if a}}{{else iff b}}{{/if}}", "iff", 0), Some(16..19));
        assert_eq!(call_site("{{x}} {{x y}}", "x", 0), Some(2..3));
        assert_eq!(call_site("{{x}} {{x y}}", "x", 3), Some(8..9));
        assert_eq!(call_site("{{jsonx y}}", "json", 0), None);
        assert_eq!(call_site("", "", 0), None);
    }

    #[test]
    fn finds_calls_in_order() {
        let t = handlebars::Template::compile(
            "{{input.x}} {{jsn input.x}} {{#eachh xs}}{{upper (lowr this)}}{{/eachh}}{{#if (eq a b)}}{{else iff c}}{{len}}{{/if}}",
        )
        .expect("parses");
        assert_eq!(calls(&t), ["jsn", "eachh", "upper", "lowr", "if", "eq", "iff"]);
    }
}
