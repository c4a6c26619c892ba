//! The `episodic-memory` binary (everything in one process) on a temporary data directory.

use std::path::{Path, PathBuf};
use std::time::Duration;

use test_support::services::{ServiceProcess, ServiceSpec, wait_until};

use crate::START_TIMEOUT;
use crate::api::{Api, Tenant};

/// A running `episodic-memory serve`. Dropping it kills the process; the data directory
/// belongs to the caller (so a test can restart on it and inspect it).
pub struct Standalone {
    pub process: ServiceProcess,
    pub api: Api,
    pub data_dir: PathBuf,
}

fn base_spec(name: &str, data_dir: &Path) -> ServiceSpec {
    ServiceSpec::new(name, "episodic-memory")
        .env(
            "EM_STANDALONE__MODEL__DIR",
            test_support::model::model_dir().display().to_string(),
        )
        .env(
            "EM_STANDALONE__MODEL__ORT_DYLIB",
            test_support::model::ort_dylib().display().to_string(),
        )
        .args(["--data-dir", &data_dir.display().to_string()])
}

/// `episodic-memory --data-dir <dir> tenant create --name <name>`.
pub async fn create_tenant(data_dir: &Path, name: &str) -> Tenant {
    let stdout = base_spec("episodic-memory tenant create", data_dir)
        .args(["tenant", "create", "--name", name])
        .run_to_completion(Duration::from_secs(60))
        .await;
    Tenant::parse_cli_output(&stdout)
}

impl Standalone {
    /// `episodic-memory --data-dir <dir> serve --addr 127.0.0.1:0`, ready to serve.
    pub async fn start(data_dir: &Path) -> Standalone {
        let process = ServiceProcess::start(base_spec("episodic-memory", data_dir).args([
            "serve",
            "--addr",
            "127.0.0.1:0",
        ]));
        let mut app = Standalone {
            process,
            api: Api::new("http://unbound"),
            data_dir: data_dir.to_owned(),
        };
        app.wait_started().await;
        app
    }

    async fn wait_started(&mut self) {
        let banner = self
            .process
            .wait_for_log("EpisodicMemory is running on http://", START_TIMEOUT)
            .await;
        let addr = banner
            .split("http://")
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .unwrap_or_else(|| panic!("no address in {banner:?}"))
            .to_owned();
        self.api = Api::new(format!("http://{addr}"));
        let api = self.api.clone();
        wait_until(
            "episodic-memory to be ready",
            START_TIMEOUT,
            Duration::from_millis(20),
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

    /// `kill -9` the process (nothing is flushed or shut down).
    pub fn kill9(&mut self) {
        self.process.kill9();
    }

    /// `kill -9` (if running), then start again on the same data directory (a new port).
    pub async fn restart(&mut self) {
        self.process.restart();
        self.wait_started().await;
    }

    /// The system of record of the data directory, opened directly (call while the process
    /// is stopped).
    pub async fn open_db(&self) -> db::Db {
        let url = format!("sqlite://{}", self.data_dir.join("episodic.db").display());
        db::Db::connect(&db::DbConfig::new(url))
            .await
            .expect("open the standalone database")
    }
}
