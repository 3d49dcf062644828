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
            let new = tollgate_billing::NewKey {
                tier,
                name,
                expires_at,
                rpm,
                monthly_requests,
                money,
            };
            let (record, secret) = tollgate_billing::create_key_with(&db, &runtime.tiers, &new)
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
            let (record, account) = tollgate_billing::keys::top_up_key(&db, &key, amount)
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
    let now = chrono::Utc::now();
    if !json {
        println!(
            "{:<36}  {:<16}  {:<12}  {:<8}  {:<20}  {:<6}  {:<10}  {:>14}  {:>14}  NAME",
            "ID",
            "PREFIX",
            "TIER",
            "STATUS",
            "EXPIRES",
            "RPM",
            "MONTHLY",
            "BALANCE_USD",
            "SPEND_MONTH"
        );
    }
    for k in keys {
        let status = k.status(now);
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
                    "revoked_at": optional_rfc3339(k.revoked_at),
                    "expires_at": optional_rfc3339(k.expires_at),
                    "rpm_override": k.overrides.rpm,
                    "monthly_requests_override": k.overrides.monthly_requests,
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
            // Overrides are shown; `-` means the tier's limit.
            let or_tier = |v: Option<String>| v.unwrap_or_else(|| "-".to_owned());
            println!(
                "{:<36}  {:<16}  {:<12}  {:<8}  {:<20}  {:<6}  {:<10}  {:>14}  {:>14}  {}",
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
