//! The `tollgate` command: `serve` runs the gateway, `keys` administers API keys, `migrate`
//! prepares the database. `--config` is one global option, given before or after the subcommand.
//!
//! `keys` goes through the Admin service like REST `/admin` does, called in this process
//! (`tollgate::transport::in_process`) as the trusted [`LocalOperator`]: whoever can read the
//! config and the database is an administrator, so no admin token is needed. The Admin service
//! owns every rule (validation, the key's view); this file owns the flags and the words printed.

use std::process::ExitCode;

/// mimalloc instead of the system allocator: the gateway allocates per request and per chunk
/// (bodies, JSON values, protobuf messages), and glibc's malloc/free was the largest single
/// cost in the profile (22% of instructions). With mimalloc a request costs 12% fewer
/// instructions (`scripts/profile.sh`, README "Benchmark"). Built without transparent huge
/// pages (`no_thp`): mimalloc otherwise asks the kernel for 2 MiB pages on its arenas, and a
/// process holding many idle streams paid for whole huge pages it barely touched (5,000 held
/// streams: 79 KiB each with them, 59 KiB without; 54 MiB at rest instead of 38).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use clap::{Parser, Subcommand};
use tollgate::error::ApiError;
use tollgate::money::{format_picodollars, parse_usd_picodollars};
use tollgate::transport::{GrpcTransport, in_process};
use tollgate::v1::admin_client::AdminClient;
use tollgate::v1::admin_server::AdminServer;
use tollgate::v1::{
    CreateKeyRequest, ListKeysRequest, ManagedKey, RevokeKeyRequest, RotateKeyRequest,
    TopUpRequest, UpdateKeyRequest,
};
use tollgate_billing::{AdminService, LocalOperator};
use tollgate_gateway::expiry::parse_expiry;
use tollgate_gateway::key_view::{Times, key_json, key_table};
use tollgate_gateway::server::{Listeners, Target};
use tollgate_gateway::traces::Traces;
use tollgate_gateway::{Config, Runtime, server};

#[derive(Parser)]
#[command(
    name = "tollgate",
    version,
    about = "A self-hosted LLM gateway with per-key token billing"
)]
struct Cli {
    /// The configuration file, before or after the subcommand.
    #[arg(long, global = true, env = "TOLLGATE_CONFIG", value_name = "FILE")]
    config: Option<String>,
    /// How log lines (on stderr) are written: `text` for people, `json` (one object a line) for
    /// log collectors.
    #[arg(
        long,
        global = true,
        env = "TOLLGATE_LOG_FORMAT",
        value_enum,
        default_value = "text"
    )]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

/// `--log-format`.
#[derive(Clone, Copy, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

/// The filter when `RUST_LOG` is unset: `info`, the database drivers at `warn`.
const DEFAULT_LOG_DIRECTIVES: &str = "info,sqlx=warn,sea_orm=warn";

/// `RUST_LOG`, or [`DEFAULT_LOG_DIRECTIVES`].
fn env_filter() -> tracing_subscriber::EnvFilter {
    tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| DEFAULT_LOG_DIRECTIVES.into())
}

/// Logs to stderr at `RUST_LOG` (default `info`, database drivers at `warn`) in `format`, and
/// spans to the OTLP exporter when `traces` is installed (at every level the filter lets through).
///
/// Each layer has its own filter and the registry has none: the log writer takes what
/// `RUST_LOG` enables, and of that events only ([`log_lines`]), so without the exporter no layer
/// wants a span, and opening one (about six per request) costs a disabled-callsite check instead
/// of the registry's span data and the fields formatted into a String for each (12% of a
/// request's instructions). Log lines carry what names their request as fields of their own
/// (`request_id`, and the access line's method, route and status).
///
/// The two filters are nested (`with_filter` twice), not combined with `FilterExt::and`: the
/// combined filter dropped an enabled WARN that followed events it refused (PostgreSQL notices
/// at start-up under the default directives; `test_replicas` sees it).
fn init_logs(format: LogFormat, traces: Option<&Traces>) {
    use tracing_subscriber::Layer;
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    // Colours only for a person at a terminal: escape codes cost every line, and a log file or
    // a collector would have to strip them.
    let logs = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    let span_scoped = std::env::var(tracing_subscriber::EnvFilter::DEFAULT_ENV)
        .is_ok_and(|directives| directives.contains('['));
    let env = env_filter();
    let lines = log_lines(span_scoped, env.max_level_hint());
    let logs: Box<dyn Layer<tracing_subscriber::Registry> + Send + Sync> = match format {
        LogFormat::Text => logs.with_filter(env).with_filter(lines).boxed(),
        // Fields at the top level of each object, next to `timestamp`, `level` and `message`.
        LogFormat::Json => logs
            .json()
            .flatten_event(true)
            .with_filter(env)
            .with_filter(lines)
            .boxed(),
    };
    let registry = tracing_subscriber::registry().with(logs);
    match traces {
        // Added only when it exists: an absent optional layer would say it wants every span.
        Some(traces) => registry
            .with(traces.layer().with_filter(env_filter()))
            .init(),
        None => registry.init(),
    }
}

/// What the log writer takes of what `RUST_LOG` lets through: events, except span events (a
/// stream's `first_token`, for traces only); spans only when a `RUST_LOG` directive is scoped to
/// one (`target[span]=level`), which needs the spans entered to know the scope. `max` is the most
/// verbose level `RUST_LOG` enables anywhere: as the hint, it lets every callsite above it be
/// disabled once, at registration, instead of checked at each call.
fn log_lines<S>(
    span_scoped: bool,
    max: Option<tracing_subscriber::filter::LevelFilter>,
) -> impl tracing_subscriber::layer::Filter<S> {
    let max = max.unwrap_or(tracing_subscriber::filter::LevelFilter::TRACE);
    tracing_subscriber::filter::filter_fn(move |meta| {
        (meta.is_event() || span_scoped)
            && meta.target() != tollgate_inference::telemetry::SPAN_EVENT_TARGET
    })
    .with_max_level_hint(max)
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway: the monolith (`--target all`, REST and gRPC in one process) or one
    /// target of a split deployment, dialing the others where `[services]` says.
    Serve {
        /// What this process runs.
        #[arg(long, value_enum, default_value = "all")]
        target: Target,
        /// Overrides server.http_addr.
        #[arg(long)]
        http_addr: Option<std::net::SocketAddr>,
        /// Overrides server.grpc_addr.
        #[arg(long)]
        grpc_addr: Option<std::net::SocketAddr>,
        /// Overrides server.internal_grpc_addr (billing target).
        #[arg(long)]
        internal_grpc_addr: Option<std::net::SocketAddr>,
        /// Overrides server.metrics_addr (inference, catalog and billing targets).
        #[arg(long)]
        metrics_addr: Option<std::net::SocketAddr>,
    },
    /// Manage API keys.
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
    /// Create or upgrade the database schema.
    Migrate,
}

#[derive(Subcommand)]
enum KeysCommand {
    /// Create a key; its secret is printed once, as the last line.
    Create {
        #[arg(long)]
        tier: String,
        #[arg(long)]
        name: Option<String>,
        /// When the key stops working: RFC 3339 (`2027-01-01T00:00:00Z`), a UTC date
        /// (`2027-01-01`, midnight) or Unix seconds.
        #[arg(long, value_parser = parse_expiry)]
        expires_at: Option<i64>,
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
        /// The key's id or shown prefix.
        key: String,
        #[arg(value_name = "USD")]
        amount: String,
    },
    /// Set a key's monthly budget in USD, or remove it with `none`.
    Budget {
        /// The key's id or shown prefix.
        key: String,
        #[arg(value_name = "USD|none")]
        amount: String,
    },
    /// List keys (never their secrets).
    List {
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
    },
    /// Revoke a key by id or by its shown prefix.
    Revoke { key: String },
    /// Give a key (by id or shown prefix) a new secret, printed once as the last line. The id,
    /// tier, limits and usage history stay; the old secret stops working.
    Rotate { key: String },
    /// Change a key's name, tier, expiry or limit overrides.
    Update {
        key: String,
        #[arg(long)]
        name: Option<String>,
        #[arg(long)]
        tier: Option<String>,
        /// RFC 3339, a UTC date or Unix seconds; a past time expires the key at once.
        #[arg(long, value_parser = parse_expiry, conflicts_with = "no_expiry")]
        expires_at: Option<i64>,
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

/// The Admin service over this process's database, reached in-process.
async fn admin_client(runtime: &Runtime) -> Result<AdminClient<GrpcTransport>, String> {
    let db = connect(runtime).await?;
    let service = AdminService::for_local_operator(db, runtime.tiers.clone());
    Ok(AdminClient::new(in_process(AdminServer::new(service))))
}

/// A failed Admin call in the CLI's words: a field is named by the flag (or argument) that set
/// it, from `flags` (`(param, flag)` pairs).
fn refusal(status: &tonic::Status, flags: &[(&str, &str)]) -> String {
    let err = ApiError::from_status(status);
    let flag = err
        .param
        .as_deref()
        .and_then(|param| flags.iter().find(|(p, _)| *p == param));
    match flag {
        Some((_, flag)) => format!("{flag}: {}", err.message),
        None => err.message,
    }
}

/// What `keys create` and `keys update` call their fields.
const KEY_FLAGS: &[(&str, &str)] = &[
    ("expires_at", "--expires-at"),
    ("rpm", "--rpm"),
    ("monthly_requests", "--monthly-requests"),
    ("balance_usd", "--balance"),
    ("monthly_budget_usd", "--monthly-budget"),
    ("key", "KEY"),
];
/// What `keys topup` and `keys budget` call their amount.
const AMOUNT_FLAGS: &[(&str, &str)] = &[
    ("amount_usd", "USD"),
    ("monthly_budget_usd", "USD"),
    ("key", "KEY"),
];

fn shown(key: Option<ManagedKey>) -> Result<ManagedKey, String> {
    key.ok_or_else(|| "the Admin service answered without the key".to_owned())
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
    let config = cli
        .config
        .ok_or("give the configuration file: --config FILE (or TOLLGATE_CONFIG)")?;
    let runtime = load(&config)?;
    let traces = match &cli.command {
        Command::Serve { target, .. } => {
            let name = clap::ValueEnum::to_possible_value(target)
                .map(|value| value.get_name().to_owned())
                .unwrap_or_default();
            Traces::install(&runtime.telemetry, &format!("tollgate-{name}"))?
        }
        _ => None,
    };
    init_logs(cli.log_format, traces.as_ref());
    let outcome = command(cli.command, runtime).await;
    if let Some(traces) = traces {
        // Blocks until the last batch is sent, which needs this runtime's workers.
        let _ = tokio::task::spawn_blocking(move || traces.shutdown()).await;
    }
    outcome
}

/// Runs one subcommand over the loaded configuration.
async fn command(command: Command, mut runtime: Runtime) -> Result<(), String> {
    match command {
        Command::Serve {
            target,
            http_addr,
            grpc_addr,
            internal_grpc_addr,
            metrics_addr,
        } => {
            let server = &mut runtime.server;
            for (addr, flag) in [
                (&mut server.http_addr, http_addr),
                (&mut server.grpc_addr, grpc_addr),
                (&mut server.internal_grpc_addr, internal_grpc_addr),
                (&mut server.metrics_addr, metrics_addr),
            ] {
                if let Some(flag) = flag {
                    *addr = flag;
                }
            }
            let listeners = Listeners::bind(target, &runtime.server).await?;
            let env = |name: &str| std::env::var(name).ok();
            server::serve(
                runtime,
                target,
                listeners,
                &env,
                shutdown_signal(),
                |addrs| {
                    let addrs: Vec<String> = addrs
                        .iter()
                        .map(|(kind, addr)| format!("{}={addr}", kind.name()))
                        .collect();
                    tracing::info!(serve_target = ?target, addrs = %addrs.join(" "), "tollgate is serving");
                    // The one line tools wait for.
                    println!("READY {}", addrs.join(" "));
                },
            )
            .await
            .map_err(|e| e.to_string())
        }
        Command::Migrate => {
            connect(&runtime).await?;
            println!("database is up to date");
            Ok(())
        }
        Command::Keys { command } => keys(&runtime, command).await,
    }
}

async fn keys(runtime: &Runtime, command: KeysCommand) -> Result<(), String> {
    let mut admin = admin_client(runtime).await?;
    let refresh_ms = runtime.server.key_refresh_ms;
    match command {
        KeysCommand::Create {
            tier,
            name,
            expires_at,
            rpm,
            monthly_requests,
            balance,
            monthly_budget,
        } => {
            let request = CreateKeyRequest {
                tier,
                name: name.unwrap_or_default(),
                expires_at,
                rpm,
                monthly_requests,
                balance_usd: balance,
                monthly_budget_usd: monthly_budget,
            };
            let issued = admin
                .create_key(LocalOperator::authorize(request))
                .await
                .map_err(|e| refusal(&e, KEY_FLAGS))?
                .into_inner();
            let key = shown(issued.key)?;
            println!(
                "created key {} ({}) in tier {}",
                key.id, key.prefix, key.tier
            );
            if let Some(balance) = &key.balance_usd {
                println!("prepaid balance: ${balance}");
            }
            if let Some(budget) = &key.monthly_budget_usd {
                println!("monthly budget: ${budget}");
            }
            println!("the secret is shown once; store it now:");
            println!("{}", issued.secret);
            Ok(())
        }
        KeysCommand::Topup { key, amount } => {
            let request = TopUpRequest {
                key,
                amount_usd: amount.clone(),
            };
            let key = admin
                .top_up(LocalOperator::authorize(request))
                .await
                .map_err(|e| refusal(&e, AMOUNT_FLAGS))?
                .into_inner();
            // Accepted, so exact: shown in its canonical form.
            let amount = parse_usd_picodollars(amount.trim()).map_or(amount, format_picodollars);
            println!(
                "topped up key {} ({}) by ${amount}; balance ${}",
                key.id,
                key.prefix,
                key.balance_usd.as_deref().unwrap_or("0")
            );
            Ok(())
        }
        KeysCommand::Budget { key, amount } => {
            let clear = amount.trim().eq_ignore_ascii_case("none");
            let request = UpdateKeyRequest {
                key,
                monthly_budget_usd: (!clear).then_some(amount),
                clear_monthly_budget: clear,
                ..UpdateKeyRequest::default()
            };
            let key = admin
                .update_key(LocalOperator::authorize(request))
                .await
                .map_err(|e| refusal(&e, AMOUNT_FLAGS))?
                .into_inner();
            match &key.monthly_budget_usd {
                Some(budget) => {
                    println!("key {} ({}): monthly budget ${budget}", key.id, key.prefix)
                }
                None => println!("key {} ({}): no monthly budget", key.id, key.prefix),
            }
            Ok(())
        }
        KeysCommand::List { json } => {
            let keys = admin
                .list_keys(LocalOperator::authorize(ListKeysRequest {}))
                .await
                .map_err(|e| refusal(&e, &[]))?
                .into_inner()
                .keys;
            if json {
                for key in &keys {
                    println!("{}", key_json(key, Times::Rfc3339));
                }
            } else {
                print!("{}", key_table(&keys));
            }
            Ok(())
        }
        KeysCommand::Revoke { key } => {
            let key = admin
                .revoke_key(LocalOperator::authorize(RevokeKeyRequest { key }))
                .await
                .map_err(|e| refusal(&e, KEY_FLAGS))?
                .into_inner();
            println!(
                "revoked key {} ({}); running gateways refuse it within {refresh_ms} ms",
                key.id, key.prefix
            );
            Ok(())
        }
        KeysCommand::Rotate { key } => {
            let issued = admin
                .rotate_key(LocalOperator::authorize(RotateKeyRequest { key }))
                .await
                .map_err(|e| refusal(&e, KEY_FLAGS))?
                .into_inner();
            let key = shown(issued.key)?;
            println!(
                "rotated key {} (now {}); running gateways refuse the old secret within {refresh_ms} ms",
                key.id, key.prefix
            );
            println!("the new secret is shown once; store it now:");
            println!("{}", issued.secret);
            Ok(())
        }
        KeysCommand::Update {
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
            let request = UpdateKeyRequest {
                key,
                name,
                tier,
                expires_at,
                clear_expires_at: no_expiry,
                rpm,
                clear_rpm: tier_rpm,
                monthly_requests,
                clear_monthly_requests: tier_monthly_requests,
                ..UpdateKeyRequest::default()
            };
            let untouched = UpdateKeyRequest {
                key: request.key.clone(),
                ..UpdateKeyRequest::default()
            };
            if request == untouched {
                return Err("nothing to update: give --name, --tier, --expires-at, --no-expiry, --rpm, --tier-rpm, --monthly-requests or --tier-monthly-requests".to_owned());
            }
            let key = admin
                .update_key(LocalOperator::authorize(request))
                .await
                .map_err(|e| refusal(&e, KEY_FLAGS))?
                .into_inner();
            println!(
                "updated key {} ({}); running gateways apply it within {refresh_ms} ms",
                key.id, key.prefix
            );
            Ok(())
        }
    }
}

fn main() -> ExitCode {
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

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::sync::{Arc, Mutex};

    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::{EnvFilter, Layer};

    use super::log_lines;

    /// What a log writer wrote.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl Captured {
        fn text(&self) -> String {
            String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
        }
    }

    /// A subscriber like the gateway's without an exporter: the text log writer alone.
    fn logging(directives: &str, span_scoped: bool) -> (impl tracing::Subscriber, Captured) {
        let captured = Captured::default();
        let writer = captured.clone();
        let logs = tracing_subscriber::fmt::layer()
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .with_filter(EnvFilter::new(directives))
            .with_filter(log_lines(
                span_scoped,
                EnvFilter::new(directives).max_level_hint(),
            ));
        (tracing_subscriber::registry().with(logs), captured)
    }

    /// One test for both filters: callsite interest is global to the process, so a second
    /// subscriber alive at the same time (another test's) could want the spans this one refuses.
    #[test]
    fn the_log_writer_takes_events_and_spans_only_for_a_span_scoped_directive() {
        let (subscriber, captured) = logging("info", false);
        tracing::subscriber::with_default(subscriber, || {
            let span = tracing::info_span!("HTTP request", http.route = "/v1/chat/completions");
            assert!(
                span.is_disabled(),
                "without an exporter no layer takes spans"
            );
            span.in_scope(|| {
                tracing::warn!(request_id = "chatcmpl-1", "upstream call failed");
                tracing::debug!("below the level");
                tracing::info!(
                    target: tollgate_inference::telemetry::SPAN_EVENT_TARGET,
                    "first_token"
                );
            });
        });
        let text = captured.text();
        assert!(text.contains("WARN"), "{text}");
        assert!(
            text.contains("upstream call failed request_id=\"chatcmpl-1\""),
            "{text}"
        );
        assert!(!text.contains("HTTP request"), "no span context: {text}");
        assert!(!text.contains("below the level"), "{text}");
        assert!(
            !text.contains("first_token"),
            "span events are for traces: {text}"
        );

        // An event a directive refuses (a driver's notice) must not take the next one with it.
        let (subscriber, captured) = logging("info,sqlx=warn,sea_orm=warn", false);
        tracing::subscriber::with_default(subscriber, || {
            tracing::info!(target: "sqlx::postgres::notice", "relation already exists");
            tracing::warn!(target: "tollgate_billing::service", released = 1, "released reservations");
        });
        let text = captured.text();
        assert!(!text.contains("relation already exists"), "{text}");
        assert!(text.contains("released reservations released=1"), "{text}");

        let (subscriber, captured) = logging("warn,[chat]=debug", true);
        tracing::subscriber::with_default(subscriber, || {
            tracing::debug!("outside the span");
            let span = tracing::info_span!("chat");
            assert!(!span.is_disabled(), "the directive needs the span entered");
            span.in_scope(|| tracing::debug!("inside the span"));
        });
        let text = captured.text();
        assert!(text.contains("inside the span"), "{text}");
        assert!(!text.contains("outside the span"), "{text}");
    }
}
