//! What a `[backends.NAME]` table may hold, typed, per backend kind. The
//! loader reads every backend's table into its kind's struct (whether the
//! driver is built into this binary or not), so a value of the wrong type
//! is a positioned diagnostic when `taskweave.toml` loads; each driver
//! reads the same struct and applies its defaults and its own checks (a
//! URL's scheme, a minimum lease).

use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer};
use std::collections::BTreeMap;
use std::time::Duration;

/// A string value.
#[derive(Debug, Clone, PartialEq)]
pub struct Text(pub String);

/// A duration: a string such as `"30s"`; with `seconds`, a positive number
/// of seconds too (as Celery's own settings take them).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Dur(pub Duration);

/// A positive number of seconds or a duration string (Celery's keys).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Seconds(pub Duration);

/// An integer from 1 to 10,000.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Count(pub u32);

/// A non-negative integer.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Size(pub usize);

/// `true` or `false`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Flag(pub bool);

fn described(v: &toml::Value) -> String {
    match v {
        toml::Value::String(s) => format!("\"{s}\""),
        other => other.to_string(),
    }
}

impl<'de> Deserialize<'de> for Text {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match toml::Value::deserialize(d)? {
            toml::Value::String(s) => Ok(Text(s)),
            other => Err(serde::de::Error::custom(format!("must be a string, not {}", other.type_str()))),
        }
    }
}

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match toml::Value::deserialize(d)? {
            toml::Value::String(s) => crate::plan::parse_duration(&s).map(Dur).map_err(serde::de::Error::custom),
            other => Err(serde::de::Error::custom(format!("must be a duration such as \"30s\", not {}", described(&other)))),
        }
    }
}

impl<'de> Deserialize<'de> for Seconds {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match toml::Value::deserialize(d)? {
            toml::Value::Integer(s) if s > 0 => Ok(Seconds(Duration::from_secs(s as u64))),
            toml::Value::Float(s) if s > 0.0 && s.is_finite() => Ok(Seconds(Duration::from_secs_f64(s))),
            toml::Value::String(s) => crate::plan::parse_duration(&s).map(Seconds).map_err(serde::de::Error::custom),
            other => Err(serde::de::Error::custom(format!("must be a duration such as \"30s\", not {}", described(&other)))),
        }
    }
}

impl<'de> Deserialize<'de> for Count {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match toml::Value::deserialize(d)? {
            toml::Value::Integer(i) if (1..=10_000).contains(&i) => Ok(Count(i as u32)),
            other => Err(serde::de::Error::custom(format!("must be an integer from 1 to 10000, not {}", described(&other)))),
        }
    }
}

impl<'de> Deserialize<'de> for Size {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match toml::Value::deserialize(d)? {
            toml::Value::Integer(n) if n >= 0 => Ok(Size(usize::try_from(n).unwrap_or(usize::MAX))),
            other => Err(serde::de::Error::custom(format!("must be a non-negative integer, not {}", described(&other)))),
        }
    }
}

impl<'de> Deserialize<'de> for Flag {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match toml::Value::deserialize(d)? {
            toml::Value::Boolean(b) => Ok(Flag(b)),
            other => Err(serde::de::Error::custom(format!("must be true or false, not {}", described(&other)))),
        }
    }
}

/// `kind = "local"`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LocalSettings {
    pub cache_runs: Option<Size>,
    pub cache_bytes: Option<Size>,
}

/// `kind = "postgres"`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PostgresSettings {
    pub url: Option<Text>,
    pub schema: Option<Text>,
    pub lease: Option<Dur>,
    pub poll: Option<Dur>,
    pub crash_budget: Option<Count>,
    pub max_connections: Option<Count>,
    pub shutdown_grace: Option<Dur>,
    pub synchronous_completions: Option<Flag>,
}

/// `kind = "celery"`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CelerySettings {
    pub broker: Option<Text>,
    pub result_backend: Option<Text>,
    pub queue: Option<Text>,
    pub celery_queue: Option<Text>,
    pub key_prefix: Option<Text>,
    pub visibility_timeout: Option<Seconds>,
    pub result_expires: Option<Seconds>,
    pub worker_lease: Option<Seconds>,
}

/// `kind = "temporal"`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TemporalSettings {
    pub address: Option<Text>,
    pub namespace: Option<Text>,
    pub task_queue: Option<Text>,
    pub heartbeat: Option<Dur>,
    pub sticky_timeout: Option<Dur>,
    pub connect_timeout: Option<Dur>,
}

/// A backend table that does not fit its kind's settings: the key at
/// fault (when one is) and what is wrong with it.
#[derive(Debug, Clone, PartialEq)]
pub struct BadSetting {
    pub key: Option<String>,
    pub message: String,
}

impl std::fmt::Display for BadSetting {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.key {
            Some(k) => write!(f, "`{k}` {}", self.message),
            None => f.write_str(&self.message),
        }
    }
}

/// Read a backend's table as `T`. Unknown keys are checked first, against
/// [`super::backend_keys`], so their message lists what the kind takes.
pub fn read<T: DeserializeOwned>(kind: &str, options: &BTreeMap<String, toml::Value>) -> Result<T, BadSetting> {
    let known = super::backend_keys(kind);
    if let Some(k) = options.keys().find(|k| !known.contains(&k.as_str())) {
        return Err(BadSetting { key: None, message: format!("unknown key `{k}` (known: {})", known.join(", ")) });
    }
    let table: toml::Table = options.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    toml::Value::Table(table).try_into().map_err(|e: toml::de::Error| {
        // The deserializer names the key after the message ("…\nin `key`");
        // the message alone is `message()`.
        let text = e.to_string();
        let key =
            text.rsplit_once("in `").map(|(_, k)| k.trim_end().trim_end_matches('`').to_string()).filter(|k| known.contains(&k.as_str()));
        BadSetting { key, message: e.message().to_string() }
    })
}

/// Check a backend's table against its kind's settings.
pub fn check(kind: &str, options: &BTreeMap<String, toml::Value>) -> Result<(), BadSetting> {
    match kind {
        "local" => read::<LocalSettings>(kind, options).map(drop),
        "postgres" => read::<PostgresSettings>(kind, options).map(drop),
        "celery" => read::<CelerySettings>(kind, options).map(drop),
        "temporal" => read::<TemporalSettings>(kind, options).map(drop),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(text: &str) -> BTreeMap<String, toml::Value> {
        toml::from_str::<toml::Table>(text).unwrap().into_iter().collect()
    }

    #[test]
    fn each_kind_reads_its_keys_and_names_the_one_at_fault() {
        let s: PostgresSettings = read("postgres", &table("lease = \"2s\"\ncrash_budget = 5\nsynchronous_completions = true")).unwrap();
        assert_eq!(s.lease, Some(Dur(Duration::from_secs(2))));
        assert_eq!(s.crash_budget, Some(Count(5)));
        let e = read::<PostgresSettings>("postgres", &table("lease = 30")).unwrap_err();
        assert_eq!(e.to_string(), "`lease` must be a duration such as \"30s\", not 30");
        let e = read::<TemporalSettings>("temporal", &table("task_queue = 5")).unwrap_err();
        assert_eq!(e.to_string(), "`task_queue` must be a string, not integer");
        let e = read::<CelerySettings>("celery", &table("brokr = 'x'")).unwrap_err();
        assert!(e.to_string().starts_with("unknown key `brokr` (known: broker,"), "{e}");
        let s: CelerySettings = read("celery", &table("visibility_timeout = 90\nresult_expires = 1.5")).unwrap();
        assert_eq!(s.visibility_timeout, Some(Seconds(Duration::from_secs(90))));
        assert_eq!(s.result_expires, Some(Seconds(Duration::from_millis(1500))));
        let e = read::<LocalSettings>("local", &table("cache_runs = -1")).unwrap_err();
        assert_eq!(e.key.as_deref(), Some("cache_runs"));
    }

    #[test]
    fn every_documented_key_of_a_kind_is_a_field_of_its_settings() {
        // A key in the table the struct refuses (or the other way round)
        // would pass config checks and fail in the driver.
        for kind in super::super::KINDS {
            for key in super::super::backend_keys(kind) {
                let mut o = BTreeMap::new();
                o.insert(key.to_string(), toml::Value::Array(Vec::new()));
                let e = check(kind, &o).expect_err(key);
                assert_eq!(e.key.as_deref(), Some(*key), "{kind}.{key}: {e}");
            }
        }
    }
}
