//! A real `taskweave serve` process on a temp folder: live reload as an
//! operator sees it, through the HTTP API.

use serde_json::{Value, json};
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

struct Server {
    child: Child,
    base: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start(dir: &Path, extra: &[&str]) -> Server {
    let mut child = Command::new(assert_cmd::cargo::cargo_bin("taskweave"))
        .current_dir(dir)
        .args(["serve", "--bind", "127.0.0.1:0", "--grace", "5s"])
        .args(extra)
        .env_remove("TASKWEAVE_TOKEN")
        .env_remove("TASK_QUEUE_BACKEND")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn serve");
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(rest) = line.split("serving http://").nth(1) {
                let addr = rest.split_whitespace().next().unwrap_or_default().to_string();
                let _ = tx.send(addr);
            }
        }
    });
    let addr = rx.recv_timeout(Duration::from_secs(60)).expect("serve did not start");
    Server { child, base: format!("http://{addr}") }
}

async fn get(c: &reqwest::Client, url: String) -> (u16, Value) {
    let r = c.get(url).send().await.expect("request");
    let code = r.status().as_u16();
    (code, r.json().await.unwrap_or(Value::Null))
}

async fn post(c: &reqwest::Client, url: String, body: Value) -> (u16, Value) {
    let r = c.post(url).json(&body).send().await.expect("request");
    let code = r.status().as_u16();
    (code, r.json().await.unwrap_or(Value::Null))
}

/// Poll until `f` holds (reload is asynchronous); panics after 20 s.
async fn eventually<F, Fut>(what: &str, mut f: F) -> Value
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<Value>>,
{
    let start = Instant::now();
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(start.elapsed() < Duration::from_secs(20), "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn flow(mark: u32) -> String {
    format!(
        "version: 1\nname: slow\ntasks:\n  - {{name: nap, uses: sleep, with: {{duration: \"{{{{input.d}}}}\"}}}}\n  - {{name: mark, parents: [nap], uses: echo, with: {{v: {mark}}}}}\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_reload_through_the_api() {
    let dir = tempfile::tempdir().unwrap();
    let flows = dir.path().join("flows");
    std::fs::create_dir(&flows).unwrap();
    std::fs::write(dir.path().join("taskweave.toml"), "[engine]\nworkflows = [\"flows\"]\nstore = \"sqlite://state.db\"\n").unwrap();
    let file = flows.join("slow.yaml");
    std::fs::write(&file, flow(1)).unwrap();
    let server = start(dir.path(), &[]);
    let c = reqwest::Client::new();
    let base = server.base.clone();

    // v1 serves; a slow run starts on it.
    let (code, wf) = get(&c, format!("{base}/v1/workflows/slow")).await;
    assert_eq!(code, 200, "{wf}");
    let v1 = wf["version"].as_str().unwrap().to_string();
    let (code, accepted) = post(&c, format!("{base}/v1/workflows/slow/runs"), json!({"input": {"d": "1500ms"}})).await;
    assert_eq!(code, 202, "{accepted}");
    let in_flight = accepted["run_id"].as_str().unwrap().to_string();

    // Edit: new runs use v2 while the in-flight run finishes on v1.
    std::fs::write(&file, flow(2)).unwrap();
    let v2 = eventually("v2 to serve", || {
        let (c, base, v1) = (c.clone(), base.clone(), v1.clone());
        async move {
            let (_, wf) = get(&c, format!("{base}/v1/workflows/slow")).await;
            wf["version"].as_str().filter(|v| *v != v1).map(|v| json!(v))
        }
    })
    .await;
    let (_, accepted) = post(&c, format!("{base}/v1/workflows/slow/runs"), json!({"input": {"d": "1ms"}})).await;
    let fresh = accepted["run_id"].as_str().unwrap().to_string();
    let (_, r) = get(&c, format!("{base}/v1/runs/{fresh}?wait=30s")).await;
    assert_eq!(r["status"], "succeeded", "{r}");
    assert_eq!(r["tasks"]["mark"]["output"]["v"], 2);
    assert_eq!(r["version"], v2);
    let (_, r) = get(&c, format!("{base}/v1/runs/{in_flight}?wait=30s")).await;
    assert_eq!(r["status"], "succeeded", "{r}");
    assert_eq!(r["tasks"]["mark"]["output"]["v"], 1, "the run in flight kept its version");
    assert_eq!(r["version"].as_str(), Some(v1.as_str()));

    // A broken edit: v2 keeps serving, the status shows where the file is wrong.
    std::fs::write(&file, "version: 1\nname: slow\ntasks:\n  - {name: nap, uses: sleep, parents: [napp]}\n").unwrap();
    let status = eventually("the broken edit to be reported", || {
        let (c, base) = (c.clone(), base.clone());
        async move {
            let (_, all) = get(&c, format!("{base}/v1/workflows")).await;
            all["files"].as_array()?.iter().find(|f| f["last_attempt"]["ok"] == false).cloned()
        }
    })
    .await;
    let d = &status["last_attempt"]["diagnostics"][0];
    assert_eq!(d["code"], "unknown-parent", "{status}");
    assert_eq!((d["line"].as_u64(), d["column"].as_u64()), (Some(4), Some(40)), "{status}");
    assert_eq!(status["active_version"], v2, "the last good version keeps serving");
    let (code, _) = post(&c, format!("{base}/v1/workflows/slow/runs"), json!({"input": {"d": "1ms"}})).await;
    assert_eq!(code, 202);

    // An editor's atomic save (write a temp file, rename over) is picked up.
    let tmp = flows.join(".slow.yaml.swp");
    std::fs::write(&tmp, flow(3)).unwrap();
    std::fs::rename(&tmp, &file).unwrap();
    eventually("v3 after an atomic save", || {
        let (c, base, v2) = (c.clone(), base.clone(), v2.clone());
        async move {
            let (_, wf) = get(&c, format!("{base}/v1/workflows/slow")).await;
            wf["version"].as_str().filter(|v| Some(*v) != v2.as_str()).map(|_| Value::Null)
        }
    })
    .await;

    // 50 files at once.
    let many = flows.join("many");
    std::fs::create_dir(&many).unwrap();
    for i in 0..50 {
        std::fs::write(many.join(format!("w{i}.yaml")), format!("version: 1\nname: many-{i}\ntasks: [{{name: a, uses: echo}}]\n")).unwrap();
    }
    eventually("50 new workflows", || {
        let (c, base) = (c.clone(), base.clone());
        async move {
            let (_, all) = get(&c, format!("{base}/v1/workflows")).await;
            let n = all["workflows"].as_array()?.iter().filter(|w| w["name"].as_str().is_some_and(|n| n.starts_with("many-"))).count();
            (n == 50).then_some(Value::Null)
        }
    })
    .await;

    // Delete: gone for new runs.
    std::fs::remove_file(&file).unwrap();
    eventually("the deleted workflow to disappear", || {
        let (c, base) = (c.clone(), base.clone());
        async move { (get(&c, format!("{base}/v1/workflows/slow")).await.0 == 404).then_some(Value::Null) }
    })
    .await;
    let (code, err) = post(&c, format!("{base}/v1/workflows/slow/runs"), json!({})).await;
    assert_eq!(code, 404, "{err}");
    assert!(err["error"]["code"].is_string());

    // SIGTERM: a clean exit.
    let mut server = server;
    // SAFETY: signalling our own child process.
    unsafe { libc::kill(server.child.id() as i32, libc::SIGTERM) };
    let start = Instant::now();
    loop {
        if let Some(status) = server.child.try_wait().unwrap() {
            assert!(status.success(), "serve exited with {status}");
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(30), "serve did not stop on SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_token_guards_everything_but_healthz() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("workflows")).unwrap();
    let server = start(dir.path(), &["--token", "s3cret"]);
    let c = reqwest::Client::new();
    let r = c.get(format!("{}/healthz", server.base)).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let r = c.get(format!("{}/v1/workflows", server.base)).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 401);
    let r = c.get(format!("{}/v1/workflows", server.base)).bearer_auth("s3cret").send().await.unwrap();
    assert_eq!(r.status().as_u16(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_reports_a_moved_away_folder_and_fails() {
    let dir = tempfile::tempdir().unwrap();
    let flows = dir.path().join("flows");
    std::fs::create_dir(&flows).unwrap();
    std::fs::write(dir.path().join("taskweave.toml"), "[engine]\nworkflows = [\"flows\"]\nstore = \"sqlite://state.db\"\n").unwrap();
    std::fs::write(flows.join("slow.yaml"), flow(1)).unwrap();
    let server = start(dir.path(), &[]);
    let status = || {
        let out = Command::new(assert_cmd::cargo::cargo_bin("taskweave"))
            .args(["status", "--url", &server.base])
            .env_remove("TASKWEAVE_TOKEN")
            .output()
            .expect("taskweave status");
        (out.status.code(), String::from_utf8_lossy(&out.stdout).into_owned())
    };
    let (code, out) = status();
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("1 workflow(s) serving, 0 file(s) failing\n"), "{out}");

    std::fs::rename(&flows, dir.path().join("moved")).unwrap();
    let c = reqwest::Client::new();
    let base = server.base.clone();
    eventually("the folder to be reported missing", || {
        let (c, base) = (c.clone(), base.clone());
        async move {
            let (_, all) = get(&c, format!("{base}/v1/workflows")).await;
            (all["folders"][0]["state"] == "missing" && all["workflows"] == json!([])).then_some(Value::Null)
        }
    })
    .await;
    let (code, out) = status();
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("MISSING flows  (workflow folder missing)"), "{out}");
    assert!(out.contains("0 workflow(s) serving, 0 file(s) failing, 1 folder(s) missing or unreadable"), "{out}");
}
