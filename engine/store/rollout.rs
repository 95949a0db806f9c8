//! The rollout dashboard's figures, computed by SQL over the runs table
//! (the same statements for SQLite and PostgreSQL, with the few dialect
//! differences rendered here): runs per backend and their share, success
//! rate, p50/p95 duration (nearest rank, with window functions), runs per
//! flag variant, fallbacks and flag evaluation errors.

use super::sql::{Dialect, Stmt, Val, ts_text};
use super::{DbRow, Result, Store};
use serde::Serialize;
use sqlx::{AssertSqlSafe, SqlSafeStr};
use std::collections::BTreeMap;
use time::OffsetDateTime;

/// Which runs the dashboard counts.
#[derive(Debug, Clone)]
pub struct RolloutFilter {
    /// Runs created at or after this time.
    pub since: OffsetDateTime,
    pub workflow: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BackendStats {
    pub backend: String,
    pub runs: u64,
    /// Share of all counted runs, in percent.
    pub share: f64,
    pub succeeded: u64,
    /// Failed or timed out.
    pub failed: u64,
    pub cancelled: u64,
    /// Queued or running.
    pub active: u64,
    /// Succeeded over finished runs, in percent; `None` before any finished.
    pub success_rate: Option<f64>,
    pub p50_ms: Option<i64>,
    pub p95_ms: Option<i64>,
    /// Runs that came here because the backend their flag chose refused them.
    pub fallbacks_in: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct VariantStats {
    pub flag: String,
    /// `None` when the flag gave no variant (boolean flags, no match, errors).
    pub variant: Option<String>,
    pub reason: Option<String>,
    pub backend: String,
    pub runs: u64,
    pub succeeded: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RolloutStats {
    #[serde(with = "time::serde::rfc3339")]
    pub since: OffsetDateTime,
    pub workflow: Option<String>,
    pub total: u64,
    pub backends: Vec<BackendStats>,
    pub variants: Vec<VariantStats>,
    /// Runs routed to the rule's default because the chosen backend refused them.
    pub fallbacks: u64,
    /// Runs whose flag could not be evaluated (sent to the rule's default).
    pub flag_errors: u64,
}

fn n(v: Option<i64>) -> u64 {
    u64::try_from(v.unwrap_or(0)).unwrap_or(0)
}

impl Store {
    /// The dashboard over runs created since `f.since` (of one workflow when set).
    pub async fn rollout_stats(&self, f: &RolloutFilter) -> Result<RolloutStats> {
        let d = self.inner.sql.dialect;
        let (since_param, duration) = match d {
            Dialect::Sqlite => ("$1", "CAST((julianday(finished_at) - julianday(started_at)) * 86400000.0 AS BIGINT)"),
            Dialect::Postgres => ("$1::timestamptz", "CAST(EXTRACT(EPOCH FROM (finished_at - started_at)) * 1000 AS BIGINT)"),
        };
        let mut filter = format!("created_at >= {since_param}");
        let mut args = vec![Val::Text(Some(ts_text(f.since)))];
        if let Some(w) = &f.workflow {
            filter.push_str(" AND workflow = $2");
            args.push(Val::Text(Some(w.clone())));
        }
        let stmt = |sql: String| Stmt { sql: AssertSqlSafe(sql).into_sql_str(), args: args.clone() };
        let count = |cond: &str| format!("CAST(SUM(CASE WHEN {cond} THEN 1 ELSE 0 END) AS BIGINT)");

        let per_backend = stmt(format!(
            "SELECT backend, CAST(COUNT(*) AS BIGINT) AS runs, {succeeded} AS succeeded, {failed} AS failed, \
             {cancelled} AS cancelled, {active} AS active, {fallbacks} AS fallbacks, {errors} AS errors \
             FROM runs WHERE {filter} GROUP BY backend ORDER BY backend",
            succeeded = count("status = 'succeeded'"),
            failed = count("status IN ('failed', 'timed_out')"),
            cancelled = count("status = 'cancelled'"),
            active = count("status IN ('queued', 'running')"),
            fallbacks = count("routing_fallback = 1"),
            errors = count("routing_error = 1"),
        ));
        let rows = self
            .inner
            .fetch("computing the migration dashboard", per_backend, |r: &dyn DbRow| {
                Ok((
                    r.req_text("backend")?,
                    n(r.int("runs")?),
                    n(r.int("succeeded")?),
                    n(r.int("failed")?),
                    n(r.int("cancelled")?),
                    n(r.int("active")?),
                    n(r.int("fallbacks")?),
                    n(r.int("errors")?),
                ))
            })
            .await?;

        // Nearest-rank percentiles: the k-th shortest run, k = ceil(p * n / 100).
        let percentiles = stmt(format!(
            "SELECT backend, rn, n, d FROM (\
               SELECT backend, {duration} AS d, \
                 ROW_NUMBER() OVER (PARTITION BY backend ORDER BY {duration}, run_id) AS rn, \
                 COUNT(*) OVER (PARTITION BY backend) AS n \
               FROM runs WHERE {filter} AND started_at IS NOT NULL AND finished_at IS NOT NULL \
                 AND status IN ('succeeded', 'failed', 'timed_out', 'cancelled')\
             ) t WHERE rn = (n * 50 + 99) / 100 OR rn = (n * 95 + 99) / 100",
        ));
        let mut p: BTreeMap<String, (Option<i64>, Option<i64>)> = BTreeMap::new();
        let prow = self
            .inner
            .fetch("computing run durations", percentiles, |r: &dyn DbRow| {
                Ok((r.req_text("backend")?, r.int("rn")?.unwrap_or(0), r.int("n")?.unwrap_or(0), r.int("d")?))
            })
            .await?;
        for (backend, rn, count, dur) in prow {
            let e = p.entry(backend).or_default();
            if rn == (count * 50 + 99) / 100 {
                e.0 = dur;
            }
            if rn == (count * 95 + 99) / 100 {
                e.1 = dur;
            }
        }

        let per_variant = stmt(format!(
            "SELECT routing_flag AS flag, routing_variant AS variant, routing_reason AS reason, backend, \
             CAST(COUNT(*) AS BIGINT) AS runs, {succeeded} AS succeeded \
             FROM runs WHERE {filter} AND routing_flag IS NOT NULL \
             GROUP BY routing_flag, routing_variant, routing_reason, backend \
             ORDER BY routing_flag, routing_variant, routing_reason, backend",
            succeeded = count("status = 'succeeded'"),
        ));
        let variants = self
            .inner
            .fetch("counting runs per flag variant", per_variant, |r: &dyn DbRow| {
                Ok(VariantStats {
                    flag: r.req_text("flag")?,
                    variant: r.text("variant")?,
                    reason: r.text("reason")?,
                    backend: r.req_text("backend")?,
                    runs: n(r.int("runs")?),
                    succeeded: n(r.int("succeeded")?),
                })
            })
            .await?;

        let total: u64 = rows.iter().map(|r| r.1).sum();
        let mut stats = RolloutStats {
            since: f.since,
            workflow: f.workflow.clone(),
            total,
            backends: Vec::with_capacity(rows.len()),
            variants,
            fallbacks: 0,
            flag_errors: 0,
        };
        for (backend, runs, succeeded, failed, cancelled, active, fallbacks, errors) in rows {
            let finished = succeeded + failed + cancelled;
            let (p50_ms, p95_ms) = p.get(&backend).copied().unwrap_or_default();
            stats.fallbacks += fallbacks;
            stats.flag_errors += errors;
            stats.backends.push(BackendStats {
                backend,
                runs,
                share: if total == 0 { 0.0 } else { round2(runs as f64 * 100.0 / total as f64) },
                succeeded,
                failed,
                cancelled,
                active,
                success_rate: (finished > 0).then(|| round2(succeeded as f64 * 100.0 / finished as f64)),
                p50_ms,
                p95_ms,
                fallbacks_in: fallbacks,
            });
        }
        Ok(stats)
    }
}

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}
