"""The microservices overlay as a cluster on one machine. `kubectl kustomize k8s/overlays/microservices`
is rendered and each Deployment's container is run as local processes exactly as written (its
command and args, its env with the Secret references filled from k8s/secrets.example.yaml's keys
with test values, the ConfigMap's tollgate.toml at the mounted path): two rest, two inference,
one catalog, one billing, on PostgreSQL and Redis from scripts/services.sh, after the migration
Job's command.

What the cluster DNS and the pod IPs do is done with addresses only, and only those change:
- the ConfigMap's tollgate.toml is copied with each [services] URL, which names a headless Service,
  replaced by the list of the local replicas that Service selects (what the name resolves to in the
  cluster), and each provider's base_url pointed at the mock upstream (path kept); the test checks
  that nothing else in the file differs;
- each process gets its listeners as `TOLLGATE__SERVER__<LISTENER>=127.0.0.1:<free port>` (its "pod
  IP"), the config's ports being the same in every pod.
The rest Service (a ClusterIP in front of REST) is the test's clients alternating over the live rest
replicas.

Against it: the SDK's chat and stream through both rest replicas, gRPC to both inference replicas,
usage and admin, RPM and monthly quota exact across the rest replicas, Metering refused on public
listeners and without the peer token. Then under a steady mixed load: kill -9 billing and restart
it, kill -9 one inference replica, SIGTERM one rest replica (it drains): every request answered or
refused clearly, the ledger equal to the answered costs to the picodollar, nothing answered left
reserved (only a request cut by the inference kill may hold its reservation until it expires), and
the figures printed."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
import tomllib
import uuid
from copy import deepcopy
from pathlib import Path
from urllib.parse import urlsplit

import grpc
import httpx
import pytest
from tollgate.v1 import inference_pb2_grpc

import datastores
from datastores import POSTGRES_URL, REDIS_URL
from harness import PROVIDER_KEY, MockUpstream, auth, nonce, tollgate_bin, wait_until
from k8s_manifests import (
    BINARY,
    CONFIG_DIR,
    CONFIG_KEY,
    TARGETS,
    config_text,
    container_port,
    deployments_by_target,
    load_example_secrets,
    main_container,
    named,
    of_kind,
    pod_labels,
    render,
    selects,
)
from mock_rules import echo, expected_usage, usage_of
from money_checks import fire_together
from split_deployment import (
    METERING_CALLS,
    TIMEOUT,
    Load,
    Targets,
    answered,
    free_port,
    ledger,
    ledger_rows,
    metering_call,
    open_reservations,
    proto_request,
    sdk,
)

datastores.require()

OVERLAY = "microservices"
REPLICAS = {"catalog": 1, "billing": 1, "inference": 2, "rest": 2}
ADMIN_TOKEN = f"e2e-admin-{uuid.uuid4().hex}"
PEER_TOKEN = f"e2e-peer-{uuid.uuid4().hex}"
# The test values of the Secrets the manifests reference (every key is in secrets.example.yaml).
SECRET_VALUES = {
    ("tollgate-datastores", "TOLLGATE__DATABASE__URL"): POSTGRES_URL,
    ("tollgate-datastores", "TOLLGATE__REDIS__URL"): REDIS_URL,
    ("tollgate-admin-token", "TOLLGATE_ADMIN_TOKEN"): ADMIN_TOKEN,
    ("tollgate-internal-token", "TOLLGATE_INTERNAL_TOKEN"): PEER_TOKEN,
    ("tollgate-provider-keys", "DEEPSEEK_API_KEY"): PROVIDER_KEY,
}
# The pause a rest pod's preStop gives (in the cluster: until its endpoint leaves the Service);
# here the clients stop picking it at once, so a moment covers the requests already on their way.
PRESTOP_PAUSE_SECS = 1.0


def secret_value(ref: dict, examples: dict[str, dict]) -> str | None:
    """A secretKeyRef's value: the test value, else the example's; None for an optional absent one."""
    name, key = ref["name"], ref["key"]
    assert key in examples[name]["stringData"], f"Secret {name} has no key {key} in secrets.example.yaml"
    if (name, key) in SECRET_VALUES:
        return SECRET_VALUES[(name, key)]
    return None if ref.get("optional") else examples[name]["stringData"][key]


def container_env(container: dict, examples: dict[str, dict]) -> dict[str, str]:
    env = {}
    for e in container.get("env", []):
        if "value" in e:
            env[e["name"]] = e["value"]
        else:
            value = secret_value(e["valueFrom"]["secretKeyRef"], examples)
            if value is not None:
                env[e["name"]] = value
    return env


def local_command(container: dict, config_dir: Path) -> list[str]:
    """The container's command and args, the image's binary and the mounted ConfigMap mapped to
    their local paths."""
    command = container["command"]
    assert command[0] == BINARY
    return [str(tollgate_bin()), *command[1:], *(a.replace(CONFIG_DIR, str(config_dir)) for a in container.get("args", []))]


class K8sCluster(Targets):
    def __init__(self, tmp_dir: Path, mock: MockUpstream):
        objects = render(OVERLAY)
        written = config_text(objects)
        cfg = tomllib.loads(written)
        config_dir = tmp_dir / "etc-tollgate"
        config_dir.mkdir()
        super().__init__(config_dir / CONFIG_KEY, ADMIN_TOKEN)
        self.deployments = deployments_by_target(objects)
        examples = load_example_secrets()
        listener_ports = {name: int(addr.rsplit(":", 1)[1]) for name, addr in cfg["server"].items() if name.endswith("_addr")}

        # The pods: name -> (target, {listener: local port}).
        self.pods: dict[str, tuple[str, dict[str, int]]] = {}
        for target, n in REPLICAS.items():
            for i in range(n):
                self.pods[f"{target}-{i}"] = (target, {listener: free_port() for listener in TARGETS[target]["listeners"]})

        # What each [services] URL resolves to: the replicas its headless Service selects, on the
        # listener its port reaches.
        services = named(objects, "Service")
        resolved: dict[str, list[str]] = {}
        for key, url in cfg["services"].items():
            if not (isinstance(url, str) and url.startswith("http://")):
                continue
            parts = urlsplit(url)
            service = services[parts.hostname]
            assert service["spec"].get("clusterIP") == "None", f"{parts.hostname} is not headless"
            [port] = [p for p in service["spec"]["ports"] if p["port"] == parts.port]
            [target] = [t for t, d in self.deployments.items() if selects({"matchLabels": service["spec"]["selector"]}, pod_labels(d))]
            served = container_port(main_container(self.deployments[target]), port.get("targetPort", port["port"]))
            [listener] = [name for name, p in listener_ports.items() if p == served and name in TARGETS[target]["listeners"]]
            resolved[key] = [f"http://127.0.0.1:{ports[listener]}" for t, ports in self.pods.values() if t == target]

        derived = rewrite_addresses(written, resolved, mock.base_url)
        check_only_addresses_differ(cfg, tomllib.loads(derived), resolved)
        self.config_path.write_text(derived)

        base = {k: v for k, v in os.environ.items() if not k.startswith("TOLLGATE")}
        base["RUST_BACKTRACE"] = "1"
        # The migration Job first, as the rollout does.
        [job] = of_kind(objects, "Job")
        job_container = main_container(job)
        migrated = subprocess.run(
            local_command(job_container, config_dir),
            env={**base, **container_env(job_container, examples)},
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert migrated.returncode == 0, migrated.stderr

        self.commands: dict[str, tuple[list[str], dict[str, str]]] = {}
        for pod, (target, ports) in self.pods.items():
            container = main_container(self.deployments[target])
            pod_ip = {f"TOLLGATE__SERVER__{listener.upper()}": f"127.0.0.1:{port}" for listener, port in ports.items()}
            self.commands[pod] = (local_command(container, config_dir), {**base, **container_env(container, examples), **pod_ip})
        for pod in self.pods:
            self.spawn(pod, *self.commands[pod])
        for pod in self.pods:
            self.ready[pod] = self.procs[pod].wait_ready()
        self.live_rest = [p for p in self.pods if p.startswith("rest-")]

    def restart(self, pod: str) -> None:
        self.spawn(pod, *self.commands[pod])
        self.ready[pod] = self.procs[pod].wait_ready()

    def grpc_port(self, pod: str, listener: str = "grpc_addr") -> int:
        return self.pods[pod][1][listener]

    def channel(self, pod: str, listener: str = "grpc_addr") -> grpc.Channel:
        return grpc.insecure_channel(f"127.0.0.1:{self.grpc_port(pod, listener)}")

    def rest(self, i: int) -> str:
        """The /v1 base URL of the live rest replica `i` (modulo their number): the rest Service."""
        return self.rest_url(self.live_rest[i % len(self.live_rest)])


def rewrite_addresses(text: str, resolved: dict[str, list[str]], mock_url: str) -> str:
    """The config text with each resolved [services] URL replaced by its replicas' list and each
    provider's base_url moved to the mock (scheme and host only; the path stays)."""
    out = []
    section = ""
    for line in text.splitlines():
        header = re.match(r"^\s*\[+([^\]]+)\]+", line)
        if header:
            section = header.group(1).strip()
        key = re.match(r'^(\w+)\s*=\s*"([^"]*)"', line)
        if key and section == "services" and key.group(1) in resolved:
            urls = ", ".join('"' + url + '"' for url in resolved[key.group(1)])
            line = f"{key.group(1)} = [{urls}]"
        elif key and section == "providers" and key.group(1) == "base_url":
            path = urlsplit(key.group(2)).path
            line = f'base_url = "{mock_url}{path}"'
        out.append(line)
    return "\n".join(out) + "\n"


def check_only_addresses_differ(written: dict, derived: dict, resolved: dict[str, list[str]]) -> None:
    expected = deepcopy(written)
    for key, urls in resolved.items():
        expected["services"][key] = urls
    for provider, local in zip(expected["providers"], derived["providers"]):
        assert urlsplit(local["base_url"]).path == urlsplit(provider["base_url"]).path
        provider["base_url"] = local["base_url"]
    assert derived == expected, "the local config differs from the ConfigMap in more than addresses"


@pytest.fixture(scope="module")
def cluster(mock: MockUpstream, tmp_path_factory: pytest.TempPathFactory):
    c = K8sCluster(tmp_path_factory.mktemp("cluster"), mock)
    try:
        wait_until(lambda: all(c.readyz(p).status_code == 200 for p in c.pods), timeout=30, what="every pod ready")
        yield c
    finally:
        c.stop()


def test_chat_stream_grpc_usage_and_admin_through_the_replicas(cluster):
    key = cluster.create_key("rest-0", "enterprise")
    for i in range(2):
        client = sdk(cluster.rest(i), key)
        text = f"cluster chat {i} {nonce()}"
        resp = client.chat.completions.create(model="deepseek-chat", messages=[{"role": "user", "content": text}])
        assert resp.choices[0].message.content == echo([{"role": "user", "content": text}])
        text = f"cluster stream {i} {nonce()}"
        chunks = list(
            client.chat.completions.create(
                model="deepseek-chat",
                messages=[{"role": "user", "content": text}],
                stream=True,
                stream_options={"include_usage": True},
            )
        )
        assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == echo([{"role": "user", "content": text}])
        [usage] = [c.usage for c in chunks if c.usage]
        assert usage_of(usage) == expected_usage([{"role": "user", "content": text}], thinking=False)
    for pod in ("inference-0", "inference-1"):
        text = f"cluster grpc {pod} {nonce()}"
        with cluster.channel(pod) as channel:
            reply = inference_pb2_grpc.InferenceStub(channel).Chat(
                proto_request(text), metadata=[("authorization", f"Bearer {key.secret}")], timeout=TIMEOUT
            )
        assert reply.choices[0].message.text == echo([{"role": "user", "content": text}])
    for i in range(2):
        report = httpx.get(f"{cluster.rest(i)}/dashboard/billing/usage", headers=auth(key), timeout=TIMEOUT).json()
        assert report["monthly_requests"] == 6
    assert ledger(key)[1] == 6
    assert open_reservations(key) == []
    listed = httpx.get(f"{cluster.rest(1)[:-3]}/admin/keys", headers=auth(ADMIN_TOKEN), timeout=TIMEOUT)
    assert listed.status_code == 200 and key.key_id in {k["id"] for k in listed.json()["data"]}


def codes(responses: list[httpx.Response]) -> list[str]:
    return sorted((str(r.status_code) if r.status_code == 200 else r.json()["error"]["code"] for r in responses), key=lambda c: (c != "200", c))


def through_both(cluster, key, n: int, text: str) -> list[httpx.Response]:
    body = lambda i: {"model": "deepseek-chat", "messages": [{"role": "user", "content": f"{text} {i}"}], "max_tokens": 20}
    return fire_together(n, lambda i: httpx.post(f"{cluster.rest(i)}/chat/completions", headers=auth(key), json=body(i), timeout=60))


def test_rpm_and_monthly_quota_hold_exactly_across_the_rest_replicas(cluster):
    key = cluster.create_key("rest-0", "basic", rpm=3)
    assert codes(through_both(cluster, key, 10, f"rpm {nonce()}")) == ["200"] * 3 + ["rate_limit_exceeded"] * 7
    key = cluster.create_key("rest-1", "basic", monthly_requests=5)
    assert codes(through_both(cluster, key, 12, f"month {nonce()}")) == ["200"] * 5 + ["monthly_quota_exceeded"] * 7
    for i in range(2):
        report = httpx.get(f"{cluster.rest(i)}/dashboard/billing/usage", headers=auth(key), timeout=TIMEOUT).json()
        assert (report["monthly_requests"], report["remaining"]) == (5, 0)


def test_metering_is_refused_on_public_listeners_and_without_the_peer_token(cluster):
    key = cluster.create_key("rest-0", "enterprise")
    bearer = [("authorization", f"Bearer {key.secret}")]
    for method in sorted(METERING_CALLS):
        for pod in ("billing-0", "inference-0", "inference-1", "catalog-0"):
            with cluster.channel(pod) as channel:
                with pytest.raises(grpc.RpcError) as err:
                    metering_call(channel, method, bearer + [("x-tollgate-peer-token", PEER_TOKEN)])
            assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED, (pod, method)
        with cluster.channel("billing-0", "internal_grpc_addr") as channel:
            with pytest.raises(grpc.RpcError) as err:
                metering_call(channel, method, bearer)
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED, method
    assert ledger(key) == (0, 0)


def window(results, start: float, end: float) -> tuple[int, int, float]:
    """(requests, errors, seconds from `start` to the last error) among requests finished in
    [start, end)."""
    inside = [r for r in results if start <= r[1] < end]
    errors = [r for r in inside if not answered(r)]
    return len(inside), len(errors), max((r[1] - start for r in errors), default=0.0)


def test_faults_under_load_keep_every_answer_billed_exactly(cluster):
    """kill -9 billing then restart it, kill -9 one inference replica, SIGTERM one rest replica,
    while four workers send JSON and streamed requests through the live rest replicas."""
    key = cluster.create_key("rest-0", "enterprise", balance_usd="5", rpm=100000, monthly_requests=1000000)
    load = Load(key, lambda worker, i: cluster.rest(worker + i))
    marks: dict[str, float] = {}

    def steady(what: str, since: float) -> None:
        wait_until(lambda: load.answered_since(since) >= 20, timeout=90, what=f"20 answered requests {what}")

    try:
        steady("before the faults", 0)
        # 1. billing: kill -9, then start it again where its callers dial.
        marks["billing killed"] = time.monotonic()
        cluster.procs["billing-0"].proc.kill()
        cluster.procs["billing-0"].proc.wait(timeout=10)
        marks["billing restarted"] = time.monotonic()
        cluster.restart("billing-0")
        marks["billing ready"] = time.monotonic()
        steady("after billing's restart", marks["billing ready"])
        # 2. one inference replica: kill -9; rest goes on with the other.
        marks["inference killed"] = time.monotonic()
        cluster.procs["inference-0"].proc.kill()
        cluster.procs["inference-0"].proc.wait(timeout=10)
        steady("after an inference replica died", time.monotonic())
        # 3. one rest replica: out of the Service, then SIGTERM; it drains what it holds.
        marks["rest terminated"] = time.monotonic()
        cluster.live_rest.remove("rest-0")
        time.sleep(PRESTOP_PAUSE_SECS)
        cluster.procs["rest-0"].proc.send_signal(signal.SIGTERM)
        assert cluster.procs["rest-0"].proc.wait(timeout=60) == 0
        steady("after a rest replica drained", time.monotonic())
        marks["end"] = time.monotonic()
    finally:
        load.stop()

    results = load.results
    done = [r for r in results if answered(r)]
    failed = [r for r in results if not answered(r)]
    restarted = marks["billing restarted"]
    first_after = min((r[1] for r in done if r[1] >= restarted), default=float("nan"))
    lines = [f"\ncluster fault run: {len(results)} requests, {len(done)} answered, {len(failed)} errors {sorted({(r[3], r[4]) for r in failed})}"]
    phases = [("billing killed", "inference killed"), ("inference killed", "rest terminated"), ("rest terminated", "end")]
    for start, end in phases:
        n, errors, span = window(results, marks[start], marks[end])
        spans = [f"{r[0] - marks[start]:+.2f}..{r[1] - marks[start]:+.2f}s" for r in failed if marks[start] <= r[1] < marks[end]]
        lines.append(f"  {start}: {n} requests, {errors} errors, the last {span:.2f}s after the fault {' '.join(spans)}")
    lines.append(
        f"  billing restart: READY after {marks['billing ready'] - restarted:.2f}s, first answered request "
        f"(an Admit on the new billing) {first_after - restarted:.2f}s after the start"
    )
    print("\n".join(lines))

    # Every request came back (no hang) with an answer or a clear error: an HTTP status and an
    # error code (or an in-band stream error), never a dropped connection or a bare 500.
    for r in failed:
        assert r[3] in (200, 502, 503, 504) and r[4] not in ("internal_error", ""), r
    # Nothing served unbilled, nothing billed twice: the ledger is the answered requests, each at
    # the cost its response reported, to the picodollar.
    billed = ledger_rows(key)
    assert {r[6]: r[5] for r in done} == billed
    assert ledger(key) == (sum(r[5] for r in done), len(done))
    # Nothing answered is left reserved. Only a request admitted on the inference replica that
    # kill -9 took may still hold its reservation (no process is left to settle it; billing
    # releases it when it expires): at most one per client error of that fault.
    left = open_reservations(key)
    _, inference_errors, _ = window(results, marks["inference killed"], marks["rest terminated"])
    print(f"  reservations left open: {len(left)} (held by requests cut by the inference kill, released at expiry)")
    assert not set(left) & set(billed)
    assert len(left) <= inference_errors, left
