//! Reasoning details (`tollgate.v1.ReasoningDetail`: Gemini thought signatures, MiniMax reasoning,
//! Anthropic signed thinking) carried through a client surface that has no field for them, as one
//! opaque string the client sends back unchanged: the `signature` of an Anthropic thinking block,
//! the `encrypted_content` of a Responses reasoning item. The string is `tg1.` followed by the
//! details as JSON, base64url-encoded; the gateway keeps no state.

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use tollgate::{openai::ReasoningDetailJson, v1::ReasoningDetail};

/// The prefix that marks a string as ours (and its format version).
const PREFIX: &str = "tg1.";

/// The details as one opaque string; empty for no details.
pub fn encode(details: &[ReasoningDetail]) -> String {
    if details.is_empty() {
        return String::new();
    }
    let json: Vec<ReasoningDetailJson> = details
        .iter()
        .map(ReasoningDetailJson::from_proto)
        .collect();
    let text = serde_json::to_vec(&json).unwrap_or_default();
    format!("{PREFIX}{}", URL_SAFE_NO_PAD.encode(text))
}

/// The details of a string [`encode`] made; `None` for any other string (a real Anthropic
/// signature, or something the client made up).
pub fn decode(text: &str) -> Option<Vec<ReasoningDetail>> {
    let bytes = URL_SAFE_NO_PAD.decode(text.strip_prefix(PREFIX)?).ok()?;
    let json: Vec<ReasoningDetailJson> = serde_json::from_slice(&bytes).ok()?;
    Some(json.iter().map(ReasoningDetailJson::to_proto).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn details_round_trip_and_foreign_strings_are_not_ours() {
        let details = vec![ReasoningDetail {
            r#type: "reasoning.encrypted".into(),
            data: Some("c2lnbmF0dXJl".into()),
            id: Some("call_1".into()),
            format: Some("google-gemini-v1".into()),
            index: Some(0),
            ..Default::default()
        }];
        let text = encode(&details);
        assert!(text.starts_with("tg1."));
        assert_eq!(decode(&text), Some(details));
        assert_eq!(encode(&[]), "");
        assert_eq!(decode("EqQBCkYIBxgCKkA"), None);
        assert_eq!(decode("tg1.!!"), None);
    }
}
