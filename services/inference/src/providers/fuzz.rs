//! Fuzzing what upstreams send: every provider's stream translator fed sequences of events that
//! are realistic events mutated at random places (or raw bytes), and the think-tag splitter fed
//! arbitrary text in arbitrary fragments. A translator may refuse an event (an `UpstreamError`,
//! which ends the stream) but never panics, and the splitter's answer never depends on where the
//! stream was cut. The driver and the generators are `tollgate_e2e::fuzzing`.

use proptest::prelude::*;
use serde_json::{Value, json};
use tollgate_e2e::fuzzing::{fragments, fuzz, mangled_bytes, mutated};

use super::anthropic::stream::StreamTranslator as AnthropicStream;
use super::deepseek::DeepSeek;
use super::gemini::response::StreamTranslator as GeminiStream;
use super::minimax::MiniMax;
use super::openai::OpenAi;
use super::openai_compatible::OpenAiCompatible;
use super::openai_wire::{Dialect, StreamNormaliser, parse_completion};
use super::think_tags::ThinkTagSplitter;

/// One event's `data`: a mutated realistic event, or mangled bytes read as text (lossily, as
/// the SSE reader would have refused bytes that are not UTF-8).
fn events(seeds: Vec<Value>, keys: &'static [&'static str]) -> impl Strategy<Value = Vec<String>> {
    let event = prop_oneof![
        6 => mutated(seeds.clone(), keys).prop_map(|v| v.to_string()),
        1 => mangled_bytes(seeds).prop_map(|b| String::from_utf8_lossy(&b).into_owned()),
    ];
    prop::collection::vec(event, 1..10)
}

const OPENAI_KEYS: &[&str] = &[
    "id",
    "object",
    "created",
    "model",
    "choices",
    "index",
    "delta",
    "role",
    "content",
    "reasoning_content",
    "reasoning",
    "reasoning_details",
    "tool_calls",
    "function",
    "name",
    "arguments",
    "type",
    "finish_reason",
    "usage",
    "prompt_tokens",
    "completion_tokens",
    "total_tokens",
    "prompt_tokens_details",
    "cached_tokens",
    "completion_tokens_details",
    "reasoning_tokens",
    "prompt_cache_hit_tokens",
    "logprobs",
    "error",
    "message",
    "code",
    "base_resp",
    "status_code",
    "status_msg",
    "text",
    "format",
    "signature",
    "data",
];

fn openai_seeds() -> Vec<Value> {
    let chunk = |choices: Value, usage: Value| {
        json!({"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1,
               "model": "m", "choices": choices, "usage": usage})
    };
    vec![
        chunk(
            json!([{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": null}]),
            Value::Null,
        ),
        chunk(
            json!([{"index": 0, "delta": {"content": "<think>plan</think>Hello"}}]),
            Value::Null,
        ),
        chunk(
            json!([{"index": 0, "delta": {"reasoning_content": "thinking",
                     "reasoning_details": [{"type": "reasoning.text", "text": "t", "index": 0}]}}]),
            Value::Null,
        ),
        chunk(
            json!([{"index": 0, "delta": {"tool_calls": [{"index": 0, "id": "call_1", "type": "function",
                     "function": {"name": "get_weather", "arguments": "{\"city\":"}}]}}]),
            Value::Null,
        ),
        chunk(
            json!([{"index": 0, "delta": {"tool_calls": [{"index": 0, "function": {"arguments": "\"Paris\"}"}}]},
                     "finish_reason": "tool_calls"}]),
            Value::Null,
        ),
        chunk(
            json!([{"index": 0, "delta": {}, "finish_reason": "stop"}]),
            json!({"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15,
                   "prompt_tokens_details": {"cached_tokens": 2},
                   "completion_tokens_details": {"reasoning_tokens": 1},
                   "prompt_cache_hit_tokens": 2}),
        ),
        chunk(
            json!([]),
            json!({"prompt_tokens": 10, "completion_tokens": 5}),
        ),
        json!({"error": {"message": "overloaded", "code": 529, "type": "server_error"}}),
        json!({"id": "x", "choices": [], "base_resp": {"status_code": 1002, "status_msg": "rate limit"}}),
    ]
}

fn replay_openai<D: Dialect>(events: &[String]) -> Result<(), TestCaseError> {
    let mut normaliser = StreamNormaliser::<D>::default();
    for data in events {
        match normaliser.chunk("fuzz", data) {
            Ok(_) => {}
            Err(e) => {
                // The error must render for the client without panicking.
                let _ = e.to_api_error();
                break;
            }
        }
    }
    Ok(())
}

#[test]
fn openai_family_stream_translators_survive_any_events() {
    fuzz("openai stream", events(openai_seeds(), OPENAI_KEYS), |e| {
        replay_openai::<OpenAi>(&e)
    });
    fuzz(
        "deepseek stream",
        events(openai_seeds(), OPENAI_KEYS),
        |e| replay_openai::<DeepSeek>(&e),
    );
    fuzz("minimax stream", events(openai_seeds(), OPENAI_KEYS), |e| {
        replay_openai::<MiniMax>(&e)
    });
    fuzz(
        "openai-compatible stream",
        events(openai_seeds(), OPENAI_KEYS),
        |e| replay_openai::<OpenAiCompatible>(&e),
    );
}

#[test]
fn openai_family_whole_answers_survive_any_body() {
    let seeds: Vec<Value> = vec![json!({
        "id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "m",
        "choices": [{"index": 0, "finish_reason": "tool_calls",
            "message": {"role": "assistant", "content": "<think>a</think>b",
                        "reasoning_content": "r",
                        "tool_calls": [{"id": "c", "type": "function",
                                        "function": {"name": "f", "arguments": "{}"}}]}}],
        "usage": {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7}
    })];
    fuzz(
        "openai-family answer",
        mutated(seeds, OPENAI_KEYS),
        |body| {
            if let Err(e) = parse_completion::<OpenAi>("fuzz", body.clone()) {
                let _ = e.to_api_error();
            }
            if let Err(e) = parse_completion::<MiniMax>("fuzz", body) {
                let _ = e.to_api_error();
            }
            Ok(())
        },
    );
}

const ANTHROPIC_KEYS: &[&str] = &[
    "type",
    "message",
    "id",
    "role",
    "model",
    "content",
    "stop_reason",
    "stop_sequence",
    "usage",
    "input_tokens",
    "output_tokens",
    "cache_creation_input_tokens",
    "cache_read_input_tokens",
    "index",
    "content_block",
    "text",
    "thinking",
    "signature",
    "redacted_thinking",
    "data",
    "tool_use",
    "name",
    "input",
    "delta",
    "text_delta",
    "thinking_delta",
    "signature_delta",
    "input_json_delta",
    "partial_json",
    "message_start",
    "content_block_start",
    "content_block_delta",
    "content_block_stop",
    "message_delta",
    "message_stop",
    "ping",
    "error",
    "overloaded_error",
    "end_turn",
    "max_tokens",
    "refusal",
];

fn anthropic_seeds() -> Vec<Value> {
    vec![
        json!({"type": "message_start", "message": {"id": "msg_1", "type": "message",
            "role": "assistant", "model": "claude", "content": [], "stop_reason": null,
            "stop_sequence": null, "usage": {"input_tokens": 25, "output_tokens": 1,
            "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0}}}),
        json!({"type": "content_block_start", "index": 0,
               "content_block": {"type": "thinking", "thinking": "", "signature": ""}}),
        json!({"type": "content_block_delta", "index": 0,
               "delta": {"type": "thinking_delta", "thinking": "Let me think"}}),
        json!({"type": "content_block_delta", "index": 0,
               "delta": {"type": "signature_delta", "signature": "EqQBCgIYAhIM"}}),
        json!({"type": "content_block_stop", "index": 0}),
        json!({"type": "content_block_start", "index": 1,
               "content_block": {"type": "text", "text": ""}}),
        json!({"type": "content_block_delta", "index": 1,
               "delta": {"type": "text_delta", "text": "Hello"}}),
        json!({"type": "content_block_start", "index": 2,
               "content_block": {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {}}}),
        json!({"type": "content_block_delta", "index": 2,
               "delta": {"type": "input_json_delta", "partial_json": "{\"city\": \"Pa"}}),
        json!({"type": "content_block_start", "index": 3,
               "content_block": {"type": "redacted_thinking", "data": "abc"}}),
        json!({"type": "message_delta", "delta": {"stop_reason": "tool_use", "stop_sequence": null},
               "usage": {"output_tokens": 15}}),
        json!({"type": "message_stop"}),
        json!({"type": "ping"}),
        json!({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}),
    ]
}

#[test]
fn anthropic_stream_translator_survives_any_events() {
    fuzz(
        "anthropic stream",
        events(anthropic_seeds(), ANTHROPIC_KEYS),
        |events| {
            let mut translator = AnthropicStream::new("fuzz");
            for data in &events {
                if let Err(e) = translator.on_event(data) {
                    let _ = e.to_api_error();
                    break;
                }
            }
            Ok(())
        },
    );
}

const GEMINI_KEYS: &[&str] = &[
    "candidates",
    "content",
    "parts",
    "text",
    "thought",
    "thoughtSignature",
    "functionCall",
    "name",
    "args",
    "role",
    "model",
    "finishReason",
    "index",
    "safetyRatings",
    "usageMetadata",
    "promptTokenCount",
    "candidatesTokenCount",
    "totalTokenCount",
    "thoughtsTokenCount",
    "cachedContentTokenCount",
    "promptTokensDetails",
    "modality",
    "tokenCount",
    "modelVersion",
    "promptFeedback",
    "blockReason",
    "error",
    "code",
    "message",
    "status",
    "STOP",
    "MAX_TOKENS",
    "SAFETY",
    "inlineData",
    "mimeType",
    "data",
];

fn gemini_seeds() -> Vec<Value> {
    let usage = json!({"promptTokenCount": 60, "candidatesTokenCount": 15, "totalTokenCount": 80,
                       "thoughtsTokenCount": 5, "cachedContentTokenCount": 0,
                       "promptTokensDetails": [{"modality": "TEXT", "tokenCount": 60}]});
    vec![
        json!({"candidates": [{"content": {"parts": [{"text": "Understanding", "thought": true}],
               "role": "model"}, "index": 0}], "usageMetadata": usage, "modelVersion": "gemini-2.5-pro"}),
        json!({"candidates": [{"content": {"parts": [{"text": "Of course", "thoughtSignature": "CiIB0e2K"}],
               "role": "model"}, "index": 0}], "usageMetadata": usage}),
        json!({"candidates": [{"content": {"parts": [{"functionCall": {"name": "get_weather",
               "args": {"location": "Paris"}}, "thoughtSignature": "Cg=="}], "role": "model"},
               "finishReason": "STOP", "index": 0}], "usageMetadata": usage}),
        json!({"candidates": [{"content": {"parts": [{"text": "two"}], "role": "model"}, "index": 1}]}),
        json!({"candidates": [{"finishReason": "SAFETY", "index": 0}], "usageMetadata": usage}),
        json!({"promptFeedback": {"blockReason": "SAFETY"}, "usageMetadata": usage}),
        json!({"error": {"code": 429, "message": "Resource has been exhausted", "status": "RESOURCE_EXHAUSTED"}}),
    ]
}

#[test]
fn gemini_stream_translator_survives_any_events() {
    fuzz(
        "gemini stream",
        events(gemini_seeds(), GEMINI_KEYS),
        |events| {
            let mut translator = GeminiStream::default();
            for data in &events {
                if let Err(failure) = translator.on_event(data) {
                    let _ = failure.into_error("fuzz").to_api_error();
                    break;
                }
            }
            Ok(())
        },
    );
}

/// Text made of the pieces that matter to the splitter: tags, partial tags, whitespace, text.
fn think_text() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        Just("<think>"),
        Just("</think>"),
        Just("<"),
        Just("</"),
        Just("<thi"),
        Just("nk>"),
        Just(">"),
        Just(" "),
        Just("\n"),
        Just("a"),
        Just("é"),
        Just("漢"),
        Just("think"),
    ];
    prop::collection::vec(piece, 0..40).prop_map(|pieces| pieces.concat())
}

#[test]
fn think_tags_split_the_same_however_the_stream_is_cut() {
    fuzz(
        "think-tag splitter",
        (think_text(), prop::collection::vec(any::<usize>(), 0..12)),
        |(text, cuts)| {
            let whole = ThinkTagSplitter::split_whole(&text);
            let mut splitter = ThinkTagSplitter::default();
            let (mut reasoning, mut content) = (String::new(), String::new());
            for fragment in fragments(&text, &cuts) {
                let out = splitter.feed(&fragment);
                reasoning.push_str(&out.reasoning);
                content.push_str(&out.content);
            }
            let tail = splitter.flush();
            reasoning.push_str(&tail.reasoning);
            content.push_str(&tail.content);
            prop_assert_eq!(reasoning.trim_end(), whole.reasoning.as_str());
            prop_assert_eq!(content, whole.content);
            Ok(())
        },
    );
}

/// What the fuzzer found first: usage counts at `u64::MAX` overflowed the sums of prompt and
/// completion tokens (a panic in debug builds, a wrapped count in release ones). They saturate.
#[test]
fn usage_counts_at_the_top_of_u64_do_not_overflow() {
    let max = u64::MAX;
    let openai = json!({"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "m",
                        "choices": [], "usage": {"prompt_tokens": max, "completion_tokens": 5}});
    let chunk = StreamNormaliser::<OpenAi>::default()
        .chunk("fuzz", &openai.to_string())
        .unwrap();
    assert_eq!(chunk.usage.unwrap().total_tokens, max);
    let anthropic = json!({"type": "message_start", "message": {"id": "m", "type": "message",
        "role": "assistant", "model": "claude", "content": [], "stop_reason": null,
        "usage": {"input_tokens": max, "output_tokens": 1, "cache_read_input_tokens": 3}}});
    let mut translator = AnthropicStream::new("fuzz");
    let usage = translator
        .on_event(&anthropic.to_string())
        .unwrap()
        .and_then(|chunk| chunk.usage)
        .unwrap();
    assert_eq!((usage.prompt_tokens, usage.total_tokens), (max, max));
    let gemini = json!({"candidates": [{"content": {"parts": [{"text": "x"}], "role": "model"},
        "index": 0}], "usageMetadata": {"promptTokenCount": max, "candidatesTokenCount": 15,
        "thoughtsTokenCount": max}});
    let usage = GeminiStream::default()
        .on_event(&gemini.to_string())
        .unwrap()
        .usage
        .unwrap();
    assert_eq!(
        (
            usage.prompt_tokens,
            usage.completion_tokens,
            usage.total_tokens
        ),
        (max, max, max)
    );
}
