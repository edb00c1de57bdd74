//! [`AllocNodeFeed`]: which nodes' allocations each published batch
//! changed, for the one reader that wakes client blocking queries.
//!
//! Without it that reader would compare every parked query against every
//! new snapshot: with 10,000 parked clients and hundreds of commits a
//! second that is millions of lookups a second for a few changed nodes.
//! The feed makes the work proportional to the nodes a commit touched.

use std::sync::{Condvar, Mutex};
use std::time::Duration;

use crate::ids::NodeId;

/// Node ids the feed holds before it gives up and tells its reader to look
/// at everything: a reader that keeps up drains it every few commits, so
/// this only bounds memory when nobody reads (a store with no clients).
/// 256 Ki ids are 2 MiB.
pub const ALLOC_FEED_NODES_MAX: usize = 256 * 1024;

/// What the reader gets from [`AllocNodeFeed::take`].
#[derive(Debug, Default, PartialEq, Eq)]
pub struct AllocNodeChanges {
    /// Nodes whose allocations changed since the last take, deduplicated,
    /// in no particular order.
    pub nodes: Vec<NodeId>,
    /// Changes were lost (the feed overflowed, or the state was replaced
    /// by a snapshot install): any node may have changed.
    pub everything: bool,
}

/// See the module docs. One writer (the store, on publish) and one reader.
#[derive(Debug, Default)]
pub struct AllocNodeFeed {
    pending: Mutex<AllocNodeChanges>,
    changed: Condvar,
}

impl AllocNodeFeed {
    pub(super) fn push(&self, touched: Vec<NodeId>) {
        if touched.is_empty() {
            return;
        }
        let mut pending = self.pending.lock().expect("alloc feed poisoned");
        if pending.everything {
            return;
        }
        if pending.nodes.len() + touched.len() > ALLOC_FEED_NODES_MAX {
            pending.nodes = Vec::new();
            pending.everything = true;
        } else {
            pending.nodes.extend(touched);
        }
        self.changed.notify_all();
    }

    pub(super) fn reset(&self) {
        let mut pending = self.pending.lock().expect("alloc feed poisoned");
        pending.nodes = Vec::new();
        pending.everything = true;
        self.changed.notify_all();
    }

    /// Everything published since the last take, waiting up to `timeout`
    /// for something to be. The store pushes a batch after publishing it,
    /// so a snapshot taken after this returns shows every change reported.
    pub fn take(&self, timeout: Duration) -> AllocNodeChanges {
        let pending = self.pending.lock().expect("alloc feed poisoned");
        let (mut pending, _) = self
            .changed
            .wait_timeout_while(pending, timeout, |p| p.nodes.is_empty() && !p.everything)
            .expect("alloc feed poisoned");
        let mut changes = std::mem::take(&mut *pending);
        drop(pending);
        changes.nodes.sort_unstable();
        changes.nodes.dedup();
        changes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn take_dedups_and_overflow_means_everything() {
        let feed = AllocNodeFeed::default();
        feed.push(vec![NodeId(2), NodeId(1), NodeId(2)]);
        feed.push(vec![NodeId(1)]);
        assert_eq!(
            feed.take(Duration::ZERO),
            AllocNodeChanges { nodes: vec![NodeId(1), NodeId(2)], everything: false }
        );
        assert_eq!(feed.take(Duration::ZERO), AllocNodeChanges::default());
        feed.push(vec![NodeId(7); ALLOC_FEED_NODES_MAX + 1]);
        let changes = feed.take(Duration::ZERO);
        assert!(changes.everything);
        assert!(changes.nodes.is_empty());
        feed.push(vec![NodeId(3)]);
        feed.reset();
        assert!(feed.take(Duration::ZERO).everything);
    }
}
