"""The gRPC API (package tollgate.v1) through grpcio stubs generated from proto/: the same answers,
catalogue and billing as REST, and errors as gRPC status codes whose `google.rpc.ErrorInfo`
reason is the OpenAI error type (so 502 and 503, both UNAVAILABLE, stay apart) and whose
`google.rpc.BadRequest` names the offending field, read with grpcio-status."""

from __future__ import annotations

import json
import sqlite3
import uuid
from dataclasses import dataclass
from decimal import Decimal

import grpc
import httpx
import pytest
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_status import rpc_status
from tollgate.v1 import (
    billing_pb2,
    billing_pb2_grpc,
    catalog_pb2,
    catalog_pb2_grpc,
    inference_pb2,
    inference_pb2_grpc,
    metering_pb2,
)

from harness import ALIASES, MODEL_IDS, PRICES, Gateway, auth, make_client, wait_until
from mock_rules import Usage, cost_picodollars, cost_usd, echo, expected_usage, reasoning, usage_of

TIMEOUT = 30


def nonce() -> str:
    return uuid.uuid4().hex[:12]


def metadata(key) -> list[tuple[str, str]]:
    secret = key if isinstance(key, str) else key.secret
    return [("authorization", f"Bearer {secret}")]


def user(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


def proto_request(model: str, text: str, **fields) -> inference_pb2.ChatRequest:
    return inference_pb2.ChatRequest(
        model=model,
        messages=[inference_pb2.Message(role=inference_pb2.ROLE_USER, text=text)],
        **fields,
    )


def proto_usage(u) -> Usage:
    return Usage(u.prompt_tokens, u.completion_tokens, u.cached_prompt_tokens, u.reasoning_tokens)


@pytest.fixture(scope="module")
def inference(grpc_channel):
    return inference_pb2_grpc.InferenceStub(grpc_channel)


@pytest.fixture(scope="module")
def catalog(grpc_channel):
    return catalog_pb2_grpc.CatalogStub(grpc_channel)


@pytest.fixture(scope="module")
def billing(grpc_channel):
    return billing_pb2_grpc.BillingStub(grpc_channel)


@pytest.mark.parametrize("model", ["deepseek-chat", "gpt-4.1-mini"])
def test_chat_answers_like_rest(inference, client, key, mock, model):
    text = f"same answer everywhere {nonce()} [cache=1]"
    rest = client.chat.completions.create(model=model, messages=user(text))
    resp = inference.Chat(proto_request(model, text), metadata=metadata(key), timeout=TIMEOUT)

    assert resp.id.startswith("chatcmpl-")
    assert resp.id != rest.id
    assert resp.model == model
    assert len(resp.choices) == 1
    assert resp.choices[0].message.role == inference_pb2.ROLE_ASSISTANT
    assert resp.choices[0].message.text == rest.choices[0].message.content == echo(user(text))
    assert resp.choices[0].finish_reason == "stop"
    want = expected_usage(user(text), thinking=False)
    assert proto_usage(resp.usage) == usage_of(rest.usage) == want
    assert resp.usage.total_tokens == want.total_tokens


def test_chat_stream_gives_the_same_content_and_a_usage_chunk(inference, key):
    text = f"stream over grpc {nonce()}"
    chunks = list(
        inference.ChatStream(
            proto_request("deepseek-chat", text, stream_options=inference_pb2.StreamOptions(include_usage=True)),
            metadata=metadata(key),
            timeout=TIMEOUT,
        )
    )
    assert len(chunks) >= 3
    assert {c.id for c in chunks} == {chunks[0].id}
    assert chunks[0].id.startswith("chatcmpl-")
    assert all(c.model == "deepseek-chat" for c in chunks)
    assert chunks[0].choices[0].delta.role == inference_pb2.ROLE_ASSISTANT
    content = "".join(c.choices[0].delta.content for c in chunks if c.choices)
    assert content == echo(user(text))
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].HasField("finish_reason")]
    assert finishes == ["stop"]
    last = chunks[-1]
    assert len(last.choices) == 0
    assert last.HasField("usage")
    assert proto_usage(last.usage) == expected_usage(user(text), thinking=False)
    assert [i for i, c in enumerate(chunks) if c.HasField("usage")] == [len(chunks) - 1]


def test_chat_stream_carries_reasoning_for_deepseek_reasoner(inference, key, mock):
    n = nonce()
    text = f"reason over grpc {n}"
    chunks = list(inference.ChatStream(proto_request("deepseek-reasoner", text), metadata=metadata(key), timeout=TIMEOUT))
    assert mock.single_request_with(n)["body"]["thinking"] == {"type": "enabled"}
    assert "".join(c.choices[0].delta.reasoning_content for c in chunks if c.choices) == reasoning(user(text))
    assert "".join(c.choices[0].delta.content for c in chunks if c.choices) == echo(user(text))


@pytest.mark.parametrize("thinking", [True, False])
def test_chat_thinking_switch_reaches_the_deepseek_upstream(inference, key, mock, thinking):
    n = nonce()
    text = f"grpc thinking switch {n}"
    resp = inference.Chat(proto_request("deepseek-v4-flash", text, thinking=thinking), metadata=metadata(key), timeout=TIMEOUT)
    assert mock.single_request_with(n)["body"]["thinking"] == {"type": "enabled" if thinking else "disabled"}
    message = resp.choices[0].message
    assert message.text == echo(user(text))
    if thinking:
        assert message.reasoning_content == reasoning(user(text))
    else:
        assert not message.HasField("reasoning_content")
    assert proto_usage(resp.usage) == expected_usage(user(text), thinking)


def test_list_models_matches_rest(catalog, gateway, key):
    resp = catalog.ListModels(catalog_pb2.ListModelsRequest(), metadata=metadata(key), timeout=TIMEOUT)
    grpc_ids = [m.id for m in resp.models]
    rest = httpx.get(f"{gateway.base_url}/models", headers=auth(key), timeout=TIMEOUT).json()
    assert sorted(grpc_ids) == sorted(m["id"] for m in rest["data"])
    assert set(grpc_ids) == MODEL_IDS | set(ALIASES)

    by_id = {m.id: m for m in resp.models}
    flash = by_id["deepseek-v4-flash"]
    assert (flash.pricing.input_micros_per_mtok, flash.pricing.cached_input_micros_per_mtok, flash.pricing.output_micros_per_mtok) == (
        220000,
        5000,
        440000,
    )
    pro = by_id["deepseek-v4-pro"]
    assert (pro.pricing.input_micros_per_mtok, pro.pricing.cached_input_micros_per_mtok, pro.pricing.output_micros_per_mtok) == (
        2800000,
        24000,
        5600000,
    )
    assert flash.context_length == 1000000 and flash.max_output_tokens == 384000
    assert not flash.HasField("alias_of")
    for alias, target in ALIASES.items():
        assert by_id[alias].alias_of == target
    assert by_id["deepseek-chat"].HasField("alias_thinking") and by_id["deepseek-chat"].alias_thinking is False
    assert by_id["deepseek-reasoner"].alias_thinking is True


def test_get_model_and_not_found(catalog, key):
    m = catalog.GetModel(catalog_pb2.GetModelRequest(id="gpt-4o"), metadata=metadata(key), timeout=TIMEOUT)
    assert m.id == "gpt-4o" and m.alias_of == "deepseek-v4-flash"
    with pytest.raises(grpc.RpcError) as err:
        catalog.GetModel(catalog_pb2.GetModelRequest(id="no-such-model"), metadata=metadata(key), timeout=TIMEOUT)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


def usage_json(gateway, key) -> dict:
    r = gateway.usage(key)
    assert r.status_code == 200, r.text
    return json.loads(r.text, parse_float=Decimal)


def test_rest_and_grpc_calls_are_counted_and_billed_identically(gateway, inference, billing, mock):
    key = gateway.create_key("pro")
    client = make_client(gateway, key)
    n = nonce()
    text = f"bill both doors the same {n} [cache=2]"
    prices = PRICES["deepseek-v4-flash"]

    rest = client.chat.completions.create(model="deepseek-chat", messages=user(text))
    one = usage_of(rest.usage)
    assert one == expected_usage(user(text), thinking=False)
    report = usage_json(gateway, key)
    assert report["monthly_requests"] == 1
    assert Decimal(report["total_cost_usd"]) == cost_usd(one, prices)

    resp = inference.Chat(proto_request("deepseek-chat", text), metadata=metadata(key), timeout=TIMEOUT)
    assert proto_usage(resp.usage) == one
    assert resp.usage.HasField("cost_picodollars"), resp.usage
    assert resp.usage.cost_picodollars == cost_picodollars(one, prices)
    assert len(mock.requests_with(n)) == 2

    g = billing.GetUsage(billing_pb2.GetUsageRequest(), metadata=metadata(key), timeout=TIMEOUT)
    assert g.tier == "pro"
    assert g.monthly_requests == 2
    assert g.monthly_limit == 3000
    assert g.remaining == 2998
    assert g.rpm_limit == 30
    assert g.total_prompt_tokens == 2 * one.prompt_tokens
    assert g.total_completion_tokens == 2 * one.completion_tokens
    assert g.total_cached_prompt_tokens == 2 * one.cached_tokens
    assert g.total_reasoning_tokens == 0
    assert g.total_cost_picodollars == 2 * cost_picodollars(one, prices)

    report = usage_json(gateway, key)
    assert report["monthly_requests"] == 2
    assert report["total_prompt_tokens"] == 2 * one.prompt_tokens
    assert report["total_completion_tokens"] == 2 * one.completion_tokens
    assert report["total_cached_prompt_tokens"] == 2 * one.cached_tokens
    assert Decimal(report["total_cost_usd"]) == 2 * cost_usd(one, prices)
    assert report["key_prefix"] == g.key_prefix
    client.close()


def test_streamed_grpc_call_is_billed(gateway, inference, billing):
    key = gateway.create_key("pro")
    text = f"stream bill {nonce()}"
    list(inference.ChatStream(proto_request("deepseek-chat", text), metadata=metadata(key), timeout=TIMEOUT))
    want = expected_usage(user(text), thinking=False)
    g = billing.GetUsage(billing_pb2.GetUsageRequest(), metadata=metadata(key), timeout=TIMEOUT)
    assert g.monthly_requests == 1
    assert (g.total_prompt_tokens, g.total_completion_tokens) == (want.prompt_tokens, want.completion_tokens)
    assert g.total_cost_picodollars == cost_picodollars(want, PRICES["deepseek-v4-flash"])


# ---- status codes ------------------------------------------------------------------------


def rpc_code(call) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as err:
        call()
    return err.value.code()


@dataclass(frozen=True)
class RpcFailure:
    """A failed call as a gRPC client sees it: the status code, the `ErrorInfo` reason (the
    OpenAI error type) and its `code` entry, and the `BadRequest` field violations."""

    code: grpc.StatusCode
    reason: str
    error_code: str | None = None
    fields: tuple[str, ...] = ()


def rpc_failure(call) -> RpcFailure:
    """Runs `call`, which must fail, and reads its `google.rpc.Status` details."""
    with pytest.raises(grpc.RpcError) as err:
        call()
    status = rpc_status.from_call(err.value)
    assert status is not None, f"{err.value.code()} carries no google.rpc.Status: {err.value.details()}"
    assert status.code == err.value.code().value[0]
    infos, fields = [], []
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            infos.append(info)
        elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            fields.extend(v.field for v in bad.field_violations)
    assert len(infos) == 1, status
    assert infos[0].domain == "tollgate", infos[0]
    return RpcFailure(err.value.code(), infos[0].reason, infos[0].metadata.get("code"), tuple(fields))


def test_no_key_is_unauthenticated(inference, billing):
    unauthenticated = RpcFailure(grpc.StatusCode.UNAUTHENTICATED, "authentication_error", "missing_api_key")
    assert rpc_failure(lambda: inference.Chat(proto_request("deepseek-chat", "hi"), timeout=TIMEOUT)) == unauthenticated
    assert rpc_failure(lambda: billing.GetUsage(billing_pb2.GetUsageRequest(), timeout=TIMEOUT)) == unauthenticated
    assert rpc_failure(lambda: list(inference.ChatStream(proto_request("deepseek-chat", "hi"), timeout=TIMEOUT))) == unauthenticated


def test_bad_key_is_unauthenticated(inference):
    md = metadata("sk-not-a-real-key-000000000")
    assert rpc_failure(lambda: inference.Chat(proto_request("deepseek-chat", "hi"), metadata=md, timeout=TIMEOUT)) == RpcFailure(
        grpc.StatusCode.UNAUTHENTICATED, "authentication_error", "invalid_api_key"
    )


def test_invalid_request_is_invalid_argument_naming_the_field(inference, key, mock):
    n = nonce()
    empty = inference_pb2.ChatRequest(model="deepseek-chat", messages=[], user=n)
    failure = rpc_failure(lambda: inference.Chat(empty, metadata=metadata(key), timeout=TIMEOUT))
    assert (failure.code, failure.reason, failure.fields) == (grpc.StatusCode.INVALID_ARGUMENT, "invalid_request_error", ("messages",))
    hot = proto_request("deepseek-chat", n, temperature=3.0)
    failure = rpc_failure(lambda: inference.Chat(hot, metadata=metadata(key), timeout=TIMEOUT))
    assert (failure.code, failure.reason, failure.fields) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "invalid_request_error",
        ("temperature",),
    )
    assert mock.requests_with(n) == []


def test_unknown_model_is_not_found(inference, key):
    call = lambda: inference.Chat(proto_request("no-such-model", "hi"), metadata=metadata(key), timeout=TIMEOUT)  # noqa: E731
    failure = rpc_failure(call)
    assert (failure.code, failure.reason, failure.fields) == (grpc.StatusCode.NOT_FOUND, "not_found_error", ("model",))


def test_rpm_limit_is_resource_exhausted(gateway, inference):
    key = gateway.create_key("tight_rpm")
    for i in range(3):
        inference.Chat(proto_request("deepseek-chat", f"rpm {i} {nonce()}"), metadata=metadata(key), timeout=TIMEOUT)
    call = lambda: inference.Chat(proto_request("deepseek-chat", "too many"), metadata=metadata(key), timeout=TIMEOUT)  # noqa: E731
    assert rpc_failure(call) == RpcFailure(grpc.StatusCode.RESOURCE_EXHAUSTED, "rate_limit_error", "rate_limit_exceeded")


def test_an_empty_balance_is_resource_exhausted_insufficient_quota(gateway, inference, mock):
    """The same RESOURCE_EXHAUSTED as a rate limit, told apart by its reason; nothing reaches the
    upstream and nothing is counted."""
    key = gateway.create_key("pro", None, "--balance", "0")
    n = nonce()
    for call in (
        lambda: inference.Chat(proto_request("deepseek-chat", n), metadata=metadata(key), timeout=TIMEOUT),
        lambda: list(inference.ChatStream(proto_request("deepseek-chat", n), metadata=metadata(key), timeout=TIMEOUT)),
    ):
        assert rpc_failure(call) == RpcFailure(grpc.StatusCode.RESOURCE_EXHAUSTED, "insufficient_quota", "insufficient_quota")
    assert mock.requests_with(n) == []
    assert usage_json(gateway, key)["monthly_requests"] == 0


@pytest.mark.parametrize(("upstream_status", "reason"), [(500, "upstream_error"), (503, "service_unavailable")])
def test_upstream_failure_is_unavailable(inference, key, upstream_status, reason):
    """502 upstream_error and 503 service_unavailable both travel as UNAVAILABLE; the reason keeps
    them apart."""
    req = proto_request("deepseek-chat", f"{nonce()} [status={upstream_status}]")
    failure = rpc_failure(lambda: inference.Chat(req, metadata=metadata(key), timeout=TIMEOUT))
    assert (failure.code, failure.reason) == (grpc.StatusCode.UNAVAILABLE, reason)


def test_slow_upstream_is_deadline_exceeded(inference, key, mock):
    hold = f"slow-{nonce()}"
    req = proto_request("deepseek-slow", f"{hold} [hold={hold}]")
    try:
        failure = rpc_failure(lambda: inference.Chat(req, metadata=metadata(key), timeout=TIMEOUT))
    finally:
        mock.release(hold)
    assert (failure.code, failure.reason) == (grpc.StatusCode.DEADLINE_EXCEEDED, "upstream_timeout")


def test_mid_stream_failure_ends_the_stream_with_an_error_status(inference, key):
    req = proto_request("deepseek-chat", f"one two three {nonce()} [stream_error]")
    received = []

    def read_all():
        for chunk in inference.ChatStream(req, metadata=metadata(key), timeout=TIMEOUT):
            if chunk.choices:
                received.append(chunk.choices[0].delta.content)

    failure = rpc_failure(read_all)
    assert "".join(received) == "Echo: one"
    assert (failure.code, failure.reason) == (grpc.StatusCode.UNAVAILABLE, "upstream_error")


FLASH_ONLY_TIER = """
[[tiers]]
name = "flash_only"
rpm = 100
monthly_requests = 1000
models = ["deepseek-v4-flash", "deepseek-chat"]
"""


def test_permission_denied_and_internal_travel_with_their_reasons(tmp_path, mock):
    """A model outside the tier's allow-list is PERMISSION_DENIED (`model_not_allowed`, field
    `model`); a ledger that cannot be written is INTERNAL, and the answer is withheld."""
    gateway = Gateway(tmp_path, mock, extra_config=FLASH_ONLY_TIER)
    channel = grpc.insecure_channel(gateway.grpc_addr)
    try:
        stub = inference_pb2_grpc.InferenceStub(channel)
        key = gateway.create_key("flash_only")
        n = nonce()
        for call in (
            lambda: stub.Chat(proto_request("gpt-4.1-mini", n), metadata=metadata(key), timeout=TIMEOUT),
            lambda: list(stub.ChatStream(proto_request("deepseek-v4-pro", n), metadata=metadata(key), timeout=TIMEOUT)),
        ):
            assert rpc_failure(call) == RpcFailure(
                grpc.StatusCode.PERMISSION_DENIED, "permission_error", "model_not_allowed", ("model",)
            )
        assert mock.requests_with(n) == []

        # Warm the key (its monthly count is read from the ledger once), then take the ledger away.
        stub.Chat(proto_request("deepseek-chat", nonce()), metadata=metadata(key), timeout=TIMEOUT)
        db = sqlite3.connect(tmp_path / "tollgate.db", timeout=10)
        db.execute("ALTER TABLE usage_ledger RENAME TO usage_ledger_gone")
        db.commit()
        db.close()
        failure = rpc_failure(lambda: stub.Chat(proto_request("deepseek-chat", nonce()), metadata=metadata(key), timeout=TIMEOUT))
        assert (failure.code, failure.reason) == (grpc.StatusCode.INTERNAL, "internal_error")
    finally:
        channel.close()
        gateway.stop()


@pytest.mark.parametrize("method", ["Settle", "Admit", "Authenticate", "InvalidateKey"])
def test_metering_is_not_served_on_the_public_listener(grpc_channel, key, method):
    """Admission and settlement are internal: a client able to call Settle could settle its own
    request id at zero tokens before the gateway does."""
    messages = {
        "Settle": (metering_pb2.SettleRequest(request_id="chatcmpl-x", key_id="k"), metering_pb2.Settlement),
        "Admit": (metering_pb2.AdmitRequest(request_id="chatcmpl-x", model="gpt-4o"), metering_pb2.Admission),
        "Authenticate": (metering_pb2.AuthenticateRequest(), metering_pb2.KeyInfo),
        "InvalidateKey": (metering_pb2.InvalidateKeyRequest(key_id="k"), metering_pb2.InvalidateKeyResponse),
    }
    request, response = messages[method]
    call = grpc_channel.unary_unary(
        f"/tollgate.v1.Metering/{method}",
        request_serializer=type(request).SerializeToString,
        response_deserializer=response.FromString,
    )
    with pytest.raises(grpc.RpcError) as err:
        call(request, metadata=metadata(key), timeout=TIMEOUT)
    assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED


@pytest.mark.parametrize("service", ["", "tollgate.v1.Inference", "tollgate.v1.Catalog", "tollgate.v1.Billing"])
def test_health_reports_serving(grpc_channel, service):
    health = health_pb2_grpc.HealthStub(grpc_channel)
    reply = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=TIMEOUT)
    assert reply.status == health_pb2.HealthCheckResponse.SERVING
