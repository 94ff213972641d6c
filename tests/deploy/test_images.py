"""The Dockerfiles start the same entrypoints with the same settings and ports as the code, and the
router image (no torch) installs everything router/ and common/ import."""

from __future__ import annotations

import ast
import importlib.metadata as md
import shlex
import sys
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from pydantic_settings import BaseSettings

from lorafarm import settingsdoc
from router.settings import RouterSettings
from tests.deploy.manifests import DEPLOY, ROOT
from worker.settings import WorkerSettings

TORCH_FAMILY = {"torch", "diffusers", "transformers", "peft", "accelerate", "safetensors"}


def _instructions(dockerfile: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
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


def _env(dockerfile: Path) -> dict[str, str]:
    env: dict[str, str] = {}
    for word, rest in _instructions(dockerfile):
        if word == "ENV":
            for item in shlex.split(rest):
                key, _, value = item.partition("=")
                env[key] = value
    return env


IMAGES: dict[str, tuple[type[BaseSettings], str, int]] = {
    "router.Dockerfile": (RouterSettings, "router", RouterSettings.model_fields["port"].default),
    "worker.Dockerfile": (WorkerSettings, "worker", WorkerSettings.model_fields["worker_port"].default),
}


@pytest.mark.parametrize("name", IMAGES)
def test_dockerfile_env_entrypoint_and_port(name: str) -> None:
    cls, module, port = IMAGES[name]
    path = DEPLOY / name
    env = _env(path)
    known = set(settingsdoc.env_map(cls)) | set(settingsdoc.THIRD_PARTY_ENV)
    unknown = {k for k in env if k.startswith(("LORAFARM_", "HF_")) and k not in known}
    assert not unknown, f"{name} sets {unknown}, not settings of {cls.__name__}"
    instructions = _instructions(path)
    exposed = [int(rest) for word, rest in instructions if word == "EXPOSE"]
    assert exposed[-1] == port, f"{name}: the final stage exposes {exposed[-1]}, the service listens on {port}"
    assert str(port) in env.values(), f"{name}: the port env var is not {port}"
    start = [rest for word, rest in instructions if word in ("CMD", "ENTRYPOINT")][-1]
    assert start == f'["python", "-m", "{module}"]', f"{name} does not start `python -m {module}`"
    healthcheck = [rest for word, rest in instructions if word == "HEALTHCHECK"][-1]
    assert "/ready" in healthcheck and f"'{port}'" in healthcheck
    host_var = "LORAFARM_HOST" if module == "router" else "LORAFARM_WORKER_HOST"
    assert env[host_var] == "0.0.0.0", f"{name}: the service must listen beyond the container's loopback"


def _pyproject_deps() -> dict[str, Requirement]:
    data = tomllib.loads((ROOT / "pyproject.toml").read_text())
    reqs = (Requirement(line) for line in data["project"]["dependencies"])
    return {md.distribution(r.name).metadata["Name"].lower(): r for r in reqs}


def _router_requirements() -> list[Requirement]:
    lines = (DEPLOY / "router-requirements.txt").read_text().splitlines()
    return [Requirement(line) for line in lines if line.strip() and not line.startswith("#")]


def test_router_requirements_repeat_pyproject_without_torch() -> None:
    project = _pyproject_deps()
    for req in _router_requirements():
        key = md.distribution(req.name).metadata["Name"].lower()
        assert key in project, f"{req.name} is not a dependency in pyproject.toml"
        assert req.specifier == project[key].specifier, f"{req.name}: {req.specifier} != {project[key].specifier}"
        assert key not in TORCH_FAMILY, f"the router image must not install {req.name}"


def _closure(reqs: list[Requirement]) -> set[str]:
    """Distributions installed by pip for these requirements (from this environment's metadata)."""
    seen: set[str] = set()
    todo = [r.name for r in reqs]
    while todo:
        dist = md.distribution(todo.pop())
        name = dist.metadata["Name"].lower()
        if name in seen:
            continue
        seen.add(name)
        for line in dist.requires or []:
            req = Requirement(line)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                todo.append(req.name)
    return seen


def _imported_modules(*packages: str) -> dict[str, str]:
    """Top-level modules imported anywhere under the packages, with one file importing each."""
    found: dict[str, str] = {}
    for package in packages:
        for path in sorted((ROOT / package).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Import):
                    names = [alias.name for alias in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names = [node.module]
                else:
                    continue
                for name in names:
                    found.setdefault(name.split(".")[0], str(path.relative_to(ROOT)))
    return found


def test_router_image_installs_what_router_and_common_import() -> None:
    provided = _closure(_router_requirements())
    providers = md.packages_distributions()
    first_party = {"common", "router"}
    for module, where in _imported_modules("common", "router").items():
        if module in sys.stdlib_module_names or module in first_party:
            continue
        dists = {d.lower() for d in providers.get(module, [])}
        assert dists, f"{where} imports {module}, which no installed distribution provides"
        assert dists & provided, (
            f"{where} imports {module} ({', '.join(sorted(dists))}): add it to deploy/router-requirements.txt"
        )
        assert not dists & TORCH_FAMILY, f"{where} imports {module}: the router must not need torch"
