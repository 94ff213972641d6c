"""The claim → swap → generate → publish → ack loop of one worker, and its heartbeat."""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from common import errors
from common.connections import OUTAGES
from common.schemas import Job, JobResult, JobStatus, WorkerState, adapter_set_key
from worker.backlog import order_queue
from worker.families import pipeline_family
from worker.metrics import WorkerMetrics
from worker.pipeline import encode, generate
from worker.queue import Delivery, WorkerQueue
from worker.settings import WorkerSettings
from worker.swapper import Outlook, Swapper

if TYPE_CHECKING:
    from worker.compiled import CompiledDenoiser

log = logging.getLogger(__name__)

_REDIS_DOWN = OUTAGES
_MAX_BACKOFF_S = 5.0
#: Results waiting to be settled again (Redis down, or the replicas did not confirm them) past
#: which the worker claims no new job: each one holds its image in memory.
_MAX_UNSETTLED = 8


@dataclass(frozen=True)
class Unsettled:
    """A job run to its result that Redis does not hold for sure yet: settled again from memory, not run again."""

    delivery: Delivery
    result: JobResult
    image: bytes | None


class Worker:
    """Serves one pool's jobs on one warm pipeline."""

    def __init__(
        self,
        settings: WorkerSettings,
        queue: WorkerQueue,
        pipe: Any,
        swapper: Swapper,
        metrics: WorkerMetrics,
        *,
        device: str = "cpu",
        compiled: CompiledDenoiser | None = None,
    ) -> None:
        self.settings = settings
        self.queue = queue
        self.pipe = pipe
        self.swapper = swapper
        self.metrics = metrics
        self.device = device
        #: The base's compiled denoiser (warmed up before this worker was built), if compile is on.
        self.compiled = compiled
        self.family = pipeline_family(type(pipe))
        #: Steps of a job that names none: the setting, else the family's default.
        self.default_steps = settings.default_steps or self.family.facts.default_steps
        self.status: str = "starting"
        self.current_job: str | None = None
        self.jobs_done = 0
        self.swap_s: float | None = None
        self.inference_s: float | None = None
        self.redis_ok = False
        self.started_at = time.time()
        self.current_started_at: float | None = None
        self.last_swap_at: float | None = None
        #: Jobs claimed and not yet served (placed on this worker, or adopted from a dead one).
        self.backlog: list[Delivery] = []
        #: Jobs served whose settle did not go through (``settle_again``).
        self.unsettled: list[Unsettled] = []

    # --- the loop -------------------------------------------------------------------

    def run(self, stop: threading.Event, *, burst: bool = False) -> None:
        """Serve jobs until ``stop`` is set (or, in burst mode, until nothing is left to claim)."""
        backoff = 0.1
        next_reclaim = 0.0
        grouped = recovered = False
        self.status = "ready"
        while not stop.is_set():
            try:
                if not grouped:
                    self.queue.ensure_group()
                    if not recovered:
                        held = {d.entry_id for d in self.backlog} | {u.delivery.entry_id for u in self.unsettled}
                        self.backlog += [d for d in self.queue.recover() if d.entry_id not in held]
                        recovered = True
                    grouped = True
                if self.unsettled and len(self.settle_again()) >= _MAX_UNSETTLED:
                    continue
                if time.monotonic() >= next_reclaim:
                    self.backlog += self.queue.reclaim(min_idle_ms=int(self.settings.lease_s * 1000))
                    next_reclaim = time.monotonic() + self.settings.lease_s / 2
                # Jobs placed on this worker first; the shared stream only when none wait here.
                self.backlog += self.queue.claim(block_ms=self.settings.block_ms, include_pool=not self.backlog)
                self.redis_ok = True
                backoff = 0.1
                if not self.backlog:
                    if burst:
                        return
                    continue
                delivery = self._next()
                self._prefetch_after(delivery)
                self.serve(delivery)
            except _REDIS_DOWN as exc:
                # Once Redis is back, take up again what this worker holds there (nobody else adopts
                # a live worker's jobs), except the jobs it ran already: those are settled again.
                self.redis_ok, grouped, recovered = False, False, False
                log.warning("event=redis_down error=%r retry_in=%.1fs", exc, backoff)
                stop.wait(backoff)
                backoff = min(backoff * 2, _MAX_BACKOFF_S)
        self.status = "draining"

    def settle_again(self) -> list[Unsettled]:
        """Settle again, oldest first, the jobs whose settle did not go through; returns those still unsettled.

        Stops at the first one the replicas still do not confirm: the next ones would wait as long.
        """
        while self.unsettled:
            first = self.unsettled[0]
            if not self.queue.settle(first.delivery, first.result, first.image):
                break
            self.unsettled.pop(0)
            log.info("event=result_settled job=%s", first.result.job_id)
        return self.unsettled

    def hand_back(self) -> None:
        """Return the jobs claimed but not served to the pool's shared stream (on shutdown)."""
        if self.backlog:
            self.queue.hand_back(self.backlog)
            self.backlog = []

    def _next(self) -> Delivery:
        """The backlog job to serve now: those for the fused adapters first, none starved."""
        delivery = self._in_order(adapter_set_key(self.swapper.active_refs()))[0]
        self.backlog.remove(delivery)
        return delivery

    def _in_order(self, current: str | None) -> list[Delivery]:
        """The backlog in the order ``order_queue`` serves it after adapters ``current``."""
        queued = [(d.job.id, adapter_set_key(d.job.adapters), d.job.enqueued_at) for d in self.backlog]
        by_id = {d.job.id: d for d in self.backlog}
        order = order_queue(current, queued, time.time(), self.settings.reorder_max_age_s)
        return [by_id[entry.job_id] for entry in order]

    def _prefetch_after(self, delivery: Delivery) -> None:
        """Fetch and parse the next job's adapters while this one runs."""
        if not self.settings.prefetch:
            return
        if self.backlog:
            following: Job | None = self._in_order(adapter_set_key(delivery.job.adapters))[0].job
        else:
            following = self.queue.peek()
        for ref in following.adapters if following else []:
            self.swapper.prefetch(ref)

    def _outlook(self, job: Job) -> Outlook:
        """The job's steps and the adapter sets of the backlog, in the order it will be served."""
        upcoming = [adapter_set_key(d.job.adapters) for d in self._in_order(adapter_set_key(job.adapters))]
        return Outlook(steps=job.num_inference_steps or self.default_steps, upcoming=upcoming)

    def serve(self, delivery: Delivery) -> None:
        """Run one job to a published result, then acknowledge it.

        A job that fails for its own reasons (bad adapter...) gets a failed result and is
        acknowledged. An unexpected crash leaves it pending and delivers it again (to this worker)
        until ``max_deliveries``, then dead-letters it with a failed result.
        """
        job = delivery.job
        standing = self.queue.standing(job.id)
        if standing.settled:
            # Delivered again after its result was written: a failover, or the router submitting it again.
            log.info("event=already_settled job=%s (not run again)", job.id)
            self.queue.ack(delivery.entry_id, delivery.stream)
            return
        if standing.cancelled or (job.deadline is not None and time.time() > job.deadline):
            self._settle(delivery, "cancelled", "the job was cancelled before it ran", errors.JobCancelled.error_type)
            return
        self.status, self.current_job, self.current_started_at = "busy", job.id, time.time()
        self.metrics.queue_wait_seconds.observe(max(0.0, time.time() - job.enqueued_at))
        self.queue.set_status(JobStatus(job_id=job.id, state="running", worker_id=self.worker_id))
        try:
            self._run_job(delivery)
        except errors.LorafarmError as exc:
            log.info("event=job_failed job=%s error_type=%s error=%s", job.id, exc.error_type, exc.message)
            self._settle(delivery, "failed", exc.message, exc.error_type)
        except _REDIS_DOWN:
            raise
        except Exception:
            log.exception("event=job_crashed job=%s deliveries=%d", job.id, delivery.deliveries)
            self.metrics.job("crashed")
            again = self.queue.retry(delivery)
            if again is not None:
                self.backlog.append(again)
        finally:
            self.status, self.current_job, self.current_started_at = "ready", None, None

    def _run_job(self, delivery: Delivery) -> None:
        job = delivery.job
        start = time.perf_counter()
        outcome = self.swapper.swap(job.adapters, self._outlook(job))
        if outcome.changed:
            self.metrics.swap(outcome.mode)
            self.swap_s = _ewma(self.swap_s, outcome.seconds)
            self.last_swap_at = time.time()
        self.metrics.swap_seconds.observe(outcome.seconds)
        infer_start = time.perf_counter()
        cancelled = threading.Event()
        image = generate(
            self.pipe,
            job,
            family=self.family,
            steps=self.default_steps,
            size=self.settings.default_size,
            on_step=self._progress(job, cancelled),
            compiled=self.compiled,
        )
        inference_s = time.perf_counter() - infer_start
        self.metrics.inference_seconds.observe(inference_s)
        self.inference_s = _ewma(self.inference_s, inference_s)
        if cancelled.is_set():
            self._settle(delivery, "cancelled", "the job was cancelled while it ran", errors.JobCancelled.error_type)
            return
        data, content_type = encode(image, job.format)
        result = JobResult(
            job_id=job.id,
            status="done",
            content_type=content_type,
            worker_id=self.worker_id,
            warm=not outcome.changed,
            swap_s=outcome.seconds,
            inference_s=inference_s,
            compute_s=time.perf_counter() - start,
        )
        log.info(
            "event=job_done job=%s adapters=%s warm=%s mode=%s swap_s=%.4f inference_s=%.3f",
            job.id,
            ",".join(r.key for r in job.adapters) or "-",
            result.warm,
            outcome.mode,
            outcome.seconds,
            inference_s,
        )
        self._finish(delivery, result, data)

    def _finish(self, delivery: Delivery, result: JobResult, image: bytes | None) -> None:
        """Settle a job run to its result; kept to settle again if Redis is down or the replicas lag."""
        self.metrics.job(result.status)
        self.jobs_done += 1
        try:
            settled = self.queue.settle(delivery, result, image)
        except _REDIS_DOWN:
            self.unsettled.append(Unsettled(delivery, result, image))
            raise
        if not settled:
            log.warning("event=result_unconfirmed job=%s (settled again until the replicas hold it)", result.job_id)
            self.unsettled.append(Unsettled(delivery, result, image))

    def _settle(self, delivery: Delivery, status: Literal["failed", "cancelled"], error: str, error_type: str) -> None:
        """Publish a result without an image (failed or cancelled) and acknowledge the job."""
        result = JobResult(
            job_id=delivery.job.id, status=status, worker_id=self.worker_id, error=error, error_type=error_type
        )
        self._finish(delivery, result, None)

    def _progress(self, job: Job, cancelled: threading.Event) -> Any:
        last = 0.0

        def on_step(step: int, steps: int) -> bool:
            nonlocal last
            now = time.monotonic()
            if step < steps and now - last < self.settings.progress_interval_s:
                return False
            last = now
            try:
                self.queue.set_status(
                    JobStatus(job_id=job.id, state="running", step=step, steps=steps, worker_id=self.worker_id)
                )
                if self.queue.is_cancelled(job.id):
                    cancelled.set()
            except _REDIS_DOWN:
                pass  # progress is best effort: the job goes on through an outage, its result waits for Redis
            return cancelled.is_set()

        return on_step

    # --- heartbeat ------------------------------------------------------------------

    @property
    def worker_id(self) -> str:
        return self.settings.worker_id

    def state(self) -> WorkerState:
        """This worker's heartbeat; ``queued`` is read from its own stream (claimed or not)."""
        queued = [adapter_set_key(j.adapters) for j in self.queue.queued() if j.id != self.current_job]
        pristine = self.swapper.pristine()
        return WorkerState(
            worker_id=self.worker_id,
            pool=self.settings.base,
            status=self.status,  # type: ignore[arg-type]
            device=self.device,
            pipeline=type(self.pipe).__name__,
            fused=self.swapper.active(),
            fused_set=adapter_set_key(self.swapper.active_refs()),
            cached=self.swapper.cached(),
            current_job=self.current_job,
            current_started_at=self.current_started_at,
            queued=queued,
            queue_len=len(queued),
            last_swap_at=self.last_swap_at,
            jobs_done=self.jobs_done,
            swap_s=self.swap_s,
            fetch_s=self.swapper.fetch_s(),
            pristine_device_bytes=pristine["device"],
            pristine_host_bytes=pristine["host"],
            inference_s=self.inference_s,
            started_at=self.started_at,
        )

    def heartbeat_forever(self, stop: threading.Event) -> None:
        """Announce this worker every ``heartbeat_s`` until ``stop``; survives Redis outages.

        While a job overruns ``max_job_s`` the worker goes silent, so that it looks dead: its peers
        take over its jobs once the heartbeat expires, as they would from a crashed worker.
        """
        silent = False
        while not stop.is_set():
            if self.hung():
                if not silent:
                    log.error("event=worker_hung job=%s max_job_s=%g", self.current_job, self.settings.max_job_s)
                silent = True
            else:
                silent = False
                try:
                    self.queue.heartbeat(self.state(), ttl_s=self.settings.worker_ttl_s)
                    self.redis_ok = True
                except _REDIS_DOWN:
                    self.redis_ok = False
            self.metrics.ready.set(1 if self.ready() else 0)
            stop.wait(self.settings.heartbeat_s)

    def hung(self) -> bool:
        """The job in hand has run past ``max_job_s``."""
        started = self.current_started_at
        return started is not None and time.time() - started > self.settings.max_job_s

    def ready(self) -> bool:
        return self.redis_ok and self.status in ("ready", "busy") and not self.hung()


def _ewma(previous: float | None, value: float, alpha: float = 0.3) -> float:
    return value if previous is None else (1 - alpha) * previous + alpha * value
