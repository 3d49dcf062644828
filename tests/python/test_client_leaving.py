"""A client that leaves stops the upstream (issue 15, items 4 and 5), over the wire: what the mock
saw of the upstream connection (`[track=NAME]`: finished, or closed early by the gateway and
when), what the ledger holds, and what the process does on SIGTERM.

- `on_client_disconnect = "cancel"` (the default): a client that hangs up mid-stream (REST SSE,
  gRPC ChatStream, the Messages and Responses routes) or stops reading for longer than
  `client_stall_timeout_secs` has its upstream connection closed at once; the request is settled
  as `cancelled`, marked estimated: the prompt plus what was relayed.
- `on_client_disconnect = "finish"`: the upstream is read to its end and its own count is billed.
- SIGTERM: requests still running when `shutdown_grace_secs` ends are cut and settled (estimated)
  before the process exits 0; no reservation stays open.
- 200 stalled streams (a silent upstream, a client reading nothing): the RSS they cost is
  printed, `GET /v1/models` answers within 1 s meanwhile, and all of them are settled.
- A tier's `max_concurrent_streams`: a stream over it is a 429 `rate_limit_exceeded` naming the
  cap (gRPC RESOURCE_EXHAUSTED), and its slot is free again once a stream ends."""

from __future__ import annotations

import contextlib
import json
import math
import signal
import socket
import threading
import time

import grpc
import httpx
import pytest
from tollgate.v1 import billing_pb2, billing_pb2_grpc, inference_pb2, inference_pb2_grpc

from harness import PRICES, ApiKey, Gateway, MockUpstream, auth, nonce, sqlite_rows, stalled_stream, user, wait_until
from mock_rules import cost_picodollars, expected_usage

TIMEOUT = 30
# The stall timeout of the cancelling gateway, short so the stalled-reader test is quick.
STALL_SECS = 2
# How soon after the client leaves the upstream connection must be closed.
CLOSE_WITHIN_SECS = 5
TWO_STREAMS_TIER = """
[[tiers]]
name = "two_streams"
rpm = 100
monthly_requests = 1000
max_concurrent_streams = 2
"""


@pytest.fixture(scope="module")
def gateway(mock: MockUpstream, tmp_path_factory) -> Gateway:
    """The default policy (cancel), with a short stall timeout."""
    gw = Gateway(
        tmp_path_factory.mktemp("tollgate-cancel"),
        mock,
        extra_config=TWO_STREAMS_TIER,
        env={"TOLLGATE__SERVER__CLIENT_STALL_TIMEOUT_SECS": str(STALL_SECS)},
    )
    yield gw
    gw.stop()


@pytest.fixture(scope="module")
def finishing(mock: MockUpstream, tmp_path_factory) -> Gateway:
    gw = Gateway(
        tmp_path_factory.mktemp("tollgate-finish"),
        mock,
        env={"TOLLGATE__SERVER__ON_CLIENT_DISCONNECT": "finish"},
    )
    yield gw
    gw.stop()


def stream_status(mock: MockUpstream, name: str) -> dict:
    resp = httpx.get(f"{mock.base_url}/_mock/streams/{name}", timeout=10)
    resp.raise_for_status()
    return resp.json()


def wait_closed_early(mock: MockUpstream, name: str, left_at: float, within: float = CLOSE_WITHIN_SECS) -> None:
    """The upstream stream NAME was closed by the gateway before its end, within `within` seconds
    of `left_at` (the moment the client left)."""
    wait_until(lambda: stream_status(mock, name)["closed_early"] == 1, timeout=within + 5, what=f"upstream {name} closed")
    status = stream_status(mock, name)
    assert status["finished"] == 0, status
    assert status["last_closed_ms"] / 1000 - left_at < within, (status, left_at)


def ledger(gateway: Gateway, key: ApiKey) -> list[tuple]:
    return sqlite_rows(
        gateway.tmp_dir / "tollgate.db",
        "SELECT outcome, prompt_tokens, completion_tokens, estimated FROM usage_ledger WHERE key_id = ?",
        key.key_id,
    )


def settled(gateway: Gateway, key: ApiKey) -> tuple:
    wait_until(lambda: len(ledger(gateway, key)) == 1, timeout=20, what="the request is settled")
    [row] = ledger(gateway, key)
    return row


def open_reservations(gateway: Gateway) -> int:
    [(n,)] = sqlite_rows(gateway.tmp_dir / "tollgate.db", "SELECT COUNT(*) FROM reservations")
    return n


def metadata(key: ApiKey) -> list[tuple[str, str]]:
    return [("authorization", f"Bearer {key.secret}")]


def proto_request(model: str, text: str) -> inference_pb2.ChatRequest:
    return inference_pb2.ChatRequest(
        model=model, messages=[inference_pb2.Message(role=inference_pb2.ROLE_USER, text=text)]
    )


def relayed_bytes(chunk: dict) -> int:
    return sum(len((c.get("delta") or {}).get("content") or "") for c in chunk.get("choices") or [])


def held_text(name: str, chunks: int) -> str:
    """A prompt whose stream sends `chunks` chunks (the role chunk and chunks-1 words), then holds
    until NAME is released, tracked under NAME."""
    return f"leave {name} one two three four five six seven [hold_after_first={name}] [hold_at={chunks}] [track={name}]"


# Cancel (the default) -------------------------------------------------------------------------


def test_a_rest_client_leaving_closes_the_upstream_and_is_billed_what_was_relayed(gateway, mock):
    """Before: the relay read the held upstream on (up to request_timeout_secs) after the client
    left. Now the upstream connection closes at once and the row is the relayed text, marked."""
    key = gateway.create_key("enterprise")
    name = f"rest-{nonce()}"
    body = {"model": "deepseek-chat", "messages": user(held_text(name, 4)), "stream": True}
    relayed = seen = 0
    with httpx.stream("POST", f"{gateway.base_url}/chat/completions", headers=auth(key), json=body, timeout=TIMEOUT) as r:
        assert r.status_code == 200
        for line in r.iter_lines():
            if line.startswith("data: {"):
                relayed += relayed_bytes(json.loads(line[6:]))
                seen += 1
                if seen == 4:
                    break
    left_at = time.time()
    wait_closed_early(mock, name, left_at)
    outcome, prompt, completion, estimated = settled(gateway, key)
    assert (outcome, completion, estimated) == ("cancelled", math.ceil(relayed / 4), 1)
    assert relayed > 0 and prompt > 0
    assert open_reservations(gateway) == 0
    mock.release(name)


def test_a_grpc_client_cancelling_closes_the_upstream_and_is_billed_what_was_relayed(gateway, mock):
    key = gateway.create_key("enterprise")
    name = f"grpc-{nonce()}"
    request = proto_request("deepseek-chat", held_text(name, 4))
    with grpc.insecure_channel(gateway.grpc_addr) as channel:
        call = inference_pb2_grpc.InferenceStub(channel).ChatStream(request, metadata=metadata(key), timeout=TIMEOUT)
        chunks = [next(call) for _ in range(4)]
        call.cancel()
        left_at = time.time()
    relayed = sum(len(c.delta.content) for chunk in chunks for c in chunk.choices)
    wait_closed_early(mock, name, left_at)
    # The prompt estimate of a text-only request is ceil(its protobuf size / 4).
    assert settled(gateway, key) == ("cancelled", math.ceil(request.ByteSize() / 4), math.ceil(relayed / 4), 1)
    mock.release(name)


@pytest.mark.parametrize(
    "path, body",
    [
        ("/messages", {"model": "gpt-4.1-mini", "max_tokens": 100}),
        ("/responses", {"model": "gpt-4.1-mini"}),
    ],
)
def test_leaving_the_messages_and_responses_streams_closes_the_upstream(gateway, mock, path, body):
    key = gateway.create_key("enterprise")
    name = f"surface-{nonce()}"
    field = "messages" if path == "/messages" else "input"
    body = {**body, field: user(held_text(name, 4)), "stream": True}
    with httpx.stream("POST", f"{gateway.base_url}{path}", headers=auth(key), json=body, timeout=TIMEOUT) as r:
        assert r.status_code == 200, r.read()
        for line in r.iter_lines():
            if line.startswith("data:") and '"delta"' in line:
                break
    left_at = time.time()
    wait_closed_early(mock, name, left_at)
    outcome, _, completion, estimated = settled(gateway, key)
    assert (outcome, estimated) == ("cancelled", 1)
    assert completion > 0
    mock.release(name)


def test_a_stalled_reader_is_a_client_that_left(gateway, mock):
    """A raw socket with a small receive buffer reads the response headers and then nothing: once
    the buffers are full, a send waits past the stall timeout and the gateway closes the upstream
    (before: the relay and the upstream stayed alive indefinitely)."""
    key = gateway.create_key("enterprise")
    name = f"stall-{nonce()}"
    words = " ".join("w" for _ in range(60_000))
    sock = stalled_stream(gateway, key.secret, f"stall {name} [track={name}] {words}", TIMEOUT)
    try:
        opened_at = time.time()
        # Stop reading. The gateway notices within the stall timeout once its buffers are full.
        wait_until(lambda: stream_status(mock, name)["closed_early"] == 1, timeout=30, what="the stalled stream's upstream closed")
        status = stream_status(mock, name)
        assert status["finished"] == 0, status
        assert status["last_closed_ms"] / 1000 - opened_at >= STALL_SECS - 0.5
        outcome, prompt, completion, estimated = settled(gateway, key)
        assert (outcome, estimated) == ("cancelled", 1)
        # Billed what was relayed: some of the answer, not all of it.
        assert 0 < completion < 60_000, completion
        assert open_reservations(gateway) == 0
    finally:
        sock.close()


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


def test_200_stalled_streams_cost_little_memory_and_the_gateway_keeps_answering(gateway, mock):
    """200 streams open at once whose upstream has gone silent after the first chunk and whose
    clients read nothing (raw sockets with a small receive buffer): the process's RSS with them
    open is printed (the figure issue 15 asks for), `GET /v1/models` answers within 1 s
    meanwhile, and once the upstream resumes every stream is settled and no reservation stays
    open."""
    streams = 200
    keys = [gateway.create_key("enterprise") for _ in range(4)]  # 100 rpm each
    name = f"stalled-{nonce()}"
    pid = gateway.process.proc.pid
    before = rss_kib(pid)
    host, port = gateway.http_addr.rsplit(":", 1)
    socks = []
    try:
        for i in range(streams):
            key = keys[i % len(keys)]
            payload = json.dumps(
                {"model": "deepseek-chat", "messages": user(f"{name} {i} one two three [hold_after_first={name}]"), "stream": True}
            ).encode()
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.settimeout(TIMEOUT)
            sock.connect((host, int(port)))
            sock.sendall(
                (
                    f"POST /v1/chat/completions HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {key.secret}\r\n"
                    f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n\r\n"
                ).encode()
                + payload
            )
            socks.append(sock)
        mock.wait_held(name, lambda status: status["waiting"] == streams, what=f"{streams} streams held after their first chunk")
        during = rss_kib(pid)
        times = []
        for _ in range(5):
            start = time.monotonic()
            r = httpx.get(f"{gateway.base_url}/models", timeout=10)
            times.append(time.monotonic() - start)
            assert r.status_code == 200, r.text
        assert max(times) < 1.0, times
        print(
            f"RSS {before} KiB before, {during} KiB with {streams} stalled streams open "
            f"(+{(during - before) / streams:.0f} KiB each); /v1/models in {max(times) * 1000:.0f} ms at most"
        )
    finally:
        mock.release(name)
        for sock in socks:
            sock.close()
    marks = ",".join("?" * len(keys))

    def count() -> int:
        sql = f"SELECT COUNT(*) FROM usage_ledger WHERE key_id IN ({marks})"
        return sqlite_rows(gateway.tmp_dir / "tollgate.db", sql, *[k.key_id for k in keys])[0][0]

    wait_until(lambda: count() == streams, timeout=TIMEOUT, what=f"{streams} streams settled")
    assert open_reservations(gateway) == 0


# Finish ---------------------------------------------------------------------------------------


def test_finish_mode_reads_the_upstream_to_its_final_count(finishing, mock):
    """The client reads one chunk and hangs up while the upstream holds the rest; the gateway
    reads the upstream on to its final usage and bills exactly that (not the zero it had seen),
    as a real count."""
    gateway = finishing
    key = gateway.create_key("enterprise")
    hold = f"leave-{nonce()}"
    messages = [{"role": "user", "content": f"leave early {hold} one two three four five six [hold_after_first={hold}] [track={hold}]"}]
    body = {"model": "deepseek-chat", "messages": messages, "stream": True}
    with httpx.stream("POST", f"{gateway.base_url}/chat/completions", headers=auth(key), json=body, timeout=30) as r:
        assert r.status_code == 200
        for line in r.iter_lines():
            if line.startswith("data: {"):
                break  # and close the connection mid-stream
    mock.wait_held(hold, lambda status: status["waiting"] == 1, what="the rest of the stream is held")
    mock.release(hold)
    wait_until(lambda: len(ledger(gateway, key)) == 1, timeout=20, what="the abandoned stream is settled")
    want = expected_usage(messages, thinking=False)
    assert ledger(gateway, key) == [("cancelled", want.prompt_tokens, want.completion_tokens, 0)]
    assert stream_status(mock, hold) == {**stream_status(mock, hold), "finished": 1, "closed_early": 0}


def test_finish_mode_bills_a_cancelled_grpc_stream_the_upstreams_final_count(finishing, mock):
    """A gRPC client that cancels its stream mid-way (the upstream holds the rest) is billed as a
    REST client that hangs up: the gateway reads the upstream on to its final usage and settles
    it once, as cancelled, with the real count."""
    gateway = finishing
    key = gateway.create_key("pro")
    hold = f"cancel-{nonce()}"
    text = f"cancel me {hold} one two three four [hold_after_first={hold}]"
    with grpc.insecure_channel(gateway.grpc_addr) as channel:
        call = inference_pb2_grpc.InferenceStub(channel).ChatStream(
            proto_request("deepseek-chat", text), metadata=metadata(key), timeout=TIMEOUT
        )
        first = next(call)
        assert first.choices[0].delta.role == inference_pb2.ROLE_ASSISTANT
        mock.wait_held(hold, lambda status: status["waiting"] == 1, what="the rest of the stream is held")
        call.cancel()
        assert call.code() == grpc.StatusCode.CANCELLED
        mock.release(hold)
        wait_until(lambda: len(ledger(gateway, key)) == 1, timeout=20, what="the cancelled stream is settled")
        want = expected_usage(user(text), thinking=False)
        assert ledger(gateway, key) == [("cancelled", want.prompt_tokens, want.completion_tokens, 0)]
        billing = billing_pb2_grpc.BillingStub(channel)
        report = billing.GetUsage(billing_pb2.GetUsageRequest(), metadata=metadata(key), timeout=TIMEOUT)
        assert report.total_cost_picodollars == cost_picodollars(want, PRICES["deepseek-v4-flash"])


# SIGTERM --------------------------------------------------------------------------------------


def test_sigterm_in_finish_mode_waits_for_a_stream_whose_client_left(mock, tmp_path):
    """The client of a slow stream leaves, then the gateway gets SIGTERM: the relay is still
    reading the upstream to its final usage, and shutdown waits for that settlement before it
    closes the ledger."""
    gw = Gateway(
        tmp_path,
        mock,
        env={"TOLLGATE__SERVER__SHUTDOWN_GRACE_SECS": "30", "TOLLGATE__SERVER__ON_CLIENT_DISCONNECT": "finish"},
    )
    try:
        key = gw.create_key("enterprise")
        messages = [{"role": "user", "content": f"left before shutdown {nonce()} a b c d e f g h [chunk_delay_ms=200]"}]
        body = {"model": "deepseek-chat", "messages": messages, "stream": True}
        with httpx.stream("POST", f"{gw.base_url}/chat/completions", headers=auth(key), json=body, timeout=30) as r:
            assert r.status_code == 200
            for line in r.iter_lines():
                if line.startswith("data: {"):
                    break
        gw.process.proc.send_signal(signal.SIGTERM)
        assert gw.process.proc.wait(timeout=30) == 0
        want = expected_usage(messages, thinking=False)
        assert ledger(gw, key) == [("cancelled", want.prompt_tokens, want.completion_tokens, 0)]
    finally:
        gw.stop()


def test_sigterm_cuts_and_settles_the_requests_still_running(mock, tmp_path):
    """A stream and a non-streamed call held upstream when SIGTERM comes, with a 1 s grace (the
    harness's): before, the grace ended and both were abandoned unsettled, their reservations
    left open. Now they are cut: the upstream connections close, each gets one ledger row
    (estimated, failed), no reservation stays open, and the process exits 0."""
    gw = Gateway(tmp_path, mock, env={"TOLLGATE__SERVER__SHUTDOWN_GRACE_SECS": "1"})
    try:
        key = gw.create_key("enterprise", None, "--balance", "10")
        name = f"term-{nonce()}"
        held = f"term-call-{nonce()}"
        call = {"model": "deepseek-chat", "messages": user(f"held call [hold={held}]")}
        with httpx.Client(timeout=TIMEOUT) as client:

            def held_call() -> None:
                # The process may exit before this answer is written: only the ledger is asserted.
                with contextlib.suppress(httpx.HTTPError):
                    client.post(f"{gw.base_url}/chat/completions", headers=auth(key), json=call)

            pending = threading.Thread(target=held_call, daemon=True)
            pending.start()
            body = {"model": "deepseek-chat", "messages": user(held_text(name, 4)), "stream": True}
            relayed = seen = 0
            with httpx.stream("POST", f"{gw.base_url}/chat/completions", headers=auth(key), json=body, timeout=TIMEOUT) as r:
                assert r.status_code == 200
                lines = r.iter_lines()
                for line in lines:
                    if line.startswith("data: {"):
                        relayed += relayed_bytes(json.loads(line[6:]))
                        seen += 1
                        if seen == 4:
                            break
                mock.wait_held(held, lambda status: status["waiting"] == 1, what="the call reached the upstream")
                assert open_reservations(gw) == 2
                gw.process.proc.send_signal(signal.SIGTERM)
                assert gw.process.proc.wait(timeout=30) == 0
            pending.join(timeout=30)
        rows = sorted(ledger(gw, key), key=lambda row: row[2])
        assert len(rows) == 2, rows
        (call_outcome, call_prompt, call_completion, call_estimated), (outcome, prompt, completion, estimated) = rows
        assert (call_outcome, call_completion, call_estimated) == ("failed", 0, 1) and call_prompt > 0
        assert (outcome, completion, estimated) == ("failed", math.ceil(relayed / 4), 1) and prompt > 0
        assert stream_status(mock, name)["closed_early"] == 1
        assert open_reservations(gw) == 0
        [(reserved,)] = sqlite_rows(gw.tmp_dir / "tollgate.db", "SELECT reserved_picodollars FROM key_accounts WHERE key_id = ?", key.key_id)
        assert reserved == 0
    finally:
        mock.release(name)
        mock.release(held)
        gw.stop()


# The per-key stream cap -----------------------------------------------------------------------


def test_a_key_over_its_tiers_stream_cap_gets_429_until_a_stream_ends(gateway, mock):
    key = gateway.create_key("two_streams")
    name = f"cap-{nonce()}"
    body = {"model": "deepseek-chat", "messages": user(f"capped {name} [hold_after_first={name}]"), "stream": True}
    url = f"{gateway.base_url}/chat/completions"
    with httpx.Client(timeout=TIMEOUT) as one, httpx.Client(timeout=TIMEOUT) as two:
        first = one.send(one.build_request("POST", url, headers=auth(key), json=body), stream=True)
        second = two.send(two.build_request("POST", url, headers=auth(key), json=body), stream=True)
        assert (first.status_code, second.status_code) == (200, 200)
        mock.wait_held(name, lambda status: status["waiting"] == 2, what="both streams are open")
        third = httpx.post(url, headers=auth(key), json=body, timeout=TIMEOUT)
        assert third.status_code == 429, third.text
        error = third.json()["error"]
        assert (error["type"], error["code"]) == ("rate_limit_error", "rate_limit_exceeded"), error
        assert "max_concurrent_streams" in error["message"] and "2" in error["message"], error
        # Over gRPC alike; a non-streamed call is not a stream.
        with grpc.insecure_channel(gateway.grpc_addr) as channel:
            call = inference_pb2_grpc.InferenceStub(channel).ChatStream(
                proto_request("deepseek-chat", f"capped {name}"), metadata=metadata(key), timeout=TIMEOUT
            )
            with pytest.raises(grpc.RpcError) as err:
                next(call)
            assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        plain = {"model": "deepseek-chat", "messages": user(f"not a stream {nonce()}")}
        assert httpx.post(url, headers=auth(key), json=plain, timeout=TIMEOUT).status_code == 200
        # One stream ends (its client leaves): its slot is free once it is settled.
        first.close()
        wait_until(lambda: len(ledger(gateway, key)) == 2, timeout=20, what="the left stream is settled")
        fourth = {"model": "deepseek-chat", "messages": user(f"after {nonce()}"), "stream": True}
        assert httpx.post(url, headers=auth(key), json=fourth, timeout=TIMEOUT).status_code == 200
        mock.release(name)
        second.read()
        second.close()
    wait_until(lambda: len(ledger(gateway, key)) == 4, timeout=20, what="every admitted request is settled")
    # Refused streams were never admitted: no row, no monthly count.
    assert gateway.usage(key).json()["monthly_requests"] == 4
