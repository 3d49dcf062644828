"""The `deepseek` provider kind, for what test_chat_rest.py, test_aliases.py, test_errors.py,
test_grpc.py and test_billing.py do not already cover: developer messages, the reasoning round
trip in tool loops (the mock, like DeepSeek, refuses a thinking-mode tool-call turn without its
reasoning_content), structured output (json_object only), sampling parameters, images refused
for a text-only model, and streamed tool calls with thinking on. REST via the official SDK; gRPC
for the round trip."""

from __future__ import annotations


import openai
import pytest
from tollgate.v1 import inference_pb2

from harness import Gateway, extra, nonce, user
from mock_rules import TOOL_ARGUMENTS, TOOL_CALL_ID, echo, reasoning

TIMEOUT = 30

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather of a city",
        "parameters": {"type": "object", "properties": {"location": {"type": "string"}}, "required": ["location"]},
    },
}

TEXT_ONLY_MODEL = """
[[models]]
id = "deepseek-text-only"
provider = "deepseek"
upstream_model = "deepseek-v4-flash"
owned_by = "deepseek"
context_length = 1000000
max_output_tokens = 384000
input_price = 0.22
cached_input_price = 0.005
output_price = 0.44
thinking = "optional"
vision = false
"""


@pytest.fixture(scope="module")
def gateway(mock, tmp_path_factory):
    gw = Gateway(tmp_path_factory.mktemp("tollgate-deepseek"), mock, TEXT_ONLY_MODEL)
    yield gw
    gw.stop()


def test_developer_becomes_system(client, mock):
    n = nonce()
    messages = [{"role": "developer", "content": "Be brief."}, {"role": "user", "content": f"hi {n}"}]
    resp = client.chat.completions.create(model="deepseek-chat", messages=messages)
    assert resp.choices[0].message.content == echo(messages)
    assert [m["role"] for m in mock.single_request_with(n)["body"]["messages"]] == ["system", "user"]


def test_tool_loop_sends_reasoning_content_back(client, mock):
    n = nonce()
    messages = user(f"weather in Paris? {n}")
    first = client.chat.completions.create(
        model="deepseek-reasoner", messages=messages, tools=[WEATHER_TOOL], tool_choice="required"
    )
    assistant = first.choices[0].message
    assert first.choices[0].finish_reason == "tool_calls"
    assert extra(assistant)["reasoning_content"] == reasoning(messages)
    messages.append(assistant)
    messages.append({"role": "tool", "tool_call_id": TOOL_CALL_ID, "content": "22 degrees"})
    second = client.chat.completions.create(model="deepseek-reasoner", messages=messages, tools=[WEATHER_TOOL])
    assert second.choices[0].message.content == echo(user(f"weather in Paris? {n}"))
    sent = mock.requests_with(n)[-1]["body"]["messages"]
    assert sent[1]["reasoning_content"] == reasoning(user(f"weather in Paris? {n}"))


def test_tool_loop_without_reasoning_content_is_refused_by_deepseek_as_400(client):
    messages = [
        {"role": "user", "content": f"weather? {nonce()}"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [{"id": TOOL_CALL_ID, "type": "function", "function": {"name": "get_weather", "arguments": TOOL_ARGUMENTS}}],
        },
        {"role": "tool", "tool_call_id": TOOL_CALL_ID, "content": "sunny"},
    ]
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model="deepseek-reasoner", messages=messages, tools=[WEATHER_TOOL])
    assert "reasoning_content" in err.value.message


def test_streamed_tool_call_with_thinking_is_reassembled(client):
    messages = user(f"weather? {nonce()}")
    with client.chat.completions.stream(
        model="deepseek-reasoner", messages=messages, tools=[WEATHER_TOOL], tool_choice={"type": "function", "function": {"name": "get_weather"}}
    ) as stream:
        final = stream.get_final_completion()
    call = final.choices[0].message.tool_calls[0]
    assert (call.id, call.function.name, call.function.arguments) == (TOOL_CALL_ID, "get_weather", TOOL_ARGUMENTS)
    assert final.choices[0].finish_reason == "tool_calls"


@pytest.mark.parametrize("tool_choice", ["auto", "none", "required"])
def test_tool_choice_and_parallel_tool_calls_pass_through(client, mock, tool_choice):
    n = nonce()
    client.chat.completions.create(
        model="deepseek-chat", messages=user(f"tools {n}"), tools=[WEATHER_TOOL], tool_choice=tool_choice, parallel_tool_calls=False
    )
    sent = mock.single_request_with(n)["body"]
    assert (sent["tool_choice"], sent["parallel_tool_calls"]) == (tool_choice, False)


def test_json_object_passes_and_json_schema_is_400(client, mock, gateway, key):
    n = nonce()
    client.chat.completions.create(model="deepseek-chat", messages=user(f"json {n}"), response_format={"type": "json_object"})
    assert mock.single_request_with(n)["body"]["response_format"] == {"type": "json_object"}

    m = nonce()
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(
            model="deepseek-chat",
            messages=user(f"schema {m}"),
            response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object"}}},
        )
    assert err.value.body["param"] == "response_format"
    assert mock.requests_with(m) == []


def test_stop_temperature_top_p_and_max_tokens_reach_deepseek(client, mock):
    n = nonce()
    messages = user(f"one two three four {n}")
    resp = client.chat.completions.create(
        model="deepseek-chat", messages=messages, stop=["END"], temperature=0.4, top_p=0.8, max_tokens=3
    )
    assert resp.choices[0].finish_reason == "length"
    sent = mock.single_request_with(n)["body"]
    assert (sent["stop"], sent["temperature"], sent["top_p"], sent["max_tokens"]) == (["END"], 0.4, 0.8, 3)


@pytest.mark.parametrize("url", ["data:image/png;base64,iVBORw0KGgo=", "https://example.com/cat.png"])
def test_images_are_400_for_a_text_only_model(client, mock, url):
    n = nonce()
    content = [{"type": "text", "text": f"what is this {n}"}, {"type": "image_url", "image_url": {"url": url}}]
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="deepseek-text-only", messages=[{"role": "user", "content": content}])
    assert mock.requests_with(n) == []


def test_grpc_tool_loop_round_trips_reasoning_content(inference, key, mock):
    n = nonce()
    text = f"grpc weather {n}"
    tool = inference_pb2.Tool(type="function", function=inference_pb2.FunctionDefinition(name="get_weather"))
    first = inference.Chat(
        inference_pb2.ChatRequest(
            model="deepseek-reasoner",
            messages=[inference_pb2.Message(role=inference_pb2.ROLE_USER, text=text)],
            tools=[tool],
            tool_choice=inference_pb2.ToolChoice(mode="required"),
        ),
        metadata=[("authorization", f"Bearer {key.secret}")],
        timeout=TIMEOUT,
    )
    assistant = first.choices[0].message
    assert assistant.reasoning_content == reasoning(user(text))
    second = inference.Chat(
        inference_pb2.ChatRequest(
            model="deepseek-reasoner",
            messages=[
                inference_pb2.Message(role=inference_pb2.ROLE_USER, text=text),
                assistant,
                inference_pb2.Message(role=inference_pb2.ROLE_TOOL, tool_call_id=TOOL_CALL_ID, text="sunny"),
            ],
            tools=[tool],
        ),
        metadata=[("authorization", f"Bearer {key.secret}")],
        timeout=TIMEOUT,
    )
    assert second.choices[0].finish_reason == "stop"
    assert mock.requests_with(n)[-1]["body"]["messages"][1]["reasoning_content"] == reasoning(user(text))
