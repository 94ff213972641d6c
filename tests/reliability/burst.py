"""``python -m tests.reliability.burst URL N CONCURRENCY BODY``: N POSTs, at most CONCURRENCY at once.

Prints one JSON line: answers by status, error types, 429/503 answers lacking ``Retry-After``,
transport errors, and the slowest answer.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections import Counter

import httpx


async def burst(url: str, n: int, concurrency: int, payload: dict) -> dict:
    statuses: Counter[str] = Counter()
    error_types: Counter[str] = Counter()
    no_retry_after = transport_errors = 0
    transport_kinds: Counter[str] = Counter()
    slowest = 0.0
    gate = asyncio.Semaphore(concurrency)
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)

    async def one(client: httpx.AsyncClient, i: int) -> None:
        nonlocal no_retry_after, transport_errors, slowest
        async with gate:
            start = time.perf_counter()
            try:
                resp = await client.post(url, json=payload | {"inputs": f"{payload['inputs']} {i}"})
            except httpx.HTTPError as exc:
                transport_errors += 1
                transport_kinds[f"{type(exc).__name__}: {exc}"] += 1
                return
            slowest = max(slowest, time.perf_counter() - start)
            statuses[str(resp.status_code)] += 1
            if resp.status_code >= 400:
                error_types[resp.json().get("error_type", "?")] += 1
                if resp.status_code in (429, 503) and "retry-after" not in resp.headers:
                    no_retry_after += 1

    async with httpx.AsyncClient(timeout=120, limits=limits) as client:
        await asyncio.gather(*(one(client, i) for i in range(n)))
    return {
        "statuses": dict(statuses),
        "error_types": dict(error_types),
        "no_retry_after": no_retry_after,
        "transport_errors": transport_errors,
        "transport_kinds": dict(transport_kinds),
        "slowest_s": round(slowest, 3),
    }


def main() -> None:
    url, n, concurrency, payload = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), json.loads(sys.argv[4])
    print(json.dumps(asyncio.run(burst(url, n, concurrency, payload))))


if __name__ == "__main__":
    main()
