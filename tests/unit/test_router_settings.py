"""Router settings from the environment; the error table covers every error type."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from common import errors
from router.errors import STATUS, responses, status_of
from router.placement import WorkerView, choose_worker
from router.settings import RouterSettings, placement_rules


def test_pools_from_a_comma_separated_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LORAFARM_POOLS", "tiny/sdxl-base, tiny/sd15-base")
    monkeypatch.setenv("LORAFARM_CORS_ORIGINS", "http://a.test,http://b.test")
    monkeypatch.setenv("LORAFARM_API_KEY", "sekrit-key-123")
    s = RouterSettings()
    assert s.pools == ["tiny/sdxl-base", "tiny/sd15-base"]
    assert s.default_base == s.base == "tiny/sdxl-base"
    assert s.cors_origins == ["http://a.test", "http://b.test"]
    assert s.api_key is not None and s.api_key.get_secret_value() == "sekrit-key-123"
    assert "sekrit-key-123" not in repr(s)


def test_pools_from_a_json_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LORAFARM_POOLS", '["tiny/sd15-base"]')
    monkeypatch.setenv("LORAFARM_DEFAULT_BASE", "tiny/sd15-base")
    assert RouterSettings().pools == ["tiny/sd15-base"]


def test_defaults() -> None:
    s = RouterSettings()
    assert (s.host, s.port, s.queue_max, s.request_timeout_s) == ("127.0.0.1", 8888, 64, 120.0)
    assert s.api_key is None and s.cors_origins == []


def test_placement_knobs_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in {
        "AFFINITY_MAX_QUEUE": "5",
        "AFFINITY_MAX_WAIT_S": "7.5",
        "AFFINITY_MAX_HOLDERS": "3",
        "AFFINITY_MIN_RESIDENCY_S": "12",
        "AFFINITY_DAMPING_S": "0.25",
        "WORKER_TTL_S": "4",
    }.items():
        monkeypatch.setenv(f"LORAFARM_{name}", value)
    rules = placement_rules(RouterSettings())
    assert (rules.max_queue, rules.max_wait_s, rules.max_holders) == (5, 7.5, 3)
    assert (rules.min_residency_s, rules.damping_s, rules.stale_after_s) == (12.0, 0.25, 4.0)


def test_the_wait_bound_decides_whether_a_busy_holder_gets_the_job(monkeypatch: pytest.MonkeyPatch) -> None:
    # The holder of the adapter finishes its job in 5 s; another worker sits idle.
    holder = WorkerView("w1", last_seen=100.0, fused="a@1", busy=True, remaining_s=5.0, inference_s=8.5)
    idle = WorkerView("w2", last_seen=100.0, inference_s=8.5)
    assert choose_worker("a@1", [holder, idle], placement_rules(RouterSettings()), 100.0) == "w2"
    monkeypatch.setenv("LORAFARM_AFFINITY_MAX_WAIT_S", "6")
    assert choose_worker("a@1", [holder, idle], placement_rules(RouterSettings()), 100.0) == "w1"
    monkeypatch.setenv("LORAFARM_AFFINITY", "false")
    assert choose_worker("a@1", [holder, idle], placement_rules(RouterSettings()), 100.0) is None


def test_default_base_must_be_a_pool() -> None:
    with pytest.raises(ValidationError, match="default_base"):
        RouterSettings(pools=["a/b"], default_base="c/d")
    with pytest.raises(ValidationError):
        RouterSettings(pools=[])


def test_every_field_is_described() -> None:
    for name, field in RouterSettings.model_fields.items():
        assert field.description, name


def test_every_error_type_has_a_status() -> None:
    for error_type, cls in errors.ERROR_TYPES.items():
        assert status_of(cls("x")) in range(400, 600), error_type


@pytest.mark.parametrize(
    ("cls", "status"),
    [
        (errors.InvalidRequest, 422),
        (errors.Unauthorized, 401),
        (errors.RepoNotFound, 404),
        (errors.GatedRepo, 403),
        (errors.PrivateRepo, 403),
        (errors.DisabledRepo, 403),
        (errors.UnsupportedModel, 400),
        (errors.BaseNotServed, 400),
        (errors.UnsafeAdapterFormat, 400),
        (errors.AdapterTooLarge, 413),
        (errors.AdapterCorrupt, 400),
        (errors.AdapterIncompatible, 400),
        (errors.NoWorker, 503),
        (errors.RedisUnavailable, 503),
        (errors.HubUnavailable, 503),
        (errors.QueueFull, 429),
        (errors.Timeout, 504),
        (errors.JobNotFound, 404),
        (errors.JobFailed, 500),
        (errors.InternalError, 500),
    ],
)
def test_status_table(cls: type[errors.LorafarmError], status: int) -> None:
    assert STATUS[cls] == status
    assert status_of(errors.error_from_type(cls.error_type, "m")) == status


def test_openapi_responses_group_by_status() -> None:
    out = responses(errors.GatedRepo, errors.PrivateRepo, errors.QueueFull)
    assert out[403]["description"] == "gated_repo, private_repo"
    assert "Retry-After" in out[429]["headers"]
