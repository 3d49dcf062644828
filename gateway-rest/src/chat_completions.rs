//! `POST /v1/chat/completions`: OpenAI JSON in, `Inference.Chat` or `Inference.ChatStream` over
//! gRPC, OpenAI JSON or SSE out. The API key is forwarded as gRPC metadata untouched.

use std::convert::Infallible;

use axum::{
    Json,
    extract::State,
    response::{
        IntoResponse, Response,
        sse::{Event, KeepAlive, Sse},
    },
};
use futures::{Stream, StreamExt};
use tollgate::{
    error::ApiError,
    openai::{ChatCompletion, ChatCompletionChunk, ChatCompletionRequest},
};

use crate::{
    app::AppState,
    error::RestError,
    extract::{ApiKey, JsonBody},
    request_id, sse_json,
};

pub(crate) async fn create(
    State(state): State<AppState>,
    key: ApiKey,
    JsonBody(request): JsonBody<ChatCompletionRequest>,
) -> Result<Response, RestError> {
    let stream = request.stream.unwrap_or(false);
    if request.stream_options.is_some() && !stream {
        return Err(ApiError::invalid_param(
            "stream_options",
            "stream_options is only allowed when stream is true",
        )
        .into());
    }
    let include_usage = request
        .stream_options
        .as_ref()
        .and_then(|o| o.include_usage)
        .unwrap_or(false);
    let request = request.into_proto()?;
    let mut inference = state.inference.clone();
    if !stream {
        let answered = inference.chat(key.request(request)).await?;
        let id = request_id::of(&answered);
        let response = answered.into_inner();
        return Ok(request_id::on(
            Json(ChatCompletion::from_proto(&response)).into_response(),
            id,
        ));
    }
    // Answered only once the first chunk exists, so early failures keep their HTTP status.
    let answered = inference.chat_stream(key.request(request)).await?;
    let id = request_id::of(&answered);
    let chunks = answered.into_inner();
    // Comments (`: keep-alive`) while the upstream is silent (a model thinking), so proxies
    // that close idle connections leave the stream alone.
    let keep_alive = KeepAlive::new()
        .interval(state.limits.sse_keep_alive)
        .text("keep-alive");
    let events = Sse::new(sse_events(chunks, include_usage)).keep_alive(keep_alive);
    Ok(request_id::on(events.into_response(), id))
}

/// Each chunk becomes one `data:` event, forwarded as it arrives; the stream ends with
/// `data: [DONE]`, or, on a failure, with `data: {"error":{...}}` and no `[DONE]` (as OpenAI).
fn sse_events(
    chunks: tollgate::caller::ChatChunks,
    include_usage: bool,
) -> impl Stream<Item = Result<Event, Infallible>> {
    futures::stream::unfold(Some(chunks), move |state| async move {
        let mut chunks = state?;
        let event = match chunks.next().await {
            Some(Ok(chunk)) => {
                let event = sse_json::with_json(
                    Event::default(),
                    &ChatCompletionChunk::from_proto(&chunk, include_usage),
                );
                return Some((Ok(event), Some(chunks)));
            }
            Some(Err(status)) => {
                Event::default().data(ApiError::from_status(&status).to_openai_json().to_string())
            }
            None => Event::default().data("[DONE]"),
        };
        Some((Ok(event), None))
    })
}
