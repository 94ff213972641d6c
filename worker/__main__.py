"""``python -m worker --base REPO_ID``: load the base, announce, serve the pool's jobs until SIGTERM."""

from __future__ import annotations

import argparse
import logging
import signal
import threading
from typing import Any

from common.connections import OUTAGES, sync_client
from worker.calibrate import calibrate
from worker.compiled import CompiledDenoiser, CompileFailed
from worker.engine import SwapEngine
from worker.families import pipeline_family
from worker.loop import Worker
from worker.lowrank import FixedRank
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


def build_engine(settings: WorkerSettings, pipe: Any) -> SwapEngine:
    """The swap engine; with fixed-shape unfused factors when a compiled denoiser may serve unfused."""
    fixed = None
    if settings.compile != "off" and settings.swap_mode != "fused":
        targets = tuple(settings.compile_unfused_targets) or pipeline_family(type(pipe)).lora_targets
        fixed = FixedRank(settings.compile_unfused_rank, targets, settings.compile_unfused_overflow)
    engine = SwapEngine(
        pipe,
        pristine=settings.pristine,
        headroom_bytes=settings.pristine_headroom_bytes,
        host_bytes=settings.pristine_host_bytes,
        fixed=fixed,
    )
    if fixed is not None:
        logging.getLogger("worker").info(
            "event=unfused_buffers modules=%d rank=%d bytes=%d",
            len(engine.padded_targets),
            fixed.rank,
            engine.padded_bytes,
        )
    return engine


def compile_or_exit(settings: WorkerSettings, pipe: Any, metrics: WorkerMetrics) -> CompiledDenoiser | None:
    """Compile and warm up the denoiser (compile on), or stop the process: never a half-ready worker."""
    if settings.compile == "off":
        return None
    log = logging.getLogger("worker")
    compiled = CompiledDenoiser(
        pipe,
        pipeline_family(type(pipe)),
        mode=settings.compile,
        scope=settings.compile_scope,
        sizes=settings.served_sizes(),
        default=settings.default_size,
        new_sizes=settings.compile_new_sizes,
        device=resolve_device(settings.device),
    )
    try:
        seconds = compiled.compile()
    except CompileFailed as exc:
        log.error("event=compile_failed mode=%s scope=%s error=%s", settings.compile, settings.compile_scope, exc)
        log.debug("compile traceback", exc_info=exc)
        raise SystemExit(1) from exc
    sizes = ",".join(f"{w}x{h}" for w, h in compiled.sizes)
    log.info("event=compiled mode=%s scope=%s sizes=%s seconds=%.1f", compiled.mode, compiled.scope, sizes, seconds)
    metrics.watch_compile(seconds, lambda: compiled.recompiles)
    return compiled


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
    # The engine's hooks exist before the compile; calibration runs on the compiled denoiser.
    engine = None if settings.stock_swap else build_engine(settings, pipe)
    compiled = compile_or_exit(settings, pipe, metrics)
    swapper: Swapper
    if engine is None:
        swapper = StockSwapper(pipe, settings)
    else:
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
    worker = Worker(settings, queue, pipe, swapper, metrics, device=resolve_device(settings.device), compiled=compiled)
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
