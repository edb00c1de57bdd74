//! Deployments and the job actions built on job versions, on the
//! deterministic single-threaded cluster: a service version rolls out under
//! a deployment that settles from client status; revert, stability, scale,
//! deployment actions and node purge are commands built from the state,
//! and a refused one changes nothing.

use caravan_engine::endpoints::{self, DeploymentAction, EndpointError};
use caravan_engine::fixtures::{job, node};
use caravan_engine::fsm::Command;
use caravan_engine::ids::{IdGen, JobKey};
use caravan_engine::model::*;
use caravan_engine::sim::SimCluster;

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

fn run_all(c: &mut SimCluster, key: &JobKey, status: ClientStatus) {
    let ids: Vec<_> = c.snapshot().allocs_by_job(key).filter(|a| !a.is_terminal()).map(|a| a.id).collect();
    for id in ids {
        c.client_update(id, status);
    }
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

    run_all(&mut c, &key, ClientStatus::Running);
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
    c.client_update(first, ClientStatus::Failed);
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
    run_all(&mut c, &key, ClientStatus::Running);
    assert_eq!(c.snapshot().deployment(id).unwrap().status, DeploymentStatus::Paused, "a paused deployment waits");
    let resume = endpoints::update_deployment(&c.snapshot(), id, DeploymentAction::Resume, 0, &mut ids).unwrap();
    c.commit(resume);
    assert_eq!(
        c.snapshot().deployment(id).unwrap().status,
        DeploymentStatus::Successful,
        "resumed with every allocation running: done"
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
    assert!(matches!(endpoints::promote_deployment(&c.snapshot(), id), Err(EndpointError::Refused(_))));
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

    // Scale: a new version with the count, and a job-scaling eval.
    let scale = endpoints::scale_job(&c.snapshot(), &key, "g", Some(3), 0, &mut ids).unwrap().unwrap();
    let Command::JobRegister { eval: Some(eval), .. } = &scale else { panic!("scale registers: {scale:?}") };
    assert_eq!(eval.triggered_by, TriggeredBy::JobScaling);
    let eval = eval.clone();
    c.commit(scale);
    c.process(&eval);
    assert_eq!(c.snapshot().job(&key).unwrap().task_groups[0].count, 3);
    assert_eq!(c.live_allocs(&key), 3);
    assert!(matches!(
        endpoints::scale_job(&c.snapshot(), &key, "nope", Some(1), 0, &mut ids),
        Err(EndpointError::Refused(_))
    ));
    assert!(endpoints::scale_job(&c.snapshot(), &key, "g", None, 0, &mut ids).unwrap().is_none());

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
}

/// The state's per-deployment health tally, recounted from the allocations.
fn assert_health_matches_allocs(snap: &caravan_engine::state::State) {
    for d in snap.deployments() {
        let mut recount = caravan_engine::state::DeploymentHealth::default();
        for a in snap.allocs().filter(|a| a.deployment_id == Some(d.id)) {
            recount.healthy +=
                u64::from(a.client_status == ClientStatus::Running && a.desired_status == DesiredStatus::Run);
            recount.failed += u64::from(a.client_status == ClientStatus::Failed);
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
    assert_eq!(c.snapshot().deployment_health(d), Default::default());

    c.client_update(ids[0], ClientStatus::Running);
    c.client_update(ids[1], ClientStatus::Running);
    assert_eq!(c.snapshot().deployment_health(d).healthy, 2);
    assert_eq!(c.snapshot().deployment(d).unwrap().status, DeploymentStatus::Running, "2 of 3 healthy");
    assert_health_matches_allocs(&c.snapshot());

    // A running allocation that fails stops counting as healthy and fails
    // the deployment; the third then running changes nothing.
    c.client_update(ids[1], ClientStatus::Failed);
    let health = c.snapshot().deployment_health(d);
    assert_eq!((health.healthy, health.failed), (1, 1));
    assert_eq!(c.snapshot().deployment(d).unwrap().status, DeploymentStatus::Failed);
    c.client_update(ids[2], ClientStatus::Running);
    assert_eq!(c.snapshot().deployment(d).unwrap().status, DeploymentStatus::Failed);
    assert_health_matches_allocs(&c.snapshot());

    // A new version replaces the allocations: the old deployment's healthy
    // allocations are stopped and leave its tally; the new one's start at 0.
    let eval = c.register(service(3, 128));
    c.process(&eval);
    let d1 = c.snapshot().latest_deployment(&key).unwrap().id;
    assert_ne!(d1, d);
    assert_eq!(c.snapshot().deployment_health(d1).healthy, 0);
    assert_health_matches_allocs(&c.snapshot());
    run_all(&mut c, &key, ClientStatus::Running);
    let placed = c.snapshot().allocs_by_job(&key).filter(|a| a.deployment_id == Some(d1)).count();
    assert!(placed > 0);
    assert_eq!(c.snapshot().deployment_health(d1).healthy, placed as u64);
    assert_health_matches_allocs(&c.snapshot());
}
