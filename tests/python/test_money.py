"""Money you can trust, through the real binary: prepaid balances and monthly budgets that many
simultaneous requests cannot overdraw (429 insufficient_quota), costs that add up to the key's
totals to the picodollar, streams cut short billed at a marked estimate (a client leaving:
test_client_leaving.py), and a ledger that survives
SIGTERM and SIGKILL under load with no half-applied settlement."""

from __future__ import annotations

import json
import math
import signal
import sqlite3
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from decimal import Decimal
from pathlib import Path

import httpx
import pytest

from harness import ApiKey, Gateway, MockUpstream, auth, sqlite_rows, wait_until
from mock_rules import expected_usage
from money_checks import MAX_TOKENS, PICO, WORST_OUTPUT, cost_of, fire_held, fire_together, key_listing, nonce, pico


def assert_books_balance(gateway: Gateway, key: ApiKey, db_path: Path, credited: int, reported: list[int]) -> None:
    """The key's ledger, its account totals and the costs the responses reported agree exactly,
    nothing is still reserved, and the balance is what was credited minus what was spent."""
    (ledger_sum, rows), = sqlite_rows(
        db_path, "SELECT COALESCE(SUM(cost_picodollars), 0), COUNT(*) FROM usage_ledger WHERE key_id = ?", key.key_id
    )
    listing = key_listing(gateway, key)
    assert ledger_sum == sum(reported), (ledger_sum, sum(reported))
    assert rows == len(reported)
    assert listing["spend_total_picodollars"] == ledger_sum
    assert listing["spend_month_picodollars"] == ledger_sum
    assert listing["reserved_picodollars"] == 0
    assert listing["written_off_picodollars"] == 0
    assert listing["balance_picodollars"] == credited - ledger_sum >= 0
    assert sqlite_rows(db_path, "SELECT COUNT(*) FROM reservations WHERE key_id = ?", key.key_id) == [(0,)]


def chat(gateway: Gateway, key: ApiKey, text: str, **extra) -> httpx.Response:
    body = {"model": "deepseek-chat", "messages": [{"role": "user", "content": text}], "max_tokens": MAX_TOKENS, **extra}
    return httpx.post(f"{gateway.base_url}/chat/completions", headers=auth(key), json=body, timeout=60)


# 1. Balances and budgets -----------------------------------------------------------------------


def test_simultaneous_requests_never_overdraw_a_prepaid_balance(gateway, mock):
    """24 requests arrive together at a balance that covers exactly 5 worst cases: 5 are served,
    19 get 429 insufficient_quota (not retryable), and the balance ends at its start minus the
    exact costs reported, never below zero."""
    balance = WORST_OUTPUT * 55 // 10  # 5.5 worst-case outputs
    key = gateway.create_key("enterprise", None, "--balance", str(Decimal(balance) / PICO))
    assert key_listing(gateway, key)["balance_picodollars"] == balance
    n = nonce()
    # Held upstream until all 24 are refused or held, so every admission happens while the
    # admitted ones still hold money.
    hold = f"race-{n}"
    responses = fire_held(mock, hold, 24, lambda i: chat(gateway, key, f"race {n} {i} [hold={hold}]"))
    assert mock.hold_status(hold)["arrived"] == 5
    ok = [r for r in responses if r.status_code == 200]
    refused = [r for r in responses if r.status_code != 200]
    assert len(ok) == 5, [r.status_code for r in responses]
    for r in refused:
        assert r.status_code == 429, r.text
        error = r.json()["error"]
        assert (error["type"], error["code"]) == ("insufficient_quota", "insufficient_quota"), error
        assert r.headers.get("x-should-retry") == "false"
    assert_books_balance(gateway, key, gateway.tmp_dir / "tollgate.db", balance, [cost_of(r) for r in ok])
    listing = key_listing(gateway, key)
    assert listing["requests_month"] == 5, "refused requests do not count against the quota"
    assert listing["balance_usd"] == str(Decimal(listing["balance_picodollars"]) / PICO).rstrip("0").rstrip(".")


def test_an_empty_balance_refuses_until_topped_up(gateway):
    key = gateway.create_key("enterprise", None, "--balance", "0")
    r = chat(gateway, key, f"no money {nonce()}")
    assert r.status_code == 429 and r.json()["error"]["code"] == "insufficient_quota", r.text
    done = gateway.cli("keys", "topup", key.key_id, "0.01")
    assert "0.01" in done.stdout
    r = chat(gateway, key, f"money now {nonce()}")
    assert r.status_code == 200, r.text
    listing = key_listing(gateway, key)
    assert listing["credited_total_picodollars"] == pico(Decimal("0.01"))
    assert listing["balance_picodollars"] == pico(Decimal("0.01")) - cost_of(r)


def test_topping_up_an_unlimited_key_makes_it_prepaid(gateway):
    """An unlimited key reserves nothing; once topped up (with less than a worst case) the running
    gateway notices within its key refresh and starts refusing what the balance cannot cover."""
    key = gateway.create_key("enterprise")
    assert key_listing(gateway, key)["balance_picodollars"] is None
    first = chat(gateway, key, f"unlimited {nonce()}")
    assert first.status_code == 200, first.text
    gateway.cli("keys", "topup", key.key_id, "0.000001")

    def refused() -> bool:
        r = chat(gateway, key, f"prepaid now {nonce()}")
        return r.status_code == 429 and r.json()["error"]["code"] == "insufficient_quota"

    wait_until(refused, timeout=10, interval=0.2, what="the topped-up key is refused its worst case")
    # Requests admitted before the gateway noticed were unmetered; their settlements are debited
    # all the same (the balance stops at zero, the excess is written off and counted).
    listing = key_listing(gateway, key)
    debited_after_topup = listing["spend_total_picodollars"] - cost_of(first)
    assert listing["credited_total_picodollars"] == pico(Decimal("0.000001"))
    assert listing["balance_picodollars"] == (
        listing["credited_total_picodollars"] - debited_after_topup + listing["written_off_picodollars"]
    )
    assert listing["balance_picodollars"] >= 0


def test_a_monthly_budget_refuses_what_it_cannot_cover(gateway):
    key = gateway.create_key("enterprise", None, "--monthly-budget", "0.0001")
    r = chat(gateway, key, f"over budget {nonce()}")
    assert r.status_code == 429, r.text
    assert r.json()["error"]["code"] == "insufficient_quota"
    assert "budget" in r.json()["error"]["message"]
    listing = key_listing(gateway, key)
    assert listing["monthly_budget_picodollars"] == pico(Decimal("0.0001"))
    assert listing["balance_picodollars"] is None, "a budget alone is not a prepaid balance"


def test_cli_refuses_inexact_amounts(gateway):
    done = gateway.cli("keys", "create", "--tier", "basic", "--balance", "0.1e-3", check=False)
    assert done.returncode != 0 and "--balance" in done.stderr, done.stderr
    done = gateway.cli("keys", "create", "--tier", "basic", "--balance", "0.0000000000001", check=False)
    assert done.returncode != 0 and "12 decimal places" in done.stderr, done.stderr


def test_a_top_up_past_the_largest_balance_is_refused_and_changes_nothing(gateway):
    """Balances are i64 picodollars (about 9.22 million USD): a top-up that would carry the balance
    past that is refused naming the amount, and the balance stays what it was."""
    key = gateway.create_key("enterprise", None, "--balance", "9000000")
    before = key_listing(gateway, key)
    assert before["balance_picodollars"] == 9_000_000 * 10**12
    done = gateway.cli("keys", "topup", key.key_id, "300000", check=False)
    assert done.returncode != 0, done.stdout
    assert "the balance would exceed the largest amount a key can hold" in done.stderr, done.stderr
    done = gateway.cli("keys", "topup", key.key_id, "10000000", check=False)
    assert done.returncode != 0 and "too large" in done.stderr, done.stderr
    after = key_listing(gateway, key)
    for field in ("balance_picodollars", "credited_total_picodollars"):
        assert after[field] == before[field] == 9_000_000 * 10**12, field
    r = chat(gateway, key, f"still rich {nonce()}")
    assert r.status_code == 200, r.text


def month_label(months_back: int = 0) -> str:
    """`YYYY-MM` of this UTC month, or of one `months_back` before it."""
    today = datetime.now(timezone.utc)
    index = today.year * 12 + today.month - 1 - months_back
    return f"{index // 12:04}-{index % 12 + 1:02}"


def sqlite_write(db_path: Path, sql: str, *args) -> None:
    db = sqlite3.connect(db_path, timeout=10)
    try:
        db.execute(sql, args)
        db.commit()
    finally:
        db.close()


def test_a_monthly_budget_starts_afresh_each_month(gateway):
    """A budget caps one calendar month's spend: spent in full this month, it refuses; spent in
    full last month, it serves again, and this month's spend starts from this request's cost."""
    budget = WORST_OUTPUT * 2
    key = gateway.create_key("enterprise", None, "--monthly-budget", str(Decimal(budget) / PICO))
    db_path = gateway.tmp_dir / "tollgate.db"
    sqlite_write(
        db_path,
        "UPDATE key_accounts SET spent_month_picodollars = ?, spent_period = ? WHERE key_id = ?",
        budget,
        month_label(),
        key.key_id,
    )
    assert key_listing(gateway, key)["spend_month_picodollars"] == budget
    r = chat(gateway, key, f"budget spent {nonce()}")
    assert (r.status_code, r.json()["error"]["code"]) == (429, "insufficient_quota"), r.text

    sqlite_write(db_path, "UPDATE key_accounts SET spent_period = ? WHERE key_id = ?", month_label(1), key.key_id)
    assert key_listing(gateway, key)["spend_month_picodollars"] == 0
    r = chat(gateway, key, f"a new month {nonce()}")
    assert r.status_code == 200, r.text
    listing = key_listing(gateway, key)
    assert listing["spend_month_picodollars"] == cost_of(r)
    assert sqlite_rows(db_path, "SELECT spent_period, spent_month_picodollars FROM key_accounts WHERE key_id = ?", key.key_id) == [
        (month_label(), cost_of(r))
    ]


def test_the_background_sweep_releases_expired_reservations_only(gateway):
    """A reservation whose request never settled (its process died) is released by the running
    gateway's sweep (every 10 s) once expired; one not yet expired is kept."""
    key = gateway.create_key("enterprise", None, "--balance", "1")
    db_path = gateway.tmp_dir / "tollgate.db"
    now_ms = int(time.time() * 1000)
    n = nonce()
    lost, live = f"chatcmpl-lost{n}", f"chatcmpl-live{n}"
    for request_id, amount, expires_at in ((lost, 5_000, now_ms - 60_000), (live, 7_000, now_ms + 3_600_000)):
        sqlite_write(
            db_path,
            "INSERT INTO reservations (request_id, key_id, amount_picodollars, created_at, expires_at) VALUES (?, ?, ?, ?, ?)",
            request_id,
            key.key_id,
            amount,
            now_ms - 120_000,
            expires_at,
        )
    sqlite_write(db_path, "UPDATE key_accounts SET reserved_picodollars = reserved_picodollars + 12000 WHERE key_id = ?", key.key_id)

    def held() -> list[tuple]:
        return sqlite_rows(db_path, "SELECT request_id FROM reservations WHERE key_id = ? ORDER BY request_id", key.key_id)

    wait_until(lambda: held() == [(live,)], timeout=25, interval=0.25, what="the sweep released the expired reservation")
    assert key_listing(gateway, key)["reserved_picodollars"] == 7_000
    # Give the live one back, as its request would.
    sqlite_write(db_path, "DELETE FROM reservations WHERE request_id = ?", live)
    sqlite_write(db_path, "UPDATE key_accounts SET reserved_picodollars = reserved_picodollars - 7000 WHERE key_id = ?", key.key_id)


# 2. Exact money --------------------------------------------------------------------------------


def test_many_concurrent_costs_add_up_to_the_key_totals_exactly(gateway):
    """60 simultaneous requests (JSON and streamed, with cached tokens) on one prepaid key: the
    sum of the `usage.cost` each response reported equals the ledger, the key's spend totals and
    the balance's decrease, to the picodollar."""
    credited = pico(Decimal(5))
    key = gateway.create_key("enterprise", None, "--balance", "5")
    n = nonce()

    def send(i: int) -> int:
        text = f"sum {n} {i} {'w ' * (i % 9)}[cache={i % 4}]"
        if i % 2:
            r = chat(gateway, key, text)
            assert r.status_code == 200, r.text
            return cost_of(r)
        body = {
            "model": "deepseek-chat",
            "messages": [{"role": "user", "content": text}],
            "max_tokens": MAX_TOKENS,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        with httpx.stream("POST", f"{gateway.base_url}/chat/completions", headers=auth(key), json=body, timeout=60) as r:
            assert r.status_code == 200
            usage = None
            for line in r.iter_lines():
                if line.startswith("data: {"):
                    chunk = json.loads(line[6:], parse_float=Decimal)
                    usage = chunk.get("usage") or usage
        return pico(usage["cost"])

    costs = fire_together(60, send)
    assert all(c > 0 for c in costs)
    assert_books_balance(gateway, key, gateway.tmp_dir / "tollgate.db", credited, costs)


# 3. Streams ------------------------------------------------------------------------------------


def ledger_of(gateway: Gateway, key: ApiKey) -> list[tuple]:
    return sqlite_rows(
        gateway.tmp_dir / "tollgate.db",
        "SELECT outcome, prompt_tokens, completion_tokens, estimated FROM usage_ledger WHERE key_id = ?",
        key.key_id,
    )


def test_a_stream_cut_by_the_deadline_is_billed_a_marked_estimate(gateway):
    """deepseek-slow must finish within 3 s; this answer takes longer, so the upstream never sends
    its usage. The gateway bills ceil(bytes / 4) of the text it relayed and marks the row
    estimated."""
    key = gateway.create_key("enterprise")
    words = " ".join(f"w{i}" for i in range(12))
    body = {
        "model": "deepseek-slow",
        "messages": [{"role": "user", "content": f"cut me {nonce()} {words} [chunk_delay_ms=400]"}],
        "stream": True,
    }
    generated = 0
    with httpx.stream("POST", f"{gateway.base_url}/chat/completions", headers=auth(key), json=body, timeout=30) as r:
        assert r.status_code == 200
        for line in r.iter_lines():
            if not line.startswith("data: {"):
                continue
            chunk = json.loads(line[6:])
            for choice in chunk.get("choices") or []:
                delta = choice.get("delta") or {}
                for field in ("content", "reasoning_content"):
                    generated += len((delta.get(field) or "").encode())
    assert generated > 0
    wait_until(lambda: len(ledger_of(gateway, key)) == 1, timeout=20, what="the cut stream is settled")
    [(outcome, prompt, completion, estimated)] = ledger_of(gateway, key)
    assert (outcome, estimated) == ("failed", 1)
    assert completion == math.ceil(generated / 4)
    assert prompt > 0


# 4. A durable ledger ---------------------------------------------------------------------------


@pytest.fixture
def own_gateway(mock: MockUpstream, tmp_path: Path):
    """A gateway of its own (it is signalled and killed), with a 30 s drain."""
    gw = Gateway(tmp_path, mock, env={"TOLLGATE__SERVER__SHUTDOWN_GRACE_SECS": "30"})
    yield gw
    gw.stop()


def test_sigterm_drains_in_flight_requests_and_loses_nothing(own_gateway, mock):
    gw = own_gateway
    key = gw.create_key("enterprise", None, "--balance", "10")
    n = nonce()
    with ThreadPoolExecutor(max_workers=20) as pool:
        futures = [pool.submit(chat, gw, key, f"drain {n} {i} [delay_ms=1500]") for i in range(20)]
        wait_until(lambda: len(mock.requests_with(n)) == 20, timeout=20, what="all 20 requests reached the upstream")
        gw.process.proc.send_signal(signal.SIGTERM)
        responses = [f.result() for f in futures]
    assert [r.status_code for r in responses] == [200] * 20
    assert gw.process.proc.wait(timeout=30) == 0
    db = gw.tmp_dir / "tollgate.db"
    ids = {r.json()["id"] for r in responses}
    assert {row[0] for row in sqlite_rows(db, "SELECT request_id FROM usage_ledger WHERE key_id = ?", key.key_id)} == ids
    assert_books_balance(gw, key, db, pico(Decimal(10)), [cost_of(r) for r in responses])


def test_kill_9_under_load_leaves_consistent_books(own_gateway, mock):
    """SIGKILL while 40 requests are in flight on a prepaid key; after a restart the ledger, the
    key's totals and its balance agree exactly, every answered request is in the ledger, and no
    reservation is left."""
    gw = own_gateway
    key = gw.create_key("enterprise", None, "--balance", "10")
    n = nonce()
    done = []

    def send(i: int):
        try:
            r = chat(gw, key, f"crash {n} {i} [delay_ms={(i % 8) * 150}]")
        except httpx.HTTPError:
            return None
        done.append(r)
        return r

    with ThreadPoolExecutor(max_workers=40) as pool:
        futures = [pool.submit(send, i) for i in range(40)]
        wait_until(lambda: len(done) >= 10, timeout=30, what="some requests answered")
        gw.kill()
        results = [f.result() for f in futures]
    answered = [r for r in results if r is not None and r.status_code == 200]
    assert 10 <= len(answered) < 40, len(answered)
    gw.start()
    db = gw.tmp_dir / "tollgate.db"
    rows = sqlite_rows(db, "SELECT request_id, cost_picodollars FROM usage_ledger WHERE key_id = ?", key.key_id)
    ledger_ids = {row[0] for row in rows}
    assert {r.json()["id"] for r in answered} <= ledger_ids, "an answered request is always in the ledger"
    (ledger_sum,) = (sum(row[1] for row in rows),)
    listing = key_listing(gw, key)
    assert listing["spend_total_picodollars"] == ledger_sum
    assert listing["balance_picodollars"] == pico(Decimal(10)) - ledger_sum
    assert listing["reserved_picodollars"] == 0
    assert sqlite_rows(db, "SELECT COUNT(*) FROM reservations") == [(0,)]
    # The restarted gateway serves the key from the balance that is left.
    r = chat(gw, key, f"after the crash {n}")
    assert r.status_code == 200, r.text
