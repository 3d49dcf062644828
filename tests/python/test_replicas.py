"""Two `tollgate serve` replicas on one PostgreSQL database and one Redis (started by
scripts/services.sh): concurrent load on one key through both shows that its requests-per-minute
window, its monthly quota and its prepaid balance hold exactly across processes (not once per
replica), and that the ledger equals the sum of the costs the responses reported."""

from __future__ import annotations

import os
import subprocess
from decimal import Decimal

import httpx
import pytest

from harness import ApiKey, Gateway, MockUpstream, auth
from money_checks import MAX_TOKENS, PICO, WORST_OUTPUT, cost_of, fire_together, key_listing, nonce

POSTGRES_URL = os.environ.get("TOLLGATE_TEST_POSTGRES_URL")
REDIS_URL = os.environ.get("TOLLGATE_TEST_REDIS_URL")
PSQL = os.environ.get("TOLLGATE_TEST_PSQL", "psql")

if not (POSTGRES_URL and REDIS_URL):
    if os.environ.get("CI"):
        raise RuntimeError("TOLLGATE_TEST_POSTGRES_URL and TOLLGATE_TEST_REDIS_URL must be set: run scripts/e2e.sh")
    pytest.skip("no PostgreSQL/Redis: run through scripts/e2e.sh", allow_module_level=True)


def psql(sql: str) -> list[list[str]]:
    done = subprocess.run(
        [PSQL, POSTGRES_URL, "-At", "-F", "\t", "-c", sql], capture_output=True, text=True, timeout=30, check=True
    )
    return [line.split("\t") for line in done.stdout.splitlines() if line]


@pytest.fixture(scope="module")
def replicas(mock: MockUpstream, tmp_path_factory: pytest.TempPathFactory):
    env = {"TOLLGATE__DATABASE__URL": POSTGRES_URL, "TOLLGATE__REDIS__URL": REDIS_URL}
    gateways = [Gateway(tmp_path_factory.mktemp(f"replica{i}"), mock, env=env) for i in range(2)]
    yield gateways
    for gw in gateways:
        gw.stop()


def post(gateway: Gateway, key: ApiKey, text: str) -> httpx.Response:
    body = {"model": "deepseek-chat", "messages": [{"role": "user", "content": text}], "max_tokens": MAX_TOKENS}
    return httpx.post(f"{gateway.base_url}/chat/completions", headers=auth(key), json=body, timeout=60)


def through_both(replicas, key: ApiKey, n: int, text: str) -> list[httpx.Response]:
    """n simultaneous requests, alternating between the two replicas."""
    return fire_together(n, lambda i: post(replicas[i % 2], key, f"{text} {i}"))


def codes(responses: list[httpx.Response]) -> list:
    return sorted((str(r.status_code) if r.status_code == 200 else r.json()["error"]["code"] for r in responses), key=lambda c: (c != "200", c))


def test_replicas_share_one_rpm_window(replicas):
    """tight_rpm allows 3 requests per minute: 10 at once through two replicas admit 3, not 6."""
    key = replicas[0].create_key("tight_rpm")
    responses = through_both(replicas, key, 10, f"rpm {nonce()}")
    assert codes(responses) == ["200"] * 3 + ["rate_limit_exceeded"] * 7


def test_replicas_share_one_monthly_quota(replicas):
    """tight_month allows 5 requests per month: 12 at once through two replicas admit 5."""
    key = replicas[1].create_key("tight_month")
    responses = through_both(replicas, key, 12, f"month {nonce()}")
    assert codes(responses) == ["200"] * 5 + ["monthly_quota_exceeded"] * 7
    for gw in replicas:
        report = gw.usage(key).json()
        assert (report["monthly_requests"], report["remaining"]) == (5, 0)


def test_replicas_never_overdraw_one_balance_and_the_ledger_matches_the_responses(replicas):
    """A balance for exactly 5 worst cases, 20 simultaneous requests through both replicas: 5 are
    served, the rest get insufficient_quota, and the PostgreSQL ledger, the key's totals and its
    balance equal the costs the responses reported."""
    balance = WORST_OUTPUT * 55 // 10
    key = replicas[0].create_key("enterprise", None, "--balance", str(Decimal(balance) / PICO))
    responses = through_both(replicas, key, 20, f"balance {nonce()} [delay_ms=3000]")
    assert codes(responses) == ["200"] * 5 + ["insufficient_quota"] * 15
    reported = [cost_of(r) for r in responses if r.status_code == 200]
    [[ledger_sum, rows]] = psql(
        f"SELECT COALESCE(SUM(cost_picodollars), 0), COUNT(*) FROM usage_ledger WHERE key_id = '{key.key_id}'"
    )
    assert (int(ledger_sum), int(rows)) == (sum(reported), 5)
    listing = key_listing(replicas[1], key)
    assert listing["spend_total_picodollars"] == sum(reported)
    assert listing["balance_picodollars"] == balance - sum(reported) >= 0
    assert listing["reserved_picodollars"] == 0
    assert psql(f"SELECT COUNT(*) FROM reservations WHERE key_id = '{key.key_id}'") == [["0"]]
