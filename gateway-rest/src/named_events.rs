//! Server-sent events with names (`event: <name>` then `data: <json>`), as Anthropic's Messages
//! stream and OpenAI's Responses stream send them: a surface's translator turns each
//! `tollgate.v1.ChatChunk` into its events as the chunk arrives, and ends the stream on the
//! gRPC stream's end or failure.

use std::convert::Infallible;

use axum::response::sse::Event;
use futures::{Stream, StreamExt};
use serde_json::Value;
use tollgate::{error::ApiError, v1::ChatChunk};

/// A surface's stream translation (a pure state machine over chunks).
pub trait Translator: Send + 'static {
    /// The events one chunk yields.
    fn on_chunk(&mut self, chunk: &ChatChunk) -> Vec<(&'static str, Value)>;
    /// The events that end a stream that completed.
    fn on_end(&mut self) -> Vec<(&'static str, Value)>;
    /// The events that end a stream that failed.
    fn on_error(&mut self, error: &ApiError) -> Vec<(&'static str, Value)>;
}

/// The SSE events of `chunks` through `translator`, each forwarded as it arrives.
pub fn events<T: Translator>(
    chunks: tollgate::caller::ChatChunks,
    translator: T,
) -> impl Stream<Item = Result<Event, Infallible>> {
    futures::stream::unfold(Some((chunks, translator)), |state| async move {
        let (mut chunks, mut translator) = state?;
        let (events, next) = match chunks.next().await {
            Some(Ok(chunk)) => {
                let events = translator.on_chunk(&chunk);
                (events, Some((chunks, translator)))
            }
            Some(Err(status)) => (translator.on_error(&ApiError::from_status(&status)), None),
            None => (translator.on_end(), None),
        };
        let events: Vec<Result<Event, Infallible>> = events
            .into_iter()
            .map(|(name, data)| {
                Ok(crate::sse_json::with_json(
                    Event::default().event(name),
                    &data,
                ))
            })
            .collect();
        Some((futures::stream::iter(events), next))
    })
    .flatten()
}
