//! Execution benchmarks: `chain N`, `fanout N` (N tasks and a join) and
//! `runs N` (N concurrent runs of a -> (b, c)), all no-op `echo` tasks, on
//! any backend of an [`Engine`]. Figures are medians over repetitions, with
//! per-task overhead and the process's peak RSS.

use crate::engine::{Engine, RunOptions};
use crate::run::RunStatus;
use serde::Serialize;
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Workload {
    Chain,
    Fanout,
    Runs,
}

impl Workload {
    pub fn default_size(self) -> usize {
        match self {
            Workload::Chain => 100,
            Workload::Fanout => 1000,
            Workload::Runs => 1000,
        }
    }
}

/// The YAML of a workload's workflow.
pub fn workflow_yaml(w: Workload, n: usize) -> String {
    let mut s = String::with_capacity(n * 48 + 64);
    match w {
        Workload::Chain => {
            s.push_str(&format!("version: 1\nname: bench-chain-{n}\ntasks:\n"));
            for i in 0..n {
                if i == 0 {
                    s.push_str("  - {name: t0, uses: echo}\n");
                } else {
                    s.push_str(&format!("  - {{name: t{i}, parents: [t{}], uses: echo}}\n", i - 1));
                }
            }
        }
        Workload::Fanout => {
            s.push_str(&format!("version: 1\nname: bench-fanout-{n}\ntasks:\n"));
            for i in 0..n {
                s.push_str(&format!("  - {{name: t{i}, uses: echo}}\n"));
            }
            s.push_str("  - name: join\n    uses: echo\n    parents:\n");
            for i in 0..n {
                s.push_str(&format!("      - t{i}\n"));
            }
        }
        Workload::Runs => s.push_str(
            "version: 1\nname: bench-runs\ntasks:\n  - {name: a, uses: echo}\n  - {name: b, parents: [a], uses: echo}\n  - {name: c, parents: [a], uses: echo}\n",
        ),
    }
    s
}

/// A workload's YAML with `when: EXPR` on every task: what evaluating a
/// condition per task costs, against the same workload without.
pub fn with_condition(yaml: &str, expr: &str) -> String {
    let quoted = format!("'{}'", expr.replace('\'', "''"));
    let mut out = String::with_capacity(yaml.len() + yaml.lines().count() * (quoted.len() + 8));
    for line in yaml.lines() {
        if line.starts_with("  - {name:") && line.ends_with('}') {
            out.push_str(&line[..line.len() - 1]);
            out.push_str(&format!(", when: {quoted}}}\n"));
        } else if let Some(rest) = line.strip_prefix("  - name: ") {
            out.push_str(&format!("  - name: {rest}\n    when: {quoted}\n"));
        } else {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

/// The median cost of one evaluation of a compiled condition, in
/// nanoseconds, over `repeat` rounds of `n` evaluations against a context
/// like a task's (an input, a parent's output and status).
pub fn condition_ns(expr: &str, n: usize, repeat: usize) -> Result<(f64, Vec<f64>), String> {
    let c = crate::plan::cond::Condition::compile(expr).map_err(|e| format!("invalid condition: {}", e.message))?;
    let ctx = serde_json::json!({
        "input": {"document_path": "/data/report.pdf", "mode": "full", "tags": ["a", "b", "c"]},
        "tasks": {"split": {"output": {"pages": ["one", "two", "three"], "count": 3}, "status": "succeeded"}},
        "run": {"id": "0193a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b", "attempt": 1},
        "workflow": {"name": "bench", "version": "sha256:0"},
        "context": {"tenant": "acme"},
    });
    let mut rounds = Vec::with_capacity(repeat);
    for round in 0..=repeat {
        let t = Instant::now();
        for _ in 0..n {
            c.eval(std::hint::black_box(&ctx)).map_err(|e| c.failure(&e))?;
        }
        if round > 0 {
            rounds.push(t.elapsed().as_nanos() as f64 / n as f64);
        }
    }
    let mut sorted = rounds.clone();
    Ok((median(&mut sorted), rounds))
}

#[derive(Debug, Clone, Serialize)]
pub struct Sample {
    pub wall_ms: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub workload: Workload,
    pub size: usize,
    pub backend: String,
    pub repeat: usize,
    pub tasks_per_rep: usize,
    /// Validation and compilation of the workload's workflow, once.
    pub compile_ms: f64,
    pub median_ms: f64,
    pub min_ms: f64,
    pub max_ms: f64,
    pub tasks_per_sec: f64,
    pub per_task_us: f64,
    pub peak_rss_mb: f64,
    pub samples_ms: Vec<f64>,
}

/// Peak resident set size of this process, in MiB (Linux `VmHWM`).
pub fn peak_rss_mb() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("VmHWM:")).and_then(|l| l.split_whitespace().nth(1)).and_then(|kb| kb.parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

pub fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        return 0.0;
    }
    let m = v.len() / 2;
    if v.len() % 2 == 1 { v[m] } else { (v[m - 1] + v[m]) / 2.0 }
}

/// Run a workload `repeat` times (after one warm-up) and report.
pub async fn run(engine: &Engine, w: Workload, n: usize, backend: &str, repeat: usize) -> Result<Report, String> {
    run_with(engine, w, n, backend, repeat, 1, None).await
}

/// As [`run`], with the runs of a repetition submitted by `submitters`
/// concurrent callers (as clients of a remote backend would).
/// `when`: a condition put on every task ([`with_condition`]).
pub async fn run_with(
    engine: &Engine,
    w: Workload,
    n: usize,
    backend: &str,
    repeat: usize,
    submitters: usize,
    when: Option<&str>,
) -> Result<Report, String> {
    let t0 = Instant::now();
    let yaml = match when {
        Some(expr) => with_condition(&workflow_yaml(w, n), expr),
        None => workflow_yaml(w, n),
    };
    let checked = crate::validate::check_source("bench.yaml", yaml, crate::spec::Format::Yaml, &Default::default());
    let wf = checked.workflow.ok_or_else(|| format!("bench workflow invalid: {:?}", checked.diagnostics.first()))?;
    let compile_ms = t0.elapsed().as_secs_f64() * 1e3;
    let (runs, tasks_per_rep) = match w {
        Workload::Runs => (n, n * 3),
        _ => (1, wf.tasks.len()),
    };
    let mut samples = Vec::with_capacity(repeat);
    for rep in 0..=repeat {
        let started = Instant::now();
        let mut ids = Vec::with_capacity(runs);
        if submitters > 1 {
            let mut set = tokio::task::JoinSet::new();
            for part in 0..submitters.min(runs) {
                let (engine, wf, backend) = (engine.clone(), Arc::clone(&wf), backend.to_string());
                set.spawn(async move {
                    let mut ids = Vec::new();
                    for _ in (part..runs).step_by(submitters) {
                        let opts = RunOptions { backend: Some(backend.clone()), ..Default::default() };
                        ids.push(engine.submit(Arc::clone(&wf), opts).await.map_err(|e| e.to_string())?);
                    }
                    Ok::<_, String>(ids)
                });
            }
            while let Some(part) = set.join_next().await {
                ids.extend(part.map_err(|e| e.to_string())??);
            }
        } else {
            for _ in 0..runs {
                let opts = RunOptions { backend: Some(backend.to_string()), ..Default::default() };
                ids.push(engine.submit(Arc::clone(&wf), opts).await.map_err(|e| e.to_string())?);
            }
        }
        for id in &ids {
            let r = engine.get_result(id, Some(Duration::from_secs(3600))).await.map_err(|e| e.to_string())?;
            if r.status != RunStatus::Succeeded {
                return Err(format!("run {id} ended {}: {:?}", r.status, r.error));
            }
        }
        let ms = started.elapsed().as_secs_f64() * 1e3;
        if rep > 0 {
            samples.push(ms);
        }
    }
    let mut sorted = samples.clone();
    let med = median(&mut sorted);
    Ok(Report {
        workload: w,
        size: n,
        backend: backend.to_string(),
        repeat,
        tasks_per_rep,
        compile_ms,
        median_ms: med,
        min_ms: sorted.first().copied().unwrap_or(0.0),
        max_ms: sorted.last().copied().unwrap_or(0.0),
        tasks_per_sec: if med > 0.0 { tasks_per_rep as f64 / (med / 1e3) } else { 0.0 },
        per_task_us: if tasks_per_rep > 0 { med * 1e3 / tasks_per_rep as f64 } else { 0.0 },
        peak_rss_mb: peak_rss_mb(),
        samples_ms: samples,
    })
}

/// `taskweave worker` processes started for a benchmark (`--workers N`),
/// stopped by PID: SIGTERM, then SIGKILL after 10 s.
pub struct WorkerProcesses {
    children: Vec<std::process::Child>,
}

impl WorkerProcesses {
    pub fn start(n: usize, backend: &str, concurrency: u32, config: Option<&std::path::Path>) -> std::io::Result<WorkerProcesses> {
        let exe = std::env::current_exe()?;
        let mut children = Vec::with_capacity(n);
        for _ in 0..n {
            let mut cmd = std::process::Command::new(&exe);
            if let Some(c) = config {
                cmd.arg("--config").arg(c);
            }
            cmd.args(["worker", "--backend", backend, "--concurrency", &concurrency.to_string()])
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::null());
            match cmd.spawn() {
                Ok(c) => children.push(c),
                Err(e) => {
                    WorkerProcesses { children }.stop();
                    return Err(e);
                }
            }
        }
        Ok(WorkerProcesses { children })
    }

    pub fn stop(mut self) {
        for c in &self.children {
            // SAFETY: signalling a child process started above.
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
        }
        for c in &mut self.children {
            let until = Instant::now() + Duration::from_secs(10);
            while matches!(c.try_wait(), Ok(None)) && Instant::now() < until {
                std::thread::sleep(Duration::from_millis(20));
            }
            if matches!(c.try_wait(), Ok(None)) {
                let _ = c.kill();
            }
            let _ = c.wait();
        }
    }
}

#[cfg(test)]
mod condition_tests {
    use super::*;

    #[test]
    fn every_task_of_a_workload_gets_the_condition_and_it_is_evaluated() {
        for w in [Workload::Chain, Workload::Fanout, Workload::Runs] {
            let yaml = with_condition(&workflow_yaml(w, 5), "input.x != 'y'");
            let checked = crate::validate::check_source("b.yaml", yaml, crate::spec::Format::Yaml, &Default::default());
            let wf = checked.workflow.unwrap_or_else(|| panic!("{w:?}: {:?}", checked.diagnostics));
            assert!(wf.tasks.iter().all(|t| t.when.as_ref().is_some_and(|c| c.source == "input.x != 'y'")), "{w:?}");
        }
        let (median, rounds) = condition_ns("size(tasks.split.output.pages) > 0", 10, 3).unwrap();
        assert!(median > 0.0 && rounds.len() == 3);
        assert!(condition_ns("1 / 0 == 1", 1, 1).unwrap_err().to_lowercase().contains("division by zero"));
    }
}
