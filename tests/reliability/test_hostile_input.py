"""Hostile and malformed input through the real router: each a clear 4xx with error_type, nothing leaked,
no pickle ever loaded, no oversized file ever downloaded, and the base model left bit-exact."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import httpx
import pytest

from common.connections import async_client
from common.schemas import AdapterRef, Job
from lorafarm.farm import Farm
from router.queue import JobQueue
from tests.reliability.tools import SDXL, assert_error, body, log, post, raw_request

pytestmark = pytest.mark.slow

VALID = json.dumps(body()).encode()

HOSTILE_PATHS = [
    "/models/tiny/../etc/passwd",
    "/models/..%2F..%2Fetc%2Fpasswd",
    "/models/%2e%2e/%2e%2e/secret",
    "/models/tiny/sdxl-lora-a%00",
    "/models/tiny/" + "a" * 300,
    "/models/" + "o" * 97 + "/lora",
    "/models/tiny",
    "/models/tiny/a/b",
    "/models/tiny/%ff%fe",
    "/models/http:%2F%2F169.254.169.254%2Flatest%2Fmeta-data",
    "/models/tiny/a--b",
    "/models/-tiny/lora",
    "/models/%F0%9F%90%98/lora",
]


@pytest.mark.parametrize("path", HOSTILE_PATHS)
def test_hostile_repo_ids_in_the_path(one_worker: Farm, path: str) -> None:
    resp = raw_request(one_worker, "POST", path, VALID, {"Content-Type": "application/json"})
    assert_error(resp, 422, "invalid_request")


def test_line_breaks_in_the_path_inject_nothing(one_worker: Farm) -> None:
    # No route matches a path with a line break: 404, and no header made of it.
    resp = raw_request(one_worker, "POST", "/models/tiny/lora%0d%0aX-Injected:%201", VALID)
    assert_error(resp, 404, "not_found")
    assert "x-injected" not in resp[1]


def test_made_up_methods_mint_no_metric_series(one_worker: Farm) -> None:
    for i in range(50):
        code, _headers, _content = raw_request(one_worker, f"X{i:03d}LEAK", f"/models/{SDXL}", VALID)
        assert code == 405
    metrics = httpx.get(f"{one_worker.router_url}/metrics", timeout=10).text
    assert "LEAK" not in metrics
    assert 'method="other"' in metrics


@pytest.mark.parametrize(
    "lora", ["../../etc/passwd", "tiny/" + "x" * 200, "tiny/a b", "tiny/\xff\xfe", "http://169.254.169.254/x", "a/b/c"]
)
def test_hostile_lora_header(one_worker: Farm, lora: str) -> None:
    resp = raw_request(
        one_worker, "POST", "/", VALID, {"Content-Type": "application/json", "lora": lora.encode().decode("latin-1")}
    )
    assert_error(resp, 422, "invalid_request")


def _params(**params: object) -> bytes:
    return json.dumps({"inputs": "an elephant", "parameters": params}).encode()


HOSTILE_BODIES = {
    "not json": b"hello",
    "empty": b"",
    "a list": b"[]",
    "a string": b'"an elephant"',
    "null": b"null",
    "inputs a number": b'{"inputs": 5}',
    "inputs a list": b'{"inputs": ["a"]}',
    "inputs blank": b'{"inputs": "   "}',
    "parameters a string": b'{"inputs": "x", "parameters": "y"}',
    "unknown field": b'{"inputs": "x", "extra": 1}',
    "huge prompt": json.dumps({"inputs": "x" * 5000}).encode(),
    "huge negative prompt": _params(negative_prompt="x" * 5000),
    "body over 64 KiB": json.dumps({"inputs": "x", "pad": "y" * 70_000}).encode(),
    "non-UTF-8 bytes": b'{"inputs": "\xff\xfe an elephant"}',
    "lone surrogate": b'{"inputs": "\\ud800"}',
    "deeply nested": b'{"inputs": ' + b"[" * 50_000 + b"]" * 50_000 + b"}",
    "steps 0": _params(num_inference_steps=0),
    "steps 151": _params(num_inference_steps=151),
    "steps negative": _params(num_inference_steps=-1),
    "steps a string": _params(num_inference_steps="many"),
    "steps fractional": _params(num_inference_steps=2.5),
    "steps huge": _params(num_inference_steps=10**30),
    "width 63": _params(width=63),
    "width 100 (not a multiple of 8)": _params(width=100),
    "width 4096": _params(width=4096),
    "height negative": _params(height=-64),
    "guidance negative": _params(guidance_scale=-1),
    "guidance 31": _params(guidance_scale=31),
    "guidance NaN": b'{"inputs": "x", "parameters": {"guidance_scale": NaN}}',
    "guidance Infinity": b'{"inputs": "x", "parameters": {"guidance_scale": Infinity}}',
    "seed negative": _params(seed=-1),
    "seed over 64 bits": _params(seed=2**64),
    "lora_scale 10": _params(lora_scale=10),
    "five adapters": _params(adapters=[{"id": f"tiny/sdxl-lora-{c}"} for c in "abcde"]),
    "adapter id with ..": _params(adapters=[{"id": "../../etc/passwd"}]),
    "adapter id a number": _params(adapters=[{"id": 5}]),
    "adapter scale NaN": b'{"inputs": "x", "parameters": {"adapters": [{"id": "tiny/sdxl-lora-a", "scale": NaN}]}}',
}


@pytest.mark.parametrize("content", HOSTILE_BODIES.values(), ids=HOSTILE_BODIES.keys())
def test_malformed_bodies(one_worker: Farm, content: bytes) -> None:
    resp = raw_request(one_worker, "POST", f"/models/{SDXL}", content, {"Content-Type": "application/json"})
    assert_error(resp, 422, "invalid_request")


BAD_REPOS = [
    ("tiny/sdxl-lora-pickle", 400, "unsafe_adapter_format"),
    ("tiny/sdxl-lora-huge", 413, "adapter_too_large"),
    ("tiny/sdxl-lora-corrupt", 400, "adapter_corrupt"),
    ("tiny/sdxl-lora-nan", 400, "adapter_corrupt"),
    ("tiny/sdxl-lora-badkeys", 400, "adapter_incompatible"),
    ("tiny/sdxl-lora-misfit", 400, "adapter_incompatible"),
    ("tiny/sdxl-lora-gated", 403, "gated_repo"),
    ("tiny/sdxl-lora-private", 403, "private_repo"),
    ("tiny/sdxl-lora-disabled", 403, "disabled_repo"),
    ("tiny/lora-unserved-base", 400, "base_not_served"),
    ("tiny/not-a-pipeline", 400, "unsupported_model"),
    ("tiny/does-not-exist", 404, "repo_not_found"),
]


def base_png(farm: Farm) -> bytes:
    resp = post(farm, SDXL, body(seed=1234), headers={"Accept": "image/png"})
    assert resp.status_code == 200, resp.text
    return resp.content


@pytest.mark.timeout(120)
def test_bad_adapters_are_refused_and_the_base_stays_bit_exact(one_worker: Farm, canary: Path) -> None:
    farm = one_worker
    before = base_png(farm)
    for repo, status_code, error_type in BAD_REPOS:
        assert_error(post(farm, repo), status_code, error_type)
        # Composed as an extra adapter of a good LoRA, the bad one is refused just the same.
        composed = body(adapters=[{"id": repo}])
        resp = post(farm, "tiny/sdxl-lora-a", composed)
        assert resp.status_code == status_code, (repo, resp.text)
    assert post(farm, "tiny/sdxl-lora-a").status_code == 200
    assert base_png(farm) == before
    assert not canary.exists(), "a pickle file was unpickled"
    # The oversized LoRA was refused from its metadata: its file was never requested from the Hub.
    assert "/tiny/sdxl-lora-huge/resolve/" not in log(farm, "devhub")
    assert "/tiny/sdxl-lora-pickle/resolve/" not in log(farm, "devhub")


@pytest.mark.timeout(60)
def test_a_worker_handed_a_pickle_never_loads_it(one_worker: Farm, canary: Path) -> None:
    """Past the router (a job written to the stream by hand): the worker still refuses the .bin file."""
    farm = one_worker
    sha = httpx.get(f"{farm.hub_url}/api/models/tiny/sdxl-lora-pickle", timeout=10).json()["sha"]
    ref = AdapterRef(repo_id="tiny/sdxl-lora-pickle", revision=sha, weight_name="pytorch_lora_weights.bin")
    job = Job(pool=SDXL, adapters=[ref], prompt="an elephant", seed=1, num_inference_steps=2)

    async def run() -> tuple:
        client = async_client(farm.redis_url)
        try:
            queue = JobQueue(client, worker_ttl_s=1.5, queue_max=100)
            await queue.submit(job)
            found = await queue.wait(job.id, 30)
        finally:
            await client.aclose()
        assert found is not None
        return found

    result, images = asyncio.run(run())
    assert result.status == "failed"
    assert result.error_type == "unsafe_adapter_format"
    assert images == []
    assert not canary.exists(), "a pickle file was unpickled"
