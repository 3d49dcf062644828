//! The OpenAI request (as `tollgate.v1.ChatRequest`) turned into an Anthropic Messages request
//! body (providers.md §2.1 and §7). Every request Anthropic would refuse, or that it cannot
//! honour, is refused here with a 400 naming the OpenAI field.
//!
//! Decisions where Anthropic has no equivalent (each refused rather than silently dropped):
//! - `n > 1`, `logprobs`/`top_logprobs`, non-zero `presence_penalty`/`frequency_penalty`: 400.
//!   `seed` (best effort even at OpenAI) is dropped.
//! - `temperature > 1`: 400 (Anthropic's range is 0–1; clamping would change the sampling the
//!   caller asked for without telling them).
//! - A tool call without a tool message answering it: 400 naming `messages[i].tool_calls[j]`,
//!   as OpenAI itself answers; no result is made up.
//! - `response_format: json_object`: an instruction appended to `system` (Anthropic has no JSON
//!   mode); `json_schema` becomes `output_config.format`.
//! - Thinking: `budget_tokens` from `reasoning_effort` ([`thinking_budget`]); forced tool use or
//!   a modified temperature with thinking on: 400 (Anthropic refuses both).
//! - Of the fields the contract does not name (`extra_json`), only `top_k` is passed on.

use std::collections::{HashMap, HashSet};

use serde_json::{Map, Value, json};
use tollgate::v1::{
    ChatRequest, Message, ReasoningDetail, Role, ThinkingSupport, content_part::Part,
    message::Content, tool_choice::Choice,
};

use super::REASONING_FORMAT;
use crate::{UpstreamError, providers::Target};

/// Anthropic's smallest thinking budget.
pub const MIN_THINKING_BUDGET: u32 = 1024;

/// The image types Anthropic accepts in base64 sources.
const IMAGE_MEDIA_TYPES: [&str; 4] = ["image/jpeg", "image/png", "image/gif", "image/webp"];

/// What `response_format: json_object` adds to the system prompt.
pub const JSON_OBJECT_INSTRUCTION: &str =
    "Respond with a single valid JSON object only, with no text before or after it.";

/// The input schema of a tool declared without parameters.
fn empty_schema() -> Value {
    json!({"type": "object", "properties": {}})
}

/// The thinking budget for a `reasoning_effort`, before it is fitted under `max_tokens`:
///
/// | reasoning_effort            | budget_tokens |
/// |-----------------------------|---------------|
/// | `minimal`                   | 1024          |
/// | `low`                       | 2048          |
/// | `medium`, unset or `none`*  | 8192          |
/// | `high`                      | 16384         |
/// | `xhigh`                     | 24576         |
/// | `max`                       | 32768         |
///
/// (*) `none` reaches here only when an alias forces thinking on.
pub fn thinking_budget(effort: Option<&str>) -> Result<u32, UpstreamError> {
    Ok(match effort {
        Some("minimal") => 1024,
        Some("low") => 2048,
        None | Some("medium" | "none") => 8192,
        Some("high") => 16384,
        Some("xhigh") => 24576,
        Some("max") => 32768,
        Some(other) => {
            return Err(UpstreamError::unsupported(
                "reasoning_effort",
                format!(
                    "reasoning_effort must be one of none, minimal, low, medium, high, xhigh, max; got {other:?}"
                ),
            ));
        }
    })
}

/// Fits the budget under `max_tokens`: at most half of it (so the answer keeps room), never
/// below Anthropic's minimum, and always below `max_tokens` (else a 400 naming `param`).
fn fitted_budget(budget: u32, max_tokens: u32, param: &str) -> Result<u32, UpstreamError> {
    let fitted = budget.min((max_tokens / 2).max(MIN_THINKING_BUDGET));
    if fitted >= max_tokens {
        return Err(UpstreamError::unsupported(
            param,
            format!(
                "{param} must be above {MIN_THINKING_BUDGET} with thinking on: Anthropic needs a \
                 thinking budget of at least {MIN_THINKING_BUDGET} tokens below max_tokens"
            ),
        ));
    }
    Ok(fitted)
}

/// Whether this request runs with thinking on.
pub fn thinking_on(target: &Target<'_>) -> bool {
    let support = ThinkingSupport::try_from(target.route.thinking).unwrap_or_default();
    if support == ThinkingSupport::None {
        return false;
    }
    target
        .thinking
        .unwrap_or(support == ThinkingSupport::Always)
}

/// The Anthropic request body (without `stream`).
pub fn body(request: &ChatRequest, target: &Target<'_>) -> Result<Value, UpstreamError> {
    refuse_unsupported_fields(request)?;
    let (max_param, max_tokens) = match (request.max_completion_tokens, request.max_tokens) {
        (Some(n), _) => ("max_completion_tokens", n),
        (None, Some(n)) => ("max_tokens", n),
        // Anthropic requires max_tokens: the model's own limit is the natural default.
        (None, None) => (
            "max_tokens",
            u32::try_from(target.route.max_output_tokens)
                .unwrap_or(u32::MAX)
                .max(1),
        ),
    };
    let thinking = thinking_on(target);

    let mut body = Map::new();
    body.insert("model".into(), json!(target.route.upstream_model));
    body.insert("max_tokens".into(), json!(max_tokens));

    let mut conversation = Conversation::build(&request.messages)?;
    if let Some(format) = &request.response_format {
        match format.r#type.as_str() {
            "json_object" => conversation
                .system
                .push(json!({"type": "text", "text": JSON_OBJECT_INSTRUCTION})),
            "json_schema" => {
                let schema_json = format
                    .json_schema
                    .as_ref()
                    .map_or("", |s| s.schema_json.as_str());
                let schema = match schema_json.trim() {
                    "" => json!({"type": "object"}),
                    text => serde_json::from_str::<Value>(text)
                        .ok()
                        .filter(Value::is_object)
                        .ok_or_else(|| {
                            UpstreamError::unsupported(
                                "response_format.json_schema.schema",
                                "response_format.json_schema.schema must be a JSON object",
                            )
                        })?,
                };
                body.insert(
                    "output_config".into(),
                    json!({"format": {"type": "json_schema", "schema": schema}}),
                );
            }
            _ => {}
        }
    }
    if !conversation.system.is_empty() {
        body.insert("system".into(), Value::Array(conversation.system));
    }
    body.insert(
        "messages".into(),
        Value::Array(
            conversation
                .turns
                .into_iter()
                .map(Turn::into_json)
                .collect(),
        ),
    );

    if let Some(t) = request.temperature {
        if t > 1.0 {
            return Err(UpstreamError::unsupported(
                "temperature",
                format!("Anthropic accepts a temperature between 0 and 1, got {t}"),
            ));
        }
        if thinking && (t - 1.0).abs() > f64::EPSILON {
            return Err(UpstreamError::unsupported(
                "temperature",
                "Anthropic does not allow a temperature other than 1 with thinking on; leave \
                 temperature unset or turn thinking off (reasoning_effort: none)",
            ));
        }
        body.insert("temperature".into(), json!(t));
    }
    if let Some(p) = request.top_p {
        body.insert("top_p".into(), json!(p));
    }
    if let Some(top_k) = extra_field(request, "top_k")? {
        body.insert("top_k".into(), top_k);
    }
    if !request.stop.is_empty() {
        body.insert("stop_sequences".into(), json!(request.stop));
    }
    if let Some(user) = request.user.as_deref().filter(|u| !u.is_empty()) {
        body.insert("metadata".into(), json!({"user_id": user}));
    }

    let tools = tools(request)?;
    let choice = tool_choice(request, !tools.is_empty())?;
    if thinking
        && choice
            .as_ref()
            .and_then(|c| c.get("type"))
            .and_then(Value::as_str)
            .is_some_and(|t| t == "any" || t == "tool")
    {
        return Err(UpstreamError::unsupported(
            "tool_choice",
            "Anthropic does not allow thinking when tool_choice forces a tool call (required or \
             a named function); use tool_choice auto, or turn thinking off (reasoning_effort: none)",
        ));
    }
    if !tools.is_empty() {
        body.insert("tools".into(), Value::Array(tools));
    }
    if let Some(choice) = choice {
        body.insert("tool_choice".into(), Value::Object(choice));
    }

    if thinking {
        let budget = fitted_budget(
            thinking_budget(request.reasoning_effort.as_deref())?,
            max_tokens,
            max_param,
        )?;
        body.insert(
            "thinking".into(),
            json!({"type": "enabled", "budget_tokens": budget}),
        );
    }
    Ok(Value::Object(body))
}

/// OpenAI fields Anthropic has no way to honour.
fn refuse_unsupported_fields(request: &ChatRequest) -> Result<(), UpstreamError> {
    if request.n.is_some_and(|n| n > 1) {
        return Err(UpstreamError::unsupported(
            "n",
            "Anthropic returns one choice per request: n must be 1",
        ));
    }
    if request.logprobs == Some(true) || request.top_logprobs.is_some_and(|n| n > 0) {
        return Err(UpstreamError::unsupported(
            "logprobs",
            "Anthropic does not return log probabilities: logprobs is not supported",
        ));
    }
    for (param, value) in [
        ("presence_penalty", request.presence_penalty),
        ("frequency_penalty", request.frequency_penalty),
    ] {
        if value.is_some_and(|v| v != 0.0) {
            return Err(UpstreamError::unsupported(
                param,
                format!("Anthropic has no {param}: it is not supported"),
            ));
        }
    }
    Ok(())
}

/// One field of `extra_json` (the top-level fields the contract does not name).
fn extra_field(request: &ChatRequest, name: &str) -> Result<Option<Value>, UpstreamError> {
    if request.extra_json.trim().is_empty() {
        return Ok(None);
    }
    let extra: Map<String, Value> = serde_json::from_str(&request.extra_json)
        .map_err(|e| UpstreamError::unsupported(name, format!("unreadable extra fields: {e}")))?;
    Ok(extra.get(name).filter(|v| !v.is_null()).cloned())
}

fn tools(request: &ChatRequest) -> Result<Vec<Value>, UpstreamError> {
    request
        .tools
        .iter()
        .enumerate()
        .map(|(i, tool)| {
            let param = format!("tools[{i}].function.parameters");
            let function = tool.function.as_ref();
            let schema = match function.map_or("", |f| f.parameters_json.trim()) {
                "" => empty_schema(),
                text => {
                    let mut schema: Map<String, Value> =
                        serde_json::from_str(text).map_err(|_| {
                            UpstreamError::unsupported(
                                &param,
                                format!("{param} must be a JSON object"),
                            )
                        })?;
                    if schema.is_empty() {
                        empty_schema()
                    } else {
                        // Anthropic requires an object schema; OpenAI tolerates a missing type.
                        schema.entry("type").or_insert_with(|| json!("object"));
                        Value::Object(schema)
                    }
                }
            };
            let mut out = Map::new();
            out.insert(
                "name".into(),
                json!(function.map_or("", |f| f.name.as_str())),
            );
            if let Some(description) = function
                .and_then(|f| f.description.as_deref())
                .filter(|d| !d.is_empty())
            {
                out.insert("description".into(), json!(description));
            }
            out.insert("input_schema".into(), schema);
            if let Some(strict) = function.and_then(|f| f.strict) {
                out.insert("strict".into(), json!(strict));
            }
            Ok(Value::Object(out))
        })
        .collect()
}

fn tool_choice(
    request: &ChatRequest,
    has_tools: bool,
) -> Result<Option<Map<String, Value>>, UpstreamError> {
    let choice = request.tool_choice.as_ref().and_then(|c| c.choice.as_ref());
    let forced_without_tools = || {
        UpstreamError::unsupported(
            "tool_choice",
            "tool_choice forces a tool call but the request declares no tools",
        )
    };
    let mut out = match choice {
        None => None,
        Some(Choice::Mode(mode)) => match mode.as_str() {
            "auto" => Some(json!({"type": "auto"})),
            "none" => Some(json!({"type": "none"})),
            "required" if has_tools => Some(json!({"type": "any"})),
            "required" => return Err(forced_without_tools()),
            other => {
                return Err(UpstreamError::unsupported(
                    "tool_choice",
                    format!(
                        "tool_choice must be none, auto, required or a function, got {other:?}"
                    ),
                ));
            }
        },
        Some(Choice::FunctionName(_)) if !has_tools => return Err(forced_without_tools()),
        Some(Choice::FunctionName(name)) => Some(json!({"type": "tool", "name": name})),
        Some(Choice::OtherJson(_)) => {
            return Err(UpstreamError::unsupported(
                "tool_choice",
                "Anthropic supports tool_choice none, auto, required and a named function only",
            ));
        }
    };
    if !has_tools {
        // Nothing to choose from: Anthropic wants no tool_choice without tools.
        return Ok(None);
    }
    if request.parallel_tool_calls == Some(false) {
        let choice = out.get_or_insert_with(|| json!({"type": "auto"}));
        if choice["type"] != "none" {
            choice["disable_parallel_tool_use"] = json!(true);
        }
    }
    Ok(out.and_then(|v| match v {
        Value::Object(map) => Some(map),
        _ => None,
    }))
}

/// The text of a message whose content must be text (system, developer, tool, assistant).
fn texts(message: &Message, i: usize) -> Result<Vec<String>, UpstreamError> {
    match &message.content {
        None => Ok(vec![]),
        Some(Content::Text(text)) => Ok(vec![text.clone()]),
        Some(Content::Parts(parts)) => parts
            .parts
            .iter()
            .enumerate()
            .map(|(j, part)| match &part.part {
                Some(Part::Text(text)) => Ok(text.clone()),
                _ => Err(UpstreamError::unsupported(
                    format!("messages[{i}].content[{j}]"),
                    format!(
                        "messages[{i}].content[{j}]: only text parts are allowed in this message"
                    ),
                )),
            })
            .collect(),
    }
}

fn text_block(text: String) -> Option<Value> {
    // Anthropic rejects empty text blocks.
    (!text.is_empty()).then(|| json!({"type": "text", "text": text}))
}

fn image_block(url: &str, param: &str) -> Result<Value, UpstreamError> {
    if let Some(rest) = url.strip_prefix("data:") {
        let (header, data) = rest.split_once(',').ok_or_else(|| {
            UpstreamError::unsupported(param, format!("{param} is a data URL without a comma"))
        })?;
        let media_type = header.strip_suffix(";base64").ok_or_else(|| {
            UpstreamError::unsupported(
                param,
                format!("{param} must be a base64 data URL (data:<type>;base64,...)"),
            )
        })?;
        let media_type = media_type.to_ascii_lowercase();
        if !IMAGE_MEDIA_TYPES.contains(&media_type.as_str()) {
            return Err(UpstreamError::unsupported(
                param,
                format!(
                    "{param}: Anthropic accepts image/jpeg, image/png, image/gif and image/webp, got {media_type:?}"
                ),
            ));
        }
        return Ok(json!({
            "type": "image",
            "source": {"type": "base64", "media_type": media_type, "data": data}
        }));
    }
    let scheme = url.split_once("://").map(|(s, _)| s.to_ascii_lowercase());
    if matches!(scheme.as_deref(), Some("http" | "https")) {
        return Ok(json!({"type": "image", "source": {"type": "url", "url": url}}));
    }
    Err(UpstreamError::unsupported(
        param,
        format!("{param} must be an http(s) URL or a data URL"),
    ))
}

fn user_blocks(message: &Message, i: usize) -> Result<Vec<Value>, UpstreamError> {
    match &message.content {
        None => Ok(vec![]),
        Some(Content::Text(text)) => Ok(text_block(text.clone()).into_iter().collect()),
        Some(Content::Parts(parts)) => {
            let mut blocks = Vec::with_capacity(parts.parts.len());
            for (j, part) in parts.parts.iter().enumerate() {
                match &part.part {
                    Some(Part::Text(text)) => blocks.extend(text_block(text.clone())),
                    Some(Part::ImageUrl(image)) => blocks.push(image_block(
                        &image.url,
                        &format!("messages[{i}].content[{j}].image_url.url"),
                    )?),
                    _ => {
                        return Err(UpstreamError::unsupported(
                            format!("messages[{i}].content[{j}]"),
                            format!(
                                "messages[{i}].content[{j}]: Anthropic takes text and image_url parts only"
                            ),
                        ));
                    }
                }
            }
            Ok(blocks)
        }
    }
}

/// The thinking blocks an assistant message carried, from its `reasoning_details` of our format
/// (others came from another provider and are dropped). Anthropic needs them back exactly.
fn thinking_blocks(details: &[ReasoningDetail]) -> Vec<Value> {
    let mut ours: Vec<&ReasoningDetail> = details
        .iter()
        .filter(|d| d.format.as_deref() == Some(REASONING_FORMAT))
        .collect();
    ours.sort_by_key(|d| d.index.unwrap_or(u32::MAX));
    ours.into_iter()
        .filter_map(|d| match d.r#type.as_str() {
            "reasoning.text" => {
                // A thinking block without its signature would be refused.
                let signature = d.signature.as_deref().filter(|s| !s.is_empty())?;
                Some(json!({
                    "type": "thinking",
                    "thinking": d.text.clone().unwrap_or_default(),
                    "signature": signature,
                }))
            }
            "reasoning.encrypted" => d
                .data
                .as_deref()
                .map(|data| json!({"type": "redacted_thinking", "data": data})),
            _ => None,
        })
        .collect()
}

/// One Anthropic message being built. Consecutive OpenAI messages of the same Anthropic role
/// are merged into one.
#[derive(Debug)]
struct Turn {
    role: &'static str,
    blocks: Vec<Value>,
}

impl Turn {
    fn block_type(block: &Value) -> &str {
        block.get("type").and_then(Value::as_str).unwrap_or("")
    }

    /// The ids of this turn's blocks of `kind` under `field`.
    fn ids<'a>(&'a self, kind: &str, field: &str) -> Vec<&'a str> {
        self.blocks
            .iter()
            .filter(|b| Self::block_type(b) == kind)
            .filter_map(|b| b.get(field).and_then(Value::as_str))
            .collect()
    }

    fn into_json(self) -> Value {
        json!({"role": self.role, "content": self.blocks})
    }
}

/// The OpenAI messages as Anthropic's top-level `system` blocks and alternating turns.
#[derive(Debug)]
struct Conversation {
    system: Vec<Value>,
    turns: Vec<Turn>,
}

impl Conversation {
    fn build(messages: &[Message]) -> Result<Self, UpstreamError> {
        let mut system = Vec::new();
        let mut turns: Vec<Turn> = Vec::new();
        // Where each tool call and tool result came from, for error messages.
        let mut call_origin: HashMap<String, String> = HashMap::new();
        let mut result_origin: HashMap<String, String> = HashMap::new();
        for (i, message) in messages.iter().enumerate() {
            let role = Role::try_from(message.role).unwrap_or(Role::Unspecified);
            let (anthropic_role, blocks) = match role {
                Role::System | Role::Developer => {
                    system.extend(texts(message, i)?.into_iter().filter_map(text_block));
                    continue;
                }
                Role::User => ("user", user_blocks(message, i)?),
                Role::Tool => {
                    let id = message.tool_call_id.clone().unwrap_or_default();
                    result_origin
                        .entry(id.clone())
                        .or_insert_with(|| format!("messages[{i}].tool_call_id"));
                    let content = texts(message, i)?.concat();
                    let mut block = json!({"type": "tool_result", "tool_use_id": id});
                    if !content.is_empty() {
                        block["content"] = json!(content);
                    }
                    ("user", vec![block])
                }
                Role::Assistant => {
                    let mut blocks = thinking_blocks(&message.reasoning_details);
                    blocks.extend(texts(message, i)?.into_iter().filter_map(text_block));
                    for (j, call) in message.tool_calls.iter().enumerate() {
                        let param = format!("messages[{i}].tool_calls[{j}]");
                        if call.id.is_empty() {
                            return Err(UpstreamError::unsupported(
                                format!("{param}.id"),
                                format!("{param}.id is required"),
                            ));
                        }
                        let (name, arguments) = call
                            .function
                            .as_ref()
                            .map_or(("", ""), |f| (f.name.as_str(), f.arguments.as_str()));
                        let input = tool_input(arguments, &param)?;
                        call_origin.insert(call.id.clone(), param);
                        blocks.push(json!({
                            "type": "tool_use", "id": call.id, "name": name, "input": input
                        }));
                    }
                    ("assistant", blocks)
                }
                Role::Unspecified => {
                    return Err(UpstreamError::unsupported(
                        format!("messages[{i}].role"),
                        format!("messages[{i}].role is not set"),
                    ));
                }
            };
            if blocks.is_empty() {
                // Anthropic refuses empty messages; an empty one carries nothing anyway.
                continue;
            }
            match turns.last_mut() {
                Some(last) if last.role == anthropic_role => last.blocks.extend(blocks),
                _ => turns.push(Turn {
                    role: anthropic_role,
                    blocks,
                }),
            }
        }
        if turns.is_empty() {
            return Err(UpstreamError::unsupported(
                "messages",
                "messages must contain a user or assistant message with non-empty content",
            ));
        }
        for turn in &mut turns {
            // tool_result blocks first in a user turn, thinking first in an assistant turn; the
            // rest keeps its order (a stable sort).
            let leads: &[&str] = if turn.role == "user" {
                &["tool_result"]
            } else {
                &["thinking", "redacted_thinking"]
            };
            turn.blocks
                .sort_by_key(|b| !leads.contains(&Turn::block_type(b)));
        }
        check_tool_pairs(&turns, &call_origin, &result_origin)?;
        Ok(Self { system, turns })
    }
}

/// `function.arguments` as the JSON object `tool_use.input` must be. An empty string is a call
/// without arguments.
fn tool_input(arguments: &str, param: &str) -> Result<Value, UpstreamError> {
    let param = format!("{param}.function.arguments");
    if arguments.trim().is_empty() {
        return Ok(json!({}));
    }
    match serde_json::from_str::<Value>(arguments) {
        Ok(value @ Value::Object(_)) => Ok(value),
        Ok(_) => Err(UpstreamError::unsupported(
            &param,
            format!("{param} must encode a JSON object"),
        )),
        Err(e) => Err(UpstreamError::unsupported(
            &param,
            format!("{param} is not valid JSON: {e}"),
        )),
    }
}

/// Every tool call must be answered in the very next turn and every answer must belong to a call
/// of the turn before (Anthropic refuses both otherwise, and so does OpenAI).
fn check_tool_pairs(
    turns: &[Turn],
    call_origin: &HashMap<String, String>,
    result_origin: &HashMap<String, String>,
) -> Result<(), UpstreamError> {
    for (t, turn) in turns.iter().enumerate() {
        if turn.role == "assistant" {
            let answered: HashSet<&str> = turns
                .get(t + 1)
                .map(|next| next.ids("tool_result", "tool_use_id"))
                .unwrap_or_default()
                .into_iter()
                .collect();
            for id in turn.ids("tool_use", "id") {
                if !answered.contains(id) {
                    let param = call_origin.get(id).cloned().unwrap_or_default();
                    return Err(UpstreamError::unsupported(
                        param.clone(),
                        format!(
                            "{param} (id {id}) has no tool message answering it: every tool call \
                             must be followed by a tool message with its tool_call_id"
                        ),
                    ));
                }
            }
        } else {
            let made: HashSet<&str> = t
                .checked_sub(1)
                .and_then(|p| turns.get(p))
                .map(|prev| prev.ids("tool_use", "id"))
                .unwrap_or_default()
                .into_iter()
                .collect();
            for id in turn.ids("tool_result", "tool_use_id") {
                if !made.contains(id) {
                    let param = result_origin.get(id).cloned().unwrap_or_default();
                    return Err(UpstreamError::unsupported(
                        param.clone(),
                        format!(
                            "{param} ({id}) answers no tool call of the assistant message \
                             right before it"
                        ),
                    ));
                }
            }
        }
    }
    Ok(())
}
