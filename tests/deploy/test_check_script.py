"""`make test` includes `make deploy-check`: the offline validation of deploy/ (hadolint, compose
config, kustomize + kubernetes-validate --strict, the KEDA schema). The consistency tests beside
this file run in this same pytest session, so the script runs here without them."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.deploy.manifests import ROOT


@pytest.mark.slow
def test_deploy_check_passes() -> None:
    env = {**os.environ, "PY": sys.executable}
    out = subprocess.run(
        ["bash", "deploy/check.sh", "--no-pytest"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=280,
    )
    assert out.returncode == 0, f"deploy/check.sh failed:\n{out.stdout}\n{out.stderr}"
    assert "deploy-check: all checks passed" in out.stdout
