//! API key secrets: their shape (`sk-` + 48 base62), their generation from the CSPRNG, the
//! SHA-256 that is all the database stores, and a type whose `Debug` and `Display` never print a
//! secret.

use std::fmt;

use rand::Rng;
use rand::distr::Alphanumeric;
use sha2::{Digest, Sha256};

/// What every secret starts with.
pub const SECRET_SCHEME: &str = "sk-";
/// Random base62 characters after the scheme.
pub const SECRET_RANDOM_LEN: usize = 48;
/// Characters of the secret stored and shown as its prefix (`sk-` + 9).
pub const PREFIX_LEN: usize = 12;

/// A full API key secret. Shown once at creation; `Debug` and `Display` print only its prefix.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretKey(String);

impl SecretKey {
    /// A new secret: `sk-` and 48 base62 characters from the thread-local CSPRNG (ChaCha, seeded
    /// from the OS).
    pub fn generate() -> Self {
        let random: String = rand::rng()
            .sample_iter(Alphanumeric)
            .take(SECRET_RANDOM_LEN)
            .map(char::from)
            .collect();
        Self(format!("{SECRET_SCHEME}{random}"))
    }

    /// The whole secret, for printing it to its owner once. Never log it.
    pub fn expose_secret(&self) -> &str {
        &self.0
    }

    /// The displayable prefix (`sk-AbCd1234E`).
    pub fn prefix(&self) -> &str {
        self.0.get(..PREFIX_LEN).unwrap_or(SECRET_SCHEME)
    }

    /// Lowercase hex SHA-256 of the secret: what the database stores.
    pub fn hash(&self) -> String {
        hash_secret(&self.0)
    }
}

impl fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretKey({}...)", self.prefix())
    }
}

impl fmt::Display for SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}...", self.prefix())
    }
}

/// Lowercase hex SHA-256 of a presented secret.
pub fn hash_secret(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

/// Whether `secret` has the shape of a key this crate issues (`sk-` + 48 base62). Anything else
/// is refused without a database read.
pub fn is_well_formed(secret: &str) -> bool {
    secret.strip_prefix(SECRET_SCHEME).is_some_and(|random| {
        random.len() == SECRET_RANDOM_LEN && random.bytes().all(|b| b.is_ascii_alphanumeric())
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_base62_and_redacted() {
        let a = SecretKey::generate();
        let b = SecretKey::generate();
        assert_ne!(a, b);
        assert!(is_well_formed(a.expose_secret()), "{}", a.expose_secret());
        assert_eq!(a.expose_secret().len(), 51);
        assert_eq!(a.prefix().len(), 12);
        assert!(a.expose_secret().starts_with(a.prefix()));
        let shown = format!("{a} {a:?}");
        assert!(!shown.contains(a.expose_secret()), "{shown}");
        assert!(shown.contains(a.prefix()));
        assert_eq!(a.hash(), hash_secret(a.expose_secret()));
        assert_eq!(a.hash().len(), 64);
    }

    #[test]
    fn malformed_secrets_are_recognised() {
        assert!(!is_well_formed("sk-short"));
        assert!(!is_well_formed(&format!("pk-{}", "a".repeat(48))));
        assert!(!is_well_formed(&format!("sk-{}!", "a".repeat(47))));
        assert!(is_well_formed(&format!("sk-{}", "a".repeat(48))));
    }
}
