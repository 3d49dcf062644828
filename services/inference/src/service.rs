//! `tollgate.v1.Inference`: the request path. For each call: validate, resolve the model and the
//! models it may fall back to through Catalog, admit the key through Billing (authentication,
//! per-minute and monthly limits, the tier's allowed fallbacks), call a deployment (retried on
//! another one by `routing.rs`), and settle the usage with Billing before the answer completes.
//! Every admitted request is settled exactly once, whether it succeeded, failed or the client
//! left.

use std::{
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use tokio::sync::{Notify, watch};
use tollgate::{
    admin_token::AdminToken,
    auth::{AUTHORIZATION, AuthenticatedKey},
    caller::{CatalogCaller, MeteringCaller},
    error::{ApiError, ErrorKind},
    v1::{
        AdmitRequest, AuthenticateRequest, Candidate as AdmitCandidate, ChatRequest, ChatResponse,
        ListDeploymentHealthRequest, ListDeploymentHealthResponse, ListModelsRequest, Outcome,
        ResolveModelRequest, ResolvedModel, SettleRequest, TokenCount, Usage, inference_server,
    },
};
use tonic::{Request, Response, Status, metadata::MetadataMap};
use tracing::Instrument;

use crate::{
    ClientPolicy, Provider, Providers, UpstreamError,
    deadline::{self, Deadline},
    providers::Target,
    routing::{self, Attempt, Candidate, Exhausted, Pick, Router, RoutingConfig, Served},
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
    catalog: CatalogCaller,
    metering: MeteringCaller,
    in_flight: Arc<InFlight>,
    /// The largest answer this service sends (its gRPC servers' and clients' message limit).
    max_message_bytes: usize,
    /// What a stream does when its client leaves or stops reading.
    client: ClientPolicy,
    /// Turns true when a shutdown's grace period is over: every running request is cut and
    /// settled.
    cut: watch::Sender<bool>,
    /// Deployment health, choice and the retry policy.
    router: Router,
    /// Guards the admin call (`ListDeploymentHealth`); `None`: refused.
    admin_token: Option<AdminToken>,
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
    /// The route of the deployment that serves (before the first attempt, or when nothing
    /// could be tried: the first deployment of the requested model); `requested_id` is always
    /// what the caller asked for.
    pub route: ResolvedModel,
    pub provider: Arc<Provider>,
    pub thinking: Thinking,
    /// The models the request may be served by, in order (the tier's allowed ones only); emptied
    /// once [`Admitted::call_with_retries`] is over, since a held stream needs them no longer.
    pub candidates: Vec<Candidate>,
    /// The deployment of `route` that serves (or last failed).
    pub deployment: String,
    /// Upstream calls taken so far.
    pub attempts: u32,
    /// The serving deployment, counted in flight until the request ends.
    pub serving: Option<Attempt>,
    /// When the upstream part of the request must be over: the caller's deadline or the
    /// longest total deadline of the providers it may go to, whichever is sooner.
    pub upstream_by: tokio::time::Instant,
    pub streamed: bool,
    /// The token bounds the request was admitted (and its money reserved) at.
    pub bounds: TokenBounds,
    /// Until when its settlement may be retried: while its reservation holds.
    pub settle_by: Deadline,
    /// Keeps the request counted as in flight until it is dropped, after settlement.
    pub _in_flight: InFlightGuard,
}

impl Admitted {
    /// From now on `pick` serves (or is the last tried), after `attempts` calls.
    fn serve(&mut self, pick: Pick, attempts: u32, serving: Option<Attempt>) {
        let requested_id = std::mem::take(&mut self.route.requested_id);
        self.route = ResolvedModel {
            requested_id,
            ..pick.route
        };
        self.provider = pick.provider;
        self.thinking = pick.thinking;
        self.deployment = pick.deployment;
        self.attempts = attempts;
        self.serving = serving;
    }

    /// What served, for the response's metadata.
    pub(crate) fn served_by(&self) -> ServedBy {
        ServedBy {
            model: self.route.model_id.clone(),
            deployment: self.deployment.clone(),
        }
    }

    /// Runs `call` on the request's deployments with retries (`routing::with_retries`) until
    /// one answers or the request fails, unless a shutdown cuts it first; then records which
    /// deployment served (or last failed) and how many calls it took.
    pub(crate) async fn call_with_retries<T, F, Fut>(
        &mut self,
        service: &InferenceService,
        call: F,
    ) -> Result<T, UpstreamError>
    where
        F: FnMut(Pick, Duration) -> Fut,
        Fut: Future<Output = Result<T, UpstreamError>>,
    {
        let routed = tokio::select! {
            routed = routing::with_retries(
                &service.inner.router,
                &self.request_id,
                &self.candidates,
                self.upstream_by,
                call,
            ) => routed,
            () = service.cut() => Err(Exhausted {
                error: shutdown_error(self),
                last: None,
                attempts: 0,
            }),
        };
        // Nothing is retried after this (a stream never after its first chunk): free them now
        // rather than at the end of a stream that may be held for minutes.
        self.candidates = Vec::new();
        match routed {
            Ok(Served {
                value,
                pick,
                attempts,
                in_flight,
            }) => {
                self.serve(pick, attempts, Some(in_flight));
                Ok(value)
            }
            Err(Exhausted {
                error,
                last,
                attempts,
            }) => {
                if let Some(pick) = last {
                    self.serve(pick, attempts, None);
                }
                Err(error)
            }
        }
    }
}

/// The model and deployment that served a request, sent as response metadata
/// ([`SERVED_MODEL_METADATA`], [`DEPLOYMENT_METADATA`]).
#[derive(Debug, Clone, Default)]
pub(crate) struct ServedBy {
    pub model: String,
    pub deployment: String,
}

/// The response metadata naming the catalogue model that served (a fallback's id when one did).
pub const SERVED_MODEL_METADATA: &str = "x-tollgate-served-model";
/// The response metadata naming the deployment of that model that served.
pub const DEPLOYMENT_METADATA: &str = "x-tollgate-deployment";

impl InferenceService {
    /// `catalog` and `metering` (Billing's internal API) reach those services: called directly
    /// in the monolith, over a transport (`GrpcTransport` converts) once the services are split.
    pub fn new(
        providers: Providers,
        catalog: impl Into<CatalogCaller>,
        metering: impl Into<MeteringCaller>,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                providers,
                catalog: catalog.into(),
                metering: metering.into(),
                in_flight: Arc::default(),
                max_message_bytes: DEFAULT_MAX_MESSAGE_BYTES,
                client: ClientPolicy::default(),
                cut: watch::Sender::new(false),
                router: Router::default(),
                admin_token: None,
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

    /// The retry and cooldown policy (`[routing]`). Call before the service is cloned.
    pub fn with_routing(mut self, routing: RoutingConfig) -> Self {
        if let Some(inner) = Arc::get_mut(&mut self.inner) {
            inner.router = Router::new(routing);
        }
        self
    }

    /// Shares deployment cooldowns with the other replicas through Redis (`[redis]`). Call after
    /// [`with_routing`](Self::with_routing), before the service is cloned, within a Tokio runtime.
    pub fn with_shared_cooldown(mut self, shared: crate::SharedCooldown) -> Self {
        if let Some(inner) = Arc::get_mut(&mut self.inner) {
            inner.router.share(shared);
        }
        self
    }

    /// The admin token `ListDeploymentHealth` demands (`[admin] token_env`); without one that
    /// call is refused. Call before the service is cloned.
    pub fn with_admin_token(mut self, token: Option<AdminToken>) -> Self {
        if let Some(inner) = Arc::get_mut(&mut self.inner) {
            inner.admin_token = token;
        }
        self
    }

    /// Every deployment of every catalogue model with this process's view of its health.
    async fn deployment_health_listing(&self) -> Result<ListDeploymentHealthResponse, Status> {
        let within = Deadline::after(Duration::from_secs(10));
        let catalog = self.inner.catalog.clone();
        let models = deadline::once("Catalog.ListModels", within, |left| {
            let mut list = Request::new(ListModelsRequest {});
            list.set_timeout(left);
            let mut catalog = catalog.clone();
            async move { catalog.list_models(list).await }
        })
        .await?
        .into_inner()
        .models;
        let mut routes = Vec::new();
        for model in models.iter().filter(|m| m.alias_of.is_none()) {
            routes.push(self.resolve(&model.id, within).await?);
        }
        Ok(ListDeploymentHealthResponse {
            deployments: routing::health_listing(&routes, self.inner.router.health_report()),
        })
    }

    /// The health of every deployment this process has routed to.
    pub fn deployment_health(&self) -> Vec<routing::DeploymentHealth> {
        self.inner.router.health_report()
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

    /// `id` through `Catalog.ResolveModel` (404 for an unknown one).
    async fn resolve(&self, id: &str, admit_by: Deadline) -> Result<ResolvedModel, Status> {
        let catalog = self.inner.catalog.clone();
        let resolving = tracing::info_span!(
            "resolve model",
            gen_ai.request.model = %id,
            tollgate.model_id = tracing::field::Empty,
            tollgate.provider = tracing::field::Empty,
        );
        let route = deadline::once("Catalog.ResolveModel", admit_by, |left| {
            let mut resolve = Request::new(ResolveModelRequest { id: id.to_owned() });
            resolve.set_timeout(left);
            let mut catalog = catalog.clone();
            async move { catalog.resolve_model(resolve).await }
        })
        .instrument(resolving.clone())
        .await?
        .into_inner();
        resolving.record("tollgate.model_id", route.model_id.as_str());
        resolving.record("tollgate.provider", route.provider.as_str());
        Ok(route)
    }

    /// `route` checked against the request: the model's limits, the thinking decision, and its
    /// deployments whose provider is ready and takes the request (the first refusal when none
    /// does).
    fn candidate(
        &self,
        request: &ChatRequest,
        route: ResolvedModel,
        extra: &validate::Extra,
    ) -> Result<Candidate, Status> {
        validate::for_model(request, &route, extra)?;
        let thinking = thinking::decide(request, &route)?;
        let mut deployments = Vec::with_capacity(route.deployments.len());
        let mut refused = None;
        for deployment in &route.deployments {
            let provider = self
                .inner
                .providers
                .get(&deployment.provider)
                .cloned()
                .ok_or_else(|| {
                    ApiError::new(
                        ErrorKind::Internal,
                        format!("model {} names an unknown provider", route.model_id),
                    )
                })?;
            let target = Target {
                route: &routing::deployment_route(&route, deployment),
                thinking,
            };
            match provider
                .ready()
                .and_then(|()| provider.check(request, &target))
            {
                Ok(()) => deployments.push((deployment.clone(), provider)),
                Err(e) => {
                    refused.get_or_insert(e);
                }
            }
        }
        if deployments.is_empty() {
            return Err(match refused {
                Some(e) => e.to_api_error().into_status(),
                None => ApiError::new(
                    ErrorKind::Internal,
                    format!("model {} has no deployment", route.model_id),
                )
                .into_status(),
            });
        }
        Ok(Candidate {
            route,
            thinking,
            deployments,
        })
    }

    /// Validates a request and finds the models that may serve it, in order: the context-window
    /// fallback when the prompt is estimated too long for the model, the model, its configured
    /// fallbacks, then the request's own `models`. Everything before the key is involved. The
    /// requested model's refusals are the request's (unless the context-window fallback takes
    /// it); a fallback that cannot take the request is skipped.
    async fn candidates(
        &self,
        request: &ChatRequest,
        admit_by: Deadline,
    ) -> Result<Vec<Candidate>, Status> {
        let extra = validate::request(request)?;
        let primary = self.resolve(&request.model, admit_by).await?;
        // The prompt's size (a walk of the whole request) is only needed when a larger model
        // could take it; admission measures it anyway.
        let too_long = || {
            let prompt_bytes = token_bounds::bounds(request, &primary).prompt_text_bytes;
            token_bounds::estimate(None, prompt_bytes, 0).prompt_tokens > primary.context_length
        };
        let mut context = None;
        if let Some(larger) = primary
            .context_window_fallback
            .as_ref()
            .filter(|_| too_long())
        {
            let route = self.resolve(larger, admit_by).await?;
            match self.candidate(request, route, &extra) {
                Ok(candidate) => context = Some(candidate),
                Err(status) => tracing::debug!(model = larger, %status, "context fallback skipped"),
            }
        }
        let fallbacks: Vec<String> = primary
            .fallbacks
            .iter()
            .chain(&request.models)
            .cloned()
            .collect();
        let requested_id = primary.requested_id.clone();
        let mut candidates: Vec<Candidate> = Vec::new();
        match self.candidate(request, primary, &extra) {
            Ok(candidate) => candidates.push(candidate),
            Err(status) if context.is_none() => return Err(status),
            Err(status) => tracing::debug!(model = requested_id, %status, "model skipped"),
        }
        if let Some(context) = context {
            candidates.insert(0, context);
        }
        for id in fallbacks {
            let route = self.resolve(&id, admit_by).await?;
            if candidates
                .iter()
                .any(|c| c.route.model_id == route.model_id)
            {
                continue;
            }
            match self.candidate(request, route, &extra) {
                Ok(candidate) => candidates.push(candidate),
                Err(status) => tracing::debug!(model = id, %status, "fallback skipped"),
            }
        }
        Ok(candidates)
    }

    /// `checked`: the proof the caller's key check left, if any, so Admit does not look the key
    /// up again.
    #[tracing::instrument(name = "admit", skip_all)]
    pub(crate) async fn admit(
        &self,
        metadata: &MetadataMap,
        checked: Option<&AuthenticatedKey>,
        request: &ChatRequest,
        streamed: bool,
    ) -> Result<Admitted, Status> {
        let admit_by = Deadline::of_caller(metadata, ADMIT_WITHIN);
        let candidates = self.candidates(request, admit_by).await?;
        // The requested model (the context-window fallback when that replaced it) is admitted
        // as today; the others travel as fallbacks, which the tier filters.
        let Some(primary) = candidates
            .iter()
            .find(|c| c.route.requested_id == request.model)
            .or(candidates.first())
            .map(|c| c.route.clone())
        else {
            return Err(ApiError::new(ErrorKind::Internal, "no model to route to").into_status());
        };
        let request_id = format!("chatcmpl-{}", uuid::Uuid::now_v7().simple());
        // The reservation covers every candidate: the largest bounds (at the dearest prices,
        // Billing's side) and the longest provider deadline.
        let bounds = candidates
            .iter()
            .map(|c| token_bounds::bounds(request, &c.route))
            .reduce(|a, b| TokenBounds {
                max_prompt_tokens: a.max_prompt_tokens.max(b.max_prompt_tokens),
                max_completion_tokens: a.max_completion_tokens.max(b.max_completion_tokens),
                prompt_text_bytes: a.prompt_text_bytes.max(b.prompt_text_bytes),
            })
            .unwrap_or_else(|| token_bounds::bounds(request, &primary));
        let total = candidates
            .iter()
            .flat_map(|c| &c.deployments)
            .map(|(_, provider)| provider.timeouts().total)
            .max()
            .unwrap_or_default();
        // The request's life is bounded: its upstream part by the total deadline, then one send
        // to the client by the stall timeout, then its settlement by `settle_by`; its
        // reservation outlives all of it, so the sweep never frees a live request's money.
        let settle_within = total + self.inner.client.stall_timeout + SETTLE_MARGIN;
        let settle_by = Deadline::after(settle_within);
        let reservation_ttl_ms =
            u64::try_from((settle_within + EXPIRY_MARGIN).as_millis()).unwrap_or(u64::MAX);
        let admit = AdmitRequest {
            request_id: request_id.clone(),
            model: primary.requested_id.clone(),
            model_id: primary.model_id.clone(),
            max_prompt_tokens: bounds.max_prompt_tokens,
            max_completion_tokens: bounds.max_completion_tokens,
            reservation_ttl_ms,
            streamed,
            fallbacks: candidates
                .iter()
                .filter(|c| c.route.model_id != primary.model_id)
                .map(|c| AdmitCandidate {
                    model: c.route.requested_id.clone(),
                    model_id: c.route.model_id.clone(),
                })
                .collect(),
            retry: false,
        };
        // Retried by request id while Billing is unreachable: Admit is idempotent, and a retry
        // says so (Billing then looks for the first attempt's reservation).
        let metering = self.inner.metering.clone();
        let admitting_by = admit_by.min(settle_by);
        let mut attempts = 0u32;
        let admission = deadline::retried("Metering.Admit", &request_id, admitting_by, |left| {
            attempts += 1;
            let admit = AdmitRequest {
                retry: attempts > 1,
                ..admit.clone()
            };
            let mut call = with_key(metadata, checked, admit);
            call.set_timeout(left);
            let mut metering = metering.clone();
            async move { metering.admit(call).await }
        })
        .await?
        .into_inner();
        let in_flight = InFlightGuard::new(&self.inner.in_flight);
        // Only the models the key's tier allows are tried.
        let candidates: Vec<Candidate> = candidates
            .into_iter()
            .filter(|c| {
                c.route.model_id == primary.model_id
                    || admission
                        .allowed_fallbacks
                        .iter()
                        .any(|a| a.model_id == c.route.model_id)
            })
            .collect();
        let first = candidates
            .iter()
            .find(|c| c.route.model_id == primary.model_id)
            .and_then(|c| {
                let (deployment, provider) = c.deployments.first()?;
                Some((
                    routing::deployment_route(&c.route, deployment),
                    deployment.name.clone(),
                    Arc::clone(provider),
                    c.thinking,
                ))
            });
        let Some((mut route, deployment, provider, thinking)) = first else {
            return Err(
                ApiError::new(ErrorKind::Internal, "no deployment to route to").into_status(),
            );
        };
        route.requested_id.clone_from(&request.model);
        let upstream_by = Deadline::of_caller(metadata, total).instant();
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
            candidates,
            deployment,
            attempts: 0,
            serving: None,
            upstream_by,
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
            deployment: admitted.deployment.clone(),
            attempts: admitted.attempts,
        };
        // Retried by request id while Billing is unreachable (the ledger is idempotent by it),
        // for as long as the request's reservation holds.
        let metering = self.inner.metering.clone();
        let settlement = deadline::retried(
            "Metering.Settle",
            &admitted.request_id,
            admitted.settle_by,
            |left| {
                let mut call = Request::new(settle.clone());
                call.set_timeout(left);
                let mut metering = metering.clone();
                async move { metering.settle(call).await }
            },
        )
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

/// `response` carrying what served it as [`SERVED_MODEL_METADATA`] and [`DEPLOYMENT_METADATA`].
fn with_served_by<T>(mut response: Response<T>, served: &ServedBy) -> Response<T> {
    for (name, value) in [
        (SERVED_MODEL_METADATA, &served.model),
        (DEPLOYMENT_METADATA, &served.deployment),
    ] {
        if let Ok(value) = value.parse() {
            response.metadata_mut().insert(name, value);
        }
    }
    response
}

/// A Metering call carrying the caller's key (its `authorization` metadata) and the proof of its
/// check, if the caller left one in this process.
fn with_key<T>(
    metadata: &MetadataMap,
    checked: Option<&AuthenticatedKey>,
    message: T,
) -> Request<T> {
    let mut request = Request::new(message);
    if let Some(auth) = metadata.get(AUTHORIZATION) {
        request.metadata_mut().insert(AUTHORIZATION, auth.clone());
    }
    if let Some(checked) = checked {
        request.extensions_mut().insert(checked.clone());
    }
    request
}

/// The proof of the key check a call carries, if it came from this process.
fn checked_key(extensions: &tonic::Extensions) -> Option<AuthenticatedKey> {
    extensions.get::<AuthenticatedKey>().cloned()
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
/// The task stays in the caller's span (its trace). The work is boxed once, where it is made:
/// spawned inline, the whole request's state machine would be copied on each move into the task.
async fn detached<T: Send + 'static>(
    work: Pin<Box<dyn Future<Output = Result<T, Status>> + Send + 'static>>,
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
        checked: Option<AuthenticatedKey>,
        request: ChatRequest,
    ) -> Result<(ChatResponse, ServedBy), Status> {
        let mut meter = RequestMeter::start(false, &request.model);
        let span = meter.span().clone();
        let mut served = ServedBy::default();
        let answered = self
            .answer(&mut meter, metadata, checked, request, &mut served)
            .instrument(span)
            .await;
        meter.finish(RequestStatus::of_result(&answered));
        answered.map(|response| (response, served))
    }

    async fn answer(
        &self,
        meter: &mut RequestMeter,
        metadata: MetadataMap,
        checked: Option<AuthenticatedKey>,
        request: ChatRequest,
        served: &mut ServedBy,
    ) -> Result<ChatResponse, Status> {
        let admitted = self
            .admit(&metadata, checked.as_ref(), &request, false)
            .await?;
        meter.admitted(&admitted);
        let request_id = admitted.request_id.clone();
        self.answer_admitted(meter, &request, admitted, served)
            .await
            .map_err(|status| failed_request(status, &request_id))
    }

    /// The rest of [`Self::answer`] once the request is admitted: every error from here on
    /// names the request.
    async fn answer_admitted(
        &self,
        meter: &mut RequestMeter,
        request: &ChatRequest,
        mut admitted: Admitted,
        served: &mut ServedBy,
    ) -> Result<ChatResponse, Status> {
        let called = admitted
            .call_with_retries(self, |pick, left| async move {
                let limit = pick.provider.timeouts().total.min(left);
                pick.within(limit, pick.provider.chat(request, &pick.target()))
                    .await
            })
            .await;
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
        *served = admitted.served_by();
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
        checked: Option<AuthenticatedKey>,
        request: ChatRequest,
    ) -> Result<TokenCount, Status> {
        let admit_by = Deadline::of_caller(&metadata, ADMIT_WITHIN);
        let candidates = self.candidates(&request, admit_by).await?;
        let Some((route, provider, thinking)) = candidates.into_iter().next().and_then(|c| {
            let (deployment, provider) = c.deployments.first()?;
            Some((
                routing::deployment_route(&c.route, deployment),
                Arc::clone(provider),
                c.thinking,
            ))
        }) else {
            return Err(ApiError::new(ErrorKind::Internal, "no model to route to").into_status());
        };
        self.inner
            .metering
            .clone()
            .authenticate(with_key(
                &metadata,
                checked.as_ref(),
                AuthenticateRequest {},
            ))
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
    async fn list_deployment_health(
        &self,
        request: Request<ListDeploymentHealthRequest>,
    ) -> Result<Response<ListDeploymentHealthResponse>, Status> {
        tollgate::admin_token::check(self.inner.admin_token.as_ref(), request.metadata())
            .map_err(|refusal| refusal.to_api_error().into_status())?;
        self.deployment_health_listing().await.map(Response::new)
    }

    async fn count_tokens(
        &self,
        request: Request<ChatRequest>,
    ) -> Result<Response<TokenCount>, Status> {
        let (metadata, extensions, request) = request.into_parts();
        let checked = checked_key(&extensions);
        self.count(metadata, checked, request)
            .await
            .map(Response::new)
    }

    async fn chat(&self, request: Request<ChatRequest>) -> Result<Response<ChatResponse>, Status> {
        let (metadata, extensions, request) = request.into_parts();
        let checked = checked_key(&extensions);
        let service = self.clone();
        let (response, served) = detached(Box::pin(async move {
            service.complete(metadata, checked, request).await
        }))
        .await?;
        let id = response.id.clone();
        Ok(with_served_by(
            with_request_id(Response::new(response), &id),
            &served,
        ))
    }

    type ChatStreamStream = streaming::Chunks;

    /// Answers once the first upstream chunk exists, so early upstream failures become real
    /// errors (an HTTP status over REST) instead of a broken stream.
    async fn chat_stream(
        &self,
        request: Request<ChatRequest>,
    ) -> Result<Response<Self::ChatStreamStream>, Status> {
        let (metadata, extensions, request) = request.into_parts();
        let checked = checked_key(&extensions);
        let started = streaming::start(self.clone(), metadata, checked, request);
        match started.opened.await {
            Ok(Ok((request_id, served))) => Ok(with_served_by(
                with_request_id(Response::new(started.chunks), &request_id),
                &served,
            )),
            Ok(Err(status)) => Err(status),
            Err(_) => {
                Err(ApiError::new(ErrorKind::Internal, "the stream task failed").into_status())
            }
        }
    }
}
