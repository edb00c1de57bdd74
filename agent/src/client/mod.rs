//! Client mode: what runs allocations on a machine.

pub mod driver;
pub mod task_runner;
