"""The REST listener's bounds (issue 15, item 9): silent and slow-header connections are closed
within the header-read timeout while the gateway keeps answering; requests over the in-flight
cap are shed with 503 and `Retry-After`; a caller without a valid key is refused with 401 before
its body is read or parsed.

Sizes (item 10): a non-streaming answer over the gRPC message limit fails (502) before it is
settled, so it is never billed and then refused by the transport.

The gateway here runs with a 2 s header-read timeout, an in-flight cap of 2, and a 100 kB gRPC
message limit (and 100 kB bodies), SSE keep-alives every second, and 3 management requests a
minute per client address (item 13)."""

from __future__ import annotations

import select
import socket
import sqlite3
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from harness import Gateway, auth, nonce, user
from money_checks import submit_together

HEADER_READ_TIMEOUT_SECS = 2
MAX_IN_FLIGHT = 2
MAX_BODY_BYTES = 100_000
MAX_MESSAGE_BYTES = 100_000
MANAGEMENT_RPM = 3


@pytest.fixture(scope="module")
def gateway(mock, tmp_path_factory):
    gw = Gateway(
        tmp_path_factory.mktemp("listener"),
        mock,
        extra_env={
            "TOLLGATE__SERVER__HEADER_READ_TIMEOUT_SECS": str(HEADER_READ_TIMEOUT_SECS),
            "TOLLGATE__SERVER__MAX_IN_FLIGHT_REQUESTS": str(MAX_IN_FLIGHT),
            "TOLLGATE__SERVER__MAX_BODY_BYTES": str(MAX_BODY_BYTES),
            "TOLLGATE__SERVER__MAX_MESSAGE_BYTES": str(MAX_MESSAGE_BYTES),
            "TOLLGATE__SERVER__SSE_KEEP_ALIVE_SECS": "1",
            "TOLLGATE__SERVER__MANAGEMENT_RPM": str(MANAGEMENT_RPM),
        },
    )
    yield gw
    gw.stop()


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def open_connections(addr: str, n: int, first_bytes: bytes = b"") -> list[socket.socket]:
    host, port = addr.rsplit(":", 1)
    socks = []
    for _ in range(n):
        s = socket.create_connection((host, int(port)), timeout=10)
        if first_bytes:
            s.sendall(first_bytes)
        socks.append(s)
    return socks


def wait_all_closed(socks: list[socket.socket], timeout: float) -> int:
    """Waits until the server closed every socket (EOF or reset); returns how many it closed."""
    open_ = {s.fileno(): s for s in socks}
    deadline = time.monotonic() + timeout
    while open_ and time.monotonic() < deadline:
        readable, _, _ = select.select(list(open_.values())[:1000], [], [], max(0.0, deadline - time.monotonic()))
        for s in readable:
            try:
                data = s.recv(4096)
            except OSError:
                data = b""
            if not data:
                del open_[s.fileno()]
    return len(socks) - len(open_)


def time_models(gateway) -> float:
    start = time.monotonic()
    r = httpx.get(f"{gateway.base_url}/models", timeout=10)
    elapsed = time.monotonic() - start
    assert r.status_code == 200, r.text
    return elapsed


def test_silent_connections_are_closed_within_the_header_read_timeout(gateway):
    start = time.monotonic()
    socks = open_connections(gateway.http_addr, 320)
    try:
        assert time_models(gateway) < 1.0
        closed = wait_all_closed(socks, timeout=HEADER_READ_TIMEOUT_SECS + 8)
        elapsed = time.monotonic() - start
        assert closed == 320, f"{closed} of 320 silent connections closed in {elapsed:.1f}s"
        print(f"320 silent connections closed in {elapsed:.1f}s")
    finally:
        for s in socks:
            s.close()


def test_slow_header_connections_do_not_starve_the_gateway(gateway):
    pid = gateway.process.proc.pid
    before = rss_kib(pid)
    # Each sends the start of a request and then nothing: the headers never end.
    socks = open_connections(gateway.http_addr, 500, b"GET /v1/models HTTP/1.1\r\nHost: x\r\nX-Slow: ")
    try:
        during = rss_kib(pid)
        times = [time_models(gateway) for _ in range(5)]
        assert max(times) < 1.0, times
        closed = wait_all_closed(socks, timeout=HEADER_READ_TIMEOUT_SECS + 8)
        assert closed == 500, f"{closed} of 500 slow-header connections closed"
        print(f"RSS {before} KiB before, {during} KiB with 500 slow-header connections open; /v1/models in {max(times) * 1000:.0f} ms at most")
    finally:
        for s in socks:
            s.close()
    # The process is still alive and serving.
    assert time_models(gateway) < 1.0


def test_an_idle_keep_alive_connection_is_closed(gateway):
    host, port = gateway.http_addr.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=10) as s:
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        first = s.recv(4096)
        assert first.startswith(b"HTTP/1.1 200"), first
        assert wait_all_closed([s], timeout=HEADER_READ_TIMEOUT_SECS + 8) == 1


def test_requests_over_the_in_flight_cap_are_shed_with_retry_after(gateway, mock):
    key = gateway.create_key("enterprise")
    hold = f"shed-{nonce()}"

    def held(_: int) -> httpx.Response:
        return httpx.post(
            f"{gateway.base_url}/chat/completions",
            headers=auth(key),
            json={"model": "deepseek-chat", "messages": user(f"[hold={hold}] hi")},
            timeout=60,
        )

    with ThreadPoolExecutor(max_workers=MAX_IN_FLIGHT) as pool:
        futures = submit_together(pool, MAX_IN_FLIGHT, held)
        try:
            mock.wait_held(hold, lambda st: st["waiting"] == MAX_IN_FLIGHT, what="both requests held upstream")
            r = httpx.get(f"{gateway.base_url}/models", timeout=10)
            assert r.status_code == 503, r.text
            assert r.headers.get("retry-after") == "1"
            error = r.json()["error"]
            assert error["type"] == "service_unavailable", error
        finally:
            mock.release(hold)
        for f in futures:
            assert f.result().status_code == 200, f.result().text
    # Once they are done, the gateway serves again.
    assert time_models(gateway) < 1.0


def test_a_caller_without_a_valid_key_is_refused_before_the_body_is_parsed(gateway):
    body = b'{"messages": [' + b'{"role": "user", "content": "x"},' * 100_000 + b'{"role": "user"}], "model": "deepseek-chat"}'
    assert len(body) > 3_000_000  # over the body limit too: a valid key would get a 400
    for headers in ({}, {"Authorization": "Bearer sk-not-a-real-key-0000000000000000"}):
        r = httpx.post(f"{gateway.base_url}/chat/completions", headers=headers, content=body, timeout=30)
        assert r.status_code == 401, (headers, r.status_code, r.text[:300])
        assert r.json()["error"]["type"] == "authentication_error"
    # Not even a body that is not JSON at all is looked at.
    r = httpx.post(
        f"{gateway.base_url}/chat/completions",
        headers={"Authorization": "Bearer sk-unknown"},
        content=b"\x00not json",
        timeout=30,
    )
    assert r.status_code == 401, r.text


def test_an_answer_over_the_message_limit_fails_before_it_is_settled(gateway):
    key = gateway.create_key("enterprise")
    # The mock thinks "Thinking about: <text>" and answers "Echo: <text>": twice the prompt,
    # over the 100 kB limit although the 60 kB request is under the body limit.
    text = "word " * 12_000
    r = httpx.post(
        f"{gateway.base_url}/chat/completions",
        headers=auth(key),
        json={"model": "deepseek-v4-flash", "messages": user(text), "reasoning_effort": "high"},
        timeout=60,
    )
    assert r.status_code == 502, r.text[:300]
    error = r.json()["error"]
    assert "message limit" in error["message"], error
    db = sqlite3.connect(f"file:{gateway.tmp_dir / 'tollgate.db'}?mode=ro", uri=True, timeout=10)
    try:
        rows = db.execute(
            "SELECT outcome, cost_picodollars FROM usage_ledger WHERE key_id = ?", (key.key_id,)
        ).fetchall()
    finally:
        db.close()
    assert rows == [("failed", 0)], rows
    # Half the text fits and is answered.
    r = httpx.post(
        f"{gateway.base_url}/chat/completions",
        headers=auth(key),
        json={"model": "deepseek-v4-flash", "messages": user("word " * 6_000), "reasoning_effort": "high"},
        timeout=60,
    )
    assert r.status_code == 200, r.text[:300]


@pytest.mark.parametrize("upstream_status,stream", [(429, False), (503, False), (503, True)])
def test_an_upstream_retry_after_is_passed_on(gateway, upstream_status, stream):
    """The mock's 429 and 503 say `Retry-After: 7` (item 12)."""
    key = gateway.create_key("enterprise")
    r = httpx.post(
        f"{gateway.base_url}/chat/completions",
        headers=auth(key),
        json={"model": "deepseek-chat", "messages": user(f"{nonce()} [status={upstream_status}]"), "stream": stream},
        timeout=30,
    )
    assert r.status_code == 503, r.text
    assert r.headers.get("retry-after") == "7", dict(r.headers)
    assert r.json()["error"]["type"] == "service_unavailable"


def test_a_silent_stream_gets_keep_alive_comments(gateway, mock):
    key = gateway.create_key("enterprise")
    hold = f"quiet-{nonce()}"
    body = {"model": "deepseek-chat", "messages": user(f"[hold_after_first={hold}] hi"), "stream": True}
    lines = []
    with httpx.stream("POST", f"{gateway.base_url}/chat/completions", headers=auth(key), json=body, timeout=30) as r:
        assert r.status_code == 200
        it = r.iter_lines()
        try:
            for line in it:
                lines.append(line)
                if line.startswith(": keep-alive"):
                    break
        finally:
            mock.release(hold)
        lines.extend(it)
    assert any(line.startswith(": keep-alive") for line in lines), lines
    assert lines[-2:] == ["data: [DONE]", ""] or "data: [DONE]" in lines, lines


def test_management_routes_are_rate_limited_per_client(gateway):
    key = gateway.create_key("enterprise")
    url = f"{gateway.base_url}/dashboard/billing/subscription"
    for _ in range(MANAGEMENT_RPM):
        assert httpx.get(url, headers=auth(key), timeout=10).status_code == 200
    r = httpx.get(url, headers=auth(key), timeout=10)
    assert r.status_code == 429, r.text
    assert r.json()["error"]["type"] == "rate_limit_error"
    assert int(r.headers["retry-after"]) >= 1
    # Admin routes share the limit; inference routes do not.
    assert httpx.get(f"{gateway.http_base}/admin/keys", timeout=10).status_code == 429
    assert time_models(gateway) < 1.0
