"""Who may see what: the Hub's answers for missing, private, gated and disabled repos.

Pure decisions on plain data; the server only carries them out. The error codes are what
huggingface_hub maps to its exception classes (it reads `X-Error-Code`, not the status).
"""

from __future__ import annotations

from dataclasses import dataclass

from devhub.repo import Flags

DISABLED_MESSAGE = "Access to this resource is disabled."


class HubError(Exception):
    """An error answer: status, `X-Error-Code` (None: not sent) and `X-Error-Message`."""

    def __init__(self, status: int, code: str | None, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


@dataclass(frozen=True)
class Caller:
    """What the request's `Authorization: Bearer` header proves."""

    has_token: bool  # any bearer token was sent
    authorized: bool  # the token grants private and gated repos


def caller(authorization: str | None, server_token: str | None) -> Caller:
    """With a server token, only that token is authorized; without one, any bearer token is."""
    scheme, _, given = (authorization or "").partition(" ")
    given = given.strip()
    if scheme.lower() != "bearer" or not given:
        return Caller(has_token=False, authorized=False)
    return Caller(has_token=True, authorized=server_token is None or given == server_token)


def repo_not_found(who: Caller, repo_id: str) -> HubError:
    """Like the Hub: 401 to anonymous callers, 404 to callers with a token."""
    return HubError(404 if who.has_token else 401, "RepoNotFound", f"Repository not found: {repo_id}")


def check_repo(repo_id: str, flags: Flags | None, who: Caller, *, download: bool) -> HubError | None:
    """None when `who` may read the repo's metadata (download=False) or its files (download=True)."""
    if flags is None or (flags.private and not who.authorized):
        return repo_not_found(who, repo_id)
    if flags.disabled:
        return HubError(403, None, DISABLED_MESSAGE)
    if download and flags.gated and not who.authorized:
        return HubError(403, "GatedRepo", f"Access to model {repo_id} is restricted. You must have access to it.")
    return None


def check_revision(rev: str, sha: str) -> HubError | None:
    """Only `main` and the current commit sha exist."""
    if rev in ("main", sha):
        return None
    return HubError(404, "RevisionNotFound", f"Invalid rev id: {rev}")


def entry_not_found(path: str) -> HubError:
    return HubError(404, "EntryNotFound", f"Entry not found: {path}")
