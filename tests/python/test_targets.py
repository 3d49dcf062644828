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
import time
import uuid
from decimal import Decimal
from pathlib import Path

import grpc
import httpx
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from tollgate.v1 import inference_pb2_grpc

import datastores
from datastores import POSTGRES_URL, REDIS_URL, psql
from harness import PRICES, PROVIDER_KEY, ApiKey, MockUpstream, auth, gateway_config, user, wait_until
from mock_rules import cost_picodollars, echo, expected_usage, usage_of
from money_checks import pico
from prometheus_text import scrape, total
from split_deployment import METERING_CALLS, TIMEOUT, Load, Targets, answered, free_port, ledger, metering_call, proto_request, sdk

datastores.require()

ADMIN_TOKEN = f"e2e-admin-{uuid.uuid4().hex}"
PEER_TOKEN = f"e2e-peer-{uuid.uuid4().hex}"
FLASH = PRICES["deepseek-v4-flash"]


class Cluster(Targets):
    """The four targets as processes on one config file. The [services] addresses are fixed free
    ports (so a restarted billing comes back where its callers dial); listeners nobody dials
    (the metrics ones, rest's) take port 0. Rest balances over both inference replicas."""

    def __init__(self, tmp_dir: Path, mock: MockUpstream):
        super().__init__(tmp_dir / "tollgate.toml", ADMIN_TOKEN)
        self.ports = {name: free_port() for name in ("catalog", "billing", "metering", "inference", "inference2")}
        self.config_path.write_text(
            gateway_config(tmp_dir, mock.port)
            + f"""
[admin]
token_env = "TOLLGATE_ADMIN_TOKEN"

[services]
inference = ["http://127.0.0.1:{self.ports['inference']}", "http://127.0.0.1:{self.ports['inference2']}"]
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
        # Started in the reverse of the dial order on purpose: dials connect lazily.
        self.start("rest", "--http-addr", "127.0.0.1:0")
        self.start("inference", "--grpc-addr", f"127.0.0.1:{self.ports['inference']}", "--metrics-addr", "127.0.0.1:0")
        self.start(
            "inference2", "--grpc-addr", f"127.0.0.1:{self.ports['inference2']}", "--metrics-addr", "127.0.0.1:0", target="inference"
        )
        self.start_billing()
        self.start("catalog", "--grpc-addr", f"127.0.0.1:{self.ports['catalog']}", "--metrics-addr", "127.0.0.1:0")
        self.base_url = self.rest_url("rest")

    def start(self, name: str, *addrs: str, target: str | None = None) -> None:
        target = target or name
        super().start(name, target, *addrs, env=self.env[target])

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

    def channel(self, port_name: str) -> grpc.Channel:
        return grpc.insecure_channel(f"127.0.0.1:{self.ports[port_name]}")

    def create_key(self, tier: str = "enterprise", **fields):
        return super().create_key("rest", tier, **fields)


@pytest.fixture(scope="module")
def cluster(mock: MockUpstream, tmp_path_factory: pytest.TempPathFactory):
    c = Cluster(tmp_path_factory.mktemp("targets"), mock)
    wait_until(lambda: all(c.readyz(n).status_code == 200 for n in c.procs), timeout=30, what="every target ready")
    yield c
    c.stop()


def test_chat_stream_grpc_usage_and_the_ledger_through_separate_processes(cluster):
    key = cluster.create_key("enterprise")
    client = sdk(cluster.base_url, key)
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


def test_every_target_serves_metrics_and_records_its_own_events(cluster):
    """Each target's /metrics (metrics_addr; rest's REST listener) holds what happens there:
    requests and upstream calls in inference, settlements, tokens and refusals in billing."""
    key = cluster.create_key("enterprise")
    sdk(cluster.base_url, key).chat.completions.create(model="deepseek-chat", messages=user(f"split metrics {uuid.uuid4().hex[:8]}"))
    import openai

    with pytest.raises(openai.AuthenticationError):
        sdk(cluster.base_url, ApiKey(secret="sk-not-a-key-of-this-cluster", key_id=None, tier="", name="")).chat.completions.create(
            model="deepseek-chat", messages=user("split metrics refused")
        )
    # Rest spreads its calls over both inference replicas: the request is in one of them.
    inference = [scrape(cluster.probes(name)) for name in ("inference", "inference2")]
    assert sum(total(m, "tollgate_requests_total", status="ok", model="deepseek-v4-flash") for m in inference) >= 1
    assert sum(total(m, "tollgate_upstream_requests_total", provider="deepseek", outcome="ok") for m in inference) >= 1
    assert all("tollgate_settlements_total" not in m for m in inference)
    billing = scrape(cluster.probes("billing"))
    assert total(billing, "tollgate_settlements_total", kind="final") >= 1
    assert total(billing, "tollgate_tokens_total", model="deepseek-v4-flash", kind="prompt") > 0
    assert total(billing, "tollgate_admission_refusals_total", reason="invalid_key") >= 1
    assert "tollgate_requests_total" not in billing
    for name in ("catalog", "rest"):
        assert total(scrape(cluster.probes(name)), "process_resident_memory_bytes") > 0, name


def test_models_come_from_the_catalog_target(cluster):
    models = httpx.get(f"{cluster.base_url}/models", timeout=TIMEOUT).json()
    assert "deepseek-v4-flash" in {m["id"] for m in models["data"]}


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


def test_billing_killed_mid_load_and_restarted_keeps_the_books(cluster):
    """SIGKILL billing while requests flow (JSON and streams, on a prepaid key, so every one
    holds a reservation), then restart it: every request is answered (and billed) or refused
    with a clear error, nothing hangs; afterwards the ledger equals the answered requests' costs
    to the picodollar, one row each, and no reservation is left open."""
    key = cluster.create_key("enterprise", balance_usd="5")
    load = Load(key, lambda worker, i: cluster.base_url)
    try:
        wait_until(lambda: load.answered_since(0) >= 20, timeout=60, what="20 answered requests before the kill")
        cluster.procs["billing"].proc.kill()
        cluster.procs["billing"].proc.wait(timeout=10)
        killed_at = time.monotonic()
        # Inference notices: its readiness names the unreachable metering.
        wait_until(lambda: cluster.readyz("inference").status_code == 503, timeout=30, what="inference unready without billing")
        assert cluster.readyz("inference").json()["checks"]["metering"] != "ok"
        cluster.start_billing()
        serving_at = time.monotonic()
        wait_until(lambda: load.answered_since(serving_at) >= 20, timeout=60, what="20 answered requests after the restart")
    finally:
        load.stop()

    results = load.results
    done = [r for r in results if answered(r)]
    failed = [r for r in results if not answered(r)]
    first_after = min((r[1] for r in done if r[1] >= killed_at), default=None)
    print(
        f"\nfault run: {len(results)} requests, {len(done)} answered, {len(failed)} errors "
        f"{sorted({(r[3], r[4]) for r in failed})}; billing READY {serving_at - killed_at:.2f}s after the kill, "
        f"first answer after the kill at +{(first_after or killed_at) - killed_at:.2f}s"
    )
    assert all(r[5] is not None for r in done)
    # Errors are clear ones (503 from an admission that outlived its retries, an in-band error),
    # never a dropped connection or a bare 500.
    for r in failed:
        assert r[3] in (200, 503, 504) and r[4] not in ("internal_error", ""), (r[3], r[4])
    assert ledger(key) == (sum(r[5] for r in done), len(done))
    assert psql(f"SELECT COUNT(*) FROM reservations WHERE key_id = '{key.key_id}'") == [["0"]]


def test_the_monolith_answers_livez_and_readyz_on_its_rest_listener(gateway):
    """`--target all` (the default): the probes sit beside REST; ready = its database answers."""
    assert httpx.get(f"{gateway.http_base}/livez", timeout=10).status_code == 200
    resp = httpx.get(f"{gateway.http_base}/readyz", timeout=10)
    assert resp.status_code == 200, resp.text
    assert resp.json() == {"ready": True, "draining": False, "checks": {"database": "ok"}}
