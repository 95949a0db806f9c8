//! `[handlers]` of `taskweave.toml`: the settings of the built-in handlers
//! that talk to services. Today that is `[handlers.llm]`, the service the
//! `llm` handler sends its chat completions to.
//!
//! ```toml
//! [handlers.llm]
//! base_url = "http://127.0.0.1:11434/v1"   # TASKWEAVE_LLM_BASE_URL; else OPENAI_BASE_URL
//! model = "llama3.1"                       # TASKWEAVE_LLM_MODEL
//! api_key_env = "OLLAMA_KEY"               # the variable that holds the key (never the key itself)
//! timeout = "90s"                          # one request; TASKWEAVE_LLM_TIMEOUT
//! ```
//!
//! The API key is never written in the file: `api_key_env` names the
//! environment variable that holds it (default `TASKWEAVE_LLM_API_KEY`, else
//! `OPENAI_API_KEY`).

use crate::run::actions::handlers::LlmConfig;
use serde::{Deserialize, Deserializer};
use std::time::Duration;

/// The variable read for the API key when `api_key_env` is not set.
pub const DEFAULT_API_KEY_ENV: &str = "TASKWEAVE_LLM_API_KEY";
/// Read when [`DEFAULT_API_KEY_ENV`] is unset and `api_key_env` is not set.
pub const FALLBACK_API_KEY_ENV: &str = "OPENAI_API_KEY";

/// `[handlers]`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HandlersConfig {
    #[serde(default)]
    pub llm: LlmSection,
}

/// `[handlers.llm]`; an unset key takes its default when the handler's
/// settings are resolved ([`LlmSection::resolve`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LlmSection {
    /// The API root; `/chat/completions` is appended.
    #[serde(default, deserialize_with = "base_url")]
    pub base_url: Option<String>,
    /// The model used when a task names none.
    #[serde(default, deserialize_with = "non_empty")]
    pub model: Option<String>,
    /// The name of the environment variable that holds the API key.
    #[serde(default, deserialize_with = "env_name")]
    pub api_key_env: Option<String>,
    /// Time limit of one request.
    #[serde(default, deserialize_with = "positive_duration")]
    pub timeout: Option<Duration>,
}

impl LlmSection {
    /// The variable the API key is read from, and whether `OPENAI_API_KEY`
    /// is read when it is unset (only when `api_key_env` is not configured).
    pub fn key_env(&self) -> (&str, Option<&'static str>) {
        match &self.api_key_env {
            Some(name) => (name, None),
            None => (DEFAULT_API_KEY_ENV, Some(FALLBACK_API_KEY_ENV)),
        }
    }

    /// The variable that actually holds the key now, if any.
    pub fn key_source(&self, var: &impl Fn(&str) -> Option<String>) -> Option<String> {
        let set = |k: &str| var(k).is_some_and(|v| !v.trim().is_empty());
        let (first, fallback) = self.key_env();
        if set(first) {
            return Some(first.to_string());
        }
        fallback.filter(|f| set(f)).map(str::to_string)
    }

    /// The `llm` handler's settings: these values, else the defaults, with
    /// the key read from the environment.
    pub fn resolve(&self, var: &impl Fn(&str) -> Option<String>) -> LlmConfig {
        let d = LlmConfig::default();
        LlmConfig {
            base_url: self.base_url.clone().unwrap_or(d.base_url),
            api_key: self.key_source(var).and_then(|k| var(&k)).map(|v| v.trim().to_string()),
            model: self.model.clone().unwrap_or(d.model),
            timeout: self.timeout.unwrap_or(d.timeout),
        }
    }
}

/// What is wrong with a base URL, if anything.
pub fn base_url_problem(s: &str) -> Option<String> {
    match url::Url::parse(s.trim()) {
        Ok(u) if matches!(u.scheme(), "http" | "https") && u.host_str().is_some_and(|h| !h.is_empty()) => None,
        Ok(u) => Some(format!("`{}` is not an http:// or https:// URL (scheme `{}`)", crate::config::keys::mask_url(s), u.scheme())),
        Err(e) => Some(format!("`{}` is not a URL: {e}", crate::config::keys::mask_url(s))),
    }
}

/// What is wrong with an environment variable's name, if anything.
pub fn env_name_problem(s: &str) -> Option<String> {
    let ok =
        s.bytes().next().is_some_and(|b| b.is_ascii_alphabetic() || b == b'_') && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
    (!ok).then(|| {
        "`api_key_env` must be the name of an environment variable (such as `OPENAI_API_KEY`), not the key itself; \
         keep the key in that variable"
            .to_string()
    })
}

fn base_url<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    let s = String::deserialize(d)?;
    match base_url_problem(&s) {
        None => Ok(Some(s.trim().to_string())),
        Some(p) => Err(serde::de::Error::custom(p)),
    }
}

fn non_empty<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    let s = String::deserialize(d)?;
    if s.trim().is_empty() {
        return Err(serde::de::Error::custom("`model` is empty; name a model or leave the key out"));
    }
    Ok(Some(s.trim().to_string()))
}

fn env_name<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    let s = String::deserialize(d)?;
    match env_name_problem(&s) {
        None => Ok(Some(s)),
        Some(p) => Err(serde::de::Error::custom(p)),
    }
}

fn positive_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    let s = String::deserialize(d)?;
    crate::config::parse_positive_duration(&s).map(Some).map_err(serde::de::Error::custom)
}

/// The `llm` settings from the environment alone: the configuration's key
/// table applied to its defaults, no file.
impl crate::run::actions::handlers::LlmConfig {
    /// The settings from the environment alone, as if `taskweave.toml` had
    /// no `[handlers.llm]`:
    ///
    /// - `TASKWEAVE_LLM_BASE_URL`, else `OPENAI_BASE_URL`, else `https://api.openai.com/v1`;
    /// - the key from the variable `TASKWEAVE_LLM_API_KEY_ENV` names, else
    ///   `TASKWEAVE_LLM_API_KEY`, else `OPENAI_API_KEY`;
    /// - `TASKWEAVE_LLM_MODEL`, else `gpt-4o-mini`;
    /// - `TASKWEAVE_LLM_TIMEOUT` (a duration such as `90s`), else 2 minutes.
    ///
    /// Empty variables count as unset; one that does not parse is ignored
    /// with a warning. [`crate::config::Config::llm`] adds the file.
    pub fn from_env() -> Self {
        Self::from_lookup(|k| std::env::var(k).ok())
    }

    fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Self {
        let mut c = super::Config::default();
        c.apply_env(&get);
        c.handlers.llm.resolve(&get)
    }
}

impl crate::run::actions::Handlers {
    /// The built-in handlers, with the `llm` settings read from the
    /// environment (see [`crate::run::actions::handlers::LlmConfig::from_env`]) and `extract-text` on its
    /// defaults (the working directory as its root, 10 MiB).
    pub fn with_builtins() -> Self {
        Self::builtin(crate::run::actions::handlers::LlmConfig::from_env())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_reads_the_environment_names() {
        let env =
            |pairs: &'static [(&'static str, &'static str)]| move |k: &str| pairs.iter().find(|(n, _)| *n == k).map(|(_, v)| v.to_string());
        let c = crate::run::actions::handlers::LlmConfig::from_lookup(env(&[]));
        assert_eq!(c.base_url, "https://api.openai.com/v1");
        assert_eq!(c.model, "gpt-4o-mini");
        assert!(c.api_key.is_none());
        let c = crate::run::actions::handlers::LlmConfig::from_lookup(env(&[
            ("OPENAI_BASE_URL", "http://a/v1"),
            ("OPENAI_API_KEY", "k1"),
            ("TASKWEAVE_LLM_MODEL", "m"),
            ("TASKWEAVE_LLM_TIMEOUT", "5s"),
        ]));
        assert_eq!((c.base_url.as_str(), c.api_key.as_deref(), c.model.as_str()), ("http://a/v1", Some("k1"), "m"));
        assert_eq!(c.timeout, std::time::Duration::from_secs(5));
        let c = crate::run::actions::handlers::LlmConfig::from_lookup(env(&[
            ("OPENAI_BASE_URL", "http://a/v1"),
            ("TASKWEAVE_LLM_BASE_URL", "http://b/v1"),
            ("OPENAI_API_KEY", "k1"),
            ("TASKWEAVE_LLM_API_KEY", "k2"),
            ("TASKWEAVE_LLM_MODEL", ""),
        ]));
        assert_eq!((c.base_url.as_str(), c.api_key.as_deref(), c.model.as_str()), ("http://b/v1", Some("k2"), "gpt-4o-mini"));
    }

    use crate::config::Config;

    fn env(pairs: &'static [(&'static str, &'static str)]) -> impl Fn(&str) -> Option<String> {
        move |k: &str| pairs.iter().find(|(n, _)| *n == k).map(|(_, v)| v.to_string())
    }

    #[test]
    fn keys_from_the_file_and_the_key_from_the_named_variable() {
        let c = Config::parse(
            "[handlers.llm]\nbase_url = \"http://127.0.0.1:8000/v1\"\nmodel = \"m\"\napi_key_env = \"MY_KEY\"\ntimeout = \"45s\"\n",
        )
        .unwrap();
        let l = c.handlers.llm.resolve(&env(&[("MY_KEY", "k-1"), ("TASKWEAVE_LLM_API_KEY", "other")]));
        assert_eq!(
            (l.base_url.as_str(), l.model.as_str(), l.api_key.as_deref(), l.timeout),
            ("http://127.0.0.1:8000/v1", "m", Some("k-1"), Duration::from_secs(45))
        );
        // A named variable that is unset means no key, not another variable's.
        assert_eq!(c.handlers.llm.resolve(&env(&[("OPENAI_API_KEY", "k")])).api_key, None);
        // Unset: TASKWEAVE_LLM_API_KEY, else OPENAI_API_KEY.
        let d = LlmSection::default();
        assert_eq!(d.resolve(&env(&[("OPENAI_API_KEY", "k-o")])).api_key.as_deref(), Some("k-o"));
        assert_eq!(d.resolve(&env(&[("OPENAI_API_KEY", "k-o"), ("TASKWEAVE_LLM_API_KEY", "k-t")])).api_key.as_deref(), Some("k-t"));
    }

    #[test]
    fn bad_values_are_positioned() {
        for (text, line, col, words) in [
            ("[handlers.llm]\nbase_url = \"localhost:8000\"\n", 2, 12, "not an http:// or https:// URL"),
            ("[handlers.llm]\nbase_url = \"not a url\"\n", 2, 12, "is not a URL"),
            ("[handlers.llm]\napi_key_env = \"sk-abc123\"\n", 2, 15, "not the key itself"),
            ("[handlers.llm]\ntimeout = \"0s\"\n", 2, 11, "zero"),
            ("[handlers.llm]\nmodel = \"\"\n", 2, 9, "empty"),
        ] {
            let d = Config::parse_file("t.toml", text).unwrap_err();
            assert!(d.message.contains(words), "{text}: {}", d.message);
            assert_eq!((d.span.start.line, d.span.start.column), (line, col), "{text}: {}", d.message);
        }
        let d = Config::parse_file("t.toml", "[handlers.llm]\napi_key = \"sk-abc\"\n").unwrap_err();
        assert!(d.help.as_deref().unwrap().contains("api_key_env"), "{d:?}");
        let d = Config::parse_file("t.toml", "[handlers.llm]\nmodle = \"x\"\n").unwrap_err();
        assert_eq!(d.help.as_deref(), Some("did you mean `model`?"));
    }
}
