//! The `tollgate` command: `serve` runs the gateway, `keys` administers API keys, `migrate`
//! prepares the database.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tokio::net::TcpListener;
use tollgate_gateway::{Config, Runtime, server};

#[derive(Parser)]
#[command(
    name = "tollgate",
    version,
    about = "A self-hosted LLM gateway with per-key token billing"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway (REST and gRPC in one process).
    Serve {
        #[arg(long, env = "TOLLGATE_CONFIG")]
        config: String,
        /// Overrides server.http_addr.
        #[arg(long)]
        http_addr: Option<std::net::SocketAddr>,
        /// Overrides server.grpc_addr.
        #[arg(long)]
        grpc_addr: Option<std::net::SocketAddr>,
    },
    /// Manage API keys.
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
    /// Create or upgrade the database schema.
    Migrate {
        #[arg(long, env = "TOLLGATE_CONFIG")]
        config: String,
    },
}

#[derive(Subcommand)]
enum KeysCommand {
    /// Create a key; its secret is printed once, as the last line.
    Create {
        #[arg(long, env = "TOLLGATE_CONFIG")]
        config: String,
        #[arg(long)]
        tier: String,
        #[arg(long)]
        name: Option<String>,
    },
    /// List keys (never their secrets).
    List {
        #[arg(long, env = "TOLLGATE_CONFIG")]
        config: String,
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
    },
    /// Revoke a key by id or by its shown prefix.
    Revoke {
        #[arg(long, env = "TOLLGATE_CONFIG")]
        config: String,
        key: String,
    },
}

fn load(path: &str) -> Result<Runtime, String> {
    Config::load(path, std::env::vars())
        .and_then(Config::validate)
        .map_err(|e| e.to_string())
}

async fn connect(runtime: &Runtime) -> Result<sea_orm::DatabaseConnection, String> {
    let db = tollgate_billing::connect(&runtime.database)
        .await
        .map_err(|e| e.to_string())?;
    tollgate_billing::migrate(&db)
        .await
        .map_err(|e| e.to_string())?;
    Ok(db)
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(term) => term,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

async fn run(cli: Cli) -> Result<(), String> {
    match cli.command {
        Command::Serve {
            config,
            http_addr,
            grpc_addr,
        } => {
            let mut runtime = load(&config)?;
            if let Some(addr) = http_addr {
                runtime.server.http_addr = addr;
            }
            if let Some(addr) = grpc_addr {
                runtime.server.grpc_addr = addr;
            }
            let http = TcpListener::bind(runtime.server.http_addr)
                .await
                .map_err(|e| format!("cannot listen on {}: {e}", runtime.server.http_addr))?;
            let grpc = TcpListener::bind(runtime.server.grpc_addr)
                .await
                .map_err(|e| format!("cannot listen on {}: {e}", runtime.server.grpc_addr))?;
            let env = |name: &str| std::env::var(name).ok();
            server::serve(
                runtime,
                http,
                grpc,
                &env,
                shutdown_signal(),
                |http, grpc| {
                    tracing::info!(%http, %grpc, "tollgate is serving");
                    // The one line tools wait for.
                    println!("READY http={http} grpc={grpc}");
                },
            )
            .await
            .map_err(|e| e.to_string())
        }
        Command::Migrate { config } => {
            let runtime = load(&config)?;
            connect(&runtime).await?;
            println!("database is up to date");
            Ok(())
        }
        Command::Keys { command } => keys(command).await,
    }
}

async fn keys(command: KeysCommand) -> Result<(), String> {
    match command {
        KeysCommand::Create { config, tier, name } => {
            let runtime = load(&config)?;
            let db = connect(&runtime).await?;
            let (record, secret) =
                tollgate_billing::create_key(&db, &runtime.tiers, &tier, name.as_deref())
                    .await
                    .map_err(|e| e.to_string())?;
            println!(
                "created key {} ({}) in tier {}",
                record.id, record.prefix, record.tier
            );
            println!("the secret is shown once; store it now:");
            println!("{}", secret.expose_secret());
            Ok(())
        }
        KeysCommand::List { config, json } => {
            let runtime = load(&config)?;
            let db = connect(&runtime).await?;
            let keys = tollgate_billing::list_keys(&db)
                .await
                .map_err(|e| e.to_string())?;
            if !json {
                println!(
                    "{:<36}  {:<16}  {:<12}  {:<8}  NAME",
                    "ID", "PREFIX", "TIER", "STATUS"
                );
            }
            for k in keys {
                let status = if k.revoked_at.is_some() {
                    "revoked"
                } else {
                    "active"
                };
                if json {
                    println!(
                        "{}",
                        serde_json::json!({
                            "id": k.id, "prefix": k.prefix, "tier": k.tier, "name": k.name,
                            "status": status, "created_at": k.created_at.to_rfc3339(),
                            "revoked_at": k.revoked_at.map(|t| t.to_rfc3339()),
                        })
                    );
                } else {
                    println!(
                        "{:<36}  {:<16}  {:<12}  {:<8}  {}",
                        k.id, k.prefix, k.tier, status, k.name
                    );
                }
            }
            Ok(())
        }
        KeysCommand::Revoke { config, key } => {
            let runtime = load(&config)?;
            let db = connect(&runtime).await?;
            let record = tollgate_billing::revoke_key(&db, &key)
                .await
                .map_err(|e| e.to_string())?;
            println!(
                "revoked key {} ({}); running gateways refuse it within {} ms",
                record.id, record.prefix, runtime.server.key_refresh_ms
            );
            Ok(())
        }
    }
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,sqlx=warn,sea_orm=warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
