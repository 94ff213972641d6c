"""Redis killed and started again (same port, same append-only file): nothing accepted is lost."""

from __future__ import annotations

import re
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
import redis

from lorafarm.farm import Farm
from tests.polling import busy_workers
from tests.reliability.figures import Figures
from tests.reliability.tools import (
    SDXL,
    assert_clean,
    assert_error,
    body,
    post,
    queue_state,
    ran,
    redis_client,
    wait_until,
    worker_logs,
)

pytestmark = pytest.mark.slow

OUTAGE_S = 4.0


@pytest.mark.timeout(150)
def test_redis_restart_every_accepted_job_completes(two_workers: Farm, figures: Figures) -> None:
    farm = two_workers
    client = redis_client(farm)
    with ThreadPoolExecutor(4) as pool:
        # Jobs in a worker's hands and jobs waiting when Redis dies.
        accepted = [pool.submit(post, farm, SDXL, body(steps=30, seed=40 + i)) for i in range(4)]
        wait_until(lambda: queue_state(client)[0] == 4, 20, what="4 jobs accepted")
        wait_until(lambda: busy_workers(farm), 20, what="a job in hand")
        farm.kill("redis")
        down = time.monotonic()

        # While it is down: a clear 503 with Retry-After, the router stays up.
        refused = post(farm, SDXL, body(seed=49), timeout=20)
        assert_error(refused, 503, "redis_unavailable")
        assert httpx.get(f"{farm.router_url}/health", timeout=5).status_code == 200
        assert_error(httpx.get(f"{farm.router_url}/ready", timeout=10), 503, "redis_unavailable")
        time.sleep(max(0.0, OUTAGE_S - (time.monotonic() - down)))

        farm.start_redis()  # same port, same directory: the append-only file is replayed
        back = time.monotonic()
        answers = [f.result(timeout=90) for f in accepted]
    recovered_s = time.monotonic() - back
    assert [a.status_code for a in answers] == [200] * 4, [a.text for a in answers]
    for answer in answers:  # (the worker logs the job a moment after it answered it)
        wait_until(lambda a=answer: ran(farm, a.headers["x-request-id"]), 5, what="the job logged as done")
    assert farm.procs["router"].poll() is None
    # Each job ran once: a job in hand went on through the outage (its step progress is best
    # effort) and its result was written once Redis was back, instead of running again.
    logs = "\n".join(worker_logs(farm).values())
    for answer in answers:
        assert logs.count(f"event=job_done job={answer.headers['x-request-id']} ") == 1
    # Workers that tried Redis during the outage rode it out with a growing backoff (busy with a
    # job all through it, a worker may not have tried).
    for text in worker_logs(farm).values():
        waits = [float(s) for s in re.findall(r"event=redis_down .* retry_in=([\d.]+)s", text)]
        assert len(waits) < 2 or max(waits) > min(waits), waits
    assert post(farm, SDXL).status_code == 200
    assert_clean(client)
    figures(outage_s=round(back - down, 2), last_accepted_answered_after_redis_back_s=round(recovered_s, 2))


def test_redis_password_is_required_and_never_logged(farm: Farm) -> None:
    """The farm's Redis wants a password: every service got it through its URL, and none prints it."""
    bare = redis.Redis(host="127.0.0.1", port=farm.redis_port, socket_timeout=5)
    with pytest.raises(redis.AuthenticationError):
        bare.ping()
    assert redis_client(farm).ping()
    password = farm.config.redis_password
    assert password
    for path in farm.logs.glob("*.log"):
        if path.stem != "redis":
            assert password not in path.read_text(errors="replace"), path.name
