//! `GET /v1/client/fs/{ls,stat,cat,readat}/<alloc_id>?path=`: the files of
//! an allocation on the client of this agent, Nomad's shapes
//! (`AllocFileInfo`: `Name`, `IsDir`, `Size`, `FileMode`, `ModTime`,
//! `ContentType`).
//!
//! `path` is relative to the allocation directory; as in Nomad, a leading
//! `/` names that directory (`/alloc/logs` and `alloc/logs` are the same),
//! and no path means its root. A request never reads outside it: a `..`
//! component is refused (400), and a path that resolves through a symlink
//! to somewhere outside the allocation directory is refused (403). The
//! directory comes from [`LocalLogs::alloc_dir`]; an allocation of another
//! node is forwarded to its agent, as for logs (`fs_forward.rs`).

use std::collections::HashMap;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path as FsPath, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use super::client_fs::{CHUNK_BYTES, CHUNKS_BUFFERED_MAX, LocalLogs, LocalLogsError, OPEN_STREAMS, STREAMS_MAX};
use super::client_fs::{LogsState, local_or_forward, send_blocking};
use super::handlers::{refuse, reply};

/// Entries `ls` lists at most: a directory a task filled with more is
/// refused rather than answered with an unbounded body.
const LS_ENTRIES_MAX: usize = 10_000;
/// Bytes sniffed to tell text from binary (as Go's `http.DetectContentType`).
const SNIFF_BYTES: usize = 512;

/// Nomad's `AllocFileInfo`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
struct AllocFileInfo {
    name: String,
    is_dir: bool,
    size: u64,
    file_mode: String,
    mod_time: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    content_type: String,
}

/// Why a request is refused, with its status.
type Refusal = (StatusCode, String);

/// The allocation's directory and `path` resolved inside it, symlinks
/// followed; refused when either is missing or it leads outside.
pub(super) fn resolve(logs: &dyn LocalLogs, alloc_id: &str, path: &str) -> Result<(PathBuf, PathBuf), Refusal> {
    if path.contains('\0') {
        return Err((StatusCode::BAD_REQUEST, "path must not contain NUL".into()));
    }
    let mut relative = PathBuf::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                return Err((
                    StatusCode::BAD_REQUEST,
                    format!("path {path:?} must not contain \"..\": it is relative to the allocation directory"),
                ));
            }
            _ => relative.push(part),
        }
    }
    let root = match logs.alloc_dir(alloc_id) {
        Ok(dir) => dir,
        Err(err @ (LocalLogsError::UnknownAlloc(_) | LocalLogsError::UnknownTask { .. })) => {
            return Err((StatusCode::NOT_FOUND, err.to_string()));
        }
        Err(err) => return Err((StatusCode::INTERNAL_SERVER_ERROR, err.to_string())),
    };
    let root = root.canonicalize().map_err(|err| (StatusCode::NOT_FOUND, format!("allocation {alloc_id}: {err}")))?;
    let target = match root.join(&relative).canonicalize() {
        Ok(target) => target,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
            return Err((StatusCode::NOT_FOUND, format!("{path:?}: no such file or directory")));
        }
        Err(err) => return Err((StatusCode::INTERNAL_SERVER_ERROR, format!("{path:?}: {err}"))),
    };
    if !target.starts_with(&root) {
        return Err((StatusCode::FORBIDDEN, format!("{path:?} leads outside the allocation directory")));
    }
    Ok((root, target))
}

/// Go's `os.FileMode.String()`: `d` for a directory, then `rwx` triples.
fn file_mode(meta: &std::fs::Metadata) -> String {
    use std::os::unix::fs::PermissionsExt;
    let mode = meta.permissions().mode();
    let kind = if meta.is_dir() {
        'd'
    } else if meta.file_type().is_symlink() {
        'L'
    } else {
        '-'
    };
    let mut text = String::with_capacity(10);
    text.push(kind);
    for shift in [6u32, 3, 0] {
        let bits = (mode >> shift) & 0o7;
        text.push(if bits & 4 != 0 { 'r' } else { '-' });
        text.push(if bits & 2 != 0 { 'w' } else { '-' });
        text.push(if bits & 1 != 0 { 'x' } else { '-' });
    }
    text
}

/// Text or not, from the file's first bytes (empty: unreadable).
fn content_type(path: &FsPath) -> String {
    let mut head = [0u8; SNIFF_BYTES];
    let Ok(mut file) = std::fs::File::open(path) else { return String::new() };
    let Ok(n) = file.read(&mut head) else { return String::new() };
    let head = &head[..n];
    // A multi-byte character cut at the sniff limit is still text.
    let text = match std::str::from_utf8(head) {
        Ok(_) => true,
        Err(err) => err.error_len().is_none() && err.valid_up_to() + 4 > n,
    };
    if text && !head.contains(&0) { "text/plain; charset=utf-8" } else { "application/octet-stream" }.to_string()
}

fn info(name: String, path: &FsPath, meta: &std::fs::Metadata) -> AllocFileInfo {
    use std::os::unix::fs::MetadataExt;
    let mod_time_ns = meta.mtime().saturating_mul(1_000_000_000).saturating_add(meta.mtime_nsec());
    AllocFileInfo {
        name,
        is_dir: meta.is_dir(),
        size: meta.len(),
        file_mode: file_mode(meta),
        mod_time: crate::api::rfc3339(mod_time_ns),
        content_type: if meta.is_file() { content_type(path) } else { String::new() },
    }
}

fn file_name(path: &FsPath) -> String {
    path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "/".to_string())
}

fn request_path(params: &HashMap<String, String>) -> &str {
    params.get("path").map(String::as_str).filter(|p| !p.is_empty()).unwrap_or("/")
}

fn list(root: &FsPath, dir: &FsPath) -> Result<Vec<AllocFileInfo>, Refusal> {
    let io = |err: std::io::Error| (StatusCode::INTERNAL_SERVER_ERROR, format!("{}: {err}", dir.display()));
    let meta = std::fs::metadata(dir).map_err(io)?;
    if !meta.is_dir() {
        // Nomad lists a file as itself.
        return Ok(vec![info(file_name(dir), dir, &meta)]);
    }
    let mut entries = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io)? {
        let entry = entry.map_err(io)?;
        if entries.len() == LS_ENTRIES_MAX {
            return Err((
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("directory {:?} has more than {LS_ENTRIES_MAX} entries", dir.strip_prefix(root).unwrap_or(dir)),
            ));
        }
        // A symlink is shown as itself (`L` mode), never followed out.
        let Ok(meta) = entry.path().symlink_metadata() else { continue };
        entries.push(info(entry.file_name().to_string_lossy().into_owned(), &entry.path(), &meta));
    }
    entries.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(entries)
}

pub(super) async fn ls_handler(
    State(ctx): LogsState,
    Path(alloc_id): Path<String>,
    Query(params): Query<HashMap<String, String>>,
    headers: HeaderMap,
    uri: Uri,
) -> Response {
    let logs = match local_or_forward(&ctx, &alloc_id, &headers, &uri).await {
        Ok(logs) => logs,
        Err(response) => return response,
    };
    let listed = resolve(logs.as_ref(), &alloc_id, request_path(&params)).and_then(|(root, dir)| list(&root, &dir));
    match listed {
        Ok(entries) => reply(0, &entries),
        Err((status, message)) => refuse(status, message),
    }
}

pub(super) async fn stat_handler(
    State(ctx): LogsState,
    Path(alloc_id): Path<String>,
    Query(params): Query<HashMap<String, String>>,
    headers: HeaderMap,
    uri: Uri,
) -> Response {
    let logs = match local_or_forward(&ctx, &alloc_id, &headers, &uri).await {
        Ok(logs) => logs,
        Err(response) => return response,
    };
    let stat = resolve(logs.as_ref(), &alloc_id, request_path(&params)).and_then(|(_, path)| {
        let meta = std::fs::metadata(&path)
            .map_err(|err| (StatusCode::INTERNAL_SERVER_ERROR, format!("{}: {err}", path.display())))?;
        Ok(info(file_name(&path), &path, &meta))
    });
    match stat {
        Ok(info) => reply(0, &info),
        Err((status, message)) => refuse(status, message),
    }
}

/// A byte range of a file: `cat` (all of it) and `readat`.
#[derive(Debug, Clone, Copy)]
struct Range {
    offset: u64,
    /// `None`: to the end.
    limit: Option<u64>,
}

fn parse_u64(params: &HashMap<String, String>, key: &str) -> Result<Option<u64>, Refusal> {
    match params.get(key).map(String::as_str) {
        None | Some("") => Ok(None),
        Some(text) => {
            text.parse::<u64>().map(Some).map_err(|_| (StatusCode::BAD_REQUEST, format!("invalid {key} {text:?}")))
        }
    }
}

pub(super) async fn cat_handler(
    State(ctx): LogsState,
    Path(alloc_id): Path<String>,
    Query(params): Query<HashMap<String, String>>,
    headers: HeaderMap,
    uri: Uri,
) -> Response {
    let logs = match local_or_forward(&ctx, &alloc_id, &headers, &uri).await {
        Ok(logs) => logs,
        Err(response) => return response,
    };
    read_response(logs, &alloc_id, &params, Range { offset: 0, limit: None })
}

pub(super) async fn readat_handler(
    State(ctx): LogsState,
    Path(alloc_id): Path<String>,
    Query(params): Query<HashMap<String, String>>,
    headers: HeaderMap,
    uri: Uri,
) -> Response {
    let logs = match local_or_forward(&ctx, &alloc_id, &headers, &uri).await {
        Ok(logs) => logs,
        Err(response) => return response,
    };
    let range = parse_u64(&params, "offset").and_then(|offset| {
        let limit = parse_u64(&params, "limit")?;
        Ok(Range { offset: offset.unwrap_or(0), limit })
    });
    match range {
        Ok(range) => read_response(logs, &alloc_id, &params, range),
        Err((status, message)) => refuse(status, message),
    }
}

/// Streams the range of a file from a reader thread, bounded as log streams are.
fn read_response(logs: Arc<dyn LocalLogs>, alloc_id: &str, params: &HashMap<String, String>, range: Range) -> Response {
    let path = request_path(params);
    let file = match resolve(logs.as_ref(), alloc_id, path) {
        Ok((_, file)) => file,
        Err((status, message)) => return refuse(status, message),
    };
    if file.is_dir() {
        return refuse(StatusCode::BAD_REQUEST, format!("{path:?} is a directory: list it with /v1/client/fs/ls"));
    }
    let mut handle = match std::fs::File::open(&file) {
        Ok(handle) => handle,
        Err(err) => return refuse(StatusCode::INTERNAL_SERVER_ERROR, format!("{path:?}: {err}")),
    };
    if let Err(err) = handle.seek(SeekFrom::Start(range.offset)) {
        return refuse(StatusCode::BAD_REQUEST, format!("offset {}: {err}", range.offset));
    }
    if OPEN_STREAMS.fetch_add(1, Ordering::SeqCst) >= STREAMS_MAX {
        OPEN_STREAMS.fetch_sub(1, Ordering::SeqCst);
        return refuse(StatusCode::TOO_MANY_REQUESTS, format!("too many open file streams (at most {STREAMS_MAX})"));
    }
    let content = content_type(&file);
    let (mut tx, rx) = futures_channel::mpsc::channel::<Result<Vec<u8>, std::io::Error>>(CHUNKS_BUFFERED_MAX);
    let spawned = std::thread::Builder::new().name("file-stream".into()).spawn(move || {
        let mut left = range.limit.unwrap_or(u64::MAX);
        let mut buffer = vec![0u8; CHUNK_BYTES];
        while left > 0 {
            let want = buffer.len().min(usize::try_from(left).unwrap_or(usize::MAX));
            match handle.read(&mut buffer[..want]) {
                Ok(0) => break,
                Ok(n) => {
                    left -= n as u64;
                    if !send_blocking(&mut tx, buffer[..n].to_vec()) {
                        break;
                    }
                }
                Err(err) => {
                    let _ = tx.try_send(Err(err));
                    break;
                }
            }
        }
        OPEN_STREAMS.fetch_sub(1, Ordering::SeqCst);
    });
    if spawned.is_err() {
        OPEN_STREAMS.fetch_sub(1, Ordering::SeqCst);
        return refuse(StatusCode::SERVICE_UNAVAILABLE, "cannot start the file stream");
    }
    let mut response = Body::from_stream(rx).into_response();
    let content = if content.is_empty() { "application/octet-stream".to_string() } else { content };
    if let Ok(value) = HeaderValue::from_str(&content) {
        response.headers_mut().insert(header::CONTENT_TYPE, value);
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_print_as_go_does() {
        let dir = std::env::temp_dir().join(format!("caravan-alloc-files-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("f");
        std::fs::write(&file, "hello").unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o640)).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        assert_eq!(file_mode(&std::fs::metadata(&file).unwrap()), "-rw-r-----");
        assert_eq!(file_mode(&std::fs::metadata(&dir).unwrap()), "drwxr-xr-x");
        assert_eq!(content_type(&file), "text/plain; charset=utf-8");
        std::fs::write(&file, [0u8, 159, 146, 150]).unwrap();
        assert_eq!(content_type(&file), "application/octet-stream");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
