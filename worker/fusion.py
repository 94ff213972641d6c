"""The fused write: ``W = W0 + sum(scale_i * up_i @ down_i)`` from the pristine copy, rounded once.

On a GPU, and for fp32 weights, that is one ``addmm`` into the weight. A CPU without bf16/fp16
matrix units runs half-precision GEMMs an order of magnitude slower than fp32 ones (measured
here: 27 ms against 1 ms for one 1280x1280 rank-8 update), so half-precision weights on a CPU are
accumulated in fp32 through a small scratch buffer that stays in cache, then rounded once into the
weight: the same value a half-precision ``addmm`` (fp32 accumulation) would give, ten times faster.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from worker.lowrank import Term, factors

#: fp32 scratch elements (8 MiB): a chunk of rows is rebuilt in cache, then written once.
SCRATCH_ELEMS = 2 << 20
_HALF = (torch.float16, torch.bfloat16)


def compute_dtype(weight: torch.Tensor) -> torch.dtype:
    """The dtype the low-rank factors are kept and multiplied in for this weight."""
    return torch.float32 if weight.device.type == "cpu" and weight.dtype in _HALF else weight.dtype


class FusedWriter:
    """Writes fused weights; holds the fp32 scratch buffer of the CPU half-precision path."""

    def __init__(self) -> None:
        self._scratch: torch.Tensor | None = None

    def write(self, weight: torch.Tensor, base: torch.Tensor, terms: Sequence[Term]) -> None:
        """weight = base + sum(scale * up @ down) (conv kernels as 2-D matrices); base is never written."""
        if not weight.is_contiguous():  # e.g. a channels_last conv: compute aside, then copy in
            flat = torch.empty(weight.shape, dtype=weight.dtype, device=weight.device)
            self.write(flat, base.contiguous(), terms)
            weight.copy_(flat)
            return
        up, down, scale = factors(terms)
        out = weight.view(weight.shape[0], -1)
        base2d = base.view(base.shape[0], -1)
        if up.dtype != out.dtype:
            self._write_fp32(out, base2d, up, down, scale)
        elif base2d.device == out.device:
            torch.addmm(base2d, up, down, alpha=scale, out=out)
        else:  # pristine copy in pinned host memory
            out.copy_(base2d, non_blocking=True)
            out.addmm_(up, down, alpha=scale)

    def _write_fp32(
        self, out: torch.Tensor, base: torch.Tensor, up: torch.Tensor, down: torch.Tensor, scale: float
    ) -> None:
        if self._scratch is None:
            self._scratch = torch.empty(SCRATCH_ELEMS, dtype=torch.float32)
        width = out.shape[1]
        rows = max(1, SCRATCH_ELEMS // width)
        scratch = self._scratch if rows * width <= SCRATCH_ELEMS else torch.empty(rows * width)
        for start in range(0, out.shape[0], rows):
            stop = min(start + rows, out.shape[0])
            chunk = scratch[: (stop - start) * width].view(stop - start, width)
            chunk.copy_(base[start:stop])
            chunk.addmm_(up[start:stop], down, alpha=scale)
            out[start:stop].copy_(chunk)
