//! Task actions end to end: `run`, `shell`, `http` and the built-in
//! handlers, called through `run::actions::execute` on workflows that went
//! through validation, with real processes and HTTP servers (wiremock).

use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use taskweave::Workflow;
use taskweave::backend::conformance::{alive, eventually, group_members};
use taskweave::run::actions::handlers::LlmConfig;
use taskweave::run::actions::{ActionError, Attempt, BuiltinSettings, Egress, ExtractTextSettings, Handlers, Limits, execute};
use tokio_util::sync::CancellationToken;
use wiremock::matchers::{body_json, body_partial_json, header, method, path, query_param};
use wiremock::{Mock, MockServer, ResponseTemplate};

// ---------------------------------------------------------------- helpers

/// A workflow with one task `t`, whose body is `task` (YAML, indented by the caller).
fn workflow(extra: &str, task: &str) -> Arc<Workflow> {
    let yaml = format!("version: 1\nname: t\n{extra}tasks:\n  - name: t\n{task}");
    let checked = taskweave::validate::check_source("t.yaml", yaml.clone(), taskweave::spec::Format::Yaml, &Default::default());
    assert!(checked.diagnostics.is_empty(), "{yaml}\n{:#?}", checked.diagnostics);
    checked.workflow.expect("a valid workflow")
}

fn ctx(input: Value) -> Value {
    json!({
        "input": input,
        "tasks": {},
        "run": {"id": "r1", "attempt": 1},
        "workflow": {"name": "t"},
        "context": {},
    })
}

struct Env {
    limits: Limits,
    handlers: Handlers,
    cancel: CancellationToken,
}

impl Default for Env {
    fn default() -> Self {
        Env { limits: Limits::default(), handlers: Handlers::with_builtins(), cancel: CancellationToken::new() }
    }
}

impl Env {
    async fn run(&self, wf: &Workflow, input: Value) -> Result<Value, ActionError> {
        let ctx = ctx(input);
        execute(Attempt {
            workflow: wf,
            task: wf.task("t").expect("task t"),
            ctx: &ctx,
            run_id: "r1",
            attempt: 1,
            cancel: self.cancel.clone(),
            limits: &self.limits,
            handlers: &self.handlers,
        })
        .await
    }
}

async fn run(wf: &Workflow, input: Value) -> Result<Value, ActionError> {
    Env::default().run(wf, input).await
}

fn failed(r: Result<Value, ActionError>) -> String {
    match r {
        Err(ActionError::Failed(m)) => m,
        other => panic!("expected a retryable failure, got {other:?}"),
    }
}

fn permanent(r: Result<Value, ActionError>) -> String {
    match r {
        Err(ActionError::Permanent(m)) => m,
        other => panic!("expected a permanent failure, got {other:?}"),
    }
}

/// Wait (bounded) until a file has content, and return it trimmed.
async fn wait_for_file(p: &Path) -> String {
    let what = format!("{} to be written", p.display());
    eventually(&what, Duration::from_secs(5), Duration::from_millis(10), || async {
        std::fs::read_to_string(p).ok().filter(|s| s.ends_with('\n')).map(|s| s.trim().to_string())
    })
    .await
}

/// Assert that none of `pids` survives (allowing a moment for init to reap
/// orphaned zombies).
async fn assert_gone(pids: &[i32]) {
    for _ in 0..250 {
        if pids.iter().all(|p| !alive(*p)) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let left: Vec<_> = pids.iter().filter(|p| alive(**p)).collect();
    panic!("processes left behind: {left:?}");
}

/// Wait (up to 5 s: a killed process takes a moment to finish dying on a
/// loaded machine) until no live process is left in group `pgid`.
async fn assert_group_empty(pgid: i32) {
    for _ in 0..250 {
        if group_members(pgid).is_empty() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("processes left in group {pgid}: {:?}", group_members(pgid));
}

/// Wait until the group of the shell whose pid is in `pidfile` has `n`
/// members, and return them.
async fn members_when(pidfile: &Path, n: usize) -> (i32, Vec<i32>) {
    let pgid: i32 = wait_for_file(pidfile).await.parse().unwrap();
    for _ in 0..500 {
        let m = group_members(pgid);
        if m.len() >= n {
            return (pgid, m);
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("process group {pgid} never had {n} members");
}

// ---------------------------------------------------------------- run / shell

#[tokio::test]
async fn run_output_is_stdout_without_one_trailing_newline() {
    let wf = workflow("", "    run: [echo, \"hello {{input.name}}\"]\n");
    assert_eq!(run(&wf, json!({"name": "world"})).await, Ok(json!("hello world")));
    let wf = workflow("", "    run: [printf, \"a\\n\\n\"]\n");
    assert_eq!(run(&wf, json!({})).await, Ok(json!("a\n")));
}

#[tokio::test]
async fn run_json_output_is_parsed() {
    let wf = workflow("", "    run: [echo, '{\"n\": 1, \"ok\": [true, null]}']\n    output: json\n");
    assert_eq!(run(&wf, json!({})).await, Ok(json!({"n": 1, "ok": [true, null]})));
}

#[tokio::test]
async fn run_bad_json_output_fails_with_the_parse_error() {
    let wf = workflow("", "    run: [echo, \"not json\"]\n    output: json\n");
    let m = failed(run(&wf, json!({})).await);
    assert!(m.contains("stdout is not valid JSON"), "{m}");
    assert!(m.contains("not json"), "{m}");
}

#[tokio::test]
async fn nonzero_exit_fails_with_code_and_stderr() {
    let wf = workflow("", "    shell: \"echo partial; echo 'it broke' >&2; exit 3\"\n");
    let m = failed(run(&wf, json!({})).await);
    assert!(m.contains("exited with code 3"), "{m}");
    assert!(m.contains("it broke"), "{m}");
}

#[tokio::test]
async fn killed_by_a_signal_says_which() {
    let wf = workflow("", "    shell: \"kill -USR1 $$\"\n");
    let m = failed(run(&wf, json!({})).await);
    assert!(m.contains("SIGUSR1"), "{m}");
}

#[tokio::test]
async fn missing_program_is_named() {
    let wf = workflow("", "    run: [taskweave-no-such-program, x]\n");
    let m = permanent(run(&wf, json!({})).await);
    assert_eq!(m, "program `taskweave-no-such-program` not found");
}

#[tokio::test]
async fn env_and_cwd_are_applied() {
    let dir = tempfile::tempdir().unwrap();
    let wf = workflow(
        "env: {WF_VAR: from-workflow, SHARED: workflow}\n",
        "    shell: 'echo \"$WF_VAR|$TASK_VAR|$SHARED|$TASKWEAVE_TASK|$(pwd)\"'\n    \
         env: {TASK_VAR: \"{{input.v}}\", SHARED: task}\n    cwd: \"{{input.dir}}\"\n",
    );
    let out = run(&wf, json!({"v": "from input", "dir": dir.path()})).await.unwrap();
    let cwd = dir.path().canonicalize().unwrap();
    assert_eq!(out, json!(format!("from-workflow|from input|task|t|{}", cwd.display())));
    // The inherited environment is kept (PATH found `echo` above; HOME too).
    let wf = workflow("", "    run: [sh, -c, 'test -n \"$PATH\" && echo ok']\n");
    assert_eq!(run(&wf, json!({})).await, Ok(json!("ok")));
}

#[tokio::test]
async fn missing_cwd_fails_clearly() {
    let wf = workflow("", "    run: [pwd]\n    cwd: /nonexistent/taskweave-dir\n");
    let m = failed(run(&wf, json!({})).await);
    assert!(m.contains("/nonexistent/taskweave-dir"), "{m}");
}

#[tokio::test]
async fn shell_values_cannot_inject_commands() {
    let dir = tempfile::tempdir().unwrap();
    let p1 = dir.path().join("pwned1");
    let p2 = dir.path().join("pwned2");
    let p3 = dir.path().join("pwned3");
    let values =
        [format!("\"; touch {}; echo \"", p1.display()), format!("$(touch {})", p2.display()), format!("`touch {}` it's", p3.display())];
    let wf = workflow("", "    shell: |\n      echo {{input.a}}\n      echo {{input.b}}\n      echo {{input.c}}\n");
    let out = run(&wf, json!({"a": values[0], "b": values[1], "c": values[2]})).await.unwrap();
    assert_eq!(out, json!(values.join("\n")));
    for p in [&p1, &p2, &p3] {
        assert!(!p.exists(), "{} was created", p.display());
    }
    // `run` has no shell at all.
    let wf = workflow("", "    run: [echo, \"{{input.a}}\", \"{{input.b}}\"]\n");
    let out = run(&wf, json!({"a": values[0], "b": values[1]})).await.unwrap();
    assert_eq!(out, json!(format!("{} {}", values[0], values[1])));
    assert!(!p1.exists() && !p2.exists());
}

/// Hostile values in every place a template can sit in a script: each
/// payload tries to create a marker file; the script prints what it got.
#[tokio::test]
async fn shell_values_are_inert_in_every_quoting_context() {
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("pwned");
    let m = marker.display().to_string();
    let payloads = [
        format!("$(touch {m})"),
        format!("`touch {m}`"),
        format!("\"; touch {m}; echo \""),
        format!("'; touch {m}; echo '"),
        format!("\\\"$(touch {m})\\\""),
        format!("x\ntouch {m}\n"),
        format!("EOF\ntouch {m}\nEOF"),
        format!("${{IFS}}$(touch${{IFS}}{m})"),
        format!("a b * ; touch {m} #"),
        format!("}}; touch {m}; {{"),
        format!(") ; touch {m} ; ("),
    ];
    // (script, what it prints for a value `v`)
    type Expect = fn(&str) -> String;
    let contexts: [(&str, Expect); 8] = [
        ("printf '%s' {{input.v}}", |v| v.to_string()),
        ("printf '%s' \"Hello, {{input.v}}!\"", |v| format!("Hello, {v}!")),
        ("printf '%s' \"$(printf '%s' {{input.v}})\"", |v| v.trim_end_matches('\n').to_string()),
        ("printf '%s' \"$(printf '%s' \"<{{input.v}}>\")\"", |v| format!("<{v}>")),
        ("x=`printf '%s' {{input.v}}`; printf '%s' \"$x\"", |v| v.trim_end_matches('\n').to_string()),
        ("cat <<EOF\n[{{input.v}}]\nEOF", |v| format!("[{v}]")),
        ("printf '%s' {{#if input.v}}\"{{input.v}}\"{{/if}}", |v| v.to_string()),
        ("# {{input.v}}\nprintf '%s' ok", |_| "ok".to_string()),
    ];
    for (script, want) in contexts {
        let indented = script.replace('\n', "\n      ");
        let wf = workflow("", &format!("    shell: |\n      {indented}\n"));
        for p in &payloads {
            let out = run(&wf, json!({"v": p})).await.unwrap_or_else(|e| panic!("{script} with {p:?}: {e:?}"));
            assert_eq!(out, json!(want(p).trim_end_matches('\n')), "{script} with {p:?}");
            assert!(!marker.exists(), "{script} with {p:?} ran the payload");
        }
    }
}

/// A template inside single quotes, where no variable expands, is a
/// diagnostic at the template; so are partials and inline templates, which
/// would bypass the variables.
#[test]
fn shell_templates_that_cannot_be_passed_safely_are_diagnostics() {
    for (task, line, column, says) in [
        ("    shell: \"echo 'Hello, {{input.name}}!'\"\n", 5, 26, "single quotes"),
        ("    shell: |\n      cat <<'EOF'\n      {{input.name}}\n      EOF\n", 7, 7, "quoted delimiter"),
        ("    shell: \"{{#*inline \\\"p\\\"}}{{{input.x}}}{{/inline}}echo {{> p}}\"\n", 5, 13, "inline"),
        ("    shell: \"{{#*inline \\\"p\\\"}}{{input.x}}{{/inline}}echo {{> p}}\"\n", 5, 13, "inline"),
    ] {
        let yaml = format!("version: 1\nname: t\ntasks:\n  - name: t\n{task}");
        let checked = taskweave::validate::check_source("t.yaml", yaml.clone(), taskweave::spec::Format::Yaml, &Default::default());
        let d = checked.diagnostics.iter().find(|d| d.code.as_str() == "template").unwrap_or_else(|| panic!("{yaml}: no diagnostic"));
        assert!(d.message.contains(says), "{yaml}: {}", d.message);
        assert_eq!((d.span.start.line, d.span.start.column), (line, column), "{yaml}: {d:?}");
        assert!(checked.workflow.is_none(), "{yaml} compiled");
    }
}

#[tokio::test]
async fn output_over_the_cap_fails_and_stops_the_process() {
    let env = Env { limits: Limits { max_output_bytes: 1024, ..Limits::default() }, ..Env::default() };
    let wf = workflow("", "    shell: 'while :; do echo 0123456789abcdef; done'\n");
    let m = failed(env.run(&wf, json!({})).await);
    assert_eq!(m, "stdout exceeded 1 KiB");
    let wf = workflow("", "    shell: 'while :; do echo 0123456789abcdef >&2; done'\n");
    let m = failed(env.run(&wf, json!({})).await);
    assert_eq!(m, "stderr exceeded 1 KiB");
    // Exactly at the cap is fine.
    let wf = workflow("", "    shell: \"head -c 1024 /dev/zero | tr '\\\\0' x\"\n");
    let out = env.run(&wf, json!({})).await.unwrap();
    assert_eq!(out.as_str().unwrap().len(), 1024);
}

#[tokio::test]
async fn cancel_stops_the_whole_process_group() {
    let dir = tempfile::tempdir().unwrap();
    let pidfile = dir.path().join("pid");
    let wf = workflow("", "    shell: 'echo $$ > {{input.pidfile}}; sleep 100; echo x'\n");
    let env = Env::default();
    let cancel = env.cancel.clone();
    let watcher = {
        let pidfile = pidfile.clone();
        async move {
            let (pgid, members) = members_when(&pidfile, 2).await;
            cancel.cancel();
            (pgid, members)
        }
    };
    let started = Instant::now();
    let (r, (pgid, members)) = tokio::join!(env.run(&wf, json!({"pidfile": pidfile})), watcher);
    assert_eq!(r, Err(ActionError::Cancelled));
    assert!(members.len() >= 2, "{members:?}");
    assert_gone(&members).await;
    assert_group_empty(pgid).await;
    // sh and sleep die on SIGTERM: no need to wait for the 5 s grace.
    assert!(started.elapsed() < Duration::from_secs(4), "{:?}", started.elapsed());
}

#[tokio::test]
async fn processes_ignoring_sigterm_get_sigkill_after_the_grace() {
    let dir = tempfile::tempdir().unwrap();
    let pidfile = dir.path().join("pid");
    let marker = dir.path().join("marker");
    let wf = workflow(
        "",
        "    shell: |\n      marker={{input.marker}}\n      trap 'echo term >> \"$marker\"' TERM\n      \
         echo $$ > {{input.pidfile}}\n      while :; do sleep 1; done\n",
    );
    let grace = Duration::from_secs(2); // long enough for a loaded machine to run the trap
    let env = Env { limits: Limits { kill_grace: grace, ..Limits::default() }, ..Env::default() };
    let cancel = env.cancel.clone();
    let watcher = {
        let pidfile = pidfile.clone();
        async move {
            let (pgid, members) = members_when(&pidfile, 2).await;
            let at = Instant::now();
            cancel.cancel();
            (pgid, members, at)
        }
    };
    let (r, (pgid, members, cancelled_at)) = tokio::join!(env.run(&wf, json!({"pidfile": pidfile, "marker": marker})), watcher);
    assert_eq!(r, Err(ActionError::Cancelled));
    // The shell survived SIGTERM (its trap ran), so SIGKILL came after the grace.
    assert!(cancelled_at.elapsed() >= grace, "{:?}", cancelled_at.elapsed());
    assert!(cancelled_at.elapsed() < Duration::from_secs(10));
    assert_eq!(std::fs::read_to_string(&marker).unwrap().trim(), "term");
    assert_gone(&members).await;
    assert_group_empty(pgid).await;
}

#[tokio::test]
async fn a_dropped_attempt_leaves_no_processes() {
    let dir = tempfile::tempdir().unwrap();
    let pidfile = dir.path().join("pid");
    let wf = workflow("", "    shell: 'echo $$ > {{input.pidfile}}; sleep 100; echo x'\n");
    let env = Env::default();
    let input = json!({"pidfile": pidfile});
    let attempt = env.run(&wf, input);
    let (pgid, members) = tokio::select! {
        r = attempt => panic!("the attempt ended on its own: {r:?}"),
        m = members_when(&pidfile, 2) => m,
    };
    assert_gone(&members).await;
    assert_group_empty(pgid).await;
}

#[tokio::test]
async fn background_children_do_not_outlive_the_task() {
    let dir = tempfile::tempdir().unwrap();
    let pidfile = dir.path().join("bg");
    let wf = workflow("", "    shell: 'sleep 100 & echo $! > {{input.pidfile}}; echo done'\n");
    let started = Instant::now();
    assert_eq!(run(&wf, json!({"pidfile": pidfile})).await, Ok(json!("done")));
    assert!(started.elapsed() < Duration::from_secs(30));
    let bg: i32 = wait_for_file(&pidfile).await.parse().unwrap();
    assert_gone(&[bg]).await;
}

// ---------------------------------------------------------------- http

#[tokio::test]
async fn http_get_sends_query_and_headers() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/items"))
        .and(query_param("q", "rust lang"))
        .and(query_param("limit", "5"))
        .and(header("x-token", "secret-1"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"items": [1, 2]})).insert_header("X-Request-Id", "abc"))
        .expect(1)
        .mount(&server)
        .await;
    let wf = workflow(
        "",
        "    http:\n      url: \"{{input.base}}/items\"\n      \
         query: {q: \"{{input.q}}\", limit: \"5\"}\n      headers: {X-Token: \"{{input.token}}\"}\n",
    );
    let out = run(&wf, json!({"base": server.uri(), "q": "rust lang", "token": "secret-1"})).await.unwrap();
    assert_eq!(out["status"], json!(200));
    assert_eq!(out["body"], json!({"items": [1, 2]}));
    assert_eq!(out["headers"]["x-request-id"], json!("abc"));
    assert!(out["headers"]["content-type"].as_str().unwrap().contains("application/json"));
}

#[tokio::test]
async fn http_post_json_keeps_template_types() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/ingest"))
        .and(body_json(json!({
            "count": 3,
            "tags": ["a", "b"],
            "meta": {"deep": true},
            "text": "run r1 for t",
            "fixed": 1.5,
        })))
        .respond_with(ResponseTemplate::new(201).set_body_string("created"))
        .expect(1)
        .mount(&server)
        .await;
    let wf = workflow(
        "",
        "    http:\n      method: POST\n      url: \"{{input.base}}/ingest\"\n      json:\n        \
         count: \"{{input.count}}\"\n        tags: \"{{input.tags}}\"\n        meta: \"{{input.meta}}\"\n        \
         text: \"run {{run.id}} for {{workflow.name}}\"\n        fixed: 1.5\n",
    );
    let out = run(&wf, json!({"base": server.uri(), "count": 3, "tags": ["a", "b"], "meta": {"deep": true}})).await.unwrap();
    assert_eq!(out["status"], json!(201));
    assert_eq!(out["body"], json!("created"));
}

#[tokio::test]
async fn http_text_body_is_sent_as_is() {
    let server = MockServer::start().await;
    Mock::given(method("PUT"))
        .and(path("/doc"))
        .and(wiremock::matchers::body_string("hello world"))
        .respond_with(ResponseTemplate::new(200).set_body_raw("plain text", "text/plain"))
        .expect(1)
        .mount(&server)
        .await;
    let wf = workflow("", "    http:\n      method: PUT\n      url: \"{{input.base}}/doc\"\n      body: \"hello {{input.who}}\"\n");
    let out = run(&wf, json!({"base": server.uri(), "who": "world"})).await.unwrap();
    assert_eq!(out["body"], json!("plain text"));
}

#[tokio::test]
async fn http_non_2xx_fails_with_status_and_body() {
    let server = MockServer::start().await;
    Mock::given(method("GET")).respond_with(ResponseTemplate::new(503).set_body_string("down for maintenance")).mount(&server).await;
    let wf = workflow("", "    http: {url: \"{{input.base}}/x\"}\n");
    let m = failed(run(&wf, json!({"base": server.uri()})).await);
    assert_eq!(m, "HTTP 503 Service Unavailable: down for maintenance");
}

#[tokio::test]
async fn http_connection_errors_are_retryable() {
    let wf = workflow("", "    http: {url: \"http://127.0.0.1:1/x\"}\n");
    let m = failed(run(&wf, json!({})).await);
    assert!(m.contains("http://127.0.0.1:1/x"), "{m}");
}

#[tokio::test]
async fn http_honours_cancel_timeout_and_body_cap() {
    let server = MockServer::start().await;
    Mock::given(path("/slow")).respond_with(ResponseTemplate::new(200).set_delay(Duration::from_secs(30))).mount(&server).await;
    Mock::given(path("/big")).respond_with(ResponseTemplate::new(200).set_body_string("x".repeat(100))).mount(&server).await;
    let slow = workflow("", "    http: {url: \"{{input.base}}/slow\"}\n");
    let input = json!({"base": server.uri()});

    let env = Env::default();
    let cancel = env.cancel.clone();
    let started = Instant::now();
    let (r, ()) = tokio::join!(env.run(&slow, input.clone()), async move {
        tokio::time::sleep(Duration::from_millis(100)).await;
        cancel.cancel();
    });
    assert_eq!(r, Err(ActionError::Cancelled));
    assert!(started.elapsed() < Duration::from_secs(10));

    let env =
        Env { limits: Limits { http_timeout: Duration::from_millis(200), max_output_bytes: 16, ..Limits::default() }, ..Env::default() };
    // Whole URLs as lone reads: a template's own text counts under the cap.
    let by_url = workflow("", "    http: {url: \"{{input.url}}\"}\n");
    let m = failed(env.run(&by_url, json!({"url": format!("{}/slow", server.uri())})).await);
    assert!(m.contains("timed out"), "{m}");
    let m = failed(env.run(&by_url, json!({"url": format!("{}/big", server.uri())})).await);
    assert!(m.contains("exceeded 16 bytes"), "{m}");
}

// ---------------------------------------------------------------- http egress

fn egress(e: Egress) -> Env {
    Env { limits: Limits { egress: e, ..Limits::default() }, ..Env::default() }
}

/// Private addresses denied, but the test server's 127.0.0.1 allowed.
fn locked_but_local_allowed() -> Egress {
    Egress { deny_private: true, allow: vec!["127.0.0.1".parse().unwrap()], ..Egress::default() }
}

#[tokio::test]
async fn http_deny_private_refuses_loopback_in_every_spelling() {
    let server = MockServer::start().await;
    Mock::given(method("GET")).respond_with(ResponseTemplate::new(200).set_body_string("ok")).mount(&server).await;
    let port = server.address().port();
    let wf = workflow("", "    http: {url: \"{{input.url}}\"}\n");
    let env = egress(Egress { deny_private: true, ..Egress::default() });
    for (url, shown) in [
        (format!("http://127.0.0.1:{port}/x"), "127.0.0.1 is in a denied range (loopback)"),
        (format!("http://0x7f000001:{port}/x"), "127.0.0.1 is in a denied range (loopback)"),
        (format!("http://2130706433:{port}/x"), "127.0.0.1 is in a denied range (loopback)"),
        (format!("http://127.1:{port}/x"), "127.0.0.1 is in a denied range (loopback)"),
        (format!("http://[::ffff:127.0.0.1]:{port}/x"), "127.0.0.1 is in a denied range (loopback)"),
        (format!("http://localhost:{port}/x"), "localhost resolves to"),
        ("http://169.254.169.254/latest/meta-data/".to_string(), "169.254.169.254 is in a denied range (link-local)"),
        ("http://10.0.0.5/".to_string(), "10.0.0.5 is in a denied range (private); allow it with [actions.http] allow = [\"10.0.0.5\"]"),
    ] {
        let m = permanent(env.run(&wf, json!({"url": url})).await);
        assert!(m.starts_with("http: ") && m.contains(shown), "{url}: {m}");
    }
    assert!(server.received_requests().await.unwrap().is_empty(), "a refused request reached the server");

    // The default policy keeps local services reachable.
    let out = run(&wf, json!({"url": format!("http://127.0.0.1:{port}/x")})).await.unwrap();
    assert_eq!(out["body"], json!("ok"));
    // An allow entry opens one address again.
    let out = egress(locked_but_local_allowed()).run(&wf, json!({"url": format!("{}/x", server.uri())})).await.unwrap();
    assert_eq!(out["body"], json!("ok"));
}

#[tokio::test]
async fn http_redirects_are_checked_hop_by_hop() {
    let server = MockServer::start().await;
    let port = server.address().port();
    let to = |location: String| ResponseTemplate::new(302).insert_header("location", location.as_str());
    // 127.0.0.2 is loopback too, but not on the allow list.
    Mock::given(path("/to-denied")).respond_with(to(format!("http://127.0.0.2:{port}/secret"))).mount(&server).await;
    Mock::given(path("/to-deny-list")).respond_with(to("http://203.0.113.7/".into())).mount(&server).await;
    Mock::given(path("/to-localhost")).respond_with(to(format!("http://localhost:{port}/done"))).mount(&server).await;
    Mock::given(path("/secret")).respond_with(ResponseTemplate::new(200)).expect(0).mount(&server).await;
    Mock::given(path("/a")).respond_with(to("/b".into())).mount(&server).await;
    Mock::given(path("/b")).respond_with(to("/c".into())).mount(&server).await;
    Mock::given(path("/c")).respond_with(to("/done".into())).mount(&server).await;
    Mock::given(path("/done")).respond_with(ResponseTemplate::new(200).set_body_string("done")).mount(&server).await;
    let wf = workflow("", "    http: {url: \"{{input.base}}{{input.path}}\"}\n");
    let input = |p: &str| json!({"base": server.uri(), "path": p});

    let mut e = locked_but_local_allowed();
    e.deny = vec!["203.0.113.0/24".parse().unwrap()];
    let env = egress(e.clone());
    let m = permanent(env.run(&wf, input("/to-denied")).await);
    assert!(m.contains(&format!("redirect to http://127.0.0.2:{port}/secret")), "{m}");
    assert!(m.contains("127.0.0.2 is in a denied range (loopback)"), "{m}");
    let m = permanent(env.run(&wf, input("/to-deny-list")).await);
    assert!(m.contains("203.0.113.7 is in the deny list ([actions.http] deny has \"203.0.113.0/24\")"), "{m}");
    // A redirect to a name is checked when the name is resolved: localhost
    // resolves to 127.0.0.1, which is allowed.
    assert_eq!(env.run(&wf, input("/to-localhost")).await.unwrap()["body"], json!("done"));

    // Three hops are fine under the default limit, and under a limit of
    // three, not under a limit of two.
    assert_eq!(env.run(&wf, input("/a")).await.unwrap()["body"], json!("done"));
    let env = egress(Egress { max_redirects: 2, ..e.clone() });
    let m = permanent(env.run(&wf, input("/a")).await);
    assert!(m.contains("stopped after 2 redirects ([actions.http] max_redirects = 2)"), "{m}");
    let env = egress(Egress { max_redirects: 3, ..e.clone() });
    assert_eq!(env.run(&wf, input("/a")).await.unwrap()["body"], json!("done"));

    // Redirects off: the 3xx is the answer, and it fails the task.
    let env = egress(Egress { follow_redirects: false, ..e });
    let m = permanent(env.run(&wf, input("/a")).await);
    assert!(m.starts_with("HTTP 302 Found") && m.contains("follow_redirects = false"), "{m}");
}

// ---------------------------------------------------------------- through a run

#[tokio::test]
async fn a_workflow_run_honours_the_actions_config() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("doc.txt"), "hello").unwrap();
    std::fs::write(dir.path().join("big.txt"), "x".repeat(100)).unwrap();
    let server = MockServer::start().await;
    Mock::given(method("GET")).respond_with(ResponseTemplate::new(200)).expect(0).mount(&server).await;
    let config =
        format!("[actions.extract_text]\nroot = '{}'\nmax_bytes = 64\n\n[actions.http]\ndeny_private = true\n", dir.path().display());
    let config = taskweave::config::Config::parse(&config).unwrap();
    let engine = taskweave::Engine::builder().config(config).without_store().build().await.unwrap();
    // Retries are allowed, but a refusal is permanent: one attempt each.
    let yaml = r#"
version: 1
name: guarded
defaults: {retry: {attempts: 3, delay: 10ms}}
tasks:
  - {name: read, uses: extract-text, with: {path: "{{input.doc}}"}}
  - {name: big, uses: extract-text, with: {path: big.txt}}
  - {name: shadow, uses: extract-text, with: {path: /etc/shadow}}
  - {name: call, http: {url: "{{input.url}}"}}
"#;
    let checked = taskweave::validate::check_source("guarded.yaml", yaml.to_string(), taskweave::spec::Format::Yaml, &Default::default());
    engine.register_workflow(checked.workflow.expect("valid"));
    let input = json!({"doc": "doc.txt", "url": server.uri()});
    let opts = taskweave::RunOptions { input: Some(input), ..Default::default() };
    let id = engine.run_workflow("guarded", opts).await.unwrap();
    let r = engine.get_result(&id, Some(Duration::from_secs(30))).await.unwrap();
    assert_eq!(r.tasks["read"].output.as_ref().unwrap()["text"], json!("hello"));
    let error = |t: &str| {
        assert_eq!(r.tasks[t].attempts, 1, "{t}: {:?}", r.tasks[t]);
        r.tasks[t].error.clone().unwrap_or_default()
    };
    assert!(error("big").contains("[actions.extract_text] max_bytes"), "{:?}", r.tasks["big"]);
    assert!(error("shadow").contains("outside the root folder"), "{:?}", r.tasks["shadow"]);
    assert!(error("call").contains("127.0.0.1 is in a denied range (loopback)"), "{:?}", r.tasks["call"]);
    engine.shutdown().await;
}

// ---------------------------------------------------------------- handlers

#[tokio::test]
async fn builtins_are_registered() {
    let h = Handlers::with_builtins();
    let mut names: Vec<_> = h.names().collect();
    names.sort();
    assert_eq!(names, ["echo", "extract-text", "fail", "llm", "sleep"]);
}

#[tokio::test]
async fn echo_returns_its_arguments() {
    let wf = workflow("", "    uses: echo\n    with: {n: \"{{input.n}}\", s: \"id {{run.id}}\", list: [1, two]}\n");
    assert_eq!(run(&wf, json!({"n": 7})).await, Ok(json!({"n": 7, "s": "id r1", "list": [1, "two"]})));
}

#[tokio::test]
async fn sleep_sleeps_and_honours_cancel() {
    let wf = workflow("", "    uses: sleep\n    with: {duration: 20ms}\n");
    assert_eq!(run(&wf, json!({})).await, Ok(json!({"slept_ms": 20})));
    let wf = workflow("", "    uses: sleep\n    with: {seconds: 0.01}\n");
    assert_eq!(run(&wf, json!({})).await, Ok(json!({"slept_ms": 10})));

    let wf = workflow("", "    uses: sleep\n    with: {seconds: 60}\n");
    let env = Env::default();
    let cancel = env.cancel.clone();
    let started = Instant::now();
    let (r, ()) = tokio::join!(env.run(&wf, json!({})), async move {
        tokio::time::sleep(Duration::from_millis(50)).await;
        cancel.cancel();
    });
    assert_eq!(r, Err(ActionError::Cancelled));
    assert!(started.elapsed() < Duration::from_secs(10));

    let wf = workflow("", "    uses: sleep\n    with: {}\n");
    permanent(run(&wf, json!({})).await);
}

#[tokio::test]
async fn fail_fails_as_asked() {
    let wf = workflow("", "    uses: fail\n");
    assert_eq!(run(&wf, json!({})).await, Err(ActionError::Failed("failed on purpose".into())));
    let wf = workflow("", "    uses: fail\n    with: {message: \"no {{input.x}}\"}\n");
    assert_eq!(run(&wf, json!({"x": "luck"})).await, Err(ActionError::Failed("no luck".into())));
    let wf = workflow("", "    uses: fail\n    with: {message: broken, retryable: false}\n");
    assert_eq!(run(&wf, json!({})).await, Err(ActionError::Permanent("broken".into())));
}

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/actions").join(name)
}

/// Built-in handlers whose `extract-text` reads inside `root`, at most `max_bytes`.
fn rooted(root: &Path, max_bytes: usize) -> Env {
    let extract_text = ExtractTextSettings { root: Some(root.to_path_buf()), max_bytes };
    Env { handlers: Handlers::builtin_with(BuiltinSettings { llm: LlmConfig::default(), extract_text }), ..Env::default() }
}

#[tokio::test]
async fn extract_text_reads_plain_text() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("notes.txt");
    std::fs::write(&p, "first line\nsecond line\n").unwrap();
    let wf = workflow("", "    uses: extract-text\n    with: {path: \"{{input.path}}\"}\n");
    let want = json!({"text": "first line\nsecond line\n", "page_count": 1, "extraction_method": "plain"});
    let env = rooted(dir.path(), 1024);
    assert_eq!(env.run(&wf, json!({"path": p})).await, Ok(want.clone()));
    assert_eq!(env.run(&wf, json!({"path": "notes.txt"})).await, Ok(want));
}

#[tokio::test]
async fn extract_text_refuses_what_is_not_a_small_regular_file_inside_its_root() {
    let outer = tempfile::tempdir().unwrap();
    let root = outer.path().join("docs");
    std::fs::create_dir(&root).unwrap();
    std::fs::write(outer.path().join("secret.txt"), "TOP-SECRET-CONTENT").unwrap();
    std::os::unix::fs::symlink("../secret.txt", root.join("link-out")).unwrap();
    std::fs::write(root.join("big.txt"), "x".repeat(100)).unwrap();
    let fifo = std::ffi::CString::new(root.join("pipe").as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0, "mkfifo");
    let wf = workflow("", "    uses: extract-text\n    with: {path: \"{{input.path}}\"}\n");
    let env = rooted(&root, 64);
    let cases = [
        ("/etc/shadow", "is outside the root folder"),
        ("/etc/passwd", "is outside the root folder"),
        ("/dev/zero", "is outside the root folder"),
        ("../secret.txt", "is outside the root folder"),
        ("link-out", "through a symbolic link"),
        ("pipe", "is a FIFO (named pipe), not a regular file"),
        ("big.txt", "is larger than the limit of 64 bytes ([actions.extract_text] max_bytes)"),
    ];
    for (path, why) in cases {
        let started = Instant::now();
        let r = tokio::time::timeout(Duration::from_secs(20), env.run(&wf, json!({"path": path}))).await.expect("no hang");
        let m = permanent(r);
        assert!(m.contains(why), "{path}: {m}");
        assert!(!m.contains("TOP-SECRET"), "{path}: {m}");
        assert!(started.elapsed() < Duration::from_secs(10), "{path} took {:?}", started.elapsed());
    }

    // Many at once hold no thread: each FIFO is refused without waiting for
    // a writer (more than tokio's 512 blocking threads).
    let runs = (0..600).map(|_| env.run(&wf, json!({"path": "pipe"})));
    let all = tokio::time::timeout(Duration::from_secs(60), futures::future::join_all(runs)).await.expect("no hang");
    assert!(all.into_iter().all(|r| matches!(r, Err(ActionError::Permanent(_)))));

    // A cancelled attempt stops at once.
    let env = rooted(&root, 64);
    env.cancel.cancel();
    assert_eq!(env.run(&wf, json!({"path": "big.txt"})).await, Err(ActionError::Cancelled));
}

#[tokio::test]
async fn extract_text_reads_inside_the_working_directory_by_default() {
    // Tests run in the package folder.
    let wf = workflow("", "    uses: extract-text\n    with: {path: \"{{input.path}}\"}\n");
    let out = run(&wf, json!({"path": "tests/fixtures/actions/two-pages.pdf"})).await.unwrap();
    assert_eq!(out["page_count"], json!(2));
    let m = permanent(run(&wf, json!({"path": "/etc/passwd"})).await);
    assert!(m.contains("outside the root folder"), "{m}");
}

#[tokio::test]
async fn extract_text_reads_pdfs() {
    let wf = workflow("", "    uses: extract-text\n    with: {path: \"{{input.path}}\"}\n");
    let env = rooted(&fixture(""), 1024 * 1024);
    let out = env.run(&wf, json!({"path": fixture("two-pages.pdf")})).await.unwrap();
    assert_eq!(out["extraction_method"], json!("pdf"));
    assert_eq!(out["page_count"], json!(2));
    let text = out["text"].as_str().unwrap();
    let first = text.find("Hello from page one").unwrap_or_else(|| panic!("{text:?}"));
    let second = text.find("Second page here").unwrap_or_else(|| panic!("{text:?}"));
    assert!(first < second, "{text:?}");
}

#[tokio::test]
async fn extract_text_failures_name_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.txt");
    let wf = workflow("", "    uses: extract-text\n    with: {path: \"{{input.path}}\"}\n");
    let env = rooted(dir.path(), 1024);
    let m = failed(env.run(&wf, json!({"path": missing})).await);
    assert!(m.contains(&missing.display().to_string()), "{m}");

    let broken = dir.path().join("broken.pdf");
    std::fs::write(&broken, b"%PDF-1.4\n1 0 obj << /Type /Catalog >> endobj\ntrailer <<>>\n%%EOF\n").unwrap();
    let m = failed(env.run(&wf, json!({"path": broken})).await);
    assert!(m.contains("broken.pdf"), "{m}");
}

// ---------------------------------------------------------------- llm

fn llm_handlers(server: &MockServer, key: Option<&str>) -> Handlers {
    Handlers::builtin(LlmConfig {
        base_url: format!("{}/v1", server.uri()),
        api_key: key.map(str::to_string),
        model: "gpt-test".into(),
        timeout: Duration::from_secs(30),
    })
}

#[tokio::test]
async fn llm_sends_a_chat_completion_and_reads_the_reply() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/v1/chat/completions"))
        .and(header("authorization", "Bearer test-key"))
        .and(body_partial_json(json!({
            "model": "gpt-test",
            "messages": [{"role": "user", "content": "Summarise: the doc"}],
            "temperature": 0,
        })))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "id": "c1",
            "model": "gpt-test-2025",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "A summary."}}],
            "usage": {"prompt_tokens": 30, "completion_tokens": 12, "total_tokens": 42},
        })))
        .expect(1)
        .mount(&server)
        .await;
    let wf = workflow("", "    uses: llm\n    with: {prompt: \"Summarise: {{input.text}}\", temperature: 0}\n");
    let env = Env { handlers: llm_handlers(&server, Some("test-key")), ..Env::default() };
    let out = env.run(&wf, json!({"text": "the doc"})).await.unwrap();
    assert_eq!(out, json!({"response": "A summary.", "tokens_used": 42, "model": "gpt-test-2025"}));
}

#[tokio::test]
async fn llm_errors_are_classified() {
    let server = MockServer::start().await;
    Mock::given(body_partial_json(json!({"model": "flaky"})))
        .respond_with(ResponseTemplate::new(500).set_body_string("upstream exploded"))
        .mount(&server)
        .await;
    Mock::given(body_partial_json(json!({"model": "busy"})))
        .respond_with(ResponseTemplate::new(429).set_body_string("slow down"))
        .mount(&server)
        .await;
    Mock::given(body_partial_json(json!({"model": "unknown"})))
        .respond_with(ResponseTemplate::new(404).set_body_string("no such model"))
        .mount(&server)
        .await;
    let env = Env { handlers: llm_handlers(&server, Some("test-key")), ..Env::default() };
    let task = |model: &str| workflow("", &format!("    uses: llm\n    with: {{prompt: hi, model: {model}}}\n"));
    let m = failed(env.run(&task("flaky"), json!({})).await);
    assert!(m.contains("500") && m.contains("upstream exploded"), "{m}");
    let m = failed(env.run(&task("busy"), json!({})).await);
    assert!(m.contains("429"), "{m}");
    let m = permanent(env.run(&task("unknown"), json!({})).await);
    assert!(m.contains("404") && m.contains("no such model"), "{m}");
    assert!(!m.contains("test-key"));
}

#[tokio::test]
async fn llm_without_a_key_for_a_remote_service_is_permanent() {
    let env = Env {
        handlers: Handlers::builtin(LlmConfig { base_url: "https://llm.example.invalid/v1".into(), api_key: None, ..LlmConfig::default() }),
        ..Env::default()
    };
    let wf = workflow("", "    uses: llm\n    with: {prompt: hi}\n");
    let m = permanent(env.run(&wf, json!({})).await);
    assert!(m.contains("API key"), "{m}");
}

/// Text a template renders is held to `max_output_bytes`, like captured
/// output: a template repeating a large value fails the task at the cap
/// (without a retry) instead of multiplying the value in memory; a lone read
/// passes the value itself.
#[tokio::test]
async fn templates_render_within_the_output_cap() {
    let env = Env { limits: Limits { max_output_bytes: 4096, ..Limits::default() }, ..Env::default() };
    let big = "y".repeat(3000);
    let wf = workflow("", "    uses: echo\n    with: {t: \"{{input.s}} {{input.s}} {{input.s}}\"}\n");
    let m = permanent(env.run(&wf, json!({"s": big})).await);
    assert!(m.contains("more than 4 KiB"), "{m}");
    let wf = workflow("", "    uses: echo\n    with: {t: \"{{input.s}}\"}\n");
    assert_eq!(env.run(&wf, json!({"s": big.repeat(3)})).await.unwrap(), json!({"t": big.repeat(3)}));
    let wf = workflow("", "    shell: \"printf '%s' {{input.s}}{{input.s}}\"\n");
    assert!(permanent(env.run(&wf, json!({"s": big})).await).contains("more than 4 KiB"));
}
