"""`POST /v1/responses` end to end: the official `openai` SDK's `responses` client against a gateway
with one model of every provider kind, each served by the mock flavour of its protocol, streamed
and not. Every request is checked in the ledger: billed once, at the serving model's prices, at
the cost the answer reported.

Decisions held here (gateway-rest/src/responses/):
- the gateway keeps no responses: `previous_response_id` is a 400 naming it; `store` is accepted
  and has no effect;
- the upstream's reasoning is returned as the reasoning item's summary, the provider's reasoning
  state as its `encrypted_content`, which the client sends back in `input`;
- only function tools.
"""

from __future__ import annotations

import json

import httpx
import openai
import pytest

from harness import Gateway, make_client, nonce
from mock_rules import anthropic_signature
from surfaces import BY_KIND, KINDS, PNG_B64, assert_billed_once, config, ledger, upstream_body

TIMEOUT = 30
WEATHER = {
    "type": "function",
    "name": "get_weather",
    "description": "Weather in a city",
    "parameters": {"type": "object", "properties": {"location": {"type": "string"}}, "required": ["location"]},
}


@pytest.fixture(scope="module")
def gateway(mock, tmp_path_factory):
    gw = Gateway(tmp_path_factory.mktemp("tollgate-responses"), mock, extra_config=config(mock.base_url))
    yield gw
    gw.stop()


def billed(gateway, key, kind: str, response) -> None:
    u = response.usage
    assert u.total_tokens == u.input_tokens + u.output_tokens
    assert_billed_once(
        gateway,
        key,
        BY_KIND[kind],
        prompt=u.input_tokens,
        cached=u.input_tokens_details.cached_tokens,
        written=(u.input_tokens_details.model_extra or {}).get("cache_write_tokens", 0),
        completion=u.output_tokens,
        cost=u.model_extra["cost"],
    )


def create(client, kind: str, stream: bool, **params):
    """One request, through `responses.stream(...).get_final_response()` or not; returns the
    response and, when streamed, the events."""
    if not stream:
        return client.responses.create(model=BY_KIND[kind].model, **params), None
    with client.responses.stream(model=BY_KIND[kind].model, **params) as s:
        events = list(s)
        response = s.get_final_response()
    numbers = [e.sequence_number for e in events]
    assert numbers == list(range(len(events))), "sequence_number counts every event"
    return response, events


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
@pytest.mark.parametrize("kind", KINDS)
def test_text_on_every_provider(gateway, key, client, mock, kind, stream):
    n = nonce()
    response, events = create(client, kind, stream, input=f"hello there {n}", instructions="Be brief.")
    assert response.id.startswith("resp_")
    assert response.status == "completed"
    assert response.output_text == f"Echo: hello there {n}"
    # Models that think by default (DeepSeek V4, MiniMax) add reasoning items.
    types = [i.type for i in response.output]
    assert types.count("message") == 1
    assert set(types) <= ({"message", "reasoning"} if BY_KIND[kind].thinks else {"message"})
    if stream:
        types = [e.type for e in events]
        assert types[:2] == ["response.created", "response.in_progress"]
        assert types[-1] == "response.completed"
        for expected in ("response.output_item.added", "response.content_part.added", "response.output_text.delta",
                         "response.output_text.done", "response.content_part.done", "response.output_item.done"):
            assert expected in types
    body = upstream_body(mock, n)
    assert "Be brief." in json.dumps(body)
    billed(gateway, key, kind, response)


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
@pytest.mark.parametrize("kind", KINDS)
def test_function_call_and_its_output(gateway, key, client, mock, kind, stream):
    n = nonce()
    ask = {"role": "user", "content": f"weather please [tool] {n}"}
    response, events = create(client, kind, stream, input=[ask], tools=[WEATHER])
    calls = [i for i in response.output if i.type == "function_call"]
    assert len(calls) == 1
    assert calls[0].name == "get_weather"
    assert json.loads(calls[0].arguments) == {"location": "Paris"}
    if stream:
        assert "response.function_call_arguments.delta" in [e.type for e in events]
    billed(gateway, key, kind, response)

    m = nonce()
    follow = [ask, *[i.model_dump(exclude_none=True) for i in response.output],
              {"type": "function_call_output", "call_id": calls[0].call_id, "output": f"22 degrees {m}"}]
    answer, _ = create(client, kind, stream, input=follow, tools=[WEATHER])
    assert answer.output
    sent = json.dumps(upstream_body(mock, m))
    assert (calls[0].name if kind == "gemini" else calls[0].call_id) in sent.replace(f"22 degrees {m}", "")
    assert len(ledger(gateway, key)) == 2


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
@pytest.mark.parametrize("kind", [k for k in KINDS if BY_KIND[k].thinks])
def test_reasoning_items(gateway, key, client, kind, stream):
    n = nonce()
    response, events = create(
        client, kind, stream, input=f"ponder {n}", reasoning={"effort": "low", "summary": "auto"}, max_output_tokens=4096
    )
    # Reasoning first; a provider that completes its reasoning state last (MiniMax) adds an item
    # holding only that state after the message.
    assert [i.type for i in response.output][:2] == ["reasoning", "message"]
    assert response.output[0].summary[0].text == f"Thinking about: ponder {n}"
    assert response.output_text == f"Echo: ponder {n}"
    if stream:
        assert "response.reasoning_summary_text.delta" in [e.type for e in events]
    if kind == "anthropic":
        assert response.output[0].encrypted_content.startswith("tg1.")
    billed(gateway, key, kind, response)


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_anthropic_reasoning_round_trips_through_encrypted_content(client, mock, stream):
    """The mock refuses a thinking tool loop whose thinking block is not the signed one it gave."""
    n = nonce()
    ask = {"role": "user", "content": f"weather [tool] {n}"}
    params = dict(reasoning={"effort": "low"}, tools=[WEATHER], max_output_tokens=4096)
    response, _ = create(client, "anthropic", stream, input=[ask], **params)
    call = next(i for i in response.output if i.type == "function_call")
    m = nonce()
    follow = [ask, *[i.model_dump(exclude_none=True) for i in response.output],
              {"type": "function_call_output", "call_id": call.call_id, "output": f"sunny {m}"}]
    create(client, "anthropic", stream, input=follow, **params)
    sent = upstream_body(mock, m)["messages"][1]["content"][0]
    assert sent["type"] == "thinking" and sent["signature"] == anthropic_signature(sent["thinking"])


@pytest.mark.parametrize("kind", KINDS)
def test_images(client, mock, kind):
    n = nonce()
    content = [
        {"type": "input_text", "text": f"what is this {n}"},
        {"type": "input_image", "image_url": f"data:image/png;base64,{PNG_B64}"},
    ]
    if not BY_KIND[kind].vision:
        with pytest.raises(openai.BadRequestError):
            client.responses.create(model=BY_KIND[kind].model, input=[{"role": "user", "content": content}])
        return
    response = client.responses.create(model=BY_KIND[kind].model, input=[{"role": "user", "content": content}])
    assert response.output_text.startswith("Echo: what is this")
    assert PNG_B64 in json.dumps(upstream_body(mock, n))


@pytest.mark.parametrize("kind", KINDS)
def test_structured_output(client, mock, kind):
    n = nonce()
    schema = {"type": "object", "properties": {f"field_{n}": {"type": "string"}}, "required": [f"field_{n}"],
              "additionalProperties": False}
    params = dict(
        model=BY_KIND[kind].model,
        input=f"json please {n}",
        text={"format": {"type": "json_schema", "name": "answer", "schema": schema, "strict": True}},
    )
    if kind == "deepseek":
        with pytest.raises(openai.BadRequestError) as e:
            client.responses.create(**params)
        assert "json_schema" in e.value.message
        return
    response = client.responses.create(**params)
    assert response.output_text
    assert f"field_{n}" in json.dumps(upstream_body(mock, n)).replace(f"json please {n}", "")


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
@pytest.mark.parametrize("kind", KINDS)
def test_a_cut_answer_is_incomplete(gateway, key, client, kind, stream):
    params = dict(model=BY_KIND[kind].model, input=f"one two three four {nonce()}", max_output_tokens=2)
    if not stream:
        response = client.responses.create(**params)
    else:
        with client.responses.stream(**params) as s:
            events = list(s)
        assert events[-1].type == "response.incomplete"
        response = events[-1].response
    assert response.status == "incomplete"
    assert response.incomplete_details.reason == "max_output_tokens"
    billed(gateway, key, kind, response)


def test_previous_response_id_is_refused_naming_it(client, gateway, key):
    with pytest.raises(openai.BadRequestError) as e:
        client.responses.create(model="gpt-4.1-mini", input="hi", previous_response_id="resp_123")
    assert e.value.param == "previous_response_id"
    assert "does not store responses" in e.value.message
    assert ledger(gateway, key) == []
    # store is accepted and changes nothing.
    response = client.responses.create(model="gpt-4.1-mini", input="hi", store=True)
    assert response.output_text == "Echo: hi"


def test_errors(gateway, key, client):
    bad = make_client(gateway, "sk-not-a-key")
    with pytest.raises(openai.AuthenticationError):
        bad.responses.create(model="gpt-4.1-mini", input="hi")
    with pytest.raises(openai.NotFoundError):
        client.responses.create(model="no-such-model", input="hi")
    with pytest.raises(openai.BadRequestError) as e:
        client.responses.create(model="gpt-4.1-mini", input="hi", tools=[{"type": "web_search"}])
    assert e.value.param == "tools[0].type"


def test_a_mid_stream_failure_is_response_failed(client):
    with client.responses.stream(model="claude-test", input="a b c [stream_error]") as s:
        events = list(s)
    assert events[-1].type == "response.failed"
    assert "mock mid-stream failure" in events[-1].response.error.message


def codex_request(n: str, model: str, thinks: bool = True) -> dict:
    """A request as Codex CLI sends it (instructions, input items, function tools, reasoning,
    store false, stream, include, prompt_cache_key), from its documented shape. Codex sends
    `reasoning` and `include: ["reasoning.encrypted_content"]` only for models that reason."""
    request = {
        "model": model,
        "instructions": "You are Codex, based on GPT-5. You are running as a coding agent in the Codex CLI.",
        "input": [
            {"type": "message", "role": "developer", "content": [{"type": "input_text", "text": "<permissions instructions>"}]},
            {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "<environment_context>cwd</environment_context>"}]},
            {"type": "message", "role": "user", "content": [{"type": "input_text", "text": f"list the files {n}"}]},
        ],
        "tools": [
            {
                "type": "function",
                "name": "shell",
                "description": "Runs a shell command and returns its output.",
                "strict": False,
                "parameters": {
                    "type": "object",
                    "properties": {"command": {"type": "array", "items": {"type": "string"}}, "workdir": {"type": "string"}},
                    "required": ["command"],
                    "additionalProperties": False,
                },
            }
        ],
        "tool_choice": "auto",
        "parallel_tool_calls": False,
        "reasoning": {"effort": "medium", "summary": "auto"},
        "store": False,
        "stream": True,
        "include": ["reasoning.encrypted_content"],
        "prompt_cache_key": f"session-{n}",
    }
    if not thinks:
        del request["reasoning"], request["include"]
    return request


@pytest.mark.parametrize("kind", KINDS)
def test_codex_profile(gateway, key, mock, kind):
    n = nonce()
    body = codex_request(n, BY_KIND[kind].model, BY_KIND[kind].thinks)
    with httpx.stream(
        "POST", f"{gateway.base_url}/responses", headers={"Authorization": f"Bearer {key.secret}"}, json=body, timeout=TIMEOUT
    ) as resp:
        assert resp.status_code == 200, resp.read()
        events = [json.loads(line.removeprefix("data: ")) for line in resp.iter_lines() if line.startswith("data: ")]
    assert events[-1]["type"] == "response.completed"
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    final = events[-1]["response"]
    text = next(i for i in final["output"] if i["type"] == "message")["content"][0]["text"]
    # Anthropic and Gemini merge consecutive user messages into one turn, and the mock echoes it.
    assert text.startswith("Echo: ") and text.endswith(f"list the files {n}")
    sent = upstream_body(mock, n)
    if kind == "openai":
        assert sent["prompt_cache_key"] == f"session-{n}"
    assert len(ledger(gateway, key)) == 1


def test_reasoning_on_a_model_that_does_not_think_is_refused(client):
    """As OpenAI refuses `reasoning.effort` on a non-reasoning model (the thinking decision is
    Inference's, the same as chat completions' `reasoning_effort`)."""
    with pytest.raises(openai.BadRequestError) as e:
        client.responses.create(model=BY_KIND["openai"].model, input="hi", reasoning={"effort": "low"})
    assert e.value.body["param"] == "reasoning.effort"
    assert e.value.body["message"].startswith("reasoning.effort is not supported")
    assert e.value.body["type"] == "invalid_request_error"


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_a_limit_error_names_the_responses_field(client, stream):
    """Inference checks `max_tokens` against the model; a Responses caller wrote
    `max_output_tokens`, and the error names that."""
    with pytest.raises(openai.BadRequestError) as e:
        create(client, "openai", stream, input="hi", max_output_tokens=10_000_000)
    assert e.value.body["param"] == "max_output_tokens", e.value.body
    assert e.value.body["message"].startswith("max_output_tokens is too large"), e.value.body
