"""Prometheus metrics of one worker, served on its probe port (``/metrics``)."""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

_SECONDS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


class WorkerMetrics:
    """Named like the inference servers operators already scrape (``*_duration_seconds``...)."""

    def __init__(self, pool: str, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        labels = {"pool": pool}
        self.jobs = Counter(
            "lorafarm_worker_jobs",
            "Jobs finished by this worker.",
            ["pool", "status"],
            registry=self.registry,
        )
        self.swap_seconds = Histogram(
            "lorafarm_swap_duration_seconds",
            "Time to make the job's adapters active (0 when already fused).",
            ["pool"],
            buckets=_SECONDS,
            registry=self.registry,
        ).labels(**labels)
        self.inference_seconds = Histogram(
            "lorafarm_inference_duration_seconds",
            "Time spent in the diffusion pipeline per job.",
            ["pool"],
            buckets=_SECONDS,
            registry=self.registry,
        ).labels(**labels)
        self.queue_wait_seconds = Histogram(
            "lorafarm_queue_wait_duration_seconds",
            "Time from enqueue to the start of the job on this worker.",
            ["pool"],
            buckets=_SECONDS,
            registry=self.registry,
        ).labels(**labels)
        self.swaps = Counter(
            "lorafarm_adapter_swaps",
            "Jobs that needed an adapter swap, by how the adapters were applied.",
            ["pool", "mode"],
            registry=self.registry,
        )
        self.ready = Gauge(
            "lorafarm_worker_ready",
            "1 when the base is warm and Redis reachable.",
            ["pool"],
            registry=self.registry,
        ).labels(**labels)
        self.compile_seconds = Gauge(
            "lorafarm_compile_seconds",
            "Seconds the denoiser took to compile and warm up at start (absent: compile off).",
            ["pool"],
            registry=self.registry,
        )
        self.pool = pool

    def swap(self, mode: str) -> None:
        self.swaps.labels(pool=self.pool, mode=mode).inc()

    def job(self, status: str) -> None:
        self.jobs.labels(pool=self.pool, status=status).inc()

    def watch_cache(self, counts: Callable[[], dict[str, int]]) -> None:
        """Export the host adapter cache's own counters (hits, misses, evictions) at each scrape."""
        self.registry.register(_CacheCollector(self.pool, counts))

    def watch_compile(self, seconds: float, recompiles: Callable[[], int]) -> None:
        """Export the compile time at start, and the graphs compiled since (new shapes; swaps never)."""
        self.compile_seconds.labels(pool=self.pool).set(seconds)
        self.registry.register(_RecompileCollector(self.pool, recompiles))

    def watch_pristine(self, tiers: Callable[[], dict[str, int]]) -> None:
        """Export the bytes of pristine copies per tier (device, host) at each scrape."""
        self.registry.register(_PristineCollector(self.pool, tiers))


class _CacheCollector(Collector):
    def __init__(self, pool: str, counts: Callable[[], dict[str, int]]) -> None:
        self._pool = pool
        self._counts = counts

    def collect(self) -> Iterator[Metric]:
        family = CounterMetricFamily(
            "lorafarm_adapter_cache", "Host adapter cache lookups by result.", labels=["pool", "result"]
        )
        for result, value in self._counts().items():
            family.add_metric([self._pool, result], value)
        yield family


class _PristineCollector(Collector):
    def __init__(self, pool: str, tiers: Callable[[], dict[str, int]]) -> None:
        self._pool = pool
        self._tiers = tiers

    def collect(self) -> Iterator[Metric]:
        family = GaugeMetricFamily(
            "lorafarm_pristine_bytes", "Bytes of pristine copies of base weights, by tier.", labels=["pool", "tier"]
        )
        for tier, value in self._tiers().items():
            family.add_metric([self._pool, tier], value)
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
