"""Multi-base workers in the Hub-scale simulation: rare bases share a GPU instead of taking one each.

A simulated worker serves one or several base pools on one device. Where each of its bases is
(active on the device, warm in pinned host memory, cold on disk) is decided by the product's own
``worker.tiers.Tiers`` under the worker's byte budgets; the router's ``choose_worker`` sees each
pool's base tier and switch costs, and the worker's ``order_queue`` serves its backlog grouped by
base, then adapter, as ``worker.loop`` does. What a move costs is an estimate, not a measurement
(no GPU has run one): the bytes of the base over 25 GB/s from pinned host memory (PCIe 4.0 x16)
and over 2 GB/s from a local NVMe disk (``worker.tiers.ASSUMED_*``), the bytes being the fp16
parameter counts of the model cards (:data:`BASES`).
"""

from __future__ import annotations

import heapq
import math
from collections import OrderedDict, deque
from collections.abc import Sequence
from dataclasses import dataclass, field

from bench.policies import Costs, Product, Request, Run
from router.placement import PlacementRules, WorkerView, choose_worker
from worker.backlog import QueuedJob, order_queue
from worker.tiers import ASSUMED_DISK_BYTES_S, ASSUMED_H2D_BYTES_S, Budgets, Move, Tiers

#: The simulated bases by pool, with their bytes in fp16 (parameter counts of the model cards).
BASES: tuple[tuple[str, int], ...] = (
    ("SDXL base 1.0", 6_940_000_000),  # UNet 2.567 B + CLIP-L 123 M + OpenCLIP bigG 695 M + VAE 84 M
    ("an SDXL fine-tune", 6_940_000_000),  # the same architecture: what many LoRAs name as base
    ("SD 1.5", 2_130_000_000),  # UNet 860 M + CLIP-L 123 M + VAE 84 M
    ("SD 3.5 Medium", 16_300_000_000),  # MMDiT 2.5 B + CLIP-L + OpenCLIP bigG + T5-XXL 4.76 B + VAE
)
#: An A10G's 24 GB: about 22 GB free once CUDA is up, less the pristine headroom the product leaves
#: (``LORAFARM_PRISTINE_HEADROOM_BYTES``, 2 GiB): what ``worker.startup`` makes its default device budget.
A10G_FREE_BYTES = 22_000_000_000


def move_s(move: Move, nbytes: int) -> float:
    """Estimated seconds of one tier move of a base of ``nbytes`` (module docstring)."""
    if move.kind in ("load_warm", "to_host"):
        return nbytes / ASSUMED_H2D_BYTES_S
    if move.kind == "load_cold":
        return nbytes / ASSUMED_DISK_BYTES_S + nbytes / ASSUMED_H2D_BYTES_S
    return 0.0  # freeing a copy


@dataclass
class _Base:
    """One base on a simulated worker: the adapter fused on it, its own host adapter cache."""

    fused: str | None = None
    cache: OrderedDict[str, float] = field(default_factory=OrderedDict)  # key -> parsed at
    cached: frozenset[str] = frozenset()


class _Worker:
    """A simulated worker of one or several pools (``Tiers`` decides where each base is)."""

    def __init__(self, worker_id: str, pools: Sequence[int], budgets: Budgets) -> None:
        self.worker_id, self.pools = worker_id, tuple(pools)
        self.bases = {p: _Base() for p in self.pools}
        self.tiers = Tiers(budgets)
        for p in self.pools:
            self.tiers.add(str(p), BASES[p][1], disk_bytes=BASES[p][1])
        self.current: int = self.pools[-1]  # the base added last is the active one
        self.queue: dict[str, tuple[Request, str, float]] = {}  # job -> (request, adapter key, ready at)
        self.busy, self.busy_until = False, 0.0
        self.last_swap_at: float | None = None

    def stage(self, pool: int, key: str, now: float, costs: Costs) -> float:
        """Start (or reuse) the download of ``key`` for ``pool``'s base; when it is ready to apply."""
        base = self.bases[pool]
        if key not in base.cache:
            base.cache[key] = now + costs.fetch_s
            if len(base.cache) > costs.host_cache:
                base.cache.popitem(last=False)
            base.cached = frozenset(base.cache)
        base.cache.move_to_end(key)
        return base.cache[key]

    def view(self, pool: int, now: float, costs: Costs) -> WorkerView:
        """The worker as the router sees it in ``pool``: the base's tier and switch costs included."""
        tier = self.tiers.tier(str(pool))
        warm_s, cold_s = self.tiers.costs(str(pool))
        mine = [key for r, key, _ in self.queue.values() if r.pool == pool]
        return WorkerView(
            self.worker_id,
            last_seen=now,
            fused=self.bases[pool].fused if tier == "active" else None,
            cached=self.bases[pool].cached,
            queued=tuple(mine),
            busy=self.busy,
            remaining_s=max(0.0, self.busy_until - now),
            swap_s=costs.swap_s,
            fetch_s=costs.fetch_s,
            inference_s=costs.inference_s,
            last_swap_at=self.last_swap_at,
            base=tier,
            warm_switch_s=warm_s,
            cold_switch_s=cold_s,
            other_queued=len(self.queue) - len(mine),
        )

    def switch_to(self, pool: int) -> tuple[str, float]:
        """Make ``pool``'s base active: what it was (active, warm, cold) and the moves' seconds."""
        tier = self.tiers.tier(str(pool))
        moves = self.tiers.activate(str(pool))
        seconds = sum(move_s(m, BASES[int(m.base)][1]) for m in moves)
        for m in moves:
            if m.kind in ("to_host", "free_device", "to_disk"):
                self.bases[int(m.base)].fused = None  # restored before it left the device
        if tier != "active":
            self.tiers.observe(str(pool), "warm" if tier == "warm" else "cold", seconds)
        self.current = pool
        return tier, seconds


class MultiBaseFarm:
    """Every pool of the trace under ``router.placement``, on workers that serve one or several pools.

    ``workers``: the pools of each worker. With one pool per worker it is ``LorafarmPool``, pool
    by pool (a unit test holds the two to the same latencies).
    """

    def __init__(
        self, workers: Sequence[Sequence[int]], costs: Costs, policy: PlacementRules, max_age_s: float, budgets: Budgets
    ) -> None:
        self.workers = [_Worker(f"w{i:03d}", pools, budgets) for i, pools in enumerate(workers)]
        self.by_id = {w.worker_id: w for w in self.workers}
        self.costs, self.policy, self.max_age_s = costs, policy, max_age_s
        pools = sorted({p for w in self.workers for p in w.pools})
        self.serving = {p: [w for w in self.workers if p in w.pools] for p in pools}
        self.shared: dict[int, deque[Request]] = {p: deque() for p in pools}
        self.done: list[tuple[float, str]] = []
        self.runs: dict[int, Run] = {p: Run() for p in pools}

    def serve(self, trace: Sequence[Request]) -> dict[int, Run]:
        """Each pool's run (latencies, swaps, base switches) over the trace."""
        for r in trace:
            self.advance(r.at)
            self.place(r)
            held = sum(len(w.queue) for w in self.workers) + sum(len(q) for q in self.shared.values())
            if held > 20 * len(self.workers) + 50:
                for run in self.runs.values():
                    run.saturated = True
                return self.runs
        self.advance(math.inf)
        return self.runs

    def advance(self, until: float) -> None:
        while self.done and self.done[0][0] <= until:
            t, wid = heapq.heappop(self.done)
            self.start_next(self.by_id[wid], t)

    def place(self, r: Request) -> None:
        key = f"lora{r.lora}"
        serving = self.serving[r.pool]
        wid = choose_worker(key, [w.view(r.pool, r.at, self.costs) for w in serving], self.policy, r.at)
        if wid is None:  # the pool's shared stream: the first idle worker of the pool takes it
            self.shared[r.pool].append(r)
            idle = next((w for w in serving if not w.busy), None)
            if idle is not None:
                self.start_next(idle, r.at)
            return
        worker = self.by_id[wid]
        worker.queue[str(r.id)] = (r, key, worker.stage(r.pool, key, r.at, self.costs))  # prefetch now
        if not worker.busy:
            self.start_next(worker, r.at)

    def start_next(self, w: _Worker, now: float) -> None:
        if not w.queue:  # nothing placed here: one job of each pool's shared stream, as a claim takes
            for p in w.pools:
                if self.shared[p]:
                    r = self.shared[p].popleft()
                    w.queue[str(r.id)] = (r, f"lora{r.lora}", w.stage(p, f"lora{r.lora}", now, self.costs))
        if not w.queue:
            w.busy = False
            return
        waiting = [QueuedJob(job, key, r.at, str(r.pool)) for job, (r, key, _) in w.queue.items()]
        first = order_queue(w.bases[w.current].fused, waiting, now, self.max_age_s, current_base=str(w.current))[0]
        r, key, ready = w.queue.pop(first.job_id)
        run = self.runs[r.pool]
        tier, switch = w.switch_to(r.pool)
        run.switches += tier != "active"
        base, swap = w.bases[r.pool], 0.0
        if key != base.fused:
            # The download overlaps the base switch: only what is left of it once the base is back counts.
            swap = max(0.0, ready - now - switch) + self.costs.swap_s
            base.fused, w.last_swap_at, run.swaps = key, now, run.swaps + 1
        w.busy, w.busy_until = True, now + switch + swap + self.costs.inference_s
        heapq.heappush(self.done, (w.busy_until, w.worker_id))
        run.latencies.append(w.busy_until - r.at)


def device_budgets(product: Product) -> Budgets:
    """The worker's tier budgets on an A10G: the product's settings, and its CUDA device default."""
    device = product.worker.base_device_bytes or A10G_FREE_BYTES - product.worker.pristine_headroom_bytes
    return Budgets(device=device, host=product.worker.base_host_bytes, disk=product.worker.base_disk_bytes)


def long_tail(k_main: int, m: int, n_bases: int) -> list[list[int]]:
    """``k_main`` workers of the main pool (0) and ``m`` multi-base workers of all the others."""
    return [[0] for _ in range(k_main)] + [list(range(1, n_bases)) for _ in range(m)]


def every_base(n: int, n_bases: int) -> list[list[int]]:
    """``n`` workers, each serving every base."""
    return [list(range(n_bases)) for _ in range(n)]
