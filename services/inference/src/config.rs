//! The `[[providers]]` section of the configuration file, and the client policy of streams
//! (`[server] on_client_disconnect`, `client_stall_timeout_secs`) the service runs with.

use std::time::Duration;

use serde::Deserialize;

/// The wire protocol a provider speaks. Each kind is one adapter in `providers/`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ProviderKind {
    Openai,
    Deepseek,
    OpenaiCompatible,
    /// Anthropic's Messages API (`providers/anthropic`).
    Anthropic,
    /// Google's Gemini API (generateContent / streamGenerateContent).
    Gemini,
    Minimax,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProviderConfig {
    pub name: String,
    pub kind: ProviderKind,
    /// Everything before the resource path (`https://api.deepseek.com`, `https://api.openai.com/v1`).
    pub base_url: String,
    /// The environment variable that holds the provider's API key.
    #[serde(default)]
    pub api_key_env: Option<String>,
    /// More variables holding keys of the same provider (several accounts or projects): with
    /// `api_key_env`, every key that is set is used in turn, one request each.
    #[serde(default)]
    pub api_key_envs: Vec<String>,
    #[serde(default = "default_connect_timeout")]
    pub connect_timeout_secs: u64,
    /// The upstream must answer (status and first event) within this, else 504.
    #[serde(default = "default_first_token_timeout")]
    pub first_token_timeout_secs: u64,
    /// The whole upstream call must end within this, else 504.
    #[serde(default = "default_request_timeout")]
    pub request_timeout_secs: u64,
}

fn default_connect_timeout() -> u64 {
    10
}

fn default_first_token_timeout() -> u64 {
    120
}

fn default_request_timeout() -> u64 {
    600
}

/// Upstream deadlines of one provider.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    pub connect: Duration,
    pub first_token: Duration,
    pub total: Duration,
}

impl ProviderConfig {
    pub fn timeouts(&self) -> Timeouts {
        Timeouts {
            connect: Duration::from_secs(self.connect_timeout_secs),
            first_token: Duration::from_secs(self.first_token_timeout_secs),
            total: Duration::from_secs(self.request_timeout_secs),
        }
    }
}

/// What a stream does when its client leaves (disconnects, or stops reading for longer than the
/// stall timeout): `[server] on_client_disconnect`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ClientDisconnect {
    /// Close the upstream at once and settle the prompt plus what was relayed, marked
    /// `estimated` (over whatever count the upstream already sent). The providers we front stop
    /// generating when the connection closes and bill what they generated.
    #[default]
    Cancel,
    /// Read the upstream to its end (bounded by `request_timeout_secs`) and settle its own final
    /// count: exact, at the price of tokens nobody reads.
    Finish,
}

/// How the relay treats the client side of a stream.
#[derive(Debug, Clone, Copy)]
pub struct ClientPolicy {
    pub on_disconnect: ClientDisconnect,
    /// A send to the client that waits longer than this (a reader that stopped reading) means
    /// the client left.
    pub stall_timeout: Duration,
}

impl Default for ClientPolicy {
    fn default() -> Self {
        Self {
            on_disconnect: ClientDisconnect::Cancel,
            stall_timeout: Duration::from_secs(30),
        }
    }
}
