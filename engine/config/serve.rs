//! The `[serve]` table of `taskweave.toml`: the limits `taskweave serve`
//! puts on every client connection, so that slow or hostile clients cannot
//! hold the server's connections (and file descriptors) open.
//!
//! Every key is optional; `taskweave serve` flags and their environment
//! variables override the file, and an unset key takes its default:
//!
//! | key | default | flag / environment |
//! |---|---|---|
//! | `header_timeout` | `10s` | `--header-timeout` / `TASKWEAVE_HEADER_TIMEOUT` |
//! | `body_timeout` | `30s` | `--body-timeout` / `TASKWEAVE_BODY_TIMEOUT` |
//! | `idle_timeout` | `60s` | `--idle-timeout` / `TASKWEAVE_IDLE_TIMEOUT` |
//! | `max_connections` | `1024` | `--max-connections` / `TASKWEAVE_MAX_CONNECTIONS` |
//!
//! Values are checked while the file is read (a duration that does not
//! parse, a zero), so a mistake is a positioned diagnostic, not a server
//! that drops every connection.

use serde::{Deserialize, Deserializer};
use std::time::Duration;

/// Defaults of `[serve]`: how long a client may take to send its headers,
/// how long an idle connection stays open, how many connections at once,
/// how long a request body may take.
pub const HEADER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
pub const IDLE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);
pub const MAX_CONNECTIONS: usize = 1024;
pub const BODY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// `[serve]`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServeConfig {
    /// How long a client may take to send a request's headers, from the
    /// connection's start or from the first byte of a later request.
    #[serde(default, deserialize_with = "positive_duration")]
    pub header_timeout: Option<Duration>,
    /// How long a client may take to send a whole request body.
    #[serde(default, deserialize_with = "positive_duration")]
    pub body_timeout: Option<Duration>,
    /// How long a kept-alive connection may wait for its next request.
    #[serde(default, deserialize_with = "positive_duration")]
    pub idle_timeout: Option<Duration>,
    /// How many client connections are served at once; more wait to be accepted.
    #[serde(default, deserialize_with = "at_least_one")]
    pub max_connections: Option<usize>,
}

/// A duration string (`10s`, `500ms`) that is not zero.
pub fn parse_positive_duration(s: &str) -> Result<Duration, String> {
    let d = crate::plan::parse_duration(s)?;
    if d.is_zero() {
        return Err(format!("`{s}` is zero; a zero limit would drop every connection"));
    }
    Ok(d)
}

pub(crate) fn positive_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    let s = String::deserialize(d)?;
    parse_positive_duration(&s).map(Some).map_err(serde::de::Error::custom)
}

fn at_least_one<'de, D: Deserializer<'de>>(d: D) -> Result<Option<usize>, D::Error> {
    let n = i64::deserialize(d)?;
    match usize::try_from(n) {
        Ok(n) if n >= 1 => Ok(Some(n)),
        _ => Err(serde::de::Error::custom(format!("`max_connections` must be at least 1, not {n}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    #[test]
    fn keys_parse_into_durations_and_counts() {
        let c = Config::parse("[serve]\nheader_timeout = \"5s\"\nbody_timeout = \"1m\"\nidle_timeout = \"90s\"\nmax_connections = 64\n")
            .unwrap();
        assert_eq!(
            c.serve,
            ServeConfig {
                header_timeout: Some(Duration::from_secs(5)),
                body_timeout: Some(Duration::from_secs(60)),
                idle_timeout: Some(Duration::from_secs(90)),
                max_connections: Some(64),
            }
        );
        assert_eq!(Config::parse("").unwrap().serve, ServeConfig::default());
    }

    #[test]
    fn bad_values_are_positioned() {
        for (text, line, col, words) in [
            ("[serve]\nheader_timeout = \"10\"\n", 2, 18, "no unit"),
            ("[serve]\nidle_timeout = \"0s\"\n", 2, 16, "zero"),
            ("[serve]\nbody_timeout = \"soon\"\n", 2, 16, "not a duration"),
            ("[serve]\nmax_connections = 0\n", 2, 19, "at least 1"),
            ("[serve]\nmax_connections = -5\n", 2, 19, "at least 1"),
        ] {
            let d = Config::parse_file("t.toml", text).unwrap_err();
            assert!(d.message.contains(words), "{text}: {}", d.message);
            assert_eq!((d.span.start.line, d.span.start.column), (line, col), "{text}: {}", d.message);
        }
        let d = Config::parse_file("t.toml", "[serve]\nheader_timout = \"1s\"\n").unwrap_err();
        assert_eq!(d.help.as_deref(), Some("did you mean `header_timeout`?"));
    }
}
