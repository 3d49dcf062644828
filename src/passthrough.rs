//! What a request may pass through to its upstream untouched: the top-level fields the contract
//! does not name (REST: the body's unknown fields, the typed request's `extra`; gRPC:
//! `ChatRequest.extra_json`). Two rules, checked for every caller before admission:
//!
//! - **A pass-through field never sets a field the contract names.** The gateway controls those
//!   (`stream` decides how the answer is read and settled, `n` and `max_tokens` what is reserved,
//!   `model` where the call goes): a pass-through field naming one, in either spelling an upstream
//!   accepts (`max_tokens` or `maxTokens`), is refused with a 400 naming it. The list is the
//!   fields of `tollgate.v1.ChatRequest`, read from the compiled descriptor, so a field added to
//!   the contract is protected without another list to keep.
//! - **A field that changes the price is refused unless the model allows it** ([`PRICED_FIELDS`],
//!   allowed per model by the catalogue's `passthrough_allow`): the gateway bills every call at
//!   the catalogue's prices, which these fields would silently change.
//!
//! Every other field passes through as before.

use std::{collections::BTreeSet, sync::LazyLock};

use prost::Message as _;
use serde_json::{Map, Value};

use crate::error::ApiError;

/// A pass-through field that changes what a call costs, and why.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PricedField {
    pub name: &'static str,
    pub why: &'static str,
}

/// The pass-through fields that change the price of a call, refused unless the model's
/// `passthrough_allow` names them. An allowed one is billed at the catalogue's prices all the same:
/// the operator who allows it accepts (or prices in) the difference.
pub const PRICED_FIELDS: &[PricedField] = &[
    PricedField {
        name: "service_tier",
        why: "OpenAI bills the priority tier above the list price (and flex below it)",
    },
    PricedField {
        name: "prediction",
        why: "OpenAI bills rejected prediction tokens as completion tokens, beyond max_tokens",
    },
    PricedField {
        name: "audio",
        why: "audio output is billed at audio token prices, not text prices",
    },
    PricedField {
        name: "modalities",
        why: "audio output is billed at audio token prices, not text prices",
    },
    PricedField {
        name: "web_search_options",
        why: "web search is billed per call on top of the tokens",
    },
    PricedField {
        name: "search_parameters",
        why: "xAI's live search is billed per source on top of the tokens",
    },
    PricedField {
        name: "enable_search",
        why: "Qwen's web search is billed per call on top of the tokens",
    },
    PricedField {
        name: "route",
        why: "an aggregator's fallback routing may serve the call from another model",
    },
    PricedField {
        name: "provider",
        why: "an aggregator's provider preferences choose among prices",
    },
    PricedField {
        name: "plugins",
        why: "aggregator plugins (web search, file parsing) are billed on top of the tokens",
    },
];

/// The REST body's `stream`: not a field of `ChatRequest` (it chooses `Chat` or `ChatStream`), but
/// the gateway's all the same.
const STREAM: &str = "stream";

/// The contract's own pass-through field, which names no upstream field.
const EXTRA_JSON: &str = "extra_json";

/// The fields the contract names, in snake_case: `tollgate.v1.ChatRequest`'s fields from the
/// compiled descriptor (but `extra_json`) and `stream`.
pub fn contract_fields() -> &'static BTreeSet<String> {
    static FIELDS: LazyLock<BTreeSet<String>> = LazyLock::new(|| {
        let mut fields: BTreeSet<String> =
            prost_types::FileDescriptorSet::decode(crate::FILE_DESCRIPTOR_SET)
                .map(|set| set.file)
                .unwrap_or_default()
                .into_iter()
                .filter(|file| file.package() == "tollgate.v1")
                .flat_map(|file| file.message_type)
                .filter(|message| message.name() == "ChatRequest")
                .flat_map(|message| message.field)
                .map(|field| field.name().to_owned())
                .filter(|name| name != EXTRA_JSON)
                .collect();
        fields.insert(STREAM.to_owned());
        fields
    });
    &FIELDS
}

/// A top-level field name in snake_case, the spelling the lists above use: `maxTokens` →
/// `max_tokens` (Gemini and many compatible servers accept either), `service_tier` unchanged.
fn snake_case(name: &str) -> String {
    let mut snake = String::with_capacity(name.len() + 4);
    let mut previous_lower = false;
    for c in name.chars() {
        if c.is_ascii_uppercase() && previous_lower {
            snake.push('_');
        }
        previous_lower = c.is_ascii_lowercase() || c.is_ascii_digit();
        snake.push(c.to_ascii_lowercase());
    }
    snake
}

/// The [`PricedField`] of this name, if it is one.
pub fn priced_field(name: &str) -> Option<&'static PricedField> {
    PRICED_FIELDS.iter().find(|f| f.name == name)
}

/// Refuses a pass-through field that names a field of the contract (400 naming it).
pub fn check_contract(extra: &Map<String, Value>) -> Result<(), ApiError> {
    match extra
        .keys()
        .find(|name| contract_fields().contains(&snake_case(name)))
    {
        Some(name) => Err(ApiError::invalid_param(
            name.clone(),
            format!(
                "{name} cannot be passed through: it names the field {}, which the gateway \
                 controls; set it as that field",
                snake_case(name)
            ),
        )),
        None => Ok(()),
    }
}

/// Refuses a price-changing pass-through field that `allowed` (the model's `passthrough_allow`)
/// does not name (400 naming it).
pub fn check_priced(
    extra: &Map<String, Value>,
    model: &str,
    allowed: &[String],
) -> Result<(), ApiError> {
    for name in extra.keys() {
        let snake = snake_case(name);
        let Some(field) = priced_field(&snake) else {
            continue;
        };
        if !allowed.contains(&snake) {
            return Err(ApiError::invalid_param(
                name.clone(),
                format!(
                    "{name} is not accepted for model {model}: it changes the price of the call \
                     ({}); the operator can allow it with passthrough_allow",
                    field.why
                ),
            ));
        }
    }
    Ok(())
}

/// `extra_json` as the object it must be (empty text: no fields).
pub fn parse_extra_json(extra_json: &str) -> Result<Map<String, Value>, ApiError> {
    if extra_json.trim().is_empty() {
        return Ok(Map::new());
    }
    match serde_json::from_str(extra_json) {
        Ok(Value::Object(fields)) => Ok(fields),
        Ok(_) => Err(ApiError::invalid_param(
            EXTRA_JSON,
            "extra_json must be a JSON object",
        )),
        Err(e) => Err(ApiError::invalid_param(
            EXTRA_JSON,
            format!("extra_json is not valid JSON: {e}"),
        )),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use serde_json::json;

    use super::*;

    fn fields(value: Value) -> Map<String, Value> {
        match value {
            Value::Object(map) => map,
            _ => unreachable!(),
        }
    }

    #[test]
    fn the_contract_fields_come_from_the_descriptor() {
        let fields = contract_fields();
        for name in [
            "model",
            "messages",
            "stream",
            "stream_options",
            "n",
            "max_tokens",
            "max_completion_tokens",
            "tools",
            "thinking",
            "reasoning_effort",
        ] {
            assert!(fields.contains(name), "{name} missing from {fields:?}");
        }
        assert!(!fields.contains("extra_json"));
        assert!(!fields.contains("logit_bias"));
    }

    /// Every field the REST request type names (serialised from a request that sets them all) is
    /// a contract field, so the descriptor-derived list covers the REST surface too.
    #[test]
    fn every_field_of_the_rest_request_is_a_contract_field() {
        let body = json!({
            "model": "m", "messages": [], "temperature": 1, "top_p": 1, "max_tokens": 1,
            "max_completion_tokens": 1, "n": 1, "stop": "x", "stream": true,
            "stream_options": {"include_usage": true},
            "tools": [{"type": "function", "function": {"name": "f"}}], "tool_choice": "auto",
            "parallel_tool_calls": true, "response_format": {"type": "text"}, "seed": 1,
            "user": "u", "presence_penalty": 0, "frequency_penalty": 0, "logprobs": true,
            "top_logprobs": 1, "reasoning_effort": "low", "thinking": {"type": "enabled"}
        });
        let request = crate::openai::ChatCompletionRequest::from_json(body.clone()).unwrap();
        assert!(request.extra.is_empty(), "{:?}", request.extra);
        for name in fields(body).keys() {
            assert!(contract_fields().contains(name), "{name}");
        }
    }

    #[test]
    fn contract_fields_are_refused_in_either_spelling() {
        for name in [
            "stream",
            "n",
            "model",
            "maxTokens",
            "stream_options",
            "streamOptions",
        ] {
            let e = check_contract(&fields(json!({ name: 1 }))).unwrap_err();
            assert_eq!(e.param.as_deref(), Some(name));
        }
        check_contract(&fields(
            json!({"logit_bias": {}, "metadata": {}, "store": true}),
        ))
        .unwrap();
    }

    #[test]
    fn priced_fields_need_the_models_permission() {
        let extra = fields(json!({"service_tier": "priority", "metadata": {}}));
        let e = check_priced(&extra, "gpt", &[]).unwrap_err();
        assert_eq!(e.param.as_deref(), Some("service_tier"));
        assert!(e.message.contains("passthrough_allow"), "{}", e.message);
        check_priced(&extra, "gpt", &["service_tier".to_owned()]).unwrap();
        let e = check_priced(&fields(json!({"webSearchOptions": {}})), "gpt", &[]).unwrap_err();
        assert_eq!(e.param.as_deref(), Some("webSearchOptions"));
    }

    #[test]
    fn extra_json_must_be_an_object() {
        assert!(parse_extra_json("").unwrap().is_empty());
        assert_eq!(
            parse_extra_json("[1]").unwrap_err().param.as_deref(),
            Some("extra_json")
        );
        assert_eq!(
            parse_extra_json("{").unwrap_err().param.as_deref(),
            Some("extra_json")
        );
    }
}
