"""Aliases and thinking: what the upstream receives for each alias, and the reasoning the client
gets back (`reasoning_content` on the message and on deltas)."""

from __future__ import annotations

import uuid

import grpc
import openai
import pytest

from grpc_details import bad_request_fields

from mock_rules import echo, expected_usage, reasoning, usage_of


def nonce() -> str:
    return uuid.uuid4().hex[:12]


def extra(obj) -> dict:
    return obj.model_extra or {}


@pytest.mark.parametrize("alias", ["gpt-4o", "gpt-4o-mini"])
def test_openai_named_alias_reaches_the_deepseek_upstream_as_the_target(client, mock, alias):
    n = nonce()
    messages = [{"role": "user", "content": f"who are you really? {n}"}]
    resp = client.chat.completions.create(model=alias, messages=messages)
    assert resp.model == alias, "the alias the client asked for stays visible"
    assert resp.choices[0].message.content == echo(messages)

    upstream = mock.single_request_with(n)
    assert upstream["body"]["model"] == "deepseek-v4-flash"
    assert upstream["path"] == "/chat/completions"
    assert upstream["authorization"] == "Bearer mock-secret"


def test_deepseek_reasoner_forces_thinking_on(client, mock):
    n = nonce()
    messages = [{"role": "user", "content": f"think about it {n}"}]
    resp = client.chat.completions.create(model="deepseek-reasoner", messages=messages)

    upstream = mock.single_request_with(n)["body"]
    assert upstream["model"] == "deepseek-v4-flash"
    assert upstream["thinking"] == {"type": "enabled"}

    assert resp.model == "deepseek-reasoner"
    message = resp.choices[0].message
    assert message.content == echo(messages)
    assert extra(message).get("reasoning_content") == reasoning(messages)
    want = expected_usage(messages, thinking=True)
    assert usage_of(resp.usage) == want
    assert resp.usage.completion_tokens_details.reasoning_tokens == want.reasoning_tokens > 0


def test_deepseek_reasoner_streams_reasoning_deltas_before_content(client, mock):
    n = nonce()
    messages = [{"role": "user", "content": f"think while streaming {n}"}]
    chunks = list(client.chat.completions.create(model="deepseek-reasoner", messages=messages, stream=True))

    assert mock.single_request_with(n)["body"]["thinking"] == {"type": "enabled"}
    deltas = [c.choices[0].delta for c in chunks if c.choices]
    reasoning_parts = [extra(d).get("reasoning_content") or "" for d in deltas]
    content_parts = [d.content or "" for d in deltas]
    assert "".join(reasoning_parts) == reasoning(messages)
    assert "".join(content_parts) == echo(messages)
    last_reasoning = max(i for i, p in enumerate(reasoning_parts) if p)
    first_content = min(i for i, p in enumerate(content_parts) if p)
    assert last_reasoning < first_content, "reasoning deltas come before content deltas"


def test_deepseek_chat_forces_thinking_off(client, mock):
    n = nonce()
    messages = [{"role": "user", "content": f"no thinking please {n}"}]
    resp = client.chat.completions.create(model="deepseek-chat", messages=messages)
    upstream = mock.single_request_with(n)["body"]
    assert upstream["model"] == "deepseek-v4-flash"
    assert upstream["thinking"] == {"type": "disabled"}
    assert resp.model == "deepseek-chat"
    assert resp.choices[0].message.content == echo(messages)
    assert extra(resp.choices[0].message).get("reasoning_content") is None
    assert usage_of(resp.usage) == expected_usage(messages, thinking=False)

    n = nonce()
    messages = [{"role": "user", "content": f"no thinking streamed {n}"}]
    chunks = list(client.chat.completions.create(model="deepseek-chat", messages=messages, stream=True))
    assert mock.single_request_with(n)["body"]["thinking"] == {"type": "disabled"}
    assert all(not extra(c.choices[0].delta).get("reasoning_content") for c in chunks if c.choices)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == echo(messages)


def test_alias_thinking_wins_over_the_request(client, mock):
    """`deepseek-chat` is non-thinking by definition, whatever the body asks."""
    n = nonce()
    messages = [{"role": "user", "content": f"override attempt {n}"}]
    resp = client.chat.completions.create(
        model="deepseek-chat", messages=messages, extra_body={"thinking": {"type": "enabled"}, "reasoning_effort": "high"}
    )
    assert resp.choices[0].message.content == echo(messages)
    assert extra(resp.choices[0].message).get("reasoning_content") is None
    upstream = mock.single_request_with(n)["body"]
    assert upstream["thinking"] == {"type": "disabled"}
    assert "reasoning_effort" not in upstream, "the alias switched thinking off: no effort is sent"


def test_openai_provider_never_receives_thinking(client, mock):
    n = nonce()
    messages = [{"role": "user", "content": f"plain openai {n}"}]
    resp = client.chat.completions.create(model="gpt-4.1-mini", messages=messages)
    assert resp.choices[0].message.content == echo(messages)
    list(client.chat.completions.create(model="gpt-4.1-mini", messages=messages, stream=True))
    sent = mock.requests_with(n)
    assert len(sent) == 2
    for r in sent:
        assert r["path"] == "/v1/chat/completions"
        assert r["body"]["model"] == "gpt-4.1-mini"
        assert "thinking" not in r["body"]

    # gpt-4.1-mini cannot think (`thinking = "none"`): asking it to is a 400 naming the field.
    n = nonce()
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(
            model="gpt-4.1-mini",
            messages=[{"role": "user", "content": f"think anyway {n}"}],
            extra_body={"thinking": {"type": "enabled"}},
        )
    assert err.value.body["param"] == "thinking"
    assert mock.requests_with(n) == []


@pytest.mark.parametrize("switch", ["enabled", "disabled"])
def test_caller_switches_thinking_on_a_plain_model(client, mock, switch):
    """On a model without an alias override, DeepSeek's `thinking` field from the caller decides."""
    n = nonce()
    messages = [{"role": "user", "content": f"your choice {n}"}]
    resp = client.chat.completions.create(
        model="deepseek-v4-flash", messages=messages, extra_body={"thinking": {"type": switch}}
    )
    assert mock.single_request_with(n)["body"]["thinking"] == {"type": switch}
    thinking = switch == "enabled"
    assert extra(resp.choices[0].message).get("reasoning_content") == (reasoning(messages) if thinking else None)
    assert usage_of(resp.usage) == expected_usage(messages, thinking)


# ---------------------------------------------------------------- reasoning_effort


@pytest.mark.parametrize("effort", ["none", "low", "high"])
def test_reasoning_effort_on_a_model_that_cannot_think_is_400(client, mock, effort):
    """As OpenAI answers: gpt-4.1-mini has `thinking = "none"`, so any effort is refused."""
    n = nonce()
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(
            model="gpt-4.1-mini", messages=[{"role": "user", "content": f"effort {n}"}], reasoning_effort=effort
        )
    assert err.value.body["param"] == "reasoning_effort"
    assert "gpt-4.1-mini" in err.value.body["message"]
    assert mock.requests_with(n) == []


def test_unknown_reasoning_effort_is_400(client, mock):
    n = nonce()
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(
            model="deepseek-v4-flash", messages=[{"role": "user", "content": f"effort {n}"}], reasoning_effort="extreme"
        )
    assert err.value.body["param"] == "reasoning_effort"
    assert mock.requests_with(n) == []


@pytest.mark.parametrize("effort, thinking", [("high", {"type": "enabled"}), ("none", {"type": "disabled"})])
def test_reasoning_effort_switches_thinking_on_a_plain_model(client, mock, effort, thinking):
    n = nonce()
    messages = [{"role": "user", "content": f"effort {effort} {n}"}]
    resp = client.chat.completions.create(model="deepseek-v4-flash", messages=messages, reasoning_effort=effort)
    sent = mock.single_request_with(n)["body"]
    assert sent["thinking"] == thinking
    assert sent.get("reasoning_effort") == (effort if effort != "none" else None)
    on = thinking["type"] == "enabled"
    assert extra(resp.choices[0].message).get("reasoning_content") == (reasoning(messages) if on else None)


def test_an_alias_that_forces_thinking_on_keeps_the_requested_effort(client, mock):
    n = nonce()
    client.chat.completions.create(
        model="deepseek-reasoner", messages=[{"role": "user", "content": f"effort {n}"}], reasoning_effort="low"
    )
    sent = mock.single_request_with(n)["body"]
    assert (sent["thinking"], sent["reasoning_effort"]) == ({"type": "enabled"}, "low")


def grpc_chat(model: str, text: str, **fields):
    from tollgate.v1 import inference_pb2

    return inference_pb2.ChatRequest(model=model, messages=[inference_pb2.Message(role=inference_pb2.ROLE_USER, text=text)], **fields)


def test_grpc_reasoning_effort_on_a_model_that_cannot_think_is_invalid_argument(inference, key, mock):
    from tollgate.v1 import inference_pb2

    n = nonce()
    with pytest.raises(grpc.RpcError) as err:
        inference.Chat(
            grpc_chat("gpt-4.1-mini", f"effort {n}", reasoning_effort=inference_pb2.REASONING_EFFORT_HIGH),
            metadata=[("authorization", f"Bearer {key.secret}")],
            timeout=30,
        )
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert bad_request_fields(err.value) == ["reasoning_effort"]
    assert mock.requests_with(n) == []


@pytest.mark.parametrize("value", [0, 99])
def test_grpc_unknown_reasoning_effort_is_invalid_argument(inference, key, mock, value):
    n = nonce()
    with pytest.raises(grpc.RpcError) as err:
        inference.Chat(
            grpc_chat("deepseek-v4-flash", f"effort {n}", reasoning_effort=value),
            metadata=[("authorization", f"Bearer {key.secret}")],
            timeout=30,
        )
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert bad_request_fields(err.value) == ["reasoning_effort"]
    assert mock.requests_with(n) == []


def test_grpc_reasoning_effort_is_rendered_by_the_provider(inference, key, mock):
    from tollgate.v1 import inference_pb2

    n = nonce()
    inference.Chat(
        grpc_chat("deepseek-v4-flash", f"effort {n}", reasoning_effort=inference_pb2.REASONING_EFFORT_MAX),
        metadata=[("authorization", f"Bearer {key.secret}")],
        timeout=30,
    )
    sent = mock.single_request_with(n)["body"]
    assert (sent["thinking"], sent["reasoning_effort"]) == ({"type": "enabled"}, "max")
