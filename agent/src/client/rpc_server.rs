//! [`ServerApi`] over the servers' QUIC RPC (`caravan_net::server::ServerClient`):
//! what a real client agent talks to.

use std::sync::Arc;
use std::time::Duration;

use caravan_engine::ids::NodeId;
use caravan_engine::model::{AllocClientUpdate, Allocation, Node};
use caravan_net::server::{ClientApiError, ServerClient};

use super::server_api::{ServerApi, ServerError};

#[derive(Debug)]
pub struct RpcServerApi {
    pub client: ServerClient,
}

fn map(node: Option<NodeId>, e: ClientApiError) -> ServerError {
    match e {
        ClientApiError::NodeNotFound(_) => match node {
            Some(id) => ServerError::NodeNotFound(id),
            None => ServerError::Unavailable(e.to_string()),
        },
        ClientApiError::Refused { .. } | ClientApiError::Encode(_) => ServerError::Rejected(e.to_string()),
        other => ServerError::Unavailable(other.to_string()),
    }
}

impl ServerApi for RpcServerApi {
    fn register_node(&self, node: &Node) -> Result<Duration, ServerError> {
        self.client.register_node(node).map_err(|e| map(None, e))
    }

    fn heartbeat(&self, node_id: NodeId) -> Result<Duration, ServerError> {
        self.client.heartbeat(node_id).map_err(|e| map(Some(node_id), e))
    }

    fn node_allocs(
        &self,
        node_id: NodeId,
        min_index: u64,
        wait: Duration,
    ) -> Result<(Vec<Allocation>, u64), ServerError> {
        let (allocs, index) = self.client.node_allocs(node_id, min_index, wait).map_err(|e| map(Some(node_id), e))?;
        Ok((allocs.into_iter().map(Arc::unwrap_or_clone).collect(), index))
    }

    fn update_allocs(&self, updates: Vec<AllocClientUpdate>) -> Result<(), ServerError> {
        self.client.update_allocs(updates).map(|_| ()).map_err(|e| map(None, e))
    }
}
