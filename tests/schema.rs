//! The committed `schemas/workflow.schema.json` is generated from the Rust
//! types in `engine/spec/raw.rs`. These tests keep the two in step, and check
//! that the committed file is a valid JSON Schema (draft 2020-12), since
//! editors and `check-jsonschema` read it directly.
//!
//! Refresh the file after changing the types:
//!
//! ```text
//! UPDATE_SCHEMA=1 cargo test --test schema
//! ```

use serde_json::Value;
use std::path::PathBuf;

fn schema_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("schemas/workflow.schema.json")
}

fn committed() -> String {
    let path = schema_path();
    std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "cannot read {}: {e}\nGenerate it with `UPDATE_SCHEMA=1 cargo test --test schema` \
             (or `cargo run -q -- schema > schemas/workflow.schema.json`).",
            path.display()
        )
    })
}

/// The first line that differs, for a readable failure message.
fn first_difference(a: &str, b: &str) -> String {
    let mut la = a.lines();
    let mut lb = b.lines();
    let mut n = 1;
    loop {
        match (la.next(), lb.next()) {
            (Some(x), Some(y)) if x == y => n += 1,
            (None, None) => {
                return "the files differ only in line endings or a trailing newline".into();
            }
            (x, y) => {
                return format!(
                    "first difference at line {n}:\n  committed: {}\n  generated: {}",
                    x.unwrap_or("<end of file>"),
                    y.unwrap_or("<end of file>")
                );
            }
        }
    }
}

#[test]
fn committed_schema_matches_the_types() {
    let generated = taskweave::spec::raw::json_schema_text();
    let path = schema_path();
    if std::env::var_os("UPDATE_SCHEMA").is_some_and(|v| !v.is_empty() && v != "0") {
        // Write then rename, so a test reading the file meanwhile never sees half of it.
        let tmp = path.with_extension("json.tmp");
        std::fs::write(&tmp, &generated).unwrap();
        std::fs::rename(&tmp, &path).unwrap();
        eprintln!("wrote {}", path.display());
        return;
    }
    let committed = committed();
    assert!(
        committed == generated,
        "schemas/workflow.schema.json is out of date with engine/spec/raw.rs ({}).\n\
         Regenerate it with `UPDATE_SCHEMA=1 cargo test --test schema` and commit the result.",
        first_difference(&committed, &generated)
    );
}

#[test]
fn committed_schema_is_valid_draft_2020_12() {
    let schema: Value = serde_json::from_str(&committed()).expect("schemas/workflow.schema.json is JSON");
    assert_eq!(
        schema.get("$schema").and_then(Value::as_str),
        Some("https://json-schema.org/draft/2020-12/schema"),
        "the schema must declare draft 2020-12"
    );
    if let Err(e) = jsonschema::meta::validate(&schema) {
        panic!("schemas/workflow.schema.json is not a valid JSON Schema: {e} (at {})", e.instance_path());
    }
    assert!(jsonschema::meta::is_valid(&schema));
    assert!(jsonschema::draft202012::meta::is_valid(&schema));
    // It also compiles into a validator, as the engine and editors need.
    jsonschema::validator_for(&schema).expect("the schema compiles");
}

#[test]
fn schema_command_prints_the_committed_schema() {
    let out = assert_cmd::Command::cargo_bin("taskweave").unwrap().arg("schema").output().unwrap();
    assert!(out.status.success(), "`taskweave schema` failed: {}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8(out.stdout).unwrap(), taskweave::spec::raw::json_schema_text());
}
