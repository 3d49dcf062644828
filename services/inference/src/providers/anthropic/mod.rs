//! Anthropic (`kind = "anthropic"`): the Messages API, `POST {base_url}/messages` with
//! `x-api-key` and `anthropic-version: 2023-06-01` (providers.md §2). `request.rs` maps the
//! OpenAI request, `response.rs` reads answers and usage, `stream.rs` translates the named-event
//! stream.
//!
//! Reasoning round trip: thinking blocks come out as `reasoning_content` plus `reasoning_details`
//! of format `anthropic-claude-v1` (`reasoning.text` with the block's signature, or
//! `reasoning.encrypted` for redacted thinking); an assistant message sent back with those
//! details gets its thinking blocks back, before its text and tool_use blocks, exactly as
//! Anthropic requires in tool loops with thinking on.
//!
//! Requests that arrived on the gateway's own Messages API carry the client's body
//! (`ChatRequest.native`, protocol [`NATIVE_PROTOCOL`]); it is sent as written (model and
//! `stream` replaced, see [`request::native_body`]) with the client's `anthropic-beta` header, so
//! that path is lossless. `count_tokens` calls Anthropic's own
//! `POST {base_url}/messages/count_tokens`.
//!
//! Errors: Anthropic's error bodies share `error.message` with OpenAI's, so the shared mapping
//! applies: 400/404/413 → 400 with Anthropic's message, 401/402/403 → 502 without our key,
//! 429/529 → 503, other 5xx → 502, 504 → 504; an `error` event inside a 200 stream ends the
//! stream with an error.

mod request;
mod response;
pub(super) mod stream;

use futures::StreamExt;
use serde_json::Value;
use tollgate::v1::{ChatRequest, ChatResponse, NativeRequest};

use super::{
    ChatProvider, ChunkStream, Target,
    http::{Endpoint, KeyPlacement, Upstream, error_text},
};
use crate::{UpstreamError, config::ProviderConfig};

/// The `format` of the reasoning details this provider emits and accepts back.
use tollgate::native::ANTHROPIC_REASONING_FORMAT as REASONING_FORMAT;

/// The API version the request shapes here follow (the one the official SDKs pin).
const ANTHROPIC_VERSION: &str = "2023-06-01";

/// `NativeRequest.protocol` of a request that arrived on Anthropic's Messages API.
use tollgate::native::ANTHROPIC_MESSAGES as NATIVE_PROTOCOL;

/// The client's header that opts into Anthropic's beta features; passed on with native bodies.
const BETA_HEADER: &str = "anthropic-beta";

/// The Anthropic Messages API over one [`Upstream`].
#[derive(Debug)]
pub struct Anthropic {
    upstream: Upstream,
    url: Endpoint,
    count_url: Endpoint,
}

impl Anthropic {
    pub fn new(
        config: &ProviderConfig,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Self, reqwest::Error> {
        let upstream = Upstream::new(config, env)?;
        let url = Endpoint::fixed(format!("{}/messages", upstream.base_url()));
        let count_url = Endpoint::fixed(format!("{}/messages/count_tokens", upstream.base_url()));
        Ok(Self {
            upstream,
            url,
            count_url,
        })
    }

    /// POSTs `body` to `url` with the protocol headers, and the client's `anthropic-beta` when
    /// the request is native.
    async fn send(
        &self,
        url: &Endpoint,
        request: &ChatRequest,
        body: &impl serde::Serialize,
    ) -> Result<reqwest::Response, UpstreamError> {
        let mut headers = vec![("anthropic-version", ANTHROPIC_VERSION)];
        if let Some(beta) = native(request).and_then(|n| n.headers.get(BETA_HEADER)) {
            headers.push((BETA_HEADER, beta.as_str()));
        }
        self.upstream
            .post_json(url, KeyPlacement::Header("x-api-key"), &headers, body)
            .await
    }

    /// Anthropic's own count of the request's prompt tokens (`POST …/messages/count_tokens`).
    async fn count(
        &self,
        request: &ChatRequest,
        target: &Target<'_>,
    ) -> Result<u64, UpstreamError> {
        let body = request::count_tokens_body(request, target)?;
        let response = self.send(&self.count_url, request, &body).await?;
        let value = self.upstream.read_json(response).await?;
        value
            .get("input_tokens")
            .and_then(Value::as_u64)
            .ok_or_else(|| {
                self.upstream
                    .failed("count_tokens answered without input_tokens")
            })
    }
}

/// The client's native Anthropic request, if it sent one.
fn native(request: &ChatRequest) -> Option<&NativeRequest> {
    request
        .native
        .as_ref()
        .filter(|n| n.protocol == NATIVE_PROTOCOL)
}

impl ChatProvider for Anthropic {
    fn upstream(&self) -> &Upstream {
        &self.upstream
    }

    async fn chat(
        &self,
        request: &ChatRequest,
        target: &Target<'_>,
    ) -> Result<ChatResponse, UpstreamError> {
        let body = request::upstream_body(request, target)?;
        let response = self.send(&self.url, request, &body).await?;
        let value = self.upstream.read_json(response).await?;
        if value.get("type").and_then(Value::as_str) == Some("error") {
            let error = value.get("error").cloned().unwrap_or(Value::Null);
            return Err(self.upstream.failed(error_text(&error)));
        }
        response::completion(value).map_err(|e| self.upstream.failed(e))
    }

    async fn chat_stream(
        &self,
        request: &ChatRequest,
        target: &Target<'_>,
    ) -> Result<ChunkStream, UpstreamError> {
        let mut body = request::upstream_body(request, target)?;
        body.stream();
        let response = self.send(&self.url, request, &body).await?;
        let mut translator = stream::StreamTranslator::new(self.upstream.name());
        let chunks = self.upstream.events(response).filter_map(move |event| {
            let chunk = event.and_then(|data| translator.on_event(&data));
            futures::future::ready(chunk.transpose())
        });
        Ok(Box::pin(chunks))
    }

    /// Anthropic's own count of the request's prompt tokens.
    async fn count_tokens(
        &self,
        request: &ChatRequest,
        target: &Target<'_>,
    ) -> Option<Result<u64, UpstreamError>> {
        Some(self.count(request, target).await)
    }
}

#[cfg(test)]
mod tests;
