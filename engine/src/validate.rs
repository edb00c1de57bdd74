//! Validation of jobs and nodes before they are written, with the checks of
//! Nomad's `Job.Validate`, `TaskGroup.Validate`, `Task.Validate`,
//! `Constraint.Validate`, `Affinity.Validate`, `Spread.Validate` and the
//! policy validations (`nomad/structs/structs.go`).
//!
//! A [`ValidationError`] lists every problem found, each prefixed with where
//! it is (`group "web": task "api": memory 5 MB is below the minimum of 10 MB`),
//! so a user fixes a jobspec in one round trip.

use std::collections::HashSet;
use std::fmt;

use crate::feasible::{compile_regex, parse_semver_constraint, parse_version_constraint};
use crate::model::{
    Affinity, Constraint, ConstraintOp, DelayFunction, DeviceRequest, Job, JobType, MigrateStrategy, Node,
    ReschedulePolicy, RestartMode, RestartPolicy, SECOND_NS, Spread, Task, TaskGroup, UpdateStrategy,
};

/// Problems a [`ValidationError`] keeps; past this only a count is kept, so a
/// job with 10,000 broken groups yields a readable message of bounded size.
pub const PROBLEMS_MAX: usize = 100;
/// Longest job id: ids appear in URLs, logs and alloc names.
pub const JOB_ID_LEN_MAX: usize = 128;
pub const PRIORITY_MIN: u8 = 1;
pub const PRIORITY_MAX: u8 = 100;
/// Nomad's minimum task cpu (1 MHz) and memory (10 MB).
pub const TASK_CPU_MHZ_MIN: u32 = 1;
pub const TASK_MEMORY_MB_MIN: u32 = 10;
/// Sanity bounds far above any machine (4 THz of cpu, 16 TiB of memory), so
/// sums over thousands of allocations cannot overflow.
pub const TASK_CPU_MHZ_MAX: u32 = 4_000_000;
pub const TASK_MEMORY_MB_MAX: u32 = 16 * 1024 * 1024;
/// Nomad's `RestartPolicyMinInterval`.
pub const RESTART_INTERVAL_MIN_NS: i64 = 5 * SECOND_NS;
/// Nomad's `ReschedulePolicyMinDelay` and `ReschedulePolicyMinInterval`.
pub const RESCHEDULE_DELAY_MIN_NS: i64 = 5 * SECOND_NS;
pub const RESCHEDULE_INTERVAL_MIN_NS: i64 = 15 * SECOND_NS;
/// Most reschedule attempts in one interval. Nomad has no bound; more than
/// this is a mistake (`unlimited` says "forever"), and the bound keeps the
/// attempts-fit-in-interval check a short loop.
pub const RESCHEDULE_ATTEMPTS_MAX: u32 = 10_000;

/// Every problem found in a job or node.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ValidationError {
    /// At most [`PROBLEMS_MAX`], in the order found.
    pub problems: Vec<String>,
    /// Problems found past [`PROBLEMS_MAX`] and not kept.
    pub omitted: usize,
}

impl fmt::Display for ValidationError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_problems(f, &self.problems, self.omitted)
    }
}

/// "3 errors: a; b; c" (with "; and N more" past the bound): the one
/// rendering of a problem list, shared with the API's errors.
pub fn write_problems(f: &mut fmt::Formatter<'_>, problems: &[String], omitted: usize) -> fmt::Result {
    let total = problems.len() + omitted;
    write!(f, "{total} error{}: {}", if total == 1 { "" } else { "s" }, problems.join("; "))?;
    if omitted > 0 {
        write!(f, "; and {omitted} more")?;
    }
    Ok(())
}

#[derive(Default)]
struct Problems {
    list: Vec<String>,
    omitted: usize,
}

impl Problems {
    fn push(&mut self, at: &str, problem: impl fmt::Display) {
        if self.list.len() < PROBLEMS_MAX {
            self.list.push(format!("{at}{problem}"));
        } else {
            self.omitted += 1;
        }
    }

    fn finish(self) -> Result<(), ValidationError> {
        assert!(self.list.len() <= PROBLEMS_MAX);
        if self.list.is_empty() { Ok(()) } else { Err(ValidationError { problems: self.list, omitted: self.omitted }) }
    }
}

/// A duration for messages: `15s`, `250ms`, `7ns`.
fn duration(ns: i64) -> String {
    if ns % SECOND_NS == 0 {
        format!("{}s", ns / SECOND_NS)
    } else if ns % 1_000_000 == 0 {
        format!("{}ms", ns / 1_000_000)
    } else {
        format!("{ns}ns")
    }
}

/// Check a job; `Err` lists every problem.
pub fn validate_job(job: &Job) -> Result<(), ValidationError> {
    let mut p = Problems::default();
    if job.id.is_empty() {
        p.push("", "missing job id");
    } else if job.id.contains(' ') {
        p.push("", format!("job id {:?} contains a space", job.id));
    } else if job.id.contains('\0') {
        p.push("", "job id contains a null character");
    }
    if job.id.chars().count() > JOB_ID_LEN_MAX {
        p.push(
            "",
            format!("job id is {} characters, more than the maximum of {JOB_ID_LEN_MAX}", job.id.chars().count()),
        );
    }
    if job.name.is_empty() {
        p.push("", "missing job name");
    } else if job.name.contains('\0') {
        p.push("", "job name contains a null character");
    }
    if job.namespace.is_empty() {
        p.push("", "missing namespace");
    }
    if job.region.is_empty() {
        p.push("", "missing region");
    }
    if job.node_pool.is_empty() {
        p.push("", "missing node pool");
    }
    if !(PRIORITY_MIN..=PRIORITY_MAX).contains(&job.priority) {
        p.push("", format!("priority {} is outside {PRIORITY_MIN}..={PRIORITY_MAX}", job.priority));
    }
    if job.datacenters.is_empty() {
        p.push("", "missing datacenters");
    }
    for (i, dc) in job.datacenters.iter().enumerate() {
        if dc.is_empty() {
            p.push("", format!("datacenter {} is empty", i + 1));
        }
    }
    if job.task_groups.is_empty() {
        p.push("", "missing task groups");
    }
    if let Some(periodic) = &job.periodic {
        if periodic.enabled && !job.job_type.is_batch_like() {
            p.push(
                "periodic: ",
                format!("periodic can only be used with batch or sysbatch jobs, not {}", job.job_type),
            );
        }
        // Both periodic and parameterized is allowed, as in Nomad: each
        // dispatched child is a periodic job.
        if job.parent_id.is_some() && !job.is_dispatched() {
            p.push("periodic: ", "a child job cannot be periodic");
        }
        for problem in crate::periodic::periodic_problems(periodic) {
            p.push("periodic: ", problem);
        }
    }
    let system = job.job_type.is_system_like();
    validate_constraints(&mut p, "", &job.constraints);
    validate_affinities(&mut p, "", &job.affinities, job.job_type);
    if system && !job.spreads.is_empty() {
        p.push("", format!("{} jobs may not have a spread block", job.job_type));
    } else {
        validate_spreads(&mut p, "", &job.spreads);
    }
    if let Some(update) = &job.update {
        validate_update(&mut p, "update: ", update, job.job_type);
    }
    let mut names: Vec<&str> = Vec::with_capacity(job.task_groups.len());
    for (i, group) in job.task_groups.iter().enumerate() {
        if group.name.is_empty() {
            p.push("", format!("group {} has no name", i + 1));
        } else if let Some(first) = names.iter().position(|n| *n == &*group.name) {
            p.push("", format!("group {} redefines {:?} from group {}", i + 1, group.name, first + 1));
        }
        let at = place("group", i, &group.name, &names);
        names.push(&group.name);
        validate_group(&mut p, &at, group, job.job_type);
    }
    p.finish()
}

/// Where a group or task is, for messages: `group "web": `, or with its
/// position when it has no name or repeats an earlier one (`group 2 "web": `).
fn place(kind: &str, index: usize, name: &str, earlier: &[&str]) -> String {
    if name.is_empty() {
        format!("{kind} {}: ", index + 1)
    } else if earlier.contains(&name) {
        format!("{kind} {} {name:?}: ", index + 1)
    } else {
        format!("{kind} {name:?}: ")
    }
}

fn validate_group(p: &mut Problems, at: &str, group: &TaskGroup, job_type: JobType) {
    let system = job_type.is_system_like();
    if system && group.count > 1 {
        p.push(at, format!("count {} is more than 1, the most a {job_type} job runs per node", group.count));
    }
    if group.gang && group.count == 0 {
        p.push(at, "a gang group needs a count of at least 1");
    }
    if group.tasks.is_empty() {
        p.push(at, "missing tasks");
    } else if !group.tasks.iter().any(Task::is_main) {
        p.push(at, "must have at least one main task (a task without a lifecycle hook)");
    }
    validate_constraints(p, at, &group.constraints);
    validate_affinities(p, at, &group.affinities, job_type);
    if system && !group.spreads.is_empty() {
        p.push(at, format!("{job_type} jobs may not have a spread block"));
    } else {
        validate_spreads(p, at, &group.spreads);
    }
    validate_restart(p, &format!("{at}restart policy: "), &group.restart_policy);
    match (&group.reschedule_policy, system) {
        (Some(_), true) => p.push(at, format!("{job_type} jobs may not have a reschedule policy")),
        (Some(policy), false) => validate_reschedule(p, &format!("{at}reschedule policy: "), policy),
        (None, _) => {}
    }
    if let Some(update) = &group.update {
        validate_update(p, &format!("{at}update: "), update, job_type);
    }
    if let Some(migrate) = &group.migrate {
        if job_type == JobType::Service {
            validate_migrate(p, &format!("{at}migrate: "), migrate);
        } else {
            p.push(at, format!("{job_type} jobs may not have a migrate block"));
        }
    }
    if let Some(ns) = group.max_client_disconnect_ns
        && ns < 0
    {
        p.push(at, format!("max_client_disconnect {} must not be negative", duration(ns)));
    }
    let mut labels: HashSet<&str> = HashSet::with_capacity(group.ports.len());
    let mut static_ports: HashSet<u16> = HashSet::with_capacity(group.ports.len());
    for (i, port) in group.ports.iter().enumerate() {
        if port.label.is_empty() {
            p.push(at, format!("port {} has no label", i + 1));
        } else if !labels.insert(&port.label) {
            p.push(at, format!("port label {:?} is used twice", port.label));
        }
        match port.static_port {
            Some(0) => p.push(at, format!("port {:?}: static port must not be 0", port.label)),
            Some(value) if !static_ports.insert(value) => {
                p.push(at, format!("port {:?}: static port {value} is already reserved", port.label));
            }
            _ => {}
        }
    }
    let mut names: Vec<&str> = Vec::with_capacity(group.tasks.len());
    for (i, task) in group.tasks.iter().enumerate() {
        if task.name.is_empty() {
            p.push(at, format!("task {} has no name", i + 1));
        } else if let Some(first) = names.iter().position(|n| *n == &*task.name) {
            p.push(at, format!("task {} redefines {:?} from task {}", i + 1, task.name, first + 1));
        }
        names.push(&task.name);
    }
    let leaders = group.tasks.iter().filter(|t| t.leader).count();
    if leaders > 1 {
        p.push(at, format!("{leaders} tasks are marked leader; at most one may be"));
    }
    for (i, task) in group.tasks.iter().enumerate() {
        let task_at = format!("{at}{}", place("task", i, &task.name, &names[..i]));
        validate_task(p, &task_at, task, job_type);
    }
}

fn is_driver_name(name: &str) -> bool {
    name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

fn validate_task(p: &mut Problems, at: &str, task: &Task, job_type: JobType) {
    if task.name.contains(['/', '\\']) {
        p.push(at, "task name cannot include slashes");
    }
    if task.driver.is_empty() {
        p.push(at, "missing driver");
    } else if !is_driver_name(&task.driver) {
        p.push(at, format!("unknown driver name syntax {:?}", task.driver));
    }
    if task.kill_timeout_ns < 0 {
        p.push(at, format!("kill_timeout {} must not be negative", duration(task.kill_timeout_ns)));
    }
    let r = &task.resources;
    if r.cores == 0 && r.cpu_mhz < TASK_CPU_MHZ_MIN {
        p.push(at, format!("cpu {} MHz is below the minimum of {TASK_CPU_MHZ_MIN} MHz", r.cpu_mhz));
    }
    if r.cpu_mhz > TASK_CPU_MHZ_MAX {
        p.push(at, format!("resources out of range: cpu {} MHz is above {TASK_CPU_MHZ_MAX} MHz", r.cpu_mhz));
    }
    if r.memory_mb < TASK_MEMORY_MB_MIN {
        p.push(at, format!("memory {} MB is below the minimum of {TASK_MEMORY_MB_MIN} MB", r.memory_mb));
    }
    if r.memory_mb > TASK_MEMORY_MB_MAX || r.memory_max_mb > TASK_MEMORY_MB_MAX {
        let memory_mb = r.memory_mb.max(r.memory_max_mb);
        p.push(at, format!("resources out of range: memory {memory_mb} MB is above {TASK_MEMORY_MB_MAX} MB"));
    }
    if r.memory_max_mb != 0 && r.memory_max_mb < r.memory_mb {
        p.push(at, format!("memory_max {} MB is below memory {} MB", r.memory_max_mb, r.memory_mb));
    }
    for (i, device) in r.devices.iter().enumerate() {
        validate_device(p, &format!("{at}device {} ({:?}): ", i + 1, device.name), device);
    }
    validate_constraints(p, at, &task.constraints);
    validate_affinities(p, at, &task.affinities, job_type);
}

fn validate_device(p: &mut Problems, at: &str, device: &DeviceRequest) {
    let parts = device.name.split('/').count();
    if device.name.split('/').any(str::is_empty) || parts > 3 {
        p.push(at, "device name must be type, vendor/type or vendor/type/model");
    }
    if device.count == 0 {
        p.push(at, "count must be at least 1");
    }
    for (i, c) in device.constraints.iter().enumerate() {
        let c_at = format!("{at}constraint {} ({c}): ", i + 1);
        if matches!(c.operand, ConstraintOp::DistinctHosts | ConstraintOp::DistinctProperty) {
            p.push(&c_at, format!("operator {} is not supported on devices", c.operand));
        } else {
            validate_condition(p, &c_at, c.operand, &c.l_target, &c.r_target);
        }
    }
    for (i, a) in device.affinities.iter().enumerate() {
        validate_affinity(p, &format!("{at}affinity {} ({} {} {}): ", i + 1, a.l_target, a.operand, a.r_target), a);
    }
}

fn validate_constraints(p: &mut Problems, at: &str, constraints: &[Constraint]) {
    for (i, c) in constraints.iter().enumerate() {
        validate_condition(p, &format!("{at}constraint {} ({c}): ", i + 1), c.operand, &c.l_target, &c.r_target);
    }
}

/// The operator-specific checks shared by constraints and affinities.
fn validate_condition(p: &mut Problems, at: &str, op: ConstraintOp, l_target: &str, r_target: &str) {
    use ConstraintOp::*;
    if l_target.is_empty() && op != DistinctHosts {
        p.push(at, "missing attribute (left target)");
    }
    match op {
        DistinctHosts => {
            if !matches!(r_target, "" | "true" | "false") {
                p.push(at, format!("distinct_hosts value {r_target:?} must be true or false"));
            }
        }
        DistinctProperty => {
            if !r_target.is_empty() && !r_target.parse::<u64>().is_ok_and(|n| n >= 1) {
                p.push(at, format!("distinct_property limit {r_target:?} must be a whole number of at least 1"));
            }
        }
        Regexp => {
            if let Err(e) = compile_regex(r_target) {
                let reason = e.to_string();
                let reason = reason.lines().last().unwrap_or_default().trim();
                let reason = reason.strip_prefix("error: ").unwrap_or(reason).to_string();
                p.push(at, format!("regexp {r_target:?} does not compile: {reason}"));
            }
        }
        Version => {
            if let Err(e) = parse_version_constraint(r_target) {
                p.push(at, format!("version constraint {r_target:?} is invalid: {e}"));
            }
        }
        Semver => {
            if let Err(e) = parse_semver_constraint(r_target) {
                p.push(at, format!("semver constraint {r_target:?} is invalid: {e}"));
            }
        }
        IsSet | IsNotSet => {}
        SetContains | SetContainsAll | SetContainsAny | Equal | NotEqual | Less | LessEqual | Greater
        | GreaterEqual => {
            if r_target.is_empty() {
                p.push(at, format!("operator {op} requires a value"));
            }
        }
    }
}

fn validate_affinities(p: &mut Problems, at: &str, affinities: &[Affinity], job_type: JobType) {
    if job_type.is_system_like() && !affinities.is_empty() {
        p.push(at, format!("{job_type} jobs may not have an affinity block"));
        return;
    }
    for (i, a) in affinities.iter().enumerate() {
        validate_affinity(p, &format!("{at}affinity {} ({} {} {}): ", i + 1, a.l_target, a.operand, a.r_target), a);
    }
}

fn validate_affinity(p: &mut Problems, at: &str, a: &Affinity) {
    if matches!(a.operand, ConstraintOp::DistinctHosts | ConstraintOp::DistinctProperty) {
        p.push(at, format!("operator {} is not allowed in an affinity", a.operand));
    } else {
        validate_condition(p, at, a.operand, &a.l_target, &a.r_target);
    }
    if a.weight == 0 {
        p.push(at, "weight must not be 0");
    } else if !(-100..=100).contains(&a.weight) {
        p.push(at, format!("weight {} is outside -100..=100", a.weight));
    }
}

fn validate_spreads(p: &mut Problems, at: &str, spreads: &[Spread]) {
    for (i, spread) in spreads.iter().enumerate() {
        let at = format!("{at}spread {} ({}): ", i + 1, spread.attribute);
        if spread.attribute.is_empty() {
            p.push(&at, "missing attribute");
        }
        // Nomad: a spread needs a positive weight; 0 would make it a no-op.
        if !(1..=100).contains(&spread.weight) {
            p.push(&at, format!("weight {} is outside 1..=100", spread.weight));
        }
        let mut seen: HashSet<&str> = HashSet::with_capacity(spread.targets.len());
        let mut percent_sum: u32 = 0;
        for target in &spread.targets {
            if !seen.insert(&target.value) {
                p.push(&at, format!("target {:?} is listed more than once", target.value));
            }
            if target.percent > 100 {
                p.push(&at, format!("target {:?} percent {} is above 100", target.value, target.percent));
            }
            percent_sum += u32::from(target.percent);
        }
        if percent_sum > 100 {
            p.push(&at, format!("target percents add up to {percent_sum}, more than 100"));
        }
    }
}

fn validate_restart(p: &mut Problems, at: &str, r: &RestartPolicy) {
    if r.attempts == 0 && r.mode != RestartMode::Fail {
        p.push(at, "mode delay with 0 attempts is ambiguous");
    }
    if r.delay_ns < 0 {
        p.push(at, format!("delay {} must not be negative", duration(r.delay_ns)));
    }
    if r.interval_ns < RESTART_INTERVAL_MIN_NS {
        p.push(
            at,
            format!(
                "interval {} is below the minimum of {}",
                duration(r.interval_ns),
                duration(RESTART_INTERVAL_MIN_NS)
            ),
        );
    }
    if i64::from(r.attempts).saturating_mul(r.delay_ns) > r.interval_ns {
        p.push(
            at,
            format!(
                "cannot restart {} times in an interval of {} with a delay of {}",
                r.attempts,
                duration(r.interval_ns),
                duration(r.delay_ns)
            ),
        );
    }
}

fn validate_reschedule(p: &mut Problems, at: &str, r: &ReschedulePolicy) {
    let enabled = r.attempts > 0 || r.unlimited;
    if !enabled {
        return;
    }
    if r.attempts > 0 {
        if r.interval_ns <= 0 {
            p.push(at, "interval must be positive when attempts > 0");
        }
        if r.unlimited {
            p.push(at, format!("attempts {} with unlimited = true is ambiguous", r.attempts));
        }
    }
    if r.attempts > RESCHEDULE_ATTEMPTS_MAX {
        p.push(at, format!("attempts {} is above {RESCHEDULE_ATTEMPTS_MAX}; use unlimited", r.attempts));
    }
    let mut delays_ok = true;
    if r.delay_ns < RESCHEDULE_DELAY_MIN_NS {
        p.push(
            at,
            format!("delay {} is below the minimum of {}", duration(r.delay_ns), duration(RESCHEDULE_DELAY_MIN_NS)),
        );
        delays_ok = false;
    }
    if r.delay_function != DelayFunction::Constant {
        if r.max_delay_ns < RESCHEDULE_DELAY_MIN_NS {
            p.push(
                at,
                format!(
                    "max_delay {} is below the minimum of {}",
                    duration(r.max_delay_ns),
                    duration(RESCHEDULE_DELAY_MIN_NS)
                ),
            );
            delays_ok = false;
        }
        if r.max_delay_ns < r.delay_ns {
            p.push(at, format!("max_delay {} is below delay {}", duration(r.max_delay_ns), duration(r.delay_ns)));
            delays_ok = false;
        }
    }
    if !r.unlimited {
        if r.interval_ns < RESCHEDULE_INTERVAL_MIN_NS {
            p.push(
                at,
                format!(
                    "interval {} is below the minimum of {}",
                    duration(r.interval_ns),
                    duration(RESCHEDULE_INTERVAL_MIN_NS)
                ),
            );
        }
        if delays_ok
            && r.attempts <= RESCHEDULE_ATTEMPTS_MAX
            && let Some((possible, recommended_ns)) = attempts_that_fit(r)
        {
            p.push(
                at,
                format!(
                    "only {possible} of {} attempts fit in an interval of {} with delay {} and delay function {}; \
                     set the interval to at least {}",
                    r.attempts,
                    duration(r.interval_ns),
                    duration(r.delay_ns),
                    r.delay_function.as_str(),
                    duration(recommended_ns.saturating_add(SECOND_NS / 2) / SECOND_NS * SECOND_NS)
                ),
            );
        }
    }
}

/// Nomad's `viableAttempts`: `None` when every attempt fits in the interval,
/// else (attempts that fit, interval that would fit them all).
fn attempts_that_fit(r: &ReschedulePolicy) -> Option<(u32, i64)> {
    assert!(r.attempts <= RESCHEDULE_ATTEMPTS_MAX);
    let attempts = r.attempts;
    match r.delay_function {
        DelayFunction::Constant => {
            let recommended = i64::from(attempts).saturating_mul(r.delay_ns);
            if r.interval_ns >= recommended {
                return None;
            }
            let possible = u32::try_from((r.interval_ns / r.delay_ns).max(0)).unwrap_or(u32::MAX);
            Some((possible, recommended))
        }
        DelayFunction::Exponential => {
            let mut possible = 0;
            let mut recommended: i64 = 0;
            for i in 0..attempts {
                let factor = 1i64.checked_shl(i).filter(|f| *f > 0).unwrap_or(i64::MAX);
                let next = factor.saturating_mul(r.delay_ns);
                if next > r.max_delay_ns {
                    recommended = recommended.saturating_add(r.max_delay_ns);
                } else {
                    recommended = next;
                }
                if recommended < r.interval_ns {
                    possible += 1;
                }
            }
            (possible < attempts).then_some((possible, recommended))
        }
        DelayFunction::Fibonacci => {
            let len = attempts.max(2) as usize;
            let mut slots: Vec<i64> = Vec::with_capacity(len);
            slots.extend([r.delay_ns, r.delay_ns]);
            let mut ceiling = false;
            for i in 2..len {
                let next = if ceiling {
                    slots[i - 1].saturating_add(r.max_delay_ns)
                } else {
                    let sum = slots[i - 1].saturating_add(slots[i - 2]);
                    if sum > r.max_delay_ns {
                        ceiling = true;
                        r.max_delay_ns
                    } else {
                        sum
                    }
                };
                slots.push(next);
            }
            let recommended = slots[len - 1];
            if r.interval_ns >= recommended {
                return None;
            }
            let possible = slots.iter().position(|s| *s > r.interval_ns).unwrap_or(0);
            Some((u32::try_from(possible).unwrap_or(u32::MAX), recommended))
        }
    }
}

fn validate_update(p: &mut Problems, at: &str, u: &UpdateStrategy, job_type: JobType) {
    if !matches!(job_type, JobType::Service | JobType::System) {
        p.push(at, format!("{job_type} jobs may not have an update block"));
    }
    if !matches!(&*u.health_check, "checks" | "task_states" | "manual") {
        p.push(at, format!("unknown health_check {:?}", u.health_check));
    }
    if u.auto_promote && u.canary == 0 {
        p.push(at, "auto_promote needs a canary count above 0");
    }
    if u.min_healthy_time_ns < 0 {
        p.push(at, format!("min_healthy_time {} must not be negative", duration(u.min_healthy_time_ns)));
    }
    if u.healthy_deadline_ns <= 0 {
        p.push(at, format!("healthy_deadline {} must be positive", duration(u.healthy_deadline_ns)));
    }
    if u.progress_deadline_ns < 0 {
        p.push(at, format!("progress_deadline {} must not be negative", duration(u.progress_deadline_ns)));
    }
    if u.min_healthy_time_ns >= u.healthy_deadline_ns {
        p.push(
            at,
            format!(
                "min_healthy_time {} must be less than healthy_deadline {}",
                duration(u.min_healthy_time_ns),
                duration(u.healthy_deadline_ns)
            ),
        );
    }
    if u.progress_deadline_ns != 0 && u.healthy_deadline_ns >= u.progress_deadline_ns {
        p.push(
            at,
            format!(
                "healthy_deadline {} must be less than progress_deadline {}",
                duration(u.healthy_deadline_ns),
                duration(u.progress_deadline_ns)
            ),
        );
    }
    if u.stagger_ns <= 0 {
        p.push(at, format!("stagger {} must be positive", duration(u.stagger_ns)));
    }
}

fn validate_migrate(p: &mut Problems, at: &str, m: &MigrateStrategy) {
    match &*m.health_check {
        "checks" | "task_states" => {}
        "" if m.max_parallel == 0 => {}
        "" => p.push(at, "missing health_check"),
        other => p.push(at, format!("unknown health_check {other:?}")),
    }
    if m.min_healthy_time_ns < 0 {
        p.push(at, format!("min_healthy_time {} must not be negative", duration(m.min_healthy_time_ns)));
    }
    if m.healthy_deadline_ns < 0 {
        p.push(at, format!("healthy_deadline {} must not be negative", duration(m.healthy_deadline_ns)));
    }
    if m.min_healthy_time_ns > m.healthy_deadline_ns {
        p.push(
            at,
            format!(
                "min_healthy_time {} must be less than healthy_deadline {}",
                duration(m.min_healthy_time_ns),
                duration(m.healthy_deadline_ns)
            ),
        );
    }
}

/// Check a node as registered by its client; `Err` lists every problem.
pub fn validate_node(node: &Node) -> Result<(), ValidationError> {
    let mut p = Problems::default();
    if node.id.is_nil() {
        p.push("", "missing node id");
    }
    if node.name.is_empty() {
        p.push("", "missing node name");
    }
    if node.datacenter.text().is_empty() {
        p.push("", "missing datacenter");
    }
    let r = &node.resources;
    if r.cpu_mhz == 0 {
        p.push("", "cpu must be above 0 MHz");
    }
    if r.memory_mb == 0 {
        p.push("", "memory must be above 0 MB");
    }
    if r.min_dynamic_port == 0 || r.max_dynamic_port == 0 {
        p.push("", "dynamic port range must not include port 0");
    }
    if r.min_dynamic_port > r.max_dynamic_port {
        p.push("", format!("min_dynamic_port {} is above max_dynamic_port {}", r.min_dynamic_port, r.max_dynamic_port));
    }
    let reserved = &node.reserved;
    if reserved.cpu_mhz > r.cpu_mhz {
        p.push("", format!("reserved cpu {} MHz is more than the total {} MHz", reserved.cpu_mhz, r.cpu_mhz));
    }
    if reserved.memory_mb > r.memory_mb {
        p.push("", format!("reserved memory {} MB is more than the total {} MB", reserved.memory_mb, r.memory_mb));
    }
    if reserved.disk_mb > r.disk_mb {
        p.push("", format!("reserved disk {} MB is more than the total {} MB", reserved.disk_mb, r.disk_mb));
    }
    let mut ids: HashSet<&str> = HashSet::new();
    for group in &r.devices {
        let at = format!("device {}/{}/{}: ", group.vendor, group.kind, group.name);
        if group.kind.is_empty() {
            p.push(&at, "missing device type");
        }
        for (i, instance) in group.instances.iter().enumerate() {
            if instance.id.is_empty() {
                p.push(&at, format!("instance {} has no id", i + 1));
            } else if !ids.insert(&instance.id) {
                p.push(&at, format!("instance id {:?} is used twice on this node", instance.id));
            }
        }
    }
    p.finish()
}

#[cfg(test)]
mod tests {
    use std::fmt::Write;

    use expect_test::{Expect, expect};

    use super::*;
    use crate::ids::NodeId;
    use crate::model::{DeviceInstance, NodeDeviceResource, NodeResources, PortRequest, SpreadTarget};

    fn report(result: Result<(), ValidationError>) -> String {
        match result {
            Ok(()) => "ok\n".to_string(),
            Err(e) => {
                let mut out = format!("{}\n", e.to_string().split(": ").next().unwrap());
                for problem in &e.problems {
                    writeln!(out, "- {problem}").unwrap();
                }
                out
            }
        }
    }

    fn check_job(job: &Job, expect: Expect) {
        expect.assert_eq(&report(validate_job(job)));
    }

    fn good_job() -> Job {
        let task = Task::new("api", "docker");
        let group = TaskGroup::new("web", 3, JobType::Service, vec![task]);
        Job::new("example", JobType::Service, vec![group])
    }

    #[test]
    fn defaults_are_valid() {
        check_job(&good_job(), expect!["ok\n"]);
        for job_type in JobType::ALL {
            let count = if job_type.is_system_like() { 1 } else { 3 };
            let group = TaskGroup::new("g", count, job_type, vec![Task::new("t", "raw_exec")]);
            let job = Job::new("j", job_type, vec![group]);
            assert_eq!(validate_job(&job), Ok(()), "{job_type}");
        }
    }

    #[test]
    fn lists_every_problem() {
        let mut job = good_job();
        job.id = "bad id".into();
        job.name = "".into();
        job.region = "".into();
        job.priority = 0;
        job.datacenters = vec!["dc1".into(), "".into()];
        job.constraints = vec![
            Constraint::new("${attr.kernel.name}", ConstraintOp::Regexp, "[a-"),
            Constraint::new("${attr.version}", ConstraintOp::Version, ">= one"),
            Constraint::new("${attr.version}", ConstraintOp::Semver, "~> 1.2"),
            Constraint::new("", ConstraintOp::DistinctProperty, "0"),
            Constraint::new("", ConstraintOp::DistinctHosts, "yes"),
            Constraint::new("${meta.tags}", ConstraintOp::SetContains, ""),
            Constraint::new("${meta.gpu}", ConstraintOp::IsSet, "ignored"),
        ];
        job.affinities = vec![
            Affinity {
                l_target: "${node.class}".into(),
                r_target: "big".into(),
                operand: ConstraintOp::Equal,
                weight: 0,
            },
            Affinity {
                l_target: "${node.class}".into(),
                r_target: "".into(),
                operand: ConstraintOp::DistinctHosts,
                weight: -101,
            },
        ];
        job.spreads = vec![Spread {
            attribute: "".into(),
            weight: 0,
            targets: vec![
                SpreadTarget { value: "dc1".into(), percent: 70 },
                SpreadTarget { value: "dc1".into(), percent: 40 },
            ],
        }];
        let group = &mut job.task_groups[0];
        group.restart_policy.interval_ns = 10 * SECOND_NS;
        group.ports = vec![
            PortRequest { label: "http".into(), static_port: Some(0), to: 0 },
            PortRequest { label: "http".into(), static_port: None, to: 0 },
            PortRequest { label: "".into(), static_port: None, to: 0 },
        ];
        group.reschedule_policy = Some(ReschedulePolicy {
            attempts: 3,
            interval_ns: 10 * SECOND_NS,
            delay_ns: SECOND_NS,
            delay_function: DelayFunction::Exponential,
            max_delay_ns: 0,
            unlimited: true,
        });
        group.update = Some(UpdateStrategy {
            min_healthy_time_ns: 5 * 60 * SECOND_NS,
            progress_deadline_ns: 60 * SECOND_NS,
            ..Default::default()
        });
        let mut api = Task::new("api", "Docker");
        api.resources.memory_mb = 5;
        api.resources.memory_max_mb = 4;
        api.resources.cpu_mhz = 5_000_000;
        api.resources.devices = vec![
            DeviceRequest { name: "nvidia//h200".into(), count: 0, constraints: vec![], affinities: vec![] },
            DeviceRequest {
                name: "gpu".into(),
                count: 1,
                constraints: vec![Constraint::new("${device.model}", ConstraintOp::DistinctHosts, "")],
                affinities: vec![],
            },
        ];
        let mut sidecar = Task::new("api", "");
        sidecar.resources.cpu_mhz = 0;
        let nameless = Task::new("a/b", "raw_exec");
        group.tasks = vec![api, sidecar, nameless];
        let mut empty = TaskGroup::new("web", 1, JobType::Service, vec![]);
        empty.reschedule_policy = Some(ReschedulePolicy {
            attempts: 10,
            interval_ns: 60 * SECOND_NS,
            delay_ns: 10 * SECOND_NS,
            delay_function: DelayFunction::Constant,
            max_delay_ns: 0,
            unlimited: false,
        });
        job.task_groups.push(empty);
        check_job(
            &job,
            expect![[r#"
                43 errors
                - job id "bad id" contains a space
                - missing job name
                - missing region
                - priority 0 is outside 1..=100
                - datacenter 2 is empty
                - constraint 1 (${attr.kernel.name} regexp [a-): regexp "[a-" does not compile: unclosed character class
                - constraint 2 (${attr.version} version >= one): version constraint ">= one" is invalid: malformed constraint ">= one"
                - constraint 3 (${attr.version} semver ~> 1.2): semver constraint "~> 1.2" is invalid: malformed constraint "~> 1.2"
                - constraint 4 ( distinct_property 0): missing attribute (left target)
                - constraint 4 ( distinct_property 0): distinct_property limit "0" must be a whole number of at least 1
                - constraint 5 ( distinct_hosts yes): distinct_hosts value "yes" must be true or false
                - constraint 6 (${meta.tags} set_contains ): operator set_contains requires a value
                - affinity 1 (${node.class} = big): weight must not be 0
                - affinity 2 (${node.class} distinct_hosts ): operator distinct_hosts is not allowed in an affinity
                - affinity 2 (${node.class} distinct_hosts ): weight -101 is outside -100..=100
                - spread 1 (): missing attribute
                - spread 1 (): weight 0 is outside 1..=100
                - spread 1 (): target "dc1" is listed more than once
                - spread 1 (): target percents add up to 110, more than 100
                - group "web": restart policy: cannot restart 2 times in an interval of 10s with a delay of 15s
                - group "web": reschedule policy: attempts 3 with unlimited = true is ambiguous
                - group "web": reschedule policy: delay 1s is below the minimum of 5s
                - group "web": reschedule policy: max_delay 0s is below the minimum of 5s
                - group "web": reschedule policy: max_delay 0s is below delay 1s
                - group "web": update: min_healthy_time 300s must be less than healthy_deadline 300s
                - group "web": update: healthy_deadline 300s must be less than progress_deadline 60s
                - group "web": port "http": static port must not be 0
                - group "web": port label "http" is used twice
                - group "web": port 3 has no label
                - group "web": task 2 redefines "api" from task 1
                - group "web": task "api": unknown driver name syntax "Docker"
                - group "web": task "api": resources out of range: cpu 5000000 MHz is above 4000000 MHz
                - group "web": task "api": memory 5 MB is below the minimum of 10 MB
                - group "web": task "api": memory_max 4 MB is below memory 5 MB
                - group "web": task "api": device 1 ("nvidia//h200"): device name must be type, vendor/type or vendor/type/model
                - group "web": task "api": device 1 ("nvidia//h200"): count must be at least 1
                - group "web": task "api": device 2 ("gpu"): constraint 1 (${device.model} distinct_hosts ): operator distinct_hosts is not supported on devices
                - group "web": task 2 "api": missing driver
                - group "web": task 2 "api": cpu 0 MHz is below the minimum of 1 MHz
                - group "web": task "a/b": task name cannot include slashes
                - group 2 redefines "web" from group 1
                - group 2 "web": missing tasks
                - group 2 "web": reschedule policy: only 6 of 10 attempts fit in an interval of 60s with delay 10s and delay function constant; set the interval to at least 100s
            "#]],
        );
        let message = validate_job(&job).unwrap_err().to_string();
        assert!(message.starts_with("43 errors: job id \"bad id\" contains a space; missing job name; "), "{message}");
    }

    #[test]
    fn job_level_limits() {
        let mut job = good_job();
        job.id = "x".repeat(129).into();
        job.namespace = "".into();
        job.datacenters.clear();
        job.task_groups.clear();
        job.job_type = JobType::Batch;
        job.update = Some(UpdateStrategy::default());
        check_job(
            &job,
            expect![[r#"
                5 errors
                - job id is 129 characters, more than the maximum of 128
                - missing namespace
                - missing datacenters
                - missing task groups
                - update: batch jobs may not have an update block
            "#]],
        );
    }

    #[test]
    fn system_jobs() {
        let mut group = TaskGroup::new("agent", 2, JobType::System, vec![Task::new("t", "exec")]);
        group.reschedule_policy = ReschedulePolicy::default_for(JobType::Service);
        group.affinities = vec![Affinity {
            l_target: "${node.class}".into(),
            r_target: "x".into(),
            operand: ConstraintOp::Equal,
            weight: 50,
        }];
        group.spreads = vec![Spread { attribute: "${node.datacenter}".into(), weight: 50, targets: vec![] }];
        group.migrate = Some(MigrateStrategy::default());
        let mut gang = TaskGroup::new("gang", 0, JobType::System, vec![Task::new("t", "exec")]);
        gang.gang = true;
        let job = Job::new("sys", JobType::System, vec![group, gang]);
        check_job(
            &job,
            expect![[r#"
                6 errors
                - group "agent": count 2 is more than 1, the most a system job runs per node
                - group "agent": system jobs may not have an affinity block
                - group "agent": system jobs may not have a spread block
                - group "agent": system jobs may not have a reschedule policy
                - group "agent": system jobs may not have a migrate block
                - group "gang": a gang group needs a count of at least 1
            "#]],
        );
    }

    #[test]
    fn a_group_keeps_a_main_task() {
        use crate::model::{LifecycleHook, TaskLifecycle};
        let hooked = |name: &str, hook| {
            let mut task = Task::new(name, "raw_exec");
            task.lifecycle = Some(TaskLifecycle { hook, sidecar: false });
            task
        };
        let only_hooks = vec![hooked("init", LifecycleHook::Prestart), hooked("cleanup", LifecycleHook::Poststop)];
        let mut with_main = only_hooks.clone();
        with_main.push(Task::new("main", "raw_exec"));
        let groups = vec![
            TaskGroup::new("hooks", 1, JobType::Batch, only_hooks),
            TaskGroup::new("ok", 1, JobType::Batch, with_main),
        ];
        check_job(
            &Job::new("j", JobType::Batch, groups),
            expect![[r#"
                1 error
                - group "hooks": must have at least one main task (a task without a lifecycle hook)
            "#]],
        );
    }

    #[test]
    fn reschedule_attempts_that_fit() {
        let policy = |attempts, interval_s: i64, delay_s: i64, delay_function, max_delay_s: i64| ReschedulePolicy {
            attempts,
            interval_ns: interval_s * SECOND_NS,
            delay_ns: delay_s * SECOND_NS,
            delay_function,
            max_delay_ns: max_delay_s * SECOND_NS,
            unlimited: false,
        };
        let cases = [
            policy(1, 24 * 3600, 5, DelayFunction::Constant, 0),
            policy(5, 60, 5, DelayFunction::Exponential, 60),
            policy(5, 60, 10, DelayFunction::Exponential, 60),
            policy(5, 60, 5, DelayFunction::Fibonacci, 60),
            policy(8, 60, 5, DelayFunction::Fibonacci, 20),
            policy(RESCHEDULE_ATTEMPTS_MAX + 1, 60, 5, DelayFunction::Exponential, 60),
            policy(3, 10, 5, DelayFunction::Constant, 0),
        ];
        let mut out = String::new();
        for r in &cases {
            let mut p = Problems::default();
            validate_reschedule(&mut p, "", r);
            writeln!(out, "{} x{} in {}: {:?}", r.delay_function.as_str(), r.attempts, duration(r.interval_ns), p.list)
                .unwrap();
        }
        expect![[r#"
            constant x1 in 86400s: []
            exponential x5 in 60s: ["only 4 of 5 attempts fit in an interval of 60s with delay 5s and delay function exponential; set the interval to at least 100s"]
            exponential x5 in 60s: ["only 3 of 5 attempts fit in an interval of 60s with delay 10s and delay function exponential; set the interval to at least 160s"]
            fibonacci x5 in 60s: []
            fibonacci x8 in 60s: ["only 7 of 8 attempts fit in an interval of 60s with delay 5s and delay function fibonacci; set the interval to at least 80s"]
            exponential x10001 in 60s: ["attempts 10001 is above 10000; use unlimited"]
            constant x3 in 10s: ["interval 10s is below the minimum of 15s", "only 2 of 3 attempts fit in an interval of 10s with delay 5s and delay function constant; set the interval to at least 15s"]
        "#]]
        .assert_eq(&out);
    }

    #[test]
    fn nodes() {
        let good = Node::new(
            NodeId(1),
            "n1",
            "dc1",
            NodeResources { cpu_mhz: 4000, memory_mb: 8192, disk_mb: 0, ..Default::default() },
        );
        expect!["ok\n"].assert_eq(&report(validate_node(&good)));

        let instance = |id: &str| DeviceInstance {
            id: id.into(),
            healthy: true,
            health_description: "".into(),
            pci_bus_id: None,
            numa_node: None,
            link_island: None,
        };
        let mut bad = Node::new(NodeId::NIL, "", "", NodeResources::default());
        bad.resources.min_dynamic_port = 30000;
        bad.resources.max_dynamic_port = 20000;
        bad.reserved.cpu_mhz = 100;
        bad.reserved.memory_mb = 100;
        bad.reserved.disk_mb = 100;
        bad.resources.devices = vec![NodeDeviceResource {
            vendor: "nvidia".into(),
            kind: "gpu".into(),
            name: "NVIDIA H200".into(),
            attributes: Default::default(),
            instances: vec![instance("GPU-1"), instance("GPU-1"), instance("")],
        }];
        bad.compute_class();
        expect![[r#"
            11 errors
            - missing node id
            - missing node name
            - missing datacenter
            - cpu must be above 0 MHz
            - memory must be above 0 MB
            - min_dynamic_port 30000 is above max_dynamic_port 20000
            - reserved cpu 100 MHz is more than the total 0 MHz
            - reserved memory 100 MB is more than the total 0 MB
            - reserved disk 100 MB is more than the total 0 MB
            - device nvidia/gpu/NVIDIA H200: instance id "GPU-1" is used twice on this node
            - device nvidia/gpu/NVIDIA H200: instance 3 has no id
        "#]]
        .assert_eq(&report(validate_node(&bad)));
    }

    #[test]
    fn problems_are_bounded() {
        let groups: Vec<TaskGroup> =
            (0..PROBLEMS_MAX + 5).map(|i| TaskGroup::new(&format!("g{i}"), 1, JobType::Service, vec![])).collect();
        let job = Job::new("many", JobType::Service, groups);
        let err = validate_job(&job).unwrap_err();
        assert_eq!(err.problems.len(), PROBLEMS_MAX);
        assert_eq!(err.omitted, 5);
        assert!(err.to_string().starts_with("105 errors: "));
        assert!(err.to_string().ends_with("; and 5 more"));
    }
}
