//! Run state in Redis, so that no process is the orchestrator: a hash per
//! run holds the pinned definition, the input, every task's status and
//! result, and the scheduler core's state (`sched`, with a version `v`).
//! The core decides (see `apply.rs`); the Lua scripts carry its decisions
//! out atomically on the server:
//!
//! - `submit` writes the run and queues the tasks the core starts first;
//! - `claim` lets the holder of a task message start it (or learn that the
//!   run was stopped or the task is done already: a duplicate is acked);
//! - `apply` writes one event's decisions (task results, messages of the
//!   tasks that start, the run's stop or end) and the core's new state,
//!   if the state is still the version the decisions were made from;
//!   otherwise it answers with the current state to decide again.
//!
//! Child messages are built by the caller and pushed by the script, so a
//! task's completion and the dispatch of its children are one transaction:
//! a worker dying between the two cannot lose the run.

use super::broker::Broker;
use crate::run::{RunResult, RunStatus, TaskResult, TaskStatus};
use serde_json::Value;
use std::collections::{BTreeMap, HashMap};
use std::sync::LazyLock;
use time::OffsetDateTime;

static SUBMIT: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r"
-- KEYS: run hash, queue list. ARGV[1] = number of field pairs, then pairs, then the first messages.
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
local nf = tonumber(ARGV[1])
for i = 2, 1 + nf * 2, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
for i = 2 + nf * 2, #ARGV do redis.call('LPUSH', KEYS[2], ARGV[i]) end
return 1",
    )
});

static CLAIM: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r"
-- KEYS: run hash. ARGV: task, now (unix ms), now (RFC 3339), '1' for a
-- handler (on_failure, finally: it runs after the run's stop and deadline).
if redis.call('EXISTS', KEYS[1]) == 0 then return {'gone'} end
local s = redis.call('HGET', KEYS[1], 's:' .. ARGV[1])
if not s then return {'gone'} end
if s ~= 'pending' and s ~= 'running' then return {'done'} end
if ARGV[4] ~= '1' then
  local stop = redis.call('HGET', KEYS[1], 'stop')
  if stop then return {'stop', stop} end
  local dl = redis.call('HGET', KEYS[1], 'deadline')
  if dl and tonumber(dl) <= tonumber(ARGV[2]) then return {'late', s} end
end
redis.call('HSET', KEYS[1], 's:' .. ARGV[1], 'running')
if redis.call('HGET', KEYS[1], 'status') == 'queued' then
  redis.call('HSET', KEYS[1], 'status', 'running', 'started', ARGV[3])
end
return {'ok', s, redis.call('HGET', KEYS[1], 't:' .. ARGV[1]), redis.call('HGET', KEYS[1], 'sched'), redis.call('HGET', KEYS[1], 'v')}",
    )
});

static APPLY: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r"
-- KEYS: run hash, queue list, events channel.
-- ARGV: now (RFC 3339), seconds to keep a finished run, run id, the version
-- decided from, the new state, stop ('' none), end status ('' none), end
-- error, the run's output JSON ('' none), number of tasks that must still be
-- pending (then their names),
-- number of task changes (then name, status or '', result JSON or ''),
-- then the messages to queue.
local R = KEYS[1]
if redis.call('EXISTS', R) == 0 then return {'gone'} end
local status = redis.call('HGET', R, 'status')
if status ~= 'queued' and status ~= 'running' then return {'dup'} end
local i = 11
local np = tonumber(ARGV[10])
local still = true
for k = i, i + np - 1 do
  if redis.call('HGET', R, 's:' .. ARGV[k]) ~= 'pending' then still = false end
end
i = i + np
if redis.call('HGET', R, 'v') ~= ARGV[4] or not still then
  return {'conflict', redis.call('HGET', R, 'sched'), redis.call('HGET', R, 'v')}
end
redis.call('HSET', R, 'sched', ARGV[5], 'v', tostring(tonumber(ARGV[4]) + 1))
local nc = tonumber(ARGV[i])
i = i + 1
for k = 1, nc do
  if ARGV[i + 1] ~= '' then redis.call('HSET', R, 's:' .. ARGV[i], ARGV[i + 1]) end
  if ARGV[i + 2] ~= '' then redis.call('HSET', R, 't:' .. ARGV[i], ARGV[i + 2]) end
  i = i + 3
end
for k = i, #ARGV do redis.call('LPUSH', KEYS[2], ARGV[k]) end
if ARGV[6] ~= '' then
  redis.call('HSET', R, 'stop', ARGV[6])
  redis.call('PUBLISH', KEYS[3], 'stop:' .. ARGV[6] .. ':' .. ARGV[3])
end
if ARGV[7] == '' then return {'open'} end
redis.call('HSET', R, 'status', ARGV[7], 'finished', ARGV[1])
if ARGV[8] ~= '' then redis.call('HSET', R, 'error', ARGV[8]) end
if ARGV[9] ~= '' then redis.call('HSET', R, 'output', ARGV[9]) end
redis.call('EXPIRE', R, tonumber(ARGV[2]))
redis.call('PUBLISH', KEYS[3], 'done:' .. ARGV[3])
return {'finished', ARGV[7], redis.call('HGET', R, 'reply') or ''}",
    )
});

/// How a run ends or why it is stopped.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum StopReason {
    Cancelled,
    TimedOut,
}

impl StopReason {
    pub fn as_str(self) -> &'static str {
        match self {
            StopReason::Cancelled => "cancelled",
            StopReason::TimedOut => "timed_out",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "cancelled" => Some(StopReason::Cancelled),
            "timed_out" => Some(StopReason::TimedOut),
            _ => None,
        }
    }
}

/// The answer of `apply`.
#[derive(Debug, Clone, PartialEq)]
pub enum Progress {
    /// The run goes on.
    Open,
    /// Already recorded (a duplicate message, a second stop).
    Duplicate,
    /// No such run.
    Gone,
    /// This call ended the run; `reply` is the Celery task id to answer, if any.
    Finished { status: RunStatus, reply: Option<String> },
}

/// What `claim` found.
#[derive(Debug, Clone, PartialEq)]
pub enum Claim {
    /// Start it; `previous` is the task's recorded result (attempts so far),
    /// `sched` the scheduler state as of the claim.
    Go { previous: Box<TaskResult>, sched: Option<Sched> },
    /// The task has ended already: ack the message.
    Done,
    /// The run or the task does not exist (expired): ack.
    Gone,
    /// The run was stopped while this task was running somewhere that died.
    Stopped(StopReason),
    /// The run's deadline has passed; `was_running` as for `Stopped`.
    Late { was_running: bool },
}

/// The scheduler core's state of a run as recorded, and its version.
#[derive(Debug, Clone, PartialEq)]
pub struct Sched {
    pub bytes: Vec<u8>,
    pub version: String,
}

/// One event's decisions, as changes to a run's hash.
#[derive(Debug, Default)]
pub struct Changes {
    pub stop: Option<StopReason>,
    pub end: Option<(RunStatus, Option<String>)>,
    /// The run's output (JSON), when it ends succeeded with one.
    pub output: Option<String>,
    /// Tasks the decisions took as not begun: they must still be pending.
    pub pending: Vec<String>,
    /// (task, new status, new result JSON).
    pub tasks: Vec<(String, Option<TaskStatus>, Option<String>)>,
    /// Messages of the tasks that start.
    pub messages: Vec<String>,
}

/// What `apply` did.
#[derive(Debug)]
pub enum Applied {
    Done(Progress),
    /// The run moved on since the state decided from: decide again from this one.
    Conflict(Option<Sched>),
}

pub fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339).unwrap_or_default()
}

fn parse_time(s: Option<&String>) -> Option<OffsetDateTime> {
    s.and_then(|s| OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).ok())
}

/// Run state keys of one backend.
#[derive(Clone)]
pub struct Runs {
    pub broker: Broker,
    /// Seconds a finished run stays readable.
    pub keep: u64,
}

impl Runs {
    pub fn run_key(&self, id: &str) -> String {
        self.broker.key(&format!("taskweave:run:{id}"))
    }

    pub fn events(&self) -> String {
        self.broker.key("taskweave:events")
    }

    /// Write a new run and queue its first tasks. `false`: the id is taken.
    pub async fn submit(&self, id: &str, fields: Vec<(String, Vec<u8>)>, queue_key: &str, first: Vec<String>) -> redis::RedisResult<bool> {
        let mut inv = SUBMIT.key(self.run_key(id));
        inv.key(queue_key).arg(fields.len());
        for (k, v) in &fields {
            inv.arg(k).arg(v.as_slice());
        }
        for m in &first {
            inv.arg(m);
        }
        let mut c = self.broker.conn.clone();
        let r: i64 = inv.invoke_async(&mut c).await?;
        Ok(r == 1)
    }

    /// Start `task` of `run` (`handler`: an `on_failure`/`finally` task,
    /// which a stop or the deadline does not keep from starting).
    pub async fn claim(&self, run: &str, task: &str, handler: bool) -> redis::RedisResult<Claim> {
        let now = OffsetDateTime::now_utc();
        let mut c = self.broker.conn.clone();
        let r: Vec<Option<Vec<u8>>> = CLAIM
            .key(self.run_key(run))
            .arg(task)
            .arg((now.unix_timestamp_nanos() / 1_000_000) as i64)
            .arg(rfc3339(now))
            .arg(if handler { "1" } else { "0" })
            .invoke_async(&mut c)
            .await?;
        let text = |i: usize| r.get(i).cloned().flatten().map(|b| String::from_utf8_lossy(&b).into_owned());
        Ok(match text(0).as_deref().unwrap_or_default() {
            "ok" => {
                let previous = text(2).and_then(|t| serde_json::from_str(&t).ok()).unwrap_or_else(TaskResult::pending);
                Claim::Go { previous: Box::new(previous), sched: sched_at(&r, 3) }
            }
            "done" => Claim::Done,
            "stop" => Claim::Stopped(text(1).and_then(|s| StopReason::parse(&s)).unwrap_or(StopReason::Cancelled)),
            "late" => Claim::Late { was_running: text(1).as_deref() == Some("running") },
            _ => Claim::Gone,
        })
    }

    /// Record a task's result without ending it (attempt started, retry).
    pub async fn update_task(&self, run: &str, task: &str, t: &TaskResult) -> redis::RedisResult<()> {
        let mut c = self.broker.conn.clone();
        let json = serde_json::to_string(t).unwrap_or_default();
        let _: () = redis::AsyncCommands::hset(&mut c, self.run_key(run), format!("t:{task}"), json).await?;
        Ok(())
    }

    /// The scheduler state of a run, or `None` when it is gone.
    pub async fn sched(&self, run: &str) -> redis::RedisResult<Option<Sched>> {
        let mut c = self.broker.conn.clone();
        let r: Vec<Option<Vec<u8>>> = redis::cmd("HMGET").arg(self.run_key(run)).arg("sched").arg("v").query_async(&mut c).await?;
        Ok(sched_at(&r, 0))
    }

    /// Write one event's decisions, made from the state `from`, with the
    /// core's new state `state`.
    pub async fn apply(&self, run: &str, queue_key: &str, from: &Sched, state: &[u8], ch: &Changes) -> redis::RedisResult<Applied> {
        let mut inv = APPLY.key(self.run_key(run));
        inv.key(queue_key).key(self.events());
        inv.arg(rfc3339(OffsetDateTime::now_utc())).arg(self.keep).arg(run);
        inv.arg(&from.version).arg(state);
        inv.arg(ch.stop.map_or("", StopReason::as_str));
        let (end, error) = ch.end.as_ref().map_or(("", ""), |(s, e)| (s.as_str(), e.as_deref().unwrap_or_default()));
        inv.arg(end).arg(error);
        inv.arg(ch.output.as_deref().unwrap_or_default());
        inv.arg(ch.pending.len());
        for t in &ch.pending {
            inv.arg(t);
        }
        inv.arg(ch.tasks.len());
        for (name, status, json) in &ch.tasks {
            inv.arg(name).arg(status.map_or("", TaskStatus::as_str)).arg(json.as_deref().unwrap_or_default());
        }
        for m in &ch.messages {
            inv.arg(m);
        }
        let mut c = self.broker.conn.clone();
        let r: Vec<Option<Vec<u8>>> = inv.invoke_async(&mut c).await?;
        let word = |i: usize| r.get(i).cloned().flatten().map(|b| String::from_utf8_lossy(&b).into_owned()).unwrap_or_default();
        Ok(match word(0).as_str() {
            "conflict" => Applied::Conflict(sched_at(&r, 1)),
            "open" => Applied::Done(Progress::Open),
            "finished" => Applied::Done(Progress::Finished {
                status: RunStatus::parse(&word(1)).unwrap_or(RunStatus::Failed),
                reply: Some(word(2)).filter(|s| !s.is_empty()),
            }),
            "gone" => Applied::Done(Progress::Gone),
            _ => Applied::Done(Progress::Duplicate),
        })
    }

    /// Every field of a run, or `None`.
    pub async fn fields(&self, run: &str) -> redis::RedisResult<Option<HashMap<String, String>>> {
        let mut c = self.broker.conn.clone();
        let m: HashMap<String, String> = redis::AsyncCommands::hgetall(&mut c, self.run_key(run)).await?;
        Ok(if m.is_empty() { None } else { Some(m) })
    }

    /// Some fields of a run.
    pub async fn get(&self, run: &str, names: &[String]) -> redis::RedisResult<Vec<Option<String>>> {
        let mut c = self.broker.conn.clone();
        if names.is_empty() {
            return Ok(Vec::new());
        }
        redis::cmd("HMGET").arg(self.run_key(run)).arg(names).query_async(&mut c).await
    }
}

/// The state and version at `i`, `i + 1` of a script's answer.
fn sched_at(r: &[Option<Vec<u8>>], i: usize) -> Option<Sched> {
    let bytes = r.get(i).cloned().flatten()?;
    let version = r.get(i + 1).cloned().flatten().map(|b| String::from_utf8_lossy(&b).into_owned())?;
    Some(Sched { bytes, version })
}

/// Assemble a run result from its hash.
pub fn result_from(run_id: &str, f: &HashMap<String, String>) -> RunResult {
    let json = |k: &str| f.get(k).and_then(|s| serde_json::from_str::<Value>(s).ok()).unwrap_or(Value::Null);
    let mut tasks = BTreeMap::new();
    for (k, v) in f {
        if let Some(name) = k.strip_prefix("t:") {
            let mut t: TaskResult = serde_json::from_str(v).unwrap_or_else(|_| TaskResult::pending());
            if let Some(s) = f.get(&format!("s:{name}")).and_then(|s| TaskStatus::parse(s)) {
                t.status = s;
            }
            tasks.insert(name.to_string(), t);
        }
    }
    RunResult {
        run_id: run_id.to_string(),
        workflow: f.get("workflow").cloned().unwrap_or_default(),
        version: f.get("version").cloned().unwrap_or_default(),
        status: f.get("status").and_then(|s| RunStatus::parse(s)).unwrap_or(RunStatus::Queued),
        backend: f.get("backend").cloned().unwrap_or_default(),
        routing: serde_json::from_value(json("routing")).ok(),
        error: f.get("error").cloned().filter(|e| !e.is_empty()),
        output: f.get("output").and_then(|s| serde_json::from_str(s).ok()),
        retry_of: f.get("retry_of").cloned(),
        entity_id: f.get("entity").cloned().unwrap_or_else(|| run_id.to_string()),
        context: json("context"),
        input: json("input"),
        created_at: parse_time(f.get("created")).unwrap_or(OffsetDateTime::UNIX_EPOCH),
        started_at: parse_time(f.get("started")),
        finished_at: parse_time(f.get("finished")),
        tasks,
    }
}
