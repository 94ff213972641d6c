"""A Hub-compatible HTTP server over a folder of repos (see docs in HUB-PROTOCOL.md).

Routes: model info (with `blobs=true`), tree listing, and `resolve` (GET and HEAD, ranges).
Files are answered directly (no redirect, no gzip) with content-hash ETags.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, Response

from devhub.access import HubError, caller, check_repo, check_revision, entry_not_found
from devhub.repo import Repo, RepoFile, RepoStore, clean_path

log = logging.getLogger("devhub")


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%S.000Z")


def _tags(repo: Repo) -> list[str]:
    """Card tags plus what the Hub derives from the card (base_model, license)."""
    card = repo.card
    tags = [str(t) for t in card.get("tags") or []]
    base = card.get("base_model")
    bases = [base] if isinstance(base, str) else [str(b) for b in base or []]
    relation = "adapter:" if "lora" in tags else ""
    tags += [f"base_model:{b}" for b in bases] + [f"base_model:{relation}{b}" for b in bases if relation]
    if card.get("license"):
        tags.append(f"license:{card['license']}")
    return list(dict.fromkeys(tags))


def _sibling(f: RepoFile, blobs: bool) -> dict[str, Any]:
    entry: dict[str, Any] = {"rfilename": f.path}
    if blobs:
        entry.update(size=f.size, blobId=f.git_oid)
        if f.lfs:
            entry["lfs"] = {"size": f.size, "sha256": f.sha256, "pointerSize": f.pointer_size}
    return entry


def model_info(repo: Repo, blobs: bool) -> dict[str, Any]:
    """The JSON of `GET /api/models/{id}`."""
    org = repo.repo_id.split("/")[0]
    card = repo.card
    info: dict[str, Any] = {
        "_id": repo.sha[:24],
        "id": repo.repo_id,
        "modelId": repo.repo_id,
        "author": org,
        "sha": repo.sha,
        "lastModified": _iso(repo.last_modified),
        "createdAt": _iso(repo.last_modified),
        "private": repo.flags.private,
        "gated": repo.flags.gated,
        "disabled": repo.flags.disabled,
        "downloads": 0,
        "likes": 0,
        "tags": _tags(repo),
        "pipeline_tag": card.get("pipeline_tag"),
        "library_name": card.get("library_name"),
        "cardData": card,
        "siblings": [_sibling(f, blobs) for f in repo.files],
    }
    if blobs:
        info["usedStorage"] = sum(f.size for f in repo.files)
    return info


def _tree(repo: Repo, path: str, recursive: bool) -> list[dict[str, Any]]:
    """Entries under `path` ("" is the root), folders first, like the Hub's tree API."""
    prefix = f"{path}/" if path else ""
    below = [f for f in repo.files if f.path.startswith(prefix)]
    if path and not below:
        raise entry_not_found(path)
    dirs: dict[str, list[str]] = {}
    files = []
    for f in below:
        rest = f.path[len(prefix) :].split("/")
        for depth in range(1, len(rest) if recursive else min(2, len(rest))):
            dirs.setdefault(prefix + "/".join(rest[:depth]), []).append(f.etag)
        if recursive or len(rest) == 1:
            files.append(f)
    out: list[dict[str, Any]] = [
        {
            "type": "directory",
            "oid": hashlib.sha1("".join(sorted(o)).encode(), usedforsecurity=False).hexdigest(),
            "path": d,
        }
        for d, o in sorted(dirs.items())
    ]
    for f in files:
        entry: dict[str, Any] = {"type": "file", "oid": f.git_oid, "size": f.size, "path": f.path}
        if f.lfs:
            entry["lfs"] = {"oid": f.sha256, "size": f.size, "pointerSize": f.pointer_size}
        out.append(entry)
    return out


def _error_response(err: HubError, extra: dict[str, str] | None = None) -> Response:
    headers = {"X-Error-Message": err.message, **(extra or {})}
    if err.code:
        headers["X-Error-Code"] = err.code
    return JSONResponse({"error": err.message}, status_code=err.status, headers=headers)


def create_app(root: Path, *, token: str | None = None, delay_ms: int = 0) -> FastAPI:
    """The devhub ASGI app serving the repos under `root`."""
    store = RepoStore(root)
    app = FastAPI(title="devhub", docs_url=None, redoc_url=None, openapi_url=None)

    @app.middleware("http")
    async def delay_and_log(request: Request, call_next: Any) -> Response:
        if delay_ms:
            await asyncio.sleep(delay_ms / 1000)
        start = time.perf_counter()
        response: Response = await call_next(request)
        ms = (time.perf_counter() - start) * 1000
        log.info(
            "event=request method=%s path=%s status=%d ms=%.1f",
            request.method,
            request.url.path,
            response.status_code,
            ms,
        )
        return response

    @app.exception_handler(HubError)
    async def hub_error(request: Request, err: HubError) -> Response:
        return _error_response(err)

    def load(request: Request, org: str, name: str, *, download: bool) -> Repo:
        repo_id = f"{org}/{name}"
        who = caller(request.headers.get("authorization"), token)
        repo = store.get(repo_id)
        err = check_repo(repo_id, repo.flags if repo else None, who, download=download)
        if err:
            raise err
        assert repo is not None
        return repo

    def info(request: Request, org: str, name: str, rev: str, blobs: bool) -> dict[str, Any]:
        repo = load(request, org, name, download=False)
        if err := check_revision(rev, repo.sha):
            raise err
        return model_info(repo, blobs)

    @app.get("/api/models/{org}/{name}")
    def get_model(request: Request, org: str, name: str, blobs: bool = False) -> dict[str, Any]:
        return info(request, org, name, "main", blobs)

    @app.get("/api/models/{org}/{name}/revision/{rev}")
    def get_model_revision(request: Request, org: str, name: str, rev: str, blobs: bool = False) -> dict[str, Any]:
        return info(request, org, name, rev, blobs)

    @app.get("/api/models/{org}/{name}/tree/{rev}")
    @app.get("/api/models/{org}/{name}/tree/{rev}/{path:path}")
    def get_tree(
        request: Request, org: str, name: str, rev: str, path: str = "", recursive: bool = False
    ) -> list[dict[str, Any]]:
        repo = load(request, org, name, download=False)
        if err := check_revision(rev, repo.sha):
            raise err
        path = path.strip("/")
        if path and clean_path(path) is None:
            raise entry_not_found(path)
        return _tree(repo, path, recursive)

    @app.api_route("/{org}/{name}/resolve/{rev}/{path:path}", methods=["GET", "HEAD"])
    def resolve(request: Request, org: str, name: str, rev: str, path: str) -> Response:
        repo = load(request, org, name, download=True)
        if err := check_revision(rev, repo.sha):
            raise err
        rel = clean_path(path)
        entry = repo.file(rel) if rel else None
        if entry is None:
            return _error_response(entry_not_found(path), {"X-Repo-Commit": repo.sha})
        headers = {"ETag": f'"{entry.etag}"', "X-Repo-Commit": repo.sha, "Accept-Ranges": "bytes"}
        if entry.lfs:
            headers.update({"X-Linked-Etag": f'"{entry.sha256}"', "X-Linked-Size": str(entry.size)})
        media = "application/octet-stream" if entry.lfs else None
        return FileResponse(repo.folder / entry.path, headers=headers, media_type=media)

    return app
