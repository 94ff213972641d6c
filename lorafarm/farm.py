"""Start a whole farm on loopback: redis-server, devhub, router, workers. Stop exactly what was started.

Used by ``make run``, the end-to-end tests and the load benchmark. With ``redis_ha`` Redis is a
primary, a replica and three sentinels (``lorafarm/replicated.py``).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import quote

import httpx

from common.connections import RedisTarget

if TYPE_CHECKING:
    from lorafarm.replicated import ReplicatedRedis

REPO_ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class FarmConfig:
    state_dir: Path
    zoo_dir: Path
    pools: list[str] = field(default_factory=lambda: ["tiny/sdxl-base", "tiny/sd15-base"])
    workers_per_pool: int = 1
    #: The workers to start, each as the pools it serves (several: a multi-base worker). ``None``:
    #: ``workers_per_pool`` single-base workers for each pool.
    workers: list[list[str]] | None = None
    router_port: int = 0  # 0: pick a free port
    devhub_port: int = 0
    redis_port: int = 0
    #: Extra environment for every service (LORAFARM_* settings...).
    env: dict[str, str] = field(default_factory=dict)
    worker_env: dict[str, str] = field(default_factory=dict)
    router_env: dict[str, str] = field(default_factory=dict)
    #: Start Redis with ``--requirepass``; every service then gets the password in its Redis URL.
    redis_password: str | None = None
    #: Serve Redis over TLS only (a self-signed certificate made with ``openssl``); every service
    #: then reaches it with ``rediss://...?ssl_ca_certs=...``.
    redis_tls: bool = False
    #: Redis as a primary, a replica and three sentinels; every service finds the primary through
    #: the sentinels and follows a failover (``lorafarm/replicated.py``).
    redis_ha: bool = False
    #: With ``redis_ha``: replicas that must hold a job before it is accepted (LORAFARM_REDIS_MIN_REPLICAS).
    redis_min_replicas: int = 1


class Farm:
    """A set of processes on loopback; every one is stopped by ``stop()``, by pid."""

    def __init__(self, config: FarmConfig) -> None:
        self.config = config
        config.state_dir.mkdir(parents=True, exist_ok=True)
        self.logs = config.state_dir / "logs"
        self.logs.mkdir(exist_ok=True)
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        #: How each process was started (argv, env, port to wait for), so it can be started again.
        self._commands: dict[str, tuple[list[str], dict[str, str], int | None]] = {}
        self.pids = config.state_dir / "pids"
        self.pids.mkdir(exist_ok=True)
        self.redis_port = config.redis_port or free_port()
        self.devhub_port = config.devhub_port or free_port()
        self.router_port = config.router_port or free_port()
        #: The port of each router by name: ``router``, and any started beside it (``start_router``).
        self.router_ports = {"router": self.router_port}
        self._worker_count = 0
        self.replicated: ReplicatedRedis | None = None
        if config.redis_ha:
            from lorafarm.replicated import ReplicatedRedis

            self.replicated = ReplicatedRedis(self)

    # --- addresses ----------------------------------------------------------------

    @property
    def redis_url(self) -> str:
        auth = f":{quote(self.config.redis_password, safe='')}@" if self.config.redis_password else ""
        if self.config.redis_tls:
            return f"rediss://{auth}127.0.0.1:{self.redis_port}/0?ssl_ca_certs={quote(str(self.tls_cert))}"
        return f"redis://{auth}127.0.0.1:{self.redis_port}/0"

    def redis_target(self) -> RedisTarget:
        """Redis as the services reach it: the URL, and with ``redis_ha`` the sentinels that name the primary."""
        if self.replicated is None:
            return RedisTarget(url=self.redis_url)
        return self.replicated.target()

    @property
    def tls_cert(self) -> Path:
        """The self-signed certificate of a TLS Redis (also its own CA)."""
        return self.config.state_dir / "tls" / "redis.crt"

    @property
    def hub_url(self) -> str:
        return f"http://127.0.0.1:{self.devhub_port}"

    @property
    def router_url(self) -> str:
        return f"http://127.0.0.1:{self.router_port}"

    def base_env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            {
                "HF_ENDPOINT": self.hub_url,
                "HF_HUB_DISABLE_XET": "1",
                "HF_HUB_DISABLE_TELEMETRY": "1",
                "HF_HUB_DISABLE_PROGRESS_BARS": "1",
                "LORAFARM_HF_ENDPOINT": self.hub_url,
                "LORAFARM_REDIS_URL": self.redis_url,
                "LORAFARM_HF_CACHE_DIR": str(self.config.state_dir / "hf-cache"),
                "LORAFARM_POOLS": ",".join(self.config.pools),
                # The devhub shows private repos to any bearer token, so the router can tell
                # "private" (403) from "missing" (404) as it would with an operator's token.
                "LORAFARM_HF_TOKEN": "hf_devhub_demo",
                # The tiny bases draw 64x64 (FluxPipeline's own default is 128 latent patches a side).
                "LORAFARM_DEFAULT_SIZE": "64",
                "PYTHONUNBUFFERED": "1",
            }
        )
        if self.replicated is not None:
            env.update(self.replicated.service_env())
        env.update(self.config.env)
        return env

    # --- processes ----------------------------------------------------------------

    def _spawn(
        self, name: str, argv: list[str], env: dict[str, str], port: int | None = None
    ) -> subprocess.Popen[bytes]:
        log = open(self.logs / f"{name}.log", "ab")  # noqa: SIM115 (owned by the child)
        proc = subprocess.Popen(argv, cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        self.procs[name] = proc
        self._commands[name] = (argv, env, port)
        (self.pids / f"{name}.pid").write_text(f"{proc.pid}\n")
        return proc

    def exit_code(self, name: str) -> int | None:
        """The exit code of a process that ended without being stopped on purpose, else None."""
        proc = self.procs[name]
        if getattr(proc, "_farm_stopped", False):
            return None
        return proc.poll()

    def restart(self, name: str) -> None:
        """Start a process again exactly as it was started (same argv, environment and port).

        A node of a replicated Redis comes back as a replica of the current primary instead.
        """
        if self.replicated is not None and name in self.replicated.nodes:
            self.replicated.rejoin(name)
            return
        argv, env, port = self._commands[name]
        proc = self._spawn(name, argv, env, port)
        if port is not None:
            wait_port(port, proc)

    def start_redis(self) -> None:
        """Start Redis: one redis-server, or with ``redis_ha`` a primary, a replica and three sentinels."""
        if self.replicated is not None:
            self.replicated.start()
            return
        self.spawn("redis", self.redis_argv(self.redis_port, self.config.state_dir / "redis"), self.redis_port)

    def redis_argv(self, port: int, data: Path) -> list[str]:
        """A redis-server on ``port`` with its data in ``data``: append-only, password and TLS as configured."""
        exe = shutil.which("redis-server")
        if exe is None:
            raise RuntimeError("redis-server is not installed (make run / make test install it)")
        data.mkdir(parents=True, exist_ok=True)
        argv = [
            exe,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "yes",
            "--dir",
            str(data),
        ]
        if self.config.redis_password:
            argv += ["--requirepass", self.config.redis_password]
        if self.config.redis_tls:
            argv[1:3] = ["--port", "0", "--tls-port", str(port)]
            argv += self.tls_args()
        return argv

    def tls_args(self) -> list[str]:
        """The TLS options of a redis-server (or sentinel) of this farm: its key, certificate and CA."""
        key = self._make_tls_cert()
        return [
            "--tls-cert-file",
            str(self.tls_cert),
            "--tls-key-file",
            str(key),
            "--tls-ca-cert-file",
            str(self.tls_cert),
            "--tls-auth-clients",
            "no",
        ]

    def spawn(self, name: str, argv: list[str], port: int) -> None:
        """Start a process of the farm under ``name`` and wait until it listens on ``port``."""
        wait_port(port, self._spawn(name, argv, self.base_env(), port))

    def _make_tls_cert(self) -> Path:
        """A key and a self-signed certificate for 127.0.0.1 (made once per farm); returns the key."""
        key = self.tls_cert.with_suffix(".key")
        if not self.tls_cert.exists():
            self.tls_cert.parent.mkdir(exist_ok=True)
            request = ["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=127.0.0.1"]
            subprocess.run(
                [
                    "openssl",
                    *request,
                    "-addext",
                    "subjectAltName=IP:127.0.0.1",
                    "-keyout",
                    str(key),
                    "-out",
                    str(self.tls_cert),
                ],
                check=True,
                capture_output=True,
            )
        return key

    def start_devhub(self, *, delay_ms: int = 0) -> None:
        """Start the devhub; ``delay_ms`` makes it answer every request that much later (a slow Hub)."""
        argv = [
            sys.executable,
            "-m",
            "devhub",
            "serve",
            "--root",
            str(self.config.zoo_dir),
            "--port",
            str(self.devhub_port),
            "--delay-ms",
            str(delay_ms),
        ]
        wait_port(self.devhub_port, self._spawn("devhub", argv, self.base_env(), self.devhub_port))

    def start_router(self, name: str = "router", env: dict[str, str] | None = None) -> str:
        """Start a router (``router``, or another one beside it on a port of its own, as a second
        replica behind a load balancer would run); returns its URL."""
        port = self.router_ports.get(name) or free_port()
        self.router_ports[name] = port
        router_env = self.base_env() | {"LORAFARM_PORT": str(port), "LORAFARM_HOST": "127.0.0.1"}
        router_env.update(self.config.router_env)
        router_env.update(env or {})
        router = self._spawn(name, [sys.executable, "-m", "router"], router_env, port)
        wait_port(port, router, timeout=60)
        return self.url_of(name)

    def url_of(self, router: str) -> str:
        """The URL of a router of the farm, by name."""
        return f"http://127.0.0.1:{self.router_ports[router]}"

    def start_worker(self, pool: str | Sequence[str], env: dict[str, str] | None = None) -> str:
        """Start one worker of ``pool`` (of each of several pools: a multi-base worker); returns its
        name (also its worker id)."""
        self._worker_count += 1
        name = f"worker-{self._worker_count}"
        worker_env = self.base_env() | {"LORAFARM_WORKER_ID": name, "LORAFARM_WORKER_PORT": "0"}
        worker_env.update(self.config.worker_env)
        worker_env.update(env or {})
        bases = [pool] if isinstance(pool, str) else list(pool)
        self._spawn(name, [sys.executable, "-m", "worker", *(a for b in bases for a in ("--base", b))], worker_env)
        return name

    @property
    def worker_specs(self) -> list[list[str]]:
        """The pools of each worker ``start`` starts."""
        if self.config.workers is not None:
            return self.config.workers
        return [[pool] for pool in self.config.pools for _ in range(self.config.workers_per_pool)]

    def start(self, *, timeout: float = 180.0) -> None:
        """Start everything and wait until every pool has its live workers."""
        self.start_redis()
        self.start_devhub()
        self.start_router()
        for spec in self.worker_specs:
            self.start_worker(spec)
        wanted = {pool: sum(pool in spec for spec in self.worker_specs) for pool in self.config.pools}
        self.wait_workers(wanted, timeout=timeout)

    def wait_workers(self, wanted: dict[str, int], *, timeout: float = 180.0) -> None:
        """Wait until the router's /status shows at least ``wanted[pool]`` ready workers per pool."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.check_alive()
            try:
                status = httpx.get(f"{self.router_url}/status", timeout=5).json()
                live = {
                    p["pool"]: sum(1 for w in p["workers"] if w["status"] in ("ready", "busy")) for p in status["pools"]
                }
                if all(live.get(pool, 0) >= n for pool, n in wanted.items()):
                    return
            except (httpx.HTTPError, KeyError, ValueError):
                pass
            time.sleep(0.25)
        raise TimeoutError(f"workers not ready after {timeout}s; logs in {self.logs}")

    def check_alive(self) -> None:
        for name in self.procs:
            if self.exit_code(name) is not None:
                tail = (self.logs / f"{name}.log").read_text(errors="replace")[-3000:]
                raise RuntimeError(f"{name} exited with {self.procs[name].returncode}:\n{tail}")

    def signal(self, name: str, sig: int) -> None:
        proc = self.procs[name]
        proc._farm_stopped = True  # type: ignore[attr-defined]
        proc.send_signal(sig)

    def kill(self, name: str) -> None:
        """SIGKILL one process and reap it."""
        self.signal(name, signal.SIGKILL)
        self.procs[name].wait()

    def terminate(self, name: str, timeout: float = 15.0) -> int:
        """SIGTERM one process and wait for it (SIGKILL past ``timeout``); returns its exit code."""
        proc = self.procs[name]
        if proc.poll() is None:
            self.signal(name, signal.SIGTERM)
        try:
            return proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            return proc.wait()

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM everything started, then SIGKILL stragglers: workers and router first, so that
        they can settle the jobs in hand while Redis is still up, then the devhub and Redis."""
        last = ("devhub", "redis", *(self.replicated.names if self.replicated else ()))
        deadline = time.monotonic() + timeout
        for phase in ([n for n in self.procs if n not in last], [n for n in dict.fromkeys(last) if n in self.procs]):
            for name in phase:
                proc = self.procs[name]
                if proc.poll() is None:
                    proc._farm_stopped = True  # type: ignore[attr-defined]
                    proc.terminate()
            for name in phase:
                proc = self.procs[name]
                try:
                    proc.wait(max(0.1, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()


def redis_server() -> str:
    """The redis-server executable (it runs the sentinels too, with ``--sentinel``)."""
    exe = shutil.which("redis-server")
    if exe is None:
        raise RuntimeError("redis-server is not installed (make run / make test install it)")
    return exe


def wait_port(port: int, proc: subprocess.Popen[bytes] | None = None, timeout: float = 60.0) -> None:
    """Wait until something listens on 127.0.0.1:``port``; fail early if ``proc`` exits first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process {proc.args!r} exited with {proc.returncode} before listening")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout}s")
