//! The RPC client: one QUIC connection per peer, one bidirectional stream
//! per call.
//!
//! Threading: [`RpcClient`] is `!Send` and lives on one compio runtime
//! thread (the raft core's, for instance); calls from that thread are
//! `async` and may run concurrently, multiplexed on the peer's connection.
//! Plain OS threads (engine workers) use [`BlockingRpcClient`]: a dedicated
//! runtime thread owns an `RpcClient`, requests travel to it over a bounded
//! channel and each caller blocks on its own reply channel.
//!
//! Connections are made lazily on the first call to a peer, shared by
//! concurrent calls (one handshake, however many callers), and forgotten
//! after a transport failure or a timeout, so that the next call makes a
//! fresh one: that is how a restarted server is reached again.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::{Arc, mpsc};
use std::task::{Context, Poll, Wake, Waker};
use std::thread;
use std::time::{Duration, Instant};

use compio::quic::{Connection, Endpoint, RecvStream, SendStream};
use futures_util::future::{LocalBoxFuture, Shared};
use futures_util::{FutureExt, StreamExt};

use super::frame::{self, ErrorCode, FrameError, FrameHeader, FrameKind, RemoteError};
use super::stream::{self, ReadFrameError};
use crate::quic::{ClusterTls, EndpointError, SERVER_NAME};

/// Longest a connection attempt (UDP path + TLS handshake) may take, even if
/// the call's own timeout is longer: a peer that has not answered a
/// handshake in 5 s is down or unreachable, and the attempt is shared by
/// every caller of that peer, so it must not inherit one caller's patience.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Longest timeout a call may ask for; longer ones are cut to this. Matches
/// the server's `DEADLINE_MAX`: waiting longer than the server would run
/// the handler is pointless.
pub const CALL_TIMEOUT_MAX: Duration = super::server::DEADLINE_MAX;

/// Peers with a cached connection. Servers talk to a handful of peers and
/// client agents to the servers; 4,096 is far beyond either, and keeps a
/// misbehaving caller (dialling ever new addresses) from growing the map
/// without bound: past it, connections that have closed are dropped first,
/// then an arbitrary one (its in-flight calls keep it alive until they end).
pub const PEERS_MAX: usize = 4096;

/// Calls queued from blocking callers to the client thread. The runtime
/// thread drains the queue as fast as it can spawn tasks, so a full queue
/// means thousands of calls are already waiting: block the caller
/// (backpressure) rather than buffer without bound.
pub const BLOCKING_QUEUE_DEPTH: usize = 1024;

/// Why a call failed. The variants say what the caller can conclude about
/// the request: [`RpcError::Unreachable`] and [`RpcError::TooLarge`] mean it
/// was never sent; [`RpcError::Timeout`] and [`RpcError::ConnectionLost`]
/// mean it may or may not have run; [`RpcError::Remote`] means the server
/// answered with an error.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RpcError {
    /// No connection to the peer could be made (down, unreachable, TLS
    /// refused); the request was not sent.
    #[error("cannot reach {peer}: {reason}")]
    Unreachable {
        /// The peer.
        peer: SocketAddr,
        /// Why.
        reason: String,
    },
    /// No answer within the call's timeout.
    #[error("call to {peer} timed out after {timeout:?}")]
    Timeout {
        /// The peer.
        peer: SocketAddr,
        /// The timeout the call ran under.
        timeout: Duration,
    },
    /// The connection failed while the call was in flight.
    #[error("connection to {peer} lost: {reason}")]
    ConnectionLost {
        /// The peer.
        peer: SocketAddr,
        /// Why.
        reason: String,
    },
    /// The server answered with an error.
    #[error("remote error {}: {}", .0.code, .0.message)]
    Remote(RemoteError),
    /// The server's answer was not a valid frame, or not the answer to this
    /// request.
    #[error("protocol error from {peer}: {reason}")]
    Protocol {
        /// The peer.
        peer: SocketAddr,
        /// What was wrong.
        reason: String,
    },
    /// The request body exceeds [`frame::BODY_LEN_MAX`]; nothing was sent.
    /// Larger payloads must be sent in chunks.
    #[error("request body of {body_len} bytes exceeds the maximum of {max} bytes")]
    TooLarge {
        /// The body's size.
        body_len: usize,
        /// The maximum.
        max: usize,
    },
    /// The blocking client's thread has stopped.
    #[error("rpc client thread stopped")]
    Shutdown,
}

/// A peer's connection: being made (shared by every caller waiting for it)
/// or made.
#[derive(Clone)]
enum PeerConnection {
    Connecting(Shared<LocalBoxFuture<'static, Result<Connection, RpcError>>>),
    Ready(Connection),
}

/// An async RPC client on one compio runtime thread. See the module docs.
pub struct RpcClient {
    endpoint: Endpoint,
    peers: RefCell<HashMap<SocketAddr, PeerConnection>>,
    next_request_id: Cell<u64>,
}

impl std::fmt::Debug for RpcClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RpcClient").field("peers", &self.peers.borrow().len()).finish_non_exhaustive()
    }
}

impl RpcClient {
    /// A client with its own UDP socket bound to `bind` (`0.0.0.0:0` in
    /// production; the address family must match the peers'). Must be
    /// called on a compio runtime thread.
    pub async fn bind(bind: SocketAddr, tls: &ClusterTls) -> Result<Self, EndpointError> {
        Ok(Self::with_endpoint(crate::quic::bind_client(bind, tls).await?))
    }

    /// A client dialling from an existing endpoint (a server's own, so that
    /// servers reach each other from their listening address).
    pub fn with_endpoint(endpoint: Endpoint) -> Self {
        Self { endpoint, peers: RefCell::new(HashMap::new()), next_request_id: Cell::new(1) }
    }

    /// Call `method` on `peer` with `body`, waiting at most `timeout` (cut
    /// to [`CALL_TIMEOUT_MAX`]) for the whole call, connecting included.
    /// The server runs the handler under the same deadline.
    pub async fn call(
        &self,
        peer: SocketAddr,
        method: u16,
        body: Vec<u8>,
        timeout: Duration,
    ) -> Result<Vec<u8>, RpcError> {
        frame::check_body_len(body.len())
            .map_err(|_| RpcError::TooLarge { body_len: body.len(), max: frame::BODY_LEN_MAX })?;
        let timeout = timeout.min(CALL_TIMEOUT_MAX);
        let deadline = Instant::now() + timeout;
        let request_id = self.next_request_id.get();
        self.next_request_id.set(request_id.wrapping_add(1));

        // The connection the call went out on, to forget should it fail.
        let used = RefCell::new(None);
        let attempt = async {
            let (connection, streams) = self.open_stream(peer, deadline).await?;
            *used.borrow_mut() = Some(connection);
            exchange(streams, peer, request_id, method, body, deadline).await
        };
        let result = match compio::time::timeout_at(deadline, attempt).await {
            Ok(result) => result,
            Err(_elapsed) => Err(RpcError::Timeout { peer, timeout }),
        };
        // The server cuts a handler at the deadline we sent, which is ours:
        // whichever side notices first, the caller sees one kind of timeout.
        let result = match result {
            Err(RpcError::Remote(RemoteError { code: ErrorCode::DEADLINE_EXCEEDED, .. })) => {
                Err(RpcError::Timeout { peer, timeout })
            }
            other => other,
        };
        if matches!(result, Err(RpcError::ConnectionLost { .. } | RpcError::Timeout { .. })) {
            // After a transport failure the connection is dead. After a
            // timeout it may be: a peer that crashed and restarted cannot
            // tell us (its stateless resets fail our check), and we would
            // otherwise keep timing out until the idle timeout. One fresh
            // handshake is a small price; calls still in flight keep the
            // old connection until they end.
            if let Some(connection) = used.into_inner() {
                self.forget(peer, &connection);
            }
        }
        result
    }

    /// A new stream to `peer`. If the cached connection turns out to be
    /// closed when the stream is opened, nothing has been sent yet, so one
    /// fresh connection is tried before giving up.
    async fn open_stream(
        &self,
        peer: SocketAddr,
        deadline: Instant,
    ) -> Result<(Connection, (SendStream, RecvStream)), RpcError> {
        let connection = self.connection(peer, deadline).await?;
        // Waits while the peer's concurrent stream limit is reached.
        match connection.open_bi_wait().await {
            Ok(streams) => return Ok((connection, streams)),
            Err(error) => {
                tracing::debug!(%peer, %error, "cached rpc connection closed; reconnecting");
                self.forget(peer, &connection);
            }
        }
        let connection = self.connection(peer, deadline).await?;
        match connection.open_bi_wait().await {
            Ok(streams) => Ok((connection, streams)),
            Err(error) => {
                self.forget(peer, &connection);
                Err(RpcError::Unreachable { peer, reason: error.to_string() })
            }
        }
    }

    /// The peer's connection: cached, being made, or made now.
    async fn connection(&self, peer: SocketAddr, deadline: Instant) -> Result<Connection, RpcError> {
        let cached = self.peers.borrow().get(&peer).cloned();
        let connecting = match cached {
            Some(PeerConnection::Ready(connection)) if connection.close_reason().is_none() => return Ok(connection),
            Some(PeerConnection::Connecting(connecting)) => connecting,
            Some(PeerConnection::Ready(_)) | None => {
                let connecting = connect(self.endpoint.clone(), peer).boxed_local().shared();
                self.insert(peer, PeerConnection::Connecting(connecting.clone()));
                connecting
            }
        };
        let result = match compio::time::timeout_at(deadline, connecting.clone()).await {
            Ok(result) => result,
            // The attempt goes on for other callers (up to CONNECT_TIMEOUT);
            // this one has run out of time before sending anything.
            Err(_elapsed) => {
                return Err(RpcError::Unreachable { peer, reason: "no connection within the call's timeout".into() });
            }
        };
        // Replace our attempt in the map by its outcome, unless another
        // caller already has.
        let mut peers = self.peers.borrow_mut();
        let ours = matches!(peers.get(&peer), Some(PeerConnection::Connecting(current)) if current.ptr_eq(&connecting));
        if ours {
            match &result {
                Ok(connection) => {
                    peers.insert(peer, PeerConnection::Ready(connection.clone()));
                }
                Err(_) => {
                    peers.remove(&peer);
                }
            }
        }
        result
    }

    fn insert(&self, peer: SocketAddr, connection: PeerConnection) {
        let mut peers = self.peers.borrow_mut();
        if peers.len() >= PEERS_MAX && !peers.contains_key(&peer) {
            peers.retain(|_, cached| !matches!(cached, PeerConnection::Ready(c) if c.close_reason().is_some()));
            if peers.len() >= PEERS_MAX
                && let Some(&victim) = peers.keys().next()
            {
                peers.remove(&victim);
            }
        }
        peers.insert(peer, connection);
    }

    /// Drop the cached connection to `peer` if it is still `connection`
    /// (another call may have replaced it with a fresh one already).
    fn forget(&self, peer: SocketAddr, connection: &Connection) {
        let mut peers = self.peers.borrow_mut();
        if matches!(peers.get(&peer), Some(PeerConnection::Ready(cached)) if cached == connection) {
            peers.remove(&peer);
        }
    }
}

/// Make a connection, within [`CONNECT_TIMEOUT`].
async fn connect(endpoint: Endpoint, peer: SocketAddr) -> Result<Connection, RpcError> {
    let unreachable = |reason: String| RpcError::Unreachable { peer, reason };
    let connecting = endpoint.connect(peer, SERVER_NAME, None).map_err(|e| unreachable(e.to_string()))?;
    match compio::time::timeout(CONNECT_TIMEOUT, connecting).await {
        Ok(Ok(connection)) => Ok(connection),
        Ok(Err(error)) => Err(unreachable(error.to_string())),
        Err(_elapsed) => Err(unreachable(format!("no handshake within {CONNECT_TIMEOUT:?}"))),
    }
}

/// One request and its answer on a new stream.
async fn exchange(
    (mut send, mut recv): (SendStream, RecvStream),
    peer: SocketAddr,
    request_id: u64,
    method: u16,
    body: Vec<u8>,
    deadline: Instant,
) -> Result<Vec<u8>, RpcError> {
    let lost = |reason: String| RpcError::ConnectionLost { peer, reason };
    let protocol = |reason: String| RpcError::Protocol { peer, reason };
    // Tell the server the time left now, after connecting, so that its
    // deadline does not outlast ours.
    let remaining = deadline.saturating_duration_since(Instant::now());
    // Rounded up: the server must not give up before we do.
    let deadline_ms = u32::try_from(remaining.as_micros().div_ceil(1000)).unwrap_or(u32::MAX);
    let header = FrameHeader { kind: FrameKind::Request, request_id, deadline_ms, method };
    let request = frame::encode(&header, &body).map_err(|e| protocol(e.to_string()))?;
    drop(body);
    if let Err(error) = stream::write_frame(&mut send, request).await {
        // A stopped stream means the server refused the request and is
        // answering with an error frame: read it. Anything else is fatal.
        if !stream::is_stopped(&error) {
            return Err(lost(error.to_string()));
        }
    }
    // Answers are bounded by FRAME_LEN_MAX alone: we asked for them, and
    // the caller bounds how many it has in flight.
    let answer = match stream::read_frame(&mut recv, |_| true).await {
        Ok(answer) => answer,
        Err(ReadFrameError::Read(error)) => return Err(lost(error.to_string())),
        Err(ReadFrameError::Empty) => return Err(protocol("stream finished without an answer".into())),
        Err(error @ (ReadFrameError::Frame(_) | ReadFrameError::NotAdmitted { .. })) => {
            return Err(protocol(error.to_string()));
        }
    };
    let answer = frame::decode(answer).map_err(|e| protocol(e.to_string()))?;
    let header = answer.header;
    match header.kind {
        FrameKind::Response if header.request_id == request_id => Ok(answer.body),
        // A server that could not decode our frame answers with id 0.
        FrameKind::Error if header.request_id == request_id || header.request_id == 0 => {
            Err(RpcError::Remote(RemoteError::decode(&answer.body).map_err(|e: FrameError| protocol(e.to_string()))?))
        }
        kind => Err(protocol(format!(
            "expected an answer to request {request_id}, got {kind:?} for request {}",
            header.request_id
        ))),
    }
}

/// One call handed from a blocking caller to the client thread.
struct BlockingCall {
    peer: SocketAddr,
    method: u16,
    body: Vec<u8>,
    timeout: Duration,
    /// Capacity 1, used once: the client thread never blocks on it.
    reply: mpsc::SyncSender<Result<Vec<u8>, RpcError>>,
}

/// A thread-safe, blocking RPC client for plain OS threads. Cloning is
/// cheap; all clones share one client thread, which stops when the last
/// clone is dropped.
#[derive(Debug, Clone)]
pub struct BlockingRpcClient {
    inner: Arc<BlockingInner>,
}

#[derive(Debug)]
struct BlockingInner {
    /// `None` only while being dropped.
    calls: Option<futures_channel::mpsc::Sender<BlockingCall>>,
    thread: Option<thread::JoinHandle<()>>,
}

impl Drop for BlockingInner {
    fn drop(&mut self) {
        // Closing the queue ends the client thread's loop.
        self.calls.take();
        if let Some(thread) = self.thread.take()
            && thread.join().is_err()
        {
            tracing::error!("rpc client thread panicked");
        }
    }
}

/// How long a blocking caller waits for its answer beyond the call's own
/// timeout, which the client thread enforces: only reached if that thread
/// is stuck, and then the caller gets [`RpcError::Shutdown`].
const BLOCKING_REPLY_GRACE: Duration = Duration::from_secs(5);

impl BlockingRpcClient {
    /// Start the client thread (named `caravan-rpc-client`) with its own
    /// compio runtime and an [`RpcClient`] bound to `bind`; returns once the
    /// socket is bound.
    pub fn start(bind: SocketAddr, tls: &ClusterTls) -> Result<Self, EndpointError> {
        let (calls_sender, calls) = futures_channel::mpsc::channel::<BlockingCall>(BLOCKING_QUEUE_DEPTH);
        let (started_sender, started) = mpsc::sync_channel::<Result<(), EndpointError>>(1);
        let tls = tls.clone();
        let thread = thread::Builder::new()
            .name("caravan-rpc-client".into())
            .spawn(move || client_thread(bind, tls, calls, started_sender))
            .map_err(|source| EndpointError::Bind { addr: bind, source })?;
        let startup = started.recv().unwrap_or_else(|_| {
            Err(EndpointError::Bind { addr: bind, source: std::io::Error::other("rpc client thread died") })
        });
        let inner = BlockingInner { calls: Some(calls_sender), thread: Some(thread) };
        startup?;
        Ok(Self { inner: Arc::new(inner) })
    }

    /// Like [`RpcClient::call`], blocking the calling thread. Waits for room
    /// in the queue if [`BLOCKING_QUEUE_DEPTH`] calls are already queued
    /// (that wait counts against `timeout`).
    pub fn call(&self, peer: SocketAddr, method: u16, body: Vec<u8>, timeout: Duration) -> Result<Vec<u8>, RpcError> {
        let Some(calls) = &self.inner.calls else { return Err(RpcError::Shutdown) };
        let timeout = timeout.min(CALL_TIMEOUT_MAX);
        let started = Instant::now();
        let (reply, answer) = mpsc::sync_channel(1);
        let mut calls = calls.clone();
        wait_ready(&mut calls, started + timeout).map_err(|e| match e {
            WaitError::Closed => RpcError::Shutdown,
            WaitError::TimedOut => RpcError::Timeout { peer, timeout },
        })?;
        let remaining = timeout.saturating_sub(started.elapsed());
        calls
            .start_send(BlockingCall { peer, method, body, timeout: remaining, reply })
            .map_err(|_| RpcError::Shutdown)?;
        answer.recv_timeout(remaining + BLOCKING_REPLY_GRACE).unwrap_or(Err(RpcError::Shutdown))
    }
}

fn client_thread(
    bind: SocketAddr,
    tls: ClusterTls,
    mut calls: futures_channel::mpsc::Receiver<BlockingCall>,
    started: mpsc::SyncSender<Result<(), EndpointError>>,
) {
    let runtime = match crate::runtime::server_runtime() {
        Ok(runtime) => runtime,
        Err(source) => {
            let _ = started.send(Err(EndpointError::Bind { addr: bind, source }));
            return;
        }
    };
    runtime.block_on(async move {
        let client = match RpcClient::bind(bind, &tls).await {
            Ok(client) => Rc::new(client),
            Err(error) => {
                let _ = started.send(Err(error));
                return;
            }
        };
        drop(tls);
        let _ = started.send(Ok(()));
        while let Some(call) = calls.next().await {
            let client = client.clone();
            compio::runtime::spawn(async move {
                let result = client.call(call.peer, call.method, call.body, call.timeout).await;
                // The caller may have given up; nothing to do then.
                let _ = call.reply.send(result);
            })
            .detach();
        }
    });
}

enum WaitError {
    Closed,
    TimedOut,
}

/// Wakes a parked thread: the waker a blocking caller lends the channel.
struct ThreadWaker(thread::Thread);

impl Wake for ThreadWaker {
    fn wake(self: Arc<Self>) {
        self.0.unpark();
    }
}

/// Block until the queue has room for one call, or `deadline`.
fn wait_ready(calls: &mut futures_channel::mpsc::Sender<BlockingCall>, deadline: Instant) -> Result<(), WaitError> {
    let waker = Waker::from(Arc::new(ThreadWaker(thread::current())));
    let mut context = Context::from_waker(&waker);
    loop {
        match calls.poll_ready(&mut context) {
            Poll::Ready(Ok(())) => return Ok(()),
            Poll::Ready(Err(_)) => return Err(WaitError::Closed),
            Poll::Pending => {
                let now = Instant::now();
                if now >= deadline {
                    return Err(WaitError::TimedOut);
                }
                // Spurious wake-ups just poll again.
                thread::park_timeout(deadline - now);
            }
        }
    }
}
