"""Keys and tiers through the real binary: rotation (CLI, REST, gRPC), expiry, per-key limit
overrides, the per-tier model allow-list, and key administration over `/admin` REST and the
`Admin` gRPC service, with and without the admin token.

This module's gateway has an admin token (`[admin] token_env`) and one more tier, `flash_only`,
whose allow-list names a model and an alias."""

from __future__ import annotations

import json
import uuid
from datetime import datetime, timedelta, timezone
from decimal import Decimal

import grpc
import httpx
import openai
import pytest
from tollgate.v1 import admin_pb2, admin_pb2_grpc

from harness import Gateway, auth, make_client, wait_until

ADMIN_TOKEN = f"e2e-admin-{uuid.uuid4().hex}"
ADMIN_CONFIG = """
[admin]
token_env = "TOLLGATE_ADMIN_TOKEN"

[[tiers]]
name = "flash_only"
rpm = 100
monthly_requests = 1000
models = ["deepseek-v4-flash", "gpt-4o"]
"""
# A process that did not make a change sees it within server.key_refresh_ms (1 s), plus slack.
REFRESH_DEADLINE_SECS = 1.5


@pytest.fixture(scope="module")
def gateway(mock, tmp_path_factory):
    gw = Gateway(tmp_path_factory.mktemp("tollgate-admin"), mock, ADMIN_CONFIG, {"TOLLGATE_ADMIN_TOKEN": ADMIN_TOKEN})
    yield gw
    gw.stop()


def admin(gateway, method: str, path: str, token: str | None = ADMIN_TOKEN, **kwargs) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    return httpx.request(method, f"{gateway.http_base}{path}", headers=headers, timeout=10, **kwargs)


def chat(gateway, secret: str, text: str, model: str = "deepseek-chat") -> httpx.Response:
    return httpx.post(
        f"{gateway.base_url}/chat/completions",
        headers=auth(secret),
        json={"model": model, "messages": [{"role": "user", "content": text}]},
        timeout=30,
    )


def usage(gateway, secret: str) -> httpx.Response:
    return httpx.get(f"{gateway.base_url}/dashboard/billing/usage", headers=auth(secret), timeout=10)


def listed_key(gateway, key_id: str) -> dict:
    for line in gateway.cli("keys", "list", "--json").stdout.splitlines():
        entry = json.loads(line)
        if entry["id"] == key_id:
            return entry
    raise AssertionError(f"key {key_id} is not in `keys list --json`")


def assert_error(resp: httpx.Response, status: int, type_: str, code: str | None = None) -> dict:
    assert resp.status_code == status, resp.text
    error = resp.json()["error"]
    assert error["type"] == type_, error
    if code is not None:
        assert error["code"] == code, error
    return error


# --- rotation -------------------------------------------------------------------------------------


def test_cli_rotate_refuses_the_old_secret_and_keeps_the_usage(gateway):
    key = gateway.create_key("pro")
    assert chat(gateway, key.secret, "before rotation").status_code == 200
    before = usage(gateway, key.secret).json()
    assert before["monthly_requests"] == 1

    done = gateway.cli("keys", "rotate", key.key_id)
    new_secret = done.stdout.strip().splitlines()[-1].strip()
    assert new_secret.startswith("sk-") and new_secret != key.secret
    assert done.stdout.count(new_secret) == 1

    # The CLI is another process: the gateway notices through its refresh poll.
    wait_until(lambda: usage(gateway, key.secret).status_code == 401, REFRESH_DEADLINE_SECS, what="old secret refused")
    assert_error(chat(gateway, key.secret, "old secret"), 401, "authentication_error")
    after = usage(gateway, new_secret).json()
    assert after["monthly_requests"] == 1
    assert after["total_prompt_tokens"] == before["total_prompt_tokens"]
    assert after["total_cost_usd_exact"] == before["total_cost_usd_exact"]
    assert chat(gateway, new_secret, "after rotation").status_code == 200
    assert usage(gateway, new_secret).json()["monthly_requests"] == 2
    assert listed_key(gateway, key.key_id)["prefix"] == new_secret[:12]


def test_a_secret_in_an_admin_url_is_refused(gateway):
    created = admin(gateway, "POST", "/admin/keys", json={"tier": "pro", "name": "secret-in-url"})
    assert created.status_code == 201, created.text
    secret = created.json()["secret"]
    for path in (f"/admin/keys/{secret}/revoke", f"/admin/keys/{secret[:20]}/rotate"):
        refused = admin(gateway, "POST", path)
        assert_error(refused, 400, "invalid_request_error")
        assert refused.json()["error"]["param"] == "key"
        assert secret not in refused.text
    # Nothing happened to the key; its id and shown prefix still name it.
    assert chat(gateway, secret, "still valid").status_code == 200
    prefix = created.json()["prefix"]
    assert admin(gateway, "PATCH", f"/admin/keys/{prefix}...", json={"name": "renamed"}).status_code == 200


def test_rest_rotate_refuses_the_old_secret_at_once(gateway):
    created = admin(gateway, "POST", "/admin/keys", json={"tier": "pro", "name": "rest-rotate"})
    assert created.status_code == 201, created.text
    old = created.json()["secret"]
    key_id = created.json()["id"]
    assert chat(gateway, old, "cache me").status_code == 200

    rotated = admin(gateway, "POST", f"/admin/keys/{key_id}/rotate")
    assert rotated.status_code == 200, rotated.text
    body = rotated.json()
    assert body["id"] == key_id and body["secret"] != old and body["secret"].startswith(body["prefix"])
    # Same process: the rotation invalidated the cache, so no polling is needed.
    assert_error(chat(gateway, old, "too late"), 401, "authentication_error", "invalid_api_key")
    assert chat(gateway, body["secret"], "new secret").status_code == 200
    assert usage(gateway, body["secret"]).json()["monthly_requests"] == 2


# --- expiry ---------------------------------------------------------------------------------------


def test_expired_key_is_a_401_saying_so(gateway):
    # Long enough for two CLI runs and a request on a loaded machine; the wait below is on the
    # observable 401, not on the clock.
    expires = (datetime.now(timezone.utc) + timedelta(seconds=5)).replace(microsecond=0)
    key = gateway.create_key("pro", None, "--expires-at", expires.isoformat())
    assert listed_key(gateway, key.key_id)["expires_at"].startswith(expires.strftime("%Y-%m-%dT%H:%M:%S"))
    client = make_client(gateway, key)
    assert client.chat.completions.create(
        model="deepseek-chat", messages=[{"role": "user", "content": "still valid"}]
    ).choices[0].message.content == "Echo: still valid"

    wait_until(lambda: usage(gateway, key.secret).status_code == 401, 10, what="key expiring")
    error = assert_error(chat(gateway, key.secret, "expired"), 401, "authentication_error", "expired_api_key")
    assert error["message"].startswith("API key expired at "), error
    with pytest.raises(openai.AuthenticationError):
        client.chat.completions.create(model="deepseek-chat", messages=[{"role": "user", "content": "x"}])
    assert listed_key(gateway, key.key_id)["status"] == "expired"
    client.close()


def test_past_expiry_is_refused_at_creation(gateway):
    done = gateway.cli("keys", "create", "--tier", "pro", "--expires-at", "2020-01-01", check=False)
    assert done.returncode != 0
    assert "expires_at" in done.stderr
    resp = admin(gateway, "POST", "/admin/keys", json={"tier": "pro", "expires_at": 1})
    assert assert_error(resp, 400, "invalid_request_error")["param"] == "expires_at"


# --- overrides ------------------------------------------------------------------------------------


def test_rpm_override_replaces_the_tier_rpm(gateway):
    key = gateway.create_key("pro", None, "--rpm", "2")  # the pro tier allows 30
    assert listed_key(gateway, key.key_id)["rpm_override"] == 2
    client = make_client(gateway, key)
    for i in range(2):
        client.chat.completions.create(model="deepseek-chat", messages=[{"role": "user", "content": f"ok {i}"}])
    with pytest.raises(openai.RateLimitError) as refused:
        client.chat.completions.create(model="deepseek-chat", messages=[{"role": "user", "content": "third"}])
    assert refused.value.body["code"] == "rate_limit_exceeded"
    assert "2 requests per minute" in refused.value.body["message"]
    assert usage(gateway, key.secret).json()["rpm_limit"] == 2
    client.close()


def test_monthly_override_and_update_back_to_the_tier(gateway):
    key = gateway.create_key("pro", None, "--monthly-requests", "1")
    assert chat(gateway, key.secret, "one").status_code == 200
    assert_error(chat(gateway, key.secret, "two"), 429, "rate_limit_error", "monthly_quota_exceeded")
    report = usage(gateway, key.secret).json()
    assert (report["monthly_limit"], report["remaining"]) == (1, 0)

    gateway.cli("keys", "update", key.key_id, "--tier-monthly-requests")
    wait_until(lambda: chat(gateway, key.secret, "back to 3000").status_code == 200, REFRESH_DEADLINE_SECS, what="override removed")
    assert usage(gateway, key.secret).json()["monthly_limit"] == 3000
    assert listed_key(gateway, key.key_id)["monthly_requests_override"] is None


# --- allow-list -----------------------------------------------------------------------------------


def test_model_outside_the_tier_allow_list_is_a_403_and_not_counted(gateway):
    key = gateway.create_key("flash_only")
    client = make_client(gateway, key)
    for model in ["deepseek-v4-pro", "gpt-4.1-mini"]:
        with pytest.raises(openai.PermissionDeniedError) as refused:
            client.chat.completions.create(model=model, messages=[{"role": "user", "content": "no"}])
        assert refused.value.body["type"] == "permission_error"
        assert refused.value.body["param"] == "model"
        assert model in refused.value.body["message"]
    streamed = httpx.post(
        f"{gateway.base_url}/chat/completions",
        headers=auth(key),
        json={"model": "deepseek-v4-pro", "stream": True, "messages": [{"role": "user", "content": "no"}]},
        timeout=30,
    )
    assert_error(streamed, 403, "permission_error", "model_not_allowed")
    assert usage(gateway, key.secret).json()["monthly_requests"] == 0

    # The listed model, an alias resolving to it, and a listed alias all work.
    for model in ["deepseek-v4-flash", "deepseek-chat", "gpt-4o"]:
        resp = client.chat.completions.create(model=model, messages=[{"role": "user", "content": f"via {model}"}])
        assert resp.choices[0].message.content == f"Echo: via {model}"
    assert usage(gateway, key.secret).json()["monthly_requests"] == 3
    client.close()


# --- /admin REST ----------------------------------------------------------------------------------


def test_admin_rest_needs_the_admin_token(gateway):
    api_key = gateway.create_key("pro")
    assert_error(admin(gateway, "GET", "/admin/keys", token=None), 401, "authentication_error", "invalid_admin_token")
    assert_error(admin(gateway, "GET", "/admin/keys", token=api_key.secret), 401, "authentication_error", "invalid_admin_token")
    assert_error(admin(gateway, "POST", "/admin/keys", token=ADMIN_TOKEN[:-1], json={"tier": "pro"}), 401, "authentication_error")
    listed = admin(gateway, "GET", "/admin/keys")
    assert listed.status_code == 200, listed.text
    assert api_key.key_id in {k["id"] for k in listed.json()["data"]}
    assert api_key.secret not in listed.text
    # The admin token is not an API key either.
    assert_error(chat(gateway, ADMIN_TOKEN, "hi"), 401, "authentication_error")


def test_admin_rest_creates_updates_and_revokes_keys(gateway):
    expires = int((datetime.now(timezone.utc) + timedelta(days=7)).timestamp())
    created = admin(
        gateway,
        "POST",
        "/admin/keys",
        json={"tier": "pro", "name": "rest", "expires_at": expires, "rpm": 5, "monthly_requests": 50},
    )
    assert created.status_code == 201, created.text
    key = created.json()
    assert (key["object"], key["tier"], key["name"], key["status"]) == ("api_key", "pro", "rest", "active")
    assert (key["expires_at"], key["rpm_override"], key["rpm_limit"], key["monthly_limit"]) == (expires, 5, 5, 50)
    secret = key["secret"]
    assert chat(gateway, secret, "made over REST").status_code == 200
    assert secret not in admin(gateway, "GET", "/admin/keys").text

    patched = admin(gateway, "PATCH", f"/admin/keys/{key['prefix']}", json={"rpm": None, "expires_at": None, "name": "renamed"})
    assert patched.status_code == 200, patched.text
    assert (patched.json()["rpm_override"], patched.json()["rpm_limit"], patched.json()["expires_at"], patched.json()["name"]) == (
        None,
        30,
        None,
        "renamed",
    )
    assert usage(gateway, secret).json()["rpm_limit"] == 30

    bad = admin(gateway, "PATCH", f"/admin/keys/{key['id']}", json={"rpm": "fast"})
    assert assert_error(bad, 400, "invalid_request_error")["param"] == "rpm"
    bad = admin(gateway, "PATCH", f"/admin/keys/{key['id']}", json={"tier": "gold"})
    assert_error(bad, 400, "invalid_request_error")
    missing = admin(gateway, "POST", "/admin/keys/no-such-key/revoke")
    assert_error(missing, 404, "not_found_error")

    revoked = admin(gateway, "POST", f"/admin/keys/{key['id']}/revoke")
    assert revoked.status_code == 200 and revoked.json()["status"] == "revoked", revoked.text
    assert_error(chat(gateway, secret, "revoked"), 401, "authentication_error")
    assert_error(admin(gateway, "POST", f"/admin/keys/{key['id']}/rotate"), 400, "invalid_request_error")


def test_admin_is_refused_when_no_admin_token_is_configured(mock, tmp_path_factory):
    plain = Gateway(tmp_path_factory.mktemp("tollgate-noadmin"), mock, extra_env={"TOLLGATE_ADMIN_TOKEN": ADMIN_TOKEN})
    try:
        resp = admin(plain, "GET", "/admin/keys")
        assert_error(resp, 401, "authentication_error", "admin_disabled")
        channel = grpc.insecure_channel(plain.grpc_addr)
        with pytest.raises(grpc.RpcError) as refused:
            admin_pb2_grpc.AdminStub(channel).ListKeys(
                admin_pb2.ListKeysRequest(), metadata=[("authorization", f"Bearer {ADMIN_TOKEN}")], timeout=10
            )
        assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
        channel.close()
    finally:
        plain.stop()


def test_a_configured_admin_token_must_be_set(mock, tmp_path_factory):
    """`[admin] token_env` names a variable that is unset: the gateway refuses to start rather
    than serve an Admin API nobody can use (or, worse, one guarded by an empty token)."""
    unset = f"TOLLGATE_E2E_UNSET_{uuid.uuid4().hex}"
    with pytest.raises(RuntimeError, match=f"{unset} is not set"):
        Gateway(tmp_path_factory.mktemp("tollgate-unset-token"), mock, ADMIN_CONFIG.replace("TOLLGATE_ADMIN_TOKEN", unset))
    with pytest.raises(RuntimeError, match="at least 16 characters"):
        Gateway(tmp_path_factory.mktemp("tollgate-short-token"), mock, ADMIN_CONFIG, {"TOLLGATE_ADMIN_TOKEN": "short"})


# --- expires_at formats and the one key view ----------------------------------------------------------


def test_admin_rest_expires_at_takes_rfc3339_a_utc_date_or_unix_seconds(gateway):
    midnight = (datetime.now(timezone.utc) + timedelta(days=30)).replace(hour=0, minute=0, second=0, microsecond=0)
    secs = int(midnight.timestamp())
    later = secs + 86400
    for given, later_given in [
        (midnight.isoformat().replace("+00:00", "Z"), (midnight + timedelta(days=1)).isoformat()),
        (midnight.strftime("%Y-%m-%d"), (midnight + timedelta(days=1)).strftime("%Y-%m-%d")),
        (str(secs), str(later)),
        (secs, later),
    ]:
        created = admin(gateway, "POST", "/admin/keys", json={"tier": "pro", "expires_at": given})
        assert created.status_code == 201, (given, created.text)
        assert (created.json()["expires_at"], created.json()["status"]) == (secs, "active"), given
        patched = admin(gateway, "PATCH", f"/admin/keys/{created.json()['id']}", json={"expires_at": later_given})
        assert patched.status_code == 200, (later_given, patched.text)
        assert patched.json()["expires_at"] == later, later_given
        # The CLI reads it back as the same instant.
        assert listed_key(gateway, created.json()["id"])["expires_at"] == (midnight + timedelta(days=1)).isoformat()


def test_admin_rest_refuses_a_bad_expiry_naming_the_field_and_formats(gateway):
    key = admin(gateway, "POST", "/admin/keys", json={"tier": "pro"}).json()
    count = len(admin(gateway, "GET", "/admin/keys").json()["data"])
    for bad in ["tomorrow", "2099-02-30", "01/02/2099", "2099-01-01 00:00", ""]:
        for resp in (
            admin(gateway, "POST", "/admin/keys", json={"tier": "pro", "expires_at": bad}),
            admin(gateway, "PATCH", f"/admin/keys/{key['id']}", json={"expires_at": bad}),
        ):
            error = assert_error(resp, 400, "invalid_request_error")
            assert error["param"] == "expires_at", error
            for fmt in ("RFC 3339", "UTC date", "Unix seconds"):
                assert fmt in error["message"], error
    for bad in [1.5, True, ["2099-01-01"]]:
        resp = admin(gateway, "POST", "/admin/keys", json={"tier": "pro", "expires_at": bad})
        assert assert_error(resp, 400, "invalid_request_error")["param"] == "expires_at"
    assert len(admin(gateway, "GET", "/admin/keys").json()["data"]) == count, "a refused create made a key"
    assert listed_key(gateway, key["id"])["expires_at"] is None


def test_rest_and_cli_show_a_key_the_same_way(gateway):
    """One view of a key: REST `/admin` and `keys list --json` differ only in how times are written."""
    expires = (datetime.now(timezone.utc) + timedelta(days=3)).replace(microsecond=0)
    created = admin(
        gateway,
        "POST",
        "/admin/keys",
        json={"tier": "pro", "name": "one-view", "expires_at": int(expires.timestamp()), "rpm": 4, "balance_usd": "0.5", "monthly_budget_usd": "2"},
    )
    assert created.status_code == 201, created.text
    key_id = created.json()["id"]
    assert chat(gateway, created.json()["secret"], "spend a little").status_code == 200
    rest = next(k for k in admin(gateway, "GET", "/admin/keys").json()["data"] if k["id"] == key_id)
    cli = listed_key(gateway, key_id)
    assert cli["expires_at"] == expires.isoformat() and rest["expires_at"] == int(expires.timestamp())
    assert datetime.fromisoformat(cli["created_at"]).timestamp() == rest["created_at"]
    for times in ("created_at", "expires_at", "revoked_at"):
        del rest[times], cli[times]
    assert rest == cli
    assert (rest["requests_month"], rest["requests_total"], rest["rpm_limit"]) == (1, 1, 4)
    assert Decimal(rest["balance_usd"]) == Decimal("0.5") - Decimal(rest["spend_month_usd"]) > 0
    assert rest["balance_picodollars"] == int(Decimal(rest["balance_usd"]) * 10**12)
    assert rest["credited_total_usd"] == "0.5" and rest["written_off_picodollars"] == 0


# --- Admin gRPC -----------------------------------------------------------------------------------


def test_admin_grpc_needs_the_token_and_administers_keys(gateway, grpc_channel):
    stub = admin_pb2_grpc.AdminStub(grpc_channel)
    token = [("authorization", f"Bearer {ADMIN_TOKEN}")]
    for metadata in ([], [("authorization", "Bearer wrong-token-wrong-token")]):
        with pytest.raises(grpc.RpcError) as refused:
            stub.CreateKey(admin_pb2.CreateKeyRequest(tier="pro"), metadata=metadata, timeout=10)
        assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED

    issued = stub.CreateKey(admin_pb2.CreateKeyRequest(tier="pro", name="grpc", rpm=7), metadata=token, timeout=10)
    assert issued.secret.startswith(issued.key.prefix)
    assert (issued.key.rpm_limit, issued.key.monthly_limit, issued.key.status) == (7, 3000, "active")
    assert chat(gateway, issued.secret, "made over gRPC").status_code == 200

    listed = stub.ListKeys(admin_pb2.ListKeysRequest(), metadata=token, timeout=10)
    assert issued.key.id in [k.id for k in listed.keys]

    updated = stub.UpdateKey(admin_pb2.UpdateKeyRequest(key=issued.key.id, clear_rpm=True, monthly_requests=9), metadata=token, timeout=10)
    assert (updated.rpm_limit, updated.monthly_limit, updated.HasField("rpm_override")) == (30, 9, False)

    rotated = stub.RotateKey(admin_pb2.RotateKeyRequest(key=issued.key.id), metadata=token, timeout=10)
    assert rotated.key.id == issued.key.id and rotated.secret != issued.secret
    assert_error(chat(gateway, issued.secret, "old"), 401, "authentication_error")
    assert usage(gateway, rotated.secret).json()["monthly_requests"] == 1

    revoked = stub.RevokeKey(admin_pb2.RevokeKeyRequest(key=issued.key.id), metadata=token, timeout=10)
    assert revoked.status == "revoked" and revoked.HasField("revoked_at")
    assert_error(chat(gateway, rotated.secret, "revoked"), 401, "authentication_error")

    with pytest.raises(grpc.RpcError) as refused:
        stub.RevokeKey(admin_pb2.RevokeKeyRequest(key="sk-nothere"), metadata=token, timeout=10)
    assert refused.value.code() == grpc.StatusCode.NOT_FOUND


# --- money through the Admin API --------------------------------------------------------------------


def money_chat(gateway, secret: str, text: str, max_tokens: int | None = None) -> httpx.Response:
    body = {"model": "deepseek-chat", "messages": [{"role": "user", "content": text}]}
    if max_tokens is not None:
        body["max_tokens"] = max_tokens
    return httpx.post(f"{gateway.base_url}/chat/completions", headers=auth(secret), json=body, timeout=30)


def exact(resp: httpx.Response) -> dict:
    assert resp.status_code == 200, resp.text
    return json.loads(resp.text, parse_float=Decimal)


def test_admin_rest_gives_money_tops_up_and_sets_budgets(gateway):
    created = admin(gateway, "POST", "/admin/keys", json={"tier": "pro", "balance_usd": "0.001"})
    assert created.status_code == 201, created.text
    key = created.json()
    assert (key["balance_usd"], key["monthly_budget_usd"], key["spend_month_usd"]) == ("0.001", None, "0")
    secret = key["secret"]
    # A small worst case fits the balance; the model's whole max_output_tokens does not.
    first = exact(money_chat(gateway, secret, "cheap", max_tokens=10))
    assert_error(money_chat(gateway, secret, "dear"), 429, "insufficient_quota", "insufficient_quota")
    # Money is a decimal string, never a JSON number.
    bad = admin(gateway, "POST", f"/admin/keys/{key['id']}/topup", json={"amount_usd": 1})
    assert assert_error(bad, 400, "invalid_request_error")["param"] == "amount_usd"
    bad = admin(gateway, "POST", f"/admin/keys/{key['id']}/topup", json={"amount_usd": "0.0000000000001"})
    assert assert_error(bad, 400, "invalid_request_error")["param"] == "amount_usd"
    assert_error(admin(gateway, "POST", f"/admin/keys/{key['id']}/topup", token=None, json={"amount_usd": "1"}), 401, "authentication_error")

    topped = admin(gateway, "POST", f"/admin/keys/{key['id']}/topup", json={"amount_usd": "1"})
    assert topped.status_code == 200, topped.text
    second = exact(money_chat(gateway, secret, "dear"))
    spent = first["usage"]["cost"] + second["usage"]["cost"]
    listed = next(k for k in admin(gateway, "GET", "/admin/keys").json()["data"] if k["id"] == key["id"])
    assert Decimal(listed["balance_usd"]) == Decimal("1.001") - spent, listed
    assert Decimal(listed["spend_month_usd"]) == spent
    assert listed["reserved_usd"] == "0"

    # Dashboards read hard_limit_usd - this month's usage as what is left: the balance.
    sub = exact(httpx.get(f"{gateway.base_url}/dashboard/billing/subscription", headers=auth(secret), timeout=10))
    assert sub["hard_limit_usd"] == Decimal("1.001")
    assert Decimal(sub["balance_usd"]) == Decimal("1.001") - spent
    patched = admin(gateway, "PATCH", f"/admin/keys/{key['id']}", json={"monthly_budget_usd": "0.1"})
    assert patched.status_code == 200 and patched.json()["monthly_budget_usd"] == "0.1", patched.text
    sub = exact(httpx.get(f"{gateway.base_url}/dashboard/billing/subscription", headers=auth(secret), timeout=10))
    assert (sub["hard_limit_usd"], sub["monthly_budget_usd"]) == (Decimal("0.1"), "0.1")
    # The budget now refuses the model's whole worst case (384,000 output tokens at 0.44 USD per
    # 1M: 0.169 USD), which the balance would still cover.
    assert_error(money_chat(gateway, secret, "over budget"), 429, "insufficient_quota", "insufficient_quota")
    cleared = admin(gateway, "PATCH", f"/admin/keys/{key['id']}", json={"monthly_budget_usd": None})
    assert cleared.json()["monthly_budget_usd"] is None, cleared.text
    assert money_chat(gateway, secret, "budget removed").status_code == 200


def test_admin_grpc_top_up(gateway, grpc_channel):
    stub = admin_pb2_grpc.AdminStub(grpc_channel)
    token = [("authorization", f"Bearer {ADMIN_TOKEN}")]
    issued = stub.CreateKey(admin_pb2.CreateKeyRequest(tier="pro", balance_usd="0.000001"), metadata=token, timeout=10)
    assert issued.key.balance_usd == "0.000001"
    assert_error(money_chat(gateway, issued.secret, "poor", max_tokens=10), 429, "insufficient_quota")
    topped = stub.TopUp(admin_pb2.TopUpRequest(key=issued.key.prefix, amount_usd="0.25"), metadata=token, timeout=10)
    assert topped.balance_usd == "0.250001"
    assert money_chat(gateway, issued.secret, "rich", max_tokens=10).status_code == 200
    with pytest.raises(grpc.RpcError) as refused:
        stub.TopUp(admin_pb2.TopUpRequest(key=issued.key.id, amount_usd="-1"), metadata=token, timeout=10)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
