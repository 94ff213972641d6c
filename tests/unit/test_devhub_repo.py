"""Reading repo folders: ids, paths, cards, flags, hashes and the commit sha."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from devhub.repo import RepoStore, clean_path, parse_card, valid_repo_id


def make_repo(root: Path) -> Path:
    folder = root / "org" / "name"
    (folder / "sub").mkdir(parents=True)
    (folder / "README.md").write_text("---\ntags: [lora]\nbase_model:\n- a/b\n---\n\n# hi\n")
    (folder / "sub" / "w.safetensors").write_bytes(b"\x00" * 100)
    (folder / ".devhub.json").write_text(json.dumps({"gated": "manual", "private": True}))
    (folder / ".hidden").mkdir()
    (folder / ".hidden" / "x").write_text("secret")
    return folder


def test_ids_and_paths_reject_traversal() -> None:
    assert valid_repo_id("tiny", "sdxl-base")
    for org, name in [("..", "x"), ("tiny", ".."), ("tiny", ".git"), ("a/b", "c"), ("", "x")]:
        assert not valid_repo_id(org, name)
    assert clean_path("unet/config.json") == "unet/config.json"
    for bad in ["", "../x", "a/../b", "a//b", ".devhub.json", "a/.git/x", "/etc/passwd"]:
        assert clean_path(bad) is None, bad


def test_card_front_matter() -> None:
    assert parse_card("---\nbase_model: a/b\n---\ntext") == {"base_model": "a/b"}
    assert parse_card("no front matter") == {}
    assert parse_card("---\n: : bad [\n---\n") == {}


def test_repo_reads_card_flags_and_visible_files(tmp_path: Path) -> None:
    make_repo(tmp_path)
    repo = RepoStore(tmp_path).get("org/name")
    assert repo is not None
    assert repo.card["base_model"] == ["a/b"]
    assert repo.flags.gated == "manual" and repo.flags.private and not repo.flags.disabled
    assert [f.path for f in repo.files] == ["README.md", "sub/w.safetensors"]
    weights = repo.file("sub/w.safetensors")
    assert weights is not None and weights.lfs and weights.size == 100
    assert weights.etag == hashlib.sha256(b"\x00" * 100).hexdigest()
    readme = repo.file("README.md")
    assert readme is not None and not readme.lfs and len(readme.etag) == 40
    assert RepoStore(tmp_path).get("org/missing") is None
    assert RepoStore(tmp_path).get("org/../org/name") is None


def test_sha_follows_content_not_mtime(tmp_path: Path) -> None:
    folder = make_repo(tmp_path)
    store = RepoStore(tmp_path)
    sha = store.get("org/name").sha  # type: ignore[union-attr]
    assert len(sha) == 40
    (folder / ".devhub.json").write_text("{}")  # hub flags are not content
    (folder / "README.md").touch()
    assert store.get("org/name").sha == sha  # type: ignore[union-attr]
    (folder / "sub" / "w.safetensors").write_bytes(b"\x01" * 100)  # same size, new bytes
    assert store.get("org/name").sha != sha  # type: ignore[union-attr]
