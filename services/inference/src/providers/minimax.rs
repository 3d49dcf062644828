//! MiniMax's OpenAI-compatible endpoint (`kind = "minimax"`, providers.md section 5), as a
//! dialect of the OpenAI wire.
//!
//! - Reasoning: every request carries `reasoning_split: true`, so reasoning arrives as
//!   `reasoning_details[].text` (incremental per chunk when streaming) rather than inline; it is
//!   handed to clients as `reasoning_content` and, whole, as one `reasoning_details` entry of
//!   format `minimax-v1`. MiniMax needs the complete assistant message back in tool loops, so
//!   those entries on request messages go back to MiniMax as its `reasoning_details` (failing
//!   those, an assistant message's `reasoning_content` is sent back that way). A leading
//!   `<think>…</think>` in the content (MiniMax's default without `reasoning_split`) is handled
//!   too, defensively.
//! - Thinking: the alias or request switch becomes `thinking: {"type": "adaptive" | "disabled"}`.
//!   **Unverified** (third-party docs only): M2.x models are said to think even when disabled.
//! - Parameters: `temperature` and `top_p` must lie in (0, 1] and `n` must be 1; anything else
//!   is refused here with a 400 naming the field (not clamped: a silent clamp would change the
//!   sampling the caller asked for). `developer` becomes `system`; fields only OpenAI knows and
//!   `reasoning_effort` (MiniMax takes `thinking`) are dropped. `tool_choice`,
//!   `parallel_tool_calls` and `json_schema` are passed on as sent (undocumented by MiniMax).
//! - Failures: MiniMax reports them in `base_resp` even inside HTTP 200 bodies and stream events;
//!   a non-zero `status_code` becomes the product's error (`status_code` table below). Its
//!   response extras (`base_resp`, `input_sensitive*`, `output_sensitive*`, `message.name`,
//!   `audio_content`) are never passed on: the OpenAI parser keeps only OpenAI's fields.

use serde_json::{Value, json};
use tollgate::openai::{ChatCompletionRequest, ReasoningDetailJson, RoleJson};

use super::{Target, openai_compatible::OPENAI_ONLY_FIELDS, openai_wire::Dialect};
use crate::UpstreamError;

/// The `reasoning_details` format of MiniMax reasoning.
pub const REASONING_FORMAT: &str = "minimax-v1";

#[derive(Debug)]
pub struct MiniMax;

/// Refuses a sampling parameter outside MiniMax's (0, 1].
fn check_unit_interval(field: &str, value: Option<f64>) -> Result<(), UpstreamError> {
    match value {
        Some(v) if !(v > 0.0 && v <= 1.0) => Err(UpstreamError::unsupported(
            field,
            format!("MiniMax models take {field} in (0, 1]; got {v}"),
        )),
        _ => Ok(()),
    }
}

impl Dialect for MiniMax {
    const REASONING_FORMAT: Option<&'static str> = Some(REASONING_FORMAT);
    const INLINE_THINK_TAGS: bool = true;

    fn prepare(body: &mut ChatCompletionRequest, target: &Target<'_>) -> Result<(), UpstreamError> {
        check_unit_interval("temperature", body.temperature)?;
        check_unit_interval("top_p", body.top_p)?;
        if body.n.is_some_and(|n| n > 1) {
            return Err(UpstreamError::unsupported(
                "n",
                "MiniMax models return one choice: n must be 1",
            ));
        }
        for message in &mut body.messages {
            // MiniMax takes reasoning back as reasoning_details (the wire kept ours), not as
            // text. A client that kept only `reasoning_content` (as DeepSeek clients do) still
            // gets a working tool loop: the text becomes the detail MiniMax needs.
            let reasoning = message.reasoning_content.take().filter(|r| !r.is_empty());
            if message.role == RoleJson::Assistant
                && message.reasoning_details.is_none()
                && let Some(text) = reasoning
            {
                message.reasoning_details = Some(vec![ReasoningDetailJson {
                    kind: "reasoning.text".to_owned(),
                    text: Some(text),
                    ..Default::default()
                }]);
            }
        }
        body.reasoning_effort = None;
        body.extra
            .retain(|k, _| !OPENAI_ONLY_FIELDS.contains(&k.as_str()));
        body.extra
            .insert("reasoning_split".to_owned(), Value::Bool(true));
        if let Some(on) = target.thinking.switch() {
            let kind = if on { "adaptive" } else { "disabled" };
            body.extra
                .insert("thinking".to_owned(), json!({"type": kind}));
        }
        Ok(())
    }

    const IN_BAND_MEMBER: Option<&'static str> = Some("\"base_resp\"");

    fn in_band_error(provider: &str, body: &Value) -> Option<UpstreamError> {
        let base = body.get("base_resp")?;
        let code = base.get("status_code").and_then(Value::as_i64).unwrap_or(0);
        if code == 0 {
            return None;
        }
        let message = format!(
            "MiniMax status {code}: {}",
            base.get("status_msg").and_then(Value::as_str).unwrap_or("")
        );
        Some(base_resp_error(provider, code, message))
    }
}

/// MiniMax's `base_resp.status_code` (platform.minimax.io error-code page) as the product's
/// error: rate limits are 503 (retry later), credentials and our account's balance are 502 (the
/// gateway's problem, never the caller's), a timeout is 504, invalid parameters are the caller's
/// 400 with MiniMax's message, anything else a 502.
fn base_resp_error(provider: &str, code: i64, message: String) -> UpstreamError {
    let provider = provider.to_owned();
    match code {
        1002 | 1039 => UpstreamError::Overloaded {
            provider,
            status: 429,
            retry_after_secs: None,
        },
        1004 => UpstreamError::Credentials {
            provider,
            status: 401,
        },
        1008 => UpstreamError::Credentials {
            provider,
            status: 402,
        },
        1001 => UpstreamError::Timeout {
            provider,
            seconds: 0,
        },
        2013 => UpstreamError::Rejected {
            provider,
            status: 400,
            message,
        },
        _ => UpstreamError::Failed { provider, message },
    }
}

#[cfg(test)]
mod tests {
    use tollgate::{
        error::ErrorKind,
        openai::ChatCompletionRequest,
        v1::{self, ChatRequest, ResolvedModel},
    };

    use super::*;
    use crate::providers::openai_wire::{StreamNormaliser, parse_completion, request_body};

    fn route() -> ResolvedModel {
        ResolvedModel {
            requested_id: "MiniMax-M2".into(),
            upstream_model: "MiniMax-M2".into(),
            ..Default::default()
        }
    }

    fn upstream_body(body: Value, thinking: Option<bool>) -> Result<Value, UpstreamError> {
        let route = route();
        let target = Target {
            route: &route,
            thinking: crate::thinking::Thinking::from_switch(thinking),
        };
        let request: ChatRequest = ChatCompletionRequest::from_json(body)
            .unwrap()
            .into_proto()
            .unwrap();
        let mut prepared = request_body::<MiniMax>(&request, &target)?;
        MiniMax::prepare(&mut prepared, &target)?;
        Ok(prepared.to_json())
    }

    #[test]
    fn mm1_request_asks_for_split_reasoning() {
        // Fixture MM-1 is what a request becomes.
        let body = upstream_body(
            json!({"model":"MiniMax-M2","messages":[{"role":"system","content":"You are a helpful assistant."},{"role":"user","content":"Hi, how are you?"}]}),
            None,
        )
        .unwrap();
        assert_eq!(
            body,
            json!({"model":"MiniMax-M2","messages":[{"role":"system","content":"You are a helpful assistant."},{"role":"user","content":"Hi, how are you?"}],"reasoning_split":true})
        );
    }

    #[test]
    fn thinking_switch_becomes_minimax_thinking() {
        let msg = json!({"model":"m","messages":[{"role":"user","content":"hi"}],"reasoning_effort":"high"});
        let on = upstream_body(msg.clone(), Some(true)).unwrap();
        assert_eq!(on["thinking"], json!({"type":"adaptive"}));
        assert!(on.get("reasoning_effort").is_none());
        let off = upstream_body(msg.clone(), Some(false)).unwrap();
        assert_eq!(off["thinking"], json!({"type":"disabled"}));
        assert!(upstream_body(msg, None).unwrap().get("thinking").is_none());
    }

    #[test]
    fn out_of_range_parameters_are_refused_naming_the_field() {
        let param = |extra: Value| {
            let mut body = json!({"model":"m","messages":[{"role":"user","content":"hi"}]});
            body.as_object_mut()
                .unwrap()
                .extend(extra.as_object().unwrap().clone());
            upstream_body(body, None)
                .err()
                .map(|e| e.to_api_error().param.unwrap_or_default())
        };
        assert_eq!(
            param(json!({"temperature": 0})).as_deref(),
            Some("temperature")
        );
        assert_eq!(
            param(json!({"temperature": 1.5})).as_deref(),
            Some("temperature")
        );
        assert_eq!(param(json!({"top_p": 0})).as_deref(), Some("top_p"));
        assert_eq!(param(json!({"n": 2})).as_deref(), Some("n"));
        assert_eq!(
            param(json!({"temperature": 1, "top_p": 0.95, "n": 1})),
            None
        );
    }

    #[test]
    fn developer_becomes_system_and_openai_only_fields_are_dropped() {
        let body = upstream_body(
            json!({"model":"m","messages":[{"role":"developer","content":"terse"},{"role":"user","content":"hi"}],
                "store":true,"metadata":{"a":"b"},"service_tier":"flex","verbosity":"low","seed":3}),
            None,
        )
        .unwrap();
        assert_eq!(body["messages"][0]["role"], "system");
        for field in ["store", "metadata", "service_tier", "verbosity"] {
            assert!(body.get(field).is_none(), "{field} was sent");
        }
        assert_eq!(body["seed"], 3);
    }

    #[test]
    fn reasoning_details_go_back_to_minimax_on_assistant_messages() {
        let body = upstream_body(
            json!({"model":"m","messages":[
                {"role":"user","content":"weather?"},
                {"role":"assistant","content":null,"reasoning_content":"Need the tool.",
                 "tool_calls":[{"id":"call_1","type":"function","function":{"name":"w","arguments":"{}"}}],
                 "reasoning_details":[
                    {"type":"reasoning.text","text":"Need the tool.","format":"minimax-v1"},
                    {"type":"reasoning.encrypted","data":"c2ln","format":"anthropic-claude-v1"}]},
                {"role":"tool","tool_call_id":"call_1","content":"sunny"}]}),
            Some(true),
        )
        .unwrap();
        let assistant = &body["messages"][1];
        assert_eq!(
            assistant["reasoning_details"],
            json!([{"type":"reasoning.text","text":"Need the tool."}])
        );
        assert!(assistant.get("reasoning_content").is_none());
    }

    #[test]
    fn reasoning_content_alone_goes_back_as_a_reasoning_detail() {
        let body = upstream_body(
            json!({"model":"m","messages":[
                {"role":"user","content":"weather?"},
                {"role":"assistant","content":null,"reasoning_content":"Need the tool.",
                 "tool_calls":[{"id":"call_1","type":"function","function":{"name":"w","arguments":"{}"}}]},
                {"role":"tool","tool_call_id":"call_1","content":"sunny"}]}),
            None,
        )
        .unwrap();
        assert_eq!(
            body["messages"][1]["reasoning_details"],
            json!([{"type":"reasoning.text","text":"Need the tool."}])
        );
        assert!(body["messages"][1].get("reasoning_content").is_none());
    }

    #[test]
    fn mm2_reasoning_details_become_reasoning_content_and_extras_are_stripped() {
        // Fixture MM-2, plus the extras MiniMax is observed to add.
        let mm2 = json!({"id":"0123","object":"chat.completion","created":1700000000,"model":"MiniMax-M2",
            "choices":[{"index":0,"finish_reason":"stop","message":{"role":"assistant","content":"I'm doing well, thanks!",
                "name":"MiniMax AI","audio_content":"",
                "reasoning_details":[{"type":"reasoning.text","text":"The user is greeting me."}]}}],
            "usage":{"prompt_tokens":20,"completion_tokens":15,"total_tokens":35},
            "input_sensitive":false,"input_sensitive_type":0,"output_sensitive":false,"output_sensitive_type":0,
            "base_resp":{"status_code":0,"status_msg":""}});
        let response = parse_completion::<MiniMax>("minimax", mm2).unwrap();
        let message = response.choices[0].message.as_ref().unwrap();
        assert_eq!(
            message.content,
            Some(v1::message::Content::Text("I'm doing well, thanks!".into()))
        );
        assert_eq!(
            message.reasoning_content.as_deref(),
            Some("The user is greeting me.")
        );
        assert_eq!(message.reasoning_details.len(), 1);
        assert_eq!(
            message.reasoning_details[0].format.as_deref(),
            Some(REASONING_FORMAT)
        );
        assert_eq!(
            message.reasoning_details[0].text.as_deref(),
            Some("The user is greeting me.")
        );
        assert_eq!(message.name, None);
        let rendered =
            serde_json::to_value(tollgate::openai::ChatCompletion::from_proto(&response)).unwrap();
        for extra in ["base_resp", "input_sensitive", "output_sensitive"] {
            assert!(rendered.get(extra).is_none(), "{extra} leaked");
        }
        assert!(
            rendered["choices"][0]["message"]
                .get("audio_content")
                .is_none()
        );
        assert!(rendered["choices"][0]["message"].get("name").is_none());
        assert_eq!(response.usage.unwrap().total_tokens, 35);
    }

    #[test]
    fn inline_think_in_a_whole_answer_is_reasoning() {
        let body = json!({"id":"x","choices":[{"index":0,"finish_reason":"stop","message":{"role":"assistant",
            "content":"<think>\nThe user is greeting me.\n</think>\n\nI'm doing well, thanks!"}}],"base_resp":{"status_code":0}});
        let response = parse_completion::<MiniMax>("minimax", body).unwrap();
        let message = response.choices[0].message.as_ref().unwrap();
        assert_eq!(
            message.reasoning_content.as_deref(),
            Some("The user is greeting me.")
        );
        assert_eq!(
            message.content,
            Some(v1::message::Content::Text("I'm doing well, thanks!".into()))
        );
    }

    /// Replays SSE payloads; returns (reasoning, content, finish reason, reasoning details, usage).
    fn replay(
        events: &[&str],
    ) -> (
        String,
        String,
        Option<String>,
        Vec<v1::ReasoningDetail>,
        Option<v1::Usage>,
    ) {
        let mut normaliser = StreamNormaliser::<MiniMax>::default();
        let (mut reasoning, mut content, mut finish, mut details, mut usage) =
            (String::new(), String::new(), None, vec![], None);
        for event in events {
            let chunk = normaliser.chunk("minimax", event).unwrap();
            usage = chunk.usage.or(usage);
            for choice in chunk.choices {
                let delta = choice.delta.unwrap_or_default();
                reasoning.push_str(delta.reasoning_content.as_deref().unwrap_or(""));
                content.push_str(delta.content.as_deref().unwrap_or(""));
                details.extend(delta.reasoning_details);
                finish = choice.finish_reason.or(finish);
            }
        }
        (reasoning, content, finish, details, usage)
    }

    const MM3: [&str; 3] = [
        r#"{"id":"x","object":"chat.completion.chunk","created":1700000000,"model":"MiniMax-M2","choices":[{"index":0,"delta":{"role":"assistant","content":"<think>\nThe user is greeting me."}}]}"#,
        r#"{"id":"x","object":"chat.completion.chunk","created":1700000000,"model":"MiniMax-M2","choices":[{"index":0,"delta":{"content":"\n</think>\n\nI'm doing well, thanks!"}}]}"#,
        r#"{"id":"x","object":"chat.completion.chunk","created":1700000000,"model":"MiniMax-M2","choices":[{"index":0,"delta":{},"finish_reason":"stop"}],"usage":{"prompt_tokens":20,"completion_tokens":15,"total_tokens":35}}"#,
    ];

    #[test]
    fn mm3_inline_think_stream_is_split() {
        let (reasoning, content, finish, details, usage) = replay(&MM3);
        assert_eq!(reasoning, "The user is greeting me.\n");
        assert_eq!(content, "I'm doing well, thanks!");
        assert_eq!(finish.as_deref(), Some("stop"));
        assert_eq!(details.len(), 1);
        assert_eq!(
            details[0].text.as_deref(),
            Some("The user is greeting me.\n")
        );
        assert_eq!(usage.unwrap().completion_tokens, 15);
    }

    #[test]
    fn mm3_with_tags_split_across_chunks() {
        let text = "<think>\nThe user is greeting me.\n</think>\n\nI'm doing well, thanks!";
        let chunk = |content: &str| {
            json!({"id":"x","choices":[{"index":0,"delta":{"content":content}}]}).to_string()
        };
        // Cut inside "<think>" and inside "</think>".
        for (a, b) in [(3, 40), (6, 45), (1, 33)] {
            let events = [
                chunk(&text[..a]),
                chunk(&text[a..b]),
                chunk(&text[b..]),
                MM3[2].to_owned(),
            ];
            let refs: Vec<&str> = events.iter().map(String::as_str).collect();
            let (reasoning, content, ..) = replay(&refs);
            assert_eq!(reasoning, "The user is greeting me.\n", "cuts {a},{b}");
            assert_eq!(content, "I'm doing well, thanks!", "cuts {a},{b}");
        }
    }

    #[test]
    fn split_reasoning_stream_is_incremental_and_handed_out_whole_at_the_end() {
        let events = [
            r#"{"id":"x","choices":[{"index":0,"delta":{"role":"assistant","content":"","reasoning_details":[{"type":"reasoning.text","text":"The user"}]}}],"base_resp":{"status_code":0,"status_msg":""}}"#,
            r#"{"id":"x","choices":[{"index":0,"delta":{"reasoning_details":[{"type":"reasoning.text","text":" is greeting me."}]}}]}"#,
            r#"{"id":"x","choices":[{"index":0,"delta":{"content":"Hi!"}}]}"#,
            MM3[2],
        ];
        let (reasoning, content, _, details, _) = replay(&events);
        assert_eq!(reasoning, "The user is greeting me.");
        assert_eq!(content, "Hi!");
        assert_eq!(details.len(), 1, "one whole detail, on the finish chunk");
        assert_eq!(details[0].text.as_deref(), Some("The user is greeting me."));
        assert_eq!(details[0].format.as_deref(), Some(REASONING_FORMAT));
    }

    #[test]
    fn base_resp_failures_map_onto_the_error_table() {
        let kind = |code: i64| {
            // MiniMax's own wording, which must not decide what the caller reads.
            let body = json!({"id":"x","choices":null,"base_resp":{"status_code":code,"status_msg":"insufficient balance"}});
            let from_json = parse_completion::<MiniMax>("minimax", body.clone()).unwrap_err();
            let mut normaliser = StreamNormaliser::<MiniMax>::default();
            let from_sse = normaliser.chunk("minimax", &body.to_string()).unwrap_err();
            assert_eq!(from_json.to_api_error().kind, from_sse.to_api_error().kind);
            from_json.to_api_error()
        };
        assert_eq!(kind(1002).kind, ErrorKind::Unavailable);
        assert_eq!(kind(1004).kind, ErrorKind::Upstream);
        assert_eq!(kind(1008).kind, ErrorKind::Upstream);
        assert_eq!(kind(1000).kind, ErrorKind::Upstream);
        assert_eq!(kind(1024).kind, ErrorKind::Upstream);
        assert_eq!(kind(1001).kind, ErrorKind::UpstreamTimeout);
        let invalid = kind(2013);
        assert_eq!(invalid.kind, ErrorKind::InvalidRequest);
        assert!(invalid.message.contains("2013"));
        // The balance is ours, not the caller's: no MiniMax wording about it reaches them.
        assert!(!kind(1008).message.contains("balance"));
    }
}
