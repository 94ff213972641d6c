"""What waiting for a replica costs: the router's submit and the worker's settle, with
``LORAFARM_REDIS_MIN_REPLICAS`` 0 and 1, side by side in one run.

Starts a replicated Redis on loopback as the farm runs it (``lorafarm/replicated.py``: a primary,
a replica, 3 sentinels; the clients find the primary through the sentinels), then times, job by
job and alternating which setting goes first, ``JobQueue.submit`` (what the router does before it
answers 202) and ``WorkerQueue.settle`` (the result and its acknowledgement) for both settings.

    python -m bench.redis_wait [--jobs 2000] [--timeout-ms 500]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path

import redis

from common.connections import async_client, sync_client
from common.replication import Replication
from common.schemas import Job, JobResult, WorkerState
from lorafarm.farm import Farm, FarmConfig
from router.queue import JobQueue
from worker.queue import WorkerQueue

POOL = "bench/redis-wait"
IMAGE = bytes(4096)  # a tiny JPEG's size
SETTINGS = (0, 1)


async def measure(farm: Farm, jobs: int, timeout_ms: int) -> dict[tuple[str, int], list[float]]:
    """Seconds per call, by (operation, min replicas)."""
    target = farm.redis_target()
    client, worker_client = async_client(target), sync_client(target)
    routers = {
        n: JobQueue(client, worker_ttl_s=60, queue_max=10**6, replication=Replication(n, timeout_ms)) for n in SETTINGS
    }
    workers = {
        n: WorkerQueue(worker_client, POOL, "bench-worker", replication=Replication(n, timeout_ms)) for n in SETTINGS
    }
    workers[0].ensure_group()
    live = [WorkerState(worker_id="bench-worker", pool=POOL)]
    times: dict[tuple[str, int], list[float]] = {(op, n): [] for op in ("submit", "settle") for n in SETTINGS}
    mode_of: dict[str, int] = {}
    for i in range(jobs):
        order = SETTINGS if i % 2 == 0 else SETTINGS[::-1]
        for n in order:
            job = Job(pool=POOL, prompt=f"a cat {i}", seed=i)
            start = time.perf_counter()
            await routers[n].submit(job, workers=live)
            times[("submit", n)].append(time.perf_counter() - start)
            mode_of[job.id] = n
        while mode_of:  # the shared stream gives one job per claim
            [delivery] = workers[0].claim(block_ms=1000)
            n = mode_of.pop(delivery.job.id)
            result = JobResult(job_id=delivery.job.id, status="done", content_type="image/jpeg", worker_id="bench")
            start = time.perf_counter()
            assert workers[n].settle(delivery, result, IMAGE)
            times[("settle", n)].append(time.perf_counter() - start)
    await client.aclose()
    worker_client.close()
    return times


def quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def report(times: dict[tuple[str, int], list[float]], jobs: int, command: str) -> str:
    lines = [
        "| call | min replicas 0: median / p90 / p99 (ms) | min replicas 1: median / p90 / p99 (ms) | added (median) |",
        "|---|---|---|---|",
    ]
    for op, label in (("submit", "`JobQueue.submit` (router, before 202)"), ("settle", "`WorkerQueue.settle`")):
        cells = []
        for n in SETTINGS:
            values = times[(op, n)]
            cells.append(" / ".join(f"{quantile(values, q) * 1000:.2f}" for q in (0.5, 0.9, 0.99)))
        added = (statistics.median(times[(op, 1)]) - statistics.median(times[(op, 0)])) * 1000
        lines.append(f"| {label} | {cells[0]} | {cells[1]} | {added:+.2f} ms |")
    load = os.getloadavg()[0]
    lines += [
        "",
        f"{jobs} jobs per setting, alternating; primary, replica and 3 sentinels on loopback, clients through "
        f"the sentinels. Machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
        f"redis-server {redis_version()}, load average {load:.1f}.",
        f"Command: `{command}`",
    ]
    return "\n".join(lines)


def redis_version() -> str:
    import subprocess

    out = subprocess.run(["redis-server", "--version"], capture_output=True, text=True).stdout
    return next((part.split("=")[1] for part in out.split() if part.startswith("v=")), "?")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.redis_wait", description=__doc__.split("\n")[0])
    parser.add_argument("--jobs", type=int, default=2000, help="jobs per setting")
    parser.add_argument("--timeout-ms", type=int, default=500, help="LORAFARM_REDIS_REPLICA_TIMEOUT_MS")
    args = parser.parse_args(argv)
    command = ("python -m bench.redis_wait " + shlex.join(argv if argv is not None else sys.argv[1:])).rstrip()
    state = Path(tempfile.mkdtemp(prefix="lorafarm-redis-wait-"))
    farm = Farm(FarmConfig(state_dir=state, zoo_dir=state, redis_ha=True))
    try:
        farm.start_redis()
        times = asyncio.run(measure(farm, args.jobs, args.timeout_ms))
    except redis.RedisError as exc:
        raise SystemExit(f"redis failed: {exc!r}; logs in {farm.logs}") from exc
    finally:
        farm.stop()
    print(report(times, args.jobs, command))


if __name__ == "__main__":
    main()
