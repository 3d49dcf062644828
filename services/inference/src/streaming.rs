//! The streaming relay: a task that reads the upstream stream and writes each chunk, re-labelled
//! with the gateway's id, into a bounded channel the client reads. A failed send means the client
//! left: the upstream request is dropped at once. Upstream usage is taken off the chunks and, once
//! the upstream is done, settled with Billing; the client gets its usage chunk (with the cost)
//! only after the ledger row is durable, then the stream ends.

use futures::StreamExt;
use tokio::{sync::mpsc, time::Instant};
use tokio_stream::wrappers::ReceiverStream;
use tollgate::v1::{ChatChunk, Outcome, Usage};
use tonic::Status;

use crate::{
    InferenceService, UpstreamError,
    providers::ChunkStream,
    service::{Admitted, timeout_error},
};

/// Chunks buffered between the upstream reader and the client before the reader waits.
const CHANNEL_CHUNKS: usize = 32;

pub(crate) struct Options {
    pub include_usage: bool,
    pub deadline: Instant,
    pub total_secs: u64,
}

pub(crate) fn relay(
    service: InferenceService,
    admitted: Admitted,
    first: ChatChunk,
    rest: ChunkStream,
    options: Options,
) -> ReceiverStream<Result<ChatChunk, Status>> {
    let (tx, rx) = mpsc::channel(CHANNEL_CHUNKS);
    tokio::spawn(run(service, admitted, first, rest, options, tx));
    ReceiverStream::new(rx)
}

/// How the upstream part of a stream ended.
enum End {
    Finished,
    ClientLeft,
    Failed(UpstreamError),
}

async fn run(
    service: InferenceService,
    admitted: Admitted,
    first: ChatChunk,
    mut rest: ChunkStream,
    options: Options,
    tx: mpsc::Sender<Result<ChatChunk, Status>>,
) {
    let mut usage: Option<Usage> = None;
    let mut finished = false;
    let mut next = Some(first);
    let end = loop {
        let mut chunk = match next.take() {
            Some(chunk) => chunk,
            None => match tokio::time::timeout_at(options.deadline, rest.next()).await {
                Err(_) => break End::Failed(timeout_error(&admitted, options.total_secs)),
                Ok(None) if finished => break End::Finished,
                Ok(None) => {
                    break End::Failed(UpstreamError::Failed {
                        provider: admitted.route.provider.clone(),
                        message: "the stream ended before a finish_reason".to_owned(),
                    });
                }
                Ok(Some(Err(error))) => break End::Failed(error),
                Ok(Some(Ok(chunk))) => chunk,
            },
        };
        // Usage may ride on any chunk (DeepSeek puts it on the finish chunk); it is cumulative,
        // so the last one counts. The client gets it in a usage chunk of its own.
        if let Some(u) = chunk.usage.take() {
            usage = Some(u);
        }
        if chunk.choices.is_empty() {
            continue;
        }
        finished |= chunk.choices.iter().any(|c| c.finish_reason.is_some());
        chunk.id.clone_from(&admitted.request_id);
        chunk.created = admitted.created;
        chunk.model.clone_from(&admitted.route.requested_id);
        if tx.send(Ok(chunk)).await.is_err() {
            break End::ClientLeft;
        }
    };
    // Stop reading (and close) the upstream before settling.
    drop(rest);
    let outcome = match &end {
        End::Finished => Outcome::Succeeded,
        End::ClientLeft => Outcome::Cancelled,
        End::Failed(_) => Outcome::Failed,
    };
    let settled = service.settle(&admitted, usage, outcome).await;
    let last = match (end, settled) {
        (End::ClientLeft, _) => return,
        (End::Failed(error), _) => {
            tracing::warn!(request_id = %admitted.request_id, error = %error, "upstream stream failed");
            Err(error.to_api_error().into_status())
        }
        (End::Finished, Err(status)) => Err(status),
        (End::Finished, Ok(_)) if !options.include_usage => return,
        (End::Finished, Ok(cost)) => {
            let mut usage = usage.unwrap_or_default();
            usage.cost_picodollars = Some(cost);
            Ok(ChatChunk {
                id: admitted.request_id.clone(),
                created: admitted.created,
                model: admitted.route.requested_id.clone(),
                choices: vec![],
                usage: Some(usage),
                system_fingerprint: None,
            })
        }
    };
    // The client may have left meanwhile; nothing more to do then.
    let _ = tx.send(last).await;
}
