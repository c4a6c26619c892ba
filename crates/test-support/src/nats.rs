//! A NATS subject prefix of its own per test, and the JetStream streams under it deleted
//! again when the test ends (passing or failing).
//!
//! NATS is reached at `nats://127.0.0.1:4222` unless `EM_TEST_NATS_URL` says otherwise.

use std::time::Duration;

use common::events::Topology;

/// Environment variable naming the NATS server tests use.
pub const NATS_URL_ENV: &str = "EM_TEST_NATS_URL";
const DEFAULT_NATS_URL: &str = "nats://127.0.0.1:4222";

/// The NATS server of the tests.
pub fn nats_url() -> String {
    std::env::var(NATS_URL_ENV).unwrap_or_else(|_| DEFAULT_NATS_URL.to_owned())
}

/// A unique prefix (`t` + 12 random hex digits) and its [`Topology`]. Dropping it deletes
/// the prefix's streams (best effort, bounded).
#[derive(Debug)]
pub struct TestTopology {
    pub prefix: String,
    pub topology: Topology,
    nats_url: String,
}

impl TestTopology {
    pub fn new() -> Self {
        let prefix = format!("t{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
        let topology = Topology::new(&prefix).expect("a valid test prefix");
        Self {
            prefix,
            topology,
            nats_url: nats_url(),
        }
    }

    /// Every subject under the prefix: `<prefix>.>`.
    pub fn wildcard(&self) -> String {
        format!("{}.>", self.prefix)
    }

    /// The names of the streams the services create under this prefix.
    pub fn stream_names(&self) -> [String; 2] {
        [
            self.topology.episodes_stream().name,
            self.topology.dead_letter_stream().name,
        ]
    }
}

impl Default for TestTopology {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for TestTopology {
    fn drop(&mut self) {
        let url = self.nats_url.clone();
        let streams = self.stream_names();
        // Drop cannot await and may run inside a runtime: use a thread with its own.
        let deleter = std::thread::spawn(move || {
            let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            runtime.block_on(async move {
                let delete = async {
                    let client = async_nats::connect(url.as_str()).await.ok()?;
                    let js = async_nats::jetstream::new(client.clone());
                    for stream in streams {
                        let _ = js.delete_stream(&stream).await;
                    }
                    client.flush().await.ok()
                };
                let _ = tokio::time::timeout(Duration::from_secs(10), delete).await;
            });
        });
        let _ = deleter.join();
    }
}
