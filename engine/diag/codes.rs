//! The stable diagnostic codes, each with an explanation (`taskweave explain CODE`).

use super::Severity;

macro_rules! codes {
    ($($variant:ident = $name:literal, $sev:ident, $summary:literal, $bad:literal, $good:literal;)*) => {
        /// A stable diagnostic code. The string forms are part of the public contract.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub enum Code { $($variant,)* }

        impl Code {
            pub const ALL: &'static [Code] = &[$(Code::$variant,)*];

            pub fn as_str(self) -> &'static str {
                match self { $(Code::$variant => $name,)* }
            }

            pub fn severity(self) -> Severity {
                match self { $(Code::$variant => Severity::$sev,)* }
            }

            pub fn summary(self) -> &'static str {
                match self { $(Code::$variant => $summary,)* }
            }

            /// An example that triggers the code, and the same example fixed.
            pub fn examples(self) -> (&'static str, &'static str) {
                match self { $(Code::$variant => ($bad, $good),)* }
            }
        }
    };
}

codes! {
    Parse = "parse", Error,
        "The file is not valid YAML or TOML: a syntax error, a tab used for indentation, an empty, binary or non-UTF-8 file, several YAML documents in one file, or a document nested too deeply or expanded too far by aliases.",
        "version: 1\nname: hello\ntasks:\n\t- name: a\n\t  uses: echo\n",
        "version: 1\nname: hello\ntasks:\n  - name: a\n    uses: echo\n";
    DuplicateKey = "duplicate-key", Error,
        "A mapping repeats a key. YAML parsers disagree on which value wins, so taskweave refuses the file and points at the second key.",
        "version: 1\nname: hello\nname: hello-again\ntasks: [{name: a, uses: echo}]\n",
        "version: 1\nname: hello\ntasks: [{name: a, uses: echo}]\n";
    Schema = "schema", Error,
        "The document breaks workflow.schema.json: an unknown field, a value of the wrong type, a missing required field or a name that does not match ^[a-z0-9][a-z0-9._-]{0,127}$.",
        "version: 1\nname: Hello World\ntasks:\n  - name: a\n    uses: echo\n    parent: [b]\n",
        "version: 1\nname: hello-world\ntasks:\n  - name: a\n    uses: echo\n";
    DuplicateTask = "duplicate-task", Error,
        "Two tasks share a name. Task names identify tasks in `parents` and templates, so they must be unique.",
        "version: 1\nname: hello\ntasks:\n  - {name: fetch, uses: echo}\n  - {name: fetch, uses: echo}\n",
        "version: 1\nname: hello\ntasks:\n  - {name: fetch, uses: echo}\n  - {name: fetch-again, uses: echo}\n";
    UnknownParent = "unknown-parent", Error,
        "A task lists a parent that names no task. The help suggests the closest existing name.",
        "version: 1\nname: hello\ntasks:\n  - {name: extract-text, uses: echo}\n  - {name: summarise, uses: echo, parents: [extract-txt]}\n",
        "version: 1\nname: hello\ntasks:\n  - {name: extract-text, uses: echo}\n  - {name: summarise, uses: echo, parents: [extract-text]}\n";
    Cycle = "cycle", Error,
        "The parents form a cycle, so no task of it could ever start. The message lists the whole cycle in execution order, from its first task back to it: `a -> b -> c -> a`.",
        "version: 1\nname: hello\ntasks:\n  - {name: a, uses: echo, parents: [b]}\n  - {name: b, uses: echo, parents: [a]}\n",
        "version: 1\nname: hello\ntasks:\n  - {name: a, uses: echo}\n  - {name: b, uses: echo, parents: [a]}\n";
    SelfParent = "self-parent", Error,
        "A task lists itself as a parent.",
        "version: 1\nname: hello\ntasks:\n  - {name: a, uses: echo, parents: [a]}\n",
        "version: 1\nname: hello\ntasks:\n  - {name: a, uses: echo}\n";
    Action = "action", Error,
        "A task has no action or more than one. Each task has exactly one of `run`, `shell`, `http`, `celery` or `uses`.",
        "version: 1\nname: hello\ntasks:\n  - name: a\n    run: [echo, hi]\n    shell: echo hi\n",
        "version: 1\nname: hello\ntasks:\n  - name: a\n    run: [echo, hi]\n";
    Duration = "duration", Error,
        "A duration string does not parse. Durations look like `500ms`, `30s`, `10m`, `1h30m`; bare numbers are not durations.",
        "version: 1\nname: hello\ntimeout: 10 minutes-ish\ntasks: [{name: a, uses: echo}]\n",
        "version: 1\nname: hello\ntimeout: 10m\ntasks: [{name: a, uses: echo}]\n";
    Template = "template", Error,
        "A template does not parse as Handlebars (an unclosed `{{`, an unbalanced block), or cannot pass its value safely to a `shell` script: raw `{{{ }}}` output, a partial or inline template, or a template inside single quotes or a here-document with a quoted delimiter (`<<'EOF'`), where the shell expands nothing. In `shell` scripts every value reaches the script as an environment variable (`TW_1`, `TW_2`, ...) that the script references, so a value is never parsed as shell code; write templates unquoted or inside double quotes.",
        "version: 1\nname: hello\ntasks:\n  - name: a\n    uses: echo\n    with: {path: \"{{input.path\"}\n",
        "version: 1\nname: hello\ntasks:\n  - name: a\n    uses: echo\n    with: {path: \"{{input.path}}\"}\n";
    TemplateRef = "template-ref", Error,
        "A template or a `when:` condition reads something that cannot exist when the task runs: `tasks.X` where X is not an ancestor of the task (the workflow's `output:` may read any task, but only one that exists), a task field other than `output` and `status`, an input property that the input schema does not declare while it forbids others, or an unknown root (the roots are input, tasks, run, workflow and context). In a condition, a task name with `-` is written `tasks[\"extract-text\"]`: `tasks.extract-text` would read `tasks.extract` minus a variable `text`.",
        "version: 1\nname: hello\ntasks:\n  - {name: a, uses: echo}\n  - {name: b, uses: echo, with: {x: \"{{tasks.a.output}}\"}}\n",
        "version: 1\nname: hello\ntasks:\n  - {name: a, uses: echo}\n  - {name: b, uses: echo, parents: [a], with: {x: \"{{tasks.a.output}}\"}}\n";
    UnknownHelper = "unknown-helper", Error,
        "A template calls a helper that does not exist (`{{jsn x}}`, `{{#eachh ...}}`), so it could never render. The help suggests the closest helper; the helpers are listed below.",
        "version: 1\nname: hello\ninput: {type: object}\ntasks:\n  - name: a\n    uses: echo\n    with: {tags: \"{{joinn input.tags ', '}}\"}\n",
        "version: 1\nname: hello\ninput: {type: object}\ntasks:\n  - name: a\n    uses: echo\n    with: {tags: \"{{join input.tags ', '}}\"}\n";
    Expression = "expression", Error,
        "A `when:` condition does not parse as CEL (the Common Expression Language, as in Kubernetes and Hatchet's `skip_if`). The caret points at the offending character inside the string. Conditions read `input`, `tasks` (ancestors only: `tasks.NAME.output`, `tasks.NAME.status`; a name with `-` is written `tasks[\"extract-text\"]`), `run`, `workflow` and `context`, and must return a bool: `size(tasks.split.output.pages) > 0`, `input.mode == \"full\" && context.tier != \"free\"`. A condition that fails when it is evaluated (a missing key, a division by zero, a value that is not a bool) fails its task with the error and the condition's place in the file.",
        "version: 1\nname: hello\ntasks:\n  - {name: a, uses: echo}\n  - name: b\n    parents: [a]\n    when: 'tasks.a.output.n >> 1'\n    uses: echo\n",
        "version: 1\nname: hello\ntasks:\n  - {name: a, uses: echo}\n  - name: b\n    parents: [a]\n    when: 'tasks.a.output.n > 1'\n    uses: echo\n";
    Unreachable = "unreachable", Warning,
        "A task can never start: its trigger needs a parent to succeed (`all_success`, the default, or `one_success` when every parent is like that), and that parent can never succeed, because its `when:` is the literal `false` or it is unreachable itself. The task would always be skipped. Give it a trigger that accepts a skipped parent (`none_failed`, `all_done`), or remove the condition.",
        "version: 1\nname: hello\ntasks:\n  - {name: a, uses: echo, when: 'false'}\n  - {name: b, parents: [a], uses: echo}\n",
        "version: 1\nname: hello\ntasks:\n  - {name: a, uses: echo, when: 'false'}\n  - {name: b, parents: [a], trigger: none_failed, uses: echo}\n";
    TimeoutExceeds = "timeout-exceeds", Warning,
        "A task timeout is longer than the workflow timeout, so the workflow timeout will always cut the task first.",
        "version: 1\nname: hello\ntimeout: 10m\ntasks:\n  - {name: a, uses: echo, timeout: 1h}\n",
        "version: 1\nname: hello\ntimeout: 10m\ntasks:\n  - {name: a, uses: echo, timeout: 5m}\n";
    UnknownBackend = "unknown-backend", Error,
        "`backend` names a backend that the configuration (taskweave.toml) does not define. Only checked when a configuration is found or given.",
        "# taskweave.toml defines [backends.celery]\nversion: 1\nname: hello\nbackend: celry\ntasks: [{name: a, uses: echo}]\n",
        "# taskweave.toml defines [backends.celery]\nversion: 1\nname: hello\nbackend: celery\ntasks: [{name: a, uses: echo}]\n";
    DuplicateWorkflow = "duplicate-workflow", Error,
        "Two files in one folder declare the same workflow name, so a run by name would be ambiguous.",
        "# flows/a.yaml\nname: billing\n# flows/b.yaml\nname: billing\n",
        "# flows/a.yaml\nname: billing\n# flows/b.yaml\nname: billing-v2\n";
    TooManyDiagnostics = "too-many-diagnostics", Warning,
        "A file has more findings than taskweave reports for one file (`[validate] max_diagnostics` in taskweave.toml, 200 by default; `TASKWEAVE_MAX_DIAGNOSTICS`; 0 reports all). Errors are kept before warnings, each in file order; this last diagnostic says how many more there are and sits at the first of them. It is an error when any of those it stands for is an error. Fix the findings shown and check again; a file this broken is usually generated, or not a workflow at all.",
        "# 250 tasks, each with a parent that names no task\nversion: 1\nname: hello\ntasks:\n  - {name: t1, uses: echo, parents: [x1]}\n  - {name: t2, uses: echo, parents: [x2]}\n  # ... t3 to t250 alike\n",
        "version: 1\nname: hello\ntasks:\n  - {name: t1, uses: echo}\n  - {name: t2, uses: echo, parents: [t1]}\n";
    ExternalSymlink = "external-symlink", Warning,
        "A watched or validated folder holds a symbolic link whose target lies outside that folder. taskweave does not read it: a link could otherwise put any file the process can read (keys, password files) into diagnostics, logs and the API. The file is listed as skipped; nothing of its target is shown. Links to files inside the folder load as usual.",
        "# flows/shared.yaml -> /etc/team/shared.yaml  (outside flows/)\n",
        "# copy the file into flows/, or link to a file inside it:\n# flows/shared.yaml -> common/shared.yaml\n";
    UnknownHandler = "unknown-handler", Error,
        "A `uses:` task names a handler that does not exist: neither a built-in (`echo`, `sleep`, `fail`, `extract-text`, `llm`) nor one that the program embedding the engine registers. The help suggests the closest name. `taskweave validate` knows the built-ins and the names listed in `[validate] handlers` of taskweave.toml; an engine knows the handlers registered with it.",
        "version: 1\nname: hello\ntasks:\n  - name: text\n    uses: extract_text\n    with: {path: doc.txt}\n",
        "version: 1\nname: hello\ntasks:\n  - name: text\n    uses: extract-text\n    with: {path: doc.txt}\n";
    HandlerArgs = "handler-args", Error,
        "A `uses:` task's `with:` does not match what its handler takes: an argument the handler does not know (the help suggests the closest one), a required argument left out, or a literal value of the wrong type. Handlers declare a JSON Schema for `with`: the built-ins do (`llm` needs `prompt` and takes `system`, `model`, `temperature`, `max_tokens`; `extract-text` needs `path`; `sleep` takes `duration` or `seconds`; `fail` takes `message` and `retryable`), and registered handlers may. A value that is a template is known only when the task runs, so only its key is checked.",
        "version: 1\nname: hello\ntasks:\n  - name: summary\n    uses: llm\n    with: {promt: \"Summarise the meeting notes\"}\n",
        "version: 1\nname: hello\ntasks:\n  - name: summary\n    uses: llm\n    with: {prompt: \"Summarise the meeting notes\"}\n";
    OutputField = "output-field", Error,
        "A template reads a field of a task's output that the task's handler never returns: `tasks.X.output.F` where X's handler declares an output schema without F (`extract-text` returns `text`, `page_count` and `extraction_method`; `llm` returns `response`, `tokens_used` and `model`; `sleep` returns `slept_ms`). The read would fail when the task runs. The position is the read inside the template.",
        "version: 1\nname: hello\ntasks:\n  - {name: e, uses: extract-text, with: {path: doc.txt}}\n  - {name: s, parents: [e], uses: llm, with: {prompt: \"Summarise {{tasks.e.output.txt}}\"}}\n",
        "version: 1\nname: hello\ntasks:\n  - {name: e, uses: extract-text, with: {path: doc.txt}}\n  - {name: s, parents: [e], uses: llm, with: {prompt: \"Summarise {{tasks.e.output.text}}\"}}\n";
    Url = "url", Error,
        "An `http:` task's `url` is written out in full (no template) but is not an absolute `http://` or `https://` URL with a host, so the request could never be sent. A URL built from templates is checked when the task runs.",
        "version: 1\nname: hello\ntasks:\n  - name: ping\n    http: {url: \"example.com/health\"}\n",
        "version: 1\nname: hello\ntasks:\n  - name: ping\n    http: {url: \"https://example.com/health\"}\n";
    BackendAction = "backend-action", Error,
        "A `celery:` task is in a workflow whose backend cannot run it: only a backend of kind `celery` sends tasks to Celery workers, and the workflow runs on another kind (its `backend:`, a backend a rollout rule may choose, or the configured `default_backend`). Any other backend refuses the run. Only checked when a configuration is found or given.",
        "# taskweave.toml: default_backend = \"local\"; [backends.celery] kind = \"celery\"\nversion: 1\nname: hello\ntasks:\n  - name: add\n    celery: {task: tasks.add, args: [1, 2]}\n",
        "# taskweave.toml: default_backend = \"local\"; [backends.celery] kind = \"celery\"\nversion: 1\nname: hello\nbackend: celery\ntasks:\n  - name: add\n    celery: {task: tasks.add, args: [1, 2]}\n";
    UnknownFlag = "unknown-flag", Warning,
        "A `backend:` rollout rule names a flag that the configured flag source does not define, so every run falls back to the rule's `default` backend. Checked when the configuration's `[flags] source` is a Flipt features file that loads, in the configured namespace; a Flipt server is not asked. The help suggests the closest flag key.",
        "# the features file defines the flag pg_queue_enabled\nversion: 1\nname: hello\nbackend: {flag: pg_queue_enable, enabled: celery, disabled: local}\ntasks: [{name: a, uses: echo}]\n",
        "# the features file defines the flag pg_queue_enabled\nversion: 1\nname: hello\nbackend: {flag: pg_queue_enabled, enabled: celery, disabled: local}\ntasks: [{name: a, uses: echo}]\n";
}

impl Code {
    pub fn parse(s: &str) -> Option<Code> {
        Code::ALL.iter().copied().find(|c| c.as_str() == s)
    }

    /// The full text shown by `taskweave explain CODE`.
    pub fn explain(self) -> String {
        let (bad, good) = self.examples();
        format!(
            "{code} ({sev})\n\n{summary}\n\nExample that triggers it:\n\n{bad}\nFixed:\n\n{good}",
            code = self.as_str(),
            sev = self.severity().as_str(),
            summary = self.summary(),
            bad = indent(bad),
            good = indent(good),
        )
    }
}

fn indent(s: &str) -> String {
    s.lines().map(|l| format!("    {l}\n")).collect()
}

impl std::fmt::Display for Code {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}
