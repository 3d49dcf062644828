//! The mock's Gemini API flavour: `POST …/models/{model}:generateContent` (one JSON answer) and
//! `…:streamGenerateContent?alt=sse` (SSE with CRLF line endings, no `[DONE]`, cumulative
//! `usageMetadata` on every chunk), checked the way the real API checks requests, answering with
//! Google's RPC error body (`{"error":{"code","message","status","details"?}}`):
//!
//! - the key in `x-goog-api-key`; wrong or missing → 400 `INVALID_ARGUMENT` with
//!   `details[].reason = "API_KEY_INVALID"`;
//! - unknown JSON names anywhere the mock knows the schema, snake_case included →
//!   `Invalid JSON payload received. Unknown name "…"`;
//! - roles other than `user`/`model`, empty `contents`, empty `parts`, empty `text`, a part
//!   without a data field, a `functionResponse` turn whose count or names do not match the
//!   previous `functionCall` turn, a function-call turn not right after a user or
//!   function-response turn;
//! - with `thinkingConfig.includeThoughts`, a `functionCall` part in the history without the
//!   `thoughtSignature` this mock issued for it (see [`signature_for`]) or Google's documented
//!   stand-in [`SKIP_THOUGHT_SIGNATURE_VALIDATOR`].
//!
//! The answer follows the mock's rules (tests/python/mock_rules.py): `Echo: <last user text>`
//! (the text parts of the last `user` content that has text), tokens are whitespace-separated
//! words of every `text` part sent (system instruction included, at least 1). Thinking on
//! (`includeThoughts: true`) adds a thought part `Thinking about: <last user text>` counted as
//! `thoughtsTokenCount`, and a `thoughtSignature` on the first function call (or the first text
//! part). Directives in the last user text: `[tool]` calls the first declared function (mode
//! `AUTO`; `ANY` always calls, `NONE` never), `[parallel]` calls every declared function (only
//! the first call carries the signature, as Gemini does), `[status=N]`, `[delay_ms=N]`,
//! `[cache=N]` (`cachedContentTokenCount`), `[stream_error]` (an in-band error chunk after two
//! chunks), `[finish=REASON]` (end with that `finishReason`), `[blocked]` (no candidates,
//! `promptFeedback.blockReason: SAFETY`), `[no_finish]` (a stream that ends without any
//! `finishReason`). After a function-response turn the mock answers text
//! (unless mode is `ANY`). `stopSequences` cut the answer before the first match;
//! `maxOutputTokens` cuts it to that many words (`MAX_TOKENS`); `candidateCount` repeats it.

use std::{convert::Infallible, time::Duration};

use axum::{
    Json,
    body::{Body, Bytes},
    http::StatusCode,
    response::{IntoResponse, Response},
};
use base64::{Engine, engine::general_purpose::STANDARD as BASE64};
use serde_json::{Map, Value, json};

use super::request::{Directives, pieces, word_count};

/// The arguments of every function call the mock makes.
pub const CALL_ARGS: &str = r#"{"location":"Paris"}"#;

/// The stand-in Google documents for a thought signature the client did not keep: accepted in
/// place of any.
pub const SKIP_THOUGHT_SIGNATURE_VALIDATOR: &str = "skip_thought_signature_validator";

/// The thought signature the mock issues for a call of `name` (and for text: `name` = "text"),
/// base64 like Google's.
pub fn signature_for(name: &str) -> String {
    BASE64.encode(format!("mock-thought-signature:{name}"))
}

/// Google's error body.
#[derive(Debug, Clone)]
pub struct GoogleError {
    pub code: u16,
    pub message: String,
    pub details: Option<Value>,
}

impl GoogleError {
    fn invalid(message: impl Into<String>) -> Self {
        Self {
            code: 400,
            message: message.into(),
            details: None,
        }
    }

    fn status_name(code: u16) -> &'static str {
        match code {
            400 => "INVALID_ARGUMENT",
            401 => "UNAUTHENTICATED",
            403 => "PERMISSION_DENIED",
            404 => "NOT_FOUND",
            429 => "RESOURCE_EXHAUSTED",
            500 => "INTERNAL",
            503 => "UNAVAILABLE",
            504 => "DEADLINE_EXCEEDED",
            _ => "UNKNOWN",
        }
    }

    /// Gemini's answer to a wrong or missing key.
    pub fn api_key_invalid() -> Self {
        Self {
            code: 400,
            message: "API key not valid. Please pass a valid API key.".to_owned(),
            details: Some(json!([{
                "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                "reason": "API_KEY_INVALID",
                "domain": "googleapis.com",
                "metadata": {"service": "generativelanguage.googleapis.com"}
            }])),
        }
    }

    pub fn body(&self) -> Value {
        let mut error = json!({
            "code": self.code,
            "message": self.message,
            "status": Self::status_name(self.code),
        });
        if let Some(details) = &self.details {
            error["details"] = details.clone();
        }
        json!({ "error": error })
    }
}

impl IntoResponse for GoogleError {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.code).unwrap_or(StatusCode::BAD_REQUEST);
        (status, Json(self.body())).into_response()
    }
}

fn unknown_name(name: &str, at: &str) -> GoogleError {
    GoogleError::invalid(format!(
        "Invalid JSON payload received. Unknown name \"{name}\" at '{at}': Cannot find field."
    ))
}

/// Refuses any key of `obj` not in `known`.
fn known_fields(obj: &Map<String, Value>, known: &[&str], at: &str) -> Result<(), GoogleError> {
    match obj.keys().find(|k| !known.contains(&k.as_str())) {
        Some(unknown) => Err(unknown_name(unknown, at)),
        None => Ok(()),
    }
}

fn object<'a>(value: &'a Value, at: &str) -> Result<&'a Map<String, Value>, GoogleError> {
    value.as_object().ok_or_else(|| {
        GoogleError::invalid(format!(
            "Invalid JSON payload received. Expected an object at '{at}'."
        ))
    })
}

const REQUEST_FIELDS: &[&str] = &[
    "contents",
    "systemInstruction",
    "tools",
    "toolConfig",
    "generationConfig",
    "safetySettings",
    "cachedContent",
];
const CONTENT_FIELDS: &[&str] = &["role", "parts"];
const PART_FIELDS: &[&str] = &[
    "text",
    "inlineData",
    "fileData",
    "functionCall",
    "functionResponse",
    "executableCode",
    "codeExecutionResult",
    "thought",
    "thoughtSignature",
    "videoMetadata",
];
const PART_DATA: &[&str] = &[
    "text",
    "inlineData",
    "fileData",
    "functionCall",
    "functionResponse",
    "executableCode",
    "codeExecutionResult",
];
const GENERATION_FIELDS: &[&str] = &[
    "stopSequences",
    "temperature",
    "topP",
    "topK",
    "maxOutputTokens",
    "candidateCount",
    "seed",
    "presencePenalty",
    "frequencyPenalty",
    "responseLogprobs",
    "logprobs",
    "responseMimeType",
    "responseSchema",
    "responseJsonSchema",
    "thinkingConfig",
    "responseModalities",
    "mediaResolution",
];

/// How the mock calls functions for one request.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Calls {
    None,
    /// Call these functions (one, or all of them with `[parallel]`).
    Some(Vec<String>),
}

/// Everything the answer depends on.
#[derive(Debug, Clone)]
pub struct GeminiPlan {
    stream: bool,
    thinking: bool,
    last_user: String,
    calls: Calls,
    words: Vec<String>,
    finish: String,
    candidates: u64,
    prompt_tokens: u64,
    cached_tokens: u64,
    blocked: bool,
    no_finish: bool,
    stream_error: bool,
    delay: Duration,
    status: Option<u16>,
}

/// The names of the `functionCall` or `functionResponse` parts (`kind`), in order.
fn names_of(parts: &[Value], kind: &str) -> Vec<String> {
    parts
        .iter()
        .filter_map(|p| p.get(kind))
        .map(|c| {
            c.get("name")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_owned()
        })
        .collect()
}

fn call_names(parts: &[Value]) -> Vec<String> {
    names_of(parts, "functionCall")
}

fn response_names(parts: &[Value]) -> Vec<String> {
    names_of(parts, "functionResponse")
}

/// A `functionCall` / `functionResponse` object at `at`: only `fields`, and a non-empty name.
fn named<'a>(
    value: &'a Value,
    at: &str,
    fields: &[&str],
) -> Result<&'a Map<String, Value>, GoogleError> {
    let obj = object(value, at)?;
    known_fields(obj, fields, at)?;
    if obj
        .get("name")
        .and_then(Value::as_str)
        .is_none_or(str::is_empty)
    {
        return Err(GoogleError::invalid(format!(
            "* GenerateContentRequest.{at}.name: Name cannot be empty.\n"
        )));
    }
    Ok(obj)
}

fn validate_parts(parts: &Value, at: &str) -> Result<Vec<Value>, GoogleError> {
    let Some(parts) = parts.as_array() else {
        return Err(GoogleError::invalid(format!(
            "Invalid JSON payload received. Expected an array at '{at}.parts'."
        )));
    };
    if parts.is_empty() {
        return Err(GoogleError::invalid(format!(
            "* GenerateContentRequest.{at}.parts: contents.parts must not be empty.\n"
        )));
    }
    for (j, part) in parts.iter().enumerate() {
        let here = format!("{at}.parts[{j}]");
        let p = object(part, &here)?;
        known_fields(p, PART_FIELDS, &here)?;
        let data = PART_DATA.iter().filter(|k| p.contains_key(**k)).count();
        if data != 1 {
            return Err(GoogleError::invalid(format!(
                "* GenerateContentRequest.{here}.data: required oneof field 'data' must have one initialized field\n"
            )));
        }
        if let Some(text) = p.get("text")
            && text.as_str().is_none_or(str::is_empty)
        {
            return Err(GoogleError::invalid(
                "Unable to submit request because it has an empty text parameter. Add a value to the parameter and try again. Learn more: https://cloud.google.com/vertex-ai/generative-ai/docs/multimodal/gemini",
            ));
        }
        if let Some(inline) = p.get("inlineData") {
            let inline = object(inline, &format!("{here}.inline_data"))?;
            known_fields(
                inline,
                &["mimeType", "data"],
                &format!("{here}.inline_data"),
            )?;
            let decodes = inline
                .get("data")
                .and_then(Value::as_str)
                .is_some_and(|d| !d.is_empty() && BASE64.decode(d).is_ok());
            if !decodes || !inline.get("mimeType").is_some_and(Value::is_string) {
                return Err(GoogleError::invalid(format!(
                    "Invalid value at '{here}.inline_data.data' (TYPE_BYTES), Base64 decoding failed"
                )));
            }
        }
        if let Some(call) = p.get("functionCall") {
            named(
                call,
                &format!("{here}.function_call"),
                &["id", "name", "args"],
            )?;
        }
        if let Some(response) = p.get("functionResponse") {
            let at_response = format!("{here}.function_response");
            let response = named(response, &at_response, &["id", "name", "response"])?;
            if !response.get("response").is_some_and(Value::is_object) {
                return Err(GoogleError::invalid(format!(
                    "Invalid JSON payload received. Expected an object at '{at_response}.response'."
                )));
            }
        }
    }
    Ok(parts.clone())
}

/// The text parts of `parts`, joined by a space.
fn parts_text(parts: &[Value]) -> String {
    parts
        .iter()
        .filter(|p| !p.get("thought").and_then(Value::as_bool).unwrap_or(false))
        .filter_map(|p| p.get("text").and_then(Value::as_str))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Validates a request and plans the answer.
pub fn plan(body: &Value, stream: bool) -> Result<GeminiPlan, GoogleError> {
    let obj = object(body, "")?;
    known_fields(obj, REQUEST_FIELDS, "")?;
    let mut prompt_tokens = 0;
    if let Some(system) = obj.get("systemInstruction") {
        let system = object(system, "system_instruction")?;
        known_fields(system, CONTENT_FIELDS, "system_instruction")?;
        let parts = validate_parts(
            system.get("parts").unwrap_or(&Value::Null),
            "system_instruction",
        )?;
        prompt_tokens += word_count(&parts_text(&parts));
    }
    let contents = match obj.get("contents") {
        Some(Value::Array(c)) if !c.is_empty() => c,
        _ => {
            return Err(GoogleError::invalid(
                "* GenerateContentRequest.contents: contents is not specified\n",
            ));
        }
    };
    let generation = match obj.get("generationConfig") {
        None => Map::new(),
        Some(g) => {
            let g = object(g, "generation_config")?;
            known_fields(g, GENERATION_FIELDS, "generation_config")?;
            g.clone()
        }
    };
    let thinking_config = match generation.get("thinkingConfig") {
        None => Map::new(),
        Some(t) => {
            let t = object(t, "generation_config.thinking_config")?;
            known_fields(
                t,
                &["includeThoughts", "thinkingBudget", "thinkingLevel"],
                "generation_config.thinking_config",
            )?;
            t.clone()
        }
    };
    let thinking = thinking_config
        .get("includeThoughts")
        .and_then(Value::as_bool)
        .unwrap_or(false)
        && thinking_config
            .get("thinkingBudget")
            .and_then(Value::as_i64)
            != Some(0);
    if let Some(t) = generation.get("temperature").and_then(Value::as_f64)
        && !(0.0..=2.0).contains(&t)
    {
        return Err(GoogleError::invalid(format!(
            "* GenerateContentRequest.generation_config.temperature: temperature must be in the range [0.0, 2.0], got {t}\n"
        )));
    }

    // Contents: roles, parts, turn order, function responses, thought signatures.
    let mut turns: Vec<(String, Vec<Value>)> = Vec::with_capacity(contents.len());
    for (i, content) in contents.iter().enumerate() {
        let at = format!("contents[{i}]");
        let c = object(content, &at)?;
        known_fields(c, CONTENT_FIELDS, &at)?;
        let role = c.get("role").and_then(Value::as_str).unwrap_or("");
        if role != "user" && role != "model" {
            return Err(GoogleError::invalid(
                "Please use a valid role: user, model.",
            ));
        }
        let parts = validate_parts(c.get("parts").unwrap_or(&Value::Null), &at)?;
        prompt_tokens += word_count(&parts_text(&parts));
        turns.push((role.to_owned(), parts));
    }
    for (i, (role, parts)) in turns.iter().enumerate() {
        let calls = call_names(parts);
        if role == "model" && !calls.is_empty() {
            let after_user = i > 0 && turns[i - 1].0 == "user";
            if !after_user {
                return Err(GoogleError::invalid(
                    "Please ensure that function call turn comes immediately after a user turn or after a function response turn.",
                ));
            }
            if thinking {
                let first = parts
                    .iter()
                    .position(|p| p.get("functionCall").is_some())
                    .unwrap_or(0);
                let given = parts[first].get("thoughtSignature").and_then(Value::as_str);
                let expected = signature_for(&calls[0]);
                match given {
                    None => {
                        return Err(GoogleError::invalid(format!(
                            "Function call is missing a thought_signature in functionCall parts. This is required for tools to work correctly, and missing thought_signature may lead to degraded model performance. Additional data, function call `default_api:{}` , position {}. Please refer to https://ai.google.dev/gemini-api/docs/thought-signatures for more details.",
                            calls[0],
                            i + 1
                        )));
                    }
                    Some(sig) if sig != expected && sig != SKIP_THOUGHT_SIGNATURE_VALIDATOR => {
                        return Err(GoogleError::invalid("Corrupted thought signature."));
                    }
                    Some(_) => {}
                }
            }
            if let Some((_, next)) = turns.get(i + 1) {
                let responses = response_names(next);
                if responses.len() != calls.len() {
                    return Err(GoogleError::invalid(
                        "Please ensure that the number of function response parts is equal to the number of function call parts of the function call turn.",
                    ));
                }
                if responses != calls {
                    return Err(GoogleError::invalid(format!(
                        "Please ensure that function response names match the function call names of the function call turn (calls {calls:?}, responses {responses:?})."
                    )));
                }
            }
        } else if !response_names(parts).is_empty() {
            let after_calls = i > 0 && !call_names(&turns[i - 1].1).is_empty();
            if !after_calls {
                return Err(GoogleError::invalid(
                    "Please ensure that function response turn comes immediately after a function call turn.",
                ));
            }
        }
    }

    let last_user = turns
        .iter()
        .rev()
        .filter(|(role, _)| role == "user")
        .map(|(_, parts)| parts_text(parts))
        .find(|t| !t.is_empty())
        .unwrap_or_default();
    let after_responses = turns
        .last()
        .is_some_and(|(_, parts)| !response_names(parts).is_empty());
    let directives = Directives::parse(&last_user).map_err(|e| GoogleError::invalid(e.message))?;
    let calls = function_calls(obj, &last_user, after_responses)?;

    let mut words = pieces(&format!("Echo: {last_user}"));
    let mut finish = "STOP".to_owned();
    if let Some(stops) = generation.get("stopSequences").and_then(Value::as_array) {
        let text = words.concat();
        let cut = stops
            .iter()
            .filter_map(Value::as_str)
            .filter_map(|s| text.find(s))
            .min();
        if let Some(cut) = cut {
            words = pieces(&text[..cut]);
            if words.concat().trim().is_empty() {
                words = vec![];
            }
        }
    }
    if let Some(limit) = generation.get("maxOutputTokens").and_then(Value::as_u64)
        && words.len() as u64 > limit
    {
        words.truncate(usize::try_from(limit).unwrap_or(usize::MAX));
        finish = "MAX_TOKENS".to_owned();
    }
    if let Some(reason) = directive_word(&last_user, "finish") {
        finish = reason;
    }
    let prompt_tokens = prompt_tokens.max(1);
    Ok(GeminiPlan {
        stream,
        thinking,
        calls,
        words,
        finish,
        candidates: generation
            .get("candidateCount")
            .and_then(Value::as_u64)
            .unwrap_or(1)
            .clamp(1, 8),
        prompt_tokens,
        cached_tokens: directives.cache.min(prompt_tokens),
        blocked: last_user.contains("[blocked]"),
        no_finish: last_user.contains("[no_finish]"),
        stream_error: directives.stream_error,
        delay: Duration::from_millis(directives.delay_ms),
        status: directives.status.map(|s| s.as_u16()),
        last_user,
    })
}

/// `[name=WORD]` in the text.
fn directive_word(text: &str, name: &str) -> Option<String> {
    let open = format!("[{name}=");
    let start = text.find(&open)? + open.len();
    let rest = &text[start..];
    Some(rest[..rest.find(']')?].trim().to_owned())
}

/// Which functions the answer calls.
fn function_calls(
    obj: &Map<String, Value>,
    last_user: &str,
    after_responses: bool,
) -> Result<Calls, GoogleError> {
    let mut declared = Vec::new();
    if let Some(tools) = obj.get("tools") {
        let Some(tools) = tools.as_array() else {
            return Err(GoogleError::invalid(
                "Invalid JSON payload received. Expected an array at 'tools'.",
            ));
        };
        for (i, tool) in tools.iter().enumerate() {
            let at = format!("tools[{i}]");
            let t = object(tool, &at)?;
            known_fields(
                t,
                &[
                    "functionDeclarations",
                    "googleSearch",
                    "codeExecution",
                    "urlContext",
                ],
                &at,
            )?;
            for (k, declaration) in t
                .get("functionDeclarations")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .enumerate()
            {
                let here = format!("{at}.function_declarations[{k}]");
                let d = named(
                    declaration,
                    &here,
                    &[
                        "name",
                        "description",
                        "parameters",
                        "parametersJsonSchema",
                        "response",
                        "responseJsonSchema",
                        "behavior",
                    ],
                )?;
                if d.contains_key("parameters") && d.contains_key("parametersJsonSchema") {
                    return Err(GoogleError::invalid(format!(
                        "* GenerateContentRequest.{here}: parameters and parameters_json_schema are mutually exclusive\n"
                    )));
                }
                declared.push(
                    d.get("name")
                        .and_then(Value::as_str)
                        .unwrap_or("")
                        .to_owned(),
                );
            }
        }
    }
    let (mode, allowed) = match obj.get("toolConfig") {
        None => ("AUTO".to_owned(), vec![]),
        Some(config) => {
            let c = object(config, "tool_config")?;
            known_fields(c, &["functionCallingConfig"], "tool_config")?;
            let f = match c.get("functionCallingConfig") {
                Some(f) => object(f, "tool_config.function_calling_config")?.clone(),
                None => Map::new(),
            };
            known_fields(
                &f,
                &["mode", "allowedFunctionNames"],
                "tool_config.function_calling_config",
            )?;
            let mode = f
                .get("mode")
                .and_then(Value::as_str)
                .unwrap_or("AUTO")
                .to_owned();
            if !["AUTO", "ANY", "NONE", "VALIDATED", "MODE_UNSPECIFIED"].contains(&mode.as_str()) {
                return Err(GoogleError::invalid(format!(
                    "Invalid value at 'tool_config.function_calling_config.mode' (type.googleapis.com/google.ai.generativelanguage.v1beta.FunctionCallingConfig.Mode), \"{mode}\""
                )));
            }
            let allowed: Vec<String> = f
                .get("allowedFunctionNames")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect();
            if !allowed.is_empty() && mode != "ANY" && mode != "VALIDATED" {
                return Err(GoogleError::invalid(
                    "* GenerateContentRequest.tool_config.function_calling_config.allowed_function_names: allowed_function_names is only allowed when mode is ANY.\n",
                ));
            }
            (mode, allowed)
        }
    };
    if declared.is_empty() || mode == "NONE" {
        return Ok(Calls::None);
    }
    let candidates: Vec<String> = if allowed.is_empty() {
        declared
    } else {
        declared
            .into_iter()
            .filter(|d| allowed.contains(d))
            .collect()
    };
    let wants = mode == "ANY"
        || (!after_responses && (last_user.contains("[tool]") || last_user.contains("[parallel]")));
    if !wants || candidates.is_empty() {
        return Ok(Calls::None);
    }
    if last_user.contains("[parallel]") {
        Ok(Calls::Some(candidates))
    } else {
        Ok(Calls::Some(candidates.into_iter().take(1).collect()))
    }
}

/// The answer's parts and usage, as a list of stream chunks (a non-streaming answer merges them).
struct Script {
    /// Per chunk: the parts of candidate 0 (the others repeat them).
    chunks: Vec<Vec<Value>>,
    thoughts_tokens: u64,
    /// Candidate tokens so far, per chunk.
    candidates_tokens: Vec<u64>,
    finish: String,
}

fn script(plan: &GeminiPlan) -> Script {
    let mut chunks = Vec::new();
    let mut tokens = Vec::new();
    let mut so_far = 0;
    let mut thoughts_tokens = 0;
    if plan.thinking {
        let thought = format!("Thinking about: {}", plan.last_user);
        thoughts_tokens = word_count(&thought);
        chunks.push(vec![json!({"text": thought, "thought": true})]);
        tokens.push(0);
    }
    match &plan.calls {
        Calls::Some(names) => {
            let parts: Vec<Value> = names
                .iter()
                .enumerate()
                .map(|(k, name)| {
                    let mut part = json!({"functionCall": {
                        "name": name,
                        "args": serde_json::from_str::<Value>(CALL_ARGS).unwrap_or_default()
                    }});
                    if plan.thinking && k == 0 {
                        part["thoughtSignature"] = Value::String(signature_for(name));
                    }
                    part
                })
                .collect();
            so_far += word_count(CALL_ARGS) * names.len() as u64;
            chunks.push(parts);
            tokens.push(so_far);
        }
        Calls::None => {
            for (k, word) in plan.words.iter().enumerate() {
                let mut part = json!({"text": word});
                if plan.thinking && k == 0 {
                    part["thoughtSignature"] = Value::String(signature_for("text"));
                }
                so_far += 1;
                chunks.push(vec![part]);
                tokens.push(so_far);
            }
        }
    }
    if chunks.is_empty() {
        chunks.push(vec![]);
        tokens.push(0);
    }
    let finish = match (&plan.calls, plan.finish.as_str()) {
        (Calls::Some(_), "MAX_TOKENS") => "STOP".to_owned(),
        (_, f) => f.to_owned(),
    };
    Script {
        chunks,
        thoughts_tokens,
        candidates_tokens: tokens,
        finish,
    }
}

fn usage(plan: &GeminiPlan, candidates_tokens: u64, thoughts: u64) -> Value {
    let per = candidates_tokens * plan.candidates;
    let mut usage = json!({
        "promptTokenCount": plan.prompt_tokens,
        "totalTokenCount": plan.prompt_tokens + per + thoughts,
        "promptTokensDetails": [{"modality": "TEXT", "tokenCount": plan.prompt_tokens}],
    });
    if per > 0 {
        usage["candidatesTokenCount"] = json!(per);
    }
    if thoughts > 0 {
        usage["thoughtsTokenCount"] = json!(thoughts);
    }
    if plan.cached_tokens > 0 {
        usage["cachedContentTokenCount"] = json!(plan.cached_tokens);
    }
    usage
}

fn candidates(plan: &GeminiPlan, parts: &[Value], finish: Option<&str>) -> Value {
    (0..plan.candidates)
        .map(|index| {
            let mut c = json!({"content": {"role": "model", "parts": parts}, "index": index});
            if let Some(finish) = finish {
                c["finishReason"] = json!(finish);
            }
            c
        })
        .collect()
}

fn blocked_answer(plan: &GeminiPlan) -> Value {
    json!({
        "promptFeedback": {"blockReason": "SAFETY", "safetyRatings": []},
        "usageMetadata": usage(plan, 0, 0),
        "modelVersion": "mock-gemini",
    })
}

/// The whole non-streaming answer.
fn answer(plan: &GeminiPlan) -> Value {
    if plan.blocked {
        return blocked_answer(plan);
    }
    let script = script(plan);
    let parts: Vec<Value> = script.chunks.concat();
    let tokens = script.candidates_tokens.last().copied().unwrap_or(0);
    json!({
        "candidates": candidates(plan, &parts, Some(&script.finish)),
        "usageMetadata": usage(plan, tokens, script.thoughts_tokens),
        "modelVersion": "mock-gemini",
        "responseId": "mock-response-id",
    })
}

/// The streamed answer's events, each `data: <json>\r\n\r\n`; `[stream_error]` replaces the
/// third event with an error event and ends the stream.
fn stream_events(plan: &GeminiPlan) -> Vec<String> {
    if plan.blocked {
        return vec![blocked_answer(plan).to_string()];
    }
    let script = script(plan);
    let last = script.chunks.len() - 1;
    let mut events = Vec::new();
    for (i, parts) in script.chunks.iter().enumerate() {
        if plan.stream_error && i == 2 {
            events.push(
                json!({"error": {"code": 500, "message": "mock mid-stream failure", "status": "INTERNAL"}})
                    .to_string(),
            );
            return events;
        }
        let finish = (i == last && !plan.no_finish).then_some(script.finish.as_str());
        events.push(
            json!({
                "candidates": candidates(plan, parts, finish),
                "usageMetadata": usage(plan, script.candidates_tokens[i], script.thoughts_tokens),
                "modelVersion": "mock-gemini",
                "responseId": "mock-response-id",
            })
            .to_string(),
        );
    }
    events
}

/// Answers one Gemini request whose key and JSON were read already.
pub async fn respond(body: &Value, stream: bool) -> Response {
    let plan = match plan(body, stream) {
        Ok(plan) => plan,
        Err(e) => return e.into_response(),
    };
    if let Some(code) = plan.status {
        tokio::time::sleep(plan.delay).await;
        return GoogleError {
            code,
            message: format!("mock upstream error {code}"),
            details: None,
        }
        .into_response();
    }
    if !plan.stream {
        tokio::time::sleep(plan.delay).await;
        return Json(answer(&plan)).into_response();
    }
    let events = stream_events(&plan);
    let delay = plan.delay;
    let body = async_stream::stream! {
        tokio::time::sleep(delay).await;
        for event in events {
            yield Ok::<Bytes, Infallible>(Bytes::from(format!("data: {event}\r\n\r\n")));
        }
    };
    (
        StatusCode::OK,
        [(axum::http::header::CONTENT_TYPE, "text/event-stream")],
        Body::from_stream(body),
    )
        .into_response()
}

/// A 1x1 PNG, served at `GET /_mock/image.png`.
pub const PNG_BASE64: &str = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg==";

/// The PNG's bytes.
pub fn png() -> Vec<u8> {
    BASE64.decode(PNG_BASE64).unwrap_or_default()
}

/// A PNG-typed body of `len` bytes (`GET /_mock/huge.png`), for size limits.
pub fn huge_png(len: usize) -> Vec<u8> {
    let mut bytes = png();
    bytes.resize(len.max(bytes.len()), 0);
    bytes
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(text: &str) -> Value {
        json!({"role": "user", "parts": [{"text": text}]})
    }

    fn err(body: Value) -> String {
        plan(&body, false).unwrap_err().message
    }

    #[test]
    fn requests_are_checked_like_gemini() {
        assert!(
            err(json!({"contents": [user("hi")], "generation_config": {}}))
                .contains("Unknown name \"generation_config\"")
        );
        assert!(
            err(json!({"contents": [{"role": "assistant", "parts": [{"text": "x"}]}]}))
                .contains("valid role")
        );
        assert!(
            err(json!({"contents": [{"role": "user", "parts": []}]})).contains("must not be empty")
        );
        assert!(err(json!({"contents": [user("")]})).contains("empty text parameter"));
        assert!(
            err(json!({"contents": [{"role": "user", "parts": [{"thought": true}]}]}))
                .contains("oneof field 'data'")
        );
        assert!(err(json!({"contents": []})).contains("contents is not specified"));
        let call = json!({"role": "model", "parts": [{"functionCall": {"name": "f", "args": {}}}]});
        assert!(
            err(json!({"contents": [call.clone()]}))
                .contains("function call turn comes immediately")
        );
        let two_responses = json!({"role": "user", "parts": [
            {"functionResponse": {"name": "f", "response": {}}},
            {"functionResponse": {"name": "f", "response": {}}}]});
        assert!(
            err(json!({"contents": [user("q"), call.clone(), two_responses]}))
                .contains("number of function response parts")
        );
        let wrong_name =
            json!({"role": "user", "parts": [{"functionResponse": {"name": "g", "response": {}}}]});
        assert!(
            err(json!({"contents": [user("q"), call.clone(), wrong_name]})).contains("names match")
        );
        let right = json!({"role": "user", "parts": [{"functionResponse": {"name": "f", "response": {"output": "1"}}}]});
        let thinking = json!({"thinkingConfig": {"includeThoughts": true}});
        assert!(err(json!({"contents": [user("q"), call, right.clone()], "generationConfig": thinking.clone()})).contains("missing a thought_signature"));
        let signed = json!({"role": "model", "parts": [{"functionCall": {"name": "f", "args": {}}, "thoughtSignature": signature_for("f")}]});
        assert!(
            plan(
                &json!({"contents": [user("q"), signed, right.clone()], "generationConfig": thinking.clone()}),
                false
            )
            .is_ok()
        );
        let stand_in = json!({"role": "model", "parts": [{"functionCall": {"name": "f", "args": {}}, "thoughtSignature": SKIP_THOUGHT_SIGNATURE_VALIDATOR}]});
        assert!(
            plan(
                &json!({"contents": [user("q"), stand_in, right.clone()], "generationConfig": thinking.clone()}),
                false
            )
            .is_ok()
        );
        let forged = json!({"role": "model", "parts": [{"functionCall": {"name": "f", "args": {}}, "thoughtSignature": "Zm9yZ2Vk"}]});
        assert!(
            err(json!({"contents": [user("q"), forged, right], "generationConfig": thinking}))
                .contains("Corrupted thought signature")
        );
    }

    #[test]
    fn answers_follow_the_rules() {
        let body = json!({
            "systemInstruction": {"parts": [{"text": "Be brief"}]},
            "contents": [user("hello there [cache=2]")],
            "generationConfig": {"thinkingConfig": {"includeThoughts": true, "thinkingBudget": -1}},
        });
        let p = plan(&body, false).unwrap();
        let a = answer(&p);
        let parts = &a["candidates"][0]["content"]["parts"];
        assert_eq!(parts[0]["thought"], true);
        assert_eq!(parts[1]["thoughtSignature"], signature_for("text"));
        assert_eq!(a["usageMetadata"]["promptTokenCount"], 5);
        assert_eq!(a["usageMetadata"]["cachedContentTokenCount"], 2);
        assert_eq!(a["usageMetadata"]["thoughtsTokenCount"], 5);
        assert_eq!(a["usageMetadata"]["candidatesTokenCount"], 4);
        let events = stream_events(&plan(&body, true).unwrap());
        assert!(events.last().unwrap().contains("\"finishReason\":\"STOP\""));
    }
}
