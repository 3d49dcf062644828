"""`POST /v1/messages` and `POST /v1/messages/count_tokens` end to end: the official `anthropic` SDK
against a gateway with one model of every provider kind, each served by the mock flavour of its
protocol, streamed and not. Every request is checked in the ledger: billed once, at the serving
model's prices, at the cost the answer reported.

Decisions held here (gateway-rest/src/messages/):
- the key comes from `x-api-key` or `Authorization: Bearer`;
- an Anthropic upstream gets the client's body as written (cache_control, signed thinking,
  fields the translation does not name) and its `anthropic-beta` header;
- `stop_reason: stop_sequence` only where the upstream says which sequence matched (Anthropic,
  Gemini); elsewhere a stop reads as `end_turn`;
- `count_tokens` is Anthropic's own count for an Anthropic model, else the gateway's estimate
  (ceil(bytes / 4) of the prompt), and is never billed.
"""

from __future__ import annotations

import json

import anthropic
import httpx
import pytest

from harness import PROVIDER_KEY, Gateway, nonce
from mock_rules import anthropic_signature
from surfaces import BY_KIND, KINDS, PNG_B64, assert_billed_once, config, ledger, upstream_body

TIMEOUT = 30
WEATHER = {
    "name": "get_weather",
    "description": "Weather in a city",
    "input_schema": {"type": "object", "properties": {"location": {"type": "string"}}, "required": ["location"]},
}


@pytest.fixture(scope="module")
def gateway(mock, tmp_path_factory):
    gw = Gateway(tmp_path_factory.mktemp("tollgate-messages"), mock, extra_config=config(mock.base_url))
    yield gw
    gw.stop()


@pytest.fixture
def claude(gateway, key):
    """The official Anthropic SDK pointed at the gateway (the key in `x-api-key`)."""
    client = anthropic.Anthropic(base_url=gateway.http_base, api_key=key.secret, max_retries=0, timeout=TIMEOUT)
    yield client
    client.close()


def text_of(message) -> str:
    return "".join(b.text for b in message.content if b.type == "text")


def billed(gateway, key, kind: str, message) -> None:
    """The message was billed once at `kind`'s model's prices, with the usage it reports (a
    streamed message's usage is the one of its `message_delta` event, see `create`)."""
    u = getattr(message, "delta_usage", None) or message.usage
    cached = u.cache_read_input_tokens or 0
    written = u.cache_creation_input_tokens or 0
    assert_billed_once(
        gateway,
        key,
        BY_KIND[kind],
        prompt=u.input_tokens + cached + written,
        cached=cached,
        written=written,
        completion=u.output_tokens,
        cost=(u.model_extra or {})["cost"],
    )


def create(claude, kind: str, stream: bool, **params):
    """One request, streamed through `messages.stream(...).get_final_message()` or not; returns the
    message and, when streamed, the event types in order."""
    params.setdefault("max_tokens", 1024)
    if not stream:
        return claude.messages.create(model=BY_KIND[kind].model, **params), None
    with claude.messages.stream(model=BY_KIND[kind].model, **params) as s:
        events = list(s)
        message = s.get_final_message()
    deltas = [e for e in events if e.type == "message_delta"]
    assert len(deltas) == 1
    # The SDK's accumulator keeps the named usage fields only; the cost rides beside them.
    object.__setattr__(message, "delta_usage", deltas[0].usage)
    u = deltas[0].usage
    assert (message.usage.input_tokens, message.usage.output_tokens) == (u.input_tokens, u.output_tokens)
    return message, [e.type for e in events]


# 1. Text, streamed and not, on every provider kind -----------------------------------------------


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
@pytest.mark.parametrize("kind", KINDS)
def test_text_on_every_provider(gateway, key, claude, mock, kind, stream):
    n = nonce()
    message, types = create(claude, kind, stream, messages=[{"role": "user", "content": f"hello there {n}"}])
    assert message.type == "message" and message.role == "assistant"
    assert message.id.startswith("msg_")
    assert text_of(message) == f"Echo: hello there {n}"
    assert message.stop_reason == "end_turn"
    assert message.usage.output_tokens > 0 and message.usage.input_tokens > 0
    if stream:
        assert types[0] == "message_start"
        assert types[-1] == "message_stop"
        assert "message_delta" in types and "content_block_start" in types and "content_block_stop" in types
    upstream_body(mock, n)
    billed(gateway, key, kind, message)


def test_system_blocks_and_sampling_reach_the_upstream(claude, mock):
    n = nonce()
    claude.messages.create(
        model=BY_KIND["openai"].model,
        max_tokens=50,
        system=[{"type": "text", "text": f"Be terse {n}."}, {"type": "text", "text": "Really."}],
        messages=[{"role": "user", "content": "hi"}],
        metadata={"user_id": "user-42"},
        # This SDK version names no sampling parameters; the API still takes them.
        extra_body={"temperature": 0.5, "top_p": 0.9},
    )
    body = upstream_body(mock, n)
    assert body["messages"][0]["role"] == "system"
    assert f"Be terse {n}." in json.dumps(body["messages"][0])
    assert (body["temperature"], body["top_p"], body["user"]) == (0.5, 0.9, "user-42")
    assert body["max_completion_tokens"] == 50


# 2. Tools and their round trip -------------------------------------------------------------------


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
@pytest.mark.parametrize("kind", KINDS)
def test_tool_call_and_its_result(gateway, key, claude, mock, kind, stream):
    n = nonce()
    ask = {"role": "user", "content": f"weather please [tool] {n}"}
    message, _ = create(claude, kind, stream, messages=[ask], tools=[WEATHER])
    assert message.stop_reason == "tool_use"
    calls = [b for b in message.content if b.type == "tool_use"]
    assert len(calls) == 1
    assert calls[0].name == "get_weather"
    assert calls[0].input == {"location": "Paris"}
    assert calls[0].id
    billed(gateway, key, kind, message)

    m = nonce()
    history = [
        ask,
        {"role": "assistant", "content": [b.model_dump(exclude_none=True) for b in message.content]},
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": calls[0].id, "content": f"22 degrees {m}"},
                {"type": "text", "text": "thanks"},
            ],
        },
    ]
    answer, _ = create(claude, kind, stream, messages=history, tools=[WEATHER])
    assert answer.content
    sent = json.dumps(upstream_body(mock, m))
    # Gemini matches results to calls by name; the others by id.
    assert (calls[0].name if kind == "gemini" else calls[0].id) in sent.replace(f"22 degrees {m}", "")
    assert len(ledger(gateway, key)) == 2


@pytest.mark.parametrize(
    "choice,expected",
    [
        ({"type": "auto"}, "auto"),
        ({"type": "any"}, "required"),
        ({"type": "none"}, "none"),
        ({"type": "tool", "name": "get_weather"}, {"type": "function", "function": {"name": "get_weather"}}),
    ],
)
def test_tool_choice_forms(claude, mock, choice, expected):
    n = nonce()
    claude.messages.create(
        model=BY_KIND["openai"].model,
        max_tokens=50,
        messages=[{"role": "user", "content": f"hi {n}"}],
        tools=[WEATHER],
        tool_choice=choice,
    )
    assert upstream_body(mock, n)["tool_choice"] == expected


# 3. Reasoning ------------------------------------------------------------------------------------


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
@pytest.mark.parametrize("kind", [k for k in KINDS if BY_KIND[k].thinks])
def test_thinking_comes_back_as_thinking_blocks(gateway, key, claude, kind, stream):
    n = nonce()
    message, types = create(
        claude,
        kind,
        stream,
        max_tokens=4096,
        thinking={"type": "enabled", "budget_tokens": 2048},
        messages=[{"role": "user", "content": f"ponder {n}"}],
    )
    thinking = [b for b in message.content if b.type == "thinking"]
    assert thinking and thinking[0].thinking == f"Thinking about: ponder {n}"
    assert message.content[0].type == "thinking", "thinking comes first"
    assert text_of(message) == f"Echo: ponder {n}"
    if kind == "anthropic":
        assert thinking[0].signature == anthropic_signature(thinking[0].thinking)
    if stream:
        assert "content_block_delta" in types
    billed(gateway, key, kind, message)


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_anthropic_thinking_tool_loop_round_trips_the_signature(claude, mock, stream):
    """The mock refuses a thinking tool loop whose thinking block is not the signed one it gave."""
    n = nonce()
    ask = {"role": "user", "content": f"weather [tool] {n}"}
    params = dict(max_tokens=4096, thinking={"type": "enabled", "budget_tokens": 2048}, tools=[WEATHER])
    message, _ = create(claude, "anthropic", stream, messages=[ask], **params)
    assert [b.type for b in message.content][0] == "thinking"
    call = next(b for b in message.content if b.type == "tool_use")
    m = nonce()
    history = [
        ask,
        {"role": "assistant", "content": [b.model_dump(exclude_none=True) for b in message.content]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": call.id, "content": f"sunny {m}"}]},
    ]
    answer, _ = create(claude, "anthropic", stream, messages=history, **params)
    assert answer.stop_reason in ("end_turn", "tool_use")
    sent = upstream_body(mock, m)["messages"][1]["content"][0]
    assert sent["type"] == "thinking" and sent["signature"] == anthropic_signature(sent["thinking"])


def test_thinking_is_the_models_default_unless_the_client_says(claude, mock):
    """No `thinking` leaves the model's default (DeepSeek's is to think; Anthropic's is not to);
    `disabled` switches it off where the model allows it."""
    model = BY_KIND["deepseek"].model
    n = nonce()
    message = claude.messages.create(model=model, max_tokens=100, messages=[{"role": "user", "content": f"x {n}"}])
    assert [b.type for b in message.content] == ["thinking", "text"]
    assert "thinking" not in upstream_body(mock, n)
    n = nonce()
    message = claude.messages.create(
        model=model,
        max_tokens=100,
        messages=[{"role": "user", "content": f"x {n}"}],
        thinking={"type": "disabled"},
    )
    assert [b.type for b in message.content] == ["text"]
    assert upstream_body(mock, n)["thinking"] == {"type": "disabled"}


# 4. Images, structured output, length, stop sequences ----------------------------------------


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
@pytest.mark.parametrize("kind", KINDS)
def test_images(claude, mock, kind, stream):
    n = nonce()
    content = [
        {"type": "text", "text": f"what is this {n}"},
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG_B64}},
    ]
    if not BY_KIND[kind].vision:
        with pytest.raises(anthropic.BadRequestError) as e:
            create(claude, kind, stream, messages=[{"role": "user", "content": content}])
        assert e.value.body["error"]["type"] == "invalid_request_error"
        return
    message, _ = create(claude, kind, stream, messages=[{"role": "user", "content": content}])
    assert text_of(message).startswith("Echo: what is this")
    assert PNG_B64 in json.dumps(upstream_body(mock, n))


@pytest.mark.parametrize("kind", KINDS)
def test_structured_output_reaches_every_upstream(claude, mock, kind):
    n = nonce()
    schema = {"type": "object", "properties": {f"field_{n}": {"type": "string"}}, "required": [f"field_{n}"]}
    params = dict(
        model=BY_KIND[kind].model,
        max_tokens=200,
        messages=[{"role": "user", "content": f"json please {n}"}],
        output_config={"format": {"type": "json_schema", "schema": schema}},
    )
    if kind == "deepseek":
        # DeepSeek has JSON mode only: the gateway refuses rather than drop the schema.
        with pytest.raises(anthropic.BadRequestError) as e:
            claude.messages.create(**params)
        assert "json_schema" in e.value.body["error"]["message"]
        return
    message = claude.messages.create(**params)
    assert message.content
    body = json.dumps(upstream_body(mock, n))
    assert f"field_{n}" in body.replace(f"json please {n}", "")


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
@pytest.mark.parametrize("kind", KINDS)
def test_a_cut_answer_stops_at_max_tokens(gateway, key, claude, kind, stream):
    # Thinking off: a model that thinks by default (DeepSeek, MiniMax) would spend the tokens
    # on reasoning first.
    message, _ = create(
        claude,
        kind,
        stream,
        max_tokens=2,
        thinking={"type": "disabled"},
        messages=[{"role": "user", "content": f"one two three four {nonce()}"}],
    )
    assert message.stop_reason == "max_tokens"
    assert message.usage.output_tokens <= 2
    billed(gateway, key, kind, message)


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
@pytest.mark.parametrize("kind", KINDS)
def test_stop_sequences(claude, mock, kind, stream):
    n = nonce()
    message, _ = create(
        claude, kind, stream, stop_sequences=["HALT"], messages=[{"role": "user", "content": f"go {n} HALT and more"}]
    )
    sent = json.dumps(upstream_body(mock, n))
    assert '"HALT"' in sent.replace(f"go {n} HALT and more", "")
    if kind in ("anthropic", "gemini"):
        # Both mocks cut at the sequence; Anthropic says which one matched.
        assert "and more" not in text_of(message)
    if kind == "anthropic":
        assert message.stop_reason == "stop_sequence"
        assert message.stop_sequence == "HALT"
    else:
        assert message.stop_reason == "end_turn"


# 5. Errors and keys ----------------------------------------------------------------------------


def test_bearer_key_is_accepted_too(gateway, key):
    client = anthropic.Anthropic(base_url=gateway.http_base, auth_token=key.secret, max_retries=0, timeout=TIMEOUT)
    message = client.messages.create(model="gpt-4.1-mini", max_tokens=20, messages=[{"role": "user", "content": "hi"}])
    assert text_of(message) == "Echo: hi"


def test_errors_have_anthropics_shape(gateway, key, claude):
    bad = anthropic.Anthropic(base_url=gateway.http_base, api_key="sk-not-a-key", max_retries=0, timeout=TIMEOUT)
    with pytest.raises(anthropic.AuthenticationError) as e:
        bad.messages.create(model="gpt-4.1-mini", max_tokens=5, messages=[{"role": "user", "content": "hi"}])
    assert e.value.body == {"type": "error", "error": {"type": "authentication_error", "message": e.value.body["error"]["message"]}}
    with pytest.raises(anthropic.NotFoundError) as e:
        claude.messages.create(model="no-such-model", max_tokens=5, messages=[{"role": "user", "content": "hi"}])
    assert e.value.body["error"]["type"] == "not_found_error"
    with pytest.raises(anthropic.BadRequestError) as e:
        claude.messages.create(model="claude-test", max_tokens=5, messages=[{"role": "user", "content": "hi"}], extra_body={"temperature": 3})
    assert e.value.body["error"]["type"] == "invalid_request_error"
    # A field missing: 400 naming it, as Anthropic words it.
    resp = httpx.post(
        f"{gateway.base_url}/messages",
        headers={"x-api-key": key.secret, "anthropic-version": "2023-06-01"},
        json={"model": "claude-test", "messages": [{"role": "user", "content": "hi"}]},
        timeout=TIMEOUT,
    )
    assert resp.status_code == 400
    assert resp.json() == {"type": "error", "error": {"type": "invalid_request_error", "message": "max_tokens: Field required"}}
    # An upstream that is overloaded: Anthropic's overloaded_error, status 503.
    with pytest.raises(anthropic.InternalServerError) as e:
        claude.messages.create(model="claude-test", max_tokens=5, messages=[{"role": "user", "content": "x [status=529]"}])
    assert e.value.status_code == 503
    assert e.value.body["error"]["type"] == "overloaded_error"
    assert ledger(gateway, key)[-1].model_id == "claude-test", "a request that reached the upstream is recorded"


def test_a_mid_stream_failure_is_an_error_event(claude):
    with pytest.raises(anthropic.APIStatusError) as e:
        with claude.messages.stream(
            model="claude-test", max_tokens=100, messages=[{"role": "user", "content": "a b c [stream_error]"}]
        ) as s:
            s.get_final_message()
    assert "mock mid-stream failure" in str(e.value)


# 6. The lossless path to Anthropic: Claude Code's request profile ---------------------------------


def claude_code_request(n: str) -> dict:
    """A request as Claude Code sends it (system blocks with cache_control, tools, thinking,
    metadata.user_id, stream), from its documented shape."""
    return {
        "model": "claude-test",
        "max_tokens": 32000,
        "stream": True,
        "system": [
            {"type": "text", "text": "You are Claude Code, Anthropic's official CLI for Claude.", "cache_control": {"type": "ephemeral"}},
            {"type": "text", "text": f"Working directory: /repo {n}", "cache_control": {"type": "ephemeral"}},
        ],
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "<system-reminder>context</system-reminder>"},
                    {"type": "text", "text": f"list the files {n} [cache=2] [cache_write=3]", "cache_control": {"type": "ephemeral"}},
                ],
            }
        ],
        "tools": [
            {
                "name": "Bash",
                "description": "Executes a bash command",
                "input_schema": {
                    "type": "object",
                    "properties": {"command": {"type": "string"}},
                    "required": ["command"],
                    "additionalProperties": False,
                    "$schema": "http://json-schema.org/draft-07/schema#",
                },
            }
        ],
        "thinking": {"type": "enabled", "budget_tokens": 31999},
        "metadata": {"user_id": f"user_{n}_account__session_1"},
        "temperature": 1,
        "service_tier": "standard_only",
    }


def test_claude_code_profile_reaches_anthropic_unchanged(gateway, key, mock):
    n = nonce()
    body = claude_code_request(n)
    headers = {
        "x-api-key": key.secret,
        "anthropic-version": "2023-06-01",
        "anthropic-beta": "claude-code-20250219,interleaved-thinking-2025-05-14,fine-grained-tool-streaming-2025-05-14",
        "x-app": "cli",
        "user-agent": "claude-cli/2.0.0 (external, cli)",
    }
    with httpx.stream("POST", f"{gateway.base_url}/messages?beta=true", headers=headers, json=body, timeout=TIMEOUT) as resp:
        assert resp.status_code == 200, resp.read()
        lines = [line for line in resp.iter_lines() if line]
    names = [line.removeprefix("event: ") for line in lines if line.startswith("event: ")]
    assert names[0] == "message_start" and names[-1] == "message_stop"
    received = mock.single_request_with(n)
    assert received["path"] == "/v1/messages"
    assert received["headers"]["anthropic-beta"] == headers["anthropic-beta"]
    assert received["headers"]["x-api-key"] == PROVIDER_KEY
    sent = received["body"]
    expected = dict(body, model="claude-sonnet-4-5")
    assert sent == expected, "everything but the model reaches Anthropic as the client wrote it"

    # Usage with cache reads and writes, billed exactly at the cache prices.
    deltas = [json.loads(line.removeprefix("data: ")) for line in lines if line.startswith("data: ")]
    usage = next(d for d in deltas if d["type"] == "message_delta")["usage"]
    assert usage["cache_read_input_tokens"] == 2
    assert usage["cache_creation_input_tokens"] == 3
    assert_billed_once(
        gateway,
        key,
        BY_KIND["anthropic"],
        prompt=usage["input_tokens"] + 5,
        cached=2,
        written=3,
        completion=usage["output_tokens"],
        cost=usage["cost"],
    )


def test_claude_code_profile_is_served_by_another_provider(gateway, key, mock):
    n = nonce()
    body = claude_code_request(n)
    body["model"] = "deepseek-v4-flash"
    headers = {"authorization": f"Bearer {key.secret}", "anthropic-version": "2023-06-01", "anthropic-beta": "claude-code-20250219"}
    with httpx.stream("POST", f"{gateway.base_url}/messages", headers=headers, json=body, timeout=TIMEOUT) as resp:
        assert resp.status_code == 200, resp.read()
        events = [json.loads(line.removeprefix("data: ")) for line in resp.iter_lines() if line.startswith("data: ")]
    blocks = [e["content_block"]["type"] for e in events if e["type"] == "content_block_start"]
    assert blocks == ["thinking", "text"]
    sent = upstream_body(mock, n)
    assert sent["thinking"] == {"type": "enabled"}
    assert "cache_control" not in json.dumps(sent)
    assert len(ledger(gateway, key)) == 1


# 7. count_tokens ---------------------------------------------------------------------------------


def test_count_tokens_is_anthropics_own_count_for_anthropic(gateway, key, claude, mock):
    n = nonce()
    params = dict(
        system="You are terse.",
        messages=[{"role": "user", "content": f"count these words please {n}"}],
        tools=[WEATHER],
    )
    counted = claude.messages.count_tokens(model="claude-test", **params)
    message = claude.messages.create(model="claude-test", max_tokens=100, **params)
    assert counted.input_tokens == message.usage.input_tokens
    paths = [r["path"] for r in mock.requests_with(n)]
    assert paths == ["/v1/messages/count_tokens", "/v1/messages"]
    assert len(ledger(gateway, key)) == 1, "counting is not billed"


@pytest.mark.parametrize("kind", [k for k in KINDS if k != "anthropic"])
def test_count_tokens_is_the_gateways_estimate_elsewhere(gateway, key, claude, mock, kind):
    n = nonce()
    counted = claude.messages.count_tokens(
        model=BY_KIND[kind].model, messages=[{"role": "user", "content": f"estimate me {n}"}]
    )
    assert 0 < counted.input_tokens < 64
    assert mock.requests_with(n) == [], "no upstream call"
    assert ledger(gateway, key) == []


def test_count_tokens_needs_a_key(gateway):
    bad = anthropic.Anthropic(base_url=gateway.http_base, api_key="sk-nope", max_retries=0, timeout=TIMEOUT)
    with pytest.raises(anthropic.AuthenticationError):
        bad.messages.count_tokens(model="claude-test", messages=[{"role": "user", "content": "hi"}])


def test_estimate_is_a_quarter_of_the_prompt_bytes(claude):
    short = claude.messages.count_tokens(model="gpt-4.1-mini", messages=[{"role": "user", "content": "a"}])
    long = claude.messages.count_tokens(model="gpt-4.1-mini", messages=[{"role": "user", "content": "a" * 401}])
    # 400 more bytes are 100 more tokens (give or take the rounding of each).
    assert 99 <= long.input_tokens - short.input_tokens <= 101
