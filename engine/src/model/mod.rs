//! The data model: jobs, nodes, evaluations, allocations, plans, deployments.
//!
//! Plain data, cheap to clone (large parts behind `Arc`), with field names that
//! follow Nomad's so the HTTP edge maps them one to one. Time is nanoseconds
//! since the Unix epoch (`_ns`), resources carry their units in the name.

mod alloc;
mod constraint;
mod deployment;
mod eval;
mod job;
mod node;
mod plan;
mod resources;
pub mod rkyv_with;
mod value;

pub use alloc::*;
pub use constraint::*;
pub use deployment::*;
pub use eval::*;
pub use job::*;
pub use node::*;
pub use plan::*;
pub use resources::*;
pub use value::*;

/// Nanoseconds since the Unix epoch.
pub type TimeNs = i64;

/// One second in nanoseconds, for readable durations.
pub const SECOND_NS: i64 = 1_000_000_000;
