use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};

/// A cloneable cancellation token. Cancelling wakes every thread waiting in
/// [`super::StateStore::snapshot_min_index`] with it, so shutdown never waits
/// out a timeout.
#[derive(Clone, Debug, Default)]
pub struct Cancel(Arc<CancelInner>);

#[derive(Debug, Default)]
struct CancelInner {
    cancelled: AtomicBool,
    waiters: Mutex<Vec<Arc<IndexWaiter>>>,
    /// For [`Cancel::sleep`]: a backoff that ends early on cancel.
    sleeper: IndexWaiter,
}

/// The store's "index advanced" signal: the latest published index under a
/// mutex, and a condvar notified on every publish.
#[derive(Debug, Default)]
pub(crate) struct IndexWaiter {
    pub(crate) index: Mutex<u64>,
    pub(crate) advanced: Condvar,
}

impl Cancel {
    pub fn new() -> Cancel {
        Cancel::default()
    }

    pub fn cancel(&self) {
        self.0.cancelled.store(true, Ordering::SeqCst);
        {
            let _guard = self.0.sleeper.index.lock().expect("cancel sleeper poisoned");
            self.0.sleeper.advanced.notify_all();
        }
        let waiters = self.0.waiters.lock().expect("cancel waiters poisoned").clone();
        for w in waiters {
            // Take the waiter's lock so a thread between its check and its
            // wait cannot miss this notification.
            let _guard = w.index.lock().expect("index waiter poisoned");
            w.advanced.notify_all();
        }
    }

    pub fn is_cancelled(&self) -> bool {
        self.0.cancelled.load(Ordering::SeqCst)
    }

    /// Sleep for `duration` unless cancelled first; returns false when cancelled.
    pub fn sleep(&self, duration: std::time::Duration) -> bool {
        let deadline = std::time::Instant::now() + duration;
        let mut guard = self.0.sleeper.index.lock().expect("cancel sleeper poisoned");
        loop {
            if self.is_cancelled() {
                return false;
            }
            let now = std::time::Instant::now();
            if now >= deadline {
                return true;
            }
            guard = self.0.sleeper.advanced.wait_timeout(guard, deadline - now).expect("cancel sleeper poisoned").0;
        }
    }

    pub(crate) fn register(&self, waiter: &Arc<IndexWaiter>) {
        let mut waiters = self.0.waiters.lock().expect("cancel waiters poisoned");
        if !waiters.iter().any(|w| Arc::ptr_eq(w, waiter)) {
            waiters.push(waiter.clone());
        }
    }
}
