//! Scheduler behaviour, one scenario per test: a small cluster described in
//! code, the plan pretty-printed and compared with `expect!`.

use caravan_engine::fixtures::{job, node};
use caravan_engine::ids::JobKey;
use caravan_engine::model::*;
use caravan_engine::scheduler::describe_plan;
use caravan_engine::sim::SimCluster;
use expect_test::expect;

fn cluster(nodes: usize, cpu: u64, mem: u64) -> SimCluster {
    let mut c = SimCluster::new(7);
    for i in 0..nodes {
        let n = node(&mut c.ids, &format!("n{i}"), "dc1", cpu, mem);
        c.add_node(n);
    }
    c
}

fn plan_text(c: &SimCluster, eval: &Evaluation) -> String {
    let outcome = c.schedule(eval);
    describe_plan(&c.snapshot(), &outcome.plan)
}

#[test]
fn binpack_prefers_the_fuller_node() {
    let mut c = cluster(2, 4000, 4096);
    let eval = c.register(job("a", JobType::Service, 1, 1000, 512));
    c.process(&eval);
    let first = c.snapshot().allocs().next().unwrap().node_id;
    let eval = c.register(job("b", JobType::Service, 1, 1000, 512));
    let (outcome, _) = c.process(&eval);
    assert_eq!(outcome.plan.node_allocation.keys().next(), Some(&first));
}

#[test]
fn service_allocs_of_one_job_spread_by_anti_affinity() {
    let mut c = cluster(3, 4000, 4096);
    let eval = c.register(job("web", JobType::Service, 4, 1000, 512));
    expect![[r#"
        place   web.g[0] on n0
        place   web.g[1] on n2
        place   web.g[2] on n1
        place   web.g[3] on n0"#]]
    .assert_eq(&plan_text(&c, &eval));
}

#[test]
fn batch_places_count_and_blocks_on_exhaustion() {
    let mut c = cluster(2, 2000, 2048);
    let eval = c.register(job("b", JobType::Batch, 5, 1000, 512));
    let (outcome, result) = c.process(&eval);
    assert_eq!(result.node_allocation.values().map(Vec::len).sum::<usize>(), 4);
    let metric = &outcome.failed_tg_allocs["g"];
    expect![[r#"exhausted cpu on 2 nodes"#]].assert_eq(&metric.summary());
    assert_eq!(outcome.queued_allocations["g"], 1);
    let blocked = outcome.blocked_eval.expect("a blocked eval");
    assert_eq!(blocked.status, EvalStatus::Blocked);
    assert!(blocked.class_eligibility.values().all(|eligible| *eligible), "capacity, not constraints, failed");
}

#[test]
fn rerun_after_apply_is_a_no_op() {
    let mut c = cluster(3, 4000, 4096);
    let eval = c.register(job("web", JobType::Service, 5, 500, 256));
    c.process(&eval);
    let again = c.eval_for(&JobKey::new("default", "web"), TriggeredBy::JobRegister);
    assert_eq!(plan_text(&c, &again), "");
}

#[test]
fn constraint_filters_nodes_and_reports_it() {
    let mut c = cluster(2, 4000, 4096);
    let mut j = job("web", JobType::Service, 1, 100, 64);
    j.constraints.push(Constraint::new("${attr.kernel.name}", ConstraintOp::Equal, "windows"));
    let eval = c.register(j);
    let outcome = c.schedule(&eval);
    assert!(outcome.plan.node_allocation.is_empty());
    let metric = &outcome.failed_tg_allocs["g"];
    assert_eq!(metric.nodes_filtered, 2);
    expect![[r#"constraint ${attr.kernel.name} = windows filtered 2 nodes"#]].assert_eq(&metric.summary());
    let blocked = outcome.blocked_eval.expect("blocked");
    assert!(blocked.class_eligibility.values().all(|eligible| !*eligible));
}

#[test]
fn scale_down_stops_highest_indexes() {
    let mut c = cluster(2, 4000, 4096);
    let eval = c.register(job("web", JobType::Service, 4, 100, 64));
    c.process(&eval);
    let eval = c.register(job("web", JobType::Service, 2, 100, 64));
    expect![[r#"
        stop    web.g[2] on n0: alloc not needed due to job update
        stop    web.g[3] on n1: alloc not needed due to job update
        update  web.g[0] on n0
        update  web.g[1] on n1"#]]
    .assert_eq(&plan_text(&c, &eval));
}

#[test]
fn destructive_update_replaces_in_place_update_keeps() {
    let mut c = cluster(2, 4000, 4096);
    let eval = c.register(job("web", JobType::Service, 2, 100, 64));
    c.process(&eval);
    let mut j = job("web", JobType::Service, 2, 100, 64);
    j.task_groups[0].tasks[0].env.insert("V".into(), "2".into());
    let eval = c.register(j);
    let outcome = c.schedule(&eval);
    assert_eq!(outcome.desired_updates["g"].destructive_update, 2);
    assert_eq!(outcome.plan.stop_count(), 2);
    let mut j = job("web", JobType::Service, 2, 100, 64);
    j.meta.insert("owner".into(), "team-a".into());
    let eval = c.register(j);
    let outcome = c.schedule(&eval);
    assert_eq!(outcome.desired_updates["g"].in_place_update, 2);
    assert_eq!(outcome.plan.stop_count(), 0);
}

#[test]
fn lost_allocs_are_replaced_on_other_nodes() {
    let mut c = cluster(2, 1000, 4096);
    let eval = c.register(job("web", JobType::Service, 2, 600, 64));
    c.process(&eval);
    let snap = c.snapshot();
    let victim = snap.allocs().next().unwrap().node_id;
    c.set_node_status(victim, NodeStatus::Down);
    // One 600 MHz task per 1000 MHz node: the replacement has nowhere to go.
    let eval = c.eval_for(&JobKey::new("default", "web"), TriggeredBy::NodeUpdate);
    let outcome = c.schedule(&eval);
    assert_eq!(outcome.desired_updates["g"].lost, 1);
    assert_eq!(outcome.plan.stop_count(), 1);
    assert_eq!(outcome.plan.alloc_count(), 0);
    assert!(outcome.blocked_eval.is_some());
    let fresh = node(&mut c.ids, "n9", "dc1", 1000, 4096);
    c.add_node(fresh);
    let text = plan_text(&c, &eval);
    assert!(text.contains("replace web.g["), "{text}");
    assert!(text.contains("on n9"), "{text}");
    assert!(text.contains("(lost)"), "{text}");
}

#[test]
fn drain_migrates_allocations() {
    let mut c = cluster(2, 4000, 4096);
    let eval = c.register(job("web", JobType::Service, 1, 100, 64));
    c.process(&eval);
    let on = c.snapshot().allocs().next().unwrap().node_id;
    c.drain(on);
    let eval = c.eval_for(&JobKey::new("default", "web"), TriggeredBy::NodeDrain);
    let outcome = c.schedule(&eval);
    assert_eq!(outcome.desired_updates["g"].migrate, 1);
    let placed = outcome.plan.node_allocation.keys().next().copied().unwrap();
    assert_ne!(placed, on, "never placed on the draining node");
}

#[test]
fn failed_batch_alloc_reschedules_after_delay() {
    let mut c = cluster(2, 4000, 4096);
    let eval = c.register(job("b", JobType::Batch, 1, 100, 64));
    c.process(&eval);
    let alloc = c.snapshot().allocs().next().unwrap().clone();
    c.client_update(alloc.id, ClientStatus::Failed);
    // Batch default: 1 attempt per 24 h, 5 s constant delay.
    let eval = c.eval_for(&JobKey::new("default", "b"), TriggeredBy::RetryFailedAlloc);
    let outcome = c.schedule(&eval);
    assert_eq!(outcome.followup_evals.len(), 1, "not yet: a follow-up eval waits for the delay");
    assert!(outcome.followup_evals[0].wait_until_ns > c.now_ns);
    c.apply(&outcome);
    c.advance(6 * SECOND_NS);
    let eval = c.eval_for(&JobKey::new("default", "b"), TriggeredBy::RetryFailedAlloc);
    let outcome = c.schedule(&eval);
    let replacement = outcome
        .plan
        .node_allocation
        .values()
        .flatten()
        .find(|a| a.previous_alloc == Some(alloc.id))
        .expect("rescheduled");
    assert_eq!(replacement.reschedule_tracker.as_ref().unwrap().events.len(), 1);
    assert_ne!(replacement.node_id, alloc.node_id, "the reschedule penalty steers away from the failed node");
    c.apply(&outcome);
    let again = c.snapshot().alloc(replacement.id).unwrap().clone();
    c.client_update(again.id, ClientStatus::Failed);
    c.advance(60 * SECOND_NS);
    let eval = c.eval_for(&JobKey::new("default", "b"), TriggeredBy::RetryFailedAlloc);
    let outcome = c.schedule(&eval);
    assert!(outcome.plan.node_allocation.is_empty(), "one attempt per day: the second failure stands");
}

#[test]
fn completed_batch_allocs_are_not_replaced() {
    let mut c = cluster(1, 4000, 4096);
    let eval = c.register(job("b", JobType::Batch, 2, 100, 64));
    c.process(&eval);
    for a in c.snapshot().allocs().map(|a| a.id).collect::<Vec<_>>() {
        c.client_update(a, ClientStatus::Complete);
    }
    let eval = c.eval_for(&JobKey::new("default", "b"), TriggeredBy::NodeUpdate);
    assert_eq!(plan_text(&c, &eval), "");
    assert_eq!(c.snapshot().job(&JobKey::new("default", "b")).unwrap().status, JobStatus::Dead);
}

#[test]
fn stopped_job_stops_everything() {
    let mut c = cluster(1, 4000, 4096);
    let eval = c.register(job("web", JobType::Service, 2, 100, 64));
    c.process(&eval);
    let key = JobKey::new("default", "web");
    c.commit(caravan_engine::fsm::Command::JobDeregister { key: key.clone(), purge: false, eval: None, now_ns: 0 });
    let eval = c.eval_for(&key, TriggeredBy::JobDeregister);
    let (outcome, _) = c.process(&eval);
    assert_eq!(outcome.plan.stop_count(), 2);
    assert_eq!(c.live_allocs(&key), 0);
}

#[test]
fn distinct_hosts_puts_each_alloc_on_its_own_node() {
    let mut c = cluster(3, 8000, 8192);
    let mut j = job("web", JobType::Service, 4, 100, 64);
    j.constraints.push(Constraint::new("", ConstraintOp::DistinctHosts, "true"));
    let eval = c.register(j);
    let outcome = c.schedule(&eval);
    assert_eq!(outcome.plan.node_allocation.len(), 3);
    assert_eq!(outcome.plan.alloc_count(), 3);
    assert_eq!(outcome.queued_allocations["g"], 1);
}

#[test]
fn static_ports_never_collide() {
    let mut c = cluster(2, 8000, 8192);
    let mut j = job("web", JobType::Service, 3, 100, 64);
    j.task_groups[0].ports.push(PortRequest { label: "http".into(), static_port: Some(8080), to: 0 });
    j.task_groups[0].ports.push(PortRequest { label: "admin".into(), static_port: None, to: 0 });
    let eval = c.register(j);
    let (outcome, _) = c.process(&eval);
    assert_eq!(outcome.plan.node_allocation.len(), 2, "one per node: port 8080 is taken after that");
    assert_eq!(outcome.queued_allocations["g"], 1);
    expect![[r#"reserved port collision http=8080"#]]
        .assert_eq(outcome.failed_tg_allocs["g"].dimension_exhausted.keys().next().unwrap());
}

#[test]
fn system_job_runs_on_every_eligible_node() {
    let mut c = cluster(3, 4000, 4096);
    let ids: Vec<_> = c.snapshot().nodes().map(|n| n.id).collect();
    c.commit(caravan_engine::fsm::Command::NodeEligibilityUpdate {
        node_id: ids[0],
        eligibility: SchedulingEligibility::Ineligible,
        evals: vec![],
        now_ns: 0,
    });
    let eval = c.register(job("agent", JobType::System, 1, 100, 64));
    let (outcome, _) = c.process(&eval);
    assert_eq!(outcome.plan.alloc_count(), 2);
    assert!(!outcome.plan.node_allocation.contains_key(&ids[0]));
    let extra = node(&mut c.ids, "n-new", "dc1", 4000, 4096);
    c.add_node(extra);
    let eval = c.eval_for(&JobKey::new("default", "agent"), TriggeredBy::NodeUpdate);
    expect![[r#"place   agent.g[0] on n-new"#]].assert_eq(&plan_text(&c, &eval));
}

#[test]
fn system_job_preempts_lower_priority_work() {
    let mut c = cluster(1, 2000, 4096);
    let mut low = job("low", JobType::Service, 2, 1000, 64);
    low.priority = 20;
    let eval = c.register(low);
    c.process(&eval);
    let mut sys = job("agent", JobType::System, 1, 800, 64);
    sys.priority = 80;
    let eval = c.register(sys);
    let (outcome, result) = c.process(&eval);
    assert_eq!(outcome.plan.node_preemptions.values().map(Vec::len).sum::<usize>(), 1, "one victim is enough");
    assert_eq!(result.node_allocation.len(), 1);
    assert_eq!(c.live_allocs(&JobKey::new("default", "low")), 1);
}

#[test]
fn gang_group_places_all_or_nothing() {
    let mut c = cluster(3, 1000, 4096);
    let mut j = job("train", JobType::Batch, 4, 1000, 64);
    j.task_groups[0].gang = true;
    let eval = c.register(j);
    let outcome = c.schedule(&eval);
    assert!(outcome.plan.node_allocation.is_empty(), "3 nodes cannot hold 4: place none");
    assert_eq!(outcome.queued_allocations["g"], 4);
    assert!(outcome.blocked_eval.is_some());
    let extra = node(&mut c.ids, "n3", "dc1", 1000, 4096);
    c.add_node(extra);
    let outcome = c.schedule(&eval);
    assert_eq!(outcome.plan.alloc_count(), 4);
}

#[test]
fn same_inputs_same_plan() {
    let mut c = cluster(50, 4000, 4096);
    let eval = c.register(job("web", JobType::Service, 30, 300, 128));
    let a = plan_text(&c, &eval);
    let b = plan_text(&c, &eval);
    assert_eq!(a, b);
    assert_eq!(a.lines().count(), 30);
}

#[test]
fn affinity_steers_placements() {
    let mut c = SimCluster::new(7);
    for i in 0..6 {
        let mut n = node(&mut c.ids, &format!("n{i}"), "dc1", 8000, 8192);
        n.meta.insert("rack".into(), if i < 3 { "r1" } else { "r2" }.into());
        n.compute_class();
        c.add_node(n);
    }
    let mut j = job("web", JobType::Service, 3, 100, 64);
    j.affinities.push(Affinity {
        l_target: "${meta.rack}".into(),
        r_target: "r2".into(),
        operand: ConstraintOp::Equal,
        weight: 100,
    });
    let eval = c.register(j);
    let outcome = c.schedule(&eval);
    let snap = c.snapshot();
    for node_id in outcome.plan.node_allocation.keys() {
        assert_eq!(&*snap.node(*node_id).unwrap().meta["rack"], "r2");
    }
}

#[test]
fn spread_targets_split_placements() {
    let mut c = SimCluster::new(7);
    // Enough nodes per datacenter that every allocation can have its own:
    // job anti-affinity then does not compete with the spread.
    for i in 0..24 {
        let dc = if i % 2 == 0 { "east" } else { "west" };
        let n = node(&mut c.ids, &format!("n{i}"), dc, 16_000, 16_384);
        c.add_node(n);
    }
    let mut j = job("web", JobType::Service, 10, 100, 64);
    j.spreads.push(Spread {
        attribute: "${node.datacenter}".into(),
        weight: 100,
        targets: vec![
            SpreadTarget { value: "east".into(), percent: 70 },
            SpreadTarget { value: "west".into(), percent: 30 },
        ],
    });
    let eval = c.register(j);
    let outcome = c.schedule(&eval);
    let snap = c.snapshot();
    let east = outcome
        .plan
        .node_allocation
        .iter()
        .filter(|(n, _)| &*snap.node(**n).unwrap().datacenter.text() == "east")
        .map(|(_, a)| a.len())
        .sum::<usize>();
    assert_eq!(outcome.plan.alloc_count(), 10);
    assert_eq!(east, 7, "70% of 10 in east");
}

#[test]
fn all_at_once_commits_whole_or_nothing() {
    let mut c = cluster(2, 1000, 4096);
    let mut a = job("a", JobType::Batch, 2, 600, 64);
    a.all_at_once = true;
    let mut b = job("b", JobType::Batch, 2, 600, 64);
    b.all_at_once = true;
    let eval_a = c.register(a);
    let eval_b = c.register(b);
    // Both plan against the same snapshot; `a` commits first.
    let plan_a = c.schedule(&eval_a);
    let plan_b = c.schedule(&eval_b);
    assert_eq!(c.apply(&plan_a).alloc_count_committed(), 2);
    let result_b = c.apply(&plan_b);
    assert!(result_b.node_allocation.is_empty(), "nothing of an all-at-once plan commits when a node does not fit");
    assert_eq!(result_b.rejected_nodes.len(), 2);
}

#[test]
fn multi_gpu_request_takes_one_island() {
    let mut c = SimCluster::new(7);
    let mut n = node(&mut c.ids, "gpu0", "dc1", 64_000, 512 * 1024);
    let instances = (0..8)
        .map(|i| DeviceInstance {
            id: format!("GPU-{i}").into(),
            healthy: true,
            health_description: "".into(),
            pci_bus_id: None,
            numa_node: Some(i / 4),
            link_island: Some(i / 4),
        })
        .collect();
    n.resources.devices.push(NodeDeviceResource {
        vendor: "nvidia".into(),
        kind: "gpu".into(),
        name: "NVIDIA H200".into(),
        attributes: Default::default(),
        instances,
    });
    n.compute_class();
    c.add_node(n);
    let mut one = job("one", JobType::Batch, 1, 100, 64);
    one.task_groups[0].tasks[0].resources.devices.push(DeviceRequest {
        name: "nvidia/gpu".into(),
        count: 1,
        constraints: vec![],
        affinities: vec![],
    });
    let eval = c.register(one);
    c.process(&eval);
    let mut two = job("two", JobType::Batch, 1, 100, 64);
    two.task_groups[0].tasks[0].resources.devices.push(DeviceRequest {
        name: "nvidia/gpu".into(),
        count: 2,
        constraints: vec![],
        affinities: vec![],
    });
    let eval = c.register(two);
    let (outcome, _) = c.process(&eval);
    let alloc = outcome.plan.node_allocation.values().flatten().next().expect("placed");
    let ids: Vec<&str> = alloc.resources.devices[0].instance_ids.iter().map(|s| &**s).collect();
    // The single GPU went to one island; the pair goes to the same, partly
    // used island (tightest fit), keeping the other island whole.
    let used: Vec<String> = c
        .snapshot()
        .allocs()
        .flat_map(|a| a.resources.devices.iter().flat_map(|d| d.instance_ids.iter().map(|s| s.to_string())))
        .collect();
    assert_eq!(used.len(), 3);
    let island = |id: &str| id.trim_start_matches("GPU-").parse::<u16>().unwrap() / 4;
    assert_eq!(island(ids[0]), island(ids[1]), "one island: {ids:?}");
    assert!(used.iter().all(|u| island(u) == island(ids[0])), "tightest fit keeps the other island free: {used:?}");
}
