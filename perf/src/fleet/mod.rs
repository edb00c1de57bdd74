//! A simulated fleet: nodes that register, heartbeat on the TTL the leader
//! hands out, pull their allocations with the blocking query, report
//! them running after a delay and healthy for their deployment after their
//! group's `min_healthy_time`, over the servers' real client RPC (QUIC,
//! mutual TLS) with the same messages a client agent sends. They run
//! nothing.
//!
//! Nodes are spread over a few OS threads, each a compio runtime running
//! one task per node. Nodes share a QUIC connection per
//! [`NODES_PER_CONNECTION`]: a real agent has its own, but ten thousand
//! UDP sockets in one process would measure the harness, not the servers.
//! Status reports are batched per node every `update_interval`, as an
//! agent batches them (Nomad: 200 ms).

mod due_queue;
mod node;
mod rpc;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use caravan_engine::model::Node;
use caravan_net::quic::ClusterTls;

/// Nodes sharing one QUIC connection: each holds one parked allocation
/// query, at most one status report and at times a heartbeat, three
/// streams at most, so 32 stay under the servers' streams per connection
/// (128) even when every report waits on a slow commit (with 64, parked
/// queries and pending reports alone could take all 128, and a heartbeat
/// would wait for a stream).
pub(crate) const NODES_PER_CONNECTION: usize = 32;

/// What the fleet is and how it behaves.
#[derive(Debug, Clone)]
pub(crate) struct FleetConfig {
    pub(crate) nodes: Vec<Node>,
    /// Servers' RPC addresses; nodes start with the first and follow
    /// `NOT_LEADER` redirects, as agents do.
    pub(crate) servers: Vec<SocketAddr>,
    pub(crate) tls: ClusterTls,
    pub(crate) threads: usize,
    /// From a node seeing an allocation to reporting it running.
    pub(crate) running_delay: Duration,
    /// How often a node sends its batched status reports.
    pub(crate) update_interval: Duration,
    /// How long each blocking allocation query waits.
    pub(crate) allocs_wait: Duration,
}

/// One job's allocations as the fleet saw them, seconds since the fleet's
/// origin.
#[derive(Debug, Default, Clone)]
pub(crate) struct JobProgress {
    pub(crate) seen: u32,
    pub(crate) running: u32,
    pub(crate) first_seen_s: f64,
    pub(crate) last_seen_s: f64,
    pub(crate) last_running_s: f64,
}

/// Counters the scenario reads while the fleet runs.
#[derive(Debug)]
pub(crate) struct FleetShared {
    stop: AtomicBool,
    origin: Instant,
    pub(crate) registered: AtomicU64,
    /// Distinct allocations nodes received to run.
    pub(crate) allocs_seen: AtomicU64,
    /// Allocations whose running report the servers acknowledged.
    pub(crate) allocs_running: AtomicU64,
    /// Deployment health reports the servers acknowledged, healthy and not.
    pub(crate) allocs_healthy: AtomicU64,
    pub(crate) allocs_unhealthy: AtomicU64,
    pub(crate) heartbeats: AtomicU64,
    /// The latest a heartbeat left after its planned time (ms): the
    /// fleet's own lag (its threads short of CPU), not the server's.
    pub(crate) heartbeat_late_ms_max: AtomicU64,
    /// The longest heartbeat call, sent to answered (ms): the server's
    /// delay (and the stream wait on a shared connection).
    pub(crate) heartbeat_rtt_ms_max: AtomicU64,
    pub(crate) rpc_errors: AtomicU64,
    /// Allocation replies received and their encoded bytes, and the same
    /// for status update requests sent: what a placement costs on the wire.
    pub(crate) allocs_replies: AtomicU64,
    pub(crate) allocs_reply_bytes: AtomicU64,
    pub(crate) update_requests: AtomicU64,
    pub(crate) update_request_bytes: AtomicU64,
    /// Nodes the servers had forgotten or marked down that registered again.
    pub(crate) reregistered: AtomicU64,
    /// Allocations received, per node (in `FleetConfig::nodes` order).
    pub(crate) node_allocs: Vec<AtomicU32>,
    /// Nodes made to fail: they go silent (no heartbeats, no queries, no
    /// reports), as an agent whose machine died.
    failed: Vec<AtomicBool>,
    jobs: Mutex<HashMap<Arc<str>, JobProgress>>,
}

impl FleetShared {
    /// Seconds since the fleet started.
    pub(crate) fn now_s(&self) -> f64 {
        self.origin.elapsed().as_secs_f64()
    }

    /// Map a wall-clock instant onto the fleet's timeline.
    pub(crate) fn at_s(&self, at: Instant) -> f64 {
        at.saturating_duration_since(self.origin).as_secs_f64()
    }

    pub(crate) fn stopping(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }

    /// Whether node `index` should go on: the fleet runs and it has not
    /// been made to fail.
    pub(crate) fn alive(&self, index: usize) -> bool {
        !self.stopping() && !self.failed[index].load(Ordering::Relaxed)
    }

    /// Make node `index` fail (see `failed`).
    pub(crate) fn fail(&self, index: usize) {
        self.failed[index].store(true, Ordering::Relaxed);
    }

    pub(crate) fn job(&self, id: &str) -> Option<JobProgress> {
        self.jobs.lock().expect("jobs poisoned").get(id).cloned()
    }

    pub(crate) fn jobs(&self) -> HashMap<Arc<str>, JobProgress> {
        self.jobs.lock().expect("jobs poisoned").clone()
    }

    fn saw(&self, job: &Arc<str>, count: u32) {
        let now = self.now_s();
        let mut jobs = self.jobs.lock().expect("jobs poisoned");
        let progress = jobs.entry(job.clone()).or_default();
        if progress.seen == 0 {
            progress.first_seen_s = now;
        }
        progress.seen += count;
        progress.last_seen_s = now;
        drop(jobs);
        self.allocs_seen.fetch_add(u64::from(count), Ordering::Relaxed);
    }

    fn ran(&self, jobs_running: &[(Arc<str>, u32)]) {
        let now = self.now_s();
        let mut jobs = self.jobs.lock().expect("jobs poisoned");
        let mut total = 0;
        for (job, count) in jobs_running {
            let progress = jobs.entry(job.clone()).or_default();
            progress.running += count;
            progress.last_running_s = now;
            total += u64::from(*count);
        }
        drop(jobs);
        self.allocs_running.fetch_add(total, Ordering::Relaxed);
    }
}

/// A running fleet; [`Fleet::stop`] ends it.
#[derive(Debug)]
pub(crate) struct Fleet {
    pub(crate) shared: Arc<FleetShared>,
    threads: Vec<JoinHandle<()>>,
}

impl Fleet {
    pub(crate) fn start(config: FleetConfig) -> Fleet {
        let shared = Arc::new(FleetShared {
            stop: AtomicBool::new(false),
            origin: Instant::now(),
            registered: AtomicU64::new(0),
            allocs_seen: AtomicU64::new(0),
            allocs_running: AtomicU64::new(0),
            allocs_healthy: AtomicU64::new(0),
            allocs_unhealthy: AtomicU64::new(0),
            heartbeats: AtomicU64::new(0),
            heartbeat_late_ms_max: AtomicU64::new(0),
            heartbeat_rtt_ms_max: AtomicU64::new(0),
            rpc_errors: AtomicU64::new(0),
            allocs_replies: AtomicU64::new(0),
            allocs_reply_bytes: AtomicU64::new(0),
            update_requests: AtomicU64::new(0),
            update_request_bytes: AtomicU64::new(0),
            reregistered: AtomicU64::new(0),
            node_allocs: (0..config.nodes.len()).map(|_| AtomicU32::new(0)).collect(),
            failed: (0..config.nodes.len()).map(|_| AtomicBool::new(false)).collect(),
            jobs: Mutex::new(HashMap::new()),
        });
        let threads = config.threads.clamp(1, config.nodes.len().max(1));
        let per_thread = config.nodes.len().div_ceil(threads).max(1);
        let mut handles = Vec::new();
        for (t, chunk) in config.nodes.chunks(per_thread).enumerate() {
            let nodes: Vec<(usize, Node)> =
                chunk.iter().cloned().enumerate().map(|(i, n)| (t * per_thread + i, n)).collect();
            let config = config.clone();
            let shared = shared.clone();
            handles.push(
                std::thread::Builder::new()
                    .name(format!("fleet-{t}"))
                    .spawn(move || node::run_thread(nodes, &config, shared))
                    .expect("spawn fleet thread"),
            );
        }
        Fleet { shared, threads: handles }
    }

    /// Stop every node (their servers-side state stays) and join.
    pub(crate) fn stop(self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        for t in self.threads {
            let _ = t.join();
        }
    }
}
