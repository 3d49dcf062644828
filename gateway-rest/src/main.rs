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
        /// When the key stops working: RFC 3339 (`2027-01-01T00:00:00Z`) or a UTC date
        /// (`2027-01-01`, midnight).
        #[arg(long, value_parser = parse_expiry)]
        expires_at: Option<chrono::DateTime<chrono::Utc>>,
        /// The key's own requests per minute, replacing its tier's.
        #[arg(long)]
        rpm: Option<u32>,
        /// The key's own monthly request quota, replacing its tier's.
        #[arg(long)]
        monthly_requests: Option<u64>,
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
    /// Give a key (by id or shown prefix) a new secret, printed once as the last line. The id,
    /// tier, limits and usage history stay; the old secret stops working.
    Rotate {
        #[arg(long, env = "TOLLGATE_CONFIG")]
        config: String,
        key: String,
    },
    /// Change a key's name, tier, expiry or limit overrides.
    Update {
        #[arg(long, env = "TOLLGATE_CONFIG")]
        config: String,
        key: String,
        #[arg(long)]
        name: Option<String>,
        #[arg(long)]
        tier: Option<String>,
        /// RFC 3339 or a UTC date; a past time expires the key at once.
        #[arg(long, value_parser = parse_expiry, conflicts_with = "no_expiry")]
        expires_at: Option<chrono::DateTime<chrono::Utc>>,
        /// Remove the expiry.
        #[arg(long)]
        no_expiry: bool,
        #[arg(long, conflicts_with = "tier_rpm")]
        rpm: Option<u32>,
        /// Back to the tier's requests per minute.
        #[arg(long)]
        tier_rpm: bool,
        #[arg(long, conflicts_with = "tier_monthly_requests")]
        monthly_requests: Option<u64>,
        /// Back to the tier's monthly quota.
        #[arg(long)]
        tier_monthly_requests: bool,
    },
}

/// `--expires-at`: RFC 3339, or `YYYY-MM-DD` meaning that day's UTC midnight.
fn parse_expiry(text: &str) -> Result<chrono::DateTime<chrono::Utc>, String> {
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(text) {
        return Ok(t.with_timezone(&chrono::Utc));
    }
    chrono::NaiveDate::parse_from_str(text, "%Y-%m-%d")
        .ok()
        .and_then(|d| d.and_hms_opt(0, 0, 0))
        .map(|t| t.and_utc())
        .ok_or_else(|| format!("{text:?} is neither RFC 3339 nor YYYY-MM-DD"))
}

/// `Some(value)` to set, `Some(None)` to clear, `None` to leave.
fn change<T>(value: Option<T>, clear: bool) -> Option<Option<T>> {
    if clear { Some(None) } else { value.map(Some) }
}

fn optional_rfc3339(t: Option<chrono::DateTime<chrono::Utc>>) -> Option<String> {
    t.map(|t| t.to_rfc3339())
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
        KeysCommand::Create {
            config,
            tier,
            name,
            expires_at,
            rpm,
            monthly_requests,
        } => {
            let runtime = load(&config)?;
            let db = connect(&runtime).await?;
            let new = tollgate_billing::NewKey {
                tier,
                name,
                expires_at,
                rpm,
                monthly_requests,
            };
            let (record, secret) = tollgate_billing::create_key_with(&db, &runtime.tiers, &new)
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
                    "{:<36}  {:<16}  {:<12}  {:<8}  {:<20}  {:<6}  {:<10}  NAME",
                    "ID", "PREFIX", "TIER", "STATUS", "EXPIRES", "RPM", "MONTHLY"
                );
            }
            let now = chrono::Utc::now();
            for k in keys {
                let status = k.status(now);
                if json {
                    println!(
                        "{}",
                        serde_json::json!({
                            "id": k.id, "prefix": k.prefix, "tier": k.tier, "name": k.name,
                            "status": status, "created_at": k.created_at.to_rfc3339(),
                            "revoked_at": optional_rfc3339(k.revoked_at),
                            "expires_at": optional_rfc3339(k.expires_at),
                            "rpm_override": k.overrides.rpm,
                            "monthly_requests_override": k.overrides.monthly_requests,
                        })
                    );
                } else {
                    // Overrides are shown; `-` means the tier's limit.
                    let or_tier = |v: Option<String>| v.unwrap_or_else(|| "-".to_owned());
                    println!(
                        "{:<36}  {:<16}  {:<12}  {:<8}  {:<20}  {:<6}  {:<10}  {}",
                        k.id,
                        k.prefix,
                        k.tier,
                        status,
                        or_tier(
                            k.expires_at
                                .map(|t| t.format("%Y-%m-%dT%H:%M:%SZ").to_string())
                        ),
                        or_tier(k.overrides.rpm.map(|r| r.to_string())),
                        or_tier(k.overrides.monthly_requests.map(|m| m.to_string())),
                        k.name
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
        KeysCommand::Rotate { config, key } => {
            let runtime = load(&config)?;
            let db = connect(&runtime).await?;
            let (record, secret) = tollgate_billing::rotate_key(&db, &key)
                .await
                .map_err(|e| e.to_string())?;
            println!(
                "rotated key {} (now {}); running gateways refuse the old secret within {} ms",
                record.id, record.prefix, runtime.server.key_refresh_ms
            );
            println!("the new secret is shown once; store it now:");
            println!("{}", secret.expose_secret());
            Ok(())
        }
        KeysCommand::Update {
            config,
            key,
            name,
            tier,
            expires_at,
            no_expiry,
            rpm,
            tier_rpm,
            monthly_requests,
            tier_monthly_requests,
        } => {
            let runtime = load(&config)?;
            let db = connect(&runtime).await?;
            let update = tollgate_billing::KeyUpdate {
                name,
                tier,
                expires_at: change(expires_at, no_expiry),
                rpm: change(rpm, tier_rpm),
                monthly_requests: change(monthly_requests, tier_monthly_requests),
            };
            if update.is_empty() {
                return Err("nothing to update: give --name, --tier, --expires-at, --no-expiry, --rpm, --tier-rpm, --monthly-requests or --tier-monthly-requests".to_owned());
            }
            let record = tollgate_billing::update_key(&db, &runtime.tiers, &key, &update)
                .await
                .map_err(|e| e.to_string())?;
            println!(
                "updated key {} ({}); running gateways apply it within {} ms",
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
