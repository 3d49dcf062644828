"""The `minimax` provider kind against the mock's MiniMax flavour (models `MiniMax*`), through the
official OpenAI SDK over REST and the gRPC stubs: reasoning split out and round-tripped in tool
loops, MiniMax's parameter rules, its extras stripped and its in-band `base_resp` failures mapped.
Every test checks what the client got and what the mock received."""

from __future__ import annotations

import json
from decimal import Decimal

import grpc
import httpx
import openai
import pytest
from tollgate.v1 import inference_pb2

from harness import PROVIDER_KEY, Gateway, auth, extra, nonce, user
from mock_rules import TOOL_ARGUMENTS, TOOL_CALL_ID, cost_usd, echo, expected_usage, reasoning, usage_of

TIMEOUT = 30
# Illustrative prices (MiniMax-M2's published list price at the time of writing: USD 0.30 in,
# 1.20 out per 1M tokens; the cached price is illustrative).
PRICES = ("0.30", "0.03", "1.20")
FORMAT = "minimax-v1"

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather of a city",
        "parameters": {"type": "object", "properties": {"location": {"type": "string"}}, "required": ["location"]},
    },
}


def minimax_config(mock_port: int) -> str:
    mock = f"http://127.0.0.1:{mock_port}"
    model = """
[[models]]
id = "{id}"
provider = "{provider}"
upstream_model = "{upstream}"
owned_by = "minimax"
created = 1761523200
context_length = 204800
max_output_tokens = 131072
input_price = 0.30
cached_input_price = 0.03
output_price = 1.20
thinking = "{thinking}"
vision = false
"""
    return (
        f"""
[[providers]]
name = "minimax"
kind = "minimax"
base_url = "{mock}/v1"
api_key_env = "MOCK_OPENAI_KEY"
connect_timeout_secs = 5
first_token_timeout_secs = 20
request_timeout_secs = 60

# MiniMax configured as a plain compatible server: reasoning arrives inline as <think>.
[[providers]]
name = "minimax-compatible"
kind = "openai-compatible"
base_url = "{mock}/v1"
api_key_env = "MOCK_OPENAI_KEY"
"""
        + model.format(id="MiniMax-M2", provider="minimax", upstream="MiniMax-M2", thinking="always")
        + model.format(id="MiniMax-M3", provider="minimax", upstream="MiniMax-M3", thinking="optional")
        + model.format(id="minimax-inline", provider="minimax-compatible", upstream="MiniMax-M2", thinking="always")
        + """
[[aliases]]
id = "minimax-fast"
target = "MiniMax-M3"
thinking = false

[[aliases]]
id = "minimax-think"
target = "MiniMax-M3"
thinking = true
"""
    )


@pytest.fixture(scope="module")
def gateway(mock, tmp_path_factory):
    gw = Gateway(tmp_path_factory.mktemp("tollgate-minimax"), mock, minimax_config(mock.port))
    yield gw
    gw.stop()


def post(gateway, key, body: dict) -> httpx.Response:
    return httpx.post(f"{gateway.base_url}/chat/completions", headers=auth(key), json=body, timeout=TIMEOUT)


# ---------------------------------------------------------------- text, roles, reasoning


def test_text_with_system_and_developer_messages(client, mock):
    n = nonce()
    messages = [
        {"role": "system", "content": "You are terse."},
        {"role": "developer", "content": "Answer in English."},
        {"role": "user", "content": f"hello minimax {n}"},
    ]
    resp = client.chat.completions.create(model="MiniMax-M2", messages=messages, reasoning_effort="high", store=True)
    message = resp.choices[0].message
    assert message.content == echo(messages)
    assert resp.choices[0].finish_reason == "stop"
    assert extra(message)["reasoning_content"] == reasoning(messages)
    assert usage_of(resp.usage) == expected_usage(messages, thinking=True, reasoning_reported=False)

    sent = mock.single_request_with(n)["body"]
    assert [m["role"] for m in sent["messages"]] == ["system", "system", "user"], "developer becomes system"
    assert sent["reasoning_split"] is True
    assert "reasoning_effort" not in sent and "store" not in sent, "fields MiniMax refuses are dropped"


def test_multi_turn_history_is_forwarded(client, mock):
    n = nonce()
    messages = [
        {"role": "user", "content": "first question"},
        {"role": "assistant", "content": "first answer"},
        {"role": "user", "content": f"second question {n}"},
    ]
    resp = client.chat.completions.create(model="MiniMax-M2", messages=messages)
    assert resp.choices[0].message.content == echo(messages)
    assert resp.usage.prompt_tokens == expected_usage(messages, True).prompt_tokens
    sent = mock.single_request_with(n)["body"]["messages"]
    assert [(m["role"], m["content"]) for m in sent] == [(m["role"], m["content"]) for m in messages]


def test_reasoning_details_carry_the_whole_reasoning_and_extras_are_stripped(gateway, key, mock):
    n = nonce()
    messages = user(f"show me the raw body {n}")
    r = post(gateway, key, {"model": "MiniMax-M2", "messages": messages})
    assert r.status_code == 200, r.text
    body = r.json()
    for extra_field in ("base_resp", "input_sensitive", "input_sensitive_type", "output_sensitive", "output_sensitive_type"):
        assert extra_field not in body
    message = body["choices"][0]["message"]
    assert "name" not in message and "audio_content" not in message
    assert message["reasoning_content"] == reasoning(messages)
    assert message["reasoning_details"] == [{"type": "reasoning.text", "text": reasoning(messages), "format": FORMAT}]
    # The mock did add them: the gateway removed them.
    assert mock.single_request_with(n)["body"]["reasoning_split"] is True


def test_streamed_reasoning_arrives_as_reasoning_content_deltas(client):
    messages = user(f"stream your thoughts {nonce()}")
    chunks = list(
        client.chat.completions.create(
            model="MiniMax-M2", messages=messages, stream=True, stream_options={"include_usage": True}
        )
    )
    deltas = [c.choices[0].delta for c in chunks if c.choices]
    reasoning_pieces = [extra(d).get("reasoning_content") for d in deltas if extra(d).get("reasoning_content")]
    assert len(reasoning_pieces) > 1, "reasoning streams incrementally"
    assert "".join(reasoning_pieces) == reasoning(messages)
    assert "".join(d.content or "" for d in deltas) == echo(messages)
    details = [extra(d)["reasoning_details"] for d in deltas if extra(d).get("reasoning_details")]
    assert details == [[{"type": "reasoning.text", "text": reasoning(messages), "format": FORMAT}]]
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["stop"]
    assert usage_of(chunks[-1].usage) == expected_usage(messages, True, reasoning_reported=False)


@pytest.mark.parametrize("stream", [False, True])
def test_inline_think_split_across_chunks_becomes_reasoning_content(client, mock, stream):
    """MiniMax without reasoning_split (here: configured as an openai-compatible provider) puts
    `<think>…</think>` in the content, the mock splitting both tags across chunks."""
    n = nonce()
    messages = user(f"think inline {n}")
    if stream:
        chunks = list(client.chat.completions.create(model="minimax-inline", messages=messages, stream=True))
        deltas = [c.choices[0].delta for c in chunks if c.choices]
        content = "".join(d.content or "" for d in deltas)
        got_reasoning = "".join(extra(d).get("reasoning_content") or "" for d in deltas)
    else:
        message = client.chat.completions.create(model="minimax-inline", messages=messages).choices[0].message
        content, got_reasoning = message.content, extra(message)["reasoning_content"]
    assert content == echo(messages)
    assert got_reasoning.strip() == reasoning(messages)
    assert "reasoning_split" not in mock.single_request_with(n)["body"]


@pytest.mark.parametrize(
    "model, fields, upstream_thinking",
    [
        ("minimax-fast", {}, {"type": "disabled"}),
        ("minimax-think", {}, {"type": "adaptive"}),
        ("MiniMax-M3", {"reasoning_effort": "none"}, {"type": "disabled"}),
        ("MiniMax-M3", {"reasoning_effort": "high"}, {"type": "adaptive"}),
        ("MiniMax-M3", {}, None),
    ],
)
def test_thinking_is_switched_by_alias_or_reasoning_effort(client, mock, model, fields, upstream_thinking):
    n = nonce()
    messages = user(f"to think or not {n}")
    message = client.chat.completions.create(model=model, messages=messages, **fields).choices[0].message
    sent = mock.single_request_with(n)["body"]
    assert sent.get("thinking") == upstream_thinking
    thinks = upstream_thinking != {"type": "disabled"}
    assert extra(message).get("reasoning_content") == (reasoning(messages) if thinks else None)
    assert message.content == echo(messages)


# ---------------------------------------------------------------- tools


def test_tool_loop_sends_the_reasoning_back_as_reasoning_details(client, mock):
    n = nonce()
    messages = user(f"weather in Paris? {n}")
    first = client.chat.completions.create(model="MiniMax-M2", messages=messages, tools=[WEATHER_TOOL], tool_choice="required")
    assert first.choices[0].finish_reason == "tool_calls"
    assistant = first.choices[0].message
    assert assistant.tool_calls[0].id == TOOL_CALL_ID
    assert assistant.tool_calls[0].function.arguments == TOOL_ARGUMENTS
    assert extra(assistant)["reasoning_details"][0]["format"] == FORMAT

    messages.append(assistant)  # the SDK object, unknown fields included
    messages.append({"role": "tool", "tool_call_id": TOOL_CALL_ID, "content": '{"temperature": 22}'})
    second = client.chat.completions.create(model="MiniMax-M2", messages=messages, tools=[WEATHER_TOOL])
    assert second.choices[0].finish_reason == "stop"
    assert second.choices[0].message.content == echo(user(f"weather in Paris? {n}"))

    sent = mock.requests_with(n)[-1]["body"]["messages"]
    assert [m["role"] for m in sent] == ["user", "assistant", "tool"]
    assert sent[1]["reasoning_details"] == [{"type": "reasoning.text", "text": reasoning(user(f"weather in Paris? {n}"))}]
    assert sent[1]["tool_calls"][0]["id"] == TOOL_CALL_ID
    assert "reasoning_content" not in sent[1]


def test_tool_loop_with_only_reasoning_content_still_round_trips(client, mock):
    """A client that kept only `reasoning_content` (as DeepSeek clients do)."""
    n = nonce()
    messages = [
        {"role": "user", "content": f"weather? {n}"},
        {
            "role": "assistant",
            "content": None,
            "reasoning_content": "I should call the tool.",
            "tool_calls": [{"id": TOOL_CALL_ID, "type": "function", "function": {"name": "get_weather", "arguments": TOOL_ARGUMENTS}}],
        },
        {"role": "tool", "tool_call_id": TOOL_CALL_ID, "content": "sunny"},
    ]
    resp = client.chat.completions.create(model="MiniMax-M2", messages=messages, tools=[WEATHER_TOOL])
    assert resp.choices[0].message.content == echo(messages)
    sent = mock.single_request_with(n)["body"]["messages"][1]
    assert sent["reasoning_details"] == [{"type": "reasoning.text", "text": "I should call the tool."}]
    assert "reasoning_content" not in sent


def test_tool_loop_without_the_reasoning_is_refused_by_minimax_as_400(client, mock):
    n = nonce()
    messages = [
        {"role": "user", "content": f"weather? {n}"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [{"id": TOOL_CALL_ID, "type": "function", "function": {"name": "get_weather", "arguments": TOOL_ARGUMENTS}}],
        },
        {"role": "tool", "tool_call_id": TOOL_CALL_ID, "content": "sunny"},
    ]
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model="MiniMax-M2", messages=messages, tools=[WEATHER_TOOL])
    assert "reasoning_details" in err.value.message
    assert len(mock.requests_with(n)) == 1


def test_streamed_tool_call_is_reassembled_by_the_sdk(client):
    messages = user(f"weather in Paris? {nonce()}")
    with client.chat.completions.stream(
        model="MiniMax-M2",
        messages=messages,
        tools=[WEATHER_TOOL],
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
    ) as stream:
        final = stream.get_final_completion()
    call = final.choices[0].message.tool_calls[0]
    assert (call.id, call.function.name, call.function.arguments) == (TOOL_CALL_ID, "get_weather", TOOL_ARGUMENTS)
    assert final.choices[0].finish_reason == "tool_calls"


@pytest.mark.parametrize(
    "tool_choice, calls",
    [("auto", False), ("none", False), ("required", True), ({"type": "function", "function": {"name": "get_weather"}}, True)],
)
def test_tool_choice_forms_and_parallel_tool_calls_pass_through(client, mock, tool_choice, calls):
    n = nonce()
    resp = client.chat.completions.create(
        model="MiniMax-M2", messages=user(f"weather? {n}"), tools=[WEATHER_TOOL], tool_choice=tool_choice, parallel_tool_calls=False
    )
    assert bool(resp.choices[0].message.tool_calls) == calls
    assert resp.choices[0].finish_reason == ("tool_calls" if calls else "stop")
    sent = mock.single_request_with(n)["body"]
    assert sent["tool_choice"] == tool_choice
    assert sent["parallel_tool_calls"] is False
    assert sent["tools"] == [WEATHER_TOOL]


# ---------------------------------------------------------------- parameters


def test_sampling_parameters_stop_and_max_tokens_reach_minimax(client, mock):
    n = nonce()
    messages = user(f"one two three four five {n}")
    resp = client.chat.completions.create(
        model="MiniMax-M2", messages=messages, temperature=0.7, top_p=0.9, stop=["END"], max_tokens=3
    )
    assert resp.choices[0].finish_reason == "length"
    assert resp.choices[0].message.content == "Echo: one two"
    sent = mock.single_request_with(n)["body"]
    assert (sent["temperature"], sent["top_p"], sent["stop"], sent["max_tokens"]) == (0.7, 0.9, ["END"], 3)


@pytest.mark.parametrize(
    "fields, param",
    [({"temperature": 0}, "temperature"), ({"temperature": 1.5}, "temperature"), ({"top_p": 0}, "top_p"), ({"n": 2}, "n")],
)
def test_parameters_minimax_cannot_honour_are_400_naming_the_field(gateway, key, mock, fields, param):
    n = nonce()
    r = post(gateway, key, {"model": "MiniMax-M2", "messages": user(f"bad params {n}"), **fields})
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == param
    assert mock.requests_with(n) == [], "refused before reaching MiniMax"


@pytest.mark.parametrize(
    "response_format",
    [
        {"type": "json_object"},
        {"type": "json_schema", "json_schema": {"name": "w", "schema": {"type": "object", "properties": {"t": {"type": "number"}}}}},
    ],
)
def test_response_format_is_passed_on(client, mock, response_format):
    n = nonce()
    client.chat.completions.create(model="MiniMax-M2", messages=user(f"json please {n}"), response_format=response_format)
    assert mock.single_request_with(n)["body"]["response_format"] == response_format


@pytest.mark.parametrize("url", ["data:image/png;base64,iVBORw0KGgo=", "https://example.com/cat.png"])
def test_images_are_refused_for_models_without_vision(gateway, key, mock, url):
    n = nonce()
    content = [{"type": "text", "text": f"what is this {n}"}, {"type": "image_url", "image_url": {"url": url}}]
    r = post(gateway, key, {"model": "MiniMax-M2", "messages": [{"role": "user", "content": content}]})
    assert r.status_code == 400, r.text
    assert "image" in r.json()["error"]["message"].lower()
    assert mock.requests_with(n) == []


# ---------------------------------------------------------------- usage and billing


def test_cached_tokens_are_billed_at_the_cache_price(gateway, key, mock):
    messages = user(f"cache me please {nonce()} [cache=3]")
    r = post(gateway, key, {"model": "MiniMax-M2", "messages": messages})
    assert r.status_code == 200, r.text
    usage = json.loads(r.text, parse_float=Decimal)["usage"]
    want = expected_usage(messages, True, reasoning_reported=False)
    assert usage["prompt_tokens_details"]["cached_tokens"] == want.cached_tokens == 3
    assert (usage["prompt_tokens"], usage["completion_tokens"]) == (want.prompt_tokens, want.completion_tokens)
    assert Decimal(usage["cost"]) == cost_usd(want, PRICES)


# ---------------------------------------------------------------- errors


@pytest.mark.parametrize(
    "code, status, error_type",
    [
        (1002, 503, "service_unavailable"),
        (1004, 502, "upstream_error"),
        (1008, 502, "upstream_error"),
        (1000, 502, "upstream_error"),
        (1024, 502, "upstream_error"),
        (1001, 504, "upstream_timeout"),
        (2013, 400, "invalid_request_error"),
    ],
)
@pytest.mark.parametrize("stream", [False, True])
def test_base_resp_failures_in_a_200_are_mapped(gateway, key, code, status, error_type, stream):
    r = post(gateway, key, {"model": "MiniMax-M2", "messages": user(f"fail {nonce()} [base_resp={code}]"), "stream": stream})
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert error["type"] == error_type
    assert PROVIDER_KEY not in r.text
    if code == 1008:
        assert "balance" not in error["message"], "our account's balance is not the caller's business"


@pytest.mark.parametrize(
    "upstream_status, status",
    [(400, 400), (401, 502), (429, 503), (500, 502)],
)
def test_http_errors_are_mapped(gateway, key, upstream_status, status):
    r = post(gateway, key, {"model": "MiniMax-M2", "messages": user(f"{nonce()} [status={upstream_status}]")})
    assert r.status_code == status, r.text
    assert PROVIDER_KEY not in r.text


def test_base_resp_event_mid_stream_ends_the_sse_stream_with_an_error(gateway, key, client):
    messages = user(f"one two three four {nonce()} [stream_error]")
    received = []
    with pytest.raises(openai.APIError) as err:
        for chunk in client.chat.completions.create(model="minimax-fast", messages=messages, stream=True):
            if chunk.choices and chunk.choices[0].delta.content:
                received.append(chunk.choices[0].delta.content)
    assert "".join(received) == "Echo: one"
    assert not isinstance(err.value, openai.APIStatusError)

    with httpx.stream(
        "POST",
        f"{gateway.base_url}/chat/completions",
        headers=auth(key),
        json={"model": "minimax-fast", "messages": user(f"a b c {nonce()} [stream_error]"), "stream": True},
        timeout=TIMEOUT,
    ) as r:
        assert r.status_code == 200
        events = [e for e in r.read().decode().split("\n\n") if e]
    assert "data: [DONE]" not in events
    assert json.loads(events[-1][len("data: ") :])["error"]["type"] == "upstream_error"


# ---------------------------------------------------------------- gRPC


def metadata(key) -> list[tuple[str, str]]:
    return [("authorization", f"Bearer {key.secret}")]


def test_grpc_chat_returns_reasoning_and_its_details(inference, key, mock):
    n = nonce()
    text = f"grpc minimax {n}"
    req = inference_pb2.ChatRequest(model="MiniMax-M2", messages=[inference_pb2.Message(role=inference_pb2.ROLE_USER, text=text)])
    resp = inference.Chat(req, metadata=metadata(key), timeout=TIMEOUT)
    message = resp.choices[0].message
    assert message.text == echo(user(text))
    assert message.reasoning_content == reasoning(user(text))
    assert [(d.type, d.text, d.format) for d in message.reasoning_details] == [("reasoning.text", reasoning(user(text)), FORMAT)]
    assert mock.single_request_with(n)["body"]["reasoning_split"] is True


def test_grpc_stream_carries_reasoning_and_in_band_errors_fail_it(inference, key):
    text = f"grpc minimax stream {nonce()}"
    req = inference_pb2.ChatRequest(model="MiniMax-M2", messages=[inference_pb2.Message(role=inference_pb2.ROLE_USER, text=text)])
    chunks = list(inference.ChatStream(req, metadata=metadata(key), timeout=TIMEOUT))
    assert "".join(c.choices[0].delta.reasoning_content for c in chunks if c.choices) == reasoning(user(text))
    assert "".join(c.choices[0].delta.content for c in chunks if c.choices) == echo(user(text))

    bad = inference_pb2.ChatRequest(
        model="MiniMax-M2", messages=[inference_pb2.Message(role=inference_pb2.ROLE_USER, text=f"{nonce()} [base_resp=1002]")]
    )
    with pytest.raises(grpc.RpcError) as err:
        list(inference.ChatStream(bad, metadata=metadata(key), timeout=TIMEOUT))
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
