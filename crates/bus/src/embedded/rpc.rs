//! In-process request-reply for the embedded bus.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::api::{NoticeHandler, RequestHandler};
use crate::error::BusError;
use crate::subject::{is_valid_pattern, is_valid_publish_subject, subject_matches};

/// Requests queued per responder before `request` waits.
const QUEUE: usize = 256;

struct Call {
    payload: Bytes,
    reply: oneshot::Sender<Bytes>,
}

struct Responder {
    id: u64,
    pattern: String,
    tx: mpsc::Sender<Call>,
}

struct Listener {
    id: u64,
    pattern: String,
    tx: mpsc::UnboundedSender<(String, Bytes)>,
}

/// Registry of responders (queue groups are trivial in one process: each request goes to
/// one responder, round-robin) and of notice listeners (each notice goes to all).
#[derive(Default)]
pub(super) struct Rpc {
    responders: Arc<Mutex<Vec<Responder>>>,
    listeners: Arc<Mutex<Vec<Listener>>>,
    next_id: AtomicU64,
    round_robin: AtomicUsize,
}

fn lock<T>(m: &Mutex<Vec<T>>) -> MutexGuard<'_, Vec<T>> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Rpc {
    pub async fn request(
        &self,
        subject: &str,
        payload: Bytes,
        timeout: Duration,
    ) -> Result<Bytes, BusError> {
        if !is_valid_publish_subject(subject) {
            return Err(BusError::Protocol(format!(
                "invalid request subject {subject:?}"
            )));
        }
        let candidates: Vec<mpsc::Sender<Call>> = lock(&self.responders)
            .iter()
            .filter(|r| subject_matches(&r.pattern, subject))
            .map(|r| r.tx.clone())
            .collect();
        if candidates.is_empty() {
            return Err(BusError::NoResponders(subject.to_owned()));
        }
        let start = self.round_robin.fetch_add(1, Ordering::Relaxed);
        let attempt = async {
            let mut payload = payload;
            for i in 0..candidates.len() {
                let tx = &candidates[(start + i) % candidates.len()];
                let (reply, answer) = oneshot::channel();
                match tx.send(Call { payload, reply }).await {
                    Ok(()) => {
                        return answer.await.map_err(|_| {
                            BusError::Unavailable(format!("responder on {subject} failed"))
                        });
                    }
                    // That responder is shutting down: try the next one.
                    Err(mpsc::error::SendError(call)) => payload = call.payload,
                }
            }
            Err(BusError::NoResponders(subject.to_owned()))
        };
        tokio::time::timeout(timeout, attempt)
            .await
            .map_err(|_| BusError::Timeout(timeout))?
    }

    pub fn serve(
        &self,
        subject: &str,
        _queue_group: &str,
        handler: Arc<dyn RequestHandler>,
        shutdown: CancellationToken,
    ) -> Result<JoinHandle<()>, BusError> {
        if !is_valid_pattern(subject) {
            return Err(BusError::Protocol(format!(
                "invalid serve subject {subject:?}"
            )));
        }
        let (tx, mut rx) = mpsc::channel::<Call>(QUEUE);
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        lock(&self.responders).push(Responder {
            id,
            pattern: subject.to_owned(),
            tx,
        });
        let responders = Arc::clone(&self.responders);
        Ok(tokio::spawn(async move {
            let tracker = TaskTracker::new();
            let answer = |call: Call| {
                let handler = Arc::clone(&handler);
                tracker.spawn(async move {
                    let response = handler.handle(call.payload).await;
                    let _ = call.reply.send(response);
                });
            };
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    call = rx.recv() => match call {
                        Some(call) => answer(call),
                        None => break,
                    },
                }
            }
            // Stop taking requests, but answer those already queued.
            lock(&responders).retain(|r| r.id != id);
            rx.close();
            while let Some(call) = rx.recv().await {
                answer(call);
            }
            tracker.close();
            tracker.wait().await;
        }))
    }

    /// Hands the notice to every listener whose pattern matches.
    pub fn notify(&self, subject: &str, payload: Bytes) -> Result<(), BusError> {
        if !is_valid_publish_subject(subject) {
            return Err(BusError::Protocol(format!(
                "invalid notice subject {subject:?}"
            )));
        }
        for l in lock(&self.listeners)
            .iter()
            .filter(|l| subject_matches(&l.pattern, subject))
        {
            // A listener that has stopped is removed by its own task.
            let _ = l.tx.send((subject.to_owned(), payload.clone()));
        }
        Ok(())
    }

    pub fn listen(
        &self,
        subject: &str,
        handler: Arc<dyn NoticeHandler>,
        shutdown: CancellationToken,
    ) -> Result<JoinHandle<()>, BusError> {
        if !is_valid_pattern(subject) {
            return Err(BusError::Protocol(format!(
                "invalid listen subject {subject:?}"
            )));
        }
        let (tx, mut rx) = mpsc::unbounded_channel();
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        lock(&self.listeners).push(Listener {
            id,
            pattern: subject.to_owned(),
            tx,
        });
        let listeners = Arc::clone(&self.listeners);
        Ok(tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    next = rx.recv() => match next {
                        Some((subject, payload)) => handler.notice(&subject, payload).await,
                        None => break,
                    },
                }
            }
            lock(&listeners).retain(|l| l.id != id);
        }))
    }
}
