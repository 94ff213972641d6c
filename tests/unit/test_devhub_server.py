"""The devhub app in process: tree listing, HEAD, error headers and the slow-Hub delay."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from devhub.repo import write_card, write_flags
from devhub.server import create_app


@pytest.fixture
def client(tmp_path: Path) -> TestClient:
    folder = tmp_path / "org" / "pipe"
    (folder / "unet").mkdir(parents=True)
    (folder / "model_index.json").write_text("{}")
    (folder / "unet" / "config.json").write_text("{}")
    (folder / "unet" / "diffusion_pytorch_model.safetensors").write_bytes(b"\x00" * 64)
    write_card(folder, {"tags": ["diffusers"], "pipeline_tag": "text-to-image"}, "# pipe")
    write_flags(folder)
    return TestClient(create_app(tmp_path))


def test_tree_lists_folders_and_lfs_files(client: TestClient) -> None:
    top = client.get("/api/models/org/pipe/tree/main").json()
    assert [(e["type"], e["path"]) for e in top] == [
        ("directory", "unet"),
        ("file", "README.md"),
        ("file", "model_index.json"),
    ]
    deep = client.get("/api/models/org/pipe/tree/main/unet", params={"recursive": "true"}).json()
    weights = next(e for e in deep if e["path"] == "unet/diffusion_pytorch_model.safetensors")
    assert weights["size"] == 64 and weights["lfs"]["size"] == 64 and len(weights["lfs"]["oid"]) == 64
    all_entries = client.get("/api/models/org/pipe/tree/main", params={"recursive": "true"}).json()
    assert len(all_entries) == 5
    missing = client.get("/api/models/org/pipe/tree/main/vae")
    assert missing.status_code == 404 and missing.headers["x-error-code"] == "EntryNotFound"


def test_head_has_hub_headers_and_no_body(client: TestClient) -> None:
    sha = client.get("/api/models/org/pipe").json()["sha"]
    r = client.head("/org/pipe/resolve/main/unet/diffusion_pytorch_model.safetensors")
    assert r.status_code == 200 and r.content == b""
    assert r.headers["x-repo-commit"] == sha
    assert r.headers["x-linked-size"] == "64" == r.headers["content-length"]
    assert r.headers["etag"] == r.headers["x-linked-etag"]
    by_sha = client.get(f"/org/pipe/resolve/{sha}/model_index.json")
    assert by_sha.status_code == 200 and by_sha.content == b"{}" and "x-linked-etag" not in by_sha.headers


def test_anonymous_missing_repo_is_401_repo_not_found(client: TestClient) -> None:
    r = client.get("/api/models/org/nothing")
    assert (r.status_code, r.headers["x-error-code"]) == (401, "RepoNotFound")
    assert r.json()["error"]


def test_delay_is_applied_before_each_answer(tmp_path: Path) -> None:
    slow = TestClient(create_app(tmp_path, delay_ms=200))
    start = time.perf_counter()
    assert slow.get("/api/models/org/none").status_code == 401
    assert time.perf_counter() - start >= 0.2
