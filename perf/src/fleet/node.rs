//! One fleet thread: a compio runtime with a task per simulated node (its
//! registration, allocation watch and heartbeats) and one ticker that sends
//! each node's batched status reports.
//!
//! A node reports each new allocation `running` after the fleet's running
//! delay and, when the allocation belongs to a deployment whose group's
//! update strategy lets the client decide, `healthy` once it has been
//! running for the strategy's `min_healthy_time` (an agent's
//! `health_check = "task_states"` with tasks that never fail; unhealthy
//! only if `healthy_deadline` comes first). Both go out in the node's next
//! batch, merged into one update when due together, as an agent's are.

use std::cell::RefCell;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use caravan_engine::health_policy::HealthPolicy;
use caravan_engine::ids::{AllocId, DeploymentId};
use caravan_engine::model::{AllocClientUpdate, AllocHealthReport, Allocation, ClientStatus, DesiredStatus, Node};
use caravan_net::rpc::RpcClient;
use caravan_net::server::{
    ALLOC_UPDATE, AllocUpdateRequest, AllocsReply, AllocsRequest, HeartbeatRequest, NODE_ALLOCS, NODE_HEARTBEAT,
    NODE_REGISTER, RegisterRequest, TtlReply, decode_client_message, encode_client_message,
};

use super::due_queue::DueQueue;
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

/// A report waiting for its node's next batch.
struct Report {
    node: usize,
    global: usize,
    alloc: AllocId,
    job: Arc<str>,
    kind: ReportKind,
}

/// What a report says about its allocation (always `running` on the client).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ReportKind {
    /// The allocation's tasks started: counted in `allocs_running`.
    Running,
    /// Its deployment health was decided.
    Health { deployment_id: DeploymentId, healthy: bool },
}

/// When a node decides an allocation's deployment health, as an agent
/// does (the engine's `HealthPolicy`, which the agent applies to real task
/// states): `None` when the client does not decide it; otherwise the
/// deployment, the verdict, and how long after `since` (tasks running) it
/// comes. Simulated tasks never fail.
fn health_decision(alloc: &Allocation) -> Option<(DeploymentId, bool, Duration)> {
    let policy = HealthPolicy::of(alloc)?;
    let deployment_id = alloc.deployment_id?;
    let (healthy, after_ns) = policy.verdict_if_tasks_never_fail();
    Some((deployment_id, healthy, Duration::from_nanos(u64::try_from(after_ns).unwrap_or(0))))
}

/// What a thread's tasks share.
struct Thread {
    shared: Arc<FleetShared>,
    servers: Servers,
    config: FleetConfig,
    reports: RefCell<DueQueue<Report>>,
    /// Whether each local node has a status report call in flight: as an
    /// agent, a node sends its next batch only once the last is answered.
    /// Without this a slow server would see a node's calls pile up, one per
    /// tick, until they fill the connection's streams and hold up every
    /// other call on it, heartbeats included.
    sending: RefCell<Vec<bool>>,
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
            reports: RefCell::new(DueQueue::default()),
            sending: RefCell::new(Vec::new()),
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
            thread.sending.borrow_mut().push(false);
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
    // Allocations this node runs, with the deployment whose health it
    // tracks for each (as an agent's alloc runner does).
    let mut known: HashMap<AllocId, Option<DeploymentId>> = HashMap::new();
    let wait_ms = u64::try_from(thread.config.allocs_wait.as_millis()).unwrap_or(u64::MAX);
    while thread.shared.alive(global) {
        let request = AllocsRequest { node_id: node.id, min_index: index, known_index: index, wait_ms };
        let Ok(body) = encode_client_message(&request) else { return };
        let timeout = thread.config.allocs_wait + ALLOCS_CALL_SLACK;
        let reply = match call(&client, &thread.servers, NODE_ALLOCS, body, timeout).await {
            Ok(bytes) => {
                thread.shared.allocs_replies.fetch_add(1, Ordering::Relaxed);
                thread.shared.allocs_reply_bytes.fetch_add(bytes.len() as u64, Ordering::Relaxed);
                decode_client_message::<AllocsReply>(&bytes).map_err(|_| CallError::Failed)
            }
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
        let running_due = now + thread.config.running_delay;
        let mut new_by_job: Vec<(Arc<str>, u32)> = Vec::new();
        {
            let mut reports = thread.reports.borrow_mut();
            for alloc in &reply.changed {
                if alloc.desired_status != DesiredStatus::Run {
                    continue;
                }
                let job: Arc<str> = alloc.job.id.clone();
                // Health is tracked from when the tasks run: a new
                // allocation's running report, or now for one already
                // running that joined another deployment.
                let since = match known.get(&alloc.id) {
                    None if alloc.client_status == ClientStatus::Pending => {
                        match new_by_job.last_mut() {
                            Some((last, count)) if *last == job => *count += 1,
                            _ => new_by_job.push((job.clone(), 1)),
                        }
                        reports.push(
                            running_due,
                            Report {
                                node: local,
                                global,
                                alloc: alloc.id,
                                job: job.clone(),
                                kind: ReportKind::Running,
                            },
                        );
                        running_due
                    }
                    None => continue,
                    Some(tracked) if *tracked == alloc.deployment_id => continue,
                    Some(_) => now,
                };
                known.insert(alloc.id, alloc.deployment_id);
                if let Some((deployment_id, healthy, after)) = health_decision(alloc) {
                    let kind = ReportKind::Health { deployment_id, healthy };
                    reports.push(since + after, Report { node: local, global, alloc: alloc.id, job, kind });
                }
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
        let planned = Instant::now() + pause;
        sleep_while_alive(&thread, global, pause).await;
        if !thread.shared.alive(global) {
            return;
        }
        let sent = Instant::now();
        thread
            .shared
            .heartbeat_late_ms_max
            .fetch_max(millis(sent.saturating_duration_since(planned)), Ordering::Relaxed);
        let answer = call(&client, &thread.servers, NODE_HEARTBEAT, body.clone(), CALL_TIMEOUT).await;
        thread.shared.heartbeat_rtt_ms_max.fetch_max(millis(sent.elapsed()), Ordering::Relaxed);
        match answer {
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

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
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
        let mut due: Vec<Report> = Vec::new();
        {
            let mut reports = thread.reports.borrow_mut();
            let sending = thread.sending.borrow();
            // A node with a batch in flight sends these with its next one.
            let mut held = Vec::new();
            for (at, report) in reports.take_due(now) {
                if !thread.shared.alive(report.global) {
                    // A failed node's reports die with it.
                } else if sending[report.node] {
                    held.push((at, report));
                } else {
                    due.push(report);
                }
            }
            for (at, report) in held {
                reports.push(at, report);
            }
        }
        due.sort_by_key(|r| r.node);
        let mut batches: Vec<Vec<Report>> = Vec::new();
        for report in due {
            match batches.last_mut() {
                Some(batch) if batch[0].node == report.node => batch.push(report),
                _ => batches.push(vec![report]),
            }
        }
        for batch in batches {
            thread.sending.borrow_mut()[batch[0].node] = true;
            compio::runtime::spawn(send_reports(thread.clone(), batch)).detach();
        }
    }
}

/// One node's due reports as one request: an update per allocation, its
/// running report and health decision merged when both are due.
fn updates_of(batch: &mut [Report], at_ns: i64) -> Vec<AllocClientUpdate> {
    // Stable: an allocation's running report stays ahead of its health.
    batch.sort_by_key(|r| r.alloc);
    let mut updates: Vec<AllocClientUpdate> = Vec::with_capacity(batch.len());
    for report in batch.iter() {
        let health = match report.kind {
            ReportKind::Running => None,
            ReportKind::Health { deployment_id, healthy } => Some(AllocHealthReport { deployment_id, healthy, at_ns }),
        };
        if let Some(last) = updates.last_mut()
            && last.alloc_id == report.alloc
        {
            last.deployment_health = health.or(last.deployment_health);
            continue;
        }
        updates.push(AllocClientUpdate {
            alloc_id: report.alloc,
            client_status: ClientStatus::Running,
            client_description: "Tasks are running".into(),
            at_ns,
            task_states: Default::default(),
            deployment_health: health,
        });
    }
    updates
}

async fn send_reports(thread: Rc<Thread>, mut batch: Vec<Report>) {
    let client = thread.clients.borrow()[batch[0].node].clone();
    let at_ns = caravan_engine::clock::Clock::now_ns(&caravan_engine::clock::SystemClock);
    let updates = updates_of(&mut batch, at_ns);
    let sent = match encode_client_message(&AllocUpdateRequest { updates }) {
        Ok(body) => {
            thread.shared.update_requests.fetch_add(1, Ordering::Relaxed);
            thread.shared.update_request_bytes.fetch_add(body.len() as u64, Ordering::Relaxed);
            call(&client, &thread.servers, ALLOC_UPDATE, body, CALL_TIMEOUT).await.is_ok()
        }
        Err(_) => false,
    };
    thread.sending.borrow_mut()[batch[0].node] = false;
    if !sent {
        thread.shared.rpc_errors.fetch_add(1, Ordering::Relaxed);
        // Try again with the node's next batch after a pause.
        let later = Instant::now() + RETRY_PAUSE;
        let mut reports = thread.reports.borrow_mut();
        for report in batch {
            reports.push(later, report);
        }
        return;
    }
    let mut by_job: Vec<(Arc<str>, u32)> = Vec::new();
    let (mut healthy, mut unhealthy) = (0, 0);
    for report in &batch {
        match report.kind {
            ReportKind::Running => match by_job.iter_mut().find(|(job, _)| *job == report.job) {
                Some((_, count)) => *count += 1,
                None => by_job.push((report.job.clone(), 1)),
            },
            ReportKind::Health { healthy: true, .. } => healthy += 1,
            ReportKind::Health { healthy: false, .. } => unhealthy += 1,
        }
    }
    thread.shared.ran(&by_job);
    thread.shared.allocs_healthy.fetch_add(healthy, Ordering::Relaxed);
    thread.shared.allocs_unhealthy.fetch_add(unhealthy, Ordering::Relaxed);
}

#[cfg(test)]
mod tests {
    use super::*;
    use caravan_engine::fixtures;
    use caravan_engine::ids::IdGen;
    use caravan_engine::model::{JobType, UpdateStrategy};

    fn report(alloc: AllocId, kind: ReportKind) -> Report {
        Report { node: 0, global: 0, alloc, job: "j".into(), kind }
    }

    #[test]
    fn running_and_health_due_together_are_one_update() {
        let mut ids = IdGen::with_seed(3);
        let (a, b) = (ids.alloc_tagged(0), ids.alloc_tagged(0));
        let deployment_id = ids.deployment();
        let health = ReportKind::Health { deployment_id, healthy: true };
        let mut batch = vec![report(b, ReportKind::Running), report(a, ReportKind::Running), report(b, health)];
        let updates = updates_of(&mut batch, 7);
        assert_eq!(updates.len(), 2);
        let of = |id| updates.iter().find(|u| u.alloc_id == id).expect("an update per allocation");
        assert_eq!(of(a).deployment_health, None);
        assert_eq!(of(b).deployment_health, Some(AllocHealthReport { deployment_id, healthy: true, at_ns: 7 }));
        assert!(updates.iter().all(|u| u.client_status == ClientStatus::Running));
    }

    /// A service allocation of one group with `update`, pending.
    fn alloc(ids: &mut IdGen, update: Option<UpdateStrategy>) -> Allocation {
        let mut job = fixtures::job("web", JobType::Service, 1, 100, 128);
        job.task_groups[0].update = update;
        let job = Arc::new(job);
        Allocation { deployment_id: Some(ids.deployment()), ..fixtures::allocation(ids, &job, 0) }
    }

    #[test]
    fn health_follows_the_group_update_strategy() {
        const S: i64 = 1_000_000_000;
        let mut ids = IdGen::with_seed(4);
        let strategy = UpdateStrategy { min_healthy_time_ns: 2 * S, ..Default::default() };
        let a = alloc(&mut ids, Some(strategy.clone()));
        let d = a.deployment_id.expect("in a deployment");
        assert_eq!(health_decision(&a), Some((d, true, Duration::from_secs(2))));
        let late = UpdateStrategy { min_healthy_time_ns: 20 * S, healthy_deadline_ns: 5 * S, ..strategy.clone() };
        let a = alloc(&mut ids, Some(late));
        assert!(matches!(health_decision(&a), Some((_, false, at)) if at == Duration::from_secs(5)));
        let manual = UpdateStrategy { health_check: "manual".into(), ..strategy.clone() };
        assert_eq!(health_decision(&alloc(&mut ids, Some(manual))), None, "manual: an operator decides");
        assert_eq!(health_decision(&alloc(&mut ids, None)), None, "no update strategy");
        let mut outside = alloc(&mut ids, Some(strategy.clone()));
        outside.deployment_id = None;
        assert_eq!(health_decision(&outside), None, "no deployment");
        let mut stopped = alloc(&mut ids, Some(strategy));
        stopped.desired_status = DesiredStatus::Stop;
        assert_eq!(health_decision(&stopped), None, "stopped");
    }
}
