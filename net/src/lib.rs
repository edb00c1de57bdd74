//! Networking for Caravan servers: wire codecs, the QUIC transport,
//! openraft's network and durable log storage, server RPC and the HTTP /v1
//! API.
//!
//! Built so far:
//! - [`api`]: Nomad's `/v1` JSON shapes (PascalCase fields, durations in
//!   nanoseconds) and their conversion to and from the engine's model,
//!   with Nomad's canonicalization of submitted jobs.
//! - [`jobspec`]: HCL2 jobspecs (`job "x" { ... }`, `variable`, `locals`,
//!   `-var` overrides) parsed into that same API JSON.
//! - [`http`]: the `/v1` HTTP API (axum on compio) over a [`http::Server`],
//!   with blocking queries and the event stream.
//! - [`wire`]: rkyv codecs for raft log entries (command batches) and
//!   streamed, checksummed full-state snapshots.
//! - [`quic`]: the QUIC transport: cluster CA and node certificates,
//!   mutual TLS 1.3 configs, endpoints.
//! - [`rpc`]: server RPC over QUIC: versioned frames, [`rpc::RpcServer`],
//!   [`rpc::RpcClient`] and [`rpc::BlockingRpcClient`].
//! - [`raft`]: openraft's storage: the redb log and the snapshot-file state machine.
//! - [`runtime`]: the compio runtime of every server thread.
//! - [`server`]: a raft-replicated server: engine FSM, leader duties, raft over QUIC.

pub mod api;
pub mod http;
pub mod jobspec;
pub mod quic;
pub mod raft;
pub mod rpc;
pub mod runtime;
pub mod server;
pub mod wire;
