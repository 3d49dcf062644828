"""The `anthropic` provider kind end to end: the official OpenAI SDK (REST) and the gRPC stubs
against a gateway whose Anthropic provider is the mock's Messages API flavour. Every test checks
what the client got and what the mock received (`GET /_mock/requests`).

Decisions held here (services/inference/src/providers/anthropic/request.rs):
- a tool call without a tool message answering it is a 400 naming messages[i].tool_calls[j];
- temperature > 1, n > 1, logprobs: 400 naming the field (not clamped, not dropped);
- response_format json_object: an instruction appended to Anthropic's `system`;
- thinking budget from reasoning_effort (low 2048, medium/default 8192, high 16384, ...);
- thinking with a forced tool_choice: 400 naming tool_choice.
"""

from __future__ import annotations

import base64
import json
import re
import time
from decimal import Decimal

import grpc
import httpx
import openai
import pytest
from tollgate.v1 import inference_pb2

from grpc_details import error_reason
from harness import PROVIDER_KEY, WRONG_PROVIDER_KEY, Gateway, auth, extra, nonce, user
from mock_rules import (
    ANTHROPIC_TOOL_CALLS,
    CacheUsage,
    anthropic_last_user_text,
    anthropic_prompt_tokens,
    anthropic_signature,
    cost_with_cache_writes_usd,
    words,
)

TIMEOUT = 30
MODEL = "claude-test"
THINKING_ALIAS = "claude-test-thinking"
UPSTREAM_MODEL = "claude-sonnet-4-5"
MAX_OUTPUT_TOKENS = 64000
# USD per 1M tokens (input, cached_input, cache_write, output): Anthropic's Sonnet 4.5 prices.
PRICES = ("3", "0.30", "3.75", "15")
FORMAT = "anthropic-claude-v1"
# A 1x1 PNG.
PNG_B64 = base64.b64encode(
    bytes.fromhex(
        "89504e470d0a1a0a0000000d4948445200000001000000010806000000"
        "1f15c4890000000d49444154789c6360000002000154a24f5d0000000049454e44ae426082"
    )
).decode()

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather in a city",
        "parameters": {"type": "object", "properties": {"location": {"type": "string"}}, "required": ["location"]},
    },
}
CLOCK_TOOL = {"type": "function", "function": {"name": "get_time"}}


def anthropic_config(mock_base: str) -> str:
    prices = 'input_price = 3\ncached_input_price = 0.30\ncache_write_price = 3.75\noutput_price = 15'
    model = f'owned_by = "anthropic"\ncontext_length = 200000\nmax_output_tokens = {MAX_OUTPUT_TOKENS}\n{prices}\nthinking = "optional"'
    return f"""
[[providers]]
name = "anthropic"
kind = "anthropic"
base_url = "{mock_base}/v1"
api_key_env = "MOCK_ANTHROPIC_KEY"
connect_timeout_secs = 5
first_token_timeout_secs = 20
request_timeout_secs = 60

[[providers]]
name = "anthropic-slow"
kind = "anthropic"
base_url = "{mock_base}/v1"
api_key_env = "MOCK_ANTHROPIC_KEY"
connect_timeout_secs = 5
first_token_timeout_secs = 1
request_timeout_secs = 3

[[providers]]
name = "anthropic-badkey"
kind = "anthropic"
base_url = "{mock_base}/v1"
api_key_env = "MOCK_WRONG_KEY"

[[models]]
id = "{MODEL}"
provider = "anthropic"
upstream_model = "{UPSTREAM_MODEL}"
{model}

[[models]]
id = "claude-slow"
provider = "anthropic-slow"
upstream_model = "{UPSTREAM_MODEL}"
{model}

[[models]]
id = "claude-badkey"
provider = "anthropic-badkey"
upstream_model = "{UPSTREAM_MODEL}"
{model}

[[aliases]]
id = "{THINKING_ALIAS}"
target = "{MODEL}"
thinking = true
"""


@pytest.fixture(scope="module")
def gateway(mock, tmp_path_factory):
    gw = Gateway(tmp_path_factory.mktemp("tollgate-anthropic"), mock, extra_config=anthropic_config(mock.base_url))
    yield gw
    gw.stop()


def received(mock, marker: str) -> dict:
    """The one Anthropic request that mentions `marker`, with path and headers checked."""
    r = mock.single_request_with(marker)
    assert r["path"] == "/v1/messages", r["path"]
    assert r["headers"]["x-api-key"] == PROVIDER_KEY
    assert r["headers"]["anthropic-version"] == "2023-06-01"
    assert r["authorization"] is None, "the key goes in x-api-key only"
    return r["body"]


def expected(body: dict, *, completion: int, thinking: bool = False) -> CacheUsage:
    """The usage the mock reports for the request body it received."""
    prompt = anthropic_prompt_tokens(body)
    text = anthropic_last_user_text(body)
    m = re.search(r"\[cache=(\d+)\]", text)
    cached = min(int(m.group(1)), prompt) if m else 0
    w = re.search(r"\[cache_write=(\d+)\]", text)
    written = min(int(w.group(1)), prompt - cached) if w else 0
    reasoning = words(f"Thinking about: {text}") if thinking else 0
    return CacheUsage(prompt, completion + reasoning, cached, written, reasoning)


def usage_from_sdk(u) -> CacheUsage:
    details = u.prompt_tokens_details
    return CacheUsage(
        u.prompt_tokens,
        u.completion_tokens,
        details.cached_tokens or 0,
        extra(details).get("cache_write_tokens") or 0,
        u.completion_tokens_details.reasoning_tokens or 0,
    )


def post(gateway, key, body: dict, timeout: float = TIMEOUT) -> httpx.Response:
    return httpx.post(f"{gateway.base_url}/chat/completions", headers=auth(key), json=body, timeout=timeout)


def assert_error(r: httpx.Response, status: int, type_: str, param: str | None = ...) -> dict:
    assert r.status_code == status, f"expected {status}, got {r.status_code}: {r.text[:500]}"
    err = r.json()["error"]
    assert err["type"] == type_, err
    if param is not ...:
        assert err["param"] == param, err
    return err


def stream_events(gateway, key, body: dict) -> list[dict | str]:
    """The SSE `data:` payloads of a raw streamed answer (`[DONE]` kept as a string)."""
    with httpx.stream(
        "POST", f"{gateway.base_url}/chat/completions", headers=auth(key), json={**body, "stream": True}, timeout=TIMEOUT
    ) as r:
        assert r.status_code == 200, r.read()
        text = r.read().decode()
    out: list[dict | str] = []
    for event in text.split("\n\n"):
        if event.startswith("data: "):
            data = event[len("data: ") :]
            out.append(data if data == "[DONE]" else json.loads(data, parse_float=Decimal))
    return out


# ---- text, system, developer, multi-turn ---------------------------------------------------


def test_text_with_system_and_developer_messages(client, mock):
    n = nonce()
    messages = [
        {"role": "system", "content": "You are terse."},
        {"role": "developer", "content": [{"type": "text", "text": "Follow policy X."}]},
        {"role": "user", "content": f"hello claude {n}"},
    ]
    resp = client.chat.completions.create(model=MODEL, messages=messages)
    body = received(mock, n)
    assert body["model"] == UPSTREAM_MODEL
    assert body["max_tokens"] == MAX_OUTPUT_TOKENS, "Anthropic's required max_tokens defaults from the model"
    assert body["system"] == [{"type": "text", "text": "You are terse."}, {"type": "text", "text": "Follow policy X."}]
    assert body["messages"] == [{"role": "user", "content": [{"type": "text", "text": f"hello claude {n}"}]}]
    assert "stream" not in body and "thinking" not in body
    choice = resp.choices[0]
    assert choice.message.role == "assistant"
    assert choice.message.content == f"Echo: hello claude {n}"
    assert choice.finish_reason == "stop"
    assert resp.model == MODEL and resp.id.startswith("chatcmpl-")
    want = expected(body, completion=words(choice.message.content))
    assert usage_from_sdk(resp.usage) == want
    assert want.prompt_tokens == 3 + 3 + 3


def test_multi_turn_merges_consecutive_turns_and_drops_empty_text(client, mock):
    n = nonce()
    messages = [
        {"role": "user", "content": "first question"},
        {"role": "user", "content": [{"type": "text", "text": ""}, {"type": "text", "text": "more context"}]},
        {"role": "assistant", "content": "first answer"},
        {"role": "assistant", "content": ""},
        {"role": "user", "content": f"second question {n}"},
    ]
    resp = client.chat.completions.create(model=MODEL, messages=messages)
    body = received(mock, n)
    assert body["messages"] == [
        {"role": "user", "content": [{"type": "text", "text": "first question"}, {"type": "text", "text": "more context"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "first answer"}]},
        {"role": "user", "content": [{"type": "text", "text": f"second question {n}"}]},
    ]
    assert resp.choices[0].message.content == f"Echo: second question {n}"


def test_streaming_text_with_usage_chunk(client, mock):
    n = nonce()
    chunks = list(
        client.chat.completions.create(
            model=MODEL, messages=user(f"stream me please {n}"), stream=True, stream_options={"include_usage": True}
        )
    )
    body = received(mock, n)
    assert body["stream"] is True
    assert chunks[0].choices[0].delta.role == "assistant"
    assert len({c.id for c in chunks}) == 1
    content = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert content == f"Echo: stream me please {n}"
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["stop"]
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert usage_from_sdk(chunks[-1].usage) == expected(body, completion=words(content))


# ---- tools -----------------------------------------------------------------------------------


def test_tool_definitions_and_a_tool_call(client, mock):
    n = nonce()
    resp = client.chat.completions.create(
        model=MODEL, messages=user(f"weather in Paris? {n} [tool]"), tools=[WEATHER_TOOL, CLOCK_TOOL]
    )
    body = received(mock, n)
    assert body["tools"] == [
        {"name": "get_weather", "description": "Weather in a city", "input_schema": WEATHER_TOOL["function"]["parameters"]},
        {"name": "get_time", "input_schema": {"type": "object", "properties": {}}},
    ]
    assert "tool_choice" not in body
    choice = resp.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    [call] = choice.message.tool_calls
    assert (call.id, call.type, call.function.name) == ("toolu_mock_0", "function", "get_weather")
    assert json.loads(call.function.arguments) == {"location": "Paris"}


@pytest.mark.parametrize(
    "tool_choice, sent, calls",
    [
        ("auto", {"type": "auto"}, 0),
        ("none", {"type": "none"}, 0),
        ("required", {"type": "any"}, 1),
        ({"type": "function", "function": {"name": "get_time"}}, {"type": "tool", "name": "get_time"}, 1),
    ],
)
def test_each_tool_choice_form(client, mock, tool_choice, sent, calls):
    n = nonce()
    resp = client.chat.completions.create(
        model=MODEL, messages=user(f"pick a tool {n}"), tools=[WEATHER_TOOL, CLOCK_TOOL], tool_choice=tool_choice
    )
    assert received(mock, n)["tool_choice"] == sent
    got = resp.choices[0].message.tool_calls or []
    assert len(got) == calls
    if calls:
        assert resp.choices[0].finish_reason == "tool_calls"
        assert got[0].function.name == (tool_choice["function"]["name"] if isinstance(tool_choice, dict) else "get_weather")
    else:
        assert resp.choices[0].message.content == f"Echo: pick a tool {n}"


@pytest.mark.parametrize("parallel", [None, True, False])
def test_parallel_tool_calls(client, mock, parallel):
    n = nonce()
    fields = {} if parallel is None else {"parallel_tool_calls": parallel}
    resp = client.chat.completions.create(
        model=MODEL, messages=user(f"two cities {n} [tool] [parallel]"), tools=[WEATHER_TOOL, CLOCK_TOOL], **fields
    )
    body = received(mock, n)
    calls = resp.choices[0].message.tool_calls
    if parallel is False:
        assert body["tool_choice"] == {"type": "auto", "disable_parallel_tool_use": True}
        assert [c.id for c in calls] == ["toolu_mock_0"]
    else:
        assert "tool_choice" not in body
        assert [(c.id, c.function.arguments) for c in calls] == list(ANTHROPIC_TOOL_CALLS)
        assert [c.function.name for c in calls] == ["get_weather", "get_time"]


def test_streamed_tool_calls_reassemble_like_openai_deltas(client, mock):
    n = nonce()
    stream = client.chat.completions.create(
        model=MODEL, messages=user(f"stream two calls {n} [tool] [parallel]"), tools=[WEATHER_TOOL, CLOCK_TOOL], stream=True
    )
    calls: dict[int, dict] = {}
    finish = []
    for chunk in stream:
        if not chunk.choices:
            continue
        choice = chunk.choices[0]
        for d in choice.delta.tool_calls or []:
            if d.id is not None:
                assert d.index not in calls, "id and name come once, on the first fragment"
                calls[d.index] = {"id": d.id, "name": d.function.name, "arguments": d.function.arguments or ""}
            else:
                assert d.function.name is None
                calls[d.index]["arguments"] += d.function.arguments
        if choice.finish_reason:
            finish.append(choice.finish_reason)
    received(mock, n)
    assert finish == ["tool_calls"]
    assert [(calls[i]["id"], calls[i]["arguments"]) for i in sorted(calls)] == list(ANTHROPIC_TOOL_CALLS)
    assert [calls[i]["name"] for i in sorted(calls)] == ["get_weather", "get_time"]
    # The SDK's own accumulator agrees.
    with client.chat.completions.stream(
        model=MODEL, messages=user(f"sdk stream {nonce()} [tool]"), tools=[WEATHER_TOOL]
    ) as s:
        final = s.get_final_completion()
    [call] = final.choices[0].message.tool_calls
    assert (call.id, json.loads(call.function.arguments)) == ("toolu_mock_0", {"location": "Paris"})


def test_multi_turn_tool_conversation_puts_tool_results_first(client, mock):
    n = nonce()
    messages = user(f"weather in two cities {n} [tool] [parallel]")
    first = client.chat.completions.create(model=MODEL, messages=messages, tools=[WEATHER_TOOL, CLOCK_TOOL])
    assistant = first.choices[0].message
    messages.append(assistant.model_dump(exclude_none=True))
    messages.append({"role": "tool", "tool_call_id": "toolu_mock_0", "content": "sunny 24C"})
    messages.append({"role": "user", "content": f"and summarise {n}"})
    messages.append({"role": "tool", "tool_call_id": "toolu_mock_1", "content": [{"type": "text", "text": "rain 12C"}]})
    second = client.chat.completions.create(model=MODEL, messages=messages, tools=[WEATHER_TOOL, CLOCK_TOOL])
    body = mock.requests_with(n)[-1]["body"]
    assert body["messages"][1] == {
        "role": "assistant",
        "content": [
            {"type": "tool_use", "id": "toolu_mock_0", "name": "get_weather", "input": {"location": "Paris"}},
            {"type": "tool_use", "id": "toolu_mock_1", "name": "get_time", "input": {"location": "London"}},
        ],
    }
    assert body["messages"][2] == {
        "role": "user",
        "content": [
            {"type": "tool_result", "tool_use_id": "toolu_mock_0", "content": "sunny 24C"},
            {"type": "tool_result", "tool_use_id": "toolu_mock_1", "content": "rain 12C"},
            {"type": "text", "text": f"and summarise {n}"},
        ],
    }
    assert len(body["messages"]) == 3
    assert second.choices[0].message.content == f"Echo: and summarise {n}"
    assert second.usage.prompt_tokens == anthropic_prompt_tokens(body)


def test_tool_call_without_a_result_is_400(gateway, key, mock):
    n = nonce()
    messages = [
        {"role": "user", "content": f"q {n}"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "toolu_x", "type": "function", "function": {"name": "get_weather", "arguments": "{}"}}
        ]},
        {"role": "user", "content": "never mind"},
    ]
    r = post(gateway, key, {"model": MODEL, "messages": messages, "tools": [WEATHER_TOOL]})
    err = assert_error(r, 400, "invalid_request_error", "messages[1].tool_calls[0]")
    assert "toolu_x" in err["message"]
    assert mock.requests_with(n) == []


def test_invalid_tool_arguments_are_400(gateway, key, mock):
    n = nonce()
    messages = [
        {"role": "user", "content": f"q {n}"},
        {"role": "assistant", "tool_calls": [{"id": "t1", "type": "function", "function": {"name": "get_weather", "arguments": "{oops"}}]},
        {"role": "tool", "tool_call_id": "t1", "content": "r"},
    ]
    r = post(gateway, key, {"model": MODEL, "messages": messages, "tools": [WEATHER_TOOL]})
    assert_error(r, 400, "invalid_request_error", "messages[1].tool_calls[0].function.arguments")
    assert mock.requests_with(n) == []


# ---- images ----------------------------------------------------------------------------------


def test_images_as_data_url_and_http_url(client, mock):
    n = nonce()
    content = [
        {"type": "text", "text": f"what is this {n}"},
        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG_B64}"}},
        {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg", "detail": "low"}},
    ]
    resp = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": content}])
    body = received(mock, n)
    assert body["messages"][0]["content"][1:] == [
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG_B64}},
        {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.jpg"}},
    ]
    assert resp.choices[0].message.content == f"Echo: what is this {n}"


def test_image_of_an_unsupported_type_is_400(gateway, key, mock):
    n = nonce()
    content = [{"type": "text", "text": n}, {"type": "image_url", "image_url": {"url": "data:image/bmp;base64,Qk0="}}]
    r = post(gateway, key, {"model": MODEL, "messages": [{"role": "user", "content": content}]})
    err = assert_error(r, 400, "invalid_request_error", "messages[0].content[1].image_url.url")
    assert "image/bmp" in err["message"]
    assert mock.requests_with(n) == []


# ---- sampling, limits, formats ---------------------------------------------------------------


def test_stop_temperature_top_p_and_user(client, mock):
    # Claude 4.5 models take temperature or top_p, not both: each is checked on its own request.
    n = nonce()
    resp = client.chat.completions.create(
        model=MODEL, messages=user(f"one two STOP three {n}"), stop=["STOP"], temperature=0.5, user="user-42"
    )
    body = received(mock, n)
    assert body["stop_sequences"] == ["STOP"]
    assert body["temperature"] == 0.5 and "top_p" not in body
    assert body["metadata"] == {"user_id": "user-42"}
    assert "user" not in body and "stop" not in body
    assert resp.choices[0].message.content == "Echo: one two "
    assert resp.choices[0].finish_reason == "stop"
    n = nonce()
    client.chat.completions.create(model=MODEL, messages=user(f"nucleus {n}"), top_p=0.9)
    body = received(mock, n)
    assert body["top_p"] == 0.9 and "temperature" not in body


BOTH_SAMPLERS = "`temperature` and `top_p` cannot both be specified for this model. Please use only one."


def test_temperature_with_top_p_is_anthropics_400_relayed(gateway, key, mock):
    """Claude 4.5 models refuse both; older ones take both, and the catalogue does not say which
    is which, so the gateway forwards the pair and relays Anthropic's 400 with its message."""
    n = nonce()
    r = post(gateway, key, {"model": MODEL, "messages": user(f"both {n}"), "temperature": 0.5, "top_p": 0.9})
    err = assert_error(r, 400, "invalid_request_error", None)
    assert err["code"] == "upstream_rejected", err
    assert BOTH_SAMPLERS in err["message"], err
    body = received(mock, n)
    assert (body["temperature"], body["top_p"]) == (0.5, 0.9)


def test_max_tokens_truncates_with_finish_reason_length(client, mock):
    n = nonce()
    resp = client.chat.completions.create(model=MODEL, messages=user(f"a b c d e {n}"), max_tokens=500, max_completion_tokens=3)
    body = received(mock, n)
    assert body["max_tokens"] == 3, "max_completion_tokens wins over max_tokens"
    assert resp.choices[0].message.content == "Echo: a b"
    assert resp.choices[0].finish_reason == "length"
    assert resp.usage.completion_tokens == 3


@pytest.mark.parametrize(
    "field, value",
    [("temperature", 1.5), ("n", 2), ("logprobs", True), ("frequency_penalty", 0.5)],
)
def test_fields_anthropic_cannot_honour_are_400(gateway, key, mock, field, value):
    n = nonce()
    r = post(gateway, key, {"model": MODEL, "messages": user(n), field: value})
    assert_error(r, 400, "invalid_request_error", field)
    assert mock.requests_with(n) == []


def test_response_format_json_schema_and_json_object(client, mock):
    n = nonce()
    schema = {"type": "object", "properties": {"answer": {"type": "string"}}, "required": ["answer"]}
    client.chat.completions.create(
        model=MODEL,
        messages=user(f"schema {n}"),
        response_format={"type": "json_schema", "json_schema": {"name": "answer", "schema": schema, "strict": True}},
    )
    assert received(mock, n)["output_config"] == {"format": {"type": "json_schema", "schema": schema}}
    m = nonce()
    client.chat.completions.create(
        model=MODEL, messages=[{"role": "system", "content": "Be terse."}, *user(f"object {m}")], response_format={"type": "json_object"}
    )
    body = received(mock, m)
    assert "output_config" not in body
    assert body["system"][0] == {"type": "text", "text": "Be terse."}
    assert "JSON object" in body["system"][1]["text"]


# ---- thinking --------------------------------------------------------------------------------


def thinking_text(text: str) -> str:
    return f"Thinking about: {text}"


def test_thinking_by_alias_gives_reasoning_content_and_signed_details(client, mock):
    n = nonce()
    text = f"think about it {n}"
    resp = client.chat.completions.create(model=THINKING_ALIAS, messages=user(text))
    body = received(mock, n)
    assert body["thinking"] == {"type": "enabled", "budget_tokens": 8192}
    message = resp.choices[0].message
    assert message.content == f"Echo: {text}"
    assert extra(message)["reasoning_content"] == thinking_text(text)
    assert extra(message)["reasoning_details"] == [
        {"type": "reasoning.text", "text": thinking_text(text), "signature": anthropic_signature(thinking_text(text)), "format": FORMAT, "index": 0}
    ]
    want = expected(body, completion=words(message.content), thinking=True)
    assert usage_from_sdk(resp.usage) == want
    assert want.reasoning_tokens == words(thinking_text(text)) > 0
    assert resp.model == THINKING_ALIAS


@pytest.mark.parametrize("effort, budget", [("low", 2048), ("medium", 8192), ("high", 16384), ("none", None)])
def test_thinking_by_reasoning_effort(client, mock, effort, budget):
    n = nonce()
    resp = client.chat.completions.create(model=MODEL, messages=user(f"effort {n}"), reasoning_effort=effort)
    body = received(mock, n)
    if budget is None:
        assert "thinking" not in body
        assert extra(resp.choices[0].message).get("reasoning_content") is None
    else:
        assert body["thinking"] == {"type": "enabled", "budget_tokens": budget}
        assert extra(resp.choices[0].message)["reasoning_content"] == thinking_text(f"effort {n}")
    assert "reasoning_effort" not in body


def test_thinking_stream_gives_reasoning_deltas_then_the_whole_detail(gateway, key, mock):
    n = nonce()
    text = f"stream thinking {n}"
    events = stream_events(gateway, key, {"model": THINKING_ALIAS, "messages": user(text)})
    received(mock, n)
    assert events[-1] == "[DONE]"
    deltas = [e["choices"][0]["delta"] for e in events[:-1] if e["choices"]]
    assert "".join(d.get("reasoning_content") or "" for d in deltas) == thinking_text(text)
    assert "".join(d.get("content") or "" for d in deltas) == f"Echo: {text}"
    with_details = [i for i, d in enumerate(deltas) if d.get("reasoning_details")]
    assert len(with_details) == 1
    detail = deltas[with_details[0]]["reasoning_details"]
    assert detail == [{"type": "reasoning.text", "text": thinking_text(text), "signature": anthropic_signature(thinking_text(text)), "format": FORMAT, "index": 0}]
    last_reasoning = max(i for i, d in enumerate(deltas) if d.get("reasoning_content"))
    first_text = min(i for i, d in enumerate(deltas) if d.get("content"))
    assert last_reasoning < with_details[0] < first_text


def test_reasoning_round_trip_in_a_tool_loop(client, mock):
    n = nonce()
    messages = user(f"weather with thinking {n} [tool]")
    first = client.chat.completions.create(model=THINKING_ALIAS, messages=messages, tools=[WEATHER_TOOL])
    assert first.choices[0].finish_reason == "tool_calls"
    assistant = first.choices[0].message
    details = extra(assistant)["reasoning_details"]
    # The SDK keeps the unknown fields: the message goes back as it came.
    messages.append(assistant.model_dump(exclude_none=True))
    messages.append({"role": "tool", "tool_call_id": "toolu_mock_0", "content": "sunny"})
    second = client.chat.completions.create(model=THINKING_ALIAS, messages=messages, tools=[WEATHER_TOOL])
    body = mock.requests_with(n)[-1]["body"]
    assert body["messages"][1]["content"] == [
        {"type": "thinking", "thinking": details[0]["text"], "signature": details[0]["signature"]},
        {"type": "tool_use", "id": "toolu_mock_0", "name": "get_weather", "input": {"location": "Paris"}},
    ]
    assert second.choices[0].finish_reason == "tool_calls"

    # Details of another provider's format are dropped, not sent to Anthropic: the turn then has
    # no signed thinking, and the loop goes on with thinking off (see the next test).
    foreign = list(messages)
    foreign[1] = {**messages[1], "reasoning_details": [{**details[0], "format": "google-gemini-v1"}]}
    third = client.chat.completions.create(model=THINKING_ALIAS, messages=foreign, tools=[WEATHER_TOOL])
    assert third.choices[0].finish_reason == "tool_calls"
    body = mock.requests_with(n)[-1]["body"]
    assert "thinking" not in body
    assert [b["type"] for b in body["messages"][1]["content"]] == ["tool_use"]


def test_a_tool_loop_with_thinking_whose_client_drops_reasoning_details(client, mock):
    """Most OpenAI clients (LangChain, the AI SDK) do not send `reasoning_details` back. Anthropic
    refuses the loop's assistant turn without its signed thinking while thinking is on (the mock
    too, shown below), so the gateway sends that request with thinking off: the loop goes on."""
    n = nonce()
    messages = user(f"weather, a client without details {n} [tool]")
    first = client.chat.completions.create(model=THINKING_ALIAS, messages=messages, tools=[WEATHER_TOOL])
    assert first.choices[0].finish_reason == "tool_calls"
    assert mock.requests_with(n)[-1]["body"]["thinking"]["type"] == "enabled"
    call = first.choices[0].message.tool_calls[0]
    # What such a client sends back: content, tool calls and (the AI SDK) reasoning_content only.
    messages.append({
        "role": "assistant",
        "content": first.choices[0].message.content,
        "reasoning_content": extra(first.choices[0].message).get("reasoning_content"),
        "tool_calls": [{"id": call.id, "type": "function", "function": {"name": call.function.name, "arguments": call.function.arguments}}],
    })
    messages.append({"role": "tool", "tool_call_id": call.id, "content": "sunny"})
    second = client.chat.completions.create(model=THINKING_ALIAS, messages=messages, tools=[WEATHER_TOOL])
    assert second.choices[0].finish_reason == "tool_calls"
    assert not extra(second.choices[0].message).get("reasoning_details")
    sent = mock.requests_with(n)[-1]["body"]
    assert "thinking" not in sent
    assert [b["type"] for b in sent["messages"][1]["content"]] == ["tool_use"]

    # The same body with thinking on is what Anthropic refuses, and so does the mock.
    refused = httpx.post(
        f"{mock.base_url}/v1/messages",
        json={**sent, "thinking": {"type": "enabled", "budget_tokens": 1024}, "max_tokens": 4096},
        headers={"x-api-key": PROVIDER_KEY, "anthropic-version": "2023-06-01"},
        timeout=30,
    )
    assert refused.status_code == 400, refused.text
    assert "Expected `thinking` or `redacted_thinking`" in refused.json()["error"]["message"]


def test_reasoning_round_trip_from_a_stream(gateway, key, client, mock):
    n = nonce()
    messages = user(f"streamed thinking tools {n} [tool]")
    events = stream_events(gateway, key, {"model": THINKING_ALIAS, "messages": messages, "tools": [WEATHER_TOOL]})
    deltas = [e["choices"][0]["delta"] for e in events[:-1] if e["choices"]]
    details = [d for delta in deltas for d in delta.get("reasoning_details", [])]
    calls = [c for delta in deltas for c in delta.get("tool_calls", [])]
    arguments = "".join(c["function"].get("arguments", "") for c in calls)
    messages.append({
        "role": "assistant",
        "content": None,
        "reasoning_details": details,
        "tool_calls": [{"id": calls[0]["id"], "type": "function", "function": {"name": calls[0]["function"]["name"], "arguments": arguments}}],
    })
    messages.append({"role": "tool", "tool_call_id": calls[0]["id"], "content": "sunny"})
    resp = client.chat.completions.create(model=THINKING_ALIAS, messages=messages, tools=[WEATHER_TOOL])
    assert resp.choices[0].finish_reason == "tool_calls"
    body = mock.requests_with(n)[-1]["body"]
    assert body["messages"][1]["content"][0]["type"] == "thinking"


def test_thinking_with_a_forced_tool_choice_is_400(gateway, key, mock):
    n = nonce()
    r = post(gateway, key, {"model": THINKING_ALIAS, "messages": user(n), "tools": [WEATHER_TOOL], "tool_choice": "required"})
    err = assert_error(r, 400, "invalid_request_error", "tool_choice")
    assert "thinking" in err["message"]
    assert mock.requests_with(n) == []


# ---- finish reasons, usage, cost ---------------------------------------------------------------


@pytest.mark.parametrize(
    "suffix, fields, finish",
    [
        ("", {}, "stop"),
        ("[tool]", {"tools": [WEATHER_TOOL]}, "tool_calls"),
        ("", {"max_tokens": 2}, "length"),
        ("halt here", {"stop": ["halt"]}, "stop"),
        ("[refusal]", {}, "content_filter"),
    ],
)
@pytest.mark.parametrize("stream", [False, True])
def test_finish_reasons_are_mapped(client, mock, suffix, fields, finish, stream):
    n = nonce()
    if stream:
        chunks = list(client.chat.completions.create(model=MODEL, messages=user(f"x y {n} {suffix}"), stream=True, **fields))
        got = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    else:
        got = [client.chat.completions.create(model=MODEL, messages=user(f"x y {n} {suffix}"), **fields).choices[0].finish_reason]
    received(mock, n)
    assert got == [finish]


@pytest.mark.parametrize("stream", [False, True])
def test_cache_reads_and_writes_are_billed_exactly(gateway, key, mock, stream):
    n = nonce()
    text = f"a long cached prompt with many words {n} [cache=4] [cache_write=3]"
    body = {"model": MODEL, "messages": user(text)}
    if stream:
        events = stream_events(gateway, key, {**body, "stream_options": {"include_usage": True}})
        usage = events[-2]["usage"]
    else:
        r = post(gateway, key, body)
        assert r.status_code == 200, r.text
        usage = json.loads(r.text, parse_float=Decimal)["usage"]
    sent = received(mock, n)
    completion = words(f"Echo: {text}")
    want = expected(sent, completion=completion)
    assert (want.cached_tokens, want.cache_write_tokens) == (4, 3)
    assert usage["prompt_tokens"] == want.prompt_tokens
    assert usage["completion_tokens"] == completion
    assert usage["total_tokens"] == want.prompt_tokens + completion
    assert usage["prompt_tokens_details"] == {"cached_tokens": 4, "cache_write_tokens": 3}
    assert Decimal(usage["cost"]) == cost_with_cache_writes_usd(want, PRICES)


# ---- errors ------------------------------------------------------------------------------------


# The upstream statuses routing retries (routing.rs `retryable`).
RETRIED_STATUSES = {429, 500, 502, 503, 504, 529}


@pytest.mark.parametrize(
    "status, expected_status, type_",
    [
        (400, 400, "invalid_request_error"),
        (413, 400, "invalid_request_error"),
        (401, 502, "upstream_error"),
        (403, 502, "upstream_error"),
        (429, 503, "service_unavailable"),
        (529, 503, "service_unavailable"),
        (500, 502, "upstream_error"),
        (504, 504, "upstream_timeout"),
    ],
)
@pytest.mark.parametrize("stream", [False, True])
def test_upstream_errors_are_mapped(gateway, key, mock, status, expected_status, type_, stream):
    n = nonce()
    r = post(gateway, key, {"model": MODEL, "messages": user(f"{n} [status={status}]"), "stream": stream})
    err = assert_error(r, expected_status, type_)
    assert PROVIDER_KEY not in r.text
    if expected_status == 400:
        assert f"mock upstream error {status}" in err["message"], "the caller's mistake comes with Anthropic's message"
    if status in RETRIED_STATUSES:
        # A failure another attempt may not meet: routing retries it (the model's one deployment,
        # [routing] max_attempts = 3 by default) before the error reaches the caller.
        assert len(mock.requests_with(n)) == 3
    else:
        received(mock, n)


def test_wrong_provider_key_is_502_without_leaking_it(gateway, key, mock):
    n = nonce()
    r = post(gateway, key, {"model": "claude-badkey", "messages": user(n)})
    assert_error(r, 502, "upstream_error")
    assert WRONG_PROVIDER_KEY not in r.text and PROVIDER_KEY not in r.text
    assert mock.single_request_with(n)["headers"]["x-api-key"] == WRONG_PROVIDER_KEY


@pytest.mark.parametrize("stream", [False, True])
def test_slow_upstream_is_504(gateway, key, stream):
    started = time.monotonic()
    r = post(gateway, key, {"model": "claude-slow", "messages": user(f"{nonce()} [delay_ms=4000]"), "stream": stream})
    assert_error(r, 504, "upstream_timeout")
    assert time.monotonic() - started < 3.5


def test_in_stream_error_event_ends_the_stream(gateway, key, client, mock):
    n = nonce()
    events = stream_events(gateway, key, {"model": MODEL, "messages": user(f"one two three four {n} [stream_error]")})
    received(mock, n)
    assert "[DONE]" not in events
    assert set(events[-1]) == {"error"}
    assert events[-1]["error"]["type"] == "upstream_error"
    assert "mock mid-stream failure" in events[-1]["error"]["message"]
    got = []
    with pytest.raises(openai.APIError) as err:
        for chunk in client.chat.completions.create(model=MODEL, messages=user(f"one two three {nonce()} [stream_error]"), stream=True):
            if chunk.choices and chunk.choices[0].delta.content:
                got.append(chunk.choices[0].delta.content)
    assert "".join(got) == "Echo: one"
    assert not isinstance(err.value, openai.APIStatusError)


# ---- gRPC --------------------------------------------------------------------------------------


def metadata(key) -> list[tuple[str, str]]:
    return [("authorization", f"Bearer {key.secret}")]


def test_grpc_chat_with_system_and_cache_usage(inference, key, mock):
    n = nonce()
    text = f"grpc claude {n} [cache=2] [cache_write=1]"
    request = inference_pb2.ChatRequest(
        model=MODEL,
        messages=[
            inference_pb2.Message(role=inference_pb2.ROLE_SYSTEM, text="Be terse."),
            inference_pb2.Message(role=inference_pb2.ROLE_USER, text=text),
        ],
        stop=["never"],
    )
    resp = inference.Chat(request, metadata=metadata(key), timeout=TIMEOUT)
    body = received(mock, n)
    assert body["system"] == [{"type": "text", "text": "Be terse."}]
    assert body["stop_sequences"] == ["never"]
    assert resp.choices[0].message.text == f"Echo: {text}"
    assert resp.choices[0].finish_reason == "stop"
    want = expected(body, completion=words(f"Echo: {text}"))
    u = resp.usage
    assert (u.prompt_tokens, u.completion_tokens, u.cached_prompt_tokens, u.cache_write_tokens) == (
        want.prompt_tokens, want.completion_tokens, 2, 1
    )
    assert Decimal(u.cost_picodollars) == cost_with_cache_writes_usd(want, PRICES) * Decimal(10**12)


def test_grpc_stream_with_thinking_and_tool_calls(inference, key, mock):
    n = nonce()
    text = f"grpc tools {n} [tool]"
    request = inference_pb2.ChatRequest(
        model=THINKING_ALIAS,
        messages=[inference_pb2.Message(role=inference_pb2.ROLE_USER, text=text)],
        tools=[inference_pb2.Tool(type="function", function=inference_pb2.FunctionDefinition(
            name="get_weather", parameters_json=json.dumps(WEATHER_TOOL["function"]["parameters"])))],
    )
    chunks = list(inference.ChatStream(request, metadata=metadata(key), timeout=TIMEOUT))
    body = received(mock, n)
    assert body["thinking"]["type"] == "enabled"
    deltas = [c.choices[0].delta for c in chunks if c.choices]
    assert deltas[0].role == inference_pb2.ROLE_ASSISTANT
    assert "".join(d.reasoning_content for d in deltas) == thinking_text(text)
    [detail] = [r for d in deltas for r in d.reasoning_details]
    assert (detail.type, detail.signature, detail.format) == ("reasoning.text", anthropic_signature(thinking_text(text)), FORMAT)
    calls = [c for d in deltas for c in d.tool_calls]
    assert calls[0].id == "toolu_mock_0" and calls[0].name == "get_weather"
    assert all(c.index == 0 for c in calls)
    assert "".join(c.arguments for c in calls) == '{"location":"Paris"}'
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].HasField("finish_reason")] == ["tool_calls"]


@pytest.mark.parametrize("status, code", [(529, grpc.StatusCode.UNAVAILABLE), (400, grpc.StatusCode.INVALID_ARGUMENT), (401, grpc.StatusCode.UNAVAILABLE)])
def test_grpc_upstream_errors(inference, key, status, code):
    request = inference_pb2.ChatRequest(
        model=MODEL, messages=[inference_pb2.Message(role=inference_pb2.ROLE_USER, text=f"{nonce()} [status={status}]")]
    )
    with pytest.raises(grpc.RpcError) as err:
        inference.Chat(request, metadata=metadata(key), timeout=TIMEOUT)
    assert err.value.code() == code
    assert PROVIDER_KEY not in (err.value.details() or "")


def test_grpc_temperature_with_top_p_is_anthropics_400_relayed(inference, key, mock):
    n = nonce()
    request = inference_pb2.ChatRequest(
        model=MODEL, messages=[inference_pb2.Message(role=inference_pb2.ROLE_USER, text=f"both {n}")], temperature=0.5, top_p=0.9
    )
    with pytest.raises(grpc.RpcError) as err:
        inference.Chat(request, metadata=metadata(key), timeout=TIMEOUT)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert BOTH_SAMPLERS in err.value.details()
    assert error_reason(err.value) == "invalid_request_error"
    assert received(mock, n)["top_p"] == 0.9


def test_grpc_n_above_one_is_invalid_argument(inference, key, mock):
    n = nonce()
    request = inference_pb2.ChatRequest(model=MODEL, messages=[inference_pb2.Message(role=inference_pb2.ROLE_USER, text=n)], n=2)
    with pytest.raises(grpc.RpcError) as err:
        inference.Chat(request, metadata=metadata(key), timeout=TIMEOUT)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert mock.requests_with(n) == []
