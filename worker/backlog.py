"""The order a worker serves the jobs waiting on it. Pure: no Redis, no clock, no I/O.

Jobs for the adapter set fused at each step go first, so that one swap serves them all; then, on
a worker serving several bases, jobs for the same base (an adapter swap is cheaper than a base
switch); an age bound keeps the odd job from starving behind a stream of hot ones. ``worker.loop`` calls
:func:`order_queue` before it takes its next job (and for its prefetch and swap outlook);
``bench/simulate.py`` drives the same function in simulated time.

An adapter set is named by its key (``common.schemas.adapter_set_key``); ``None`` is the plain base.
A base is named by its pool (its repo id); ``None`` where the worker serves one base only.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import NamedTuple


class QueuedJob(NamedTuple):
    """A job waiting on a worker: its id, adapter key (``None``: the base), enqueue time, and base."""

    job_id: str
    adapter: str | None
    enqueued_at: float
    base: str | None = None


def order_queue(
    current_adapter: str | None,
    queued: Iterable[tuple[str, str | None, float] | tuple[str, str | None, float, str | None]],
    now: float,
    max_age_s: float,
    service_s: float = 0.0,
    current_base: str | None = None,
) -> list[QueuedJob]:
    """The order a worker should serve its waiting jobs in.

    Jobs for the adapter fused at each step (on the base in use, ``current_base``) go first, so
    one swap serves them all; then jobs for that base; but once the oldest job has waited
    ``max_age_s``, jobs are served oldest first. ``service_s`` advances the plan's clock per job
    so that the bound holds along the whole plan, not only its head.
    """
    pending = sorted((QueuedJob(*job) for job in queued), key=lambda j: (j.enqueued_at, j.job_id))
    order: list[QueuedJob] = []
    base, adapter, clock = current_base, current_adapter, now
    while pending:
        job = _next_job(base, adapter, pending, clock, max_age_s)
        pending.remove(job)
        order.append(job)
        base, adapter, clock = job.base, job.adapter, clock + service_s
    return order


def _next_job(
    base: str | None, adapter: str | None, pending: list[QueuedJob], now: float, max_age_s: float
) -> QueuedJob:
    oldest = pending[0]
    if now - oldest.enqueued_at >= max_age_s:
        return oldest
    same_base = [job for job in pending if job.base == base]
    return next((job for job in same_base if job.adapter == adapter), same_base[0] if same_base else oldest)
