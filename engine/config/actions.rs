//! `[actions]` of `taskweave.toml`: the limits that keep hostile run input
//! from turning a task action against the machine that runs it: how much
//! output is kept, how long a stopped process gets, which files
//! `extract-text` may read and which addresses `http:` tasks may reach.
//!
//! ```toml
//! [actions]
//! max_output_bytes = "10MiB"   # captured stdout/stderr per stream, HTTP response bodies, text one template renders
//! kill_grace = "2s"            # between SIGTERM and SIGKILL
//!
//! [actions.extract_text]
//! root = "documents"           # relative to this file; default: the working directory
//! max_bytes = "10MiB"
//!
//! [actions.http]
//! timeout = "5m"               # a request of a task without its own timeout
//! deny_private = false         # TASKWEAVE_HTTP_DENY_PRIVATE
//! allow = []                   # CIDRs, addresses, host names, `*.example.com`
//! deny = []
//! follow_redirects = true
//! max_redirects = 10
//! ```
//!
//! Environment (applied through [`super::keys::KEYS`]):
//! `TASKWEAVE_HTTP_DENY_PRIVATE` (`true`/`false`; anything else denies,
//! with a warning) and `TASKWEAVE_EXTRACT_TEXT_ROOT`.

use crate::run::actions::egress::DEFAULT_MAX_REDIRECTS;
use crate::run::actions::{Egress, ExtractTextSettings, HostRule, Limits};
use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ActionsConfig {
    /// Captured stdout/stderr per stream, and an HTTP response body (default 10 MiB).
    pub max_output_bytes: Option<ByteSize>,
    /// Time between SIGTERM and SIGKILL when a task is stopped (default `2s`).
    #[serde(default, deserialize_with = "duration")]
    pub kill_grace: Option<Duration>,
    #[serde(default)]
    pub extract_text: ExtractTextConfig,
    #[serde(default)]
    pub http: HttpConfig,
}

/// `[actions.extract_text]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExtractTextConfig {
    /// The folder `extract-text` reads from (relative to the config file);
    /// default: the working directory, never `/` (`TASKWEAVE_EXTRACT_TEXT_ROOT`).
    pub root: Option<PathBuf>,
    /// The largest file read (default 10 MiB).
    pub max_bytes: Option<ByteSize>,
}

/// `[actions.http]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    /// Time limit of a request whose task has no timeout (default `5m`).
    #[serde(default, deserialize_with = "duration")]
    pub timeout: Option<Duration>,
    /// Refuse private, loopback, link-local and other internal addresses
    /// (default false; `TASKWEAVE_HTTP_DENY_PRIVATE`).
    #[serde(default)]
    pub deny_private: bool,
    #[serde(default)]
    pub allow: Vec<HostRule>,
    #[serde(default)]
    pub deny: Vec<HostRule>,
    #[serde(default = "yes")]
    pub follow_redirects: bool,
    #[serde(default = "default_max_redirects")]
    pub max_redirects: usize,
}

fn yes() -> bool {
    true
}
fn default_max_redirects() -> usize {
    DEFAULT_MAX_REDIRECTS
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            timeout: None,
            deny_private: false,
            allow: Vec::new(),
            deny: Vec::new(),
            follow_redirects: true,
            max_redirects: DEFAULT_MAX_REDIRECTS,
        }
    }
}

impl ActionsConfig {
    /// The limits every action runs under.
    pub fn limits(&self) -> Limits {
        let d = Limits::default();
        Limits {
            max_output_bytes: self.max_output_bytes.map_or(d.max_output_bytes, ByteSize::as_usize),
            kill_grace: self.kill_grace.unwrap_or(d.kill_grace),
            http_timeout: self.http.timeout.unwrap_or(d.http_timeout),
            egress: Egress {
                deny_private: self.http.deny_private,
                allow: self.http.allow.clone(),
                deny: self.http.deny.clone(),
                follow_redirects: self.http.follow_redirects,
                max_redirects: self.http.max_redirects,
            },
            inherit_env: d.inherit_env,
        }
    }

    /// The settings of the `extract-text` handler.
    pub fn extract_text_settings(&self) -> ExtractTextSettings {
        let d = ExtractTextSettings::default();
        ExtractTextSettings {
            root: self.extract_text.root.clone(),
            max_bytes: self.extract_text.max_bytes.map_or(d.max_bytes, ByteSize::as_usize),
        }
    }

    /// Make relative paths relative to `dir`, the config file's folder.
    pub(super) fn relative_to(&mut self, dir: &Path) {
        if let Some(root) = &mut self.extract_text.root
            && root.is_relative()
        {
            *root = dir.join(&*root);
        }
    }
}

/// A number of bytes: an integer, or a string with a unit like `"10MiB"`,
/// `"512 KiB"` or `"1GB"` (binary units with `i`, decimal without; parsed by
/// the `bytesize` crate).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteSize(pub u64);

impl ByteSize {
    pub fn as_usize(self) -> usize {
        usize::try_from(self.0).unwrap_or(usize::MAX)
    }
}

impl std::str::FromStr for ByteSize {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        s.trim()
            .parse::<bytesize::ByteSize>()
            .map(|b| ByteSize(b.as_u64()))
            .map_err(|_| format!("`{s}` is not a byte size (write an integer, or a string like \"10MiB\" or \"512KiB\")"))
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = ByteSize;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a byte size: an integer, or a string like \"10MiB\"")
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<ByteSize, E> {
                Ok(ByteSize(v))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<ByteSize, E> {
                u64::try_from(v).map(ByteSize).map_err(|_| E::custom(format!("a byte size cannot be negative ({v})")))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<ByteSize, E> {
                v.parse().map_err(E::custom)
            }
        }
        d.deserialize_any(Visitor)
    }
}

/// A duration string (`500ms`, `5s`, `1h30m`), as in workflows.
fn duration<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    let s = String::deserialize(d)?;
    crate::plan::parse_duration(&s).map(Some).map_err(serde::de::Error::custom)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    #[test]
    fn byte_sizes_are_integers_or_strings_with_units() {
        let c = Config::parse("[actions]\nmax_output_bytes = 2048\n[actions.extract_text]\nmax_bytes = \"10MiB\"\n").unwrap();
        assert_eq!(c.actions.limits().max_output_bytes, 2048);
        assert_eq!(c.actions.extract_text_settings().max_bytes, 10 * 1024 * 1024);
        assert_eq!("512 KiB".parse::<ByteSize>(), Ok(ByteSize(512 * 1024)));
        assert_eq!("1MB".parse::<ByteSize>(), Ok(ByteSize(1_000_000)));
        let d = Config::parse_file("t.toml", "[actions]\nmax_output_bytes = \"lots\"\n").unwrap_err();
        assert!(d.message.contains("`lots` is not a byte size"), "{d:?}");
        assert_eq!((d.span.start.line, d.span.start.column), (2, 20));
        let d = Config::parse_file("t.toml", "[actions]\nmax_output_bytes = -1\n").unwrap_err();
        assert!(d.message.contains("cannot be negative"), "{d:?}");
    }

    #[test]
    fn defaults_match_the_built_in_limits() {
        let c = Config::parse("").unwrap();
        let l = c.actions.limits();
        let d = Limits::default();
        assert_eq!((l.max_output_bytes, l.kill_grace, l.http_timeout), (d.max_output_bytes, d.kill_grace, d.http_timeout));
        assert_eq!(l.egress, Egress::default());
        assert!(!l.egress.is_restricted(), "the default policy keeps local services reachable");
        assert_eq!(c.actions.extract_text_settings(), ExtractTextSettings::default());
    }

    #[test]
    fn every_key_reaches_the_limits() {
        let text = r#"
[actions]
max_output_bytes = "1KiB"
kill_grace = "250ms"

[actions.extract_text]
root = "docs"
max_bytes = 4096

[actions.http]
timeout = "30s"
deny_private = true
allow = ["10.0.0.5", "api.internal"]
deny = ["203.0.113.0/24", "*.evil.example"]
follow_redirects = false
max_redirects = 3
"#;
        let c = Config::parse(text).unwrap();
        let l = c.actions.limits();
        assert_eq!(l.max_output_bytes, 1024);
        assert_eq!(l.kill_grace, Duration::from_millis(250));
        assert_eq!(l.http_timeout, Duration::from_secs(30));
        assert!(l.egress.deny_private && !l.egress.follow_redirects);
        assert_eq!(l.egress.max_redirects, 3);
        let shown = |v: &[HostRule]| v.iter().map(ToString::to_string).collect::<Vec<_>>();
        assert_eq!(shown(&l.egress.allow), ["10.0.0.5", "api.internal"]);
        assert_eq!(shown(&l.egress.deny), ["203.0.113.0/24", "*.evil.example"]);
        let e = c.actions.extract_text_settings();
        assert_eq!((e.root.as_deref(), e.max_bytes), (Some(Path::new("docs")), 4096));
    }

    #[test]
    fn bad_values_are_positioned() {
        let d = Config::parse_file("t.toml", "[actions.http]\nallow = [\"10.0.0.0/8\", \"10.0.0.0/33\"]\n").unwrap_err();
        assert!(d.message.contains("`10.0.0.0/33` is not a CIDR"), "{d:?}");
        // The toml crate places an element's error on its array.
        assert_eq!((d.span.start.line, d.span.start.column), (2, 9));
        let d = Config::parse_file("t.toml", "[actions]\nkill_grace = \"soon\"\n").unwrap_err();
        assert_eq!((d.span.start.line, d.span.start.column), (2, 14));
        let d = Config::parse_file("t.toml", "[actions.http]\ndeny_privat = true\n").unwrap_err();
        assert_eq!(d.help.as_deref(), Some("did you mean `deny_private`?"));
        let d = Config::parse_file("t.toml", "[actions.extract_text]\nmax_byte = 1\n").unwrap_err();
        assert_eq!(d.help.as_deref(), Some("did you mean `max_bytes`?"));
    }

    #[test]
    fn environment_overrides_and_paths_relative_to_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("taskweave.toml");
        std::fs::write(&path, "[actions.extract_text]\nroot = \"docs\"\n").unwrap();
        let c = Config::load(Some(&path)).unwrap();
        assert_eq!(c.actions.extract_text.root, Some(dir.path().join("docs")));

        let mut c = Config::parse("").unwrap();
        c.apply_env(|k| match k {
            "TASKWEAVE_HTTP_DENY_PRIVATE" => Some("true".into()),
            "TASKWEAVE_EXTRACT_TEXT_ROOT" => Some("/srv/documents".into()),
            _ => None,
        });
        assert!(c.actions.limits().egress.deny_private);
        assert_eq!(c.actions.extract_text_settings().root, Some(PathBuf::from("/srv/documents")));
        let mut c = Config::parse("[actions.http]\ndeny_private = true\n").unwrap();
        c.apply_env(|k| (k == "TASKWEAVE_HTTP_DENY_PRIVATE").then(|| "0".into()));
        assert!(!c.actions.http.deny_private);
        // A value that is neither true nor false fails closed.
        c.apply_env(|k| (k == "TASKWEAVE_HTTP_DENY_PRIVATE").then(|| "maybe".into()));
        assert!(c.actions.http.deny_private);
    }
}
