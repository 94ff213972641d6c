"""Settings of the router process (``python -m router``); only this module reads its environment."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import NoDecode

from common.settings import CommonSettings, split_list


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
    queue_max: int = Field(default=64, ge=1, description="Jobs waiting or in hand per pool; past it 429.")
    affinity: bool = Field(
        default=True,
        description="Place each job on a worker that holds its adapter (false: any worker, the reference).",
    )
    affinity_max_queue: int = Field(
        default=2, ge=1, description="Jobs on one worker (in hand and waiting) at which placement spills."
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
    def base(self) -> str:
        """The default base (always set after validation)."""
        assert self.default_base is not None
        return self.default_base
