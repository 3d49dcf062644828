//! The OpenAI Chat Completions protocol as a transport, shared by every provider that speaks it
//! (OpenAI, DeepSeek, MiniMax's OpenAI endpoint, vLLM, Ollama, ...): one pooled HTTP client per
//! provider, the request as JSON, the response or the SSE stream parsed back into `tollgate.v1`
//! messages, upstream errors mapped. What differs between those providers lives in their files.

use std::{fmt, marker::PhantomData};

use eventsource_stream::Eventsource;
use futures::StreamExt;
use serde_json::Value;
use tollgate::{
    openai::{ChatCompletion, ChatCompletionChunk, ChatCompletionRequest, UsageJson},
    v1::{ChatRequest, ChatResponse, Usage},
};

use super::{ChatProvider, ChunkStream, Target};
use crate::{
    UpstreamError,
    config::{ProviderConfig, Timeouts},
};

/// The request in OpenAI's JSON shape, addressed to the upstream model; each provider adjusts it
/// from there.
fn request_body(
    request: &ChatRequest,
    target: &Target<'_>,
) -> Result<ChatCompletionRequest, UpstreamError> {
    let mut body =
        ChatCompletionRequest::from_proto(request).map_err(|e| UpstreamError::Unsupported {
            param: e.param.unwrap_or_default(),
            message: e.message,
        })?;
    body.model = target.route.upstream_model.clone();
    Ok(body)
}

/// How a provider reads OpenAI's `usage` object into the normalised one.
pub type UsageReader = fn(&UsageJson) -> Usage;

/// What sets one OpenAI-protocol provider apart from another: how the request body is adjusted
/// and how usage is read. Each provider file implements this for a unit type.
pub trait Dialect: fmt::Debug + Send + Sync + 'static {
    /// Adjusts the OpenAI-shaped body (already addressed to the upstream model).
    fn prepare(body: &mut ChatCompletionRequest, target: &Target<'_>);

    fn read_usage(usage: &UsageJson) -> Usage {
        usage.to_proto()
    }
}

/// A provider that speaks OpenAI's protocol in dialect `D`.
#[derive(Debug)]
pub struct OpenAiFamily<D> {
    pub(super) wire: OpenAiWire,
    dialect: PhantomData<D>,
}

impl<D: Dialect> OpenAiFamily<D> {
    pub fn new(wire: OpenAiWire) -> Self {
        Self {
            wire,
            dialect: PhantomData,
        }
    }

    fn body(&self, request: &ChatRequest, target: &Target<'_>) -> Result<Value, UpstreamError> {
        let mut body = request_body(request, target)?;
        D::prepare(&mut body, target);
        Ok(body.to_json())
    }
}

impl<D: Dialect> ChatProvider for OpenAiFamily<D> {
    async fn chat(
        &self,
        request: &ChatRequest,
        target: &Target<'_>,
    ) -> Result<ChatResponse, UpstreamError> {
        self.wire
            .chat(self.body(request, target)?, D::read_usage)
            .await
    }

    async fn chat_stream(
        &self,
        request: &ChatRequest,
        target: &Target<'_>,
    ) -> Result<ChunkStream, UpstreamError> {
        self.wire
            .chat_stream(self.body(request, target)?, D::read_usage)
            .await
    }
}

/// A provider API key; never printed.
#[derive(Clone)]
struct ProviderKey(String);

impl fmt::Debug for ProviderKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ProviderKey(***)")
    }
}

/// Most of an upstream error body that is kept for the message.
const MAX_ERROR_BODY: usize = 2048;

#[derive(Debug)]
pub struct OpenAiWire {
    name: String,
    url: String,
    key: Option<ProviderKey>,
    key_env: Option<String>,
    client: reqwest::Client,
    timeouts: Timeouts,
}

impl OpenAiWire {
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
            url: format!("{}/chat/completions", config.base_url.trim_end_matches('/')),
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

    async fn send(&self, body: &Value) -> Result<reqwest::Response, UpstreamError> {
        self.ready()?;
        let mut request = self.client.post(&self.url).json(body);
        if let Some(key) = &self.key {
            request = request.bearer_auth(&key.0);
        }
        // The upstream must start answering within the first-token deadline.
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
        Err(UpstreamError::from_status(
            &self.name,
            status,
            error_message(&text),
        ))
    }

    fn transport_error(&self, e: &reqwest::Error) -> UpstreamError {
        if e.is_timeout() {
            UpstreamError::Timeout {
                provider: self.name.clone(),
                seconds: self.timeouts.connect.as_secs(),
            }
        } else {
            UpstreamError::Connect {
                provider: self.name.clone(),
                // Without the URL: clients need not learn where upstreams live.
                message: transport_message(e),
            }
        }
    }

    fn failed(&self, message: impl Into<String>) -> UpstreamError {
        UpstreamError::Failed {
            provider: self.name.clone(),
            message: message.into(),
        }
    }

    /// A non-streaming call.
    pub async fn chat(
        &self,
        body: Value,
        read_usage: UsageReader,
    ) -> Result<ChatResponse, UpstreamError> {
        let response = self.send(&body).await?;
        let bytes = response
            .bytes()
            .await
            .map_err(|e| self.transport_error(&e))?;
        let value: Value = serde_json::from_slice(&bytes)
            .map_err(|e| self.failed(format!("unreadable response: {e}")))?;
        if let Some(error) = value.get("error") {
            return Err(self.failed(error_text(error)));
        }
        let completion: ChatCompletion = serde_json::from_value(value)
            .map_err(|e| self.failed(format!("unreadable response: {e}")))?;
        let mut proto = completion.to_proto();
        proto.usage = completion.usage.as_ref().map(read_usage);
        Ok(proto)
    }

    /// A streaming call: `stream: true` is set on `body`, along with
    /// `stream_options.include_usage` so the upstream reports the usage the gateway bills.
    pub async fn chat_stream(
        &self,
        mut body: Value,
        read_usage: UsageReader,
    ) -> Result<ChunkStream, UpstreamError> {
        body["stream"] = Value::Bool(true);
        body["stream_options"] = serde_json::json!({"include_usage": true});
        let response = self.send(&body).await?;
        let name = self.name.clone();
        let events = response.bytes_stream().eventsource();
        let stream = events
            .take_while(|event| {
                let done = matches!(event, Ok(e) if e.data.trim() == "[DONE]");
                futures::future::ready(!done)
            })
            .filter_map(move |event| {
                let name = name.clone();
                futures::future::ready(match event {
                    Err(e) => Some(Err(UpstreamError::Failed {
                        provider: name,
                        message: format!("stream broke: {e}"),
                    })),
                    Ok(event) if event.data.trim().is_empty() => None,
                    Ok(event) => Some(parse_chunk(&name, &event.data, read_usage)),
                })
            });
        Ok(Box::pin(stream))
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

fn parse_chunk(
    provider: &str,
    data: &str,
    read_usage: UsageReader,
) -> Result<tollgate::v1::ChatChunk, UpstreamError> {
    let failed = |message: String| UpstreamError::Failed {
        provider: provider.to_owned(),
        message,
    };
    let value: Value =
        serde_json::from_str(data).map_err(|e| failed(format!("unreadable stream event: {e}")))?;
    if let Some(error) = value.get("error") {
        return Err(failed(error_text(error)));
    }
    let chunk: ChatCompletionChunk = serde_json::from_value(value)
        .map_err(|e| failed(format!("unreadable stream event: {e}")))?;
    let mut proto = chunk.to_proto();
    proto.usage = chunk.usage.flatten().as_ref().map(read_usage);
    Ok(proto)
}

fn error_text(error: &Value) -> String {
    error
        .get("message")
        .and_then(Value::as_str)
        .map_or_else(|| error.to_string(), str::to_owned)
}

/// The message of an upstream error body (`{"error":{"message":...}}`), or the body itself.
fn error_message(body: &str) -> String {
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
    fn error_messages_come_from_the_openai_error_body() {
        assert_eq!(
            error_message(r#"{"error":{"message":"bad","type":"invalid_request_error"}}"#),
            "bad"
        );
        assert_eq!(error_message("  plain text "), "plain text");
        assert_eq!(error_message(&"x".repeat(5000)).len(), MAX_ERROR_BODY + 3);
    }

    #[test]
    fn in_band_stream_errors_fail_the_stream() {
        let e = parse_chunk(
            "p",
            r#"{"error":{"message":"overloaded","type":"server_error"}}"#,
            UsageJson::to_proto,
        )
        .unwrap_err();
        assert!(e.to_string().contains("overloaded"));
    }
}
