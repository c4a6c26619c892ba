//! Calls the retriever over request-reply with a deadline; the one mapping of its failures
//! to HTTP: no responder → 503, no answer in time → 504, the retriever's own
//! `unavailable` → 503.
//!
//! The result is passed through as the retriever encoded it (a `SearchResults` or a
//! `GateDecision`, see `common::query`): the gateway checks the envelope, not the episodes
//! inside, so a search costs one encoding, not three.

use std::sync::Arc;
use std::time::Duration;

use bus::{Bus, BusError};
use bytes::Bytes;
use common::TenantId;
use common::events::Topology;
use common::query::{GateRequest, RetrieverCall, RetrieverErrorCode, SearchRequest};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

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

    /// The `SearchResults` JSON.
    pub async fn search(
        &self,
        tenant: TenantId,
        request: SearchRequest,
    ) -> Result<Box<RawValue>, ApiError> {
        self.call(&self.topology.search_subject(), tenant, request)
            .await
    }

    /// The `GateDecision` JSON.
    pub async fn reflect(
        &self,
        tenant: TenantId,
        request: GateRequest,
    ) -> Result<Box<RawValue>, ApiError> {
        self.call(&self.topology.reflect_subject(), tenant, request)
            .await
    }

    async fn call<Req: Serialize>(
        &self,
        subject: &str,
        tenant_id: TenantId,
        request: Req,
    ) -> Result<Box<RawValue>, ApiError> {
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
        let decoded = serde_json::from_slice::<Reply>(&reply).map_err(|e| e.to_string());
        match decoded {
            Ok(Reply {
                status,
                result: Some(result),
                ..
            }) if status == "ok" => Ok(result),
            Ok(Reply {
                status,
                code: Some(code),
                message,
                ..
            }) if status == "error" => {
                let message = message.unwrap_or_default();
                Err(match code {
                    RetrieverErrorCode::Unavailable => {
                        ApiError::Unavailable(format!("retriever: {message}"))
                    }
                    RetrieverErrorCode::InvalidRequest | RetrieverErrorCode::Internal => {
                        ApiError::Internal(format!("retriever: {message}"))
                    }
                })
            }
            Ok(_) => Err(ApiError::Internal(
                "malformed retriever reply: unexpected status".to_owned(),
            )),
            Err(e) => Err(ApiError::Internal(format!(
                "malformed retriever reply: {e}"
            ))),
        }
    }
}

/// `common::query::RetrieverReply` with the result left encoded (a plain struct: serde
/// cannot hand a raw value through an internally tagged enum).
#[derive(Deserialize)]
struct Reply {
    status: String,
    #[serde(default)]
    result: Option<Box<RawValue>>,
    #[serde(default)]
    code: Option<RetrieverErrorCode>,
    #[serde(default)]
    message: Option<String>,
}
