"""Fixtures of the deploy tests: kustomize builds, skipped only where kubectl is absent."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.deploy.manifests import build, kubectl


@pytest.fixture(scope="session")
def kustomize() -> Callable[[Path], tuple[dict[str, Any], ...]]:
    """Builds a kustomization directory into its resources."""
    if kubectl() is None:
        pytest.skip("kubectl is not installed: the kustomize builds cannot be checked here")
    return build
