"""Make a job's adapters active on the warm base: lorafarm's engine, or diffusers' stock path.

The stock path is the reference system's behaviour (load + fuse, unfuse + unload on every
change), kept behind ``stock_swap`` so benchmarks compare both in the same farm.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Protocol

from common.schemas import AdapterRef
from worker.settings import WorkerSettings
from worker.store import AdapterStore, fetch_file


@dataclass(frozen=True)
class SwapOutcome:
    changed: bool
    seconds: float


class Swapper(Protocol):
    def swap(self, refs: list[AdapterRef]) -> SwapOutcome: ...

    def active(self) -> list[str]: ...

    def active_refs(self) -> list[AdapterRef]: ...

    def prefetch(self, ref: AdapterRef) -> None: ...

    def cached(self) -> list[str]: ...

    def fetch_s(self) -> float | None: ...


class _Tracked:
    """What both swappers share: which adapters (and scales) are active, and skipping a no-op swap."""

    def __init__(self) -> None:
        self._refs: list[AdapterRef] = []

    def swap(self, refs: list[AdapterRef]) -> SwapOutcome:
        if [(r.key, r.scale) for r in refs] == [(r.key, r.scale) for r in self._refs]:
            return SwapOutcome(False, 0.0)
        start = time.perf_counter()
        self._switch(refs)
        self._refs = list(refs)
        return SwapOutcome(True, time.perf_counter() - start)

    def _switch(self, refs: list[AdapterRef]) -> None:
        raise NotImplementedError

    def active(self) -> list[str]:
        return [ref.key for ref in self._refs]

    def active_refs(self) -> list[AdapterRef]:
        return list(self._refs)


class EngineSwapper(_Tracked):
    """lorafarm: parsed adapters from the store, fused in one pass from pristine copies."""

    def __init__(self, engine: Any, store: AdapterStore) -> None:
        super().__init__()
        self.engine = engine
        self.store = store

    def _switch(self, refs: list[AdapterRef]) -> None:
        parsed = [(self.store.get(ref), ref.scale) for ref in refs]
        if parsed:
            self.engine.apply(parsed)
        else:
            self.engine.restore()

    def prefetch(self, ref: AdapterRef) -> None:
        self.store.prefetch(ref)

    def cached(self) -> list[str]:
        return self.store.holds()

    def fetch_s(self) -> float | None:
        return self.store.fetch_s


class StockSwapper(_Tracked):
    """The reference system: diffusers load_lora_weights + fuse_lora, then unfuse_lora + unload."""

    def __init__(self, pipe: Any, settings: WorkerSettings) -> None:
        super().__init__()
        self.pipe = pipe
        self.settings = settings

    def _switch(self, refs: list[AdapterRef]) -> None:
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

    def prefetch(self, ref: AdapterRef) -> None:
        return

    def cached(self) -> list[str]:
        return []

    def fetch_s(self) -> float | None:
        return None
