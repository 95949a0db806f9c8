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
    start_with(dir, &[], extra, |_| {})
}

/// [`start`], under a wrapper command (`wrap` then the binary's path), with
/// the command adjusted first.
fn start_with(dir: &Path, wrap: &[&str], extra: &[&str], adjust: impl FnOnce(&mut Command)) -> Server {
    let bin = assert_cmd::cargo::cargo_bin("taskweave");
    let mut cmd = match wrap.split_first() {
        Some((program, args)) => {
            let mut c = Command::new(program);
            c.args(args).arg(&bin);
            c
        }
        None => Command::new(&bin),
    };
    cmd.current_dir(dir)
        .args(["serve", "--bind", "127.0.0.1:0", "--grace", "5s"])
        .args(extra)
        .env_remove("TASKWEAVE_TOKEN")
        .env_remove("TASK_QUEUE_BACKEND")
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    adjust(&mut cmd);
    let mut child = cmd.spawn().expect("spawn serve");
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            eprintln!("serve: {line}");
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

/// Sets the largest file a process may write (`RLIMIT_FSIZE`, soft limit;
/// `None`: unlimited). A write past it fails with EFBIG, as on a full disk.
#[cfg(target_os = "linux")]
fn limit_file_size(pid: u32, bytes: Option<u64>) {
    let lim = libc::rlimit { rlim_cur: bytes.unwrap_or(libc::RLIM_INFINITY), rlim_max: libc::RLIM_INFINITY };
    // SAFETY: `lim` is a valid rlimit; the old limit is not asked for.
    let rc = unsafe { libc::prlimit(pid as libc::pid_t, libc::RLIMIT_FSIZE, &lim, std::ptr::null_mut()) };
    assert_eq!(rc, 0, "prlimit: {}", std::io::Error::last_os_error());
}

/// A store that cannot write (its files may not grow: the disk is full as
/// far as SQLite can tell) refuses new runs with 503 instead of accepting
/// runs it cannot record, turns `/healthz` 503 naming the error, counts the
/// failures, keeps what a run in flight records meanwhile, and recovers once
/// the files may grow again.
#[cfg(target_os = "linux")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_that_cannot_write_refuses_runs_and_recovers() {
    use std::os::unix::process::CommandExt;
    let dir = tempfile::tempdir().unwrap();
    let flows = dir.path().join("flows");
    std::fs::create_dir(&flows).unwrap();
    std::fs::write(dir.path().join("taskweave.toml"), "[engine]\nworkflows = [\"flows\"]\nstore = \"sqlite://state.db\"\n").unwrap();
    std::fs::write(flows.join("slow.yaml"), flow(1)).unwrap();
    let server = start_with(dir.path(), &[], &[], |cmd| {
        // SAFETY: only async-signal-safe calls between fork and exec. A
        // write past the file size limit then fails with EFBIG instead of
        // killing the process.
        unsafe {
            cmd.pre_exec(|| {
                libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
                Ok(())
            });
        }
    });
    let pid = server.child.id();
    let c = reqwest::Client::new();
    let base = server.base.clone();
    let submit = format!("{base}/v1/workflows/slow/runs");

    let (code, ok) = post(&c, submit.clone(), json!({"input": {"d": "1ms"}})).await;
    assert_eq!(code, 202, "{ok}");
    let (_, r) = get(&c, format!("{base}/v1/runs/{}?wait=30s", ok["run_id"].as_str().unwrap())).await;
    assert_eq!(r["status"], "succeeded", "{r}");
    let (code, _) = get(&c, format!("{base}/healthz")).await;
    assert_eq!(code, 200);
    // A run in flight when the store stops writing.
    let (code, long) = post(&c, submit.clone(), json!({"input": {"d": "1500ms"}})).await;
    assert_eq!(code, 202, "{long}");
    let long = long["run_id"].as_str().unwrap().to_string();

    limit_file_size(pid, Some(0));
    for _ in 0..3 {
        let (code, err) = post(&c, submit.clone(), json!({"input": {"d": "1ms"}})).await;
        assert_eq!(code, 503, "a run the store cannot record is not accepted: {err}");
        assert_eq!(err["error"]["code"], "store_unavailable", "{err}");
    }
    let (code, health) = get(&c, format!("{base}/healthz")).await;
    assert_eq!(code, 503, "{health}");
    assert_eq!(health["status"], "unavailable", "{health}");
    assert!(health["store"]["error"].as_str().is_some_and(|e| !e.is_empty()), "{health}");
    let metrics = c.get(format!("{base}/metrics")).send().await.unwrap().text().await.unwrap();
    let errors: f64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("taskweave_store_write_errors_total "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no write error counter: {metrics}"));
    assert!(errors >= 3.0, "{metrics}");
    assert!(metrics.lines().any(|l| l == "taskweave_store_healthy 0"), "{metrics}");
    // The run in flight ends while the store cannot write.
    let (_, r) = get(&c, format!("{base}/v1/runs/{long}?wait=30s")).await;
    assert_eq!(r["status"], "succeeded", "{r}");

    limit_file_size(pid, None);
    let (code, ok) = post(&c, submit.clone(), json!({"input": {"d": "1ms"}})).await;
    assert_eq!(code, 202, "{ok}");
    let (code, health) = get(&c, format!("{base}/healthz")).await;
    assert_eq!((code, &health), (200, &json!({"status": "ok"})));
    let metrics = c.get(format!("{base}/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(metrics.lines().any(|l| l == "taskweave_store_healthy 1"), "{metrics}");
    // The history holds the runs accepted, the one in flight with its end,
    // and none of the refused ones.
    let listed = eventually("the run in flight to be recorded as it ended", || {
        let (c, base) = (c.clone(), base.clone());
        async move {
            let (_, runs) = get(&c, format!("{base}/v1/runs?limit=100")).await;
            let runs = runs["runs"].as_array()?.clone();
            runs.iter().all(|r| r["status"] == "succeeded").then_some(Value::Array(runs))
        }
    })
    .await;
    assert_eq!(listed.as_array().unwrap().len(), 3, "{listed}");
}

/// Inside a container taskweave is pid 1 at every start, so after a crash
/// the dead process's pid is alive again. A run it left behind still ends:
/// failed as interrupted once the crashed instance's lease expires. The
/// container is a pid namespace of our own (`unshare`, which needs root).
#[cfg(target_os = "linux")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_left_by_a_crash_as_pid_1_ends_interrupted_after_a_restart() {
    let unshare = ["unshare", "--pid", "--fork", "--kill-child"];
    let can = Command::new(unshare[0]).args(&unshare[1..]).arg("true").stderr(Stdio::null()).status().is_ok_and(|s| s.success());
    if !can {
        assert!(
            std::env::var("TASKWEAVE_REQUIRE_SERVICES").as_deref() != Ok("1"),
            "`unshare --pid` is not available (root is needed) and TASKWEAVE_REQUIRE_SERVICES=1"
        );
        let _ = std::io::Write::write_all(
            &mut std::io::stderr(),
            b"SKIPPED a_run_left_by_a_crash_as_pid_1_ends_interrupted_after_a_restart: `unshare --pid` is not available here (needs root)\n",
        );
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let flows = dir.path().join("flows");
    std::fs::create_dir(&flows).unwrap();
    std::fs::write(
        dir.path().join("taskweave.toml"),
        "[engine]\nworkflows = [\"flows\"]\nstore = \"sqlite://state.db\"\n\n[instance]\nheartbeat = \"200ms\"\nlease = \"1s\"\n",
    )
    .unwrap();
    std::fs::write(flows.join("slow.yaml"), flow(1)).unwrap();
    let c = reqwest::Client::new();

    let mut first = start_with(dir.path(), &unshare, &[], |_| {});
    let (code, accepted) = post(&c, format!("{}/v1/workflows/slow/runs", first.base), json!({"input": {"d": "60s"}})).await;
    assert_eq!(code, 202, "{accepted}");
    let id = accepted["run_id"].as_str().unwrap().to_string();
    let base = first.base.clone();
    eventually("the run to be running", || {
        let (c, url) = (c.clone(), format!("{base}/v1/runs/{id}"));
        async move { (get(&c, url).await.1["tasks"]["nap"]["status"] == "running").then_some(Value::Null) }
    })
    .await;
    // kill -9: the namespace's pid 1 goes with the wrapper.
    first.child.kill().unwrap();
    first.child.wait().unwrap();

    let second = start_with(dir.path(), &unshare, &[], |_| {});
    let base = second.base.clone();
    let r = eventually("the interrupted run to end", || {
        let (c, url) = (c.clone(), format!("{base}/v1/runs/{id}"));
        async move {
            let (_, r) = get(&c, url).await;
            (r["status"] != "running" && r["status"] != "queued").then_some(r)
        }
    })
    .await;
    assert_eq!(r["status"], "failed", "{r}");
    let error = r["error"].as_str().unwrap_or_default();
    assert!(error.starts_with("interrupted: ") && error.contains("lease"), "{r}");
    assert_eq!(r["tasks"]["nap"]["status"], "cancelled", "{r}");
}
