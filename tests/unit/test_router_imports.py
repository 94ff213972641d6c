"""The router never loads torch or diffusers; common never loads torch or fastapi."""

from __future__ import annotations

import subprocess
import sys

from tests.conftest import ROOT

CHECK = """
import sys
import common.hub, common.schemas, common.errors, common.keys, common.settings
import common.connections, common.protocol, common.scripts
from common.hub import hub_fetcher
hub_fetcher("http://127.0.0.1:9", None, 1.0)
common_loaded = sorted(m for m in ("torch", "diffusers", "fastapi") if m in sys.modules)
import router.app, router.__main__, router.queue
from router.app import create_app
from router.settings import RouterSettings
create_app(RouterSettings(pools=["tiny/sdxl-base"]))
router_loaded = sorted(m for m in ("torch", "diffusers") if m in sys.modules)
print(common_loaded, router_loaded)
"""


def test_no_heavy_imports() -> None:
    out = subprocess.run([sys.executable, "-c", CHECK], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[] []", out.stdout + out.stderr
