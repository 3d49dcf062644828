//! `POST /v1/chat/completions`: OpenAI JSON in, `Inference.Chat` or `Inference.ChatStream` over
//! gRPC, OpenAI JSON or SSE out. The API key is forwarded as gRPC metadata untouched.

use std::convert::Infallible;

use axum::{
    Json,
    body::Body,
    extract::State,
    http::HeaderMap,
    response::{
        IntoResponse, Response,
        sse::{Event, Sse},
    },
};
use futures::{Stream, StreamExt};
use tollgate::{
    error::ApiError,
    openai::{ChatCompletion, ChatCompletionChunk, ChatCompletionRequest},
    v1::ChatRequest,
};

use crate::{
    app::{AppState, with_key},
    error::RestError,
};

/// A parsed request and how to answer it.
struct Parsed {
    request: ChatRequest,
    stream: bool,
    include_usage: bool,
}

/// Reads and parses the body: too large, not JSON, or the wrong shape are each a 400 that says
/// what is wrong and where.
async fn parse(body: Body, limit: usize) -> Result<Parsed, ApiError> {
    let bytes = axum::body::to_bytes(body, limit).await.map_err(|e| {
        let too_large = std::error::Error::source(&e)
            .is_some_and(|s| s.is::<http_body_util::LengthLimitError>());
        let message = if too_large {
            format!("The request body is larger than the limit of {limit} bytes")
        } else {
            format!("The request body could not be read: {e}")
        };
        ApiError::invalid_param("body", message)
    })?;
    let value: serde_json::Value = serde_json::from_slice(&bytes).map_err(|e| {
        ApiError::invalid_param(
            "body",
            format!("We could not parse the JSON body of your request: {e}"),
        )
    })?;
    let request = ChatCompletionRequest::from_json(value)?;
    let stream = request.stream.unwrap_or(false);
    if request.stream_options.is_some() && !stream {
        return Err(ApiError::invalid_param(
            "stream_options",
            "stream_options is only allowed when stream is true",
        ));
    }
    let include_usage = request
        .stream_options
        .as_ref()
        .and_then(|o| o.include_usage)
        .unwrap_or(false);
    Ok(Parsed {
        request: request.into_proto()?,
        stream,
        include_usage,
    })
}

pub(crate) async fn create(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, RestError> {
    let Parsed {
        request,
        stream,
        include_usage,
    } = parse(body, state.max_body_bytes).await?;
    let mut inference = state.inference.clone();
    if !stream {
        let response = inference
            .chat(with_key(&headers, request))
            .await?
            .into_inner();
        return Ok(Json(ChatCompletion::from_proto(&response)).into_response());
    }
    // Answered only once the first chunk exists, so early failures keep their HTTP status.
    let chunks = inference
        .chat_stream(with_key(&headers, request))
        .await?
        .into_inner();
    Ok(Sse::new(sse_events(chunks, include_usage)).into_response())
}

/// Each chunk becomes one `data:` event, forwarded as it arrives; the stream ends with
/// `data: [DONE]`, or, on a failure, with `data: {"error":{...}}` and no `[DONE]` (as OpenAI).
fn sse_events(
    chunks: tonic::Streaming<tollgate::v1::ChatChunk>,
    include_usage: bool,
) -> impl Stream<Item = Result<Event, Infallible>> {
    futures::stream::unfold(Some(chunks), move |state| async move {
        let mut chunks = state?;
        let event = match chunks.next().await {
            Some(Ok(chunk)) => {
                let json =
                    serde_json::to_string(&ChatCompletionChunk::from_proto(&chunk, include_usage))
                        .unwrap_or_default();
                return Some((Ok(Event::default().data(json)), Some(chunks)));
            }
            Some(Err(status)) => {
                Event::default().data(ApiError::from_status(&status).to_openai_json().to_string())
            }
            None => Event::default().data("[DONE]"),
        };
        Some((Ok(event), None))
    })
}
