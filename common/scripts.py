"""The Lua scripts of the queue protocol: each one registered on a client once, and called by name.

A script runs atomically in Redis, and inside it keys and arguments are only positions
(``KEYS[n]``, ``ARGV[n]``). Each class below holds one script and the one ``__call__`` that lays
out its KEYS and ARGV, so callers name what they pass and the positions live here alone: the Lua
names every position on its first lines, and the call lists them in the same order.

The router runs ``Submit``, ``Unqueue`` and ``Withdraw`` (asyncio client); the worker runs
``Publish``, ``HandBack`` and ``Forget`` (synchronous client). A call given ``client`` runs there
instead of on the client the script was registered with: one connection of it, or a pipeline
(the reply then comes from ``execute``), where a ``WAIT`` after the script confirms its writes.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import redis
import redis.asyncio as aioredis
from redis.typing import EncodableT

from common import keys


class Placement(NamedTuple):
    """The worker a job is placed on: its own stream, and its heartbeat that must still exist."""

    stream: str
    heartbeat: str


class Submit:
    """Enqueue a job unless its images would take the pool past its bound; mark it queued, remember where."""

    LUA = """
local shared, status, entry = KEYS[1], KEYS[2], KEYS[3]
local bound, job, queued, ttl, placed = tonumber(ARGV[1]), ARGV[2], ARGV[3], ARGV[4], ARGV[5] == '1'
local images = tonumber(ARGV[6])
-- The pool's streams, whose images the bound counts, follow the placement's two keys if any.
-- An entry weighs its field 'images' (1 when absent); the bound keeps the entries few to read.
local n = 0
for i = (placed and 6 or 4), #KEYS do
  for _, item in ipairs(redis.call('XRANGE', KEYS[i], '-', '+')) do
    local fields, weight = item[2], 1
    for f = 1, #fields, 2 do
      if fields[f] == 'images' then weight = tonumber(fields[f + 1]) or 1 end
    end
    n = n + weight
  end
end
if n + images > bound then return false end
local target = shared
-- A job placed on a worker whose heartbeat (KEYS[5]) expired since the placement goes to the
-- shared stream instead: a peer may already have forgotten that worker's stream (KEYS[4]).
if placed and redis.call('EXISTS', KEYS[5]) == 1 then target = KEYS[4] end
local id = redis.call('XADD', target, '*', 'job', job, 'images', images)
redis.call('SET', status, queued, 'EX', ttl)
redis.call('HSET', entry, 'stream', target, 'entry_id', id)
redis.call('EXPIRE', entry, ttl)
return id
"""

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
        bound: int,
        job: str,
        images: int,
        queued: str,
        ttl_s: int,
        client: Any = None,
    ) -> bytes | str | None:
        """The new entry's id, or None when the job's ``images`` would take ``counted`` past ``bound`` images.

        ``placed``: the worker chosen for the job, or None for the shared stream.
        """
        # KEYS[1] shared stream, KEYS[2] job status, KEYS[3] job entry hash,
        # KEYS[4] and KEYS[5] the placement's stream and heartbeat (only when placed), then the counted streams.
        key_list = [shared, status, entry, *(placed or ()), *counted]
        # ARGV[1] bound, ARGV[2] job JSON, ARGV[3] queued status JSON, ARGV[4] TTL (s), ARGV[5] placed flag,
        # ARGV[6] the job's images.
        args: list[EncodableT] = [bound, job, queued, ttl_s, "1" if placed else "0", images]
        return await self._script(keys=key_list, args=args, client=client)


class Unqueue:
    """Delete a job's entry only while no worker holds it (not in the group's pending list)."""

    LUA = """
local stream, status = KEYS[1], KEYS[2]
local group, entry_id, cancelled, ttl = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local ok, pending = pcall(redis.call, 'XPENDING', stream, group, entry_id, entry_id, 1)
if ok and #pending > 0 then return 0 end
local n = redis.call('XDEL', stream, entry_id)
if n == 1 then redis.call('SET', status, cancelled, 'EX', ttl) end
return n
"""

    def __init__(self, client: aioredis.Redis) -> None:
        self._script = client.register_script(self.LUA)

    async def __call__(
        self, *, stream: str, status: str, entry_id: str, cancelled: str, ttl_s: int, client: Any = None
    ) -> bool:
        """True when the entry was removed unclaimed (and the status set to ``cancelled``)."""
        # KEYS[1] the stream the entry is on, KEYS[2] job status.
        # ARGV[1] group, ARGV[2] entry id, ARGV[3] cancelled status JSON, ARGV[4] TTL (s).
        args: list[EncodableT] = [keys.WORKER_GROUP, entry_id, cancelled, ttl_s]
        removed = await self._script(keys=[stream, status], args=args, client=client)
        return bool(removed)


class Withdraw:
    """Take back a job that was never accepted: its entry removed (or, if a worker holds it, marked
    cancelled, so that the worker drops it unrun), its status and entry hash deleted."""

    LUA = """
local stream, status, entry, cancel = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local group, entry_id, ttl = ARGV[1], ARGV[2], ARGV[3]
local ok, pending = pcall(redis.call, 'XPENDING', stream, group, entry_id, entry_id, 1)
if ok and #pending > 0 then
  redis.call('SET', cancel, '1', 'EX', ttl)
else
  redis.call('XDEL', stream, entry_id)
end
redis.call('DEL', status, entry)
return 1
"""

    def __init__(self, client: aioredis.Redis) -> None:
        self._script = client.register_script(self.LUA)

    async def __call__(self, *, stream: str, status: str, entry: str, cancel: str, entry_id: str, ttl_s: int) -> None:
        """Withdraw entry ``entry_id`` of ``stream``: the job is as if never submitted."""
        # KEYS[1] the stream the entry is on, KEYS[2] job status, KEYS[3] job entry hash, KEYS[4] cancel mark.
        # ARGV[1] group, ARGV[2] entry id, ARGV[3] cancel mark TTL (s).
        await self._script(keys=[stream, status, entry, cancel], args=[keys.WORKER_GROUP, entry_id, ttl_s])


class Publish:
    """Write a job's result once (the first writer wins), then wake its waiter and set its final status."""

    LUA = """
local result, done, status, events = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local meta, ttl, final = ARGV[1], ARGV[2], ARGV[3]
if redis.call('HSETNX', result, 'meta', meta) == 0 then return 0 end
-- Image k (from 0) is ARGV[4 + k], stored as field 'image:k'.
for k = 4, #ARGV do redis.call('HSET', result, 'image:' .. (k - 4), ARGV[k]) end
redis.call('EXPIRE', result, ttl)
redis.call('RPUSH', done, '1')
redis.call('EXPIRE', done, ttl)
redis.call('SET', status, final, 'EX', ttl)
redis.call('PUBLISH', events, final)
return 1
"""

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
        client: Any = None,
    ) -> bool:
        """False when a result was written already (nothing changes then)."""
        # KEYS[1] job result hash, KEYS[2] job done list, KEYS[3] job status, KEYS[4] job events channel.
        # ARGV[1] result JSON, ARGV[2] TTL (s), ARGV[3] final status JSON, then each image's bytes in order.
        args: list[EncodableT] = [meta, ttl_s, final, *images]
        return bool(self._script(keys=[result, done, status, events], args=args, client=client))


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
