"""Fleet: heartbeats plus the jobs placed since, as placement sees them."""

from __future__ import annotations

from common.schemas import AdapterRef, WorkerState, adapter_set_key
from router.fleet import Fleet
from router.placement import PlacementRules

A = [AdapterRef(repo_id="u/a", revision="1")]
NOW = 1_000.0


def idle(worker_id: str, *, fused: list[AdapterRef] | None = None) -> WorkerState:
    fused = fused or []
    return WorkerState(
        worker_id=worker_id,
        pool="p",
        fused=[a.key for a in fused],
        fused_set=adapter_set_key(fused),
        inference_s=0.2,
        swap_s=0.05,
        last_seen=NOW - 0.5,
    )


def test_jobs_placed_since_the_heartbeat_count_as_queued_and_spread_a_burst() -> None:
    fleet = Fleet(PlacementRules(max_queue=2))
    workers = [idle("w1", fused=A), idle("w2")]
    first = [fleet.place(A, workers, NOW + i * 0.01, f"j{i}") for i in range(3)]
    # The holder takes A until two wait there; the third goes to the other worker.
    assert first == ["w1", "w1", "w2"]


def test_a_job_seen_finished_no_longer_counts_before_the_next_heartbeat() -> None:
    fleet = Fleet(PlacementRules(max_queue=2))
    workers = [idle("w1", fused=A), idle("w2")]
    # Requests one after another, each done before the next (and before any heartbeat).
    for i in range(6):
        assert fleet.place(A, workers, NOW + i * 0.1, f"j{i}") == "w1"
        fleet.finished(f"j{i}")


def test_unfinished_placements_are_dropped_by_a_newer_heartbeat() -> None:
    fleet = Fleet(PlacementRules(max_queue=2))
    w1, w2 = idle("w1", fused=A), idle("w2")
    assert [fleet.place(A, [w1, w2], NOW + i * 0.01, f"j{i}") for i in range(2)] == ["w1", "w1"]
    fresh = w1.model_copy(update={"last_seen": NOW + 1})
    assert fleet.place(A, [fresh, w2], NOW + 1.1, "j2") == "w1"


def test_finishing_an_unknown_job_changes_nothing() -> None:
    fleet = Fleet(PlacementRules(max_queue=2))
    workers = [idle("w1", fused=A), idle("w2")]
    assert fleet.place(A, workers, NOW, "j0") == "w1"
    fleet.finished("other")
    assert fleet.place(A, workers, NOW + 0.01, "j1") == "w1"
    assert fleet.place(A, workers, NOW + 0.02, "j2") == "w2"


def test_the_same_adapter_at_another_strength_is_not_held() -> None:
    fleet = Fleet(PlacementRules(max_queue=2))
    half = [A[0].model_copy(update={"scale": 0.5})]
    workers = [idle("w1", fused=A), idle("w2", fused=half)]
    assert fleet.place(half, workers, NOW, "j0") == "w2"
    assert fleet.place(A, workers, NOW, "j1") == "w1"


def test_a_multi_base_worker_is_seen_with_its_base_tier_and_its_other_pools_jobs() -> None:
    fleet = Fleet(PlacementRules(max_queue=3, max_wait_s=60.0))
    # Worker m serves pools p and q: its base of q is on the device, its base of p is warm.
    m_in_p = idle("m").model_copy(update={"base_tier": "warm", "warm_switch_s": 0.3, "pools": ["p", "q"]})
    m_in_q = idle("m").model_copy(update={"pool": "q", "pools": ["p", "q"]})
    other = idle("o").model_copy(update={"base_tier": "warm", "warm_switch_s": 0.35})
    assert fleet.place([], [m_in_p, other], NOW, "probe") == "m"  # the cheaper switch
    fleet.finished("probe")
    assert fleet.place([], [m_in_q], NOW + 0.01, "jq") == "m"
    # Before m's next heartbeat, pool p sees the job placed on m in q: it runs before a switch
    # to p's base (0.2 s + 0.3 s), so the other worker's 0.35 s switch is sooner now.
    assert fleet.place([], [m_in_p, other], NOW + 0.02, "jp") == "o"
    fleet.finished("jq")
    fleet.finished("jp")
    assert fleet.place([], [m_in_p, other], NOW + 0.03, "jp2") == "m"
