//! One fleet thread: a compio runtime with a task per simulated node (its
//! registration, allocation watch and heartbeats) and one ticker that sends
//! each node's batched status reports.

use std::cell::RefCell;
use std::collections::HashSet;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use caravan_engine::ids::AllocId;
use caravan_engine::model::{AllocClientUpdate, ClientStatus, DesiredStatus, Node};
use caravan_net::rpc::RpcClient;
use caravan_net::server::{
    ALLOC_UPDATE, AllocUpdateRequest, AllocsReply, AllocsRequest, HeartbeatRequest, NODE_ALLOCS, NODE_HEARTBEAT,
    NODE_REGISTER, RegisterRequest, TtlReply, decode_client_message, encode_client_message,
};

use super::rpc::{CallError, Servers, call};
use super::{FleetConfig, FleetShared};

/// Pause after a failed call before a node's loop tries again.
const RETRY_PAUSE: Duration = Duration::from_millis(500);

/// Slack on top of a blocking query's wait for the call's timeout.
const ALLOCS_CALL_SLACK: Duration = Duration::from_secs(10);

/// A register, heartbeat or status report's time limit (the agent's).
const CALL_TIMEOUT: Duration = Duration::from_secs(20);

/// How often the thread's main loop looks at the stop flag.
const STOP_POLL: Duration = Duration::from_millis(100);

/// A running report waiting for its node's next batch.
struct Report {
    node: usize,
    global: usize,
    due: Instant,
    alloc: AllocId,
    job: Arc<str>,
}

/// What a thread's tasks share.
struct Thread {
    shared: Arc<FleetShared>,
    servers: Servers,
    config: FleetConfig,
    reports: RefCell<Vec<Report>>,
    /// Each local node's connection, by local index.
    clients: RefCell<Vec<Rc<RpcClient>>>,
}

/// Run `nodes` (with their fleet-wide index) until the fleet stops.
pub(super) fn run_thread(nodes: Vec<(usize, Node)>, config: &FleetConfig, shared: Arc<FleetShared>) {
    let runtime = match compio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("fleet thread: cannot start a runtime: {e}");
            return;
        }
    };
    runtime.block_on(async move {
        let thread = Rc::new(Thread {
            shared: shared.clone(),
            servers: Servers::new(config.servers.clone()),
            config: config.clone(),
            reports: RefCell::new(Vec::new()),
            clients: RefCell::new(Vec::new()),
        });
        let mut client = None;
        for (local, (global, node)) in nodes.into_iter().enumerate() {
            if local % super::NODES_PER_CONNECTION == 0 {
                match RpcClient::bind(SocketAddr::from(([0, 0, 0, 0], 0)), &config.tls).await {
                    Ok(c) => client = Some(Rc::new(c)),
                    Err(e) => {
                        eprintln!("fleet thread: cannot open an RPC endpoint: {e}");
                        return;
                    }
                }
            }
            let client = client.clone().expect("bound above");
            thread.clients.borrow_mut().push(client.clone());
            compio::runtime::spawn(node_main(thread.clone(), client, local, global, node)).detach();
        }
        compio::runtime::spawn(report_ticker(thread.clone())).detach();
        while !shared.stopping() {
            compio::time::sleep(STOP_POLL).await;
        }
    });
}

async fn register(thread: &Thread, client: &Rc<RpcClient>, node: &Node) -> Option<Duration> {
    let body = encode_client_message(&RegisterRequest { node: node.clone() }).ok()?;
    while !thread.shared.stopping() {
        match call(client, &thread.servers, NODE_REGISTER, body.clone(), CALL_TIMEOUT).await {
            Ok(reply) => match decode_client_message::<TtlReply>(&reply) {
                Ok(ttl) => return Some(Duration::from_millis(ttl.ttl_ms)),
                Err(_) => thread.shared.rpc_errors.fetch_add(1, Ordering::Relaxed),
            },
            Err(_) => thread.shared.rpc_errors.fetch_add(1, Ordering::Relaxed),
        };
        compio::time::sleep(RETRY_PAUSE).await;
    }
    None
}

/// One node: register, heartbeat in the background, watch allocations.
async fn node_main(thread: Rc<Thread>, client: Rc<RpcClient>, local: usize, global: usize, node: Node) {
    let Some(ttl) = register(&thread, &client, &node).await else { return };
    thread.shared.registered.fetch_add(1, Ordering::Relaxed);
    compio::runtime::spawn(heartbeats(thread.clone(), client.clone(), global, node.clone(), ttl)).detach();
    let mut index = 0;
    let mut seen: HashSet<AllocId> = HashSet::new();
    let wait_ms = u64::try_from(thread.config.allocs_wait.as_millis()).unwrap_or(u64::MAX);
    while thread.shared.alive(global) {
        let request = AllocsRequest { node_id: node.id, min_index: index, known_index: index, wait_ms };
        let Ok(body) = encode_client_message(&request) else { return };
        let timeout = thread.config.allocs_wait + ALLOCS_CALL_SLACK;
        let reply = match call(&client, &thread.servers, NODE_ALLOCS, body, timeout).await {
            Ok(bytes) => decode_client_message::<AllocsReply>(&bytes).map_err(|_| CallError::Failed),
            Err(e) => Err(e),
        };
        let reply = match reply {
            Ok(reply) => reply,
            Err(CallError::NodeNotFound) => {
                if register(&thread, &client, &node).await.is_some() {
                    thread.shared.reregistered.fetch_add(1, Ordering::Relaxed);
                }
                continue;
            }
            Err(CallError::Failed) => {
                thread.shared.rpc_errors.fetch_add(1, Ordering::Relaxed);
                compio::time::sleep(RETRY_PAUSE).await;
                continue;
            }
        };
        if !thread.shared.alive(global) {
            return;
        }
        let now = Instant::now();
        let due = now + thread.config.running_delay;
        let mut new_by_job: Vec<(Arc<str>, u32)> = Vec::new();
        {
            let mut reports = thread.reports.borrow_mut();
            for alloc in &reply.changed {
                let wanted = alloc.desired_status == DesiredStatus::Run && alloc.client_status == ClientStatus::Pending;
                if !wanted || !seen.insert(alloc.id) {
                    continue;
                }
                let job: Arc<str> = alloc.job.id.clone();
                match new_by_job.last_mut() {
                    Some((last, count)) if *last == job => *count += 1,
                    _ => new_by_job.push((job.clone(), 1)),
                }
                reports.push(Report { node: local, global, due, alloc: alloc.id, job });
            }
        }
        let mut received = 0;
        for (job, count) in &new_by_job {
            thread.shared.saw(job, *count);
            received += count;
        }
        thread.shared.node_allocs[global].fetch_add(received, Ordering::Relaxed);
        index = reply.index;
    }
}

/// Heartbeat within the TTL (at a random point of its second and third
/// quarter, so ten thousand nodes do not beat in step).
async fn heartbeats(thread: Rc<Thread>, client: Rc<RpcClient>, global: usize, node: Node, mut ttl: Duration) {
    let Ok(body) = encode_client_message(&HeartbeatRequest { node_id: node.id }) else { return };
    while thread.shared.alive(global) {
        let pause = ttl.mul_f64(0.5 + fastrand::f64() * 0.25);
        sleep_while_alive(&thread, global, pause).await;
        if !thread.shared.alive(global) {
            return;
        }
        match call(&client, &thread.servers, NODE_HEARTBEAT, body.clone(), CALL_TIMEOUT).await {
            Ok(reply) => {
                if let Ok(reply) = decode_client_message::<TtlReply>(&reply) {
                    ttl = Duration::from_millis(reply.ttl_ms);
                }
                thread.shared.heartbeats.fetch_add(1, Ordering::Relaxed);
            }
            Err(CallError::NodeNotFound) => {
                if let Some(new_ttl) = register(&thread, &client, &node).await {
                    ttl = new_ttl;
                    thread.shared.reregistered.fetch_add(1, Ordering::Relaxed);
                }
            }
            Err(CallError::Failed) => {
                thread.shared.rpc_errors.fetch_add(1, Ordering::Relaxed);
                ttl = ttl.min(RETRY_PAUSE * 4);
            }
        }
    }
}

async fn sleep_while_alive(thread: &Thread, global: usize, pause: Duration) {
    let until = Instant::now() + pause;
    while thread.shared.alive(global) {
        let now = Instant::now();
        if now >= until {
            return;
        }
        compio::time::sleep((until - now).min(STOP_POLL * 10)).await;
    }
}

/// Every `update_interval`, each node with due reports sends them in one
/// request, as an agent's batched status sync does.
async fn report_ticker(thread: Rc<Thread>) {
    while !thread.shared.stopping() {
        compio::time::sleep(thread.config.update_interval).await;
        let now = Instant::now();
        let mut due: Vec<Report> = {
            let mut reports = thread.reports.borrow_mut();
            // A failed node's reports die with it.
            reports.retain(|r| thread.shared.alive(r.global));
            let (ready, later): (Vec<Report>, Vec<Report>) = reports.drain(..).partition(|r| r.due <= now);
            *reports = later;
            ready
        };
        due.sort_by_key(|r| r.node);
        let mut batches: Vec<Vec<Report>> = Vec::new();
        for report in due {
            match batches.last_mut() {
                Some(batch) if batch[0].node == report.node => batch.push(report),
                _ => batches.push(vec![report]),
            }
        }
        for batch in batches {
            compio::runtime::spawn(send_reports(thread.clone(), batch)).detach();
        }
    }
}

async fn send_reports(thread: Rc<Thread>, batch: Vec<Report>) {
    let client = thread.clients.borrow()[batch[0].node].clone();
    let at_ns = caravan_engine::clock::Clock::now_ns(&caravan_engine::clock::SystemClock);
    let updates: Vec<AllocClientUpdate> = batch
        .iter()
        .map(|r| AllocClientUpdate {
            alloc_id: r.alloc,
            client_status: ClientStatus::Running,
            client_description: "Tasks are running".into(),
            at_ns,
            task_states: Default::default(),
            deployment_health: None,
        })
        .collect();
    let sent = match encode_client_message(&AllocUpdateRequest { updates }) {
        Ok(body) => call(&client, &thread.servers, ALLOC_UPDATE, body, CALL_TIMEOUT).await.is_ok(),
        Err(_) => false,
    };
    if !sent {
        thread.shared.rpc_errors.fetch_add(1, Ordering::Relaxed);
        // Try again with the node's next batch after a pause.
        let later = Instant::now() + RETRY_PAUSE;
        let mut reports = thread.reports.borrow_mut();
        reports.extend(batch.into_iter().map(|r| Report { due: later, ..r }));
        return;
    }
    let mut by_job: Vec<(Arc<str>, u32)> = Vec::new();
    for report in &batch {
        match by_job.iter_mut().find(|(job, _)| *job == report.job) {
            Some((_, count)) => *count += 1,
            None => by_job.push((report.job.clone(), 1)),
        }
    }
    thread.shared.ran(&by_job);
}
