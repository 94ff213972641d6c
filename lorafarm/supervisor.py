"""Restart what dies: the launcher's ``restart: unless-stopped``, for ``make run``.

``Backoff`` is the pure schedule (1 s, 2 s, 4 s ... capped; forgotten once a process has stayed up
a while); ``Supervisor.tick`` looks at the farm's processes once and restarts the ones that exited
without being stopped, each after its delay. Processes stopped on purpose (``Farm.signal``,
``Farm.stop``) are left alone, so Ctrl-C still stops everything.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from lorafarm.farm import Farm


@dataclass(frozen=True)
class Backoff:
    """Seconds before the n-th restart in a row of one process."""

    first_s: float = 1.0
    factor: float = 2.0
    cap_s: float = 30.0
    #: A process that stayed up this long starts again from ``first_s`` the next time it dies.
    reset_after_s: float = 60.0

    def delay(self, attempt: int) -> float:
        """Delay before restart number ``attempt`` (1 for the first)."""
        return float(min(self.cap_s, self.first_s * self.factor ** max(0, attempt - 1)))


@dataclass
class _Track:
    attempts: int = 0
    started_at: float = 0.0
    due_at: float | None = None  # when the dead process is restarted


@dataclass
class Supervisor:
    """Restarts the farm's dead children with backoff; ``say`` gets one line per event."""

    farm: Farm
    backoff: Backoff = field(default_factory=Backoff)
    say: Callable[[str], None] = print
    clock: Callable[[], float] = time.monotonic
    _tracks: dict[str, _Track] = field(default_factory=dict)

    def tick(self) -> list[str]:
        """Schedule a restart of each process that exited, restart those that are due; their names."""
        now = self.clock()
        restarted = []
        for name in list(self.farm.procs):
            track = self._tracks.setdefault(name, _Track(started_at=now))
            code = self.farm.exit_code(name)
            if code is None:
                if track.due_at is None and now - track.started_at >= self.backoff.reset_after_s:
                    track.attempts = 0
                continue
            if track.due_at is None:
                track.attempts += 1
                track.due_at = now + self.backoff.delay(track.attempts)
                self.say(
                    f"event=child_exited name={name} exit={code} restart_in={track.due_at - now:.1f}s "
                    f"attempt={track.attempts} (logs: {self.farm.logs / (name + '.log')})"
                )
            elif now >= track.due_at:
                track.due_at, track.started_at = None, now
                try:
                    self.farm.restart(name)
                except (RuntimeError, TimeoutError, OSError) as exc:
                    # Exited again before it listened: the next tick schedules the next attempt.
                    self.say(f"event=child_restart_failed name={name} attempt={track.attempts} error={exc}")
                    continue
                self.say(f"event=child_restarted name={name} attempt={track.attempts}")
                restarted.append(name)
        return restarted
