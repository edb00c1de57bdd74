//! The compio runtime every server thread runs on.
//!
//! compio wakes a task from another thread through a fixed-size queue (64
//! entries by default), and a waker that finds it full spins with
//! `sched_yield` until the owning thread drains it. A server thread wakes
//! thousands of another's tasks at once: the client-rpc thread answers the
//! raft thread's calls, the allocation watcher wakes every parked client
//! query of a busy commit. Under `caravan-perf c1m` a fifth of the
//! client-rpc thread went to that spin while the raft thread was busy
//! applying an entry, so the queue holds as many wakes as a busy server
//! has calls in flight.

use std::io;

use compio::runtime::{Runtime, RuntimeBuilder};

/// Task wakes from other threads a runtime queues before a waker waits
/// (8 bytes each).
pub const REMOTE_WAKES_MAX: usize = 16 * 1024;

/// A runtime for one of the server's threads.
pub fn server_runtime() -> io::Result<Runtime> {
    RuntimeBuilder::new().sync_queue_size(REMOTE_WAKES_MAX).build()
}
