//! Run state in Redis, so that no process is the orchestrator: a hash per
//! run holds the pinned definition, the input, every task's status and
//! result, and a counter of unfinished parents per task. Each transition is
//! one Lua script (atomic on the server):
//!
//! - `submit` writes the run and queues its roots;
//! - `claim` lets the holder of a task message start it (or learn that the
//!   run was stopped or the task is done already: a duplicate is acked);
//! - `complete` records a task's end, decrements its children's parent
//!   counters and queues those that reach zero (the fan-in barrier), skips
//!   the descendants of a failure, and ends the run when every task is done;
//! - `stop` cancels or times out a run: pending tasks end at once, running
//!   ones are told on the events channel.
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

/// What every script that can end a run shares: ARGV[1] = now (RFC 3339),
/// ARGV[2] = seconds to keep a finished run, ARGV[3] = run id; KEYS[1] = the
/// run hash, KEYS[2] = its ready list, KEYS[4] = the events channel.
const FINISH: &str = r"
local function finish(R)
  local n = tonumber(redis.call('HGET', R, 'n'))
  local done = tonumber(redis.call('HGET', R, 'done'))
  if done < n then return {'open'} end
  local status = redis.call('HGET', R, 'status')
  if status ~= 'queued' and status ~= 'running' then return {'dup'} end
  local stop = redis.call('HGET', R, 'stop')
  local final = stop
  if not final then
    if tonumber(redis.call('HGET', R, 'bad')) == 0 then final = 'succeeded' else final = 'failed' end
  end
  redis.call('HSET', R, 'status', final, 'finished', ARGV[1])
  if final == 'timed_out' then redis.call('HSET', R, 'error', redis.call('HGET', R, 'timeout_error')) end
  if final == 'cancelled' then redis.call('HSET', R, 'error', 'the run was cancelled') end
  redis.call('DEL', KEYS[2])
  redis.call('EXPIRE', R, tonumber(ARGV[2]))
  redis.call('PUBLISH', KEYS[4], 'done:' .. ARGV[3])
  return {'finished', final, redis.call('HGET', R, 'reply') or ''}
end
";

static SUBMIT: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r"
-- KEYS: run hash, ready list, queue list. ARGV[1] = number of field pairs, then pairs, then root messages.
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
local nf = tonumber(ARGV[1])
for i = 2, 1 + nf * 2, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
local limit = tonumber(redis.call('HGET', KEYS[1], 'limit'))
local active = 0
for i = 2 + nf * 2, #ARGV do
  if limit == 0 or active < limit then
    redis.call('LPUSH', KEYS[3], ARGV[i])
    active = active + 1
  else
    redis.call('RPUSH', KEYS[2], ARGV[i])
  end
end
redis.call('HSET', KEYS[1], 'active', active)
return 1",
    )
});

static CLAIM: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r"
-- KEYS: run hash. ARGV: task, now (unix ms), now (RFC 3339).
if redis.call('EXISTS', KEYS[1]) == 0 then return {'gone'} end
local s = redis.call('HGET', KEYS[1], 's:' .. ARGV[1])
if not s then return {'gone'} end
if s ~= 'pending' and s ~= 'running' then return {'done'} end
local stop = redis.call('HGET', KEYS[1], 'stop')
if stop then return {'stop', stop} end
local dl = redis.call('HGET', KEYS[1], 'deadline')
if dl and tonumber(dl) <= tonumber(ARGV[2]) then return {'late', s} end
redis.call('HSET', KEYS[1], 's:' .. ARGV[1], 'running')
if redis.call('HGET', KEYS[1], 'status') == 'queued' then
  redis.call('HSET', KEYS[1], 'status', 'running', 'started', ARGV[3])
end
return {'ok', s, redis.call('HGET', KEYS[1], 't:' .. ARGV[1])}",
    )
});

static COMPLETE: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(&format!(
        r"{FINISH}
-- KEYS: run hash, ready list, queue list, events. ARGV[4..]: task, status, result JSON,
-- number of children, child names, child messages, then (descendant, skip JSON) pairs.
local R = KEYS[1]
local task, st = ARGV[4], ARGV[5]
local cur = redis.call('HGET', R, 's:' .. task)
if not cur or (cur ~= 'running' and cur ~= 'pending') then return {{'dup'}} end
redis.call('HSET', R, 's:' .. task, st, 't:' .. task, ARGV[6])
redis.call('HINCRBY', R, 'done', 1)
if st ~= 'succeeded' then redis.call('HINCRBY', R, 'bad', 1) end
local active = redis.call('HINCRBY', R, 'active', -1)
if active < 0 then active = 0 end
local limit = tonumber(redis.call('HGET', R, 'limit'))
local stop = redis.call('HGET', R, 'stop')
local nc = tonumber(ARGV[7])
local i = 8
if st == 'succeeded' and not stop then
  for k = 0, nc - 1 do
    local c = ARGV[i + k]
    if redis.call('HINCRBY', R, 'w:' .. c, -1) == 0 and redis.call('HGET', R, 's:' .. c) == 'pending' then
      redis.call('RPUSH', KEYS[2], ARGV[i + nc + k])
    end
  end
end
i = i + 2 * nc
while i < #ARGV do
  local d = ARGV[i]
  if redis.call('HGET', R, 's:' .. d) == 'pending' then
    redis.call('HSET', R, 's:' .. d, 'skipped', 't:' .. d, ARGV[i + 1])
    redis.call('HINCRBY', R, 'done', 1)
    redis.call('HINCRBY', R, 'bad', 1)
  end
  i = i + 2
end
if not stop then
  while (limit == 0 or active < limit) and redis.call('LLEN', KEYS[2]) > 0 do
    redis.call('LPUSH', KEYS[3], redis.call('LPOP', KEYS[2]))
    active = active + 1
  end
end
redis.call('HSET', R, 'active', active)
return finish(R)"
    ))
});

static STOP: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(&format!(
        r"{FINISH}
-- KEYS: run hash, ready list, queue list, events. ARGV[4] = reason, then (task, JSON) pairs
-- for the tasks that have not started.
local R = KEYS[1]
if redis.call('EXISTS', R) == 0 then return {{'gone'}} end
local status = redis.call('HGET', R, 'status')
if status ~= 'queued' and status ~= 'running' then return {{'dup'}} end
if redis.call('HGET', R, 'stop') then return {{'dup'}} end
local reason = ARGV[4]
redis.call('HSET', R, 'stop', reason)
local to = 'skipped'
if reason == 'cancelled' then to = 'cancelled' end
for i = 5, #ARGV, 2 do
  local t = ARGV[i]
  if redis.call('HGET', R, 's:' .. t) == 'pending' then
    redis.call('HSET', R, 's:' .. t, to, 't:' .. t, ARGV[i + 1])
    redis.call('HINCRBY', R, 'done', 1)
    redis.call('HINCRBY', R, 'bad', 1)
  end
end
redis.call('DEL', KEYS[2])
redis.call('PUBLISH', KEYS[4], 'stop:' .. reason .. ':' .. ARGV[3])
return finish(R)"
    ))
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

/// The answer of `complete` and `stop`.
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
    /// Start it; `previous` is the task's recorded result (attempts so far).
    Go { previous: TaskResult },
    /// The task has ended already: ack the message.
    Done,
    /// The run or the task does not exist (expired): ack.
    Gone,
    /// The run was stopped while this task was running somewhere that died.
    Stopped(StopReason),
    /// The run's deadline has passed; `was_running` as for `Stopped`.
    Late { was_running: bool },
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

    fn ready_key(&self, id: &str) -> String {
        self.broker.key(&format!("taskweave:run:{id}:ready"))
    }

    pub fn events(&self) -> String {
        self.broker.key("taskweave:events")
    }

    /// Write a new run and queue its first tasks. `false`: the id is taken.
    pub async fn submit(&self, id: &str, fields: Vec<(String, String)>, queue_key: &str, roots: Vec<String>) -> redis::RedisResult<bool> {
        let mut inv = SUBMIT.key(self.run_key(id));
        inv.key(self.ready_key(id)).key(queue_key).arg(fields.len());
        for (k, v) in &fields {
            inv.arg(k).arg(v);
        }
        for m in &roots {
            inv.arg(m);
        }
        let mut c = self.broker.conn.clone();
        let r: i64 = inv.invoke_async(&mut c).await?;
        Ok(r == 1)
    }

    pub async fn claim(&self, run: &str, task: &str) -> redis::RedisResult<Claim> {
        let now = OffsetDateTime::now_utc();
        let mut c = self.broker.conn.clone();
        let r: Vec<Option<String>> = CLAIM
            .key(self.run_key(run))
            .arg(task)
            .arg((now.unix_timestamp_nanos() / 1_000_000) as i64)
            .arg(rfc3339(now))
            .invoke_async(&mut c)
            .await?;
        let word = r.first().cloned().flatten().unwrap_or_default();
        Ok(match word.as_str() {
            "ok" => {
                let previous = r.get(2).cloned().flatten().and_then(|t| serde_json::from_str(&t).ok()).unwrap_or_else(TaskResult::pending);
                Claim::Go { previous }
            }
            "done" => Claim::Done,
            "stop" => Claim::Stopped(r.get(1).cloned().flatten().and_then(|s| StopReason::parse(&s)).unwrap_or(StopReason::Cancelled)),
            "late" => Claim::Late { was_running: r.get(1).cloned().flatten().as_deref() == Some("running") },
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

    /// Record a task's end and advance the run.
    pub async fn complete(
        &self,
        run: &str,
        task: &str,
        t: &TaskResult,
        queue_key: &str,
        children: &[(String, String)],
        skips: &[(String, TaskResult)],
    ) -> redis::RedisResult<Progress> {
        let mut inv = COMPLETE.key(self.run_key(run));
        inv.key(self.ready_key(run)).key(queue_key).key(self.events());
        self.common_args(&mut inv, run);
        inv.arg(task).arg(t.status.as_str()).arg(serde_json::to_string(t).unwrap_or_default()).arg(children.len());
        for (name, _) in children {
            inv.arg(name);
        }
        for (_, msg) in children {
            inv.arg(msg);
        }
        for (name, s) in skips {
            inv.arg(name).arg(serde_json::to_string(s).unwrap_or_default());
        }
        let mut c = self.broker.conn.clone();
        let r: Vec<String> = inv.invoke_async(&mut c).await?;
        Ok(progress(&r))
    }

    /// Stop a run: `pending` holds the result every task that has not
    /// started gets.
    pub async fn stop(&self, run: &str, reason: StopReason, pending: &[(String, TaskResult)]) -> redis::RedisResult<Progress> {
        let mut inv = STOP.key(self.run_key(run));
        inv.key(self.ready_key(run)).key(self.ready_key(run)).key(self.events());
        self.common_args(&mut inv, run);
        inv.arg(reason.as_str());
        for (name, s) in pending {
            inv.arg(name).arg(serde_json::to_string(s).unwrap_or_default());
        }
        let mut c = self.broker.conn.clone();
        let r: Vec<String> = inv.invoke_async(&mut c).await?;
        Ok(progress(&r))
    }

    fn common_args(&self, inv: &mut redis::ScriptInvocation<'_>, run: &str) {
        inv.arg(rfc3339(OffsetDateTime::now_utc())).arg(self.keep).arg(run);
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

fn progress(r: &[String]) -> Progress {
    match r.first().map(String::as_str) {
        Some("open") => Progress::Open,
        Some("finished") => Progress::Finished {
            status: r.get(1).and_then(|s| RunStatus::parse(s)).unwrap_or(RunStatus::Failed),
            reply: r.get(2).filter(|s| !s.is_empty()).cloned(),
        },
        Some("gone") => Progress::Gone,
        _ => Progress::Duplicate,
    }
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
        entity_id: f.get("entity").cloned().unwrap_or_else(|| run_id.to_string()),
        context: json("context"),
        input: json("input"),
        created_at: parse_time(f.get("created")).unwrap_or(OffsetDateTime::UNIX_EPOCH),
        started_at: parse_time(f.get("started")),
        finished_at: parse_time(f.get("finished")),
        tasks,
    }
}
