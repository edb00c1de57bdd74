//! The library half of the `caravan` package: what the client agent runs on
//! a machine, kept out of the binary so integration tests (the driver
//! conformance suite, task-runner tests, the client agent) can drive it
//! directly.
//!
//! - [`config`]: Nomad's agent configuration (HCL or JSON).
//! - [`fingerprint`]: the node's attributes and resources, and the
//!   [`caravan_engine::model::Node`] the client registers.
//! - [`client::driver`]: the synchronous [`client::driver::Driver`] trait and
//!   the `raw_exec`, `exec` and `docker` drivers, with rotating task logs.
//! - [`client::task_runner`]: runs one task through a driver under the
//!   group's restart policy and reports Nomad-style task events.
//! - [`client::agent`]: the client agent: registers the node, heartbeats,
//!   watches its allocations and runs them ([`client::alloc_runner`]),
//!   keeping what it runs in [`client::state_db`] across restarts.

pub mod client;
pub mod config;
pub mod fingerprint;
