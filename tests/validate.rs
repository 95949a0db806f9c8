//! The validator's contract (DESIGN.md, "Validation"): every diagnostic code
//! at its exact node, in YAML and TOML; everything found at once; the YAML
//! corner cases (anchors, merge keys, duplicate keys, tabs, strict scalars,
//! several documents); undecodable files; the exact rendered output; and the
//! CLI's formats and exit codes, driving the real binary.

use assert_cmd::Command;
use serde_json::Value;
use std::path::{Path, PathBuf};
use taskweave::diag::{render_github, render_human, render_json};
use taskweave::spec::Format;
use taskweave::validate::{Checked, Options, check_bytes, check_paths};
use taskweave::{Code, Diagnostic, Severity};

// ---------------------------------------------------------------------------
// The table

/// One expected diagnostic: code, start, end (when it matters) and a text
/// that the message or help contains.
struct Exp {
    code: &'static str,
    at: (u32, u32),
    end: Option<(u32, u32)>,
    says: &'static str,
}

const fn e(code: &'static str, at: (u32, u32), end: Option<(u32, u32)>, says: &'static str) -> Exp {
    Exp { code, at, end, says }
}

struct Case {
    name: &'static str,
    format: Format,
    src: &'static str,
    expect: &'static [Exp],
}

const Y: Format = Format::Yaml;
const T: Format = Format::Toml;

fn check(name: &str, src: &[u8], format: Format, opts: &Options) -> Checked {
    check_bytes(name, src, format, opts)
}

fn show(diags: &[Diagnostic]) -> String {
    diags
        .iter()
        .map(|d| {
            format!(
                "  {}[{}] {}:{}-{}:{} {} | help: {}\n",
                d.severity.as_str(),
                d.code,
                d.span.start.line,
                d.span.start.column,
                d.span.end.line,
                d.span.end.column,
                d.message,
                d.help.as_deref().unwrap_or("-")
            )
        })
        .collect()
}

/// Whether the diagnostics are exactly the expected ones, in order; a report when not.
fn mismatch(case: &str, diags: &[Diagnostic], expect: &[Exp]) -> Option<String> {
    let ok = diags.len() == expect.len()
        && diags.iter().zip(expect).all(|(d, x)| {
            let text = format!("{}\n{}", d.message, d.help.as_deref().unwrap_or(""));
            d.code.as_str() == x.code
                && d.severity == Code::parse(x.code).expect("a known code").severity()
                && (d.span.start.line, d.span.start.column) == x.at
                && x.end.is_none_or(|end| (d.span.end.line, d.span.end.column) == end)
                && text.contains(x.says)
        });
    (!ok).then(|| {
        format!(
            "case `{case}`: expected\n{}got\n{}",
            expect.iter().map(|x| format!("  [{}] {}:{} end {:?} says {:?}\n", x.code, x.at.0, x.at.1, x.end, x.says)).collect::<String>(),
            show(diags)
        )
    })
}

fn assert_diags(case: &str, diags: &[Diagnostic], expect: &[Exp]) {
    if let Some(report) = mismatch(case, diags, expect) {
        panic!("{report}");
    }
}

fn run_cases(cases: &[Case], opts: &Options) {
    let mut failures = Vec::new();
    for c in cases {
        let checked = check(c.name, c.src.as_bytes(), c.format, opts);
        failures.extend(mismatch(c.name, &checked.diagnostics, c.expect));
        let errors = checked.diagnostics.iter().any(Diagnostic::is_error);
        if checked.workflow.is_some() == errors {
            failures.push(format!("case `{}`: a workflow exactly when there is no error", c.name));
        }
    }
    assert!(failures.is_empty(), "{} of {} cases fail:\n{}", failures.len(), cases.len(), failures.join("\n"));
}

const YAML_CASES: &[Case] = &[
    Case { name: "valid", format: Y, src: "version: 1\nname: demo\ntasks:\n  - name: a\n    uses: echo\n", expect: &[] },
    Case {
        name: "parse: unclosed flow sequence",
        format: Y,
        src: "version: 1\nname: demo\ntasks: [\n  {name: a, uses: echo}\n",
        expect: &[e("parse", (3, 8), Some((3, 9)), "unclosed bracket")],
    },
    Case {
        name: "parse: bad indentation",
        format: Y,
        src: "version: 1\nname: demo\n  tasks:\n",
        expect: &[e("parse", (3, 8), None, "mapping values are not allowed")],
    },
    Case {
        name: "duplicate-key in a task",
        format: Y,
        src: "version: 1\nname: demo\ntasks:\n  - name: a\n    uses: echo\n    uses: sleep\n",
        expect: &[e("duplicate-key", (6, 5), Some((6, 9)), "first set at line 5, column 5")],
    },
    Case {
        name: "schema: unknown field, did you mean",
        format: Y,
        src: "version: 1\nname: demo\ntasks:\n  - name: a\n    uses: echo\n  - name: b\n    parnts: [a]\n    uses: echo\n",
        expect: &[e("schema", (7, 5), Some((7, 11)), "did you mean `parents`?")],
    },
    Case {
        name: "schema: unknown top-level field",
        format: Y,
        src: "version: 1\nname: demo\ntimeuot: 5m\ntasks:\n  - name: a\n    uses: echo\n",
        expect: &[e("schema", (3, 1), Some((3, 8)), "did you mean `timeout`?")],
    },
    Case {
        name: "schema: wrong type",
        format: Y,
        src: "version: 1\nname: demo\ntimeout: 30\ntasks:\n  - name: a\n    uses: echo\n",
        expect: &[e("schema", (3, 10), Some((3, 12)), "`timeout` must be a string, found an integer")],
    },
    Case {
        name: "schema: wrong type in a list",
        format: Y,
        src: "version: 1\nname: demo\ntasks:\n  - name: a\n    uses: echo\n  - name: b\n    parents: a\n    uses: echo\n",
        expect: &[e("schema", (7, 14), Some((7, 15)), "write a list: `parents: [a]`")],
    },
    Case {
        name: "schema: missing required field",
        format: Y,
        src: "version: 1\nname: demo\ntasks:\n  - uses: echo\n",
        expect: &[e("schema", (4, 5), Some((4, 6)), "missing required field `name` in `tasks.0`")],
    },
    Case {
        name: "schema: missing tasks and version",
        format: Y,
        src: "name: demo\n",
        expect: &[
            e("schema", (1, 1), None, "missing required field `version`"),
            e("schema", (1, 1), None, "missing required field `tasks`"),
        ],
    },
    Case {
        name: "schema: bad name",
        format: Y,
        src: "version: 1\nname: Demo Flow\ntasks:\n  - name: a\n    uses: echo\n",
        expect: &[e("schema", (2, 7), Some((2, 16)), "try `demo-flow`")],
    },
    Case {
        name: "schema: bad task name",
        format: Y,
        src: "version: 1\nname: demo\ntasks:\n  - name: Fetch_It\n    uses: echo\n",
        expect: &[e("schema", (4, 11), Some((4, 19)), "invalid name `Fetch_It`")],
    },
    Case {
        name: "schema: wrong version",
        format: Y,
        src: "version: 2\nname: demo\ntasks:\n  - name: a\n    uses: echo\n",
        expect: &[e("schema", (1, 10), Some((1, 11)), "`version` must be 1, found 2")],
    },
    Case {
        name: "schema: inside an optional object",
        format: Y,
        src: "version: 1\nname: demo\ntasks:\n  - name: a\n    uses: echo\n    retry: {attempts: \"3\"}\n",
        expect: &[e("schema", (6, 23), Some((6, 26)), "`attempts` must be an integer, found a string")],
    },
    Case {
        name: "schema: enum with did you mean",
        format: Y,
        src: "version: 1\nname: demo\ntasks:\n  - name: a\n    run: [date]\n    output: jsn\n",
        expect: &[e("schema", (6, 13), Some((6, 16)), "did you mean `json`?")],
    },
    Case {
        name: "schema: unknown trigger rule",
        format: Y,
        src: "version: 1\nname: demo\ntasks:\n  - {name: a, uses: echo}\n  - name: b\n    parents: [a]\n    trigger: one_sucess\n    uses: echo\n",
        expect: &[e("schema", (7, 14), Some((7, 24)), "did you mean `one_success`?")],
    },
    Case {
        name: "handlers: valid, reading any task and the run's status",
        format: Y,
        src: "version: 1\nname: demo\ntasks:\n  - {name: a, uses: echo}\non_failure:\n  - {name: alert, uses: echo, with: {s: \"{{run.status}}\", f: \"{{run.failed_tasks}}\", a: \"{{tasks.a.output}}\"}}\n  - {name: page, parents: [alert], when: 'tasks.a.status == \"failed\"', uses: echo}\nfinally:\n  - {name: cleanup, uses: echo, with: {x: \"{{tasks.alert.output}}\"}}\n",
        expect: &[],
    },
    Case {
        name: "duplicate-task: a handler named as a task",
        format: Y,
        src: "version: 1\nname: demo\ntasks:\n  - {name: a, uses: echo}\nfinally:\n  - {name: a, uses: echo}\n",
        expect: &[e("duplicate-task", (6, 12), Some((6, 13)), "first defined at line 4, column 12")],
    },
    Case {
        name: "unknown-parent: a handler's parent in another list",
        format: Y,
        src: "version: 1\nname: demo\ntasks:\n  - {name: a, uses: echo}\non_failure:\n  - {name: alert, parents: [a], uses: echo}\n",
        expect: &[e("unknown-parent", (6, 29), Some((6, 30)), "is in `tasks`, not in `on_failure`")],
    },
    Case {
        name: "template-ref: run.status outside a handler, a handler's unknown task",
        format: Y,
        src: "version: 1\nname: demo\ntasks:\n  - {name: a, uses: echo, with: {s: \"{{run.status}}\"}}\nfinally:\n  - {name: z, uses: echo, with: {s: \"{{tasks.b.output}}\"}}\n",
        expect: &[
            e("template-ref", (4, 40), Some((4, 50)), "read by `on_failure` and `finally` tasks"),
            e("template-ref", (6, 40), Some((6, 54)), "there is no task `b`"),
        ],
    },
    Case {
        name: "template-ref: secrets unknown, or where they would be recorded",
        format: Y,
        src: "version: 1\nname: demo\nsecrets:\n  token: {env: TOKEN}\ntasks:\n  - {name: a, shell: 'curl -H \"{{secrets.tokn}}\" x'}\n  - {name: b, uses: echo, with: {t: \"{{secrets.token}}\"}}\n  - {name: c, shell: 'curl -H \"{{secrets.token}}\" x'}\noutput:\n  t: \"{{secrets.token}}\"\n",
        expect: &[
            e("template-ref", (6, 34), None, "did you mean `token`?"),
            e("template-ref", (7, 40), None, "an `echo` task's `with:` is its output"),
            e("template-ref", (10, 9), None, "`output:` is recorded with the run"),
        ],
    },
    Case {
        name: "expression: the caret at the offending character",
        format: Y,
        src: "version: 1\nname: demo\ntasks:\n  - {name: a, uses: echo}\n  - name: b\n    parents: [a]\n    when: 'tasks.a.output.n > )'\n    uses: echo\n",
        expect: &[e("expression", (7, 31), Some((7, 32)), "mismatched input ')'")],
    },
    Case {
        name: "expression: a condition that is not text",
        format: Y,
        src: "version: 1\nname: demo\ntasks:\n  - {name: a, uses: echo, when: 1}\n",
        expect: &[e("schema", (4, 33), None, "`when` must be a string")],
    },
    Case {
        name: "template-ref: a condition reads a task that is no ancestor",
        format: Y,
        src: "version: 1\nname: demo\ntasks:\n  - {name: a, uses: echo}\n  - name: b\n    when: 'tasks.a.status == \"succeeded\"'\n    uses: echo\n",
        expect: &[e("template-ref", (6, 12), Some((6, 26)), "add `a` to the parents of `b`")],
    },
    Case {
        name: "template-ref: a dashed name without brackets",
        format: Y,
        src: "version: 1\nname: demo\ntasks:\n  - {name: extract-text, uses: echo}\n  - name: b\n    parents: [extract-text]\n    when: 'tasks.extract-text.output.text != \"\"'\n    uses: echo\n",
        expect: &[e("template-ref", (7, 12), Some((7, 30)), "write `tasks[\"extract-text\"]`")],
    },
    Case {
        name: "template-ref: a condition reads an unknown variable, a field and a task",
        format: Y,
        src: "version: 1\nname: demo\ntasks:\n  - {name: split, uses: echo}\n  - name: b\n    parents: [split]\n    when: 'inputs.x == 1 && tasks.split.outputs == 1 && tasks[\"splt\"].status == \"ok\"'\n    uses: echo\n",
        expect: &[
            e("template-ref", (7, 12), Some((7, 18)), "did you mean `input`?"),
            e("template-ref", (7, 29), Some((7, 48)), "only `output` and `status`"),
            e("template-ref", (7, 57), Some((7, 77)), "did you mean `split`?"),
        ],
    },
    Case {
        name: "unreachable: all_success under a condition that is always false",
        format: Y,
        src: "version: 1\nname: demo\ntasks:\n  - {name: a, uses: echo, when: 'false'}\n  - {name: b, parents: [a], uses: echo}\n  - {name: c, parents: [b], uses: echo}\n  - {name: d, parents: [b], trigger: none_failed, uses: echo}\n",
        expect: &[
            e("unreachable", (5, 12), Some((5, 13)), "its condition is `false`"),
            e("unreachable", (6, 12), Some((6, 13)), "`b` can never start either"),
        ],
    },
    Case {
        name: "schema: unknown trigger rule (toml)",
        format: T,
        src: "version = 1\nname = \"demo\"\n[[tasks]]\nname = \"a\"\nuses = \"echo\"\n[[tasks]]\nname = \"b\"\nparents = [\"a\"]\ntrigger = \"alldone\"\nuses = \"echo\"\n",
        expect: &[e("schema", (9, 11), Some((9, 20)), "did you mean `all_done`?")],
    },
    Case {
        name: "schema: rollout field",
        format: Y,
        src: "version: 1\nname: demo\nbackend: {flag: f, varients: {\"1\": local}}\ntasks:\n  - name: a\n    uses: echo\n",
        expect: &[e("schema", (3, 20), Some((3, 28)), "did you mean `variants`?")],
    },
    Case {
        name: "duplicate-task",
        format: Y,
        src: "version: 1\nname: demo\ntasks:\n  - name: fetch\n    uses: echo\n  - name: fetch\n    uses: echo\n",
        expect: &[e("duplicate-task", (6, 11), Some((6, 16)), "first defined at line 4, column 11")],
    },
    Case {
        name: "unknown-parent with did you mean",
        format: Y,
        src: "version: 1\nname: demo\ntasks:\n  - name: extract-text\n    uses: echo\n  - name: summarise\n    parents: [extract-txt]\n    uses: echo\n",
        expect: &[e("unknown-parent", (7, 15), Some((7, 26)), "did you mean `extract-text`?")],
    },
    Case {
        name: "unknown-parent without a close name",
        format: Y,
        src: "version: 1\nname: demo\ntasks:\n  - name: a\n    uses: echo\n  - name: b\n    parents: [zz]\n    uses: echo\n",
        expect: &[e("unknown-parent", (7, 15), Some((7, 17)), "unknown parent `zz` of task `b`")],
    },
    Case {
        name: "cycle of three",
        format: Y,
        src: "version: 1\nname: demo\ntasks:\n  - name: a\n    parents: [c]\n    uses: echo\n  - name: b\n    parents: [a]\n    uses: echo\n  - name: c\n    parents: [b]\n    uses: echo\n",
        expect: &[e("cycle", (5, 15), Some((5, 16)), "the parents form a cycle: a -> b -> c -> a")],
    },
    Case {
        name: "cycle of two",
        format: Y,
        src: "version: 1\nname: demo\ntasks:\n  - {name: a, parents: [b], uses: echo}\n  - {name: b, parents: [a], uses: echo}\n",
        expect: &[e("cycle", (4, 25), Some((4, 26)), "the parents form a cycle: a -> b -> a")],
    },
    Case {
        name: "self-parent",
        format: Y,
        src: "version: 1\nname: demo\ntasks:\n  - name: a\n    parents: [a]\n    uses: echo\n",
        expect: &[e("self-parent", (5, 15), Some((5, 16)), "task `a` lists itself as a parent")],
    },
    Case {
        name: "action: none",
        format: Y,
        src: "version: 1\nname: demo\ntasks:\n  - name: a\n    timeout: 5s\n",
        expect: &[e("action", (4, 11), Some((4, 12)), "task `a` has no action")],
    },
    Case {
        name: "action: none, with given",
        format: Y,
        src: "version: 1\nname: demo\ntasks:\n  - name: a\n    with: {x: 1}\n",
        expect: &[e("action", (4, 11), Some((4, 12)), "add `uses: NAME`")],
    },
    Case {
        name: "action: two",
        format: Y,
        src: "version: 1\nname: demo\ntasks:\n  - name: a\n    run: [echo, hi]\n    shell: echo hi\n",
        expect: &[e("action", (6, 5), Some((6, 10)), "more than one action (`run` and `shell`)")],
    },
    Case {
        name: "duration",
        format: Y,
        src: "version: 1\nname: demo\ntimeout: 10 minutes-ish\ntasks:\n  - name: a\n    uses: echo\n",
        expect: &[e("duration", (3, 10), Some((3, 24)), "`10 minutes-ish` is not a duration")],
    },
    Case {
        name: "duration without a unit",
        format: Y,
        src: "version: 1\nname: demo\ntasks:\n  - name: a\n    uses: echo\n    retry: {attempts: 2, delay: \"5\"}\n",
        expect: &[e("duration", (6, 33), Some((6, 36)), "`5` has no unit")],
    },
    Case {
        name: "template",
        format: Y,
        src: "version: 1\nname: demo\ntasks:\n  - name: a\n    uses: echo\n    with: {path: \"{{input.path\"}\n",
        expect: &[e("template", (6, 19), Some((6, 21)), "invalid template")],
    },
    Case {
        name: "template: raw output in shell",
        format: Y,
        src: "version: 1\nname: demo\ntasks:\n  - name: a\n    shell: echo {{{input.x}}}\n",
        expect: &[e("template", (5, 17), Some((5, 20)), "raw `{{{ }}}` output is not allowed")],
    },
    Case {
        name: "template-ref: not an ancestor",
        format: Y,
        src: "version: 1\nname: demo\ntasks:\n  - name: a\n    uses: echo\n  - name: b\n    uses: echo\n    with: {x: \"{{tasks.a.output}}\"}\n",
        expect: &[e("template-ref", (8, 18), Some((8, 32)), "`a` is not an ancestor of `b`")],
    },
    Case {
        name: "template-ref: grand-parent is fine, sibling is not",
        format: Y,
        src: "version: 1\nname: demo\ntasks:\n  - {name: a, uses: echo}\n  - {name: b, parents: [a], uses: echo}\n  - {name: c, parents: [a], uses: echo}\n  - name: d\n    parents: [b]\n    run: [echo, \"{{tasks.a.output}} {{tasks.c.output}}\"]\n",
        expect: &[e("template-ref", (9, 39), Some((9, 53)), "`c` is not an ancestor of `d`")],
    },
    Case {
        name: "template-ref: undeclared input property",
        format: Y,
        src: "version: 1\nname: demo\ninput:\n  type: object\n  additionalProperties: false\n  properties:\n    document_path: {type: string}\ntasks:\n  - name: a\n    run: [cat, \"{{input.document_pth}}\"]\n",
        expect: &[e("template-ref", (10, 19), Some((10, 37)), "did you mean `document_path`?")],
    },
    Case {
        name: "template-ref: open input schema allows any property",
        format: Y,
        src: "version: 1\nname: demo\ninput:\n  type: object\n  properties:\n    document_path: {type: string}\ntasks:\n  - name: a\n    run: [cat, \"{{input.other}}\"]\n",
        expect: &[],
    },
    Case {
        name: "template-ref: unknown root",
        format: Y,
        src: "version: 1\nname: demo\ntasks:\n  - name: a\n    uses: echo\n    with: {x: \"{{inpt.x}}\"}\n",
        expect: &[e("template-ref", (6, 18), Some((6, 24)), "did you mean `input`?")],
    },
    Case {
        name: "unknown-helper: at the name, in text and in a shell script, nested too",
        format: Y,
        src: "version: 1\nname: demo\ntasks:\n  - name: a\n    uses: echo\n    with: {x: \"jsn {{jsn input.a}} {{#eachh input.b}}{{this}}{{/eachh}}\"}\n  - name: b\n    shell: |\n      echo start\n      echo {{ upperr (lowr input.a) }} {{json input.a}} {{#if (eq input.a 1)}}{{else iff input.b}}{{/if}}\n",
        expect: &[
            e("unknown-helper", (6, 22), Some((6, 25)), "did you mean `json`?"),
            e("unknown-helper", (6, 39), Some((6, 44)), "did you mean `each`?"),
            e("unknown-helper", (10, 15), Some((10, 21)), "did you mean `upper`?"),
            e("unknown-helper", (10, 23), Some((10, 27)), "did you mean `lower`?"),
            e("unknown-helper", (10, 86), Some((10, 89)), "did you mean `if`?"),
        ],
    },
    Case {
        name: "unknown-helper: no close name lists the helpers",
        format: Y,
        src: "version: 1\nname: demo\ntasks:\n  - name: a\n    uses: echo\n    with: {x: \"{{frobnicate input.a}}\"}\n",
        expect: &[e("unknown-helper", (6, 18), Some((6, 28)), "the helpers are `if`, `unless`, `each`")],
    },
    Case {
        name: "template-ref: unknown task",
        format: Y,
        src: "version: 1\nname: demo\ntasks:\n  - name: fetch\n    uses: echo\n  - name: b\n    parents: [fetch]\n    uses: echo\n    with: {x: \"{{tasks.fetc.output}}\"}\n",
        expect: &[e("template-ref", (9, 18), Some((9, 35)), "there is no task `fetc`")],
    },
    Case {
        name: "template: in the workflow's output",
        format: Y,
        src: "version: 1\nname: demo\ntasks:\n  - name: a\n    uses: echo\noutput:\n  x: \"{{tasks.a.output\"\n",
        expect: &[e("template", (7, 7), Some((7, 9)), "`{{` is never closed")],
    },
    Case {
        name: "template-ref: the output reads any task, but an unknown one is an error",
        format: Y,
        src: "version: 1\nname: demo\ntasks:\n  - name: split\n    uses: echo\n  - name: other\n    uses: echo\noutput:\n  pages: \"{{tasks.split.output.pages}}\"\n  nested: {all: [\"{{tasks.other.status}}\", \"{{tasks.splt.output}}\"]}\n",
        expect: &[e("template-ref", (10, 47), Some((10, 64)), "there is no task `splt`")],
    },
    Case {
        name: "template-ref: the output has no attempt, a task only output and status, and the roots as elsewhere",
        format: Y,
        src: "version: 1\nname: demo\ntasks:\n  - name: split\n    uses: echo\noutput:\n  bad: \"{{run.attempt}} {{tasks.split.outptu}} {{inpt.x}}\"\n",
        expect: &[
            e("template-ref", (7, 11), Some((7, 22)), "`run` has only `id`"),
            e("template-ref", (7, 27), Some((7, 45)), "only `output` and `status`"),
            e("template-ref", (7, 50), Some((7, 56)), "did you mean `input`?"),
        ],
    },
    Case {
        name: "timeout-exceeds",
        format: Y,
        src: "version: 1\nname: demo\ntimeout: 10m\ntasks:\n  - name: a\n    uses: echo\n    timeout: 1h\n",
        expect: &[e("timeout-exceeds", (7, 14), Some((7, 16)), "longer than the workflow timeout of 10m")],
    },
    Case {
        name: "timeout-exceeds through defaults",
        format: Y,
        src: "version: 1\nname: demo\ntimeout: 1m\ndefaults:\n  timeout: 2m\ntasks:\n  - name: a\n    uses: echo\n  - name: b\n    uses: echo\n    timeout: 30s\n",
        expect: &[e("timeout-exceeds", (5, 12), Some((5, 14)), "task `a` may run for 2m")],
    },
];

const TOML_CASES: &[Case] = &[
    Case { name: "toml: valid", format: T, src: "version = 1\nname = \"demo\"\n\n[[tasks]]\nname = \"a\"\nuses = \"echo\"\n", expect: &[] },
    Case { name: "toml: parse", format: T, src: "version = 1\nname = \"demo\n", expect: &[e("parse", (2, 13), None, "")] },
    Case {
        name: "toml: expression and a dashed name in a condition",
        format: T,
        src: "version = 1\nname = \"demo\"\n\n[[tasks]]\nname = \"extract-text\"\nuses = \"echo\"\n\n[[tasks]]\nname = \"b\"\nparents = [\"extract-text\"]\nwhen = 'tasks.extract-text.output.text != \"\"'\nuses = \"echo\"\n\n[[finally]]\nname = \"z\"\nwhen = 'run.status =='\nuses = \"echo\"\n",
        expect: &[
            e("template-ref", (11, 9), Some((11, 27)), "write `tasks[\"extract-text\"]`"),
            e("expression", (16, 20), Some((16, 21)), "invalid condition"),
        ],
    },
    Case {
        name: "toml: duplicate-key",
        format: T,
        src: "version = 1\nname = \"demo\"\nname = \"again\"\n",
        expect: &[e("duplicate-key", (3, 1), Some((3, 5)), "duplicate key `name`")],
    },
    Case {
        name: "toml: schema unknown field",
        format: T,
        src: "version = 1\nname = \"demo\"\n\n[[tasks]]\nname = \"a\"\nuses = \"echo\"\ntimout = \"5m\"\n",
        expect: &[e("schema", (7, 1), Some((7, 7)), "did you mean `timeout`?")],
    },
    Case {
        name: "toml: schema wrong type",
        format: T,
        src: "version = 1\nname = \"demo\"\n\n[[tasks]]\nname = \"a\"\nuses = \"echo\"\nretry = { attempts = \"3\" }\n",
        expect: &[e("schema", (7, 22), Some((7, 25)), "`attempts` must be an integer, found a string")],
    },
    Case {
        name: "toml: unknown-parent",
        format: T,
        src: "version = 1\nname = \"demo\"\n\n[[tasks]]\nname = \"extract-text\"\nuses = \"echo\"\n\n[[tasks]]\nname = \"b\"\nparents = [\"extract-txt\"]\nuses = \"echo\"\n",
        expect: &[e("unknown-parent", (10, 12), Some((10, 25)), "did you mean `extract-text`?")],
    },
    Case {
        name: "toml: cycle",
        format: T,
        src: "version = 1\nname = \"demo\"\n\n[[tasks]]\nname = \"a\"\nparents = [\"b\"]\nuses = \"echo\"\n\n[[tasks]]\nname = \"b\"\nparents = [\"a\"]\nuses = \"echo\"\n",
        expect: &[e("cycle", (6, 12), Some((6, 15)), "a -> b -> a")],
    },
    Case {
        name: "toml: self-parent and action",
        format: T,
        src: "version = 1\nname = \"demo\"\n\n[[tasks]]\nname = \"a\"\nparents = [\"a\"]\n",
        expect: &[e("action", (5, 8), Some((5, 11)), "has no action"), e("self-parent", (6, 12), Some((6, 15)), "lists itself")],
    },
    Case {
        name: "toml: duration",
        format: T,
        src: "version = 1\nname = \"demo\"\ntimeout = \"5 parsecs\"\n\n[[tasks]]\nname = \"a\"\nuses = \"echo\"\n",
        expect: &[e("duration", (3, 11), Some((3, 22)), "`5 parsecs` is not a duration")],
    },
    Case {
        name: "toml: template-ref",
        format: T,
        src: "version = 1\nname = \"demo\"\n\n[[tasks]]\nname = \"a\"\nuses = \"echo\"\n\n[[tasks]]\nname = \"b\"\nrun = [\"echo\", \"{{tasks.a.output}}\"]\n",
        expect: &[e("template-ref", (10, 19), Some((10, 33)), "`a` is not an ancestor of `b`")],
    },
    Case {
        name: "toml: template in the workflow's output",
        format: T,
        src: "version = 1\nname = \"demo\"\n\n[output]\nx = \"{{tasks.a.output\"\n\n[[tasks]]\nname = \"a\"\nuses = \"echo\"\n",
        expect: &[e("template", (5, 6), Some((5, 8)), "`{{` is never closed")],
    },
    Case {
        name: "toml: template-ref in the workflow's output",
        format: T,
        src: "version = 1\nname = \"demo\"\n\n[output]\nall = \"{{tasks.split.output}}\"\npages = \"{{tasks.splt.output}}\"\n\n[[tasks]]\nname = \"split\"\nuses = \"echo\"\n",
        expect: &[e("template-ref", (6, 12), Some((6, 29)), "did you mean `split`?")],
    },
    Case {
        name: "toml: timeout-exceeds",
        format: T,
        src: "version = 1\nname = \"demo\"\ntimeout = \"1m\"\n\n[[tasks]]\nname = \"a\"\nuses = \"echo\"\ntimeout = \"1h\"\n",
        expect: &[e("timeout-exceeds", (8, 11), Some((8, 15)), "longer than the workflow timeout")],
    },
];

#[test]
fn yaml_table() {
    run_cases(YAML_CASES, &Options::default());
}

#[test]
fn toml_table() {
    run_cases(TOML_CASES, &Options::default());
}

#[test]
fn every_code_has_a_case() {
    let mut seen: Vec<&str> = YAML_CASES.iter().flat_map(|c| c.expect.iter().map(|x| x.code)).collect();
    // Checked in their own tests below: they need options or a folder.
    seen.extend(["unknown-backend", "duplicate-workflow", "too-many-diagnostics", "external-symlink"]);
    // Checked in their own tests below: they need handlers, a configuration or flags.
    seen.extend(["unknown-handler", "handler-args", "output-field", "url", "backend-action", "unknown-flag"]);
    for code in Code::ALL {
        assert!(seen.contains(&code.as_str()), "no YAML case for `{code}`");
    }
}

#[test]
fn unknown_backend_needs_a_configuration() {
    let src = "version: 1\nname: demo\nbackend: celry\ntasks:\n  - name: a\n    uses: echo\n";
    let opts = Options { backends: Some(vec!["local".into(), "celery".into(), "temporal".into()]), ..Default::default() };
    let checked = check("backend.yaml", src.as_bytes(), Y, &opts);
    assert_diags("unknown-backend", &checked.diagnostics, &[e("unknown-backend", (3, 10), Some((3, 15)), "did you mean `celery`?")]);
    // Without a configuration, any name goes.
    assert!(check("backend.yaml", src.as_bytes(), Y, &Options::default()).diagnostics.is_empty());

    let rollout = "version: 1\nname: demo\nbackend:\n  flag: move\n  variants: {\"100\": temporl, \"0\": celery}\n  default: pg\ntasks:\n  - name: a\n    uses: echo\n";
    let checked = check("rollout.yaml", rollout.as_bytes(), Y, &opts);
    assert_diags(
        "unknown-backend in a rollout",
        &checked.diagnostics,
        &[
            e("unknown-backend", (5, 21), Some((5, 28)), "did you mean `temporal`?"),
            e("unknown-backend", (6, 12), Some((6, 14)), "configured backends: local, celery, temporal"),
        ],
    );
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::create_dir_all(p.parent().expect("a parent")).expect("mkdir");
    std::fs::write(&p, text).expect("write");
    p
}

#[test]
fn duplicate_workflow_in_a_folder() {
    let dir = tempfile::tempdir().expect("tempdir");
    write(dir.path(), "a.yaml", "version: 1\nname: billing\ntasks:\n  - name: a\n    uses: echo\n");
    write(dir.path(), "nested/b.toml", "version = 1\nname = \"billing\"\n\n[[tasks]]\nname = \"a\"\nuses = \"echo\"\n");
    write(dir.path(), "c.yml", "version: 1\nname: billing-v2\ntasks:\n  - name: a\n    uses: echo\n");
    let checked = check_paths(&[dir.path().to_path_buf()], &Options::default()).expect("check");
    assert_eq!(checked.len(), 3);
    let b = checked.iter().find(|c| c.file.ends_with("b.toml")).expect("b.toml checked");
    assert_diags("duplicate-workflow", &b.diagnostics, &[e("duplicate-workflow", (2, 8), Some((2, 17)), "also declared in")]);
    assert!(b.diagnostics[0].message.contains("a.yaml"), "{}", b.diagnostics[0].message);
    assert!(b.workflow.is_none());
    for c in checked.iter().filter(|c| !c.file.ends_with("b.toml")) {
        assert!(c.diagnostics.is_empty(), "{}: {}", c.file, show(&c.diagnostics));
    }
    // Two files named one by one are not a folder: no duplicate.
    let files: Vec<PathBuf> = ["a.yaml", "nested/b.toml"].iter().map(|f| dir.path().join(f)).collect();
    let checked = check_paths(&files, &Options::default()).expect("check");
    assert!(checked.iter().all(|c| c.diagnostics.is_empty()));
}

// ---------------------------------------------------------------------------
// Everything at once

#[test]
fn all_findings_at_once() {
    let src = "\
version: 1
name: Many Problems
timeout: 10m
tasks:
  - name: a
    uses: echo
    timout: 5m
  - name: b
    parents: [a, zzz]
    run: [echo, \"{{tasks.c.output}}\"]
    shell: echo
  - name: c
    parents: [d]
    timeout: 1h
    uses: echo
  - name: d
    parents: [c]
    uses: echo
    with: {x: \"{{inpt.x}}\", y: \"{{tasks.a.output\"}
  - name: d
    parents: [d]
    retry: {attempts: 2, delay: soon}
";
    let checked = check("many.yaml", src.as_bytes(), Y, &Options::default());
    assert_diags(
        "many",
        &checked.diagnostics,
        &[
            e("schema", (2, 7), Some((2, 20)), "invalid name `Many Problems`"),
            e("schema", (7, 5), Some((7, 11)), "did you mean `timeout`?"),
            e("unknown-parent", (9, 18), Some((9, 21)), "unknown parent `zzz` of task `b`"),
            e("template-ref", (10, 20), Some((10, 34)), "`c` is not an ancestor of `b`"),
            e("action", (11, 5), Some((11, 10)), "more than one action"),
            e("cycle", (13, 15), Some((13, 16)), "c -> d -> c"),
            e("timeout-exceeds", (14, 14), Some((14, 16)), "longer than the workflow timeout"),
            e("template-ref", (19, 18), Some((19, 24)), "did you mean `input`?"),
            e("template", (19, 33), Some((19, 35)), "`{{` is never closed"),
            e("duplicate-task", (20, 11), Some((20, 12)), "first defined at line 16, column 11"),
            e("action", (20, 11), Some((20, 12)), "has no action"),
            e("self-parent", (21, 15), Some((21, 16)), "lists itself"),
            e("duration", (22, 33), Some((22, 37)), "`soon` is not a duration"),
        ],
    );
    assert!(checked.workflow.is_none());
}

// ---------------------------------------------------------------------------
// YAML corner cases

fn valid(src: &str) -> std::sync::Arc<taskweave::Workflow> {
    let checked = check("valid.yaml", src.as_bytes(), Y, &Options::default());
    assert!(checked.diagnostics.is_empty(), "expected no diagnostics, got\n{}", show(&checked.diagnostics));
    checked.workflow.expect("a workflow")
}

#[test]
fn anchors_aliases_and_merge_keys() {
    let wf = valid(
        "\
version: 1
name: anchors
tasks:
  - &base
    name: a
    uses: echo
    timeout: 5m
    retry: &retry {attempts: 3, delay: 1s}
    with: &args {mode: fast, n: 1}
  - <<: *base
    name: b
    parents: [a]
  - name: c
    parents: [a]
    run: [echo, c]
    retry: *retry
  - <<: [*base]
    name: d
    parents: [b, c]
    with: {<<: *args, n: 2}
",
    );
    let names: Vec<&str> = wf.tasks.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(names, ["a", "b", "c", "d"]);
    let b = &wf.raw.tasks[1];
    assert_eq!(b.uses.as_deref(), Some("echo"));
    assert_eq!(b.timeout.as_ref().map(|t| t.0.as_str()), Some("5m"));
    assert_eq!(wf.raw.tasks[2].retry.as_ref().map(|r| r.attempts), Some(3));
    // Explicit keys win over merged ones.
    assert_eq!(wf.raw.tasks[3].with_, Some(serde_json::json!({"n": 2, "mode": "fast"})));
    assert_eq!(wf.raw.tasks[3].parents, ["b", "c"]);
}

#[test]
fn merge_of_a_scalar_is_a_parse_error() {
    let src = "version: 1\nname: demo\ntasks:\n  - name: a\n    uses: echo\n    with: {<<: 5}\n";
    let checked = check("merge.yaml", src.as_bytes(), Y, &Options::default());
    assert_diags("merge scalar", &checked.diagnostics, &[e("parse", (6, 16), None, "a merge key (`<<`) takes a mapping")]);
}

#[test]
fn unknown_alias_is_a_parse_error() {
    let src = "version: 1\nname: demo\ntasks:\n  - name: a\n    uses: *nothing\n";
    let checked = check("alias.yaml", src.as_bytes(), Y, &Options::default());
    assert_eq!(checked.diagnostics.len(), 1, "{}", show(&checked.diagnostics));
    assert_eq!(checked.diagnostics[0].code, Code::Parse);
    assert_eq!(checked.diagnostics[0].span.start.line, 5);
}

#[test]
fn duplicate_keys_point_at_the_second_key() {
    let src = "version: 1\nname: demo\nname: other\ntasks:\n  - {name: a, uses: echo, uses: sleep}\n  - name: b\n    uses: echo\n    with:\n      x: 1\n      y: 2\n      x: 3\n";
    let checked = check("dup.yaml", src.as_bytes(), Y, &Options::default());
    assert_diags(
        "duplicate keys",
        &checked.diagnostics,
        &[
            e("duplicate-key", (3, 1), Some((3, 5)), "`name` is first set at line 2, column 1"),
            e("duplicate-key", (5, 27), Some((5, 31)), "`uses` is first set at line 5, column 15"),
            e("duplicate-key", (11, 7), Some((11, 8)), "`x` is first set at line 9, column 7"),
        ],
    );
    // Quoted and plain spellings are the same key.
    let src = "version: 1\nname: demo\n\"name\": other\ntasks: [{name: a, uses: echo}]\n";
    let checked = check("dup.yaml", src.as_bytes(), Y, &Options::default());
    assert_diags("quoted duplicate", &checked.diagnostics, &[e("duplicate-key", (3, 1), Some((3, 7)), "duplicate key `name`")]);
}

#[test]
fn tabs_used_for_indentation_are_parse_errors_at_the_tab() {
    let head = "version: 1\nname: demo\ntasks:\n";
    let cases: &[(&str, (u32, u32))] = &[
        // The whole item indented with a tab.
        ("\t- name: a\n\t  uses: echo\n", (4, 1)),
        // A continuation line indented with a tab.
        ("  - name: a\n\t  uses: echo\n", (5, 1)),
        // Spaces, then a tab.
        ("  - name: a\n    uses: echo\n    with:\n  \t  x: 1\n", (7, 3)),
        // After a block scalar: the tab is outside it, in the mapping's indentation.
        ("  - name: a\n    shell: |\n      echo a\n    \t  b: 1\n", (7, 5)),
        // A flow collection continued on a tab-indented line.
        ("  - name: a\n    uses: echo\n    with: {a: 1,\n\tb: 2}\n", (7, 1)),
    ];
    for (body, at) in cases {
        let src = format!("{head}{body}");
        let checked = check("tab.yaml", src.as_bytes(), Y, &Options::default());
        assert_diags(
            &format!("{body:?}"),
            &checked.diagnostics,
            &[e("parse", *at, Some((at.0, at.1 + 1)), "YAML indentation must use spaces, never tabs")],
        );
        assert_eq!(checked.diagnostics[0].message, "a tab is used for indentation");
    }
}

#[test]
fn tabs_inside_scalars_are_content() {
    let wf = valid(
        "version: 1\nname: demo\ntasks:\n  - name: a\n    shell: |\n      printf 'a\\tb'\n      \techo tabbed\n  - name: b\n    uses: echo\n    with: {x: \"a\tb\", y: 'c\td', z: \"line\n\tcontinued\"}\n    description: text\tafter\n",
    );
    assert_eq!(wf.raw.tasks[0].shell.as_deref(), Some("printf 'a\\tb'\n\techo tabbed\n"));
    assert_eq!(wf.raw.tasks[1].with_, Some(serde_json::json!({"x": "a\tb", "y": "c\td", "z": "line continued"})));
    assert_eq!(wf.raw.tasks[1].description.as_deref(), Some("text\tafter"));
}

#[test]
fn a_tab_far_from_another_error_is_reported_with_it() {
    // Block scalar content with a tab must not be blamed for a later error.
    let src = "version: 1\nname: demo\ntasks:\n  - name: a\n    shell: |\n      \techo ok\n  - name: b\n    uses: [unclosed\n";
    let checked = check("tabs.yaml", src.as_bytes(), Y, &Options::default());
    assert_eq!(checked.diagnostics.len(), 1, "{}", show(&checked.diagnostics));
    assert_eq!(checked.diagnostics[0].code, Code::Parse);
    assert_ne!(checked.diagnostics[0].message, "a tab is used for indentation");
    assert!(checked.diagnostics[0].span.start.line >= 8, "{}", show(&checked.diagnostics));
}

#[test]
fn scalars_are_strict() {
    let wf = valid(
        "version: 1\nname: demo\ntasks:\n  - name: a\n    uses: echo\n    with: {a: no, b: yes, c: on, d: off, e: 0755, f: 1.0, g: 12, h: true, i: ~, j: 0x1F, k: 1e3, l: \"12\", m: y, n: 1_000, o: .5}\n",
    );
    assert_eq!(
        wf.raw.tasks[0].with_,
        Some(serde_json::json!({
            "a": "no", "b": "yes", "c": "on", "d": "off", "e": "0755", "f": 1.0, "g": 12, "h": true,
            "i": null, "j": 31, "k": 1000.0, "l": "12", "m": "y", "n": "1_000", "o": 0.5
        }))
    );
    // A name that YAML 1.1 would read as a boolean stays a name.
    let wf = valid("version: 1\nname: \"on\"\ntasks:\n  - name: no\n    uses: echo\n  - name: yes\n    parents: [no]\n    uses: echo\n");
    assert_eq!(wf.tasks[1].name, "yes");
    assert_eq!(wf.tasks[1].parents, [0]);
}

#[test]
fn several_yaml_documents_are_an_error() {
    let src = "version: 1\nname: demo\ntasks: [{name: a, uses: echo}]\n---\nversion: 1\nname: other\n";
    let checked = check("docs.yaml", src.as_bytes(), Y, &Options::default());
    assert_diags("two documents", &checked.diagnostics, &[e("parse", (4, 1), Some((4, 4)), "exactly one YAML document")]);
    // A leading `---` is one document.
    valid("---\nversion: 1\nname: demo\ntasks: [{name: a, uses: echo}]\n");
}

#[test]
fn undecodable_files() {
    type Case<'a> = (&'a [u8], Format, (u32, u32), &'a str);
    let cases: &[Case] = &[
        (b"", Y, (1, 1), "the file is empty"),
        (b"  \n\n# only a comment\n", Y, (1, 1), "the file holds no YAML document"),
        (b"\n\n", T, (1, 1), "the file is empty"),
        (b"version: 1\nname: caf\xe9\n", Y, (2, 10), "not valid UTF-8"),
        (b"version = 1\nname = \"\xff\"\n", T, (2, 9), "not valid UTF-8"),
        (b"version: 1\n\x00\x01\x02binary", Y, (2, 1), "looks binary"),
        (b"\x89PNG\r\n\x1a\n\x00\x00", Y, (1, 1), "not valid UTF-8"),
    ];
    for (bytes, format, at, says) in cases {
        let checked = check("file", bytes, *format, &Options::default());
        assert_diags(&format!("{bytes:?}"), &checked.diagnostics, &[e("parse", *at, None, says)]);
    }
    // A byte-order mark is not content.
    let checked = check("bom.yaml", "\u{feff}version: 1\nname: demo\ntasks: [{name: a, uses: echo}]\n".as_bytes(), Y, &Options::default());
    assert!(checked.diagnostics.is_empty(), "{}", show(&checked.diagnostics));
}

#[test]
fn a_document_that_is_not_a_mapping() {
    for (src, format) in [("- a\n- b\n", Y), ("just text\n", Y)] {
        let checked = check("list.yaml", src.as_bytes(), format, &Options::default());
        assert_diags(src, &checked.diagnostics, &[e("schema", (1, 1), None, "must be a mapping")]);
    }
}

#[test]
fn the_shipped_workflows_are_valid() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("workflows");
    let checked = check_paths(&[root], &Options::default()).expect("check");
    assert!(!checked.is_empty());
    for c in &checked {
        assert!(c.diagnostics.is_empty(), "{}:\n{}", c.file, show(&c.diagnostics));
        assert!(c.workflow.is_some());
    }
}

#[test]
fn a_large_workflow_validates() {
    let text = taskweave::bench::validate::workflow_yaml("large", 10_000, 7);
    let checked = check("large.yaml", text.as_bytes(), Y, &Options::default());
    assert!(checked.diagnostics.is_empty(), "{}", show(&checked.diagnostics[..checked.diagnostics.len().min(5)]));
    assert_eq!(checked.workflow.expect("a workflow").tasks.len(), 10_000);
    let text = taskweave::bench::validate::workflow_toml("large", 2_000, 7);
    let checked = check("large.toml", text.as_bytes(), T, &Options::default());
    assert!(checked.diagnostics.is_empty(), "{}", show(&checked.diagnostics[..checked.diagnostics.len().min(5)]));
}

// ---------------------------------------------------------------------------
// Rendering

fn human(name: &str, src: &str, format: Format, opts: &Options) -> String {
    let checked = check(name, src.as_bytes(), format, opts);
    let rendered: Vec<String> = checked.diagnostics.iter().map(|d| render_human(d, checked.text.as_deref(), false)).collect();
    rendered.join("\n\n") + "\n"
}

#[test]
fn rendered_unknown_parent() {
    let src = "version: 1\nname: demo\ntasks:\n  - name: extract-text\n    uses: echo\n  - name: summarise\n    parents: [extract-txt]\n    uses: echo\n";
    assert_eq!(
        human("flow.yaml", src, Y, &Options::default()),
        "\
error[unknown-parent]: unknown parent `extract-txt` of task `summarise`
 --> flow.yaml:7:15
  |
7 |     parents: [extract-txt]
  |               ^^^^^^^^^^^
  |
  = help: did you mean `extract-text`?
"
    );
}

#[test]
fn rendered_cycle_and_warning() {
    let src = "version: 1\nname: demo\ntimeout: 1m\ntasks:\n  - {name: a, parents: [b], uses: echo}\n  - {name: b, parents: [a], uses: echo, timeout: 1h}\n";
    assert_eq!(
        human("cycle.yaml", src, Y, &Options::default()),
        "\
error[cycle]: the parents form a cycle: a -> b -> a
 --> cycle.yaml:5:25
  |
5 |   - {name: a, parents: [b], uses: echo}
  |                         ^
  |
  = help: remove one of these parent links

warning[timeout-exceeds]: task `b` may run for 1h, longer than the workflow timeout of 1m
 --> cycle.yaml:6:50
  |
6 |   - {name: b, parents: [a], uses: echo, timeout: 1h}
  |                                                  ^^
  |
  = help: the workflow timeout will stop the task first; shorten the task timeout or lengthen the workflow's
"
    );
}

#[test]
fn rendered_toml_duplicate_key() {
    let src = "version = 1\nname = \"demo\"\nname = \"again\"\n";
    assert_eq!(
        human("dup.toml", src, T, &Options::default()),
        "\
error[duplicate-key]: duplicate key `name`
 --> dup.toml:3:1
  |
3 | name = \"again\"
  | ^^^^
"
    );
}

#[test]
fn rendered_tab() {
    let src = "version: 1\nname: demo\ntasks:\n\t- name: a\n";
    assert_eq!(
        human("tab.yaml", src, Y, &Options::default()),
        "\
error[parse]: a tab is used for indentation
 --> tab.yaml:4:1
  |
4 |     - name: a
  | ^^^^
  |
  = help: YAML indentation must use spaces, never tabs
"
    );
}

#[test]
fn json_and_github_forms() {
    let src = "version: 1\nname: demo\ntasks:\n  - name: a\n    parents: [b]\n    uses: echo\n";
    let checked = check("w.yaml", src.as_bytes(), Y, &Options::default());
    let json: Value = serde_json::from_str(&render_json(&checked.diagnostics)).expect("json");
    assert_eq!(
        json,
        serde_json::json!([{
            "severity": "error", "code": "unknown-parent", "message": "unknown parent `b` of task `a`",
            "file": "w.yaml", "line": 5, "column": 15, "end_line": 5, "end_column": 16, "help": null
        }])
    );
    assert_eq!(
        render_github(&checked.diagnostics[0]),
        "::error file=w.yaml,line=5,col=15,endLine=5,endColumn=16,title=unknown-parent::[unknown-parent] unknown parent `b` of task `a`"
    );
}

// ---------------------------------------------------------------------------
// The binary

fn taskweave() -> Command {
    let mut c = Command::cargo_bin("taskweave").expect("the taskweave binary");
    c.env("NO_COLOR", "1").env_remove("TASKWEAVE_CONFIG");
    c
}

struct Files {
    dir: tempfile::TempDir,
}

impl Files {
    fn new(files: &[(&str, &str)]) -> Files {
        let dir = tempfile::tempdir().expect("tempdir");
        for (name, text) in files {
            write(dir.path(), name, text);
        }
        Files { dir }
    }

    fn cmd(&self) -> Command {
        let mut c = taskweave();
        c.current_dir(self.dir.path());
        c
    }
}

const VALID: &str = "version: 1\nname: demo\ntasks:\n  - name: a\n    uses: echo\n";
const WARNS: &str = "version: 1\nname: warns\ntimeout: 1m\ntasks:\n  - name: a\n    uses: echo\n    timeout: 1h\n";
const BROKEN: &str = "version: 1\nname: broken\ntasks:\n  - name: a\n    parents: [b]\n    uses: echo\n";

#[test]
fn cli_exit_codes() {
    let f = Files::new(&[("ok.yaml", VALID), ("warns.yaml", WARNS), ("broken.yaml", BROKEN)]);
    f.cmd().args(["validate", "ok.yaml"]).assert().code(0).stdout("1 file checked: 0 errors, 0 warnings\n");
    f.cmd().args(["validate", "warns.yaml"]).assert().code(0).stdout(predicates::str::contains("1 file checked: 0 errors, 1 warning\n"));
    f.cmd().args(["validate", "--deny-warnings", "warns.yaml"]).assert().code(1);
    f.cmd()
        .args(["validate", "broken.yaml", "ok.yaml"])
        .assert()
        .code(1)
        .stdout(predicates::str::contains("2 files checked: 1 error, 0 warnings"));
    f.cmd().args(["validate", "missing.yaml"]).assert().code(2).stderr(predicates::str::contains("missing.yaml"));
    f.cmd().args(["validate", "ok.yaml", "missing/"]).assert().code(2);
    f.cmd().args(["validate", "--format", "xml", "ok.yaml"]).assert().code(2);
    f.cmd().arg("validate").assert().code(2);
}

#[test]
fn cli_human_output() {
    let f = Files::new(&[("broken.yaml", BROKEN)]);
    f.cmd().args(["validate", "broken.yaml"]).assert().code(1).stdout(
        "\
error[unknown-parent]: unknown parent `b` of task `a`
 --> broken.yaml:5:15
  |
5 |     parents: [b]
  |               ^

1 file checked: 1 error, 0 warnings
",
    );
}

#[test]
fn cli_json_output() {
    let f = Files::new(&[("broken.yaml", BROKEN), ("warns.yaml", WARNS)]);
    let out = f.cmd().args(["validate", "--format", "json", "broken.yaml", "warns.yaml"]).assert().code(1).get_output().stdout.clone();
    let json: Value = serde_json::from_slice(&out).expect("a JSON array");
    let items = json.as_array().expect("an array");
    assert_eq!(items.len(), 2);
    let keys = ["code", "column", "end_column", "end_line", "file", "help", "line", "message", "severity"];
    for item in items {
        let mut got: Vec<&str> = item.as_object().expect("an object").keys().map(String::as_str).collect();
        got.sort_unstable();
        assert_eq!(got, keys);
    }
    assert_eq!(items[0]["code"], "unknown-parent");
    assert_eq!(items[0]["severity"], "error");
    assert_eq!(items[1]["code"], "timeout-exceeds");
    assert_eq!(items[1]["severity"], "warning");
    assert_eq!((items[1]["line"].as_u64(), items[1]["column"].as_u64()), (Some(7), Some(14)));
    // Valid files: an empty array.
    let f = Files::new(&[("ok.yaml", VALID)]);
    f.cmd().args(["validate", "--format", "json", "ok.yaml"]).assert().code(0).stdout("[]\n");
}

#[test]
fn cli_github_output() {
    let f = Files::new(&[("broken.yaml", BROKEN), ("warns.yaml", WARNS)]);
    f.cmd().args(["validate", "--format", "github", "broken.yaml", "warns.yaml"]).assert().code(1).stdout(
        "::error file=broken.yaml,line=5,col=15,endLine=5,endColumn=16,title=unknown-parent::[unknown-parent] unknown parent `b` of task `a`\n\
         ::warning file=warns.yaml,line=7,col=14,endLine=7,endColumn=16,title=timeout-exceeds::[timeout-exceeds] task `a` may run for 1h, longer than the workflow timeout of 1m (help: the workflow timeout will stop the task first; shorten the task timeout or lengthen the workflow's)\n",
    );
}

#[test]
fn cli_folder_with_duplicate_workflows() {
    let f = Files::new(&[("flows/a.yaml", VALID), ("flows/b.yaml", VALID), ("flows/notes.txt", "not a workflow")]);
    f.cmd().args(["validate", "--format", "github", "flows"]).assert().code(1).stdout(predicates::str::contains(
        "title=duplicate-workflow::[duplicate-workflow] workflow `demo` is also declared in flows/a.yaml",
    ));
}

#[test]
fn cli_explain_every_code() {
    for code in Code::ALL {
        taskweave()
            .args(["explain", code.as_str()])
            .assert()
            .code(0)
            .stdout(predicates::str::starts_with(format!("{} ({})\n", code.as_str(), code.severity().as_str())))
            .stdout(predicates::str::contains("Example that triggers it:"));
    }
    let listing = taskweave().arg("explain").assert().code(0).get_output().stdout.clone();
    let listing = String::from_utf8(listing).expect("utf-8");
    for code in Code::ALL {
        assert!(listing.lines().any(|l| l.starts_with(code.as_str())), "`explain` lists {code}");
    }
    taskweave()
        .args(["explain", "unknown-parnt"])
        .assert()
        .code(2)
        .stderr(predicates::str::contains("unknown code `unknown-parnt`"))
        .stderr(predicates::str::contains("did you mean `unknown-parent`?"));
}

#[test]
fn explain_examples_trigger_their_code() {
    // Each explanation's example really produces its code, and its fix does not.
    let opts = Options {
        backends: Some(vec!["local".into(), "celery".into()]),
        backend_kinds: Some((kinds(&[("local", "local"), ("celery", "celery")]), "local".into())),
        flags: Some(std::sync::Arc::new(flag_source())),
        ..Default::default()
    }
    .with_builtin_handlers();
    for code in Code::ALL {
        // They need a folder, a symbolic link or hundreds of findings: their own tests show them.
        if matches!(code, Code::DuplicateWorkflow | Code::ExternalSymlink | Code::TooManyDiagnostics) {
            continue;
        }
        let (bad, good) = code.examples();
        let bad = check("bad.yaml", bad.as_bytes(), Y, &opts);
        assert!(bad.diagnostics.iter().any(|d| d.code == *code), "{code}: the example gives\n{}", show(&bad.diagnostics));
        let good = check("good.yaml", good.as_bytes(), Y, &opts);
        assert!(good.diagnostics.is_empty(), "{code}: the fix gives\n{}", show(&good.diagnostics));
    }
}

#[test]
fn cli_graph_shows_trigger_rules() {
    let join = "version: 1\nname: join\ntasks:\n  - {name: a, uses: echo}\n  - {name: b, parents: [a], trigger: all_done, uses: echo}\n";
    let f = Files::new(&[("join.yaml", join)]);
    f.cmd().args(["graph", "join.yaml"]).assert().code(0).stdout(
        "\
flowchart TD
    t0[\"a (uses)\"]
    t1[\"b (uses)<br/>trigger: all_done\"]
    t0 -.-> t1
",
    );
    f.cmd().args(["graph", "--format", "dot", "join.yaml"]).assert().code(0).stdout(
        "\
digraph \"join\" {
    rankdir=TB;
    node [shape=box];
    \"a\" [label=\"a\\n(uses)\"];
    \"b\" [label=\"b\\n(uses)\\ntrigger: all_done\"];
    \"a\" -> \"b\" [style=dashed];
}
",
    );
}

#[test]
fn cli_graph_shows_conditions() {
    let src = "version: 1\nname: cond\ntasks:\n  - {name: a, uses: echo}\n  - {name: b, parents: [a], when: 'tasks.a.output.x == \"<y>\"', uses: echo}\n";
    let f = Files::new(&[("cond.yaml", src)]);
    f.cmd()
        .args(["graph", "cond.yaml"])
        .assert()
        .code(0)
        .stdout(predicates::str::contains("t1[\"b (uses)<br/>when: tasks.a.output.x == #quot;#lt;y#gt;#quot;\"]"));
    f.cmd()
        .args(["graph", "--format", "dot", "cond.yaml"])
        .assert()
        .code(0)
        .stdout(predicates::str::contains("\"b\" [label=\"b\\n(uses)\\nwhen: tasks.a.output.x == \\\"<y>\\\"\"];"));
}

#[test]
fn cli_graph_of_a_diamond() {
    let diamond = "version: 1\nname: diamond\ntasks:\n  - {name: a, uses: echo}\n  - {name: b, parents: [a], uses: echo}\n  - {name: c, parents: [a], run: [date]}\n  - {name: d, parents: [b, c], uses: echo}\n";
    let f = Files::new(&[("diamond.yaml", diamond), ("broken.yaml", BROKEN)]);
    f.cmd().args(["graph", "diamond.yaml"]).assert().code(0).stdout(
        "\
flowchart TD
    t0[\"a (uses)\"]
    t1[\"b (uses)\"]
    t2[\"c (run)\"]
    t3[\"d (uses)\"]
    t0 --> t1
    t0 --> t2
    t1 --> t3
    t2 --> t3
",
    );
    f.cmd().args(["graph", "--format", "dot", "diamond.yaml"]).assert().code(0).stdout(
        "\
digraph \"diamond\" {
    rankdir=TB;
    node [shape=box];
    \"a\" [label=\"a\\n(uses)\"];
    \"b\" [label=\"b\\n(uses)\"];
    \"c\" [label=\"c\\n(run)\"];
    \"d\" [label=\"d\\n(uses)\"];
    \"a\" -> \"b\";
    \"a\" -> \"c\";
    \"b\" -> \"d\";
    \"c\" -> \"d\";
}
",
    );
    f.cmd().args(["graph", "broken.yaml"]).assert().code(1).stderr(predicates::str::contains("error[unknown-parent]"));
    f.cmd().args(["graph", "missing.yaml"]).assert().code(2);
}

// ---------------------------------------------------------------------------
// The benchmark, as figures (not a test of speed): run with
// `cargo test --release --test validate -- --ignored --nocapture bench_figures`.

#[test]
#[ignore = "a benchmark: prints figures"]
fn bench_figures() {
    let dir = tempfile::tempdir().expect("tempdir");
    let files = std::env::var("BENCH_FILES").ok().and_then(|v| v.parse().ok()).unwrap_or(1000);
    let tasks = std::env::var("BENCH_TASKS").ok().and_then(|v| v.parse().ok()).unwrap_or(50);
    let report = taskweave::bench::validate::bench_validate(dir.path(), files, tasks).expect("bench");
    println!("{}", serde_json::to_string_pretty(&report).expect("json"));
    assert_eq!(report.diagnostics, 0);
}

#[test]
fn severity_is_the_codes() {
    for code in Code::ALL {
        let warning =
            matches!(code, Code::TimeoutExceeds | Code::TooManyDiagnostics | Code::ExternalSymlink | Code::UnknownFlag | Code::Unreachable);
        let expected = if warning { Severity::Warning } else { Severity::Error };
        assert_eq!(code.severity(), expected, "{code}");
    }
}

#[test]
fn far_ancestors_are_judged_exactly() {
    // Two chains of 300 tasks joined at the end: references further than a
    // short walk are answered by the exact pass.
    let mut s = String::from("version: 1\nname: chains\ntasks:\n");
    for chain in ["a", "b"] {
        for i in 0..300 {
            let parents = if i == 0 { String::new() } else { format!(", parents: [{chain}{}]", i - 1) };
            s.push_str(&format!("  - {{name: {chain}{i}, uses: echo{parents}}}\n"));
        }
    }
    s.push_str("  - name: end\n    parents: [a299, b299]\n    run: [echo, \"{{tasks.a0.output}}\", \"{{tasks.b0.output}}\"]\n");
    s.push_str("  - name: side\n    parents: [a299]\n    run: [echo, \"{{tasks.a1.output}}\", \"{{tasks.b1.output}}\", \"{{tasks.end.output}}\"]\n");
    let checked = check("chains.yaml", s.as_bytes(), Y, &Options::default());
    assert_diags(
        "far ancestors",
        &checked.diagnostics,
        &[
            e("template-ref", (609, 43), Some((609, 58)), "`b1` is not an ancestor of `side`"),
            e("template-ref", (609, 66), Some((609, 82)), "`end` is not an ancestor of `side`"),
        ],
    );
}

#[test]
fn cli_unknown_backend_with_a_configuration() {
    let config = "[backends.local]\nkind = \"local\"\n\n[backends.celery]\nkind = \"celery\"\nbroker = \"redis://127.0.0.1:6379/0\"\n";
    let flow = "version: 1\nname: demo\nbackend: celry\ntasks:\n  - name: a\n    uses: echo\n";
    let f = Files::new(&[("taskweave.toml", config), ("flow.yaml", flow)]);
    f.cmd().args(["validate", "--format", "github", "flow.yaml"]).assert().code(1).stdout(
        "::error file=flow.yaml,line=3,col=10,endLine=3,endColumn=15,title=unknown-backend::[unknown-backend] unknown backend `celry` (help: did you mean `celery`?)\n",
    );
    // Without a configuration, backend names are not checked.
    let f = Files::new(&[("flow.yaml", flow)]);
    f.cmd().args(["validate", "flow.yaml"]).assert().code(0);
}

// ---------------------------------------------------------------------------
// Floods of findings: a file reports at most `max_diagnostics` of them plus
// one "and N more"; finding, sorting and rendering them is linear.

/// A workflow of `n` tasks, each naming a parent that does not exist.
fn unknown_parents(n: usize) -> String {
    let mut s = String::from("version: 1\nname: flood\ntasks:\n");
    for i in 0..n {
        s.push_str(&format!("  - {{name: t{i}, uses: echo, parents: [nope{i}]}}\n"));
    }
    s
}

#[test]
fn a_flood_of_findings_is_capped_and_counted_exactly() {
    let n = 50_000;
    let src = unknown_parents(n);
    let started = std::time::Instant::now();
    let checked = check("flood.yaml", src.as_bytes(), Y, &Options::default());
    let elapsed = started.elapsed();
    let d = &checked.diagnostics;
    assert_eq!(d.len(), 201, "{}", show(&d[..5]));
    for (i, x) in d[..200].iter().enumerate() {
        assert_eq!((x.code, x.span.start.line, x.span.start.column), (Code::UnknownParent, i as u32 + 4, 37 + digits(i)), "{i}");
    }
    let more = &d[200];
    assert_eq!((more.code, more.severity), (Code::TooManyDiagnostics, Severity::Error));
    assert_eq!(more.message, "and 49800 more not shown (49800 errors), the first of them here");
    // At the first finding not shown.
    assert_eq!((more.span.start.line, more.span.start.column), (204, 40));
    assert!(checked.workflow.is_none());
    // A generous bound (a debug build; it took minutes before the cap).
    assert!(elapsed < std::time::Duration::from_secs(20), "{elapsed:?}");

    // No cap: every one of them.
    let all = check("flood.yaml", src.as_bytes(), Y, &Options { max_diagnostics: 0, ..Default::default() });
    assert_eq!(all.diagnostics.len(), n);
    assert!(all.diagnostics.iter().all(|x| x.code == Code::UnknownParent));
    // A smaller cap.
    let few = check("flood.yaml", src.as_bytes(), Y, &Options { max_diagnostics: 3, ..Default::default() });
    assert_eq!(few.diagnostics.len(), 4);
    assert_eq!(few.diagnostics[3].message, "and 49997 more not shown (49997 errors), the first of them here");
}

fn digits(i: usize) -> u32 {
    i.to_string().len() as u32
}

#[test]
fn shown_findings_keep_their_suggestions_under_a_flood() {
    let mut src = unknown_parents(300);
    src.push_str("  - {name: extract-text, uses: echo}\n  - {name: last, uses: echo, parents: [extract-txt]}\n");
    // The typo first in the file, so it is among the shown.
    let src = src.replacen("parents: [nope0]", "parents: [extract-txt]", 1);
    let checked = check("flood.yaml", src.as_bytes(), Y, &Options::default());
    assert_eq!(checked.diagnostics.len(), 201);
    assert_eq!(checked.diagnostics[0].help.as_deref(), Some("did you mean `extract-text`?"), "{}", show(&checked.diagnostics[..1]));
}

#[test]
fn floods_of_unknown_and_repeated_keys_are_linear() {
    let n = 50_000;
    let mut unknown = String::from("version: 1\nname: keys\ntasks:\n  - name: a\n    uses: echo\n");
    for i in 0..n {
        unknown.push_str(&format!("    bogus{i}: 1\n"));
    }
    // Distinct keys, then each of them again.
    let mut repeated = String::from("version: 1\nname: keys\ntasks:\n  - name: a\n    uses: echo\n    with:\n");
    for i in (0..n / 2).chain(0..n / 2) {
        repeated.push_str(&format!("      k{i}: 1\n"));
    }
    let started = std::time::Instant::now();
    let u = check("unknown.yaml", unknown.as_bytes(), Y, &Options::default());
    let r = check("repeated.yaml", repeated.as_bytes(), Y, &Options::default());
    let elapsed = started.elapsed();
    assert_eq!(u.diagnostics.len(), 201);
    assert_eq!((u.diagnostics[0].code, u.diagnostics[0].span.start.line), (Code::Schema, 6));
    assert!(u.diagnostics[0].message.contains("unknown field `bogus0`"), "{}", show(&u.diagnostics[..1]));
    assert_eq!(u.diagnostics[200].message, "and 49800 more not shown (49800 errors), the first of them here");
    assert_eq!(r.diagnostics.len(), 201);
    let first = &r.diagnostics[0];
    assert_eq!((first.code, first.span.start.line), (Code::DuplicateKey, 7 + n as u32 / 2));
    assert_eq!(first.help.as_deref(), Some("`k0` is first set at line 7, column 7"));
    assert_eq!(r.diagnostics[200].message, "and 24800 more not shown (24800 errors), the first of them here");
    assert!(elapsed < std::time::Duration::from_secs(20), "{elapsed:?}");
}

#[test]
fn cli_renders_a_flood_quickly_and_says_how_many_more() {
    let f = Files::new(&[("flood.yaml", &unknown_parents(50_000))]);
    let started = std::time::Instant::now();
    let out = f.cmd().args(["validate", "flood.yaml"]).assert().code(1).get_output().stdout.clone();
    assert!(started.elapsed() < std::time::Duration::from_secs(30), "{:?}", started.elapsed());
    let out = String::from_utf8_lossy(&out);
    assert_eq!(out.matches("error[unknown-parent]").count(), 200);
    assert!(out.contains("error[too-many-diagnostics]: and 49800 more not shown (49800 errors), the first of them here"), "{out}");
    assert!(out.contains("--> flood.yaml:203:40"), "excerpts are positioned: {out}");
    // The limit comes from the environment too.
    let out = f
        .cmd()
        .env("TASKWEAVE_MAX_DIAGNOSTICS", "5")
        .args(["validate", "--format", "json", "flood.yaml"])
        .assert()
        .code(1)
        .get_output()
        .stdout
        .clone();
    let v: Value = serde_json::from_slice(&out).expect("json");
    assert_eq!(v.as_array().map(Vec::len), Some(6));
}

#[test]
fn binary_and_non_utf8_files_are_not_quoted() {
    for (name, bytes) in [
        ("nul.yaml", b"version: 1\nname: SECRET-\0-BYTES\ntasks: []\n".to_vec()),
        ("latin1.yaml", b"version: 1\nname: SECRET-\xe9-BYTES\ntasks: []\n".to_vec()),
    ] {
        let checked = check(name, &bytes, Y, &Options::default());
        assert!(checked.text.is_none(), "{name}: no text kept");
        assert_eq!(checked.diagnostics.len(), 1);
        let d = &checked.diagnostics[0];
        assert_eq!((d.code, d.span.start.line, d.span.start.column), (Code::Parse, 2, 14), "{name}");
        let human = render_human(d, checked.text.as_deref(), false);
        assert!(human.contains(&format!("--> {name}:2:14")), "positioned without an excerpt: {human}");
        let shown = human + &render_json(&checked.diagnostics) + &render_github(d);
        assert!(!shown.contains("SECRET") && !shown.contains("BYTES"), "{name}: {shown}");
    }
}

#[test]
fn cli_does_not_read_symlinks_out_of_a_folder() {
    let f = Files::new(&[
        ("flows/ok.yaml", VALID),
        ("flows/.shared/real.yaml", "version: 1\nname: linked\ntasks:\n  - name: a\n    uses: echo\n"),
        ("outside/shadow.yaml", "root:SECRET-HASH:19000:0:99999:7:::\n"),
    ]);
    let flows = f.dir.path().join("flows");
    std::os::unix::fs::symlink(f.dir.path().join("outside/shadow.yaml"), flows.join("shadow.yaml")).expect("symlink");
    std::os::unix::fs::symlink(".shared/real.yaml", flows.join("linked.yaml")).expect("symlink");

    let checked = check_paths(std::slice::from_ref(&flows), &Options::default()).expect("checks");
    let files: Vec<(&str, usize)> = checked.iter().map(|c| (c.file.rsplit('/').next().unwrap_or(""), c.diagnostics.len())).collect();
    // The files of the folder (the link inside it loads), then the link out of it.
    assert_eq!(files, [("linked.yaml", 0), ("ok.yaml", 0), ("shadow.yaml", 1)]);
    assert!(checked[1].workflow.is_some() && checked[0].workflow.is_some());
    let leak = &checked[2];
    assert!(leak.text.is_none() && leak.workflow.is_none());
    assert_eq!((leak.diagnostics[0].code, leak.diagnostics[0].severity), (Code::ExternalSymlink, Severity::Warning));

    // A warning: valid unless warnings are denied; nothing of the target in any format.
    for format in ["human", "json", "github"] {
        let out = f.cmd().args(["validate", "--format", format, "flows"]).assert().code(0).get_output().stdout.clone();
        let out = String::from_utf8_lossy(&out);
        assert!(out.contains("external-symlink") && !out.contains("SECRET") && !out.contains("root:"), "{format}: {out}");
    }
    f.cmd().args(["validate", "--deny-warnings", "flows"]).assert().code(1);
}

#[test]
fn a_template_with_thousands_of_bad_references_is_placed_exactly_and_quickly() {
    let n = 20_000;
    let refs: Vec<String> = (0..n).map(|i| format!("{{{{tasks.x{i}.output}}}}")).collect();
    let src = format!("version: 1\nname: refs\ntasks:\n  - name: a\n    uses: echo\n    with: {{x: \"{}\"}}\n", refs.join(" "));
    let started = std::time::Instant::now();
    let checked = check("refs.yaml", src.as_bytes(), Y, &Options::default());
    assert!(started.elapsed() < std::time::Duration::from_secs(20), "{:?}", started.elapsed());
    let d = &checked.diagnostics;
    assert_eq!(d.len(), 201);
    // Each reference at its own column on the one line, in order.
    let mut column = 18;
    for (i, x) in d[..200].iter().enumerate() {
        assert_eq!((x.code, x.span.start.line, x.span.start.column), (Code::TemplateRef, 6, column), "{i}: {}", x.message);
        assert!(x.message.contains(&format!("`tasks.x{i}.output`")), "{}", x.message);
        column += refs[i].len() as u32 + 1;
    }
    assert_eq!(d[200].message, "and 19800 more not shown (19800 errors), the first of them here");
}

/// Without paths, `validate` checks the configured workflow folders; in a
/// folder it skips files that are not workflows (the configuration, a Flipt
/// features file) and says so, while a file named on the command line is
/// always checked.
#[test]
fn cli_validates_the_configured_folders_and_skips_what_is_not_a_workflow() {
    let f = Files::new(&[
        ("taskweave.toml", "[engine]\nworkflows = [\"flows\"]\n"),
        ("flows/ok.yaml", VALID),
        ("flows/features.yml", "version: \"1.4\"\nnamespace: default\nflags: []\n"),
        ("flows/broken.yaml", BROKEN),
    ]);
    f.cmd().args(["validate"]).assert().code(1).stdout(predicates::str::contains(
        "2 files checked: 1 error, 0 warnings; 1 skipped, not workflows (no `tasks`): flows/features.yml",
    ));
    f.cmd().args(["validate", "flows/features.yml"]).assert().code(1).stdout(predicates::str::contains("missing required field `tasks`"));
    let g = Files::new(&[]);
    g.cmd().args(["validate"]).assert().code(2).stderr(predicates::str::contains("a configured workflow folder"));
}

/// Field names other engines use for ours are answered with ours.
#[test]
fn other_engines_field_names_suggest_ours() {
    let c = check(
        "t.yaml",
        b"version: 1\nname: x\ntasks:\n  - {name: a, uses: echo}\n  - {name: b, uses: echo, needs: [a]}\n  - {name: c, uses: echo, depends_on: [a], retries: 3}\n",
        Format::Yaml,
        &Options::default(),
    );
    let helps: Vec<(&str, &str)> = c.diagnostics.iter().map(|d| (d.message.as_str(), d.help.as_deref().unwrap_or(""))).collect();
    assert_eq!(helps.len(), 3, "{helps:?}");
    for (msg, help) in &helps[..2] {
        assert!(msg.contains("needs") || msg.contains("depends_on"), "{msg}");
        assert!(help.contains("`parents: [a, b]`"), "{help}");
    }
    assert!(helps[2].1.contains("retry: {attempts: 3"), "{helps:?}");
}

// ---------------------------------------------------------------------------
// What `run` would fail on: handlers, their arguments and outputs, URLs,
// backends that cannot run a task, flags that do not exist.

/// One diagnostic, exactly: code, start and end, message and help.
fn exactly(d: &Diagnostic, code: &str, at: (u32, u32), end: (u32, u32), message: &str, help: Option<&str>) {
    let got = (
        d.code.as_str(),
        (d.span.start.line, d.span.start.column),
        (d.span.end.line, d.span.end.column),
        d.message.as_str(),
        d.help.as_deref(),
    );
    assert_eq!(got, (code, at, end, message, help), "{}", show(std::slice::from_ref(d)));
    assert_eq!(d.severity, Code::parse(code).expect("a known code").severity());
}

fn builtins() -> Options {
    Options::default().with_builtin_handlers()
}

fn kinds(pairs: &[(&str, &str)]) -> std::collections::BTreeMap<String, String> {
    pairs.iter().map(|(n, k)| (n.to_string(), k.to_string())).collect()
}

const FEATURES: &str = "version: \"1.4\"\nnamespace: default\nflags:\n  - key: pg_queue_enabled\n    name: PostgreSQL queue\n    type: BOOLEAN_FLAG_TYPE\n    enabled: true\n  - key: task_abstraction_enabled\n    name: Task abstraction\n    type: VARIANT_FLAG_TYPE\n    enabled: true\n";

fn flag_source() -> taskweave::flags::FlagSource {
    let loaded = taskweave::flags::file::load_str("features.yml", FEATURES);
    assert!(loaded.diagnostics.is_empty(), "{}", show(&loaded.diagnostics));
    taskweave::flags::FlagSource::from_features(loaded.features.expect("the features load"))
}

#[test]
fn unknown_handler_suggests_the_closest_name() {
    let src = "version: 1\nname: demo\ntasks:\n  - name: text\n    uses: extract_text\n    with: {path: doc.txt}\n  - {name: b, uses: summarize}\n";
    let c = check("h.yaml", src.as_bytes(), Y, &builtins());
    assert_eq!(c.diagnostics.len(), 2, "{}", show(&c.diagnostics));
    exactly(
        &c.diagnostics[0],
        "unknown-handler",
        (5, 11),
        (5, 23),
        "task `text` uses handler `extract_text`, which does not exist",
        Some("did you mean `extract-text`?"),
    );
    exactly(
        &c.diagnostics[1],
        "unknown-handler",
        (7, 21),
        (7, 30),
        "task `b` uses handler `summarize`, which does not exist",
        Some(
            "the handlers are `echo`, `extract-text`, `fail`, `llm`, `sleep`; a program that embeds the engine registers its own (list them in `[validate] handlers` of taskweave.toml for `taskweave validate`)",
        ),
    );
    assert!(c.workflow.is_none());
    // TOML, at the same node.
    let toml = "version = 1\nname = \"demo\"\n\n[[tasks]]\nname = \"text\"\nuses = \"extract_text\"\n";
    let c = check("h.toml", toml.as_bytes(), T, &builtins());
    assert_eq!(c.diagnostics.len(), 1, "{}", show(&c.diagnostics));
    exactly(
        &c.diagnostics[0],
        "unknown-handler",
        (6, 8),
        (6, 22),
        "task `text` uses handler `extract_text`, which does not exist",
        Some("did you mean `extract-text`?"),
    );
    // Handlers unknown to the caller: any name goes.
    assert!(check("h.yaml", src.as_bytes(), Y, &Options::default()).diagnostics.is_empty());
    // A registered handler is known.
    let mut handlers = taskweave::run::actions::Handlers::with_builtins();
    handlers.register("summarize", |w: Value, _ctx: taskweave::run::actions::HandlerCtx| async move { Ok(w) });
    let opts = Options { handlers: Some(std::sync::Arc::new(handlers.catalog())), ..Default::default() };
    let c = check("h.yaml", src.as_bytes(), Y, &opts);
    assert_eq!(c.diagnostics.len(), 1, "{}", show(&c.diagnostics));
    assert_eq!(c.diagnostics[0].help.as_deref(), Some("did you mean `extract-text`?"));
}

#[tokio::test]
async fn an_engine_validates_against_the_handlers_registered_with_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let good = write(dir.path(), "good.yaml", "version: 1\nname: good\ntasks:\n  - {name: a, uses: summarise, with: {text: hi}}\n");
    let typo = write(dir.path(), "typo.yaml", "version: 1\nname: typo\ntasks:\n  - {name: a, uses: sumarise, with: {text: hi}}\n");
    let args = write(dir.path(), "args.yaml", "version: 1\nname: args\ntasks:\n  - {name: a, uses: summarise, with: {txt: hi}}\n");
    let summarise = taskweave::run::actions::WithSchemas::new(|w: Value, _ctx: taskweave::run::actions::HandlerCtx| async move { Ok(w) })
        .with(serde_json::json!({"type": "object", "required": ["text"], "additionalProperties": false, "properties": {"text": {"type": "string"}}}));
    let engine = taskweave::Engine::builder().without_store().handler("summarise", summarise).build().await.expect("engine");
    engine.register_file(&good).expect("a registered handler is known");
    let diags = |r: Result<_, taskweave::EngineError>| match r {
        Err(taskweave::EngineError::Invalid { diagnostics, .. }) => diagnostics,
        Err(e) => panic!("{e}"),
        Ok(_) => panic!("registered"),
    };
    let d = diags(engine.register_file(&typo));
    assert_eq!(d.len(), 1, "{}", show(&d));
    exactly(
        &d[0],
        "unknown-handler",
        (4, 21),
        (4, 29),
        "task `a` uses handler `sumarise`, which does not exist",
        Some("did you mean `summarise`?"),
    );
    let d = diags(engine.register_file(&args));
    assert_eq!(d.len(), 2, "{}", show(&d));
    exactly(&d[0], "handler-args", (4, 32), (4, 36), "handler `summarise` needs the argument `text`", Some("`text` is required"));
    exactly(&d[1], "handler-args", (4, 39), (4, 42), "handler `summarise` takes no argument `txt`", Some("did you mean `text`?"));
}

#[test]
fn handler_args_are_checked_against_the_handlers_schema() {
    let src = "version: 1\nname: demo\ntasks:\n  - name: summary\n    uses: llm\n    with: {promt: \"Summarise this\", temperature: hot}\n";
    let c = check("args.yaml", src.as_bytes(), Y, &builtins());
    assert_eq!(c.diagnostics.len(), 3, "{}", show(&c.diagnostics));
    exactly(&c.diagnostics[0], "handler-args", (6, 5), (6, 9), "handler `llm` needs the argument `prompt`", Some("`prompt` is required"));
    exactly(&c.diagnostics[1], "handler-args", (6, 12), (6, 17), "handler `llm` takes no argument `promt`", Some("did you mean `prompt`?"));
    exactly(
        &c.diagnostics[2],
        "handler-args",
        (6, 50),
        (6, 53),
        "handler `llm`: `with.temperature` must be a number, found a string",
        None,
    );
    assert!(c.workflow.is_none());

    // No `with` at all: the handler gets an empty mapping.
    let src = "version: 1\nname: demo\ntasks:\n  - name: text\n    uses: extract-text\n    with: ~\n  - {name: nap, uses: sleep}\n  - {name: nap2, uses: sleep, with: {duration: 1s, seconds: 2}}\n";
    let c = check("args.yaml", src.as_bytes(), Y, &builtins());
    assert_eq!(c.diagnostics.len(), 3, "{}", show(&c.diagnostics));
    exactly(
        &c.diagnostics[0],
        "handler-args",
        (5, 11),
        (5, 23),
        "handler `extract-text` needs the argument `path`",
        Some("`path` is required: add `with: {path: ...}`"),
    );
    exactly(&c.diagnostics[1], "handler-args", (7, 23), (7, 28), "handler `sleep` needs one of `duration` or `seconds` in `with`", None);
    exactly(
        &c.diagnostics[2],
        "handler-args",
        (8, 31),
        (8, 35),
        "handler `sleep` takes one of `duration` or `seconds` in `with`, not several",
        None,
    );

    // Templated values are known only at run time: only their keys are checked.
    let src = "version: 1\nname: demo\ntasks:\n  - name: a\n    uses: llm\n    with:\n      prompt: \"{{input.p}}\"\n      max_tokens: \"{{input.n}}\"\n      temprature: \"{{input.t}}\"\n  - {name: b, uses: sleep, with: {seconds: \"{{input.s}}\"}}\n  - {name: c, uses: extract-text, with: \"{{input.args}}\"}\n  - {name: d, uses: fail, with: {message: 42, retryable: \"no\"}}\n";
    let c = check("args.yaml", src.as_bytes(), Y, &builtins());
    assert_eq!(c.diagnostics.len(), 2, "{}", show(&c.diagnostics));
    exactly(
        &c.diagnostics[0],
        "handler-args",
        (9, 7),
        (9, 17),
        "handler `llm` takes no argument `temprature`",
        Some("did you mean `temperature`?"),
    );
    exactly(
        &c.diagnostics[1],
        "handler-args",
        (12, 58),
        (12, 62),
        "handler `fail`: `with.retryable` must be a boolean, found a string",
        None,
    );

    // TOML.
    let toml = "version = 1\nname = \"demo\"\n\n[[tasks]]\nname = \"s\"\nuses = \"llm\"\nwith = { promt = \"hi\" }\n";
    let c = check("args.toml", toml.as_bytes(), T, &builtins());
    assert_eq!(c.diagnostics.len(), 2, "{}", show(&c.diagnostics));
    exactly(&c.diagnostics[0], "handler-args", (7, 1), (7, 5), "handler `llm` needs the argument `prompt`", Some("`prompt` is required"));
    exactly(&c.diagnostics[1], "handler-args", (7, 10), (7, 15), "handler `llm` takes no argument `promt`", Some("did you mean `prompt`?"));
}

#[test]
fn output_field_reads_what_the_handler_returns() {
    let src = "version: 1\nname: demo\ntasks:\n  - {name: e, uses: extract-text, with: {path: doc.txt}}\n  - name: s\n    parents: [e]\n    uses: llm\n    with: {prompt: \"Summarise {{tasks.e.output.txt}} please\"}\n  - name: t\n    parents: [s]\n    uses: echo\n    with:\n      pages: \"{{tasks.e.output.page_count}}\"\n      deep: |\n        {{tasks.s.output.response}}\n        {{tasks.e.output.text.first}}\n";
    let c = check("out.yaml", src.as_bytes(), Y, &builtins());
    assert_eq!(c.diagnostics.len(), 2, "{}", show(&c.diagnostics));
    exactly(
        &c.diagnostics[0],
        "output-field",
        (8, 33),
        (8, 51),
        "template reads `tasks.e.output.txt`, but handler `extract-text` returns no `txt` in `output` of task `e`",
        Some("did you mean `text`? `output` has only `extraction_method`, `page_count`, `text`"),
    );
    exactly(
        &c.diagnostics[1],
        "output-field",
        (16, 11),
        (16, 36),
        "template reads `tasks.e.output.text.first`, but `output.text` of task `e` (handler `extract-text`) is a string",
        None,
    );
    // Handlers that declare no output schema (`echo`) are not judged.
    let echo = "version: 1\nname: demo\ntasks:\n  - {name: a, uses: echo, with: {x: 1}}\n  - {name: b, parents: [a], uses: echo, with: {y: \"{{tasks.a.output.anything}}\"}}\n";
    assert!(check("out.yaml", echo.as_bytes(), Y, &builtins()).diagnostics.is_empty());
}

#[test]
fn url_literals_must_be_http_urls() {
    let src = "version: 1\nname: demo\ntasks:\n  - name: ping\n    http: {url: \"example.com/health\"}\n  - {name: ftp, http: {url: \"ftp://files.example.com/x\"}}\n  - {name: empty, http: {url: \"http://\"}}\n  - {name: ok, http: {url: \"https://example.com/{{input.p}}\"}}\n  - {name: ok2, http: {url: \"{{input.base}}/v1\"}}\n  - {name: ok3, http: {url: \"http://127.0.0.1:8080/x?y=1\"}}\n";
    let c = check("url.yaml", src.as_bytes(), Y, &Options::default());
    assert_eq!(c.diagnostics.len(), 3, "{}", show(&c.diagnostics));
    exactly(
        &c.diagnostics[0],
        "url",
        (5, 17),
        (5, 37),
        "`example.com/health` is not a URL: it has no scheme",
        Some("write the whole URL: `https://example.com/health`"),
    );
    exactly(
        &c.diagnostics[1],
        "url",
        (6, 29),
        (6, 56),
        "`ftp://files.example.com/x` is not an HTTP URL: its scheme is `ftp`",
        Some("an `http:` task sends HTTP requests: the URL starts with `http://` or `https://`"),
    );
    exactly(
        &c.diagnostics[2],
        "url",
        (7, 31),
        (7, 40),
        "`http://` is not a valid URL: empty host",
        Some("write the whole URL, e.g. `https://example.com/path`"),
    );
    let toml = "version = 1\nname = \"demo\"\n\n[[tasks]]\nname = \"ping\"\nhttp = { url = \"localhost:8080\" }\n";
    let c = check("url.toml", toml.as_bytes(), T, &Options::default());
    assert_eq!(c.diagnostics.len(), 1, "{}", show(&c.diagnostics));
    exactly(
        &c.diagnostics[0],
        "url",
        (6, 16),
        (6, 32),
        "`localhost:8080` is not an HTTP URL: its scheme is `localhost`",
        Some("write the whole URL: `https://localhost:8080`"),
    );
}

#[test]
fn backend_action_needs_a_celery_backend_for_celery_tasks() {
    let opts = Options {
        backends: Some(vec!["celery".into(), "local".into(), "temporal".into()]),
        backend_kinds: Some((kinds(&[("celery", "celery"), ("local", "local"), ("temporal", "temporal")]), "local".into())),
        ..Default::default()
    };
    let tasks = "tasks:\n  - name: add\n    celery: {task: tasks.add, args: [1, 2]}\n  - {name: b, uses: echo}\n";
    let default = format!("version: 1\nname: demo\n{tasks}");
    let c = check("b.yaml", default.as_bytes(), Y, &opts);
    assert_eq!(c.diagnostics.len(), 1, "{}", show(&c.diagnostics));
    exactly(
        &c.diagnostics[0],
        "backend-action",
        (5, 5),
        (5, 11),
        "task `add` is a `celery:` task, but the workflow runs on the default backend `local` (kind `local`), which cannot run it",
        Some("only a backend of kind `celery` runs `celery:` tasks: set `backend: celery`, or move the task to a workflow that runs there"),
    );
    let named = format!("version: 1\nname: demo\nbackend: temporal\n{tasks}");
    let c = check("b.yaml", named.as_bytes(), Y, &opts);
    assert_eq!(c.diagnostics.len(), 1, "{}", show(&c.diagnostics));
    exactly(
        &c.diagnostics[0],
        "backend-action",
        (6, 5),
        (6, 11),
        "task `add` is a `celery:` task, but the workflow runs on backend `temporal` (kind `temporal`), which cannot run it",
        Some("only a backend of kind `celery` runs `celery:` tasks: set `backend: celery`, or move the task to a workflow that runs there"),
    );
    let rollout = format!("version: 1\nname: demo\nbackend: {{flag: move, enabled: temporal, disabled: celery, default: celery}}\n{tasks}");
    let c = check("b.yaml", rollout.as_bytes(), Y, &opts);
    assert_eq!(c.diagnostics.len(), 1, "{}", show(&c.diagnostics));
    assert_eq!(
        c.diagnostics[0].message,
        "task `add` is a `celery:` task, but the workflow may run on backend `temporal` (kind `temporal`), which cannot run it"
    );
    // A celery backend runs it; without a configuration nothing is known.
    let ok = format!("version: 1\nname: demo\nbackend: celery\n{tasks}");
    assert!(check("b.yaml", ok.as_bytes(), Y, &opts).diagnostics.is_empty());
    assert!(check("b.yaml", default.as_bytes(), Y, &Options::default()).diagnostics.is_empty());
    // The CLI reads the kinds from taskweave.toml.
    let f = Files::new(&[
        (
            "taskweave.toml",
            "[engine]\ndefault_backend = \"local\"\n\n[backends.py]\nkind = \"celery\"\nbroker = \"redis://127.0.0.1:6379/0\"\n",
        ),
        ("c.yaml", &default),
        ("ok.yaml", &format!("version: 1\nname: ok\nbackend: py\n{tasks}")),
    ]);
    f.cmd().args(["validate", "--format", "github", "c.yaml", "ok.yaml"]).assert().code(1).stdout(
        "::error file=c.yaml,line=5,col=5,endLine=5,endColumn=11,title=backend-action::[backend-action] task `add` is a `celery:` task, but the workflow runs on the default backend `local` (kind `local`), which cannot run it (help: only a backend of kind `celery` runs `celery:` tasks: set `backend: py`, or move the task to a workflow that runs there)\n",
    );
}

#[test]
fn unknown_flag_is_a_warning_when_the_features_file_is_known() {
    let src =
        "version: 1\nname: demo\nbackend:\n  flag: pg_queue_enable\n  enabled: celery\n  disabled: local\ntasks: [{name: a, uses: echo}]\n";
    let opts = Options { flags: Some(std::sync::Arc::new(flag_source())), ..Default::default() };
    let c = check("f.yaml", src.as_bytes(), Y, &opts);
    assert_eq!(c.diagnostics.len(), 1, "{}", show(&c.diagnostics));
    exactly(
        &c.diagnostics[0],
        "unknown-flag",
        (4, 9),
        (4, 24),
        "flag `pg_queue_enable` is not defined in <memory> (namespace `default`), so every run goes to the rule's default backend",
        Some("did you mean `pg_queue_enabled`?"),
    );
    assert!(c.workflow.is_some(), "a warning keeps the workflow");
    assert!(check("f.yaml", src.as_bytes(), Y, &Options::default()).diagnostics.is_empty());
    // The CLI reads the file that taskweave.toml names.
    let f = Files::new(&[
        ("taskweave.toml", "[backends.celery]\nkind = \"celery\"\n\n[flags]\nsource = \"features.yml\"\n"),
        ("features.yml", FEATURES),
        ("f.yaml", src),
    ]);
    f.cmd().args(["validate", "--format", "github", "f.yaml"]).assert().code(0).stdout(
        "::warning file=f.yaml,line=4,col=9,endLine=4,endColumn=24,title=unknown-flag::[unknown-flag] flag `pg_queue_enable` is not defined in features.yml (namespace `default`), so every run goes to the rule's default backend (help: did you mean `pg_queue_enabled`?)\n",
    );
    f.cmd().args(["validate", "--deny-warnings", "f.yaml"]).assert().code(1);
}

#[test]
fn cli_validate_knows_the_builtin_handlers_and_configured_ones() {
    let src = "version: 1\nname: demo\ntasks:\n  - {name: a, uses: extract_text, with: {path: x}}\n  - {name: b, uses: ocr}\n";
    let f = Files::new(&[("h.yaml", src)]);
    f.cmd().args(["validate", "--format", "github", "h.yaml"]).assert().code(1).stdout(predicates::str::contains(
        "::error file=h.yaml,line=4,col=21,endLine=4,endColumn=33,title=unknown-handler::[unknown-handler] task `a` uses handler `extract_text`, which does not exist (help: did you mean `extract-text`?)\n",
    ));
    let f = Files::new(&[("taskweave.toml", "[validate]\nhandlers = [\"ocr\", \"extract_text\"]\n"), ("h.yaml", src)]);
    f.cmd().args(["validate", "h.yaml"]).assert().code(0).stdout("1 file checked: 0 errors, 0 warnings\n");
}

#[test]
fn cli_explain_the_handler_and_backend_codes() {
    for (code, severity, says) in [
        ("unknown-handler", "error", "uses: extract_text"),
        ("handler-args", "error", "promt"),
        ("output-field", "error", "tasks.e.output.txt"),
        ("url", "error", "example.com/health"),
        ("backend-action", "error", "kind `celery`"),
        ("unknown-flag", "warning", "pg_queue_enable,"),
    ] {
        taskweave()
            .args(["explain", code])
            .assert()
            .code(0)
            .stdout(predicates::str::starts_with(format!("{code} ({severity})\n")))
            .stdout(predicates::str::contains(says))
            .stdout(predicates::str::contains("Fixed:"));
    }
}
