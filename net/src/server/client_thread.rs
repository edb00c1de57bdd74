//! The client agents' RPC handlers on a thread of their own. The QUIC
//! endpoint lives on the raft thread, but decoding requests, reading the
//! state and encoding allocation replies for thousands of nodes is most of
//! that thread's work under a fleet's load (profiled: more than openraft
//! and the FSM together), and it delays raft's heartbeats and commits. The
//! raft thread now hands each client call over and awaits its answer, so
//! it keeps only the transport.

use std::sync::Arc;

use futures_channel::{mpsc, oneshot};
use futures_util::StreamExt;

use super::client_rpc::ClientRpc;
use crate::rpc::frame::{ErrorCode, RemoteError};

/// One client call handed over.
struct ClientCall {
    method: u16,
    body: Vec<u8>,
    reply: oneshot::Sender<Result<Vec<u8>, RemoteError>>,
}

/// The sending side, held by the raft thread's RPC handler. Dropping it
/// ends the thread once its calls are answered.
pub(crate) struct ClientRpcThread {
    calls: mpsc::UnboundedSender<ClientCall>,
}

impl ClientRpcThread {
    /// Start the thread (named `client-rpc`) with its own compio runtime.
    /// Calls are not bounded here: the QUIC endpoint bounds the streams
    /// each connection may open, and the handlers bound their own queues
    /// (parked queries, pending writes) and answer OVERLOADED past them.
    pub(crate) fn start(client: Arc<ClientRpc>) -> std::io::Result<ClientRpcThread> {
        let (calls, mut incoming) = mpsc::unbounded::<ClientCall>();
        std::thread::Builder::new().name("client-rpc".into()).spawn(move || {
            let runtime = match crate::runtime::server_runtime() {
                Ok(runtime) => runtime,
                Err(e) => {
                    tracing::error!(error = %e, "client rpc thread: no runtime; client calls fail");
                    return;
                }
            };
            runtime.block_on(async move {
                while let Some(call) = incoming.next().await {
                    let client = client.clone();
                    compio::runtime::spawn(async move {
                        let answer = client.dispatch(call.method, call.body).await;
                        let _ = call.reply.send(answer);
                    })
                    .detach();
                }
            });
        })?;
        Ok(ClientRpcThread { calls })
    }

    /// Handle one call on the client thread and wait for its answer.
    pub(crate) async fn call(&self, method: u16, body: Vec<u8>) -> Result<Vec<u8>, RemoteError> {
        let (reply, answer) = oneshot::channel();
        self.calls.unbounded_send(ClientCall { method, body, reply }).map_err(|_| gone())?;
        answer.await.map_err(|_| gone())?
    }
}

fn gone() -> RemoteError {
    RemoteError::new(ErrorCode::INTERNAL, "the server is shutting down (its client rpc thread has stopped)")
}
