//! `mock-upstream [--addr 127.0.0.1:0] [--api-key KEY]`: serves the mock upstream until killed.
//! Prints exactly one line, `READY http=127.0.0.1:PORT`, once it listens.

use std::{io::Write, net::SocketAddr};

use clap::Parser;
use tollgate_e2e::mock_upstream::{self, MockConfig};

#[derive(Debug, Parser)]
#[command(about = "Mock OpenAI/DeepSeek chat completions upstream for Tollgate's tests")]
struct Args {
    /// Address to listen on; port 0 picks a free port.
    #[arg(long, default_value = "127.0.0.1:0")]
    addr: SocketAddr,
    /// Require `Authorization: Bearer KEY` on chat requests (an empty KEY requires nothing).
    #[arg(long, env = "MOCK_UPSTREAM_API_KEY")]
    api_key: Option<String>,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .init();
    let args = Args::parse();
    let handle = mock_upstream::spawn(MockConfig {
        api_key: args.api_key.filter(|k| !k.is_empty()),
        addr: Some(args.addr),
    })
    .await?;
    {
        let mut stdout = std::io::stdout().lock();
        writeln!(stdout, "READY http={}", handle.addr())?;
        stdout.flush()?;
    }
    tokio::signal::ctrl_c().await?;
    drop(handle);
    Ok(())
}
