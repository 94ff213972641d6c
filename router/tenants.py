"""Who a request is from (its API key) and whether its key may send it now: the key directory, the
``authorize`` and ``admit`` dependencies, and the middleware that puts the rate headers on answers.

A presented key is hashed (SHA-256) and looked up by its hash in the key ring in Redis
(``keys.api_keys()``); the answer, a tenant or none, is cached for ``key_cache_s`` seconds, so a
revoked key stops working on every router within that time. Looking up by hash keeps the
comparison's timing independent of the key (it depends on the hash only); the one key of
``LORAFARM_API_KEY`` is compared with ``hmac.compare_digest``. Neither a key nor its hash is
logged: the log line carries the tenant's name.
"""

from __future__ import annotations

import hmac
import time
from typing import Annotated, Any

import redis.asyncio as aioredis
from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import ValidationError
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from common import errors, keys
from common.connections import redis_errors
from common.tenants import TakeToken, Tenant, hash_key
from router.admission import Bucket, rate_headers, rate_refusal, retry_after_s
from router.services import services
from router.settings import RouterSettings

#: The tenant name of the one key ``LORAFARM_API_KEY`` sets.
API_KEY_TENANT = "default"
#: Keys (hashes) a router remembers at most; past it the oldest are forgotten first.
_CACHE_MAX = 10_000


class KeyDirectory:
    """The tenants behind API keys (cached lookups in Redis), and their rate buckets."""

    def __init__(self, redis: aioredis.Redis, settings: RouterSettings) -> None:
        self.redis = redis
        self.ring = settings.tenant_keys
        self.cache_s = settings.key_cache_s
        self.single: tuple[str, Tenant] | None = None
        if settings.api_key is not None:
            limits = Tenant(
                name=API_KEY_TENANT,
                rate_per_s=settings.api_key_rate_per_s,
                burst=settings.api_key_burst,
                concurrency=settings.api_key_concurrency,
            )
            self.single = (hash_key(settings.api_key.get_secret_value()), limits)
        self._cache: dict[str, tuple[Tenant | None, float]] = {}
        self._take = TakeToken(redis)

    @property
    def required(self) -> bool:
        """Whether a request needs a key (else everyone is the anonymous tenant)."""
        return self.ring or self.single is not None

    async def find(self, key: str) -> Tenant | None:
        """The tenant ``key`` belongs to; None when no such key is configured (or it was revoked)."""
        digest = hash_key(key)
        if self.single is not None and hmac.compare_digest(digest, self.single[0]):
            return self.single[1]
        if not self.ring:
            return None
        cached = self._cache.get(digest)
        if cached is not None and cached[1] > time.monotonic():
            return cached[0]
        async with redis_errors():
            raw = await self.redis.hget(keys.api_keys(), digest)
        tenant = _tenant(raw)
        self._remember(digest, tenant)
        return tenant

    async def take(self, tenant: Tenant) -> Bucket:
        """Take one token from the tenant's bucket (shared by every router, on Redis's clock)."""
        async with redis_errors():
            taken, tokens = await self._take(
                bucket=keys.tenant_bucket(tenant.name), rate_per_s=tenant.rate_per_s, capacity=tenant.capacity
            )
        return Bucket(taken=taken, tokens=tokens, rate_per_s=tenant.rate_per_s, capacity=tenant.capacity)

    def _remember(self, digest: str, tenant: Tenant | None) -> None:
        if len(self._cache) >= _CACHE_MAX:
            now = time.monotonic()
            self._cache = {d: entry for d, entry in self._cache.items() if entry[1] > now}
            while len(self._cache) >= _CACHE_MAX:
                self._cache.pop(next(iter(self._cache)))
        self._cache[digest] = (tenant, time.monotonic() + self.cache_s)


def _tenant(raw: Any) -> Tenant | None:
    if raw is None:
        return None
    try:
        return Tenant.model_validate_json(raw)
    except ValidationError:
        return None  # a record nobody can read grants nothing


# --- the dependencies of the routes -------------------------------------------------------

_bearer = HTTPBearer(auto_error=False, description="Needed when the router has API keys.")


async def authorize(
    request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
) -> Tenant | None:
    """The request's tenant (``request.state.tenant``): None when no key is needed, else 401 without a valid one."""
    directory = services(request).keys
    if not directory.required:
        request.state.tenant = None
        return None
    tenant = await directory.find(credentials.credentials) if credentials is not None else None
    if tenant is None:
        raise errors.Unauthorized("a valid API key is needed: Authorization: Bearer <key>")
    request.state.tenant = tenant
    return tenant


async def admit(request: Request, tenant: Annotated[Tenant | None, Depends(authorize)]) -> Tenant | None:
    """Take a token of the tenant's rate: ``429 rate_limited`` without one; the rate headers either way."""
    if tenant is None or not tenant.rate_per_s:
        return tenant
    bucket = await services(request).keys.take(tenant)
    request.state.rate_headers = rate_headers(bucket)
    if not bucket.taken:
        raise errors.RateLimited(rate_refusal(tenant, bucket), retry_after=retry_after_s(bucket))
    return tenant


class RateHeaders:
    """Adds the rate headers ``admit`` left in the request's state to its answer, image or error alike."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            headers = (scope.get("state") or {}).get("rate_headers")
            if message["type"] == "http.response.start" and headers:
                message["headers"] = [
                    *message.get("headers", []),
                    *((k.lower().encode(), v.encode()) for k, v in headers.items()),
                ]
            await send(message)

        await self.app(scope, receive, send_with_headers)
