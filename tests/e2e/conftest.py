"""A whole farm on loopback (redis-server, devhub, router, one worker per tiny base), per module."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from lorafarm.farm import Farm, FarmConfig


@pytest.fixture(scope="module")
def farm(zoo_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Farm]:
    state = tmp_path_factory.mktemp("farm")
    farm = Farm(
        FarmConfig(
            state_dir=state,
            zoo_dir=zoo_dir,
            env={"LORAFARM_DEFAULT_STEPS": "2", "LORAFARM_HEARTBEAT_S": "0.5"},
        )
    )
    try:
        farm.start()
        yield farm
    finally:
        farm.stop()
