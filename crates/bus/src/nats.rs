//! NATS JetStream implementation of [`Bus`].

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::connection::State;
use async_nats::header::{HeaderMap, HeaderName, HeaderValue};
use async_nats::jetstream::ErrorCode;
use async_nats::jetstream::consumer::{AckPolicy, DeliverPolicy, PullConsumer, pull};
use async_nats::jetstream::context::{
    ConsumerInfoErrorKind, CreateStreamErrorKind, GetStreamErrorKind, PublishErrorKind,
};
use async_nats::jetstream::message::PublishMessage;
use async_nats::jetstream::stream::{
    ConsumerErrorKind, DiscardPolicy, RetentionPolicy, StorageType,
};
use async_nats::jetstream::{self, AckKind};
use async_nats::{Client, ConnectOptions, Event, RequestErrorKind};
use async_trait::async_trait;
use bytes::Bytes;
use common::events::{ConsumerSpec, StreamSpec, headers};
use futures::StreamExt;
use secrecy::{ExposeSecret, SecretString};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use crate::api::{
    AckHandle, Bus, Delivery, NoticeHandler, OutboundMessage, PublishAck, Publisher,
    RequestHandler, Subscription,
};
use crate::error::BusError;
use crate::subject::is_valid_pattern;

/// What NATS accepts by default when the server has not told us yet.
const FALLBACK_MAX_PAYLOAD: usize = 1024 * 1024;
/// Longest `connect` waits for the first connection before returning anyway.
const INITIAL_CONNECT_WAIT: Duration = Duration::from_secs(2);
/// Extra time a fetch waits beyond the pull request's expiry for the server's answer.
const FETCH_GRACE: Duration = Duration::from_secs(1);

/// How to authenticate to NATS (`{"user_password": {"user": .., "password": ..}}`,
/// `{"token": ..}` or `{"creds_file": "/path/x.creds"}`).
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum NatsCredentials {
    UserPassword {
        user: String,
        password: SecretString,
    },
    Token(SecretString),
    /// A `.creds` file (JWT + nkey seed).
    CredsFile(PathBuf),
}

/// Connection settings for [`NatsBus`] (deserialisable; durations as `"5s"`).
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NatsConfig {
    /// e.g. `nats://127.0.0.1:4222` (comma-separated for several servers).
    pub url: String,
    pub credentials: Option<NatsCredentials>,
    /// Upper bound of `publish` (PubAck included) and of ack confirmations.
    #[serde(with = "humantime_serde")]
    pub publish_timeout: Duration,
    /// Upper bound of JetStream API calls (stream/consumer management).
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    /// Connection name shown by the server (e.g. the service name).
    pub name: String,
}

impl Default for NatsConfig {
    fn default() -> Self {
        Self {
            url: "nats://127.0.0.1:4222".to_owned(),
            credentials: None,
            publish_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(5),
            name: "episodic".to_owned(),
        }
    }
}

/// [`Bus`] over NATS JetStream.
#[derive(Clone)]
pub struct NatsBus {
    client: Client,
    js: jetstream::Context,
    publish_timeout: Duration,
    request_timeout: Duration,
}

impl std::fmt::Debug for NatsBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsBus")
            .field("state", &self.client.connection_state())
            .finish_non_exhaustive()
    }
}

impl NatsBus {
    /// Connects, waiting at most `min(publish_timeout, 2 s)` for the first connection; returns
    /// `Ok` even if NATS is down (operations then fail fast with `Unavailable` until the
    /// connection is up) and reconnects forever in the background. Errors only for bad
    /// settings (unreadable credentials file, unparsable URL).
    pub async fn connect(config: NatsConfig) -> Result<Self, BusError> {
        let mut options = ConnectOptions::new()
            .name(&config.name)
            .retry_on_initial_connect()
            .max_reconnects(None)
            .connection_timeout(config.request_timeout)
            .request_timeout(Some(config.request_timeout))
            .event_callback(|event| async move {
                match event {
                    Event::Connected => info!("connected to NATS"),
                    Event::Disconnected => warn!("disconnected from NATS"),
                    Event::LameDuckMode => warn!("NATS server entered lame duck mode"),
                    Event::SlowConsumer(sid) => warn!(sid, "NATS slow consumer"),
                    other => debug!(event = %other, "NATS client event"),
                }
            });
        options = match config.credentials {
            None => options,
            Some(NatsCredentials::UserPassword { user, password }) => {
                options.user_and_password(user, password.expose_secret().to_owned())
            }
            Some(NatsCredentials::Token(token)) => options.token(token.expose_secret().to_owned()),
            Some(NatsCredentials::CredsFile(path)) => {
                options.credentials_file(&path).await.map_err(|e| {
                    BusError::Protocol(format!(
                        "cannot read NATS credentials file {}: {e}",
                        path.display()
                    ))
                })?
            }
        };
        let client = options
            .connect(config.url.as_str())
            .await
            .map_err(|e| BusError::Unavailable(format!("cannot connect to NATS: {e}")))?;
        let js = jetstream::ContextBuilder::new()
            .timeout(config.request_timeout)
            .build(client.clone());
        // Give the first connection a moment, so a service that starts together with NATS
        // does not answer its first requests with 503; never wait long.
        let deadline = Instant::now() + config.publish_timeout.min(INITIAL_CONNECT_WAIT);
        while client.connection_state() != State::Connected && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        if client.connection_state() != State::Connected {
            warn!(url = %config.url, "NATS not reachable yet; connecting in the background");
        }
        Ok(Self {
            client,
            js,
            publish_timeout: config.publish_timeout,
            request_timeout: config.request_timeout,
        })
    }

    /// The underlying client (e.g. for health details).
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Deletes a stream (tests and tooling). Ok if it did not exist.
    pub async fn delete_stream(&self, name: &str) -> Result<(), BusError> {
        self.ensure_connected()?;
        match self.js.delete_stream(name).await {
            Ok(_) => Ok(()),
            Err(e)
                if matches!(e.kind(), GetStreamErrorKind::JetStream(ref js)
                    if js.error_code() == ErrorCode::STREAM_NOT_FOUND) =>
            {
                Ok(())
            }
            Err(e) => Err(BusError::Protocol(format!(
                "cannot delete stream {name}: {e}"
            ))),
        }
    }

    fn ensure_connected(&self) -> Result<(), BusError> {
        match self.client.connection_state() {
            State::Connected => Ok(()),
            State::Pending | State::Disconnected => {
                Err(BusError::Unavailable("not connected to NATS".to_owned()))
            }
        }
    }

    async fn get_stream(&self, name: &str) -> Result<jetstream::stream::Stream, BusError> {
        self.js.get_stream(name).await.map_err(|e| match e.kind() {
            GetStreamErrorKind::JetStream(ref js)
                if js.error_code() == ErrorCode::STREAM_NOT_FOUND =>
            {
                BusError::NotFound(format!("stream {name}"))
            }
            GetStreamErrorKind::Request => {
                BusError::Unavailable(format!("cannot look up stream {name}: {e}"))
            }
            GetStreamErrorKind::EmptyName
            | GetStreamErrorKind::InvalidStreamName
            | GetStreamErrorKind::JetStream(_) => {
                BusError::Protocol(format!("cannot look up stream {name}: {e}"))
            }
        })
    }
}

fn header_map(msg: &OutboundMessage) -> Result<HeaderMap, BusError> {
    let mut map = HeaderMap::new();
    for (name, value) in &msg.headers {
        if name.eq_ignore_ascii_case(headers::MSG_ID) {
            continue;
        }
        let name: HeaderName = name
            .parse()
            .map_err(|_| BusError::Protocol(format!("invalid header name {name:?}")))?;
        let value: HeaderValue = value
            .parse()
            .map_err(|_| BusError::Protocol("invalid header value".to_owned()))?;
        map.append(name, value);
    }
    Ok(map)
}

fn headers_of(message: &async_nats::Message) -> Vec<(String, String)> {
    message
        .headers
        .as_ref()
        .map(|map| {
            map.iter()
                .flat_map(|(name, values)| {
                    values
                        .iter()
                        .map(move |v| (name.to_string(), v.as_str().to_owned()))
                })
                .collect()
        })
        .unwrap_or_default()
}

#[async_trait]
impl Publisher for NatsBus {
    async fn publish(&self, msg: OutboundMessage) -> Result<PublishAck, BusError> {
        msg.validate(self.max_payload())?;
        self.ensure_connected()?;
        let mut publish = PublishMessage::build()
            .payload(msg.payload.clone())
            .headers(header_map(&msg)?);
        if !msg.msg_id.is_empty() {
            publish = publish.message_id(&msg.msg_id);
        }
        let subject = msg.subject.clone();
        let attempt = async {
            let ack_future = self.js.send_publish(subject.clone(), publish).await?;
            ack_future.await
        };
        match tokio::time::timeout(self.publish_timeout, attempt).await {
            Err(_) => Err(BusError::Timeout(self.publish_timeout)),
            Ok(Ok(ack)) => Ok(PublishAck {
                stream: ack.stream,
                sequence: ack.sequence,
                duplicate: ack.duplicate,
            }),
            Ok(Err(e)) => Err(match e.kind() {
                PublishErrorKind::StreamNotFound => BusError::NoResponders(msg.subject),
                PublishErrorKind::TimedOut => BusError::Timeout(self.publish_timeout),
                PublishErrorKind::BrokenPipe | PublishErrorKind::MaxAckPending => {
                    BusError::Unavailable(format!("publish failed: {e}"))
                }
                PublishErrorKind::MaxPayloadExceeded => BusError::PayloadTooLarge {
                    size: msg.wire_size(),
                    max: self.max_payload(),
                },
                PublishErrorKind::WrongLastMessageId
                | PublishErrorKind::WrongLastSequence
                | PublishErrorKind::Other => BusError::Protocol(format!("publish failed: {e}")),
            }),
        }
    }

    fn max_payload(&self) -> usize {
        match self.client.server_info().max_payload {
            0 => FALLBACK_MAX_PAYLOAD,
            n => n,
        }
    }
}

#[async_trait]
impl Bus for NatsBus {
    async fn ensure_stream(&self, spec: &StreamSpec) -> Result<(), BusError> {
        if spec.subjects.iter().any(|s| !is_valid_pattern(s)) {
            return Err(BusError::Protocol(format!(
                "invalid subjects for stream {}: {:?}",
                spec.name, spec.subjects
            )));
        }
        self.ensure_connected()?;
        let config = jetstream::stream::Config {
            name: spec.name.clone(),
            subjects: spec.subjects.clone(),
            max_age: spec.max_age,
            duplicate_window: spec.duplicate_window,
            num_replicas: spec.replicas.max(1),
            storage: StorageType::File,
            retention: RetentionPolicy::Limits,
            discard: DiscardPolicy::Old,
            ..Default::default()
        };
        self.js
            .create_or_update_stream(config)
            .await
            .map(|_| ())
            .map_err(|e| match e.kind() {
                CreateStreamErrorKind::TimedOut => BusError::Timeout(self.request_timeout),
                CreateStreamErrorKind::JetStreamUnavailable => {
                    BusError::Unavailable(format!("cannot create stream {}: {e}", spec.name))
                }
                CreateStreamErrorKind::EmptyStreamName
                | CreateStreamErrorKind::InvalidStreamName
                | CreateStreamErrorKind::DomainAndExternalSet
                | CreateStreamErrorKind::JetStream(_)
                | CreateStreamErrorKind::Response
                | CreateStreamErrorKind::NotFound
                | CreateStreamErrorKind::ResponseParse => {
                    BusError::Protocol(format!("cannot create stream {}: {e}", spec.name))
                }
            })
    }

    async fn ensure_consumer(&self, spec: &ConsumerSpec) -> Result<(), BusError> {
        if !is_valid_pattern(&spec.filter_subject) {
            return Err(BusError::Protocol(format!(
                "invalid filter subject {:?}",
                spec.filter_subject
            )));
        }
        self.ensure_connected()?;
        let stream = self.get_stream(&spec.stream).await?;
        let config = pull::Config {
            durable_name: Some(spec.durable_name.clone()),
            filter_subject: spec.filter_subject.clone(),
            ack_policy: AckPolicy::Explicit,
            deliver_policy: DeliverPolicy::All,
            ack_wait: spec.ack_wait,
            // Unlimited on the server: run_consumer dead-letters after spec.max_deliver itself
            // (JetStream would silently stop delivering instead), and does the backoff with
            // nak(delay).
            max_deliver: -1,
            max_ack_pending: i64::try_from(spec.max_ack_pending).unwrap_or(i64::MAX),
            ..Default::default()
        };
        stream
            .create_consumer(config)
            .await
            .map(|_| ())
            .map_err(|e| consumer_error(&spec.durable_name, &e, self.request_timeout))
    }

    async fn subscribe(&self, spec: &ConsumerSpec) -> Result<Box<dyn Subscription>, BusError> {
        self.ensure_connected()?;
        let stream = self.get_stream(&spec.stream).await?;
        let name = &spec.durable_name;
        stream
            .consumer_info(name)
            .await
            .map_err(|e| match e.kind() {
                ConsumerInfoErrorKind::NotFound | ConsumerInfoErrorKind::StreamNotFound => {
                    BusError::NotFound(format!("consumer {name} on stream {}", spec.stream))
                }
                ConsumerInfoErrorKind::TimedOut => BusError::Timeout(self.request_timeout),
                ConsumerInfoErrorKind::Offline
                | ConsumerInfoErrorKind::Request
                | ConsumerInfoErrorKind::NoResponders => {
                    BusError::Unavailable(format!("consumer {name}: {e}"))
                }
                ConsumerInfoErrorKind::InvalidName | ConsumerInfoErrorKind::JetStream(_) => {
                    BusError::Protocol(format!("consumer {name}: {e}"))
                }
            })?;
        let consumer: PullConsumer = stream
            .get_consumer(name)
            .await
            .map_err(|e| BusError::Unavailable(format!("consumer {name}: {e}")))?;
        Ok(Box::new(NatsSubscription {
            client: self.client.clone(),
            consumer,
            op_timeout: self.publish_timeout,
        }))
    }

    async fn request(
        &self,
        subject: &str,
        payload: Bytes,
        timeout: Duration,
    ) -> Result<Bytes, BusError> {
        self.ensure_connected()?;
        let size = payload.len();
        let request = async_nats::Request::new()
            .payload(payload)
            .timeout(Some(timeout));
        let sent = self.client.send_request(subject.to_owned(), request);
        match tokio::time::timeout(timeout + Duration::from_millis(100), sent).await {
            Err(_) => Err(BusError::Timeout(timeout)),
            Ok(Ok(reply)) => Ok(reply.payload),
            Ok(Err(e)) => Err(match e.kind() {
                RequestErrorKind::NoResponders => BusError::NoResponders(subject.to_owned()),
                RequestErrorKind::TimedOut => BusError::Timeout(timeout),
                RequestErrorKind::InvalidSubject => {
                    BusError::Protocol(format!("invalid request subject {subject:?}"))
                }
                RequestErrorKind::MaxPayloadExceeded => BusError::PayloadTooLarge {
                    size,
                    max: self.max_payload(),
                },
                RequestErrorKind::Other => BusError::Unavailable(format!("request failed: {e}")),
            }),
        }
    }

    async fn notify(&self, subject: &str, payload: Bytes) -> Result<(), BusError> {
        self.ensure_connected()?;
        let size = payload.len();
        if size > self.max_payload() {
            return Err(BusError::PayloadTooLarge {
                size,
                max: self.max_payload(),
            });
        }
        self.client
            .publish(subject.to_owned(), payload)
            .await
            .map_err(|e| {
                BusError::Unavailable(format!("cannot publish a notice on {subject}: {e}"))
            })?;
        // Core publishes are buffered; a notice is only useful if it leaves now.
        self.client
            .flush()
            .await
            .map_err(|e| BusError::Unavailable(format!("cannot flush a notice on {subject}: {e}")))
    }

    async fn listen(
        &self,
        subject: &str,
        handler: Arc<dyn NoticeHandler>,
        shutdown: CancellationToken,
    ) -> Result<JoinHandle<()>, BusError> {
        let mut subscriber = self
            .client
            .subscribe(subject.to_owned())
            .await
            .map_err(|e| BusError::Unavailable(format!("cannot subscribe to {subject}: {e}")))?;
        Ok(tokio::spawn(async move {
            loop {
                let next = tokio::select! {
                    _ = shutdown.cancelled() => break,
                    next = subscriber.next() => next,
                };
                let Some(message) = next else { break };
                handler
                    .notice(message.subject.as_str(), message.payload)
                    .await;
            }
            if let Err(e) = subscriber.unsubscribe().await {
                debug!(error = %e, "unsubscribe failed");
            }
        }))
    }

    async fn serve(
        &self,
        subject: &str,
        queue_group: &str,
        handler: Arc<dyn RequestHandler>,
        shutdown: CancellationToken,
    ) -> Result<JoinHandle<()>, BusError> {
        let mut subscriber = self
            .client
            .queue_subscribe(subject.to_owned(), queue_group.to_owned())
            .await
            .map_err(|e| BusError::Unavailable(format!("cannot subscribe to {subject}: {e}")))?;
        let client = self.client.clone();
        let subject = subject.to_owned();
        Ok(tokio::spawn(async move {
            let tracker = TaskTracker::new();
            loop {
                let next = tokio::select! {
                    _ = shutdown.cancelled() => break,
                    next = subscriber.next() => next,
                };
                let Some(request) = next else { break };
                let Some(reply) = request.reply else {
                    debug!(subject = %subject, "request without reply subject ignored");
                    continue;
                };
                let handler = Arc::clone(&handler);
                let client = client.clone();
                tracker.spawn(async move {
                    let response = handler.handle(request.payload).await;
                    if let Err(e) = client.publish(reply, response).await {
                        warn!(error = %e, "cannot send reply");
                    }
                });
            }
            if let Err(e) = subscriber.unsubscribe().await {
                debug!(error = %e, "unsubscribe failed");
            }
            tracker.close();
            tracker.wait().await;
            if let Err(e) = client.flush().await {
                debug!(error = %e, "flush after serving failed");
            }
        }))
    }

    async fn health(&self) -> Result<(), BusError> {
        self.ensure_connected()
    }
}

fn consumer_error(
    name: &str,
    e: &async_nats::error::Error<ConsumerErrorKind>,
    timeout: Duration,
) -> BusError {
    match e.kind() {
        ConsumerErrorKind::JetStream(ref js)
            if js.error_code() == ErrorCode::CONSUMER_NOT_FOUND
                || js.error_code() == ErrorCode::STREAM_NOT_FOUND =>
        {
            BusError::NotFound(format!("consumer {name}"))
        }
        ConsumerErrorKind::TimedOut => BusError::Timeout(timeout),
        ConsumerErrorKind::Request => BusError::Unavailable(format!("consumer {name}: {e}")),
        ConsumerErrorKind::InvalidConsumerType
        | ConsumerErrorKind::InvalidName
        | ConsumerErrorKind::JetStream(_)
        | ConsumerErrorKind::Other => BusError::Protocol(format!("consumer {name}: {e}")),
    }
}

struct NatsSubscription {
    client: Client,
    consumer: PullConsumer,
    op_timeout: Duration,
}

#[async_trait]
impl Subscription for NatsSubscription {
    async fn fetch(&mut self, max: usize, wait: Duration) -> Result<Vec<Delivery>, BusError> {
        if self.client.connection_state() != State::Connected {
            return Err(BusError::Unavailable("not connected to NATS".to_owned()));
        }
        let max = max.max(1);
        // A "fetch" pull request (no_wait + expires): the server answers as soon as it has
        // messages, or when `wait` expires.
        let mut batch = self
            .consumer
            .fetch()
            .max_messages(max)
            .expires(wait)
            .messages()
            .await
            .map_err(|e| BusError::Unavailable(format!("pull request failed: {e}")))?;
        let deadline = Instant::now() + wait + FETCH_GRACE;
        let mut out = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let next = match tokio::time::timeout(left, batch.next()).await {
                Err(_) | Ok(None) => break,
                Ok(Some(next)) => next,
            };
            match next {
                Ok(message) => match delivery(message, self.op_timeout) {
                    Ok(d) => out.push(d),
                    // Cannot be acked either; it is redelivered after ack_wait.
                    Err(e) => warn!(error = %e, "skipping a malformed delivery"),
                },
                Err(e) if out.is_empty() => {
                    return Err(BusError::Protocol(format!("pull failed: {e}")));
                }
                Err(e) => {
                    debug!(error = %e, "pull ended with an error after some messages");
                    break;
                }
            }
        }
        Ok(out)
    }
}

fn delivery(message: jetstream::Message, op_timeout: Duration) -> Result<Delivery, BusError> {
    let (delivered, stream_sequence) = {
        let info = message
            .info()
            .map_err(|e| BusError::Protocol(format!("not a JetStream delivery: {e}")))?;
        (
            u32::try_from(info.delivered.max(1)).unwrap_or(u32::MAX),
            info.stream_sequence,
        )
    };
    Ok(Delivery::new(
        message.subject.to_string(),
        headers_of(&message.message),
        message.payload.clone(),
        delivered,
        stream_sequence,
        Box::new(NatsAck {
            message,
            op_timeout,
        }),
    ))
}

struct NatsAck {
    message: jetstream::Message,
    op_timeout: Duration,
}

impl NatsAck {
    /// Ack with confirmation from the server (so "acked" means the server knows).
    async fn confirmed(&self, kind: AckKind) -> Result<(), BusError> {
        match tokio::time::timeout(self.op_timeout, self.message.double_ack_with(kind)).await {
            Err(_) => Err(BusError::Timeout(self.op_timeout)),
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(BusError::Unavailable(format!("ack failed: {e}"))),
        }
    }

    async fn fire(&self, kind: AckKind) -> Result<(), BusError> {
        match tokio::time::timeout(self.op_timeout, self.message.ack_with(kind)).await {
            Err(_) => Err(BusError::Timeout(self.op_timeout)),
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(BusError::Unavailable(format!("ack failed: {e}"))),
        }
    }
}

#[async_trait]
impl AckHandle for NatsAck {
    async fn ack(&self) -> Result<(), BusError> {
        self.confirmed(AckKind::Ack).await
    }

    async fn nak(&self, delay: Duration) -> Result<(), BusError> {
        let delay = (!delay.is_zero()).then_some(delay);
        self.fire(AckKind::Nak(delay)).await
    }

    async fn term(&self) -> Result<(), BusError> {
        self.confirmed(AckKind::Term).await
    }

    async fn in_progress(&self) -> Result<(), BusError> {
        self.fire(AckKind::Progress).await
    }
}
