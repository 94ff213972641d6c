"""Base tiering under byte budgets: which base goes where, and the moves that take it there."""

from __future__ import annotations

import random

import pytest

from worker.tiers import BaseDoesNotFit, Budgets, Move, Tiers

GB = 10**9


def tiers(device: int, host: int | None = None, disk: int | None = None, **bases: int) -> Tiers:
    t = Tiers(Budgets(device, host, disk))
    for name, nbytes in bases.items():
        t.add(name, nbytes, disk_bytes=nbytes)
    return t


def test_a_single_base_is_active_and_keeps_no_host_copy() -> None:
    t = Tiers(Budgets(device=8 * GB))
    moves = t.add("sdxl", 7 * GB, disk_bytes=7 * GB)
    # Loaded into host memory, copied to the device; its host copy would never be read again.
    assert moves == [Move("sdxl", "load_warm"), Move("sdxl", "drop_host")]
    assert t.tier("sdxl") == "active"
    assert t.tier_bytes() == {"device": 7 * GB, "host": 0, "disk": 7 * GB}
    assert t.activate("sdxl") == []


def test_a_base_that_cannot_fit_the_device_budget_is_refused_at_start() -> None:
    t = Tiers(Budgets(device=4 * GB))
    with pytest.raises(BaseDoesNotFit, match=r"sdxl needs 7000000000 bytes on the device.*LORAFARM_BASE_DEVICE_BYTES"):
        t.add("sdxl", 7 * GB, disk_bytes=7 * GB)
    assert "sdxl" not in t


def test_bases_whose_files_exceed_the_disk_budget_are_refused_at_start() -> None:
    t = Tiers(Budgets(device=8 * GB, disk=10 * GB))
    t.add("sdxl", 7 * GB, disk_bytes=7 * GB)
    with pytest.raises(BaseDoesNotFit, match="LORAFARM_BASE_DISK_BYTES"):
        t.add("sd3", 5 * GB, disk_bytes=5 * GB)


def test_switching_keeps_the_other_base_warm_in_host_memory() -> None:
    t = tiers(device=8 * GB, sdxl=7 * GB, sd15=2 * GB)
    # Adding sd15 sent sdxl to host memory (it had dropped its copy while alone).
    assert (t.tier("sdxl"), t.tier("sd15")) == ("warm", "active")
    moves = t.activate("sdxl")
    # sd15's host copy is kept from its load: leaving the device costs it nothing.
    assert moves == [Move("sd15", "free_device"), Move("sdxl", "load_warm")]
    assert (t.tier("sdxl"), t.tier("sd15")) == ("active", "warm")
    assert t.tier_bytes() == {"device": 7 * GB, "host": 9 * GB, "disk": 9 * GB}


def test_bases_that_fit_the_device_together_all_stay_active() -> None:
    t = tiers(device=10 * GB, sdxl=7 * GB, sd15=2 * GB)
    assert (t.tier("sdxl"), t.tier("sd15")) == ("active", "active")
    assert t.tier_bytes()["host"] == 0
    assert t.activate("sdxl") == [] and t.activate("sd15") == []


def test_past_the_host_budget_a_base_goes_cold_and_comes_back_from_disk() -> None:
    t = tiers(device=8 * GB, host=3 * GB, sdxl=7 * GB, sd15=2 * GB)
    # sdxl (7 GB) cannot be held in 3 GB of host memory: it is cold, sd15 active with its copy.
    assert (t.tier("sdxl"), t.tier("sd15")) == ("cold", "active")
    moves = t.activate("sdxl")
    assert moves == [Move("sd15", "free_device"), Move("sdxl", "load_cold", keep_host=False)]
    assert (t.tier("sdxl"), t.tier("sd15")) == ("active", "warm")
    assert t.switch_s("sd15") < t.switch_s("sdxl") or t.tier("sdxl") == "active"


def test_a_cold_load_keeps_a_copy_in_room_no_warm_base_needs() -> None:
    t = tiers(device=4 * GB, host=3 * GB, a=2 * GB, b=2 * GB, c=GB)
    t.activate("a")
    assert [t.tier(n) for n in "abc"] == ["active", "cold", "active"]
    moves = t.activate("b")
    # c leaves the device (its copy stays: warm); room for b's copy is made from a's copy only,
    # a copy of a base that stays on the device, never from a warm base's.
    assert moves == [Move("c", "free_device"), Move("a", "drop_host"), Move("b", "load_cold", keep_host=True)]
    assert [t.tier(n) for n in "abc"] == ["active", "active", "warm"]


def test_a_warm_copy_is_never_dropped_to_keep_a_copy_of_an_active_base() -> None:
    t = tiers(device=2 * GB, host=2 * GB, a=2 * GB, b=2 * GB)
    assert (t.tier("a"), t.tier("b")) == ("cold", "active")
    assert t.activate("a") == [Move("b", "free_device"), Move("a", "load_cold", keep_host=False)]
    assert (t.tier("a"), t.tier("b")) == ("active", "warm")


def test_eviction_is_lru_when_costs_are_equal() -> None:
    t = tiers(device=2 * GB, a=2 * GB, b=2 * GB, c=2 * GB)
    t.activate("a")
    t.activate("b")
    t.activate("c")
    t.activate("a")
    assert t.activate("b")[0] == Move("a", "free_device")
    # Host memory for two copies: the one dropped is the least recently used base's.
    t2 = tiers(device=2 * GB, host=4 * GB, a=2 * GB, b=2 * GB, c=2 * GB)
    assert [t2.tier(n) for n in "abc"] == ["warm", "warm", "active"]
    # c must leave the device with a copy; b's copy (b used before c) makes the room.
    assert t2.activate("a") == [Move("b", "drop_host"), Move("c", "to_host"), Move("a", "load_warm")]


def test_a_base_slow_to_reload_outlives_a_more_recent_cheap_one() -> None:
    t = tiers(device=2 * GB, host=4 * GB, slow=2 * GB, cheap=2 * GB, x=2 * GB)
    for _ in range(30):
        t.observe("slow", "cold", 60.0)
        t.observe("cheap", "cold", 0.5)
    for name in ("slow", "cheap", "x"):
        t.activate(name)
    # cheap was used after slow, but its copy goes: losing slow's would cost a minute of reads.
    assert [t.tier(n) for n in ("slow", "cheap", "x")] == ["warm", "cold", "active"]


def test_random_sequences_keep_the_budgets_and_moves_that_can_be_carried_out() -> None:
    rng = random.Random(5)
    for _ in range(300):
        budgets = Budgets(rng.choice([2, 3, 4]) * GB, rng.choice([None, 2 * GB, 3 * GB, 5 * GB]))
        t, device, host = Tiers(budgets), set(), set()
        for name in "abcd":
            host.add(name)  # loaded into host memory
            carry_out(t.add(name, rng.choice([1, 2]) * GB, disk_bytes=GB), device, host)
        for _ in range(12):
            name = rng.choice("abcd")
            carry_out(t.activate(name), device, host)
            assert name in device
            assert {n for n in "abcd" if t.tier(n) == "active"} == device
            assert {n for n in "abcd" if t.tier(n) == "warm"} == host - device
            used = t.tier_bytes()
            assert used["device"] <= budgets.device
            assert budgets.host is None or used["host"] <= budgets.host


def carry_out(moves: list[Move], device: set[str], host: set[str]) -> None:
    """What a transport would do, refusing a move that cannot be done from where the base is."""
    for m in moves:
        if m.kind == "to_host":
            assert m.base in device and m.base not in host
            host.add(m.base)
            device.discard(m.base)
        elif m.kind in ("free_device", "to_disk"):
            assert m.base in device and ((m.base in host) == (m.kind == "free_device"))
            device.discard(m.base)
        elif m.kind == "drop_host":
            assert m.base in host
            host.discard(m.base)
        elif m.kind == "load_warm":
            assert m.base in host and m.base not in device
            device.add(m.base)
        else:
            assert m.base not in host and m.base not in device
            device.add(m.base)
            if m.keep_host:
                host.add(m.base)


def test_switch_costs_start_as_estimates_from_bytes_and_follow_measurements() -> None:
    t = tiers(device=8 * GB, sdxl=7 * GB, sd15=2 * GB)
    warm, cold = t.costs("sdxl")
    assert warm == pytest.approx(7 * GB / 25e9)  # host to device at the assumed 25 GB/s
    assert cold > warm
    assert t.switch_s("sdxl") == warm and t.switch_s("sd15") == 0.0
    for _ in range(30):
        t.observe("sdxl", "warm", 0.5)
    assert t.costs("sdxl")[0] == pytest.approx(0.5, rel=1e-3)
