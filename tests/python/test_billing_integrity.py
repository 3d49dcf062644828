"""Billing integrity (issue 15, items 1, 2, 3, 6 and 8), over the wire: what a caller cannot make the
gateway forward, what every admitted request ends up billed, and what a reservation covers. Each
test reads what the client got, what the mock received and what the ledger and accounts hold.

1. A pass-through field (REST: an unknown top-level field; gRPC: `extra_json`) that names a field
   of the contract, in either spelling, is a 400 / INVALID_ARGUMENT naming it, before admission.
2. A price-changing pass-through field is refused unless the model's `passthrough_allow` names it.
3. Every admitted request ends with one ledger row: the upstream's final count, else an estimate
   marked `estimated` (timeouts after the request was sent, a 200 without usage or with an
   impossible count, an Anthropic stream cut before `message_delta`); zero only where the
   upstream refused before any body.
6. A ledger row that cannot be written fails its request with a 500 and keeps its reservation.
8. The per-image worst case is the model's `image_tokens_max`; the completion limit reaches
   DeepSeek as `max_tokens`; a cost above its reservation is counted in the key's account."""

from __future__ import annotations

import json
import math
import re
import sqlite3
import threading
from decimal import Decimal

import grpc
import httpx
import pytest
from tollgate.v1 import inference_pb2

from grpc_details import bad_request_fields
from harness import Gateway, auth, nonce, sqlite_rows, user, wait_until
from mock_rules import words

TIMEOUT = 30

CONFIG = """
[[models]]
id = "gpt-tiered"
provider = "openai"
upstream_model = "gpt-4.1-mini"
context_length = 1047576
max_output_tokens = 32768
input_price = 0.40
output_price = 1.60
passthrough_allow = ["service_tier"]

# Two vision models alike but for the per-image worst case (ids of equal length, so their
# requests encode to the same size).
[[models]]
id = "vision-std"
provider = "openai"
upstream_model = "gpt-4.1-mini"
context_length = 1047576
max_output_tokens = 32768
input_price = 1
output_price = 1

[[models]]
id = "vision-big"
provider = "openai"
upstream_model = "gpt-4o-mini"
context_length = 1047576
max_output_tokens = 32768
input_price = 1
output_price = 1
image_tokens_max = 48169

[[providers]]
name = "anthropic"
kind = "anthropic"
base_url = "{mock}/v1"
api_key_env = "MOCK_ANTHROPIC_KEY"
connect_timeout_secs = 5
first_token_timeout_secs = 20
request_timeout_secs = 60

[[models]]
id = "claude-cut"
provider = "anthropic"
upstream_model = "claude-sonnet-4-5"
context_length = 200000
max_output_tokens = 64000
input_price = 3
output_price = 15
"""

# The contract's fields as a pass-through would name them, and the spelling REST can carry (a
# typed field's own name is parsed as that field over REST).
CONTRACT_FIELDS_GRPC = ["stream", "n", "model", "messages", "max_tokens", "stream_options", "thinking", "maxTokens"]
CONTRACT_FIELDS_REST = {"maxTokens": 5, "streamOptions": {"include_usage": False}, "maxCompletionTokens": 9, "topP": 0.5}
PRICED_FIELDS = {
    "service_tier": "priority",
    "prediction": {"type": "content", "content": "Echo"},
    "audio": {"voice": "alloy", "format": "wav"},
    "modalities": ["text", "audio"],
    "web_search_options": {},
    "plugins": [{"id": "web"}],
    "provider": {"order": ["openai"]},
}


@pytest.fixture(scope="module")
def gateway(mock, tmp_path_factory):
    gw = Gateway(tmp_path_factory.mktemp("tollgate-integrity"), mock, extra_config=CONFIG.format(mock=mock.base_url))
    yield gw
    gw.stop()


def metadata(key) -> list[tuple[str, str]]:
    return [("authorization", f"Bearer {key.secret}")]


def post(gateway, key, body: dict) -> httpx.Response:
    return httpx.post(f"{gateway.base_url}/chat/completions", headers=auth(key), json=body, timeout=TIMEOUT)


def rows(gateway: Gateway, sql: str, *args) -> list[tuple]:
    return sqlite_rows(gateway.tmp_dir / "tollgate.db", sql, *args)


def ledger(gateway: Gateway, key) -> list[tuple]:
    return rows(
        gateway,
        "SELECT outcome, prompt_tokens, completion_tokens, estimated FROM usage_ledger WHERE key_id = ?",
        key.key_id,
    )


def settled(gateway: Gateway, key) -> tuple:
    wait_until(lambda: len(ledger(gateway, key)) == 1, timeout=20, what="the request is settled")
    [row] = ledger(gateway, key)
    return row


def proto_request(model: str, text: str, **fields) -> inference_pb2.ChatRequest:
    return inference_pb2.ChatRequest(
        model=model, messages=[inference_pb2.Message(role=inference_pb2.ROLE_USER, text=text)], **fields
    )


def prompt_estimate(request: inference_pb2.ChatRequest) -> int:
    """The gateway's prompt estimate of a text-only request: ceil(its protobuf size / 4)."""
    return math.ceil(request.ByteSize() / 4)


# 1. Pass-through cannot override what the gateway controls ------------------------------------


@pytest.mark.parametrize("field", CONTRACT_FIELDS_GRPC)
def test_grpc_extra_json_naming_a_contract_field_is_invalid_argument(inference, key, mock, gateway, field):
    """`extra_json = {"stream": true}` once made the upstream stream an answer that settled at $0,
    `{"n": 128}` generated 128 choices against a reservation for one."""
    n = nonce()
    req = proto_request("gpt-4.1-mini", f"override {n}", extra_json=json.dumps({field: 128 if field == "n" else True}))
    with pytest.raises(grpc.RpcError) as err:
        inference.Chat(req, metadata=metadata(key), timeout=TIMEOUT)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert bad_request_fields(err.value) == [field]
    assert mock.requests_with(n) == []
    assert ledger(gateway, key) == []


@pytest.mark.parametrize("field", CONTRACT_FIELDS_REST)
def test_rest_unknown_field_spelling_a_contract_field_is_400(gateway, key, mock, field):
    n = nonce()
    r = post(gateway, key, {"model": "gpt-4.1-mini", "messages": user(f"override {n}"), field: CONTRACT_FIELDS_REST[field]})
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert (err["type"], err["param"]) == ("invalid_request_error", field)
    assert mock.requests_with(n) == []


def test_fields_the_contract_does_not_name_still_pass_through(gateway, key, mock):
    n = nonce()
    fields = {"logit_bias": {"50256": -100}, "metadata": {"team": "search"}, "store": True}
    r = post(gateway, key, {"model": "gpt-4.1-mini", "messages": user(f"pass {n}"), **fields})
    assert r.status_code == 200, r.text
    sent = mock.single_request_with(n)["body"]
    assert {k: sent.get(k) for k in fields} == fields


# 2. Price-changing fields need the model's permission ------------------------------------------


@pytest.mark.parametrize("field", PRICED_FIELDS)
def test_price_changing_fields_are_refused_with_400(gateway, key, mock, field):
    n = nonce()
    r = post(gateway, key, {"model": "gpt-4.1-mini", "messages": user(f"priced {n}"), field: PRICED_FIELDS[field]})
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert (err["type"], err["param"]) == ("invalid_request_error", field)
    assert "passthrough_allow" in err["message"]
    assert mock.requests_with(n) == []
    assert ledger(gateway, key) == []


def test_grpc_price_changing_extra_json_is_invalid_argument(inference, key, mock):
    n = nonce()
    req = proto_request("gpt-4.1-mini", f"priced {n}", extra_json=json.dumps({"service_tier": "priority"}))
    with pytest.raises(grpc.RpcError) as err:
        inference.Chat(req, metadata=metadata(key), timeout=TIMEOUT)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert bad_request_fields(err.value) == ["service_tier"]
    assert mock.requests_with(n) == []


def test_a_model_that_allows_a_priced_field_forwards_it_and_only_it(gateway, key, mock):
    n = nonce()
    r = post(gateway, key, {"model": "gpt-tiered", "messages": user(f"tiered {n}"), "service_tier": "priority"})
    assert r.status_code == 200, r.text
    assert mock.single_request_with(n)["body"]["service_tier"] == "priority"
    r = post(gateway, key, {"model": "gpt-tiered", "messages": user(f"tiered {n}"), "web_search_options": {}})
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == "web_search_options"


# 3. One ledger row with the best truth ---------------------------------------------------------


def test_a_non_streamed_timeout_after_the_request_was_sent_is_a_marked_prompt_estimate(gateway, inference, key, mock):
    """deepseek-slow must answer within 1 s; the mock holds the answer. The request was sent, so
    the upstream may be generating: the row carries the prompt estimate, marked."""
    hold = f"sent-{nonce()}"
    req = proto_request("deepseek-slow", f"{hold} a b c d e f [hold={hold}]")
    try:
        with pytest.raises(grpc.RpcError) as err:
            inference.Chat(req, metadata=metadata(key), timeout=TIMEOUT)
    finally:
        mock.release(hold)
    assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert mock.hold_status(hold)["arrived"] == 1
    assert settled(gateway, key) == ("failed", prompt_estimate(req), 0, 1)


def test_a_first_token_timeout_is_a_marked_prompt_estimate(gateway, inference, key, mock):
    hold = f"first-{nonce()}"
    req = proto_request("deepseek-slow", f"{hold} a b c [hold={hold}]")
    try:
        with pytest.raises(grpc.RpcError) as err:
            list(inference.ChatStream(req, metadata=metadata(key), timeout=TIMEOUT))
    finally:
        mock.release(hold)
    assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert settled(gateway, key) == ("failed", prompt_estimate(req), 0, 1)


def test_a_200_without_usage_is_billed_a_marked_estimate(gateway, inference, key, mock):
    n = nonce()
    req = proto_request("gpt-4.1-mini", f"no usage {n} [no_usage]")
    resp = inference.Chat(req, metadata=metadata(key), timeout=TIMEOUT)
    answer = resp.choices[0].message.text
    assert answer.startswith("Echo: ")
    want = (prompt_estimate(req), math.ceil(len(answer.encode()) / 4))
    assert (resp.usage.prompt_tokens, resp.usage.completion_tokens) == want
    assert resp.usage.cost_picodollars > 0
    assert settled(gateway, key) == ("succeeded", *want, 1)


def test_an_impossible_upstream_count_is_billed_a_marked_estimate(gateway, inference, key):
    """`[huge_usage]`: the upstream reports 2^64 - 1 completion tokens. Billing refused to store
    it, and the request ended unbilled; now the gateway settles its own estimate, marked."""
    req = proto_request("gpt-4.1-mini", f"huge usage {nonce()} [huge_usage]")
    resp = inference.Chat(req, metadata=metadata(key), timeout=TIMEOUT)
    answer = resp.choices[0].message.text
    assert answer.startswith("Echo: ")
    want = (prompt_estimate(req), math.ceil(len(answer.encode()) / 4))
    assert (resp.usage.prompt_tokens, resp.usage.completion_tokens) == want
    assert resp.usage.cost_picodollars > 0
    assert settled(gateway, key) == ("succeeded", *want, 1)


def test_an_impossible_count_ending_a_stream_is_billed_a_marked_estimate(gateway, inference, key):
    req = proto_request(
        "gpt-4.1-mini",
        f"huge stream usage {nonce()} a b c [huge_usage]",
        stream_options=inference_pb2.StreamOptions(include_usage=True),
    )
    chunks = list(inference.ChatStream(req, metadata=metadata(key), timeout=TIMEOUT))
    relayed = sum(len((c.delta.content or "").encode()) for chunk in chunks for c in chunk.choices)
    assert relayed > 0
    want = (prompt_estimate(req), math.ceil(relayed / 4))
    [usage] = [chunk.usage for chunk in chunks if chunk.HasField("usage")]
    assert (usage.prompt_tokens, usage.completion_tokens) == want
    assert settled(gateway, key) == ("succeeded", *want, 1)


def ledger_ids(gateway: Gateway, key) -> list[tuple]:
    return rows(gateway, "SELECT request_id, outcome, prompt_tokens, estimated, cost_picodollars FROM usage_ledger WHERE key_id = ?", key.key_id)


def log_lines(gateway: Gateway, request_id: str) -> list[str]:
    """The request's log lines (`tollgate::request`: one per request), without terminal colours."""
    plain = re.sub(r"\x1b\[[0-9;]*m", "", gateway.process.logs(last=100_000))
    return [line for line in plain.splitlines() if f"request_id={request_id}" in line and "tollgate::request" in line]


@pytest.mark.parametrize("stream", [False, True])
def test_a_rest_error_after_admission_names_the_request_and_logs_its_estimate(gateway, key, stream):
    """An upstream first-token timeout (504) is settled at the prompt's estimate: the error
    carries the request's `x-request-id`, and the request's log line the estimate it was
    settled at."""
    body = {"model": "deepseek-slow", "messages": user(f"late {nonce()} [delay_ms=2500]"), "stream": stream}
    r = post(gateway, key, body)
    assert r.status_code == 504, r.text
    wait_until(lambda: len(ledger_ids(gateway, key)) == 1, timeout=20, what="the request is settled")
    [(request_id, outcome, prompt, estimated, cost)] = ledger_ids(gateway, key)
    assert (outcome, estimated) == ("failed", 1) and prompt > 0 and cost > 0
    assert r.headers["x-request-id"] == request_id
    wait_until(lambda: log_lines(gateway, request_id), timeout=10, what="the request's log line")
    [line] = log_lines(gateway, request_id)
    assert f"prompt_tokens={prompt}" in line, line
    assert "cost_usd=" in line, line


def test_a_grpc_error_after_admission_names_the_request(gateway, inference, key):
    req = proto_request("gpt-4.1-mini", f"refused {nonce()} [status=500]")
    with pytest.raises(grpc.RpcError) as err:
        inference.Chat(req, metadata=metadata(key), timeout=TIMEOUT)
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    wait_until(lambda: len(ledger_ids(gateway, key)) == 1, timeout=20, what="the request is settled")
    [(request_id, *_)] = ledger_ids(gateway, key)
    assert dict(err.value.trailing_metadata() or ())["x-request-id"] == request_id


def test_an_error_before_admission_names_no_request(gateway, key):
    r = post(gateway, key, {"model": "no-such-model", "messages": user("who")})
    assert r.status_code == 404, r.text
    assert "x-request-id" not in r.headers


def test_an_anthropic_stream_cut_before_message_delta_is_not_billed_as_final(gateway, key):
    """message_start announces `output_tokens: 1`; the stream fails after two text deltas. The row
    keeps message_start's real input count and estimates the output from what was relayed."""
    text = f"one two three four {nonce()} [stream_error]"
    relayed = 0
    with httpx.stream(
        "POST", f"{gateway.base_url}/chat/completions", headers=auth(key),
        json={"model": "claude-cut", "messages": user(text), "stream": True}, timeout=TIMEOUT,
    ) as r:
        assert r.status_code == 200
        for line in r.iter_lines():
            if line.startswith("data: {"):
                for choice in json.loads(line[6:]).get("choices") or []:
                    relayed += len(((choice.get("delta") or {}).get("content") or "").encode())
    assert relayed > 4
    assert settled(gateway, key) == ("failed", words(text), math.ceil(relayed / 4), 1)


def test_an_upstream_refusal_before_any_body_stays_at_zero_unmarked(gateway, key):
    r = post(gateway, key, {"model": "gpt-4.1-mini", "messages": user(f"refused {nonce()} [status=500]")})
    assert r.status_code == 502, r.text
    assert settled(gateway, key) == ("failed", 0, 0, 0)


# 8. Reservations cover what can be billed ------------------------------------------------------


def test_the_completion_limit_reaches_deepseek_as_max_tokens(gateway, key, mock):
    n = nonce()
    r = post(gateway, key, {"model": "deepseek-chat", "messages": user(f"limit {n} a b c d e f g h"), "max_completion_tokens": 7})
    assert r.status_code == 200, r.text
    sent = mock.single_request_with(n)["body"]
    assert sent["max_tokens"] == 7
    assert "max_completion_tokens" not in sent
    # DeepSeek honours it: the answer stops at the limit the request was reserved for.
    assert r.json()["usage"]["completion_tokens"] == 7


def held_reservations(gateway, key, hold: str, mock, count: int) -> list[int]:
    mock.wait_held(hold, lambda s: s["waiting"] == count, what=f"{count} requests held")
    return [amount for (amount,) in rows(
        gateway, "SELECT amount_picodollars FROM reservations WHERE key_id = ? ORDER BY created_at, request_id", key.key_id
    )]


def test_images_are_reserved_at_the_models_per_image_worst_case(gateway, mock):
    key = gateway.create_key("enterprise", None, "--balance", "1000")
    hold = f"image-{nonce()}"
    content = [
        {"type": "text", "text": f"what is this {hold} [hold={hold}]"},
        {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}},
    ]
    results = []
    with httpx.Client(timeout=TIMEOUT) as client:
        def send(model):
            body = {"model": model, "messages": [{"role": "user", "content": content}], "max_tokens": 10}
            results.append(client.post(f"{gateway.base_url}/chat/completions", headers=auth(key), json=body))

        threads = [threading.Thread(target=send, args=(m,)) for m in ("vision-std", "vision-big")]
        for t in threads:
            t.start()
        try:
            reserved = held_reservations(gateway, key, hold, mock, 2)
        finally:
            mock.release(hold)
            for t in threads:
                t.join(TIMEOUT)
    assert [r.status_code for r in results] == [200, 200], [r.text for r in results]
    # Same request but the per-image worst case: 48,169 - 4,096 tokens at 1 USD per 1M tokens.
    assert max(reserved) - min(reserved) == (48_169 - 4_096) * 1_000_000, reserved


def test_a_cost_above_its_reservation_is_counted_and_logged(gateway, mock):
    """An upstream that bills past max_tokens (`[overrun]`): asked for 1 token it echoes 1,000
    words, which costs more than the request's worst case. The key pays it in full (its balance
    covers it) and its account counts the excess over the reservation."""
    key = gateway.create_key("enterprise", None, "--balance", "1000")
    hold = f"overrun-{nonce()}"
    text = f"{hold} [hold={hold}] [overrun] " + "a " * 1000
    result = []
    with httpx.Client(timeout=TIMEOUT) as client:
        body = {"model": "deepseek-chat", "messages": user(text), "max_tokens": 1}
        thread = threading.Thread(
            target=lambda: result.append(client.post(f"{gateway.base_url}/chat/completions", headers=auth(key), json=body))
        )
        thread.start()
        try:
            [reserved] = held_reservations(gateway, key, hold, mock, 1)
        finally:
            mock.release(hold)
            thread.join(TIMEOUT)
    [r] = result
    assert r.status_code == 200, r.text
    [(cost,)] = rows(gateway, "SELECT cost_picodollars FROM usage_ledger WHERE key_id = ?", key.key_id)
    assert cost > reserved
    [(over, count, written_off)] = rows(
        gateway,
        "SELECT over_reserved_picodollars, over_reserved_count, written_off_picodollars FROM key_accounts WHERE key_id = ?",
        key.key_id,
    )
    assert (over, count, written_off) == (cost - reserved, 1, 0)
    wait_until(lambda: "cost more than its reservation" in gateway.logs(), timeout=10, what="the WARN line")
    # Operators see it in the key's view (the CLI's and the Admin API's are one).
    [view] = [json.loads(line) for line in gateway.cli("keys", "list", "--json").stdout.splitlines()
              if json.loads(line)["id"] == key.key_id]
    assert (view["over_reserved_picodollars"], view["over_reserved_count"]) == (cost - reserved, 1)
    assert Decimal(view["over_reserved_usd"]) * 10**12 == cost - reserved


# 6. A ledger row that cannot be written fails its request and keeps its reservation -------------


def test_a_ledger_row_that_cannot_be_written_is_a_500_and_keeps_its_reservation(gateway, mock):
    """A trigger makes the database refuse this key's ledger rows. The writer retries, then gives
    up on that row: the client gets a 500 (not a free answer), no row is stored, and the
    reservation stays held, out of the expiry sweep's reach."""
    key = gateway.create_key("enterprise", None, "--balance", "1000")
    trigger = f"poison_{nonce()}".replace("-", "_")
    db = sqlite3.connect(gateway.tmp_dir / "tollgate.db", timeout=10)
    try:
        db.execute(
            f"CREATE TRIGGER {trigger} BEFORE INSERT ON usage_ledger WHEN NEW.key_id = '{key.key_id}' "
            "BEGIN SELECT RAISE(ABORT, 'poisoned row'); END"
        )
        db.commit()
        n = nonce()
        r = post(gateway, key, {"model": "deepseek-chat", "messages": user(f"poisoned {n}")})
        assert r.status_code == 500, r.text
        assert len(mock.requests_with(n)) == 1
        assert ledger(gateway, key) == []
        [(expires_at,)] = rows(gateway, "SELECT expires_at FROM reservations WHERE key_id = ?", key.key_id)
        assert expires_at == 2**63 - 2
        [(reserved,)] = rows(gateway, "SELECT reserved_picodollars FROM key_accounts WHERE key_id = ?", key.key_id)
        assert reserved > 0
    finally:
        db.execute(f"DROP TRIGGER IF EXISTS {trigger}")
        db.commit()
        db.close()
