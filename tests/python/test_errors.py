"""The error table, provoked one row at a time. Every error body is
`{"error": {"message", "type", "param", "code"}}`.

Decisions this suite holds the gateway to (where the product pages leave room):
- upstream 500 (and any other upstream 5xx but 503) -> 502 upstream_error;
- upstream 503 and upstream 429 -> 503 service_unavailable (the provider is overloaded or is
  limiting *us*; a 429 to the caller would wrongly blame the caller's own tier);
- upstream 401 (our provider key is wrong) -> 502 upstream_error, never echoing the provider key;
- upstream 400 (the caller's request is bad) -> 400 invalid_request_error with the upstream's message;
- upstream silent past first_token_timeout_secs -> 504 upstream_timeout;
- an upstream failure after the stream started -> a final `data: {"error": {...}}` event of type
  upstream_error and no `data: [DONE]`;
- a request body over server.max_body_bytes -> 400 (docs/config-reference.md);
- `x-should-retry: true` on every 5xx and on a per-minute 429, `false` on a spent monthly quota
  or balance (the OpenAI SDKs retry 429 and 5xx unless told not to), none on a 4xx the caller
  must fix.
403 permission_error is provoked by a retired tier (below) and by tier allow-lists
(test_admin.py); 500 internal_error by a ledger that cannot be written.
"""

from __future__ import annotations

import json
import re
import sqlite3
import time
import uuid

import httpx
import openai
import pytest

from harness import MAX_BODY_BYTES, PROVIDER_KEY, WRONG_PROVIDER_KEY, Gateway, auth, make_client


def nonce() -> str:
    return uuid.uuid4().hex[:12]


def post_chat(gateway, headers: dict, body=None, content: bytes | None = None, timeout: float = 30) -> httpx.Response:
    h = {"Content-Type": "application/json", **headers}
    if content is None:
        content = json.dumps(body).encode()
    return httpx.post(f"{gateway.base_url}/chat/completions", headers=h, content=content, timeout=timeout)


def assert_error(r: httpx.Response, status: int, type_: str, *, param: str | None = ..., code: str | None = ...) -> dict:
    """Checks the status and the OpenAI error body; returns the `error` object."""
    assert r.status_code == status, f"expected {status}, got {r.status_code}: {r.text[:500]}"
    assert r.headers.get("content-type", "").startswith("application/json"), r.headers.get("content-type")
    body = r.json()
    assert set(body) == {"error"}, body
    err = body["error"]
    assert {"message", "type", "param", "code"} <= set(err), f"missing keys in {err}"
    assert isinstance(err["message"], str) and err["message"], err
    assert err["type"] == type_, err
    if param is not ...:
        assert err["param"] == param, err
    if code is not ...:
        assert err["code"] == code, err
    return err


def user(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


# ---- 401 ----------------------------------------------------------------------------------


def test_missing_key_is_401(gateway, mock):
    n = nonce()
    r = post_chat(gateway, {}, {"model": "deepseek-chat", "messages": user(n)})
    assert_error(r, 401, "authentication_error")
    assert mock.requests_with(n) == []


def test_bad_key_is_401(gateway, mock):
    n = nonce()
    r = post_chat(gateway, auth("sk-this-key-does-not-exist-0000"), {"model": "deepseek-chat", "messages": user(n)})
    assert_error(r, 401, "authentication_error")
    assert mock.requests_with(n) == []
    with pytest.raises(openai.AuthenticationError):
        make_client(gateway, "sk-this-key-does-not-exist-0000").chat.completions.create(
            model="deepseek-chat", messages=user(n)
        )


def test_malformed_authorization_header_is_401(gateway):
    r = post_chat(gateway, {"Authorization": "Basic Zm9vOmJhcg=="}, {"model": "deepseek-chat", "messages": user("x")})
    assert_error(r, 401, "authentication_error")


# ---- 404 ----------------------------------------------------------------------------------


def test_unknown_model_is_404(gateway, key, mock, client):
    n = nonce()
    r = post_chat(gateway, auth(key), {"model": "no-such-model", "messages": user(n)})
    err = assert_error(r, 404, "not_found_error")
    assert "no-such-model" in err["message"]
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="no-such-model", messages=user(n))
    assert mock.requests_with(n) == []


def test_unknown_path_is_404(gateway, key):
    r = httpx.get(f"{gateway.base_url}/no/such/path", headers=auth(key), timeout=30)
    assert_error(r, 404, "not_found_error")
    r = httpx.post(f"{gateway.http_base}/v2/chat/completions", headers=auth(key), json={}, timeout=30)
    assert_error(r, 404, "not_found_error")


# ---- 400: refused by the gateway, never sent upstream --------------------------------------

INVALID_BODIES = {
    "missing model": ({"messages": user("NONCE")}, "model"),
    "empty model": ({"model": "", "messages": user("NONCE")}, "model"),
    "missing messages": ({"model": "deepseek-chat", "user": "NONCE"}, "messages"),
    "empty messages": ({"model": "deepseek-chat", "messages": [], "user": "NONCE"}, "messages"),
    "messages not an array": ({"model": "deepseek-chat", "messages": "NONCE"}, "messages"),
    "temperature wrong type": ({"model": "deepseek-chat", "messages": user("NONCE"), "temperature": "hot"}, "temperature"),
    "temperature above 2": ({"model": "deepseek-chat", "messages": user("NONCE"), "temperature": 3}, "temperature"),
    "temperature below 0": ({"model": "deepseek-chat", "messages": user("NONCE"), "temperature": -0.5}, "temperature"),
    "unknown role": ({"model": "deepseek-chat", "messages": [{"role": "wizard", "content": "NONCE"}]}, "messages[0].role"),
    "max_tokens above the model's max_output_tokens": (
        {"model": "deepseek-chat", "messages": user("NONCE"), "max_tokens": 384001},
        "max_tokens",
    ),
    "max_tokens zero": ({"model": "deepseek-chat", "messages": user("NONCE"), "max_tokens": 0}, "max_tokens"),
    "tool message without tool_call_id": (
        {"model": "deepseek-chat", "messages": [{"role": "user", "content": "NONCE"}, {"role": "tool", "content": "22C"}]},
        "messages[1].tool_call_id",
    ),
}


@pytest.mark.parametrize("case", list(INVALID_BODIES))
def test_invalid_body_is_400_naming_the_field(gateway, key, mock, case):
    n = nonce()
    body, param = INVALID_BODIES[case]
    body = json.loads(json.dumps(body).replace("NONCE", n))
    r = post_chat(gateway, auth(key), body)
    assert_error(r, 400, "invalid_request_error", param=param)
    assert mock.requests_with(n) == [], "an invalid request reached the upstream"


def test_stream_options_without_stream_is_400(gateway, key):
    """OpenAI refuses `stream_options` unless `stream` is true; so does a drop-in replacement
    (whether the gateway or the upstream says so first)."""
    r = post_chat(
        gateway,
        auth(key),
        {"model": "gpt-4.1-mini", "messages": user(nonce()), "stream_options": {"include_usage": True}},
    )
    assert_error(r, 400, "invalid_request_error")


def test_malformed_json_is_400(gateway, key, mock):
    n = nonce()
    r = post_chat(gateway, auth(key), content=f'{{"model": "deepseek-chat", "messages": [{{"role": "user", "content": "{n}"'.encode())
    assert_error(r, 400, "invalid_request_error")
    assert mock.requests_with(n) == []


def test_sdk_raises_bad_request_for_invalid_temperature(client):
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model="deepseek-chat", messages=user("hi"), temperature=3)
    assert err.value.status_code == 400
    assert err.value.body["type"] == "invalid_request_error"
    assert err.value.body["param"] == "temperature"


def test_body_over_the_size_limit_is_400(gateway, key, mock):
    n = nonce()
    filler = "x" * (MAX_BODY_BYTES + 1024 * 1024)  # ~5 MB
    body = json.dumps({"model": "deepseek-chat", "messages": user(f"{n} {filler}")}).encode()
    assert len(body) > MAX_BODY_BYTES
    r = post_chat(gateway, auth(key), content=body)
    assert_error(r, 400, "invalid_request_error")
    assert mock.requests_with(n) == []


# ---- upstream failures ---------------------------------------------------------------------


def test_upstream_400_comes_back_as_400_with_its_message(gateway, key):
    r = post_chat(gateway, auth(key), {"model": "deepseek-chat", "messages": user(f"{nonce()} [status=400]")})
    err = assert_error(r, 400, "invalid_request_error")
    assert "mock upstream error 400" in err["message"]


def test_upstream_rejecting_an_unknown_field_comes_back_as_400(gateway, key, mock):
    """Unknown top-level fields pass through to an OpenAI upstream, which refuses them."""
    n = nonce()
    r = post_chat(gateway, auth(key), {"model": "gpt-4.1-mini", "messages": user(n), "frobnicate": 1})
    err = assert_error(r, 400, "invalid_request_error")
    assert "Unrecognized request argument supplied: frobnicate" in err["message"]
    assert len(mock.requests_with(n)) == 1


def test_upstream_500_is_502(gateway, key, client):
    r = post_chat(gateway, auth(key), {"model": "deepseek-chat", "messages": user(f"{nonce()} [status=500]")})
    assert_error(r, 502, "upstream_error")
    with pytest.raises(openai.InternalServerError) as err:
        client.chat.completions.create(model="deepseek-chat", messages=user(f"{nonce()} [status=500]"))
    assert err.value.status_code == 502


def test_upstream_502_is_502(gateway, key):
    r = post_chat(gateway, auth(key), {"model": "gpt-4.1-mini", "messages": user(f"{nonce()} [status=502]")})
    assert_error(r, 502, "upstream_error")


@pytest.mark.parametrize("upstream_status", [503, 429])
def test_upstream_overloaded_is_503(gateway, key, upstream_status):
    r = post_chat(
        gateway, auth(key), {"model": "deepseek-chat", "messages": user(f"{nonce()} [status={upstream_status}]")}
    )
    assert_error(r, 503, "service_unavailable")


def test_upstream_401_is_502_without_leaking_the_provider_key(gateway, key):
    """The mock's 401 quotes the key it was sent (as OpenAI does); the gateway must not."""
    r = post_chat(gateway, auth(key), {"model": "deepseek-chat", "messages": user(f"{nonce()} [status=401]")})
    assert_error(r, 502, "upstream_error")
    assert PROVIDER_KEY not in r.text


def test_misconfigured_provider_key_is_502_without_leaking_it(gateway, key, mock):
    n = nonce()
    r = post_chat(gateway, auth(key), {"model": "deepseek-badkey", "messages": user(n)})
    assert_error(r, 502, "upstream_error")
    assert WRONG_PROVIDER_KEY not in r.text
    assert PROVIDER_KEY not in r.text
    assert mock.single_request_with(n)["authorization"] == f"Bearer {WRONG_PROVIDER_KEY}"


def test_provider_without_a_key_is_503_naming_the_variable(gateway, key, mock):
    """A provider whose api_key_env is unset is not called at all: 503, telling the operator
    which variable to set."""
    fresh = gateway.create_key("basic")
    n = nonce()
    r = post_chat(gateway, auth(fresh), {"model": "deepseek-nokey", "messages": user(n)})
    assert_error(r, 503, "service_unavailable")
    assert "MOCK_UNSET_KEY" in r.json()["error"]["message"]
    assert mock.requests_with(n) == []
    # Refused by the gateway itself: not counted against the key's quota.
    assert gateway.usage(fresh).json()["monthly_requests"] == 0


def test_a_missing_provider_key_is_one_start_up_warning_not_an_error_per_request(mock, tmp_path):
    """An unset provider key is the operator's configuration state: said once at start-up at
    WARN naming the variable; its requests still get the 503 naming it, and log no ERROR."""
    gw = Gateway(tmp_path, mock)
    try:
        key = gw.create_key("basic")
        for _ in range(3):
            r = post_chat(gw, auth(key), {"model": "deepseek-nokey", "messages": user(nonce())})
            assert_error(r, 503, "service_unavailable")
            assert "MOCK_UNSET_KEY" in r.json()["error"]["message"]
    finally:
        gw.stop()  # the process has exited and its whole log has been read
    lines = [re.sub(r"\x1b\[[0-9;]*m", "", line) for line in gw.process.stderr_lines]
    warnings = [line for line in lines if " WARN " in line and "MOCK_UNSET_KEY" in line]
    assert len(warnings) == 1, "\n".join(lines)
    assert not [line for line in lines if " ERROR " in line], "\n".join(lines)


def test_upstream_error_before_the_stream_starts_is_a_real_http_error(gateway, key):
    """The gateway awaits the first upstream event before answering, so an upstream 503 on a
    stream request is an HTTP 503, not a 200 stream that fails."""
    with httpx.stream(
        "POST",
        f"{gateway.base_url}/chat/completions",
        headers=auth(key),
        json={"model": "deepseek-chat", "messages": user(f"{nonce()} [status=503]"), "stream": True},
        timeout=30,
    ) as r:
        r.read()
    assert_error(r, 503, "service_unavailable")


def test_slow_upstream_is_504(gateway, key):
    started = time.monotonic()
    r = post_chat(gateway, auth(key), {"model": "deepseek-slow", "messages": user(f"{nonce()} [delay_ms=4000]")})
    elapsed = time.monotonic() - started
    assert_error(r, 504, "upstream_timeout")
    assert elapsed < 3.5, f"the gateway waited {elapsed:.1f}s; first_token_timeout_secs is 1"


def test_slow_upstream_stream_is_504_before_any_chunk(gateway, key, client):
    """The mock sends headers at once and holds the first event back: the first-token deadline
    covers the first event, not just the headers."""
    started = time.monotonic()
    with httpx.stream(
        "POST",
        f"{gateway.base_url}/chat/completions",
        headers=auth(key),
        json={"model": "deepseek-slow", "messages": user(f"{nonce()} [delay_ms=4000]"), "stream": True},
        timeout=30,
    ) as r:
        r.read()
    elapsed = time.monotonic() - started
    assert_error(r, 504, "upstream_timeout")
    assert elapsed < 3.5, f"the gateway waited {elapsed:.1f}s; first_token_timeout_secs is 1"
    with pytest.raises(openai.InternalServerError) as err:
        client.chat.completions.create(
            model="deepseek-slow", messages=user(f"{nonce()} [delay_ms=4000]"), stream=True
        )
    assert err.value.status_code == 504


def test_stream_past_the_total_deadline_ends_with_an_upstream_timeout_event(gateway, key):
    """request_timeout_secs (3 s on the slow provider) bounds the whole request: a stream that
    started in time but runs longer is cut with an in-band upstream_timeout error."""
    text = f"a b c d e f g h {nonce()} [chunk_delay_ms=700]"  # ~20 chunks, 0.7 s apart
    started = time.monotonic()
    with httpx.stream(
        "POST",
        f"{gateway.base_url}/chat/completions",
        headers=auth(key),
        json={"model": "deepseek-slow", "messages": user(text), "stream": True},
        timeout=30,
    ) as r:
        assert r.status_code == 200
        body = r.read().decode()
    elapsed = time.monotonic() - started
    events = [e for e in body.split("\n\n") if e]
    assert "data: [DONE]" not in events
    last = json.loads(events[-1][len("data: ") :])
    assert set(last) == {"error"}, last
    assert last["error"]["type"] == "upstream_timeout"
    assert 2.5 <= elapsed < 5.5, f"stream cut after {elapsed:.1f}s; request_timeout_secs is 3"


def test_mid_stream_failure_raises_in_the_sdk(client):
    messages = user(f"one two three four {nonce()} [stream_error]")
    received = []
    with pytest.raises(openai.APIError) as err:
        for chunk in client.chat.completions.create(model="deepseek-chat", messages=messages, stream=True):
            if chunk.choices and chunk.choices[0].delta.content:
                received.append(chunk.choices[0].delta.content)
    assert "".join(received) == "Echo: one", "the content before the failure is delivered"
    assert not isinstance(err.value, openai.APIStatusError), "the failure came after a 200 started streaming"


def test_mid_stream_failure_ends_with_an_error_event_and_no_done(gateway, key):
    with httpx.stream(
        "POST",
        f"{gateway.base_url}/chat/completions",
        headers=auth(key),
        json={"model": "deepseek-chat", "messages": user(f"alpha beta {nonce()} [stream_error]"), "stream": True},
        timeout=30,
    ) as r:
        assert r.status_code == 200
        body = r.read().decode()
    events = [e for e in body.split("\n\n") if e]
    assert all(e.startswith("data: ") for e in events), events
    assert "data: [DONE]" not in events
    last = json.loads(events[-1][len("data: ") :])
    assert set(last) == {"error"}, last
    assert last["error"]["type"] == "upstream_error"
    assert isinstance(last["error"]["message"], str) and last["error"]["message"]


def test_key_of_a_tier_no_longer_configured_is_403(tmp_path, mock):
    """A key whose tier was removed from the configuration keeps existing but may not be used:
    403 permission_error (the operator must move it to a configured tier)."""
    retired = '\n[[tiers]]\nname = "retired"\nrpm = 10\nmonthly_requests = 10\n'
    before = Gateway(tmp_path, mock, extra_config=retired)
    try:
        key = before.create_key("retired")
        ok = post_chat(before, auth(key), {"model": "deepseek-chat", "messages": user(nonce())})
        assert ok.status_code == 200, ok.text
    finally:
        before.stop()
    # The same database, the configuration without the tier.
    after = Gateway(tmp_path, mock)
    try:
        n = nonce()
        r = post_chat(after, auth(key), {"model": "deepseek-chat", "messages": user(n)})
        assert_error(r, 403, "permission_error")
        assert r.json()["error"]["code"] == "tier_not_configured"
        assert mock.requests_with(n) == []
    finally:
        after.stop()


def test_a_failed_ledger_write_is_500_and_the_answer_is_withheld(tmp_path, mock):
    """Usage is durable before a response completes: when the ledger cannot be written, the
    client gets 500 internal_error instead of an answer nobody was billed for, and a stream ends
    with an in-band error instead of its usage chunk and [DONE]."""
    gateway = Gateway(tmp_path, mock)
    try:
        key = gateway.create_key("enterprise")
        # A first request warms the key (its monthly count is read from the ledger once), so the
        # failures below happen at settlement, after the upstream answered.
        warm = post_chat(gateway, auth(key), {"model": "deepseek-chat", "messages": user(nonce())})
        assert warm.status_code == 200, warm.text
        db = sqlite3.connect(tmp_path / "tollgate.db", timeout=10)
        db.execute("ALTER TABLE usage_ledger RENAME TO usage_ledger_gone")
        db.commit()
        db.close()
        r = post_chat(gateway, auth(key), {"model": "deepseek-chat", "messages": user(nonce())})
        assert_error(r, 500, "internal_error")
        assert "Echo:" not in r.text
        body = {"model": "deepseek-chat", "messages": user(nonce()), "stream": True}
        with httpx.stream("POST", f"{gateway.base_url}/chat/completions", headers=auth(key), json=body, timeout=30) as s:
            assert s.status_code == 200
            lines = [line for line in s.iter_lines() if line.startswith("data: ")]
        assert "data: [DONE]" not in lines
        assert json.loads(lines[-1][len("data: "):])["error"]["type"] == "internal_error"
    finally:
        gateway.stop()


def test_x_should_retry_says_which_failures_a_retry_can_cure(gateway, mock):
    """5xx and a per-minute 429 are worth retrying; a spent monthly quota is not; a 400 needs a
    fixed request, not a header."""
    key = gateway.create_key("enterprise")
    for directive, status, type_ in (("[status=500]", 502, "upstream_error"), ("[status=503]", 503, "service_unavailable")):
        r = post_chat(gateway, auth(key), {"model": "deepseek-chat", "messages": user(f"{nonce()} {directive}")})
        assert_error(r, status, type_)
        assert r.headers.get("x-should-retry") == "true", (directive, dict(r.headers))
    # 504: the slow provider's first-token deadline (1 s) passes while the mock holds the answer.
    hold = f"retry-{nonce()}"
    try:
        r = post_chat(gateway, auth(key), {"model": "deepseek-slow", "messages": user(f"{hold} [hold={hold}]")})
    finally:
        mock.release(hold)
    assert_error(r, 504, "upstream_timeout")
    assert r.headers.get("x-should-retry") == "true"

    r = post_chat(gateway, auth(key), {"model": "deepseek-chat", "messages": user(nonce()), "temperature": 9})
    assert_error(r, 400, "invalid_request_error", param="temperature")
    assert "x-should-retry" not in r.headers

    # tight_rpm admits 3 requests a minute (a retry later succeeds), tight_month 5 a month.
    for tier, admitted, code, retry in (("tight_rpm", 3, "rate_limit_exceeded", "true"), ("tight_month", 5, "monthly_quota_exceeded", "false")):
        limited = gateway.create_key(tier)
        for i in range(admitted):
            assert post_chat(gateway, auth(limited), {"model": "deepseek-chat", "messages": user(f"{i} {nonce()}")}).status_code == 200
        r = post_chat(gateway, auth(limited), {"model": "deepseek-chat", "messages": user(nonce())})
        assert_error(r, 429, "rate_limit_error", code=code)
        assert r.headers.get("x-should-retry") == retry, tier


TOTAL_DEADLINE_CONFIG = """
# The upstream may take 20 s to start answering, but the whole call must end within 2 s: a
# non-streamed answer that has not come by then is cut by request_timeout_secs.
[[providers]]
name = "short_total"
kind = "deepseek"
base_url = "http://127.0.0.1:{port}"
api_key_env = "MOCK_DEEPSEEK_KEY"
first_token_timeout_secs = 20
request_timeout_secs = 2

[[models]]
id = "deepseek-short-total"
provider = "short_total"
upstream_model = "deepseek-v4-flash"
context_length = 1000000
max_output_tokens = 384000
input_price = 0.22
output_price = 0.44
thinking = "optional"
"""


def test_a_non_streamed_call_past_request_timeout_is_504_and_billed_as_failed(tmp_path, mock):
    """request_timeout_secs bounds a non-streamed call too: the mock holds the answer, the
    gateway gives up after 2 s with 504 upstream_timeout, and the admitted request is settled
    once, as failed, at the estimate of its prompt (marked): the request was sent, so the upstream
    may have generated, and no $0 row may claim it did not."""
    gateway = Gateway(tmp_path, mock, extra_config=TOTAL_DEADLINE_CONFIG.format(port=mock.port))
    hold = f"total-{nonce()}"
    try:
        key = gateway.create_key("enterprise")
        started = time.monotonic()
        try:
            r = post_chat(gateway, auth(key), {"model": "deepseek-short-total", "messages": user(f"{hold} [hold={hold}]")})
        finally:
            mock.release(hold)
        elapsed = time.monotonic() - started
        assert_error(r, 504, "upstream_timeout")
        assert "2" in r.json()["error"]["message"], r.text
        assert 1.5 <= elapsed < 10, f"cut after {elapsed:.1f}s; request_timeout_secs is 2"
        assert mock.hold_status(hold)["arrived"] == 1
        db = sqlite3.connect(f"file:{tmp_path / 'tollgate.db'}?mode=ro", uri=True, timeout=10)
        try:
            rows = db.execute(
                "SELECT outcome, prompt_tokens, completion_tokens, streamed, estimated FROM usage_ledger WHERE key_id = ?",
                (key.key_id,),
            ).fetchall()
        finally:
            db.close()
        [(outcome, prompt, completion, streamed, estimated)] = rows
        assert (outcome, completion, streamed, estimated) == ("failed", 0, 0, 1)
        assert prompt > 0
    finally:
        gateway.stop()
