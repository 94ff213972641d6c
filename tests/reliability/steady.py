"""Steady load on a farm from threads of the test process: sync requests back to back, and async
jobs at a fixed pace, every answer recorded with its time, until stopped."""

from __future__ import annotations

import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import httpx

from lorafarm.farm import Farm
from tests.reliability.tools import SDXL, body


@dataclass(frozen=True)
class Answer:
    """One request of the load: what came back, when (monotonic seconds)."""

    kind: str  # "sync" or "async"
    sent: float
    answered: float
    status: int  # 0: no answer (a transport error)
    error_type: str | None = None
    retry_after: str | None = None
    job_id: str | None = None

    @property
    def outcome(self) -> str:
        """``200``, ``202``, ``503 redis_unavailable``..."""
        return f"{self.status} {self.error_type}" if self.error_type else str(self.status)


@dataclass
class SteadyLoad:
    """``sync_clients`` threads of sync requests, and one async job every ``async_every_s``."""

    farm: Farm
    sync_clients: int = 2
    async_every_s: float = 0.3
    steps: int = 4
    timeout_s: float = 60.0
    answers: list[Answer] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __enter__(self) -> SteadyLoad:
        targets = [self._sync] * self.sync_clients + [self._async]
        self._threads = [threading.Thread(target=t, args=(i,), daemon=True) for i, t in enumerate(targets)]
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(self.timeout_s + 10)

    def outcomes(self, kind: str | None = None) -> Counter[str]:
        return Counter(a.outcome for a in self.answers if kind in (None, a.kind))

    def accepted(self, kind: str) -> list[Answer]:
        """Jobs the farm took on: sync requests answered with an image, async jobs answered 202."""
        return [a for a in self.answers if a.kind == kind and a.status in (200, 202)]

    def _sync(self, worker: int) -> None:
        with httpx.Client(base_url=self.farm.router_url, timeout=self.timeout_s) as client:
            for i in range(10**6):
                if self._stop.is_set():
                    return
                self._send(client, "sync", f"/models/{SDXL}", body(steps=self.steps, seed=worker * 10**6 + i))

    def _async(self, index: int) -> None:
        with httpx.Client(base_url=self.farm.router_url, timeout=self.timeout_s) as client:
            for i in range(10**6):
                if self._stop.wait(self.async_every_s):
                    return
                self._send(client, "async", "/jobs", body(steps=self.steps, seed=index * 10**6 + i) | {"model": SDXL})

    def _send(self, client: httpx.Client, kind: str, path: str, payload: dict[str, Any]) -> None:
        sent = time.monotonic()
        try:
            resp = client.post(path, json=payload)
        except httpx.HTTPError:
            self._record(Answer(kind, sent, time.monotonic(), 0, error_type="transport"))
            return
        answered = time.monotonic()
        error_type = resp.json().get("error_type") if resp.status_code >= 400 else None
        job_id = resp.json()["id"] if resp.status_code == 202 else resp.headers.get("x-request-id")
        self._record(
            Answer(kind, sent, answered, resp.status_code, error_type, resp.headers.get("retry-after"), job_id)
        )

    def _record(self, answer: Answer) -> None:
        with self._lock:
            self.answers.append(answer)
