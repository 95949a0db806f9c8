//! End-to-end tests of `taskweave run` and `taskweave runs` on the real
//! binary, each in its own temp folder (its own SQLite store).

use assert_cmd::Command;
use predicates::prelude::*;
use serde_json::Value;
use std::path::Path;
use std::time::Duration;

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
}

#[cfg(unix)]
fn wait_for(path: &Path) -> String {
    for _ in 0..400 {
        if let Ok(s) = std::fs::read_to_string(path)
            && !s.trim().is_empty()
        {
            return s.trim().to_string();
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    panic!("{} never appeared", path.display());
}

#[cfg(unix)]
fn alive(pid: i32) -> bool {
    // SAFETY: signal 0 only checks that the process exists.
    unsafe { libc::kill(pid, 0) == 0 }
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
    // SAFETY: cleaning up the orphaned task process group we started.
    unsafe { libc::killpg(task_pid, libc::SIGKILL) };
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
fn celery_tasks_are_refused_on_the_local_backend() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "c.yaml", "version: 1\nname: c\ntasks:\n  - {name: add, celery: {task: tasks.add, args: [1, 2]}}\n");
    tw(dir.path()).args(["run", "c.yaml"]).assert().code(2).stderr(predicate::str::contains("needs a backend of kind `celery`"));
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
