//! `GET /v1/client/fs/logs/<alloc_id>`: a task's stdout or stderr, Nomad's
//! parameters (`task`, `type=stdout|stderr`, `follow`, `origin=start|end`,
//! `offset`, `plain`). The allocation's other files (`ls`, `stat`, `cat`,
//! `readat`) are served by `alloc_files.rs` through the same seam.
//!
//! Logs live on the client that runs the allocation. This agent serves them
//! when its own client holds the allocation (`agent -dev`, or a client in
//! the agent): the agent hands the router a [`LocalLogs`], which finds a
//! task's rotated log files. Any other allocation is forwarded, as in
//! Nomad, to the agent of the node it runs on (`fs_forward.rs`).
//!
//! The rotated files (`<task>.<type>.0`, `.1`, ...) are read as one stream:
//! `offset` counts bytes from its start (`origin=start`) or back from its
//! end (`origin=end`). `plain=true` sends the bytes as they are; otherwise
//! each chunk is a JSON frame `{"File", "Offset", "Data" (base64)}` on its
//! own line, with `{}` as a heartbeat while following, as Nomad's
//! `StreamFrame`s. A follow ends when the client goes away, or when the task
//! is dead in the state store and every byte has been sent.

use std::collections::HashMap;
use std::io::{Read, Seek, SeekFrom};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use caravan_engine::model::TaskLifecycleState;

use super::fs_forward::{FsContext, Route};
use super::handlers::refuse;
use super::server::Server;

/// Bytes read and sent at a time: one frame.
pub(super) const CHUNK_BYTES: usize = 64 * 1024;
/// How often a follow looks for new bytes: quick enough to feel live, a
/// few wakeups a second per open stream.
const FOLLOW_POLL: Duration = Duration::from_millis(200);
/// Heartbeat period of framed follows, as Nomad's stream.
pub(super) const HEARTBEAT: Duration = Duration::from_secs(10);
/// Open log and file streams at once: each holds a reader thread while it lives.
pub(super) const STREAMS_MAX: usize = 64;
/// Chunks buffered per stream before the reader waits for the client.
pub(super) const CHUNKS_BUFFERED_MAX: usize = 8;

pub(super) static OPEN_STREAMS: AtomicUsize = AtomicUsize::new(0);

/// Which stream of a task.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogType {
    Stdout,
    Stderr,
}

impl LogType {
    pub fn as_str(self) -> &'static str {
        match self {
            LogType::Stdout => "stdout",
            LogType::Stderr => "stderr",
        }
    }
}

/// One rotated file of a task's stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogFile {
    /// The rotation index `N` of `<task>.<type>.N`.
    pub index: u64,
    pub path: PathBuf,
}

/// Why a task's logs cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum LocalLogsError {
    #[error("unknown allocation {0:?} on this client")]
    UnknownAlloc(String),
    #[error("unknown task {task:?} in allocation {alloc_id:?}")]
    UnknownTask { alloc_id: String, task: String },
    #[error("{0}")]
    Io(String),
}

/// The log files of the client running in this agent.
pub trait LocalLogs: Send + Sync + std::fmt::Debug + 'static {
    /// The rotated files of a task's stream, oldest first. A task that has
    /// not written yet has none.
    fn log_files(&self, alloc_id: &str, task: &str, log_type: LogType) -> Result<Vec<LogFile>, LocalLogsError>;

    /// The allocation's directory on this client, which
    /// `/v1/client/fs/{ls,stat,cat,readat,stream}` read under (and never
    /// outside). `UnknownAlloc` when this client does not hold it.
    fn alloc_dir(&self, alloc_id: &str) -> Result<PathBuf, LocalLogsError>;

    /// Whether the task has ended for good, as this client knows it; `None`
    /// when it cannot tell. A followed log ends once its task is dead and
    /// every byte is sent; an agent with a server asks the server's state
    /// instead.
    fn task_dead(&self, _alloc_id: &str, _task: &str) -> Option<bool> {
        None
    }
}

/// The routes, served by every agent: `server` is this agent's server (to
/// find other nodes' allocations), `logs` its local client's files; a
/// client-only agent has no server, a server-only agent no client.
pub(super) fn router(server: Option<Arc<dyn Server>>, options: super::ApiOptions) -> Router {
    Router::new()
        .route("/v1/client/fs/logs/{alloc_id}", get(logs_handler))
        .route("/v1/client/fs/ls/{alloc_id}", get(super::alloc_files::ls_handler))
        .route("/v1/client/fs/stat/{alloc_id}", get(super::alloc_files::stat_handler))
        .route("/v1/client/fs/cat/{alloc_id}", get(super::alloc_files::cat_handler))
        .route("/v1/client/fs/readat/{alloc_id}", get(super::alloc_files::readat_handler))
        .route("/v1/client/fs/stream/{alloc_id}", get(super::fs_stream::stream_handler))
        .route("/v1/client/stats", get(super::client_stats::host_stats_handler))
        .route("/v1/client/allocation/{alloc_id}/stats", get(super::client_stats::alloc_stats_handler))
        .with_state(FsContext { server, logs: options.local_logs, stats: options.local_stats })
}

/// The refusal of an agent with neither a client nor a server (501).
pub(super) fn not_implemented(alloc_id: &str) -> (StatusCode, String) {
    (
        StatusCode::NOT_IMPLEMENTED,
        format!("no client runs in this agent and it has no server to find allocation {alloc_id}'s node"),
    )
}

pub(super) type LogsState = State<FsContext>;

/// This agent's client's files for `alloc_id`; otherwise the answer:
/// the request forwarded to the agent of the allocation's node, or refused.
pub(super) async fn local_or_forward(
    ctx: &FsContext,
    alloc_id: &str,
    headers: &HeaderMap,
    uri: &Uri,
) -> Result<Arc<dyn LocalLogs>, Response> {
    let route =
        super::fs_forward::route(ctx, alloc_id, headers).map_err(|(status, message)| refuse(status, message))?;
    match route {
        Route::Local(logs) => Ok(logs),
        Route::Remote { node, http_addr } => Err(super::fs_forward::forward(&node, &http_addr, uri).await),
    }
}

/// A request, validated.
#[derive(Debug, Clone)]
struct LogsRequest {
    alloc_id: String,
    task: String,
    log_type: LogType,
    follow: bool,
    origin_end: bool,
    offset: u64,
    plain: bool,
}

pub(super) fn parse_bool(params: &HashMap<String, String>, key: &str) -> Result<bool, String> {
    parse_bool_or(params, key, false)
}

/// A boolean parameter, `default` when absent or empty.
pub(super) fn parse_bool_or(params: &HashMap<String, String>, key: &str, default: bool) -> Result<bool, String> {
    match params.get(key).map(String::as_str) {
        None | Some("") => Ok(default),
        Some("false") => Ok(false),
        Some("true") => Ok(true),
        Some(other) => Err(format!("invalid {key} {other:?}: want true or false")),
    }
}

fn parse_request(alloc_id: String, params: &HashMap<String, String>) -> Result<LogsRequest, String> {
    let task = params.get("task").filter(|t| !t.is_empty()).ok_or("missing task name (?task=)")?.clone();
    let log_type = match params.get("type").map(String::as_str) {
        Some("stdout") => LogType::Stdout,
        Some("stderr") => LogType::Stderr,
        Some(other) => return Err(format!("invalid log type {other:?}: want stdout or stderr")),
        None => return Err("missing log type (?type=stdout or stderr)".into()),
    };
    let origin_end = match params.get("origin").map(String::as_str) {
        None | Some("") | Some("start") => false,
        Some("end") => true,
        Some(other) => return Err(format!("invalid origin {other:?}: want start or end")),
    };
    let offset = match params.get("offset").map(String::as_str) {
        None | Some("") => 0,
        Some(text) => text.parse::<u64>().map_err(|_| format!("invalid offset {text:?}"))?,
    };
    Ok(LogsRequest {
        alloc_id,
        task,
        log_type,
        follow: parse_bool(params, "follow")?,
        origin_end,
        offset,
        plain: parse_bool(params, "plain")?,
    })
}

async fn logs_handler(
    State(ctx): LogsState,
    Path(alloc_id): Path<String>,
    Query(params): Query<HashMap<String, String>>,
    headers: HeaderMap,
    uri: Uri,
) -> Response {
    let request = match parse_request(alloc_id, &params) {
        Ok(request) => request,
        Err(message) => return refuse(StatusCode::BAD_REQUEST, message),
    };
    let logs = match local_or_forward(&ctx, &request.alloc_id, &headers, &uri).await {
        Ok(logs) => logs,
        Err(response) => return response,
    };
    let server = ctx.server.clone();
    // Refuse an unknown allocation or task before streaming anything.
    let files = match logs.log_files(&request.alloc_id, &request.task, request.log_type) {
        Ok(files) => files,
        Err(err @ (LocalLogsError::UnknownAlloc(_) | LocalLogsError::UnknownTask { .. })) => {
            return refuse(StatusCode::NOT_FOUND, err.to_string());
        }
        Err(err) => return refuse(StatusCode::INTERNAL_SERVER_ERROR, err.to_string()),
    };
    if OPEN_STREAMS.fetch_add(1, Ordering::SeqCst) >= STREAMS_MAX {
        OPEN_STREAMS.fetch_sub(1, Ordering::SeqCst);
        return refuse(StatusCode::TOO_MANY_REQUESTS, format!("too many open log streams (at most {STREAMS_MAX})"));
    }
    let (mut tx, rx) = futures_channel::mpsc::channel::<Result<Vec<u8>, std::io::Error>>(CHUNKS_BUFFERED_MAX);
    let plain = request.plain;
    let spawned = std::thread::Builder::new().name("log-stream".into()).spawn(move || {
        let task_dead = || match &server {
            Some(server) => task_dead(server.as_ref(), &request.alloc_id, &request.task),
            None => logs.task_dead(&request.alloc_id, &request.task).unwrap_or(false),
        };
        produce(logs.as_ref(), &request, files, &task_dead, &mut tx);
        OPEN_STREAMS.fetch_sub(1, Ordering::SeqCst);
    });
    if spawned.is_err() {
        OPEN_STREAMS.fetch_sub(1, Ordering::SeqCst);
        return refuse(StatusCode::SERVICE_UNAVAILABLE, "cannot start the log stream");
    }
    let mut response = Body::from_stream(rx).into_response();
    let content_type = if plain { "text/plain; charset=utf-8" } else { "application/json" };
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

/// The task is dead in the state store (or its allocation is gone): a
/// follow may end once every byte has been sent.
fn task_dead(server: &dyn Server, alloc_id: &str, task: &str) -> bool {
    let Ok(id) = alloc_id.parse::<caravan_engine::ids::AllocId>() else { return false };
    let snapshot = server.store().snapshot();
    match snapshot.alloc(id) {
        None => true,
        Some(alloc) => alloc.task_states.get(task).is_some_and(|state| state.state == TaskLifecycleState::Dead),
    }
}

/// Where reading stands: a file (by rotation index) and a byte in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Cursor {
    index: u64,
    position: u64,
}

fn file_len(file: &LogFile) -> u64 {
    std::fs::metadata(&file.path).map(|m| m.len()).unwrap_or(0)
}

/// The cursor `offset` bytes from the start (or back from the end) of the
/// stream the files make.
fn start_cursor(files: &[LogFile], origin_end: bool, offset: u64) -> Cursor {
    let lens: Vec<u64> = files.iter().map(file_len).collect();
    let total: u64 = lens.iter().sum();
    let mut skip = if origin_end { total - offset.min(total) } else { offset.min(total) };
    for (file, len) in files.iter().zip(&lens) {
        if skip < *len {
            return Cursor { index: file.index, position: skip };
        }
        skip -= len;
    }
    match files.last() {
        Some(last) => Cursor { index: last.index, position: lens.last().copied().unwrap_or(0) },
        None => Cursor { index: 0, position: 0 },
    }
}

fn frame(request: &LogsRequest, file: &LogFile, end_offset: u64, data: &[u8]) -> Vec<u8> {
    if request.plain {
        return data.to_vec();
    }
    let name = file.path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let mut line = serde_json::json!({
        "File": format!("alloc/logs/{name}"),
        "Offset": end_offset,
        "Data": crate::api::base64::encode(data),
    })
    .to_string();
    line.push('\n');
    line.into_bytes()
}

/// Sends the stream from the request's origin and offset; while following,
/// waits for more until the client leaves or the task is dead and drained.
fn produce(
    logs: &dyn LocalLogs,
    request: &LogsRequest,
    mut files: Vec<LogFile>,
    task_dead: &dyn Fn() -> bool,
    tx: &mut futures_channel::mpsc::Sender<Result<Vec<u8>, std::io::Error>>,
) {
    let mut cursor = start_cursor(&files, request.origin_end, request.offset);
    let mut buffer = vec![0u8; CHUNK_BYTES];
    let mut last_sent = Instant::now();
    loop {
        // Read the current file to its end, then move to the next one.
        let mut progressed = false;
        if let Some(file) = files.iter().find(|f| f.index >= cursor.index) {
            if file.index != cursor.index {
                // The file we were in was rotated away: go on with the next.
                cursor = Cursor { index: file.index, position: 0 };
            }
            match read_chunk(file, cursor.position, &mut buffer) {
                Ok(0) => {
                    if let Some(next) = files.iter().find(|f| f.index > cursor.index) {
                        cursor = Cursor { index: next.index, position: 0 };
                        progressed = true;
                    }
                }
                Ok(n) => {
                    cursor.position += n as u64;
                    if !send_blocking(tx, frame(request, file, cursor.position, &buffer[..n])) {
                        return;
                    }
                    last_sent = Instant::now();
                    progressed = true;
                }
                Err(err) => {
                    let _ = tx.try_send(Err(err));
                    return;
                }
            }
        }
        if progressed {
            continue;
        }
        // At the end of what is on disk.
        if !request.follow || tx.is_closed() {
            return;
        }
        // A dead task writes nothing more: re-read once, then end.
        let dead = task_dead();
        std::thread::sleep(FOLLOW_POLL);
        match logs.log_files(&request.alloc_id, &request.task, request.log_type) {
            Ok(listed) => files = listed,
            Err(_) => return,
        }
        let more = files.iter().any(|f| f.index > cursor.index)
            || files.iter().find(|f| f.index == cursor.index).is_some_and(|f| file_len(f) > cursor.position);
        if dead && !more {
            return;
        }
        if !request.plain && last_sent.elapsed() >= HEARTBEAT {
            if !send_blocking(tx, b"{}\n".to_vec()) {
                return;
            }
            last_sent = Instant::now();
        }
    }
}

fn read_chunk(file: &LogFile, position: u64, buffer: &mut [u8]) -> std::io::Result<usize> {
    let mut handle = match std::fs::File::open(&file.path) {
        Ok(handle) => handle,
        // Rotated away between listing and reading: nothing more here.
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(err) => return Err(err),
    };
    handle.seek(SeekFrom::Start(position))?;
    handle.read(buffer)
}

/// Pushes one chunk, waiting while the client is slow; false once it is gone.
pub(super) fn send_blocking(
    tx: &mut futures_channel::mpsc::Sender<Result<Vec<u8>, std::io::Error>>,
    chunk: Vec<u8>,
) -> bool {
    let mut item = Ok(chunk);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_count_across_rotated_files() {
        let dir = std::env::temp_dir().join(format!("caravan-client-fs-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let files: Vec<LogFile> = [(0u64, "abc"), (1, "defg")]
            .iter()
            .map(|(index, text)| {
                let path = dir.join(format!("t.stdout.{index}"));
                std::fs::write(&path, text).unwrap();
                LogFile { index: *index, path }
            })
            .collect();
        assert_eq!(start_cursor(&files, false, 0), Cursor { index: 0, position: 0 });
        assert_eq!(start_cursor(&files, false, 4), Cursor { index: 1, position: 1 });
        assert_eq!(start_cursor(&files, true, 2), Cursor { index: 1, position: 2 });
        assert_eq!(start_cursor(&files, true, 5), Cursor { index: 0, position: 2 });
        assert_eq!(start_cursor(&files, true, 100), Cursor { index: 0, position: 0 });
        assert_eq!(start_cursor(&files, false, 100), Cursor { index: 1, position: 4 });
        assert_eq!(start_cursor(&[], true, 3), Cursor { index: 0, position: 0 });
        let _ = std::fs::remove_dir_all(&dir);
    }
}
