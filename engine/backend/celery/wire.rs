//! Celery's wire format over Redis, both directions: task messages of
//! protocol v2 as kombu's Redis transport LPUSHes them to a queue list, and
//! task results as Celery's Redis result backend stores and publishes them.
//!
//! Pure: no I/O. Written against real captures of Celery 5.x/kombu 5.x
//! (`shared/reference/celery-wire/`); the facts that the protocol page gets
//! wrong are noted where they matter (`timelimit` is `[hard, soft]`; the
//! body always has three elements; `delivery_tag` and `delivery_info` are
//! required or the message is lost).

use base64::Engine as _;
use serde_json::{Map, Value, json};
use time::OffsetDateTime;

/// kombu's separator between a queue name and its priority step.
const PRIORITY_SEP: &str = "\x06\x16";

/// The Redis list a message of `priority` goes to: kombu rounds the priority
/// down to a step of `[0, 3, 6, 9]`; step 0 is the queue name itself.
pub fn queue_key(queue: &str, priority: u8) -> String {
    match priority.min(9) {
        0..=2 => queue.to_string(),
        3..=5 => format!("{queue}{PRIORITY_SEP}3"),
        6..=8 => format!("{queue}{PRIORITY_SEP}6"),
        _ => format!("{queue}{PRIORITY_SEP}9"),
    }
}

/// The lists a worker BRPOPs for one queue, highest priority (step 0) first.
pub fn priority_keys(queue: &str) -> [String; 4] {
    [queue_key(queue, 0), queue_key(queue, 3), queue_key(queue, 6), queue_key(queue, 9)]
}

/// The key (and pub/sub channel) of a task's result.
pub fn result_key(task_id: &str) -> String {
    format!("celery-task-meta-{task_id}")
}

/// A task message to send.
#[derive(Debug, Clone, PartialEq)]
pub struct Outgoing {
    pub id: String,
    pub task: String,
    pub args: Vec<Value>,
    pub kwargs: Map<String, Value>,
    pub queue: String,
    pub priority: u8,
    /// `[hard, soft]` in seconds.
    pub timelimit: (Option<f64>, Option<f64>),
    pub root_id: Option<String>,
    pub parent_id: Option<String>,
    pub origin: String,
}

impl Outgoing {
    pub fn new(task: impl Into<String>, queue: impl Into<String>) -> Self {
        let id = uuid4().to_string();
        Outgoing {
            id,
            task: task.into(),
            args: Vec::new(),
            kwargs: Map::new(),
            queue: queue.into(),
            priority: 0,
            timelimit: (None, None),
            root_id: None,
            parent_id: None,
            origin: origin(),
        }
    }

    /// The queue element: the JSON text kombu's Redis transport LPUSHes.
    pub fn encode(&self) -> String {
        let body = json!([self.args, self.kwargs, {"callbacks": null, "errbacks": null, "chain": null, "chord": null}]);
        let body = base64::engine::general_purpose::STANDARD.encode(body.to_string());
        let repr = |v: &Value| v.to_string();
        json!({
            "body": body,
            "content-encoding": "utf-8",
            "content-type": "application/json",
            "headers": {
                "lang": "py",
                "task": self.task,
                "id": self.id,
                "shadow": null,
                "eta": null,
                "expires": null,
                "group": null,
                "group_index": null,
                "retries": 0,
                "timelimit": [self.timelimit.0, self.timelimit.1],
                "root_id": self.root_id.as_deref().unwrap_or(&self.id),
                "parent_id": self.parent_id,
                "argsrepr": repr(&Value::Array(self.args.clone())),
                "kwargsrepr": repr(&Value::Object(self.kwargs.clone())),
                "origin": self.origin,
                "ignore_result": false,
                "replaced_task_nesting": 0,
                "stamped_headers": null,
                "stamps": {},
            },
            "properties": {
                "correlation_id": self.id,
                "reply_to": "",
                "delivery_mode": 2,
                "delivery_info": {"exchange": "", "routing_key": self.queue},
                "priority": self.priority.min(9),
                "body_encoding": "base64",
                "delivery_tag": uuid4().to_string(),
            },
        })
        .to_string()
    }
}

/// A random (version 4) UUID, as Celery uses for task ids and delivery tags.
pub fn uuid4() -> uuid::Uuid {
    uuid::Builder::from_random_bytes(rand::random()).into_uuid()
}

/// `pid@host`, as Celery's `origin` header.
pub fn origin() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").map(|h| h.trim().to_string()).unwrap_or_else(|_| "localhost".into());
    format!("taskweave-{}@{host}", std::process::id())
}

/// A message taken from a queue list.
#[derive(Debug, Clone, PartialEq)]
pub struct Incoming {
    /// The element exactly as it was in the list (what goes to `unacked`).
    pub raw: String,
    pub delivery_tag: String,
    pub routing_key: String,
    pub exchange: String,
    pub priority: u8,
    pub redelivered: bool,
    /// `headers.id`, when there is one (needed to answer at all).
    pub id: Option<String>,
    /// `headers.task`.
    pub task: Option<String>,
    pub retries: u32,
    /// `[hard, soft]` seconds.
    pub timelimit: (Option<f64>, Option<f64>),
    pub root_id: Option<String>,
    /// `headers.ignore_result`: the caller wants no result stored.
    pub ignore_result: bool,
    /// `headers.eta`: not to run before.
    pub eta: Option<OffsetDateTime>,
    /// `headers.expires`: not to run after.
    pub expires: Option<OffsetDateTime>,
    /// The decoded `[args, kwargs, embed]`, or why it could not be decoded.
    pub body: Result<(Vec<Value>, Map<String, Value>), String>,
}

/// Why an element cannot even be bookkept (no delivery tag): Celery loses
/// such a message silently; taskweave says so in its log instead.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("undecodable queue element: {0}")]
pub struct Undecodable(pub String);

/// Decode a queue element. The envelope must be JSON with a delivery tag;
/// everything else that is wrong (content type, encoding, body shape) is
/// reported in [`Incoming::body`] so the worker can answer with a FAILURE.
pub fn decode(raw: &str) -> Result<Incoming, Undecodable> {
    let v: Value = serde_json::from_str(raw).map_err(|e| Undecodable(format!("not JSON: {e}")))?;
    let props = v.get("properties").and_then(Value::as_object).ok_or_else(|| Undecodable("no `properties`".into()))?;
    let delivery_tag =
        props.get("delivery_tag").and_then(Value::as_str).ok_or_else(|| Undecodable("no `properties.delivery_tag`".into()))?;
    let info = props.get("delivery_info").and_then(Value::as_object);
    let headers = v.get("headers").and_then(Value::as_object);
    let h = |k: &str| headers.and_then(|h| h.get(k));
    let limit = |i: usize| h("timelimit").and_then(|t| t.get(i)).and_then(Value::as_f64);
    let body = decode_body(&v);
    Ok(Incoming {
        raw: raw.to_string(),
        delivery_tag: delivery_tag.to_string(),
        routing_key: info.and_then(|i| i.get("routing_key")).and_then(Value::as_str).unwrap_or_default().to_string(),
        exchange: info.and_then(|i| i.get("exchange")).and_then(Value::as_str).unwrap_or_default().to_string(),
        priority: props.get("priority").and_then(Value::as_u64).unwrap_or(0).min(9) as u8,
        redelivered: h("redelivered").and_then(Value::as_bool).unwrap_or(false)
            || info.and_then(|i| i.get("redelivered")).and_then(Value::as_bool).unwrap_or(false),
        id: h("id").and_then(Value::as_str).map(str::to_string),
        task: h("task").and_then(Value::as_str).map(str::to_string),
        retries: h("retries").and_then(Value::as_u64).unwrap_or(0) as u32,
        timelimit: (limit(0), limit(1)),
        root_id: h("root_id").and_then(Value::as_str).map(str::to_string),
        ignore_result: h("ignore_result").and_then(Value::as_bool).unwrap_or(false),
        eta: h("eta").and_then(Value::as_str).and_then(parse_time),
        expires: h("expires").and_then(Value::as_str).and_then(parse_time),
        body,
    })
}

/// Celery's ISO 8601 times (`2030-01-01T12:00:00+00:00`, with or without
/// microseconds; naive ones are UTC).
fn parse_time(s: &str) -> Option<OffsetDateTime> {
    use time::format_description::well_known::Rfc3339;
    OffsetDateTime::parse(s, &Rfc3339).ok().or_else(|| OffsetDateTime::parse(&format!("{s}+00:00"), &Rfc3339).ok())
}

fn decode_body(v: &Value) -> Result<(Vec<Value>, Map<String, Value>), String> {
    let ct = v.get("content-type").and_then(Value::as_str).unwrap_or("");
    if ct != "application/json" {
        return Err(format!("content type `{ct}` is not supported; taskweave reads `application/json` messages only"));
    }
    let body = v.get("body").and_then(Value::as_str).ok_or("the message has no `body` string")?;
    let enc = v.pointer("/properties/body_encoding").and_then(Value::as_str).unwrap_or("base64");
    let bytes = match enc {
        "base64" => base64::engine::general_purpose::STANDARD.decode(body).map_err(|e| format!("the body is not base64: {e}"))?,
        other => return Err(format!("body encoding `{other}` is not supported (expected base64)")),
    };
    let parsed: Value = serde_json::from_slice(&bytes).map_err(|e| format!("the body is not JSON: {e}"))?;
    let Value::Array(mut parts) = parsed else {
        return Err("the body is not a JSON array `[args, kwargs, embed]` (protocol v2)".into());
    };
    if parts.len() != 3 {
        return Err(format!("the body has {} elements; protocol v2 needs three: `[args, kwargs, embed]`", parts.len()));
    }
    let kwargs = match parts.remove(1) {
        Value::Object(m) => m,
        Value::Null => Map::new(),
        other => return Err(format!("kwargs must be an object, not {other}")),
    };
    let args = match parts.remove(0) {
        Value::Array(a) => a,
        Value::Null => Vec::new(),
        other => return Err(format!("args must be an array, not {other}")),
    };
    Ok((args, kwargs))
}

/// Mark an element redelivered, as kombu does when it restores it.
pub fn mark_redelivered(raw: &str) -> String {
    match serde_json::from_str::<Value>(raw) {
        Ok(mut v) => {
            if let Some(h) = v.get_mut("headers").and_then(Value::as_object_mut) {
                h.insert("redelivered".into(), Value::Bool(true));
            }
            if let Some(i) = v.pointer_mut("/properties/delivery_info").and_then(Value::as_object_mut) {
                i.insert("redelivered".into(), Value::Bool(true));
            }
            v.to_string()
        }
        Err(_) => raw.to_string(),
    }
}

/// Celery's time format for `date_done`: ISO 8601 with microseconds and `+00:00`.
pub fn date_done(t: OffsetDateTime) -> String {
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:06}+00:00",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
        t.microsecond()
    )
}

/// A Python exception as Celery serialises it.
#[derive(Debug, Clone, PartialEq)]
pub struct PyError {
    pub exc_type: String,
    pub exc_module: Option<String>,
    pub message: String,
    pub traceback: Option<String>,
}

impl PyError {
    pub fn new(exc_type: &str, exc_module: &str, message: impl Into<String>) -> Self {
        PyError { exc_type: exc_type.into(), exc_module: Some(exc_module.into()), message: message.into(), traceback: None }
    }

    /// `ValueError: bad pdf`.
    pub fn summary(&self) -> String {
        if self.message.is_empty() { self.exc_type.clone() } else { format!("{}: {}", self.exc_type, self.message) }
    }
}

/// A task's outcome as stored in `celery-task-meta-<id>`.
#[derive(Debug, Clone, PartialEq)]
pub enum TaskOutcome {
    Success(Value),
    Failure(PyError),
    /// REVOKED (a `TaskRevokedError`).
    Revoked(PyError),
    /// PENDING/STARTED/RETRY: not final.
    NotReady(String),
}

/// The value written to `celery-task-meta-<id>` (and published on it).
pub fn encode_result(task_id: &str, outcome: &TaskOutcome, done: OffsetDateTime) -> String {
    let (status, result, traceback) = match outcome {
        TaskOutcome::Success(v) => ("SUCCESS", v.clone(), Value::Null),
        TaskOutcome::Failure(e) | TaskOutcome::Revoked(e) => (
            if matches!(outcome, TaskOutcome::Failure(_)) { "FAILURE" } else { "REVOKED" },
            json!({"exc_type": e.exc_type, "exc_message": [e.message], "exc_module": e.exc_module}),
            Value::String(
                e.traceback
                    .clone()
                    .unwrap_or_else(|| format!("Traceback (most recent call last):\n  (taskweave worker)\n{}\n", e.summary())),
            ),
        ),
        TaskOutcome::NotReady(s) => (s.as_str(), Value::Null, Value::Null),
    };
    json!({
        "status": status,
        "result": result,
        "traceback": traceback,
        "children": [],
        "date_done": date_done(done),
        "task_id": task_id,
    })
    .to_string()
}

/// Read a `celery-task-meta-<id>` value.
pub fn decode_result(raw: &str) -> Result<TaskOutcome, String> {
    let v: Value = serde_json::from_str(raw).map_err(|e| format!("the result is not JSON: {e}"))?;
    let status = v.get("status").and_then(Value::as_str).ok_or("the result has no `status`")?;
    let exc = || {
        let r = v.get("result").cloned().unwrap_or(Value::Null);
        let message = match r.get("exc_message") {
            Some(Value::Array(a)) => {
                a.iter().map(|x| x.as_str().map(str::to_string).unwrap_or_else(|| x.to_string())).collect::<Vec<_>>().join(", ")
            }
            Some(Value::String(s)) => s.clone(),
            Some(Value::Null) | None => String::new(),
            Some(other) => other.to_string(),
        };
        PyError {
            exc_type: r.get("exc_type").and_then(Value::as_str).unwrap_or("Exception").to_string(),
            exc_module: r.get("exc_module").and_then(Value::as_str).map(str::to_string),
            message,
            traceback: v.get("traceback").and_then(Value::as_str).map(str::to_string),
        }
    };
    Ok(match status {
        "SUCCESS" => TaskOutcome::Success(v.get("result").cloned().unwrap_or(Value::Null)),
        "FAILURE" => TaskOutcome::Failure(exc()),
        "REVOKED" => TaskOutcome::Revoked(exc()),
        other => TaskOutcome::NotReady(other.to_string()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn priority_lists_follow_kombu_steps() {
        assert_eq!(queue_key("q", 0), "q");
        assert_eq!(queue_key("q", 2), "q");
        assert_eq!(queue_key("q", 3), "q\x06\x163");
        assert_eq!(queue_key("q", 5), "q\x06\x163");
        assert_eq!(queue_key("q", 8), "q\x06\x166");
        assert_eq!(queue_key("q", 9), "q\x06\x169");
        assert_eq!(priority_keys("celery")[3], "celery\x06\x169");
    }

    #[test]
    fn encoded_messages_decode_to_what_was_sent() {
        let mut m = Outgoing::new("tasks.add", "celery");
        m.args = vec![json!(2), json!(3)];
        m.kwargs.insert("k".into(), json!("v"));
        m.priority = 5;
        m.timelimit = (Some(10.0), Some(8.0));
        let raw = m.encode();
        let i = decode(&raw).unwrap();
        assert_eq!(i.id.as_deref(), Some(m.id.as_str()));
        assert_eq!(i.task.as_deref(), Some("tasks.add"));
        assert_eq!(i.routing_key, "celery");
        assert_eq!(i.priority, 5);
        assert_eq!(i.timelimit, (Some(10.0), Some(8.0)));
        assert_eq!(i.body.unwrap(), (vec![json!(2), json!(3)], m.kwargs.clone()));
        let v: Value = serde_json::from_str(&raw).unwrap();
        let body = base64::engine::general_purpose::STANDARD.decode(v["body"].as_str().unwrap()).unwrap();
        let body: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(body.as_array().unwrap().len(), 3, "the body is always [args, kwargs, embed]");
        assert_eq!(body[2], json!({"callbacks": null, "errbacks": null, "chain": null, "chord": null}));
        assert!(v["properties"]["delivery_tag"].is_string());
    }

    #[test]
    fn bad_bodies_are_explained() {
        let mut v: Value = serde_json::from_str(&Outgoing::new("t", "q").encode()).unwrap();
        v["body"] = json!(base64::engine::general_purpose::STANDARD.encode("[[1], {}]"));
        let e = decode(&v.to_string()).unwrap().body.unwrap_err();
        assert!(e.contains("2 elements"), "{e}");
        v["content-type"] = json!("application/x-python-serialize");
        let e = decode(&v.to_string()).unwrap().body.unwrap_err();
        assert!(e.contains("application/x-python-serialize"), "{e}");
        assert!(decode("{\"body\": \"\"}").is_err(), "no delivery tag: cannot be bookkept");
        assert!(decode("nope").is_err());
    }

    /// Captured from real Celery: `tests/fixtures/celery/wire/` (see the
    /// README of the captures for how they were made).
    fn fixture(name: &str) -> Value {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/celery/wire").join(name);
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))).unwrap()
    }

    #[test]
    fn captured_messages_decode_as_celery_sent_them() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/celery/wire");
        let mut n = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let name = entry.unwrap().file_name().to_string_lossy().to_string();
            if !name.starts_with("msg.") {
                continue;
            }
            let f = fixture(&name);
            let d = &f["decoded"];
            let m = decode(f["raw"].as_str().unwrap()).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(m.id.as_deref(), d["headers"]["id"].as_str(), "{name}");
            assert_eq!(m.task.as_deref(), d["headers"]["task"].as_str(), "{name}");
            assert_eq!(m.delivery_tag, d["properties"]["delivery_tag"].as_str().unwrap(), "{name}");
            let (args, kwargs) = m.body.clone().unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(Value::Array(args), d["body_decoded"][0], "{name}");
            assert_eq!(Value::Object(kwargs), d["body_decoded"][1], "{name}");
            // The list Celery pushed it to is the one taskweave computes.
            assert_eq!(f["redis_key"].as_str().unwrap(), queue_key(&m.routing_key, m.priority), "{name}");
            assert_eq!(m.ignore_result, d["headers"]["ignore_result"] == json!(true), "{name}");
            if let Some(eta) = d["headers"]["eta"].as_str() {
                assert_eq!(m.eta, parse_time(eta), "{name}");
                assert!(m.eta.is_some(), "{name}: eta {eta}");
            }
            n += 1;
        }
        assert!(n >= 15, "only {n} captured messages");
    }

    #[test]
    fn messages_taskweave_sends_carry_every_field_celery_sends() {
        let captured = fixture("msg.plain_add.json")["decoded"].clone();
        let ours: Value = serde_json::from_str(&Outgoing::new("tasks.add", "capture").encode()).unwrap();
        for part in ["headers", "properties"] {
            let mut want: Vec<&String> = captured[part].as_object().unwrap().keys().collect();
            let mut got: Vec<&String> = ours[part].as_object().unwrap().keys().collect();
            want.sort();
            got.sort();
            assert_eq!(got, want, "{part}");
        }
        let mut top: Vec<&String> = ours.as_object().unwrap().keys().collect();
        top.sort();
        assert_eq!(top, ["body", "content-encoding", "content-type", "headers", "properties"]);
        assert_eq!(ours["properties"]["delivery_info"], json!({"exchange": "", "routing_key": "capture"}));
        assert_eq!(ours["properties"]["body_encoding"], "base64");
    }

    #[test]
    fn hand_built_and_restored_messages() {
        let minimal = fixture("handbuilt.minimal.json");
        let m = decode(&minimal.to_string()).unwrap();
        assert_eq!(m.body.unwrap(), (vec![json!(20), json!(22)], Map::new()));
        assert_eq!(m.retries, 0);
        let poison = std::fs::read_to_string(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/celery/wire/poison.no-embed.restored.json"),
        )
        .unwrap();
        let p = decode(poison.trim()).unwrap();
        assert!(p.redelivered, "kombu marks restored messages");
        assert!(p.body.unwrap_err().contains("2 elements"));
        let again = decode(&mark_redelivered(&Outgoing::new("t", "q").encode())).unwrap();
        assert!(again.redelivered);
    }

    #[test]
    fn captured_results_decode() {
        let published = fixture("runtime.pubsub.json");
        let ok = published[0]["data"].as_str().unwrap();
        assert_eq!(decode_result(ok).unwrap(), TaskOutcome::Success(json!(5)));
        match decode_result(published[1]["data"].as_str().unwrap()).unwrap() {
            TaskOutcome::Failure(e) => {
                assert_eq!(
                    (e.exc_type.as_str(), e.exc_module.as_deref(), e.message.as_str()),
                    ("ValueError", Some("builtins"), "captured")
                );
                assert!(e.traceback.unwrap().contains("raise ValueError(message)"));
            }
            other => panic!("{other:?}"),
        }
        let ext = fixture("result.extended.success.json");
        assert_eq!(decode_result(&ext.to_string()).unwrap(), TaskOutcome::Success(json!(5)));
        assert!(matches!(decode_result(&fixture("result.extended.failure.json").to_string()).unwrap(), TaskOutcome::Failure(_)));
    }

    #[test]
    fn results_are_written_as_celery_writes_them() {
        let hw = fixture("handwritten.results.json");
        let id = "00000000-0000-4000-8000-000000000001";
        let t = OffsetDateTime::parse("2030-01-01T00:00:00Z", &time::format_description::well_known::Rfc3339).unwrap();
        let ours: Value = serde_json::from_str(&encode_result(id, &TaskOutcome::Success(json!({"text": "hello"})), t)).unwrap();
        assert_eq!(ours, hw["success_value"]);
        let fail = TaskOutcome::Failure(PyError {
            traceback: hw["failure_value"]["traceback"].as_str().map(str::to_string),
            ..PyError::new("ValueError", "builtins", "bad pdf")
        });
        let ours: Value = serde_json::from_str(&encode_result(id, &fail, t)).unwrap();
        assert_eq!(ours, hw["failure_value"]);
        assert_eq!(result_key(id), hw["key"].as_str().unwrap());
    }

    #[test]
    fn results_round_trip() {
        let t = OffsetDateTime::from_unix_timestamp(1_700_000_000).unwrap();
        let ok = encode_result("id-1", &TaskOutcome::Success(json!({"x": 1})), t);
        let v: Value = serde_json::from_str(&ok).unwrap();
        assert_eq!(v["task_id"], "id-1");
        assert_eq!(v["children"], json!([]));
        assert_eq!(v["date_done"], "2023-11-14T22:13:20.000000+00:00");
        assert_eq!(decode_result(&ok).unwrap(), TaskOutcome::Success(json!({"x": 1})));
        let e = PyError::new("ValueError", "builtins", "bad pdf");
        let bad = encode_result("id-2", &TaskOutcome::Failure(e.clone()), t);
        let v: Value = serde_json::from_str(&bad).unwrap();
        assert_eq!(v["result"], json!({"exc_type": "ValueError", "exc_message": ["bad pdf"], "exc_module": "builtins"}));
        assert!(v["traceback"].as_str().unwrap().ends_with("ValueError: bad pdf\n"));
        match decode_result(&bad).unwrap() {
            TaskOutcome::Failure(p) => assert_eq!(p.summary(), "ValueError: bad pdf"),
            other => panic!("{other:?}"),
        }
    }
}
