"""The claim → switch → swap → generate → publish → ack loop of one worker, and its heartbeats.

A worker serves the pools of its bases (``worker.bases``): one for a single-base worker, several
for a multi-base one, which claims from all of them, serves its backlog grouped by base then
adapter (``worker.backlog``), makes each job's base active before the swap, and announces a
state in each pool.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Any, Literal

from common import errors
from common.connections import OUTAGES
from common.schemas import Job, JobResult, JobStatus, WorkerState, adapter_set_key
from worker.backlog import order_queue
from worker.bases import Bases, BaseSlot
from worker.metrics import WorkerMetrics
from worker.pipeline import encode, generate
from worker.pools import PoolQueues
from worker.queue import Delivery
from worker.settings import WorkerSettings
from worker.swapper import Outlook

log = logging.getLogger(__name__)

_REDIS_DOWN = OUTAGES
_MAX_BACKOFF_S = 5.0
#: Results waiting to be settled again (Redis down, or the replicas did not confirm them) past
#: which the worker claims no new job: each one holds its images in memory.
_MAX_UNSETTLED = 8


@dataclass(frozen=True)
class Unsettled:
    """A job run to its result that Redis does not hold for sure yet: settled again from memory, not run again."""

    delivery: Delivery
    result: JobResult
    images: list[bytes]


class Worker:
    """Serves the jobs of its bases' pools on one device."""

    def __init__(self, settings: WorkerSettings, bases: Bases, metrics: WorkerMetrics, *, device: str = "cpu") -> None:
        self.settings = settings
        self.bases = bases
        self.claims = PoolQueues(bases.queues)
        self.metrics = metrics
        self.device = device
        self.status: str = "starting"
        self.current_job: str | None = None
        self.redis_ok = False
        self.started_at = time.time()
        self.current_started_at: float | None = None
        #: Jobs claimed and not yet served (placed on this worker, or adopted from a dead one).
        self.backlog: list[Delivery] = []
        #: Jobs served whose settle did not go through (``settle_again``).
        self.unsettled: list[Unsettled] = []

    @property
    def jobs_done(self) -> int:
        return sum(slot.jobs_done for slot in self.bases)

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
                    for queue in self.bases.queues:
                        queue.ensure_group()
                    if not recovered:
                        self._recover()
                        recovered = True
                    grouped = True
                if self.unsettled and len(self.settle_again()) >= _MAX_UNSETTLED:
                    continue
                if time.monotonic() >= next_reclaim:
                    for queue in self.bases.queues:
                        self.backlog += queue.reclaim(min_idle_ms=int(self.settings.lease_s * 1000))
                    next_reclaim = time.monotonic() + self.settings.lease_s / 2
                # Jobs placed on this worker first; the shared streams only when none wait here.
                self.backlog += self.claims.claim(block_ms=self.settings.block_ms, include_pool=not self.backlog)
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
            if not self.bases[first.delivery.pool].queue.settle(first.delivery, first.result, first.images):
                break
            self.unsettled.pop(0)
            log.info("event=result_settled job=%s", first.result.job_id)
        return self.unsettled

    def hand_back(self) -> None:
        """Return the jobs claimed but not served to their pools' shared streams (on shutdown)."""
        for slot in self.bases:
            mine = [d for d in self.backlog if d.pool == slot.pool]
            if mine:
                slot.queue.hand_back(mine)
        self.backlog = []

    def deregister(self) -> None:
        """Leave every pool now instead of waiting for the heartbeats to expire."""
        for queue in self.bases.queues:
            queue.deregister()

    def _recover(self) -> None:
        held = {(d.stream, d.entry_id) for d in [*self.backlog, *(u.delivery for u in self.unsettled)]}
        for queue in self.bases.queues:
            self.backlog += [d for d in queue.recover() if (d.stream, d.entry_id) not in held]

    def _next(self) -> Delivery:
        """The backlog job to serve now: those for the base and adapters in use first, none starved."""
        base = self.bases.current
        delivery = self._in_order(base, self._active_set(base))[0]
        self.backlog.remove(delivery)
        return delivery

    def _active_set(self, pool: str | None) -> str | None:
        return adapter_set_key(self.bases[pool].swapper.active_refs()) if pool is not None else None

    def _in_order(self, base: str | None, current: str | None) -> list[Delivery]:
        """The backlog in the order ``order_queue`` serves it after adapters ``current`` on ``base``."""
        queued = [(d.job.id, adapter_set_key(d.job.adapters), d.job.enqueued_at, d.pool) for d in self.backlog]
        by_id = {d.job.id: d for d in self.backlog}
        order = order_queue(current, queued, time.time(), self.settings.reorder_max_age_s, current_base=base)
        return [by_id[entry.job_id] for entry in order]

    def _prefetch_after(self, delivery: Delivery) -> None:
        """Fetch and parse the next job's adapters while this one runs."""
        if not self.settings.prefetch:
            return
        pool = delivery.pool
        if self.backlog:
            following = self._in_order(pool, adapter_set_key(delivery.job.adapters))[0]
            job: Job | None = following.job
            pool = following.pool
        else:
            job = self.bases[pool].queue.peek()
        for ref in job.adapters if job else []:
            self.bases[pool].swapper.prefetch(ref)

    def _outlook(self, job: Job, slot: BaseSlot) -> Outlook:
        """The job's steps and the adapter sets of the backlog, in the order it will be served
        (a job of another base ends the run: the base switch restores this one)."""
        order = self._in_order(slot.pool, adapter_set_key(job.adapters))
        upcoming = [adapter_set_key(d.job.adapters) if d.pool == slot.pool else f"<{d.pool}>" for d in order]
        # The denoising steps of all the job's images run on the adapters of this one swap.
        steps = (job.num_inference_steps or slot.default_steps) * job.images
        return Outlook(steps=steps, upcoming=upcoming)

    def serve(self, delivery: Delivery) -> None:
        """Run one job to a published result, then acknowledge it.

        A job that fails for its own reasons (bad adapter...) gets a failed result and is
        acknowledged. An unexpected crash leaves it pending and delivers it again (to this worker)
        until ``max_deliveries``, then dead-letters it with a failed result.
        """
        job, slot = delivery.job, self.bases[delivery.pool]
        standing = slot.queue.standing(job.id)
        if standing.settled:
            # Delivered again after its result was written: a failover, or the router submitting it again.
            log.info("event=already_settled job=%s (not run again)", job.id)
            slot.queue.ack(delivery.entry_id, delivery.stream)
            return
        if standing.cancelled or (job.deadline is not None and time.time() > job.deadline):
            self._settle(delivery, "cancelled", "the job was cancelled before it ran", errors.JobCancelled.error_type)
            return
        self.status, self.current_job, self.current_started_at = "busy", job.id, time.time()
        self.metrics.of(slot.pool).queue_wait_seconds.observe(max(0.0, time.time() - job.enqueued_at))
        slot.queue.set_status(JobStatus(job_id=job.id, state="running", worker_id=self.worker_id))
        try:
            self._run_job(delivery, slot)
        except errors.LorafarmError as exc:
            log.info("event=job_failed job=%s error_type=%s error=%s", job.id, exc.error_type, exc.message)
            self._settle(delivery, "failed", exc.message, exc.error_type)
        except _REDIS_DOWN:
            raise
        except Exception:
            log.exception("event=job_crashed job=%s deliveries=%d", job.id, delivery.deliveries)
            self.metrics.of(slot.pool).job("crashed")
            again = slot.queue.retry(delivery)
            if again is not None:
                self.backlog.append(again)
        finally:
            self.status, self.current_job, self.current_started_at = "ready", None, None

    def _run_job(self, delivery: Delivery, slot: BaseSlot) -> None:
        job, metrics = delivery.job, self.metrics.of(slot.pool)
        start = time.perf_counter()
        if self.bases.tiers.tier(slot.pool) != "active":
            for ref in job.adapters:  # fetched and parsed while the base comes back
                slot.swapper.prefetch(ref)
        switch = self.bases.activate(slot.pool)
        outcome = slot.swapper.swap(job.adapters, self._outlook(job, slot))
        if outcome.changed:
            metrics.swap(outcome.mode)
            slot.swap_s = _ewma(slot.swap_s, outcome.seconds)
            slot.last_swap_at = time.time()
        metrics.swap_seconds.observe(outcome.seconds)
        infer_start = time.perf_counter()
        cancelled = threading.Event()
        images = generate(
            slot.pipe,
            job,
            family=slot.family,
            steps=slot.default_steps,
            size=self.settings.default_size,
            on_step=self._progress(job, slot, cancelled),
            compiled=slot.compiled,
        )
        inference_s = time.perf_counter() - infer_start
        metrics.inference_seconds.observe(inference_s)
        slot.inference_s = _ewma(slot.inference_s, inference_s)
        if cancelled.is_set():
            self._settle(delivery, "cancelled", "the job was cancelled while it ran", errors.JobCancelled.error_type)
            return
        encoded = [encode(image, job.format) for image in images]
        content_type = encoded[0][1]
        result = JobResult(
            job_id=job.id,
            status="done",
            content_type=content_type,
            worker_id=self.worker_id,
            warm=not outcome.changed and switch.kind == "none",
            swap_s=outcome.seconds,
            base_switch=switch.kind,
            base_switch_s=switch.seconds,
            inference_s=inference_s,
            compute_s=time.perf_counter() - start,
        )
        log.info(
            "event=job_done job=%s pool=%s adapters=%s images=%d warm=%s mode=%s swap_s=%.4f base_switch=%s "
            "inference_s=%.3f",
            job.id,
            slot.pool,
            ",".join(r.key for r in job.adapters) or "-",
            len(encoded),
            result.warm,
            outcome.mode,
            outcome.seconds,
            switch.kind,
            inference_s,
        )
        self._finish(delivery, result, [data for data, _ in encoded])

    def _finish(self, delivery: Delivery, result: JobResult, images: list[bytes]) -> None:
        """Settle a job run to its result; kept to settle again if Redis is down or the replicas lag."""
        slot = self.bases[delivery.pool]
        self.metrics.of(slot.pool).job(result.status)
        slot.jobs_done += 1
        try:
            settled = slot.queue.settle(delivery, result, images)
        except _REDIS_DOWN:
            self.unsettled.append(Unsettled(delivery, result, images))
            raise
        if not settled:
            log.warning("event=result_unconfirmed job=%s (settled again until the replicas hold it)", result.job_id)
            self.unsettled.append(Unsettled(delivery, result, images))

    def _settle(self, delivery: Delivery, status: Literal["failed", "cancelled"], error: str, error_type: str) -> None:
        """Publish a result without an image (failed or cancelled) and acknowledge the job."""
        result = JobResult(
            job_id=delivery.job.id, status=status, worker_id=self.worker_id, error=error, error_type=error_type
        )
        self._finish(delivery, result, [])

    def _progress(self, job: Job, slot: BaseSlot, cancelled: threading.Event) -> Any:
        last = 0.0

        def on_step(step: int, steps: int) -> bool:
            nonlocal last
            now = time.monotonic()
            if step < steps and now - last < self.settings.progress_interval_s:
                return False
            last = now
            try:
                slot.queue.set_status(
                    JobStatus(job_id=job.id, state="running", step=step, steps=steps, worker_id=self.worker_id)
                )
                if slot.queue.is_cancelled(job.id):
                    cancelled.set()
            except _REDIS_DOWN:
                pass  # progress is best effort: the job goes on through an outage, its result waits for Redis
            return cancelled.is_set()

        return on_step

    # --- heartbeat ------------------------------------------------------------------

    @property
    def worker_id(self) -> str:
        return self.settings.worker_id

    def state(self, pool: str | None = None, waiting: dict[str, list[str | None]] | None = None) -> WorkerState:
        """This worker's heartbeat in ``pool`` (default: its first); ``queued`` is read from its
        own stream there (claimed or not), ``other_queued`` from its own streams of its other
        pools (``waiting``: those already read, by pool)."""
        slot = self.bases[pool or self.bases.pools[0]]
        lengths = waiting if waiting is not None else self._waiting()
        queued = lengths[slot.pool]
        pristine = slot.swapper.pristine()
        warm_s, cold_s = self.bases.tiers.costs(slot.pool)
        return WorkerState(
            worker_id=self.worker_id,
            pool=slot.pool,
            status=self.status,  # type: ignore[arg-type]
            device=self.device,
            pipeline=type(slot.pipe).__name__,
            fused=slot.swapper.active(),
            fused_set=adapter_set_key(slot.swapper.active_refs()),
            cached=slot.swapper.cached(),
            current_job=self.current_job,
            current_started_at=self.current_started_at,
            queued=queued,
            queue_len=len(queued),
            last_swap_at=slot.last_swap_at,
            jobs_done=slot.jobs_done,
            swap_s=slot.swap_s,
            fetch_s=slot.swapper.fetch_s(),
            pristine_device_bytes=pristine["device"],
            pristine_host_bytes=pristine["host"],
            inference_s=slot.inference_s,
            pools=self.bases.pools,
            base_tier=self.bases.tiers.tier(slot.pool),
            warm_switch_s=warm_s,
            cold_switch_s=cold_s,
            base_bytes=self.bases.tiers.tier_bytes(slot.pool),
            other_queued=sum(len(v) for p, v in lengths.items() if p != slot.pool),
            started_at=self.started_at,
        )

    def announce(self) -> None:
        """One heartbeat in every pool this worker serves."""
        waiting = self._waiting()
        for slot in self.bases:
            slot.queue.heartbeat(self.state(slot.pool, waiting), ttl_s=self.settings.worker_ttl_s)

    def _waiting(self) -> dict[str, list[str | None]]:
        """Adapter set keys of the jobs on this worker's own stream of each pool (the one in hand excluded)."""
        return {
            s.pool: [adapter_set_key(j.adapters) for j in s.queue.queued() if j.id != self.current_job]
            for s in self.bases
        }

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
                    self.announce()
                    self.redis_ok = True
                except _REDIS_DOWN:
                    self.redis_ok = False
            for slot in self.bases:
                self.metrics.of(slot.pool).ready.set(1 if self.ready() else 0)
            stop.wait(self.settings.heartbeat_s)

    def hung(self) -> bool:
        """The job in hand has run past ``max_job_s``."""
        started = self.current_started_at
        return started is not None and time.time() - started > self.settings.max_job_s

    def ready(self) -> bool:
        return self.redis_ok and self.status in ("ready", "busy") and not self.hung()


def _ewma(previous: float | None, value: float, alpha: float = 0.3) -> float:
    return value if previous is None else (1 - alpha) * previous + alpha * value
