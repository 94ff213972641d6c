"""The model-page widget: ``GET /widget/{repo_id}``, an index of what is served, and their assets.

Plain HTML, CSS and JavaScript from ``router/static`` (no build step, no CDN: works offline).
The page talks to the async job API (``POST /jobs``, then its event stream) of the same router.
Pages may be framed by any site (no X-Frame-Options); cross-origin API calls follow
``cors_origins``.
"""

from __future__ import annotations

import asyncio
import html
from functools import cache
from importlib import resources
from typing import Any

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from common import errors
from common.hub import validate_repo_id
from router.errors import responses
from router.services import services

#: Adapters listed on the index page at most (those the live workers hold, most shared first).
INDEX_ADAPTERS = 12

_ASSETS = {"widget.js": "text/javascript; charset=utf-8", "widget.css": "text/css; charset=utf-8"}
_PAGE_HEADERS = {
    # Framing is the point of a widget; scripts, styles and requests stay on this router.
    "Content-Security-Policy": "default-src 'self'; img-src 'self' blob: data:; frame-ancestors *",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-cache",
}
_HTML: dict[int | str, dict[str, Any]] = {200: {"description": "An HTML page.", "content": {"text/html": {}}}}


def _json_errors(*types: type[errors.LorafarmError]) -> dict[int | str, dict[str, Any]]:
    # An HTML route's error answers are still JSON ``{"error", "error_type"}``: say so (not text/html).
    out = responses(*types)
    for entry in out.values():
        entry.pop("model", None)
        entry["content"] = {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}}
    return out


api = APIRouter(tags=["widget"])


@cache
def _static(name: str) -> str:
    return resources.files("router").joinpath("static", name).read_text(encoding="utf-8")


def _root(request: Request) -> str:
    return html.escape(request.scope.get("root_path", ""), quote=True)


_INDEX_RESPONSES: dict[int | str, dict[str, Any]] = {
    **_HTML,
    303: {"description": "With `model`: to that model's widget."},
    **_json_errors(errors.InvalidRequest),
}


@api.get(
    "/",
    summary="Index page: the served bases and adapters, each with its widget",
    response_class=HTMLResponse,
    responses=_INDEX_RESPONSES,
)
@api.get("/widget", summary="Index page (same as `GET /`)", response_class=HTMLResponse, responses=_INDEX_RESPONSES)
async def index(request: Request, model: str | None = None) -> Response:
    if model:  # the index's "open" form
        validate_repo_id(model.strip())
        return RedirectResponse(f"{request.scope.get('root_path', '')}/widget/{model.strip()}", status_code=303)
    svc = services(request)
    pools = svc.settings.pools
    adapters: dict[str, int] = {}
    try:
        live = await asyncio.gather(*(svc.queue.live_workers(p) for p in pools))
    except errors.RedisUnavailable:
        live = []
    for workers in live:
        for worker in workers:
            for key in {*worker.fused, *worker.cached}:
                repo = key.split("@", 1)[0]
                adapters[repo] = adapters.get(repo, 0) + 1
    shown = sorted(adapters, key=lambda r: (-adapters[r], r))[:INDEX_ADAPTERS]
    root = _root(request)

    def items(repos: list[str], note: str) -> str:
        if not repos:
            return f'<li class="empty">{html.escape(note)}</li>'
        return "\n".join(
            f'<li><a href="{root}/widget/{html.escape(r, quote=True)}">{html.escape(r)}</a></li>' for r in repos
        )

    page = (
        _static("index.html")
        .replace("{{root}}", root)
        .replace("{{bases}}", items(list(pools), "no pool"))
        .replace("{{adapters}}", items(shown, "none held yet: open any LoRA below"))
    )
    return HTMLResponse(page, headers=_PAGE_HEADERS)


@api.get(
    "/widget/{repo_id:path}",
    summary="The widget of one model: prompt, advanced options, Compute, live progress, the image",
    response_class=HTMLResponse,
    responses={**_HTML, **_json_errors(errors.InvalidRequest)},
)
async def widget(request: Request, repo_id: str) -> HTMLResponse:
    validate_repo_id(repo_id)
    page = (
        _static("widget.html")
        .replace("{{root}}", _root(request))
        .replace("{{model}}", html.escape(repo_id, quote=True))
    )
    return HTMLResponse(page, headers=_PAGE_HEADERS)


@api.get("/static/{name}", include_in_schema=False)
async def asset(name: str) -> Response:
    if name not in _ASSETS:
        raise HTTPException(404, f"no asset {name!r}")  # answered as {"error", "error_type": "not_found"}
    return Response(_static(name), media_type=_ASSETS[name], headers={"Cache-Control": "public, max-age=300"})
