"""Settings shared by every service. Each service subclasses this in its own ``settings`` module.

Only settings classes read the environment; entrypoints build them and pass them in.
"""

from __future__ import annotations

import json
from typing import Annotated, Any

from pydantic import AliasChoices, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from common.connections import RedisTarget
from common.replication import Replication


def split_list(value: Any) -> Any:
    """Accept ``a,b`` as well as a JSON list (or a list) for list-valued variables."""
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            return json.loads(text)
        return [part.strip() for part in text.split(",") if part.strip()]
    return value


class CommonSettings(BaseSettings):
    """Environment variables start with ``LORAFARM_`` (``LORAFARM_REDIS_URL``...)."""

    # An empty variable (``HF_TOKEN=``) counts as unset.
    model_config = SettingsConfigDict(
        env_prefix="LORAFARM_", extra="ignore", populate_by_name=True, env_ignore_empty=True
    )

    redis_url: str = Field(
        default="redis://127.0.0.1:6379/0",
        description=(
            "Redis URL shared by router and workers (`redis://:password@host:port/db`; `rediss://` for TLS, "
            "`?ssl_ca_certs=PATH` for a private CA). With sentinels its host and port are not used: the "
            "sentinels name the primary, and the URL's password, database and TLS options apply to it."
        ),
    )
    redis_sentinels: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description=(
            "Sentinel addresses, `host:port` comma-separated. When set, router and workers ask them for the "
            "primary of `LORAFARM_REDIS_MASTER_NAME` and follow it across failovers. Empty: one Redis at the URL."
        ),
    )
    redis_master_name: str = Field(
        default="lorafarm", min_length=1, description="Name the sentinels monitor the primary under."
    )
    redis_sentinel_password: SecretStr | None = Field(
        default=None,
        description="Password of the sentinels themselves (their `requirepass`), if they have one.",
    )
    redis_min_replicas: int = Field(
        default=0,
        ge=0,
        description=(
            "Replicas that must hold a job before it is accepted (and a result or cancel before it counts), "
            "confirmed with `WAIT`. Past the timeout the job is withdrawn and the client gets 503 "
            "`redis_unavailable` with `Retry-After`. 0: nothing waits (one Redis)."
        ),
    )
    redis_replica_timeout_ms: int = Field(
        default=500, ge=1, description="Longest a write waits for `LORAFARM_REDIS_MIN_REPLICAS` replicas."
    )
    hf_endpoint: str = Field(
        default="https://huggingface.co",
        validation_alias=AliasChoices("LORAFARM_HF_ENDPOINT", "HF_ENDPOINT"),
        description="Hub (or devhub) URL; passed explicitly to every huggingface_hub call.",
    )
    hf_cache_dir: str | None = Field(
        default=None,
        description="Hub download cache folder (default: huggingface_hub's own, HF_HOME).",
    )
    hf_token: str | None = Field(
        default=None,
        validation_alias=AliasChoices("LORAFARM_HF_TOKEN", "HF_TOKEN"),
        description="Hub token for gated or private repos (LORAFARM_HF_TOKEN or HF_TOKEN).",
    )
    allow_gated: bool = Field(default=False, description="Serve gated repos (needs a token with access).")
    allow_private: bool = Field(default=False, description="Serve private repos (needs a token with access).")
    heartbeat_s: float = Field(default=2.0, gt=0, description="Seconds between worker heartbeats.")
    worker_ttl_s: float = Field(default=10.0, gt=0, description="A worker silent this long is dead.")
    log_level: str = Field(default="INFO", description="Log level of the service.")

    @field_validator("redis_sentinels", mode="before")
    @classmethod
    def _split_sentinels(cls, value: Any) -> Any:
        return split_list(value)

    @field_validator("redis_sentinels")
    @classmethod
    def _host_port(cls, value: list[str]) -> list[str]:
        for address in value:
            host, _, port = address.rpartition(":")
            if not host or not port.isdigit():
                raise ValueError(f"a sentinel address is host:port, not {address!r}")
        return value

    def redis_target(self) -> RedisTarget:
        """Where Redis is: the URL alone, or the sentinels that name its primary."""
        sentinels = tuple((host, int(port)) for host, _, port in (a.rpartition(":") for a in self.redis_sentinels))
        password = self.redis_sentinel_password.get_secret_value() if self.redis_sentinel_password else None
        return RedisTarget(
            url=self.redis_url, sentinels=sentinels, master_name=self.redis_master_name, sentinel_password=password
        )

    def replication(self) -> Replication:
        """How many replicas confirm a write before it counts."""
        return Replication(replicas=self.redis_min_replicas, timeout_ms=self.redis_replica_timeout_ms)
