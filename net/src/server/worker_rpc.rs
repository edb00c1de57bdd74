//! Scheduler workers on every server, as in Nomad: a follower's workers
//! dequeue evaluations from the leader's broker, schedule against their own
//! state store (waiting for it to reach the eval's index, the raft-sync
//! catch-up), and submit plans to the leader's plan queue, all over RPC.
//!
//! [`RoutingLeader`] is the workers' `LeaderServices`: the duties in this
//! process while this server leads, the leader's over RPC otherwise. Each
//! call is routed by who leads now; a delivery from a leader that has since
//! stepped down is void anyway (its broker is gone), so nothing is lost.

use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use caravan_engine::duties::DutiesLeader;
use caravan_engine::ids::EvalId;
use caravan_engine::model::{Evaluation, JobType, Plan, PlanResult};
use caravan_engine::state::Cancel;
use caravan_engine::worker::{Delivery, LeaderServices, ServiceError};

use super::handle::RaftHandle;
use crate::rpc::{BlockingRpcClient, RemoteError, RpcError};
use crate::wire::{decode_message, encode_message};

pub(crate) const EVAL_DEQUEUE: u16 = 30;
pub(crate) const EVAL_ACK: u16 = 31;
pub(crate) const PLAN_SUBMIT: u16 = 32;

/// Slack on top of a dequeue's long poll for the RPC itself.
const DEQUEUE_RPC_SLACK: Duration = Duration::from_secs(2);

/// How long a submitted plan may wait for the leader's applier: plans are
/// applied in priority order, so a busy queue can hold one for a while;
/// past this the worker nacks and the eval is retried.
const PLAN_RPC_TIMEOUT: Duration = Duration::from_secs(60);

/// Longest long poll a follower may ask for; the worker's own dequeue
/// timeout is well below.
const DEQUEUE_WAIT_MAX: Duration = Duration::from_secs(30);

#[derive(Debug, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub(crate) struct DequeueRequest {
    pub(crate) types: Vec<JobType>,
    pub(crate) wait_ms: u64,
}

#[derive(Debug, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub(crate) struct DequeueReply {
    /// The eval, its delivery token and the index to wait for.
    pub(crate) delivery: Option<(Evaluation, u64, u64)>,
}

#[derive(Debug, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub(crate) struct AckRequest {
    pub(crate) eval_id: EvalId,
    pub(crate) token: u64,
    pub(crate) nack: bool,
}

#[derive(Debug, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub(crate) struct PlanRequest {
    pub(crate) eval_id: EvalId,
    pub(crate) token: u64,
    pub(crate) plan: Plan,
}

/// What ack, nack and plan submission need of a delivery: the eval's id and
/// the token (the broker checks the token; nothing else is read).
fn probe(eval_id: EvalId, token: u64) -> Delivery {
    let key = caravan_engine::ids::JobKey::new("default", "");
    let eval = Evaluation::new(eval_id, &key, JobType::Service, 0, caravan_engine::model::TriggeredBy::JobRegister);
    Delivery { eval: Arc::new(eval), token, wait_index: 0 }
}

/// The delivery a follower's worker holds: the eval as the leader sent it.
fn delivery_from(eval: Evaluation, token: u64, wait_index: u64) -> Delivery {
    Delivery { eval: Arc::new(eval), token, wait_index }
}

/// The leader side: serve a follower's worker from this server's duties.
/// Blocking calls (a long-poll dequeue, a plan waiting for the applier)
/// run on compio's blocking pool, never on the raft thread.
pub(crate) async fn serve(
    services: &OnceLock<Arc<DutiesLeader>>,
    method: u16,
    body: Vec<u8>,
) -> Result<Vec<u8>, RemoteError> {
    let bad = |e: crate::wire::WireError| RemoteError::new(crate::rpc::frame::ErrorCode::BAD_FRAME, e.to_string());
    let failed = |e: String| RemoteError::new(super::rpc_methods::RAFT_FAILED, e);
    let Some(local) = services.get().cloned() else { return Err(failed("the server is starting".into())) };
    if !local.duties.is_active() {
        return Err(RemoteError::new(super::rpc_methods::NOT_LEADER, String::new()));
    }
    let join = |e: compio::runtime::JoinError| failed(format!("worker call panicked: {e:?}"));
    match method {
        EVAL_DEQUEUE => {
            let req: DequeueRequest = decode_message(&body).map_err(bad)?;
            let wait = Duration::from_millis(req.wait_ms).min(DEQUEUE_WAIT_MAX);
            let got = compio::runtime::spawn_blocking(move || local.dequeue(&req.types, wait, &Cancel::new()))
                .await
                .map_err(join)?
                .map_err(|e| failed(e.0))?;
            let delivery = got.map(|d| ((*d.eval).clone(), d.token, d.wait_index));
            encode_message(&DequeueReply { delivery }).map_err(bad)
        }
        EVAL_ACK => {
            let req: AckRequest = decode_message(&body).map_err(bad)?;
            let delivery = probe(req.eval_id, req.token);
            let result = if req.nack { local.nack(&delivery) } else { local.ack(&delivery) };
            result.map_err(|e| failed(e.0))?;
            Ok(Vec::new())
        }
        PLAN_SUBMIT => {
            let req: PlanRequest = decode_message(&body).map_err(bad)?;
            let result =
                compio::runtime::spawn_blocking(move || local.submit_plan(&probe(req.eval_id, req.token), req.plan))
                    .await
                    .map_err(join)?
                    .map_err(|e| failed(e.0))?;
            encode_message(&result).map_err(bad)
        }
        other => Err(RemoteError::unknown_method(other)),
    }
}

/// The workers' view of the leader, wherever it is.
#[derive(Debug)]
pub(crate) struct RoutingLeader {
    pub(crate) local: Arc<DutiesLeader>,
    pub(crate) raft: RaftHandle,
    pub(crate) client: BlockingRpcClient,
}

impl RoutingLeader {
    /// `None` while this server leads (use the local duties).
    fn remote_leader(&self) -> Result<Option<std::net::SocketAddr>, ServiceError> {
        if self.local.duties.is_active() {
            return Ok(None);
        }
        let view = self.raft.view();
        let (_, node) = view.leader_node().ok_or_else(|| ServiceError("no cluster leader".into()))?;
        if view.is_leader() {
            // Elected, duties not taken up yet: wait like any worker.
            return Err(ServiceError("this server is taking up leadership".into()));
        }
        node.rpc_addr.parse().map(Some).map_err(|_| ServiceError(format!("leader rpc address {:?}", node.rpc_addr)))
    }

    fn call(
        &self,
        addr: std::net::SocketAddr,
        method: u16,
        body: Vec<u8>,
        timeout: Duration,
    ) -> Result<Vec<u8>, ServiceError> {
        self.client.call(addr, method, body, timeout).map_err(|e| match e {
            RpcError::Remote(r) => ServiceError(format!("leader: {}", r.message)),
            other => ServiceError(other.to_string()),
        })
    }
}

impl LeaderServices for RoutingLeader {
    fn dequeue(&self, types: &[JobType], timeout: Duration, cancel: &Cancel) -> Result<Option<Delivery>, ServiceError> {
        let Some(addr) = self.remote_leader()? else { return self.local.dequeue(types, timeout, cancel) };
        let started = Instant::now();
        let body = encode_message(&DequeueRequest { types: types.to_vec(), wait_ms: timeout.as_millis() as u64 })
            .map_err(|e| ServiceError(e.to_string()))?;
        let reply = self.call(addr, EVAL_DEQUEUE, body, timeout + DEQUEUE_RPC_SLACK)?;
        let reply: DequeueReply = decode_message(&reply).map_err(|e| ServiceError(e.to_string()))?;
        tracing::trace!(elapsed = ?started.elapsed(), got = reply.delivery.is_some(), "remote dequeue");
        Ok(reply.delivery.map(|(eval, token, wait_index)| delivery_from(eval, token, wait_index)))
    }

    fn ack(&self, delivery: &Delivery) -> Result<(), ServiceError> {
        let Some(addr) = self.remote_leader()? else { return self.local.ack(delivery) };
        let body = encode_message(&AckRequest { eval_id: delivery.eval.id, token: delivery.token, nack: false })
            .map_err(|e| ServiceError(e.to_string()))?;
        self.call(addr, EVAL_ACK, body, DEQUEUE_RPC_SLACK).map(|_| ())
    }

    fn nack(&self, delivery: &Delivery) -> Result<(), ServiceError> {
        let Some(addr) = self.remote_leader()? else { return self.local.nack(delivery) };
        let body = encode_message(&AckRequest { eval_id: delivery.eval.id, token: delivery.token, nack: true })
            .map_err(|e| ServiceError(e.to_string()))?;
        self.call(addr, EVAL_ACK, body, DEQUEUE_RPC_SLACK).map(|_| ())
    }

    fn submit_plan(&self, delivery: &Delivery, plan: Plan) -> Result<PlanResult, ServiceError> {
        let Some(addr) = self.remote_leader()? else { return self.local.submit_plan(delivery, plan) };
        let body = encode_message(&PlanRequest { eval_id: delivery.eval.id, token: delivery.token, plan })
            .map_err(|e| ServiceError(e.to_string()))?;
        let reply = self.call(addr, PLAN_SUBMIT, body, PLAN_RPC_TIMEOUT)?;
        decode_message(&reply).map_err(|e| ServiceError(e.to_string()))
    }

    fn upsert_evals(&self, evals: Vec<Evaluation>) -> Result<u64, ServiceError> {
        // Through raft; the committer forwards to the leader when needed.
        self.local.upsert_evals(evals)
    }
}
