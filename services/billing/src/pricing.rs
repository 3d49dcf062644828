//! What a request costs: the one home of billing's price rules. Where prices come from
//! ([`PriceBook`]: the catalogue, never the caller), the exact cost of a settled request's usage
//! ([`cost_picodollars`]), the worst case reserved before the upstream call
//! ([`worst_case_picodollars`]) and which prices are acceptable at all ([`validate`]).
//!
//! Prices are integer micro-USD per one million tokens, so one token at price `P` costs exactly
//! `P` picodollars and every amount here is an integer (`tollgate::money` parses and prints them).
//! The token bounds the worst case multiplies are computed by the inference service, which has the
//! request (`services/inference/src/token_bounds.rs`); bounds × prices is billing's.

use dashmap::DashMap;
use tollgate::transport::GrpcTransport;
use tollgate::v1::catalog_client::CatalogClient;
use tollgate::v1::{Pricing, ResolveModelRequest, Usage};

use crate::error::BillingError;

/// The prices of catalogue models, read through the Catalog contract (in-process in the monolith,
/// over the network once the services are split) and kept: the catalogue is fixed for the life
/// of a process. Metering takes prices from here, never from its caller, so a caller cannot make
/// its own requests cheaper.
#[derive(Debug)]
pub struct PriceBook {
    catalog: CatalogClient<GrpcTransport>,
    /// Prices by model id; only models the catalogue knows are kept, so its size is the
    /// catalogue's.
    known: DashMap<String, ModelPrices>,
}

/// The prices of one catalogue model: its own, and each deployment's (which may differ).
#[derive(Debug, Clone, Default)]
pub struct ModelPrices {
    pub model: Pricing,
    pub deployments: Vec<(String, Pricing)>,
}

impl ModelPrices {
    /// What a request served by `deployment` costs (empty: the model's own prices); a
    /// deployment the model does not have is refused, naming the field.
    pub fn of(&self, deployment: &str) -> Result<Pricing, BillingError> {
        if deployment.is_empty() {
            return Ok(self.model);
        }
        self.deployments
            .iter()
            .find(|(name, _)| name == deployment)
            .map(|(_, prices)| *prices)
            .ok_or_else(|| {
                BillingError::invalid(
                    "deployment",
                    format!("the model has no deployment {deployment:?}"),
                )
            })
    }

    /// Each price at its dearest over the model and its deployments: what a reservation must
    /// cover when any deployment may serve.
    pub fn dearest(&self) -> Pricing {
        self.deployments
            .iter()
            .map(|(_, p)| *p)
            .fold(self.model, |a, b| dearest_of(&a, &b))
    }
}

/// Each price at the larger of the two.
pub fn dearest_of(a: &Pricing, b: &Pricing) -> Pricing {
    Pricing {
        input_micros_per_mtok: a.input_micros_per_mtok.max(b.input_micros_per_mtok),
        cached_input_micros_per_mtok: a
            .cached_input_micros_per_mtok
            .max(b.cached_input_micros_per_mtok),
        output_micros_per_mtok: a.output_micros_per_mtok.max(b.output_micros_per_mtok),
        cache_write_micros_per_mtok: a
            .cache_write_micros_per_mtok
            .max(b.cache_write_micros_per_mtok),
    }
}

impl PriceBook {
    /// Prices looked up through `catalog`, a transport to the Catalog service.
    pub fn new(catalog: GrpcTransport) -> Self {
        Self {
            catalog: CatalogClient::new(catalog),
            known: DashMap::new(),
        }
    }

    /// The prices of the catalogue model `model_id` (a resolved model, not an alias) and of its
    /// deployments. An id the catalogue does not list as a model is refused
    /// ([`BillingError::UnknownModel`]).
    ///
    /// This is the one place a price is chosen for a request: the deployment the Settle names
    /// picks among them ([`ModelPrices::of`]).
    pub async fn prices(&self, model_id: &str) -> Result<ModelPrices, BillingError> {
        if let Some(prices) = self.known.get(model_id) {
            return Ok(prices.clone());
        }
        if model_id.trim().is_empty() {
            return Err(BillingError::UnknownModel(model_id.to_owned()));
        }
        let route = match self
            .catalog
            .clone()
            .resolve_model(ResolveModelRequest {
                id: model_id.to_owned(),
            })
            .await
        {
            Ok(route) => route.into_inner(),
            Err(status) if status.code() == tonic::Code::NotFound => {
                return Err(BillingError::UnknownModel(model_id.to_owned()));
            }
            Err(status) => {
                return Err(BillingError::CatalogUnavailable(
                    status.message().to_owned(),
                ));
            }
        };
        // An alias resolves to another id: only models are priced.
        if route.model_id != model_id {
            return Err(BillingError::UnknownModel(model_id.to_owned()));
        }
        let invalid = |reason: BillingError| BillingError::InvalidCatalogPrice {
            model_id: model_id.to_owned(),
            reason: reason.to_string(),
        };
        let model = route.pricing.unwrap_or_default();
        validate(&model).map_err(invalid)?;
        let mut deployments = Vec::with_capacity(route.deployments.len());
        for deployment in route.deployments {
            let prices = deployment.pricing.unwrap_or(model);
            validate(&prices).map_err(invalid)?;
            deployments.push((deployment.name, prices));
        }
        let prices = ModelPrices { model, deployments };
        self.known.insert(model_id.to_owned(), prices.clone());
        Ok(prices)
    }
}

/// The exact cost of `usage` at `pricing`, in picodollars: uncached prompt tokens at the input
/// price, cached prompt tokens at the cache-hit price, prompt tokens written to the cache at the
/// cache-write price, completion tokens (reasoning included) at the output price. Saturates
/// instead of overflowing.
pub fn cost_picodollars(usage: &Usage, pricing: &Pricing) -> i64 {
    let cached = usage.cached_prompt_tokens.min(usage.prompt_tokens);
    let written = usage.cache_write_tokens.min(usage.prompt_tokens - cached);
    let uncached = usage.prompt_tokens - cached - written;
    let total = i128::from(uncached) * i128::from(pricing.input_micros_per_mtok)
        + i128::from(cached) * i128::from(pricing.cached_input_micros_per_mtok)
        + i128::from(written) * i128::from(pricing.cache_write_micros_per_mtok)
        + i128::from(usage.completion_tokens) * i128::from(pricing.output_micros_per_mtok);
    i64::try_from(total).unwrap_or(i64::MAX)
}

/// The most a request can cost: every prompt token at the dearest prompt price (plain, cache hit
/// or cache write) and every completion token at the output price. Saturates at `i64::MAX`, which
/// no balance covers.
pub fn worst_case_picodollars(
    prompt_tokens: u64,
    completion_tokens: u64,
    pricing: &Pricing,
) -> i64 {
    let prompt_price = pricing
        .input_micros_per_mtok
        .max(pricing.cached_input_micros_per_mtok)
        .max(pricing.cache_write_micros_per_mtok);
    let total = i128::from(prompt_tokens) * i128::from(prompt_price)
        + i128::from(completion_tokens) * i128::from(pricing.output_micros_per_mtok);
    i64::try_from(total).unwrap_or(i64::MAX)
}

/// Refuses negative prices, naming the field (`pricing.output_micros_per_mtok`).
pub fn validate(pricing: &Pricing) -> Result<(), BillingError> {
    let prices = [
        (
            "pricing.input_micros_per_mtok",
            pricing.input_micros_per_mtok,
        ),
        (
            "pricing.cached_input_micros_per_mtok",
            pricing.cached_input_micros_per_mtok,
        ),
        (
            "pricing.output_micros_per_mtok",
            pricing.output_micros_per_mtok,
        ),
        (
            "pricing.cache_write_micros_per_mtok",
            pricing.cache_write_micros_per_mtok,
        ),
    ];
    for (param, price) in prices {
        if price < 0 {
            return Err(BillingError::invalid(
                param,
                format!("{param} must not be negative"),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use tollgate::money::format_picodollars;

    use super::*;

    #[test]
    fn cost_bills_cached_tokens_at_the_cache_hit_price() {
        // deepseek-v4-flash: 0.22 in, 0.005 cached, 0.44 out per 1M tokens.
        let pricing = Pricing {
            input_micros_per_mtok: 220_000,
            cached_input_micros_per_mtok: 5_000,
            output_micros_per_mtok: 440_000,
            cache_write_micros_per_mtok: 220_000,
        };
        let usage = Usage {
            prompt_tokens: 161,
            cached_prompt_tokens: 128,
            completion_tokens: 25,
            total_tokens: 186,
            ..Default::default()
        };
        // 33 * 220000 + 128 * 5000 + 25 * 440000 picodollars.
        assert_eq!(
            cost_picodollars(&usage, &pricing),
            7_260_000 + 640_000 + 11_000_000
        );
        assert_eq!(
            format_picodollars(cost_picodollars(&usage, &pricing)),
            "0.0000189"
        );
    }

    #[test]
    fn cost_bills_cache_writes_at_the_cache_write_price() {
        // Claude-style prices: 3 in, 0.3 cache read, 3.75 cache write, 15 out per 1M tokens.
        let pricing = Pricing {
            input_micros_per_mtok: 3_000_000,
            cached_input_micros_per_mtok: 300_000,
            output_micros_per_mtok: 15_000_000,
            cache_write_micros_per_mtok: 3_750_000,
        };
        // Anthropic: input 10 + cache_creation 1000 + cache_read 2000 = prompt 3010.
        let usage = Usage {
            prompt_tokens: 3010,
            cached_prompt_tokens: 2000,
            cache_write_tokens: 1000,
            completion_tokens: 7,
            total_tokens: 3017,
            ..Default::default()
        };
        assert_eq!(
            cost_picodollars(&usage, &pricing),
            10 * 3_000_000 + 2000 * 300_000 + 1000 * 3_750_000 + 7 * 15_000_000
        );
    }

    #[test]
    fn worst_case_takes_the_dearest_prompt_price_and_saturates() {
        let pricing = Pricing {
            input_micros_per_mtok: 220_000,
            cached_input_micros_per_mtok: 5_000,
            output_micros_per_mtok: 440_000,
            cache_write_micros_per_mtok: 275_000,
        };
        assert_eq!(
            worst_case_picodollars(1000, 1000, &pricing),
            1000 * 275_000 + 1000 * 440_000
        );
        assert_eq!(worst_case_picodollars(u64::MAX, 1, &pricing), i64::MAX);
    }

    #[test]
    fn negative_prices_are_refused_naming_the_field() {
        assert!(validate(&Pricing::default()).is_ok());
        let param = |pricing: Pricing| match validate(&pricing) {
            Err(BillingError::InvalidArgument { param, .. }) => param,
            other => panic!("{other:?}"),
        };
        assert_eq!(
            param(Pricing {
                output_micros_per_mtok: -1,
                ..Default::default()
            }),
            "pricing.output_micros_per_mtok"
        );
        assert_eq!(
            param(Pricing {
                cache_write_micros_per_mtok: -1,
                ..Default::default()
            }),
            "pricing.cache_write_micros_per_mtok"
        );
    }
}
