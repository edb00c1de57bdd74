//! What the HTTP API tests share: a minimal HTTP/1.1 client over a real
//! socket and an in-process cluster behind the API. Each test binary uses
//! a part of it.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::Duration;

use caravan_engine::clock::SystemClock;
use caravan_engine::fixtures::node;
use caravan_engine::fsm::Command;
use caravan_engine::ids::IdGen;
use caravan_engine::local::{LocalCluster, LocalConfig};
use caravan_net::http::{self, LocalServer};
use serde_json::Value;

pub(crate) struct Reply {
    pub status: u16,
    pub headers: String,
    pub body: String,
}

impl Reply {
    pub(crate) fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }

    pub(crate) fn index(&self) -> u64 {
        self.headers
            .lines()
            .find_map(|l| l.to_ascii_lowercase().strip_prefix("x-nomad-index: ").map(|v| v.trim().parse().unwrap()))
            .expect("X-Nomad-Index header")
    }
}

/// A minimal HTTP/1.1 client: one request per connection.
pub(crate) fn call(addr: SocketAddr, method: &str, path: &str, body: &[u8]) -> Reply {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).unwrap();
    stream.write_all(body).unwrap();
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).unwrap();
    let text = String::from_utf8_lossy(&raw).to_string();
    let (headers, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = headers.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap();
    let body = if headers.to_ascii_lowercase().contains("transfer-encoding: chunked") {
        dechunk(body)
    } else {
        body.to_string()
    };
    Reply { status, headers: headers.to_string(), body }
}

pub(crate) fn dechunk(body: &str) -> String {
    let mut out = String::new();
    let mut rest = body;
    while let Some((size, tail)) = rest.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 {
            break;
        }
        out.push_str(&tail[..n]);
        rest = &tail[n + 2..];
    }
    out
}

/// An in-process cluster with three nodes (4 GHz, 8 GiB each) behind the
/// API on a free loopback port.
pub(crate) fn start() -> (SocketAddr, Arc<LocalServer>) {
    let cluster = LocalCluster::start(LocalConfig { workers: 2, ..LocalConfig::default() }, Arc::new(SystemClock));
    let mut ids = IdGen::with_seed(1);
    for i in 0..3 {
        let n = node(&mut ids, &format!("n{i}"), "dc1", 4000, 8192);
        cluster.commit(&Command::NodeRegister { node: n, evals: vec![] }).unwrap();
    }
    let server = Arc::new(LocalServer { cluster, rpc_addr: "127.0.0.1:4647".into() });
    let addr = http::spawn("127.0.0.1:0".parse().unwrap(), server.clone()).unwrap();
    (addr, server)
}
