//! Serde types that mirror a workflow file. They are the source of
//! `schemas/workflow.schema.json` (via schemars) and the typed input of
//! `plan::compile`. Nothing here is validated beyond its shape.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::collections::BTreeMap;

/// The pattern of workflow and task names.
pub const NAME_PATTERN: &str = "^[a-z0-9][a-z0-9._-]{0,127}$";

/// A taskweave workflow definition (spec language v1).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(title = "taskweave workflow", extend("$id" = "https://taskweave.dev/schemas/workflow.schema.json"))]
pub struct RawWorkflow {
    /// The spec language version; always 1.
    #[schemars(range(min = 1, max = 1))]
    pub version: u8,
    /// The workflow name, unique among the loaded workflows.
    #[schemars(regex(pattern = r"^[a-z0-9][a-z0-9._-]{0,127}$"))]
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Whole-run time limit, e.g. `30m`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<DurationText>,
    /// The backend that runs this workflow: a backend name, or a rollout rule.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backend: Option<BackendSpec>,
    /// Queue (or task queue) name on the backend.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue: Option<String>,
    /// Maximum number of tasks of one run running at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub concurrency: Option<u32>,
    /// JSON Schema (2020-12) of the run input.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input: Option<Map<String, Value>>,
    /// Applied to every task.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub defaults: Option<Defaults>,
    /// Environment of `run` and `shell` tasks.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// Secrets templates read as `{{secrets.NAME}}`: resolved by the process that runs the task, never recorded;
    /// every occurrence of a value in a task's output or error is masked as `***`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub secrets: BTreeMap<String, SecretSource>,
    /// The tasks; at least one.
    #[schemars(length(min = 1))]
    pub tasks: Vec<RawTask>,
    /// Tasks run when the run ends `failed` or `timed_out`, after every task is final; their parents are among
    /// themselves. They read `run.status`, `run.failed_tasks` and any task's `status` and `output`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub on_failure: Vec<RawTask>,
    /// Tasks run whatever the outcome (cancel and timeout included), after every other task is final (and after
    /// `on_failure`); their parents are among themselves. A failing one turns a succeeded run `failed`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub finally: Vec<RawTask>,
    /// The run's output, rendered once every task is final and the run
    /// succeeded: a mapping whose strings are templates (nested mappings and
    /// lists too, as in `with:`), reading `input`, `run.id`, `workflow`,
    /// `context` and any task's `tasks.NAME.output` and `.status` (the output
    /// of a task that did not succeed reads as null). A lone `{{expr}}`
    /// keeps the value's JSON type.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("examples" = [{"summaries": "{{tasks.summarise.output}}", "pages": "{{tasks.split.output.pages}}"}]))]
    pub output: Option<Map<String, Value>>,
}

/// Where a secret's value comes from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum SecretSource {
    Env(EnvSecret),
    File(FileSecret),
}

/// An environment variable of the process that runs the task.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EnvSecret {
    pub env: String,
}

/// A file (its text, without a final newline), e.g. a mounted secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FileSecret {
    pub file: String,
}

/// A duration string: `500ms`, `30s`, `10m`, `1h30m`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(transparent)]
#[schemars(extend("examples" = ["500ms", "30s", "10m", "1h30m"]))]
pub struct DurationText(pub String);

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum BackendSpec {
    /// A configured backend name.
    Name(String),
    /// A flag-driven rollout between backends.
    Rollout(Rollout),
}

/// A feature-flag rule that picks the backend once per run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Rollout {
    /// The Flipt flag key.
    pub flag: String,
    /// The entity the flag buckets on; defaults to the run's entity id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entity: Option<String>,
    /// Variant key to backend name (variant flags).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub variants: BTreeMap<String, String>,
    /// Backend when the flag is enabled (boolean flags).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<String>,
    /// Backend when the flag is disabled (boolean flags).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disabled: Option<String>,
    /// Backend when the flag does not match or cannot be evaluated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Defaults {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<DurationText>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<RetrySpec>,
}

/// Retry policy: `attempts` counts all tries.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RetrySpec {
    /// Total number of tries, the first included.
    #[schemars(range(min = 1, max = 1000))]
    pub attempts: u32,
    /// Delay before the second try.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delay: Option<DurationText>,
    /// Factor applied to the delay after each try (>= 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1.0, max = 100.0))]
    pub backoff: Option<f64>,
    /// Upper bound of the delay.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_delay: Option<DurationText>,
    /// Randomise delays by up to ±20 % (default true).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jitter: Option<bool>,
}

/// Output format of `run` and `shell` tasks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema, Default)]
#[serde(rename_all = "lowercase")]
pub enum OutputFormat {
    #[default]
    Text,
    Json,
}

/// When a task may start, from its parents' final states: `all_success`
/// (every parent succeeded), `none_failed` (every parent final, none failed
/// or timed out), `all_done`, `one_success`, `one_failed`, `all_failed`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema, Default)]
#[serde(rename_all = "snake_case")]
pub enum Trigger {
    // Every parent succeeded (the default).
    #[default]
    AllSuccess,
    // Every parent is final and none failed or timed out (succeeded or skipped).
    NoneFailed,
    // Every parent is final, whatever its state.
    AllDone,
    // At least one parent succeeded.
    OneSuccess,
    // At least one parent failed or timed out.
    OneFailed,
    // Every parent failed or timed out.
    AllFailed,
}

impl Trigger {
    pub const ALL: [Trigger; 6] =
        [Trigger::AllSuccess, Trigger::NoneFailed, Trigger::AllDone, Trigger::OneSuccess, Trigger::OneFailed, Trigger::AllFailed];

    pub fn as_str(self) -> &'static str {
        match self {
            Trigger::AllSuccess => "all_success",
            Trigger::NoneFailed => "none_failed",
            Trigger::AllDone => "all_done",
            Trigger::OneSuccess => "one_success",
            Trigger::OneFailed => "one_failed",
            Trigger::AllFailed => "all_failed",
        }
    }
}

/// One task. Exactly one action key: `run`, `shell`, `http`, `celery` or `uses`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawTask {
    #[schemars(regex(pattern = r"^[a-z0-9][a-z0-9._-]{0,127}$"))]
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Tasks that must end before this one starts (succeed, unless `trigger` says otherwise).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub parents: Vec<String>,
    /// When the task may start, from its parents' final states (default `all_success`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trigger: Option<Trigger>,
    /// A CEL condition over `input`, `tasks` (ancestors: `tasks["name"].output`, `.status`), `run`, `workflow` and
    /// `context`, evaluated when the trigger is met: false skips the task.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("examples" = ["size(tasks.split.output.pages) > 0", "input.mode == \"full\""]))]
    pub when: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<DurationText>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<RetrySpec>,
    /// Run a program without a shell; each element is a template.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1))]
    pub run: Option<Vec<String>>,
    /// Run `sh -c`; every inserted value reaches the script as an environment variable, never as script text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shell: Option<String>,
    /// One HTTP request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<HttpSpec>,
    /// Send a task to Celery workers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub celery: Option<CelerySpec>,
    /// A built-in or registered handler.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uses: Option<String>,
    /// Arguments of the `uses` handler; strings are templates.
    #[serde(default, rename = "with", skip_serializing_if = "Option::is_none")]
    pub with_: Option<Value>,
    /// Extra environment of `run`/`shell` tasks.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// Working folder of `run`/`shell` tasks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cwd: Option<String>,
    /// How stdout becomes the output of `run`/`shell` tasks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<OutputFormat>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HttpSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<HttpMethod>,
    pub url: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub query: BTreeMap<String, String>,
    /// A JSON body; strings inside are templates.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub json: Option<Value>,
    /// A text body.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum HttpMethod {
    GET,
    POST,
    PUT,
    PATCH,
    DELETE,
    HEAD,
    OPTIONS,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CelerySpec {
    /// The registered Celery task name, e.g. `tasks.add`.
    pub task: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<Value>,
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub kwargs: Map<String, Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 9))]
    pub priority: Option<u8>,
}

/// The JSON Schema of the spec language, generated from these types.
pub fn json_schema() -> Value {
    let schema = schemars::schema_for!(RawWorkflow);
    serde_json::to_value(schema).expect("schema serialises")
}

/// The committed schema text (pretty JSON with a trailing newline).
pub fn json_schema_text() -> String {
    let mut s = serde_json::to_string_pretty(&json_schema()).expect("schema serialises");
    s.push('\n');
    s
}
