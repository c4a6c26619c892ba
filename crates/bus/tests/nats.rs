//! NatsBus against the real NATS server on 127.0.0.1:4222 (override with `NATS_URL`).
//! Every test uses its own prefix (streams `T<random>_V1_*`) and deletes its streams.

mod contract;

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream::consumer::{AckPolicy, DeliverPolicy, PullConsumer};
use async_nats::jetstream::stream::{RetentionPolicy, StorageType};
use bus::{Bus, BusError, NatsBus, NatsConfig, OutboundMessage, Publisher, ensure_topology};
use bytes::Bytes;
use common::events::Topology;

fn url() -> String {
    std::env::var("NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".to_owned())
}

fn topology() -> Topology {
    let id = uuid::Uuid::new_v4().simple().to_string();
    Topology::new(&format!("t{}", &id[..12])).expect("valid prefix")
}

async fn connect() -> NatsBus {
    let bus = NatsBus::connect(NatsConfig {
        url: url(),
        name: "bus-tests".to_owned(),
        ..NatsConfig::default()
    })
    .await
    .expect("connect");
    let deadline = Instant::now() + Duration::from_secs(5);
    while bus.health().await.is_err() {
        assert!(
            Instant::now() < deadline,
            "NATS at {} is not reachable",
            url()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    bus
}

/// Runs `test` with a connected bus and an ensured topology, then deletes its streams
/// (also when the test panics).
async fn with_nats<F, Fut>(test: F)
where
    F: FnOnce(Arc<dyn Bus>, Topology) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let bus = connect().await;
    let t = topology();
    ensure_topology(&bus, &t).await.expect("topology");
    let outcome = tokio::spawn(test(Arc::new(bus.clone()), t.clone())).await;
    for stream in [t.episodes_stream().name, t.dead_letter_stream().name] {
        bus.delete_stream(&stream).await.expect("delete stream");
    }
    if let Err(e) = outcome {
        std::panic::resume_unwind(e.into_panic());
    }
}

contract_tests!(with_nats);

#[tokio::test]
async fn streams_and_consumers_follow_the_spec_and_ensure_is_idempotent() {
    with_nats(|bus, t| async move {
        ensure_topology(&*bus, &t).await.expect("again");
        let nats = connect().await;
        let js = async_nats::jetstream::new(nats.client().clone());
        let spec = t.episodes_stream();
        let mut stream = js.get_stream(&spec.name).await.expect("stream");
        let info = stream.info().await.expect("info");
        assert_eq!(info.config.subjects, spec.subjects);
        assert_eq!(info.config.storage, StorageType::File);
        assert_eq!(info.config.retention, RetentionPolicy::Limits);
        assert_eq!(info.config.max_age, spec.max_age);
        assert_eq!(info.config.duplicate_window, spec.duplicate_window);
        assert_eq!(info.config.num_replicas, 1);

        let c = t.embedder_consumer();
        let consumer: PullConsumer = stream
            .get_consumer(&c.durable_name)
            .await
            .expect("consumer");
        let config = &consumer.cached_info().config;
        assert_eq!(
            config.durable_name.as_deref(),
            Some(c.durable_name.as_str())
        );
        assert_eq!(config.filter_subject, c.filter_subject);
        assert_eq!(config.ack_policy, AckPolicy::Explicit);
        assert_eq!(config.deliver_policy, DeliverPolicy::All);
        assert_eq!(config.ack_wait, c.ack_wait);
        assert_eq!(config.max_ack_pending, 1_000);
        assert_eq!(
            config.max_deliver, -1,
            "the consume loop enforces max_deliver"
        );

        // Updating a setting in place works.
        let mut changed = c.clone();
        changed.ack_wait = Duration::from_secs(45);
        bus.ensure_consumer(&changed)
            .await
            .expect("update consumer");
        let info = stream
            .consumer_info(&c.durable_name)
            .await
            .expect("consumer info");
        assert_eq!(info.config.ack_wait, Duration::from_secs(45));

        let missing = common::events::ConsumerSpec {
            stream: "NO_SUCH_STREAM_X".to_owned(),
            ..c
        };
        assert!(matches!(
            bus.ensure_consumer(&missing).await,
            Err(BusError::NotFound(_))
        ));
        assert!(matches!(
            bus.subscribe(&missing).await,
            Err(BusError::NotFound(_))
        ));
    })
    .await;
}

#[tokio::test]
async fn nats_down_fails_fast_and_never_hangs() {
    // A port nobody listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port();
    let started = Instant::now();
    let bus = NatsBus::connect(NatsConfig {
        url: format!("nats://127.0.0.1:{port}"),
        publish_timeout: Duration::from_secs(2),
        request_timeout: Duration::from_secs(2),
        ..NatsConfig::default()
    })
    .await
    .expect("connect returns even though NATS is down");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "connect took {:?}",
        started.elapsed()
    );

    let t = topology();
    let started = Instant::now();
    let result = bus
        .publish(OutboundMessage::new(
            t.episode_subject(common::events::Stage::Captured, common::TenantId::new()),
            "m",
            Bytes::from("x"),
        ))
        .await;
    let took = started.elapsed();
    assert!(
        matches!(result, Err(BusError::Unavailable(_) | BusError::Timeout(_))),
        "{result:?}"
    );
    assert!(result.as_ref().is_err_and(BusError::is_transient));
    assert!(took < Duration::from_millis(2500), "publish took {took:?}");
    assert!(bus.health().await.is_err());
    assert!(ensure_topology(&bus, &t).await.is_err());
    assert!(bus.subscribe(&t.embedder_consumer()).await.is_err());
    assert!(
        bus.request("x.y", Bytes::new(), Duration::from_secs(1))
            .await
            .is_err()
    );
    assert!(bus.max_payload() > 0);
}

/// A private nats-server on its own port and store, killed on drop.
struct PrivateServer {
    bin: std::path::PathBuf,
    port: u16,
    store: tempfile::TempDir,
    child: Option<std::process::Child>,
}

impl PrivateServer {
    fn start() -> Option<Self> {
        let bin = std::env::var_os("NATS_SERVER_BIN")
            .map(std::path::PathBuf::from)
            .unwrap_or_else(|| "/usr/sbin/nats-server".into());
        if !bin.exists() {
            return None;
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .expect("bind")
            .local_addr()
            .expect("addr")
            .port();
        let mut server = Self {
            bin,
            port,
            store: tempfile::tempdir().expect("tempdir"),
            child: None,
        };
        server.spawn();
        Some(server)
    }

    fn spawn(&mut self) {
        let child = std::process::Command::new(&self.bin)
            .args([
                "-a",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-js",
                "-sd",
            ])
            .arg(self.store.path())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start nats-server");
        self.child = Some(child);
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }
}

impl Drop for PrivateServer {
    fn drop(&mut self) {
        self.kill();
    }
}

struct CountingHandler {
    seen: std::sync::Mutex<std::collections::HashSet<String>>,
}

#[async_trait::async_trait]
impl bus::BatchHandler for CountingHandler {
    type Event = contract::TestEvent;

    async fn handle(&self, batch: Vec<bus::Incoming<contract::TestEvent>>) -> Vec<bus::Outcome> {
        let mut seen = self.seen.lock().expect("lock");
        batch
            .into_iter()
            .map(|m| {
                seen.insert(m.event.id);
                bus::Outcome::Ack
            })
            .collect()
    }
}

async fn publish_event(
    bus: &NatsBus,
    subject: &str,
    id: &str,
) -> Result<bus::PublishAck, BusError> {
    let payload = serde_json::to_vec(&contract::TestEvent {
        id: id.to_owned(),
        action: "work".to_owned(),
    })
    .expect("json");
    bus.publish(OutboundMessage::new(subject, id, Bytes::from(payload)))
        .await
}

async fn wait_for(what: &str, within: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consume_loop_survives_a_nats_restart() {
    let Some(mut server) = PrivateServer::start() else {
        eprintln!("skipped: no nats-server binary (set NATS_SERVER_BIN)");
        return;
    };
    let nats = NatsBus::connect(NatsConfig {
        url: server.url(),
        publish_timeout: Duration::from_secs(2),
        request_timeout: Duration::from_secs(2),
        ..NatsConfig::default()
    })
    .await
    .expect("connect");
    wait_for("first connection", Duration::from_secs(10), || {
        nats.client().connection_state() == async_nats::connection::State::Connected
    })
    .await;
    let t = topology();
    ensure_topology(&nats, &t).await.expect("topology");
    let spec = contract::consumer(&t, "restart", Duration::from_secs(5));
    nats.ensure_consumer(&spec).await.expect("consumer");

    let handler = Arc::new(CountingHandler {
        seen: std::sync::Mutex::default(),
    });
    let shutdown = tokio_util::sync::CancellationToken::new();
    let consumer_loop = {
        let (bus, t, spec, handler, shutdown) = (
            Arc::new(nats.clone()) as Arc<dyn Bus>,
            t.clone(),
            spec.clone(),
            Arc::clone(&handler),
            shutdown.clone(),
        );
        tokio::spawn(async move { bus::run_consumer(bus, &t, &spec, handler, shutdown).await })
    };
    let subject = contract::captured_subject(&t);
    for i in 0..10 {
        publish_event(&nats, &subject, &format!("before-{i}"))
            .await
            .expect("publish");
    }
    wait_for("first messages", Duration::from_secs(10), || {
        handler.seen.lock().expect("lock").len() == 10
    })
    .await;

    server.kill();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let started = Instant::now();
    let down = publish_event(&nats, &subject, "while-down").await;
    assert!(
        matches!(down, Err(BusError::Unavailable(_) | BusError::Timeout(_))),
        "{down:?}"
    );
    assert!(started.elapsed() < Duration::from_millis(2500));
    tokio::time::sleep(Duration::from_secs(1)).await; // the loop sees fetch errors

    server.spawn();
    let deadline = Instant::now() + Duration::from_secs(30);
    for i in 0..10 {
        let id = format!("after-{i}");
        loop {
            match publish_event(&nats, &subject, &id).await {
                Ok(_) => break,
                Err(e) => {
                    assert!(Instant::now() < deadline, "NATS did not come back: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }
    wait_for(
        "messages after the restart",
        Duration::from_secs(30),
        || handler.seen.lock().expect("lock").len() == 20,
    )
    .await;
    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(10), consumer_loop)
        .await
        .expect("loop stops")
        .expect("join")
        .expect("loop result");
}
