"""``python -m worker --base REPO_ID [--base ...]``: load the bases, announce, serve their pools until SIGTERM.

One base: a single-base worker. Several: a multi-base worker, one base active on the device at a
time (as its budget allows), the others warm in pinned host memory or cold on disk.
"""

from __future__ import annotations

import argparse
import logging
import signal
import threading
from typing import Any

from common.connections import OUTAGES, sync_client
from worker.loop import Worker
from worker.metrics import WorkerMetrics
from worker.pipeline import resolve_device
from worker.probe import start_probe
from worker.settings import WorkerSettings
from worker.startup import load_bases
from worker.tiers import BaseDoesNotFit


def build_settings(argv: list[str] | None = None) -> tuple[WorkerSettings, bool]:
    parser = argparse.ArgumentParser(prog="python -m worker", description=__doc__)
    parser.add_argument(
        "--base", action="append", help="base repo id to serve; repeat for a multi-base worker (or LORAFARM_BASE)"
    )
    parser.add_argument("--burst", action="store_true", help="exit once nothing is left to claim")
    args = parser.parse_args(argv)
    overrides: dict[str, Any] = {"base": ",".join(args.base)} if args.base else {}
    settings = WorkerSettings(**overrides)
    if not settings.bases:
        parser.error("--base (or LORAFARM_BASE) is required")
    return settings, args.burst


def main(argv: list[str] | None = None) -> None:
    settings, burst = build_settings(argv)
    logging.basicConfig(level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    log = logging.getLogger("worker")
    stop = threading.Event()

    def _stop(signum: int, _frame: Any) -> None:
        log.info("event=stopping signal=%d (finishing the job in hand)", signum)
        stop.set()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)

    metrics = WorkerMetrics(settings.bases)
    # The socket timeout outlasts the claim's blocking read, or every idle claim would time out.
    client = sync_client(settings.redis_target(), socket_timeout=settings.block_ms / 1000 + 5)
    try:
        bases = load_bases(settings, client, metrics)
    except (BaseDoesNotFit, ValueError) as exc:
        log.error("event=refused error=%s", exc)
        raise SystemExit(f"worker refused to start: {exc}") from exc
    worker = Worker(settings, bases, metrics, device=resolve_device(settings.device))
    if settings.worker_port:
        start_probe(
            settings.worker_host,
            settings.worker_port,
            ready=worker.ready,
            alive=lambda: not worker.hung(),
            registry=metrics.registry,
        )
    # The heartbeat outlives ``stop``: while the job in hand finishes, this worker must still look
    # alive, or a live worker of the pool would adopt that job and run it a second time.
    beat_stop = threading.Event()
    beat = threading.Thread(target=worker.heartbeat_forever, args=(beat_stop,), name="heartbeat", daemon=True)
    beat.start()
    log.info("event=worker_started worker=%s pools=%s", settings.worker_id, ",".join(bases.pools))
    try:
        worker.run(stop, burst=burst)
    finally:
        stop.set()
        beat_stop.set()
        beat.join(timeout=settings.heartbeat_s + 1)
        try:
            if worker.settle_again():
                log.warning("event=unsettled_at_exit jobs=%d (peers take them over)", len(worker.unsettled))
            worker.hand_back()
            worker.deregister()
        except OUTAGES:
            pass
        log.info("event=worker_stopped worker=%s jobs_done=%d", settings.worker_id, worker.jobs_done)


if __name__ == "__main__":
    main()
