"""A key's fair share of a pool: the Redis keys that hold it, and the Lua that keeps it.

Fair scheduling by per-key sub-queues in front of the pool's streams. A key (tenant) may have at
most ``share`` jobs on the pool's streams (the shared one and the workers' own) at a time; its
further jobs wait, oldest first, on the pool's *parked* stream. Each time one of its jobs settles
(the worker publishes its result, a cancel removes it unclaimed, it is dead-lettered), its oldest
parked job moves onto the shared stream, behind whatever other keys queued meanwhile. So a key
that arrives while another has a deep backlog finds at most ``share`` jobs of each other key ahead
of it, however many that key queued: the bound is ``share × (active keys − 1)`` jobs.

Everything else stays as it was: workers read the same streams with the same group, pending
lists, reclaim, adoption and hand-back are untouched, jobs within the share keep adapter
affinity (placed on a worker's own stream), and a released job goes to the shared stream.

The counts are sorted sets scored by when to forget a member (the job's deadline plus
``keys.TENANT_SLOT_SLACK_S``): every settle removes its job by id (idempotent), and a member
whose settle never came (an entry lost with Redis's last second of writes) expires instead.
"""

from __future__ import annotations

from typing import NamedTuple

from common import keys


class TenantKeys(NamedTuple):
    """The Redis keys of one key's jobs in one pool, in the order the scripts take them."""

    #: Its unfinished jobs, all pools (concurrency).
    jobs: str
    #: Its jobs on this pool's streams (the share).
    streamed: str
    #: Its entry ids on the parked stream, oldest first.
    parked: str
    #: The pool's parked stream.
    parked_stream: str
    #: The pool's share (jobs per key on its streams).
    share: str
    #: The pool's shared stream, where released jobs go.
    shared: str

    @classmethod
    def of(cls, pool: str, tenant: str) -> TenantKeys:
        return cls(
            jobs=keys.tenant_jobs(tenant),
            streamed=keys.tenant_streamed(pool, tenant),
            parked=keys.tenant_parked(pool, tenant),
            parked_stream=keys.pool_parked(pool),
            share=keys.pool_share(pool),
            shared=keys.pool_stream(pool),
        )


class Quota(NamedTuple):
    """What one key may hold at a submit (0: no bound)."""

    #: Unfinished jobs, all pools together.
    concurrency: int
    #: Jobs on this pool's streams; past it, further jobs park.
    share: int
    #: Jobs in this pool, on its streams and parked; past it, 429.
    pool_cap: int


#: Where a job's entry hash is (``keys.job_entry`` of the id): a script moving a parked job
#: updates the hash of a job it learns of only then.
ENTRY_PREFIX = keys.job_entry("")

#: Lua functions the scripts that settle or submit a key's jobs start with. ``tk`` is the table
#: ``tenant_keys(i)`` reads from ``KEYS[i]`` onward, in ``TenantKeys`` order.
LUA = """
local function now_s()
  local t = redis.call('TIME')
  return tonumber(t[1]) + tonumber(t[2]) / 1000000
end

local function tenant_keys(i)
  return {jobs = KEYS[i], streamed = KEYS[i + 1], parked = KEYS[i + 2],
          parked_stream = KEYS[i + 3], share = KEYS[i + 4], shared = KEYS[i + 5]}
end

-- Move the key's oldest parked jobs onto the shared stream while it has fewer than the pool's
-- share on the streams; returns how many moved.
local function fill(tk, entry_prefix)
  local share = tonumber(redis.call('GET', tk.share) or '1')
  redis.call('ZREMRANGEBYSCORE', tk.streamed, '-inf', now_s())
  local moved = 0
  while redis.call('ZCARD', tk.streamed) < share do
    local parked_id = redis.call('LPOP', tk.parked)
    if not parked_id then break end
    local found = redis.call('XRANGE', tk.parked_stream, parked_id, parked_id)
    if #found == 1 then
      local f, flat = {}, found[1][2]
      for i = 1, #flat, 2 do f[flat[i]] = flat[i + 1] end
      local id = redis.call('XADD', tk.shared, '*', 'job', f.job, 'images', f.images or '1')
      redis.call('XDEL', tk.parked_stream, parked_id)
      redis.call('ZADD', tk.streamed, f.expiry, f.id)
      local entry = entry_prefix .. f.id
      if redis.call('EXISTS', entry) == 1 then
        redis.call('HSET', entry, 'stream', tk.shared, 'entry_id', id)
      end
      moved = moved + 1
    end
  end
  return moved
end

-- A job of the key settled (by id, idempotently): it counts no more, and a parked one may move up.
local function release(tk, job_id, entry_prefix)
  redis.call('ZREM', tk.jobs, job_id)
  redis.call('ZREM', tk.streamed, job_id)
  return fill(tk, entry_prefix)
end

-- A job of the key removed unclaimed (from a stream, or parked as ``entry_id``): it settles.
local function unqueued(tk, entry_id, job_id, entry_prefix)
  redis.call('LREM', tk.parked, 1, entry_id)
  return release(tk, job_id, entry_prefix)
end
"""
