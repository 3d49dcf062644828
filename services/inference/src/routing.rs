//! Routing: which deployment serves each attempt of a request, and when to try again. Owns the
//! `[routing]` policy (attempts, backoff, cooldown), the health of every deployment in this
//! process (requests in flight, recent failures, cooldown and its single probe), the choice among
//! the healthy deployments of a model (weighted random, or power of two choices over requests in
//! flight as `strategy = "least_busy"`), which upstream failures are retried, and the retry loop
//! itself: before any byte reached the client, a retryable failure is tried again on another
//! deployment (the model's, then its fallbacks'), after exponential backoff with full jitter,
//! honouring `Retry-After` when the same deployment is tried again, never past the deadline.
//!
//! Why a loop of its own rather than `backon`: between two attempts the loop chooses the next
//! deployment (the failed one excluded), takes `Retry-After` as a floor only when that choice is
//! the same deployment, and answers 504 at once when the wait would pass the deadline; backon's
//! `Retryable` retries one fixed future factory and its jitter adds up to the delay on top of it
//! rather than drawing the delay from `[0, cap]` (full jitter), so what it would own is the two
//! lines of [`full_jitter`].

use std::{
    collections::{HashMap, VecDeque},
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use rand::Rng;
use serde::Deserialize;
use tokio::time::Instant;
use tollgate::v1::{Deployment, DeploymentState, ResolvedModel, RoutingStrategy};

use crate::{
    Provider, UpstreamError,
    providers::Target,
    shared_cooldown::{Claim, SharedCooldown, SharedCooldownError},
    telemetry,
    thinking::Thinking,
};

/// `[routing]`: the retry and cooldown policy of every model.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoutingConfig {
    /// Upstream calls one request may take, the first included (default 3).
    #[serde(default = "max_attempts_default")]
    pub max_attempts: u32,
    /// The backoff before the second attempt is drawn from `[0, backoff_base_ms]`; the bound
    /// doubles each attempt up to `backoff_max_ms` (full jitter).
    #[serde(default = "backoff_base_ms_default")]
    pub backoff_base_ms: u64,
    #[serde(default = "backoff_max_ms_default")]
    pub backoff_max_ms: u64,
    /// A deployment that fails this many times within `cooldown_window_secs` cools down.
    #[serde(default = "cooldown_failures_default")]
    pub cooldown_failures: u32,
    #[serde(default = "cooldown_window_secs_default")]
    pub cooldown_window_secs: u64,
    /// How long a deployment stays out; then one request probes it.
    #[serde(default = "cooldown_secs_default")]
    pub cooldown_secs: u64,
    /// The longest `Retry-After` waited for within a request before the same deployment is
    /// tried again (default 5 s); a longer one ends the request with the upstream's error and its
    /// `Retry-After`, for the client to wait.
    #[serde(default = "max_retry_after_secs_default")]
    pub max_retry_after_secs: u64,
    /// With `[redis]`: how often this replica reads the cooldowns other replicas published
    /// (default 500 ms; see `shared_cooldown.rs`).
    #[serde(default = "shared_refresh_ms_default")]
    pub shared_refresh_ms: u64,
}

fn shared_refresh_ms_default() -> u64 {
    500
}

fn max_retry_after_secs_default() -> u64 {
    5
}

fn max_attempts_default() -> u32 {
    3
}

fn backoff_base_ms_default() -> u64 {
    100
}

fn backoff_max_ms_default() -> u64 {
    2_000
}

fn cooldown_failures_default() -> u32 {
    3
}

fn cooldown_window_secs_default() -> u64 {
    60
}

fn cooldown_secs_default() -> u64 {
    30
}

impl Default for RoutingConfig {
    fn default() -> Self {
        Self {
            max_attempts: max_attempts_default(),
            backoff_base_ms: backoff_base_ms_default(),
            backoff_max_ms: backoff_max_ms_default(),
            cooldown_failures: cooldown_failures_default(),
            cooldown_window_secs: cooldown_window_secs_default(),
            cooldown_secs: cooldown_secs_default(),
            max_retry_after_secs: max_retry_after_secs_default(),
            shared_refresh_ms: shared_refresh_ms_default(),
        }
    }
}

impl UpstreamError {
    /// Whether another attempt may succeed where this one failed, and the failed one provably
    /// generated nothing: a connection never made, 429, 500, 502, 503, 504, 529 and a provider's
    /// "overloaded" error. Never a caller's 4xx, a timeout after the request was sent, or
    /// anything mid-answer.
    pub fn retryable(&self) -> bool {
        match self {
            Self::Overloaded { .. } => true,
            Self::ServerError { status, .. } => matches!(status, 500 | 502 | 504),
            Self::Connect { sent, .. } => !sent,
            _ => false,
        }
    }

    /// Whether the failure says something about the deployment's health (it counts towards its
    /// cooldown): the retryable ones, bad credentials and timeouts; never the caller's fault.
    pub fn deployment_fault(&self) -> bool {
        self.retryable()
            || matches!(
                self,
                Self::Credentials { .. } | Self::Timeout { .. } | Self::ServerError { .. }
            )
    }

    fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::Overloaded {
                retry_after_secs, ..
            } => retry_after_secs.map(Duration::from_secs),
            _ => None,
        }
    }
}

/// One model a request may be served by, checked against the request: its route (the
/// requested id kept), the thinking decided for it, and its deployments whose provider is ready.
#[derive(Debug, Clone)]
pub(crate) struct Candidate {
    pub route: ResolvedModel,
    pub thinking: Thinking,
    pub deployments: Vec<(Deployment, Arc<Provider>)>,
}

/// The route of one deployment of `route`'s model: its provider, upstream name and prices.
pub(crate) fn deployment_route(route: &ResolvedModel, deployment: &Deployment) -> ResolvedModel {
    ResolvedModel {
        provider: deployment.provider.clone(),
        upstream_model: deployment.upstream_model.clone(),
        pricing: deployment.pricing,
        ..route.clone()
    }
}

/// What one attempt goes to.
#[derive(Debug, Clone)]
pub(crate) struct Pick {
    /// Index into the candidates.
    pub candidate: usize,
    pub route: ResolvedModel,
    pub deployment: String,
    pub provider: Arc<Provider>,
    pub thinking: Thinking,
}

impl Pick {
    /// This deployment's model as its provider is called with it.
    pub fn target(&self) -> Target<'_> {
        Target {
            route: &self.route,
            thinking: self.thinking,
        }
    }

    /// `attempt` within `limit`, or this deployment's timeout (in whole seconds, rounded up: an
    /// attempt given what is left of the request's deadline, 1.98 s of a 2 s timeout, reports
    /// the timeout, not one second less).
    pub async fn within<T>(
        &self,
        limit: Duration,
        attempt: impl Future<Output = Result<T, UpstreamError>>,
    ) -> Result<T, UpstreamError> {
        tokio::time::timeout(limit, attempt)
            .await
            .unwrap_or_else(|_| {
                Err(UpstreamError::Timeout {
                    provider: self.route.provider.clone(),
                    seconds: limit.as_secs() + u64::from(limit.subsec_nanos() > 0),
                })
            })
    }
}

/// The health of one deployment in this process, and its gauges.
#[derive(Debug)]
struct Health {
    in_flight: AtomicUsize,
    state: Mutex<State>,
    meters: telemetry::DeploymentMeters,
}

impl Health {
    fn new(model_id: &str, deployment: &str) -> Self {
        Self {
            in_flight: AtomicUsize::new(0),
            state: Mutex::default(),
            meters: telemetry::DeploymentMeters::new(model_id, deployment),
        }
    }

    /// Shows `state` in the gauges (call after changing it).
    fn show(&self, state: &State) {
        self.meters.healthy(state.cooling_until.is_none());
    }
}

#[derive(Debug, Default)]
struct State {
    /// Failures within the window, oldest first.
    failures: VecDeque<Instant>,
    /// Out until then; past it, one probe decides.
    cooling_until: Option<Instant>,
    /// The probe is in flight.
    probing: bool,
}

/// Whether a deployment may be chosen now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Availability {
    Healthy,
    /// Its cooldown is over and no probe is in flight: the chooser's request is the probe.
    Probe,
    Out,
}

impl State {
    /// Healthy again: no failures, no cooldown, no probe.
    fn recover(&mut self) {
        self.failures.clear();
        self.cooling_until = None;
        self.probing = false;
    }

    fn availability(&self, now: Instant) -> Availability {
        match self.cooling_until {
            None => Availability::Healthy,
            Some(until) if until > now || self.probing => Availability::Out,
            Some(_) => Availability::Probe,
        }
    }
}

/// A deployment's health as the Admin view shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeploymentHealth {
    pub model_id: String,
    pub deployment: String,
    pub in_flight: u64,
    pub recent_failures: u32,
    /// Seconds of cooldown left, rounded up (zero: taking traffic, or due for its probe).
    pub cooldown_left_secs: u64,
    /// Out until its cooldown ends.
    pub cooling_down: bool,
    /// Its cooldown is over and one probe decides (in flight, or waiting for a request).
    pub probing: bool,
}

/// Every deployment's health in this process, by model and deployment.
type HealthMap = Mutex<HashMap<(String, String), Arc<Health>>>;

/// Every deployment's health, the chooser and the retry policy. Cheap to share.
#[derive(Debug, Default)]
pub(crate) struct Router {
    config: RoutingConfig,
    health: Arc<HealthMap>,
    /// The cooldowns shared with other replicas (`[redis]`).
    shared: Option<SharedCooldown>,
}

/// A chosen deployment: counted in flight until dropped; a probe not resolved by then (the
/// request was cut, the client left) frees the probe slot for the next request.
pub(crate) struct Attempt {
    health: Arc<Health>,
    probe: bool,
    resolved: bool,
    /// A probe with the cooldown shared: where its verdict (or its lease, unresolved) goes.
    shared_probe: Option<SharedProbe>,
}

/// The deployment a probe tests, in the shared cooldown.
struct SharedProbe {
    shared: SharedCooldown,
    model_id: String,
    deployment: String,
}

/// Runs a shared-cooldown update without holding up the request; failing, the replica goes on
/// with its own state (fail-open).
fn in_background(
    what: &'static str,
    update: impl Future<Output = Result<(), SharedCooldownError>> + Send + 'static,
) {
    if let Ok(runtime) = tokio::runtime::Handle::try_current() {
        runtime.spawn(async move {
            if let Err(error) = update.await {
                tracing::warn!(%error, "shared cooldown: {what} failed; this replica goes on with its own state");
            }
        });
    }
}

impl std::fmt::Debug for Attempt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Attempt")
            .field("probe", &self.probe)
            .finish()
    }
}

impl Drop for Attempt {
    fn drop(&mut self) {
        self.health.in_flight.fetch_sub(1, Ordering::Relaxed);
        self.health.meters.left();
        if self.probe && !self.resolved {
            lock(&self.health.state).probing = false;
            if let Some(SharedProbe {
                shared,
                model_id,
                deployment,
            }) = self.shared_probe.take()
            {
                in_background("giving back a probe lease", async move {
                    shared.release_probe(&model_id, &deployment).await
                });
            }
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The backoff before attempt `retry` + 1 (`retry` ≥ 1): uniform in `[0, min(max, base·2^(retry-1))]`.
pub(crate) fn full_jitter(config: &RoutingConfig, retry: u32) -> Duration {
    let cap = config
        .backoff_base_ms
        .saturating_mul(1u64 << retry.saturating_sub(1).min(30))
        .min(config.backoff_max_ms);
    Duration::from_millis(rand::rng().random_range(0..=cap))
}

impl Router {
    pub(crate) fn new(config: RoutingConfig) -> Self {
        Self {
            config,
            health: Arc::default(),
            shared: None,
        }
    }

    /// Shares cooldowns with the other replicas through `shared`, and starts the task that
    /// reads theirs every `shared_refresh_ms` (it ends with the router).
    pub(crate) fn share(&mut self, shared: SharedCooldown) {
        let every = Duration::from_millis(self.config.shared_refresh_ms.max(10));
        let health = Arc::downgrade(&self.health);
        let reader = shared.clone();
        self.shared = Some(shared);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(health) = health.upgrade() else {
                    break;
                };
                fold_shared(&health, &reader).await;
            }
        });
    }

    /// Reads the shared cooldowns now (what the refresh task does every `shared_refresh_ms`).
    #[cfg(test)]
    pub(crate) async fn refresh_shared(&self) {
        if let Some(shared) = &self.shared {
            fold_shared(&self.health, shared).await;
        }
    }

    /// How long a probe's lease keeps other replicas from probing if its replica never says how
    /// it went (it died): twice the cooldown, at least 30 s.
    fn probe_lease(&self) -> Duration {
        Duration::from_secs(self.config.cooldown_secs.saturating_mul(2).max(30))
    }

    pub(crate) fn config(&self) -> &RoutingConfig {
        &self.config
    }

    fn health(&self, model_id: &str, deployment: &str) -> Arc<Health> {
        health_of(&self.health, model_id, deployment)
    }

    /// Chooses a deployment of `candidate` that is not `excluded` and may take traffic, by its
    /// strategy; `None` when none may. A deployment due for its probe is asked for in the shared
    /// cooldown first (when there is one): another replica's probe, or a new cooldown, leaves it
    /// out and the choice is made again among the rest.
    pub(crate) async fn choose(
        &self,
        candidate: &Candidate,
        excluded: &(dyn Fn(&str) -> bool + Sync),
    ) -> Option<(usize, Attempt)> {
        let mut passed: Vec<usize> = Vec::new();
        // Each turn but the last leaves one more deployment out.
        for _ in 0..=candidate.deployments.len() {
            let now = Instant::now();
            let open: Vec<(usize, u32, Arc<Health>, Availability)> = candidate
                .deployments
                .iter()
                .enumerate()
                .filter(|(i, (d, _))| !excluded(&d.name) && !passed.contains(i))
                .filter_map(|(i, (d, _))| {
                    let health = self.health(&candidate.route.model_id, &d.name);
                    let availability = lock(&health.state).availability(now);
                    (availability != Availability::Out).then_some((
                        i,
                        d.weight,
                        health,
                        availability,
                    ))
                })
                .collect();
            let weights: Vec<u32> = open.iter().map(|(_, w, _, _)| *w).collect();
            let chosen = match candidate.route.strategy() {
                RoutingStrategy::LeastBusy => {
                    let busy: Vec<usize> = open
                        .iter()
                        .map(|(_, _, h, _)| h.in_flight.load(Ordering::Relaxed))
                        .collect();
                    least_busy(&weights, &busy)
                }
                RoutingStrategy::Weighted | RoutingStrategy::Unspecified => weighted(&weights),
            }?;
            let (index, _, health, availability) = open.into_iter().nth(chosen)?;
            let mut probe = availability == Availability::Probe;
            let mut shared_probe = None;
            if probe {
                {
                    let mut state = lock(&health.state);
                    // Another request may have taken the probe since the look above.
                    if state.probing {
                        passed.push(index);
                        continue;
                    }
                    state.probing = true;
                }
                if let Some(shared) = &self.shared {
                    let deployment = &candidate.deployments[index].0.name;
                    let model_id = &candidate.route.model_id;
                    let claim = shared
                        .claim_probe(model_id, deployment, self.probe_lease())
                        .await;
                    let mut state = lock(&health.state);
                    match claim {
                        Ok(Claim::Healthy) => {
                            state.recover();
                            health.show(&state);
                            probe = false;
                        }
                        Ok(Claim::Cooling(left)) => {
                            state.probing = false;
                            state.cooling_until = Some(Instant::now() + left);
                            passed.push(index);
                            continue;
                        }
                        Ok(Claim::Busy) => {
                            // Asked again after a refresh interval, not on every request.
                            state.probing = false;
                            state.cooling_until = Some(
                                Instant::now()
                                    + Duration::from_millis(self.config.shared_refresh_ms),
                            );
                            passed.push(index);
                            continue;
                        }
                        Ok(Claim::Probe) => {}
                        Err(error) => tracing::warn!(
                            %error,
                            model = model_id,
                            deployment,
                            "shared cooldown unreachable: this replica probes on its own"
                        ),
                    }
                    if probe {
                        shared_probe = Some(SharedProbe {
                            shared: shared.clone(),
                            model_id: model_id.clone(),
                            deployment: deployment.clone(),
                        });
                    }
                }
            }
            health.in_flight.fetch_add(1, Ordering::Relaxed);
            health.meters.entered();
            return Some((
                index,
                Attempt {
                    health,
                    probe,
                    resolved: false,
                    shared_probe,
                },
            ));
        }
        None
    }

    /// The deployment answered: it is healthy again.
    pub(crate) fn succeeded(&self, attempt: &mut Attempt) {
        attempt.resolved = true;
        let mut state = lock(&attempt.health.state);
        state.recover();
        attempt.health.show(&state);
        drop(state);
        if let Some(SharedProbe {
            shared,
            model_id,
            deployment,
        }) = attempt.shared_probe.take()
        {
            let keep = Duration::from_secs(self.config.cooldown_window_secs.max(1));
            in_background("marking a probed deployment healthy", async move {
                shared.healthy(&model_id, &deployment, keep).await
            });
        }
    }

    /// The deployment failed: a failed probe cools it down again; otherwise the failure is
    /// counted and, at `cooldown_failures` within the window, it cools down, unless `sole`: a
    /// request with nowhere else to go gains nothing from a cooldown (its failures would only
    /// turn into the gateway's own 503s), so the only deployment is never taken out.
    pub(crate) fn failed(
        &self,
        attempt: &mut Attempt,
        request_id: &str,
        model_id: &str,
        deployment: &str,
        sole: bool,
    ) {
        attempt.resolved = true;
        let now = Instant::now();
        let window = Duration::from_secs(self.config.cooldown_window_secs);
        let cooldown = Duration::from_secs(self.config.cooldown_secs);
        let mut state = lock(&attempt.health.state);
        while state
            .failures
            .front()
            .is_some_and(|at| now.duration_since(*at) > window)
        {
            state.failures.pop_front();
        }
        state.failures.push_back(now);
        let threshold = usize::try_from(self.config.cooldown_failures.max(1)).unwrap_or(1);
        let was_probe = std::mem::take(&mut state.probing);
        let cools = !sole && (was_probe || state.failures.len() >= threshold);
        if cools {
            if state.cooling_until.is_none() || was_probe {
                tracing::warn!(
                    request_id,
                    model = model_id,
                    deployment,
                    cooldown_secs = self.config.cooldown_secs,
                    "deployment cools down"
                );
            }
            state.cooling_until = Some(now + cooldown);
            state.failures.clear();
            attempt.health.show(&state);
        }
        drop(state);
        let probe = attempt.shared_probe.take();
        if let Some(shared) = self.shared.clone().filter(|_| cools) {
            // Publishing the cooldown also ends this probe's lease.
            let (model_id, deployment) = (model_id.to_owned(), deployment.to_owned());
            in_background("publishing a cooldown", async move {
                shared.cool(&model_id, &deployment, cooldown).await
            });
        } else if let Some(SharedProbe {
            shared,
            model_id,
            deployment,
        }) = probe
        {
            in_background("giving back a probe lease", async move {
                shared.release_probe(&model_id, &deployment).await
            });
        }
    }

    /// Every deployment this process has routed to, sorted by model and name.
    pub(crate) fn health_report(&self) -> Vec<DeploymentHealth> {
        let now = Instant::now();
        let mut report: Vec<DeploymentHealth> = lock(&self.health)
            .iter()
            .map(|((model_id, deployment), health)| {
                let state = lock(&health.state);
                let left = state
                    .cooling_until
                    .map_or(Duration::ZERO, |until| until.saturating_duration_since(now));
                DeploymentHealth {
                    model_id: model_id.clone(),
                    deployment: deployment.clone(),
                    in_flight: health.in_flight.load(Ordering::Relaxed) as u64,
                    recent_failures: u32::try_from(state.failures.len()).unwrap_or(u32::MAX),
                    cooldown_left_secs: left.as_secs() + u64::from(left.subsec_nanos() > 0),
                    cooling_down: !left.is_zero(),
                    // Its cooldown is over: a probe decides (sent, or waiting for a request).
                    probing: state.probing || (state.cooling_until.is_some() && left.is_zero()),
                }
            })
            .collect();
        report.sort_by(|a, b| (&a.model_id, &a.deployment).cmp(&(&b.model_id, &b.deployment)));
        report
    }
}

/// Every deployment of `routes` (catalogue order), with the health `report` has for it (a
/// deployment never routed to is healthy and idle), as `ListDeploymentHealth` answers.
pub(crate) fn health_listing(
    routes: &[ResolvedModel],
    report: Vec<DeploymentHealth>,
) -> Vec<tollgate::v1::DeploymentHealth> {
    let mut listing = Vec::new();
    for route in routes {
        for deployment in &route.deployments {
            let health = report
                .iter()
                .find(|h| h.model_id == route.model_id && h.deployment == deployment.name);
            let state = match health {
                Some(h) if h.cooling_down => DeploymentState::CoolingDown,
                Some(h) if h.probing => DeploymentState::Probing,
                _ => DeploymentState::Healthy,
            };
            listing.push(tollgate::v1::DeploymentHealth {
                model_id: route.model_id.clone(),
                deployment: deployment.name.clone(),
                provider: deployment.provider.clone(),
                upstream_model: deployment.upstream_model.clone(),
                state: state.into(),
                in_flight: health.map_or(0, |h| h.in_flight),
                recent_failures: health.map_or(0, |h| h.recent_failures),
                cooldown_left_secs: health.map_or(0, |h| h.cooldown_left_secs),
            });
        }
    }
    listing.sort_by(|a, b| (&a.model_id, &a.deployment).cmp(&(&b.model_id, &b.deployment)));
    listing
}

/// The health entry of a deployment, made (and its gauges registered) on first use.
fn health_of(map: &HealthMap, model_id: &str, deployment: &str) -> Arc<Health> {
    let mut map = lock(map);
    if let Some(health) = map.get(&(model_id.to_owned(), deployment.to_owned())) {
        return Arc::clone(health);
    }
    let health = Arc::new(Health::new(model_id, deployment));
    map.insert(
        (model_id.to_owned(), deployment.to_owned()),
        Arc::clone(&health),
    );
    health
}

/// Folds the cooldowns other replicas published into `health`: a deployment cooling down there
/// is out here until the same time (a probe this replica is running is left alone). Redis
/// unreachable: nothing changes.
async fn fold_shared(health: &HealthMap, shared: &SharedCooldown) {
    let cooling = match shared.cooling().await {
        Ok(cooling) => cooling,
        Err(error) => {
            tracing::debug!(%error, "shared cooldown unreachable: reading it again later");
            return;
        }
    };
    let now = Instant::now();
    for (model_id, deployment, left) in cooling {
        let entry = health_of(health, &model_id, &deployment);
        let mut state = lock(&entry.state);
        let until = now + left;
        if !state.probing && state.cooling_until.is_none_or(|at| at < until) {
            state.cooling_until = Some(until);
            state.failures.clear();
            entry.show(&state);
        }
    }
}

/// A weighted random index into `weights` (`None` when empty).
fn weighted(weights: &[u32]) -> Option<usize> {
    let total: u64 = weights.iter().map(|w| u64::from(*w)).sum();
    if total == 0 {
        return None;
    }
    let mut at = rand::rng().random_range(0..total);
    weights.iter().position(|w| {
        let w = u64::from(*w);
        if at < w {
            true
        } else {
            at -= w;
            false
        }
    })
}

/// Power of two choices: two weighted draws, the one with fewer requests in flight per unit of
/// weight wins.
fn least_busy(weights: &[u32], busy: &[usize]) -> Option<usize> {
    let a = weighted(weights)?;
    let b = weighted(weights)?;
    // busy[a] / weight[a] against busy[b] / weight[b], cross-multiplied.
    let load_a = busy[a] as u128 * u128::from(weights[b]);
    let load_b = busy[b] as u128 * u128::from(weights[a]);
    Some(if load_b < load_a { b } else { a })
}

/// Why the retry loop ended without an answer.
#[derive(Debug)]
pub(crate) struct Exhausted {
    pub error: UpstreamError,
    /// The last deployment tried (none: nothing could be tried).
    pub last: Option<Pick>,
    pub attempts: u32,
}

/// A successful attempt.
#[derive(Debug)]
pub(crate) struct Served<T> {
    pub value: T,
    pub pick: Pick,
    pub attempts: u32,
    /// Keeps the deployment counted in flight (for `least_busy`) while the answer is relayed.
    pub in_flight: Attempt,
}

/// Runs `attempt` on deployments of `candidates` (in order; within one, by the router's choice)
/// until one answers, a failure is not retryable, `max_attempts` are spent or `deadline` would
/// be passed. `attempt` gets the pick and the time left.
pub(crate) async fn with_retries<T, F, Fut>(
    router: &Router,
    request_id: &str,
    candidates: &[Candidate],
    deadline: Instant,
    mut attempt: F,
) -> Result<Served<T>, Exhausted>
where
    F: FnMut(Pick, Duration) -> Fut,
    Fut: Future<Output = Result<T, UpstreamError>>,
{
    let max_attempts = router.config().max_attempts.max(1);
    let sole = candidates
        .iter()
        .map(|c| c.deployments.len())
        .sum::<usize>()
        <= 1;
    let mut tried: Vec<(usize, String)> = Vec::new();
    let mut last: Option<(Pick, UpstreamError)> = None;
    let mut attempts = 0u32;
    while attempts < max_attempts {
        let Some((pick, mut chosen)) = next_pick(router, candidates, &tried, last.as_ref()).await
        else {
            break;
        };
        if let Some((failed, error)) = &last {
            let mut wait = full_jitter(router.config(), attempts);
            let same = failed.candidate == pick.candidate && failed.deployment == pick.deployment;
            let retry_after = error.retry_after().filter(|_| same);
            if let Some(retry_after) = retry_after {
                wait = wait.max(retry_after);
            }
            if Instant::now() + wait >= deadline {
                return Err(Exhausted {
                    error: UpstreamError::RetryPastDeadline {
                        provider: failed.route.provider.clone(),
                        wait_ms: u64::try_from(wait.as_millis()).unwrap_or(u64::MAX),
                    },
                    last: Some(failed.clone()),
                    attempts,
                });
            }
            let too_long = Duration::from_secs(router.config().max_retry_after_secs);
            if retry_after.is_some_and(|wait| wait > too_long)
                && let Some((failed, error)) = last
            {
                return Err(Exhausted {
                    error,
                    last: Some(failed),
                    attempts,
                });
            }
            tokio::time::sleep(wait).await;
        }
        attempts += 1;
        tried.push((pick.candidate, pick.deployment.clone()));
        let left = deadline.saturating_duration_since(Instant::now());
        match attempt(pick.clone(), left).await {
            Ok(value) => {
                router.succeeded(&mut chosen);
                return Ok(Served {
                    value,
                    pick,
                    attempts,
                    in_flight: chosen,
                });
            }
            Err(error) => {
                if error.deployment_fault() {
                    router.failed(
                        &mut chosen,
                        request_id,
                        &pick.route.model_id,
                        &pick.deployment,
                        sole,
                    );
                }
                drop(chosen);
                if !error.retryable() {
                    return Err(Exhausted {
                        error,
                        last: Some(pick),
                        attempts,
                    });
                }
                tracing::info!(
                    request_id,
                    model = pick.route.model_id,
                    deployment = pick.deployment,
                    attempt = attempts,
                    error = %error,
                    "upstream attempt failed; trying again"
                );
                last = Some((pick, error));
            }
        }
    }
    Err(match last {
        Some((pick, error)) => Exhausted {
            error,
            last: Some(pick),
            attempts,
        },
        None => Exhausted {
            error: UpstreamError::NoDeployment {
                model: candidates
                    .first()
                    .map(|c| c.route.requested_id.clone())
                    .unwrap_or_default(),
            },
            last: None,
            attempts,
        },
    })
}

/// Whether deployment `name` of candidate `c` is left out of a pass.
type Excluded<'a> = dyn Fn(usize, &str) -> bool + Sync + 'a;

/// The next deployment to try: the first candidate with a deployment not tried yet that may
/// take traffic; else one tried before, but never the one that just failed while another exists;
/// the one that just failed only when nothing else is left.
async fn next_pick(
    router: &Router,
    candidates: &[Candidate],
    tried: &[(usize, String)],
    last: Option<&(Pick, UpstreamError)>,
) -> Option<(Pick, Attempt)> {
    let tried_before = |c: usize, name: &str| tried.iter().any(|(tc, n)| *tc == c && n == name);
    let just_failed =
        |c: usize, name: &str| last.is_some_and(|(p, _)| p.candidate == c && p.deployment == name);
    let passes: [&Excluded<'_>; 3] = [&tried_before, &just_failed, &|_, _| false];
    for excluded in passes {
        for (c, candidate) in candidates.iter().enumerate() {
            if let Some((index, attempt)) =
                router.choose(candidate, &|name| excluded(c, name)).await
            {
                let (deployment, provider) = &candidate.deployments[index];
                let pick = Pick {
                    candidate: c,
                    route: deployment_route(&candidate.route, deployment),
                    deployment: deployment.name.clone(),
                    provider: Arc::clone(provider),
                    thinking: candidate.thinking,
                };
                return Some((pick, attempt));
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weighted_choice_follows_the_weights() {
        let weights = [1, 3, 6];
        let mut counts = [0u32; 3];
        for _ in 0..10_000 {
            counts[weighted(&weights).unwrap()] += 1;
        }
        for (count, weight) in counts.iter().zip(weights) {
            let share = f64::from(*count) / 10_000.0;
            let expected = f64::from(weight) / 10.0;
            assert!((share - expected).abs() < 0.03, "{counts:?}");
        }
        assert_eq!(weighted(&[]), None);
    }

    #[test]
    fn least_busy_prefers_the_idle_deployment() {
        let mut idle = 0;
        for _ in 0..1_000 {
            if least_busy(&[1, 1], &[5, 0]) == Some(1) {
                idle += 1;
            }
        }
        // Two draws land on the busy one a quarter of the time; otherwise the idle one wins.
        assert!(idle > 650, "{idle}");
    }

    #[test]
    fn full_jitter_stays_within_the_doubling_cap() {
        let config = RoutingConfig {
            backoff_base_ms: 100,
            backoff_max_ms: 1_000,
            ..RoutingConfig::default()
        };
        for retry in 1..10 {
            let cap = (100u64 << (retry - 1)).min(1_000);
            for _ in 0..50 {
                assert!(full_jitter(&config, retry) <= Duration::from_millis(cap));
            }
        }
    }

    #[test]
    fn retried_failures_are_the_listed_ones() {
        let status = |s| UpstreamError::from_status("p", s, "m".into());
        for s in [429, 500, 502, 503, 504, 529] {
            assert!(status(s).retryable(), "{s}");
        }
        for s in [400, 401, 403, 404, 413, 422, 501] {
            assert!(!status(s).retryable(), "{s}");
        }
        let connect = |sent| UpstreamError::Connect {
            provider: "p".into(),
            message: "m".into(),
            sent,
        };
        assert!(connect(false).retryable());
        assert!(!connect(true).retryable());
        assert!(status(401).deployment_fault());
        assert!(!status(400).deployment_fault());
    }

    fn candidate(deployments: &[(&str, u32)]) -> Candidate {
        let config: crate::ProviderConfig =
            toml::from_str("name = \"p\"\nkind = \"openai\"\nbase_url = \"http://127.0.0.1:9\"")
                .unwrap();
        let images = crate::ImageFetcher::new(&crate::ImagesConfig::default());
        let provider = Arc::new(Provider::new(&config, &images, &|_| None).unwrap());
        Candidate {
            route: ResolvedModel {
                requested_id: "m".into(),
                model_id: "m".into(),
                ..ResolvedModel::default()
            },
            thinking: Thinking::Default { thinks: false },
            deployments: deployments
                .iter()
                .map(|(name, weight)| {
                    let deployment = Deployment {
                        name: (*name).to_owned(),
                        provider: "p".into(),
                        weight: *weight,
                        ..Deployment::default()
                    };
                    (deployment, Arc::clone(&provider))
                })
                .collect(),
        }
    }

    fn overloaded(retry_after_secs: Option<u64>) -> UpstreamError {
        UpstreamError::Overloaded {
            provider: "p".into(),
            status: 503,
            retry_after_secs,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_failing_deployment_cools_down_then_one_probe_decides() {
        let router = Router::new(RoutingConfig {
            cooldown_failures: 2,
            cooldown_secs: 10,
            ..RoutingConfig::default()
        });
        let c = candidate(&[("a", 1), ("b", 1)]);
        let only_a = |name: &str| name != "a";
        for _ in 0..2 {
            let (index, mut attempt) = router.choose(&c, &only_a).await.unwrap();
            assert_eq!(index, 0);
            router.failed(&mut attempt, "chatcmpl-test", "m", "a", false);
        }
        assert!(router.choose(&c, &only_a).await.is_none(), "cooling down");
        assert!(
            router.choose(&c, &|_| false).await.is_some(),
            "b still serves"
        );
        tokio::time::advance(Duration::from_secs(11)).await;
        let (_, mut probe) = router.choose(&c, &only_a).await.unwrap();
        assert!(
            router.choose(&c, &only_a).await.is_none(),
            "one probe at a time"
        );
        router.failed(&mut probe, "chatcmpl-test", "m", "a", false);
        drop(probe);
        assert!(
            router.choose(&c, &only_a).await.is_none(),
            "a failed probe cools it down again"
        );
        tokio::time::advance(Duration::from_secs(11)).await;
        let (_, mut probe) = router.choose(&c, &only_a).await.unwrap();
        router.succeeded(&mut probe);
        drop(probe);
        assert!(router.choose(&c, &only_a).await.is_some());
        assert!(
            router.choose(&c, &only_a).await.is_some(),
            "healthy again: no probe limit"
        );
        let health = router.health_report();
        assert_eq!(health.len(), 2);
        assert!(!health[0].cooling_down);
        // A probe dropped unresolved (its request was cut) frees the probe slot.
        for _ in 0..2 {
            let (_, mut attempt) = router.choose(&c, &only_a).await.unwrap();
            router.failed(&mut attempt, "chatcmpl-test", "m", "a", false);
        }
        tokio::time::advance(Duration::from_secs(11)).await;
        drop(router.choose(&c, &only_a).await.unwrap());
        assert!(router.choose(&c, &only_a).await.is_some());
    }

    #[tokio::test(start_paused = true)]
    async fn the_only_deployment_is_never_taken_out() {
        let router = Router::new(RoutingConfig {
            cooldown_failures: 1,
            ..RoutingConfig::default()
        });
        let c = candidate(&[("a", 1)]);
        for _ in 0..3 {
            let (_, mut attempt) = router.choose(&c, &|_| false).await.unwrap();
            router.failed(&mut attempt, "chatcmpl-test", "m", "a", true);
        }
        assert!(router.choose(&c, &|_| false).await.is_some());
    }

    #[tokio::test(start_paused = true)]
    async fn a_retry_goes_to_another_deployment_after_backoff() {
        let router = Router::new(RoutingConfig::default());
        let candidates = [candidate(&[("a", 1), ("b", 1)])];
        let deadline = Instant::now() + Duration::from_secs(60);
        for _ in 0..20 {
            let mut called: Vec<String> = Vec::new();
            let served = with_retries(
                &router,
                "chatcmpl-test",
                &candidates,
                deadline,
                |pick, _| {
                    called.push(pick.deployment.clone());
                    let failing = pick.deployment == "a";
                    async move {
                        if failing {
                            Err(overloaded(None))
                        } else {
                            Ok(())
                        }
                    }
                },
            )
            .await
            .unwrap();
            assert_eq!(served.pick.deployment, "b");
            assert_eq!(served.attempts as usize, called.len());
            // Never the failed one twice while another exists.
            assert!(called == ["b"] || called == ["a", "b"], "{called:?}");
        }
        // A caller's fault is not retried.
        let mut calls = 0;
        let e = with_retries(&router, "chatcmpl-test", &candidates, deadline, |_, _| {
            calls += 1;
            async { Err::<(), _>(UpstreamError::from_status("p", 400, "bad".into())) }
        })
        .await
        .unwrap_err();
        assert_eq!((calls, e.attempts), (1, 1));
    }

    #[tokio::test(start_paused = true)]
    async fn retry_after_is_waited_on_the_same_deployment_unless_past_the_deadline() {
        let router = Router::new(RoutingConfig::default());
        let candidates = [candidate(&[("a", 1)])];
        let started = Instant::now();
        let mut calls = 0;
        let served = with_retries(
            &router,
            "chatcmpl-test",
            &candidates,
            started + Duration::from_secs(60),
            |_, _| {
                calls += 1;
                let first = calls == 1;
                async move {
                    if first {
                        Err(overloaded(Some(2)))
                    } else {
                        Ok(())
                    }
                }
            },
        )
        .await
        .unwrap();
        assert_eq!(served.attempts, 2);
        assert!(started.elapsed() >= Duration::from_secs(2));

        let started = Instant::now();
        let e = with_retries(
            &router,
            "chatcmpl-test",
            &candidates,
            started + Duration::from_secs(1),
            |_, _| async { Err::<(), _>(overloaded(Some(5))) },
        )
        .await
        .unwrap_err();
        assert!(
            matches!(e.error, UpstreamError::RetryPastDeadline { .. }),
            "{:?}",
            e.error
        );
        assert!(e.error.generated_nothing());
        assert_eq!(e.attempts, 1);
        assert!(
            started.elapsed() < Duration::from_millis(10),
            "answered at once"
        );
    }

    /// Two routers (two replicas) sharing one Redis: failures on A cool the deployment for B
    /// too, and after the cooldown a single probe among both decides.
    #[tokio::test]
    #[ignore = "needs a Redis server in TOLLGATE_TEST_REDIS_URL"]
    async fn replicas_share_a_cooldown_and_its_single_probe_on_redis() {
        let url = std::env::var("TOLLGATE_TEST_REDIS_URL").unwrap();
        let prefix = format!("routing-test-{}", uuid::Uuid::now_v7().simple());
        let config = RoutingConfig {
            cooldown_failures: 2,
            cooldown_secs: 1,
            shared_refresh_ms: 20,
            ..RoutingConfig::default()
        };
        let replica = || {
            let mut router = Router::new(config);
            router.share(SharedCooldown::connect(&url, &prefix).unwrap());
            router
        };
        let (a, b) = (replica(), replica());
        let c = candidate(&[("a", 1), ("b", 1)]);
        let only_a = |name: &str| name != "a";
        // B has routed to "a" before: it is healthy there.
        drop(b.choose(&c, &only_a).await.unwrap());
        for _ in 0..2 {
            let (_, mut attempt) = a.choose(&c, &only_a).await.unwrap();
            a.failed(&mut attempt, "chatcmpl-test", "m", "a", false);
        }
        assert!(a.choose(&c, &only_a).await.is_none(), "cooled down on A");
        // B learns it from Redis (its refresh task; no request of B asks Redis).
        let mut learnt = false;
        for _ in 0..200 {
            b.refresh_shared().await;
            if b.choose(&c, &only_a).await.is_none() {
                learnt = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert!(learnt, "B skips the deployment A cooled down");
        let report = b.health_report();
        assert!(report.iter().any(|h| h.deployment == "a" && h.cooling_down));
        let mut reached_a = 0;
        for _ in 0..50 {
            let (index, _) = b.choose(&c, &|_| false).await.unwrap();
            reached_a += usize::from(index == 0);
        }
        assert_eq!(
            reached_a, 0,
            "no request of B reaches the cooled-down deployment"
        );

        // After the cooldown, one probe among both replicas.
        let mut probe = None;
        for _ in 0..400 {
            if let Some(chosen) = b.choose(&c, &only_a).await {
                probe = Some(chosen);
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let (_, mut probe) = probe.expect("the cooldown ends");
        assert!(probe.probe);
        for _ in 0..5 {
            assert!(
                a.choose(&c, &only_a).await.is_none(),
                "B's probe is the only one"
            );
        }
        b.succeeded(&mut probe);
        drop(probe);
        let mut back = false;
        for _ in 0..200 {
            if let Some((_, attempt)) = a.choose(&c, &only_a).await {
                assert!(
                    !attempt.probe,
                    "A learns the verdict, it does not probe again"
                );
                back = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(back, "healthy again on A");
    }

    /// Redis unreachable: the router cools down and probes on its own state, and answers at once.
    #[tokio::test]
    async fn a_router_whose_redis_is_down_routes_on_its_own_state() {
        let mut router = Router::new(RoutingConfig {
            cooldown_failures: 1,
            cooldown_secs: 0,
            ..RoutingConfig::default()
        });
        router.share(SharedCooldown::connect("redis://127.0.0.1:1", "down").unwrap());
        let c = candidate(&[("a", 1), ("b", 1)]);
        let only_a = |name: &str| name != "a";
        let (_, mut attempt) = router.choose(&c, &only_a).await.unwrap();
        router.failed(&mut attempt, "chatcmpl-test", "m", "a", false);
        drop(attempt);
        router.refresh_shared().await;
        let started = std::time::Instant::now();
        let (_, mut probe) = router.choose(&c, &only_a).await.unwrap();
        assert!(probe.probe, "probes on its own");
        assert!(started.elapsed() < Duration::from_secs(2));
        router.succeeded(&mut probe);
        drop(probe);
        assert!(!router.choose(&c, &only_a).await.unwrap().1.probe);
    }
}
