"""Routing (issue 10), end to end against mock deployments that fail in patterns (the mock's base
URL path segments `status=`, `retry_after=`, `fail_first=`): a model with a dead deployment still
answers every request and the dead one gets no more than its cooldown allows; a model whose
deployments are all down is served by its first fallback the tier allows, billed at that
fallback's prices, with the served model and deployment in headers and the ledger; a 429 with
`Retry-After: 1` is waited for, one past the deadline is a 504 at once; a stream failing after its
first chunk is not retried. The figures (success rate, added latency of a retry, requests reaching
a cooled-down deployment) are printed (run with `-s`)."""

from __future__ import annotations

import statistics
import time

import httpx
import pytest

from harness import Gateway, auth, nonce, sqlite_rows, user

TIMEOUT = 30

CONFIG = """
[routing]
max_attempts = 3
backoff_base_ms = 20
backoff_max_ms = 200
cooldown_failures = 2
cooldown_window_secs = 60
cooldown_secs = 120

[[providers]]
name = "rt-ok"
kind = "openai"
base_url = "{mock}/ok/v1"
api_key_env = "MOCK_OPENAI_KEY"

[[providers]]
name = "rt-down"
kind = "openai"
base_url = "{mock}/status=503/v1"
api_key_env = "MOCK_OPENAI_KEY"

[[providers]]
name = "rt-down-too"
kind = "openai"
base_url = "{mock}/status=502/v1"
api_key_env = "MOCK_OPENAI_KEY"

[[providers]]
name = "rt-limited-once"
kind = "openai"
base_url = "{mock}/status=429/retry_after=1/fail_first=1/v1"
api_key_env = "MOCK_OPENAI_KEY"

[[providers]]
name = "rt-limited-short-deadline"
kind = "openai"
base_url = "{mock}/status=429/retry_after=4/v1"
api_key_env = "MOCK_OPENAI_KEY"
request_timeout_secs = 2

[[models]]
id = "rt-split"
upstream_model = "gpt-4.1-mini"
context_length = 1047576
max_output_tokens = 32768
input_price = 1
output_price = 1
deployments = [
  {{ name = "healthy", provider = "rt-ok" }},
  {{ name = "dead", provider = "rt-down" }},
]

[[models]]
id = "rt-primary"
upstream_model = "gpt-4.1-mini"
context_length = 1047576
max_output_tokens = 32768
input_price = 10
output_price = 10
fallbacks = ["rt-forbidden", "rt-cheap"]
deployments = [
  {{ name = "east", provider = "rt-down" }},
  {{ name = "west", provider = "rt-down-too" }},
]

[[models]]
id = "rt-forbidden"
provider = "rt-ok"
upstream_model = "gpt-4.1-mini"
context_length = 1047576
max_output_tokens = 32768
input_price = 100
output_price = 100

[[models]]
id = "rt-cheap"
upstream_model = "gpt-4.1-mini"
context_length = 1047576
max_output_tokens = 32768
input_price = 9
output_price = 9
deployments = [{{ name = "cheap-eu", provider = "rt-ok", input_price = 1, output_price = 2 }}]

[[models]]
id = "rt-wait"
provider = "rt-limited-once"
upstream_model = "gpt-4.1-mini"
context_length = 1047576
max_output_tokens = 32768
input_price = 1
output_price = 1

[[models]]
id = "rt-deadline"
provider = "rt-limited-short-deadline"
upstream_model = "gpt-4.1-mini"
context_length = 1047576
max_output_tokens = 32768
input_price = 1
output_price = 1

[[tiers]]
name = "routing_limited"
rpm = 1000
monthly_requests = 100000
models = ["rt-split", "rt-primary", "rt-cheap", "rt-wait", "rt-deadline"]
"""


@pytest.fixture(scope="module")
def gateway(mock, tmp_path_factory):
    gw = Gateway(tmp_path_factory.mktemp("tollgate-routing"), mock, extra_config=CONFIG.format(mock=mock.base_url))
    yield gw
    gw.stop()


@pytest.fixture(scope="module")
def key(gateway):
    return gateway.create_key("routing_limited")


def chat(gateway: Gateway, key, model: str, text: str, **extra) -> httpx.Response:
    body = {"model": model, "messages": user(text), **extra}
    return httpx.post(f"{gateway.base_url}/chat/completions", headers=auth(key), json=body, timeout=TIMEOUT)


def ledger(gateway: Gateway, request_id: str) -> tuple:
    [row] = sqlite_rows(
        gateway.tmp_dir / "tollgate.db",
        "SELECT requested_model, model_id, deployment, attempts, prompt_tokens, completion_tokens, cost_picodollars,"
        " outcome FROM usage_ledger WHERE request_id = ?",
        request_id,
    )
    return row


def at_path(mock, marker: str, path_part: str) -> int:
    return sum(1 for r in mock.requests_with(marker) if path_part in r["path"])


def test_one_dead_deployment_of_two_costs_no_request(gateway, mock, key):
    marker = nonce()
    latencies: dict[int, list[float]] = {1: [], 2: []}
    ok = 0
    total = 40
    for i in range(total):
        started = time.monotonic()
        resp = chat(gateway, key, "rt-split", f"{marker} {i}")
        elapsed = time.monotonic() - started
        assert resp.status_code == 200, resp.text
        ok += 1
        assert resp.json()["model"] == "rt-split"
        assert resp.headers["x-tollgate-served-model"] == "rt-split"
        assert resp.headers["x-tollgate-deployment"] == "healthy"
        _, model_id, deployment, attempts, *_ , outcome = ledger(gateway, resp.headers["x-request-id"])
        assert (model_id, deployment, outcome) == ("rt-split", "healthy", "succeeded")
        assert attempts in (1, 2)
        latencies[attempts].append(elapsed)
    dead = at_path(mock, marker, "/status=503/")
    healthy = at_path(mock, marker, "/ok/")
    assert healthy == total
    # Two failures within the window cool it down for longer than this test runs: no probe yet.
    assert dead <= 2, dead
    assert len(latencies[2]) == dead
    added = (
        statistics.median(latencies[2]) - statistics.median(latencies[1]) if latencies[2] else float("nan")
    )
    print(
        f"\nrouting figures: success {ok}/{total} with one of two deployments dead; "
        f"requests reaching the dead deployment {dead} (cooldown after 2); "
        f"median added latency of a retry {added * 1000:.1f} ms"
    )


def test_fallback_serves_at_its_own_prices_skipping_what_the_tier_forbids(gateway, mock, key):
    marker = nonce()
    resp = chat(gateway, key, "rt-primary", f"{marker} hello there")
    assert resp.status_code == 200, resp.text
    assert resp.json()["model"] == "rt-primary"
    assert resp.headers["x-tollgate-served-model"] == "rt-cheap"
    assert resp.headers["x-tollgate-deployment"] == "cheap-eu"
    requested, model_id, deployment, attempts, prompt, completion, cost, outcome = ledger(
        gateway, resp.headers["x-request-id"]
    )
    assert (requested, model_id, deployment, outcome) == ("rt-primary", "rt-cheap", "cheap-eu", "succeeded")
    # Both deployments of the primary failed, then the fallback answered.
    assert attempts == 3
    # The deployment's own prices: 1 USD / 2 USD per million tokens, 1 token at P micro-USD = P picodollars.
    assert cost == prompt * 1_000_000 + completion * 2_000_000
    usage = resp.json()["usage"]
    assert (usage["prompt_tokens"], usage["completion_tokens"]) == (prompt, completion)
    # The tier forbids rt-forbidden: it was never called (it would answer at /ok/ with its own model).
    assert at_path(mock, marker, "/ok/") == 1
    assert at_path(mock, marker, "/status=503/") + at_path(mock, marker, "/status=502/") == 2


def test_request_models_are_consumed_not_forwarded(gateway, mock, key):
    marker = nonce()
    resp = chat(gateway, key, "rt-primary", f"{marker} hi", models=["rt-cheap"])
    assert resp.status_code == 200, resp.text
    assert resp.headers["x-tollgate-served-model"] == "rt-cheap"
    for request in mock.requests_with(marker):
        assert "models" not in request["body"]


def test_a_retry_after_of_one_second_is_waited_for(gateway, mock, key):
    marker = nonce()
    started = time.monotonic()
    resp = chat(gateway, key, "rt-wait", f"{marker} wait")
    elapsed = time.monotonic() - started
    assert resp.status_code == 200, resp.text
    assert elapsed >= 1.0, elapsed
    _, _, _, attempts, *_ = ledger(gateway, resp.headers["x-request-id"])
    assert attempts == 2
    assert len(mock.requests_with(marker)) == 2


def test_a_retry_after_past_the_deadline_is_a_504_at_once(gateway, mock, key):
    marker = nonce()
    started = time.monotonic()
    resp = chat(gateway, key, "rt-deadline", f"{marker} no time")
    elapsed = time.monotonic() - started
    assert resp.status_code == 504, resp.text
    assert elapsed < 1.5, elapsed
    assert len(mock.requests_with(marker)) == 1
    # An error answer names no request id: the model's only row is this request's.
    [row] = sqlite_rows(
        gateway.tmp_dir / "tollgate.db",
        "SELECT attempts, prompt_tokens, completion_tokens, cost_picodollars, outcome FROM usage_ledger"
        " WHERE requested_model = 'rt-deadline'",
    )
    assert row == (1, 0, 0, 0, "failed")


def test_a_stream_failing_after_its_first_chunk_is_not_retried(gateway, mock, key):
    marker = nonce()
    body = {"model": "rt-split", "messages": user(f"{marker} one two three [stream_error]"), "stream": True}
    events = []
    with httpx.stream(
        "POST", f"{gateway.base_url}/chat/completions", headers=auth(key), json=body, timeout=TIMEOUT
    ) as resp:
        assert resp.status_code == 200
        for line in resp.iter_lines():
            if line.startswith("data: "):
                events.append(line[len("data: "):])
    assert any('"error"' in e for e in events), events
    assert at_path(mock, marker, "/ok/") == 1
