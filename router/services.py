"""What the routes use, built once at start-up (``router.app.build_services``), and the API-key check."""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from common import errors
from common.hub import HubResolver
from router.fleet import Fleet
from router.queue import JobQueue
from router.settings import RouterSettings
from router.tracker import JobTracker


@dataclass
class Services:
    """The app's settings and the clients of its Redis and its Hub, shared by every route."""

    settings: RouterSettings
    queue: JobQueue
    resolver: HubResolver
    fleet: Fleet
    #: The job API's idempotency keys, queue positions and event streams.
    tracker: JobTracker


def services(request: Request) -> Services:
    """The services of the app serving ``request``."""
    return request.app.state.services


_bearer = HTTPBearer(auto_error=False, description="Needed when the router has an API key.")


async def authorize(
    request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
) -> None:
    """Refuse the request (401) unless it carries the configured API key."""
    key = services(request).settings.api_key
    if key is None:
        return
    given = credentials.credentials.encode() if credentials is not None else b""
    if not secrets.compare_digest(given, key.get_secret_value().encode()):
        raise errors.Unauthorized("a valid API key is needed: Authorization: Bearer <key>")
