"""Per-key billing through `GET /v1/dashboard/billing/usage`: counts and token totals equal the
sums of the responses' usage, cost is exact to the picodollar, and tier limits (requests per
minute, requests per month) answer 429 without counting the refused request."""

from __future__ import annotations

import http.client
import json
import sqlite3
import uuid
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal

import httpx
import openai
import pytest

from harness import PRICES, TIERS, ApiKey, auth, make_client, wait_until
from mock_rules import ZERO, Usage, cost_usd, expected_usage, upstream_thinks, usage_of


def nonce() -> str:
    return uuid.uuid4().hex[:12]


def usage_report(gateway, key: ApiKey) -> dict:
    r = gateway.usage(key)
    assert r.status_code == 200, r.text
    return json.loads(r.text, parse_float=Decimal)


def assert_report(report: dict, key: ApiKey, requests: int, usage: Usage, cost: Decimal) -> None:
    rpm, limit = TIERS[key.tier]
    assert report["object"] == "billing.usage"
    assert report["tier"] == key.tier
    prefix = report["key_prefix"].rstrip(".…*")
    assert len(prefix) >= 6 and key.secret.startswith(prefix), report["key_prefix"]
    assert report["key_prefix"] != key.secret, "the usage report must not echo the whole secret"
    assert report["monthly_requests"] == requests
    assert report["monthly_limit"] == limit
    assert report["remaining"] == limit - requests
    assert abs(Decimal(report["usage_percent"]) - Decimal(requests * 100) / limit) < Decimal("0.05")
    assert report["total_prompt_tokens"] == usage.prompt_tokens
    assert report["total_completion_tokens"] == usage.completion_tokens
    assert report["total_cached_prompt_tokens"] == usage.cached_tokens
    assert isinstance(report["total_cost_usd"], (Decimal, int)), f"total_cost_usd is not a number: {report['total_cost_usd']!r}"
    assert Decimal(report["total_cost_usd"]) == cost, f"{report['total_cost_usd']} != {cost}"


def test_fresh_key_reports_zero(gateway):
    key = gateway.create_key("pro")
    assert_report(usage_report(gateway, key), key, 0, ZERO, Decimal(0))


def test_usage_totals_equal_the_sum_of_responses(gateway, mock):
    key = gateway.create_key("pro")
    client = make_client(gateway, key)
    total = ZERO
    cost = Decimal(0)

    # 1: non-streaming, with cached prompt tokens.
    n = nonce()
    messages = [{"role": "system", "content": "Be exact."}, {"role": "user", "content": f"count me in {n} [cache=3]"}]
    resp = client.chat.completions.create(model="deepseek-v4-flash", messages=messages)
    got = usage_of(resp.usage)
    assert got == expected_usage(messages, upstream_thinks(mock.single_request_with(n)["body"]))
    assert got.cached_tokens == 3
    total, cost = total + got, cost + cost_usd(got, PRICES["deepseek-v4-flash"])

    # 2: streamed, usage from the final chunk.
    n = nonce()
    messages = [{"role": "user", "content": f"stream and count {n} [cache=1]"}]
    chunks = list(
        client.chat.completions.create(
            model="deepseek-v4-flash", messages=messages, stream=True, stream_options={"include_usage": True}
        )
    )
    got = usage_of(chunks[-1].usage)
    assert got == expected_usage(messages, upstream_thinks(mock.single_request_with(n)["body"]))
    total, cost = total + got, cost + cost_usd(got, PRICES["deepseek-v4-flash"])

    # 3: another model, another price list.
    n = nonce()
    messages = [{"role": "user", "content": f"pro pricing please {n} [cache=2]"}]
    resp = client.chat.completions.create(model="deepseek-v4-pro", messages=messages)
    got = usage_of(resp.usage)
    assert got == expected_usage(messages, upstream_thinks(mock.single_request_with(n)["body"]))
    total, cost = total + got, cost + cost_usd(got, PRICES["deepseek-v4-pro"])

    # 4: an alias is billed at its target's prices.
    n = nonce()
    messages = [{"role": "user", "content": f"alias pricing {n}"}]
    resp = client.chat.completions.create(model="deepseek-chat", messages=messages)
    got = usage_of(resp.usage)
    assert got == expected_usage(messages, thinking=False)
    total, cost = total + got, cost + cost_usd(got, PRICES["deepseek-v4-flash"])

    assert_report(usage_report(gateway, key), key, 4, total, cost)
    client.close()


@pytest.mark.parametrize("model", ["deepseek-v4-flash", "gpt-4.1-mini"])
def test_stream_without_include_usage_is_billed_too(gateway, mock, model):
    """The client did not ask for usage, but the gateway must still learn it from the upstream
    (for an OpenAI upstream that means asking for `stream_options.include_usage` itself)."""
    key = gateway.create_key("pro")
    client = make_client(gateway, key)
    n = nonce()
    messages = [{"role": "user", "content": f"bill me silently {n} [cache=1]"}]
    chunks = list(client.chat.completions.create(model=model, messages=messages, stream=True))
    assert chunks and all(c.usage is None for c in chunks)
    want = expected_usage(messages, upstream_thinks(mock.single_request_with(n)["body"]))
    assert_report(usage_report(gateway, key), key, 1, want, cost_usd(want, PRICES[model]))
    client.close()


def test_usage_endpoint_needs_a_valid_key(gateway):
    r = gateway.usage(ApiKey(secret="sk-not-a-key-000000000000", key_id=None, tier="", name=""))
    assert r.status_code == 401
    assert r.json()["error"]["type"] == "authentication_error"


def test_rpm_limit_refuses_the_fourth_request_and_does_not_count_it(gateway):
    key = gateway.create_key("tight_rpm")
    client = make_client(gateway, key)
    usage = ZERO
    for i in range(3):
        messages = [{"role": "user", "content": f"rpm {i} {nonce()}"}]
        resp = client.chat.completions.create(model="deepseek-chat", messages=messages)
        usage = usage + usage_of(resp.usage)
    with pytest.raises(openai.RateLimitError) as err:
        client.chat.completions.create(model="deepseek-chat", messages=[{"role": "user", "content": "one too many"}])
    assert err.value.status_code == 429
    body = err.value.response.json()["error"]
    assert body["type"] == "rate_limit_error"
    assert body["code"] == "rate_limit_exceeded"

    assert_report(usage_report(gateway, key), key, 3, usage, cost_usd(usage, PRICES["deepseek-v4-flash"]))
    client.close()


def test_rpm_limit_holds_under_concurrent_requests(gateway):
    """Six requests at once on a 3-rpm key: exactly three are admitted."""
    key = gateway.create_key("tight_rpm")

    def one(i: int) -> int:
        c = make_client(gateway, key)
        try:
            c.chat.completions.create(model="deepseek-chat", messages=[{"role": "user", "content": f"race {i} {nonce()}"}])
            return 200
        except openai.RateLimitError:
            return 429
        finally:
            c.close()

    with ThreadPoolExecutor(max_workers=6) as pool:
        statuses = sorted(pool.map(one, range(6)))
    assert statuses == [200, 200, 200, 429, 429, 429]
    assert usage_report(gateway, key)["monthly_requests"] == 3


def test_monthly_quota_refuses_the_sixth_request(gateway):
    key = gateway.create_key("tight_month")
    client = make_client(gateway, key)
    usage = ZERO
    for i in range(5):
        messages = [{"role": "user", "content": f"month {i} {nonce()}"}]
        resp = client.chat.completions.create(model="deepseek-chat", messages=messages)
        usage = usage + usage_of(resp.usage)
    with pytest.raises(openai.RateLimitError) as err:
        client.chat.completions.create(model="deepseek-chat", messages=[{"role": "user", "content": "sixth"}])
    body = err.value.response.json()["error"]
    assert body["type"] == "rate_limit_error"
    assert body["code"] == "monthly_quota_exceeded"

    report = usage_report(gateway, key)
    assert report["remaining"] == 0
    assert Decimal(report["usage_percent"]) == 100
    assert_report(report, key, 5, usage, cost_usd(usage, PRICES["deepseek-v4-flash"]))

    # A streamed request is refused the same way, before any stream starts.
    with pytest.raises(openai.RateLimitError):
        client.chat.completions.create(
            model="deepseek-chat", messages=[{"role": "user", "content": "seventh"}], stream=True
        )
    client.close()


def test_keys_are_billed_separately(gateway):
    a, b = gateway.create_key("basic"), gateway.create_key("basic")
    ca = make_client(gateway, a)
    messages = [{"role": "user", "content": f"only a pays {nonce()}"}]
    got = usage_of(ca.chat.completions.create(model="deepseek-chat", messages=messages).usage)
    assert_report(usage_report(gateway, a), a, 1, got, cost_usd(got, PRICES["deepseek-v4-flash"]))
    assert_report(usage_report(gateway, b), b, 0, ZERO, Decimal(0))
    ca.close()


def ledger_rows(gateway, key: ApiKey) -> list[tuple[str, int, int]]:
    """(outcome, prompt_tokens, completion_tokens) of the key's ledger rows, read from the
    gateway's SQLite file."""
    db = sqlite3.connect(f"file:{gateway.tmp_dir / 'tollgate.db'}?mode=ro", uri=True, timeout=10)
    try:
        return db.execute(
            "SELECT outcome, prompt_tokens, completion_tokens FROM usage_ledger WHERE key_id = ?",
            (key.key_id,),
        ).fetchall()
    finally:
        db.close()


def hang_up_while_held(gateway, mock, key: ApiKey, body: dict, hold: str) -> None:
    """Sends `body` (whose prompt says `[hold=<hold>]`), waits until the mock holds it (so it was
    admitted and reached the upstream), hangs up without reading a byte, then releases it."""
    host, port = gateway.http_addr.rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    try:
        conn.request(
            "POST", "/v1/chat/completions", body=json.dumps(body), headers={**auth(key), "Content-Type": "application/json"}
        )
        mock.wait_held(hold, lambda status: status["waiting"] == 1, what="the call reached the upstream")
    finally:
        conn.close()
    mock.release(hold)


def test_a_client_that_hangs_up_is_still_billed(gateway, mock):
    """The upstream call and its settlement outlive the client: a non-streaming caller that gives
    up while the upstream works is billed what the upstream reports, and a streaming caller that
    leaves before the first chunk leaves a cancelled ledger row (no admitted request goes
    unrecorded)."""
    key = gateway.create_key("pro")
    assert key.key_id
    n = nonce()
    messages = [{"role": "user", "content": f"slow answer {n} [hold=call-{n}]"}]
    hang_up_while_held(gateway, mock, key, {"model": "deepseek-chat", "messages": messages}, f"call-{n}")
    wait_until(lambda: len(ledger_rows(gateway, key)) == 1, timeout=10, what="the hung-up call is settled")
    expected = expected_usage(messages, thinking=False)
    assert ledger_rows(gateway, key) == [("succeeded", expected.prompt_tokens, expected.completion_tokens)]

    messages = [{"role": "user", "content": f"slow answer {n} [hold=stream-{n}]"}]
    body = {"model": "deepseek-chat", "messages": messages, "stream": True}
    hang_up_while_held(gateway, mock, key, body, f"stream-{n}")
    wait_until(lambda: len(ledger_rows(gateway, key)) == 2, timeout=10, what="the hung-up stream is settled")
    assert sorted(r[0] for r in ledger_rows(gateway, key)) == ["cancelled", "succeeded"]
