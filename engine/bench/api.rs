//! `taskweave bench api`: end-to-end throughput of the HTTP API.
//!
//! Serves [`crate::api::router`] on 127.0.0.1 (an ephemeral port) in this
//! process, over an engine with a fresh SQLite history in a temp folder and
//! one no-op `echo` workflow on the local backend. `concurrency` clients
//! (reqwest, keep-alive) each loop over `POST /v1/workflows/{name}/runs` and
//! `GET /v1/runs/{id}?wait=30s` until `runs` runs have succeeded. Figures are
//! runs per second, median over repetitions (after one warm-up), and the
//! per-run latency (submit + result) percentiles; never assertions.

use crate::api::server::{ConnLimits, Server};
use crate::api::{ApiOptions, router};
use crate::engine::EngineBuilder;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// The workflow every run executes: one no-op task.
pub const WORKFLOW: &str = "version: 1\nname: bench-api\ntasks:\n  - {name: echo, uses: echo, with: {n: \"{{input.n}}\"}}\n";

/// What to measure.
#[derive(Debug, Clone)]
pub struct ApiBench {
    /// Runs per repetition.
    pub runs: usize,
    /// Concurrent clients.
    pub concurrency: usize,
    /// Measured repetitions (after one warm-up).
    pub repeat: usize,
    /// Store URL; `None`: a fresh SQLite file in a temp folder.
    pub store: Option<String>,
}

impl Default for ApiBench {
    fn default() -> Self {
        ApiBench { runs: 2000, concurrency: 32, repeat: 5, store: None }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub runs: usize,
    pub concurrency: usize,
    pub repeat: usize,
    pub store: String,
    /// Runs per second, median of the repetitions.
    pub runs_per_sec: f64,
    pub min_runs_per_sec: f64,
    pub max_runs_per_sec: f64,
    /// Submit + result of one run, over every measured run.
    pub latency_p50_ms: f64,
    pub latency_p99_ms: f64,
    pub samples_runs_per_sec: Vec<f64>,
    pub peak_rss_mb: f64,
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "api: {} runs x {} repetitions, {} clients, store {}\n  {:.0} runs/s median (min {:.0}, max {:.0}); latency p50 {:.2} ms, p99 {:.2} ms; peak RSS {:.1} MiB",
            self.runs,
            self.repeat,
            self.concurrency,
            self.store,
            self.runs_per_sec,
            self.min_runs_per_sec,
            self.max_runs_per_sec,
            self.latency_p50_ms,
            self.latency_p99_ms,
            self.peak_rss_mb
        )
    }
}

/// `runs` runs through the API with `concurrency` clients, 5 repetitions, a SQLite history.
pub async fn api_throughput(runs: usize, concurrency: usize) -> Result<Report, String> {
    api_throughput_with(&ApiBench { runs, concurrency, ..Default::default() }).await
}

#[derive(Deserialize)]
struct Accepted {
    run_id: String,
}

#[derive(Deserialize)]
struct Finished {
    status: String,
}

pub async fn api_throughput_with(b: &ApiBench) -> Result<Report, String> {
    let (runs, concurrency, repeat) = (b.runs.max(1), b.concurrency.max(1), b.repeat.max(1));
    let tmp = tempfile::tempdir().map_err(|e| format!("temp folder: {e}"))?;
    let store = b.store.clone().unwrap_or_else(|| format!("sqlite://{}", tmp.path().join("bench.db").display()));
    let engine = EngineBuilder::new().store(store.clone()).build().await.map_err(|e| e.to_string())?;
    let checked = crate::validate::check_source("bench-api.yaml", WORKFLOW.to_string(), crate::spec::Format::Yaml, &Default::default());
    engine.register_workflow(checked.workflow.ok_or("the bench workflow is invalid")?);

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.map_err(|e| format!("bind: {e}"))?;
    // The accept loop `taskweave serve` runs, with its default limits.
    let stop = CancellationToken::new();
    let app = router(engine.clone(), ApiOptions { shutdown: stop.clone(), ..Default::default() });
    let server = Server::start(listener, app, ConnLimits::default(), stop).map_err(|e| e.to_string())?;
    let addr = server.local_addr();
    let client = reqwest::Client::builder().pool_max_idle_per_host(concurrency).build().map_err(|e| e.to_string())?;
    let base = Arc::new(format!("http://{addr}"));

    let mut samples = Vec::with_capacity(repeat);
    let mut latencies: Vec<f64> = Vec::with_capacity(runs * repeat);
    let mut outcome = Ok(());
    for rep in 0..=repeat {
        // The warm-up opens the connections and fills the caches.
        let n = if rep == 0 { runs.min(500) } else { runs };
        let started = Instant::now();
        match one_round(&client, &base, n, concurrency).await {
            Ok(mut l) => {
                let secs = started.elapsed().as_secs_f64();
                if rep > 0 {
                    samples.push(n as f64 / secs);
                    latencies.append(&mut l);
                }
            }
            Err(e) => {
                outcome = Err(e);
                break;
            }
        }
    }
    server.shutdown();
    if tokio::time::timeout(Duration::from_secs(5), server.closed()).await.is_err() {
        server.abort().await;
    }
    engine.shutdown().await;
    outcome?;

    let mut sorted = samples.clone();
    let median = super::workloads::median(&mut sorted);
    latencies.sort_by(f64::total_cmp);
    let pct =
        |p: f64| latencies.get(((latencies.len() as f64 * p) as usize).min(latencies.len().saturating_sub(1))).copied().unwrap_or(0.0);
    Ok(Report {
        runs,
        concurrency,
        repeat,
        store: if b.store.is_some() { store } else { "sqlite (temp file)".into() },
        runs_per_sec: median,
        min_runs_per_sec: sorted.first().copied().unwrap_or(0.0),
        max_runs_per_sec: sorted.last().copied().unwrap_or(0.0),
        latency_p50_ms: pct(0.50),
        latency_p99_ms: pct(0.99),
        samples_runs_per_sec: samples,
        peak_rss_mb: super::workloads::peak_rss_mb(),
    })
}

/// `n` runs by `concurrency` clients; the latency of each in milliseconds.
async fn one_round(client: &reqwest::Client, base: &Arc<String>, n: usize, concurrency: usize) -> Result<Vec<f64>, String> {
    let left = Arc::new(AtomicUsize::new(n));
    let mut clients = tokio::task::JoinSet::new();
    for _ in 0..concurrency.min(n) {
        let (client, base, left) = (client.clone(), Arc::clone(base), Arc::clone(&left));
        clients.spawn(async move {
            let mut lat = Vec::new();
            let submit = format!("{base}/v1/workflows/bench-api/runs");
            let mut i = 0u64;
            while left.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |x| x.checked_sub(1)).is_ok() {
                let t = Instant::now();
                i += 1;
                let resp =
                    client.post(&submit).json(&serde_json::json!({"input": {"n": i}})).send().await.map_err(|e| format!("submit: {e}"))?;
                if resp.status() != reqwest::StatusCode::ACCEPTED {
                    return Err(format!("submit answered {}: {}", resp.status(), resp.text().await.unwrap_or_default()));
                }
                let accepted: Accepted = resp.json().await.map_err(|e| format!("submit answer: {e}"))?;
                let resp =
                    client.get(format!("{base}/v1/runs/{}?wait=30s", accepted.run_id)).send().await.map_err(|e| format!("result: {e}"))?;
                let done: Finished = resp.json().await.map_err(|e| format!("result answer: {e}"))?;
                if done.status != "succeeded" {
                    return Err(format!("run {} ended {}", accepted.run_id, done.status));
                }
                lat.push(t.elapsed().as_secs_f64() * 1e3);
            }
            Ok::<_, String>(lat)
        });
    }
    let mut all = Vec::with_capacity(n);
    while let Some(r) = clients.join_next().await {
        all.append(&mut r.map_err(|e| format!("a client failed: {e}"))??);
    }
    Ok(all)
}
