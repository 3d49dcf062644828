//! `tollgate-bench profile`: runs the real gateway under `valgrind --tool=callgrind` with
//! instrumentation off, warms it up, switches instrumentation on (`callgrind_control -i on`)
//! for a fixed number of non-streamed and streamed requests (half with the prepaid key, half
//! with the unlimited one, one at a time), switches it off, stops the gateway and prints where
//! the instructions went (`callgrind.rs`). Instruction counts do not depend on how busy the
//! machine is, so the figures are stable where wall-clock ones are not.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use crate::{
    Error, callgrind,
    client::{Connection, Endpoint, Shape},
    gateway::{Gateway, GatewayLaunch},
    upstream,
};

/// The command line of `tollgate-bench profile`.
#[derive(Debug, clap::Args)]
pub struct ProfileArgs {
    /// The `tollgate` binary: a release build with debug symbols (`--profile profiling`).
    #[arg(long, default_value = "target/profiling/tollgate")]
    pub tollgate: PathBuf,
    /// Non-streamed requests profiled (and as many streamed ones).
    #[arg(long, default_value_t = 500)]
    pub requests: u64,
    /// Unprofiled requests of each shape first.
    #[arg(long, default_value_t = 20)]
    pub warmup: u64,
    /// Where the callgrind output and the summary go.
    #[arg(long, default_value = "target/profile")]
    pub out_dir: PathBuf,
    /// Environment for the gateway (`KEY=VALUE`), as for `run --gateway-env`.
    #[arg(long = "gateway-env")]
    pub gateway_env: Vec<String>,
    /// How many of the dearest functions to list.
    #[arg(long, default_value_t = 40)]
    pub top: usize,
}

/// Runs the profile and returns the summary text (also written to `OUT_DIR/summary.txt`).
pub async fn profile(args: &ProfileArgs) -> Result<String, Error> {
    if !args.tollgate.is_file() {
        return Err(format!(
            "no tollgate binary at {} (cargo build --profile profiling --bin tollgate)",
            args.tollgate.display()
        )
        .into());
    }
    std::fs::create_dir_all(&args.out_dir)?;
    let out_dir = std::fs::canonicalize(&args.out_dir)?;
    let output = out_dir.join("callgrind.out");
    let _ = std::fs::remove_file(&output);
    let env = args
        .gateway_env
        .iter()
        .map(|kv| {
            kv.split_once('=')
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .ok_or_else(|| Error::from(format!("`{kv}` is not KEY=VALUE")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let (upstream_addr, upstream_task) = upstream::spawn(
        SocketAddr::from(([127, 0, 0, 1], 0)),
        Duration::from_secs(60),
    )
    .await?;
    let run_dir = tempfile::Builder::new()
        .prefix("tollgate-profile-")
        .tempdir()?;
    let gateway = GatewayLaunch {
        tollgate: &args.tollgate,
        label: "tollgate",
        dir: run_dir.path(),
        upstream: upstream_addr,
        env: &env,
        core: None,
        wrapper: vec![
            "valgrind".into(),
            "--tool=callgrind".into(),
            "--instr-atstart=no".into(),
            format!("--callgrind-out-file={}", output.display()),
        ],
        ready_timeout: Duration::from_secs(600),
    }
    .start()
    .await?;
    let outcome = drive(&gateway, args).await;
    let pid = gateway.service.pid();
    // Whatever happened, instrumentation goes off before shutdown so that it is not counted.
    let off = callgrind_control(pid, "off").await;
    let log = gateway.log();
    gateway.service.stop(Duration::from_secs(300)).await?;
    upstream_task.abort();
    let requests = outcome.map_err(|e| format!("{e} (gateway log: {})", log.display()))?;
    off?;
    let text = tokio::fs::read_to_string(&output)
        .await
        .map_err(|e| format!("no callgrind output at {}: {e}", output.display()))?;
    let profile = callgrind::parse(&text)?;
    let summary = callgrind::summarise(&profile, args.top);
    let rendered = format!(
        "callgrind profile of {} ({} non-streamed + {} streamed requests, half prepaid, one at a time)\n{}",
        args.tollgate.display(),
        args.requests,
        args.requests,
        summary.render(requests)
    );
    std::fs::write(out_dir.join("summary.txt"), &rendered)?;
    Ok(rendered)
}

/// Warms up, then sends the profiled requests with instrumentation on; returns how many.
async fn drive(gateway: &Gateway, args: &ProfileArgs) -> Result<u64, Error> {
    let endpoints = gateway.endpoints();
    let mut connections = Vec::new();
    for endpoint in &endpoints {
        connections.push(Connection::open(endpoint.addr).await?);
    }
    for shape in [Shape::Json, Shape::Stream] {
        send(&endpoints, &mut connections, shape, args.warmup).await?;
    }
    callgrind_control(gateway.service.pid(), "on").await?;
    let mut sent = 0;
    for shape in [Shape::Json, Shape::Stream] {
        sent += send(&endpoints, &mut connections, shape, args.requests).await?;
    }
    Ok(sent)
}

/// `count` requests of one shape, alternating between the endpoints.
async fn send(
    endpoints: &[Endpoint],
    connections: &mut [Connection],
    shape: Shape,
    count: u64,
) -> Result<u64, Error> {
    for i in 0..count {
        let k = (i as usize) % endpoints.len();
        connections[k]
            .exchange(endpoints[k].request(shape, false))
            .await
            .map_err(|e| {
                format!(
                    "{} request {i} via {}: {e}",
                    shape.name(),
                    endpoints[k].name
                )
            })?;
    }
    Ok(count)
}

/// `callgrind_control -i on|off PID`.
async fn callgrind_control(pid: u32, state: &str) -> Result<(), Error> {
    let output = tokio::time::timeout(
        Duration::from_secs(60),
        tokio::process::Command::new("callgrind_control")
            .args(["-i", state, &pid.to_string()])
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true)
            .output(),
    )
    .await
    .map_err(|_| "callgrind_control took over 60 s")??;
    if !output.status.success() {
        return Err(format!(
            "callgrind_control -i {state} {pid} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        )
        .into());
    }
    Ok(())
}

/// Summarises an existing callgrind output file.
pub fn summarise_file(path: &Path, requests: u64, top: usize) -> Result<String, Error> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let profile = callgrind::parse(&text)?;
    Ok(callgrind::summarise(&profile, top).render(requests))
}
