"""What is specific to the `openai` provider kind, against the mock's OpenAI flavour (which refuses
unknown fields, and `max_tokens`/`stop` for reasoning models named o1/o3/o4/gpt-5): limits sent as
max_completion_tokens, the fields only OpenAI knows passed through untouched, structured output,
every tools/tool_choice form, images forwarded as given, and stop refused for reasoning models.
A model is a reasoning model when its configuration says it thinks (`thinking = "always"` or
`"optional"`). Over REST (official SDK and raw HTTP) and gRPC."""

from __future__ import annotations

import json
from decimal import Decimal

import grpc
import httpx
import pytest
from tollgate.v1 import inference_pb2

from grpc_details import bad_request_fields
from harness import PRICES, PROVIDER_KEY, Gateway, auth, nonce, user
from mock_rules import TOOL_ARGUMENTS, TOOL_CALL_ID, cost_usd, echo, expected_usage

TIMEOUT = 30

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather of a city",
        "parameters": {"type": "object", "properties": {"location": {"type": "string"}}, "required": ["location"]},
    },
}

REASONING_MODEL_CONFIG = """
[[models]]
id = "o4-mini"
provider = "openai"
upstream_model = "o4-mini"
owned_by = "openai"
context_length = 200000
max_output_tokens = 100000
input_price = 1.10
cached_input_price = 0.275
output_price = 4.40
thinking = "always"
# Fields that change the price pass through only where the model allows them.
passthrough_allow = ["service_tier", "prediction"]
"""


@pytest.fixture(scope="module")
def gateway(mock, tmp_path_factory):
    gw = Gateway(tmp_path_factory.mktemp("tollgate-openai"), mock, REASONING_MODEL_CONFIG)
    yield gw
    gw.stop()


def post(gateway, key, body: dict) -> httpx.Response:
    return httpx.post(f"{gateway.base_url}/chat/completions", headers=auth(key), json=body, timeout=TIMEOUT)


@pytest.mark.parametrize("model", ["gpt-4.1-mini", "o4-mini"])
@pytest.mark.parametrize("field", ["max_tokens", "max_completion_tokens"])
def test_limits_are_sent_as_max_completion_tokens(client, mock, model, field):
    n = nonce()
    messages = user(f"one two three four {n}")
    resp = client.chat.completions.create(model=model, messages=messages, **{field: 3})
    assert resp.choices[0].finish_reason == "length"
    assert resp.choices[0].message.content == "Echo: one two"
    sent = mock.single_request_with(n)["body"]
    assert sent["max_completion_tokens"] == 3
    assert "max_tokens" not in sent


def test_stop_is_refused_for_reasoning_models_with_400(gateway, key, mock):
    n = nonce()
    r = post(gateway, key, {"model": "o4-mini", "messages": user(f"stop me {n}"), "stop": "END"})
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == "stop"
    assert mock.requests_with(n) == []


def test_stop_temperature_and_top_p_reach_other_models(client, mock):
    n = nonce()
    client.chat.completions.create(model="gpt-4.1-mini", messages=user(f"sample {n}"), stop="END", temperature=0.3, top_p=0.5)
    sent = mock.single_request_with(n)["body"]
    assert (sent["stop"], sent["temperature"], sent["top_p"]) == (["END"], 0.3, 0.5)


def test_fields_only_openai_knows_pass_through(gateway, key, mock):
    """Price-changing ones (service_tier, prediction) because o4-mini's passthrough_allow names
    them."""
    n = nonce()
    fields = {
        "store": True,
        "metadata": {"team": "search"},
        "service_tier": "flex",
        "logit_bias": {"50256": -100},
        "prediction": {"type": "content", "content": "Echo"},
        "verbosity": "low",
        "seed": 42,
        "user": "user-1",
        "safety_identifier": "hashed-user",
        "prompt_cache_key": "cache-key-1",
        "reasoning_effort": "high",
    }
    r = post(gateway, key, {"model": "o4-mini", "messages": user(f"pass it all {n}"), **fields})
    assert r.status_code == 200, r.text
    sent = mock.single_request_with(n)["body"]
    assert {k: sent.get(k) for k in fields} == fields


# What OpenAI's reasoning models answer `unsupported_parameter` for (the gateway refuses it first).
REASONING_MODEL_REFUSES = {"presence_penalty": 0.5, "frequency_penalty": -0.5, "logprobs": True, "top_logprobs": 2}


@pytest.mark.parametrize("field", REASONING_MODEL_REFUSES)
def test_penalties_and_logprobs_are_refused_for_reasoning_models_with_400(gateway, key, mock, field):
    n = nonce()
    r = post(gateway, key, {"model": "o4-mini", "messages": user(f"refuse {field} {n}"), field: REASONING_MODEL_REFUSES[field]})
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert (err["type"], err["param"]) == ("invalid_request_error", field)
    assert "o4-mini" in err["message"]
    assert mock.requests_with(n) == []


def test_penalties_and_logprobs_reach_other_models(gateway, key, mock):
    n = nonce()
    r = post(gateway, key, {"model": "gpt-4.1-mini", "messages": user(f"penalties {n}"), **REASONING_MODEL_REFUSES})
    assert r.status_code == 200, r.text
    sent = mock.single_request_with(n)["body"]
    assert {k: sent.get(k) for k in REASONING_MODEL_REFUSES} == REASONING_MODEL_REFUSES


@pytest.mark.parametrize("field", REASONING_MODEL_REFUSES)
def test_grpc_penalties_and_logprobs_for_a_reasoning_model_are_invalid_argument(inference, key, mock, field):
    n = nonce()
    req = inference_pb2.ChatRequest(
        model="o4-mini", messages=[inference_pb2.Message(role=inference_pb2.ROLE_USER, text=f"refuse {n}")], **{field: REASONING_MODEL_REFUSES[field]}
    )
    with pytest.raises(grpc.RpcError) as err:
        inference.Chat(req, metadata=metadata(key), timeout=TIMEOUT)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert bad_request_fields(err.value) == [field]
    assert mock.requests_with(n) == []


def tool_call(call_id: str) -> dict:
    return {"id": call_id, "type": "function", "function": {"name": "get_weather", "arguments": "{}"}}


@pytest.mark.parametrize(
    "messages, param",
    [
        # A tool message with no assistant tool_calls before it.
        ([{"role": "user", "content": "q"}, {"role": "tool", "tool_call_id": "call_1", "content": "r"}], "messages[1].tool_call_id"),
        # A tool message answering an id the assistant did not call.
        (
            [{"role": "user", "content": "q"}, {"role": "assistant", "content": None, "tool_calls": [tool_call("call_1")]},
             {"role": "tool", "tool_call_id": "call_9", "content": "r"}],
            "messages[2].tool_call_id",
        ),
        # A call left unanswered.
        (
            [{"role": "user", "content": "q"}, {"role": "assistant", "content": None, "tool_calls": [tool_call("call_1"), tool_call("call_2")]},
             {"role": "tool", "tool_call_id": "call_1", "content": "r"}, {"role": "user", "content": "next"}],
            "messages[1].tool_calls[1]",
        ),
    ],
)
def test_tool_messages_that_answer_no_call_are_refused_with_400(gateway, key, mock, messages, param):
    """OpenAI (and the mock) refuse these; the gateway refuses them first, naming the message."""
    n = nonce()
    messages = [*messages[:-1], {**messages[-1], "content": f"{messages[-1]['content']} {n}"}]
    r = post(gateway, key, {"model": "gpt-4.1-mini", "messages": messages, "tools": [WEATHER_TOOL]})
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert (err["type"], err["param"]) == ("invalid_request_error", param)
    assert mock.requests_with(n) == []


def test_user_message_between_tool_results_is_openais_400_relayed(gateway, key, mock):
    """The Anthropic and Gemini adapters merge such a message into the results' turn; OpenAI
    refuses it, so the gateway forwards it and relays OpenAI's 400 with its message."""
    n = nonce()
    messages = [
        {"role": "user", "content": f"q {n}"},
        {"role": "assistant", "content": None, "tool_calls": [tool_call("call_1"), tool_call("call_2")]},
        {"role": "tool", "tool_call_id": "call_1", "content": "r1"},
        {"role": "user", "content": "and"},
        {"role": "tool", "tool_call_id": "call_2", "content": "r2"},
    ]
    r = post(gateway, key, {"model": "gpt-4.1-mini", "messages": messages, "tools": [WEATHER_TOOL]})
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert (err["type"], err["code"]) == ("invalid_request_error", "upstream_rejected")
    assert "must be followed by tool messages responding to each 'tool_call_id'" in err["message"]
    assert "call_2" in err["message"]
    assert len(mock.requests_with(n)) == 1


def test_grpc_tool_message_answering_no_call_is_invalid_argument(inference, key, mock):
    n = nonce()
    req = inference_pb2.ChatRequest(
        model="gpt-4.1-mini",
        messages=[
            inference_pb2.Message(role=inference_pb2.ROLE_USER, text=f"q {n}"),
            inference_pb2.Message(role=inference_pb2.ROLE_TOOL, text="r", tool_call_id="call_1"),
        ],
    )
    with pytest.raises(grpc.RpcError) as err:
        inference.Chat(req, metadata=metadata(key), timeout=TIMEOUT)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert bad_request_fields(err.value) == ["messages[1].tool_call_id"]
    assert mock.requests_with(n) == []


def test_developer_role_is_kept_and_reasoning_fields_are_stripped(client, mock):
    n = nonce()
    messages = [
        {"role": "developer", "content": "Be brief."},
        {"role": "user", "content": "earlier"},
        {
            "role": "assistant",
            "content": "earlier answer",
            "reasoning_content": "from another provider",
            "reasoning_details": [{"type": "reasoning.text", "text": "t", "format": "minimax-v1"}],
        },
        {"role": "user", "content": f"now {n}"},
    ]
    resp = client.chat.completions.create(model="gpt-4.1-mini", messages=messages)
    assert resp.choices[0].message.content == echo(messages)
    sent = mock.single_request_with(n)["body"]["messages"]
    assert [m["role"] for m in sent] == ["developer", "user", "assistant", "user"]
    assert "reasoning_content" not in sent[2] and "reasoning_details" not in sent[2]


@pytest.mark.parametrize(
    "response_format",
    [
        {"type": "json_object"},
        {
            "type": "json_schema",
            "json_schema": {
                "name": "weather",
                "strict": True,
                "schema": {
                    "type": "object",
                    "properties": {"temperature": {"type": "number"}},
                    "required": ["temperature"],
                    "additionalProperties": False,
                },
            },
        },
    ],
)
def test_response_format_passes_through(client, mock, response_format):
    n = nonce()
    client.chat.completions.create(model="gpt-4.1-mini", messages=user(f"json {n}"), response_format=response_format)
    assert mock.single_request_with(n)["body"]["response_format"] == response_format


@pytest.mark.parametrize(
    "tool_choice, calls",
    [
        ("auto", False),
        ("none", False),
        ("required", True),
        ({"type": "function", "function": {"name": "get_weather"}}, True),
    ],
)
@pytest.mark.parametrize("parallel", [True, False])
def test_tool_choice_forms_and_parallel_tool_calls(client, mock, tool_choice, calls, parallel):
    n = nonce()
    tools = [WEATHER_TOOL, {"type": "function", "function": {"name": "get_time", "strict": True, "parameters": {"type": "object", "properties": {}}}}]
    resp = client.chat.completions.create(
        model="gpt-4.1-mini", messages=user(f"tools {n}"), tools=tools, tool_choice=tool_choice, parallel_tool_calls=parallel
    )
    message = resp.choices[0].message
    if calls:
        assert [(c.id, c.function.name, c.function.arguments) for c in message.tool_calls] == [
            (TOOL_CALL_ID, "get_weather", TOOL_ARGUMENTS)
        ]
        assert resp.choices[0].finish_reason == "tool_calls"
    else:
        assert not message.tool_calls
    sent = mock.single_request_with(n)["body"]
    assert (sent["tool_choice"], sent["parallel_tool_calls"], sent["tools"]) == (tool_choice, parallel, tools)


def test_streamed_tool_call_is_reassembled_by_the_sdk(client):
    with client.chat.completions.stream(
        model="gpt-4.1-mini", messages=user(f"weather? {nonce()}"), tools=[WEATHER_TOOL], tool_choice="required"
    ) as stream:
        final = stream.get_final_completion()
    call = final.choices[0].message.tool_calls[0]
    assert (call.id, call.function.name, call.function.arguments) == (TOOL_CALL_ID, "get_weather", TOOL_ARGUMENTS)


@pytest.mark.parametrize(
    "image",
    [
        {"url": "data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR4nGNgYGD4DwABBAEAwS2OUAAAAABJRU5ErkJggg==", "detail": "low"},
        {"url": "https://example.com/cat.png", "detail": "auto"},
    ],
)
def test_images_are_forwarded_as_given(client, mock, image):
    n = nonce()
    content = [{"type": "text", "text": f"what is this {n}"}, {"type": "image_url", "image_url": image}]
    resp = client.chat.completions.create(model="gpt-4.1-mini", messages=[{"role": "user", "content": content}])
    assert resp.choices[0].message.content == f"Echo: what is this {n}"
    assert mock.single_request_with(n)["body"]["messages"][0]["content"] == content


def test_cached_tokens_are_billed_at_the_cache_price(gateway, key):
    messages = user(f"cache me {nonce()} [cache=2]")
    r = post(gateway, key, {"model": "gpt-4.1-mini", "messages": messages})
    assert r.status_code == 200, r.text
    usage = json.loads(r.text, parse_float=Decimal)["usage"]
    want = expected_usage(messages, False)
    assert usage["prompt_tokens_details"]["cached_tokens"] == want.cached_tokens == 2
    assert Decimal(usage["cost"]) == cost_usd(want, PRICES["gpt-4.1-mini"])


@pytest.mark.parametrize("upstream_status, status", [(400, 400), (401, 502), (429, 503), (529, 503), (500, 502)])
@pytest.mark.parametrize("stream", [False, True])
def test_upstream_errors_are_mapped(gateway, key, upstream_status, status, stream):
    r = post(gateway, key, {"model": "gpt-4.1-mini", "messages": user(f"{nonce()} [status={upstream_status}]"), "stream": stream})
    assert r.status_code == status, r.text
    assert PROVIDER_KEY not in r.text


def test_mid_stream_error_ends_the_sse_stream_with_an_error_event(gateway, key):
    with httpx.stream(
        "POST",
        f"{gateway.base_url}/chat/completions",
        headers=auth(key),
        json={"model": "gpt-4.1-mini", "messages": user(f"a b c {nonce()} [stream_error]"), "stream": True},
        timeout=TIMEOUT,
    ) as r:
        assert r.status_code == 200
        events = [e for e in r.read().decode().split("\n\n") if e]
    assert "data: [DONE]" not in events
    assert json.loads(events[-1][len("data: ") :])["error"]["type"] == "upstream_error"


def metadata(key) -> list[tuple[str, str]]:
    return [("authorization", f"Bearer {key.secret}")]


def test_grpc_max_tokens_becomes_max_completion_tokens(inference, key, mock):
    n = nonce()
    req = inference_pb2.ChatRequest(
        model="o4-mini", messages=[inference_pb2.Message(role=inference_pb2.ROLE_USER, text=f"a b c d {n}")], max_tokens=2
    )
    resp = inference.Chat(req, metadata=metadata(key), timeout=TIMEOUT)
    assert resp.choices[0].finish_reason == "length"
    sent = mock.single_request_with(n)["body"]
    assert sent["max_completion_tokens"] == 2 and "max_tokens" not in sent


def test_grpc_stop_for_a_reasoning_model_is_invalid_argument(inference, key):
    req = inference_pb2.ChatRequest(
        model="o4-mini", messages=[inference_pb2.Message(role=inference_pb2.ROLE_USER, text=f"x {nonce()}")], stop=["END"]
    )
    with pytest.raises(grpc.RpcError) as err:
        inference.Chat(req, metadata=metadata(key), timeout=TIMEOUT)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
