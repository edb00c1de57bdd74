//! One fleet thread's calls to the servers: the client RPC messages over an
//! async [`RpcClient`], with the retry rules of the agent's `ServerClient`
//! (follow `NOT_LEADER` to the leader, rotate servers on transport errors,
//! back off when overloaded), but without blocking a thread per call.

use std::cell::Cell;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;

use caravan_net::rpc::{ErrorCode, RpcClient, RpcError};
use caravan_net::server::{NODE_NOT_FOUND, NOT_LEADER, WRITE_FAILED};

/// Attempts per call before the node's own loop decides (as the agent's).
const ATTEMPTS_MAX: usize = 8;
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(3);

/// Why a call failed, as far as a node's loop cares.
#[derive(Debug)]
pub(super) enum CallError {
    /// Register (again) first.
    NodeNotFound,
    /// Anything else, after the retries (counted in `rpc_errors`).
    Failed,
}

/// The servers as one thread sees them: the list and which one it talks to.
#[derive(Debug)]
pub(super) struct Servers {
    list: Vec<SocketAddr>,
    current: Cell<usize>,
}

impl Servers {
    pub(super) fn new(list: Vec<SocketAddr>) -> Servers {
        assert!(!list.is_empty(), "a fleet needs at least one server");
        Servers { list, current: Cell::new(0) }
    }

    fn current(&self) -> SocketAddr {
        self.list[self.current.get()]
    }

    fn rotate(&self, failed: SocketAddr) {
        if self.current() == failed {
            self.current.set((self.current.get() + 1) % self.list.len());
        }
    }

    fn retarget(&self, leader: SocketAddr) {
        if let Some(at) = self.list.iter().position(|s| *s == leader) {
            self.current.set(at);
        }
    }
}

/// One call with retries; the reply's body.
pub(super) async fn call(
    client: &Rc<RpcClient>,
    servers: &Servers,
    method: u16,
    body: Vec<u8>,
    timeout: Duration,
) -> Result<Vec<u8>, CallError> {
    let mut backoff = BACKOFF_MIN;
    for _ in 0..ATTEMPTS_MAX {
        let server = servers.current();
        let error = match client.call(server, method, body.clone(), timeout).await {
            Ok(reply) => return Ok(reply),
            Err(e) => e,
        };
        match &error {
            RpcError::Remote(remote) if remote.code == NODE_NOT_FOUND => return Err(CallError::NodeNotFound),
            RpcError::Remote(remote) if remote.code == NOT_LEADER => match remote.message.parse::<SocketAddr>() {
                Ok(leader) if leader != server => {
                    servers.retarget(leader);
                    continue;
                }
                _ => servers.rotate(server),
            },
            RpcError::Remote(remote)
                if remote.code == ErrorCode::OVERLOADED || remote.code == ErrorCode::DEADLINE_EXCEEDED => {}
            RpcError::Remote(remote) if remote.code == WRITE_FAILED || remote.code == ErrorCode::INTERNAL => {
                servers.rotate(server);
            }
            RpcError::Remote(_) | RpcError::TooLarge { .. } | RpcError::Shutdown => {
                return Err(CallError::Failed);
            }
            RpcError::Unreachable { .. }
            | RpcError::Timeout { .. }
            | RpcError::ConnectionLost { .. }
            | RpcError::Protocol { .. } => servers.rotate(server),
        }
        compio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
    Err(CallError::Failed)
}
