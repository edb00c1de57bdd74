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

/// `<root>/<task>.<type>.N` for the one allocation `alloc`, its
/// directory `<root>/alloc-dir`.
#[derive(Debug)]
struct DirLogs {
    root: PathBuf,
    alloc: String,
}

impl DirLogs {
    fn new(root: &std::path::Path) -> DirLogs {
        DirLogs { root: root.to_path_buf(), alloc: ALLOC.to_string() }
    }
}

impl LocalLogs for DirLogs {
    fn log_files(&self, alloc_id: &str, task: &str, log_type: LogType) -> Result<Vec<LogFile>, LocalLogsError> {
        if alloc_id != self.alloc {
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
        if alloc_id != self.alloc {
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
    http::spawn_with("127.0.0.1:0".parse().unwrap(), server, ApiOptions { local_logs: logs, ..ApiOptions::default() })
        .unwrap()
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
    let addr = start(Some(Arc::new(DirLogs::new(&root))));
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
    let addr = start(Some(Arc::new(DirLogs::new(&root))));
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
fn a_server_without_a_local_client_refuses_an_unknown_allocation() {
    let addr = start(None);
    let (status, body) = call(addr, &format!("/v1/client/fs/logs/{ALLOC}?task=web&type=stdout"));
    assert_eq!(status, 404, "{body}");
    assert!(body.contains("unknown allocation") && body.contains(ALLOC), "{body}");
    for verb in ["ls", "stat", "cat", "readat", "stream"] {
        let (status, body) = call(addr, &format!("/v1/client/fs/{verb}/{ALLOC}?path=/web&offset=0"));
        assert_eq!(status, 404, "{verb}: {body}");
        assert!(body.contains("unknown allocation"), "{verb}: {body}");
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A raw GET with extra header lines (`Name: value\r\n` each).
fn call_with_headers(addr: SocketAddr, path: &str, headers: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(std::time::Duration::from_secs(60))).unwrap();
    let head = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n{headers}\r\n");
    stream.write_all(head.as_bytes()).unwrap();
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).unwrap();
    let text = String::from_utf8_lossy(&raw).to_string();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap();
    let body = if head.to_ascii_lowercase().contains("transfer-encoding: chunked") {
        common::dechunk(body)
    } else {
        body.to_string()
    };
    (status, body)
}

/// A server whose state places an allocation on a node whose agent (a
/// client-only API here) holds its files: every `/v1/client/fs` verb asked
/// of the server comes back from that agent, parameters passed through; a
/// request already forwarded is not forwarded again; a node unreachable or
/// down is a 502 with the reason.
#[test]
fn forwards_requests_to_the_agent_of_the_allocations_node() {
    use caravan_engine::fixtures;
    use caravan_engine::fsm::Command;
    use caravan_engine::ids::IdGen;
    use caravan_engine::model::{JobType, NodeStatus};

    let cluster = LocalCluster::start(LocalConfig { workers: 1, ..LocalConfig::default() }, Arc::new(SystemClock));
    let client_port = free_port();
    let mut ids = IdGen::with_seed(7);
    let mut node = fixtures::node(&mut ids, "far", "dc1", 4000, 8192);
    node.http_addr = format!("127.0.0.1:{client_port}").into();
    cluster.commit(&Command::NodeRegister { node: node.clone(), evals: vec![] }).unwrap();
    let server = Arc::new(LocalServer { cluster, rpc_addr: "127.0.0.1:4647".into() });
    let server_addr = http::spawn("127.0.0.1:0".parse().unwrap(), server.clone()).unwrap();
    server.cluster.register_job(fixtures::job("web", JobType::Service, 1, 100, 64)).unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let alloc_id = loop {
        if let Some(alloc) = server.cluster.store.snapshot().allocs().next() {
            break alloc.id.to_string();
        }
        assert!(std::time::Instant::now() < deadline, "the job was never placed");
        std::thread::sleep(std::time::Duration::from_millis(20));
    };

    let root = alloc_tree("forward");
    let logs = DirLogs { root: root.clone(), alloc: alloc_id.clone() };
    let client_addr = http::spawn_client(
        format!("127.0.0.1:{client_port}").parse().unwrap(),
        ApiOptions { local_logs: Some(Arc::new(logs)), ..ApiOptions::default() },
    )
    .unwrap();

    // Every verb, through the server.
    let (status, body) = call(server_addr, &format!("/v1/client/fs/cat/{alloc_id}?path=web/local/input.txt"));
    assert_eq!((status, body.as_str()), (200, "hello files\n"));
    let (status, body) =
        call(server_addr, &format!("/v1/client/fs/readat/{alloc_id}?path=web/local/input.txt&offset=6&limit=5"));
    assert_eq!((status, body.as_str()), (200, "files"));
    let (status, body) = call(server_addr, &format!("/v1/client/fs/ls/{alloc_id}?path=/"));
    assert_eq!(status, 200, "{body}");
    assert_eq!(names_and_dirs(&serde_json::from_str(&body).unwrap()), ["alloc/", "web/"]);
    let (status, body) = call(server_addr, &format!("/v1/client/fs/stat/{alloc_id}?path=web/local/input.txt"));
    assert_eq!(status, 200, "{body}");
    assert_eq!(serde_json::from_str::<Value>(&body).unwrap()["Size"], 12);
    let logs_path = format!("/v1/client/fs/logs/{alloc_id}?task=web&type=stdout&plain=true&origin=end&offset=5");
    let (status, body) = call(server_addr, &logs_path);
    assert_eq!((status, body.as_str()), (200, "four\n"));
    let (status, body) =
        call(server_addr, &format!("/v1/client/fs/stream/{alloc_id}?path=web/local/input.txt&follow=false&plain=true"));
    assert_eq!((status, body.as_str()), (200, "hello files\n"));
    // The node's agent refuses what it refuses, and the server passes it on.
    let (status, body) = call(server_addr, &format!("/v1/client/fs/cat/{alloc_id}?path=web/local/out-file"));
    assert_eq!(status, 403, "{body}");
    assert!(!body.contains("secret"), "{body}");
    // Bad parameters are refused before anything is forwarded.
    let (status, body) = call(server_addr, &format!("/v1/client/fs/readat/{alloc_id}?path=x&offset=-1"));
    assert_eq!(status, 400, "{body}");

    // Never forwarded twice: a forwarded request for an allocation this
    // agent does not hold is answered 404 here.
    let marked = format!("{}: 1\r\n", http::FORWARDED_HEADER);
    let (status, body) =
        call_with_headers(server_addr, &format!("/v1/client/fs/cat/{alloc_id}?path=web/local/input.txt"), &marked);
    assert_eq!(status, 404, "{body}");
    assert!(body.contains("not forwarded again"), "{body}");
    // The client-only agent serves its own allocations, nothing else.
    let (status, body) = call(client_addr, &format!("/v1/client/fs/cat/{ALLOC}?path=web/local/input.txt"));
    assert_eq!(status, 404, "{body}");
    assert!(body.contains("ask a server"), "{body}");
    let (status, body) = call(client_addr, "/v1/jobs");
    assert_eq!(status, 404, "{body}");
    assert!(body.contains("runs only a client"), "{body}");

    // Unreachable: the node's address answers nothing.
    let mut moved = node.clone();
    moved.http_addr = format!("127.0.0.1:{}", free_port()).into();
    server.cluster.commit(&Command::NodeRegister { node: moved, evals: vec![] }).unwrap();
    let (status, body) = call(server_addr, &format!("/v1/client/fs/cat/{alloc_id}?path=web/local/input.txt"));
    assert_eq!(status, 502, "{body}");
    assert!(body.contains("cannot reach node"), "{body}");
    // Down.
    let down = Command::NodeStatusUpdate { node_id: node.id, status: NodeStatus::Down, evals: vec![], now_ns: 1 };
    server.cluster.commit(&down).unwrap();
    let (status, body) = call(server_addr, &format!("/v1/client/fs/cat/{alloc_id}?path=web/local/input.txt"));
    assert_eq!(status, 502, "{body}");
    assert!(body.contains("is down"), "{body}");
    let _ = std::fs::remove_dir_all(&root);
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
    let addr = start(Some(Arc::new(DirLogs::new(&root))));

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
    let addr = start(Some(Arc::new(DirLogs::new(&root))));
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

/// The frames in what a framed stream sent so far: each frame is one
/// chunk of the chunked body, a line of JSON.
fn frames_in(raw: &str) -> Vec<Value> {
    raw.split("\r\n")
        .filter(|l| l.starts_with('{'))
        .flat_map(|l| l.lines())
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn frames_data(frames: &[Value]) -> String {
    let bytes: Vec<u8> = frames.iter().filter_map(|f| f["Data"].as_str()).flat_map(base64_decode).collect();
    String::from_utf8(bytes).unwrap()
}

/// `/v1/client/fs/stream`: a file from an offset (either origin), plain or
/// in Nomad's frames; following, what is appended arrives, a truncation is
/// announced (`file truncated`) and the stream restarts from the start, a
/// deletion is announced (`file deleted`) and ends the stream.
#[test]
fn streams_a_file_and_follows_it() {
    use std::io::{Read, Write};
    use std::time::{Duration, Instant};

    let root = alloc_tree("stream");
    let addr = start(Some(Arc::new(DirLogs::new(&root))));
    let file = root.join("alloc-dir/web/local/input.txt");
    let base = format!("/v1/client/fs/stream/{ALLOC}?path=web/local/input.txt");

    let (status, body) = call(addr, &format!("{base}&follow=false"));
    assert_eq!(status, 200, "{body}");
    let frames: Vec<Value> = body.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(frames.len(), 1, "{body}");
    assert_eq!(frames[0]["File"], "web/local/input.txt");
    assert_eq!(frames[0]["Offset"], 12);
    assert_eq!(frames_data(&frames), "hello files\n");
    let (_, body) = call(addr, &format!("{base}&follow=false&plain=true&origin=end&offset=6"));
    assert_eq!(body, "files\n");
    let (_, body) = call(addr, &format!("{base}&follow=false&plain=true&offset=6"));
    assert_eq!(body, "files\n");
    for (query, want) in [
        ("&offset=-2", "invalid offset"),
        ("&origin=middle", "invalid origin"),
        ("&follow=maybe", "invalid follow"),
        ("&plain=2", "invalid plain"),
    ] {
        let (status, body) = call(addr, &format!("{base}{query}"));
        assert_eq!(status, 400, "{query}: {body}");
        assert!(body.contains(want), "{query}: {body}");
    }
    let (status, body) = call(addr, &format!("/v1/client/fs/stream/{ALLOC}"));
    assert_eq!((status, body.contains("missing file path")), (400, true), "{body}");
    let (status, _) = call(addr, &format!("/v1/client/fs/stream/{ALLOC}?path=web/local"));
    assert_eq!(status, 400);
    let (status, _) = call(addr, &format!("/v1/client/fs/stream/{ALLOC}?path=web/local/out-file"));
    assert_eq!(status, 403);

    // Following (the default).
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
    write!(stream, "GET {base} HTTP/1.1\r\nHost: {addr}\r\n\r\n").unwrap();
    let mut raw = String::new();
    let mut read_until = |done: &dyn Fn(&[Value]) -> bool, raw: &mut String| -> bool {
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut buffer = [0u8; 4096];
        while Instant::now() < deadline {
            if done(&frames_in(raw)) {
                return true;
            }
            match stream.read(&mut buffer) {
                Ok(0) => return done(&frames_in(raw)),
                Ok(n) => raw.push_str(&String::from_utf8_lossy(&buffer[..n])),
                Err(_) => {}
            }
        }
        false
    };
    assert!(read_until(&|f| frames_data(f) == "hello files\n", &mut raw), "{raw}");
    std::fs::OpenOptions::new().append(true).open(&file).unwrap().write_all(b"more\n").unwrap();
    assert!(read_until(&|f| frames_data(f) == "hello files\nmore\n", &mut raw), "{raw}");
    std::fs::write(&file, "new\n").unwrap();
    let truncated =
        |f: &[Value]| f.iter().any(|f| f["FileEvent"] == "file truncated") && frames_data(f).ends_with("new\n");
    assert!(read_until(&truncated, &mut raw), "{raw}");
    std::fs::remove_file(&file).unwrap();
    assert!(read_until(&|f| f.iter().any(|f| f["FileEvent"] == "file deleted"), &mut raw), "{raw}");
    let _ = std::fs::remove_dir_all(&root);
}
