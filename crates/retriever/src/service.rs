//! The NATS edge: request-reply responders for search and reflect (a queue group, so
//! replicas share the load). Decodes the call, runs the engine, encodes the reply — the
//! one mapping from [`RetrieveError`] to [`RetrieverErrorCode`].

use std::sync::Arc;

use async_trait::async_trait;
use bus::RequestHandler;
use bytes::Bytes;
use common::query::{
    GateRequest, RetrieverCall, RetrieverErrorCode, RetrieverReply, SearchRequest,
};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::engine::{Engine, RetrieveError};

fn code(e: &RetrieveError) -> RetrieverErrorCode {
    match e {
        RetrieveError::Invalid(_) => RetrieverErrorCode::InvalidRequest,
        RetrieveError::Embedding(_) | RetrieveError::Db(_) => RetrieverErrorCode::Unavailable,
        RetrieveError::Store(s) if s.is_transient() => RetrieverErrorCode::Unavailable,
        RetrieveError::Store(_) => RetrieverErrorCode::Internal,
    }
}

fn encode<T: Serialize>(reply: &RetrieverReply<T>) -> Bytes {
    serde_json::to_vec(reply)
        .unwrap_or_else(|_| {
            br#"{"status":"error","code":"internal","message":"could not encode the reply"}"#
                .to_vec()
        })
        .into()
}

async fn answer<Req, Res, F, Fut>(payload: &[u8], what: &'static str, run: F) -> Bytes
where
    Req: DeserializeOwned,
    Res: Serialize,
    F: FnOnce(RetrieverCall<Req>) -> Fut,
    Fut: std::future::Future<Output = Result<Res, RetrieveError>>,
{
    let call: RetrieverCall<Req> = match serde_json::from_slice(payload) {
        Ok(c) => c,
        Err(e) => {
            return encode::<Res>(&RetrieverReply::Error {
                code: RetrieverErrorCode::InvalidRequest,
                message: format!("malformed {what} call: {e}"),
            });
        }
    };
    let tenant = call.tenant_id;
    let started = std::time::Instant::now();
    match run(call).await {
        Ok(result) => {
            tracing::debug!(%tenant, what, took_us = started.elapsed().as_micros() as u64, "answered");
            encode(&RetrieverReply::Ok { result })
        }
        Err(e) => {
            tracing::warn!(%tenant, what, error = %e, "could not answer");
            encode::<Res>(&RetrieverReply::Error {
                code: code(&e),
                message: e.to_string(),
            })
        }
    }
}

/// Answers `RetrieverCall<SearchRequest>`.
pub struct SearchResponder(pub Arc<Engine>);

#[async_trait]
impl RequestHandler for SearchResponder {
    async fn handle(&self, payload: Bytes) -> Bytes {
        answer(
            &payload,
            "search",
            |call: RetrieverCall<SearchRequest>| async move {
                self.0.search(call.tenant_id, &call.request).await
            },
        )
        .await
    }
}

/// Answers `RetrieverCall<GateRequest>`.
pub struct ReflectResponder(pub Arc<Engine>);

#[async_trait]
impl RequestHandler for ReflectResponder {
    async fn handle(&self, payload: Bytes) -> Bytes {
        answer(
            &payload,
            "reflect",
            |call: RetrieverCall<GateRequest>| async move {
                self.0.reflect(call.tenant_id, &call.request).await
            },
        )
        .await
    }
}
