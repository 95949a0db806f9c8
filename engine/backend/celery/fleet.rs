//! Who works for a Celery backend, and what waits for them.
//!
//! - taskweave workers record themselves: a sorted set `taskweave:workers`
//!   (member: the worker's id, score: its last heartbeat in Unix seconds)
//!   and a hash `taskweave:workers:info` (the worker's id -> a JSON record
//!   of host, pid, queues, concurrency, running tasks and start). A worker
//!   renews both every third of `worker_lease` and removes itself when it
//!   stops cleanly; one not heard of within the lease is gone.
//! - Python Celery workers are asked over Celery's remote control, as
//!   `celery inspect stats active_queues active` does: three broadcasts on
//!   the `celery.pidbox` fanout exchange with a reply ticket each, answered
//!   on the `reply.celery.pidbox` direct exchange. kombu's Redis transport
//!   delivers a direct-exchange message to the lists named by the
//!   exchange's binding set (`_kombu.binding.reply.celery.pidbox`, members
//!   `routing_key\x06\x16pattern\x06\x16queue`), so we add our reply queue
//!   there, BRPOP it for the collection window, then remove both.
//! - Waiting tasks: the length of each queue's priority lists.

use super::broker::{Broker, unix_now};
use super::wire;
use crate::backend::WorkerInfo;
use redis::AsyncCommands;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;
use std::time::Duration;
use time::OffsetDateTime;

const WORKERS: &str = "taskweave:workers";
const WORKER_INFO: &str = "taskweave:workers:info";
/// kombu's separator in binding members and priority list names.
const SEP: &str = "\x06\x16";

/// What a taskweave worker records of itself.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(super) struct Record {
    pub host: String,
    pub pid: u32,
    pub queues: Vec<String>,
    pub concurrency: u32,
    pub running: u32,
    /// Unix seconds.
    pub started_at: f64,
}

impl Record {
    pub(super) fn new(queues: Vec<String>, concurrency: usize) -> Record {
        Record {
            host: crate::backend::workers::hostname().to_string(),
            pid: std::process::id(),
            queues,
            concurrency: u32::try_from(concurrency).unwrap_or(u32::MAX),
            running: 0,
            started_at: unix_now(),
        }
    }
}

/// A taskweave worker's id: `PID@HOST:` and a random suffix.
pub(super) fn worker_id() -> String {
    format!("{}@{}:{}", std::process::id(), crate::backend::workers::hostname(), &wire::uuid4().simple().to_string()[..8])
}

fn time_of(unix: f64) -> Option<OffsetDateTime> {
    OffsetDateTime::from_unix_timestamp_nanos((unix * 1e9) as i128).ok()
}

/// Record (or renew) a taskweave worker. The first beat also forgets the
/// workers not heard of for ten leases.
pub(super) async fn beat(b: &Broker, id: &str, r: &Record, first: Option<Duration>) -> redis::RedisResult<()> {
    let mut c = b.conn.clone();
    if let Some(lease) = first {
        let gone: Vec<String> = c.zrangebyscore(b.key(WORKERS), "-inf", unix_now() - 10.0 * lease.as_secs_f64()).await?;
        if !gone.is_empty() {
            let _: () =
                redis::pipe().zrem(b.key(WORKERS), &gone).ignore().hdel(b.key(WORKER_INFO), &gone).ignore().query_async(&mut c).await?;
        }
    }
    let record = serde_json::to_string(r).unwrap_or_default();
    redis::pipe()
        .atomic()
        .zadd(b.key(WORKERS), id, unix_now())
        .ignore()
        .hset(b.key(WORKER_INFO), id, record)
        .ignore()
        .query_async(&mut c)
        .await
}

/// A worker that stops cleanly leaves the list at once.
pub(super) async fn leave(b: &Broker, id: &str) -> redis::RedisResult<()> {
    let mut c = b.conn.clone();
    redis::pipe().atomic().zrem(b.key(WORKERS), id).ignore().hdel(b.key(WORKER_INFO), id).ignore().query_async(&mut c).await
}

/// The taskweave workers heard of within `lease`, oldest first.
pub(super) async fn live(b: &Broker, lease: Duration) -> redis::RedisResult<Vec<WorkerInfo>> {
    let mut c = b.conn.clone();
    let ids: Vec<(String, f64)> = c.zrangebyscore_withscores(b.key(WORKERS), unix_now() - lease.as_secs_f64(), "+inf").await?;
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let names: Vec<&str> = ids.iter().map(|(id, _)| id.as_str()).collect();
    let records: Vec<Option<String>> = redis::cmd("HMGET").arg(b.key(WORKER_INFO)).arg(&names).query_async(&mut c).await?;
    let mut out: Vec<WorkerInfo> = ids
        .iter()
        .zip(records)
        .filter_map(|((id, beat), rec)| {
            let r: Record = serde_json::from_str(rec.as_deref()?).ok()?;
            Some(WorkerInfo {
                id: id.clone(),
                runtime: "taskweave".into(),
                host: r.host,
                pid: Some(r.pid),
                queues: r.queues,
                concurrency: Some(r.concurrency),
                running: Some(r.running),
                started_at: time_of(r.started_at),
                last_heartbeat: time_of(*beat),
            })
        })
        .collect();
    out.sort_by(|a, b| (a.started_at, &a.id).cmp(&(b.started_at, &b.id)));
    Ok(out)
}

/// Tasks waiting in each of `queues` (all priority lists counted).
pub(super) async fn queued(b: &Broker, queues: &[String]) -> redis::RedisResult<BTreeMap<String, u64>> {
    let mut pipe = redis::pipe();
    for q in queues {
        for k in wire::priority_keys(q) {
            pipe.llen(b.key(&k));
        }
    }
    let mut c = b.conn.clone();
    let lens: Vec<u64> = pipe.query_async(&mut c).await?;
    let mut out = BTreeMap::new();
    for (q, n) in queues.iter().zip(lens.chunks(4)) {
        out.insert(q.clone(), n.iter().sum());
    }
    Ok(out)
}

/// The Python Celery workers that answer a remote-control `stats`,
/// `active_queues` and `active` within `window`.
pub(super) async fn inspect(b: &Broker, window: Duration) -> redis::RedisResult<Vec<WorkerInfo>> {
    let oid = wire::uuid4().to_string();
    let queue = format!("{oid}.reply.celery.pidbox");
    let binding = b.key("_kombu.binding.reply.celery.pidbox");
    let member = format!("{oid}{SEP}{SEP}{queue}");
    let mut c = b.conn.clone();
    let _: i64 = c.sadd(&binding, &member).await?;
    let asked = ask(b, &oid, &queue, window).await;
    // The reply queue goes, whatever happened.
    let keys: Vec<String> = wire::priority_keys(&queue).iter().map(|k| b.key(k)).collect();
    let _: redis::RedisResult<()> = redis::pipe().srem(&binding, &member).ignore().del(&keys).ignore().query_async(&mut c).await;
    Ok(merge(asked?, OffsetDateTime::now_utc()))
}

/// Replies by method, then by Celery hostname.
type Replies = BTreeMap<&'static str, BTreeMap<String, Value>>;

async fn ask(b: &Broker, oid: &str, queue: &str, window: Duration) -> redis::RedisResult<Replies> {
    let methods = ["stats", "active_queues", "active"];
    let mut tickets = BTreeMap::new();
    for m in methods {
        let ticket = wire::uuid4().to_string();
        b.broadcast(m, serde_json::json!({}), Some((&ticket, oid)), window).await?;
        tickets.insert(ticket, m);
    }
    let mut consumer = b.consumer().await?;
    let keys: Vec<String> = wire::priority_keys(queue).iter().map(|k| b.key(k)).collect();
    let until = tokio::time::Instant::now() + window;
    let mut replies: Replies = BTreeMap::new();
    loop {
        let left = until.saturating_duration_since(tokio::time::Instant::now());
        // BRPOP's timeout 0 would block for ever.
        if left < Duration::from_millis(10) {
            break;
        }
        let Some(raw) = b.pop(&mut consumer, &keys, left).await? else { break };
        let Some((ticket, body)) = decode_reply(&raw) else {
            tracing::debug!("a remote-control reply that could not be read: {raw}");
            continue;
        };
        let Some(method) = tickets.get(&ticket) else { continue };
        if let Value::Object(by_host) = body {
            replies.entry(method).or_default().extend(by_host);
        }
    }
    Ok(replies)
}

/// A reply message: its ticket header and its body (`{hostname: reply}`).
fn decode_reply(raw: &str) -> Option<(String, Value)> {
    use base64::Engine as _;
    let m: Value = serde_json::from_str(raw).ok()?;
    let ticket = m["headers"]["ticket"].as_str()?.to_string();
    let body = m["body"].as_str()?;
    let text = if m["properties"]["body_encoding"] == "base64" {
        String::from_utf8(base64::engine::general_purpose::STANDARD.decode(body).ok()?).ok()?
    } else {
        body.to_string()
    };
    Some((ticket, serde_json::from_str(&text).ok()?))
}

/// One worker per Celery hostname that answered anything.
fn merge(replies: Replies, now: OffsetDateTime) -> Vec<WorkerInfo> {
    let mut hosts: Vec<&String> = replies.values().flat_map(|m| m.keys()).collect();
    hosts.sort();
    hosts.dedup();
    let get = |method: &str, host: &str| replies.get(method).and_then(|m| m.get(host));
    hosts
        .into_iter()
        .map(|name| {
            let stats = get("stats", name);
            let uint = |v: Option<&Value>| v.and_then(Value::as_u64).and_then(|n| u32::try_from(n).ok());
            WorkerInfo {
                id: name.clone(),
                runtime: "celery".into(),
                host: name.split_once('@').map_or(name.as_str(), |(_, h)| h).to_string(),
                pid: uint(stats.map(|s| &s["pid"])),
                queues: get("active_queues", name)
                    .and_then(Value::as_array)
                    .map(|qs| qs.iter().filter_map(|q| q["name"].as_str().map(str::to_string)).collect())
                    .unwrap_or_default(),
                concurrency: uint(stats.map(|s| &s["pool"]["max-concurrency"])),
                running: get("active", name).and_then(Value::as_array).map(|a| u32::try_from(a.len()).unwrap_or(u32::MAX)),
                started_at: stats.and_then(|s| s["uptime"].as_f64()).map(|up| now - Duration::from_secs_f64(up.max(0.0))),
                last_heartbeat: Some(now),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn replies_decode_and_merge_per_hostname() {
        use base64::Engine as _;
        let body = json!({"celery@box": {"pid": 42, "uptime": 60, "pool": {"max-concurrency": 4}}}).to_string();
        let raw = json!({
            "body": base64::engine::general_purpose::STANDARD.encode(&body),
            "content-encoding": "utf-8",
            "content-type": "application/json",
            "headers": {"ticket": "t1", "clock": 3},
            "properties": {"body_encoding": "base64", "delivery_tag": "x"},
        })
        .to_string();
        let (ticket, stats) = decode_reply(&raw).unwrap();
        assert_eq!(ticket, "t1");
        let mut replies: Replies = BTreeMap::new();
        replies.entry("stats").or_default().extend(stats.as_object().unwrap().clone());
        replies.entry("active_queues").or_default().insert("celery@box".into(), json!([{"name": "celery"}, {"name": "gpu"}]));
        replies.entry("active").or_default().insert("celery@box".into(), json!([{"id": "a"}]));
        replies.entry("active").or_default().insert("celery@other".into(), json!([]));
        let now = time::macros::datetime!(2026-12-07 10:00:00 UTC);
        let ws = merge(replies, now);
        assert_eq!(ws.len(), 2);
        assert_eq!(ws[0].id, "celery@box");
        assert_eq!(ws[0].host, "box");
        assert_eq!((ws[0].pid, ws[0].concurrency, ws[0].running), (Some(42), Some(4), Some(1)));
        assert_eq!(ws[0].queues, vec!["celery", "gpu"]);
        assert_eq!(ws[0].started_at, Some(time::macros::datetime!(2026-12-07 09:59:00 UTC)));
        // A worker that only answered `active` is still listed.
        assert_eq!((ws[1].id.as_str(), ws[1].pid, ws[1].running), ("celery@other", None, Some(0)));
        assert_eq!(decode_reply("{}"), None);
    }
}
