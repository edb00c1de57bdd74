//! The client agents' RPC against in-process servers over real QUIC on
//! loopback: register, pull allocations (blocking), report status, and the
//! leader's heartbeat timers marking a silent node down so its work moves;
//! through a follower of a three-server cluster; and malformed bodies.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use caravan_engine::clock::SystemClock;
use caravan_engine::fixtures;
use caravan_engine::fsm::Command;
use caravan_engine::ids::{AllocId, IdGen, NodeId};
use caravan_engine::model::{
    AllocClientUpdate, ClientStatus, JobType, NodeStatus, TaskEvent, TaskLifecycleState, TaskState,
};
use caravan_engine::plan::Committer;
use caravan_net::http::Server;
use caravan_net::quic::{ClusterTls, DevCa};
use caravan_net::rpc::frame::ErrorCode;
use caravan_net::rpc::{BlockingRpcClient, RpcError};
use caravan_net::server::{
    ALLOC_UPDATE, AllocsReply, AllocsRequest, ClientApiError, NODE_ALLOCS, NODE_HEARTBEAT, NODE_REGISTER, RaftServer,
    RaftTimings, ServerClient, ServerConfig, TlsFiles, decode_client_message, encode_client_message,
};

/// Generous: a 2-core CI machine builds and runs other tests at once.
const TIMEOUT: Duration = Duration::from_secs(30);

/// Short heartbeat settings so a missed heartbeat shows within seconds.
const TEST_TTL: Duration = Duration::from_millis(600);
const TEST_GRACE: Duration = Duration::from_millis(600);

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

fn cluster_tls(ca: &DevCa, dir: &Path) -> TlsFiles {
    let tls = ca.issue_node(&[]).unwrap();
    tls.write_pem(dir).unwrap();
    TlsFiles { ca_file: dir.join("ca.pem"), cert_file: dir.join("cert.pem"), key_file: dir.join("key.pem") }
}

fn config(name: &str, dir: &Path, ca: &DevCa) -> ServerConfig {
    let mut config = ServerConfig::single(name, dir.to_path_buf());
    config.raft = fast_timings();
    config.workers = 2;
    config.tls = Some(cluster_tls(ca, &dir.join("tls")));
    config
}

fn one_server(dir: &Path, ca: &DevCa, ttl: Duration, grace: Duration) -> RaftServer {
    let mut config = config("s1", dir, ca);
    config.min_heartbeat_ttl = ttl;
    config.heartbeat_grace = grace;
    let server = RaftServer::start(config, Arc::new(SystemClock)).unwrap();
    assert!(server.wait_for_leader(TIMEOUT), "a one-server cluster elects itself");
    // Duties (and heartbeat timers) are taken up just after the election.
    assert!(wait_until(TIMEOUT, || server.duties.is_active()), "leader duties taken up");
    server
}

fn client_tls(ca: &DevCa) -> ClusterTls {
    ca.issue_node(&[]).unwrap()
}

fn node_status(server: &RaftServer, id: NodeId) -> Option<NodeStatus> {
    server.store.snapshot().node(id).map(|n| n.status)
}

fn running_task(now_ns: i64) -> TaskState {
    let mut state = TaskState::pending();
    state.state = TaskLifecycleState::Running;
    state.started_at_ns = now_ns;
    state.events.push(TaskEvent::new("Started", now_ns, "Task started by client"));
    state
}

#[test]
fn a_client_registers_pulls_its_allocations_and_reports_status() {
    let dir = tempfile::tempdir().unwrap();
    let ca = DevCa::generate().unwrap();
    let server = one_server(dir.path(), &ca, Duration::from_secs(10), Duration::from_secs(10));
    let client = ServerClient::new(vec![server.rpc_addr], &client_tls(&ca)).unwrap();
    let mut ids = IdGen::with_seed(21);
    let mut node = fixtures::node(&mut ids, "client-1", "dc1", 4000, 8192);
    node.status = NodeStatus::Initializing;

    let ttl = client.register_node(&node).unwrap();
    assert!(ttl >= Duration::from_secs(10) && ttl < Duration::from_secs(20), "min TTL plus jitter: {ttl:?}");
    assert_eq!(node_status(&server, node.id), Some(NodeStatus::Ready), "a registered node is ready");
    // Re-registering (an agent restart) keeps it ready and answers a TTL.
    assert!(client.register_node(&node).unwrap() >= Duration::from_secs(10));
    assert!(client.heartbeat(node.id).unwrap() >= Duration::from_secs(10));

    // Nothing placed yet: an immediate answer with no allocations.
    let (allocs, index0) = client.node_allocs(node.id, 0, Duration::ZERO).unwrap();
    assert!(allocs.is_empty());

    server.register_job(fixtures::job("web", JobType::Service, 1, 100, 128)).unwrap();
    assert!(
        wait_until(TIMEOUT, || client.node_allocs(node.id, 0, Duration::ZERO).unwrap().0.len() == 1),
        "the placement reaches the node"
    );
    let (allocs, index1) = client.node_allocs(node.id, index0, Duration::from_secs(5)).unwrap();
    assert!(index1 > index0, "the index moved past the caller's");
    assert_eq!(allocs.len(), 1);
    assert_eq!(&*allocs[0].job.id, "web", "each allocation carries its job");
    assert_eq!(allocs[0].node_id, node.id);
    assert_eq!(allocs[0].desired_status.as_str(), "run");

    // A parked query wakes when a new allocation is placed on the node.
    let parked = {
        let client = Arc::new(client);
        let waiter = client.clone();
        let node_id = node.id;
        let handle = std::thread::spawn(move || {
            let started = Instant::now();
            let answer = waiter.node_allocs(node_id, index1, Duration::from_secs(60));
            (answer, started.elapsed())
        });
        std::thread::sleep(Duration::from_millis(300));
        assert!(!handle.is_finished(), "nothing changed: the query is parked");
        server.register_job(fixtures::job("api", JobType::Service, 1, 100, 128)).unwrap();
        let (answer, waited) = handle.join().unwrap();
        let (allocs, index2) = answer.unwrap();
        assert!(waited < Duration::from_secs(30), "woken by the placement, not the wait: {waited:?}");
        assert!(index2 > index1);
        let mut jobs: Vec<String> = allocs.iter().map(|a| a.job.id.to_string()).collect();
        jobs.sort();
        assert_eq!(jobs, ["api", "web"]);
        (Arc::try_unwrap(client).unwrap(), allocs)
    };
    let (client, allocs) = parked;

    // Status reports land in the state, task states included.
    let now = caravan_engine::clock::Clock::now_ns(&SystemClock);
    let updates: Vec<AllocClientUpdate> = allocs
        .iter()
        .map(|a| AllocClientUpdate {
            alloc_id: a.id,
            client_status: ClientStatus::Running,
            client_description: "Tasks are running".into(),
            at_ns: now,
            task_states: BTreeMap::from([(a.group().tasks[0].name.clone(), running_task(now))]),
            deployment_health: None,
        })
        .collect();
    let index = client.update_allocs(updates).unwrap();
    assert!(index > 0);
    let snap = server.store.snapshot();
    for a in &allocs {
        let stored = snap.alloc(a.id).unwrap();
        assert_eq!(stored.client_status, ClientStatus::Running);
        let task = stored.task_states.values().next().expect("task state stored");
        assert_eq!(task.state, TaskLifecycleState::Running);
        assert_eq!(&*task.events[0].kind, "Started");
    }
    // Concurrent reports from several threads are all applied.
    std::thread::scope(|scope| {
        for a in &allocs {
            let client = &client;
            scope.spawn(move || {
                let mut done = running_task(now);
                done.state = TaskLifecycleState::Dead;
                done.finished_at_ns = now + 1;
                let update = AllocClientUpdate {
                    alloc_id: a.id,
                    client_status: ClientStatus::Complete,
                    client_description: "All tasks have completed".into(),
                    at_ns: now + 1,
                    task_states: BTreeMap::from([(a.group().tasks[0].name.clone(), done)]),
                    deployment_health: None,
                };
                client.update_allocs(vec![update]).unwrap();
            });
        }
    });
    let snap = server.store.snapshot();
    for a in &allocs {
        let stored = snap.alloc(a.id).unwrap();
        assert_eq!(stored.client_status, ClientStatus::Complete);
        assert_eq!(stored.task_states.values().next().unwrap().state, TaskLifecycleState::Dead);
    }

    // An unknown node must register first.
    let stranger = IdGen::with_seed(99).node();
    assert!(matches!(client.heartbeat(stranger), Err(ClientApiError::NodeNotFound(_))));
    server.shutdown();
}

#[test]
fn allocation_queries_send_only_what_changed_since_the_callers_copy() {
    let dir = tempfile::tempdir().unwrap();
    let ca = DevCa::generate().unwrap();
    let server = one_server(dir.path(), &ca, Duration::from_secs(10), Duration::from_secs(10));
    let client = ServerClient::new(vec![server.rpc_addr], &client_tls(&ca)).unwrap();
    let raw = BlockingRpcClient::start("127.0.0.1:0".parse().unwrap(), &client_tls(&ca)).unwrap();
    let mut ids = IdGen::with_seed(23);
    let node = fixtures::node(&mut ids, "delta-1", "dc1", 4000, 8192);
    client.register_node(&node).unwrap();
    server.register_job(fixtures::job("three", JobType::Service, 3, 100, 128)).unwrap();
    assert!(wait_until(TIMEOUT, || client.node_allocs(node.id, 0, Duration::ZERO).unwrap().0.len() == 3));
    let ask = |min_index: u64, known_index: u64| -> AllocsReply {
        let request = AllocsRequest { node_id: node.id, min_index, known_index, wait_ms: 0 };
        let reply = raw.call(server.rpc_addr, NODE_ALLOCS, encode_client_message(&request).unwrap(), TIMEOUT);
        decode_client_message(&reply.unwrap()).unwrap()
    };
    let full = ask(0, 0);
    assert_eq!(full.changed.len(), 3, "knowing nothing, every allocation comes in full");
    assert!(full.unchanged.is_none(), "nothing to keep");
    let same = ask(0, full.index);
    assert!(same.changed.is_empty(), "nothing changed since the caller's copy");
    assert!(same.unchanged.is_none(), "and nothing was removed: the caller keeps its copy, no ids travel");
    assert_eq!(same.index, full.index);

    // The node's own status report is not echoed back: its query does not
    // wake for it and nothing travels (the client knows what it reported).
    let now = caravan_engine::clock::Clock::now_ns(&SystemClock);
    let target = full.changed[1].id;
    let update = AllocClientUpdate {
        alloc_id: target,
        client_status: ClientStatus::Running,
        client_description: "Tasks are running".into(),
        at_ns: now,
        task_states: BTreeMap::new(),
        deployment_health: None,
    };
    client.update_allocs(vec![update]).unwrap();
    let echo = ask(full.index, full.index);
    assert_eq!(echo.index, full.index, "a client report does not move the node's index");
    assert!(echo.changed.is_empty());
    assert_eq!(ask(0, 0).changed.iter().find(|a| a.id == target).unwrap().client_status, ClientStatus::Running);

    // A change by the servers (another job's allocation) travels alone.
    server.register_job(fixtures::job("one", JobType::Service, 1, 100, 128)).unwrap();
    assert!(wait_until(TIMEOUT, || ask(0, 0).changed.len() == 4), "the fourth allocation is placed");
    let delta = ask(full.index, full.index);
    assert!(delta.index > full.index, "the node's index moved with the placement");
    assert_eq!(delta.changed.len(), 1, "only the new allocation comes in full");
    assert!(full.changed.iter().all(|a| a.id != delta.changed[0].id));
    assert!(delta.unchanged.is_none());
    // The agent's client merges deltas into the whole list.
    let (merged, merged_index) = client.node_allocs(node.id, 0, Duration::ZERO).unwrap();
    assert_eq!(merged.len(), 4);

    // A removal (garbage collection) lists, by id, what the caller keeps;
    // the agent's client drops the rest.
    let gone = full.changed[0].id;
    let reaped_at = server.committer.commit(Command::EvalReap { evals: vec![], allocs: vec![gone] }).unwrap();
    let after = ask(0, delta.index);
    assert_eq!(after.index, reaped_at);
    assert!(after.changed.is_empty());
    let mut kept = after.unchanged.expect("a removal since the caller's copy lists what it keeps");
    kept.sort();
    let mut want: Vec<AllocId> = merged.iter().map(|a| a.id).filter(|id| *id != gone).collect();
    want.sort();
    assert_eq!(kept, want);
    assert!(ask(0, reaped_at).unchanged.is_none(), "a copy taken after the removal keeps all");
    let (merged, _) = client.node_allocs(node.id, merged_index, Duration::ZERO).unwrap();
    assert_eq!(merged.len(), 3);
    assert!(merged.iter().all(|a| a.id != gone));
    server.shutdown();
}

#[test]
fn malformed_bodies_get_errors_and_the_server_keeps_serving() {
    let dir = tempfile::tempdir().unwrap();
    let ca = DevCa::generate().unwrap();
    let server = one_server(dir.path(), &ca, Duration::from_secs(10), Duration::from_secs(10));
    let raw = BlockingRpcClient::start("127.0.0.1:0".parse().unwrap(), &client_tls(&ca)).unwrap();
    let garbage: [&[u8]; 4] = [b"", b"CVCL", b"CVCL\x01\xff\xff\xff\xff\xff\xff\xff\xff", &[0xAB; 300]];
    for method in [NODE_REGISTER, NODE_HEARTBEAT, NODE_ALLOCS, ALLOC_UPDATE] {
        for body in garbage {
            match raw.call(server.rpc_addr, method, body.to_vec(), Duration::from_secs(10)) {
                Err(RpcError::Remote(e)) => assert_eq!(e.code, ErrorCode::BAD_FRAME, "method {method}: {}", e.message),
                other => panic!("method {method} with {body:?}: expected BAD_FRAME, got {other:?}"),
            }
        }
    }
    // Still serving.
    let client = ServerClient::new(vec![server.rpc_addr], &client_tls(&ca)).unwrap();
    let node = fixtures::node(&mut IdGen::with_seed(5), "after-garbage", "dc1", 1000, 1024);
    assert!(client.register_node(&node).is_ok());
    // A node that fails validation is refused, not retried forever.
    let bad = fixtures::node(&mut IdGen::with_seed(6), "", "dc1", 1000, 1024);
    assert!(matches!(client.register_node(&bad), Err(ClientApiError::Refused { .. })), "empty name refused");
    server.shutdown();
}

/// Heartbeat `nodes` every `every` until `stop`; `mute` silences the first.
fn heartbeat_loop(
    client: Arc<ServerClient>,
    nodes: Vec<NodeId>,
    every: Duration,
    mute_first: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        while !stop.load(Ordering::Acquire) {
            for (i, node) in nodes.iter().enumerate() {
                if i == 0 && mute_first.load(Ordering::Acquire) {
                    continue;
                }
                let _ = client.heartbeat(*node);
            }
            std::thread::sleep(every);
        }
    })
}

#[test]
fn a_node_that_stops_heartbeating_is_marked_down_and_its_work_moves() {
    let dir = tempfile::tempdir().unwrap();
    let ca = DevCa::generate().unwrap();
    let server = one_server(dir.path(), &ca, TEST_TTL, TEST_GRACE);
    let client = Arc::new(ServerClient::new(vec![server.rpc_addr], &client_tls(&ca)).unwrap());
    let mut ids = IdGen::with_seed(31);
    let doomed = fixtures::node(&mut ids, "doomed", "dc1", 4000, 8192);
    let survivor = fixtures::node(&mut ids, "survivor", "dc1", 4000, 8192);
    let ttl = client.register_node(&doomed).unwrap();
    assert!(ttl >= TEST_TTL && ttl < 2 * TEST_TTL, "configured TTL plus jitter: {ttl:?}");
    let (mute, stop) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicBool::new(false)));
    let beats = heartbeat_loop(client.clone(), vec![doomed.id, survivor.id], TEST_TTL / 4, mute.clone(), stop.clone());

    // The service lands on the only node there is.
    server.register_job(fixtures::job("svc", JobType::Service, 1, 100, 128)).unwrap();
    let on_doomed = || client.node_allocs(doomed.id, 0, Duration::ZERO).unwrap().0;
    assert!(wait_until(TIMEOUT, || on_doomed().len() == 1), "placed on the doomed node");
    let first = on_doomed()[0].id;
    client.register_node(&survivor).unwrap();
    // Heartbeats keep both nodes ready well past TTL + grace.
    std::thread::sleep(3 * (TEST_TTL + TEST_GRACE));
    assert_eq!(node_status(&server, doomed.id), Some(NodeStatus::Ready), "heartbeats keep it ready");

    mute.store(true, Ordering::Release);
    let silenced = Instant::now();
    assert!(
        wait_until(TIMEOUT, || node_status(&server, doomed.id) == Some(NodeStatus::Down)),
        "a silent node is marked down"
    );
    // TTL (at most 2×) + grace, with slack for a loaded machine.
    assert!(silenced.elapsed() < 2 * TEST_TTL + TEST_GRACE + Duration::from_secs(10), "{:?}", silenced.elapsed());
    assert_eq!(node_status(&server, survivor.id), Some(NodeStatus::Ready), "the heartbeating node is not");
    assert!(
        wait_until(TIMEOUT, || {
            let allocs = client.node_allocs(survivor.id, 0, Duration::ZERO).unwrap().0;
            allocs.iter().any(|a| &*a.job.id == "svc" && !a.is_terminal())
        }),
        "the service is rescheduled onto the surviving node"
    );
    let snap = server.store.snapshot();
    let lost = snap.alloc(first).unwrap();
    assert!(lost.is_terminal() || lost.client_status == ClientStatus::Lost, "the old allocation is stopped: {lost:?}");

    // The node comes back: a heartbeat marks it ready again.
    mute.store(false, Ordering::Release);
    assert!(
        wait_until(TIMEOUT, || node_status(&server, doomed.id) == Some(NodeStatus::Ready)),
        "a heartbeat after down marks the node ready"
    );
    stop.store(true, Ordering::Release);
    beats.join().unwrap();
    server.shutdown();
}

fn free_udp_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

#[test]
fn clients_talking_to_a_follower_reach_the_leader() {
    let root = tempfile::tempdir().unwrap();
    let ca = DevCa::generate().unwrap();
    let addrs: Vec<String> = (0..3).map(|_| format!("127.0.0.1:{}", free_udp_port())).collect();
    let handles: Vec<_> = (0..3)
        .map(|i| {
            let dir = root.path().join(format!("s{i}"));
            std::fs::create_dir_all(&dir).unwrap();
            let mut config = config(&format!("s{i}"), &dir, &ca);
            config.rpc_bind = addrs[i].parse().unwrap();
            config.bootstrap_expect = 3;
            config.retry_join = addrs.clone();
            config.min_heartbeat_ttl = TEST_TTL;
            config.heartbeat_grace = TEST_GRACE;
            std::thread::spawn(move || RaftServer::start(config, Arc::new(SystemClock)).unwrap())
        })
        .collect();
    let servers: Vec<RaftServer> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    for s in &servers {
        assert!(s.wait_for_leader(TIMEOUT), "server {} sees a leader", s.name);
    }
    let leader_id = servers[0].raft.view().leader.unwrap();
    let leader = servers.iter().find(|s| s.id == leader_id).unwrap();
    let follower = servers.iter().find(|s| s.id != leader_id).unwrap();
    assert!(wait_until(TIMEOUT, || leader.duties.is_active()));

    // Register and heartbeat through the follower: NOT_LEADER re-targets.
    let client = Arc::new(ServerClient::new(vec![follower.rpc_addr], &client_tls(&ca)).unwrap());
    let mut ids = IdGen::with_seed(41);
    let node = fixtures::node(&mut ids, "far", "dc1", 4000, 8192);
    client.register_node(&node).unwrap();
    assert_eq!(client.current_server(), leader.rpc_addr, "re-targeted to the leader");
    let stop = Arc::new(AtomicBool::new(false));
    let beats =
        heartbeat_loop(client.clone(), vec![node.id], TEST_TTL / 4, Arc::new(AtomicBool::new(false)), stop.clone());

    // Reads and status reports are served by the follower itself.
    let reader = ServerClient::new(vec![follower.rpc_addr], &client_tls(&ca)).unwrap();
    leader.register_job(fixtures::job("spread", JobType::Service, 1, 100, 128)).unwrap();
    assert!(
        wait_until(TIMEOUT, || reader.node_allocs(node.id, 0, Duration::ZERO).unwrap().0.len() == 1),
        "the follower serves the placement from its own state"
    );
    let alloc = reader.node_allocs(node.id, 0, Duration::ZERO).unwrap().0.remove(0);
    reader
        .update_allocs(vec![AllocClientUpdate {
            alloc_id: alloc.id,
            client_status: ClientStatus::Running,
            client_description: "".into(),
            at_ns: 1,
            task_states: BTreeMap::new(),
            deployment_health: None,
        }])
        .unwrap();
    assert_eq!(reader.current_server(), follower.rpc_addr, "reads and reports stay on the follower");
    assert!(
        wait_until(TIMEOUT, || leader.store.snapshot().alloc(alloc.id).unwrap().client_status == ClientStatus::Running),
        "the follower forwarded the report to the leader"
    );
    // Kept alive across many TTLs by heartbeats that went via the follower.
    std::thread::sleep(3 * (TEST_TTL + TEST_GRACE));
    for s in &servers {
        assert_eq!(node_status(s, node.id), Some(NodeStatus::Ready), "ready on {}", s.name);
    }
    stop.store(true, Ordering::Release);
    beats.join().unwrap();
    for s in &servers {
        s.shutdown();
    }
}
