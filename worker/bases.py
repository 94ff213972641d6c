"""The bases one worker serves, and their weights moved between tiers as jobs need them.

Per base (:class:`BaseSlot`): its pool's queue, the pipeline, its swapper (engine, pristine
copies and host adapter cache are per base), the mover of its weights, its own timings.
:meth:`Bases.activate` makes a job's base active: ``worker.tiers`` plans the moves under the
byte budgets, ``worker.residency`` carries them out, and a base leaving the device is first
restored to bit-exact through its swapper (so the swapper knows nothing is fused any more).
A single-base worker is the same with one slot: its base is added once and never moves again.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from worker.families import PipelineFamily, pipeline_family
from worker.queue import WorkerQueue
from worker.residency import BaseWeights
from worker.settings import WorkerSettings
from worker.swapper import Swapper
from worker.tiers import Move, Tiers

if TYPE_CHECKING:
    from worker.compiled import CompiledDenoiser

log = logging.getLogger(__name__)

SwitchKind = Literal["none", "warm", "cold"]


@dataclass(eq=False)
class BaseSlot:
    """One base of the worker and everything that serves its pool."""

    pool: str
    settings: WorkerSettings
    queue: WorkerQueue
    pipe: Any
    swapper: Swapper
    weights: BaseWeights
    family: PipelineFamily = field(init=False)
    #: The base's compiled denoiser (``LORAFARM_COMPILE``), warmed up before the worker announces itself.
    compiled: CompiledDenoiser | None = None
    #: Smoothed seconds of this base's adapter swaps and generations; None until measured.
    swap_s: float | None = None
    inference_s: float | None = None
    last_swap_at: float | None = None
    jobs_done: int = 0

    def __post_init__(self) -> None:
        self.family = pipeline_family(type(self.pipe))

    @property
    def default_steps(self) -> int:
        """Steps of a job that names none: the setting, else the family's default."""
        return self.settings.default_steps or self.family.facts.default_steps


@dataclass(frozen=True)
class Switch:
    """What making a base active took: nothing, a warm switch (host copy) or a cold load (disk)."""

    kind: SwitchKind
    seconds: float = 0.0


class Bases:
    """The worker's bases by pool, and where their weights are (see the module docstring).

    ``on_switch(pool, kind, seconds)`` is told of every warm or cold switch (the metrics).
    """

    def __init__(self, tiers: Tiers, on_switch: Callable[[str, str, float], None] | None = None) -> None:
        self.tiers = tiers
        self._slots: dict[str, BaseSlot] = {}
        self._on_switch = on_switch
        #: The base of the last job (or the last added): the backlog groups after it.
        self.current: str | None = None

    def add(self, slot: BaseSlot) -> None:
        """Take a base just loaded into host memory, and make it active (others may move to make room).

        Raises ``worker.tiers.BaseDoesNotFit`` when the budgets cannot hold it.
        """
        moves = self.tiers.add(slot.pool, slot.weights.nbytes, disk_bytes=slot.weights.disk_bytes)
        self._slots[slot.pool] = slot
        start = time.perf_counter()
        self._carry_out(moves)
        # Its first host-to-device copy is a warm switch's cost (evictions of the others included).
        self.tiers.observe(slot.pool, "warm", time.perf_counter() - start)
        self.current = slot.pool

    def activate(self, pool: str) -> Switch:
        """Make ``pool``'s base active for a job; a base already on the device costs nothing."""
        self.current = pool
        tier = self.tiers.tier(pool)
        if tier == "active":
            return Switch("none")
        start = time.perf_counter()
        self._carry_out(self.tiers.activate(pool))
        seconds = time.perf_counter() - start
        kind: Literal["warm", "cold"] = "warm" if tier == "warm" else "cold"
        self.tiers.observe(pool, kind, seconds)
        if self._on_switch is not None:
            self._on_switch(pool, kind, seconds)
        log.info("event=base_switch base=%s kind=%s seconds=%.3f", pool, kind, seconds)
        return Switch(kind, seconds)

    def _carry_out(self, moves: list[Move]) -> None:
        for move in moves:
            slot = self._slots[move.base]
            if move.kind in ("to_host", "free_device", "to_disk"):
                slot.swapper.leave_device()  # exact base, no adapter held on the device
            if move.kind == "load_cold":
                slot.weights.load_cold(keep_host=move.keep_host)
            else:
                getattr(slot.weights, move.kind)()

    # --- what the loop and the heartbeat read -------------------------------------------

    def __getitem__(self, pool: str) -> BaseSlot:
        return self._slots[pool]

    def __iter__(self) -> Iterator[BaseSlot]:
        return iter(list(self._slots.values()))

    def __len__(self) -> int:
        return len(self._slots)

    @property
    def pools(self) -> list[str]:
        return list(self._slots)

    @property
    def queues(self) -> list[WorkerQueue]:
        return [slot.queue for slot in self._slots.values()]
