//! Runs: what a run is, its lifecycle, and the executor that drives a
//! validated [`crate::plan::Workflow`] to completion.

pub mod actions;
pub mod executor;
pub mod output;
pub mod record;
pub mod result;
pub mod sched;
pub mod secrets;
pub mod state;

pub use result::{Routing, RunResult, TaskResult};
pub use state::{RunStatus, TaskStatus};
