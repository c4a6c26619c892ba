//! Synchronous storage of the embedded bus. Runs on the bus's own thread only.

use std::path::Path;
use std::time::Duration;

use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use diesel::sql_types::{BigInt, Text};
use diesel::sqlite::SqliteConnection;

use super::schema::{DDL, bus_consumers, bus_dedup, bus_deliveries, bus_messages, bus_streams};
use crate::api::{OutboundMessage, PublishAck};
use crate::error::BusError;
use crate::subject::{is_valid_pattern, subject_matches, subjects_overlap};
use common::events::{ConsumerSpec, StreamSpec, headers};

pub(super) fn storage(e: diesel::result::Error) -> BusError {
    BusError::Storage(e.to_string())
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

#[derive(Debug, Clone)]
struct StreamDef {
    name: String,
    subjects: Vec<String>,
    max_age_ms: i64,
    duplicate_window_ms: i64,
}

#[derive(Debug, Clone)]
pub(super) struct ConsumerDef {
    pub stream: String,
    pub name: String,
    pub filter_subject: String,
    pub ack_wait_ms: i64,
    pub max_ack_pending: i64,
}

/// One leased message.
#[derive(Debug)]
pub(super) struct Leased {
    pub seq: i64,
    pub subject: String,
    pub headers: Vec<(String, String)>,
    pub payload: Vec<u8>,
    pub delivered: i64,
    pub lease: i64,
}

/// The result of a lease attempt: what was leased, and when something else may become
/// deliverable (a lease expiring, a nak delay ending) in wall-clock milliseconds.
#[derive(Debug)]
pub(super) struct LeaseResult {
    pub leased: Vec<Leased>,
    pub next_visible_ms: Option<i64>,
}

pub(super) struct Store {
    conn: SqliteConnection,
    streams: Vec<StreamDef>,
    consumers: Vec<ConsumerDef>,
    next_lease: i64,
}

impl Store {
    /// Opens (creating) the database, and makes leases of a previous process deliverable
    /// at once: only one process uses the file, so those leases are dead.
    pub fn open(path: &Path, now_ms: i64) -> Result<Self, BusError> {
        let url = path
            .to_str()
            .ok_or_else(|| BusError::Storage(format!("non UTF-8 path {}", path.display())))?;
        let mut conn = SqliteConnection::establish(url)
            .map_err(|e| BusError::Storage(format!("cannot open {url}: {e}")))?;
        conn.batch_execute(
            "PRAGMA busy_timeout = 10000; PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL;",
        )
        .map_err(storage)?;
        conn.batch_execute(DDL).map_err(storage)?;
        diesel::update(bus_deliveries::table.filter(bus_deliveries::lease.is_not_null()))
            .set((
                bus_deliveries::lease.eq(None::<i64>),
                bus_deliveries::visible_ms.eq(now_ms),
            ))
            .execute(&mut conn)
            .map_err(storage)?;
        let mut store = Self {
            conn,
            streams: Vec::new(),
            consumers: Vec::new(),
            next_lease: now_ms.saturating_mul(1000),
        };
        store.reload()?;
        Ok(store)
    }

    fn reload(&mut self) -> Result<(), BusError> {
        let streams: Vec<(String, String, i64, i64)> = bus_streams::table
            .select((
                bus_streams::name,
                bus_streams::subjects,
                bus_streams::max_age_ms,
                bus_streams::duplicate_window_ms,
            ))
            .load(&mut self.conn)
            .map_err(storage)?;
        self.streams = streams
            .into_iter()
            .map(|(name, subjects, max_age_ms, duplicate_window_ms)| {
                let subjects = serde_json::from_str(&subjects).map_err(|e| {
                    BusError::Storage(format!("corrupt subjects of stream {name}: {e}"))
                })?;
                Ok(StreamDef {
                    name,
                    subjects,
                    max_age_ms,
                    duplicate_window_ms,
                })
            })
            .collect::<Result<_, BusError>>()?;
        let consumers: Vec<(String, String, String, i64, i64)> = bus_consumers::table
            .select((
                bus_consumers::stream,
                bus_consumers::name,
                bus_consumers::filter_subject,
                bus_consumers::ack_wait_ms,
                bus_consumers::max_ack_pending,
            ))
            .load(&mut self.conn)
            .map_err(storage)?;
        self.consumers = consumers
            .into_iter()
            .map(
                |(stream, name, filter_subject, ack_wait_ms, max_ack_pending)| ConsumerDef {
                    stream,
                    name,
                    filter_subject,
                    ack_wait_ms,
                    max_ack_pending,
                },
            )
            .collect();
        Ok(())
    }

    pub fn ping(&mut self) -> Result<(), BusError> {
        self.conn.batch_execute("SELECT 1").map_err(storage)
    }

    pub fn ensure_stream(&mut self, spec: &StreamSpec) -> Result<(), BusError> {
        if spec.name.is_empty()
            || spec.subjects.is_empty()
            || spec.subjects.iter().any(|s| !is_valid_pattern(s))
        {
            return Err(BusError::Protocol(format!(
                "invalid stream {:?} with subjects {:?}",
                spec.name, spec.subjects
            )));
        }
        for other in self.streams.iter().filter(|s| s.name != spec.name) {
            if let Some((a, b)) = spec.subjects.iter().find_map(|a| {
                other
                    .subjects
                    .iter()
                    .find(|b| subjects_overlap(a, b))
                    .map(|b| (a, b))
            }) {
                return Err(BusError::Protocol(format!(
                    "subjects of stream {} ({a}) overlap with stream {} ({b})",
                    spec.name, other.name
                )));
            }
        }
        let subjects = serde_json::to_string(&spec.subjects)
            .map_err(|e| BusError::Protocol(format!("cannot encode subjects: {e}")))?;
        let (max_age_ms, window_ms) = (millis(spec.max_age), millis(spec.duplicate_window));
        diesel::insert_into(bus_streams::table)
            .values((
                bus_streams::name.eq(&spec.name),
                bus_streams::subjects.eq(&subjects),
                bus_streams::max_age_ms.eq(max_age_ms),
                bus_streams::duplicate_window_ms.eq(window_ms),
                bus_streams::last_seq.eq(0),
            ))
            .on_conflict(bus_streams::name)
            .do_update()
            .set((
                bus_streams::subjects.eq(&subjects),
                bus_streams::max_age_ms.eq(max_age_ms),
                bus_streams::duplicate_window_ms.eq(window_ms),
            ))
            .execute(&mut self.conn)
            .map_err(storage)?;
        self.reload()
    }

    /// Creates or updates a consumer. A new consumer gets every stored message of its
    /// filter (deliver policy "all").
    pub fn ensure_consumer(&mut self, spec: &ConsumerSpec, now_ms: i64) -> Result<(), BusError> {
        if spec.durable_name.is_empty() || !is_valid_pattern(&spec.filter_subject) {
            return Err(BusError::Protocol(format!(
                "invalid consumer {:?} with filter {:?}",
                spec.durable_name, spec.filter_subject
            )));
        }
        if !self.streams.iter().any(|s| s.name == spec.stream) {
            return Err(BusError::NotFound(format!("stream {}", spec.stream)));
        }
        let existed = self.consumer(&spec.stream, &spec.durable_name).is_ok();
        let ack_wait_ms = millis(spec.ack_wait).max(1);
        let max_ack_pending = i64::try_from(spec.max_ack_pending)
            .unwrap_or(i64::MAX)
            .max(1);
        self.conn
            .immediate_transaction(|c| {
                diesel::replace_into(bus_consumers::table)
                    .values((
                        bus_consumers::stream.eq(&spec.stream),
                        bus_consumers::name.eq(&spec.durable_name),
                        bus_consumers::filter_subject.eq(&spec.filter_subject),
                        bus_consumers::ack_wait_ms.eq(ack_wait_ms),
                        bus_consumers::max_ack_pending.eq(max_ack_pending),
                    ))
                    .execute(c)?;
                if !existed {
                    let stored: Vec<(i64, String)> = bus_messages::table
                        .filter(bus_messages::stream.eq(&spec.stream))
                        .select((bus_messages::seq, bus_messages::subject))
                        .load(c)?;
                    for (seq, subject) in stored {
                        if subject_matches(&spec.filter_subject, &subject) {
                            diesel::insert_or_ignore_into(bus_deliveries::table)
                                .values((
                                    bus_deliveries::stream.eq(&spec.stream),
                                    bus_deliveries::consumer.eq(&spec.durable_name),
                                    bus_deliveries::seq.eq(seq),
                                    bus_deliveries::delivered.eq(0),
                                    bus_deliveries::visible_ms.eq(now_ms),
                                ))
                                .execute(c)?;
                        }
                    }
                }
                Ok::<_, diesel::result::Error>(())
            })
            .map_err(storage)?;
        self.reload()
    }

    pub fn consumer(&self, stream: &str, name: &str) -> Result<ConsumerDef, BusError> {
        self.consumers
            .iter()
            .find(|c| c.stream == stream && c.name == name)
            .cloned()
            .ok_or_else(|| BusError::NotFound(format!("consumer {name} on stream {stream}")))
    }

    /// Stores the message and a pending delivery for every consumer whose filter matches,
    /// in one transaction. Returns the ack and whether any consumer was given the message.
    pub fn publish(
        &mut self,
        msg: &OutboundMessage,
        now_ms: i64,
    ) -> Result<(PublishAck, bool), BusError> {
        let stream = self
            .streams
            .iter()
            .find(|s| s.subjects.iter().any(|p| subject_matches(p, &msg.subject)))
            .cloned()
            .ok_or_else(|| BusError::NoResponders(msg.subject.clone()))?;
        let consumers: Vec<String> = self
            .consumers
            .iter()
            .filter(|c| c.stream == stream.name && subject_matches(&c.filter_subject, &msg.subject))
            .map(|c| c.name.clone())
            .collect();
        let mut stored_headers: Vec<(String, String)> = msg
            .headers
            .iter()
            .filter(|(k, _)| !k.eq_ignore_ascii_case(headers::MSG_ID))
            .cloned()
            .collect();
        if !msg.msg_id.is_empty() {
            stored_headers.push((headers::MSG_ID.to_owned(), msg.msg_id.clone()));
        }
        let stored_headers = serde_json::to_string(&stored_headers)
            .map_err(|e| BusError::Protocol(format!("cannot encode headers: {e}")))?;

        self.conn
            .immediate_transaction(|c| {
                if !msg.msg_id.is_empty() {
                    let seen: Option<i64> = bus_dedup::table
                        .filter(bus_dedup::stream.eq(&stream.name))
                        .filter(bus_dedup::msg_id.eq(&msg.msg_id))
                        .filter(
                            bus_dedup::published_ms
                                .ge(now_ms.saturating_sub(stream.duplicate_window_ms)),
                        )
                        .select(bus_dedup::seq)
                        .first(c)
                        .optional()?;
                    if let Some(seq) = seen {
                        return Ok((ack(&stream.name, seq, true), false));
                    }
                }
                let last: i64 = bus_streams::table
                    .find(&stream.name)
                    .select(bus_streams::last_seq)
                    .first(c)?;
                let seq = last + 1;
                diesel::update(bus_streams::table.find(&stream.name))
                    .set(bus_streams::last_seq.eq(seq))
                    .execute(c)?;
                diesel::insert_into(bus_messages::table)
                    .values((
                        bus_messages::stream.eq(&stream.name),
                        bus_messages::seq.eq(seq),
                        bus_messages::subject.eq(&msg.subject),
                        bus_messages::headers.eq(&stored_headers),
                        bus_messages::payload.eq(msg.payload.as_ref()),
                        bus_messages::published_ms.eq(now_ms),
                    ))
                    .execute(c)?;
                if !msg.msg_id.is_empty() {
                    diesel::replace_into(bus_dedup::table)
                        .values((
                            bus_dedup::stream.eq(&stream.name),
                            bus_dedup::msg_id.eq(&msg.msg_id),
                            bus_dedup::seq.eq(seq),
                            bus_dedup::published_ms.eq(now_ms),
                        ))
                        .execute(c)?;
                }
                for consumer in &consumers {
                    diesel::insert_into(bus_deliveries::table)
                        .values((
                            bus_deliveries::stream.eq(&stream.name),
                            bus_deliveries::consumer.eq(consumer),
                            bus_deliveries::seq.eq(seq),
                            bus_deliveries::delivered.eq(0),
                            bus_deliveries::visible_ms.eq(now_ms),
                        ))
                        .execute(c)?;
                }
                Ok::<_, diesel::result::Error>((
                    ack(&stream.name, seq, false),
                    !consumers.is_empty(),
                ))
            })
            .map_err(storage)
    }

    /// Leases up to `max` deliverable messages of a consumer for its `ack_wait`.
    pub fn lease(
        &mut self,
        consumer: &ConsumerDef,
        max: usize,
        now_ms: i64,
    ) -> Result<LeaseResult, BusError> {
        let first_token = self.next_lease;
        let result = self
            .conn
            .immediate_transaction(|c| {
                let mine = bus_deliveries::stream
                    .eq(&consumer.stream)
                    .and(bus_deliveries::consumer.eq(&consumer.name));
                let in_flight: i64 = bus_deliveries::table
                    .filter(mine)
                    .filter(bus_deliveries::lease.is_not_null())
                    .filter(bus_deliveries::visible_ms.gt(now_ms))
                    .count()
                    .get_result(c)?;
                let room = (consumer.max_ack_pending - in_flight).max(0);
                let limit = room.min(i64::try_from(max).unwrap_or(i64::MAX));
                let due: Vec<(i64, i64)> = if limit > 0 {
                    bus_deliveries::table
                        .filter(mine)
                        .filter(bus_deliveries::visible_ms.le(now_ms))
                        .order(bus_deliveries::seq.asc())
                        .limit(limit)
                        .select((bus_deliveries::seq, bus_deliveries::delivered))
                        .load(c)?
                } else {
                    Vec::new()
                };
                let mut leased = Vec::with_capacity(due.len());
                let mut token = first_token;
                for (seq, delivered) in due {
                    token += 1;
                    diesel::update(bus_deliveries::table.find((
                        &consumer.stream,
                        &consumer.name,
                        seq,
                    )))
                    .set((
                        bus_deliveries::delivered.eq(delivered + 1),
                        bus_deliveries::visible_ms.eq(now_ms + consumer.ack_wait_ms),
                        bus_deliveries::lease.eq(Some(token)),
                    ))
                    .execute(c)?;
                    let message: Option<(String, String, Vec<u8>)> = bus_messages::table
                        .find((&consumer.stream, seq))
                        .select((
                            bus_messages::subject,
                            bus_messages::headers,
                            bus_messages::payload,
                        ))
                        .first(c)
                        .optional()?;
                    match message {
                        Some((subject, headers, payload)) => leased.push(Leased {
                            seq,
                            subject,
                            headers: serde_json::from_str(&headers).unwrap_or_default(),
                            payload,
                            delivered: delivered + 1,
                            lease: token,
                        }),
                        None => {
                            // The message is gone (cannot normally happen): drop the delivery.
                            diesel::delete(bus_deliveries::table.find((
                                &consumer.stream,
                                &consumer.name,
                                seq,
                            )))
                            .execute(c)?;
                        }
                    }
                }
                let next_visible_ms: Option<i64> = bus_deliveries::table
                    .filter(mine)
                    .filter(bus_deliveries::visible_ms.gt(now_ms))
                    .select(diesel::dsl::min(bus_deliveries::visible_ms))
                    .first(c)?;
                Ok::<_, diesel::result::Error>((
                    LeaseResult {
                        leased,
                        next_visible_ms,
                    },
                    token,
                ))
            })
            .map_err(storage)?;
        self.next_lease = result.1;
        Ok(result.0)
    }

    /// Ack or term: the consumer is done with the message; the message itself is deleted
    /// once no consumer still needs it.
    pub fn settle(&mut self, stream: &str, consumer: &str, seq: i64) -> Result<(), BusError> {
        self.conn
            .immediate_transaction(|c| {
                let deleted = diesel::delete(bus_deliveries::table.find((stream, consumer, seq)))
                    .execute(c)?;
                if deleted > 0 {
                    let remaining: i64 = bus_deliveries::table
                        .filter(bus_deliveries::stream.eq(stream))
                        .filter(bus_deliveries::seq.eq(seq))
                        .count()
                        .get_result(c)?;
                    if remaining == 0 {
                        diesel::delete(bus_messages::table.find((stream, seq))).execute(c)?;
                    }
                }
                Ok::<_, diesel::result::Error>(())
            })
            .map_err(storage)
    }

    /// Nak (`visible_ms` = now + delay, lease released) or progress (`keep_lease`:
    /// `visible_ms` = now + ack_wait). Ignored if the lease is no longer ours.
    pub fn reschedule(
        &mut self,
        stream: &str,
        consumer: &str,
        seq: i64,
        lease: i64,
        visible_ms: i64,
        keep_lease: bool,
    ) -> Result<bool, BusError> {
        let target = bus_deliveries::table
            .find((stream, consumer, seq))
            .filter(bus_deliveries::lease.eq(lease));
        let updated = if keep_lease {
            diesel::update(target)
                .set(bus_deliveries::visible_ms.eq(visible_ms))
                .execute(&mut self.conn)
        } else {
            diesel::update(target)
                .set((
                    bus_deliveries::visible_ms.eq(visible_ms),
                    bus_deliveries::lease.eq(None::<i64>),
                ))
                .execute(&mut self.conn)
        }
        .map_err(storage)?;
        Ok(updated > 0)
    }

    /// Forgets msg ids older than the duplicate window and deletes messages older than
    /// `max_age` that no consumer still needs. Returns the number of messages deleted.
    pub fn collect_garbage(&mut self, now_ms: i64) -> Result<usize, BusError> {
        let mut deleted = 0;
        for stream in self.streams.clone() {
            diesel::delete(
                bus_dedup::table
                    .filter(bus_dedup::stream.eq(&stream.name))
                    .filter(
                        bus_dedup::published_ms
                            .lt(now_ms.saturating_sub(stream.duplicate_window_ms)),
                    ),
            )
            .execute(&mut self.conn)
            .map_err(storage)?;
            deleted += diesel::sql_query(
                "DELETE FROM bus_messages WHERE stream = ?1 AND published_ms < ?2 \
                 AND NOT EXISTS (SELECT 1 FROM bus_deliveries d \
                                 WHERE d.stream = bus_messages.stream AND d.seq = bus_messages.seq)",
            )
            .bind::<Text, _>(&stream.name)
            .bind::<BigInt, _>(now_ms.saturating_sub(stream.max_age_ms))
            .execute(&mut self.conn)
            .map_err(storage)?;
        }
        Ok(deleted)
    }

    /// Messages currently stored in a stream.
    pub fn stream_len(&mut self, stream: &str) -> Result<u64, BusError> {
        let n: i64 = bus_messages::table
            .filter(bus_messages::stream.eq(stream))
            .count()
            .get_result(&mut self.conn)
            .map_err(storage)?;
        Ok(u64::try_from(n).unwrap_or(0))
    }
}

fn ack(stream: &str, seq: i64, duplicate: bool) -> PublishAck {
    PublishAck {
        stream: stream.to_owned(),
        sequence: u64::try_from(seq).unwrap_or(0),
        duplicate,
    }
}
