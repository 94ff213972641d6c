"""API keys of the key ring through the router in process: who gets in, each key's rate and
concurrency (429 naming the limit, with ``Retry-After`` and the rate headers), revocation, and a
key that queued many jobs not delaying another key's one (served by the real worker)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis

from common.tenants import KeyRing, Tenant
from tests.integration.inprocess import SDXL, AppClient, Workers, assert_error

pytestmark = pytest.mark.anyio

BODY = {"inputs": "a cat", "parameters": {"num_inference_steps": 2, "seed": 4}}
RING = {"tenant_keys": True, "key_cache_s": 0.0}


@pytest.fixture
def ring(redis_url: str) -> Iterator[KeyRing]:
    client = redis.Redis.from_url(redis_url)
    yield KeyRing(client)
    client.close()


def bearer(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


async def test_only_a_key_of_the_ring_gets_in(app_client: AppClient, workers: Workers, ring: KeyRing) -> None:
    key = ring.add(Tenant(name="acme"))
    assert key is not None and ring.add(Tenant(name="acme")) is None  # one key per name
    async with app_client(**RING) as client:
        missing = await client.post(f"/models/{SDXL}", json=BODY)
        wrong = await client.post(f"/models/{SDXL}", json=BODY, headers=bearer(key + "x"))
        good = await workers.serve(client.post(f"/models/{SDXL}", json=BODY, headers=bearer(key)))
        assert ring.revoke("acme") and not ring.revoke("acme")
        revoked = await client.post(f"/models/{SDXL}", json=BODY, headers=bearer(key))
        schema = (await client.get("/openapi.json")).json()
    assert_error(missing, 401, "unauthorized")
    assert_error(wrong, 401, "unauthorized")
    assert good.status_code == 200, good.text
    assert "x-ratelimit-limit" not in good.headers  # no rate limit, no rate headers
    assert_error(revoked, 401, "unauthorized")
    assert "securitySchemes" in schema["components"]  # a key is needed, and the schema says so


async def test_past_its_rate_a_key_gets_429_naming_the_limit_while_another_key_gets_in(
    app_client: AppClient, workers: Workers, ring: KeyRing
) -> None:
    slow = ring.add(Tenant(name="slow", rate_per_s=0.1, burst=2))
    other = ring.add(Tenant(name="other", rate_per_s=0.1, burst=2))
    assert slow is not None and other is not None
    async with app_client(**RING) as client:
        first = await workers.serve(client.post(f"/models/{SDXL}", json=BODY, headers=bearer(slow)))
        queued = await client.post("/jobs", json=BODY, headers=bearer(slow))
        refused = await client.post(f"/models/{SDXL}", json=BODY, headers=bearer(slow))
        refused_job = await client.post("/jobs", json=BODY, headers=bearer(slow))
        admitted = await workers.serve(client.post(f"/models/{SDXL}", json=BODY, headers=bearer(other)))
    assert first.status_code == 200, first.text
    assert (first.headers["x-ratelimit-limit"], first.headers["x-ratelimit-remaining"]) == ("2", "1")
    assert first.headers["ratelimit-policy"] == '"key";q=2;w=20'
    assert queued.status_code == 202 and queued.headers["x-ratelimit-remaining"] == "0"
    for answer in (refused, refused_job):
        body = assert_error(answer, 429, "rate_limited")
        assert "key slow" in body["error"] and "0.1 requests/s" in body["error"]
        # The next token is about 10 s away at 0.1/s (less what the requests above took).
        assert 1 <= int(answer.headers["retry-after"]) <= 10
        assert answer.headers["x-ratelimit-remaining"] == "0"
        assert answer.headers["ratelimit"].startswith('"key";r=0;t=')
    assert admitted.status_code == 200, admitted.text


async def test_past_its_concurrency_a_key_gets_429_while_another_key_gets_in(
    app_client: AppClient, workers: Workers, ring: KeyRing
) -> None:
    busy = ring.add(Tenant(name="busy", concurrency=2))
    other = ring.add(Tenant(name="other", concurrency=2))
    assert busy is not None and other is not None
    async with app_client(**RING) as client:
        held = [await client.post("/jobs", json=BODY, headers=bearer(busy)) for _ in range(2)]
        refused = await client.post("/jobs", json=BODY, headers=bearer(busy))
        refused_sync = await client.post(f"/models/{SDXL}", json=BODY, headers=bearer(busy))
        admitted = await client.post("/jobs", json=BODY, headers=bearer(other))
        await workers.drain()  # the two jobs settle: busy may send again
        again = await client.post("/jobs", json=BODY, headers=bearer(busy))
    assert [h.status_code for h in held] == [202, 202]
    for answer in (refused, refused_sync):
        body = assert_error(answer, 429, "concurrency_limited")
        assert "key busy has 2 unfinished jobs" in body["error"]
        assert int(answer.headers["retry-after"]) >= 1
    assert admitted.status_code == 202
    assert again.status_code == 202, again.text


async def test_a_key_with_a_deep_backlog_does_not_delay_another_keys_job(
    app_client: AppClient, workers: Workers, ring: KeyRing
) -> None:
    """One live worker and a share of one job per worker: a's jobs past the first park, b's goes on the stream."""
    a, b = ring.add(Tenant(name="a")), ring.add(Tenant(name="b"))
    assert a is not None and b is not None
    async with app_client(**RING, tenant_share_per_worker=1) as client:
        mine = [(await client.post("/jobs", json=BODY, headers=bearer(a))).json() for _ in range(5)]
        theirs = (await client.post("/jobs", json=BODY, headers=bearer(b))).json()
        positions = [(await client.get(f"/jobs/{j['id']}", headers=bearer(a))).json()["position"] for j in mine]
        await workers.drain()
    served = [job.id for job in workers[SDXL].jobs]
    assert sorted(served) == sorted([j["id"] for j in mine] + [theirs["id"]])
    # b's job waited behind one of a's (the share), plus at most the one a released meanwhile,
    # not behind all five.
    assert served.index(theirs["id"]) <= 2, served
    assert positions == [0, 1, 2, 3, 4]  # a's parked jobs: a's own jobs ahead of each


async def test_the_single_api_key_is_one_key_with_the_limits_of_its_settings(
    app_client: AppClient, workers: Workers
) -> None:
    async with app_client(api_key="sekrit", api_key_rate_per_s=0.1, api_key_burst=1) as client:
        first = await workers.serve(client.post(f"/models/{SDXL}", json=BODY, headers=bearer("sekrit")))
        second = await client.post(f"/models/{SDXL}", json=BODY, headers=bearer("sekrit"))
    assert first.status_code == 200 and first.headers["x-ratelimit-remaining"] == "0"
    body = assert_error(second, 429, "rate_limited")
    assert "key default" in body["error"]
