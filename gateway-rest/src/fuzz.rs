//! Fuzzing the request parsers a client reaches: the bytes of a `/v1/chat/completions`,
//! `/v1/messages` or `/v1/responses` body, parsed as the route parses them, turned into a
//! `tollgate.v1.ChatRequest` and validated as the inference service validates it. Inputs are
//! realistic requests mutated at random places, or mangled bytes. Whatever the input, nothing
//! panics and every refusal is a 400 `invalid_request_error` whose `param` names the field at
//! fault. The driver and the generators are `tollgate_e2e::fuzzing`.

use proptest::prelude::*;
use serde_json::{Value, json};
use tollgate::error::{ApiError, ErrorKind};
use tollgate::openai::ChatCompletionRequest;
use tollgate::openai::body::from_slice;
use tollgate::v1::ChatRequest;
use tollgate_e2e::fuzzing::{fuzz, mangled_bytes, mutated};
use tollgate_inference::validate;

/// A body as a client sends it: mostly a mutated realistic request, sometimes mangled bytes.
fn bodies(seeds: Vec<Value>, keys: &'static [&'static str]) -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        6 => mutated(seeds.clone(), keys).prop_map(|v| v.to_string().into_bytes()),
        1 => mangled_bytes(seeds),
    ]
}

/// A refusal must be the product's 400 naming the field.
fn refused_well(error: &ApiError) -> Result<(), TestCaseError> {
    prop_assert_eq!(error.kind, ErrorKind::InvalidRequest, "{:?}", error);
    let param = error.param.as_deref().unwrap_or_default();
    prop_assert!(!param.is_empty(), "no field named: {:?}", error);
    Ok(())
}

/// The rest of the way every route takes: validation as the inference service does it.
fn validated(request: Result<ChatRequest, ApiError>) -> Result<(), TestCaseError> {
    match request.and_then(|r| validate::request(&r)) {
        Ok(_) => Ok(()),
        Err(e) => refused_well(&e),
    }
}

const CHAT_KEYS: &[&str] = &[
    "model",
    "messages",
    "role",
    "content",
    "name",
    "type",
    "text",
    "image_url",
    "url",
    "detail",
    "input_audio",
    "tool_calls",
    "tool_call_id",
    "id",
    "function",
    "arguments",
    "tools",
    "parameters",
    "strict",
    "tool_choice",
    "parallel_tool_calls",
    "stream",
    "stream_options",
    "include_usage",
    "max_tokens",
    "max_completion_tokens",
    "temperature",
    "top_p",
    "top_k",
    "n",
    "stop",
    "seed",
    "user",
    "response_format",
    "json_schema",
    "schema",
    "reasoning_effort",
    "reasoning",
    "reasoning_content",
    "reasoning_details",
    "thinking",
    "logprobs",
    "top_logprobs",
    "presence_penalty",
    "frequency_penalty",
    "logit_bias",
    "metadata",
    "service_tier",
    "prompt_cache_key",
    "system",
    "user",
    "assistant",
    "tool",
    "developer",
    "auto",
    "none",
    "required",
    "json_object",
    "enabled",
    "effort",
    "high",
];

fn chat_seeds() -> Vec<Value> {
    vec![
        json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Hello"}]}),
        json!({
            "model": "claude-sonnet", "stream": true, "stream_options": {"include_usage": true},
            "max_completion_tokens": 256, "temperature": 0.2, "top_p": 0.9, "stop": ["\n\n"],
            "reasoning_effort": "high", "user": "u1", "seed": 7, "n": 1,
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": [
                    {"type": "text", "text": "What is in this image?"},
                    {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo=", "detail": "low"}}
                ]},
                {"role": "assistant", "content": null, "reasoning_content": "look",
                 "tool_calls": [{"id": "call_1", "type": "function",
                                 "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}}]},
                {"role": "tool", "tool_call_id": "call_1", "content": "sunny"}
            ],
            "tools": [{"type": "function", "function": {"name": "get_weather", "description": "d",
                       "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
                       "strict": true}}],
            "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
            "parallel_tool_calls": false
        }),
        json!({"model": "deepseek-chat", "messages": [{"role": "developer", "content": "x"},
               {"role": "user", "content": "y"}],
               "response_format": {"type": "json_schema", "json_schema": {"name": "s",
                   "schema": {"type": "object"}, "strict": true}},
               "logprobs": true, "top_logprobs": 2, "max_tokens": 10}),
    ]
}

#[test]
fn chat_completion_bodies_parse_or_are_refused_naming_a_field() {
    fuzz(
        "REST chat completions body",
        bodies(chat_seeds(), CHAT_KEYS),
        |bytes| match from_slice::<ChatCompletionRequest>(&bytes) {
            Ok(request) => validated(request.into_proto()),
            Err(e) => refused_well(&e),
        },
    );
}

const MESSAGES_KEYS: &[&str] = &[
    "model",
    "messages",
    "role",
    "content",
    "type",
    "text",
    "image",
    "source",
    "media_type",
    "data",
    "url",
    "base64",
    "tool_use",
    "tool_result",
    "tool_use_id",
    "id",
    "name",
    "input",
    "is_error",
    "thinking",
    "signature",
    "redacted_thinking",
    "system",
    "max_tokens",
    "stop_sequences",
    "stream",
    "temperature",
    "top_p",
    "top_k",
    "tools",
    "input_schema",
    "tool_choice",
    "auto",
    "any",
    "tool",
    "budget_tokens",
    "enabled",
    "disabled",
    "metadata",
    "user_id",
    "cache_control",
    "ephemeral",
    "user",
    "assistant",
    "output_format",
];

fn messages_seeds() -> Vec<Value> {
    vec![
        json!({"model": "claude-sonnet", "max_tokens": 1024,
               "messages": [{"role": "user", "content": "Hello"}]}),
        json!({
            "model": "claude-sonnet", "max_tokens": 2048, "stream": true,
            "system": [{"type": "text", "text": "You are terse.", "cache_control": {"type": "ephemeral"}}],
            "thinking": {"type": "enabled", "budget_tokens": 1024},
            "tools": [{"name": "get_weather", "description": "d",
                       "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}}}],
            "tool_choice": {"type": "auto"}, "stop_sequences": ["END"], "top_k": 5,
            "metadata": {"user_id": "u"},
            "messages": [
                {"role": "user", "content": [
                    {"type": "text", "text": "Weather?"},
                    {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}}
                ]},
                {"role": "assistant", "content": [
                    {"type": "thinking", "thinking": "t", "signature": "sig"},
                    {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Paris"}}
                ]},
                {"role": "user", "content": [
                    {"type": "tool_result", "tool_use_id": "toolu_1", "content": "sunny", "is_error": false}
                ]}
            ]
        }),
    ]
}

#[test]
fn messages_bodies_parse_or_are_refused_naming_a_field() {
    fuzz(
        "REST messages body",
        bodies(messages_seeds(), MESSAGES_KEYS),
        |bytes| match from_slice::<Value>(&bytes) {
            Ok(body) => {
                validated(crate::messages::request::parse(body, false, None).map(|p| p.request))
            }
            Err(e) => refused_well(&e),
        },
    );
}

const RESPONSES_KEYS: &[&str] = &[
    "model",
    "input",
    "instructions",
    "role",
    "content",
    "type",
    "text",
    "input_text",
    "output_text",
    "input_image",
    "image_url",
    "detail",
    "message",
    "function_call",
    "function_call_output",
    "call_id",
    "name",
    "arguments",
    "output",
    "reasoning",
    "summary",
    "summary_text",
    "encrypted_content",
    "effort",
    "tools",
    "function",
    "parameters",
    "strict",
    "tool_choice",
    "stream",
    "max_output_tokens",
    "temperature",
    "top_p",
    "store",
    "previous_response_id",
    "include",
    "format",
    "json_schema",
    "schema",
    "user",
    "assistant",
    "system",
    "developer",
    "parallel_tool_calls",
    "metadata",
    "prompt_cache_key",
];

fn responses_seeds() -> Vec<Value> {
    vec![
        json!({"model": "gpt-4o-mini", "input": "Hello"}),
        json!({
            "model": "gpt-4o-mini", "instructions": "Be brief.", "stream": true, "store": false,
            "max_output_tokens": 500, "reasoning": {"effort": "low", "summary": "auto"},
            "include": ["reasoning.encrypted_content"], "parallel_tool_calls": true,
            "tools": [{"type": "function", "name": "get_weather", "description": "d",
                       "parameters": {"type": "object", "properties": {}}, "strict": false}],
            "tool_choice": "auto",
            "text": {"format": {"type": "json_schema", "name": "s", "schema": {"type": "object"}}},
            "input": [
                {"type": "message", "role": "user", "content": [
                    {"type": "input_text", "text": "Weather?"},
                    {"type": "input_image", "image_url": "data:image/png;base64,iVBORw0KGgo=", "detail": "auto"}
                ]},
                {"type": "reasoning", "id": "rs_1", "summary": [{"type": "summary_text", "text": "s"}],
                 "encrypted_content": "enc"},
                {"type": "function_call", "call_id": "call_1", "name": "get_weather", "arguments": "{}"},
                {"type": "function_call_output", "call_id": "call_1", "output": "sunny"},
                {"role": "assistant", "content": [{"type": "output_text", "text": "It is sunny."}]}
            ]
        }),
    ]
}

#[test]
fn responses_bodies_parse_or_are_refused_naming_a_field() {
    fuzz(
        "REST responses body",
        bodies(responses_seeds(), RESPONSES_KEYS),
        |bytes| match from_slice::<Value>(&bytes) {
            Ok(body) => validated(crate::responses::request::parse(body).map(|p| p.request)),
            Err(e) => refused_well(&e),
        },
    );
}
