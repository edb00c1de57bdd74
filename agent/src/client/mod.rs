//! Client mode: what runs allocations on a machine.
//!
//! [`agent::ClientAgent`] is the client: it talks to the servers through
//! [`server_api::ServerApi`], runs each allocation with an
//! [`alloc_runner::AllocRunner`] (tasks through [`task_runner::TaskRunner`]
//! and the [`driver`]s, environment from [`env`]) and keeps what it runs in
//! [`state_db::StateDb`] so a restarted agent re-attaches to its tasks.
//! [`logs_api::AllocDirLogs`] serves task logs to the agent's HTTP API,
//! [`stats_api::ClientStats`] the client's host and device usage.

pub mod agent;
pub mod alloc_runner;
pub mod driver;
pub mod env;
pub mod health;
pub mod lifecycle;
pub mod logs_api;
pub mod rpc_server;
pub mod server_api;
pub mod state_db;
pub mod stats_api;
pub mod task_runner;
