"""Where the first entry no worker has taken starts, from a stream's XINFO GROUPS reply (as redis-py parses it)."""

from __future__ import annotations

from common import keys
from common.protocol import unclaimed_start


def group(name: str, last: str) -> dict[str, object]:
    return {"name": name.encode(), "consumers": 1, "pending": 0, "last-delivered-id": last.encode()}


def test_after_the_workers_last_delivered_entry() -> None:
    assert unclaimed_start([group("other", "9-0"), group(keys.WORKER_GROUP, "1712-3")]) == "(1712-3"


def test_from_the_start_while_nothing_was_delivered() -> None:
    assert unclaimed_start([]) == "-"  # no workers' group: nobody has read the stream
    assert unclaimed_start([group("other", "9-0")]) == "-"
    assert unclaimed_start([group(keys.WORKER_GROUP, "0-0")]) == "-"
