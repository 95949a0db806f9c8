//! Flipt features files (the declarative `version: "1.x"` format) to
//! [`Features`], with every finding positioned at its node.
//!
//! The file goes through the project's spanned YAML parser, so syntax errors
//! and duplicate mapping keys come back as the same diagnostics as a
//! workflow's. The checks are Flipt's own: known keys, operators as Flipt
//! spells them (`eq`, not `EQ_COMPARISON_OPERATOR`), operators allowed for
//! the constraint type, percentages from 0 to 100, unique flag, segment and
//! variant keys, segments and variants that exist.

use super::model::{
    self, Constraint, ConstraintType, Distribution, Features, Flag, FlagType, MatchType, Op, Operand, Rollout, Rule, Segment,
    SegmentOperator, Variant,
};
use crate::diag::{Code, Diagnostic, Span, did_you_mean};
use crate::spec::{Node, NodeKind};
use std::collections::HashMap;

/// A loaded file: the flags when it is valid, and every finding.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub features: Option<Features>,
    pub diagnostics: Vec<Diagnostic>,
}

/// Parse and check a features file's text. `features` is `None` when any
/// error was found.
pub fn load_str(file: &str, text: &str) -> Loaded {
    let doc = match crate::spec::parse(file, text, crate::spec::Format::Yaml) {
        Ok(d) => d,
        Err(diagnostics) => return Loaded { features: None, diagnostics },
    };
    let mut l = Loader { file, diags: Vec::new() };
    let features = l.document(&doc.root);
    crate::diag::sort(&mut l.diags);
    let ok = !l.diags.iter().any(Diagnostic::is_error);
    Loaded { features: features.filter(|_| ok), diagnostics: l.diags }
}

/// Read and check a features file.
pub fn load_path(path: &std::path::Path) -> std::io::Result<Loaded> {
    let bytes = std::fs::read(path)?;
    let file = path.display().to_string();
    Ok(match crate::spec::decode(&file, &bytes) {
        Ok(text) => load_str(&file, &text),
        Err(d) => Loaded { features: None, diagnostics: vec![d] },
    })
}

struct Loader<'f> {
    file: &'f str,
    diags: Vec<Diagnostic>,
}

type Entries<'n> = &'n [(crate::spec::Key, Node)];

const TOP_KEYS: &[&str] = &["version", "namespace", "flags", "segments"];
const FLAG_KEYS: &[&str] = &["key", "name", "description", "type", "enabled", "variants", "rules", "rollouts", "metadata"];
const VARIANT_KEYS: &[&str] = &["key", "name", "description", "attachment", "default"];
const RULE_KEYS: &[&str] = &["segment", "rank", "distributions"];
const DIST_KEYS: &[&str] = &["variant", "rollout"];
const ROLLOUT_KEYS: &[&str] = &["description", "segment", "threshold"];
const SEGMENT_KEYS: &[&str] = &["key", "name", "description", "match_type", "constraints"];
const CONSTRAINT_KEYS: &[&str] = &["type", "property", "operator", "value", "description"];
const MATCH_TYPES: &[&str] = &["ALL_MATCH_TYPE", "ANY_MATCH_TYPE"];
const SEGMENT_OPERATORS: &[&str] = &["OR_SEGMENT_OPERATOR", "AND_SEGMENT_OPERATOR"];
const FLAG_TYPES: &[&str] = &["VARIANT_FLAG_TYPE", "BOOLEAN_FLAG_TYPE"];

/// A flag's rules before segment keys are resolved.
struct PendingRef {
    key: String,
    span: Span,
}

impl<'f> Loader<'f> {
    fn err(&mut self, span: Span, msg: impl Into<String>) -> &mut Diagnostic {
        self.diags.push(Diagnostic::new(Code::Schema, self.file, span, msg));
        self.diags.last_mut().expect("just pushed")
    }

    fn map<'n>(&mut self, n: &'n Node, what: &str, allowed: &[&str]) -> Option<Entries<'n>> {
        let NodeKind::Map(entries) = &n.kind else {
            self.err(n.span, format!("{what} must be a mapping"));
            return None;
        };
        for (k, _) in entries {
            if !allowed.contains(&k.name.as_str()) {
                let d = self.err(k.span, format!("unknown field `{}` in {what}", k.name));
                d.help = Some(match did_you_mean(&k.name, allowed.iter().copied()) {
                    Some(s) => format!("did you mean `{s}`?"),
                    None => format!("the fields are {}", allowed.join(", ")),
                });
            }
        }
        Some(entries)
    }

    fn seq<'n>(&mut self, n: &'n Node, what: &str) -> &'n [Node] {
        match &n.kind {
            NodeKind::Seq(items) => items,
            NodeKind::Null => &[],
            _ => {
                self.err(n.span, format!("{what} must be a list"));
                &[]
            }
        }
    }

    fn string(&mut self, n: &Node, what: &str) -> Option<String> {
        match &n.kind {
            NodeKind::Str(s) => Some(s.clone()),
            // Flipt reads YAML scalars as strings where it wants strings.
            NodeKind::Int(i) => Some(i.to_string()),
            NodeKind::Float(f) => Some(f.to_string()),
            NodeKind::Bool(b) => Some(b.to_string()),
            _ => {
                self.err(n.span, format!("{what} must be a string"));
                None
            }
        }
    }

    fn boolean(&mut self, n: &Node, what: &str) -> Option<bool> {
        match &n.kind {
            NodeKind::Bool(b) => Some(*b),
            _ => {
                self.err(n.span, format!("{what} must be true or false"));
                None
            }
        }
    }

    fn percentage(&mut self, n: &Node, what: &str) -> Option<f32> {
        let v = match &n.kind {
            NodeKind::Int(i) => *i as f64,
            NodeKind::Float(f) => *f,
            _ => {
                self.err(n.span, format!("{what} must be a number from 0 to 100"));
                return None;
            }
        };
        if !(0.0..=100.0).contains(&v) {
            self.err(n.span, format!("{what} must be from 0 to 100, not {v}")).help = Some("a percentage: 0 to 100".into());
            return None;
        }
        Some(v as f32)
    }

    fn required<'n>(&mut self, entries: Entries<'n>, key: &str, at: Span, what: &str) -> Option<&'n Node> {
        let found = get(entries, key);
        if found.is_none() {
            self.err(at, format!("{what} has no `{key}`"));
        }
        found
    }

    fn enumerated(&mut self, n: &Node, what: &str, allowed: &[&str]) -> Option<String> {
        let s = self.string(n, what)?;
        if allowed.contains(&s.as_str()) {
            return Some(s);
        }
        let d = self.err(n.span, format!("unknown {what} `{s}`"));
        d.help = Some(match did_you_mean(&s, allowed.iter().copied()) {
            Some(x) => format!("did you mean `{x}`?"),
            None => format!("one of {}", allowed.join(", ")),
        });
        None
    }

    fn document(&mut self, root: &Node) -> Option<Features> {
        let top = self.map(root, "a features file", TOP_KEYS)?;
        if let Some(v) = get(top, "version") {
            let s = self.string(v, "`version`");
            if let Some(s) = s
                && !matches!(s.as_str(), "1.0" | "1.1" | "1.2" | "1.3" | "1.4" | "1")
            {
                self.err(v.span, format!("unsupported version `{s}`")).help =
                    Some("this reads Flipt's declarative format `1.0` to `1.4`".into());
            }
        }
        let namespace = match get(top, "namespace") {
            Some(n) => self.string(n, "`namespace`").unwrap_or_default(),
            None => "default".to_string(),
        };
        // Segments first: rules refer to them.
        let mut segments = Vec::new();
        let mut seg_index: HashMap<String, usize> = HashMap::new();
        let mut seg_first: HashMap<String, Span> = HashMap::new();
        if let Some(list) = get(top, "segments") {
            for item in self.seq(list, "`segments`") {
                // A segment with errors still claims its key, so rules naming
                // it report nothing more.
                if let Some((seg, span)) = self.segment(item) {
                    if let Some(first) = seg_first.get(&seg.key) {
                        let d = Diagnostic::new(Code::DuplicateKey, self.file, span, format!("duplicate segment key `{}`", seg.key))
                            .with_help(format!("`{}` is first defined at line {}", seg.key, first.start.line));
                        self.diags.push(d);
                        continue;
                    }
                    seg_first.insert(seg.key.clone(), span);
                    seg_index.insert(seg.key.clone(), segments.len());
                    segments.push(seg);
                }
            }
        }
        let mut flags = Vec::new();
        let mut flag_first: HashMap<String, Span> = HashMap::new();
        if let Some(list) = get(top, "flags") {
            for item in self.seq(list, "`flags`") {
                if let Some((flag, span)) = self.flag(item, &seg_index) {
                    if let Some(first) = flag_first.get(&flag.key) {
                        let d = Diagnostic::new(Code::DuplicateKey, self.file, span, format!("duplicate flag key `{}`", flag.key))
                            .with_help(format!("`{}` is first defined at line {}", flag.key, first.start.line));
                        self.diags.push(d);
                        continue;
                    }
                    flag_first.insert(flag.key.clone(), span);
                    flags.push(flag);
                }
            }
        }
        Some(Features::new(namespace, flags, segments))
    }

    fn key_of(&mut self, entries: Entries<'_>, at: Span, what: &str) -> Option<(String, Span)> {
        let n = self.required(entries, "key", at, what)?;
        let k = self.string(n, "`key`")?;
        if k.is_empty() {
            self.err(n.span, format!("{what} has an empty `key`"));
            return None;
        }
        Some((k, n.span))
    }

    fn segment(&mut self, n: &Node) -> Option<(Segment, Span)> {
        let e = self.map(n, "a segment", SEGMENT_KEYS)?;
        let (key, span) = self.key_of(e, n.span, "a segment")?;
        let name = get(e, "name").and_then(|n| self.string(n, "`name`")).unwrap_or_else(|| key.clone());
        let match_type = match get(e, "match_type").and_then(|m| self.enumerated(m, "match type", MATCH_TYPES)) {
            Some(m) if m == "ANY_MATCH_TYPE" => MatchType::Any,
            _ => MatchType::All,
        };
        let mut constraints = Vec::new();
        if let Some(list) = get(e, "constraints") {
            for c in self.seq(list, "`constraints`") {
                // A constraint with errors is reported; the file is refused.
                constraints.extend(self.constraint(c));
            }
        }
        Some((Segment { key, name, match_type, constraints }, span))
    }

    fn constraint(&mut self, n: &Node) -> Option<Constraint> {
        let e = self.map(n, "a constraint", CONSTRAINT_KEYS)?;
        let type_names: Vec<&str> = ConstraintType::NAMES.iter().map(|(n, _)| *n).collect();
        let ty_node = self.required(e, "type", n.span, "a constraint")?;
        let ty_name = self.enumerated(ty_node, "constraint type", &type_names);
        let ty = ty_name.and_then(|t| ConstraintType::NAMES.iter().find(|(n, _)| *n == t).map(|(_, t)| *t));
        let property = match get(e, "property") {
            Some(p) => self.string(p, "`property`")?,
            None if ty == Some(ConstraintType::EntityId) => String::new(),
            None => {
                self.err(n.span, "a constraint has no `property`");
                return None;
            }
        };
        let op_node = self.required(e, "operator", n.span, "a constraint")?;
        let op_text = self.string(op_node, "`operator`")?;
        let ty = ty?;
        let allowed = ty.operators();
        let op = match Op::parse(&op_text).filter(|_| allowed.contains(&op_text.as_str())) {
            Some(op) => op,
            None => {
                let type_name = ConstraintType::NAMES.iter().find(|(_, t)| *t == ty).map_or("", |(n, _)| n);
                let spelled = enum_style(&op_text);
                let msg = if Op::parse(&op_text).is_some() {
                    format!("operator `{op_text}` does not apply to {type_name}")
                } else {
                    format!("unknown operator `{op_text}`")
                };
                let help = match spelled.as_deref().filter(|s| allowed.contains(s)) {
                    Some(s) => format!("Flipt spells operators in lowercase: `{s}`"),
                    None => match did_you_mean(&op_text, allowed.iter().copied()) {
                        Some(s) => format!("did you mean `{s}`?"),
                        None => format!("the operators of {type_name} are {}", allowed.join(", ")),
                    },
                };
                self.err(op_node.span, msg).help = Some(help);
                return None;
            }
        };
        let (value, value_span) = match get(e, "value") {
            Some(v) => (self.string(v, "`value`")?, v.span),
            None => (String::new(), n.span),
        };
        let operand = model::operand(ty, op, &value);
        if operand == Operand::Invalid {
            let what = match (ty, op) {
                (ConstraintType::Number, Op::IsOneOf | Op::IsNotOneOf) => "a JSON array of whole numbers, such as `[1, 2]`",
                (_, Op::IsOneOf | Op::IsNotOneOf) => "a JSON array of strings, such as `[\"a\", \"b\"]`",
                (ConstraintType::Number, _) => "a whole number",
                _ => "an RFC 3339 time, such as `2024-01-02T03:04:05Z`",
            };
            self.err(value_span, format!("`{value}` is not {what}"));
            return None;
        }
        Some(Constraint { ty, property, op, value, operand })
    }

    fn flag(&mut self, n: &Node, segs: &HashMap<String, usize>) -> Option<(Flag, Span)> {
        let e = self.map(n, "a flag", FLAG_KEYS)?;
        let (key, span) = self.key_of(e, n.span, "a flag")?;
        let name = get(e, "name").and_then(|n| self.string(n, "`name`")).unwrap_or_else(|| key.clone());
        let ty = match get(e, "type") {
            Some(t) => match self.enumerated(t, "flag type", FLAG_TYPES)?.as_str() {
                "BOOLEAN_FLAG_TYPE" => FlagType::Boolean,
                _ => FlagType::Variant,
            },
            None => FlagType::Variant,
        };
        let enabled = match get(e, "enabled") {
            Some(b) => self.boolean(b, "`enabled`")?,
            None => false,
        };
        let errors_before = self.diags.len();
        let mut variants: Vec<Variant> = Vec::new();
        let mut default_variant = None;
        if let Some(list) = get(e, "variants") {
            if ty == FlagType::Boolean {
                self.err(list.span, format!("boolean flag `{key}` cannot have variants")).help =
                    Some("use `rollouts`, or make it a VARIANT_FLAG_TYPE flag".into());
            }
            for v in self.seq(list, "`variants`") {
                let Some(ve) = self.map(v, "a variant", VARIANT_KEYS) else { continue };
                let Some((vkey, vspan)) = self.key_of(ve, v.span, "a variant") else { continue };
                if variants.iter().any(|x| x.key == vkey) {
                    self.diags.push(Diagnostic::new(
                        Code::DuplicateKey,
                        self.file,
                        vspan,
                        format!("flag `{key}`: duplicate variant key `{vkey}`"),
                    ));
                    continue;
                }
                let vname = get(ve, "name").and_then(|n| self.string(n, "`name`")).unwrap_or_else(|| vkey.clone());
                let attachment = get(ve, "attachment").map(Node::to_json);
                if let Some(d) = get(ve, "default")
                    && self.boolean(d, "`default`") == Some(true)
                {
                    if default_variant.is_some() {
                        self.err(d.span, format!("flag `{key}` has more than one default variant"));
                    }
                    default_variant = Some(variants.len());
                }
                variants.push(Variant { key: vkey, name: vname, attachment });
            }
        }
        let mut rules = Vec::new();
        if let Some(list) = get(e, "rules") {
            if ty == FlagType::Boolean {
                self.err(list.span, format!("boolean flag `{key}` cannot have rules")).help = Some("boolean flags use `rollouts`".into());
            }
            for r in self.seq(list, "`rules`") {
                if let Some(rule) = self.rule(r, &key, &variants, segs) {
                    rules.push(rule);
                }
            }
        }
        let mut rollouts = Vec::new();
        if let Some(list) = get(e, "rollouts") {
            if ty == FlagType::Variant {
                self.err(list.span, format!("variant flag `{key}` cannot have rollouts")).help =
                    Some("variant flags use `rules`; rollouts belong to BOOLEAN_FLAG_TYPE flags".into());
            }
            for r in self.seq(list, "`rollouts`") {
                if let Some(ro) = self.rollout(r, segs) {
                    rollouts.push(ro);
                }
            }
        }
        if self.diags[errors_before..].iter().any(Diagnostic::is_error) {
            return None;
        }
        Some((Flag { key, name, ty, enabled, variants, default_variant, rules, rollouts }, span))
    }

    /// `segment: KEY` or `segment: {keys: [..], operator: ..}`, and for
    /// rollouts `{key: KEY, value: ..}` too.
    fn segment_ref(
        &mut self,
        n: &Node,
        segs: &HashMap<String, usize>,
        rollout: bool,
    ) -> Option<(Vec<usize>, SegmentOperator, Option<bool>)> {
        let mut refs = Vec::new();
        let mut operator = SegmentOperator::Or;
        let mut value = None;
        match &n.kind {
            NodeKind::Str(s) if !rollout => refs.push(PendingRef { key: s.clone(), span: n.span }),
            NodeKind::Map(_) => {
                let allowed: &[&str] = if rollout { &["key", "keys", "operator", "value"] } else { &["key", "keys", "operator"] };
                let e = self.map(n, "a segment reference", allowed)?;
                if let Some(k) = get(e, "key") {
                    let s = self.string(k, "`key`")?;
                    refs.push(PendingRef { key: s, span: k.span });
                }
                if let Some(ks) = get(e, "keys") {
                    for k in self.seq(ks, "`keys`") {
                        if let Some(s) = self.string(k, "a segment key") {
                            refs.push(PendingRef { key: s, span: k.span });
                        }
                    }
                }
                if let Some(o) = get(e, "operator") {
                    operator = match self.enumerated(o, "segment operator", SEGMENT_OPERATORS)?.as_str() {
                        "AND_SEGMENT_OPERATOR" => SegmentOperator::And,
                        _ => SegmentOperator::Or,
                    };
                }
                if let Some(v) = get(e, "value") {
                    value = Some(self.boolean(v, "`value`")?);
                }
            }
            _ => {
                self.err(n.span, "`segment` must be a segment key or a mapping with `keys` and `operator`");
                return None;
            }
        }
        if refs.is_empty() {
            self.err(n.span, "`segment` names no segment");
            return None;
        }
        let mut out = Vec::new();
        for r in refs {
            match segs.get(&r.key) {
                Some(i) => out.push(*i),
                None => {
                    let d = self.err(r.span, format!("unknown segment `{}`", r.key));
                    d.help = match did_you_mean(&r.key, segs.keys().map(String::as_str)) {
                        Some(s) => Some(format!("did you mean `{s}`?")),
                        None => Some("segments are declared under `segments:`".into()),
                    };
                    return None;
                }
            }
        }
        Some((out, operator, value))
    }

    fn rule(&mut self, n: &Node, flag: &str, variants: &[Variant], segs: &HashMap<String, usize>) -> Option<Rule> {
        let e = self.map(n, "a rule", RULE_KEYS)?;
        let seg = self.required(e, "segment", n.span, "a rule")?;
        let (segments, operator, _) = self.segment_ref(seg, segs, false)?;
        let mut distributions = Vec::new();
        let mut total = 0f64;
        if let Some(list) = get(e, "distributions") {
            for d in self.seq(list, "`distributions`") {
                let Some(de) = self.map(d, "a distribution", DIST_KEYS) else { continue };
                let Some(vn) = self.required(de, "variant", d.span, "a distribution") else { continue };
                let Some(vkey) = self.string(vn, "`variant`") else { continue };
                let Some(variant) = variants.iter().position(|v| v.key == vkey) else {
                    let d = self.err(vn.span, format!("flag `{flag}` has no variant `{vkey}`"));
                    d.help = match did_you_mean(&vkey, variants.iter().map(|v| v.key.as_str())) {
                        Some(s) => Some(format!("did you mean `{s}`?")),
                        None => Some(format!("its variants: {}", variants.iter().map(|v| v.key.as_str()).collect::<Vec<_>>().join(", "))),
                    };
                    continue;
                };
                let Some(rn) = self.required(de, "rollout", d.span, "a distribution") else { continue };
                let Some(rollout) = self.percentage(rn, "`rollout`") else { continue };
                total += f64::from(rollout);
                distributions.push(Distribution { variant, rollout });
            }
            // Flipt keeps rollouts as float32 and accepts 33.33 + 33.33 +
            // 33.34, whose f32 sum is 100.0000038: compare in hundredths of a
            // percent, the precision a rollout is written in.
            if (total * 100.0).round() > 100.0 * 100.0 {
                self.err(list.span, format!("the rollouts of this rule add up to {total}, more than 100")).help =
                    Some("lower them so that they add up to 100 at most".into());
            }
        }
        Some(Rule { segments, operator, distributions })
    }

    fn rollout(&mut self, n: &Node, segs: &HashMap<String, usize>) -> Option<Rollout> {
        let e = self.map(n, "a rollout", ROLLOUT_KEYS)?;
        match (get(e, "threshold"), get(e, "segment")) {
            (Some(t), None) => {
                let te = self.map(t, "a threshold", &["percentage", "value"])?;
                let p = self.required(te, "percentage", t.span, "a threshold")?;
                let percentage = self.percentage(p, "`percentage`")?;
                let value = match get(te, "value") {
                    Some(v) => self.boolean(v, "`value`")?,
                    None => false,
                };
                Some(Rollout::Threshold { percentage, value })
            }
            (None, Some(s)) => {
                let (segments, operator, value) = self.segment_ref(s, segs, true)?;
                Some(Rollout::Segment { segments, operator, value: value.unwrap_or(false) })
            }
            (Some(_), Some(s)) => {
                self.err(s.span, "a rollout has either a `threshold` or a `segment`, not both");
                None
            }
            (None, None) => {
                self.err(n.span, "a rollout needs a `threshold` or a `segment`");
                None
            }
        }
    }
}

fn get<'n>(entries: Entries<'n>, key: &str) -> Option<&'n Node> {
    entries.iter().find(|(k, _)| k.name == key).map(|(_, v)| v)
}

/// `EQ_COMPARISON_OPERATOR` -> `eq`, `IS_ONE_OF_COMPARISON_OPERATOR` -> `isoneof`:
/// the lowercase operator an enum-style name stands for.
fn enum_style(s: &str) -> Option<String> {
    let core = s.strip_suffix("_COMPARISON_OPERATOR").or_else(|| s.strip_suffix("_OPERATOR")).unwrap_or(s);
    let lowered: String = core.chars().filter(|c| *c != '_').flat_map(char::to_lowercase).collect();
    (lowered != s).then_some(lowered)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn enum_style_names() {
        assert_eq!(enum_style("EQ_COMPARISON_OPERATOR").as_deref(), Some("eq"));
        assert_eq!(enum_style("IS_ONE_OF_COMPARISON_OPERATOR").as_deref(), Some("isoneof"));
        assert_eq!(enum_style("NOT_PRESENT").as_deref(), Some("notpresent"));
        assert_eq!(enum_style("eq"), None);
    }
}
