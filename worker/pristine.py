"""Pristine copies of base weights, taken the first time an adapter touches them.

Restoring is a copy from here, never a subtraction of the delta (which drifts in fp16/bf16).
Copies live beside the weight (fastest) when the device has room, else in pinned host memory.
"""

from __future__ import annotations

from typing import Literal

import torch

PristinePolicy = Literal["device", "host", "auto"]


class PristineStore:
    """Copies of untouched weights, by target name."""

    def __init__(self, policy: PristinePolicy = "auto", *, headroom_bytes: int = 2 << 30) -> None:
        if policy not in ("device", "host", "auto"):
            raise ValueError(f"pristine policy must be device, host or auto, not {policy!r}")
        self.policy = policy
        self.headroom_bytes = headroom_bytes
        self._copies: dict[str, torch.Tensor] = {}

    @property
    def nbytes(self) -> int:
        """Bytes held by all copies."""
        return sum(t.nbytes for t in self._copies.values())

    @property
    def device_nbytes(self) -> int:
        """Bytes held on an accelerator (the rest is host memory)."""
        return sum(t.nbytes for t in self._copies.values() if t.device.type != "cpu")

    def __contains__(self, target: str) -> bool:
        return target in self._copies

    def keep(self, target: str, weight: torch.Tensor) -> torch.Tensor:
        """The pristine copy of ``weight``; taken now if this is its first touch (it must be pristine)."""
        copy = self._copies.get(target)
        if copy is None:
            copy = self._copy(weight)
            self._copies[target] = copy
        return copy

    def restore(self, target: str, weight: torch.Tensor) -> None:
        """Write the pristine copy back into ``weight``."""
        weight.copy_(self._copies[target], non_blocking=True)

    def _copy(self, weight: torch.Tensor) -> torch.Tensor:
        data = weight.detach()
        if data.device.type == "cpu" or self.policy == "device":
            return data.clone()
        if self.policy == "auto" and data.device.type == "cuda":
            free, _ = torch.cuda.mem_get_info(data.device)
            if free - data.nbytes > self.headroom_bytes:
                return data.clone()
        host = torch.empty(data.shape, dtype=data.dtype, pin_memory=data.device.type == "cuda")
        host.copy_(data)
        return host
