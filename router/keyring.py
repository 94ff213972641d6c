"""``lorafarm keys add|list|revoke`` (or ``python -m router.keyring ...`` in a router image): the API
keys of the key ring in Redis (``LORAFARM_TENANT_KEYS``).

``add NAME`` prints the new key once, on standard output alone (``KEY=$(lorafarm keys add acme)``);
Redis keeps only its SHA-256. Every router sees a new key at once and a revoked one within its
key cache's lifetime (``LORAFARM_KEY_CACHE_S``, 2 s by default). Redis is ``LORAFARM_REDIS_URL``.
"""

from __future__ import annotations

import argparse
import sys
from datetime import UTC, datetime

import redis
from pydantic import ValidationError

from common.connections import sync_client
from common.settings import CommonSettings
from common.tenants import KeyRing, Tenant


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--redis-url", help="Redis of the farm (default: LORAFARM_REDIS_URL)")
    sub = parser.add_subparsers(dest="action", required=True)
    add = sub.add_parser("add", help="make a key for a tenant and print it (once)")
    add.add_argument("name", help="the tenant's name (letters, digits, _ . -), in logs and error messages")
    add.add_argument("--rate", type=float, default=0.0, help="generation requests per second (0: no limit)")
    add.add_argument("--burst", type=int, default=0, help="requests at once above the rate (0: one second's worth)")
    add.add_argument("--concurrency", type=int, default=0, help="unfinished jobs at once (0: no limit)")
    sub.add_parser("list", help="the tenants with a key and their limits (never the keys)")
    revoke = sub.add_parser("revoke", help="delete a tenant's key")
    revoke.add_argument("name")


def run(args: argparse.Namespace) -> int:
    """Entry point of ``lorafarm keys``; returns the exit status."""
    url = args.redis_url or CommonSettings().redis_url
    client = sync_client(url)
    try:
        ring = KeyRing(client)
        if args.action == "add":
            return _add(ring, args)
        if args.action == "list":
            return _list(ring)
        return _revoke(ring, args.name)
    except (redis.ConnectionError, redis.TimeoutError) as exc:
        print(f"error: Redis cannot be reached: {type(exc).__name__}", file=sys.stderr)
        return 1
    finally:
        client.close()


def _add(ring: KeyRing, args: argparse.Namespace) -> int:
    try:
        tenant = Tenant(name=args.name, rate_per_s=args.rate, burst=args.burst, concurrency=args.concurrency)
    except ValidationError as exc:
        fields = ", ".join(".".join(map(str, e["loc"])) for e in exc.errors())
        print(f"error: invalid {fields}: names are letters, digits, _ . - (64 at most); limits >= 0", file=sys.stderr)
        return 2
    key = ring.add(tenant)
    if key is None:
        print(f"error: {tenant.name} has a key already (revoke it first)", file=sys.stderr)
        return 1
    print(key)
    print(f"key for {tenant.name} ({_limits(tenant)}): shown this once, keep it now", file=sys.stderr)
    return 0


def _list(ring: KeyRing) -> int:
    for tenant in ring.tenants():
        made = datetime.fromtimestamp(tenant.created_at, UTC).strftime("%Y-%m-%d %H:%M")
        print(f"{tenant.name}\t{_limits(tenant)}\tmade {made} UTC")
    return 0


def _revoke(ring: KeyRing, name: str) -> int:
    if not ring.revoke(name):
        print(f"error: no key named {name}", file=sys.stderr)
        return 1
    print(f"revoked {name}", file=sys.stderr)
    return 0


def _limits(tenant: Tenant) -> str:
    rate = f"rate {tenant.rate_per_s:g}/s burst {tenant.capacity}" if tenant.rate_per_s else "no rate limit"
    concurrency = f"concurrency {tenant.concurrency}" if tenant.concurrency else "no concurrency limit"
    return f"{rate}, {concurrency}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m router.keyring", description="API keys of the key ring.")
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
