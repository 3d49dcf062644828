//! `tollgate.v1.Inference`: the request path. For each call: validate, resolve the model through
//! Catalog, admit the key through Billing (authentication, per-minute and monthly limits), call
//! the provider, and settle the usage with Billing before the answer completes. Every admitted
//! request is settled exactly once, whether it succeeded, failed or the client left.

use std::sync::{
    Arc,
    atomic::{AtomicUsize, Ordering},
};

use tokio::sync::Notify;
use tokio_stream::wrappers::ReceiverStream;
use tollgate::{
    auth::AUTHORIZATION,
    error::{ApiError, ErrorKind},
    transport::GrpcTransport,
    v1::{
        AdmitRequest, ChatChunk, ChatRequest, ChatResponse, Outcome, ResolveModelRequest,
        ResolvedModel, SettleRequest, Usage, catalog_client::CatalogClient, inference_server,
        metering_client::MeteringClient,
    },
};
use tonic::{Request, Response, Status, metadata::MetadataMap};

use crate::{
    Provider, Providers, UpstreamError,
    providers::Target,
    streaming,
    thinking::{self, Thinking},
    token_bounds::{self, TokenBounds},
    validate,
};

/// Margin past a request's total deadline before its unsettled reservation may be swept.
const RESERVATION_TTL_MARGIN_MS: u64 = 60_000;

/// The Inference service. Cheap to clone.
#[derive(Debug, Clone)]
pub struct InferenceService {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    providers: Providers,
    catalog: CatalogClient<GrpcTransport>,
    metering: MeteringClient<GrpcTransport>,
    in_flight: Arc<InFlight>,
    /// The largest answer this service sends (its gRPC servers' and clients' message limit).
    max_message_bytes: usize,
}

/// tonic's own default message limit, for a service built without [`InferenceService::with_max_message_bytes`].
const DEFAULT_MAX_MESSAGE_BYTES: usize = 4 * 1024 * 1024;

/// Admitted requests not settled yet. A stream whose client left keeps running (to the
/// upstream's final usage) after its HTTP connection is gone, so a shutdown waits for this count,
/// not only for connections, before it closes the ledger.
#[derive(Debug, Default)]
struct InFlight {
    count: AtomicUsize,
    idle: Notify,
}

/// Counts one admitted request in [`InFlight`] until dropped (after its settlement).
#[derive(Debug)]
pub(crate) struct InFlightGuard(Arc<InFlight>);

impl InFlightGuard {
    fn new(in_flight: &Arc<InFlight>) -> Self {
        in_flight.count.fetch_add(1, Ordering::SeqCst);
        Self(Arc::clone(in_flight))
    }
}

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        if self.0.count.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

/// A request that Billing admitted: from here on it must be settled exactly once.
#[derive(Debug)]
pub(crate) struct Admitted {
    pub request_id: String,
    pub created: i64,
    pub key_id: String,
    pub route: ResolvedModel,
    pub provider: Arc<Provider>,
    pub thinking: Thinking,
    pub streamed: bool,
    /// The token bounds the request was admitted (and its money reserved) at.
    pub bounds: TokenBounds,
    /// Keeps the request counted as in flight until it is dropped, after settlement.
    pub _in_flight: InFlightGuard,
}

impl Admitted {
    pub(crate) fn target(&self) -> Target<'_> {
        Target {
            route: &self.route,
            thinking: self.thinking,
        }
    }
}

impl InferenceService {
    /// `catalog` and `metering` (Billing's internal API) reach those services in-process or over the network.
    pub fn new(providers: Providers, catalog: GrpcTransport, metering: GrpcTransport) -> Self {
        Self {
            inner: Arc::new(Inner {
                providers,
                catalog: CatalogClient::new(catalog),
                metering: MeteringClient::new(metering),
                in_flight: Arc::default(),
                max_message_bytes: DEFAULT_MAX_MESSAGE_BYTES,
            }),
        }
    }

    /// The gRPC message limit the answers must fit (`server.max_message_bytes`): a larger
    /// non-streaming answer fails as an upstream failure before it is settled, rather than being
    /// settled and then refused by the transport. Call before the service is cloned.
    pub fn with_max_message_bytes(mut self, bytes: usize) -> Self {
        if let Some(inner) = Arc::get_mut(&mut self.inner) {
            inner.max_message_bytes = bytes;
        }
        self
    }

    /// The gRPC message limit (`server.max_message_bytes`).
    pub fn max_message_bytes(&self) -> usize {
        self.inner.max_message_bytes
    }

    /// Resolves once no admitted request is left unsettled (those running detached included).
    pub async fn drained(&self) {
        let in_flight = &self.inner.in_flight;
        loop {
            let idle = in_flight.idle.notified();
            tokio::pin!(idle);
            // Registered before the check, so a settlement between the two is not missed.
            idle.as_mut().enable();
            if in_flight.count.load(Ordering::SeqCst) == 0 {
                return;
            }
            idle.await;
        }
    }

    pub(crate) async fn admit(
        &self,
        metadata: &MetadataMap,
        request: &ChatRequest,
        streamed: bool,
    ) -> Result<Admitted, Status> {
        validate::request(request)?;
        let route = self
            .inner
            .catalog
            .clone()
            .resolve_model(ResolveModelRequest {
                id: request.model.clone(),
            })
            .await?
            .into_inner();
        validate::for_model(request, &route)?;
        let thinking = thinking::decide(request, &route)?;
        let provider = self
            .inner
            .providers
            .get(&route.provider)
            .cloned()
            .ok_or_else(|| {
                ApiError::new(
                    ErrorKind::Internal,
                    format!("model {} names an unknown provider", route.model_id),
                )
            })?;
        provider.ready().map_err(|e| e.to_api_error())?;
        provider
            .check(
                request,
                &Target {
                    route: &route,
                    thinking,
                },
            )
            .map_err(|e| e.to_api_error())?;
        let request_id = format!("chatcmpl-{}", uuid::Uuid::now_v7().simple());
        let bounds = token_bounds::bounds(request, &route);
        let total_ms = u64::try_from(provider.timeouts().total.as_millis()).unwrap_or(u64::MAX);
        let mut admit = Request::new(AdmitRequest {
            request_id: request_id.clone(),
            model: route.requested_id.clone(),
            model_id: route.model_id.clone(),
            max_prompt_tokens: bounds.max_prompt_tokens,
            max_completion_tokens: bounds.max_completion_tokens,
            reservation_ttl_ms: total_ms.saturating_add(RESERVATION_TTL_MARGIN_MS),
        });
        if let Some(auth) = metadata.get(AUTHORIZATION) {
            admit.metadata_mut().insert(AUTHORIZATION, auth.clone());
        }
        let admission = self.inner.metering.clone().admit(admit).await?.into_inner();
        let in_flight = InFlightGuard::new(&self.inner.in_flight);
        Ok(Admitted {
            request_id,
            created: chrono::Utc::now().timestamp(),
            key_id: admission.key.map(|k| k.key_id).unwrap_or_default(),
            route,
            provider,
            thinking,
            streamed,
            bounds,
            _in_flight: in_flight,
        })
    }

    /// Records the request in the ledger; returns its cost once the row is durable. `estimated`
    /// marks usage the gateway counted itself (the upstream never reported it).
    pub(crate) async fn settle(
        &self,
        admitted: &Admitted,
        usage: Option<Usage>,
        outcome: Outcome,
        estimated: bool,
    ) -> Result<i64, Status> {
        let settlement = self
            .inner
            .metering
            .clone()
            .settle(SettleRequest {
                request_id: admitted.request_id.clone(),
                key_id: admitted.key_id.clone(),
                requested_model: admitted.route.requested_id.clone(),
                model_id: admitted.route.model_id.clone(),
                provider: admitted.route.provider.clone(),
                upstream_model: admitted.route.upstream_model.clone(),
                usage,
                outcome: outcome.into(),
                streamed: admitted.streamed,
                estimated,
            })
            .await
            .inspect_err(|e| {
                tracing::error!(request_id = %admitted.request_id, error = %e, "settlement failed");
            })?;
        Ok(settlement.into_inner().cost_picodollars)
    }

    /// Settles a request that failed upstream and returns the error to report.
    pub(crate) async fn fail(&self, admitted: &Admitted, error: UpstreamError) -> Status {
        tracing::warn!(request_id = %admitted.request_id, error = %error, "upstream call failed");
        match self.settle(admitted, None, Outcome::Failed, false).await {
            Ok(_) => error.to_api_error().into_status(),
            Err(status) => status,
        }
    }
}

pub(crate) fn timeout_error(admitted: &Admitted, seconds: u64) -> UpstreamError {
    UpstreamError::Timeout {
        provider: admitted.route.provider.clone(),
        seconds,
    }
}

/// Runs the rest of a request in a task of its own, so that once admitted it is settled even if
/// the caller goes away (a REST client hanging up drops the handler, and with it this future).
async fn detached<T: Send + 'static>(
    work: impl Future<Output = Result<T, Status>> + Send + 'static,
) -> Result<T, Status> {
    tokio::spawn(work).await.unwrap_or_else(|e| {
        Err(
            ApiError::new(ErrorKind::Internal, format!("the request task failed: {e}"))
                .into_status(),
        )
    })
}

impl InferenceService {
    /// A non-streaming call from admission to settlement.
    async fn complete(
        &self,
        metadata: MetadataMap,
        request: ChatRequest,
    ) -> Result<ChatResponse, Status> {
        let admitted = self.admit(&metadata, &request, false).await?;
        let timeouts = admitted.provider.timeouts();
        let called = tokio::time::timeout(
            timeouts.total,
            admitted.provider.chat(&request, &admitted.target()),
        )
        .await
        .unwrap_or_else(|_| Err(timeout_error(&admitted, timeouts.total.as_secs())));
        let mut response = match called {
            Ok(response) => response,
            Err(error) => return Err(self.fail(&admitted, error).await),
        };
        // With room for the id, model and cost set below.
        let size = prost::Message::encoded_len(&response) + 256;
        if size > self.inner.max_message_bytes {
            let error = UpstreamError::Failed {
                provider: admitted.route.provider.clone(),
                message: format!(
                    "the answer ({size} bytes) is larger than the gateway's message limit of {} bytes",
                    self.inner.max_message_bytes
                ),
            };
            return Err(self.fail(&admitted, error).await);
        }
        let mut usage = response.usage.take().unwrap_or_default();
        usage.cost_picodollars = Some(
            self.settle(&admitted, Some(usage), Outcome::Succeeded, false)
                .await?,
        );
        response.id = admitted.request_id;
        response.created = admitted.created;
        response.model = admitted.route.requested_id;
        response.usage = Some(usage);
        Ok(response)
    }
}

#[tonic::async_trait]
impl inference_server::Inference for InferenceService {
    async fn chat(&self, request: Request<ChatRequest>) -> Result<Response<ChatResponse>, Status> {
        let (metadata, _, request) = request.into_parts();
        let service = self.clone();
        detached(async move { service.complete(metadata, request).await })
            .await
            .map(Response::new)
    }

    type ChatStreamStream = ReceiverStream<Result<ChatChunk, Status>>;

    /// Answers once the first upstream chunk exists, so early upstream failures become real
    /// errors (an HTTP status over REST) instead of a broken stream.
    async fn chat_stream(
        &self,
        request: Request<ChatRequest>,
    ) -> Result<Response<Self::ChatStreamStream>, Status> {
        let (metadata, _, request) = request.into_parts();
        let started = streaming::start(self.clone(), metadata, request);
        match started.opened.await {
            Ok(Ok(())) => Ok(Response::new(started.chunks)),
            Ok(Err(status)) => Err(status),
            Err(_) => {
                Err(ApiError::new(ErrorKind::Internal, "the stream task failed").into_status())
            }
        }
    }
}
