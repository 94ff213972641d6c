"""Placement: which worker of a pool gets a job.

Pure decisions over plain data: no Redis, no clock, no I/O. The router turns heartbeats into
:class:`WorkerView` values, calls :func:`choose_worker` and carries the answer out (the order a
worker serves its own queue in is the worker's: ``worker/backlog.py``). ``bench/simulate.py``
drives the same functions in simulated time.

An adapter set is named by its key (``common.schemas.adapter_set_key``: ``repo@sha`` terms with
their scales); ``None`` is the plain base, treated as the empty adapter.

A worker may serve several bases (pools) on one device: in a pool's view, its base is *active*
(on the device), *warm* (pinned host memory: a switch is one copy) or *cold* (on disk: a switch
reads it again), and the jobs it holds for its other bases share its device. What it must do
for a job is then nothing, an adapter swap, a base switch, or a cold load, each at the cost its
heartbeat measured; a single-base worker's base is always active, and nothing changes for it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

# Holder tiers, best first: how close a worker is to serving an adapter without a swap.
TAIL = 0  # the adapter is what the worker will have fused once its queue is served
ON_DEVICE = 1  # fused now, or a job for it is queued there (the worker groups such jobs)
IN_HOST = 2  # parsed in host memory: a swap costs only the apply
ABSENT = 3  # must be downloaded and parsed first

#: Where the pool's base is on a worker: on the device, in pinned host memory, or on disk only.
BaseTier = Literal["active", "warm", "cold"]


@dataclass(frozen=True)
class WorkerView:
    """What the router knows of one worker, from its latest heartbeat (times in seconds)."""

    worker_id: str
    last_seen: float
    #: False once the worker said it is starting, draining or gone.
    alive: bool = True
    #: Adapter key fused into the base now; ``None`` is the plain base.
    fused: str | None = None
    #: Adapter keys parsed and held in host memory.
    cached: frozenset[str] = frozenset()
    #: Adapter keys of the jobs waiting on this worker, oldest first (the job in flight excluded).
    queued: tuple[str | None, ...] = ()
    #: A job is in flight.
    busy: bool = False
    #: Expected seconds left of the job in flight.
    remaining_s: float = 0.0
    #: Measured seconds to apply an adapter already in host memory.
    swap_s: float | None = None
    #: Measured seconds to download and parse an adapter not in host memory.
    fetch_s: float | None = None
    #: Measured seconds of one generation.
    inference_s: float | None = None
    #: When the adapter fused now was applied.
    last_swap_at: float | None = None
    #: Where this pool's base is on the worker (a single-base worker's is always active).
    base: BaseTier = "active"
    #: Measured seconds to make the base active from pinned host memory, and from disk.
    warm_switch_s: float | None = None
    cold_switch_s: float | None = None
    #: Jobs waiting on this worker for its other bases (they share its device).
    other_queued: int = 0


@dataclass(frozen=True)
class PlacementRules:
    """Knobs of :func:`choose_worker`; the defaults suit a worker with a fast swap."""

    #: False: no affinity, every job goes to the shared pool stream (the reference behaviour).
    affinity: bool = True
    #: Jobs on one worker (in flight plus waiting) at which it counts as overloaded.
    max_queue: int = 2
    #: Expected wait before a new job would start, past which a worker counts as overloaded.
    max_wait_s: float = 1.0
    #: Most workers one adapter may occupy (fused or queued) before jobs queue on its holders.
    max_holders: int = 2
    #: When every candidate is overloaded, send the job to the shared pool stream (``None``) rather
    #: than queue it on a worker: own queues stay short, and the shared stream is what autoscalers
    #: measure and what any worker that frees up drains first.
    spill_to_shared: bool = True
    #: Heartbeat age past which a worker is presumed dead.
    stale_after_s: float = 10.0
    #: A worker that swapped less than this ago is steered away from swapping again...
    min_residency_s: float = 30.0
    #: ...by this many seconds added to its expected finish (thrash damping).
    damping_s: float = 1.0
    #: Used where a heartbeat carries no measurement yet.
    default_swap_s: float = 0.5
    default_fetch_s: float = 1.0
    default_inference_s: float = 10.0
    #: Base switches of a heartbeat without measurements (an SDXL pipeline over PCIe; a disk read).
    default_warm_switch_s: float = 0.5
    default_cold_switch_s: float = 10.0


def is_live(worker: WorkerView, rules: PlacementRules, now: float) -> bool:
    """The worker announced itself ready and its heartbeat is fresh."""
    return worker.alive and now - worker.last_seen <= rules.stale_after_s


def holder_tier(worker: WorkerView, adapter: str | None) -> int:
    """How close ``worker`` is to serving ``adapter``: ``TAIL`` (best) to ``ABSENT``.

    On a worker whose base is not active, nothing is fused for this pool: at best, jobs for the
    adapter are queued there (the worker serves them together, after one base switch).
    """
    active = worker.base == "active"
    if (worker.queued and worker.queued[-1] == adapter) or (not worker.queued and active and worker.fused == adapter):
        return TAIL
    if (active and worker.fused == adapter) or adapter in worker.queued:
        return ON_DEVICE
    if adapter is None or adapter in worker.cached:
        return IN_HOST
    return ABSENT


def base_switch_s(worker: WorkerView, rules: PlacementRules) -> float:
    """Seconds the worker needs to make this pool's base active: 0 when it is, else its warm or cold switch."""
    if worker.base == "active":
        return 0.0
    if worker.base == "warm":
        return _or(worker.warm_switch_s, rules.default_warm_switch_s)
    return _or(worker.cold_switch_s, rules.default_cold_switch_s)


def expected_wait_s(worker: WorkerView, rules: PlacementRules) -> float:
    """Seconds before a job appended to ``worker``'s queue would start.

    When the base is not active, the jobs the worker holds for its active base go first (it
    serves its backlog grouped by base), then one base switch.
    """
    inference = _or(worker.inference_s, rules.default_inference_s)
    swap = _or(worker.swap_s, rules.default_swap_s)
    wait = worker.remaining_s if worker.busy else 0.0
    previous = worker.fused
    if worker.base != "active":
        wait += worker.other_queued * inference
        previous = None  # a base comes back plain
        if worker.queued:
            wait += base_switch_s(worker, rules)
    for adapter in worker.queued:
        wait += inference + (swap if adapter != previous else 0.0)
        previous = adapter
    return wait


def is_overloaded(worker: WorkerView, rules: PlacementRules) -> bool:
    """Too many jobs on the worker (for any of its bases), or a new one would wait too long."""
    depth = int(worker.busy) + len(worker.queued) + worker.other_queued
    return depth >= rules.max_queue or expected_wait_s(worker, rules) > rules.max_wait_s


def expected_finish_s(worker: WorkerView, adapter: str | None, rules: PlacementRules, now: float) -> float:
    """Seconds until a job for ``adapter`` appended to ``worker`` would finish, plus damping.

    A download overlaps the jobs ahead (prefetch), so only the part longer than the wait counts.
    A base that is not active costs its switch (once, with the queue's jobs if any are there);
    it comes back plain, so the plain base then needs no swap.
    """
    wait = expected_wait_s(worker, rules)
    tier = holder_tier(worker, adapter)
    switch = 0.0
    plain_after_switch = False
    if worker.base != "active" and not worker.queued:
        switch = base_switch_s(worker, rules)
        plain_after_switch = adapter is None
    swap = 0.0
    if tier != TAIL and not plain_after_switch:
        swap = _or(worker.swap_s, rules.default_swap_s)
        if tier == ABSENT:
            swap += max(0.0, _or(worker.fetch_s, rules.default_fetch_s) - wait)
        if _swapped_recently(worker, rules, now):
            swap += rules.damping_s
    return wait + switch + swap + _or(worker.inference_s, rules.default_inference_s)


def choose_worker(adapter: str | None, workers: Iterable[WorkerView], rules: PlacementRules, now: float) -> str | None:
    """The worker a job for ``adapter`` should go to; ``None``: the shared pool stream.

    A holder (adapter fused or queued there) that is not overloaded comes first; else, while
    fewer than ``max_holders`` hold it, the worker that would finish it soonest; else the
    least-loaded holder, unless a worker sits idle (an idle worker beats any wait). Ties go
    to the smaller worker id. With ``spill_to_shared``, a choice that is overloaded becomes
    ``None``: the job waits on the shared stream for the first worker that frees up.
    """
    live = [w for w in workers if is_live(w, rules, now)]
    if not live or not rules.affinity:
        return None
    chosen = _choose(adapter, live, rules, now)
    if rules.spill_to_shared and is_overloaded(chosen, rules):
        return None
    return chosen.worker_id


def _choose(adapter: str | None, live: list[WorkerView], rules: PlacementRules, now: float) -> WorkerView:
    holders = [w for w in live if holder_tier(w, adapter) <= ON_DEVICE]
    ready = [w for w in holders if not is_overloaded(w, rules)]
    if ready:
        return min(ready, key=lambda w: _rank(w, adapter, rules, now, tier_first=True))
    if holders and len(holders) >= rules.max_holders and not any(_is_idle(w) for w in live):
        return min(holders, key=lambda w: _rank(w, adapter, rules, now))
    held = {w.worker_id for w in holders}
    fresh = [w for w in live if w.worker_id not in held and not is_overloaded(w, rules)]
    return min(fresh or live, key=lambda w: _rank(w, adapter, rules, now))


def _rank(
    worker: WorkerView, adapter: str | None, rules: PlacementRules, now: float, *, tier_first: bool = False
) -> tuple[float, float, str]:
    """Sort key: expected finish and holder tier (in either order), then worker id."""
    # Rounded so that float noise does not beat the deterministic tie-break on worker id.
    finish = round(expected_finish_s(worker, adapter, rules, now), 6)
    tier = float(holder_tier(worker, adapter))
    return (tier, finish, worker.worker_id) if tier_first else (finish, tier, worker.worker_id)


def _is_idle(worker: WorkerView) -> bool:
    return not worker.busy and not worker.queued and not worker.other_queued


def _swapped_recently(worker: WorkerView, rules: PlacementRules, now: float) -> bool:
    if worker.queued or worker.last_swap_at is None:
        return False
    return now - worker.last_swap_at < rules.min_residency_s


def _or(value: float | None, default: float) -> float:
    return default if value is None else value
