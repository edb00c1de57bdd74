//! QUIC endpoints for Caravan: quinn transport settings shared by servers and
//! clients, wrapped around the rustls configs of [`ClusterTls`].
//!
//! An [`Endpoint`] lives on the compio runtime thread that created it (its
//! driver task is spawned there and its futures are `!Send`): create it on
//! the thread that will use it.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use compio::quic::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use compio::quic::{ClientConfig, Endpoint, EndpointConfig, IdleTimeout, ServerConfig, TransportConfig, VarInt};

use super::tls::{ClusterTls, TlsError};

/// ALPN protocol id of Caravan RPC, version 1 of the connection-level
/// protocol (frame versions are negotiated per frame, see `rpc::frame`).
/// A peer speaking anything else fails the handshake instead of sending us
/// bytes we would misparse.
pub const ALPN_RPC: &[u8] = b"caravan-rpc/1";

/// Concurrent bidirectional streams a peer may open on one connection, i.e.
/// RPCs in flight per peer. Enforced by QUIC flow control itself (the peer
/// cannot open more; its next open waits), so it also bounds the server's
/// per-connection tasks. 128 leaves room for raft's pipelined append-entries
/// plus votes and client RPCs without a sender ever waiting on a healthy link.
pub const STREAMS_PER_CONNECTION_MAX: u32 = 128;

/// A connection silent for this long is dead (peer crashed, network cut).
/// Short enough that a crashed server is noticed within a raft election
/// timeout or two; long enough to ride out a GC pause or a brief partition.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(10);

/// Clients ping an idle connection this often so that it stays up (no
/// handshake on the next call) and so that [`IDLE_TIMEOUT`] only fires when
/// the peer is really gone. Well under the idle timeout so that a couple of
/// lost pings do not kill the connection.
pub const KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(3);

/// Why an endpoint could not be created.
#[derive(Debug, thiserror::Error)]
pub enum EndpointError {
    /// The TLS identity did not yield a config.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// rustls' config lacks what QUIC needs (TLS 1.3's AES-128-GCM suite).
    #[error("TLS config unusable for QUIC: {0}")]
    Quic(String),
    /// Binding the UDP socket failed.
    #[error("binding {addr}: {source}")]
    Bind {
        /// The address asked for.
        addr: SocketAddr,
        /// What the OS said.
        source: io::Error,
    },
}

/// Transport settings common to both sides.
fn transport_config() -> Arc<TransportConfig> {
    let mut transport = TransportConfig::default();
    transport.max_concurrent_bidi_streams(VarInt::from_u32(STREAMS_PER_CONNECTION_MAX));
    // RPC uses bidirectional streams only; refusing unidirectional ones means
    // a peer cannot make us buffer data nobody reads.
    transport.max_concurrent_uni_streams(VarInt::from_u32(0));
    transport.max_idle_timeout(Some(IdleTimeout::from(VarInt::from_u32(
        u32::try_from(IDLE_TIMEOUT.as_millis()).unwrap_or(u32::MAX),
    ))));
    transport.keep_alive_interval(Some(KEEP_ALIVE_INTERVAL));
    Arc::new(transport)
}

/// The quinn server config: mutual TLS 1.3 from `tls`, ALPN [`ALPN_RPC`].
/// 0-RTT stays off (rustls' `max_early_data_size` is left at 0): early data
/// can be replayed by an attacker, and RPCs are not all idempotent.
pub fn server_config(tls: &ClusterTls) -> Result<ServerConfig, EndpointError> {
    let mut rustls_config = tls.server_config()?;
    rustls_config.alpn_protocols = vec![ALPN_RPC.to_vec()];
    let crypto = QuicServerConfig::try_from(rustls_config).map_err(|e| EndpointError::Quic(e.to_string()))?;
    let mut config = ServerConfig::with_crypto(Arc::new(crypto));
    config.transport_config(transport_config());
    Ok(config)
}

/// The quinn client config: mutual TLS 1.3 from `tls`, ALPN [`ALPN_RPC`].
pub fn client_config(tls: &ClusterTls) -> Result<ClientConfig, EndpointError> {
    let mut rustls_config = tls.client_config()?;
    rustls_config.alpn_protocols = vec![ALPN_RPC.to_vec()];
    let crypto = QuicClientConfig::try_from(rustls_config).map_err(|e| EndpointError::Quic(e.to_string()))?;
    let mut config = ClientConfig::new(Arc::new(crypto));
    config.transport_config(transport_config());
    Ok(config)
}

/// A server endpoint bound to `addr` (port 0 picks one; see
/// [`Endpoint::local_addr`]). It can also dial out with the same identity.
/// Must be called on a compio runtime thread.
pub async fn bind_server(addr: SocketAddr, tls: &ClusterTls) -> Result<Endpoint, EndpointError> {
    let server = server_config(tls)?;
    let client = client_config(tls)?;
    bind(addr, Some(server), client).await
}

/// A client-only endpoint bound to `addr` (usually `0.0.0.0:0`, or
/// `127.0.0.1:0` in tests). Must be called on a compio runtime thread.
pub async fn bind_client(addr: SocketAddr, tls: &ClusterTls) -> Result<Endpoint, EndpointError> {
    let client = client_config(tls)?;
    bind(addr, None, client).await
}

async fn bind(addr: SocketAddr, server: Option<ServerConfig>, client: ClientConfig) -> Result<Endpoint, EndpointError> {
    let bind_error = |source| EndpointError::Bind { addr, source };
    let socket = compio::net::UdpSocket::bind(addr).await.map_err(bind_error)?;
    Endpoint::new(socket, EndpointConfig::default(), server, Some(client)).map_err(bind_error)
}
