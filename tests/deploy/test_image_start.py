"""Every image starts: its files, rebuilt from its own Dockerfile's COPY lines, import and run ``--help``.

No Docker engine here, so each image is rebuilt as a folder: the files its stages ``COPY`` (a stage
``FROM`` an earlier one inherits that one's), at the paths the Dockerfile puts them. A clean
interpreter (``python -I``, this project's own editable install taken off the path) then runs
``python -m <entrypoint> --help`` from that folder, with every third-party module the image does
not install made unimportable. A module the image lacks fails here as it would in the container.
"""

from __future__ import annotations

import importlib.metadata as md
import json
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from tests.deploy.manifests import DEPLOY, ROOT

FIRST_PARTY = ("common", "router", "worker", "devhub", "lorafarm", "bench", "tests")


@dataclass
class Stage:
    name: str
    parent: str | None
    workdir: str = "/"
    copies: list[tuple[str, str, str]] = field(default_factory=list)  # (source, dest, workdir then)
    installs: list[str] = field(default_factory=list)  # RUN lines that call pip install
    start: str | None = None  # CMD or ENTRYPOINT of this stage itself


def _instructions(dockerfile: Path) -> list[tuple[str, str]]:
    lines = [line for line in dockerfile.read_text().splitlines() if not line.lstrip().startswith("#")]
    out: list[tuple[str, str]] = []
    pending = ""
    for line in lines:
        pending += line.rstrip()
        if pending.endswith("\\"):
            pending = pending[:-1] + " "
            continue
        if pending.strip():
            word, _, rest = pending.strip().partition(" ")
            out.append((word.upper(), rest.strip()))
        pending = ""
    return out


def stages(dockerfile: Path) -> dict[str, Stage]:
    """The stages of a Dockerfile, in order, with what each copies, installs and starts."""
    out: dict[str, Stage] = {}
    current: Stage | None = None
    for word, rest in _instructions(dockerfile):
        if word == "FROM":
            parts = rest.split()
            name = parts[2] if len(parts) >= 3 and parts[1].upper() == "AS" else f"stage{len(out)}"
            parent = parts[0] if parts[0] in out else None
            current = Stage(name, parent, out[parent].workdir if parent else "/")
            out[name] = current
        elif current is None:
            continue
        elif word == "WORKDIR":
            current.workdir = rest if rest.startswith("/") else f"{current.workdir.rstrip('/')}/{rest}"
        elif word == "COPY":
            args = [a for a in shlex.split(rest) if not a.startswith("--")]
            *sources, dest = args
            current.copies += [(src, dest, current.workdir) for src in sources]
        elif word == "RUN" and "pip install" in rest:
            current.installs.append(rest)
        elif word in ("CMD", "ENTRYPOINT"):
            current.start = rest
    return out


def chain(all_stages: dict[str, Stage], name: str) -> list[Stage]:
    """The stage and its ancestors, oldest first."""
    out: list[Stage] = []
    stage: Stage | None = all_stages[name]
    while stage is not None:
        out.insert(0, stage)
        stage = all_stages[stage.parent] if stage.parent else None
    return out


def entrypoint_module(start: str) -> str:
    match = re.search(r"python3?\"?,?\s*\"?-m\"?,?\s*\"?([A-Za-z_.]+)", start)
    assert match, f"cannot find `python -m <module>` in {start!r}"
    return match[1]


def build_folder(stages_: list[Stage], into: Path) -> Path:
    """Copy what the stages COPY into ``into`` (the image's root); returns the final WORKDIR there."""
    for stage in stages_:
        for source, dest, workdir in stage.copies:
            target = Path(dest if dest.startswith("/") else f"{workdir.rstrip('/')}/{dest}")
            src = ROOT / source
            where = into / str(target).lstrip("/")
            if src.is_dir():
                shutil.copytree(src, where, dirs_exist_ok=True, ignore=shutil.ignore_patterns("__pycache__"))
            else:
                if dest.endswith("/"):
                    where = where / src.name
                where.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(src, where)
    return into / stages_[-1].workdir.lstrip("/")


def _closure(names: list[str]) -> set[str]:
    seen: set[str] = set()
    todo = list(names)
    while todo:
        try:
            dist = md.distribution(todo.pop())
        except md.PackageNotFoundError:
            continue
        name = dist.metadata["Name"].lower()
        if name in seen:
            continue
        seen.add(name)
        for line in dist.requires or []:
            req = Requirement(line)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                todo.append(req.name)
    return seen


def installed_distributions(stages_: list[Stage], root: Path) -> set[str]:
    """Distributions the image's ``pip install`` lines bring (from this environment's metadata)."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    names: list[str] = []
    for stage in stages_:
        for line in stage.installs:
            for command in line.split("&&"):
                if "pip install" not in command:
                    continue
                words = shlex.split(command.split("pip install", 1)[1])
                for i, word in enumerate(words):
                    if word == "-r":
                        path = root / words[i + 1].lstrip("/")
                        reqs = [r for r in path.read_text().splitlines() if r.strip() and not r.startswith("#")]
                        names += [Requirement(r).name for r in reqs]
                    elif word == "." and "--no-deps" not in words:
                        names += [Requirement(r).name for r in project]
                    elif not word.startswith("-") and words[i - 1] not in ("-r", "--index-url") and word != ".":
                        names.append(Requirement(word.split("$")[0].rstrip("=")).name)
    return _closure(names)


def blocked_modules(allowed: set[str]) -> list[str]:
    """Top-level third-party modules of this environment that the image does not install."""
    out = []
    for module, dists in md.packages_distributions().items():
        if module in sys.stdlib_module_names or module in FIRST_PARTY or module.startswith("_"):
            continue
        if not {d.lower() for d in dists} & allowed:
            out.append(module)
    return sorted(out)


# Run in a clean interpreter: off the project's own editable install, onto the image's folder,
# every module the image lacks refused, then `python -m <module> --help`.
_START = r"""
import importlib.machinery, json, os, runpy, sys
app, blocked, module = sys.argv[1], set(json.loads(sys.argv[2])), sys.argv[3]
root = os.path.realpath(sys.argv[4])
sys.meta_path[:] = [f for f in sys.meta_path if not getattr(f, "__module__", "").startswith("__editable__")]
sys.path_hooks[:] = [h for h in sys.path_hooks if not getattr(h, "__module__", "").startswith("__editable__")]
sys.path[:] = [p for p in sys.path if p and os.path.realpath(p) != root]
sys.path.insert(0, app)
sys.path_importer_cache.clear()

class Hidden(importlib.machinery.PathFinder):
    # The path finder, blind to what the image does not install: to importers it is not there.

    @classmethod
    def find_spec(cls, name, path=None, target=None):
        if name.split(".")[0] in blocked:
            return None
        return super().find_spec(name, path, target)

sys.meta_path[:] = [Hidden if f is importlib.machinery.PathFinder else f for f in sys.meta_path]
sys.argv = [module, "--help"]
try:
    runpy.run_module(module, run_name="__main__", alter_sys=True)
except SystemExit as exit:
    if exit.code not in (0, None):
        raise
for name, mod in list(sys.modules.items()):
    where = getattr(mod, "__file__", None) or ""
    if name.split(".")[0] in ("common", "router", "worker", "devhub") and not where.startswith(app):
        raise SystemExit(f"{name} was imported from {where}, outside the image")
print("started", module)
"""


def _images() -> list[tuple[str, str]]:
    out = []
    for dockerfile in sorted(DEPLOY.glob("*.Dockerfile")):
        for name, stage in stages(dockerfile).items():
            if stage.start is not None:
                out.append((dockerfile.name, name))
    return out


IMAGES = _images()


def test_every_dockerfile_has_an_image() -> None:
    assert {d for d, _ in IMAGES} == {p.name for p in DEPLOY.glob("*.Dockerfile")}
    assert {"router.Dockerfile", "worker.Dockerfile"} <= {d for d, _ in IMAGES}
    assert ("worker.Dockerfile", "devhub") in IMAGES and ("worker.Dockerfile", "worker") in IMAGES


@pytest.mark.parametrize(("dockerfile", "stage"), IMAGES, ids=[f"{d}:{s}" for d, s in IMAGES])
def test_the_image_starts_from_its_own_files(dockerfile: str, stage: str, tmp_path: Path) -> None:
    all_stages = stages(DEPLOY / dockerfile)
    lineage = chain(all_stages, stage)
    app = build_folder(lineage, tmp_path)
    module = entrypoint_module(all_stages[stage].start or "")
    blocked = blocked_modules(installed_distributions(lineage, tmp_path))
    out = subprocess.run(
        [sys.executable, "-I", "-c", _START, str(app), json.dumps(blocked), module, str(ROOT)],
        cwd=app,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert out.returncode == 0, f"{dockerfile}:{stage} cannot start `python -m {module}`:\n{out.stderr[-3000:]}"
    assert f"started {module}" in out.stdout
    assert "usage:" in out.stdout


def test_a_missing_package_fails_the_check(tmp_path: Path) -> None:
    """Negative control: the worker image without its common/ folder does not start."""
    all_stages = stages(DEPLOY / "worker.Dockerfile")
    lineage = chain(all_stages, "worker")
    app = build_folder(lineage, tmp_path)
    shutil.rmtree(app / "common")
    out = subprocess.run(
        [sys.executable, "-I", "-c", _START, str(app), "[]", "worker", str(ROOT)],
        cwd=app,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert out.returncode != 0 and "No module named 'common'" in out.stderr
