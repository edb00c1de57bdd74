//! Caravan's server RPC: request/response calls over QUIC (mutual TLS 1.3),
//! one bidirectional stream per call.
//!
//! - [`frame`]: the versioned, length-delimited frame and its pure codec.
//! - [`server`]: [`RpcServer`], answering frames through an [`RpcHandler`].
//! - [`client`]: [`RpcClient`] (async, one compio thread) and
//!   [`BlockingRpcClient`] (any thread), with errors that tell "not sent"
//!   from "may have run" from "answered with an error".
//!
//! Threading: servers, clients, endpoints and handlers live on the compio
//! runtime thread that created them (compio is thread-per-core; their
//! futures are `!Send`). Plain OS threads call through
//! [`BlockingRpcClient`], which owns a client thread.
//!
//! ```no_run
//! # async fn example(tls: caravan_net::quic::ClusterTls, peer: std::net::SocketAddr) -> Result<(), Box<dyn std::error::Error>> {
//! use std::time::Duration;
//! use caravan_net::rpc::RpcClient;
//! let client = RpcClient::bind("0.0.0.0:0".parse()?, &tls).await?;
//! let answer = client.call(peer, 1, b"ping".to_vec(), Duration::from_secs(1)).await?;
//! # Ok(()) }
//! ```

pub mod client;
pub mod frame;
pub mod server;
mod stream;

pub use client::{BlockingRpcClient, RpcClient, RpcError};
pub use frame::{ErrorCode, RemoteError};
pub use server::{RpcHandler, RpcServer};
