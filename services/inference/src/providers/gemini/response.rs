//! Gemini answers back into `tollgate.v1`: a whole `GenerateContentResponse` into a
//! [`ChatResponse`], and stream events into [`ChatChunk`]s through [`StreamTranslator`], a pure
//! state machine over the events' JSON (providers.md 8.3), testable without HTTP.
//!
//! - `text` parts → content; `thought: true` parts → `reasoning_content`;
//! - each `functionCall` part → one complete tool call (a stream sends it as one tool-call delta
//!   with id, name and the whole arguments), its id `functionCall.id` or a synthesized
//!   `call_<32 hex>`, indexes sequential per candidate;
//! - `thoughtSignature` → a `google-gemini-v1` reasoning detail, emitted on the chunk that
//!   carries it;
//! - `finishReason` → OpenAI's (section 7.1; `STOP` after a function call is `tool_calls`);
//!   `MALFORMED_FUNCTION_CALL`, `UNEXPECTED_TOOL_CALL` and `TOO_MANY_TOOL_CALLS` are upstream
//!   failures (502): the model failed to produce a usable call, and `stop` with nothing in it
//!   would leave a tool loop stuck;
//! - a prompt blocked before any candidate (`promptFeedback.blockReason`, no candidates) is an
//!   empty answer with `finish_reason: content_filter`, as OpenAI reports filtered prompts;
//! - `usageMetadata` (cumulative in streams) → usage on every chunk that has it (section 7.2).

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::Value;
use tollgate::v1::{
    ChatChunk, ChatResponse, Choice, ChunkChoice, Delta, FunctionCall as ProtoFunctionCall,
    Message, ReasoningDetail, Role, ToolCall, ToolCallDelta, Usage, message::Content,
};

use super::FORMAT;
use crate::{UpstreamError, providers::http::error_text};

const SYNTHESIZED_PREFIX: &str = "call_";

/// A fresh tool-call id for a function call Gemini sent without one.
fn synthesize_id() -> String {
    format!("{SYNTHESIZED_PREFIX}{}", uuid::Uuid::new_v4().simple())
}

/// Whether a tool-call id was made up by this adapter (and so is not sent back to Gemini).
pub(super) fn is_synthesized_id(id: &str) -> bool {
    id.strip_prefix(SYNTHESIZED_PREFIX)
        .is_some_and(|rest| rest.len() == 32 && rest.bytes().all(|b| b.is_ascii_hexdigit()))
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
struct GenerateContentResponse {
    candidates: Vec<Candidate>,
    prompt_feedback: Option<PromptFeedback>,
    usage_metadata: Option<UsageMetadata>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
struct Candidate {
    content: Option<CandidateContent>,
    finish_reason: Option<String>,
    index: Option<u32>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct CandidateContent {
    parts: Vec<ResponsePart>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
struct ResponsePart {
    text: Option<String>,
    thought: bool,
    thought_signature: Option<String>,
    function_call: Option<GeminiFunctionCall>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct GeminiFunctionCall {
    id: Option<String>,
    name: String,
    args: Option<Value>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
struct PromptFeedback {
    block_reason: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
struct UsageMetadata {
    prompt_token_count: u64,
    candidates_token_count: u64,
    thoughts_token_count: u64,
    cached_content_token_count: u64,
    tool_use_prompt_token_count: u64,
}

impl UsageMetadata {
    /// Section 7.2: thoughts count as completion (and reasoning) tokens; cached content is part
    /// of the prompt; tool-use prompt tokens are prompt tokens.
    fn to_proto(&self) -> Usage {
        let prompt = self
            .prompt_token_count
            .saturating_add(self.tool_use_prompt_token_count);
        let completion = self
            .candidates_token_count
            .saturating_add(self.thoughts_token_count);
        Usage {
            prompt_tokens: prompt,
            completion_tokens: completion,
            total_tokens: prompt.saturating_add(completion),
            cached_prompt_tokens: self.cached_content_token_count.min(prompt),
            reasoning_tokens: self.thoughts_token_count,
            ..Default::default()
        }
    }
}

/// OpenAI's finish reason for a Gemini one (section 7.1), or why the answer is a failure.
fn finish_reason(reason: &str, called_functions: bool) -> Result<&'static str, String> {
    match reason {
        "STOP" | "FINISH_REASON_UNSPECIFIED" if called_functions => Ok("tool_calls"),
        "STOP" | "FINISH_REASON_UNSPECIFIED" => Ok("stop"),
        "MAX_TOKENS" => Ok("length"),
        "MALFORMED_FUNCTION_CALL" | "UNEXPECTED_TOOL_CALL" | "TOO_MANY_TOOL_CALLS" => Err(format!(
            "the model ended its answer with {reason}: it produced no usable function call"
        )),
        // SAFETY, RECITATION, LANGUAGE, BLOCKLIST, PROHIBITED_CONTENT, SPII, IMAGE_*, NO_IMAGE,
        // OTHER and anything newer: the answer was withheld or cut by Google's filters.
        _ => Ok("content_filter"),
    }
}

/// Why a stream event could not be turned into a chunk.
#[derive(Debug, PartialEq, Eq)]
pub(in crate::providers) enum StreamFailure {
    /// An in-band `{"error":{...}}` event, with its HTTP-like code when it had one.
    Upstream { code: Option<u16>, message: String },
    /// An unreadable event, or an answer that ended in failure.
    Failed(String),
}

impl StreamFailure {
    pub(in crate::providers) fn into_error(self, provider: &str) -> UpstreamError {
        match self {
            Self::Upstream {
                code: Some(code),
                message,
            } if code >= 400 => UpstreamError::from_status(provider, code, message),
            Self::Upstream { message, .. } | Self::Failed(message) => UpstreamError::Failed {
                provider: provider.to_owned(),
                message,
            },
        }
    }
}

fn signature_detail(signature: String, call_id: Option<String>, index: u32) -> ReasoningDetail {
    ReasoningDetail {
        r#type: "reasoning.encrypted".to_owned(),
        data: Some(signature),
        id: call_id,
        format: Some(FORMAT.to_owned()),
        index: Some(index),
        ..Default::default()
    }
}

/// What one candidate's parts say, in OpenAI's terms.
#[derive(Debug, Default)]
struct Translated {
    content: String,
    reasoning: String,
    tool_calls: Vec<ToolCall>,
    details: Vec<ReasoningDetail>,
}

/// Translates the parts of one candidate. `details_before` is how many reasoning details the
/// candidate produced before (streams), so their indexes continue.
fn translate_parts(parts: Vec<ResponsePart>, details_before: u32) -> Translated {
    let mut out = Translated::default();
    for part in parts {
        let mut call_id = None;
        if let Some(call) = part.function_call {
            let id = call
                .id
                .filter(|id| !id.is_empty())
                .unwrap_or_else(synthesize_id);
            let arguments = call
                .args
                .filter(|a| !a.is_null())
                .unwrap_or_else(|| Value::Object(serde_json::Map::new()))
                .to_string();
            call_id = Some(id.clone());
            out.tool_calls.push(ToolCall {
                id,
                r#type: "function".to_owned(),
                function: Some(ProtoFunctionCall {
                    name: call.name,
                    arguments,
                }),
            });
        } else if let Some(text) = part.text {
            if part.thought {
                out.reasoning.push_str(&text);
            } else {
                out.content.push_str(&text);
            }
        }
        if let Some(signature) = part.thought_signature.filter(|s| !s.is_empty()) {
            let index = details_before + out.details.len() as u32;
            out.details
                .push(signature_detail(signature, call_id, index));
        }
    }
    out
}

/// Takes the value by value so its strings move into the response instead of being copied.
fn parse(value: Value) -> Result<GenerateContentResponse, String> {
    serde_json::from_value(value).map_err(|e| format!("unreadable response: {e}"))
}

/// A whole `generateContent` answer.
pub(super) fn completion(value: Value) -> Result<ChatResponse, String> {
    if let Some(error) = value.get("error") {
        return Err(error_text(error));
    }
    let response = parse(value)?;
    let usage = response
        .usage_metadata
        .as_ref()
        .map(UsageMetadata::to_proto);
    let blocked = response
        .prompt_feedback
        .and_then(|f| f.block_reason)
        .is_some();
    let mut choices = Vec::with_capacity(response.candidates.len().max(1));
    for (position, candidate) in response.candidates.into_iter().enumerate() {
        let index = candidate.index.unwrap_or(position as u32);
        let parts = candidate.content.map(|c| c.parts).unwrap_or_default();
        let t = translate_parts(parts, 0);
        let finish = finish_reason(
            candidate.finish_reason.as_deref().unwrap_or("STOP"),
            !t.tool_calls.is_empty(),
        )?;
        choices.push(Choice {
            index,
            message: Some(assistant_message(t)),
            finish_reason: finish.to_owned(),
            logprobs_json: String::new(),
            stop_sequence: None,
        });
    }
    if choices.is_empty() {
        if !blocked {
            return Err("the answer has no candidates".to_owned());
        }
        choices.push(Choice {
            index: 0,
            message: Some(assistant_message(Translated::default())),
            finish_reason: "content_filter".to_owned(),
            logprobs_json: String::new(),
            stop_sequence: None,
        });
    }
    Ok(ChatResponse {
        choices,
        usage,
        ..Default::default()
    })
}

fn assistant_message(t: Translated) -> Message {
    // With tool calls and no text, content is null as OpenAI sends it; otherwise a string, even
    // empty (an answer cut before any text is still a valid message).
    let content =
        (!t.content.is_empty() || t.tool_calls.is_empty()).then_some(Content::Text(t.content));
    Message {
        role: Role::Assistant.into(),
        content,
        reasoning_content: (!t.reasoning.is_empty()).then_some(t.reasoning),
        tool_calls: t.tool_calls,
        reasoning_details: t.details,
        ..Default::default()
    }
}

/// Per-candidate progress of a stream.
#[derive(Debug, Default)]
struct CandidateState {
    started: bool,
    tool_calls: u32,
    details: u32,
}

/// Turns `streamGenerateContent?alt=sse` events into chunks, one chunk per event. Each event
/// holds only new parts; usage is cumulative (the service keeps the last).
#[derive(Debug, Default)]
pub(in crate::providers) struct StreamTranslator {
    candidates: BTreeMap<u32, CandidateState>,
}

impl StreamTranslator {
    /// One event's `data`. A chunk without choices may still carry usage.
    pub(in crate::providers) fn on_event(
        &mut self,
        data: &str,
    ) -> Result<ChatChunk, StreamFailure> {
        let value: Value = serde_json::from_str(data)
            .map_err(|e| StreamFailure::Failed(format!("unreadable stream event: {e}")))?;
        if let Some(error) = value.get("error") {
            return Err(StreamFailure::Upstream {
                code: error
                    .get("code")
                    .and_then(Value::as_u64)
                    .and_then(|c| u16::try_from(c).ok()),
                message: error_text(error),
            });
        }
        let response = parse(value).map_err(StreamFailure::Failed)?;
        let mut chunk = ChatChunk {
            usage: response
                .usage_metadata
                .as_ref()
                .map(UsageMetadata::to_proto),
            ..Default::default()
        };
        let blocked = response
            .prompt_feedback
            .and_then(|f| f.block_reason)
            .is_some();
        if response.candidates.is_empty() && blocked {
            chunk.choices.push(ChunkChoice {
                index: 0,
                delta: Some(Delta {
                    role: Role::Assistant.into(),
                    content: Some(String::new()),
                    ..Default::default()
                }),
                finish_reason: Some("content_filter".to_owned()),
                logprobs_json: String::new(),
                stop_sequence: None,
            });
            return Ok(chunk);
        }
        for (position, candidate) in response.candidates.into_iter().enumerate() {
            let index = candidate.index.unwrap_or(position as u32);
            let state = self.candidates.entry(index).or_default();
            let parts = candidate.content.map(|c| c.parts).unwrap_or_default();
            let t = translate_parts(parts, state.details);
            let mut delta = Delta::default();
            if !state.started {
                state.started = true;
                delta.role = Role::Assistant.into();
                delta.content = Some(String::new());
            }
            if !t.content.is_empty() {
                delta.content = Some(t.content);
            }
            if !t.reasoning.is_empty() {
                delta.reasoning_content = Some(t.reasoning);
            }
            for call in t.tool_calls {
                let function = call.function.unwrap_or_default();
                delta.tool_calls.push(ToolCallDelta {
                    index: state.tool_calls,
                    id: Some(call.id),
                    r#type: Some("function".to_owned()),
                    name: Some(function.name),
                    arguments: Some(function.arguments),
                });
                state.tool_calls += 1;
            }
            state.details += t.details.len() as u32;
            delta.reasoning_details = t.details;
            let finish = match candidate.finish_reason.as_deref() {
                Some(reason) => Some(
                    finish_reason(reason, state.tool_calls > 0).map_err(StreamFailure::Failed)?,
                ),
                None => None,
            };
            let empty = delta == Delta::default();
            if empty && finish.is_none() {
                continue;
            }
            chunk.choices.push(ChunkChoice {
                index,
                delta: Some(delta),
                finish_reason: finish.map(str::to_owned),
                logprobs_json: String::new(),
                stop_sequence: None,
            });
        }
        Ok(chunk)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// GE-2's first turn, as the SSE events' data.
    const GE2: [&str; 5] = [
        r#"{"candidates": [{"content": {"parts": [{"text": "Understanding the context","thought": true}],"role": "model"},"index": 0}],"usageMetadata": {"promptTokenCount": 60,"totalTokenCount": 65,"promptTokensDetails": [{"modality": "TEXT","tokenCount": 60}],"thoughtsTokenCount": 5},"modelVersion": "gemini-2.5-pro"}"#,
        r#"{"candidates": [{"content": {"parts": [{"text": "Of course! Someone in Paris might want to know the weather to decide whether to","thoughtSignature": "CiIB0e2Kb3a4gkvo"}],"role": "model"},"index": 0}],"usageMetadata": {"promptTokenCount": 60,"candidatesTokenCount": 15,"totalTokenCount": 80,"promptTokensDetails": [{"modality": "TEXT","tokenCount": 60}],"thoughtsTokenCount": 5},"modelVersion": "gemini-2.5-pro"}"#,
        r#"{"candidates": [{"content": {"parts": [{"text": " stroll along the Seine, visit an outdoor market, or perhaps opt for a cozy day in a museum."}],"role": "model"},"index": 0}],"usageMetadata": {"promptTokenCount": 60,"candidatesTokenCount": 35,"totalTokenCount": 100,"promptTokensDetails": [{"modality": "TEXT","tokenCount": 60}],"thoughtsTokenCount": 5},"modelVersion": "gemini-2.5-pro"}"#,
        r#"{"candidates": [{"content": {"parts": [{"text": " Let me check the weather for you."}],"role": "model"},"index": 0}],"usageMetadata": {"promptTokenCount": 60,"candidatesTokenCount": 41,"totalTokenCount": 106,"promptTokensDetails": [{"modality": "TEXT","tokenCount": 60}],"thoughtsTokenCount": 5},"modelVersion": "gemini-2.5-pro"}"#,
        r#"{"candidates": [{"content": {"parts": [{"functionCall": {"name": "get_weather","args": {"location": "Paris"}}}],"role": "model"},"finishReason": "STOP","index": 0}],"usageMetadata": {"promptTokenCount": 60,"candidatesTokenCount": 47,"totalTokenCount": 112,"promptTokensDetails": [{"modality": "TEXT","tokenCount": 60}],"thoughtsTokenCount": 5},"modelVersion": "gemini-2.5-pro"}"#,
    ];

    #[test]
    fn ge1_a_function_call_answer_is_a_tool_call() {
        let ge1 = json!({"candidates":[{"content":{"parts":[{"functionCall":{"name":"find_theaters","args":{"movie":"Barbie","location":"Mountain View, CA"}}}],"role":"model"},"finishReason":"STOP","index":0,"safetyRatings":[{"category":"HARM_CATEGORY_HATE_SPEECH","probability":"NEGLIGIBLE"}]}]});
        let r = completion(ge1.clone()).unwrap();
        let choice = &r.choices[0];
        assert_eq!(choice.finish_reason, "tool_calls");
        let message = choice.message.as_ref().unwrap();
        assert_eq!(message.content, None);
        let call = &message.tool_calls[0];
        assert!(is_synthesized_id(&call.id), "{}", call.id);
        let f = call.function.as_ref().unwrap();
        assert_eq!(f.name, "find_theaters");
        assert_eq!(
            serde_json::from_str::<Value>(&f.arguments).unwrap(),
            json!({"movie":"Barbie","location":"Mountain View, CA"})
        );
        assert_eq!(r.usage, None);
    }

    #[test]
    fn ge2_stream_translates_thoughts_text_signature_and_call() {
        let mut t = StreamTranslator::default();
        let chunks: Vec<ChatChunk> = GE2.iter().map(|e| t.on_event(e).unwrap()).collect();
        let delta = |i: usize| chunks[i].choices[0].delta.clone().unwrap();
        assert_eq!(delta(0).role(), Role::Assistant);
        assert_eq!(
            delta(0).reasoning_content.as_deref(),
            Some("Understanding the context")
        );
        assert_eq!(
            delta(1).content.as_deref(),
            Some("Of course! Someone in Paris might want to know the weather to decide whether to")
        );
        assert_eq!(delta(1).role(), Role::Unspecified);
        assert_eq!(
            delta(1).reasoning_details,
            vec![signature_detail("CiIB0e2Kb3a4gkvo".into(), None, 0)]
        );
        let last = &chunks[4].choices[0];
        assert_eq!(last.finish_reason.as_deref(), Some("tool_calls"));
        let call = &last.delta.as_ref().unwrap().tool_calls[0];
        assert_eq!(call.index, 0);
        assert!(is_synthesized_id(call.id.as_deref().unwrap()));
        assert_eq!(call.name.as_deref(), Some("get_weather"));
        assert_eq!(call.arguments.as_deref(), Some(r#"{"location":"Paris"}"#));
        // Usage is cumulative: the last one counts; thoughts are completion and reasoning tokens.
        let usage = chunks[4].usage.unwrap();
        assert_eq!(
            (
                usage.prompt_tokens,
                usage.completion_tokens,
                usage.reasoning_tokens,
                usage.total_tokens
            ),
            (60, 52, 5, 112)
        );
        assert!(
            chunks
                .iter()
                .take(4)
                .all(|c| c.choices[0].finish_reason.is_none())
        );
    }

    #[test]
    fn ge2_second_turn_ends_with_stop() {
        let mut t = StreamTranslator::default();
        let a = t.on_event(r#"{"candidates": [{"content": {"parts": [{"text": "The weather in Paris"}],"role": "model"},"index": 0}],"usageMetadata": {"promptTokenCount": 145,"candidatesTokenCount": 4,"totalTokenCount": 149}}"#).unwrap();
        let b = t.on_event(r#"{"candidates": [{"content": {"parts": [{"text": " is 72°F and sunny."}],"role": "model"},"finishReason": "STOP","index": 0}],"usageMetadata": {"promptTokenCount": 145,"candidatesTokenCount": 13,"totalTokenCount": 158}}"#).unwrap();
        assert_eq!(
            a.choices[0].delta.as_ref().unwrap().content.as_deref(),
            Some("The weather in Paris")
        );
        assert_eq!(b.choices[0].finish_reason.as_deref(), Some("stop"));
        assert_eq!(b.usage.unwrap().completion_tokens, 13);
    }

    #[test]
    fn ge3_in_band_errors_fail_the_stream() {
        let mut t = StreamTranslator::default();
        let e = t
            .on_event(r#"{"error":{"code":400,"message":"Please ensure that function call turn comes immediately after a user turn or after a function response turn.","status":"INVALID_ARGUMENT"}}"#)
            .unwrap_err();
        assert!(
            matches!(&e, StreamFailure::Upstream { code: Some(400), message } if message.contains("function call turn"))
        );
        let e = t
            .on_event(r#"{"error":{"code":503,"message":"The model is overloaded.","status":"UNAVAILABLE"}}"#)
            .unwrap_err()
            .into_error("gemini");
        assert!(matches!(e, UpstreamError::Overloaded { status: 503, .. }));
        assert!(
            matches!(t.on_event("{not json"), Err(StreamFailure::Failed(m)) if m.starts_with("unreadable stream event"))
        );
    }

    #[test]
    fn signatures_on_function_calls_name_their_call_and_ids_are_kept() {
        let answer = json!({"candidates":[{"content":{"role":"model","parts":[
            {"text":"planning","thought":true},
            {"functionCall":{"id":"fc-1","name":"a","args":{}},"thoughtSignature":"S1"},
            {"functionCall":{"name":"b","args":{"x":1}}}
        ]},"finishReason":"STOP"}],
        "usageMetadata":{"promptTokenCount":10,"candidatesTokenCount":4,"thoughtsTokenCount":3,"cachedContentTokenCount":6,"totalTokenCount":17}});
        let r = completion(answer.clone()).unwrap();
        let m = r.choices[0].message.as_ref().unwrap();
        assert_eq!(m.reasoning_content.as_deref(), Some("planning"));
        assert_eq!(m.tool_calls[0].id, "fc-1");
        assert!(!is_synthesized_id("fc-1"));
        assert_ne!(m.tool_calls[0].id, m.tool_calls[1].id);
        assert_eq!(
            m.reasoning_details,
            vec![signature_detail("S1".into(), Some("fc-1".into()), 0)]
        );
        let u = r.usage.unwrap();
        assert_eq!(
            (
                u.prompt_tokens,
                u.cached_prompt_tokens,
                u.completion_tokens,
                u.reasoning_tokens,
                u.total_tokens
            ),
            (10, 6, 7, 3, 17)
        );
    }

    #[test]
    fn parallel_calls_in_a_stream_get_sequential_indexes() {
        let mut t = StreamTranslator::default();
        let a = t.on_event(r#"{"candidates":[{"content":{"parts":[{"functionCall":{"name":"a","args":{}}}]}}]}"#).unwrap();
        let b = t.on_event(r#"{"candidates":[{"content":{"parts":[{"functionCall":{"name":"b","args":{}}},{"functionCall":{"name":"c","args":{}}}]},"finishReason":"STOP"}]}"#).unwrap();
        let indexes: Vec<u32> = [a, b]
            .iter()
            .flat_map(|c| c.choices[0].delta.as_ref().unwrap().tool_calls.clone())
            .map(|d| d.index)
            .collect();
        assert_eq!(indexes, [0, 1, 2]);
    }

    #[test]
    fn finish_reasons_follow_the_table() {
        for (gemini, calls, openai) in [
            ("STOP", false, "stop"),
            ("STOP", true, "tool_calls"),
            ("MAX_TOKENS", false, "length"),
            ("SAFETY", false, "content_filter"),
            ("RECITATION", false, "content_filter"),
            ("PROHIBITED_CONTENT", false, "content_filter"),
            ("IMAGE_SAFETY", false, "content_filter"),
            ("OTHER", false, "content_filter"),
        ] {
            assert_eq!(finish_reason(gemini, calls), Ok(openai), "{gemini}");
        }
        assert_eq!(finish_reason("MALFORMED_FUNCTION_CALL", false), Err("the model ended its answer with MALFORMED_FUNCTION_CALL: it produced no usable function call".to_owned()));
        let mut t = StreamTranslator::default();
        assert!(matches!(
            t.on_event(r#"{"candidates":[{"content":{"parts":[]},"finishReason":"MALFORMED_FUNCTION_CALL"}]}"#),
            Err(StreamFailure::Failed(_))
        ));
    }

    #[test]
    fn a_blocked_prompt_is_content_filtered() {
        let blocked = json!({"promptFeedback":{"blockReason":"SAFETY"},"usageMetadata":{"promptTokenCount":8,"totalTokenCount":8}});
        let r = completion(blocked.clone()).unwrap();
        assert_eq!(r.choices[0].finish_reason, "content_filter");
        assert_eq!(
            r.choices[0].message.as_ref().unwrap().content,
            Some(Content::Text(String::new()))
        );
        let mut t = StreamTranslator::default();
        let chunk = t.on_event(&blocked.to_string()).unwrap();
        assert_eq!(
            chunk.choices[0].finish_reason.as_deref(),
            Some("content_filter")
        );
        assert_eq!(
            completion(json!({"candidates": []})).unwrap_err(),
            "the answer has no candidates"
        );
    }

    #[test]
    fn candidates_stream_as_separate_choices() {
        let mut t = StreamTranslator::default();
        let c = t.on_event(r#"{"candidates":[{"content":{"parts":[{"text":"a"}]},"index":0},{"content":{"parts":[{"text":"b"}]},"index":1,"finishReason":"STOP"}]}"#).unwrap();
        assert_eq!(c.choices.len(), 2);
        assert_eq!(c.choices[1].index, 1);
        assert_eq!(c.choices[1].delta.as_ref().unwrap().role(), Role::Assistant);
        assert_eq!(c.choices[1].finish_reason.as_deref(), Some("stop"));
        // An event with nothing new for a candidate adds no choice, but keeps its usage.
        let empty = t.on_event(r#"{"candidates":[{"content":{"parts":[]},"index":0}],"usageMetadata":{"promptTokenCount":3}}"#).unwrap();
        assert!(empty.choices.is_empty());
        assert_eq!(empty.usage.unwrap().prompt_tokens, 3);
    }
}
