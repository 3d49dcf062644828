"""`POST /v1/chat/completions` through the official OpenAI SDK and raw HTTP: the response and
chunk shapes, the SSE framing, usage reporting and incremental delivery."""

from __future__ import annotations

import json
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from harness import MAX_BODY_BYTES, auth, make_client
from mock_rules import TOOL_ARGUMENTS, TOOL_CALL_ID, echo, expected_usage, reasoning, upstream_thinks, usage_of

# One DeepSeek-kind model (thinking by default upstream) and one OpenAI-kind model.
MODELS = ["deepseek-v4-flash", "gpt-4.1-mini"]

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather of a city",
        "parameters": {"type": "object", "properties": {"location": {"type": "string"}}, "required": ["location"]},
    },
}


def nonce() -> str:
    return uuid.uuid4().hex[:12]


def conversation(text: str) -> list[dict]:
    return [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": text},
    ]


@pytest.mark.parametrize("model", MODELS)
def test_non_streaming_response_has_the_full_openai_shape(client, mock, model):
    n = nonce()
    messages = conversation(f"Say hello to the tollgate {n}")
    before = time.time()
    resp = client.chat.completions.create(model=model, messages=messages)

    assert resp.id.startswith("chatcmpl-")
    assert resp.object == "chat.completion"
    assert before - 5 <= resp.created <= time.time() + 5
    assert resp.model == model
    assert len(resp.choices) == 1
    choice = resp.choices[0]
    assert choice.index == 0
    assert choice.message.role == "assistant"
    assert choice.message.content == echo(messages)
    assert choice.finish_reason == "stop"
    assert not choice.message.tool_calls

    upstream = mock.single_request_with(n)
    thinking = upstream_thinks(upstream["body"])
    want = expected_usage(messages, thinking)
    assert usage_of(resp.usage) == want
    assert resp.usage.total_tokens == want.total_tokens
    assert resp.usage.prompt_tokens_details.cached_tokens == 0
    assert resp.usage.completion_tokens_details.reasoning_tokens == want.reasoning_tokens
    got_reasoning = (resp.choices[0].message.model_extra or {}).get("reasoning_content")
    assert got_reasoning == (reasoning(messages) if thinking else None)


def test_raw_json_body_carries_usage_details(gateway, key, mock):
    """The JSON itself, not the SDK's lenient parse: usage details are objects of integers."""
    n = nonce()
    messages = [{"role": "user", "content": f"details please {n} [cache=2]"}]
    r = httpx.post(
        f"{gateway.base_url}/chat/completions",
        headers=auth(key),
        json={"model": "gpt-4.1-mini", "messages": messages},
        timeout=30,
    )
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("application/json")
    body = r.json()
    assert body["object"] == "chat.completion"
    want = expected_usage(messages, thinking=False)
    assert body["usage"]["prompt_tokens"] == want.prompt_tokens
    assert body["usage"]["completion_tokens"] == want.completion_tokens
    assert body["usage"]["total_tokens"] == want.total_tokens
    assert body["usage"]["prompt_tokens_details"]["cached_tokens"] == 2
    assert body["usage"]["completion_tokens_details"]["reasoning_tokens"] == 0


@pytest.mark.parametrize("model", MODELS)
def test_streaming_with_include_usage_matches_non_streaming(client, mock, model):
    n = nonce()
    messages = conversation(f"stream me a short answer {n}")
    stream = client.chat.completions.create(
        model=model, messages=messages, stream=True, stream_options={"include_usage": True}
    )
    chunks = list(stream)
    assert len(chunks) >= 4

    assert {c.id for c in chunks} == {chunks[0].id}
    assert chunks[0].id.startswith("chatcmpl-")
    assert {c.created for c in chunks} == {chunks[0].created}
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    assert all(c.model == model for c in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"

    content = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert content == echo(messages)

    finishing = [c for c in chunks if c.choices and c.choices[0].finish_reason is not None]
    assert len(finishing) == 1
    assert finishing[0].choices[0].finish_reason == "stop"

    # The last chunk, and only it, has empty choices and carries the usage.
    last = chunks[-1]
    assert last.choices == []
    assert [i for i, c in enumerate(chunks) if c.usage is not None] == [len(chunks) - 1]
    upstream = mock.single_request_with(n)
    assert upstream["body"].get("stream") is True
    want = expected_usage(messages, upstream_thinks(upstream["body"]))
    assert usage_of(last.usage) == want
    assert last.usage.total_tokens == want.total_tokens


def test_streaming_without_include_usage_sends_no_usage(client, mock):
    """DeepSeek puts usage on its finish chunk whatever the request said; a client that did not
    ask for usage must not get it (OpenAI never sends usage without include_usage)."""
    n = nonce()
    messages = [{"role": "user", "content": f"no usage for me {n}"}]
    chunks = list(client.chat.completions.create(model="deepseek-v4-flash", messages=messages, stream=True))
    assert chunks, "empty stream"
    assert all(c.choices for c in chunks), "a chunk with empty choices (usage chunk) was sent"
    assert all(c.usage is None for c in chunks)
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == echo(messages)
    assert chunks[-1].choices[0].finish_reason == "stop"


@pytest.mark.parametrize("model", MODELS)
def test_sse_body_is_data_lines_ending_in_done(gateway, key, model):
    n = nonce()
    messages = [{"role": "user", "content": f"raw framing {n}"}]
    with httpx.stream(
        "POST",
        f"{gateway.base_url}/chat/completions",
        headers=auth(key),
        json={"model": model, "messages": messages, "stream": True, "stream_options": {"include_usage": True}},
        timeout=30,
    ) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        body = r.read().decode()

    assert body.endswith("data: [DONE]\n\n"), body[-200:]
    events = body.split("\n\n")
    assert events[-1] == ""
    events = events[:-1]
    for event in events:
        assert event.startswith("data: "), f"not a data line: {event!r}"
        assert "\n" not in event, f"an event of more than one line: {event!r}"
    payloads = [json.loads(e[len("data: ") :]) for e in events[:-1]]
    assert all(p["object"] == "chat.completion.chunk" for p in payloads)
    assert "".join(p["choices"][0]["delta"].get("content") or "" for p in payloads if p["choices"]) == echo(messages)
    assert payloads[-1]["choices"] == []
    assert payloads[-1]["usage"]["prompt_tokens"] == expected_usage(messages, False).prompt_tokens


def test_chunks_arrive_incrementally(client):
    """With 300 ms between upstream chunks, the gateway forwards each as it comes instead of
    buffering: the content deltas arrive spread out over time."""
    messages = [{"role": "user", "content": f"one two three four five {nonce()} [chunk_delay_ms=300]"}]
    arrivals: list[float] = []
    pieces: list[str] = []
    stream = client.chat.completions.create(model="gpt-4.1-mini", messages=messages, stream=True)
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            arrivals.append(time.monotonic())
            pieces.append(chunk.choices[0].delta.content)
    assert "".join(pieces) == echo(messages)
    assert len(arrivals) == 8  # "Echo:" + 7 words, one delta each
    gaps = [b - a for a, b in zip(arrivals, arrivals[1:])]
    # 7 gaps of ~0.3 s upstream; a buffering gateway delivers them all at once.
    assert arrivals[-1] - arrivals[0] >= 1.4, gaps
    assert sum(1 for g in gaps if g >= 0.15) >= 6, gaps


def test_concurrent_streams_are_served_in_parallel(gateway, key):
    """Five streams of ~1.5 s each, at once: a gateway that serialises them takes 7.5 s."""

    def one(i: int) -> tuple[str, str]:
        messages = [{"role": "user", "content": f"parallel {i} {nonce()} [chunk_delay_ms=300]"}]
        c = make_client(gateway, key)
        try:
            chunks = c.chat.completions.create(model="gpt-4.1-mini", messages=messages, stream=True)
            return "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices), echo(messages)
        finally:
            c.close()

    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=5) as pool:
        results = list(pool.map(one, range(5)))
    elapsed = time.monotonic() - started
    for got, want in results:
        assert got == want
    assert elapsed < 4.5, f"5 concurrent 1.5 s streams took {elapsed:.1f}s"


def test_content_parts_are_accepted(client, mock):
    n = nonce()
    messages = [{"role": "user", "content": [{"type": "text", "text": "first part"}, {"type": "text", "text": f"second {n}"}]}]
    resp = client.chat.completions.create(model="deepseek-chat", messages=messages)
    # The gateway may keep the parts or join them; the words are what matter.
    assert resp.choices[0].message.content.split() == echo(messages).split()
    assert resp.usage.prompt_tokens == expected_usage(messages, False).prompt_tokens
    assert len(mock.requests_with(n)) == 1


def test_large_body_under_the_limit_is_accepted(gateway, key, mock):
    n = nonce()
    filler = "y" * (MAX_BODY_BYTES // 2)
    messages = [{"role": "user", "content": f"{n} {filler}"}]
    r = httpx.post(
        f"{gateway.base_url}/chat/completions",
        headers=auth(key),
        json={"model": "gpt-4.1-mini", "messages": messages, "max_tokens": 2},
        timeout=60,
    )
    assert r.status_code == 200, r.text[:300]
    assert r.json()["choices"][0]["message"]["content"] == f"Echo: {n}"
    assert r.json()["usage"]["prompt_tokens"] == 2


def test_max_tokens_truncates_with_finish_reason_length(client):
    messages = [{"role": "user", "content": f"a b c d e f {nonce()}"}]
    resp = client.chat.completions.create(model="gpt-4.1-mini", messages=messages, max_tokens=3)
    assert resp.choices[0].message.content == "Echo: a b"
    assert resp.choices[0].finish_reason == "length"
    assert resp.usage.completion_tokens == 3

    chunks = list(
        client.chat.completions.create(model="gpt-4.1-mini", messages=messages, max_tokens=3, stream=True)
    )
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "Echo: a b"
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["length"]


@pytest.mark.parametrize("model", ["gpt-4.1-mini", "deepseek-chat"])
def test_tool_call_non_streaming(client, mock, model):
    n = nonce()
    messages = [{"role": "user", "content": f"weather in Paris? {n} [tool]"}]
    resp = client.chat.completions.create(model=model, messages=messages, tools=[WEATHER_TOOL])
    choice = resp.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    assert len(choice.message.tool_calls) == 1
    call = choice.message.tool_calls[0]
    assert call.id == TOOL_CALL_ID
    assert call.type == "function"
    assert call.function.name == "get_weather"
    assert call.function.arguments == TOOL_ARGUMENTS
    upstream = mock.single_request_with(n)["body"]
    assert upstream["tools"][0]["function"]["name"] == "get_weather"


@pytest.mark.parametrize("model", ["gpt-4.1-mini", "deepseek-chat"])
def test_tool_call_streaming_fragments_concatenate(client, model):
    messages = [{"role": "user", "content": f"weather in Paris? {nonce()}"}]
    chunks = list(
        client.chat.completions.create(
            model=model,
            messages=messages,
            tools=[WEATHER_TOOL],
            tool_choice={"type": "function", "function": {"name": "get_weather"}},
            stream=True,
        )
    )
    calls: dict[int, dict] = {}
    for c in chunks:
        if not c.choices:
            continue
        for tc in c.choices[0].delta.tool_calls or []:
            entry = calls.setdefault(tc.index, {"id": None, "name": None, "arguments": ""})
            if tc.id:
                entry["id"] = tc.id
            if tc.function and tc.function.name:
                entry["name"] = tc.function.name
            if tc.function and tc.function.arguments:
                entry["arguments"] += tc.function.arguments
    assert calls == {0: {"id": TOOL_CALL_ID, "name": "get_weather", "arguments": TOOL_ARGUMENTS}}
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == ["tool_calls"]


def test_multi_turn_with_tool_result_is_forwarded(client, mock):
    """A tool result goes upstream with its tool_call_id, and the assistant's arguments stay a
    JSON string."""
    n = nonce()
    messages = [
        {"role": "user", "content": "weather in Paris?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {"id": TOOL_CALL_ID, "type": "function", "function": {"name": "get_weather", "arguments": TOOL_ARGUMENTS}}
            ],
        },
        {"role": "tool", "tool_call_id": TOOL_CALL_ID, "content": '{"temperature": 22}'},
        {"role": "user", "content": f"thanks, and now? {n}"},
    ]
    resp = client.chat.completions.create(model="gpt-4.1-mini", messages=messages, tools=[WEATHER_TOOL])
    assert resp.choices[0].message.content == echo(messages)
    assert resp.usage.prompt_tokens == expected_usage(messages, False).prompt_tokens
    sent = mock.single_request_with(n)["body"]["messages"]
    assert [m["role"] for m in sent] == ["user", "assistant", "tool", "user"]
    assert sent[1]["tool_calls"][0]["function"]["arguments"] == TOOL_ARGUMENTS
    assert sent[2]["tool_call_id"] == TOOL_CALL_ID
