//! Handlers for `uses:` tasks: the built-ins and those an embedding program registers.
//!
//! A [`Handlers`] table maps a name to a [`Handler`]. [`Handlers::empty`]
//! starts bare; [`Handlers::builtin_with`] (and its shorthands
//! [`Handlers::builtin`], [`Handlers::with_builtins`]) start with the
//! built-ins of the spec language (`echo`, `sleep`, `fail`, `extract-text`,
//! `llm`), which an embedding program may override by registering the same
//! name. Built-ins carry their own settings ([`BuiltinSettings`]), so they
//! behave the same whether an executor or a Celery worker calls them.

mod builtins;
mod extract;
mod llm;

pub use extract::ExtractTextSettings;
pub use llm::LlmConfig;

use super::ActionError;
use serde_json::Value;
use std::collections::HashMap;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

/// What a handler knows about the attempt it serves.
#[derive(Debug, Clone)]
pub struct HandlerCtx {
    pub run_id: String,
    pub task: String,
    pub attempt: u32,
    /// Fires when the attempt must stop (timeout, cancellation).
    pub cancel: CancellationToken,
    /// The task's own time limit, if it has one (for messages: `cancel`
    /// enforces it).
    pub timeout: Option<std::time::Duration>,
}

/// A named piece of work a `uses:` task calls with its rendered `with` value.
///
/// A handler may describe what it takes and what it returns as JSON Schemas;
/// validation then checks a task's `with:` against the first (`handler-args`)
/// and the reads of its output against the second (`output-field`).
#[async_trait::async_trait]
pub trait Handler: Send + Sync + 'static {
    async fn call(&self, with: Value, ctx: HandlerCtx) -> Result<Value, ActionError>;

    /// The JSON Schema of the `with` value this handler takes, if it declares one.
    fn with_schema(&self) -> Option<Value> {
        None
    }

    /// The JSON Schema of the output this handler returns, if it declares one.
    fn output_schema(&self) -> Option<Value> {
        None
    }
}

/// A handler with the schemas of its `with` value and of its output, for
/// handlers written as closures:
///
/// ```
/// use serde_json::json;
/// use taskweave::run::actions::handlers::WithSchemas;
/// use taskweave::run::actions::{ActionError, HandlerCtx};
///
/// async fn shout(with: serde_json::Value, _ctx: HandlerCtx) -> Result<serde_json::Value, ActionError> {
///     Ok(json!({"text": with["text"].as_str().unwrap_or_default().to_uppercase()}))
/// }
/// let shout = WithSchemas::new(shout)
///     .with(json!({"type": "object", "required": ["text"], "additionalProperties": false,
///                  "properties": {"text": {"type": "string"}}}))
///     .output(json!({"type": "object", "additionalProperties": false,
///                    "properties": {"text": {"type": "string"}}}));
/// ```
pub struct WithSchemas<H> {
    handler: H,
    with: Option<Value>,
    output: Option<Value>,
}

impl<H: Handler> WithSchemas<H> {
    pub fn new(handler: H) -> Self {
        WithSchemas { handler, with: None, output: None }
    }

    /// The schema of the `with` value.
    pub fn with(mut self, schema: Value) -> Self {
        self.with = Some(schema);
        self
    }

    /// The schema of the output.
    pub fn output(mut self, schema: Value) -> Self {
        self.output = Some(schema);
        self
    }
}

#[async_trait::async_trait]
impl<H: Handler> Handler for WithSchemas<H> {
    async fn call(&self, with: Value, ctx: HandlerCtx) -> Result<Value, ActionError> {
        self.handler.call(with, ctx).await
    }

    fn with_schema(&self) -> Option<Value> {
        self.with.clone()
    }

    fn output_schema(&self) -> Option<Value> {
        self.output.clone()
    }
}

/// Any async closure `Fn(Value, HandlerCtx) -> Future<Result<Value, ActionError>>` is a handler.
#[async_trait::async_trait]
impl<F, Fut> Handler for F
where
    F: Fn(Value, HandlerCtx) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<Value, ActionError>> + Send + 'static,
{
    async fn call(&self, with: Value, ctx: HandlerCtx) -> Result<Value, ActionError> {
        (self)(with, ctx).await
    }
}

/// Settings of the built-in handlers.
#[derive(Debug, Clone, Default)]
pub struct BuiltinSettings {
    /// Where `llm` sends its requests.
    pub llm: LlmConfig,
    /// Where `extract-text` may read, and how much.
    pub extract_text: ExtractTextSettings,
}

/// Name -> handler.
#[derive(Clone, Default)]
pub struct Handlers {
    map: HashMap<String, Arc<dyn Handler>>,
}

impl std::fmt::Debug for Handlers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_set().entries(self.map.keys()).finish()
    }
}

impl Handlers {
    /// No handlers at all.
    pub fn empty() -> Self {
        Handlers::default()
    }

    /// The built-in handlers, with `llm` talking to the service `llm` names
    /// and `extract-text` on its default settings.
    pub fn builtin(llm: LlmConfig) -> Self {
        Handlers::builtin_with(BuiltinSettings { llm, extract_text: ExtractTextSettings::default() })
    }

    /// The built-in handlers with the given settings.
    pub fn builtin_with(settings: BuiltinSettings) -> Self {
        let mut h = Handlers::empty();
        h.register("echo", builtins::echo);
        h.register("sleep", WithSchemas::new(builtins::sleep).with(builtins::sleep_with()).output(builtins::sleep_output()));
        h.register("fail", WithSchemas::new(builtins::fail).with(builtins::fail_with()));
        h.register("extract-text", extract::ExtractText { settings: settings.extract_text });
        h.register("llm", llm::Llm::new(settings.llm));
        h
    }

    /// Add every handler of `other`, replacing those of the same name.
    pub fn extend(&mut self, other: Handlers) {
        self.map.extend(other.map);
    }

    pub fn register(&mut self, name: impl Into<String>, h: impl Handler) {
        self.map.insert(name.into(), Arc::new(h));
    }

    pub fn get(&self, name: &str) -> Option<&Arc<dyn Handler>> {
        self.map.get(name)
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.map.keys().map(String::as_str)
    }

    /// What validation knows of these handlers: their names and schemas.
    pub fn catalog(&self) -> crate::validate::HandlerCatalog {
        let mut c = crate::validate::HandlerCatalog::default();
        for (name, h) in &self.map {
            c.insert(name.clone(), h.with_schema(), h.output_schema());
        }
        c
    }
}

impl crate::validate::HandlerCatalog {
    /// The built-in handlers (`echo`, `sleep`, `fail`, `extract-text`, `llm`).
    pub fn builtin() -> Self {
        Handlers::builtin(Default::default()).catalog()
    }
}

impl crate::validate::Options {
    /// These options, knowing the built-in handlers.
    pub fn with_builtin_handlers(self) -> Self {
        self.with_handlers(crate::validate::HandlerCatalog::builtin())
    }
}
