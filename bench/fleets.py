"""Multi-base fleets of the Hub-scale simulation: the smallest for a p95 bound, and their verdicts.

Two shapes (``bench/multibase.py`` simulates them): the main pool's own workers plus multi-base
workers for the long tail (what ``deploy/k8s/pools/long-tail`` and ``make run`` set up), and
workers that each serve every base. A fleet meets a bound when every pool's p95 is within it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

from bench import goals
from bench.goals import Verdict
from bench.multibase import A10G_FREE_BYTES, BASES, MultiBaseFarm, device_budgets, every_base, long_tail
from bench.policies import Costs, Product, Request, Run

Spec = list[list[int]]


@dataclass(frozen=True)
class MultiBaseFleet:
    """A fleet (the pools of each worker) and what each pool's run gave on it."""

    spec: Spec
    runs: dict[int, Run]

    @property
    def gpus(self) -> int:
        return len(self.spec)

    def total(self, horizon_s: float) -> Run:
        """All pools' runs together, the fleet held for the whole horizon."""
        total = Run()
        for run in self.runs.values():
            total = total.merge(run)
        total.gpu_s = self.gpus * horizon_s
        return total

    def describe(self) -> str:
        """``5 (4×[0] + 1×[1,2,3])``: the workers, grouped by the pools they serve."""
        groups: dict[tuple[int, ...], int] = {}
        for pools in self.spec:
            groups[tuple(pools)] = groups.get(tuple(pools), 0) + 1
        parts = [f"{n}×[{','.join(map(str, pools))}]" for pools, n in groups.items()]
        return f"{self.gpus} ({' + '.join(parts)})"


def simulate_fleet(spec: Spec, trace: Sequence[Request], costs: Costs, product: Product) -> MultiBaseFleet:
    farm = MultiBaseFarm(spec, costs, product.rules(), product.backlog_age_s, device_budgets(product))
    return MultiBaseFleet(spec, farm.serve(trace))


def smallest(
    shape: Callable[[int], Spec],
    first: int,
    limit: int,
    trace: Sequence[Request],
    costs: Costs,
    product: Product,
    bound_s: float,
) -> MultiBaseFleet | None:
    """The fleet ``shape(n)`` for the smallest ``n`` from ``first`` whose every pool's p95 is within
    ``bound_s``; None past ``limit``."""
    for n in range(first, limit + 1):
        fleet = simulate_fleet(shape(n), trace, costs, product)
        if all(run.pct(95) <= bound_s for run in fleet.runs.values()):
            return fleet
    return None


@dataclass(frozen=True)
class MultiBase:
    """The smallest multi-base fleets: the long tail on shared workers (for the bound and for the
    tight p95 goal), and every worker serving every base (for the bound)."""

    tail: MultiBaseFleet | None
    tail_tight: MultiBaseFleet | None
    shared: MultiBaseFleet | None


def multibase_fleets(
    trace: Sequence[Request],
    costs: Costs,
    product: Product,
    main: tuple[Sequence[int] | None, Sequence[int] | None],
    bound: float,
    limit: int,
    busy: int,
) -> MultiBase:
    """The main pool keeps the workers lorafarm needs for each bound (``main``: the single-base
    fleets for ``bound`` and for the tight goal); the other pools share multi-base workers."""
    inf, n_bases = costs.inference_s, len(BASES)

    def tail(fleet: Sequence[int] | None, times: float) -> MultiBaseFleet | None:
        if fleet is None:
            return None
        return smallest(lambda m: long_tail(fleet[0], m, n_bases), 1, limit, trace, costs, product, times * inf)

    return MultiBase(
        tail(main[0], bound),
        tail(main[1], goals.P95_OVER_INFERENCE),
        smallest(lambda n: every_base(n, n_bases), busy, limit, trace, costs, product, bound * inf),
    )


def describe(multi: MultiBase, product: Product, inference_s: float) -> list[str]:
    """What the run assumed for multi-base workers, and each pool's p95 on their fleets."""
    budgets = device_budgets(product)
    host = "no cap" if budgets.host is None else f"{budgets.host / 1e9:.1f} GB"
    sizes = ", ".join(f"[{i}] {name} {nbytes / 1e9:.2f} GB" for i, (name, nbytes) in enumerate(BASES))
    lines = [
        f"multi-base: bases {sizes} (fp16, from parameter counts);",
        f"  device budget {budgets.device / 1e9:.2f} GB (an A10G's ~{A10G_FREE_BYTES / 1e9:g} GB free less the pristine"
        f" headroom), pinned host {host}; switch times are estimates: bytes at 25 GB/s to the device, 2 GB/s from disk",
    ]
    for label, fleet in (("(d)", multi.tail), ("(e)", multi.shared)):
        if fleet is not None:
            p95 = ", ".join(
                f"[{p}] {run.pct(95) / inference_s:.3f}× ({len(run.latencies)} req)" for p, run in fleet.runs.items()
            )
            lines.append(f"  {label} {fleet.describe()}: p95 per pool {p95}")
    return lines


def saving_verdict(fleet: MultiBaseFleet | None, reference: Sequence[int] | None, bound: str) -> Verdict:
    """The multi-base fleet's GPUs against the reference's, both the smallest for the same bound."""
    goal = (
        f"lorafarm with multi-base workers needs ≥ {goals.MULTIBASE_GPU_SAVING:.0%} fewer GPUs than the reference "
        f"at {bound} in every pool"
    )
    if fleet is None or reference is None:
        ours = "out of reach" if fleet is None else fleet.describe()
        return Verdict(
            goal, f"multi-base {ours}, reference {'out of reach' if reference is None else sum(reference)}", False
        )
    verdict = goals.at_least(goal, 1 - fleet.gpus / sum(reference), goals.MULTIBASE_GPU_SAVING, fmt=".0%")
    return replace(verdict, measured=f"{verdict.measured}; {fleet.describe()} vs {sum(reference)} GPUs")


def small_pools_verdict(fleet: MultiBaseFleet | None, bound: float, inference_s: float) -> Verdict:
    """The p95 of each smaller pool (those of the long tail) on the multi-base fleet, within the bound."""
    goal = f"each smaller pool's p95 ≤ {bound:g}× inference on the multi-base fleet"
    if fleet is None:
        return Verdict(goal, "no multi-base fleet within the search limit", False)
    parts = [
        goals.at_most(f"{BASES[p][0]}", fleet.runs[p].pct(95) / inference_s, bound, "×", ".3f")
        for p in sorted(fleet.runs)
        if p != 0
    ]
    return goals.all_of(goal, parts)
