"""A least-recently-used map bounded by bytes, with an eviction hook and counters.

Pure bookkeeping: it holds values and their sizes, it never looks inside them. The worker keeps
parsed adapters in one (keyed by ``repo@sha``), the prefetch thread fills it, hence the lock.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Generic, TypeVar

K = TypeVar("K")
V = TypeVar("V")


@dataclass
class CacheStats:
    hits: int = 0
    misses: int = 0
    evictions: int = 0
    rejected: int = 0  # values larger than the whole cache, never stored


class ByteLRU(Generic[K, V]):
    """``capacity`` bytes of values; putting past it evicts the least recently used first."""

    def __init__(
        self,
        capacity: int,
        *,
        size_of: Callable[[V], int],
        on_evict: Callable[[K, V], None] | None = None,
    ) -> None:
        if capacity < 0:
            raise ValueError("capacity must be >= 0")
        self.capacity = capacity
        self._size_of = size_of
        self._on_evict = on_evict
        self._items: OrderedDict[K, tuple[V, int]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.RLock()
        self.stats = CacheStats()

    @property
    def nbytes(self) -> int:
        """Bytes held now."""
        return self._bytes

    def counts(self) -> dict[str, int]:
        """The counters as a dict (hits, misses, evictions, rejected), e.g. for metrics."""
        return dict(vars(self.stats))

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, key: object) -> bool:
        """Membership, without counting a hit or refreshing recency."""
        return key in self._items

    def __iter__(self) -> Iterator[K]:
        return iter(self.keys())

    def keys(self) -> list[K]:
        """Keys from least to most recently used."""
        with self._lock:
            return list(self._items)

    def get(self, key: K) -> V | None:
        """The value (now most recently used), or None; counts a hit or a miss."""
        with self._lock:
            entry = self._items.get(key)
            if entry is None:
                self.stats.misses += 1
                return None
            self._items.move_to_end(key)
            self.stats.hits += 1
            return entry[0]

    def put(self, key: K, value: V) -> list[K]:
        """Store ``value`` as most recently used; returns the keys evicted to make room.

        A value larger than the whole capacity is not stored (and evicts nothing).
        """
        size = self._size_of(value)
        if size < 0:
            raise ValueError("size_of returned a negative size")
        with self._lock:
            self._discard(key)
            if size > self.capacity:
                self.stats.rejected += 1
                return []
            evicted = []
            while self._bytes + size > self.capacity:
                old_key, (old_value, old_size) = self._items.popitem(last=False)
                self._bytes -= old_size
                self.stats.evictions += 1
                evicted.append((old_key, old_value))
            self._items[key] = (value, size)
            self._bytes += size
        for old_key, old_value in evicted:  # outside the lock: the hook may do I/O or call back
            if self._on_evict is not None:
                self._on_evict(old_key, old_value)
        return [k for k, _ in evicted]

    def pop(self, key: K) -> V | None:
        """Remove and return the value (no hook: the caller asked for it), or None."""
        with self._lock:
            entry = self._discard(key)
        return None if entry is None else entry[0]

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self._bytes = 0

    def _discard(self, key: K) -> tuple[V, int] | None:
        entry = self._items.pop(key, None)
        if entry is not None:
            self._bytes -= entry[1]
        return entry
