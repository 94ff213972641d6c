"""The unfused path: a Linear/Conv2d keeps its base weight and adds ``scale * up(down(x))`` to its output.

Two kinds of path, with the same ``set``/``remove``:

- :class:`LowRankPath` (eager bases): a hook that exists while an adapter targets the module,
  looping over a tuple of terms. Like diffusers' hotswap, a swap only replaces the small matrices.
- :class:`PaddedPath` (compiled denoisers): a hook installed before the compile and kept for the
  life of the graph, over fixed-shape factors of a configured maximum rank, zero-padded, the
  scales folded into the up factor. A swap copies into those tensors in place, so the graph's
  guards (hooks, shapes, tensor identities) never change; with zeros the hook adds exactly 0.
  A set that does not fit the buffers (:func:`misfit`) is the engine's policy to handle.
"""

from __future__ import annotations

from collections.abc import Container, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F

from worker.naming import component_of

#: (down, up, scale) with the user's strength folded into scale.
Term = tuple[torch.Tensor, torch.Tensor, float]
Overflow = Literal["fused", "refuse"]


def factors(terms: Sequence[Term]) -> tuple[torch.Tensor, torch.Tensor, float]:
    """(up, down, scale) as 2-D matrices; several adapters become one product over their stacked ranks."""
    if len(terms) == 1:
        down, up, scale = terms[0]
        return up.reshape(up.shape[0], -1), down.reshape(down.shape[0], -1), scale
    # one product over the concatenated ranks: a single rounding of the sum, not one per adapter
    up = torch.cat([(u.reshape(u.shape[0], -1).float() * s).to(u.dtype) for _, u, s in terms], dim=1)
    down = torch.cat([d.reshape(d.shape[0], -1) for d, _, _ in terms], dim=0)
    return up, down, 1.0


def _delta(module: torch.nn.Module, x: torch.Tensor, down: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    if isinstance(module, torch.nn.Conv2d):
        hidden = F.conv2d(x.to(down.dtype), down, None, module.stride, module.padding, module.dilation)
        return F.conv2d(hidden, up)
    return F.linear(F.linear(x.to(down.dtype), down), up)


class LowRankPath:
    """A forward hook adding the low-rank terms of the active adapters to one module's output."""

    def __init__(self, module: torch.nn.Module) -> None:
        self.module = module
        self.terms: tuple[Term, ...] = ()
        self._handle = module.register_forward_hook(self._hook)

    def set(self, terms: Sequence[Term]) -> None:
        self.terms = tuple(terms)

    def remove(self) -> None:
        self._handle.remove()
        self.terms = ()

    def _hook(self, module: torch.nn.Module, args: tuple[Any, ...], output: torch.Tensor) -> torch.Tensor:
        for down, up, scale in self.terms:
            # same order as PEFT's forward: base + lora_B(lora_A(x)) * scaling
            output = output + (_delta(module, args[0], down, up) * scale).to(output.dtype)
        return output


@dataclass(frozen=True)
class FixedRank:
    """Fixed-shape unfused factors for a compiled denoiser: which modules get them, their rank, the policy."""

    rank: int
    #: Target name endings that get buffers (``.to_q``...): the family's usual LoRA targets.
    targets: tuple[str, ...]
    #: A set over ``rank``, or on a module without buffers: applied ``fused``, or refused.
    overflow: Overflow = "fused"


class PaddedPath:
    """A permanent hook over zero-padded factors of ``rank`` (see the module docstring)."""

    def __init__(self, module: torch.nn.Module, rank: int, dtype: torch.dtype) -> None:
        weight = module.weight
        assert isinstance(weight, torch.Tensor)
        out_f, in_f = weight.shape[0], weight.shape[1]
        kernel = tuple(weight.shape[2:])
        self.rank = rank
        self.down = torch.zeros((rank, in_f, *kernel), dtype=dtype, device=weight.device)
        self.up = torch.zeros((out_f, rank, *(1 for _ in kernel)), dtype=dtype, device=weight.device)
        if weight.device.type == "cuda":  # CUDA graphs read these at fixed addresses: no copy per replay
            torch._dynamo.mark_static_address(self.down)
            torch._dynamo.mark_static_address(self.up)
        self._handle = module.register_forward_hook(self._hook)

    @property
    def nbytes(self) -> int:
        return self.down.nbytes + self.up.nbytes

    def set(self, terms: Sequence[Term]) -> None:
        """Copy the terms into the buffers (ranks stacked, scales folded into up); zeros beyond."""
        up, down, scale = factors(terms)
        rank = down.shape[0]
        if rank > self.rank:
            raise ValueError(f"rank {rank} is over this path's {self.rank}")
        with torch.no_grad():
            self.down.view(self.rank, -1)[:rank].copy_(down)
            self.down.view(self.rank, -1)[rank:].zero_()
            self.up.view(self.up.shape[0], self.rank)[:, :rank].copy_(up.float().mul(scale))
            self.up.view(self.up.shape[0], self.rank)[:, rank:].zero_()

    def remove(self) -> None:
        """Back to adding zero; the hook stays, so the compiled graph stays valid."""
        with torch.no_grad():
            self.down.zero_()
            self.up.zero_()

    def detach(self) -> None:
        """Take the hook off the module (only when the engine itself is discarded)."""
        self._handle.remove()

    def _hook(self, module: torch.nn.Module, args: tuple[Any, ...], output: torch.Tensor) -> torch.Tensor:
        return output + _delta(module, args[0], self.down, self.up).to(output.dtype)


def misfit(ranks: Mapping[str, int], buffered: Container[str], rank: int, *, compiled: Container[str]) -> str | None:
    """Why an unfused set cannot go through the fixed buffers, or ``None`` when it fits.

    ``ranks``: the set's total rank per target; ``compiled``: components whose modules need a
    buffer (the compiled denoiser; an eager text encoder takes a plain ``LowRankPath``).
    """
    for target, total in sorted(ranks.items()):
        if component_of(target) not in compiled:
            continue
        if target not in buffered:
            return f"{target} has no fixed-shape unfused buffer"
        if total > rank:
            return f"{target} needs rank {total}, over the compiled maximum of {rank}"
    return None
