"""The `tollgate keys` CLI against the running gateway's database: create prints the secret last,
list shows the key, revoke makes the running gateway refuse it within a second or so."""

from __future__ import annotations

import re
import uuid

import grpc
import httpx
from tollgate.v1 import billing_pb2, billing_pb2_grpc

from harness import auth, key_line_in_list, make_client, wait_until

REVOCATION_DEADLINE_SECS = 1.5  # the contract: ~1 s at most, plus a little slack for a loaded machine


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
