//! `tollgate-bench`: `run` benchmarks the gateway against the floor; `profile` runs it under
//! callgrind and sums where the instructions go; `upstream` and `proxy` are the services a run
//! starts (each prints `READY http=ADDR` once it listens).

use std::{io::Write, net::SocketAddr, path::PathBuf, process::ExitCode, time::Duration};

use clap::{Parser, Subcommand};
use tollgate_bench::{Error, process, profile, proxy, run, upstream};

#[derive(Parser)]
#[command(
    name = "tollgate-bench",
    about = "Benchmarks Tollgate against a bare proxy"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the benchmark (`--smoke` for a few seconds).
    Run(run::RunArgs),
    /// Profile the gateway under callgrind over a fixed number of requests.
    Profile(profile::ProfileArgs),
    /// Summarise an existing callgrind output file by category.
    CallgrindSummary {
        file: PathBuf,
        /// Requests the profile covers, for the per-request figure.
        #[arg(long, default_value_t = 1)]
        requests: u64,
        #[arg(long, default_value_t = 40)]
        top: usize,
    },
    /// Serve the mock upstream.
    Upstream {
        #[arg(long, default_value = "127.0.0.1:0")]
        addr: SocketAddr,
        /// The longest a held stream is held.
        #[arg(long, default_value_t = 600)]
        hold_cap_secs: u64,
    },
    /// Serve the bare pass-through proxy in front of UPSTREAM.
    Proxy {
        #[arg(long, default_value = "127.0.0.1:0")]
        addr: SocketAddr,
        #[arg(long)]
        upstream: SocketAddr,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match execute(cli.command) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// One thread and one core each: the services and the load generator are all single-threaded,
/// so the floor is as cheap as hyper can make it.
fn runtime() -> Result<tokio::runtime::Runtime, Error> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}

fn ready(addr: SocketAddr) -> Result<(), Error> {
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "READY http={addr}")?;
    stdout.flush()?;
    Ok(())
}

fn execute(command: Command) -> Result<ExitCode, Error> {
    match command {
        Command::Upstream {
            addr,
            hold_cap_secs,
        } => runtime()?.block_on(async {
            let listener = tokio::net::TcpListener::bind(addr).await?;
            ready(listener.local_addr()?)?;
            upstream::serve(listener, Duration::from_secs(hold_cap_secs)).await;
            Ok(ExitCode::SUCCESS)
        }),
        Command::Proxy { addr, upstream } => runtime()?.block_on(async {
            let listener = tokio::net::TcpListener::bind(addr).await?;
            ready(listener.local_addr()?)?;
            proxy::serve(listener, upstream).await;
            Ok(ExitCode::SUCCESS)
        }),
        Command::Run(args) => bench(args),
        Command::Profile(args) => {
            let summary = runtime()?.block_on(profile::profile(&args))?;
            println!("{summary}");
            Ok(ExitCode::SUCCESS)
        }
        Command::CallgrindSummary {
            file,
            requests,
            top,
        } => {
            println!("{}", profile::summarise_file(&file, requests, top)?);
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn bench(args: run::RunArgs) -> Result<ExitCode, Error> {
    let plan = args.plan()?;
    if !plan.tollgate.is_file() {
        return Err(format!(
            "no tollgate binary at {} (build it: cargo build --release --bin tollgate, or pass --tollgate)",
            plan.tollgate.display()
        )
        .into());
    }
    let most_streams = plan.streams.iter().copied().max().unwrap_or(0);
    // Each held stream is a socket in the load generator and two in the proxy or gateway.
    let wanted = most_streams * 2 + 4096;
    let nofile = process::raise_nofile(wanted);
    let pinning = if args.no_pin {
        process::Pinning::disabled()
    } else {
        process::Pinning::detect()
    };
    pinning.pin_self_to_load_core()?;
    let mode = if args.smoke { "smoke" } else { "full" };
    let dir = tempfile::Builder::new()
        .prefix("tollgate-bench-")
        .tempdir()?;
    eprintln!(
        "tollgate-bench {mode}: {} (open files: {nofile}; run directory {})",
        plan.tollgate.display(),
        dir.path().display()
    );
    if nofile < wanted {
        eprintln!(
            "warning: only {nofile} open files allowed; {wanted} wanted for {most_streams} streams"
        );
    }
    let outcome = runtime()?.block_on(run::run(&plan, pinning, mode, dir.path()));
    let report = match outcome {
        Ok(report) => report,
        Err(e) => {
            let kept = dir.keep();
            return Err(format!("{e} (logs kept in {})", kept.display()).into());
        }
    };
    println!("{}", report.table());
    if let Some(out) = &args.out {
        if let Some(parent) = out.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(out, serde_json::to_string_pretty(&report)?)?;
        println!("JSON report: {}", out.display());
    }
    let failures = report.failures();
    if args.keep || failures > 0 {
        let kept: PathBuf = dir.keep();
        println!("run directory kept: {}", kept.display());
    }
    if failures > 0 {
        eprintln!("error: {failures} requests or streams failed; the figures are not valid");
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}
