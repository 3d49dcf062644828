//! The request mapping rules of providers.md §2.1 and §7 checked on whole bodies, fixture AN-4
//! (a tool round trip) and AN-5 (an error body).

use serde_json::{Value, json};
use tollgate::{
    error::ErrorKind,
    openai::ChatCompletionRequest,
    v1::{ChatRequest, ResolvedModel, ThinkingSupport},
};

use super::{
    request::{self, JSON_OBJECT_INSTRUCTION},
    *,
};
use crate::providers::http::error_message;

fn route() -> ResolvedModel {
    ResolvedModel {
        requested_id: "claude-sonnet".into(),
        model_id: "claude-sonnet".into(),
        provider: "anthropic".into(),
        upstream_model: "claude-sonnet-4-5".into(),
        max_output_tokens: 64000,
        thinking: ThinkingSupport::Optional.into(),
        vision: true,
        ..Default::default()
    }
}

fn chat(openai: Value) -> ChatRequest {
    ChatCompletionRequest::from_json(openai)
        .unwrap()
        .into_proto()
        .unwrap()
}

/// The body for `openai` with the caller's thinking switch set to `thinking`, decided as the
/// service decides it.
fn body_with(openai: Value, thinking: Option<bool>) -> Result<Value, UpstreamError> {
    let route = route();
    let mut request = chat(openai);
    request.thinking = thinking;
    let thinking = crate::thinking::decide(&request, &route).unwrap();
    body_for(&request, &route, thinking)
}

fn body_for(
    request: &ChatRequest,
    route: &ResolvedModel,
    thinking: crate::thinking::Thinking,
) -> Result<Value, UpstreamError> {
    request::body(request, &Target { route, thinking })
        .map(|body| serde_json::to_value(body).unwrap())
}

fn body(openai: Value) -> Value {
    body_with(openai, None).unwrap()
}

/// The param and message of a refused request.
fn refused(openai: Value, thinking: Option<bool>) -> (String, String) {
    match body_with(openai, thinking).unwrap_err() {
        UpstreamError::Unsupported { param, message } => (param, message),
        other => panic!("expected a 400, got {other:?}"),
    }
}

fn with_messages(messages: Value) -> Value {
    json!({"model": "claude-sonnet", "messages": messages})
}

#[test]
fn an_4_tool_round_trip_request() {
    let openai = json!({
        "model": "claude-sonnet",
        "max_tokens": 1024,
        "tools": [{"type": "function", "function": {
            "name": "get_stock_price",
            "description": "Get the current stock price for a given ticker symbol.",
            "parameters": {"type": "object", "properties": {"ticker": {"type": "string", "description": "The stock ticker symbol, e.g. AAPL for Apple Inc."}}, "required": ["ticker"]}
        }}],
        "messages": [
            {"role": "user", "content": "What's the S&P 500 at today?"},
            {"role": "assistant", "content": null, "tool_calls": [{"id": "toolu_01D7FLrfh4GYq7yT1ULFeyMV", "type": "function", "function": {"name": "get_stock_price", "arguments": "{\"ticker\":\"^GSPC\"}"}}]},
            {"role": "tool", "tool_call_id": "toolu_01D7FLrfh4GYq7yT1ULFeyMV", "content": "259.75 USD"}
        ]
    });
    let expected = json!({"model":"claude-sonnet-4-5","max_tokens":1024,
     "tools":[{"name":"get_stock_price","description":"Get the current stock price for a given ticker symbol.","input_schema":{"type":"object","properties":{"ticker":{"type":"string","description":"The stock ticker symbol, e.g. AAPL for Apple Inc."}},"required":["ticker"]}}],
     "messages":[
      {"role":"user","content":[{"type":"text","text":"What's the S&P 500 at today?"}]},
      {"role":"assistant","content":[{"type":"tool_use","id":"toolu_01D7FLrfh4GYq7yT1ULFeyMV","name":"get_stock_price","input":{"ticker":"^GSPC"}}]},
      {"role":"user","content":[{"type":"tool_result","tool_use_id":"toolu_01D7FLrfh4GYq7yT1ULFeyMV","content":"259.75 USD"}]}]});
    assert_eq!(body(openai), expected);
}

#[test]
fn an_5_overloaded_maps_to_503() {
    let body = r#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#;
    let e = UpstreamError::from_status("anthropic", 529, error_message(body));
    assert_eq!(e.to_api_error().kind, ErrorKind::Unavailable);
    let e = UpstreamError::from_status(
        "anthropic",
        400,
        error_message(
            r#"{"type":"error","error":{"type":"invalid_request_error","message":"messages: text content blocks must be non-empty"},"request_id":"req_1"}"#,
        ),
    );
    let api = e.to_api_error();
    assert_eq!(api.kind, ErrorKind::InvalidRequest);
    assert!(
        api.message
            .contains("text content blocks must be non-empty")
    );
    let too_large = UpstreamError::from_status(
        "anthropic",
        413,
        "Request exceeds the maximum allowed number of bytes.".into(),
    );
    assert_eq!(too_large.to_api_error().kind, ErrorKind::InvalidRequest);
    for status in [401, 403] {
        let e = UpstreamError::from_status("anthropic", status, "invalid x-api-key".into());
        assert_eq!(e.to_api_error().kind, ErrorKind::Upstream);
    }
}

#[test]
fn system_and_developer_messages_are_lifted_and_same_role_turns_merged() {
    let b = body(with_messages(json!([
        {"role": "system", "content": "Be terse."},
        {"role": "user", "content": "one"},
        {"role": "developer", "content": [{"type": "text", "text": "Policy X."}]},
        {"role": "user", "content": [{"type": "text", "text": "two"}]},
        {"role": "assistant", "content": "three"},
        {"role": "assistant", "content": [{"type": "text", "text": "four"}]},
        {"role": "user", "content": "five"}
    ])));
    assert_eq!(
        b["system"],
        json!([{"type": "text", "text": "Be terse."}, {"type": "text", "text": "Policy X."}])
    );
    assert_eq!(
        b["messages"],
        json!([
            {"role": "user", "content": [{"type": "text", "text": "one"}, {"type": "text", "text": "two"}]},
            {"role": "assistant", "content": [{"type": "text", "text": "three"}, {"type": "text", "text": "four"}]},
            {"role": "user", "content": [{"type": "text", "text": "five"}]}
        ])
    );
    // The model's own limit is the default max_tokens; nothing else is set.
    assert_eq!(b["max_tokens"], 64000);
    for absent in [
        "temperature",
        "tools",
        "tool_choice",
        "thinking",
        "metadata",
        "stop_sequences",
    ] {
        assert!(b.get(absent).is_none(), "{absent}");
    }
}

#[test]
fn empty_text_is_omitted_and_empty_messages_dropped() {
    let b = body(with_messages(json!([
        {"role": "system", "content": ""},
        {"role": "user", "content": [{"type": "text", "text": ""}, {"type": "text", "text": "hi"}]},
        {"role": "assistant", "content": ""},
        {"role": "user", "content": "again"}
    ])));
    assert!(b.get("system").is_none());
    assert_eq!(
        b["messages"],
        json!([{"role": "user", "content": [{"type": "text", "text": "hi"}, {"type": "text", "text": "again"}]}])
    );
    let (param, _) = refused(
        with_messages(json!([{"role": "user", "content": ""}])),
        None,
    );
    assert_eq!(param, "messages");
}

#[test]
fn tool_results_go_first_in_one_user_message_with_user_text_after() {
    let b = body(with_messages(json!([
        {"role": "user", "content": "weather in Paris and London?"},
        {"role": "assistant", "content": "Checking.", "tool_calls": [
            {"id": "toolu_a", "type": "function", "function": {"name": "w", "arguments": "{\"city\":\"Paris\"}"}},
            {"id": "toolu_b", "type": "function", "function": {"name": "w", "arguments": ""}}
        ]},
        {"role": "tool", "tool_call_id": "toolu_a", "content": "sunny"},
        {"role": "user", "content": "and be brief"},
        {"role": "tool", "tool_call_id": "toolu_b", "content": [{"type": "text", "text": "rain"}]}
    ])));
    assert_eq!(
        b["messages"][1],
        json!({"role": "assistant", "content": [
            {"type": "text", "text": "Checking."},
            {"type": "tool_use", "id": "toolu_a", "name": "w", "input": {"city": "Paris"}},
            {"type": "tool_use", "id": "toolu_b", "name": "w", "input": {}}
        ]})
    );
    assert_eq!(
        b["messages"][2],
        json!({"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "toolu_a", "content": "sunny"},
            {"type": "tool_result", "tool_use_id": "toolu_b", "content": "rain"},
            {"type": "text", "text": "and be brief"}
        ]})
    );
}

#[test]
fn tool_arguments_must_be_a_json_object() {
    for arguments in ["{not json", "[1,2]"] {
        let (param, _) = refused(
            with_messages(json!([
                {"role": "user", "content": "q"},
                {"role": "assistant", "tool_calls": [{"id": "t", "type": "function", "function": {"name": "w", "arguments": arguments}}]},
                {"role": "tool", "tool_call_id": "t", "content": "r"}
            ])),
            None,
        );
        assert_eq!(param, "messages[1].tool_calls[0].function.arguments");
    }
}

#[test]
fn images_become_base64_or_url_sources() {
    let image = |url: &str| {
        with_messages(json!([{"role": "user", "content": [
            {"type": "text", "text": "what is it?"},
            {"type": "image_url", "image_url": {"url": url, "detail": "high"}}
        ]}]))
    };
    let b = body(image("data:image/PNG;base64,iVBORw0KGgo="));
    assert_eq!(
        b["messages"][0]["content"][1],
        json!({"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}})
    );
    let b = body(image("https://example.com/cat.jpg"));
    assert_eq!(
        b["messages"][0]["content"][1],
        json!({"type": "image", "source": {"type": "url", "url": "https://example.com/cat.jpg"}})
    );
    for bad in [
        "data:image/bmp;base64,Qk0=",
        "data:image/png,rawbytes",
        "ftp://example.com/a.png",
    ] {
        let (param, _) = refused(image(bad), None);
        assert_eq!(param, "messages[0].content[1].image_url.url", "{bad}");
    }
}

#[test]
fn sampling_fields_map_or_are_refused() {
    let b = body(json!({
        "model": "m", "messages": [{"role": "user", "content": "hi"}],
        "temperature": 0.5, "top_p": 0.9, "stop": "END", "max_tokens": 300,
        "max_completion_tokens": 200, "user": "user-42", "seed": 7, "top_k": 5
    }));
    assert_eq!(b["temperature"], 0.5);
    assert_eq!(b["top_p"], 0.9);
    assert_eq!(b["top_k"], 5);
    assert_eq!(b["stop_sequences"], json!(["END"]));
    assert_eq!(
        b["max_tokens"], 200,
        "max_completion_tokens wins over max_tokens"
    );
    assert_eq!(b["metadata"], json!({"user_id": "user-42"}));
    assert!(b.get("seed").is_none() && b.get("user").is_none());
    let b = body(
        json!({"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 300}),
    );
    assert_eq!(b["max_tokens"], 300);

    for (field, value) in [
        ("temperature", json!(1.5)),
        ("n", json!(2)),
        ("logprobs", json!(true)),
        ("presence_penalty", json!(0.5)),
    ] {
        let mut openai = with_messages(json!([{"role": "user", "content": "hi"}]));
        openai[field] = value;
        let (param, message) = refused(openai, None);
        assert_eq!(param, field, "{message}");
    }
}

#[test]
fn tools_and_every_tool_choice_form() {
    let with_choice = |choice: Value, parallel: Option<bool>| {
        let mut openai = json!({
            "model": "m", "messages": [{"role": "user", "content": "hi"}],
            "tools": [
                {"type": "function", "function": {"name": "no_args"}},
                {"type": "function", "function": {"name": "loose", "parameters": {"properties": {"a": {"type": "string"}}}}}
            ]
        });
        if !choice.is_null() {
            openai["tool_choice"] = choice;
        }
        if let Some(p) = parallel {
            openai["parallel_tool_calls"] = json!(p);
        }
        body(openai)
    };
    let b = with_choice(Value::Null, None);
    assert_eq!(
        b["tools"],
        json!([
            {"name": "no_args", "input_schema": {"type": "object", "properties": {}}},
            {"name": "loose", "input_schema": {"type": "object", "properties": {"a": {"type": "string"}}}}
        ])
    );
    assert!(b.get("tool_choice").is_none());
    for (choice, expected) in [
        (json!("auto"), json!({"type": "auto"})),
        (json!("none"), json!({"type": "none"})),
        (json!("required"), json!({"type": "any"})),
        (
            json!({"type": "function", "function": {"name": "loose"}}),
            json!({"type": "tool", "name": "loose"}),
        ),
    ] {
        assert_eq!(with_choice(choice, None)["tool_choice"], expected);
    }
    assert_eq!(
        with_choice(Value::Null, Some(false))["tool_choice"],
        json!({"type": "auto", "disable_parallel_tool_use": true})
    );
    assert_eq!(
        with_choice(json!("required"), Some(false))["tool_choice"],
        json!({"type": "any", "disable_parallel_tool_use": true})
    );
    assert_eq!(
        with_choice(json!("none"), Some(false))["tool_choice"],
        json!({"type": "none"})
    );
    assert!(
        with_choice(Value::Null, Some(true))
            .get("tool_choice")
            .is_none()
    );
}

#[test]
fn response_formats() {
    let mut openai = with_messages(
        json!([{"role": "system", "content": "Be terse."}, {"role": "user", "content": "hi"}]),
    );
    openai["response_format"] = json!({"type": "json_schema", "json_schema": {"name": "answer", "schema": {"type": "object", "properties": {"a": {"type": "integer"}}}}});
    let b = body(openai.clone());
    assert_eq!(
        b["output_config"],
        json!({"format": {"type": "json_schema", "schema": {"type": "object", "properties": {"a": {"type": "integer"}}}}})
    );
    openai["response_format"] = json!({"type": "json_object"});
    let b = body(openai);
    assert!(b.get("output_config").is_none());
    assert_eq!(
        b["system"],
        json!([{"type": "text", "text": "Be terse."}, {"type": "text", "text": JSON_OBJECT_INSTRUCTION}])
    );
}

#[test]
fn thinking_budget_follows_reasoning_effort_and_fits_under_max_tokens() {
    let ask = |effort: Option<&str>, max_tokens: Option<u32>| {
        let mut openai = with_messages(json!([{"role": "user", "content": "hi"}]));
        if let Some(e) = effort {
            openai["reasoning_effort"] = json!(e);
        }
        if let Some(m) = max_tokens {
            openai["max_completion_tokens"] = json!(m);
        }
        openai
    };
    for (effort, budget) in [
        (None, 8192),
        (Some("minimal"), 1024),
        (Some("low"), 2048),
        (Some("medium"), 8192),
        (Some("high"), 16384),
        (Some("xhigh"), 24576),
        // 32768, fitted to half of the model's default max_tokens of 64000.
        (Some("max"), 32000),
    ] {
        let b = body_with(ask(effort, None), Some(true)).unwrap();
        assert_eq!(
            b["thinking"],
            json!({"type": "enabled", "budget_tokens": budget}),
            "{effort:?}"
        );
    }
    // Half of a small max_tokens, but never below 1024.
    let b = body_with(ask(Some("high"), Some(5000)), Some(true)).unwrap();
    assert_eq!(b["thinking"]["budget_tokens"], 2500);
    let b = body_with(ask(Some("high"), Some(1500)), Some(true)).unwrap();
    assert_eq!(b["thinking"]["budget_tokens"], 1024);
    let (param, _) = refused(ask(Some("high"), Some(1024)), Some(true));
    assert_eq!(param, "max_completion_tokens");
    // Off, or left to a model that does not think by default: no thinking field.
    assert!(
        body_with(ask(Some("high"), None), Some(false))
            .unwrap()
            .get("thinking")
            .is_none()
    );
    assert!(
        body_with(ask(None, None), None)
            .unwrap()
            .get("thinking")
            .is_none()
    );
}

#[test]
fn thinking_refuses_forced_tool_use_and_modified_temperature() {
    let mut openai = json!({
        "model": "m", "messages": [{"role": "user", "content": "hi"}],
        "tools": [{"type": "function", "function": {"name": "f"}}], "tool_choice": "required"
    });
    let (param, message) = refused(openai.clone(), Some(true));
    assert_eq!(param, "tool_choice");
    assert!(message.contains("forces a tool call"), "{message}");
    openai["tool_choice"] = json!({"type": "function", "function": {"name": "f"}});
    assert_eq!(refused(openai.clone(), Some(true)).0, "tool_choice");
    openai["tool_choice"] = json!("auto");
    assert!(body_with(openai.clone(), Some(true)).is_ok());
    openai["temperature"] = json!(0.2);
    assert_eq!(refused(openai, Some(true)).0, "temperature");
}

#[test]
fn reasoning_details_of_our_format_return_as_thinking_blocks_first() {
    let b = body(with_messages(json!([
        {"role": "user", "content": "weather?"},
        {"role": "assistant", "content": "Let me check.", "reasoning_content": "ignored text",
         "tool_calls": [{"id": "toolu_1", "type": "function", "function": {"name": "w", "arguments": "{}"}}],
         "reasoning_details": [
            {"type": "reasoning.encrypted", "data": "opaque", "format": "anthropic-claude-v1", "index": 1},
            {"type": "reasoning.text", "text": "I should call w.", "signature": "sig-1", "format": "anthropic-claude-v1", "index": 0},
            {"type": "reasoning.encrypted", "data": "gemini-sig", "format": "google-gemini-v1", "index": 0},
            {"type": "reasoning.text", "text": "no signature", "format": "anthropic-claude-v1", "index": 2}
         ]},
        {"role": "tool", "tool_call_id": "toolu_1", "content": "sunny"}
    ])));
    assert_eq!(
        b["messages"][1]["content"],
        json!([
            {"type": "thinking", "thinking": "I should call w.", "signature": "sig-1"},
            {"type": "redacted_thinking", "data": "opaque"},
            {"type": "text", "text": "Let me check."},
            {"type": "tool_use", "id": "toolu_1", "name": "w", "input": {}}
        ])
    );
}

#[test]
fn a_model_that_always_thinks_is_asked_to_think_by_default() {
    use crate::thinking::Thinking;
    let request = chat(with_messages(json!([{"role": "user", "content": "hi"}])));
    let mut always = route();
    always.thinking = ThinkingSupport::Always.into();
    let decided = crate::thinking::decide(&request, &always).unwrap();
    assert_eq!(decided, Thinking::Default { thinks: true });
    let b = body_for(&request, &always, decided).unwrap();
    assert_eq!(
        b["thinking"],
        json!({"type": "enabled", "budget_tokens": 8192})
    );
    let optional = route();
    let decided = crate::thinking::decide(&request, &optional).unwrap();
    let b = body_for(&request, &optional, decided).unwrap();
    assert!(b.get("thinking").is_none());
}

/// A request that arrived on the Messages API: its body as the client wrote it.
fn native_request(client_body: Value, thinking: Option<bool>, budget: Option<u32>) -> ChatRequest {
    ChatRequest {
        model: "claude-sonnet".into(),
        thinking,
        thinking_budget_tokens: budget,
        native: Some(tollgate::v1::NativeRequest {
            protocol: NATIVE_PROTOCOL.into(),
            body_json: client_body.to_string(),
            headers: Default::default(),
        }),
        ..Default::default()
    }
}

fn upstream_body_for(request: &ChatRequest, route: &ResolvedModel) -> Value {
    let thinking = crate::thinking::decide(request, route).unwrap();
    let body = request::upstream_body(request, &Target { route, thinking }).unwrap();
    serde_json::to_value(body).unwrap()
}

#[test]
fn a_native_body_reaches_anthropic_as_written_but_for_model_and_stream() {
    let client = json!({
        "model": "claude-sonnet",
        "max_tokens": 4096,
        "stream": true,
        "system": [{"type": "text", "text": "be brief", "cache_control": {"type": "ephemeral"}}],
        "messages": [{"role": "assistant", "content": [
            {"type": "thinking", "thinking": "t", "signature": "sig=="},
            {"type": "text", "text": "hi"}]}],
        "thinking": {"type": "enabled", "budget_tokens": 2000},
        "context_management": {"edits": []},
    });
    let request = native_request(client.clone(), Some(true), Some(2000));
    let mut expected = client;
    expected["model"] = json!("claude-sonnet-4-5");
    expected.as_object_mut().unwrap().remove("stream");
    assert_eq!(upstream_body_for(&request, &route()), expected);
}

#[test]
fn an_alias_switches_thinking_in_a_native_body() {
    let client = json!({"model": "m", "max_tokens": 4096, "messages": [],
        "thinking": {"type": "enabled", "budget_tokens": 2000}});
    let off = ResolvedModel {
        thinking_override: Some(false),
        ..route()
    };
    let body = upstream_body_for(&native_request(client, Some(true), Some(2000)), &off);
    assert!(body.get("thinking").is_none());

    let on = ResolvedModel {
        thinking_override: Some(true),
        ..route()
    };
    let client = json!({"model": "m", "max_tokens": 4096, "messages": []});
    let body = upstream_body_for(&native_request(client, None, None), &on);
    assert_eq!(
        body["thinking"],
        json!({"type": "enabled", "budget_tokens": 2048})
    );
}

#[test]
fn the_callers_thinking_budget_is_sent_as_given() {
    let mut request = chat(json!({"model": "m", "max_tokens": 8000,
        "messages": [{"role": "user", "content": "hi"}]}));
    request.thinking = Some(true);
    request.thinking_budget_tokens = Some(5000);
    request.top_k = Some(5);
    let body = upstream_body_for(&request, &route());
    assert_eq!(
        (body["thinking"].clone(), body["top_k"].clone()),
        (json!({"type": "enabled", "budget_tokens": 5000}), json!(5))
    );
}

/// A tool loop whose assistant turn lost its signed thinking (the client dropped
/// `reasoning_details`) goes on with thinking off: Anthropic refuses that turn with thinking on.
#[test]
fn a_tool_loop_without_its_signed_thinking_is_sent_with_thinking_off() {
    let call =
        json!({"id": "toolu_1", "type": "function", "function": {"name": "w", "arguments": "{}"}});
    let unsigned = with_messages(json!([
        {"role": "user", "content": "weather?"},
        {"role": "assistant", "content": null, "reasoning_content": "kept by the AI SDK only", "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "toolu_1", "content": "sunny"}
    ]));
    let b = body_with(unsigned.clone(), Some(true)).unwrap();
    assert!(b.get("thinking").is_none(), "{b}");
    // Thinking's own refusals no longer apply to this request.
    let mut forced = unsigned;
    forced["tool_choice"] = json!("required");
    forced["tools"] =
        json!([{"type": "function", "function": {"name": "w", "parameters": {"type": "object"}}}]);
    assert!(
        body_with(forced, Some(true))
            .unwrap()
            .get("thinking")
            .is_none()
    );

    // Signed: thinking stays on.
    let signed = with_messages(json!([
        {"role": "user", "content": "weather?"},
        {"role": "assistant", "content": null, "tool_calls": [call],
         "reasoning_details": [{"type": "reasoning.text", "text": "call w", "signature": "sig", "format": "anthropic-claude-v1", "index": 0}]},
        {"role": "tool", "tool_call_id": "toolu_1", "content": "sunny"}
    ]));
    assert!(body_with(signed, Some(true)).unwrap()["thinking"]["budget_tokens"].is_u64());

    // A finished loop (a user turn after the results) no longer needs it.
    let finished = with_messages(json!([
        {"role": "user", "content": "weather?"},
        {"role": "assistant", "content": null, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "toolu_1", "content": "sunny"},
        {"role": "assistant", "content": "It is sunny."},
        {"role": "user", "content": "thanks"}
    ]));
    assert!(body_with(finished, Some(true)).unwrap()["thinking"]["budget_tokens"].is_u64());
}
