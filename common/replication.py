"""Acknowledge only what is replicated: a write counts once enough replicas confirm it (``WAIT``).

Redis replicates asynchronously: a write the primary answered is lost if the primary's machine
dies before a replica received it. ``WAIT n timeout`` blocks until ``n`` replicas acknowledge
every write made *on the same connection* so far, or the timeout passes, and answers how many
did. So each write that must survive a failover is followed, on its own connection, by a
``WAIT`` (``confirm_on``), and counts only when ``confirmed``.

What is confirmed: a job before the router accepts it (202, or in flight for a sync request), a
result and its acknowledgement before a worker lets the job go, a cancel before the client is
told. With ``replicas == 0`` (one Redis) nothing waits and no command is added.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Replication:
    """Replicas that must confirm a write, and the longest the writer waits for them."""

    replicas: int = 0
    timeout_ms: int = 500

    @property
    def required(self) -> bool:
        """Whether writes wait for replicas at all."""
        return self.replicas > 0

    def confirm_on(self, pipe: Any) -> None:
        """Queue the ``WAIT`` after the writes already queued on ``pipe`` (a non-transactional pipeline)."""
        if self.required:
            pipe.wait(self.replicas, self.timeout_ms)

    def confirmed(self, replies: Sequence[Any]) -> bool:
        """Whether the ``WAIT`` that ``confirm_on`` queued last on the pipeline counted enough replicas."""
        return not self.required or int(replies[-1]) >= self.replicas

    def counts(self, acknowledged: int) -> bool:
        """Whether ``acknowledged`` replicas (a ``WAIT`` reply) are enough."""
        return acknowledged >= self.replicas
