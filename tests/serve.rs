//! A real `taskweave serve` process on a temp folder: live reload as an
//! operator sees it, through the HTTP API.

use serde_json::{Value, json};
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use taskweave::backend::conformance::{eventually, proc_stat};

/// How long a test waits for what follows a reload (it is asynchronous).
const RELOAD_WAIT: Duration = Duration::from_secs(20);
/// How often a test asks again while it waits.
const POLL: Duration = Duration::from_millis(20);

struct Server {
    child: Child,
    base: String,
    /// The start-up line (`taskweave serving http://...`).
    banner: String,
    /// Every line the server wrote to stderr so far.
    log: Arc<Mutex<Vec<String>>>,
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

/// The `serve` command, under a wrapper command when `wrap` is not empty
/// (`wrap` then the binary's path).
fn serve_command(dir: &Path, wrap: &[&str], extra: &[&str]) -> Command {
    let bin = assert_cmd::cargo::cargo_bin("taskweave");
    let mut cmd = match wrap.split_first() {
        Some((program, args)) => {
            let mut c = Command::new(program);
            c.args(args).arg(&bin);
            c
        }
        None => Command::new(&bin),
    };
    cmd.current_dir(dir).args(["serve", "--bind", "127.0.0.1:0"]);
    if !extra.contains(&"--grace") {
        cmd.args(["--grace", "5s"]);
    }
    cmd.args(extra)
        .env_remove("TASKWEAVE_LOG")
        .env_remove("RUST_LOG")
        .env_remove("TASKWEAVE_TOKEN")
        .env_remove("TASKWEAVE_TOKEN_FILE")
        .env_remove("TASK_QUEUE_BACKEND");
    cmd
}

fn start_with(dir: &Path, wrap: &[&str], extra: &[&str], configure: impl FnOnce(&mut Command)) -> Server {
    let mut cmd = serve_command(dir, wrap, extra);
    configure(&mut cmd);
    let mut child = cmd.stdout(Stdio::null()).stderr(Stdio::piped()).spawn().expect("spawn serve");
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let log = Arc::new(Mutex::new(Vec::new()));
    let lines = Arc::clone(&log);
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(rest) = line.split("serving http://").nth(1) {
                let addr = rest.split_whitespace().next().unwrap_or_default().to_string();
                let _ = tx.send((addr, line.clone()));
            }
            lines.lock().unwrap().push(line);
        }
    });
    let (addr, banner) = rx.recv_timeout(Duration::from_secs(60)).expect("serve did not start");
    Server { child, base: format!("http://{addr}"), banner, log }
}

/// Waits for the server to exit after a signal; its exit status.
fn wait_exit(server: &mut Server, within: Duration) -> std::process::ExitStatus {
    let start = Instant::now();
    loop {
        if let Some(status) = server.child.try_wait().unwrap() {
            return status;
        }
        assert!(start.elapsed() < within, "serve did not stop within {within:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
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
    let v2 = eventually("v2 to serve", RELOAD_WAIT, POLL, || {
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
    // The operator sees both in the log without asking for more of it.
    let logged = |what: &str| server.log.lock().unwrap().iter().any(|l| l.contains(what));
    assert!(logged("1 workflow(s) loaded from flows"), "{:?}", server.log.lock().unwrap());
    assert!(logged("workflows reloaded: updated slow in "), "{:?}", server.log.lock().unwrap());

    // A broken edit: v2 keeps serving, the status shows where the file is wrong.
    std::fs::write(&file, "version: 1\nname: slow\ntasks:\n  - {name: nap, uses: echo, parents: [napp]}\n").unwrap();
    let status = eventually("the broken edit to be reported", RELOAD_WAIT, POLL, || {
        let (c, base) = (c.clone(), base.clone());
        async move {
            let (_, all) = get(&c, format!("{base}/v1/workflows")).await;
            all["files"].as_array()?.iter().find(|f| f["last_attempt"]["ok"] == false).cloned()
        }
    })
    .await;
    let d = &status["last_attempt"]["diagnostics"][0];
    assert_eq!(d["code"], "unknown-parent", "{status}");
    assert_eq!((d["line"].as_u64(), d["column"].as_u64()), (Some(4), Some(39)), "{status}");
    assert_eq!(status["active_version"], v2, "the last good version keeps serving");
    eventually("the failed reload to be logged", RELOAD_WAIT, POLL, || {
        let found = logged("workflows not reloaded: 1 file failed (") && logged("[unknown-parent]");
        async move { found.then_some(Value::Null) }
    })
    .await;
    let (code, _) = post(&c, format!("{base}/v1/workflows/slow/runs"), json!({"input": {"d": "1ms"}})).await;
    assert_eq!(code, 202);

    // An editor's atomic save (write a temp file, rename over) is picked up.
    let tmp = flows.join(".slow.yaml.swp");
    std::fs::write(&tmp, flow(3)).unwrap();
    std::fs::rename(&tmp, &file).unwrap();
    eventually("v3 after an atomic save", RELOAD_WAIT, POLL, || {
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
    eventually("50 new workflows", RELOAD_WAIT, POLL, || {
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
    eventually("the deleted workflow to disappear", RELOAD_WAIT, POLL, || {
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
    let status = wait_exit(&mut server, Duration::from_secs(30));
    assert!(status.success(), "serve exited with {status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_token_guards_everything_but_healthz() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("workflows")).unwrap();
    let server = start(dir.path(), &["--token", "s3cret"]);
    assert!(server.banner.contains("token required"), "{}", server.banner);
    let c = reqwest::Client::new();
    let r = c.get(format!("{}/healthz", server.base)).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let r = c.get(format!("{}/v1/workflows", server.base)).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 401);
    let r = c.get(format!("{}/v1/workflows", server.base)).bearer_auth("s3cret").send().await.unwrap();
    assert_eq!(r.status().as_u16(), 200);
}

/// What `taskweave serve` says when it refuses to start; panics if it starts.
fn refused(dir: &Path, extra: &[&str], env: &[(&str, &str)]) -> String {
    let mut cmd = assert_cmd::Command::from_std(serve_command(dir, &[], extra));
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.timeout(Duration::from_secs(60)).output().expect("run serve");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(2), "serve did not refuse: {stderr}");
    assert!(!stderr.contains("serving http://"), "{stderr}");
    stderr
}

#[test]
fn unusable_tokens_stop_the_server_before_it_listens() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("workflows")).unwrap();
    let file = |name: &str, text: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        p.display().to_string()
    };
    let (blank, padded, missing) = (file("blank", "\n"), file("padded", " hunter2\n"), dir.path().join("nope").display().to_string());
    type Case<'a> = (Vec<&'a str>, Vec<(&'a str, &'a str)>, &'a str);
    let cases: Vec<Case> = vec![
        (vec!["--token", ""], vec![], "is empty"),
        // A missing secret in systemd or Kubernetes.
        (vec![], vec![("TASKWEAVE_TOKEN", "")], "is empty"),
        (vec!["--token", "hunter2\n"], vec![], "whitespace"),
        (vec![], vec![("TASKWEAVE_TOKEN", " hunter2")], "whitespace"),
        (vec!["--token", "hünter2"], vec![], "cannot be sent"),
        (vec!["--token-file", &blank], vec![], "is empty"),
        (vec!["--token-file", &padded], vec![], "whitespace"),
        (vec![], vec![("TASKWEAVE_TOKEN_FILE", &padded)], "whitespace"),
        (vec!["--token-file", &missing], vec![], "cannot read the token file"),
        (vec!["--token", "a", "--token-file", &padded], vec![], "cannot be used with"),
    ];
    for (args, env, words) in cases {
        let stderr = refused(dir.path(), &args, &env);
        assert!(stderr.contains(words), "{args:?} {env:?}: {stderr}");
        assert!(!stderr.contains("hunter") && !stderr.contains("ünter"), "the token leaked: {stderr}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_file_guards_the_api_and_the_banner_tells_the_truth() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("workflows")).unwrap();
    // A mounted secret ends with a newline; it is not part of the token.
    let secret = dir.path().join("token");
    std::fs::write(&secret, "s3cret\n").unwrap();
    let server = start(dir.path(), &["--token-file", secret.to_str().unwrap()]);
    assert!(server.banner.contains("token required"), "{}", server.banner);
    let c = reqwest::Client::new();
    let r = c.get(format!("{}/v1/workflows", server.base)).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 401);
    let r = c.get(format!("{}/v1/workflows", server.base)).bearer_auth("s3cret").send().await.unwrap();
    assert_eq!(r.status().as_u16(), 200);
    drop(server);

    // Without a token the banner says the API is open.
    let server = start(dir.path(), &[]);
    assert!(server.banner.contains("no token"), "{}", server.banner);
    assert!(!server.banner.contains("token required"), "{}", server.banner);
    let r = c.get(format!("{}/v1/workflows", server.base)).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 200);
}

/// Reads until the server closes the connection; whether it did within `within`.
fn closed_within(s: &mut std::net::TcpStream, within: Duration) -> bool {
    use std::io::Read;
    s.set_read_timeout(Some(within)).unwrap();
    let mut buf = [0u8; 1024];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => return false,
            Err(_) => return true,
        }
    }
}

#[test]
fn connection_limits_come_from_taskweave_toml() {
    use std::io::Write;
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("workflows")).unwrap();
    std::fs::write(dir.path().join("taskweave.toml"), "[serve]\nheader_timeout = \"300ms\"\nmax_connections = 8\n").unwrap();
    let server = start(dir.path(), &[]);
    let addr = server.base.trim_start_matches("http://").to_string();
    let mut c = std::net::TcpStream::connect(&addr).unwrap();
    c.write_all(b"GET /healthz HTTP/1.1\r\nHost: te").unwrap();
    assert!(closed_within(&mut c, Duration::from_secs(20)), "half-sent headers kept the connection open");
    // A misspelt key is refused with a suggestion.
    std::fs::write(dir.path().join("taskweave.toml"), "[serve]\nheader_timout = \"1s\"\n").unwrap();
    let stderr = refused(dir.path(), &[], &[]);
    assert!(stderr.contains("did you mean `header_timeout`?"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_with_an_open_event_stream_exits_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("workflows")).unwrap();
    let mut server = start(dir.path(), &["--grace", "60s"]);
    let mut events = reqwest::get(format!("{}/v1/events", server.base)).await.unwrap();
    assert_eq!(events.status().as_u16(), 200);
    // SAFETY: signalling our own child process.
    unsafe { libc::kill(server.child.id() as i32, libc::SIGTERM) };
    // The stream ends instead of holding the shutdown open for the grace period.
    let ended = tokio::time::timeout(Duration::from_secs(20), async { while let Ok(Some(_)) = events.chunk().await {} }).await;
    assert!(ended.is_ok(), "the event stream outlived the shutdown");
    let status = wait_exit(&mut server, Duration::from_secs(20));
    assert!(status.success(), "serve exited with {status}");
}

#[cfg(target_os = "linux")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_file_descriptors_the_server_waits_without_spinning_and_recovers() {
    use std::os::unix::process::CommandExt;
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("workflows")).unwrap();
    // A low descriptor limit, and clients that hold their connections (a minute to send headers).
    let server = start_with(dir.path(), &[], &["--header-timeout", "60s"], |cmd| {
        // SAFETY: setrlimit is async-signal-safe; it only touches the child between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                let lim = libc::rlimit { rlim_cur: 48, rlim_max: 48 };
                if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    });
    let addr = server.base.trim_start_matches("http://").to_string();
    let mut held = Vec::new();
    for _ in 0..80 {
        match tokio::time::timeout(Duration::from_secs(2), tokio::net::TcpStream::connect(&addr)).await {
            Ok(Ok(c)) => held.push(c),
            _ => break,
        }
    }
    let hit = Instant::now();
    while !server.log.lock().unwrap().iter().any(|l| l.contains("accepting a connection failed")) {
        assert!(hit.elapsed() < Duration::from_secs(20), "no accept error was reported: {:?}", server.log.lock().unwrap());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Out of descriptors, the accept loop rests between tries instead of spinning.
    let pid = server.child.id();
    let cpu_time = |pid: u32| proc_stat(pid as i32).expect("the server's process").cpu_time();
    let before = cpu_time(pid);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let used = cpu_time(pid) - before;
    assert!(used < Duration::from_millis(500), "the server used {used:?} of CPU in 2 s while out of descriptors");
    let errors = server.log.lock().unwrap().iter().filter(|l| l.contains("accepting a connection failed")).count();
    assert!(errors <= 2, "accept errors are logged at most every few seconds, not {errors} times");
    // Once the clients let go, the server serves again.
    drop(held);
    let c = reqwest::Client::builder().timeout(Duration::from_secs(5)).build().unwrap();
    let start = Instant::now();
    loop {
        match c.get(format!("{}/healthz", server.base)).send().await {
            Ok(r) if r.status().as_u16() == 200 => break,
            other => {
                assert!(start.elapsed() < Duration::from_secs(30), "not serving after the clients left: {other:?}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
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
    let listed = eventually("the run in flight to be recorded as it ended", RELOAD_WAIT, POLL, || {
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

/// `kill -9` of the server mid-run, then a restart: the run resumes from
/// its recorded state. The task that had finished keeps its output and is
/// not run again; the attempt that was running is lost and its task retries
/// under its policy; the run succeeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_interrupted_by_kill_9_resumes_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let flows = dir.path().join("flows");
    std::fs::create_dir(&flows).unwrap();
    std::fs::write(dir.path().join("taskweave.toml"), "[engine]\nworkflows = [\"flows\"]\nstore = \"sqlite://state.db\"\n").unwrap();
    let work = dir.path().join("work");
    std::fs::create_dir(&work).unwrap();
    std::fs::write(
        flows.join("resumable.yaml"),
        "version: 1\nname: resumable\ntasks:\n\
         \x20 - {name: first, shell: 'echo once >> {{input.dir}}/first.log; echo 7', output: json}\n\
         \x20 - name: second\n    parents: [first]\n    retry: {attempts: 2, delay: 10ms}\n\
         \x20   shell: 'echo try >> {{input.dir}}/second.log; if [ -e {{input.dir}}/go ]; then echo 1; else sleep 60; fi'\n\
         \x20 - {name: third, parents: [second], uses: echo, with: {first: \"{{tasks.first.output}}\"}}\n",
    )
    .unwrap();
    let c = reqwest::Client::new();
    let first = start_with(dir.path(), &[], &[], |_| {});
    let (code, accepted) = post(&c, format!("{}/v1/workflows/resumable/runs", first.base), json!({"input": {"dir": work}})).await;
    assert_eq!(code, 202, "{accepted}");
    let id = accepted["run_id"].as_str().unwrap().to_string();
    let second_log = work.join("second.log");
    // Killed once the store holds the first task's end (the history is
    // written behind the run: what was not written yet runs again).
    let store = taskweave::store::Store::open(&format!("sqlite://{}", dir.path().join("state.db").display())).await.unwrap();
    eventually("the first task's end recorded and the second task started", RELOAD_WAIT, POLL, || {
        let (store, id) = (store.clone(), id.clone());
        let started = std::fs::read_to_string(&second_log).is_ok_and(|t| !t.is_empty());
        async move {
            let r = store.get_run(&id).await.ok().flatten()?;
            (started && r.tasks["first"].status == taskweave::run::TaskStatus::Succeeded).then_some(())
        }
    })
    .await;
    store.close().await;
    let mut first = first;
    first.child.kill().unwrap();
    first.child.wait().unwrap();
    std::fs::write(work.join("go"), "").unwrap();

    let second = start_with(dir.path(), &[], &[], |_| {});
    let base = second.base.clone();
    let r = eventually("the resumed run to end", RELOAD_WAIT, POLL, || {
        let (c, url) = (c.clone(), format!("{base}/v1/runs/{id}"));
        async move {
            let (_, r) = get(&c, url).await;
            (r["status"] != "running" && r["status"] != "queued").then_some(r)
        }
    })
    .await;
    assert_eq!(r["status"], "succeeded", "{r}");
    assert_eq!(std::fs::read_to_string(work.join("first.log")).unwrap(), "once\n", "a finished task is not run again");
    assert_eq!(std::fs::read_to_string(&second_log).unwrap(), "try\ntry\n", "the lost attempt and its retry");
    assert_eq!(r["tasks"]["second"]["attempts"], 2, "{r}");
    assert_eq!(r["tasks"]["third"]["output"], json!({"first": 7}), "the recorded output is read: {r}");
}

/// Inside a container taskweave is pid 1 at every start, so after a crash
/// the dead process's pid is alive again. A run it left behind still ends
/// (with `resume = false`): failed as interrupted once the crashed
/// instance's lease expires. The
/// container is a pid namespace of our own (`unshare`, which needs root).
#[cfg(target_os = "linux")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_left_by_a_crash_as_pid_1_ends_interrupted_after_a_restart() {
    let unshare = ["unshare", "--pid", "--fork", "--kill-child"];
    let can = Command::new(unshare[0]).args(&unshare[1..]).arg("true").stderr(Stdio::null()).status().is_ok_and(|s| s.success());
    if !can {
        assert!(
            !taskweave::backend::conformance::require_services(),
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
        "[engine]\nworkflows = [\"flows\"]\nstore = \"sqlite://state.db\"\nresume = false\n\n[instance]\nheartbeat = \"200ms\"\nlease = \"1s\"\n",
    )
    .unwrap();
    std::fs::write(flows.join("slow.yaml"), flow(1)).unwrap();
    let c = reqwest::Client::new();

    let mut first = start_with(dir.path(), &unshare, &[], |_| {});
    let (code, accepted) = post(&c, format!("{}/v1/workflows/slow/runs", first.base), json!({"input": {"d": "60s"}})).await;
    assert_eq!(code, 202, "{accepted}");
    let id = accepted["run_id"].as_str().unwrap().to_string();
    let base = first.base.clone();
    eventually("the run to be running", RELOAD_WAIT, POLL, || {
        let (c, url) = (c.clone(), format!("{base}/v1/runs/{id}"));
        async move { (get(&c, url).await.1["tasks"]["nap"]["status"] == "running").then_some(Value::Null) }
    })
    .await;
    // kill -9: the namespace's pid 1 goes with the wrapper.
    first.child.kill().unwrap();
    first.child.wait().unwrap();

    let second = start_with(dir.path(), &unshare, &[], |_| {});
    let base = second.base.clone();
    let r = eventually("the interrupted run to end", RELOAD_WAIT, POLL, || {
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
    eventually("the folder to be reported missing", RELOAD_WAIT, POLL, || {
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
