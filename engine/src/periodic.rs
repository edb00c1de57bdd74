//! Periodic jobs: cron schedules in a time zone, and the leader's
//! dispatcher that decides which periodic jobs are due a launch.
//!
//! The decision is a pure function of a state snapshot and `now` (plus the
//! dispatcher's memory of the launches it skipped for `prohibit_overlap`);
//! the leader loop commits what it returns through
//! [`crate::endpoints::periodic_launch`]. What survives a leader change is
//! the state's launch table ([`crate::model::PeriodicLaunch`]): a new
//! leader computes every job's next launch from it, so a time already
//! launched is never launched again, and launches missed while no leader
//! ran are caught up with one launch, as Nomad does.
//!
//! ```
//! use caravan_engine::model::{Periodic, SECOND_NS};
//! use caravan_engine::periodic::CronSchedule;
//!
//! let schedule = CronSchedule::parse(&Periodic::cron(&["*/15 * * * *"])).unwrap();
//! // 00:00:01 UTC on 1 Jan 2030 → 00:15:00.
//! let start = 1_893_456_001 * SECOND_NS;
//! assert_eq!(schedule.next_after(start), Some(1_893_456_900 * SECOND_NS));
//! ```

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use chrono::{DateTime, TimeZone, Utc};
use chrono_tz::Tz;
use croner::Cron;
use croner::parser::{CronParser, Seconds};

use crate::ids::JobKey;
use crate::model::{Job, JobStatus, PERIODIC_LAUNCH_SUFFIX, Periodic, SECOND_NS, TimeNs};
use crate::state::State;

/// Most cron expressions in one `crons` list: each is evaluated at every
/// launch decision, and a handful covers every schedule a person writes.
pub const PERIODIC_SPECS_MAX: usize = 32;

/// Longest cron expression accepted (bytes): far above any real one, and
/// keeps a hostile spec from costing the parser more than a few µs.
pub const PERIODIC_SPEC_LEN_MAX: usize = 256;

/// A periodic block's expressions, parsed, in its time zone.
#[derive(Debug, Clone)]
pub struct CronSchedule {
    crons: Vec<Cron>,
    time_zone: Tz,
}

impl CronSchedule {
    /// Parse every expression and the time zone; `Err` lists each problem.
    pub fn parse(periodic: &Periodic) -> Result<CronSchedule, Vec<String>> {
        let mut problems = Vec::new();
        if periodic.specs.is_empty() {
            problems.push("must specify a cron expression (cron or crons)".to_string());
        }
        if periodic.specs.len() > PERIODIC_SPECS_MAX {
            problems.push(format!(
                "{} cron expressions, more than the maximum of {PERIODIC_SPECS_MAX}",
                periodic.specs.len()
            ));
        }
        let mut crons = Vec::with_capacity(periodic.specs.len().min(PERIODIC_SPECS_MAX));
        for spec in periodic.specs.iter().take(PERIODIC_SPECS_MAX) {
            match parse_cron(spec) {
                Ok(cron) => crons.push(cron),
                Err(e) => problems.push(format!("invalid cron spec {spec:?}: {e}")),
            }
        }
        let time_zone = parse_time_zone(&periodic.time_zone).unwrap_or_else(|e| {
            problems.push(e);
            Tz::UTC
        });
        if problems.is_empty() { Ok(CronSchedule { crons, time_zone }) } else { Err(problems) }
    }

    /// The earliest time strictly after `after_ns` that any expression
    /// names, truncated to whole seconds (cron's resolution); `None` when
    /// none names a time again (a year in the past, or past croner's
    /// search limit).
    pub fn next_after(&self, after_ns: TimeNs) -> Option<TimeNs> {
        let after = self.time_zone.from_utc_datetime(&utc(after_ns)?.naive_utc());
        self.crons
            .iter()
            .filter_map(|cron| cron.find_next_occurrence(&after, false).ok())
            .filter_map(|at| at.timestamp().checked_mul(SECOND_NS))
            .filter(|at_ns| *at_ns > after_ns)
            .min()
    }
}

fn utc(at_ns: TimeNs) -> Option<DateTime<Utc>> {
    // Whole seconds: a launch at 12:00:00.5 must not match 12:00:00 again.
    let secs = at_ns.div_euclid(SECOND_NS);
    DateTime::from_timestamp(secs, 0)
}

/// Nomad's cron dialect (cronexpr): 5 fields (minute to day of week), 6
/// (the same plus a year) or 7 (a second first, a year last), or one of the
/// `@yearly`, `@monthly`, `@weekly`, `@daily`, `@hourly` shorthands.
/// croner reads 6 fields as second-first, so a 6-field expression gets
/// Nomad's meaning by prefixing second 0.
fn parse_cron(spec: &str) -> Result<Cron, String> {
    if spec.len() > PERIODIC_SPEC_LEN_MAX {
        return Err(format!("longer than {PERIODIC_SPEC_LEN_MAX} bytes"));
    }
    let fields = spec.split_whitespace().count();
    let normalized = if fields == 6 && !spec.contains('@') { format!("0 {spec}") } else { spec.to_string() };
    CronParser::builder().seconds(Seconds::Optional).build().parse(&normalized).map_err(|e| e.to_string())
}

/// An IANA time zone name (`America/New_York`); empty means UTC.
pub fn parse_time_zone(name: &str) -> Result<Tz, String> {
    if name.is_empty() {
        return Ok(Tz::UTC);
    }
    name.parse::<Tz>().map_err(|_| format!("invalid time zone {name:?}: not in the IANA time zone database"))
}

/// The problems of a periodic block (for validation): bad expressions, an
/// unknown time zone. A disabled block is still checked, so enabling it
/// later cannot fail.
pub fn periodic_problems(periodic: &Periodic) -> Vec<String> {
    CronSchedule::parse(periodic).err().unwrap_or_default()
}

/// The id of the child launched at `launch_ns`: `<parent>/periodic-<unix s>`.
pub fn child_id(parent_id: &str, launch_ns: TimeNs) -> Arc<str> {
    format!("{parent_id}{PERIODIC_LAUNCH_SUFFIX}{}", launch_ns.div_euclid(SECOND_NS)).into()
}

/// The children a periodic job has launched that are still running or
/// waiting to run (not stopped, not dead), as Nomad's `RunningChildren`.
pub fn running_children<'a>(state: &'a State, parent: &'a Job) -> impl Iterator<Item = &'a Arc<Job>> + 'a {
    let prefix = format!("{}{PERIODIC_LAUNCH_SUFFIX}", parent.id);
    state
        .jobs_with_id_prefix(&parent.namespace, &prefix)
        .filter(|child| child.parent_id.as_deref() == Some(&*parent.id))
        .filter(|child| !child.stop && child.status != JobStatus::Dead)
}

/// Children of a job (launched or dispatched), in id order.
pub fn children<'a>(state: &'a State, parent: &'a Job) -> impl Iterator<Item = &'a Arc<Job>> + 'a {
    let prefix = format!("{}/", parent.id);
    state
        .jobs_with_id_prefix(&parent.namespace, &prefix)
        .filter(|child| child.parent_id.as_deref() == Some(&*parent.id))
}

/// The next time the leader launches an active periodic job: the first
/// time after its last recorded launch. `None` for any other job.
pub fn next_launch(state: &State, job: &Job) -> Option<TimeNs> {
    if !job.is_periodic_active() {
        return None;
    }
    let last_ns = state.periodic_launch(&job.key())?.launch_ns;
    CronSchedule::parse(job.periodic.as_ref()?).ok()?.next_after(last_ns)
}

/// One launch the dispatcher decided on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DueLaunch {
    pub key: JobKey,
    pub launch_ns: TimeNs,
}

/// The leader's periodic dispatcher (Nomad's `PeriodicDispatch`). Holds
/// only what raft need not know: the launch times it skipped because of
/// `prohibit_overlap`, so a skipped time is not retried when the running
/// child finishes. A new leader starts with an empty one.
#[derive(Debug, Default)]
pub struct PeriodicDispatcher {
    /// Per job, the latest launch time skipped (or handed out but not yet
    /// seen in the state): the next launch is computed after it.
    handled_ns: HashMap<JobKey, TimeNs>,
}

impl PeriodicDispatcher {
    pub fn new() -> PeriodicDispatcher {
        PeriodicDispatcher::default()
    }

    /// The launches due at `now_ns`, one per job at most, in job order.
    ///
    /// A job's next launch is the first time after its recorded launch (or
    /// after a time this dispatcher already handled). When it has come:
    /// normally the launch is at that time; when more than one time has
    /// passed (no leader ran), one launch at `now_ns` catches them all up.
    /// With `prohibit_overlap`, a time that comes while a child still runs
    /// is skipped.
    /// At most `launches_max` are returned; the rest stay due for the
    /// next call.
    pub fn due(&mut self, state: &State, now_ns: TimeNs, launches_max: usize) -> Vec<DueLaunch> {
        let mut due = Vec::new();
        let mut live: HashSet<&JobKey> = HashSet::new();
        let mut truncated = false;
        for (key, launch) in state.periodic_launches() {
            if due.len() >= launches_max {
                truncated = true;
                break;
            }
            let Some(job) = state.job(key).filter(|j| j.is_periodic_active()) else { continue };
            live.insert(key);
            let Some(periodic) = job.periodic.as_ref() else { continue };
            // Validated at register; a spec that no longer parses (a newer
            // server's dialect) launches nothing rather than panicking.
            let Ok(schedule) = CronSchedule::parse(periodic) else { continue };
            let handled_ns = self.handled_ns.get(key).copied().unwrap_or(launch.launch_ns).max(launch.launch_ns);
            let Some(next_ns) = schedule.next_after(handled_ns) else { continue };
            if next_ns > now_ns {
                continue;
            }
            let launch_ns = match schedule.next_after(next_ns) {
                Some(after_next) if after_next <= now_ns => now_ns,
                _ => next_ns,
            };
            self.handled_ns.insert(key.clone(), launch_ns);
            if periodic.prohibit_overlap && running_children(state, job).next().is_some() {
                continue;
            }
            due.push(DueLaunch { key: key.clone(), launch_ns });
        }
        // Forget jobs purged, stopped or disabled: bounded by live jobs.
        if !truncated {
            self.handled_ns.retain(|k, _| live.contains(k));
        }
        due
    }

    /// A launch [`Self::due`] returned could not be committed: forget it,
    /// so the next call decides again from the state's record.
    pub fn launch_failed(&mut self, key: &JobKey) {
        self.handled_ns.remove(key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 2030-01-01T00:00:00Z, a Tuesday.
    const Y2030_S: i64 = 1_893_456_000;

    fn at(offset_s: i64) -> TimeNs {
        (Y2030_S + offset_s) * SECOND_NS
    }

    #[test]
    fn five_six_and_seven_fields_read_as_nomad_reads_them() {
        let every_5_min = CronSchedule::parse(&Periodic::cron(&["*/5 * * * *"])).unwrap();
        assert_eq!(every_5_min.next_after(at(1)), Some(at(300)));
        // Six fields: minute .. day of week, then a year (not a second first).
        let in_2031 = CronSchedule::parse(&Periodic::cron(&["30 * * * * 2031"])).unwrap();
        assert_eq!(in_2031.next_after(at(0)), Some(at(365 * 86400 + 30 * 60)));
        // Seven fields: a second first, a year last.
        let second_10 = CronSchedule::parse(&Periodic::cron(&["10 * * * * * *"])).unwrap();
        assert_eq!(second_10.next_after(at(0)), Some(at(10)));
        let daily = CronSchedule::parse(&Periodic::cron(&["@daily"])).unwrap();
        assert_eq!(daily.next_after(at(0)), Some(at(86400)));
    }

    #[test]
    fn next_is_strictly_after_and_whole_seconds() {
        let hourly = CronSchedule::parse(&Periodic::cron(&["0 * * * *"])).unwrap();
        assert_eq!(hourly.next_after(at(0)), Some(at(3600)));
        assert_eq!(hourly.next_after(at(0) + 500_000_000), Some(at(3600)));
    }

    #[test]
    fn several_crons_launch_at_the_earliest() {
        let schedule = CronSchedule::parse(&Periodic::cron(&["0 12 * * *", "30 6 * * *"])).unwrap();
        assert_eq!(schedule.next_after(at(0)), Some(at(6 * 3600 + 1800)));
        assert_eq!(schedule.next_after(at(6 * 3600 + 1800)), Some(at(12 * 3600)));
    }

    #[test]
    fn time_zone_moves_the_launch() {
        let mut periodic = Periodic::cron(&["0 9 * * *"]);
        periodic.time_zone = "America/New_York".into();
        let schedule = CronSchedule::parse(&periodic).unwrap();
        // 09:00 in New York in January is 14:00 UTC.
        assert_eq!(schedule.next_after(at(0)), Some(at(14 * 3600)));
        // In July (daylight saving time) it is 13:00 UTC.
        let july_1 = Y2030_S + 181 * 86400;
        assert_eq!(schedule.next_after(july_1 * SECOND_NS), Some((july_1 + 13 * 3600) * SECOND_NS));
    }

    #[test]
    fn bad_specs_and_zones_are_each_named() {
        let mut periodic = Periodic::cron(&["not a cron", "*/5 * * * *", "61 * * * *"]);
        periodic.time_zone = "Mars/Olympus_Mons".into();
        let problems = CronSchedule::parse(&periodic).unwrap_err();
        assert_eq!(problems.len(), 3, "{problems:?}");
        assert!(problems[0].starts_with("invalid cron spec \"not a cron\""), "{problems:?}");
        assert!(problems[1].starts_with("invalid cron spec \"61 * * * *\""), "{problems:?}");
        assert!(problems[2].contains("Mars/Olympus_Mons"), "{problems:?}");
        assert_eq!(periodic_problems(&Periodic::cron(&[])).len(), 1);
    }

    #[test]
    fn child_ids_carry_the_launch_second() {
        assert_eq!(&*child_id("backup", at(5) + 999), "backup/periodic-1893456005");
    }
}
