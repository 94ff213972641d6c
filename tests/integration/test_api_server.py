"""The router under a real uvicorn server (in a thread): a client that goes away, a shutdown that drains.

What ASGI in process cannot show: a dropped connection, and ``should_exit`` as on SIGTERM. The
stub worker claims nothing (idle) or takes a second (slow): only the router's part is asserted.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator

import httpx
import pytest
import redis
import uvicorn

from common import keys
from lorafarm.farm import free_port, wait_port
from router.app import create_app
from router.settings import RouterSettings
from tests.integration.inprocess import PROMPT, SD15, SDXL, StubWorker

pytestmark = pytest.mark.anyio


@pytest.fixture
def server(redis_url: str, devhub_url: str) -> Iterator[tuple[uvicorn.Server, threading.Thread, str]]:
    """The router app under uvicorn on a free loopback port; yields the server, its thread, its URL."""
    settings = RouterSettings(redis_url=redis_url, hf_endpoint=devhub_url, pools=[SDXL, SD15], request_timeout_s=30)
    port = free_port()
    config = uvicorn.Config(
        create_app(settings), host="127.0.0.1", port=port, log_level="warning", timeout_graceful_shutdown=10
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        wait_port(port)
        yield server, thread, f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


async def test_client_disconnect_cancels_the_job(
    server: tuple[uvicorn.Server, threading.Thread, str], redis_url: str
) -> None:
    """A client that gives up has its queued job removed, not run later."""
    _, _, url = server
    check = redis.Redis.from_url(redis_url)
    try:
        with StubWorker(redis_url, SDXL, "idle", mode="idle"):
            async with httpx.AsyncClient(base_url=url) as client:
                with pytest.raises(httpx.ReadTimeout):
                    await client.post("/models/tiny/sdxl-base", json=PROMPT, timeout=0.5)
                # Placed on the only worker (affinity): its own stream, or the shared one.
                streams = [keys.pool_stream(SDXL), keys.worker_stream(SDXL, "idle")]
                deadline = time.monotonic() + 5
                while time.monotonic() < deadline and (
                    any(check.xlen(s) for s in streams) or not check.keys(keys.job_cancel("*"))
                ):
                    await asyncio.sleep(0.1)
                assert [check.xlen(s) for s in streams] == [0, 0]
                assert len(check.keys(keys.job_cancel("*"))) == 1
                assert (await client.get("/health")).status_code == 200
    finally:
        check.close()


async def test_shutdown_drains_in_flight_requests(
    server: tuple[uvicorn.Server, threading.Thread, str], redis_url: str
) -> None:
    """uvicorn told to exit (as on SIGTERM) lets the request in flight get its image."""
    running, thread, url = server
    with StubWorker(redis_url, SDXL, "slow", mode="slow"):
        async with httpx.AsyncClient(base_url=url, timeout=10) as client:
            request = asyncio.create_task(client.post("/models/tiny/sdxl-base", json=PROMPT))
            await asyncio.sleep(0.4)
            running.should_exit = True
            r = await request
    assert r.status_code == 200
    thread.join(10)
    assert not thread.is_alive()
