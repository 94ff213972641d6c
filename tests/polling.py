"""Waiting for a condition with a deadline, instead of sleeping a fixed time and hoping; and the
conditions on a farm that tests wait for, as its router's ``/status`` shows them."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, TypeVar

import httpx

from lorafarm.farm import Farm

T = TypeVar("T")


def wait_until(check: Callable[[], T], timeout: float, *, interval: float = 0.05, what: str = "") -> T:
    """Poll ``check`` until it returns something truthy; fail the test past ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout}s: {what or check}")
        time.sleep(interval)


def status(farm: Farm) -> dict[str, Any]:
    return httpx.get(f"{farm.router_url}/status", timeout=10).json()


def live_workers(farm: Farm) -> list[dict[str, Any]]:
    """Workers the router sees alive (heartbeat not expired), every pool."""
    try:
        return [w for p in status(farm)["pools"] for w in p["workers"]]
    except (httpx.HTTPError, KeyError, ValueError):
        return []


def busy_workers(farm: Farm) -> dict[str, str]:
    """worker id -> id of the job in its hands."""
    return {w["worker_id"]: w["current_job"] for w in live_workers(farm) if w.get("current_job")}


def holders(farm: Farm, repo: str) -> list[str]:
    """Ids of the workers that have an adapter of ``repo`` fused."""
    return [w["worker_id"] for w in live_workers(farm) if any(k.startswith(f"{repo}@") for k in w["fused"])]
