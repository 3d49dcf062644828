//! A `tollgate.v1.ChatResponse` as Anthropic's message object: content blocks in Anthropic's
//! order (thinking, text, tool_use), `stop_reason`, and `usage` with the cache reads and writes
//! taken out of `input_tokens` (the gateway's `cost` in USD beside them).

use serde_json::{Map, Value, json};
use tollgate::{
    money,
    v1::{ChatResponse, ReasoningDetail, Usage, message::Content},
};

use super::request::ANTHROPIC_REASONING_FORMAT;
use crate::opaque_reasoning;

/// `msg_...` for the gateway's request id (`chatcmpl-...`), so the two are easy to match.
pub fn message_id(request_id: &str) -> String {
    format!(
        "msg_{}",
        request_id.strip_prefix("chatcmpl-").unwrap_or(request_id)
    )
}

/// `finish_reason` → `stop_reason`. A stop without the sequence named (the upstream did not say
/// which one matched) reads as `end_turn`.
pub fn stop_reason(finish_reason: &str, stop_sequence: Option<&str>) -> &'static str {
    match finish_reason {
        "length" => "max_tokens",
        "tool_calls" | "function_call" => "tool_use",
        "content_filter" => "refusal",
        _ if stop_sequence.is_some() => "stop_sequence",
        _ => "end_turn",
    }
}

/// Anthropic's usage: `input_tokens` excludes cache reads and writes.
pub fn usage(usage: &Usage) -> Value {
    let input = usage
        .prompt_tokens
        .saturating_sub(usage.cached_prompt_tokens)
        .saturating_sub(usage.cache_write_tokens);
    let mut out = json!({
        "input_tokens": input,
        "cache_creation_input_tokens": usage.cache_write_tokens,
        "cache_read_input_tokens": usage.cached_prompt_tokens,
        "output_tokens": usage.completion_tokens,
    });
    if let Some(pico) = usage.cost_picodollars {
        out["cost"] = money::json_number(&money::format_picodollars(pico));
    }
    out
}

/// The thinking blocks for an answer's reasoning: Anthropic's own details one block each (with
/// their signatures); otherwise one thinking block with the reasoning text, whose signature
/// carries any other provider's details back to the gateway.
pub fn thinking_blocks(reasoning: Option<&str>, details: &[ReasoningDetail]) -> Vec<Value> {
    let (ours, others): (Vec<&ReasoningDetail>, Vec<&ReasoningDetail>) = details
        .iter()
        .partition(|d| d.format.as_deref() == Some(ANTHROPIC_REASONING_FORMAT));
    let mut blocks: Vec<Value> = ours
        .iter()
        .filter_map(|d| match d.r#type.as_str() {
            "reasoning.text" => Some(json!({
                "type": "thinking",
                "thinking": d.text.clone().unwrap_or_default(),
                "signature": d.signature.clone().unwrap_or_default(),
            })),
            "reasoning.encrypted" => Some(json!({
                "type": "redacted_thinking",
                "data": d.data.clone().unwrap_or_default(),
            })),
            _ => None,
        })
        .collect();
    let others: Vec<ReasoningDetail> = others.into_iter().cloned().collect();
    let text = reasoning.filter(|_| ours.is_empty()).unwrap_or_default();
    if !text.is_empty() || !others.is_empty() {
        blocks.push(json!({
            "type": "thinking",
            "thinking": text,
            "signature": opaque_reasoning::encode(&others),
        }));
    }
    blocks
}

/// The tool call's arguments as `tool_use.input` (an object; unparsable arguments are kept as a
/// string under `_raw` rather than lost).
pub fn tool_input(arguments: &str) -> Value {
    if arguments.trim().is_empty() {
        return Value::Object(Map::new());
    }
    match serde_json::from_str::<Value>(arguments) {
        Ok(value @ Value::Object(_)) => value,
        _ => json!({"_raw": arguments}),
    }
}

/// The message object for a whole answer.
pub fn message(response: &ChatResponse) -> Value {
    let choice = response.choices.first();
    let message = choice.and_then(|c| c.message.as_ref());
    let mut content = Vec::new();
    if let Some(m) = message {
        content.extend(thinking_blocks(
            m.reasoning_content.as_deref(),
            &m.reasoning_details,
        ));
        let text = match &m.content {
            Some(Content::Text(text)) => text.clone(),
            Some(Content::Parts(parts)) => parts
                .parts
                .iter()
                .filter_map(|p| match &p.part {
                    Some(tollgate::v1::content_part::Part::Text(t)) => Some(t.as_str()),
                    _ => None,
                })
                .collect(),
            None => String::new(),
        };
        let text = match (&m.refusal, text.is_empty()) {
            (Some(refusal), true) => refusal.clone(),
            _ => text,
        };
        if !text.is_empty() {
            content.push(json!({"type": "text", "text": text}));
        }
        for call in &m.tool_calls {
            let f = call.function.clone().unwrap_or_default();
            content.push(json!({
                "type": "tool_use",
                "id": call.id,
                "name": f.name,
                "input": tool_input(&f.arguments),
            }));
        }
    }
    let stop_sequence = choice.and_then(|c| c.stop_sequence.clone());
    json!({
        "id": message_id(&response.id),
        "type": "message",
        "role": "assistant",
        "model": response.model,
        "content": content,
        "stop_reason": stop_reason(
            choice.map_or("stop", |c| c.finish_reason.as_str()),
            stop_sequence.as_deref(),
        ),
        "stop_sequence": stop_sequence,
        "usage": usage(&response.usage.unwrap_or_default()),
    })
}

#[cfg(test)]
mod tests {
    use tollgate::v1::{Choice, FunctionCall, Message, ToolCall};

    use super::*;

    #[test]
    fn an_answer_becomes_blocks_stop_reason_and_usage() {
        let response = ChatResponse {
            id: "chatcmpl-0abc".into(),
            model: "claude-test".into(),
            choices: vec![Choice {
                message: Some(Message {
                    content: Some(Content::Text("Checking.".into())),
                    reasoning_content: Some("Think.".into()),
                    reasoning_details: vec![ReasoningDetail {
                        r#type: "reasoning.text".into(),
                        text: Some("Think.".into()),
                        signature: Some("sig".into()),
                        format: Some(ANTHROPIC_REASONING_FORMAT.into()),
                        ..Default::default()
                    }],
                    tool_calls: vec![ToolCall {
                        id: "toolu_1".into(),
                        r#type: "function".into(),
                        function: Some(FunctionCall {
                            name: "f".into(),
                            arguments: r#"{"a":1}"#.into(),
                        }),
                    }],
                    ..Default::default()
                }),
                finish_reason: "tool_calls".into(),
                ..Default::default()
            }],
            usage: Some(Usage {
                prompt_tokens: 100,
                completion_tokens: 7,
                total_tokens: 107,
                cached_prompt_tokens: 30,
                cache_write_tokens: 20,
                cost_picodollars: Some(1_500_000),
                ..Default::default()
            }),
            ..Default::default()
        };
        let m = message(&response);
        assert_eq!(m["id"], "msg_0abc");
        assert_eq!(m["stop_reason"], "tool_use");
        assert_eq!(
            m["content"],
            json!([
                {"type": "thinking", "thinking": "Think.", "signature": "sig"},
                {"type": "text", "text": "Checking."},
                {"type": "tool_use", "id": "toolu_1", "name": "f", "input": {"a": 1}}
            ])
        );
        assert_eq!(
            m["usage"],
            json!({"input_tokens": 50, "cache_creation_input_tokens": 20,
                   "cache_read_input_tokens": 30, "output_tokens": 7, "cost": 0.0000015})
        );
    }

    #[test]
    fn stop_reasons() {
        assert_eq!(stop_reason("stop", None), "end_turn");
        assert_eq!(stop_reason("stop", Some("END")), "stop_sequence");
        assert_eq!(stop_reason("length", None), "max_tokens");
        assert_eq!(stop_reason("tool_calls", None), "tool_use");
        assert_eq!(stop_reason("content_filter", None), "refusal");
    }

    #[test]
    fn other_providers_reasoning_rides_in_the_signature() {
        let gemini = ReasoningDetail {
            r#type: "reasoning.encrypted".into(),
            data: Some("x".into()),
            format: Some("google-gemini-v1".into()),
            ..Default::default()
        };
        let blocks = thinking_blocks(Some("hmm"), std::slice::from_ref(&gemini));
        assert_eq!(blocks.len(), 1);
        assert_eq!(blocks[0]["thinking"], "hmm");
        let signature = blocks[0]["signature"].as_str().unwrap();
        assert_eq!(opaque_reasoning::decode(signature), Some(vec![gemini]));
        assert_eq!(thinking_blocks(Some("plain"), &[])[0]["signature"], "");
        assert!(thinking_blocks(None, &[]).is_empty());
    }
}
