"""Hub-scale fleet simulation: one deployment per LoRA, the reference shared base, lorafarm (with multi-base workers).

A seeded discrete-event simulation in simulated seconds. Requests arrive as a Poisson process
over 2,500 LoRAs (92% on one base) with Zipf popularity, calibrated so that about 10 distinct
LoRAs are asked for in any 2 minutes at the reference load. Costs are the reference's A10G
figures (docs/BASELINE.md) and estimates for lorafarm's swap. lorafarm's pools are driven by
the same ``router.placement`` and ``worker.backlog`` functions that the router and the workers
run, with their default settings (``bench/policies.py``); multi-base workers, serving several
bases on one GPU, add the product's own base tiering (``bench/multibase.py``, ``bench/fleets.py``).
Every verdict it prints compares figures of the run with a target of ``bench/goals.py``.

    python -m bench.simulate [--quick]
"""

from __future__ import annotations

import argparse
import math
import shlex
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from bench import fleets as mb
from bench import goals
from bench.goals import Verdict
from bench.policies import (
    Costs,
    LorafarmPool,
    Product,
    Request,
    Run,
    dedicated,
    reference_pool,
)

#: Base pools: SDXL base 1.0 (92% of the LoRAs), then three smaller bases (see ``base_of``).
N_BASES = 4
PLOT = Path("docs/img/simulate_latency.png")


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


# --- fleets, sweeps, report -------------------------------------------------------------

PoolSim = Callable[[Sequence[Request], int], Run]


@dataclass(frozen=True)
class Fleets:
    """The smallest fleets (workers per pool; ``None``: out of reach) for the p95 bounds."""

    bound: float  # the sizing bound, x inference (``--bound``)
    reference: list[int] | None
    lorafarm: list[int] | None
    lorafarm_tight: list[int] | None  # for p95 ≤ goals.P95_OVER_INFERENCE
    reference_tight: list[int] | None


def policies(costs: Costs, seed: int, product: Product | None = None) -> dict[str, PoolSim]:
    """The shared-base policies, each as ``(pool trace, workers) -> Run``; lorafarm's with the
    router's and the worker's settings (default: their defaults)."""
    product = product or Product.defaults()
    rules, no_affinity, age_s = product.rules(), product.rules(affinity=False), product.backlog_age_s
    return {
        "reference": lambda t, k: reference_pool(t, k, costs, seed),
        "lorafarm": lambda t, k: LorafarmPool(k, costs, rules, age_s).serve(t),
        "fast swap only": lambda t, k: LorafarmPool(k, costs, no_affinity, age_s).serve(t),
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


def search_limit(trace: Sequence[Request], costs: Costs, horizon_s: float) -> int:
    """Most workers a pool is tried with: three times the whole trace's busy time, plus 10."""
    return math.floor(3 * len(trace) * costs.inference_s / horizon_s + 10)


def smallest_fleet(
    sim: PoolSim, trace: Sequence[Request], bound_s: float, costs: Costs, horizon_s: float
) -> list[int] | None:
    """Fewest workers per pool keeping each pool's p95 within ``bound_s``; None if out of reach."""
    fleet = []
    for pool in by_pool(trace):
        k = max(1, math.ceil(len(pool) * costs.inference_s / horizon_s))  # busy-time lower bound
        while sim(pool, k).pct(95) > bound_s:
            k += 1
            if k > search_limit(trace, costs, horizon_s):
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
            f"{100 * self.run.switches / n:.2f}",
            f"{self.run.gpu_s / 3600:.1f}",
            f"{self.run.gpu_s / 3.6 / n:.2f}",
        ]


HEADER = ["policy", "GPUs", "p50 s", "p95 s", "p50/inf", "p95/inf", "swaps/100", "base switches/100", "GPU-h"]
HEADER += ["GPU-h/1k req"]


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
    ap.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help="what-if: a RouterSettings/WorkerSettings field instead of its default (affinity_max_wait_s=2)",
    )
    args = ap.parse_args(argv)
    args.hours = args.hours or (1.0 if args.quick else 24.0)
    return args


def describe(fleet: Sequence[int] | None) -> str:
    return "out of reach" if fleet is None else f"{sum(fleet)} ({'+'.join(map(str, fleet))})"


def latency_verdict(run: Run | None, fleet: Sequence[int] | None, inference_s: float) -> Verdict:
    """lorafarm's p50 and p95 against pure inference, on the fleet sized for the p95 goal."""
    goal = f"lorafarm p50 ≤ {goals.P50_OVER_INFERENCE:g}× and p95 ≤ {goals.P95_OVER_INFERENCE:g}× inference"
    if run is None or fleet is None:
        return Verdict(goal, "no fleet within the search limit reaches that p95", False)
    parts = [
        goals.at_most("p50", run.pct(50) / inference_s, goals.P50_OVER_INFERENCE, "×", ".3f"),
        goals.at_most("p95", run.pct(95) / inference_s, goals.P95_OVER_INFERENCE, "×", ".3f"),
    ]
    verdict = goals.all_of(goal, parts)
    return replace(verdict, measured=f"{verdict.measured}; {describe(fleet)} GPUs")


def saving_verdict(ours: Sequence[int] | None, theirs: Sequence[int] | None, bound: str) -> Verdict:
    """lorafarm's fleet against the reference's, both the smallest for the same p95 bound."""
    goal = f"lorafarm needs ≥ {goals.GPU_SAVING:.0%} fewer GPUs than the reference at {bound}"
    if ours is None or theirs is None:
        return Verdict(goal, f"lorafarm {describe(ours)}, reference {describe(theirs)}", False)
    verdict = goals.at_least(goal, 1 - sum(ours) / sum(theirs), goals.GPU_SAVING, fmt=".0%")
    detail = f"{sum(ours)} vs {sum(theirs)} GPUs; main pool {1 - ours[0] / theirs[0]:.0%}, {ours[0]} vs {theirs[0]}"
    return replace(verdict, measured=f"{verdict.measured}; {detail}")


def multibase_rows(multi: mb.MultiBase, bound: float, horizon: float) -> list[Row]:
    tight = goals.P95_OVER_INFERENCE
    out = []
    for label, fleet in (
        (f"(d) lorafarm multi-base: the main pool's workers + long-tail workers, p95 ≤ {bound:g}×", multi.tail),
        (f"(d) lorafarm multi-base: the main pool's workers + long-tail workers, p95 ≤ {tight:g}×", multi.tail_tight),
        (f"(e) lorafarm multi-base: every worker serves every base, p95 ≤ {bound:g}×", multi.shared),
    ):
        if fleet is not None:
            out.append(Row(label, fleet.describe(), fleet.total(horizon), horizon))
    return out


def print_trace(args: argparse.Namespace, s: float, trace: Sequence[Request], costs: Costs, product: Product) -> None:
    weights = zipf_weights(args.loras, s)
    shares = np.bincount([r.pool for r in trace], minlength=N_BASES) / max(1, len(trace))
    rules = product.rules()
    print(f"calibration: Zipf exponent {s:.3f} over {args.loras} LoRAs at {args.rate} req/s gives")
    print(f"  {expected_distinct(weights, args.rate, 120):.2f} distinct LoRAs per 2 min expected,")
    print(f"  {distinct_per_window(trace):.2f} measured on the trace ({len(trace)} requests, {args.hours} h);")
    print(f"  top LoRA {weights[0]:.1%} of requests, top 10 {weights[:10].sum():.1%};")
    print(f"  requests per base pool {', '.join(f'{x:.1%}' for x in shares)}")
    print(f"costs: {costs}")
    where = f"settings defaults with {', '.join(args.set)}" if args.set else "router and worker settings defaults"
    print(
        f"lorafarm rules ({where}): max_queue {rules.max_queue}, max_wait_s {rules.max_wait_s:g},"
        f" max_holders {rules.max_holders}, min_residency_s {rules.min_residency_s:g},"
        f" damping_s {rules.damping_s:g}; backlog age bound {product.backlog_age_s:g} s"
    )


def report_rows(
    sims: dict[str, PoolSim], trace: Sequence[Request], costs: Costs, horizon: float, fleets: Fleets
) -> tuple[list[Row], dict[str, Run]]:
    """The table's rows, and the runs by ``"<policy> <fleet>"`` (each fleet simulated once)."""
    bound, tight = f"p95 ≤ {fleets.bound:g}× inference", goals.P95_OVER_INFERENCE
    runs: dict[str, Run] = {}
    rows = [
        Row(f"(a) dedicated per LoRA, {costs.idle_stop_s / 60:g} min idle stop", "", dedicated(trace, costs), horizon)
    ]
    rows[0].fleet = f"{rows[0].run.gpu_s / horizon:.1f} mean"
    for label, name, fleet in (
        (f"(b) reference, smallest fleet for {bound}", "reference", fleets.reference),
        (f"(c) lorafarm, smallest fleet for {bound}", "lorafarm", fleets.lorafarm),
        (f"(c) lorafarm, smallest fleet for p95 ≤ {tight:g}× inference", "lorafarm", fleets.lorafarm_tight),
        (f"(b) reference, smallest fleet for p95 ≤ {tight:g}× inference", "reference", fleets.reference_tight),
        ("(b) reference on (c)'s fleet", "reference", fleets.lorafarm),
        ("fast swap without affinity or prefetch, (c)'s fleet", "fast swap only", fleets.lorafarm),
    ):
        if fleet is not None:
            key = f"{name} {describe(fleet)}"
            runs[key] = runs.get(key) or fleet_run(sims[name], trace, fleet, horizon)
            rows.append(Row(label, describe(fleet), runs[key], horizon))
    return rows, runs


def main(argv: Sequence[str] | None = None) -> int:
    args = parse(argv)
    began = time.perf_counter()
    product = Product.defaults(dict(item.split("=", 1) for item in args.set))
    costs = Costs(swap_s=args.swap_s, fetch_s=args.fetch_s, host_cache=product.host_cache)
    horizon, inf, tight = args.hours * 3600, costs.inference_s, goals.P95_OVER_INFERENCE
    s = calibrate(args.loras, args.rate)
    trace = make_trace(args.seed, args.rate, horizon, s, args.loras)
    print_trace(args, s, trace, costs, product)
    sims = policies(costs, args.seed, product)
    fleets = Fleets(
        args.bound,
        *(
            smallest_fleet(sims[name], trace, bound * inf, costs, horizon)
            for name, bound in (
                ("reference", args.bound),
                ("lorafarm", args.bound),
                ("lorafarm", tight),
                ("reference", tight),
            )
        ),
    )
    rows, runs = report_rows(sims, trace, costs, horizon, fleets)
    busy = max(1, math.ceil(len(trace) * inf / horizon))
    main_pool = (fleets.lorafarm, fleets.lorafarm_tight)
    multi = mb.multibase_fleets(trace, costs, product, main_pool, args.bound, search_limit(trace, costs, horizon), busy)
    print(table(rows + multibase_rows(multi, args.bound, horizon), inf))
    print("\n".join(mb.describe(multi, product, inf)))
    ref, lf, goal = fleets.reference, fleets.lorafarm, fleets.lorafarm_tight
    if fleets.reference_tight is None:
        limit = search_limit(trace, costs, horizon)
        print(f"the reference at p95 ≤ {tight:g}× inference: out of reach (no fleet of up to {limit} workers a pool)")
    goal_run = runs.get(f"lorafarm {describe(goal)}")
    bound = f"p95 ≤ {args.bound:g}× inference"
    for verdict in (
        saving_verdict(lf, ref, bound),
        latency_verdict(goal_run, goal, inf),
        mb.saving_verdict(multi.tail, ref, bound),
        mb.small_pools_verdict(multi.tail, args.bound, inf),
    ):
        print(verdict.line())
    fixed = ref or lf or [1] * N_BASES
    plot(
        sweep({k: v for k, v in sims.items() if k != "fast swap only"}, fixed, costs, args, s),
        sum(fixed),
        args.rate,
        costs,
        args.plot,
    )
    print(f"plot: {args.plot}")
    print(f"simulated in {time.perf_counter() - began:.1f} s")
    print(" ".join(["command: python -m bench.simulate", *map(shlex.quote, sys.argv[1:] if argv is None else argv)]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
