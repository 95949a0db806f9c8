//! End-to-end tests of `taskweave run` and `taskweave runs` on the real
//! binary, each in its own temp folder (its own SQLite store).

use assert_cmd::Command;
use predicates::prelude::*;
use serde_json::Value;
use std::path::Path;
use std::time::Duration;
use taskweave::backend::conformance::{alive, eventually_blocking, group_members};

fn tw(dir: &Path) -> Command {
    let mut c = Command::cargo_bin("taskweave").expect("binary");
    c.current_dir(dir).env_remove("TASK_QUEUE_BACKEND").env_remove("TASKWEAVE_STORE").env("NO_COLOR", "1");
    c
}

fn write(dir: &Path, name: &str, text: &str) -> std::path::PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

const GREET: &str = r#"
version: 1
name: greet
input:
  type: object
  additionalProperties: false
  required: [who]
  properties:
    who: {type: string}
    times: {type: integer, default: 2}
tasks:
  - {name: hello, run: [echo, "hello {{input.who}}"]}
  - {name: twice, parents: [hello], uses: echo, with: {text: "{{tasks.hello.output}}", n: "{{input.times}}"}}
"#;

#[test]
fn a_successful_run_exits_0_and_prints_the_result_as_json() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "greet.yaml", GREET);
    let out = tw(dir.path()).args(["run", "greet.yaml", "--input", r#"{"who": "ada"}"#, "--format", "json"]).output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let r: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(r["status"], "succeeded");
    assert_eq!(r["workflow"], "greet");
    assert_eq!(r["backend"], "local");
    assert!(r["version"].as_str().unwrap().starts_with("sha256:"));
    assert_eq!(r["tasks"]["hello"]["output"], "hello ada");
    assert_eq!(r["tasks"]["twice"]["output"], serde_json::json!({"text": "hello ada", "n": 2}));
    for key in ["run_id", "started_at", "finished_at", "routing"] {
        assert!(r.get(key).is_some(), "missing {key}");
    }
    for key in ["status", "output", "attempts", "error", "skip_reason", "started_at", "finished_at"] {
        assert!(r["tasks"]["hello"].get(key).is_some(), "task result misses {key}");
    }
    // The run is in the store.
    let id = r["run_id"].as_str().unwrap();
    tw(dir.path()).args(["runs", "list"]).assert().success().stdout(predicate::str::contains(id));
    let shown = tw(dir.path()).args(["runs", "show", &id[..20], "--format", "json"]).output().unwrap();
    assert_eq!(shown.status.code(), Some(0));
    let s: Value = serde_json::from_slice(&shown.stdout).unwrap();
    assert_eq!(s["run_id"], id);
    assert_eq!(s["tasks"]["twice"]["output"]["n"], 2);
    // A second run shares the time prefix; the last characters of an id name it.
    tw(dir.path()).args(["run", "greet.yaml", "--set", "who=bo"]).assert().success();
    tw(dir.path()).args(["runs", "show", &id[..4]]).assert().code(2).stderr(predicate::str::contains("matches 2 runs"));
    let shown = tw(dir.path()).args(["runs", "show", &id[id.len() - 6..], "--format", "json"]).output().unwrap();
    assert_eq!(shown.status.code(), Some(0), "{}", String::from_utf8_lossy(&shown.stderr));
    let s: Value = serde_json::from_slice(&shown.stdout).unwrap();
    assert_eq!(s["run_id"], id);
}

#[test]
fn the_workflow_output_is_shown_by_run_and_runs_show() {
    let dir = tempfile::tempdir().unwrap();
    let text = r#"
version: 1
name: out
tasks:
  - {name: split, uses: echo, with: {pages: [p1, p2], n: 2}}
  - {name: later, parents: [split], when: 'tasks.split.output.n > 5', uses: echo}
output:
  pages: "{{tasks.split.output.pages}}"
  n: "{{tasks.split.output.n}}"
  later: "{{tasks.later.output}}"
"#;
    write(dir.path(), "out.yaml", text);
    let out = tw(dir.path()).args(["run", "out.yaml", "--format", "json"]).output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let r: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(r["status"], "succeeded");
    assert_eq!(r["output"], serde_json::json!({"pages": ["p1", "p2"], "n": 2, "later": null}));
    let id = r["run_id"].as_str().unwrap();
    let section = "output:\n  pages: [\"p1\",\"p2\"]\n  n: 2\n  later: null\n";
    tw(dir.path()).args(["runs", "show", id]).assert().success().stdout(predicate::str::contains(section));
    let shown = tw(dir.path()).args(["runs", "show", id, "--format", "json"]).output().unwrap();
    let s: Value = serde_json::from_slice(&shown.stdout).unwrap();
    assert_eq!(s["output"], r["output"]);
    tw(dir.path()).args(["run", "out.yaml"]).assert().success().stdout(predicate::str::contains(section));
    // An output that cannot be rendered fails the run, and says why.
    write(dir.path(), "out.yaml", &text.replace("tasks.split.output.n}}", "tasks.split.output.nope}}"));
    let out = tw(dir.path()).args(["run", "out.yaml"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains(" failed") && stdout.contains("workflow output: template reads `tasks.split.output.nope`"), "{stdout}");
    assert!(!stdout.contains("output:\n"), "{stdout}");
}

#[test]
fn set_builds_the_input_and_human_output_summarises() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "greet.yaml", GREET);
    tw(dir.path())
        .args(["run", "greet.yaml", "--set", "who=grace", "--set", "times=3"])
        .assert()
        .success()
        .stdout(predicate::str::contains("hello grace").and(predicate::str::contains("succeeded")));
}

#[test]
fn invalid_input_exits_2_and_names_the_property() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "greet.yaml", GREET);
    tw(dir.path())
        .args(["run", "greet.yaml", "--input", "{}"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("missing required property `who`"));
    tw(dir.path()).args(["run", "greet.yaml", "--input", r#"{"who": 5}"#]).assert().code(2).stderr(predicate::str::contains("who"));
    tw(dir.path()).args(["run", "greet.yaml", "--input", "{not json"]).assert().code(2).stderr(predicate::str::contains("not valid JSON"));
    // Nothing ran.
    tw(dir.path()).args(["runs", "list", "--format", "json"]).assert().success().stdout(predicate::str::diff("[]\n"));
}

#[test]
fn an_invalid_spec_exits_2_with_diagnostics() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "bad.yaml", "version: 1\nname: bad\ntasks:\n  - {name: a, uses: echo, parents: [nope]}\n");
    tw(dir.path())
        .args(["run", "bad.yaml"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("unknown-parent").and(predicate::str::contains("bad.yaml:4:")));
    tw(dir.path()).args(["run", "no-such-workflow"]).assert().code(2).stderr(predicate::str::contains("no workflow"));
}

#[test]
fn a_failed_run_exits_1_and_says_why() {
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "f.yaml",
        "version: 1\nname: f\ntasks:\n  - {name: a, shell: 'echo oops >&2; exit 3'}\n  - {name: b, parents: [a], uses: echo}\n",
    );
    let out = tw(dir.path()).args(["run", "f.yaml"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("FAILED") && stdout.contains("oops"), "{stdout}");
    assert!(stdout.contains("parent a failed"), "{stdout}");
    assert!(stdout.contains("run ") && stdout.contains(" failed"), "{stdout}");
}

#[test]
fn shell_templates_cannot_inject_commands() {
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("pwned");
    write(dir.path(), "s.yaml", "version: 1\nname: s\ntasks:\n  - {name: say, shell: 'echo {{input.text}}'}\n");
    let evil = format!("x; touch {m}; $(touch {m}) `touch {m}`", m = marker.display());
    let out = tw(dir.path())
        .args(["run", "s.yaml", "--format", "json", "--input"])
        .arg(serde_json::json!({"text": evil}).to_string())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let r: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(r["tasks"]["say"]["output"], evil, "the value is printed literally");
    assert!(!marker.exists(), "the input ran as shell code");
}

#[test]
fn by_name_from_the_configured_folder() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("flows")).unwrap();
    write(&dir.path().join("flows"), "greet.yaml", GREET);
    write(dir.path(), "taskweave.toml", "[engine]\nworkflows = [\"flows\"]\nstore = \"sqlite://state/db.sqlite\"\n");
    tw(dir.path()).args(["run", "greet", "--set", "who=x"]).assert().success();
    assert!(dir.path().join("state/db.sqlite").exists(), "the store path comes from the config");
    tw(dir.path()).args(["run", "gret", "--set", "who=x"]).assert().code(2).stderr(predicate::str::contains("did you mean `greet`"));
    // `graph` takes a name too.
    tw(dir.path()).args(["graph", "greet"]).assert().success().stdout(predicate::str::contains("flowchart"));
    tw(dir.path()).args(["graph", "gret"]).assert().code(2).stderr(predicate::str::contains("did you mean `greet`"));
}

#[cfg(unix)]
fn wait_for(path: &Path) -> String {
    let what = format!("{} to appear", path.display());
    eventually_blocking(&what, Duration::from_secs(10), Duration::from_millis(25), || {
        std::fs::read_to_string(path).ok().map(|s| s.trim().to_string()).filter(|s| !s.is_empty())
    })
}

#[cfg(unix)]
#[test]
fn ctrl_c_cancels_the_run_and_leaves_no_process_behind() {
    let dir = tempfile::tempdir().unwrap();
    let pidfile = dir.path().join("pid");
    write(
        dir.path(),
        "long.yaml",
        &format!("version: 1\nname: long\ntasks:\n  - {{name: wait, shell: 'sleep 100 & echo $! > {}; wait'}}\n", pidfile.display()),
    );
    let bin = assert_cmd::cargo::cargo_bin("taskweave");
    let child = std::process::Command::new(bin)
        .current_dir(dir.path())
        .args(["run", "long.yaml", "--format", "json"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let sleep_pid: i32 = wait_for(&pidfile).parse().unwrap();
    assert!(alive(sleep_pid));
    // SAFETY: sending SIGINT to our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", String::from_utf8_lossy(&out.stderr));
    let r: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(r["status"], "cancelled");
    assert_eq!(r["tasks"]["wait"]["status"], "cancelled");
    std::thread::sleep(Duration::from_millis(100));
    assert!(!alive(sleep_pid), "the task's background sleep survived");
    let id = r["run_id"].as_str().unwrap().to_string();
    tw(dir.path()).args(["runs", "show", &id]).assert().success().stdout(predicate::str::contains("cancelled"));
}

#[cfg(unix)]
#[test]
fn a_killed_run_is_recorded_as_interrupted_and_runs_cancel_reaches_a_live_one() {
    let dir = tempfile::tempdir().unwrap();
    let pidfile = dir.path().join("pid");
    write(
        dir.path(),
        "long.yaml",
        &format!("version: 1\nname: long\ntasks:\n  - {{name: wait, shell: 'echo $$ > {}; sleep 100'}}\n", pidfile.display()),
    );
    let bin = assert_cmd::cargo::cargo_bin("taskweave");
    // 1. SIGKILL the CLI mid-run: the next command records what happened.
    let mut child = std::process::Command::new(&bin)
        .current_dir(dir.path())
        .args(["run", "long.yaml"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let task_pid: i32 = wait_for(&pidfile).parse().unwrap();
    child.kill().unwrap();
    child.wait().unwrap();
    // The task's process group dies with the CLI that ran it.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !group_members(task_pid).is_empty() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let orphaned = !group_members(task_pid).is_empty();
    // SAFETY: cleaning up the task process group, should it have survived.
    unsafe { libc::killpg(task_pid, libc::SIGKILL) };
    assert!(!orphaned, "the task's processes outlived the killed CLI");
    let out = tw(dir.path()).args(["runs", "list", "--format", "json"]).output().unwrap();
    let runs: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(runs[0]["status"], "failed", "{runs}");
    let id = runs[0]["run_id"].as_str().unwrap().to_string();
    tw(dir.path()).args(["runs", "show", &id]).assert().success().stdout(predicate::str::contains("interrupted"));

    // 2. `runs cancel` from another process stops a live run.
    std::fs::remove_file(&pidfile).unwrap();
    let child = std::process::Command::new(&bin)
        .current_dir(dir.path())
        .args(["run", "long.yaml", "--format", "json"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    wait_for(&pidfile);
    let out = tw(dir.path()).args(["runs", "list", "--status", "running", "--format", "json"]).output().unwrap();
    let runs: Value = serde_json::from_slice(&out.stdout).unwrap();
    let live = runs[0]["run_id"].as_str().expect("a running run").to_string();
    tw(dir.path()).args(["runs", "cancel", &live]).assert().success().stdout(predicate::str::contains("cancel requested"));
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let r: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(r["status"], "cancelled");
}

#[test]
fn runs_cancel_of_a_finished_run_says_so_and_fails() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "greet.yaml", GREET);
    let out = tw(dir.path()).args(["run", "greet.yaml", "--set", "who=ada", "--format", "json"]).output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let id = serde_json::from_slice::<Value>(&out.stdout).unwrap()["run_id"].as_str().unwrap().to_string();
    tw(dir.path())
        .args(["runs", "cancel", &id])
        .assert()
        .code(1)
        .stdout(predicate::str::is_empty())
        .stderr(predicate::str::contains(format!("run {id} has already finished (succeeded); nothing to cancel")));
    tw(dir.path()).args(["runs", "cancel", "0000-no-such-run"]).assert().code(1).stderr(predicate::str::contains("no run"));
}

#[test]
fn celery_tasks_are_refused_on_the_local_backend() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "c.yaml", "version: 1\nname: c\ntasks:\n  - {name: add, celery: {task: tasks.add, args: [1, 2]}}\n");
    tw(dir.path()).args(["run", "c.yaml"]).assert().code(2).stderr(predicate::str::contains("needs a backend of kind `celery`"));
}

#[test]
fn with_a_configuration_celery_tasks_on_another_backend_are_refused_before_the_run() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "taskweave.toml", "[backends.legacy]\nkind = \"local\"\n");
    write(dir.path(), "c.yaml", "version: 1\nname: c\ntasks:\n  - {name: add, celery: {task: tasks.add, args: [1, 2]}}\n");
    for args in [&["run", "c.yaml"][..], &["run", "c.yaml", "--backend", "legacy"][..]] {
        let backend =
            if args.len() == 2 { "the default backend `local` (kind `local`)" } else { "the default backend `legacy` (kind `local`)" };
        tw(dir.path())
            .args(args)
            .assert()
            .code(2)
            .stderr(predicate::str::contains(format!(
                "error[backend-action]: task `add` is a `celery:` task, but the workflow runs on {backend}, which cannot run it"
            )))
            .stderr(predicate::str::contains("c.yaml:4:17"))
            .stderr(predicate::str::contains("error: c.yaml is not a valid workflow"));
    }
}

const GUARDED: &str = r#"
version: 1
name: guarded
tasks:
  - {name: small, uses: extract-text, with: {path: a.txt}}
  - {name: large, uses: extract-text, with: {path: b.txt}}
  - {name: call, http: {url: "http://127.0.0.1:1/"}}
"#;

#[test]
fn action_limits_come_from_taskweave_toml_and_the_environment() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "taskweave.toml", "[actions.extract_text]\nroot = \"docs\"\nmax_bytes = \"8B\"\n");
    std::fs::create_dir(dir.path().join("docs")).unwrap();
    write(&dir.path().join("docs"), "a.txt", "hi");
    write(&dir.path().join("docs"), "b.txt", "0123456789");
    write(dir.path(), "guarded.yaml", GUARDED);
    let out = tw(dir.path()).args(["run", "guarded.yaml", "--format", "json"]).env("TASKWEAVE_HTTP_DENY_PRIVATE", "1").output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", String::from_utf8_lossy(&out.stderr));
    let r: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(r["tasks"]["small"]["output"]["text"], "hi");
    let error = |t: &str| r["tasks"][t]["error"].as_str().unwrap_or_default().to_string();
    assert!(error("large").contains("larger than the limit of 8 bytes"), "{r:#}");
    assert!(error("call").contains("127.0.0.1 is in a denied range (loopback)"), "{r:#}");
}

#[test]
fn extract_text_does_not_read_from_the_filesystem_root_by_default() {
    // A service started in `/` (an init system's default) has no default root.
    let dir = tempfile::tempdir().unwrap();
    let wf =
        write(dir.path(), "read.yaml", "version: 1\nname: read\ntasks:\n  - {name: r, uses: extract-text, with: {path: etc/hostname}}\n");
    let out =
        tw(Path::new("/")).env("TASKWEAVE_STORE", "sqlite::memory:").args(["run"]).arg(&wf).args(["--format", "json"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", String::from_utf8_lossy(&out.stderr));
    let r: Value = serde_json::from_slice(&out.stdout).unwrap();
    let error = r["tasks"]["r"]["error"].as_str().unwrap_or_default();
    assert!(error.contains("the working directory is `/`") && error.contains("[actions.extract_text] root"), "{r:#}");
}

#[test]
fn the_embedding_example_runs_document_processing() {
    // `cargo test` builds the examples next to the test binaries.
    let exe = std::env::current_exe().unwrap();
    let examples = exe.parent().unwrap().parent().unwrap().join("examples").join("embed");
    if !examples.exists() {
        panic!("{} was not built", examples.display());
    }
    let out = std::process::Command::new(&examples).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains(": succeeded"), "{stdout}");
    assert!(stdout.contains("Quarterly report."), "the custom llm handler summarised the sample text: {stdout}");
    assert!(stdout.contains("\"extraction_method\":\"plain\""), "{stdout}");
}

/// Logs follow `TASKWEAVE_LOG`, else `RUST_LOG`.
#[test]
fn logs_honour_rust_log_and_taskweave_log_first() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "s.yaml", "version: 1\nname: s\ntasks:\n  - {name: say, run: [echo, hi]}\n");
    let stderr = |envs: &[(&str, &str)]| {
        let mut c = tw(dir.path());
        c.env_remove("TASKWEAVE_LOG").env_remove("RUST_LOG").args(["run", "s.yaml"]);
        for (k, v) in envs {
            c.env(k, v);
        }
        let out = c.output().unwrap();
        assert!(out.status.success());
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    assert!(stderr(&[("RUST_LOG", "debug")]).contains("process started"));
    assert!(!stderr(&[]).contains("process started"));
    assert!(!stderr(&[("RUST_LOG", "debug"), ("TASKWEAVE_LOG", "warn")]).contains("process started"));
}

/// With stdout and stderr in one log that is not a terminal (`2>&1` in CI),
/// each task's line appears once.
#[test]
fn one_log_gets_each_task_line_once() {
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "s.yaml",
        "version: 1\nname: s\ntasks:\n  - {name: say-hi, run: [echo, hi]}\n  - {name: fails, parents: [say-hi], run: [\"false\"]}\n",
    );
    let log = dir.path().join("log");
    let file = std::fs::File::create(&log).unwrap();
    let status = std::process::Command::new(assert_cmd::cargo::cargo_bin("taskweave"))
        .current_dir(dir.path())
        .args(["run", "s.yaml"])
        .stdout(file.try_clone().unwrap())
        .stderr(file)
        .status()
        .unwrap();
    assert_eq!(status.code(), Some(1));
    let text = std::fs::read_to_string(&log).unwrap();
    for task in ["say-hi", "fails"] {
        let lines = text.lines().filter(|l| l.split_whitespace().nth(1) == Some(task)).count();
        assert_eq!(lines, 1, "{task}:\n{text}");
    }
    // Two separate streams each keep their lines.
    let out = tw(dir.path()).args(["run", "s.yaml"]).output().unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("say-hi") && stderr.contains("say-hi"), "{stdout}\n{stderr}");
}

#[test]
fn looking_at_history_creates_no_store() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join(".taskweave");
    tw(dir.path()).args(["runs", "list"]).assert().success().stdout(predicate::str::contains("no run history at .taskweave/state.db yet"));
    tw(dir.path()).args(["runs"]).assert().success();
    tw(dir.path()).args(["runs", "list", "--format", "json"]).assert().success().stdout(predicate::str::diff("[]\n"));
    tw(dir.path())
        .args(["runs", "show", "0193"])
        .assert()
        .code(1)
        .stderr(predicate::str::contains("no run `0193` (no run history at .taskweave/state.db yet)"));
    tw(dir.path()).args(["runs", "cancel", "0193"]).assert().code(1);
    tw(dir.path()).args(["migration", "status"]).assert().success().stdout(predicate::str::contains("0 run(s)"));
    tw(dir.path()).args(["doctor"]).assert().stdout(predicate::str::contains("no run history at sqlite://.taskweave/state.db yet"));
    assert!(!store.exists(), "a read-only command created {}", store.display());

    // Once a run has recorded history, the same commands read it.
    write(dir.path(), "greet.yaml", GREET);
    tw(dir.path()).args(["run", "greet.yaml", "--set", "who=x"]).assert().success();
    assert!(store.join("state.db").exists());
    tw(dir.path()).args(["runs", "list"]).assert().success().stdout(predicate::str::contains("greet"));
}

/// `TASKWEAVE_LOG=debug taskweave run … 2>&1 | head -3`: once the reader
/// has gone, the command ends promptly instead of hanging on a log line that
/// can no longer be written.
#[test]
fn a_closed_output_pipe_ends_the_command() {
    use std::io::BufRead;
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "s.yaml", "version: 1\nname: s\ntasks:\n  - {name: a, run: [echo, hi]}\n  - {name: b, parents: [a], uses: echo}\n");
    for _ in 0..20 {
        let mut child = std::process::Command::new(assert_cmd::cargo::cargo_bin("taskweave"))
            .current_dir(dir.path())
            .args(["run", "s.yaml"])
            .env("TASKWEAVE_LOG", "debug")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut first = String::new();
        std::io::BufReader::new(child.stderr.take().unwrap()).read_line(&mut first).unwrap();
        // The reader is gone: the pipe is closed.
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        let status = loop {
            if let Some(s) = child.try_wait().unwrap() {
                break Some(s);
            }
            if std::time::Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        assert!(status.is_some(), "the command hung after its stderr was closed (first line: {first:?})");
    }
}

/// The README's `workflows/report.yaml` with its mistake fixed (`parents:
/// [fetch]`), and `fetch` reading a file instead of the network.
const REPORT: &str = r#"# yaml-language-server: $schema=../schemas/workflow.schema.json
version: 1
name: report
timeout: 10m
tasks:
  - name: fetch
    run: [cat, data.json]
    output: json
  - name: summarise
    parents: [fetch]
    uses: llm
    with: {prompt: "Summarise: {{tasks.fetch.output}}"}
"#;

/// The README's report workflow runs end to end on the local backend, and
/// the LLM is sent the fetched JSON as compact JSON inside the prompt, never
/// `[[object], [object]]`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readme_report_sends_the_fetched_json_to_the_llm() {
    use wiremock::matchers::{method, path};
    use wiremock::{Mock, MockServer, ResponseTemplate};
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/v1/chat/completions"))
        .respond_with(ResponseTemplate::new(200).set_body_json(serde_json::json!({
            "model": "gpt-test",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "Two files."}}],
            "usage": {"total_tokens": 9},
        })))
        .expect(1)
        .mount(&server)
        .await;
    let dir = tempfile::tempdir().unwrap();
    let data = r#"[{"id": 1, "name": "a b.txt"}, {"id": 2, "name": "c'd.txt", "tags": []}]"#;
    write(dir.path(), "data.json", data);
    write(dir.path(), "report.yaml", REPORT);
    let mut cmd = tw(dir.path());
    cmd.args(["run", "report.yaml", "--format", "json"])
        .env("TASKWEAVE_LLM_BASE_URL", format!("{}/v1", server.uri()))
        .env_remove("TASKWEAVE_LLM_API_KEY")
        .env_remove("OPENAI_API_KEY")
        .env_remove("OPENAI_BASE_URL");
    let out = tokio::task::spawn_blocking(move || cmd.output().unwrap()).await.unwrap();
    assert_eq!(out.status.code(), Some(0), "{}\n{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    let r: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(r["tasks"]["summarise"]["output"]["response"], "Two files.");

    let requests = server.received_requests().await.expect("recorded");
    let body: Value = serde_json::from_slice(&requests[0].body).unwrap();
    let prompt = body["messages"][0]["content"].as_str().expect("a prompt");
    assert!(!prompt.contains("[object]"), "{prompt}");
    let compact = serde_json::to_string(&serde_json::from_str::<Value>(data).unwrap()).unwrap();
    assert_eq!(prompt, format!("Summarise: {compact}"));
    assert_eq!(prompt, r#"Summarise: [{"id":1,"name":"a b.txt"},{"id":2,"name":"c'd.txt","tags":[]}]"#);
}

#[test]
fn the_two_sources_example_merges_alerts_and_cleans_up_by_trigger() {
    // The shipped example as it is, then with its primary source failing.
    let dir = tempfile::tempdir().unwrap();
    let example = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("workflows/two-sources.yaml")).unwrap();
    let run = |text: &str, code: i32| -> Value {
        let wf = write(dir.path(), "two-sources.yaml", text);
        let out = tw(dir.path()).env("TASKWEAVE_STORE", "sqlite::memory:").arg("run").arg(&wf).args(["--format", "json"]).output().unwrap();
        assert_eq!(out.status.code(), Some(code), "{}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice(&out.stdout).unwrap()
    };
    let r = run(&example, 0);
    assert_eq!(r["status"], "succeeded");
    assert_eq!(r["tasks"]["alert"]["status"], "skipped");
    assert_eq!(r["tasks"]["alert"]["skip_reason"], "no parent failed");
    assert_eq!(r["tasks"]["merge"]["output"], serde_json::json!({"primary": "3", "replica": "3"}));
    assert_eq!(r["tasks"]["cleanup"]["status"], "succeeded");

    let failing =
        example.replace("    uses: echo\n    with: {rows: 3, source: primary}", "    uses: fail\n    with: {message: primary is down}");
    assert_ne!(failing, example, "the example's primary task changed shape");
    let r = run(&failing, 1);
    assert_eq!(r["status"], "failed");
    assert_eq!(r["tasks"]["primary"]["status"], "failed");
    assert_eq!(r["tasks"]["merge"]["output"], serde_json::json!({"primary": "0", "replica": "3"}));
    assert_eq!(r["tasks"]["alert"]["status"], "succeeded");
    assert_eq!(r["tasks"]["cleanup"]["status"], "succeeded");
}

#[test]
fn the_review_pipeline_example_skips_by_condition_joins_and_runs_its_handlers() {
    let dir = tempfile::tempdir().unwrap();
    let example = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("workflows/review-pipeline.yaml")).unwrap();
    let run = |text: &str, input: &str, code: i32| -> Value {
        let wf = write(dir.path(), "review-pipeline.yaml", text);
        let out = tw(dir.path())
            .env("TASKWEAVE_STORE", "sqlite::memory:")
            .arg("run")
            .arg(&wf)
            .args(["--input", input, "--format", "json"])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(code), "{}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice(&out.stdout).unwrap()
    };
    // The defaults: pages to summarise, no OCR.
    let r = run(&example, "{}", 0);
    assert_eq!(r["status"], "succeeded");
    assert_eq!(r["tasks"]["summarise"]["output"], serde_json::json!({"summary": "2 pages"}));
    assert_eq!(r["tasks"]["ocr"]["skip_reason"], r#"condition false: tasks["extract-text"].output.text == """#);
    assert_eq!(r["tasks"]["store"]["output"], serde_json::json!({"summary": "2 pages", "ocr": ""}));
    assert_eq!(r["output"], serde_json::json!({"stored": {"summary": "2 pages", "ocr": ""}, "pages": ["page one", "page two"]}));
    assert_eq!(r["tasks"]["alert"]["status"], "skipped");
    assert_eq!(r["tasks"]["cleanup"]["output"]["status"], "succeeded");

    // An empty document: no summary, the OCR branch, the join still stores.
    let r = run(&example, r#"{"text": "", "pages": []}"#, 0);
    assert_eq!(r["status"], "succeeded");
    assert_eq!(r["tasks"]["summarise"]["skip_reason"], "condition false: size(tasks.split.output.pages) > 0");
    assert_eq!(r["tasks"]["summarise"]["attempts"], 0);
    assert_eq!(r["tasks"]["store"]["output"], serde_json::json!({"summary": "", "ocr": "text recognised from the scan"}));

    // A failing split: the alert names it, cleanup still runs.
    let failing =
        example.replace("    uses: echo\n    with: {pages: \"{{input.pages}}\"}", "    uses: fail\n    with: {message: no pages}");
    assert_ne!(failing, example, "the example's split task changed shape");
    let r = run(&failing, "{}", 1);
    assert_eq!(r["status"], "failed");
    assert_eq!(r["tasks"]["alert"]["output"]["failed"][0]["name"], "split");
    assert_eq!(r["tasks"]["cleanup"]["output"]["status"], "failed");
    assert_eq!(r.get("output"), None, "a failed run has no output");
}

#[test]
fn an_idempotency_key_starts_one_run() {
    let dir = tempfile::tempdir().unwrap();
    let wf =
        write(dir.path(), "greet.yaml", "version: 1\nname: greet\ntasks:\n  - {name: a, uses: echo, with: {who: \"{{input.who}}\"}}\n");
    let store = format!("sqlite://{}", dir.path().join("state.db").display());
    let run = |who: &str| {
        tw(dir.path())
            .env("TASKWEAVE_STORE", &store)
            .arg("run")
            .arg(&wf)
            .args(["--idempotency-key", "nightly-2026-12-08", "--set", &format!("who={who}"), "--format", "json"])
            .output()
            .unwrap()
    };
    let first = run("ada");
    assert_eq!(first.status.code(), Some(0), "{}", String::from_utf8_lossy(&first.stderr));
    let first: Value = serde_json::from_slice(&first.stdout).unwrap();
    // A second process with the same key and input follows the first run.
    let again = run("ada");
    assert_eq!(again.status.code(), Some(0), "{}", String::from_utf8_lossy(&again.stderr));
    let again: Value = serde_json::from_slice(&again.stdout).unwrap();
    assert_eq!(again["run_id"], first["run_id"]);
    assert_eq!(again["tasks"]["a"]["output"], serde_json::json!({"who": "ada"}));
    // Other input under the key: refused, naming the run.
    let other = run("bob");
    assert_eq!(other.status.code(), Some(2));
    let err = String::from_utf8_lossy(&other.stderr);
    assert!(err.contains("nightly-2026-12-08") && err.contains(first["run_id"].as_str().unwrap()), "{err}");
}

#[test]
fn runs_retry_reuses_what_succeeded_with_the_pinned_definition() {
    let dir = tempfile::tempdir().unwrap();
    let work = dir.path().join("work");
    std::fs::create_dir(&work).unwrap();
    let flow = "version: 1\nname: flaky\ntasks:\n\
        \x20 - {name: fetch, shell: 'echo fetched >> {{input.dir}}/fetch.log; echo 41', output: json}\n\
        \x20 - {name: process, parents: [fetch], shell: 'test -e {{input.dir}}/go && echo 1'}\n\
        \x20 - {name: store, parents: [process], uses: echo, with: {v: \"{{tasks.fetch.output}}\"}}\n";
    let wf = write(dir.path(), "flaky.yaml", flow);
    let input = format!("dir={}", work.display());
    let out = tw(dir.path()).arg("run").arg(&wf).args(["--set", &input, "--format", "json"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", String::from_utf8_lossy(&out.stderr));
    let failed: Value = serde_json::from_slice(&out.stdout).unwrap();
    let failed_id = failed["run_id"].as_str().unwrap().to_string();
    assert_eq!(failed["tasks"]["process"]["status"], "failed");
    // The file changes after the run: the retry runs the pinned definition.
    std::fs::write(&wf, flow.replace("with: {v:", "with: {changed:")).unwrap();
    std::fs::write(work.join("go"), "").unwrap();

    let out = tw(dir.path()).args(["runs", "retry", &failed_id, "--format", "json"]).output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let r: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(r["status"], "succeeded", "{r}");
    assert_eq!(r["retry_of"], failed_id.as_str());
    assert_eq!(r["tasks"]["fetch"]["attempts"], 0, "reused: {r}");
    assert_eq!(r["tasks"]["store"]["output"], serde_json::json!({"v": 41}), "{r}");
    assert_eq!(std::fs::read_to_string(work.join("fetch.log")).unwrap(), "fetched\n", "fetch did not run again");

    // A succeeded run retried from a task: that task and what is below it run again.
    let retried = r["run_id"].as_str().unwrap().to_string();
    let out = tw(dir.path()).args(["runs", "retry", &retried, "--from", "fetch", "--format", "json"]).output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(std::fs::read_to_string(work.join("fetch.log")).unwrap(), "fetched\nfetched\n");
    // Refused, with the reason: a succeeded run without `--from`, an unknown task.
    let out = tw(dir.path()).args(["runs", "retry", &retried]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("it succeeded"), "{}", String::from_utf8_lossy(&out.stderr));
    let out = tw(dir.path()).args(["runs", "retry", &failed_id, "--from", "fech"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("did you mean `fetch`?"), "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn tasks_get_a_minimal_environment_unless_inheriting_is_asked() {
    let dir = tempfile::tempdir().unwrap();
    let wf = write(
        dir.path(),
        "env.yaml",
        "version: 1\nname: env\nenv: {FROM_WORKFLOW: w}\ntasks:\n  - {name: show, run: [env], env: {FROM_TASK: t}}\n  - {name: script, shell: 'echo \"token=${ENGINE_TOKEN:-unset}\"'}\n",
    );
    let run = |inherit: Option<&str>| -> Value {
        let mut cmd = tw(dir.path());
        cmd.env("TASKWEAVE_STORE", "sqlite::memory:").env("ENGINE_TOKEN", "hunter2-secret");
        if let Some(v) = inherit {
            cmd.env("TASKWEAVE_INHERIT_ENV", v);
        }
        let out = cmd.arg("run").arg(&wf).args(["--format", "json"]).output().unwrap();
        assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice(&out.stdout).unwrap()
    };
    let r = run(None);
    let env = r["tasks"]["show"]["output"].as_str().unwrap().to_string();
    assert!(!env.contains("hunter2-secret"), "the engine's environment reached the task: {env}");
    for kept in ["PATH=", "FROM_WORKFLOW=w", "FROM_TASK=t", "TASKWEAVE_RUN_ID="] {
        assert!(env.contains(kept), "{kept} missing: {env}");
    }
    assert_eq!(r["tasks"]["script"]["output"], "token=unset");
    let r = run(Some("true"));
    assert!(r["tasks"]["show"]["output"].as_str().unwrap().contains("ENGINE_TOKEN=hunter2-secret"));
    assert_eq!(r["tasks"]["script"]["output"], "token=hunter2-secret");
}

#[test]
fn a_secret_never_reaches_the_store_or_the_output() {
    let dir = tempfile::tempdir().unwrap();
    let wf = write(
        dir.path(),
        "secret.yaml",
        "version: 1\nname: secret\nsecrets:\n  api_key: {env: MY_API_KEY}\ntasks:\n  - {name: call, shell: 'echo \"calling with {{secrets.api_key}}\"'}\n  - {name: oops, parents: [call], shell: 'echo \"leak {{secrets.api_key}}\" >&2; exit 1'}\n",
    );
    let db = dir.path().join("state.db");
    let out = tw(dir.path())
        .env("TASKWEAVE_STORE", format!("sqlite://{}", db.display()))
        .env("MY_API_KEY", "key-0123456789abcdef")
        .arg("run")
        .arg(&wf)
        .args(["--format", "json"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", String::from_utf8_lossy(&out.stderr));
    let r: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(r["tasks"]["call"]["output"], "calling with ***");
    assert!(r["tasks"]["oops"]["error"].as_str().unwrap().contains("leak ***"), "{r}");
    for (what, bytes) in [("stdout", out.stdout.clone()), ("stderr", out.stderr.clone())] {
        assert!(!String::from_utf8_lossy(&bytes).contains("key-0123456789abcdef"), "the secret is in {what}");
    }
    // Nor in the store's files, nor in `runs show`.
    for entry in std::fs::read_dir(dir.path()).unwrap().flatten() {
        if entry.file_name().to_string_lossy().starts_with("state.db") {
            let bytes = std::fs::read(entry.path()).unwrap();
            assert!(!bytes.windows(20).any(|w| w == b"key-0123456789abcdef"), "the secret is in {:?}", entry.path());
        }
    }
    let id = r["run_id"].as_str().unwrap();
    let show = tw(dir.path()).env("TASKWEAVE_STORE", format!("sqlite://{}", db.display())).args(["runs", "show", id]).output().unwrap();
    assert!(!String::from_utf8_lossy(&show.stdout).contains("key-0123456789abcdef"));
    // Without the variable the task fails, naming what is missing.
    let out = tw(dir.path()).env("TASKWEAVE_STORE", "sqlite::memory:").arg("run").arg(&wf).args(["--format", "json"]).output().unwrap();
    let r: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(r["tasks"]["call"]["error"].as_str().unwrap().contains("`MY_API_KEY` is not set"), "{r}");
}
