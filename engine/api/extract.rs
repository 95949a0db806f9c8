//! Request extractors whose every rejection is an [`ApiError`].
//!
//! axum's own `Json`, `Path` and `Query` answer bad requests with plain-text
//! bodies; these wrappers keep their parsing and give the API's JSON error
//! shape instead, with the line and column of a JSON mistake.

use super::error::{ApiError, ErrorCode};
use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Path, Query, Request};
use axum::http::{HeaderMap, StatusCode, header, request::Parts};
use serde::de::DeserializeOwned;
use serde_json::json;

/// A JSON object request body: `Content-Type: application/json` (or `application/*+json`),
/// at most the router's body limit, received before the router's body
/// deadline (else 408 `request_timeout`), deserialised into `T`.
pub struct JsonBody<T>(pub T);

/// When the request's body must have arrived in full (a request extension
/// the router sets as the request comes in).
#[derive(Debug, Clone, Copy)]
pub struct BodyDeadline(pub tokio::time::Instant);

/// Whether the request says its body is JSON.
fn is_json(headers: &HeaderMap) -> bool {
    let Some(ct) = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()) else { return false };
    let essence = ct.split(';').next().unwrap_or_default().trim().to_ascii_lowercase();
    essence == "application/json" || (essence.starts_with("application/") && essence.ends_with("+json"))
}

impl<S, T> FromRequest<S> for JsonBody<T>
where
    S: Send + Sync,
    T: DeserializeOwned,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        if !is_json(req.headers()) {
            return Err(ApiError::new(
                ErrorCode::UnsupportedMediaType,
                "the body must be JSON, sent with `Content-Type: application/json`",
            ));
        }
        let deadline = req.extensions().get::<BodyDeadline>().copied();
        let read = Bytes::from_request(req, state);
        let read = match deadline {
            Some(BodyDeadline(at)) => tokio::time::timeout_at(at, read).await.map_err(|_| {
                ApiError::new(
                    ErrorCode::RequestTimeout,
                    "the body did not arrive in time; send it at once, or ask for a longer body timeout",
                )
            })?,
            None => read.await,
        };
        let bytes = read.map_err(|e| {
            if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::new(ErrorCode::PayloadTooLarge, "the body is larger than this server accepts")
            } else {
                ApiError::new(ErrorCode::InvalidJson, format!("could not read the body: {}", e.body_text()))
            }
        })?;
        let value: T = serde_json::from_slice(&bytes).map_err(|e| ApiError::from_json(&e))?;
        // serde reads a struct from an array too: every body of this API is an object.
        if bytes.trim_ascii_start().first() != Some(&b'{') {
            return Err(
                ApiError::new(ErrorCode::InvalidBody, "the body must be a JSON object").with_details(json!({"line": 1, "column": 1}))
            );
        }
        Ok(JsonBody(value))
    }
}

/// Path parameters.
pub struct PathParams<T>(pub T);

impl<S, T> FromRequestParts<S> for PathParams<T>
where
    S: Send + Sync,
    T: DeserializeOwned + Send,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        match Path::<T>::from_request_parts(parts, state).await {
            Ok(Path(v)) => Ok(PathParams(v)),
            // A route declared without the parameter its handler reads: our bug, not the caller's.
            Err(e) if e.status().is_server_error() => Err(ApiError::new(ErrorCode::Internal, e.body_text())),
            Err(e) => Err(ApiError::new(ErrorCode::InvalidPath, e.body_text()).with_details(json!({"path": parts.uri.path()}))),
        }
    }
}

/// Query parameters.
pub struct QueryParams<T>(pub T);

impl<S, T> FromRequestParts<S> for QueryParams<T>
where
    S: Send + Sync,
    T: DeserializeOwned,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        Query::<T>::from_request_parts(parts, state)
            .await
            .map(|Query(v)| QueryParams(v))
            .map_err(|e| ApiError::new(ErrorCode::InvalidQuery, e.body_text()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    #[test]
    fn json_content_types() {
        let check = |v: &str| {
            let mut h = HeaderMap::new();
            h.insert(header::CONTENT_TYPE, HeaderValue::from_str(v).unwrap());
            is_json(&h)
        };
        assert!(check("application/json"));
        assert!(check("Application/JSON; charset=utf-8"));
        assert!(check("application/merge-patch+json"));
        assert!(!check("text/plain"));
        assert!(!check("application/jsonx"));
        assert!(!is_json(&HeaderMap::new()));
    }
}
