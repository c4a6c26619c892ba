//! The behaviour both bus implementations must share. Each test gets a fresh bus with the
//! topology of a unique prefix already ensured; see `contract_tests!`.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bus::{
    BatchHandler, Bus, BusError, Delivery, Incoming, OutboundMessage, Outcome, RequestHandler,
    Subscription, run_consumer,
};
use bytes::Bytes;
use common::TenantId;
use common::events::{ConsumerSpec, Stage, Topology, headers};
use futures::future::join_all;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

/// Generates one `#[tokio::test]` per contract test, each run through `$fixture`, an
/// `async fn(test)` that builds the bus, runs the test and cleans up.
#[macro_export]
macro_rules! contract_tests {
    ($fixture:path) => {
        $crate::contract_tests!(@each $fixture,
            publish_fetch_ack,
            duplicate_msg_id_is_stored_once,
            nak_with_delay_redelivers_later,
            unacked_lease_is_redelivered_after_ack_wait,
            term_is_never_redelivered,
            in_progress_extends_the_lease,
            oversized_message_is_rejected,
            subject_without_stream_has_no_responders,
            consume_loop_settles_every_outcome,
            consume_loop_is_exactly_once_effective_under_random_failures,
            consume_loop_sends_progress_and_finishes_batch_on_shutdown,
            request_reply_round_trip_and_no_responders,
            notices_reach_every_listener,
        );
    };
    (@each $fixture:path, $($name:ident),+ $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                $fixture(contract::$name).await;
            }
        )+
    };
}

/// A consumer of captured events with short timings for tests.
pub fn consumer(t: &Topology, name: &str, ack_wait: Duration) -> ConsumerSpec {
    ConsumerSpec {
        durable_name: name.to_owned(),
        ack_wait,
        max_deliver: 3,
        backoff: vec![Duration::from_millis(50), Duration::from_millis(100)],
        max_ack_pending: 1_000,
        max_batch: 16,
        ..t.embedder_consumer()
    }
}

pub fn captured_subject(t: &Topology) -> String {
    t.episode_subject(Stage::Captured, TenantId::new())
}

fn msg(subject: &str, id: &str, payload: &[u8]) -> OutboundMessage {
    OutboundMessage::new(subject, id, Bytes::copy_from_slice(payload))
}

/// Fetches until `n` deliveries arrived or `within` passed.
pub async fn fetch_n(sub: &mut Box<dyn Subscription>, n: usize, within: Duration) -> Vec<Delivery> {
    let deadline = Instant::now() + within;
    let mut out = Vec::new();
    while out.len() < n {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        out.extend(sub.fetch(n - out.len(), left).await.expect("fetch"));
    }
    out
}

/// Binds a fresh consumer on the dead-letter stream (deliver all) and returns what it holds.
pub async fn dead_letters(
    bus: &dyn Bus,
    t: &Topology,
    n: usize,
    within: Duration,
) -> Vec<Delivery> {
    let dlq = t.dead_letter_stream();
    let spec = ConsumerSpec {
        stream: dlq.name.clone(),
        durable_name: format!("inspect-{}", uuid::Uuid::new_v4().simple()),
        filter_subject: dlq.subjects[0].clone(),
        ..consumer(t, "unused", Duration::from_secs(30))
    };
    bus.ensure_consumer(&spec).await.expect("dlq consumer");
    let mut sub = bus.subscribe(&spec).await.expect("subscribe dlq");
    fetch_n(&mut sub, n, within).await
}

pub async fn publish_fetch_ack(bus: Arc<dyn Bus>, t: Topology) {
    let spec = consumer(&t, "c1", Duration::from_secs(5));
    bus.ensure_consumer(&spec).await.expect("consumer");
    let subject = captured_subject(&t);
    let mut sub = bus.subscribe(&spec).await.expect("subscribe");

    // A fetch that is already waiting wakes up promptly when a message is published.
    let waiter = tokio::spawn(async move {
        let start = Instant::now();
        let got = sub.fetch(10, Duration::from_secs(10)).await;
        (got, start.elapsed(), sub)
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let published_at = Instant::now();
    let ack = bus
        .publish(msg(&subject, "m1", b"{\"n\":1}").with_header(
            headers::TRACEPARENT,
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        ))
        .await
        .expect("publish");
    assert!(!ack.duplicate);
    assert_eq!(ack.stream, t.episodes_stream().name);
    let (got, waited, mut sub) = waiter.await.expect("join");
    let got = got.expect("fetch");
    let latency = published_at.elapsed();
    assert_eq!(got.len(), 1);
    assert!(
        latency < Duration::from_secs(1),
        "waiting fetch returned {latency:?} after the publish (waited {waited:?})"
    );
    let d = got.into_iter().next().expect("one");
    assert_eq!(d.subject, subject);
    assert_eq!(&d.payload[..], b"{\"n\":1}");
    assert_eq!(d.delivered, 1);
    assert_eq!(d.stream_sequence, ack.sequence);
    assert_eq!(d.msg_id(), Some("m1"));
    assert_eq!(
        d.header(headers::TRACEPARENT),
        Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")
    );
    d.ack().await.expect("ack");

    for i in 2..=3 {
        bus.publish(msg(&subject, &format!("m{i}"), format!("{i}").as_bytes()))
            .await
            .expect("publish");
    }
    let got = fetch_n(&mut sub, 2, Duration::from_secs(5)).await;
    let payloads: Vec<_> = got.iter().map(|d| d.payload.clone()).collect();
    assert_eq!(
        payloads,
        vec![Bytes::from("2"), Bytes::from("3")],
        "in order"
    );
    for d in got {
        d.ack().await.expect("ack");
    }
    let rest = sub
        .fetch(10, Duration::from_millis(300))
        .await
        .expect("fetch");
    assert!(
        rest.is_empty(),
        "acked messages are not redelivered: {rest:?}"
    );
}

pub async fn duplicate_msg_id_is_stored_once(bus: Arc<dyn Bus>, t: Topology) {
    let spec = consumer(&t, "dup", Duration::from_secs(5));
    bus.ensure_consumer(&spec).await.expect("consumer");
    let subject = captured_subject(&t);
    let first = bus
        .publish(msg(&subject, "same", b"a"))
        .await
        .expect("publish");
    let second = bus
        .publish(msg(&subject, "same", b"a"))
        .await
        .expect("publish");
    assert!(!first.duplicate);
    assert!(second.duplicate);
    let other = bus
        .publish(msg(&subject, "other", b"b"))
        .await
        .expect("publish");
    assert!(!other.duplicate);
    let mut sub = bus.subscribe(&spec).await.expect("subscribe");
    let got = fetch_n(&mut sub, 3, Duration::from_secs(2)).await;
    let payloads: Vec<_> = got.iter().map(|d| d.payload.clone()).collect();
    assert_eq!(payloads, vec![Bytes::from("a"), Bytes::from("b")]);
}

pub async fn nak_with_delay_redelivers_later(bus: Arc<dyn Bus>, t: Topology) {
    let spec = consumer(&t, "nak", Duration::from_secs(10));
    bus.ensure_consumer(&spec).await.expect("consumer");
    bus.publish(msg(&captured_subject(&t), "n1", b"x"))
        .await
        .expect("publish");
    let mut sub = bus.subscribe(&spec).await.expect("subscribe");
    let d = fetch_n(&mut sub, 1, Duration::from_secs(5))
        .await
        .pop()
        .expect("delivery");
    assert_eq!(d.delivered, 1);
    let naked_at = Instant::now();
    d.nak(Duration::from_millis(600)).await.expect("nak");
    let again = fetch_n(&mut sub, 1, Duration::from_secs(5))
        .await
        .pop()
        .expect("redelivery");
    let after = naked_at.elapsed();
    assert_eq!(again.delivered, 2);
    assert!(
        after >= Duration::from_millis(550),
        "redelivered after {after:?}"
    );
    assert!(
        after < Duration::from_secs(3),
        "redelivered after {after:?}"
    );
    again.ack().await.expect("ack");
}

pub async fn unacked_lease_is_redelivered_after_ack_wait(bus: Arc<dyn Bus>, t: Topology) {
    let spec = consumer(&t, "lease", Duration::from_secs(1));
    bus.ensure_consumer(&spec).await.expect("consumer");
    bus.publish(msg(&captured_subject(&t), "l1", b"x"))
        .await
        .expect("publish");
    let mut sub = bus.subscribe(&spec).await.expect("subscribe");
    let d = fetch_n(&mut sub, 1, Duration::from_secs(5))
        .await
        .pop()
        .expect("delivery");
    let leased_at = Instant::now();
    drop(d); // never settled, like a crashed worker
    let again = fetch_n(&mut sub, 1, Duration::from_secs(5))
        .await
        .pop()
        .expect("redelivery");
    let after = leased_at.elapsed();
    assert_eq!(again.delivered, 2);
    assert!(
        after >= Duration::from_millis(900),
        "redelivered after {after:?}"
    );
    again.ack().await.expect("ack");
}

pub async fn term_is_never_redelivered(bus: Arc<dyn Bus>, t: Topology) {
    let spec = consumer(&t, "term", Duration::from_secs(1));
    bus.ensure_consumer(&spec).await.expect("consumer");
    bus.publish(msg(&captured_subject(&t), "t1", b"x"))
        .await
        .expect("publish");
    let mut sub = bus.subscribe(&spec).await.expect("subscribe");
    let d = fetch_n(&mut sub, 1, Duration::from_secs(5))
        .await
        .pop()
        .expect("delivery");
    d.term().await.expect("term");
    let rest = sub
        .fetch(10, Duration::from_millis(2500))
        .await
        .expect("fetch");
    assert!(rest.is_empty(), "termed message came back: {rest:?}");
}

pub async fn in_progress_extends_the_lease(bus: Arc<dyn Bus>, t: Topology) {
    let spec = consumer(&t, "progress", Duration::from_secs(1));
    bus.ensure_consumer(&spec).await.expect("consumer");
    bus.publish(msg(&captured_subject(&t), "p1", b"x"))
        .await
        .expect("publish");
    let mut sub = bus.subscribe(&spec).await.expect("subscribe");
    let d = fetch_n(&mut sub, 1, Duration::from_secs(5))
        .await
        .pop()
        .expect("delivery");
    for _ in 0..6 {
        tokio::time::sleep(Duration::from_millis(350)).await;
        d.in_progress().await.expect("progress");
    }
    // 2.1 s > ack_wait have passed: without progress acks it would be deliverable now.
    let mut other = bus.subscribe(&spec).await.expect("subscribe");
    let stolen = other
        .fetch(10, Duration::from_millis(200))
        .await
        .expect("fetch");
    assert!(stolen.is_empty(), "lease was not extended: {stolen:?}");
    d.ack().await.expect("ack");
}

pub async fn oversized_message_is_rejected(bus: Arc<dyn Bus>, t: Topology) {
    let max = bus.max_payload();
    assert!(max >= 1024 * 1024, "max_payload {max}");
    let big = OutboundMessage::new(
        captured_subject(&t),
        "big",
        Bytes::from(vec![b'x'; max + 1]),
    );
    match bus.publish(big).await {
        Err(BusError::PayloadTooLarge { size, max: m }) => {
            assert!(size > max);
            assert_eq!(m, max);
        }
        other => panic!("expected PayloadTooLarge, got {other:?}"),
    }
}

pub async fn subject_without_stream_has_no_responders(bus: Arc<dyn Bus>, t: Topology) {
    let subject = format!("{}.v1.nowhere.x", t.prefix());
    match bus.publish(msg(&subject, "x", b"x")).await {
        Err(BusError::NoResponders(s)) => assert_eq!(s, subject),
        other => panic!("expected NoResponders, got {other:?}"),
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TestEvent {
    pub id: String,
    pub action: String,
}

fn event(subject: &str, id: &str, action: &str) -> OutboundMessage {
    let payload = serde_json::to_vec(&TestEvent {
        id: id.to_owned(),
        action: action.to_owned(),
    })
    .expect("json");
    OutboundMessage::new(subject, id, Bytes::from(payload))
        .with_header(headers::EVENT_TYPE, "test.event")
}

/// Does what each event's `action` says.
#[derive(Default)]
struct ScriptedHandler {
    calls: Mutex<Vec<(String, u32)>>,
    acked: Mutex<Vec<String>>,
}

#[async_trait]
impl BatchHandler for ScriptedHandler {
    type Event = TestEvent;

    async fn handle(&self, batch: Vec<Incoming<TestEvent>>) -> Vec<Outcome> {
        batch
            .into_iter()
            .map(|m| {
                self.calls
                    .lock()
                    .expect("lock")
                    .push((m.event.id.clone(), m.delivered));
                let outcome = match m.event.action.as_str() {
                    "retry" => Outcome::Retry("backend down".to_owned()),
                    "reject" => Outcome::Reject("invalid episode: no goal".to_owned()),
                    "flaky" if m.delivered < 2 => Outcome::Retry("first try fails".to_owned()),
                    _ => Outcome::Ack,
                };
                if outcome == Outcome::Ack {
                    self.acked.lock().expect("lock").push(m.event.id);
                }
                outcome
            })
            .collect()
    }
}

async fn eventually(what: &str, within: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub async fn consume_loop_settles_every_outcome(bus: Arc<dyn Bus>, t: Topology) {
    let spec = consumer(&t, "loop", Duration::from_secs(5));
    bus.ensure_consumer(&spec).await.expect("consumer");
    let subject = captured_subject(&t);
    for (id, action) in [
        ("e-ack", "ack"),
        ("e-retry", "retry"),
        ("e-reject", "reject"),
        ("e-flaky", "flaky"),
    ] {
        bus.publish(event(&subject, id, action))
            .await
            .expect("publish");
    }
    bus.publish(msg(&subject, "e-poison", b"{not json"))
        .await
        .expect("publish");

    let handler = Arc::new(ScriptedHandler::default());
    let shutdown = CancellationToken::new();
    let task = {
        let (bus, t, spec, handler, shutdown) = (
            Arc::clone(&bus),
            t.clone(),
            spec.clone(),
            Arc::clone(&handler),
            shutdown.clone(),
        );
        tokio::spawn(async move { run_consumer(bus, &t, &spec, handler, shutdown).await })
    };

    let dlq = dead_letters(&*bus, &t, 3, Duration::from_secs(15)).await;
    eventually("acks", Duration::from_secs(10), || {
        handler.acked.lock().expect("lock").len() == 2
    })
    .await;
    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .expect("loop stops on shutdown")
        .expect("join")
        .expect("loop result");

    let mut acked = handler.acked.lock().expect("lock").clone();
    acked.sort();
    assert_eq!(acked, vec!["e-ack".to_owned(), "e-flaky".to_owned()]);
    let calls = handler.calls.lock().expect("lock").clone();
    let retries: Vec<u32> = calls
        .iter()
        .filter(|(id, _)| id == "e-retry")
        .map(|(_, n)| *n)
        .collect();
    assert_eq!(retries, vec![1, 2, 3], "retried up to max_deliver");
    assert!(
        !calls.iter().any(|(id, _)| id == "e-poison"),
        "poison never reaches the handler"
    );
    assert_eq!(calls.iter().filter(|(id, _)| id == "e-reject").count(), 1);

    assert_eq!(dlq.len(), 3, "dead letters: {dlq:?}");
    let by_id: HashMap<String, &Delivery> = dlq
        .iter()
        .map(|d| {
            let original = d.msg_id().expect("dead letters carry a msg id");
            let id = original
                .strip_prefix("dlq.loop.")
                .expect("msg id derived from the original");
            (id.to_owned(), d)
        })
        .collect();
    for (id, reason, deliveries) in [
        ("e-retry", "gave up after 3 deliveries: backend down", "3"),
        ("e-reject", "invalid episode: no goal", "1"),
        ("e-poison", "undecodable payload", "1"),
    ] {
        let d = by_id
            .get(id)
            .unwrap_or_else(|| panic!("{id} not dead-lettered"));
        assert_eq!(d.subject, t.dead_letter_subject("loop", &subject));
        assert_eq!(
            d.header(headers::DLQ_ORIGINAL_SUBJECT),
            Some(subject.as_str())
        );
        let got_reason = d.header(headers::DLQ_REASON).expect("reason");
        assert!(
            got_reason.starts_with(reason),
            "{id}: reason {got_reason:?}"
        );
        assert_eq!(d.header(headers::DLQ_DELIVERIES), Some(deliveries), "{id}");
    }
    assert_eq!(&by_id["e-poison"].payload[..], b"{not json");
    assert_eq!(
        by_id["e-reject"].header(headers::EVENT_TYPE),
        Some("test.event")
    );

    // Everything was settled: nothing comes back on the main consumer.
    let mut sub = bus.subscribe(&spec).await.expect("subscribe");
    let rest = sub
        .fetch(10, Duration::from_millis(500))
        .await
        .expect("fetch");
    assert!(rest.is_empty(), "unsettled: {rest:?}");
}

/// Idempotent: applies each event's effect once, however often it is delivered; fails at
/// random before or after applying the effect.
#[derive(Default)]
struct FlakyIdempotentHandler {
    applied: Mutex<HashMap<String, u32>>,
    acked: Mutex<HashSet<String>>,
    calls: AtomicUsize,
}

#[async_trait]
impl BatchHandler for FlakyIdempotentHandler {
    type Event = TestEvent;

    async fn handle(&self, batch: Vec<Incoming<TestEvent>>) -> Vec<Outcome> {
        self.calls.fetch_add(batch.len(), Ordering::Relaxed);
        let mut out = Vec::with_capacity(batch.len());
        for m in batch {
            let roll: f64 = rand::random();
            if roll < 0.15 {
                out.push(Outcome::Retry("failed before the effect".to_owned()));
                continue;
            }
            self.applied
                .lock()
                .expect("lock")
                .entry(m.event.id.clone())
                .or_insert(1); // idempotent: applying again changes nothing
            if roll < 0.25 {
                // The effect is durable but the ack is lost.
                out.push(Outcome::Retry("failed after the effect".to_owned()));
                continue;
            }
            self.acked.lock().expect("lock").insert(m.event.id);
            out.push(Outcome::Ack);
        }
        out
    }
}

pub async fn consume_loop_is_exactly_once_effective_under_random_failures(
    bus: Arc<dyn Bus>,
    t: Topology,
) {
    const N: usize = 500;
    let spec = ConsumerSpec {
        max_deliver: 60,
        backoff: vec![Duration::from_millis(10), Duration::from_millis(30)],
        max_batch: 32,
        ..consumer(&t, "exactly-once", Duration::from_secs(2))
    };
    bus.ensure_consumer(&spec).await.expect("consumer");
    let handler = Arc::new(FlakyIdempotentHandler::default());
    let shutdown = CancellationToken::new();
    // Two competing loops on the same durable consumer.
    let loops: Vec<_> = (0..2)
        .map(|_| {
            let (bus, t, spec, handler, shutdown) = (
                Arc::clone(&bus),
                t.clone(),
                spec.clone(),
                Arc::clone(&handler),
                shutdown.clone(),
            );
            tokio::spawn(async move { run_consumer(bus, &t, &spec, handler, shutdown).await })
        })
        .collect();

    let subject = captured_subject(&t);
    let ids: Vec<String> = (0..N).map(|i| format!("ev-{i:04}")).collect();
    for chunk in ids.chunks(50) {
        let results = join_all(
            chunk
                .iter()
                .map(|id| bus.publish(event(&subject, id, "work"))),
        )
        .await;
        for r in results {
            assert!(!r.expect("publish").duplicate);
        }
    }
    // Publishing again changes nothing (de-duplicated).
    assert!(
        bus.publish(event(&subject, &ids[0], "work"))
            .await
            .expect("publish")
            .duplicate
    );

    eventually("every message acked", Duration::from_secs(90), || {
        handler.acked.lock().expect("lock").len() == N
    })
    .await;
    shutdown.cancel();
    for l in loops {
        tokio::time::timeout(Duration::from_secs(10), l)
            .await
            .expect("loop stops")
            .expect("join")
            .expect("loop result");
    }

    let applied = handler.applied.lock().expect("lock").clone();
    assert_eq!(applied.len(), N, "every message's effect is there");
    assert!(applied.values().all(|n| *n == 1));
    let expected: HashSet<String> = ids.into_iter().collect();
    assert_eq!(*handler.acked.lock().expect("lock"), expected);
    assert!(
        handler.calls.load(Ordering::Relaxed) > N,
        "some deliveries failed and were retried"
    );

    // All acks landed: nothing is redelivered after ack_wait, nothing was dead-lettered.
    let mut sub = bus.subscribe(&spec).await.expect("subscribe");
    let rest = sub
        .fetch(10, Duration::from_millis(2500))
        .await
        .expect("fetch");
    assert!(rest.is_empty(), "redelivered after all acks: {rest:?}");
    let dlq = dead_letters(&*bus, &t, 1, Duration::from_millis(300)).await;
    assert!(dlq.is_empty(), "dead-lettered: {dlq:?}");
}

/// Sleeps long (3 × ack_wait) before acking; counts calls.
struct SlowHandler {
    calls: AtomicUsize,
    started: tokio::sync::Notify,
}

#[async_trait]
impl BatchHandler for SlowHandler {
    type Event = TestEvent;

    async fn handle(&self, batch: Vec<Incoming<TestEvent>>) -> Vec<Outcome> {
        self.calls.fetch_add(batch.len(), Ordering::SeqCst);
        self.started.notify_one();
        tokio::time::sleep(Duration::from_secs(3)).await;
        vec![Outcome::Ack; batch.len()]
    }
}

pub async fn consume_loop_sends_progress_and_finishes_batch_on_shutdown(
    bus: Arc<dyn Bus>,
    t: Topology,
) {
    let spec = consumer(&t, "slow", Duration::from_secs(1));
    bus.ensure_consumer(&spec).await.expect("consumer");
    let handler = Arc::new(SlowHandler {
        calls: AtomicUsize::new(0),
        started: tokio::sync::Notify::new(),
    });
    let first_stop = CancellationToken::new();
    let second_stop = CancellationToken::new();
    let spawn_loop = |stop: CancellationToken| {
        let (bus, t, spec, handler) = (
            Arc::clone(&bus),
            t.clone(),
            spec.clone(),
            Arc::clone(&handler),
        );
        tokio::spawn(async move { run_consumer(bus, &t, &spec, handler, stop).await })
    };
    let first = spawn_loop(first_stop.clone());
    bus.publish(event(&captured_subject(&t), "slow-1", "work"))
        .await
        .expect("publish");
    tokio::time::timeout(Duration::from_secs(10), handler.started.notified())
        .await
        .expect("handler started");
    // A competing loop would get the message if the lease lapsed (no progress acks).
    let second = spawn_loop(second_stop.clone());
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let stop_requested = Instant::now();
    first_stop.cancel();
    tokio::time::timeout(Duration::from_secs(10), first)
        .await
        .expect("first loop stops")
        .expect("join")
        .expect("loop result");
    assert!(
        stop_requested.elapsed() >= Duration::from_millis(1000),
        "shutdown waited for the batch in hand"
    );
    // Give a lapsed lease time to be redelivered to the second loop.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    second_stop.cancel();
    tokio::time::timeout(Duration::from_secs(10), second)
        .await
        .expect("second loop stops")
        .expect("join")
        .expect("loop result");
    assert_eq!(
        handler.calls.load(Ordering::SeqCst),
        1,
        "handled exactly once"
    );
    let mut sub = bus.subscribe(&spec).await.expect("subscribe");
    let rest = sub
        .fetch(10, Duration::from_millis(1500))
        .await
        .expect("fetch");
    assert!(rest.is_empty(), "the batch in hand was acked: {rest:?}");
}

struct Upper;

#[async_trait]
impl RequestHandler for Upper {
    async fn handle(&self, payload: Bytes) -> Bytes {
        Bytes::from(payload.to_ascii_uppercase())
    }
}

struct Sleepy;

#[async_trait]
impl RequestHandler for Sleepy {
    async fn handle(&self, payload: Bytes) -> Bytes {
        tokio::time::sleep(Duration::from_secs(2)).await;
        payload
    }
}

pub async fn request_reply_round_trip_and_no_responders(bus: Arc<dyn Bus>, t: Topology) {
    let subject = t.embed_text_subject();
    let shutdown = CancellationToken::new();
    let mut servers = Vec::new();
    for _ in 0..2 {
        servers.push(
            bus.serve(
                &subject,
                &t.embed_queue_group(),
                Arc::new(Upper),
                shutdown.clone(),
            )
            .await
            .expect("serve"),
        );
    }
    tokio::time::sleep(Duration::from_millis(100)).await; // let the subscriptions reach NATS
    let replies = join_all((0..20).map(|i| {
        let bus = Arc::clone(&bus);
        let subject = subject.clone();
        async move {
            bus.request(
                &subject,
                Bytes::from(format!("hello {i}")),
                Duration::from_secs(5),
            )
            .await
        }
    }))
    .await;
    for (i, r) in replies.into_iter().enumerate() {
        assert_eq!(r.expect("reply"), Bytes::from(format!("HELLO {i}")));
    }

    let other = format!("{}.v1.rpc.nobody", t.prefix());
    match bus
        .request(&other, Bytes::from("x"), Duration::from_secs(2))
        .await
    {
        Err(BusError::NoResponders(s)) => assert_eq!(s, other),
        r => panic!("expected NoResponders, got {r:?}"),
    }

    let slow_subject = format!("{}.v1.rpc.slow", t.prefix());
    let slow_stop = CancellationToken::new();
    let slow = bus
        .serve(&slow_subject, "slow", Arc::new(Sleepy), slow_stop.clone())
        .await
        .expect("serve");
    tokio::time::sleep(Duration::from_millis(100)).await;
    let started = Instant::now();
    match bus
        .request(&slow_subject, Bytes::from("x"), Duration::from_millis(300))
        .await
    {
        Err(BusError::Timeout(_)) => assert!(started.elapsed() < Duration::from_secs(1)),
        r => panic!("expected Timeout, got {r:?}"),
    }
    slow_stop.cancel();

    shutdown.cancel();
    for s in servers.into_iter().chain([slow]) {
        tokio::time::timeout(Duration::from_secs(5), s)
            .await
            .expect("server stops")
            .expect("join");
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    match bus
        .request(&subject, Bytes::from("x"), Duration::from_secs(2))
        .await
    {
        Err(BusError::NoResponders(_)) => {}
        r => panic!("expected NoResponders after shutdown, got {r:?}"),
    }
}

/// Collects the notices it hears.
struct Collect(tokio::sync::mpsc::UnboundedSender<(String, Bytes)>);

#[async_trait::async_trait]
impl bus::NoticeHandler for Collect {
    async fn notice(&self, subject: &str, payload: Bytes) {
        let _ = self.0.send((subject.to_owned(), payload));
    }
}

pub async fn notices_reach_every_listener(bus: Arc<dyn Bus>, t: Topology) {
    let subject = t.auth_control_subject();
    let shutdown = CancellationToken::new();
    let mut receivers = Vec::new();
    let mut tasks = Vec::new();
    for _ in 0..2 {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        receivers.push(rx);
        tasks.push(
            bus.listen(&subject, Arc::new(Collect(tx)), shutdown.clone())
                .await
                .expect("listen"),
        );
    }
    tokio::time::sleep(Duration::from_millis(100)).await; // let the subscriptions reach NATS
    bus.notify(&subject, Bytes::from("one"))
        .await
        .expect("notify");
    bus.notify(&subject, Bytes::from("two"))
        .await
        .expect("notify");
    // Another subject is not heard.
    bus.notify(
        &format!("{}.v1.control.other", t.prefix()),
        Bytes::from("x"),
    )
    .await
    .expect("notify");
    for rx in &mut receivers {
        for want in ["one", "two"] {
            let got = tokio::time::timeout(Duration::from_secs(2), rx.recv())
                .await
                .expect("a notice within 2 s")
                .expect("open");
            assert_eq!(got, (subject.clone(), Bytes::from(want)));
        }
    }
    shutdown.cancel();
    for task in tasks {
        tokio::time::timeout(Duration::from_secs(2), task)
            .await
            .expect("the listener stops on shutdown")
            .expect("task");
    }
    for rx in &mut receivers {
        assert!(rx.try_recv().is_err(), "nothing else was heard");
    }
}
