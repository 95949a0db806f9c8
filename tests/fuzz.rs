//! Robustness of the validator: whatever the bytes, `check_bytes` returns
//! diagnostics, and rendering them works — no panic, no hang, no stack
//! overflow. Property tests feed arbitrary bytes, YAML-ish and TOML-ish text
//! from small grammars, generated task graphs, and mutations of the shipped
//! workflows; explicit tests feed hostile inputs (huge, deep, alias bombs,
//! many duplicate keys).
//!
//! Each property runs `PROPTEST_CASES` cases (default 2,000, so the suite
//! stays fast); for a long run: `PROPTEST_CASES=250000 cargo test --release --test fuzz`.

use proptest::prelude::*;
use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::{Duration, Instant};
use taskweave::Code;
use taskweave::diag::{render_github, render_human, render_json};
use taskweave::spec::Format;
use taskweave::validate::{Checked, Options, check_bytes};

fn config() -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(2_000);
    ProptestConfig {
        cases,
        // Shrinking a failure is worth it, but never for hours.
        max_shrink_time: 60_000,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// Backends with their kinds and the built-in handlers, so every rule runs.
fn options() -> &'static Options {
    static OPTIONS: std::sync::OnceLock<Options> = std::sync::OnceLock::new();
    OPTIONS.get_or_init(|| {
        let kinds = [("local", "local"), ("celery", "celery")].iter().map(|(n, k)| (n.to_string(), k.to_string())).collect();
        Options {
            backends: Some(vec!["local".into(), "celery".into()]),
            backend_kinds: Some((kinds, "local".into())),
            ..Default::default()
        }
        .with_builtin_handlers()
    })
}

/// Check, render every diagnostic in every format, and assert the invariants
/// every consumer relies on.
fn exercise(bytes: &[u8], format: Format) -> Checked {
    let checked = check_bytes("fuzz.yaml", bytes, format, options());
    for d in &checked.diagnostics {
        assert!(d.span.start.line >= 1 && d.span.start.column >= 1, "position is 1-based: {d:?}");
        assert!(d.span.end >= d.span.start, "span ends after it starts: {d:?}");
        assert!(!d.message.is_empty(), "a message: {d:?}");
        let text = render_human(d, checked.text.as_deref(), false);
        assert!(text.contains(d.code.as_str()));
        render_github(d);
    }
    let json = render_json(&checked.diagnostics);
    assert!(json.starts_with('['));
    let errors = checked.diagnostics.iter().any(|d| d.is_error());
    assert_eq!(checked.workflow.is_some(), !errors, "a workflow exactly when there is no error: {:?}", checked.diagnostics);
    checked
}

fn both(bytes: &[u8]) {
    exercise(bytes, Format::Yaml);
    exercise(bytes, Format::Toml);
}

// ---------------------------------------------------------------------------
// Grammars

const KEYS: &[&str] = &[
    "version",
    "name",
    "description",
    "timeout",
    "backend",
    "queue",
    "concurrency",
    "input",
    "defaults",
    "env",
    "tasks",
    "parents",
    "uses",
    "with",
    "run",
    "shell",
    "http",
    "celery",
    "retry",
    "attempts",
    "delay",
    "backoff",
    "max_delay",
    "url",
    "json",
    "method",
    "output",
    "cwd",
    "flag",
    "variants",
    "default",
    "type",
    "properties",
    "required",
    "additionalProperties",
    "<<",
    "a",
    "b",
    "x",
    "\"quoted key\"",
    "'k'",
    "?",
    "ключ",
    "1",
    "true",
    "null",
];

const SCALARS: &[&str] = &[
    "1",
    "0",
    "-1",
    "0755",
    "1.5",
    ".5",
    "1e3",
    "0x1F",
    "0o17",
    ".inf",
    ".nan",
    "no",
    "yes",
    "on",
    "off",
    "true",
    "false",
    "null",
    "~",
    "",
    "hello",
    "a",
    "b",
    "echo",
    "local",
    "celery",
    "10m",
    "1h30m",
    "500ms",
    "5 parsecs",
    "0s",
    "30",
    "\"{{input.x}}\"",
    "\"{{tasks.a.output}}\"",
    "\"{{tasks.b.output.x}} and {{run.id}}\"",
    "\"{{#if a}}x{{/if}}\"",
    "\"{{#each input.list}}{{this}}{{/each}}\"",
    "\"{{{raw}}}\"",
    "\"{{unclosed\"",
    "\"{{/if}}\"",
    "\"{{inpt.x}}\"",
    "'single ''quoted'''",
    "\"esc \\\" \\n \\t \\u00e9 \\x41\"",
    "\"bad escape \\q\"",
    "plain with spaces",
    "#notcomment",
    "a:b",
    "- x",
    "[",
    "]",
    "{",
    "}",
    ",",
    "&",
    "*",
    "!",
    "|",
    ">",
    "%",
    "@",
    "`",
    "!!str 12",
    "!!int x",
    "!custom v",
    "ünïcödé",
    "🦀",
    "\u{0085}",
    "\u{2028}",
    "\u{feff}",
    "\r",
    "v\u{7f}",
];

fn scalar() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => proptest::sample::select(SCALARS).prop_map(str::to_string),
        1 => "[a-z0-9 ._{}\\-]{0,12}",
        1 => any::<i64>().prop_map(|i| i.to_string()),
        1 => any::<f64>().prop_map(|f| f.to_string()),
    ]
}

fn flow(depth: u32) -> BoxedStrategy<String> {
    let leaf = scalar().boxed();
    leaf.prop_recursive(depth, 24, 4, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..4).prop_map(|v| format!("[{}]", v.join(", "))),
            proptest::collection::vec((proptest::sample::select(KEYS), inner.clone()), 0..4)
                .prop_map(|v| format!("{{{}}}", v.iter().map(|(k, x)| format!("{k}: {x}")).collect::<Vec<_>>().join(", "))),
            (inner.clone(), prop_oneof![Just(","), Just(""), Just(": "), Just("]"), Just("}")]).prop_map(|(a, s)| format!("{a}{s}")),
        ]
    })
    .boxed()
}

/// One YAML-ish line: indentation (spaces, sometimes tabs), then a key, a
/// list dash, a value, a flow collection, an anchor or alias, a block scalar
/// header, a comment or a document marker.
fn yaml_line() -> impl Strategy<Value = String> {
    let indent = prop_oneof![
        8 => (0usize..10).prop_map(|n| " ".repeat(n)),
        1 => (0usize..3, 0usize..3).prop_map(|(a, b)| format!("{}\t{}", " ".repeat(a), " ".repeat(b))),
    ];
    let anchor =
        prop_oneof![4 => Just(String::new()), 1 => "[ab]".prop_map(|a| format!("&{a} ")), 1 => "[abz]".prop_map(|a| format!("*{a}"))];
    let body = prop_oneof![
        4 => (proptest::sample::select(KEYS), anchor.clone(), scalar()).prop_map(|(k, a, v)| format!("{k}: {a}{v}")),
        2 => (proptest::sample::select(KEYS), anchor.clone()).prop_map(|(k, a)| format!("{k}: {a}")),
        2 => (proptest::sample::select(KEYS), scalar()).prop_map(|(k, v)| format!("- {k}: {v}")),
        2 => scalar().prop_map(|v| format!("- {v}")),
        1 => (proptest::sample::select(KEYS), flow(3)).prop_map(|(k, f)| format!("{k}: {f}")),
        1 => flow(3).prop_map(|f| format!("- {f}")),
        1 => (proptest::sample::select(KEYS), prop_oneof![Just("|"), Just(">"), Just("|-"), Just(">+"), Just("|2"), Just("| # c")])
            .prop_map(|(k, h)| format!("{k}: {h}")),
        1 => prop_oneof![Just("---"), Just("..."), Just("# comment"), Just("%YAML 1.2"), Just("? complex"), Just(": value"), Just("<<: *a")]
            .prop_map(str::to_string),
        1 => scalar(),
        1 => Just(String::new()),
    ];
    (indent, body).prop_map(|(i, b)| format!("{i}{b}"))
}

fn yaml_text() -> impl Strategy<Value = String> {
    (proptest::collection::vec(yaml_line(), 0..24), proptest::bool::ANY, proptest::bool::ANY).prop_map(|(lines, header, crlf)| {
        let mut s = if header { "version: 1\nname: fuzz\n".to_string() } else { String::new() };
        s.push_str(&lines.join("\n"));
        if crlf { s.replace('\n', "\r\n") } else { s }
    })
}

const TOML_KEYS: &[&str] = &[
    "version",
    "name",
    "timeout",
    "tasks",
    "parents",
    "uses",
    "with",
    "run",
    "shell",
    "http",
    "retry",
    "attempts",
    "delay",
    "input",
    "env",
    "defaults",
    "backend",
    "a",
    "b",
    "\"quoted\"",
    "'lit'",
    "a.b",
    "tasks.with",
    "x.y.z",
    "\"\"",
    "1",
];

fn toml_value() -> BoxedStrategy<String> {
    let leaf = prop_oneof![
        Just("1".to_string()),
        Just("-0".to_string()),
        Just("1_000".to_string()),
        Just("0x1F".to_string()),
        Just("1e400".to_string()),
        Just("9223372036854775808".to_string()),
        Just("inf".to_string()),
        Just("nan".to_string()),
        Just("true".to_string()),
        Just("1979-05-27T07:32:00Z".to_string()),
        Just("07:32:00".to_string()),
        Just("\"echo\"".to_string()),
        Just("\"{{tasks.a.output}}\"".to_string()),
        Just("\"{{#if x}}\"".to_string()),
        Just("\"10m\"".to_string()),
        Just("\"\\u00e9 \\n\"".to_string()),
        Just("\"\\q\"".to_string()),
        Just("'literal'".to_string()),
        Just("\"\"\"\nmulti\nline\"\"\"".to_string()),
        Just("'''\nraw\n'''".to_string()),
        Just("\"unterminated".to_string()),
        "[a-z0-9\" ]{0,8}",
    ];
    leaf.boxed()
        .prop_recursive(3, 16, 4, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..4).prop_map(|v| format!("[{}]", v.join(", "))),
                proptest::collection::vec((proptest::sample::select(TOML_KEYS), inner.clone()), 0..4)
                    .prop_map(|v| format!("{{ {} }}", v.iter().map(|(k, x)| format!("{k} = {x}")).collect::<Vec<_>>().join(", "))),
            ]
        })
        .boxed()
}

fn toml_text() -> impl Strategy<Value = String> {
    let line = prop_oneof![
        5 => (proptest::sample::select(TOML_KEYS), toml_value()).prop_map(|(k, v)| format!("{k} = {v}")),
        2 => proptest::sample::select(&["[[tasks]]", "[tasks]", "[tasks.with]", "[[tasks.with]]", "[input]", "[defaults.retry]", "[a.b]", "[", "[[x]"][..])
            .prop_map(str::to_string),
        1 => Just("# comment".to_string()),
        1 => Just(String::new()),
        1 => "[ -~]{0,16}",
    ];
    (proptest::collection::vec(line, 0..24), proptest::bool::ANY).prop_map(|(lines, header)| {
        let mut s = if header { "version = 1\nname = \"fuzz\"\n".to_string() } else { String::new() };
        s.push_str(&lines.join("\n"));
        s
    })
}

/// A structurally plausible workflow: tasks with random (possibly unknown,
/// duplicate or cyclic) parents, actions and templates, so the semantic
/// rules, not only the parser, see odd graphs.
fn task_graph() -> impl Strategy<Value = String> {
    const NAMES: &[&str] = &["a", "b", "c", "d", "e", "f"];
    let task = (
        proptest::sample::select(NAMES),
        proptest::collection::vec(proptest::sample::select(&["a", "b", "c", "d", "e", "f", "zz"][..]), 0..4),
        proptest::sample::subsequence(&["uses", "run", "shell", "http", "celery"][..], 0..3),
        proptest::option::of(proptest::sample::select(&["1s", "10m", "2h", "x", "0s"][..])),
        proptest::sample::select(
            &[
                "{{tasks.a.output}}",
                "{{tasks.b.output.x}}",
                "{{tasks.zz.output}}",
                "{{input.p}}",
                "{{input.q}}",
                "{{run.id}}",
                "{{run.nope}}",
                "{{workflow.name}}",
                "{{context.user_id}}",
                "{{{tasks.c.output}}}",
                "{{#if x}}y{{/if}}",
                "{{#each tasks.d.output}}{{this}}{{/each}}",
                "{{lookup tasks.e.output 'k'}}",
                "{{x",
                "plain",
                "{{tasks}}",
                "{{tasks.f}}",
                "{{../up}}",
                "{{@index}}",
            ][..],
        ),
    );
    (proptest::collection::vec(task, 1..8), proptest::option::of(proptest::sample::select(&["1m", "1h", "bad"][..])), proptest::bool::ANY)
        .prop_map(|(tasks, timeout, closed)| {
            let mut s = String::from("version: 1\nname: graph\n");
            if let Some(t) = timeout {
                s.push_str(&format!("timeout: {t}\n"));
            }
            s.push_str(&format!(
                "input:\n  type: object\n  additionalProperties: {closed}\n  properties:\n    p: {{type: string}}\ntasks:\n"
            ));
            for (name, parents, actions, timeout, tpl) in tasks {
                s.push_str(&format!("  - name: {name}\n    parents: [{}]\n", parents.join(", ")));
                if let Some(t) = timeout {
                    s.push_str(&format!("    timeout: {t}\n"));
                }
                for a in actions {
                    let body = match a {
                        "uses" => format!("uses: echo\n    with: {{v: \"{tpl}\"}}"),
                        "run" => format!("run: [echo, \"{tpl}\"]"),
                        "shell" => format!("shell: echo \"{tpl}\""),
                        "http" => format!("http: {{url: \"{tpl}\"}}"),
                        _ => format!("celery: {{task: t, args: [\"{tpl}\"]}}"),
                    };
                    s.push_str(&format!("    {body}\n"));
                }
            }
            s
        })
}

fn shipped() -> &'static Vec<(Vec<u8>, Format)> {
    static FILES: OnceLock<Vec<(Vec<u8>, Format)>> = OnceLock::new();
    FILES.get_or_init(|| {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("workflows");
        let mut files: Vec<(Vec<u8>, Format)> = taskweave::validate::find_files(&dir)
            .expect("workflows/")
            .into_iter()
            .map(|p| (std::fs::read(&p).expect("read"), Format::from_path(&p).expect("a workflow format")))
            .collect();
        assert!(!files.is_empty());
        files.sort_by_key(|(b, _)| b.len());
        files
    })
}

#[derive(Debug, Clone)]
enum Mutation {
    Insert(usize, Vec<u8>),
    Delete(usize, usize),
    Replace(usize, u8),
    DuplicateLine(usize),
    SwapLines(usize, usize),
}

const SNIPPETS: &[&[u8]] = &[
    b"\t",
    b" ",
    b"\n",
    b"- ",
    b": ",
    b"{{",
    b"}}",
    b"{{{",
    b"[",
    b"]",
    b"{",
    b"}",
    b"\"",
    b"'",
    b"&a ",
    b"*a",
    b"<<: *a\n",
    b"#",
    b"---\n",
    b"|\n",
    b"\xff",
    b"\x00",
    b"\xc3",
    b"\r\n",
    b"parents: [a]\n",
    b"name: a\n",
    b"[[tasks]]\n",
    b" = ",
    b"\\",
];

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        3 => (any::<usize>(), prop_oneof![proptest::sample::select(SNIPPETS).prop_map(<[u8]>::to_vec), proptest::collection::vec(any::<u8>(), 1..4)])
            .prop_map(|(at, b)| Mutation::Insert(at, b)),
        2 => (any::<usize>(), 1usize..16).prop_map(|(at, n)| Mutation::Delete(at, n)),
        2 => (any::<usize>(), any::<u8>()).prop_map(|(at, b)| Mutation::Replace(at, b)),
        1 => any::<usize>().prop_map(Mutation::DuplicateLine),
        1 => (any::<usize>(), any::<usize>()).prop_map(|(a, b)| Mutation::SwapLines(a, b)),
    ]
}

fn mutate(mut bytes: Vec<u8>, mutations: &[Mutation]) -> Vec<u8> {
    for m in mutations {
        let len = bytes.len().max(1);
        match m {
            Mutation::Insert(at, b) => {
                let at = at % (bytes.len() + 1);
                bytes.splice(at..at, b.iter().copied());
            }
            Mutation::Delete(at, n) => {
                let at = at % len;
                let end = (at + n).min(bytes.len());
                if at < end {
                    bytes.drain(at..end);
                }
            }
            Mutation::Replace(at, b) => {
                if !bytes.is_empty() {
                    bytes[at % len] = *b;
                }
            }
            Mutation::DuplicateLine(i) | Mutation::SwapLines(i, _) => {
                let mut lines: Vec<Vec<u8>> = bytes.split(|&b| b == b'\n').map(<[u8]>::to_vec).collect();
                let n = lines.len();
                let i = i % n;
                match m {
                    Mutation::SwapLines(_, j) => lines.swap(i, j % n),
                    _ => lines.insert(i, lines[i].clone()),
                }
                bytes = lines.join(&b'\n');
            }
        }
    }
    bytes
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        both(&bytes);
    }

    #[test]
    fn arbitrary_yaml(text in yaml_text()) {
        exercise(text.as_bytes(), Format::Yaml);
    }

    #[test]
    fn arbitrary_toml(text in toml_text()) {
        exercise(text.as_bytes(), Format::Toml);
    }

    #[test]
    fn arbitrary_task_graphs(text in task_graph()) {
        exercise(text.as_bytes(), Format::Yaml);
    }

    #[test]
    fn mutated_workflows(file in any::<prop::sample::Index>(), mutations in proptest::collection::vec(mutation(), 1..6)) {
        let (bytes, format) = file.get(shipped());
        let mutated = mutate(bytes.clone(), &mutations);
        exercise(&mutated, *format);
    }
}

// ---------------------------------------------------------------------------
// Hostile inputs

/// Check within a generous bound (a sanity limit against hangs, not a
/// benchmark), on a thread with the default stack of spawned threads.
fn hostile(name: &str, bytes: Vec<u8>, format: Format) -> Checked {
    let t = Instant::now();
    let checked = std::thread::Builder::new()
        .name(name.to_string())
        .spawn(move || exercise(&bytes, format))
        .expect("spawn")
        .join()
        .unwrap_or_else(|e| std::panic::resume_unwind(e));
    let took = t.elapsed();
    assert!(took < Duration::from_secs(120), "{name} took {took:?}");
    checked
}

fn codes(c: &Checked) -> Vec<Code> {
    c.diagnostics.iter().map(|d| d.code).collect()
}

#[test]
fn ten_megabytes() {
    // A valid workflow padded to 10 MB by a long description and many tasks.
    let mut s = String::from("version: 1\nname: big\ndescription: |\n");
    while s.len() < 5_000_000 {
        s.push_str("  Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod tempor.\n");
    }
    s.push_str("tasks:\n");
    let mut i = 0;
    while s.len() < 10_000_000 {
        s.push_str(&format!(
            "  - name: t{i}\n    uses: echo\n    with: {{message: \"padding padding padding padding padding padding\", n: {i}}}\n"
        ));
        i += 1;
    }
    let checked = hostile("10mb", s.into_bytes(), Format::Yaml);
    assert!(checked.diagnostics.is_empty(), "{:?}", checked.diagnostics.first());
    assert_eq!(checked.workflow.expect("valid").tasks.len(), i);

    // And 10 MB that is not a workflow at all.
    let junk: Vec<u8> = (0..10_000_000u32).map(|i| b"ab: [{,}]\n-\t\"'"[(i.wrapping_mul(2_654_435_761) >> 28) as usize % 14]).collect();
    hostile("10mb junk yaml", junk.clone(), Format::Yaml);
    hostile("10mb junk toml", junk, Format::Toml);
}

#[test]
fn deep_flow_nesting() {
    for (open, close) in [("[", "]"), ("{a: ", "}")] {
        let s = format!("version: 1\nname: deep\nx: {}{}\n", open.repeat(100_000), close.repeat(100_000));
        let c = hostile("deep flow yaml", s.into_bytes(), Format::Yaml);
        assert_eq!(codes(&c), [Code::Parse], "{:?}", c.diagnostics);
    }
    for (open, close) in [("[", "]"), ("{a = ", "}")] {
        let s = format!("version = 1\nx = {}1{}\n", open.repeat(100_000), close.repeat(100_000));
        let c = hostile("deep flow toml", s.into_bytes(), Format::Toml);
        assert_eq!(codes(&c), [Code::Parse], "{:?}", c.diagnostics);
    }
    // Unclosed, too.
    let c = hostile("unclosed", format!("x: {}", "[".repeat(100_000)).into_bytes(), Format::Yaml);
    assert_eq!(codes(&c), [Code::Parse]);
    let c = hostile("unclosed toml", format!("x = {}", "[".repeat(100_000)).into_bytes(), Format::Toml);
    assert_eq!(codes(&c), [Code::Parse]);
}

#[test]
fn deep_block_nesting() {
    // Compact nesting on one line: `- - - - ... x`.
    let c = hostile("compact", format!("{}x\n", "- ".repeat(100_000)).into_bytes(), Format::Yaml);
    assert_eq!(codes(&c), [Code::Parse], "{:?}", c.diagnostics);
    // Indented nesting, one level per line (quadratic in size, so fewer levels).
    let mut s = String::new();
    for i in 0..2_000 {
        s.push_str(&" ".repeat(2 * i));
        s.push_str("- \n");
    }
    let c = hostile("indented", s.into_bytes(), Format::Yaml);
    assert_eq!(codes(&c), [Code::Parse], "{:?}", c.diagnostics);
    let mut s = String::new();
    for i in 0..2_000 {
        s.push_str(&" ".repeat(2 * i));
        s.push_str("a:\n");
    }
    let c = hostile("indented mappings", s.into_bytes(), Format::Yaml);
    assert_eq!(codes(&c), [Code::Parse], "{:?}", c.diagnostics);
    // TOML tables nest by name, not by depth of syntax.
    let s = format!("[{}]\nx = 1\n", vec!["a"; 10_000].join("."));
    let c = hostile("dotted", s.into_bytes(), Format::Toml);
    assert!(codes(&c).contains(&Code::Parse) || codes(&c).contains(&Code::Schema));
}

#[test]
fn structures_just_under_the_depth_limit_are_fine() {
    // Deep but allowed structures validate, convert to JSON and drop.
    let depth = taskweave::spec::MAX_DEPTH - 6;
    let s = format!(
        "version: 1\nname: deep\ntasks:\n  - name: a\n    uses: echo\n    with: {{x: {}1{}}}\n",
        "[".repeat(depth),
        "]".repeat(depth)
    );
    let c = hostile("under the limit", s.into_bytes(), Format::Yaml);
    assert!(c.diagnostics.is_empty(), "{:?}", c.diagnostics);
    let s = format!(
        "version: 1\nname: deep\ntasks:\n  - name: a\n    uses: echo\n    with: {{x: {}1{}}}\n",
        "[".repeat(depth + 10),
        "]".repeat(depth + 10)
    );
    let c = hostile("over the limit", s.into_bytes(), Format::Yaml);
    assert_eq!(codes(&c), [Code::Parse]);
    assert!(c.diagnostics[0].message.contains("nested deeper than"), "{}", c.diagnostics[0].message);
}

#[test]
fn deep_templates() {
    for tpl in [
        format!("{}x{}", "{{#if input.a}}".repeat(100_000), "{{/if}}".repeat(100_000)),
        format!("{}x{}", "{{#if input.a}}".repeat(300), "{{/if}}".repeat(300)),
        format!("{}x{}", "{{#if input.a}}".repeat(3_000), "{{/if}}".repeat(3_000)),
        format!("{}x{}", "{{#if input.a}}".repeat(10_000), "{{/if}}".repeat(10_000)),
        format!("{}x{}", "{{#with input.a}}".repeat(10_000), "{{/with}}".repeat(10_000)),
        format!("{{{{x {}a{}}}}}", "(lookup ".repeat(3_000), ")".repeat(3_000)),
        format!("{{{{x {}1{}}}}}", "[".repeat(10_000), "]".repeat(10_000)),
        // (Escaped for the double-quoted YAML string it is written into.)
        format!("{{{{x {}1{}}}}}", "{\\\"a\\\":".repeat(10_000), "}".repeat(10_000)),
        format!("{{{{{}a{}}}}}", "(lookup ".repeat(100_000), ")".repeat(100_000)),
        "{{".repeat(100_000),
        "{{#each input.x}}".repeat(50_000),
    ] {
        let s = format!("version: 1\nname: deep\ntasks:\n  - name: a\n    shell: \"{tpl}\"\n");
        let c = hostile("deep template", s.into_bytes(), Format::Yaml);
        assert!(codes(&c).iter().all(|c| *c == Code::Template), "{:?}", c.diagnostics);
    }
}

#[test]
fn alias_bomb() {
    let mut s = String::from("version: 1\nname: bomb\na0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol]\n");
    for i in 1..12 {
        let refs = vec![format!("*a{}", i - 1); 10].join(", ");
        s.push_str(&format!("a{i}: &a{i} [{refs}]\n"));
    }
    s.push_str("tasks: [{name: a, uses: echo, with: *a11}]\n");
    let c = hostile("billion laughs", s.into_bytes(), Format::Yaml);
    assert_eq!(codes(&c), [Code::Parse]);
    assert!(c.diagnostics[0].message.contains("alias"), "{}", c.diagnostics[0].message);
    // Many aliases of a small anchor stay within budget and are fine.
    let mut s = String::from("version: 1\nname: many\ntasks:\n  - &t {name: t0, uses: echo, timeout: 1m}\n");
    for i in 1..5_000 {
        s.push_str(&format!("  - {{<<: *t, name: t{i}}}\n"));
    }
    let c = hostile("many aliases", s.into_bytes(), Format::Yaml);
    assert!(c.diagnostics.is_empty(), "{:?}", c.diagnostics.first());
}

#[test]
fn huge_single_line() {
    // A 10 MB line holding a valid value.
    let s = format!("version: 1\nname: wide\ndescription: \"{}\"\ntasks: [{{name: a, uses: echo}}]\n", "x".repeat(10_000_000));
    let c = hostile("wide description", s.into_bytes(), Format::Yaml);
    assert!(c.diagnostics.is_empty());
    // Errors at the end of a very long line render quickly.
    let items: Vec<String> = (0..200_000).map(|i| format!("k{i}: {i}")).collect();
    let s = format!("version: 1\nname: wide\ntasks: [{{name: a, uses: echo, with: {{{}}}, bogus: 1}}]\n", items.join(", "));
    let c = hostile("wide error", s.into_bytes(), Format::Yaml);
    assert_eq!(codes(&c), [Code::Schema], "{:?}", c.diagnostics);
    // A huge unknown name gets no suggestion (and no quadratic work).
    let long = "z".repeat(1_000_000);
    let mut s = format!(
        "version: 1\nname: long\ntasks:\n  - name: a\n    uses: echo\n    parents: [{long}]\n    with: {{x: \"{{{{tasks.{long}.output}}}}\"}}\n"
    );
    for i in 0..2_000 {
        s.push_str(&format!("  - {{name: {}{i}, uses: echo}}\n", "z".repeat(100)));
    }
    // (A YAML implicit key is at most 1024 characters long.)
    s.push_str(&format!("  - {{name: b, uses: echo, {}: 1}}\n", "z".repeat(1_000)));
    let c = hostile("long names", s.into_bytes(), Format::Yaml);
    assert_eq!(codes(&c), [Code::UnknownParent, Code::TemplateRef, Code::Schema], "{:?}", codes(&c));
    // The same in TOML, on one line.
    let s = format!(
        "version = 1\nname = \"wide\"\ntasks = [{{ name = \"a\", uses = \"echo\", with = {{ x = \"{}\" }} }}]\n",
        "y".repeat(10_000_000)
    );
    let c = hostile("wide toml", s.into_bytes(), Format::Toml);
    assert!(c.diagnostics.is_empty(), "{:?}", c.diagnostics);
}

#[test]
fn ten_thousand_duplicate_keys() {
    let mut s = String::from("version: 1\nname: dups\ntasks:\n  - name: a\n    uses: echo\n    with:\n");
    for i in 0..10_000 {
        s.push_str(&format!("      k: {i}\n"));
    }
    let c = hostile("duplicate keys", s.into_bytes(), Format::Yaml);
    // The first 200, and one that counts the rest.
    assert_eq!(c.diagnostics.len(), 201);
    assert!(c.diagnostics[..200].iter().all(|d| d.code == Code::DuplicateKey));
    assert_eq!(c.diagnostics[200].code, Code::TooManyDiagnostics);
    assert_eq!(c.diagnostics[200].message, "and 9799 more not shown (9799 errors), the first of them here");
    let mut s = String::from("version = 1\nname = \"dups\"\n");
    for i in 0..10_000 {
        s.push_str(&format!("k = {i}\n"));
    }
    let c = hostile("duplicate keys toml", s.into_bytes(), Format::Toml);
    assert_eq!(codes(&c), [Code::DuplicateKey]);
    // Ten thousand distinct unknown fields, all counted.
    let mut s = String::from("version: 1\nname: many\ntasks: [{name: a, uses: echo}]\n");
    for i in 0..10_000 {
        s.push_str(&format!("field{i}: {i}\n"));
    }
    let c = hostile("unknown fields", s.into_bytes(), Format::Yaml);
    assert_eq!(c.diagnostics.len(), 201);
    assert_eq!(c.diagnostics[200].message, "and 9800 more not shown (9800 errors), the first of them here");
}

#[test]
fn ten_thousand_tasks_in_a_cycle() {
    let mut s = String::from("version: 1\nname: ring\ntasks:\n");
    let n = 10_000;
    for i in 0..n {
        s.push_str(&format!(
            "  - {{name: t{i}, parents: [t{}], uses: echo, with: {{x: \"{{{{tasks.t{}.output}}}}\"}}}}\n",
            (i + n - 1) % n,
            (i + n / 2) % n
        ));
    }
    let c = hostile("ring", s.into_bytes(), Format::Yaml);
    assert_eq!(codes(&c), [Code::Cycle]);
    assert!(c.diagnostics[0].message.starts_with("the parents form a cycle: t0 -> t1 -> t2"));
    assert!(c.diagnostics[0].message.ends_with("t9999 -> t0"));
}

#[test]
fn a_long_chain_is_no_deep_recursion() {
    // Graph algorithms must not recurse once per task: a chain of 50,000
    // tasks, checked on a thread with the default 2 MiB stack.
    let mut s = String::from("version: 1\nname: chain\ntasks:\n  - {name: t0, uses: echo}\n");
    for i in 1..50_000 {
        s.push_str(&format!("  - {{name: t{i}, parents: [t{}], uses: echo, with: {{x: \"{{{{tasks.t0.output}}}}\"}}}}\n", i - 1));
    }
    let c = hostile("chain", s.into_bytes(), Format::Yaml);
    assert!(c.diagnostics.is_empty(), "{:?}", c.diagnostics.first());
    assert_eq!(c.workflow.expect("valid").order.len(), 50_000);
}
