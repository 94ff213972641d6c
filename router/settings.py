"""Settings of the router process (``python -m router``); only this module reads its environment."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import NoDecode

from common.schemas import MAX_IMAGES
from common.settings import CommonSettings, split_list
from router.placement import PlacementRules


class RouterSettings(CommonSettings):
    """The router: which base pools exist, how long a request may wait, how much may queue."""

    host: str = Field(default="127.0.0.1", description="Address the HTTP server binds.")
    port: int = Field(default=8888, ge=0, le=65535, description="Port the HTTP server binds.")
    pools: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["stabilityai/stable-diffusion-xl-base-1.0"],
        description="Served base repo ids, one pool each (comma-separated: `tiny/sdxl-base,tiny/sd15-base`).",
    )
    default_base: str | None = Field(
        default=None,
        description="Base of `POST /` (with a `lora` header: the preferred pool). Default: the first pool.",
    )
    request_timeout_s: float = Field(
        default=120.0,
        gt=0,
        description="Longest a request waits for its image; past it 504 and the job is cancelled.",
    )
    job_timeout_s: float = Field(
        default=600.0,
        gt=0,
        description="Longest a job of the async API (`POST /jobs`) may wait and run; past it workers drop it.",
    )
    event_streams_max: int = Field(
        default=256,
        ge=1,
        description="Concurrent `GET /jobs/{id}/events` streams (one Redis connection each).",
    )
    queue_max: int = Field(
        default=64,
        ge=1,
        description="Images waiting or in hand per pool (a job of n images counts n); past it 429.",
    )
    images_max: int = Field(
        default=4,
        ge=1,
        le=MAX_IMAGES,
        description=(
            f"Most images one request may ask (`n` of `POST /v1/images/generations` and `POST /jobs`; at most "
            f"{MAX_IMAGES}; `queue_max` when that is lower)."
        ),
    )
    affinity: bool = Field(
        default=True,
        description="Place each job on a worker that holds its adapter (false: any worker, the reference).",
    )
    affinity_max_queue: int = Field(
        default=2, ge=1, description="Jobs on one worker (in hand and waiting) at which placement spills."
    )
    affinity_max_wait_s: float = Field(
        default=1.0,
        ge=0,
        description=(
            "Expected seconds before a new job would start on a worker, past which placement spills "
            "(about one adapter download: an idle worker that fetches it starts sooner)."
        ),
    )
    affinity_max_holders: int = Field(
        default=2, ge=1, description="Most workers one adapter may occupy before its jobs queue on its holders."
    )
    affinity_min_residency_s: float = Field(
        default=30.0, ge=0, description="A worker that swapped less than this ago is steered away from swapping again."
    )
    affinity_damping_s: float = Field(
        default=1.0,
        ge=0,
        description="Seconds added to such a worker's expected finish when placement weighs it (thrash damping).",
    )
    metadata_ttl_s: float = Field(default=300.0, ge=0, description="Seconds a repo's Hub metadata is cached.")
    hub_timeout_s: float = Field(default=10.0, gt=0, description="Timeout of one Hub metadata call.")
    max_adapter_bytes: int = Field(
        default=512 * 2**20,
        gt=0,
        description="Largest adapter file accepted (checked from metadata, 413 past it).",
    )
    api_key: SecretStr | None = Field(
        default=None, description="When set, requests need `Authorization: Bearer <key>` (401 otherwise)."
    )
    api_key_rate_per_s: float = Field(
        default=0.0, ge=0, description="Generation requests per second of the `LORAFARM_API_KEY` key (0: no limit)."
    )
    api_key_burst: int = Field(default=0, ge=0, description="Requests at once above that rate (0: one second's worth).")
    api_key_concurrency: int = Field(
        default=0, ge=0, description="Unfinished jobs at once of the `LORAFARM_API_KEY` key (0: no limit)."
    )
    tenant_keys: bool = Field(
        default=False,
        description=(
            "Require an API key of the key ring in Redis (`lorafarm keys add`), each with its own name and "
            "limits, and share each pool fairly between keys (`LORAFARM_API_KEY`, if set, is one more key)."
        ),
    )
    key_cache_s: float = Field(
        default=2.0, ge=0, description="Seconds a router trusts a key it looked up: a revoked key works this long."
    )
    tenant_share_per_worker: int = Field(
        default=2,
        ge=1,
        description="With `LORAFARM_TENANT_KEYS`: jobs one key may have on a pool's streams per live worker; "
        "further jobs of that key wait behind other keys' jobs (parked).",
    )
    tenant_queue_share: float = Field(
        default=0.5,
        gt=0,
        le=1,
        description="With `LORAFARM_TENANT_KEYS`: the part of a pool's `LORAFARM_QUEUE_MAX` one key may fill "
        "(429 `key_queue_full` past it), so a burst of one key leaves room for the others.",
    )
    cors_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="Origins allowed by CORS (comma-separated; empty: CORS off)."
    )
    redis_max_connections: int = Field(
        default=32, ge=1, description="Connections for short Redis commands (a bounded pool)."
    )
    shutdown_grace_s: float = Field(
        default=130.0, ge=0, description="On SIGTERM, seconds to let in-flight requests finish."
    )
    keep_alive_s: int = Field(
        default=75,
        ge=1,
        description=(
            "Seconds an idle keep-alive connection stays open. Keep it above the idle timeout of any load "
            "balancer in front (60 s on most), or a request sent as the router closes the socket is lost."
        ),
    )

    @field_validator("pools", "cors_origins", mode="before")
    @classmethod
    def _split_lists(cls, value: Any) -> Any:
        return split_list(value)

    @field_validator("pools")
    @classmethod
    def _some_pool(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError("at least one pool (base repo id) is needed")
        return list(dict.fromkeys(value))

    @model_validator(mode="after")
    def _default_base(self) -> RouterSettings:
        if self.default_base is None:
            self.default_base = self.pools[0]
        elif self.default_base not in self.pools:
            raise ValueError(f"default_base {self.default_base!r} is not one of the pools {self.pools}")
        return self

    @property
    def max_images(self) -> int:
        """Most images one request may ask: a job of more would never fit its pool's bound."""
        return min(self.images_max, self.queue_max)

    @property
    def base(self) -> str:
        """The default base (always set after validation)."""
        assert self.default_base is not None
        return self.default_base


def placement_rules(settings: RouterSettings) -> PlacementRules:
    """The placement rules these settings ask for: what the router places by, and what
    ``bench/simulate.py`` simulates (with the defaults)."""
    return PlacementRules(
        affinity=settings.affinity,
        max_queue=settings.affinity_max_queue,
        max_wait_s=settings.affinity_max_wait_s,
        max_holders=settings.affinity_max_holders,
        min_residency_s=settings.affinity_min_residency_s,
        damping_s=settings.affinity_damping_s,
        stale_after_s=settings.worker_ttl_s,
    )
