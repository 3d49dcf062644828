//! The Anthropic Messages API flavour of the mock (`POST …/messages`), speaking providers.md §2
//! exactly: `x-api-key` and `anthropic-version` headers, Anthropic's error body
//! (`{"type":"error","error":{"type","message"},"request_id"}`), the message object, and the
//! named-event SSE stream of fixtures AN-1..AN-3 (with `ping` events, no `[DONE]`).
//!
//! It refuses what Anthropic refuses, with Anthropic's wording where it is on record: unknown
//! top-level fields, a missing `max_tokens`, a `system` role inside `messages`, empty content and
//! empty text blocks, tool_use blocks without tool_result blocks in the next user message,
//! tool_result blocks that are not first or answer nothing, `temperature` above 1, `temperature`
//! and `top_p` together on Claude 4.5 and later models, base64 image
//! data with a `data:` prefix or an unsupported `media_type`, a thinking budget under 1024 or not
//! below `max_tokens`, thinking with forced tool use or a modified temperature, and — with
//! thinking on — a final assistant tool_use turn that does not start with its thinking block, or
//! a thinking block whose signature is not the one the mock gave that text.
//!
//! Deterministic answers, as in the other flavours: `Echo: <text of the last user message>`,
//! word-count tokens (prompt = words of `system`, text blocks and tool_result contents), and
//! directives in that text: `[tool]`, `[parallel]` (two tool calls unless
//! `disable_parallel_tool_use`), `[status=N]`, `[delay_ms=N]`, `[chunk_delay_ms=N]`,
//! `[stream_error]` (an `error` event after two content deltas), `[cache=N]`
//! (`cache_read_input_tokens`), `[cache_write=N]` (`cache_creation_input_tokens`), `[refusal]`
//! (`stop_reason: refusal`). With thinking on, the answer starts with a thinking block
//! `Thinking about: <text>` signed [`signature`]. A stop sequence found in the answer cuts it
//! there (`stop_reason: stop_sequence`); more words than `max_tokens` cut it
//! (`stop_reason: max_tokens`).

use std::{
    convert::Infallible,
    sync::atomic::{AtomicU64, Ordering},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use axum::{
    Json,
    body::{Body, Bytes},
    http::{HeaderMap, StatusCode, header},
    response::{IntoResponse, Response},
};
use serde_json::{Map, Value, json};

use super::request::{Directives, number_directive, pieces, word_count};

/// The API version the mock speaks.
const VERSION: &str = "2023-06-01";
const MEDIA_TYPES: [&str; 4] = ["image/jpeg", "image/png", "image/gif", "image/webp"];
const TOP_LEVEL_FIELDS: &[&str] = &[
    "model",
    "messages",
    "max_tokens",
    "system",
    "stop_sequences",
    "temperature",
    "top_p",
    "top_k",
    "stream",
    "tools",
    "tool_choice",
    "thinking",
    "output_config",
    "metadata",
    "service_tier",
];
const TOOL_FIELDS: &[&str] = &[
    "name",
    "description",
    "input_schema",
    "cache_control",
    "strict",
    "type",
];
/// The message of the in-stream error `[stream_error]` produces.
pub const STREAM_ERROR_MESSAGE: &str = "mock mid-stream failure";
/// The arguments of the mock's tool calls, and how the stream splits them.
const TOOL_ARGUMENTS: [[&str; 5]; 2] = [
    ["{\"", "location", "\":\"", "Paris", "\"}"],
    ["{\"", "location", "\":\"", "London", "\"}"],
];

/// The signature the mock gives a thinking text (FNV-1a, hex): a later request must send the
/// same text with it, which is what makes the reasoning round trip checkable.
pub fn signature(thinking: &str) -> String {
    let hash = thinking.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    });
    format!("mocksig_{hash:016x}")
}

/// An Anthropic error answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AnthropicError {
    pub status: StatusCode,
    pub kind: &'static str,
    pub message: String,
}

impl AnthropicError {
    fn invalid(message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            kind: "invalid_request_error",
            message: message.into(),
        }
    }

    /// The error type Anthropic uses for a status (platform.claude.com/docs/en/api/errors).
    fn for_status(status: StatusCode, message: String) -> Self {
        let kind = match status.as_u16() {
            401 => "authentication_error",
            402 => "billing_error",
            403 => "permission_error",
            404 => "not_found_error",
            413 => "request_too_large",
            429 => "rate_limit_error",
            504 => "timeout_error",
            529 => "overloaded_error",
            400..=499 => "invalid_request_error",
            _ => "api_error",
        };
        Self {
            status,
            kind,
            message,
        }
    }

    pub fn body(&self) -> Value {
        json!({
            "type": "error",
            "error": {"type": self.kind, "message": self.message},
            "request_id": format!("req_mock{}", unique_hex()),
        })
    }
}

impl IntoResponse for AnthropicError {
    fn into_response(self) -> Response {
        (self.status, Json(self.body())).into_response()
    }
}

fn unique_hex() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    format!(
        "{:016x}{:08x}",
        now.as_nanos() as u64,
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// One tool call of the answer.
#[derive(Debug, Clone)]
struct Call {
    id: String,
    name: String,
    fragments: [&'static str; 5],
}

/// Everything the reply depends on.
#[derive(Debug, Clone)]
struct Plan {
    model: String,
    stream: bool,
    thinking: Option<String>,
    text: Vec<String>,
    calls: Vec<Call>,
    stop_reason: &'static str,
    stop_sequence: Option<String>,
    input_tokens: u64,
    cache_read: u64,
    cache_write: u64,
    output_tokens: u64,
    thinking_tokens: u64,
    delay: Duration,
    chunk_delay: Duration,
    stream_error: bool,
    status: Option<StatusCode>,
}

/// Anthropic's checks on every call: the `x-api-key` (when the mock has one) and a known
/// `anthropic-version`. Returns the key as given.
fn check_headers<'h>(
    api_key: Option<&str>,
    headers: &'h HeaderMap,
) -> Result<&'h str, AnthropicError> {
    let given_key = headers
        .get("x-api-key")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if let Some(expected) = api_key
        && given_key != expected
    {
        return Err(AnthropicError::for_status(
            StatusCode::UNAUTHORIZED,
            "invalid x-api-key".into(),
        ));
    }
    match headers
        .get("anthropic-version")
        .and_then(|v| v.to_str().ok())
    {
        None => Err(AnthropicError::invalid(
            "anthropic-version: header is required",
        )),
        Some(v) if v != VERSION => Err(AnthropicError::invalid(format!(
            "anthropic-version: invalid version {v}"
        ))),
        Some(_) => Ok(given_key),
    }
}

/// Answers one `POST …/messages` (already recorded by the caller).
pub async fn messages(api_key: Option<&str>, headers: &HeaderMap, body: &Bytes) -> Response {
    let given_key = match check_headers(api_key, headers) {
        Ok(key) => key,
        Err(e) => return e.into_response(),
    };
    let Ok(body) = serde_json::from_slice::<Value>(body) else {
        return AnthropicError::invalid("There was an issue with your request body: invalid JSON")
            .into_response();
    };
    let plan = match plan(&body) {
        Ok(plan) => plan,
        Err(e) => return e.into_response(),
    };
    tokio::time::sleep(plan.delay).await;
    if let Some(status) = plan.status {
        let mut message = format!("mock upstream error {}", status.as_u16());
        if status == StatusCode::UNAUTHORIZED {
            // As a careless upstream might: a gateway must not pass this on.
            message.push_str(&format!(": invalid x-api-key {given_key}"));
        }
        return AnthropicError::for_status(status, message).into_response();
    }
    if plan.stream {
        sse(plan)
    } else {
        Json(message_object(&plan)).into_response()
    }
}

/// Claude models from the 4.5 generation on (`claude-sonnet-4-5`, `claude-haiku-4-5-20251001`,
/// `claude-opus-4-6`, ...) take `temperature` or `top_p`, not both; older ones
/// (`claude-sonnet-4-20250514`, `claude-3-7-sonnet-latest`) take both.
fn refuses_temperature_with_top_p(model: &str) -> bool {
    let mut numbers = model
        .split('-')
        .filter_map(|part| part.parse::<u32>().ok())
        // A date suffix is not a version number.
        .filter(|n| *n < 100);
    match (numbers.next(), numbers.next()) {
        (Some(major), _) if major >= 5 => true,
        (Some(4), Some(minor)) => minor >= 5,
        _ => false,
    }
}

/// The fields Anthropic's `count_tokens` takes (any other is refused, `max_tokens` included).
const COUNT_TOKENS_FIELDS: &[&str] = &[
    "model",
    "messages",
    "system",
    "tools",
    "tool_choice",
    "thinking",
    "mcp_servers",
];

/// Answers one `POST …/messages/count_tokens` (already recorded by the caller):
/// `{"input_tokens": N}` with N the prompt tokens a `messages` call with the same body reports
/// (its input, cache reads and cache writes together).
pub async fn count_tokens(api_key: Option<&str>, headers: &HeaderMap, body: &Bytes) -> Response {
    if let Err(e) = check_headers(api_key, headers) {
        return e.into_response();
    }
    let Ok(Value::Object(mut body)) = serde_json::from_slice::<Value>(body) else {
        return AnthropicError::invalid("body: Input should be an object").into_response();
    };
    if let Some(extra) = body
        .keys()
        .find(|k| !COUNT_TOKENS_FIELDS.contains(&k.as_str()))
    {
        return AnthropicError::invalid(format!("{extra}: Extra inputs are not permitted"))
            .into_response();
    }
    // Planned as a messages call with room for any thinking budget.
    body.insert("max_tokens".into(), json!(1_000_000));
    match plan(&Value::Object(body)) {
        Ok(plan) => Json(json!({
            "input_tokens": plan.input_tokens + plan.cache_read + plan.cache_write
        }))
        .into_response(),
        Err(e) => e.into_response(),
    }
}

fn field_required(field: &str) -> AnthropicError {
    AnthropicError::invalid(format!("{field}: Field required"))
}

fn plan(body: &Value) -> Result<Plan, AnthropicError> {
    let Some(obj) = body.as_object() else {
        return Err(AnthropicError::invalid("body: Input should be an object"));
    };
    if let Some(extra) = obj.keys().find(|k| !TOP_LEVEL_FIELDS.contains(&k.as_str())) {
        return Err(AnthropicError::invalid(format!(
            "{extra}: Extra inputs are not permitted"
        )));
    }
    let model = match obj.get("model") {
        Some(Value::String(m)) if !m.is_empty() => m.clone(),
        _ => return Err(field_required("model")),
    };
    let max_tokens = match obj.get("max_tokens") {
        None => return Err(field_required("max_tokens")),
        Some(v) => v.as_u64().filter(|n| *n >= 1).ok_or_else(|| {
            AnthropicError::invalid("max_tokens: Input should be greater than or equal to 1")
        })?,
    };
    let stream = obj.get("stream").and_then(Value::as_bool).unwrap_or(false);
    let system_text = system(obj.get("system"))?;
    for (field, max) in [("temperature", 1.0), ("top_p", 1.0)] {
        if let Some(v) = obj.get(field) {
            let v = v.as_f64().ok_or_else(|| {
                AnthropicError::invalid(format!("{field}: Input should be a valid number"))
            })?;
            if v > max {
                return Err(AnthropicError::invalid(format!(
                    "{field}: Input should be less than or equal to {max}"
                )));
            }
            if v < 0.0 {
                return Err(AnthropicError::invalid(format!(
                    "{field}: Input should be greater than or equal to 0"
                )));
            }
        }
    }
    let set = |field: &str| obj.get(field).is_some_and(|v| !v.is_null());
    if set("temperature") && set("top_p") && refuses_temperature_with_top_p(&model) {
        return Err(AnthropicError::invalid(
            "`temperature` and `top_p` cannot both be specified for this model. Please use only one.",
        ));
    }
    let stop_sequences: Vec<String> = match obj.get("stop_sequences") {
        None => vec![],
        Some(Value::Array(items)) => items
            .iter()
            .map(|s| {
                s.as_str().map(str::to_owned).ok_or_else(|| {
                    AnthropicError::invalid(
                        "stop_sequences: Input should be a valid list of strings",
                    )
                })
            })
            .collect::<Result<_, _>>()?,
        Some(_) => {
            return Err(AnthropicError::invalid(
                "stop_sequences: Input should be a valid list",
            ));
        }
    };
    if let Some(metadata) = obj.get("metadata") {
        let valid = metadata
            .as_object()
            .is_some_and(|m| m.iter().all(|(k, v)| k == "user_id" && v.is_string()));
        if !valid {
            return Err(AnthropicError::invalid(
                "metadata: only a string user_id is permitted",
            ));
        }
    }
    if let Some(config) = obj.get("output_config") {
        let format = config.get("format");
        let valid = format.is_none_or(|f| {
            f.get("type").and_then(Value::as_str) == Some("json_schema")
                && f.get("schema").is_some_and(Value::is_object)
        });
        if !valid {
            return Err(AnthropicError::invalid(
                "output_config.format: expected {\"type\": \"json_schema\", \"schema\": {...}}",
            ));
        }
    }
    let tool_names = tools(obj.get("tools"))?;
    let choice = tool_choice(obj.get("tool_choice"), &tool_names)?;
    let thinking = thinking(obj, max_tokens, &choice)?;
    let messages = match obj.get("messages") {
        Some(Value::Array(m)) if !m.is_empty() => m,
        Some(Value::Array(_)) => {
            return Err(AnthropicError::invalid(
                "messages: at least one message is required",
            ));
        }
        _ => return Err(field_required("messages")),
    };
    validate_messages(messages, thinking)?;

    let last_user = messages
        .iter()
        .rev()
        .filter(|m| m["role"] == "user")
        .map(user_text)
        .find(|t| !t.is_empty())
        .unwrap_or_default();
    let directives =
        Directives::parse(&last_user).map_err(|e| AnthropicError::invalid(e.message))?;
    let prompt = (word_count(&system_text) + messages.iter().map(prompt_words).sum::<u64>()).max(1);
    let cache_read = directives.cache.min(prompt);
    let cache_write = number_directive(&last_user, "cache_write")
        .unwrap_or(0)
        .min(prompt - cache_read);

    let thinking_text = thinking.then(|| format!("Thinking about: {last_user}"));
    let thinking_tokens = thinking_text.as_deref().map_or(0, word_count);
    let wants_call = choice.forced || (directives.tool && choice.mode != "none");
    let (text, calls, mut stop_reason, stop_sequence) = match tool_names.first() {
        Some(first) if wants_call => {
            let name = choice.name.clone().unwrap_or_else(|| first.clone());
            let count = if last_user.contains("[parallel]") && !choice.no_parallel {
                2
            } else {
                1
            };
            let calls = (0..count)
                .map(|i| Call {
                    id: format!("toolu_mock_{i}"),
                    name: if i == 0 {
                        name.clone()
                    } else {
                        tool_names.get(1).unwrap_or(&name).clone()
                    },
                    fragments: TOOL_ARGUMENTS[i],
                })
                .collect();
            (vec![], calls, "tool_use", None)
        }
        _ => {
            let mut echo = format!("Echo: {last_user}");
            let mut cut: Option<(usize, String)> = None;
            for s in &stop_sequences {
                if let Some(at) = echo.find(s.as_str())
                    && cut.as_ref().is_none_or(|(c, _)| at < *c)
                {
                    cut = Some((at, s.clone()));
                }
            }
            let mut reason = "end_turn";
            let mut matched = None;
            if let Some((at, s)) = cut {
                echo.truncate(at);
                reason = "stop_sequence";
                matched = Some(s);
            }
            let mut words = pieces(&echo);
            let room = max_tokens.saturating_sub(thinking_tokens);
            if words.len() as u64 > room {
                words.truncate(usize::try_from(room).unwrap_or(usize::MAX));
                reason = "max_tokens";
                matched = None;
            }
            (words, vec![], reason, matched)
        }
    };
    if last_user.contains("[refusal]") {
        stop_reason = "refusal";
    }
    let answer_tokens = if calls.is_empty() {
        text.len() as u64
    } else {
        calls
            .iter()
            .map(|c: &Call| word_count(&c.fragments.concat()))
            .sum()
    };
    Ok(Plan {
        model,
        stream,
        thinking: thinking_text,
        text,
        calls,
        stop_reason,
        stop_sequence,
        input_tokens: prompt - cache_read - cache_write,
        cache_read,
        cache_write,
        output_tokens: answer_tokens + thinking_tokens,
        thinking_tokens,
        delay: Duration::from_millis(directives.delay_ms),
        chunk_delay: Duration::from_millis(directives.chunk_delay_ms),
        stream_error: directives.stream_error,
        status: directives.status,
    })
}

/// The `system` field's text; string or non-empty text blocks.
fn system(system: Option<&Value>) -> Result<String, AnthropicError> {
    match system {
        None => Ok(String::new()),
        Some(Value::String(s)) => Ok(s.clone()),
        Some(Value::Array(blocks)) => {
            let mut texts = Vec::new();
            for (i, block) in blocks.iter().enumerate() {
                match (block["type"].as_str(), block["text"].as_str()) {
                    (Some("text"), Some("")) => {
                        return Err(AnthropicError::invalid(
                            "system: text content blocks must be non-empty",
                        ));
                    }
                    (Some("text"), Some(text)) => texts.push(text.to_owned()),
                    _ => {
                        return Err(AnthropicError::invalid(format!(
                            "system.{i}: Input should be a text block"
                        )));
                    }
                }
            }
            Ok(texts.join(" "))
        }
        Some(_) => Err(AnthropicError::invalid(
            "system: Input should be a valid string or list of text blocks",
        )),
    }
}

fn tools(tools: Option<&Value>) -> Result<Vec<String>, AnthropicError> {
    let Some(tools) = tools else {
        return Ok(vec![]);
    };
    let tools = tools
        .as_array()
        .ok_or_else(|| AnthropicError::invalid("tools: Input should be a valid list"))?;
    let mut names = Vec::new();
    for (i, tool) in tools.iter().enumerate() {
        let Some(t) = tool.as_object() else {
            return Err(AnthropicError::invalid(format!(
                "tools.{i}: Input should be an object"
            )));
        };
        if let Some(extra) = t.keys().find(|k| !TOOL_FIELDS.contains(&k.as_str())) {
            return Err(AnthropicError::invalid(format!(
                "tools.{i}.custom.{extra}: Extra inputs are not permitted"
            )));
        }
        let Some(name) = t.get("name").and_then(Value::as_str) else {
            return Err(field_required(&format!("tools.{i}.custom.name")));
        };
        match t.get("input_schema") {
            None => return Err(field_required(&format!("tools.{i}.custom.input_schema"))),
            Some(schema) if schema["type"] != "object" => {
                return Err(AnthropicError::invalid(format!(
                    "tools.{i}.custom.input_schema.type: Input should be 'object'"
                )));
            }
            Some(_) => {}
        }
        names.push(name.to_owned());
    }
    Ok(names)
}

#[derive(Debug, Default)]
struct ToolChoice {
    mode: String,
    name: Option<String>,
    forced: bool,
    no_parallel: bool,
}

fn tool_choice(choice: Option<&Value>, tools: &[String]) -> Result<ToolChoice, AnthropicError> {
    let Some(choice) = choice else {
        return Ok(ToolChoice {
            mode: "auto".into(),
            ..Default::default()
        });
    };
    if tools.is_empty() {
        return Err(AnthropicError::invalid(
            "tool_choice may only be specified while providing tools.",
        ));
    }
    let mode = choice["type"].as_str().unwrap_or("");
    let no_parallel = match choice.get("disable_parallel_tool_use") {
        None => false,
        Some(_) if mode == "none" => {
            return Err(AnthropicError::invalid(
                "tool_choice.none.disable_parallel_tool_use: Extra inputs are not permitted",
            ));
        }
        Some(v) => v.as_bool().ok_or_else(|| {
            AnthropicError::invalid(
                "tool_choice.disable_parallel_tool_use: Input should be a valid boolean",
            )
        })?,
    };
    let name = match mode {
        "auto" | "any" | "none" => None,
        "tool" => match choice["name"].as_str() {
            Some(n) if tools.iter().any(|t| t == n) => Some(n.to_owned()),
            Some(n) => {
                return Err(AnthropicError::invalid(format!(
                    "tool_choice.tool.name: Tool '{n}' not found in tools"
                )));
            }
            None => return Err(field_required("tool_choice.tool.name")),
        },
        _ => {
            return Err(AnthropicError::invalid(
                "tool_choice: Input tag does not match any of the expected tags: 'auto', 'any', 'tool', 'none'",
            ));
        }
    };
    Ok(ToolChoice {
        mode: mode.to_owned(),
        forced: mode == "any" || mode == "tool",
        name,
        no_parallel,
    })
}

/// Whether thinking is on, after checking the `thinking` field against the rest.
fn thinking(
    obj: &Map<String, Value>,
    max_tokens: u64,
    choice: &ToolChoice,
) -> Result<bool, AnthropicError> {
    let Some(thinking) = obj.get("thinking") else {
        return Ok(false);
    };
    match thinking["type"].as_str() {
        Some("disabled") => Ok(false),
        Some("enabled") => {
            let budget = thinking["budget_tokens"]
                .as_u64()
                .ok_or_else(|| field_required("thinking.enabled.budget_tokens"))?;
            if budget < 1024 {
                return Err(AnthropicError::invalid(
                    "thinking.enabled.budget_tokens: Input should be greater than or equal to 1024",
                ));
            }
            if budget >= max_tokens {
                return Err(AnthropicError::invalid(
                    "`max_tokens` must be greater than `thinking.budget_tokens`. Please consult our documentation at https://docs.claude.com/en/docs/build-with-claude/extended-thinking#max-tokens-and-context-window-size",
                ));
            }
            if choice.forced {
                return Err(AnthropicError::invalid(
                    "Thinking may not be enabled when tool_choice forces tool use.",
                ));
            }
            if obj
                .get("temperature")
                .and_then(Value::as_f64)
                .is_some_and(|t| (t - 1.0).abs() > f64::EPSILON)
            {
                return Err(AnthropicError::invalid(
                    "`temperature` may only be set to 1 when thinking is enabled. Please consult our documentation at https://docs.claude.com/en/docs/build-with-claude/extended-thinking#feature-compatibility",
                ));
            }
            Ok(true)
        }
        _ => Err(AnthropicError::invalid(
            "thinking: Input tag does not match any of the expected tags: 'disabled', 'enabled'",
        )),
    }
}

fn block_type(block: &Value) -> &str {
    block["type"].as_str().unwrap_or("")
}

fn validate_messages(messages: &[Value], thinking: bool) -> Result<(), AnthropicError> {
    let last = messages.len() - 1;
    for (i, message) in messages.iter().enumerate() {
        let role = message["role"].as_str().unwrap_or("");
        if role != "user" && role != "assistant" {
            return Err(AnthropicError::invalid(format!(
                "messages.{i}.role: Input should be 'user' or 'assistant'"
            )));
        }
        let blocks: Vec<Value> = match &message["content"] {
            Value::String(s) if s.is_empty() && !(i == last && role == "assistant") => {
                return Err(non_empty(i));
            }
            Value::String(s) => vec![json!({"type": "text", "text": s})],
            Value::Array(blocks) if blocks.is_empty() && !(i == last && role == "assistant") => {
                return Err(non_empty(i));
            }
            Value::Array(blocks) => blocks.clone(),
            _ => return Err(field_required(&format!("messages.{i}.content"))),
        };
        for (j, block) in blocks.iter().enumerate() {
            validate_block(i, j, role, block)?;
        }
        if role == "user" {
            if let Some(j) = blocks
                .iter()
                .skip_while(|b| block_type(b) == "tool_result")
                .position(|b| block_type(b) == "tool_result")
            {
                return Err(AnthropicError::invalid(format!(
                    "messages.{i}.content.{j}: `tool_result` blocks must come first in the user message, before any other content"
                )));
            }
            let made = i
                .checked_sub(1)
                .map(|p| ids(&messages[p], "tool_use", "id"))
                .unwrap_or_default();
            for (j, block) in blocks.iter().enumerate() {
                let id = block["tool_use_id"].as_str().unwrap_or("");
                if block_type(block) == "tool_result" && !made.iter().any(|m| m == id) {
                    return Err(AnthropicError::invalid(format!(
                        "messages.{i}.content.{j}: unexpected `tool_use_id` found in `tool_result` blocks: {id}. Each `tool_result` block must have a corresponding `tool_use` block in the previous message."
                    )));
                }
            }
        } else {
            if let Some(j) = blocks
                .iter()
                .skip_while(|b| matches!(block_type(b), "thinking" | "redacted_thinking"))
                .position(|b| matches!(block_type(b), "thinking" | "redacted_thinking"))
            {
                return Err(AnthropicError::invalid(format!(
                    "messages.{i}.content.{j}: thinking blocks must come before any other content in the assistant message"
                )));
            }
            let used = ids(message, "tool_use", "id");
            if !used.is_empty() {
                let answered = messages
                    .get(i + 1)
                    .filter(|next| next["role"] == "user")
                    .map(|next| ids(next, "tool_result", "tool_use_id"))
                    .unwrap_or_default();
                let missing: Vec<&str> = used
                    .iter()
                    .filter(|id| !answered.contains(id))
                    .map(String::as_str)
                    .collect();
                if !missing.is_empty() {
                    return Err(AnthropicError::invalid(format!(
                        "messages.{i}: `tool_use` ids were found without `tool_result` blocks immediately after: {}. Each `tool_use` block must have a corresponding `tool_result` block in the next message.",
                        missing.join(", ")
                    )));
                }
            }
        }
    }
    if thinking {
        check_thinking_turn(messages)?;
    }
    Ok(())
}

fn non_empty(i: usize) -> AnthropicError {
    AnthropicError::invalid(format!(
        "messages.{i}: all messages must have non-empty content except for the optional final assistant message"
    ))
}

fn ids(message: &Value, kind: &str, field: &str) -> Vec<String> {
    message["content"]
        .as_array()
        .map(|blocks| {
            blocks
                .iter()
                .filter(|b| block_type(b) == kind)
                .filter_map(|b| b[field].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

fn validate_block(i: usize, j: usize, role: &str, block: &Value) -> Result<(), AnthropicError> {
    let at = format!("messages.{i}.content.{j}");
    let kind = block_type(block);
    let allowed = match role {
        "user" => ["text", "image", "tool_result", "document"].contains(&kind),
        _ => ["text", "tool_use", "thinking", "redacted_thinking"].contains(&kind),
    };
    if !allowed {
        return Err(AnthropicError::invalid(format!(
            "{at}.type: Input tag '{kind}' is not permitted in a {role} message"
        )));
    }
    match kind {
        "text" => match block["text"].as_str() {
            Some("") => Err(AnthropicError::invalid(
                "messages: text content blocks must be non-empty",
            )),
            Some(_) => Ok(()),
            None => Err(field_required(&format!("{at}.text.text"))),
        },
        "image" => {
            let source = &block["source"];
            match source["type"].as_str() {
                Some("base64") => {
                    let media = source["media_type"].as_str().unwrap_or("");
                    if !MEDIA_TYPES.contains(&media) {
                        return Err(AnthropicError::invalid(format!(
                            "{at}.image.source.base64.media_type: Input should be 'image/jpeg', 'image/png', 'image/gif' or 'image/webp'"
                        )));
                    }
                    let data = source["data"].as_str().unwrap_or("");
                    let base64 = !data.is_empty()
                        && data
                            .bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b"+/=".contains(&b));
                    if !base64 {
                        return Err(AnthropicError::invalid(format!(
                            "{at}.image.source.base64.data: The image data is not valid base64 (send the bare data, without a data: prefix)"
                        )));
                    }
                    Ok(())
                }
                Some("url") => {
                    let url = source["url"].as_str().unwrap_or("");
                    if url.starts_with("https://") || url.starts_with("http://") {
                        Ok(())
                    } else {
                        Err(AnthropicError::invalid(format!(
                            "{at}.image.source.url.url: Input should be a valid URL"
                        )))
                    }
                }
                _ => Err(AnthropicError::invalid(format!(
                    "{at}.image.source: Input tag does not match any of the expected tags: 'base64', 'url'"
                ))),
            }
        }
        "tool_use" => {
            if block["id"].as_str().is_none_or(str::is_empty) || block["name"].as_str().is_none() {
                return Err(field_required(&format!("{at}.tool_use.id")));
            }
            if !block["input"].is_object() {
                return Err(AnthropicError::invalid(format!(
                    "{at}.tool_use.input: Input should be a valid dictionary"
                )));
            }
            Ok(())
        }
        "tool_result" => match &block["content"] {
            Value::Null | Value::String(_) => Ok(()),
            Value::Array(parts)
                if parts
                    .iter()
                    .all(|p| block_type(p) != "text" || p["text"] != "") =>
            {
                Ok(())
            }
            Value::Array(_) => Err(AnthropicError::invalid(
                "messages: text content blocks must be non-empty",
            )),
            _ => Err(AnthropicError::invalid(format!(
                "{at}.tool_result.content: Input should be a valid string or list"
            ))),
        },
        "thinking" => {
            let text = block["thinking"].as_str().unwrap_or("");
            if block["signature"].as_str() != Some(signature(text).as_str()) {
                return Err(AnthropicError::invalid(format!(
                    "{at}: Invalid `signature` in `thinking` block"
                )));
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

/// With thinking on, the final assistant turn that used tools must start with its thinking.
fn check_thinking_turn(messages: &[Value]) -> Result<(), AnthropicError> {
    let last_tool_turn = messages
        .iter()
        .rposition(|m| m["role"] == "assistant" && !ids(m, "tool_use", "id").is_empty());
    let Some(i) = last_tool_turn else {
        return Ok(());
    };
    // Only the tool loop still in progress counts: no plain user text after its results.
    let in_loop = messages[i + 1..].iter().all(|m| {
        m["role"] != "user"
            || ids(m, "tool_result", "tool_use_id").len()
                == m["content"].as_array().map_or(0, Vec::len)
    });
    let first = messages[i]["content"]
        .as_array()
        .and_then(|b| b.first())
        .map_or("", block_type);
    if in_loop && !matches!(first, "thinking" | "redacted_thinking") {
        return Err(AnthropicError::invalid(format!(
            "messages.{i}.content.0.type: Expected `thinking` or `redacted_thinking`, but found `{first}`. When `thinking` is enabled, a final `assistant` message must start with a thinking block (preceeding the lastmost set of `tool_use` and `tool_result` blocks). We recommend you include thinking blocks from previous turns. To avoid this requirement, disable `thinking`. Please consult our documentation at https://docs.claude.com/en/docs/build-with-claude/extended-thinking"
        )));
    }
    Ok(())
}

/// The text of a user message: its string content, or its text blocks joined by a space.
fn user_text(message: &Value) -> String {
    match &message["content"] {
        Value::String(s) => s.clone(),
        Value::Array(blocks) => blocks
            .iter()
            .filter(|b| block_type(b) == "text")
            .filter_map(|b| b["text"].as_str())
            .collect::<Vec<_>>()
            .join(" "),
        _ => String::new(),
    }
}

/// The prompt words of a message: text blocks and tool_result contents.
fn prompt_words(message: &Value) -> u64 {
    match &message["content"] {
        Value::String(s) => word_count(s),
        Value::Array(blocks) => blocks
            .iter()
            .map(|b| match block_type(b) {
                "text" => word_count(b["text"].as_str().unwrap_or("")),
                "tool_result" => match &b["content"] {
                    Value::String(s) => word_count(s),
                    Value::Array(parts) => parts
                        .iter()
                        .filter_map(|p| p["text"].as_str())
                        .map(word_count)
                        .sum(),
                    _ => 0,
                },
                _ => 0,
            })
            .sum(),
        _ => 0,
    }
}

fn usage(plan: &Plan, output_tokens: u64) -> Value {
    let mut usage = json!({
        "input_tokens": plan.input_tokens,
        "cache_creation_input_tokens": plan.cache_write,
        "cache_read_input_tokens": plan.cache_read,
        "cache_creation": {"ephemeral_5m_input_tokens": plan.cache_write, "ephemeral_1h_input_tokens": 0},
        "output_tokens": output_tokens,
        "service_tier": "standard",
    });
    if plan.thinking.is_some() && output_tokens == plan.output_tokens {
        usage["output_tokens_details"] = json!({"thinking_tokens": plan.thinking_tokens});
    }
    usage
}

fn message_object(plan: &Plan) -> Value {
    let mut content = Vec::new();
    if let Some(thinking) = &plan.thinking {
        content.push(
            json!({"type": "thinking", "thinking": thinking, "signature": signature(thinking)}),
        );
    }
    if plan.calls.is_empty() {
        content.push(json!({"type": "text", "text": plan.text.concat()}));
    }
    for call in &plan.calls {
        let input: Value = serde_json::from_str(&call.fragments.concat()).unwrap_or(Value::Null);
        content.push(json!({"type": "tool_use", "id": call.id, "name": call.name, "input": input}));
    }
    json!({
        "id": format!("msg_mock{}", unique_hex()),
        "type": "message",
        "role": "assistant",
        "model": plan.model,
        "content": content,
        "stop_reason": plan.stop_reason,
        "stop_sequence": plan.stop_sequence,
        "usage": usage(plan, plan.output_tokens),
    })
}

/// The events of a streamed reply, as `(event name, data)`, and where `[stream_error]` cuts it.
fn events(plan: &Plan) -> (Vec<(&'static str, Value)>, Option<usize>) {
    let mut events = vec![(
        "message_start",
        json!({"type": "message_start", "message": {
            "id": format!("msg_mock{}", unique_hex()), "type": "message", "role": "assistant",
            "model": plan.model, "content": [], "stop_reason": null, "stop_sequence": null,
            "usage": usage(plan, 1)
        }}),
    )];
    let mut index = 0;
    let mut content_deltas = 0;
    let mut fail_at = None;
    let mut block = |events: &mut Vec<(&'static str, Value)>,
                     start: Value,
                     deltas: Vec<Value>,
                     content: bool| {
        events.push((
            "content_block_start",
            json!({"type": "content_block_start", "index": index, "content_block": start}),
        ));
        if index == 0 {
            events.push(("ping", json!({"type": "ping"})));
        }
        for delta in deltas {
            if content {
                content_deltas += 1;
                if content_deltas == 3 && plan.stream_error {
                    fail_at = Some(events.len());
                }
            }
            events.push((
                "content_block_delta",
                json!({"type": "content_block_delta", "index": index, "delta": delta}),
            ));
        }
        events.push((
            "content_block_stop",
            json!({"type": "content_block_stop", "index": index}),
        ));
        index += 1;
    };
    if let Some(thinking) = &plan.thinking {
        let mut deltas: Vec<Value> = pieces(thinking)
            .into_iter()
            .map(|p| json!({"type": "thinking_delta", "thinking": p}))
            .collect();
        deltas.push(json!({"type": "signature_delta", "signature": signature(thinking)}));
        block(
            &mut events,
            json!({"type": "thinking", "thinking": "", "signature": ""}),
            deltas,
            false,
        );
    }
    if plan.calls.is_empty() {
        let deltas = plan
            .text
            .iter()
            .map(|w| json!({"type": "text_delta", "text": w}))
            .collect();
        block(
            &mut events,
            json!({"type": "text", "text": ""}),
            deltas,
            true,
        );
    }
    for call in &plan.calls {
        let deltas = std::iter::once("")
            .chain(call.fragments)
            .map(|f| json!({"type": "input_json_delta", "partial_json": f}))
            .collect();
        block(
            &mut events,
            json!({"type": "tool_use", "id": call.id, "name": call.name, "input": {}}),
            deltas,
            true,
        );
    }
    let mut final_usage = json!({"output_tokens": plan.output_tokens});
    if plan.thinking.is_some() {
        final_usage["output_tokens_details"] = json!({"thinking_tokens": plan.thinking_tokens});
    }
    events.push((
        "message_delta",
        json!({"type": "message_delta",
               "delta": {"stop_reason": plan.stop_reason, "stop_sequence": plan.stop_sequence},
               "usage": final_usage}),
    ));
    events.push(("message_stop", json!({"type": "message_stop"})));
    (events, fail_at)
}

fn sse(plan: Plan) -> Response {
    let (script, fail_at) = events(&plan);
    let chunk_delay = plan.chunk_delay;
    let body = async_stream::stream! {
        for (i, (name, data)) in script.iter().enumerate() {
            if i > 0 && !chunk_delay.is_zero() {
                tokio::time::sleep(chunk_delay).await;
            }
            if fail_at == Some(i) {
                let error = json!({"type": "error", "error": {"type": "api_error", "message": STREAM_ERROR_MESSAGE}});
                yield Ok::<Bytes, Infallible>(event("error", &error));
                return;
            }
            yield Ok(event(name, data));
        }
    };
    (
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, "text/event-stream; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        Body::from_stream(body),
    )
        .into_response()
}

fn event(name: &str, data: &Value) -> Bytes {
    Bytes::from(format!("event: {name}\ndata: {data}\n\n"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(extra: Value) -> Value {
        let mut body = json!({"model": "claude-sonnet-4-5", "max_tokens": 100,
            "messages": [{"role": "user", "content": "hello there"}]});
        if let (Some(b), Some(e)) = (body.as_object_mut(), extra.as_object()) {
            b.extend(e.clone());
        }
        body
    }

    fn refusal(extra: Value) -> String {
        plan(&request(extra)).unwrap_err().message
    }

    #[test]
    fn echoes_with_word_count_usage() {
        let p = plan(&request(json!({"system": "Be brief."}))).unwrap();
        assert_eq!(p.text.concat(), "Echo: hello there");
        assert_eq!((p.input_tokens, p.output_tokens), (4, 3));
    }

    #[test]
    fn refuses_what_anthropic_refuses() {
        assert!(refusal(json!({"n": 2})).contains("Extra inputs"));
        assert!(refusal(json!({"temperature": 1.5})).contains("less than or equal to 1"));
        assert!(
            refusal(json!({"messages": [{"role": "system", "content": "x"}]}))
                .contains("'user' or 'assistant'")
        );
        assert!(
            refusal(
                json!({"messages": [{"role": "user", "content": [{"type": "text", "text": ""}]}]})
            )
            .contains("non-empty")
        );
        assert!(
            refusal(json!({"thinking": {"type": "enabled", "budget_tokens": 512}}))
                .contains("1024")
        );
        assert!(
            refusal(json!({"thinking": {"type": "enabled", "budget_tokens": 2048}}))
                .contains("max_tokens")
        );
        let mut no_max = request(json!({}));
        no_max.as_object_mut().unwrap().remove("max_tokens");
        assert!(
            plan(&no_max)
                .unwrap_err()
                .message
                .contains("max_tokens: Field required")
        );
        let tool_loop = json!({"messages": [
            {"role": "user", "content": "q"},
            {"role": "assistant", "content": [{"type": "tool_use", "id": "t1", "name": "f", "input": {}}]},
            {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "tool_result", "tool_use_id": "t1", "content": "r"}]}
        ]});
        assert!(refusal(tool_loop).contains("must come first"));
        let unanswered = json!({"messages": [
            {"role": "user", "content": "q"},
            {"role": "assistant", "content": [{"type": "tool_use", "id": "t1", "name": "f", "input": {}}]},
            {"role": "user", "content": "next"}
        ]});
        assert!(refusal(unanswered).contains("without `tool_result`"));
        let prefixed = json!({"messages": [{"role": "user", "content": [
            {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "data:image/png;base64,AAAA"}}
        ]}]});
        assert!(refusal(prefixed).contains("not valid base64"));
    }

    #[test]
    fn claude_4_5_and_later_take_temperature_or_top_p_not_both() {
        let both = json!({"temperature": 0.5, "top_p": 0.9});
        let e = plan(&request(both.clone())).unwrap_err();
        assert_eq!(e.status, StatusCode::BAD_REQUEST);
        assert_eq!(
            e.body()["error"],
            json!({
                "type": "invalid_request_error",
                "message": "`temperature` and `top_p` cannot both be specified for this model. Please use only one."
            })
        );
        assert!(plan(&request(json!({"temperature": 0.5}))).is_ok());
        assert!(plan(&request(json!({"top_p": 0.9}))).is_ok());
        for model in ["claude-haiku-4-5-20251001", "claude-opus-4-6"] {
            let mut body = request(both.clone());
            body["model"] = json!(model);
            assert!(plan(&body).is_err(), "{model}");
        }
        for model in [
            "claude-sonnet-4-20250514",
            "claude-3-7-sonnet-latest",
            "claude-opus-4-1",
        ] {
            let mut body = request(both.clone());
            body["model"] = json!(model);
            assert!(plan(&body).is_ok(), "{model}");
        }
    }

    #[test]
    fn thinking_tool_loops_need_the_signed_thinking_block_back() {
        let thinking = "Thinking about: weather? [tool]";
        let turn = |first: Option<Value>| {
            let mut content = first.into_iter().collect::<Vec<_>>();
            content
                .push(json!({"type": "tool_use", "id": "toolu_mock_0", "name": "f", "input": {}}));
            json!({"max_tokens": 4000, "thinking": {"type": "enabled", "budget_tokens": 1024},
            "tools": [{"name": "f", "input_schema": {"type": "object"}}],
            "messages": [
                {"role": "user", "content": "weather? [tool]"},
                {"role": "assistant", "content": content},
                {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_mock_0", "content": "sunny"}]}
            ]})
        };
        assert!(refusal(turn(None)).contains("Expected `thinking`"));
        let forged = json!({"type": "thinking", "thinking": thinking, "signature": "forged"});
        assert!(refusal(turn(Some(forged))).contains("Invalid `signature`"));
        let signed =
            json!({"type": "thinking", "thinking": thinking, "signature": signature(thinking)});
        let p = plan(&request(turn(Some(signed)))).unwrap();
        assert_eq!(
            p.thinking.as_deref(),
            Some("Thinking about: weather? [tool]")
        );
    }

    #[test]
    fn streams_name_their_events_and_fail_in_band_when_told() {
        let p = plan(&request(json!({"stream": true, "messages": [{"role": "user", "content": "a b c [stream_error]"}]}))).unwrap();
        let (events, fail_at) = events(&p);
        let names: Vec<&str> = events.iter().map(|(n, _)| *n).collect();
        assert_eq!(
            &names[..3],
            ["message_start", "content_block_start", "ping"]
        );
        assert_eq!(names.last(), Some(&"message_stop"));
        assert!(events.iter().all(|(n, d)| d["type"] == *n));
        let at = fail_at.unwrap();
        assert_eq!(
            events[..at]
                .iter()
                .filter(|(n, _)| *n == "content_block_delta")
                .count(),
            2
        );
    }
}
