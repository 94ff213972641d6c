"""Make a job's adapters active on the warm base: lorafarm's engine, or diffusers' stock path.

The stock path is the reference system's behaviour (load + fuse, unfuse + unload on every
change), kept behind ``stock_swap`` so benchmarks compare both in the same farm.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from common.schemas import AdapterRef, adapter_set_key
from worker.modes import CostTracker, Mode, choose_mode, expected_jobs
from worker.settings import WorkerSettings
from worker.store import AdapterStore, fetch_file

SwapMode = Literal["fused", "unfused", "auto"]


@dataclass(frozen=True)
class SwapOutcome:
    changed: bool
    seconds: float
    mode: Mode = "fused"


@dataclass(frozen=True)
class Outlook:
    """What the worker knows of the work ahead: the job's steps, the adapter set keys queued after it."""

    steps: int = 1
    upcoming: Sequence[str | None] = ()


class Swapper(Protocol):
    def swap(self, refs: list[AdapterRef], outlook: Outlook | None = None) -> SwapOutcome: ...

    def active(self) -> list[str]: ...

    def active_refs(self) -> list[AdapterRef]: ...

    def prefetch(self, ref: AdapterRef) -> None: ...

    def cached(self) -> list[str]: ...

    def fetch_s(self) -> float | None: ...

    def pristine(self) -> dict[str, int]: ...

    def leave_device(self) -> None: ...


class _Tracked:
    """What both swappers share: which adapters (and scales) are active, and skipping a no-op swap."""

    def __init__(self) -> None:
        self._refs: list[AdapterRef] = []
        self._mode: Mode = "fused"

    def swap(self, refs: list[AdapterRef], outlook: Outlook | None = None) -> SwapOutcome:
        if adapter_set_key(refs) == adapter_set_key(self._refs):
            return SwapOutcome(False, 0.0, self._mode)
        start = time.perf_counter()
        try:
            self._mode = self._switch(refs, outlook or Outlook())
        except BaseException:
            self._resync()
            raise
        self._refs = list(refs)
        return SwapOutcome(True, time.perf_counter() - start, self._mode)

    def _switch(self, refs: list[AdapterRef], outlook: Outlook) -> Mode:
        raise NotImplementedError

    def _resync(self) -> None:
        """After a failed switch: forget adapters the base no longer carries."""

    def active(self) -> list[str]:
        return [ref.key for ref in self._refs]

    def active_refs(self) -> list[AdapterRef]:
        return list(self._refs)


class EngineSwapper(_Tracked):
    """lorafarm: parsed adapters from the store, applied in one pass from pristine copies.

    ``mode`` fixes fused or unfused; ``auto`` asks ``choose_mode`` with the costs measured so far
    (``costs``, seeded by ``worker.calibrate``) and the run of queued jobs wanting the same set.
    """

    def __init__(
        self, engine: Any, store: AdapterStore, *, mode: SwapMode = "fused", costs: CostTracker | None = None
    ) -> None:
        super().__init__()
        self.engine = engine
        self.store = store
        self.mode = mode
        self.costs = costs or CostTracker()

    def _switch(self, refs: list[AdapterRef], outlook: Outlook) -> Mode:
        parsed = [(self.store.get(ref), ref.scale) for ref in refs]
        if not parsed:
            self.engine.restore()
            return "fused"
        mode = self.choose(refs, outlook)
        was = self.engine.active.mode if self.engine.active.adapters else None
        report = self.engine.apply(parsed, mode)
        # A mode change (asked, or forced by a full pristine budget) also pays the other mode's
        # removal: not a clean sample.
        if was in (None, mode) and report.mode == mode:
            self.costs.observe("fused_apply_s" if mode == "fused" else "unfused_swap_s", report.seconds)
        return report.mode

    def _resync(self) -> None:
        if not self.engine.active.adapters:  # the engine fell back to the plain base
            self._refs, self._mode = [], "fused"

    def choose(self, refs: list[AdapterRef], outlook: Outlook) -> Mode:
        if self.mode != "auto":
            return self.mode
        fused_now = bool(self.engine.active.adapters) and self.engine.active.mode == "fused"
        jobs = expected_jobs(adapter_set_key(refs), outlook.upcoming)
        return choose_mode(self.costs.costs(), jobs=jobs, steps=outlook.steps, fused_now=fused_now).mode

    def prefetch(self, ref: AdapterRef) -> None:
        self.store.prefetch(ref)

    def cached(self) -> list[str]:
        return self.store.holds()

    def fetch_s(self) -> float | None:
        return self.store.fetch_s

    def pristine(self) -> dict[str, int]:
        return self.engine.pristine_tiers()

    def leave_device(self) -> None:
        """The base leaves the device (a multi-base worker switches): restore it bit-exact, drop
        the pristine copies on the device, and keep parsed adapters in host memory only."""
        self.swap([])
        self.engine.leave_device()
        self.store.to_host()


class StockSwapper(_Tracked):
    """The reference system: diffusers load_lora_weights + fuse_lora, then unfuse_lora + unload."""

    def __init__(self, pipe: Any, settings: WorkerSettings) -> None:
        super().__init__()
        self.pipe = pipe
        self.settings = settings

    def _switch(self, refs: list[AdapterRef], outlook: Outlook) -> Mode:
        if self._refs:
            self.pipe.unfuse_lora()
            self.pipe.unload_lora_weights()
            self._refs = []
        if refs:
            names = [f"a{i}" for i in range(len(refs))]
            for name, ref in zip(names, refs, strict=True):
                path = fetch_file(self.settings, ref, ref.weight_name)
                self.pipe.load_lora_weights(str(path.parent), weight_name=path.name, adapter_name=name)
            self.pipe.set_adapters(names, [ref.scale for ref in refs])
            self.pipe.fuse_lora(adapter_names=names)
        return "fused"

    def prefetch(self, ref: AdapterRef) -> None:
        return

    def cached(self) -> list[str]:
        return []

    def fetch_s(self) -> float | None:
        return None

    def pristine(self) -> dict[str, int]:
        return {"device": 0, "host": 0}  # diffusers' own fuse keeps no copies (and drifts)

    def leave_device(self) -> None:
        self.swap([])
