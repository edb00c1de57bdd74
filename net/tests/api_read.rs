//! Read shapes: a node, an allocation and an eval from a simulated cluster,
//! rendered with Nomad's field names.

use caravan_engine::fixtures;
use caravan_engine::ids::JobKey;
use caravan_engine::model::JobType;
use caravan_engine::sim::SimCluster;
use caravan_net::api::{self, alloc_stub, alloc_to_api, eval_to_api, job_stub, job_summary, node_stub, node_to_api};
use expect_test::expect;

fn pretty<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_string_pretty(v).unwrap()
}

#[test]
fn node_alloc_and_eval_render_as_nomad() {
    let mut sim = SimCluster::new(7);
    let node = fixtures::gpu_node(&mut sim.ids, "gpu-1", "dc1", 2, 2);
    let node_id = sim.add_node(node);
    let mut job = fixtures::gpu_job("train", 1, 1);
    job.job_type = JobType::Batch;
    let eval = sim.register(job);
    sim.process(&eval);

    let snapshot = sim.snapshot();
    let node = snapshot.node(node_id).unwrap();
    expect_test::expect_file!["data/node.json"].assert_eq(&pretty(&node_to_api(node)));
    expect_test::expect_file!["data/node_stub.json"].assert_eq(&pretty(&node_stub(node)));

    let key = JobKey::new("default", "train");
    let allocs: Vec<_> = snapshot.allocs_by_job(&key).cloned().collect();
    assert_eq!(allocs.len(), 1);
    let alloc = &allocs[0];
    let mut rendered = serde_json::to_value(alloc_to_api(alloc, Some(node))).unwrap();
    // The embedded job is checked by api_job's tests; keep this one short.
    rendered["Job"] = serde_json::json!("...");
    expect_test::expect_file!["data/alloc.json"].assert_eq(&pretty(&rendered));
    let stub = alloc_stub(alloc, Some(node));
    assert_eq!(stub.name, "train.g[0]");
    assert_eq!(stub.client_status, "pending");
    assert_eq!(stub.desired_status, "run");

    let eval = snapshot.eval(eval.id).unwrap();
    expect_test::expect_file!["data/eval.json"].assert_eq(&pretty(&eval_to_api(eval)));

    let job = snapshot.job(&key).unwrap();
    let summary = job_summary(job, allocs.iter().map(|a| &**a), &Default::default());
    expect_test::expect_file!["data/job_stub.json"].assert_eq(&pretty(&job_stub(job, Some(summary))));
}

#[test]
fn blocked_eval_renders_failed_allocs_and_classes() {
    let mut sim = SimCluster::new(9);
    let node = fixtures::node(&mut sim.ids, "small", "dc1", 1000, 1024);
    sim.add_node(node);
    let eval = sim.register(fixtures::job("big", JobType::Service, 1, 500, 4096));
    let (outcome, _) = sim.process(&eval);
    let done = caravan_engine::scheduler::completed_eval(&eval, &outcome, 0, sim.now_ns);
    let mut rendered = eval_to_api(&done);
    assert!(rendered.failed_tg_allocs.contains_key("g"), "{rendered:?}");
    // Ids are random per seed; the shape is what matters here.
    rendered.id = "ID".into();
    rendered.blocked_eval = if rendered.blocked_eval.is_empty() { String::new() } else { "BLOCKED".into() };
    rendered.class_eligibility =
        rendered.class_eligibility.into_keys().map(|k| (format!("<{} hex digits>", k.len()), true)).collect();
    expect![[r#"
        {
          "ID": "ID",
          "Priority": 50,
          "Type": "service",
          "TriggeredBy": "job-register",
          "Namespace": "default",
          "JobID": "big",
          "JobModifyIndex": 0,
          "NodeID": "",
          "NodeModifyIndex": 0,
          "DeploymentID": "",
          "Status": "complete",
          "StatusDescription": "",
          "Wait": 0,
          "WaitUntil": "0001-01-01T00:00:00Z",
          "NextEval": "",
          "PreviousEval": "",
          "BlockedEval": "BLOCKED",
          "FailedTGAllocs": {
            "g": {
              "NodesEvaluated": 1,
              "NodesFiltered": 0,
              "NodesInPool": 1,
              "NodesAvailable": {
                "dc1": 1
              },
              "ClassFiltered": {},
              "ConstraintFiltered": {},
              "NodesExhausted": 1,
              "ClassExhausted": {
                "": 1
              },
              "DimensionExhausted": {
                "memory": 1
              },
              "AllocationTime": 0,
              "CoalescedFailures": 0
            }
          },
          "ClassEligibility": {},
          "EscapedComputedClass": false,
          "AnnotatePlan": false,
          "QueuedAllocations": {
            "g": 1
          },
          "SnapshotIndex": 0,
          "CreateIndex": 2,
          "ModifyIndex": 2,
          "CreateTime": 1700000000000000000,
          "ModifyTime": 1700000000000000000
        }"#]]
    .assert_eq(&pretty(&rendered));
}

#[test]
fn times_render_as_go_does() {
    assert_eq!(api::rfc3339(0), "0001-01-01T00:00:00Z");
    assert_eq!(api::rfc3339(1_700_000_000_000_000_000), "2023-11-14T22:13:20Z");
    assert_eq!(api::rfc3339(1_700_000_000_500_000_000), "2023-11-14T22:13:20.5Z");
    assert_eq!(api::rfc3339(-1), "1969-12-31T23:59:59.999999999Z");
}
