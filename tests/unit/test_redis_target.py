"""Where Redis is, from the settings to the clients: one URL, or sentinels that name the primary, with
the URL's password, database and TLS options carried over. The clients are built, not connected."""

from __future__ import annotations

import pytest
import redis.asyncio as aioredis
from pydantic import ValidationError

from common.connections import BlockingSentinelPool, RedisTarget, async_client, sync_client
from common.replication import Replication
from common.settings import CommonSettings

TLS_URL = "rediss://:p%40ss@ignored:6380/2?ssl_ca_certs=/etc/redis-ca/ca.crt"


def test_sentinels_master_and_passwords_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LORAFARM_REDIS_SENTINELS", "sentinel-0.redis:26379, 10.0.0.7:26380")
    monkeypatch.setenv("LORAFARM_REDIS_MASTER_NAME", "farm")
    monkeypatch.setenv("LORAFARM_REDIS_SENTINEL_PASSWORD", "sentinel-secret")
    monkeypatch.setenv("LORAFARM_REDIS_URL", TLS_URL)
    monkeypatch.setenv("LORAFARM_REDIS_MIN_REPLICAS", "1")
    settings = CommonSettings()
    target = settings.redis_target()
    assert target.sentinels == (("sentinel-0.redis", 26379), ("10.0.0.7", 26380))
    assert (target.master_name, target.sentinel_password, target.url) == ("farm", "sentinel-secret", TLS_URL)
    assert "p%40ss" not in repr(target) and "sentinel-secret" not in repr(target)
    assert "sentinel-secret" not in repr(settings)
    assert settings.replication() == Replication(replicas=1, timeout_ms=500)


def test_no_sentinels_means_the_url_alone() -> None:
    settings = CommonSettings(redis_url="redis://redis:6379/0")
    assert settings.redis_target() == RedisTarget(url="redis://redis:6379/0")
    assert not settings.replication().required


@pytest.mark.parametrize("address", ["sentinel", "sentinel:", ":26379", "sentinel:port"])
def test_a_sentinel_address_is_host_and_port(address: str) -> None:
    with pytest.raises(ValidationError, match="host:port"):
        CommonSettings(redis_sentinels=[address])


def test_the_worker_client_asks_the_sentinels_and_keeps_the_urls_credentials_and_tls() -> None:
    target = RedisTarget(url=TLS_URL, sentinels=(("s1", 26379), ("s2", 26379)), sentinel_password="sp")
    client = sync_client(target, max_connections=3)
    pool = client.connection_pool
    assert pool.service_name == "lorafarm" and pool.max_connections == 3
    assert pool.connection_class.__name__ == "SentinelManagedSSLConnection"
    kwargs = pool.connection_kwargs
    assert (kwargs["password"], kwargs["db"], kwargs["ssl_ca_certs"]) == ("p@ss", 2, "/etc/redis-ca/ca.crt")
    assert "host" not in kwargs  # the sentinels name it
    first = pool.sentinel_manager.sentinels[0].connection_pool
    assert (first.connection_kwargs["host"], first.connection_kwargs["port"]) == ("s1", 26379)
    assert first.connection_kwargs["password"] == "sp"  # the sentinels' own password, not the primary's
    assert first.connection_class.__name__ == "SSLConnection"  # TLS to the sentinels too
    assert first.connection_kwargs["ssl_ca_certs"] == "/etc/redis-ca/ca.crt"


def test_the_router_client_waits_for_a_free_connection_with_sentinels_as_without() -> None:
    plain = async_client("redis://redis:6379/0", max_connections=4, pool_timeout=2.0)
    assert isinstance(plain.connection_pool, aioredis.BlockingConnectionPool)
    behind = async_client(
        RedisTarget(url="redis://:pw@ignored/0", sentinels=(("s1", 26379),)), max_connections=4, pool_timeout=2.0
    )
    pool = behind.connection_pool
    assert isinstance(pool, BlockingSentinelPool) and isinstance(pool, aioredis.BlockingConnectionPool)
    assert (pool.max_connections, pool.timeout, pool.is_master) == (4, 2.0, True)
    assert pool.connection_kwargs["password"] == "pw"


def test_sentinels_need_a_tcp_url() -> None:
    with pytest.raises(ValueError, match="redis://"):
        sync_client(RedisTarget(url="unix:///run/redis.sock", sentinels=(("s1", 26379),)))


def test_replication_counts_the_wait_reply() -> None:
    assert Replication().confirmed([b"1-0"])  # nothing required, no WAIT queued
    one = Replication(replicas=1)
    assert not one.confirmed([b"1-0", 0]) and one.confirmed([b"1-0", 1]) and one.confirmed([b"1-0", 2])
