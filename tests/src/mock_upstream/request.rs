//! Reading one chat request the way the real APIs do: the validation that answers 400 in
//! OpenAI's words, the flavour (OpenAI, DeepSeek, MiniMax or a quirky compatible server) chosen
//! by the model name, and the test directives hidden in the last user message. The result is a [`ChatPlan`] that fixes every
//! byte of the reply, so tests can predict content and token counts exactly.

use std::time::Duration;

use axum::http::StatusCode;
use serde_json::{Map, Value};

use super::error::MockError;

/// Which real API the mock imitates for one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavour {
    /// Strict about unknown fields; usage in a separate `choices: []` chunk, only on request.
    OpenAi,
    /// Accepts `thinking`, answers with `reasoning_content`, puts usage on the finish chunk.
    DeepSeek,
    /// MiniMax's OpenAI endpoint (models `MiniMax*`): see `minimax.rs`.
    MiniMax,
    /// A quirky OpenAI-compatible server (models `compat-*`): see `compatible.rs`.
    Compatible,
}

impl Flavour {
    fn of(model: &str) -> Self {
        if model.starts_with("deepseek") {
            Self::DeepSeek
        } else if model.starts_with("MiniMax") {
            Self::MiniMax
        } else if model.starts_with("compat-") {
            Self::Compatible
        } else {
            Self::OpenAi
        }
    }
}

/// Where the reasoning goes in the reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReasoningStyle {
    /// `reasoning_content` (DeepSeek).
    ReasoningContent,
    /// `reasoning` (vLLM, OpenRouter).
    Reasoning,
    /// `reasoning_details[].text`, incremental when streamed (MiniMax with `reasoning_split`).
    Details,
    /// Inline `<think>…</think>` before the content (MiniMax without `reasoning_split`).
    Think,
}

/// How a quirky compatible server reports usage in a stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum UsageStyle {
    /// A last chunk with `"choices": null` (the default).
    #[default]
    NullChoices,
    /// A last chunk without `choices`.
    MissingChoices,
    /// On the finish chunk.
    OnFinish,
}

/// The id of the tool call the mock makes.
pub const TOOL_CALL_ID: &str = "call_mock_0";
/// The arguments of the tool call the mock makes, and how they are split when streamed.
pub const TOOL_ARGUMENT_FRAGMENTS: [&str; 5] = ["{\"", "location", "\":\"", "Paris", "\"}"];

/// What the assistant answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// Text, as the pieces a stream sends (each piece is one word with the whitespace before
    /// it, so the pieces concatenate to the whole text).
    Text(Vec<String>),
    /// One call of the named function with [`TOOL_ARGUMENT_FRAGMENTS`].
    ToolCall { name: String },
}

/// Everything the reply depends on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChatPlan {
    pub flavour: Flavour,
    /// The model as the request named it (echoed in the reply).
    pub model: String,
    pub stream: bool,
    pub include_usage: bool,
    /// The reasoning pieces when thinking is on (DeepSeek, MiniMax, compatible with
    /// `[reasoning=STYLE]`).
    pub reasoning: Option<Vec<String>>,
    pub reasoning_style: ReasoningStyle,
    pub answer: Answer,
    pub finish_reason: String,
    pub prompt_tokens: u64,
    pub cached_tokens: u64,
    pub completion_tokens: u64,
    pub reasoning_tokens: u64,
    /// `[delay_ms=N]`: before the answer (or before the first chunk of a stream).
    pub delay: Duration,
    /// `[chunk_delay_ms=N]`: between two chunks of a stream.
    pub chunk_delay: Duration,
    /// `[stream_error]`: fail in-band after two content chunks.
    pub stream_error: bool,
    /// `[status=CODE]`: answer this status instead.
    pub status: Option<StatusCode>,
    /// `[base_resp=CODE]` (MiniMax): answer HTTP 200 with this `base_resp.status_code`.
    pub base_resp: Option<u64>,
    /// `[usage=STYLE]` (compatible servers).
    pub usage_style: UsageStyle,
    /// `[args=whole]` (compatible servers): the tool arguments in one delta.
    pub whole_arguments: bool,
    /// `[no_usage]` (OpenAI, DeepSeek): a non-streamed answer without `usage`, as some servers
    /// send.
    pub no_usage: bool,
    /// `[huge_usage]` (OpenAI-style flavours): the usage reports 2^64 - 1 completion tokens, a
    /// count no ledger can hold (an upstream reporting nonsense).
    pub huge_usage: bool,
}

/// Top-level request fields OpenAI knows; any other is rejected by the OpenAI flavour.
const OPENAI_FIELDS: &[&str] = &[
    "model",
    "messages",
    "temperature",
    "top_p",
    "max_tokens",
    "max_completion_tokens",
    "n",
    "stop",
    "stream",
    "stream_options",
    "tools",
    "tool_choice",
    "parallel_tool_calls",
    "response_format",
    "seed",
    "user",
    "presence_penalty",
    "frequency_penalty",
    "logprobs",
    "top_logprobs",
    "reasoning_effort",
    "logit_bias",
    "metadata",
    "store",
    "service_tier",
    "modalities",
    "audio",
    "prediction",
    "verbosity",
    "web_search_options",
    "functions",
    "function_call",
    "safety_identifier",
    "prompt_cache_key",
    "prompt_cache_retention",
];

const ROLES: &[&str] = &[
    "system",
    "developer",
    "user",
    "assistant",
    "tool",
    "function",
];

/// Validates a parsed request body and plans the reply.
pub fn plan(body: &Value) -> Result<ChatPlan, MockError> {
    let Some(obj) = body.as_object() else {
        return Err(MockError::invalid(format!(
            "Invalid type for request body: expected an object, but got {} instead.",
            type_name(body)
        )));
    };
    let model = obj.get("model").and_then(Value::as_str).unwrap_or("");
    let flavour = Flavour::of(model);
    if flavour == Flavour::OpenAi
        && let Some(unknown) = obj.keys().find(|k| !OPENAI_FIELDS.contains(&k.as_str()))
    {
        return Err(MockError::invalid(format!(
            "Unrecognized request argument supplied: {unknown}"
        )));
    }
    match obj.get("model") {
        None | Some(Value::Null) => {
            return Err(
                MockError::invalid("you must provide a model parameter").with_param("model")
            );
        }
        Some(Value::String(s)) if s.is_empty() => {
            return Err(
                MockError::invalid("you must provide a model parameter").with_param("model")
            );
        }
        Some(Value::String(_)) => {}
        Some(other) => return Err(invalid_type("model", "a string", other)),
    }
    let messages = validate_messages(obj)?;
    validate_tool_pairs(messages)?;
    let minimax = match flavour {
        Flavour::MiniMax => Some(super::minimax::validate(obj, messages)?),
        _ => None,
    };
    match flavour {
        Flavour::OpenAi => validate_openai_reasoning_model(obj, model)?,
        Flavour::Compatible => super::compatible::validate(obj, messages)?,
        Flavour::DeepSeek | Flavour::MiniMax => {}
    }
    validate_number(obj, "temperature", 0.0, 2.0)?;
    validate_number(obj, "top_p", 0.0, 1.0)?;
    validate_number(obj, "presence_penalty", -2.0, 2.0)?;
    validate_number(obj, "frequency_penalty", -2.0, 2.0)?;
    // DeepSeek's API knows only `max_tokens` and ignores `max_completion_tokens`.
    let max_tokens = match (flavour, positive_int(obj, "max_completion_tokens")?) {
        (Flavour::DeepSeek, _) | (_, None) => positive_int(obj, "max_tokens")?,
        (_, Some(n)) => Some(n),
    };
    positive_int(obj, "n")?;
    let stream = match obj.get("stream") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(other) => return Err(invalid_type("stream", "a boolean", other)),
    };
    let include_usage = match obj.get("stream_options") {
        None | Some(Value::Null) => false,
        Some(Value::Object(opts)) => {
            if flavour == Flavour::OpenAi && !stream {
                return Err(MockError::invalid(
                    "The 'stream_options' parameter is only allowed when 'stream' is enabled.",
                )
                .with_param("stream_options")
                .with_code("invalid_value"));
            }
            match opts.get("include_usage") {
                None | Some(Value::Null) => false,
                Some(Value::Bool(b)) => *b,
                Some(other) => {
                    return Err(invalid_type(
                        "stream_options.include_usage",
                        "a boolean",
                        other,
                    ));
                }
            }
        }
        Some(other) => return Err(invalid_type("stream_options", "an object", other)),
    };
    let tool = tool_to_call(obj)?;

    let last_user = messages
        .iter()
        .rev()
        .find(|m| m.get("role").and_then(Value::as_str) == Some("user"))
        .map(message_text)
        .unwrap_or_default();
    let directives = Directives::parse(&last_user)?;
    let (thinking, reasoning_style) = match (flavour, &minimax) {
        (Flavour::DeepSeek, _) => {
            let thinking = deepseek_thinking(obj, model)?;
            validate_deepseek(obj, messages, thinking)?;
            (thinking, ReasoningStyle::ReasoningContent)
        }
        (Flavour::MiniMax, Some(m)) => (
            m.thinking,
            if m.reasoning_split {
                ReasoningStyle::Details
            } else {
                ReasoningStyle::Think
            },
        ),
        (Flavour::Compatible, _) => match directives.reasoning {
            Some(style) => (true, style),
            None => (false, ReasoningStyle::ReasoningContent),
        },
        _ => (false, ReasoningStyle::ReasoningContent),
    };

    let prompt_tokens = messages
        .iter()
        .map(|m| word_count(&message_text(m)))
        .sum::<u64>()
        .max(1);
    let cached_tokens = directives.cache.min(prompt_tokens);
    let reasoning = thinking.then(|| pieces(&format!("Thinking about: {last_user}")));
    let reasoning_tokens = reasoning.as_ref().map_or(0, |r| r.len() as u64);

    let wants_tool = tool.as_ref().is_some_and(|t| t.forced || directives.tool);
    let (answer, finish_reason, answer_tokens) = match tool {
        Some(t) if wants_tool => (
            Answer::ToolCall { name: t.name },
            "tool_calls".to_owned(),
            word_count(&TOOL_ARGUMENT_FRAGMENTS.concat()),
        ),
        _ => {
            let mut words = pieces(&format!("Echo: {last_user}"));
            let mut finish = "stop".to_owned();
            if let Some(limit) = max_tokens.filter(|_| !directives.overrun)
                && words.len() as u64 > limit
            {
                words.truncate(usize::try_from(limit).unwrap_or(usize::MAX));
                finish = "length".to_owned();
            }
            let n = words.len() as u64;
            (Answer::Text(words), finish, n)
        }
    };

    Ok(ChatPlan {
        flavour,
        model: model.to_owned(),
        stream,
        include_usage,
        reasoning,
        reasoning_style,
        answer,
        finish_reason: directives.finish.clone().unwrap_or(finish_reason),
        prompt_tokens,
        cached_tokens,
        completion_tokens: answer_tokens + reasoning_tokens,
        reasoning_tokens,
        delay: Duration::from_millis(directives.delay_ms),
        chunk_delay: Duration::from_millis(directives.chunk_delay_ms),
        stream_error: directives.stream_error,
        status: directives.status,
        base_resp: directives.base_resp,
        usage_style: directives.usage,
        whole_arguments: directives.whole_arguments,
        no_usage: directives.no_usage,
        huge_usage: directives.huge_usage,
    })
}

/// OpenAI's reasoning models (`o1*`, `o3*`, `o4*`, `gpt-5*`) refuse `max_tokens`, `stop`, the
/// penalties and log probabilities (`unsupported_parameter`).
fn validate_openai_reasoning_model(obj: &Map<String, Value>, model: &str) -> Result<(), MockError> {
    let reasoning = ["o1", "o3", "o4", "gpt-5"]
        .iter()
        .any(|p| model.starts_with(p));
    if !reasoning {
        return Ok(());
    }
    if obj.get("max_tokens").is_some_and(|v| !v.is_null()) {
        return Err(MockError::invalid(
            "Unsupported parameter: 'max_tokens' is not supported with this model. Use 'max_completion_tokens' instead.",
        )
        .with_param("max_tokens")
        .with_code("unsupported_parameter"));
    }
    if obj.get("stop").is_some_and(|v| !v.is_null()) {
        return Err(MockError::invalid(
            "Unsupported parameter: 'stop' is not supported with this model.",
        )
        .with_param("stop")
        .with_code("unsupported_parameter"));
    }
    for field in [
        "presence_penalty",
        "frequency_penalty",
        "logprobs",
        "top_logprobs",
    ] {
        if obj.get(field).is_some_and(|v| !v.is_null()) {
            return Err(MockError::invalid(format!(
                "Unsupported parameter: '{field}' is not supported with this model."
            ))
            .with_param(field)
            .with_code("unsupported_parameter"));
        }
    }
    Ok(())
}

/// OpenAI's (and its family's) rule on tool results: a `tool` message must answer a call of the
/// assistant message its run of tool messages follows, and every call of that message must be
/// answered before any other message. Refused in OpenAI's words.
fn validate_tool_pairs(messages: &[Value]) -> Result<(), MockError> {
    // The assistant message being answered: its index and the call ids not answered yet.
    let mut open: Option<(usize, Vec<&str>)> = None;
    for (i, message) in messages.iter().enumerate() {
        let role = message.get("role").and_then(Value::as_str).unwrap_or("");
        if role == "tool" {
            let id = message
                .get("tool_call_id")
                .and_then(Value::as_str)
                .unwrap_or("");
            let Some((_, pending)) = open.as_mut() else {
                return Err(MockError::invalid(
                    "Invalid parameter: messages with role 'tool' must be a response to a preceeding message with 'tool_calls'.",
                )
                .with_param(format!("messages.[{i}].role")));
            };
            let Some(k) = pending.iter().position(|p| *p == id) else {
                return Err(MockError::invalid(format!(
                    "Invalid parameter: 'tool_call_id' of '{id}' not found in 'tool_calls' of previous message."
                ))
                .with_param(format!("messages.[{i}].tool_call_id")));
            };
            pending.remove(k);
            continue;
        }
        unanswered(open.as_ref())?;
        let calls: Vec<&str> = message
            .get("tool_calls")
            .and_then(Value::as_array)
            .map(|calls| {
                calls
                    .iter()
                    .filter_map(|c| c.get("id").and_then(Value::as_str))
                    .collect()
            })
            .unwrap_or_default();
        open = (role == "assistant" && !calls.is_empty()).then_some((i, calls));
    }
    unanswered(open.as_ref())
}

fn unanswered(open: Option<&(usize, Vec<&str>)>) -> Result<(), MockError> {
    match open {
        Some((i, pending)) if !pending.is_empty() => Err(MockError::invalid(format!(
            "An assistant message with 'tool_calls' must be followed by tool messages responding to each 'tool_call_id'. The following tool_call_ids did not have response messages: {}",
            pending.join(", ")
        ))
        .with_param(format!("messages.[{i}].role"))),
        _ => Ok(()),
    }
}

fn validate_messages(obj: &Map<String, Value>) -> Result<&Vec<Value>, MockError> {
    let messages = match obj.get("messages") {
        None | Some(Value::Null) => {
            return Err(
                MockError::invalid("Missing required parameter: 'messages'.")
                    .with_param("messages")
                    .with_code("missing_required_parameter"),
            );
        }
        Some(Value::Array(a)) => a,
        Some(other) => return Err(invalid_type("messages", "an array", other)),
    };
    if messages.is_empty() {
        return Err(MockError::invalid(
            "Invalid 'messages': empty array. Expected an array with minimum length 1, but got an empty array instead.",
        )
        .with_param("messages")
        .with_code("empty_array"));
    }
    for (i, message) in messages.iter().enumerate() {
        let Some(m) = message.as_object() else {
            return Err(invalid_type(
                &format!("messages[{i}]"),
                "an object",
                message,
            ));
        };
        let role = match m.get("role") {
            Some(Value::String(r)) => r.as_str(),
            None | Some(Value::Null) => {
                return Err(MockError::invalid(format!(
                    "Missing required parameter: 'messages[{i}].role'."
                ))
                .with_param(format!("messages[{i}].role"))
                .with_code("missing_required_parameter"));
            }
            Some(other) => {
                return Err(invalid_type(
                    &format!("messages[{i}].role"),
                    "a string",
                    other,
                ));
            }
        };
        if !ROLES.contains(&role) {
            return Err(MockError::invalid(format!(
                "Invalid value: '{role}'. Supported values are: 'system', 'assistant', 'user', 'function', 'tool', and 'developer'."
            ))
            .with_param(format!("messages[{i}].role"))
            .with_code("invalid_value"));
        }
        match m.get("content") {
            Some(Value::String(_) | Value::Array(_)) => {}
            None | Some(Value::Null) => {
                let has_calls = m.get("tool_calls").is_some_and(|c| !c.is_null());
                if !(role == "assistant" && has_calls) {
                    return Err(MockError::invalid(format!(
                        "Missing required parameter: 'messages[{i}].content'."
                    ))
                    .with_param(format!("messages[{i}].content"))
                    .with_code("missing_required_parameter"));
                }
            }
            Some(other) => {
                return Err(invalid_type(
                    &format!("messages[{i}].content"),
                    "one of a string or array of objects",
                    other,
                ));
            }
        }
        if role == "tool" && !m.get("tool_call_id").is_some_and(Value::is_string) {
            return Err(MockError::invalid(
                "Missing parameter 'tool_call_id': messages with role 'tool' must have a 'tool_call_id'.",
            )
            .with_param(format!("messages.[{i}].tool_call_id"))
            .with_code("missing_required_parameter"));
        }
        if let Some(calls) = m.get("tool_calls").filter(|c| !c.is_null()) {
            let Some(calls) = calls.as_array() else {
                return Err(invalid_type(
                    &format!("messages[{i}].tool_calls"),
                    "an array",
                    calls,
                ));
            };
            for (j, call) in calls.iter().enumerate() {
                let args = call.get("function").and_then(|f| f.get("arguments"));
                match args {
                    Some(Value::String(_)) => {}
                    None => {
                        return Err(MockError::invalid(format!(
                            "Missing required parameter: 'messages[{i}].tool_calls[{j}].function.arguments'."
                        ))
                        .with_param(format!("messages[{i}].tool_calls[{j}].function.arguments"))
                        .with_code("missing_required_parameter"));
                    }
                    Some(other) => {
                        return Err(invalid_type(
                            &format!("messages[{i}].tool_calls[{j}].function.arguments"),
                            "a string",
                            other,
                        ));
                    }
                }
            }
        }
    }
    Ok(messages)
}

fn validate_number(
    obj: &Map<String, Value>,
    field: &str,
    min: f64,
    max: f64,
) -> Result<(), MockError> {
    let value = match obj.get(field) {
        None | Some(Value::Null) => return Ok(()),
        Some(Value::Number(n)) => n.as_f64().unwrap_or(f64::NAN),
        Some(other) => return Err(invalid_type(field, "a decimal", other)),
    };
    if value > max {
        return Err(MockError::invalid(format!(
            "Invalid '{field}': decimal above maximum value. Expected a value <= {max}, but got {value} instead."
        ))
        .with_param(field)
        .with_code("decimal_above_max_value"));
    }
    if value < min || value.is_nan() {
        return Err(MockError::invalid(format!(
            "Invalid '{field}': decimal below minimum value. Expected a value >= {min}, but got {value} instead."
        ))
        .with_param(field)
        .with_code("decimal_below_min_value"));
    }
    Ok(())
}

fn positive_int(obj: &Map<String, Value>, field: &str) -> Result<Option<u64>, MockError> {
    match obj.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => match n.as_u64() {
            Some(v) if v >= 1 => Ok(Some(v)),
            Some(_) | None if n.is_i64() || n.is_u64() => Err(MockError::invalid(format!(
                "Invalid '{field}': integer below minimum value. Expected a value >= 1, but got {n} instead."
            ))
            .with_param(field)
            .with_code("integer_below_min_value")),
            _ => Err(invalid_type(field, "an integer", &Value::Number(n.clone()))),
        },
        Some(other) => Err(invalid_type(field, "an integer", other)),
    }
}

/// DeepSeek's own rules: `response_format` is `text` or `json_object` only, and in thinking mode
/// an assistant message that called tools must carry its `reasoning_content` back.
fn validate_deepseek(
    obj: &Map<String, Value>,
    messages: &[Value],
    thinking: bool,
) -> Result<(), MockError> {
    let format = obj
        .get("response_format")
        .and_then(|f| f.get("type"))
        .and_then(Value::as_str);
    if let Some(kind) = format
        && kind != "text"
        && kind != "json_object"
    {
        return Err(
            MockError::invalid("This response_format type is unavailable now")
                .with_param("response_format"),
        );
    }
    if thinking {
        for message in messages {
            let called = message
                .get("tool_calls")
                .and_then(Value::as_array)
                .is_some_and(|c| !c.is_empty());
            let has_reasoning = message
                .get("reasoning_content")
                .and_then(Value::as_str)
                .is_some_and(|r| !r.is_empty());
            if message.get("role").and_then(Value::as_str) == Some("assistant")
                && called
                && !has_reasoning
            {
                return Err(MockError::invalid(
                    "The reasoning_content in the thinking mode must be passed back to the API.",
                ));
            }
        }
    }
    Ok(())
}

/// DeepSeek's `thinking: {"type": "enabled"|"disabled"}`; without it V4 models (and the legacy
/// `deepseek-reasoner`) think.
fn deepseek_thinking(obj: &Map<String, Value>, model: &str) -> Result<bool, MockError> {
    let default = model.starts_with("deepseek-v4") || model == "deepseek-reasoner";
    match obj.get("thinking") {
        None | Some(Value::Null) => Ok(default),
        Some(t) => match t.get("type").and_then(Value::as_str) {
            Some("enabled") => Ok(true),
            Some("disabled") => Ok(false),
            _ => Err(MockError::invalid(format!(
                "Failed to deserialize the JSON body into the target type: thinking: unknown variant in {t}, expected `enabled` or `disabled`"
            ))
            .with_param("thinking")),
        },
    }
}

struct ToolChoice {
    name: String,
    /// `tool_choice` demands a call (`required` or a named function).
    forced: bool,
}

/// The tool the mock would call, if the request offers tools and does not forbid calling them.
fn tool_to_call(obj: &Map<String, Value>) -> Result<Option<ToolChoice>, MockError> {
    let tools = match obj.get("tools") {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::Array(t)) => t,
        Some(other) => return Err(invalid_type("tools", "an array", other)),
    };
    let mut names = Vec::with_capacity(tools.len());
    for (i, tool) in tools.iter().enumerate() {
        match tool
            .get("function")
            .and_then(|f| f.get("name"))
            .and_then(Value::as_str)
        {
            Some(name) => names.push(name.to_owned()),
            None => {
                return Err(MockError::invalid(format!(
                    "Missing required parameter: 'tools[{i}].function.name'."
                ))
                .with_param(format!("tools[{i}].function.name"))
                .with_code("missing_required_parameter"));
            }
        }
    }
    let Some(first) = names.first().cloned() else {
        return Ok(None);
    };
    match obj.get("tool_choice") {
        None | Some(Value::Null) => Ok(Some(ToolChoice {
            name: first,
            forced: false,
        })),
        Some(Value::String(mode)) => match mode.as_str() {
            "none" => Ok(None),
            "auto" => Ok(Some(ToolChoice {
                name: first,
                forced: false,
            })),
            "required" => Ok(Some(ToolChoice {
                name: first,
                forced: true,
            })),
            other => Err(MockError::invalid(format!(
                "Invalid value: '{other}'. Supported values are: 'none', 'auto', and 'required'."
            ))
            .with_param("tool_choice")
            .with_code("invalid_value")),
        },
        Some(choice) => {
            let named = choice
                .get("function")
                .and_then(|f| f.get("name"))
                .and_then(Value::as_str);
            match named {
                Some(name) if names.iter().any(|n| n == name) => Ok(Some(ToolChoice {
                    name: name.to_owned(),
                    forced: true,
                })),
                Some(name) => Err(MockError::invalid(format!(
                    "Tool choice '{name}' not found in 'tools' parameter."
                ))
                .with_param("tool_choice")),
                None => Ok(Some(ToolChoice {
                    name: first,
                    forced: false,
                })),
            }
        }
    }
}

/// The text of a message: its string content, or its text parts joined by a space.
pub fn message_text(message: &Value) -> String {
    match message.get("content") {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(parts)) => parts
            .iter()
            .filter_map(|p| p.get("text").and_then(Value::as_str))
            .collect::<Vec<_>>()
            .join(" "),
        _ => String::new(),
    }
}

/// The mock's token count: whitespace-separated words.
pub fn word_count(text: &str) -> u64 {
    text.split_whitespace().count() as u64
}

/// Splits text into one piece per word, each piece carrying the whitespace before its word (and
/// the last one any trailing whitespace), so the pieces concatenate back to the text.
pub fn pieces(text: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let mut current = String::new();
    let mut in_word = false;
    for c in text.chars() {
        if c.is_whitespace() {
            if in_word {
                out.push(std::mem::take(&mut current));
                in_word = false;
            }
        } else {
            in_word = true;
        }
        current.push(c);
    }
    if in_word || out.is_empty() {
        out.push(current);
    } else if let Some(last) = out.last_mut() {
        last.push_str(&current);
    }
    out
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn invalid_type(field: &str, expected: &str, got: &Value) -> MockError {
    MockError::invalid(format!(
        "Invalid type for '{field}': expected {expected}, but got {} instead.",
        type_name(got)
    ))
    .with_param(field)
    .with_code("invalid_type")
}

/// The `[name=N]` and `[flag]` directives of the last user message.
#[derive(Debug, Default)]
pub(super) struct Directives {
    pub(super) cache: u64,
    pub(super) status: Option<StatusCode>,
    pub(super) delay_ms: u64,
    pub(super) chunk_delay_ms: u64,
    pub(super) stream_error: bool,
    pub(super) tool: bool,
    pub(super) finish: Option<String>,
    pub(super) base_resp: Option<u64>,
    pub(super) reasoning: Option<ReasoningStyle>,
    pub(super) usage: UsageStyle,
    pub(super) whole_arguments: bool,
    pub(super) no_usage: bool,
    pub(super) huge_usage: bool,
    pub(super) overrun: bool,
}

impl Directives {
    pub(super) fn parse(text: &str) -> Result<Self, MockError> {
        let status = match number_directive(text, "status") {
            None => None,
            Some(code) => Some(
                u16::try_from(code)
                    .ok()
                    .and_then(|c| StatusCode::from_u16(c).ok())
                    .ok_or_else(|| MockError::invalid(format!("mock: bad [status={code}]")))?,
            ),
        };
        Ok(Self {
            cache: number_directive(text, "cache").unwrap_or(0),
            status,
            delay_ms: number_directive(text, "delay_ms").unwrap_or(0),
            chunk_delay_ms: number_directive(text, "chunk_delay_ms").unwrap_or(0),
            stream_error: text.contains("[stream_error]"),
            tool: text.contains("[tool]"),
            finish: word_directive(text, "finish").map(str::to_owned),
            base_resp: number_directive(text, "base_resp"),
            reasoning: match word_directive(text, "reasoning") {
                None => None,
                Some("reasoning_content") => Some(ReasoningStyle::ReasoningContent),
                Some("reasoning") => Some(ReasoningStyle::Reasoning),
                Some("details") => Some(ReasoningStyle::Details),
                Some("think") => Some(ReasoningStyle::Think),
                Some(other) => {
                    return Err(MockError::invalid(format!("mock: bad [reasoning={other}]")));
                }
            },
            usage: match word_directive(text, "usage") {
                None | Some("null_choices") => UsageStyle::NullChoices,
                Some("missing_choices") => UsageStyle::MissingChoices,
                Some("finish") => UsageStyle::OnFinish,
                Some(other) => {
                    return Err(MockError::invalid(format!("mock: bad [usage={other}]")));
                }
            },
            whole_arguments: text.contains("[args=whole]"),
            no_usage: text.contains("[no_usage]"),
            huge_usage: text.contains("[huge_usage]"),
            overrun: text.contains("[overrun]"),
        })
    }
}

fn word_directive<'t>(text: &'t str, name: &str) -> Option<&'t str> {
    let open = format!("[{name}=");
    let start = text.find(&open)? + open.len();
    let rest = &text[start..];
    let end = rest.find(']')?;
    Some(rest[..end].trim())
}

pub(super) fn number_directive(text: &str, name: &str) -> Option<u64> {
    let open = format!("[{name}=");
    let start = text.find(&open)? + open.len();
    let rest = &text[start..];
    let end = rest.find(']')?;
    rest[..end].trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn pieces_concatenate_back_to_the_text() {
        for text in ["Echo: hello  world", "Echo: ", " a\nb ", "one"] {
            assert_eq!(pieces(text).concat(), text);
        }
        assert_eq!(pieces("Echo: hi there"), ["Echo:", " hi", " there"]);
    }

    #[test]
    fn directives_are_read() {
        assert_eq!(number_directive("x [cache=12] y", "cache"), Some(12));
        assert_eq!(number_directive("[delay_ms=5]", "delay_ms"), Some(5));
        assert_eq!(number_directive("[chunk_delay_ms=7]", "delay_ms"), None);
    }

    fn refusal(body: Value) -> MockError {
        match plan(&body) {
            Ok(_) => panic!("the mock accepted {body}"),
            Err(e) => e,
        }
    }

    #[test]
    fn reasoning_models_refuse_penalties_and_logprobs_as_openai_does() {
        for (field, value) in [
            ("presence_penalty", json!(0.5)),
            ("frequency_penalty", json!(-0.5)),
            ("logprobs", json!(true)),
            ("top_logprobs", json!(2)),
        ] {
            let mut body =
                json!({"model": "o4-mini", "messages": [{"role": "user", "content": "hi"}]});
            body[field] = value;
            let e = refusal(body.clone());
            assert_eq!(e.status, StatusCode::BAD_REQUEST);
            assert_eq!(
                e.body()["error"],
                json!({
                    "message": format!("Unsupported parameter: '{field}' is not supported with this model."),
                    "type": "invalid_request_error",
                    "param": field,
                    "code": "unsupported_parameter",
                })
            );
            body["model"] = json!("gpt-4.1-mini");
            assert!(plan(&body).is_ok(), "{field} is fine for other models");
        }
    }

    #[test]
    fn tool_messages_must_answer_the_calls_before_them() {
        let call = |id: &str| json!({"id": id, "type": "function", "function": {"name": "f", "arguments": "{}"}});
        let user = json!({"role": "user", "content": "q"});
        let asked = |ids: &[&str]| json!({"role": "assistant", "content": null, "tool_calls": ids.iter().map(|id| call(id)).collect::<Vec<_>>()});
        let answer = |id: &str| json!({"role": "tool", "tool_call_id": id, "content": "r"});
        let body = |messages: Vec<Value>| json!({"model": "gpt-4.1-mini", "messages": messages});

        assert!(
            plan(&body(vec![
                user.clone(),
                asked(&["a", "b"]),
                answer("b"),
                answer("a"),
                user.clone()
            ]))
            .is_ok()
        );

        let orphan = refusal(body(vec![user.clone(), answer("a")]));
        assert_eq!(
            orphan.body()["error"],
            json!({
                "message": "Invalid parameter: messages with role 'tool' must be a response to a preceeding message with 'tool_calls'.",
                "type": "invalid_request_error",
                "param": "messages.[1].role",
                "code": null,
            })
        );
        let unknown = refusal(body(vec![user.clone(), asked(&["a"]), answer("x")]));
        assert_eq!(unknown.param.as_deref(), Some("messages.[2].tool_call_id"));
        let unanswered = refusal(body(vec![
            user.clone(),
            asked(&["a", "b"]),
            answer("a"),
            user,
        ]));
        assert_eq!(
            unanswered.message,
            "An assistant message with 'tool_calls' must be followed by tool messages responding to each 'tool_call_id'. The following tool_call_ids did not have response messages: b"
        );
        assert_eq!(unanswered.param.as_deref(), Some("messages.[1].role"));
    }
}
