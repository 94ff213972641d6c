"""``lorafarm run`` (what ``make run`` starts) heals: a killed worker or devhub comes back, and while the
Hub is down the adapters the farm already knows are still served."""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from lorafarm.cli import ZOO_STAMP
from lorafarm.farm import free_port
from tests.conftest import ROOT

pytestmark = pytest.mark.slow
BODY = {"inputs": "an elephant", "parameters": {"seed": 5, "num_inference_steps": 2}}
RESTART_DELAY_S = 4.0


class Launcher:
    """``python -m lorafarm.cli run`` as a child, its output read line by line in a thread."""

    def __init__(self, zoo: Path, state: Path) -> None:
        self.port, self.state = free_port(), state
        argv = [sys.executable, "-m", "lorafarm.cli", "run", "--pools", "tiny/sdxl-base", "--steps", "2"]
        argv += ["--port", str(self.port), "--hub-port", str(free_port()), "--redis-port", str(free_port())]
        argv += ["--zoo", str(zoo), "--state", str(state), "--restart-delay", str(RESTART_DELAY_S)]
        env = os.environ | {"LORAFARM_HEARTBEAT_S": "0.5"}
        self.proc = subprocess.Popen(
            argv, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        self.lines: queue.Queue[str] = queue.Queue()
        self.seen: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line)

    def wait_for(self, text: str, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=0.5)
            except queue.Empty:
                assert self.proc.poll() is None, "the launcher exited:\n" + "".join(self.seen[-30:])
                continue
            self.seen.append(line)
            if text in line:
                return line
        raise AssertionError(f"no {text!r} after {timeout}s:\n" + "".join(self.seen[-30:]))

    def pid(self, name: str) -> int:
        return int((self.state / "pids" / f"{name}.pid").read_text())

    def post(self, repo: str) -> httpx.Response:
        return httpx.post(f"http://127.0.0.1:{self.port}/models/{repo}", json=BODY, timeout=120)

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGINT)
        try:
            return self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()


@pytest.fixture
def launcher(zoo_dir: Path, tmp_path: Path) -> Iterator[Launcher]:
    (zoo_dir / ZOO_STAMP).write_text("ok\n")  # the session's zoo is the one the launcher would build
    farm = Launcher(zoo_dir, tmp_path / "farm")
    try:
        farm.wait_for("lorafarm is serving", timeout=240)
        yield farm
    finally:
        assert farm.stop() == 0


def _wait_ready(farm: Launcher, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            pools = httpx.get(f"http://127.0.0.1:{farm.port}/status", timeout=5).json()["pools"]
            if all(any(w["status"] == "ready" for w in p["workers"]) for p in pools):
                return
        except (httpx.HTTPError, KeyError, ValueError):
            pass
        time.sleep(0.25)
    raise AssertionError("no ready worker again")


def test_a_killed_worker_and_a_killed_devhub_come_back_and_known_adapters_serve_meanwhile(
    launcher: Launcher,
) -> None:
    first = launcher.post("tiny/sdxl-lora-a")
    assert first.status_code == 200, first.text

    old = launcher.pid("worker-1")
    os.kill(old, signal.SIGKILL)
    launcher.wait_for("event=child_exited name=worker-1", timeout=30)
    launcher.wait_for("event=child_restarted name=worker-1", timeout=60)
    assert launcher.pid("worker-1") != old
    _wait_ready(launcher)
    again = launcher.post("tiny/sdxl-lora-a")
    assert again.status_code == 200, again.text
    assert again.content == first.content  # same request, same bytes, from the restarted worker

    os.kill(launcher.pid("devhub"), signal.SIGKILL)
    exited = launcher.wait_for("event=child_exited name=devhub", timeout=30)
    assert f"restart_in={RESTART_DELAY_S:.1f}s" in exited
    # The Hub is down for a few seconds now: the known adapter is served, an unseen one is refused.
    during = launcher.post("tiny/sdxl-lora-a")
    unseen = launcher.post("tiny/sdxl-lora-c")
    assert launcher.lines.empty() and not any("child_restarted name=devhub" in line for line in launcher.seen)
    assert during.status_code == 200, during.text
    assert during.content == first.content
    assert unseen.status_code == 503 and unseen.json()["error_type"] == "hub_unavailable"
    assert "retry-after" in unseen.headers

    launcher.wait_for("event=child_restarted name=devhub", timeout=60)
    deadline = time.monotonic() + 30
    while (after := launcher.post("tiny/sdxl-lora-c")).status_code == 503 and time.monotonic() < deadline:
        time.sleep(1)  # the router backs off the Hub for a few seconds after an outage
    assert after.status_code == 200, after.text
