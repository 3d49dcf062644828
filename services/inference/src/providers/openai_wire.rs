//! The OpenAI Chat Completions protocol as a transport, shared by every provider that speaks it
//! (OpenAI, DeepSeek, MiniMax's OpenAI endpoint, vLLM, Ollama, ...): one pooled HTTP client per
//! provider, the request as JSON, the response or the SSE stream parsed back into `tollgate.v1`
//! messages, upstream errors mapped. What differs between those providers lives in their files.
//!
//! Parsing is defensive (providers.md section 6), for every member of the family: reasoning is
//! read from `reasoning_content`, `reasoning`, `reasoning_details[].text` or (where the dialect
//! says so) inline `<think>` tags; tool-call fragments that repeat their id and name are passed
//! on once; `finish_reason: "stop"` after tool calls becomes `tool_calls`; a finish reason the
//! dialect calls a failure (DeepSeek's `insufficient_system_resource`) is an error, not a silent
//! stop; usage is taken from whichever chunk carries it (a `choices: null` chunk, the finish
//! chunk, unrequested); a stream that ends without `[DONE]` after its finish chunk is complete.
//! `developer` messages become `system` for every dialect but OpenAI's own, and the completion
//! limit goes out as `max_tokens` for every dialect but OpenAI's own.

use std::{collections::HashMap, fmt, marker::PhantomData};

use futures::StreamExt;
use serde_json::Value;
use tollgate::{
    openai::{
        ChatCompletion, ChatCompletionChunk, ChatCompletionRequest, ReasoningEffortJson, RoleJson,
        UsageJson,
    },
    v1::{self, ChatRequest, ChatResponse, Usage},
};

use super::{
    ChatProvider, ChunkStream, Target,
    http::{Endpoint, KeyPlacement, Upstream, error_text},
    think_tags::ThinkTagSplitter,
};
use crate::{UpstreamError, config::ProviderConfig};

/// The request in OpenAI's JSON shape, addressed to the upstream model, with the reasoning
/// details of other providers dropped and those of this dialect's format (if any) in the
/// provider's own wire form (without our `format` tag), `developer` turned into `system` unless
/// the dialect takes it; each provider adjusts it from there.
pub(super) fn request_body<D: Dialect>(
    request: &ChatRequest,
    target: &Target<'_>,
) -> Result<ChatCompletionRequest, UpstreamError> {
    let mut body = ChatCompletionRequest::from_proto(request)
        .map_err(|e| UpstreamError::unsupported(e.param.unwrap_or_default(), e.message))?;
    body.model = target.route.upstream_model.clone();
    // The limit the reservation was computed from (`max_completion_tokens`, else `max_tokens`),
    // in the field this provider honours.
    if !D::MAX_COMPLETION_TOKENS
        && let Some(limit) = body.max_completion_tokens.take()
    {
        body.max_tokens = Some(limit);
    }
    // The effort of the decision, not the request's: an alias may have overridden it.
    body.reasoning_effort = target
        .thinking
        .effort()
        .and_then(ReasoningEffortJson::from_proto);
    for message in &mut body.messages {
        if !D::DEVELOPER_ROLE && message.role == RoleJson::Developer {
            message.role = RoleJson::System;
        }
        let kept: Vec<_> = message
            .reasoning_details
            .take()
            .unwrap_or_default()
            .into_iter()
            .filter(|d| D::REASONING_FORMAT.is_some() && d.format.as_deref() == D::REASONING_FORMAT)
            .map(|mut d| {
                d.format = None;
                d
            })
            .collect();
        message.reasoning_details = (!kept.is_empty()).then_some(kept);
    }
    Ok(body)
}

/// What sets one OpenAI-protocol provider apart from another: how the request body is adjusted,
/// how usage is read, how reasoning arrives and how in-band failures look. Each provider file
/// implements this for a unit type.
pub trait Dialect: fmt::Debug + Send + Sync + 'static {
    /// The `reasoning_details` format (`minimax-v1`) in which this provider's reasoning is handed
    /// to clients and accepted back on assistant messages; `None` when the provider needs
    /// nothing back (or takes it as `reasoning_content`, like DeepSeek).
    const REASONING_FORMAT: Option<&'static str> = None;

    /// Whether reasoning may arrive inline in the content as a leading `<think>…</think>`.
    const INLINE_THINK_TAGS: bool = false;

    /// Whether the provider takes the `developer` role; if not, it is sent as `system`.
    const DEVELOPER_ROLE: bool = false;

    /// Whether the provider honours `max_completion_tokens`. If not (DeepSeek, MiniMax and
    /// compatible servers take `max_tokens`, and may ignore the other), the completion limit is
    /// sent as `max_tokens`, so the upstream stops where the reservation does.
    const MAX_COMPLETION_TOKENS: bool = false;

    /// Refuses, before admission, what the provider refuses for the routed model.
    fn check(_request: &ChatRequest, _target: &Target<'_>) -> Result<(), UpstreamError> {
        Ok(())
    }

    /// Adjusts the OpenAI-shaped body (already addressed to the upstream model); refuses what
    /// the provider cannot honour.
    fn prepare(body: &mut ChatCompletionRequest, target: &Target<'_>) -> Result<(), UpstreamError>;

    fn read_usage(usage: &UsageJson) -> Usage {
        usage.to_proto()
    }

    /// A failure the provider reports inside an HTTP 200 body or stream event in a shape other
    /// than OpenAI's `{"error": …}` (MiniMax's `base_resp`).
    fn in_band_error(_provider: &str, _body: &Value) -> Option<UpstreamError> {
        None
    }

    /// The member (quoted, as it appears in the JSON text) that [`Self::in_band_error`] reads,
    /// when the dialect has one: a stream event that holds it is read whole before the chunk.
    const IN_BAND_MEMBER: Option<&'static str> = None;

    /// A finish reason that means the generation failed (DeepSeek's lack of capacity).
    fn failed_finish(_provider: &str, _reason: &str) -> Option<UpstreamError> {
        None
    }
}

/// A provider that speaks OpenAI's protocol in dialect `D`.
#[derive(Debug)]
pub struct OpenAiFamily<D> {
    wire: OpenAiWire,
    dialect: PhantomData<D>,
}

impl<D: Dialect> OpenAiFamily<D> {
    pub fn new(wire: OpenAiWire) -> Self {
        Self {
            wire,
            dialect: PhantomData,
        }
    }

    fn body(&self, request: &ChatRequest, target: &Target<'_>) -> Result<Value, UpstreamError> {
        let mut body = request_body::<D>(request, target)?;
        D::prepare(&mut body, target)?;
        Ok(body.to_json())
    }
}

impl<D: Dialect> ChatProvider for OpenAiFamily<D> {
    fn upstream(&self) -> &Upstream {
        &self.wire.upstream
    }

    fn check(&self, request: &ChatRequest, target: &Target<'_>) -> Result<(), UpstreamError> {
        D::check(request, target)
    }

    async fn chat(
        &self,
        request: &ChatRequest,
        target: &Target<'_>,
    ) -> Result<ChatResponse, UpstreamError> {
        self.wire.chat::<D>(self.body(request, target)?).await
    }

    async fn chat_stream(
        &self,
        request: &ChatRequest,
        target: &Target<'_>,
    ) -> Result<ChunkStream, UpstreamError> {
        self.wire
            .chat_stream::<D>(self.body(request, target)?)
            .await
    }
}

/// The OpenAI protocol over one [`Upstream`]: `POST {base_url}/chat/completions`, Bearer auth.
#[derive(Debug)]
pub struct OpenAiWire {
    upstream: Upstream,
    url: Endpoint,
}

impl OpenAiWire {
    pub fn new(
        config: &ProviderConfig,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Self, reqwest::Error> {
        let upstream = Upstream::new(config, env)?;
        let url = Endpoint::fixed(format!("{}/chat/completions", upstream.base_url()));
        Ok(Self { upstream, url })
    }

    async fn send(&self, body: &Value) -> Result<reqwest::Response, UpstreamError> {
        self.upstream
            .post_json(&self.url, KeyPlacement::Bearer, &[], body)
            .await
    }

    /// A non-streaming call.
    pub async fn chat<D: Dialect>(&self, body: Value) -> Result<ChatResponse, UpstreamError> {
        let response = self.send(&body).await?;
        let value = self.upstream.read_json(response).await?;
        parse_completion::<D>(self.upstream.name(), value)
    }

    /// A streaming call: `stream: true` is set on `body`, along with
    /// `stream_options.include_usage` so the upstream reports the usage the gateway bills.
    pub async fn chat_stream<D: Dialect>(
        &self,
        mut body: Value,
    ) -> Result<ChunkStream, UpstreamError> {
        body["stream"] = Value::Bool(true);
        body["stream_options"] = serde_json::json!({"include_usage": true});
        let response = self.send(&body).await?;
        let name = self.upstream.name().to_owned();
        let mut normaliser = StreamNormaliser::<D>::default();
        let stream = self
            .upstream
            .events(response)
            .take_while(|event| {
                let done = matches!(event, Ok(data) if data.trim() == "[DONE]");
                futures::future::ready(!done)
            })
            // The service ends the client's stream at the first failure; nothing after it is read.
            .map(move |event| event.and_then(|data| normaliser.chunk(&name, &data)));
        Ok(Box::pin(stream))
    }
}

fn failed(provider: &str, message: impl Into<String>) -> UpstreamError {
    UpstreamError::Failed {
        provider: provider.to_owned(),
        message: message.into(),
    }
}

/// OpenAI's `{"error": …}` or the dialect's own in-band failure.
fn in_band_error<D: Dialect>(provider: &str, value: &Value) -> Option<UpstreamError> {
    match value.get("error") {
        Some(error) if !error.is_null() => Some(failed(provider, error_text(error))),
        _ => D::in_band_error(provider, value),
    }
}

/// Whether a stream event's text may hold an in-band failure: an `"error"` member, the
/// dialect's own ([`Dialect::IN_BAND_MEMBER`]), or an escape (`\u0065rror` spells `error` too).
/// Only such events are read as a [`Value`] first; every other event, nearly all of them, is read
/// straight into its chunk (one pass, no tree of values).
fn may_fail_in_band<D: Dialect>(data: &str) -> bool {
    data.contains("\"error\"")
        || data.contains("\\u")
        || D::IN_BAND_MEMBER.is_some_and(|member| data.contains(member))
}

/// A whole `chat.completion` body, normalised.
pub(super) fn parse_completion<D: Dialect>(
    provider: &str,
    value: Value,
) -> Result<ChatResponse, UpstreamError> {
    if let Some(error) = in_band_error::<D>(provider, &value) {
        return Err(error);
    }
    let completion: ChatCompletion = serde_json::from_value(value)
        .map_err(|e| failed(provider, format!("unreadable response: {e}")))?;
    let mut proto = completion.to_proto();
    proto.usage = completion.usage.as_ref().map(D::read_usage);
    for choice in &mut proto.choices {
        let message = choice.message.get_or_insert_default();
        let mut reasoning = message.reasoning_content.take().unwrap_or_default();
        if reasoning.is_empty() {
            reasoning = detail_text(&message.reasoning_details);
        }
        if D::INLINE_THINK_TAGS
            && let Some(v1::message::Content::Text(text)) = &mut message.content
        {
            let split = ThinkTagSplitter::split_whole(text);
            reasoning.push_str(&split.reasoning);
            *text = split.content;
        }
        message.reasoning_details = match D::REASONING_FORMAT {
            Some(format) if !reasoning.is_empty() => vec![reasoning_detail(&reasoning, format)],
            _ => vec![],
        };
        message.reasoning_content = (!reasoning.is_empty()).then_some(reasoning);
        choice.finish_reason = finish_reason::<D>(
            provider,
            &choice.finish_reason,
            !message.tool_calls.is_empty(),
        )?;
    }
    Ok(proto)
}

/// The text of reasoning details as providers send them (`[{"type":"reasoning.text","text"}]`).
fn detail_text(details: &[v1::ReasoningDetail]) -> String {
    details.iter().filter_map(|d| d.text.as_deref()).collect()
}

/// The whole reasoning of an answer as one detail of `format`, for the round trip.
fn reasoning_detail(text: &str, format: &str) -> v1::ReasoningDetail {
    v1::ReasoningDetail {
        r#type: "reasoning.text".to_owned(),
        text: Some(text.to_owned()),
        format: Some(format.to_owned()),
        ..Default::default()
    }
}

/// OpenAI's finish reason for the upstream's: `stop` after tool calls is `tool_calls` (some
/// compatible servers); a reason the dialect calls a failure fails the request.
fn finish_reason<D: Dialect>(
    provider: &str,
    reason: &str,
    called_tools: bool,
) -> Result<String, UpstreamError> {
    if let Some(error) = D::failed_finish(provider, reason) {
        return Err(error);
    }
    Ok(match reason {
        "stop" if called_tools => "tool_calls".to_owned(),
        other => other.to_owned(),
    })
}

/// Per-stream state: one entry per choice index.
#[derive(Debug)]
pub(super) struct StreamNormaliser<D> {
    /// Per choice index: nearly always one, held as long as the stream. Boxed: the map makes
    /// room for four entries at its first, so unboxed it held four whole states (about 600
    /// bytes); a map, not a list, since an upstream may send any number of indexes.
    choices: HashMap<u32, Box<ChoiceState>>,
    dialect: PhantomData<D>,
}

impl<D> Default for StreamNormaliser<D> {
    fn default() -> Self {
        Self {
            choices: HashMap::new(),
            dialect: PhantomData,
        }
    }
}

#[derive(Debug, Default)]
struct ChoiceState {
    think: ThinkTagSplitter,
    /// All reasoning so far, handed out whole as a reasoning detail on the finish chunk.
    reasoning: String,
    /// Per upstream tool-call index: the id of the call seen there and the index it has for the
    /// client.
    calls: HashMap<u32, (Option<String>, u32)>,
    next_index: u32,
    /// Client indexes whose function name was already passed on.
    names_sent: Vec<u32>,
    called_tools: bool,
}

impl<D: Dialect> StreamNormaliser<D> {
    /// Parses and normalises one SSE data payload.
    pub(super) fn chunk(
        &mut self,
        provider: &str,
        data: &str,
    ) -> Result<v1::ChatChunk, UpstreamError> {
        let unreadable =
            |e: serde_json::Error| failed(provider, format!("unreadable stream event: {e}"));
        let chunk: ChatCompletionChunk = if may_fail_in_band::<D>(data) {
            let value: Value = serde_json::from_str(data).map_err(unreadable)?;
            if let Some(error) = in_band_error::<D>(provider, &value) {
                return Err(error);
            }
            serde_json::from_value(value).map_err(unreadable)?
        } else {
            serde_json::from_str(data).map_err(unreadable)?
        };
        let mut proto = chunk.to_proto();
        proto.usage = chunk.usage.flatten().as_ref().map(D::read_usage);
        for choice in &mut proto.choices {
            let state = &mut **self.choices.entry(choice.index).or_default();
            let delta = choice.delta.get_or_insert_default();
            normalise_delta::<D>(state, delta, choice.finish_reason.is_some());
            if let Some(reason) = &choice.finish_reason {
                choice.finish_reason =
                    Some(finish_reason::<D>(provider, reason, state.called_tools)?);
            }
        }
        Ok(proto)
    }
}

fn normalise_delta<D: Dialect>(state: &mut ChoiceState, delta: &mut v1::Delta, finishing: bool) {
    // Reasoning under another name: details (MiniMax, OpenRouter) carry incremental text.
    let from_details = detail_text(&delta.reasoning_details);
    delta.reasoning_details.clear();
    let mut reasoning = delta.reasoning_content.take().unwrap_or_default();
    if reasoning.is_empty() {
        reasoning = from_details;
    }
    if D::INLINE_THINK_TAGS {
        if let Some(content) = &mut delta.content {
            let split = state.think.feed(content);
            reasoning.push_str(&split.reasoning);
            *content = split.content;
        }
        if finishing {
            let split = state.think.flush();
            reasoning.push_str(&split.reasoning);
            if !split.content.is_empty() {
                delta
                    .content
                    .get_or_insert_default()
                    .push_str(&split.content);
            }
        }
    }
    // Kept whole only where it goes back as a detail (MiniMax); others need no second copy.
    if D::REASONING_FORMAT.is_some() {
        state.reasoning.push_str(&reasoning);
    }
    delta.reasoning_content = (!reasoning.is_empty()).then_some(reasoning);
    if finishing
        && let Some(format) = D::REASONING_FORMAT
        && !state.reasoning.is_empty()
    {
        delta
            .reasoning_details
            .push(reasoning_detail(&state.reasoning, format));
    }

    // Tool calls: the id, type and name go out once per call, however often they are repeated;
    // a fragment with a new id at an index already used (servers that omit `index`, which
    // reads as 0) is a new call and gets the next index.
    for call in &mut delta.tool_calls {
        state.called_tools = true;
        let id = call.id.take().filter(|id| !id.is_empty());
        let ours = match state.calls.get_mut(&call.index) {
            Some((known, ours)) if !(known.is_some() && id.is_some() && *known != id) => {
                if known.is_none() && id.is_some() {
                    known.clone_from(&id);
                    call.id = id;
                }
                *ours
            }
            _ => {
                let ours = state.next_index;
                state.next_index += 1;
                state.calls.insert(call.index, (id.clone(), ours));
                call.id = id;
                ours
            }
        };
        call.index = ours;
        if call.id.is_none() {
            call.r#type = None;
        }
        if state.names_sent.contains(&ours) {
            call.name = None;
        } else if call.name.as_deref().is_some_and(|n| !n.is_empty()) {
            state.names_sent.push(ours);
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;
    use tollgate::error::ErrorKind;

    use super::*;
    use crate::providers::{
        deepseek::DeepSeek, openai::OpenAi, openai_compatible::OpenAiCompatible,
    };

    /// What a client reassembles from a stream, the way the OpenAI SDK does (strings appended).
    #[derive(Debug, Default)]
    struct Assembled {
        content: String,
        reasoning: String,
        /// Per tool-call index: (id, name, arguments), every fragment appended.
        calls: std::collections::BTreeMap<u32, (String, String, String)>,
        finish: Option<String>,
        usage: Option<Usage>,
        chunks: usize,
    }

    fn replay<D: Dialect>(events: &[&str]) -> Result<Assembled, UpstreamError> {
        let mut normaliser = StreamNormaliser::<D>::default();
        let mut out = Assembled::default();
        for event in events {
            let chunk = normaliser.chunk("p", event)?;
            out.chunks += 1;
            out.usage = chunk.usage.or(out.usage);
            for choice in chunk.choices {
                let delta = choice.delta.unwrap_or_default();
                out.content.push_str(delta.content.as_deref().unwrap_or(""));
                out.reasoning
                    .push_str(delta.reasoning_content.as_deref().unwrap_or(""));
                for call in delta.tool_calls {
                    let entry = out.calls.entry(call.index).or_default();
                    entry.0.push_str(call.id.as_deref().unwrap_or(""));
                    entry.1.push_str(call.name.as_deref().unwrap_or(""));
                    entry.2.push_str(call.arguments.as_deref().unwrap_or(""));
                }
                out.finish = choice.finish_reason.or(out.finish);
            }
        }
        Ok(out)
    }

    fn delta(delta: Value) -> String {
        json!({"id":"c","object":"chat.completion.chunk","created":1,"model":"m",
            "choices":[{"index":0,"delta":delta,"finish_reason":null}]})
        .to_string()
    }

    fn finish(reason: &str) -> String {
        json!({"id":"c","choices":[{"index":0,"delta":{},"finish_reason":reason}]}).to_string()
    }

    #[test]
    fn in_band_stream_errors_fail_the_stream() {
        let e = replay::<OpenAiCompatible>(&[
            &delta(json!({"role":"assistant","content":"Hel"})),
            r#"{"error":{"message":"overloaded","type":"server_error"}}"#,
        ])
        .unwrap_err();
        assert!(e.to_string().contains("overloaded"));
    }

    #[test]
    fn an_error_member_spelled_with_an_escape_still_fails_the_stream() {
        let e = replay::<OpenAiCompatible>(&[
            &delta(json!({"role":"assistant","content":"Hel"})),
            r#"{"\u0065rror":{"message":"escaped overload","type":"server_error"}}"#,
        ])
        .unwrap_err();
        assert!(e.to_string().contains("escaped overload"), "{e}");
        assert!(!may_fail_in_band::<OpenAiCompatible>(&delta(
            json!({"content":"Hel"})
        )));
    }

    #[test]
    fn an_event_reads_the_same_straight_or_through_a_value() {
        // Plain text takes the direct path; the escaped one goes through a Value first.
        let plain = r#"{"id":"c","choices":[{"index":0,"delta":{"content":"café"},"finish_reason":null}],"usage":null}"#;
        let escaped = r#"{"id":"c","choices":[{"index":0,"delta":{"content":"caf\u00e9"},"finish_reason":null}],"usage":null}"#;
        assert!(!may_fail_in_band::<OpenAiCompatible>(plain));
        assert!(may_fail_in_band::<OpenAiCompatible>(escaped));
        let read = |event: &str| {
            StreamNormaliser::<OpenAiCompatible>::default()
                .chunk("p", event)
                .unwrap()
        };
        assert_eq!(read(plain), read(escaped));
        assert_eq!(
            read(plain).choices[0]
                .delta
                .as_ref()
                .unwrap()
                .content
                .as_deref(),
            Some("café")
        );
    }

    #[test]
    fn reasoning_is_read_under_every_name() {
        for reasoning_delta in [
            json!({"reasoning_content":"think"}),
            json!({"reasoning":"think"}),
            json!({"reasoning_details":[{"type":"reasoning.text","text":"think"}]}),
            json!({"content":"<think>think</think>"}),
        ] {
            let out = replay::<OpenAiCompatible>(&[
                &delta(json!({"role":"assistant","content":""})),
                &delta(reasoning_delta.clone()),
                &delta(json!({"content":"answer"})),
                &finish("stop"),
            ])
            .unwrap();
            assert_eq!(
                (out.reasoning.as_str(), out.content.as_str()),
                ("think", "answer"),
                "{reasoning_delta}"
            );
        }
    }

    #[test]
    fn only_dialects_that_allow_it_read_think_tags() {
        let events = [
            delta(json!({"role":"assistant","content":"<think>x</think>y"})),
            finish("stop"),
        ];
        let refs: Vec<&str> = events.iter().map(String::as_str).collect();
        assert_eq!(
            replay::<OpenAi>(&refs).unwrap().content,
            "<think>x</think>y"
        );
        assert_eq!(replay::<OpenAiCompatible>(&refs).unwrap().content, "y");
    }

    #[test]
    fn usage_only_chunk_with_null_or_missing_choices() {
        for last in [
            r#"{"id":"c","choices":null,"usage":{"prompt_tokens":3,"completion_tokens":2,"total_tokens":5}}"#,
            r#"{"id":"c","usage":{"prompt_tokens":3,"completion_tokens":2}}"#,
        ] {
            let out = replay::<OpenAiCompatible>(&[
                &delta(json!({"role":"assistant","content":"hi"})),
                &finish("stop"),
                last,
            ])
            .unwrap();
            let usage = out.usage.unwrap();
            assert_eq!((usage.prompt_tokens, usage.total_tokens), (3, 5), "{last}");
        }
    }

    #[test]
    fn usage_on_the_finish_chunk() {
        // Fixture DS-3's last chunk: usage rides on the finish chunk, unrequested.
        let out = replay::<DeepSeek>(&[
            r#"{"id":"1986f9e8-0b5d-4331-88da-d2d2d8dd7a70","object":"chat.completion.chunk","created":1759075956,"model":"deepseek-chat","system_fingerprint":"fp_8333852bec_prod0820_fp8_kvcache","choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"id":"call_00_Sq0n5HVeFHkS1mBrIGbwBQcK","type":"function","function":{"name":"get_weather","arguments":""}}]},"logprobs":null,"finish_reason":null}]}"#,
            r#"{"id":"1986f9e8-0b5d-4331-88da-d2d2d8dd7a70","object":"chat.completion.chunk","created":1759075956,"model":"deepseek-chat","system_fingerprint":"fp_8333852bec_prod0820_fp8_kvcache","choices":[{"index":0,"delta":{"content":""},"logprobs":null,"finish_reason":"tool_calls"}],"usage":{"prompt_tokens":161,"completion_tokens":25,"total_tokens":186,"prompt_tokens_details":{"cached_tokens":128},"prompt_cache_hit_tokens":128,"prompt_cache_miss_tokens":33}}"#,
        ])
        .unwrap();
        assert_eq!(out.finish.as_deref(), Some("tool_calls"));
        assert_eq!(out.usage.unwrap().cached_prompt_tokens, 128);
        assert_eq!(out.calls[&0].1, "get_weather");
    }

    #[test]
    fn ds2_reasoning_stream_passes_through() {
        // Fixture DS-2, abridged: reasoning deltas with `content: null`, then content.
        let out = replay::<DeepSeek>(&[
            r#"{"id":"f","object":"chat.completion.chunk","created":1759299469,"model":"deepseek-reasoner","choices":[{"index":0,"delta":{"role":"assistant","content":null,"reasoning_content":""},"logprobs":null,"finish_reason":null}]}"#,
            r#"{"id":"f","object":"chat.completion.chunk","created":1759299469,"model":"deepseek-reasoner","choices":[{"index":0,"delta":{"content":null,"reasoning_content":"Hmm, the user just said \"Hello!\""},"logprobs":null,"finish_reason":null}]}"#,
            r#"{"id":"f","object":"chat.completion.chunk","created":1759299469,"model":"deepseek-reasoner","choices":[{"index":0,"delta":{"content":"Hello","reasoning_content":null},"logprobs":null,"finish_reason":null}]}"#,
            r#"{"id":"f","object":"chat.completion.chunk","created":1759299469,"model":"deepseek-reasoner","choices":[{"index":0,"delta":{"content":"","reasoning_content":null},"logprobs":null,"finish_reason":"stop"}],"usage":{"prompt_tokens":6,"completion_tokens":169,"total_tokens":175,"prompt_tokens_details":{"cached_tokens":0},"completion_tokens_details":{"reasoning_tokens":117},"prompt_cache_hit_tokens":1,"prompt_cache_miss_tokens":5}}"#,
        ])
        .unwrap();
        assert_eq!(out.reasoning, "Hmm, the user just said \"Hello!\"");
        assert_eq!(out.content, "Hello");
        assert_eq!(out.usage.unwrap().reasoning_tokens, 117);
    }

    #[test]
    fn repeated_ids_and_names_reach_the_client_once() {
        let fragment = |args: &str| {
            delta(
                json!({"tool_calls":[{"index":0,"id":"call_1","type":"function","function":{"name":"get_weather","arguments":args}}]}),
            )
        };
        let out = replay::<OpenAiCompatible>(&[
            &delta(json!({"role":"assistant","content":null})),
            &fragment("{\"city\":"),
            &fragment("\"Paris\"}"),
            &finish("tool_calls"),
        ])
        .unwrap();
        assert_eq!(
            out.calls[&0],
            (
                "call_1".into(),
                "get_weather".into(),
                "{\"city\":\"Paris\"}".into()
            )
        );
    }

    #[test]
    fn complete_arguments_in_one_delta_without_index_and_stop_means_tool_calls() {
        let out = replay::<OpenAiCompatible>(&[
            &delta(json!({"role":"assistant","content":""})),
            &delta(json!({"tool_calls":[{"id":"call_9","type":"function","function":{"name":"f","arguments":"{\"a\":1}"}}]})),
            &finish("stop"),
        ])
        .unwrap();
        assert_eq!(
            out.calls[&0],
            ("call_9".into(), "f".into(), "{\"a\":1}".into())
        );
        assert_eq!(out.finish.as_deref(), Some("tool_calls"));
    }

    #[test]
    fn calls_without_index_are_told_apart_by_their_ids() {
        let whole = |id: &str, name: &str| {
            delta(
                json!({"tool_calls":[{"id":id,"type":"function","function":{"name":name,"arguments":"{}"}}]}),
            )
        };
        let out = replay::<OpenAiCompatible>(&[
            &delta(json!({"role":"assistant","content":null})),
            &whole("call_a", "f"),
            &whole("call_b", "g"),
            &finish("stop"),
        ])
        .unwrap();
        assert_eq!(out.calls[&0], ("call_a".into(), "f".into(), "{}".into()));
        assert_eq!(out.calls[&1], ("call_b".into(), "g".into(), "{}".into()));
        assert_eq!(out.finish.as_deref(), Some("tool_calls"));
    }

    #[test]
    fn parallel_calls_keep_their_indexes() {
        // OA-3-style fragments for two calls, the second opening at index 1.
        let open = |index: u32, id: &str, name: &str| {
            delta(
                json!({"tool_calls":[{"index":index,"id":id,"type":"function","function":{"name":name,"arguments":""}}]}),
            )
        };
        let args = |index: u32, a: &str| {
            delta(json!({"tool_calls":[{"index":index,"function":{"arguments":a}}]}))
        };
        let out = replay::<OpenAi>(&[
            &open(0, "call_1", "get_weather"),
            &args(0, "{}"),
            &open(1, "call_DNYTawLBoN8fj3KN6qU9N1Ou", "get_stock_price"),
            &args(1, "{\"t\":1}"),
            &finish("tool_calls"),
        ])
        .unwrap();
        assert_eq!(
            out.calls[&0],
            ("call_1".into(), "get_weather".into(), "{}".into())
        );
        assert_eq!(
            out.calls[&1],
            (
                "call_DNYTawLBoN8fj3KN6qU9N1Ou".into(),
                "get_stock_price".into(),
                "{\"t\":1}".into()
            )
        );
    }

    #[test]
    fn stop_without_tool_calls_stays_stop() {
        let out = replay::<OpenAiCompatible>(&[
            &delta(json!({"role":"assistant","content":"hi"})),
            &finish("stop"),
        ])
        .unwrap();
        assert_eq!(out.finish.as_deref(), Some("stop"));
    }

    #[test]
    fn insufficient_system_resource_is_a_retryable_error() {
        let e = replay::<DeepSeek>(&[
            &delta(json!({"role":"assistant","content":"Hel"})),
            &finish("insufficient_system_resource"),
        ])
        .unwrap_err();
        assert_eq!(e.to_api_error().kind, ErrorKind::Unavailable);
        let whole = json!({"id":"x","choices":[{"index":0,"message":{"role":"assistant","content":"Hel"},"finish_reason":"insufficient_system_resource"}]});
        let e = parse_completion::<DeepSeek>("p", whole).unwrap_err();
        assert_eq!(e.to_api_error().kind, ErrorKind::Unavailable);
    }

    #[test]
    fn whole_answers_are_normalised_too() {
        let body = json!({"id":"x","choices":[{"index":0,"message":{"role":"assistant","content":null,"reasoning":"r",
            "tool_calls":[{"id":"call_1","type":"function","function":{"name":"f","arguments":"{}"}}]},"finish_reason":"stop"}]});
        let response = parse_completion::<OpenAiCompatible>("p", body).unwrap();
        assert_eq!(response.choices[0].finish_reason, "tool_calls");
        let message = response.choices[0].message.as_ref().unwrap();
        assert_eq!(message.reasoning_content.as_deref(), Some("r"));
        assert!(message.reasoning_details.is_empty());
        let e = parse_completion::<OpenAiCompatible>("p", json!({"error":{"message":"bad"}}))
            .unwrap_err();
        assert!(e.to_string().contains("bad"));
    }

    #[test]
    fn reasoning_details_of_other_formats_are_not_sent() {
        let request = tollgate::openai::ChatCompletionRequest::from_json(json!({"model":"m","messages":[
            {"role":"assistant","content":"a","reasoning_details":[{"type":"reasoning.text","text":"t","format":"minimax-v1"}]},
            {"role":"user","content":"b"}]}))
        .unwrap()
        .into_proto()
        .unwrap();
        let route = tollgate::v1::ResolvedModel::default();
        let target = Target {
            route: &route,
            thinking: crate::thinking::Thinking::Default { thinks: false },
        };
        let body = request_body::<OpenAiCompatible>(&request, &target).unwrap();
        assert!(body.messages[0].reasoning_details.is_none());
    }
}
