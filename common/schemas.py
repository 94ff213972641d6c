"""Wire schemas: the HTTP request body, the job placed on a stream, its result, a worker's heartbeat."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterable
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator, model_validator

MAX_PROMPT_CHARS = 4000
MAX_ADAPTERS = 4
MAX_SEED = 2**63 - 1
#: Most images one job may make (``n`` of the OpenAI route and the job API); a router setting may lower it.
MAX_IMAGES = 10
ImageFormat = Literal["png", "jpeg", "webp"]


def _json_number(value: Any) -> Any:
    """Numbers as the JSON schema says: ``false`` or ``"7"`` is refused, not converted (``3.0`` is 3)."""
    if isinstance(value, bool | str):
        raise ValueError("Input should be a number")
    return value


#: A request field that takes a JSON number only.
Number = BeforeValidator(_json_number)


class AdapterSpec(BaseModel):
    """One adapter of a composed request: ``{"id": repo_id, "scale": weight}``."""

    model_config = ConfigDict(extra="forbid")

    id: str = Field(min_length=1, max_length=200)
    scale: Annotated[float, Number] = Field(default=1.0, ge=-4.0, le=4.0)


class LoraPath(BaseModel):
    """One adapter in the shape the Hub's inference providers send (fal): ``{"path", "scale"}``.

    ``path`` is a repo id or ``https://huggingface.co/<org>/<name>``; it names a repo, and is never
    fetched (``common.hub.repo_of_path`` reads the repo id out of it, or refuses it).
    """

    model_config = ConfigDict(extra="forbid")

    path: str = Field(min_length=1, max_length=300)
    scale: Annotated[float, Number] = Field(default=1.0, ge=-4.0, le=4.0)


class Parameters(BaseModel):
    """``parameters`` of the Hugging Face Inference API text-to-image body.

    ``None`` means the worker's default for its base.
    """

    model_config = ConfigDict(extra="forbid")

    num_inference_steps: Annotated[int | None, Number] = Field(default=None, ge=1, le=150)
    guidance_scale: Annotated[float | None, Number] = Field(default=None, ge=0.0, le=30.0)
    negative_prompt: str | None = Field(default=None, max_length=MAX_PROMPT_CHARS)
    width: Annotated[int | None, Number] = Field(default=None, ge=64, le=2048, multiple_of=8)
    height: Annotated[int | None, Number] = Field(default=None, ge=64, le=2048, multiple_of=8)
    seed: Annotated[int | None, Number] = Field(default=None, ge=0, le=MAX_SEED)
    lora_scale: Annotated[float | None, Number] = Field(default=None, ge=-4.0, le=4.0)
    adapters: list[AdapterSpec] | None = Field(default=None, max_length=MAX_ADAPTERS)
    #: The same composition as ``adapters``, in the providers' shape; one of the two at most.
    loras: list[LoraPath] | None = Field(default=None, max_length=MAX_ADAPTERS)

    @model_validator(mode="after")
    def _one_list(self) -> Parameters:
        if self.adapters is not None and self.loras is not None:
            raise ValueError("give adapters or loras, not both (they are the same list)")
        return self


class InferenceRequest(BaseModel):
    """``{"inputs": prompt, "parameters": {...}}``."""

    model_config = ConfigDict(extra="forbid")

    inputs: str = Field(min_length=1, max_length=MAX_PROMPT_CHARS)
    parameters: Parameters = Field(default_factory=Parameters)

    @field_validator("inputs")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("inputs must not be blank")
        return value


class AdapterRef(BaseModel):
    """An adapter resolved on the Hub: its repo, the commit sha that names its version, its weight."""

    repo_id: str
    revision: str
    scale: float = 1.0
    weight_name: str | None = None
    #: Pivotal-tuning embeddings shipped beside the LoRA (``embeddings.safetensors``), if any.
    embeddings_name: str | None = None
    size: int | None = None

    @property
    def key(self) -> str:
        """Identity of this adapter version: ``repo@sha``."""
        return f"{self.repo_id}@{self.revision}"


def adapter_set_key(adapters: Iterable[AdapterRef]) -> str | None:
    """The one key of a set of adapters at their strengths; ``None`` for the plain base.

    Each adapter is ``repo@sha``, followed by ``*scale`` unless its scale is 1.0 (``repr`` of the
    float: two scales that differ in any bit are two sets). Sorted, joined by ``+``: the order a
    request listed them in does not change the weights, so it does not change the key. Workers
    name what they hold with it, placement and the swappers compare it, and a job for A at 0.5
    and one for A at 1.0 are different sets.
    """
    terms = sorted(a.key if a.scale == 1.0 else f"{a.key}*{float(a.scale)!r}" for a in adapters)
    return "+".join(terms) if terms else None


def new_job_id() -> str:
    return uuid.uuid4().hex


class Job(BaseModel):
    """A generation job as placed on a pool's stream."""

    id: str = Field(default_factory=new_job_id)
    pool: str
    adapters: list[AdapterRef] = Field(default_factory=list)
    prompt: str
    negative_prompt: str | None = None
    num_inference_steps: int | None = None
    guidance_scale: float | None = None
    width: int | None = None
    height: int | None = None
    seed: int
    #: Images to make, image k with seed ``seed + k`` (``seeds``): one swap for all of them.
    images: int = Field(default=1, ge=1, le=MAX_IMAGES)
    format: ImageFormat = "jpeg"
    enqueued_at: float = Field(default_factory=time.time)
    #: Epoch seconds past which nobody waits for the result: the worker drops the job unrun.
    deadline: float | None = None
    #: The API key's tenant when the job counts for it (concurrency, fair share): settling the job
    #: releases its place (``common/shares.py``). None: an anonymous job.
    tenant: str | None = None

    @property
    def seeds(self) -> list[int]:
        """The seed of each image: ``seed, seed + 1, ...``; image k alone is the job with ``seeds[k]``."""
        return [self.seed + k for k in range(self.images)]

    def to_fields(self) -> dict[str, str]:
        """Stream entry fields: the job, and its images (what the pool's bound counts)."""
        return {"job": self.model_dump_json(), "images": str(self.images)}

    @classmethod
    def from_fields(cls, fields: dict[bytes | str, bytes | str]) -> Job:
        raw = fields.get(b"job", fields.get("job"))
        if raw is None:
            raise ValueError("stream entry has no 'job' field")
        return cls.model_validate_json(raw)


JobState = Literal["queued", "running", "done", "failed", "cancelled"]


class JobResult(BaseModel):
    """What a worker publishes for a job; the image bytes are stored beside it."""

    job_id: str
    status: Literal["done", "failed", "cancelled"]
    content_type: str | None = None
    error: str | None = None
    error_type: str | None = None
    worker_id: str | None = None
    #: True when the job's adapters were already active when it started (no swap was needed).
    warm: bool = False
    swap_s: float = 0.0
    #: What making the job's base active took on a multi-base worker: nothing, a warm switch
    #: (from pinned host memory) or a cold load (from disk), and its seconds.
    base_switch: Literal["none", "warm", "cold"] = "none"
    base_switch_s: float = 0.0
    inference_s: float = 0.0
    compute_s: float = 0.0
    finished_at: float = Field(default_factory=time.time)


class JobStatus(BaseModel):
    """Latest known state of a job, for the async job API and its events."""

    job_id: str
    state: JobState
    step: int | None = None
    steps: int | None = None
    position: int | None = None
    worker_id: str | None = None
    error: str | None = None
    error_type: str | None = None
    updated_at: float = Field(default_factory=time.time)


class WorkerState(BaseModel):
    """A worker's heartbeat: who it is, what it holds, how fast it is."""

    worker_id: str
    pool: str
    status: Literal["starting", "ready", "busy", "draining"] = "ready"
    device: str = "cpu"
    #: Class of the loaded pipeline (``FluxPipeline``...): names the pool's family (``common.families``).
    pipeline: str | None = None
    #: Adapter keys (``repo@sha``) fused into the base right now; empty means the plain base.
    fused: list[str] = Field(default_factory=list)
    #: :func:`adapter_set_key` of the adapters active now, scales included (``None``: the plain base).
    fused_set: str | None = None
    #: Adapter keys parsed and held in host memory (ready to apply without download).
    cached: list[str] = Field(default_factory=list)
    current_job: str | None = None
    #: When the job in hand started (for the expected time left).
    current_started_at: float | None = None
    #: Adapter set keys of the jobs waiting on this worker's own stream, oldest first (None: the base).
    queued: list[str | None] = Field(default_factory=list)
    #: When the adapters fused now were applied.
    last_swap_at: float | None = None
    #: Measured seconds to download and parse an adapter not held in host memory.
    fetch_s: float | None = None
    #: Bytes of pristine copies of base weights held on the device and in (pinned) host memory.
    pristine_device_bytes: int = 0
    pristine_host_bytes: int = 0
    queue_len: int = 0
    jobs_done: int = 0
    swap_s: float | None = None
    inference_s: float | None = None
    #: Every pool this worker serves (one for a single-base worker); it announces a state in each.
    pools: list[str] = Field(default_factory=list)
    #: Where this pool's base is on the worker: on the device (active), in pinned host memory
    #: (warm: a switch is one copy) or only on local disk (cold: a switch reads it again).
    base_tier: Literal["active", "warm", "cold"] = "active"
    #: Seconds to make this base active from host memory and from disk: measured, estimated from
    #: its bytes until measured.
    warm_switch_s: float | None = None
    cold_switch_s: float | None = None
    #: Bytes of this base's weights on the device, in host memory and on disk.
    base_bytes: dict[str, int] = Field(default_factory=dict)
    #: Jobs waiting on this worker's own streams of its other pools (they share its device).
    other_queued: int = 0
    started_at: float = Field(default_factory=time.time)
    last_seen: float = Field(default_factory=time.time)

    def dumps(self) -> str:
        return self.model_dump_json()

    @classmethod
    def loads(cls, raw: bytes | str) -> WorkerState:
        return cls.model_validate(json.loads(raw))
