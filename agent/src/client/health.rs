//! Deployment health of one allocation, as Nomad's client decides it with
//! `health_check = "task_states"`: healthy once every task that must keep
//! running (main tasks and sidecars; not poststop tasks nor prestart and
//! poststart tasks that run to completion) has run without a break for
//! the update strategy's `min_healthy_time`; unhealthy as soon as a task
//! fails for good, or when `healthy_deadline` passes first. Caravan has no
//! service checks, so `"checks"` means the same; with `"manual"` the
//! client never decides (an operator does, through the deployment).
//!
//! Which allocations the client decides for, and the strategy's times, are
//! the engine's [`HealthPolicy`] (the simulated fleet uses it too).
//! [`assess`] is a pure function of the tasks' states and the times; the
//! allocation runner calls it after every change and when the time it
//! names comes.

pub use caravan_engine::health_policy::HealthPolicy;
use caravan_engine::model::{TaskLifecycleState, TaskState, TimeNs};

use super::lifecycle::Stage;

/// One task as [`assess`] reads it.
#[derive(Debug, Clone, Copy)]
pub struct TaskHealthView<'a> {
    pub stage: Stage,
    pub state: &'a TaskState,
    /// When the task last went to running (0 if it never did).
    pub running_since_ns: TimeNs,
}

/// The decision, or when to look again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Healthy,
    Unhealthy,
    /// Undecided; `check_at_ns` is when the answer may change without any
    /// task changing (the healthy time reached, or the deadline).
    Pending {
        check_at_ns: Option<TimeNs>,
    },
}

/// Whether a task must keep running for the allocation to be healthy.
fn must_run(stage: Stage) -> bool {
    matches!(stage, Stage::Main | Stage::PrestartSidecar | Stage::PoststartSidecar)
}

/// Decide health at `now_ns` for tracking begun at `since_ns` (the
/// allocation started, or joined its deployment).
pub fn assess(policy: HealthPolicy, tasks: &[TaskHealthView<'_>], since_ns: TimeNs, now_ns: TimeNs) -> Verdict {
    let deadline_ns = (policy.healthy_deadline_ns > 0).then(|| since_ns.saturating_add(policy.healthy_deadline_ns));
    let failed =
        tasks.iter().any(|t| t.stage != Stage::Poststop && t.state.state == TaskLifecycleState::Dead && t.state.failed);
    if failed {
        return Verdict::Unhealthy;
    }
    let mut running_since_ns = since_ns;
    let mut all_running = tasks.iter().any(|t| must_run(t.stage));
    for t in tasks.iter().filter(|t| must_run(t.stage)) {
        if t.state.state != TaskLifecycleState::Running {
            all_running = false;
            break;
        }
        running_since_ns = running_since_ns.max(t.running_since_ns);
    }
    let healthy_at_ns = all_running.then(|| running_since_ns.saturating_add(policy.min_healthy_time_ns));
    if let Some(at) = healthy_at_ns
        && at <= now_ns
        && deadline_ns.is_none_or(|d| at <= d)
    {
        return Verdict::Healthy;
    }
    if deadline_ns.is_some_and(|d| d <= now_ns) {
        return Verdict::Unhealthy;
    }
    let check_at_ns = match (healthy_at_ns, deadline_ns) {
        (Some(a), Some(d)) => Some(a.min(d)),
        (a, d) => a.or(d),
    };
    Verdict::Pending { check_at_ns }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: i64 = 1_000_000_000;

    fn state(lifecycle: TaskLifecycleState, failed: bool) -> TaskState {
        let mut s = TaskState::pending();
        s.state = lifecycle;
        s.failed = failed;
        s
    }

    /// A case: its name, the tasks (stage, state, running since in
    /// seconds), the time in seconds, and the verdict.
    type Case<'a> = (&'a str, Vec<(Stage, &'a TaskState, i64)>, i64, Verdict);

    /// One line per case.
    #[test]
    fn verdicts() {
        use TaskLifecycleState::*;
        let policy = HealthPolicy { min_healthy_time_ns: 10 * S, healthy_deadline_ns: 60 * S };
        let running = state(Running, false);
        let pending = state(Pending, false);
        let failed = state(Dead, true);
        let done = state(Dead, false);
        let cases: Vec<Case<'_>> = vec![
            ("running long enough", vec![(Stage::Main, &running, 0)], 10, Verdict::Healthy),
            ("not yet", vec![(Stage::Main, &running, 5)], 10, Verdict::Pending { check_at_ns: Some(15 * S) }),
            ("a sibling not running", vec![(Stage::Main, &running, 0), (Stage::Main, &pending, 0)], 30, {
                Verdict::Pending { check_at_ns: Some(60 * S) }
            }),
            ("a failed task", vec![(Stage::Main, &running, 0), (Stage::Main, &failed, 0)], 1, Verdict::Unhealthy),
            (
                "a finished prestart task is fine",
                vec![(Stage::PrestartEphemeral, &done, 0), (Stage::Main, &running, 0)],
                11,
                { Verdict::Healthy },
            ),
            ("a poststop task is not watched", vec![(Stage::Poststop, &pending, 0), (Stage::Main, &running, 0)], 11, {
                Verdict::Healthy
            }),
            ("deadline passed", vec![(Stage::Main, &pending, 0)], 60, Verdict::Unhealthy),
            ("healthy only after the deadline", vec![(Stage::Main, &running, 55)], 70, Verdict::Unhealthy),
        ];
        for (name, tasks, now_s, want) in cases {
            let views: Vec<TaskHealthView<'_>> = tasks
                .iter()
                .map(|(stage, state, since_s)| TaskHealthView { stage: *stage, state, running_since_ns: since_s * S })
                .collect();
            assert_eq!(assess(policy, &views, 0, now_s * S), want, "{name}");
        }
    }
}
