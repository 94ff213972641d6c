"""The order a worker serves its backlog: grouped by adapter, with an age bound so nothing starves."""

from __future__ import annotations

import math

from hypothesis import given, settings
from hypothesis import strategies as st

from worker.backlog import QueuedJob, order_queue

NOW = 1000.0
A, B, C = "org/a@1", "org/b@1", "org/c@1"
ADAPTERS = st.sampled_from([A, B, C, None])


# --- order ------------------------------------------------------------------------


def test_jobs_for_the_current_adapter_go_first_and_then_group() -> None:
    queued = [("j1", B, NOW - 3), ("j2", A, NOW - 2), ("j3", B, NOW - 1), ("j4", A, NOW)]
    plan = order_queue(A, queued, NOW, max_age_s=30.0)
    assert [j.job_id for j in plan] == ["j2", "j4", "j1", "j3"]
    assert plan[0] == QueuedJob("j2", A, NOW - 2)


def test_an_over_age_job_goes_first_oldest_first() -> None:
    queued = [("j1", A, NOW - 1), ("j2", B, NOW - 40), ("j3", C, NOW - 50)]
    assert [j.job_id for j in order_queue(A, queued, NOW, max_age_s=30.0)] == ["j3", "j2", "j1"]


def test_service_time_keeps_the_bound_along_the_plan() -> None:
    queued = [("b", B, NOW - 25), *((f"a{i}", A, NOW - 20 + i) for i in range(5))]
    # At plan time nobody is over age; after one 10 s job, "b" is, and goes next.
    plan = order_queue(A, queued, NOW, max_age_s=30.0, service_s=10.0)
    assert [j.job_id for j in plan][:2] == ["a0", "b"]
    assert [j.job_id for j in order_queue(A, queued, NOW, max_age_s=30.0)][-1] == "b"


def test_equal_enqueue_times_order_by_job_id() -> None:
    queued = [("j2", B, NOW), ("j1", B, NOW), ("j3", A, NOW)]
    assert [j.job_id for j in order_queue(None, queued, NOW, max_age_s=30.0)] == ["j1", "j2", "j3"]
    assert order_queue(A, [], NOW, max_age_s=30.0) == []


def test_a_worker_fed_a_stream_of_hot_jobs_still_serves_the_odd_one_within_the_bound() -> None:
    """A busy worker on A keeps receiving A jobs; a single B job still starts in time."""
    max_age, service = 30.0, 10.0
    queue: list[tuple[str, str | None, float]] = [("b", B, 0.0)]
    current: str | None = A
    for step in range(20):
        now = step * service
        queue += [(f"a{step}-{k}", A, now) for k in range(2)]  # two hot jobs per job served
        job = order_queue(current, queue, now, max_age)[0]
        queue = [q for q in queue if q[0] != job.job_id]
        current = job.adapter
        if job.job_id == "b":
            assert now - 0.0 <= max_age + service
            return
    raise AssertionError("the B job starved")


# --- properties ---------------------------------------------------------------------

jobs = st.lists(st.tuples(st.sampled_from([A, B, C, None]), st.floats(NOW - 100.0, NOW)), max_size=12).map(
    lambda js: [(f"j{i:02d}", a, t) for i, (a, t) in enumerate(js)]
)


@settings(max_examples=300, deadline=None)
@given(jobs, ADAPTERS, st.floats(1.0, 60.0), st.floats(0.1, 15.0))
def test_no_job_waits_past_the_bound_by_more_than_the_older_jobs_ahead_of_it(
    queued: list[tuple[str, str | None, float]], current: str | None, max_age: float, service: float
) -> None:
    plan = order_queue(current, queued, NOW, max_age, service)
    assert sorted(j.job_id for j in plan) == sorted(q[0] for q in queued)
    for index, job in enumerate(plan):
        due = max(0, math.ceil((job.enqueued_at + max_age - NOW) / service))
        older = sum(1 for q in queued if (q[2], q[0]) < (job.enqueued_at, job.job_id))
        assert index <= due + older


# --- several bases ----------------------------------------------------------------


def test_jobs_group_by_base_then_adapter() -> None:
    sd15, flux = "tiny/sd15-base", "tiny/flux-base"
    queued = [
        ("f1", A, NOW - 5, flux),
        ("s1", B, NOW - 4, sd15),
        ("f2", B, NOW - 3, flux),
        ("s2", A, NOW - 2, sd15),
        ("f3", A, NOW - 1, flux),
    ]
    plan = order_queue(A, queued, NOW, max_age_s=30.0, current_base=sd15)
    # sd15's A first (fused now), then sd15's other job, then one base switch for all of flux's.
    assert [j.job_id for j in plan] == ["s2", "s1", "f1", "f3", "f2"]


def test_the_age_bound_holds_across_bases() -> None:
    sd15, flux = "tiny/sd15-base", "tiny/flux-base"
    queued = [("f1", A, NOW - 20, flux), *((f"s{i}", A, NOW - 15 + i, sd15) for i in range(4))]
    # Nobody is over age at first; after two 4 s jobs of the base in use, flux's job is, and goes.
    plan = order_queue(A, queued, NOW, max_age_s=25.0, service_s=4.0, current_base=sd15)
    assert [j.job_id for j in plan] == ["s0", "s1", "f1", "s2", "s3"]


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.tuples(ADAPTERS, st.floats(0, 60), st.sampled_from(["p", "q", None])), min_size=1, max_size=12),
    st.sampled_from(["p", "q", None]),
)
def test_with_bases_every_job_is_served_once_and_none_waits_past_the_bound(
    jobs: list[tuple[str | None, float, str | None]], base: str | None
) -> None:
    queued = [(f"j{i}", adapter, NOW - age, b) for i, (adapter, age, b) in enumerate(jobs)]
    plan = order_queue(A, queued, NOW, max_age_s=30.0, service_s=5.0, current_base=base)
    assert sorted(j.job_id for j in plan) == sorted(j[0] for j in queued)
    clock = NOW
    for job in plan:
        # A job starts past the bound only while an older one does too (served oldest first).
        waiting = [q for q in plan[plan.index(job) :] if clock - q.enqueued_at >= 30.0]
        if waiting:
            assert job == min(waiting, key=lambda q: (q.enqueued_at, q.job_id))
        clock += 5.0
