//! The `tollgate` command: `serve` runs the gateway, `keys` administers API keys, `migrate`
//! prepares the database.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tokio::net::TcpListener;
use tollgate::money::{format_picodollars, parse_usd_picodollars};
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
        /// A prepaid balance in USD (e.g. 5 or 0.25): requests are refused with 429
        /// insufficient_quota once it cannot cover their worst case. Without it the key is
        /// unlimited in money.
        #[arg(long, value_name = "USD")]
        balance: Option<String>,
        /// A spending cap in USD per UTC calendar month.
        #[arg(long, value_name = "USD")]
        monthly_budget: Option<String>,
    },
    /// Add USD to a key's prepaid balance (a key without one gets one).
    Topup {
        #[arg(long, env = "TOLLGATE_CONFIG")]
        config: String,
        /// The key's id or shown prefix.
        key: String,
        #[arg(value_name = "USD")]
        amount: String,
    },
    /// Set a key's monthly budget in USD, or remove it with `none`.
    Budget {
        #[arg(long, env = "TOLLGATE_CONFIG")]
        config: String,
        /// The key's id or shown prefix.
        key: String,
        #[arg(value_name = "USD|none")]
        amount: String,
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
        KeysCommand::Create {
            config,
            tier,
            name,
            balance,
            monthly_budget,
        } => {
            let money = tollgate_billing::KeyMoney {
                balance_picodollars: balance
                    .as_deref()
                    .map(|usd| usd_amount("--balance", usd))
                    .transpose()?,
                monthly_budget_picodollars: monthly_budget
                    .as_deref()
                    .map(|usd| usd_amount("--monthly-budget", usd))
                    .transpose()?,
            };
            let runtime = load(&config)?;
            let db = connect(&runtime).await?;
            let (record, secret) = tollgate_billing::create_key_with(
                &db,
                &runtime.tiers,
                &tier,
                name.as_deref(),
                money,
            )
            .await
            .map_err(|e| e.to_string())?;
            println!(
                "created key {} ({}) in tier {}",
                record.id, record.prefix, record.tier
            );
            if let Some(balance) = money.balance_picodollars {
                println!("prepaid balance: ${}", format_picodollars(balance));
            }
            if let Some(budget) = money.monthly_budget_picodollars {
                println!("monthly budget: ${}", format_picodollars(budget));
            }
            println!("the secret is shown once; store it now:");
            println!("{}", secret.expose_secret());
            Ok(())
        }
        KeysCommand::Topup {
            config,
            key,
            amount,
        } => {
            let amount = usd_amount("USD", &amount)?;
            let runtime = load(&config)?;
            let db = connect(&runtime).await?;
            let record = tollgate_billing::keys::find_key(&db, &key)
                .await
                .map_err(|e| e.to_string())?;
            let account = tollgate_billing::accounts::top_up(&db, &record.id, amount)
                .await
                .map_err(|e| e.to_string())?;
            println!(
                "topped up key {} ({}) by ${}; balance ${}",
                record.id,
                record.prefix,
                format_picodollars(amount),
                format_picodollars(account.balance_picodollars.unwrap_or(0))
            );
            Ok(())
        }
        KeysCommand::Budget {
            config,
            key,
            amount,
        } => {
            let budget = if amount.trim().eq_ignore_ascii_case("none") {
                None
            } else {
                Some(usd_amount("USD", &amount)?)
            };
            let runtime = load(&config)?;
            let db = connect(&runtime).await?;
            let record = tollgate_billing::keys::find_key(&db, &key)
                .await
                .map_err(|e| e.to_string())?;
            tollgate_billing::accounts::set_monthly_budget(&db, &record.id, budget)
                .await
                .map_err(|e| e.to_string())?;
            match budget {
                Some(b) => println!(
                    "key {} ({}): monthly budget ${}",
                    record.id,
                    record.prefix,
                    format_picodollars(b)
                ),
                None => println!("key {} ({}): no monthly budget", record.id, record.prefix),
            }
            Ok(())
        }
        KeysCommand::List { config, json } => {
            let runtime = load(&config)?;
            let db = connect(&runtime).await?;
            list_keys(&db, json).await.map_err(|e| e.to_string())
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

/// A USD amount from the command line, exact to the picodollar.
fn usd_amount(what: &str, text: &str) -> Result<i64, String> {
    parse_usd_picodollars(text).map_err(|e| format!("{what}: {e}"))
}

/// `keys list`: a table, or one JSON object per key with its money (exact decimal strings and
/// integer picodollars) and its request counters.
async fn list_keys(
    db: &sea_orm::DatabaseConnection,
    json: bool,
) -> Result<(), tollgate_billing::BillingError> {
    use tollgate_billing::{clock::Period, ledger};
    let keys = tollgate_billing::list_keys(db).await?;
    let accounts = tollgate_billing::accounts::all_accounts(db).await?;
    let period = Period::current();
    if !json {
        println!(
            "{:<36}  {:<16}  {:<12}  {:<8}  {:>14}  {:>14}  NAME",
            "ID", "PREFIX", "TIER", "STATUS", "BALANCE_USD", "SPEND_MONTH"
        );
    }
    for k in keys {
        let status = if k.revoked_at.is_some() {
            "revoked"
        } else {
            "active"
        };
        let account = accounts.get(&k.id);
        let balance = account.and_then(|a| a.balance_picodollars);
        let budget = account.and_then(|a| a.monthly_budget_picodollars);
        let spent_month = account.map_or(0, |a| a.spent_in(period));
        let spent_total = account.map_or(0, |a| a.spent_total_picodollars);
        if json {
            let requests_month = ledger::count_requests(db, &k.id, period).await?;
            let requests_total = ledger::count_all_requests(db, &k.id).await?;
            let usd = |pico: Option<i64>| pico.map(format_picodollars);
            println!(
                "{}",
                serde_json::json!({
                    "id": k.id, "prefix": k.prefix, "tier": k.tier, "name": k.name,
                    "status": status, "created_at": k.created_at.to_rfc3339(),
                    "revoked_at": k.revoked_at.map(|t| t.to_rfc3339()),
                    "balance_usd": usd(balance),
                    "balance_picodollars": balance,
                    "monthly_budget_usd": usd(budget),
                    "monthly_budget_picodollars": budget,
                    "reserved_picodollars": account.map_or(0, |a| a.reserved_picodollars),
                    "credited_total_picodollars": account.map_or(0, |a| a.credited_total_picodollars),
                    "written_off_picodollars": account.map_or(0, |a| a.written_off_picodollars),
                    "spend_month_usd": format_picodollars(spent_month),
                    "spend_month_picodollars": spent_month,
                    "spend_total_usd": format_picodollars(spent_total),
                    "spend_total_picodollars": spent_total,
                    "period": period.label(),
                    "requests_month": requests_month,
                    "requests_total": requests_total,
                })
            );
        } else {
            println!(
                "{:<36}  {:<16}  {:<12}  {:<8}  {:>14}  {:>14}  {}",
                k.id,
                k.prefix,
                k.tier,
                status,
                balance.map_or_else(|| "unlimited".to_owned(), format_picodollars),
                format_picodollars(spent_month),
                k.name
            );
        }
    }
    Ok(())
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
