//! The HTTP side every upstream shares, whatever its protocol: one pooled client per provider
//! (TCP_NODELAY, connect timeout), the provider key (never printed), the first-token deadline on
//! the response headers, upstream error statuses mapped onto [`UpstreamError`], JSON bodies and
//! SSE event streams ([`super::sse`]). Protocol files (`openai_wire.rs`, `anthropic.rs`,
//! `gemini.rs`) build URLs, bodies and chunks on top of it. What an upstream sends is bounded:
//! a JSON answer ([`MAX_RESPONSE_BYTES`]), an error body ([`MAX_ERROR_READ_BYTES`], of which a
//! short excerpt without control characters or the provider key reaches the client), one SSE
//! event ([`MAX_SSE_EVENT_BYTES`]); redirects are followed only to the same origin, so a
//! provider key never goes to another host. With `[telemetry] propagate_upstream` on, each
//! request carries the caller's W3C trace context (`tollgate::trace_context`).

use std::{
    fmt,
    sync::atomic::{AtomicUsize, Ordering},
    time::Instant,
};

use futures::{Stream, StreamExt};
use serde::Serialize;
use serde_json::Value;

use crate::{
    UpstreamError,
    config::{ProviderConfig, Timeouts},
    telemetry::{UpstreamMeters, UpstreamOutcome},
};

/// Most of an upstream error message that is relayed to the client (characters).
const MAX_ERROR_BODY: usize = 512;

/// Most of an upstream error body that is read.
pub const MAX_ERROR_READ_BYTES: usize = 64 * 1024;

/// Largest non-streaming upstream answer read (the gateway's gRPC messages carry 32 MiB by
/// default, and an answer is never larger in protobuf than in JSON).
pub const MAX_RESPONSE_BYTES: usize = 16 * 1024 * 1024;

/// Largest single SSE event (bytes between two blank lines) read from an upstream stream.
pub const MAX_SSE_EVENT_BYTES: usize = 4 * 1024 * 1024;

/// Redirects followed, to the same scheme, host and port only.
const MAX_REDIRECTS: usize = 5;

/// A provider API key; never printed.
#[derive(Clone)]
struct ProviderKey(String);

impl fmt::Debug for ProviderKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ProviderKey(***)")
    }
}

/// A request URL. One that is the same for every request is parsed once, when the provider is
/// made ([`Endpoint::fixed`]): reqwest parses a URL given as text anew for every request (6,600
/// instructions each in the profile). One that does not parse stays text, so each request fails
/// as it did before, with reqwest's error.
#[derive(Debug, Clone)]
pub enum Endpoint {
    Parsed(reqwest::Url),
    Text(String),
}

impl Endpoint {
    /// A URL used for every request: parsed now.
    pub fn fixed(url: String) -> Self {
        match reqwest::Url::parse(&url) {
            Ok(parsed) => Self::Parsed(parsed),
            Err(_) => Self::Text(url),
        }
    }
}

/// Where a provider expects its API key.
#[derive(Debug, Clone, Copy)]
pub enum KeyPlacement {
    /// `Authorization: Bearer <key>` (OpenAI and its family).
    Bearer,
    /// A header of its own (`x-api-key` for Anthropic, `x-goog-api-key` for Gemini).
    Header(&'static str),
}

/// One configured upstream: its name, base URL, keys, deadlines and pooled client.
#[derive(Debug)]
pub struct Upstream {
    name: String,
    base_url: String,
    /// Every key that is set, used in turn.
    keys: Vec<ProviderKey>,
    /// The next key's turn.
    turn: AtomicUsize,
    /// The variables the keys come from (none: a keyless server).
    key_envs: Vec<String>,
    client: reqwest::Client,
    timeouts: Timeouts,
    meters: UpstreamMeters,
}

impl Upstream {
    /// The API key is read through `env` so tests never touch the process environment.
    pub fn new(
        config: &ProviderConfig,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Self, reqwest::Error> {
        let timeouts = config.timeouts();
        let client = reqwest::Client::builder()
            .connect_timeout(timeouts.connect)
            .tcp_nodelay(true)
            .pool_idle_timeout(std::time::Duration::from_secs(90))
            .redirect(same_origin_redirects())
            .build()?;
        let key_envs: Vec<String> = config
            .api_key_env
            .iter()
            .chain(&config.api_key_envs)
            .cloned()
            .collect();
        Ok(Self {
            name: config.name.clone(),
            base_url: config.base_url.trim_end_matches('/').to_owned(),
            keys: key_envs
                .iter()
                .filter_map(|name| env(name))
                .filter(|k| !k.is_empty())
                .map(ProviderKey)
                .collect(),
            turn: AtomicUsize::new(0),
            key_envs,
            client,
            timeouts,
            meters: UpstreamMeters::new(&config.name),
        })
    }

    /// The provider's configured name (used in error messages).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Everything before the resource path, without a trailing slash.
    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    pub fn timeouts(&self) -> Timeouts {
        self.timeouts
    }

    /// Whether the provider can be called: its key is set, or it needs none (a keyless local
    /// server such as Ollama or llama.cpp).
    pub fn ready(&self) -> Result<(), UpstreamError> {
        if self.keys.is_empty() && !self.key_envs.is_empty() {
            return Err(UpstreamError::NotConfigured {
                provider: self.name.clone(),
                env: self.key_envs.join(" or "),
            });
        }
        Ok(())
    }

    /// The key whose turn it is (round-robin over the keys that are set).
    fn next_key(&self) -> Option<&ProviderKey> {
        let turn = self.turn.fetch_add(1, Ordering::Relaxed);
        self.keys.get(turn % self.keys.len().max(1))
    }

    /// `text` with every key of this provider blanked out.
    fn redacted(&self, mut text: String) -> String {
        for secret in &self.keys {
            text = text.replace(&secret.0, "***");
        }
        text
    }

    /// POSTs `body` as JSON; a non-2xx answer becomes the matching [`UpstreamError`] carrying the
    /// upstream's message (`{"error":{"message"}}`, the shape OpenAI, Anthropic and Gemini share).
    pub async fn post_json(
        &self,
        url: &Endpoint,
        key: KeyPlacement,
        headers: &[(&'static str, &str)],
        body: &impl Serialize,
    ) -> Result<reqwest::Response, UpstreamError> {
        self.post_json_with(url, key, headers, body, |provider, status, text| {
            UpstreamError::from_status(provider, status, error_message(text))
        })
        .await
    }

    /// [`Upstream::post_json`] for a provider whose error bodies need reading its own way:
    /// `status_error(provider name, HTTP status, body text)` maps a non-2xx answer. The answer
    /// counts once its headers arrived within the first-token deadline.
    pub async fn post_json_with(
        &self,
        url: &Endpoint,
        key: KeyPlacement,
        headers: &[(&'static str, &str)],
        body: &impl Serialize,
        status_error: impl FnOnce(&str, u16, &str) -> UpstreamError,
    ) -> Result<reqwest::Response, UpstreamError> {
        self.ready()?;
        let mut request = match url {
            Endpoint::Parsed(url) => self.client.post(url.clone()),
            Endpoint::Text(url) => self.client.post(url.as_str()),
        }
        .json(body);
        if let Some(secret) = self.next_key() {
            request = match key {
                KeyPlacement::Bearer => request.bearer_auth(&secret.0),
                KeyPlacement::Header(name) => request.header(name, &secret.0),
            };
        }
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let mut trace_context = reqwest::header::HeaderMap::new();
        tollgate::trace_context::inject_upstream(&mut trace_context);
        request = request.headers(trace_context);
        let started = Instant::now();
        let sent = tokio::time::timeout(self.timeouts.first_token, request.send()).await;
        let outcome = match &sent {
            Ok(Ok(response)) => UpstreamOutcome::of_status(response.status().as_u16()),
            Ok(Err(e)) if e.is_timeout() && !e.is_connect() => UpstreamOutcome::Timeout,
            Ok(Err(_)) => UpstreamOutcome::ConnectError,
            Err(_) => UpstreamOutcome::Timeout,
        };
        self.meters.record(outcome, started);
        let response = sent
            .map_err(|_| UpstreamError::Timeout {
                provider: self.name.clone(),
                seconds: self.timeouts.first_token.as_secs(),
            })?
            .map_err(|e| self.transport_error(&e))?;
        if response.status().is_success() {
            return Ok(response);
        }
        let status = response.status().as_u16();
        // Seconds only; the HTTP-date form is rare from APIs and is dropped.
        let retry_after = response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok());
        let body = read_capped(response, MAX_ERROR_READ_BYTES)
            .await
            .unwrap_or_else(|capped| match capped {
                Capped::TooLarge(head) => head,
                Capped::Broken(_) => Vec::new(),
            });
        let text = self.redacted(String::from_utf8_lossy(&body).into_owned());
        Err(status_error(&self.name, status, &text).with_retry_after(retry_after))
    }

    /// The whole body of a successful response as JSON, at most [`MAX_RESPONSE_BYTES`]. Leading
    /// blank lines (DeepSeek's keep-alives while a request is queued) are tolerated by the JSON
    /// parser.
    pub async fn read_json(&self, response: reqwest::Response) -> Result<Value, UpstreamError> {
        let bytes =
            read_capped(response, MAX_RESPONSE_BYTES)
                .await
                .map_err(|capped| match capped {
                    Capped::TooLarge(_) => self.failed(format!(
                        "the answer is larger than {MAX_RESPONSE_BYTES} bytes"
                    )),
                    Capped::Broken(e) => self.transport_error(&e),
                })?;
        serde_json::from_slice(&bytes).map_err(|e| self.failed(format!("unreadable response: {e}")))
    }

    /// The data of each SSE event of a successful streaming response; a broken connection is an
    /// error item, and the last. Comments and events with blank data are skipped by the decoder.
    pub fn events(
        &self,
        response: reqwest::Response,
    ) -> impl Stream<Item = Result<String, UpstreamError>> + Send + 'static {
        let name = self.name.clone();
        super::sse::Events::new(response.bytes_stream(), MAX_SSE_EVENT_BYTES).map(move |event| {
            event.map_err(|e| UpstreamError::Failed {
                provider: name.clone(),
                message: format!("stream broke: {e}"),
            })
        })
    }

    /// An upstream failure (unreadable answer, in-band error) of this provider.
    pub fn failed(&self, message: impl Into<String>) -> UpstreamError {
        UpstreamError::Failed {
            provider: self.name.clone(),
            message: message.into(),
        }
    }

    /// A transport failure. A connection that could not be made (refused, or not within
    /// `connect_timeout_secs`) carried no request: `sent: false`, billed nothing.
    fn transport_error(&self, e: &reqwest::Error) -> UpstreamError {
        if e.is_timeout() && !e.is_connect() {
            UpstreamError::Timeout {
                provider: self.name.clone(),
                seconds: self.timeouts.connect.as_secs(),
            }
        } else {
            UpstreamError::Connect {
                provider: self.name.clone(),
                // Without the URL: clients need not learn where upstreams live.
                message: transport_message(e),
                sent: !e.is_connect(),
            }
        }
    }
}

/// Redirects within the same origin only: a provider key (in `authorization`, `x-api-key` or
/// `x-goog-api-key`) must never be sent to another host.
fn same_origin_redirects() -> reqwest::redirect::Policy {
    reqwest::redirect::Policy::custom(|attempt| {
        let same_origin = attempt.previous().first().is_some_and(|first| {
            let next = attempt.url();
            first.scheme() == next.scheme()
                && first.host_str() == next.host_str()
                && first.port_or_known_default() == next.port_or_known_default()
        });
        if !same_origin || attempt.previous().len() > MAX_REDIRECTS {
            attempt.stop()
        } else {
            attempt.follow()
        }
    })
}

/// Why a body was not read whole.
enum Capped {
    /// Longer than the cap: its first bytes, up to the cap.
    TooLarge(Vec<u8>),
    Broken(reqwest::Error),
}

/// A response body, refused once it exceeds `cap` bytes (it is never held whole beyond that).
async fn read_capped(mut response: reqwest::Response, cap: usize) -> Result<Vec<u8>, Capped> {
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(Capped::Broken)? {
        if body.len() + chunk.len() > cap {
            let room = cap - body.len();
            body.extend_from_slice(&chunk[..room]);
            return Err(Capped::TooLarge(body));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

fn transport_message(e: &reqwest::Error) -> String {
    use std::error::Error as _;
    let what = if e.is_connect() {
        "connection failed"
    } else if e.is_body() || e.is_decode() {
        "reading the response failed"
    } else {
        "request failed"
    };
    match e.source() {
        Some(source) => format!("{what}: {source}"),
        None => what.to_owned(),
    }
}

/// The `message` of an error object, or the object as JSON text.
pub fn error_text(error: &Value) -> String {
    error
        .get("message")
        .and_then(Value::as_str)
        .map_or_else(|| error.to_string(), str::to_owned)
}

/// The message of an upstream error body (`{"error":{"message":...}}`), or the body itself,
/// without control characters and cut to a short excerpt.
pub fn error_message(body: &str) -> String {
    let message = serde_json::from_str::<Value>(body)
        .ok()
        .and_then(|v| v.get("error").map(error_text))
        .unwrap_or_else(|| body.trim().to_owned());
    let message: String = message
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    match message.char_indices().nth(MAX_ERROR_BODY) {
        Some((cut, _)) => format!("{}...", &message[..cut]),
        None => message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fixed_url_is_parsed_once_and_a_bad_one_stays_text() {
        let url = "http://127.0.0.1:9/v1/chat/completions";
        assert!(
            matches!(Endpoint::fixed(url.to_owned()), Endpoint::Parsed(u) if u.as_str() == url)
        );
        assert!(matches!(
            Endpoint::fixed("http://exa mple/v1".to_owned()),
            Endpoint::Text(t) if t == "http://exa mple/v1"
        ));
    }

    #[test]
    fn error_messages_come_from_the_error_body() {
        assert_eq!(
            error_message(r#"{"error":{"message":"bad","type":"invalid_request_error"}}"#),
            "bad"
        );
        // Anthropic's and Gemini's bodies share the `error.message` path.
        assert_eq!(
            error_message(
                r#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#
            ),
            "Overloaded"
        );
        assert_eq!(
            error_message(
                r#"{"error":{"code":400,"message":"bad turn","status":"INVALID_ARGUMENT"}}"#
            ),
            "bad turn"
        );
        assert_eq!(error_message("  plain text "), "plain text");
        assert_eq!(
            error_message("bad\u{1b}[31m\r\nthing\u{0}"),
            "bad [31m  thing "
        );
        assert_eq!(error_message(&"x".repeat(5000)).len(), MAX_ERROR_BODY + 3);
    }

    #[test]
    fn the_keys_that_are_set_are_used_in_turn() {
        let config: ProviderConfig = toml::from_str(
            "name = \"p\"\nkind = \"openai\"\nbase_url = \"http://x\"\napi_key_env = \"A\"\napi_key_envs = [\"B\", \"UNSET\", \"C\"]",
        )
        .unwrap();
        let env = |name: &str| (name != "UNSET").then(|| format!("key-{name}"));
        let upstream = Upstream::new(&config, &env).unwrap();
        assert!(upstream.ready().is_ok());
        let used: Vec<_> = (0..4)
            .map(|_| upstream.next_key().unwrap().0.clone())
            .collect();
        assert_eq!(used, ["key-A", "key-B", "key-C", "key-A"]);
        assert_eq!(upstream.redacted("key-B and key-C".into()), "*** and ***");
        let none = Upstream::new(&config, &|_| None).unwrap();
        let e = none.ready().unwrap_err().to_string();
        assert!(e.contains("A or B or UNSET or C"), "{e}");
    }
}
