//! Google's Gemini API (`kind = "gemini"`): `POST {base_url}/models/{model}:generateContent` and
//! `…:streamGenerateContent?alt=sse`, the key in `x-goog-api-key`. `request.rs` turns the OpenAI
//! request into a `GenerateContentRequest`; `response.rs` turns answers and stream events back
//! (a pure state machine over parsed events); this file sends them and maps Google's errors.
//!
//! Thought signatures round-trip statelessly through `reasoning_details` of format
//! [`FORMAT`]: each `thoughtSignature` the model returns becomes
//! `{"type":"reasoning.encrypted","data":<signature>,"id":<tool call id, when on a functionCall
//! part>,"format":"google-gemini-v1","index"}`, and the assistant message that carries it back is
//! turned into the same parts with the signature reattached.

mod request;
pub(super) mod response;

use futures::StreamExt;
use serde_json::Value;
use tollgate::v1::{ChatRequest, ChatResponse};

use super::{
    ChatProvider, ChunkStream, Target,
    http::{Endpoint, KeyPlacement, Upstream, error_message},
};
use crate::{UpstreamError, config::ProviderConfig, images::ImageFetcher};

/// The `format` tag of the reasoning details this adapter emits and accepts back.
pub const FORMAT: &str = "google-gemini-v1";

/// Where Gemini expects its key.
const KEY: KeyPlacement = KeyPlacement::Header("x-goog-api-key");

/// The Gemini adapter: one [`Upstream`] and the image fetcher for http(s) image URLs (Gemini
/// only takes image bytes).
#[derive(Debug)]
pub struct Gemini {
    upstream: Upstream,
    images: ImageFetcher,
}

impl Gemini {
    pub fn new(
        config: &ProviderConfig,
        images: ImageFetcher,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Self, reqwest::Error> {
        Ok(Self {
            upstream: Upstream::new(config, env)?,
            images,
        })
    }

    /// The URL names the model, so it is made (and parsed by reqwest) for each request.
    fn url(&self, target: &Target<'_>, method: &str) -> Endpoint {
        // The catalogue may name the model with or without the `models/` resource prefix.
        let model = target.route.upstream_model.trim_start_matches("models/");
        Endpoint::Text(format!(
            "{}/models/{model}:{method}",
            self.upstream.base_url()
        ))
    }

    /// Sends `body`; a non-2xx answer becomes the matching [`UpstreamError`] (see
    /// [`status_error`]).
    async fn send(
        &self,
        url: &Endpoint,
        body: &request::GenerateContentRequest,
    ) -> Result<reqwest::Response, UpstreamError> {
        self.upstream
            .post_json_with(url, KEY, &[], body, status_error)
            .await
    }
}

/// Maps a Google RPC error answer (`{"error":{"code","message","status","details"}}`) onto the
/// error table. Gemini answers an invalid key with 400 `INVALID_ARGUMENT` and a detail whose
/// `reason` is `API_KEY_INVALID`: that is the gateway's credentials failing, not the caller's
/// request (502, never the key). 429 `RESOURCE_EXHAUSTED` and 503 are overload (503).
fn status_error(provider: &str, status: u16, body: &str) -> UpstreamError {
    let parsed: Option<Value> = serde_json::from_str(body).ok();
    let key_invalid = parsed
        .as_ref()
        .and_then(|v| v.pointer("/error/details"))
        .and_then(Value::as_array)
        .is_some_and(|details| {
            details
                .iter()
                .any(|d| d.get("reason").and_then(Value::as_str) == Some("API_KEY_INVALID"))
        });
    if key_invalid {
        return UpstreamError::Credentials {
            provider: provider.to_owned(),
            status,
        };
    }
    UpstreamError::from_status(provider, status, error_message(body))
}

impl ChatProvider for Gemini {
    fn upstream(&self) -> &Upstream {
        &self.upstream
    }

    async fn chat(
        &self,
        request: &ChatRequest,
        target: &Target<'_>,
    ) -> Result<ChatResponse, UpstreamError> {
        let body = request::body(request, target, &self.images).await?;
        let response = self
            .send(&self.url(target, "generateContent"), &body)
            .await?;
        let value = self.upstream.read_json(response).await?;
        response::completion(value).map_err(|message| self.upstream.failed(message))
    }

    async fn chat_stream(
        &self,
        request: &ChatRequest,
        target: &Target<'_>,
    ) -> Result<ChunkStream, UpstreamError> {
        let body = request::body(request, target, &self.images).await?;
        let url = self.url(target, "streamGenerateContent?alt=sse");
        let response = self.send(&url, &body).await?;
        let name = self.upstream.name().to_owned();
        let mut translator = response::StreamTranslator::default();
        let stream = self.upstream.events(response).map(move |event| {
            event.and_then(|data| {
                translator
                    .on_event(&data)
                    .map_err(|failure| failure.into_error(&name))
            })
        });
        Ok(Box::pin(stream))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_invalid_key_is_a_credentials_failure_without_the_key() {
        // Gemini's answer to a wrong key: 400, INVALID_ARGUMENT, reason API_KEY_INVALID.
        let body = r#"{"error":{"code":400,"message":"API key not valid. Please pass a valid API key.","status":"INVALID_ARGUMENT","details":[{"@type":"type.googleapis.com/google.rpc.ErrorInfo","reason":"API_KEY_INVALID","domain":"googleapis.com"}]}}"#;
        let e = status_error("gemini", 400, body);
        assert!(matches!(e, UpstreamError::Credentials { status: 400, .. }));
        assert_eq!(e.to_api_error().kind, tollgate::error::ErrorKind::Upstream);
    }

    #[test]
    fn google_errors_map_onto_the_table() {
        use tollgate::error::ErrorKind;
        // GE-3: the caller's conversation is wrong: a 400 carrying Google's message.
        let ge3 = r#"{"error":{"code":400,"message":"Please ensure that function call turn comes immediately after a user turn or after a function response turn.","status":"INVALID_ARGUMENT"}}"#;
        let e = status_error("gemini", 400, ge3).to_api_error();
        assert_eq!(e.kind, ErrorKind::InvalidRequest);
        assert!(e.message.contains("function call turn comes immediately"));
        let exhausted = r#"{"error":{"code":429,"message":"Resource has been exhausted (e.g. check quota).","status":"RESOURCE_EXHAUSTED"}}"#;
        assert_eq!(
            status_error("gemini", 429, exhausted).to_api_error().kind,
            ErrorKind::Unavailable
        );
        let denied =
            r#"{"error":{"code":403,"message":"Permission denied","status":"PERMISSION_DENIED"}}"#;
        assert_eq!(
            status_error("gemini", 403, denied).to_api_error().kind,
            ErrorKind::Upstream
        );
        let internal = r#"{"error":{"code":500,"message":"An internal error has occurred.","status":"INTERNAL"}}"#;
        assert_eq!(
            status_error("gemini", 500, internal).to_api_error().kind,
            ErrorKind::Upstream
        );
    }
}
