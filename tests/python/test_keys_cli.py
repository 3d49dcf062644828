"""The `tollgate` CLI against the running gateway's database: create prints the secret last,
list shows the key, revoke makes the running gateway refuse it within a second or so; `--config`
before or after the subcommand; `migrate`; every `keys update` flag and `keys budget`, setting and
clearing; `--expires-at` in each of its formats, and a bad one refused. This module's gateway has
no admin token: the CLI needs none."""

from __future__ import annotations

import os
import re
import sqlite3
import subprocess
import uuid
from datetime import datetime, timedelta, timezone

import grpc
import httpx
from tollgate.v1 import billing_pb2, billing_pb2_grpc

from money_checks import key_listing

from harness import CLI_TIMEOUT_SECS, TIERS, ApiKey, auth, gateway_config, key_line_in_list, make_client, tollgate_bin, wait_until

REVOCATION_DEADLINE_SECS = 1.5  # the contract: ~1 s at most, plus a little slack for a loaded machine
# A change made by the CLI (another process) reaches the gateway within server.key_refresh_ms (1 s).
REFRESH_DEADLINE_SECS = 1.5


def status_of(gateway, secret: str) -> int:
    return httpx.get(f"{gateway.base_url}/dashboard/billing/usage", headers=auth(secret), timeout=10).status_code


def test_create_prints_the_secret_last(gateway):
    done = gateway.cli("keys", "create", "--tier", "basic", "--name", "cli-create")
    lines = [line for line in done.stdout.splitlines() if line.strip()]
    assert re.fullmatch(r"sk-[A-Za-z0-9_\-]{20,}", lines[-1].strip()), done.stdout
    # The secret appears once, on its own line (not repeated in the informative lines).
    assert done.stdout.count(lines[-1].strip()) == 1


def test_created_keys_are_distinct_and_usable(gateway):
    a, b = gateway.create_key("basic"), gateway.create_key("basic")
    assert a.secret != b.secret
    resp = make_client(gateway, a).chat.completions.create(
        model="deepseek-chat", messages=[{"role": "user", "content": "fresh key works"}]
    )
    assert resp.choices[0].message.content == "Echo: fresh key works"


def test_list_shows_the_key_with_its_tier_and_name(gateway):
    name = f"listed-{uuid.uuid4().hex[:8]}"
    key = gateway.create_key("pro", name=name)
    listing = gateway.list_keys()
    line = key_line_in_list(listing, key.secret)
    assert line is not None, f"no line of `keys list` shows the key's prefix:\n{listing}"
    assert "pro" in line
    assert name in line
    assert key.secret not in listing, "`keys list` must not print whole secrets"
    if key.key_id:
        assert key.key_id in line


def test_unknown_tier_is_refused(gateway):
    done = gateway.cli("keys", "create", "--tier", "no-such-tier", check=False)
    assert done.returncode != 0
    assert not any(line.strip().startswith("sk-") for line in done.stdout.splitlines())


def test_revoked_key_is_refused_by_the_running_gateway(gateway, grpc_channel):
    key = gateway.create_key("enterprise")
    client = make_client(gateway, key)
    assert client.chat.completions.create(
        model="deepseek-chat", messages=[{"role": "user", "content": "before revoke"}]
    ).choices[0].message.content == "Echo: before revoke"
    # Warm every cache the gateway may keep for this key.
    assert status_of(gateway, key.secret) == 200
    line_before = key_line_in_list(gateway.list_keys(), key.secret)

    gateway.revoke_key(key)
    wait_until(lambda: status_of(gateway, key.secret) == 401, REVOCATION_DEADLINE_SECS, what="REST refusing the revoked key")

    r = httpx.post(
        f"{gateway.base_url}/chat/completions",
        headers=auth(key),
        json={"model": "deepseek-chat", "messages": [{"role": "user", "content": "after revoke"}]},
        timeout=10,
    )
    assert r.status_code == 401
    assert r.json()["error"]["type"] == "authentication_error"

    stub = billing_pb2_grpc.BillingStub(grpc_channel)
    try:
        stub.GetUsage(billing_pb2.GetUsageRequest(), metadata=[("authorization", f"Bearer {key.secret}")], timeout=10)
        raise AssertionError("gRPC accepted a revoked key")
    except grpc.RpcError as err:
        assert err.code() == grpc.StatusCode.UNAUTHENTICATED

    line = key_line_in_list(gateway.list_keys(), key.secret)
    assert line is not None and line != line_before, f"list does not show the revocation: {line}"
    assert re.search(r"\b(revoked|true|yes)\b", line, re.IGNORECASE), f"list does not show the key as revoked: {line}"
    assert not re.search(r"revoked\s*[=:]\s*(false|no)\b", line, re.IGNORECASE), line
    client.close()


# --- one global --config -----------------------------------------------------------------------


def run(argv: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(tollgate_bin()), *argv], stdin=subprocess.DEVNULL, capture_output=True, text=True, env=env, timeout=CLI_TIMEOUT_SECS
    )


def test_config_goes_before_or_after_the_subcommand_or_in_the_environment(gateway):
    key = gateway.create_key("basic")
    config = str(gateway.config_path)
    env = {k: v for k, v in gateway.env.items() if k != "TOLLGATE_CONFIG"}
    for argv, extra_env in [
        (["--config", config, "keys", "list"], {}),
        (["keys", "--config", config, "list"], {}),
        (["keys", "list", "--config", config], {}),
        (["keys", "list"], {"TOLLGATE_CONFIG": config}),
    ]:
        done = run(argv, {**env, **extra_env})
        assert done.returncode == 0, (argv, done.stderr)
        assert key_line_in_list(done.stdout, key.secret) is not None, (argv, done.stdout)
    missing = run(["keys", "list"], env)
    assert missing.returncode != 0
    assert "--config" in missing.stderr, missing.stderr


# --- migrate --------------------------------------------------------------------------------------


def tables(db) -> set[str]:
    with sqlite3.connect(db) as conn:
        return {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}


def test_migrate_creates_the_schema_once_and_the_cli_works_on_it(mock, tmp_path):
    (tmp_path / "tollgate.toml").write_text(gateway_config(tmp_path, mock.port))
    db = tmp_path / "tollgate.db"
    env = {k: v for k, v in os.environ.items() if not k.startswith("TOLLGATE")}
    assert not db.exists()
    first = run(["migrate", "--config", str(tmp_path / "tollgate.toml")], env)
    assert first.returncode == 0, first.stderr
    assert first.stdout.strip() == "database is up to date"
    assert {"api_keys", "key_accounts", "usage_ledger", "reservations"} <= tables(db)
    with sqlite3.connect(db) as conn:
        applied = conn.execute("SELECT COUNT(*) FROM seaql_migrations").fetchone()[0]
    assert applied > 0
    # Idempotent: a second run applies nothing and says the same.
    again = run(["--config", str(tmp_path / "tollgate.toml"), "migrate"], env)
    assert again.returncode == 0 and again.stdout == first.stdout, again.stderr
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT COUNT(*) FROM seaql_migrations").fetchone()[0] == applied
    listed = run(["keys", "list", "--json", "--config", str(tmp_path / "tollgate.toml")], env)
    assert listed.returncode == 0 and listed.stdout == "", listed.stderr
    # A config that does not load is an error, not a fresh database somewhere else.
    broken = tmp_path / "broken.toml"
    broken.write_text("[database]\nurl = 5\n")
    done = run(["migrate", "--config", str(broken)], env)
    assert done.returncode != 0 and done.stderr.startswith("error:"), done.stderr


def test_migrate_beside_a_running_gateway_changes_nothing(gateway):
    key = gateway.create_key("basic")
    done = run(["migrate", "--config", str(gateway.config_path)], gateway.env)
    assert done.returncode == 0 and done.stdout.strip() == "database is up to date", done.stderr
    assert status_of(gateway, key.secret) == 200
    assert key_listing(gateway, key)["status"] == "active"


# --- keys update and keys budget -------------------------------------------------------------------


def usage(gateway, secret: str) -> dict:
    resp = httpx.get(f"{gateway.base_url}/dashboard/billing/usage", headers=auth(secret), timeout=10)
    assert resp.status_code == 200, resp.text
    return resp.json()


def update(gateway, key: ApiKey, *flags: str) -> dict:
    done = gateway.cli("keys", "update", key.key_id, *flags)
    assert done.stdout.startswith(f"updated key {key.key_id} ("), done.stdout
    return key_listing(gateway, key)


def test_update_sets_and_clears_each_field(gateway):
    key = gateway.create_key("pro", "before")
    pro_rpm, pro_monthly = TIERS["pro"]
    basic_rpm, basic_monthly = TIERS["basic"]

    assert update(gateway, key, "--name", "after")["name"] == "after"

    entry = update(gateway, key, "--rpm", "3")
    assert (entry["rpm_override"], entry["rpm_limit"]) == (3, 3)
    wait_until(lambda: usage(gateway, key.secret)["rpm_limit"] == 3, REFRESH_DEADLINE_SECS, what="the gateway applies --rpm")
    entry = update(gateway, key, "--tier-rpm")
    assert (entry["rpm_override"], entry["rpm_limit"]) == (None, pro_rpm)
    wait_until(lambda: usage(gateway, key.secret)["rpm_limit"] == pro_rpm, REFRESH_DEADLINE_SECS, what="the gateway applies --tier-rpm")

    entry = update(gateway, key, "--monthly-requests", "7")
    assert (entry["monthly_requests_override"], entry["monthly_limit"]) == (7, 7)
    wait_until(lambda: usage(gateway, key.secret)["monthly_limit"] == 7, REFRESH_DEADLINE_SECS, what="the gateway applies --monthly-requests")
    entry = update(gateway, key, "--tier-monthly-requests")
    assert (entry["monthly_requests_override"], entry["monthly_limit"]) == (None, pro_monthly)

    entry = update(gateway, key, "--tier", "basic")
    assert (entry["tier"], entry["rpm_limit"], entry["monthly_limit"]) == ("basic", basic_rpm, basic_monthly)
    wait_until(lambda: usage(gateway, key.secret)["tier"] == "basic", REFRESH_DEADLINE_SECS, what="the gateway applies --tier")

    next_year = (datetime.now(timezone.utc) + timedelta(days=365)).replace(hour=0, minute=0, second=0, microsecond=0)
    entry = update(gateway, key, "--expires-at", next_year.strftime("%Y-%m-%d"))
    assert entry["expires_at"] == next_year.isoformat()
    assert entry["status"] == "active"
    assert update(gateway, key, "--no-expiry")["expires_at"] is None

    # Several at once, and nothing else moves.
    entry = update(gateway, key, "--name", "both", "--rpm", "4", "--monthly-requests", "9")
    assert (entry["name"], entry["rpm_override"], entry["monthly_requests_override"], entry["tier"]) == ("both", 4, 9, "basic")
    assert status_of(gateway, key.secret) == 200


def test_update_refuses_what_it_cannot_do(gateway):
    key = gateway.create_key("pro")
    before = key_listing(gateway, key)
    for flags, says in [
        ([], "nothing to update"),
        (["--rpm", "3", "--tier-rpm"], "--tier-rpm"),
        (["--monthly-requests", "3", "--tier-monthly-requests"], "--tier-monthly-requests"),
        (["--expires-at", "2099-01-01", "--no-expiry"], "--no-expiry"),
        (["--rpm", "0"], "--rpm"),
        (["--tier", "gold"], "unknown tier"),
    ]:
        done = gateway.cli("keys", "update", key.key_id, *flags, check=False)
        assert done.returncode != 0, (flags, done.stdout)
        assert says in done.stderr, (flags, done.stderr)
    assert key_listing(gateway, key) == before
    done = gateway.cli("keys", "update", "no-such-key", "--name", "x", check=False)
    assert done.returncode != 0 and "no API key" in done.stderr, done.stderr


def chat(gateway, secret: str, text: str) -> httpx.Response:
    return httpx.post(
        f"{gateway.base_url}/chat/completions",
        headers=auth(secret),
        json={"model": "deepseek-chat", "messages": [{"role": "user", "content": text}]},
        timeout=30,
    )


def test_budget_sets_and_clears_a_monthly_budget(gateway):
    key = gateway.create_key("enterprise")
    assert chat(gateway, key.secret, "unbudgeted").status_code == 200

    # Far below the worst case of one request (the model's whole max output at its price).
    done = gateway.cli("keys", "budget", key.key_id, "0.0001")
    assert done.stdout.strip() == f"key {key.key_id} ({key.secret[:12]}): monthly budget $0.0001"
    entry = key_listing(gateway, key)
    assert (entry["monthly_budget_usd"], entry["monthly_budget_picodollars"]) == ("0.0001", 100_000_000)
    assert entry["balance_picodollars"] is None, "a budget is not a balance"

    def refused() -> bool:
        r = chat(gateway, key.secret, "over budget")
        return r.status_code == 429 and r.json()["error"]["code"] == "insufficient_quota"

    wait_until(refused, REFRESH_DEADLINE_SECS, what="the gateway applies the budget")

    done = gateway.cli("keys", "budget", key.key_id, "none")
    assert done.stdout.strip() == f"key {key.key_id} ({key.secret[:12]}): no monthly budget"
    entry = key_listing(gateway, key)
    assert (entry["monthly_budget_usd"], entry["monthly_budget_picodollars"]) == (None, None)
    wait_until(lambda: chat(gateway, key.secret, "budget gone").status_code == 200, REFRESH_DEADLINE_SECS, what="the gateway drops the budget")

    # `NONE` is the same word; amounts are exact decimals named as the argument.
    assert "no monthly budget" in gateway.cli("keys", "budget", key.key_id, "NONE").stdout
    for bad, says in [("ten", "USD: "), ("0.0000000000001", "12 decimal places"), ("1e3", "USD: ")]:
        done = gateway.cli("keys", "budget", key.key_id, bad, check=False)
        assert done.returncode != 0 and says in done.stderr, (bad, done.stderr)
    done = gateway.cli("keys", "budget", "no-such-key", "1", check=False)
    assert done.returncode != 0 and "no API key" in done.stderr, done.stderr
    assert key_listing(gateway, key)["monthly_budget_usd"] is None


# --- --expires-at formats ---------------------------------------------------------------------------


def expiry_formats(at: datetime) -> list[str]:
    """The same instant (a UTC midnight) in every format the CLI and REST accept."""
    return [at.isoformat().replace("+00:00", "Z"), at.strftime("%Y-%m-%d"), str(int(at.timestamp()))]


def test_expires_at_takes_rfc3339_a_utc_date_or_unix_seconds(gateway):
    midnight = (datetime.now(timezone.utc) + timedelta(days=30)).replace(hour=0, minute=0, second=0, microsecond=0)
    later = midnight + timedelta(days=1)
    for text, later_text in zip(expiry_formats(midnight), expiry_formats(later)):
        key = gateway.create_key("basic", None, "--expires-at", text)
        entry = key_listing(gateway, key)
        assert (entry["expires_at"], entry["status"]) == (midnight.isoformat(), "active"), text
        assert status_of(gateway, key.secret) == 200
        # `keys update` reads the same formats.
        assert update(gateway, key, "--expires-at", later_text)["expires_at"] == later.isoformat(), later_text
    # An offset other than Z is the instant it names.
    key = gateway.create_key("basic", None, "--expires-at", (midnight + timedelta(hours=2)).astimezone(timezone(timedelta(hours=2))).isoformat())
    assert key_listing(gateway, key)["expires_at"] == (midnight + timedelta(hours=2)).isoformat()


def test_a_bad_expiry_is_refused_naming_the_formats(gateway):
    for command in (["keys", "create", "--tier", "basic"], ["keys", "update", gateway.create_key("basic").key_id]):
        for bad in ["tomorrow", "2099-02-30", "01/02/2099", "2099-01-01 00:00"]:
            done = gateway.cli(*command, "--expires-at", bad, check=False)
            assert done.returncode != 0, (command, bad, done.stdout)
            assert not any(line.startswith("sk-") for line in done.stdout.splitlines())
            assert done.stderr.startswith("error:"), done.stderr
            assert "--expires-at" in done.stderr and bad in done.stderr, done.stderr
            for fmt in ("RFC 3339", "UTC date", "Unix seconds"):
                assert fmt in done.stderr, done.stderr
    # Well-formed but in the past: refused at creation by the Admin service, named by the flag.
    done = gateway.cli("keys", "create", "--tier", "basic", "--expires-at", "1", check=False)
    assert done.returncode != 0 and "--expires-at: expires_at must be in the future" in done.stderr, done.stderr
