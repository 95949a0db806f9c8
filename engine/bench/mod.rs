//! Benchmarks behind `taskweave bench`: figures, never assertions.

pub mod workloads;
