"""The fault-injection run of issue 15: 200 requests over REST and gRPC, mixed with every fault a
gateway meets, then the books. The kinds, cycled over four prepaid keys: normal answers (REST
JSON and SSE, gRPC unary and stream), an upstream stream cut mid-answer (`[stream_error]`), a
client leaving mid-stream (REST: the connection closed; gRPC: the call cancelled), a stalled
reader (a raw socket that stops reading; `client_stall_timeout_secs` is 2 here), an upstream
timeout (`deepseek-slow`, whose first token must come within 1 s), an upstream 500; and in the
middle a SIGTERM while requests are held upstream, then a restart on the same database.

The load pauses around the SIGTERM, so every request in flight then has reached the upstream
(held there): the mock's record of the requests it received is then an independent count of the
requests admitted (each admitted request calls the upstream once; nothing reaches it unadmitted).
At the end: ledger rows = admitted requests = 200, no reservation open, each key's spend (and
nothing still reserved) = the sum of its rows to the picodollar, each normal answer's cost its
row's, and each kind settled with the outcome its policy names (ARCHITECTURE.md)."""

from __future__ import annotations

import json
import re
import signal
import threading
import time
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal

import grpc
import httpx
import pytest
from tollgate.v1 import inference_pb2, inference_pb2_grpc

from harness import ApiKey, Gateway, MockUpstream, auth, sqlite_rows, stalled_stream, user, wait_until
from money_checks import key_listing, pico

TIMEOUT = 30
STALL_SECS = 2
TOTAL = 200
# The calls a retryable upstream failure gets on a single-deployment model ([routing] max_attempts).
RETRIED_ATTEMPTS = 3
WORKERS = 12
# Requests before the SIGTERM; the rest after the restart (the held ones included).
BEFORE = 100

KINDS = [
    "rest_json",
    "rest_stream",
    "grpc_unary",
    "grpc_stream",
    "rest_cut",
    "grpc_cut",
    "rest_leave",
    "grpc_leave",
    "timeout",
    "upstream_500",
]
# The stalled readers (few: each streams a long answer into full socket buffers, then waits out
# the stall), early in each half of the run so the other requests overlap them.
STALLED = {1, BEFORE + 5}
# The outcome each kind is settled with (ARCHITECTURE.md, "what a request is billed").
OUTCOME = {
    "rest_json": "succeeded",
    "rest_stream": "succeeded",
    "grpc_unary": "succeeded",
    "grpc_stream": "succeeded",
    "rest_cut": "failed",
    "grpc_cut": "failed",
    "rest_leave": "cancelled",
    "grpc_leave": "cancelled",
    "stalled": "cancelled",
    "timeout": "failed",
    "upstream_500": "failed",
    "sigterm": "failed",
}


@pytest.fixture(scope="module")
def gateway(mock: MockUpstream, tmp_path_factory) -> Gateway:
    gw = Gateway(
        tmp_path_factory.mktemp("tollgate-faults"),
        mock,
        env={"TOLLGATE__SERVER__CLIENT_STALL_TIMEOUT_SECS": str(STALL_SECS)},
    )
    yield gw
    gw.stop()


class Run:
    """The requests of one run against `gateway` (whose address changes on restart)."""

    def __init__(self, gateway: Gateway, mock: MockUpstream, keys: list[ApiKey]):
        self.gateway = gateway
        self.mock = mock
        self.keys = keys
        self.marker = f"fault-{uuid.uuid4().hex[:10]}"
        self.lock = threading.Lock()
        self.kinds: dict[str, str] = {}  # nonce -> kind
        self.answered: dict[str, int] = {}  # request id of a normal answer -> its cost
        self.channel = grpc.insecure_channel(gateway.grpc_addr)

    def reconnect(self) -> None:
        self.channel.close()
        self.channel = grpc.insecure_channel(self.gateway.grpc_addr)

    def text(self, i: int, kind: str, directives: str = "") -> str:
        nonce = f"{self.marker}-{i}"
        with self.lock:
            self.kinds[nonce] = kind
        return f"{nonce} one two three four five six {directives}"

    def key(self, i: int) -> ApiKey:
        return self.keys[i % len(self.keys)]

    def inference(self):
        return inference_pb2_grpc.InferenceStub(self.channel)

    def proto(self, model: str, text: str) -> inference_pb2.ChatRequest:
        return inference_pb2.ChatRequest(
            model=model,
            messages=[inference_pb2.Message(role=inference_pb2.ROLE_USER, text=text)],
            stream_options=inference_pb2.StreamOptions(include_usage=True),
        )

    def answer(self, request_id: str, cost: Decimal | int) -> None:
        with self.lock:
            self.answered[request_id] = pico(cost) if isinstance(cost, Decimal) else cost

    def send(self, i: int) -> None:
        """Request number `i`: its kind by position."""
        kind = "stalled" if i in STALLED else KINDS[i % len(KINDS)]
        getattr(self, kind)(i, kind)

    # The kinds -----------------------------------------------------------------------------

    def post(self, i: int, text: str, model: str = "deepseek-chat") -> httpx.Response:
        body = {"model": model, "messages": user(text)}
        return httpx.post(f"{self.gateway.base_url}/chat/completions", headers=auth(self.key(i)), json=body, timeout=TIMEOUT)

    def rest_json(self, i: int, kind: str) -> None:
        r = self.post(i, self.text(i, kind))
        assert r.status_code == 200, r.text
        answer = json.loads(r.text, parse_float=Decimal)
        self.answer(answer["id"], answer["usage"]["cost"])

    def rest_events(self, i: int, text: str):
        """The SSE events of a REST stream, as they come (the connection closes with the
        generator)."""
        body = {"model": "deepseek-chat", "messages": user(text), "stream": True, "stream_options": {"include_usage": True}}
        with httpx.stream(
            "POST", f"{self.gateway.base_url}/chat/completions", headers=auth(self.key(i)), json=body, timeout=TIMEOUT
        ) as r:
            assert r.status_code == 200, r.read()
            for line in r.iter_lines():
                if line.startswith("data: {"):
                    yield json.loads(line[6:], parse_float=Decimal)

    def rest_stream(self, i: int, kind: str) -> None:
        events = list(self.rest_events(i, self.text(i, kind)))
        [usage] = [e["usage"] for e in events if e.get("usage")]
        self.answer(events[-1]["id"], usage["cost"])

    def rest_cut(self, i: int, kind: str) -> None:
        events = list(self.rest_events(i, self.text(i, kind, "[stream_error]")))
        assert "error" in events[-1], events[-1]

    def rest_leave(self, i: int, kind: str) -> None:
        events = self.rest_events(i, self.text(i, kind, "a b c d e f g h i j k l m n [chunk_delay_ms=100]"))
        for event in events:
            if any((c.get("delta") or {}).get("content") for c in event.get("choices") or []):
                break
        events.close()

    def grpc_unary(self, i: int, kind: str) -> None:
        resp = self.inference().Chat(self.proto("deepseek-chat", self.text(i, kind)), metadata=metadata(self.key(i)), timeout=TIMEOUT)
        self.answer(resp.id, resp.usage.cost_picodollars)

    def grpc_stream(self, i: int, kind: str) -> None:
        chunks = list(
            self.inference().ChatStream(self.proto("deepseek-chat", self.text(i, kind)), metadata=metadata(self.key(i)), timeout=TIMEOUT)
        )
        [usage] = [c.usage for c in chunks if c.HasField("usage")]
        self.answer(chunks[-1].id, usage.cost_picodollars)

    def grpc_cut(self, i: int, kind: str) -> None:
        with pytest.raises(grpc.RpcError):
            list(
                self.inference().ChatStream(
                    self.proto("deepseek-chat", self.text(i, kind, "[stream_error]")), metadata=metadata(self.key(i)), timeout=TIMEOUT
                )
            )

    def grpc_leave(self, i: int, kind: str) -> None:
        call = self.inference().ChatStream(
            self.proto("deepseek-chat", self.text(i, kind, "a b c d e f g h i j k l m n [chunk_delay_ms=100]")),
            metadata=metadata(self.key(i)),
            timeout=TIMEOUT,
        )
        for chunk in call:
            if any(c.delta.content for c in chunk.choices):
                break
        call.cancel()

    def timeout(self, i: int, kind: str) -> None:
        r = self.post(i, self.text(i, kind, "[delay_ms=2500]"), model="deepseek-slow")
        assert r.status_code == 504, r.text

    def upstream_500(self, i: int, kind: str) -> None:
        r = self.post(i, self.text(i, kind, "[status=500]"))
        assert r.status_code == 502, r.text

    def stalled(self, i: int, kind: str) -> None:
        """A reader that takes the response headers and then reads nothing: once the socket
        buffers are full the gateway's send waits past the stall timeout and it closes the
        upstream (tracked by the mock under the request's nonce)."""
        name = f"{self.marker}-{i}"
        # An answer of 60,000 chunks: more than the socket buffers and the relay hold.
        words = " ".join("w" for _ in range(60_000))
        text = self.text(i, kind, f"[track={name}] {words}")
        sock = stalled_stream(self.gateway, self.key(i).secret, text, TIMEOUT)
        try:
            wait_until(lambda: self.stream_closed_early(name), timeout=2 * TIMEOUT, what=f"stalled reader {i} given up")
        finally:
            sock.close()

    def stream_closed_early(self, name: str) -> bool:
        resp = httpx.get(f"{self.mock.base_url}/_mock/streams/{name}", timeout=TIMEOUT)
        resp.raise_for_status()
        return resp.json()["closed_early"] == 1

    def sigterm_with_restart(self, first: int, held: int) -> None:
        """Requests `first`.. `first + held - 1` (REST JSON and SSE, gRPC unary) held upstream,
        then SIGTERM: the grace (1 s) ends, they are cut and settled, the process exits 0; then
        the gateway restarts on the same database."""
        hold = f"{self.marker}-held"

        def one(i: int) -> None:
            text = self.text(i, "sigterm", f"[hold={hold}]")
            # The answers are cut by the shutdown: only the ledger is asserted.
            try:
                if i % 3 == 0:
                    self.post(i, text)
                elif i % 3 == 1:
                    list(self.rest_events(i, text))
                else:
                    self.inference().Chat(self.proto("deepseek-chat", text), metadata=metadata(self.key(i)), timeout=TIMEOUT)
            except (httpx.HTTPError, grpc.RpcError, AssertionError):
                pass

        threads = [threading.Thread(target=one, args=(i,), daemon=True) for i in range(first, first + held)]
        for t in threads:
            t.start()
        try:
            self.mock.wait_held(hold, lambda status: status["waiting"] == held, what=f"{held} requests held upstream")
            self.gateway.process.proc.send_signal(signal.SIGTERM)
            assert self.gateway.process.proc.wait(timeout=30) == 0
            for t in threads:
                t.join(timeout=TIMEOUT)
        finally:
            self.mock.release(hold)
        self.gateway.start()
        self.reconnect()


def metadata(key: ApiKey) -> list[tuple[str, str]]:
    return [("authorization", f"Bearer {key.secret}")]


def test_200_mixed_requests_with_faults_and_a_restart_balance_the_books(gateway: Gateway, mock: MockUpstream):
    credited = 10 * 10**12
    keys = [gateway.create_key("enterprise", None, "--balance", "10") for _ in range(4)]
    run = Run(gateway, mock, keys)
    held = 4
    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=WORKERS) as pool:
        # map() re-raises the first failure of a request.
        list(pool.map(run.send, range(BEFORE)))
        before = time.monotonic()
        run.sigterm_with_restart(BEFORE, held)
        restarted = time.monotonic()
        list(pool.map(run.send, range(BEFORE + held, TOTAL)))
    run.channel.close()
    print(
        f"fault run: {BEFORE} requests {before - started:.1f} s, SIGTERM and restart {restarted - before:.1f} s, "
        f"{TOTAL - BEFORE - held} more {time.monotonic() - restarted:.1f} s"
    )
    assert len(run.kinds) == TOTAL

    # Admitted: every request reached the upstream (the mock's record), so 200; once each, but an
    # upstream 500, which routing retries up to its max_attempts (3 by default) before answering.
    received = Counter(
        match.group(0)
        for r in mock.requests()
        for match in [re.search(rf"{run.marker}-\d+", json.dumps(r["body"]))]
        if match
    )
    assert received == {nonce: RETRIED_ATTEMPTS if kind == "upstream_500" else 1 for nonce, kind in run.kinds.items()}

    db = gateway.tmp_dir / "tollgate.db"
    marks = ",".join("?" * len(keys))
    ids = [k.key_id for k in keys]

    def rows() -> list[tuple]:
        return sqlite_rows(
            db, f"SELECT request_id, key_id, outcome, estimated, cost_picodollars FROM usage_ledger WHERE key_id IN ({marks})", *ids
        )

    # Streams whose client left settle in the background: wait for the last rows.
    wait_until(lambda: len(rows()) >= TOTAL, timeout=TIMEOUT, what=f"{TOTAL} ledger rows")
    ledger = rows()
    assert len(ledger) == TOTAL == len({r[0] for r in ledger})
    assert sqlite_rows(db, "SELECT COUNT(*) FROM reservations") == [(0,)]

    # Each kind settled the way its policy says: the final count, else a marked estimate; zero
    # unmarked only where the upstream refused before any body.
    def marked(kind: str) -> tuple[str, int]:
        return OUTCOME[kind], 0 if kind in ("upstream_500",) or OUTCOME[kind] == "succeeded" else 1

    assert Counter((r[2], r[3]) for r in ledger) == Counter(marked(k) for k in run.kinds.values())
    costs = {r[0]: r[4] for r in ledger}
    assert {rid: costs.get(rid) for rid in run.answered} == run.answered

    for key in keys:
        listing = key_listing(gateway, key)
        spent = sum(r[4] for r in ledger if r[1] == key.key_id)
        assert listing["spend_total_picodollars"] == spent > 0, listing
        assert listing["spend_month_picodollars"] == spent
        assert listing["reserved_picodollars"] == 0
        assert listing["balance_picodollars"] == credited - spent
