//! Which allocations a client decides deployment health for, and by what
//! rule: the update strategy of the allocation's group, as Nomad's client
//! reads it (`health_check = "task_states"`, or `"checks"`, the same here
//! with no service checks; `"manual"` leaves health to an operator). The
//! agent's allocation runner applies it to real task states
//! (`agent/src/client/health.rs`); the simulated fleet of `caravan-perf`,
//! whose tasks never fail, takes [`HealthPolicy::verdict_if_tasks_never_fail`].

use crate::model::Allocation;

/// What decides an allocation's health: its group's update strategy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HealthPolicy {
    pub min_healthy_time_ns: i64,
    /// 0: no deadline.
    pub healthy_deadline_ns: i64,
}

impl HealthPolicy {
    /// The policy for an allocation the client should decide health for:
    /// one in a deployment, wanted running, whose group's strategy is not
    /// `manual`.
    pub fn of(alloc: &Allocation) -> Option<HealthPolicy> {
        alloc.deployment_id?;
        if alloc.server_terminal() {
            return None;
        }
        let strategy = alloc.job.rollout_strategy(alloc.group())?;
        if &*strategy.health_check == "manual" {
            return None;
        }
        Some(HealthPolicy {
            min_healthy_time_ns: strategy.min_healthy_time_ns.max(0),
            healthy_deadline_ns: strategy.healthy_deadline_ns.max(0),
        })
    }

    /// The verdict for tasks that keep running from the moment tracking
    /// starts: healthy after `min_healthy_time`, unless a deadline comes
    /// first (then unhealthy at the deadline). Returns the verdict and how
    /// long after the start (ns) it comes.
    pub fn verdict_if_tasks_never_fail(&self) -> (bool, i64) {
        if self.healthy_deadline_ns > 0 && self.min_healthy_time_ns > self.healthy_deadline_ns {
            (false, self.healthy_deadline_ns)
        } else {
            (true, self.min_healthy_time_ns)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: i64 = 1_000_000_000;

    #[test]
    fn tasks_that_never_fail_are_healthy_unless_the_deadline_comes_first() {
        let policy = HealthPolicy { min_healthy_time_ns: 10 * S, healthy_deadline_ns: 60 * S };
        assert_eq!(policy.verdict_if_tasks_never_fail(), (true, 10 * S));
        let no_deadline = HealthPolicy { healthy_deadline_ns: 0, ..policy };
        assert_eq!(no_deadline.verdict_if_tasks_never_fail(), (true, 10 * S));
        let late = HealthPolicy { min_healthy_time_ns: 20 * S, healthy_deadline_ns: 5 * S };
        assert_eq!(late.verdict_if_tasks_never_fail(), (false, 5 * S));
    }
}
