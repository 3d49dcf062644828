//! `POST /v1/chat/completions` request bodies.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::{error::ApiError, v1};

/// An OpenAI chat completion request.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ChatCompletionRequest {
    pub model: String,
    pub messages: Vec<ChatMessage>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_p: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_completion_tokens: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub n: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop: Option<Stop>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream_options: Option<StreamOptionsJson>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tools: Option<Vec<ToolJson>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_choice: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parallel_tool_calls: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_format: Option<ResponseFormatJson>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub presence_penalty: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub frequency_penalty: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logprobs: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_logprobs: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reasoning_effort: Option<ReasoningEffortJson>,
    /// OpenAI's prompt-cache routing key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt_cache_key: Option<String>,
    /// OpenRouter's fallback list: models tried in order when `model` cannot serve. Read by the
    /// gateway, never rendered upstream.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub models: Vec<String>,
    /// Sample from the k most likely tokens only: not OpenAI's, but compatible servers (vLLM,
    /// llama.cpp) take it, and Anthropic and Gemini render it their way.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_k: Option<u32>,
    /// DeepSeek-style thinking switch. Not rendered upstream as is: each provider expresses
    /// thinking its own way.
    #[serde(default, skip_serializing)]
    pub thinking: Option<ThinkingJson>,
    /// Top-level fields not named above, kept for pass-through. Parsed by `flatten`; rendered
    /// by [`Self::to_json`], where a named field wins over an `extra` one of the same name.
    #[serde(flatten, skip_serializing)]
    pub extra: Map<String, Value>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RoleJson {
    System,
    Developer,
    User,
    Assistant,
    Tool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChatMessage {
    pub role: RoleJson,
    /// `None` is JSON `null` (or absent), allowed on assistant messages with tool calls.
    #[serde(default)]
    pub content: Option<ContentJson>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_calls: Option<Vec<ToolCallJson>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_call_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reasoning_content: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refusal: Option<String>,
    /// Provider reasoning state returned on an earlier answer (signatures, thought signatures),
    /// sent back unchanged on assistant messages of a tool loop.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reasoning_details: Option<Vec<ReasoningDetailJson>>,
}

/// One element of `reasoning_details` (OpenRouter's convention; see `tollgate.v1.ReasoningDetail`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ReasoningDetailJson {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub index: Option<u32>,
}

impl ReasoningDetailJson {
    pub fn to_proto(&self) -> v1::ReasoningDetail {
        v1::ReasoningDetail {
            r#type: self.kind.clone(),
            text: self.text.clone(),
            signature: self.signature.clone(),
            data: self.data.clone(),
            id: self.id.clone(),
            format: self.format.clone(),
            index: self.index,
        }
    }

    pub fn from_proto(detail: &v1::ReasoningDetail) -> Self {
        Self {
            kind: detail.r#type.clone(),
            text: detail.text.clone(),
            signature: detail.signature.clone(),
            data: detail.data.clone(),
            id: detail.id.clone(),
            format: detail.format.clone(),
            index: detail.index,
        }
    }
}

/// Message content: a string or an array of typed parts (kept as JSON until converted, so that
/// errors can name the part).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum ContentJson {
    Text(String),
    Parts(Vec<Value>),
}

/// The JSON type of a value, for error messages ("a string", "an array", ...).
pub fn json_type(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

// Hand-written so that a wrong type says what is expected (serde's untagged enums only say
// "data did not match any variant").
impl<'de> Deserialize<'de> for ContentJson {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match Value::deserialize(d)? {
            Value::String(text) => Ok(Self::Text(text)),
            Value::Array(parts) => Ok(Self::Parts(parts)),
            other => Err(serde::de::Error::custom(format!(
                "expected a string or an array of content parts, got {}",
                json_type(&other)
            ))),
        }
    }
}

/// `{"type": "enabled" | "disabled"}`; other keys (budgets) are ignored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ThinkingJson {
    #[serde(rename = "type")]
    pub kind: ThinkingType,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ThinkingType {
    Enabled,
    Disabled,
}

/// OpenAI's `reasoning_effort` values, plus `max` (DeepSeek's and Anthropic's top effort).
/// Anything else is a 400 naming `reasoning_effort`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ReasoningEffortJson {
    None,
    Minimal,
    Low,
    Medium,
    High,
    Xhigh,
    Max,
}

impl ReasoningEffortJson {
    pub fn to_proto(self) -> v1::ReasoningEffort {
        match self {
            Self::None => v1::ReasoningEffort::None,
            Self::Minimal => v1::ReasoningEffort::Minimal,
            Self::Low => v1::ReasoningEffort::Low,
            Self::Medium => v1::ReasoningEffort::Medium,
            Self::High => v1::ReasoningEffort::High,
            Self::Xhigh => v1::ReasoningEffort::Xhigh,
            Self::Max => v1::ReasoningEffort::Max,
        }
    }

    /// `None` for `UNSPECIFIED`, which has no JSON form.
    pub fn from_proto(effort: v1::ReasoningEffort) -> Option<Self> {
        Some(match effort {
            v1::ReasoningEffort::Unspecified => return None,
            v1::ReasoningEffort::None => Self::None,
            v1::ReasoningEffort::Minimal => Self::Minimal,
            v1::ReasoningEffort::Low => Self::Low,
            v1::ReasoningEffort::Medium => Self::Medium,
            v1::ReasoningEffort::High => Self::High,
            v1::ReasoningEffort::Xhigh => Self::Xhigh,
            v1::ReasoningEffort::Max => Self::Max,
        })
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum Stop {
    One(String),
    Many(Vec<String>),
}

impl<'de> Deserialize<'de> for Stop {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let expected = "expected a string or an array of strings";
        match Value::deserialize(d)? {
            Value::String(stop) => Ok(Self::One(stop)),
            Value::Array(items) => items
                .into_iter()
                .map(|item| match item {
                    Value::String(stop) => Ok(stop),
                    other => Err(serde::de::Error::custom(format!(
                        "{expected}, got an array holding {}",
                        json_type(&other)
                    ))),
                })
                .collect::<Result<_, _>>()
                .map(Self::Many),
            other => Err(serde::de::Error::custom(format!(
                "{expected}, got {}",
                json_type(&other)
            ))),
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StreamOptionsJson {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub include_usage: Option<bool>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ToolJson {
    #[serde(rename = "type")]
    pub kind: String,
    pub function: FunctionDefinitionJson,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FunctionDefinitionJson {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parameters: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub strict: Option<bool>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ToolCallJson {
    pub id: String,
    #[serde(rename = "type", default = "function_type")]
    pub kind: String,
    pub function: FunctionCallJson,
}

fn function_type() -> String {
    "function".to_owned()
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FunctionCallJson {
    pub name: String,
    #[serde(default)]
    pub arguments: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResponseFormatJson {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub json_schema: Option<JsonSchemaJson>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JsonSchemaJson {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schema: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub strict: Option<bool>,
}

impl ChatCompletionRequest {
    /// Parses a request body held as a JSON value (JSON built in code; the facade parses bytes
    /// with [`crate::openai::body::from_slice`]). Type errors name the offending field as a JSON
    /// path (`messages[0].role`); unknown top-level fields go to `extra`.
    pub fn from_json(body: Value) -> Result<Self, ApiError> {
        crate::openai::body::from_value(body)
    }

    /// The request as the `tollgate.v1` message.
    pub fn into_proto(self) -> Result<v1::ChatRequest, ApiError> {
        let messages = self
            .messages
            .into_iter()
            .enumerate()
            .map(|(i, m)| m.into_proto(i))
            .collect::<Result<_, _>>()?;
        let tools = self
            .tools
            .unwrap_or_default()
            .into_iter()
            .map(|t| v1::Tool {
                r#type: t.kind,
                function: Some(v1::FunctionDefinition {
                    name: t.function.name,
                    description: t.function.description,
                    parameters_json: t
                        .function
                        .parameters
                        .map(|p| p.to_string())
                        .unwrap_or_default(),
                    strict: t.function.strict,
                }),
            })
            .collect();
        Ok(v1::ChatRequest {
            model: self.model,
            messages,
            temperature: self.temperature,
            top_p: self.top_p,
            max_tokens: self.max_tokens,
            max_completion_tokens: self.max_completion_tokens,
            n: self.n,
            stop: match self.stop {
                None => vec![],
                Some(Stop::One(s)) => vec![s],
                Some(Stop::Many(v)) => v,
            },
            stream_options: self.stream_options.map(|o| v1::StreamOptions {
                include_usage: o.include_usage.unwrap_or(false),
            }),
            tools,
            tool_choice: self.tool_choice.map(tool_choice_to_proto).transpose()?,
            parallel_tool_calls: self.parallel_tool_calls,
            response_format: self.response_format.map(|f| v1::ResponseFormat {
                r#type: f.kind,
                json_schema: f.json_schema.map(|s| v1::JsonSchemaFormat {
                    name: s.name,
                    description: s.description,
                    schema_json: s.schema.map(|v| v.to_string()).unwrap_or_default(),
                    strict: s.strict,
                }),
            }),
            seed: self.seed,
            user: self.user,
            presence_penalty: self.presence_penalty,
            frequency_penalty: self.frequency_penalty,
            logprobs: self.logprobs,
            top_logprobs: self.top_logprobs,
            reasoning_effort: self.reasoning_effort.map(|e| e.to_proto().into()),
            thinking: self.thinking.map(|t| t.kind == ThinkingType::Enabled),
            prompt_cache_key: self.prompt_cache_key,
            models: self.models,
            top_k: self.top_k,
            extra_json: if self.extra.is_empty() {
                String::new()
            } else {
                Value::Object(self.extra).to_string()
            },
            ..Default::default()
        })
    }

    /// The `tollgate.v1` message as an OpenAI request (without `stream`), for OpenAI-style
    /// upstreams. JSON-text fields that do not parse are reported with their field path.
    pub fn from_proto(request: &v1::ChatRequest) -> Result<Self, ApiError> {
        let messages = request
            .messages
            .iter()
            .enumerate()
            .map(|(i, m)| ChatMessage::from_proto(m, i))
            .collect::<Result<_, _>>()?;
        let tools = request
            .tools
            .iter()
            .enumerate()
            .map(|(i, t)| {
                let f = t.function.clone().unwrap_or_default();
                Ok(ToolJson {
                    kind: if t.r#type.is_empty() {
                        function_type()
                    } else {
                        t.r#type.clone()
                    },
                    function: FunctionDefinitionJson {
                        parameters: parse_json_text(
                            &f.parameters_json,
                            &format!("tools[{i}].function.parameters"),
                        )?,
                        name: f.name,
                        description: f.description,
                        strict: f.strict,
                    },
                })
            })
            .collect::<Result<Vec<_>, ApiError>>()?;
        let extra = crate::passthrough::parse_extra_json(&request.extra_json)?;
        Ok(Self {
            model: request.model.clone(),
            messages,
            temperature: request.temperature,
            top_p: request.top_p,
            max_tokens: request.max_tokens,
            max_completion_tokens: request.max_completion_tokens,
            n: request.n,
            stop: match request.stop.as_slice() {
                [] => None,
                stops => Some(Stop::Many(stops.to_vec())),
            },
            stream: None,
            stream_options: None,
            tools: (!tools.is_empty()).then_some(tools),
            tool_choice: request
                .tool_choice
                .as_ref()
                .map(tool_choice_from_proto)
                .transpose()?
                .flatten(),
            parallel_tool_calls: request.parallel_tool_calls,
            response_format: request
                .response_format
                .as_ref()
                .map(|f| {
                    Ok::<_, ApiError>(ResponseFormatJson {
                        kind: f.r#type.clone(),
                        json_schema: f
                            .json_schema
                            .as_ref()
                            .map(|s| {
                                Ok::<_, ApiError>(JsonSchemaJson {
                                    name: s.name.clone(),
                                    description: s.description.clone(),
                                    schema: parse_json_text(
                                        &s.schema_json,
                                        "response_format.json_schema.schema",
                                    )?,
                                    strict: s.strict,
                                })
                            })
                            .transpose()?,
                    })
                })
                .transpose()?,
            seed: request.seed,
            user: request.user.clone(),
            presence_penalty: request.presence_penalty,
            frequency_penalty: request.frequency_penalty,
            logprobs: request.logprobs,
            top_logprobs: request.top_logprobs,
            reasoning_effort: request
                .reasoning_effort
                .map(|e| {
                    v1::ReasoningEffort::try_from(e)
                        .ok()
                        .and_then(ReasoningEffortJson::from_proto)
                        .ok_or_else(|| {
                            ApiError::invalid_param(
                                "reasoning_effort",
                                format!("reasoning_effort {e} is not a known effort"),
                            )
                        })
                })
                .transpose()?,
            prompt_cache_key: request.prompt_cache_key.clone(),
            // The fallback list is the gateway's: never sent upstream.
            models: Vec::new(),
            top_k: request.top_k,
            thinking: request.thinking.map(|on| ThinkingJson {
                kind: if on {
                    ThinkingType::Enabled
                } else {
                    ThinkingType::Disabled
                },
            }),
            extra,
        })
    }

    /// The request as one JSON object, `extra` merged in at the top level (named fields win).
    pub fn to_json(&self) -> Value {
        let mut value = serde_json::to_value(self).unwrap_or(Value::Null);
        if let Value::Object(object) = &mut value {
            for (k, v) in &self.extra {
                object.entry(k.clone()).or_insert_with(|| v.clone());
            }
        }
        value
    }
}

fn parse_json_text(text: &str, param: &str) -> Result<Option<Value>, ApiError> {
    if text.is_empty() {
        return Ok(None);
    }
    serde_json::from_str(text)
        .map(Some)
        .map_err(|e| ApiError::invalid_param(param, format!("{param} is not valid JSON: {e}")))
}

fn tool_choice_to_proto(choice: Value) -> Result<v1::ToolChoice, ApiError> {
    use v1::tool_choice::Choice;
    let choice = match choice {
        Value::String(mode) => match mode.as_str() {
            "none" | "auto" | "required" => Choice::Mode(mode),
            other => {
                return Err(ApiError::invalid_param(
                    "tool_choice",
                    format!(
                        "tool_choice must be \"none\", \"auto\", \"required\" or an object, got {other:?}"
                    ),
                ));
            }
        },
        Value::Object(object) => {
            let name = object
                .get("function")
                .and_then(|f| f.get("name"))
                .and_then(Value::as_str);
            match (object.get("type").and_then(Value::as_str), name) {
                (Some("function"), Some(name)) => Choice::FunctionName(name.to_owned()),
                (Some("function"), None) => {
                    return Err(ApiError::invalid_param(
                        "tool_choice.function.name",
                        "tool_choice of type function needs function.name",
                    ));
                }
                (Some(_), _) => Choice::OtherJson(Value::Object(object).to_string()),
                (None, _) => {
                    return Err(ApiError::invalid_param(
                        "tool_choice.type",
                        "tool_choice object needs a type",
                    ));
                }
            }
        }
        _ => {
            return Err(ApiError::invalid_param(
                "tool_choice",
                "tool_choice must be a string or an object",
            ));
        }
    };
    Ok(v1::ToolChoice {
        choice: Some(choice),
    })
}

fn tool_choice_from_proto(choice: &v1::ToolChoice) -> Result<Option<Value>, ApiError> {
    use v1::tool_choice::Choice;
    Ok(match &choice.choice {
        None => None,
        Some(Choice::Mode(mode)) => Some(Value::String(mode.clone())),
        Some(Choice::FunctionName(name)) => Some(serde_json::json!({
            "type": "function",
            "function": {"name": name},
        })),
        Some(Choice::OtherJson(text)) => parse_json_text(text, "tool_choice")?,
    })
}

impl RoleJson {
    pub fn to_proto(self) -> v1::Role {
        match self {
            Self::System => v1::Role::System,
            Self::Developer => v1::Role::Developer,
            Self::User => v1::Role::User,
            Self::Assistant => v1::Role::Assistant,
            Self::Tool => v1::Role::Tool,
        }
    }

    /// The role an answer's delta names (`"assistant"`). An answer only ever speaks as the
    /// assistant, so a name no role has (a compatible server's own) is read as the assistant.
    pub fn of_delta(name: &str) -> Self {
        serde_json::from_value(Value::String(name.to_owned())).unwrap_or(Self::Assistant)
    }

    /// The JSON name (`"assistant"`), as serde writes it.
    pub fn name(self) -> String {
        match serde_json::to_value(self) {
            Ok(Value::String(name)) => name,
            _ => String::new(),
        }
    }

    pub fn from_proto(role: v1::Role) -> Option<Self> {
        Some(match role {
            v1::Role::Unspecified => return None,
            v1::Role::System => Self::System,
            v1::Role::Developer => Self::Developer,
            v1::Role::User => Self::User,
            v1::Role::Assistant => Self::Assistant,
            v1::Role::Tool => Self::Tool,
        })
    }
}

impl ChatMessage {
    fn into_proto(self, index: usize) -> Result<v1::Message, ApiError> {
        use v1::message::Content;
        let content = match self.content {
            None => None,
            Some(ContentJson::Text(text)) => Some(Content::Text(text)),
            Some(ContentJson::Parts(parts)) => Some(Content::Parts(v1::ContentParts {
                parts: parts
                    .into_iter()
                    .enumerate()
                    .map(|(j, part)| {
                        part_to_proto(part, &format!("messages[{index}].content[{j}]"))
                    })
                    .collect::<Result<_, _>>()?,
            })),
        };
        Ok(v1::Message {
            role: self.role.to_proto().into(),
            content,
            name: self.name,
            tool_calls: self
                .tool_calls
                .unwrap_or_default()
                .into_iter()
                .map(|c| v1::ToolCall {
                    id: c.id,
                    r#type: c.kind,
                    function: Some(v1::FunctionCall {
                        name: c.function.name,
                        arguments: c.function.arguments,
                    }),
                })
                .collect(),
            tool_call_id: self.tool_call_id,
            reasoning_content: self.reasoning_content,
            refusal: self.refusal,
            reasoning_details: self
                .reasoning_details
                .unwrap_or_default()
                .iter()
                .map(ReasoningDetailJson::to_proto)
                .collect(),
        })
    }

    fn from_proto(message: &v1::Message, index: usize) -> Result<Self, ApiError> {
        use v1::{content_part::Part, message::Content};
        let role = v1::Role::try_from(message.role)
            .ok()
            .and_then(RoleJson::from_proto)
            .ok_or_else(|| {
                ApiError::invalid_param(
                    format!("messages[{index}].role"),
                    format!("messages[{index}].role is missing or unknown"),
                )
            })?;
        let content = match &message.content {
            None => None,
            Some(Content::Text(text)) => Some(ContentJson::Text(text.clone())),
            Some(Content::Parts(parts)) => Some(ContentJson::Parts(
                parts
                    .parts
                    .iter()
                    .enumerate()
                    .filter_map(|(j, p)| {
                        let param = format!("messages[{index}].content[{j}]");
                        Some(match p.part.as_ref()? {
                            Part::Text(text) => {
                                Ok(serde_json::json!({"type": "text", "text": text}))
                            }
                            Part::ImageUrl(image) => {
                                let mut url = serde_json::json!({"url": image.url});
                                if let Some(detail) = &image.detail {
                                    url["detail"] = Value::String(detail.clone());
                                }
                                Ok(serde_json::json!({"type": "image_url", "image_url": url}))
                            }
                            Part::OtherJson(text) => {
                                parse_json_text(text, &param).map(|v| v.unwrap_or(Value::Null))
                            }
                        })
                    })
                    .collect::<Result<_, ApiError>>()?,
            )),
        };
        Ok(Self {
            role,
            content,
            name: message.name.clone(),
            tool_calls: (!message.tool_calls.is_empty()).then(|| {
                message
                    .tool_calls
                    .iter()
                    .map(|c| {
                        let f = c.function.clone().unwrap_or_default();
                        ToolCallJson {
                            id: c.id.clone(),
                            kind: if c.r#type.is_empty() {
                                function_type()
                            } else {
                                c.r#type.clone()
                            },
                            function: FunctionCallJson {
                                name: f.name,
                                arguments: f.arguments,
                            },
                        }
                    })
                    .collect()
            }),
            tool_call_id: message.tool_call_id.clone(),
            reasoning_content: message.reasoning_content.clone(),
            refusal: message.refusal.clone(),
            reasoning_details: (!message.reasoning_details.is_empty()).then(|| {
                message
                    .reasoning_details
                    .iter()
                    .map(ReasoningDetailJson::from_proto)
                    .collect()
            }),
        })
    }
}

fn part_to_proto(part: Value, param: &str) -> Result<v1::ContentPart, ApiError> {
    use v1::content_part::Part;
    let kind = part.get("type").and_then(Value::as_str).ok_or_else(|| {
        ApiError::invalid_param(
            format!("{param}.type"),
            format!("{param} must be an object with a string type"),
        )
    })?;
    let part = match kind {
        "text" => Part::Text(
            part.get("text")
                .and_then(Value::as_str)
                .ok_or_else(|| {
                    ApiError::invalid_param(
                        format!("{param}.text"),
                        format!("{param}.text must be a string"),
                    )
                })?
                .to_owned(),
        ),
        "image_url" => {
            let image = part.get("image_url");
            let url = image
                .and_then(|i| i.get("url"))
                .and_then(Value::as_str)
                .ok_or_else(|| {
                    ApiError::invalid_param(
                        format!("{param}.image_url.url"),
                        format!("{param}.image_url.url must be a string"),
                    )
                })?;
            Part::ImageUrl(v1::ImageUrl {
                url: url.to_owned(),
                detail: image
                    .and_then(|i| i.get("detail"))
                    .and_then(Value::as_str)
                    .map(str::to_owned),
            })
        }
        _ => Part::OtherJson(part.to_string()),
    };
    Ok(v1::ContentPart { part: Some(part) })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// Parses `body` from a value and from its bytes; both must agree.
    fn parse(body: Value) -> Result<ChatCompletionRequest, ApiError> {
        let from_value = ChatCompletionRequest::from_json(body.clone());
        let from_bytes = crate::openai::body::from_slice(&serde_json::to_vec(&body).unwrap());
        assert_eq!(from_value, from_bytes, "{body}");
        from_value
    }

    #[test]
    fn full_request_round_trips_through_proto() {
        let body = json!({
            "model": "gpt-4o",
            "messages": [
                {"role": "system", "content": "You are terse."},
                {"role": "developer", "content": [{"type": "text", "text": "Policy X."}]},
                {"role": "user", "content": [
                    {"type": "text", "text": "What is in this image?"},
                    {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBO", "detail": "auto"}},
                    {"type": "input_audio", "input_audio": {"data": "AAA", "format": "wav"}}
                ]},
                {"role": "assistant", "content": null, "tool_calls": [
                    {"id": "call_abc123", "type": "function", "function": {"name": "get_weather", "arguments": "{\"location\":\"Boston, MA\"}"}}
                ]},
                {"role": "tool", "tool_call_id": "call_abc123", "content": "{\"temperature\":22}"}
            ],
            "temperature": 0.7,
            "top_p": 0.9,
            "max_tokens": 100,
            "stop": ["END", "STOP"],
            "stream": true,
            "stream_options": {"include_usage": true},
            "tools": [{"type": "function", "function": {"name": "get_weather", "description": "d", "parameters": {"type": "object", "properties": {"n": {"type": "integer", "maximum": 3}}}}}],
            "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
            "parallel_tool_calls": false,
            "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object"}, "strict": true}},
            "seed": 7,
            "reasoning_effort": "high",
            "logit_bias": {"50256": -100},
            "metadata": {"a": "b"}
        });
        let parsed = parse(body.clone()).unwrap();
        assert_eq!(parsed.extra.len(), 2);
        let proto = parsed.clone().into_proto().unwrap();
        assert_eq!(proto.stop, vec!["END", "STOP"]);
        assert!(proto.stream_options.unwrap().include_usage);
        let back = ChatCompletionRequest::from_proto(&proto).unwrap();
        let mut expected = parsed;
        expected.stream = None;
        expected.stream_options = None;
        assert_eq!(back, expected);
        let json = back.to_json();
        assert_eq!(json["logit_bias"], json!({"50256": -100}));
        assert_eq!(
            json["tools"][0]["function"]["parameters"]["properties"]["n"]["maximum"],
            json!(3)
        );
        assert_eq!(json["messages"][3]["content"], Value::Null);
        assert_eq!(
            json["messages"][2]["content"][2]["type"],
            json!("input_audio")
        );
    }

    #[test]
    fn errors_name_the_field() {
        let e = parse(json!({"messages": []})).unwrap_err();
        assert_eq!(e.param.as_deref(), Some("model"));
        let e = parse(json!({"model": "m", "messages": [{"role": "wizard", "content": "hi"}]}))
            .unwrap_err();
        assert_eq!(e.param.as_deref(), Some("messages[0].role"));
        assert!(e.message.contains("wizard"), "{}", e.message);
        let e = parse(json!({"model": "m", "messages": [], "temperature": "hot"})).unwrap_err();
        assert_eq!(e.param.as_deref(), Some("temperature"));
        let e = parse(json!({"model": "m", "messages": [{"content": "hi"}]})).unwrap_err();
        assert_eq!(e.param.as_deref(), Some("messages[0].role"));
        let e = parse(
            json!({"model": "m", "messages": [{"role": "user", "content": [{"type": "text"}]}]}),
        )
        .unwrap()
        .into_proto()
        .unwrap_err();
        assert_eq!(e.param.as_deref(), Some("messages[0].content[0].text"));
        let e = parse(json!([1])).unwrap_err();
        assert_eq!(e.param.as_deref(), Some("body"));
    }

    #[test]
    fn thinking_is_a_field_not_a_pass_through() {
        let r = parse(json!({"model": "m", "messages": [], "thinking": {"type": "enabled", "budget_tokens": 5}}))
            .unwrap();
        assert!(r.extra.is_empty());
        let proto = r.into_proto().unwrap();
        assert_eq!(proto.thinking, Some(true));
        let back = ChatCompletionRequest::from_proto(&proto).unwrap();
        assert!(back.to_json().get("thinking").is_none());
        let e = parse(json!({"model": "m", "messages": [], "thinking": {"type": "maybe"}}))
            .unwrap_err();
        assert_eq!(e.param.as_deref(), Some("thinking.type"));
    }

    #[test]
    fn reasoning_effort_is_one_of_the_known_efforts() {
        for (text, effort) in [
            ("none", v1::ReasoningEffort::None),
            ("minimal", v1::ReasoningEffort::Minimal),
            ("low", v1::ReasoningEffort::Low),
            ("medium", v1::ReasoningEffort::Medium),
            ("high", v1::ReasoningEffort::High),
            ("xhigh", v1::ReasoningEffort::Xhigh),
            ("max", v1::ReasoningEffort::Max),
        ] {
            let r = parse(json!({"model": "m", "messages": [], "reasoning_effort": text})).unwrap();
            let proto = r.into_proto().unwrap();
            assert_eq!(proto.reasoning_effort(), effort);
            let back = ChatCompletionRequest::from_proto(&proto).unwrap();
            assert_eq!(back.to_json()["reasoning_effort"], text);
        }
        let e = parse(json!({"model": "m", "messages": [], "reasoning_effort": "extreme"}))
            .unwrap_err();
        assert_eq!(e.param.as_deref(), Some("reasoning_effort"));
        let unknown = v1::ChatRequest {
            reasoning_effort: Some(99),
            ..Default::default()
        };
        let e = ChatCompletionRequest::from_proto(&unknown).unwrap_err();
        assert_eq!(e.param.as_deref(), Some("reasoning_effort"));
    }

    #[test]
    fn wrong_content_and_stop_types_say_what_is_expected() {
        let e =
            parse(json!({"model": "m", "messages": [{"role": "user", "content": 5}]})).unwrap_err();
        assert_eq!(e.param.as_deref(), Some("messages[0].content"));
        assert!(
            e.message
                .contains("a string or an array of content parts, got a number"),
            "{}",
            e.message
        );
        let e = parse(json!({"model": "m", "messages": [], "stop": [1]})).unwrap_err();
        assert_eq!(e.param.as_deref(), Some("stop"));
        assert!(
            e.message.contains("array holding a number"),
            "{}",
            e.message
        );
    }

    /// A typical chat body: a system prompt, a short tool loop, one tool, sampling parameters
    /// and one field the gateway passes through.
    fn typical_body() -> Vec<u8> {
        let history: Vec<Value> = (0..6)
            .map(|i| {
                json!({"role": if i % 2 == 0 { "user" } else { "assistant" },
                       "content": format!("Message {i}: {}", "lorem ipsum dolor sit amet ".repeat(12))})
            })
            .collect();
        let mut messages = vec![json!({"role": "system", "content": "You are a terse assistant."})];
        messages.extend(history);
        messages.push(json!({"role": "assistant", "content": null, "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}}
        ]}));
        messages
            .push(json!({"role": "tool", "tool_call_id": "call_1", "content": "{\"celsius\":21}"}));
        serde_json::to_vec(&json!({
            "model": "deepseek-chat",
            "messages": messages,
            "temperature": 0.7,
            "max_tokens": 512,
            "stream": true,
            "stream_options": {"include_usage": true},
            "tools": [{"type": "function", "function": {"name": "get_weather", "description": "Weather by city",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}],
            "tool_choice": "auto",
            "user": "user-42",
            "metadata": {"trace": "abc"}
        }))
        .unwrap()
    }

    /// The facade's parse before it went straight to the type: a `Value` tree of the whole body
    /// first, the request deserialized from the tree. (The former parse also copied the unknown
    /// fields out of the tree before that, so it was a little slower still.)
    fn parse_through_a_value_tree(bytes: &[u8]) -> ChatCompletionRequest {
        ChatCompletionRequest::from_json(serde_json::from_slice(bytes).unwrap()).unwrap()
    }

    /// Not a pass/fail test: prints the cost of parsing a typical body from bytes, as the
    /// facade does, against the former parse through a `Value` tree, in alternating rounds.
    /// `cargo test -p tollgate --release --lib parse_timing -- --ignored --nocapture`
    #[test]
    #[ignore = "a timing measurement, run by hand"]
    fn parse_timing() {
        let body = typical_body();
        let direct = |bytes: &[u8]| crate::openai::body::from_slice(bytes).unwrap();
        assert_eq!(direct(&body), parse_through_a_value_tree(&body));
        let time = |parse: &dyn Fn(&[u8]) -> ChatCompletionRequest, rounds: u32| {
            let start = std::time::Instant::now();
            for _ in 0..rounds {
                std::hint::black_box(parse(std::hint::black_box(&body)));
            }
            start.elapsed() / rounds
        };
        time(&direct, 1_000);
        time(&parse_through_a_value_tree, 1_000);
        let (mut typed, mut tree) = (Vec::new(), Vec::new());
        for _ in 0..10 {
            typed.push(time(&direct, 2_000));
            tree.push(time(&parse_through_a_value_tree, 2_000));
        }
        typed.sort();
        tree.sort();
        println!(
            "parse of a {} byte body, median of 10 x 2000 rounds: typed {:?}, via a Value tree {:?}",
            body.len(),
            typed[5],
            tree[5]
        );
    }

    #[test]
    fn a_named_field_given_twice_is_refused_and_unknown_ones_pass_through() {
        let e = crate::openai::body::from_slice::<ChatCompletionRequest>(
            br#"{"model": "a", "messages": [], "model": "b"}"#,
        )
        .unwrap_err();
        assert_eq!(e.param.as_deref(), Some("model"));
        let r = crate::openai::body::from_slice::<ChatCompletionRequest>(
            br#"{"model": "a", "messages": [], "metadata": {"k": 1}, "logit_bias": {}}"#,
        )
        .unwrap();
        assert_eq!(
            r.extra.keys().collect::<Vec<_>>(),
            ["metadata", "logit_bias"]
        );
        assert_eq!(r.to_json()["metadata"], json!({"k": 1}));
    }

    #[test]
    fn string_stop_becomes_a_list() {
        let r = parse(json!({"model": "m", "messages": [], "stop": "END"}))
            .unwrap()
            .into_proto()
            .unwrap();
        assert_eq!(r.stop, vec!["END"]);
    }
}
