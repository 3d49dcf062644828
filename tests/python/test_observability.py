"""What an operator watches, on a monolith of its own (so every counter starts at zero) logging
JSON (`--log-format json`, here through TOLLGATE_LOG_FORMAT). `GET /metrics`, parsed with the
Prometheus project's text parser (`prometheus_client.parser`) after a known workload (unary and
streamed chats, refusals of every admission reason, an upstream failure), agrees with the ledger,
the money truth: requests, tokens by kind, cost, settlements, upstream calls, refusals by reason;
the gauges are back at zero; the process metrics are there. Each request's one JSON log line
carries the id REST returns as `x-request-id` (the ledger's), the key's id and prefix but never
its secret, model, provider, status, tokens, cost, latency and time to first token; a client's
error is not logged at ERROR. Lines inside a request name it by themselves (no span context):
a WARN its request id, the access line its method, route, status and request id."""

from __future__ import annotations

import json
import math

import openai
import pytest

import httpx

from harness import Gateway, MockUpstream, auth, make_client, sqlite_rows, user, wait_until
from prometheus_text import scrape, total

TIMEOUT = 30

# A tier whose keys may call deepseek-v4-pro only: the model_not_allowed refusal.
EXTRA_CONFIG = """
[[tiers]]
name = "pro_only"
rpm = 100
monthly_requests = 1000
models = ["deepseek-v4-pro"]
"""


@pytest.fixture(scope="module")
def gateway(mock: MockUpstream, tmp_path_factory: pytest.TempPathFactory) -> Gateway:
    gw = Gateway(
        tmp_path_factory.mktemp("observed"),
        mock,
        extra_config=EXTRA_CONFIG,
        extra_env={
            "TOLLGATE_LOG_FORMAT": "json",
            # The default filter, and the access lines (DEBUG) for the test that reads them.
            "RUST_LOG": "info,sqlx=warn,sea_orm=warn,tower_http::trace::on_response=debug",
        },
    )
    yield gw
    gw.stop()


def ledger_sums(gateway: Gateway) -> dict[str, int]:
    [row] = sqlite_rows(
        gateway.db_path,
        "SELECT COUNT(*), COALESCE(SUM(prompt_tokens), 0), COALESCE(SUM(cached_prompt_tokens), 0),"
        " COALESCE(SUM(cache_write_tokens), 0), COALESCE(SUM(completion_tokens), 0),"
        " COALESCE(SUM(reasoning_tokens), 0), COALESCE(SUM(cost_picodollars), 0),"
        " COALESCE(SUM(outcome = 'succeeded' AND NOT estimated), 0), COALESCE(SUM(outcome = 'failed'), 0)"
        " FROM usage_ledger",
    )
    keys = ("rows", "prompt", "cached_prompt", "cache_write", "completion", "reasoning", "cost", "final", "failed")
    return dict(zip(keys, (int(v) for v in row)))


def test_metrics_after_a_known_workload_agree_with_the_ledger(gateway: Gateway):
    key = gateway.create_key("enterprise")
    client = make_client(gateway, key)
    for i in range(2):
        client.chat.completions.create(model="deepseek-chat", messages=user(f"metrics unary {i}"))
    stream = client.chat.completions.create(
        model="deepseek-chat", messages=user("metrics stream"), stream=True, stream_options={"include_usage": True}
    )
    assert [c for c in stream if c.usage]
    # An upstream that answers 401 to the gateway's provider key: one failed call, settled at zero.
    with pytest.raises(openai.APIStatusError):
        client.chat.completions.create(model="deepseek-badkey", messages=user("metrics upstream failure"))

    # One refusal of each admission reason.
    with pytest.raises(openai.AuthenticationError):
        make_client(gateway, "sk-not-a-key-of-this-gateway").chat.completions.create(
            model="deepseek-chat", messages=user("metrics bad key")
        )
    tight = make_client(gateway, gateway.create_key("tight_rpm"))
    for i in range(3):
        tight.chat.completions.create(model="deepseek-chat", messages=user(f"metrics rpm {i}"))
    with pytest.raises(openai.RateLimitError):
        tight.chat.completions.create(model="deepseek-chat", messages=user("metrics rpm over"))
    month = make_client(gateway, gateway.create_key("tight_month"))
    for i in range(5):
        month.chat.completions.create(model="deepseek-chat", messages=user(f"metrics month {i}"))
    with pytest.raises(openai.RateLimitError):
        month.chat.completions.create(model="deepseek-chat", messages=user("metrics month over"))
    poor = make_client(gateway, gateway.create_key("enterprise", None, "--balance", "0.000000001"))
    with pytest.raises(openai.RateLimitError) as refused:
        poor.chat.completions.create(model="deepseek-chat", messages=user("metrics poor"))
    assert refused.value.code == "insufficient_quota"
    narrow = make_client(gateway, gateway.create_key("pro_only"))
    with pytest.raises(openai.PermissionDeniedError):
        narrow.chat.completions.create(model="deepseek-chat", messages=user("metrics not allowed"))

    # A stream's request is recorded as its relay ends, just after its last chunk went out.
    wait_until(
        lambda: total(scrape(gateway.http_base), "tollgate_in_flight_requests") == 0,
        timeout=TIMEOUT,
        what="no request in flight",
    )
    m = scrape(gateway.http_base)
    ledger = ledger_sums(gateway)
    answered = 2 + 1 + 3 + 5

    assert ledger["rows"] == answered + 1
    assert total(m, "tollgate_requests_total", status="ok") == answered
    assert total(m, "tollgate_requests_total", status="ok", stream="true", model="deepseek-v4-flash") == 1
    assert total(m, "tollgate_requests_total", status="ok", provider="deepseek") == answered
    assert total(m, "tollgate_requests_total", status="rate_limit_error") == 2
    assert total(m, "tollgate_requests_total", status="insufficient_quota") == 1
    assert total(m, "tollgate_requests_total", status="permission_error") == 1
    assert total(m, "tollgate_requests_total", model="deepseek-badkey", status="ok") == 0
    assert total(m, "tollgate_requests_total", model="deepseek-badkey") == 1
    assert total(m, "tollgate_request_duration_seconds_count") == total(m, "tollgate_requests_total")
    assert total(m, "tollgate_time_to_first_token_seconds_count", model="deepseek-v4-flash") == 1

    assert total(m, "tollgate_admission_refusals_total", reason="invalid_key") == 1
    assert total(m, "tollgate_admission_refusals_total", reason="rate_limited") == 1
    assert total(m, "tollgate_admission_refusals_total", reason="monthly_quota") == 1
    assert total(m, "tollgate_admission_refusals_total", reason="insufficient_quota") == 1
    assert total(m, "tollgate_admission_refusals_total", reason="model_not_allowed") == 1

    for kind in ("prompt", "cached_prompt", "cache_write", "completion", "reasoning"):
        assert total(m, "tollgate_tokens_total", kind=kind) == ledger[kind], kind
    assert ledger["prompt"] > 0 and ledger["completion"] > 0
    assert math.isclose(total(m, "tollgate_cost_usd_total"), ledger["cost"] / 1e12, rel_tol=1e-9)
    assert total(m, "tollgate_settlements_total", kind="final") == ledger["final"] == answered
    assert total(m, "tollgate_settlements_total", kind="failed") == ledger["failed"] == 1
    assert total(m, "tollgate_settlements_total") == ledger["rows"]
    assert total(m, "tollgate_ledger_batch_rows_sum") == ledger["rows"]
    assert total(m, "tollgate_ledger_commit_seconds_count") >= 1

    assert total(m, "tollgate_upstream_requests_total", provider="deepseek", outcome="ok") == answered
    assert total(m, "tollgate_upstream_requests_total", provider="badkey", outcome="client_error") == 1
    assert total(m, "tollgate_upstream_duration_seconds_count") == answered + 1

    assert total(m, "tollgate_active_streams") == 0
    assert total(m, "tollgate_ledger_queue_depth") == 0
    assert total(m, "process_resident_memory_bytes") > 0
    assert total(m, "process_open_fds") > 0
    assert "process_cpu_seconds_total" in m


def test_per_key_labels_are_off_by_default(gateway: Gateway):
    m = scrape(gateway.http_base)
    assert m["tollgate_requests_total"]
    for name in ("tollgate_requests_total", "tollgate_tokens_total", "tollgate_cost_usd_total"):
        assert all("key" not in s.labels for s in m.get(name, [])), name


def request_lines(gateway: Gateway) -> list[dict]:
    """The gateway's JSON log lines of requests (target `tollgate::request`)."""
    lines = []
    for line in list(gateway.process.stderr_lines):
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if record.get("target") == "tollgate::request":
            lines.append(record)
    return lines


def line_of(gateway: Gateway, request_id: str) -> dict:
    found: list[dict] = []

    def logged() -> bool:
        found[:] = [r for r in request_lines(gateway) if r.get("request_id") == request_id]
        return bool(found)

    wait_until(logged, timeout=TIMEOUT, what=f"the log line of {request_id}")
    [record] = found
    return record


def test_one_json_log_line_per_request_named_by_the_x_request_id_header(gateway: Gateway):
    key = gateway.create_key("enterprise")
    raw = make_client(gateway, key).chat.completions.with_raw_response.create(
        model="deepseek-chat", messages=user("logged unary")
    )
    request_id = raw.headers["x-request-id"]
    answer = raw.parse()
    assert request_id == answer.id and request_id.startswith("chatcmpl-")
    [[ledger_key, ledger_cost]] = sqlite_rows(
        gateway.db_path, "SELECT key_id, cost_picodollars FROM usage_ledger WHERE request_id = ?", request_id
    )
    record = line_of(gateway, request_id)
    assert record["level"] == "INFO"
    assert record["key_id"] == key.key_id == ledger_key
    assert record["key_prefix"] and key.secret.startswith(record["key_prefix"].removesuffix("..."))
    assert record["key_prefix"] != key.secret
    assert (record["model"], record["provider"], record["status"], record["stream"]) == (
        "deepseek-v4-flash",
        "deepseek",
        "ok",
        False,
    )
    assert (record["prompt_tokens"], record["completion_tokens"]) == (
        answer.usage.prompt_tokens,
        answer.usage.completion_tokens,
    )
    assert math.isclose(float(record["cost_usd"]), ledger_cost / 1e12, rel_tol=1e-12)
    assert record["latency_ms"] > 0
    assert "ttft_ms" not in record or record["ttft_ms"] is None

    with httpx.stream(
        "POST",
        f"{gateway.base_url}/chat/completions",
        headers=auth(key),
        json={"model": "deepseek-chat", "messages": user("logged stream"), "stream": True},
        timeout=TIMEOUT,
    ) as resp:
        assert resp.status_code == 200
        stream_id = resp.headers["x-request-id"]
        body = "".join(resp.iter_text())
    assert f'"id":"{stream_id}"' in body.replace(" ", "")
    record = line_of(gateway, stream_id)
    assert (record["status"], record["stream"]) == ("ok", True)
    assert 0 < record["ttft_ms"] <= record["latency_ms"]
    assert record["completion_tokens"] > 0

    # Client errors: logged, at INFO, never ERROR; and no log line anywhere holds the secret.
    client = make_client(gateway, key)
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="no-such-model", messages=user("logged 404"))
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="deepseek-chat", messages=user("logged 400"), temperature=9)
    wait_until(
        lambda: {"not_found_error", "invalid_request_error"} <= {r["status"] for r in request_lines(gateway)},
        timeout=TIMEOUT,
        what="the client errors' log lines",
    )
    for record in request_lines(gateway):
        if record["status"] in ("not_found_error", "invalid_request_error", "rate_limit_error", "insufficient_quota"):
            assert record["level"] == "INFO", record
    assert not any(key.secret in line for line in gateway.process.stderr_lines)


def json_lines(gateway: Gateway) -> list[dict]:
    """Every JSON log line the gateway wrote so far."""
    records = []
    for line in list(gateway.process.stderr_lines):
        try:
            records.append(json.loads(line))
        except ValueError:
            continue
    return records


def test_lines_inside_a_request_name_it_by_themselves(gateway: Gateway):
    """The log writer sees no span (opening one costs next to nothing then), so a line written
    inside a request carries what names it: an upstream failure's WARN its request id, the
    access line (DEBUG, enabled here through RUST_LOG) the method, route, status, latency and
    request id. No line carries span context."""
    key = gateway.create_key("enterprise")
    # An upstream that answers 401 to the gateway's provider key: a failure after admission.
    failed = httpx.post(
        f"{gateway.base_url}/chat/completions",
        headers=auth(key),
        json={"model": "deepseek-badkey", "messages": user("logged upstream failure")},
        timeout=TIMEOUT,
    )
    assert failed.status_code >= 400
    failed_id = failed.headers["x-request-id"]
    served = httpx.post(
        f"{gateway.base_url}/chat/completions",
        headers=auth(key),
        json={"model": "deepseek-chat", "messages": user("logged access line")},
        timeout=TIMEOUT,
    )
    assert served.status_code == 200
    served_id = served.headers["x-request-id"]

    def access_line(request_id: str) -> dict | None:
        return next(
            (
                r
                for r in json_lines(gateway)
                if r.get("target") == "tower_http::trace::on_response" and r.get("request_id") == request_id
            ),
            None,
        )

    wait_until(
        lambda: access_line(served_id) and access_line(failed_id),
        timeout=TIMEOUT,
        what="the access lines of both requests",
    )
    records = json_lines(gateway)
    [warning] = [r for r in records if r.get("message") == "upstream call failed" and r.get("request_id") == failed_id]
    assert warning["level"] == "WARN"
    for request_id, status in ((served_id, 200), (failed_id, failed.status_code)):
        line = access_line(request_id)
        assert line["level"] == "DEBUG"
        assert (line["method"], line["route"], line["status"]) == ("POST", "/v1/chat/completions", status)
        assert line["latency_ms"] > 0
    # Spans never reach the log writer: no line names one.
    assert not [r for r in records if "span" in r or "spans" in r]
