//! The configuration file, in two phases: [`Config`] is what the TOML says (unknown keys are
//! errors naming their path), [`Runtime`] is the validated form the process runs on. Values can be
//! overridden from the environment as `TOLLGATE__SECTION__KEY`; the environment is passed in, so
//! tests never touch the process's own.

use std::net::SocketAddr;

use figment::{
    Figment,
    providers::{Format, Serialized, Toml},
};
use serde::{Deserialize, Serialize};
use tollgate_billing::config::{DatabaseConfig, RedisConfig, TierConfig};
use tollgate_catalog::{AliasConfig, Catalog, ModelConfig};
use tollgate_inference::{
    ClientDisconnect, ClientPolicy, ImagesConfig, ProviderConfig, RoutingConfig,
};

use crate::cors::AllowedOrigins;

/// Prefix of environment overrides: `TOLLGATE__SERVER__HTTP_ADDR=0.0.0.0:8080`.
pub const ENV_PREFIX: &str = "TOLLGATE__";

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    #[serde(default = "default_http_addr")]
    pub http_addr: SocketAddr,
    #[serde(default = "default_grpc_addr")]
    pub grpc_addr: SocketAddr,
    /// The billing target's internal listener: `tollgate.v1.Metering` (peer token required) and
    /// gRPC health. Never the public listener.
    #[serde(default = "default_internal_grpc_addr")]
    pub internal_grpc_addr: SocketAddr,
    /// The inference, catalog and billing targets' HTTP listener for `/metrics`, `/livez` and
    /// `/readyz` (the rest and all targets answer them on `http_addr`).
    #[serde(default = "default_metrics_addr")]
    pub metrics_addr: SocketAddr,
    /// Larger request bodies are refused with 400.
    #[serde(default = "default_max_body_bytes")]
    pub max_body_bytes: usize,
    /// The largest gRPC message (a request or an answer) every server and in-process client
    /// carries; at least `max_body_bytes`. A non-streaming answer over it fails (502) before it is
    /// settled.
    #[serde(default = "default_max_message_bytes")]
    pub max_message_bytes: usize,
    /// How long a shutdown waits for in-flight requests.
    #[serde(default = "default_shutdown_grace_secs")]
    pub shutdown_grace_secs: u64,
    /// How often a process re-reads keys changed by another process (revocations).
    #[serde(default = "default_key_refresh_ms")]
    pub key_refresh_ms: u64,
    /// A connection must send a request's headers within this time (its first request's, and
    /// each later one's once it is idle): slow or silent connections are closed.
    #[serde(default = "default_header_read_timeout_secs")]
    pub header_read_timeout_secs: u64,
    /// A request body must arrive whole within this time (400 otherwise).
    #[serde(default = "default_body_read_timeout_secs")]
    pub body_read_timeout_secs: u64,
    /// Open connections per listener; connections over it are closed at once.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// Requests being handled at once on the REST listener (a stream counts until its response
    /// starts); over it: 503 `service_unavailable` with `Retry-After`.
    #[serde(default = "default_max_in_flight_requests")]
    pub max_in_flight_requests: usize,
    /// Streams at once on one HTTP/2 connection (REST and gRPC listeners).
    #[serde(default = "default_max_concurrent_streams")]
    pub max_concurrent_streams: u32,
    /// Interval of the SSE keep-alive comments sent while an upstream is silent.
    #[serde(default = "default_sse_keep_alive_secs")]
    pub sse_keep_alive_secs: u64,
    /// Requests a minute per client address to the management routes (`/admin`, usage,
    /// subscription); over it: 429 with `Retry-After`.
    #[serde(default = "default_management_rpm")]
    pub management_rpm: u32,

    /// What a stream does when its client disconnects or stops reading: `cancel` (default)
    /// closes the upstream at once and settles the prompt plus what was relayed, marked
    /// estimated; `finish` reads the upstream to its end and settles its exact count.
    #[serde(default)]
    pub on_client_disconnect: ClientDisconnect,
    /// A send to a streaming client that waits longer than this (a reader that stopped
    /// reading) means the client left.
    #[serde(default = "default_client_stall_timeout_secs")]
    pub client_stall_timeout_secs: u64,
    /// Origins browsers may call the REST routes and the grpc-web API from: `[]` (the default:
    /// same-origin only), `["*"]` (any), or exact origins such as `"https://app.example.com"`.
    #[serde(default = "default_cors_allowed_origins")]
    pub cors_allowed_origins: AllowedOrigins,
}

fn default_client_stall_timeout_secs() -> u64 {
    30
}

impl ServerConfig {
    /// How streams treat their clients (`on_client_disconnect`, `client_stall_timeout_secs`).
    pub fn client_policy(&self) -> ClientPolicy {
        ClientPolicy {
            on_disconnect: self.on_client_disconnect,
            stall_timeout: std::time::Duration::from_secs(self.client_stall_timeout_secs),
        }
    }
}

fn default_http_addr() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8080))
}

fn default_grpc_addr() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 50051))
}

fn default_internal_grpc_addr() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 50052))
}

fn default_metrics_addr() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 9090))
}

fn default_max_body_bytes() -> usize {
    4 * 1024 * 1024
}

fn default_max_message_bytes() -> usize {
    32 * 1024 * 1024
}

fn default_shutdown_grace_secs() -> u64 {
    30
}

fn default_key_refresh_ms() -> u64 {
    1000
}

fn default_header_read_timeout_secs() -> u64 {
    10
}

fn default_body_read_timeout_secs() -> u64 {
    30
}

fn default_max_connections() -> usize {
    10_000
}

fn default_max_in_flight_requests() -> usize {
    1_000
}

fn default_max_concurrent_streams() -> u32 {
    200
}

fn default_sse_keep_alive_secs() -> u64 {
    15
}

fn default_management_rpm() -> u32 {
    300
}

fn default_cors_allowed_origins() -> AllowedOrigins {
    AllowedOrigins::None
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            http_addr: default_http_addr(),
            grpc_addr: default_grpc_addr(),
            internal_grpc_addr: default_internal_grpc_addr(),
            metrics_addr: default_metrics_addr(),
            max_body_bytes: default_max_body_bytes(),
            max_message_bytes: default_max_message_bytes(),
            shutdown_grace_secs: default_shutdown_grace_secs(),
            key_refresh_ms: default_key_refresh_ms(),
            header_read_timeout_secs: default_header_read_timeout_secs(),
            body_read_timeout_secs: default_body_read_timeout_secs(),
            max_connections: default_max_connections(),
            max_in_flight_requests: default_max_in_flight_requests(),
            max_concurrent_streams: default_max_concurrent_streams(),
            sse_keep_alive_secs: default_sse_keep_alive_secs(),
            management_rpm: default_management_rpm(),
            on_client_disconnect: ClientDisconnect::default(),
            client_stall_timeout_secs: default_client_stall_timeout_secs(),
            cors_allowed_origins: default_cors_allowed_origins(),
        }
    }
}

/// The `[admin]` section: where the admin token comes from. No token, no Admin API.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    /// The environment variable holding the admin token (`TOLLGATE_ADMIN_TOKEN`). Unset: the
    /// Admin gRPC service and the `/admin` routes refuse every call.
    #[serde(default)]
    pub token_env: Option<String>,
}

/// The `[services]` section: where the other targets of a split deployment are, each as one
/// `http://host:port` or a list of them (its replicas); a host that is a DNS name stands for every
/// address it resolves to (a Kubernetes headless Service). Calls are balanced per request over
/// the replicas that accept connections. A target dials only what it calls: rest dials inference,
/// catalog and billing (Billing and Admin); inference dials catalog and metering; billing dials
/// catalog (for prices). The monolith (`--target all`) dials nothing and ignores this section.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServicesConfig {
    #[serde(default)]
    pub inference: Option<ServiceUrls>,
    #[serde(default)]
    pub catalog: Option<ServiceUrls>,
    /// The billing target's public listener (`tollgate.v1.Billing`, `tollgate.v1.Admin`).
    #[serde(default)]
    pub billing: Option<ServiceUrls>,
    /// The billing target's internal listener (`tollgate.v1.Metering`).
    #[serde(default)]
    pub metering: Option<ServiceUrls>,
    /// The environment variable holding the shared peer token that Metering demands of its
    /// callers (`TOLLGATE_INTERNAL_TOKEN`); the billing and inference targets need it.
    #[serde(default)]
    pub internal_token_env: Option<String>,
    /// How often the services' names are re-resolved and their replicas re-probed (a call that
    /// fails to connect asks sooner): how soon a new replica takes calls.
    #[serde(default = "default_resolve_interval_secs")]
    pub resolve_interval_secs: u64,
}

fn default_resolve_interval_secs() -> u64 {
    tollgate::transport::DEFAULT_RESOLVE_INTERVAL.as_secs()
}

impl Default for ServicesConfig {
    fn default() -> Self {
        Self {
            inference: None,
            catalog: None,
            billing: None,
            metering: None,
            internal_token_env: None,
            resolve_interval_secs: default_resolve_interval_secs(),
        }
    }
}

/// Where one service is: one URL, or a list of URLs (static replicas).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ServiceUrls {
    One(String),
    Replicas(Vec<String>),
}

impl ServiceUrls {
    /// Every URL given.
    pub fn urls(&self) -> &[String] {
        match self {
            Self::One(url) => std::slice::from_ref(url),
            Self::Replicas(urls) => urls,
        }
    }
}

/// The `[telemetry]` section: how the process reports what it does (metrics on `/metrics`,
/// traces over OTLP).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TelemetryConfig {
    /// Adds a `key` label (the key id) to `tollgate_requests_total`, `tollgate_tokens_total` and
    /// `tollgate_cost_usd_total`: one series per key and model, so off by default.
    #[serde(default)]
    pub per_key_labels: bool,
    /// The OTLP/HTTP (protobuf) collector's base URL, e.g. `http://collector:4318`; spans go to
    /// `<otlp_endpoint>/v1/traces`. Unset: no trace is recorded nor exported.
    #[serde(default)]
    pub otlp_endpoint: Option<String>,
    /// The share of new traces kept, 0.0 to 1.0; a caller's sampled `traceparent` decides for
    /// its own trace (parent-based).
    #[serde(default = "default_sampling_ratio")]
    pub sampling_ratio: f64,
    /// The traces' `service.name`; `tollgate-<target>` (`tollgate-all`, `tollgate-rest`, ...)
    /// when unset.
    #[serde(default)]
    pub service_name: Option<String>,
    /// Sends the request's W3C trace context (`traceparent`, `tracestate`) to the upstream
    /// provider too, so a provider that traces can join the gateway's trace. Off by default: it
    /// tells a third party the gateway's trace ids. Needs `otlp_endpoint` (refused at load
    /// without it).
    #[serde(default)]
    pub propagate_upstream: bool,
}

fn default_sampling_ratio() -> f64 {
    1.0
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        Self {
            per_key_labels: false,
            otlp_endpoint: None,
            sampling_ratio: default_sampling_ratio(),
            service_name: None,
            propagate_upstream: false,
        }
    }
}

/// The configuration file as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub server: ServerConfig,
    #[serde(default)]
    pub database: DatabaseConfig,
    /// Shared limits for replicas; in-memory limits when absent.
    #[serde(default)]
    pub redis: Option<RedisConfig>,
    #[serde(default)]
    pub providers: Vec<ProviderConfig>,
    #[serde(default)]
    pub models: Vec<ModelConfig>,
    #[serde(default)]
    pub aliases: Vec<AliasConfig>,
    #[serde(default)]
    pub tiers: Vec<TierConfig>,
    /// How the gateway fetches image URLs for providers that only take image bytes (Gemini).
    #[serde(default)]
    pub images: ImagesConfig,
    #[serde(default)]
    pub admin: AdminConfig,
    #[serde(default)]
    pub services: ServicesConfig,
    #[serde(default)]
    pub telemetry: TelemetryConfig,
    /// Retries and cooldown of model deployments (`services/inference/src/routing.rs`).
    #[serde(default)]
    pub routing: RoutingConfig,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("invalid configuration: {0}")]
    Parse(#[from] Box<figment::Error>),
    #[error("invalid configuration: {0}")]
    Catalog(#[from] tollgate_catalog::CatalogError),
    #[error("invalid configuration: {0}")]
    Tiers(#[from] tollgate_billing::config::ConfigError),
    #[error("invalid configuration: {field}: {message}")]
    Invalid { field: String, message: String },
}

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Runtime {
    pub server: ServerConfig,
    pub database: DatabaseConfig,
    pub redis: Option<RedisConfig>,
    pub providers: Vec<ProviderConfig>,
    pub catalog: Catalog,
    pub tiers: tollgate_billing::Tiers,
    pub images: ImagesConfig,
    pub admin: AdminConfig,
    pub services: ServicesConfig,
    pub telemetry: TelemetryConfig,
    pub routing: RoutingConfig,
}

impl Config {
    /// Reads `path` and applies `TOLLGATE__…` overrides from `env`.
    pub fn load(
        path: &str,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::from_toml(&text, env)
    }

    pub fn from_toml(
        text: &str,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        // Figment's Env provider reads the process environment; the overrides are collected
        // from the given pairs instead and merged as one nested dictionary.
        let mut overrides = figment::value::Dict::new();
        for (key, value) in env {
            let Some(path) = key.strip_prefix(ENV_PREFIX) else {
                continue;
            };
            let parts: Vec<String> = path.split("__").map(str::to_lowercase).collect();
            // Parsed as figment parses environment values: numbers, booleans, arrays, strings.
            let value = value
                .parse::<figment::value::Value>()
                .unwrap_or_else(|never| match never {});
            insert_path(&mut overrides, &parts, value);
        }
        Figment::new()
            .merge(Serialized::defaults(ServerSection::default()))
            .merge(Toml::string(text))
            .merge(Serialized::globals(overrides))
            .extract()
            .map_err(|e| ConfigError::Parse(Box::new(e)))
    }

    /// Checks everything that can be wrong and builds the runtime form.
    pub fn validate(self) -> Result<Runtime, ConfigError> {
        let ratio = self.telemetry.sampling_ratio;
        if !(0.0..=1.0).contains(&ratio) {
            return Err(ConfigError::Invalid {
                field: "telemetry.sampling_ratio".to_owned(),
                message: format!("{ratio} is not between 0.0 and 1.0"),
            });
        }
        if let Some(url) = &self.telemetry.otlp_endpoint
            && !(url.starts_with("http://") || url.starts_with("https://"))
        {
            return Err(ConfigError::Invalid {
                field: "telemetry.otlp_endpoint".to_owned(),
                message: format!("{url:?} is not an http(s) URL"),
            });
        }
        if self.telemetry.propagate_upstream && self.telemetry.otlp_endpoint.is_none() {
            return Err(ConfigError::Invalid {
                field: "telemetry.propagate_upstream".to_owned(),
                message: "needs telemetry.otlp_endpoint: without it no trace is recorded, so \
                          there is no trace context to send"
                    .to_owned(),
            });
        }
        let mut names = std::collections::HashSet::new();
        for (i, p) in self.providers.iter().enumerate() {
            if p.name.trim().is_empty() || !names.insert(p.name.as_str()) {
                return Err(ConfigError::Invalid {
                    field: format!("providers[{i}].name"),
                    message: format!("provider name {:?} is empty or used twice", p.name),
                });
            }
            if !(p.base_url.starts_with("http://") || p.base_url.starts_with("https://")) {
                return Err(ConfigError::Invalid {
                    field: format!("providers[{i}].base_url"),
                    message: format!("{:?} is not an http(s) URL", p.base_url),
                });
            }
        }
        for (field, value) in [
            ("server.max_body_bytes", self.server.max_body_bytes as u64),
            (
                "server.header_read_timeout_secs",
                self.server.header_read_timeout_secs,
            ),
            (
                "server.body_read_timeout_secs",
                self.server.body_read_timeout_secs,
            ),
            ("server.max_connections", self.server.max_connections as u64),
            (
                "server.max_in_flight_requests",
                self.server.max_in_flight_requests as u64,
            ),
            (
                "server.max_concurrent_streams",
                u64::from(self.server.max_concurrent_streams),
            ),
            (
                "server.sse_keep_alive_secs",
                self.server.sse_keep_alive_secs,
            ),
            (
                "server.client_stall_timeout_secs",
                self.server.client_stall_timeout_secs,
            ),
        ] {
            if value == 0 {
                return Err(ConfigError::Invalid {
                    field: field.to_owned(),
                    message: "must be at least 1".to_owned(),
                });
            }
        }
        if self.server.max_message_bytes < self.server.max_body_bytes {
            return Err(ConfigError::Invalid {
                field: "server.max_message_bytes".to_owned(),
                message: "must be at least server.max_body_bytes".to_owned(),
            });
        }
        for (field, value) in [
            ("images.max_bytes", self.images.max_bytes),
            ("images.timeout_secs", self.images.timeout_secs),
            ("images.max_per_request", self.images.max_per_request as u64),
            ("images.max_total_bytes", self.images.max_total_bytes),
            (
                "images.fetch_concurrency",
                self.images.fetch_concurrency as u64,
            ),
        ] {
            if value == 0 {
                return Err(ConfigError::Invalid {
                    field: field.to_owned(),
                    message: "must be at least 1".to_owned(),
                });
            }
        }
        let provider_names: Vec<&str> = self.providers.iter().map(|p| p.name.as_str()).collect();
        let catalog = Catalog::new(&self.models, &self.aliases, &provider_names)?;
        for (i, tier) in self.tiers.iter().enumerate() {
            for (j, id) in tier.models.iter().flatten().enumerate() {
                if catalog.resolve(id).is_none() {
                    return Err(ConfigError::Invalid {
                        field: format!("tiers[{i}].models[{j}]"),
                        message: format!("{id:?} is neither a model nor an alias"),
                    });
                }
            }
        }
        if let Some(name) = &self.admin.token_env
            && name.trim().is_empty()
        {
            return Err(ConfigError::Invalid {
                field: "admin.token_env".to_owned(),
                message: "must name an environment variable".to_owned(),
            });
        }
        for (field, url) in [
            ("services.inference", &self.services.inference),
            ("services.catalog", &self.services.catalog),
            ("services.billing", &self.services.billing),
            ("services.metering", &self.services.metering),
        ] {
            let urls = url.as_ref().map_or(&[][..], ServiceUrls::urls);
            if url.is_some() && urls.is_empty() {
                return Err(ConfigError::Invalid {
                    field: field.to_owned(),
                    message: "give at least one http://host:port".to_owned(),
                });
            }
            for url in urls {
                tollgate::transport::dial_check(url).map_err(|e| ConfigError::Invalid {
                    field: field.to_owned(),
                    message: e.to_string(),
                })?;
            }
        }
        if self.services.resolve_interval_secs == 0 {
            return Err(ConfigError::Invalid {
                field: "services.resolve_interval_secs".to_owned(),
                message: "must be at least 1".to_owned(),
            });
        }
        if let Some(name) = &self.services.internal_token_env
            && name.trim().is_empty()
        {
            return Err(ConfigError::Invalid {
                field: "services.internal_token_env".to_owned(),
                message: "must name an environment variable".to_owned(),
            });
        }
        for (field, value) in [
            ("routing.max_attempts", self.routing.max_attempts),
            ("routing.cooldown_failures", self.routing.cooldown_failures),
        ] {
            if value == 0 {
                return Err(ConfigError::Invalid {
                    field: field.to_owned(),
                    message: "must be at least 1".to_owned(),
                });
            }
        }
        let tiers = tollgate_billing::Tiers::new(self.tiers)?;
        Ok(Runtime {
            server: self.server,
            database: self.database,
            redis: self.redis,
            providers: self.providers,
            catalog,
            tiers,
            images: self.images,
            admin: self.admin,
            services: self.services,
            telemetry: self.telemetry,
            routing: self.routing,
        })
    }
}

/// Defaults for `[server]`, so an override of one key keeps the others' defaults.
#[derive(Default, Serialize)]
struct ServerSection {
    server: ServerConfig,
}

fn insert_path(dict: &mut figment::value::Dict, path: &[String], value: figment::value::Value) {
    match path {
        [] => {}
        [last] => {
            dict.insert(last.clone(), value);
        }
        [first, rest @ ..] => {
            let entry = dict
                .entry(first.clone())
                .or_insert_with(|| figment::value::Dict::new().into());
            if let figment::value::Value::Dict(_, inner) = entry {
                insert_path(inner, rest, value);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
[[providers]]
name = "deepseek"
kind = "deepseek"
base_url = "https://api.deepseek.com"
api_key_env = "DEEPSEEK_API_KEY"

[[models]]
id = "deepseek-v4-flash"
provider = "deepseek"
context_length = 1000000
max_output_tokens = 384000
input_price = 0.22
cached_input_price = 0.005
output_price = 0.44
thinking = "optional"

[[tiers]]
name = "basic"
rpm = 10
monthly_requests = 1000
"#;

    #[test]
    fn example_config_is_valid() {
        let text = include_str!("../../examples/tollgate.toml");
        let runtime = Config::from_toml(text, []).unwrap().validate().unwrap();
        let ids: Vec<_> = runtime.catalog.models().map(|m| m.id.clone()).collect();
        for id in [
            "deepseek-v4-flash",
            "deepseek-v4-pro",
            "deepseek-chat",
            "deepseek-reasoner",
            "gpt-4o",
            "gpt-4o-mini",
            "gemini-2.5-flash",
        ] {
            assert!(ids.iter().any(|i| i == id), "{id} missing from {ids:?}");
        }
        assert_eq!(
            runtime
                .catalog
                .resolve("deepseek-reasoner")
                .unwrap()
                .thinking_override,
            Some(true)
        );
    }

    #[test]
    fn defaults_and_env_overrides_apply() {
        let c = Config::from_toml(MINIMAL, []).unwrap();
        assert_eq!(c.server.http_addr, default_http_addr());
        assert_eq!(c.database.url, "sqlite://data/tollgate.db");
        let env = [
            (
                "TOLLGATE__SERVER__HTTP_ADDR".to_owned(),
                "0.0.0.0:9000".to_owned(),
            ),
            (
                "TOLLGATE__DATABASE__URL".to_owned(),
                "sqlite://x.db".to_owned(),
            ),
            ("OTHER".to_owned(), "ignored".to_owned()),
        ];
        let c = Config::from_toml(MINIMAL, env).unwrap();
        assert_eq!(c.server.http_addr.to_string(), "0.0.0.0:9000");
        assert_eq!(c.server.grpc_addr, default_grpc_addr());
        assert_eq!(c.database.url, "sqlite://x.db");
        assert!(c.redis.is_none());
        let c = Config::from_toml(
            &format!("{MINIMAL}\n[redis]\nurl = \"redis://127.0.0.1:6379\""),
            [],
        )
        .unwrap();
        let redis = c.redis.unwrap();
        assert_eq!(redis.url, "redis://127.0.0.1:6379");
        assert_eq!(redis.key_prefix, "tollgate");
        let e = Config::from_toml(&format!("{MINIMAL}\n[redis]\nurl = \"x\"\nport = 1"), [])
            .unwrap_err()
            .to_string();
        assert!(e.contains("port"), "{e}");
    }

    #[test]
    fn cors_origins_default_to_none_and_are_checked_where_they_are_read() {
        let c = Config::from_toml(MINIMAL, []).unwrap();
        assert_eq!(c.server.cors_allowed_origins, AllowedOrigins::None);
        let c = Config::from_toml(
            MINIMAL,
            [(
                "TOLLGATE__SERVER__CORS_ALLOWED_ORIGINS".to_owned(),
                r#"["https://app.example.com"]"#.to_owned(),
            )],
        )
        .unwrap();
        assert!(
            matches!(c.server.cors_allowed_origins, AllowedOrigins::Exact(ref o) if o.len() == 1)
        );
        let e = Config::from_toml(
            &format!("[server]\ncors_allowed_origins = [\"https://app.example.com/\"]\n{MINIMAL}"),
            [],
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("cors_allowed_origins"), "{e}");
    }

    #[test]
    fn the_telemetry_section_exports_no_trace_by_default_and_is_checked() {
        let telemetry = Config::from_toml(MINIMAL, []).unwrap().telemetry;
        assert_eq!(telemetry.otlp_endpoint, None);
        assert_eq!(telemetry.sampling_ratio, 1.0);
        assert_eq!(telemetry.service_name, None);
        let traced = format!(
            "{MINIMAL}\n[telemetry]\notlp_endpoint = \"http://collector:4318\"\nsampling_ratio = 0.01\nservice_name = \"edge\""
        );
        let telemetry = Config::from_toml(&traced, [])
            .unwrap()
            .validate()
            .unwrap()
            .telemetry;
        assert_eq!(
            telemetry.otlp_endpoint.as_deref(),
            Some("http://collector:4318")
        );
        assert_eq!(telemetry.sampling_ratio, 0.01);
        assert_eq!(telemetry.service_name.as_deref(), Some("edge"));
        for (bad, field) in [
            ("sampling_ratio = 1.5", "telemetry.sampling_ratio"),
            ("sampling_ratio = -0.1", "telemetry.sampling_ratio"),
            (
                "otlp_endpoint = \"collector:4318\"",
                "telemetry.otlp_endpoint",
            ),
            ("propagate_upstream = true", "telemetry.propagate_upstream"),
        ] {
            let e = Config::from_toml(&format!("{MINIMAL}\n[telemetry]\n{bad}"), [])
                .unwrap()
                .validate()
                .unwrap_err()
                .to_string();
            assert!(e.contains(field), "{bad}: {e}");
        }
    }

    #[test]
    fn the_images_section_has_safe_defaults_and_is_checked() {
        let runtime = Config::from_toml(MINIMAL, []).unwrap().validate().unwrap();
        assert_eq!(runtime.images, ImagesConfig::default());
        assert_eq!(runtime.images.max_bytes, 20 * 1024 * 1024);
        assert_eq!(runtime.images.timeout_secs, 10);
        assert!(!runtime.images.allow_private_networks);
        let c = Config::from_toml(
            &format!("{MINIMAL}\n[images]\nallow_private_networks = true\nmax_bytes = 10"),
            [],
        )
        .unwrap();
        assert!(c.images.allow_private_networks && c.images.max_bytes == 10);
        let e = Config::from_toml(&format!("{MINIMAL}\n[images]\nmax_byte = 1"), [])
            .unwrap_err()
            .to_string();
        assert!(e.contains("max_byte"), "{e}");
        let e = Config::from_toml(&format!("{MINIMAL}\n[images]\ntimeout_secs = 0"), [])
            .unwrap()
            .validate()
            .unwrap_err()
            .to_string();
        assert!(e.contains("images.timeout_secs"), "{e}");
    }

    #[test]
    fn errors_name_the_field() {
        let e = Config::from_toml(&format!("{MINIMAL}\n[server]\nhttp_adr = \"x\""), [])
            .unwrap_err()
            .to_string();
        assert!(e.contains("http_adr"), "{e}");
        let e = Config::from_toml(&MINIMAL.replace("0.22", "\"abc\""), [])
            .unwrap_err()
            .to_string();
        assert!(e.contains("input_price"), "{e}");
        let e = Config::from_toml(
            &MINIMAL.replace("provider = \"deepseek\"", "provider = \"x\""),
            [],
        )
        .unwrap()
        .validate()
        .unwrap_err()
        .to_string();
        assert!(e.contains("models[0].provider"), "{e}");
        let e = Config::from_toml(
            &MINIMAL.replace(
                "monthly_requests = 1000",
                "monthly_requests = 1000\nmodels = [\"deepseek-v4-flash\", \"gpt-5\"]",
            ),
            [],
        )
        .unwrap()
        .validate()
        .unwrap_err()
        .to_string();
        assert!(e.contains("tiers[0].models[1]"), "{e}");
        let e = Config::from_toml(&format!("{MINIMAL}\n[admin]\ntoken_env = \"\""), [])
            .unwrap()
            .validate()
            .unwrap_err()
            .to_string();
        assert!(e.contains("admin.token_env"), "{e}");
    }

    #[test]
    fn the_k8s_configs_are_valid_and_name_every_service() {
        let text = include_str!("../../k8s/overlays/microservices/tollgate.toml");
        let runtime = Config::from_toml(text, []).unwrap().validate().unwrap();
        assert_eq!(runtime.server.internal_grpc_addr.port(), 50052);
        assert_eq!(runtime.server.metrics_addr.port(), 9090);
        let services = &runtime.services;
        assert_eq!(
            services.metering,
            Some(ServiceUrls::One(
                "http://tollgate-billing-internal:50052".to_owned()
            ))
        );
        assert_eq!(
            services.internal_token_env.as_deref(),
            Some("TOLLGATE_INTERNAL_TOKEN")
        );
        for url in [&services.inference, &services.catalog, &services.billing] {
            assert!(
                url.as_ref()
                    .is_some_and(|u| u.urls().len() == 1 && u.urls()[0].ends_with(":50051")),
                "{url:?}"
            );
        }
        let text = include_str!("../../k8s/base/tollgate.toml");
        let runtime = Config::from_toml(text, []).unwrap().validate().unwrap();
        assert!(runtime.services.catalog.is_none());
    }

    #[test]
    fn service_addresses_are_checked() {
        for (url, field) in [
            ("https://catalog:50051", "services.catalog"),
            ("catalog:50051", "services.catalog"),
            ("http://catalog", "services.catalog"),
        ] {
            let text = format!("{MINIMAL}\n[services]\ncatalog = \"{url}\"");
            let e = Config::from_toml(&text, [])
                .unwrap()
                .validate()
                .unwrap_err()
                .to_string();
            assert!(e.contains(field), "{url}: {e}");
        }
        let e = Config::from_toml(&format!("{MINIMAL}\n[services]\ncatalogue = \"x\""), [])
            .unwrap_err()
            .to_string();
        assert!(e.contains("catalogue"), "{e}");
        let env = [(
            "TOLLGATE__SERVICES__BILLING".to_owned(),
            "http://127.0.0.1:7000".to_owned(),
        )];
        let c = Config::from_toml(MINIMAL, env).unwrap();
        assert_eq!(
            c.services.billing,
            Some(ServiceUrls::One("http://127.0.0.1:7000".to_owned()))
        );
    }

    #[test]
    fn a_service_may_list_its_replicas() {
        let text = format!(
            "{MINIMAL}\n[services]\ninference = [\"http://10.0.0.1:50051\", \"http://inference:50051\"]\nresolve_interval_secs = 2"
        );
        let runtime = Config::from_toml(&text, []).unwrap().validate().unwrap();
        let inference = runtime.services.inference.unwrap();
        assert_eq!(
            inference.urls(),
            ["http://10.0.0.1:50051", "http://inference:50051"]
        );
        assert_eq!(runtime.services.resolve_interval_secs, 2);
        // The same from the environment, as a list.
        let env = [(
            "TOLLGATE__SERVICES__INFERENCE".to_owned(),
            "[\"http://127.0.0.1:7001\", \"http://127.0.0.1:7002\"]".to_owned(),
        )];
        let c = Config::from_toml(MINIMAL, env).unwrap();
        assert_eq!(
            c.services.inference.unwrap().urls(),
            ["http://127.0.0.1:7001", "http://127.0.0.1:7002"]
        );
        // Without [services] the interval keeps its default.
        let runtime = Config::from_toml(MINIMAL, []).unwrap().validate().unwrap();
        assert_eq!(runtime.services.resolve_interval_secs, 5);
        for (services, field) in [
            ("inference = []", "services.inference"),
            (
                "inference = [\"http://a:1\", \"b:2\"]",
                "services.inference",
            ),
            (
                "resolve_interval_secs = 0",
                "services.resolve_interval_secs",
            ),
        ] {
            let text = format!("{MINIMAL}\n[services]\n{services}");
            let e = Config::from_toml(&text, [])
                .unwrap()
                .validate()
                .unwrap_err()
                .to_string();
            assert!(e.contains(field), "{services}: {e}");
        }
    }

    #[test]
    fn tier_allow_lists_and_admin_token_env_are_read() {
        let text = MINIMAL.replace(
            "monthly_requests = 1000",
            "monthly_requests = 1000\nmodels = [\"deepseek-v4-flash\"]",
        ) + "\n[admin]\ntoken_env = \"TOLLGATE_ADMIN_TOKEN\"\n";
        let runtime = Config::from_toml(&text, []).unwrap().validate().unwrap();
        assert_eq!(
            runtime.admin.token_env.as_deref(),
            Some("TOLLGATE_ADMIN_TOKEN")
        );
        let basic = runtime.tiers.get("basic").unwrap();
        assert!(basic.allows("deepseek-v4-flash", "deepseek-v4-flash"));
        assert!(!basic.allows("deepseek-v4-pro", "deepseek-v4-pro"));
    }
}
