//! Client heartbeat timers, as Nomad's `nomad/heartbeat.go`: the leader
//! keeps one timer per live node; a heartbeat resets it to the TTL it hands
//! the client plus a grace period; a node whose timer runs out is marked
//! `down` (by whoever drives [`Heartbeats`], with `endpoints::update_node_status`).
//!
//! - [`heartbeat_ttl`]: the TTL a client is told, a pure function of the
//!   cluster size (so the leader is never flooded) and a jitter fraction.
//! - [`HeartbeatTimers`]: the timers as a plain struct with `now` passed in,
//!   so expiry is tested without threads or a clock.
//! - [`Heartbeats`]: those timers behind a lock, switched on with
//!   leadership ([`Heartbeats::establish`]) and off with it
//!   ([`Heartbeats::revoke`]); a driver thread waits on it for the next
//!   deadline ([`Heartbeats::wait_for_deadline`]).
//!
//! ```
//! use std::time::Duration;
//! use caravan_engine::heartbeat::{HeartbeatTimers, heartbeat_ttl, HeartbeatConfig};
//! use caravan_engine::ids::NodeId;
//!
//! let config = HeartbeatConfig::default();
//! assert_eq!(heartbeat_ttl(&config, 10, 0.0), Duration::from_secs(10));
//! let mut timers = HeartbeatTimers::default();
//! timers.reset(NodeId(1), 100);
//! assert!(timers.take_expired(99, 8).is_empty());
//! assert_eq!(timers.take_expired(100, 8), vec![NodeId(1)]);
//! ```

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::sync::{Condvar, Mutex};
use std::time::Duration;

use crate::ids::{IdBuildHasher, NodeId};
use crate::model::{NodeStatus, TimeNs};
use crate::state::State;

/// Nomad's `min_heartbeat_ttl`: no client is asked to heartbeat more often,
/// whatever the cluster size.
pub const MIN_HEARTBEAT_TTL: Duration = Duration::from_secs(10);

/// Nomad's `heartbeat_grace`: added to the TTL on the server's side, so a
/// heartbeat delayed by the network or a busy client is not a missed one.
pub const HEARTBEAT_GRACE: Duration = Duration::from_secs(10);

/// Nomad's `max_heartbeats_per_second`: the TTL grows with the node count
/// so the leader handles at most this many heartbeats a second.
pub const MAX_HEARTBEATS_PER_SECOND: u32 = 50;

/// Heap entries kept beyond the live timers before the heap is rebuilt:
/// every reset leaves a stale entry behind (lazy deletion), so without a
/// bound the heap would grow by one per heartbeat. Rebuilding at twice the
/// live count plus this slack keeps it O(nodes) and the rebuild amortized.
const STALE_ENTRIES_SLACK: usize = 1024;

/// The heartbeat knobs (server configuration; tests shrink them).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeartbeatConfig {
    pub min_ttl: Duration,
    pub grace: Duration,
    pub max_heartbeats_per_second: u32,
}

impl Default for HeartbeatConfig {
    fn default() -> Self {
        HeartbeatConfig {
            min_ttl: MIN_HEARTBEAT_TTL,
            grace: HEARTBEAT_GRACE,
            max_heartbeats_per_second: MAX_HEARTBEATS_PER_SECOND,
        }
    }
}

/// The TTL handed to a client: Nomad's `RateScaledInterval(rate, min,
/// nodes)` (`max(min, nodes / rate)` seconds) plus `RandomStagger` (up to
/// one more TTL, `jitter` in `[0, 1)`), so clients registered together do
/// not heartbeat in lockstep.
pub fn heartbeat_ttl(config: &HeartbeatConfig, node_count: usize, jitter: f64) -> Duration {
    let rate = config.max_heartbeats_per_second.max(1);
    let scaled = Duration::from_secs_f64(node_count as f64 / f64::from(rate));
    let base = scaled.max(config.min_ttl);
    let jitter = if jitter.is_finite() { jitter.clamp(0.0, 1.0) } else { 0.0 };
    base + base.mul_f64(jitter)
}

fn duration_ns(d: Duration) -> i64 {
    i64::try_from(d.as_nanos()).unwrap_or(i64::MAX)
}

/// One deadline per node. A min-heap finds the next expiry; resets leave
/// stale heap entries that are skipped on the way out (the map holds each
/// node's current deadline).
#[derive(Debug, Default)]
pub struct HeartbeatTimers {
    deadlines: HashMap<NodeId, TimeNs, IdBuildHasher>,
    heap: BinaryHeap<Reverse<(TimeNs, NodeId)>>,
}

impl HeartbeatTimers {
    /// Set `node`'s deadline, replacing any earlier one.
    pub fn reset(&mut self, node: NodeId, deadline_ns: TimeNs) {
        self.deadlines.insert(node, deadline_ns);
        self.heap.push(Reverse((deadline_ns, node)));
        if self.heap.len() > 2 * self.deadlines.len() + STALE_ENTRIES_SLACK {
            self.heap = self.deadlines.iter().map(|(node, at)| Reverse((*at, *node))).collect();
        }
        debug_assert!(self.heap.len() >= self.deadlines.len());
    }

    /// Forget `node`'s timer (deregistered, or already down).
    pub fn remove(&mut self, node: NodeId) {
        self.deadlines.remove(&node);
    }

    pub fn clear(&mut self) {
        self.deadlines.clear();
        self.heap.clear();
    }

    pub fn len(&self) -> usize {
        self.deadlines.len()
    }

    pub fn is_empty(&self) -> bool {
        self.deadlines.is_empty()
    }

    pub fn deadline(&self, node: NodeId) -> Option<TimeNs> {
        self.deadlines.get(&node).copied()
    }

    /// The earliest live deadline.
    pub fn next_deadline(&mut self) -> Option<TimeNs> {
        self.skip_stale();
        self.heap.peek().map(|Reverse((at, _))| *at)
    }

    /// Remove and return up to `limit` nodes whose deadline is at or before
    /// `now_ns`, earliest first.
    pub fn take_expired(&mut self, now_ns: TimeNs, limit: usize) -> Vec<NodeId> {
        let mut expired = Vec::new();
        while expired.len() < limit {
            self.skip_stale();
            match self.heap.peek() {
                Some(Reverse((at, node))) if *at <= now_ns => {
                    let node = *node;
                    self.heap.pop();
                    self.deadlines.remove(&node);
                    expired.push(node);
                }
                _ => break,
            }
        }
        expired
    }

    /// Pop heap entries that no longer match their node's deadline.
    fn skip_stale(&mut self) {
        while let Some(Reverse((at, node))) = self.heap.peek() {
            if self.deadlines.get(node) == Some(at) {
                return;
            }
            self.heap.pop();
        }
    }
}

/// Why a heartbeat was not taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HeartbeatError {
    /// This server does not hold the leader's duties (not leader, or still
    /// taking them up).
    #[error("heartbeat timers are not active on this server")]
    NotActive,
}

#[derive(Debug)]
struct Inner {
    timers: HeartbeatTimers,
    active: bool,
    rng: fastrand::Rng,
}

/// The leader's heartbeat timers, shared by the RPC handlers (resets) and
/// the thread that marks expired nodes down. Inactive (every call refused,
/// no timers) unless this server leads.
#[derive(Debug)]
pub struct Heartbeats {
    config: HeartbeatConfig,
    inner: Mutex<Inner>,
    /// Signalled when a deadline may have moved earlier or the duties
    /// changed, so the driver re-plans its sleep.
    changed: Condvar,
}

impl Heartbeats {
    /// Inactive until [`Self::establish`]; `seed` drives the TTL jitter.
    pub fn new(config: HeartbeatConfig, seed: u64) -> Heartbeats {
        Heartbeats {
            config,
            inner: Mutex::new(Inner {
                timers: HeartbeatTimers::default(),
                active: false,
                rng: fastrand::Rng::with_seed(seed),
            }),
            changed: Condvar::new(),
        }
    }

    pub fn config(&self) -> &HeartbeatConfig {
        &self.config
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().expect("heartbeat timers poisoned")
    }

    pub fn is_active(&self) -> bool {
        self.lock().active
    }

    /// Take up the timers after an election: one for every node that is not
    /// down (Nomad's `initializeHeartbeatTimers`), at a full TTL plus grace
    /// from now, so clients have time to find the new leader. Returns how
    /// many timers were started.
    pub fn establish(&self, state: &State, now_ns: TimeNs) -> usize {
        let mut inner = self.lock();
        inner.timers.clear();
        let count = state.node_count();
        let live: Vec<NodeId> = state.nodes().filter(|n| !matches!(n.status, NodeStatus::Down)).map(|n| n.id).collect();
        for node in &live {
            let ttl = heartbeat_ttl(&self.config, count, inner.rng.f64());
            inner.timers.reset(*node, now_ns.saturating_add(duration_ns(ttl + self.config.grace)));
        }
        inner.active = true;
        drop(inner);
        self.changed.notify_all();
        live.len()
    }

    /// Give up the timers with leadership: no node is marked down by a
    /// server that no longer leads.
    pub fn revoke(&self) {
        let mut inner = self.lock();
        inner.active = false;
        inner.timers.clear();
        drop(inner);
        self.changed.notify_all();
    }

    /// A heartbeat (or registration) from `node`: its timer restarts at TTL
    /// plus grace; returns the TTL to hand the client. `node_count` scales
    /// the TTL with the cluster.
    pub fn heartbeat(&self, node: NodeId, node_count: usize, now_ns: TimeNs) -> Result<Duration, HeartbeatError> {
        let mut inner = self.lock();
        if !inner.active {
            return Err(HeartbeatError::NotActive);
        }
        let jitter = inner.rng.f64();
        let ttl = heartbeat_ttl(&self.config, node_count, jitter);
        inner.timers.reset(node, now_ns.saturating_add(duration_ns(ttl + self.config.grace)));
        drop(inner);
        self.changed.notify_all();
        Ok(ttl)
    }

    /// Time `node` again to expire at `deadline_ns` (marking it down failed
    /// and is retried then); nothing while inactive.
    pub fn rearm(&self, node: NodeId, deadline_ns: TimeNs) {
        let mut inner = self.lock();
        if inner.active {
            inner.timers.reset(node, deadline_ns);
        }
    }

    /// Stop watching `node` (it was marked down or deregistered).
    pub fn remove(&self, node: NodeId) {
        self.lock().timers.remove(node);
    }

    pub fn len(&self) -> usize {
        self.lock().timers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Nodes whose timers ran out by `now_ns` (at most `limit`); they are no
    /// longer timed. Empty while inactive.
    pub fn take_expired(&self, now_ns: TimeNs, limit: usize) -> Vec<NodeId> {
        let mut inner = self.lock();
        if !inner.active {
            return Vec::new();
        }
        inner.timers.take_expired(now_ns, limit)
    }

    /// Sleep until the next deadline as seen at `now_ns`, a change (reset,
    /// establish, revoke), or `longest`, whichever is first.
    pub fn wait_for_deadline(&self, now_ns: TimeNs, longest: Duration) {
        let mut inner = self.lock();
        let until_next = match inner.timers.next_deadline() {
            Some(at) if inner.active => Duration::from_nanos(u64::try_from(at.saturating_sub(now_ns)).unwrap_or(0)),
            _ => longest,
        };
        let wait = until_next.min(longest);
        if wait.is_zero() {
            return;
        }
        let _unused = self.changed.wait_timeout(inner, wait).expect("heartbeat timers poisoned");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fsm::{Command, Fsm};
    use crate::ids::IdGen;
    use crate::model::SECOND_NS;
    use crate::state::StateStore;
    use std::sync::Arc;

    #[test]
    fn ttl_is_the_minimum_until_the_cluster_outgrows_the_rate() {
        let config = HeartbeatConfig::default();
        assert_eq!(heartbeat_ttl(&config, 0, 0.0), Duration::from_secs(10));
        assert_eq!(heartbeat_ttl(&config, 500, 0.0), Duration::from_secs(10));
        // 10,000 nodes at 50/s: one heartbeat each every 200 s.
        assert_eq!(heartbeat_ttl(&config, 10_000, 0.0), Duration::from_secs(200));
        // Jitter adds up to one more TTL, never less, never NaN trouble.
        assert_eq!(heartbeat_ttl(&config, 0, 0.5), Duration::from_secs(15));
        assert_eq!(heartbeat_ttl(&config, 0, f64::NAN), Duration::from_secs(10));
        assert_eq!(heartbeat_ttl(&config, 0, 7.0), Duration::from_secs(20));
    }

    #[test]
    fn timers_expire_in_deadline_order_and_resets_push_them_back() {
        let mut timers = HeartbeatTimers::default();
        timers.reset(NodeId(1), 30);
        timers.reset(NodeId(2), 10);
        timers.reset(NodeId(3), 20);
        timers.reset(NodeId(2), 40); // heartbeat: node 2 is fine until 40
        assert_eq!(timers.next_deadline(), Some(20));
        assert_eq!(timers.take_expired(35, 10), vec![NodeId(3), NodeId(1)]);
        assert_eq!(timers.len(), 1);
        assert_eq!(timers.take_expired(39, 10), Vec::<NodeId>::new());
        timers.remove(NodeId(2));
        assert_eq!(timers.take_expired(i64::MAX, 10), Vec::<NodeId>::new());
        assert!(timers.is_empty());
        assert_eq!(timers.next_deadline(), None);
    }

    #[test]
    fn take_expired_honours_its_limit() {
        let mut timers = HeartbeatTimers::default();
        for i in 0..5 {
            timers.reset(NodeId(i), i as i64);
        }
        assert_eq!(timers.take_expired(100, 2), vec![NodeId(0), NodeId(1)]);
        assert_eq!(timers.take_expired(100, 10).len(), 3);
    }

    #[test]
    fn stale_entries_are_bounded_under_many_resets() {
        let mut timers = HeartbeatTimers::default();
        for round in 0..10_000 {
            timers.reset(NodeId(round % 3), round as i64);
        }
        assert!(timers.heap.len() <= 2 * 3 + STALE_ENTRIES_SLACK + 1, "heap {}", timers.heap.len());
        assert_eq!(timers.deadline(NodeId(0)), Some(9999));
        assert_eq!(timers.take_expired(i64::MAX, 10).len(), 3);
    }

    fn state_with_nodes(statuses: &[NodeStatus]) -> (Arc<StateStore>, Vec<NodeId>) {
        let store = Arc::new(StateStore::new());
        let fsm = Fsm::new(store.clone());
        let mut ids = IdGen::with_seed(3);
        let mut out = Vec::new();
        for (i, status) in statuses.iter().enumerate() {
            let mut node = crate::fixtures::node(&mut ids, &format!("n{i}"), "dc1", 1000, 1024);
            node.status = *status;
            out.push(node.id);
            fsm.apply(i as u64 + 1, &Command::NodeRegister { node, evals: vec![] }).unwrap();
        }
        (store, out)
    }

    #[test]
    fn establish_times_live_nodes_and_revoke_stops_everything() {
        let (store, nodes) = state_with_nodes(&[NodeStatus::Ready, NodeStatus::Down, NodeStatus::Initializing]);
        let config = HeartbeatConfig {
            min_ttl: Duration::from_secs(1),
            grace: Duration::from_secs(1),
            max_heartbeats_per_second: 50,
        };
        let beats = Heartbeats::new(config, 1);
        assert_eq!(beats.heartbeat(nodes[0], 3, 0), Err(HeartbeatError::NotActive), "inactive until established");
        assert_eq!(beats.establish(&store.snapshot(), 0), 2, "the down node is not timed");
        // TTL (1..2 s with jitter) + grace (1 s): nothing expires before 2 s.
        assert!(beats.take_expired(2 * SECOND_NS - 1, 10).is_empty());
        let ttl = beats.heartbeat(nodes[0], 3, 2 * SECOND_NS).unwrap();
        assert!(ttl >= Duration::from_secs(1) && ttl < Duration::from_secs(2), "{ttl:?}");
        // At 3 s the initializing node (deadline ≤ 3 s) is overdue; node 0
        // heartbeated at 2 s and has until at least 4 s.
        assert_eq!(beats.take_expired(3 * SECOND_NS, 10), vec![nodes[2]]);
        assert!(beats.take_expired(4 * SECOND_NS - 1, 10).is_empty());
        assert_eq!(beats.take_expired(5 * SECOND_NS, 10), vec![nodes[0]]);
        beats.heartbeat(nodes[0], 3, 5 * SECOND_NS).unwrap();
        beats.revoke();
        assert!(beats.is_empty());
        assert!(beats.take_expired(i64::MAX, 10).is_empty());
        assert_eq!(beats.heartbeat(nodes[0], 3, 0), Err(HeartbeatError::NotActive));
    }
}
