"""Claiming from the queues of every pool a worker serves: its own streams first, one wait over all.

A multi-base worker is a consumer of each of its pools' groups under one worker id, so one
``XREADGROUP`` can wait on all their streams at once: no pool waits behind another's block.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import redis

from common import keys
from common.protocol import text

if TYPE_CHECKING:
    from worker.queue import Delivery, WorkerQueue

log = logging.getLogger(__name__)


class PoolQueues:
    """The queues of one worker's pools (``WorkerQueue`` each), claimed from together."""

    def __init__(self, queues: Sequence[WorkerQueue]) -> None:
        if not queues:
            raise ValueError("a worker serves at least one pool")
        self.queues = list(queues)
        self._by_stream = {stream: q for q in self.queues for stream in (q.own, q.stream)}

    def claim(self, block_ms: int, *, include_pool: bool = True, count: int = 32) -> list[Delivery]:
        """Jobs placed on this worker in any pool (up to ``count`` a pool) and, with
        ``include_pool``, the next job of each shared stream; with none placed here, waits up to
        ``block_ms`` for the first job of any of the streams.

        A consumer group gone (``NOGROUP``: a peer forgot an own stream while this worker's
        heartbeat had lapsed, or Redis lost its data) is made again, and nothing is returned this round.
        """
        try:
            return self._claim(block_ms, include_pool=include_pool, count=count)
        except redis.ResponseError as exc:
            if not str(exc).startswith("NOGROUP"):
                raise
            log.warning("event=stream_recreated worker=%s error=%s", self.queues[0].worker_id, exc)
            for q in self.queues:
                q.ensure_group()
            return []

    def _claim(self, block_ms: int, *, include_pool: bool, count: int) -> list[Delivery]:
        own = [d for q in self.queues for d in q.read({q.own: ">"}, count=count, block=None)]
        if not include_pool:
            return own
        if own:
            # One shared job of each pool as well: while placements keep the own streams from
            # running dry, the jobs that spilled to the shared streams would otherwise wait behind them.
            return own + [d for q in self.queues for d in q.read({q.stream: ">"}, count=1, block=None)]
        return self._wait(block_ms)

    def _wait(self, block_ms: int) -> list[Delivery]:
        """The next entry of any own or shared stream, each parsed by its pool's queue."""
        first = self.queues[0]
        streams: dict[Any, Any] = {stream: ">" for stream in self._by_stream}
        reply: Any = first.redis.xreadgroup(keys.WORKER_GROUP, first.worker_id, streams, count=1, block=block_ms)
        if isinstance(reply, dict):  # RESP3
            reply = list(reply.items())
        out: list[Delivery] = []
        for stream, entries in reply or []:
            queue = self._by_stream[text(stream)]
            out += queue.parse(text(stream), entries)
        return out
