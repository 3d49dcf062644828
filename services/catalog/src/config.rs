//! The `[[models]]` (with their `[[models.deployments]]` and routing keys) and `[[aliases]]`
//! sections of the configuration file.

use serde::{Deserialize, Deserializer};
use tollgate::money;

/// A USD price per one million tokens, held as integer micro-USD. Accepts a TOML number
/// (`0.22`) or a decimal string (`"0.22"`); at most 6 decimal places.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Price(pub i64);

impl<'de> Deserialize<'de> for Price {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Int(u64),
            Float(f64),
            Text(String),
        }
        // A float's shortest round-trip form is the decimal the user wrote (0.22 -> "0.22"), so
        // it is parsed as that decimal, never used as a float.
        let text = match Raw::deserialize(d)? {
            Raw::Int(i) => i.to_string(),
            Raw::Float(f) if f.is_finite() => format!("{f}"),
            Raw::Float(f) => return Err(serde::de::Error::custom(format!("invalid price {f}"))),
            Raw::Text(t) => t,
        };
        money::parse_usd_micros(&text)
            .map(Price)
            .map_err(serde::de::Error::custom)
    }
}

/// Whether a model can think (emit `reasoning_content`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ThinkingConfig {
    #[default]
    None,
    Optional,
    Always,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    pub id: String,
    /// The single-provider form: the one provider that serves the model. Exactly one of
    /// `provider` and `deployments` is given.
    #[serde(default)]
    pub provider: Option<String>,
    /// The model name sent upstream; defaults to `id`.
    #[serde(default)]
    pub upstream_model: Option<String>,
    /// Shown as `owned_by`; defaults to the provider name.
    #[serde(default)]
    pub owned_by: Option<String>,
    /// Shown as `created` (unix seconds).
    #[serde(default)]
    pub created: i64,
    pub context_length: u64,
    pub max_output_tokens: u64,
    pub input_price: Price,
    /// Defaults to `input_price` (no cache discount).
    #[serde(default)]
    pub cached_input_price: Option<Price>,
    pub output_price: Price,
    /// Price of prompt tokens written to the provider's cache (Anthropic); defaults to
    /// `input_price`.
    #[serde(default)]
    pub cache_write_price: Option<Price>,
    #[serde(default)]
    pub thinking: ThinkingConfig,
    /// Whether the model accepts image inputs (default true). Image parts sent to a model
    /// without vision are refused with a 400 before anything is sent upstream.
    #[serde(default = "vision_default")]
    pub vision: bool,
    /// The most prompt tokens one image can cost on this model, reserved per image part (default
    /// 4,096). Tile-priced models cost far more: gpt-4o-mini bills up to 48,169 per image.
    #[serde(default = "image_tokens_max_default")]
    pub image_tokens_max: u64,
    /// Price-changing pass-through fields callers may send to this model (`["service_tier"]`);
    /// each must be one of `tollgate::passthrough::PRICED_FIELDS`. The call is billed at this
    /// model's prices all the same.
    #[serde(default)]
    pub passthrough_allow: Vec<String>,
    /// Several deployments serving the model (providers, accounts, regions), instead of
    /// `provider`.
    #[serde(default)]
    pub deployments: Vec<DeploymentConfig>,
    /// How a deployment is chosen among the healthy ones.
    #[serde(default)]
    pub strategy: StrategyConfig,
    /// Models or aliases tried in order when this model's deployments are exhausted or cooling
    /// down.
    #[serde(default)]
    pub fallbacks: Vec<String>,
    /// The model (or alias) a request goes to when its prompt is too long for this one; it must
    /// have a larger `context_length`.
    #[serde(default)]
    pub context_window_fallback: Option<String>,
}

/// One deployment of a model: `[[models.deployments]]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeploymentConfig {
    /// Unique within the model; defaults to the provider's name.
    #[serde(default)]
    pub name: Option<String>,
    pub provider: String,
    /// The model name sent upstream; defaults to the model's `upstream_model` (or its id).
    #[serde(default)]
    pub upstream_model: Option<String>,
    /// Its share of the traffic (default 1; 0 is refused: leave a deployment out to disable it).
    #[serde(default = "weight_default")]
    pub weight: u32,
    /// Its own prices; each unset one is the model's.
    #[serde(default)]
    pub input_price: Option<Price>,
    #[serde(default)]
    pub cached_input_price: Option<Price>,
    #[serde(default)]
    pub output_price: Option<Price>,
    #[serde(default)]
    pub cache_write_price: Option<Price>,
}

fn weight_default() -> u32 {
    1
}

/// `strategy` of a model: how its deployments share the traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StrategyConfig {
    /// Weighted random choice.
    #[default]
    Weighted,
    /// Power of two choices over requests in flight (weighted draws, the less busy one wins).
    LeastBusy,
}

fn vision_default() -> bool {
    true
}

/// The per-image reservation of a model that does not set its own: above the largest per-image
/// charge of the patch-priced models (OpenAI's near 2,500, Anthropic near 1,600, Gemini 258).
const IMAGE_TOKENS_MAX_DEFAULT: u64 = 4_096;

fn image_tokens_max_default() -> u64 {
    IMAGE_TOKENS_MAX_DEFAULT
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AliasConfig {
    pub id: String,
    pub target: String,
    /// Forces thinking on (`true`) or off (`false`) for requests through this alias.
    #[serde(default)]
    pub thinking: Option<bool>,
    /// Shown as `owned_by`; defaults to the target's.
    #[serde(default)]
    pub owned_by: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Deserialize)]
    struct Prices {
        a: Price,
        b: Price,
        c: Price,
        d: Price,
    }

    #[test]
    fn prices_parse_exactly_from_numbers_and_strings() {
        let p: Prices = toml::from_str("a = 0.22\nb = \"0.005\"\nc = 15\nd = 2.80").unwrap();
        assert_eq!(
            (p.a, p.b, p.c, p.d),
            (
                Price(220_000),
                Price(5_000),
                Price(15_000_000),
                Price(2_800_000)
            )
        );
        let refused = |text: &str| toml::from_str::<Prices>(text).unwrap_err().to_string();
        let negative = money::PriceError::NotADecimal("-1".to_owned()).to_string();
        assert!(refused("a = -1\nb = 0\nc = 0\nd = 0").contains(&negative));
        let precise = money::PriceError::TooPrecise("0.0000001".to_owned()).to_string();
        assert!(refused("a = 0.0000001\nb = 0\nc = 0\nd = 0").contains(&precise));
    }
}
