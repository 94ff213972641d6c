"""Placement decisions: which worker of a pool gets a job."""

from __future__ import annotations

import math
from dataclasses import replace

from hypothesis import given, settings
from hypothesis import strategies as st

from router.placement import (
    ABSENT,
    IN_HOST,
    ON_DEVICE,
    TAIL,
    PlacementRules,
    WorkerView,
    base_switch_s,
    choose_worker,
    expected_finish_s,
    expected_wait_s,
    holder_tier,
    is_live,
    is_overloaded,
)

NOW = 1000.0
A, B, C = "org/a@1", "org/b@1", "org/c@1"
RULES = PlacementRules(
    max_queue=2,
    max_wait_s=2.0,
    max_holders=2,
    stale_after_s=10.0,
    min_residency_s=30.0,
    damping_s=1.0,
    default_swap_s=0.5,
    default_fetch_s=1.0,
    default_inference_s=10.0,
    # The ranking rules below are tested without the spill; test_overload_spills_* covers it.
    spill_to_shared=False,
)


def worker(worker_id: str, **kw: object) -> WorkerView:
    """An idle, fresh worker on the plain base, changed by ``kw``."""
    return replace(WorkerView(worker_id, last_seen=NOW), **kw)  # type: ignore[arg-type]


def busy(worker_id: str, remaining_s: float, **kw: object) -> WorkerView:
    return worker(worker_id, busy=True, remaining_s=remaining_s, **kw)


# --- the worker views -------------------------------------------------------------------


def test_holder_tiers_rank_tail_then_device_then_host() -> None:
    w = worker("w", fused=A, queued=(B,), cached=frozenset({C}))
    assert holder_tier(w, B) == TAIL  # what will be fused once the queue is served
    assert holder_tier(w, A) == ON_DEVICE
    assert holder_tier(w, C) == IN_HOST
    assert holder_tier(w, "org/d@1") == ABSENT
    assert holder_tier(worker("base"), None) == TAIL
    assert holder_tier(w, None) == IN_HOST  # restoring the base needs no download


def test_expected_wait_counts_the_job_in_flight_and_the_swaps_of_the_queue() -> None:
    w = busy("w", 4.0, fused=A, queued=(A, B, B), inference_s=10.0, swap_s=0.5)
    assert expected_wait_s(w, RULES) == 4.0 + 10.0 + (10.0 + 0.5) + 10.0


def test_a_download_hides_behind_the_jobs_ahead() -> None:
    idle, behind = worker("w1"), busy("w2", 0.4)
    # Idle: the full fetch (1.0 s) is on the critical path; behind 0.4 s of work, only 0.6 s is.
    assert expected_finish_s(idle, A, RULES, NOW) == 1.0 + 0.5 + 10.0
    assert math.isclose(expected_finish_s(behind, A, RULES, NOW), 0.4 + 0.6 + 0.5 + 10.0)


def test_overloaded_by_depth_or_by_wait() -> None:
    assert not is_overloaded(busy("w", 1.0), RULES)
    assert is_overloaded(busy("w", 1.0, queued=(A,)), RULES)  # depth 2 = max_queue
    assert is_overloaded(busy("w", 5.0), RULES)  # would wait 5 s > max_wait_s


def test_staleness_and_announced_status_decide_liveness() -> None:
    assert is_live(worker("w"), RULES, NOW + 10.0)
    assert not is_live(worker("w"), RULES, NOW + 10.5)
    assert not is_live(worker("w", alive=False), RULES, NOW)


# --- choose_worker ----------------------------------------------------------------------


def test_affinity_hit_goes_to_the_worker_with_the_adapter_fused() -> None:
    workers = [worker("w1"), worker("w2", fused=A), worker("w3", fused=B)]
    assert choose_worker(A, workers, RULES, NOW) == "w2"


def test_base_jobs_go_to_a_worker_on_the_plain_base() -> None:
    workers = [worker("w1", fused=A), worker("w2")]
    assert choose_worker(None, workers, RULES, NOW) == "w2"


def test_a_holder_with_a_short_wait_beats_an_idle_worker() -> None:
    workers = [worker("w1"), busy("w2", 1.5, fused=A)]
    assert choose_worker(A, workers, RULES, NOW) == "w2"


def test_a_worker_with_a_job_for_the_adapter_queued_is_a_holder() -> None:
    workers = [worker("w1", fused=B), busy("w2", 0.5, fused=B, queued=())]
    workers[1] = replace(workers[1], queued=(A,))
    # w2 is at max_queue, so overloaded; a free holder would win, here the job spills to w1.
    assert choose_worker(A, workers, RULES, NOW) == "w1"
    roomy = replace(RULES, max_queue=3, max_wait_s=20.0)
    assert choose_worker(A, workers, roomy, NOW) == "w2"


def test_cached_beats_absent_when_nobody_has_it_fused() -> None:
    workers = [worker("w1", fused=B), worker("w2", fused=C, cached=frozenset({A}))]
    assert choose_worker(A, workers, RULES, NOW) == "w2"


def test_fused_beats_cached() -> None:
    workers = [worker("w1", cached=frozenset({A})), worker("w2", fused=A)]
    assert choose_worker(A, workers, RULES, NOW) == "w2"


def test_overloaded_holder_spills_to_the_least_loaded_worker() -> None:
    holder = busy("w1", 9.0, fused=A, queued=(A,))
    workers = [holder, busy("w2", 6.0, fused=B), busy("w3", 0.5, fused=C)]
    assert choose_worker(A, workers, RULES, NOW) == "w3"


def test_a_full_queue_is_not_topped_up_while_another_worker_has_room() -> None:
    rules = replace(RULES, max_wait_s=20.0)
    full = busy("w1", 0.1, queued=(None,))  # at max_queue, though it would finish sooner
    assert choose_worker(A, [full, busy("w2", 12.0)], rules, NOW) == "w2"


def test_spread_bound_keeps_a_hot_adapter_on_its_holders_when_nobody_is_idle() -> None:
    holders = [busy("w1", 3.0, fused=A, queued=(A,)), busy("w2", 9.0, fused=A, queued=(A,))]
    other = busy("w3", 1.0, fused=B)  # would finish the job sooner, but must not be taken over
    assert choose_worker(A, [*holders, other], RULES, NOW) == "w1"
    assert choose_worker(A, [*holders, other], replace(RULES, max_holders=3), NOW) == "w3"


def test_an_idle_worker_is_used_even_at_the_spread_bound() -> None:
    holders = [busy("w1", 3.0, fused=A, queued=(A,)), busy("w2", 9.0, fused=A, queued=(A,))]
    assert choose_worker(A, [*holders, worker("w3", fused=B)], RULES, NOW) == "w3"


def test_when_everyone_is_overloaded_the_soonest_finish_wins() -> None:
    workers = [busy("w1", 9.0, queued=(B,)), busy("w2", 2.0, queued=(C,)), busy("w3", 8.0, queued=(A,))]
    # w3 holds A (queued) but finishes later than w2 even with w2's extra swap...
    assert choose_worker(A, workers, RULES, NOW) == "w2"
    # ...unless the spread bound is reached: then the job queues on its holder.
    assert choose_worker(A, workers, replace(RULES, max_holders=1), NOW) == "w3"


def test_overload_spills_to_the_shared_stream_with_the_default_rules() -> None:
    spill = replace(RULES, spill_to_shared=True)
    crowded = [busy("w1", 9.0, fused=A, queued=(A,)), busy("w2", 2.0, queued=(C,))]
    assert choose_worker(A, crowded, spill, NOW) is None
    # One worker with room: it is used, spill or not.
    assert choose_worker(A, [*crowded, worker("w3", fused=B)], spill, NOW) == "w3"
    assert PlacementRules().spill_to_shared


def test_dead_or_stale_holder_is_skipped() -> None:
    stale = worker("w1", fused=A, last_seen=NOW - 11.0)
    dead = worker("w2", fused=A, alive=False)
    assert choose_worker(A, [stale, dead, worker("w3", fused=B)], RULES, NOW) == "w3"


def test_no_live_worker_means_the_shared_stream() -> None:
    assert choose_worker(A, [], RULES, NOW) is None
    assert choose_worker(A, [worker("w1", last_seen=NOW - 60.0)], RULES, NOW) is None
    assert choose_worker(A, [worker("w1", alive=False)], RULES, NOW) is None


def test_without_affinity_every_job_goes_to_the_shared_stream() -> None:
    assert choose_worker(A, [worker("w1", fused=A)], replace(RULES, affinity=False), NOW) is None


def test_ties_go_to_the_smaller_worker_id_whatever_the_input_order() -> None:
    workers = [worker("w3"), worker("w1"), worker("w2")]
    assert choose_worker(A, workers, RULES, NOW) == "w1"
    assert choose_worker(A, workers[::-1], RULES, NOW) == "w1"


def test_damping_steers_a_new_adapter_away_from_a_worker_that_just_swapped() -> None:
    just = worker("w1", fused=A, last_swap_at=NOW - 1.0)
    settled = worker("w2", fused=C, last_swap_at=NOW - 600.0)
    assert choose_worker(B, [just, settled], RULES, NOW) == "w2"
    assert choose_worker(B, [just, settled], replace(RULES, damping_s=0.0), NOW) == "w1"


def replay(adapters: list[str], rules: PlacementRules, n_workers: int = 2) -> int:
    """Serve ``adapters`` one job at a time, 20 s apart (each done before the next); count swaps."""
    workers = {f"w{i}": worker(f"w{i}") for i in range(n_workers)}
    swaps = 0
    for i, adapter in enumerate(adapters):
        now = NOW + 20.0 * i
        workers = {k: replace(w, last_seen=now) for k, w in workers.items()}
        chosen = choose_worker(adapter, workers.values(), rules, now)
        assert chosen is not None
        w = workers[chosen]
        if w.fused != adapter:
            swaps += 1
            w = replace(w, fused=adapter, last_swap_at=now, cached=w.cached | {adapter})
        workers[chosen] = w
    return swaps


def test_two_alternating_adapters_do_not_thrash_one_worker_while_another_is_free() -> None:
    alternating = [A, B] * 10
    assert replay(alternating, RULES) == 2  # each adapter settles on its own worker
    # Without damping the second worker is never used: a swap on every job.
    assert replay(alternating, replace(RULES, damping_s=0.0)) == 20


# --- workers serving several bases -----------------------------------------------------
# In a pool's view, a multi-base worker's base is active, warm (pinned host) or cold (disk).


def test_a_job_goes_to_the_worker_with_the_base_active_before_one_that_must_switch() -> None:
    active, warm = worker("w2"), worker("w1", base="warm", warm_switch_s=0.3)
    assert choose_worker(None, [warm, active], RULES, NOW) == "w2"
    assert choose_worker(A, [warm, active], RULES, NOW) == "w2"
    # Its own adapter cached does not make up for the switch on top of the swap.
    assert (
        choose_worker(A, [replace(warm, cached=frozenset({A})), replace(active, cached=frozenset({A}))], RULES, NOW)
        == "w2"
    )


def test_a_warm_switch_is_preferred_to_a_cold_load() -> None:
    warm = worker("w2", base="warm", warm_switch_s=0.3, cold_switch_s=4.0)
    cold = worker("w1", base="cold", warm_switch_s=0.3, cold_switch_s=4.0)
    assert choose_worker(None, [cold, warm], RULES, NOW) == "w2"
    assert base_switch_s(warm, RULES) == 0.3 and base_switch_s(cold, RULES) == 4.0
    assert base_switch_s(worker("w"), RULES) == 0.0
    # Unmeasured: the rules' defaults keep the same order.
    assert base_switch_s(worker("w", base="warm"), RULES) < base_switch_s(worker("w", base="cold"), RULES)


def test_a_switch_costs_its_measured_seconds_and_the_base_comes_back_plain() -> None:
    warm = worker("w", base="warm", warm_switch_s=0.3, fused=A, cached=frozenset({B}))
    assert math.isclose(expected_finish_s(warm, None, RULES, NOW), 0.3 + 10.0)  # no restore after a switch
    assert math.isclose(expected_finish_s(warm, B, RULES, NOW), 0.3 + 0.5 + 10.0)
    # Nothing is fused for this pool while the base is not on the device: A is only cached.
    assert holder_tier(warm, A) == ABSENT
    assert holder_tier(replace(warm, cached=frozenset({A})), A) == IN_HOST


def test_jobs_queued_for_an_inactive_base_make_it_a_holder_and_pay_the_switch_once() -> None:
    warm = busy("w", 2.0, base="warm", warm_switch_s=0.3, queued=(A,))
    assert holder_tier(warm, A) == TAIL
    assert math.isclose(expected_wait_s(warm, RULES), 2.0 + 0.3 + 0.5 + 10.0)
    assert math.isclose(expected_finish_s(warm, A, RULES, NOW), 2.0 + 0.3 + 0.5 + 10.0 + 10.0)


def test_jobs_held_for_the_other_bases_share_the_device() -> None:
    other = worker("w1", base="warm", warm_switch_s=0.3, other_queued=1)
    # The other base's job runs first (the worker groups by base): 10 s before this one starts.
    assert expected_wait_s(other, RULES) == 10.0
    assert is_overloaded(busy("w", 0.5, other_queued=1), RULES)  # depth 2 = max_queue
    assert choose_worker(None, [other, worker("w2", base="cold", cold_switch_s=4.0)], RULES, NOW) == "w2"
    # An active base's jobs go before the other bases': their queue does not delay this one.
    assert expected_wait_s(worker("w", other_queued=1), RULES) == 0.0


def test_a_pool_of_multi_base_workers_only_is_placed_like_any_pool() -> None:
    spill = replace(RULES, spill_to_shared=True)
    workers = [worker("w1", base="warm", warm_switch_s=0.3), worker("w2", base="cold", cold_switch_s=4.0)]
    assert choose_worker(A, workers, spill, NOW) == "w1"
    crowded = [replace(w, busy=True, remaining_s=9.0) for w in workers]
    assert choose_worker(A, crowded, spill, NOW) is None  # the shared stream, which both drain


# --- properties -------------------------------------------------------------------------

ADAPTERS = st.sampled_from([A, B, C, None])
views = st.builds(
    WorkerView,
    worker_id=st.sampled_from([f"w{i}" for i in range(8)]),
    last_seen=st.floats(NOW - 30.0, NOW),
    alive=st.booleans(),
    fused=ADAPTERS,
    cached=st.frozensets(st.sampled_from([A, B, C]), max_size=3),
    queued=st.lists(ADAPTERS, max_size=3).map(tuple),
    busy=st.booleans(),
    remaining_s=st.floats(0.0, 12.0),
    swap_s=st.none() | st.floats(0.0, 4.0),
    fetch_s=st.none() | st.floats(0.0, 3.0),
    inference_s=st.none() | st.floats(1.0, 12.0),
    last_swap_at=st.none() | st.floats(NOW - 100.0, NOW),
)
pools = st.lists(views, max_size=8, unique_by=lambda w: w.worker_id)


@settings(max_examples=100, deadline=None)
@given(pools, ADAPTERS, st.permutations(range(8)))
def test_the_choice_is_live_and_does_not_depend_on_input_order(
    workers: list[WorkerView], adapter: str | None, order: list[int]
) -> None:
    chosen = choose_worker(adapter, workers, RULES, NOW)
    live = {w.worker_id for w in workers if is_live(w, RULES, NOW)}
    assert (chosen is None) == (not live)
    assert chosen is None or chosen in live
    shuffled = [workers[i] for i in order if i < len(workers)]
    assert choose_worker(adapter, shuffled, RULES, NOW) == chosen


@settings(max_examples=100, deadline=None)
@given(pools, ADAPTERS)
def test_never_an_overloaded_worker_when_a_live_one_has_room(workers: list[WorkerView], adapter: str | None) -> None:
    rules = replace(RULES, max_holders=len(workers) + 1)  # the spread bound never binds
    chosen = choose_worker(adapter, workers, rules, NOW)
    live = [w for w in workers if is_live(w, rules, NOW)]
    if any(not is_overloaded(w, rules) for w in live):
        assert not is_overloaded(next(w for w in live if w.worker_id == chosen), rules)


@settings(max_examples=100, deadline=None)
@given(pools, ADAPTERS)
def test_with_spill_a_chosen_worker_is_never_overloaded(workers: list[WorkerView], adapter: str | None) -> None:
    rules = replace(RULES, spill_to_shared=True)
    chosen = choose_worker(adapter, workers, rules, NOW)
    if chosen is not None:
        assert not is_overloaded(next(w for w in workers if w.worker_id == chosen), rules)


multi_views = st.builds(
    WorkerView,
    worker_id=st.sampled_from([f"w{i}" for i in range(8)]),
    last_seen=st.floats(NOW - 30.0, NOW),
    fused=ADAPTERS,
    cached=st.frozensets(st.sampled_from([A, B, C]), max_size=3),
    queued=st.lists(ADAPTERS, max_size=3).map(tuple),
    busy=st.booleans(),
    remaining_s=st.floats(0.0, 12.0),
    base=st.sampled_from(["active", "warm", "cold"]),
    warm_switch_s=st.none() | st.floats(0.0, 2.0),
    cold_switch_s=st.none() | st.floats(2.0, 30.0),
    other_queued=st.integers(0, 3),
)


@settings(max_examples=100, deadline=None)
@given(st.lists(multi_views, max_size=8, unique_by=lambda w: w.worker_id), ADAPTERS)
def test_with_several_bases_the_choice_has_room_and_a_plain_base_job_prefers_no_switch(
    workers: list[WorkerView], adapter: str | None
) -> None:
    rules = replace(RULES, max_holders=len(workers) + 1)
    chosen = choose_worker(adapter, workers, rules, NOW)
    live = [w for w in workers if is_live(w, rules, NOW)]
    by_id = {w.worker_id: w for w in workers}
    if any(not is_overloaded(w, rules) for w in live):
        assert not is_overloaded(by_id[str(chosen)], rules)
    # Two idle workers alike but for the base's tier: the one with less to do wins.
    idle = [replace(w, busy=False, queued=(), other_queued=0, fused=None, last_swap_at=None) for w in live]
    if adapter is None and idle:
        pick = by_id_view(idle)[str(choose_worker(None, idle, rules, NOW))]
        assert base_switch_s(pick, rules) == min(base_switch_s(w, rules) for w in idle)


def by_id_view(workers: list[WorkerView]) -> dict[str, WorkerView]:
    return {w.worker_id: w for w in workers}
