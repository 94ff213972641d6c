"""The worker's probe port: ``/health`` (alive, no job hung), ``/ready`` (base warm, Redis reachable), ``/metrics``.

Operational only; jobs never arrive over HTTP.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest


def start_probe(
    host: str,
    port: int,
    *,
    ready: Callable[[], bool],
    registry: CollectorRegistry,
    alive: Callable[[], bool] = lambda: True,
) -> ThreadingHTTPServer:
    """Serve the probe routes in a daemon thread; returns the server (``shutdown()`` to stop)."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path == "/health":
                ok = alive()
                self._send(200 if ok else 503, b"ok\n" if ok else b"hung\n", "text/plain")
            elif self.path == "/ready":
                ok = ready()
                self._send(200 if ok else 503, b"ready\n" if ok else b"not ready\n", "text/plain")
            elif self.path == "/metrics":
                self._send(200, generate_latest(registry), CONTENT_TYPE_LATEST)
            else:
                self._send(404, b"not found\n", "text/plain")

        def _send(self, status: int, body: bytes, content_type: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:  # probes are too chatty to log
            return

    server = ThreadingHTTPServer((host, port), Handler)
    threading.Thread(target=server.serve_forever, name="probe", daemon=True).start()
    return server
