"""Optional API key: with one set, requests without it (or with another) get 401; /health needs none."""

from __future__ import annotations

import httpx
import pytest

from lorafarm.farm import Farm
from tests.reliability.conftest import restarted_router
from tests.reliability.tools import SDXL, assert_error, body

pytestmark = pytest.mark.slow

KEY = "reliability-api-key"


# The first test of the folder also pays for the farm's start (66 s measured on the loaded 2-core machine).
@pytest.mark.timeout(240)
def test_api_key_refuses_requests_without_it(one_worker: Farm) -> None:
    with restarted_router(one_worker, {"LORAFARM_API_KEY": KEY}) as farm:
        url = f"{farm.router_url}/models/{SDXL}"
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": KEY}, {"Authorization": "Basic x"}):
            resp = httpx.post(url, json=body(), headers=headers, timeout=30)
            assert_error(resp, 401, "unauthorized")
            assert resp.headers["www-authenticate"] == "Bearer"
        assert_error(httpx.get(f"{farm.router_url}/status", timeout=10), 401, "unauthorized")
        assert_error(httpx.post(f"{farm.router_url}/jobs", json=body(), timeout=10), 401, "unauthorized")
        assert httpx.get(f"{farm.router_url}/health", timeout=10).status_code == 200
        ok = httpx.post(url, json=body(), headers={"Authorization": f"Bearer {KEY}"}, timeout=60)
        assert ok.status_code == 200, ok.text
        # The key is a secret: no log line carries it.
        assert KEY not in (farm.logs / "router.log").read_text(errors="replace")
