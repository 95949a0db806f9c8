//! The `llm` built-in handler: one chat completion from an OpenAI-compatible
//! service (OpenAI, Azure-style gateways, vLLM, Ollama, LiteLLM…).
//!
//! `with: {prompt, system?, model?, temperature?, max_tokens?}` becomes
//! `POST {base_url}/chat/completions`; the output is `{response,
//! tokens_used, model}`. Rate limits and server errors are retryable, other
//! client errors are not. The API key is sent only in the `Authorization`
//! header and never appears in logs, errors or `Debug` output.

use crate::diag::display_url;
use crate::run::actions::http::{client, read_body, send_error, status_message};
use crate::run::actions::{ActionError, Handler, HandlerCtx};
use serde_json::{Map, Value, json};
use std::time::Duration;

const DEFAULT_BASE_URL: &str = "https://api.openai.com/v1";
const DEFAULT_MODEL: &str = "gpt-4o-mini";
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(120);
/// A chat completion larger than this is not a reply we can use.
const MAX_RESPONSE_BYTES: usize = 16 * 1024 * 1024;

/// Where the `llm` handler sends its requests.
#[derive(Clone)]
pub struct LlmConfig {
    /// The API root, e.g. `https://api.openai.com/v1`; `/chat/completions` is appended.
    pub base_url: String,
    /// Sent as `Authorization: Bearer …`; may be absent for a local service.
    pub api_key: Option<String>,
    /// The model used when a task names none.
    pub model: String,
    /// Time limit of one request.
    pub timeout: Duration,
}

impl Default for LlmConfig {
    fn default() -> Self {
        LlmConfig { base_url: DEFAULT_BASE_URL.into(), api_key: None, model: DEFAULT_MODEL.into(), timeout: DEFAULT_TIMEOUT }
    }
}

impl std::fmt::Debug for LlmConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LlmConfig")
            .field("base_url", &self.base_url)
            .field("api_key", &self.api_key.as_ref().map(|_| "<redacted>"))
            .field("model", &self.model)
            .field("timeout", &self.timeout)
            .finish()
    }
}

impl LlmConfig {
    /// Whether the service needs an API key: any but one on this machine
    /// (`localhost`, a loopback address), where services commonly run without.
    pub fn needs_key(&self) -> bool {
        !is_local(&self.base_url)
    }

    fn endpoint(&self) -> String {
        format!("{}/chat/completions", self.base_url.trim_end_matches('/'))
    }
}

/// Whether a base URL points at this machine, where services commonly run
/// without an API key.
fn is_local(base_url: &str) -> bool {
    let Ok(u) = reqwest::Url::parse(base_url) else {
        return false;
    };
    let Some(host) = u.host_str() else {
        return false;
    };
    match host.trim_start_matches('[').trim_end_matches(']').parse::<std::net::IpAddr>() {
        Ok(ip) => ip.is_loopback() || ip.is_unspecified(),
        Err(_) => host == "localhost" || host.ends_with(".localhost"),
    }
}

pub(super) struct Llm {
    cfg: LlmConfig,
}

impl Llm {
    pub(super) fn new(cfg: LlmConfig) -> Self {
        Llm { cfg }
    }
}

/// The request body of one chat completion.
fn request_body(with: &Value, default_model: &str) -> Result<(Value, String), ActionError> {
    let bad = |why: &str| ActionError::Permanent(format!("llm: {why}"));
    let Value::Object(w) = with else {
        return Err(bad("needs `with: {prompt: ...}`"));
    };
    let text = |v: &Value| match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    let prompt = match w.get("prompt") {
        None | Some(Value::Null) => return Err(bad("`with.prompt` is required")),
        Some(p) => text(p),
    };
    let model = match w.get("model") {
        None | Some(Value::Null) => default_model.to_string(),
        Some(Value::String(m)) if !m.is_empty() => m.clone(),
        Some(_) => return Err(bad("`with.model` must be a model name")),
    };
    let mut messages = Vec::new();
    match w.get("system") {
        None | Some(Value::Null) => {}
        Some(s) => messages.push(json!({"role": "system", "content": text(s)})),
    }
    messages.push(json!({"role": "user", "content": prompt}));
    let mut body = Map::new();
    body.insert("model".into(), Value::String(model.clone()));
    body.insert("messages".into(), Value::Array(messages));
    match w.get("temperature") {
        None | Some(Value::Null) => {}
        Some(t @ Value::Number(_)) => {
            body.insert("temperature".into(), t.clone());
        }
        Some(_) => return Err(bad("`with.temperature` must be a number")),
    }
    match w.get("max_tokens") {
        None | Some(Value::Null) => {}
        Some(t) if t.as_u64().is_some() => {
            body.insert("max_tokens".into(), t.clone());
        }
        Some(_) => return Err(bad("`with.max_tokens` must be a positive integer")),
    }
    Ok((Value::Object(body), model))
}

/// `{response, tokens_used, model}` from a chat completion.
fn parse_reply(reply: &Value, requested_model: &str) -> Result<Value, ActionError> {
    let message =
        reply.pointer("/choices/0/message").ok_or_else(|| ActionError::Failed("llm: the reply has no `choices[0].message`".into()))?;
    let response = match message.get("content") {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Null) | None => String::new(),
        Some(other) => other.to_string(),
    };
    let usage = reply.get("usage");
    let tokens = usage.and_then(|u| u.get("total_tokens")).and_then(Value::as_u64).or_else(|| {
        let p = usage?.get("prompt_tokens")?.as_u64()?;
        let c = usage?.get("completion_tokens")?.as_u64()?;
        Some(p + c)
    });
    let model = reply.get("model").and_then(Value::as_str).unwrap_or(requested_model);
    Ok(json!({"response": response, "tokens_used": tokens, "model": model}))
}

#[async_trait::async_trait]
impl Handler for Llm {
    fn with_schema(&self) -> Option<Value> {
        Some(json!({
            "type": "object",
            "properties": {
                "prompt": {"type": "string", "description": "the user message"},
                "system": {"type": "string", "description": "the system message"},
                "model": {"type": "string", "minLength": 1, "description": "default: TASKWEAVE_LLM_MODEL"},
                "temperature": {"type": "number"},
                "max_tokens": {"type": "integer", "minimum": 0}
            },
            "required": ["prompt"],
            "additionalProperties": false
        }))
    }

    fn output_schema(&self) -> Option<Value> {
        Some(json!({
            "type": "object",
            "properties": {
                "response": {"type": "string"},
                "tokens_used": {"type": ["integer", "null"]},
                "model": {"type": "string"}
            },
            "required": ["response", "tokens_used", "model"],
            "additionalProperties": false
        }))
    }

    async fn call(&self, with: Value, ctx: HandlerCtx) -> Result<Value, ActionError> {
        let cfg = &self.cfg;
        let (body, model) = request_body(&with, &cfg.model)?;
        if cfg.api_key.is_none() && !is_local(&cfg.base_url) {
            return Err(ActionError::Permanent(format!(
                "llm: no API key for {}; set TASKWEAVE_LLM_API_KEY or OPENAI_API_KEY, or the variable `[handlers.llm] api_key_env` names",
                display_url(&cfg.base_url)
            )));
        }
        let url = cfg.endpoint();
        let shown = display_url(&url);
        // The request's own limit is `[handlers.llm] timeout`, not reqwest's:
        // when it strikes, the error names it next to the task's timeout, so
        // a short request limit never passes for the task's.
        let mut req = client()?.post(&url).json(&body);
        if let Some(key) = &cfg.api_key {
            req = req.bearer_auth(key);
        }
        tracing::debug!(task = %ctx.task, url = %shown, %model, "llm request");
        let work = async {
            let resp = req.send().await.map_err(|e| send_error(&shown, cfg.timeout, &e))?;
            let status = resp.status();
            let bytes = read_body(resp, MAX_RESPONSE_BYTES, &shown, cfg.timeout).await?;
            if !status.is_success() {
                let msg = format!("llm: {}", status_message(status, &bytes));
                let retryable = status.as_u16() == 408 || status.as_u16() == 429 || status.is_server_error();
                return Err(if retryable { ActionError::Failed(msg) } else { ActionError::Permanent(msg) });
            }
            let reply: Value =
                serde_json::from_slice(&bytes).map_err(|e| ActionError::Failed(format!("llm: the reply from {shown} is not JSON: {e}")))?;
            parse_reply(&reply, &model)
        };
        tokio::select! {
            biased;
            _ = ctx.cancel.cancelled() => Err(ActionError::Cancelled),
            r = tokio::time::timeout(cfg.timeout, work) => r.unwrap_or_else(|_| Err(timed_out(&shown, cfg.timeout, ctx.timeout))),
        }
    }
}

/// The error of a request that outlived `[handlers.llm] timeout`, with the
/// task's own timeout beside it.
fn timed_out(shown_url: &str, limit: Duration, task_timeout: Option<Duration>) -> ActionError {
    let limit_text = humantime::format_duration(limit);
    let task = match task_timeout {
        Some(t) if t > limit => format!(
            "the task's timeout is {}, longer than the request may take: raise `[handlers.llm] timeout` (or TASKWEAVE_LLM_TIMEOUT) to use it",
            humantime::format_duration(t)
        ),
        Some(t) => format!("the task's timeout is {}", humantime::format_duration(t)),
        None => "the task has no timeout".to_string(),
    };
    ActionError::Failed(format!("llm: request to {shown_url} timed out after {limit_text} ([handlers.llm] timeout); {task}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_timeout_names_both_limits() {
        let m = timed_out("http://h/v1/chat/completions", Duration::from_secs(2), Some(Duration::from_secs(300))).to_string();
        assert_eq!(
            m,
            "llm: request to http://h/v1/chat/completions timed out after 2s ([handlers.llm] timeout); the task's timeout is 5m, \
             longer than the request may take: raise `[handlers.llm] timeout` (or TASKWEAVE_LLM_TIMEOUT) to use it"
        );
        assert!(timed_out("u", Duration::from_secs(2), None).to_string().ends_with("the task has no timeout"));
        assert!(timed_out("u", Duration::from_secs(2), Some(Duration::from_secs(1))).to_string().ends_with("the task's timeout is 1s"));
    }

    #[test]
    fn debug_output_hides_the_key() {
        let c = LlmConfig { api_key: Some("sk-secret".into()), ..LlmConfig::default() };
        assert!(!format!("{c:?}").contains("sk-secret"));
    }

    #[test]
    fn local_services_need_no_key() {
        assert!(is_local("http://localhost:11434/v1"));
        assert!(is_local("http://127.0.0.1:8000/v1"));
        assert!(is_local("http://[::1]:8000/v1"));
        assert!(!is_local("https://api.openai.com/v1"));
    }

    #[test]
    fn request_bodies_carry_the_options() {
        let (b, m) = request_body(&json!({"prompt": "hi", "system": "be brief", "temperature": 0.2, "max_tokens": 50}), "gpt-x").unwrap();
        assert_eq!(m, "gpt-x");
        assert_eq!(
            b,
            json!({"model": "gpt-x", "messages": [
                {"role": "system", "content": "be brief"},
                {"role": "user", "content": "hi"}],
                "temperature": 0.2, "max_tokens": 50})
        );
        assert!(matches!(request_body(&json!({}), "m"), Err(ActionError::Permanent(_))));
    }

    #[test]
    fn replies_without_usage_still_parse() {
        let r = parse_reply(&json!({"choices": [{"message": {"content": "ok"}}]}), "m").unwrap();
        assert_eq!(r, json!({"response": "ok", "tokens_used": null, "model": "m"}));
    }
}
