//! `POST /v1/messages` and `POST /v1/messages/count_tokens`: Anthropic's Messages API in front of
//! every provider. The body is translated into a `tollgate.v1.ChatRequest` (`request.rs`; the
//! body itself rides along for an Anthropic upstream) and sent to `Inference.Chat`,
//! `Inference.ChatStream` or `Inference.CountTokens` exactly as chat completions are, so keys,
//! limits, reservations, the ledger and cost are the same. Answers are Anthropic's message object
//! (`response.rs`) or its named-event stream (`stream.rs`); errors are Anthropic's error shape,
//! mapped from the product's error table.
//!
//! The key comes from `x-api-key` (Anthropic's header) or `Authorization: Bearer` (the
//! [`ApiKey`] extractor), the body through [`JsonBody`];
//! `anthropic-version` is accepted whatever it says, `anthropic-beta` is passed on to an
//! Anthropic upstream.

pub(crate) mod request;
mod response;
mod stream;

use axum::{
    Json,
    extract::State,
    http::HeaderMap,
    response::{IntoResponse, Response, sse::Sse},
};
use serde_json::{Value, json};
use tollgate::error::ApiError;

use crate::{
    app::AppState,
    error::RestError,
    extract::{ApiKey, JsonBody},
    named_events, request_id,
};
use request::Parsed;
use stream::MessagesStream;

/// An error in Anthropic's shape, with the status (and retry advice) of the product's table.
#[derive(Debug)]
pub(crate) struct AnthropicError(ApiError);

impl<E: Into<RestError>> From<E> for AnthropicError {
    fn from(e: E) -> Self {
        Self(e.into().0)
    }
}

impl IntoResponse for AnthropicError {
    fn into_response(self) -> Response {
        let body = Json(self.0.to_anthropic_json()).into_response().into_body();
        let mut response = RestError(self.0).into_response();
        *response.body_mut() = body;
        response
    }
}

/// The key and the translated body, refusals in Anthropic's shape (the key's first);
/// `count_only` for `count_tokens`.
fn accept(
    key: Result<ApiKey, RestError>,
    headers: &HeaderMap,
    body: Result<JsonBody<Value>, RestError>,
    count_only: bool,
) -> Result<(ApiKey, Parsed), AnthropicError> {
    let key = key?;
    let JsonBody(body) = body?;
    let beta = headers.get("anthropic-beta").and_then(|v| v.to_str().ok());
    Ok((key, request::parse(body, count_only, beta)?))
}

pub(crate) async fn create(
    State(state): State<AppState>,
    key: Result<ApiKey, RestError>,
    headers: HeaderMap,
    body: Result<JsonBody<Value>, RestError>,
) -> Result<Response, AnthropicError> {
    let (key, Parsed { request, stream }) = accept(key, &headers, body, false)?;
    let mut inference = state.inference.clone();
    if !stream {
        let answered = inference.chat(key.request(request)).await?;
        let id = request_id::of(&answered);
        let response = answered.into_inner();
        return Ok(request_id::on(
            Json(response::message(&response)).into_response(),
            id,
        ));
    }
    // Answered only once the first chunk exists, so early failures keep their HTTP status.
    let answered = inference.chat_stream(key.request(request)).await?;
    let id = request_id::of(&answered);
    let chunks = answered.into_inner();
    let events = Sse::new(named_events::events(chunks, MessagesStream::new()));
    Ok(request_id::on(events.into_response(), id))
}

pub(crate) async fn count_tokens(
    State(state): State<AppState>,
    key: Result<ApiKey, RestError>,
    headers: HeaderMap,
    body: Result<JsonBody<Value>, RestError>,
) -> Result<Response, AnthropicError> {
    let (key, Parsed { request, .. }) = accept(key, &headers, body, true)?;
    let count = state
        .inference
        .clone()
        .count_tokens(key.request(request))
        .await?
        .into_inner();
    Ok(Json(json!({"input_tokens": count.input_tokens})).into_response())
}
