"""A replicated Redis on loopback for the farm (``FarmConfig(redis_ha=True)``): a primary, a
replica and three sentinels, each with its own folder under the farm's state folder.

The sentinels watch the primary under ``MASTER_NAME`` (quorum 2) with short timings, so that a
failover takes seconds: a primary silent for ``DOWN_AFTER_MS`` is down, and a replica is promoted.
Every service gets the sentinels' addresses (``LORAFARM_REDIS_SENTINELS``) and finds the primary
through them; the farm's password and TLS apply to the Redis servers and the sentinels alike.

The two servers keep their process names (``redis``, ``redis-replica``) while their roles change:
``primary()`` asks the sentinels which one is the primary now. A server started again comes back
as a replica of the current primary (``rejoin``), as an orchestrator's start script would do it,
so an old primary never serves its stale data.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import redis

from common.connections import RedisTarget
from lorafarm.farm import free_port, redis_server

if TYPE_CHECKING:
    from lorafarm.farm import Farm

MASTER_NAME = "lorafarm"
NODES = ("redis", "redis-replica")
SENTINELS = ("sentinel-1", "sentinel-2", "sentinel-3")
QUORUM = 2
DOWN_AFTER_MS = 1000
FAILOVER_TIMEOUT_MS = 5000


class ReplicatedRedis:
    """The Redis processes of one farm: ``NODES`` (a primary and its replica) and ``SENTINELS``."""

    def __init__(self, farm: Farm) -> None:
        self.farm = farm
        self.ports = {NODES[0]: farm.redis_port} | {name: free_port() for name in (*NODES[1:], *SENTINELS)}

    @property
    def nodes(self) -> tuple[str, ...]:
        return NODES

    @property
    def names(self) -> tuple[str, ...]:
        """Every process name, servers first (stopped last, after the sentinels, by ``Farm.stop``)."""
        return (*SENTINELS, *NODES)

    def data_dir(self, name: str) -> Path:
        """The folder of one process: a server's append-only file, a sentinel's config."""
        return self.farm.config.state_dir / name

    # --- starting ------------------------------------------------------------------

    def start(self, *, timeout: float = 30.0) -> None:
        """Start the primary, its replica and the sentinels; return once the replica is in sync and the
        sentinels watch both servers and each other."""
        self.start_node(NODES[0], primary=None)
        self.start_node(NODES[1], primary=NODES[0])
        for name in SENTINELS:
            self.start_sentinel(name)
        self.wait_replicated(timeout=timeout)
        deadline = time.monotonic() + timeout
        while not self._watched():
            if time.monotonic() > deadline:
                raise TimeoutError(f"the sentinels do not see a primary with a replica; logs in {self.farm.logs}")
            time.sleep(0.1)

    def wait_replicated(self, *, timeout: float = 30.0) -> None:
        """Wait until the primary has a replica in sync (``WAIT 1`` counts only those)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                if int(self._client(self.primary_port()).wait(1, 100)) >= 1:
                    return
            except (redis.ConnectionError, redis.TimeoutError, RuntimeError):
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"no replica in sync after {timeout}s; logs in {self.farm.logs}")
            time.sleep(0.1)

    def start_node(self, name: str, *, primary: str | None) -> None:
        """Start one server, as a replica of ``primary`` (a node name) when given."""
        argv = self.farm.redis_argv(self.ports[name], self.data_dir(name))
        # A replica (re)joining gets its full copy at once, not after the 5 s that would let more replicas join.
        argv += ["--repl-diskless-sync-delay", "0"]
        if self.farm.config.redis_password:
            # A primary demoted to replica must authenticate to the new primary.
            argv += ["--masterauth", self.farm.config.redis_password]
        if self.farm.config.redis_tls:
            argv += ["--tls-replication", "yes"]
        if primary is not None:
            argv += ["--replicaof", "127.0.0.1", str(self.ports[primary])]
        self.farm.spawn(name, argv, self.ports[name])

    def start_sentinel(self, name: str) -> None:
        """Start one sentinel; its config is written once, then the sentinel keeps it up to date."""
        folder = self.data_dir(name)
        folder.mkdir(parents=True, exist_ok=True)
        conf = folder / "sentinel.conf"
        if not conf.exists():
            conf.write_text(self._sentinel_conf(name, folder))
        argv = [redis_server(), str(conf), "--sentinel"]
        self.farm.spawn(name, argv, self.ports[name])

    def rejoin(self, name: str) -> None:
        """Start a server again as a replica of the current primary (with whatever its folder still holds)."""
        self.start_node(name, primary=self.primary())

    # --- finding -------------------------------------------------------------------

    def primary(self) -> str:
        """The node the sentinels name the primary now."""
        port = self.primary_port()
        return next(name for name in NODES if self.ports[name] == port)

    def primary_port(self) -> int:
        """The port of the server the sentinels name the primary now (the first one that answers)."""
        for sentinel in SENTINELS:
            try:
                address: Any = self._client(self.ports[sentinel]).sentinel_get_master_addr_by_name(MASTER_NAME)
            except (redis.ConnectionError, redis.TimeoutError):
                continue
            if address:
                return int(address[1])
        raise RuntimeError("no sentinel names a primary")

    def target(self) -> RedisTarget:
        """Redis as the services reach it: through the sentinels."""
        sentinels = tuple(("127.0.0.1", self.ports[name]) for name in SENTINELS)
        return RedisTarget(
            url=self.farm.redis_url,
            sentinels=sentinels,
            master_name=MASTER_NAME,
            sentinel_password=self.farm.config.redis_password,
        )

    def service_env(self) -> dict[str, str]:
        """The settings every service gets: where the sentinels are, and the replicas a write needs."""
        env = {
            "LORAFARM_REDIS_SENTINELS": ",".join(f"127.0.0.1:{self.ports[name]}" for name in SENTINELS),
            "LORAFARM_REDIS_MASTER_NAME": MASTER_NAME,
            "LORAFARM_REDIS_MIN_REPLICAS": str(self.farm.config.redis_min_replicas),
        }
        if self.farm.config.redis_password:
            env["LORAFARM_REDIS_SENTINEL_PASSWORD"] = self.farm.config.redis_password
        return env

    # --- helpers -------------------------------------------------------------------

    def _sentinel_conf(self, name: str, folder: Path) -> str:
        config = self.farm.config
        port = self.ports[name]
        lines = [f"port {port}", "bind 127.0.0.1", f'dir "{folder}"']
        if config.redis_tls:
            tls = self.farm.tls_args()
            lines[0] = f"port 0\ntls-port {port}\ntls-replication yes"
            lines += [f"{key.removeprefix('--')} {value}" for key, value in zip(tls[::2], tls[1::2], strict=True)]
        lines.append(f"sentinel monitor {MASTER_NAME} 127.0.0.1 {self.ports[NODES[0]]} {QUORUM}")
        lines.append(f"sentinel down-after-milliseconds {MASTER_NAME} {DOWN_AFTER_MS}")
        lines.append(f"sentinel failover-timeout {MASTER_NAME} {FAILOVER_TIMEOUT_MS}")
        if config.redis_password:
            # The same password for the servers and the sentinels (which use it with each other too).
            lines += [
                f"sentinel auth-pass {MASTER_NAME} {config.redis_password}",
                f"requirepass {config.redis_password}",
            ]
        return "\n".join(lines) + "\n"

    def _client(self, port: int) -> redis.Redis:
        """A client of one server or sentinel of this set (the same password and TLS for all)."""
        tls = self.farm.config.redis_tls
        return redis.Redis(
            host="127.0.0.1",
            port=port,
            password=self.farm.config.redis_password,
            socket_timeout=1.0,
            ssl=tls,
            ssl_ca_certs=str(self.farm.tls_cert) if tls else None,
        )

    def _watched(self) -> bool:
        """Every sentinel names the first primary and sees its replica and the other sentinels."""
        for sentinel in SENTINELS:
            try:
                state: Any = self._client(self.ports[sentinel]).sentinel_master(MASTER_NAME)
            except (redis.ConnectionError, redis.TimeoutError, redis.ResponseError):
                return False
            if int(state.get("num-slaves", 0)) < 1 or int(state.get("num-other-sentinels", 0)) < len(SENTINELS) - 1:
                return False
        return True
