//! One benchmark run: starts the upstream, the floor proxy and each gateway variant side by
//! side (pinned where the machine allows), runs every phase against every endpoint, and
//! returns the report. `--smoke` shrinks every phase to a few seconds in all.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use serde::Serialize;

use crate::{
    Error,
    client::{Endpoint, Shape},
    gateway::{Gateway, GatewayLaunch},
    load,
    process::{Launch, Pinning, Service},
    report::{DIRECT, FLOOR, Report},
    upstream,
};

/// The command line of `tollgate-bench run`.
#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// A few seconds in all, small N: checks that every path works (CI).
    #[arg(long)]
    pub smoke: bool,
    /// The `tollgate` binary under test.
    #[arg(long, default_value = "target/release/tollgate")]
    pub tollgate: PathBuf,
    /// Recorded requests per endpoint in the one-at-a-time phase [full 2000, smoke 30].
    #[arg(long)]
    pub requests: Option<u64>,
    /// Unrecorded requests per endpoint before it [full 200, smoke 5].
    #[arg(long)]
    pub warmup: Option<u64>,
    /// Connections of the maximum-throughput phase.
    #[arg(long, default_value_t = 64)]
    pub connections: usize,
    /// Seconds of each maximum-throughput run [full 5, smoke 0.5].
    #[arg(long)]
    pub saturate_secs: Option<f64>,
    /// Requests per second of the CPU phase [full 500, smoke 200].
    #[arg(long)]
    pub rate: Option<u64>,
    /// Seconds of each CPU run [full 6, smoke 0.5].
    #[arg(long)]
    pub rate_secs: Option<f64>,
    /// Idle streams held at once in the memory phase, comma-separated [full 5000,10000, smoke 50].
    #[arg(long, value_delimiter = ',')]
    pub streams: Option<Vec<u64>>,
    /// A gateway to run side by side: `LABEL` or `LABEL:KEY=VALUE,KEY=VALUE` with environment
    /// for it only, e.g. `nofsync:TOLLGATE__DATABASE__DURABILITY=process_crash`. In a value,
    /// `{upstream}` stands for the bench upstream's `host:port` (which also accepts OTLP trace
    /// exports: `traced:TOLLGATE__TELEMETRY__OTLP_ENDPOINT=http://{upstream}`), and
    /// `TOLLGATE_BENCH_BINARY=PATH` runs another `tollgate` binary for this variant (before and
    /// after a change, side by side against one floor).
    /// Repeatable; default one gateway labelled `tollgate`.
    #[arg(long)]
    pub variant: Vec<String>,
    /// Environment for every gateway (`KEY=VALUE`, e.g. a `TOLLGATE__SECTION__KEY` override).
    #[arg(long = "gateway-env")]
    pub gateway_env: Vec<String>,
    /// Where to write the JSON report.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Do not pin processes to cores.
    #[arg(long)]
    pub no_pin: bool,
    /// Keep the run's directory (configs, databases, logs) and print where it is.
    #[arg(long)]
    pub keep: bool,
}

/// The concrete numbers of a run, after defaults.
#[derive(Debug, Clone, Serialize)]
pub struct Plan {
    pub requests: u64,
    pub warmup: u64,
    pub connections: usize,
    pub saturate_secs: f64,
    pub rate: u64,
    pub rate_secs: f64,
    pub rate_connections: usize,
    pub streams: Vec<u64>,
    pub variants: Vec<Variant>,
    pub gateway_env: Vec<(String, String)>,
    pub tollgate: PathBuf,
}

/// One gateway process of the run.
#[derive(Debug, Clone, Serialize)]
pub struct Variant {
    pub label: String,
    pub env: Vec<(String, String)>,
}

impl RunArgs {
    pub fn plan(&self) -> Result<Plan, Error> {
        let pick = |value: Option<f64>, full: f64, smoke: f64| {
            value.unwrap_or(if self.smoke { smoke } else { full })
        };
        let variants = if self.variant.is_empty() {
            vec![Variant {
                label: "tollgate".into(),
                env: Vec::new(),
            }]
        } else {
            self.variant
                .iter()
                .map(|v| parse_variant(v))
                .collect::<Result<_, _>>()?
        };
        let mut labels: Vec<&str> = variants.iter().map(|v| v.label.as_str()).collect();
        labels.sort_unstable();
        labels.dedup();
        if labels.len() != variants.len() {
            return Err("two variants share a label".into());
        }
        Ok(Plan {
            requests: self.requests.unwrap_or(if self.smoke { 30 } else { 2000 }),
            warmup: self.warmup.unwrap_or(if self.smoke { 5 } else { 200 }),
            connections: self.connections.max(1),
            saturate_secs: pick(self.saturate_secs, 5.0, 0.5),
            rate: self
                .rate
                .unwrap_or(if self.smoke { 200 } else { 500 })
                .max(1),
            rate_secs: pick(self.rate_secs, 6.0, 0.5),
            rate_connections: 16,
            streams: self.streams.clone().unwrap_or_else(|| {
                if self.smoke {
                    vec![50]
                } else {
                    vec![5000, 10000]
                }
            }),
            variants,
            gateway_env: self
                .gateway_env
                .iter()
                .map(|kv| parse_env(kv))
                .collect::<Result<_, _>>()?,
            tollgate: self.tollgate.clone(),
        })
    }
}

fn parse_env(kv: &str) -> Result<(String, String), Error> {
    kv.split_once('=')
        .filter(|(k, _)| !k.is_empty())
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .ok_or_else(|| format!("`{kv}` is not KEY=VALUE").into())
}

fn parse_variant(spec: &str) -> Result<Variant, Error> {
    let (label, env) = spec.split_once(':').unwrap_or((spec, ""));
    if label.is_empty() || label == DIRECT || label == FLOOR || label.contains('/') {
        return Err(format!("`{label}` cannot label a gateway").into());
    }
    Ok(Variant {
        label: label.to_owned(),
        env: env
            .split(',')
            .filter(|kv| !kv.is_empty())
            .map(parse_env)
            .collect::<Result<_, _>>()?,
    })
}

/// `value` with `{upstream}` standing for the upstream's address.
fn with_upstream(value: &str, upstream: SocketAddr) -> String {
    value.replace(UPSTREAM_PLACEHOLDER, &upstream.to_string())
}

/// The variant setting naming the `tollgate` binary it runs instead of `--tollgate`.
const BINARY_SETTING: &str = "TOLLGATE_BENCH_BINARY";

/// The binary a variant's settings name, if any.
fn binary_of(env: &[(String, String)]) -> Option<PathBuf> {
    env.iter()
        .rev()
        .find(|(k, _)| k == BINARY_SETTING)
        .map(|(_, v)| PathBuf::from(v))
}

/// What a gateway setting writes for the bench upstream's `host:port`.
const UPSTREAM_PLACEHOLDER: &str = "{upstream}";

/// The services of a run, stopped together.
struct Services {
    upstream: Service,
    upstream_addr: SocketAddr,
    proxy: Service,
    gateways: Vec<Gateway>,
}

impl Services {
    async fn stop(self) {
        let grace = Duration::from_secs(10);
        for gateway in self.gateways {
            let _ = gateway.service.stop(grace).await;
        }
        let _ = self.proxy.stop(grace).await;
        let _ = self.upstream.stop(grace).await;
    }

    /// Every endpoint, direct first, then the floor, then each gateway's keys.
    fn endpoints(&self) -> Vec<(Endpoint, Option<u32>)> {
        let bare = |name: &str, addr: SocketAddr| Endpoint {
            name: name.to_owned(),
            addr,
            authorization: Some("Bearer sk-bench-upstream".into()),
            path: "/v1/chat/completions".into(),
            model: upstream::MODEL.into(),
            hold_path: format!("{}v1/chat/completions", upstream::HOLD_PREFIX),
            hold_model: upstream::MODEL.into(),
        };
        let mut all = vec![
            (bare(DIRECT, self.upstream_addr), None),
            (bare(FLOOR, self.proxy_addr()), Some(self.proxy.pid())),
        ];
        for gateway in &self.gateways {
            for endpoint in gateway.endpoints() {
                all.push((endpoint, Some(gateway.service.pid())));
            }
        }
        all
    }

    fn proxy_addr(&self) -> SocketAddr {
        self.proxy
            .ready_field("http")
            .ok()
            .and_then(|a| a.parse().ok())
            .unwrap_or(self.upstream_addr)
    }
}

/// Runs the whole benchmark; `dir` holds configs, databases and logs.
pub async fn run(plan: &Plan, pinning: Pinning, mode: &str, dir: &Path) -> Result<Report, Error> {
    let services = start(plan, pinning, dir).await?;
    let outcome = phases(plan, pinning, mode, &services).await;
    services.stop().await;
    outcome
}

async fn start(plan: &Plan, pinning: Pinning, dir: &Path) -> Result<Services, Error> {
    let me = std::env::current_exe()?;
    let core = |core: usize| pinning.enabled.then_some(core);
    let ready_timeout = Duration::from_secs(60);
    let upstream = Launch {
        name: "upstream",
        program: &me,
        args: vec!["upstream".into()],
        env: Vec::new(),
        core: core(pinning.load_core),
        log: dir.join("upstream.log"),
        wrapper: Vec::new(),
        ready_timeout,
    }
    .start()
    .await?;
    let upstream_addr: SocketAddr = upstream.ready_field("http")?.parse()?;
    let proxy = Launch {
        name: "proxy",
        program: &me,
        args: vec![
            "proxy".into(),
            "--upstream".into(),
            upstream_addr.to_string(),
        ],
        env: Vec::new(),
        core: core(pinning.gateway_core),
        log: dir.join("proxy.log"),
        wrapper: Vec::new(),
        ready_timeout,
    }
    .start()
    .await?;
    let mut gateways = Vec::new();
    for variant in &plan.variants {
        let env: Vec<(String, String)> = plan
            .gateway_env
            .iter()
            .chain(variant.env.iter())
            .map(|(k, v)| (k.clone(), with_upstream(v, upstream_addr)))
            .collect();
        let gateway_dir = dir.join(&variant.label);
        gateways.push(
            GatewayLaunch {
                tollgate: &binary_of(&env).unwrap_or_else(|| plan.tollgate.clone()),
                label: &variant.label,
                dir: &gateway_dir,
                upstream: upstream_addr,
                env: &env,
                core: core(pinning.gateway_core),
                wrapper: Vec::new(),
                ready_timeout,
            }
            .start()
            .await?,
        );
    }
    Ok(Services {
        upstream,
        upstream_addr,
        proxy,
        gateways,
    })
}

async fn phases(
    plan: &Plan,
    pinning: Pinning,
    mode: &str,
    services: &Services,
) -> Result<Report, Error> {
    let settings = serde_json::to_value(plan)?;
    let mut report = Report::new(mode, pinning, settings);
    let endpoints = services.endpoints();
    let all: Vec<Endpoint> = endpoints.iter().map(|(e, _)| e.clone()).collect();
    let shapes = [Shape::Json, Shape::Stream];

    for shape in shapes {
        eprintln!("-- one request at a time, {}", shape.name());
        let cap = Duration::from_secs(if mode == "smoke" { 30 } else { 300 });
        let results = load::sequential(&all, shape, plan.warmup, plan.requests, cap).await?;
        report.add_latency(shape, &results);
    }

    let saturate = Duration::from_secs_f64(plan.saturate_secs);
    let warm = saturate.min(Duration::from_secs(1)) / 2;
    for shape in shapes {
        for endpoint in &all {
            eprintln!(
                "-- maximum requests/s, {} via {}",
                shape.name(),
                endpoint.name
            );
            load::saturate(endpoint, shape, plan.connections, warm, u64::MAX).await?;
            let outcome =
                load::saturate(endpoint, shape, plan.connections, saturate, 100_000_000).await?;
            report.add_throughput(shape, &endpoint.name, plan.connections, &outcome);
        }
    }

    let rate_for = Duration::from_secs_f64(plan.rate_secs);
    for shape in shapes {
        for (endpoint, pid) in &endpoints {
            let Some(pid) = pid else { continue };
            eprintln!(
                "-- CPU at {}/s, {} via {}",
                plan.rate,
                shape.name(),
                endpoint.name
            );
            let outcome = load::fixed_rate(
                endpoint,
                shape,
                plan.rate,
                rate_for,
                plan.rate_connections,
                *pid,
            )
            .await?;
            report.add_cpu(shape, &endpoint.name, plan.rate, &outcome);
        }
    }

    let hold_cap = Duration::from_secs(if mode == "smoke" { 30 } else { 300 });
    // Each process's resident memory before its first hold: the allocator keeps the pages a
    // released phase freed, so a later phase of the same process (the other key, more streams)
    // is measured against this, not against its own start.
    let mut baselines: std::collections::HashMap<u32, u64> = std::collections::HashMap::new();
    for &streams in &plan.streams {
        for (endpoint, pid) in &endpoints {
            let Some(pid) = pid else { continue };
            eprintln!("-- {streams} idle streams held via {}", endpoint.name);
            let mut held = load::hold(
                endpoint,
                streams,
                256,
                *pid,
                services.upstream_addr,
                hold_cap,
            )
            .await?;
            held.rss_before_kib = *baselines.entry(*pid).or_insert(held.rss_before_kib);
            report.add_memory(&endpoint.name, &held);
        }
    }

    report.compute_ratios();
    report.notes.push(format!(
        "compare the ledger's durability settings side by side with --variant fsync \
         --variant nofsync:TOLLGATE__DATABASE__DURABILITY=process_crash. Gateway logs: {}",
        services
            .gateways
            .iter()
            .map(|g| g.log().display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    ));
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn variants_parse_with_their_environment() {
        let v = parse_variant("nofsync:TOLLGATE__A__B=false,X=1").unwrap();
        assert_eq!(v.label, "nofsync");
        assert_eq!(
            v.env,
            vec![
                ("TOLLGATE__A__B".to_owned(), "false".to_owned()),
                ("X".to_owned(), "1".to_owned())
            ]
        );
        assert_eq!(parse_variant("plain").unwrap().env, vec![]);
        let addr: SocketAddr = "127.0.0.1:9".parse().unwrap();
        assert_eq!(
            with_upstream("http://{upstream}/x", addr),
            "http://127.0.0.1:9/x"
        );
        let v = parse_variant("before:TOLLGATE_BENCH_BINARY=/tmp/t,X=1").unwrap();
        assert_eq!(binary_of(&v.env), Some(PathBuf::from("/tmp/t")));
        assert_eq!(binary_of(&[]), None);
        assert!(parse_variant("proxy").is_err());
        assert!(parse_variant("a:novalue").is_err());
    }
}
