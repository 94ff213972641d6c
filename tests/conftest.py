"""Shared fixtures: a tiny zoo, a real redis-server, a real devhub on loopback.

Every process a fixture starts is stopped by that fixture, by pid.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from lorafarm.farm import free_port, wait_port

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "test-artifacts"

# One torch thread per process: the suite runs several model processes on 2 cores, and
# oversubscribed threads make a 0.1 s generation take seconds.
os.environ.setdefault("OMP_NUM_THREADS", "1")
# Keep every huggingface_hub call of the suite on loopback and quiet.
os.environ.setdefault("HF_HUB_DISABLE_XET", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ["HF_ENDPOINT"] = "http://127.0.0.1:9"  # overridden per test; never the internet


def stop(proc: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="session")
def zoo_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model zoo, built once per session."""
    from devhub.zoo import build_zoo

    root = tmp_path_factory.mktemp("zoo")
    build_zoo(root)
    return root


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real redis-server on a free loopback port, append-only persistence on. Yields its URL."""
    exe = shutil.which("redis-server")
    if exe is None:
        pytest.fail("redis-server is not installed: run `make test`, which installs it")
    port = free_port()
    data = tmp_path_factory.mktemp("redis")
    proc = subprocess.Popen(
        [exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "yes", "--dir", str(data)],
        stdout=subprocess.DEVNULL,
    )
    wait_port(port, proc)
    yield f"redis://127.0.0.1:{port}/0"
    stop(proc)


@pytest.fixture(scope="session")
def devhub_url(zoo_dir: Path) -> Iterator[str]:
    """A devhub process serving the zoo. Yields its endpoint URL."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "devhub", "serve", "--root", str(zoo_dir), "--port", str(port)],
        cwd=ROOT,
    )
    wait_port(port, proc)
    yield f"http://127.0.0.1:{port}"
    stop(proc)


@pytest.fixture
def hf_cache(tmp_path: Path) -> Path:
    """An empty Hub download cache for one test."""
    path = tmp_path / "hf-cache"
    path.mkdir()
    return path
