//! The OpenAI request (as `tollgate.v1.ChatRequest`) turned into an Anthropic Messages request
//! body (providers.md §2.1 and §7). Every request Anthropic would refuse, or that it cannot
//! honour, is refused here with a 400 naming the OpenAI field.
//!
//! Decisions where Anthropic has no equivalent (each refused rather than silently dropped):
//! - `n > 1`, `logprobs`/`top_logprobs`, non-zero `presence_penalty`/`frequency_penalty`: 400.
//!   `seed` (best effort even at OpenAI) is dropped.
//! - `temperature > 1`: 400 (Anthropic's range is 0–1; clamping would change the sampling the
//!   caller asked for without telling them).
//! - A tool call without a tool message answering it is refused before this, for every provider
//!   (`crate::validate`); no result is made up.
//! - `response_format: json_object`: an instruction appended to `system` (Anthropic has no JSON
//!   mode); `json_schema` becomes `output_config.format`.
//! - Thinking: the caller's own `budget_tokens` as given, else one from `reasoning_effort`
//!   ([`thinking_budget`]); forced tool use or a modified temperature with thinking on: 400
//!   (Anthropic refuses both). A tool loop whose assistant turn came back without its signed
//!   thinking (the client dropped `reasoning_details`, as most OpenAI clients do) is sent with
//!   thinking off, as Anthropic's own error advises ("To avoid this requirement, disable
//!   `thinking`"); the loop goes on, without thinking until the next user turn.
//! - `top_k`: the contract's field, else (chat completions) the one field of `extra_json` passed
//!   on.
//!
//! A request that arrived on the gateway's own Messages API carries the client's body
//! (`ChatRequest.native`); [`native_body`] sends it as written instead ([`Body::Native`]).

use serde::Serialize;
use serde_json::{Map, Value, json};
use tollgate::v1::{
    ChatRequest, Message, ReasoningDetail, ReasoningEffort, Role, content_part::Part,
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

/// What is POSTed to `/messages`: the body built from the contract's fields, or the client's
/// own (see [`native_body`]).
#[derive(Debug, Serialize)]
#[serde(untagged)]
pub enum Body<'a> {
    Built(Box<MessagesRequest<'a>>),
    Native(Map<String, Value>),
}

impl Body<'_> {
    /// Marks the body as a streaming call.
    pub fn stream(&mut self) {
        match self {
            Self::Built(body) => body.stream = Some(true),
            Self::Native(body) => {
                body.insert("stream".into(), Value::Bool(true));
            }
        }
    }
}

/// The upstream body for `request`: the client's own when it came in Anthropic's protocol.
pub fn upstream_body<'a>(
    request: &'a ChatRequest,
    target: &Target<'a>,
) -> Result<Body<'a>, UpstreamError> {
    match super::native(request) {
        Some(native) => native_body(&native.body_json, target).map(Body::Native),
        None => body(request, target).map(|body| Body::Built(Box::new(body))),
    }
}

/// An Anthropic Messages request body. Fields serialise in this order (the order the wire
/// fixtures show); unset ones are left out.
#[derive(Debug, Serialize)]
pub struct MessagesRequest<'a> {
    model: &'a str,
    max_tokens: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    output_config: Option<OutputConfig>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    system: Vec<Block>,
    messages: Vec<Turn>,
    #[serde(skip_serializing_if = "Option::is_none")]
    temperature: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    top_p: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    top_k: Option<Value>,
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    stop_sequences: &'a [String],
    #[serde(skip_serializing_if = "Option::is_none")]
    metadata: Option<Metadata<'a>>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    tools: Vec<ToolDefinition<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tool_choice: Option<ToolChoice<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    thinking: Option<Thinking>,
    /// Set for streaming calls.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stream: Option<bool>,
}

/// `output_config`: structured output.
#[derive(Debug, Serialize)]
struct OutputConfig {
    format: OutputFormat,
}

#[derive(Debug, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum OutputFormat {
    JsonSchema { schema: Value },
}

#[derive(Debug, Serialize)]
struct Metadata<'a> {
    user_id: &'a str,
}

/// `thinking`: on, with a budget (off is the absence of the field).
#[derive(Debug, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum Thinking {
    Enabled { budget_tokens: u32 },
}

#[derive(Debug, Serialize)]
struct ToolDefinition<'a> {
    name: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    description: Option<&'a str>,
    input_schema: Value,
    #[serde(skip_serializing_if = "Option::is_none")]
    strict: Option<bool>,
}

#[derive(Debug, Serialize)]
struct ToolChoice<'a> {
    #[serde(rename = "type")]
    kind: ToolChoiceKind,
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    disable_parallel_tool_use: Option<bool>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
enum ToolChoiceKind {
    Auto,
    None,
    /// Some tool must be called (OpenAI's `required`).
    Any,
    /// The named tool must be called.
    Tool,
}

impl ToolChoice<'_> {
    fn of(kind: ToolChoiceKind) -> Self {
        Self {
            kind,
            name: None,
            disable_parallel_tool_use: None,
        }
    }
}

/// A content block of a message or of `system`.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum Block {
    Text {
        text: String,
    },
    Image {
        source: ImageSource,
    },
    ToolUse {
        id: String,
        name: String,
        input: Value,
    },
    ToolResult {
        tool_use_id: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        content: Option<String>,
    },
    Thinking {
        thinking: String,
        signature: String,
    },
    RedactedThinking {
        data: String,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum ImageSource {
    Base64 { media_type: String, data: String },
    Url { url: String },
}

/// The two roles of Anthropic messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
enum TurnRole {
    User,
    Assistant,
}

/// The thinking budget for a `reasoning_effort`, before it is fitted under `max_tokens`:
///
/// | reasoning_effort            | budget_tokens |
/// |-----------------------------|---------------|
/// | `minimal`                   | 1024          |
/// | `low`                       | 2048          |
/// | `medium` or unset*          | 8192          |
/// | `high`                      | 16384         |
/// | `xhigh`                     | 24576         |
/// | `max`                       | 32768         |
///
/// (*) Unset: thinking switched on by an alias, by `thinking`, or by the model's default (an
/// alias that forces thinking on also turns a `none` effort into unset).
pub fn thinking_budget(effort: Option<ReasoningEffort>) -> u32 {
    match effort {
        Some(ReasoningEffort::Minimal) => 1024,
        Some(ReasoningEffort::Low) => 2048,
        Some(ReasoningEffort::High) => 16384,
        Some(ReasoningEffort::Xhigh) => 24576,
        Some(ReasoningEffort::Max) => 32768,
        Some(ReasoningEffort::Medium | ReasoningEffort::None | ReasoningEffort::Unspecified)
        | None => 8192,
    }
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

/// The Anthropic request body (`stream` unset).
pub fn body<'a>(
    request: &'a ChatRequest,
    target: &Target<'a>,
) -> Result<MessagesRequest<'a>, UpstreamError> {
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
    let mut conversation = Conversation::build(&request.messages)?;
    // Anthropic thinks only when asked: a model whose default is thinking is asked too. Not when
    // the tool loop in progress lost its signed thinking (a client that drops reasoning):
    // Anthropic refuses that turn with thinking on and documents turning it off as the way out.
    let thinking = target.thinking.is_on() && !conversation.tool_loop_lost_its_thinking();
    if target.thinking.is_on() && !thinking {
        tracing::debug!(
            "the tool loop's assistant turn carries no thinking block: thinking off for this request"
        );
    }
    let mut output_config = None;
    if let Some(format) = &request.response_format {
        match format.r#type.as_str() {
            "json_object" => conversation.system.push(Block::Text {
                text: JSON_OBJECT_INSTRUCTION.to_owned(),
            }),
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
                output_config = Some(OutputConfig {
                    format: OutputFormat::JsonSchema { schema },
                });
            }
            _ => {}
        }
    }

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
    }

    let tools = tools(request)?;
    let tool_choice = tool_choice(request, !tools.is_empty())?;
    if thinking
        && tool_choice
            .as_ref()
            .is_some_and(|c| matches!(c.kind, ToolChoiceKind::Any | ToolChoiceKind::Tool))
    {
        return Err(UpstreamError::unsupported(
            "tool_choice",
            "Anthropic does not allow thinking when tool_choice forces a tool call (required or \
             a named function); use tool_choice auto, or turn thinking off (reasoning_effort: none)",
        ));
    }

    let thinking = if thinking {
        let budget = match target.thinking.budget_tokens() {
            // The caller's own budget is sent as given: Anthropic judges it.
            Some(budget) => budget,
            None => fitted_budget(
                thinking_budget(target.thinking.effort()),
                max_tokens,
                max_param,
            )?,
        };
        Some(Thinking::Enabled {
            budget_tokens: budget,
        })
    } else {
        None
    };
    Ok(MessagesRequest {
        model: &target.route.upstream_model,
        max_tokens,
        output_config,
        system: conversation.system,
        messages: conversation.turns,
        temperature: request.temperature,
        top_p: request.top_p,
        top_k: match request.top_k {
            Some(top_k) => Some(top_k.into()),
            None => extra_field(request, "top_k")?,
        },
        stop_sequences: &request.stop,
        metadata: request
            .user
            .as_deref()
            .filter(|u| !u.is_empty())
            .map(|user_id| Metadata { user_id }),
        tools,
        tool_choice,
        thinking,
        stream: None,
    })
}

/// The body of a request that arrived on Anthropic's own Messages API (`native`), sent as the
/// client wrote it so nothing the translation does not name is lost: only the model (the
/// route's upstream model) and `stream` (the call's) are replaced, and thinking is switched off
/// or on where the decision (`crate::thinking`, e.g. an alias) goes against what the client
/// asked.
pub fn native_body(
    body_json: &str,
    target: &Target<'_>,
) -> Result<Map<String, Value>, UpstreamError> {
    let mut body: Map<String, Value> = serde_json::from_str(body_json).map_err(|e| {
        UpstreamError::unsupported(
            "body",
            format!("the request body is not a JSON object: {e}"),
        )
    })?;
    body.insert("model".into(), json!(target.route.upstream_model));
    body.remove("stream");
    let asked = body
        .get("thinking")
        .and_then(|t| t.get("type"))
        .and_then(Value::as_str)
        .is_some_and(|t| t != "disabled");
    let thinking = target.thinking.is_on();
    if asked && !thinking {
        body.remove("thinking");
    } else if thinking && !asked {
        let budget = match target.thinking.budget_tokens() {
            Some(budget) => budget,
            None => {
                let max_tokens = body
                    .get("max_tokens")
                    .and_then(Value::as_u64)
                    .and_then(|n| u32::try_from(n).ok())
                    .unwrap_or(u32::MAX);
                fitted_budget(
                    thinking_budget(target.thinking.effort()),
                    max_tokens,
                    "max_tokens",
                )?
            }
        };
        let thinking = Thinking::Enabled {
            budget_tokens: budget,
        };
        body.insert("thinking".into(), json!(thinking));
    }
    Ok(body)
}

/// The body of a `count_tokens` call for `request`: the fields Anthropic counts (not
/// `max_tokens`, `stream` nor sampling parameters).
pub fn count_tokens_body(
    request: &ChatRequest,
    target: &Target<'_>,
) -> Result<Map<String, Value>, UpstreamError> {
    const COUNTED: [&str; 6] = [
        "model",
        "messages",
        "system",
        "tools",
        "tool_choice",
        "thinking",
    ];
    let full = serde_json::to_value(upstream_body(request, target)?).map_err(|e| {
        UpstreamError::unsupported("body", format!("the request cannot be encoded: {e}"))
    })?;
    let Value::Object(mut body) = full else {
        return Ok(Map::new());
    };
    body.retain(|k, _| COUNTED.contains(&k.as_str()));
    Ok(body)
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

fn tools(request: &ChatRequest) -> Result<Vec<ToolDefinition<'_>>, UpstreamError> {
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
            Ok(ToolDefinition {
                name: function.map_or("", |f| f.name.as_str()),
                description: function
                    .and_then(|f| f.description.as_deref())
                    .filter(|d| !d.is_empty()),
                input_schema: schema,
                strict: function.and_then(|f| f.strict),
            })
        })
        .collect()
}

fn tool_choice(
    request: &ChatRequest,
    has_tools: bool,
) -> Result<Option<ToolChoice<'_>>, UpstreamError> {
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
            "auto" => Some(ToolChoice::of(ToolChoiceKind::Auto)),
            "none" => Some(ToolChoice::of(ToolChoiceKind::None)),
            "required" if has_tools => Some(ToolChoice::of(ToolChoiceKind::Any)),
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
        Some(Choice::FunctionName(name)) => Some(ToolChoice {
            name: Some(name),
            ..ToolChoice::of(ToolChoiceKind::Tool)
        }),
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
        let choice = out.get_or_insert_with(|| ToolChoice::of(ToolChoiceKind::Auto));
        if choice.kind != ToolChoiceKind::None {
            choice.disable_parallel_tool_use = Some(true);
        }
    }
    Ok(out)
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

fn text_block(text: String) -> Option<Block> {
    // Anthropic rejects empty text blocks.
    (!text.is_empty()).then_some(Block::Text { text })
}

fn image_block(url: &str, param: &str) -> Result<Block, UpstreamError> {
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
        return Ok(Block::Image {
            source: ImageSource::Base64 {
                media_type,
                data: data.to_owned(),
            },
        });
    }
    let scheme = url.split_once("://").map(|(s, _)| s.to_ascii_lowercase());
    if matches!(scheme.as_deref(), Some("http" | "https")) {
        return Ok(Block::Image {
            source: ImageSource::Url {
                url: url.to_owned(),
            },
        });
    }
    Err(UpstreamError::unsupported(
        param,
        format!("{param} must be an http(s) URL or a data URL"),
    ))
}

fn user_blocks(message: &Message, i: usize) -> Result<Vec<Block>, UpstreamError> {
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
fn thinking_blocks(details: &[ReasoningDetail]) -> Vec<Block> {
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
                Some(Block::Thinking {
                    thinking: d.text.clone().unwrap_or_default(),
                    signature: signature.to_owned(),
                })
            }
            "reasoning.encrypted" => d.data.as_deref().map(|data| Block::RedactedThinking {
                data: data.to_owned(),
            }),
            _ => None,
        })
        .collect()
}

/// One Anthropic message being built. Consecutive OpenAI messages of the same Anthropic role
/// are merged into one.
#[derive(Debug, Serialize)]
pub struct Turn {
    role: TurnRole,
    #[serde(rename = "content")]
    blocks: Vec<Block>,
}

/// The OpenAI messages as Anthropic's top-level `system` blocks and alternating turns.
#[derive(Debug)]
struct Conversation {
    system: Vec<Block>,
    turns: Vec<Turn>,
}

impl Conversation {
    fn build(messages: &[Message]) -> Result<Self, UpstreamError> {
        let mut system = Vec::new();
        let mut turns: Vec<Turn> = Vec::new();
        for (i, message) in messages.iter().enumerate() {
            let role = Role::try_from(message.role).unwrap_or(Role::Unspecified);
            let (anthropic_role, blocks) = match role {
                Role::System | Role::Developer => {
                    system.extend(texts(message, i)?.into_iter().filter_map(text_block));
                    continue;
                }
                Role::User => (TurnRole::User, user_blocks(message, i)?),
                Role::Tool => {
                    let id = message.tool_call_id.clone().unwrap_or_default();
                    let content = texts(message, i)?.concat();
                    let block = Block::ToolResult {
                        tool_use_id: id,
                        content: (!content.is_empty()).then_some(content),
                    };
                    (TurnRole::User, vec![block])
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
                        blocks.push(Block::ToolUse {
                            id: call.id.clone(),
                            name: name.to_owned(),
                            input,
                        });
                    }
                    (TurnRole::Assistant, blocks)
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
            let role = turn.role;
            turn.blocks.sort_by_key(|b| {
                let leads = match role {
                    TurnRole::User => matches!(b, Block::ToolResult { .. }),
                    TurnRole::Assistant => {
                        matches!(b, Block::Thinking { .. } | Block::RedactedThinking { .. })
                    }
                };
                !leads
            });
        }
        Ok(Self { system, turns })
    }

    /// Whether the last assistant turn that called tools, while its loop is still in progress
    /// (no user turn but tool results after it), does not start with a thinking block: the turn
    /// Anthropic, with thinking on, requires to carry its signed thinking.
    fn tool_loop_lost_its_thinking(&self) -> bool {
        let Some(at) = self.turns.iter().rposition(|t| {
            t.role == TurnRole::Assistant
                && t.blocks.iter().any(|b| matches!(b, Block::ToolUse { .. }))
        }) else {
            return false;
        };
        let in_loop = self.turns[at + 1..].iter().all(|t| {
            t.role == TurnRole::Assistant
                || t.blocks
                    .iter()
                    .all(|b| matches!(b, Block::ToolResult { .. }))
        });
        let signed = matches!(
            self.turns[at].blocks.first(),
            Some(Block::Thinking { .. } | Block::RedactedThinking { .. })
        );
        in_loop && !signed
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
