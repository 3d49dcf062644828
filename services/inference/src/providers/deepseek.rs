//! DeepSeek (`kind = "deepseek"`): OpenAI's protocol plus thinking mode. Thinking is switched by
//! the top-level `thinking: {"type": "enabled" | "disabled"}` field; answers carry
//! `reasoning_content`; usage reports cache hits as `prompt_cache_hit_tokens`. Assistant
//! messages keep their `reasoning_content`, which DeepSeek requires back after tool calls.

use serde_json::{Value, json};
use tollgate::{
    openai::{ChatCompletionRequest, RoleJson, UsageJson},
    v1::Usage,
};

use super::{Target, openai_wire::Dialect};
use crate::UpstreamError;

#[derive(Debug)]
pub struct DeepSeek;

impl Dialect for DeepSeek {
    fn prepare(body: &mut ChatCompletionRequest, target: &Target<'_>) -> Result<(), UpstreamError> {
        for message in &mut body.messages {
            if message.role == RoleJson::Developer {
                message.role = RoleJson::System;
            }
        }
        if let Some(on) = target.thinking {
            let kind = if on { "enabled" } else { "disabled" };
            body.extra
                .insert("thinking".to_owned(), json!({"type": kind}));
        }
        Ok(())
    }

    /// DeepSeek's usage: cache hits may come only as `prompt_cache_hit_tokens`.
    fn read_usage(usage: &UsageJson) -> Usage {
        let mut normalised = usage.to_proto();
        if normalised.cached_prompt_tokens == 0 {
            normalised.cached_prompt_tokens = usage
                .extra
                .get("prompt_cache_hit_tokens")
                .and_then(Value::as_u64)
                .unwrap_or(0)
                .min(normalised.prompt_tokens);
        }
        normalised
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_hits_are_read_from_deepseek_fields() {
        // Fixture DS-3's final usage, without prompt_tokens_details.
        let usage: UsageJson = serde_json::from_str(
            r#"{"prompt_tokens":161,"completion_tokens":25,"total_tokens":186,"prompt_cache_hit_tokens":128,"prompt_cache_miss_tokens":33}"#,
        )
        .unwrap();
        let u = DeepSeek::read_usage(&usage);
        assert_eq!(
            (u.prompt_tokens, u.cached_prompt_tokens, u.completion_tokens),
            (161, 128, 25)
        );
    }

    #[test]
    fn reasoning_tokens_and_cached_details_are_kept() {
        // Fixture DS-2's final usage.
        let usage: UsageJson = serde_json::from_str(
            r#"{"prompt_tokens":6,"completion_tokens":169,"total_tokens":175,"prompt_tokens_details":{"cached_tokens":0},"completion_tokens_details":{"reasoning_tokens":117},"prompt_cache_hit_tokens":1,"prompt_cache_miss_tokens":5}"#,
        )
        .unwrap();
        let u = DeepSeek::read_usage(&usage);
        assert_eq!((u.cached_prompt_tokens, u.reasoning_tokens), (1, 117));
    }
}
