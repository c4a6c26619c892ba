//! `episodic-memory` — the whole product in one process (`make run`).

use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use secrecy::ExposeSecret as _;
use standalone::{Settings, Standalone};

#[derive(Parser)]
#[command(
    version,
    about = "EpisodicMemory, all services in one process (SQLite, embedded index, embedded bus)"
)]
struct Cli {
    /// Optional TOML settings file; env vars EM_STANDALONE__* override it.
    #[arg(long, env = "EM_STANDALONE_CONFIG")]
    config: Option<PathBuf>,
    /// Data directory (overrides the settings).
    #[arg(long, global = true)]
    data_dir: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the API and run the pipeline (the default).
    Serve {
        /// Listen address (overrides the settings).
        #[arg(long)]
        addr: Option<String>,
    },
    /// Manage tenants.
    Tenant {
        #[command(subcommand)]
        command: TenantCommand,
    },
    /// Rebuild the vector indexes from the system of record.
    Reindex,
    /// Customers, keys, usage and the audit log. A running server applies revocations
    /// made here at its auth cache TTL; the admin API (`/admin/v1`) applies them at once.
    Admin {
        #[command(subcommand)]
        command: gateway::cli::AdminCommand,
    },
}

#[derive(Subcommand)]
enum TenantCommand {
    /// Create a tenant and print its first API key (shown once).
    Create {
        #[arg(long)]
        name: String,
    },
    /// Issue another API key for a tenant (shown once).
    AddKey {
        #[arg(long)]
        tenant: common::TenantId,
        #[arg(long, default_value = "default")]
        name: String,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    common::telemetry::init("standalone", common::telemetry::LogFormat::Text);
    let cli = Cli::parse();
    let mut settings: Settings = common::settings::load("standalone", cli.config.as_deref())?;
    if let Some(dir) = cli.data_dir {
        settings.data_dir = dir;
    }
    match cli.command.unwrap_or(Command::Serve { addr: None }) {
        Command::Serve { addr } => {
            if let Some(addr) = addr {
                settings.http.addr = addr;
            }
            serve(settings).await
        }
        Command::Tenant { command } => {
            let db = standalone::open_db(&settings.data_dir).await?;
            let (tenant, key_id, key) = match command {
                TenantCommand::Create { name } => {
                    let c = gateway::admin::create_tenant(&db, &name).await?;
                    (c.tenant_id, c.key_id, c.api_key)
                }
                TenantCommand::AddKey { tenant, name } => {
                    let (key_id, key) = gateway::admin::create_api_key(&db, tenant, &name).await?;
                    (tenant, key_id, key)
                }
            };
            print_key(tenant, &key_id, key.expose_secret());
            Ok(())
        }
        Command::Admin { command } => {
            let db = standalone::open_db(&settings.data_dir).await?;
            let admin = gateway::admin::Admin::new(db, gateway::admin::AuthNotifier::default());
            gateway::cli::run(&admin, command).await
        }
        Command::Reindex => {
            let db = standalone::open_db(&settings.data_dir).await?;
            let report = standalone::reindex(&db, &settings.data_dir).await?;
            tracing::info!(?report, "re-index complete");
            Ok(())
        }
    }
}

async fn serve(settings: Settings) -> anyhow::Result<()> {
    let model_settings = settings.model.clone().with_env_fallbacks();
    let models = tokio::task::spawn_blocking(move || model_settings.load())
        .await?
        .context("loading the embedding model (run `make model`)")?;
    let app = Standalone::build(&settings, models).await?;
    print_banner(&app.local_addr().to_string(), &settings.data_dir);
    app.run_until_stopped(common::shutdown::on_signal()).await
}

#[allow(clippy::print_stdout)]
fn print_key(tenant: common::TenantId, key_id: &str, key: &str) {
    println!(
        "tenant_id: {tenant}\nkey_id:    {key_id}\napi_key:   {key}\n\nThe key is shown once; store it now."
    );
}

#[allow(clippy::print_stdout)]
fn print_banner(addr: &str, data_dir: &std::path::Path) {
    println!(
        r#"
EpisodicMemory is running on http://{addr}  (data in {data})

1. Create a tenant and an API key (in another terminal):

   ./target/release/episodic-memory --data-dir {data} tenant create --name demo

2. Capture a first failure episode:

   curl -s -X POST http://{addr}/api/v1/capture \
     -H "X-API-Key: $KEY" -H "Content-Type: application/json" \
     -d '{{"goal": "Deploy the api to staging",
          "actions_taken": ["kubectl apply -f deploy.yaml"],
          "error_trace": "Error from server (Forbidden): deployments.apps is forbidden",
          "error_class": "permission_error",
          "tool_chain": ["kubectl"],
          "environment": {{"cluster": "staging"}},
          "resolution": "Bound the deployer role to the CI service account"}}'

3. Read it back:  curl -s -H "X-API-Key: $KEY" http://{addr}/api/v1/episodes/<episode_id>

Stop with Ctrl-C.
"#,
        data = data_dir.display()
    );
}
