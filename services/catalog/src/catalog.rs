//! The validated catalogue: every id (model or alias) maps to one entry that already knows its
//! upstream route and prices, so resolving a request is one map lookup.

use std::collections::HashMap;

use tollgate::{
    passthrough,
    v1::{Deployment, Model, Pricing, ResolvedModel, RoutingStrategy, ThinkingSupport},
};

use crate::config::{AliasConfig, DeploymentConfig, ModelConfig, StrategyConfig, ThinkingConfig};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CatalogError {
    #[error("{field}: id {id:?} is used twice (model and alias ids share one namespace)")]
    DuplicateId { field: String, id: String },
    #[error("{field}: must not be empty")]
    Empty { field: String },
    #[error("{field}: provider {provider:?} is not configured in [[providers]]")]
    UnknownProvider { field: String, provider: String },
    #[error("{field}: target {target:?} is not a configured model (aliases point at models)")]
    UnknownTarget { field: String, target: String },
    #[error("{field}: alias forces thinking {wanted}, but model {target:?} has thinking = {has:?}")]
    ThinkingUnsupported {
        field: String,
        target: String,
        wanted: bool,
        has: ThinkingConfig,
    },
    #[error("{field}: must be at least 1")]
    Zero { field: String },
    #[error("{field}: give either `provider` or `deployments`, not both and not neither")]
    ProviderOrDeployments { field: String },
    #[error("{field}: deployment name {name:?} is used twice in this model")]
    DuplicateDeployment { field: String, name: String },
    #[error("{field}: {id:?} is not a configured model or alias (or is the model itself)")]
    UnknownFallback { field: String, id: String },
    #[error("{field}: {id:?} has a context_length of {has}, not larger than this model's {needs}")]
    SmallerContext {
        field: String,
        id: String,
        has: u64,
        needs: u64,
    },
    #[error(
        "{field}: {name:?} is not a price-changing pass-through field; passthrough_allow takes {known}"
    )]
    NotPriced {
        field: String,
        name: String,
        known: String,
    },
}

/// All models and aliases, by id, in configuration order.
#[derive(Debug, Clone, Default)]
pub struct Catalog {
    ids: Vec<String>,
    models: HashMap<String, Model>,
    routes: HashMap<String, ResolvedModel>,
}

fn thinking_support(t: ThinkingConfig) -> ThinkingSupport {
    match t {
        ThinkingConfig::None => ThinkingSupport::None,
        ThinkingConfig::Optional => ThinkingSupport::Optional,
        ThinkingConfig::Always => ThinkingSupport::Always,
    }
}

/// The deployments of a model: the single-provider form as one deployment named after its
/// provider, or the listed ones, each checked (known provider, weight at least 1, unique name)
/// and priced (each unset price is the model's).
fn deployments(
    m: &ModelConfig,
    pricing: &Pricing,
    providers: &[&str],
    field: &dyn Fn(&str) -> String,
) -> Result<Vec<Deployment>, CatalogError> {
    let upstream_model = m.upstream_model.clone().unwrap_or_else(|| m.id.clone());
    let listed: Vec<(String, DeploymentConfig)> = match (&m.provider, m.deployments.as_slice()) {
        (Some(provider), []) => vec![(
            field("provider"),
            DeploymentConfig {
                name: None,
                provider: provider.clone(),
                upstream_model: None,
                weight: 1,
                input_price: None,
                cached_input_price: None,
                output_price: None,
                cache_write_price: None,
            },
        )],
        (None, listed) if !listed.is_empty() => listed
            .iter()
            .enumerate()
            .map(|(j, d)| (field(&format!("deployments[{j}]")), d.clone()))
            .collect(),
        _ => {
            return Err(CatalogError::ProviderOrDeployments {
                field: field("provider"),
            });
        }
    };
    let mut out: Vec<Deployment> = Vec::with_capacity(listed.len());
    for (at, d) in listed {
        let sub = |name: &str| {
            if m.provider.is_some() {
                at.clone()
            } else {
                format!("{at}.{name}")
            }
        };
        if !providers.contains(&d.provider.as_str()) {
            return Err(CatalogError::UnknownProvider {
                field: sub("provider"),
                provider: d.provider.clone(),
            });
        }
        if d.weight == 0 {
            return Err(CatalogError::Zero {
                field: sub("weight"),
            });
        }
        let name = d.name.clone().unwrap_or_else(|| d.provider.clone());
        if name.trim().is_empty() {
            return Err(CatalogError::Empty { field: sub("name") });
        }
        if out.iter().any(|o| o.name == name) {
            return Err(CatalogError::DuplicateDeployment {
                field: sub("name"),
                name,
            });
        }
        let price = |own: Option<crate::Price>, model: i64| own.map_or(model, |p| p.0);
        out.push(Deployment {
            name,
            provider: d.provider.clone(),
            upstream_model: d
                .upstream_model
                .clone()
                .unwrap_or_else(|| upstream_model.clone()),
            weight: d.weight,
            pricing: Some(Pricing {
                input_micros_per_mtok: price(d.input_price, pricing.input_micros_per_mtok),
                cached_input_micros_per_mtok: price(
                    d.cached_input_price,
                    pricing.cached_input_micros_per_mtok,
                ),
                output_micros_per_mtok: price(d.output_price, pricing.output_micros_per_mtok),
                cache_write_micros_per_mtok: price(
                    d.cache_write_price,
                    pricing.cache_write_micros_per_mtok,
                ),
            }),
        });
    }
    Ok(out)
}

impl Catalog {
    /// Validates the configuration: unique non-empty ids, known providers, aliases that point at
    /// models and only force thinking where the model allows it, non-zero limits.
    pub fn new(
        models: &[ModelConfig],
        aliases: &[AliasConfig],
        providers: &[&str],
    ) -> Result<Self, CatalogError> {
        let mut catalog = Self::default();
        for (i, m) in models.iter().enumerate() {
            let field = |name: &str| format!("models[{i}].{name}");
            if m.id.trim().is_empty() {
                return Err(CatalogError::Empty { field: field("id") });
            }
            for (name, value) in [
                ("context_length", m.context_length),
                ("max_output_tokens", m.max_output_tokens),
                ("image_tokens_max", m.image_tokens_max),
            ] {
                if value == 0 {
                    return Err(CatalogError::Zero { field: field(name) });
                }
            }
            if let Some(name) = m
                .passthrough_allow
                .iter()
                .find(|name| passthrough::priced_field(name).is_none())
            {
                return Err(CatalogError::NotPriced {
                    field: field("passthrough_allow"),
                    name: name.clone(),
                    known: passthrough::PRICED_FIELDS
                        .iter()
                        .map(|f| f.name)
                        .collect::<Vec<_>>()
                        .join(", "),
                });
            }
            let pricing = Pricing {
                input_micros_per_mtok: m.input_price.0,
                cached_input_micros_per_mtok: m.cached_input_price.unwrap_or(m.input_price).0,
                output_micros_per_mtok: m.output_price.0,
                cache_write_micros_per_mtok: m.cache_write_price.unwrap_or(m.input_price).0,
            };
            let deployments = deployments(m, &pricing, providers, &field)?;
            let Some(first) = deployments.first().cloned() else {
                return Err(CatalogError::ProviderOrDeployments { field: field("id") });
            };
            let thinking = thinking_support(m.thinking);
            let model = Model {
                id: m.id.clone(),
                created: m.created,
                owned_by: m.owned_by.clone().unwrap_or_else(|| first.provider.clone()),
                pricing: Some(pricing),
                context_length: m.context_length,
                max_output_tokens: m.max_output_tokens,
                thinking: thinking.into(),
                alias_of: None,
                alias_thinking: None,
                vision: m.vision,
            };
            let route = ResolvedModel {
                requested_id: m.id.clone(),
                model_id: m.id.clone(),
                provider: first.provider,
                upstream_model: first.upstream_model,
                pricing: first.pricing,
                context_length: m.context_length,
                max_output_tokens: m.max_output_tokens,
                thinking: thinking.into(),
                thinking_override: None,
                vision: m.vision,
                passthrough_allow: m.passthrough_allow.clone(),
                image_tokens_max: m.image_tokens_max,
                deployments,
                fallbacks: m.fallbacks.clone(),
                context_window_fallback: m.context_window_fallback.clone(),
                strategy: match m.strategy {
                    StrategyConfig::Weighted => RoutingStrategy::Weighted,
                    StrategyConfig::LeastBusy => RoutingStrategy::LeastBusy,
                }
                .into(),
            };
            catalog.insert(field("id"), model, route)?;
        }
        for (i, a) in aliases.iter().enumerate() {
            let field = |name: &str| format!("aliases[{i}].{name}");
            if a.id.trim().is_empty() {
                return Err(CatalogError::Empty { field: field("id") });
            }
            let target = models.iter().find(|m| m.id == a.target).ok_or_else(|| {
                CatalogError::UnknownTarget {
                    field: field("target"),
                    target: a.target.clone(),
                }
            })?;
            let allowed = !matches!(
                (a.thinking, target.thinking),
                (Some(true), ThinkingConfig::None) | (Some(false), ThinkingConfig::Always)
            );
            if let (false, Some(wanted)) = (allowed, a.thinking) {
                return Err(CatalogError::ThinkingUnsupported {
                    field: field("thinking"),
                    target: a.target.clone(),
                    wanted,
                    has: target.thinking,
                });
            }
            let (Some(target_model), Some(target_route)) = (
                catalog.models.get(&a.target).cloned(),
                catalog.routes.get(&a.target).cloned(),
            ) else {
                return Err(CatalogError::UnknownTarget {
                    field: field("target"),
                    target: a.target.clone(),
                });
            };
            let model = Model {
                id: a.id.clone(),
                owned_by: a.owned_by.clone().unwrap_or(target_model.owned_by.clone()),
                alias_of: Some(a.target.clone()),
                alias_thinking: a.thinking,
                ..target_model
            };
            let route = ResolvedModel {
                requested_id: a.id.clone(),
                thinking_override: a.thinking,
                ..target_route
            };
            catalog.insert(field("id"), model, route)?;
        }
        catalog.check_fallbacks(models)?;
        Ok(catalog)
    }

    /// Every fallback names another configured model or alias; a context-window fallback has a
    /// larger context.
    fn check_fallbacks(&self, models: &[ModelConfig]) -> Result<(), CatalogError> {
        for (i, m) in models.iter().enumerate() {
            let known = |field: String, id: &str| match self.routes.get(id) {
                Some(route) if route.model_id != m.id => Ok(route),
                _ => Err(CatalogError::UnknownFallback {
                    field,
                    id: id.to_owned(),
                }),
            };
            for (j, id) in m.fallbacks.iter().enumerate() {
                known(format!("models[{i}].fallbacks[{j}]"), id)?;
            }
            if let Some(id) = &m.context_window_fallback {
                let field = format!("models[{i}].context_window_fallback");
                let route = known(field.clone(), id)?;
                if route.context_length <= m.context_length {
                    return Err(CatalogError::SmallerContext {
                        field,
                        id: id.clone(),
                        has: route.context_length,
                        needs: m.context_length,
                    });
                }
            }
        }
        Ok(())
    }

    fn insert(
        &mut self,
        field: String,
        model: Model,
        route: ResolvedModel,
    ) -> Result<(), CatalogError> {
        if self.models.contains_key(&model.id) {
            return Err(CatalogError::DuplicateId {
                field,
                id: model.id,
            });
        }
        self.ids.push(model.id.clone());
        self.routes.insert(model.id.clone(), route);
        self.models.insert(model.id.clone(), model);
        Ok(())
    }

    /// Every model and alias, in configuration order (models first).
    pub fn models(&self) -> impl Iterator<Item = &Model> {
        self.ids.iter().filter_map(|id| self.models.get(id))
    }

    pub fn model(&self, id: &str) -> Option<&Model> {
        self.models.get(id)
    }

    pub fn resolve(&self, id: &str) -> Option<&ResolvedModel> {
        self.routes.get(id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Price;

    fn flash() -> ModelConfig {
        ModelConfig {
            id: "deepseek-v4-flash".into(),
            provider: Some("deepseek".into()),
            upstream_model: None,
            owned_by: None,
            created: 1,
            context_length: 1_000_000,
            max_output_tokens: 384_000,
            input_price: Price(220_000),
            cached_input_price: Some(Price(5_000)),
            output_price: Price(440_000),
            cache_write_price: None,
            vision: true,
            thinking: ThinkingConfig::Optional,
            image_tokens_max: 4_096,
            passthrough_allow: vec![],
            deployments: vec![],
            strategy: StrategyConfig::default(),
            fallbacks: vec![],
            context_window_fallback: None,
        }
    }

    fn alias(id: &str, thinking: Option<bool>) -> AliasConfig {
        AliasConfig {
            id: id.into(),
            target: "deepseek-v4-flash".into(),
            thinking,
            owned_by: None,
        }
    }

    #[test]
    fn aliases_resolve_to_their_target_with_the_thinking_override() {
        let c = Catalog::new(
            &[flash()],
            &[
                alias("deepseek-reasoner", Some(true)),
                alias("gpt-4o", None),
            ],
            &["deepseek"],
        )
        .unwrap();
        let r = c.resolve("deepseek-reasoner").unwrap();
        assert_eq!(r.model_id, "deepseek-v4-flash");
        assert_eq!(r.upstream_model, "deepseek-v4-flash");
        assert_eq!(r.thinking_override, Some(true));
        assert_eq!(r.pricing.unwrap().cached_input_micros_per_mtok, 5_000);
        assert_eq!(c.resolve("gpt-4o").unwrap().thinking_override, None);
        let m = c.model("gpt-4o").unwrap();
        assert_eq!(m.alias_of.as_deref(), Some("deepseek-v4-flash"));
        assert_eq!(m.owned_by, "deepseek");
        let ids: Vec<_> = c.models().map(|m| m.id.as_str()).collect();
        assert_eq!(ids, ["deepseek-v4-flash", "deepseek-reasoner", "gpt-4o"]);
        assert!(c.resolve("nope").is_none());
    }

    #[test]
    fn rejects_inconsistent_catalogues_naming_the_field() {
        let e = Catalog::new(&[flash(), flash()], &[], &["deepseek"]).unwrap_err();
        assert_eq!(e.to_string().split(':').next(), Some("models[1].id"));
        let e = Catalog::new(&[flash()], &[], &["openai"]).unwrap_err();
        assert!(matches!(e, CatalogError::UnknownProvider { .. }));
        let mut bad = alias("x", None);
        bad.target = "gpt-4o".into();
        let e = Catalog::new(&[flash()], &[alias("gpt-4o", None), bad], &["deepseek"]).unwrap_err();
        assert!(e.to_string().starts_with("aliases[1].target"), "{e}");
        let mut none = flash();
        none.thinking = ThinkingConfig::None;
        let e = Catalog::new(&[none], &[alias("r", Some(true))], &["deepseek"]).unwrap_err();
        assert!(matches!(e, CatalogError::ThinkingUnsupported { .. }));
        let e = Catalog::new(
            &[flash()],
            &[alias("deepseek-v4-flash", None)],
            &["deepseek"],
        )
        .unwrap_err();
        assert!(matches!(e, CatalogError::DuplicateId { .. }));
        let mut allows = flash();
        allows.passthrough_allow = vec!["service_tier".into(), "stream".into()];
        let e = Catalog::new(&[allows], &[], &["deepseek"]).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("models[0].passthrough_allow: \"stream\""),
            "{e}"
        );
    }

    #[test]
    fn routes_carry_the_pass_through_allowance_and_the_image_bound() {
        let mut model = flash();
        model.passthrough_allow = vec!["service_tier".into()];
        model.image_tokens_max = 48_169;
        let c = Catalog::new(&[model], &[alias("a", None)], &["deepseek"]).unwrap();
        for id in ["deepseek-v4-flash", "a"] {
            let r = c.resolve(id).unwrap();
            assert_eq!(r.passthrough_allow, ["service_tier"]);
            assert_eq!(r.image_tokens_max, 48_169);
        }
    }

    fn deployment(name: Option<&str>, provider: &str, weight: u32) -> DeploymentConfig {
        DeploymentConfig {
            name: name.map(str::to_owned),
            provider: provider.into(),
            upstream_model: None,
            weight,
            input_price: None,
            cached_input_price: None,
            output_price: None,
            cache_write_price: None,
        }
    }

    #[test]
    fn deployments_carry_their_weights_names_and_own_prices() {
        let mut model = flash();
        model.provider = None;
        let mut dear = deployment(Some("dear"), "openai", 3);
        dear.output_price = Some(Price(900_000));
        dear.upstream_model = Some("flash-eu".into());
        model.deployments = vec![deployment(None, "deepseek", 1), dear];
        model.strategy = StrategyConfig::LeastBusy;
        let c = Catalog::new(&[model], &[alias("a", None)], &["deepseek", "openai"]).unwrap();
        let r = c.resolve("a").unwrap();
        let names: Vec<_> = r.deployments.iter().map(|d| d.name.as_str()).collect();
        assert_eq!(names, ["deepseek", "dear"]);
        assert_eq!(r.provider, "deepseek");
        assert_eq!(r.deployments[0].upstream_model, "deepseek-v4-flash");
        assert_eq!(r.deployments[1].upstream_model, "flash-eu");
        assert_eq!(r.deployments[1].weight, 3);
        let dear = r.deployments[1].pricing.unwrap();
        assert_eq!(dear.output_micros_per_mtok, 900_000);
        assert_eq!(dear.cached_input_micros_per_mtok, 5_000);
        assert_eq!(r.strategy(), RoutingStrategy::LeastBusy);
        // The single-provider form is one deployment named after its provider.
        let c = Catalog::new(&[flash()], &[], &["deepseek"]).unwrap();
        let r = c.resolve("deepseek-v4-flash").unwrap();
        assert_eq!(r.deployments.len(), 1);
        assert_eq!(r.deployments[0].name, "deepseek");
        assert_eq!(r.deployments[0].weight, 1);
    }

    #[test]
    fn rejects_bad_deployments_and_fallbacks_naming_the_field() {
        let providers = ["deepseek", "openai"];
        let with = |deployments: Vec<DeploymentConfig>| {
            let mut model = flash();
            model.provider = None;
            model.deployments = deployments;
            Catalog::new(&[model], &[], &providers)
                .unwrap_err()
                .to_string()
        };
        let e = with(vec![deployment(None, "nope", 1)]);
        assert!(
            e.starts_with("models[0].deployments[0].provider: provider \"nope\""),
            "{e}"
        );
        let e = with(vec![deployment(None, "deepseek", 0)]);
        assert!(e.starts_with("models[0].deployments[0].weight"), "{e}");
        let e = with(vec![
            deployment(None, "deepseek", 1),
            deployment(Some("deepseek"), "openai", 1),
        ]);
        assert!(e.starts_with("models[0].deployments[1].name"), "{e}");
        let e = with(vec![]);
        assert!(e.starts_with("models[0].provider: give either"), "{e}");
        let mut both = flash();
        both.deployments = vec![deployment(None, "openai", 1)];
        let e = Catalog::new(&[both], &[], &providers).unwrap_err();
        assert!(matches!(e, CatalogError::ProviderOrDeployments { .. }));

        let mut small = flash();
        small.id = "small".into();
        small.context_length = 1_000;
        small.fallbacks = vec!["deepseek-v4-flash".into(), "nope".into()];
        let e = Catalog::new(&[small.clone(), flash()], &[], &providers).unwrap_err();
        assert!(e.to_string().starts_with("models[0].fallbacks[1]"), "{e}");
        small.fallbacks = vec!["small".into()];
        let e = Catalog::new(&[small.clone(), flash()], &[], &providers).unwrap_err();
        assert!(matches!(e, CatalogError::UnknownFallback { .. }));
        small.fallbacks = vec![];
        small.context_window_fallback = Some("deepseek-v4-flash".into());
        let c = Catalog::new(&[small.clone(), flash()], &[], &providers).unwrap();
        assert_eq!(
            c.resolve("small")
                .unwrap()
                .context_window_fallback
                .as_deref(),
            Some("deepseek-v4-flash")
        );
        let mut big = flash();
        big.context_window_fallback = Some("small".into());
        let e = Catalog::new(&[small, big], &[], &providers).unwrap_err();
        assert!(matches!(e, CatalogError::SmallerContext { .. }), "{e}");
    }
}
