//! Chat completion responses and stream chunks. Parsing is lenient (upstreams differ in what they
//! omit); rendering follows OpenAI's shapes exactly.

use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{Map, Value};

use super::request::{FunctionCallJson, ReasoningDetailJson, RoleJson, ToolCallJson};
use crate::v1;

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ChatCompletion {
    #[serde(default)]
    pub id: String,
    #[serde(default = "completion_object")]
    pub object: String,
    #[serde(default)]
    pub created: i64,
    #[serde(default)]
    pub model: String,
    #[serde(default, deserialize_with = "null_as_default")]
    pub choices: Vec<ChoiceJson>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<UsageJson>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system_fingerprint: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_tier: Option<String>,
}

fn completion_object() -> String {
    "chat.completion".to_owned()
}

fn chunk_object() -> String {
    "chat.completion.chunk".to_owned()
}

fn assistant() -> String {
    "assistant".to_owned()
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ChoiceJson {
    #[serde(default)]
    pub index: u32,
    #[serde(default)]
    pub message: ResponseMessage,
    #[serde(default)]
    pub logprobs: Option<Value>,
    #[serde(default)]
    pub finish_reason: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResponseMessage {
    #[serde(default = "assistant")]
    pub role: String,
    #[serde(default, deserialize_with = "lenient_text")]
    pub content: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reasoning_content: Option<String>,
    /// Reasoning under the name some compatible servers use (vLLM, OpenRouter); read into
    /// `reasoning_content`, never rendered.
    #[serde(default, skip_serializing)]
    pub reasoning: Option<String>,
    #[serde(
        default,
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "null_as_default"
    )]
    pub tool_calls: Vec<ToolCallJson>,
    #[serde(default)]
    pub refusal: Option<String>,
    #[serde(
        default,
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "null_as_default"
    )]
    pub reasoning_details: Vec<ReasoningDetailJson>,
}

impl Default for ResponseMessage {
    fn default() -> Self {
        Self {
            role: assistant(),
            content: None,
            reasoning_content: None,
            reasoning: None,
            tool_calls: vec![],
            refusal: None,
            reasoning_details: vec![],
        }
    }
}

/// OpenAI's `usage`. Fields an upstream adds (DeepSeek's `prompt_cache_hit_tokens`, a cost) are
/// kept in `extra`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct UsageJson {
    #[serde(default)]
    pub prompt_tokens: u64,
    #[serde(default)]
    pub completion_tokens: u64,
    #[serde(default)]
    pub total_tokens: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt_tokens_details: Option<PromptTokensDetails>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion_tokens_details: Option<CompletionTokensDetails>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PromptTokensDetails {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cached_tokens: Option<u64>,
    /// Prompt tokens written to the provider's cache (Anthropic), billed at the cache-write price.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_write_tokens: Option<u64>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CompletionTokensDetails {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reasoning_tokens: Option<u64>,
}

/// One `chat.completion.chunk`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ChatCompletionChunk {
    #[serde(default)]
    pub id: String,
    #[serde(default = "chunk_object")]
    pub object: String,
    #[serde(default)]
    pub created: i64,
    #[serde(default)]
    pub model: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system_fingerprint: Option<String>,
    #[serde(default, deserialize_with = "null_as_default")]
    pub choices: Vec<ChunkChoiceJson>,
    /// Absent (`None`), `null` (`Some(None)`: OpenAI sends it on every chunk but the last when
    /// usage was requested), or the usage of the whole request (`Some(Some(_))`).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "present_or_null"
    )]
    pub usage: Option<Option<UsageJson>>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ChunkChoiceJson {
    #[serde(default)]
    pub index: u32,
    #[serde(default)]
    pub delta: DeltaJson,
    #[serde(default)]
    pub logprobs: Option<Value>,
    #[serde(default)]
    pub finish_reason: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DeltaJson {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reasoning_content: Option<String>,
    /// Reasoning under the name some compatible servers use (vLLM, OpenRouter); read into
    /// `reasoning_content`, never rendered.
    #[serde(default, skip_serializing)]
    pub reasoning: Option<String>,
    #[serde(
        default,
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "null_as_default"
    )]
    pub tool_calls: Vec<ToolCallDeltaJson>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refusal: Option<String>,
    #[serde(
        default,
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "null_as_default"
    )]
    pub reasoning_details: Vec<ReasoningDetailJson>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ToolCallDeltaJson {
    #[serde(default)]
    pub index: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub function: Option<FunctionDeltaJson>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct FunctionDeltaJson {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub arguments: Option<String>,
}

fn null_as_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

fn present_or_null<'de, D>(d: D) -> Result<Option<Option<UsageJson>>, D::Error>
where
    D: Deserializer<'de>,
{
    Ok(Some(Option::deserialize(d)?))
}

/// Content as a string; an array of text parts (some compatible servers) is joined.
fn lenient_text<'de, D>(d: D) -> Result<Option<String>, D::Error>
where
    D: Deserializer<'de>,
{
    Ok(match Value::deserialize(d)? {
        Value::String(s) => Some(s),
        Value::Array(parts) => Some(
            parts
                .iter()
                .filter_map(|p| p.get("text").and_then(Value::as_str))
                .collect(),
        ),
        _ => None,
    })
}

impl UsageJson {
    /// OpenAI's usage object for a normalised `Usage`; `cost` (USD, decimal) when settled.
    pub fn from_proto(usage: &v1::Usage) -> Self {
        let mut extra = Map::new();
        if let Some(pico) = usage.cost_picodollars {
            extra.insert(
                "cost".to_owned(),
                crate::money::json_number(&crate::money::format_picodollars(pico)),
            );
        }
        Self {
            prompt_tokens: usage.prompt_tokens,
            completion_tokens: usage.completion_tokens,
            total_tokens: usage.total_tokens,
            prompt_tokens_details: Some(PromptTokensDetails {
                cached_tokens: Some(usage.cached_prompt_tokens),
                cache_write_tokens: (usage.cache_write_tokens > 0)
                    .then_some(usage.cache_write_tokens),
            }),
            completion_tokens_details: Some(CompletionTokensDetails {
                reasoning_tokens: Some(usage.reasoning_tokens),
            }),
            extra,
        }
    }

    /// The normalised usage; `total_tokens` is recomputed when the upstream left it out.
    pub fn to_proto(&self) -> v1::Usage {
        let cached = self
            .prompt_tokens_details
            .as_ref()
            .and_then(|d| d.cached_tokens)
            .unwrap_or(0);
        let reasoning = self
            .completion_tokens_details
            .as_ref()
            .and_then(|d| d.reasoning_tokens)
            .unwrap_or(0);
        v1::Usage {
            prompt_tokens: self.prompt_tokens,
            completion_tokens: self.completion_tokens,
            total_tokens: if self.total_tokens == 0 {
                self.prompt_tokens.saturating_add(self.completion_tokens)
            } else {
                self.total_tokens
            },
            cached_prompt_tokens: cached,
            reasoning_tokens: reasoning,
            cost_picodollars: None,
            cache_write_tokens: self
                .prompt_tokens_details
                .as_ref()
                .and_then(|d| d.cache_write_tokens)
                .unwrap_or(0),
        }
    }
}

fn tool_call_to_proto(call: &ToolCallJson) -> v1::ToolCall {
    v1::ToolCall {
        id: call.id.clone(),
        r#type: call.kind.clone(),
        function: Some(v1::FunctionCall {
            name: call.function.name.clone(),
            arguments: call.function.arguments.clone(),
        }),
    }
}

fn tool_call_from_proto(call: &v1::ToolCall) -> ToolCallJson {
    let f = call.function.clone().unwrap_or_default();
    ToolCallJson {
        id: call.id.clone(),
        kind: if call.r#type.is_empty() {
            "function".to_owned()
        } else {
            call.r#type.clone()
        },
        function: FunctionCallJson {
            name: f.name,
            arguments: f.arguments,
        },
    }
}

fn logprobs_to_text(logprobs: &Option<Value>) -> String {
    match logprobs {
        None | Some(Value::Null) => String::new(),
        Some(v) => v.to_string(),
    }
}

fn logprobs_from_text(text: &str) -> Option<Value> {
    if text.is_empty() {
        Some(Value::Null)
    } else {
        serde_json::from_str(text).ok().or(Some(Value::Null))
    }
}

impl ChatCompletion {
    pub fn to_proto(&self) -> v1::ChatResponse {
        v1::ChatResponse {
            id: self.id.clone(),
            created: self.created,
            model: self.model.clone(),
            choices: self
                .choices
                .iter()
                .map(|c| v1::Choice {
                    index: c.index,
                    message: Some(v1::Message {
                        role: v1::Role::Assistant.into(),
                        content: c.message.content.clone().map(v1::message::Content::Text),
                        name: None,
                        tool_calls: c
                            .message
                            .tool_calls
                            .iter()
                            .map(tool_call_to_proto)
                            .collect(),
                        tool_call_id: None,
                        reasoning_content: c
                            .message
                            .reasoning_content
                            .clone()
                            .or_else(|| c.message.reasoning.clone()),
                        refusal: c.message.refusal.clone(),
                        reasoning_details: c
                            .message
                            .reasoning_details
                            .iter()
                            .map(ReasoningDetailJson::to_proto)
                            .collect(),
                    }),
                    finish_reason: c.finish_reason.clone().unwrap_or_default(),
                    logprobs_json: logprobs_to_text(&c.logprobs),
                    stop_sequence: None,
                })
                .collect(),
            usage: self.usage.as_ref().map(UsageJson::to_proto),
            system_fingerprint: self.system_fingerprint.clone(),
            service_tier: self.service_tier.clone(),
        }
    }

    pub fn from_proto(response: &v1::ChatResponse) -> Self {
        Self {
            id: response.id.clone(),
            object: completion_object(),
            created: response.created,
            model: response.model.clone(),
            choices: response
                .choices
                .iter()
                .map(|c| {
                    let m = c.message.clone().unwrap_or_default();
                    ChoiceJson {
                        index: c.index,
                        message: ResponseMessage {
                            role: assistant(),
                            content: match m.content {
                                Some(v1::message::Content::Text(t)) => Some(t),
                                Some(v1::message::Content::Parts(p)) => Some(
                                    p.parts
                                        .iter()
                                        .filter_map(|p| match &p.part {
                                            Some(v1::content_part::Part::Text(t)) => {
                                                Some(t.as_str())
                                            }
                                            _ => None,
                                        })
                                        .collect(),
                                ),
                                None => None,
                            },
                            reasoning_content: m.reasoning_content,
                            reasoning: None,
                            tool_calls: m.tool_calls.iter().map(tool_call_from_proto).collect(),
                            refusal: m.refusal,
                            reasoning_details: m
                                .reasoning_details
                                .iter()
                                .map(ReasoningDetailJson::from_proto)
                                .collect(),
                        },
                        logprobs: logprobs_from_text(&c.logprobs_json),
                        finish_reason: (!c.finish_reason.is_empty())
                            .then(|| c.finish_reason.clone()),
                    }
                })
                .collect(),
            usage: response.usage.as_ref().map(UsageJson::from_proto),
            system_fingerprint: response.system_fingerprint.clone(),
            service_tier: response.service_tier.clone(),
        }
    }
}

impl ChatCompletionChunk {
    pub fn to_proto(&self) -> v1::ChatChunk {
        v1::ChatChunk {
            id: self.id.clone(),
            created: self.created,
            model: self.model.clone(),
            choices: self
                .choices
                .iter()
                .map(|c| v1::ChunkChoice {
                    index: c.index,
                    delta: Some(v1::Delta {
                        role: c
                            .delta
                            .role
                            .as_deref()
                            .map_or(v1::Role::Unspecified, |r| RoleJson::of_delta(r).to_proto())
                            .into(),
                        content: c.delta.content.clone(),
                        reasoning_content: c
                            .delta
                            .reasoning_content
                            .clone()
                            .or_else(|| c.delta.reasoning.clone()),
                        tool_calls: c
                            .delta
                            .tool_calls
                            .iter()
                            .map(|t| v1::ToolCallDelta {
                                index: t.index,
                                id: t.id.clone(),
                                r#type: t.kind.clone(),
                                name: t.function.as_ref().and_then(|f| f.name.clone()),
                                arguments: t.function.as_ref().and_then(|f| f.arguments.clone()),
                            })
                            .collect(),
                        refusal: c.delta.refusal.clone(),
                        reasoning_details: c
                            .delta
                            .reasoning_details
                            .iter()
                            .map(ReasoningDetailJson::to_proto)
                            .collect(),
                    }),
                    finish_reason: c.finish_reason.clone(),
                    logprobs_json: logprobs_to_text(&c.logprobs),
                    stop_sequence: None,
                })
                .collect(),
            usage: self
                .usage
                .clone()
                .flatten()
                .as_ref()
                .map(UsageJson::to_proto),
            system_fingerprint: self.system_fingerprint.clone(),
        }
    }

    /// Renders a chunk. With `include_usage` every chunk carries `usage` (`null` but on the usage
    /// chunk), as OpenAI streams do.
    pub fn from_proto(chunk: &v1::ChatChunk, include_usage: bool) -> Self {
        let usage = chunk.usage.as_ref().map(UsageJson::from_proto);
        Self {
            id: chunk.id.clone(),
            object: chunk_object(),
            created: chunk.created,
            model: chunk.model.clone(),
            system_fingerprint: chunk.system_fingerprint.clone(),
            choices: chunk
                .choices
                .iter()
                .map(|c| {
                    let d = c.delta.clone().unwrap_or_default();
                    ChunkChoiceJson {
                        index: c.index,
                        delta: DeltaJson {
                            role: RoleJson::from_proto(d.role()).map(RoleJson::name),
                            content: d.content,
                            reasoning_content: d.reasoning_content,
                            reasoning: None,
                            tool_calls: d
                                .tool_calls
                                .into_iter()
                                .map(|t| ToolCallDeltaJson {
                                    index: t.index,
                                    id: t.id,
                                    kind: t.r#type,
                                    function: (t.name.is_some() || t.arguments.is_some())
                                        .then_some(FunctionDeltaJson {
                                            name: t.name,
                                            arguments: t.arguments,
                                        }),
                                })
                                .collect(),
                            refusal: d.refusal,
                            reasoning_details: d
                                .reasoning_details
                                .iter()
                                .map(ReasoningDetailJson::from_proto)
                                .collect(),
                        },
                        logprobs: logprobs_from_text(&c.logprobs_json),
                        finish_reason: c.finish_reason.clone(),
                    }
                })
                .collect(),
            usage: match (usage, include_usage) {
                (Some(u), _) => Some(Some(u)),
                (None, true) => Some(None),
                (None, false) => None,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    // Fixture OA-2 (openai-openapi, "Functions" example).
    const OA2: &str = r#"{"id":"chatcmpl-abc123","object":"chat.completion","created":1699896916,"model":"gpt-4o-mini","choices":[{"index":0,"message":{"role":"assistant","content":null,"tool_calls":[{"id":"call_abc123","type":"function","function":{"name":"get_current_weather","arguments":"{\n\"location\": \"Boston, MA\"\n}"}}]},"logprobs":null,"finish_reason":"tool_calls"}],"usage":{"prompt_tokens":82,"completion_tokens":17,"total_tokens":99,"completion_tokens_details":{"reasoning_tokens":0,"accepted_prediction_tokens":0,"rejected_prediction_tokens":0}}}"#;

    #[test]
    fn completion_round_trips_through_proto() {
        let parsed: ChatCompletion = serde_json::from_str(OA2).unwrap();
        let proto = parsed.to_proto();
        assert_eq!(proto.choices[0].finish_reason, "tool_calls");
        assert_eq!(proto.usage.unwrap().total_tokens, 99);
        let rendered = serde_json::to_value(ChatCompletion::from_proto(&proto)).unwrap();
        assert_eq!(rendered["choices"][0]["message"]["content"], Value::Null);
        assert_eq!(
            rendered["choices"][0]["message"]["tool_calls"][0]["function"]["arguments"],
            json!("{\n\"location\": \"Boston, MA\"\n}")
        );
        assert_eq!(rendered["object"], json!("chat.completion"));
        assert_eq!(
            rendered["usage"]["prompt_tokens_details"]["cached_tokens"],
            json!(0)
        );
    }

    #[test]
    fn chunks_parse_leniently_and_render_openai_shapes() {
        // Fixture OA-3, first chunk: role, null content and the opening tool-call fragment.
        let first: ChatCompletionChunk = serde_json::from_str(r#"{"id":"chatcmpl-ABfwERreu9s99xXsVuOWtIB2UOx62","object":"chat.completion.chunk","created":1727346182,"model":"gpt-4o-2024-08-06","system_fingerprint":"fp_143bb8492c","choices":[{"index":0,"delta":{"role":"assistant","content":null,"tool_calls":[{"index":0,"id":"call_4XzlGBLtUe9dy3GVNV4jhq7h","type":"function","function":{"name":"get_weather","arguments":""}}],"refusal":null},"logprobs":null,"finish_reason":null}]}"#).unwrap();
        let proto = first.to_proto();
        let call = &proto.choices[0].delta.as_ref().unwrap().tool_calls[0];
        assert_eq!(call.name.as_deref(), Some("get_weather"));
        assert_eq!(call.arguments.as_deref(), Some(""));
        let rendered = serde_json::to_value(ChatCompletionChunk::from_proto(&proto, true)).unwrap();
        assert_eq!(rendered["usage"], Value::Null);
        assert_eq!(rendered["choices"][0]["finish_reason"], Value::Null);
        assert_eq!(
            rendered["choices"][0]["delta"]["tool_calls"][0],
            json!({"index":0,"id":"call_4XzlGBLtUe9dy3GVNV4jhq7h","type":"function","function":{"name":"get_weather","arguments":""}})
        );
        let rendered =
            serde_json::to_value(ChatCompletionChunk::from_proto(&proto, false)).unwrap();
        assert!(rendered.get("usage").is_none());

        // A usage-only chunk with `choices: null` (vLLM) and usage riding on it.
        let last: ChatCompletionChunk = serde_json::from_str(
            r#"{"id":"x","choices":null,"usage":{"prompt_tokens":44,"completion_tokens":16,"total_tokens":60}}"#,
        )
        .unwrap();
        assert!(last.choices.is_empty());
        assert_eq!(last.to_proto().usage.unwrap().completion_tokens, 16);
    }
}
