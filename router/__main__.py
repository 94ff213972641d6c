"""``python -m router``: settings from the environment (``LORAFARM_*``), then uvicorn.

On SIGTERM uvicorn stops accepting connections and lets in-flight requests finish for up to
``shutdown_grace_s`` seconds.
"""

from __future__ import annotations

import logging

import uvicorn

from router.app import create_app
from router.settings import RouterSettings


def main() -> None:
    settings = RouterSettings()
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s %(message)s")
    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level.lower(),
        access_log=False,  # the router logs one structured line per request itself
        timeout_graceful_shutdown=int(settings.shutdown_grace_s),
    )


if __name__ == "__main__":
    main()
