//! Reading the fields of a JSON body walked by hand (the Messages and Responses surfaces, whose
//! bodies are also forwarded or echoed as written): each wrong type is a 400 naming the field
//! and the JSON type it got. Each surface words a missing required field its own way.

use serde_json::{Map, Value};
use tollgate::{error::ApiError, openai::json_type};

/// A 400 naming `param`.
pub fn invalid(param: impl Into<String>, message: impl Into<String>) -> ApiError {
    ApiError::invalid_param(param, message)
}

/// A field of `object`; JSON `null` counts as absent.
pub fn field<'a>(object: &'a Map<String, Value>, name: &str) -> Option<&'a Value> {
    object.get(name).filter(|v| !v.is_null())
}

/// An optional string field.
pub fn string(
    object: &Map<String, Value>,
    name: &str,
    param: &str,
) -> Result<Option<String>, ApiError> {
    match field(object, name) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(other) => Err(invalid(
            param,
            format!("Input should be a valid string, got {}", json_type(other)),
        )),
    }
}

/// An optional number field (the field names itself).
pub fn number(object: &Map<String, Value>, name: &str) -> Result<Option<f64>, ApiError> {
    match field(object, name) {
        None => Ok(None),
        Some(v) => v.as_f64().map(Some).ok_or_else(|| {
            invalid(
                name,
                format!("Input should be a number, got {}", json_type(v)),
            )
        }),
    }
}

/// An optional non-negative integer field that fits in `u32`.
pub fn count(
    object: &Map<String, Value>,
    name: &str,
    param: &str,
) -> Result<Option<u32>, ApiError> {
    match field(object, name) {
        None => Ok(None),
        Some(v) => v
            .as_u64()
            .and_then(|n| u32::try_from(n).ok())
            .map(Some)
            .ok_or_else(|| invalid(param, "Input should be a non-negative integer")),
    }
}

/// `value` as an array.
pub fn array<'a>(value: &'a Value, param: &str) -> Result<&'a Vec<Value>, ApiError> {
    value.as_array().ok_or_else(|| {
        invalid(
            param,
            format!("Input should be a valid list, got {}", json_type(value)),
        )
    })
}

/// `value` as an object.
pub fn object<'a>(value: &'a Value, param: &str) -> Result<&'a Map<String, Value>, ApiError> {
    value.as_object().ok_or_else(|| {
        invalid(
            param,
            format!(
                "Input should be a valid dictionary, got {}",
                json_type(value)
            ),
        )
    })
}
