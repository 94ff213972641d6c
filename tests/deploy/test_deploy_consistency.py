"""The compose files and the Kubernetes manifests agree with the code: the environment variables
they set are settings the services read, the ports are the services' ports, the pools the router
serves are the pools that have workers, and KEDA watches the streams and group the workers read
(common/keys.py)."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from pydantic_settings import BaseSettings

from common import keys
from common.settings import CommonSettings
from lorafarm import settingsdoc
from router.settings import RouterSettings
from tests.deploy.manifests import (
    COMPOSE_SETS,
    DEPLOY,
    OVERLAYS,
    POOL_DIRS,
    compose_services,
    service_env,
)
from worker.settings import WorkerSettings

Build = Callable[[Path], tuple[dict[str, Any], ...]]

ROUTER_PORT = RouterSettings.model_fields["port"].default
WORKER_PORT = WorkerSettings.model_fields["worker_port"].default
ROUTER_GRACE_S = RouterSettings.model_fields["shutdown_grace_s"].default
#: The sentinels' down-after, the default of deploy/k8s/redis-ha/start-sentinel.sh: a failover takes
#: that and the election, and a worker silent for LORAFARM_WORKER_TTL_S meanwhile counts as dead.
SENTINEL_DOWN_AFTER_S = (
    int(re.findall(r"SENTINEL_DOWN_AFTER_MS:-(\d+)", (DEPLOY / "k8s/redis-ha/start-sentinel.sh").read_text())[-1])
    / 1000
)


def _role(name: str) -> type[BaseSettings] | None:
    """Which settings class a compose service or a container reads (None: not a lorafarm service)."""
    if name == "router":
        return RouterSettings
    if name.startswith("worker"):
        return WorkerSettings
    return None


def _unknown_names(cls: type[BaseSettings], names: set[str]) -> set[str]:
    known = set(settingsdoc.env_map(cls)) | set(settingsdoc.THIRD_PARTY_ENV)
    return {name for name in names if name.startswith(("LORAFARM_", "HF_")) and name not in known}


def _slug(base: str) -> str:
    return base.replace("/", "--")


def _bases(value: str | None) -> list[str]:
    """The bases a worker's LORAFARM_BASE names (several, comma-separated: a multi-base worker)."""
    return WorkerSettings.model_construct(base=value or "").bases


def _seconds(duration: str) -> float:
    """A compose duration (`2m`, `150s`, `1m30s`) in seconds."""
    parts = re.findall(r"(\d+(?:\.\d+)?)(h|ms|m|s)", duration)
    assert parts and "".join(n + u for n, u in parts) == duration, f"cannot read duration {duration!r}"
    scale = {"h": 3600, "m": 60, "s": 1, "ms": 0.001}
    return sum(float(n) * scale[u] for n, u in parts)


# ---------------------------------------------------------------- compose


@pytest.mark.parametrize("files", COMPOSE_SETS.values(), ids=COMPOSE_SETS.keys())
def test_compose_env_names_are_settings(files: tuple[str, ...]) -> None:
    for name, service in compose_services(files).items():
        cls = _role(name)
        if cls is not None:
            unknown = _unknown_names(cls, set(service_env(service)))
            assert not unknown, f"{files}: service {name} sets {unknown}, not settings of {cls.__name__}"


@pytest.mark.parametrize("files", COMPOSE_SETS.values(), ids=COMPOSE_SETS.keys())
def test_compose_router_serves_the_pools_that_have_workers(files: tuple[str, ...]) -> None:
    services = compose_services(files)
    router = service_env(services["router"])
    bases = sorted(
        base
        for name, svc in services.items()
        if _role(name) is WorkerSettings
        for base in _bases(service_env(svc)["LORAFARM_BASE"])
    )
    pools = (router["LORAFARM_POOLS"] or "").split(",")
    assert sorted(pools) == bases, f"{files}: router pools {pools}, worker bases {bases}"
    assert router["LORAFARM_DEFAULT_BASE"] in pools
    assert len(set(bases)) == len(bases), f"{files}: two worker services serve one base"


@pytest.mark.parametrize("files", COMPOSE_SETS.values(), ids=COMPOSE_SETS.keys())
def test_compose_ports_and_volumes(files: tuple[str, ...]) -> None:
    services = compose_services(files)
    router = services["router"]
    env = service_env(router)
    assert int(env.get("LORAFARM_PORT") or ROUTER_PORT) == ROUTER_PORT == 8888
    assert env["LORAFARM_HOST"] == "0.0.0.0", "a router bound to loopback is unreachable from the host"
    assert f"{ROUTER_PORT}:{ROUTER_PORT}" in [str(p) for p in router["ports"]]
    assert _seconds(router["stop_grace_period"]) > ROUTER_GRACE_S
    for name, service in services.items():
        if _role(name) is not WorkerSettings:
            continue
        env = service_env(service)
        assert int(env.get("LORAFARM_WORKER_PORT") or WORKER_PORT) == WORKER_PORT == 9100
        assert env["LORAFARM_WORKER_HOST"] == "0.0.0.0", f"{name}: probe server bound to loopback"
        mounts = [str(v).split(":") for v in service["volumes"]]
        assert [env["HF_HOME"]] == [target for _, target, *_ in mounts if target == env["HF_HOME"]], (
            f"{name}: HF_HOME={env['HF_HOME']} is not on a volume"
        )
        assert urlsplit(env["LORAFARM_REDIS_URL"]).hostname in services


def test_compose_gpu_workers_reserve_a_gpu_and_pass_the_token() -> None:
    services = compose_services(COMPOSE_SETS["gpu"])
    workers = {name: svc for name, svc in services.items() if _role(name) is WorkerSettings}
    assert workers
    for name, service in workers.items():
        devices = service["deploy"]["resources"]["reservations"]["devices"]
        assert any("gpu" in d["capabilities"] for d in devices), f"{name} reserves no GPU"
        assert service_env(service)["LORAFARM_DEVICE"] == "cuda"
    for name in ["router", *workers]:
        # Passed through from the shell, never set to a value (an empty token is still sent).
        env = service_env(services[name])
        assert "HF_TOKEN" in env and env["HF_TOKEN"] is None, f"{name}: HF_TOKEN is not passed through"


def test_compose_cpu_demo_runs_without_gpu_against_the_devhub() -> None:
    services = compose_services(COMPOSE_SETS["cpu"])
    assert "devhub" in services
    for name, service in services.items():
        assert "deploy" not in service, f"{name} still reserves a device in the CPU demo"
        if _role(name) is not None:
            env = service_env(service)
            assert env["HF_ENDPOINT"] == "http://devhub:8900", f"{name} does not use the devhub"
        if _role(name) is WorkerSettings:
            assert service_env(service)["LORAFARM_DEVICE"] == "cpu"


def test_compose_ha_reaches_redis_through_the_sentinels() -> None:
    """With the HA file: every lorafarm service names the sentinel services; servers and sentinels
    start from the scripts of deploy/k8s/redis-ha, agree on the master name, and keep their own volume."""
    services = compose_services(COMPOSE_SETS["gpu-ha"])
    servers = {n: s for n, s in services.items() if "/scripts/start-redis.sh" in s.get("command", [])}
    sentinels = {n: s for n, s in services.items() if "/scripts/start-sentinel.sh" in s.get("command", [])}
    assert len(servers) == 2 and len(sentinels) == 3
    for name, service in {**servers, **sentinels}.items():
        env = service_env(service)
        assert env["REDIS_MASTER_NAME"] == "lorafarm" and env["REDIS_FIRST_PRIMARY"] in servers, name
        mounts = {target: source for source, target, *_ in (str(v).split(":") for v in service["volumes"])}
        assert (DEPLOY / mounts["/scripts"] / "start-redis.sh").is_file(), name
        assert not mounts["/data"].startswith("."), f"{name}: /data is not a named volume"
        assert (env.get("SENTINEL_SELF") or env.get("REDIS_SELF")) == name, "the name the others reach it by"
    assert len({service_env(s)["REDIS_SELF"] for s in servers.values()}) == 2
    for server in servers.values():
        assert (service_env(server)["REDIS_SENTINELS"] or "").split() == [f"{n}:26379" for n in sentinels]
    for name, service in services.items():
        if _role(name) is None:
            continue
        env = service_env(service)
        assert (env["LORAFARM_REDIS_SENTINELS"] or "").split(",") == [f"{n}:26379" for n in sentinels], name
        assert env["LORAFARM_REDIS_MASTER_NAME"] == "lorafarm"
        assert 1 <= int(env["LORAFARM_REDIS_MIN_REPLICAS"] or 0) <= len(servers) - 1
        assert set(sentinels) <= set(service["depends_on"]), f"{name} starts before the sentinels"
        assert float(env["LORAFARM_WORKER_TTL_S"] or 0) > 2 * SENTINEL_DOWN_AFTER_S, "a failover outlasts the TTL"


# ---------------------------------------------------------------- Kubernetes helpers


def _named(docs: tuple[dict[str, Any], ...], kind: str) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


def _pod_containers(docs: tuple[dict[str, Any], ...]) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    return [
        (doc, container)
        for doc in docs
        if doc["kind"] in ("Deployment", "StatefulSet")
        for container in doc["spec"]["template"]["spec"]["containers"]
    ]


def _env(container: dict[str, Any], docs: tuple[dict[str, Any], ...], *, strict: bool) -> dict[str, str | None]:
    """The container's environment: envFrom ConfigMaps first, then env (which wins)."""
    configmaps = _named(docs, "ConfigMap")
    env: dict[str, str | None] = {}
    for source in container.get("envFrom", []):
        name = source["configMapRef"]["name"]
        if name in configmaps:
            env.update(configmaps[name].get("data", {}))
        else:
            assert not strict, f"container {container['name']} reads ConfigMap {name}, which is not in the build"
    for item in container.get("env", []):
        env[item["name"]] = item.get("value")
    return env


def _workers(docs: tuple[dict[str, Any], ...], *, strict: bool) -> dict[str, tuple[dict[str, Any], str]]:
    """Worker Deployments by name, with the base each serves."""
    out = {}
    for doc, container in _pod_containers(docs):
        if container["name"] == "worker":
            base = _env(container, docs, strict=strict).get("LORAFARM_BASE")
            assert base, f"deployment {doc['metadata']['name']} sets no LORAFARM_BASE"
            out[doc["metadata"]["name"]] = (doc, base)
    return out


def _port(container: dict[str, Any], port: int | str) -> int:
    """A probe's or Service's port, resolved through the container's named ports."""
    if isinstance(port, int):
        return port
    return next(p["containerPort"] for p in container["ports"] if p.get("name") == port)


# ---------------------------------------------------------------- Kubernetes


@pytest.mark.parametrize("overlay", OVERLAYS, ids=lambda p: p.name)
def test_k8s_env_names_are_settings(overlay: Path, kustomize: Build) -> None:
    docs = kustomize(overlay)
    checked = 0
    for doc, container in _pod_containers(docs):
        cls = _role(container["name"])
        if cls is None:
            continue
        unknown = _unknown_names(cls, set(_env(container, docs, strict=True)))
        where = f"{overlay.name}: {doc['kind']}/{doc['metadata']['name']}"
        assert not unknown, f"{where} sets {unknown}, not settings of {cls.__name__}"
        checked += 1
    assert checked >= 2, "expected a router and at least one worker"


@pytest.mark.parametrize("overlay", OVERLAYS, ids=lambda p: p.name)
def test_k8s_ports_and_probes(overlay: Path, kustomize: Build) -> None:
    docs = kustomize(overlay)
    services = _named(docs, "Service")
    for doc, container in _pod_containers(docs):
        env = _env(container, docs, strict=True)
        spec = doc["spec"]["template"]["spec"]
        if container["name"] == "router":
            assert int(env.get("LORAFARM_PORT") or ROUTER_PORT) == ROUTER_PORT == 8888
            assert env["LORAFARM_HOST"] == "0.0.0.0"
            assert _port(container, "http") == ROUTER_PORT
            svc_port = services["router"]["spec"]["ports"][0]
            assert svc_port["port"] == ROUTER_PORT and _port(container, svc_port["targetPort"]) == ROUTER_PORT
            # SIGTERM lets in-flight requests finish for shutdown_grace_s: the pod must outlive that.
            assert spec["terminationGracePeriodSeconds"] > ROUTER_GRACE_S
        elif container["name"] == "worker":
            assert int(env.get("LORAFARM_WORKER_PORT") or WORKER_PORT) == WORKER_PORT == 9100
            assert env["LORAFARM_WORKER_HOST"] == "0.0.0.0", "kubelet cannot probe a loopback-bound server"
            startup = container["startupProbe"]
            assert _port(container, startup["httpGet"]["port"]) == WORKER_PORT
            # The probe server opens once the base is loaded: minutes, not seconds.
            assert startup["periodSeconds"] * startup["failureThreshold"] >= 300
            mounts = {m["mountPath"] for m in container["volumeMounts"]}
            assert env["HF_HOME"] in mounts, "the model cache (HF_HOME) is not on a volume"
        else:
            continue
        probes = {kind: container[f"{kind}Probe"]["httpGet"] for kind in ("readiness", "liveness")}
        assert probes["readiness"]["path"] == "/ready", "readiness: Redis reachable (and base warm)"
        assert probes["liveness"]["path"] == "/health", "liveness: the process answers, nothing more"
        for probe in probes.values():
            assert _port(container, probe["port"]) in (ROUTER_PORT, WORKER_PORT)


@pytest.mark.parametrize("path", OVERLAYS + POOL_DIRS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_k8s_autoscalers_watch_the_pool_stream(path: Path, kustomize: Build) -> None:
    docs = kustomize(path)
    workers = _workers(docs, strict=path in OVERLAYS)
    assert workers
    for deployment, base in workers.values():
        label = deployment["metadata"]["labels"]["lorafarm.io/pool"]
        # A multi-base worker's label names no single pool (nor any of its pools).
        assert label == _slug(base) if len(_bases(base)) == 1 else label not in map(_slug, _bases(base))
    for so in _named(docs, "ScaledObject").values():
        target = so["spec"]["scaleTargetRef"]["name"]
        assert target in workers, f"ScaledObject {so['metadata']['name']} scales {target}, not a worker"
        bases = _bases(workers[target][1])
        watched = set()
        for trigger in so["spec"]["triggers"]:
            meta = trigger["metadata"]
            assert trigger["type"] in ("redis-streams", "redis-sentinel-streams")
            watched.add(meta["stream"])
            if "consumerGroup" in meta:
                assert meta["consumerGroup"] == keys.WORKER_GROUP
        # Every pool the worker serves is watched, its shared stream and the parked jobs of keys past
        # their fair share (on a stream of their own, read by no worker).
        assert watched == {s for b in bases for s in (keys.pool_stream(b), keys.pool_parked(b))}, f"{target}: {watched}"
        for b in bases:
            shared = [t for t in so["spec"]["triggers"] if t["metadata"]["stream"] == keys.pool_stream(b)]
            modes = {("lag" if "lagCount" in t["metadata"] else "len") for t in shared}
            assert modes == {"lag", "len"}, (
                f"{target}: combine the group's lag with the stream length (lag can be null)"
            )
    for hpa in _named(docs, "HorizontalPodAutoscaler").values():
        target = hpa["spec"]["scaleTargetRef"]["name"]
        assert target in workers
        assert len(_bases(workers[target][1])) == 1, "a plain HPA reads the queue gauge of one pool"
        metric = hpa["spec"]["metrics"][0]["external"]["metric"]
        assert metric["name"] == "lorafarm_queue_size"
        assert metric["selector"]["matchLabels"]["pool_slug"] == _slug(workers[target][1])


@pytest.mark.parametrize("overlay", OVERLAYS, ids=lambda p: p.name)
def test_k8s_router_serves_the_pools_that_have_workers(overlay: Path, kustomize: Build) -> None:
    docs = kustomize(overlay)
    bases = sorted(b for _, base in _workers(docs, strict=True).values() for b in _bases(base))
    router = next(c for _, c in _pod_containers(docs) if c["name"] == "router")
    env = _env(router, docs, strict=True)
    pools = (env["LORAFARM_POOLS"] or "").split(",")
    assert sorted(pools) == bases, f"router pools {pools}, worker bases {bases}"
    assert env["LORAFARM_DEFAULT_BASE"] in pools
    targets = [
        d["spec"]["scaleTargetRef"]["name"] for d in docs if d["kind"] in ("ScaledObject", "HorizontalPodAutoscaler")
    ]
    assert len(targets) == len(set(targets)), "a worker Deployment has two autoscalers"


@pytest.mark.parametrize("overlay", OVERLAYS, ids=lambda p: p.name)
def test_k8s_redis_url_and_keda_address_name_the_redis_service(overlay: Path, kustomize: Build) -> None:
    docs = kustomize(overlay)
    settings = _named(docs, "ConfigMap")[_configmap_with(docs, "LORAFARM_REDIS_URL")]["data"]
    if settings.get("LORAFARM_REDIS_SENTINELS"):
        pytest.skip("Redis behind sentinels: test_k8s_sentinels_are_the_sentinel_pods")
    url = urlsplit(settings["LORAFARM_REDIS_URL"])
    service = _named(docs, "Service")[url.hostname or ""]
    assert url.port in [p["port"] for p in service["spec"]["ports"]]
    namespace = service["metadata"]["namespace"]
    for so in _named(docs, "ScaledObject").values():
        for trigger in so["spec"]["triggers"]:
            meta = trigger["metadata"]
            assert trigger["type"] == "redis-streams"
            assert meta["address"] == f"{url.hostname}.{namespace}.svc.cluster.local:{url.port}"
            assert meta.get("databaseIndex", "0") == (url.path.strip("/") or "0")


@pytest.mark.parametrize("overlay", OVERLAYS, ids=lambda p: p.name)
def test_k8s_sentinels_are_the_sentinel_pods(overlay: Path, kustomize: Build) -> None:
    """Router, workers, KEDA and the Redis servers name the same sentinels: pods of the sentinel
    StatefulSet, through its headless Service; the replicas required exist."""
    docs = kustomize(overlay)
    settings = _named(docs, "ConfigMap")[_configmap_with(docs, "LORAFARM_REDIS_URL")]["data"]
    if not settings.get("LORAFARM_REDIS_SENTINELS"):
        pytest.skip("one Redis: test_k8s_redis_url_and_keda_address_name_the_redis_service")
    sets, services = _named(docs, "StatefulSet"), _named(docs, "Service")
    pods: dict[str, str] = {}  # "pod.service" -> its namespace
    for statefulset in sets.values():
        service = services[statefulset["spec"]["serviceName"]]
        assert service["spec"]["clusterIP"] == "None" and service["spec"].get("publishNotReadyAddresses")
        for ordinal in range(statefulset["spec"]["replicas"]):
            pods[f"{statefulset['metadata']['name']}-{ordinal}.{service['metadata']['name']}"] = service["metadata"][
                "namespace"
            ]
    sentinels = settings["LORAFARM_REDIS_SENTINELS"].split(",")
    assert len(sentinels) >= 3 and len(set(sentinels)) == len(sentinels)
    for address in sentinels:
        host, port = address.rsplit(":", 1)
        assert host in pods and port == "26379", address
    master = settings.get("LORAFARM_REDIS_MASTER_NAME") or CommonSettings.model_fields["redis_master_name"].default
    qualified = {f"{a.rsplit(':', 1)[0]}.{pods[a.rsplit(':', 1)[0]]}.svc.cluster.local:26379" for a in sentinels}
    for so in _named(docs, "ScaledObject").values():
        for trigger in so["spec"]["triggers"]:
            assert trigger["type"] == "redis-sentinel-streams"
            assert set(trigger["metadata"]["addresses"].split(",")) == qualified
            assert trigger["metadata"]["sentinelMaster"] == master
    for statefulset in sets.values():
        (container,) = statefulset["spec"]["template"]["spec"]["containers"]
        env = _env(container, docs, strict=True)
        assert env["REDIS_MASTER_NAME"] == master
        if "REDIS_SENTINELS" in env:  # a Redis server: it asks the same sentinels where the primary is
            namespace = statefulset["metadata"]["namespace"]
            named = {a.replace("$(POD_NAMESPACE)", namespace) for a in (env["REDIS_SENTINELS"] or "").split()}
            assert named == qualified
            assert int(settings["LORAFARM_REDIS_MIN_REPLICAS"]) <= statefulset["spec"]["replicas"] - 1
    assert float(settings["LORAFARM_WORKER_TTL_S"]) > 2 * SENTINEL_DOWN_AFTER_S, "a failover outlasts the worker TTL"


def _configmap_with(docs: tuple[dict[str, Any], ...], key: str) -> str:
    (name,) = [n for n, cm in _named(docs, "ConfigMap").items() if key in cm.get("data", {})]
    return name


@pytest.mark.parametrize("overlay", OVERLAYS, ids=lambda p: p.name)
def test_k8s_gpu_overlays_take_one_gpu_and_cpu_overlays_none(overlay: Path, kustomize: Build) -> None:
    docs = kustomize(overlay)
    for name, (deployment, _) in _workers(docs, strict=True).items():
        spec = deployment["spec"]["template"]["spec"]
        container = next(c for c in spec["containers"] if c["name"] == "worker")
        device = _env(container, docs, strict=True)["LORAFARM_DEVICE"]
        limits = container["resources"].get("limits", {})
        if overlay.name.startswith("gpu"):
            assert limits.get("nvidia.com/gpu") == 1, f"{name}: one GPU per worker"
            assert "nvidia.com/gpu.product" in spec["nodeSelector"]
            assert device == "cuda"
            startup = container["startupProbe"]
            assert startup["periodSeconds"] * startup["failureThreshold"] >= 600, "an SDXL first boot"
        else:
            assert "nvidia.com/gpu" not in limits and device == "cpu"
