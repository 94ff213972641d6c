"""The product surface's pure parts: job body parsing, metric names and labels, the OpenAPI schema."""

from __future__ import annotations

from typing import Any

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from common import errors
from common.schemas import WorkerState
from router.api_jobs import parse_job_body
from router.app import create_app
from router.metrics import PoolSnapshot, RouterMetrics, pool_slug
from router.settings import RouterSettings

# --- the job body -------------------------------------------------------------------------------


def test_job_body_is_the_sync_body_plus_model_and_n() -> None:
    raw = b'{"model": " tiny/sdxl-lora-a ", "n": 3, "inputs": "a cat", "parameters": {"seed": 3}}'
    model, images, body = parse_job_body(raw)
    assert (model, images) == ("tiny/sdxl-lora-a", 3)
    assert body.inputs == "a cat" and body.parameters.seed == 3


def test_job_body_without_model_defers_to_the_lora_header_or_base() -> None:
    model, images, body = parse_job_body(b'{"inputs": "a cat"}')
    assert model is None and images == 1 and body.inputs == "a cat"


@pytest.mark.parametrize(
    ("raw", "says"),
    [
        (b"", "empty"),
        (b"not json", "not JSON"),
        (b"[1]", "JSON object"),
        (b'{"model": 3, "inputs": "x"}', "model"),
        (b'{"model": "a/b", "inputs": "x", "extra": 1}', "extra"),
        (b'{"model": "a/b", "inputs": "\\ud800"}', "surrogate"),
        (b'{"model": "a/b", "inputs": "x", "parameters": {"num_inference_steps": 0}}', "num_inference_steps"),
        (b'{"inputs": "x", "n": 0}', "n: an integer from 1"),
        (b'{"inputs": "x", "n": 11}', "n: an integer from 1"),
        (b'{"inputs": "x", "n": true}', "n: an integer from 1"),
        (b'{"inputs": "x", "n": "2"}', "n: an integer from 1"),
    ],
)
def test_bad_job_bodies_are_invalid_requests(raw: bytes, says: str) -> None:
    with pytest.raises(errors.InvalidRequest) as info:
        parse_job_body(raw)
    assert says in info.value.message


# --- metrics --------------------------------------------------------------------------------------


def test_pool_slug_is_a_kubernetes_label_value() -> None:
    assert pool_slug("stabilityai/stable-diffusion-xl-base-1.0") == "stabilityai--stable-diffusion-xl-base-1.0"
    assert pool_slug("local-base") == "local-base"


def families(metrics: RouterMetrics) -> dict[str, list[Any]]:
    text = generate_latest(metrics.registry).decode()
    return {f.name: f.samples for f in text_string_to_metric_families(text)}


def test_farm_gauges_from_a_snapshot() -> None:
    metrics = RouterMetrics()
    workers = [
        WorkerState(
            worker_id="w1",
            pool="org/base",
            status="busy",
            fused=["org/a@1"],
            cached=["org/a@1", "org/b@2"],
            swap_s=0.02,
            inference_s=1.5,
        ),
        WorkerState(worker_id="w2", pool="org/base", status="ready", cached=["org/b@2"]),
    ]
    metrics.farm.pools = [PoolSnapshot(pool="org/base", queue_size=3, oldest_wait_s=1.25, workers=workers)]
    got = families(metrics)
    labels = {"pool": "org/base", "pool_slug": "org--base"}
    [size] = got["lorafarm_queue_size"]
    assert size.labels == labels and size.value == 3
    [wait] = got["lorafarm_queue_wait_seconds"]
    assert wait.value == 1.25
    live = {s.labels["status"]: s.value for s in got["lorafarm_workers"]}
    assert live == {"starting": 0, "ready": 1, "busy": 1, "draining": 0}
    [resident] = got["lorafarm_adapters_resident"]
    assert resident.value == 2
    [inference] = got["lorafarm_worker_inference_seconds"]  # w2 has not measured yet: no sample
    assert inference.labels == {"pool": "org/base", "worker": "w1"} and inference.value == 1.5
    assert got["lorafarm_redis_up"][0].value == 1


def test_request_counters_and_a_redis_outage() -> None:
    metrics = RouterMetrics()
    metrics.observe("POST", "/jobs", 202, "", 0.01)
    metrics.observe("POST", "/jobs", 202, "", 0.02)
    metrics.observe("GET", "/jobs/{job_id}", 404, "job_not_found", 0.001)
    metrics.farm.redis_up = False
    got = families(metrics)
    counts = {
        (s.labels["route"], s.labels["status"], s.labels["error_type"]): s.value
        for s in got["lorafarm_requests"]
        if s.name.endswith("_total")
    }
    assert counts == {("/jobs", "202", ""): 2, ("/jobs/{job_id}", "404", "job_not_found"): 1}
    hist = {s.labels["route"]: s.value for s in got["lorafarm_request_duration_seconds"] if s.name.endswith("_count")}
    assert hist == {"/jobs": 2, "/jobs/{job_id}": 1}
    assert got["lorafarm_redis_up"][0].value == 0
    assert got["lorafarm_queue_size"] == []


def test_each_app_has_its_own_registry() -> None:
    settings = RouterSettings(pools=["tiny/sdxl-base"])
    first, second = create_app(settings), create_app(settings)
    assert first.state.metrics.registry is not second.state.metrics.registry


# --- OpenAPI -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def schema() -> dict[str, Any]:
    return create_app(RouterSettings(pools=["tiny/sdxl-base", "tiny/sd15-base"])).openapi()


def _refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        return [node["$ref"]] if "$ref" in node else [r for v in node.values() for r in _refs(v)]
    if isinstance(node, list):
        return [r for v in node for r in _refs(v)]
    return []


def test_every_schema_reference_resolves(schema: dict[str, Any]) -> None:
    components = schema["components"]["schemas"]
    for ref in _refs(schema):
        assert ref.startswith("#/components/schemas/") and ref.rsplit("/", 1)[1] in components, ref


@pytest.mark.parametrize(
    ("path", "method", "statuses"),
    [
        ("/jobs", "post", {"202", "401", "404", "422", "429", "503"}),
        ("/jobs/{job_id}", "get", {"200", "401", "404", "422", "503"}),
        ("/jobs/{job_id}", "delete", {"200", "202", "404", "422", "503"}),
        ("/jobs/{job_id}/result", "get", {"200", "400", "404", "409", "410", "500", "503"}),
        ("/jobs/{job_id}/events", "get", {"200", "404", "503"}),
        ("/widget/{repo_id}", "get", {"200", "422"}),
        ("/", "get", {"200", "303", "422"}),
        ("/metrics", "get", {"200"}),
    ],
)
def test_routes_declare_their_answers(schema: dict[str, Any], path: str, method: str, statuses: set[str]) -> None:
    declared = schema["paths"][path][method]["responses"]
    assert statuses <= set(declared), sorted(declared)
    for status, answer in declared.items():
        if status.startswith(("4", "5")):
            ref = answer["content"]["application/json"]["schema"]["$ref"]
            assert ref.endswith("/ErrorBody")


def test_job_request_body_is_declared_with_model(schema: dict[str, Any]) -> None:
    body = schema["paths"]["/jobs"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert {"model", "inputs", "parameters"} <= set(body["properties"])
    assert body["required"] == ["inputs"] and body["additionalProperties"] is False


# --- embedding -------------------------------------------------------------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_cors_origins_allow_the_job_api_from_another_site(anyio_backend: str) -> None:
    import httpx

    app = create_app(RouterSettings(pools=["tiny/sdxl-base"], cors_origins="https://models.example"))
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://router") as client:
        headers = {"Origin": "https://models.example", "Access-Control-Request-Method": "DELETE"}
        allowed = await client.options("/jobs/abc", headers=headers)
        other = await client.options("/jobs/abc", headers={**headers, "Origin": "https://elsewhere.example"})
        page = await client.get("/widget/tiny/sdxl-lora-a", headers={"Origin": "https://models.example"})
    assert allowed.status_code == 200
    assert allowed.headers["access-control-allow-origin"] == "https://models.example"
    assert "DELETE" in allowed.headers["access-control-allow-methods"]
    assert other.status_code == 400 and "access-control-allow-origin" not in other.headers
    assert page.status_code == 200 and 'data-model="tiny/sdxl-lora-a"' in page.text
    assert "x-frame-options" not in page.headers
    assert "frame-ancestors *" in page.headers["content-security-policy"]
    assert "location" in page.headers["access-control-expose-headers"].lower()
