//! Capture: a validated episode → redacted → recorded → published, durably, before the
//! client hears "accepted".
//!
//! Order of operations (each step is safe to repeat):
//! 1. redact every free-text field (nothing unredacted leaves this module);
//! 2. reserve the capture in the customer DB — with an `Idempotency-Key`, a retry finds the
//!    earlier reservation and reuses its episode id (a different body is refused, and so is
//!    a retry of an episode deleted since: it is not captured again);
//! 3. publish `episode.captured` with `Nats-Msg-Id = <episode>.captured` and wait for the
//!    PubAck — a re-publish of the same episode is de-duplicated by JetStream, and every
//!    downstream handler is idempotent, so a retried request stores nothing twice;
//! 4. answer 202.
//!
//! If the bus is unreachable the client gets 503 + `Retry-After`, never 202.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::sync::Arc;

use bus::{OutboundMessage, Publisher};
use common::events::{Envelope, EpisodeCaptured, RedactionCount, Topology};
use common::tenancy::Tier;
use common::{Episode, EpisodeId, TenantId, VectorId};
use db::{Db, NewCapture, Reservation};

use crate::quota::{QuotaState, Quotas};
use sha2::{Digest, Sha256};
use time::OffsetDateTime;

use crate::error::ApiError;

/// A client-chosen idempotency key: 1–255 visible ASCII characters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdempotencyKey(String);

impl IdempotencyKey {
    pub const HEADER: &'static str = "Idempotency-Key";

    pub fn parse(raw: &str) -> Result<Self, ApiError> {
        let ok = !raw.is_empty() && raw.len() <= 255 && raw.bytes().all(|b| b.is_ascii_graphic());
        if !ok {
            return Err(ApiError::validation(
                Self::HEADER,
                "invalid_format",
                "must be 1-255 visible ASCII characters",
            ));
        }
        Ok(Self(raw.to_owned()))
    }
}

/// The result of a capture.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Accepted {
    pub episode_id: EpisodeId,
    /// True when an earlier request with the same `Idempotency-Key` was replayed.
    pub replayed: bool,
    /// Where the customer stands against its quota (a new capture of a limited tier).
    pub quota: Option<QuotaState>,
}

/// Redacts every free-text field and reports what was found (kinds and counts only).
pub fn redact_episode(episode: Episode) -> (Episode, Vec<RedactionCount>) {
    let counts: RefCell<BTreeMap<String, u32>> = RefCell::new(BTreeMap::new());
    let redacted = episode.map_text(|text| {
        let result = redact::redact(text);
        let mut counts = counts.borrow_mut();
        for finding in &result.findings {
            *counts.entry(finding.kind.label().to_owned()).or_default() +=
                u32::try_from(finding.count).unwrap_or(u32::MAX);
        }
        result.text.into_owned()
    });
    let counts = counts
        .into_inner()
        .into_iter()
        .map(|(kind, count)| RedactionCount { kind, count })
        .collect();
    (redacted, counts)
}

/// Hands captures to the pipeline.
#[derive(Clone)]
pub struct CaptureService {
    db: Db,
    bus: Arc<dyn Publisher>,
    topology: Topology,
    quotas: Quotas,
}

impl CaptureService {
    pub fn new(db: Db, bus: Arc<dyn Publisher>, topology: Topology, quotas: Quotas) -> Self {
        Self {
            db,
            bus,
            topology,
            quotas,
        }
    }

    /// Accepts a capture. A new one is counted against the tier's quota (429 past it; the
    /// reservation is then forgotten); a replay is not counted again.
    pub async fn capture(
        &self,
        tenant: TenantId,
        tier: Tier,
        episode: Episode,
        idempotency_key: Option<IdempotencyKey>,
    ) -> Result<Accepted, ApiError> {
        let (episode, redactions) = redact_episode(episode);
        let request_hash = fingerprint(&episode)?;
        let fresh_id = EpisodeId::new();
        let reservation = self
            .db
            .reserve_capture(&NewCapture {
                tenant_id: tenant,
                episode_id: fresh_id,
                idempotency_key: idempotency_key.as_ref().map(|k| k.0.clone()),
                request_hash: request_hash.clone(),
            })
            .await?;
        let (episode_id, replayed) = match reservation {
            Reservation::Reserved => (fresh_id, false),
            Reservation::Existing {
                episode_id,
                request_hash: earlier,
            } => {
                if earlier != request_hash {
                    return Err(ApiError::IdempotencyMismatch);
                }
                if self.db.is_episode_deleted(tenant, episode_id).await? {
                    return Err(ApiError::EpisodeDeleted(episode_id));
                }
                (episode_id, true)
            }
        };
        let now = common::time_util::now_micros();
        let envelope = Envelope::new(
            tenant,
            EpisodeCaptured {
                episode_id,
                vector_id: VectorId::for_episode(tenant, episode_id),
                captured_at: capture_time(episode_id, now),
                episode,
                redactions,
            },
            now,
        );
        let message = OutboundMessage::episode_event(&self.topology, &envelope)
            .map_err(|e| ApiError::Internal(format!("encode event: {e}")))?;
        if message.wire_size() > self.bus.max_payload() {
            return Err(ApiError::PayloadTooLarge {
                limit: self.bus.max_payload(),
            });
        }
        let quota = if replayed {
            None
        } else {
            match self.quotas.admit(tenant, tier).await {
                Ok(q) => q,
                Err(e) => {
                    if let Err(undo) = self.db.unreserve_capture(tenant, episode_id).await {
                        tracing::warn!(error = %undo, "could not forget a refused reservation");
                    }
                    return Err(e);
                }
            }
        };
        if let Err(e) = self.bus.publish(message).await {
            // Without an Idempotency-Key the retry is a new capture: give the unit back.
            // With one, the retry is a replay and must not be counted again.
            if !replayed && idempotency_key.is_none() {
                self.quotas.release(tenant).await;
            }
            return Err(e.into());
        }
        Ok(Accepted {
            episode_id,
            replayed,
            quota,
        })
    }
}

/// The capture time of an episode is the time in its UUIDv7 (so a replayed capture keeps
/// its original time); `fallback` if the id carries none.
fn capture_time(id: EpisodeId, fallback: OffsetDateTime) -> OffsetDateTime {
    id.as_uuid()
        .get_timestamp()
        .map(|ts| {
            let (secs, nanos) = ts.to_unix();
            let micros = i64::try_from(secs)
                .unwrap_or(0)
                .saturating_mul(1_000_000)
                .saturating_add(i64::from(nanos / 1_000));
            common::time_util::from_unix_micros(micros)
        })
        .unwrap_or(fallback)
}

/// SHA-256 of the canonical JSON of the (redacted) episode: equal for byte-different but
/// equivalent retries.
fn fingerprint(episode: &Episode) -> Result<String, ApiError> {
    let canonical = serde_json::to_vec(episode)
        .map_err(|e| ApiError::Internal(format!("encode episode: {e}")))?;
    Ok(hex::encode(Sha256::digest(&canonical)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use common::EpisodeFields;

    #[test]
    fn redaction_covers_every_text_field_and_counts_kinds() {
        let secret = "AKIA4QX7RZ2LMN8PWT3K";
        let mut fields = EpisodeFields {
            goal: Some(format!("deploy with {secret}")),
            actions_taken: vec![format!("export AWS_ACCESS_KEY_ID={secret}")],
            error_trace: "mail j.avery@fastmail.com".into(),
            resolution: Some(format!("rotated {secret}")),
            tags: vec!["aws".into()],
            code_state_diff: Some(format!("+key = \"{secret}\"")),
            ..Default::default()
        };
        fields
            .environment
            .insert("AWS_ACCESS_KEY_ID".into(), secret.into());
        let episode = Episode::parse(fields).expect("valid");
        let (redacted, counts) = redact_episode(episode);
        assert!(redacted.texts().all(|t| !t.contains(secret)));
        assert!(
            redacted
                .texts()
                .all(|t| !t.contains("j.avery@fastmail.com"))
        );
        assert!(counts.iter().any(|c| c.kind == "email" && c.count == 1));
        assert!(counts.iter().map(|c| c.count).sum::<u32>() >= 6);
    }

    #[test]
    fn idempotency_keys_are_bounded() {
        assert!(IdempotencyKey::parse("abc-123").is_ok());
        assert!(IdempotencyKey::parse("").is_err());
        assert!(IdempotencyKey::parse("has space").is_err());
        assert!(IdempotencyKey::parse(&"x".repeat(256)).is_err());
    }

    #[test]
    fn capture_time_comes_from_the_id() {
        let before = common::time_util::now_micros();
        let id = EpisodeId::new();
        let t = capture_time(id, OffsetDateTime::UNIX_EPOCH);
        assert!((t - before).whole_seconds().abs() < 5);
    }

    #[test]
    fn fingerprint_is_stable() {
        let e = Episode::parse(EpisodeFields {
            goal: Some("g".into()),
            ..Default::default()
        })
        .expect("valid");
        assert_eq!(fingerprint(&e).ok(), fingerprint(&e.clone()).ok());
    }
}
