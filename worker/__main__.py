"""``python -m worker --base REPO_ID``: load the base, announce, serve the pool's jobs until SIGTERM."""

from __future__ import annotations

import argparse
import logging
import signal
import threading
from typing import Any

from common.connections import OUTAGES, sync_client
from worker.calibrate import calibrate
from worker.engine import SwapEngine
from worker.loop import Worker
from worker.metrics import WorkerMetrics
from worker.pipeline import load_base, resolve_device
from worker.probe import start_probe
from worker.queue import WorkerQueue
from worker.settings import WorkerSettings
from worker.store import AdapterStore
from worker.swapper import EngineSwapper, StockSwapper, Swapper


def build_settings(argv: list[str] | None = None) -> tuple[WorkerSettings, bool]:
    parser = argparse.ArgumentParser(prog="python -m worker", description=__doc__)
    parser.add_argument("--base", help="base repo id to serve (or LORAFARM_BASE)")
    parser.add_argument("--burst", action="store_true", help="exit once nothing is left to claim")
    args = parser.parse_args(argv)
    overrides: dict[str, Any] = {"base": args.base} if args.base else {}
    settings = WorkerSettings(**overrides)
    if not settings.base:
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

    metrics = WorkerMetrics(settings.base)
    pipe = load_base(settings)
    swapper: Swapper
    if settings.stock_swap:
        swapper = StockSwapper(pipe, settings)
    else:
        engine = SwapEngine(
            pipe,
            pristine=settings.pristine,
            headroom_bytes=settings.pristine_headroom_bytes,
            host_bytes=settings.pristine_host_bytes,
        )
        store = AdapterStore(settings, engine=engine)
        metrics.watch_cache(store.cache.counts)
        metrics.watch_pristine(engine.pristine_tiers)
        costs = calibrate(engine, size=settings.default_size) if settings.swap_mode == "auto" else None
        swapper = EngineSwapper(engine, store, mode=settings.swap_mode, costs=costs)

    # The socket timeout outlasts the claim's blocking read, or every idle claim would time out.
    client = sync_client(settings.redis_target(), socket_timeout=settings.block_ms / 1000 + 5)
    queue = WorkerQueue(
        client,
        settings.base,
        settings.worker_id,
        max_deliveries=settings.max_deliveries,
        replication=settings.replication(),
    )
    worker = Worker(settings, queue, pipe, swapper, metrics, device=resolve_device(settings.device))
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
    log.info("event=worker_started worker=%s pool=%s", settings.worker_id, settings.base)
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
            queue.deregister()
        except OUTAGES:
            pass
        log.info("event=worker_stopped worker=%s jobs_done=%d", settings.worker_id, worker.jobs_done)


if __name__ == "__main__":
    main()
