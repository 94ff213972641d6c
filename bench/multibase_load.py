"""Load benchmark of a multi-base worker: two pools on a real farm, dedicated workers against sharing.

Starts redis-server, devhub, router and two workers on loopback (CPU) for two tiny pools, SDXL
and SD 1.5, and replays the same open-loop trace (Poisson arrivals, ``--tail-share`` of them on
SD 1.5, Zipf popularity within each pool) on two fleets of lorafarm workers:

- (a) dedicated: one worker per pool;
- (b) shared: one multi-base worker serving both pools, plus one dedicated SDXL worker.

Reported per pool: p50 and p95, adapter swaps and base switches per 100 requests (from the
``x-adapter-warm`` and ``x-base-switch`` headers). On this CPU a base switch is a memory copy.

    python -m bench.multibase_load [--requests 200 --rate 3 --tail-share 0.2 --loras 30 --steps 4]
"""

from __future__ import annotations

import argparse
import platform
import random
import shlex
import sys
import tempfile
from pathlib import Path

from bench.load import Sample, _cores, _pct, replay_on_farm
from devhub.zoo import build_many_loras, build_zoo
from lorafarm.farm import FarmConfig

SDXL, SD15 = "tiny/sdxl-base", "tiny/sd15-base"
FLEETS = {
    "(a) dedicated: one worker per pool": [[SDXL], [SD15]],
    "(b) shared: one multi-base worker (SDXL + SD 1.5) + one SDXL worker": [[SDXL, SD15], [SDXL]],
}


def mixed_trace(
    n: int, pools: dict[str, list[str]], shares: dict[str, float], args: argparse.Namespace
) -> list[tuple[float, str]]:
    """``n`` (arrival time, repo): Poisson arrivals; a pool drawn by its share, then a Zipf-popular LoRA of it."""
    rng = random.Random(args.seed)
    orders = {pool: rng.sample(loras, len(loras)) for pool, loras in pools.items()}  # popularity unrelated to names
    weights = {pool: [1.0 / (rank + 1) ** args.zipf for rank in range(len(loras))] for pool, loras in pools.items()}
    t, trace = 0.0, []
    for _ in range(n):
        t += rng.expovariate(args.rate)
        pool = rng.choices(list(shares), list(shares.values()))[0]
        trace.append((t, rng.choices(orders[pool], weights[pool])[0]))
    return trace


def per_pool(samples: list[Sample], prefixes: dict[str, str]) -> dict[str, dict[str, float]]:
    out = {}
    for pool, prefix in prefixes.items():
        mine = [s for s in samples if s.repo.startswith(prefix)]
        ok = [s for s in mine if s.status == 200]
        lat = sorted(s.latency for s in ok)
        out[pool] = {
            "requests": len(mine),
            "failed": len(mine) - len(ok),
            "p50": _pct(lat, 50),
            "p95": _pct(lat, 95),
            "swaps_per_100": 100 * sum(s.swapped for s in ok) / max(1, len(ok)),
            "switches_per_100": 100 * sum(s.base_switch != "none" for s in ok) / max(1, len(ok)),
        }
    return out


def report(results: dict[str, dict[str, dict[str, float]]], args: argparse.Namespace, command: str) -> str:
    lines = [
        "| fleet | pool | requests (failed) | p50 s | p95 s | swaps/100 | base switches/100 |",
        "|---|---|---|---|---|---|---|",
    ]
    for fleet, pools in results.items():
        for pool, r in pools.items():
            lines.append(
                f"| {fleet} | {pool} | {r['requests']:.0f} ({r['failed']:.0f}) | {r['p50']:.3f} | {r['p95']:.3f} "
                f"| {r['swaps_per_100']:.1f} | {r['switches_per_100']:.1f} |"
            )
    machine = f"{platform.machine()}, {_cores()} cores, Python {platform.python_version()}"
    lines += [
        "",
        f"Trace: {args.requests} requests, Poisson {args.rate}/s, {args.tail_share:.0%} on {SD15}, Zipf s={args.zipf} "
        f"over {args.loras} LoRAs a pool, seed {args.seed}; {args.steps} steps 64x64, CPU, {args.threads} torch "
        f"thread(s) per worker; a base switch here is a copy in host memory. Machine: {machine}.",
        f"Command: `{command}`",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.multibase_load", description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--rate", type=float, default=3.0, help="arrivals per second (open loop)")
    parser.add_argument("--tail-share", type=float, default=0.2, help="share of the requests on tiny SD 1.5")
    parser.add_argument("--loras", type=int, default=30, help="LoRAs per pool")
    parser.add_argument("--zipf", type=float, default=1.1)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--threads", type=int, default=1, help="torch threads per worker")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--zoo", type=Path, default=None, help="reuse a zoo folder (built when missing)")
    args = parser.parse_args(argv)
    command = "python -m bench.multibase_load " + shlex.join(argv if argv is not None else sys.argv[1:])

    zoo = args.zoo or Path(tempfile.mkdtemp(prefix="lorafarm-load-zoo-"))
    if not (zoo / "tiny" / "sdxl-base").exists():
        build_zoo(zoo)
    pools = {pool: build_many_loras(zoo, args.loras, base=pool) for pool in (SDXL, SD15)}
    trace = mixed_trace(args.requests, pools, {SDXL: 1 - args.tail_share, SD15: args.tail_share}, args)
    prefixes = {SDXL: "tiny/sdxl-lora-", SD15: "tiny/sd15-lora-"}
    results = {}
    for name, workers in FLEETS.items():
        state = Path(tempfile.mkdtemp(prefix="lorafarm-multibase-load-"))
        config = FarmConfig(state_dir=state, zoo_dir=zoo, pools=[SDXL, SD15], workers=workers)
        samples, _ = replay_on_farm(name, zoo, args, trace, config)
        results[name] = per_pool(samples, prefixes)
    print(report(results, args, command))


if __name__ == "__main__":
    main()
