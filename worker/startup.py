"""A worker's start-up: each base loaded into host memory, its engine and queue made, placed in its tier.

Bases are loaded one after another (each from the Hub's disk cache, fetched once); each joins
the tiers as it comes (``Bases.add``: the others move to make room), and with
``swap_mode=auto`` its swap costs are measured while it is on the device. The device budget is
``LORAFARM_BASE_DEVICE_BYTES``, else on CUDA the free memory at start less the pristine
headroom (several bases stay active while they fit), else (a CPU) the largest base: one base
on the "device" at a time, so that switching happens, as a copy in the same memory.
"""

from __future__ import annotations

import functools
import logging
from typing import Any

import redis
import torch

from worker.bases import Bases, BaseSlot
from worker.calibrate import calibrate
from worker.compiled import CompiledDenoiser, CompileFailed
from worker.engine import SwapEngine
from worker.families import pipeline_family
from worker.lowrank import FixedRank
from worker.metrics import WorkerMetrics
from worker.pipeline import load_base, resolve_device
from worker.queue import WorkerQueue
from worker.residency import BaseWeights
from worker.settings import WorkerSettings
from worker.store import AdapterStore
from worker.swapper import EngineSwapper, StockSwapper, Swapper
from worker.tiers import Budgets, Tiers

log = logging.getLogger(__name__)


def load_bases(settings: WorkerSettings, client: redis.Redis, metrics: WorkerMetrics) -> Bases:
    """Every base of ``settings`` loaded, with its pool's queue, engine, store and swapper.

    Raises ``worker.tiers.BaseDoesNotFit`` when a base cannot fit the budgets, and ``ValueError``
    for the stock swap with several bases (the reference path keeps no exact copy to move).
    """
    if settings.stock_swap and len(settings.bases) > 1:
        raise ValueError("stock_swap serves one base: diffusers' own fuse drifts, and a drifted base cannot move")
    if settings.compile != "off" and len(settings.bases) > 1:
        # A base switch rebinds its weights to other tensors: a compiled graph would recompile.
        raise ValueError("LORAFARM_COMPILE serves one base: a base switch moves the weights a compiled graph reads")
    pipes = {}
    for name in settings.bases:
        pipe = load_base(settings.for_base(name), place=False)
        pipes[name] = (pipe, make_swapper(settings.for_base(name), pipe, metrics))
    return serve_bases(settings, client, metrics, pipes)


def serve_bases(
    settings: WorkerSettings, client: redis.Redis, metrics: WorkerMetrics, pipes: dict[str, tuple[Any, Swapper]]
) -> Bases:
    """Bases of pipelines loaded in host memory (base -> pipeline and its swapper), each placed in
    its tier as it joins, its pool's queue made, its costs measured with ``swap_mode=auto``."""
    device = resolve_device(settings.device)
    weights = {name: BaseWeights(pipe, device, pin=len(pipes) > 1) for name, (pipe, _) in pipes.items()}
    bases = Bases(Tiers(budgets(settings, device, weights)), on_switch=metrics.base_switch)
    for name, (pipe, swapper) in pipes.items():
        queue = WorkerQueue(
            client,
            name,
            settings.worker_id,
            max_deliveries=settings.max_deliveries,
            replication=settings.replication(),
        )
        slot = BaseSlot(name, settings.for_base(name), queue, pipe, swapper, weights[name])
        bases.add(slot)
        metrics.watch_base(functools.partial(bases.tiers.tier_bytes, name), name)
        # On the device now, with the engine's hooks in place; calibration runs on the compiled denoiser.
        slot.compiled = compile_or_exit(settings.for_base(name), pipe, metrics)
        if isinstance(swapper, EngineSwapper) and settings.swap_mode == "auto":
            swapper.costs = calibrate(swapper.engine, size=settings.default_size)
        log.info("event=base_ready base=%s bytes=%d tiers=%s", name, weights[name].nbytes, bases.tiers.tier_bytes())
    return bases


def make_swapper(settings: WorkerSettings, pipe: Any, metrics: WorkerMetrics) -> Swapper:
    """The stock swapper (reference behaviour) or lorafarm's engine with its own host adapter cache."""
    if settings.stock_swap:
        return StockSwapper(pipe, settings)
    engine = SwapEngine(
        pipe,
        pristine=settings.pristine,
        headroom_bytes=settings.pristine_headroom_bytes,
        host_bytes=settings.pristine_host_bytes,
        fixed=fixed_rank(settings, pipe),
    )
    if engine.fixed is not None:
        log.info(
            "event=unfused_buffers modules=%d rank=%d bytes=%d",
            len(engine.padded_targets),
            engine.fixed.rank,
            engine.padded_bytes,
        )
    store = AdapterStore(settings, engine=engine)
    metrics.watch_cache(store.cache.counts, settings.base)
    metrics.watch_pristine(engine.pristine_tiers, settings.base)
    return EngineSwapper(engine, store, mode=settings.swap_mode)


def fixed_rank(settings: WorkerSettings, pipe: Any) -> FixedRank | None:
    """Fixed-shape unfused factors, when a compiled denoiser may serve unfused (``worker.lowrank``)."""
    if settings.compile == "off" or settings.swap_mode == "fused":
        return None
    targets = tuple(settings.compile_unfused_targets) or pipeline_family(type(pipe)).lora_targets
    return FixedRank(settings.compile_unfused_rank, targets, settings.compile_unfused_overflow)


def compile_or_exit(settings: WorkerSettings, pipe: Any, metrics: WorkerMetrics) -> CompiledDenoiser | None:
    """Compile and warm up the denoiser (compile on), or stop the process: never a half-ready worker."""
    if settings.compile == "off":
        return None
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
    metrics.watch_compile(seconds, lambda: compiled.recompiles, settings.base)
    return compiled


def budgets(settings: WorkerSettings, device: str, weights: dict[str, BaseWeights]) -> Budgets:
    """The tiers' byte budgets: the settings, and the device budget's default (module docstring)."""
    on_device = settings.base_device_bytes
    if on_device is None and device == "cuda":
        free, _ = torch.cuda.mem_get_info()
        on_device = max(1, free - settings.pristine_headroom_bytes)
    if on_device is None:
        on_device = max(w.nbytes for w in weights.values())
    return Budgets(device=on_device, host=settings.base_host_bytes, disk=settings.base_disk_bytes)
