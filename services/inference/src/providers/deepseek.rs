//! DeepSeek (`kind = "deepseek"`): OpenAI's protocol plus thinking mode. Thinking is switched by
//! the top-level `thinking: {"type": "enabled" | "disabled"}` field; answers carry
//! `reasoning_content`; usage reports cache hits as `prompt_cache_hit_tokens`. Assistant
//! messages keep their `reasoning_content`, which DeepSeek requires back after tool calls.
//! `response_format` is `text` or `json_object` only: a `json_schema` request is refused with a
//! 400 naming `response_format` rather than forwarded to fail upstream. A generation cut short
//! for lack of capacity (finish reason `insufficient_system_resource`) fails the request with a
//! retryable 503 instead of passing as a silent stop.

use serde_json::{Value, json};
use tollgate::{
    openai::{ChatCompletionRequest, UsageJson},
    v1::Usage,
};

use super::{Target, openai_wire::Dialect};
use crate::UpstreamError;

/// DeepSeek's finish reason for a generation cut short by a lack of inference capacity.
const INSUFFICIENT_RESOURCES: &str = "insufficient_system_resource";

#[derive(Debug)]
pub struct DeepSeek;

impl Dialect for DeepSeek {
    fn prepare(body: &mut ChatCompletionRequest, target: &Target<'_>) -> Result<(), UpstreamError> {
        if let Some(format) = &body.response_format
            && format.kind != "text"
            && format.kind != "json_object"
        {
            return Err(UpstreamError::unsupported(
                "response_format",
                format!(
                    "DeepSeek models support response_format text and json_object, not {}",
                    format.kind
                ),
            ));
        }
        if let Some(on) = target.thinking.switch() {
            let kind = if on { "enabled" } else { "disabled" };
            body.extra
                .insert("thinking".to_owned(), json!({"type": kind}));
        }
        Ok(())
    }

    fn failed_finish(provider: &str, reason: &str) -> Option<UpstreamError> {
        (reason == INSUFFICIENT_RESOURCES).then(|| UpstreamError::OutOfCapacity {
            provider: provider.to_owned(),
            reason: reason.to_owned(),
        })
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

    fn prepared(body: serde_json::Value, thinking: Option<bool>) -> Result<Value, UpstreamError> {
        let route = tollgate::v1::ResolvedModel {
            upstream_model: "deepseek-v4-flash".into(),
            ..Default::default()
        };
        let target = Target {
            route: &route,
            thinking: crate::thinking::Thinking::from_switch(thinking),
        };
        let request = ChatCompletionRequest::from_json(body)
            .unwrap()
            .into_proto()
            .unwrap();
        let mut body = crate::providers::openai_wire::request_body::<DeepSeek>(&request, &target)?;
        DeepSeek::prepare(&mut body, &target)?;
        Ok(body.to_json())
    }

    #[test]
    fn the_completion_limit_goes_out_as_max_tokens() {
        let body = prepared(
            json!({"model":"m","messages":[{"role":"user","content":"hi"}],
                "max_completion_tokens": 20, "max_tokens": 500}),
            None,
        )
        .unwrap();
        assert_eq!(body["max_tokens"], 20);
        assert!(body.get("max_completion_tokens").is_none(), "{body}");
    }

    #[test]
    fn json_schema_is_refused_and_json_object_passes() {
        let schema = json!({"model":"m","messages":[{"role":"user","content":"hi"}],
            "response_format":{"type":"json_schema","json_schema":{"name":"x","schema":{"type":"object"}}}});
        let e = prepared(schema, None).unwrap_err();
        assert_eq!(e.to_api_error().param.as_deref(), Some("response_format"));
        let object = json!({"model":"m","messages":[{"role":"user","content":"hi"}],"response_format":{"type":"json_object"}});
        assert_eq!(
            prepared(object, None).unwrap()["response_format"],
            json!({"type":"json_object"})
        );
    }

    #[test]
    fn reasoning_content_goes_back_on_tool_call_turns_and_developer_becomes_system() {
        let body = prepared(
            json!({"model":"m","messages":[
                {"role":"developer","content":"terse"},
                {"role":"user","content":"weather?"},
                {"role":"assistant","content":null,"reasoning_content":"Need the tool.",
                 "tool_calls":[{"id":"call_00_a","type":"function","function":{"name":"w","arguments":"{}"}}]},
                {"role":"tool","tool_call_id":"call_00_a","content":"sunny"}]}),
            Some(true),
        )
        .unwrap();
        assert_eq!(body["messages"][0]["role"], "system");
        assert_eq!(body["messages"][2]["reasoning_content"], "Need the tool.");
        assert_eq!(body["thinking"], json!({"type":"enabled"}));
    }
}
