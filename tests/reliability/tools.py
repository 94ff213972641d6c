"""Helpers of the reliability suite: requests, polling, logs, Redis state, memory, load bursts."""

from __future__ import annotations

import http.client
import json
import os
import re
import subprocess
import sys
import threading
from typing import Any

import httpx
import redis

from lorafarm.farm import REPO_ROOT, Farm
from tests.polling import wait_until

SDXL = "tiny/sdxl-base"
#: Steps that keep a tiny 64x64 job on a worker for a few seconds (about 60 ms a step here).
SLOW_STEPS = 60
#: What an answer to a client must never hold: tracebacks, internal addresses (the Hub's, Redis's),
#: file paths. (A client's own input may be quoted back, shortened.)
LEAKS = ("Traceback", 'File "', "127.0.0.1", "localhost", "redis://", "/tmp/", "site-packages", "hf-cache")


def body(steps: int = 2, seed: int = 7, prompt: str = "an elephant", **params: Any) -> dict[str, Any]:
    return {"inputs": prompt, "parameters": {"num_inference_steps": steps, "seed": seed, **params}}


def post(farm: Farm, repo: str, payload: Any = None, *, timeout: float = 120, **kwargs: Any) -> httpx.Response:
    return httpx.post(f"{farm.router_url}/models/{repo}", json=payload or body(), timeout=timeout, **kwargs)


def raw_request(
    farm: Farm, method: str, path: str, content: bytes = b"", headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], bytes]:
    """A request with the path sent byte for byte (httpx would normalise ``..`` and encodings)."""
    conn = http.client.HTTPConnection("127.0.0.1", farm.router_port, timeout=30)
    try:
        conn.putrequest(method, path, skip_accept_encoding=True)
        for name, value in (headers or {}).items():
            conn.putheader(name, value)
        conn.putheader("Content-Length", str(len(content)))
        conn.endheaders(content)
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


def running_workers(farm: Farm) -> list[str]:
    """Names of the worker processes of the farm still running."""
    return [n for n, p in farm.procs.items() if n.startswith("worker-") and p.poll() is None]


def log(farm: Farm, name: str) -> str:
    return (farm.logs / f"{name}.log").read_text(errors="replace")


def worker_logs(farm: Farm) -> dict[str, str]:
    return {p.stem: p.read_text(errors="replace") for p in sorted(farm.logs.glob("worker-*.log"))}


def ran(farm: Farm, job_id: str) -> list[str]:
    """Workers whose log says they generated (``job_done``) the job."""
    return [name for name, text in worker_logs(farm).items() if f"event=job_done job={job_id}" in text]


def mentions(farm: Farm, job_id: str) -> list[str]:
    """Workers whose log names the job at all (claimed, run, cancelled...)."""
    return [name for name, text in worker_logs(farm).items() if job_id in text]


def redis_client(farm: Farm) -> redis.Redis:
    return redis.Redis.from_url(farm.redis_url, socket_timeout=5)


def queue_state(client: redis.Redis) -> tuple[int, int]:
    """(entries, pending entries) over every job stream of the farm (shared, per-worker, parked)."""
    entries = pending = 0
    for key in client.scan_iter("lorafarm:stream:*", count=1000):
        entries += int(client.xlen(key))
        for group in client.xinfo_groups(key):
            pending += int(group["pending"])
    for key in client.scan_iter("lorafarm:parked:*", count=1000):
        entries += int(client.xlen(key))
    return entries, pending


def assert_clean(client: redis.Redis, timeout: float = 10) -> None:
    """Every job stream empties: nothing waiting, nothing claimed and unacknowledged."""
    wait_until(lambda: queue_state(client) == (0, 0), timeout, what=f"clean streams (now {queue_state(client)})")


def assert_error(resp: httpx.Response | tuple[int, dict[str, str], bytes], status_code: int, error_type: str) -> dict:
    """A clear JSON error: the status, ``error`` and ``error_type``, nothing internal in the body."""
    if isinstance(resp, httpx.Response):
        code, headers, content = resp.status_code, dict(resp.headers), resp.content
    else:
        code, headers, content = resp
    text = content.decode(errors="replace")
    assert code == status_code, f"{code} != {status_code}: {text[:300]}"
    answer = json.loads(text)
    assert answer["error_type"] == error_type, answer
    assert answer["error"], answer
    leaked = [word for word in LEAKS if word in text]
    assert not leaked, f"{leaked} in {text[:300]}"
    if status_code in (429, 503):
        assert int(headers["retry-after"]) >= 1
    return answer


def rss_mb(pid: int) -> float:
    """Resident memory of a process, from /proc."""
    with open(f"/proc/{pid}/status") as f:
        match = re.search(r"^VmRSS:\s+(\d+) kB", f.read(), re.M)
    assert match is not None
    return int(match.group(1)) / 1024


class RssSampler:
    """Samples a process's resident memory every ``interval`` seconds in a thread; ``peak`` in MB."""

    def __init__(self, pid: int, interval: float = 0.02) -> None:
        self.pid, self.interval, self.peak = pid, interval, 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_mb(self.pid))
            self._stop.wait(self.interval)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def start_burst(url: str, n: int, concurrency: int, payload: dict[str, Any], *, nice: int = 0) -> subprocess.Popen[str]:
    """``tests.reliability.burst`` in a process of its own, so its client work does not skew the test's."""
    argv = [sys.executable, "-m", "tests.reliability.burst", url, str(n), str(concurrency), json.dumps(payload)]
    return subprocess.Popen(
        argv, cwd=REPO_ROOT, stdout=subprocess.PIPE, text=True, preexec_fn=(lambda: os.nice(nice)) if nice else None
    )


def burst_summary(proc: subprocess.Popen[str], timeout: float = 120) -> dict[str, Any]:
    out, _ = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, out
    return json.loads(out.strip().splitlines()[-1])
