//! An Anthropic Messages request body turned into a `tollgate.v1.ChatRequest`, so every provider
//! can serve it. The body also travels whole as the request's `native` body: an Anthropic
//! upstream gets it as written (lossless), every other upstream gets the translation.
//!
//! The translation, block by block:
//! - `system` (a string or text blocks) → one system message;
//! - user `text` → text parts; `image` (base64 or url source) → an image part (`data:` URL or
//!   the URL); `tool_result` → a tool message (its text; images in it follow in the user
//!   message), placed before the rest of that user turn; any other block (documents, ...) → an
//!   opaque part the upstream judges;
//! - assistant `text` → content; `tool_use` → a tool call (`input` as the arguments JSON);
//!   `thinking` → `reasoning_content` plus an `anthropic-claude-v1` reasoning detail with its
//!   signature (or the details a gateway signature carries, see `opaque_reasoning`);
//!   `redacted_thinking` → an encrypted reasoning detail;
//! - `tool_choice` auto/any/tool/none → auto/required/the function/none;
//!   `disable_parallel_tool_use` → `parallel_tool_calls: false`;
//! - `thinking` enabled (or adaptive) → thinking on with its `budget_tokens`; disabled → off;
//!   absent → unset, the model's default (Anthropic models do not think unless asked; a model
//!   that always thinks, elsewhere, still answers instead of refusing to be switched off). The
//!   decision itself is Inference's (`services/inference/src/thinking.rs`);
//! - `output_config.format` (json_schema) → a json_schema response format;
//! - `metadata.user_id` → `user`; `stop_sequences`, `temperature`, `top_p`, `top_k` as they are.

use serde_json::{Map, Value};
use tollgate::{
    error::ApiError,
    openai::json_type,
    v1::{
        ChatRequest, ContentPart, ContentParts, FunctionCall, FunctionDefinition, ImageUrl,
        JsonSchemaFormat, Message, NativeRequest, ReasoningDetail, ResponseFormat, Role,
        StreamOptions, Tool, ToolCall, ToolChoice, content_part::Part, message::Content,
        tool_choice::Choice,
    },
};

use crate::{
    json_fields::{array, count, field, invalid, number, object, string},
    opaque_reasoning,
};

/// `NativeRequest.protocol` of this surface, and the `format` of Anthropic's own reasoning
/// details (both read by the Anthropic provider too).
pub use tollgate::native::{ANTHROPIC_MESSAGES as NATIVE_PROTOCOL, ANTHROPIC_REASONING_FORMAT};

/// A parsed Messages request.
#[derive(Debug)]
pub struct Parsed {
    pub request: ChatRequest,
    pub stream: bool,
}

fn required_string(
    object: &Map<String, Value>,
    name: &str,
    param: &str,
) -> Result<String, ApiError> {
    string(object, name, param)?.ok_or_else(|| invalid(param, "Field required"))
}

/// Parses a Messages body. `count_only` is `count_tokens`, where `max_tokens` is not taken.
/// `beta` is the client's `anthropic-beta` header, passed on with the native body.
pub fn parse(body: Value, count_only: bool, beta: Option<&str>) -> Result<Parsed, ApiError> {
    let body_json = body.to_string();
    let Value::Object(top) = body else {
        return Err(invalid("body", "the request body must be a JSON object"));
    };
    let model = required_string(&top, "model", "model")?;
    let max_tokens = count(&top, "max_tokens", "max_tokens")?;
    if max_tokens.is_none() && !count_only {
        return Err(invalid("max_tokens", "Field required"));
    }
    let stream = match field(&top, "stream") {
        None => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => return Err(invalid("stream", "Input should be a valid boolean")),
    };

    let mut messages = Vec::new();
    if let Some(system) = field(&top, "system") {
        messages.push(system_message(system)?);
    }
    let input = field(&top, "messages").ok_or_else(|| invalid("messages", "Field required"))?;
    for (i, message) in array(input, "messages")?.iter().enumerate() {
        translate_message(message, i, &mut messages)?;
    }

    let stop = match field(&top, "stop_sequences") {
        None => vec![],
        Some(v) => array(v, "stop_sequences")?
            .iter()
            .enumerate()
            .map(|(i, s)| {
                s.as_str().map(str::to_owned).ok_or_else(|| {
                    invalid(
                        format!("stop_sequences[{i}]"),
                        "Input should be a valid string",
                    )
                })
            })
            .collect::<Result<_, _>>()?,
    };

    let (tools, tool_choice, parallel_tool_calls) = tools(&top)?;
    let (thinking, thinking_budget_tokens) = thinking(&top)?;
    let user = match field(&top, "metadata") {
        None => None,
        Some(m) => string(object(m, "metadata")?, "user_id", "metadata.user_id")?,
    };

    let request = ChatRequest {
        model,
        messages,
        temperature: number(&top, "temperature")?,
        top_p: number(&top, "top_p")?,
        top_k: count(&top, "top_k", "top_k")?,
        max_tokens,
        stop,
        stream_options: stream.then_some(StreamOptions {
            include_usage: true,
        }),
        tools,
        tool_choice,
        parallel_tool_calls,
        response_format: response_format(&top)?,
        user,
        thinking,
        thinking_budget_tokens,
        native: Some(NativeRequest {
            protocol: NATIVE_PROTOCOL.to_owned(),
            body_json,
            headers: beta
                .map(|b| [("anthropic-beta".to_owned(), b.to_owned())].into())
                .unwrap_or_default(),
        }),
        ..Default::default()
    };
    Ok(Parsed { request, stream })
}

fn system_message(system: &Value) -> Result<Message, ApiError> {
    let content = match system {
        Value::String(text) => Content::Text(text.clone()),
        Value::Array(blocks) => Content::Parts(ContentParts {
            parts: blocks
                .iter()
                .enumerate()
                .map(|(j, block)| {
                    let param = format!("system[{j}]");
                    let block = object(block, &param)?;
                    match string(block, "type", &format!("{param}.type"))?.as_deref() {
                        Some("text") => Ok(text_part(required_string(
                            block,
                            "text",
                            &format!("{param}.text"),
                        )?)),
                        _ => Err(invalid(
                            format!("{param}.type"),
                            "system blocks must be of type text",
                        )),
                    }
                })
                .collect::<Result<_, _>>()?,
        }),
        other => {
            return Err(invalid(
                "system",
                format!(
                    "Input should be a string or a list of text blocks, got {}",
                    json_type(other)
                ),
            ));
        }
    };
    Ok(Message {
        role: Role::System.into(),
        content: Some(content),
        ..Default::default()
    })
}

fn text_part(text: String) -> ContentPart {
    ContentPart {
        part: Some(Part::Text(text)),
    }
}

/// One Anthropic message as one or more v1 messages (a user turn's tool results come first, as
/// tool messages).
fn translate_message(message: &Value, i: usize, out: &mut Vec<Message>) -> Result<(), ApiError> {
    let param = format!("messages[{i}]");
    let message = object(message, &param)?;
    let role = required_string(message, "role", &format!("{param}.role"))?;
    let content = field(message, "content")
        .ok_or_else(|| invalid(format!("{param}.content"), "Field required"))?;
    let blocks: Vec<Value> = match content {
        Value::String(text) => vec![serde_json::json!({"type": "text", "text": text})],
        Value::Array(blocks) => blocks.clone(),
        other => {
            return Err(invalid(
                format!("{param}.content"),
                format!(
                    "Input should be a string or a list of content blocks, got {}",
                    json_type(other)
                ),
            ));
        }
    };
    match role.as_str() {
        "user" => user_turn(&blocks, i, out),
        "assistant" => {
            out.push(assistant_turn(&blocks, i)?);
            Ok(())
        }
        other => Err(invalid(
            format!("{param}.role"),
            format!("Input should be 'user' or 'assistant', got {other:?}"),
        )),
    }
}

fn block_type<'a>(block: &'a Map<String, Value>, param: &str) -> Result<&'a str, ApiError> {
    field(block, "type")
        .and_then(Value::as_str)
        .ok_or_else(|| invalid(format!("{param}.type"), "Field required"))
}

fn user_turn(blocks: &[Value], i: usize, out: &mut Vec<Message>) -> Result<(), ApiError> {
    let mut parts = Vec::new();
    for (j, block) in blocks.iter().enumerate() {
        let param = format!("messages[{i}].content[{j}]");
        let block_object = object(block, &param)?;
        match block_type(block_object, &param)? {
            "text" => parts.push(text_part(required_string(
                block_object,
                "text",
                &format!("{param}.text"),
            )?)),
            "image" => parts.push(image_part(block_object, &param)?),
            "tool_result" => {
                let id =
                    required_string(block_object, "tool_use_id", &format!("{param}.tool_use_id"))?;
                let (text, images) = tool_result_content(block_object, &param)?;
                // Images a tool returned have no place in a tool message: they follow in the
                // user message.
                parts.extend(images);
                out.push(Message {
                    role: Role::Tool.into(),
                    content: Some(Content::Text(text)),
                    tool_call_id: Some(id),
                    ..Default::default()
                });
            }
            _ => parts.push(ContentPart {
                part: Some(Part::OtherJson(block.to_string())),
            }),
        }
    }
    if !parts.is_empty() {
        out.push(Message {
            role: Role::User.into(),
            content: Some(Content::Parts(ContentParts { parts })),
            ..Default::default()
        });
    }
    Ok(())
}

fn image_part(block: &Map<String, Value>, param: &str) -> Result<ContentPart, ApiError> {
    let source_param = format!("{param}.source");
    let source = object(
        field(block, "source").ok_or_else(|| invalid(&source_param, "Field required"))?,
        &source_param,
    )?;
    let url = match string(source, "type", &format!("{source_param}.type"))?.as_deref() {
        Some("base64") => {
            let media_type =
                required_string(source, "media_type", &format!("{source_param}.media_type"))?;
            let data = required_string(source, "data", &format!("{source_param}.data"))?;
            format!("data:{media_type};base64,{data}")
        }
        Some("url") => required_string(source, "url", &format!("{source_param}.url"))?,
        _ => {
            return Err(invalid(
                format!("{source_param}.type"),
                "image sources must be of type base64 or url",
            ));
        }
    };
    Ok(ContentPart {
        part: Some(Part::ImageUrl(ImageUrl { url, detail: None })),
    })
}

/// A tool_result's content as the tool message's text, and the images it holds.
fn tool_result_content(
    block: &Map<String, Value>,
    param: &str,
) -> Result<(String, Vec<ContentPart>), ApiError> {
    match field(block, "content") {
        None => Ok((String::new(), vec![])),
        Some(Value::String(text)) => Ok((text.clone(), vec![])),
        Some(Value::Array(items)) => {
            let mut text = Vec::new();
            let mut images = Vec::new();
            for (k, item) in items.iter().enumerate() {
                let param = format!("{param}.content[{k}]");
                let item = object(item, &param)?;
                match block_type(item, &param)? {
                    "text" => text.push(required_string(item, "text", &format!("{param}.text"))?),
                    "image" => images.push(image_part(item, &param)?),
                    other => {
                        return Err(invalid(
                            format!("{param}.type"),
                            format!(
                                "tool_result content blocks must be text or image, got {other:?}"
                            ),
                        ));
                    }
                }
            }
            Ok((text.join("\n"), images))
        }
        Some(other) => Err(invalid(
            format!("{param}.content"),
            format!(
                "Input should be a string or a list of blocks, got {}",
                json_type(other)
            ),
        )),
    }
}

fn assistant_turn(blocks: &[Value], i: usize) -> Result<Message, ApiError> {
    let mut texts = Vec::new();
    let mut reasoning = String::new();
    let mut details: Vec<ReasoningDetail> = Vec::new();
    let mut tool_calls = Vec::new();
    for (j, block) in blocks.iter().enumerate() {
        let param = format!("messages[{i}].content[{j}]");
        let block = object(block, &param)?;
        match block_type(block, &param)? {
            "text" => texts.push(required_string(block, "text", &format!("{param}.text"))?),
            "thinking" => {
                let text =
                    string(block, "thinking", &format!("{param}.thinking"))?.unwrap_or_default();
                let signature =
                    string(block, "signature", &format!("{param}.signature"))?.unwrap_or_default();
                reasoning.push_str(&text);
                match opaque_reasoning::decode(&signature) {
                    Some(carried) => details.extend(carried),
                    None if !signature.is_empty() => details.push(ReasoningDetail {
                        r#type: "reasoning.text".into(),
                        text: Some(text),
                        signature: Some(signature),
                        format: Some(ANTHROPIC_REASONING_FORMAT.into()),
                        ..Default::default()
                    }),
                    None => {}
                }
            }
            "redacted_thinking" => details.push(ReasoningDetail {
                r#type: "reasoning.encrypted".into(),
                data: Some(required_string(block, "data", &format!("{param}.data"))?),
                format: Some(ANTHROPIC_REASONING_FORMAT.into()),
                ..Default::default()
            }),
            "tool_use" => {
                let id = required_string(block, "id", &format!("{param}.id"))?;
                let name = required_string(block, "name", &format!("{param}.name"))?;
                let input = field(block, "input")
                    .cloned()
                    .unwrap_or(Value::Object(Map::new()));
                tool_calls.push(ToolCall {
                    id,
                    r#type: "function".into(),
                    function: Some(FunctionCall {
                        name,
                        arguments: input.to_string(),
                    }),
                });
            }
            other => {
                return Err(invalid(
                    format!("{param}.type"),
                    format!(
                        "assistant content blocks must be text, thinking, redacted_thinking or tool_use, got {other:?}"
                    ),
                ));
            }
        }
    }
    for (index, detail) in details.iter_mut().enumerate() {
        detail.index = Some(u32::try_from(index).unwrap_or(u32::MAX));
    }
    // Content is null beside tool calls when there is no text (as OpenAI has it).
    let content = match texts.len() {
        0 if !tool_calls.is_empty() => None,
        0 => Some(Content::Text(String::new())),
        1 => texts.pop().map(Content::Text),
        _ => Some(Content::Parts(ContentParts {
            parts: texts.into_iter().map(text_part).collect(),
        })),
    };
    Ok(Message {
        role: Role::Assistant.into(),
        content,
        tool_calls,
        reasoning_content: (!reasoning.is_empty()).then_some(reasoning),
        reasoning_details: details,
        ..Default::default()
    })
}

/// The translated `tools`, `tool_choice` and `parallel_tool_calls`.
type ToolFields = (Vec<Tool>, Option<ToolChoice>, Option<bool>);

/// `tools`, `tool_choice` and `disable_parallel_tool_use`.
fn tools(top: &Map<String, Value>) -> Result<ToolFields, ApiError> {
    let tools = match field(top, "tools") {
        None => vec![],
        Some(tools) => array(tools, "tools")?
            .iter()
            .enumerate()
            .map(|(i, tool)| {
                let param = format!("tools[{i}]");
                let tool = object(tool, &param)?;
                let name = required_string(tool, "name", &format!("{param}.name"))?;
                // Anthropic's server tools (web_search_..., bash_..., ...) keep their type; only
                // an upstream that knows them can serve them.
                let kind = match string(tool, "type", &format!("{param}.type"))?.as_deref() {
                    None | Some("custom") => "function".to_owned(),
                    Some(other) => other.to_owned(),
                };
                Ok(Tool {
                    r#type: kind,
                    function: Some(FunctionDefinition {
                        name,
                        description: string(tool, "description", &format!("{param}.description"))?,
                        parameters_json: field(tool, "input_schema")
                            .map(Value::to_string)
                            .unwrap_or_default(),
                        strict: field(tool, "strict").and_then(Value::as_bool),
                    }),
                })
            })
            .collect::<Result<_, ApiError>>()?,
    };
    let Some(choice) = field(top, "tool_choice") else {
        return Ok((tools, None, None));
    };
    let choice = object(choice, "tool_choice")?;
    let choice_mode = match string(choice, "type", "tool_choice.type")?.as_deref() {
        Some("auto") => Choice::Mode("auto".into()),
        Some("any") => Choice::Mode("required".into()),
        Some("none") => Choice::Mode("none".into()),
        Some("tool") => Choice::FunctionName(required_string(choice, "name", "tool_choice.name")?),
        _ => {
            return Err(invalid(
                "tool_choice.type",
                "tool_choice.type must be one of auto, any, tool, none",
            ));
        }
    };
    let parallel = field(choice, "disable_parallel_tool_use")
        .and_then(Value::as_bool)
        .map(|disabled| !disabled);
    Ok((
        tools,
        Some(ToolChoice {
            choice: Some(choice_mode),
        }),
        parallel,
    ))
}

/// Whether the caller switched thinking on or off (unset: not said), and its budget.
fn thinking(top: &Map<String, Value>) -> Result<(Option<bool>, Option<u32>), ApiError> {
    let Some(thinking) = field(top, "thinking") else {
        return Ok((None, None));
    };
    let thinking = object(thinking, "thinking")?;
    match string(thinking, "type", "thinking.type")?.as_deref() {
        Some("enabled") => {
            let budget = count(thinking, "budget_tokens", "thinking.budget_tokens")?
                .ok_or_else(|| invalid("thinking.budget_tokens", "Field required"))?;
            Ok((Some(true), Some(budget)))
        }
        Some("adaptive") => Ok((Some(true), None)),
        Some("disabled") => Ok((Some(false), None)),
        _ => Err(invalid(
            "thinking.type",
            "thinking.type must be one of enabled, adaptive, disabled",
        )),
    }
}

/// `output_config.format` (structured outputs) as a json_schema response format.
fn response_format(top: &Map<String, Value>) -> Result<Option<ResponseFormat>, ApiError> {
    let format = field(top, "output_config")
        .and_then(|c| c.get("format"))
        .filter(|f| !f.is_null());
    let Some(format) = format else {
        return Ok(None);
    };
    let format = object(format, "output_config.format")?;
    match string(format, "type", "output_config.format.type")?.as_deref() {
        Some("json_schema") => {
            let schema = field(format, "schema")
                .ok_or_else(|| invalid("output_config.format.schema", "Field required"))?;
            Ok(Some(ResponseFormat {
                r#type: "json_schema".into(),
                json_schema: Some(JsonSchemaFormat {
                    name: "output".into(),
                    description: None,
                    schema_json: schema.to_string(),
                    strict: Some(true),
                }),
            }))
        }
        _ => Err(invalid(
            "output_config.format.type",
            "output_config.format.type must be json_schema",
        )),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn parse_ok(body: Value) -> ChatRequest {
        parse(body, false, None).unwrap().request
    }

    #[test]
    fn a_claude_code_request_translates_whole() {
        let body = json!({
            "model": "claude-sonnet-4-5",
            "max_tokens": 32000,
            "stream": true,
            "system": [
                {"type": "text", "text": "You are Claude Code.", "cache_control": {"type": "ephemeral"}},
                {"type": "text", "text": "Be brief."}
            ],
            "messages": [
                {"role": "user", "content": [{"type": "text", "text": "List files", "cache_control": {"type": "ephemeral"}}]},
                {"role": "assistant", "content": [
                    {"type": "thinking", "thinking": "Use ls.", "signature": "sig-1"},
                    {"type": "redacted_thinking", "data": "opaque"},
                    {"type": "text", "text": "Running ls."},
                    {"type": "tool_use", "id": "toolu_1", "name": "Bash", "input": {"command": "ls"}}
                ]},
                {"role": "user", "content": [
                    {"type": "tool_result", "tool_use_id": "toolu_1", "content": [{"type": "text", "text": "a.txt"}]},
                    {"type": "text", "text": "Now?"}
                ]}
            ],
            "tools": [{"name": "Bash", "description": "Run", "input_schema": {"type": "object", "properties": {"command": {"type": "string"}}}}],
            "tool_choice": {"type": "auto", "disable_parallel_tool_use": true},
            "thinking": {"type": "enabled", "budget_tokens": 31999},
            "metadata": {"user_id": "user_abc"},
            "temperature": 1,
            "top_k": 5,
        });
        let parsed = parse(body.clone(), false, Some("interleaved-thinking-2025-05-14")).unwrap();
        assert!(parsed.stream);
        let r = parsed.request;
        assert_eq!(r.max_tokens, Some(32000));
        assert_eq!(
            (r.thinking, r.thinking_budget_tokens),
            (Some(true), Some(31999))
        );
        assert_eq!(r.user.as_deref(), Some("user_abc"));
        assert_eq!(r.top_k, Some(5));
        assert_eq!(r.parallel_tool_calls, Some(false));
        assert!(r.stream_options.unwrap().include_usage);
        let roles: Vec<_> = r.messages.iter().map(|m| m.role()).collect();
        assert_eq!(
            roles,
            vec![
                Role::System,
                Role::User,
                Role::Assistant,
                Role::Tool,
                Role::User
            ]
        );
        let assistant = &r.messages[2];
        assert_eq!(assistant.reasoning_content.as_deref(), Some("Use ls."));
        assert_eq!(assistant.reasoning_details.len(), 2);
        assert_eq!(
            assistant.reasoning_details[0].signature.as_deref(),
            Some("sig-1")
        );
        assert_eq!(
            assistant.reasoning_details[1].data.as_deref(),
            Some("opaque")
        );
        assert_eq!(
            assistant.tool_calls[0].function.as_ref().unwrap().arguments,
            r#"{"command":"ls"}"#
        );
        assert_eq!(r.messages[3].tool_call_id.as_deref(), Some("toolu_1"));
        assert_eq!(r.messages[3].content, Some(Content::Text("a.txt".into())));
        let native = r.native.unwrap();
        assert_eq!(native.protocol, NATIVE_PROTOCOL);
        assert_eq!(
            serde_json::from_str::<Value>(&native.body_json).unwrap(),
            body
        );
        assert_eq!(
            native.headers.get("anthropic-beta").map(String::as_str),
            Some("interleaved-thinking-2025-05-14")
        );
    }

    #[test]
    fn images_tool_choices_and_structured_output() {
        let r = parse_ok(json!({
            "model": "m", "max_tokens": 5,
            "messages": [{"role": "user", "content": [
                {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBO"}},
                {"type": "image", "source": {"type": "url", "url": "https://x/y.png"}},
                {"type": "document", "source": {"type": "text", "media_type": "text/plain", "data": "d"}}
            ]}],
            "tools": [{"name": "f", "input_schema": {"type": "object"}}],
            "tool_choice": {"type": "tool", "name": "f"},
            "output_config": {"format": {"type": "json_schema", "schema": {"type": "object"}}},
            "stop_sequences": ["END"],
        }));
        let Some(Content::Parts(parts)) = &r.messages[0].content else {
            panic!()
        };
        let urls: Vec<_> = parts
            .parts
            .iter()
            .filter_map(|p| match &p.part {
                Some(Part::ImageUrl(i)) => Some(i.url.as_str()),
                _ => None,
            })
            .collect();
        assert_eq!(urls, vec!["data:image/png;base64,iVBO", "https://x/y.png"]);
        assert!(matches!(&parts.parts[2].part, Some(Part::OtherJson(j)) if j.contains("document")));
        assert_eq!(
            r.tool_choice.unwrap().choice,
            Some(Choice::FunctionName("f".into()))
        );
        assert_eq!(r.response_format.unwrap().r#type, "json_schema");
        assert_eq!(r.stop, vec!["END"]);
        assert_eq!(r.thinking, None);
    }

    #[test]
    fn gateway_signatures_bring_their_details_back() {
        let details = vec![ReasoningDetail {
            r#type: "reasoning.encrypted".into(),
            data: Some("thought".into()),
            id: Some("call_1".into()),
            format: Some("google-gemini-v1".into()),
            index: Some(0),
            ..Default::default()
        }];
        let r = parse_ok(json!({
            "model": "m", "max_tokens": 5,
            "messages": [
                {"role": "user", "content": "hi"},
                {"role": "assistant", "content": [
                    {"type": "thinking", "thinking": "", "signature": opaque_reasoning::encode(&details)},
                    {"type": "tool_use", "id": "call_1", "name": "f", "input": {}}
                ]}
            ]
        }));
        assert_eq!(r.messages[1].reasoning_details, details);
        assert_eq!(r.messages[1].content, None);
    }

    #[test]
    fn errors_name_the_field() {
        let e = parse(json!({"model": "m", "messages": []}), false, None).unwrap_err();
        assert_eq!(e.param.as_deref(), Some("max_tokens"));
        assert!(parse(json!({"model": "m", "messages": []}), true, None).is_ok());
        let e = parse(json!({"max_tokens": 1, "messages": []}), false, None).unwrap_err();
        assert_eq!(e.param.as_deref(), Some("model"));
        let e = parse(
            json!({"model": "m", "max_tokens": 1, "messages": [{"role": "system", "content": "x"}]}),
            false,
            None,
        )
        .unwrap_err();
        assert_eq!(e.param.as_deref(), Some("messages[0].role"));
        let e = parse(
            json!({"model": "m", "max_tokens": 1, "messages": [{"role": "user", "content": [{"type": "image", "source": {"type": "file"}}]}]}),
            false,
            None,
        )
        .unwrap_err();
        assert_eq!(
            e.param.as_deref(),
            Some("messages[0].content[0].source.type")
        );
        let e = parse(
            json!({"model": "m", "max_tokens": 1, "messages": [], "thinking": {"type": "enabled"}}),
            false,
            None,
        )
        .unwrap_err();
        assert_eq!(e.param.as_deref(), Some("thinking.budget_tokens"));
    }
}
