//! Calls the retriever over request-reply with a deadline; the one mapping of its failures
//! to HTTP: no responder → 503, no answer in time → 504, the retriever's own
//! `unavailable` → 503.

use std::sync::Arc;
use std::time::Duration;

use bus::{Bus, BusError};
use bytes::Bytes;
use common::TenantId;
use common::events::Topology;
use common::query::{
    GateDecision, GateRequest, RetrieverCall, RetrieverErrorCode, RetrieverReply, SearchRequest,
    SearchResults,
};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::ApiError;

pub struct RetrieverClient {
    bus: Arc<dyn Bus>,
    topology: Topology,
    timeout: Duration,
}

impl RetrieverClient {
    pub fn new(bus: Arc<dyn Bus>, topology: Topology, timeout: Duration) -> Self {
        Self {
            bus,
            topology,
            timeout,
        }
    }

    pub async fn search(
        &self,
        tenant: TenantId,
        request: SearchRequest,
    ) -> Result<SearchResults, ApiError> {
        self.call(&self.topology.search_subject(), tenant, request)
            .await
    }

    pub async fn reflect(
        &self,
        tenant: TenantId,
        request: GateRequest,
    ) -> Result<GateDecision, ApiError> {
        self.call(&self.topology.reflect_subject(), tenant, request)
            .await
    }

    async fn call<Req: Serialize, Res: DeserializeOwned>(
        &self,
        subject: &str,
        tenant_id: TenantId,
        request: Req,
    ) -> Result<Res, ApiError> {
        let payload = serde_json::to_vec(&RetrieverCall { tenant_id, request })
            .map_err(|e| ApiError::Internal(format!("encoding the retriever call: {e}")))?;
        let reply = self
            .bus
            .request(subject, Bytes::from(payload), self.timeout)
            .await
            .map_err(|e| match e {
                BusError::Timeout(_) => ApiError::Timeout(format!("retriever: {e}")),
                BusError::PayloadTooLarge { max, .. } => ApiError::PayloadTooLarge { limit: max },
                other => ApiError::Unavailable(format!("retriever: {other}")),
            })?;
        match serde_json::from_slice::<RetrieverReply<Res>>(&reply) {
            Ok(RetrieverReply::Ok { result }) => Ok(result),
            Ok(RetrieverReply::Error { code, message }) => Err(match code {
                RetrieverErrorCode::Unavailable => {
                    ApiError::Unavailable(format!("retriever: {message}"))
                }
                RetrieverErrorCode::InvalidRequest | RetrieverErrorCode::Internal => {
                    ApiError::Internal(format!("retriever: {message}"))
                }
            }),
            Err(e) => Err(ApiError::Internal(format!(
                "malformed retriever reply: {e}"
            ))),
        }
    }
}
