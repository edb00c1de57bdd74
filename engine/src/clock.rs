//! Time as a seam: everything that reads the clock takes a [`Clock`], so
//! tests and simulations drive time by hand and never sleep.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::model::TimeNs;

pub trait Clock: Send + Sync + std::fmt::Debug {
    /// Nanoseconds since the Unix epoch.
    fn now_ns(&self) -> TimeNs;
}

/// The operating system's wall clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ns(&self) -> TimeNs {
        let since = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
        i64::try_from(since.as_nanos()).unwrap_or(i64::MAX)
    }
}

/// A clock that moves only when told to.
#[derive(Debug, Clone, Default)]
pub struct ManualClock(Arc<AtomicI64>);

impl ManualClock {
    pub fn new(start_ns: TimeNs) -> ManualClock {
        ManualClock(Arc::new(AtomicI64::new(start_ns)))
    }

    pub fn advance_ns(&self, by_ns: i64) {
        self.0.fetch_add(by_ns, Ordering::SeqCst);
    }

    pub fn set_ns(&self, at_ns: TimeNs) {
        self.0.store(at_ns, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_ns(&self) -> TimeNs {
        self.0.load(Ordering::SeqCst)
    }
}
