//! Items waiting for a time: a fleet thread's pending status reports. A
//! node's health report waits out `min_healthy_time` (10 s by default), so
//! at a million allocations a thread holds hundreds of thousands of them.
//! Every report tick takes only what is due, in whole millisecond buckets,
//! instead of sweeping the whole list (which cost the fleet a fifth of its
//! CPU in page faults and copies); a binary heap cost as much again in
//! cache misses popping item by item.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// Items by due time in 1 ms buckets: an item lands in the bucket at or
/// after its due time, so it never comes out early and at most 1 ms late.
/// Items of one bucket come out in the order they went in.
pub(super) struct DueQueue<T> {
    origin: Instant,
    buckets: BTreeMap<u64, Vec<T>>,
}

impl<T> Default for DueQueue<T> {
    fn default() -> Self {
        DueQueue { origin: Instant::now(), buckets: BTreeMap::new() }
    }
}

impl<T> DueQueue<T> {
    pub(super) fn push(&mut self, due: Instant, item: T) {
        let since = due.saturating_duration_since(self.origin);
        let ms = u64::try_from(since.as_millis()).unwrap_or(u64::MAX);
        let bucket = if since > Duration::from_millis(ms) { ms.saturating_add(1) } else { ms };
        self.buckets.entry(bucket).or_default().push(item);
    }

    /// Everything due at `now`, soonest first, each with the time its
    /// bucket came due (at or after its own due time).
    pub(super) fn take_due(&mut self, now: Instant) -> impl Iterator<Item = (Instant, T)> + use<T> {
        let now_ms = u64::try_from(now.saturating_duration_since(self.origin).as_millis()).unwrap_or(u64::MAX);
        let later = self.buckets.split_off(&now_ms.saturating_add(1));
        let due = std::mem::replace(&mut self.buckets, later);
        let origin = self.origin;
        due.into_iter()
            .flat_map(move |(ms, items)| items.into_iter().map(move |item| (origin + Duration::from_millis(ms), item)))
    }

    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.buckets.values().map(Vec::len).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn takes_only_what_is_due_soonest_first_and_ties_in_push_order() {
        let mut queue = DueQueue::default();
        let origin = queue.origin;
        let at = |us| origin + Duration::from_micros(us);
        let (late, first, middle) = (at(30_000), at(10_000), at(19_500));
        queue.push(late, "late");
        queue.push(first, "first");
        queue.push(first, "second");
        queue.push(middle, "middle");
        let taken: Vec<_> = queue.take_due(at(20_000)).collect();
        assert_eq!(taken, [(first, "first"), (first, "second"), (at(20_000), "middle")]);
        assert_eq!(queue.len(), 1);
        assert_eq!(queue.take_due(at(29_999)).count(), 0, "never early");
        assert_eq!(queue.take_due(at(30_000)).collect::<Vec<_>>(), [(late, "late")]);
    }
}
