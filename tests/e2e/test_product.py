"""The product surface against a whole farm on loopback: the job API and its events, Hub clients,
metrics, the ``lorafarm generate`` command line."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
from huggingface_hub import InferenceClient
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

from lorafarm.farm import REPO_ROOT, Farm

pytestmark = pytest.mark.slow

LORA = "tiny/sdxl-lora-a"


def submit(farm: Farm, body: dict[str, Any], **headers: str) -> httpx.Response:
    return httpx.post(f"{farm.router_url}/jobs", json=body, headers=headers, timeout=30)


def job_body(model: str = LORA, steps: int = 2, seed: int = 1, **params: Any) -> dict[str, Any]:
    return {
        "model": model,
        "inputs": "an elephant",
        "parameters": {"num_inference_steps": steps, "seed": seed, **params},
    }


def events(farm: Farm, job_id: str, timeout: float = 60.0) -> list[dict[str, Any]]:
    """Every ``data:`` payload of the job's event stream, until the router ends it."""
    out: list[dict[str, Any]] = []
    with httpx.stream("GET", f"{farm.router_url}/jobs/{job_id}/events", timeout=timeout) as resp:
        assert resp.status_code == 200, resp.read()
        assert resp.headers["content-type"].startswith("text/event-stream")
        for line in resp.iter_lines():
            if line.startswith("data:"):
                out.append(json.loads(line[5:]))
    return out


def wait_state(farm: Farm, job_id: str, states: set[str], timeout: float = 60.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        view = httpx.get(f"{farm.router_url}/jobs/{job_id}", timeout=10).json()
        if view["status"] in states:
            return dict(view)
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} never reached {states}")


def scrape(farm: Farm) -> dict[str, list[Any]]:
    text = httpx.get(f"{farm.router_url}/metrics", timeout=10).text
    return {f.name: f.samples for f in text_string_to_metric_families(text)}


# --- the job API ------------------------------------------------------------------------------


def test_job_lifecycle_from_202_to_the_image(farm: Farm) -> None:
    resp = submit(farm, job_body(steps=20, seed=4), Accept="image/png")
    assert resp.status_code == 202, resp.text
    job = resp.json()
    assert resp.headers["location"] == f"/jobs/{job['id']}"
    assert job["status"] == "queued" and job["model"] == LORA and job["seed"] == 4

    stream = events(farm, job["id"])
    states = [e["status"] for e in stream]
    assert states[-1] == "done", stream
    assert all(e["id"] == job["id"] for e in stream)
    # In order: never back to an earlier state, steps only grow up to the last one. (How many
    # steps are seen depends on speed: workers publish at most one every progress_interval_s.)
    order = {"queued": 0, "running": 1, "done": 2}
    assert [order[s] for s in states] == sorted(order[s] for s in states)
    steps = [e["step"] for e in stream if e["status"] == "running" and "step" in e]
    assert steps == sorted(set(steps)) and steps[-1] == 20, stream
    assert {e["steps"] for e in stream if "steps" in e} == {20}

    view = httpx.get(f"{farm.router_url}{resp.headers['location']}", timeout=10).json()
    assert view["status"] == "done" and view["compute_time"] > 0 and "adapter_warm" in view
    image = httpx.get(f"{farm.router_url}/jobs/{job['id']}/result", timeout=10)
    assert image.status_code == 200
    assert image.headers["content-type"] == "image/png"
    assert Image.open(io.BytesIO(image.content)).size == (64, 64)

    # The same job through the sync route gives the same bytes: one resolution, one job shape.
    sync = httpx.post(
        f"{farm.router_url}/models/{LORA}",
        json={"inputs": "an elephant", "parameters": {"num_inference_steps": 20, "seed": 4}},
        headers={"Accept": "image/png"},
        timeout=60,
    )
    assert sync.content == image.content


def test_events_of_a_finished_job_replay_its_final_state(farm: Farm) -> None:
    job = submit(farm, job_body(seed=9)).json()
    wait_state(farm, job["id"], {"done"})
    assert [e["status"] for e in events(farm, job["id"])] == ["done"]


def test_cancel_a_queued_job_then_the_running_one(farm: Farm) -> None:
    # One worker per pool: a long job holds it, so the next one waits in the queue.
    slow = submit(farm, job_body(model="tiny/sdxl-lora-b", steps=150, seed=1, width=128, height=128)).json()
    wait_state(farm, slow["id"], {"running"})
    queued = submit(farm, job_body(model="tiny/sdxl-lora-b", steps=2, seed=2)).json()
    assert queued["status"] == "queued" and queued["position"] >= 0, queued

    not_ready = httpx.get(f"{farm.router_url}/jobs/{slow['id']}/result", timeout=10)
    assert not_ready.status_code == 409 and not_ready.json()["error_type"] == "job_not_ready"

    gone = httpx.delete(f"{farm.router_url}/jobs/{queued['id']}", timeout=10)
    assert gone.status_code == 200 and gone.json()["status"] == "cancelled", gone.text
    assert [e["status"] for e in events(farm, queued["id"])] == ["cancelled"]
    result = httpx.get(f"{farm.router_url}/jobs/{queued['id']}/result", timeout=10)
    assert result.status_code == 410 and result.json()["error_type"] == "cancelled"

    start = time.monotonic()
    stopping = httpx.delete(f"{farm.router_url}/jobs/{slow['id']}", timeout=10)
    assert stopping.status_code in (200, 202), stopping.text
    stream = events(farm, slow["id"])
    assert stream[-1]["status"] == "cancelled", stream
    assert time.monotonic() - start < 10, "the running job did not stop at its next steps"
    final = httpx.get(f"{farm.router_url}/jobs/{slow['id']}", timeout=10).json()
    assert final["status"] == "cancelled" and final["error_type"] == "cancelled"
    # Cancelling again is a no-op on a finished job.
    again = httpx.delete(f"{farm.router_url}/jobs/{slow['id']}", timeout=10)
    assert again.status_code == 200 and again.json()["status"] == "cancelled"


def test_a_failed_job_reports_its_error_type(farm: Farm) -> None:
    job = submit(farm, job_body(model="tiny/sdxl-lora-nan")).json()
    stream = events(farm, job["id"])
    assert stream[-1]["status"] == "failed" and stream[-1]["error_type"] == "adapter_corrupt", stream
    result = httpx.get(f"{farm.router_url}/jobs/{job['id']}/result", timeout=10)
    assert result.status_code == 400
    assert set(result.json()) == {"error", "error_type"} and result.json()["error_type"] == "adapter_corrupt"


def test_idempotency_key_returns_the_same_job(farm: Farm) -> None:
    key = uuid.uuid4().hex
    first = submit(farm, job_body(seed=11), **{"Idempotency-Key": key})
    second = submit(farm, job_body(seed=11), **{"Idempotency-Key": key})
    other = submit(farm, job_body(seed=11), **{"Idempotency-Key": uuid.uuid4().hex})
    assert first.status_code == second.status_code == other.status_code == 202
    assert second.json()["id"] == first.json()["id"] != other.json()["id"]
    assert second.headers["idempotent-replayed"] == "true"
    assert second.headers["location"] == first.headers["location"]
    wait_state(farm, first.json()["id"], {"done"})
    after = submit(farm, job_body(seed=11), **{"Idempotency-Key": key})
    assert after.json()["id"] == first.json()["id"] and after.json()["status"] == "done"


def test_job_api_errors_use_the_error_table(farm: Farm) -> None:
    missing = httpx.get(f"{farm.router_url}/jobs/{uuid.uuid4().hex}", timeout=10)
    assert missing.status_code == 404 and missing.json()["error_type"] == "job_not_found"
    unknown = submit(farm, job_body(model="tiny/no-such-lora"))
    assert unknown.status_code == 404 and unknown.json()["error_type"] == "repo_not_found"
    bad = submit(farm, {"model": LORA, "inputs": "x", "parameters": {"num_inference_steps": 0}})
    assert bad.status_code == 422 and bad.json()["error_type"] == "invalid_request"
    for resp in (missing, unknown, bad):
        assert set(resp.json()) == {"error", "error_type"}


# --- Hub clients unchanged ----------------------------------------------------------------------


def test_inference_client_with_a_lora_repo_id(farm: Farm) -> None:
    client = InferenceClient(model=f"{farm.router_url}/models/{LORA}")
    image = client.text_to_image("an elephant", num_inference_steps=2, seed=1)
    assert isinstance(image, Image.Image) and image.size == (64, 64)


def test_inference_client_on_a_base_with_a_lora_header(farm: Farm) -> None:
    lora = InferenceClient(model=f"{farm.router_url}/models/{LORA}").text_to_image(
        "a cat", num_inference_steps=2, seed=3
    )
    base = InferenceClient(model=f"{farm.router_url}/models/tiny/sdxl-base")
    plain = base.text_to_image("a cat", num_inference_steps=2, seed=3)
    headed = InferenceClient(model=f"{farm.router_url}/models/tiny/sdxl-base", headers={"lora": LORA})
    on_root = InferenceClient(model=f"{farm.router_url}/", headers={"lora": LORA})
    with_header = headed.text_to_image("a cat", num_inference_steps=2, seed=3)
    from_root = on_root.text_to_image("a cat", num_inference_steps=2, seed=3)
    assert with_header.tobytes() == from_root.tobytes() == lora.tobytes()
    assert with_header.tobytes() != plain.tobytes()


# --- metrics ------------------------------------------------------------------------------------


def _value(samples: list[Any], name: str, **labels: str) -> float:
    return sum(s.value for s in samples if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()))


def test_metrics_parse_and_move_with_traffic(farm: Farm) -> None:
    before = scrape(farm)
    job = submit(farm, job_body(seed=21)).json()
    wait_state(farm, job["id"], {"done"})
    httpx.get(f"{farm.router_url}/jobs/{uuid.uuid4().hex}", timeout=10)
    after = scrape(farm)

    created = {"method": "POST", "route": "/jobs", "status": "202", "error_type": ""}
    not_found = {"method": "GET", "route": "/jobs/{job_id}", "status": "404", "error_type": "job_not_found"}
    for labels in (created, not_found):
        grew = _value(after["lorafarm_requests"], "lorafarm_requests_total", **labels)
        assert grew >= _value(before.get("lorafarm_requests", []), "lorafarm_requests_total", **labels) + 1
    duration = _value(
        after["lorafarm_request_duration_seconds"],
        "lorafarm_request_duration_seconds_count",
        method="POST",
        route="/jobs",
    )
    assert duration >= 1

    sizes = {s.labels["pool"]: s.labels["pool_slug"] for s in after["lorafarm_queue_size"]}
    assert sizes == {"tiny/sdxl-base": "tiny--sdxl-base", "tiny/sd15-base": "tiny--sd15-base"}
    assert {s.labels["pool"] for s in after["lorafarm_queue_wait_seconds"]} == set(sizes)
    for pool in sizes:
        assert (
            _value(after["lorafarm_workers"], "lorafarm_workers", pool=pool, status="ready")
            + _value(after["lorafarm_workers"], "lorafarm_workers", pool=pool, status="busy")
            == 1
        )
    assert _value(after["lorafarm_redis_up"], "lorafarm_redis_up") == 1
    inference = [s for s in after["lorafarm_worker_inference_seconds"] if s.labels["pool"] == "tiny/sdxl-base"]
    assert inference and inference[0].value > 0


# --- the command line ---------------------------------------------------------------------------


def test_cli_generate_saves_the_image_with_a_progress_bar(farm: Farm, tmp_path: Path) -> None:
    out = tmp_path / "out.png"
    argv = [
        sys.executable,
        "-m",
        "lorafarm.cli",
        "generate",
        "tiny/sdxl-lora-c",
        "an elephant",
        "-o",
        str(out),
        "--steps",
        "12",
        "--seed",
        "5",
        "--url",
        farm.router_url,
    ]
    done = subprocess.run(argv, cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert f"saved {out}" in done.stdout and "64x64 PNG" in done.stdout
    assert "12/12" in done.stderr, done.stderr  # the progress bar reached the last step
    with Image.open(out) as image:
        assert image.format == "PNG" and image.size == (64, 64)


def test_cli_generate_fails_clearly(farm: Farm, tmp_path: Path) -> None:
    argv = [
        sys.executable,
        "-m",
        "lorafarm.cli",
        "generate",
        "tiny/no-such-lora",
        "x",
        "-o",
        str(tmp_path / "x.png"),
        "--url",
        farm.router_url,
    ]
    done = subprocess.run(argv, cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert "repo_not_found" in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "x.png").exists()
