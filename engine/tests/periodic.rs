//! Periodic jobs: registration, the leader's dispatcher on a fake clock
//! (launch times, time zones, prohibit_overlap), forced launches, and a
//! leader change that must neither repeat a launch nor miss one.

use std::sync::{Arc, Mutex};

use caravan_engine::duties::launch_periodic;
use caravan_engine::endpoints::{self, EndpointError};
use caravan_engine::fixtures::{job, node};
use caravan_engine::fsm::{ApplyError, Command, Fsm};
use caravan_engine::ids::{IdGen, JobKey};
use caravan_engine::model::*;
use caravan_engine::periodic::{PeriodicDispatcher, next_launch, running_children};
use caravan_engine::plan::{CommitError, Committer};
use caravan_engine::sim::SimCluster;
use caravan_engine::state::{State, StateStore};

/// 2030-01-01T00:00:00Z.
const Y2030_S: i64 = 1_893_456_000;

fn at(offset_s: i64) -> TimeNs {
    (Y2030_S + offset_s) * SECOND_NS
}

fn periodic_job(id: &str, specs: &[&str]) -> Job {
    let mut j = job(id, JobType::Batch, 1, 100, 64);
    j.periodic = Some(Periodic::cron(specs));
    j
}

fn key(id: &str) -> JobKey {
    JobKey::new("default", id)
}

/// The FSM behind a serial index: the leader loop's committer, minus raft.
#[derive(Debug)]
struct FsmCommitter {
    fsm: Fsm,
    index: Mutex<u64>,
}

impl FsmCommitter {
    fn new() -> FsmCommitter {
        FsmCommitter { fsm: Fsm::new(Arc::new(StateStore::new())), index: Mutex::new(0) }
    }

    fn state(&self) -> Arc<State> {
        self.fsm.store().snapshot()
    }
}

impl Committer for FsmCommitter {
    fn commit(&self, command: Command) -> Result<u64, CommitError> {
        let mut index = self.index.lock().unwrap();
        *index += 1;
        self.fsm.apply(*index, &command).map_err(|e| CommitError(e.to_string()))?;
        Ok(*index)
    }
}

fn register(committer: &FsmCommitter, job: Job, now_ns: TimeNs, ids: &mut IdGen) {
    let command = endpoints::register_job(job, now_ns, ids).expect("valid job");
    committer.commit(command).expect("registers");
}

/// Children of `parent`, in id order.
fn child_ids(state: &State, parent: &str) -> Vec<String> {
    let parent = state.job(&key(parent)).expect("parent").clone();
    caravan_engine::periodic::children(state, &parent).map(|j| j.id.to_string()).collect()
}

fn child_name(parent: &str, at_ns: TimeNs) -> String {
    format!("{parent}/periodic-{}", at_ns / SECOND_NS)
}

#[test]
fn a_periodic_job_registers_as_a_template_with_its_start_recorded() {
    let mut ids = IdGen::with_seed(1);
    let command = endpoints::register_job(periodic_job("report", &["*/5 * * * *"]), at(10), &mut ids).unwrap();
    assert!(matches!(&command, Command::JobRegister { eval: None, .. }), "a periodic parent gets no eval");
    let c = FsmCommitter::new();
    c.commit(command).unwrap();
    let state = c.state();
    let parent = state.job(&key("report")).unwrap();
    assert_eq!(parent.status, JobStatus::Running, "shown running, as Nomad shows it");
    assert_eq!(state.periodic_launch(&key("report")).map(|l| l.launch_ns), Some(at(10)));
    assert_eq!(next_launch(&state, parent), Some(at(300)));
    assert_eq!(state.evals().count(), 0);

    // An eval for the parent (a user's `job eval`) places nothing.
    let mut c = SimCluster::new(3);
    let n = node(&mut c.ids, "n0", "dc1", 4000, 4096);
    c.add_node(n);
    let eval = c.register(periodic_job("report", &["*/5 * * * *"]));
    let (outcome, _) = c.process(&eval);
    assert!(outcome.plan.node_allocation.is_empty());
    assert_eq!(c.live_allocs(&key("report")), 0);
}

#[test]
fn the_dispatcher_launches_at_each_cron_time() {
    let c = FsmCommitter::new();
    let mut ids = IdGen::with_seed(2);
    register(&c, periodic_job("report", &["*/5 * * * *"]), at(10), &mut ids);
    let mut dispatcher = PeriodicDispatcher::new();

    assert_eq!(launch_periodic(&mut dispatcher, c.fsm.store(), &c, at(60), &mut ids), 0);
    assert_eq!(launch_periodic(&mut dispatcher, c.fsm.store(), &c, at(299), &mut ids), 0);
    assert_eq!(launch_periodic(&mut dispatcher, c.fsm.store(), &c, at(300), &mut ids), 1);
    assert_eq!(launch_periodic(&mut dispatcher, c.fsm.store(), &c, at(330), &mut ids), 0, "once per time");
    assert_eq!(launch_periodic(&mut dispatcher, c.fsm.store(), &c, at(600), &mut ids), 1);

    let state = c.state();
    assert_eq!(child_ids(&state, "report"), vec![child_name("report", at(300)), child_name("report", at(600))]);
    let child = state.job(&key(&child_name("report", at(300)))).unwrap();
    assert_eq!(child.parent_id.as_deref(), Some("report"));
    assert!(child.periodic.is_none(), "a child is an ordinary batch job");
    assert_eq!(child.task_groups, state.job(&key("report")).unwrap().task_groups);
    let evals: Vec<_> = state.evals_by_job(&child.key()).collect();
    assert_eq!(evals.len(), 1);
    assert_eq!(evals[0].triggered_by, TriggeredBy::PeriodicJob);
    assert_eq!(evals[0].status, EvalStatus::Pending);
    assert_eq!(state.periodic_launch(&key("report")).unwrap().launch_ns, at(600));
    assert_eq!(next_launch(&state, state.job(&key("report")).unwrap()), Some(at(900)));
}

#[test]
fn the_time_zone_decides_the_launch() {
    let c = FsmCommitter::new();
    let mut ids = IdGen::with_seed(3);
    let mut j = periodic_job("morning", &["0 9 * * *"]);
    j.periodic.as_mut().unwrap().time_zone = "America/New_York".into();
    register(&c, j, at(0), &mut ids);
    let mut dispatcher = PeriodicDispatcher::new();
    // 09:00 UTC is 04:00 in New York: nothing yet.
    assert_eq!(launch_periodic(&mut dispatcher, c.fsm.store(), &c, at(9 * 3600), &mut ids), 0);
    assert_eq!(launch_periodic(&mut dispatcher, c.fsm.store(), &c, at(14 * 3600 - 1), &mut ids), 0);
    // 09:00 in New York (EST, UTC-5) is 14:00 UTC.
    assert_eq!(launch_periodic(&mut dispatcher, c.fsm.store(), &c, at(14 * 3600), &mut ids), 1);
    assert_eq!(child_ids(&c.state(), "morning"), vec![child_name("morning", at(14 * 3600))]);
}

#[test]
fn prohibit_overlap_skips_a_launch_while_a_child_runs() {
    let mut c = SimCluster::new(4);
    c.now_ns = at(10);
    let n = node(&mut c.ids, "n0", "dc1", 4000, 4096);
    c.add_node(n);
    let mut j = periodic_job("sync", &["*/5 * * * *"]);
    j.periodic.as_mut().unwrap().prohibit_overlap = true;
    let command = endpoints::register_job(j, c.now_ns, &mut c.ids).unwrap();
    c.commit(command);
    let mut dispatcher = PeriodicDispatcher::new();
    let mut tick = |c: &mut SimCluster, now_ns: TimeNs| -> Vec<Arc<str>> {
        c.now_ns = now_ns;
        let mut launched = Vec::new();
        for due in dispatcher.due(&c.snapshot(), now_ns, 16) {
            let (command, child) =
                endpoints::periodic_launch(&c.snapshot(), &due.key, due.launch_ns, false, now_ns, &mut c.ids).unwrap();
            c.commit(command);
            launched.push(child);
        }
        launched
    };

    let first = tick(&mut c, at(300));
    assert_eq!(first.len(), 1);
    let first_key = key(&first[0]);
    // The child is placed and runs.
    let eval = (**c.snapshot().evals_by_job(&first_key).next().unwrap()).clone();
    c.process(&eval);
    assert_eq!(c.live_allocs(&first_key), 1);
    let parent = c.snapshot().job(&key("sync")).unwrap().clone();
    assert_eq!(running_children(&c.snapshot(), &parent).count(), 1);

    assert!(tick(&mut c, at(600)).is_empty(), "skipped: the 00:05 child still runs");
    // The child finishes; the skipped time is not made up.
    let alloc = c.snapshot().allocs_by_job(&first_key).next().unwrap().id;
    c.client_update(alloc, ClientStatus::Complete);
    assert_eq!(c.snapshot().job(&first_key).unwrap().status, JobStatus::Dead);
    assert!(tick(&mut c, at(700)).is_empty(), "00:10 was skipped, not postponed");
    let next = tick(&mut c, at(900));
    assert_eq!(next.iter().map(|s| s.to_string()).collect::<Vec<_>>(), vec![child_name("sync", at(900))]);
}

#[test]
fn a_new_leader_neither_repeats_nor_multiplies_launches() {
    let c = FsmCommitter::new();
    let mut ids = IdGen::with_seed(5);
    register(&c, periodic_job("etl", &["*/5 * * * *"]), at(10), &mut ids);
    let mut leader_a = PeriodicDispatcher::new();
    assert_eq!(launch_periodic(&mut leader_a, c.fsm.store(), &c, at(300), &mut ids), 1);

    // Leader B takes over within the same period: the launch is in the
    // replicated state, so B does not launch 00:05 again.
    let mut leader_b = PeriodicDispatcher::new();
    assert_eq!(launch_periodic(&mut leader_b, c.fsm.store(), &c, at(301), &mut ids), 0);
    // The same launch committed again (a retried raft write, or A still
    // believing it leads) is refused by the FSM and changes nothing.
    let state = c.state();
    let (again, _) = endpoints::periodic_launch(&state, &key("etl"), at(300), false, at(301), &mut ids).unwrap();
    let err = c.fsm.apply(state.index() + 1, &again).unwrap_err();
    assert!(matches!(err, ApplyError::PeriodicLaunchedAlready { .. }), "{err:?}");
    assert_eq!(child_ids(&c.state(), "etl").len(), 1);
    *c.index.lock().unwrap() += 1;

    // No leader from 00:05 to 00:23: a new leader catches up with one
    // launch at once, not one per missed time.
    let mut leader_c = PeriodicDispatcher::new();
    assert_eq!(launch_periodic(&mut leader_c, c.fsm.store(), &c, at(23 * 60), &mut ids), 1);
    assert_eq!(launch_periodic(&mut leader_c, c.fsm.store(), &c, at(24 * 60), &mut ids), 0);
    assert_eq!(launch_periodic(&mut leader_c, c.fsm.store(), &c, at(25 * 60), &mut ids), 1);
    assert_eq!(
        child_ids(&c.state(), "etl"),
        vec![child_name("etl", at(300)), child_name("etl", at(23 * 60)), child_name("etl", at(25 * 60))]
    );
}

#[test]
fn forced_launches_and_inactive_jobs() {
    let c = FsmCommitter::new();
    let mut ids = IdGen::with_seed(6);
    register(&c, periodic_job("nightly", &["@daily"]), at(10), &mut ids);
    let (force, child) =
        endpoints::periodic_launch(&c.state(), &key("nightly"), at(100), true, at(100), &mut ids).unwrap();
    c.commit(force).unwrap();
    assert_eq!(&*child, child_name("nightly", at(100)));
    assert!(c.state().job(&key(&child)).is_some());
    assert_eq!(c.state().periodic_launch(&key("nightly")).unwrap().launch_ns, at(100));

    // Not periodic, unknown, stopped: refused before reaching the log.
    register(&c, job("plain", JobType::Batch, 1, 100, 64), at(0), &mut ids);
    let refused = endpoints::periodic_launch(&c.state(), &key("plain"), at(0), true, at(0), &mut ids).unwrap_err();
    assert!(matches!(refused, EndpointError::Refused(_)), "{refused:?}");
    let missing = endpoints::periodic_launch(&c.state(), &key("nope"), at(0), true, at(0), &mut ids).unwrap_err();
    assert!(matches!(missing, EndpointError::JobNotFound(_)));
    let stop = endpoints::deregister_job(&c.state(), &key("nightly"), false, at(200), &mut ids).unwrap();
    c.commit(stop).unwrap();
    let stopped =
        endpoints::periodic_launch(&c.state(), &key("nightly"), at(300), true, at(300), &mut ids).unwrap_err();
    assert!(stopped.to_string().contains("stopped"), "{stopped}");
    let mut dispatcher = PeriodicDispatcher::new();
    assert_eq!(launch_periodic(&mut dispatcher, c.fsm.store(), &c, at(2 * 86400), &mut ids), 0, "stopped");

    // Purging forgets the launch record.
    let purge = endpoints::deregister_job(&c.state(), &key("nightly"), true, at(400), &mut ids).unwrap();
    c.commit(purge).unwrap();
    assert!(c.state().periodic_launch(&key("nightly")).is_none());
}

#[test]
fn disabled_then_enabled_counts_from_the_enabling() {
    let c = FsmCommitter::new();
    let mut ids = IdGen::with_seed(7);
    let mut j = periodic_job("maybe", &["*/5 * * * *"]);
    j.periodic.as_mut().unwrap().enabled = false;
    register(&c, j.clone(), at(0), &mut ids);
    let mut dispatcher = PeriodicDispatcher::new();
    assert_eq!(launch_periodic(&mut dispatcher, c.fsm.store(), &c, at(3600), &mut ids), 0, "disabled");
    j.periodic.as_mut().unwrap().enabled = true;
    register(&c, j, at(3600 + 10), &mut ids);
    // Enabled at 01:00:10: no catch-up of the hour it was disabled.
    assert_eq!(launch_periodic(&mut dispatcher, c.fsm.store(), &c, at(3600 + 20), &mut ids), 0);
    assert_eq!(launch_periodic(&mut dispatcher, c.fsm.store(), &c, at(3600 + 300), &mut ids), 1);
}

#[test]
fn validation_names_each_periodic_problem() {
    let mut bad = periodic_job("bad", &["*/5 * * *", "0 9 * * *"]);
    bad.job_type = JobType::Service;
    bad.periodic.as_mut().unwrap().time_zone = "Europe/Atlantis".into();
    let err = caravan_engine::validate::validate_job(&bad).unwrap_err();
    let text = err.to_string();
    assert!(text.contains("periodic can only be used with batch or sysbatch jobs"), "{text}");
    assert!(text.contains("invalid cron spec \"*/5 * * *\""), "{text}");
    assert!(text.contains("invalid time zone \"Europe/Atlantis\""), "{text}");
    assert_eq!(err.problems.len(), 3, "{err:?}");
    let mut sysbatch = periodic_job("ok", &["0 0 * * MON-FRI"]);
    sysbatch.job_type = JobType::SysBatch;
    sysbatch.task_groups[0].reschedule_policy = None;
    assert!(caravan_engine::validate::validate_job(&sysbatch).is_ok());
}

/// The leader loop of an in-process cluster runs the dispatcher on its
/// clock: moving a manual clock past a launch time launches the child,
/// which is then placed like any batch job.
#[test]
fn the_leader_loop_launches_on_its_clock() {
    use caravan_engine::clock::ManualClock;
    use caravan_engine::local::{LocalCluster, LocalConfig};
    use std::time::{Duration, Instant};

    let clock = ManualClock::new(at(10));
    let cluster = LocalCluster::start(LocalConfig { workers: 1, ..LocalConfig::default() }, Arc::new(clock.clone()));
    let mut ids = IdGen::with_seed(8);
    let n = node(&mut ids, "n0", "dc1", 4000, 4096);
    cluster.commit(&Command::NodeRegister { node: n, evals: vec![] }).unwrap();
    cluster.register_job(periodic_job("tick", &["*/5 * * * *"])).unwrap();
    let child = key(&child_name("tick", at(300)));
    clock.set_ns(at(300));
    // Wait for the loop (it looks every tick) — a bound, not a timing claim.
    let deadline = Instant::now() + Duration::from_secs(60);
    while cluster.store.snapshot().allocs_by_job(&child).next().is_none() {
        assert!(Instant::now() < deadline, "the child was launched and placed");
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(cluster.wait_idle(Duration::from_secs(30)));
    let state = cluster.store.snapshot();
    assert_eq!(child_ids(&state, "tick"), vec![child_name("tick", at(300))], "exactly one launch");
    assert_eq!(state.periodic_launch(&key("tick")).unwrap().launch_ns, at(300));
    cluster.shutdown();
}
