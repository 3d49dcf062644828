"""Reporting through the real binary: every response carries its own cost (`usage.cost` in the
JSON body and in the final SSE usage chunk); `GET /v1/dashboard/billing/usage` with `start_date`
and `end_date` returns daily costs per model (OpenAI's legacy shape: `cost` and `total_usage` in
US cents, exact USD strings beside them); `GET /v1/dashboard/billing/subscription` answers as
OpenAI clients expect.

Ledger rows on past days cannot come from requests (the binary has no test clock), so the date
range test writes them with sqlite3 into the gateway's own database file, as another writer
would: reports read the ledger from the database on every call."""

from __future__ import annotations

import json
import sqlite3
import uuid
from datetime import date, datetime, timedelta, timezone
from decimal import Decimal

import httpx
import pytest

from harness import PRICES, auth, make_client
from mock_rules import cost_usd, usage_of

CENTS_PER_USD = Decimal(100)
PICO = Decimal(10) ** 12


def report(gateway, secret: str, **params) -> httpx.Response:
    return httpx.get(f"{gateway.base_url}/dashboard/billing/usage", headers=auth(secret), params=params, timeout=10)


def parsed(resp: httpx.Response) -> dict:
    assert resp.status_code == 200, resp.text
    return json.loads(resp.text, parse_float=Decimal)


def midnight(day: date) -> int:
    return int(datetime(day.year, day.month, day.day, tzinfo=timezone.utc).timestamp())


def insert_ledger_row(db_path, key_id: str, model: str, at_secs: int, cost_pico: int, prompt: int, completion: int) -> None:
    with sqlite3.connect(db_path, timeout=10) as db:
        db.execute(
            "INSERT INTO usage_ledger (request_id, key_id, requested_model, model_id, provider, upstream_model,"
            " prompt_tokens, cached_prompt_tokens, completion_tokens, reasoning_tokens, cost_picodollars, outcome,"
            " streamed, created_at, period) VALUES (?, ?, ?, ?, 'deepseek', ?, ?, 0, ?, 0, ?, 'succeeded', 0, ?, ?)",
            (
                f"chatcmpl-past-{uuid.uuid4().hex}",
                key_id,
                model,
                model,
                model,
                prompt,
                completion,
                cost_pico,
                at_secs * 1000,
                datetime.fromtimestamp(at_secs, timezone.utc).strftime("%Y-%m"),
            ),
        )


def test_every_response_carries_its_own_cost(gateway):
    key = gateway.create_key("pro")
    client = make_client(gateway, key)
    prices = PRICES["deepseek-v4-flash"]

    resp = client.chat.completions.create(model="deepseek-v4-flash", messages=[{"role": "user", "content": "cost me [cache=2]"}])
    raw = resp.usage.model_extra or {}
    assert "cost" in raw, f"usage.cost missing from the JSON body: {resp.usage}"
    json_cost = Decimal(str(raw["cost"]))
    assert json_cost == cost_usd(usage_of(resp.usage), prices)

    chunks = list(
        client.chat.completions.create(
            model="deepseek-v4-flash",
            messages=[{"role": "user", "content": "stream my cost"}],
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    final = chunks[-1]
    assert final.usage is not None and not final.choices
    sse_extra = final.usage.model_extra or {}
    assert "cost" in sse_extra, f"usage.cost missing from the final SSE chunk: {final.usage}"
    sse_cost = Decimal(str(sse_extra["cost"]))
    assert sse_cost == cost_usd(usage_of(final.usage), prices)
    assert all(c.usage is None for c in chunks[:-1])

    # The costs the responses reported add up to the key's total exactly.
    assert Decimal(parsed(report(gateway, key.secret))["total_cost_usd_exact"]) == json_cost + sse_cost
    client.close()


def test_usage_by_date_range_reports_daily_costs_per_model(gateway):
    key = gateway.create_key("pro")
    day1 = date(2026, 3, 9)
    day2 = day1 + timedelta(days=1)
    rows = [
        ("deepseek-v4-flash", midnight(day1) + 60, 1_234_567_891, 100, 10),
        ("deepseek-v4-pro", midnight(day1) + 3600, 50_000_000_000, 1000, 20),
        ("deepseek-v4-flash", midnight(day2) + 86_399, 9, 1, 1),
        # Outside the range: the day before and the end day (exclusive).
        ("deepseek-v4-pro", midnight(day1) - 1, 7 * 10**12, 5, 5),
        ("deepseek-v4-pro", midnight(day2 + timedelta(days=1)), 8 * 10**12, 5, 5),
    ]
    for model, at, cost, prompt, completion in rows:
        insert_ledger_row(gateway.db_path, key.key_id, model, at, cost, prompt, completion)

    body = parsed(report(gateway, key.secret, start_date=str(day1), end_date=str(day2 + timedelta(days=1))))
    assert body["object"] == "billing.usage"
    for field in ("key_prefix", "tier", "monthly_requests", "monthly_limit", "remaining", "usage_percent", "total_prompt_tokens", "total_completion_tokens"):
        assert field in body, field
    # The inserted rows are in a past month: this month's quota counters do not see them.
    assert body["monthly_requests"] == 0
    assert (body["start_date"], body["end_date"]) == ("2026-03-09", "2026-03-11")
    days = body["daily_costs"]
    assert [d["timestamp"] for d in days] == [midnight(day1), midnight(day2)]
    first = {i["name"]: i for i in days[0]["line_items"]}
    assert set(first) == {"deepseek-v4-flash", "deepseek-v4-pro"}
    # `cost` is in cents, as OpenAI's legacy endpoint; `cost_usd` is exact.
    assert Decimal(first["deepseek-v4-flash"]["cost_usd"]) == Decimal(1_234_567_891) / PICO
    assert first["deepseek-v4-flash"]["cost"] == Decimal(1_234_567_891) / PICO * CENTS_PER_USD
    assert first["deepseek-v4-pro"]["cost"] == Decimal(5)
    assert [(i["name"], Decimal(i["cost_usd"])) for i in days[1]["line_items"]] == [("deepseek-v4-flash", Decimal(9) / PICO)]
    total_pico = 1_234_567_891 + 50_000_000_000 + 9
    assert Decimal(body["total_usage_usd"]) == Decimal(total_pico) / PICO
    assert body["total_usage"] == Decimal(total_pico) / PICO * CENTS_PER_USD
    assert (body["total_prompt_tokens"], body["total_completion_tokens"]) == (1101, 31)

    # A range over today holds today's real requests, at the cost their responses reported.
    client = make_client(gateway, key)
    resp = client.chat.completions.create(model="deepseek-v4-flash", messages=[{"role": "user", "content": "today"}])
    today = datetime.now(timezone.utc).date()
    body = parsed(report(gateway, key.secret, start_date=str(today), end_date=str(today + timedelta(days=1))))
    [only] = body["daily_costs"]
    assert only["timestamp"] == midnight(today)
    assert [(i["name"], Decimal(i["cost_usd"])) for i in only["line_items"]] == [
        ("deepseek-v4-flash", Decimal(str(resp.usage.model_extra["cost"])))
    ]
    # Without dates: this month to today, today's request included.
    body = parsed(report(gateway, key.secret))
    assert body["daily_costs"][-1]["timestamp"] == midnight(today)
    assert body["monthly_requests"] == 1
    client.close()


@pytest.mark.parametrize(
    "params, param",
    [
        ({"start_date": "2026-03-9", "end_date": "2026-03-10"}, "start_date"),
        ({"start_date": "2026-03-09", "end_date": "tomorrow"}, "end_date"),
        ({"start_date": "2026-03-09"}, "end_date"),
        ({"end_date": "2026-03-09"}, "start_date"),
        ({"start_date": "2026-03-09", "end_date": "2026-03-09"}, "end_date"),
        ({"start_date": "2026-01-01", "end_date": "2026-05-01"}, "end_date"),
    ],
)
def test_bad_date_ranges_are_400_naming_the_parameter(gateway, params, param):
    key = gateway.create_key("pro")
    resp = report(gateway, key.secret, **params)
    assert resp.status_code == 400, resp.text
    error = resp.json()["error"]
    assert (error["type"], error["param"]) == ("invalid_request_error", param), error


def test_subscription_answers_as_openai_clients_expect(gateway):
    expires = (datetime.now(timezone.utc) + timedelta(days=30)).replace(microsecond=0)
    key = gateway.create_key("pro", None, "--expires-at", expires.isoformat())
    resp = httpx.get(f"{gateway.base_url}/dashboard/billing/subscription", headers=auth(key), timeout=10)
    assert resp.status_code == 200, resp.text
    sub = resp.json()
    assert sub["object"] == "billing_subscription"
    assert sub["has_payment_method"] is False
    # No balance and no budget: the value OpenAI-compatible dashboards read as unlimited, exactly.
    for field in ("hard_limit_usd", "soft_limit_usd", "system_hard_limit_usd"):
        assert type(sub[field]) is int and sub[field] == 100_000_000, (field, sub)
    assert (sub["balance_usd"], sub["monthly_budget_usd"], sub["spend_month_usd"]) == (None, None, "0"), sub
    assert sub["access_until"] == int(expires.timestamp())
    assert sub["plan"] == {"title": "pro", "id": "pro"}
    assert (sub["rpm_limit"], sub["monthly_limit"]) == (30, 3000)

    no_expiry = gateway.create_key("basic")
    sub = httpx.get(f"{gateway.base_url}/dashboard/billing/subscription", headers=auth(no_expiry), timeout=10).json()
    assert (sub["access_until"], sub["plan"]["id"]) == (0, "basic")

    resp = httpx.get(f"{gateway.base_url}/dashboard/billing/subscription", timeout=10)
    assert resp.status_code == 401
    assert resp.json()["error"]["type"] == "authentication_error"
