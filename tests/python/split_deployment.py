"""What the split-deployment tests share (test_targets.py: one config file written for the test;
test_cluster.py: the rendered k8s microservices overlay): `tollgate serve --target ...` processes
by name, keys created through REST /admin, one request through a rest replica as the load
generators send it, Metering calls, the ledger of a key, and a steady mixed load whose results are
kept with their times for the fault figures."""

from __future__ import annotations

import json
import socket
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal
from pathlib import Path
from typing import Callable

import grpc
import httpx
from tollgate.v1 import inference_pb2, metering_pb2

from datastores import psql
from harness import ApiKey, ManagedProcess, auth, tollgate_bin, user
from money_checks import pico

TIMEOUT = 30


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Targets:
    """Named `tollgate` processes on one config file, each with its own environment; `ready`
    holds each one's READY fields (its bound listeners)."""

    def __init__(self, config_path: Path, admin_token: str):
        self.config_path = config_path
        self.admin_token = admin_token
        self.procs: dict[str, ManagedProcess] = {}
        self.ready: dict[str, dict[str, str]] = {}

    def spawn(self, name: str, argv: list[str], env: dict[str, str]) -> ManagedProcess:
        """Starts `argv` as `name`; call wait_ready on it (several may start at once)."""
        self.procs[name] = ManagedProcess(f"tollgate-{name}", argv, env=env)
        return self.procs[name]

    def start(self, name: str, target: str, *args: str, env: dict[str, str]) -> None:
        argv = [str(tollgate_bin()), "serve", "--config", str(self.config_path), "--target", target, *args]
        self.spawn(name, argv, env)
        self.ready[name] = self.procs[name].wait_ready()

    def probes(self, name: str) -> str:
        """The base URL of a target's /livez and /readyz."""
        ready = self.ready[name]
        return f"http://{ready.get('metrics') or ready['http']}"

    def readyz(self, name: str) -> httpx.Response:
        return httpx.get(f"{self.probes(name)}/readyz", timeout=10)

    def rest_url(self, name: str) -> str:
        """The /v1 base URL of a rest (or all) target."""
        return f"http://{self.ready[name]['http']}/v1"

    def create_key(self, rest: str, tier: str = "enterprise", **fields) -> ApiKey:
        """Through REST /admin of the rest target `rest` -> the billing target's Admin service."""
        resp = httpx.post(
            f"{self.rest_url(rest)[:-3]}/admin/keys", headers=auth(self.admin_token), json={"tier": tier, **fields}, timeout=TIMEOUT
        )
        assert resp.status_code == 201, resp.text
        body = resp.json()
        return ApiKey(secret=body["secret"], key_id=body["id"], tier=tier, name=body.get("name") or "")

    def logs(self) -> str:
        return "\n".join(p.logs() for p in self.procs.values())

    def stop(self) -> None:
        for proc in self.procs.values():
            proc.stop()


def ledger(key: ApiKey) -> tuple[int, int]:
    """(total cost in picodollars, rows) of a key's ledger."""
    [[total, rows]] = psql(f"SELECT COALESCE(SUM(cost_picodollars), 0), COUNT(*) FROM usage_ledger WHERE key_id = '{key.key_id}'")
    return int(total), int(rows)


def ledger_rows(key: ApiKey) -> dict[str, int]:
    """request id -> cost in picodollars, for every ledger row of a key."""
    return {rid: int(cost) for rid, cost in psql(f"SELECT request_id, cost_picodollars FROM usage_ledger WHERE key_id = '{key.key_id}'")}


def open_reservations(key: ApiKey) -> list[str]:
    return [rid for [rid] in psql(f"SELECT request_id FROM reservations WHERE key_id = '{key.key_id}'")]


def sdk(base_url: str, key: ApiKey):
    from openai import OpenAI

    return OpenAI(base_url=base_url, api_key=key.secret, max_retries=0, timeout=TIMEOUT)


def proto_request(text: str, **fields) -> inference_pb2.ChatRequest:
    return inference_pb2.ChatRequest(
        model="deepseek-chat", messages=[inference_pb2.Message(role=inference_pb2.ROLE_USER, text=text)], **fields
    )


METERING_CALLS = {
    "Settle": (metering_pb2.SettleRequest(request_id="chatcmpl-x", key_id="k", model_id="deepseek-v4-flash"), metering_pb2.Settlement),
    "Admit": (metering_pb2.AdmitRequest(request_id="chatcmpl-x", model="deepseek-chat", model_id="deepseek-v4-flash"), metering_pb2.Admission),
    "Authenticate": (metering_pb2.AuthenticateRequest(), metering_pb2.KeyInfo),
    "InvalidateKey": (metering_pb2.InvalidateKeyRequest(key_id="k"), metering_pb2.InvalidateKeyResponse),
}


def metering_call(channel: grpc.Channel, method: str, metadata: list[tuple[str, str]]):
    request, response = METERING_CALLS[method]
    call = channel.unary_unary(
        f"/tollgate.v1.Metering/{method}", request_serializer=type(request).SerializeToString, response_deserializer=response.FromString
    )
    return call(request, metadata=metadata, timeout=TIMEOUT)


def chat(base_url: str, key: ApiKey, text: str, stream: bool) -> tuple[int, str, int | None, str]:
    """One request through a rest target; (status, error code or "", cost in picodollars when
    answered, response id when there was one)."""
    body = {"model": "deepseek-chat", "messages": user(text), "max_tokens": 50}
    url = f"{base_url}/chat/completions"
    try:
        if not stream:
            r = httpx.post(url, headers=auth(key), json=body, timeout=60)
            if r.status_code != 200:
                return r.status_code, r.json()["error"].get("code") or r.json()["error"]["type"], None, ""
            answer = json.loads(r.text, parse_float=Decimal)
            return 200, "", pico(answer["usage"]["cost"]), answer["id"]
        body.update(stream=True, stream_options={"include_usage": True})
        with httpx.stream("POST", url, headers=auth(key), json=body, timeout=60) as r:
            if r.status_code != 200:
                r.read()
                return r.status_code, r.json()["error"].get("code") or r.json()["error"]["type"], None, ""
            cost = None
            error = ""
            rid = ""
            for line in r.iter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                event = json.loads(line[6:], parse_float=Decimal)
                rid = event.get("id") or rid
                if "error" in event:
                    error = event["error"].get("code") or event["error"]["type"]
                elif event.get("usage") and "cost" in event["usage"]:
                    cost = pico(event["usage"]["cost"])
            return (200, error, cost if not error else None, rid)
    except httpx.HTTPError as e:
        return 0, type(e).__name__, None, ""


class Load:
    """`workers` threads sending requests (JSON and streams alternately) through the rest base
    URL `pick(worker, i)` returns, at most `per_worker` each, until `stop`. Each result is kept as
    (started, finished, base URL, status, error code, cost, response id)."""

    def __init__(self, key: ApiKey, pick: Callable[[int, int], str], workers: int = 4, per_worker: int = 2000):
        self.key = key
        self.pick = pick
        self.results: list[tuple[float, float, str, int, str, int | None, str]] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._pool = ThreadPoolExecutor(max_workers=workers)
        self._workers = [self._pool.submit(self._run, w, per_worker) for w in range(workers)]

    def _run(self, worker: int, per_worker: int) -> None:
        for i in range(per_worker):
            if self._stop.is_set():
                return
            base_url = self.pick(worker, i)
            started = time.monotonic()
            result = chat(base_url, self.key, f"load {worker} {i} {uuid.uuid4().hex[:6]}", stream=i % 2 == 1)
            with self._lock:
                self.results.append((started, time.monotonic(), base_url, *result))

    def answered_since(self, t: float) -> int:
        """Requests started at or after `t` that were answered."""
        with self._lock:
            return sum(1 for r in self.results if r[0] >= t and answered(r))

    def stop(self) -> None:
        self._stop.set()
        for w in self._workers:
            w.result(timeout=180)
        self._pool.shutdown()


def answered(result: tuple) -> bool:
    """A load result answered in full (200 without an in-band error)."""
    return result[3] == 200 and not result[4]
