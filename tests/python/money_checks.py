"""Money helpers shared by the billing end-to-end tests: exact picodollars from the decimal
`usage.cost`, the `keys list --json` entry of a key, and requests fired at the same instant (and
held upstream until every admission has been decided)."""

from __future__ import annotations

import json
import threading
import uuid
from concurrent.futures import Future, ThreadPoolExecutor
from decimal import Decimal

import httpx

from harness import ApiKey, Gateway, MockUpstream

PICO = Decimal(10**12)
# deepseek-chat (deepseek-v4-flash, thinking off) costs 0.44 USD per 1M output tokens, so one
# request capped at MAX_TOKENS output tokens reserves about WORST_OUTPUT picodollars plus a small
# prompt bound (a few hundred tokens at 0.22: under 5% of it for the short prompts used here).
MAX_TOKENS = 2000
WORST_OUTPUT = MAX_TOKENS * 440_000


def nonce() -> str:
    return uuid.uuid4().hex[:12]


def pico(cost: Decimal | int) -> int:
    exact = Decimal(cost) * PICO
    assert exact == exact.to_integral_value(), cost
    return int(exact)


def key_listing(gateway: Gateway, key: ApiKey) -> dict:
    """The key's object in `tollgate keys list --json`."""
    out = gateway.cli("keys", "list", "--json").stdout
    for line in out.splitlines():
        obj = json.loads(line)
        if obj["id"] == key.key_id:
            return obj
    raise AssertionError(f"key {key.key_id} not in keys list --json:\n{out}")


def submit_together(pool: ThreadPoolExecutor, n: int, send) -> list[Future]:
    """Submits `send(i)` for i in 0..n to `pool` (of at least n threads), released at the same
    instant."""
    barrier = threading.Barrier(n, timeout=30)

    def one(i: int):
        barrier.wait()
        return send(i)

    return [pool.submit(one, i) for i in range(n)]


def fire_together(n: int, send) -> list[httpx.Response]:
    """Runs `send(i)` for i in 0..n from n threads released at the same instant."""
    with ThreadPoolExecutor(max_workers=n) as pool:
        return [f.result() for f in submit_together(pool, n, send)]


def fire_held(mock: MockUpstream, hold: str, n: int, send) -> list[httpx.Response]:
    """`fire_together` where each prompt says `[hold=<hold>]`: the requests the gateway admits
    wait at the mock until every one of the n has either been answered by the gateway (refused)
    or is waiting there; then all are released. So every admission is decided while the admitted
    requests still hold their reservations."""
    with ThreadPoolExecutor(max_workers=n) as pool:
        futures = submit_together(pool, n, send)
        try:
            mock.wait_held(
                hold,
                lambda status: status["waiting"] + sum(f.done() for f in futures) == n,
                what=f"all {n} requests refused or held upstream",
            )
        finally:
            mock.release(hold)
        return [f.result() for f in futures]


def cost_of(resp: httpx.Response) -> int:
    return pico(json.loads(resp.text, parse_float=Decimal)["usage"]["cost"])
