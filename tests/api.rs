//! The HTTP API, driven through the router with tower's `oneshot` (no
//! socket): every endpoint, every error code, auth, server-sent events and
//! metrics. Each test has its own engine and in-memory SQLite store.

use axum::Router;
use axum::body::Body;
use axum::http::{HeaderMap, Method, Request, StatusCode, header};
use http_body_util::BodyExt;
use serde_json::{Value, json};
use std::time::Duration;
use taskweave::api::{ApiOptions, ErrorCode, router};
use taskweave::backend::conformance::{eventually, workflow};
use taskweave::config::Config;
use taskweave::{Engine, EngineBuilder, RunOptions};
use tower::ServiceExt;

const GREET: &str = r#"
version: 1
name: greet
description: Say hello
input:
  type: object
  additionalProperties: false
  required: [who]
  properties:
    who: {type: string}
    times: {type: integer, default: 1}
tasks:
  - {name: hello, uses: echo, with: {greeting: "hi {{input.who}}", times: "{{input.times}}"}}
  - {name: shout, parents: [hello], timeout: 10s, uses: echo, with: {loud: "{{tasks.hello.output.greeting}}!"}}
  - {name: also, parents: [hello], uses: echo}
"#;

const SLOW: &str = r#"
version: 1
name: slow
tasks:
  - {name: nap, uses: sleep, with: {duration: 30s}}
  - {name: after, parents: [nap], uses: echo}
"#;

const CELERY: &str = r#"
version: 1
name: py-add
tasks:
  - {name: add, celery: {task: tasks.add, args: [1, 2]}}
"#;

const WAIT: Duration = Duration::from_secs(30);
/// How often a test asks again while it waits.
const POLL: Duration = Duration::from_millis(20);

async fn engine() -> Engine {
    let e = EngineBuilder::new().store("sqlite::memory:").build().await.expect("engine");
    for y in [GREET, SLOW, CELERY] {
        e.register_workflow(workflow(y));
    }
    e
}

fn app(e: &Engine) -> Router {
    router(e.clone(), ApiOptions::default())
}

fn get(uri: &str) -> Request<Body> {
    Request::get(uri).body(Body::empty()).unwrap()
}

fn post_json(uri: &str, body: impl Into<String>) -> Request<Body> {
    Request::post(uri).header(header::CONTENT_TYPE, "application/json").body(Body::from(body.into())).unwrap()
}

struct Resp {
    status: StatusCode,
    headers: HeaderMap,
    body: Value,
    text: String,
}

async fn call(app: &Router, req: Request<Body>) -> Resp {
    let resp = app.clone().oneshot(req).await.expect("the router never fails");
    let status = resp.status();
    let headers = resp.headers().clone();
    let bytes = resp.into_body().collect().await.expect("body").to_bytes();
    let text = String::from_utf8_lossy(&bytes).into_owned();
    let body = serde_json::from_str(&text).unwrap_or(Value::Null);
    Resp { status, headers, body, text }
}

/// Asserts an error answer: its status, `{error: {code, message, details}}` and the code.
#[track_caller]
fn assert_error(r: &Resp, status: u16, code: &str) {
    assert_eq!(r.status.as_u16(), status, "{}", r.text);
    assert_eq!(r.body["error"]["code"], code, "{}", r.text);
    assert!(r.body["error"]["message"].as_str().is_some_and(|m| !m.is_empty()), "{}", r.text);
    assert!(r.body["error"].as_object().unwrap().contains_key("details"), "{}", r.text);
    assert!(r.headers[header::CONTENT_TYPE].to_str().unwrap().starts_with("application/json"), "{:?}", r.headers);
}

async fn submit(app: &Router, name: &str, body: Value) -> String {
    let r = call(app, post_json(&format!("/v1/workflows/{name}/runs"), body.to_string())).await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text);
    r.body["run_id"].as_str().expect("run_id").to_string()
}

#[tokio::test]
async fn healthz() {
    let e = engine().await;
    let r = call(&app(&e), get("/healthz")).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body, json!({"status": "ok"}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submit_then_long_poll_the_result() {
    let e = engine().await;
    let app = app(&e);
    let r = call(
        &app,
        post_json(
            "/v1/workflows/greet/runs",
            json!({"input": {"who": "ada"}, "entity_id": "user-7", "context": {"user_id": "7"}}).to_string(),
        ),
    )
    .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text);
    let id = r.body["run_id"].as_str().unwrap().to_string();
    assert_eq!(r.body, json!({"run_id": id, "backend": "local", "routing": null}));
    assert_eq!(r.headers[header::LOCATION], format!("/v1/runs/{id}").as_str());

    let r = call(&app, get(&format!("/v1/runs/{id}?wait=30s"))).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let run = &r.body;
    assert_eq!(run["run_id"], id.as_str());
    assert_eq!(run["workflow"], "greet");
    assert_eq!(run["status"], "succeeded", "{run}");
    assert_eq!(run["backend"], "local");
    assert_eq!(run["routing"], Value::Null);
    assert_eq!(run["entity_id"], "user-7");
    assert!(run["version"].as_str().unwrap().starts_with("sha256:"));
    assert!(run["started_at"].is_string() && run["finished_at"].is_string());
    assert_eq!(run["tasks"]["hello"]["output"], json!({"greeting": "hi ada", "times": 1}), "input defaults are applied");
    assert_eq!(run["tasks"]["shout"]["output"], json!({"loud": "hi ada!"}));
    assert_eq!(run["tasks"]["also"]["status"], "succeeded");
    assert_eq!(run["tasks"]["hello"]["attempts"], 1);
    let order: Vec<&String> = run["tasks"].as_object().unwrap().keys().collect();
    assert_eq!(order, ["hello", "shout", "also"], "tasks in workflow order");

    // Without wait: the same (finished) result at once.
    let r = call(&app, get(&format!("/v1/runs/{id}"))).await;
    assert_eq!(r.body["status"], "succeeded");
}

#[tokio::test]
async fn submit_errors() {
    let e = engine().await;
    let small = router(e.clone(), ApiOptions { body_limit: 1024, ..Default::default() });
    let app = app(&e);
    let url = "/v1/workflows/greet/runs";

    // Malformed JSON: where it broke.
    let r = call(&app, post_json(url, "{\"input\": {\"who\": \"ada\",}\n}")).await;
    assert_error(&r, 400, "invalid_json");
    assert_eq!(r.body["error"]["details"], json!({"line": 1, "column": 25}), "{}", r.text);
    let r = call(&app, post_json(url, "")).await;
    assert_error(&r, 400, "invalid_json");

    // JSON of the wrong shape.
    for body in [r#"{"inputs": {"who": "ada"}}"#, "[]", r#"{"context": "x"}"#, r#"{"entity_id": 5}"#] {
        let r = call(&app, post_json(url, body)).await;
        assert_error(&r, 422, "invalid_body");
        assert!(r.body["error"]["details"]["line"].is_u64(), "{}", r.text);
    }

    // Content type.
    let r = call(&app, Request::post(url).body(Body::from(r#"{"input": {"who": "ada"}}"#)).unwrap()).await;
    assert_error(&r, 415, "unsupported_media_type");
    let r = call(&app, Request::post(url).header(header::CONTENT_TYPE, "text/plain").body(Body::from("{}")).unwrap()).await;
    assert_error(&r, 415, "unsupported_media_type");
    let r = call(
        &app,
        Request::post(url)
            .header(header::CONTENT_TYPE, "application/json; charset=utf-8")
            .body(Body::from(r#"{"input": {"who": "a"}}"#))
            .unwrap(),
    )
    .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "parameters of the content type are fine: {}", r.text);

    // Body size.
    let big = json!({"input": {"who": "x".repeat(2000)}}).to_string();
    let r = call(&small, post_json(url, big.clone())).await;
    assert_error(&r, 413, "payload_too_large");
    let chunks = futures::stream::iter(vec![Ok::<_, std::io::Error>(big.into_bytes())]);
    let r =
        call(&small, Request::post(url).header(header::CONTENT_TYPE, "application/json").body(Body::from_stream(chunks)).unwrap()).await;
    assert_error(&r, 413, "payload_too_large");

    // Unknown workflow, with a suggestion.
    let r = call(&app, post_json("/v1/workflows/gret/runs", "{}")).await;
    assert_error(&r, 404, "unknown_workflow");
    assert_eq!(r.body["error"]["details"]["did_you_mean"], "greet", "{}", r.text);

    // Input against the input schema: the message names the property.
    let r = call(&app, post_json(url, r#"{"input": {}}"#)).await;
    assert_error(&r, 422, "invalid_input");
    assert!(r.body["error"]["message"].as_str().unwrap().contains("`who`"), "{}", r.text);
    let r = call(&app, post_json(url, r#"{"input": {"who": 5}}"#)).await;
    assert_error(&r, 422, "invalid_input");
    assert_eq!(r.body["error"]["details"]["pointer"], "/who", "{}", r.text);
    assert!(r.body["error"]["message"].as_str().unwrap().contains("who"), "{}", r.text);
    let r = call(&app, post_json(url, r#"{"input": {"who": "a", "whom": "b"}}"#)).await;
    assert_error(&r, 422, "invalid_input");
    assert!(r.body["error"]["message"].as_str().unwrap().contains("`whom`"), "{}", r.text);

    // Backends.
    let r = call(&app, post_json(url, r#"{"input": {"who": "a"}, "backend": "temporal"}"#)).await;
    assert_error(&r, 422, "unknown_backend");
    assert_eq!(r.body["error"]["details"], json!({"backend": "temporal", "known": ["local"]}));
    let r = call(&app, post_json("/v1/workflows/py-add/runs", "{}")).await;
    assert_error(&r, 422, "backend_refused");
    assert_eq!(r.body["error"]["details"]["backend"], "local");

    // Nothing of the refused requests became a run.
    let r = call(&app, get("/v1/runs")).await;
    assert_eq!(r.body["runs"].as_array().unwrap().len(), 1, "only the accepted run: {}", r.text);
}

#[tokio::test]
async fn run_reads_and_errors() {
    let e = engine().await;
    let app = router(e.clone(), ApiOptions { max_wait: Duration::from_millis(200), ..Default::default() });
    let r = call(&app, get("/v1/runs/nope")).await;
    assert_error(&r, 404, "run_not_found");
    assert_eq!(r.body["error"]["details"], json!({"run_id": "nope"}));
    let r = call(&app, get("/v1/runs/nope?wait=1s")).await;
    assert_error(&r, 404, "run_not_found");

    let id = submit(&app, "slow", json!({})).await;
    for bad in ["30", "soon", "-1s"] {
        let r = call(&app, get(&format!("/v1/runs/{id}?wait={bad}"))).await;
        assert_error(&r, 400, "invalid_wait");
    }
    // The wait is capped by max_wait: the answer comes with the run still going.
    let started = std::time::Instant::now();
    let r = call(&app, get(&format!("/v1/runs/{id}?wait=30s"))).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.body["status"], "running", "{}", r.text);
    assert!(started.elapsed() < Duration::from_secs(10), "the wait was not capped: {:?}", started.elapsed());
    assert_eq!(r.body["tasks"]["after"]["status"], "pending");

    // A path segment that is not UTF-8.
    let r = call(&app, get("/v1/runs/%FF")).await;
    assert_error(&r, 400, "invalid_path");
    e.cancel(&id).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_a_run() {
    let e = engine().await;
    let app = app(&e);
    let id = submit(&app, "slow", json!({})).await;
    let r = call(&app, Request::post(format!("/v1/runs/{id}/cancel")).body(Body::empty()).unwrap()).await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text);
    assert_eq!(r.body["run_id"], id.as_str());
    // The answer shows the run as the cancel found it: on a loaded machine
    // its first task may not have started yet.
    assert!(["queued", "running", "cancelled"].contains(&r.body["status"].as_str().unwrap()), "{}", r.text);
    let r = call(&app, get(&format!("/v1/runs/{id}?wait=30s"))).await;
    assert_eq!(r.body["status"], "cancelled", "{}", r.text);
    assert_eq!(r.body["tasks"]["nap"]["status"], "cancelled");
    assert_eq!(r.body["tasks"]["after"]["status"], "cancelled");

    // Again: the run has finished, and the answer says so with its status.
    let r = call(&app, Request::post(format!("/v1/runs/{id}/cancel")).body(Body::empty()).unwrap()).await;
    assert_error(&r, 409, "run_finished");
    assert_eq!(r.body["error"]["details"], json!({"run_id": id, "status": "cancelled"}), "{}", r.text);
    assert!(r.body["error"]["message"].as_str().unwrap().contains("cancelled"), "{}", r.text);

    let r = call(&app, Request::post("/v1/runs/nope/cancel").body(Body::empty()).unwrap()).await;
    assert_error(&r, 404, "run_not_found");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_a_finished_run_is_a_conflict() {
    let e = engine().await;
    let app = app(&e);
    let id = submit(&app, "greet", json!({"input": {"who": "ada"}})).await;
    let r = call(&app, get(&format!("/v1/runs/{id}?wait=30s"))).await;
    assert_eq!(r.body["status"], "succeeded", "{}", r.text);
    let r = call(&app, Request::post(format!("/v1/runs/{id}/cancel")).body(Body::empty()).unwrap()).await;
    assert_error(&r, 409, "run_finished");
    assert_eq!(r.body["error"]["details"], json!({"run_id": id, "status": "succeeded"}), "{}", r.text);
    assert!(r.body["error"]["message"].as_str().unwrap().contains("succeeded"), "{}", r.text);
    // The run is left as it was.
    let r = call(&app, get(&format!("/v1/runs/{id}"))).await;
    assert_eq!(r.body["status"], "succeeded", "{}", r.text);
    // The engine facade answers the same way for every backend.
    match e.cancel(&id).await {
        Err(taskweave::engine::EngineError::RunFinished { run_id, status }) => {
            assert_eq!((run_id.as_str(), status.as_str()), (id.as_str(), "succeeded"))
        }
        other => panic!("expected RunFinished, got {other:?}"),
    }
    e.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_runs_with_filters() {
    let e = engine().await;
    let app = app(&e);
    let mut ids = Vec::new();
    for who in ["a", "b", "c"] {
        ids.push(submit(&app, "greet", json!({"input": {"who": who}})).await);
    }
    for id in &ids {
        assert_eq!(call(&app, get(&format!("/v1/runs/{id}?wait=30s"))).await.body["status"], "succeeded");
    }
    let slow = submit(&app, "slow", json!({})).await;
    // History is written in the background: wait for it.
    eventually("the history to hold every run", WAIT, POLL, || async {
        let r = call(&app, get("/v1/runs?workflow=greet&status=succeeded")).await;
        (r.body["runs"].as_array()?.len() == 3).then_some(r.body)
    })
    .await;
    let r = call(&app, get("/v1/runs?workflow=greet&status=succeeded&limit=2")).await;
    assert_eq!(r.status, StatusCode::OK);
    let runs = r.body["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 2);
    assert!(runs.iter().all(|x| x["workflow"] == "greet" && x["status"] == "succeeded" && x["backend"] == "local"), "{}", r.text);
    let r = call(&app, get("/v1/runs?workflow=slow")).await;
    assert_eq!(r.body["runs"][0]["run_id"], slow.as_str(), "{}", r.text);
    let r = call(&app, get("/v1/runs?status=")).await;
    assert_eq!(r.body["runs"].as_array().unwrap().len(), 4, "an empty filter is no filter: {}", r.text);

    let r = call(&app, get("/v1/runs?status=done")).await;
    assert_error(&r, 400, "invalid_query");
    assert_eq!(r.body["error"]["details"]["parameter"], "status");
    for bad in ["0", "-1", "x", "1001"] {
        let r = call(&app, get(&format!("/v1/runs?limit={bad}"))).await;
        assert_error(&r, 400, "invalid_query");
        assert_eq!(r.body["error"]["details"]["parameter"], "limit");
    }
    e.cancel(&slow).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workflows_and_file_status() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("greet.yaml"), GREET).unwrap();
    std::fs::write(dir.path().join("broken.yaml"), "version: 1\nname: broken\ntasks:\n  - {name: a, uses: echo, parents: [b]}\n").unwrap();
    let mut config = Config::default();
    config.engine.workflows = vec![dir.path().to_path_buf()];
    let e = EngineBuilder::new().config(config).store("sqlite::memory:").build().await.unwrap();
    e.register_workflow(workflow(SLOW));
    let app = app(&e);
    e.load_workflows();

    let r = call(&app, get("/v1/workflows")).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let names: Vec<&str> = r.body["workflows"].as_array().unwrap().iter().map(|w| w["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["greet", "slow"]);
    let greet = &r.body["workflows"][0];
    assert_eq!(greet["tasks"], 3);
    assert_eq!(greet["description"], "Say hello");
    assert!(greet["file"].as_str().unwrap().ends_with("greet.yaml"));
    assert!(greet["version"].as_str().unwrap().starts_with("sha256:"));
    let files = r.body["files"].as_array().unwrap();
    assert_eq!(files.len(), 2, "{}", r.text);
    assert_eq!(r.body["folders"], json!([{"path": dir.path().display().to_string(), "state": "ok", "error": null}]));
    let broken = files.iter().find(|f| f["workflow"] == "broken").unwrap();
    assert_eq!(broken["last_attempt"]["ok"], false);
    assert_eq!(broken["active_version"], Value::Null);
    let d = &broken["last_attempt"]["diagnostics"][0];
    assert_eq!((d["code"].as_str(), d["line"].as_u64(), d["column"].as_u64()), (Some("unknown-parent"), Some(4), Some(37)), "{d}");

    let r = call(&app, get("/v1/workflows/greet")).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let w = &r.body;
    assert_eq!(w["name"], "greet");
    assert_eq!(w["description"], "Say hello");
    assert_eq!(w["input"]["required"], json!(["who"]));
    assert_eq!(
        w["tasks"][0],
        json!({"name": "hello", "parents": [], "action": "uses", "handler": "echo", "timeout": null,
        "retry": {"attempts": 1, "delay": "1s", "backoff": 2.0, "max_delay": "1h"}}),
        "{}",
        w["tasks"][0]
    );
    assert_eq!(w["tasks"][1]["parents"], json!(["hello"]));
    assert_eq!(w["tasks"][1]["timeout"], "10s");
    assert_eq!(w["definition"]["tasks"][1]["name"], "shout");
    assert_eq!(w["files"][0]["last_attempt"]["ok"], true);
    assert_eq!(w["files"][0]["active_version"], w["version"]);
    assert!(w["file"].as_str().unwrap().ends_with("greet.yaml"));

    // A workflow registered by the program has no file.
    let r = call(&app, get("/v1/workflows/slow")).await;
    assert_eq!(r.body["files"], json!([]));

    let r = call(&app, get("/v1/workflows/greeet")).await;
    assert_error(&r, 404, "unknown_workflow");
    assert_eq!(r.body["error"]["details"], json!({"workflow": "greeet", "did_you_mean": "greet"}));
    let r = call(&app, get("/v1/workflows/zzzzzzzz")).await;
    assert_error(&r, 404, "unknown_workflow");
    assert_eq!(r.body["error"]["details"]["did_you_mean"], Value::Null);
    let r = call(&app, get("/v1/workflows/broken")).await;
    assert_error(&r, 404, "unknown_workflow");

    // A reload reaches the metrics.
    std::fs::write(dir.path().join("broken.yaml"), "version: 1\nname: broken\ntasks:\n  - {name: a, uses: echo}\n").unwrap();
    e.registry().load_all();
    assert_eq!(call(&app, get("/v1/workflows/broken")).await.status, StatusCode::OK);
    eventually("the reload in /metrics", WAIT, POLL, || async {
        let t = call(&app, get("/metrics")).await.text;
        t.contains(r#"taskweave_reloads_total{outcome="success"} 1"#).then_some(Value::Null)
    })
    .await;
}

/// Reads server-sent events until `done` says so; each event as (name, data).
async fn read_events(body: Body, mut done: impl FnMut(&str, &Value) -> bool) -> Vec<(String, Value)> {
    let mut body = body;
    let mut buf = String::new();
    let mut seen = Vec::new();
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        while let Some(end) = buf.find("\n\n") {
            let block: String = buf.drain(..end + 2).collect();
            let (mut name, mut data) = (String::from("message"), String::new());
            for line in block.lines() {
                if let Some(v) = line.strip_prefix("event:") {
                    name = v.trim().to_string();
                } else if let Some(v) = line.strip_prefix("data:") {
                    data.push_str(v.trim_start());
                }
            }
            if data.is_empty() {
                continue; // a keep-alive comment
            }
            let data: Value = serde_json::from_str(&data).expect("event data is JSON");
            let stop = done(&name, &data);
            seen.push((name, data));
            if stop {
                return seen;
            }
        }
        let frame =
            tokio::time::timeout_at(deadline, body.frame()).await.expect("no matching event in time").expect("the stream ended").unwrap();
        if let Ok(data) = frame.into_data() {
            buf.push_str(std::str::from_utf8(&data).unwrap());
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_stream_run_and_task_transitions() {
    let e = engine().await;
    let app = app(&e);
    let resp = app.clone().oneshot(get("/v1/events")).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()[header::CONTENT_TYPE], "text/event-stream");
    // Another stream narrowed to one workflow.
    let narrowed = app.clone().oneshot(get("/v1/events?workflow=slow")).await.unwrap();

    let id = submit(&app, "greet", json!({"input": {"who": "ada"}})).await;
    let seen = read_events(resp.into_body(), |name, d| name == "run" && d["run_id"] == id.as_str() && d["status"] == "succeeded").await;
    let mine: Vec<&(String, Value)> = seen.iter().filter(|(_, d)| d["run_id"] == id.as_str()).collect();
    assert!(mine.iter().any(|(n, d)| n == "run" && d["status"] == "running" && d["task"].is_null()), "{seen:?}");
    for task in ["hello", "shout", "also"] {
        assert!(mine.iter().any(|(n, d)| n == "task" && d["task"] == task && d["status"] == "running"), "{task}: {seen:?}");
        assert!(mine.iter().any(|(n, d)| n == "task" && d["task"] == task && d["status"] == "succeeded"), "{task}: {seen:?}");
    }
    let last = &mine.last().unwrap().1;
    assert_eq!(last["workflow"], "greet");

    // The narrowed stream saw nothing of greet; it sees slow's run.
    let slow = submit(&app, "slow", json!({})).await;
    let seen = read_events(narrowed.into_body(), |name, _| name == "run").await;
    assert!(seen.iter().all(|(_, d)| d["workflow"] == "slow"), "{seen:?}");
    assert_eq!(seen.last().unwrap().1["run_id"], slow.as_str());
    e.cancel(&slow).await.unwrap();

    // Reloads too.
    let resp = app.clone().oneshot(get("/v1/events")).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("x.yaml"), "version: 1\nname: from-file\ntasks: [{name: a, uses: echo}]\n").unwrap();
    e.registry().reload_paths(&[dir.path().join("x.yaml")]);
    let seen = read_events(resp.into_body(), |name, _| name == "reload").await;
    assert_eq!(seen.last().unwrap().1["updated"], json!(["from-file"]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_falls_behind_skips_events_and_never_blocks_runs() {
    let e = EngineBuilder::new().without_store().build().await.unwrap();
    e.register_workflow(workflow(GREET));
    let app = app(&e);
    let resp = app.clone().oneshot(get("/v1/events")).await.unwrap();
    // 8 events per run; the channel keeps 4096: the unread stream falls behind.
    let mut ids = Vec::new();
    for i in 0..600 {
        let opts = taskweave::RunOptions { input: Some(json!({"who": format!("w{i}")})), ..Default::default() };
        ids.push(e.run_workflow("greet", opts).await.unwrap());
    }
    for id in &ids {
        assert_eq!(e.get_result(id, Some(WAIT)).await.unwrap().status.as_str(), "succeeded", "runs go on while a client lags");
    }
    let seen = read_events(resp.into_body(), |name, _| name == "lagged").await;
    let (name, data) = &seen[0];
    assert_eq!(name, "lagged", "the first thing a lagging client hears: {seen:?}");
    assert!(data["skipped"].as_u64().unwrap() > 0, "{data}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_runs_and_tasks() {
    let e = engine().await;
    let app = app(&e);
    let before = call(&app, get("/metrics")).await;
    assert_eq!(before.status, StatusCode::OK);
    assert_eq!(before.headers[header::CONTENT_TYPE], "text/plain; version=0.0.4; charset=utf-8");
    assert!(before.text.contains("taskweave_events_missed_total 0"), "{}", before.text);

    let id = submit(&app, "greet", json!({"input": {"who": "ada"}})).await;
    assert_eq!(call(&app, get(&format!("/v1/runs/{id}?wait=30s"))).await.body["status"], "succeeded");
    let text = eventually("the run in /metrics", WAIT, POLL, || async {
        let t = call(&app, get("/metrics")).await.text;
        t.contains(r#"taskweave_runs_finished_total{workflow="greet",backend="local",status="succeeded"} 1"#).then_some(Value::String(t))
    })
    .await;
    let text = text.as_str().unwrap();
    assert!(text.contains(r#"taskweave_runs_started_total{workflow="greet",backend="local"} 1"#), "{text}");
    assert!(text.contains(r#"taskweave_task_duration_seconds_count{workflow="greet",status="succeeded"} 3"#), "{text}");
    assert!(text.contains(r#"taskweave_task_duration_seconds_bucket{workflow="greet",status="succeeded",le="+Inf"} 3"#), "{text}");
    assert!(text.contains(r#"taskweave_active_runs{workflow="greet"} 0"#), "{text}");

    // A run in flight is active; a cancelled one is counted as such.
    let slow = submit(&app, "slow", json!({})).await;
    eventually("the slow run to be active and counted as started", WAIT, POLL, || async {
        let t = call(&app, get("/metrics")).await.text;
        (t.contains(r#"taskweave_active_runs{workflow="slow"} 1"#)
            && t.contains(r#"taskweave_runs_started_total{workflow="slow",backend="local"} 1"#))
        .then_some(Value::Null)
    })
    .await;
    e.cancel(&slow).await.unwrap();
    eventually("the cancelled run in /metrics", WAIT, POLL, || async {
        let t = call(&app, get("/metrics")).await.text;
        (t.contains(r#"taskweave_runs_finished_total{workflow="slow",backend="local",status="cancelled"} 1"#)
            && t.contains(r#"taskweave_active_runs{workflow="slow"} 0"#))
        .then_some(Value::Null)
    })
    .await;

    // Each router has its own registry.
    let other = router(e.clone(), ApiOptions::default());
    assert!(!call(&other, get("/metrics")).await.text.contains(r#"workflow="greet""#));
}

#[tokio::test]
async fn auth_with_a_token() {
    let e = engine().await;
    let app = router(e.clone(), ApiOptions { token: Some("s3cret-token".into()), ..Default::default() });
    let with = |req: Request<Body>, auth: &str| {
        let (mut parts, body) = req.into_parts();
        parts.headers.insert(header::AUTHORIZATION, auth.parse().unwrap());
        Request::from_parts(parts, body)
    };

    let r = call(&app, get("/healthz")).await;
    assert_eq!(r.status, StatusCode::OK, "healthz never needs the token");

    for uri in ["/v1/workflows", "/v1/runs", "/v1/runs/x", "/metrics", "/openapi.json", "/v1/events", "/nowhere"] {
        let r = call(&app, get(uri)).await;
        assert_error(&r, 401, "unauthorized");
        assert_eq!(r.headers[header::WWW_AUTHENTICATE], "Bearer");
        for wrong in ["Bearer s3cret", "Bearer s3cret-token2", "Basic s3cret-token", "s3cret-token", "Bearer "] {
            let r = call(&app, with(get(uri), wrong)).await;
            assert_error(&r, 401, "unauthorized");
        }
    }
    let r = call(&app, post_json("/v1/workflows/greet/runs", r#"{"input": {"who": "a"}}"#)).await;
    assert_error(&r, 401, "unauthorized");
    assert!(!r.text.contains("s3cret"));

    let r = call(&app, with(get("/v1/workflows"), "Bearer s3cret-token")).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let r = call(&app, with(get("/v1/workflows"), "bearer s3cret-token")).await;
    assert_eq!(r.status, StatusCode::OK, "the scheme is case-insensitive");
    let r = call(&app, with(post_json("/v1/workflows/greet/runs", r#"{"input": {"who": "a"}}"#), "Bearer s3cret-token")).await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text);
    let r = call(&app, with(get("/nowhere"), "Bearer s3cret-token")).await;
    assert_error(&r, 404, "not_found");

    // Without a token, nothing is needed.
    let open = router(e.clone(), ApiOptions::default());
    assert_eq!(call(&open, get("/v1/workflows")).await.status, StatusCode::OK);
}

#[tokio::test]
async fn unknown_routes_and_methods() {
    let e = engine().await;
    let app = app(&e);
    let r = call(&app, get("/v2/workflows")).await;
    assert_error(&r, 404, "not_found");
    assert_eq!(r.body["error"]["details"], json!({"method": "GET", "path": "/v2/workflows"}));
    for uri in ["/v1/runs/", "/v1/runs/x/y", "/v1/workflows/greet/runs/x"] {
        let r = call(&app, get(uri)).await;
        assert_error(&r, 404, "not_found");
    }
    // An empty name is a name no workflow has.
    let r = call(&app, post_json("/v1/workflows//runs", "{}")).await;
    assert_error(&r, 404, "unknown_workflow");
    let r = call(&app, get("/v1/workflows/")).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "{}", r.text);

    let r = call(&app, Request::delete("/v1/runs").body(Body::empty()).unwrap()).await;
    assert_error(&r, 405, "method_not_allowed");
    assert_eq!(r.headers[header::ALLOW], "GET,HEAD");
    let r = call(&app, get("/v1/workflows/greet/runs")).await;
    assert_error(&r, 405, "method_not_allowed");
    assert_eq!(r.headers[header::ALLOW], "POST");
    let r = call(&app, Request::put("/healthz").body(Body::empty()).unwrap()).await;
    assert_error(&r, 405, "method_not_allowed");
}

#[tokio::test]
async fn store_unavailable_is_a_503() {
    let e = engine().await;
    let app = app(&e);
    e.store().unwrap().close().await;
    let r = call(&app, get("/v1/runs")).await;
    assert_error(&r, 503, "store_unavailable");
    assert_eq!(r.headers[header::RETRY_AFTER], "1");
    let r = call(&app, get("/v1/runs/0193-never")).await;
    assert_error(&r, 503, "store_unavailable");
}

const ROUTED: &str = r#"
version: 1
name: routed
backend:
  flag: task_abstraction_enabled
  variants: {new: next, legacy: legacy}
  default: legacy
tasks:
  - {name: a, uses: echo}
"#;

const FLAGS: &str = r#"
version: "1.4"
flags:
  - key: task_abstraction_enabled
    enabled: true
    variants: [{key: legacy, default: true}, {key: new}]
    rules:
      - segment: beta
        distributions: [{variant: new, rollout: 100}]
segments:
  - key: beta
    constraints:
      - {type: STRING_COMPARISON_TYPE, property: organization_id, operator: eq, value: beta_org}
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routed_runs_and_the_migration_dashboard() {
    let cfg =
        Config::parse("[engine]\ndefault_backend = \"legacy\"\n[backends.legacy]\nkind = \"local\"\n[backends.next]\nkind = \"local\"\n")
            .unwrap();
    let features = taskweave::flags::file::load_str("features.yml", FLAGS).features.expect("valid flags");
    let e = EngineBuilder::new()
        .config(cfg)
        .store("sqlite::memory:")
        .flags(taskweave::flags::FlagSource::from_features(features))
        .build()
        .await
        .expect("engine");
    e.register_workflow(workflow(ROUTED));
    let app = app(&e);

    // The decision comes back with the accepted run, and stays on it.
    let r = call(
        &app,
        post_json("/v1/workflows/routed/runs", json!({"entity_id": "u1", "context": {"organization_id": "beta_org"}}).to_string()),
    )
    .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text);
    assert_eq!(r.body["backend"], "next");
    assert_eq!(r.body["routing"]["flag"], "task_abstraction_enabled");
    assert_eq!(r.body["routing"]["variant"], "new");
    assert_eq!(r.body["routing"]["reason"], "MATCH");
    assert_eq!(r.body["routing"]["backend"], "next");
    assert_eq!(r.body["routing"]["segment_keys"], json!(["beta"]));
    let id = r.body["run_id"].as_str().unwrap().to_string();
    let other = submit(&app, "routed", json!({"entity_id": "u2", "context": {"organization_id": "acme"}})).await;
    for id in [&id, &other] {
        eventually("the run to finish", WAIT, POLL, || async {
            let r = call(&app, get(&format!("/v1/runs/{id}"))).await;
            (r.body["status"] == "succeeded").then_some(r.body)
        })
        .await;
    }
    let run = call(&app, get(&format!("/v1/runs/{other}"))).await.body;
    assert_eq!(
        (run["backend"].as_str(), run["routing"]["variant"].as_str(), run["routing"]["reason"].as_str()),
        (Some("legacy"), Some("legacy"), Some("DEFAULT"))
    );

    let m = call(&app, get("/v1/migration?since=1h")).await;
    assert_eq!(m.status, StatusCode::OK, "{}", m.text);
    assert_eq!(m.body["window"], "1h");
    assert_eq!(m.body["total"], 2);
    let backends: Vec<(String, u64)> = m.body["backends"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| (b["backend"].as_str().unwrap().to_string(), b["runs"].as_u64().unwrap()))
        .collect();
    assert_eq!(backends, vec![("legacy".to_string(), 1), ("next".to_string(), 1)]);
    assert_eq!(m.body["backends"][0]["share"], 50.0);
    assert_eq!(m.body["backends"][1]["success_rate"], 100.0);
    assert_eq!(m.body["variants"].as_array().unwrap().len(), 2);
    assert_eq!((m.body["fallbacks"].as_u64(), m.body["flag_errors"].as_u64()), (Some(0), Some(0)));
    assert_eq!(m.body["flags"]["ok"], true);
    let m = call(&app, get("/v1/migration?workflow=nothing")).await;
    assert_eq!((m.body["total"].as_u64(), m.body["window"].as_str()), (Some(0), Some("1day")));
    assert_error(&call(&app, get("/v1/migration?since=soon")).await, 400, "invalid_query");
    assert_error(&call(&app, get("/v1/migration?since=0s")).await, 400, "invalid_query");

    let metrics = eventually("routed runs in the metrics", WAIT, POLL, || async {
        let text = call(&app, get("/metrics")).await.text;
        text.contains("taskweave_routed_runs_finished_total").then_some(Value::String(text))
    })
    .await;
    let text = metrics.as_str().unwrap();
    assert!(text.contains(r#"taskweave_routing_decisions_total{workflow="routed",flag="task_abstraction_enabled",variant="new",reason="MATCH",backend="next"} 1"#), "{text}");
    e.shutdown().await;
}

/// A succeeded run's result carries the workflow's `output:`, its values
/// typed; a workflow that declares none has no `output` in its results.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_results_carry_the_workflow_output() {
    let e = engine().await;
    e.register_workflow(workflow(
        r#"
version: 1
name: summed
tasks:
  - {name: split, uses: echo, with: {pages: "{{input.pages}}"}}
  - {name: count, parents: [split], uses: echo, with: {n: 2}}
output:
  pages: "{{tasks.split.output.pages}}"
  n: "{{tasks.count.output.n}}"
  about: "{{workflow.name}} for {{context.user_id}}"
"#,
    ));
    let app = app(&e);
    let id = submit(&app, "summed", json!({"input": {"pages": ["a", "b"]}, "context": {"user_id": "7"}})).await;
    let r = call(&app, get(&format!("/v1/runs/{id}?wait=30s"))).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.body["status"], "succeeded", "{}", r.text);
    assert_eq!(r.body["output"], json!({"pages": ["a", "b"], "n": 2, "about": "summed for 7"}), "{}", r.text);
    let id = submit(&app, "greet", json!({"input": {"who": "ada"}})).await;
    let r = call(&app, get(&format!("/v1/runs/{id}?wait=30s"))).await;
    assert_eq!(r.body["status"], "succeeded", "{}", r.text);
    assert!(r.body.get("output").is_none(), "{}", r.text);
    e.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotency_keys_start_one_run() {
    let e = engine().await;
    let app = app(&e);
    let keyed = |key: &str, body: &str| {
        Request::post("/v1/workflows/greet/runs")
            .header(header::CONTENT_TYPE, "application/json")
            .header("Idempotency-Key", key)
            .body(Body::from(body.to_string()))
            .unwrap()
    };
    // 50 identical requests at once: one run, started by one of them.
    let body = r#"{"input": {"who": "ada", "times": 2}, "context": {"org": "acme"}}"#;
    let answers = futures::future::join_all((0..50).map(|_| call(&app, keyed("order-1", body)))).await;
    let ids: std::collections::BTreeSet<&str> = answers.iter().map(|r| r.body["run_id"].as_str().expect("a run id")).collect();
    assert_eq!(ids.len(), 1, "{ids:?}");
    assert_eq!(answers.iter().filter(|r| r.status == StatusCode::ACCEPTED).count(), 1);
    assert_eq!(answers.iter().filter(|r| r.status == StatusCode::OK).count(), 49);
    let id = ids.into_iter().next().unwrap().to_string();
    let runs = e.list_runs(&taskweave::store::RunFilter { workflow: Some("greet".into()), ..Default::default() }).await.unwrap();
    assert_eq!(runs.len(), 1, "{runs:?}");
    // The same request written in another key order is the same request.
    let r = call(&app, keyed("order-1", r#"{"context": {"org": "acme"}, "input": {"times": 2, "who": "ada"}}"#)).await;
    assert_eq!((r.status, r.body["run_id"].as_str()), (StatusCode::OK, Some(id.as_str())), "{}", r.text);
    // Another body with the key: refused, naming the run it started.
    let r = call(&app, keyed("order-1", r#"{"input": {"who": "bob"}}"#)).await;
    assert_error(&r, 409, "idempotency_conflict");
    assert_eq!(r.body["error"]["details"]["run_id"], id.as_str());
    // A bad key, and a request whose input is refused, which leaves its key free.
    let r = call(&app, keyed(&"k".repeat(256), body)).await;
    assert_error(&r, 400, "invalid_idempotency_key");
    let r = call(&app, keyed("order-2", r#"{"input": {"nobody": 1}}"#)).await;
    assert_error(&r, 422, "invalid_input");
    let r = call(&app, keyed("order-2", body)).await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text);
    assert_ne!(r.body["run_id"].as_str(), Some(id.as_str()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retrying_a_run_over_http() {
    let e = engine().await;
    e.register_workflow(workflow(
        "version: 1\nname: flaky\ntasks:\n  - {name: a, uses: echo, with: {v: 1}}\n  - {name: b, parents: [a], uses: fail, with: {message: boom}}\n",
    ));
    let app = app(&e);
    let id = submit(&app, "flaky", json!({})).await;
    let r = call(&app, get(&format!("/v1/runs/{id}?wait=30s"))).await;
    assert_eq!(r.body["status"], "failed", "{}", r.text);
    let post = |uri: String| Request::post(uri).body(Body::empty()).unwrap();
    let r = call(&app, post(format!("/v1/runs/{id}/retry"))).await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text);
    let again = r.body["run_id"].as_str().unwrap().to_string();
    assert_eq!(r.headers[header::LOCATION], format!("/v1/runs/{again}"));
    let r = call(&app, get(&format!("/v1/runs/{again}?wait=30s"))).await;
    assert_eq!((r.body["status"].as_str(), r.body["retry_of"].as_str()), (Some("failed"), Some(id.as_str())), "{}", r.text);
    assert_eq!(r.body["tasks"]["a"]["attempts"], 0, "reused: {}", r.text);
    assert_eq!(r.body["tasks"]["b"]["attempts"], 1, "{}", r.text);
    let r = call(&app, post(format!("/v1/runs/{id}/retry?from=nope"))).await;
    assert_error(&r, 409, "not_retryable");
    let r = call(&app, post("/v1/runs/no-such-run/retry".into())).await;
    assert_error(&r, 404, "run_not_found");
}

/// Without a run store, keys hold in the engine's memory.
#[tokio::test]
async fn idempotency_keys_without_a_store() {
    let e = EngineBuilder::new().without_store().build().await.expect("engine");
    e.register_workflow(workflow(GREET));
    let opts =
        |who: &str| RunOptions { input: Some(serde_json::json!({"who": who})), idempotency_key: Some("k".into()), ..Default::default() };
    let first = e.start_workflow("greet", opts("ada")).await.unwrap();
    assert!(first.created);
    let again = e.start_workflow("greet", opts("ada")).await.unwrap();
    assert_eq!((again.run_id.as_str(), again.created), (first.run_id.as_str(), false));
    let err = e.start_workflow("greet", opts("bob")).await.unwrap_err();
    assert!(matches!(&err, taskweave::EngineError::IdempotencyConflict { run_id, .. } if *run_id == first.run_id), "{err}");
}

#[tokio::test]
async fn the_openapi_document_covers_every_route() {
    let e = engine().await;
    let app = app(&e);
    let r = call(&app, get("/openapi.json")).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.headers[header::CONTENT_TYPE], "application/json");
    let doc = r.body;
    assert_eq!(doc["openapi"], "3.1.0");
    let paths = doc["paths"].as_object().unwrap();

    // Every route of the router is documented, with its path parameters...
    let routes = taskweave::api::routes();
    for (method, path) in &routes {
        let op = &paths.get(*path).unwrap_or_else(|| panic!("{path} is not documented"))[method.as_str().to_lowercase()];
        assert!(op.is_object(), "{method} {path} is not documented");
        for p in path.split('/').filter_map(|s| s.strip_prefix('{')?.strip_suffix('}')) {
            assert!(
                op["parameters"].as_array().into_iter().flatten().any(|x| x["name"] == p && x["in"] == "path"),
                "{method} {path}: parameter {p} is not documented"
            );
        }
        assert!(op["responses"].as_object().is_some_and(|r| !r.is_empty()), "{method} {path}: no responses");
    }
    // ... and everything documented is routed.
    let methods = ["get", "post", "put", "patch", "delete"];
    for (path, item) in paths {
        for m in methods.iter().filter(|m| item.get(**m).is_some()) {
            let method = Method::from_bytes(m.to_uppercase().as_bytes()).unwrap();
            assert!(routes.iter().any(|(rm, rp)| *rm == method && rp == path), "{m} {path} is documented but not routed");
            let uri = path.replace("{name}", "greet").replace("{id}", "nope");
            let req = Request::builder().method(method.clone()).uri(&uri).body(Body::empty()).unwrap();
            let resp = app.clone().oneshot(req).await.unwrap();
            assert!(![StatusCode::METHOD_NOT_ALLOWED].contains(&resp.status()), "{m} {uri}: {}", resp.status());
            if resp.status() == StatusCode::NOT_FOUND {
                let body: Value = serde_json::from_slice(&resp.into_body().collect().await.unwrap().to_bytes()).unwrap();
                assert_ne!(body["error"]["code"], "not_found", "{m} {uri} is not routed");
            }
        }
    }
    // Every error code is in the error schema.
    let codes = doc["components"]["schemas"]["Error"]["properties"]["error"]["properties"]["code"]["enum"].as_array().unwrap();
    for c in ErrorCode::ALL {
        assert!(codes.iter().any(|x| x == c.as_str()), "{c} is not documented");
        assert!(c.status().is_client_error() || c.status().is_server_error());
    }
    assert_eq!(codes.len(), ErrorCode::ALL.len());
}

/// The API throughput figure (not a test: it asserts nothing about speed).
/// `cargo test --release --test api -- --ignored --nocapture api_throughput`;
/// `API_BENCH_RUNS` and `API_BENCH_CONCURRENCY` change the load.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a benchmark: run it in release, by name"]
async fn api_throughput() {
    let var = |k: &str, d: usize| std::env::var(k).ok().and_then(|v| v.parse().ok()).unwrap_or(d);
    let report =
        taskweave::bench::api::api_throughput(var("API_BENCH_RUNS", 2000), var("API_BENCH_CONCURRENCY", 32)).await.expect("benchmark");
    println!("{report}");
    println!("{}", serde_json::to_string(&report).unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_moved_away_workflow_folder_is_listed_as_missing() {
    let base = tempfile::tempdir().unwrap();
    let flows = base.path().join("flows");
    std::fs::create_dir(&flows).unwrap();
    std::fs::write(flows.join("greet.yaml"), GREET).unwrap();
    let mut config = Config::default();
    config.engine.workflows = vec![flows.clone()];
    let e = EngineBuilder::new().config(config).store("sqlite::memory:").build().await.unwrap();
    let app = app(&e);
    e.load_workflows();
    let r = call(&app, get("/v1/workflows")).await;
    assert_eq!(r.body["folders"][0]["state"], "ok", "{}", r.text);

    std::fs::rename(&flows, base.path().join("moved")).unwrap();
    e.registry().load_all();
    let r = call(&app, get("/v1/workflows")).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body["workflows"], json!([]));
    assert_eq!(r.body["files"], json!([]));
    assert_eq!(r.body["folders"], json!([{"path": flows.display().to_string(), "state": "missing", "error": null}]), "{}", r.text);
}
