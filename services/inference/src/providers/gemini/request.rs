//! The OpenAI request as a Gemini `GenerateContentRequest` (lowerCamelCase JSON, providers.md
//! section 7):
//!
//! - `system`/`developer` messages, wherever they are → `systemInstruction`;
//! - `user`/`assistant` → `user`/`model` contents, consecutive same-role contents merged; empty
//!   text is never sent, nor a content without parts;
//! - assistant `tool_calls` → `functionCall` parts (arguments parsed; invalid JSON is a 400 naming
//!   the field) with their `thoughtSignature` reattached from `reasoning_details`; a turn whose
//!   client dropped them gets Google's documented stand-in ([`MISSING_THOUGHT_SIGNATURE`]) on
//!   its first call when the model thinks, so the tool loop goes on;
//! - `tool` messages → `functionResponse` parts in one `user` content, the name looked up from the
//!   assistant's `tool_calls` by `tool_call_id`, ordered as the calls were;
//! - images: data URLs → `inlineData`; http(s) URLs fetched by the gateway → `inlineData`;
//! - sampling, tools, `tool_choice`, `response_format` and thinking → `generationConfig`,
//!   `tools`, `toolConfig`.
//!
//! Thinking budgets for `reasoning_effort` (Google's own OpenAI-compatibility table for low,
//! medium and high; the others chosen to fit both 2.5 Flash (0..24576) and 2.5 Pro (128..32768)):
//!
//! | reasoning_effort | thinkingBudget |
//! |---|---|
//! | minimal | 128 |
//! | low | 1024 |
//! | medium | 8192 |
//! | high, xhigh, max | 24576 |
//! | unset (thinking switched on by an alias or `thinking`) | -1 (dynamic) |
//!
//! The caller's own budget (`thinking_budget_tokens`, from Anthropic's `thinking.budget_tokens`
//! on the Messages API) is sent as given instead; Gemini judges it.
//!
//! Thinking off sends `thinkingBudget: 0`; nobody asking sends no `thinkingConfig` (the model's
//! default). Whether thinking is on is decided before this (`crate::thinking`): a model that
//! always thinks (2.5 Pro) is never asked to switch it off.

use std::collections::HashMap;

use base64::{Engine, engine::general_purpose::STANDARD as BASE64};
use futures::StreamExt;
use serde::Serialize;
use serde_json::{Value, json};
use tollgate::v1::{
    ChatRequest, Message, ReasoningEffort, Role, content_part::Part, message::Content,
    tool_choice::Choice,
};

use super::{FORMAT, response::is_synthesized_id};
use crate::{
    UpstreamError,
    images::{FetchedImage, ImageFetcher},
    providers::Target,
    thinking::Thinking,
};

/// A `GenerateContentRequest` body (lowerCamelCase). Fields serialise in this order; unset or
/// empty ones are left out.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct GenerateContentRequest {
    #[serde(skip_serializing_if = "Option::is_none")]
    system_instruction: Option<SystemInstruction>,
    contents: Vec<Turn>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    tools: Vec<ToolSet>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tool_config: Option<ToolConfig>,
    #[serde(skip_serializing_if = "GenerationConfig::is_empty")]
    generation_config: GenerationConfig,
}

#[derive(Debug, Serialize)]
struct SystemInstruction {
    parts: Vec<PartJson>,
}

/// A content: its role (`user` or `model`) and parts.
#[derive(Debug, Serialize)]
struct Turn {
    role: &'static str,
    parts: Vec<PartJson>,
}

/// One part: exactly one of its data fields is set, plus an optional thought signature.
#[derive(Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
struct PartJson {
    #[serde(skip_serializing_if = "Option::is_none")]
    text: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    inline_data: Option<InlineData>,
    #[serde(skip_serializing_if = "Option::is_none")]
    function_call: Option<FunctionCallJson>,
    #[serde(skip_serializing_if = "Option::is_none")]
    function_response: Option<FunctionResponse>,
    #[serde(skip_serializing_if = "Option::is_none")]
    thought_signature: Option<String>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct InlineData {
    mime_type: String,
    data: String,
}

#[derive(Debug, Serialize)]
struct FunctionCallJson {
    name: String,
    args: Value,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<String>,
}

#[derive(Debug, Serialize)]
struct FunctionResponse {
    name: String,
    response: Value,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<String>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct ToolSet {
    function_declarations: Vec<FunctionDeclaration>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct FunctionDeclaration {
    name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    description: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    parameters_json_schema: Option<Value>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct ToolConfig {
    function_calling_config: FunctionCallingConfig,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct FunctionCallingConfig {
    mode: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    allowed_function_names: Option<Vec<String>>,
}

#[derive(Debug, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
struct GenerationConfig {
    #[serde(skip_serializing_if = "Vec::is_empty")]
    stop_sequences: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    temperature: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    top_p: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    top_k: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_output_tokens: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    candidate_count: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    seed: Option<i32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    presence_penalty: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    frequency_penalty: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    response_logprobs: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    logprobs: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    response_mime_type: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    response_json_schema: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    thinking_config: Option<ThinkingConfig>,
}

impl GenerationConfig {
    fn is_empty(&self) -> bool {
        *self == Self::default()
    }
}

#[derive(Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
struct ThinkingConfig {
    #[serde(skip_serializing_if = "Option::is_none")]
    include_thoughts: Option<bool>,
    thinking_budget: i64,
}

/// Builds the whole request body; fetches http(s) images on the way.
pub(super) async fn body(
    request: &ChatRequest,
    target: &Target<'_>,
    images: &ImageFetcher,
) -> Result<GenerateContentRequest, UpstreamError> {
    let (system, contents) = contents(request, images, target.thinking.is_on()).await?;
    Ok(GenerateContentRequest {
        system_instruction: (!system.is_empty()).then_some(SystemInstruction { parts: system }),
        contents,
        tools: tools(request)?,
        tool_config: tool_config(request)?,
        generation_config: generation_config(request, target)?,
    })
}

/// Appends parts under `role`, merging into the previous content when it has the same role.
fn push(turns: &mut Vec<Turn>, role: &'static str, parts: Vec<PartJson>) {
    if parts.is_empty() {
        return;
    }
    match turns.last_mut() {
        Some(last) if last.role == role => last.parts.extend(parts),
        _ => turns.push(Turn { role, parts }),
    }
}

fn text_part(text: &str) -> Option<PartJson> {
    (!text.is_empty()).then(|| PartJson {
        text: Some(text.to_owned()),
        ..PartJson::default()
    })
}

/// The text of a message that only holds text (system, developer, tool): its string, or its
/// text parts joined; other parts are a 400.
fn plain_text(message: &Message, i: usize) -> Result<String, UpstreamError> {
    match &message.content {
        None => Ok(String::new()),
        Some(Content::Text(text)) => Ok(text.clone()),
        Some(Content::Parts(parts)) => {
            let mut texts = Vec::new();
            for (j, part) in parts.parts.iter().enumerate() {
                match &part.part {
                    Some(Part::Text(t)) => texts.push(t.as_str()),
                    _ => {
                        return Err(UpstreamError::unsupported(
                            format!("messages[{i}].content[{j}]"),
                            format!(
                                "messages[{i}].content[{j}]: only text parts are accepted in this message"
                            ),
                        ));
                    }
                }
            }
            Ok(texts.join("\n"))
        }
    }
}

/// `systemInstruction` parts and `contents` (`thinking`: whether the model thinks for this
/// request, so its function calls need signatures).
async fn contents(
    request: &ChatRequest,
    images: &ImageFetcher,
    thinking: bool,
) -> Result<(Vec<PartJson>, Vec<Turn>), UpstreamError> {
    let mut fetched = fetch_images(request, images).await?;
    let mut system = Vec::new();
    let mut turns: Vec<Turn> = Vec::new();
    // tool_call_id → (function name, position among its turn's calls), from assistant messages
    // seen so far.
    let mut calls: HashMap<&str, (&str, usize)> = HashMap::new();
    // functionResponse parts of consecutive tool messages, with the position of their call.
    let mut responses: Vec<(usize, PartJson)> = Vec::new();
    for (i, message) in request.messages.iter().enumerate() {
        let role = Role::try_from(message.role).unwrap_or(Role::Unspecified);
        if role != Role::Tool && !responses.is_empty() {
            flush_responses(&mut turns, &mut responses);
        }
        match role {
            Role::System | Role::Developer => {
                system.extend(text_part(&plain_text(message, i)?));
            }
            Role::User => {
                let parts = user_parts(message, i, &mut fetched)?;
                push(&mut turns, "user", parts);
            }
            Role::Assistant => {
                for (k, call) in message.tool_calls.iter().enumerate() {
                    let name = call.function.as_ref().map_or("", |f| f.name.as_str());
                    calls.insert(call.id.as_str(), (name, k));
                }
                push(&mut turns, "model", model_parts(message, i, thinking)?);
            }
            Role::Tool => {
                let id = message.tool_call_id.as_deref().unwrap_or_default();
                let Some(&(name, position)) = calls.get(id) else {
                    return Err(UpstreamError::unsupported(
                        format!("messages[{i}].tool_call_id"),
                        format!(
                            "messages[{i}].tool_call_id {id:?} matches no tool call of an earlier assistant message"
                        ),
                    ));
                };
                let text = plain_text(message, i)?;
                let output = match serde_json::from_str::<Value>(&text) {
                    Ok(object @ Value::Object(_)) => object,
                    _ => json!({ "output": text }),
                };
                let response = FunctionResponse {
                    name: name.to_owned(),
                    response: output,
                    id: (!is_synthesized_id(id)).then(|| id.to_owned()),
                };
                responses.push((
                    position,
                    PartJson {
                        function_response: Some(response),
                        ..PartJson::default()
                    },
                ));
            }
            Role::Unspecified => {
                return Err(UpstreamError::unsupported(
                    format!("messages[{i}].role"),
                    "unknown role",
                ));
            }
        }
    }
    flush_responses(&mut turns, &mut responses);
    Ok((system, turns))
}

/// Puts the pending function responses into one `user` content, in the order of their calls
/// (Gemini pairs them with the calls by position).
fn flush_responses(turns: &mut Vec<Turn>, responses: &mut Vec<(usize, PartJson)>) {
    responses.sort_by_key(|(position, _)| *position);
    let parts = responses.drain(..).map(|(_, part)| part).collect();
    push(turns, "user", parts);
}

/// Where each image part of a request is (`messages[i].content[j]`), as an error names it.
fn image_param(i: usize, j: usize) -> String {
    format!("messages[{i}].content[{j}].image_url.url")
}

/// The image parts of the user messages, as `(i, j, url)`.
fn image_urls(request: &ChatRequest) -> impl Iterator<Item = (usize, usize, &str)> {
    request
        .messages
        .iter()
        .enumerate()
        .flat_map(|(i, message)| {
            let parts = match (&message.content, Role::try_from(message.role)) {
                (Some(Content::Parts(parts)), Ok(Role::User)) => parts.parts.as_slice(),
                _ => &[],
            };
            parts
                .iter()
                .enumerate()
                .filter_map(move |(j, part)| match &part.part {
                    Some(Part::ImageUrl(image)) => Some((i, j, image.url.as_str())),
                    _ => None,
                })
        })
}

/// Fetches the http(s) images of the request before its body is built, under `[images]`: at most
/// `max_per_request` image parts, `fetch_concurrency` fetches at a time, and `max_total_bytes`
/// of image bytes in all (data URLs counted too, decoded); over a limit, a 400 naming the part
/// that crossed it. Keyed by `(message, part)`.
async fn fetch_images(
    request: &ChatRequest,
    images: &ImageFetcher,
) -> Result<HashMap<(usize, usize), FetchedImage>, UpstreamError> {
    let mut total: u64 = 0;
    let over_total = |i, j| {
        let param = image_param(i, j);
        UpstreamError::unsupported(
            param.clone(),
            format!(
                "{param}: the request's images exceed {} bytes in all",
                images.max_total_bytes
            ),
        )
    };
    let mut remote = Vec::new();
    for (n, (i, j, url)) in image_urls(request).enumerate() {
        if n >= images.max_per_request {
            let param = image_param(i, j);
            return Err(UpstreamError::unsupported(
                param.clone(),
                format!(
                    "{param}: at most {} images are accepted per request",
                    images.max_per_request
                ),
            ));
        }
        match url.strip_prefix("data:") {
            // Decoded size of base64 data; the part itself is checked when it is built.
            Some(data) => {
                let encoded = data.split_once(',').map_or(data, |(_, encoded)| encoded);
                total += (encoded.len() as u64) / 4 * 3;
                if total > images.max_total_bytes {
                    return Err(over_total(i, j));
                }
            }
            None => remote.push((i, j, url)),
        }
    }
    let fetches: Vec<_> = remote
        .into_iter()
        .map(|(i, j, url)| fetch_image(images, i, j, url))
        .collect();
    let mut fetches = futures::stream::iter(fetches).buffered(images.fetch_concurrency);
    let mut fetched = HashMap::new();
    while let Some(result) = fetches.next().await {
        let ((i, j), image) = result?;
        total += image.bytes.len() as u64;
        if total > images.max_total_bytes {
            return Err(over_total(i, j));
        }
        fetched.insert((i, j), image);
    }
    Ok(fetched)
}

/// One image of `messages[i].content[j]`; a failure is a 400 naming the part.
async fn fetch_image(
    images: &ImageFetcher,
    i: usize,
    j: usize,
    url: &str,
) -> Result<((usize, usize), FetchedImage), UpstreamError> {
    let param = image_param(i, j);
    images
        .fetch(url)
        .await
        .map(|image| ((i, j), image))
        .map_err(|e| UpstreamError::unsupported(param.clone(), format!("{param}: {e}")))
}

fn user_parts(
    message: &Message,
    i: usize,
    fetched: &mut HashMap<(usize, usize), FetchedImage>,
) -> Result<Vec<PartJson>, UpstreamError> {
    let parts = match &message.content {
        None => return Ok(vec![]),
        Some(Content::Text(text)) => return Ok(text_part(text).into_iter().collect()),
        Some(Content::Parts(parts)) => &parts.parts,
    };
    let mut out = Vec::with_capacity(parts.len());
    for (j, part) in parts.iter().enumerate() {
        match &part.part {
            Some(Part::Text(text)) => out.extend(text_part(text)),
            Some(Part::ImageUrl(image)) => {
                let param = image_param(i, j);
                out.push(image_part(&image.url, &param, fetched.remove(&(i, j)))?);
            }
            Some(Part::OtherJson(_)) | None => {
                return Err(UpstreamError::unsupported(
                    format!("messages[{i}].content[{j}]"),
                    format!(
                        "messages[{i}].content[{j}]: this part type is not supported for Gemini models (text and image_url are)"
                    ),
                ));
            }
        }
    }
    Ok(out)
}

/// An `inlineData` part from a data URL, or from the bytes fetched from an http(s) URL.
fn image_part(
    url: &str,
    param: &str,
    fetched: Option<FetchedImage>,
) -> Result<PartJson, UpstreamError> {
    let inline = |mime_type: String, data: String| PartJson {
        inline_data: Some(InlineData { mime_type, data }),
        ..PartJson::default()
    };
    if let Some(rest) = url.strip_prefix("data:") {
        let (meta, data) = rest.split_once(',').ok_or_else(|| {
            UpstreamError::unsupported(
                param,
                format!("{param}: a data URL needs a comma before its data"),
            )
        })?;
        let mime = meta.strip_suffix(";base64").ok_or_else(|| {
            UpstreamError::unsupported(
                param,
                format!("{param}: only base64 data URLs are supported"),
            )
        })?;
        if !mime.starts_with("image/") || BASE64.decode(data).is_err() {
            return Err(UpstreamError::unsupported(
                param,
                format!("{param}: expected data:image/<type>;base64,<base64 data>"),
            ));
        }
        return Ok(inline(mime.to_owned(), data.to_owned()));
    }
    let image = fetched.ok_or_else(|| {
        UpstreamError::unsupported(param, format!("{param}: the image was not fetched"))
    })?;
    Ok(inline(image.mime_type, BASE64.encode(&image.bytes)))
}

/// An assistant message as `model` parts: its text, then its function calls, with the thought
/// signatures of its `google-gemini-v1` reasoning details reattached where they came from (for
/// a thinking model, a stand-in where the client kept none).
fn model_parts(
    message: &Message,
    i: usize,
    thinking: bool,
) -> Result<Vec<PartJson>, UpstreamError> {
    let mut parts: Vec<PartJson> = Vec::new();
    match &message.content {
        None => {}
        Some(Content::Text(text)) => parts.extend(text_part(text)),
        Some(Content::Parts(content)) => {
            for part in &content.parts {
                if let Some(Part::Text(text)) = &part.part {
                    parts.extend(text_part(text));
                }
            }
        }
    }
    let text_parts = parts.len();
    let mut call_ids = Vec::with_capacity(message.tool_calls.len());
    for (k, call) in message.tool_calls.iter().enumerate() {
        let param = format!("messages[{i}].tool_calls[{k}].function.arguments");
        let function = call.function.as_ref();
        let arguments = function.map_or("", |f| f.arguments.as_str());
        let args = if arguments.trim().is_empty() {
            json!({})
        } else {
            match serde_json::from_str::<Value>(arguments) {
                Ok(object @ Value::Object(_)) => object,
                _ => {
                    return Err(UpstreamError::unsupported(
                        &param,
                        format!("{param} must be a JSON object encoded as a string"),
                    ));
                }
            }
        };
        let function_call = FunctionCallJson {
            name: function.map_or("", |f| f.name.as_str()).to_owned(),
            args,
            id: (!call.id.is_empty() && !is_synthesized_id(&call.id)).then(|| call.id.clone()),
        };
        parts.push(PartJson {
            function_call: Some(function_call),
            ..PartJson::default()
        });
        call_ids.push(call.id.as_str());
    }
    for detail in &message.reasoning_details {
        let ours =
            detail.format.as_deref() == Some(FORMAT) && detail.r#type == "reasoning.encrypted";
        let Some(signature) = detail.data.as_deref().filter(|_| ours) else {
            // Details of another provider: the conversation changed provider; dropped.
            continue;
        };
        let at = match detail.id.as_deref().filter(|id| !id.is_empty()) {
            Some(id) => call_ids
                .iter()
                .position(|c| *c == id)
                .map(|k| text_parts + k),
            // A signature that was not on a function call sat on the answer's text.
            None => (!parts.is_empty()).then_some(0),
        };
        if let Some(part) = at.and_then(|at| parts.get_mut(at)) {
            part.thought_signature = Some(signature.to_owned());
        }
    }
    // A client that never sends reasoning back (most OpenAI clients) leaves the turn unsigned,
    // which a thinking Gemini refuses for the current turn's calls; Google documents this value
    // for history whose signatures are lost. It goes on the first call, where Gemini puts its own.
    let unsigned = thinking && parts.iter().all(|p| p.thought_signature.is_none());
    if let Some(first_call) = parts.get_mut(text_parts).filter(|_| unsigned) {
        first_call.thought_signature = Some(MISSING_THOUGHT_SIGNATURE.to_owned());
    }
    Ok(parts)
}

/// The `thoughtSignature` Gemini accepts in place of one it issued but the client did not keep
/// (ai.google.dev, "Thought signatures").
pub const MISSING_THOUGHT_SIGNATURE: &str = "skip_thought_signature_validator";

fn tools(request: &ChatRequest) -> Result<Vec<ToolSet>, UpstreamError> {
    if request.tools.is_empty() {
        return Ok(vec![]);
    }
    let mut declarations = Vec::with_capacity(request.tools.len());
    for (i, tool) in request.tools.iter().enumerate() {
        if !tool.r#type.is_empty() && tool.r#type != "function" {
            return Err(UpstreamError::unsupported(
                format!("tools[{i}].type"),
                format!(
                    "tools[{i}].type {:?} is not supported for Gemini models",
                    tool.r#type
                ),
            ));
        }
        let Some(function) = &tool.function else {
            return Err(UpstreamError::unsupported(
                format!("tools[{i}].function"),
                "a function tool needs its function",
            ));
        };
        let mut declaration = FunctionDeclaration {
            name: function.name.clone(),
            description: function.description.clone().filter(|d| !d.is_empty()),
            parameters_json_schema: None,
        };
        if !function.parameters_json.trim().is_empty() {
            let param = format!("tools[{i}].function.parameters");
            let schema: Value = serde_json::from_str(&function.parameters_json).map_err(|_| {
                UpstreamError::unsupported(&param, format!("{param} must be a JSON Schema object"))
            })?;
            declaration.parameters_json_schema = Some(schema);
        }
        declarations.push(declaration);
    }
    Ok(vec![ToolSet {
        function_declarations: declarations,
    }])
}

fn tool_config(request: &ChatRequest) -> Result<Option<ToolConfig>, UpstreamError> {
    let Some(choice) = request.tool_choice.as_ref().and_then(|c| c.choice.as_ref()) else {
        return Ok(None);
    };
    let config = match choice {
        Choice::Mode(mode) => match mode.as_str() {
            "auto" => mode_only("AUTO"),
            "none" => mode_only("NONE"),
            "required" => mode_only("ANY"),
            other => {
                return Err(UpstreamError::unsupported(
                    "tool_choice",
                    format!("tool_choice {other:?} must be none, auto, required or a function"),
                ));
            }
        },
        Choice::FunctionName(name) => FunctionCallingConfig {
            mode: "ANY",
            allowed_function_names: Some(vec![name.clone()]),
        },
        Choice::OtherJson(_) => {
            return Err(UpstreamError::unsupported(
                "tool_choice",
                "this tool_choice form is not supported for Gemini models (use none, auto, required or a function)",
            ));
        }
    };
    Ok(Some(ToolConfig {
        function_calling_config: config,
    }))
}

fn mode_only(mode: &'static str) -> FunctionCallingConfig {
    FunctionCallingConfig {
        mode,
        allowed_function_names: None,
    }
}

/// The thinking budget for a `reasoning_effort` (table in the module comment).
pub(super) fn thinking_budget(effort: Option<ReasoningEffort>) -> i64 {
    match effort {
        Some(ReasoningEffort::Minimal) => 128,
        Some(ReasoningEffort::Low) => 1024,
        Some(ReasoningEffort::Medium) => 8192,
        Some(ReasoningEffort::High | ReasoningEffort::Xhigh | ReasoningEffort::Max) => 24576,
        Some(ReasoningEffort::None | ReasoningEffort::Unspecified) | None => -1,
    }
}

fn generation_config(
    request: &ChatRequest,
    target: &Target<'_>,
) -> Result<GenerationConfig, UpstreamError> {
    let seed = request
        .seed
        .map(|seed| {
            i32::try_from(seed).map_err(|_| {
                UpstreamError::unsupported(
                    "seed",
                    "seed must fit in a 32-bit signed integer for Gemini models",
                )
            })
        })
        .transpose()?;
    let mut config = GenerationConfig {
        stop_sequences: request.stop.clone(),
        temperature: request.temperature,
        top_p: request.top_p,
        top_k: request.top_k,
        max_output_tokens: request.max_completion_tokens.or(request.max_tokens),
        candidate_count: request.n,
        seed,
        presence_penalty: request.presence_penalty,
        frequency_penalty: request.frequency_penalty,
        response_logprobs: request.logprobs,
        logprobs: request.top_logprobs,
        ..GenerationConfig::default()
    };
    if let Some(format) = &request.response_format {
        match format.r#type.as_str() {
            "" | "text" => {}
            "json_object" => config.response_mime_type = Some("application/json"),
            "json_schema" => {
                let param = "response_format.json_schema.schema";
                let schema = format
                    .json_schema
                    .as_ref()
                    .map(|s| s.schema_json.as_str())
                    .filter(|s| !s.trim().is_empty())
                    .ok_or_else(|| {
                        UpstreamError::unsupported(param, format!("{param} is required"))
                    })?;
                let schema: Value = serde_json::from_str(schema).map_err(|_| {
                    UpstreamError::unsupported(
                        param,
                        format!("{param} must be a JSON Schema object"),
                    )
                })?;
                config.response_mime_type = Some("application/json");
                config.response_json_schema = Some(schema);
            }
            other => {
                return Err(UpstreamError::unsupported(
                    "response_format.type",
                    format!("response_format.type {other:?} is not supported"),
                ));
            }
        }
    }
    config.thinking_config = match target.thinking {
        Thinking::On {
            effort,
            budget_tokens,
        } => Some(ThinkingConfig {
            include_thoughts: Some(true),
            thinking_budget: budget_tokens.map_or_else(|| thinking_budget(effort), i64::from),
        }),
        Thinking::Off => Some(ThinkingConfig {
            include_thoughts: None,
            thinking_budget: 0,
        }),
        // The model's default (2.5 Pro always thinks; asking for thoughts would change the answer).
        Thinking::Default { .. } => None,
    };
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tollgate::v1::{
        ContentPart, ContentParts, FunctionCall, FunctionDefinition, ImageUrl, ReasoningDetail,
        ResolvedModel, ResponseFormat, ThinkingSupport, Tool, ToolCall, ToolChoice,
    };

    fn msg(role: Role, text: &str) -> Message {
        Message {
            role: role.into(),
            content: Some(Content::Text(text.into())),
            ..Default::default()
        }
    }

    fn call(id: &str, name: &str, args: &str) -> ToolCall {
        ToolCall {
            id: id.into(),
            r#type: "function".into(),
            function: Some(FunctionCall {
                name: name.into(),
                arguments: args.into(),
            }),
        }
    }

    fn tool_result(id: &str, text: &str) -> Message {
        Message {
            role: Role::Tool.into(),
            content: Some(Content::Text(text.into())),
            tool_call_id: Some(id.into()),
            ..Default::default()
        }
    }

    fn route(thinking: ThinkingSupport) -> ResolvedModel {
        ResolvedModel {
            upstream_model: "gemini-2.5-flash".into(),
            thinking: thinking.into(),
            vision: true,
            ..Default::default()
        }
    }

    /// The body with the caller's thinking switch set to `thinking`, decided as the service
    /// decides it.
    async fn build(request: &ChatRequest, thinking: Option<bool>) -> Result<Value, UpstreamError> {
        let route = route(ThinkingSupport::Optional);
        let mut request = request.clone();
        request.thinking = thinking;
        let thinking = crate::thinking::decide(&request, &route).unwrap();
        body(
            &request,
            &Target {
                route: &route,
                thinking,
            },
            &ImageFetcher::default(),
        )
        .await
        .map(|body| serde_json::to_value(body).unwrap())
    }

    fn request(messages: Vec<Message>) -> ChatRequest {
        ChatRequest {
            model: "gemini-2.5-flash".into(),
            messages,
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn system_and_developer_lift_out_and_same_roles_merge() {
        let r = request(vec![
            msg(Role::System, "Be terse."),
            msg(Role::User, "Hi"),
            msg(Role::Developer, "Policy X."),
            msg(Role::User, "there"),
            msg(Role::Assistant, ""),
            msg(Role::Assistant, "Hello"),
            msg(Role::User, ""),
        ]);
        let body = build(&r, None).await.unwrap();
        assert_eq!(
            body["systemInstruction"],
            json!({"parts": [{"text": "Be terse."}, {"text": "Policy X."}]})
        );
        // Empty texts vanish; the two user messages are one content.
        assert_eq!(
            body["contents"],
            json!([
                {"role": "user", "parts": [{"text": "Hi"}, {"text": "there"}]},
                {"role": "model", "parts": [{"text": "Hello"}]},
            ])
        );
        assert!(body.get("generationConfig").is_none());
    }

    #[tokio::test]
    async fn a_tool_loop_becomes_function_call_and_response_parts() {
        let mut assistant = msg(Role::Assistant, "Let me check.");
        assistant.tool_calls = vec![
            call(
                "call_00000000000000000000000000000001",
                "get_weather",
                r#"{"location":"Paris"}"#,
            ),
            call("gem-id-7", "get_time", ""),
        ];
        assistant.reasoning_details = vec![
            ReasoningDetail {
                r#type: "reasoning.encrypted".into(),
                data: Some("SIG-TEXT".into()),
                format: Some(FORMAT.into()),
                index: Some(0),
                ..Default::default()
            },
            ReasoningDetail {
                r#type: "reasoning.encrypted".into(),
                data: Some("SIG-CALL".into()),
                id: Some("gem-id-7".into()),
                format: Some(FORMAT.into()),
                index: Some(1),
                ..Default::default()
            },
            ReasoningDetail {
                r#type: "reasoning.text".into(),
                text: Some("claude thoughts".into()),
                signature: Some("anthropic".into()),
                format: Some("anthropic-claude-v1".into()),
                ..Default::default()
            },
        ];
        let r = request(vec![
            msg(Role::User, "Weather and time in Paris?"),
            assistant,
            // Answered out of order: Gemini pairs responses with calls by position.
            tool_result("gem-id-7", "12:00"),
            tool_result("call_00000000000000000000000000000001", r#"{"temp":"22C"}"#),
            msg(Role::User, "Thanks"),
        ]);
        let body = build(&r, None).await.unwrap();
        assert_eq!(
            body["contents"],
            json!([
                {"role": "user", "parts": [{"text": "Weather and time in Paris?"}]},
                {"role": "model", "parts": [
                    {"text": "Let me check.", "thoughtSignature": "SIG-TEXT"},
                    {"functionCall": {"name": "get_weather", "args": {"location": "Paris"}}},
                    {"functionCall": {"name": "get_time", "args": {}, "id": "gem-id-7"}, "thoughtSignature": "SIG-CALL"},
                ]},
                {"role": "user", "parts": [
                    {"functionResponse": {"name": "get_weather", "response": {"temp": "22C"}}},
                    {"functionResponse": {"name": "get_time", "response": {"output": "12:00"}, "id": "gem-id-7"}},
                    {"text": "Thanks"},
                ]},
            ])
        );
    }

    #[tokio::test]
    async fn a_turn_whose_client_dropped_the_signatures_gets_the_documented_stand_in() {
        let mut assistant = msg(Role::Assistant, "");
        assistant.tool_calls = vec![call("call_1", "a", "{}"), call("call_2", "b", "{}")];
        let r = request(vec![
            msg(Role::User, "x"),
            assistant,
            tool_result("call_1", "1"),
            tool_result("call_2", "2"),
        ]);
        let body = build(&r, Some(true)).await.unwrap();
        assert_eq!(
            body["contents"][1]["parts"],
            json!([
                {"functionCall": {"name": "a", "args": {}, "id": "call_1"}, "thoughtSignature": MISSING_THOUGHT_SIGNATURE},
                {"functionCall": {"name": "b", "args": {}, "id": "call_2"}},
            ])
        );
        // A model that does not think for this request needs no signatures.
        let body = build(&r, Some(false)).await.unwrap();
        assert!(
            body["contents"][1]["parts"][0]
                .get("thoughtSignature")
                .is_none()
        );
    }

    #[tokio::test]
    async fn bad_tool_history_is_a_400_naming_the_field() {
        let mut assistant = msg(Role::Assistant, "");
        assistant.tool_calls = vec![call("call_1", "f", "{not json")];
        let r = request(vec![msg(Role::User, "x"), assistant]);
        let e = build(&r, None).await.unwrap_err();
        assert!(
            matches!(&e, UpstreamError::Unsupported { param, .. } if param == "messages[1].tool_calls[0].function.arguments"),
            "{e:?}"
        );
        let r = request(vec![msg(Role::User, "x"), tool_result("call_unknown", "1")]);
        let e = build(&r, None).await.unwrap_err();
        assert!(
            matches!(&e, UpstreamError::Unsupported { param, .. } if param == "messages[1].tool_call_id"),
            "{e:?}"
        );
    }

    #[tokio::test]
    async fn images_become_inline_data() {
        let image = |url: &str| ContentPart {
            part: Some(Part::ImageUrl(ImageUrl {
                url: url.into(),
                detail: None,
            })),
        };
        let user = |parts| Message {
            role: Role::User.into(),
            content: Some(Content::Parts(ContentParts { parts })),
            ..Default::default()
        };
        let r = request(vec![user(vec![
            ContentPart {
                part: Some(Part::Text("What is this?".into())),
            },
            image("data:image/png;base64,iVBORw0KGgo="),
        ])]);
        let body = build(&r, None).await.unwrap();
        assert_eq!(
            body["contents"][0]["parts"][1],
            json!({"inlineData": {"mimeType": "image/png", "data": "iVBORw0KGgo="}})
        );
        for (url, wanted) in [
            ("data:text/plain;base64,aGk=", "expected data:image"),
            ("data:image/png,rawbytes", "only base64"),
            // The default fetcher refuses loopback addresses.
            ("http://127.0.0.1:1/a.png", "non-public address"),
            ("ftp://example.com/a.png", "http or https"),
        ] {
            let r = request(vec![user(vec![image(url)])]);
            match build(&r, None).await.unwrap_err() {
                UpstreamError::Unsupported { param, message } => {
                    assert_eq!(param, "messages[0].content[0].image_url.url");
                    assert!(message.contains(wanted), "{url}: {message}");
                }
                other => panic!("{other:?}"),
            }
        }
    }

    #[tokio::test]
    async fn images_per_request_and_their_bytes_are_capped() {
        let image = |url: String| ContentPart {
            part: Some(Part::ImageUrl(ImageUrl { url, detail: None })),
        };
        let user = |parts| Message {
            role: Role::User.into(),
            content: Some(Content::Parts(ContentParts { parts })),
            ..Default::default()
        };
        let images = ImageFetcher::new(&crate::ImagesConfig {
            max_per_request: 3,
            max_total_bytes: 30,
            ..crate::ImagesConfig::default()
        });
        let fetch = |r: ChatRequest| {
            let images = images.clone();
            async move { fetch_images(&r, &images).await }
        };
        let small = || image("data:image/png;base64,iVBORw0KGgo=".into());
        // Three fit (27 bytes); the fourth is over the count and is named.
        let r = request(vec![user(vec![small(), small()]), user(vec![small()])]);
        assert!(fetch(r).await.is_ok());
        let r = request(vec![
            user(vec![small(), small()]),
            user(vec![small(), small()]),
        ]);
        match fetch(r).await.unwrap_err() {
            UpstreamError::Unsupported { param, message } => {
                assert_eq!(param, "messages[1].content[1].image_url.url");
                assert!(message.contains("at most 3 images"), "{message}");
            }
            other => panic!("{other:?}"),
        }
        // 9 + 24 decoded bytes: over 30 at the second part.
        let big = image(format!("data:image/png;base64,{}", "A".repeat(32)));
        let r = request(vec![user(vec![small(), big])]);
        match fetch(r).await.unwrap_err() {
            UpstreamError::Unsupported { param, message } => {
                assert_eq!(param, "messages[0].content[1].image_url.url");
                assert!(message.contains("exceed 30 bytes"), "{message}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn parameters_tools_and_formats_map_to_generation_config() {
        let mut r = request(vec![msg(Role::User, "x")]);
        r.stop = vec!["END".into()];
        r.temperature = Some(0.5);
        r.top_p = Some(0.9);
        r.max_tokens = Some(100);
        r.max_completion_tokens = Some(50);
        r.n = Some(2);
        r.seed = Some(7);
        r.presence_penalty = Some(0.1);
        r.frequency_penalty = Some(0.2);
        r.logprobs = Some(true);
        r.response_format = Some(ResponseFormat {
            r#type: "json_schema".into(),
            json_schema: Some(tollgate::v1::JsonSchemaFormat {
                name: "s".into(),
                schema_json: r#"{"type":"object"}"#.into(),
                ..Default::default()
            }),
        });
        r.tools = vec![Tool {
            r#type: "function".into(),
            function: Some(FunctionDefinition {
                name: "get_weather".into(),
                description: Some("Weather".into()),
                parameters_json: r#"{"type":"object","properties":{"location":{"type":"string"}}}"#
                    .into(),
                strict: None,
            }),
        }];
        r.tool_choice = Some(ToolChoice {
            choice: Some(Choice::FunctionName("get_weather".into())),
        });
        let body = build(&r, None).await.unwrap();
        assert_eq!(
            body["generationConfig"],
            json!({
                "stopSequences": ["END"], "temperature": 0.5, "topP": 0.9, "maxOutputTokens": 50,
                "candidateCount": 2, "seed": 7, "presencePenalty": 0.1, "frequencyPenalty": 0.2,
                "responseLogprobs": true, "responseMimeType": "application/json",
                "responseJsonSchema": {"type": "object"},
            })
        );
        assert_eq!(
            body["tools"],
            json!([{"functionDeclarations": [{"name": "get_weather", "description": "Weather",
                "parametersJsonSchema": {"type":"object","properties":{"location":{"type":"string"}}}}]}])
        );
        assert_eq!(
            body["toolConfig"],
            json!({"functionCallingConfig": {"mode": "ANY", "allowedFunctionNames": ["get_weather"]}})
        );
        for (mode, wanted) in [("auto", "AUTO"), ("none", "NONE"), ("required", "ANY")] {
            r.tool_choice = Some(ToolChoice {
                choice: Some(Choice::Mode(mode.into())),
            });
            let body = build(&r, None).await.unwrap();
            assert_eq!(
                body["toolConfig"]["functionCallingConfig"],
                json!({"mode": wanted})
            );
        }
        r.response_format = Some(ResponseFormat {
            r#type: "json_object".into(),
            json_schema: None,
        });
        let body = build(&r, None).await.unwrap();
        assert_eq!(
            body["generationConfig"]["responseMimeType"],
            "application/json"
        );
        assert!(body["generationConfig"].get("responseJsonSchema").is_none());
    }

    #[tokio::test]
    async fn what_gemini_cannot_take_is_a_400_naming_the_field() {
        let param_of = |e: UpstreamError| match e {
            UpstreamError::Unsupported { param, .. } => param,
            other => panic!("{other:?}"),
        };
        let mut r = request(vec![msg(Role::User, "x")]);
        r.seed = Some(i64::from(i32::MAX) + 1);
        assert_eq!(param_of(build(&r, None).await.unwrap_err()), "seed");
        r.seed = None;
        r.tool_choice = Some(ToolChoice {
            choice: Some(Choice::OtherJson(r#"{"type":"allowed_tools"}"#.into())),
        });
        assert_eq!(param_of(build(&r, None).await.unwrap_err()), "tool_choice");
        let audio = Message {
            role: Role::User.into(),
            content: Some(Content::Parts(ContentParts {
                parts: vec![ContentPart {
                    part: Some(Part::OtherJson(r#"{"type":"input_audio"}"#.into())),
                }],
            })),
            ..Default::default()
        };
        let r = request(vec![audio]);
        assert_eq!(
            param_of(build(&r, None).await.unwrap_err()),
            "messages[0].content[0]"
        );
    }

    #[tokio::test]
    async fn thinking_maps_to_thinking_config() {
        let mut r = request(vec![msg(Role::User, "x")]);
        let on = build(&r, Some(true)).await.unwrap();
        assert_eq!(
            on["generationConfig"]["thinkingConfig"],
            json!({"includeThoughts": true, "thinkingBudget": -1})
        );
        r.reasoning_effort = Some(ReasoningEffort::Low.into());
        let low = build(&r, Some(true)).await.unwrap();
        assert_eq!(
            low["generationConfig"]["thinkingConfig"]["thinkingBudget"],
            1024
        );
        r.thinking_budget_tokens = Some(3000);
        let own = build(&r, Some(true)).await.unwrap();
        assert_eq!(
            own["generationConfig"]["thinkingConfig"]["thinkingBudget"],
            3000
        );
        let off = build(&r, Some(false)).await.unwrap();
        assert_eq!(
            off["generationConfig"]["thinkingConfig"],
            json!({"thinkingBudget": 0})
        );
        let default = build(&request(vec![msg(Role::User, "x")]), None)
            .await
            .unwrap();
        assert!(default.get("generationConfig").is_none());
        // A model that always thinks, left to its default: nothing is sent (asking for thoughts
        // would change the answer).
        let always = route(ThinkingSupport::Always);
        let body = body(
            &r,
            &Target {
                route: &always,
                thinking: Thinking::Default { thinks: true },
            },
            &ImageFetcher::default(),
        )
        .await
        .unwrap();
        assert!(
            serde_json::to_value(body)
                .unwrap()
                .get("generationConfig")
                .is_none()
        );
        assert_eq!(
            (
                thinking_budget(Some(ReasoningEffort::Minimal)),
                thinking_budget(Some(ReasoningEffort::Medium)),
                thinking_budget(Some(ReasoningEffort::Max))
            ),
            (128, 8192, 24576)
        );
    }
}
