//! Every workflow shipped in `workflows/` and `examples/` is valid: no
//! errors, no warnings. Each top folder is checked as one group, so a
//! workflow name declared twice in it is a `duplicate-workflow` error, as
//! with `taskweave validate workflows/`. Every YAML workflow starts with the
//! `$schema` modeline that points editors at `schemas/workflow.schema.json`.
//!
//! `examples/` also holds files that are not workflows (a `taskweave.toml`
//! configuration, Flipt feature files, Rust programs); a YAML or TOML file
//! counts as a workflow when its top level has a `tasks` key, or when it
//! does not even parse (so a broken workflow cannot hide by being broken).

use std::path::{Path, PathBuf};
use taskweave::spec::{self, Format};
use taskweave::validate::{self, Checked, Options};

const MODELINE: &str = "# yaml-language-server: $schema=";
const ROOTS: [&str; 2] = ["workflows", "examples"];

fn root(dir: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(dir)
}

/// Files known by name not to be workflows.
fn known_non_workflow(path: &Path) -> bool {
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
    name == "taskweave.toml"
        || name == "Cargo.toml"
        || name.ends_with(".features.yml")
        || name.ends_with(".features.yaml")
        || name == "features.yml"
        || name == "features.yaml"
        || name == "flipt.yml"
        || name == "flipt.yaml"
}

/// Whether a YAML/TOML file is a workflow definition (see the module doc).
fn is_workflow(path: &Path) -> bool {
    if known_non_workflow(path) {
        return false;
    }
    let Some(format) = Format::from_path(path) else {
        return false;
    };
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    let file = path.display().to_string();
    let Ok(text) = spec::decode(&file, &bytes) else {
        return true;
    };
    match spec::parse(&file, &text, format) {
        Ok(doc) => doc.value.get("tasks").is_some(),
        Err(_) => true,
    }
}

/// The workflow files under one top folder, recursively.
fn workflow_files(dir: &str) -> Vec<PathBuf> {
    let root = root(dir);
    if !root.is_dir() {
        return Vec::new();
    }
    validate::find_files(&root)
        .unwrap_or_else(|e| panic!("cannot list {}: {e}", root.display()))
        .into_iter()
        .filter(|p| is_workflow(p))
        .collect()
}

/// What `taskweave validate` knows without a configuration: the built-in handlers.
fn options() -> Options {
    Options::default().with_builtin_handlers()
}

/// Check one folder's workflows as one group (duplicate names included).
fn check_group(dir: &str) -> Vec<Checked> {
    let files = workflow_files(dir);
    let mut group = validate::check_paths(&files, &options()).unwrap_or_else(|e| panic!("cannot check {dir}/: {e}"));
    validate::duplicate_workflows(&mut group);
    group
}

fn render(checked: &[Checked]) -> String {
    checked
        .iter()
        .flat_map(|c| c.diagnostics.iter().map(move |d| taskweave::diag::render_human(d, c.text.as_deref(), false)))
        .collect::<Vec<_>>()
        .join("\n\n")
}

#[test]
fn every_workflow_validates_without_diagnostics() {
    let mut total = 0;
    for dir in ROOTS {
        let group = check_group(dir);
        total += group.len();
        let bad: Vec<Checked> = group.into_iter().filter(|c| !c.diagnostics.is_empty()).collect();
        assert!(bad.is_empty(), "workflows under {dir}/ have diagnostics:\n\n{}", render(&bad));
    }
    assert!(total >= 5, "expected the shipped workflows, found only {total}");
}

#[test]
fn every_workflow_compiles() {
    for dir in ROOTS {
        for c in check_group(dir) {
            assert!(c.workflow.is_some(), "{} did not compile into a workflow", c.file);
        }
    }
}

/// `taskweave validate workflows/` (what CI and the README run) is clean:
/// that folder holds only workflows.
#[test]
fn workflows_folder_validates_as_a_whole() {
    let checked = validate::check_paths(&[root("workflows")], &options()).expect("workflows/ is readable");
    let names: Vec<&str> = checked.iter().filter_map(|c| c.name.as_ref().map(|(n, _)| n.as_str())).collect();
    for expected in
        ["hello", "diamond", "document-processing-v2", "document-processing-v2-toml", "all-actions", "two-sources", "review-pipeline"]
    {
        assert!(names.contains(&expected), "workflows/ lacks `{expected}` (found {names:?})");
    }
    assert!(checked.iter().all(|c| c.diagnostics.is_empty()), "taskweave validate workflows/ reports:\n\n{}", render(&checked));
}

#[test]
fn every_yaml_workflow_starts_with_the_schema_modeline() {
    let schema = root("schemas/workflow.schema.json");
    for dir in ROOTS {
        for path in workflow_files(dir) {
            if Format::from_path(&path) != Some(Format::Yaml) {
                continue;
            }
            let text = std::fs::read_to_string(&path).unwrap();
            let first = text.lines().next().unwrap_or("");
            let target = first.strip_prefix(MODELINE).unwrap_or_else(|| {
                panic!("{} must start with `{MODELINE}<relative path to schemas/workflow.schema.json>`, found `{first}`", path.display())
            });
            let resolved = path.parent().unwrap().join(target.trim());
            let same = resolved.canonicalize().ok() == schema.canonicalize().ok();
            assert!(same, "{}: the modeline points at `{}`, which is not schemas/workflow.schema.json", path.display(), target.trim());
        }
    }
}

/// The YAML and TOML forms of document-processing-v2 are the same document;
/// only the name differs (names are unique in a folder).
#[test]
fn yaml_and_toml_forms_are_the_same_document() {
    let load = |name: &str, format: Format| {
        let path = root("workflows").join(name);
        let text = std::fs::read_to_string(&path).unwrap();
        let mut doc = spec::parse(name, &text, format).unwrap_or_else(|_| panic!("{name} parses")).value;
        doc.as_object_mut().unwrap().remove("name");
        doc
    };
    assert_eq!(load("document-processing-v2.yaml", Format::Yaml), load("document-processing-v2.toml", Format::Toml));
}

/// The rollout example validates against its own configuration: its
/// backends exist, and its flag is defined in the features file it names.
#[test]
fn the_rollout_example_validates_against_its_configuration() {
    let config = taskweave::config::Config::load(Some(&root("examples/rollout/taskweave.toml"))).expect("the example configuration loads");
    let opts = taskweave::engine::validate_options(&config);
    let flags = opts.flags.as_ref().expect("a features file is configured");
    let known = flags.known().expect("the features file loads");
    assert!(known.keys.iter().any(|k| k == "task_abstraction_enabled"), "{known:?}");
    let checked = validate::check_paths(&[root("examples/rollout/workflows")], &opts).expect("readable");
    assert!(!checked.is_empty());
    assert!(checked.iter().all(|c| c.diagnostics.is_empty()), "{}", render(&checked));
}
