"""Two `tollgate serve` replicas on one PostgreSQL database and one Redis (started by
scripts/services.sh): concurrent load on one key through both shows that its requests-per-minute
window, its monthly quota and its prepaid balance hold exactly across processes (not once per
replica), and that the ledger equals the sum of the costs the responses reported. A revocation
or rotation made through one replica's Admin API reaches the other within its key refresh. A
Redis that loses its counters (FLUSHALL) re-seeds each key's monthly count from the ledger."""

from __future__ import annotations

import uuid
from decimal import Decimal

import httpx
import pytest

import datastores
from datastores import POSTGRES_URL, REDIS_URL, psql, redis_command
from harness import ApiKey, Gateway, MockUpstream, auth, wait_until
from money_checks import MAX_TOKENS, PICO, WORST_OUTPUT, cost_of, fire_held, fire_together, key_listing, nonce

datastores.require()


ADMIN_TOKEN = f"e2e-admin-{uuid.uuid4().hex}"
ADMIN_CONFIG = """
[admin]
token_env = "TOLLGATE_ADMIN_TOKEN"
"""
# A replica that did not make a change sees it within server.key_refresh_ms (1 s), plus slack.
REFRESH_DEADLINE_SECS = 5


@pytest.fixture(scope="module")
def replicas(mock: MockUpstream, tmp_path_factory: pytest.TempPathFactory):
    env = {"TOLLGATE__DATABASE__URL": POSTGRES_URL, "TOLLGATE__REDIS__URL": REDIS_URL, "TOLLGATE_ADMIN_TOKEN": ADMIN_TOKEN}
    gateways = [Gateway(tmp_path_factory.mktemp(f"replica{i}"), mock, ADMIN_CONFIG, env=env) for i in range(2)]
    yield gateways
    for gw in gateways:
        gw.stop()


def post(gateway: Gateway, key: ApiKey, text: str) -> httpx.Response:
    body = {"model": "deepseek-chat", "messages": [{"role": "user", "content": text}], "max_tokens": MAX_TOKENS}
    return httpx.post(f"{gateway.base_url}/chat/completions", headers=auth(key), json=body, timeout=60)


def through_both(replicas, key: ApiKey, n: int, text: str) -> list[httpx.Response]:
    """n simultaneous requests, alternating between the two replicas."""
    return fire_together(n, lambda i: post(replicas[i % 2], key, f"{text} {i}"))


def held_through_both(replicas, mock: MockUpstream, key: ApiKey, n: int, text: str) -> list[httpx.Response]:
    """`through_both`, with the admitted requests held upstream until all n are refused or held."""
    hold = f"hold-{nonce()}"
    return fire_held(mock, hold, n, lambda i: post(replicas[i % 2], key, f"{text} {i} [hold={hold}]"))


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


def test_a_redis_flush_reseeds_the_monthly_quota_from_the_ledger(replicas):
    """tight_month allows 5 requests per month. After 3, Redis loses everything (FLUSHALL): the
    counter restarts from this month's ledger rows of the key (3), not from the count the
    replicas loaded when they first saw the key (0), so exactly 2 more are admitted."""
    key = replicas[0].create_key("tight_month")
    for i in range(3):
        assert post(replicas[i % 2], key, f"before flush {nonce()}").status_code == 200
    assert redis_command("FLUSHALL") == b"+OK"
    responses = [post(replicas[i % 2], key, f"after flush {nonce()}") for i in range(4)]
    assert codes(responses) == ["200"] * 2 + ["monthly_quota_exceeded"] * 2
    for gw in replicas:
        report = gw.usage(key).json()
        assert (report["monthly_requests"], report["remaining"]) == (5, 0)


def test_replicas_never_overdraw_one_balance_and_the_ledger_matches_the_responses(replicas, mock):
    """A balance for exactly 5 worst cases, 20 simultaneous requests through both replicas: 5 are
    served, the rest get insufficient_quota, and the PostgreSQL ledger, the key's totals and its
    balance equal the costs the responses reported."""
    balance = WORST_OUTPUT * 55 // 10
    key = replicas[0].create_key("enterprise", None, "--balance", str(Decimal(balance) / PICO))
    responses = held_through_both(replicas, mock, key, 20, f"balance {nonce()}")
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


def admin(gateway: Gateway, path: str) -> httpx.Response:
    return httpx.post(f"{gateway.http_base}{path}", headers=auth(ADMIN_TOKEN), timeout=10)


def usage_status(gateway: Gateway, secret: str) -> int:
    return httpx.get(f"{gateway.base_url}/dashboard/billing/usage", headers=auth(secret), timeout=10).status_code


def test_a_revocation_through_one_replica_reaches_the_other(replicas):
    """Revoked through replica 0's Admin API: refused there at once, and on replica 1 (which had
    the key cached) within its key refresh; never accepted again by either."""
    key = replicas[0].create_key("enterprise")
    for gw in replicas:
        assert post(gw, key, f"cache me {nonce()}").status_code == 200
    revoked = admin(replicas[0], f"/admin/keys/{key.key_id}/revoke")
    assert revoked.status_code == 200, revoked.text
    assert revoked.json()["status"] == "revoked"
    refused = post(replicas[0], key, f"revoked {nonce()}")
    assert (refused.status_code, refused.json()["error"]["type"]) == (401, "authentication_error"), refused.text
    wait_until(lambda: usage_status(replicas[1], key.secret) == 401, REFRESH_DEADLINE_SECS, what="replica 1 refuses the revoked key")
    for gw in replicas:
        assert post(gw, key, f"still revoked {nonce()}").status_code == 401


def test_a_rotation_through_one_replica_reaches_the_other(replicas):
    """Rotated through replica 1's Admin API: the new secret works on both replicas at once, the
    old one is refused by replica 1 at once and by replica 0 within its key refresh, and the
    key's usage carries over."""
    key = replicas[0].create_key("enterprise")
    for gw in replicas:
        assert post(gw, key, f"before rotation {nonce()}").status_code == 200
    rotated = admin(replicas[1], f"/admin/keys/{key.key_id}/rotate")
    assert rotated.status_code == 200, rotated.text
    new_secret = rotated.json()["secret"]
    assert new_secret.startswith("sk-") and new_secret != key.secret
    assert usage_status(replicas[1], key.secret) == 401
    wait_until(lambda: usage_status(replicas[0], key.secret) == 401, REFRESH_DEADLINE_SECS, what="replica 0 refuses the old secret")
    rotated_key = ApiKey(secret=new_secret, key_id=key.key_id, tier=key.tier, name=key.name)
    for gw in replicas:
        assert post(gw, rotated_key, f"after rotation {nonce()}").status_code == 200
        assert post(gw, key, f"old secret {nonce()}").status_code == 401
    report = replicas[0].usage(rotated_key).json()
    assert report["monthly_requests"] == 4


def test_a_gateway_starting_on_postgres_releases_only_expired_reservations(replicas, mock, tmp_path):
    """At start a gateway releases reservations left by requests that never settled; on
    PostgreSQL only the expired ones, since another replica may still be running the others.
    Both replicas are stopped first, so only the start-up path can have released anything."""
    for gw in replicas:
        gw.stop()
    try:
        key = replicas[0].create_key("enterprise", None, "--balance", "1")
        n = nonce()
        lost, live = f"chatcmpl-lost{n}", f"chatcmpl-live{n}"
        psql(
            "BEGIN; "
            "INSERT INTO reservations (request_id, key_id, amount_picodollars, created_at, expires_at) VALUES "
            f"('{lost}', '{key.key_id}', 5000, (extract(epoch from now()) * 1000)::bigint - 120000, "
            "(extract(epoch from now()) * 1000)::bigint - 60000), "
            f"('{live}', '{key.key_id}', 7000, (extract(epoch from now()) * 1000)::bigint, "
            "(extract(epoch from now()) * 1000)::bigint + 3600000); "
            f"UPDATE key_accounts SET reserved_picodollars = reserved_picodollars + 12000 WHERE key_id = '{key.key_id}'; "
            "COMMIT;"
        )
        env = {"TOLLGATE__DATABASE__URL": POSTGRES_URL, "TOLLGATE__REDIS__URL": REDIS_URL}
        starting = Gateway(tmp_path, mock, env=env)
        try:
            # Checked as soon as it serves: the release ran before it did.
            assert psql(f"SELECT request_id FROM reservations WHERE key_id = '{key.key_id}'") == [[live]]
            assert psql(f"SELECT reserved_picodollars FROM key_accounts WHERE key_id = '{key.key_id}'") == [["7000"]]
            assert "released reservations of requests that never settled" in starting.logs()
        finally:
            starting.stop()
        psql(
            f"BEGIN; DELETE FROM reservations WHERE request_id = '{live}'; "
            f"UPDATE key_accounts SET reserved_picodollars = reserved_picodollars - 7000 WHERE key_id = '{key.key_id}'; COMMIT;"
        )
    finally:
        for gw in replicas:
            gw.start()
