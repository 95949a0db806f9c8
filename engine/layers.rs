//! The layers of the engine point one way. This test reads the `crate::…`
//! paths of every source file and fails on an edge the table below does not
//! allow, and on a cycle between the files of one folder (`super::x`).
//!
//! ```text
//! diag <- spec <- plan <- validate <- reload
//!                  plan <- run <- store <- config <- flags (and validate)
//!   backend (run, store, config, reload) <- engine (the facade)
//!   <- api, bench <- cli
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Module -> the modules it may use (besides itself).
const ALLOWED: &[(&str, &[&str])] = &[
    ("diag", &[]),
    ("spec", &["diag"]),
    ("plan", &["diag", "spec"]),
    ("validate", &["diag", "spec", "plan"]),
    ("reload", &["diag", "spec", "plan", "validate"]),
    ("run", &["diag", "spec", "plan", "validate"]),
    ("store", &["diag", "spec", "plan", "run"]),
    ("config", &["diag", "spec", "plan", "run", "store"]),
    ("flags", &["diag", "spec", "plan", "validate", "run", "config"]),
    ("backend", &["diag", "spec", "plan", "validate", "reload", "run", "store", "config"]),
    ("engine", &["diag", "spec", "plan", "validate", "reload", "run", "store", "config", "flags", "backend"]),
    ("api", &["diag", "spec", "plan", "validate", "reload", "run", "store", "config", "flags", "backend", "engine"]),
    ("bench", &["diag", "spec", "plan", "validate", "reload", "run", "store", "config", "flags", "backend", "engine", "api"]),
    ("cli", &["diag", "spec", "plan", "validate", "reload", "run", "store", "config", "flags", "backend", "engine", "api", "bench"]),
];

fn files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// The code of a file without its comments (line comments, doc comments).
fn code(text: &str) -> String {
    text.lines().map(|l| l.split("//").next().unwrap_or_default()).collect::<Vec<_>>().join("\n")
}

/// The first segments after each `prefix` (`crate::run::x` -> `run`), macros
/// (`crate::name!`) left out.
fn targets(code: &str, prefix: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for (i, _) in code.match_indices(prefix) {
        if code[..i].ends_with(|c: char| c.is_alphanumeric() || c == '_' || c == ':') {
            continue;
        }
        let rest = &code[i + prefix.len()..];
        let name: String = rest.chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
        if !name.is_empty() && !rest[name.len()..].starts_with('!') {
            out.insert(name);
        }
    }
    out
}

/// `crate::x` edges, `use crate::{a, b}` groups included.
fn crate_edges(code: &str) -> BTreeSet<String> {
    let mut out = targets(code, "crate::");
    for (i, _) in code.match_indices("crate::{") {
        let group = &code[i + 8..];
        let group = &group[..group.find('}').unwrap_or(group.len())];
        out.extend(group.split(',').filter_map(|s| s.trim().split("::").next()).filter(|s| !s.is_empty()).map(str::to_string));
    }
    out
}

#[test]
fn layers_point_one_way() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("engine");
    let allowed: BTreeMap<&str, &[&str]> = ALLOWED.iter().copied().collect();
    let mut all = Vec::new();
    files(&root, &mut all);
    let mut bad = Vec::new();
    for f in &all {
        let rel = f.strip_prefix(&root).unwrap();
        let first = rel.components().next().unwrap().as_os_str().to_str().unwrap();
        let module = first.trim_end_matches(".rs");
        let Some(ok) = allowed.get(module) else { continue };
        for to in crate_edges(&code(&std::fs::read_to_string(f).unwrap())) {
            if to != module && allowed.contains_key(to.as_str()) && !ok.contains(&to.as_str()) {
                bad.push(format!("{}: {module} -> {to}", rel.display()));
            }
        }
    }
    assert!(bad.is_empty(), "forbidden edges between layers:\n{}", bad.join("\n"));
}

#[test]
fn files_of_one_folder_do_not_use_each_other_in_a_cycle() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("engine");
    let mut all = Vec::new();
    files(&root, &mut all);
    // folder -> file stem -> the siblings it uses through `super::`.
    let mut graphs: BTreeMap<PathBuf, BTreeMap<String, BTreeSet<String>>> = BTreeMap::new();
    for f in &all {
        let stem = f.file_stem().unwrap().to_str().unwrap().to_string();
        if stem == "mod" {
            continue;
        }
        let dir = f.parent().unwrap().to_path_buf();
        let siblings: BTreeSet<String> = std::fs::read_dir(&dir)
            .unwrap()
            .filter_map(|e| e.ok()?.path().file_stem()?.to_str().map(str::to_string))
            .filter(|s| s != "mod" && *s != stem)
            .collect();
        let uses = targets(&code(&std::fs::read_to_string(f).unwrap()), "super::").into_iter().filter(|t| siblings.contains(t)).collect();
        graphs.entry(dir).or_default().insert(stem, uses);
    }
    let mut cycles = Vec::new();
    for (dir, g) in &graphs {
        let mut graph = petgraph::graphmap::DiGraphMap::<&str, ()>::new();
        for (from, tos) in g {
            graph.add_node(from);
            for to in tos {
                graph.add_edge(from, to, ());
            }
        }
        for scc in petgraph::algo::tarjan_scc(&graph) {
            if scc.len() > 1 {
                cycles.push(format!("{}: {}", dir.strip_prefix(&root).unwrap_or(dir).display(), scc.join(" <-> ")));
            }
        }
    }
    assert!(cycles.is_empty(), "files that use each other:\n{}", cycles.join("\n"));
}

#[test]
fn the_edge_reader_sees_paths_groups_and_not_macros_or_comments() {
    let src = "use crate::run::x;\nuse crate::{plan::Workflow, store};\ncrate::conformance_tests!();\n// crate::cli\nlet a = ::crate_x::y;";
    let edges = crate_edges(&code(src));
    assert_eq!(edges.into_iter().collect::<Vec<_>>(), ["plan", "run", "store"]);
}
