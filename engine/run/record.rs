//! How a run is recorded: the executor reports through [`Recorder`], a trait
//! this layer owns, so `run` never depends on the store that implements it.

use super::{RunResult, TaskResult};

/// One try of one task.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct AttemptRecord {
    pub run_id: String,
    pub task: String,
    pub attempt: u32,
    pub status: super::TaskStatus,
    pub error: Option<String>,
    #[serde(with = "time::serde::rfc3339")]
    pub started_at: time::OffsetDateTime,
    #[serde(with = "time::serde::rfc3339::option")]
    pub finished_at: Option<time::OffsetDateTime>,
}

/// Where the executor records runs as they change: writes are queued and
/// batched by the implementation, `flush` waits until they are durable.
#[async_trait::async_trait]
pub trait Recorder: Send + Sync + 'static {
    /// The run's own fields (status, times, error), not its tasks.
    fn run_fields(&self, run: &RunResult);
    /// One task's current state.
    fn task(&self, run_id: &str, task: &str, t: &TaskResult);
    /// One finished attempt.
    fn attempt(&self, a: AttemptRecord);
    /// Wait until everything recorded so far is durable.
    async fn flush(&self) -> Result<(), String>;
    /// The implementation itself, for the layers above that know it (the
    /// backends use the store writer's creation calls through it).
    fn as_any(&self) -> &dyn std::any::Any;
}
