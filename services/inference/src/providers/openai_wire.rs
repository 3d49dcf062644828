//! The OpenAI Chat Completions protocol as a transport, shared by every provider that speaks it
//! (OpenAI, DeepSeek, MiniMax's OpenAI endpoint, vLLM, Ollama, ...): one pooled HTTP client per
//! provider, the request as JSON, the response or the SSE stream parsed back into `tollgate.v1`
//! messages, upstream errors mapped. What differs between those providers lives in their files.

use std::{fmt, marker::PhantomData};

use futures::StreamExt;
use serde_json::Value;
use tollgate::{
    openai::{ChatCompletion, ChatCompletionChunk, ChatCompletionRequest, UsageJson},
    v1::{ChatRequest, ChatResponse, Usage},
};

use super::{
    ChatProvider, ChunkStream, Target,
    http::{KeyPlacement, Upstream, error_text},
};
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

/// The OpenAI protocol over one [`Upstream`]: `POST {base_url}/chat/completions`, Bearer auth.
#[derive(Debug)]
pub struct OpenAiWire {
    upstream: Upstream,
    url: String,
}

impl OpenAiWire {
    pub fn new(
        config: &ProviderConfig,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Self, reqwest::Error> {
        let upstream = Upstream::new(config, env)?;
        let url = format!("{}/chat/completions", upstream.base_url());
        Ok(Self { upstream, url })
    }

    pub fn timeouts(&self) -> Timeouts {
        self.upstream.timeouts()
    }

    pub fn ready(&self) -> Result<(), UpstreamError> {
        self.upstream.ready()
    }

    async fn send(&self, body: &Value) -> Result<reqwest::Response, UpstreamError> {
        self.upstream
            .post_json(&self.url, KeyPlacement::Bearer, &[], body)
            .await
    }

    /// A non-streaming call.
    pub async fn chat(
        &self,
        body: Value,
        read_usage: UsageReader,
    ) -> Result<ChatResponse, UpstreamError> {
        let response = self.send(&body).await?;
        let value = self.upstream.read_json(response).await?;
        if let Some(error) = value.get("error") {
            return Err(self.upstream.failed(error_text(error)));
        }
        let completion: ChatCompletion = serde_json::from_value(value)
            .map_err(|e| self.upstream.failed(format!("unreadable response: {e}")))?;
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
        let name = self.upstream.name().to_owned();
        let stream = self
            .upstream
            .events(response)
            .take_while(|event| {
                let done = matches!(event, Ok(e) if e.data.trim() == "[DONE]");
                futures::future::ready(!done)
            })
            .map(move |event| event.and_then(|e| parse_chunk(&name, &e.data, read_usage)));
        Ok(Box::pin(stream))
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

#[cfg(test)]
mod tests {
    use super::*;

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
