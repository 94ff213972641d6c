"""The pure admission decisions: retry times and headers from a key's bucket, and what a key may hold."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from common.shares import Quota
from common.tenants import KEY_PREFIX, Tenant, hash_key, new_key
from router.admission import (
    Bucket,
    fair_share,
    job_time_s,
    pool_cap,
    quota,
    rate_headers,
    rate_refusal,
    reset_s,
    retry_after_s,
)


def test_an_empty_bucket_says_when_the_next_token_comes() -> None:
    # 0.5 tokens/s: 0.2 left means 1.6 s to a whole one, so 2 s (whole seconds, rounded up).
    bucket = Bucket(taken=False, tokens=0.2, rate_per_s=0.5, capacity=3)
    assert retry_after_s(bucket) == 2
    assert reset_s(bucket) == 6  # 2.8 tokens at 0.5/s: 5.6 s
    headers = rate_headers(bucket)
    assert headers["X-RateLimit-Limit"] == "3"
    assert headers["X-RateLimit-Remaining"] == "0"
    assert headers["X-RateLimit-Reset"] == "6"
    assert headers["RateLimit-Policy"] == '"key";q=3;w=6'
    assert headers["RateLimit"] == '"key";r=0;t=6'


def test_a_fast_rate_still_asks_for_a_whole_second() -> None:
    # Retry-After is whole seconds; a client told 0 would retry at once.
    assert retry_after_s(Bucket(taken=False, tokens=0.9, rate_per_s=100.0, capacity=100)) == 1


def test_a_full_bucket_resets_now() -> None:
    bucket = Bucket(taken=True, tokens=4.0, rate_per_s=2.0, capacity=4)
    assert reset_s(bucket) == 0
    assert rate_headers(bucket)["X-RateLimit-Remaining"] == "4"
    assert rate_headers(bucket)["RateLimit"] == '"key";r=4;t=0'


def test_the_refusal_names_the_key_and_its_limit() -> None:
    tenant = Tenant(name="acme", rate_per_s=2, burst=5)
    message = rate_refusal(tenant, Bucket(taken=False, tokens=0.0, rate_per_s=2, capacity=5))
    assert message == "key acme is past its rate of 2 requests/s (burst 5); retry in 1 s"


def test_the_bucket_holds_one_second_unless_a_burst_is_set() -> None:
    assert Tenant(name="a", rate_per_s=0.2).capacity == 1
    assert Tenant(name="a", rate_per_s=3.5).capacity == 4
    assert Tenant(name="a", rate_per_s=3.5, burst=10).capacity == 10


@pytest.mark.parametrize("name", ["", "a b", "a:b", "a/b", "-a", "x" * 65, "é"])
def test_a_tenant_name_must_fit_in_a_redis_key_and_a_log_line(name: str) -> None:
    with pytest.raises(ValidationError):
        Tenant(name=name)


def test_keys_are_random_and_stored_by_their_hash() -> None:
    first, second = new_key(), new_key()
    assert first != second and first.startswith(KEY_PREFIX) and len(first) > 40
    assert hash_key(first) != hash_key(second)
    assert len(hash_key(first)) == 64 and first not in hash_key(first)


def test_the_share_keeps_every_worker_busy_for_one_key() -> None:
    assert fair_share(live_workers=3, per_worker=2) == 6
    assert fair_share(live_workers=0, per_worker=2) == 1  # never zero: a key can always run one job
    assert pool_cap(queue_max=64, queue_share=0.5) == 32
    assert pool_cap(queue_max=1, queue_share=0.5) == 1


def test_what_a_key_may_hold() -> None:
    limited = Tenant(name="a", concurrency=4)
    open_ = Tenant(name="b")
    fair = {"live_workers": 2, "per_worker": 2, "queue_max": 8, "queue_share": 0.5}
    assert quota(None, fair=True, **fair) is None  # anonymous: counted nowhere
    assert quota(limited, fair=True, **fair) == Quota(concurrency=4, share=4, pool_cap=4)
    assert quota(open_, fair=True, **fair) == Quota(concurrency=0, share=4, pool_cap=4)
    # Without the key ring, only a concurrency limit is counted, and a key without one is not.
    assert quota(limited, fair=False, **fair) == Quota(concurrency=4, share=0, pool_cap=0)
    assert quota(open_, fair=False, **fair) is None


def test_a_concurrency_refusal_waits_about_one_job() -> None:
    assert job_time_s([2.4, None, 3.6]) == 3.0
    assert job_time_s([]) == 1.0
    assert job_time_s([0.1]) == 1.0
    assert job_time_s([500.0]) == 60.0
