//! The MiniMax flavour (models named `MiniMax*`): MiniMax's OpenAI-compatible endpoint as
//! providers.md section 5 describes it.
//!
//! Requests: `temperature` and `top_p` must lie in (0, 1], `n` must be 1, roles are `system`,
//! `user`, `assistant` and `tool` only (no `developer`), OpenAI-only fields are refused,
//! `thinking` is `{"type": "disabled" | "adaptive"}`. With `reasoning_split: true` (and thinking
//! not disabled) every assistant message that made tool calls must come back with its
//! `reasoning_details` (MiniMax requires the complete assistant message in tool loops): that
//! makes the gateway's round trip testable. Every refusal is MiniMax-style: HTTP 200 with
//! `choices: null` and `base_resp.status_code` 2013 (invalid params).
//!
//! Replies: the model always thinks unless `thinking` is disabled (`Thinking about: <last user
//! text>`, its words counted as completion tokens; no `reasoning_tokens` detail is reported).
//! With `reasoning_split: true` the reasoning is `message.reasoning_details[0].text`, streamed
//! incrementally as `delta.reasoning_details`; without it the reasoning is inline in the content
//! as `<think>\n…\n</think>\n\n`, streamed with both tags split across chunks. Usage rides on the
//! finish chunk. Bodies carry MiniMax's extras (`base_resp`, `input_sensitive`, ...,
//! `message.name`, `audio_content`). `[base_resp=CODE]` answers HTTP 200 with that
//! `base_resp.status_code` (as the JSON body, or as the only SSE event); `[stream_error]` ends a
//! stream with a `base_resp` event (code 1000) after two content chunks.

use serde_json::{Map, Value, json};

use super::{
    error::MockError,
    request::{Answer, ChatPlan, ReasoningStyle, TOOL_ARGUMENT_FRAGMENTS},
    response::{ChunkWriter, ReplyIdentity, StreamScript, opening_fragment, tool_call, usage},
};

/// What a valid MiniMax request asked for.
#[derive(Debug, Clone, Copy)]
pub struct MiniMaxRequest {
    pub thinking: bool,
    pub reasoning_split: bool,
}

/// Fields of OpenAI's API that MiniMax does not take.
const REFUSED_FIELDS: &[&str] = &[
    "store",
    "metadata",
    "service_tier",
    "prediction",
    "verbosity",
    "modalities",
    "audio",
    "web_search_options",
    "reasoning_effort",
];

const ROLES: &[&str] = &["system", "user", "assistant", "tool"];

fn invalid(message: impl std::fmt::Display) -> MockError {
    MockError::minimax(2013, format!("invalid params, {message}"))
}

fn unit_interval(obj: &Map<String, Value>, field: &str) -> Result<(), MockError> {
    match obj.get(field).and_then(Value::as_f64) {
        Some(v) if !(v > 0.0 && v <= 1.0) => {
            Err(invalid(format!("{field} must be in (0, 1], got {v}")))
        }
        _ => Ok(()),
    }
}

pub fn validate(obj: &Map<String, Value>, messages: &[Value]) -> Result<MiniMaxRequest, MockError> {
    if let Some(field) = obj.keys().find(|k| REFUSED_FIELDS.contains(&k.as_str())) {
        return Err(invalid(format!("unknown field: {field}")));
    }
    unit_interval(obj, "temperature")?;
    unit_interval(obj, "top_p")?;
    if obj.get("n").and_then(Value::as_u64).is_some_and(|n| n != 1) {
        return Err(invalid("n only supports 1"));
    }
    for (i, message) in messages.iter().enumerate() {
        let role = message.get("role").and_then(Value::as_str).unwrap_or("");
        if !ROLES.contains(&role) {
            return Err(invalid(format!("messages[{i}].role: unknown role {role}")));
        }
    }
    let reasoning_split = match obj.get("reasoning_split") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => return Err(invalid("reasoning_split must be a boolean")),
    };
    let thinking = match obj.get("thinking") {
        None | Some(Value::Null) => true,
        Some(t) => match t.get("type").and_then(Value::as_str) {
            Some("adaptive") => true,
            Some("disabled") => false,
            _ => {
                return Err(invalid(format!(
                    "thinking.type must be disabled or adaptive, got {t}"
                )));
            }
        },
    };
    if reasoning_split && thinking {
        for (i, message) in messages.iter().enumerate() {
            let role = message.get("role").and_then(Value::as_str);
            let called = message
                .get("tool_calls")
                .and_then(Value::as_array)
                .is_some_and(|c| !c.is_empty());
            let has_reasoning = message
                .get("reasoning_details")
                .and_then(Value::as_array)
                .is_some_and(|d| {
                    d.iter().any(|e| {
                        e.get("text")
                            .and_then(Value::as_str)
                            .is_some_and(|t| !t.is_empty())
                    })
                });
            if role == Some("assistant") && called && !has_reasoning {
                return Err(invalid(format!(
                    "messages[{i}]: the assistant message with tool_calls must be passed back complete, with its reasoning_details"
                )));
            }
        }
    }
    Ok(MiniMaxRequest {
        thinking,
        reasoning_split,
    })
}

fn extras(body: &mut Value) {
    if let Some(obj) = body.as_object_mut() {
        obj.insert("input_sensitive".to_owned(), json!(false));
        obj.insert("input_sensitive_type".to_owned(), json!(0));
        obj.insert("output_sensitive".to_owned(), json!(false));
        obj.insert("output_sensitive_type".to_owned(), json!(0));
        obj.insert(
            "base_resp".to_owned(),
            json!({"status_code": 0, "status_msg": ""}),
        );
    }
}

/// The reasoning and answer as one inline `<think>` text.
fn inline_think(reasoning: &[String]) -> String {
    format!("<think>\n{}\n</think>\n\n", reasoning.concat())
}

/// The whole `chat.completion`.
pub fn completion(plan: &ChatPlan, ident: &ReplyIdentity) -> Value {
    let think_prefix = match (&plan.reasoning, plan.reasoning_style) {
        (Some(r), ReasoningStyle::Think) => inline_think(r),
        _ => String::new(),
    };
    let mut message = json!({"role": "assistant", "name": "MiniMax AI", "audio_content": ""});
    if let Some(obj) = message.as_object_mut() {
        match &plan.answer {
            Answer::Text(words) => {
                obj.insert(
                    "content".to_owned(),
                    json!(format!("{think_prefix}{}", words.concat())),
                );
            }
            Answer::ToolCall { name } => {
                obj.insert("content".to_owned(), json!(think_prefix));
                obj.insert("tool_calls".to_owned(), json!([tool_call(name, false)]));
            }
        }
        if let (Some(r), ReasoningStyle::Details) = (&plan.reasoning, plan.reasoning_style) {
            obj.insert(
                "reasoning_details".to_owned(),
                json!([{"type": "reasoning.text", "text": r.concat()}]),
            );
        }
    }
    let mut body = json!({
        "id": ident.id,
        "object": "chat.completion",
        "created": ident.created,
        "model": plan.model,
        "choices": [{"index": 0, "message": message, "finish_reason": plan.finish_reason}],
        "usage": usage(plan),
    });
    extras(&mut body);
    body
}

/// The reasoning as inline-`<think>` content fragments whose tags are split across chunks:
/// `"<thi"`, `"nk>\n" + first piece`, ..., `last piece + "\n</th"`, `"ink>\n\n"`.
pub fn split_think_fragments(reasoning: &[String]) -> Vec<String> {
    let mut fragments = vec!["<thi".to_owned()];
    let last = reasoning.len().saturating_sub(1);
    for (i, piece) in reasoning.iter().enumerate() {
        let mut fragment = String::new();
        if i == 0 {
            fragment.push_str("nk>\n");
        }
        fragment.push_str(piece);
        if i == last {
            fragment.push_str("\n</th");
        }
        fragments.push(fragment);
    }
    fragments.push("ink>\n\n".to_owned());
    fragments
}

/// The chunks of a streamed reply.
pub fn stream(plan: &ChatPlan, ident: &ReplyIdentity) -> StreamScript {
    let mut w = ChunkWriter::new(plan, ident);
    w.push_delta(json!({"role": "assistant", "content": ""}), None);
    match (&plan.reasoning, plan.reasoning_style) {
        (Some(r), ReasoningStyle::Details) => {
            for piece in r {
                w.push_delta(
                    json!({"reasoning_details": [{"type": "reasoning.text", "text": piece}]}),
                    None,
                );
            }
        }
        (Some(r), _) => {
            for fragment in split_think_fragments(r) {
                w.push_delta(json!({"content": fragment}), None);
            }
        }
        (None, _) => {}
    }
    let first_content = w.chunks.len();
    let count = match &plan.answer {
        Answer::Text(words) => {
            for word in words {
                w.push_delta(json!({"content": word}), None);
            }
            words.len()
        }
        Answer::ToolCall { name } => {
            w.push_delta(json!({"tool_calls": [opening_fragment(name)]}), None);
            for fragment in TOOL_ARGUMENT_FRAGMENTS {
                w.push_delta(
                    json!({"tool_calls": [{"index": 0, "function": {"arguments": fragment}}]}),
                    None,
                );
            }
            TOOL_ARGUMENT_FRAGMENTS.len() + 1
        }
    };
    w.push_delta(json!({}), Some(&plan.finish_reason));
    if let Some(last) = w.chunks.last_mut() {
        if let Some(obj) = last.as_object_mut() {
            obj.insert("usage".to_owned(), usage(plan));
        }
        extras(last);
    }
    StreamScript {
        chunks: w.chunks,
        fail_at: plan.stream_error.then_some(first_content + count.min(2)),
        fail_body: MockError::minimax(1000, "mock mid-stream failure").body(),
        keep_alive_comments: false,
        done: true,
    }
}
