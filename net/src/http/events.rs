//! `GET /v1/event/stream`: newline-delimited JSON over chunked transfer
//! encoding, Nomad's shape (`{"Index": N, "Events": [...]}`), `{}` as a
//! heartbeat while nothing happens. `?topic=Job:*` (repeatable; `*` for
//! every topic, `Topic:Key` for one key) and `?index=N` (resume after N).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use caravan_engine::events::{Event, EventPayload};
use caravan_engine::state::Cancel;
use serde_json::{Value, json};

use super::handlers::{Shared, refuse};
use super::server::Server;
use crate::api;

/// Heartbeat period, as Nomad's stream sends `{}`.
const HEARTBEAT: Duration = Duration::from_secs(10);
/// Open streams at once: each holds a producer thread while it lives.
const STREAMS_MAX: usize = 64;
/// Events per frame: bounds one JSON line.
const EVENTS_PER_FRAME_MAX: usize = 256;
/// Frames buffered per stream before the producer waits for the client.
const FRAMES_BUFFERED_MAX: usize = 16;

static OPEN_STREAMS: AtomicUsize = AtomicUsize::new(0);

/// `Topic` or `Topic:Key`, `*` matching anything.
#[derive(Debug, Clone)]
struct TopicFilter {
    topic: String,
    key: String,
}

impl TopicFilter {
    fn matches(&self, e: &Event) -> bool {
        (self.topic == "*" || self.topic == e.topic) && (self.key == "*" || self.key == e.key)
    }
}

fn payload(p: &EventPayload) -> Value {
    match p {
        EventPayload::Job(j) => json!({"Job": api::job_to_api(j)}),
        EventPayload::Evaluation(e) => json!({"Evaluation": api::eval_to_api(e)}),
        EventPayload::Allocation(a) => json!({"Allocation": api::alloc_to_api(a, None)}),
        EventPayload::Node(n) => json!({"Node": api::node_to_api(n)}),
        EventPayload::Deployment(d) => json!({"Deployment": api::deployment_to_api(d, None, std::iter::empty())}),
    }
}

fn frame(events: &[Event]) -> String {
    let index = events.last().map_or(0, |e| e.index);
    let events: Vec<Value> = events
        .iter()
        .map(|e| json!({"Topic": e.topic, "Type": e.kind, "Key": e.key, "Namespace": e.namespace, "FilterKeys": [], "Index": e.index, "Payload": payload(&e.payload)}))
        .collect();
    json!({"Index": index, "Events": events}).to_string() + "\n"
}

/// The query as pairs: `topic` may repeat, which a map would lose.
pub(super) async fn stream(State(server): Shared, Query(query): Query<Vec<(String, String)>>) -> Response {
    let mut filters = Vec::new();
    let mut cursor = 0u64;
    for (k, v) in &query {
        match k.as_str() {
            "topic" => {
                let (topic, key) = v.split_once(':').unwrap_or((v, "*"));
                if !["*", "Job", "Evaluation", "Allocation", "Node", "Deployment"].contains(&topic) {
                    return refuse(StatusCode::BAD_REQUEST, format!("unknown event topic {topic:?}"));
                }
                filters.push(TopicFilter { topic: topic.to_string(), key: key.to_string() });
            }
            "index" => match v.parse() {
                Ok(i) => cursor = i,
                Err(_) => return refuse(StatusCode::BAD_REQUEST, format!("invalid index {v:?}")),
            },
            _ => {}
        }
    }
    if filters.is_empty() {
        filters.push(TopicFilter { topic: "*".into(), key: "*".into() });
    }
    if OPEN_STREAMS.fetch_add(1, Ordering::SeqCst) >= STREAMS_MAX {
        OPEN_STREAMS.fetch_sub(1, Ordering::SeqCst);
        return refuse(StatusCode::TOO_MANY_REQUESTS, format!("too many open event streams (at most {STREAMS_MAX})"));
    }
    let (mut tx, rx) = futures_channel::mpsc::channel::<Result<String, std::io::Error>>(FRAMES_BUFFERED_MAX);
    let spawned = std::thread::Builder::new().name("event-stream".into()).spawn(move || {
        produce(server.as_ref(), &filters, cursor, &mut tx);
        OPEN_STREAMS.fetch_sub(1, Ordering::SeqCst);
    });
    if spawned.is_err() {
        OPEN_STREAMS.fetch_sub(1, Ordering::SeqCst);
        return refuse(StatusCode::SERVICE_UNAVAILABLE, "cannot start the event stream");
    }
    let mut r = Body::from_stream(rx).into_response();
    r.headers_mut().insert(header::CONTENT_TYPE, axum::http::HeaderValue::from_static("application/json"));
    r
}

/// Send frames until the client goes away (the channel closes).
fn produce(
    server: &dyn Server,
    filters: &[TopicFilter],
    mut cursor: u64,
    tx: &mut futures_channel::mpsc::Sender<Result<String, std::io::Error>>,
) {
    let store = server.store().clone();
    let cancel = Cancel::new();
    loop {
        let events: Vec<Event> = server.events_since(cursor, EVENTS_PER_FRAME_MAX);
        let line = if let Some(last) = events.last() {
            cursor = last.index;
            let wanted: Vec<Event> = events.into_iter().filter(|e| filters.iter().any(|f| f.matches(e))).collect();
            if wanted.is_empty() {
                continue;
            }
            frame(&wanted)
        } else {
            let seen = store.latest_index();
            match store.snapshot_min_index(seen + 1, HEARTBEAT, &cancel) {
                Ok(_) => continue,
                Err(_) => "{}\n".to_string(),
            }
        };
        if !send_blocking(tx, line) {
            return;
        }
    }
}

/// Push one frame, waiting while the client is slow; false once it is gone.
fn send_blocking(tx: &mut futures_channel::mpsc::Sender<Result<String, std::io::Error>>, line: String) -> bool {
    let mut item = Ok(line);
    loop {
        match tx.try_send(item) {
            Ok(()) => return true,
            Err(e) if e.is_disconnected() => return false,
            Err(e) => {
                item = e.into_inner();
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }
}
