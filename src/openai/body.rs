//! Request bodies parsed straight into their types: one pass over the bytes (no intermediate
//! `serde_json::Value` tree), and failures as OpenAI's 400 whose `param` names the JSON path of
//! the field at fault (`messages[0].role`, `temperature`), or `body` when the body as a whole is
//! wrong. The REST facade parses every JSON body through here, so every route words a bad field
//! the same way.

use serde::de::DeserializeOwned;
use serde_json::{Value, error::Category};

use crate::error::ApiError;

/// Parses a JSON object body into `T`. Nothing may follow the object but whitespace.
pub fn from_slice<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    // Checked first: serde lets a struct be read from an array of its fields in order.
    if bytes
        .iter()
        .find(|b| !b.is_ascii_whitespace())
        .is_some_and(|b| *b != b'{')
    {
        return Err(not_an_object());
    }
    // A body that parses is read once, without tracking the path: the tracking wraps every
    // value's deserializer and was a third of a request's JSON parsing in the profile. Only a
    // body that fails is read again, with the path, for the error to name its field.
    if let Ok(parsed) = serde_json::from_slice(bytes) {
        return Ok(parsed);
    }
    let mut deserializer = serde_json::Deserializer::from_slice(bytes);
    let parsed = serde_path_to_error::deserialize(&mut deserializer).map_err(field_error)?;
    deserializer.end().map_err(|e| not_json(&e))?;
    Ok(parsed)
}

/// Parses a JSON object already held as a value into `T`, with the same errors as
/// [`from_slice`] (for JSON built in code).
pub fn from_value<T: DeserializeOwned>(value: Value) -> Result<T, ApiError> {
    if !value.is_object() {
        return Err(not_an_object());
    }
    serde_path_to_error::deserialize(value).map_err(field_error)
}

fn not_an_object() -> ApiError {
    ApiError::invalid_param("body", "the request body must be a JSON object")
}

fn not_json(e: &serde_json::Error) -> ApiError {
    ApiError::invalid_param(
        "body",
        format!("We could not parse the JSON body of your request: {e}"),
    )
}

/// Where the body stopped fitting `T`: the path serde was at (for a `missing field`, the
/// object that lacks it, so the field is added), or at the top level the field the message names.
fn field_error(e: serde_path_to_error::Error<serde_json::Error>) -> ApiError {
    let path = e.path().to_string();
    let inner = e.into_inner();
    if matches!(
        inner.classify(),
        Category::Syntax | Category::Eof | Category::Io
    ) {
        return not_json(&inner);
    }
    let message = without_position(&inner);
    if path == "." {
        let field = named_field(&message).unwrap_or("body").to_owned();
        return ApiError::invalid_param(field, message);
    }
    let field = match message.strip_prefix("missing field `") {
        Some(rest) => format!("{path}.{}", rest.split('`').next().unwrap_or_default()),
        None => path.clone(),
    };
    ApiError::invalid_param(field, format!("{path}: {message}"))
}

/// The message without serde_json's ` at line L column C`: the path says where, and a client
/// cannot map a column of the bytes it sent back to its own code.
fn without_position(e: &serde_json::Error) -> String {
    let message = e.to_string();
    let position = format!(" at line {} column {}", e.line(), e.column());
    match message.strip_suffix(&position) {
        Some(bare) if e.line() != 0 => bare.to_owned(),
        _ => message,
    }
}

/// `missing field `model`` → `model` (also `unknown field` and `duplicate field`).
fn named_field(message: &str) -> Option<&str> {
    ["missing field `", "unknown field `", "duplicate field `"]
        .iter()
        .find_map(|prefix| message.strip_prefix(prefix))
        .and_then(|rest| rest.split('`').next())
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;

    use super::*;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Body {
        name: String,
        #[serde(default)]
        limits: Vec<Limit>,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Limit {
        rpm: u32,
    }

    fn param(bytes: &str) -> (Option<String>, String) {
        let e = from_slice::<Body>(bytes.as_bytes()).unwrap_err();
        (e.param, e.message)
    }

    #[test]
    fn errors_name_the_field_without_a_byte_position() {
        let (p, m) = param(r#"{"name": "x", "limits": [{"rpm": "two"}]}"#);
        assert_eq!(p.as_deref(), Some("limits[0].rpm"));
        assert_eq!(
            m,
            r#"limits[0].rpm: invalid type: string "two", expected u32"#
        );
        let (p, m) = param(r#"{"name": "x", "limits": [{}]}"#);
        assert_eq!(p.as_deref(), Some("limits[0].rpm"));
        assert_eq!(m, "limits[0]: missing field `rpm`");
        let (p, m) = param(r#"{"limits": []}"#);
        assert_eq!(
            (p.as_deref(), m.as_str()),
            (Some("name"), "missing field `name`")
        );
        let (p, _) = param(r#"{"name": "x", "burst": 1}"#);
        assert_eq!(p.as_deref(), Some("burst"));
        let (p, _) = param(r#"{"name": "x", "name": "y"}"#);
        assert_eq!(p.as_deref(), Some("name"));
        let (p, _) = param(r#"{"name": "x", "limits": [{"rpm": 1, "burst": 2}]}"#);
        assert_eq!(p.as_deref(), Some("limits[0].burst"));
    }

    #[test]
    fn a_body_that_is_not_a_json_object_is_named_body() {
        for (bytes, message) in [
            ("[1]", "the request body must be a JSON object"),
            ("null", "the request body must be a JSON object"),
            (r#" "name""#, "the request body must be a JSON object"),
            (r#"{"name": "x""#, "We could not parse the JSON body"),
            (
                r#"{"name": "x"} trailing"#,
                "We could not parse the JSON body",
            ),
            ("", "We could not parse the JSON body"),
        ] {
            let (p, m) = param(bytes);
            assert_eq!(p.as_deref(), Some("body"), "{bytes}");
            assert!(m.starts_with(message), "{bytes}: {m}");
        }
    }

    #[test]
    fn values_and_bytes_fail_alike() {
        let body = serde_json::json!({"name": "x", "limits": [{"rpm": -1}]});
        let from_bytes = from_slice::<Body>(&serde_json::to_vec(&body).unwrap()).unwrap_err();
        assert_eq!(from_value::<Body>(body).unwrap_err(), from_bytes);
    }
}
