//! The library half of the `caravan` package: what the client agent runs on
//! a machine, kept out of the binary so integration tests (the driver
//! conformance suite, task-runner tests) can drive it directly.
//!
//! - [`client::driver`]: the synchronous [`client::driver::Driver`] trait and
//!   the `raw_exec`, `exec` and `docker` drivers, with rotating task logs.
//! - [`client::task_runner`]: runs one task through a driver under the
//!   group's restart policy and reports Nomad-style task events.

pub mod client;
