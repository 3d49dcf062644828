//! `tollgate.v1.Inference`: the request path. For each call: validate, resolve the model through
//! Catalog, admit the key through Billing (authentication, per-minute and monthly limits), call
//! the provider, and settle the usage with Billing before the answer completes. Every admitted
//! request is settled exactly once, whether it succeeded, failed or the client left.

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use tokio::sync::{Notify, watch};
use tokio_stream::wrappers::ReceiverStream;
use tollgate::{
    auth::AUTHORIZATION,
    error::{ApiError, ErrorKind},
    transport::GrpcTransport,
    v1::{
        AdmitRequest, AuthenticateRequest, ChatChunk, ChatRequest, ChatResponse, Outcome,
        ResolveModelRequest, ResolvedModel, SettleRequest, TokenCount, Usage,
        catalog_client::CatalogClient, inference_server, metering_client::MeteringClient,
    },
};
use tonic::{Request, Response, Status, metadata::MetadataMap};
use tracing::Instrument;

use crate::{
    ClientPolicy, Provider, Providers, UpstreamError,
    deadline::{self, Deadline},
    providers::Target,
    streaming,
    telemetry::{RequestMeter, RequestStatus},
    thinking::{self, Thinking},
    token_bounds::{self, TokenBounds},
    validate,
};

/// How long after the last moment a request may still be running (its total deadline plus one
/// stall timeout) its settlement is still retried while Billing is unreachable.
const SETTLE_MARGIN: Duration = Duration::from_secs(30);
/// How long after the last settlement attempt its reservation expires: a reservation is never
/// swept while its request is alive, because every request ends (settled or given up) before
/// its reservation's `expires_at`.
const EXPIRY_MARGIN: Duration = Duration::from_secs(30);
/// How long admission may wait for an unreachable Billing (restarting, say) before the request
/// is refused UNAVAILABLE; the caller's own deadline may be shorter.
const ADMIT_WITHIN: Duration = Duration::from_secs(10);

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
    /// What a stream does when its client leaves or stops reading.
    client: ClientPolicy,
    /// Turns true when a shutdown's grace period is over: every running request is cut and
    /// settled.
    cut: watch::Sender<bool>,
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
    /// The key's shown prefix (`sk-abc12...`), for the request's log line; never the secret.
    pub key_prefix: String,
    pub route: ResolvedModel,
    pub provider: Arc<Provider>,
    pub thinking: Thinking,
    pub streamed: bool,
    /// The token bounds the request was admitted (and its money reserved) at.
    pub bounds: TokenBounds,
    /// Until when its settlement may be retried: while its reservation holds.
    pub settle_by: Deadline,
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
                client: ClientPolicy::default(),
                cut: watch::Sender::new(false),
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

    /// What streams do when their client leaves or stops reading (`server.on_client_disconnect`,
    /// `server.client_stall_timeout_secs`). Call before the service is cloned.
    pub fn with_client_policy(mut self, client: ClientPolicy) -> Self {
        if let Some(inner) = Arc::get_mut(&mut self.inner) {
            inner.client = client;
        }
        self
    }

    pub(crate) fn client_policy(&self) -> ClientPolicy {
        self.inner.client
    }

    /// Cuts every running request, now and later (a shutdown whose grace period is over): each
    /// stops reading its upstream and is settled at what it has (estimated where the upstream
    /// sent no final count), then ends with `service_unavailable`. Wait for [`Self::drained`]
    /// afterwards.
    pub fn cut_running(&self) {
        self.inner.cut.send_replace(true);
    }

    /// Resolves once [`Self::cut_running`] was called.
    pub(crate) fn cut(&self) -> impl Future<Output = ()> + Send + 'static {
        let mut cut = self.inner.cut.subscribe();
        async move {
            let _ = cut.wait_for(|cut| *cut).await;
        }
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

    /// Validates a request, resolves its model, decides thinking and finds the provider that
    /// serves it (ready to be called, the request checked against it): everything before the
    /// key is involved.
    async fn route(
        &self,
        request: &ChatRequest,
        admit_by: Deadline,
    ) -> Result<(ResolvedModel, Arc<Provider>, Thinking), Status> {
        validate::request(request)?;
        let catalog = self.inner.catalog.clone();
        let resolving = tracing::info_span!(
            "resolve model",
            gen_ai.request.model = %request.model,
            tollgate.model_id = tracing::field::Empty,
            tollgate.provider = tracing::field::Empty,
        );
        let route = deadline::once("Catalog.ResolveModel", admit_by, |left| {
            let mut resolve = Request::new(ResolveModelRequest {
                id: request.model.clone(),
            });
            resolve.set_timeout(left);
            let mut catalog = catalog.clone();
            async move { catalog.resolve_model(resolve).await }
        })
        .instrument(resolving.clone())
        .await?
        .into_inner();
        resolving.record("tollgate.model_id", route.model_id.as_str());
        resolving.record("tollgate.provider", route.provider.as_str());
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
        Ok((route, provider, thinking))
    }

    #[tracing::instrument(name = "admit", skip_all)]
    pub(crate) async fn admit(
        &self,
        metadata: &MetadataMap,
        request: &ChatRequest,
        streamed: bool,
    ) -> Result<Admitted, Status> {
        let admit_by = Deadline::of_caller(metadata, ADMIT_WITHIN);
        let (route, provider, thinking) = self.route(request, admit_by).await?;
        let request_id = format!("chatcmpl-{}", uuid::Uuid::now_v7().simple());
        let bounds = token_bounds::bounds(request, &route);
        // The request's life is bounded: its upstream part by the total deadline, then one send
        // to the client by the stall timeout, then its settlement by `settle_by`; its
        // reservation outlives all of it, so the sweep never frees a live request's money.
        let settle_within =
            provider.timeouts().total + self.inner.client.stall_timeout + SETTLE_MARGIN;
        let settle_by = Deadline::after(settle_within);
        let reservation_ttl_ms =
            u64::try_from((settle_within + EXPIRY_MARGIN).as_millis()).unwrap_or(u64::MAX);
        let admit = AdmitRequest {
            request_id: request_id.clone(),
            model: route.requested_id.clone(),
            model_id: route.model_id.clone(),
            max_prompt_tokens: bounds.max_prompt_tokens,
            max_completion_tokens: bounds.max_completion_tokens,
            reservation_ttl_ms,
            streamed,
        };
        // Retried by request id while Billing is unreachable: Admit is idempotent.
        let metering = self.inner.metering.clone();
        let admission = deadline::retried("Metering.Admit", admit_by.min(settle_by), |left| {
            let mut call = with_key(metadata, admit.clone());
            call.set_timeout(left);
            let mut metering = metering.clone();
            async move { metering.admit(call).await }
        })
        .await?
        .into_inner();
        let in_flight = InFlightGuard::new(&self.inner.in_flight);
        Ok(Admitted {
            request_id,
            created: chrono::Utc::now().timestamp(),
            key_id: admission
                .key
                .as_ref()
                .map(|k| k.key_id.clone())
                .unwrap_or_default(),
            key_prefix: admission.key.map(|k| k.key_prefix).unwrap_or_default(),
            route,
            provider,
            thinking,
            streamed,
            bounds,
            settle_by,
            _in_flight: in_flight,
        })
    }

    /// Records the request in the ledger; returns its cost once the row is durable. `estimated`
    /// marks usage the gateway counted itself (the upstream never reported it).
    #[tracing::instrument(name = "settle", skip_all, fields(tollgate.outcome = ?outcome))]
    pub(crate) async fn settle(
        &self,
        admitted: &Admitted,
        usage: Option<Usage>,
        outcome: Outcome,
        estimated: bool,
    ) -> Result<i64, Status> {
        let settle = SettleRequest {
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
        };
        // Retried by request id while Billing is unreachable (the ledger is idempotent by it),
        // for as long as the request's reservation holds.
        let metering = self.inner.metering.clone();
        let settlement = deadline::retried("Metering.Settle", admitted.settle_by, |left| {
            let mut call = Request::new(settle.clone());
            call.set_timeout(left);
            let mut metering = metering.clone();
            async move { metering.settle(call).await }
        })
        .await
        .inspect_err(|e| {
            tracing::error!(request_id = %admitted.request_id, error = %e, "settlement failed");
        })?;
        Ok(settlement.into_inner().cost_picodollars)
    }

    /// Settles a request that failed upstream before any of its answer was relayed, and returns
    /// the error to report: at zero where the upstream provably generated nothing (it refused
    /// with an error status, or the request never reached it), else at the estimate of its
    /// prompt, marked (a timeout after the request was sent, an unreadable answer).
    pub(crate) async fn fail(
        &self,
        meter: &mut RequestMeter,
        admitted: &Admitted,
        error: UpstreamError,
    ) -> Status {
        let charge = (!error.generated_nothing())
            .then(|| token_bounds::estimate(None, admitted.bounds.prompt_text_bytes, 0));
        self.fail_charging(meter, admitted, error, charge).await
    }

    /// Settles a failed request at `charge`, an estimate (`None`: nothing), records what it was
    /// settled at on `meter` (the request's log line and span), and returns the caller's error.
    async fn fail_charging(
        &self,
        meter: &mut RequestMeter,
        admitted: &Admitted,
        error: UpstreamError,
        charge: Option<Usage>,
    ) -> Status {
        tracing::warn!(request_id = %admitted.request_id, error = %error, "upstream call failed");
        let estimated = charge.is_some();
        match self
            .settle(admitted, charge, Outcome::Failed, estimated)
            .await
        {
            Ok(cost) => {
                meter.settled(&charge.unwrap_or_default(), cost);
                error.to_api_error().into_status()
            }
            Err(status) => status,
        }
    }
}

/// The response metadata naming the request's ledger id, which REST returns as a header.
pub use tollgate::error::REQUEST_ID_METADATA;

/// `status` (an error after admission) naming the request's ledger id, as its answer would.
pub(crate) fn failed_request(mut status: Status, request_id: &str) -> Status {
    if let Ok(value) = request_id.parse() {
        status.metadata_mut().insert(REQUEST_ID_METADATA, value);
    }
    status
}

/// `response` carrying `request_id` as [`REQUEST_ID_METADATA`].
fn with_request_id<T>(mut response: Response<T>, request_id: &str) -> Response<T> {
    if let Ok(value) = request_id.parse() {
        response.metadata_mut().insert(REQUEST_ID_METADATA, value);
    }
    response
}

/// A Metering call carrying the caller's key (its `authorization` metadata).
fn with_key<T>(metadata: &MetadataMap, message: T) -> Request<T> {
    let mut request = Request::new(message);
    if let Some(auth) = metadata.get(AUTHORIZATION) {
        request.metadata_mut().insert(AUTHORIZATION, auth.clone());
    }
    request
}

pub(crate) fn timeout_error(admitted: &Admitted, seconds: u64) -> UpstreamError {
    UpstreamError::Timeout {
        provider: admitted.route.provider.clone(),
        seconds,
    }
}

/// A request cut by a shutdown whose grace period is over. The request was sent, so it is
/// settled at an estimate, never at zero.
pub(crate) fn shutdown_error(admitted: &Admitted) -> UpstreamError {
    UpstreamError::ShuttingDown {
        provider: admitted.route.provider.clone(),
    }
}

/// Runs the rest of a request in a task of its own, so that once admitted it is settled even if
/// the caller goes away (a REST client hanging up drops the handler, and with it this future).
/// The task stays in the caller's span (its trace).
async fn detached<T: Send + 'static>(
    work: impl Future<Output = Result<T, Status>> + Send + 'static,
) -> Result<T, Status> {
    tokio::spawn(work.in_current_span())
        .await
        .unwrap_or_else(|e| {
            Err(
                ApiError::new(ErrorKind::Internal, format!("the request task failed: {e}"))
                    .into_status(),
            )
        })
}

impl InferenceService {
    /// A non-streaming call from admission to settlement, metered.
    async fn complete(
        &self,
        metadata: MetadataMap,
        request: ChatRequest,
    ) -> Result<ChatResponse, Status> {
        let mut meter = RequestMeter::start(false, &request.model);
        let span = meter.span().clone();
        let answered = self
            .answer(&mut meter, metadata, request)
            .instrument(span)
            .await;
        meter.finish(RequestStatus::of_result(&answered));
        answered
    }

    async fn answer(
        &self,
        meter: &mut RequestMeter,
        metadata: MetadataMap,
        request: ChatRequest,
    ) -> Result<ChatResponse, Status> {
        let admitted = self.admit(&metadata, &request, false).await?;
        meter.admitted(&admitted);
        let request_id = admitted.request_id.clone();
        self.answer_admitted(meter, &request, admitted)
            .await
            .map_err(|status| failed_request(status, &request_id))
    }

    /// The rest of [`Self::answer`] once the request is admitted: every error from here on
    /// names the request.
    async fn answer_admitted(
        &self,
        meter: &mut RequestMeter,
        request: &ChatRequest,
        admitted: Admitted,
    ) -> Result<ChatResponse, Status> {
        let timeouts = admitted.provider.timeouts();
        let target = admitted.target();
        let call = tokio::time::timeout(timeouts.total, admitted.provider.chat(request, &target));
        let called = tokio::select! {
            called = call => called
                .unwrap_or_else(|_| Err(timeout_error(&admitted, timeouts.total.as_secs()))),
            () = self.cut() => Err(shutdown_error(&admitted)),
        };
        let mut response = match called {
            Ok(response) => response,
            Err(error) => return Err(self.fail(meter, &admitted, error).await),
        };
        meter.response_model(&response.model);
        for choice in &response.choices {
            meter.finish_reason(&choice.finish_reason);
        }
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
            // Not delivered, so not billed: a client never gets an error for an answer it pays.
            return Err(self.fail_charging(meter, &admitted, error, None).await);
        }
        // A 200 without usage (or with an impossible one) was generated all the same: billed
        // at the estimate, marked.
        let reported = token_bounds::plausible(response.usage.take(), &admitted.request_id);
        let (mut usage, estimated) = match reported {
            Some(usage) => (usage, false),
            None => {
                let (prompt, answer) = (
                    admitted.bounds.prompt_text_bytes,
                    token_bounds::answer_bytes(&response),
                );
                (token_bounds::estimate(None, prompt, answer), true)
            }
        };
        let cost = self
            .settle(&admitted, Some(usage), Outcome::Succeeded, estimated)
            .await?;
        usage.cost_picodollars = Some(cost);
        meter.settled(&usage, cost);
        response.id = admitted.request_id;
        response.created = admitted.created;
        response.model = admitted.route.requested_id;
        response.usage = Some(usage);
        Ok(response)
    }
}

impl InferenceService {
    /// Counts a request's prompt tokens for a valid key: the provider's count API where it has
    /// one, else the gateway's estimate ([`token_bounds::estimate`] of the prompt's text).
    /// Nothing is admitted, counted against limits or billed.
    async fn count(
        &self,
        metadata: MetadataMap,
        request: ChatRequest,
    ) -> Result<TokenCount, Status> {
        let admit_by = Deadline::of_caller(&metadata, ADMIT_WITHIN);
        let (route, provider, thinking) = self.route(&request, admit_by).await?;
        self.inner
            .metering
            .clone()
            .authenticate(with_key(&metadata, AuthenticateRequest {}))
            .await?;
        let target = Target {
            route: &route,
            thinking,
        };
        let timeouts = provider.timeouts();
        let counted =
            tokio::time::timeout(timeouts.total, provider.count_tokens(&request, &target))
                .await
                .unwrap_or_else(|_| {
                    Some(Err(UpstreamError::Timeout {
                        provider: route.provider.clone(),
                        seconds: timeouts.total.as_secs(),
                    }))
                });
        match counted {
            Some(Ok(input_tokens)) => Ok(TokenCount {
                input_tokens,
                estimated: false,
            }),
            Some(Err(error)) => Err(error.to_api_error().into_status()),
            None => {
                let bytes = token_bounds::bounds(&request, &route).prompt_text_bytes;
                Ok(TokenCount {
                    input_tokens: token_bounds::estimate(None, bytes, 0).prompt_tokens,
                    estimated: true,
                })
            }
        }
    }
}

#[tonic::async_trait]
impl inference_server::Inference for InferenceService {
    async fn count_tokens(
        &self,
        request: Request<ChatRequest>,
    ) -> Result<Response<TokenCount>, Status> {
        let (metadata, _, request) = request.into_parts();
        self.count(metadata, request).await.map(Response::new)
    }

    async fn chat(&self, request: Request<ChatRequest>) -> Result<Response<ChatResponse>, Status> {
        let (metadata, _, request) = request.into_parts();
        let service = self.clone();
        let response = detached(async move { service.complete(metadata, request).await }).await?;
        let id = response.id.clone();
        Ok(with_request_id(Response::new(response), &id))
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
            Ok(Ok(request_id)) => Ok(with_request_id(Response::new(started.chunks), &request_id)),
            Ok(Err(status)) => Err(status),
            Err(_) => {
                Err(ApiError::new(ErrorKind::Internal, "the stream task failed").into_status())
            }
        }
    }
}
