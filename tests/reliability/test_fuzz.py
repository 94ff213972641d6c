"""API fuzzing: schemathesis drives the router's own OpenAPI schema in process (ASGI), with a real
redis-server and the devhub behind it, and a stand-in worker that answers every job at once.

Over at least 500 generated cases (valid and invalid, every route): no 5xx, and every answer
conforms to the schema (declared status, content type, headers, body).
"""

from __future__ import annotations

import io
import threading
from collections.abc import Iterator

import pytest
import redis
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from PIL import Image
from schemathesis import GenerationMode
from schemathesis.checks import (
    content_type_conformance,
    negative_data_rejection,
    not_a_server_error,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from common.connections import sync_client
from common.schemas import JobResult, WorkerState
from router.app import create_app
from router.jobs import MEDIA_TYPES
from router.settings import RouterSettings
from tests.reliability.tools import SDXL
from worker.queue import WorkerQueue

pytestmark = pytest.mark.slow

#: Per configuration (with and without an API key): 600 in all.
CASES = 300
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    negative_data_rejection,
]


class InstantWorker:
    """A worker of the pool over the real queue protocol that answers each job with a tiny image."""

    def __init__(self, url: str) -> None:
        self.client = sync_client(url)
        self.queue = WorkerQueue(self.client, SDXL, "fuzz-worker")
        self.queue.ensure_group()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.images = {fmt: self._image(fmt) for fmt in MEDIA_TYPES}

    @staticmethod
    def _image(fmt: str) -> bytes:
        buf = io.BytesIO()
        Image.new("RGB", (8, 8), (20, 120, 200)).save(buf, format=fmt.upper())
        return buf.getvalue()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.queue.heartbeat(WorkerState(worker_id="fuzz-worker", pool=SDXL, inference_s=0.01), ttl_s=5)
            for d in self.queue.claim(block_ms=50):
                result = JobResult(
                    job_id=d.job.id, status="done", content_type=MEDIA_TYPES[d.job.format], worker_id="fuzz-worker"
                )
                self.queue.publish_result(result, [self.images[d.job.format]] * d.job.images)
                self.queue.ack(d.entry_id, d.stream)

    def __enter__(self) -> InstantWorker:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)
        self.queue.deregister()
        self.client.close()


@pytest.fixture(scope="module")
def fuzz_redis(redis_server: str) -> Iterator[str]:
    url = redis_server.rsplit("/", 1)[0] + "/9"  # a database of its own
    redis.Redis.from_url(url).flushdb()
    yield url


@pytest.mark.parametrize("api_key", [None, "fuzz-key"], ids=["open", "api-key"])
def test_router_api_fuzz(fuzz_redis: str, devhub_url: str, api_key: str | None) -> None:
    app = create_app(
        RouterSettings(
            pools=[SDXL],
            redis_url=fuzz_redis,
            hf_endpoint=devhub_url,
            hf_token="hf_devhub_demo",
            request_timeout_s=10,
            queue_max=1000,
            api_key=api_key,
        )
    )
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    # With a key, every case carries it (the 401s are tested on their own, in test_auth).
    auth = {"Authorization": f"Bearer {api_key}"} if api_key else None
    served = schema["/models/{repo_id}"]["POST"].as_strategy(
        path_parameters={"repo_id": "tiny/sdxl-lora-a"}, headers=auth
    )
    strategy = st.one_of(
        schema.as_strategy(GenerationMode.POSITIVE, headers=auth),
        schema.as_strategy(GenerationMode.NEGATIVE, headers=auth),
        served,
    )
    seen: dict[str, int] = {}

    @settings(
        max_examples=CASES,
        deadline=None,
        database=None,
        phases=[Phase.generate, Phase.shrink],
        suppress_health_check=list(HealthCheck),
    )
    @given(case=strategy)
    def fuzz(case: schemathesis.Case) -> None:
        response = case.call()
        key = f"{case.method} {case.path} {response.status_code}"
        seen[key] = seen.get(key, 0) + 1
        case.validate_response(response, checks=CHECKS)

    with InstantWorker(fuzz_redis):
        fuzz()
    print("cases by route and status:", dict(sorted(seen.items())))
    assert sum(seen.values()) >= CASES * 0.9
    assert not [k for k in seen if k.rsplit(" ", 1)[1].startswith("5")]
