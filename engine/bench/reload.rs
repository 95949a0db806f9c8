//! Reload latency: how long from saving a workflow file to the registry
//! serving the new version, through the real file watcher.
//!
//! [`reload_latency`] fills a temp folder with a few workflows, starts a
//! [`crate::reload::watch`]er on it, then edits one file `edits` times (each
//! edit changes its description, written in place like most editors do) and
//! times each write until [`Registry::get`] returns the new version, polling
//! every half millisecond. The figure includes the debounce by design: it is
//! what an operator waits. Edits are spaced a little unevenly so they do not
//! all fall on the same phase of the debouncer's tick. Figures, never
//! assertions.

use super::workloads::median;
use crate::reload::{DEFAULT_DEBOUNCE, Registry, ReloadError};
use serde::Serialize;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Workflows besides the edited one in the watched folder.
pub const OTHER_FILES: usize = 20;
/// How long one edit may take to show before it counts as missed.
pub const EDIT_TIMEOUT: Duration = Duration::from_secs(5);
const POLL: Duration = Duration::from_micros(500);
const NAME: &str = "bench-reload";

/// The figures of [`reload_latency`]: write -> serving, in milliseconds.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub edits: usize,
    pub debounce_ms: f64,
    /// Files in the watched folder.
    pub files: usize,
    pub median_ms: f64,
    pub p95_ms: f64,
    pub min_ms: f64,
    pub max_ms: f64,
    pub mean_ms: f64,
    /// Edits not served within [`EDIT_TIMEOUT`] (not in the figures).
    pub missed: usize,
    /// Each edit's latency, in order.
    pub samples_ms: Vec<f64>,
}

/// Measure `edits` edits with the default debounce (50 ms).
pub fn reload_latency(edits: usize) -> Result<Report, ReloadError> {
    reload_latency_with(edits, DEFAULT_DEBOUNCE)
}

/// Measure `edits` edits with a given debounce.
pub fn reload_latency_with(edits: usize, debounce: Duration) -> Result<Report, ReloadError> {
    let dir = tempfile::tempdir().map_err(ReloadError::Io)?;
    for i in 0..OTHER_FILES {
        std::fs::write(dir.path().join(format!("other-{i:02}.yaml")), workflow(&format!("other-{i:02}"), "unchanged"))
            .map_err(ReloadError::Io)?;
    }
    let file = dir.path().join(format!("{NAME}.yaml"));
    std::fs::write(&file, workflow(NAME, "start")).map_err(ReloadError::Io)?;
    let registry = Arc::new(Registry::new(vec![dir.path().to_path_buf()], Default::default()));
    registry.load_all();
    let watcher = crate::reload::watch(Arc::clone(&registry), debounce)?;

    // One warm-up edit (not measured), then the measured ones.
    let mut samples = Vec::with_capacity(edits);
    let mut missed = 0;
    for i in 0..=edits {
        std::thread::sleep(Duration::from_millis((i as u64 * 7) % 13));
        let description = format!("edit {i}");
        match edit(&registry, &file, &description)? {
            Some(t) if i > 0 => samples.push(t.as_secs_f64() * 1e3),
            Some(_) => {}
            None => missed += 1,
        }
    }
    drop(watcher);

    let mut sorted = samples.clone();
    let median_ms = median(&mut sorted);
    Ok(Report {
        edits,
        debounce_ms: debounce.as_secs_f64() * 1e3,
        files: OTHER_FILES + 1,
        median_ms,
        p95_ms: percentile(&sorted, 0.95),
        min_ms: sorted.first().copied().unwrap_or(0.0),
        max_ms: sorted.last().copied().unwrap_or(0.0),
        mean_ms: if sorted.is_empty() { 0.0 } else { sorted.iter().sum::<f64>() / sorted.len() as f64 },
        missed,
        samples_ms: samples,
    })
}

/// Write a new description and wait for it to serve: the time taken, or
/// `None` after [`EDIT_TIMEOUT`].
fn edit(registry: &Registry, file: &Path, description: &str) -> Result<Option<Duration>, ReloadError> {
    let text = workflow(NAME, description);
    let start = Instant::now();
    std::fs::write(file, text).map_err(ReloadError::Io)?;
    loop {
        if registry.get(NAME).is_some_and(|w| w.description.as_deref() == Some(description)) {
            return Ok(Some(start.elapsed()));
        }
        if start.elapsed() > EDIT_TIMEOUT {
            return Ok(None);
        }
        std::thread::sleep(POLL);
    }
}

/// The nearest-rank percentile of sorted samples.
fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = (p * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// A small, realistic workflow: four tasks, a template, a retry.
fn workflow(name: &str, description: &str) -> String {
    format!(
        "version: 1\nname: {name}\ndescription: {description}\ntimeout: 5m\ntasks:\n  - name: fetch\n    uses: echo\n    with: {{url: \"https://example.com\"}}\n  - name: parse\n    parents: [fetch]\n    uses: echo\n    with: {{data: \"{{{{tasks.fetch.output}}}}\"}}\n  - name: store\n    parents: [parse]\n    retry: {{attempts: 3, delay: 1s}}\n    uses: echo\n  - name: notify\n    parents: [store]\n    uses: echo\n"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 0.95), 95.0);
        assert_eq!(percentile(&v, 0.5), 50.0);
        assert_eq!(percentile(&[3.0], 0.95), 3.0);
        assert_eq!(percentile(&[], 0.95), 0.0);
    }

    #[test]
    fn the_benchmark_workflow_is_valid() {
        let c = crate::validate::check_source("bench.yaml", workflow(NAME, "x"), crate::spec::Format::Yaml, &Default::default());
        assert!(!c.has_errors(), "{:?}", c.diagnostics);
    }

    #[test]
    fn a_few_edits_are_measured() {
        let r = reload_latency(3).unwrap();
        assert_eq!(r.samples_ms.len() + r.missed, 3);
        assert_eq!(r.missed, 0);
    }
}
