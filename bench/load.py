"""Load benchmark: a seeded Zipf trace replayed on a real farm, reference behaviour vs lorafarm.

Starts redis-server, devhub, router and N workers of one tiny pool on loopback (CPU), writes
50+ LoRAs for the tiny SDXL base, and replays the same open-loop trace twice:

- reference: no affinity (any worker), diffusers' stock swap (load+fuse / unfuse+unload) on
  every change, as the reference serving image does;
- lorafarm: placement with adapter affinity, one-pass fused swap from pristine copies,
  backlog ordering and prefetch.

Two pools, dedicated workers against a multi-base one: ``bench/multibase_load.py``.

    python -m bench.load [--requests 200 --rate 3 --workers 2 --loras 60 --zipf 1.1 --steps 4]
"""

from __future__ import annotations

import argparse
import asyncio
import platform
import random
import shlex
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from devhub.zoo import build_many_loras, build_zoo
from lorafarm.farm import Farm, FarmConfig

POOL = "tiny/sdxl-base"


@dataclass(frozen=True)
class Sample:
    at: float
    latency: float
    status: int
    swapped: bool
    swap_s: float
    repo: str = ""
    base_switch: str = "none"


def zipf_trace(n: int, loras: list[str], exponent: float, rate: float, seed: int) -> list[tuple[float, str]]:
    """``n`` (arrival time, repo) pairs: Poisson arrivals at ``rate``/s, Zipf popularity over ``loras``."""
    rng = random.Random(seed)
    weights = [1.0 / (rank + 1) ** exponent for rank in range(len(loras))]
    order = loras[:]
    rng.shuffle(order)  # popularity unrelated to the name
    t, trace = 0.0, []
    for _ in range(n):
        t += rng.expovariate(rate)
        trace.append((t, rng.choices(order, weights)[0]))
    return trace


async def replay(url: str, trace: list[tuple[float, str]], steps: int) -> tuple[list[Sample], float]:
    """Send each request at its arrival time (open loop); returns the samples and the makespan."""
    limits = httpx.Limits(max_connections=512, max_keepalive_connections=64)
    async with httpx.AsyncClient(base_url=url, timeout=600, limits=limits) as client:
        start = time.perf_counter()

        async def one(at: float, repo: str, seed: int) -> Sample:
            await asyncio.sleep(max(0.0, at - (time.perf_counter() - start)))
            sent = time.perf_counter()
            body = {"inputs": "an elephant", "parameters": {"num_inference_steps": steps, "seed": seed}}
            resp = await client.post(f"/models/{repo}", json=body)
            return Sample(
                at=at,
                latency=time.perf_counter() - sent,
                status=resp.status_code,
                swapped=resp.headers.get("x-adapter-warm") == "false",
                swap_s=float(resp.headers.get("x-swap-time", "0") or 0),
                repo=repo,
                base_switch=resp.headers.get("x-base-switch", "none"),
            )

        samples = await asyncio.gather(*(one(at, repo, i) for i, (at, repo) in enumerate(trace)))
        return list(samples), time.perf_counter() - start


def run_mode(name: str, zoo: Path, args: argparse.Namespace, trace: list[tuple[float, str]]) -> dict[str, float]:
    reference = name == "reference"
    samples = replay_on_farm(
        name,
        zoo,
        args,
        trace,
        FarmConfig(
            state_dir=Path(tempfile.mkdtemp(prefix=f"lorafarm-load-{name}-")),
            zoo_dir=zoo,
            pools=[POOL],
            workers_per_pool=args.workers,
            router_env={"LORAFARM_AFFINITY": "false" if reference else "true"},
            worker_env={"LORAFARM_STOCK_SWAP": "true" if reference else "false"},
        ),
    )
    return stats(*samples)


def replay_on_farm(
    name: str, zoo: Path, args: argparse.Namespace, trace: list[tuple[float, str]], config: FarmConfig
) -> tuple[list[Sample], float]:
    """Start the farm, replay the trace on it, stop it: the samples and the makespan."""
    config.env = {
        "LORAFARM_DEFAULT_STEPS": str(args.steps),
        "LORAFARM_HEARTBEAT_S": "0.5",
        "LORAFARM_QUEUE_MAX": "100000",
        "LORAFARM_REQUEST_TIMEOUT_S": "600",
        "OMP_NUM_THREADS": str(args.threads),
    }
    farm = Farm(config)
    try:
        farm.start()
        print(f"[{name}] farm ready, replaying {len(trace)} requests ...", file=sys.stderr, flush=True)
        return asyncio.run(replay(farm.router_url, trace, args.steps))
    finally:
        farm.stop()


def stats(samples: list[Sample], makespan: float) -> dict[str, float]:
    ok = [s for s in samples if s.status == 200]
    lat = sorted(s.latency for s in ok)
    return {
        "ok": len(ok),
        "failed": len(samples) - len(ok),
        "throughput": len(ok) / makespan,
        "p50": _pct(lat, 50),
        "p95": _pct(lat, 95),
        "p99": _pct(lat, 99),
        "swaps_per_100": 100 * sum(s.swapped for s in ok) / max(1, len(ok)),
        "swap_total": sum(s.swap_s for s in ok),
        "swap_median": statistics.median([s.swap_s for s in ok if s.swapped] or [0.0]),
        "switches_per_100": 100 * sum(s.base_switch != "none" for s in ok) / max(1, len(ok)),
    }


def _pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    k = min(len(values) - 1, max(0, round(q / 100 * (len(values) - 1))))
    return values[k]


def report(results: dict[str, dict[str, float]], args: argparse.Namespace, command: str) -> str:
    ref, ours = results["reference"], results["lorafarm"]
    rows = [
        ("requests ok / failed", "{:.0f} / {:.0f}", "ok", None),
        ("throughput (req/s)", "{:.2f}", "throughput", "ours/ref"),
        ("latency p50 (s)", "{:.3f}", "p50", "ref/ours"),
        ("latency p95 (s)", "{:.3f}", "p95", "ref/ours"),
        ("latency p99 (s)", "{:.3f}", "p99", "ref/ours"),
        ("swaps per 100 requests", "{:.1f}", "swaps_per_100", "ref/ours"),
        ("time spent swapping (s)", "{:.2f}", "swap_total", "ref/ours"),
        ("median swap (s)", "{:.4f}", "swap_median", "ref/ours"),
    ]
    lines = [
        "| metric | reference (no affinity, stock swap) | lorafarm | ratio |",
        "|---|---|---|---|",
    ]
    for label, fmt, key, ratio in rows:
        if key == "ok":
            r = fmt.format(ref["ok"], ref["failed"])
            o = fmt.format(ours["ok"], ours["failed"])
            lines.append(f"| {label} | {r} | {o} | |")
            continue
        a, b = ref[key], ours[key]
        if ratio == "ours/ref":
            x = b / a if a else float("nan")
        else:
            x = a / b if b else float("inf")
        lines.append(f"| {label} | {fmt.format(a)} | {fmt.format(b)} | {x:.2f}x ({ratio}) |")
    machine = f"{platform.machine()}, {_cores()} cores, Python {platform.python_version()}"
    lines += [
        "",
        f"Trace: {args.requests} requests, Poisson {args.rate}/s, Zipf s={args.zipf} over {args.loras} LoRAs, "
        f"seed {args.seed}; {args.workers} workers of {POOL}, {args.steps} steps 64x64, CPU, "
        f"{args.threads} torch thread(s) per worker. Machine: {machine}.",
        f"Command: `{command}`",
    ]
    return "\n".join(lines)


def _cores() -> int:
    import os

    return os.cpu_count() or 0


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.load", description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--rate", type=float, default=3.0, help="arrivals per second (open loop)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--loras", type=int, default=60)
    parser.add_argument("--zipf", type=float, default=1.1)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--threads", type=int, default=1, help="torch threads per worker")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--zoo", type=Path, default=None, help="reuse a zoo folder (built when missing)")
    args = parser.parse_args(argv)
    command = "python -m bench.load " + shlex.join(argv if argv is not None else sys.argv[1:])

    zoo = args.zoo or Path(tempfile.mkdtemp(prefix="lorafarm-load-zoo-"))
    if not (zoo / "tiny" / "sdxl-base").exists():
        build_zoo(zoo)
    loras = build_many_loras(zoo, args.loras, base=POOL)
    trace = zipf_trace(args.requests, loras, args.zipf, args.rate, args.seed)
    distinct = len({repo for _, repo in trace})
    print(f"trace: {len(trace)} requests over {distinct} distinct LoRAs, {trace[-1][0]:.1f} s", file=sys.stderr)
    results = {name: run_mode(name, zoo, args, trace) for name in ("reference", "lorafarm")}
    print(report(results, args, command))


if __name__ == "__main__":
    main()
