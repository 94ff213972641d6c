"""The launcher's restart schedule: backoff per process, reset after a good run, none for stopped ones."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lorafarm.supervisor import Backoff, Supervisor


def test_backoff_doubles_up_to_its_cap() -> None:
    backoff = Backoff(first_s=1.0, factor=2.0, cap_s=5.0)
    assert [backoff.delay(n) for n in range(1, 6)] == [1.0, 2.0, 4.0, 5.0, 5.0]


@dataclass
class _Farm:
    """Processes by name with an exit code (None: running); records restarts. Pure bookkeeping."""

    codes: dict[str, int | None]
    logs: Path = Path("/logs")
    restarts: list[str] = field(default_factory=list)
    fail_next: bool = False

    @property
    def procs(self) -> dict[str, Any]:
        return dict.fromkeys(self.codes)

    def exit_code(self, name: str) -> int | None:
        return self.codes[name]

    def restart(self, name: str) -> None:
        self.restarts.append(name)
        if self.fail_next:
            self.fail_next = False
            raise RuntimeError("exited before listening")
        self.codes[name] = None


class _Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _supervisor(farm: _Farm, clock: _Clock, lines: list[str]) -> Supervisor:
    backoff = Backoff(first_s=1.0, factor=2.0, cap_s=8.0, reset_after_s=60.0)
    return Supervisor(farm, backoff, say=lines.append, clock=clock)  # type: ignore[arg-type]


def test_a_dead_child_is_restarted_after_its_delay_and_its_death_is_logged() -> None:
    farm, clock, lines = _Farm({"worker-1": None, "devhub": None}), _Clock(), []
    sup = _supervisor(farm, clock, lines)
    assert sup.tick() == []
    farm.codes["worker-1"] = -9
    clock.now = 10.0
    assert sup.tick() == []  # scheduled, not yet due
    assert "name=worker-1 exit=-9 restart_in=1.0s" in lines[-1]
    clock.now = 11.0
    assert sup.tick() == ["worker-1"]
    assert farm.restarts == ["worker-1"] and "child_restarted name=worker-1" in lines[-1]


def test_repeated_deaths_back_off_and_a_long_run_resets_the_count() -> None:
    farm, clock, lines = _Farm({"w": None}), _Clock(), []
    sup = _supervisor(farm, clock, lines)
    sup.tick()
    delays = []
    for _ in range(4):
        farm.codes["w"] = 1
        sup.tick()
        delays.append(lines[-1].split("restart_in=")[1].split("s")[0])
        clock.now += 100.0 if len(delays) == 4 else 10.0
        sup.tick()
    assert delays == ["1.0", "2.0", "4.0", "8.0"]
    clock.now += 61.0  # up a minute: the next death starts over
    sup.tick()
    farm.codes["w"] = 1
    sup.tick()
    assert "restart_in=1.0s attempt=1" in lines[-1]


def test_a_failed_restart_is_retried_with_the_next_delay() -> None:
    farm, clock, lines = _Farm({"redis": 1}), _Clock(), []
    sup = _supervisor(farm, clock, lines)
    farm.fail_next = True
    sup.tick()
    clock.now = 1.0
    assert sup.tick() == [] and "child_restart_failed name=redis" in lines[-1]
    sup.tick()  # still dead: scheduled again, later
    assert "restart_in=2.0s attempt=2" in lines[-1]
    clock.now = 3.0
    assert sup.tick() == ["redis"]


def test_running_processes_are_left_alone() -> None:
    farm, clock, lines = _Farm({"router": None}), _Clock(), []
    sup = _supervisor(farm, clock, lines)
    for _ in range(3):
        clock.now += 5
        assert sup.tick() == []
    assert farm.restarts == [] and lines == []
