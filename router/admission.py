"""Admission of a key's requests: what its bucket says, when to retry, the headers, its quota. Pure.

The rate limit is a token bucket per key, kept in Redis (``common.tenants.TakeToken``) so every
router takes from the same one; this module turns its answer into the ``429 rate_limited``
refusal and the headers clients read (``X-RateLimit-*`` and the IETF draft's ``RateLimit`` and
``RateLimit-Policy``). ``quota`` says what a key may hold when its job is submitted (the
concurrency and the fair share that ``common/shares.py`` enforce).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from common.shares import Quota
from common.tenants import Tenant

#: The policy's name in ``RateLimit`` and ``RateLimit-Policy``.
POLICY = "key"

#: The headers of an answer to a key with a rate limit, as OpenAPI declares them.
RATE_HEADERS = {
    "X-RateLimit-Limit": "Requests the key may send at once (its bucket's size).",
    "X-RateLimit-Remaining": "Requests it may send now.",
    "X-RateLimit-Reset": "Seconds until the bucket is full again.",
    "RateLimit-Policy": 'The key\'s policy (IETF draft): `"key";q=<size>;w=<seconds to refill>`.',
    "RateLimit": 'What is left of it (IETF draft): `"key";r=<remaining>;t=<seconds to full>`.',
}


@dataclass(frozen=True)
class Bucket:
    """A key's token bucket right after a request took a token from it (or found none)."""

    taken: bool
    #: Tokens left (fractional: the bucket refills continuously).
    tokens: float
    rate_per_s: float
    capacity: int


def retry_after_s(bucket: Bucket) -> int:
    """Whole seconds until the bucket holds a token again (at least 1)."""
    return max(1, math.ceil((1.0 - bucket.tokens) / bucket.rate_per_s))


def reset_s(bucket: Bucket) -> int:
    """Whole seconds until the bucket is full again (0: full)."""
    return max(0, math.ceil((bucket.capacity - bucket.tokens) / bucket.rate_per_s - 1e-9))


def rate_headers(bucket: Bucket) -> dict[str, str]:
    """The ``RATE_HEADERS`` of an answer (admitted or refused)."""
    remaining = max(0, math.floor(bucket.tokens))
    reset = reset_s(bucket)
    window = max(1, math.ceil(bucket.capacity / bucket.rate_per_s))
    return {
        "X-RateLimit-Limit": str(bucket.capacity),
        "X-RateLimit-Remaining": str(remaining),
        "X-RateLimit-Reset": str(reset),
        "RateLimit-Policy": f'"{POLICY}";q={bucket.capacity};w={window}',
        "RateLimit": f'"{POLICY}";r={remaining};t={reset}',
    }


def rate_refusal(tenant: Tenant, bucket: Bucket) -> str:
    """The message of a ``rate_limited`` answer."""
    return (
        f"key {tenant.name} is past its rate of {tenant.rate_per_s:g} requests/s "
        f"(burst {bucket.capacity}); retry in {retry_after_s(bucket)} s"
    )


def fair_share(live_workers: int, per_worker: int) -> int:
    """Jobs one key may have on a pool's streams: enough to keep every live worker busy on its own."""
    return max(1, live_workers * per_worker)


def pool_cap(queue_max: int, queue_share: float) -> int:
    """Jobs one key may hold in a pool (on its streams and parked)."""
    return max(1, math.floor(queue_max * queue_share))


def quota(
    tenant: Tenant | None,
    *,
    fair: bool,
    live_workers: int,
    per_worker: int,
    queue_max: int,
    queue_share: float,
) -> Quota | None:
    """What the key may hold when its job is submitted; None when nothing is counted for it.

    Without ``fair`` (no key ring) only a concurrency limit counts, and a key without one is
    submitted as an anonymous job is.
    """
    if tenant is None:
        return None
    if not fair:
        return Quota(tenant.concurrency, 0, 0) if tenant.concurrency else None
    return Quota(tenant.concurrency, fair_share(live_workers, per_worker), pool_cap(queue_max, queue_share))


def job_time_s(inference_s: list[float | None], *, cap_s: float = 60.0) -> float:
    """Seconds until one of a key's jobs is likely done: the retry of ``concurrency_limited``."""
    times = [t for t in inference_s if t]
    per_job = sum(times) / len(times) if times else 1.0
    return float(min(cap_s, max(1.0, math.ceil(per_job))))
