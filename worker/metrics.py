"""Prometheus metrics of one worker, served on its probe port (``/metrics``); labelled by pool.

A multi-base worker serves several pools: every series carries the pool of the job (or of the
base) it counts, and :meth:`WorkerMetrics.of` gives one pool's instruments.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

_SECONDS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


@dataclass(frozen=True)
class PoolMetrics:
    """The instruments of one pool of the worker."""

    pool: str
    swap_seconds: Any
    inference_seconds: Any
    queue_wait_seconds: Any
    ready: Any
    _swaps: Counter
    _jobs: Counter

    def swap(self, mode: str) -> None:
        self._swaps.labels(pool=self.pool, mode=mode).inc()

    def job(self, status: str) -> None:
        self._jobs.labels(pool=self.pool, status=status).inc()


class WorkerMetrics:
    """Named like the inference servers operators already scrape (``*_duration_seconds``...)."""

    def __init__(self, pools: str | Sequence[str], registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self.pools = [pools] if isinstance(pools, str) else list(pools)
        #: The first pool: the one of a single-base worker.
        self.pool = self.pools[0]
        r = self.registry
        self._jobs = Counter("lorafarm_worker_jobs", "Jobs finished by this worker.", ["pool", "status"], registry=r)
        self._swap = Histogram(
            "lorafarm_swap_duration_seconds",
            "Time to make the job's adapters active (0 when already fused).",
            ["pool"],
            buckets=_SECONDS,
            registry=r,
        )
        self._inference = Histogram(
            "lorafarm_inference_duration_seconds",
            "Time spent in the diffusion pipeline per job.",
            ["pool"],
            buckets=_SECONDS,
            registry=r,
        )
        self._wait = Histogram(
            "lorafarm_queue_wait_duration_seconds",
            "Time from enqueue to the start of the job on this worker.",
            ["pool"],
            buckets=_SECONDS,
            registry=r,
        )
        self._swaps = Counter(
            "lorafarm_adapter_swaps",
            "Jobs that needed an adapter swap, by how the adapters were applied.",
            ["pool", "mode"],
            registry=r,
        )
        self._ready = Gauge(
            "lorafarm_worker_ready", "1 when the base is warm and Redis reachable.", ["pool"], registry=r
        )
        self._base_switches = Counter(
            "lorafarm_base_switches",
            "Base switches of a multi-base worker, by kind: warm (from host memory) or cold (from disk).",
            ["pool", "kind"],
            registry=r,
        )
        self._base_switch_seconds = Histogram(
            "lorafarm_base_switch_duration_seconds",
            "Time to make a base active (evictions included), by kind.",
            ["pool", "kind"],
            buckets=_SECONDS,
            registry=r,
        )
        self._cache = _PerPool("lorafarm_adapter_cache", "Host adapter cache lookups by result.", "result", "counter")
        self._pristine = _PerPool(
            "lorafarm_pristine_bytes", "Bytes of pristine copies of base weights, by tier.", "tier", "gauge"
        )
        self._bases = _PerPool("lorafarm_base_bytes", "Bytes of the base's weights, by tier.", "tier", "gauge")
        for collector in (self._cache, self._pristine, self._bases):
            r.register(collector)
        self._compile_seconds = Gauge(
            "lorafarm_compile_seconds",
            "Seconds the denoiser took to compile and warm up at start (absent: compile off).",
            ["pool"],
            registry=r,
        )
        self._of: dict[str, PoolMetrics] = {}

    def of(self, pool: str) -> PoolMetrics:
        """The instruments of one pool (made on first use)."""
        if pool not in self._of:
            self._of[pool] = PoolMetrics(
                pool,
                self._swap.labels(pool=pool),
                self._inference.labels(pool=pool),
                self._wait.labels(pool=pool),
                self._ready.labels(pool=pool),
                self._swaps,
                self._jobs,
            )
        return self._of[pool]

    def base_switch(self, pool: str, kind: str, seconds: float) -> None:
        """A base was made active from host memory (``warm``) or from disk (``cold``)."""
        self._base_switches.labels(pool=pool, kind=kind).inc()
        self._base_switch_seconds.labels(pool=pool, kind=kind).observe(seconds)

    def watch_cache(self, counts: Callable[[], dict[str, int]], pool: str | None = None) -> None:
        """Export a host adapter cache's own counters (hits, misses, evictions) at each scrape."""
        self._cache.watch(pool or self.pool, counts)

    def watch_compile(self, seconds: float, recompiles: Callable[[], int], pool: str | None = None) -> None:
        """Export the compile time at start, and the graphs compiled since (new shapes; swaps never)."""
        self._compile_seconds.labels(pool=pool or self.pool).set(seconds)
        self.registry.register(_RecompileCollector(pool or self.pool, recompiles))

    def watch_pristine(self, tiers: Callable[[], dict[str, int]], pool: str | None = None) -> None:
        """Export the bytes of pristine copies per tier (device, host) at each scrape."""
        self._pristine.watch(pool or self.pool, tiers)

    def watch_base(self, tiers: Callable[[], dict[str, int]], pool: str | None = None) -> None:
        """Export the bytes of a base's weights per tier (device, host, disk) at each scrape."""
        self._bases.watch(pool or self.pool, tiers)


class _PerPool(Collector):
    """One metric family, its values read per pool at each scrape."""

    def __init__(self, name: str, documentation: str, label: str, kind: str) -> None:
        self._name, self._doc, self._label, self._kind = name, documentation, label, kind
        self._sources: dict[str, Callable[[], dict[str, int]]] = {}

    def watch(self, pool: str, source: Callable[[], dict[str, int]]) -> None:
        self._sources[pool] = source

    def collect(self) -> Iterator[Metric]:
        cls = CounterMetricFamily if self._kind == "counter" else GaugeMetricFamily
        family = cls(self._name, self._doc, labels=["pool", self._label])
        for pool, source in self._sources.items():
            for key, value in source().items():
                family.add_metric([pool, key], value)
        yield family


class _RecompileCollector(Collector):
    def __init__(self, pool: str, recompiles: Callable[[], int]) -> None:
        self._pool = pool
        self._recompiles = recompiles

    def collect(self) -> Iterator[Metric]:
        family = CounterMetricFamily(
            "lorafarm_denoiser_recompiles",
            "Graphs of the compiled denoiser compiled after its warm-up (a shape not warmed up).",
            labels=["pool"],
        )
        family.add_metric([self._pool], self._recompiles())
        yield family
