//! `expires_at` as operators write it, on the CLI (`--expires-at`) and in REST `/admin` bodies:
//! RFC 3339 (`2027-01-01T00:00:00Z`), a UTC date (`2027-01-01`, that day's midnight) or Unix
//! seconds (`1798761600`, or a JSON number). One parser for both, into the Unix seconds the Admin
//! service takes.

use chrono::{DateTime, NaiveDate, NaiveTime};
use serde::Deserialize;
use tollgate::error::ApiError;

/// The accepted formats, as error messages name them.
pub const EXPIRY_FORMATS: &str =
    "RFC 3339 (2027-01-01T00:00:00Z), a UTC date (2027-01-01) or Unix seconds (1798761600)";

/// Unix seconds from any accepted format; the error names the field and the formats.
pub fn parse_expiry(text: &str) -> Result<i64, String> {
    let text = text.trim();
    if let Ok(at) = DateTime::parse_from_rfc3339(text) {
        return Ok(at.timestamp());
    }
    if let Ok(day) = NaiveDate::parse_from_str(text, "%Y-%m-%d") {
        return Ok(day.and_time(NaiveTime::MIN).and_utc().timestamp());
    }
    text.parse::<i64>()
        .map_err(|_| format!("expires_at must be {EXPIRY_FORMATS}, got {text:?}"))
}

/// `expires_at` in a JSON body: a number (Unix seconds) or a string in any accepted format.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum Expiry {
    Secs(i64),
    Text(String),
}

impl Expiry {
    /// Unix seconds, or a 400 naming `expires_at`.
    pub fn unix_secs(&self) -> Result<i64, ApiError> {
        match self {
            Self::Secs(secs) => Ok(*secs),
            Self::Text(text) => {
                parse_expiry(text).map_err(|message| ApiError::invalid_param("expires_at", message))
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn the_three_formats_name_the_same_instant() {
        for text in [
            "2030-01-01T00:00:00Z",
            "2030-01-01T01:00:00+01:00",
            "2030-01-01",
            "1893456000",
            " 1893456000 ",
        ] {
            assert_eq!(parse_expiry(text), Ok(1_893_456_000), "{text:?}");
        }
        assert_eq!(parse_expiry("2030-01-01T00:00:00.9Z"), Ok(1_893_456_000));
    }

    #[test]
    fn anything_else_is_refused_naming_the_formats() {
        for text in ["tomorrow", "2030-13-01", "2030-01-01 00:00", "1.5", ""] {
            let err = parse_expiry(text).unwrap_err();
            assert!(err.starts_with("expires_at must be RFC 3339"), "{err}");
            assert!(err.contains("Unix seconds"), "{err}");
        }
    }

    #[test]
    fn json_takes_numbers_and_strings() {
        let parse = |json: &str| serde_json::from_str::<Expiry>(json).unwrap().unix_secs();
        assert_eq!(parse("1893456000").unwrap(), 1_893_456_000);
        assert_eq!(parse(r#""2030-01-01""#).unwrap(), 1_893_456_000);
        assert_eq!(parse(r#""1893456000""#).unwrap(), 1_893_456_000);
        let err = parse(r#""soon""#).unwrap_err();
        assert_eq!(err.param.as_deref(), Some("expires_at"));
    }
}
