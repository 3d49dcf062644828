//! `POST /v1/responses`: OpenAI's Responses API in front of every provider. The body is
//! translated into a `tollgate.v1.ChatRequest` (`request.rs`) and sent to `Inference.Chat` or
//! `Inference.ChatStream` exactly as chat completions are, so keys, limits, reservations, the
//! ledger and cost are the same. Answers are the response object (`response.rs`) or its event
//! stream with `sequence_number`s (`stream.rs`); errors are OpenAI's error shape, as on chat
//! completions. The gateway keeps no responses: `previous_response_id` is refused with a 400
//! naming it, and `store` is accepted and has no effect.

pub(crate) mod request;
mod response;
mod stream;

use axum::{
    Json,
    extract::State,
    response::{IntoResponse, Response, sse::Sse},
};
use serde_json::Value;
use tollgate::error::ApiError;

use crate::{
    app::AppState,
    error::RestError,
    extract::{ApiKey, JsonBody},
    named_events, request_id,
};
use request::Parsed;

/// A refused call's status as the REST error, in the Responses request's own field names.
fn in_responses_words(status: tonic::Status) -> RestError {
    RestError(request::in_responses_words(ApiError::from_status(&status)))
}
use stream::ResponsesStream;

pub(crate) async fn create(
    State(state): State<AppState>,
    key: ApiKey,
    JsonBody(body): JsonBody<Value>,
) -> Result<Response, RestError> {
    let Parsed {
        request,
        stream,
        echo,
    } = request::parse(body)?;
    let mut inference = state.inference.clone();
    if !stream {
        let answered = inference
            .chat(key.request(request))
            .await
            .map_err(in_responses_words)?;
        let id = request_id::of(&answered);
        let answer = answered.into_inner();
        return Ok(request_id::on(
            Json(response::response(&answer, echo)).into_response(),
            id,
        ));
    }
    // Answered only once the first chunk exists, so early failures keep their HTTP status.
    let answered = inference
        .chat_stream(key.request(request))
        .await
        .map_err(in_responses_words)?;
    let id = request_id::of(&answered);
    let chunks = answered.into_inner();
    let events = Sse::new(named_events::events(chunks, ResponsesStream::new(echo)));
    Ok(request_id::on(events.into_response(), id))
}
