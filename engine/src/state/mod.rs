//! The MVCC state store.
//!
//! Every table is a persistent map (`imbl`), so a [`Snapshot`] is an O(1)
//! clone that shares structure with the live state and records the raft index
//! it reflects. One writer (the FSM) applies batches to its private copy and
//! then publishes it atomically: readers never block the writer and never see
//! half a batch.

mod alloc_feed;
mod cancel;
mod chunks;
mod restore;
mod tables;
mod usage;

use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;

pub use alloc_feed::{ALLOC_FEED_NODES_MAX, AllocNodeChanges, AllocNodeFeed};
pub use cancel::Cancel;
use cancel::IndexWaiter;
pub use restore::{JobHistory, RestoreError, StateBuilder};
pub use tables::{
    DeploymentHealth, JOB_VERSIONS_KEPT, NodeAllocChange, SchedulerAlgorithm, SchedulerConfig, ScopeKey, ScopedNodes,
    State, TABLE_COUNT, Table,
};
pub use usage::{FitError, InstanceRule, NodeUsage, check_fit, usage_from_allocs};

/// An immutable view of the state at one raft index.
pub type Snapshot = Arc<State>;

/// Why [`StateStore::snapshot_min_index`] returned without a snapshot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum WaitError {
    #[error("timed out waiting for state index {wanted} (at {reached})")]
    Timeout { wanted: u64, reached: u64 },
    #[error("cancelled while waiting for state index {wanted}")]
    Cancelled { wanted: u64 },
}

/// The live state plus its latest published snapshot.
#[derive(Debug)]
pub struct StateStore {
    published: ArcSwap<State>,
    /// The writer's copy. Only the FSM takes this lock, one batch at a time.
    writer: std::sync::Mutex<State>,
    waiter: Arc<IndexWaiter>,
    alloc_feed: AllocNodeFeed,
}

impl Default for StateStore {
    fn default() -> Self {
        StateStore::new()
    }
}

impl StateStore {
    pub fn new() -> StateStore {
        StateStore::from_state(State::default())
    }

    /// A store starting from a restored state (raft snapshot install).
    pub fn from_state(mut state: State) -> StateStore {
        let index = state.index();
        state.take_alloc_nodes_touched();
        StateStore {
            published: ArcSwap::from_pointee(state.clone()),
            writer: std::sync::Mutex::new(state),
            waiter: Arc::new(IndexWaiter { index: std::sync::Mutex::new(index), advanced: Default::default() }),
            alloc_feed: AllocNodeFeed::default(),
        }
    }

    /// Which nodes' allocations changed, batch by batch (see
    /// [`AllocNodeFeed`]).
    pub fn alloc_feed(&self) -> &AllocNodeFeed {
        &self.alloc_feed
    }

    /// The latest published state: an atomic load and a reference count.
    pub fn snapshot(&self) -> Snapshot {
        self.published.load_full()
    }

    pub fn latest_index(&self) -> u64 {
        self.published.load().index()
    }

    /// Apply one batch of writes at `index` and publish the result. `index`
    /// must not go backwards.
    pub fn write<R>(&self, index: u64, f: impl FnOnce(&mut State) -> R) -> R {
        let mut state = self.writer.lock().expect("state writer poisoned");
        assert!(index >= state.index(), "state index went backwards: {} -> {index}", state.index());
        let out = f(&mut state);
        state.set_index(index);
        let touched = state.take_alloc_nodes_touched();
        self.published.store(Arc::new(state.clone()));
        // After publishing: a reader told of a change finds it in the
        // snapshot it takes next.
        self.alloc_feed.push(touched);
        let mut published = self.waiter.index.lock().expect("index waiter poisoned");
        *published = index;
        self.waiter.advanced.notify_all();
        out
    }

    /// Replace the whole state (snapshot install). Waiters see the new index.
    pub fn restore(&self, mut state: State) {
        let mut writer = self.writer.lock().expect("state writer poisoned");
        let index = state.index();
        state.take_alloc_nodes_touched();
        *writer = state;
        self.published.store(Arc::new(writer.clone()));
        self.alloc_feed.reset();
        let mut published = self.waiter.index.lock().expect("index waiter poisoned");
        *published = index;
        self.waiter.advanced.notify_all();
    }

    /// Wait, without spinning, until the store has applied `index`, then
    /// return a snapshot at or past it. Gives up after `timeout`, or at once
    /// when `cancel` fires.
    pub fn snapshot_min_index(&self, index: u64, timeout: Duration, cancel: &Cancel) -> Result<Snapshot, WaitError> {
        let snap = self.snapshot();
        if snap.index() >= index {
            return Ok(snap);
        }
        cancel.register(&self.waiter);
        let deadline = Instant::now() + timeout;
        let mut reached = self.waiter.index.lock().expect("index waiter poisoned");
        loop {
            if *reached >= index {
                drop(reached);
                return Ok(self.snapshot());
            }
            if cancel.is_cancelled() {
                return Err(WaitError::Cancelled { wanted: index });
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(WaitError::Timeout { wanted: index, reached: *reached });
            }
            reached = self.waiter.advanced.wait_timeout(reached, deadline - now).expect("index waiter poisoned").0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::thread;

    #[test]
    fn snapshot_is_isolated_from_later_writes() {
        let store = StateStore::new();
        let before = store.snapshot();
        store.write(5, |_| ());
        assert_eq!(before.index(), 0);
        assert_eq!(store.snapshot().index(), 5);
    }

    #[test]
    fn wait_returns_when_index_reached() {
        let store = Arc::new(StateStore::new());
        let writer = {
            let store = store.clone();
            thread::spawn(move || {
                thread::sleep(Duration::from_millis(20));
                store.write(3, |_| ());
            })
        };
        let snap = store.snapshot_min_index(3, Duration::from_secs(10), &Cancel::new()).unwrap();
        assert!(snap.index() >= 3);
        writer.join().unwrap();
    }

    #[test]
    fn wait_times_out() {
        let store = StateStore::new();
        let err = store.snapshot_min_index(9, Duration::from_millis(10), &Cancel::new()).unwrap_err();
        assert_eq!(err, WaitError::Timeout { wanted: 9, reached: 0 });
    }

    #[test]
    fn cancel_wakes_a_waiter() {
        let store = Arc::new(StateStore::new());
        let cancel = Cancel::new();
        let waiter = {
            let (store, cancel) = (store.clone(), cancel.clone());
            thread::spawn(move || store.snapshot_min_index(9, Duration::from_secs(3600), &cancel))
        };
        thread::sleep(Duration::from_millis(20));
        cancel.cancel();
        assert_eq!(waiter.join().unwrap().unwrap_err(), WaitError::Cancelled { wanted: 9 });
    }
}
