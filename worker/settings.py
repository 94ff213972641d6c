"""Settings of a worker process (``python -m worker --base REPO_ID [--base REPO_ID ...]``)."""

from __future__ import annotations

import os
import re
import socket
from typing import Annotated, Any, Literal

from pydantic import Field, field_validator
from pydantic_settings import NoDecode

from common.settings import CommonSettings, split_list

CompileMode = Literal["off", "default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"]
_SIZE = re.compile(r"(\d+)(?:x(\d+))?")


def _default_worker_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


class WorkerSettings(CommonSettings):
    """One worker keeps its bases warm and serves the jobs of their pools (one pool per base)."""

    base: str = Field(
        default="",
        description=(
            "Base repo id this worker serves (its pool); several, comma-separated, make a multi-base worker: "
            "one base active on the device at a time, the others warm in pinned host memory or cold on disk."
        ),
    )
    worker_id: str = Field(default_factory=_default_worker_id, description="Unique worker name.")
    device: Literal["auto", "cuda", "cpu"] = Field(default="auto", description="Device for the base.")
    dtype: Literal["auto", "fp16", "bf16", "fp32"] = Field(
        default="auto",
        description="Weights dtype: auto is the family's half precision on CUDA (fp16; bf16 for FLUX.1), fp32 on CPU.",
    )
    default_steps: int | None = Field(
        default=None, ge=1, description="Inference steps when a request names none (unset: the family's default)."
    )
    default_size: int | None = Field(
        default=None,
        ge=64,
        le=2048,
        description="Image width and height when a request names none (unset: the pipeline's own default).",
    )
    block_ms: int = Field(default=1000, ge=1, description="How long one stream read blocks.")
    lease_s: float = Field(
        default=30.0, gt=0, description="A claimed job idle this long is reclaimed from its (dead) worker."
    )
    max_deliveries: int = Field(default=3, ge=1, description="Deliveries before a job is dead-lettered.")
    max_adapter_bytes: int = Field(default=512 * 2**20, gt=0, description="Largest adapter file accepted.")
    max_rank: int = Field(default=256, gt=0, description="Largest LoRA rank accepted.")
    host_cache_bytes: int = Field(
        default=2 * 2**30, ge=0, description="Bytes of parsed adapters kept in host memory (LRU)."
    )
    pristine: Literal["auto", "device", "host"] = Field(
        default="auto",
        description="Where pristine copies of touched base weights live: auto is the device while it has headroom.",
    )
    pristine_headroom_bytes: int = Field(
        default=2 * 2**30,
        ge=0,
        description="Device memory pristine copies leave free (auto): past it, copies go to pinned host memory.",
    )
    pristine_host_bytes: int | None = Field(
        default=None,
        ge=0,
        description=(
            "Most host (pinned) memory for pristine copies (unset: no cap). Past it, copies of weights no "
            "adapter holds are dropped, and an adapter set that still does not fit is applied unfused."
        ),
    )
    progress_interval_s: float = Field(
        default=0.25, ge=0, description="Least seconds between two step-progress events of a job."
    )
    reorder_max_age_s: float = Field(
        default=10.0,
        ge=0,
        description="Jobs queued on a worker for its fused adapter go first, unless one waited this long.",
    )
    max_job_s: float = Field(
        default=900.0,
        gt=0,
        description=(
            "A job running longer than this marks the worker hung: it stops heartbeating (peers take its "
            "jobs over after the lease) and its /health fails (the orchestrator restarts it)."
        ),
    )
    prefetch: bool = Field(default=True, description="Fetch and parse the next job's adapter during a job.")
    worker_port: int = Field(
        default=9100, ge=0, le=65535, description="Port of the worker's /health, /ready, /metrics (0: off)."
    )
    worker_host: str = Field(default="127.0.0.1", description="Bind address of the worker's probe server.")
    swap_mode: Literal["fused", "unfused", "auto"] = Field(
        default="fused",
        description=(
            "How adapters are applied: fused (base speed; the same request always gives the same bytes), "
            "unfused (cheap swaps, slower steps: few-step bases), or auto (per swap, the cheaper for the "
            "queued reuse, from costs measured at start; images may differ in the last bits between modes)."
        ),
    )
    compile: CompileMode = Field(
        default="off",
        description=(
            "torch.compile the denoiser (UNet or transformer) once at start, warm it up at the served sizes, "
            "and only then report ready: the `torch.compile` mode, or off. Swaps never recompile it. "
            "reduce-overhead adds CUDA graphs (CUDA only). One base per worker. See docs/COMPILE.md."
        ),
    )
    compile_scope: Literal["denoiser", "blocks"] = Field(
        default="denoiser",
        description=(
            "What is compiled: the whole denoiser (fastest steps), or only its repeated transformer blocks "
            "(diffusers' regional compilation: a fraction of the compile time, a smaller speed-up)."
        ),
    )
    compile_sizes: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description=(
            "Image sizes the compiled denoiser is warmed up at, `WIDTHxHEIGHT` or `N` for a square "
            "(`1024,832x1216`). Empty: LORAFARM_DEFAULT_SIZE, else the pipeline's own default."
        ),
    )
    compile_new_sizes: Literal["compile", "refuse"] = Field(
        default="compile",
        description=(
            "A job at a size not warmed up: compile once more for it (one stall, counted in "
            "lorafarm_denoiser_recompiles_total), or refuse it (422, no stall)."
        ),
    )
    compile_unfused_rank: int = Field(
        default=64,
        ge=1,
        description=(
            "With compile on and LORAFARM_SWAP_MODE unfused or auto: the rank of the fixed-shape, zero-padded "
            "unfused factors each targeted denoiser module gets (memory: rank x (in + out) per module)."
        ),
    )
    compile_unfused_targets: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description=(
            "Endings of the denoiser module names that get fixed-shape unfused factors (`.to_q,.to_k`). "
            "Empty: the family's usual LoRA targets (worker/families.py)."
        ),
    )
    compile_unfused_overflow: Literal["fused", "refuse"] = Field(
        default="fused",
        description=(
            "An unfused adapter set over LORAFARM_COMPILE_UNFUSED_RANK, or on a module without factors: "
            "applied fused instead, or refused (400). Never a recompile."
        ),
    )
    stock_swap: bool = Field(
        default=False,
        description="Reference behaviour (benchmarks): diffusers load+fuse, unfuse+unload on every change.",
    )
    base_device_bytes: int | None = Field(
        default=None,
        gt=0,
        description=(
            "Device memory for base weights (multi-base): bases that fit stay active together. Unset: on CUDA "
            "the free memory at start less LORAFARM_PRISTINE_HEADROOM_BYTES; on a CPU the largest base's bytes."
        ),
    )
    base_host_bytes: int | None = Field(
        default=None,
        ge=0,
        description="Pinned host memory for warm copies of bases (unset: no cap); past it, bases go cold (disk).",
    )
    base_disk_bytes: int | None = Field(
        default=None,
        ge=0,
        description="Most disk the bases' files may take in the Hub cache (unset: no cap); over it, refused at start.",
    )

    @property
    def bases(self) -> list[str]:
        """The base repo ids this worker serves, in the order given (``base`` split at commas)."""
        return list(dict.fromkeys(b.strip() for b in self.base.split(",") if b.strip()))

    def for_base(self, base: str) -> WorkerSettings:
        """These settings for one of the bases (what loading it and serving its pool read)."""
        return self.model_copy(update={"base": base})

    @field_validator("compile_sizes", "compile_unfused_targets", mode="before")
    @classmethod
    def _split_lists(cls, value: Any) -> Any:
        return split_list(value)

    @field_validator("compile_sizes")
    @classmethod
    def _sizes(cls, value: list[str]) -> list[str]:
        sizes = []
        for text in value:
            match = _SIZE.fullmatch(text.strip().lower())
            if match is None:
                raise ValueError(f"a compile size is WIDTHxHEIGHT or N, not {text!r}")
            width = int(match[1])
            sizes.append(f"{width}x{int(match[2] or width)}")
        return list(dict.fromkeys(sizes))

    def served_sizes(self) -> list[tuple[int, int]]:
        """``compile_sizes`` as (width, height); empty when none are set."""
        return [(int(w), int(h)) for w, h in (size.split("x") for size in self.compile_sizes)]
