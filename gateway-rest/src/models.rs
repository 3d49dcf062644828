//! `GET /v1/models` and `GET /v1/models/{id}`: OpenAI's model objects plus each model's prices
//! (USD per 1M tokens), context length and output limit; aliases say what they map to.

use axum::{
    Json,
    extract::{Path, State, rejection::PathRejection},
};
use serde_json::{Value, json};
use tollgate::{
    money::{format_micros, json_number},
    v1::{GetModelRequest, ListModelsRequest, Model, ThinkingSupport},
};

use crate::{app::AppState, error::RestError};
use tollgate::error::ApiError;

fn model_json(m: &Model) -> Value {
    let pricing = m.pricing.unwrap_or_default();
    let thinking = match ThinkingSupport::try_from(m.thinking).unwrap_or_default() {
        ThinkingSupport::Optional => "optional",
        ThinkingSupport::Always => "always",
        ThinkingSupport::None | ThinkingSupport::Unspecified => "none",
    };
    let mut value = json!({
        "id": m.id,
        "object": "model",
        "created": m.created,
        "owned_by": m.owned_by,
        "pricing": {
            "input": json_number(&format_micros(pricing.input_micros_per_mtok)),
            "cached_input": json_number(&format_micros(pricing.cached_input_micros_per_mtok)),
            "output": json_number(&format_micros(pricing.output_micros_per_mtok)),
            "cache_write": json_number(&format_micros(pricing.cache_write_micros_per_mtok)),
            "unit": "USD per 1M tokens",
        },
        "context_length": m.context_length,
        "max_output_tokens": m.max_output_tokens,
        "thinking": thinking,
        "vision": m.vision,
    });
    if let Some(target) = &m.alias_of {
        value["alias_of"] = json!(target);
        if let Some(forced) = m.alias_thinking {
            value["alias_thinking"] = json!(forced);
        }
    }
    value
}

pub(crate) async fn list(State(state): State<AppState>) -> Result<Json<Value>, RestError> {
    let models = state
        .catalog
        .clone()
        .list_models(ListModelsRequest {})
        .await?
        .into_inner()
        .models;
    Ok(Json(json!({
        "object": "list",
        "data": models.iter().map(model_json).collect::<Vec<_>>(),
    })))
}

pub(crate) async fn retrieve(
    State(state): State<AppState>,
    id: Result<Path<String>, PathRejection>,
) -> Result<Json<Value>, RestError> {
    // A path that is not UTF-8 (`%ff`) is a 400 in the product's error shape, not axum's text.
    let Path(id) = id.map_err(|e| ApiError::invalid_param("model", e.body_text()))?;
    let model = state
        .catalog
        .clone()
        .get_model(GetModelRequest { id })
        .await?
        .into_inner();
    Ok(Json(model_json(&model)))
}
