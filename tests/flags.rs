//! Feature flags: features-file diagnostics, evaluation identical to Flipt's
//! client engine (checked against decisions recorded from `flipt-client`
//! 1.4.5 in `tests/fixtures/flipt/`), splits and stable cohorts, a remote
//! Flipt server (a local HTTP double), and routing runs between two local
//! backends through the engine, with the migration dashboard read back from
//! SQLite and PostgreSQL.

use serde_json::{Value, json};
use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;
use taskweave::backend::conformance::workflow;
use taskweave::config::Config;
use taskweave::diag::Code;
use taskweave::flags::file::load_str;
use taskweave::flags::{Context, EvalError, Features, FlagError, FlagSource, FlagType, Reason};
use taskweave::run::RunStatus;
use taskweave::store::RolloutFilter;
use taskweave::{Engine, EngineBuilder, RunOptions};

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/flipt").join(name)
}

fn features(text: &str) -> Features {
    let l = load_str("features.yml", text);
    assert!(l.diagnostics.iter().all(|d| !d.is_error()), "{:#?}", l.diagnostics);
    l.features.expect("valid features")
}

fn ctx(pairs: &[(&str, &str)]) -> Context {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

// ---------------------------------------------------------------- identical to Flipt

#[test]
fn every_constraint_operator_decides_as_flipts_engine() {
    let f = features(&std::fs::read_to_string(fixture("constraints.yml")).unwrap());
    let golden = std::fs::read_to_string(fixture("constraints_golden.tsv")).unwrap();
    let mut checked = 0;
    for line in golden.lines().skip(1) {
        let cols: Vec<&str> = line.split('\t').collect();
        let (flag, value, expected) = (cols[0], cols[1], cols[2] == "1");
        let (entity, c) = if value == "<missing>" { ("beta", Context::new()) } else { (value, ctx(&[("p", value)])) };
        let e = f.variant(flag, entity, &c).unwrap();
        assert_eq!(e.matched, expected, "flag {flag} ({:?}) with p = {value:?}", f.flag(flag).map(|x| &x.rules));
        assert_eq!(e.reason, if expected { Reason::Match } else { Reason::Unknown });
        checked += 1;
    }
    assert!(checked > 900, "{checked}");
}

/// Values that do not parse for their type (refused in files, possible from
/// other sources) make the constraint false, as in Flipt's engine.
#[test]
fn unparsable_constraint_values_never_match() {
    use taskweave::flags::eval::constraint_matches;
    use taskweave::flags::model::{Constraint, ConstraintType, Op, operand};
    for (ty, op, value, given) in [
        (ConstraintType::String, Op::IsOneOf, "not json", "not json"),
        (ConstraintType::String, Op::IsNotOneOf, "not json", "x"),
        (ConstraintType::Number, Op::Eq, "x", "1"),
        (ConstraintType::Number, Op::Neq, "x", "1"),
        (ConstraintType::Number, Op::IsNotOneOf, "[1.5]", "1"),
        (ConstraintType::DateTime, Op::Neq, "yesterday", "2024-01-01T00:00:00Z"),
    ] {
        let c = Constraint { ty, property: "p".into(), op, value: value.into(), operand: operand(ty, op, value) };
        assert!(!constraint_matches(&c, given), "{ty:?} {op:?} {value:?} against {given:?}");
    }
}

#[test]
fn bucketing_matches_flipts_engine() {
    let f = features(&std::fs::read_to_string(fixture("buckets.yml")).unwrap());
    let golden = std::fs::read_to_string(fixture("bucket_golden.tsv")).unwrap();
    let mut lines = golden.lines();
    let header: Vec<&str> = lines.next().unwrap().split('\t').collect();
    let empty = Context::new();
    let mut rows = 0;
    for line in lines {
        let cols: Vec<&str> = line.split('\t').collect();
        let entity = cols[0];
        for (flag, want) in header[1..].iter().zip(&cols[1..]) {
            let e = f.evaluate(flag, entity, &empty).unwrap();
            let got = match e.flag_type {
                FlagType::Variant if e.matched => e.variant.clone(),
                FlagType::Variant => "-".to_string(),
                FlagType::Boolean => (if e.enabled { "1" } else { "0" }).to_string(),
            };
            assert_eq!(&got, want, "flag {flag}, entity {entity}");
        }
        rows += 1;
    }
    assert_eq!(rows, 3504);
}

// ---------------------------------------------------------------- operators and reasons

const PEOPLE: &str = r#"
version: "1.4"
namespace: default
flags:
  - key: color
    name: Color
    type: VARIANT_FLAG_TYPE
    enabled: true
    variants:
      - {key: red, attachment: {backend: temporal, weight: 2}}
      - {key: blue, default: true}
    rules:
      - segment: {keys: [adults, in_fr], operator: AND_SEGMENT_OPERATOR}
        distributions: [{variant: red, rollout: 100}]
      - segment: {keys: [ghosts, in_fr], operator: OR_SEGMENT_OPERATOR}
        distributions: []
  - key: plain
    name: Plain
    enabled: true
    variants: [{key: a}, {key: b}]
    rules:
      - segment: nobody
        distributions: [{variant: a, rollout: 50}, {variant: b, rollout: 50}]
  - key: off
    name: Off
    enabled: false
    variants: [{key: a}, {key: b, default: true}]
    rules:
      - segment: everyone
        distributions: [{variant: a, rollout: 100}]
  - key: zero
    name: Zero
    enabled: true
    variants: [{key: a}]
    rules:
      - segment: everyone
        distributions: [{variant: a, rollout: 0}]
  - key: pg
    name: PG queue
    type: BOOLEAN_FLAG_TYPE
    enabled: false
    rollouts:
      - segment: {key: in_fr, value: true}
      - threshold: {percentage: 0, value: true}
  - key: pg_any
    name: PG any
    type: BOOLEAN_FLAG_TYPE
    enabled: true
    rollouts:
      - segment: {keys: [ghosts, adults], operator: AND_SEGMENT_OPERATOR, value: false}
      - threshold: {percentage: 100, value: false}
segments:
  - key: adults
    name: Adults
    match_type: ALL_MATCH_TYPE
    constraints:
      - {type: NUMBER_COMPARISON_TYPE, property: age, operator: gte, value: "18"}
      - {type: BOOLEAN_COMPARISON_TYPE, property: verified, operator: "true"}
  - key: in_fr
    name: In France
    match_type: ANY_MATCH_TYPE
    constraints:
      - {type: STRING_COMPARISON_TYPE, property: country, operator: eq, value: FR}
      - {type: STRING_COMPARISON_TYPE, property: city, operator: isoneof, value: '["Paris", "Lyon"]'}
  - key: ghosts
    name: Ghosts
    constraints:
      - {type: ENTITY_ID_COMPARISON_TYPE, property: "", operator: prefix, value: "ghost-"}
  - key: nobody
    name: Nobody
    match_type: ALL_MATCH_TYPE
    constraints:
      - {type: DATETIME_COMPARISON_TYPE, property: born, operator: lt, value: "1900-01-01T00:00:00Z"}
  - key: everyone
    name: Everyone
"#;

#[test]
fn reasons_segment_operators_and_match_types() {
    let f = features(PEOPLE);
    // AND of ALL (adults) and ANY (in_fr): MATCH with the variant's attachment.
    let e = f.evaluate("color", "u1", &ctx(&[("age", "30"), ("verified", "true"), ("city", "Lyon")])).unwrap();
    assert_eq!((e.matched, e.variant.as_str(), e.reason), (true, "red", Reason::Match));
    assert_eq!(e.attachment, Some(json!({"backend": "temporal", "weight": 2})));
    assert_eq!(e.segment_keys, vec!["adults", "in_fr"]);
    // One of the two AND segments fails: the next rule (OR) matches through the entity id,
    // and has no distribution: MATCH with the default variant.
    let e = f.evaluate("color", "ghost-7", &ctx(&[("age", "30"), ("verified", "false")])).unwrap();
    assert_eq!((e.matched, e.variant.as_str(), e.reason), (true, "blue", Reason::Match));
    assert_eq!(e.segment_keys, vec!["ghosts"]);
    // Nothing matches: the default variant, DEFAULT.
    let e = f.evaluate("color", "u2", &ctx(&[("age", "12")])).unwrap();
    assert_eq!((e.matched, e.variant.as_str(), e.reason), (false, "blue", Reason::Default));
    // A type mismatch does not match (and is no error).
    let e = f.evaluate("color", "u2", &ctx(&[("age", "thirty"), ("verified", "true"), ("country", "DE")])).unwrap();
    assert_eq!(e.reason, Reason::Default);
    // No default variant and no match: UNKNOWN with no variant.
    let e = f.evaluate("plain", "u3", &ctx(&[("born", "2000-01-01T00:00:00Z")])).unwrap();
    assert_eq!((e.matched, e.variant.as_str(), e.reason), (false, "", Reason::Unknown));
    let e = f.evaluate("plain", "u3", &ctx(&[("born", "1850-01-01T00:00:00Z")])).unwrap();
    assert_eq!((e.matched, e.reason), (true, Reason::Match));
    assert!(["a", "b"].contains(&e.variant.as_str()));
    // Disabled: FLAG_DISABLED with the default variant, rules not consulted.
    let e = f.evaluate("off", "u4", &Context::new()).unwrap();
    assert_eq!((e.matched, e.variant.as_str(), e.reason), (false, "b", Reason::FlagDisabled));
    // Only 0 % distributions: they are dropped, MATCH with no variant.
    let e = f.evaluate("zero", "u5", &Context::new()).unwrap();
    assert_eq!((e.matched, e.variant.as_str(), e.reason), (true, "", Reason::Match));
    // Missing flag: an error, not a decision.
    assert_eq!(
        f.evaluate("nope", "u", &Context::new()).unwrap_err(),
        EvalError::NotFound { namespace: "default".into(), flag: "nope".into() }
    );
    // The variant API refuses a boolean flag (the original project's mistake, the other way round).
    assert!(matches!(f.variant("pg", "u", &Context::new()), Err(EvalError::WrongType { .. })));
    assert!(matches!(f.boolean("color", "u", &Context::new()), Err(EvalError::WrongType { .. })));

    // Boolean flags: a segment rollout, a threshold, the flag's own value.
    let e = f.evaluate("pg", "u6", &ctx(&[("country", "FR")])).unwrap();
    assert_eq!((e.enabled, e.reason), (true, Reason::Match));
    assert_eq!(e.segment_keys, vec!["in_fr"]);
    let e = f.evaluate("pg", "u6", &ctx(&[("country", "DE")])).unwrap();
    assert_eq!((e.enabled, e.reason), (false, Reason::Default));
    let e = f.evaluate("pg_any", "u7", &Context::new()).unwrap();
    assert_eq!((e.enabled, e.reason), (false, Reason::Match), "a 100 % threshold matches everyone");
}

/// One constraint, evaluated alone: (type, operator, value, context value or None, expected).
#[test]
fn operator_table() {
    let cases: &[(&str, &str, &str, Option<&str>, bool)] = &[
        ("STRING", "eq", "x", Some("x"), true),
        ("STRING", "eq", "x", Some("X"), false),
        ("STRING", "eq", "x", None, false),
        ("STRING", "neq", "x", Some("y"), true),
        ("STRING", "neq", "x", None, false),
        ("STRING", "empty", "", None, true),
        ("STRING", "empty", "", Some(" "), false),
        ("STRING", "notempty", "", Some("a"), true),
        ("STRING", "notempty", "", None, false),
        ("STRING", "prefix", "ab", Some("abc"), true),
        ("STRING", "prefix", "ab", Some(" abc"), false),
        ("STRING", "suffix", "bc", Some("abc"), true),
        ("STRING", "contains", "b", Some("abc"), true),
        ("STRING", "notcontains", "z", Some("abc"), true),
        ("STRING", "notcontains", "z", None, false),
        ("STRING", "isoneof", r#"["a","b"]"#, Some("b"), true),
        ("STRING", "isoneof", r#"["a","b"]"#, Some("c"), false),
        ("STRING", "isnotoneof", r#"["a","b"]"#, Some("c"), true),
        ("STRING", "isnotoneof", r#"["a","b"]"#, None, false),
        ("NUMBER", "eq", "7", Some("7"), true),
        ("NUMBER", "eq", "7", Some("7.0"), false),
        ("NUMBER", "neq", "7", Some("8"), true),
        ("NUMBER", "neq", "7", Some("eight"), false),
        ("NUMBER", "lt", "7", Some("-3"), true),
        ("NUMBER", "lte", "7", Some("7"), true),
        ("NUMBER", "gt", "7", Some("7"), false),
        ("NUMBER", "gte", "7", Some("7"), true),
        ("NUMBER", "gt", "7", Some("2147483648"), false),
        ("NUMBER", "present", "", Some("x"), true),
        ("NUMBER", "notpresent", "", None, true),
        ("NUMBER", "isoneof", "[1, 7]", Some("7"), true),
        ("NUMBER", "isnotoneof", "[1, 7]", Some("8"), true),
        ("NUMBER", "isnotoneof", "[1, 7]", Some("x"), false),
        ("BOOLEAN", "true", "", Some("true"), true),
        ("BOOLEAN", "true", "", Some("True"), false),
        ("BOOLEAN", "false", "", Some("false"), true),
        ("BOOLEAN", "false", "", None, false),
        ("BOOLEAN", "present", "", Some("yes"), true),
        ("BOOLEAN", "notpresent", "", None, true),
        ("DATETIME", "eq", "2024-05-01T10:00:00Z", Some("2024-05-01T12:00:00+02:00"), true),
        ("DATETIME", "eq", "2024-05-01T10:00:00Z", Some("2024-05-01T10:00:00.999Z"), true),
        ("DATETIME", "neq", "2024-05-01T10:00:00Z", Some("2024-05-02T10:00:00Z"), true),
        ("DATETIME", "lt", "2024-05-01T10:00:00Z", Some("2024-04-30T10:00:00Z"), true),
        ("DATETIME", "lte", "2024-05-01T10:00:00Z", Some("2024-05-01T10:00:00Z"), true),
        ("DATETIME", "gt", "2024-05-01T10:00:00Z", Some("2024-05-01"), false),
        ("DATETIME", "gte", "2024-05-01T10:00:00Z", Some("2024-05-01 10:00:00Z"), true),
        ("DATETIME", "present", "", Some("x"), true),
        ("DATETIME", "notpresent", "", Some("x"), false),
    ];
    for (ty, op, value, given, expected) in cases {
        let text = format!(
            "version: \"1.4\"\nflags:\n  - key: f\n    enabled: true\n    variants: [{{key: v}}]\n    rules:\n      - segment: s\n        \
             distributions: [{{variant: v, rollout: 100}}]\nsegments:\n  - key: s\n    constraints:\n      - {{type: {ty}_COMPARISON_TYPE, \
             property: p, operator: {op}, value: {}}}\n",
            serde_json::to_string(value).unwrap()
        );
        let f = features(&text);
        let c = given.map(|g| ctx(&[("p", g)])).unwrap_or_default();
        let e = f.evaluate("f", "someone", &c).unwrap();
        assert_eq!(e.matched, *expected, "{ty} {op} {value:?} against {given:?}");
    }
    // ENTITY_ID compares the entity id, whatever the context holds.
    let f = features(
        "flags:\n  - key: f\n    enabled: true\n    variants: [{key: v}]\n    rules:\n      - segment: s\n        distributions: \
         [{variant: v, rollout: 100}]\nsegments:\n  - key: s\n    constraints:\n      - {type: ENTITY_ID_COMPARISON_TYPE, property: p, \
         operator: suffix, value: \"@corp\"}\n",
    );
    assert!(f.evaluate("f", "ann@corp", &ctx(&[("p", "nobody")])).unwrap().matched);
    assert!(!f.evaluate("f", "ann@home", &ctx(&[("p", "x@corp")])).unwrap().matched);
}

// ---------------------------------------------------------------- splits and cohorts

fn rollout_file(new_percent: u32) -> String {
    format!(
        r#"version: "1.4"
namespace: default
flags:
  - key: task_abstraction_enabled
    name: Task abstraction
    type: VARIANT_FLAG_TYPE
    enabled: true
    variants: [{{key: legacy, default: true}}, {{key: new}}]
    rules:
      - segment: beta_users
        distributions: [{{variant: new, rollout: 100}}]
      - segment: everyone
        distributions:
          - {{variant: legacy, rollout: {}}}
          - {{variant: new, rollout: {new_percent}}}
segments:
  - key: beta_users
    name: Beta users
    match_type: ANY_MATCH_TYPE
    constraints:
      - {{type: STRING_COMPARISON_TYPE, property: organization_id, operator: eq, value: beta_org}}
  - key: everyone
    name: Everyone
"#,
        100 - new_percent
    )
}

/// Three places where Flipt's own engine decides differently from a naive
/// reading: an empty entity id is an error; a context value that is not a
/// string is not seen by constraints; rollouts of 33.33 + 33.33 + 33.34 are
/// a valid 100 %.
#[test]
fn flipt_fidelity_empty_entities_typed_context_and_float_rollouts() {
    let f = features(&rollout_file(50));
    let e = f.evaluate("task_abstraction_enabled", "", &ctx(&[])).unwrap_err();
    assert!(matches!(e, taskweave::flags::EvalError::EmptyEntity { .. }), "{e:?}");
    assert!(e.to_string().contains("entity id is empty"), "{e}");

    let text = r#"version: "1.4"
namespace: default
flags:
  - key: tiers
    name: Tiers
    type: VARIANT_FLAG_TYPE
    enabled: true
    variants: [{key: a}, {key: b}, {key: c}]
    rules:
      - segment: gold
        distributions: [{variant: a, rollout: 100}]
      - segment: everyone
        distributions: [{variant: a, rollout: 33.33}, {variant: b, rollout: 33.33}, {variant: c, rollout: 33.34}]
segments:
  - key: gold
    name: Gold
    constraints:
      - {type: NUMBER_COMPARISON_TYPE, property: tier, operator: eq, value: "5"}
  - key: everyone
    name: Everyone
"#;
    let f = features(text);
    // A string "5" matches; the number 5 is left out of the context, as Flipt's engine does.
    let as_text = taskweave::flags::context_of(&json!({"tier": "5"}));
    let as_number = taskweave::flags::context_of(&json!({"tier": 5, "flag": true, "nested": {"a": 1}}));
    assert!(as_number.is_empty(), "{as_number:?}");
    assert_eq!(f.evaluate("tiers", "u1", &as_text).unwrap().segment_keys, vec!["gold".to_string()]);
    assert_eq!(f.evaluate("tiers", "u1", &as_number).unwrap().segment_keys, vec!["everyone".to_string()]);
}

#[tokio::test]
async fn an_empty_entity_routes_to_the_default_and_says_why() {
    let dir = tempfile::tempdir().unwrap();
    let store = format!("sqlite://{}", dir.path().join("s.db").display());
    let e = routed_engine(&store, Some(FlagSource::from_features(features(&rollout_file(100))))).await;
    let id = e.run_workflow("routed", opts(Some(""), json!({}))).await.expect("started");
    let r = finish(&e, &id).await;
    let routing = r.routing.expect("a routing record");
    assert_eq!(routing.reason, "ERROR");
    assert!(routing.error.as_deref().unwrap_or("").contains("entity id is empty"), "{routing:?}");
    e.shutdown().await;
}

#[test]
fn ten_thousand_entities_split_as_configured() {
    for (text, expected) in [
        (rollout_file(25), vec![("legacy", 75.0), ("new", 25.0)]),
        (rollout_file(5), vec![("legacy", 95.0), ("new", 5.0)]),
        (
            "flags:\n  - key: three\n    enabled: true\n    variants: [{key: a}, {key: b}, {key: c}]\n    rules:\n      - segment: all\n        \
             distributions: [{variant: a, rollout: 20}, {variant: b, rollout: 30}, {variant: c, rollout: 50}]\nsegments:\n  - key: all\n"
                .to_string(),
            vec![("a", 20.0), ("b", 30.0), ("c", 50.0)],
        ),
    ] {
        let f = features(&text);
        let flag = f.flags[0].key.clone();
        let mut counts: HashMap<String, u32> = HashMap::new();
        for i in 0..10_000 {
            let e = f.evaluate(&flag, &format!("user-{i}"), &Context::new()).unwrap();
            *counts.entry(e.variant).or_default() += 1;
        }
        for (variant, pct) in expected {
            let got = f64::from(counts.get(variant).copied().unwrap_or(0)) / 100.0;
            assert!((got - pct).abs() <= 1.5, "{flag}: {variant} got {got}% for {pct}% ({counts:?})");
        }
    }
}

#[test]
fn raising_a_rollout_keeps_the_earlier_cohort() {
    let at25 = features(&rollout_file(25));
    let at50 = features(&rollout_file(50));
    let at100 = features(&rollout_file(100));
    let flag = "task_abstraction_enabled";
    let mut cohort = 0;
    for i in 0..10_000 {
        let id = format!("0193-entity-{i}");
        let before = at25.evaluate(flag, &id, &Context::new()).unwrap();
        if before.variant == "new" {
            cohort += 1;
            assert_eq!(at50.evaluate(flag, &id, &Context::new()).unwrap().variant, "new", "{id} left the cohort at 50 %");
            assert_eq!(at100.evaluate(flag, &id, &Context::new()).unwrap().variant, "new", "{id} left the cohort at 100 %");
        }
    }
    assert!((2350..=2650).contains(&cohort), "{cohort}");
    // The beta organisation always gets the new variant.
    let e = at25.evaluate(flag, "anyone", &ctx(&[("organization_id", "beta_org")])).unwrap();
    assert_eq!((e.variant.as_str(), e.segment_keys.clone()), ("new", vec!["beta_users".to_string()]));
}

// ---------------------------------------------------------------- diagnostics

fn errors(text: &str) -> Vec<(Code, u32, u32, String, Option<String>)> {
    let l = load_str("f.yml", text);
    assert!(l.features.is_none(), "expected errors");
    l.diagnostics
        .into_iter()
        .filter(|d| d.is_error())
        .map(|d| (d.code, d.span.start.line, d.span.start.column, d.message, d.help))
        .collect()
}

#[test]
fn features_file_diagnostics_are_positioned() {
    let base = "version: \"1.4\"\nflags:\n  - key: f\n    enabled: true\n    variants: [{key: v}]\n    rules:\n      - segment: s\n        \
                distributions: [{variant: v, rollout: 100}]\nsegments:\n  - key: s\n    constraints:\n      - type: STRING_COMPARISON_TYPE\n        \
                property: p\n        operator: OPERATOR\n        value: x\n";
    // The enum-style spelling of the original project: an error at the operator, `eq` as help.
    let e = errors(&base.replace("OPERATOR", "EQ_COMPARISON_OPERATOR"));
    assert_eq!(e.len(), 1, "{e:?}");
    assert_eq!((e[0].0, e[0].1, e[0].2), (Code::Schema, 14, 19));
    assert_eq!(e[0].3, "unknown operator `EQ_COMPARISON_OPERATOR`");
    assert_eq!(e[0].4.as_deref(), Some("Flipt spells operators in lowercase: `eq`"));
    let e = errors(&base.replace("OPERATOR", "IS_ONE_OF_COMPARISON_OPERATOR").replace("value: x", "value: '[\"x\"]'"));
    assert_eq!(e[0].4.as_deref(), Some("Flipt spells operators in lowercase: `isoneof`"));
    // An operator of another type, a typo.
    let e = errors(&base.replace("OPERATOR", "gte"));
    assert_eq!((e[0].1, e[0].2, e[0].3.as_str()), (14, 19, "operator `gte` does not apply to STRING_COMPARISON_TYPE"));
    let e = errors(&base.replace("OPERATOR", "prefx"));
    assert_eq!(e[0].4.as_deref(), Some("did you mean `prefix`?"));

    let ok = base.replace("OPERATOR", "eq");
    assert!(load_str("f.yml", &ok).features.is_some());
    // Percentages outside 0..100.
    let e = errors(&ok.replace("rollout: 100", "rollout: 120"));
    assert_eq!((e[0].1, e[0].2, e[0].3.as_str()), (8, 47, "`rollout` must be from 0 to 100, not 120"));
    let e = errors(&ok.replace("rollout: 100", "rollout: -1"));
    assert_eq!(e[0].1, 8);
    // Unknown segment, with the closest name.
    let e = errors(&ok.replace("segment: s\n", "segment: ss\n"));
    assert_eq!((e[0].1, e[0].2, e[0].3.as_str(), e[0].4.as_deref()), (7, 18, "unknown segment `ss`", Some("did you mean `s`?")));
    // Unknown variant in a distribution.
    let e = errors(&ok.replace("{variant: v, rollout", "{variant: w, rollout"));
    assert_eq!((e[0].1, e[0].3.as_str()), (8, "flag `f` has no variant `w`"));
    // Duplicate flag keys, duplicate mapping keys.
    let dup = ok.replace("segments:", "  - key: f\n    enabled: false\nsegments:");
    let e = errors(&dup);
    assert_eq!((e[0].0, e[0].1, e[0].2, e[0].3.as_str()), (Code::DuplicateKey, 9, 10, "duplicate flag key `f`"));
    let e = errors(&ok.replace("    enabled: true\n", "    enabled: true\n    enabled: false\n"));
    assert_eq!((e[0].0, e[0].1, e[0].2), (Code::DuplicateKey, 5, 5));
    // Unknown fields, with help.
    let e = errors(&ok.replace("    enabled: true\n", "    enabeld: true\n"));
    assert_eq!(
        (e[0].1, e[0].2, e[0].3.as_str(), e[0].4.as_deref()),
        (4, 5, "unknown field `enabeld` in a flag", Some("did you mean `enabled`?"))
    );
    // Values that cannot be compared, a threshold out of range.
    let e = errors(&ok.replace("STRING_COMPARISON_TYPE", "NUMBER_COMPARISON_TYPE"));
    assert_eq!((e[0].1, e[0].3.as_str()), (15, "`x` is not a whole number"));
    let e = errors("flags:\n  - key: b\n    type: BOOLEAN_FLAG_TYPE\n    rollouts:\n      - threshold: {percentage: 101, value: true}\n");
    assert_eq!((e[0].1, e[0].2), (5, 33));
    // All errors at once.
    let many = ok.replace("rollout: 100", "rollout: 120").replace("operator: OPERATOR", "operator: EQ_COMPARISON_OPERATOR");
    assert!(errors(&many.replace("operator: eq", "operator: EQ_COMPARISON_OPERATOR")).len() >= 2);
}

// ---------------------------------------------------------------- file source and reload

#[tokio::test]
async fn a_file_source_reloads_and_keeps_the_last_good_flags() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("features.yml");
    std::fs::write(&path, rollout_file(0)).unwrap();
    let src = FlagSource::file(&path, "default");
    let _watch = src.watch(Duration::from_millis(20)).unwrap().expect("a file is watched");
    let flag = "task_abstraction_enabled";
    let e = src.evaluate(flag, Some(FlagType::Variant), "u1", &Context::new()).await.unwrap();
    assert_eq!(e.variant, "legacy");
    std::fs::write(&path, rollout_file(100)).unwrap();
    wait_for("the new flags", || async { src.evaluate(flag, None, "u1", &Context::new()).await.unwrap().variant == "new" }).await;
    // A broken edit keeps the last good flags, with the error in the status.
    std::fs::write(&path, rollout_file(100).replace("operator: eq", "operator: EQ_COMPARISON_OPERATOR")).unwrap();
    wait_for("the broken file to be seen", || async { !src.status().ok }).await;
    assert_eq!(src.evaluate(flag, None, "u1", &Context::new()).await.unwrap().variant, "new");
    let st = src.status();
    assert_eq!(st.flags, Some(1));
    assert!(st.diagnostics[0].message.contains("EQ_COMPARISON_OPERATOR"), "{st:?}");
    // Rollback: the next evaluations route back.
    std::fs::write(&path, rollout_file(0)).unwrap();
    wait_for("the rollback", || async { src.evaluate(flag, None, "u1", &Context::new()).await.unwrap().variant == "legacy" }).await;
    assert!(src.status().ok);
    // A file that never loaded serves nothing and says why.
    let broken = dir.path().join("broken.yml");
    std::fs::write(&broken, "flags: [").unwrap();
    let e = FlagSource::file(&broken, "default").evaluate(flag, None, "u", &Context::new()).await.unwrap_err();
    assert!(matches!(e, FlagError::Invalid { count: 1, .. }), "{e:?}");
    // Another namespace has no such flag.
    let other = FlagSource::file(&path, "staging");
    assert!(matches!(other.evaluate(flag, None, "u", &Context::new()).await, Err(FlagError::Eval(EvalError::NotFound { .. }))));
}

/// Wait (up to 10 s) until `f` holds.
async fn wait_for<F, Fut>(what: &str, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let poll = || {
        let check = f();
        async move { check.await.then_some(()) }
    };
    taskweave::backend::conformance::eventually(what, Duration::from_secs(10), Duration::from_millis(20), poll).await
}

// ---------------------------------------------------------------- remote Flipt (a local double)

#[tokio::test]
async fn a_remote_flipt_is_asked_through_the_api_of_the_flags_type_and_cached() {
    use wiremock::matchers::{body_partial_json, method, path};
    use wiremock::{Mock, MockServer, ResponseTemplate};
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/evaluate/v1/variant"))
        .and(body_partial_json(json!({"namespaceKey": "prod", "flagKey": "rollout", "entityId": "u1", "context": {"org": "acme"}})))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "match": true, "segmentKeys": ["everyone"], "reason": "MATCH_EVALUATION_REASON",
            "variantKey": "new", "variantAttachment": "{\"backend\":\"next\"}", "flagKey": "rollout"
        })))
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(path("/evaluate/v1/boolean"))
        .respond_with(
            ResponseTemplate::new(200).set_body_json(json!({"enabled": true, "reason": "DEFAULT_EVALUATION_REASON", "flagKey": "pg"})),
        )
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(path("/evaluate/v1/batch"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"responses": [
            {"type": "ERROR_EVALUATION_RESPONSE_TYPE", "errorResponse": {"flagKey": "gone", "namespaceKey": "prod", "reason": "NOT_FOUND_ERROR_EVALUATION_REASON"}}
        ]})))
        .mount(&server)
        .await;
    let src = FlagSource::remote(&server.uri(), "prod", Duration::from_secs(2), Duration::from_secs(60)).unwrap();
    let c = ctx(&[("org", "acme")]);
    for _ in 0..3 {
        // Asked once: the answer is cached.
        let e = src.evaluate("rollout", Some(FlagType::Variant), "u1", &c).await.unwrap();
        assert_eq!((e.matched, e.variant.as_str(), e.reason), (true, "new", Reason::Match));
        assert_eq!(e.attachment, Some(json!({"backend": "next"})));
        assert_eq!(e.segment_keys, vec!["everyone"]);
    }
    let e = src.evaluate("pg", Some(FlagType::Boolean), "u1", &c).await.unwrap();
    assert_eq!((e.enabled, e.reason), (true, Reason::Default));
    let e = src.evaluate("gone", None, "u1", &c).await.unwrap_err();
    assert!(matches!(e, FlagError::Eval(EvalError::NotFound { .. })), "{e:?}");
    server.verify().await;
}

#[tokio::test]
async fn remote_errors_and_timeouts_are_errors() {
    use wiremock::matchers::{method, path};
    use wiremock::{Mock, MockServer, ResponseTemplate};
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/evaluate/v1/variant"))
        .respond_with(ResponseTemplate::new(400).set_body_json(json!({"code": 3, "message": "flag \"pg\" is not a variant flag"})))
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(path("/evaluate/v1/boolean"))
        .respond_with(ResponseTemplate::new(200).set_delay(Duration::from_secs(5)).set_body_json(json!({"enabled": true})))
        .mount(&server)
        .await;
    let src = FlagSource::remote(&server.uri(), "default", Duration::from_millis(300), Duration::from_secs(5)).unwrap();
    let e = src.evaluate("pg", Some(FlagType::Variant), "u", &Context::new()).await.unwrap_err();
    assert!(e.to_string().contains("HTTP 400: flag \"pg\" is not a variant flag"), "{e}");
    let started = std::time::Instant::now();
    let e = src.evaluate("pg", Some(FlagType::Boolean), "u", &Context::new()).await.unwrap_err();
    assert!(e.to_string().contains("no answer within the timeout"), "{e}");
    assert!(started.elapsed() < Duration::from_secs(4), "the timeout bounds the wait: {:?}", started.elapsed());
    // Nothing listens here.
    let closed = FlagSource::remote("http://127.0.0.1:9", "default", Duration::from_millis(500), Duration::ZERO).unwrap();
    assert!(matches!(closed.evaluate("x", None, "u", &Context::new()).await, Err(FlagError::Remote(_))));
}

// ---------------------------------------------------------------- routing through the engine

const ROUTED: &str = r#"
version: 1
name: routed
backend:
  flag: task_abstraction_enabled
  variants: {new: next, legacy: legacy}
  default: legacy
tasks:
  - {name: a, uses: echo, with: {x: 1}}
"#;

const ROUTED_BY_USER: &str = r#"
version: 1
name: by-user
backend:
  flag: task_abstraction_enabled
  entity: "{{context.user_id}}"
  variants: {new: next, legacy: legacy}
  default: legacy
tasks:
  - {name: a, uses: echo}
"#;

const ROUTED_BOOLEAN: &str = r#"
version: 1
name: by-bool
backend: {flag: pg_queue_enabled, enabled: next, disabled: legacy}
tasks:
  - {name: a, uses: echo}
"#;

const TWO_BACKENDS: &str =
    "[engine]\ndefault_backend = \"legacy\"\n[backends.legacy]\nkind = \"local\"\n[backends.next]\nkind = \"local\"\n";

async fn routed_engine(store: &str, flags: Option<FlagSource>) -> Engine {
    let mut b = EngineBuilder::new().config(Config::parse(TWO_BACKENDS).unwrap()).store(store).watch_flags(false);
    if let Some(f) = flags {
        b = b.flags(f);
    }
    let e = b.build().await.expect("engine");
    for y in [ROUTED, ROUTED_BY_USER, ROUTED_BOOLEAN] {
        e.register_workflow(workflow(y));
    }
    e
}

async fn finish(e: &Engine, id: &str) -> taskweave::run::RunResult {
    let r = e.get_result(id, Some(Duration::from_secs(30))).await.unwrap();
    assert!(r.is_done(), "{id} did not finish");
    r
}

fn opts(entity: Option<&str>, context: Value) -> RunOptions {
    RunOptions { entity_id: entity.map(str::to_string), context: Some(context), ..Default::default() }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollout_routes_runs_between_two_backends() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("features.yml");
    std::fs::write(&path, rollout_file(50)).unwrap();
    let src = FlagSource::file(&path, "default");
    let e = routed_engine("sqlite::memory:", Some(src.clone())).await;
    let at50 = features(&rollout_file(50));
    let mut seen = HashMap::new();
    for i in 0..60 {
        let entity = format!("user-{i}");
        let id = e.run_workflow("routed", opts(Some(&entity), json!({"plan": "pro"}))).await.unwrap();
        let r = finish(&e, &id).await;
        let expected = at50.evaluate("task_abstraction_enabled", &entity, &Context::new()).unwrap();
        let backend = if expected.variant == "new" { "next" } else { "legacy" };
        assert_eq!(r.status, RunStatus::Succeeded);
        assert_eq!(r.backend, backend, "{entity}");
        let routing = r.routing.clone().expect("routing recorded");
        assert_eq!(
            (routing.flag.as_str(), routing.variant.as_deref(), routing.reason.as_str()),
            ("task_abstraction_enabled", Some(expected.variant.as_str()), "MATCH")
        );
        assert_eq!(routing.backend, backend);
        assert_eq!(routing.segment_keys, vec!["everyone"]);
        // The same entity always goes the same way.
        let again = e.run_workflow("routed", opts(Some(&entity), json!({}))).await.unwrap();
        assert_eq!(finish(&e, &again).await.backend, backend);
        *seen.entry(backend).or_insert(0) += 1;
    }
    assert!(seen.len() == 2, "both backends used: {seen:?}");
    // The organisation segment goes to the new backend whatever the entity.
    let id = e.run_workflow("routed", opts(Some("user-1"), json!({"organization_id": "beta_org"}))).await.unwrap();
    let r = finish(&e, &id).await;
    assert_eq!((r.backend.as_str(), r.routing.unwrap().segment_keys), ("next", vec!["beta_users".to_string()]));
    // Without an entity id the run id is the entity.
    let id = e.run_workflow("routed", opts(None, json!({}))).await.unwrap();
    let r = finish(&e, &id).await;
    assert_eq!(r.entity_id, id);
    let expected = at50.evaluate("task_abstraction_enabled", &id, &Context::new()).unwrap().variant;
    assert_eq!(r.routing.unwrap().variant.as_deref(), Some(expected.as_str()));
    // The rule's entity template.
    let id = e.run_workflow("by-user", opts(None, json!({"user_id": "user-3"}))).await.unwrap();
    let r = finish(&e, &id).await;
    let expected = at50.evaluate("task_abstraction_enabled", "user-3", &Context::new()).unwrap().variant;
    assert_eq!((r.entity_id.as_str(), r.routing.unwrap().variant.as_deref()), ("user-3", Some(expected.as_str())));
    // A template reading what the caller did not give: the default backend, the error recorded.
    let id = e.run_workflow("by-user", opts(None, json!({}))).await.unwrap();
    let r = finish(&e, &id).await;
    let routing = r.routing.unwrap();
    assert_eq!((r.backend.as_str(), routing.reason.as_str()), ("legacy", "ERROR"));
    assert!(routing.error.unwrap().contains("entity"));
    // A caller's backend wins over the rule.
    let id = e
        .run_workflow("routed", RunOptions { backend: Some("next".into()), entity_id: Some("user-0".into()), ..Default::default() })
        .await
        .unwrap();
    let r = finish(&e, &id).await;
    assert_eq!((r.backend.as_str(), r.routing), ("next", None));

    // Rollback is editing the flag file: the next runs route back; started runs never move.
    std::fs::write(&path, rollout_file(0)).unwrap();
    assert!(src.reload());
    for i in 0..20 {
        let id = e.run_workflow("routed", opts(Some(&format!("user-{i}")), json!({}))).await.unwrap();
        assert_eq!(finish(&e, &id).await.backend, "legacy");
    }
    // A boolean flag the file does not define: an error, counted, on the default backend.
    let id = e.run_workflow("by-bool", opts(Some("u"), json!({}))).await.unwrap();
    let r = finish(&e, &id).await;
    assert_eq!(r.backend, "legacy");
    assert!(r.routing.unwrap().error.unwrap().contains("not found"));
    e.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusing_backend_falls_back_to_the_rules_default() {
    let e = routed_engine("sqlite::memory:", Some(FlagSource::from_features(features(&rollout_file(100))))).await;
    // `next` stops accepting runs: it refuses before accepting.
    e.backends().get("next").unwrap().shutdown().await;
    let id = e.run_workflow("routed", opts(Some("u1"), json!({}))).await.unwrap();
    let r = finish(&e, &id).await;
    assert_eq!(r.status, RunStatus::Succeeded);
    assert_eq!(r.backend, "legacy");
    let routing = r.routing.unwrap();
    assert_eq!((routing.variant.as_deref(), routing.backend.as_str()), (Some("new"), "legacy"));
    let fb = routing.fallback.expect("recorded as a fallback");
    assert_eq!(fb.from, "next");
    assert!(fb.error.contains("refused"), "{}", fb.error);
    let text = taskweave::api::Metrics::with_routing(e.routing_metrics()).render();
    assert!(text.contains(r#"taskweave_routing_fallbacks_total{workflow="routed",from="next",to="legacy"} 1"#), "{text}");
    e.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_flipt_sends_runs_to_the_default_within_the_timeout() {
    let src = FlagSource::remote("http://127.0.0.1:9", "default", Duration::from_millis(500), Duration::from_secs(1)).unwrap();
    let e = routed_engine("sqlite::memory:", Some(src)).await;
    let started = std::time::Instant::now();
    let id = e.run_workflow("routed", opts(Some("u1"), json!({}))).await.unwrap();
    assert!(started.elapsed() < Duration::from_secs(5));
    let r = finish(&e, &id).await;
    let routing = r.routing.unwrap();
    assert_eq!((r.backend.as_str(), routing.reason.as_str()), ("legacy", "ERROR"));
    assert!(routing.error.unwrap().contains("flag server"));
    let text = taskweave::api::Metrics::with_routing(e.routing_metrics()).render();
    assert!(text.contains(r#"taskweave_flag_evaluation_errors_total{workflow="routed",flag="task_abstraction_enabled"} 1"#), "{text}");
    assert!(text.contains(r#"taskweave_routing_decisions_total{workflow="routed",flag="task_abstraction_enabled",variant="",reason="ERROR",backend="legacy"} 1"#), "{text}");
    e.shutdown().await;
}

// ---------------------------------------------------------------- the dashboard, SQLite and PostgreSQL

async fn dashboard_case(store_url: &str) {
    let e = routed_engine(store_url, Some(FlagSource::from_features(features(&rollout_file(50))))).await;
    let at50 = features(&rollout_file(50));
    let mut expected: HashMap<&str, u64> = HashMap::new();
    let mut ids = Vec::new();
    for i in 0..40 {
        let entity = format!("user-{i}");
        let v = at50.evaluate("task_abstraction_enabled", &entity, &Context::new()).unwrap().variant;
        *expected.entry(if v == "new" { "next" } else { "legacy" }).or_default() += 1;
        ids.push(e.run_workflow("routed", opts(Some(&entity), json!({}))).await.unwrap());
    }
    // Three plain runs on the engine's default, one refused-and-fallen-back run.
    for _ in 0..3 {
        ids.push(e.run_workflow("routed", RunOptions { backend: Some("legacy".into()), ..Default::default() }).await.unwrap());
    }
    *expected.entry("legacy").or_default() += 3;
    for id in &ids {
        finish(&e, id).await;
    }
    e.shutdown().await;
    // A second engine on the same store: the dashboard reads history only.
    let e = routed_engine(store_url, None).await;
    let stats = e
        .store()
        .unwrap()
        .rollout_stats(&RolloutFilter { since: time::OffsetDateTime::now_utc() - Duration::from_secs(3600), workflow: None })
        .await
        .unwrap();
    assert_eq!(stats.total, 43);
    assert_eq!(stats.fallbacks, 0);
    assert_eq!(stats.flag_errors, 0);
    for b in &stats.backends {
        assert_eq!(b.runs, expected[b.backend.as_str()], "{b:?}");
        assert_eq!(b.success_rate, Some(100.0));
        assert!(b.p50_ms.is_some() && b.p95_ms.is_some() && b.p50_ms <= b.p95_ms, "{b:?}");
        assert!((b.share - b.runs as f64 * 100.0 / 43.0).abs() < 0.01);
    }
    let routed: u64 = stats.variants.iter().map(|v| v.runs).sum();
    assert_eq!(routed, 40);
    for v in &stats.variants {
        assert_eq!(v.flag, "task_abstraction_enabled");
        assert_eq!(v.reason.as_deref(), Some("MATCH"));
        let backend = if v.variant.as_deref() == Some("new") { "next" } else { "legacy" };
        assert_eq!(v.backend, backend);
    }
    // One workflow, a window that holds nothing.
    let none = e
        .store()
        .unwrap()
        .rollout_stats(&RolloutFilter { since: time::OffsetDateTime::now_utc() + Duration::from_secs(60), workflow: None })
        .await
        .unwrap();
    assert_eq!((none.total, none.backends.len()), (0, 0));
    let other = e.rollout_status(Duration::from_secs(3600), Some("by-user".into())).await.unwrap();
    assert_eq!(other.stats.total, 0);
    e.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    dashboard_case(&format!("sqlite://{}", dir.path().join("state.db").display())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_on_postgres() {
    let admin_url =
        std::env::var("TASKWEAVE_TEST_DATABASE_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_string());
    let db = match taskweave::backend::conformance::FreshDatabase::create_on(&admin_url, "tw_flags").await {
        Ok(db) => db,
        Err(why) => {
            taskweave::backend::conformance::skipped(&format!("dashboard_on_postgres: {why}"));
            return;
        }
    };
    dashboard_case(&db.url()).await;
}

// ---------------------------------------------------------------- the CLI

fn bin() -> assert_cmd::Command {
    assert_cmd::Command::cargo_bin("taskweave").unwrap()
}

#[test]
fn cli_eval_validate_and_batch() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("features.yml");
    std::fs::write(&file, rollout_file(25)).unwrap();
    let f = file.to_str().unwrap();
    let out = bin()
        .args([
            "flags",
            "eval",
            "task_abstraction_enabled",
            "--entity",
            "u1",
            "--context",
            "organization_id=beta_org",
            "--file",
            f,
            "--format",
            "json",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        v,
        json!({"flag": "task_abstraction_enabled", "entity_id": "u1", "match": true, "variant": "new", "reason": "MATCH", "segment_keys": ["beta_users"]})
    );
    let out = bin().args(["flags", "eval", "task_abstraction_enabled", "--entity", "u1", "--file", f]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("reason    MATCH") && text.contains("segments  everyone"), "{text}");

    // Batch: one answer a line, in order; a missing flag is an error line.
    let queries = dir.path().join("q.jsonl");
    let mut q = String::new();
    for i in 0..200 {
        q.push_str(&json!({"flag": "task_abstraction_enabled", "entity_id": format!("e{i}"), "context": {"n": i}}).to_string());
        q.push('\n');
    }
    q.push_str("{\"flag\": \"nope\", \"entity_id\": \"x\"}\n");
    std::fs::write(&queries, q).unwrap();
    let out = bin().args(["flags", "eval", "--file", f, "--queries", queries.to_str().unwrap()]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let lines: Vec<Value> = String::from_utf8_lossy(&out.stdout).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 201);
    let f25 = features(&rollout_file(25));
    for (i, l) in lines[..200].iter().enumerate() {
        let want = f25.evaluate("task_abstraction_enabled", &format!("e{i}"), &Context::new()).unwrap();
        assert_eq!(l["entity_id"], format!("e{i}"));
        assert_eq!(l["variant"], want.variant);
    }
    assert_eq!(lines[200]["error"], "flag `nope` not found in namespace `default`");

    // validate: 0 on a good file, 1 with the positioned error on a bad one.
    bin().args(["flags", "validate", f]).assert().success();
    std::fs::write(&file, rollout_file(25).replace("operator: eq", "operator: EQ_COMPARISON_OPERATOR")).unwrap();
    let out = bin().args(["flags", "validate", f, "--format", "json"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let d: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!((d[0]["line"].as_u64(), d[0]["help"].as_str()), (Some(21), Some("Flipt spells operators in lowercase: `eq`")));
}

#[test]
fn cli_migration_status_reads_the_store() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("taskweave.toml");
    std::fs::write(dir.path().join("features.yml"), rollout_file(100)).unwrap();
    std::fs::write(
        &cfg,
        "[engine]\ndefault_backend = \"legacy\"\nstore = \"sqlite://state.db\"\n[backends.legacy]\nkind = \"local\"\n\
         [backends.next]\nkind = \"local\"\n[flags]\nsource = \"features.yml\"\n",
    )
    .unwrap();
    let wf = dir.path().join("routed.yaml");
    std::fs::write(&wf, ROUTED).unwrap();
    let out = bin()
        .args(["--config", cfg.to_str().unwrap(), "run", wf.to_str().unwrap(), "--entity", "u9", "--format", "json"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let run: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(run["backend"], "next");
    assert_eq!(run["routing"]["variant"], "new");
    assert_eq!(run["routing"]["backend"], "next");
    let out = bin().args(["--config", cfg.to_str().unwrap(), "migration", "status", "--format", "json"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let m: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(m["total"], 1);
    assert_eq!(m["backends"][0]["backend"], "next");
    assert_eq!(m["variants"][0]["variant"], "new");
    assert_eq!(m["flags"]["ok"], true);
    let out = bin().args(["--config", cfg.to_str().unwrap(), "migration", "status", "--since", "1h"]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("1 run(s) in the last 1h") && text.contains("next"), "{text}");
    bin().args(["--config", cfg.to_str().unwrap(), "migration", "status", "--since", "soon"]).assert().code(2);
}

#[test]
fn doctor_reports_a_broken_flag_file_at_its_position() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("taskweave.toml");
    std::fs::write(&cfg, "[engine]\nstore = \"sqlite://state.db\"\nworkflows = []\n[flags]\nsource = \"features.yml\"\n").unwrap();
    std::fs::write(dir.path().join("features.yml"), rollout_file(5)).unwrap();
    let out = bin().args(["--config", cfg.to_str().unwrap(), "doctor"]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success(), "{text}");
    assert!(text.contains("features.yml: 1 flag(s), 2 segment(s)"), "{text}");
    std::fs::write(dir.path().join("features.yml"), rollout_file(5).replace("operator: eq", "operator: EQ_COMPARISON_OPERATOR")).unwrap();
    let out = bin().args(["--config", cfg.to_str().unwrap(), "doctor"]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert_eq!(out.status.code(), Some(1), "{text}");
    let line = text.lines().find(|l| l.contains("flags")).unwrap();
    assert!(line.starts_with("FAIL") && line.contains("features.yml:21:") && line.contains("EQ_COMPARISON_OPERATOR"), "{line}");
}
