//! Anthropic's answers read back into OpenAI's shape: content blocks (providers.md §2.2), the
//! `stop_reason` → `finish_reason` table (§7.1), usage normalisation (§7.2) and the reasoning
//! details that carry thinking blocks through the client and back.

use serde::Deserialize;
use serde_json::{Value, json};
use tollgate::v1::{
    ChatResponse, Choice, FunctionCall, Message, ReasoningDetail, Role, ToolCall, Usage,
    message::Content,
};

use super::REASONING_FORMAT;

/// A content block of a response (or the start of one in a stream). Unknown types (server tool
/// results, citations, ...) are ignored.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Block {
    Text {
        #[serde(default)]
        text: String,
    },
    Thinking {
        #[serde(default)]
        thinking: String,
        #[serde(default)]
        signature: String,
    },
    RedactedThinking {
        #[serde(default)]
        data: String,
    },
    ToolUse {
        id: String,
        name: String,
        #[serde(default)]
        input: Value,
    },
    #[serde(other)]
    Other,
}

/// Anthropic's `usage` object. Every field is optional: `message_delta` may carry only some of
/// them, and the rest come from `message_start`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct AnthropicUsage {
    #[serde(default)]
    pub input_tokens: Option<u64>,
    #[serde(default)]
    pub cache_creation_input_tokens: Option<u64>,
    #[serde(default)]
    pub cache_read_input_tokens: Option<u64>,
    #[serde(default)]
    pub output_tokens: Option<u64>,
    #[serde(default)]
    pub output_tokens_details: Option<OutputTokensDetails>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct OutputTokensDetails {
    #[serde(default)]
    pub thinking_tokens: Option<u64>,
}

impl AnthropicUsage {
    /// Takes the fields `newer` has (stream usage is cumulative: a newer value replaces, never
    /// adds).
    pub fn merge(&mut self, newer: Self) {
        let keep = |old: &mut Option<u64>, new: Option<u64>| {
            if new.is_some() {
                *old = new;
            }
        };
        keep(&mut self.input_tokens, newer.input_tokens);
        keep(
            &mut self.cache_creation_input_tokens,
            newer.cache_creation_input_tokens,
        );
        keep(
            &mut self.cache_read_input_tokens,
            newer.cache_read_input_tokens,
        );
        keep(&mut self.output_tokens, newer.output_tokens);
        if newer.output_tokens_details.is_some() {
            self.output_tokens_details = newer.output_tokens_details;
        }
    }

    /// OpenAI's usage: prompt = input + cache writes + cache reads ("the summation", §2.2);
    /// completion = output (thinking included).
    pub fn normalise(&self) -> Usage {
        let input = self.input_tokens.unwrap_or(0);
        let written = self.cache_creation_input_tokens.unwrap_or(0);
        let read = self.cache_read_input_tokens.unwrap_or(0);
        let output = self.output_tokens.unwrap_or(0);
        let thinking = self
            .output_tokens_details
            .as_ref()
            .and_then(|d| d.thinking_tokens)
            .unwrap_or(0);
        let prompt = input.saturating_add(written).saturating_add(read);
        Usage {
            prompt_tokens: prompt,
            completion_tokens: output,
            total_tokens: prompt.saturating_add(output),
            cached_prompt_tokens: read,
            reasoning_tokens: thinking.min(output),
            cost_picodollars: None,
            cache_write_tokens: written,
        }
    }
}

/// `stop_reason` → OpenAI `finish_reason` (§7.1). Unknown reasons (new ones get added) read as
/// `stop`.
pub fn finish_reason(stop_reason: Option<&str>) -> &'static str {
    match stop_reason {
        Some("max_tokens" | "model_context_window_exceeded") => "length",
        Some("tool_use") => "tool_calls",
        Some("refusal") => "content_filter",
        // end_turn, stop_sequence, pause_turn and anything new.
        _ => "stop",
    }
}

/// A thinking block as a reasoning detail the client sends back with the assistant message.
pub fn thinking_detail(text: &str, signature: &str, index: u32) -> ReasoningDetail {
    ReasoningDetail {
        r#type: "reasoning.text".into(),
        text: Some(text.to_owned()),
        signature: Some(signature.to_owned()),
        format: Some(REASONING_FORMAT.into()),
        index: Some(index),
        ..Default::default()
    }
}

/// A redacted thinking block as a reasoning detail.
pub fn redacted_detail(data: &str, index: u32) -> ReasoningDetail {
    ReasoningDetail {
        r#type: "reasoning.encrypted".into(),
        data: Some(data.to_owned()),
        format: Some(REASONING_FORMAT.into()),
        index: Some(index),
        ..Default::default()
    }
}

/// A non-streaming Messages response.
#[derive(Debug, Deserialize)]
struct MessageResponse {
    #[serde(default)]
    id: String,
    #[serde(default)]
    model: String,
    #[serde(default)]
    content: Vec<Block>,
    #[serde(default)]
    stop_reason: Option<String>,
    #[serde(default)]
    stop_sequence: Option<String>,
    #[serde(default)]
    usage: AnthropicUsage,
}

/// A non-streaming response as one OpenAI choice.
pub fn completion(value: Value) -> Result<ChatResponse, String> {
    let response: MessageResponse =
        serde_json::from_value(value).map_err(|e| format!("unreadable response: {e}"))?;
    let mut text = String::new();
    let mut reasoning = String::new();
    let mut details = Vec::new();
    let mut tool_calls = Vec::new();
    for block in response.content {
        match block {
            Block::Text { text: t } => text.push_str(&t),
            Block::Thinking {
                thinking,
                signature,
            } => {
                reasoning.push_str(&thinking);
                let index = u32::try_from(details.len()).unwrap_or(u32::MAX);
                details.push(thinking_detail(&thinking, &signature, index));
            }
            Block::RedactedThinking { data } => {
                let index = u32::try_from(details.len()).unwrap_or(u32::MAX);
                details.push(redacted_detail(&data, index));
            }
            Block::ToolUse { id, name, input } => tool_calls.push(ToolCall {
                id,
                r#type: "function".into(),
                function: Some(FunctionCall {
                    name,
                    arguments: arguments_text(&input),
                }),
            }),
            Block::Other => {}
        }
    }
    // Content is null beside tool calls, as OpenAI sends it; otherwise a string, even empty
    // (e.g. a turn cut by max_tokens while thinking).
    let content = (!text.is_empty() || tool_calls.is_empty()).then_some(Content::Text(text));
    let message = Message {
        role: Role::Assistant.into(),
        content,
        reasoning_content: (!reasoning.is_empty()).then_some(reasoning),
        tool_calls,
        reasoning_details: details,
        ..Default::default()
    };
    Ok(ChatResponse {
        id: response.id,
        created: 0,
        model: response.model,
        choices: vec![Choice {
            index: 0,
            message: Some(message),
            finish_reason: finish_reason(response.stop_reason.as_deref()).into(),
            logprobs_json: String::new(),
            stop_sequence: response.stop_sequence,
        }],
        usage: Some(response.usage.normalise()),
        system_fingerprint: None,
        service_tier: None,
    })
}

/// `tool_use.input` as OpenAI's JSON-encoded arguments string.
fn arguments_text(input: &Value) -> String {
    match input {
        Value::Null => json!({}).to_string(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usage_sums_cache_reads_and_writes_into_the_prompt() {
        let usage: AnthropicUsage = serde_json::from_value(json!({
            "input_tokens": 10, "cache_creation_input_tokens": 200, "cache_read_input_tokens": 300,
            "output_tokens": 50, "output_tokens_details": {"thinking_tokens": 30}
        }))
        .unwrap();
        let u = usage.normalise();
        assert_eq!(
            (
                u.prompt_tokens,
                u.completion_tokens,
                u.total_tokens,
                u.cached_prompt_tokens,
                u.cache_write_tokens,
                u.reasoning_tokens
            ),
            (510, 50, 560, 300, 200, 30)
        );
    }

    #[test]
    fn later_usage_replaces_earlier_fields_it_carries() {
        let mut usage: AnthropicUsage = serde_json::from_value(json!({
            "input_tokens": 377, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 5,
            "output_tokens": 1
        }))
        .unwrap();
        usage.merge(serde_json::from_value(json!({"output_tokens": 65})).unwrap());
        let u = usage.normalise();
        assert_eq!(
            (u.prompt_tokens, u.completion_tokens, u.cached_prompt_tokens),
            (382, 65, 5)
        );
    }

    #[test]
    fn stop_reasons_map_to_finish_reasons() {
        for (stop, finish) in [
            ("end_turn", "stop"),
            ("stop_sequence", "stop"),
            ("pause_turn", "stop"),
            ("max_tokens", "length"),
            ("model_context_window_exceeded", "length"),
            ("tool_use", "tool_calls"),
            ("refusal", "content_filter"),
            ("something_new", "stop"),
        ] {
            assert_eq!(finish_reason(Some(stop)), finish, "{stop}");
        }
        assert_eq!(finish_reason(None), "stop");
    }

    #[test]
    fn blocks_become_content_tool_calls_and_reasoning() {
        let response = completion(json!({
            "id": "msg_1", "type": "message", "role": "assistant", "model": "claude-sonnet-4-5",
            "content": [
                {"type": "thinking", "thinking": "Let me look.", "signature": "sig-1"},
                {"type": "redacted_thinking", "data": "opaque"},
                {"type": "text", "text": "I'll check."},
                {"type": "tool_use", "id": "toolu_01", "name": "get_weather", "input": {"location": "Paris"}},
                {"type": "server_tool_use", "id": "srvtoolu_1", "name": "web_search", "input": {}}
            ],
            "stop_reason": "tool_use", "stop_sequence": null,
            "usage": {"input_tokens": 20, "output_tokens": 9}
        }))
        .unwrap();
        let choice = &response.choices[0];
        assert_eq!(choice.finish_reason, "tool_calls");
        let m = choice.message.as_ref().unwrap();
        assert_eq!(m.content, Some(Content::Text("I'll check.".into())));
        assert_eq!(m.reasoning_content.as_deref(), Some("Let me look."));
        assert_eq!(m.tool_calls.len(), 1);
        assert_eq!(m.tool_calls[0].id, "toolu_01");
        let f = m.tool_calls[0].function.as_ref().unwrap();
        assert_eq!(
            (f.name.as_str(), f.arguments.as_str()),
            ("get_weather", r#"{"location":"Paris"}"#)
        );
        assert_eq!(
            m.reasoning_details,
            vec![
                thinking_detail("Let me look.", "sig-1", 0),
                redacted_detail("opaque", 1)
            ]
        );
        assert_eq!(response.usage.unwrap().prompt_tokens, 20);
    }

    #[test]
    fn a_tool_only_answer_has_null_content_and_an_empty_answer_has_empty_content() {
        let tool_only = completion(json!({
            "content": [{"type": "tool_use", "id": "toolu_1", "name": "f", "input": {}}],
            "stop_reason": "tool_use", "usage": {}
        }))
        .unwrap();
        assert_eq!(tool_only.choices[0].message.as_ref().unwrap().content, None);
        let empty =
            completion(json!({"content": [], "stop_reason": "max_tokens", "usage": {}})).unwrap();
        assert_eq!(
            empty.choices[0].message.as_ref().unwrap().content,
            Some(Content::Text(String::new()))
        );
        assert_eq!(empty.choices[0].finish_reason, "length");
    }
}
