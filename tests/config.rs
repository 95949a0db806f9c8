//! The configuration contract: `taskweave config` shows every key's value
//! and source (default, file, environment) with secrets masked;
//! `docs/configuration.md` is generated from the loader's own key table;
//! `[handlers.llm]` reaches the `llm` handler from the file and the
//! environment; `doctor` checks it; and a request that outlives its limit
//! says so next to the task's timeout. The `llm` service is a local TCP
//! server on 127.0.0.1.

use assert_cmd::Command;
use serde_json::Value;
use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Duration;

/// The binary in `dir`, with an environment of only what the test gives it.
fn tw(dir: &Path) -> Command {
    let mut c = Command::cargo_bin("taskweave").expect("binary");
    c.current_dir(dir).env_clear().env("NO_COLOR", "1");
    c
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

fn stdout(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The line of `taskweave config` that shows `key`.
fn line<'a>(text: &'a str, key: &str) -> &'a str {
    text.lines().find(|l| l.split_whitespace().next() == Some(key)).unwrap_or_else(|| panic!("no line for {key} in\n{text}"))
}

const FILE: &str = r#"
[engine]
store = "postgres://tw:hunter2@127.0.0.1:5432/tw?sslmode=disable"

[backends.pg]
kind = "postgres"
url = "postgres://tw:hunter2@127.0.0.1:5432/tw"
lease = "45s"

[handlers.llm]
base_url = "https://llm.example.com/v1"
model = "model-from-file"
timeout = "45s"
"#;

#[test]
fn config_shows_each_value_with_its_source_and_masks_secrets() {
    let dir = tempfile::tempdir().unwrap();
    let file = write(dir.path(), "taskweave.toml", FILE);
    let out = tw(dir.path())
        .env("TASKWEAVE_LLM_MODEL", "model-from-env")
        .env("TASKWEAVE_LEASE", "1m")
        .env("OPENAI_BASE_URL", "http://127.0.0.1:1/v1") // the file's base_url wins over this stand-in
        .env("OPENAI_API_KEY", "sk-very-secret")
        .env("DATABASE_URL", "postgres://x:also-secret@h/db") // the file's url wins
        .arg("config")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let text = stdout(&out);
    assert!(text.starts_with("# configuration file: taskweave.toml (found in the working folder)"), "{text}");
    let from_file = "# file taskweave.toml";
    assert!(line(&text, "engine.store").ends_with(from_file), "{text}");
    assert!(line(&text, "engine.store").contains("postgres://tw:***@127.0.0.1:5432/tw"), "{text}");
    assert!(line(&text, "handlers.llm.base_url").contains("\"https://llm.example.com/v1\""), "{text}");
    assert!(line(&text, "handlers.llm.base_url").ends_with(from_file), "{text}");
    assert!(line(&text, "handlers.llm.timeout").contains("\"45s\""), "{text}");
    // The environment overrides the file.
    assert!(line(&text, "handlers.llm.model").contains("\"model-from-env\""), "{text}");
    assert!(line(&text, "handlers.llm.model").ends_with("# env TASKWEAVE_LLM_MODEL"), "{text}");
    assert!(line(&text, "instance.lease").contains("\"1m\"") && line(&text, "instance.lease").ends_with("# env TASKWEAVE_LEASE"), "{text}");
    // Defaults.
    assert!(line(&text, "engine.default_backend").contains("\"local\"") && line(&text, "engine.default_backend").ends_with("# default"));
    assert!(line(&text, "instance.heartbeat").contains("\"5s\"") && line(&text, "instance.heartbeat").ends_with("# default"));
    assert!(line(&text, "serve.max_connections").contains("1024"), "{text}");
    // Backends: the file's keys, the driver's defaults.
    assert!(line(&text, "backends.pg.lease").contains("\"45s\"") && line(&text, "backends.pg.lease").ends_with(from_file), "{text}");
    assert!(line(&text, "backends.pg.url").contains("postgres://tw:***@127.0.0.1:5432/tw"), "{text}");
    assert!(line(&text, "backends.pg.poll").contains("\"1s\"") && line(&text, "backends.pg.poll").ends_with("# default"), "{text}");
    assert!(line(&text, "backends.local.kind").ends_with("# default"), "{text}");
    // The key: where it is, never what it is.
    assert!(
        line(&text, "handlers.llm.api_key").contains("\"***\"") && line(&text, "handlers.llm.api_key").ends_with("# env OPENAI_API_KEY")
    );
    for secret in ["hunter2", "sk-very-secret", "also-secret"] {
        assert!(!text.contains(secret), "{secret} shown:\n{text}");
    }
    // Every documented key of the file is listed.
    for k in taskweave::config::keys::KEYS.iter().filter(|k| k.backend.is_none()) {
        line(&text, k.path);
    }

    // --config names the file; without a key anywhere, the key is unset.
    let elsewhere = tempfile::tempdir().unwrap();
    let out = tw(elsewhere.path()).arg("--config").arg(&file).arg("config").output().unwrap();
    let text = stdout(&out);
    assert!(text.starts_with(&format!("# configuration file: {} (flag --config)", file.display())), "{text}");
    assert!(line(&text, "handlers.llm.api_key").contains("(unset)") && line(&text, "handlers.llm.api_key").ends_with("# default"));
    assert!(line(&text, "handlers.llm.model").ends_with(&format!("# file {}", file.display())), "{text}");
}

#[test]
fn config_as_json() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "taskweave.toml", FILE);
    let out = tw(dir.path())
        .env("TASKWEAVE_STORE", "postgres://u:pw-in-env@127.0.0.1/db")
        .env("MY_LLM_KEY", "k-123")
        .env("TASKWEAVE_LLM_API_KEY_ENV", "MY_LLM_KEY")
        .env("TASKWEAVE_BACKEND_PG_POLL", "250ms")
        .args(["config", "--format", "json"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let text = stdout(&out);
    assert!(!text.contains("pw-in-env") && !text.contains("k-123") && !text.contains("hunter2"), "{text}");
    let doc: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(doc["file"], "taskweave.toml");
    assert_eq!(doc["file_from"], "found in the working folder");
    let key = |k: &str| doc["keys"].as_array().unwrap().iter().find(|e| e["key"] == k).cloned().unwrap_or_else(|| panic!("no {k}"));
    let store = key("engine.store");
    assert_eq!(
        (store["value"].as_str(), store["source"].as_str(), store["from"].as_str()),
        (Some("postgres://u:***@127.0.0.1/db"), Some("env"), Some("TASKWEAVE_STORE"))
    );
    let model = key("handlers.llm.model");
    assert_eq!(
        (model["value"].as_str(), model["source"].as_str(), model["from"].as_str()),
        (Some("model-from-file"), Some("file"), Some("taskweave.toml"))
    );
    let backend = key("engine.default_backend");
    assert_eq!((backend["value"].as_str(), backend["source"].as_str()), (Some("local"), Some("default")));
    assert!(backend.get("from").is_none());
    assert_eq!(key("handlers.llm.api_key_env")["value"], "MY_LLM_KEY");
    assert_eq!(key("handlers.llm.api_key")["value"], "***");
    assert_eq!(key("handlers.llm.api_key")["from"], "MY_LLM_KEY");
    assert_eq!(key("serve.max_connections")["value"], 1024);
    assert_eq!(key("actions.http.deny_private")["value"], false);
    assert_eq!(key("backends.pg.crash_budget")["value"], 3);
    let poll = key("backends.pg.poll");
    assert_eq!((poll["value"].as_str(), poll["from"].as_str()), (Some("250ms"), Some("TASKWEAVE_BACKEND_PG_POLL")));
}

#[test]
fn an_api_key_in_the_file_is_refused_with_the_way_to_do_it() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "taskweave.toml", "[handlers.llm]\napi_key = \"sk-abc\"\n");
    let out = tw(dir.path()).arg("config").output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("taskweave.toml:2:1"), "{err}");
    assert!(err.contains("api_key_env"), "{err}");
    write(dir.path(), "taskweave.toml", "[handlers.llm]\nbase_url = \"ftp://h/v1\"\n");
    let out = tw(dir.path()).arg("doctor").output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not an http:// or https:// URL"));
}

// ------------------------------------------------------------------ docs

const BEGIN: &str = "<!-- BEGIN GENERATED: keys -->\n";
const END: &str = "<!-- END GENERATED: keys -->";

#[test]
fn the_reference_in_docs_is_generated_from_the_key_table() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/configuration.md");
    let text = std::fs::read_to_string(&path).unwrap();
    let (head, rest) = text.split_once(BEGIN).expect("the BEGIN marker");
    let (_, tail) = rest.split_once(END).expect("the END marker");
    let wanted = format!("{head}{BEGIN}{}{END}{tail}", taskweave::config::keys::reference_markdown());
    if std::env::var_os("UPDATE_DOCS").is_some() {
        std::fs::write(&path, &wanted).unwrap();
        return;
    }
    assert!(text == wanted, "docs/configuration.md is out of date; run `UPDATE_DOCS=1 cargo test --test config`");
    // Every variable the loader reads is documented.
    for k in taskweave::config::keys::KEYS {
        for v in k.env.iter().chain(&k.fallback_env) {
            assert!(text.contains(&format!("`{v}`")), "{v} undocumented");
        }
    }
}

// ------------------------------------------------------------------- llm

/// A one-shot chat-completions service on 127.0.0.1: answers the first
/// request with a completion and sends the request's text back.
fn answering_service() -> (String, mpsc::Receiver<String>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/v1", listener.local_addr().unwrap());
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let Ok((mut s, _)) = listener.accept() else { return };
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        // Headers, then the body by Content-Length.
        loop {
            let n = s.read(&mut chunk).unwrap_or(0);
            if n == 0 {
                break;
            }
            buf.extend_from_slice(&chunk[..n]);
            let text = String::from_utf8_lossy(&buf).to_string();
            if let Some((head, body)) = text.split_once("\r\n\r\n") {
                let len = head
                    .lines()
                    .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().parse::<usize>().unwrap_or(0)))
                    .unwrap_or(0);
                if body.len() >= len {
                    break;
                }
            }
        }
        let reply = r#"{"model":"served","choices":[{"message":{"content":"hi"}}],"usage":{"total_tokens":3}}"#;
        let _ = write!(
            s,
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{reply}",
            reply.len()
        );
        let _ = tx.send(String::from_utf8_lossy(&buf).into_owned());
    });
    (url, rx)
}

/// A service on 127.0.0.1 that accepts connections and never answers;
/// it lives as long as the returned listener.
fn silent_service() -> (String, TcpListener) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    (format!("http://{}/v1", listener.local_addr().unwrap()), listener)
}

fn llm_workflow(task_timeout: &str) -> String {
    format!("version: 1\nname: ask\ntasks:\n  - name: ask\n    uses: llm\n    timeout: {task_timeout}\n    with: {{prompt: \"say hi\"}}\n")
}

#[test]
fn llm_settings_from_the_file_and_the_environment_reach_the_handler() {
    let dir = tempfile::tempdir().unwrap();
    let (url, requests) = answering_service();
    // base_url and api_key_env from the file; the model from the environment.
    write(
        dir.path(),
        "taskweave.toml",
        &format!("[handlers.llm]\nbase_url = \"{url}\"\nmodel = \"file-model\"\napi_key_env = \"ASK_KEY\"\n"),
    );
    write(dir.path(), "ask.yaml", &llm_workflow("30s"));
    let out = tw(dir.path())
        .env("ASK_KEY", "k-from-ask-key")
        .env("TASKWEAVE_LLM_API_KEY", "k-not-this-one")
        .env("TASKWEAVE_LLM_MODEL", "env-model")
        .args(["run", "ask.yaml", "--format", "json"])
        .timeout(Duration::from_secs(60))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}\n{}", stdout(&out), String::from_utf8_lossy(&out.stderr));
    let r: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(r["tasks"]["ask"]["output"]["response"], "hi");
    let request = requests.recv_timeout(Duration::from_secs(10)).unwrap();
    assert!(request.starts_with("POST /v1/chat/completions "), "{request}");
    assert!(request.to_ascii_lowercase().contains("authorization: bearer k-from-ask-key"), "{request}");
    assert!(request.contains("\"model\":\"env-model\""), "{request}");
}

#[test]
fn a_request_that_outlives_its_limit_names_both_timeouts() {
    let dir = tempfile::tempdir().unwrap();
    let (url, _listener) = silent_service();
    write(dir.path(), "taskweave.toml", &format!("[handlers.llm]\nbase_url = \"{url}\"\ntimeout = \"1s\"\n"));
    write(dir.path(), "ask.yaml", &llm_workflow("30s"));
    let started = std::time::Instant::now();
    let out = tw(dir.path()).args(["run", "ask.yaml", "--format", "json"]).timeout(Duration::from_secs(60)).output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{}\n{}", stdout(&out), String::from_utf8_lossy(&out.stderr));
    assert!(started.elapsed() < Duration::from_secs(20), "the request limit, not the task's, ended it");
    let r: Value = serde_json::from_slice(&out.stdout).unwrap();
    let error = r["tasks"]["ask"]["error"].as_str().unwrap_or_default().to_string();
    assert!(
        error.contains(&format!(
            "llm: request to {url}/chat/completions timed out after 1s ([handlers.llm] timeout); the task's timeout is 30s"
        )),
        "{error}"
    );
    assert!(error.contains("raise `[handlers.llm] timeout`"), "{error}");
}

// ---------------------------------------------------------------- doctor

#[test]
fn doctor_checks_the_llm_settings_and_warns_about_longer_task_timeouts() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("workflows")).unwrap();
    write(
        dir.path(),
        "taskweave.toml",
        "[handlers.llm]\nbase_url = \"https://llm.example.com/v1\"\napi_key_env = \"ASK_KEY\"\ntimeout = \"1m\"\n",
    );
    write(&dir.path().join("workflows"), "ask.yaml", &llm_workflow("10m"));
    // llm tasks and no key: a failure, and the timeout warning.
    let out = tw(dir.path()).arg("doctor").output().unwrap();
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    let llm = line(&text, "FAIL");
    assert!(llm.contains("llm") && llm.contains("no API key for https://llm.example.com/v1: ASK_KEY"), "{text}");
    let warn = line(&text, "warn");
    assert!(warn.contains("workflow `ask`, task `ask`: its timeout 10m is longer than `[handlers.llm] timeout` 1m"), "{text}");
    // With the key: everything answers, with one warning.
    let out = tw(dir.path()).env("ASK_KEY", "k").arg("doctor").output().unwrap();
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(
        text.contains("model gpt-4o-mini at https://llm.example.com/v1, the key from ASK_KEY, requests time out after 1m; 1 llm task(s)"),
        "{text}"
    );
    assert!(text.trim_end().ends_with("everything answers, 1 warning(s)"), "{text}");
    assert!(!text.contains("\nFAIL"), "{text}");
    // A request limit as long as the task's: no warning.
    let out = tw(dir.path()).env("ASK_KEY", "k").env("TASKWEAVE_LLM_TIMEOUT", "10m").arg("doctor").output().unwrap();
    let text = stdout(&out);
    assert!(!text.contains("warn"), "{text}");
    assert!(text.trim_end().ends_with("everything answers"), "{text}");
}

#[test]
fn doctor_says_nothing_of_llm_when_nothing_uses_or_configures_it() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("workflows")).unwrap();
    write(&dir.path().join("workflows"), "hi.yaml", "version: 1\nname: hi\ntasks:\n  - {name: a, uses: echo, with: {x: 1}}\n");
    let out = tw(dir.path()).arg("doctor").output().unwrap();
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(!text.contains("llm"), "{text}");
}
