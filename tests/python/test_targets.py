"""The split deployment: `tollgate serve --target rest|inference|catalog|billing` as separate
processes (two inference replicas) on one config file, billing on PostgreSQL and Redis from
scripts/services.sh. Through them: the SDK's chat and stream over REST, gRPC straight to either
inference replica, usage and admin over REST (rest -> billing), and a ledger equal to the answered
costs to the picodollar with no reservation left open. Metering is served only on billing's
internal listener: UNIMPLEMENTED on every public listener, UNAUTHENTICATED there without the peer
token. Health: gRPC health per service, `/livez` and `/readyz` on every target, and readiness
that follows the targets a process dials. Then billing is killed with SIGKILL under load and
restarted: every request is answered or gets a clear error, and the books still balance."""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal
from pathlib import Path

import grpc
import httpx
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from tollgate.v1 import inference_pb2, inference_pb2_grpc, metering_pb2

import datastores
from datastores import POSTGRES_URL, REDIS_URL, psql
from harness import PRICES, PROVIDER_KEY, ApiKey, ManagedProcess, MockUpstream, auth, gateway_config, tollgate_bin, user, wait_until
from mock_rules import cost_picodollars, echo, expected_usage, usage_of
from money_checks import pico

datastores.require()

TIMEOUT = 30
ADMIN_TOKEN = f"e2e-admin-{uuid.uuid4().hex}"
PEER_TOKEN = f"e2e-peer-{uuid.uuid4().hex}"
FLASH = PRICES["deepseek-v4-flash"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Cluster:
    """The four targets as processes on one config file. The [services] addresses are fixed free
    ports (so a restarted billing comes back where its callers dial); listeners nobody dials
    (the metrics ones, rest's) take port 0."""

    def __init__(self, tmp_dir: Path, mock: MockUpstream):
        self.ports = {name: free_port() for name in ("catalog", "billing", "metering", "inference", "inference2")}
        self.config_path = tmp_dir / "tollgate.toml"
        self.config_path.write_text(
            gateway_config(tmp_dir, mock.port)
            + f"""
[admin]
token_env = "TOLLGATE_ADMIN_TOKEN"

[services]
inference = "http://127.0.0.1:{self.ports['inference']}"
catalog = "http://127.0.0.1:{self.ports['catalog']}"
billing = "http://127.0.0.1:{self.ports['billing']}"
metering = "http://127.0.0.1:{self.ports['metering']}"
internal_token_env = "TOLLGATE_INTERNAL_TOKEN"
"""
        )
        base = {k: v for k, v in os.environ.items() if not k.startswith("TOLLGATE")}
        base["RUST_BACKTRACE"] = "1"
        # Each target gets only the secrets it uses, as the k8s manifests give them.
        self.env = {
            "catalog": dict(base),
            "billing": dict(
                base,
                TOLLGATE__DATABASE__URL=POSTGRES_URL,
                TOLLGATE__REDIS__URL=REDIS_URL,
                TOLLGATE_ADMIN_TOKEN=ADMIN_TOKEN,
                TOLLGATE_INTERNAL_TOKEN=PEER_TOKEN,
            ),
            "inference": dict(base, TOLLGATE_INTERNAL_TOKEN=PEER_TOKEN, MOCK_DEEPSEEK_KEY=PROVIDER_KEY, MOCK_OPENAI_KEY=PROVIDER_KEY),
            "rest": dict(base),
        }
        self.procs: dict[str, ManagedProcess] = {}
        self.ready: dict[str, dict[str, str]] = {}
        # Started in the reverse of the dial order on purpose: dials connect lazily.
        self.start("rest", "--http-addr", "127.0.0.1:0")
        self.start("inference", "--grpc-addr", f"127.0.0.1:{self.ports['inference']}", "--metrics-addr", "127.0.0.1:0")
        self.start(
            "inference2", "--grpc-addr", f"127.0.0.1:{self.ports['inference2']}", "--metrics-addr", "127.0.0.1:0", target="inference"
        )
        self.start_billing()
        self.start("catalog", "--grpc-addr", f"127.0.0.1:{self.ports['catalog']}", "--metrics-addr", "127.0.0.1:0")
        self.base_url = f"http://{self.ready['rest']['http']}/v1"

    def start(self, name: str, *addrs: str, target: str | None = None) -> None:
        target = target or name
        argv = [str(tollgate_bin()), "serve", "--config", str(self.config_path), "--target", target, *addrs]
        self.procs[name] = ManagedProcess(f"tollgate-{name}", argv, env=self.env[target])
        self.ready[name] = self.procs[name].wait_ready()

    def start_billing(self) -> None:
        self.start(
            "billing",
            "--grpc-addr",
            f"127.0.0.1:{self.ports['billing']}",
            "--internal-grpc-addr",
            f"127.0.0.1:{self.ports['metering']}",
            "--metrics-addr",
            "127.0.0.1:0",
        )

    def probes(self, name: str) -> str:
        """The base URL of a target's /livez and /readyz."""
        ready = self.ready[name]
        return f"http://{ready.get('metrics') or ready['http']}"

    def readyz(self, name: str) -> httpx.Response:
        return httpx.get(f"{self.probes(name)}/readyz", timeout=10)

    def channel(self, port_name: str) -> grpc.Channel:
        return grpc.insecure_channel(f"127.0.0.1:{self.ports[port_name]}")

    def create_key(self, tier: str = "enterprise", **fields) -> ApiKey:
        """Through REST /admin -> the billing target's Admin service."""
        resp = httpx.post(f"{self.base_url[:-3]}/admin/keys", headers=auth(ADMIN_TOKEN), json={"tier": tier, **fields}, timeout=TIMEOUT)
        assert resp.status_code == 201, resp.text
        body = resp.json()
        return ApiKey(secret=body["secret"], key_id=body["id"], tier=tier, name=body.get("name") or "")

    def logs(self) -> str:
        return "\n".join(p.logs() for p in self.procs.values())

    def stop(self) -> None:
        for proc in self.procs.values():
            proc.stop()


@pytest.fixture(scope="module")
def cluster(mock: MockUpstream, tmp_path_factory: pytest.TempPathFactory):
    c = Cluster(tmp_path_factory.mktemp("targets"), mock)
    wait_until(lambda: all(c.readyz(n).status_code == 200 for n in c.procs), timeout=30, what="every target ready")
    yield c
    c.stop()


def ledger(key: ApiKey) -> tuple[int, int]:
    [[total, rows]] = psql(f"SELECT COALESCE(SUM(cost_picodollars), 0), COUNT(*) FROM usage_ledger WHERE key_id = '{key.key_id}'")
    return int(total), int(rows)


def sdk(cluster: Cluster, key: ApiKey):
    from openai import OpenAI

    return OpenAI(base_url=cluster.base_url, api_key=key.secret, max_retries=0, timeout=TIMEOUT)


def proto_request(text: str, **fields) -> inference_pb2.ChatRequest:
    return inference_pb2.ChatRequest(
        model="deepseek-chat", messages=[inference_pb2.Message(role=inference_pb2.ROLE_USER, text=text)], **fields
    )


def test_chat_stream_grpc_usage_and_the_ledger_through_separate_processes(cluster):
    key = cluster.create_key("enterprise")
    client = sdk(cluster, key)
    costs = []

    text = f"split chat {uuid.uuid4().hex[:8]}"
    resp = client.chat.completions.create(model="deepseek-chat", messages=user(text))
    assert resp.choices[0].message.content == echo(user(text))
    assert usage_of(resp.usage) == expected_usage(user(text), thinking=False)
    costs.append(cost_picodollars(usage_of(resp.usage), FLASH))

    text = f"split stream {uuid.uuid4().hex[:8]}"
    stream = client.chat.completions.create(
        model="deepseek-chat", messages=user(text), stream=True, stream_options={"include_usage": True}
    )
    chunks = list(stream)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == echo(user(text))
    [usage] = [c.usage for c in chunks if c.usage]
    assert usage_of(usage) == expected_usage(user(text), thinking=False)
    costs.append(cost_picodollars(usage_of(usage), FLASH))

    # gRPC straight to each inference replica: both admit and settle through the one billing.
    for replica in ("inference", "inference2"):
        text = f"split grpc {replica} {uuid.uuid4().hex[:8]}"
        with cluster.channel(replica) as channel:
            reply = inference_pb2_grpc.InferenceStub(channel).Chat(
                proto_request(text), metadata=[("authorization", f"Bearer {key.secret}")], timeout=TIMEOUT
            )
        assert reply.choices[0].message.text == echo(user(text))
        costs.append(reply.usage.cost_picodollars)
        assert costs[-1] == cost_picodollars(expected_usage(user(text), thinking=False), FLASH)

    resp = httpx.get(f"{cluster.base_url}/dashboard/billing/usage", headers=auth(key), timeout=TIMEOUT)
    report = json.loads(resp.text, parse_float=Decimal)
    assert report["monthly_requests"] == 4
    assert pico(report["total_cost_usd"]) == sum(costs)
    assert ledger(key) == (sum(costs), 4)
    assert psql(f"SELECT COUNT(*) FROM reservations WHERE key_id = '{key.key_id}'") == [["0"]]

    listed = httpx.get(f"{cluster.base_url[:-3]}/admin/keys", headers=auth(ADMIN_TOKEN), timeout=TIMEOUT)
    assert listed.status_code == 200 and key.key_id in {k["id"] for k in listed.json()["data"]}


def test_models_come_from_the_catalog_target(cluster):
    models = httpx.get(f"{cluster.base_url}/models", timeout=TIMEOUT).json()
    assert "deepseek-v4-flash" in {m["id"] for m in models["data"]}


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


@pytest.mark.parametrize("method", sorted(METERING_CALLS))
def test_metering_is_internal_and_wants_the_peer_token(cluster, method):
    key = cluster.create_key("enterprise")
    bearer = [("authorization", f"Bearer {key.secret}")]
    for public in ("billing", "inference", "inference2", "catalog"):
        with cluster.channel(public) as channel:
            with pytest.raises(grpc.RpcError) as err:
                metering_call(channel, method, bearer + [("x-tollgate-peer-token", PEER_TOKEN)])
        assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED, public
    with cluster.channel("metering") as channel:
        for token in (None, PEER_TOKEN[:-1] + "x", "", ADMIN_TOKEN):
            metadata = bearer + ([("x-tollgate-peer-token", token)] if token is not None else [])
            with pytest.raises(grpc.RpcError) as err:
                metering_call(channel, method, metadata)
            assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED, token
    if method == "Authenticate":
        with cluster.channel("metering") as channel:
            info = metering_call(channel, method, bearer + [("x-tollgate-peer-token", PEER_TOKEN)])
        assert info.key_id == key.key_id
    assert ledger(key) == (0, 0)


@pytest.mark.parametrize(
    "port_name,service",
    [
        ("inference", "tollgate.v1.Inference"),
        ("catalog", "tollgate.v1.Catalog"),
        ("billing", "tollgate.v1.Billing"),
        ("billing", "tollgate.v1.Admin"),
        ("metering", "tollgate.v1.Metering"),
    ],
)
def test_grpc_health_per_service(cluster, port_name, service):
    with cluster.channel(port_name) as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=service), timeout=TIMEOUT)
    assert reply.status == health_pb2.HealthCheckResponse.SERVING


REFLECTION_AND_HEALTH = {
    "grpc.health.v1.Health",
    "grpc.reflection.v1.ServerReflection",
    "grpc.reflection.v1alpha.ServerReflection",
}


@pytest.mark.parametrize(
    ("port_name", "services"),
    [
        ("inference", {"tollgate.v1.Inference"}),
        ("catalog", {"tollgate.v1.Catalog"}),
        ("billing", {"tollgate.v1.Billing", "tollgate.v1.Admin"}),
        ("metering", {"tollgate.v1.Metering"}),
    ],
)
def test_reflection_lists_what_each_listener_serves(cluster, port_name, services):
    from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

    with cluster.channel(port_name) as channel:
        listed = set(ProtoReflectionDescriptorDatabase(channel).get_services())
    assert listed == services | REFLECTION_AND_HEALTH


def test_livez_and_readyz_name_what_each_target_depends_on(cluster):
    want = {
        "rest": {"inference", "catalog", "billing"},
        "inference": {"catalog", "metering"},
        "inference2": {"catalog", "metering"},
        "catalog": set(),
        "billing": {"database", "redis", "catalog"},
    }
    for name, checks in want.items():
        assert httpx.get(f"{cluster.probes(name)}/livez", timeout=10).status_code == 200
        resp = cluster.readyz(name)
        assert resp.status_code == 200, resp.text
        body = resp.json()
        assert body["ready"] is True and body["draining"] is False
        assert body["checks"] == {c: "ok" for c in checks}, name


def chat(cluster: Cluster, key: ApiKey, text: str, stream: bool) -> tuple[int, str, int | None]:
    """One request through rest; (status, error code or "", cost in picodollars when answered)."""
    body = {"model": "deepseek-chat", "messages": user(text), "max_tokens": 50}
    url = f"{cluster.base_url}/chat/completions"
    try:
        if not stream:
            r = httpx.post(url, headers=auth(key), json=body, timeout=60)
            if r.status_code != 200:
                return r.status_code, r.json()["error"].get("code") or r.json()["error"]["type"], None
            return 200, "", pico(json.loads(r.text, parse_float=Decimal)["usage"]["cost"])
        body.update(stream=True, stream_options={"include_usage": True})
        with httpx.stream("POST", url, headers=auth(key), json=body, timeout=60) as r:
            if r.status_code != 200:
                r.read()
                return r.status_code, r.json()["error"].get("code") or r.json()["error"]["type"], None
            cost = None
            error = ""
            for line in r.iter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                event = json.loads(line[6:], parse_float=Decimal)
                if "error" in event:
                    error = event["error"].get("code") or event["error"]["type"]
                elif event.get("usage") and "cost" in event["usage"]:
                    cost = pico(event["usage"]["cost"])
            return (200, error, cost if not error else None)
    except httpx.HTTPError as e:
        return 0, type(e).__name__, None


def test_billing_killed_mid_load_and_restarted_keeps_the_books(cluster):
    """SIGKILL billing while requests flow (JSON and streams, on a prepaid key, so every one
    holds a reservation), then restart it: every request is answered (and billed) or refused
    with a clear error, nothing hangs; afterwards the ledger equals the answered requests' costs
    to the picodollar, one row each, and no reservation is left open."""
    key = cluster.create_key("enterprise", balance_usd="5")
    results: list[tuple[float, int, str, int | None]] = []
    lock = threading.Lock()
    stop = threading.Event()

    def load(worker: int) -> None:
        for i in range(500):
            if stop.is_set():
                return
            result = chat(cluster, key, f"load {worker} {i} {uuid.uuid4().hex[:6]}", stream=i % 2 == 1)
            with lock:
                results.append((time.monotonic(), *result))

    def answered_since(t: float) -> int:
        with lock:
            return sum(1 for at, status, code, _ in results if at >= t and status == 200 and not code)

    with ThreadPoolExecutor(max_workers=4) as pool:
        workers = [pool.submit(load, w) for w in range(4)]
        wait_until(lambda: answered_since(0) >= 20, timeout=60, what="20 answered requests before the kill")
        cluster.procs["billing"].proc.kill()
        cluster.procs["billing"].proc.wait(timeout=10)
        killed_at = time.monotonic()
        # Inference notices: its readiness names the unreachable metering.
        wait_until(lambda: cluster.readyz("inference").status_code == 503, timeout=30, what="inference unready without billing")
        assert cluster.readyz("inference").json()["checks"]["metering"] != "ok"
        cluster.start_billing()
        serving_at = time.monotonic()
        wait_until(lambda: answered_since(serving_at) >= 20, timeout=60, what="20 answered requests after the restart")
        stop.set()
        for w in workers:
            w.result(timeout=120)

    answered = [r for r in results if r[1] == 200 and not r[2]]
    failed = [r for r in results if not (r[1] == 200 and not r[2])]
    first_after = min((at for at, status, code, _ in answered if at >= killed_at), default=None)
    print(
        f"\nfault run: {len(results)} requests, {len(answered)} answered, {len(failed)} errors "
        f"{sorted({(s, c) for _, s, c, _ in failed})}; billing READY {serving_at - killed_at:.2f}s after the kill, "
        f"first answer after the kill at +{(first_after or killed_at) - killed_at:.2f}s"
    )
    assert all(r[3] is not None for r in answered)
    # Errors are clear ones (503 from an admission that outlived its retries, an in-band error),
    # never a dropped connection or a bare 500.
    for _, status, code, _ in failed:
        assert status in (200, 503, 504) and code not in ("internal_error", ""), (status, code)
    assert ledger(key) == (sum(r[3] for r in answered), len(answered))
    assert psql(f"SELECT COUNT(*) FROM reservations WHERE key_id = '{key.key_id}'") == [["0"]]


def test_the_monolith_answers_livez_and_readyz_on_its_rest_listener(gateway):
    """`--target all` (the default): the probes sit beside REST; ready = its database answers."""
    assert httpx.get(f"{gateway.http_base}/livez", timeout=10).status_code == 200
    resp = httpx.get(f"{gateway.http_base}/readyz", timeout=10)
    assert resp.status_code == 200, resp.text
    assert resp.json() == {"ready": True, "draining": False, "checks": {"database": "ok"}}
