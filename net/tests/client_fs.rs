//! `GET /v1/client/fs/logs/<alloc>` over a real socket with a [`LocalLogs`]
//! over a temporary directory: plain and framed output, offsets from the
//! start and the end across rotated files, bad parameters refused, unknown
//! allocations and tasks answered 404, and a server without a local client
//! answering 501 with the reason. Then the allocation's files (`ls`,
//! `stat`, `cat`, `readat`), and requests that try to leave its directory.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use caravan_engine::clock::SystemClock;
use caravan_engine::local::{LocalCluster, LocalConfig};
use caravan_net::http::{self, ApiOptions, LocalLogs, LocalLogsError, LocalServer, LogFile, LogType};
use serde_json::Value;

mod common;

/// An allocation id no state store holds.
const ALLOC: &str = "0b6c4a3e-9f6e-4c2a-8d0e-2f1a5b7c9d11";

/// `<root>/<alloc>/<task>.<type>.N`.
#[derive(Debug)]
struct DirLogs {
    root: PathBuf,
}

impl LocalLogs for DirLogs {
    fn log_files(&self, alloc_id: &str, task: &str, log_type: LogType) -> Result<Vec<LogFile>, LocalLogsError> {
        if alloc_id != ALLOC {
            return Err(LocalLogsError::UnknownAlloc(alloc_id.into()));
        }
        if task != "web" {
            return Err(LocalLogsError::UnknownTask { alloc_id: alloc_id.into(), task: task.into() });
        }
        let mut files = Vec::new();
        for index in 0..10u64 {
            let path = self.root.join(format!("{task}.{}.{index}", log_type.as_str()));
            if path.exists() {
                files.push(LogFile { index, path });
            }
        }
        Ok(files)
    }

    fn alloc_dir(&self, alloc_id: &str) -> Result<PathBuf, LocalLogsError> {
        if alloc_id != ALLOC {
            return Err(LocalLogsError::UnknownAlloc(alloc_id.into()));
        }
        Ok(self.root.join("alloc-dir"))
    }
}

fn call(addr: SocketAddr, path: &str) -> (u16, String) {
    let reply = common::call(addr, "GET", path, b"");
    (reply.status, reply.body)
}

fn start(logs: Option<Arc<dyn LocalLogs>>) -> SocketAddr {
    let cluster = LocalCluster::start(LocalConfig { workers: 1, ..LocalConfig::default() }, Arc::new(SystemClock));
    let server = Arc::new(LocalServer { cluster, rpc_addr: "127.0.0.1:4647".into() });
    http::spawn_with("127.0.0.1:0".parse().unwrap(), server, ApiOptions { local_logs: logs }).unwrap()
}

fn logs_dir(test: &str) -> PathBuf {
    let root = std::env::temp_dir().join(format!("caravan-client-fs-{test}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(&root).unwrap();
    // Rotated: the stream is "one\ntwo\n" + "three\nfour\n".
    std::fs::write(root.join("web.stdout.0"), "one\ntwo\n").unwrap();
    std::fs::write(root.join("web.stdout.1"), "three\nfour\n").unwrap();
    std::fs::write(root.join("web.stderr.0"), "oops\n").unwrap();
    root
}

fn base64_decode(text: &str) -> Vec<u8> {
    let value = |c: u8| match c {
        b'A'..=b'Z' => c - b'A',
        b'a'..=b'z' => c - b'a' + 26,
        b'0'..=b'9' => c - b'0' + 52,
        b'+' => 62,
        _ => 63,
    };
    let mut out = Vec::new();
    for chunk in text.as_bytes().chunks(4) {
        let digits: Vec<u8> = chunk.iter().filter(|c| **c != b'=').map(|c| value(*c)).collect();
        let n = digits.iter().enumerate().fold(0u32, |n, (i, d)| n | (u32::from(*d) << (18 - 6 * i)));
        for i in 0..digits.len().saturating_sub(1) {
            out.push((n >> (16 - 8 * i)) as u8);
        }
    }
    out
}

#[test]
fn serves_a_tasks_logs_plain_and_framed() {
    let root = logs_dir("serve");
    let addr = start(Some(Arc::new(DirLogs { root: root.clone() })));
    let base = format!("/v1/client/fs/logs/{ALLOC}?task=web");

    let (status, body) = call(addr, &format!("{base}&type=stdout&plain=true"));
    assert_eq!(status, 200, "{body}");
    assert_eq!(body, "one\ntwo\nthree\nfour\n");
    let (_, body) = call(addr, &format!("{base}&type=stderr&plain=true"));
    assert_eq!(body, "oops\n");
    // Offsets count across the rotated files, from either end.
    let (_, body) = call(addr, &format!("{base}&type=stdout&plain=true&origin=start&offset=4"));
    assert_eq!(body, "two\nthree\nfour\n");
    let (_, body) = call(addr, &format!("{base}&type=stdout&plain=true&origin=end&offset=5"));
    assert_eq!(body, "four\n");
    let (_, body) = call(addr, &format!("{base}&type=stdout&plain=true&origin=end&offset=1000"));
    assert_eq!(body, "one\ntwo\nthree\nfour\n");
    // Following a task that is not running (no allocation in the state)
    // ends once everything is sent.
    let (status, body) = call(addr, &format!("{base}&type=stdout&plain=true&follow=true"));
    assert_eq!((status, body.as_str()), (200, "one\ntwo\nthree\nfour\n"));

    // Framed: one JSON frame per chunk, Nomad's StreamFrame fields.
    let (status, body) = call(addr, &format!("{base}&type=stdout"));
    assert_eq!(status, 200, "{body}");
    let frames: Vec<Value> = body.lines().map(|line| serde_json::from_str(line).unwrap()).collect();
    assert_eq!(frames.len(), 2, "{body}");
    assert_eq!(frames[0]["File"], "alloc/logs/web.stdout.0");
    assert_eq!(frames[0]["Offset"], 8);
    assert_eq!(frames[1]["File"], "alloc/logs/web.stdout.1");
    let data: Vec<u8> = frames.iter().flat_map(|f| base64_decode(f["Data"].as_str().unwrap())).collect();
    assert_eq!(String::from_utf8(data).unwrap(), "one\ntwo\nthree\nfour\n");
    let _ = std::fs::remove_dir_all(&root);
}

#[test]
fn refuses_bad_requests_and_unknown_allocations() {
    let root = logs_dir("refuse");
    let addr = start(Some(Arc::new(DirLogs { root: root.clone() })));
    let cases = [
        (format!("/v1/client/fs/logs/{ALLOC}?type=stdout"), 400, "missing task"),
        (format!("/v1/client/fs/logs/{ALLOC}?task=web"), 400, "missing log type"),
        (format!("/v1/client/fs/logs/{ALLOC}?task=web&type=stdin"), 400, "invalid log type"),
        (format!("/v1/client/fs/logs/{ALLOC}?task=web&type=stdout&origin=middle"), 400, "invalid origin"),
        (format!("/v1/client/fs/logs/{ALLOC}?task=web&type=stdout&offset=-1"), 400, "invalid offset"),
        (format!("/v1/client/fs/logs/{ALLOC}?task=web&type=stdout&follow=yes"), 400, "invalid follow"),
        (format!("/v1/client/fs/logs/{ALLOC}?task=db&type=stdout"), 404, "unknown task"),
        ("/v1/client/fs/logs/other?task=web&type=stdout".to_string(), 404, "unknown allocation"),
    ];
    for (path, want_status, want_text) in cases {
        let (status, body) = call(addr, &path);
        assert_eq!(status, want_status, "{path}: {body}");
        assert!(body.contains(want_text), "{path}: {body}");
    }
    let _ = std::fs::remove_dir_all(&root);
}

#[test]
fn a_server_without_a_local_client_says_why() {
    let addr = start(None);
    let (status, body) = call(addr, &format!("/v1/client/fs/logs/{ALLOC}?task=web&type=stdout"));
    assert_eq!(status, 501, "{body}");
    assert!(body.contains("no client runs in this agent") && body.contains("forward"), "{body}");
    assert!(body.contains(ALLOC), "{body}");
    for verb in ["ls", "stat", "cat", "readat"] {
        let (status, body) = call(addr, &format!("/v1/client/fs/{verb}/{ALLOC}?path=/"));
        assert_eq!(status, 501, "{verb}: {body}");
        assert!(body.contains("no client runs in this agent"), "{verb}: {body}");
    }
}

/// An allocation directory: `alloc/logs`, a task `web` with a file in
/// `local/`, and symlinks inside and out (`outside.txt` sits next to it).
fn alloc_tree(test: &str) -> PathBuf {
    let root = logs_dir(test);
    let alloc = root.join("alloc-dir");
    std::fs::create_dir_all(alloc.join("alloc/logs")).unwrap();
    std::fs::create_dir_all(alloc.join("web/local")).unwrap();
    std::fs::write(alloc.join("alloc/logs/web.stdout.0"), "log line\n").unwrap();
    std::fs::write(alloc.join("web/local/input.txt"), "hello files\n").unwrap();
    std::fs::write(root.join("outside.txt"), "secret\n").unwrap();
    std::os::unix::fs::symlink("input.txt", alloc.join("web/local/inside")).unwrap();
    std::os::unix::fs::symlink(root.join("outside.txt"), alloc.join("web/local/out-file")).unwrap();
    std::os::unix::fs::symlink(&root, alloc.join("web/local/out-dir")).unwrap();
    root
}

fn names_and_dirs(listing: &Value) -> Vec<String> {
    listing
        .as_array()
        .unwrap()
        .iter()
        .map(|f| format!("{}{}", f["Name"].as_str().unwrap(), if f["IsDir"] == true { "/" } else { "" }))
        .collect()
}

#[test]
fn lists_stats_and_reads_an_allocations_files() {
    let root = alloc_tree("files");
    let addr = start(Some(Arc::new(DirLogs { root: root.clone() })));

    let (status, body) = call(addr, &format!("/v1/client/fs/ls/{ALLOC}"));
    assert_eq!(status, 200, "{body}");
    assert_eq!(names_and_dirs(&serde_json::from_str(&body).unwrap()), ["alloc/", "web/"]);
    let (status, body) = call(addr, &format!("/v1/client/fs/ls/{ALLOC}?path=/web/local"));
    assert_eq!(status, 200, "{body}");
    let listing: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(names_and_dirs(&listing), ["input.txt", "inside", "out-dir", "out-file"]);
    let input = &listing[0];
    assert_eq!(input["Size"], 12);
    assert!(input["FileMode"].as_str().unwrap().starts_with("-rw"), "{input}");
    assert_eq!(input["ContentType"], "text/plain; charset=utf-8");
    assert!(input["ModTime"].as_str().unwrap().ends_with('Z'), "{input}");
    // Symlinks are listed as themselves, not followed.
    assert!(listing[3]["FileMode"].as_str().unwrap().starts_with('L'), "{listing}");

    let (status, body) = call(addr, &format!("/v1/client/fs/stat/{ALLOC}?path=alloc/logs"));
    assert_eq!(status, 200, "{body}");
    let stat: Value = serde_json::from_str(&body).unwrap();
    assert_eq!((stat["Name"].as_str(), stat["IsDir"].as_bool()), (Some("logs"), Some(true)));
    assert!(stat["FileMode"].as_str().unwrap().starts_with('d'), "{stat}");
    assert!(stat.get("ContentType").is_none(), "{stat}");

    let (status, body) = call(addr, &format!("/v1/client/fs/cat/{ALLOC}?path=/web/local/input.txt"));
    assert_eq!((status, body.as_str()), (200, "hello files\n"));
    // A symlink that stays inside is followed.
    let (status, body) = call(addr, &format!("/v1/client/fs/cat/{ALLOC}?path=web/local/inside"));
    assert_eq!((status, body.as_str()), (200, "hello files\n"));
    let (status, body) = call(addr, &format!("/v1/client/fs/readat/{ALLOC}?path=web/local/input.txt&offset=6&limit=5"));
    assert_eq!((status, body.as_str()), (200, "files"));
    let (status, body) = call(addr, &format!("/v1/client/fs/readat/{ALLOC}?path=web/local/input.txt&offset=100"));
    assert_eq!((status, body.as_str()), (200, ""));
    let _ = std::fs::remove_dir_all(&root);
}

#[test]
fn file_requests_never_leave_the_allocation_directory() {
    let root = alloc_tree("escape");
    let addr = start(Some(Arc::new(DirLogs { root: root.clone() })));
    let cases = [
        (format!("/v1/client/fs/cat/{ALLOC}?path=../outside.txt"), 400, "must not contain"),
        (format!("/v1/client/fs/cat/{ALLOC}?path=web/../../outside.txt"), 400, "must not contain"),
        (format!("/v1/client/fs/ls/{ALLOC}?path=/.."), 400, "must not contain"),
        (format!("/v1/client/fs/cat/{ALLOC}?path=web/local/out-file"), 403, "outside the allocation directory"),
        (format!("/v1/client/fs/ls/{ALLOC}?path=web/local/out-dir"), 403, "outside the allocation directory"),
        (format!("/v1/client/fs/stat/{ALLOC}?path=web/local/out-dir/outside.txt"), 403, "outside"),
        (format!("/v1/client/fs/cat/{ALLOC}?path=web/local/missing"), 404, "no such file"),
        (format!("/v1/client/fs/cat/{ALLOC}?path=web/local"), 400, "is a directory"),
        (format!("/v1/client/fs/readat/{ALLOC}?path=web/local/input.txt&offset=-3"), 400, "invalid offset"),
        ("/v1/client/fs/ls/other?path=/".to_string(), 404, "unknown allocation"),
        ("/v1/client/fs/stat/other?path=/".to_string(), 404, "unknown allocation"),
    ];
    for (path, want_status, want_text) in cases {
        let (status, body) = call(addr, &path);
        assert_eq!(status, want_status, "{path}: {body}");
        assert!(body.contains(want_text), "{path}: {body}");
        assert!(!body.contains("secret"), "{path}: {body}");
    }
    let _ = std::fs::remove_dir_all(&root);
}
