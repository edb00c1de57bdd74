//! GPU scheduling on simulated GPU nodes: device constraints and affinities,
//! instance choice by NVLink island, no shared instances, gang placement,
//! MIG slices, and preemption that frees GPUs.

use caravan_engine::fixtures::{gpu_job, gpu_node, job, node};
use caravan_engine::fsm::Command;
use caravan_engine::model::*;
use caravan_engine::sim::SimCluster;
use caravan_engine::state::{SchedulerConfig, usage_from_allocs};

fn gpu_cluster(nodes: usize) -> SimCluster {
    let mut c = SimCluster::new(21);
    for i in 0..nodes {
        let n = gpu_node(&mut c.ids, &format!("g{i}"), "dc1", 8, 4);
        c.add_node(n);
    }
    c
}

fn island(id: &str) -> u32 {
    id.rsplit('-').next().unwrap().parse::<u32>().unwrap() / 4
}

fn assigned(a: &Allocation) -> Vec<String> {
    a.resources.devices.iter().flat_map(|d| d.instance_ids.iter().map(|s| s.to_string())).collect()
}

#[test]
fn eight_gpu_request_takes_a_whole_node_and_pairs_stay_on_one_island() {
    let mut c = gpu_cluster(2);
    let eval = c.register(gpu_job("pair", 1, 2));
    let (outcome, _) = c.process(&eval);
    let pair = outcome.plan.node_allocation.values().flatten().next().unwrap().clone();
    let ids = assigned(&pair);
    assert_eq!(ids.len(), 2);
    assert_eq!(island(&ids[0]), island(&ids[1]));
    let eval = c.register(gpu_job("eight", 1, 8));
    let (outcome, _) = c.process(&eval);
    let eight = outcome.plan.node_allocation.values().flatten().next().expect("placed").clone();
    assert_eq!(assigned(&eight).len(), 8);
    assert_ne!(eight.node_id, pair.node_id, "only the untouched node has 8 free linked GPUs");
}

#[test]
fn two_tasks_never_share_an_instance() {
    let mut c = gpu_cluster(3);
    let eval = c.register(gpu_job("many", 24, 1));
    let (outcome, _) = c.process(&eval);
    assert_eq!(outcome.plan.alloc_count(), 24);
    let snap = c.snapshot();
    let mut all: Vec<String> = snap.allocs().flat_map(|a| assigned(a)).collect();
    all.sort();
    let before = all.len();
    all.dedup();
    assert_eq!(all.len(), before, "no instance assigned twice");
    let eval = c.register(gpu_job("one-more", 1, 1));
    let (outcome, _) = c.process(&eval);
    assert_eq!(outcome.plan.alloc_count(), 0);
    assert!(
        outcome.failed_tg_allocs["g"].summary().contains("devices exhausted"),
        "{}",
        outcome.failed_tg_allocs["g"].summary()
    );
}

#[test]
fn device_constraints_and_affinities_use_units_and_models() {
    let mut c = SimCluster::new(3);
    let h200 = gpu_node(&mut c.ids, "h200", "dc1", 8, 4);
    let mut small = gpu_node(&mut c.ids, "small", "dc1", 8, 4);
    small.resources.devices[0].name = "NVIDIA L4".into();
    small.resources.devices[0]
        .attributes
        .insert("memory".into(), DeviceAttribute::Int { value: 23_034, unit: Some("MiB".into()) });
    small.compute_class();
    c.add_node(h200);
    let small_id = c.add_node(small);
    let mut big_memory = gpu_job("big", 2, 1);
    big_memory.task_groups[0].tasks[0].resources.devices[0].constraints.push(Constraint::new(
        "${device.attr.memory}",
        ConstraintOp::GreaterEqual,
        "40 GiB",
    ));
    let eval = c.register(big_memory);
    let (outcome, _) = c.process(&eval);
    assert_eq!(outcome.plan.alloc_count(), 2);
    assert!(!outcome.plan.node_allocation.contains_key(&small_id), "23 GiB GPUs fail the 40 GiB constraint");
    let mut prefers_l4 = gpu_job("l4", 1, 1);
    prefers_l4.task_groups[0].tasks[0].resources.devices[0].affinities.push(Affinity {
        l_target: "${device.model}".into(),
        r_target: "NVIDIA L4".into(),
        operand: ConstraintOp::Equal,
        weight: 100,
    });
    let eval = c.register(prefers_l4);
    let (outcome, _) = c.process(&eval);
    assert_eq!(outcome.plan.node_allocation.keys().next(), Some(&small_id));
}

#[test]
fn gang_of_four_eight_gpu_tasks_places_all_or_nothing() {
    let mut c = gpu_cluster(3);
    let mut gang = gpu_job("train", 4, 8);
    gang.task_groups[0].gang = true;
    let eval = c.register(gang);
    let (outcome, result) = c.process(&eval);
    assert_eq!(result.node_allocation.len(), 0, "three 8-GPU nodes cannot hold four 8-GPU tasks: nothing placed");
    assert_eq!(outcome.queued_allocations["g"], 4);
    let blocked = outcome.blocked_eval.clone().expect("blocked until capacity frees");
    assert_eq!(c.snapshot().alloc_count(), 0, "no partial resources held");
    let n = gpu_node(&mut c.ids, "g3", "dc1", 8, 4);
    c.add_node(n);
    let (outcome, result) = c.process(&blocked);
    assert!(outcome.plan.all_at_once, "gang placements commit atomically");
    assert_eq!(result.node_allocation.len(), 4);
}

#[test]
fn gang_topology_prefers_one_rack() {
    let mut c = SimCluster::new(5);
    for i in 0..8 {
        let mut n = gpu_node(&mut c.ids, &format!("g{i}"), "dc1", 8, 4);
        n.meta.insert("rack".into(), format!("r{}", i % 2).into());
        n.compute_class();
        c.add_node(n);
    }
    let mut gang = gpu_job("train", 4, 8);
    gang.task_groups[0].gang = true;
    gang.task_groups[0].gang_topology = Some("${meta.rack}".into());
    let eval = c.register(gang);
    let (_, result) = c.process(&eval);
    let snap = c.snapshot();
    let racks: std::collections::BTreeSet<String> =
        result.node_allocation.keys().map(|n| snap.node(*n).unwrap().meta["rack"].to_string()).collect();
    assert_eq!(result.node_allocation.len(), 4);
    assert_eq!(racks.len(), 1, "all four on one rack: {racks:?}");
}

#[test]
fn mig_slices_are_schedulable_instances() {
    let mut c = SimCluster::new(9);
    let mut n = node(&mut c.ids, "mig", "dc1", 64_000, 512 * 1024);
    n.resources.devices.push(NodeDeviceResource {
        vendor: "nvidia".into(),
        kind: "gpu".into(),
        name: "NVIDIA H200 MIG 1g.18gb".into(),
        attributes: [("memory".into(), DeviceAttribute::Int { value: 16_384, unit: Some("MiB".into()) })].into(),
        instances: (0..7)
            .map(|i| DeviceInstance {
                id: format!("MIG-{i}").into(),
                healthy: true,
                health_description: "".into(),
                pci_bus_id: None,
                numa_node: Some(0),
                link_island: None,
            })
            .collect(),
    });
    n.compute_class();
    c.add_node(n);
    let mut j = job("infer", JobType::Batch, 7, 100, 256);
    j.task_groups[0].tasks[0].resources.devices.push(DeviceRequest {
        name: "nvidia/gpu/NVIDIA H200 MIG 1g.18gb".into(),
        count: 1,
        constraints: vec![],
        affinities: vec![],
    });
    let eval = c.register(j);
    let (outcome, _) = c.process(&eval);
    assert_eq!(outcome.plan.alloc_count(), 7, "one slice each");
}

#[test]
fn preemption_frees_gpus_with_the_fewest_lowest_priority_victims() {
    let mut c = gpu_cluster(1);
    c.commit(Command::SchedulerConfigUpdate {
        config: SchedulerConfig { preemption_batch: true, preemption_service: true, ..SchedulerConfig::default() },
    });
    let mut low = gpu_job("low", 6, 1);
    low.priority = 20;
    let eval = c.register(low);
    c.process(&eval);
    let mut mid = gpu_job("mid", 1, 2);
    mid.priority = 40;
    let eval = c.register(mid);
    c.process(&eval);
    assert_eq!(c.snapshot().allocs().filter(|a| !a.is_terminal()).count(), 7, "all 8 GPUs in use");
    let mut high = gpu_job("high", 1, 2);
    high.priority = 80;
    let eval = c.register(high);
    let (outcome, result) = c.process(&eval);
    let victims: Vec<String> = outcome
        .plan
        .node_preemptions
        .values()
        .flatten()
        .map(|p| c.snapshot().alloc(p.alloc_id).unwrap().job.id.to_string())
        .collect();
    assert_eq!(victims.len(), 2, "two 1-GPU victims free two GPUs: {victims:?}");
    assert!(victims.iter().all(|v| v == "low"), "lowest priority first: {victims:?}");
    assert_eq!(result.node_allocation.values().flatten().count(), 1);
    let snap = c.snapshot();
    for node in snap.nodes() {
        let live = snap.allocs_by_node(node.id).filter(|a| !a.is_terminal()).map(|a| &**a);
        usage_from_allocs(node, live).expect("no instance assigned twice after preemption");
    }
}
