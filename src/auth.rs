//! How an API key travels: `authorization: Bearer sk-...`, the same header over REST and gRPC
//! metadata, so the facade forwards it untouched.

use tonic::metadata::{MetadataMap, MetadataValue};

use crate::error::{ApiError, ErrorKind};

/// The metadata (and HTTP header) name that carries the API key.
pub const AUTHORIZATION: &str = "authorization";

/// The bearer token of an `authorization` value, if it has the `Bearer ` scheme.
pub fn bearer_token(value: &str) -> Option<&str> {
    let (scheme, token) = value.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// The refusal of a gRPC call that needs an API key and carries none (or not as `Bearer`).
pub fn missing_api_key() -> ApiError {
    missing_key("Missing API key: send Authorization: Bearer sk-...")
}

/// The same refusal over HTTP, where Anthropic's `x-api-key` header is accepted too (so
/// Anthropic's SDKs and Claude Code work unchanged).
pub fn missing_api_key_http() -> ApiError {
    missing_key("Missing API key: send Authorization: Bearer sk-... (or x-api-key: sk-...)")
}

fn missing_key(message: &str) -> ApiError {
    ApiError::new(ErrorKind::Authentication, message).with_code("missing_api_key")
}

/// The API key in a request's metadata, if any.
pub fn api_key(metadata: &MetadataMap) -> Option<&str> {
    metadata
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(bearer_token)
}

/// Puts `authorization: Bearer <key>` into outgoing metadata. Returns false when the key holds
/// characters that cannot travel in a header (such a key cannot be valid anyway).
pub fn set_api_key(metadata: &mut MetadataMap, key: &str) -> bool {
    match MetadataValue::try_from(format!("Bearer {key}")) {
        Ok(v) => {
            metadata.insert(AUTHORIZATION, v);
            true
        }
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_bearer_tokens() {
        assert_eq!(bearer_token("Bearer sk-abc"), Some("sk-abc"));
        assert_eq!(bearer_token("bearer  sk-abc "), Some("sk-abc"));
        assert_eq!(bearer_token("Basic sk-abc"), None);
        assert_eq!(bearer_token("Bearer "), None);
        assert_eq!(bearer_token("sk-abc"), None);
    }

    #[test]
    fn metadata_round_trip() {
        let mut md = MetadataMap::new();
        assert!(set_api_key(&mut md, "sk-1"));
        assert_eq!(api_key(&md), Some("sk-1"));
        assert!(!set_api_key(&mut md, "bad\nkey"));
    }
}
