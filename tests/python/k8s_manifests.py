"""The k8s/ manifests as `kubectl kustomize` renders them, and how to read them: objects by kind
and name, the Deployment of each `serve --target`, its container, ports, labels and Secret
references, the ConfigMap's tollgate.toml, and what each target serves and dials. Used by
test_k8s.py (the invariants) and test_cluster.py (the overlay run as local processes)."""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import tomllib
from typing import Any, Iterator

import yaml

from harness import REPO_ROOT

K8S = REPO_ROOT / "k8s"
OVERLAYS = sorted(p.name for p in (K8S / "overlays").iterdir() if (p / "kustomization.yaml").is_file())
SECRETS_EXAMPLE = K8S / "secrets.example.yaml"

BINARY = "/usr/local/bin/tollgate"
CONFIG_DIR = "/etc/tollgate"
CONFIG_KEY = "tollgate.toml"
CONFIG_PATH = f"{CONFIG_DIR}/{CONFIG_KEY}"

# What each target serves: the [server] listeners its container exposes, and the gRPC service its
# readiness probe asks for (None: HTTP probes on the REST listener).
TARGETS: dict[str, dict[str, Any]] = {
    "all": {"listeners": {"http_addr", "grpc_addr"}, "grpc_health": None},
    "rest": {"listeners": {"http_addr"}, "grpc_health": None},
    "inference": {"listeners": {"grpc_addr", "metrics_addr"}, "grpc_health": {"tollgate.v1.Inference"}},
    "catalog": {"listeners": {"grpc_addr", "metrics_addr"}, "grpc_health": {"tollgate.v1.Catalog"}},
    "billing": {
        "listeners": {"grpc_addr", "internal_grpc_addr", "metrics_addr"},
        "grpc_health": {"tollgate.v1.Billing", "tollgate.v1.Admin"},
    },
}
# What each target dials, as [services] keys (`all` wires everything in-process).
DIALS: dict[str, set[str]] = {
    "all": set(),
    "rest": {"inference", "catalog", "billing"},
    "inference": {"catalog", "metering"},
    "catalog": set(),
    "billing": set(),
}
# Which target serves each [services] key, and on which listener.
SERVED_BY = {
    "inference": ("inference", "grpc_addr"),
    "catalog": ("catalog", "grpc_addr"),
    "billing": ("billing", "grpc_addr"),
    "metering": ("billing", "internal_grpc_addr"),
}
# Which targets hold which secrets (least privilege): the rest get none of them.
DATABASE_ENV = "TOLLGATE__DATABASE__URL"
REDIS_ENV = "TOLLGATE__REDIS__URL"
INTERNAL_TOKEN_TARGETS = {"inference", "billing"}
# Inference takes the admin token for ListDeploymentHealth (REST /admin/deployments).
ADMIN_TOKEN_TARGETS = {"all", "rest", "billing", "inference"}
PROVIDER_KEY_TARGETS = {"all", "inference"}
DATASTORE_TARGETS = {"all", "billing"}
# Inference shares deployment cooldowns through Redis (not the database).
REDIS_TARGETS = {"all", "billing", "inference"}


# ------------------------------------------------------------------------------------ rendering


def kubectl() -> str:
    path = os.environ.get("KUBECTL") or shutil.which("kubectl")
    assert path, "no kubectl: run scripts/kubectl.sh (scripts/e2e.sh does) and export KUBECTL"
    return path


@functools.cache
def render(overlay: str) -> tuple[dict, ...]:
    """The overlay as `kubectl kustomize` renders it, one dict per object."""
    done = subprocess.run(
        [kubectl(), "kustomize", str(K8S / "overlays" / overlay)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, f"kubectl kustomize {overlay} failed:\n{done.stderr}"
    return tuple(obj for obj in yaml.safe_load_all(done.stdout) if obj)


def of_kind(objects: tuple[dict, ...], kind: str) -> list[dict]:
    return [o for o in objects if o["kind"] == kind]


def named(objects: tuple[dict, ...], kind: str) -> dict[str, dict]:
    return {o["metadata"]["name"]: o for o in of_kind(objects, kind)}


def workloads(objects: tuple[dict, ...]) -> list[dict]:
    return [o for o in objects if o["kind"] in ("Deployment", "Job")]


def pod_spec(workload: dict) -> dict:
    return workload["spec"]["template"]["spec"]


def all_containers(workload: dict) -> list[dict]:
    spec = pod_spec(workload)
    return spec.get("initContainers", []) + spec["containers"]


def main_container(workload: dict) -> dict:
    containers = pod_spec(workload)["containers"]
    assert len(containers) == 1, f"{workload['metadata']['name']}: one container expected"
    return containers[0]


def target_of(deployment: dict) -> str:
    """The --target a Deployment runs (its args must be exactly the serve command)."""
    c = main_container(deployment)
    name = deployment["metadata"]["name"]
    assert c.get("command") == [BINARY], f"{name}: command {c.get('command')}"
    args = c.get("args", [])
    assert len(args) == 5 and args[:4] == ["serve", "--config", CONFIG_PATH, "--target"], f"{name}: args {args}"
    assert args[4] in TARGETS, f"{name}: --target {args[4]} is none of {sorted(TARGETS)}"
    return args[4]


def deployments_by_target(objects: tuple[dict, ...]) -> dict[str, dict]:
    found: dict[str, dict] = {}
    for d in of_kind(objects, "Deployment"):
        target = target_of(d)
        assert target not in found, f"two Deployments run --target {target}"
        found[target] = d
    return found


def config(objects: tuple[dict, ...]) -> dict:
    """The ConfigMap's tollgate.toml, parsed."""
    maps = of_kind(objects, "ConfigMap")
    assert len(maps) == 1, f"one ConfigMap expected, found {[m['metadata']['name'] for m in maps]}"
    return tomllib.loads(maps[0]["data"][CONFIG_KEY])


def config_text(objects: tuple[dict, ...]) -> str:
    """The ConfigMap's tollgate.toml as written."""
    [configmap] = of_kind(objects, "ConfigMap")
    return configmap["data"][CONFIG_KEY]


def listener_port(cfg: dict, listener: str) -> int:
    addr = cfg["server"][listener]
    return int(addr.rsplit(":", 1)[1])


def container_port(container: dict, port: int | str) -> int:
    """A port number, or the number of the container port with that name."""
    if isinstance(port, int):
        return port
    for p in container.get("ports", []):
        if p.get("name") == port:
            return p["containerPort"]
    raise AssertionError(f"container {container['name']} has no port named {port!r}")


def selects(selector: dict, labels: dict) -> bool:
    """Whether a label selector (matchLabels and matchExpressions) selects these labels."""
    if any(labels.get(k) != v for k, v in selector.get("matchLabels", {}).items()):
        return False
    for e in selector.get("matchExpressions", []):
        value, op = labels.get(e["key"]), e["operator"]
        if op == "In" and value not in e["values"]:
            return False
        if op == "NotIn" and value in e["values"]:
            return False
        if op == "Exists" and e["key"] not in labels:
            return False
        if op == "DoesNotExist" and e["key"] in labels:
            return False
    return True


def pod_labels(workload: dict) -> dict:
    return workload["spec"]["template"]["metadata"]["labels"]


def secret_refs(workload: dict) -> Iterator[tuple[str, str, str]]:
    """(env variable, Secret, key) for every env value taken from a Secret."""
    for c in all_containers(workload):
        assert not any("secretRef" in e for e in c.get("envFrom", [])), "envFrom a whole Secret hides what a pod gets"
        for e in c.get("env", []):
            ref = e.get("valueFrom", {}).get("secretKeyRef")
            if ref:
                yield e["name"], ref["name"], ref["key"]


def env_names(workload: dict) -> set[str]:
    return {e["name"] for c in all_containers(workload) for e in c.get("env", [])}


def load_example_secrets() -> dict[str, dict]:
    docs = [d for d in yaml.safe_load_all(SECRETS_EXAMPLE.read_text()) if d]
    assert all(d["kind"] == "Secret" for d in docs)
    return {d["metadata"]["name"]: d for d in docs}
