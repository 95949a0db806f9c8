//! Benchmarks behind `taskweave bench`: figures, never assertions.

pub mod api;
pub mod reload;
pub mod validate;
pub mod workloads;
