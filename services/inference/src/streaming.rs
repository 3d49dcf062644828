//! The streaming relay: a task that admits the request, opens the upstream stream (reporting the
//! outcome of that first step on a oneshot, so early failures are real errors), then reads the
//! upstream and writes each chunk, re-labelled with the gateway's id, into a bounded channel the
//! client reads. The task outlives the caller, so an admitted stream is always settled.
//!
//! Usage is the upstream's own final count, taken off the chunks. A client that leaves (its end
//! of the channel closes, or a send waits longer than the stall timeout: a reader that stopped
//! reading) is, by default (`ClientDisconnect::Cancel`), the end of the upstream request too: the
//! relay drops the upstream connection at once and settles the prompt plus what was relayed, as
//! `cancelled`, marked `estimated` (over the count the upstream had sent, e.g. Anthropic's
//! `message_start` input tokens). With `ClientDisconnect::Finish` it reads on (still bounded by
//! the request's total deadline) to the upstream's final usage and settles that, exact. A
//! shutdown whose grace period is over cuts the stream the same way (`failed`, estimated). A
//! stream that ends without its final usage (the upstream never sent it, failed mid-way, or the
//! deadline cut it: any count seen before is partial) is settled with the gateway's estimate of
//! what was generated ([`crate::token_bounds::estimate`], over the partial count) and the ledger
//! row is marked `estimated`. The client gets its usage chunk (with the cost) only after the
//! ledger row is durable, then the stream ends.

use futures::{StreamExt, stream::Map};
use tokio::{
    sync::{mpsc, oneshot},
    time::Instant,
};
use tokio_stream::wrappers::ReceiverStream;
use tollgate::{
    auth::AuthenticatedKey,
    v1::{ChatChunk, ChatRequest, Outcome, Usage},
};
use tonic::{Status, metadata::MetadataMap};
use tracing::Instrument;

use crate::{
    ClientDisconnect, InferenceService, UpstreamError,
    providers::ChunkStream,
    service::{Admitted, ServedBy, failed_request, shutdown_error, timeout_error},
    telemetry::{RequestMeter, RequestStatus},
    token_bounds,
};

/// Chunks buffered between the upstream reader and the client before the reader waits.
const CHANNEL_CHUNKS: usize = 32;

/// One item on the channel, boxed: tokio's channel allocates its slots 32 at a time, as soon as
/// it is made, so each held stream keeps a block of them. Boxed, a slot is two words instead of
/// a `Status` (the larger of the two), and the block under 1 KiB instead of over 5 KiB.
type Relayed = Result<Box<ChatChunk>, Box<Status>>;

/// The chunks of a started stream, as the client reads them.
pub(crate) type Chunks = Map<ReceiverStream<Relayed>, fn(Relayed) -> Result<ChatChunk, Status>>;

/// A started stream: `opened` says whether it opened (admitted, and the upstream's first chunk
/// arrived); the chunks follow on `chunks`.
pub(crate) struct Started {
    /// The request's id and what serves it, once it opened.
    pub opened: oneshot::Receiver<Result<(String, ServedBy), Status>>,
    pub chunks: Chunks,
}

/// A stream that is admitted and has its first upstream chunk.
struct Opened {
    admitted: Admitted,
    first: ChatChunk,
    rest: ChunkStream,
    deadline: Instant,
    /// Whether the client asked for a usage chunk at the end (all a relay keeps of the request).
    include_usage: bool,
}

/// What the caller asked: all of it is needed to open the stream, none of it to relay it.
struct Asked {
    metadata: MetadataMap,
    checked: Option<AuthenticatedKey>,
    request: ChatRequest,
}

/// Starts a stream's task.
pub(crate) fn start(
    service: InferenceService,
    metadata: MetadataMap,
    checked: Option<AuthenticatedKey>,
    request: ChatRequest,
) -> Started {
    let (opened_tx, opened_rx) = oneshot::channel();
    let (tx, rx) = mpsc::channel(CHANNEL_CHUNKS);
    let meter = RequestMeter::start(true, &request.model);
    let span = meter.span().clone();
    let asked = Box::new(Asked {
        metadata,
        checked,
        request,
    });
    tokio::spawn(stream(service, asked, meter, opened_tx, tx).instrument(span));
    Started {
        opened: opened_rx,
        chunks: ReceiverStream::new(rx).map(unbox),
    }
}

/// A stream's task, from admission to settlement. Held streams are many and long, so the task
/// keeps little: opening (admission, the upstream call and its retries) and relaying are each
/// boxed, and the caller's request (with its whole prompt) is freed once the stream is open.
async fn stream(
    service: InferenceService,
    asked: Box<Asked>,
    mut meter: RequestMeter,
    opened_tx: oneshot::Sender<Result<(String, ServedBy), Status>>,
    tx: mpsc::Sender<Relayed>,
) {
    let relaying = match Box::pin(open(&service, asked, &mut meter)).await {
        Ok(opened) => {
            meter.admitted(&opened.admitted);
            meter.first_token();
            meter.response_model(&opened.first.model);
            // If the caller is gone already, the first send fails and the stream is settled
            // as cancelled.
            let admitted = &opened.admitted;
            let _ = opened_tx.send(Ok((admitted.request_id.clone(), admitted.served_by())));
            Box::pin(run(&service, opened, tx, &mut meter))
        }
        Err(status) => {
            meter.finish(RequestStatus::of(&status));
            let _ = opened_tx.send(Err(status));
            return;
        }
    };
    let status = relaying.await;
    meter.finish(status);
}

fn unbox(item: Relayed) -> Result<ChatChunk, Status> {
    item.map(|chunk| *chunk).map_err(|status| *status)
}

/// Admits the request and waits, within the first-token deadline, for the upstream's first chunk;
/// a deployment that fails before it is retried on another (`routing.rs`), never after. A failure
/// after admission is settled here.
async fn open(
    service: &InferenceService,
    asked: Box<Asked>,
    meter: &mut RequestMeter,
) -> Result<Opened, Status> {
    let Asked {
        metadata,
        checked,
        request,
    } = *asked;
    let mut admitted = service
        .admit(&metadata, checked.as_ref(), &request, true)
        .await?;
    let request = &request;
    let opened = admitted
        .call_with_retries(service, |pick, left| async move {
            let first_token = pick.provider.timeouts().first_token.min(left);
            let first = async {
                let mut stream = pick.provider.chat_stream(request, &pick.target()).await?;
                match stream.next().await {
                    Some(first) => Ok((first?, stream)),
                    None => Err(UpstreamError::Failed {
                        provider: pick.route.provider.clone(),
                        message: "the stream ended before its first chunk".to_owned(),
                    }),
                }
            };
            pick.within(first_token, first).await
        })
        .await;
    match opened {
        Ok((first, rest)) => {
            let deadline = admitted.upstream_by;
            Ok(Opened {
                admitted,
                first,
                rest,
                deadline,
                include_usage: request
                    .stream_options
                    .is_some_and(|options| options.include_usage),
            })
        }
        Err(error) => {
            // The request's log line names it and carries what it was settled at.
            meter.admitted(&admitted);
            let status = service.fail(meter, &admitted, error).await;
            Err(failed_request(status, &admitted.request_id))
        }
    }
}

/// How the upstream part of a stream ended.
enum End {
    Finished,
    Failed(UpstreamError),
    /// The client left (disconnected or stalled) and the upstream was closed with it.
    Left,
}

/// What became of one send to the client.
enum Delivery {
    Sent,
    /// The client's end is closed, or it did not take the chunk within the stall timeout.
    Left,
    Cut,
}

/// Sends `item` to the client within the stall timeout, unless a shutdown cuts the stream first.
async fn deliver(
    service: &InferenceService,
    tx: &mpsc::Sender<Relayed>,
    item: Result<ChatChunk, Status>,
) -> Delivery {
    let stall = service.client_policy().stall_timeout;
    let item = item.map(Box::new).map_err(Box::new);
    tokio::select! {
        sent = tokio::time::timeout(stall, tx.send(item)) => match sent {
            Ok(Ok(())) => Delivery::Sent,
            Ok(Err(_)) | Err(_) => Delivery::Left,
        },
        () = service.cut() => Delivery::Cut,
    }
}

/// Relays an opened stream to the client through `tx`, then settles it.
async fn run(
    service: &InferenceService,
    opened: Opened,
    tx: mpsc::Sender<Relayed>,
    meter: &mut RequestMeter,
) -> RequestStatus {
    let Opened {
        admitted,
        first,
        mut rest,
        deadline,
        include_usage,
    } = opened;
    let total_secs = admitted.provider.timeouts().total.as_secs();
    let cancel_on_leave = service.client_policy().on_disconnect == ClientDisconnect::Cancel;
    let mut usage: Option<Usage> = None;
    let mut finished = false;
    let mut client_left = false;
    // Bytes of generated text seen, for an estimate if the upstream never reports usage.
    let mut generated: u64 = 0;
    let mut next = Some(first);
    let end = loop {
        let mut chunk = match next.take() {
            Some(chunk) => chunk,
            // Past the deadline nothing more is read, even if the upstream has it ready.
            None if Instant::now() >= deadline => {
                break End::Failed(timeout_error(&admitted, total_secs));
            }
            None => tokio::select! {
                read = tokio::time::timeout_at(deadline, rest.next()) => match read {
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
                // A client that hangs up while the upstream is silent is noticed at once.
                () = tx.closed(), if !client_left => {
                    client_left = true;
                    if cancel_on_leave {
                        break End::Left;
                    }
                    continue;
                }
                () = service.cut() => break End::Failed(shutdown_error(&admitted)),
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
        match deliver(service, &tx, Ok(chunk)).await {
            Delivery::Sent => {}
            Delivery::Cut => break End::Failed(shutdown_error(&admitted)),
            Delivery::Left if cancel_on_leave => {
                tracing::debug!(request_id = %admitted.request_id, "client left; closing the upstream");
                client_left = true;
                break End::Left;
            }
            Delivery::Left => {
                // `finish`: the upstream generates (and bills) the rest anyway: read on to its
                // final count.
                tracing::debug!(request_id = %admitted.request_id, "client left; reading the upstream to its usage");
                client_left = true;
            }
        }
    };
    // Stop reading (and close) the upstream before settling.
    drop(rest);
    let outcome = match &end {
        End::Failed(_) => Outcome::Failed,
        End::Left => Outcome::Cancelled,
        End::Finished if client_left => Outcome::Cancelled,
        End::Finished => Outcome::Succeeded,
    };
    // The upstream's count is final only on a stream that finished; on one cut short, what it
    // reported is partial (Anthropic's `message_start` announces 1 output token) and only the
    // floor of an estimate.
    // An impossible count is no count at all: the estimate.
    let usage = token_bounds::plausible(usage, &admitted.request_id);
    let (mut usage, estimated) = match (usage, &end) {
        (Some(usage), End::Finished) => (usage, false),
        (reported, _) => (
            token_bounds::estimate(reported, admitted.bounds.prompt_text_bytes, generated),
            true,
        ),
    };
    // Boxed like opening: settling (with its retries) is a large future needed once, at the end.
    let settled = Box::pin(service.settle(&admitted, Some(usage), outcome, estimated)).await;
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
        (End::Left, _) => return RequestStatus::Cancelled,
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
    // Bounded like every send: the client may have left or stalled meanwhile.
    drop(admitted);
    let _ = deliver(service, &tx, last).await;
    status
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The size of the future an `async fn` returns, from the function alone.
    fn future_size<A, B, C, D, E, R>(_: fn(A, B, C, D, E) -> R) -> usize {
        std::mem::size_of::<R>()
    }

    fn relay_size<R>(
        _: fn(
            &'static InferenceService,
            Opened,
            mpsc::Sender<Relayed>,
            &'static mut RequestMeter,
        ) -> R,
    ) -> usize {
        std::mem::size_of::<R>()
    }

    /// A held stream keeps its task and its relay for as long as the client reads: both stay
    /// small (unboxed, opening and settling made the task over 8 KiB), and a channel slot is two
    /// words.
    #[test]
    fn a_held_stream_keeps_little() {
        let task = future_size(stream as fn(_, _, _, _, _) -> _);
        assert!(task <= 1024, "the stream task is {task} bytes");
        let relay = relay_size(run as fn(_, _, _, _) -> _);
        assert!(relay <= 4096, "the relay is {relay} bytes");
        assert_eq!(std::mem::size_of::<Relayed>(), 16);
    }
}
