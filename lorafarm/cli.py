"""``lorafarm``: the command line. ``lorafarm run`` serves the tiny demo zoo (what ``make run`` calls)."""

from __future__ import annotations

import argparse
import json
import signal
import sys
import time
from pathlib import Path

from lorafarm import generate
from lorafarm.farm import REPO_ROOT, Farm, FarmConfig
from lorafarm.supervisor import Backoff, Supervisor
from router import keyring

ZOO_STAMP = ".zoo-built"
#: The tiny bases ``lorafarm run`` serves by default: two UNet families and a diffusion transformer.
DEFAULT_POOLS = ("tiny/sdxl-base", "tiny/sd15-base", "tiny/flux-base")
#: The main pool: it gets its own workers; the others (the long tail) share one multi-base worker.
MAIN_POOL = "tiny/sdxl-base"
#: Pool -> the LoRA of its printed curl line (and of the check that it works), and the output file.
DEMOS = {
    "tiny/sdxl-base": ("tiny/sdxl-lora-diffusers", "lora.jpg"),
    "tiny/flux-base": ("tiny/flux-lora-diffusers", "flux.jpg"),
    # After the FLUX.1 one, on the multi-base worker: a warm base switch.
    "tiny/sd15-base": ("tiny/sd15-lora", "sd15.jpg"),
}
DEMO_BODY = {"inputs": "an elephant", "parameters": {"seed": 1}}


def ensure_zoo(zoo_dir: Path) -> None:
    """Build the tiny zoo once (it is deterministic, so a built one is reused)."""
    if (zoo_dir / ZOO_STAMP).exists():
        return
    from devhub.zoo import build_zoo

    print(f"building the tiny model zoo in {zoo_dir} ...", flush=True)
    zoo_dir.mkdir(parents=True, exist_ok=True)
    build_zoo(zoo_dir)
    (zoo_dir / ZOO_STAMP).write_text("ok\n")


def run(args: argparse.Namespace) -> int:
    zoo_dir = Path(args.zoo).resolve()
    ensure_zoo(zoo_dir)
    pools = args.pools.split(",")
    farm = Farm(
        FarmConfig(
            state_dir=Path(args.state).resolve(),
            zoo_dir=zoo_dir,
            pools=pools,
            workers_per_pool=args.workers,
            workers=None if args.dedicated else worker_plan(pools, args.workers),
            router_port=args.port,
            devhub_port=args.hub_port,
            redis_port=args.redis_port,
            redis_ha=args.redis_ha,
            env={"LORAFARM_DEFAULT_STEPS": str(args.steps)},
        )
    )
    stopping = False

    def _stop(_signum: int, _frame: object) -> None:
        nonlocal stopping
        if stopping:
            return
        stopping = True
        raise KeyboardInterrupt

    # SIGINT too, explicitly: started in the background (``&``, nohup) it is ignored by default.
    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    try:
        print("starting redis-server, devhub, router and workers ...", flush=True)
        farm.start()
        url = farm.router_url
        checked = "\n".join(check_demo(url, pools))
        plan = "; ".join(f"{' + '.join(spec)}" for spec in farm.worker_specs)
        body = json.dumps(DEMO_BODY)
        curls = [
            f"  curl {url}/models/{lora} -d '{body}' -o {out}" for pool, (lora, out) in DEMOS.items() if pool in pools
        ]
        print(
            f"""
lorafarm is serving the tiny zoo at {url}  (logs: {farm.logs})
pools: {", ".join(pools)}   hub: {farm.hub_url}   redis: {describe_redis(farm)}
workers: {plan}   (a worker with several pools is a multi-base worker: one base active, the others warm)
{checked}
Try:
{chr(10).join(curls)}
  curl {url}/ -H 'lora: tiny/sdxl-lora-kohya' -d '{{"inputs": "an elephant"}}' -o kohya.jpg
  curl {url}/status
  widget: {url}/widget/tiny/sdxl-lora-diffusers
A process that dies is restarted (pids: {farm.pids}); Ctrl-C stops everything.""",
            flush=True,
        )
        backoff = Backoff(first_s=args.restart_delay)
        supervisor = Supervisor(farm, backoff, say=lambda line: print(line, flush=True))
        while True:
            supervisor.tick()
            time.sleep(0.5)
    except KeyboardInterrupt:
        print("\nstopping ...", flush=True)
        return 0
    finally:
        farm.stop()


def worker_plan(pools: list[str], per_pool: int) -> list[list[str]]:
    """``per_pool`` workers of the main pool, and one multi-base worker for all the other pools
    (a lone pool, or no main pool: one worker per pool, as ``--dedicated``)."""
    tail = [pool for pool in pools if pool != MAIN_POOL]
    if MAIN_POOL not in pools or len(tail) < 2:
        return [[pool] for pool in pools for _ in range(per_pool)]
    return [[MAIN_POOL] for _ in range(per_pool)] + [tail]


def describe_redis(farm: Farm) -> str:
    """Where the farm's Redis is, as the banner shows it."""
    if farm.replicated is None:
        return farm.redis_url
    sentinels = ",".join(f"{host}:{port}" for host, port in farm.redis_target().sentinels)
    return f"primary {farm.redis_url} + 1 replica, sentinels {sentinels}"


def check_demo(url: str, pools: list[str]) -> list[str]:
    """Serve each printed curl line of the served pools once, so 'ready' means they work."""
    import httpx

    lines = []
    for pool, (lora, _) in DEMOS.items():
        if pool not in pools:
            continue
        start = time.perf_counter()
        resp = httpx.post(f"{url}/models/{lora}", json=DEMO_BODY, timeout=120)
        elapsed = time.perf_counter() - start
        if resp.status_code != 200:
            raise RuntimeError(f"the demo request for {lora} failed: {resp.status_code} {resp.text}")
        lines.append(
            f"checked: {lora} -> {resp.headers.get('content-type')} {len(resp.content)} bytes in {elapsed:.2f} s "
            f"(x-compute-time {resp.headers.get('x-compute-time')}, x-base-switch {resp.headers.get('x-base-switch')})"
        )
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="lorafarm")
    sub = parser.add_subparsers(dest="command", required=True)
    p_run = sub.add_parser("run", help="serve the tiny demo zoo on loopback")
    p_run.add_argument("--port", type=int, default=8888, help="router port")
    p_run.add_argument("--hub-port", type=int, default=8900, help="devhub port")
    p_run.add_argument("--redis-port", type=int, default=6390, help="redis-server port (the first primary's)")
    p_run.add_argument(
        "--redis-ha",
        action="store_true",
        help="Redis as a primary, a replica and 3 sentinels; jobs are accepted once the replica holds them",
    )
    p_run.add_argument("--pools", default=",".join(DEFAULT_POOLS), help="base repo ids, comma-separated")
    p_run.add_argument("--workers", type=int, default=1, help="workers per pool (of the main pool with multi-base)")
    p_run.add_argument(
        "--dedicated",
        action="store_true",
        help="one worker per pool; default: tiny/sdxl-base's own, one multi-base worker for the other pools",
    )
    p_run.add_argument("--steps", type=int, default=8, help="default inference steps of the tiny bases")
    p_run.add_argument("--zoo", default=str(REPO_ROOT / ".zoo"), help="where the tiny zoo is built")
    p_run.add_argument(
        "--restart-delay", type=float, default=1.0, help="seconds before a dead process is restarted (doubling)"
    )
    p_run.add_argument("--state", default=str(REPO_ROOT / ".farm"), help="logs, Redis data, Hub cache")
    p_run.set_defaults(func=run)
    p_gen = sub.add_parser("generate", help="generate one image through a router's job API, with a progress bar")
    generate.add_arguments(p_gen)
    p_gen.set_defaults(func=generate.run)
    p_keys = sub.add_parser("keys", help="API keys of tenants, each with its limits (add prints the key once)")
    keyring.add_arguments(p_keys)
    p_keys.set_defaults(func=keyring.run)
    args = parser.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
