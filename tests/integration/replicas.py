"""A primary and its replica, both real redis-server processes on loopback, for the replication tests."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import redis

from lorafarm.farm import free_port, redis_server, wait_port
from tests.conftest import stop


class ReplicaPair:
    """``primary_url`` and ``replica_url``; ``silent_replica()`` stops the replica (SIGSTOP) for a block."""

    def __init__(self, root: Path) -> None:
        self.ports = {"primary": free_port(), "replica": free_port()}
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        for name, port in self.ports.items():
            argv = [redis_server(), "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--dir", str(root)]
            argv += ["--appendonly", "yes", "--appendfilename", f"{name}.aof", "--appenddirname", f"{name}-aof"]
            argv += ["--repl-diskless-sync-delay", "0"]
            if name == "replica":
                argv += ["--replicaof", "127.0.0.1", str(self.ports["primary"])]
            self.procs[name] = subprocess.Popen(argv, stdout=subprocess.DEVNULL)
            wait_port(port, self.procs[name])
        self.primary_url = f"redis://127.0.0.1:{self.ports['primary']}/0"
        self.replica_url = f"redis://127.0.0.1:{self.ports['replica']}/0"
        self.synced()

    def synced(self, timeout: float = 10.0) -> None:
        """Wait until the replica holds every write the primary has made so far."""
        client = redis.Redis.from_url(self.primary_url, socket_timeout=5)
        deadline = time.monotonic() + timeout
        client.set("lorafarm:test:sync", "1")  # WAIT confirms the writes of its own connection
        while int(client.wait(1, 200)) < 1:
            assert time.monotonic() < deadline, "the replica does not catch up"
        client.close()

    @contextmanager
    def silent_replica(self) -> Iterator[None]:
        """The replica stopped (it neither receives nor acknowledges), then resumed and caught up."""
        replica = self.procs["replica"]
        os.kill(replica.pid, signal.SIGSTOP)
        try:
            yield
        finally:
            os.kill(replica.pid, signal.SIGCONT)
        self.synced()

    def close(self) -> None:
        for proc in self.procs.values():
            stop(proc)
