"""The container and the k8s/ manifests as an operator relies on them.

Every overlay under k8s/overlays is rendered with `kubectl kustomize` (the binary in $KUBECTL, which
scripts/e2e.sh sets through scripts/kubectl.sh, else `kubectl` on PATH) and every object is
validated offline against the Kubernetes JSON schemas (kubernetes-validate, strict: unknown fields
are errors) of the oldest and the newest Kubernetes the manifests support. Then the invariants:
each Deployment runs a valid target with the config the ConfigMap holds; the ports, probes and
[services] URLs agree with the config's listeners and with the Services of the same overlay;
Metering (the internal port) is reachable from inference pods only; pods outlast the drain; every
container is non-root, read-only and capability-free; HPAs scale down slowly; every Secret key a
manifest references exists in k8s/secrets.example.yaml; the Dockerfile builds what the manifests
run.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import kubernetes_validate
import pytest
import yaml

from harness import REPO_ROOT
from k8s_manifests import (
    K8S,
    OVERLAYS,
    SECRETS_EXAMPLE,
    BINARY,
    CONFIG_DIR,
    CONFIG_KEY,
    CONFIG_PATH,
    TARGETS,
    DIALS,
    SERVED_BY,
    DATABASE_ENV,
    REDIS_ENV,
    INTERNAL_TOKEN_TARGETS,
    ADMIN_TOKEN_TARGETS,
    REDIS_TARGETS,
    PROVIDER_KEY_TARGETS,
    DATASTORE_TARGETS,
    render,
    of_kind,
    named,
    workloads,
    pod_spec,
    all_containers,
    main_container,
    target_of,
    deployments_by_target,
    config,
    listener_port,
    container_port,
    selects,
    pod_labels,
    secret_refs,
    env_names,
    load_example_secrets,
)

# Kubernetes versions every object must validate against: gRPC probes are GA from 1.27.
SCHEMA_VERSIONS = ("1.27", kubernetes_validate.utils.latest_version())

# An HPA may remove at most one pod per this many seconds, after this long a quiet period.
MIN_SCALE_DOWN_WINDOW_SECS = 300

# ------------------------------------------------------------------------------------ the tests


def test_both_overlays_of_issue_8_exist() -> None:
    assert {"monolith", "microservices"} <= set(OVERLAYS), OVERLAYS


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_object_validates_against_the_kubernetes_schemas(overlay: str) -> None:
    objects = render(overlay)
    assert objects, f"{overlay} rendered nothing"
    errors = []
    for obj in objects:
        for version in SCHEMA_VERSIONS:
            try:
                kubernetes_validate.validate(obj, version, strict=True)
            except kubernetes_validate.ValidationError as e:
                path = ".".join(str(p) for p in e.path)
                errors.append(f"{obj['kind']}/{obj['metadata']['name']} @ {version}: {path}: {e.message}")
            except kubernetes_validate.SchemaNotFoundError as e:
                errors.append(e.message)
    assert not errors, "\n".join(errors)


def test_the_example_secrets_validate_and_stay_out_of_every_kustomization() -> None:
    for secret in load_example_secrets().values():
        for version in SCHEMA_VERSIONS:
            kubernetes_validate.validate(secret, version, strict=True)
    for kustomization in K8S.rglob("kustomization.yaml"):
        assert SECRETS_EXAMPLE.name not in yaml.safe_dump(yaml.safe_load(kustomization.read_text())), kustomization
    for overlay in OVERLAYS:
        assert not of_kind(render(overlay), "Secret"), f"{overlay} renders a Secret"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_objects_carry_the_labels_and_the_versioned_image(overlay: str) -> None:
    version = tomllib.loads((REPO_ROOT / "Cargo.toml").read_text())["workspace"]["package"]["version"]
    for obj in render(overlay):
        labels = obj["metadata"].get("labels", {})
        assert labels.get("app.kubernetes.io/name") == "tollgate", obj["metadata"]["name"]
        assert labels.get("app.kubernetes.io/part-of") == "tollgate", obj["metadata"]["name"]
    for w in workloads(render(overlay)):
        for c in all_containers(w):
            assert c["image"] == f"tollgate:{version}", f"{w['metadata']['name']}: {c['image']}"


def test_the_monolith_runs_target_all_on_postgresql_and_redis() -> None:
    objects = render("monolith")
    by_target = deployments_by_target(objects)
    assert set(by_target) == {"all"}
    env = env_names(by_target["all"])
    assert {DATABASE_ENV, REDIS_ENV} <= env
    assert {(n, s) for n, s, _ in secret_refs(by_target["all"]) if n in (DATABASE_ENV, REDIS_ENV)} == {
        (DATABASE_ENV, "tollgate-datastores"),
        (REDIS_ENV, "tollgate-datastores"),
    }


def test_the_microservices_run_one_deployment_per_target() -> None:
    assert set(deployments_by_target(render("microservices"))) == {"rest", "inference", "catalog", "billing"}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_pod_reads_the_configmap_and_the_migration_runs_with_it(overlay: str) -> None:
    objects = render(overlay)
    config_map = of_kind(objects, "ConfigMap")[0]["metadata"]["name"]
    for w in workloads(objects):
        name = w["metadata"]["name"]
        volumes = {v["name"]: v for v in pod_spec(w).get("volumes", [])}
        mounts = {m["mountPath"]: m for m in main_container(w).get("volumeMounts", [])}
        mount = mounts.get(CONFIG_DIR)
        assert mount and mount.get("readOnly"), f"{name}: no read-only mount at {CONFIG_DIR}"
        assert volumes[mount["name"]].get("configMap", {}).get("name") == config_map, name
    jobs = of_kind(objects, "Job")
    assert len(jobs) == 1
    migrate = main_container(jobs[0])
    assert migrate["command"] == [BINARY] and migrate["args"] == ["migrate", "--config", CONFIG_PATH]
    assert DATABASE_ENV in env_names(jobs[0])
    # `kubectl apply -l 'app.kubernetes.io/component in (config,migrate)'` applies exactly what
    # the migration needs, before the rollout.
    component = "app.kubernetes.io/component"
    alone = [o for o in objects if o["metadata"].get("labels", {}).get(component) in ("config", "migrate")]
    assert sorted(o["kind"] for o in alone) == ["ConfigMap", "Job"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_listeners_ports_and_probes_agree_with_the_config(overlay: str) -> None:
    objects = render(overlay)
    cfg = config(objects)
    for target, d in deployments_by_target(objects).items():
        spec = TARGETS[target]
        c = main_container(d)
        for listener in spec["listeners"]:
            host = cfg["server"][listener].rsplit(":", 1)[0]
            assert host in ("0.0.0.0", "[::]"), f"{listener} = {cfg['server'][listener]}: unreachable from other pods"
        expected = {listener_port(cfg, listener) for listener in spec["listeners"]}
        assert {p["containerPort"] for p in c["ports"]} == expected, f"{target}: ports"
        readiness, liveness = c["readinessProbe"], c["livenessProbe"]
        if spec["grpc_health"] is None:
            http_port = listener_port(cfg, "http_addr")
            assert readiness["httpGet"]["path"] == "/readyz"
            assert container_port(c, readiness["httpGet"]["port"]) == http_port
            health_port = http_port
        else:
            assert readiness["grpc"]["port"] == listener_port(cfg, "grpc_addr"), target
            assert readiness["grpc"].get("service") in spec["grpc_health"], target
            health_port = listener_port(cfg, "metrics_addr")
        # Liveness is the process, not readiness: a draining pod is not ready but must not be killed.
        assert liveness["httpGet"]["path"] == "/livez", target
        assert container_port(c, liveness["httpGet"]["port"]) == health_port, target


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_services_urls_name_services_of_the_overlay_on_the_right_ports(overlay: str) -> None:
    objects = render(overlay)
    cfg = config(objects)
    by_target = deployments_by_target(objects)
    services = named(objects, "Service")
    urls = {k: v for k, v in cfg.get("services", {}).items() if k in SERVED_BY}
    needed = set().union(*(DIALS[t] for t in by_target))
    assert set(urls) == needed, f"[services] has {sorted(urls)}, the targets dial {sorted(needed)}"
    for key, url in ((k, u) for k, v in urls.items() for u in (v if isinstance(v, list) else [v])):
        target, listener = SERVED_BY[key]
        parts = urlsplit(url)
        assert parts.scheme == "http" and parts.path in ("", "/"), url
        assert parts.hostname in services, f"[services] {key} = {url}: no Service {parts.hostname}"
        service = services[parts.hostname]
        port = next((p for p in service["spec"]["ports"] if p["port"] == parts.port), None)
        assert port, f"[services] {key} = {url}: Service {parts.hostname} has no port {parts.port}"
        selector = {"matchLabels": service["spec"]["selector"]}
        backends = [t for t, d in by_target.items() if selects(selector, pod_labels(d))]
        assert backends == [target], f"Service {parts.hostname} selects {backends}, not {target}"
        c = main_container(by_target[target])
        served = container_port(c, port.get("targetPort", port["port"]))
        expected = listener_port(cfg, listener)
        assert served == expected, f"{url} reaches port {served}, {target} serves {listener} on {expected}"
        # Headless: the name resolves to every ready pod and the dialling target balances its
        # calls over them (a ClusterIP would pin each HTTP/2 connection, so every call, to one pod).
        assert service["spec"].get("clusterIP") == "None", f"Service {parts.hostname} is not headless"
        assert parts.port == served, f"headless {parts.hostname}: clients dial the pod port"
    if "metering" in urls:
        assert cfg["services"].get("internal_token_env"), "[services] internal_token_env"


def test_metering_is_served_only_through_its_own_service() -> None:
    objects = render("microservices")
    internal = listener_port(config(objects), "internal_grpc_addr")
    billing = deployments_by_target(objects)["billing"]
    container = main_container(billing)
    exposing = set()
    for name, service in named(objects, "Service").items():
        if not selects({"matchLabels": service["spec"]["selector"]}, pod_labels(billing)):
            continue
        ports = {container_port(container, p.get("targetPort", p["port"])) for p in service["spec"]["ports"]}
        if internal in ports:
            exposing.add(name)
            assert ports == {internal}, f"Service {name} mixes Metering with public ports"
    assert exposing == {"tollgate-billing-internal"}, exposing


def rule_covers(rule: dict, container: dict, port: int) -> bool:
    """Whether a NetworkPolicy ingress rule opens this container port."""
    ports = rule.get("ports")
    if not ports:
        return True
    for p in ports:
        if "port" not in p:
            return True
        low = container_port(container, p["port"])
        if low <= port <= p.get("endPort", low):
            return True
    return False


def test_network_policy_admits_only_inference_pods_to_metering() -> None:
    objects = render("microservices")
    cfg = config(objects)
    internal = listener_port(cfg, "internal_grpc_addr")
    by_target = deployments_by_target(objects)
    billing = by_target["billing"]
    billing_container = main_container(billing)
    policies = [
        p
        for p in of_kind(objects, "NetworkPolicy")
        if selects(p["spec"]["podSelector"], pod_labels(billing))
        and "Ingress" in p["spec"].get("policyTypes", ["Ingress"])
    ]
    assert policies, "no NetworkPolicy restricts ingress to billing pods"
    admitted_inference = False
    for policy in policies:
        for rule in policy["spec"].get("ingress", []):
            if not rule_covers(rule, billing_container, internal):
                continue
            peers = rule.get("from")
            name = policy["metadata"]["name"]
            assert peers, f"{name}: a rule admits everyone to port {internal}"
            for peer in peers:
                assert set(peer) == {"podSelector"}, f"{name}: {peer} is not a pod of this namespace"
                selected = {t for t, d in by_target.items() if selects(peer["podSelector"], pod_labels(d))}
                assert selected == {"inference"}, f"{name}: port {internal} admits {sorted(selected)}"
            admitted_inference = True
    assert admitted_inference, f"inference pods cannot reach Metering on {internal}"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_pods_outlast_the_drain(overlay: str) -> None:
    objects = render(overlay)
    grace = config(objects)["server"]["shutdown_grace_secs"]
    for d in of_kind(objects, "Deployment"):
        name = d["metadata"]["name"]
        command = main_container(d)["lifecycle"]["preStop"]["exec"]["command"]
        assert Path(command[0]).name == "sleep" and len(command) == 2, f"{name}: preStop {command}"
        pause = int(command[1])
        assert pause > 0
        termination = pod_spec(d)["terminationGracePeriodSeconds"]
        assert termination > pause + grace, f"{name}: {termination} s <= preStop {pause} s + drain {grace} s"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_container_is_non_root_read_only_and_without_capabilities(overlay: str) -> None:
    for w in workloads(render(overlay)):
        pod = pod_spec(w)
        pod_security = pod.get("securityContext", {})
        name = w["metadata"]["name"]
        assert pod.get("automountServiceAccountToken") is False, name
        assert not any(pod.get(k) for k in ("hostNetwork", "hostPID", "hostIPC")), name
        for c in all_containers(w):
            security = c.get("securityContext", {})

            def effective(key: str, security: dict = security) -> Any:
                return security.get(key, pod_security.get(key))

            assert effective("runAsNonRoot") is True, name
            assert effective("runAsUser") not in (0, None), f"{name}: no numeric non-root user"
            assert security.get("readOnlyRootFilesystem") is True, name
            assert security.get("allowPrivilegeEscalation") is False, name
            assert not security.get("privileged"), name
            assert "ALL" in security.get("capabilities", {}).get("drop", []), name
            assert not security.get("capabilities", {}).get("add"), name
            assert (effective("seccompProfile") or {}).get("type") == "RuntimeDefault", name
            resources = c.get("resources", {})
            for kind in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(resources.get(kind, {})), f"{name}: {kind}"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_deployment_has_a_disruption_budget_that_allows_evictions(overlay: str) -> None:
    objects = render(overlay)
    hpas = {h["spec"]["scaleTargetRef"]["name"]: h for h in of_kind(objects, "HorizontalPodAutoscaler")}
    pdbs = of_kind(objects, "PodDisruptionBudget")
    for d in of_kind(objects, "Deployment"):
        name = d["metadata"]["name"]
        matching = [p for p in pdbs if selects(p["spec"]["selector"], pod_labels(d))]
        assert len(matching) == 1, f"{name}: {len(matching)} PodDisruptionBudgets"
        replicas = hpas[name]["spec"]["minReplicas"] if name in hpas else d["spec"].get("replicas", 1)
        assert replicas >= 2, f"{name}: one replica cannot survive a disruption"
        spec = matching[0]["spec"]
        if "maxUnavailable" in spec:
            assert spec["maxUnavailable"] not in (0, "0%"), name
        else:
            assert isinstance(spec["minAvailable"], int) and spec["minAvailable"] < replicas, name


def test_rest_and_inference_autoscale_and_scale_down_slowly() -> None:
    objects = render("microservices")
    deployments = named(objects, "Deployment")
    hpas = of_kind(objects, "HorizontalPodAutoscaler")
    scaled = {target_of(deployments[h["spec"]["scaleTargetRef"]["name"]]) for h in hpas}
    assert scaled == {"rest", "inference"}
    for h in hpas:
        name = h["metadata"]["name"]
        ref = h["spec"]["scaleTargetRef"]
        assert ref["kind"] == "Deployment" and ref["name"] in deployments, name
        target = deployments[ref["name"]]
        assert "replicas" not in target["spec"], f"{ref['name']}: `replicas` would fight the HPA on every apply"
        assert h["spec"]["minReplicas"] >= 2, name
        down = h["spec"]["behavior"]["scaleDown"]
        assert down.get("selectPolicy", "Max") != "Disabled", name
        assert down["stabilizationWindowSeconds"] >= MIN_SCALE_DOWN_WINDOW_SECS, name
        termination = pod_spec(target)["terminationGracePeriodSeconds"]
        assert down["policies"], name
        for policy in down["policies"]:
            # One pod at a time, and not before the last one could drain.
            assert policy["type"] == "Pods" and policy["value"] == 1, f"{name}: {policy}"
            assert policy["periodSeconds"] >= max(termination, MIN_SCALE_DOWN_WINDOW_SECS // 2), f"{name}: {policy}"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_secrets_are_referenced_by_existing_keys_and_given_only_where_used(overlay: str) -> None:
    objects = render(overlay)
    cfg = config(objects)
    examples = load_example_secrets()
    provider_envs = {p["api_key_env"] for p in cfg.get("providers", []) if p.get("api_key_env")}
    admin_env = cfg.get("admin", {}).get("token_env")
    internal_env = cfg.get("services", {}).get("internal_token_env")
    for w in workloads(objects):
        name = w["metadata"]["name"]
        for env, secret, key in secret_refs(w):
            assert secret in examples, f"{name}: Secret {secret} is not in {SECRETS_EXAMPLE.name}"
            keys = examples[secret].get("stringData", {}) | examples[secret].get("data", {})
            assert key in keys, f"{name}: {secret} has no key {key}"
        env = env_names(w)
        target = target_of(w) if w["kind"] == "Deployment" else "migrate"
        wanted = {
            DATABASE_ENV: target in DATASTORE_TARGETS or target == "migrate",
            REDIS_ENV: target in REDIS_TARGETS,
        }
        if admin_env:
            wanted[admin_env] = target in ADMIN_TOKEN_TARGETS
        if internal_env:
            wanted[internal_env] = target in INTERNAL_TOKEN_TARGETS
        for provider_env in provider_envs:
            wanted[provider_env] = target in PROVIDER_KEY_TARGETS
        for variable, should in wanted.items():
            assert (variable in env) == should, f"{name} ({target}): {variable} {'missing' if should else 'not needed'}"


def test_the_configs_agree_with_each_other_and_with_the_example_catalogue() -> None:
    base = tomllib.loads((K8S / "base" / CONFIG_KEY).read_text())
    split = config(render("microservices"))
    assert config(render("monolith")) == base
    trimmed = {k: v for k, v in split.items() if k != "services"}
    trimmed["server"] = {k: v for k, v in split["server"].items() if k not in ("internal_grpc_addr", "metrics_addr")}
    assert trimmed == base, "overlays/microservices/tollgate.toml differs from the base beyond [services] and listeners"
    example = tomllib.loads((REPO_ROOT / "examples" / "tollgate.toml").read_text())
    for section in ("providers", "models", "aliases", "tiers"):
        known = {(e.get("id") or e.get("name")): e for e in example[section]}
        for entry in base[section]:
            ident = entry.get("id") or entry.get("name")
            assert known.get(ident) == entry, f"{section} {ident} differs from examples/tollgate.toml"


def test_the_dockerfile_builds_what_the_manifests_run() -> None:
    dockerfile = (REPO_ROOT / "Dockerfile").read_text()
    final_stage = re.split(r"(?m)^FROM ", dockerfile)[-1]
    assert "cargo build --release --locked --bin tollgate" in dockerfile
    assert re.search(rf"(?m)^COPY --from=build \S+ {re.escape(BINARY)}$", final_stage)
    user = re.search(r"(?m)^USER (\d+)(?::(\d+))?$", final_stage)
    assert user and int(user.group(1)) != 0, "the image's USER must be a numeric non-root uid"
    exposed = {int(p) for line in re.findall(r"(?m)^EXPOSE (.+)$", final_stage) for p in line.split()}
    for overlay in OVERLAYS:
        for w in workloads(render(overlay)):
            security = pod_spec(w).get("securityContext", {})
            assert security.get("runAsUser") == int(user.group(1)), w["metadata"]["name"]
            for c in all_containers(w):
                ports = {p["containerPort"] for p in c.get("ports", [])}
                assert ports <= exposed, f"{w['metadata']['name']}: {ports - exposed} not EXPOSEd"
    ignored = (REPO_ROOT / ".dockerignore").read_text().split()
    assert "target" in ignored and ".git" in ignored
