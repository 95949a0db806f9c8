//! taskweave: a declarative workflow engine.
//!
//! The engine is a pipeline of types, one module per phase:
//!
//! ```text
//! text (YAML | TOML) -> spec (positioned document, raw serde types)
//!   -> validate (JSON Schema + rules -> diagnostics)
//!   -> plan (validated Workflow: ids, durations, templates, DAG, hash)
//!   -> run (scheduler, actions, state machines) -> backend -> store
//! ```

pub mod api;
pub mod backend;
pub mod bench;
pub mod config;
pub mod diag;
pub mod engine;
pub mod flags;
pub mod plan;
pub mod reload;
pub mod run;
pub mod spec;
pub mod store;
pub mod validate;

pub use diag::{Code, Diagnostic, Severity};
pub use engine::{Engine, EngineBuilder, EngineError, RunOptions, Started};
pub use plan::Workflow;
pub mod cli;

#[cfg(test)]
mod layers;
