//! The streaming relay: a task that admits the request, opens the upstream stream (reporting the
//! outcome of that first step on a oneshot, so early failures are real errors), then reads the
//! upstream and writes each chunk, re-labelled with the gateway's id, into a bounded channel the
//! client reads. The task outlives the caller, so an admitted stream is always settled.
//!
//! Usage is the upstream's own final count, taken off the chunks. A failed send means the client
//! left; the upstream has been asked for the whole answer and bills it, so the relay keeps
//! reading (still bounded by the request's total deadline) to the upstream's final usage and
//! settles that, as `cancelled`. A stream that ends without its final usage (the upstream never
//! sent it, failed mid-way, or the deadline cut it: any count seen before is partial) is settled
//! with the gateway's estimate of what was generated ([`crate::token_bounds::estimate`], over the
//! partial count) and the ledger row is marked `estimated`. The
//! client gets its usage chunk (with the cost) only after the ledger row is durable, then the
//! stream ends.

use futures::StreamExt;
use tokio::{
    sync::{mpsc, oneshot},
    time::Instant,
};
use tokio_stream::wrappers::ReceiverStream;
use tollgate::v1::{ChatChunk, ChatRequest, Outcome, Usage};
use tonic::{Status, metadata::MetadataMap};
use tracing::Instrument;

use crate::{
    InferenceService, UpstreamError,
    providers::ChunkStream,
    service::{Admitted, timeout_error},
    telemetry::{RequestMeter, RequestStatus},
    token_bounds,
};

/// Chunks buffered between the upstream reader and the client before the reader waits.
const CHANNEL_CHUNKS: usize = 32;

/// A started stream: `opened` says whether it opened (admitted, and the upstream's first chunk
/// arrived); the chunks follow on `chunks`.
pub(crate) struct Started {
    /// The request's id once it opened.
    pub opened: oneshot::Receiver<Result<String, Status>>,
    pub chunks: ReceiverStream<Result<ChatChunk, Status>>,
}

/// A stream that is admitted and has its first upstream chunk.
struct Opened {
    admitted: Admitted,
    first: ChatChunk,
    rest: ChunkStream,
    deadline: Instant,
}

/// Starts a stream's task.
pub(crate) fn start(
    service: InferenceService,
    metadata: MetadataMap,
    request: ChatRequest,
) -> Started {
    let (opened_tx, opened_rx) = oneshot::channel();
    let (tx, rx) = mpsc::channel(CHANNEL_CHUNKS);
    let mut meter = RequestMeter::start(true, &request.model);
    let span = meter.span().clone();
    tokio::spawn(
        async move {
            match open(&service, &metadata, &request).await {
                Ok(Opened {
                    admitted,
                    first,
                    rest,
                    deadline,
                }) => {
                    meter.admitted(&admitted);
                    meter.first_token();
                    meter.response_model(&first.model);
                    let include_usage = request
                        .stream_options
                        .is_some_and(|options| options.include_usage);
                    // If the caller is gone already, the first send fails and the stream is settled
                    // as cancelled.
                    let _ = opened_tx.send(Ok(admitted.request_id.clone()));
                    let relay = Relay {
                        include_usage,
                        deadline,
                        tx,
                    };
                    let status = run(service, admitted, first, rest, relay, &mut meter).await;
                    meter.finish(status);
                }
                Err(status) => {
                    meter.finish(RequestStatus::of(&status));
                    let _ = opened_tx.send(Err(status));
                }
            }
        }
        .instrument(span),
    );
    Started {
        opened: opened_rx,
        chunks: ReceiverStream::new(rx),
    }
}

/// Admits the request and waits, within the first-token deadline, for the upstream's first chunk.
/// A failure after admission is settled here.
async fn open(
    service: &InferenceService,
    metadata: &MetadataMap,
    request: &ChatRequest,
) -> Result<Opened, Status> {
    let admitted = service.admit(metadata, request, true).await?;
    let timeouts = admitted.provider.timeouts();
    let deadline = Instant::now() + timeouts.total;
    let first = async {
        let mut stream = admitted
            .provider
            .chat_stream(request, &admitted.target())
            .await?;
        match stream.next().await {
            Some(first) => Ok((first?, stream)),
            None => Err(UpstreamError::Failed {
                provider: admitted.route.provider.clone(),
                message: "the stream ended before its first chunk".to_owned(),
            }),
        }
    };
    let opened = tokio::time::timeout(timeouts.first_token, first)
        .await
        .unwrap_or_else(|_| Err(timeout_error(&admitted, timeouts.first_token.as_secs())));
    match opened {
        Ok((first, rest)) => Ok(Opened {
            admitted,
            first,
            rest,
            deadline,
        }),
        Err(error) => Err(service.fail(&admitted, error).await),
    }
}

/// How the upstream part of a stream ended.
enum End {
    Finished,
    Failed(UpstreamError),
}

/// Where and how a stream's chunks go.
struct Relay {
    include_usage: bool,
    deadline: Instant,
    tx: mpsc::Sender<Result<ChatChunk, Status>>,
}

async fn run(
    service: InferenceService,
    admitted: Admitted,
    first: ChatChunk,
    mut rest: ChunkStream,
    relay: Relay,
    meter: &mut RequestMeter,
) -> RequestStatus {
    let Relay {
        include_usage,
        deadline,
        tx,
    } = relay;
    let total_secs = admitted.provider.timeouts().total.as_secs();
    let mut usage: Option<Usage> = None;
    let mut finished = false;
    let mut client_left = false;
    // Bytes of generated text seen, for an estimate if the upstream never reports usage.
    let mut generated: u64 = 0;
    let mut next = Some(first);
    let end = loop {
        let mut chunk = match next.take() {
            Some(chunk) => chunk,
            None => match tokio::time::timeout_at(deadline, rest.next()).await {
                Err(_) => break End::Failed(timeout_error(&admitted, total_secs)),
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
        for reason in chunk
            .choices
            .iter()
            .filter_map(|c| c.finish_reason.as_deref())
        {
            meter.finish_reason(reason);
            finished = true;
        }
        generated += token_bounds::generated_bytes(&chunk);
        if client_left {
            continue;
        }
        chunk.id.clone_from(&admitted.request_id);
        chunk.created = admitted.created;
        chunk.model.clone_from(&admitted.route.requested_id);
        if tx.send(Ok(chunk)).await.is_err() {
            // The upstream generates (and bills) the rest anyway: read on to its final count.
            tracing::debug!(request_id = %admitted.request_id, "client left; reading the upstream to its usage");
            client_left = true;
        }
    };
    // Stop reading (and close) the upstream before settling.
    drop(rest);
    let outcome = match &end {
        End::Failed(_) => Outcome::Failed,
        End::Finished if client_left => Outcome::Cancelled,
        End::Finished => Outcome::Succeeded,
    };
    // The upstream's count is final only on a stream that finished; on one cut short, what it
    // reported is partial (Anthropic's `message_start` announces 1 output token) and only the
    // floor of an estimate.
    let (mut usage, estimated) = match (usage, &end) {
        (Some(usage), End::Finished) => (usage, false),
        (reported, _) => (
            token_bounds::estimate(reported, admitted.bounds.prompt_text_bytes, generated),
            true,
        ),
    };
    let settled = service
        .settle(&admitted, Some(usage), outcome, estimated)
        .await;
    if let Ok(cost) = &settled {
        meter.settled(&usage, *cost);
    }
    if client_left {
        return RequestStatus::Cancelled;
    }
    let last = match (end, settled) {
        (End::Failed(error), _) => {
            tracing::warn!(request_id = %admitted.request_id, error = %error, "upstream stream failed");
            Err(error.to_api_error().into_status())
        }
        (End::Finished, Err(status)) => Err(status),
        (End::Finished, Ok(_)) if !include_usage => return RequestStatus::Ok,
        (End::Finished, Ok(cost)) => {
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
    let status = RequestStatus::of_result(&last);
    // The client may have left meanwhile; nothing more to do then.
    let _ = tx.send(last).await;
    status
}
