"""Reading one repo folder the way the Hub sees a repo: card, flags, files, hashes, commit sha.

A repo is `root/<org>/<name>/`. Hidden files and folders (`.devhub.json`...) are never part
of it. The commit sha is a hash of every path and content, so editing a file changes it.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

FLAGS_NAME = ".devhub.json"
CARD_NAME = "README.md"
# Files the Hub would keep in LFS (by .gitattributes); their ETag is the content sha256.
LFS_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".onnx", ".msgpack", ".h5", ".gguf")
_ID_PART = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}$")
_CHUNK = 1 << 20
_RACY_NS = 2_000_000_000


def valid_repo_id(org: str, name: str) -> bool:
    """`org/name` with plain names only: no `..`, no hidden folder, no separators."""
    return all(_ID_PART.match(part) and ".." not in part for part in (org, name))


def clean_path(path: str) -> str | None:
    """A file path inside a repo, or None when it is empty, hidden or tries to leave the repo."""
    parts = path.split("/")
    if not path or any(p in ("", ".", "..") or p.startswith(".") or "\\" in p or "\0" in p for p in parts):
        return None
    return "/".join(parts)


@dataclass(frozen=True)
class Flags:
    """Hub-side state that is not in the repo's files."""

    gated: bool | str = False  # False, "auto" or "manual"
    private: bool = False
    disabled: bool = False


@dataclass(frozen=True)
class RepoFile:
    """One file of a repo with the hashes the Hub reports for it."""

    path: str
    size: int
    sha256: str
    git_oid: str  # git blob sha1 of the content (of the LFS pointer, for LFS files)
    lfs: bool
    pointer_size: int
    mtime: float

    @property
    def etag(self) -> str:
        """What the Hub sends as (linked) ETag: sha256 for LFS files, the git blob id otherwise."""
        return self.sha256 if self.lfs else self.git_oid


@dataclass(frozen=True)
class Repo:
    """A snapshot of one repo folder."""

    repo_id: str
    folder: Path
    card: dict[str, Any]
    flags: Flags
    files: tuple[RepoFile, ...]
    sha: str

    def file(self, path: str) -> RepoFile | None:
        return next((f for f in self.files if f.path == path), None)

    @property
    def last_modified(self) -> float:
        return max((f.mtime for f in self.files), default=0.0)


def _lfs_pointer(sha256: str, size: int) -> bytes:
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n".encode()


def _git_blob_oid(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data, usedforsecurity=False).hexdigest()


def hash_file(path: Path, rel: str) -> RepoFile:
    """Hash one file (sha256, and git blob sha1 of the content or of its LFS pointer)."""
    stat = path.stat()
    sha256 = hashlib.sha256()
    sha1 = hashlib.sha1(f"blob {stat.st_size}\0".encode(), usedforsecurity=False)
    with path.open("rb") as fh:
        while chunk := fh.read(_CHUNK):
            sha256.update(chunk)
            sha1.update(chunk)
    digest = sha256.hexdigest()
    lfs = rel.endswith(LFS_SUFFIXES)
    pointer = _lfs_pointer(digest, stat.st_size)
    oid = _git_blob_oid(pointer) if lfs else sha1.hexdigest()
    return RepoFile(rel, stat.st_size, digest, oid, lfs, len(pointer), stat.st_mtime)


def parse_card(text: str) -> dict[str, Any]:
    """The YAML front matter of a model card; {} when there is none or it does not parse."""
    match = re.match(r"^---\s*\n(.*?)\n---\s*(\n|$)", text, re.DOTALL)
    if not match:
        return {}
    try:
        data = yaml.safe_load(match.group(1))
    except yaml.YAMLError:
        return {}
    return data if isinstance(data, dict) else {}


def read_flags(folder: Path) -> Flags:
    try:
        raw = json.loads((folder / FLAGS_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return Flags()
    gated = raw.get("gated", False)
    return Flags(
        gated=gated if gated in ("auto", "manual") else False,
        private=bool(raw.get("private", False)),
        disabled=bool(raw.get("disabled", False)),
    )


def write_card(folder: Path, meta: dict[str, Any], body: str) -> None:
    """README.md with YAML front matter, as on the Hub."""
    front = yaml.safe_dump(meta, sort_keys=False, allow_unicode=True)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "README.md").write_text(f"---\n{front}---\n\n{body.strip()}\n", encoding="utf-8")


def write_flags(folder: Path, gated: bool | str = False, private: bool = False, disabled: bool = False) -> None:
    """The hidden hub-side flags of a repo."""
    flags = {"gated": gated, "private": private, "disabled": disabled}
    (folder / FLAGS_NAME).write_text(json.dumps(flags, sort_keys=True) + "\n", encoding="utf-8")


def commit_sha(files: tuple[RepoFile, ...]) -> str:
    """40 hex digits over every path and content hash, in path order."""
    h = hashlib.sha1(usedforsecurity=False)
    for f in sorted(files, key=lambda f: f.path):
        h.update(f"{f.path}\0{f.sha256}\n".encode())
    return h.hexdigest()


class RepoStore:
    """Repos under a root folder. File hashes are cached by (size, mtime, inode): reading is cheap."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root).resolve()
        self._hashes: dict[str, tuple[tuple[int, int, int], int, RepoFile]] = {}
        self._lock = threading.Lock()

    def folder(self, repo_id: str) -> Path | None:
        org, _, name = repo_id.partition("/")
        if not valid_repo_id(org, name):
            return None
        folder = self.root / org / name
        return folder if folder.is_dir() and folder.resolve().parent.parent == self.root else None

    def get(self, repo_id: str) -> Repo | None:
        """The repo as it is on disk now, or None when there is no such repo."""
        folder = self.folder(repo_id)
        if folder is None:
            return None
        files = tuple(self._hash(path, rel) for rel, path in _walk(folder))
        card_file = folder / CARD_NAME
        card = parse_card(card_file.read_text(encoding="utf-8", errors="replace")) if card_file.is_file() else {}
        return Repo(repo_id, folder, card, read_flags(folder), files, commit_sha(files))

    def ids(self) -> list[str]:
        """Every repo id under the root."""
        return sorted(
            f"{org.name}/{repo.name}"
            for org in self.root.iterdir()
            if org.is_dir()
            for repo in org.iterdir()
            if repo.is_dir() and valid_repo_id(org.name, repo.name)
        )

    def _hash(self, path: Path, rel: str) -> RepoFile:
        stat = path.stat()
        key = (stat.st_size, stat.st_mtime_ns, stat.st_ino)
        with self._lock:
            cached = self._hashes.get(str(path))
        # Like git's "racy" check: a file modified within a second of its hashing may have changed
        # again without a new mtime (timestamps are coarse), so only older hashes are trusted.
        if cached is not None and cached[0] == key and cached[1] - stat.st_mtime_ns > _RACY_NS:
            return cached[2]
        hashed_at = time.time_ns()
        entry = hash_file(path, rel)
        with self._lock:
            self._hashes[str(path)] = (key, hashed_at, entry)
        return entry


def _walk(folder: Path) -> list[tuple[str, Path]]:
    """(relative posix path, path) of every visible regular file, sorted; hidden entries are skipped."""
    out = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            path = Path(dirpath) / name
            if name.startswith(".") or not path.is_file():
                continue
            out.append((path.relative_to(folder).as_posix(), path))
    return sorted(out)
