"""The serving policies of the Hub-scale simulation, in simulated seconds.

(a) one deployment per LoRA, (b) the reference shared base (any free worker, a stock swap on
every change), (c) lorafarm: the router's ``choose_worker`` and the worker's ``order_queue``
with the rules the router and the worker run by (``Product``: ``router.settings.placement_rules``
of the default ``RouterSettings``, ``WorkerSettings.reorder_max_age_s``), not values of its own.
Costs are the reference's A10G figures (docs/BASELINE.md) and estimates for lorafarm's swap.
"""

from __future__ import annotations

import heapq
import math
import random
from collections import OrderedDict, deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from pydantic import TypeAdapter
from pydantic_settings import BaseSettings

from router.placement import PlacementRules, WorkerView, choose_worker
from router.settings import RouterSettings, placement_rules
from worker.backlog import QueuedJob, order_queue
from worker.settings import WorkerSettings

#: A rank-8 SDXL LoRA on the UNet attention projections, fp16 (docs/BASELINE.md): 23.4 MB.
ADAPTER_BYTES = 23_400_000


@dataclass(frozen=True)
class Product:
    """The router's and the worker's settings that the simulated lorafarm runs by."""

    router: RouterSettings
    worker: WorkerSettings

    @classmethod
    def defaults(cls, overrides: Mapping[str, str] | None = None) -> Product:
        """The settings classes' defaults, not this shell's environment (``model_construct``),
        with what-if ``overrides`` (field name -> value as an environment variable would give it)."""
        router, worker = RouterSettings.model_construct(), WorkerSettings.model_construct()
        updates: dict[type[BaseSettings], dict[str, Any]] = {RouterSettings: {}, WorkerSettings: {}}
        for name, text in (overrides or {}).items():
            cls_ = next((c for c in updates if name in c.model_fields), None)
            if cls_ is None:
                raise ValueError(f"{name} is a field of neither RouterSettings nor WorkerSettings")
            kind: Any = cls_.model_fields[name].annotation
            updates[cls_][name] = TypeAdapter(kind).validate_python(text)
        return cls(router.model_copy(update=updates[RouterSettings]), worker.model_copy(update=updates[WorkerSettings]))

    def rules(self, *, affinity: bool = True) -> PlacementRules:
        """The router's placement rules (``affinity=False``: ``LORAFARM_AFFINITY=false``)."""
        return placement_rules(self.router.model_copy(update={"affinity": affinity and self.router.affinity}))

    @property
    def backlog_age_s(self) -> float:
        """The worker's age bound on its own queue (``LORAFARM_REORDER_MAX_AGE_S``)."""
        return self.worker.reorder_max_age_s

    @property
    def host_cache(self) -> int:
        """Adapters a worker keeps parsed in host memory: its host cache over a typical SDXL LoRA."""
        return self.worker.host_cache_bytes // ADAPTER_BYTES


@dataclass(frozen=True)
class Costs:
    """Seconds per step: the reference's A10G table, and lorafarm's swap."""

    inference_s: float = 8.5
    stock_load_s: tuple[float, float] = (2.7, 3.5)  # load + fuse
    stock_unload_s: tuple[float, float] = (0.13, 0.28)  # unfuse + unload
    cold_boot_s: float = 25.0
    idle_stop_s: float = 600.0  # a dedicated deployment scales to zero after this long idle
    #: One-pass fused apply from the pristine copy. An estimate, not a measurement: ~6 ms of
    #: memory traffic on an A10G (docs/BASELINE.md, physical limits) plus an assumed ~14 ms of
    #: launch and bookkeeping overhead. No GPU run has measured it yet (``--swap-s``).
    swap_s: float = 0.02
    #: Download and parse of a ~24 MB adapter not in host memory (hidden when prefetched). Assumed.
    fetch_s: float = 1.0
    #: Adapters parsed in host memory per worker (``Product.host_cache``: 91 by default).
    host_cache: int = 91


@dataclass(frozen=True)
class Request:
    id: int
    at: float
    lora: int
    pool: int


@dataclass
class Run:
    """What one policy did with one trace."""

    latencies: list[float] = field(default_factory=list)
    swaps: int = 0
    gpu_s: float = 0.0
    saturated: bool = False  # queues grew without bound; the run was cut short
    switches: int = 0  # base switches of multi-base workers (bench/multibase.py)

    def pct(self, q: float) -> float:
        if self.saturated:
            return math.inf
        return float(np.percentile(self.latencies, q)) if self.latencies else 0.0

    def merge(self, other: Run) -> Run:
        return Run(
            self.latencies + other.latencies,
            self.swaps + other.swaps,
            self.gpu_s + other.gpu_s,
            self.saturated or other.saturated,
            self.switches + other.switches,
        )


# --- (a) one deployment per LoRA --------------------------------------------------------


def dedicated(trace: Sequence[Request], costs: Costs) -> Run:
    """A deployment per LoRA, autoscaled: a job goes to the replica that starts it soonest, or
    to a new one (cold boot) when that is sooner; a replica idle for ``idle_stop_s`` stops."""
    run = Run()
    replicas: dict[int, list[list[float]]] = {}  # lora -> [[boot started, free at], ...]
    for r in trace:
        up = replicas.setdefault(r.lora, [])
        for replica in [x for x in up if x[1] + costs.idle_stop_s < r.at]:  # stopped by now
            run.gpu_s += replica[1] + costs.idle_stop_s - replica[0]
            up.remove(replica)
        best = min(up, key=lambda x: x[1], default=None)
        if best is None or best[1] - r.at > costs.cold_boot_s:
            best = [r.at, r.at + costs.cold_boot_s]
            up.append(best)
            run.swaps += 1  # a cold boot stands in for a swap
        best[1] = max(r.at, best[1]) + costs.inference_s
        run.latencies.append(best[1] - r.at)
    run.gpu_s += sum(free + costs.idle_stop_s - began for up in replicas.values() for began, free in up)
    return run


# --- (b) the reference shared base ------------------------------------------------------


def reference_pool(trace: Sequence[Request], k: int, costs: Costs, seed: int = 0) -> Run:
    """Any free worker takes the oldest job; a stock swap whenever the adapter differs."""
    rng, run = random.Random(seed), Run(gpu_s=0.0)
    idle, waiting = deque(range(k)), deque[Request]()
    fused: list[int | None] = [None] * k
    done: list[tuple[float, int]] = []

    def start(w: int, r: Request, now: float) -> None:
        swap = 0.0
        if fused[w] != r.lora:
            swap = rng.uniform(*costs.stock_load_s)
            swap += rng.uniform(*costs.stock_unload_s) if fused[w] is not None else 0.0
            fused[w], run.swaps = r.lora, run.swaps + 1
        end = now + swap + costs.inference_s
        heapq.heappush(done, (end, w))
        run.latencies.append(end - r.at)

    for r in [*trace, None]:
        while done and (r is None or done[0][0] <= r.at):
            t, w = heapq.heappop(done)
            if waiting:
                start(w, waiting.popleft(), t)
            else:
                idle.append(w)
        if r is not None:
            if idle:
                start(idle.popleft(), r, r.at)
            else:
                waiting.append(r)
            run.saturated |= len(waiting) > 20 * k + 50
            if run.saturated:
                break
    return run


# --- (c) lorafarm -----------------------------------------------------------------------


@dataclass
class _Worker:
    """Simulated lorafarm worker: a fused adapter, a host LRU, a queue of placed jobs."""

    worker_id: str
    fused: str | None = None
    last_swap_at: float | None = None
    busy_until: float = 0.0
    busy: bool = False
    cache: OrderedDict[str, float] = field(default_factory=OrderedDict)  # key -> parsed at
    queue: dict[str, tuple[Request, str, float]] = field(default_factory=dict)  # job -> (req, key, ready)
    _cached: frozenset[str] = frozenset()

    def stage(self, key: str, now: float, costs: Costs) -> float:
        """Start (or reuse) the download of ``key``; when it is parsed and ready to apply."""
        if key not in self.cache:
            self.cache[key] = now + costs.fetch_s
            if len(self.cache) > costs.host_cache:
                self.cache.popitem(last=False)
            self._cached = frozenset(self.cache)
        self.cache.move_to_end(key)
        return self.cache[key]

    def view(self, now: float, costs: Costs) -> WorkerView:
        return WorkerView(
            self.worker_id,
            last_seen=now,
            fused=self.fused,
            cached=self._cached,
            queued=tuple(key for _, key, _ in self.queue.values()),
            busy=self.busy,
            remaining_s=max(0.0, self.busy_until - now),
            swap_s=costs.swap_s,
            fetch_s=costs.fetch_s,
            inference_s=costs.inference_s,
            last_swap_at=self.last_swap_at,
        )


class LorafarmPool:
    """One base pool under ``router.placement``: affinity, fast swap, prefetch while busy."""

    def __init__(self, k: int, costs: Costs, policy: PlacementRules, max_age_s: float) -> None:
        self.workers = [_Worker(f"w{i:03d}") for i in range(k)]
        self.by_id = {w.worker_id: w for w in self.workers}
        self.costs, self.policy, self.max_age_s = costs, policy, max_age_s
        self.shared: deque[Request] = deque()
        self.done: list[tuple[float, str]] = []
        self.run = Run()

    def serve(self, trace: Sequence[Request]) -> Run:
        for r in trace:
            self.advance(r.at)
            self.place(r)
            if sum(len(w.queue) for w in self.workers) + len(self.shared) > 20 * len(self.workers) + 50:
                self.run.saturated = True
                return self.run
        self.advance(math.inf)
        return self.run

    def advance(self, until: float) -> None:
        while self.done and self.done[0][0] <= until:
            t, wid = heapq.heappop(self.done)
            self.start_next(self.by_id[wid], t)

    def place(self, r: Request) -> None:
        key = f"lora{r.lora}"
        views = [w.view(r.at, self.costs) for w in self.workers]
        wid = choose_worker(key, views, self.policy, r.at)
        if wid is None:  # the shared pool stream: the first idle worker takes it
            self.shared.append(r)
            idle = next((w for w in self.workers if not w.busy), None)
            if idle is not None:
                self.start_next(idle, r.at)
            return
        worker = self.by_id[wid]
        worker.queue[str(r.id)] = (r, key, worker.stage(key, r.at, self.costs))  # prefetch now
        if not worker.busy:
            self.start_next(worker, r.at)

    def start_next(self, w: _Worker, now: float) -> None:
        if w.queue:
            waiting = [QueuedJob(job, key, r.at) for job, (r, key, _) in w.queue.items()]
            r, key, ready = w.queue.pop(order_queue(w.fused, waiting, now, self.max_age_s)[0].job_id)
        elif self.shared:
            r = self.shared.popleft()
            key = f"lora{r.lora}"
            ready = w.stage(key, now, self.costs)
        else:
            w.busy = False
            return
        swap = 0.0
        if key != w.fused:
            swap = max(0.0, ready - now) + self.costs.swap_s
            w.fused, w.last_swap_at, self.run.swaps = key, now, self.run.swaps + 1
        w.busy, w.busy_until = True, now + swap + self.costs.inference_s
        heapq.heappush(self.done, (w.busy_until, w.worker_id))
        self.run.latencies.append(w.busy_until - r.at)
