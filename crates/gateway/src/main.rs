//! `gateway` — the public HTTP API as its own service (NATS + PostgreSQL).

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use gateway::{Gateway, GatewayDeps, Settings};
use secrecy::ExposeSecret as _;

#[derive(Parser)]
#[command(version, about = "EpisodicMemory gateway: the public HTTP API")]
struct Cli {
    /// Optional TOML settings file; env vars EM_GATEWAY__* override it.
    #[arg(long, env = "EM_GATEWAY_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the API (the default).
    Serve,
    /// Apply database migrations and exit.
    Migrate,
    /// Create a tenant and print its first API key (shown once).
    CreateTenant {
        #[arg(long)]
        name: String,
    },
    /// Issue another API key for a tenant (shown once).
    CreateKey {
        #[arg(long)]
        tenant: common::TenantId,
        #[arg(long, default_value = "default")]
        name: String,
    },
    /// Customers, keys, usage and the audit log (the admin API's operations).
    Admin {
        #[command(subcommand)]
        command: gateway::cli::AdminCommand,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    common::telemetry::init("gateway", common::telemetry::LogFormat::Json);
    let cli = Cli::parse();
    let settings: Settings = common::settings::load("gateway", cli.config.as_deref())?;
    let db = db::Db::connect(&settings.database)
        .await
        .context("connecting to the database")?;
    match cli.command.unwrap_or(Command::Serve) {
        Command::Migrate => {
            let applied = db.migrate().await?;
            tracing::info!(?applied, "migrations applied");
        }
        Command::CreateTenant { name } => {
            db.migrate().await?;
            let created = gateway::admin::create_tenant(&db, &name).await?;
            print_key(
                created.tenant_id,
                &created.key_id,
                created.api_key.expose_secret(),
            );
        }
        Command::CreateKey { tenant, name } => {
            let (key_id, key) = gateway::admin::create_api_key(&db, tenant, &name).await?;
            print_key(tenant, &key_id, key.expose_secret());
        }
        Command::Admin { command } => {
            db.migrate().await?;
            // Running gateways hear about revocations and customer changes over NATS.
            let bus: Option<(Arc<dyn bus::Bus>, String)> = match tokio::time::timeout(
                std::time::Duration::from_secs(3),
                bus::NatsBus::connect(settings.nats.clone()),
            )
            .await
            {
                Ok(Ok(nats)) => Some((
                    Arc::new(nats),
                    settings.events.build()?.auth_control_subject(),
                )),
                _ => {
                    tracing::warn!(
                        "NATS unreachable: running gateways apply this change at their auth cache TTL"
                    );
                    None
                }
            };
            let admin =
                gateway::admin::Admin::new(db, gateway::admin::AuthNotifier::new(None, bus));
            gateway::cli::run(&admin, command).await?;
        }
        Command::Serve => {
            if settings.run_migrations.unwrap_or(true) {
                db.migrate().await?;
            }
            let topology = settings.events.build()?;
            let bus = Arc::new(bus::NatsBus::connect(settings.nats.clone()).await?);
            if let Err(e) = bus::ensure_topology(bus.as_ref(), &topology).await {
                // NATS may be down at start-up: the gateway still serves (503 on capture)
                // and the streams are created by whichever service reaches NATS first.
                tracing::warn!(error = %e, "could not ensure streams yet");
            }
            let gateway = Gateway::build(
                &settings.http,
                &settings.auth,
                GatewayDeps { db, bus, topology },
            )?;
            tracing::info!(addr = %gateway.local_addr(), "gateway listening");
            gateway
                .run_until_stopped(common::shutdown::on_signal())
                .await?;
        }
    }
    Ok(())
}

#[allow(clippy::print_stdout)]
fn print_key(tenant: common::TenantId, key_id: &str, key: &str) {
    println!(
        "tenant_id: {tenant}\nkey_id:    {key_id}\napi_key:   {key}\n(the key is shown once; store it now)"
    );
}
