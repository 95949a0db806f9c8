//! The API's one error type.
//!
//! Every failure an endpoint can answer with, the engine's own errors and
//! axum's rejections (body syntax, content type, body size, path and query
//! parameters, unknown routes, wrong methods) alike, becomes an [`ApiError`]:
//! a stable [`ErrorCode`] that decides the HTTP status in one place, a
//! message for people and `details` for programs, sent as
//! `{"error": {"code", "message", "details"}}`. Bad input is always a 4xx;
//! only the server's own faults are 5xx.
//!
//! Messages never contain request bodies or credentials.

use crate::backend::BackendError;
use crate::engine::EngineError;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

/// Stable error codes of the API, each with its HTTP status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    /// The body is not valid JSON (400).
    InvalidJson,
    /// The body is JSON of the wrong shape: a wrong type, an unknown field (422).
    InvalidBody,
    /// The body did not arrive within the server's body timeout (408).
    RequestTimeout,
    /// The request has no `Content-Type: application/json` (415).
    UnsupportedMediaType,
    /// The body is larger than the configured limit (413).
    PayloadTooLarge,
    /// A path parameter could not be read (400).
    InvalidPath,
    /// A query parameter is malformed or out of range (400).
    InvalidQuery,
    /// `wait` is not a duration such as `30s` (400).
    InvalidWait,
    /// A missing or wrong bearer token (401).
    Unauthorized,
    /// No route for this path (404).
    NotFound,
    /// The route exists but not for this method (405).
    MethodNotAllowed,
    /// No workflow of this name is registered (404).
    UnknownWorkflow,
    /// No run with this id (404).
    RunNotFound,
    /// The run has already finished, so it cannot be cancelled (409).
    RunFinished,
    /// The run input fails the workflow's input schema (422).
    InvalidInput,
    /// The request or the workflow names a backend that is not configured (422).
    UnknownBackend,
    /// The backend refused the run before accepting it (422).
    BackendRefused,
    /// The backend cannot be reached now; retry later (503).
    BackendUnavailable,
    /// The backend failed for good (502).
    BackendError,
    /// The run history cannot be read or written now (503).
    StoreUnavailable,
    /// The `Idempotency-Key` header is not 1 to 255 visible ASCII characters (400).
    InvalidIdempotencyKey,
    /// The idempotency key started a run with another request (409).
    IdempotencyConflict,
    /// The run cannot be retried: still going, succeeded, or nothing to run again (409).
    NotRetryable,
    /// A fault of the server itself (500).
    Internal,
}

impl ErrorCode {
    pub const ALL: [ErrorCode; 24] = [
        ErrorCode::InvalidJson,
        ErrorCode::InvalidBody,
        ErrorCode::RequestTimeout,
        ErrorCode::UnsupportedMediaType,
        ErrorCode::PayloadTooLarge,
        ErrorCode::InvalidPath,
        ErrorCode::InvalidQuery,
        ErrorCode::InvalidWait,
        ErrorCode::Unauthorized,
        ErrorCode::NotFound,
        ErrorCode::MethodNotAllowed,
        ErrorCode::UnknownWorkflow,
        ErrorCode::RunNotFound,
        ErrorCode::RunFinished,
        ErrorCode::InvalidInput,
        ErrorCode::UnknownBackend,
        ErrorCode::BackendRefused,
        ErrorCode::BackendUnavailable,
        ErrorCode::BackendError,
        ErrorCode::StoreUnavailable,
        ErrorCode::InvalidIdempotencyKey,
        ErrorCode::IdempotencyConflict,
        ErrorCode::NotRetryable,
        ErrorCode::Internal,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::InvalidJson => "invalid_json",
            ErrorCode::InvalidBody => "invalid_body",
            ErrorCode::RequestTimeout => "request_timeout",
            ErrorCode::UnsupportedMediaType => "unsupported_media_type",
            ErrorCode::PayloadTooLarge => "payload_too_large",
            ErrorCode::InvalidPath => "invalid_path",
            ErrorCode::InvalidQuery => "invalid_query",
            ErrorCode::InvalidWait => "invalid_wait",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::NotFound => "not_found",
            ErrorCode::MethodNotAllowed => "method_not_allowed",
            ErrorCode::UnknownWorkflow => "unknown_workflow",
            ErrorCode::RunNotFound => "run_not_found",
            ErrorCode::RunFinished => "run_finished",
            ErrorCode::InvalidInput => "invalid_input",
            ErrorCode::UnknownBackend => "unknown_backend",
            ErrorCode::BackendRefused => "backend_refused",
            ErrorCode::BackendUnavailable => "backend_unavailable",
            ErrorCode::BackendError => "backend_error",
            ErrorCode::StoreUnavailable => "store_unavailable",
            ErrorCode::InvalidIdempotencyKey => "invalid_idempotency_key",
            ErrorCode::IdempotencyConflict => "idempotency_conflict",
            ErrorCode::NotRetryable => "not_retryable",
            ErrorCode::Internal => "internal",
        }
    }

    /// The one place codes map to statuses.
    pub fn status(self) -> StatusCode {
        match self {
            ErrorCode::InvalidJson
            | ErrorCode::InvalidPath
            | ErrorCode::InvalidQuery
            | ErrorCode::InvalidWait
            | ErrorCode::InvalidIdempotencyKey => StatusCode::BAD_REQUEST,
            ErrorCode::Unauthorized => StatusCode::UNAUTHORIZED,
            ErrorCode::NotFound | ErrorCode::UnknownWorkflow | ErrorCode::RunNotFound => StatusCode::NOT_FOUND,
            ErrorCode::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ErrorCode::RequestTimeout => StatusCode::REQUEST_TIMEOUT,
            ErrorCode::RunFinished | ErrorCode::IdempotencyConflict | ErrorCode::NotRetryable => StatusCode::CONFLICT,
            ErrorCode::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ErrorCode::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ErrorCode::InvalidBody | ErrorCode::InvalidInput | ErrorCode::UnknownBackend | ErrorCode::BackendRefused => {
                StatusCode::UNPROCESSABLE_ENTITY
            }
            ErrorCode::BackendError => StatusCode::BAD_GATEWAY,
            ErrorCode::BackendUnavailable | ErrorCode::StoreUnavailable => StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An error answer: `{"error": {"code", "message", "details"}}` with the code's status.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub code: ErrorCode,
    pub message: String,
    /// Machine-readable context (`null` when there is none).
    pub details: Value,
}

/// Seconds a client should wait before retrying a 503.
const RETRY_AFTER_SECS: &str = "1";

impl ApiError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        ApiError { code, message: message.into(), details: Value::Null }
    }

    pub fn with_details(mut self, details: Value) -> Self {
        self.details = details;
        self
    }

    pub fn status(&self) -> StatusCode {
        self.code.status()
    }

    /// A body that is not JSON, or JSON of the wrong shape, with where it went wrong.
    pub fn from_json(e: &serde_json::Error) -> Self {
        use serde_json::error::Category;
        let code = match e.classify() {
            Category::Syntax | Category::Eof | Category::Io => ErrorCode::InvalidJson,
            Category::Data => ErrorCode::InvalidBody,
        };
        let what = if code == ErrorCode::InvalidJson { "the body is not valid JSON" } else { "the body does not fit the request schema" };
        ApiError::new(code, format!("{what}: {e}")).with_details(json!({"line": e.line(), "column": e.column()}))
    }

    pub fn unauthorized() -> Self {
        ApiError::new(ErrorCode::Unauthorized, "a valid `Authorization: Bearer <token>` header is required")
    }

    pub fn not_found(method: &str, path: &str) -> Self {
        ApiError::new(ErrorCode::NotFound, format!("no route for {method} {path}")).with_details(json!({"method": method, "path": path}))
    }

    pub fn method_not_allowed(method: &str, path: &str) -> Self {
        ApiError::new(ErrorCode::MethodNotAllowed, format!("{path} does not accept {method}"))
            .with_details(json!({"method": method, "path": path}))
    }

    pub fn unknown_workflow(name: &str, suggestion: Option<&str>) -> Self {
        let hint = suggestion.map(|s| format!(" (did you mean `{s}`?)")).unwrap_or_default();
        ApiError::new(ErrorCode::UnknownWorkflow, format!("no workflow `{name}`{hint}"))
            .with_details(json!({"workflow": name, "did_you_mean": suggestion}))
    }

    pub fn run_not_found(id: &str) -> Self {
        ApiError::new(ErrorCode::RunNotFound, format!("no run `{id}`")).with_details(json!({"run_id": id}))
    }

    fn backend(e: BackendError) -> Self {
        match e {
            BackendError::NotFound(id) => ApiError::run_not_found(&id),
            BackendError::Refused { backend, reason } => {
                ApiError::new(ErrorCode::BackendRefused, format!("backend `{backend}` refused the run: {reason}"))
                    .with_details(json!({"backend": backend, "reason": reason}))
            }
            BackendError::Unavailable { backend, reason } => {
                ApiError::new(ErrorCode::BackendUnavailable, format!("backend `{backend}` is unavailable: {reason}"))
                    .with_details(json!({"backend": backend, "reason": reason}))
            }
            BackendError::StoreUnavailable { backend, reason } => {
                ApiError::new(ErrorCode::StoreUnavailable, format!("the run was not accepted: {reason}"))
                    .with_details(json!({"backend": backend, "reason": reason}))
            }
            BackendError::Permanent { backend, reason } => ApiError::new(ErrorCode::BackendError, format!("backend `{backend}`: {reason}"))
                .with_details(json!({"backend": backend, "reason": reason})),
        }
    }
}

impl From<EngineError> for ApiError {
    fn from(e: EngineError) -> Self {
        match e {
            EngineError::UnknownWorkflow { name, suggestion } => ApiError::unknown_workflow(&name, suggestion.as_deref()),
            EngineError::InvalidInput { message, pointer } => {
                ApiError::new(ErrorCode::InvalidInput, format!("invalid input: {message}")).with_details(json!({"pointer": pointer}))
            }
            EngineError::UnknownBackend { name, known } => {
                ApiError::new(ErrorCode::UnknownBackend, format!("no backend `{name}` (configured: {})", known.join(", ")))
                    .with_details(json!({"backend": name, "known": known}))
            }
            EngineError::RunNotFound(id) => ApiError::run_not_found(&id),
            EngineError::RunFinished { run_id, status } => {
                ApiError::new(ErrorCode::RunFinished, format!("run `{run_id}` has already finished ({status}); nothing to cancel"))
                    .with_details(json!({"run_id": run_id, "status": status.as_str()}))
            }
            EngineError::Backend(b) => ApiError::backend(b),
            EngineError::Store(s) => ApiError::new(ErrorCode::StoreUnavailable, s.to_string()),
            e @ EngineError::Invalid { .. } => ApiError::new(ErrorCode::Internal, e.to_string()),
            EngineError::Config(c) => ApiError::new(ErrorCode::Internal, c.to_string()),
            EngineError::Flags(f) => ApiError::new(ErrorCode::Internal, f.to_string()),
            EngineError::IdempotencyConflict { ref key, ref run_id } => {
                let details = json!({"idempotency_key": key, "run_id": run_id});
                ApiError::new(ErrorCode::IdempotencyConflict, e.to_string()).with_details(details)
            }
            EngineError::NotRetryable { ref run_id, .. } => {
                let details = json!({"run_id": run_id});
                ApiError::new(ErrorCode::NotRetryable, e.to_string()).with_details(details)
            }
            e @ EngineError::InvalidIdempotencyKey(_) => ApiError::new(ErrorCode::InvalidIdempotencyKey, e.to_string()),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        if status.is_server_error() {
            tracing::error!(code = self.code.as_str(), "{}", self.message);
        } else {
            tracing::debug!(code = self.code.as_str(), "{}", self.message);
        }
        let body = json!({"error": {"code": self.code.as_str(), "message": self.message, "details": self.details}});
        let mut resp = (status, axum::Json(body)).into_response();
        match self.code {
            ErrorCode::Unauthorized => {
                resp.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            ErrorCode::BackendUnavailable | ErrorCode::StoreUnavailable => {
                resp.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static(RETRY_AFTER_SECS));
            }
            // The rest of the body was never read: the connection cannot carry another request.
            ErrorCode::RequestTimeout => {
                resp.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
            }
            _ => {}
        }
        resp
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unavailable() -> BackendError {
        BackendError::Unavailable { backend: "pg".into(), reason: "connection refused".into() }
    }

    #[test]
    fn engine_errors_map_to_codes_and_statuses() {
        let cases: Vec<(EngineError, ErrorCode, u16)> = vec![
            (EngineError::UnknownWorkflow { name: "x".into(), suggestion: None }, ErrorCode::UnknownWorkflow, 404),
            (
                EngineError::InvalidInput { message: "missing required property `a`".into(), pointer: String::new() },
                ErrorCode::InvalidInput,
                422,
            ),
            (EngineError::UnknownBackend { name: "b".into(), known: vec!["local".into()] }, ErrorCode::UnknownBackend, 422),
            (EngineError::RunNotFound("r".into()), ErrorCode::RunNotFound, 404),
            (EngineError::RunFinished { run_id: "r".into(), status: crate::run::RunStatus::Succeeded }, ErrorCode::RunFinished, 409),
            (EngineError::Backend(BackendError::NotFound("r".into())), ErrorCode::RunNotFound, 404),
            (EngineError::Backend(BackendError::Refused { backend: "local".into(), reason: "no".into() }), ErrorCode::BackendRefused, 422),
            (EngineError::Backend(unavailable()), ErrorCode::BackendUnavailable, 503),
            (EngineError::Backend(BackendError::Permanent { backend: "pg".into(), reason: "broken".into() }), ErrorCode::BackendError, 502),
            (EngineError::Store(crate::store::StoreError::Db("gone".into())), ErrorCode::StoreUnavailable, 503),
            (
                EngineError::Backend(BackendError::StoreUnavailable { backend: "local".into(), reason: "disk full".into() }),
                ErrorCode::StoreUnavailable,
                503,
            ),
        ];
        for (e, code, status) in cases {
            let a = ApiError::from(e);
            assert_eq!((a.code, a.status().as_u16()), (code, status), "{a:?}");
        }
    }

    #[test]
    fn unavailable_answers_carry_retry_after() {
        let resp = ApiError::from(EngineError::Backend(unavailable())).into_response();
        assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(resp.headers()[header::RETRY_AFTER], "1");
        let resp = ApiError::unauthorized().into_response();
        assert_eq!(resp.headers()[header::WWW_AUTHENTICATE], "Bearer");
    }

    #[test]
    fn codes_are_distinct() {
        let mut seen = std::collections::HashSet::new();
        for c in ErrorCode::ALL {
            assert!(seen.insert(c.as_str()), "{c} twice");
        }
    }

    #[test]
    fn json_errors_say_where() {
        let e = serde_json::from_str::<Value>("{\n  \"a\": 1,\n}").unwrap_err();
        let a = ApiError::from_json(&e);
        assert_eq!(a.code, ErrorCode::InvalidJson);
        assert_eq!(a.details, json!({"line": 3, "column": 1}));
        #[derive(Debug, serde::Deserialize)]
        #[allow(dead_code)]
        struct S {
            n: u32,
        }
        let e = serde_json::from_str::<S>(r#"{"n": "x"}"#).unwrap_err();
        assert_eq!(ApiError::from_json(&e).code, ErrorCode::InvalidBody);
    }
}
