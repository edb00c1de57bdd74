//! `GET /v1/client/fs/stream/<alloc_id>?path=&offset=&origin=&follow=&plain=`:
//! one file of an allocation as a stream, Nomad's parameters and framing.
//!
//! `offset` counts bytes from the start (`origin=start`, the default) or
//! back from the end (`origin=end`) of the file as it is when the request
//! arrives. `follow` (default true, as Nomad) keeps the stream open and
//! sends what is appended. Framed output (the default) is Nomad's
//! `StreamFrame` JSON objects back to back, one per line: `Offset` (the
//! byte after the frame's data), `Data` (base64), `File` (the requested
//! path), and `FileEvent` (`"file truncated"` when the file shrank and the
//! stream restarted from its start; `"file deleted"` when it was removed,
//! which ends the stream); empty fields are left out, so a heartbeat,
//! sent while following, is `{}`. `plain=true` sends the bytes alone.
//!
//! The file is opened once, after its path was resolved inside the
//! allocation directory: a task that later swaps it for a symlink cannot
//! make the stream read anything else.

use std::collections::HashMap;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::MetadataExt;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};

use super::alloc_files::resolve;
use super::client_fs::{CHUNK_BYTES, CHUNKS_BUFFERED_MAX, HEARTBEAT, OPEN_STREAMS, STREAMS_MAX};
use super::client_fs::{LogsState, local_or_forward, parse_bool, parse_bool_or, send_blocking};
use super::handlers::refuse;

/// How often a follow looks for appended bytes: live enough for a person
/// watching, a few wakeups a second per open stream.
const FOLLOW_POLL: Duration = Duration::from_millis(200);
/// Nomad's file events.
const EVENT_TRUNCATED: &str = "file truncated";
const EVENT_DELETED: &str = "file deleted";

/// A request, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
struct StreamRequest {
    path: String,
    offset: u64,
    origin_end: bool,
    follow: bool,
    plain: bool,
}

fn parse_request(params: &HashMap<String, String>) -> Result<StreamRequest, String> {
    let path = params.get("path").filter(|p| !p.is_empty()).ok_or("missing file path (?path=)")?.clone();
    let offset = match params.get("offset").map(String::as_str) {
        None | Some("") => 0,
        Some(text) => text.parse::<u64>().map_err(|_| format!("invalid offset {text:?}: want a byte count"))?,
    };
    let origin_end = match params.get("origin").map(String::as_str) {
        None | Some("") | Some("start") => false,
        Some("end") => true,
        Some(other) => return Err(format!("invalid origin {other:?}: want start or end")),
    };
    Ok(StreamRequest {
        path,
        offset,
        origin_end,
        follow: parse_bool_or(params, "follow", true)?,
        plain: parse_bool(params, "plain")?,
    })
}

pub(super) async fn stream_handler(
    State(ctx): LogsState,
    Path(alloc_id): Path<String>,
    Query(params): Query<HashMap<String, String>>,
    headers: HeaderMap,
    uri: Uri,
) -> Response {
    let request = match parse_request(&params) {
        Ok(request) => request,
        Err(message) => return refuse(StatusCode::BAD_REQUEST, message),
    };
    let logs = match local_or_forward(&ctx, &alloc_id, &headers, &uri).await {
        Ok(logs) => logs,
        Err(response) => return response,
    };
    let file = match resolve(logs.as_ref(), &alloc_id, &request.path) {
        Ok((_, file)) => file,
        Err((status, message)) => return refuse(status, message),
    };
    if file.is_dir() {
        return refuse(StatusCode::BAD_REQUEST, format!("{:?} is a directory", request.path));
    }
    let handle = match std::fs::File::open(&file) {
        Ok(handle) => handle,
        Err(err) => return refuse(StatusCode::INTERNAL_SERVER_ERROR, format!("{:?}: {err}", request.path)),
    };
    let size = match handle.metadata() {
        Ok(meta) => meta.len(),
        Err(err) => return refuse(StatusCode::INTERNAL_SERVER_ERROR, format!("{:?}: {err}", request.path)),
    };
    let start = if request.origin_end { size.saturating_sub(request.offset) } else { request.offset };
    if OPEN_STREAMS.fetch_add(1, Ordering::SeqCst) >= STREAMS_MAX {
        OPEN_STREAMS.fetch_sub(1, Ordering::SeqCst);
        return refuse(StatusCode::TOO_MANY_REQUESTS, format!("too many open file streams (at most {STREAMS_MAX})"));
    }
    let plain = request.plain;
    let (mut tx, rx) = futures_channel::mpsc::channel::<Result<Vec<u8>, std::io::Error>>(CHUNKS_BUFFERED_MAX);
    let spawned = std::thread::Builder::new().name("fs-stream".into()).spawn(move || {
        produce(handle, start, &request, &mut tx);
        OPEN_STREAMS.fetch_sub(1, Ordering::SeqCst);
    });
    if spawned.is_err() {
        OPEN_STREAMS.fetch_sub(1, Ordering::SeqCst);
        return refuse(StatusCode::SERVICE_UNAVAILABLE, "cannot start the file stream");
    }
    let mut response = Body::from_stream(rx).into_response();
    let content_type = if plain { "text/plain; charset=utf-8" } else { "application/json" };
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

/// One `StreamFrame` as a line of JSON; empty fields left out, as Nomad.
fn frame(file: &str, offset: u64, data: &[u8], event: Option<&str>) -> Vec<u8> {
    let mut object = serde_json::Map::new();
    if offset != 0 {
        object.insert("Offset".into(), offset.into());
    }
    if !data.is_empty() {
        object.insert("Data".into(), crate::api::base64::encode(data).into());
    }
    if !file.is_empty() {
        object.insert("File".into(), file.into());
    }
    if let Some(event) = event {
        object.insert("FileEvent".into(), event.into());
    }
    let mut line = serde_json::Value::Object(object).to_string();
    line.push('\n');
    line.into_bytes()
}

/// Reads from `start` to the end, then (following) what is appended,
/// into `tx`. Ends at the end without follow, when the caller leaves, or
/// when the file is deleted.
fn produce(
    mut handle: std::fs::File,
    start: u64,
    request: &StreamRequest,
    tx: &mut futures_channel::mpsc::Sender<Result<Vec<u8>, std::io::Error>>,
) {
    let mut buffer = vec![0u8; CHUNK_BYTES];
    let mut position = start;
    let mut event: Option<&str> = None;
    let mut last_sent = Instant::now();
    let emit = |data: &[u8], position: u64, event: Option<&str>| {
        if request.plain { data.to_vec() } else { frame(&request.path, position, data, event) }
    };
    loop {
        let read = handle.seek(SeekFrom::Start(position)).and_then(|_| handle.read(&mut buffer));
        match read {
            Ok(0) => {}
            Ok(n) => {
                position += n as u64;
                if !send_blocking(tx, emit(&buffer[..n], position, event.take())) {
                    return;
                }
                last_sent = Instant::now();
                continue;
            }
            Err(err) => {
                let _ = tx.try_send(Err(err));
                return;
            }
        }
        // At the end of what is on disk.
        if !request.follow || tx.is_closed() {
            return;
        }
        std::thread::sleep(FOLLOW_POLL);
        let Ok(meta) = handle.metadata() else { return };
        if meta.nlink() == 0 {
            // Removed: nothing more will come under this name.
            if !request.plain {
                let _ = send_blocking(tx, frame(&request.path, position, &[], Some(EVENT_DELETED)));
            }
            return;
        }
        if meta.len() < position {
            position = 0;
            event = Some(EVENT_TRUNCATED);
            if !request.plain && meta.len() == 0 {
                // Nothing to carry the event: tell it on its own.
                if !send_blocking(tx, frame(&request.path, 0, &[], event.take())) {
                    return;
                }
                last_sent = Instant::now();
            }
            continue;
        }
        if !request.plain && last_sent.elapsed() >= HEARTBEAT {
            if !send_blocking(tx, b"{}\n".to_vec()) {
                return;
            }
            last_sent = Instant::now();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(query: &[(&str, &str)]) -> HashMap<String, String> {
        query.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn parameters_default_as_nomad_and_bad_ones_are_refused() {
        let request = parse_request(&params(&[("path", "alloc/logs/x")])).unwrap();
        assert_eq!(
            request,
            StreamRequest { path: "alloc/logs/x".into(), offset: 0, origin_end: false, follow: true, plain: false }
        );
        let request =
            parse_request(&params(&[("path", "f"), ("offset", "7"), ("origin", "end"), ("follow", "false")])).unwrap();
        assert_eq!((request.offset, request.origin_end, request.follow), (7, true, false));
        for (query, want) in [
            (vec![], "missing file path"),
            (vec![("path", "f"), ("offset", "-1")], "invalid offset"),
            (vec![("path", "f"), ("offset", "x")], "invalid offset"),
            (vec![("path", "f"), ("origin", "middle")], "invalid origin"),
            (vec![("path", "f"), ("follow", "yes")], "invalid follow"),
            (vec![("path", "f"), ("plain", "1")], "invalid plain"),
        ] {
            let err = parse_request(&params(&query)).unwrap_err();
            assert!(err.contains(want), "{query:?}: {err}");
        }
    }

    #[test]
    fn frames_leave_out_empty_fields() {
        assert_eq!(frame("", 0, &[], None), b"{}\n");
        let text = String::from_utf8(frame("a/f", 3, b"abc", Some(EVENT_TRUNCATED))).unwrap();
        let value: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(value["Offset"], 3);
        assert_eq!(value["Data"], "YWJj");
        assert_eq!(value["File"], "a/f");
        assert_eq!(value["FileEvent"], "file truncated");
    }
}
