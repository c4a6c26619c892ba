//! Embedded durable bus for the standalone mode: one SQLite file, no servers.
//!
//! Every SQLite access runs on one dedicated thread that owns the connection (WAL,
//! `synchronous = FULL`: a returned `publish` survives `kill -9` and power loss). Publishing
//! stores the message and one delivery row per matching consumer in one transaction, then
//! wakes fetchers through a [`Notify`]; fetchers otherwise sleep exactly until the next
//! lease expiry or nak delay ends. Only one process may use a file at a time.

mod rpc;
mod schema;
mod store;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use bytes::Bytes;
use common::events::{ConsumerSpec, StreamSpec};
use tokio::sync::{Notify, oneshot};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use self::rpc::Rpc;
use self::store::{ConsumerDef, Store};
use crate::api::{
    AckHandle, Bus, Delivery, NoticeHandler, OutboundMessage, PublishAck, Publisher,
    RequestHandler, Subscription,
};
use crate::error::BusError;

/// Default largest message of the embedded bus: 8 MiB (screenshots travel inside events).
pub const DEFAULT_MAX_PAYLOAD: usize = 8 * 1024 * 1024;
/// How often expired messages and msg ids are removed.
const GC_INTERVAL: Duration = Duration::from_secs(60);
/// Longest a waiting fetch sleeps without re-checking (a safety net; wake-ups are exact).
const MAX_IDLE: Duration = Duration::from_secs(1);

/// Settings of [`EmbeddedBus`].
#[derive(Debug, Clone)]
pub struct EmbeddedBusConfig {
    /// Largest message (payload plus headers) accepted.
    pub max_payload: usize,
}

impl Default for EmbeddedBusConfig {
    fn default() -> Self {
        Self {
            max_payload: DEFAULT_MAX_PAYLOAD,
        }
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

type Job = Box<dyn FnOnce(&mut Store) + Send>;

/// The thread that owns the SQLite connection.
struct Worker {
    jobs: std::sync::mpsc::Sender<Job>,
}

impl Worker {
    async fn start(path: PathBuf) -> Result<Self, BusError> {
        let (jobs, queue) = std::sync::mpsc::channel::<Job>();
        let (opened_tx, opened) = oneshot::channel();
        std::thread::Builder::new()
            .name("embedded-bus".to_owned())
            .spawn(move || {
                let mut store = match Store::open(&path, now_ms()) {
                    Ok(store) => {
                        let _ = opened_tx.send(Ok(()));
                        store
                    }
                    Err(e) => {
                        let _ = opened_tx.send(Err(e));
                        return;
                    }
                };
                while let Ok(job) = queue.recv() {
                    job(&mut store);
                }
            })
            .map_err(|e| BusError::Storage(format!("cannot start the bus thread: {e}")))?;
        opened
            .await
            .map_err(|_| BusError::Storage("the bus thread died while opening".to_owned()))??;
        Ok(Self { jobs })
    }

    async fn call<R, F>(&self, f: F) -> Result<R, BusError>
    where
        R: Send + 'static,
        F: FnOnce(&mut Store) -> Result<R, BusError> + Send + 'static,
    {
        let (tx, rx) = oneshot::channel();
        self.jobs
            .send(Box::new(move |store: &mut Store| {
                let _ = tx.send(f(store));
            }))
            .map_err(|_| BusError::Unavailable("embedded bus is closed".to_owned()))?;
        rx.await
            .map_err(|_| BusError::Unavailable("embedded bus thread stopped".to_owned()))?
    }
}

struct Inner {
    worker: Worker,
    /// Woken whenever something may have become deliverable.
    notify: Notify,
    max_payload: usize,
    rpc: Rpc,
}

/// [`Bus`] in one SQLite file (standalone mode).
#[derive(Clone)]
pub struct EmbeddedBus {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for EmbeddedBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedBus")
            .field("max_payload", &self.inner.max_payload)
            .finish_non_exhaustive()
    }
}

impl EmbeddedBus {
    /// Opens (creating) the bus file. Messages leased by a previous process that did not
    /// settle them become deliverable at once. Must be called inside a Tokio runtime (starts
    /// the periodic clean-up task).
    pub async fn open(path: impl AsRef<Path>, config: EmbeddedBusConfig) -> Result<Self, BusError> {
        let worker = Worker::start(path.as_ref().to_path_buf()).await?;
        let inner = Arc::new(Inner {
            worker,
            notify: Notify::new(),
            max_payload: config.max_payload,
            rpc: Rpc::default(),
        });
        spawn_gc(Arc::downgrade(&inner));
        Ok(Self { inner })
    }

    /// Deletes messages older than their stream's `max_age` that no consumer still needs,
    /// and msg ids older than the duplicate window (also runs every minute). Returns the
    /// number of messages deleted.
    pub async fn collect_garbage(&self) -> Result<usize, BusError> {
        self.inner
            .worker
            .call(|s| s.collect_garbage(now_ms()))
            .await
    }

    /// Number of messages stored in a stream (acked messages are deleted at once).
    pub async fn stream_len(&self, stream: &str) -> Result<u64, BusError> {
        let stream = stream.to_owned();
        self.inner.worker.call(move |s| s.stream_len(&stream)).await
    }
}

fn spawn_gc(inner: Weak<Inner>) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(GC_INTERVAL);
        loop {
            tick.tick().await;
            let Some(inner) = inner.upgrade() else { return };
            match inner.worker.call(|s| s.collect_garbage(now_ms())).await {
                Ok(n) if n > 0 => debug!(deleted = n, "embedded bus clean-up"),
                Ok(_) => {}
                Err(e) => warn!(error = %e, "embedded bus clean-up failed"),
            }
        }
    });
}

#[async_trait]
impl Publisher for EmbeddedBus {
    async fn publish(&self, msg: OutboundMessage) -> Result<PublishAck, BusError> {
        msg.validate(self.inner.max_payload)?;
        let (ack, delivered) = self
            .inner
            .worker
            .call(move |s| s.publish(&msg, now_ms()))
            .await?;
        if delivered {
            self.inner.notify.notify_waiters();
        }
        Ok(ack)
    }

    fn max_payload(&self) -> usize {
        self.inner.max_payload
    }
}

#[async_trait]
impl Bus for EmbeddedBus {
    async fn ensure_stream(&self, spec: &StreamSpec) -> Result<(), BusError> {
        let spec = spec.clone();
        self.inner
            .worker
            .call(move |s| s.ensure_stream(&spec))
            .await
    }

    async fn ensure_consumer(&self, spec: &ConsumerSpec) -> Result<(), BusError> {
        let spec = spec.clone();
        self.inner
            .worker
            .call(move |s| s.ensure_consumer(&spec, now_ms()))
            .await?;
        self.inner.notify.notify_waiters();
        Ok(())
    }

    async fn subscribe(&self, spec: &ConsumerSpec) -> Result<Box<dyn Subscription>, BusError> {
        let (stream, name) = (spec.stream.clone(), spec.durable_name.clone());
        let consumer = self
            .inner
            .worker
            .call(move |s| s.consumer(&stream, &name))
            .await?;
        Ok(Box::new(EmbeddedSubscription {
            inner: Arc::clone(&self.inner),
            consumer: Arc::new(consumer),
        }))
    }

    async fn request(
        &self,
        subject: &str,
        payload: Bytes,
        timeout: Duration,
    ) -> Result<Bytes, BusError> {
        if payload.len() > self.inner.max_payload {
            return Err(BusError::PayloadTooLarge {
                size: payload.len(),
                max: self.inner.max_payload,
            });
        }
        self.inner.rpc.request(subject, payload, timeout).await
    }

    async fn serve(
        &self,
        subject: &str,
        queue_group: &str,
        handler: Arc<dyn RequestHandler>,
        shutdown: CancellationToken,
    ) -> Result<JoinHandle<()>, BusError> {
        self.inner
            .rpc
            .serve(subject, queue_group, handler, shutdown)
    }

    async fn notify(&self, subject: &str, payload: Bytes) -> Result<(), BusError> {
        if payload.len() > self.inner.max_payload {
            return Err(BusError::PayloadTooLarge {
                size: payload.len(),
                max: self.inner.max_payload,
            });
        }
        self.inner.rpc.notify(subject, payload)
    }

    async fn listen(
        &self,
        subject: &str,
        handler: Arc<dyn NoticeHandler>,
        shutdown: CancellationToken,
    ) -> Result<JoinHandle<()>, BusError> {
        self.inner.rpc.listen(subject, handler, shutdown)
    }

    async fn health(&self) -> Result<(), BusError> {
        self.inner.worker.call(|s| s.ping()).await
    }
}

struct EmbeddedSubscription {
    inner: Arc<Inner>,
    consumer: Arc<ConsumerDef>,
}

#[async_trait]
impl Subscription for EmbeddedSubscription {
    async fn fetch(&mut self, max: usize, wait: Duration) -> Result<Vec<Delivery>, BusError> {
        let deadline = tokio::time::Instant::now() + wait;
        let max = max.max(1);
        loop {
            // Register interest before looking, so a publish in between is not missed.
            let notified = self.inner.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();

            let consumer = Arc::clone(&self.consumer);
            let result = self
                .inner
                .worker
                .call(move |s| s.lease(&consumer, max, now_ms()))
                .await?;
            if !result.leased.is_empty() {
                return Ok(result
                    .leased
                    .into_iter()
                    .map(|l| {
                        Delivery::new(
                            l.subject,
                            l.headers,
                            Bytes::from(l.payload),
                            u32::try_from(l.delivered).unwrap_or(u32::MAX),
                            u64::try_from(l.seq).unwrap_or(0),
                            Box::new(EmbeddedAck {
                                inner: Arc::clone(&self.inner),
                                consumer: Arc::clone(&self.consumer),
                                seq: l.seq,
                                lease: l.lease,
                            }),
                        )
                    })
                    .collect());
            }
            let now = tokio::time::Instant::now();
            if now >= deadline {
                return Ok(Vec::new());
            }
            let mut wake = deadline.min(now + MAX_IDLE);
            if let Some(at) = result.next_visible_ms {
                let in_ms = u64::try_from(at.saturating_sub(now_ms())).unwrap_or(0) + 1;
                wake = wake.min(now + Duration::from_millis(in_ms));
            }
            tokio::select! {
                _ = &mut notified => {}
                _ = tokio::time::sleep_until(wake) => {}
            }
        }
    }
}

struct EmbeddedAck {
    inner: Arc<Inner>,
    consumer: Arc<ConsumerDef>,
    seq: i64,
    lease: i64,
}

impl EmbeddedAck {
    async fn settle(&self) -> Result<(), BusError> {
        let (stream, consumer, seq) = (
            self.consumer.stream.clone(),
            self.consumer.name.clone(),
            self.seq,
        );
        self.inner
            .worker
            .call(move |s| s.settle(&stream, &consumer, seq))
            .await?;
        // Room under max_ack_pending may have opened up.
        self.inner.notify.notify_waiters();
        Ok(())
    }

    async fn reschedule(&self, visible_ms: i64, keep_lease: bool) -> Result<bool, BusError> {
        let (stream, consumer, seq, lease) = (
            self.consumer.stream.clone(),
            self.consumer.name.clone(),
            self.seq,
            self.lease,
        );
        self.inner
            .worker
            .call(move |s| s.reschedule(&stream, &consumer, seq, lease, visible_ms, keep_lease))
            .await
    }
}

#[async_trait]
impl AckHandle for EmbeddedAck {
    async fn ack(&self) -> Result<(), BusError> {
        self.settle().await
    }

    async fn nak(&self, delay: Duration) -> Result<(), BusError> {
        let visible = now_ms().saturating_add(millis(delay));
        if !self.reschedule(visible, false).await? {
            debug!(seq = self.seq, "nak of a lease that has already expired");
        }
        self.inner.notify.notify_waiters();
        Ok(())
    }

    async fn term(&self) -> Result<(), BusError> {
        self.settle().await
    }

    async fn in_progress(&self) -> Result<(), BusError> {
        let visible = now_ms().saturating_add(self.consumer.ack_wait_ms);
        if !self.reschedule(visible, true).await? {
            debug!(seq = self.seq, "progress on a lease that is no longer ours");
        }
        Ok(())
    }
}
