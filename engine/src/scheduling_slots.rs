//! [`SchedulingSlots`]: how many workers may run the scheduler at once.
//!
//! A worker spends most of an eval waiting on raft for its plan's commit,
//! so a server runs many workers to keep evals moving; but
//! scheduling itself is CPU work, and more of it at once than there are
//! cores only time-slices the cores while every running pass pins the state
//! version it read (at a million allocations, hundreds of MiB across a
//! dozen workers). A worker takes a slot just before it reads its snapshot
//! and gives it back as soon as the plan is built.

use std::sync::{Condvar, Mutex};
use std::time::Duration;

use crate::state::Cancel;

/// How often a worker waiting for a slot looks at its cancel flag.
const CANCEL_CHECK: Duration = Duration::from_millis(100);

#[derive(Debug)]
pub struct SchedulingSlots {
    free: Mutex<usize>,
    released: Condvar,
}

/// A held slot; dropping it frees the slot.
#[derive(Debug)]
pub struct SchedulingSlot<'a> {
    slots: &'a SchedulingSlots,
}

impl SchedulingSlots {
    /// `count` slots (at least one).
    pub fn new(count: usize) -> SchedulingSlots {
        SchedulingSlots { free: Mutex::new(count.max(1)), released: Condvar::new() }
    }

    /// Wait for a slot; `None` when `cancel` fires first.
    pub fn acquire(&self, cancel: &Cancel) -> Option<SchedulingSlot<'_>> {
        let mut free = self.free.lock().expect("scheduling slots poisoned");
        loop {
            if cancel.is_cancelled() {
                return None;
            }
            if *free > 0 {
                *free -= 1;
                return Some(SchedulingSlot { slots: self });
            }
            free = self.released.wait_timeout(free, CANCEL_CHECK).expect("scheduling slots poisoned").0;
        }
    }
}

impl Drop for SchedulingSlot<'_> {
    fn drop(&mut self) {
        *self.slots.free.lock().expect("scheduling slots poisoned") += 1;
        self.slots.released.notify_one();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn no_more_holders_than_slots_and_every_waiter_gets_one() {
        let slots = Arc::new(SchedulingSlots::new(2));
        let holding = Arc::new(AtomicUsize::new(0));
        let most = Arc::new(AtomicUsize::new(0));
        let cancel = Cancel::new();
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let (slots, holding, most, cancel) = (slots.clone(), holding.clone(), most.clone(), cancel.clone());
                std::thread::spawn(move || {
                    for _ in 0..50 {
                        let _slot = slots.acquire(&cancel).expect("not cancelled");
                        let now = holding.fetch_add(1, Ordering::SeqCst) + 1;
                        most.fetch_max(now, Ordering::SeqCst);
                        std::thread::yield_now();
                        holding.fetch_sub(1, Ordering::SeqCst);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().expect("worker thread");
        }
        assert!(most.load(Ordering::SeqCst) <= 2, "at most two at once, saw {}", most.load(Ordering::SeqCst));
        assert_eq!(*slots.free.lock().unwrap(), 2, "every slot came back");
    }

    #[test]
    fn a_waiter_gives_up_when_cancelled() {
        let slots = SchedulingSlots::new(1);
        let cancel = Cancel::new();
        let held = slots.acquire(&cancel).expect("a free slot");
        cancel.cancel();
        assert!(slots.acquire(&cancel).is_none());
        drop(held);
    }
}
