"""Pristine copies of base weights, taken the first time an adapter touches them, in two budgeted tiers.

Restoring is a copy from here, never a subtraction of the delta (which drifts in fp16/bf16).
A copy lives beside the weight on the device (fastest) while the device keeps ``headroom_bytes``
free, else in (pinned) host memory up to ``host_bytes``. A copy is only needed while its weight
is fused: one whose weight is pristine again may be dropped to make room (least recently used
first), which costs a fresh copy on its next touch. Flux LoRAs often touch most linears, so the
copies can approach the size of the transformer itself (23.8 GB in bf16 for FLUX.1-dev).
When neither tier has room, ``keep`` raises :class:`PristineFull` and the engine applies that
adapter set unfused, which needs no copy.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Container
from typing import Literal

import torch

PristinePolicy = Literal["device", "host", "auto"]


class PristineFull(RuntimeError):
    """Neither the device headroom nor the host budget leaves room for one more pristine copy."""


class PristineStore:
    """Copies of untouched weights, by target name, least recently used first."""

    def __init__(
        self, policy: PristinePolicy = "auto", *, headroom_bytes: int = 2 << 30, host_bytes: int | None = None
    ) -> None:
        if policy not in ("device", "host", "auto"):
            raise ValueError(f"pristine policy must be device, host or auto, not {policy!r}")
        self.policy = policy
        self.headroom_bytes = headroom_bytes
        self.host_bytes = host_bytes
        self._copies: OrderedDict[str, torch.Tensor] = OrderedDict()

    @property
    def nbytes(self) -> int:
        """Bytes held by all copies."""
        return sum(t.nbytes for t in self._copies.values())

    @property
    def device_nbytes(self) -> int:
        """Bytes held on an accelerator."""
        return sum(t.nbytes for t in self._copies.values() if t.device.type != "cpu")

    @property
    def host_nbytes(self) -> int:
        """Bytes held in host memory (pinned on a GPU machine)."""
        return self.nbytes - self.device_nbytes

    def __contains__(self, target: str) -> bool:
        return target in self._copies

    def keep(self, target: str, weight: torch.Tensor, *, protect: Container[str] = ()) -> torch.Tensor:
        """The pristine copy of ``weight``; taken now if this is its first touch (it must be pristine).

        To make room, copies of targets outside ``protect`` (whose weights are pristine now) may be
        dropped. Raises :class:`PristineFull` when there is still no room.
        """
        copy = self._copies.get(target)
        if copy is None:
            copy = self._copy(weight.detach(), protect)
            self._copies[target] = copy
        self._copies.move_to_end(target)
        return copy

    def restore(self, target: str, weight: torch.Tensor) -> None:
        """Write the pristine copy back into ``weight``."""
        weight.copy_(self._copies[target], non_blocking=True)

    def drop_device(self, protect: Container[str] = ()) -> int:
        """Drop the copies held on an accelerator (of targets outside ``protect``): the base they
        belong to leaves the device. Returns the bytes freed."""
        gone = [t for t, c in self._copies.items() if c.device.type != "cpu" and t not in protect]
        return sum(self._copies.pop(t).nbytes for t in gone)

    def _copy(self, data: torch.Tensor, protect: Container[str]) -> torch.Tensor:
        on_gpu = data.device.type == "cuda"
        if on_gpu and self.policy == "device":
            return data.clone()
        if on_gpu and self.policy == "auto":
            free, _ = torch.cuda.mem_get_info(data.device)
            if free - data.nbytes > self.headroom_bytes:
                return data.clone()
        self._make_host_room(data.nbytes, protect)
        host = torch.empty(data.shape, dtype=data.dtype, pin_memory=on_gpu)
        host.copy_(data)
        return host

    def _make_host_room(self, nbytes: int, protect: Container[str]) -> None:
        if self.host_bytes is None:
            return
        held = self.host_nbytes
        for target in [t for t, c in self._copies.items() if c.device.type == "cpu" and t not in protect]:
            if held + nbytes <= self.host_bytes:
                break
            held -= self._copies.pop(target).nbytes
        if held + nbytes > self.host_bytes:
            raise PristineFull(f"pristine copies need {held + nbytes} host bytes, over the budget of {self.host_bytes}")
