"""What the `/v1/messages` and `/v1/responses` end-to-end modules share: a gateway config with one
model of every provider kind (each on the mock flavour of its protocol), its prices, and the
ledger check that a request was billed exactly once at the serving model's prices."""

from __future__ import annotations

import base64
import sqlite3
from dataclasses import dataclass
from decimal import Decimal

from harness import ApiKey, Gateway

MILLION = Decimal(1_000_000)
PICO = Decimal(10**12)
# A 1x1 PNG.
PNG_B64 = base64.b64encode(
    bytes.fromhex(
        "89504e470d0a1a0a0000000d4948445200000001000000010806000000"
        "1f15c4890000000d49444154789c6360000002000154a24f5d0000000049454e44ae426082"
    )
).decode()


@dataclass(frozen=True)
class Served:
    """One model of one provider kind, with its prices (USD per 1M tokens)."""

    kind: str
    model: str
    input: str
    cached: str
    cache_write: str
    output: str
    thinks: bool
    vision: bool = True


# One model per provider kind. The first two are in the harness's own config.
SERVED = [
    Served("openai", "gpt-4.1-mini", "0.40", "0.10", "0.40", "1.60", thinks=False),
    Served("deepseek", "deepseek-v4-flash", "0.22", "0.005", "0.22", "0.44", thinks=True),
    Served("anthropic", "claude-test", "3", "0.30", "3.75", "15", thinks=True),
    Served("gemini", "gemini-2.5-flash", "0.30", "0.03", "0.30", "2.50", thinks=True),
    Served("minimax", "MiniMax-M3", "0.30", "0.03", "0.30", "1.20", thinks=True, vision=False),
    Served("openai-compatible", "compat-llm", "0.10", "0.10", "0.10", "0.20", thinks=False),
]
BY_KIND = {s.kind: s for s in SERVED}
KINDS = [s.kind for s in SERVED]


def config(mock_base: str) -> str:
    """Providers and models of the kinds the harness's config lacks."""
    return f"""
[[providers]]
name = "anthropic"
kind = "anthropic"
base_url = "{mock_base}/v1"
api_key_env = "MOCK_ANTHROPIC_KEY"

[[providers]]
name = "gemini"
kind = "gemini"
base_url = "{mock_base}/v1beta"
api_key_env = "MOCK_DEEPSEEK_KEY"

[[providers]]
name = "minimax"
kind = "minimax"
base_url = "{mock_base}/v1"
api_key_env = "MOCK_OPENAI_KEY"

[[providers]]
name = "local"
kind = "openai-compatible"
base_url = "{mock_base}/v1"
api_key_env = "MOCK_OPENAI_KEY"

[[models]]
id = "claude-test"
provider = "anthropic"
upstream_model = "claude-sonnet-4-5"
context_length = 200000
max_output_tokens = 64000
input_price = 3
cached_input_price = 0.30
cache_write_price = 3.75
output_price = 15
thinking = "optional"

[[models]]
id = "gemini-2.5-flash"
provider = "gemini"
upstream_model = "gemini-2.5-flash"
context_length = 1048576
max_output_tokens = 65536
input_price = 0.30
cached_input_price = 0.03
output_price = 2.50
thinking = "optional"
vision = true

[[models]]
id = "MiniMax-M3"
provider = "minimax"
upstream_model = "MiniMax-M3"
context_length = 204800
max_output_tokens = 131072
input_price = 0.30
cached_input_price = 0.03
output_price = 1.20
thinking = "optional"
vision = false

[[models]]
id = "compat-llm"
provider = "local"
upstream_model = "compat-llm"
context_length = 32768
max_output_tokens = 8192
input_price = 0.10
cached_input_price = 0.10
output_price = 0.20
"""


@dataclass(frozen=True)
class LedgerRow:
    model_id: str
    prompt_tokens: int
    cached_tokens: int
    cache_write_tokens: int
    completion_tokens: int
    cost_picodollars: int
    estimated: bool


def ledger(gateway: Gateway, key: ApiKey) -> list[LedgerRow]:
    """The key's ledger rows, oldest first."""
    db = sqlite3.connect(f"file:{gateway.db_path}?mode=ro", uri=True, timeout=10)
    try:
        rows = db.execute(
            "SELECT model_id, prompt_tokens, cached_prompt_tokens, cache_write_tokens, completion_tokens,"
            " cost_picodollars, estimated FROM usage_ledger WHERE key_id = ? ORDER BY id",
            (key.key_id,),
        ).fetchall()
    finally:
        db.close()
    return [LedgerRow(*r[:6], bool(r[6])) for r in rows]


def price_picodollars(served: Served, prompt: int, cached: int, written: int, completion: int) -> int:
    """The exact cost of a request's tokens at `served`'s prices."""
    usd = (
        (prompt - cached - written) * Decimal(served.input)
        + cached * Decimal(served.cached)
        + written * Decimal(served.cache_write)
        + completion * Decimal(served.output)
    ) / MILLION
    exact = usd * PICO
    assert exact == exact.to_integral_value()
    return int(exact)


def pico(cost) -> int:
    exact = Decimal(str(cost)) * PICO
    assert exact == exact.to_integral_value(), cost
    return int(exact)


def assert_billed_once(
    gateway: Gateway, key: ApiKey, served: Served, *, prompt: int, cached: int, written: int, completion: int, cost
) -> None:
    """The key's ledger holds exactly one row, for `served`'s model, with these tokens, at its
    prices, and `cost` (the decimal USD the client was told) is that row's cost."""
    rows = ledger(gateway, key)
    assert len(rows) == 1, rows
    row = rows[0]
    assert row.model_id == served.model
    assert not row.estimated
    assert (row.prompt_tokens, row.cached_tokens, row.cache_write_tokens, row.completion_tokens) == (
        prompt,
        cached,
        written,
        completion,
    )
    assert row.cost_picodollars == price_picodollars(served, prompt, cached, written, completion)
    assert pico(cost) == row.cost_picodollars


def upstream_body(mock, marker: str) -> dict:
    """The one upstream request (of any protocol) that mentions `marker`."""
    return mock.single_request_with(marker)["body"]
