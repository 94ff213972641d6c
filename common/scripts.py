"""The Lua scripts of the queue protocol: each one registered on a client once, and called by name.

A script runs atomically in Redis, and inside it keys and arguments are only positions
(``KEYS[n]``, ``ARGV[n]``). Each class below holds one script and the one ``__call__`` that lays
out its KEYS and ARGV, so callers name what they pass and the positions live here alone: the Lua
names every position on its first lines, and the call lists them in the same order.

The router runs ``Submit``, ``Unqueue`` and ``Withdraw`` (asyncio client); the worker runs
``Publish``, ``HandBack`` and ``Forget`` (synchronous client). ``Submit``, ``Unqueue``,
``Withdraw`` and ``Publish`` keep a key's fair share as well (``common/shares.py``); the scripts
of the key ring and the rate limit are ``common/tenants.py``'s. A call given ``client`` runs
there instead of on the client the script was registered with: one connection of it, where a
``WAIT`` after the script confirms its writes.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import redis
import redis.asyncio as aioredis
from redis.typing import EncodableT

from common import keys, shares
from common.protocol import text
from common.schemas import Job
from common.shares import Quota, TenantKeys


class Placement(NamedTuple):
    """The worker a job is placed on: its own stream, and its heartbeat that must still exist."""

    stream: str
    heartbeat: str


class TenantJob(NamedTuple):
    """A submitted job's key: its name, its Redis keys in the pool, its quota, and when to forget it."""

    name: str
    keys: TenantKeys
    quota: Quota
    #: Epoch seconds past which the key's counts forget the job (its deadline plus a slack).
    expiry: float


class Submit:
    """Enqueue a job unless the pool is at its bound (or its key at a limit); mark it queued and remember where it is.

    A job of a key (``tenant``) counts against the key's concurrency, and goes on the streams only
    within the key's share of the pool: past it, the job parks (``common/shares.py``).
    """

    LUA = (
        shares.LUA
        + """
local shared, status, entry = KEYS[1], KEYS[2], KEYS[3]
local bound, job, queued, ttl, placed = tonumber(ARGV[1]), ARGV[2], ARGV[3], ARGV[4], ARGV[5] == '1'
local images, tenant, pool, job_id = tonumber(ARGV[6]), ARGV[7], ARGV[8], ARGV[9]
-- The placement's two keys if placed, then the key's six if a tenant's, then the counted streams.
local k = 4
local placement, heartbeat
if placed then placement, heartbeat, k = KEYS[4], KEYS[5], 6 end
local tk
if tenant ~= '' then tk, k = tenant_keys(k), k + 6 end
-- An entry weighs its field 'images' (1 when absent); the bound keeps the entries few to read.
local n = 0
for i = k, #KEYS do
  for _, item in ipairs(redis.call('XRANGE', KEYS[i], '-', '+')) do
    local fields, weight = item[2], 1
    for f = 1, #fields, 2 do
      if fields[f] == 'images' then weight = tonumber(fields[f + 1]) or 1 end
    end
    n = n + weight
  end
end
if n + images > bound then return {'queue_full'} end

local function record(stream, id)
  redis.call('SET', status, queued, 'EX', ttl)
  redis.call('HSET', entry, 'stream', stream, 'entry_id', id)
  if tenant ~= '' then redis.call('HSET', entry, 'pool', pool, 'tenant', tenant) end
  redis.call('EXPIRE', entry, ttl)
end

if tk then
  local concurrency, share, cap, expiry = tonumber(ARGV[10]), tonumber(ARGV[11]), tonumber(ARGV[12]), ARGV[13]
  local now = now_s()
  redis.call('ZREMRANGEBYSCORE', tk.jobs, '-inf', now)
  if concurrency > 0 and redis.call('ZCARD', tk.jobs) >= concurrency then return {'concurrency_limited'} end
  if share > 0 then
    redis.call('ZREMRANGEBYSCORE', tk.streamed, '-inf', now)
    local held, waiting = redis.call('ZCARD', tk.streamed), redis.call('LLEN', tk.parked)
    if cap > 0 and held + waiting >= cap then return {'key_queue_full'} end
    redis.call('SET', tk.share, share)
    redis.call('ZADD', tk.jobs, expiry, job_id)
    if waiting > 0 or held >= share then
      -- Past its share (or behind its own parked jobs): park, oldest first.
      local id = redis.call('XADD', tk.parked_stream, '*', 'job', job, 'images', images, 'id', job_id, 'expiry', expiry)
      redis.call('RPUSH', tk.parked, id)
      record(tk.parked_stream, id)
      fill(tk, ARGV[14])  -- the share may have grown since the key's jobs parked
      return {'parked', id}
    end
    redis.call('ZADD', tk.streamed, expiry, job_id)
  else
    redis.call('ZADD', tk.jobs, expiry, job_id)
  end
end

local target = shared
-- A job placed on a worker whose heartbeat expired since the placement goes to the shared
-- stream instead: a peer may already have forgotten that worker's own stream.
if placed and redis.call('EXISTS', heartbeat) == 1 then target = placement end
local id = redis.call('XADD', target, '*', 'job', job, 'images', images)
record(target, id)
return {'queued', id}
"""
    )

    def __init__(self, client: aioredis.Redis) -> None:
        self._script = client.register_script(self.LUA)

    async def __call__(
        self,
        *,
        shared: str,
        status: str,
        entry: str,
        counted: list[str],
        placed: Placement | None,
        tenant: TenantJob | None,
        bound: int,
        job: Job,
        images: int,
        queued: str,
        ttl_s: int,
        client: Any = None,
    ) -> tuple[str, str | None]:
        """``("queued" or "parked", entry id)``, or a refusal and None: ``queue_full`` when the job's
        ``images`` would take ``counted`` past ``bound`` images, ``concurrency_limited``, ``key_queue_full``.

        ``placed``: the worker chosen for the job, or None for the shared stream.
        """
        # KEYS[1] shared stream, KEYS[2] job status, KEYS[3] job entry hash, then the placement's
        # stream and heartbeat (when placed), then the key's TenantKeys (a tenant's job), then the counted streams.
        key_list = [shared, status, entry, *(placed or ()), *(tenant.keys if tenant else ()), *counted]
        # ARGV[1] bound, ARGV[2] job JSON, ARGV[3] queued status JSON, ARGV[4] TTL (s), ARGV[5] placed flag,
        # ARGV[6] the job's images, ARGV[7] tenant name ('' for none), ARGV[8] pool, ARGV[9] job id; a
        # tenant's job only: ARGV[10] concurrency, ARGV[11] share, ARGV[12] pool cap, ARGV[13] expiry
        # (epoch s), ARGV[14] entry prefix.
        args: list[EncodableT] = [bound, job.model_dump_json(), queued, ttl_s, "1" if placed else "0", images]
        args += [tenant.name if tenant else "", job.pool, job.id]
        if tenant:
            args += [*tenant.quota, repr(tenant.expiry), shares.ENTRY_PREFIX]
        reply: Any = await self._script(keys=key_list, args=args, client=client)
        outcome = text(reply[0])
        return outcome, (text(reply[1]) if len(reply) > 1 else None)


class Unqueue:
    """Delete a job's entry only while no worker holds it (not in the group's pending list).

    A key's job removed so (from the streams or parked) settles: it counts no more for its key,
    and the key's oldest parked job may move up.
    """

    LUA = (
        shares.LUA
        + """
local stream, status = KEYS[1], KEYS[2]
local group, entry_id, cancelled, ttl, job_id = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
-- The parked stream has no group: XPENDING fails there, and nobody holds a parked job.
local ok, pending = pcall(redis.call, 'XPENDING', stream, group, entry_id, entry_id, 1)
if ok and #pending > 0 then return 0 end
local n = redis.call('XDEL', stream, entry_id)
if n == 1 then
  redis.call('SET', status, cancelled, 'EX', ttl)
  if #KEYS > 2 then unqueued(tenant_keys(3), entry_id, job_id, ARGV[6]) end
end
return n
"""
    )

    def __init__(self, client: aioredis.Redis) -> None:
        self._script = client.register_script(self.LUA)

    async def __call__(
        self,
        *,
        stream: str,
        status: str,
        entry_id: str,
        job_id: str,
        tenant: TenantKeys | None,
        cancelled: str,
        ttl_s: int,
        client: Any = None,
    ) -> bool:
        """True when the entry was removed unclaimed (and the status set to ``cancelled``)."""
        # KEYS[1] the stream the entry is on, KEYS[2] job status, then the key's TenantKeys (a tenant's job).
        # ARGV[1] group, ARGV[2] entry id, ARGV[3] cancelled status JSON, ARGV[4] TTL (s), ARGV[5] job id,
        # ARGV[6] entry prefix.
        key_list = [stream, status, *(tenant or ())]
        args: list[EncodableT] = [keys.WORKER_GROUP, entry_id, cancelled, ttl_s, job_id, shares.ENTRY_PREFIX]
        removed = await self._script(keys=key_list, args=args, client=client)
        return bool(removed)


class Withdraw:
    """Take back a job that was never accepted: its entry removed (or, if a worker holds it, marked
    cancelled, so that the worker drops it unrun), its status and entry hash deleted.

    A key's job removed so settles for its key (a held one settles when the worker drops it).
    """

    LUA = (
        shares.LUA
        + """
local stream, status, entry, cancel = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local group, entry_id, ttl, job_id = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local ok, pending = pcall(redis.call, 'XPENDING', stream, group, entry_id, entry_id, 1)
if ok and #pending > 0 then
  redis.call('SET', cancel, '1', 'EX', ttl)
else
  redis.call('XDEL', stream, entry_id)
  if #KEYS > 4 then unqueued(tenant_keys(5), entry_id, job_id, ARGV[5]) end
end
redis.call('DEL', status, entry)
return 1
"""
    )

    def __init__(self, client: aioredis.Redis) -> None:
        self._script = client.register_script(self.LUA)

    async def __call__(
        self,
        *,
        stream: str,
        status: str,
        entry: str,
        cancel: str,
        entry_id: str,
        job_id: str,
        tenant: TenantKeys | None,
        ttl_s: int,
    ) -> None:
        """Withdraw entry ``entry_id`` of ``stream``: the job is as if never submitted."""
        # KEYS[1] the stream the entry is on, KEYS[2] job status, KEYS[3] job entry hash, KEYS[4] cancel
        # mark, then the key's TenantKeys (a tenant's job).
        # ARGV[1] group, ARGV[2] entry id, ARGV[3] cancel mark TTL (s), ARGV[4] job id, ARGV[5] entry prefix.
        key_list = [stream, status, entry, cancel, *(tenant or ())]
        args: list[EncodableT] = [keys.WORKER_GROUP, entry_id, ttl_s, job_id, shares.ENTRY_PREFIX]
        await self._script(keys=key_list, args=args)


class Publish:
    """Write a job's result once (the first writer wins), then wake its waiter and set its final status.

    A key's job settles with it: it counts no more for its key, and the key's oldest parked job
    may move up (only on the first write, so a duplicate result releases nothing).
    """

    LUA = (
        shares.LUA
        + """
local result, done, status, events = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local meta, ttl, final = ARGV[1], ARGV[2], ARGV[3]
if redis.call('HSETNX', result, 'meta', meta) == 0 then return 0 end
-- Image k (from 0) is ARGV[6 + k], stored as field 'image:k'.
for k = 6, #ARGV do redis.call('HSET', result, 'image:' .. (k - 6), ARGV[k]) end
redis.call('EXPIRE', result, ttl)
redis.call('RPUSH', done, '1')
redis.call('EXPIRE', done, ttl)
redis.call('SET', status, final, 'EX', ttl)
redis.call('PUBLISH', events, final)
if #KEYS > 4 then release(tenant_keys(5), ARGV[4], ARGV[5]) end
return 1
"""
    )

    def __init__(self, client: redis.Redis) -> None:
        self._script = client.register_script(self.LUA)

    def __call__(
        self,
        *,
        result: str,
        done: str,
        status: str,
        events: str,
        meta: str,
        images: list[bytes],
        final: str,
        ttl_s: int,
        job_id: str,
        tenant: TenantKeys | None = None,
        client: Any = None,
    ) -> bool:
        """False when a result was written already (nothing changes then)."""
        # KEYS[1] job result hash, KEYS[2] job done list, KEYS[3] job status, KEYS[4] job events channel,
        # then the key's TenantKeys (a tenant's job).
        # ARGV[1] result JSON, ARGV[2] TTL (s), ARGV[3] final status JSON, ARGV[4] job id, ARGV[5] entry
        # prefix, then each image's bytes in order.
        key_list = [result, done, status, events, *(tenant or ())]
        args: list[EncodableT] = [meta, ttl_s, final, job_id, shares.ENTRY_PREFIX, *images]
        return bool(self._script(keys=key_list, args=args, client=client))


class HandBack:
    """Move a job from the entry a worker holds back to the pool's shared stream."""

    LUA = """
local held, shared, entry = KEYS[1], KEYS[2], KEYS[3]
local entry_id, job, group, images = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local id = redis.call('XADD', shared, '*', 'job', job, 'images', images)
redis.call('XACK', held, group, entry_id)
redis.call('XDEL', held, entry_id)
if redis.call('EXISTS', entry) == 1 then
  redis.call('HSET', entry, 'stream', shared, 'entry_id', id)
end
return id
"""

    def __init__(self, client: redis.Redis) -> None:
        self._script = client.register_script(self.LUA)

    def __call__(self, *, held: str, shared: str, entry: str, entry_id: str, job: str, images: int) -> None:
        """Re-enqueue ``job`` on ``shared``, settle ``entry_id`` on ``held``, and point ``entry`` at the new entry."""
        # KEYS[1] the stream the entry is on, KEYS[2] shared stream, KEYS[3] job entry hash.
        # ARGV[1] entry id on KEYS[1], ARGV[2] job JSON, ARGV[3] group, ARGV[4] the job's images.
        self._script(keys=[held, shared, entry], args=[entry_id, job, keys.WORKER_GROUP, images])


class Forget:
    """Forget a dead worker whose own stream is empty: delete the stream, drop it from the pool."""

    LUA = """
local stream, members, heartbeat = KEYS[1], KEYS[2], KEYS[3]
local worker_id = ARGV[1]
if redis.call('EXISTS', heartbeat) == 1 then return 0 end
if redis.call('XLEN', stream) > 0 then return 0 end
redis.call('DEL', stream)
redis.call('ZREM', members, worker_id)
return 1
"""

    def __init__(self, client: redis.Redis) -> None:
        self._script = client.register_script(self.LUA)

    def __call__(self, *, stream: str, members: str, heartbeat: str, worker_id: str) -> bool:
        """True when the worker was forgotten; False while it lives again or its stream holds jobs."""
        # KEYS[1] the worker's own stream, KEYS[2] the pool's worker set, KEYS[3] its heartbeat.
        # ARGV[1] worker id.
        return bool(self._script(keys=[stream, members, heartbeat], args=[worker_id]))
