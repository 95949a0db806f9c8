//! The HTTP API of `taskweave serve`: an axum [`Router`] over an [`Engine`].
//!
//! It lists workflows and their reload status, starts runs, serves results
//! (with long-polling), cancels, lists history, streams run/task/reload
//! events as server-sent events, serves the rollout dashboard, lists the
//! live workers of every backend, exposes Prometheus metrics and its own
//! OpenAPI document. It touches the engine only through the [`Engine`]
//! facade and its registry; it owns no state but its metrics.
//!
//! Every error is an [`ApiError`] (`{"error": {"code", "message", "details"}}`),
//! including axum's own rejections, unknown routes and wrong methods. With a
//! token set, every endpoint but `/healthz` needs `Authorization: Bearer
//! <token>`, compared in constant time. Neither the token nor request bodies
//! are ever logged. [`token`] refuses a token no client could send (or an
//! empty one) before a server starts; [`server`] serves the router on a
//! socket with connection limits and timeouts that slow clients cannot get
//! around; the router itself gives each request body a deadline (408).

pub mod error;
mod events;
pub mod extract;
pub mod metrics;
mod rollout;
mod runs;
pub mod server;
pub mod token;
mod workers;
mod workflows;

pub use error::{ApiError, ErrorCode};
pub use metrics::Metrics;
pub use runs::RunBody;
pub use workers::entry as workers_entry;

use crate::engine::Engine;
use axum::Router;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{HeaderMap, Method, Uri, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, get, post};
use serde_json::json;
use sha2::{Digest, Sha256};
use std::sync::Arc;
use std::time::Duration;
use subtle::ConstantTimeEq;
use tokio_util::sync::{CancellationToken, DropGuard};

/// The OpenAPI 3.1 document of this API (`GET /openapi.json`).
pub const OPENAPI: &str = include_str!("../../openapi/openapi.json");

/// How a router serves.
#[derive(Clone)]
pub struct ApiOptions {
    /// When set, every endpoint but `/healthz` needs `Authorization: Bearer <token>`.
    pub token: Option<String>,
    /// The largest request body accepted, in bytes (default 1 MiB).
    pub body_limit: usize,
    /// The longest `?wait=` a result read may block (default 60s); longer waits are cut to it.
    pub max_wait: Duration,
    /// How long a request body may take to arrive in full (default 30s); a
    /// slower one is answered 408 `request_timeout`.
    pub body_timeout: Duration,
    /// Cancelled when the server begins to shut down: server-sent event
    /// streams end then, so they do not hold the shutdown open.
    pub shutdown: CancellationToken,
}

impl Default for ApiOptions {
    fn default() -> Self {
        ApiOptions {
            token: None,
            body_limit: 1024 * 1024,
            max_wait: Duration::from_secs(60),
            body_timeout: crate::config::serve::BODY_TIMEOUT,
            shutdown: CancellationToken::new(),
        }
    }
}

impl std::fmt::Debug for ApiOptions {
    // The token never appears in logs or panics.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiOptions")
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("body_limit", &self.body_limit)
            .field("max_wait", &self.max_wait)
            .field("body_timeout", &self.body_timeout)
            .finish_non_exhaustive()
    }
}

/// What every handler shares.
pub(crate) struct AppState {
    pub(crate) engine: Engine,
    pub(crate) max_wait: Duration,
    pub(crate) metrics: Arc<Metrics>,
    /// Ends server-sent event streams when the server shuts down.
    pub(crate) shutdown: CancellationToken,
    /// SHA-256 of the token: digests of equal length compare in constant time.
    token: Option<[u8; 32]>,
    /// Stops the metrics feed when the last clone of the router is dropped.
    _feed: Option<DropGuard>,
}

type Routes = Vec<(Method, &'static str, MethodRouter<Arc<AppState>>)>;

fn route_handlers() -> Routes {
    vec![
        (Method::GET, "/healthz", get(healthz)),
        (Method::GET, "/openapi.json", get(openapi)),
        (Method::GET, "/metrics", get(render_metrics)),
        (Method::GET, "/v1/workflows", get(workflows::list)),
        (Method::GET, "/v1/workflows/{name}", get(workflows::show)),
        (Method::POST, "/v1/workflows/{name}/runs", post(runs::submit)),
        (Method::GET, "/v1/runs", get(runs::list)),
        (Method::GET, "/v1/runs/{id}", get(runs::show)),
        (Method::POST, "/v1/runs/{id}/cancel", post(runs::cancel)),
        (Method::POST, "/v1/runs/{id}/retry", post(runs::retry)),
        (Method::GET, "/v1/events", get(events::events)),
        (Method::GET, "/v1/migration", get(rollout::status)),
        (Method::GET, "/v1/workers", get(workers::list)),
    ]
}

/// Every route of the router: method and path template (axum syntax, as in the OpenAPI document).
pub fn routes() -> Vec<(Method, &'static str)> {
    route_handlers().into_iter().map(|(m, p, _)| (m, p)).collect()
}

/// The API over `engine`.
///
/// Starts a background task feeding `/metrics` from the engine's events, so
/// it must be called inside a Tokio runtime (without one, `/metrics` only
/// shows zeros); the task ends when the router is dropped.
pub fn router(engine: Engine, opts: ApiOptions) -> Router {
    let metrics = Arc::new(Metrics::of_engine(&engine));
    let feed = match tokio::runtime::Handle::try_current() {
        Ok(_) => {
            let stop = CancellationToken::new();
            metrics::spawn_feed(engine.clone(), Arc::clone(&metrics), stop.clone());
            Some(stop.drop_guard())
        }
        Err(_) => {
            tracing::warn!("the API router was built outside a Tokio runtime: /metrics will not be fed");
            None
        }
    };
    let token = opts.token.as_deref().map(digest);
    let state = Arc::new(AppState { engine, max_wait: opts.max_wait, metrics, shutdown: opts.shutdown, token, _feed: feed });
    let mut router = Router::new();
    for (_, path, handler) in route_handlers() {
        router = router.route(path, handler);
    }
    let body_timeout = opts.body_timeout;
    let mut router =
        router.method_not_allowed_fallback(method_not_allowed).fallback(not_found).layer(DefaultBodyLimit::max(opts.body_limit)).layer(
            middleware::map_request(move |mut req: Request| async move {
                req.extensions_mut().insert(extract::BodyDeadline(tokio::time::Instant::now() + body_timeout));
                req
            }),
        );
    if state.token.is_some() {
        router = router.layer(middleware::from_fn_with_state(Arc::clone(&state), require_token));
    }
    router.layer(tower_http::trace::TraceLayer::new_for_http()).with_state(state)
}

fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// The credentials of `Authorization: Bearer <token>`, if the header has that form.
fn bearer(headers: &HeaderMap) -> Option<&str> {
    let v = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, rest) = v.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| rest.trim())
}

async fn require_token(State(st): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    let Some(expected) = &st.token else { return next.run(req).await };
    if req.uri().path() == "/healthz" {
        return next.run(req).await;
    }
    let ok = bearer(req.headers()).is_some_and(|given| bool::from(digest(given).ct_eq(expected)));
    if ok { next.run(req).await } else { ApiError::unauthorized().into_response() }
}

/// 200 `{"status": "ok"}` while the store writes (or there is none); 503
/// naming the store's error from a failed write until one succeeds, since
/// runs cannot be accepted meanwhile.
async fn healthz(State(st): State<Arc<AppState>>) -> Response {
    let Some(store) = st.engine.store() else {
        return axum::Json(json!({"status": "ok"})).into_response();
    };
    match store.health().failure() {
        None => axum::Json(json!({"status": "ok"})).into_response(),
        Some(f) => {
            let body = json!({
                "status": "unavailable",
                "store": {
                    "location": store.location(),
                    "error": f.error,
                    "failing_since": f.since.format(&time::format_description::well_known::Rfc3339).unwrap_or_default(),
                    "write_errors": store.health().write_errors(),
                },
            });
            let mut resp = (axum::http::StatusCode::SERVICE_UNAVAILABLE, axum::Json(body)).into_response();
            resp.headers_mut().insert(header::RETRY_AFTER, axum::http::HeaderValue::from_static("1"));
            resp
        }
    }
}

async fn openapi() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI)
}

async fn render_metrics(State(st): State<Arc<AppState>>) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, metrics::CONTENT_TYPE)], st.metrics.render())
}

async fn not_found(method: Method, uri: Uri) -> ApiError {
    ApiError::not_found(method.as_str(), uri.path())
}

async fn method_not_allowed(method: Method, uri: Uri) -> ApiError {
    ApiError::method_not_allowed(method.as_str(), uri.path())
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    #[test]
    fn bearer_header_forms() {
        let h = |v: &str| {
            let mut m = HeaderMap::new();
            m.insert(header::AUTHORIZATION, HeaderValue::from_str(v).unwrap());
            m
        };
        assert_eq!(bearer(&h("Bearer abc")), Some("abc"));
        assert_eq!(bearer(&h("bearer  abc ")), Some("abc"));
        assert_eq!(bearer(&h("Basic abc")), None);
        assert_eq!(bearer(&h("Bearer")), None);
        assert_eq!(bearer(&HeaderMap::new()), None);
    }

    #[test]
    fn options_never_show_the_token() {
        let o = ApiOptions { token: Some("s3cret".into()), ..Default::default() };
        assert!(!format!("{o:?}").contains("s3cret"));
        assert_eq!(o.body_limit, 1 << 20);
        assert_eq!(o.max_wait, Duration::from_secs(60));
        assert_eq!(o.body_timeout, Duration::from_secs(30));
    }

    #[test]
    fn the_openapi_document_is_json() {
        let v: serde_json::Value = serde_json::from_str(OPENAPI).expect("openapi.json parses");
        assert_eq!(v["openapi"], "3.1.0");
    }
}
