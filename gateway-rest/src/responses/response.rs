//! The Responses API's response object: output items as the official SDK types them (`reasoning`
//! with the upstream's reasoning as its summary and the provider's reasoning state in
//! `encrypted_content`, `message` with one `output_text` part, `function_call`), `status`
//! (`incomplete` with `incomplete_details` for a cut answer), `usage` with its details and the
//! cost, and the request fields a response repeats.

use serde_json::{Map, Value, json};
use tollgate::{
    money,
    v1::{ChatResponse, ReasoningDetail, Usage, content_part::Part, message::Content},
};

use crate::opaque_reasoning;

/// The ids of one response and its items, from the gateway's request id (`chatcmpl-<hex>`).
#[derive(Debug, Clone)]
pub struct Ids {
    hex: String,
}

impl Ids {
    pub fn new(request_id: &str) -> Self {
        Self {
            hex: request_id
                .strip_prefix("chatcmpl-")
                .unwrap_or(request_id)
                .to_owned(),
        }
    }

    pub fn response(&self) -> String {
        format!("resp_{}", self.hex)
    }

    pub fn reasoning(&self, output_index: usize) -> String {
        format!("rs_{}_{output_index}", self.hex)
    }

    pub fn message(&self, output_index: usize) -> String {
        format!("msg_{}_{output_index}", self.hex)
    }
}

/// `fc_...` for a tool call id.
pub fn function_call_id(call_id: &str) -> String {
    format!("fc_{call_id}")
}

/// `(status, incomplete_details)` for a finish reason.
pub fn status(finish_reason: Option<&str>) -> (&'static str, Value) {
    match finish_reason {
        Some("length") => ("incomplete", json!({"reason": "max_output_tokens"})),
        Some("content_filter") => ("incomplete", json!({"reason": "content_filter"})),
        _ => ("completed", Value::Null),
    }
}

/// The Responses usage object (input includes cached tokens, as OpenAI counts them).
pub fn usage(usage: &Usage) -> Value {
    let mut input_details = json!({"cached_tokens": usage.cached_prompt_tokens});
    if usage.cache_write_tokens > 0 {
        input_details["cache_write_tokens"] = json!(usage.cache_write_tokens);
    }
    let mut out = json!({
        "input_tokens": usage.prompt_tokens,
        "input_tokens_details": input_details,
        "output_tokens": usage.completion_tokens,
        "output_tokens_details": {"reasoning_tokens": usage.reasoning_tokens},
        "total_tokens": usage.total_tokens,
    });
    if let Some(pico) = usage.cost_picodollars {
        out["cost"] = money::json_number(&money::format_picodollars(pico));
    }
    out
}

/// A reasoning item: the reasoning text as its summary, the provider's details as its
/// `encrypted_content` (sent back by the client in the next request's input).
pub fn reasoning_item(id: &str, text: &str, details: &[ReasoningDetail]) -> Value {
    let summary: Vec<Value> = if text.is_empty() {
        vec![]
    } else {
        vec![json!({"type": "summary_text", "text": text})]
    };
    let encrypted = opaque_reasoning::encode(details);
    json!({
        "id": id,
        "type": "reasoning",
        "summary": summary,
        "encrypted_content": (!encrypted.is_empty()).then_some(encrypted),
        "status": "completed",
    })
}

pub fn output_text(text: &str) -> Value {
    json!({"type": "output_text", "text": text, "annotations": [], "logprobs": []})
}

pub fn message_item(id: &str, text: &str, status: &str) -> Value {
    json!({
        "id": id,
        "type": "message",
        "status": status,
        "role": "assistant",
        "content": if status == "in_progress" { json!([]) } else { json!([output_text(text)]) },
    })
}

pub fn function_call_item(call_id: &str, name: &str, arguments: &str, status: &str) -> Value {
    json!({
        "id": function_call_id(call_id),
        "type": "function_call",
        "status": status,
        "call_id": call_id,
        "name": name,
        "arguments": arguments,
    })
}

/// What every state of one response shares: its ids, creation time, model and the request
/// fields it repeats.
#[derive(Debug, Clone)]
pub struct Envelope {
    pub ids: Ids,
    pub created_at: i64,
    pub model: String,
    pub echo: Map<String, Value>,
}

impl Envelope {
    /// The response object around `output`.
    pub fn object(
        &self,
        status: &str,
        incomplete_details: Value,
        output: Vec<Value>,
        usage: Option<Value>,
    ) -> Value {
        let get = |k: &str, default: Value| self.echo.get(k).cloned().unwrap_or(default);
        json!({
            "id": self.ids.response(),
            "object": "response",
            "created_at": self.created_at,
            "status": status,
            "error": null,
            "incomplete_details": incomplete_details,
            "instructions": get("instructions", Value::Null),
            "max_output_tokens": get("max_output_tokens", Value::Null),
            "metadata": get("metadata", json!({})),
            "model": self.model,
            "output": output,
            "parallel_tool_calls": get("parallel_tool_calls", json!(true)),
            "previous_response_id": null,
            "prompt_cache_key": get("prompt_cache_key", Value::Null),
            "reasoning": get("reasoning", json!({"effort": null, "summary": null})),
            "store": false,
            "temperature": get("temperature", Value::Null),
            "text": get("text", json!({"format": {"type": "text"}})),
            "tool_choice": get("tool_choice", json!("auto")),
            "tools": get("tools", json!([])),
            "top_p": get("top_p", Value::Null),
            "truncation": "disabled",
            "usage": usage,
            "user": get("user", Value::Null),
        })
    }
}

/// The response object for a whole answer.
pub fn response(response: &ChatResponse, echo: Map<String, Value>) -> Value {
    let ids = Ids::new(&response.id);
    let choice = response.choices.first();
    let mut output = Vec::new();
    if let Some(m) = choice.and_then(|c| c.message.as_ref()) {
        let reasoning = m.reasoning_content.as_deref().unwrap_or_default();
        if !reasoning.is_empty() || !m.reasoning_details.is_empty() {
            output.push(reasoning_item(
                &ids.reasoning(output.len()),
                reasoning,
                &m.reasoning_details,
            ));
        }
        let text = match &m.content {
            Some(Content::Text(text)) => text.clone(),
            Some(Content::Parts(parts)) => parts
                .parts
                .iter()
                .filter_map(|p| match &p.part {
                    Some(Part::Text(t)) => Some(t.as_str()),
                    _ => None,
                })
                .collect(),
            None => String::new(),
        };
        if let Some(refusal) = m.refusal.as_deref().filter(|r| !r.is_empty()) {
            output.push(json!({
                "id": ids.message(output.len()),
                "type": "message",
                "status": "completed",
                "role": "assistant",
                "content": [{"type": "refusal", "refusal": refusal}],
            }));
        } else if !text.is_empty() || m.tool_calls.is_empty() {
            output.push(message_item(&ids.message(output.len()), &text, "completed"));
        }
        for call in &m.tool_calls {
            let f = call.function.clone().unwrap_or_default();
            output.push(function_call_item(
                &call.id,
                &f.name,
                &f.arguments,
                "completed",
            ));
        }
    }
    let (status, incomplete) = status(choice.map(|c| c.finish_reason.as_str()));
    let envelope = Envelope {
        ids,
        created_at: response.created,
        model: response.model.clone(),
        echo,
    };
    envelope.object(
        status,
        incomplete,
        output,
        response.usage.as_ref().map(usage),
    )
}

#[cfg(test)]
mod tests {
    use tollgate::v1::{Choice, FunctionCall, Message, ToolCall};

    use super::*;

    #[test]
    fn reasoning_text_and_calls_become_items() {
        let r = ChatResponse {
            id: "chatcmpl-0af".into(),
            created: 7,
            model: "m".into(),
            choices: vec![Choice {
                message: Some(Message {
                    content: Some(Content::Text("Sure.".into())),
                    reasoning_content: Some("Hmm.".into()),
                    tool_calls: vec![ToolCall {
                        id: "call_1".into(),
                        r#type: "function".into(),
                        function: Some(FunctionCall {
                            name: "f".into(),
                            arguments: "{}".into(),
                        }),
                    }],
                    ..Default::default()
                }),
                finish_reason: "tool_calls".into(),
                ..Default::default()
            }],
            usage: Some(Usage {
                prompt_tokens: 10,
                completion_tokens: 5,
                total_tokens: 15,
                cached_prompt_tokens: 4,
                reasoning_tokens: 2,
                cost_picodollars: Some(1),
                ..Default::default()
            }),
            ..Default::default()
        };
        let v = response(&r, Map::new());
        assert_eq!(v["id"], "resp_0af");
        assert_eq!(v["status"], "completed");
        let types: Vec<_> = v["output"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["type"].as_str().unwrap())
            .collect();
        assert_eq!(types, vec!["reasoning", "message", "function_call"]);
        assert_eq!(v["output"][0]["summary"][0]["text"], "Hmm.");
        assert_eq!(v["output"][0]["encrypted_content"], Value::Null);
        assert_eq!(v["output"][1]["content"][0]["text"], "Sure.");
        assert_eq!(v["output"][2]["call_id"], "call_1");
        assert_eq!(
            v["usage"],
            json!({"input_tokens": 10, "input_tokens_details": {"cached_tokens": 4},
                   "output_tokens": 5, "output_tokens_details": {"reasoning_tokens": 2},
                   "total_tokens": 15, "cost": 0.000000000001})
        );
    }

    #[test]
    fn a_cut_answer_is_incomplete() {
        assert_eq!(
            status(Some("length")),
            ("incomplete", json!({"reason": "max_output_tokens"}))
        );
        assert_eq!(status(Some("stop")).0, "completed");
    }
}
