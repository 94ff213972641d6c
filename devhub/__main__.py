"""`python -m devhub serve --root DIR --port N` and `python -m devhub zoo DIR [--many N]`."""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="devhub", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="serve a folder of repos over the Hub HTTP API")
    serve.add_argument("--root", type=Path, required=True, help="folder holding <org>/<name>/ repos")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8890)
    serve.add_argument("--token", default=None, help="the one token that sees private and gated repos")
    serve.add_argument("--delay-ms", type=int, default=0, help="sleep before each answer (slow-Hub tests)")
    zoo = sub.add_parser("zoo", help="build the tiny model zoo into a folder")
    zoo.add_argument("root", type=Path)
    zoo.add_argument("--seed", type=int, default=0)
    zoo.add_argument("--many", type=int, default=0, help="also write N small LoRAs tiny/sdxl-lora-NNN")
    return parser


def main(argv: list[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    if args.command == "zoo":
        from devhub.zoo import build_many_loras, build_zoo

        start = time.perf_counter()
        ids = build_zoo(args.root, seed=args.seed)
        if args.many:
            ids += build_many_loras(args.root, args.many, seed=args.seed)
        print(f"event=zoo_built repos={len(ids)} root={args.root} seconds={time.perf_counter() - start:.2f}")
        return
    import uvicorn

    from devhub.server import create_app

    app = create_app(args.root, token=args.token, delay_ms=args.delay_ms)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
