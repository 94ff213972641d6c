"""The compiled denoiser: compiled once at start, warmed up at the shapes it serves, valid across every swap.

Why a swap never recompiles it: dynamo lifts the module's parameters into graph inputs (its
default ``inline_inbuilt_nn_modules``) and guards on their shapes, dtypes, devices and strides,
never on their values. The engine writes every weight in place (``addmm(out=W)`` from the
pristine copy, ``copy_`` back), so the same tensors at the same addresses carry the new values
and every guard still holds; unfused swaps copy into fixed-shape factors whose hooks exist
before the compile (``worker.lowrank.PaddedPath``). What would break this silently is inductor's
*freezing*, which folds parameters into the graph as constants, so that swaps would be ignored:
:meth:`CompiledDenoiser.compile` refuses to run with it on.

CUDA graphs (``reduce-overhead``) replay kernels on fixed addresses. Parameters are static inputs,
the padded factors are marked static, and since every write is in place no input ever moves, so
the recorded graphs stay valid across swaps. That path is written for this, not measured here.

The text encoders stay eager: they run once per image rather than once per step, and
pivotal-tuning tokens resize their embedding tables (a new shape for a compiled encoder).

Shapes: the graph is specialised (``dynamic=False``) to the latent size and the batch. It is
warmed up at the served sizes with the family's default guidance (SDXL's classifier-free
guidance doubles the batch, so a job with ``guidance_scale <= 1`` is another shape). A job at a
shape not warmed up compiles once more (counted in :attr:`recompiles`), or is refused.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any, Literal

import torch

from common.errors import InvalidRequest
from worker.families import PipelineFamily

log = logging.getLogger(__name__)

NewSizes = Literal["compile", "refuse"]
#: The whole denoiser, or only its repeated blocks (diffusers' regional compilation).
Scope = Literal["denoiser", "blocks"]
#: (width, height, batch) of one denoiser call.
Shape = tuple[int, int, int]
_CUDA_GRAPHS = ("reduce-overhead",)


class CompileFailed(RuntimeError):
    """The denoiser could not be compiled or warmed up: the worker must not start half-ready."""


def compiled_graphs() -> int:
    """Graphs dynamo has compiled in this process so far."""
    from torch._dynamo.utils import counters  # imports dynamo: only once something is compiled

    return int(counters["stats"]["unique_graphs"])


def stop_compile_workers() -> None:
    """Stop inductor's pool of kernel-building processes once the warm-up is done.

    They would sit idle holding memory, and at exit inductor waits for them (a worker that has
    logged its stop could still take many seconds to exit on a loaded machine). A shape not
    warmed up starts the pool again.
    """
    from torch._inductor.async_compile import shutdown_compile_workers

    shutdown_compile_workers()


def check_config(mode: str, device: str) -> None:
    """Refuse a configuration under which a compiled graph would not follow swaps, or cannot run."""
    import torch._inductor.config

    if torch._inductor.config.freezing:
        raise CompileFailed(
            "torch._inductor.config.freezing is on (TORCHINDUCTOR_FREEZING): it folds the weights into the "
            "graph as constants, so every adapter swap would be silently ignored"
        )
    if mode in _CUDA_GRAPHS and device != "cuda":
        raise CompileFailed(f"mode {mode} captures CUDA graphs and needs a CUDA device; this worker runs on {device}")


def compile_module(model: torch.nn.Module, mode: str, scope: Scope = "denoiser") -> None:
    """``torch.compile`` the denoiser in place (or its repeated blocks), specialised to its shapes.

    In place (``Module.compile``), so module names, parameters and the engine's hooks stay where
    they are; the first call at each shape compiles.
    """
    options: dict[str, Any] = {"mode": mode, "dynamic": False}
    if scope == "blocks":
        model.compile_repeated_blocks(**options)  # type: ignore[operator]
    else:
        model.compile(**options)


def default_size(pipe: Any, family: PipelineFamily) -> int:
    """The width and height the pipeline draws when a job names none."""
    latent = getattr(pipe, "default_sample_size", None) or getattr(pipe, family.denoiser).config.sample_size
    return int(latent * pipe.vae_scale_factor)


class CompiledDenoiser:
    """The base's denoiser under ``torch.compile``; see the module docstring.

    ``sizes``: (width, height) to warm up at (empty: ``default``); ``new_sizes``: what a job at a
    shape not warmed up gets, one more compile or a refusal.
    """

    def __init__(
        self,
        pipe: Any,
        family: PipelineFamily,
        *,
        mode: str = "default",
        scope: Scope = "denoiser",
        sizes: Sequence[tuple[int, int]] = (),
        default: int | None = None,
        new_sizes: NewSizes = "compile",
        device: str = "cpu",
    ) -> None:
        self.pipe = pipe
        self.family = family
        self.mode = mode
        self.scope = scope
        self.new_sizes = new_sizes
        self.device = device
        self.default = default or default_size(pipe, family)
        self.sizes = list(sizes) or [(self.default, self.default)]
        self.shapes: set[Shape] = set()
        self.seconds: float | None = None
        self._graphs_at_ready = 0

    @property
    def recompiles(self) -> int:
        """Graphs compiled since the warm-up: a new shape, or something that should never happen."""
        return compiled_graphs() - self._graphs_at_ready if self.seconds is not None else 0

    def compile(self, steps: int = 3) -> float:
        """Compile, then run ``steps`` steps at every served size; the seconds it took. Raises CompileFailed.

        Three steps, because CUDA graph trees warm up, record, then replay.
        """
        check_config(self.mode, self.device)
        start = time.perf_counter()
        try:
            compile_module(getattr(self.pipe, self.family.denoiser), self.mode, self.scope)
            for width, height in self.sizes:
                kwargs = self.family.call_kwargs("warm-up", steps=steps, seed=0, width=width, height=height)
                self.shapes.add(self.shape(kwargs))
                with torch.inference_mode():
                    self.pipe(**kwargs, output_type="latent")
        except Exception as exc:
            first = (str(exc).strip().splitlines() or [""])[0]
            raise CompileFailed(f"{type(exc).__name__}: {first}") from exc
        self.seconds = time.perf_counter() - start
        self._graphs_at_ready = compiled_graphs()
        stop_compile_workers()
        return self.seconds

    def shape(self, kwargs: dict[str, Any]) -> Shape:
        """The denoiser's input shape for a pipeline call's keyword arguments."""
        width = kwargs.get("width") or self.default
        height = kwargs.get("height") or self.default
        batch = int(kwargs.get("num_images_per_prompt") or 1)
        guidance = kwargs.get("guidance_scale", self.family.facts.default_guidance)
        if self.family.facts.guidance == "cfg" and guidance > 1:
            batch *= 2  # the unconditional and the conditional pass in one batch
        return (int(width), int(height), batch)

    def admit(self, kwargs: dict[str, Any]) -> None:
        """Let a call through at a warmed-up shape; else compile once more for it, or refuse (422)."""
        shape = self.shape(kwargs)
        if shape in self.shapes:
            return
        if self.new_sizes == "refuse":
            served = ", ".join(f"{w}x{h} (batch {b})" for w, h, b in sorted(self.shapes))
            raise InvalidRequest(
                f"this worker's compiled denoiser serves {served}; {shape[0]}x{shape[1]} (batch {shape[2]}) "
                "would need a new compile (LORAFARM_COMPILE_NEW_SIZES=refuse)"
            )
        log.warning("event=compile_new_shape width=%d height=%d batch=%d", *shape)
        self.shapes.add(shape)
