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
use compio::quic::crypto::{CryptoError, HmacKey};
use compio::quic::{
    ClientConfig, ConnectionId, ConnectionIdGenerator, Endpoint, EndpointConfig, IdleTimeout, ServerConfig,
    TransportConfig, VarInt,
};
use rustls::SupportedCipherSuite;
use rustls::crypto::tls13::{Hkdf, OkmBlock};

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

/// The kernel buffer asked for on each endpoint's UDP socket, each way.
/// Linux's usual default (208 KiB) holds some hundred datagrams: a server
/// answering thousands of clients' allocation queries at once, with its
/// raft thread busy applying a plan for a few milliseconds, overflows it,
/// and every dropped datagram costs a QUIC loss timeout and a congestion
/// window. Measured on `c1m` (1,000,000 allocations, 10,000 nodes, a
/// 2-core VM): with the default buffers heartbeats were answered up to
/// 27 s late and nodes were marked down; with these, 3.5–7 s and none
/// (36 s, still none, once the VM had slowed).
pub const UDP_BUFFER_BYTES: usize = 32 << 20;

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
    bind(addr, tls, Some(server), client).await
}

/// A client-only endpoint bound to `addr` (usually `0.0.0.0:0`, or
/// `127.0.0.1:0` in tests). Must be called on a compio runtime thread.
pub async fn bind_client(addr: SocketAddr, tls: &ClusterTls) -> Result<Endpoint, EndpointError> {
    let client = client_config(tls)?;
    bind(addr, tls, None, client).await
}

async fn bind(
    addr: SocketAddr,
    tls: &ClusterTls,
    server: Option<ServerConfig>,
    client: ClientConfig,
) -> Result<Endpoint, EndpointError> {
    let bind_error = |source| EndpointError::Bind { addr, source };
    let socket = udp_socket(addr).map_err(bind_error)?;
    let mut config = match StatelessResetKey::derive(tls) {
        Some(key) => EndpointConfig::new(Arc::new(key)),
        None => EndpointConfig::default(),
    };
    config.cid_generator(|| Box::new(RandomConnectionIds));
    Endpoint::new(socket, config, server, Some(client)).map_err(bind_error)
}

/// A UDP socket bound to `addr` with [`UDP_BUFFER_BYTES`] each way: past
/// `net.core.rmem_max` / `wmem_max` where the process may (`CAP_NET_ADMIN`,
/// as a root agent has), else as far as those allow.
fn udp_socket(addr: SocketAddr) -> io::Result<compio::net::UdpSocket> {
    use rustix::net::sockopt;
    let socket = std::net::UdpSocket::bind(addr)?;
    let receive = sockopt::set_socket_recv_buffer_size_force(&socket, UDP_BUFFER_BYTES)
        .or_else(|_| sockopt::set_socket_recv_buffer_size(&socket, UDP_BUFFER_BYTES))
        .and_then(|()| sockopt::socket_recv_buffer_size(&socket));
    let send = sockopt::set_socket_send_buffer_size_force(&socket, UDP_BUFFER_BYTES)
        .or_else(|_| sockopt::set_socket_send_buffer_size(&socket, UDP_BUFFER_BYTES))
        .and_then(|()| sockopt::socket_send_buffer_size(&socket));
    for (what, granted) in [("receive", receive), ("send", send)] {
        match granted {
            // Linux reports twice what it grants (its bookkeeping share).
            Ok(bytes) if bytes >= UDP_BUFFER_BYTES => {}
            Ok(bytes) => tracing::info!(
                wanted = UDP_BUFFER_BYTES,
                granted = bytes / 2,
                "the kernel capped this endpoint's UDP {what} buffer (net.core.rmem_max / wmem_max); \
                 under a large fleet's load datagrams may be dropped"
            ),
            Err(e) => tracing::warn!(error = %e, "setting the UDP {what} buffer size failed"),
        }
    }
    compio::net::UdpSocket::from_std(socket)
}

/// Random 8-byte connection ids that any process accepts as well-formed.
/// quinn's default generator embeds a per-process hash in each id and drops
/// packets whose id it did not mint, so a restarted server would silently
/// drop a peer's packets for the old connection instead of answering them
/// with the stateless reset that [`StatelessResetKey`] makes verifiable.
struct RandomConnectionIds;

impl RandomConnectionIds {
    /// quinn's default length: long enough to be unguessable and to
    /// route, short enough to keep packet headers small.
    const LEN: usize = 8;
}

impl ConnectionIdGenerator for RandomConnectionIds {
    fn generate_cid(&mut self) -> ConnectionId {
        let mut bytes = [0u8; Self::LEN];
        // ring's system RNG; it fails only if the OS has no randomness at
        // all, where a zero id would still work (just guessable).
        let _ = rustls::crypto::ring::default_provider().secure_random.fill(&mut bytes);
        ConnectionId::new(&bytes)
    }

    fn cid_len(&self) -> usize {
        Self::LEN
    }

    fn cid_lifetime(&self) -> Option<Duration> {
        None
    }
}

/// The key that signs QUIC stateless reset tokens, derived from the node's
/// private key so that it survives a restart: when a server crashes and
/// comes back on the same address, peers still holding connections to the
/// old process get a reset they can verify and reconnect at once, instead
/// of timing out until [`IDLE_TIMEOUT`]. (quinn's default key is random per
/// process, so a restarted server's resets are ignored.) Derivation is
/// HKDF-Extract with SHA-256 (HMAC keyed by a fixed label over the private
/// key), through rustls' ring provider; the private key cannot be recovered
/// from it.
struct StatelessResetKey {
    key: OkmBlock,
    hkdf: &'static dyn Hkdf,
}

impl StatelessResetKey {
    /// Domain separation: this derived key is for nothing else.
    const LABEL: &'static [u8] = b"caravan quic stateless reset key v1";
    /// HMAC-SHA256 output.
    const SIGNATURE_LEN: usize = 32;

    fn derive(tls: &ClusterTls) -> Option<Self> {
        let SupportedCipherSuite::Tls13(suite) = rustls::crypto::ring::cipher_suite::TLS13_AES_128_GCM_SHA256 else {
            return None;
        };
        let hkdf = suite.hkdf_provider;
        let tag = hkdf.hmac_sign(&OkmBlock::new(Self::LABEL), tls.private_key_der());
        Some(Self { key: OkmBlock::new(tag.as_ref()), hkdf })
    }
}

impl HmacKey for StatelessResetKey {
    fn sign(&self, data: &[u8], signature_out: &mut [u8]) {
        let tag = self.hkdf.hmac_sign(&self.key, data);
        let len = signature_out.len().min(tag.as_ref().len());
        signature_out[..len].copy_from_slice(&tag.as_ref()[..len]);
    }

    fn signature_len(&self) -> usize {
        Self::SIGNATURE_LEN
    }

    fn verify(&self, data: &[u8], signature: &[u8]) -> Result<(), CryptoError> {
        let tag = self.hkdf.hmac_sign(&self.key, data);
        let expected = tag.as_ref();
        // Constant time: no early exit on the first differing byte.
        let difference = expected.iter().zip(signature).fold(0u8, |acc, (a, b)| acc | (a ^ b));
        if expected.len() == signature.len() && difference == 0 { Ok(()) } else { Err(CryptoError) }
    }
}
