//! Raft-replicated servers in one process, over real QUIC on loopback:
//! a single server that survives a restart from its data dir, and a
//! three-server cluster that forms from `bootstrap_expect`, forwards
//! follower writes, schedules, and elects a new leader when the old one
//! stops.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use caravan_engine::clock::SystemClock;
use caravan_engine::endpoints;
use caravan_engine::fixtures;
use caravan_engine::ids::IdGen;
use caravan_engine::model::EvalStatus;
use caravan_net::http::Server;
use caravan_net::quic::DevCa;
use caravan_net::server::{RaftServer, RaftTimings, ServerConfig, TlsFiles};

/// Generous: a 2-core CI machine builds and runs other tests at once.
const LEADER_TIMEOUT: Duration = Duration::from_secs(30);

fn fast_timings() -> RaftTimings {
    RaftTimings {
        heartbeat_ms: 100,
        election_timeout_min_ms: 500,
        election_timeout_max_ms: 1000,
        snapshot_threshold: 8192,
    }
}

fn wait_until(timeout: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if done() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    done()
}

/// Register `nodes` nodes and a service job of `count`, through `server`.
fn register_work(server: &RaftServer, ids: &mut IdGen, nodes: usize, job_id: &str, count: u32) {
    for i in 0..nodes {
        let node = fixtures::node(ids, &format!("node-{job_id}-{i}"), "dc1", 4000, 8192);
        server
            .write(&mut |state, ids, now| endpoints::register_node(state, node.clone(), now, ids))
            .expect("node registered");
    }
    let job = fixtures::job(job_id, caravan_engine::model::JobType::Service, count, 100, 128);
    server.register_job(job).expect("job registered");
}

fn running_allocs(server: &RaftServer, job_id: &str) -> usize {
    let snap = server.store.snapshot();
    snap.allocs().filter(|a| &*a.job.id == job_id && !a.is_terminal()).count()
}

#[test]
fn single_server_commits_through_raft_and_recovers_from_its_data_dir() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = ServerConfig::single("s1", dir.path().to_path_buf());
    config.raft = fast_timings();
    let server = RaftServer::start(config.clone(), Arc::new(SystemClock)).unwrap();
    assert!(server.wait_for_leader(LEADER_TIMEOUT), "a one-server cluster elects itself");
    let mut ids = IdGen::with_seed(7);
    register_work(&server, &mut ids, 4, "web", 8);
    assert!(wait_until(LEADER_TIMEOUT, || running_allocs(&server, "web") == 8), "all 8 placed");
    let index_before = server.store.latest_index();
    server.shutdown();
    drop(server);

    let restarted = RaftServer::start(config, Arc::new(SystemClock)).unwrap();
    assert!(restarted.wait_for_leader(LEADER_TIMEOUT));
    assert!(
        wait_until(LEADER_TIMEOUT, || restarted.store.latest_index() >= index_before),
        "the log is replayed up to where it was"
    );
    let snap = restarted.store.snapshot();
    assert_eq!(snap.node_count(), 4);
    assert_eq!(running_allocs(&restarted, "web"), 8, "every placement survived the restart");
    restarted.shutdown();
}

fn all(servers: &[Option<RaftServer>]) -> Vec<&RaftServer> {
    servers.iter().flatten().collect()
}

fn free_udp_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Server `i` of a three-server cluster at `addrs`, its data in `root/s<i>`.
fn cluster_member(root: &Path, i: usize, addrs: &[String], ca: &DevCa) -> ServerConfig {
    let dir = root.join(format!("s{i}"));
    std::fs::create_dir_all(&dir).unwrap();
    let mut config = ServerConfig::single(&format!("s{i}"), dir.clone());
    config.rpc_bind = addrs[i].parse().unwrap();
    config.bootstrap_expect = 3;
    config.retry_join = addrs.to_vec();
    config.raft = fast_timings();
    config.workers = 2;
    config.tls = Some(cluster_tls(ca, &dir.join("tls")));
    config
}

fn cluster_tls(ca: &DevCa, dir: &Path) -> TlsFiles {
    let tls = ca.issue_node(&[]).unwrap();
    tls.write_pem(dir).unwrap();
    TlsFiles { ca_file: dir.join("ca.pem"), cert_file: dir.join("cert.pem"), key_file: dir.join("key.pem") }
}

#[test]
fn three_servers_form_replicate_forward_and_fail_over() {
    let root = tempfile::tempdir().unwrap();
    let ca = DevCa::generate().unwrap();
    let ports: Vec<u16> = (0..3).map(|_| free_udp_port()).collect();
    let addrs: Vec<String> = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
    let mut servers: Vec<Option<RaftServer>> = Vec::new();
    // Started one after another: each waits for its peers through retry_join.
    let handles: Vec<_> = (0..3)
        .map(|i| {
            let config = cluster_member(root.path(), i, &addrs, &ca);
            std::thread::spawn(move || RaftServer::start(config, Arc::new(SystemClock)).unwrap())
        })
        .collect();
    for h in handles {
        servers.push(Some(h.join().unwrap()));
    }
    for s in all(&servers) {
        assert!(s.wait_for_leader(LEADER_TIMEOUT), "server {} sees a leader", s.name);
    }
    let leader_id = servers[0].as_ref().unwrap().raft.view().leader.unwrap();
    for s in all(&servers) {
        assert_eq!(s.raft.view().leader, Some(leader_id), "one leader for all");
        assert_eq!(s.raft.view().members.values().filter(|(_, voter)| *voter).count(), 3, "three voters");
    }

    // A write sent to a follower is forwarded to the leader and replicated.
    let follower = all(&servers).into_iter().find(|s| s.id != leader_id).unwrap();
    let mut ids = IdGen::with_seed(11);
    register_work(follower, &mut ids, 3, "api", 6);
    for s in all(&servers) {
        assert!(wait_until(LEADER_TIMEOUT, || running_allocs(s, "api") == 6), "server {} has all 6 placements", s.name);
    }

    // Workers run on every server: followers dequeue from the leader's
    // broker and submit plans to it over RPC.
    for j in 0..30 {
        let job = fixtures::job(&format!("many-{j}"), caravan_engine::model::JobType::Service, 1, 100, 128);
        follower.register_job(job).expect("job registered");
    }
    for s in all(&servers) {
        assert!(
            wait_until(LEADER_TIMEOUT, || (0..30).all(|j| running_allocs(s, &format!("many-{j}")) == 1)),
            "server {} sees all 30 jobs placed",
            s.name
        );
    }
    let follower_evals: u64 = all(&servers)
        .iter()
        .filter(|s| s.id != leader_id)
        .flat_map(|s| s.worker_stats.iter())
        .map(|w| w.evals_processed.load(std::sync::atomic::Ordering::Relaxed))
        .sum();
    assert!(follower_evals > 0, "followers' workers scheduled some of the evals");

    // Stop the leader: the other two elect a new one and keep scheduling.
    let leader_pos = servers.iter().position(|s| s.as_ref().is_some_and(|s| s.id == leader_id)).unwrap();
    let old = servers[leader_pos].take().unwrap();
    old.shutdown();
    drop(old);
    let survivors = all(&servers);
    assert!(
        wait_until(LEADER_TIMEOUT, || survivors.iter().any(|s| s.raft.view().is_leader() && s.id != leader_id)),
        "a new leader is elected"
    );
    let new_leader = survivors.iter().find(|s| s.raft.view().is_leader()).unwrap();
    register_work(new_leader, &mut ids, 1, "batch", 2);
    for s in &survivors {
        assert!(wait_until(LEADER_TIMEOUT, || running_allocs(s, "batch") == 2), "scheduling continues on {}", s.name);
        assert_eq!(running_allocs(s, "api"), 6, "nothing acknowledged was lost");
    }
    // A new server pointed at the cluster joins it as a voter and catches up.
    let dir = root.path().join("s3");
    std::fs::create_dir_all(&dir).unwrap();
    let mut config = ServerConfig::single("s3", dir.clone());
    config.rpc_bind = format!("127.0.0.1:{}", free_udp_port()).parse().unwrap();
    config.bootstrap_expect = 3;
    config.retry_join = addrs.clone();
    config.raft = fast_timings();
    config.workers = 1;
    config.tls = Some(cluster_tls(&ca, &dir.join("tls")));
    let joined = RaftServer::start(config, Arc::new(SystemClock)).unwrap();
    assert!(
        wait_until(LEADER_TIMEOUT, || joined.raft.view().members.get(&joined.id).is_some_and(|(_, voter)| *voter)),
        "the new server is a voter"
    );
    assert!(wait_until(LEADER_TIMEOUT, || running_allocs(&joined, "api") == 6 && running_allocs(&joined, "batch") == 2));
    joined.shutdown();
    for s in survivors {
        s.shutdown();
    }
}

/// The worker-behind-raft rule on a server that is still catching up by
/// snapshot: a follower is stopped while the cluster moves past its
/// compacted log, then restarted while evaluations keep coming. Its
/// workers dequeue evals whose state it does not have yet; they wait, or
/// nack and wait for their store, and no evaluation fails for it.
#[test]
fn a_follower_installing_a_snapshot_fails_no_evaluation() {
    const SNAPSHOT_THRESHOLD: u64 = 16;
    let root = tempfile::tempdir().unwrap();
    let ca = DevCa::generate().unwrap();
    let addrs: Vec<String> = (0..3).map(|_| format!("127.0.0.1:{}", free_udp_port())).collect();
    let configs: Vec<ServerConfig> = (0..3)
        .map(|i| {
            let mut config = cluster_member(root.path(), i, &addrs, &ca);
            config.raft.snapshot_threshold = SNAPSHOT_THRESHOLD;
            // Short, so a worker on the catching-up server gives up waiting
            // (and nacks) while the snapshot is still on its way.
            config.worker.raft_sync_limit = Duration::from_millis(100);
            config
        })
        .collect();
    let handles: Vec<_> = configs
        .iter()
        .cloned()
        .map(|config| std::thread::spawn(move || RaftServer::start(config, Arc::new(SystemClock)).unwrap()))
        .collect();
    let mut servers: Vec<Option<RaftServer>> = handles.into_iter().map(|h| Some(h.join().unwrap())).collect();
    for s in all(&servers) {
        assert!(s.wait_for_leader(LEADER_TIMEOUT), "server {} sees a leader", s.name);
    }
    // Seeing a leader is not yet holding a lease: wait for the leader's.
    let mut leader_pos = None;
    assert!(wait_until(LEADER_TIMEOUT, || {
        leader_pos = servers.iter().position(|s| s.as_ref().unwrap().raft.view().is_leader());
        leader_pos.is_some()
    }));
    let leader_pos = leader_pos.unwrap();
    let behind_pos = (leader_pos + 1) % 3;
    let mut ids = IdGen::with_seed(29);
    register_work(servers[leader_pos].as_ref().unwrap(), &mut ids, 4, "base", 4);
    assert!(wait_until(LEADER_TIMEOUT, || all(&servers).iter().all(|s| running_allocs(s, "base") == 4)));

    let stopped = servers[behind_pos].take().unwrap();
    let applied_when_stopped = stopped.raft.view().last_applied;
    stopped.shutdown();
    drop(stopped);
    let leader = servers[leader_pos].as_ref().unwrap();
    let job = |j: usize| fixtures::job(&format!("later-{j}"), caravan_engine::model::JobType::Service, 1, 10, 16);
    let mut registered = 0;
    // Far enough that the leader's log no longer holds what the stopped
    // server lacks (it keeps SNAPSHOT_THRESHOLD entries after a snapshot).
    while leader.raft.view().snapshot_index <= applied_when_stopped + 2 * SNAPSHOT_THRESHOLD {
        leader.register_job(job(registered)).expect("job registered");
        registered += 1;
        assert!(registered < 1_000, "the leader takes a snapshot every {SNAPSHOT_THRESHOLD} entries");
    }

    let restarted = RaftServer::start(configs[behind_pos].clone(), Arc::new(SystemClock)).unwrap();
    for _ in 0..20 {
        leader.register_job(job(registered)).expect("job registered");
        registered += 1;
    }
    let placed = |s: &RaftServer| (0..registered).all(|j| running_allocs(s, &format!("later-{j}")) == 1);
    assert!(wait_until(LEADER_TIMEOUT, || placed(leader) && placed(&restarted)), "every job placed, everywhere");
    let worked: u64 = restarted
        .worker_stats
        .iter()
        .map(|w| {
            w.evals_processed.load(std::sync::atomic::Ordering::Relaxed)
                + w.evals_nacked.load(std::sync::atomic::Ordering::Relaxed)
        })
        .sum();
    let sum =
        |f: fn(&caravan_engine::worker::WorkerStats) -> u64| restarted.worker_stats.iter().map(|w| f(w)).sum::<u64>();
    eprintln!(
        "restarted server: stopped at index {applied_when_stopped}, snapshot index now {}; workers processed {}, \
         sync timeouts {}, nacked {}",
        restarted.raft.view().snapshot_index,
        sum(|w| w.evals_processed.load(std::sync::atomic::Ordering::Relaxed)),
        sum(|w| w.sync_timeouts.load(std::sync::atomic::Ordering::Relaxed)),
        sum(|w| w.evals_nacked.load(std::sync::atomic::Ordering::Relaxed)),
    );
    assert!(worked > 0, "the restarted server's workers took evaluations while catching up");
    let snap = leader.store.snapshot();
    let failed: Vec<_> = snap.evals().filter(|e| e.status == EvalStatus::Failed).collect();
    assert!(failed.is_empty(), "no evaluation failed: {failed:?}");
    restarted.shutdown();
    for s in all(&servers) {
        s.shutdown();
    }
}
