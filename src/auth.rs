//! How an API key travels: `authorization: Bearer sk-...`, the same header over REST and gRPC
//! metadata, so the facade forwards it untouched.

use std::{any::Any, sync::Arc};

use tonic::metadata::{MetadataMap, MetadataValue};

use crate::error::{ApiError, ErrorKind};

/// The metadata (and HTTP header) name that carries the API key.
pub const AUTHORIZATION: &str = "authorization";

/// A key the service that checks keys already found valid for this request, carried to the
/// request's next call in the same process as a tonic extension (the REST facade's key check,
/// then Inference, then Admit), so the key is looked up once per request. Extensions never
/// travel over the network, so a caller cannot present one; over the network the next call
/// looks the key up again. Opaque: only the service that made it reads it, and it decides
/// whether it still holds (the key unchanged since, the same secret).
#[derive(Clone)]
pub struct AuthenticatedKey(pub Arc<dyn Any + Send + Sync>);

impl std::fmt::Debug for AuthenticatedKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AuthenticatedKey(<redacted>)")
    }
}

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
