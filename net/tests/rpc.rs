//! Server RPC over QUIC on loopback: round trips, concurrency, malformed and
//! oversized input, versions, deadlines, TLS refusal, the blocking handle and
//! reconnection after a server restart.
//!
//! Throughput figures: `CARAVAN_RPC_BENCH=1 cargo test --release -p caravan-net --test rpc -- --nocapture bench`.

use std::cell::Cell;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use caravan_net::quic::{self, ClusterTls, DevCa, SERVER_NAME};
use caravan_net::rpc::frame::{self, ErrorCode, FrameHeader, FrameKind, RemoteError};
use caravan_net::rpc::{BlockingRpcClient, RpcClient, RpcError, RpcHandler, RpcServer};
use compio::io::AsyncWriteExt;
use compio::quic::Endpoint;
use futures_util::future::LocalBoxFuture;
use futures_util::{FutureExt, StreamExt};

/// Echo the body back.
const ECHO: u16 = 1;
/// Echo after 1 ms, so that concurrent calls overlap in the handler.
const SLOW_ECHO: u16 = 2;
/// Sleep for the number of milliseconds in the body (u64, big-endian).
const SLEEP: u16 = 3;
/// Answer with an application error.
const FAIL: u16 = 4;

/// Generous timeout for calls that should succeed: the 2-core test machine
/// is shared, and a handshake in a debug build takes milliseconds.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

fn localhost() -> SocketAddr {
    "127.0.0.1:0".parse().expect("valid address")
}

#[derive(Default)]
struct TestHandler {
    calls: Cell<usize>,
    in_flight: Cell<usize>,
    in_flight_peak: Cell<usize>,
}

impl RpcHandler for TestHandler {
    fn handle(
        &self,
        method: u16,
        body: Vec<u8>,
        _deadline: Instant,
    ) -> LocalBoxFuture<'_, Result<Vec<u8>, RemoteError>> {
        self.calls.set(self.calls.get() + 1);
        async move {
            self.in_flight.set(self.in_flight.get() + 1);
            self.in_flight_peak.set(self.in_flight_peak.get().max(self.in_flight.get()));
            let result = match method {
                ECHO => Ok(body),
                SLOW_ECHO => {
                    compio::time::sleep(Duration::from_millis(1)).await;
                    Ok(body)
                }
                SLEEP => {
                    let millis = body.as_slice().try_into().map(u64::from_be_bytes).unwrap_or(0);
                    compio::time::sleep(Duration::from_millis(millis)).await;
                    Ok(Vec::new())
                }
                FAIL => Err(RemoteError::new(ErrorCode(1001), "this method always fails")),
                other => Err(RemoteError::unknown_method(other)),
            };
            self.in_flight.set(self.in_flight.get() - 1);
            result
        }
        .boxed_local()
    }
}

/// A node identity from a fresh CA, shared by server and client.
fn dev_tls() -> (DevCa, ClusterTls) {
    let ca = DevCa::generate().expect("CA");
    let tls = ca.issue_node(&[]).expect("node certificate");
    (ca, tls)
}

async fn start_server(tls: &ClusterTls) -> (RpcServer, Rc<TestHandler>) {
    let handler = Rc::new(TestHandler::default());
    let server = RpcServer::bind(localhost(), tls, handler.clone()).await.expect("server binds");
    (server, handler)
}

struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("caravan-rpc-test-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        Self(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[compio::test]
async fn echo_round_trip_with_dev_certificates_from_files() {
    use std::os::unix::fs::PermissionsExt;
    let dir = TempDir::new("echo");
    let server_tls = ClusterTls::generate_dev(&dir.0).expect("dev TLS");
    for (file, mode) in [("ca.pem", None), ("ca-key.pem", Some(0o600)), ("cert.pem", None), ("key.pem", Some(0o600))] {
        let metadata = std::fs::metadata(dir.0.join(file)).expect(file);
        if let Some(mode) = mode {
            assert_eq!(metadata.permissions().mode() & 0o777, mode, "{file} mode");
        }
    }
    // The client loads the same files, as a production agent would.
    let client_tls =
        ClusterTls::load(&dir.0.join("ca.pem"), &dir.0.join("cert.pem"), &dir.0.join("key.pem")).expect("loads");
    let (server, handler) = start_server(&server_tls).await;
    let client = RpcClient::bind(localhost(), &client_tls).await.expect("client binds");

    let answer = client.call(server.local_addr(), ECHO, b"hello caravan".to_vec(), CALL_TIMEOUT).await;
    assert_eq!(answer, Ok(b"hello caravan".to_vec()));
    let empty = client.call(server.local_addr(), ECHO, Vec::new(), CALL_TIMEOUT).await;
    assert_eq!(empty, Ok(Vec::new()));
    assert_eq!(handler.calls.get(), 2);

    let failed = client.call(server.local_addr(), FAIL, Vec::new(), CALL_TIMEOUT).await;
    assert_eq!(failed, Err(RpcError::Remote(RemoteError::new(ErrorCode(1001), "this method always fails"))));
    let unknown = client.call(server.local_addr(), 999, Vec::new(), CALL_TIMEOUT).await;
    assert_eq!(unknown, Err(RpcError::Remote(RemoteError::new(ErrorCode::UNKNOWN_METHOD, "unknown method 999"))));
    server.shutdown().await;
}

#[compio::test]
async fn thousand_calls_sixty_four_in_flight() {
    let (_ca, tls) = dev_tls();
    let (server, handler) = start_server(&tls).await;
    let client = RpcClient::bind(localhost(), &tls).await.expect("client binds");
    let peer = server.local_addr();
    const CALLS: usize = 1000;
    const IN_FLIGHT: usize = 64;
    let answers: Vec<(usize, Result<Vec<u8>, RpcError>)> = futures_util::stream::iter(0..CALLS)
        .map(|i| {
            let client = &client;
            async move { (i, client.call(peer, SLOW_ECHO, i.to_be_bytes().to_vec(), CALL_TIMEOUT).await) }
        })
        .buffer_unordered(IN_FLIGHT)
        .collect()
        .await;
    assert_eq!(answers.len(), CALLS);
    for (i, answer) in answers {
        assert_eq!(answer, Ok(i.to_be_bytes().to_vec()), "call {i} got its own answer");
    }
    assert_eq!(handler.calls.get(), CALLS);
    let peak = handler.in_flight_peak.get();
    assert!(peak > 1, "calls overlapped on the server (peak {peak})");
    assert!(peak <= IN_FLIGHT, "never more than the client sent at once (peak {peak})");
    server.shutdown().await;
}

#[compio::test]
async fn oversized_request_is_refused_cleanly() {
    let (_ca, tls) = dev_tls();
    let (server, handler) = start_server(&tls).await;
    let client = RpcClient::bind(localhost(), &tls).await.expect("client binds");
    let peer = server.local_addr();

    // The client refuses before sending anything.
    let too_big = vec![0u8; frame::BODY_LEN_MAX + 1];
    let refused = client.call(peer, ECHO, too_big, CALL_TIMEOUT).await;
    assert_eq!(refused, Err(RpcError::TooLarge { body_len: frame::BODY_LEN_MAX + 1, max: frame::BODY_LEN_MAX }));

    // A peer that sends one anyway gets an error frame after the length
    // prefix, without the server reading (or buffering) the rest.
    let endpoint = raw_endpoint(&tls).await;
    let mut oversized = frame_bytes(ECHO, &[]);
    let length = u32::try_from(frame::FRAME_LEN_MAX - frame::LENGTH_PREFIX_LEN + 1).expect("fits");
    oversized[..4].copy_from_slice(&length.to_be_bytes());
    oversized.extend(std::iter::repeat_n(0u8, 256 * 1024));
    let answer = raw_exchange(&endpoint, peer, oversized).await;
    assert_eq!(answer.code, ErrorCode::FRAME_TOO_LARGE, "{answer:?}");

    // A body at the maximum goes through.
    let max = vec![7u8; frame::BODY_LEN_MAX];
    let echoed = client.call(peer, ECHO, max.clone(), CALL_TIMEOUT).await;
    assert!(echoed == Ok(max), "maximum-size body echoed");
    assert_eq!(handler.calls.get(), 1, "only the maximum-size call reached the handler");
    server.shutdown().await;
}

#[compio::test]
async fn garbage_gets_an_error_frame_and_the_server_keeps_serving() {
    let (_ca, tls) = dev_tls();
    let (server, handler) = start_server(&tls).await;
    let peer = server.local_addr();
    let endpoint = raw_endpoint(&tls).await;

    let mut bad_kind = frame_bytes(ECHO, b"x");
    bad_kind[5] = 9;
    let mut short_length = frame_bytes(ECHO, b"x");
    short_length[..4].copy_from_slice(&3u32.to_be_bytes());
    let cases: Vec<(&str, Vec<u8>, ErrorCode)> = vec![
        ("http", b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(), ErrorCode::FRAME_TOO_LARGE),
        ("empty", Vec::new(), ErrorCode::BAD_FRAME),
        ("truncated", frame_bytes(ECHO, b"hello")[..12].to_vec(), ErrorCode::BAD_FRAME),
        ("bad kind", bad_kind, ErrorCode::BAD_FRAME),
        ("length below header", short_length, ErrorCode::BAD_FRAME),
        ("response as request", response_bytes(), ErrorCode::BAD_FRAME),
    ];
    for (name, bytes, code) in cases {
        let answer = raw_exchange(&endpoint, peer, bytes).await;
        assert_eq!(answer.code, code, "{name}: {answer:?}");
    }
    assert_eq!(handler.calls.get(), 0, "no garbage reached the handler");

    // A well-formed frame on the same raw connection is answered...
    let answer = raw_call(&endpoint, peer, frame_bytes(ECHO, b"still here")).await;
    assert_eq!(answer.header.kind, FrameKind::Response);
    assert_eq!(answer.body, b"still here");
    // ...and so is a real client.
    let client = RpcClient::bind(localhost(), &tls).await.expect("client binds");
    assert_eq!(client.call(peer, ECHO, b"ok".to_vec(), CALL_TIMEOUT).await, Ok(b"ok".to_vec()));
    server.shutdown().await;
}

#[compio::test]
async fn unknown_version_is_refused_naming_supported_versions() {
    let (_ca, tls) = dev_tls();
    let (server, handler) = start_server(&tls).await;
    let endpoint = raw_endpoint(&tls).await;
    let mut future_frame = frame_bytes(ECHO, b"from the future");
    future_frame[4] = 2;
    let answer = raw_exchange(&endpoint, server.local_addr(), future_frame).await;
    assert_eq!(answer.code, ErrorCode::UNSUPPORTED_VERSION);
    assert_eq!(answer.message, "protocol version 2 not supported; supported versions: 1");
    assert_eq!(handler.calls.get(), 0);
    server.shutdown().await;
}

#[compio::test]
async fn slow_handler_times_out_and_the_connection_recovers() {
    let (_ca, tls) = dev_tls();
    let (server, _handler) = start_server(&tls).await;
    let client = RpcClient::bind(localhost(), &tls).await.expect("client binds");
    let peer = server.local_addr();
    // Connect first so that the timeout measures the handler, not the handshake.
    assert!(client.call(peer, ECHO, Vec::new(), CALL_TIMEOUT).await.is_ok());

    let timeout = Duration::from_millis(200);
    let started = Instant::now();
    let result = client.call(peer, SLEEP, 5_000u64.to_be_bytes().to_vec(), timeout).await;
    let elapsed = started.elapsed();
    assert_eq!(result, Err(RpcError::Timeout { peer, timeout }));
    // Either side may notice first (the server runs the handler under the
    // deadline it was sent), so allow a little before the timeout.
    assert!(elapsed >= timeout.mul_f64(0.9), "waited about the timeout ({elapsed:?})");
    assert!(elapsed < Duration::from_secs(3), "gave up near the timeout, not after the handler ({elapsed:?})");

    // The server enforces the deadline too: a handler outliving the
    // caller's deadline is cut short with DEADLINE_EXCEEDED. Seen through a
    // raw stream that asks for 100 ms but keeps listening.
    let endpoint = raw_endpoint(&tls).await;
    let header = FrameHeader { kind: FrameKind::Request, request_id: 5, deadline_ms: 100, method: SLEEP };
    let request = frame::encode(&header, &5_000u64.to_be_bytes()).expect("encodes");
    let answer = raw_exchange(&endpoint, peer, request).await;
    assert_eq!(answer.code, ErrorCode::DEADLINE_EXCEEDED, "{answer:?}");

    assert_eq!(client.call(peer, ECHO, b"after".to_vec(), CALL_TIMEOUT).await, Ok(b"after".to_vec()));
    server.shutdown().await;
}

#[compio::test]
async fn peers_with_certificates_from_another_ca_are_refused() {
    let (_ca, tls) = dev_tls();
    let (_other_ca, stranger) = dev_tls();
    let (server, handler) = start_server(&tls).await;
    let peer = server.local_addr();

    // A client with a foreign certificate: the server refuses it.
    let client = RpcClient::bind(localhost(), &stranger).await.expect("client binds");
    let result = client.call(peer, ECHO, b"let me in".to_vec(), CALL_TIMEOUT).await;
    assert!(
        matches!(result, Err(RpcError::Unreachable { .. } | RpcError::ConnectionLost { .. })),
        "foreign client refused: {result:?}"
    );
    assert_eq!(handler.calls.get(), 0, "the handler never ran");

    // A server with a foreign certificate: our client refuses it.
    let (impostor, impostor_handler) = start_server(&stranger).await;
    let client = RpcClient::bind(localhost(), &tls).await.expect("client binds");
    let result = client.call(impostor.local_addr(), ECHO, b"secret".to_vec(), CALL_TIMEOUT).await;
    assert!(matches!(result, Err(RpcError::Unreachable { .. })), "foreign server refused: {result:?}");
    assert_eq!(impostor_handler.calls.get(), 0);

    // The genuine pair still works, also server to server from the
    // server's own endpoint (how raft peers call each other).
    assert_eq!(client.call(peer, ECHO, b"hi".to_vec(), CALL_TIMEOUT).await, Ok(b"hi".to_vec()));
    let (sibling, _sibling_handler) = start_server(&tls).await;
    let server_client = RpcClient::with_endpoint(sibling.endpoint().clone());
    assert_eq!(server_client.call(peer, ECHO, b"peer".to_vec(), CALL_TIMEOUT).await, Ok(b"peer".to_vec()));
    drop(server_client);
    sibling.shutdown().await;
    server.shutdown().await;
    impostor.shutdown().await;
}

#[test]
fn blocking_client_from_std_threads() {
    let (_ca, tls) = dev_tls();
    let server = ServerThread::start(tls.clone(), localhost());
    let client = BlockingRpcClient::start(localhost(), &tls).expect("client starts");
    const THREADS: usize = 4;
    const CALLS_PER_THREAD: usize = 50;
    let workers: Vec<_> = (0..THREADS)
        .map(|t| {
            let client = client.clone();
            let peer = server.addr;
            thread::spawn(move || {
                for i in 0..CALLS_PER_THREAD {
                    let body = format!("thread {t} call {i}").into_bytes();
                    assert_eq!(client.call(peer, ECHO, body.clone(), CALL_TIMEOUT), Ok(body));
                }
            })
        })
        .collect();
    for worker in workers {
        worker.join().expect("worker thread");
    }
    let remote = client.call(server.addr, 999, Vec::new(), CALL_TIMEOUT);
    assert!(matches!(remote, Err(RpcError::Remote(RemoteError { code: ErrorCode::UNKNOWN_METHOD, .. }))));
    drop(client);
    assert_eq!(server.stop(), THREADS * CALLS_PER_THREAD + 1);
}

#[compio::test]
async fn client_reconnects_after_server_restart() {
    let (_ca, tls) = dev_tls();
    let (server, _handler) = start_server(&tls).await;
    let addr = server.local_addr();
    let client = RpcClient::bind(localhost(), &tls).await.expect("client binds");
    assert_eq!(client.call(addr, ECHO, b"before".to_vec(), CALL_TIMEOUT).await, Ok(b"before".to_vec()));

    // A clean restart: peers are told, so the very next call reconnects.
    server.shutdown().await;
    let handler = Rc::new(TestHandler::default());
    let server = RpcServer::bind(addr, &tls, handler.clone()).await.expect("rebinds the same port");
    assert_eq!(client.call(addr, ECHO, b"after".to_vec(), CALL_TIMEOUT).await, Ok(b"after".to_vec()));
    assert_eq!(handler.calls.get(), 1);
    server.shutdown().await;
}

#[test]
fn client_reconnects_after_server_crash() {
    let (_ca, tls) = dev_tls();
    let server = ServerThread::start(tls.clone(), localhost());
    let addr = server.addr;
    let client = BlockingRpcClient::start(localhost(), &tls).expect("client starts");
    assert_eq!(client.call(addr, ECHO, b"before".to_vec(), CALL_TIMEOUT), Ok(b"before".to_vec()));

    // A crash: the server's thread and socket vanish without closing
    // anything, and a new process binds the same port. The first call goes
    // out on the dead connection; the new server answers it with a
    // stateless reset the client can verify (the reset key derives from the
    // node's key, not from the process), so the call fails fast as
    // `ConnectionLost` instead of timing out, and the next call reconnects.
    server.crash();
    let server = ServerThread::start(tls.clone(), addr);
    let started = Instant::now();
    let first = client.call(addr, ECHO, b"first".to_vec(), Duration::from_secs(5));
    let elapsed = started.elapsed();
    if first.is_err() {
        assert!(matches!(first, Err(RpcError::ConnectionLost { .. })), "{first:?}");
        assert!(elapsed < Duration::from_secs(2), "reset noticed well before the timeout ({elapsed:?})");
    }
    assert_eq!(client.call(addr, ECHO, b"second".to_vec(), CALL_TIMEOUT), Ok(b"second".to_vec()));
    drop(client);
    server.stop();
}

/// How long a server restarted on its old port keeps trying to bind it.
const REBIND_PATIENCE: Duration = Duration::from_secs(10);

/// An RPC server on its own thread and runtime, as in a real server process.
struct ServerThread {
    addr: SocketAddr,
    stop: futures_channel::oneshot::Sender<bool>,
    thread: thread::JoinHandle<usize>,
}

impl ServerThread {
    fn start(tls: ClusterTls, addr: SocketAddr) -> Self {
        let (addr_sender, addr_receiver) = mpsc::channel();
        let (stop, stopped) = futures_channel::oneshot::channel::<bool>();
        let thread = thread::spawn(move || {
            let runtime = compio::runtime::Runtime::new().expect("runtime");
            runtime.block_on(async move {
                let handler = Rc::new(TestHandler::default());
                // A fixed port just released (the crashed server's) may not
                // be free yet: io_uring closes sockets asynchronously, and
                // a parallel test may hold it for a moment as its
                // ephemeral port. A restarting server would wait the same.
                let rebind_until = Instant::now() + REBIND_PATIENCE;
                let server = loop {
                    match RpcServer::bind(addr, &tls, handler.clone()).await {
                        Ok(server) => break server,
                        Err(e) if addr.port() != 0 && Instant::now() < rebind_until => {
                            eprintln!("rebinding {addr}: {e}; retrying");
                            compio::time::sleep(Duration::from_millis(50)).await;
                        }
                        Err(e) => panic!("server binds: {e:?}"),
                    }
                };
                addr_sender.send(server.local_addr()).expect("test waits for the address");
                let graceful = stopped.await.unwrap_or(true);
                if graceful {
                    server.shutdown().await;
                } else {
                    // Dropping the server only queues the close for the
                    // connection tasks, which never run again: the runtime
                    // ends with this future and drops the socket, as a
                    // crash would.
                    drop(server);
                }
                handler.calls.get()
            })
        });
        let addr = addr_receiver.recv().expect("server thread reports its address");
        Self { addr, stop, thread }
    }

    /// Shut down cleanly; returns the number of calls handled.
    fn stop(self) -> usize {
        let _ = self.stop.send(true);
        self.thread.join().expect("server thread")
    }

    fn crash(self) {
        let _ = self.stop.send(false);
        self.thread.join().expect("server thread");
    }
}

fn frame_bytes(method: u16, body: &[u8]) -> Vec<u8> {
    let header = FrameHeader { kind: FrameKind::Request, request_id: 42, deadline_ms: 5_000, method };
    frame::encode(&header, body).expect("encodes")
}

fn response_bytes() -> Vec<u8> {
    let header = FrameHeader { kind: FrameKind::Response, request_id: 42, deadline_ms: 0, method: ECHO };
    frame::encode(&header, b"not a request").expect("encodes")
}

async fn raw_endpoint(tls: &ClusterTls) -> Endpoint {
    quic::bind_client(localhost(), tls).await.expect("raw endpoint binds")
}

/// Send `bytes` on a new stream and decode the answer frame.
async fn raw_call(endpoint: &Endpoint, peer: SocketAddr, bytes: Vec<u8>) -> frame::Frame {
    let connection = endpoint.connect(peer, SERVER_NAME, None).expect("connects").await.expect("handshake");
    let (mut send, mut recv) = connection.open_bi_wait().await.expect("stream opens");
    // The server may stop reading early (oversized frame): not an error here.
    let _ = send.write_all(bytes).await;
    let _ = send.finish();
    let compio::BufResult(read, answer) = recv.read_to_end(Vec::new()).await;
    read.expect("answer read");
    frame::decode(answer).expect("answer is a frame")
}

/// Like [`raw_call`], expecting an error frame.
async fn raw_exchange(endpoint: &Endpoint, peer: SocketAddr, bytes: Vec<u8>) -> RemoteError {
    let answer = raw_call(endpoint, peer, bytes).await;
    assert_eq!(answer.header.kind, FrameKind::Error);
    RemoteError::decode(&answer.body).expect("error body")
}

/// Calls per second and MB/s on loopback. Opt-in (timings on a shared
/// machine are not test assertions): `CARAVAN_RPC_BENCH=1`.
#[test]
fn bench_throughput() {
    if std::env::var_os("CARAVAN_RPC_BENCH").is_none() {
        return;
    }
    let (_ca, tls) = dev_tls();
    let server = ServerThread::start(tls.clone(), localhost());
    let peer = server.addr;
    let runtime = compio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(async {
        let client = RpcClient::bind(localhost(), &tls).await.expect("client binds");
        assert!(client.call(peer, ECHO, Vec::new(), CALL_TIMEOUT).await.is_ok());
        for (body_len, in_flight, calls) in
            [(100, 1, 20_000), (100, 64, 100_000), (1 << 20, 1, 300), (1 << 20, 8, 600)]
        {
            let body = vec![0xabu8; body_len];
            let started = Instant::now();
            let ok = futures_util::stream::iter(0..calls)
                .map(|_| client.call(peer, ECHO, body.clone(), CALL_TIMEOUT))
                .buffer_unordered(in_flight)
                .filter(|result| std::future::ready(result.is_ok()))
                .count()
                .await;
            let seconds = started.elapsed().as_secs_f64();
            assert_eq!(ok, calls);
            let megabytes = (calls * body_len) as f64 / 1e6;
            eprintln!(
                "bench: body {body_len} B, {in_flight} in flight: {:.0} calls/s, {:.1} MB/s each way ({calls} calls in {seconds:.2} s)",
                calls as f64 / seconds,
                megabytes / seconds
            );
        }
    });
    server.stop();
}
