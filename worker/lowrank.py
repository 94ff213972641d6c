"""The unfused path: a Linear/Conv2d keeps its base weight and adds ``scale * up(down(x))`` to its output.

Like diffusers' hotswap, a swap only replaces the small matrices held here; the hook stays on the
module for as long as any adapter targets it unfused.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F

#: (down, up, scale) with the user's strength folded into scale.
Term = tuple[torch.Tensor, torch.Tensor, float]


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
        x = args[0]
        for down, up, scale in self.terms:
            if isinstance(module, torch.nn.Conv2d):
                hidden = F.conv2d(x.to(down.dtype), down, None, module.stride, module.padding, module.dilation)
                delta = F.conv2d(hidden, up)
            else:
                delta = F.linear(F.linear(x.to(down.dtype), down), up)
            # same order as PEFT's forward: base + lora_B(lora_A(x)) * scaling
            output = output + (delta * scale).to(output.dtype)
        return output
