//! `[validate]` in taskweave.toml: bounds on what validation reports, so
//! that one hostile or generated file cannot flood the output, the logs of
//! live reload or the API.

use serde::Deserialize;

/// `[validate]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ValidateConfig {
    /// How many diagnostics one file reports at most; the rest are counted in
    /// one final `too-many-diagnostics` diagnostic. `0` reports them all.
    /// Default 200; `TASKWEAVE_MAX_DIAGNOSTICS`.
    #[serde(default = "default_max_diagnostics")]
    pub max_diagnostics: usize,
    /// Handlers that `uses:` may name besides the built-ins: those a program
    /// embedding the engine registers, so that `taskweave validate` and
    /// `serve` accept them (their arguments are not checked).
    #[serde(default)]
    pub handlers: Vec<String>,
}

fn default_max_diagnostics() -> usize {
    crate::diag::DEFAULT_MAX_PER_FILE
}

impl Default for ValidateConfig {
    fn default() -> Self {
        ValidateConfig { max_diagnostics: default_max_diagnostics(), handlers: Vec::new() }
    }
}

#[cfg(test)]
mod tests {
    use crate::config::Config;

    #[test]
    fn max_diagnostics_from_the_file_and_the_environment() {
        assert_eq!(Config::parse("").unwrap().validate.max_diagnostics, 200);
        let mut c = Config::parse("[validate]\nmax_diagnostics = 50\n").unwrap();
        assert_eq!(c.validate.max_diagnostics, 50);
        c.apply_env(|k| (k == "TASKWEAVE_MAX_DIAGNOSTICS").then(|| "0".to_string()));
        assert_eq!(c.validate.max_diagnostics, 0);
        let d = Config::parse_file("t.toml", "[validate]\nmax_diagnostic = 5\n").unwrap_err();
        assert_eq!(d.help.as_deref(), Some("did you mean `max_diagnostics`?"));
    }
}
