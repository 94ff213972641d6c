"""Redis key names: one prefix, no collisions between kinds, ids used as they are."""

from __future__ import annotations

import inspect

from common import keys

POOL = "stabilityai/stable-diffusion-xl-base-1.0"


def _key_functions() -> dict[str, object]:
    return {name: fn for name, fn in inspect.getmembers(keys, inspect.isfunction) if fn.__module__ == keys.__name__}


def test_every_key_has_the_prefix_and_a_distinct_kind() -> None:
    made = {}
    for name, fn in _key_functions().items():
        params = inspect.signature(fn).parameters  # type: ignore[arg-type]
        key = fn(*["x"] * len(params))  # type: ignore[operator]
        assert key.startswith(f"{keys.PREFIX}:"), name
        made[name] = key
    assert len(set(made.values())) == len(made), made


def test_pool_ids_with_slashes_are_kept() -> None:
    assert keys.pool_stream(POOL) == f"lorafarm:stream:{POOL}"
    assert keys.dead_letter_stream(POOL) == f"lorafarm:dead:{POOL}"
    assert keys.pool_workers(POOL) == f"lorafarm:workers:{POOL}"


def test_per_job_keys_differ_by_job() -> None:
    for name in ("job_result", "job_done", "job_status", "job_events", "job_cancel", "job_entry"):
        fn = getattr(keys, name)
        assert fn("a") != fn("b")
        assert fn("a").endswith(":a")


def test_worker_stream_is_not_a_pool_stream_of_another_pool() -> None:
    # A pool named "p:worker:w" must not collide with worker w's stream of pool p.
    assert keys.worker_stream("p", "w") == "lorafarm:stream:p:worker:w"
    assert keys.pool_stream("p") != keys.worker_stream("p", "w")


def test_ttls_are_sane() -> None:
    assert 60 <= keys.RESULT_TTL_S <= 86400
    assert keys.CANCEL_TTL_S >= 60
