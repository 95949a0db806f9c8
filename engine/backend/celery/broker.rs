//! Redis, spoken the way kombu's Redis transport and Celery's Redis result
//! backend speak it: LPUSH to priority lists, BRPOP over them, the
//! `unacked` hash and `unacked_index` sorted set for messages in flight,
//! restore of stale entries under `unacked_mutex`, and results written with
//! SETEX + PUBLISH in one MULTI. Every key carries the configured prefix
//! (kombu's `global_keyprefix`).
//!
//! Connections: one shared multiplexed connection that reconnects by itself
//! for commands, a dedicated one per consumer for the blocking BRPOP, and one
//! pub/sub connection per backend that is re-established when Redis goes away.

use super::wire::{self, Incoming, Outgoing};
use redis::AsyncCommands;
use redis::aio::{ConnectionManager, ConnectionManagerConfig, MultiplexedConnection};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// kombu's key names for messages in flight.
const UNACKED: &str = "unacked";
const UNACKED_INDEX: &str = "unacked_index";
const UNACKED_MUTEX: &str = "unacked_mutex";

/// The URL without its password, for messages.
pub fn redact(url: &str) -> String {
    match url.split_once("://") {
        Some((scheme, rest)) => match rest.rsplit_once('@') {
            Some((_, host)) => format!("{scheme}://***@{host}"),
            None => url.to_string(),
        },
        None => url.to_string(),
    }
}

pub fn unix_now() -> f64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or_default()
}

/// Channel name -> listeners, fed by the pub/sub connection.
#[derive(Default)]
struct Listeners {
    next: AtomicU64,
    map: Mutex<HashMap<String, HashMap<u64, mpsc::UnboundedSender<String>>>>,
}

/// Messages published on one channel while this is alive.
pub struct Watch {
    rx: mpsc::UnboundedReceiver<String>,
    channel: String,
    id: u64,
    listeners: Arc<Listeners>,
}

impl Watch {
    /// The next message, or `None` when `wait` elapses first.
    pub async fn next(&mut self, wait: Duration) -> Option<String> {
        tokio::time::timeout(wait, self.rx.recv()).await.ok().flatten()
    }

    /// The next message (`None` only if the broker is gone).
    pub async fn recv(&mut self) -> Option<String> {
        self.rx.recv().await
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        let mut m = self.listeners.map.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(l) = m.get_mut(&self.channel) {
            l.remove(&self.id);
            if l.is_empty() {
                m.remove(&self.channel);
            }
        }
    }
}

/// One Redis database as a Celery broker and result backend.
#[derive(Clone)]
pub struct Broker {
    client: redis::Client,
    results_client: redis::Client,
    pub conn: ConnectionManager,
    results: ConnectionManager,
    prefix: String,
    pub url: String,
    pub visibility: Duration,
    pub result_expires: u64,
    listeners: Arc<Listeners>,
    stop: CancellationToken,
}

fn manager_config() -> ConnectionManagerConfig {
    ConnectionManagerConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(2)))
        .set_response_timeout(Some(Duration::from_secs(30)))
        .set_number_of_retries(4)
        .set_max_delay(Duration::from_secs(2))
}

impl Broker {
    /// Set up the connections (established on first use).
    pub async fn connect(
        url: &str,
        results_url: &str,
        prefix: String,
        visibility: Duration,
        result_expires: u64,
    ) -> redis::RedisResult<Broker> {
        let client = redis::Client::open(url)?;
        let results_client = redis::Client::open(results_url)?;
        // Lazy: a broker that is down now does not stop the engine from
        // starting (other backends work); commands fail until it is back.
        let conn = ConnectionManager::new_lazy_with_config(client.clone(), manager_config())?;
        let results = if results_url == url {
            conn.clone()
        } else {
            ConnectionManager::new_lazy_with_config(results_client.clone(), manager_config())?
        };
        let b = Broker {
            client,
            results_client,
            conn,
            results,
            prefix,
            url: redact(url),
            visibility,
            result_expires,
            listeners: Arc::default(),
            stop: CancellationToken::new(),
        };
        b.spawn_subscriber();
        Ok(b)
    }

    /// Stop the pub/sub connection.
    pub fn close(&self) {
        self.stop.cancel();
    }

    /// A key with the configured prefix.
    pub fn key(&self, k: &str) -> String {
        format!("{}{k}", self.prefix)
    }

    /// PSUBSCRIBE to results and taskweave's own events; reconnect forever.
    fn spawn_subscriber(&self) {
        let (results_client, client) = (self.results_client.clone(), self.client.clone());
        let (listeners, stop) = (Arc::clone(&self.listeners), self.stop.clone());
        let patterns = vec![(results_client, self.key("celery-task-meta-*")), (client, self.key("taskweave:events"))];
        for (client, pattern) in patterns {
            let (listeners, stop) = (Arc::clone(&listeners), stop.clone());
            tokio::spawn(async move {
                let mut delay = Duration::from_millis(100);
                loop {
                    let session = async {
                        let mut ps = client.get_async_pubsub().await?;
                        ps.psubscribe(&pattern).await?;
                        let mut stream = ps.into_on_message();
                        use futures::StreamExt;
                        while let Some(msg) = stream.next().await {
                            let channel = msg.get_channel_name().to_string();
                            let payload: String = msg.get_payload().unwrap_or_default();
                            let m = listeners.map.lock().unwrap_or_else(|e| e.into_inner());
                            if let Some(l) = m.get(&channel) {
                                for tx in l.values() {
                                    let _ = tx.send(payload.clone());
                                }
                            }
                            // Run events also reach the listeners of that one run
                            // (`<channel>#<run id>`), so a waiter is not woken by
                            // every other run's end.
                            if let Some(run) = payload
                                .strip_prefix("done:")
                                .or_else(|| payload.strip_prefix("stop:").and_then(|r| r.split_once(':').map(|x| x.1)))
                                && let Some(l) = m.get(&format!("{channel}#{run}"))
                            {
                                for tx in l.values() {
                                    let _ = tx.send(payload.clone());
                                }
                            }
                        }
                        Ok::<(), redis::RedisError>(())
                    };
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        r = session => {
                            if let Err(e) = r {
                                tracing::debug!("pub/sub connection lost: {e}");
                            }
                        }
                    }
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = tokio::time::sleep(delay) => {}
                    }
                    delay = (delay * 2).min(Duration::from_secs(2));
                }
            });
        }
    }

    /// Listen to a channel (a result key or `taskweave:events`), prefix included.
    pub fn watch(&self, channel: String) -> Watch {
        let (tx, rx) = mpsc::unbounded_channel();
        let id = self.listeners.next.fetch_add(1, Ordering::Relaxed);
        self.listeners.map.lock().unwrap_or_else(|e| e.into_inner()).entry(channel.clone()).or_default().insert(id, tx);
        Watch { rx, channel, id, listeners: Arc::clone(&self.listeners) }
    }

    /// LPUSH a task message to its priority list.
    pub async fn publish(&self, m: &Outgoing) -> redis::RedisResult<()> {
        let mut c = self.conn.clone();
        let _: i64 = c.lpush(self.key(&wire::queue_key(&m.queue, m.priority)), m.encode()).await?;
        Ok(())
    }

    /// Store a result and publish it on its channel, in one MULTI (what
    /// Celery's Redis result backend does; a waiting client never re-reads
    /// the key, so the PUBLISH is what wakes it).
    pub async fn store_result(&self, task_id: &str, value: &str) -> redis::RedisResult<()> {
        let key = self.key(&wire::result_key(task_id));
        let mut c = self.results.clone();
        let _: () = redis::pipe()
            .atomic()
            .set_ex(&key, value, self.result_expires)
            .ignore()
            .publish(&key, value)
            .ignore()
            .query_async(&mut c)
            .await?;
        Ok(())
    }

    pub async fn get_result(&self, task_id: &str) -> redis::RedisResult<Option<String>> {
        let mut c = self.results.clone();
        c.get(self.key(&wire::result_key(task_id))).await
    }

    /// A connection of its own for BRPOP (a blocking command would stall
    /// every other command on the shared one).
    pub async fn consumer(&self) -> redis::RedisResult<MultiplexedConnection> {
        let cfg = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(2)))
            .set_response_timeout(Some(Duration::from_secs(30)));
        self.client.get_multiplexed_async_connection_with_config(&cfg).await
    }

    /// BRPOP over the lists of `queues` in priority order, for `timeout`.
    pub async fn pop(&self, c: &mut MultiplexedConnection, keys: &[String], timeout: Duration) -> redis::RedisResult<Option<String>> {
        let r: Option<(String, String)> = c.brpop(keys, timeout.as_secs_f64()).await?;
        Ok(r.map(|(_, v)| v))
    }

    /// Record a message as in flight, as kombu does after BRPOP.
    pub async fn track(&self, m: &Incoming) -> redis::RedisResult<()> {
        let entry = serde_json::json!([serde_json::from_str::<serde_json::Value>(&m.raw).unwrap_or_default(), m.exchange, m.routing_key]);
        let mut c = self.conn.clone();
        let _: () = redis::pipe()
            .atomic()
            .zadd(self.key(UNACKED_INDEX), &m.delivery_tag, unix_now())
            .ignore()
            .hset(self.key(UNACKED), &m.delivery_tag, entry.to_string())
            .ignore()
            .query_async(&mut c)
            .await?;
        Ok(())
    }

    /// Acknowledge: forget the in-flight entry.
    pub async fn ack(&self, tag: &str) -> redis::RedisResult<()> {
        let mut c = self.conn.clone();
        let _: () = redis::pipe()
            .atomic()
            .zrem(self.key(UNACKED_INDEX), tag)
            .ignore()
            .hdel(self.key(UNACKED), tag)
            .ignore()
            .query_async(&mut c)
            .await?;
        Ok(())
    }

    /// Refresh the in-flight score of running messages, so that no worker's
    /// visibility-timeout restore hands them out again while they run.
    pub async fn refresh(&self, tags: &[String]) -> redis::RedisResult<()> {
        if tags.is_empty() {
            return Ok(());
        }
        let now = unix_now();
        let mut p = redis::pipe();
        for t in tags {
            p.cmd("ZADD").arg(self.key(UNACKED_INDEX)).arg("XX").arg(now).arg(t).ignore();
        }
        let mut c = self.conn.clone();
        p.query_async::<()>(&mut c).await
    }

    /// Put a message back at the head of its queue (it will be taken next)
    /// and forget its in-flight entry, atomically.
    pub async fn hand_back(&self, m: &Incoming) -> redis::RedisResult<()> {
        let key = self.key(&wire::queue_key(&m.routing_key, m.priority));
        let mut c = self.conn.clone();
        let _: () = redis::pipe()
            .atomic()
            .rpush(key, wire::mark_redelivered(&m.raw))
            .ignore()
            .zrem(self.key(UNACKED_INDEX), &m.delivery_tag)
            .ignore()
            .hdel(self.key(UNACKED), &m.delivery_tag)
            .ignore()
            .query_async(&mut c)
            .await?;
        Ok(())
    }

    /// Restore in-flight messages older than the visibility timeout (their
    /// worker died) to the head of their queues, as kombu's
    /// `restore_visible` does, under the same `unacked_mutex`. Returns how
    /// many were restored.
    pub async fn restore_stale(&self) -> redis::RedisResult<usize> {
        let mut c = self.conn.clone();
        let mutex = self.key(UNACKED_MUTEX);
        let token = super::wire::uuid4().to_string();
        let got: Option<String> = redis::cmd("SET").arg(&mutex).arg(&token).arg("NX").arg("EX").arg(300).query_async(&mut c).await?;
        if got.is_none() {
            return Ok(0);
        }
        let ceil = unix_now() - self.visibility.as_secs_f64();
        let stale: Vec<String> = c.zrangebyscore_limit(self.key(UNACKED_INDEX), 0, ceil, 0, 1000).await?;
        let mut n = 0;
        // Restore one entry if it is still stale: the payload is rewritten in
        // Rust (marked redelivered, as kombu does) and pushed back here, so
        // an entry whose worker refreshed it meanwhile stays where it is.
        let script = redis::Script::new(
            r"
local score = redis.call('ZSCORE', KEYS[1], ARGV[1])
if not score or tonumber(score) > tonumber(ARGV[2]) then return 0 end
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('HDEL', KEYS[2], ARGV[1])
redis.call('RPUSH', KEYS[3], ARGV[3])
return 1",
        );
        for tag in stale {
            let entry: Option<String> = c.hget(self.key(UNACKED), &tag).await?;
            let Some(entry) = entry else {
                let _: () = c.zrem(self.key(UNACKED_INDEX), &tag).await?;
                continue;
            };
            let parsed: serde_json::Value = serde_json::from_str(&entry).unwrap_or_default();
            let (payload, routing_key) = (parsed.get(0).cloned().unwrap_or_default(), parsed.get(2).and_then(|v| v.as_str()).unwrap_or(""));
            let raw = payload.to_string();
            let priority = payload.pointer("/properties/priority").and_then(|p| p.as_u64()).unwrap_or(0) as u8;
            let queue = self.key(&wire::queue_key(routing_key, priority));
            let done: i64 = script
                .key(self.key(UNACKED_INDEX))
                .key(self.key(UNACKED))
                .key(queue)
                .arg(&tag)
                .arg(ceil)
                .arg(wire::mark_redelivered(&raw))
                .invoke_async(&mut c)
                .await?;
            n += done as usize;
        }
        let release = redis::Script::new("if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0");
        let _: i64 = release.key(&mutex).arg(&token).invoke_async(&mut c).await?;
        Ok(n)
    }

    /// Ask every Celery worker to revoke a task and terminate it if it runs
    /// (`app.control.revoke(id, terminate=True)`).
    pub async fn revoke(&self, task_id: &str) -> redis::RedisResult<()> {
        let arguments = serde_json::json!({"task_id": task_id, "terminate": true, "signal": "SIGTERM"});
        self.broadcast("revoke", arguments, None, Duration::from_secs(30)).await
    }

    /// A remote-control command to every Celery worker, as
    /// `app.control.broadcast` sends it: a message on the `celery.pidbox`
    /// fanout exchange, which kombu's Redis transport maps to a PUBLISH on
    /// `/{db}.celery.pidbox`. With `reply` (ticket, reply queue id), the
    /// workers answer on the `reply.celery.pidbox` direct exchange with that
    /// routing key (see [`super::fleet`]). Workers ignore it after `expires`.
    pub async fn broadcast(
        &self,
        method: &str,
        arguments: serde_json::Value,
        reply: Option<(&str, &str)>,
        expires: Duration,
    ) -> redis::RedisResult<()> {
        use base64::Engine as _;
        let mut body = serde_json::json!({
            "method": method,
            "arguments": arguments,
            "destination": null,
            "pattern": null,
            "matcher": null,
        });
        if let Some((ticket, oid)) = reply {
            body["ticket"] = ticket.into();
            body["reply_to"] = serde_json::json!({"exchange": "reply.celery.pidbox", "routing_key": oid});
        }
        let message = serde_json::json!({
            "body": base64::engine::general_purpose::STANDARD.encode(body.to_string()),
            "content-encoding": "utf-8",
            "content-type": "application/json",
            "headers": {"clock": 1, "expires": unix_now() + expires.as_secs_f64()},
            "properties": {
                "delivery_mode": 2,
                "delivery_info": {"exchange": "celery.pidbox", "routing_key": ""},
                "priority": 0,
                "body_encoding": "base64",
                "delivery_tag": wire::uuid4().to_string(),
            },
        });
        let db = self.client.get_connection_info().redis_settings().db();
        let mut c = self.conn.clone();
        let _: i64 = c.publish(self.key(&format!("/{db}.celery.pidbox")), message.to_string()).await?;
        Ok(())
    }

    /// PING, and the server version.
    pub async fn ping(&self) -> redis::RedisResult<String> {
        let mut c = self.conn.clone();
        let info: String = redis::cmd("INFO").arg("server").query_async(&mut c).await?;
        Ok(info.lines().find_map(|l| l.strip_prefix("redis_version:")).unwrap_or("?").trim().to_string())
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn passwords_are_never_shown() {
        assert_eq!(super::redact("redis://:secret@127.0.0.1:6379/0"), "redis://***@127.0.0.1:6379/0");
        assert_eq!(super::redact("redis://127.0.0.1:6379/0"), "redis://127.0.0.1:6379/0");
    }
}
