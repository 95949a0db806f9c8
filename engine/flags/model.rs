//! The validated flag model: what a features file (or a remote snapshot)
//! becomes once every key, operator and reference has been checked. Values
//! the evaluator compares (numbers, times, `isoneof` lists) are parsed once
//! here, so evaluation does no parsing of the flag side.

use serde::Serialize;
use serde_json::Value;
use std::collections::HashMap;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FlagType {
    Variant,
    Boolean,
}

impl FlagType {
    pub fn as_str(self) -> &'static str {
        match self {
            FlagType::Variant => "VARIANT_FLAG_TYPE",
            FlagType::Boolean => "BOOLEAN_FLAG_TYPE",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MatchType {
    All,
    Any,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SegmentOperator {
    Or,
    And,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConstraintType {
    String,
    Number,
    Boolean,
    DateTime,
    EntityId,
}

impl ConstraintType {
    pub const NAMES: [(&'static str, ConstraintType); 5] = [
        ("STRING_COMPARISON_TYPE", ConstraintType::String),
        ("NUMBER_COMPARISON_TYPE", ConstraintType::Number),
        ("BOOLEAN_COMPARISON_TYPE", ConstraintType::Boolean),
        ("DATETIME_COMPARISON_TYPE", ConstraintType::DateTime),
        ("ENTITY_ID_COMPARISON_TYPE", ConstraintType::EntityId),
    ];

    /// The operators Flipt accepts for this type.
    pub fn operators(self) -> &'static [&'static str] {
        match self {
            ConstraintType::String | ConstraintType::EntityId => {
                &["eq", "neq", "empty", "notempty", "prefix", "suffix", "contains", "notcontains", "isoneof", "isnotoneof"]
            }
            ConstraintType::Number => &["eq", "neq", "lt", "lte", "gt", "gte", "present", "notpresent", "isoneof", "isnotoneof"],
            ConstraintType::Boolean => &["true", "false", "present", "notpresent"],
            ConstraintType::DateTime => &["eq", "neq", "lt", "lte", "gt", "gte", "present", "notpresent"],
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Eq,
    Neq,
    Empty,
    NotEmpty,
    Prefix,
    Suffix,
    Contains,
    NotContains,
    IsOneOf,
    IsNotOneOf,
    Lt,
    Lte,
    Gt,
    Gte,
    Present,
    NotPresent,
    True,
    False,
}

impl Op {
    pub fn parse(s: &str) -> Option<Op> {
        Some(match s {
            "eq" => Op::Eq,
            "neq" => Op::Neq,
            "empty" => Op::Empty,
            "notempty" => Op::NotEmpty,
            "prefix" => Op::Prefix,
            "suffix" => Op::Suffix,
            "contains" => Op::Contains,
            "notcontains" => Op::NotContains,
            "isoneof" => Op::IsOneOf,
            "isnotoneof" => Op::IsNotOneOf,
            "lt" => Op::Lt,
            "lte" => Op::Lte,
            "gt" => Op::Gt,
            "gte" => Op::Gte,
            "present" => Op::Present,
            "notpresent" => Op::NotPresent,
            "true" => Op::True,
            "false" => Op::False,
            _ => return None,
        })
    }
}

/// The constraint's value, parsed for its type and operator.
#[derive(Debug, Clone, PartialEq)]
pub enum Operand {
    /// Nothing to parse (string comparisons, presence, booleans).
    Text,
    Strings(Vec<String>),
    Numbers(Vec<i32>),
    Number(i32),
    /// Seconds since the epoch.
    Time(i64),
    /// The value does not parse for its type: the constraint never matches
    /// (as in Flipt's engine, where the comparison fails).
    Invalid,
}

#[derive(Debug, Clone)]
pub struct Constraint {
    pub ty: ConstraintType,
    pub property: String,
    pub op: Op,
    pub value: String,
    pub operand: Operand,
}

#[derive(Debug, Clone)]
pub struct Segment {
    pub key: String,
    pub name: String,
    pub match_type: MatchType,
    pub constraints: Vec<Constraint>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Variant {
    pub key: String,
    pub name: String,
    pub attachment: Option<Value>,
}

#[derive(Debug, Clone)]
pub struct Distribution {
    /// Index into the flag's variants.
    pub variant: usize,
    pub rollout: f32,
}

#[derive(Debug, Clone)]
pub struct Rule {
    /// Indexes into [`Features::segments`].
    pub segments: Vec<usize>,
    pub operator: SegmentOperator,
    pub distributions: Vec<Distribution>,
}

#[derive(Debug, Clone)]
pub enum Rollout {
    Threshold { percentage: f32, value: bool },
    Segment { segments: Vec<usize>, operator: SegmentOperator, value: bool },
}

#[derive(Debug, Clone)]
pub struct Flag {
    pub key: String,
    pub name: String,
    pub ty: FlagType,
    pub enabled: bool,
    pub variants: Vec<Variant>,
    /// Index of the default variant.
    pub default_variant: Option<usize>,
    pub rules: Vec<Rule>,
    pub rollouts: Vec<Rollout>,
}

/// One namespace's flags and segments.
#[derive(Debug, Clone, Default)]
pub struct Features {
    pub namespace: String,
    pub flags: Vec<Flag>,
    pub segments: Vec<Segment>,
    pub(crate) index: HashMap<String, usize>,
}

impl Features {
    pub fn new(namespace: String, flags: Vec<Flag>, segments: Vec<Segment>) -> Self {
        let index = flags.iter().enumerate().map(|(i, f)| (f.key.clone(), i)).collect();
        Features { namespace, flags, segments, index }
    }

    pub fn flag(&self, key: &str) -> Option<&Flag> {
        self.index.get(key).map(|i| &self.flags[*i])
    }
}

/// Parse a constraint value for its type and operator (see [`Operand`]).
pub fn operand(ty: ConstraintType, op: Op, value: &str) -> Operand {
    match (ty, op) {
        (_, Op::Empty | Op::NotEmpty | Op::Present | Op::NotPresent | Op::True | Op::False) => Operand::Text,
        (ConstraintType::String | ConstraintType::EntityId, Op::IsOneOf | Op::IsNotOneOf) => {
            serde_json::from_str::<Vec<String>>(value).map_or(Operand::Invalid, Operand::Strings)
        }
        (ConstraintType::String | ConstraintType::EntityId, _) => Operand::Text,
        (ConstraintType::Number, Op::IsOneOf | Op::IsNotOneOf) => {
            serde_json::from_str::<Vec<i32>>(value).map_or(Operand::Invalid, Operand::Numbers)
        }
        (ConstraintType::Number, _) => value.parse::<i32>().map_or(Operand::Invalid, Operand::Number),
        (ConstraintType::DateTime, _) => parse_time(value).map_or(Operand::Invalid, Operand::Time),
        (ConstraintType::Boolean, _) => Operand::Text,
    }
}

/// An RFC 3339 time in whole seconds since the epoch. Like the engine Flipt
/// ships (chrono's RFC 3339 parser), a space may stand for the `T`.
pub fn parse_time(s: &str) -> Option<i64> {
    use time::format_description::well_known::Rfc3339;
    let owned;
    let s = if s.len() > 10 && s.as_bytes()[10] == b' ' {
        owned = format!("{}T{}", &s[..10], &s[11..]);
        owned.as_str()
    } else {
        s
    };
    time::OffsetDateTime::parse(s, &Rfc3339).ok().map(|t| t.unix_timestamp())
}
