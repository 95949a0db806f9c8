//! Slow and hostile clients against the real accept loop on a real socket:
//! half-sent headers and bodies, idle keep-alive connections, the
//! connection limit, and the requests that must never be cut (server-sent
//! events, long-polls), then a graceful shutdown.
//!
//! Limits are set short (hundreds of milliseconds) so the tests are quick;
//! they assert what happens, with generous upper bounds, never how fast.

use serde_json::{Value, json};
use std::time::{Duration, Instant};
use taskweave::api::server::{ConnLimits, Server};
use taskweave::api::{ApiOptions, router};
use taskweave::backend::conformance::workflow;
use taskweave::{Engine, EngineBuilder};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

const GREET: &str = "version: 1\nname: greet\ntasks:\n  - {name: hello, uses: echo, with: {hi: there}}\n";
const SLOW: &str = "version: 1\nname: slow\ntasks:\n  - {name: nap, uses: sleep, with: {duration: \"{{input.d}}\"}}\n";

/// Far longer than any limit set here: the bound for "it happens at all".
const EVENTUALLY: Duration = Duration::from_secs(20);

struct Served {
    engine: Engine,
    server: Server,
    base: String,
    addr: std::net::SocketAddr,
    stop: CancellationToken,
}

async fn serve(limits: ConnLimits, opts: ApiOptions) -> Served {
    let engine = EngineBuilder::new().store("sqlite::memory:").build().await.expect("engine");
    for y in [GREET, SLOW] {
        engine.register_workflow(workflow(y));
    }
    let stop = CancellationToken::new();
    let app = router(engine.clone(), ApiOptions { shutdown: stop.clone(), ..opts });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let server = Server::start(listener, app, limits, stop.clone()).expect("start");
    let addr = server.local_addr();
    Served { engine, server, base: format!("http://{addr}"), addr, stop }
}

fn limits(header: u64, idle: u64, max: usize) -> ConnLimits {
    ConnLimits { header_timeout: Duration::from_millis(header), idle_timeout: Duration::from_millis(idle), max_connections: max }
}

/// Reads until the server closes the connection (or `within` passes);
/// returns what was read and whether the connection was closed.
async fn read_to_close(s: &mut TcpStream, within: Duration) -> (String, bool) {
    let mut got = Vec::new();
    let deadline = tokio::time::Instant::now() + within;
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Err(_) => return (String::from_utf8_lossy(&got).into_owned(), false),
            Ok(Ok(0)) | Ok(Err(_)) => return (String::from_utf8_lossy(&got).into_owned(), true),
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
        }
    }
}

/// Reads one response whose body has a Content-Length (enough for these endpoints).
async fn read_response(s: &mut TcpStream) -> String {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let text = String::from_utf8_lossy(&got).into_owned();
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let len = head
                .lines()
                .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().parse::<usize>().unwrap()));
            if len.is_some_and(|n| body.len() >= n) {
                return text;
            }
        }
        let n = tokio::time::timeout(EVENTUALLY, s.read(&mut buf)).await.expect("a response in time").expect("read");
        assert!(n > 0, "closed before a whole response: {text:?}");
        got.extend_from_slice(&buf[..n]);
    }
}

const HEALTHZ: &[u8] = b"GET /healthz HTTP/1.1\r\nHost: test\r\n\r\n";
const HALF: &[u8] = b"GET /healthz HTTP/1.1\r\nHost: te";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_sent_headers_are_cut_after_the_header_timeout() {
    let s = serve(limits(300, 60_000, 16), ApiOptions::default()).await;
    // A client that sends part of its headers and stalls.
    let started = Instant::now();
    let mut c = TcpStream::connect(s.addr).await.unwrap();
    c.write_all(HALF).await.unwrap();
    let (got, closed) = read_to_close(&mut c, EVENTUALLY).await;
    assert!(closed, "the stalled connection is still open");
    assert_eq!(got, "", "a stalled request gets no answer");
    assert!(started.elapsed() >= Duration::from_millis(300), "closed before the timeout: {:?}", started.elapsed());

    // A client that connects and sends nothing at all.
    let mut c = TcpStream::connect(s.addr).await.unwrap();
    assert!(read_to_close(&mut c, EVENTUALLY).await.1, "a silent connection is still open");

    // On a kept-alive connection the header timeout starts with the next request's
    // first byte: the idle limit (a minute here) does not protect a stalled request.
    let mut c = TcpStream::connect(s.addr).await.unwrap();
    c.write_all(HEALTHZ).await.unwrap();
    assert!(read_response(&mut c).await.starts_with("HTTP/1.1 200"));
    c.write_all(HALF).await.unwrap();
    let (_, closed) = read_to_close(&mut c, EVENTUALLY).await;
    assert!(closed, "a stalled second request is still open");

    // Whole requests are still served.
    let r = reqwest::get(format!("{}/healthz", s.base)).await.unwrap();
    assert_eq!(r.status().as_u16(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_kept_alive_connections_are_closed() {
    // Headers get a minute; an idle connection only a moment.
    let s = serve(limits(60_000, 300, 16), ApiOptions::default()).await;
    let mut c = TcpStream::connect(s.addr).await.unwrap();
    let started = Instant::now();
    c.write_all(HEALTHZ).await.unwrap();
    let first = read_response(&mut c).await;
    assert!(first.starts_with("HTTP/1.1 200"), "{first}");
    let (got, closed) = read_to_close(&mut c, EVENTUALLY).await;
    assert!(closed && got.is_empty(), "the idle connection is still open: {got:?}");
    assert!(started.elapsed() >= Duration::from_millis(300), "closed before the idle timeout: {:?}", started.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_body_is_answered_408_and_the_connection_closed() {
    let s = serve(limits(60_000, 60_000, 16), ApiOptions { body_timeout: Duration::from_millis(300), ..Default::default() }).await;
    let mut c = TcpStream::connect(s.addr).await.unwrap();
    c.write_all(
        b"POST /v1/workflows/greet/runs HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"input\":",
    )
    .await
    .unwrap();
    let (got, closed) = read_to_close(&mut c, EVENTUALLY).await;
    assert!(got.starts_with("HTTP/1.1 408"), "{got}");
    assert!(got.contains(r#""code":"request_timeout""#), "{got}");
    assert!(got.to_ascii_lowercase().contains("connection: close"), "{got}");
    assert!(closed, "the connection is still open");

    // A body that arrives in pieces within the limit is fine.
    let body = json!({"input": {}}).to_string();
    let mut c = TcpStream::connect(s.addr).await.unwrap();
    let head = format!(
        "POST /v1/workflows/greet/runs HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    c.write_all(head.as_bytes()).await.unwrap();
    c.write_all(&body.as_bytes()[..3]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    c.write_all(&body.as_bytes()[3..]).await.unwrap();
    let r = read_response(&mut c).await;
    assert!(r.starts_with("HTTP/1.1 202"), "{r}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_connections_at_the_limit_only_delay_the_next_client() {
    let s = serve(limits(1_000, 60_000, 2), ApiOptions::default()).await;
    let mut stalled = Vec::new();
    for _ in 0..2 {
        let mut c = TcpStream::connect(s.addr).await.unwrap();
        c.write_all(HALF).await.unwrap();
        stalled.push(c);
    }
    // The third client waits for a slot: it is not answered while both are taken...
    let mut third = TcpStream::connect(s.addr).await.unwrap();
    third.write_all(HEALTHZ).await.unwrap();
    let mut buf = [0u8; 64];
    let early = tokio::time::timeout(Duration::from_millis(300), third.read(&mut buf)).await;
    assert!(early.is_err(), "served past the connection limit: {early:?}");
    // ... and is served once the stalled ones have timed out.
    let r = read_response(&mut third).await;
    assert!(r.starts_with("HTTP/1.1 200"), "{r}");
    for mut c in stalled {
        assert!(read_to_close(&mut c, EVENTUALLY).await.1, "a stalled connection is still open");
    }
    // Later clients are served as usual.
    let r = reqwest::get(format!("{}/healthz", s.base)).await.unwrap();
    assert_eq!(r.status().as_u16(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn event_streams_and_long_polls_outlive_every_timeout() {
    let opts = ApiOptions { body_timeout: Duration::from_millis(200), max_wait: Duration::from_secs(2), ..Default::default() };
    let s = serve(limits(200, 200, 16), opts).await;
    let client = reqwest::Client::new();

    // An event stream open far longer than every limit still delivers.
    let mut events = client.get(format!("{}/v1/events", s.base)).send().await.unwrap();
    assert_eq!(events.status().as_u16(), 200);
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let r = client.post(format!("{}/v1/workflows/greet/runs", s.base)).json(&json!({})).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 202);
    let mut seen = String::new();
    let until = Instant::now() + EVENTUALLY;
    while !seen.contains("event: run") {
        let chunk = tokio::time::timeout_at(until.into(), events.chunk()).await.expect("an event in time").expect("stream");
        seen.push_str(&String::from_utf8_lossy(&chunk.expect("the stream ended")));
    }

    // A long-poll waits its full `wait` (cut to max_wait, 2 s), ten times the idle limit.
    let r = client.post(format!("{}/v1/workflows/slow/runs", s.base)).json(&json!({"input": {"d": "60s"}})).send().await.unwrap();
    let id = r.json::<Value>().await.unwrap()["run_id"].as_str().unwrap().to_string();
    let started = Instant::now();
    let r = client.get(format!("{}/v1/runs/{id}?wait=30s", s.base)).send().await.expect("the long-poll was cut");
    assert_eq!(r.status().as_u16(), 200);
    assert!(started.elapsed() >= Duration::from_secs(2), "the wait ended early: {:?}", started.elapsed());
    assert_eq!(r.json::<Value>().await.unwrap()["status"], "running");

    // A long-poll that ends with the run.
    let r = client.post(format!("{}/v1/workflows/slow/runs", s.base)).json(&json!({"input": {"d": "1s"}})).send().await.unwrap();
    let quick = r.json::<Value>().await.unwrap()["run_id"].as_str().unwrap().to_string();
    let r = client.get(format!("{}/v1/runs/{quick}?wait=30s", s.base)).send().await.unwrap();
    assert_eq!(r.json::<Value>().await.unwrap()["status"], "succeeded");
    s.engine.cancel(&id).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_ends_event_streams_lets_requests_finish_and_refuses_new_ones() {
    let opts = ApiOptions { max_wait: Duration::from_secs(30), ..Default::default() };
    let s = serve(limits(60_000, 60_000, 16), opts).await;
    let client = reqwest::Client::new();
    let mut events = client.get(format!("{}/v1/events", s.base)).send().await.unwrap();
    let r = client.post(format!("{}/v1/workflows/slow/runs", s.base)).json(&json!({"input": {"d": "3s"}})).send().await.unwrap();
    let id = r.json::<Value>().await.unwrap()["run_id"].as_str().unwrap().to_string();
    let poll = tokio::spawn({
        let url = format!("{}/v1/runs/{id}?wait=30s", s.base);
        async move { reqwest::get(url).await.map(|r| r.status().as_u16()) }
    });
    // An idle kept-alive connection too.
    let mut idle = TcpStream::connect(s.addr).await.unwrap();
    idle.write_all(HEALTHZ).await.unwrap();
    assert!(read_response(&mut idle).await.starts_with("HTTP/1.1 200"));
    // Time for the long-poll to reach the server.
    tokio::time::sleep(Duration::from_millis(500)).await;

    s.server.shutdown();
    assert!(s.stop.is_cancelled());
    // The event stream ends rather than holding the shutdown open.
    let ended = tokio::time::timeout(EVENTUALLY, async { while let Ok(Some(_)) = events.chunk().await {} }).await;
    assert!(ended.is_ok(), "the event stream did not end");
    assert!(read_to_close(&mut idle, EVENTUALLY).await.1, "the idle connection is still open");
    // The long-poll in flight gets its answer.
    assert_eq!(tokio::time::timeout(EVENTUALLY, poll).await.expect("the long-poll ended").unwrap().expect("answered"), 200);
    tokio::time::timeout(EVENTUALLY, s.server.closed()).await.expect("every connection closed");
    // Nothing listens any more.
    assert!(TcpStream::connect(s.addr).await.is_err(), "still accepting after shutdown");
    s.engine.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abort_closes_requests_still_in_flight() {
    let s = serve(limits(60_000, 60_000, 16), ApiOptions { max_wait: Duration::from_secs(60), ..Default::default() }).await;
    let client = reqwest::Client::new();
    let r = client.post(format!("{}/v1/workflows/slow/runs", s.base)).json(&json!({"input": {"d": "60s"}})).send().await.unwrap();
    let id = r.json::<Value>().await.unwrap()["run_id"].as_str().unwrap().to_string();
    let poll = tokio::spawn({
        let url = format!("{}/v1/runs/{id}?wait=60s", s.base);
        async move { reqwest::get(url).await.map(|r| r.status().as_u16()) }
    });
    // Time for the long-poll to reach the server.
    tokio::time::sleep(Duration::from_millis(500)).await;
    s.server.shutdown();
    // The long-poll holds the shutdown; abort ends it.
    assert!(tokio::time::timeout(Duration::from_millis(300), s.server.closed()).await.is_err(), "closed under a long-poll");
    tokio::time::timeout(EVENTUALLY, s.server.abort()).await.expect("abort closes everything");
    let answer = tokio::time::timeout(EVENTUALLY, poll).await.expect("the client saw the close").unwrap();
    assert!(answer.is_err(), "{answer:?}");
    s.engine.cancel(&id).await.unwrap();
    s.engine.shutdown().await;
}
