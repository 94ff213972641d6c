"""From worker heartbeats to a placement: the router's view of a pool. Pure, no I/O.

Heartbeats arrive every couple of seconds; jobs this router placed since a worker's last
heartbeat are added to that worker's queue so a burst does not pile on one worker.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from common.schemas import AdapterRef, WorkerState, adapters_key
from router.placement import Policy, WorkerView, adapter_key, choose_worker


def view_of(state: WorkerState, placed: Sequence[str | None], now: float) -> WorkerView:
    """A worker's heartbeat as placement sees it, plus the jobs placed on it since."""
    remaining = 0.0
    if state.current_job and state.current_started_at is not None and state.inference_s:
        remaining = max(0.0, state.inference_s - (now - state.current_started_at))
    return WorkerView(
        worker_id=state.worker_id,
        last_seen=state.last_seen,
        alive=state.status in ("ready", "busy"),
        fused=adapter_key(state.fused),
        cached=frozenset(state.cached),
        queued=(*state.queued, *placed),
        busy=state.current_job is not None,
        remaining_s=remaining,
        swap_s=state.swap_s,
        fetch_s=state.fetch_s,
        inference_s=state.inference_s,
        last_swap_at=state.last_swap_at,
    )


@dataclass
class Fleet:
    """Placement over heartbeats, remembering what this router placed since each heartbeat."""

    policy: Policy
    #: worker id -> [(time placed, adapter key)], dropped once a newer heartbeat includes them.
    _placed: dict[str, list[tuple[float, str | None]]] = field(default_factory=dict)

    def place(self, adapters: Sequence[AdapterRef], workers: Sequence[WorkerState], now: float) -> str | None:
        """The worker the job should go to (``None``: the pool's shared stream).

        Overloaded workers are not queued on (``Policy.spill_to_shared``): the job goes to the
        shared stream, which any worker drains and the autoscaler measures (KEDA reads it).
        """
        key = adapters_key(list(adapters))
        views = {w.worker_id: view_of(w, self._since(w), now) for w in workers}
        chosen = choose_worker(key, views.values(), self.policy, now)
        if chosen is None:
            return None
        self._placed.setdefault(chosen, []).append((now, key))
        return chosen

    def _since(self, state: WorkerState) -> list[str | None]:
        placed = [(t, k) for t, k in self._placed.get(state.worker_id, []) if t > state.last_seen]
        if placed:
            self._placed[state.worker_id] = placed
        else:
            self._placed.pop(state.worker_id, None)
        return [k for _, k in placed]
