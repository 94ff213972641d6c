"""Health, readiness and ``/status`` (``router/api.py``), the API key, unknown routes, the OpenAPI document."""

from __future__ import annotations

import pytest

from tests.integration.inprocess import PROMPT, SD15, SDXL, AppClient, Workers, assert_error, sha_of

pytestmark = pytest.mark.anyio


async def test_health_ready_status(app_client: AppClient, workers: Workers, devhub_url: str) -> None:
    async with app_client() as client:
        health = await client.get("/health")
        ready = await client.get("/ready")
        before = (await client.get("/status")).json()
        await workers.serve(client.post("/models/tiny/sdxl-lora-diffusers", json=PROMPT))
        after = (await client.get("/status")).json()
    assert health.json() == {"status": "ok"}
    assert ready.json() == {"status": "ready"}
    assert after["default_base"] == SDXL
    pools = {p["pool"]: p for p in after["pools"]}
    assert set(pools) == {SDXL, SD15}
    assert pools[SDXL]["queue_depth"] == 0
    [worker] = pools[SDXL]["workers"]
    assert (worker["worker_id"], worker["status"]) == (workers[SDXL].worker_id, "ready")
    # The worker's heartbeat carries what it fused: the adapter at the commit the job pinned.
    assert worker["fused"] == [f"tiny/sdxl-lora-diffusers@{sha_of(devhub_url, 'tiny/sdxl-lora-diffusers')}"]
    assert worker["jobs_done"] == 1
    assert [w["fused"] for p in before["pools"] for w in p["workers"]] == [[], []]
    assert [w["fused"] for w in pools[SD15]["workers"]] == [[]]


async def test_api_key(app_client: AppClient, workers: Workers) -> None:
    bearer = {"authorization": "Bearer sekrit"}
    async with app_client(api_key="sekrit") as client:
        missing = await client.post("/models/tiny/sdxl-base", json=PROMPT)
        wrong = await client.post("/models/tiny/sdxl-base", json=PROMPT, headers={"authorization": "Bearer nope"})
        good = await workers.serve(client.post("/models/tiny/sdxl-base", json=PROMPT, headers=bearer))
        status = await client.get("/status")
        health = await client.get("/health")
    assert_error(missing, 401, "unauthorized")
    assert missing.headers["www-authenticate"] == "Bearer"
    assert_error(wrong, 401, "unauthorized")
    assert_error(status, 401, "unauthorized")
    assert (good.status_code, health.status_code) == (200, 200)
    assert len(workers[SDXL].jobs) == 1  # only the request with the key reached a worker


async def test_unknown_route_and_method(app_client: AppClient) -> None:
    async with app_client() as client:
        missing = await client.get("/nope")
        method = await client.put("/models/tiny/sdxl-base")
    assert_error(missing, 404, "not_found")
    assert_error(method, 405, "method_not_allowed")


async def test_openapi_declares_bodies_and_errors(app_client: AppClient) -> None:
    async with app_client() as client:
        schema = (await client.get("/openapi.json")).json()
    components = schema["components"]["schemas"]
    assert {"InferenceRequest", "Parameters", "AdapterSpec", "ErrorBody"} <= set(components)
    for path in ("/models/{repo_id}", "/"):
        op = schema["paths"][path]["post"]
        ref = op["requestBody"]["content"]["application/json"]["schema"]["$ref"]
        assert ref == "#/components/schemas/InferenceRequest"
        codes = set(op["responses"])
        assert {"200", "400", "401", "403", "404", "413", "422", "429", "500", "503", "504"} <= codes
        assert "Retry-After" in op["responses"]["503"]["headers"]
        assert set(op["responses"]["200"]["content"]) >= {"image/png", "image/jpeg", "image/webp"}
        headers = set(op["responses"]["200"]["headers"])
        image = {
            "x-request-id",
            "x-compute-time",
            "x-worker-id",
            "x-adapter-warm",
            "x-seed",
            "x-swap-time",
            "x-base-switch",
        }
        rate = {"X-RateLimit-Limit", "X-RateLimit-Remaining", "X-RateLimit-Reset", "RateLimit", "RateLimit-Policy"}
        assert headers == image | rate
        # Every limit a 429 can name: the pool's bound and the key's three.
        limits = set(op["responses"]["429"]["description"].split(", "))
        assert limits == {"queue_full", "rate_limited", "concurrency_limited", "key_queue_full"}
        # Each error type is named once, whichever steps of the generation path can raise it.
        for response in op["responses"].values():
            named = [n for n in response["description"].split(", ") if n]
            assert len(named) == len(set(named)), response["description"]
    result = schema["paths"]["/jobs/{job_id}/result"]["get"]["responses"]["200"]
    assert "x-seed" not in result["headers"] and "x-worker-id" in result["headers"]
    text = str(schema)
    assert "#/$defs/" not in text  # every reference resolves inside the document
