//! `[instance]`: how an engine process holds on to the runs it executes.
//!
//! Each process renews a lease in the store every `heartbeat`; when a
//! lease has not been renewed for `lease`, its runs are marked interrupted
//! by the next process that looks (at start-up, and every `heartbeat` while
//! it serves). A shorter lease finds crashed runs sooner; a longer one
//! tolerates longer stalls of the store.

use serde::{Deserialize, Deserializer};
use std::time::Duration;

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InstanceConfig {
    /// How often the lease is renewed (default `5s`; `TASKWEAVE_HEARTBEAT`).
    #[serde(default = "default_heartbeat", deserialize_with = "duration")]
    pub heartbeat: Duration,
    /// How long a lease lasts without renewal (default `30s`; `TASKWEAVE_LEASE`).
    #[serde(default = "default_lease", deserialize_with = "duration")]
    pub lease: Duration,
}

fn default_heartbeat() -> Duration {
    crate::store::HEARTBEAT
}

fn default_lease() -> Duration {
    crate::store::LEASE
}

impl Default for InstanceConfig {
    fn default() -> Self {
        InstanceConfig { heartbeat: default_heartbeat(), lease: default_lease() }
    }
}

impl InstanceConfig {
    /// What is wrong with the settings, if anything: a lease must outlast
    /// two heartbeats, so one late renewal does not lose it.
    pub fn problem(&self) -> Option<String> {
        if self.heartbeat.is_zero() {
            return Some("`heartbeat` must be longer than 0s".into());
        }
        (self.lease < self.heartbeat * 2).then(|| {
            format!(
                "`lease` ({}) must be at least twice `heartbeat` ({})",
                humantime::format_duration(self.lease),
                humantime::format_duration(self.heartbeat)
            )
        })
    }
}

/// A duration written as text: `500ms`, `5s`, `1m30s`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s.trim()).map_err(|e| format!("`{s}` is not a duration such as `5s` or `500ms`: {e}"))
}

fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let s = String::deserialize(d)?;
    parse_duration(&s).map_err(serde::de::Error::custom)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_checks() {
        let c = InstanceConfig::default();
        assert_eq!((c.heartbeat, c.lease), (Duration::from_secs(5), Duration::from_secs(30)));
        assert_eq!(c.problem(), None);
        let short = InstanceConfig { heartbeat: Duration::from_secs(5), lease: Duration::from_secs(6) };
        assert!(short.problem().unwrap().contains("at least twice"));
        assert!(parse_duration("soon").is_err());
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
    }
}
