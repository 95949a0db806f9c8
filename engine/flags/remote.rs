//! Evaluation by a Flipt server over its REST API (`/evaluate/v1/variant`,
//! `/evaluate/v1/boolean`, `/evaluate/v1/batch`), with a timeout and a short
//! cache of answers.
//!
//! Plain `reqwest` rather than the `flipt` crate: three JSON calls do not
//! justify a second HTTP stack, and owning the client lets every failure
//! carry a precise message and the timeout be ours.

use super::FlagError;
use super::eval::{Context, Evaluation, Reason};
use super::model::FlagType;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Cached answers at most; the cache is emptied when full.
const CACHE_CAPACITY: usize = 10_000;

pub struct Remote {
    base: String,
    client: reqwest::Client,
    ttl: Duration,
    cache: Mutex<HashMap<CacheKey, (Instant, Evaluation)>>,
}

impl std::fmt::Debug for Remote {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Remote").field("base", &self.base).field("ttl", &self.ttl).finish_non_exhaustive()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct CacheKey {
    namespace: String,
    flag: String,
    kind: Option<FlagType>,
    entity: String,
    context: Vec<(String, String)>,
}

impl Remote {
    pub fn new(url: &str, timeout: Duration, ttl: Duration) -> Result<Remote, FlagError> {
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout)
            .build()
            .map_err(|e| FlagError::Remote(format!("cannot build an HTTP client: {e}")))?;
        Ok(Remote { base: url.trim_end_matches('/').to_string(), client, ttl, cache: Mutex::new(HashMap::new()) })
    }

    pub fn url(&self) -> &str {
        &self.base
    }

    /// Evaluate through the API matching `kind`; with no kind, through the
    /// batch API, which answers for either type.
    pub async fn evaluate(
        &self,
        namespace: &str,
        flag: &str,
        kind: Option<FlagType>,
        entity: &str,
        ctx: &Context,
    ) -> Result<Evaluation, FlagError> {
        let mut context: Vec<(String, String)> = ctx.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        context.sort();
        let key = CacheKey { namespace: namespace.into(), flag: flag.into(), kind, entity: entity.into(), context };
        if !self.ttl.is_zero()
            && let Some((at, e)) = lock(&self.cache).get(&key)
            && at.elapsed() < self.ttl
        {
            return Ok(e.clone());
        }
        let request = json!({"namespaceKey": namespace, "flagKey": flag, "entityId": entity, "context": ctx});
        let e = match kind {
            Some(FlagType::Variant) => variant_of(flag, &self.post("/evaluate/v1/variant", &request).await?)?,
            Some(FlagType::Boolean) => boolean_of(flag, &self.post("/evaluate/v1/boolean", &request).await?)?,
            None => {
                let body = self.post("/evaluate/v1/batch", &json!({"requests": [request]})).await?;
                let r = body.get("responses").and_then(|r| r.get(0)).ok_or_else(|| bad(flag, "no `responses` in the answer"))?;
                if let Some(v) = r.get("variantResponse") {
                    variant_of(flag, v)?
                } else if let Some(b) = r.get("booleanResponse") {
                    boolean_of(flag, b)?
                } else if let Some(err) = r.get("errorResponse") {
                    let reason = err.get("reason").and_then(Value::as_str).unwrap_or("UNKNOWN");
                    if reason.starts_with("NOT_FOUND") {
                        return Err(FlagError::Eval(super::EvalError::NotFound { namespace: namespace.into(), flag: flag.into() }));
                    }
                    return Err(FlagError::Remote(format!("flag `{flag}`: the server answered {reason}")));
                } else {
                    return Err(bad(flag, "an answer of no known type"));
                }
            }
        };
        if !self.ttl.is_zero() {
            let mut cache = lock(&self.cache);
            if cache.len() >= CACHE_CAPACITY {
                cache.clear();
            }
            cache.insert(key, (Instant::now(), e.clone()));
        }
        Ok(e)
    }

    async fn post(&self, path: &str, body: &Value) -> Result<Value, FlagError> {
        let url = format!("{}{path}", self.base);
        let resp = self.client.post(&url).json(body).send().await.map_err(|e| {
            if e.is_timeout() {
                FlagError::Remote(format!("{url}: no answer within the timeout"))
            } else {
                FlagError::Remote(format!("{url}: {}", e.without_url()))
            }
        })?;
        let status = resp.status();
        let text = resp.text().await.map_err(|e| FlagError::Remote(format!("{url}: reading the answer: {}", e.without_url())))?;
        if !status.is_success() {
            // Flipt answers errors as {"code": .., "message": ..}.
            let message = serde_json::from_str::<Value>(&text)
                .ok()
                .and_then(|v| v.get("message").and_then(Value::as_str).map(str::to_string))
                .unwrap_or_else(|| text.chars().take(200).collect());
            return Err(FlagError::Remote(format!("{url}: HTTP {}: {message}", status.as_u16())));
        }
        serde_json::from_str(&text).map_err(|e| FlagError::Remote(format!("{url}: the answer is not JSON: {e}")))
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn bad(flag: &str, what: &str) -> FlagError {
    FlagError::Remote(format!("flag `{flag}`: the server sent {what}"))
}

fn reason_of(flag: &str, v: &Value) -> Result<Reason, FlagError> {
    let r = v.get("reason").and_then(Value::as_str).unwrap_or("UNKNOWN_EVALUATION_REASON");
    Reason::parse(r).ok_or_else(|| bad(flag, &format!("an unknown reason `{r}`")))
}

fn segment_keys(v: &Value) -> Vec<String> {
    v.get("segmentKeys")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(|s| s.as_str().map(str::to_string)).collect())
        .unwrap_or_default()
}

fn variant_of(flag: &str, v: &Value) -> Result<Evaluation, FlagError> {
    // The attachment travels as JSON text.
    let attachment = v
        .get("variantAttachment")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .map(|s| serde_json::from_str(s).unwrap_or_else(|_| Value::String(s.to_string())));
    Ok(Evaluation {
        flag: flag.to_string(),
        flag_type: FlagType::Variant,
        matched: v.get("match").and_then(Value::as_bool).unwrap_or(false),
        variant: v.get("variantKey").and_then(Value::as_str).unwrap_or_default().to_string(),
        attachment,
        enabled: false,
        reason: reason_of(flag, v)?,
        segment_keys: segment_keys(v),
    })
}

fn boolean_of(flag: &str, v: &Value) -> Result<Evaluation, FlagError> {
    let reason = reason_of(flag, v)?;
    Ok(Evaluation {
        flag: flag.to_string(),
        flag_type: FlagType::Boolean,
        matched: reason == Reason::Match,
        variant: String::new(),
        attachment: None,
        enabled: v.get("enabled").and_then(Value::as_bool).unwrap_or(false),
        reason,
        segment_keys: segment_keys(v),
    })
}
