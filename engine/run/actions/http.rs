//! `http` actions: one request, its response as the task output.
//!
//! Every request goes through a shared [`reqwest::Client`] (connection
//! pools and TLS set-up are reused across tasks) built for the attempt's
//! egress policy ([`Limits::egress`](super::Limits), see [`super::egress`]):
//! a URL or redirect the policy refuses fails the attempt for good, before
//! any connection to the refused address. The response body is read up to
//! [`Limits::max_output_bytes`](super::Limits); a non-2xx status fails the
//! attempt (retryable), and so do connection errors and timeouts. The `llm`
//! handler, whose service the operator configures, reuses the plain
//! [`client`] and the helpers here.

use super::egress::error_chain;
use super::{ActionError, Attempt};
use crate::diag::display_url;
use crate::plan::Action;
use crate::spec::raw::HttpMethod;
use serde_json::{Map, Value};
use std::sync::OnceLock;
use std::time::Duration;

/// How much of an error response's body a failure message quotes.
const ERROR_BODY_BYTES: usize = 1024;

/// The process-wide HTTP client.
pub(crate) fn client() -> Result<&'static reqwest::Client, ActionError> {
    static CLIENT: OnceLock<Result<reqwest::Client, String>> = OnceLock::new();
    CLIENT
        .get_or_init(|| {
            reqwest::Client::builder()
                .user_agent(concat!("taskweave/", env!("CARGO_PKG_VERSION")))
                .connect_timeout(Duration::from_secs(30))
                .build()
                .map_err(|e| error_chain(&e))
        })
        .as_ref()
        .map_err(|e| ActionError::Permanent(format!("cannot build the HTTP client: {e}")))
}

/// Send the task's request and return `{status, headers, body}`.
pub async fn execute(a: &Attempt<'_>) -> Result<Value, ActionError> {
    let Action::Http { method, url, headers, query, json, body } = &a.task.action else {
        return Err(ActionError::Permanent(format!("task `{}`: a `{}` action is not an HTTP request", a.task.name, a.task.action.kind())));
    };
    let t = a.workflow.templates.capped(a.limits.max_output_bytes);
    let url = t.render_string(url, a.ctx)?;
    let shown = display_url(&url);
    let parsed = reqwest::Url::parse(&url)
        .map_err(|e| ActionError::Permanent(format!("task `{}`: `{shown}` is not a valid URL: {e}", a.task.name)))?;
    a.limits.egress.check_url(&parsed).map_err(|r| ActionError::Permanent(r.to_string()))?;
    let mut req = super::egress::client(&a.limits.egress)?.request(reqwest_method(*method), parsed);
    for (name, v) in headers {
        let value = t.render_string(v, a.ctx)?;
        let name = reqwest::header::HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| ActionError::Permanent(format!("`{name}` is not a valid HTTP header name")))?;
        let value = reqwest::header::HeaderValue::from_str(&value)
            .map_err(|_| ActionError::Permanent(format!("the value of header `{name}` is not a valid HTTP header value")))?;
        req = req.header(name, value);
    }
    if !query.is_empty() {
        let pairs = query.iter().map(|(k, v)| Ok((k.as_str(), t.render_string(v, a.ctx)?))).collect::<Result<Vec<_>, ActionError>>()?;
        req = req.query(&pairs);
    }
    match (json, body) {
        (Some(_), Some(_)) => {
            return Err(ActionError::Permanent(format!("task `{}`: an HTTP request takes `json` or `body`, not both", a.task.name)));
        }
        (Some(j), None) => req = req.json(&t.render(j, a.ctx)?),
        (None, Some(b)) => req = req.body(t.render_string(b, a.ctx)?),
        (None, None) => {}
    }
    let limit = a.task.timeout.unwrap_or(a.limits.http_timeout);
    req = req.timeout(limit);
    let cap = a.limits.max_output_bytes;

    let work = async {
        let resp = req.send().await.map_err(|e| send_error(&shown, limit, &e))?;
        let status = resp.status();
        let headers = header_map(resp.headers());
        let content_type = resp.headers().get(reqwest::header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).map(str::to_string);
        let bytes = read_body(resp, cap, &shown, limit).await?;
        if status.is_redirection() && status != reqwest::StatusCode::NOT_MODIFIED && !a.limits.egress.follow_redirects {
            return Err(ActionError::Permanent(format!(
                "{} (redirects are not followed: [actions.http] follow_redirects = false)",
                status_message(status, &bytes)
            )));
        }
        if !status.is_success() {
            return Err(ActionError::Failed(status_message(status, &bytes)));
        }
        let mut out = Map::new();
        out.insert("status".into(), Value::from(status.as_u16()));
        out.insert("headers".into(), Value::Object(headers));
        out.insert("body".into(), body_value(content_type.as_deref(), bytes));
        Ok(Value::Object(out))
    };
    tokio::select! {
        biased;
        _ = a.cancel.cancelled() => Err(ActionError::Cancelled),
        r = work => r,
    }
}

fn reqwest_method(m: HttpMethod) -> reqwest::Method {
    match m {
        HttpMethod::GET => reqwest::Method::GET,
        HttpMethod::POST => reqwest::Method::POST,
        HttpMethod::PUT => reqwest::Method::PUT,
        HttpMethod::PATCH => reqwest::Method::PATCH,
        HttpMethod::DELETE => reqwest::Method::DELETE,
        HttpMethod::HEAD => reqwest::Method::HEAD,
        HttpMethod::OPTIONS => reqwest::Method::OPTIONS,
    }
}

/// Response headers as `{lowercased name: value}`; repeated headers are
/// joined with `, `.
fn header_map(h: &reqwest::header::HeaderMap) -> Map<String, Value> {
    let mut out = Map::new();
    for name in h.keys() {
        let value = h.get_all(name).iter().map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned()).collect::<Vec<_>>().join(", ");
        // `HeaderName`s are already lowercase.
        out.insert(name.as_str().to_string(), Value::String(value));
    }
    out
}

/// Whether a `Content-Type` names JSON (`application/json`, `…+json`).
pub(crate) fn is_json_type(content_type: &str) -> bool {
    let essence = content_type.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    essence == "application/json" || essence.ends_with("+json") || essence == "text/json"
}

/// The body as JSON when it is JSON (by its content type, or an object or
/// array that parses), else as text.
fn body_value(content_type: Option<&str>, bytes: Vec<u8>) -> Value {
    let looks_structured = || matches!(bytes.iter().find(|b| !b.is_ascii_whitespace()), Some(b'{' | b'['));
    if (content_type.is_some_and(is_json_type) || looks_structured())
        && let Ok(v) = serde_json::from_slice(&bytes)
    {
        return v;
    }
    Value::String(match String::from_utf8(bytes) {
        Ok(s) => s,
        Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
    })
}

/// Read a response body, failing when it is longer than `cap` bytes.
pub(crate) async fn read_body(mut resp: reqwest::Response, cap: usize, shown_url: &str, limit: Duration) -> Result<Vec<u8>, ActionError> {
    let too_big = || ActionError::Failed(format!("the response body of {shown_url} exceeded {}", super::process::human_bytes(cap)));
    if resp.content_length().is_some_and(|n| n > cap as u64) {
        return Err(too_big());
    }
    let mut buf = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(|e| send_error(shown_url, limit, &e))? {
        if buf.len() + chunk.len() > cap {
            return Err(too_big());
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(buf)
}

/// `HTTP 503 Service Unavailable: <first KiB of the body>`.
pub(crate) fn status_message(status: reqwest::StatusCode, body: &[u8]) -> String {
    let head = &body[..body.len().min(ERROR_BODY_BYTES)];
    let text = String::from_utf8_lossy(head);
    let text = text.trim();
    let more = if body.len() > ERROR_BODY_BYTES { "…" } else { "" };
    let reason = status.canonical_reason().unwrap_or("");
    let code = status.as_u16();
    match (reason.is_empty(), text.is_empty()) {
        (false, false) => format!("HTTP {code} {reason}: {text}{more}"),
        (false, true) => format!("HTTP {code} {reason}"),
        (true, false) => format!("HTTP {code}: {text}{more}"),
        (true, true) => format!("HTTP {code}"),
    }
}

/// A transport error as a retryable failure with its causes; a refusal of
/// the egress policy (at DNS resolution or on a redirect) is permanent.
pub(crate) fn send_error(shown_url: &str, limit: Duration, e: &reqwest::Error) -> ActionError {
    if let Some(r) = super::egress::Refused::find(e) {
        return ActionError::Permanent(r.to_string());
    }
    if e.is_timeout() {
        return ActionError::Failed(format!("HTTP request to {shown_url} timed out after {}", humantime::format_duration(limit)));
    }
    if e.is_builder() {
        return ActionError::Permanent(format!("invalid HTTP request to {shown_url}: {}", error_chain(e)));
    }
    ActionError::Failed(format!("HTTP request to {shown_url} failed: {}", error_chain(e)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_content_types() {
        assert!(is_json_type("application/json"));
        assert!(is_json_type("application/json; charset=utf-8"));
        assert!(is_json_type("application/problem+json"));
        assert!(!is_json_type("text/plain"));
    }

    #[test]
    fn bodies_parse_when_they_are_json() {
        assert_eq!(body_value(Some("application/json"), b"42".to_vec()), Value::from(42));
        assert_eq!(body_value(Some("text/plain"), b"42".to_vec()), Value::from("42"));
        assert_eq!(body_value(None, br#" {"a": 1}"#.to_vec()), serde_json::json!({"a": 1}));
        assert_eq!(body_value(Some("application/json"), b"not json".to_vec()), Value::from("not json"));
    }

    #[test]
    fn status_messages_quote_the_body() {
        let m = status_message(reqwest::StatusCode::SERVICE_UNAVAILABLE, b"down for maintenance\n");
        assert_eq!(m, "HTTP 503 Service Unavailable: down for maintenance");
        let big = vec![b'x'; 3000];
        let m = status_message(reqwest::StatusCode::BAD_GATEWAY, &big);
        assert!(m.ends_with('…'));
        assert!(m.len() < 1100);
    }

    #[test]
    fn urls_in_messages_hide_secrets() {
        assert_eq!(display_url("https://u:p@example.com/a?token=s#f"), "https://example.com/a");
    }
}
