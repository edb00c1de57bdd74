//! Deployments and the job actions built on job versions, on the
//! deterministic single-threaded cluster: a service version rolls out under
//! a deployment in `max_parallel` batches (canaries first when asked), paced
//! and settled by the health clients report; the leader's deployment
//! watcher fails a deployment that misses its progress deadline and rolls
//! back to the stable version; revert, stability, scale, deployment actions
//! and node purge are commands built from the state, and a refused one
//! changes nothing.

use caravan_engine::endpoints::{self, DeploymentAction, EndpointError};
use caravan_engine::fixtures::{job, node};
use caravan_engine::fsm::Command;
use caravan_engine::ids::{IdGen, JobKey};
use caravan_engine::model::*;
use caravan_engine::sim::SimCluster;
use expect_test::{Expect, expect};

fn service(count: u32, memory_mb: u32) -> Job {
    let mut j = job("web", JobType::Service, count, 100, memory_mb);
    j.task_groups[0].update = Some(UpdateStrategy::default());
    j
}

fn cluster() -> (SimCluster, JobKey) {
    let mut c = SimCluster::new(5);
    for i in 0..2 {
        let n = node(&mut c.ids, &format!("n{i}"), "dc1", 4000, 4096);
        c.add_node(n);
    }
    (c, JobKey::new("default", "web"))
}

/// The clients report every live allocation still undecided in a
/// deployment healthy, and the evals that creates run, until nothing is
/// left to report: a rollout carried to its end.
fn run_all(c: &mut SimCluster, key: &JobKey) {
    for _round in 0..32 {
        let undecided: Vec<_> = c
            .snapshot()
            .allocs_by_job(key)
            .filter(|a| !a.is_terminal() && a.deployment_id.is_some() && a.deployment_healthy().is_none())
            .map(|a| a.id)
            .collect();
        if undecided.is_empty() {
            return;
        }
        for id in undecided {
            for eval in c.report_health(id, true) {
                c.process(&eval);
            }
        }
    }
    panic!("rollout did not settle");
}

/// Report these allocations (un)healthy and run the evals that creates.
fn report(c: &mut SimCluster, ids: &[caravan_engine::ids::AllocId], healthy: bool) {
    for id in ids {
        for eval in c.report_health(*id, healthy) {
            c.process(&eval);
        }
    }
}

/// One line on where a job's rollout stands: live allocations per version
/// (healthy, canaries), the latest deployment and the stable versions.
fn rollout(c: &SimCluster, key: &JobKey) -> String {
    let snap = c.snapshot();
    let mut versions: std::collections::BTreeMap<u64, (usize, usize, usize)> = Default::default();
    for a in snap.allocs_by_job(key).filter(|a| !a.is_terminal()) {
        let v = versions.entry(a.job.version).or_default();
        v.0 += 1;
        v.1 += usize::from(a.deployment_healthy() == Some(true));
        v.2 += usize::from(a.is_canary());
    }
    let live: Vec<String> =
        versions.iter().map(|(v, (n, h, c))| format!("v{v}: {n} ({h} healthy, {c} canary)")).collect();
    let d = snap.latest_deployment(key).map_or("none".to_string(), |d| {
        format!("v{} {} {:?}", d.job_version, d.status.as_str(), &*d.status_description)
    });
    let stable: Vec<String> =
        snap.job_versions(key).iter().filter(|j| j.stable).map(|j| format!("v{}", j.version)).collect();
    format!("{} | {d} | stable {}", live.join(", "), stable.join(","))
}

/// The job's live allocations of `version` not yet decided healthy.
fn undecided(c: &SimCluster, key: &JobKey, version: u64) -> Vec<caravan_engine::ids::AllocId> {
    let mut ids: Vec<_> = c
        .snapshot()
        .allocs_by_job(key)
        .filter(|a| !a.is_terminal() && a.job.version == version && a.deployment_healthy().is_none())
        .map(|a| a.id)
        .collect();
    ids.sort();
    ids
}

fn rolling(count: u32, memory_mb: u32, update: UpdateStrategy) -> Job {
    let mut j = job("web", JobType::Service, count, 100, memory_mb);
    j.task_groups[0].update = Some(update);
    j
}

/// A version 0 of `count` rolled out, healthy and stable.
fn deployed(update: &UpdateStrategy, count: u32) -> (SimCluster, JobKey) {
    let (mut c, key) = cluster();
    let eval = c.register(rolling(count, 64, update.clone()));
    c.process(&eval);
    run_all(&mut c, &key);
    (c, key)
}

fn check(trace: &str, want: Expect) {
    want.assert_eq(trace);
}

#[test]
fn a_service_version_rolls_out_under_a_deployment() {
    let (mut c, key) = cluster();
    let eval = c.register(service(2, 64));
    c.process(&eval);
    let snap = c.snapshot();
    let d = snap.latest_deployment(&key).expect("version 0 is deployed").clone();
    assert_eq!((d.job_version, d.status), (0, DeploymentStatus::Running));
    assert!(snap.allocs_by_job(&key).all(|a| a.deployment_id == Some(d.id)));

    run_all(&mut c, &key);
    let snap = c.snapshot();
    let d = snap.deployment(d.id).unwrap();
    assert_eq!(d.status, DeploymentStatus::Successful);
    assert!(snap.job(&key).unwrap().stable, "a successful deployment marks its version stable");

    // Version 1 gets its own deployment; one failed allocation fails it.
    let eval = c.register(service(2, 128));
    c.process(&eval);
    let d1 = c.snapshot().latest_deployment(&key).unwrap().clone();
    assert_ne!(d1.id, d.id);
    assert_eq!(d1.job_version, 1);
    let first = c.snapshot().allocs_by_job(&key).find(|a| a.deployment_id == Some(d1.id)).unwrap().id;
    c.report_health(first, false);
    assert_eq!(c.snapshot().deployment(d1.id).unwrap().status, DeploymentStatus::Failed);

    // Jobs without an update strategy (and batch jobs) have no deployments.
    let eval = c.register(job("batch", JobType::Batch, 1, 100, 64));
    c.process(&eval);
    assert!(c.snapshot().latest_deployment(&JobKey::new("default", "batch")).is_none());
}

#[test]
fn deployment_actions_follow_its_status() {
    let (mut c, key) = cluster();
    let eval = c.register(service(2, 64));
    c.process(&eval);
    let id = c.snapshot().latest_deployment(&key).unwrap().id;
    let mut ids = IdGen::with_seed(1);
    let pause = endpoints::update_deployment(&c.snapshot(), id, DeploymentAction::Pause, 0, &mut ids).unwrap();
    assert!(matches!(&pause, Command::DeploymentStatusUpdate { evals, .. } if evals.is_empty()));
    c.commit(pause);
    assert_eq!(c.snapshot().deployment(id).unwrap().status, DeploymentStatus::Paused);
    for alloc in undecided(&c, &key, 0) {
        c.report_health(alloc, true);
    }
    assert_eq!(c.snapshot().deployment(id).unwrap().status, DeploymentStatus::Paused, "a paused deployment waits");
    let resume = endpoints::update_deployment(&c.snapshot(), id, DeploymentAction::Resume, 0, &mut ids).unwrap();
    c.commit(resume);
    assert_eq!(
        c.snapshot().deployment(id).unwrap().status,
        DeploymentStatus::Successful,
        "resumed with every allocation healthy: done"
    );
    let eval = c.register(service(2, 128));
    c.process(&eval);
    let id = c.snapshot().latest_deployment(&key).unwrap().id;
    let fail = endpoints::update_deployment(&c.snapshot(), id, DeploymentAction::Fail, 0, &mut ids).unwrap();
    assert!(matches!(&fail, Command::DeploymentStatusUpdate { evals, .. } if evals.len() == 1));
    c.commit(fail);
    assert_eq!(c.snapshot().deployment(id).unwrap().status, DeploymentStatus::Failed);
    let again = endpoints::update_deployment(&c.snapshot(), id, DeploymentAction::Resume, 0, &mut ids);
    assert!(matches!(again, Err(EndpointError::Refused(_))));
    assert!(matches!(
        endpoints::promote_deployment(&c.snapshot(), id, vec![], 0, &mut ids),
        Err(EndpointError::Refused(_))
    ));
}

#[test]
fn revert_stability_scale_and_purge() {
    let (mut c, key) = cluster();
    let eval = c.register(service(1, 64));
    c.process(&eval);
    let eval = c.register(service(1, 128));
    c.process(&eval);
    let mut ids = IdGen::with_seed(2);
    let snap = c.snapshot();
    assert!(matches!(endpoints::revert_job(&snap, &key, 1, None, 0, &mut ids), Err(EndpointError::Refused(_))));
    assert!(matches!(endpoints::revert_job(&snap, &key, 0, Some(0), 0, &mut ids), Err(EndpointError::Refused(_))));
    assert!(matches!(
        endpoints::revert_job(&snap, &key, 7, None, 0, &mut ids),
        Err(EndpointError::JobVersionNotFound(_, 7))
    ));
    let revert = endpoints::revert_job(&snap, &key, 0, Some(1), 0, &mut ids).unwrap();
    c.commit(revert);
    let reverted = c.snapshot().job(&key).unwrap().clone();
    assert_eq!(reverted.version, 2);
    assert_eq!(reverted.task_groups[0].tasks[0].resources.memory_mb, 64);

    // Stability of an old version; a missing version is refused on apply
    // and changes nothing.
    c.commit(endpoints::set_job_stability(&c.snapshot(), &key, 0, true).unwrap());
    assert!(c.snapshot().job_version(&key, 0).unwrap().stable);
    assert!(!c.snapshot().job(&key).unwrap().stable);
    let before = c.snapshot();
    let missing = Command::JobStability { key: key.clone(), version: 9, stable: true };
    assert!(c.fsm.apply(before.index() + 1, &missing).is_err());
    assert_eq!(c.snapshot().job_versions(&key), before.job_versions(&key));

    // Scale: refused while the job's deployment is active, as in Nomad.
    let request = |count: Option<u32>, group: &str| endpoints::ScaleRequest {
        group: group.into(),
        count,
        message: "more".into(),
        error: false,
        meta_json: "".into(),
    };
    let active = c.snapshot().latest_deployment(&key).unwrap().clone();
    assert!(active.status.is_active());
    assert!(matches!(
        endpoints::scale_job(&c.snapshot(), &key, &request(Some(3), "g"), 0, &mut ids),
        Err(EndpointError::Refused(reason)) if reason.contains("active deployment")
    ));
    let fail = endpoints::update_deployment(&c.snapshot(), active.id, DeploymentAction::Fail, 0, &mut ids).unwrap();
    c.commit(fail);

    // Then a new version with the count, a job-scaling eval, and the event.
    let scale = endpoints::scale_job(&c.snapshot(), &key, &request(Some(3), "g"), 5, &mut ids).unwrap();
    let Command::JobScale { eval: Some(eval), event, .. } = &scale else { panic!("scale registers: {scale:?}") };
    assert_eq!(eval.triggered_by, TriggeredBy::JobScaling);
    assert_eq!((event.count, event.previous_count, event.eval_id), (Some(3), 1, Some(eval.id)));
    let eval = eval.clone();
    c.commit(scale);
    c.process(&eval);
    assert_eq!(c.snapshot().job(&key).unwrap().task_groups[0].count, 3);
    assert_eq!(c.live_allocs(&key), 3);
    assert!(matches!(
        endpoints::scale_job(&c.snapshot(), &key, &request(Some(1), "nope"), 0, &mut ids),
        Err(EndpointError::Refused(_))
    ));
    // An error event carries no count and changes no count.
    let mut report = request(None, "g");
    report.error = true;
    let mut bad = report.clone();
    bad.count = Some(2);
    assert!(matches!(endpoints::scale_job(&c.snapshot(), &key, &bad, 0, &mut ids), Err(EndpointError::Refused(_))));
    let version = c.snapshot().job(&key).unwrap().version;
    let only_event = endpoints::scale_job(&c.snapshot(), &key, &report, 6, &mut ids).unwrap();
    assert!(matches!(&only_event, Command::JobScale { job: None, eval: None, .. }));
    c.commit(only_event);
    let snap = c.snapshot();
    assert_eq!(snap.job(&key).unwrap().version, version);
    let events = snap.scaling_events(&key).unwrap().group("g").to_vec();
    assert_eq!(events.len(), 2, "{events:?}");
    assert!(events[0].error && events[0].count.is_none() && events[0].previous_count == 3, "newest first");
    assert_eq!(events[1].count, Some(3));
    assert!(events[0].create_index > events[1].create_index);

    // Purge a node: its allocations are lost and replaced elsewhere.
    let snap = c.snapshot();
    let victim = snap.allocs_by_job(&key).find(|a| !a.is_terminal()).unwrap().clone();
    let purge = endpoints::purge_node(&snap, victim.node_id, 0, &mut ids).unwrap();
    let Command::NodeDeregister { evals, .. } = &purge else { panic!("purge deregisters: {purge:?}") };
    assert_eq!(evals.len(), 1);
    let eval = evals[0].clone();
    c.commit(purge);
    c.process(&eval);
    let snap = c.snapshot();
    assert!(snap.node(victim.node_id).is_none());
    assert_eq!(snap.alloc(victim.id).unwrap().client_status, ClientStatus::Lost);
    assert_eq!(c.live_allocs(&key), 3);

    // Scaling events are bounded per group, and go with a purged job.
    for _ in 0..SCALING_EVENTS_KEPT + 5 {
        c.commit(endpoints::scale_job(&c.snapshot(), &key, &report, 7, &mut ids).unwrap());
    }
    assert_eq!(c.snapshot().scaling_events(&key).unwrap().group("g").len(), SCALING_EVENTS_KEPT);
    c.commit(Command::JobDeregister { key: key.clone(), purge: true, eval: None, now_ns: 8 });
    assert!(c.snapshot().scaling_events(&key).is_none());
}

/// The state's per-deployment health tally, recounted from the allocations.
fn assert_health_matches_allocs(snap: &caravan_engine::state::State) {
    for d in snap.deployments() {
        let mut recount = caravan_engine::state::DeploymentHealth::default();
        for a in snap.allocs().filter(|a| a.deployment_id == Some(d.id)) {
            recount.placed += 1;
            recount.healthy += u64::from(a.deployment_healthy() == Some(true));
            recount.unhealthy += u64::from(a.deployment_healthy() == Some(false));
        }
        assert_eq!(snap.deployment_health(d.id), recount, "deployment {} health drifted", d.id);
    }
}

#[test]
fn deployment_health_follows_every_allocation_write() {
    let (mut c, key) = cluster();
    let eval = c.register(service(3, 64));
    c.process(&eval);
    let d = c.snapshot().latest_deployment(&key).unwrap().id;
    let ids: Vec<_> = c.snapshot().allocs_by_job(&key).map(|a| a.id).collect();
    let placed_only = caravan_engine::state::DeploymentHealth { placed: 3, ..Default::default() };
    assert_eq!(c.snapshot().deployment_health(d), placed_only);

    // Running is not healthy: only the client's health decision counts.
    c.client_update(ids[0], ClientStatus::Running);
    assert_eq!(c.snapshot().deployment_health(d).healthy, 0);
    report(&mut c, &ids[..2], true);
    assert_eq!(c.snapshot().deployment_health(d).healthy, 2);
    assert_eq!(c.snapshot().deployment(d).unwrap().status, DeploymentStatus::Running, "2 of 3 healthy");
    assert_health_matches_allocs(&c.snapshot());

    // A decision stands: a second report changes nothing. A failed
    // allocation stays healthy in its deployment's count.
    report(&mut c, &[ids[1]], false);
    c.client_update(ids[1], ClientStatus::Failed);
    assert_eq!(c.snapshot().deployment_health(d).healthy, 2);
    assert_health_matches_allocs(&c.snapshot());

    // The third unhealthy fails the deployment.
    report(&mut c, &[ids[2]], false);
    let health = c.snapshot().deployment_health(d);
    assert_eq!((health.healthy, health.unhealthy), (2, 1));
    assert_eq!(c.snapshot().deployment(d).unwrap().status, DeploymentStatus::Failed);
    assert_health_matches_allocs(&c.snapshot());

    // A new version's deployment starts at 0 and counts its own.
    let eval = c.register(service(3, 128));
    c.process(&eval);
    let d1 = c.snapshot().latest_deployment(&key).unwrap().id;
    assert_ne!(d1, d);
    let health = c.snapshot().deployment_health(d1);
    assert_eq!((health.healthy, health.unhealthy), (0, 0));
    run_all(&mut c, &key);
    // The failed allocation (no reschedule policy) stays failed; the two
    // running are replaced.
    let placed = c.snapshot().allocs_by_job(&key).filter(|a| a.deployment_id == Some(d1)).count();
    assert_eq!(placed, 2);
    assert_eq!(c.snapshot().deployment_health(d1).healthy, 2);
    assert_health_matches_allocs(&c.snapshot());
}

#[test]
fn health_reports_share_a_waiting_eval_and_one_seen_too_late_gets_its_own() {
    // A rolling update of 4, two at a time: after the first batch, two more
    // wait for health.
    let update = UpdateStrategy { max_parallel: 2, ..UpdateStrategy::default() };
    let (mut c, key) = deployed(&update, 4);
    let eval = c.register(rolling(4, 128, update));
    c.process(&eval);
    let batch = undecided(&c, &key, 1);
    assert_eq!(batch.len(), 2);

    // The first report makes an eval; while it waits to run, the next
    // report needs none: it will read both when it runs.
    let first = c.report_health(batch[0], true);
    assert_eq!(first.len(), 1);
    assert_eq!(first[0].triggered_by, TriggeredBy::DeploymentWatcher);
    assert!(c.report_health(batch[1], true).is_empty(), "an eval already waits to run");
    assert!(c.watch_deployments().is_empty(), "nor does the watcher add one");

    // That eval was scheduled on a snapshot taken before the second report
    // (a worker had it already): the watcher catches up, once.
    let mut done = first[0].clone();
    done.status = EvalStatus::Complete;
    done.snapshot_index = c.snapshot().alloc(batch[1]).unwrap().deployment_status.as_ref().unwrap().modify_index - 1;
    c.commit(Command::EvalUpsert { evals: vec![done] });
    let caught_up = c.watch_deployments();
    assert_eq!(caught_up.len(), 1, "the second report was never evaluated");
    assert_eq!(caught_up[0].triggered_by, TriggeredBy::DeploymentWatcher);
    assert!(c.watch_deployments().is_empty(), "its eval waits to run");

    // It places the last two; once they are placed, health has nothing
    // left to move on: the reports settle the deployment without evals.
    let (outcome, _) = c.process(&caught_up[0]);
    assert_eq!(outcome.desired_updates["g"].destructive_update, 2);
    assert!(c.watch_deployments().is_empty());
    for id in undecided(&c, &key, 1) {
        assert!(c.report_health(id, true).is_empty(), "everything is placed");
    }
    let d = c.snapshot().latest_deployment(&key).unwrap().clone();
    assert_eq!(d.status, DeploymentStatus::Successful);
}

#[test]
fn a_rolling_update_replaces_max_parallel_at_a_time() {
    let update = UpdateStrategy { max_parallel: 2, ..UpdateStrategy::default() };
    let (mut c, key) = deployed(&update, 5);
    let mut trace = vec![rollout(&c, &key)];
    let eval = c.register(rolling(5, 128, update));
    let (outcome, _) = c.process(&eval);
    assert_eq!(outcome.desired_updates["g"].destructive_update, 2);
    trace.push(rollout(&c, &key));
    // Nothing healthy yet: another eval places nothing more.
    let eval = c.eval_for(&key, TriggeredBy::JobRegister);
    c.process(&eval);
    trace.push(rollout(&c, &key));
    // One healthy: one more; then the rest of the batch.
    while !undecided(&c, &key, 1).is_empty() {
        let next = undecided(&c, &key, 1)[0];
        report(&mut c, &[next], true);
        trace.push(rollout(&c, &key));
    }
    check(
        &trace.join("\n"),
        expect![[r#"
            v0: 5 (5 healthy, 0 canary) | v0 successful "Deployment completed successfully" | stable v0
            v0: 3 (3 healthy, 0 canary), v1: 2 (0 healthy, 0 canary) | v1 running "Deployment is running" | stable v0
            v0: 3 (3 healthy, 0 canary), v1: 2 (0 healthy, 0 canary) | v1 running "Deployment is running" | stable v0
            v0: 2 (2 healthy, 0 canary), v1: 3 (1 healthy, 0 canary) | v1 running "Deployment is running" | stable v0
            v0: 1 (1 healthy, 0 canary), v1: 4 (2 healthy, 0 canary) | v1 running "Deployment is running" | stable v0
            v1: 5 (3 healthy, 0 canary) | v1 running "Deployment is running" | stable v0
            v1: 5 (4 healthy, 0 canary) | v1 running "Deployment is running" | stable v0
            v1: 5 (5 healthy, 0 canary) | v1 successful "Deployment completed successfully" | stable v1,v0"#]],
    );
    let d = c.snapshot().latest_deployment(&key).unwrap().clone();
    let snap = c.snapshot();
    let watcher_evals = snap
        .evals_by_job(&key)
        .filter(|e| e.triggered_by == TriggeredBy::DeploymentWatcher && e.deployment_id == Some(d.id));
    // Each report while allocations were left to place made an eval; the
    // last two, with all five placed, only settled the deployment.
    assert_eq!(watcher_evals.count(), 3, "one deployment-watcher eval per report that could move the rollout");
}

#[test]
fn scaling_up_is_not_paced() {
    let update = UpdateStrategy { max_parallel: 1, ..UpdateStrategy::default() };
    let (mut c, key) = deployed(&update, 2);
    let eval = c.register(rolling(6, 64, update));
    c.process(&eval);
    check(
        &rollout(&c, &key),
        expect![[r#"v1: 6 (0 healthy, 0 canary) | v1 running "Deployment is running" | stable v0"#]],
    );
}

#[test]
fn an_unhealthy_allocation_fails_the_deployment_and_auto_revert_rolls_back() {
    let update = UpdateStrategy { max_parallel: 2, auto_revert: true, ..UpdateStrategy::default() };
    let (mut c, key) = deployed(&update, 3);
    let eval = c.register(rolling(3, 128, update));
    c.process(&eval);
    let mut trace = vec![rollout(&c, &key)];
    let bad = undecided(&c, &key, 1)[0];
    report(&mut c, &[bad], false);
    trace.push(rollout(&c, &key));
    // The leader's watcher rolls back: version 0's spec as version 2.
    let evals = c.watch_deployments();
    assert_eq!(evals.len(), 1);
    trace.push(rollout(&c, &key));
    assert!(c.watch_deployments().is_empty(), "a rollback happens once");
    for eval in evals {
        c.process(&eval);
    }
    trace.push(rollout(&c, &key));
    run_all(&mut c, &key);
    trace.push(rollout(&c, &key));
    check(
        &trace.join("\n"),
        expect![[r#"
        v0: 1 (1 healthy, 0 canary), v1: 2 (0 healthy, 0 canary) | v1 running "Deployment is running" | stable v0
        v0: 1 (1 healthy, 0 canary), v1: 2 (0 healthy, 0 canary) | v1 failed "Failed due to unhealthy allocations" | stable v0
        v0: 1 (1 healthy, 0 canary), v1: 2 (0 healthy, 0 canary) | v1 failed "Failed due to unhealthy allocations - rolling back to job version 0" | stable v0
        v2: 3 (0 healthy, 0 canary) | v2 running "Deployment is running" | stable v0
        v2: 3 (3 healthy, 0 canary) | v2 successful "Deployment completed successfully" | stable v2,v0"#]],
    );
    let job = c.snapshot().job(&key).unwrap().clone();
    assert_eq!((job.version, job.task_groups[0].tasks[0].resources.memory_mb), (2, 64));
}

#[test]
fn a_missed_progress_deadline_fails_the_deployment() {
    let update = UpdateStrategy { max_parallel: 1, progress_deadline_ns: 600 * SECOND_NS, ..UpdateStrategy::default() };
    let (mut c, key) = deployed(&update, 2);
    let eval = c.register(rolling(2, 128, update));
    c.process(&eval);
    let d = c.snapshot().latest_deployment(&key).unwrap().clone();
    assert_eq!(d.task_groups[0].require_progress_by_ns, c.now_ns + 600 * SECOND_NS);
    // A healthy allocation moves the deadline on.
    c.advance(300 * SECOND_NS);
    let pending = undecided(&c, &key, 1);
    report(&mut c, &pending, true);
    let d = c.snapshot().latest_deployment(&key).unwrap().clone();
    assert_eq!(d.task_groups[0].require_progress_by_ns, c.now_ns + 600 * SECOND_NS);
    c.advance(599 * SECOND_NS);
    assert!(c.watch_deployments().is_empty(), "not late yet");
    c.advance(2 * SECOND_NS);
    let evals = c.watch_deployments();
    assert_eq!(evals.len(), 1, "the scheduler hears of the failure");
    check(
        &rollout(&c, &key),
        expect![[r#"v1: 2 (1 healthy, 0 canary) | v1 failed "Failed due to progress deadline" | stable v0"#]],
    );
    // Failed: the rollout holds; nothing more is replaced.
    for eval in evals {
        c.process(&eval);
    }
    check(
        &rollout(&c, &key),
        expect![[r#"v1: 2 (1 healthy, 0 canary) | v1 failed "Failed due to progress deadline" | stable v0"#]],
    );
}

#[test]
fn canaries_wait_for_promotion_then_the_rest_rolls() {
    let update = UpdateStrategy { max_parallel: 2, canary: 1, ..UpdateStrategy::default() };
    let (mut c, key) = deployed(&update, 5);
    let eval = c.register(rolling(5, 128, update));
    let (outcome, _) = c.process(&eval);
    assert_eq!(outcome.desired_updates["g"].canary, 1);
    let mut trace = vec![rollout(&c, &key)];
    let d = c.snapshot().latest_deployment(&key).unwrap().clone();
    assert_eq!((d.task_groups[0].desired_canaries, d.task_groups[0].promoted), (1, false));
    let mut ids = IdGen::with_seed(9);
    // Not before the canary is healthy; never for an unknown group.
    let early = endpoints::promote_deployment(&c.snapshot(), d.id, vec![], c.now_ns, &mut ids);
    assert!(matches!(early, Err(EndpointError::Refused(ref why)) if why.contains("0/1 healthy")), "{early:?}");
    let unknown = endpoints::promote_deployment(&c.snapshot(), d.id, vec!["nope".into()], c.now_ns, &mut ids);
    assert!(matches!(unknown, Err(EndpointError::Refused(_))));
    let pending = undecided(&c, &key, 1);
    report(&mut c, &pending, true);
    trace.push(rollout(&c, &key));
    // Healthy, still waiting: no watcher eval changes that.
    let eval = c.eval_for(&key, TriggeredBy::DeploymentWatcher);
    c.process(&eval);
    assert!(c.watch_deployments().is_empty());
    trace.push(rollout(&c, &key));
    let promote = endpoints::promote_deployment(&c.snapshot(), d.id, vec![], c.now_ns, &mut ids).unwrap();
    let Command::DeploymentPromote { evals, .. } = &promote else { panic!("{promote:?}") };
    let evals = evals.clone();
    c.commit(promote);
    for eval in evals {
        c.process(&eval);
    }
    trace.push(rollout(&c, &key));
    run_all(&mut c, &key);
    trace.push(rollout(&c, &key));
    check(
        &trace.join("\n"),
        expect![[r#"
        v0: 5 (5 healthy, 0 canary), v1: 1 (0 healthy, 1 canary) | v1 running "Deployment is running but requires manual promotion" | stable v0
        v0: 5 (5 healthy, 0 canary), v1: 1 (1 healthy, 1 canary) | v1 running "Deployment is running but requires manual promotion" | stable v0
        v0: 5 (5 healthy, 0 canary), v1: 1 (1 healthy, 1 canary) | v1 running "Deployment is running but requires manual promotion" | stable v0
        v0: 2 (2 healthy, 0 canary), v1: 3 (1 healthy, 1 canary) | v1 running "Deployment is running" | stable v0
        v1: 5 (5 healthy, 1 canary) | v1 successful "Deployment completed successfully" | stable v1,v0"#]],
    );
    assert!(c.snapshot().deployment(d.id).unwrap().task_groups[0].promoted);
}

#[test]
fn auto_promote_and_a_failed_canary_deployment() {
    // Auto-promotion once every canary is healthy.
    let update = UpdateStrategy { max_parallel: 1, canary: 2, auto_promote: true, ..UpdateStrategy::default() };
    let (mut c, key) = deployed(&update, 3);
    let eval = c.register(rolling(3, 128, update.clone()));
    c.process(&eval);
    let mut trace = vec![rollout(&c, &key)];
    let canaries = undecided(&c, &key, 1);
    report(&mut c, &canaries[..1], true);
    assert!(c.watch_deployments().is_empty(), "one of two canaries healthy");
    report(&mut c, &canaries[1..], true);
    for eval in c.watch_deployments() {
        c.process(&eval);
    }
    trace.push(rollout(&c, &key));
    run_all(&mut c, &key);
    trace.push(rollout(&c, &key));

    // Failing a deployment with canaries stops them; the old ones stay.
    let eval = c.register(rolling(3, 256, update));
    c.process(&eval);
    trace.push(rollout(&c, &key));
    let d = c.snapshot().latest_deployment(&key).unwrap().id;
    let mut ids = IdGen::with_seed(3);
    let fail = endpoints::update_deployment(&c.snapshot(), d, DeploymentAction::Fail, c.now_ns, &mut ids).unwrap();
    let Command::DeploymentStatusUpdate { evals, .. } = &fail else { panic!("{fail:?}") };
    let evals = evals.clone();
    c.commit(fail);
    for eval in evals {
        c.process(&eval);
    }
    trace.push(rollout(&c, &key));
    check(
        &trace.join("\n"),
        expect![[r#"
        v0: 3 (3 healthy, 0 canary), v1: 2 (0 healthy, 2 canary) | v1 running "Deployment is running pending automatic promotion" | stable v0
        v1: 3 (2 healthy, 2 canary) | v1 running "Deployment is running" | stable v0
        v1: 3 (3 healthy, 2 canary) | v1 successful "Deployment completed successfully" | stable v1,v0
        v1: 3 (3 healthy, 2 canary), v2: 2 (0 healthy, 2 canary) | v2 running "Deployment is running pending automatic promotion" | stable v1,v0
        v1: 3 (3 healthy, 2 canary) | v2 failed "Deployment marked as failed" | stable v1,v0"#]],
    );
}
