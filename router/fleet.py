"""From worker heartbeats to a placement: the router's view of a pool. Pure, no I/O.

Heartbeats arrive every couple of seconds; jobs this router placed since a worker's last
heartbeat are added to that worker's queue so a burst does not pile on one worker, unless the
router has seen them finish already (a fast job can be done before the next heartbeat). A worker
serving several pools has one heartbeat in each: the jobs placed on it in its other pools count
as held for its other bases.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

from common.schemas import AdapterRef, WorkerState, adapter_set_key
from router.placement import PlacementRules, WorkerView, choose_worker


def view_of(state: WorkerState, placed: Sequence[str | None], placed_elsewhere: int, now: float) -> WorkerView:
    """A worker's heartbeat as placement sees it, plus the jobs placed on it since (in this pool,
    and ``placed_elsewhere`` in its other pools)."""
    remaining = 0.0
    if state.current_job and state.current_started_at is not None and state.inference_s:
        remaining = max(0.0, state.inference_s - (now - state.current_started_at))
    return WorkerView(
        worker_id=state.worker_id,
        last_seen=state.last_seen,
        alive=state.status in ("ready", "busy"),
        fused=state.fused_set,
        cached=frozenset(state.cached),
        queued=(*state.queued, *placed),
        busy=state.current_job is not None,
        remaining_s=remaining,
        swap_s=state.swap_s,
        fetch_s=state.fetch_s,
        inference_s=state.inference_s,
        last_swap_at=state.last_swap_at,
        base=state.base_tier,
        warm_switch_s=state.warm_switch_s,
        cold_switch_s=state.cold_switch_s,
        other_queued=state.other_queued + placed_elsewhere,
    )


class Placed(NamedTuple):
    at: float
    adapter: str | None
    job_id: str
    pool: str = ""


@dataclass
class Fleet:
    """Placement over heartbeats, remembering what this router placed since each heartbeat."""

    rules: PlacementRules
    #: worker id -> jobs placed there, dropped once a newer heartbeat includes them or they finish.
    _placed: dict[str, list[Placed]] = field(default_factory=dict)

    def place(
        self, adapters: Sequence[AdapterRef], workers: Sequence[WorkerState], now: float, job_id: str
    ) -> str | None:
        """The worker the job should go to (``None``: the pool's shared stream).

        Overloaded workers are not queued on (``PlacementRules.spill_to_shared``): the job goes to the
        shared stream, which any worker drains and the autoscaler measures (KEDA reads it).
        """
        key = adapter_set_key(adapters)
        views = {w.worker_id: view_of(w, *self._since(w), now) for w in workers}
        chosen = choose_worker(key, views.values(), self.rules, now)
        if chosen is None:
            return None
        pool = next(w.pool for w in workers if w.worker_id == chosen)
        self._placed.setdefault(chosen, []).append(Placed(now, key, job_id, pool))
        return chosen

    def finished(self, job_id: str) -> None:
        """The job's result arrived: it no longer waits on its worker, heartbeat or not."""
        for worker_id, placed in list(self._placed.items()):
            kept = [p for p in placed if p.job_id != job_id]
            if kept:
                self._placed[worker_id] = kept
            else:
                del self._placed[worker_id]

    def _since(self, state: WorkerState) -> tuple[list[str | None], int]:
        """Adapters placed on the worker in this pool since its heartbeat, and how many jobs in
        its other pools (their own heartbeats are the ones that drop those)."""
        kept = [p for p in self._placed.get(state.worker_id, []) if p.pool != state.pool or p.at > state.last_seen]
        if kept:
            self._placed[state.worker_id] = kept
        else:
            self._placed.pop(state.worker_id, None)
        mine = [p.adapter for p in kept if p.pool == state.pool]
        return mine, sum(1 for p in kept if p.pool != state.pool and p.at > state.last_seen)
