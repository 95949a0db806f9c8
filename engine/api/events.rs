//! `GET /v1/events`: run and task transitions and workflow reloads as
//! server-sent events.
//!
//! Each connection subscribes to the engine's broadcast channels, so a slow
//! client never blocks the engine: when it falls behind, the skipped events
//! are dropped for that client alone and it receives one `lagged` event
//! saying how many. Events:
//!
//! - `event: run`, `event: task`: data is the [`RunEvent`] as JSON;
//! - `event: reload`: data is the [`crate::reload::ReloadReport`] as JSON;
//! - `event: lagged`: `{"skipped": N}`.
//!
//! `?run_id=` and `?workflow=` narrow run and task events (reloads always pass).

use super::AppState;
use super::extract::QueryParams;
use crate::run::executor::RunEvent;
use axum::extract::State;
use axum::response::sse::{Event, KeepAlive, Sse};
use futures::stream::{self, Stream, StreamExt};
use serde::Deserialize;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::broadcast::{Receiver, error::RecvError};

/// How often an idle stream sends a keep-alive comment.
pub const KEEP_ALIVE: Duration = Duration::from_secs(15);

#[derive(Debug, Default, Deserialize)]
pub struct EventFilter {
    pub run_id: Option<String>,
    pub workflow: Option<String>,
}

enum Item<T> {
    Event(T),
    Lagged(u64),
}

/// A broadcast receiver as a stream that reports lag instead of failing.
fn receiver_stream<T: Clone + Send + 'static>(rx: Receiver<T>) -> impl Stream<Item = Item<T>> + Send {
    stream::unfold(rx, |mut rx| async move {
        match rx.recv().await {
            Ok(v) => Some((Item::Event(v), rx)),
            Err(RecvError::Lagged(n)) => Some((Item::Lagged(n), rx)),
            Err(RecvError::Closed) => None,
        }
    })
}

fn lagged(n: u64) -> Event {
    Event::default().event("lagged").data(format!(r#"{{"skipped":{n}}}"#))
}

fn json_event(name: &str, data: &impl serde::Serialize) -> Event {
    // Serialising these plain structs cannot fail; an empty object if it ever did.
    Event::default().event(name).data(serde_json::to_string(data).unwrap_or_else(|_| "{}".into()))
}

pub async fn events(
    State(st): State<Arc<AppState>>,
    QueryParams(filter): QueryParams<EventFilter>,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let runs = receiver_stream(st.engine.subscribe()).filter_map(move |item| {
        let out = match item {
            Item::Lagged(n) => Some(lagged(n)),
            Item::Event(ev) => {
                let keep = filter.run_id.as_deref().is_none_or(|id| id == ev.run_id)
                    && filter.workflow.as_deref().is_none_or(|w| w == ev.workflow);
                keep.then(|| run_event(&ev))
            }
        };
        std::future::ready(out)
    });
    let reloads = receiver_stream(st.engine.registry().subscribe()).map(|item| match item {
        Item::Lagged(n) => lagged(n),
        Item::Event(r) => json_event("reload", &r),
    });
    // The stream ends when the server shuts down, so that it never holds the shutdown open.
    let merged = stream::select(runs, reloads).map(Ok).take_until(st.shutdown.clone().cancelled_owned());
    Sse::new(merged).keep_alive(KeepAlive::new().interval(KEEP_ALIVE))
}

fn run_event(ev: &RunEvent) -> Event {
    json_event(if ev.task.is_some() { "task" } else { "run" }, ev)
}
