//! An OpenAI Responses request body turned into a `tollgate.v1.ChatRequest`:
//!
//! - `instructions` → a system message first; `input` as a string → one user message;
//! - `message` items (with or without `type`) → messages of their role, `input_text` /
//!   `output_text` parts → text, `input_image` → an image part, other parts → opaque parts the
//!   upstream judges;
//! - `function_call` items → tool calls of one assistant message (with the assistant text before
//!   them), `function_call_output` → tool messages;
//! - `reasoning` items → the next assistant message's `reasoning_content` (their summaries) and
//!   reasoning details (their `encrypted_content`, made by the gateway, see `opaque_reasoning`);
//! - function `tools`, `tool_choice`, `text.format` (json_schema, json_object), `reasoning.effort`,
//!   `max_output_tokens`, `temperature`, `top_p`, `parallel_tool_calls`, `user` (else
//!   `safety_identifier`), `prompt_cache_key`.
//!
//! Refused with a 400 naming the field: `previous_response_id` and `conversation` (the gateway
//! keeps no responses), `item_reference` items, `background`, `prompt` templates, tools other than
//! functions. Accepted and not acted on: `store` (nothing is stored), `include`, `metadata`,
//! `truncation`, `service_tier`, `reasoning.summary` (the upstream's reasoning is always returned
//! as the summary).

use serde_json::{Map, Value};
use tollgate::{
    error::ApiError,
    openai::ReasoningEffortJson,
    v1::{
        ChatRequest, ContentPart, ContentParts, FunctionCall, FunctionDefinition, ImageUrl,
        JsonSchemaFormat, Message, ResponseFormat, Role, StreamOptions, Tool, ToolCall, ToolChoice,
        content_part::Part, message::Content, tool_choice::Choice,
    },
};

use crate::{
    json_fields::{field, invalid, number, object, string},
    opaque_reasoning,
};

/// A parsed Responses request: the translation, whether to stream, and the request fields a
/// response object echoes.
#[derive(Debug)]
pub struct Parsed {
    pub request: ChatRequest,
    pub stream: bool,
    pub echo: Map<String, Value>,
}

/// Fields refused because they need responses the gateway does not keep (or features it lacks).
const REFUSED: [(&str, &str); 4] = [
    (
        "previous_response_id",
        "previous_response_id is not supported: this gateway does not store responses; send the \
         whole conversation in input",
    ),
    (
        "conversation",
        "conversation is not supported: this gateway does not store conversations; send the \
         whole conversation in input",
    ),
    (
        "prompt",
        "prompt templates are not supported by this gateway",
    ),
    (
        "background",
        "background responses are not supported by this gateway",
    ),
];

/// The request fields a response object repeats back.
const ECHOED: [&str; 12] = [
    "instructions",
    "max_output_tokens",
    "metadata",
    "parallel_tool_calls",
    "reasoning",
    "temperature",
    "text",
    "tool_choice",
    "tools",
    "top_p",
    "user",
    "prompt_cache_key",
];

/// The contract fields (chat completions' names, which Inference's errors use) that the Responses
/// API names otherwise, with the name a Responses caller wrote.
const RESPONSES_NAMES: [(&str, &str); 4] = [
    ("max_tokens", "max_output_tokens"),
    ("max_completion_tokens", "max_output_tokens"),
    ("reasoning_effort", "reasoning.effort"),
    ("response_format", "text.format"),
];

/// An error Inference worded about a contract field, in the words of the Responses request the
/// caller sent: its `param` and the field's name in its message are the Responses names
/// (`max_output_tokens`, not `max_tokens`). Other errors pass unchanged.
pub(crate) fn in_responses_words(mut error: ApiError) -> ApiError {
    let renamed = error.param.as_deref().and_then(|param| {
        RESPONSES_NAMES
            .iter()
            .find(|(contract, _)| *contract == param)
    });
    if let Some((contract, own)) = renamed {
        error.message = error.message.replace(contract, own);
        error.param = Some((*own).to_owned());
    }
    error
}

fn required_string(
    object: &Map<String, Value>,
    name: &str,
    param: &str,
) -> Result<String, ApiError> {
    string(object, name, param)?
        .ok_or_else(|| invalid(param, format!("Missing required parameter: '{param}'.")))
}

/// Parses a Responses body.
pub fn parse(body: Value) -> Result<Parsed, ApiError> {
    let Value::Object(top) = body else {
        return Err(invalid("body", "the request body must be a JSON object"));
    };
    for (name, message) in REFUSED {
        if field(&top, name).is_some_and(|v| v != &Value::Bool(false)) {
            return Err(invalid(name, message));
        }
    }
    let model = required_string(&top, "model", "model")?;
    let stream = field(&top, "stream")
        .and_then(Value::as_bool)
        .unwrap_or(false);

    let mut messages = Vec::new();
    if let Some(instructions) = string(&top, "instructions", "instructions")? {
        messages.push(Message {
            role: Role::System.into(),
            content: Some(Content::Text(instructions)),
            ..Default::default()
        });
    }
    match field(&top, "input") {
        None => return Err(invalid("input", "Missing required parameter: 'input'.")),
        Some(Value::String(text)) => messages.push(Message {
            role: Role::User.into(),
            content: Some(Content::Text(text.clone())),
            ..Default::default()
        }),
        Some(Value::Array(items)) => Conversation::default().build(items, &mut messages)?,
        Some(_) => {
            return Err(invalid(
                "input",
                "input must be a string or an array of items",
            ));
        }
    }

    let reasoning = field(&top, "reasoning")
        .map(|r| object(r, "reasoning"))
        .transpose()?;
    let max_output_tokens = match field(&top, "max_output_tokens") {
        None => None,
        Some(v) => Some(
            v.as_u64()
                .and_then(|n| u32::try_from(n).ok())
                .ok_or_else(|| {
                    invalid(
                        "max_output_tokens",
                        "max_output_tokens must be a positive integer",
                    )
                })?,
        ),
    };
    let user = match string(&top, "user", "user")? {
        Some(user) => Some(user),
        None => string(&top, "safety_identifier", "safety_identifier")?,
    };
    let request = ChatRequest {
        model,
        messages,
        temperature: number(&top, "temperature")?,
        top_p: number(&top, "top_p")?,
        max_tokens: max_output_tokens,
        stream_options: stream.then_some(StreamOptions {
            include_usage: true,
        }),
        tools: tools(&top)?,
        tool_choice: tool_choice(&top)?,
        parallel_tool_calls: field(&top, "parallel_tool_calls").and_then(Value::as_bool),
        response_format: text_format(&top)?,
        user,
        reasoning_effort: effort(reasoning)?,
        prompt_cache_key: string(&top, "prompt_cache_key", "prompt_cache_key")?,
        ..Default::default()
    };
    let echo = ECHOED
        .iter()
        .filter_map(|k| Some(((*k).to_owned(), top.get(*k)?.clone())))
        .collect();
    Ok(Parsed {
        request,
        stream,
        echo,
    })
}

/// The translation of `input` items, which needs to remember the assistant message being built
/// (consecutive output items of one turn are one assistant message).
#[derive(Debug, Default)]
struct Conversation {
    /// Reasoning items waiting for the assistant message they belong to.
    reasoning: String,
    details: Vec<tollgate::v1::ReasoningDetail>,
    /// Whether the last message pushed is an assistant message still open to more output items.
    assistant_open: bool,
}

impl Conversation {
    fn build(mut self, items: &[Value], out: &mut Vec<Message>) -> Result<(), ApiError> {
        for (i, item) in items.iter().enumerate() {
            let param = format!("input[{i}]");
            let item = object(item, &param)?;
            let kind = match string(item, "type", &format!("{param}.type"))? {
                Some(kind) => kind,
                None if item.contains_key("role") => "message".to_owned(),
                None => {
                    return Err(invalid(
                        format!("{param}.type"),
                        format!("{param}.type is required"),
                    ));
                }
            };
            match kind.as_str() {
                "message" => self.message(item, &param, out)?,
                "function_call" => {
                    let call = ToolCall {
                        id: required_string(item, "call_id", &format!("{param}.call_id"))?,
                        r#type: "function".into(),
                        function: Some(FunctionCall {
                            name: required_string(item, "name", &format!("{param}.name"))?,
                            arguments: string(item, "arguments", &format!("{param}.arguments"))?
                                .unwrap_or_default(),
                        }),
                    };
                    self.assistant(out).tool_calls.push(call);
                }
                "function_call_output" => {
                    self.assistant_open = false;
                    let output = match field(item, "output") {
                        Some(Value::String(text)) => text.clone(),
                        Some(Value::Array(parts)) => parts
                            .iter()
                            .filter_map(|p| p.get("text").and_then(Value::as_str))
                            .collect::<Vec<_>>()
                            .join("\n"),
                        _ => {
                            return Err(invalid(
                                format!("{param}.output"),
                                format!("{param}.output must be a string"),
                            ));
                        }
                    };
                    out.push(Message {
                        role: Role::Tool.into(),
                        content: Some(Content::Text(output)),
                        tool_call_id: Some(required_string(
                            item,
                            "call_id",
                            &format!("{param}.call_id"),
                        )?),
                        ..Default::default()
                    });
                }
                "reasoning" => {
                    let mut text = String::new();
                    if let Some(Value::Array(summary)) = field(item, "summary") {
                        for part in summary {
                            if let Some(t) = part.get("text").and_then(Value::as_str) {
                                text.push_str(t);
                            }
                        }
                    }
                    let encrypted = string(
                        item,
                        "encrypted_content",
                        &format!("{param}.encrypted_content"),
                    )?;
                    let details = encrypted
                        .and_then(|e| opaque_reasoning::decode(&e))
                        .unwrap_or_default();
                    match out.last_mut() {
                        // Reasoning state that arrived after the turn's output (a provider
                        // completing it last) belongs to that turn.
                        Some(last)
                            if self.assistant_open
                                && last.role() == Role::Assistant
                                && text.is_empty() =>
                        {
                            last.reasoning_details.extend(details);
                            renumber(&mut last.reasoning_details);
                        }
                        // Otherwise it opens the next assistant turn.
                        _ => {
                            self.reasoning.push_str(&text);
                            self.details.extend(details);
                            self.assistant_open = false;
                        }
                    }
                }
                "item_reference" => {
                    return Err(invalid(
                        format!("{param}.type"),
                        "item_reference is not supported: this gateway does not store responses; send the items themselves",
                    ));
                }
                other => {
                    return Err(invalid(
                        format!("{param}.type"),
                        format!(
                            "input items of type {other:?} are not supported; use message, function_call, function_call_output or reasoning"
                        ),
                    ));
                }
            }
        }
        Ok(())
    }

    /// The assistant message output items go into: the open one, or a new one that takes the
    /// waiting reasoning.
    fn assistant<'a>(&mut self, out: &'a mut Vec<Message>) -> &'a mut Message {
        if !self.assistant_open || out.last().is_none_or(|m| m.role() != Role::Assistant) {
            let mut details = std::mem::take(&mut self.details);
            renumber(&mut details);
            let reasoning = std::mem::take(&mut self.reasoning);
            out.push(Message {
                role: Role::Assistant.into(),
                reasoning_content: (!reasoning.is_empty()).then_some(reasoning),
                reasoning_details: details,
                ..Default::default()
            });
            self.assistant_open = true;
        }
        let last = out.len() - 1;
        &mut out[last]
    }

    fn message(
        &mut self,
        item: &Map<String, Value>,
        param: &str,
        out: &mut Vec<Message>,
    ) -> Result<(), ApiError> {
        let role_param = format!("{param}.role");
        let role = match required_string(item, "role", &role_param)?.as_str() {
            "user" => Role::User,
            "assistant" => Role::Assistant,
            "system" => Role::System,
            "developer" => Role::Developer,
            other => {
                return Err(invalid(
                    role_param,
                    format!(
                        "{param}.role must be user, assistant, system or developer, got {other:?}"
                    ),
                ));
            }
        };
        let content_param = format!("{param}.content");
        let content = match field(item, "content") {
            Some(Value::String(text)) => Content::Text(text.clone()),
            Some(Value::Array(parts)) => Content::Parts(ContentParts {
                parts: parts
                    .iter()
                    .enumerate()
                    .map(|(j, part)| content_part(part, &format!("{content_param}[{j}]")))
                    .collect::<Result<_, _>>()?,
            }),
            _ => {
                return Err(invalid(
                    &content_param,
                    format!("{content_param} must be a string or an array of content parts"),
                ));
            }
        };
        if role == Role::Assistant {
            let message = self.assistant(out);
            message.content = Some(match (message.content.take(), content) {
                (Some(Content::Text(before)), Content::Text(more)) => Content::Text(before + &more),
                (_, content) => content,
            });
        } else {
            self.assistant_open = false;
            out.push(Message {
                role: role.into(),
                content: Some(content),
                ..Default::default()
            });
        }
        Ok(())
    }
}

/// Reasoning details carry their position in the message.
fn renumber(details: &mut [tollgate::v1::ReasoningDetail]) {
    for (index, detail) in details.iter_mut().enumerate() {
        detail.index = Some(u32::try_from(index).unwrap_or(u32::MAX));
    }
}

/// `reasoning.effort`, typed as chat completions' `reasoning_effort` (the contract's enum; the
/// thinking decision is Inference's): an unknown value is a 400 naming the field.
fn effort(reasoning: Option<&Map<String, Value>>) -> Result<Option<i32>, ApiError> {
    let Some(value) = reasoning.and_then(|r| field(r, "effort")) else {
        return Ok(None);
    };
    serde_json::from_value::<ReasoningEffortJson>(value.clone())
        .map(|effort| Some(effort.to_proto().into()))
        .map_err(|e| invalid("reasoning.effort", e.to_string()))
}

fn content_part(part: &Value, param: &str) -> Result<ContentPart, ApiError> {
    let object = self::object(part, param)?;
    let part = match string(object, "type", &format!("{param}.type"))?.as_deref() {
        Some("input_text" | "output_text" | "text") => {
            Part::Text(required_string(object, "text", &format!("{param}.text"))?)
        }
        Some("refusal") => Part::Text(required_string(
            object,
            "refusal",
            &format!("{param}.refusal"),
        )?),
        Some("input_image") => {
            let url = string(object, "image_url", &format!("{param}.image_url"))?.ok_or_else(|| {
                invalid(
                    format!("{param}.image_url"),
                    "input_image needs an image_url (file ids are not supported: the gateway stores no files)",
                )
            })?;
            Part::ImageUrl(ImageUrl {
                url,
                detail: string(object, "detail", &format!("{param}.detail"))?,
            })
        }
        _ => Part::OtherJson(part.to_string()),
    };
    Ok(ContentPart { part: Some(part) })
}

fn tools(top: &Map<String, Value>) -> Result<Vec<Tool>, ApiError> {
    let Some(tools) = field(top, "tools") else {
        return Ok(vec![]);
    };
    let tools = tools
        .as_array()
        .ok_or_else(|| invalid("tools", "tools must be an array"))?;
    tools
        .iter()
        .enumerate()
        .map(|(i, tool)| {
            let param = format!("tools[{i}]");
            let tool = object(tool, &param)?;
            match string(tool, "type", &format!("{param}.type"))?.as_deref() {
                Some("function") => {}
                other => {
                    return Err(invalid(
                        format!("{param}.type"),
                        format!("only function tools are supported by this gateway, got {other:?}"),
                    ));
                }
            }
            Ok(Tool {
                r#type: "function".into(),
                function: Some(FunctionDefinition {
                    name: required_string(tool, "name", &format!("{param}.name"))?,
                    description: string(tool, "description", &format!("{param}.description"))?,
                    parameters_json: field(tool, "parameters")
                        .map(Value::to_string)
                        .unwrap_or_default(),
                    strict: field(tool, "strict").and_then(Value::as_bool),
                }),
            })
        })
        .collect()
}

fn tool_choice(top: &Map<String, Value>) -> Result<Option<ToolChoice>, ApiError> {
    let choice = match field(top, "tool_choice") {
        None => return Ok(None),
        Some(Value::String(mode)) if matches!(mode.as_str(), "auto" | "none" | "required") => {
            Choice::Mode(mode.clone())
        }
        Some(Value::Object(choice))
            if choice.get("type").and_then(Value::as_str) == Some("function") =>
        {
            Choice::FunctionName(required_string(choice, "name", "tool_choice.name")?)
        }
        Some(_) => {
            return Err(invalid(
                "tool_choice",
                "tool_choice must be auto, none, required or {\"type\": \"function\", \"name\": ...}",
            ));
        }
    };
    Ok(Some(ToolChoice {
        choice: Some(choice),
    }))
}

fn text_format(top: &Map<String, Value>) -> Result<Option<ResponseFormat>, ApiError> {
    let Some(format) = field(top, "text")
        .and_then(|t| t.get("format"))
        .filter(|f| !f.is_null())
    else {
        return Ok(None);
    };
    let format = object(format, "text.format")?;
    match string(format, "type", "text.format.type")?.as_deref() {
        Some("text") => Ok(None),
        Some("json_object") => Ok(Some(ResponseFormat {
            r#type: "json_object".into(),
            json_schema: None,
        })),
        Some("json_schema") => Ok(Some(ResponseFormat {
            r#type: "json_schema".into(),
            json_schema: Some(JsonSchemaFormat {
                name: required_string(format, "name", "text.format.name")?,
                description: string(format, "description", "text.format.description")?,
                schema_json: field(format, "schema")
                    .map(Value::to_string)
                    .unwrap_or_default(),
                strict: field(format, "strict").and_then(Value::as_bool),
            }),
        })),
        _ => Err(invalid(
            "text.format.type",
            "text.format.type must be text, json_object or json_schema",
        )),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;
    use tollgate::v1::ReasoningEffort;

    use super::*;

    #[test]
    fn inference_errors_name_the_fields_as_the_responses_caller_wrote_them() {
        let e = in_responses_words(ApiError::invalid_param(
            "max_tokens",
            "max_tokens is too large: 9. Model m supports at most 8 completion tokens",
        ));
        assert_eq!(e.param.as_deref(), Some("max_output_tokens"));
        assert!(
            e.message.starts_with("max_output_tokens is too large: 9."),
            "{e:?}"
        );
        let e = in_responses_words(ApiError::invalid_param(
            "reasoning_effort",
            "reasoning_effort is not supported with model m: it does not think",
        ));
        assert_eq!(e.param.as_deref(), Some("reasoning.effort"));
        assert!(e.message.starts_with("reasoning.effort is not"), "{e:?}");
        // A field both APIs name alike, and an error naming none, pass unchanged.
        let same = ApiError::invalid_param("temperature", "temperature must be at most 2");
        assert_eq!(in_responses_words(same.clone()), same);
        let none = ApiError::new(tollgate::error::ErrorKind::InvalidRequest, "no param");
        assert_eq!(in_responses_words(none.clone()), none);
    }

    /// A request as Codex CLI sends it, from its documented shape.
    fn codex_request() -> Value {
        json!({
            "model": "gpt-5-codex",
            "instructions": "You are Codex, a coding agent.",
            "input": [
                {"type": "message", "role": "developer", "content": [{"type": "input_text", "text": "<permissions>...</permissions>"}]},
                {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "list files"}]},
                {"type": "reasoning", "id": "rs_1", "summary": [{"type": "summary_text", "text": "Use ls."}], "encrypted_content": null},
                {"type": "function_call", "id": "fc_1", "call_id": "call_1", "name": "shell", "arguments": "{\"command\":[\"ls\"]}"},
                {"type": "function_call_output", "call_id": "call_1", "output": "a.txt"},
            ],
            "tools": [{"type": "function", "name": "shell", "description": "Runs a command", "strict": false,
                       "parameters": {"type": "object", "properties": {"command": {"type": "array", "items": {"type": "string"}}}}}],
            "tool_choice": "auto",
            "parallel_tool_calls": false,
            "reasoning": {"effort": "medium", "summary": "auto"},
            "store": false,
            "stream": true,
            "include": ["reasoning.encrypted_content"],
            "prompt_cache_key": "0198-session",
        })
    }

    #[test]
    fn a_codex_request_translates_whole() {
        let parsed = parse(codex_request()).unwrap();
        assert!(parsed.stream);
        let r = parsed.request;
        let roles: Vec<_> = r.messages.iter().map(Message::role).collect();
        assert_eq!(
            roles,
            vec![
                Role::System,
                Role::Developer,
                Role::User,
                Role::Assistant,
                Role::Tool
            ]
        );
        let assistant = &r.messages[3];
        assert_eq!(assistant.reasoning_content.as_deref(), Some("Use ls."));
        assert_eq!(assistant.content, None);
        assert_eq!(assistant.tool_calls[0].id, "call_1");
        assert_eq!(r.messages[4].tool_call_id.as_deref(), Some("call_1"));
        assert_eq!(r.reasoning_effort(), ReasoningEffort::Medium);
        assert_eq!(r.prompt_cache_key.as_deref(), Some("0198-session"));
        assert_eq!(r.parallel_tool_calls, Some(false));
        assert!(r.stream_options.unwrap().include_usage);
        assert_eq!(parsed.echo["prompt_cache_key"], "0198-session");
    }

    #[test]
    fn state_is_refused_naming_the_field() {
        let e = parse(json!({"model": "m", "input": "hi", "previous_response_id": "resp_1"}))
            .unwrap_err();
        assert_eq!(e.param.as_deref(), Some("previous_response_id"));
        let e = parse(json!({"model": "m", "input": [{"type": "item_reference", "id": "msg_1"}]}))
            .unwrap_err();
        assert_eq!(e.param.as_deref(), Some("input[0].type"));
        let e = parse(json!({"model": "m", "input": "hi", "tools": [{"type": "web_search"}]}))
            .unwrap_err();
        assert_eq!(e.param.as_deref(), Some("tools[0].type"));
        assert!(
            parse(json!({"model": "m", "input": "hi", "store": true, "background": false})).is_ok()
        );
    }

    #[test]
    fn strings_images_and_formats() {
        let r = parse(json!({
            "model": "m",
            "input": [{"role": "user", "content": [
                {"type": "input_text", "text": "what?"},
                {"type": "input_image", "image_url": "data:image/png;base64,iVBO", "detail": "low"}
            ]}],
            "text": {"format": {"type": "json_schema", "name": "answer", "schema": {"type": "object"}, "strict": true}},
            "max_output_tokens": 50,
        }))
        .unwrap()
        .request;
        let Some(Content::Parts(parts)) = &r.messages[0].content else {
            panic!()
        };
        assert!(
            matches!(&parts.parts[1].part, Some(Part::ImageUrl(i)) if i.detail.as_deref() == Some("low"))
        );
        assert_eq!(
            r.response_format.unwrap().json_schema.unwrap().name,
            "answer"
        );
        assert_eq!(r.max_tokens, Some(50));
        let r = parse(json!({"model": "m", "input": "hi"})).unwrap().request;
        assert_eq!(r.messages[0].content, Some(Content::Text("hi".into())));
    }
}
