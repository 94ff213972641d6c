"""Tenants: who an API key names, what it may do, and the key ring in Redis that every router reads.

A key is shown once, when it is made (``lorafarm keys add``); Redis keeps only its SHA-256 in
``keys.api_keys()``, beside the tenant's name and limits. A router looks a presented key up by
its hash (``router/tenants.py``), so neither Redis nor a log ever holds a key. SHA-256 without a
salt is enough here: a key is 256 random bits, not a password, so no dictionary reaches it.
"""

from __future__ import annotations

import hashlib
import math
import secrets
import time
from typing import Any

import redis
import redis.asyncio as aioredis
from pydantic import BaseModel, Field

from common import keys
from common.protocol import text

#: What a tenant name may hold: it is part of Redis key names and of log lines.
TENANT_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
#: Every key starts with this, so a leaked one is recognisable (secret scanners, logs).
KEY_PREFIX = "lf_"


class Tenant(BaseModel):
    """A client of the API: its name and its limits (0: no limit)."""

    name: str = Field(pattern=TENANT_NAME)
    rate_per_s: float = Field(default=0.0, ge=0, description="Generation requests per second, sustained.")
    burst: int = Field(default=0, ge=0, description="Requests at once above the rate (0: one second's worth).")
    concurrency: int = Field(default=0, ge=0, description="Jobs unfinished at once, all pools together.")
    created_at: float = Field(default_factory=time.time)

    @property
    def capacity(self) -> int:
        """Size of the token bucket: ``burst``, or one second's worth of the rate."""
        return self.burst or max(1, math.ceil(self.rate_per_s))


def new_key() -> str:
    """A fresh API key: 256 random bits, URL-safe."""
    return KEY_PREFIX + secrets.token_urlsafe(32)


def hash_key(key: str) -> str:
    """The SHA-256 (hex) a key is stored and looked up by."""
    return hashlib.sha256(key.encode()).hexdigest()


class KeyRing:
    """The API keys in Redis, managed by name (synchronous: the ``lorafarm keys`` command line)."""

    def __init__(self, client: redis.Redis) -> None:
        self.redis = client
        self._add = AddKey(client)
        self._revoke = RevokeKey(client)

    def add(self, tenant: Tenant) -> str | None:
        """Make a key for ``tenant`` and store its hash; the key is returned once. None: the name is taken."""
        key = new_key()
        added = self._add(
            ring=keys.api_keys(),
            names=keys.api_key_names(),
            name=tenant.name,
            digest=hash_key(key),
            record=tenant.model_dump_json(),
        )
        return key if added else None

    def tenants(self) -> list[Tenant]:
        """Every tenant with a key, by name."""
        raw: Any = self.redis.hgetall(keys.api_keys())
        return sorted((Tenant.model_validate_json(v) for v in raw.values()), key=lambda t: t.name)

    def revoke(self, name: str) -> bool:
        """Delete the tenant's key; False when no key has that name. Routers stop accepting it within
        their key cache's lifetime (``LORAFARM_KEY_CACHE_S``)."""
        return self._revoke(ring=keys.api_keys(), names=keys.api_key_names(), name=name)


# --- the scripts: the rate bucket (router) and the key ring (the command line) -------------


class TakeToken:
    """Take one token from a key's bucket (rate limit), refilled at ``rate`` per second up to ``capacity``."""

    LUA = """
local bucket = KEYS[1]
local rate, capacity = tonumber(ARGV[1]), tonumber(ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local state = redis.call('HMGET', bucket, 'tokens', 'at')
local tokens, at = tonumber(state[1]) or capacity, tonumber(state[2]) or now
tokens = math.min(capacity, tokens + math.max(0, now - at) * rate)
local taken = 0
if tokens >= 1 then tokens, taken = tokens - 1, 1 end
redis.call('HSET', bucket, 'tokens', tostring(tokens), 'at', tostring(now))
-- Gone once it would be full again: an idle key keeps no state.
redis.call('PEXPIRE', bucket, math.ceil((capacity - tokens) / rate * 1000) + 1000)
return {taken, tostring(tokens)}
"""

    def __init__(self, client: aioredis.Redis) -> None:
        self._script = client.register_script(self.LUA)

    async def __call__(self, *, bucket: str, rate_per_s: float, capacity: int) -> tuple[bool, float]:
        """(whether a token was taken, the tokens left); Redis's clock, so every router agrees."""
        # KEYS[1] the key's bucket. ARGV[1] tokens per second, ARGV[2] capacity.
        reply: Any = await self._script(keys=[bucket], args=[repr(rate_per_s), capacity])
        return bool(int(reply[0])), float(text(reply[1]))


class AddKey:
    """Store a tenant's key hash and record, unless the name has a key already."""

    LUA = """
local ring, names = KEYS[1], KEYS[2]
local name, digest, record = ARGV[1], ARGV[2], ARGV[3]
if redis.call('HSETNX', names, name, digest) == 0 then return 0 end
redis.call('HSET', ring, digest, record)
return 1
"""

    def __init__(self, client: redis.Redis) -> None:
        self._script = client.register_script(self.LUA)

    def __call__(self, *, ring: str, names: str, name: str, digest: str, record: str) -> bool:
        """False when ``name`` is taken (nothing changes then)."""
        # KEYS[1] the key ring, KEYS[2] its name index. ARGV[1] name, ARGV[2] key hash, ARGV[3] tenant JSON.
        return bool(self._script(keys=[ring, names], args=[name, digest, record]))


class RevokeKey:
    """Delete a tenant's key by name."""

    LUA = """
local ring, names = KEYS[1], KEYS[2]
local digest = redis.call('HGET', names, ARGV[1])
if not digest then return 0 end
redis.call('HDEL', ring, digest)
redis.call('HDEL', names, ARGV[1])
return 1
"""

    def __init__(self, client: redis.Redis) -> None:
        self._script = client.register_script(self.LUA)

    def __call__(self, *, ring: str, names: str, name: str) -> bool:
        """False when no key has that name."""
        # KEYS[1] the key ring, KEYS[2] its name index. ARGV[1] name.
        return bool(self._script(keys=[ring, names], args=[name]))
