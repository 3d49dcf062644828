//! The admin token: the operator's credential for the Admin API (`tollgate.v1.Admin`, REST
//! `/admin/...`) and for the admin calls of other services (`Inference.ListDeploymentHealth`).
//! It comes from the process environment (`[admin] token_env`), travels as `authorization:
//! Bearer <token>` like an API key, and is compared as SHA-256 digests in constant time. One check
//! and one pair of refusals for every service that takes it.

use std::fmt;

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tonic::metadata::MetadataMap;

use crate::error::{ApiError, ErrorKind};

/// The admin token. `Debug` never prints it.
#[derive(Clone)]
pub struct AdminToken {
    /// SHA-256 of the token: comparing fixed-length digests in constant time leaks neither the
    /// token's bytes nor its length.
    digest: [u8; 32],
}

impl AdminToken {
    /// Fewest characters an admin token may have.
    pub const MIN_LEN: usize = 16;

    /// The token, or why it is unfit (empty or shorter than [`MIN_LEN`](Self::MIN_LEN)).
    pub fn new(token: &str) -> Result<Self, String> {
        let token = token.trim();
        if token.chars().count() < Self::MIN_LEN {
            return Err(format!(
                "the admin token must have at least {} characters",
                Self::MIN_LEN
            ));
        }
        Ok(Self {
            digest: Sha256::digest(token.as_bytes()).into(),
        })
    }

    /// Whether `presented` is this token, in time independent of where they differ.
    pub fn matches(&self, presented: &str) -> bool {
        let digest: [u8; 32] = Sha256::digest(presented.trim().as_bytes()).into();
        self.digest.ct_eq(&digest).into()
    }
}

impl fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AdminToken(***)")
    }
}

/// Why an admin call was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AdminRefusal {
    /// No admin token is configured: the admin calls are off.
    #[error("no admin token is configured")]
    Disabled,
    #[error("missing or wrong admin token")]
    Unauthenticated,
}

impl AdminRefusal {
    /// The refusal as every surface shows it (UNAUTHENTICATED, HTTP 401).
    pub fn to_api_error(self) -> ApiError {
        match self {
            Self::Disabled => ApiError::new(
                ErrorKind::Authentication,
                "The admin API is disabled: no admin token is configured ([admin] token_env)",
            )
            .with_code("admin_disabled"),
            Self::Unauthenticated => ApiError::new(
                ErrorKind::Authentication,
                "Missing or wrong admin token: send Authorization: Bearer <admin token>",
            )
            .with_code("invalid_admin_token"),
        }
    }
}

/// Checks the admin token a call carries in its metadata against the configured one.
pub fn check(token: Option<&AdminToken>, metadata: &MetadataMap) -> Result<(), AdminRefusal> {
    let Some(token) = token else {
        return Err(AdminRefusal::Disabled);
    };
    match crate::auth::api_key(metadata) {
        Some(presented) if token.matches(presented) => Ok(()),
        presented => {
            tracing::warn!(
                token_present = presented.is_some(),
                "admin call refused: missing or wrong admin token"
            );
            Err(AdminRefusal::Unauthenticated)
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn tokens_match_exactly_and_never_print() {
        let token = AdminToken::new("admin-token-0123456789").unwrap();
        assert!(token.matches("admin-token-0123456789"));
        assert!(!token.matches("admin-token-012345678"));
        assert!(!token.matches("admin-token-0123456789x"));
        assert!(!token.matches(""));
        assert_eq!(format!("{token:?}"), "AdminToken(***)");
        let too_short = format!(
            "the admin token must have at least {} characters",
            AdminToken::MIN_LEN
        );
        assert_eq!(AdminToken::new("short").unwrap_err(), too_short);
        assert_eq!(AdminToken::new("   ").unwrap_err(), too_short);
    }

    #[test]
    fn a_call_needs_the_configured_token() {
        let token = AdminToken::new("admin-token-0123456789").unwrap();
        let mut metadata = MetadataMap::new();
        assert_eq!(check(None, &metadata), Err(AdminRefusal::Disabled));
        assert_eq!(
            check(Some(&token), &metadata),
            Err(AdminRefusal::Unauthenticated)
        );
        crate::auth::set_api_key(&mut metadata, "admin-token-0123456789");
        assert_eq!(check(Some(&token), &metadata), Ok(()));
    }
}
