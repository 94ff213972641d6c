"""What the routes use, built once at start-up (``router.app.build_services``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from fastapi import Request

from common.hub import HubResolver
from router.fleet import Fleet
from router.queue import JobQueue
from router.settings import RouterSettings
from router.tracker import JobTracker

if TYPE_CHECKING:
    from router.tenants import KeyDirectory


@dataclass
class Services:
    """The app's settings and the clients of its Redis and its Hub, shared by every route."""

    settings: RouterSettings
    queue: JobQueue
    resolver: HubResolver
    fleet: Fleet
    #: The job API's idempotency keys, queue positions and event streams.
    tracker: JobTracker
    #: The tenants behind API keys, and their rate buckets (``router.tenants``).
    keys: KeyDirectory


def services(request: Request) -> Services:
    """The services of the app serving ``request``."""
    return request.app.state.services
