"""A pure ASGI middleware that hands every HTTP request's outcome to ``done``: the request log and
the metrics are both built on it, so status capture and timing exist once."""

from __future__ import annotations

import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send


class ObservedRequest:
    """Subclasses implement ``done(scope, status, seconds, crashed)``; called once per HTTP request."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        crashed = False
        try:
            await self.app(scope, receive, send_status)
        except Exception:
            crashed = True  # answered 500 by the outermost handler, after this middleware
            raise
        finally:
            self.done(scope, status, time.perf_counter() - start, crashed)

    def done(self, scope: Scope, status: int, seconds: float, crashed: bool) -> None:
        raise NotImplementedError
