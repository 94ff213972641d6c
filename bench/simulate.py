"""Hub-scale fleet simulation: one deployment per LoRA, the reference shared base, lorafarm.

A seeded discrete-event simulation in simulated seconds. Requests arrive as a Poisson process
over 2,500 LoRAs (92% on one base) with Zipf popularity, calibrated so that about 10 distinct
LoRAs are asked for in any 2 minutes at the reference load. Costs are the reference's A10G
figures (``BASELINE.md``). lorafarm's pools are driven by the same ``router.placement``
functions that the router and the workers run.

    python -m bench.simulate [--quick]
"""

from __future__ import annotations

import argparse
import heapq
import math
import random
import shlex
import sys
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from router.placement import PlacementRules, WorkerView, choose_worker
from worker.backlog import QueuedJob, order_queue

#: Base pools: SDXL base 1.0 (92% of the LoRAs), then three smaller bases (see ``base_of``).
N_BASES = 4
PLOT = Path("docs/img/simulate_latency.png")


@dataclass(frozen=True)
class Costs:
    """Seconds per step: the reference's A10G table, and lorafarm's swap."""

    inference_s: float = 8.5
    stock_load_s: tuple[float, float] = (2.7, 3.5)  # load + fuse
    stock_unload_s: tuple[float, float] = (0.13, 0.28)  # unfuse + unload
    cold_boot_s: float = 25.0
    idle_stop_s: float = 600.0  # a dedicated deployment scales to zero after this long idle
    #: One-pass fused apply from the pristine copy: ~6 ms of memory traffic on an A10G
    #: (BASELINE.md, physical limits) plus ~14 ms of launch and bookkeeping overhead.
    swap_s: float = 0.02
    #: Download and parse of a ~24 MB adapter not in host memory (hidden when prefetched).
    fetch_s: float = 1.0
    host_cache: int = 64  # adapters parsed in host memory per worker (~1.5 GB at 24 MB)


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
        )


# --- the trace ------------------------------------------------------------------------


def zipf_weights(n: int, s: float) -> np.ndarray:
    weights = 1.0 / np.arange(1, n + 1) ** s
    return weights / weights.sum()


def expected_distinct(weights: np.ndarray, rate: float, window_s: float) -> float:
    """Expected number of distinct LoRAs asked for in a window of Poisson arrivals."""
    return float(np.sum(-np.expm1(-rate * window_s * weights)))


def calibrate(n_loras: int, rate: float, target: float = 10.0, window_s: float = 120.0) -> float:
    """Zipf exponent that gives ``target`` distinct LoRAs per window at ``rate`` (bisection)."""
    lo, hi = 0.0, 6.0
    for _ in range(60):
        mid = (lo + hi) / 2
        if expected_distinct(zipf_weights(n_loras, mid), rate, window_s) > target:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


def base_of(rank: int) -> int:
    """Base pool of the LoRA of popularity ``rank`` (0 = most popular): 23 of every 25 on the
    main base (92%), the rest spread over the three smaller bases."""
    return 0 if rank % 25 not in (12, 24) else 1 + (rank // 12) % (N_BASES - 1)


def make_trace(seed: int, rate: float, horizon_s: float, s: float, n_loras: int) -> list[Request]:
    """Poisson arrivals over ``horizon_s``; LoRA ``i`` is the ``i``-th most popular."""
    rng = np.random.default_rng(seed)
    count = int(rng.poisson(rate * horizon_s))
    times = np.sort(rng.uniform(0.0, horizon_s, size=count))
    loras = rng.choice(n_loras, size=count, p=zipf_weights(n_loras, s))
    return [Request(i, float(t), int(j), base_of(int(j))) for i, (t, j) in enumerate(zip(times, loras, strict=True))]


def distinct_per_window(trace: Sequence[Request], window_s: float = 120.0) -> float:
    """Mean distinct LoRAs over consecutive windows of the trace."""
    windows: dict[int, set[int]] = {}
    for r in trace:
        windows.setdefault(int(r.at // window_s), set()).add(r.lora)
    return float(np.mean([len(v) for v in windows.values()])) if windows else 0.0


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


def lorafarm_policy(costs: Costs) -> PlacementRules:
    """lorafarm's settings for the simulation: spill rather than wait longer than a fetch."""
    return PlacementRules(
        max_queue=2,
        max_wait_s=costs.fetch_s,
        max_holders=4,
        min_residency_s=30.0,
        damping_s=0.5,
        default_swap_s=costs.swap_s,
        default_fetch_s=costs.fetch_s,
        default_inference_s=costs.inference_s,
    )


# --- fleets, sweeps, report -------------------------------------------------------------

PoolSim = Callable[[Sequence[Request], int], Run]


def policies(costs: Costs, seed: int) -> dict[str, PoolSim]:
    """The shared-base policies, each as ``(pool trace, workers) -> Run``."""
    fast = lorafarm_policy(costs)
    no_affinity = PlacementRules(affinity=False)
    return {
        "reference": lambda t, k: reference_pool(t, k, costs, seed),
        "lorafarm": lambda t, k: LorafarmPool(k, costs, fast, 4 * costs.inference_s).serve(t),
        "fast swap only": lambda t, k: LorafarmPool(k, costs, no_affinity, 4 * costs.inference_s).serve(t),
    }


def by_pool(trace: Sequence[Request]) -> list[list[Request]]:
    pools: list[list[Request]] = [[] for _ in range(N_BASES)]
    for r in trace:
        pools[r.pool].append(r)
    return pools


def fleet_run(sim: PoolSim, trace: Sequence[Request], fleet: Sequence[int], horizon_s: float) -> Run:
    """Run every pool with its worker count; GPU time is the fleet held for the whole horizon."""
    total = Run()
    for pool, k in zip(by_pool(trace), fleet, strict=True):
        total = total.merge(sim(pool, k))
    total.gpu_s = sum(fleet) * horizon_s
    return total


def smallest_fleet(
    sim: PoolSim, trace: Sequence[Request], bound_s: float, costs: Costs, horizon_s: float
) -> list[int] | None:
    """Fewest workers per pool keeping each pool's p95 within ``bound_s``; None if out of reach."""
    fleet = []
    for pool in by_pool(trace):
        k = max(1, math.ceil(len(pool) * costs.inference_s / horizon_s))  # busy-time lower bound
        while sim(pool, k).pct(95) > bound_s:
            k += 1
            if k > 3 * len(trace) * costs.inference_s / horizon_s + 10:
                return None
        fleet.append(k)
    return fleet


@dataclass
class Row:
    name: str
    fleet: str
    run: Run
    horizon_s: float

    def cells(self, inference_s: float) -> list[str]:
        p50, p95, n = self.run.pct(50), self.run.pct(95), max(1, len(self.run.latencies))
        return [
            self.name,
            self.fleet,
            f"{p50:.2f}",
            f"{p95:.2f}",
            f"{p50 / inference_s:.3f}",
            f"{p95 / inference_s:.3f}",
            f"{100 * self.run.swaps / n:.1f}",
            f"{self.run.gpu_s / 3600:.1f}",
            f"{self.run.gpu_s / 3.6 / n:.2f}",
        ]


HEADER = ["policy", "GPUs", "p50 s", "p95 s", "p50/inf", "p95/inf", "swaps/100", "GPU-h", "GPU-h/1k req"]


def table(rows: Sequence[Row], inference_s: float) -> str:
    lines = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    lines += ["| " + " | ".join(row.cells(inference_s)) + " |" for row in rows]
    return "\n".join(lines)


def sweep(
    sims: dict[str, PoolSim], fleet: Sequence[int], costs: Costs, args: argparse.Namespace, s: float
) -> dict[str, list[tuple[float, float, float]]]:
    """(load, p50, p95) per policy at a fixed fleet; ``dedicated`` is elastic."""
    points: dict[str, list[tuple[float, float, float]]] = {"dedicated": [], **{n: [] for n in sims}}
    for mult in (0.5, 1.0, 1.5, 2.0) if args.quick else (0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 2.0, 2.5):
        rate = args.rate * mult
        trace = make_trace(args.seed, rate, args.hours * 3600, s, args.loras)
        runs = {"dedicated": dedicated(trace, costs)}
        runs |= {n: fleet_run(sim, trace, fleet, args.hours * 3600) for n, sim in sims.items()}
        for name, run in runs.items():
            points[name].append((rate, run.pct(50), run.pct(95)))
    return points


def plot(
    points: dict[str, list[tuple[float, float, float]]], fleet: int, rate: float, costs: Costs, path: Path
) -> None:
    """p50 and p95 against load per policy; points past the top of the axis are saturated."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    for (name, pts), color in zip(points.items(), ("tab:gray", "tab:red", "tab:blue", "tab:green"), strict=False):
        loads = [p[0] for p in pts]
        ax.plot(loads, [p[1] for p in pts], "-o", color=color, label=f"{name} p50")
        ax.plot(loads, [p[2] for p in pts], "--s", color=color, label=f"{name} p95")
    ax.axhline(costs.inference_s, color="black", lw=0.8, ls=":", label="pure inference")
    ax.axvline(rate, color="black", lw=0.8, ls="-.", label="reference load")
    ax.set(xlabel="load (requests/s)", ylabel="response time (s)", ylim=(0, 45))
    ax.set_title(f"Simulated A10G fleet: {fleet} GPUs for shared-base policies; dedicated is elastic")
    ax.legend(fontsize=7, ncol=2)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def parse(argv: Sequence[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m bench.simulate", description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="1 simulated hour and 4 loads (seconds)")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--rate", type=float, default=0.25, help="reference load, requests per second")
    ap.add_argument("--hours", type=float, default=None, help="simulated hours (default 24, quick 1)")
    ap.add_argument("--loras", type=int, default=2500)
    ap.add_argument("--swap-s", type=float, default=Costs.swap_s, help="lorafarm apply seconds")
    ap.add_argument("--fetch-s", type=float, default=Costs.fetch_s, help="lorafarm download+parse")
    ap.add_argument("--bound", type=float, default=1.5, help="p95 bound for fleet sizing, x inference")
    ap.add_argument("--plot", type=Path, default=PLOT)
    args = ap.parse_args(argv)
    args.hours = args.hours or (1.0 if args.quick else 24.0)
    return args


def describe(fleet: Sequence[int] | None) -> str:
    return "out of reach" if fleet is None else f"{sum(fleet)} ({'+'.join(map(str, fleet))})"


def main(argv: Sequence[str] | None = None) -> int:
    args = parse(argv)
    began = time.perf_counter()
    costs, horizon = Costs(swap_s=args.swap_s, fetch_s=args.fetch_s), args.hours * 3600
    inf = costs.inference_s
    s = calibrate(args.loras, args.rate)
    trace = make_trace(args.seed, args.rate, horizon, s, args.loras)
    weights = zipf_weights(args.loras, s)
    shares = np.bincount([r.pool for r in trace], minlength=N_BASES) / max(1, len(trace))
    print(f"calibration: Zipf exponent {s:.3f} over {args.loras} LoRAs at {args.rate} req/s gives")
    print(f"  {expected_distinct(weights, args.rate, 120):.2f} distinct LoRAs per 2 min expected,")
    print(f"  {distinct_per_window(trace):.2f} measured on the trace ({len(trace)} requests, {args.hours} h);")
    print(f"  top LoRA {weights[0]:.1%} of requests, top 10 {weights[:10].sum():.1%};")
    print(f"  requests per base pool {', '.join(f'{x:.1%}' for x in shares)}")
    print(f"costs: {costs}")
    sims = policies(costs, args.seed)
    ref = smallest_fleet(sims["reference"], trace, args.bound * inf, costs, horizon)
    lf = smallest_fleet(sims["lorafarm"], trace, args.bound * inf, costs, horizon)
    goal = smallest_fleet(sims["lorafarm"], trace, 1.15 * inf, costs, horizon)
    bound = f"p95 ≤ {args.bound:g}× inference"
    rows = [
        Row(
            f"(a) dedicated per LoRA, {costs.idle_stop_s / 60:g} min idle stop",
            "elastic",
            dedicated(trace, costs),
            horizon,
        )
    ]
    for label, name, fleet in (
        (f"(b) reference, smallest fleet for {bound}", "reference", ref),
        (f"(c) lorafarm, smallest fleet for {bound}", "lorafarm", lf),
        ("(c) lorafarm, smallest fleet for p95 ≤ 1.15× inference", "lorafarm", goal),
        ("(b) reference on (c)'s fleet", "reference", lf),
        ("fast swap without affinity or prefetch, (c)'s fleet", "fast swap only", lf),
    ):
        if fleet is not None:
            rows.append(Row(label, describe(fleet), fleet_run(sims[name], trace, fleet, horizon), horizon))
    rows[0].fleet = f"{rows[0].run.gpu_s / horizon:.1f} mean"
    print(table(rows, inf))
    if ref is not None and lf is not None:
        met = "met" if sum(lf) <= 0.7 * sum(ref) else "NOT met"
        print(
            f"GPU saving of lorafarm vs reference at {bound}: {1 - sum(lf) / sum(ref):.0%}"
            f" ({sum(lf)} vs {sum(ref)} GPUs; goal >= 30%: {met});"
            f" main pool {1 - lf[0] / ref[0]:.0%} ({lf[0]} vs {ref[0]})"
        )
    swapped = rows[1].run.swaps / max(1, len(trace)) if ref is not None else 0.0
    if swapped > 0.05:  # p95 then includes a stock swap: the reference cannot get near 1.15x
        print(
            f"the reference swaps on {swapped:.0%} of requests, so its p95 is at least"
            f" {(inf + costs.stock_load_s[0]) / inf:.2f}x inference whatever the fleet"
        )
    if goal is not None and ref is not None:
        print(
            f"lorafarm meets p50 ≤ 1.05× and p95 ≤ 1.15× inference with {sum(goal)} GPUs"
            f" vs {sum(ref)} for the reference at {bound}: {1 - sum(goal) / sum(ref):.0%} fewer"
        )
    points = sweep({k: v for k, v in sims.items() if k != "fast swap only"}, ref or lf or [1] * N_BASES, costs, args, s)
    plot(points, sum(ref or lf or [1] * N_BASES), args.rate, costs, args.plot)
    print(f"plot: {args.plot}")
    print(f"simulated in {time.perf_counter() - began:.1f} s")
    print(" ".join(["command: python -m bench.simulate", *map(shlex.quote, sys.argv[1:] if argv is None else argv)]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
