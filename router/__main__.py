"""``python -m router``: settings from the environment (``LORAFARM_*``), then uvicorn.

On SIGTERM uvicorn stops accepting connections and lets in-flight requests finish for up to
``shutdown_grace_s`` seconds.
"""

from __future__ import annotations

import argparse
import gc
import logging

import uvicorn

from router.app import create_app
from router.settings import RouterSettings


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m router",
        description="The lorafarm router. Every setting is an environment variable (LORAFARM_POOLS, "
        "LORAFARM_REDIS_URL, ...): see docs/SETTINGS.md.",
    )
    parser.parse_args(argv)
    settings = RouterSettings()
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s %(message)s")
    app = create_app(settings)
    # The modules and objects made so far live as long as the process: keep them out of the
    # collector's full passes, each of which would stall the event loop ~75 ms (measured here).
    gc.collect()
    gc.freeze()
    uvicorn.run(
        app,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level.lower(),
        access_log=False,  # the router logs one structured line per request itself
        timeout_graceful_shutdown=int(settings.shutdown_grace_s),
        timeout_keep_alive=settings.keep_alive_s,
    )


if __name__ == "__main__":
    main()
