//! The separate services as processes: `gateway`, `embedder` and `ingest-writer` over a
//! fresh PostgreSQL database, a fresh NATS subject prefix (streams deleted at the end) and a
//! fake KyroDB (a real gRPC server on a real socket, one 384-dim text instance).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use async_nats::jetstream;
use common::{EpisodeId, TenantId};
use futures::TryStreamExt as _;
use test_support::db::TestDb;
use test_support::kyrodb_fake::{self, FakeKyroDbHandle, FakeKyroDbOptions, RecordedBody};
use test_support::nats::{TestTopology, nats_url};
use test_support::services::{ServiceProcess, ServiceSpec, wait_until};

use crate::START_TIMEOUT;
use crate::api::{Api, Tenant};

/// What to start.
#[derive(Debug, Clone)]
pub struct ClusterOptions {
    /// The NATS the services use (default: the test NATS). A closed port simulates an outage.
    pub services_nats_url: Option<String>,
    /// Start the embedder, the ingest-writer and the retriever too (otherwise only the
    /// gateway).
    pub pipeline: bool,
}

impl Default for ClusterOptions {
    fn default() -> Self {
        Self {
            services_nats_url: None,
            pipeline: true,
        }
    }
}

/// A running deployment. Fields drop in order: processes are killed first, then KyroDB
/// stops, the streams are deleted and the database is dropped.
pub struct Cluster {
    pub gateway: ServiceProcess,
    pub embedder: Option<ServiceProcess>,
    pub writer: Option<ServiceProcess>,
    pub retriever: Option<ServiceProcess>,
    pub api: Api,
    pub kyrodb: FakeKyroDbHandle,
    /// For assertions on streams and consumers (always the real test NATS).
    pub js: jetstream::Context,
    pub nats: async_nats::Client,
    pub topo: TestTopology,
    pub db: TestDb,
}

fn gateway_spec(db_url: &str, prefix: &str, nats: &str) -> ServiceSpec {
    ServiceSpec::new("gateway", "gateway")
        .env("EM_GATEWAY__DATABASE__URL", db_url)
        .env("EM_GATEWAY__EVENTS__PREFIX", prefix)
        .env("EM_GATEWAY__NATS__URL", nats)
        .env("EM_GATEWAY__HTTP__ADDR", "127.0.0.1:0")
}

impl Cluster {
    /// Starts everything and waits until each service is ready.
    pub async fn start(options: ClusterOptions) -> Cluster {
        let db = TestDb::postgres().await;
        let topo = TestTopology::new();
        let kyrodb = kyrodb_fake::spawn(FakeKyroDbOptions::default())
            .await
            .expect("fake KyroDB");
        let nats = async_nats::connect(nats_url())
            .await
            .expect("NATS for assertions (run `make services`)");
        let js = jetstream::new(nats.clone());
        let services_nats = options.services_nats_url.clone().unwrap_or_else(nats_url);

        // The embedder first: loading the model is the slowest start.
        let (mut embedder, mut writer, mut retriever) = (None, None, None);
        if options.pipeline {
            embedder = Some(ServiceProcess::start(
                ServiceSpec::new("embedder", "embedder")
                    .env(
                        "EM_EMBEDDER__MODEL__DIR",
                        test_support::model::model_dir().display().to_string(),
                    )
                    .env(
                        "EM_EMBEDDER__MODEL__ORT_DYLIB",
                        test_support::model::ort_dylib().display().to_string(),
                    )
                    .env("EM_EMBEDDER__EVENTS__PREFIX", &topo.prefix)
                    .env("EM_EMBEDDER__NATS__URL", &services_nats),
            ));
            writer = Some(ServiceProcess::start(
                ServiceSpec::new("ingest-writer", "ingest-writer")
                    .env("EM_INGEST_WRITER__DATABASE__URL", &db.url)
                    .env("EM_INGEST_WRITER__EVENTS__PREFIX", &topo.prefix)
                    .env("EM_INGEST_WRITER__NATS__URL", &services_nats)
                    .env("EM_INGEST_WRITER__KYRODB__TEXT__URL", kyrodb.url()),
            ));
            retriever = Some(ServiceProcess::start(
                ServiceSpec::new("retriever", "retriever")
                    .env("EM_RETRIEVER__DATABASE__URL", &db.url)
                    .env("EM_RETRIEVER__EVENTS__PREFIX", &topo.prefix)
                    .env("EM_RETRIEVER__NATS__URL", &services_nats)
                    .env("EM_RETRIEVER__KYRODB__URL", kyrodb.url()),
            ));
        }
        let mut gateway =
            ServiceProcess::start(gateway_spec(&db.url, &topo.prefix, &services_nats));
        let listening = gateway
            .wait_for_log("gateway listening", START_TIMEOUT)
            .await;
        let addr = serde_json::from_str::<serde_json::Value>(&listening)
            .ok()
            .and_then(|v| v["addr"].as_str().map(str::to_owned))
            .unwrap_or_else(|| panic!("no addr in {listening}"));
        let api = Api::new(format!("http://{addr}"));
        if let Some(embedder) = &mut embedder {
            embedder
                .wait_for_log("consumer started", START_TIMEOUT)
                .await;
        }
        if let Some(writer) = &mut writer {
            writer.wait_for_log("consumer started", START_TIMEOUT).await;
        }
        if let Some(retriever) = &mut retriever {
            retriever
                .wait_for_log("retriever serving", START_TIMEOUT)
                .await;
        }
        let cluster = Cluster {
            gateway,
            embedder,
            writer,
            retriever,
            api,
            kyrodb,
            js,
            nats,
            topo,
            db,
        };
        if options.services_nats_url.is_none() {
            cluster.wait_ready().await;
        }
        cluster
    }

    /// Waits for `GET /health/ready` to answer 200.
    pub async fn wait_ready(&self) {
        let api = self.api.clone();
        wait_until(
            "the gateway to be ready",
            START_TIMEOUT,
            Duration::from_millis(50),
            || {
                let api = api.clone();
                async move {
                    let r = api.get("/health/ready").await;
                    if r.status.is_success() {
                        Ok(())
                    } else {
                        Err(format!("{} {}", r.status, r.text))
                    }
                }
            },
        )
        .await;
    }

    /// `gateway create-tenant --name <name>` against this cluster's database.
    pub async fn create_tenant(&self, name: &str) -> Tenant {
        let stdout = ServiceSpec::new("gateway create-tenant", "gateway")
            .env("EM_GATEWAY__DATABASE__URL", &self.db.url)
            .args(["create-tenant", "--name", name])
            .run_to_completion(Duration::from_secs(60))
            .await;
        Tenant::parse_cli_output(&stdout)
    }

    pub fn embedder(&mut self) -> &mut ServiceProcess {
        self.embedder.as_mut().expect("the cluster has an embedder")
    }

    pub fn writer(&mut self) -> &mut ServiceProcess {
        self.writer
            .as_mut()
            .expect("the cluster has an ingest-writer")
    }

    /// Every process's output lines (all incarnations).
    pub fn log_lines(&self) -> Vec<(String, String)> {
        let mut lines = Vec::new();
        for process in [
            Some(&self.gateway),
            self.embedder.as_ref(),
            self.writer.as_ref(),
            self.retriever.as_ref(),
        ]
        .into_iter()
        .flatten()
        {
            let name = process.name().to_owned();
            lines.extend(process.texts().into_iter().map(|t| (name.clone(), t)));
        }
        lines
    }

    /// Episodes in the system of record (all tenants).
    pub async fn stored_count(&self) -> i64 {
        self.db
            .db
            .count_all_episodes()
            .await
            .expect("count episodes")
    }

    /// Every stored episode (all tenants), by a keyset scan of the system of record.
    pub async fn stored_episodes(&self) -> Vec<db::StoredEpisode> {
        let mut all = Vec::new();
        let mut after: Option<EpisodeId> = None;
        loop {
            let page = self
                .db
                .db
                .scan_episodes(after, 500)
                .await
                .expect("scan episodes");
            let Some(last) = page.last() else { break };
            after = Some(last.id);
            all.extend(page);
        }
        all
    }

    /// The vectors the fake KyroDB was sent: doc id → episode id (from its metadata), and
    /// the number of documents it holds.
    pub fn kyrodb_documents(&self) -> (BTreeMap<u64, String>, usize) {
        let mut docs = BTreeMap::new();
        for request in self.kyrodb.requests() {
            let inserts = match request.body {
                RecordedBody::Insert(r) => vec![r],
                RecordedBody::BulkInsert(rs) => rs,
                _ => continue,
            };
            for insert in inserts {
                let episode = insert
                    .metadata
                    .get(common::vector::meta::EPISODE)
                    .cloned()
                    .unwrap_or_default();
                docs.insert(insert.doc_id, episode);
            }
        }
        (docs, self.kyrodb.len())
    }

    /// Messages in the episodes stream on `subject_filter` (e.g. the `stored` subjects).
    pub async fn stream_count(&self, subject_filter: &str) -> u64 {
        let Ok(stream) = self
            .js
            .get_stream(self.topo.topology.episodes_stream().name)
            .await
        else {
            return 0;
        };
        let Ok(subjects) = stream.info_with_subjects(subject_filter).await else {
            return 0;
        };
        subjects
            .try_fold(0u64, |n, (_, count)| async move { Ok(n + count as u64) })
            .await
            .unwrap_or(0)
    }

    /// Published events of `stage` (all tenants), de-duplicated by JetStream.
    pub async fn events(&self, stage: common::events::Stage) -> u64 {
        self.stream_count(&self.topo.topology.stage_filter(stage))
            .await
    }

    /// Messages in the dead-letter stream (0 if it does not exist).
    pub async fn dead_letters(&self) -> u64 {
        match self
            .js
            .get_stream(self.topo.topology.dead_letter_stream().name)
            .await
        {
            Ok(mut stream) => stream.info().await.map(|i| i.state.messages).unwrap_or(0),
            Err(_) => 0,
        }
    }

    /// Messages the durable consumer `durable` has delivered and not yet had acknowledged
    /// (the batch a consumer process holds), 0 if unknown.
    pub async fn unacked(&self, durable: &str) -> usize {
        let Ok(stream) = self
            .js
            .get_stream(self.topo.topology.episodes_stream().name)
            .await
        else {
            return 0;
        };
        stream
            .consumer_info(durable)
            .await
            .map(|i| i.num_ack_pending)
            .unwrap_or(0)
    }

    /// Waits until both pipeline consumers have nothing pending and nothing unacknowledged.
    pub async fn wait_drained(&self, timeout: Duration) {
        let stream = self.topo.topology.episodes_stream().name;
        let js = self.js.clone();
        wait_until(
            "the pipeline consumers to drain",
            timeout,
            Duration::from_millis(200),
            || {
                let (js, stream) = (js.clone(), stream.clone());
                async move {
                    let stream = js
                        .get_stream(&stream)
                        .await
                        .map_err(|e| format!("stream: {e}"))?;
                    let mut state = Vec::new();
                    for durable in [
                        common::events::consumers::EMBEDDER,
                        common::events::consumers::INGEST_WRITER,
                    ] {
                        let info = stream
                            .consumer_info(durable)
                            .await
                            .map_err(|e| format!("consumer {durable}: {e}"))?;
                        state.push((durable, info.num_pending, info.num_ack_pending));
                    }
                    if state.iter().all(|(_, p, a)| *p == 0 && *a == 0) {
                        Ok(())
                    } else {
                        Err(format!("(durable, pending, unacked): {state:?}"))
                    }
                }
            },
        )
        .await;
    }

    /// Asserts that exactly the episodes `accepted` (ids answered 202) of `tenant` are
    /// stored — each once in the system of record, once in KyroDB (its deterministic vector
    /// id, its episode id in the metadata), once as an `episode.stored` event — and that
    /// nothing was dead-lettered.
    pub async fn assert_exactly_stored(&self, accepted: &BTreeSet<String>, tenant: &Tenant) {
        let stored = self.stored_episodes().await;
        let stored_ids: BTreeSet<String> = stored.iter().map(|e| e.id.to_string()).collect();
        assert_eq!(
            stored.len(),
            stored_ids.len(),
            "an episode id is stored twice"
        );
        assert_eq!(
            self.stored_count().await,
            accepted.len() as i64,
            "episodes in the system of record"
        );
        let missing: Vec<_> = accepted.difference(&stored_ids).take(5).collect();
        let extra: Vec<_> = stored_ids.difference(accepted).take(5).collect();
        assert!(
            missing.is_empty() && extra.is_empty(),
            "stored ids differ from accepted ids: missing {missing:?}, unexpected {extra:?}"
        );
        let tenant_id: TenantId = tenant.id.parse().expect("tenant id");
        assert!(
            stored.iter().all(|e| e.tenant_id == tenant_id),
            "an episode is stored under another tenant"
        );

        let (docs, held) = self.kyrodb_documents();
        assert_eq!(held, accepted.len(), "vectors held by KyroDB");
        let expected_docs: BTreeMap<u64, String> = stored
            .iter()
            .map(|e| (e.vector_id.get(), e.id.to_string()))
            .collect();
        assert_eq!(
            docs.len(),
            accepted.len(),
            "distinct vector ids sent to KyroDB"
        );
        assert!(
            docs == expected_docs,
            "KyroDB documents (vector id → episode id) differ from the system of record"
        );

        assert_eq!(
            self.events(common::events::Stage::Stored).await,
            accepted.len() as u64,
            "episode.stored events (JetStream de-duplicates by Nats-Msg-Id)"
        );
        assert_eq!(self.dead_letters().await, 0, "dead-lettered messages");
    }
}
