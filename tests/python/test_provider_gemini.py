"""The `gemini` provider kind end to end: the official OpenAI SDK (REST) and the gRPC stubs against
a gateway whose Gemini provider points at the mock's Gemini flavour (tests/src/mock_upstream/
gemini.rs), asserting both what the client got and what the mock received (Gemini's wire form).

The mock's Gemini rules (beyond mock_rules.py): tokens are the words of every text part sent
(system instruction, user and model text; function responses and images count 0); thinking
(`includeThoughts: true`) adds the thought `Thinking about: <last user text>` counted as
thoughtsTokenCount (completion and reasoning tokens), a thoughtSignature on the first function
call or the first text part; a function call costs 1 token (the arguments `{"location":"Paris"}`).
"""

from __future__ import annotations

import base64
import json
from decimal import Decimal

import grpc
import httpx
import openai
import pytest
from tollgate.v1 import inference_pb2

from harness import PROVIDER_KEY, WRONG_PROVIDER_KEY, Gateway, auth, nonce, user
from mock_rules import TOOL_ARGUMENTS, Usage, cost_usd, echo, last_user_text, message_text, usage_of, words

TIMEOUT = 30
MODEL = "gemini-2.5-flash"
THINKING_ALIAS = "gemini-flash-thinking"
# Google's published list prices for Gemini 2.5 Flash (text input, cached input, output), USD per 1M.
PRICES = ("0.30", "0.03", "2.50")
FORMAT = "google-gemini-v1"
PNG_BASE64 = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg=="


def gemini_config(mock: str) -> str:
    """Providers and models of this module (appended to the harness's config)."""
    return f"""
# The mock demands one key (PROVIDER_KEY), which the harness exports as MOCK_DEEPSEEK_KEY.
[[providers]]
name = "gemini"
kind = "gemini"
base_url = "{mock}/v1beta"
api_key_env = "MOCK_DEEPSEEK_KEY"
connect_timeout_secs = 5
first_token_timeout_secs = 20
request_timeout_secs = 60

[[providers]]
name = "gemini-badkey"
kind = "gemini"
base_url = "{mock}/v1beta"
api_key_env = "MOCK_WRONG_KEY"

[[providers]]
name = "gemini-slow"
kind = "gemini"
base_url = "{mock}/v1beta"
api_key_env = "MOCK_DEEPSEEK_KEY"
connect_timeout_secs = 5
first_token_timeout_secs = 1
request_timeout_secs = 3

[[models]]
id = "{MODEL}"
provider = "gemini"
upstream_model = "gemini-2.5-flash"
owned_by = "google"
created = 1750118400
context_length = 1048576
max_output_tokens = 65536
input_price = 0.30
cached_input_price = 0.03
output_price = 2.50
thinking = "optional"
vision = true

[[models]]
id = "gemini-badkey"
provider = "gemini-badkey"
upstream_model = "gemini-2.5-flash"
context_length = 1048576
max_output_tokens = 65536
input_price = 0.30
output_price = 2.50
thinking = "optional"

[[models]]
id = "gemini-slow"
provider = "gemini-slow"
upstream_model = "gemini-2.5-flash"
context_length = 1048576
max_output_tokens = 65536
input_price = 0.30
output_price = 2.50
thinking = "optional"

[[aliases]]
id = "{THINKING_ALIAS}"
target = "{MODEL}"
thinking = true
"""


# Tests fetch images from the mock on 127.0.0.1; the size limit is below the mock's 2 MiB image.
IMAGES_FOR_TESTS = """
[images]
allow_private_networks = true
max_bytes = 1048576
timeout_secs = 5
"""


@pytest.fixture(scope="module")
def gateway(mock, tmp_path_factory) -> Gateway:
    gw = Gateway(tmp_path_factory.mktemp("tollgate-gemini"), mock, extra_config=gemini_config(mock.base_url) + IMAGES_FOR_TESTS)
    yield gw
    gw.stop()


def signature_for(name: str) -> str:
    """The thought signature the mock issues for a call of `name` ("text" for text)."""
    return base64.b64encode(f"mock-thought-signature:{name}".encode()).decode()


def thought(messages: list[dict]) -> str:
    return f"Thinking about: {last_user_text(messages)}"


def prompt_tokens(messages: list[dict]) -> int:
    return max(1, sum(words(message_text(m)) for m in messages if m["role"] != "tool"))


def expected(messages: list[dict], *, thinking: bool = False, answer_tokens: int | None = None, candidates: int = 1) -> Usage:
    prompt = prompt_tokens(messages)
    text = last_user_text(messages)
    cached = 0
    if "[cache=" in text:
        cached = min(int(text.split("[cache=", 1)[1].split("]", 1)[0]), prompt)
    answer = words(echo(messages)) if answer_tokens is None else answer_tokens
    reasoning = words(thought(messages)) if thinking else 0
    return Usage(prompt, answer * candidates + reasoning, cached, reasoning)


WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather",
        "parameters": {"type": "object", "properties": {"location": {"type": "string"}}, "required": ["location"]},
    },
}
TIME = {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object", "properties": {}}}}


def received(mock, marker: str) -> dict:
    return mock.single_request_with(marker)


def received_all(mock, marker: str) -> list[dict]:
    return mock.requests_with(marker)


# ---- text, system, developer, multi-turn ----------------------------------------------------


def test_text_with_system_and_developer_messages(client, mock):
    n = nonce()
    messages = [
        {"role": "system", "content": "You are terse."},
        {"role": "developer", "content": [{"type": "text", "text": "Follow policy X."}]},
        {"role": "user", "content": f"hello gemini {n} [cache=2]"},
    ]
    resp = client.chat.completions.create(model=MODEL, messages=messages)
    assert resp.choices[0].message.content == echo(messages)
    assert resp.choices[0].finish_reason == "stop"
    want = expected(messages)
    assert usage_of(resp.usage) == want and want.cached_tokens == 2
    assert Decimal(str(resp.usage.model_extra["cost"])) == cost_usd(want, PRICES)

    got = received(mock, n)
    assert got["path"] == "/v1beta/models/gemini-2.5-flash:generateContent"
    assert got["body"] == {
        "systemInstruction": {"parts": [{"text": "You are terse."}, {"text": "Follow policy X."}]},
        "contents": [{"role": "user", "parts": [{"text": f"hello gemini {n} [cache=2]"}]}],
    }


def test_multi_turn_history_merges_roles_and_drops_empty_text(client, mock):
    n = nonce()
    messages = [
        {"role": "user", "content": "first question"},
        {"role": "user", "content": ""},
        {"role": "assistant", "content": "first answer"},
        {"role": "system", "content": "late system note"},
        {"role": "user", "content": f"second question {n}"},
    ]
    resp = client.chat.completions.create(model=MODEL, messages=messages)
    assert resp.choices[0].message.content == echo(messages)
    assert usage_of(resp.usage) == expected(messages)
    body = received(mock, n)["body"]
    assert body["systemInstruction"] == {"parts": [{"text": "late system note"}]}
    assert body["contents"] == [
        {"role": "user", "parts": [{"text": "first question"}]},
        {"role": "model", "parts": [{"text": "first answer"}]},
        {"role": "user", "parts": [{"text": f"second question {n}"}]},
    ]


def test_streamed_text_arrives_in_pieces_with_usage(client, mock):
    n = nonce()
    messages = user(f"stream me please {n} [cache=1]")
    chunks = list(client.chat.completions.create(model=MODEL, messages=messages, stream=True, stream_options={"include_usage": True}))
    assert received(mock, n)["path"] == "/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse"
    assert chunks[0].choices[0].delta.role == "assistant"
    content_chunks = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert len(content_chunks) == words(echo(messages))
    assert "".join(content_chunks) == echo(messages)
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["stop"]
    assert chunks[-1].choices == []
    want = expected(messages)
    assert usage_of(chunks[-1].usage) == want
    assert Decimal(str(chunks[-1].usage.model_extra["cost"])) == cost_usd(want, PRICES)


# ---- parameters ------------------------------------------------------------------------------


def test_sampling_parameters_reach_generation_config(client, mock):
    n = nonce()
    messages = user(f"alpha beta STOP gamma {n}")
    resp = client.chat.completions.create(
        model=MODEL, messages=messages, stop=["STOP"], temperature=0.4, top_p=0.8, seed=11, presence_penalty=0.5, frequency_penalty=0.25
    )
    # The mock cut its answer before the stop sequence.
    assert resp.choices[0].message.content == "Echo: alpha beta "
    assert resp.choices[0].finish_reason == "stop"
    assert usage_of(resp.usage) == expected(messages, answer_tokens=3)
    assert received(mock, n)["body"]["generationConfig"] == {
        "stopSequences": ["STOP"],
        "temperature": 0.4,
        "topP": 0.8,
        "seed": 11,
        "presencePenalty": 0.5,
        "frequencyPenalty": 0.25,
    }


@pytest.mark.parametrize("field", ["max_tokens", "max_completion_tokens"])
def test_max_tokens_cuts_the_answer_with_length(client, mock, field):
    n = nonce()
    messages = user(f"one two three four five {n}")
    resp = client.chat.completions.create(model=MODEL, messages=messages, **{field: 3})
    assert resp.choices[0].message.content == "Echo: one two"
    assert resp.choices[0].finish_reason == "length"
    assert usage_of(resp.usage) == expected(messages, answer_tokens=3)
    assert received(mock, n)["body"]["generationConfig"] == {"maxOutputTokens": 3}


def test_n_asks_for_candidates_and_returns_choices(client, mock):
    n = nonce()
    messages = user(f"twice please {n}")
    resp = client.chat.completions.create(model=MODEL, messages=messages, n=2)
    assert [c.index for c in resp.choices] == [0, 1]
    assert all(c.message.content == echo(messages) for c in resp.choices)
    assert usage_of(resp.usage) == expected(messages, candidates=2)
    assert received(mock, n)["body"]["generationConfig"] == {"candidateCount": 2}


def test_response_format_json_object_and_json_schema(client, mock):
    n1, n2 = nonce(), nonce()
    client.chat.completions.create(model=MODEL, messages=user(f"json please {n1}"), response_format={"type": "json_object"})
    assert received(mock, n1)["body"]["generationConfig"] == {"responseMimeType": "application/json"}
    schema = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
    client.chat.completions.create(
        model=MODEL,
        messages=user(f"schema please {n2}"),
        response_format={"type": "json_schema", "json_schema": {"name": "city", "schema": schema, "strict": True}},
    )
    assert received(mock, n2)["body"]["generationConfig"] == {"responseMimeType": "application/json", "responseJsonSchema": schema}


# ---- tools -----------------------------------------------------------------------------------


def test_tool_definitions_and_a_tool_call(client, mock):
    n = nonce()
    resp = client.chat.completions.create(model=MODEL, messages=user(f"weather? {n} [tool]"), tools=[WEATHER])
    choice = resp.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    (call,) = choice.message.tool_calls
    assert call.id.startswith("call_") and call.type == "function"
    assert call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == json.loads(TOOL_ARGUMENTS)
    body = received(mock, n)["body"]
    assert body["tools"] == [
        {"functionDeclarations": [{"name": "get_weather", "description": "Current weather", "parametersJsonSchema": WEATHER["function"]["parameters"]}]}
    ]
    assert "toolConfig" not in body
    assert usage_of(resp.usage) == expected(user(f"weather? {n} [tool]"), answer_tokens=1)


@pytest.mark.parametrize(
    "tool_choice, config, called",
    [
        ("auto", {"mode": "AUTO"}, None),
        ("none", {"mode": "NONE"}, None),
        ("required", {"mode": "ANY"}, "get_weather"),
        ({"type": "function", "function": {"name": "get_time"}}, {"mode": "ANY", "allowedFunctionNames": ["get_time"]}, "get_time"),
    ],
)
def test_each_tool_choice_form(client, mock, tool_choice, config, called):
    n = nonce()
    messages = user(f"pick a tool {n}")
    resp = client.chat.completions.create(model=MODEL, messages=messages, tools=[WEATHER, TIME], tool_choice=tool_choice)
    assert received(mock, n)["body"]["toolConfig"] == {"functionCallingConfig": config}
    choice = resp.choices[0]
    if called is None:
        assert choice.finish_reason == "stop" and choice.message.content == echo(messages)
        assert not choice.message.tool_calls
    else:
        assert choice.finish_reason == "tool_calls"
        assert [c.function.name for c in choice.message.tool_calls] == [called]


def test_parallel_tool_calls_and_their_round_trip(client, mock):
    n = nonce()
    messages = user(f"weather and time {n} [parallel]")
    # Gemini has no switch for parallel calls: the field is accepted and not sent upstream.
    resp = client.chat.completions.create(model=MODEL, messages=messages, tools=[WEATHER, TIME], parallel_tool_calls=True)
    calls = resp.choices[0].message.tool_calls
    assert [c.function.name for c in calls] == ["get_weather", "get_time"]
    assert len({c.id for c in calls}) == 2
    assert "parallel_tool_calls" not in json.dumps(received(mock, n)["body"])

    history = messages + [resp.choices[0].message.model_dump(exclude_none=True)]
    # Answered in the other order: the gateway puts the responses in the calls' order.
    history.append({"role": "tool", "tool_call_id": calls[1].id, "content": "12:00"})
    history.append({"role": "tool", "tool_call_id": calls[0].id, "content": '{"temp": "22C"}'})
    final = client.chat.completions.create(model=MODEL, messages=history, tools=[WEATHER, TIME])
    assert final.choices[0].message.content == echo(history)
    assert final.choices[0].finish_reason == "stop"
    second = received_all(mock, n)[-1]["body"]
    assert second["contents"][1:] == [
        {
            "role": "model",
            "parts": [
                {"functionCall": {"name": "get_weather", "args": {"location": "Paris"}}},
                {"functionCall": {"name": "get_time", "args": {"location": "Paris"}}},
            ],
        },
        {
            "role": "user",
            "parts": [
                {"functionResponse": {"name": "get_weather", "response": {"temp": "22C"}}},
                {"functionResponse": {"name": "get_time", "response": {"output": "12:00"}}},
            ],
        },
    ]


def test_streamed_tool_calls_are_reassembled_by_the_sdk(client, mock):
    n = nonce()
    with client.chat.completions.stream(model=MODEL, messages=user(f"stream a call {n} [parallel]"), tools=[WEATHER, TIME]) as stream:
        final = stream.get_final_completion()
    choice = final.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert [(c.function.name, json.loads(c.function.arguments)) for c in choice.message.tool_calls] == [
        ("get_weather", {"location": "Paris"}),
        ("get_time", {"location": "Paris"}),
    ]
    assert all(c.id.startswith("call_") for c in choice.message.tool_calls)


def test_tool_round_trip_in_a_stream(client, mock):
    n = nonce()
    messages = user(f"stream loop {n} [tool]")
    chunks = list(client.chat.completions.create(model=MODEL, messages=messages, tools=[WEATHER], stream=True))
    deltas = [tc for c in chunks if c.choices for tc in (c.choices[0].delta.tool_calls or [])]
    assert len(deltas) == 1 and deltas[0].index == 0 and deltas[0].function.name == "get_weather"
    call_id = deltas[0].id
    history = messages + [
        {"role": "assistant", "content": None, "tool_calls": [{"id": call_id, "type": "function", "function": {"name": "get_weather", "arguments": deltas[0].function.arguments}}]},
        {"role": "tool", "tool_call_id": call_id, "content": "sunny"},
    ]
    final = client.chat.completions.create(model=MODEL, messages=history, tools=[WEATHER], stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in final if c.choices) == echo(history)
    body = received_all(mock, n)[-1]["body"]
    assert body["contents"][-1] == {"role": "user", "parts": [{"functionResponse": {"name": "get_weather", "response": {"output": "sunny"}}}]}


def test_unknown_tool_call_id_and_bad_arguments_are_400(client, mock):
    n = nonce()
    history = user(f"orphan {n}") + [{"role": "tool", "tool_call_id": "call_nowhere", "content": "x"}]
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model=MODEL, messages=history)
    assert err.value.body["param"] == "messages[1].tool_call_id"
    bad = user(f"bad args {n}") + [
        {"role": "assistant", "content": None, "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{oops"}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "x"},
    ]
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model=MODEL, messages=bad)
    assert err.value.body["param"] == "messages[1].tool_calls[0].function.arguments"
    assert received_all(mock, n) == []


def test_a_missing_tool_result_is_gemini_s_400(client, mock):
    n = nonce()
    history = user(f"two calls one answer {n}") + [
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {"id": "call_a", "type": "function", "function": {"name": "get_weather", "arguments": "{}"}},
                {"id": "call_b", "type": "function", "function": {"name": "get_time", "arguments": "{}"}},
            ],
        },
        {"role": "tool", "tool_call_id": "call_a", "content": "sunny"},
    ]
    # Gemini would answer 400 ("... number of function response parts is equal to the number of
    # function call parts ..."); the gateway refuses it first, for every provider, naming the call.
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model=MODEL, messages=history, tools=[WEATHER, TIME])
    assert err.value.body["param"] == "messages[1].tool_calls[1]"
    assert "call_b" in err.value.message
    assert mock.requests_with(n) == []


# ---- images ----------------------------------------------------------------------------------


def image_message(text: str, url: str) -> list[dict]:
    return [{"role": "user", "content": [{"type": "text", "text": text}, {"type": "image_url", "image_url": {"url": url}}]}]


def test_data_url_image_becomes_inline_data(client, mock):
    n = nonce()
    messages = image_message(f"what is this {n}", f"data:image/png;base64,{PNG_BASE64}")
    resp = client.chat.completions.create(model=MODEL, messages=messages)
    assert resp.choices[0].message.content == echo(messages)
    assert received(mock, n)["body"]["contents"][0]["parts"] == [
        {"text": f"what is this {n}"},
        {"inlineData": {"mimeType": "image/png", "data": PNG_BASE64}},
    ]


@pytest.mark.parametrize("path", ["/_mock/image.png", "/_mock/redirect.png"])
def test_http_image_url_is_fetched_and_sent_as_inline_data(client, mock, path):
    n = nonce()
    messages = image_message(f"describe {n}", f"{mock.base_url}{path}")
    resp = client.chat.completions.create(model=MODEL, messages=messages)
    assert resp.choices[0].message.content == echo(messages)
    served = base64.b64encode(httpx.get(f"{mock.base_url}/_mock/image.png", timeout=10).content).decode()
    assert served == PNG_BASE64
    assert received(mock, n)["body"]["contents"][0]["parts"][1] == {"inlineData": {"mimeType": "image/png", "data": served}}


@pytest.mark.parametrize(
    "path, wanted",
    [("/_mock/huge.png", "larger than 1048576 bytes"), ("/_mock/page.html", "did not return an image"), ("/_mock/missing.png", "HTTP 404")],
)
def test_unusable_image_urls_are_400_naming_the_part(client, mock, path, wanted):
    n = nonce()
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model=MODEL, messages=image_message(f"bad image {n}", f"{mock.base_url}{path}"))
    assert err.value.body["param"] == "messages[0].content[1].image_url.url"
    assert wanted in err.value.message
    assert received_all(mock, n) == []


def test_default_config_refuses_private_image_addresses(mock, tmp_path):
    """Without `[images] allow_private_networks`, the gateway will not fetch from 127.0.0.1."""
    gw = Gateway(tmp_path, mock, extra_config=gemini_config(mock.base_url))
    try:
        key = gw.create_key("enterprise")
        n = nonce()
        r = httpx.post(
            f"{gw.base_url}/chat/completions",
            headers=auth(key),
            json={"model": MODEL, "messages": image_message(f"ssrf {n}", f"{mock.base_url}/_mock/image.png")},
            timeout=TIMEOUT,
        )
        assert r.status_code == 400, r.text
        err = r.json()["error"]
        assert err["param"] == "messages[0].content[1].image_url.url"
        assert "non-public address" in err["message"]
        assert received_all(mock, n) == []
    finally:
        gw.stop()


# ---- thinking --------------------------------------------------------------------------------


def test_alias_thinking_gives_reasoning_content_and_details(client, mock):
    n = nonce()
    messages = user(f"think about it {n}")
    resp = client.chat.completions.create(model=THINKING_ALIAS, messages=messages)
    message = resp.choices[0].message
    assert message.content == echo(messages)
    assert message.model_extra["reasoning_content"] == thought(messages)
    assert message.model_extra["reasoning_details"] == [
        {"type": "reasoning.encrypted", "data": signature_for("text"), "format": FORMAT, "index": 0}
    ]
    want = expected(messages, thinking=True)
    assert usage_of(resp.usage) == want
    assert Decimal(str(resp.usage.model_extra["cost"])) == cost_usd(want, PRICES)
    assert received(mock, n)["body"]["generationConfig"] == {"thinkingConfig": {"includeThoughts": True, "thinkingBudget": -1}}


@pytest.mark.parametrize("effort, config", [("low", {"includeThoughts": True, "thinkingBudget": 1024}), ("high", {"includeThoughts": True, "thinkingBudget": 24576}), ("none", {"thinkingBudget": 0})])
def test_reasoning_effort_switches_thinking(client, mock, effort, config):
    n = nonce()
    messages = user(f"effort {effort} {n}")
    resp = client.chat.completions.create(model=MODEL, messages=messages, reasoning_effort=effort)
    assert received(mock, n)["body"]["generationConfig"] == {"thinkingConfig": config}
    thinking = effort != "none"
    assert (resp.choices[0].message.model_extra.get("reasoning_content") is not None) == thinking
    assert usage_of(resp.usage) == expected(messages, thinking=thinking)


def test_streamed_reasoning_content_and_details(client, mock):
    n = nonce()
    messages = user(f"stream thoughts {n}")
    chunks = list(client.chat.completions.create(model=THINKING_ALIAS, messages=messages, stream=True, stream_options={"include_usage": True}))
    deltas = [c.choices[0].delta for c in chunks if c.choices]
    assert "".join((d.model_extra or {}).get("reasoning_content") or "" for d in deltas) == thought(messages)
    assert "".join(d.content or "" for d in deltas) == echo(messages)
    details = [x for d in deltas for x in ((d.model_extra or {}).get("reasoning_details") or [])]
    assert details == [{"type": "reasoning.encrypted", "data": signature_for("text"), "format": FORMAT, "index": 0}]
    assert usage_of(chunks[-1].usage) == expected(messages, thinking=True)


def test_thought_signatures_round_trip_in_a_tool_loop(client, mock):
    n = nonce()
    messages = user(f"think then call {n} [tool]")
    first = client.chat.completions.create(model=THINKING_ALIAS, messages=messages, tools=[WEATHER])
    message = first.choices[0].message
    (call,) = message.tool_calls
    assert message.model_extra["reasoning_details"] == [
        {"type": "reasoning.encrypted", "data": signature_for("get_weather"), "id": call.id, "format": FORMAT, "index": 0}
    ]
    assert message.model_extra["reasoning_content"] == thought(messages)

    # The SDK pattern: append the assistant message as received (extra fields included).
    history = messages + [message.model_dump(exclude_none=True), {"role": "tool", "tool_call_id": call.id, "content": "sunny"}]
    final = client.chat.completions.create(model=THINKING_ALIAS, messages=history, tools=[WEATHER])
    assert final.choices[0].message.content == echo(history)
    model_turn = received_all(mock, n)[-1]["body"]["contents"][1]
    assert model_turn == {
        "role": "model",
        "parts": [{"functionCall": {"name": "get_weather", "args": {"location": "Paris"}}, "thoughtSignature": signature_for("get_weather")}],
    }

    # A client that drops the details (most OpenAI clients) still gets a working loop: the turn
    # goes with the stand-in Google documents for signatures the client did not keep.
    stripped = dict(message.model_dump(exclude_none=True))
    stripped.pop("reasoning_details")
    stripped.pop("reasoning_content", None)
    history = messages + [stripped, {"role": "tool", "tool_call_id": call.id, "content": "sunny"}]
    final = client.chat.completions.create(model=THINKING_ALIAS, messages=history, tools=[WEATHER])
    assert final.choices[0].message.content == echo(history)
    sent = received_all(mock, n)[-1]
    assert sent["body"]["contents"][1]["parts"] == [
        {"functionCall": {"name": "get_weather", "args": {"location": "Paris"}}, "thoughtSignature": "skip_thought_signature_validator"}
    ]

    # Without any signature Gemini (the mock) refuses the turn; the stand-in is what makes it work.
    unsigned = json.loads(json.dumps(sent["body"]))
    del unsigned["contents"][1]["parts"][0]["thoughtSignature"]
    refused = httpx.post(f"{mock.base_url}{sent['path']}", json=unsigned, headers={"x-goog-api-key": PROVIDER_KEY}, timeout=30)
    assert refused.status_code == 400, refused.text
    assert "missing a thought_signature" in refused.json()["error"]["message"]


def test_details_of_another_provider_are_dropped(client, mock):
    n = nonce()
    history = [
        {"role": "user", "content": "earlier"},
        {
            "role": "assistant",
            "content": "from claude",
            "reasoning_details": [{"type": "reasoning.text", "text": "hmm", "signature": "sig", "format": "anthropic-claude-v1", "index": 0}],
        },
        {"role": "user", "content": f"now gemini {n}"},
    ]
    client.chat.completions.create(model=MODEL, messages=history)
    assert received(mock, n)["body"]["contents"][1] == {"role": "model", "parts": [{"text": "from claude"}]}


# ---- finish reasons --------------------------------------------------------------------------


@pytest.mark.parametrize("reason, openai_reason", [("SAFETY", "content_filter"), ("RECITATION", "content_filter"), ("OTHER", "content_filter"), ("MAX_TOKENS", "length")])
def test_finish_reasons_are_mapped(client, reason, openai_reason):
    resp = client.chat.completions.create(model=MODEL, messages=user(f"finish {nonce()} [finish={reason}]"))
    assert resp.choices[0].finish_reason == openai_reason


def test_a_blocked_prompt_is_content_filter(client):
    messages = user(f"blocked {nonce()} [blocked]")
    resp = client.chat.completions.create(model=MODEL, messages=messages)
    assert resp.choices[0].finish_reason == "content_filter"
    assert resp.choices[0].message.content == ""
    assert usage_of(resp.usage) == Usage(prompt_tokens(messages), 0)
    chunks = list(client.chat.completions.create(model=MODEL, messages=messages, stream=True))
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["content_filter"]


def test_a_malformed_function_call_is_an_upstream_error(client):
    with pytest.raises(openai.InternalServerError) as err:
        client.chat.completions.create(model=MODEL, messages=user(f"broken call {nonce()} [finish=MALFORMED_FUNCTION_CALL]"))
    assert err.value.status_code == 502
    assert "MALFORMED_FUNCTION_CALL" in err.value.message


# ---- errors ----------------------------------------------------------------------------------


def test_upstream_400_is_400_with_gemini_s_message(client):
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model=MODEL, messages=user(f"bad {nonce()} [status=400]"))
    assert "mock upstream error 400" in err.value.message


def test_an_invalid_provider_key_is_502_without_the_key(gateway, key):
    r = httpx.post(f"{gateway.base_url}/chat/completions", headers=auth(key), json={"model": "gemini-badkey", "messages": user("hi")}, timeout=TIMEOUT)
    assert r.status_code == 502, r.text
    assert r.json()["error"]["type"] == "upstream_error"
    assert WRONG_PROVIDER_KEY not in r.text and PROVIDER_KEY not in r.text


@pytest.mark.parametrize("status, gateway_status", [(429, 503), (503, 503), (500, 502), (403, 502), (401, 502)])
def test_upstream_statuses_are_mapped(gateway, key, status, gateway_status):
    r = httpx.post(
        f"{gateway.base_url}/chat/completions",
        headers=auth(key),
        json={"model": MODEL, "messages": user(f"status {nonce()} [status={status}]")},
        timeout=TIMEOUT,
    )
    assert r.status_code == gateway_status, r.text


def test_slow_upstream_is_504(gateway, key):
    r = httpx.post(
        f"{gateway.base_url}/chat/completions",
        headers=auth(key),
        json={"model": "gemini-slow", "messages": user(f"slow {nonce()} [delay_ms=3000]"), "stream": True},
        timeout=TIMEOUT,
    )
    assert r.status_code == 504, r.text


def test_in_stream_error_ends_the_sse_stream_with_an_error_event(gateway, key, client):
    messages = user(f"one two three {nonce()} [stream_error]")
    with pytest.raises(openai.APIError) as err:
        for _ in client.chat.completions.create(model=MODEL, messages=messages, stream=True):
            pass
    assert not isinstance(err.value, openai.APIStatusError)
    with httpx.stream("POST", f"{gateway.base_url}/chat/completions", headers=auth(key), json={"model": MODEL, "messages": messages, "stream": True}, timeout=TIMEOUT) as r:
        assert r.status_code == 200
        events = [e for e in r.read().decode().split("\n\n") if e]
    assert "data: [DONE]" not in events
    last = json.loads(events[-1][len("data: ") :])
    assert "mock mid-stream failure" in last["error"]["message"]


def test_a_stream_without_finish_reason_fails_instead_of_hanging(gateway, key):
    with httpx.stream(
        "POST",
        f"{gateway.base_url}/chat/completions",
        headers=auth(key),
        json={"model": MODEL, "messages": user(f"never finishes {nonce()} [no_finish]"), "stream": True},
        timeout=TIMEOUT,
    ) as r:
        assert r.status_code == 200
        events = [e for e in r.read().decode().split("\n\n") if e]
    last = json.loads(events[-1][len("data: ") :])
    assert "finish_reason" in last["error"]["message"]


# ---- gRPC ------------------------------------------------------------------------------------


def metadata(key) -> list[tuple[str, str]]:
    return [("authorization", f"Bearer {key.secret}")]


def proto_user(text: str) -> inference_pb2.Message:
    return inference_pb2.Message(role=inference_pb2.ROLE_USER, text=text)


def test_grpc_chat_and_stream(inference, key, mock):
    n = nonce()
    text = f"grpc gemini {n} [cache=1]"
    resp = inference.Chat(inference_pb2.ChatRequest(model=MODEL, messages=[proto_user(text)]), metadata=metadata(key), timeout=TIMEOUT)
    assert resp.choices[0].message.text == echo(user(text))
    assert resp.choices[0].finish_reason == "stop"
    u = resp.usage
    assert Usage(u.prompt_tokens, u.completion_tokens, u.cached_prompt_tokens, u.reasoning_tokens) == expected(user(text))

    chunks = list(
        inference.ChatStream(
            inference_pb2.ChatRequest(model=THINKING_ALIAS, messages=[proto_user(text)], stream_options=inference_pb2.StreamOptions(include_usage=True)),
            metadata=metadata(key),
            timeout=TIMEOUT,
        )
    )
    with_choices = [c for c in chunks if c.choices]
    assert "".join(c.choices[0].delta.reasoning_content for c in with_choices) == thought(user(text))
    assert "".join(c.choices[0].delta.content for c in with_choices) == echo(user(text))
    details = [d for c in with_choices for d in c.choices[0].delta.reasoning_details]
    assert [(d.type, d.data, d.format) for d in details] == [("reasoning.encrypted", signature_for("text"), FORMAT)]
    last = chunks[-1].usage
    assert Usage(last.prompt_tokens, last.completion_tokens, last.cached_prompt_tokens, last.reasoning_tokens) == expected(user(text), thinking=True)


def test_grpc_tool_loop_with_thought_signature(inference, key, mock):
    n = nonce()
    text = f"grpc call {n}"
    tool = inference_pb2.Tool(
        type="function", function=inference_pb2.FunctionDefinition(name="get_weather", parameters_json=json.dumps(WEATHER["function"]["parameters"]))
    )
    first = inference.Chat(
        inference_pb2.ChatRequest(model=THINKING_ALIAS, messages=[proto_user(text)], tools=[tool], tool_choice=inference_pb2.ToolChoice(mode="required")),
        metadata=metadata(key),
        timeout=TIMEOUT,
    )
    assert first.choices[0].finish_reason == "tool_calls"
    message = first.choices[0].message
    call = message.tool_calls[0]
    assert message.reasoning_details[0].id == call.id
    result = inference_pb2.Message(role=inference_pb2.ROLE_TOOL, text="sunny", tool_call_id=call.id)
    final = inference.Chat(
        inference_pb2.ChatRequest(model=THINKING_ALIAS, messages=[proto_user(text), message, result], tools=[tool], tool_choice=inference_pb2.ToolChoice(mode="auto")),
        metadata=metadata(key),
        timeout=TIMEOUT,
    )
    assert final.choices[0].message.text == echo(user(text))
    parts = received_all(mock, n)[-1]["body"]["contents"][1]["parts"]
    assert parts[0]["thoughtSignature"] == signature_for("get_weather")


def test_grpc_errors_are_status_codes(inference, key):
    with pytest.raises(grpc.RpcError) as err:
        inference.Chat(inference_pb2.ChatRequest(model=MODEL, messages=[proto_user(f"x {nonce()} [status=429]")]), metadata=metadata(key), timeout=TIMEOUT)
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    with pytest.raises(grpc.RpcError) as err:
        inference.Chat(inference_pb2.ChatRequest(model=MODEL, messages=[proto_user(f"x {nonce()} [status=400]")]), metadata=metadata(key), timeout=TIMEOUT)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "mock upstream error 400" in err.value.details()
