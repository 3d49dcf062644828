"""Routing (issue 10), end to end against mock deployments that fail in patterns (the mock's base
URL path segments `status=`, `retry_after=`, `fail_first=`): a model with a dead deployment still
answers every request and the dead one gets no more than its cooldown allows; a model whose
deployments are all down is served by its first fallback the tier allows, billed at that
fallback's prices, with the served model and deployment in headers and the ledger; a 429 with
`Retry-After: 1` is waited for, one past the deadline is a 504 at once; a stream failing after its
first chunk is not retried. A deployment cooled down by 503s shows as `cooling_down` at
`GET /admin/deployments` (admin token only) and as 0 in `tollgate_deployment_healthy`. A prompt too
long for its model goes to the model's context-window fallback, billed at that model's prices; a
prepaid balance must cover the dearest candidate, not only the requested model. Two replicas on
PostgreSQL and Redis share a cooldown: once replica A cooled a deployment down, requests through
replica B do not reach it. The figures (success rate, added latency of a retry, requests reaching
a cooled-down deployment, also across replicas) are printed (run with `-s`)."""

from __future__ import annotations

import statistics
import time
import uuid

import httpx
import pytest

import datastores
from harness import Gateway, auth, nonce, sqlite_rows, user, wait_until
from prometheus_text import scrape, total

TIMEOUT = 30
ADMIN_TOKEN = f"e2e-admin-{uuid.uuid4().hex}"

CONFIG = """
[routing]
max_attempts = 3
backoff_base_ms = 20
backoff_max_ms = 200
cooldown_failures = 2
cooldown_window_secs = 60
cooldown_secs = 120
shared_refresh_ms = 100

[admin]
token_env = "TOLLGATE_ADMIN_TOKEN"

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

[[models]]
id = "rt-watch"
upstream_model = "gpt-4.1-mini"
context_length = 1047576
max_output_tokens = 32768
input_price = 1
output_price = 1
deployments = [
  {{ name = "up", provider = "rt-ok" }},
  {{ name = "down", provider = "rt-down" }},
]

[[models]]
id = "rt-small"
provider = "rt-ok"
upstream_model = "gpt-4.1-mini"
context_length = 100
max_output_tokens = 50
input_price = 1
output_price = 1
context_window_fallback = "rt-large"

[[models]]
id = "rt-large"
provider = "rt-ok"
upstream_model = "gpt-4.1"
context_length = 1047576
max_output_tokens = 32768
input_price = 3
output_price = 5

[[models]]
id = "rt-budget"
provider = "rt-ok"
upstream_model = "gpt-4.1-mini"
context_length = 1047576
max_output_tokens = 32768
input_price = 1
output_price = 1
fallbacks = ["rt-dear"]

[[models]]
id = "rt-budget-alone"
provider = "rt-ok"
upstream_model = "gpt-4.1-mini"
context_length = 1047576
max_output_tokens = 32768
input_price = 1
output_price = 1

[[models]]
id = "rt-dear"
provider = "rt-ok"
upstream_model = "gpt-4.1"
context_length = 1047576
max_output_tokens = 32768
input_price = 1000
output_price = 1000

[[tiers]]
name = "routing_limited"
rpm = 1000
monthly_requests = 100000
models = ["rt-split", "rt-primary", "rt-cheap", "rt-wait", "rt-deadline", "rt-watch", "rt-small", "rt-large",
          "rt-budget", "rt-budget-alone", "rt-dear"]
"""


@pytest.fixture(scope="module")
def gateway(mock, tmp_path_factory):
    gw = Gateway(
        tmp_path_factory.mktemp("tollgate-routing"),
        mock,
        extra_config=CONFIG.format(mock=mock.base_url),
        env={"TOLLGATE_ADMIN_TOKEN": ADMIN_TOKEN},
    )
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


def deployments(gateway: Gateway, token: str | None = ADMIN_TOKEN) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.get(f"{gateway.http_base}/admin/deployments", headers=headers, timeout=TIMEOUT)


def health_of(gateway: Gateway, model: str, deployment: str) -> dict:
    resp = deployments(gateway)
    assert resp.status_code == 200, resp.text
    [entry] = [d for d in resp.json()["data"] if (d["model"], d["deployment"]) == (model, deployment)]
    return entry


def cool_down(gateway: Gateway, mock, key, model: str) -> None:
    """Sends requests for `model` (deployments `up` and `down`, the latter answering 503) until
    `down` has failed twice: the cooldown threshold. Every request still succeeds."""
    marker = nonce()
    for i in range(60):
        resp = chat(gateway, key, model, f"{marker} cool {i}")
        assert resp.status_code == 200, resp.text
        if at_path(mock, marker, "/status=503/") >= 2:
            return
    raise AssertionError("the failing deployment was never chosen twice")


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


def test_a_cooled_down_deployment_shows_at_admin_deployments_and_in_metrics(gateway, mock, key):
    cool_down(gateway, mock, key, "rt-watch")
    down = health_of(gateway, "rt-watch", "down")
    assert (down["state"], down["provider"], down["upstream_model"]) == ("cooling_down", "rt-down", "gpt-4.1-mini")
    assert 0 < down["cooldown_left_secs"] <= 120
    assert down["in_flight"] == 0
    up = health_of(gateway, "rt-watch", "up")
    assert (up["state"], up["provider"], up["cooldown_left_secs"], up["recent_failures"]) == ("healthy", "rt-ok", 0, 0)
    # Deployments never routed to are listed too, healthy (the single-provider form's deployment
    # is named after its provider).
    assert health_of(gateway, "rt-dear", "rt-ok")["state"] == "healthy"
    samples = scrape(gateway.http_base)
    assert total(samples, "tollgate_deployment_healthy", model="rt-watch", deployment="down") == 0
    assert total(samples, "tollgate_deployment_healthy", model="rt-watch", deployment="up") == 1
    assert total(samples, "tollgate_deployment_in_flight", model="rt-watch", deployment="up") == 0


def test_admin_deployments_needs_the_admin_token(gateway, key):
    for token in (None, key.secret, ADMIN_TOKEN[:-1]):
        resp = deployments(gateway, token)
        assert resp.status_code == 401, resp.text
        error = resp.json()["error"]
        assert (error["type"], error["code"]) == ("authentication_error", "invalid_admin_token"), error


def test_a_prompt_too_long_goes_to_the_larger_model_at_its_prices(gateway, mock, key):
    marker = nonce()
    # rt-small takes 100 prompt tokens; this prompt is estimated at several hundred.
    resp = chat(gateway, key, "rt-small", f"{marker} " + "long prompt " * 100)
    assert resp.status_code == 200, resp.text
    assert resp.json()["model"] == "rt-small"
    assert resp.headers["x-tollgate-served-model"] == "rt-large"
    [upstream] = mock.requests_with(marker)
    assert upstream["body"]["model"] == "gpt-4.1"
    requested, model_id, deployment, attempts, prompt, completion, cost, outcome = ledger(
        gateway, resp.headers["x-request-id"]
    )
    assert (requested, model_id, deployment, attempts, outcome) == ("rt-small", "rt-large", "rt-ok", 1, "succeeded")
    assert prompt > 100
    # rt-large's prices (3 and 5 USD per million tokens), not rt-small's (1 and 1).
    assert cost == prompt * 3_000_000 + completion * 5_000_000
    # A short prompt stays on the model asked for.
    short = chat(gateway, key, "rt-small", f"{marker} short")
    assert short.status_code == 200, short.text
    assert short.headers["x-tollgate-served-model"] == "rt-small"


def test_the_reservation_covers_the_dearest_candidate(gateway, mock):
    """0.01 USD covers 100 output tokens at 1 USD per million (rt-budget alone), not at rt-dear's
    1,000 USD per million (rt-budget's fallback, which the tier allows): admission reserves for
    the dearest model the request may end up on."""
    prepaid = gateway.create_key("routing_limited", None, "--balance", "0.01")
    marker = nonce()
    refused = chat(gateway, prepaid, "rt-budget", f"{marker} dear", max_tokens=100)
    assert refused.status_code == 429, refused.text
    assert refused.json()["error"]["code"] == "insufficient_quota"
    assert mock.requests_with(marker) == []
    alone = chat(gateway, prepaid, "rt-budget-alone", f"{marker} cheap", max_tokens=100)
    assert alone.status_code == 200, alone.text


@pytest.fixture(scope="module")
def replicas(mock, tmp_path_factory):
    datastores.require()
    env = {
        "TOLLGATE__DATABASE__URL": datastores.POSTGRES_URL,
        "TOLLGATE__REDIS__URL": datastores.REDIS_URL,
        # Cooldowns of this run only.
        "TOLLGATE__REDIS__KEY_PREFIX": f"e2e-routing-{uuid.uuid4().hex}",
        "TOLLGATE_ADMIN_TOKEN": ADMIN_TOKEN,
    }
    config = CONFIG.format(mock=mock.base_url)
    gateways = [Gateway(tmp_path_factory.mktemp(f"routing-replica{i}"), mock, config, env=env) for i in range(2)]
    yield gateways
    for gw in gateways:
        gw.stop()


def test_a_cooldown_on_one_replica_is_shared_by_the_other(replicas, mock):
    a, b = replicas
    key = a.create_key("routing_limited")
    cool_down(a, mock, key, "rt-watch")
    assert health_of(a, "rt-watch", "down")["state"] == "cooling_down"
    # B never sent it a request: it learns the cooldown from Redis within its refresh interval.
    wait_until(
        lambda: health_of(b, "rt-watch", "down")["state"] == "cooling_down", 10, what="replica B sees the cooldown"
    )
    marker = nonce()
    n = 40
    for i in range(n):
        resp = chat(b, key, "rt-watch", f"{marker} via b {i}")
        assert resp.status_code == 200, resp.text
        assert resp.headers["x-tollgate-deployment"] == "up"
    reached = at_path(mock, marker, "/status=503/")
    assert reached == 0
    assert at_path(mock, marker, "/ok/") == n
    print(f"\nrouting figures: requests through replica B reaching the deployment replica A cooled down: {reached}/{n}")
