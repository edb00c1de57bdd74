//! Every jobspec in `examples/` parses, canonicalizes, validates and is
//! placed in full by the scheduler on a small simulated fleet.

use caravan_engine::fixtures::{gpu_node, node};
use caravan_engine::sim::SimCluster;
use caravan_net::{api, jobspec};

fn load(name: &str) -> caravan_engine::model::Job {
    let path = format!("{}/../examples/{name}", env!("CARGO_MANIFEST_DIR"));
    let source = std::fs::read_to_string(&path).unwrap();
    let json = jobspec::parse_jobspec(&source, &[], &[]).unwrap_or_else(|e| panic!("{name}: {e}"));
    api::decode_job_request(&serde_json::to_vec(&json).unwrap()).unwrap_or_else(|e| panic!("{name}: {e}"))
}

#[test]
fn examples_are_placed_in_full() {
    let mut c = SimCluster::new(1);
    for i in 0..4 {
        let mut n = node(&mut c.ids, &format!("n{i}"), "dc1", 8000, 16_384);
        n.attributes.insert("kernel.name".into(), "linux".into());
        n.compute_class();
        c.add_node(n);
    }
    for i in 0..4 {
        let mut n = gpu_node(&mut c.ids, &format!("gpu{i}"), "dc1", 8, 4);
        n.meta.insert("rack".into(), "r1".into());
        n.compute_class();
        c.add_node(n);
    }
    for name in ["hello.nomad.hcl", "web.nomad.hcl", "gpu-train.nomad.hcl"] {
        let job = load(name);
        let wanted: u32 = job.task_groups.iter().map(|g| g.count).sum();
        let eval = c.register(job);
        let (outcome, result) = c.process(&eval);
        let placed: usize = result.node_allocation.values().map(Vec::len).sum();
        assert_eq!(placed as u32, wanted, "{name}: {:?}", outcome.failed_tg_allocs);
    }
}

/// The periodic example is a template: registering it places nothing; a
/// launched child is placed in full.
#[test]
fn periodic_example_launches_children_that_are_placed() {
    use caravan_engine::{endpoints, ids::JobKey, model::SECOND_NS};
    let mut c = SimCluster::new(2);
    let n = node(&mut c.ids, "n0", "dc1", 8000, 16_384);
    c.add_node(n);
    let job = load("nightly-report.nomad.hcl");
    let periodic = job.periodic.clone().expect("a periodic block");
    assert_eq!(periodic.specs.len(), 2);
    assert_eq!(&*periodic.time_zone, "America/New_York");
    assert!(periodic.prohibit_overlap && periodic.enabled);
    let register = endpoints::register_job(job, c.now_ns, &mut c.ids).unwrap();
    c.commit(register);
    let key = JobKey::new("default", "nightly-report");
    let at = c.now_ns + 60 * SECOND_NS;
    let (launch, child) = endpoints::periodic_launch(&c.snapshot(), &key, at, true, at, &mut c.ids).unwrap();
    c.commit(launch);
    let child_key = JobKey::new("default", &child);
    let eval = (**c.snapshot().evals_by_job(&child_key).next().unwrap()).clone();
    let (_, result) = c.process(&eval);
    assert_eq!(result.node_allocation.values().map(Vec::len).sum::<usize>(), 1);
    assert_eq!(c.live_allocs(&key), 0, "the parent itself never runs");
}
