"""Money helpers shared by the billing end-to-end tests: exact picodollars from the decimal
`usage.cost`, the `keys list --json` entry of a key, and requests fired at the same instant."""

from __future__ import annotations

import json
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal

import httpx

from harness import ApiKey, Gateway

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


def fire_together(n: int, send) -> list[httpx.Response]:
    """Runs `send(i)` for i in 0..n from n threads released at the same instant."""
    barrier = threading.Barrier(n, timeout=30)

    def one(i: int):
        barrier.wait()
        return send(i)

    with ThreadPoolExecutor(max_workers=n) as pool:
        return list(pool.map(one, range(n)))


def cost_of(resp: httpx.Response) -> int:
    return pico(json.loads(resp.text, parse_float=Decimal)["usage"]["cost"])
