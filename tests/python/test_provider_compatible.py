"""The `openai-compatible` provider kind against the mock's quirky compatible-server flavour
(models `compat-*`): every deviation of providers.md section 6 (reasoning under other names or
inline, usage without `choices`, tool-call fragments repeating id and name or lacking index,
`stop` after tool calls, SSE comments, no `[DONE]`, in-band errors) must reach the client as a
clean OpenAI answer, over REST (official SDK) and gRPC. Also DeepSeek's
`insufficient_system_resource` finish reason, which must fail rather than stop silently."""

from __future__ import annotations

import json
from decimal import Decimal

import httpx
import openai
import pytest
from tollgate.v1 import inference_pb2

from harness import Gateway, MockUpstream, auth, extra, nonce, user
from mock_rules import TOOL_ARGUMENTS, TOOL_CALL_ID, cost_usd, echo, expected_usage, reasoning, usage_of

TIMEOUT = 30
MODEL = "compat-llm"
PRICES = ("0.10", "0.10", "0.20")

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather of a city",
        "parameters": {"type": "object", "properties": {"location": {"type": "string"}}, "required": ["location"]},
    },
}


def compatible_config(mock_port: int) -> str:
    return f"""
# A keyless local server (vLLM, Ollama, llama.cpp): no api_key_env.
[[providers]]
name = "local"
kind = "openai-compatible"
base_url = "http://127.0.0.1:{mock_port}/v1"
connect_timeout_secs = 5
first_token_timeout_secs = 20
request_timeout_secs = 60

[[models]]
id = "{MODEL}"
provider = "local"
upstream_model = "compat-llm"
owned_by = "local"
context_length = 32768
max_output_tokens = 8192
input_price = 0.10
cached_input_price = 0.10
output_price = 0.20
passthrough_allow = ["service_tier"]
"""


@pytest.fixture(scope="module")
def mock():
    # The compatible server needs no key: the mock is started without one.
    upstream = MockUpstream(api_key="")
    yield upstream
    upstream.stop()


@pytest.fixture(scope="module")
def gateway(mock, tmp_path_factory):
    gw = Gateway(tmp_path_factory.mktemp("tollgate-compatible"), mock, compatible_config(mock.port))
    yield gw
    gw.stop()


def stream_parts(chunks) -> tuple[str, str]:
    deltas = [c.choices[0].delta for c in chunks if c.choices]
    return "".join(d.content or "" for d in deltas), "".join(extra(d).get("reasoning_content") or "" for d in deltas)


@pytest.mark.parametrize("style", ["reasoning_content", "reasoning", "details", "think"])
def test_reasoning_under_any_name_becomes_reasoning_content(client, style):
    messages = user(f"think in style {nonce()} [reasoning={style}]")
    message = client.chat.completions.create(model=MODEL, messages=messages).choices[0].message
    assert message.content == echo(messages)
    assert extra(message)["reasoning_content"].strip() == reasoning(messages)
    assert "reasoning_details" not in extra(message), "compatible servers' reasoning is not round-tripped"

    content, got_reasoning = stream_parts(client.chat.completions.create(model=MODEL, messages=messages, stream=True))
    assert content == echo(messages)
    assert got_reasoning.strip() == reasoning(messages)


@pytest.mark.parametrize("usage_style", ["null_choices", "missing_choices", "finish"])
def test_usage_is_found_wherever_the_server_puts_it(client, usage_style):
    messages = user(f"count my tokens {nonce()} [usage={usage_style}]")
    chunks = list(
        client.chat.completions.create(model=MODEL, messages=messages, stream=True, stream_options={"include_usage": True})
    )
    assert stream_parts(chunks)[0] == echo(messages)
    assert chunks[-1].choices == []
    assert usage_of(chunks[-1].usage) == expected_usage(messages, False)
    assert [c for c in chunks if c.usage] == [chunks[-1]], "one usage chunk, last"


@pytest.mark.parametrize("usage_style", ["null_choices", "missing_choices", "finish"])
def test_quirky_usage_is_billed_exactly(gateway, usage_style):
    key = gateway.create_key("enterprise")
    messages = user(f"bill me {nonce()} [usage={usage_style}] [reasoning=reasoning]")
    with httpx.stream(
        "POST",
        f"{gateway.base_url}/chat/completions",
        headers=auth(key),
        json={"model": MODEL, "messages": messages, "stream": True},
        timeout=TIMEOUT,
    ) as r:
        assert r.status_code == 200
        r.read()
    want = expected_usage(messages, True, reasoning_reported=False)
    report = json.loads(gateway.usage(key).text, parse_float=Decimal)
    assert (report["total_prompt_tokens"], report["total_completion_tokens"]) == (want.prompt_tokens, want.completion_tokens)
    assert Decimal(report["total_cost_usd"]) == cost_usd(want, PRICES)


def test_unrequested_usage_is_not_passed_on(client):
    chunks = list(client.chat.completions.create(model=MODEL, messages=user(f"no usage {nonce()}"), stream=True))
    assert all(c.usage is None for c in chunks)


def test_sse_comments_blank_lines_and_missing_done_give_a_clean_stream(gateway, key):
    messages = user(f"framing {nonce()}")
    with httpx.stream(
        "POST",
        f"{gateway.base_url}/chat/completions",
        headers=auth(key),
        json={"model": MODEL, "messages": messages, "stream": True},
        timeout=TIMEOUT,
    ) as r:
        assert r.status_code == 200
        body = r.read().decode()
    events = [e for e in body.split("\n\n") if e]
    assert all(e.startswith("data: ") for e in events), events
    assert events[-1] == "data: [DONE]", "the gateway ends the stream properly though the upstream did not"
    chunks = [json.loads(e[len("data: ") :]) for e in events[:-1]]
    assert "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"]) == echo(messages)
    assert [c["choices"][0]["finish_reason"] for c in chunks if c["choices"] and c["choices"][0]["finish_reason"]] == ["stop"]


@pytest.mark.parametrize("whole", [False, True])
def test_streamed_tool_calls_are_reassembled_once_by_the_sdk(client, whole):
    """The server repeats id and name on every fragment, omits index, and finishes with `stop`;
    the SDK (which concatenates every string it sees) must still get one clean call."""
    directive = " [args=whole]" if whole else ""
    with client.chat.completions.stream(
        model=MODEL, messages=user(f"weather? {nonce()}{directive}"), tools=[WEATHER_TOOL], tool_choice="required"
    ) as stream:
        final = stream.get_final_completion()
    calls = final.choices[0].message.tool_calls
    assert [(c.id, c.function.name, c.function.arguments) for c in calls] == [(TOOL_CALL_ID, "get_weather", TOOL_ARGUMENTS)]
    assert final.choices[0].finish_reason == "tool_calls"


def test_non_streamed_tool_call_with_stop_is_reported_as_tool_calls(client, mock):
    n = nonce()
    resp = client.chat.completions.create(model=MODEL, messages=user(f"weather? {n} [tool]"), tools=[WEATHER_TOOL])
    assert resp.choices[0].finish_reason == "tool_calls"
    call = resp.choices[0].message.tool_calls[0]
    assert (call.id, call.function.name, call.function.arguments) == (TOOL_CALL_ID, "get_weather", TOOL_ARGUMENTS)
    assert mock.single_request_with(n)["authorization"] is None, "a keyless provider sends no Authorization"


def test_tool_conversation_is_forwarded(client, mock):
    n = nonce()
    messages = [
        {"role": "user", "content": "weather in Paris?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [{"id": TOOL_CALL_ID, "type": "function", "function": {"name": "get_weather", "arguments": TOOL_ARGUMENTS}}],
        },
        {"role": "tool", "tool_call_id": TOOL_CALL_ID, "content": "22 degrees"},
        {"role": "user", "content": f"and tomorrow? {n}"},
    ]
    resp = client.chat.completions.create(
        model=MODEL, messages=messages, tools=[WEATHER_TOOL], tool_choice="none", parallel_tool_calls=False
    )
    assert resp.choices[0].message.content == echo(messages)
    sent = mock.single_request_with(n)["body"]
    assert [m["role"] for m in sent["messages"]] == ["user", "assistant", "tool", "user"]
    assert sent["messages"][1]["tool_calls"][0]["function"]["arguments"] == TOOL_ARGUMENTS
    assert (sent["tool_choice"], sent["parallel_tool_calls"]) == ("none", False)


def test_developer_role_and_openai_only_fields_are_adapted(client, mock):
    """The server refuses `developer` and OpenAI-only fields (it would answer 400)."""
    n = nonce()
    messages = [{"role": "developer", "content": "Be brief."}, {"role": "user", "content": f"hi {n}"}]
    resp = client.chat.completions.create(
        model=MODEL, messages=messages, store=True, metadata={"k": "v"}, service_tier="auto", seed=7, temperature=0.2
    )
    assert resp.choices[0].message.content == echo(messages)
    sent = mock.single_request_with(n)["body"]
    assert [m["role"] for m in sent["messages"]] == ["system", "user"]
    assert not {"store", "metadata", "service_tier"} & set(sent)
    assert (sent["seed"], sent["temperature"]) == (7, 0.2)


@pytest.mark.parametrize(
    "response_format",
    [{"type": "json_object"}, {"type": "json_schema", "json_schema": {"name": "w", "schema": {"type": "object"}}}],
)
def test_sampling_limits_and_response_format_are_passed_on(client, mock, response_format):
    n = nonce()
    messages = user(f"one two three four {n}")
    resp = client.chat.completions.create(
        model=MODEL, messages=messages, stop=["END"], top_p=0.9, max_tokens=3, response_format=response_format
    )
    assert resp.choices[0].finish_reason == "length"
    assert resp.choices[0].message.content == "Echo: one two"
    sent = mock.single_request_with(n)["body"]
    assert (sent["stop"], sent["top_p"], sent["max_tokens"], sent["response_format"]) == (["END"], 0.9, 3, response_format)


@pytest.mark.parametrize("url", ["data:image/png;base64,iVBORw0KGgo=", "https://example.com/cat.png"])
def test_images_are_forwarded_as_given(client, mock, url):
    n = nonce()
    content = [{"type": "text", "text": f"what is this {n}"}, {"type": "image_url", "image_url": {"url": url}}]
    resp = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": content}])
    assert resp.choices[0].message.content == f"Echo: what is this {n}"
    assert mock.single_request_with(n)["body"]["messages"][0]["content"] == content


def test_mid_stream_error_ends_the_sse_stream_with_an_error_event(gateway, key, client):
    with pytest.raises(openai.APIError) as err:
        for _ in client.chat.completions.create(model=MODEL, messages=user(f"a b c {nonce()} [stream_error]"), stream=True):
            pass
    assert not isinstance(err.value, openai.APIStatusError)
    with httpx.stream(
        "POST",
        f"{gateway.base_url}/chat/completions",
        headers=auth(key),
        json={"model": MODEL, "messages": user(f"a b c {nonce()} [stream_error]"), "stream": True},
        timeout=TIMEOUT,
    ) as r:
        events = [e for e in r.read().decode().split("\n\n") if e]
    assert json.loads(events[-1][len("data: ") :])["error"]["type"] == "upstream_error"


@pytest.mark.parametrize("upstream_status, status", [(400, 400), (401, 502), (429, 503), (500, 502)])
def test_upstream_errors_are_mapped(gateway, key, upstream_status, status):
    r = httpx.post(
        f"{gateway.base_url}/chat/completions",
        headers=auth(key),
        json={"model": MODEL, "messages": user(f"{nonce()} [status={upstream_status}]")},
        timeout=TIMEOUT,
    )
    assert r.status_code == status, r.text


@pytest.mark.parametrize("stream", [False, True])
def test_deepseek_insufficient_system_resource_is_a_retryable_error(gateway, key, stream):
    """DeepSeek's `insufficient_system_resource` finish reason: 503 before the stream starts, an
    error event once content has been streamed; never a silent `stop`."""
    r = httpx.post(
        f"{gateway.base_url}/chat/completions",
        headers=auth(key),
        json={"model": "deepseek-chat", "messages": user(f"busy {nonce()} [finish=insufficient_system_resource]"), "stream": stream},
        timeout=TIMEOUT,
    )
    if not stream:
        assert r.status_code == 503, r.text
        assert r.json()["error"]["type"] == "service_unavailable"
        return
    assert r.status_code == 200
    events = [e for e in r.text.split("\n\n") if e]
    assert "data: [DONE]" not in events
    last = json.loads(events[-1][len("data: ") :])
    assert last["error"]["type"] == "service_unavailable"
    assert "insufficient_system_resource" in last["error"]["message"]


def metadata(key) -> list[tuple[str, str]]:
    return [("authorization", f"Bearer {key.secret}")]


def test_grpc_stream_normalises_the_quirks(inference, key):
    text = f"grpc compat {nonce()} [reasoning=reasoning] [usage=missing_choices]"
    req = inference_pb2.ChatRequest(
        model=MODEL,
        messages=[inference_pb2.Message(role=inference_pb2.ROLE_USER, text=text)],
        stream_options=inference_pb2.StreamOptions(include_usage=True),
    )
    chunks = list(inference.ChatStream(req, metadata=metadata(key), timeout=TIMEOUT))
    assert "".join(c.choices[0].delta.reasoning_content for c in chunks if c.choices) == reasoning(user(text))
    assert "".join(c.choices[0].delta.content for c in chunks if c.choices) == echo(user(text))
    assert chunks[-1].usage.completion_tokens == expected_usage(user(text), True).completion_tokens


def test_grpc_tool_call_stream_has_one_id_and_name(inference, key):
    req = inference_pb2.ChatRequest(
        model=MODEL,
        messages=[inference_pb2.Message(role=inference_pb2.ROLE_USER, text=f"weather? {nonce()}")],
        tools=[
            inference_pb2.Tool(
                type="function",
                function=inference_pb2.FunctionDefinition(
                    name="get_weather", parameters_json=json.dumps(WEATHER_TOOL["function"]["parameters"])
                ),
            )
        ],
        tool_choice=inference_pb2.ToolChoice(mode="required"),
    )
    chunks = list(inference.ChatStream(req, metadata=metadata(key), timeout=TIMEOUT))
    calls = [tc for c in chunks if c.choices for tc in c.choices[0].delta.tool_calls]
    assert [tc.id for tc in calls if tc.HasField("id")] == [TOOL_CALL_ID]
    assert [tc.name for tc in calls if tc.HasField("name")] == ["get_weather"]
    assert "".join(tc.arguments for tc in calls) == TOOL_ARGUMENTS
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].HasField("finish_reason")] == ["tool_calls"]
