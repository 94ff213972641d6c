"""Settings shared by every service. Each service subclasses this in its own ``settings`` module.

Only settings classes read the environment; entrypoints build them and pass them in.
"""

from __future__ import annotations

import json
from typing import Any

from pydantic import AliasChoices, Field
from pydantic_settings import BaseSettings, SettingsConfigDict


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

    redis_url: str = Field(default="redis://127.0.0.1:6379/0", description="Redis URL shared by router and workers.")
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
