//! The RPC server: a QUIC endpoint that answers one request frame per
//! bidirectional stream with one response or error frame.
//!
//! Threading: the server, its connections and its handler live on the compio
//! runtime thread that called [`RpcServer::bind`]; handlers are `!Send`
//! futures on that thread and may await (raft handlers do).
//!
//! Bounds: connections per server ([`CONNECTIONS_MAX`]), streams per
//! connection (QUIC's own limit, [`crate::quic::endpoint::STREAMS_PER_CONNECTION_MAX`]),
//! request bytes buffered per connection ([`CONNECTION_REQUEST_BYTES_MAX`]),
//! time to receive a request ([`REQUEST_READ_TIMEOUT`]) and time a handler may
//! run ([`DEADLINE_MAX`], or less if the caller asked for less).

use std::cell::Cell;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use compio::quic::{Endpoint, Incoming, RecvStream, SendStream, VarInt};
use compio::runtime::JoinHandle;
use futures_util::future::LocalBoxFuture;

use super::frame::{self, ErrorCode, FrameError, FrameHeader, FrameKind, RemoteError};
use super::stream::{self, ReadFrameError};
use crate::quic::{ClusterTls, EndpointError};

/// Connections one server accepts at once; more are refused at the QUIC
/// level. A cluster has a handful of servers and up to ~10,000 client
/// agents, each with one connection per server; 16,384 leaves headroom for
/// reconnect overlap while bounding per-connection state.
pub const CONNECTIONS_MAX: usize = 16_384;

/// Request bytes one connection may have buffered at once (frames being
/// read or waiting on their handler). Streams per connection are bounded
/// too, but 128 streams × 16 MiB frames would be 2 GiB; 128 MiB allows
/// eight maximum-size frames, or hundreds of ordinary ones, in flight per
/// peer. A request over budget gets [`ErrorCode::OVERLOADED`] and may be
/// retried.
pub const CONNECTION_REQUEST_BYTES_MAX: usize = 128 * 1024 * 1024;

/// Time a peer has to deliver a whole request frame once it opened the
/// stream: a peer trickling bytes must not hold a stream slot and its
/// buffer forever. 30 s moves a 16 MiB frame at ~4 Mbit/s.
pub const REQUEST_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// Longest a handler may run, whatever deadline the request carries: the
/// deadline is a u32 of milliseconds (49 days), and no RPC should outlive a
/// few minutes; long work is started by one RPC and polled by others.
pub const DEADLINE_MAX: Duration = Duration::from_secs(5 * 60);

/// How long [`RpcServer::shutdown`] waits for connections and handlers to
/// wind down before giving up on a clean close: long enough to flush the
/// close to peers, short enough not to stall a restart.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

/// The application close code sent to peers when the server shuts down.
const CLOSE_SHUTDOWN: u32 = 0;

/// The stream stop code telling a client we will not read the rest of its
/// request (it was refused; the error frame says why).
const STOP_REFUSED: u32 = 1;

/// Answers requests. Implementations dispatch on `method` and return the
/// response body, or a [`RemoteError`] that the client receives as
/// [`crate::rpc::RpcError::Remote`]. An unknown method should answer
/// [`RemoteError::unknown_method`].
///
/// `deadline` is when the caller stops waiting; the server abandons
/// (drops) the returned future at that instant, so a handler need not check
/// it itself unless it wants to stop earlier or hand the deadline on.
pub trait RpcHandler {
    /// Handle one request.
    fn handle(&self, method: u16, body: Vec<u8>, deadline: Instant)
    -> LocalBoxFuture<'_, Result<Vec<u8>, RemoteError>>;
}

impl RemoteError {
    /// The answer to a method no handler knows.
    pub fn unknown_method(method: u16) -> Self {
        RemoteError::new(ErrorCode::UNKNOWN_METHOD, format!("unknown method {method}"))
    }
}

/// A running RPC server. Dropping it closes the endpoint at once; use
/// [`RpcServer::shutdown`] to tell peers first.
#[derive(Debug)]
pub struct RpcServer {
    endpoint: Endpoint,
    local_addr: SocketAddr,
    accept_task: Option<JoinHandle<()>>,
}

impl RpcServer {
    /// Bind a QUIC endpoint at `addr` (port 0 picks a free one) with
    /// identity `tls` and serve `handler` on it. Must be called on a compio
    /// runtime thread; the server runs on that thread.
    pub async fn bind(addr: SocketAddr, tls: &ClusterTls, handler: Rc<dyn RpcHandler>) -> Result<Self, EndpointError> {
        let endpoint = crate::quic::bind_server(addr, tls).await?;
        let local_addr = endpoint.local_addr().map_err(|source| EndpointError::Bind { addr, source })?;
        let accept_task = compio::runtime::spawn(accept_loop(endpoint.clone(), handler));
        tracing::debug!(%local_addr, "rpc server listening");
        Ok(Self { endpoint, local_addr, accept_task: Some(accept_task) })
    }

    /// The address the server listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The server's endpoint, which can also dial out with the node's
    /// identity: `RpcClient::with_endpoint(server.endpoint().clone())` lets
    /// a server call its peers from its listening socket and thread.
    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    /// Close every connection (peers see an application close and reconnect
    /// elsewhere or later) and wait up to [`SHUTDOWN_GRACE`] for the close to
    /// go out and the socket to be released.
    pub async fn shutdown(mut self) {
        self.endpoint.close(VarInt::from_u32(CLOSE_SHUTDOWN), b"server shutting down");
        if let Some(task) = self.accept_task.take() {
            let _ = task.cancel().await;
        }
        let endpoint = self.endpoint.clone();
        drop(self);
        if compio::time::timeout(SHUTDOWN_GRACE, endpoint.shutdown()).await.is_err() {
            tracing::warn!("rpc server shutdown: connections still open after the grace period");
        }
    }
}

impl Drop for RpcServer {
    fn drop(&mut self) {
        self.endpoint.close(VarInt::from_u32(CLOSE_SHUTDOWN), b"server shutting down");
        // Dropping the accept task's handle cancels it.
        self.accept_task.take();
    }
}

async fn accept_loop(endpoint: Endpoint, handler: Rc<dyn RpcHandler>) {
    let connections = Rc::new(Cell::new(0usize));
    while let Some(incoming) = endpoint.wait_incoming().await {
        if connections.get() >= CONNECTIONS_MAX {
            tracing::warn!(remote = %incoming.remote_address(), "refusing connection: {CONNECTIONS_MAX} open");
            incoming.refuse();
            continue;
        }
        let guard = CountGuard::new(connections.clone(), 1);
        compio::runtime::spawn(serve_connection(incoming, handler.clone(), guard)).detach();
    }
}

async fn serve_connection(incoming: Incoming, handler: Rc<dyn RpcHandler>, _guard: CountGuard) {
    let remote = incoming.remote_address();
    // The handshake is bounded by the idle timeout of the transport config.
    let connection = match incoming.await {
        Ok(connection) => connection,
        Err(error) => {
            // A peer with a certificate from another CA ends here.
            tracing::info!(%remote, %error, "rpc handshake failed");
            return;
        }
    };
    tracing::debug!(%remote, "rpc connection accepted");
    let buffered_bytes = Rc::new(Cell::new(0usize));
    loop {
        match connection.accept_bi().await {
            Ok((send, recv)) => {
                let task = serve_stream(handler.clone(), send, recv, buffered_bytes.clone());
                compio::runtime::spawn(task).detach();
            }
            Err(error) => {
                tracing::debug!(%remote, %error, "rpc connection ended");
                return;
            }
        }
    }
}

/// Decrements a shared counter by `amount` when dropped: releases a
/// connection slot or a connection's buffered-bytes budget however the task
/// holding it ends (finished, failed, cancelled).
struct CountGuard {
    counter: Rc<Cell<usize>>,
    amount: usize,
}

impl CountGuard {
    fn new(counter: Rc<Cell<usize>>, amount: usize) -> Self {
        counter.set(counter.get() + amount);
        Self { counter, amount }
    }
}

impl Drop for CountGuard {
    fn drop(&mut self) {
        let count = self.counter.get();
        assert!(count >= self.amount, "counter underflow: {count} < {}", self.amount);
        self.counter.set(count - self.amount);
    }
}

async fn serve_stream(
    handler: Rc<dyn RpcHandler>,
    mut send: SendStream,
    mut recv: RecvStream,
    buffered_bytes: Rc<Cell<usize>>,
) {
    // Charged as soon as the frame's size is known, before its bytes are
    // buffered, and released when this task ends (answered, failed or
    // cancelled).
    let mut budget = None;
    let admit = |frame_len: usize| {
        if buffered_bytes.get() + frame_len > CONNECTION_REQUEST_BYTES_MAX {
            return false;
        }
        budget = Some(CountGuard::new(buffered_bytes.clone(), frame_len));
        true
    };
    let read = compio::time::timeout(REQUEST_READ_TIMEOUT, stream::read_frame(&mut recv, admit)).await;
    let answer = match read {
        Err(_elapsed) => refusal(&mut recv, ErrorCode::BAD_FRAME, "request frame not received in time".into()),
        Ok(Err(ReadFrameError::Read(error))) => {
            // The stream or connection failed: nobody to answer.
            tracing::debug!(%error, "rpc stream read failed");
            return;
        }
        Ok(Err(ReadFrameError::Empty)) => {
            refusal(&mut recv, ErrorCode::BAD_FRAME, "stream finished without a request frame".into())
        }
        Ok(Err(ReadFrameError::NotAdmitted { frame_len })) => {
            let message = format!(
                "request of {frame_len} bytes would exceed the {CONNECTION_REQUEST_BYTES_MAX} bytes \
                 in flight allowed per connection; retry later"
            );
            refusal(&mut recv, ErrorCode::OVERLOADED, message)
        }
        Ok(Err(ReadFrameError::Frame(error))) => {
            let (code, message) = frame_error_answer(&error);
            refusal(&mut recv, code, message)
        }
        Ok(Ok(bytes)) => answer(&*handler, bytes).await,
    };
    if let Err(error) = stream::write_frame(&mut send, answer).await {
        // The client gave up (timed out) or the connection dropped.
        tracing::debug!(%error, "rpc answer not delivered");
    }
    drop(budget);
}

/// Decode a request, run its handler within its deadline, encode the answer.
async fn answer(handler: &dyn RpcHandler, bytes: Vec<u8>) -> Vec<u8> {
    let frame = match frame::decode(bytes) {
        Ok(frame) => frame,
        Err(error) => {
            // Not a frame we can read: its request id is not trustworthy
            // (or, for another version, not even where we would look).
            let (code, message) = frame_error_answer(&error);
            return frame::encode_error(0, 0, &RemoteError::new(code, message));
        }
    };
    let FrameHeader { kind, request_id, deadline_ms, method } = frame.header;
    if kind != FrameKind::Request {
        let error = RemoteError::new(ErrorCode::BAD_FRAME, format!("expected a request frame, got {kind:?}"));
        return frame::encode_error(request_id, method, &error);
    }
    let allowed = Duration::from_millis(u64::from(deadline_ms)).min(DEADLINE_MAX);
    let deadline = Instant::now() + allowed;
    let result = match compio::time::timeout_at(deadline, handler.handle(method, frame.body, deadline)).await {
        Ok(result) => result,
        Err(_elapsed) => Err(RemoteError::new(
            ErrorCode::DEADLINE_EXCEEDED,
            format!("method {method} did not finish within {} ms", allowed.as_millis()),
        )),
    };
    let header = FrameHeader { kind: FrameKind::Response, request_id, deadline_ms: 0, method };
    match result.map(|body| frame::encode(&header, &body)) {
        Ok(Ok(response)) => response,
        Ok(Err(error)) => {
            tracing::warn!(method, %error, "rpc response not sendable");
            let error = RemoteError::new(ErrorCode::INTERNAL, format!("response not sendable: {error}"));
            frame::encode_error(request_id, method, &error)
        }
        Err(error) => frame::encode_error(request_id, method, &error),
    }
}

/// The code and message answering a frame that did not decode.
fn frame_error_answer(error: &FrameError) -> (ErrorCode, String) {
    let code = match error {
        FrameError::UnsupportedVersion { .. } => ErrorCode::UNSUPPORTED_VERSION,
        FrameError::TooLarge { .. } => ErrorCode::FRAME_TOO_LARGE,
        _ => ErrorCode::BAD_FRAME,
    };
    (code, error.to_string())
}

/// An error frame for a request we will not read further, after telling the
/// client to stop sending the rest of it. The request id is unknown (the
/// header was not read or not trusted): 0.
fn refusal(recv: &mut RecvStream, code: ErrorCode, message: String) -> Vec<u8> {
    // Fails only if the stream is already finished, which is fine.
    let _ = recv.stop(VarInt::from_u32(STOP_REFUSED));
    frame::encode_error(0, 0, &RemoteError::new(code, message))
}
