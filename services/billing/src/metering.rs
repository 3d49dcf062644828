//! The internal `tollgate.v1.Metering` API: authentication from the key cache; admission against
//! the tier's model allow-list, the catalogue (an unknown model is refused), the tier's stream cap
//! (a slot per open stream, freed at its settlement), the tier limits (in memory, or in Redis when
//! shared) and, for keys with a balance or budget, a reservation of the
//! worst-case cost ([`crate::accounts`]); settlement priced at the catalogue's prices through the
//! group-commit ledger; cache invalidation.

use std::time::Duration;

use tollgate::v1::metering_server::Metering;
use tollgate::v1::{
    Admission, AdmitRequest, AuthenticateRequest, InvalidateKeyRequest, InvalidateKeyResponse,
    KeyInfo, Pricing, SettleRequest, Settlement,
};
use tonic::{Request, Response, Status};

use crate::accounts::{self, Reservation};
use crate::clock::{Period, now_ms};
use crate::error::BillingError;
use crate::keys::ActiveKey;
use crate::ledger::{self, LedgerRow, Outcome};
use crate::pricing::{cost_picodollars, dearest_of, worst_case_picodollars};
use crate::service::BillingService;
use crate::shared_limits::Slot;
use crate::telemetry;

/// How long a reservation may stay unsettled when the caller names no deadline.
const DEFAULT_RESERVATION_TTL: Duration = Duration::from_secs(600);

impl BillingService {
    /// Counts one request against the key's tier limits (shared or local).
    async fn take_slot(&self, key: &ActiveKey, period: Period) -> Result<(), BillingError> {
        match &self.inner.shared_limits {
            Some(shared) => {
                let id = &key.record.id;
                if shared.admit(id, &key.limits, period, None).await? == Slot::Counted {
                    return Ok(());
                }
                // Redis has no counter for the month: it starts from the ledger's rows of this
                // month for the key (the requests already settled), not from a count this process
                // loaded earlier.
                let seed = ledger::count_requests(&self.inner.db, id, period).await?;
                shared
                    .admit(id, &key.limits, period, Some(seed))
                    .await
                    .map(drop)
            }
            None => key.limits.admit(period),
        }
    }

    /// Gives back the monthly slot of request `request_id`, refused after [`Self::take_slot`].
    async fn give_back_slot(&self, key: &ActiveKey, period: Period, request_id: &str) {
        match &self.inner.shared_limits {
            Some(shared) => {
                if let Err(err) = shared.release(&key.record.id, period).await {
                    tracing::error!(request_id, error = %err, "could not give back a monthly slot");
                }
            }
            None => key.limits.release(period),
        }
    }

    /// Reserves the request's worst-case cost against the key's balance and budget (in the
    /// ledger writer's next batch); returns the amount held.
    async fn reserve(
        &self,
        key: &ActiveKey,
        req: &AdmitRequest,
        prices: &Pricing,
        request_id: &str,
        period: Period,
        expires_at: i64,
    ) -> Result<i64, BillingError> {
        let amount =
            worst_case_picodollars(req.max_prompt_tokens, req.max_completion_tokens, prices);
        self.inner
            .ledger
            .reserve(Reservation {
                request_id: request_id.to_owned(),
                key_id: key.record.id.clone(),
                amount,
                period,
                expires_at,
            })
            .await
    }

    /// The admission of `request_id` when it was already admitted: remembered by this process,
    /// or, on a `retry` (after a restart, or by another replica), found as its reservation. A
    /// first attempt's request id is new: reading the database for it would cost every metered
    /// admission a query that finds nothing.
    async fn admitted_before(
        &self,
        key: &ActiveKey,
        request_id: &str,
        retry: bool,
        now: i64,
    ) -> Result<Option<i64>, BillingError> {
        if let Some(reserved) = self.inner.admissions.get(request_id, &key.record.id, now) {
            return Ok(Some(reserved));
        }
        if retry && key.metered {
            return accounts::reserved_for(&self.inner.db, request_id, &key.record.id).await;
        }
        Ok(None)
    }

    /// Settle's answer; a failure of billing itself is logged naming the request.
    async fn settle_row(&self, req: SettleRequest) -> Result<Settlement, Status> {
        // The stream has ended, however it ended: its slot is free whatever the ledger answers.
        if req.streamed {
            self.inner.streams.close(&req.key_id, &req.request_id);
        }
        // Priced by the model and deployment the Settle names, at the catalogue's prices.
        let prices = self
            .inner
            .prices
            .prices(&req.model_id)
            .await
            .and_then(|prices| prices.of(&req.deployment))
            .map_err(|err| err.into_status_of(Some(&req.request_id)))?;
        let mut row = ledger_row(req, &prices, now_ms(), Period::current())?;
        row.may_hold_reservation = self
            .inner
            .admissions
            .may_hold_reservation(&row.request_id, &row.key_id);
        let request_id = row.request_id.clone();
        let cost_picodollars = self
            .inner
            .ledger
            .record(row)
            .await
            .map_err(|err| err.into_status_of(Some(&request_id)))?;
        self.inner.admissions.forget(&request_id);
        Ok(Settlement {
            request_id,
            cost_picodollars,
        })
    }
}

pub(crate) fn key_info(key: &ActiveKey) -> KeyInfo {
    KeyInfo {
        key_id: key.record.id.clone(),
        key_prefix: key.record.display_prefix(),
        tier: key.record.tier.clone(),
        name: key.record.name.clone(),
    }
}

fn non_empty<S: AsRef<str>>(param: &'static str, value: S) -> Result<S, BillingError> {
    if value.as_ref().trim().is_empty() {
        Err(BillingError::invalid(
            param,
            format!("{param} must not be empty"),
        ))
    } else {
        Ok(value)
    }
}

fn tokens(param: &'static str, value: u64) -> Result<i64, BillingError> {
    i64::try_from(value).map_err(|_| BillingError::invalid(param, format!("{param} is too large")))
}

/// Validates a `SettleRequest` and prices it at `prices`.
fn ledger_row(
    req: SettleRequest,
    prices: &Pricing,
    now: i64,
    period: Period,
) -> Result<LedgerRow, BillingError> {
    let request_id = non_empty("request_id", req.request_id)?;
    let key_id = non_empty("key_id", req.key_id)?;
    let outcome = match tollgate::v1::Outcome::try_from(req.outcome) {
        Ok(tollgate::v1::Outcome::Succeeded) => Outcome::Succeeded,
        Ok(tollgate::v1::Outcome::Failed) => Outcome::Failed,
        Ok(tollgate::v1::Outcome::Cancelled) => Outcome::Cancelled,
        Ok(tollgate::v1::Outcome::Unspecified) | Err(_) => {
            return Err(BillingError::invalid(
                "outcome",
                "outcome must be succeeded, failed or cancelled",
            ));
        }
    };
    let usage = req.usage.unwrap_or_default();
    Ok(LedgerRow {
        request_id,
        key_id,
        requested_model: req.requested_model,
        model_id: req.model_id,
        provider: req.provider,
        upstream_model: req.upstream_model,
        prompt_tokens: tokens("usage.prompt_tokens", usage.prompt_tokens)?,
        cached_prompt_tokens: tokens("usage.cached_prompt_tokens", usage.cached_prompt_tokens)?,
        completion_tokens: tokens("usage.completion_tokens", usage.completion_tokens)?,
        reasoning_tokens: tokens("usage.reasoning_tokens", usage.reasoning_tokens)?,
        cache_write_tokens: tokens("usage.cache_write_tokens", usage.cache_write_tokens)?,
        cost_picodollars: cost_picodollars(&usage, prices),
        outcome,
        streamed: req.streamed,
        estimated: req.estimated,
        created_at: now,
        period,
        deployment: (!req.deployment.is_empty()).then_some(req.deployment),
        attempts: (req.attempts > 0).then(|| i32::try_from(req.attempts).unwrap_or(i32::MAX)),
        may_hold_reservation: true,
    })
}

#[tonic::async_trait]
impl Metering for BillingService {
    async fn authenticate(
        &self,
        request: Request<AuthenticateRequest>,
    ) -> Result<Response<KeyInfo>, Status> {
        let key = self.authenticate_request(&request).await?;
        Ok(Response::new(key_info(&key)))
    }

    async fn admit(
        &self,
        mut request: Request<AdmitRequest>,
    ) -> Result<Response<Admission>, Status> {
        // Taken out so a failure's log line can name it after the request is consumed.
        let request_id = std::mem::take(&mut request.get_mut().request_id);
        self.admission(request, &request_id)
            .await
            .map(Response::new)
            .map_err(|err| {
                telemetry::admission_failed(&err);
                err.into_status_of(Some(&request_id))
            })
    }

    async fn settle(
        &self,
        request: Request<SettleRequest>,
    ) -> Result<Response<Settlement>, Status> {
        self.settle_row(request.into_inner())
            .await
            .map(Response::new)
    }

    async fn invalidate_key(
        &self,
        request: Request<InvalidateKeyRequest>,
    ) -> Result<Response<InvalidateKeyResponse>, Status> {
        self.inner.keys.invalidate(&request.into_inner().key_id);
        Ok(Response::new(InvalidateKeyResponse {}))
    }
}

impl BillingService {
    /// Admit's answer, or why not: the key, its tier's model allow-list, the model's prices,
    /// the limits, and the money reserved for a metered key.
    async fn admission(
        &self,
        request: Request<AdmitRequest>,
        request_id: &str,
    ) -> Result<Admission, BillingError> {
        let key = self.authenticate_request(&request).await?;
        let req = request.into_inner();
        let request_id = non_empty("request_id", request_id)?;
        // Before the limits: a refused model must not use a slot of either.
        let tier = key.limits.tier();
        if !tier.allows(&req.model, &req.model_id) {
            return Err(BillingError::ModelNotAllowed {
                tier: tier.name.clone(),
                model: req.model,
            });
        }
        // Also before the limits: an unknown model is refused without using a slot.
        let mut prices = self.inner.prices.prices(&req.model_id).await?.dearest();
        // The fallbacks the tier allows (and the catalogue knows); the reservation covers the
        // dearest deployment of all of them.
        let mut allowed_fallbacks = Vec::new();
        for fallback in &req.fallbacks {
            if !tier.allows(&fallback.model, &fallback.model_id) {
                continue;
            }
            match self.inner.prices.prices(&fallback.model_id).await {
                Ok(theirs) => prices = dearest_of(&prices, &theirs.dearest()),
                Err(BillingError::UnknownModel(_)) => continue,
                Err(err) => return Err(err),
            }
            allowed_fallbacks.push(fallback.clone());
        }
        let now = now_ms();
        // Idempotent: a retried Admit of an admitted request is answered as the first was and
        // counts nothing again.
        let admission = |reserved_picodollars| Admission {
            key: Some(key_info(&key)),
            request_id: request_id.to_owned(),
            reserved_picodollars,
            allowed_fallbacks: allowed_fallbacks.clone(),
        };
        if let Some(reserved) = self
            .admitted_before(&key, request_id, req.retry, now)
            .await?
        {
            return Ok(admission(reserved));
        }
        let ttl = if req.reservation_ttl_ms == 0 {
            DEFAULT_RESERVATION_TTL
        } else {
            Duration::from_millis(req.reservation_ttl_ms)
        };
        let expires_at = now.saturating_add(i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX));
        let period = Period::current();
        // Before the limits: a stream refused for the cap uses no slot of either.
        let stream_cap = req
            .streamed
            .then_some(tier.max_concurrent_streams)
            .flatten();
        if let Some(cap) = stream_cap
            && !self
                .inner
                .streams
                .open(&key.record.id, request_id, cap.get(), now, expires_at)
        {
            return Err(BillingError::TooManyStreams {
                tier: tier.name.clone(),
                limit: cap.get(),
            });
        }
        let close_stream = || {
            if stream_cap.is_some() {
                self.inner.streams.close(&key.record.id, request_id);
            }
        };
        if let Err(err) = self.take_slot(&key, period).await {
            close_stream();
            return Err(err);
        }
        let reserved_picodollars = if key.metered {
            match self
                .reserve(&key, &req, &prices, request_id, period, expires_at)
                .await
            {
                Ok(amount) => amount,
                Err(err) => {
                    self.give_back_slot(&key, period, request_id).await;
                    close_stream();
                    return Err(err);
                }
            }
        } else {
            0
        };
        self.inner.admissions.remember(
            request_id,
            &key.record.id,
            reserved_picodollars,
            key.metered,
            expires_at,
            now,
        );
        Ok(admission(reserved_picodollars))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use tollgate::v1::Usage;

    use super::*;

    /// deepseek-v4-flash: 0.22 in, 0.005 cached, 0.44 out per 1M tokens.
    const FLASH: Pricing = Pricing {
        input_micros_per_mtok: 220_000,
        cached_input_micros_per_mtok: 5_000,
        output_micros_per_mtok: 440_000,
        cache_write_micros_per_mtok: 220_000,
    };

    fn settle_request() -> SettleRequest {
        SettleRequest {
            request_id: "chatcmpl-1".into(),
            key_id: "k".into(),
            usage: Some(Usage {
                prompt_tokens: 161,
                cached_prompt_tokens: 128,
                completion_tokens: 25,
                total_tokens: 186,
                ..Default::default()
            }),
            outcome: tollgate::v1::Outcome::Succeeded as i32,
            ..Default::default()
        }
    }

    #[test]
    fn settle_rows_are_priced_exactly() {
        let row = ledger_row(settle_request(), &FLASH, 0, Period::current()).unwrap();
        assert_eq!(
            row.cost_picodollars,
            33 * 220_000 + 128 * 5_000 + 25 * 440_000
        );
        let mut req = settle_request();
        req.usage = None;
        assert_eq!(
            ledger_row(req, &FLASH, 0, Period::current())
                .unwrap()
                .cost_picodollars,
            0
        );
    }

    #[test]
    fn settle_rows_are_validated() {
        let param = |req: SettleRequest| match ledger_row(req, &FLASH, 0, Period::current()) {
            Err(BillingError::InvalidArgument { param, .. }) => param,
            other => panic!("{other:?}"),
        };
        let mut req = settle_request();
        req.request_id = " ".into();
        assert_eq!(param(req), "request_id");
        let mut req = settle_request();
        req.key_id.clear();
        assert_eq!(param(req), "key_id");
        let mut req = settle_request();
        req.outcome = 0;
        assert_eq!(param(req), "outcome");
        let mut req = settle_request();
        req.usage = Some(Usage {
            prompt_tokens: u64::MAX,
            ..Default::default()
        });
        assert_eq!(param(req), "usage.prompt_tokens");
    }
}
