//! The quirky OpenAI-compatible server flavour (models named `compat-*`): every deviation of
//! providers.md section 6 that vLLM, llama.cpp, Ollama, OpenRouter and LiteLLM are known for, so
//! the gateway's defensive parsing is exercised end to end.
//!
//! Requests: the `developer` role and OpenAI-only fields (`store`, `metadata`, `service_tier`,
//! `prediction`, `verbosity`) are refused with a 400, as many such servers do.
//!
//! Replies, always: tool calls are answered with `finish_reason: "stop"`; tool-call entries and
//! fragments carry no `index`; every streamed fragment repeats the call's `id`, `type` and
//! `name`; usage is sent whether or not it was requested, without token details; streams open
//! with an SSE comment (`: keep-alive`), put blank lines between events and end without
//! `data: [DONE]` (EOF after the finish chunk).
//!
//! Directives: `[reasoning=reasoning_content|reasoning|details|think]` makes the model think
//! (`Thinking about: <last user text>`, counted as completion tokens) and puts the reasoning in
//! that field (`details`: `reasoning_details[].text`; `think`: inline `<think>` tags split across
//! chunks); `[usage=null_choices|missing_choices|finish]` puts the stream's usage on a last chunk
//! with `"choices": null` (default), on a last chunk without `choices`, or on the finish chunk;
//! `[args=whole]` sends a tool call's arguments in one delta; `[stream_error]` ends the stream
//! with `data: {"error": …}` after two content chunks.

use serde_json::{Map, Value, json};

use super::{
    error::MockError,
    minimax::split_think_fragments,
    request::{
        Answer, ChatPlan, ReasoningStyle, TOOL_ARGUMENT_FRAGMENTS, TOOL_CALL_ID, UsageStyle,
    },
    response::{ChunkWriter, ReplyIdentity, StreamScript, stream_error_body, usage},
};

const REFUSED_FIELDS: &[&str] = &[
    "store",
    "metadata",
    "service_tier",
    "prediction",
    "verbosity",
];

pub fn validate(obj: &Map<String, Value>, messages: &[Value]) -> Result<(), MockError> {
    if let Some(field) = obj.keys().find(|k| REFUSED_FIELDS.contains(&k.as_str())) {
        return Err(MockError::invalid(format!(
            "[{{'type': 'extra_forbidden', 'loc': ('body', '{field}'), 'msg': 'Extra inputs are not permitted'}}]"
        )));
    }
    for (i, message) in messages.iter().enumerate() {
        if message.get("role").and_then(Value::as_str) == Some("developer") {
            return Err(MockError::invalid(format!(
                "messages[{i}]: Unexpected message role 'developer'"
            ))
            .with_param(format!("messages[{i}].role")));
        }
    }
    Ok(())
}

/// Tool calls end with `stop` on these servers.
fn finish_reason(plan: &ChatPlan) -> &str {
    if plan.finish_reason == "tool_calls" {
        "stop"
    } else {
        &plan.finish_reason
    }
}

fn call_without_index(name: &str, arguments: &str) -> Value {
    json!({"id": TOOL_CALL_ID, "type": "function", "function": {"name": name, "arguments": arguments}})
}

/// The whole `chat.completion`.
pub fn completion(plan: &ChatPlan, ident: &ReplyIdentity) -> Value {
    let mut message = Map::new();
    message.insert("role".to_owned(), json!("assistant"));
    let mut content = String::new();
    if let Some(r) = &plan.reasoning {
        let text = r.concat();
        match plan.reasoning_style {
            ReasoningStyle::ReasoningContent => {
                message.insert("reasoning_content".to_owned(), json!(text));
            }
            ReasoningStyle::Reasoning => {
                message.insert("reasoning".to_owned(), json!(text));
            }
            ReasoningStyle::Details => {
                message.insert(
                    "reasoning_details".to_owned(),
                    json!([{"type": "reasoning.text", "text": text}]),
                );
            }
            ReasoningStyle::Think => content = format!("<think>{text}</think>"),
        }
    }
    match &plan.answer {
        Answer::Text(words) => {
            content.push_str(&words.concat());
            message.insert("content".to_owned(), json!(content));
        }
        Answer::ToolCall { name } => {
            message.insert(
                "content".to_owned(),
                if content.is_empty() {
                    Value::Null
                } else {
                    json!(content)
                },
            );
            message.insert(
                "tool_calls".to_owned(),
                json!([call_without_index(name, &TOOL_ARGUMENT_FRAGMENTS.concat())]),
            );
        }
    }
    json!({
        "id": ident.id,
        "object": "chat.completion",
        "created": ident.created,
        "model": plan.model,
        "choices": [{"index": 0, "message": message, "finish_reason": finish_reason(plan)}],
        "usage": usage(plan),
    })
}

/// The chunks of a streamed reply.
pub fn stream(plan: &ChatPlan, ident: &ReplyIdentity) -> StreamScript {
    let mut w = ChunkWriter::new(plan, ident);
    w.push_delta(json!({"role": "assistant", "content": ""}), None);
    if let Some(r) = &plan.reasoning {
        match plan.reasoning_style {
            ReasoningStyle::Think => {
                for fragment in split_think_fragments(r) {
                    w.push_delta(json!({"content": fragment}), None);
                }
            }
            style => {
                for piece in r {
                    let delta = match style {
                        ReasoningStyle::Reasoning => json!({"reasoning": piece}),
                        ReasoningStyle::Details => {
                            json!({"reasoning_details": [{"type": "reasoning.text", "text": piece}]})
                        }
                        _ => json!({"reasoning_content": piece}),
                    };
                    w.push_delta(delta, None);
                }
            }
        }
    }
    let first_content = w.chunks.len();
    let count = match &plan.answer {
        Answer::Text(words) => {
            for word in words {
                w.push_delta(json!({"content": word}), None);
            }
            words.len()
        }
        Answer::ToolCall { name } if plan.whole_arguments => {
            w.push_delta(
                json!({"tool_calls": [call_without_index(name, &TOOL_ARGUMENT_FRAGMENTS.concat())]}),
                None,
            );
            1
        }
        Answer::ToolCall { name } => {
            for fragment in TOOL_ARGUMENT_FRAGMENTS {
                w.push_delta(
                    json!({"tool_calls": [call_without_index(name, fragment)]}),
                    None,
                );
            }
            TOOL_ARGUMENT_FRAGMENTS.len()
        }
    };
    w.push_delta(json!({}), Some(finish_reason(plan)));
    let mut usage_chunk = w.envelope(Value::Null);
    match plan.usage_style {
        UsageStyle::OnFinish => {
            if let Some(obj) = w.chunks.last_mut().and_then(Value::as_object_mut) {
                obj.insert("usage".to_owned(), usage(plan));
            }
        }
        UsageStyle::NullChoices | UsageStyle::MissingChoices => {
            if let Some(obj) = usage_chunk.as_object_mut() {
                if plan.usage_style == UsageStyle::MissingChoices {
                    obj.remove("choices");
                }
                obj.insert("usage".to_owned(), usage(plan));
            }
            w.chunks.push(usage_chunk);
        }
    }
    StreamScript {
        chunks: w.chunks,
        fail_at: plan.stream_error.then_some(first_content + count.min(2)),
        fail_body: stream_error_body(),
        keep_alive_comments: true,
        done: false,
    }
}
