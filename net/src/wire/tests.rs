//! Round trips of every command and of a busy state, and refusal of
//! corrupted, truncated, reordered and future-version bytes.

use std::collections::BTreeMap;
use std::sync::Arc;

use caravan_engine::endpoints;
use caravan_engine::fixtures;
use caravan_engine::fsm::{Command, PlanApplied};
use caravan_engine::ids::{IdGen, JobKey, NodeId};
use caravan_engine::intern::Sym;
use caravan_engine::model::{
    Affinity, AllocClientUpdate, AllocMetric, AllocPreemption, AllocStop, Allocation, AssignedDevice, AssignedPort,
    ClientStatus, ConfigValue, Constraint, ConstraintOp, Deployment, DeploymentStatus, DesiredTransition,
    DrainStrategy, EvalStatus, Evaluation, Job, JobType, LifecycleHook, MigrateStrategy, Node, NodeStatus, Periodic,
    PortRequest, RescheduleEvent, RescheduleTracker, SECOND_NS, SchedulingEligibility, Spread, SpreadTarget, TaskEvent,
    TaskLifecycle, TaskLifecycleState, TaskState, UpdateStrategy,
};
use caravan_engine::sim::SimCluster;
use caravan_engine::state::{SchedulerAlgorithm, SchedulerConfig, State};

use super::*;

/// A job using every optional part of the spec, a nested driver config included.
fn rich_job(id: &str) -> Job {
    let mut job = fixtures::gpu_job(id, 3, 1);
    job.meta.insert("team".into(), "ml".into());
    job.constraints.push(Constraint::new("${attr.kernel.name}", ConstraintOp::Equal, "linux"));
    job.affinities.push(Affinity {
        l_target: "${node.datacenter}".into(),
        r_target: "dc1".into(),
        operand: ConstraintOp::Equal,
        weight: -40,
    });
    job.spreads.push(Spread {
        attribute: "${node.datacenter}".into(),
        weight: 50,
        targets: vec![SpreadTarget { value: "dc1".into(), percent: 70 }],
    });
    job.update = Some(UpdateStrategy::default());
    let group = &mut job.task_groups[0];
    group.migrate = Some(MigrateStrategy::default());
    group.ports.push(PortRequest { label: "http".into(), static_port: Some(8080), to: 80 });
    group.gang_topology = Some("${meta.rack}".into());
    group.max_client_disconnect_ns = Some(30);
    let task = &mut group.tasks[0];
    task.user = Some("nobody".into());
    task.env.insert("MODE".into(), "train".into());
    let mut inner = BTreeMap::new();
    inner.insert(Arc::from("ratio"), ConfigValue::Float(0.25));
    inner.insert(Arc::from("on"), ConfigValue::Bool(true));
    inner.insert(Arc::from("none"), ConfigValue::Null);
    let mut config = BTreeMap::new();
    config.insert(Arc::from("command"), ConfigValue::String("/bin/train".into()));
    config.insert(
        Arc::from("args"),
        ConfigValue::List(vec![ConfigValue::Int(-3), ConfigValue::Map(inner), ConfigValue::List(vec![])]),
    );
    task.config = ConfigValue::Map(config);
    let mut init = group.tasks[0].clone();
    init.name = "init".into();
    init.resources.devices.clear();
    init.lifecycle = Some(TaskLifecycle { hook: LifecycleHook::Prestart, sidecar: true });
    group.tasks.push(init);
    job
}

fn task_states() -> BTreeMap<Arc<str>, TaskState> {
    let mut state = TaskState::pending();
    state.state = TaskLifecycleState::Dead;
    state.failed = true;
    state.restarts = 2;
    let mut event = TaskEvent::new("Terminated", 7, "exit 1");
    event.exit_code = Some(1);
    event.signal = Some(9);
    event.restart_delay_ns = Some(15);
    event.fails_task = true;
    state.push_event(event);
    BTreeMap::from([(Arc::from("t"), state)])
}

/// Allocations of one job (sharing its `Arc`) with every optional field set.
fn allocs(ids: &mut IdGen, job: &Arc<Job>, nodes: &[NodeId], count: usize) -> Vec<Arc<Allocation>> {
    (0..count)
        .map(|i| {
            let id = ids.alloc_for(&job.key());
            let mut resources = caravan_engine::model::AllocatedResources::default();
            resources.comparable.cpu_mhz = 1000;
            resources.comparable.memory_mb = 4096;
            resources.ports.push(AssignedPort { label: "http".into(), value: 20000 + i as u16, to: 80 });
            resources.devices.push(AssignedDevice {
                task_index: 0,
                vendor: "nvidia".into(),
                kind: "gpu".into(),
                name: "NVIDIA H200".into(),
                instance_ids: vec![format!("GPU-{i}").into()],
            });
            Arc::new(Allocation {
                id,
                eval_id: ids.eval(),
                node_id: nodes[i % nodes.len()],
                job: job.clone(),
                group_index: 0,
                name_index: i as u32,
                resources: Arc::new(resources),
                desired_status: caravan_engine::model::DesiredStatus::Run,
                desired_description: "".into(),
                desired_transition: DesiredTransition { migrate: true, reschedule: false, force_reschedule: true },
                client_status: ClientStatus::Running,
                client_description: "running".into(),
                previous_alloc: Some(ids.alloc_for(&job.key())),
                next_alloc: None,
                reschedule_tracker: Some(Arc::new(RescheduleTracker {
                    events: vec![RescheduleEvent {
                        at_ns: 5,
                        prev_alloc_id: ids.alloc_for(&job.key()),
                        prev_node_id: nodes[0],
                        delay_ns: 30,
                    }],
                })),
                followup_eval_id: Some(ids.eval()),
                deployment_id: Some(ids.deployment()),
                deployment_status: (i % 3 == 0).then_some(caravan_engine::model::AllocDeploymentStatus {
                    healthy: Some(i % 2 == 0),
                    timestamp_ns: 12,
                    canary: true,
                    modify_index: 5,
                }),
                preempted_by: None,
                create_index: 3,
                modify_index: 4,
                alloc_modify_index: 4,
                create_time_ns: 10,
                modify_time_ns: 11,
                task_states: if i % 2 == 0 { Arc::new(task_states()) } else { Default::default() },
            })
        })
        .collect()
}

fn failed_eval(ids: &mut IdGen, job: &Job) -> Evaluation {
    let mut eval = fixtures::register_eval(ids, job, 42);
    eval.status = EvalStatus::Blocked;
    eval.node_id = Some(ids.node());
    eval.deployment_id = Some(ids.deployment());
    eval.previous_eval = Some(ids.eval());
    let mut metric = AllocMetric { nodes_evaluated: 9, coalesced_failures: 2, ..Default::default() };
    metric.dimension_exhausted.insert("memory".into(), 4);
    metric.constraint_filtered.insert("${attr.kernel.name} = linux".into(), 3);
    eval.failed_tg_allocs.insert("g".into(), metric);
    eval.class_eligibility.insert(0xfeed, true);
    eval.queued_allocations.insert("g".into(), 3);
    eval
}

fn deployment(ids: &mut IdGen, key: &JobKey) -> Deployment {
    Deployment {
        id: ids.deployment(),
        job: key.clone(),
        job_version: 1,
        job_modify_index: 2,
        status: DeploymentStatus::Running,
        status_description: "rolling".into(),
        task_groups: vec![caravan_engine::model::DeploymentGroup {
            name: "g".into(),
            auto_revert: true,
            auto_promote: false,
            promoted: true,
            desired_canaries: 1,
            desired_total: 5,
            progress_deadline_ns: 600,
            require_progress_by_ns: 1_700,
        }],
        create_index: 3,
        modify_index: 4,
    }
}

fn scaling_event(ids: &mut IdGen) -> caravan_engine::model::ScalingEvent {
    caravan_engine::model::ScalingEvent {
        time_ns: 1_700_000_000 * SECOND_NS,
        count: Some(5),
        previous_count: 2,
        message: "autoscaler: cpu above target".into(),
        error: false,
        meta_json: r#"{"policy":"cpu","nested":{"n":1}}"#.into(),
        eval_id: Some(ids.eval()),
        create_index: 21,
    }
}

/// One of each command; the match keeps the list complete as variants are added.
fn every_command() -> Vec<Command> {
    let mut ids = IdGen::with_seed(11);
    let mut node = fixtures::gpu_node(&mut ids, "gpu-1", "dc1", 8, 4);
    node.drain =
        Some(DrainStrategy { deadline_ns: 1, ignore_system_jobs: true, started_at_ns: 2, force_deadline_ns: 3 });
    node.node_pool = Sym::new("gpu-pool");
    let job = Arc::new(rich_job("train"));
    let eval = failed_eval(&mut ids, &job);
    let placed = allocs(&mut ids, &job, &[node.id], 4);
    let commands = vec![
        Command::JobRegister { job: (*job).clone(), eval: Some(eval.clone()), now_ns: 1 },
        Command::JobDeregister { key: job.key(), purge: true, eval: None, now_ns: 2 },
        Command::NodeRegister { node: node.clone(), evals: vec![eval.clone()] },
        Command::NodeDeregister { node_id: node.id, evals: vec![] },
        Command::NodeStatusUpdate { node_id: node.id, status: NodeStatus::Disconnected, evals: vec![], now_ns: 3 },
        Command::NodeDrainUpdate {
            node_id: node.id,
            drain: node.drain.clone(),
            mark_eligible: true,
            evals: vec![eval.clone()],
            now_ns: 4,
        },
        Command::NodeEligibilityUpdate {
            node_id: node.id,
            eligibility: SchedulingEligibility::Ineligible,
            evals: vec![],
            now_ns: 5,
        },
        Command::EvalUpsert { evals: vec![eval.clone(), failed_eval(&mut ids, &job)] },
        Command::EvalReap { evals: vec![eval.id], allocs: vec![placed[0].id] },
        Command::AllocClientUpdate {
            updates: vec![AllocClientUpdate {
                alloc_id: placed[1].id,
                client_status: ClientStatus::Failed,
                client_description: "oom".into(),
                at_ns: 6,
                task_states: task_states(),
                deployment_health: Some(caravan_engine::model::AllocHealthReport {
                    deployment_id: ids.deployment(),
                    healthy: false,
                    at_ns: 6,
                }),
            }],
            evals: vec![],
        },
        Command::AllocDesiredTransition {
            transitions: vec![(placed[2].id, DesiredTransition { migrate: true, ..Default::default() })],
            evals: vec![eval.clone()],
        },
        Command::ApplyPlanResults(PlanApplied {
            eval_id: eval.id,
            allocs: placed.clone(),
            stops: vec![AllocStop {
                alloc_id: placed[3].id,
                description: "lost".into(),
                client_status: Some(ClientStatus::Lost),
                followup_eval_id: Some(ids.eval()),
            }],
            preemptions: vec![AllocPreemption { alloc_id: placed[2].id, preempted_by: placed[1].id }],
            deployment: Some(deployment(&mut ids, &job.key())),
            preemption_evals: vec![eval],
            now_ns: 7,
        }),
        Command::SchedulerConfigUpdate {
            config: SchedulerConfig {
                algorithm: SchedulerAlgorithm::Spread,
                preemption_service: true,
                memory_oversubscription: true,
                modify_index: 9,
                ..Default::default()
            },
        },
        Command::JobStability { key: job.key(), version: 3, stable: true },
        Command::DeploymentStatusUpdate {
            id: ids.deployment(),
            status: DeploymentStatus::Paused,
            description: "Deployment is paused".into(),
            evals: vec![failed_eval(&mut ids, &job)],
            job: Some((*job).clone()),
            now_ns: 12,
        },
        Command::DeploymentPromote {
            id: ids.deployment(),
            groups: vec!["g".into(), "h".into()],
            evals: vec![failed_eval(&mut ids, &job)],
            now_ns: 13,
        },
        Command::PeriodicLaunch {
            job: {
                let mut child = fixtures::job("report/periodic-1893456300", JobType::Batch, 1, 100, 64);
                child.parent_id = Some("report".into());
                child
            },
            eval: failed_eval(&mut ids, &job),
            launch_ns: 1_893_456_300 * SECOND_NS,
            forced: true,
            now_ns: 11,
        },
        Command::JobScale {
            key: job.key(),
            group: "g".into(),
            job: Some((*job).clone()),
            eval: Some(failed_eval(&mut ids, &job)),
            event: scaling_event(&mut ids),
            now_ns: 14,
        },
        Command::DeploymentAllocHealth {
            id: ids.deployment(),
            healthy: vec![placed[0].id],
            unhealthy: vec![placed[1].id, placed[2].id],
            evals: vec![failed_eval(&mut ids, &job)],
            now_ns: 15,
        },
    ];
    let mut seen = [false; 19];
    for command in &commands {
        let slot = match command {
            Command::JobRegister { .. } => 0,
            Command::JobDeregister { .. } => 1,
            Command::NodeRegister { .. } => 2,
            Command::NodeDeregister { .. } => 3,
            Command::NodeStatusUpdate { .. } => 4,
            Command::NodeDrainUpdate { .. } => 5,
            Command::NodeEligibilityUpdate { .. } => 6,
            Command::EvalUpsert { .. } => 7,
            Command::EvalReap { .. } => 8,
            Command::AllocClientUpdate { .. } => 9,
            Command::AllocDesiredTransition { .. } => 10,
            Command::ApplyPlanResults(_) => 11,
            Command::SchedulerConfigUpdate { .. } => 12,
            Command::JobStability { .. } => 13,
            Command::DeploymentStatusUpdate { .. } => 14,
            Command::PeriodicLaunch { .. } => 15,
            Command::DeploymentPromote { .. } => 16,
            Command::JobScale { .. } => 17,
            Command::DeploymentAllocHealth { .. } => 18,
        };
        seen[slot] = true;
    }
    assert!(seen.iter().all(|s| *s), "every variant listed");
    commands
}

#[test]
fn every_command_round_trips() {
    let commands = every_command();
    for command in &commands {
        let bytes = encode_commands(std::slice::from_ref(command)).unwrap();
        assert_eq!(decode_commands(&bytes).unwrap(), vec![command.clone()]);
    }
    let bytes = encode_commands(&commands).unwrap();
    let decoded = decode_commands(&bytes).unwrap();
    assert_eq!(decoded, commands);
    assert_eq!(decode_commands(&encode_commands(&[]).unwrap()).unwrap(), vec![]);

    // Interned names come back as the same symbols.
    let Command::NodeRegister { node, .. } = &decoded[2] else { panic!("order kept") };
    assert_eq!(node.node_pool, Sym::new("gpu-pool"));
    // A plan's allocations share one job after decoding, as before.
    let Command::ApplyPlanResults(plan) = &decoded[11] else { panic!("order kept") };
    assert!(plan.allocs.windows(2).all(|w| Arc::ptr_eq(&w[0].job, &w[1].job)));
    // The empty task-state map is the shared one again.
    assert!(Arc::ptr_eq(&plan.allocs[1].task_states, &caravan_engine::model::no_task_states()));
}

#[test]
fn a_shared_job_is_archived_once() {
    let mut ids = IdGen::with_seed(3);
    let job = Arc::new(rich_job("big"));
    let nodes = [ids.node()];
    let one = encode_commands(&[plan_of(allocs(&mut ids, &job, &nodes, 1))]).unwrap();
    let many = encode_commands(&[plan_of(allocs(&mut ids, &job, &nodes, 101))]).unwrap();
    let job_bytes =
        encode_commands(&[Command::JobRegister { job: (*job).clone(), eval: None, now_ns: 0 }]).unwrap().len();
    let per_alloc = (many.len() - one.len()) / 100;
    assert!(per_alloc < job_bytes / 2, "{per_alloc} bytes per allocation, job is {job_bytes}");
}

fn plan_of(allocs: Vec<Arc<Allocation>>) -> Command {
    Command::ApplyPlanResults(PlanApplied { allocs, ..Default::default() })
}

#[test]
fn command_header_is_checked() {
    let bytes = encode_commands(&every_command()).unwrap();
    assert!(matches!(decode_commands(&bytes[..3]), Err(WireError::TooShort { .. })));
    assert!(matches!(decode_commands(&bytes[..bytes.len() - 1]), Err(WireError::LengthMismatch { .. })));
    let mut flipped = bytes.clone();
    *flipped.last_mut().unwrap() ^= 1;
    assert!(matches!(decode_commands(&flipped), Err(WireError::Checksum)));
    let mut wrong_magic = bytes.clone();
    wrong_magic[0] = b'X';
    assert!(matches!(decode_commands(&wrong_magic), Err(WireError::BadMagic { .. })));
    let mut future = bytes.clone();
    future[4] = COMMAND_FORMAT_VERSION + 1;
    let err = decode_commands(&future).unwrap_err();
    assert!(matches!(err, WireError::UnsupportedVersion { found, .. } if found == COMMAND_FORMAT_VERSION + 1));
    let expected = format!("unsupported command batch format version {}", COMMAND_FORMAT_VERSION + 1);
    assert!(err.to_string().contains(&expected), "{err}");
}

/// A small deterministic generator for the mutation loops (no dependency).
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

#[test]
fn mutated_commands_never_panic() {
    let bytes = encode_commands(&every_command()).unwrap();
    // Every offset, several mutations each: the checksum refuses them all.
    for at in 0..bytes.len() {
        for mask in [0x01u8, 0x80, 0xff] {
            let mut mutated = bytes.clone();
            mutated[at] ^= mask;
            assert!(decode_commands(&mutated).is_err(), "byte {at} ^ {mask:#x} accepted");
        }
    }
    for len in 0..bytes.len() {
        assert!(decode_commands(&bytes[..len]).is_err(), "prefix of {len} bytes accepted");
    }
    // Past the checksum (as if it collided), lz4's bounds checks and
    // rkyv's validation stand alone: an error or some valid batch, never a
    // panic or UB.
    let (how, body) = command::checked_body(&bytes).unwrap();
    assert!(how.is_compressed(), "a batch of every command is large enough to compress");
    assert_eq!(command::decode_body(how, body).unwrap(), every_command());
    for at in 0..body.len() {
        for mask in [0x01u8, 0xff] {
            let mut mutated = body.to_vec();
            mutated[at] ^= mask;
            let _ = command::decode_body(how, &mutated);
        }
    }
    for len in 0..body.len() {
        let _ = command::decode_body(how, &body[..len]);
    }
    let plain = command::encode_commands_v5(&every_command());
    let (_, archive) = command::checked_body(&plain).unwrap();
    let decode_archive = |archive: &[u8]| command::decode_body(command::Body::plain(archive.len()), archive);
    assert_eq!(decode_archive(archive).unwrap(), every_command());
    for at in 0..archive.len() {
        for mask in [0x01u8, 0x10, 0x80, 0xff] {
            let mut mutated = archive.to_vec();
            mutated[at] ^= mask;
            let _ = decode_archive(&mutated);
        }
    }
    for len in 0..archive.len() {
        let _ = decode_archive(&archive[..len]);
    }
    let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
    for _ in 0..2_000 {
        for input in [body, archive] {
            let mut mutated = input.to_vec();
            for _ in 0..1 + rng.next() % 8 {
                let at = (rng.next() as usize) % mutated.len();
                mutated[at] = rng.next() as u8;
            }
            let _ = decode_archive(&mutated);
            let _ = command::decode_body(how, &mutated);
        }
        let garbage: Vec<u8> = (0..rng.next() % 512).map(|_| rng.next() as u8).collect();
        let _ = decode_archive(&garbage);
        let _ = command::decode_body(how, &garbage);
    }
}

#[test]
fn large_batches_are_compressed_and_old_plain_ones_still_read() {
    let mut ids = IdGen::with_seed(4);
    let job = Arc::new(rich_job("plan"));
    let nodes: Vec<NodeId> = (0..100).map(|_| ids.node()).collect();
    let plan = vec![plan_of(allocs(&mut ids, &job, &nodes, 1000))];
    let compressed = encode_commands(&plan).unwrap();
    let plain = command::encode_commands_v5(&plan);
    assert!(compressed.len() * 3 < plain.len(), "{} bytes compressed, {} plain", compressed.len(), plain.len());
    assert_eq!(decode_commands(&compressed).unwrap(), plan);
    assert_eq!(decode_commands(&plain).unwrap(), plan, "a version 5 entry replays");
    let small = vec![Command::EvalReap { evals: vec![], allocs: vec![] }];
    assert_eq!(decode_commands(&encode_commands(&small).unwrap()).unwrap(), small);
    // An archive length past what lz4 can inflate to is refused before
    // anything is allocated.
    let mut bomb = compressed.clone();
    bomb[14..18].copy_from_slice(&u32::MAX.to_le_bytes());
    assert!(matches!(decode_commands(&bomb), Err(WireError::TooLarge { .. })));
}

/// A busy state: several pools, placed and finished allocations, job
/// versions, a purged job whose allocations remain, a deregistered node
/// (its slot outlives it), reaped evals, a deployment, a custom config.
fn busy_state(nodes: usize, jobs: usize) -> SimCluster {
    let mut sim = SimCluster::new(5);
    let mut node_ids = Vec::new();
    for i in 0..nodes {
        let mut node = if i % 10 == 0 {
            fixtures::gpu_node(&mut sim.ids, &format!("gpu-{i}"), "dc2", 8, 4)
        } else {
            fixtures::node(&mut sim.ids, &format!("n-{i}"), if i % 3 == 0 { "dc2" } else { "dc1" }, 16_000, 65_536)
        };
        if i % 4 == 0 {
            node.node_pool = Sym::new("batch");
        }
        node_ids.push(sim.add_node(node));
    }
    // Move a node between pools: it goes to the end of the new pool's list.
    let mut moved = (**sim.snapshot().node(node_ids[1]).unwrap()).clone();
    moved.node_pool = Sym::new("batch");
    sim.commit(Command::NodeRegister { node: moved, evals: vec![] });

    let mut keys = Vec::new();
    for j in 0..jobs {
        let mut job = if j % 7 == 0 {
            rich_job(&format!("gpu-{j}"))
        } else {
            fixtures::job(&format!("web-{j}"), JobType::Service, 3, 200, 256)
        };
        if j % 7 == 0 {
            job.task_groups[0].ports.clear();
        }
        job.node_pool = "all".into();
        keys.push(job.key());
        let eval = sim.register(job);
        sim.process(&eval);
    }
    // New versions of some jobs (scale up), which place more allocations.
    for key in keys.iter().step_by(5) {
        let mut job = (**sim.snapshot().job(key).unwrap()).clone();
        job.task_groups[0].count += 1;
        let eval = sim.register(job);
        sim.process(&eval);
    }
    // Client updates: some finish, some fail with task states.
    let snapshot = sim.snapshot();
    let mut live: Vec<_> = snapshot.allocs().map(|a| a.id).collect();
    live.sort();
    for (i, id) in live.iter().enumerate().step_by(9) {
        let status = if i % 2 == 0 { ClientStatus::Complete } else { ClientStatus::Failed };
        let update = AllocClientUpdate {
            alloc_id: *id,
            client_status: status,
            client_description: "done".into(),
            at_ns: sim.now_ns,
            task_states: task_states(),
            deployment_health: None,
        };
        sim.commit(Command::AllocClientUpdate { updates: vec![update], evals: vec![] });
    }
    sim.drain(node_ids[2]);
    sim.set_node_status(node_ids[3], NodeStatus::Down);
    sim.commit(Command::NodeDeregister { node_id: node_ids[5], evals: vec![] });
    sim.commit(Command::JobDeregister { key: keys[1].clone(), purge: true, eval: None, now_ns: sim.now_ns });
    sim.commit(Command::JobDeregister { key: keys[2].clone(), purge: false, eval: None, now_ns: sim.now_ns });
    let reap: Vec<_> = sim.snapshot().evals().take(3).map(|e| e.id).collect();
    let dead_alloc = sim.snapshot().allocs().find(|a| a.is_terminal()).map(|a| a.id);
    sim.commit(Command::EvalReap { evals: reap, allocs: dead_alloc.into_iter().collect() });
    let mut ids = IdGen::with_seed(77);
    let deployment = deployment(&mut ids, &keys[0]);
    sim.commit(Command::ApplyPlanResults(PlanApplied { deployment: Some(deployment), ..Default::default() }));
    let blocked = failed_eval(&mut ids, &sim.snapshot().job(&keys[0]).unwrap().clone());
    sim.commit(Command::EvalUpsert { evals: vec![blocked] });
    sim.commit(Command::SchedulerConfigUpdate {
        config: SchedulerConfig { algorithm: SchedulerAlgorithm::Spread, ..Default::default() },
    });
    // Periodic jobs: one launched, one only registered (its start recorded).
    for id in ["report", "cleanup"] {
        let mut periodic = fixtures::job(id, JobType::Batch, 1, 100, 64);
        let mut config = Periodic::cron(&["*/5 * * * *", "@daily"]);
        config.time_zone = "Europe/Berlin".into();
        config.prohibit_overlap = true;
        periodic.periodic = Some(config);
        let register = endpoints::register_job(periodic, sim.now_ns, &mut ids).unwrap();
        sim.commit(register);
    }
    let launch_ns = sim.now_ns + 300 * SECOND_NS;
    let (launch, _) = endpoints::periodic_launch(
        &sim.snapshot(),
        &JobKey::new("default", "report"),
        launch_ns,
        false,
        launch_ns,
        &mut ids,
    )
    .unwrap();
    sim.commit(launch);
    // Scaling events: one job with two groups' worth, one with an error event.
    for (id, group, error) in [("report", "g", false), ("report", "h", false), ("cleanup", "g", true)] {
        let key = JobKey::new("default", id);
        let mut event = scaling_event(&mut ids);
        event.error = error;
        let (job, eval) = (None, None);
        sim.commit(Command::JobScale { key, group: group.into(), job, eval, event, now_ns: sim.now_ns });
    }
    sim
}

/// Every table, every index and the order of every secondary list.
fn assert_same_state(a: &State, b: &State) {
    assert_eq!(a.index(), b.index());
    assert_eq!(a.table_indexes(), b.table_indexes());

    let histories = |s: &State| -> Vec<_> {
        s.job_histories()
            .map(|h| {
                let current = h.current.map(|j| (**j).clone());
                let versions: Vec<Job> = h.versions.iter().map(|j| (***j).clone()).collect();
                (h.key.clone(), current, versions)
            })
            .collect()
    };
    assert_eq!(histories(a), histories(b));
    assert_eq!(a.job_count(), b.job_count());

    let nodes = |s: &State| s.nodes().map(|n| (**n).clone()).collect::<Vec<Node>>();
    assert_eq!(nodes(a), nodes(b));
    for pool in ["default", "batch", "all"] {
        assert_eq!(a.nodes_in_pool(Sym::new(pool)), b.nodes_in_pool(Sym::new(pool)), "pool {pool}");
    }
    let ready = |s: &State| s.ready_nodes().iter().map(|n| n.id).collect::<Vec<_>>();
    assert_eq!(ready(a), ready(b));

    assert_eq!(a.alloc_count(), b.alloc_count());
    for alloc in a.allocs() {
        assert_eq!(b.alloc(alloc.id).map(|x| &**x), Some(&**alloc));
    }
    let slots = |s: &State| {
        let mut all: Vec<(NodeId, Vec<_>)> = s.node_alloc_lists().map(|(n, ids)| (n, ids.collect())).collect();
        all.sort_by_key(|(n, _)| *n);
        all
    };
    assert_eq!(slots(a), slots(b));
    for (node, ids) in slots(a) {
        assert_eq!(a.node_usage(node), b.node_usage(node), "usage of {node}");
        let by_node: Vec<_> = b.allocs_by_node(node).map(|x| x.id).collect();
        assert_eq!(by_node, ids);
        // The node's list carries each allocation's change index: a
        // client's pull splits the same way after the restore.
        for known in [0, a.index() / 2, a.index()] {
            let pulled: Vec<(_, bool)> = b
                .node_allocs_since(node, known)
                .map(|c| match c {
                    caravan_engine::state::NodeAllocChange::Changed(x) => (x.id, true),
                    caravan_engine::state::NodeAllocChange::Unchanged(id) => (id, false),
                })
                .collect();
            let expected: Vec<_> = a.allocs_by_node(node).map(|x| (x.id, x.alloc_modify_index > known)).collect();
            assert_eq!(pulled, expected, "pull of {node} since {known}");
        }
    }

    // Tables iterate in the same order: the scheduler reads some that way.
    let alloc_order = |s: &State| s.allocs().map(|x| x.id).collect::<Vec<_>>();
    assert_eq!(alloc_order(a), alloc_order(b));
    let slot_order = |s: &State| s.node_alloc_lists().map(|(n, _)| n).collect::<Vec<_>>();
    assert_eq!(slot_order(a), slot_order(b));
    // The eval table is the exception: deletions and replacements shape its
    // hash nodes, so re-inserting does not reproduce its iteration order.
    let evals = |s: &State| {
        let mut all = s.evals().map(|e| (**e).clone()).collect::<Vec<_>>();
        all.sort_by_key(|e| e.id);
        all
    };
    assert_eq!(evals(a), evals(b));
    for eval in a.evals() {
        let key = eval.job_key();
        let ids = |s: &State| s.evals_by_job(&key).map(|e| e.id).collect::<Vec<_>>();
        assert_eq!(ids(a), ids(b), "evals of {key}");
    }

    let deployments = |s: &State| s.deployments().map(|d| (**d).clone()).collect::<Vec<Deployment>>();
    assert_eq!(deployments(a), deployments(b));
    assert_eq!(a.scheduler_config(), b.scheduler_config());
    let launches = |s: &State| s.periodic_launches().map(|(k, l)| (k.clone(), *l)).collect::<Vec<_>>();
    assert_eq!(launches(a), launches(b));
    let scaling = |s: &State| s.all_scaling_events().map(|(k, e)| (k.clone(), (**e).clone())).collect::<Vec<_>>();
    assert_eq!(scaling(a), scaling(b));
}

fn snapshot_bytes(state: &State) -> (Vec<u8>, SnapshotStats) {
    let mut bytes = Vec::new();
    let stats = write_snapshot(state, &mut bytes).unwrap();
    assert_eq!(stats.bytes, bytes.len() as u64);
    (bytes, stats)
}

#[test]
fn busy_state_round_trips() {
    let sim = busy_state(300, 200);
    let state = sim.snapshot();
    assert!(state.alloc_count() > 500, "{} allocations", state.alloc_count());
    assert!(state.deployments().count() == 1);
    assert!(state.node_slot_count() > state.node_count(), "a deregistered node keeps its slot");
    assert!(state.job_histories().any(|h| h.versions.len() > 1), "some job has several versions");

    let (bytes, stats) = snapshot_bytes(&state);
    assert_eq!(stats.counts.allocs, state.alloc_count() as u64);
    assert_eq!(stats.counts.nodes, 300 - 1);
    assert_eq!(stats.counts.scaling_events, 2, "two jobs with scaling events");
    let restored = read_snapshot(&mut bytes.as_slice()).unwrap();
    assert_same_state(&state, &restored);
    // What was removed before the snapshot is not known: every node's next
    // allocation pull lists what its client keeps.
    for (node, _) in restored.node_alloc_lists() {
        assert_eq!(restored.node_allocs_removed_index(node), Some(state.index()));
    }

    // The restored state snapshots to the very same bytes, but for the
    // eval table's order (see `assert_same_state`) and so the trailer's
    // checksum; compared by chunk, so a failure names the chunk.
    let again = snapshot_bytes(&restored).0;
    let (spans, spans_again) = (chunk_spans(&bytes), chunk_spans(&again));
    assert_eq!(spans, spans_again);
    const EVALS: u8 = 5;
    const EVAL_LISTS: u8 = 6;
    const TRAILER: u8 = 11;
    for (i, (start, end)) in spans.into_iter().enumerate() {
        if ![EVALS, EVAL_LISTS, TRAILER].contains(&bytes[start]) {
            assert!(bytes[start..end] == again[start..end], "chunk {i} (kind {}) differs", bytes[start]);
        }
    }
    assert_same_state(&restored, &read_snapshot(&mut again.as_slice()).unwrap());

    // The current job record stays one `Arc` with its kept version.
    for history in restored.job_histories() {
        if let Some(current) = history.current
            && let Some(same) = history.versions.iter().find(|v| ****v == **current)
        {
            assert!(Arc::ptr_eq(same, current), "{} shares its version", history.key);
        }
    }

    // And it schedules exactly as the original: same plan for the same eval.
    let mut job = fixtures::job("after-restore", JobType::Service, 5, 300, 512);
    job.node_pool = "all".into();
    let mut original = SimCluster::from_state((*state).clone(), 9, sim.now_ns);
    let mut copy = SimCluster::from_state(restored, 9, sim.now_ns);
    let eval = original.register(job.clone());
    let (plan_a, _) = original.process(&eval);
    let eval = copy.register(job);
    let (plan_b, _) = copy.process(&eval);
    assert_eq!(plan_a.plan, plan_b.plan);
    assert!(plan_a.plan.alloc_count() == 5);
}

#[test]
fn empty_state_round_trips() {
    let state = State::default();
    let (bytes, stats) = snapshot_bytes(&state);
    assert_eq!(stats.chunks, 2, "the scheduler configuration and the trailer");
    assert_same_state(&state, &read_snapshot(&mut bytes.as_slice()).unwrap());
}

#[test]
fn chunks_are_bounded() {
    let sim = busy_state(40, 700);
    let state = sim.snapshot();
    assert!(state.alloc_count() > 1024, "{} allocations", state.alloc_count());
    let (bytes, stats) = snapshot_bytes(&state);
    assert!(stats.chunks >= 5, "allocations span several chunks: {stats:?}");
    assert_same_state(&state, &read_snapshot(&mut bytes.as_slice()).unwrap());
}

/// Offsets of the chunks: (start, end) of each, header to payload end.
fn chunk_spans(bytes: &[u8]) -> Vec<(usize, usize)> {
    let mut spans = Vec::new();
    let mut at = 24;
    while at < bytes.len() {
        let len = u32::from_le_bytes(bytes[at + 4..at + 8].try_into().unwrap()) as usize;
        spans.push((at, at + 16 + len));
        at += 16 + len;
    }
    spans
}

#[test]
fn corrupt_snapshots_are_refused() {
    let sim = busy_state(12, 8);
    let (bytes, _) = snapshot_bytes(&sim.snapshot());
    assert!(read_snapshot(&mut bytes.as_slice()).is_ok());

    // Offsets to damage: every byte of the header and of each chunk header,
    // and a few thousand spread over the payloads (each try is a full read).
    let spans = chunk_spans(&bytes);
    let mut offsets: Vec<usize> = (0..24).collect();
    offsets.extend(spans.iter().flat_map(|(start, _)| *start..start + 16));
    offsets.extend((0..bytes.len()).step_by((bytes.len() / 3_000).max(1)));
    offsets.push(bytes.len() - 1);

    // A single flipped bit: crc32 catches every one.
    for &at in &offsets {
        for bit in [0, 3, 7] {
            let mut flipped = bytes.clone();
            flipped[at] ^= 1 << bit;
            assert!(read_snapshot(&mut flipped.as_slice()).is_err(), "bit {bit} at {at} flipped and accepted");
        }
    }
    // A truncation anywhere.
    for &len in &offsets {
        let err = read_snapshot(&mut &bytes[..len]).unwrap_err();
        assert!(matches!(err, WireError::Truncated(_)), "cut at {len}: {err}");
    }
    // Bytes after the trailer.
    let mut longer = bytes.clone();
    longer.push(0);
    assert!(matches!(read_snapshot(&mut longer.as_slice()), Err(WireError::TrailingBytes)));

    // Two chunks swapped, or one dropped.
    assert!(spans.len() >= 4, "{spans:?}");
    for i in 0..spans.len() - 1 {
        let (a, b) = (spans[i], spans[i + 1]);
        let mut swapped = bytes[..a.0].to_vec();
        swapped.extend_from_slice(&bytes[b.0..b.1]);
        swapped.extend_from_slice(&bytes[a.0..a.1]);
        swapped.extend_from_slice(&bytes[b.1..]);
        assert!(read_snapshot(&mut swapped.as_slice()).is_err(), "chunks {i} and {} swapped", i + 1);
        let mut dropped = bytes[..a.0].to_vec();
        dropped.extend_from_slice(&bytes[a.1..]);
        assert!(read_snapshot(&mut dropped.as_slice()).is_err(), "chunk {i} dropped");
    }

    // Random multi-byte damage.
    let mut rng = XorShift(0x2545_f491_4f6c_dd1d);
    for _ in 0..500 {
        let mut damaged = bytes.clone();
        for _ in 0..1 + rng.next() % 4 {
            let at = (rng.next() as usize) % damaged.len();
            damaged[at] = rng.next() as u8;
        }
        if damaged != bytes {
            assert!(read_snapshot(&mut damaged.as_slice()).is_err());
        }
    }
}

#[test]
fn snapshot_header_is_checked() {
    let (bytes, _) = snapshot_bytes(&busy_state(12, 3).snapshot());
    let mut wrong_magic = bytes.clone();
    wrong_magic[0] = b'X';
    assert!(matches!(read_snapshot(&mut wrong_magic.as_slice()), Err(WireError::BadMagic { .. })));

    // A future version with a valid header checksum: refused by version.
    let mut future = bytes.clone();
    future[8] = SNAPSHOT_FORMAT_VERSION + 1;
    let crc = crc32fast::hash(&future[..20]);
    future[20..24].copy_from_slice(&crc.to_le_bytes());
    let err = read_snapshot(&mut future.as_slice()).unwrap_err();
    assert!(matches!(err, WireError::UnsupportedVersion { found, .. } if found == SNAPSHOT_FORMAT_VERSION + 1));

    // A chunk length past the bound is refused before allocating for it.
    let mut huge = bytes.clone();
    huge[24 + 4..24 + 8].copy_from_slice(&u32::MAX.to_le_bytes());
    assert!(matches!(read_snapshot(&mut huge.as_slice()), Err(WireError::ChunkTooLarge { .. })));
}
