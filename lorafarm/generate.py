"""``lorafarm generate MODEL "prompt" -o out.png``: submit through the job API, show its progress, save the image.

The job goes through ``POST /jobs``; its Server-Sent Events (``GET /jobs/{id}/events``) drive a
progress bar; the image comes from ``GET /jobs/{id}/result``. Ctrl-C cancels the job.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
from tqdm import tqdm

FORMATS = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".webp": "image/webp"}
TERMINAL = ("done", "failed", "cancelled")
#: Reconnections of the event stream before giving up (each resumes from the job's stored state).
RECONNECTS = 5


class GenerateError(Exception):
    """A failure to report to the user (one line, no traceback)."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help="LoRA or base repo id, e.g. tiny/sdxl-lora-a")
    parser.add_argument("prompt", help="what to draw")
    parser.add_argument("-o", "--output", default="out.png", help="image file (.png, .jpg or .webp)")
    parser.add_argument("--steps", type=int, help="inference steps (default: the worker's)")
    parser.add_argument("--seed", type=int, help="seed (default: random, printed)")
    parser.add_argument("--negative", help="negative prompt")
    parser.add_argument("--url", default="http://127.0.0.1:8888", help="router URL")
    parser.add_argument("--api-key", help="the router's API key, when it has one")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    """Entry point of ``lorafarm generate``; returns the exit status."""
    out = Path(args.output)
    media = FORMATS.get(out.suffix.lower())
    if media is None:
        print(f"error: {out.name}: the file name must end with {', '.join(FORMATS)}", file=sys.stderr)
        return 2
    headers = {"Accept": f"{media}, application/json;q=0.5"}
    if args.api_key:
        headers["Authorization"] = f"Bearer {args.api_key}"
    job_id: str | None = None
    start = time.perf_counter()
    with httpx.Client(base_url=args.url.rstrip("/"), headers=headers, timeout=30.0) as client:
        try:
            job = submit(client, args)
            job_id = job["id"]
            print(f"job {job_id}: {job.get('model', args.model)}, seed {job.get('seed')}", file=sys.stderr)
            final = follow(client, job_id, quiet=args.quiet)
            if final.get("status") != "done":
                kind = final.get("error_type") or final.get("status")
                raise GenerateError(f"the job {final.get('status')}: {final.get('error') or kind} ({kind})")
            resp = client.get(f"/jobs/{job_id}/result")
            if resp.status_code != 200:
                raise GenerateError(describe(resp))
        except KeyboardInterrupt:
            if job_id is not None:
                cancel(client, job_id)
            print("\ncancelled", file=sys.stderr)
            return 130
        except httpx.TransportError as exc:
            print(f"error: cannot reach the router at {args.url} ({type(exc).__name__}: {exc})", file=sys.stderr)
            return 1
        except GenerateError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(resp.content)
    print(summary(out, resp, time.perf_counter() - start))
    return 0


def submit(client: httpx.Client, args: argparse.Namespace) -> dict[str, Any]:
    parameters: dict[str, Any] = {}
    if args.steps is not None:
        parameters["num_inference_steps"] = args.steps
    if args.seed is not None:
        parameters["seed"] = args.seed
    if args.negative:
        parameters["negative_prompt"] = args.negative
    resp = client.post("/jobs", json={"model": args.model, "inputs": args.prompt, "parameters": parameters})
    if resp.status_code != 202:
        raise GenerateError(describe(resp))
    return dict(resp.json())


def follow(client: httpx.Client, job_id: str, *, quiet: bool = False) -> dict[str, Any]:
    """Follow the job's events with a progress bar until a terminal state; returns that state."""
    bar = tqdm(total=1, desc="queued", unit="step", disable=quiet, file=sys.stderr, dynamic_ncols=True)
    state: dict[str, Any] = {}
    try:
        for _ in range(RECONNECTS + 1):
            for state in events(client, job_id):
                show(bar, state)
                if state.get("status") in TERMINAL:
                    return state
            time.sleep(0.5)  # the stream ended early (router restart...): resume it
        raise GenerateError(f"lost the events of job {job_id}; see {client.base_url}/jobs/{job_id}")
    finally:
        bar.close()


def events(client: httpx.Client, job_id: str) -> Iterator[dict[str, Any]]:
    """The ``data:`` payloads of the job's Server-Sent Events, as dicts."""
    timeout = httpx.Timeout(30.0, read=60.0)  # the router sends a keep-alive comment every 15 s
    try:
        with client.stream("GET", f"/jobs/{job_id}/events", timeout=timeout) as resp:
            if resp.status_code != 200:
                resp.read()
                raise GenerateError(describe(resp))
            data: list[str] = []
            for line in resp.iter_lines():
                if line.startswith("data:"):
                    data.append(line[5:].lstrip())
                elif not line and data:
                    yield json.loads("\n".join(data))
                    data = []
    except httpx.ReadTimeout:
        return


def show(bar: tqdm, state: dict[str, Any]) -> None:
    status = state.get("status")
    if status == "queued":
        ahead = state.get("position")
        bar.set_description(f"queued ({ahead} ahead)" if ahead else "queued", refresh=False)
    elif status == "running" and state.get("steps"):
        bar.total = state["steps"]
        bar.n = state.get("step") or 0
        bar.set_description("running", refresh=False)
    elif status == "running":
        bar.set_description("loading adapter", refresh=False)
    elif status == "done":
        bar.n = bar.total
        bar.set_description("done", refresh=False)
    else:
        bar.set_description(str(status), refresh=False)
    bar.refresh()


def cancel(client: httpx.Client, job_id: str) -> None:
    with contextlib.suppress(httpx.HTTPError):
        client.delete(f"/jobs/{job_id}", timeout=5.0)


def describe(resp: httpx.Response) -> str:
    """``message (error_type, HTTP status)`` of an error answer."""
    try:
        body = resp.json()
        return f"{body['error']} ({body['error_type']}, HTTP {resp.status_code})"
    except (ValueError, KeyError, TypeError):
        return f"HTTP {resp.status_code}: {resp.text[:200]}"


def summary(out: Path, resp: httpx.Response, seconds: float) -> str:
    from PIL import Image

    image = Image.open(io.BytesIO(resp.content))
    warm = "warm" if resp.headers.get("x-adapter-warm") == "true" else "cold"
    return (
        f"saved {out} ({image.width}x{image.height} {image.format}, {len(resp.content)} bytes) in {seconds:.2f} s; "
        f"compute {resp.headers.get('x-compute-time', '?')} s, adapter {warm}, worker {resp.headers.get('x-worker-id')}"
    )
