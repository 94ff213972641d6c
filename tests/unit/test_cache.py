"""ByteLRU: the host cache of parsed adapters, bounded by bytes."""

from __future__ import annotations

import threading

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from worker.cache import ByteLRU


def make(capacity: int, evicted: list[tuple[str, bytes]] | None = None) -> ByteLRU[str, bytes]:
    hook = None if evicted is None else (lambda k, v: evicted.append((k, v)))
    return ByteLRU(capacity, size_of=len, on_evict=hook)


def test_get_counts_hits_and_misses() -> None:
    cache = make(10)
    cache.put("a", b"123")
    assert cache.get("a") == b"123"
    assert cache.get("b") is None
    assert cache.counts() == {"hits": 1, "misses": 1, "evictions": 0, "rejected": 0}


def test_least_recently_used_goes_first_and_the_hook_hears_of_it() -> None:
    evicted: list[tuple[str, bytes]] = []
    cache = make(10, evicted)
    cache.put("a", b"aaaa")
    cache.put("b", b"bbbb")
    cache.get("a")  # b is now the least recently used
    assert cache.put("c", b"cccc") == ["b"]
    assert evicted == [("b", b"bbbb")]
    assert cache.keys() == ["a", "c"]
    assert cache.nbytes == 8
    assert cache.stats.evictions == 1


def test_one_put_may_evict_several() -> None:
    cache = make(10)
    for key in "abcde":
        cache.put(key, b"xx")
    assert cache.put("big", b"x" * 9) == ["a", "b", "c", "d", "e"]
    assert cache.keys() == ["big"]


def test_value_larger_than_capacity_is_not_stored_and_evicts_nothing() -> None:
    cache = make(10)
    cache.put("a", b"aaaa")
    assert cache.put("huge", b"x" * 11) == []
    assert "huge" not in cache and "a" in cache
    assert cache.stats.rejected == 1


def test_replacing_a_key_updates_its_size() -> None:
    cache = make(10)
    cache.put("a", b"aaaa")
    cache.put("a", b"aaaaaaaa")
    assert cache.nbytes == 8 and len(cache) == 1
    assert cache.put("b", b"bb") == []


def test_pop_removes_without_the_hook() -> None:
    evicted: list[tuple[str, bytes]] = []
    cache = make(10, evicted)
    cache.put("a", b"aaa")
    assert cache.pop("a") == b"aaa"
    assert cache.pop("a") is None
    assert cache.nbytes == 0 and evicted == []


def test_contains_does_not_count_or_refresh() -> None:
    cache = make(4)
    cache.put("a", b"aa")
    cache.put("b", b"bb")
    assert "a" in cache
    assert cache.put("c", b"cc") == ["a"]
    assert cache.stats.hits == 0 and cache.stats.misses == 0


def test_negative_capacity_is_refused() -> None:
    with pytest.raises(ValueError):
        make(-1)


@settings(max_examples=200, derandomize=True)
@given(
    capacity=st.integers(0, 64),
    ops=st.lists(
        st.tuples(st.sampled_from(["put", "get", "pop"]), st.sampled_from("abcdefgh"), st.integers(0, 40)),
        max_size=60,
    ),
)
def test_bytes_never_exceed_capacity_and_match_a_model(capacity: int, ops: list[tuple[str, str, int]]) -> None:
    evicted: list[tuple[str, bytes]] = []
    cache = make(capacity, evicted)
    model: dict[str, int] = {}  # key -> size, in recency order
    for op, key, size in ops:
        if op == "put":
            model.pop(key, None)
            if size <= capacity:
                while sum(model.values()) + size > capacity:
                    del model[next(iter(model))]
                model[key] = size
            cache.put(key, b"x" * size)
        elif op == "get":
            if key in model:
                model[key] = model.pop(key)
            assert (cache.get(key) is not None) == (key in model)
        else:
            model.pop(key, None)
            cache.pop(key)
        assert cache.keys() == list(model)
        assert cache.nbytes == sum(model.values()) <= capacity
    assert cache.stats.evictions == len(evicted)


def test_concurrent_puts_keep_the_books_straight() -> None:
    cache = make(1000)

    def fill(prefix: str) -> None:
        for i in range(500):
            cache.put(f"{prefix}{i}", b"x" * 7)
            cache.get(f"{prefix}{i - 1}")

    threads = [threading.Thread(target=fill, args=(p,)) for p in "abcd"]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert cache.nbytes == 7 * len(cache) <= 1000
    assert cache.stats.evictions == 4 * 500 - len(cache)
