//! The HTTP side every upstream shares, whatever its protocol: one pooled client per provider
//! (TCP_NODELAY, connect timeout), the provider key (never printed), the first-token deadline on
//! the response headers, upstream error statuses mapped onto [`UpstreamError`], JSON bodies and
//! SSE event streams (`eventsource-stream`, which accepts `\n`, `\r\n` and `\r` line endings,
//! multi-line `data:` fields and comments). Protocol files (`openai_wire.rs`, `anthropic.rs`,
//! `gemini.rs`) build URLs, bodies and chunks on top of it.

use std::fmt;

use eventsource_stream::{Event, Eventsource};
use futures::{Stream, StreamExt};
use serde::Serialize;
use serde_json::Value;

use crate::{
    UpstreamError,
    config::{ProviderConfig, Timeouts},
};

/// Most of an upstream error body that is kept for the message.
const MAX_ERROR_BODY: usize = 2048;

/// A provider API key; never printed.
#[derive(Clone)]
struct ProviderKey(String);

impl fmt::Debug for ProviderKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ProviderKey(***)")
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

/// One configured upstream: its name, base URL, key, deadlines and pooled client.
#[derive(Debug)]
pub struct Upstream {
    name: String,
    base_url: String,
    key: Option<ProviderKey>,
    key_env: Option<String>,
    client: reqwest::Client,
    timeouts: Timeouts,
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
            .build()?;
        Ok(Self {
            name: config.name.clone(),
            base_url: config.base_url.trim_end_matches('/').to_owned(),
            key: config
                .api_key_env
                .as_deref()
                .and_then(env)
                .filter(|k| !k.is_empty())
                .map(ProviderKey),
            key_env: config.api_key_env.clone(),
            client,
            timeouts,
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
        match (&self.key, &self.key_env) {
            (None, Some(env)) => Err(UpstreamError::NotConfigured {
                provider: self.name.clone(),
                env: env.clone(),
            }),
            _ => Ok(()),
        }
    }

    /// POSTs `body` as JSON; a non-2xx answer becomes the matching [`UpstreamError`] carrying the
    /// upstream's message (`{"error":{"message"}}`, the shape OpenAI, Anthropic and Gemini share).
    pub async fn post_json(
        &self,
        url: &str,
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
        url: &str,
        key: KeyPlacement,
        headers: &[(&'static str, &str)],
        body: &impl Serialize,
        status_error: impl FnOnce(&str, u16, &str) -> UpstreamError,
    ) -> Result<reqwest::Response, UpstreamError> {
        self.ready()?;
        let mut request = self.client.post(url).json(body);
        if let Some(secret) = &self.key {
            request = match key {
                KeyPlacement::Bearer => request.bearer_auth(&secret.0),
                KeyPlacement::Header(name) => request.header(name, &secret.0),
            };
        }
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let response = tokio::time::timeout(self.timeouts.first_token, request.send())
            .await
            .map_err(|_| UpstreamError::Timeout {
                provider: self.name.clone(),
                seconds: self.timeouts.first_token.as_secs(),
            })?
            .map_err(|e| self.transport_error(&e))?;
        if response.status().is_success() {
            return Ok(response);
        }
        let status = response.status().as_u16();
        let text = response.text().await.unwrap_or_default();
        Err(status_error(&self.name, status, &text))
    }

    /// The whole body of a successful response as JSON. Leading blank lines (DeepSeek's
    /// keep-alives while a request is queued) are tolerated by the JSON parser.
    pub async fn read_json(&self, response: reqwest::Response) -> Result<Value, UpstreamError> {
        let bytes = response
            .bytes()
            .await
            .map_err(|e| self.transport_error(&e))?;
        serde_json::from_slice(&bytes).map_err(|e| self.failed(format!("unreadable response: {e}")))
    }

    /// The SSE events of a successful streaming response; a broken connection is an error item.
    /// Comment lines are dropped by the parser; events with empty data are dropped here.
    pub fn events(
        &self,
        response: reqwest::Response,
    ) -> impl Stream<Item = Result<Event, UpstreamError>> + Send + 'static {
        let name = self.name.clone();
        response
            .bytes_stream()
            .eventsource()
            .filter_map(move |event| {
                futures::future::ready(match event {
                    Err(e) => Some(Err(UpstreamError::Failed {
                        provider: name.clone(),
                        message: format!("stream broke: {e}"),
                    })),
                    Ok(event) if event.data.trim().is_empty() => None,
                    Ok(event) => Some(Ok(event)),
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
/// cut to a bounded length.
pub fn error_message(body: &str) -> String {
    let message = serde_json::from_str::<Value>(body)
        .ok()
        .and_then(|v| v.get("error").map(error_text))
        .unwrap_or_else(|| body.trim().to_owned());
    match message.char_indices().nth(MAX_ERROR_BODY) {
        Some((cut, _)) => format!("{}...", &message[..cut]),
        None => message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        assert_eq!(error_message(&"x".repeat(5000)).len(), MAX_ERROR_BODY + 3);
    }
}
