//! QUIC transport: every byte between Caravan servers (and from client
//! agents to servers) travels over QUIC with mutual TLS 1.3.
//!
//! - [`tls`]: the cluster CA, node certificates (rcgen in dev mode, PEM
//!   files in production) and the rustls configs (TLS 1.3 only, client
//!   certificates required, servers verified as [`tls::SERVER_NAME`]).
//! - [`endpoint`]: quinn transport settings (stream limits, idle timeout,
//!   keep-alive) and endpoint constructors.
//!
//! Threading: compio is thread-per-core; an endpoint, its connections and
//! streams belong to the runtime thread that created them. The RPC layer
//! (`crate::rpc`) builds on these and offers a blocking handle for plain
//! OS threads.

pub mod endpoint;
pub mod tls;

pub use endpoint::{ALPN_RPC, EndpointError, bind_client, bind_server};
pub use tls::{ClusterTls, DevCa, SERVER_NAME, TlsError};
