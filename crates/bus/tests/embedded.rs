//! EmbeddedBus on a real SQLite file in a temporary directory.

mod contract;

use std::future::Future;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use bus::{
    Bus, BusError, EmbeddedBus, EmbeddedBusConfig, OutboundMessage, Publisher, ensure_topology,
};
use bytes::Bytes;
use common::TenantId;
use common::events::{Stage, StreamSpec, Topology};

const CHILD_ENV: &str = "BUS_TEST_KILL_CHILD_DB";
const CHILD_PREFIX_ENV: &str = "BUS_TEST_KILL_CHILD_PREFIX";
const PUBLISHED: &str = "BUS-CHILD-PUBLISHED";

fn topology() -> Topology {
    let id = uuid::Uuid::new_v4().simple().to_string();
    Topology::new(&format!("t{}", &id[..12])).expect("valid prefix")
}

async fn open(path: &Path) -> EmbeddedBus {
    EmbeddedBus::open(path, EmbeddedBusConfig::default())
        .await
        .expect("open")
}

async fn with_embedded<F, Fut>(test: F)
where
    F: FnOnce(Arc<dyn Bus>, Topology) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let dir = tempfile::tempdir().expect("tempdir");
    let bus = open(&dir.path().join("bus.sqlite")).await;
    let t = topology();
    ensure_topology(&bus, &t).await.expect("topology");
    let outcome = tokio::spawn(test(Arc::new(bus), t)).await;
    if let Err(e) = outcome {
        std::panic::resume_unwind(e.into_panic());
    }
}

contract_tests!(with_embedded);

fn captured(t: &Topology, id: &str, body: &str) -> OutboundMessage {
    OutboundMessage::new(
        t.episode_subject(Stage::Captured, TenantId::new()),
        id,
        Bytes::from(body.to_owned()),
    )
}

#[tokio::test]
async fn data_survives_reopen_and_dedup_too() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("bus.sqlite");
    let t = topology();
    {
        let bus = open(&path).await;
        ensure_topology(&bus, &t).await.expect("topology");
        for i in 0..3 {
            bus.publish(captured(&t, &format!("m{i}"), &format!("{i}")))
                .await
                .expect("publish");
        }
    }
    let bus = open(&path).await;
    ensure_topology(&bus, &t)
        .await
        .expect("topology is idempotent");
    assert!(
        bus.publish(captured(&t, "m1", "1"))
            .await
            .expect("publish")
            .duplicate,
        "msg ids are remembered across reopen"
    );
    let mut sub = bus
        .subscribe(&t.embedder_consumer())
        .await
        .expect("subscribe");
    let got = contract::fetch_n(&mut sub, 3, Duration::from_secs(2)).await;
    let payloads: Vec<_> = got.iter().map(|d| d.payload.clone()).collect();
    assert_eq!(
        payloads,
        vec![Bytes::from("0"), Bytes::from("1"), Bytes::from("2")]
    );
    assert!(got.iter().all(|d| d.delivered == 1));
}

#[tokio::test]
async fn leases_of_a_dead_process_are_redelivered_at_once_on_open() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("bus.sqlite");
    let t = topology();
    {
        let bus = open(&path).await;
        ensure_topology(&bus, &t).await.expect("topology");
        bus.publish(captured(&t, "m", "x")).await.expect("publish");
        let mut sub = bus
            .subscribe(&t.embedder_consumer())
            .await
            .expect("subscribe");
        let got = contract::fetch_n(&mut sub, 1, Duration::from_secs(2)).await;
        assert_eq!(got.len(), 1);
        // Not settled; ack_wait is 30 s.
    }
    let bus = open(&path).await;
    let mut sub = bus
        .subscribe(&t.embedder_consumer())
        .await
        .expect("subscribe");
    let got = sub
        .fetch(10, Duration::from_millis(200))
        .await
        .expect("fetch");
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].delivered, 2);
}

/// Not a test of its own: the child process of `publish_survives_sigkill`.
#[tokio::test]
async fn sigkill_child() {
    let (Ok(path), Ok(prefix)) = (std::env::var(CHILD_ENV), std::env::var(CHILD_PREFIX_ENV)) else {
        return;
    };
    let t = Topology::new(&prefix).expect("prefix");
    let bus = open(Path::new(&path)).await;
    ensure_topology(&bus, &t).await.expect("topology");
    let ack = bus
        .publish(captured(&t, "durable-1", "survives kill -9"))
        .await
        .expect("publish");
    let mut out = std::io::stdout();
    writeln!(out, "\n{PUBLISHED} {}", ack.sequence).expect("stdout");
    out.flush().expect("flush");
    // Wait to be killed.
    tokio::time::sleep(Duration::from_secs(60)).await;
}

#[tokio::test]
async fn publish_survives_sigkill() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("bus.sqlite");
    let t = topology();
    let mut child = Command::new(std::env::current_exe().expect("test binary"))
        .args([
            "--exact",
            "sigkill_child",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, &path)
        .env(CHILD_PREFIX_ENV, t.prefix())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn child");
    let stdout = child.stdout.take().expect("stdout");
    let reader = tokio::task::spawn_blocking(move || {
        BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
            .find(|l| l.contains(PUBLISHED))
    });
    let line = tokio::time::timeout(Duration::from_secs(30), reader)
        .await
        .expect("child published in time")
        .expect("join")
        .expect("child reported the publish");
    child.kill().expect("SIGKILL"); // std's kill() is SIGKILL on Unix
    let status = child.wait().expect("wait");
    assert!(!status.success());

    let bus = open(&path).await;
    let mut sub = bus
        .subscribe(&t.embedder_consumer())
        .await
        .expect("subscribe");
    let got = contract::fetch_n(&mut sub, 1, Duration::from_secs(2)).await;
    assert_eq!(
        got.len(),
        1,
        "the published message survived kill -9 ({line})"
    );
    assert_eq!(&got[0].payload[..], b"survives kill -9");
    assert_eq!(got[0].msg_id(), Some("durable-1"));
}

#[tokio::test]
async fn acked_messages_are_deleted_and_unconsumed_ones_kept_until_max_age() {
    let dir = tempfile::tempdir().expect("tempdir");
    let bus = open(&dir.path().join("bus.sqlite")).await;
    let t = topology().with_retention(Duration::from_secs(1));
    ensure_topology(&bus, &t).await.expect("topology");
    let stream = t.episodes_stream().name;

    // `stored` has no consumer: kept for replay until max_age.
    bus.publish(OutboundMessage::new(
        t.episode_subject(Stage::Stored, TenantId::new()),
        "s1",
        Bytes::from("stored"),
    ))
    .await
    .expect("publish");
    bus.publish(captured(&t, "c1", "captured"))
        .await
        .expect("publish");
    assert_eq!(bus.stream_len(&stream).await.expect("len"), 2);

    let mut sub = bus
        .subscribe(&t.embedder_consumer())
        .await
        .expect("subscribe");
    let got = contract::fetch_n(&mut sub, 1, Duration::from_secs(2)).await;
    assert_eq!(got.len(), 1);
    for d in got {
        d.ack().await.expect("ack");
    }
    assert_eq!(
        bus.stream_len(&stream).await.expect("len"),
        1,
        "acked message deleted"
    );

    assert_eq!(
        bus.collect_garbage().await.expect("gc"),
        0,
        "younger than max_age"
    );
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(bus.collect_garbage().await.expect("gc"), 1);
    assert_eq!(bus.stream_len(&stream).await.expect("len"), 0);
}

#[tokio::test]
async fn new_consumer_gets_stored_messages_and_overlapping_streams_are_rejected() {
    let dir = tempfile::tempdir().expect("tempdir");
    let bus = open(&dir.path().join("bus.sqlite")).await;
    let t = topology();
    ensure_topology(&bus, &t).await.expect("topology");
    bus.publish(OutboundMessage::new(
        t.episode_subject(Stage::Stored, TenantId::new()),
        "s1",
        Bytes::from("stored"),
    ))
    .await
    .expect("publish");
    let late = common::events::ConsumerSpec {
        durable_name: "late".to_owned(),
        filter_subject: t.stage_filter(Stage::Stored),
        ..t.embedder_consumer()
    };
    bus.ensure_consumer(&late).await.expect("consumer");
    let mut sub = bus.subscribe(&late).await.expect("subscribe");
    assert_eq!(
        contract::fetch_n(&mut sub, 1, Duration::from_secs(1))
            .await
            .len(),
        1,
        "deliver policy all"
    );

    let overlapping = StreamSpec {
        name: "OTHER".to_owned(),
        subjects: vec![format!("{}.v1.episodes.captured.*", t.prefix())],
        ..t.episodes_stream()
    };
    assert!(matches!(
        bus.ensure_stream(&overlapping).await,
        Err(BusError::Protocol(_))
    ));
    let unknown = common::events::ConsumerSpec {
        stream: "NOPE".to_owned(),
        ..t.embedder_consumer()
    };
    assert!(matches!(
        bus.ensure_consumer(&unknown).await,
        Err(BusError::NotFound(_))
    ));
    assert!(matches!(
        bus.subscribe(&unknown).await,
        Err(BusError::NotFound(_))
    ));
    bus.health().await.expect("healthy");
}
