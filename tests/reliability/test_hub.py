"""The Hub slow or gone: what was resolved keeps serving (metadata cache, disk cache); the rest is a clean 503."""

from __future__ import annotations

import re
import time
import uuid

import pytest

from lorafarm.farm import Farm
from tests.reliability.figures import Figures
from tests.reliability.tools import SDXL, assert_error, body, post, wait_until, worker_logs

pytestmark = pytest.mark.slow

KNOWN = ["tiny/sdxl-lora-a", "tiny/sdxl-lora-b"]
UNKNOWN = "tiny/sdxl-lora-c"
HUB_TIMEOUT_S = 1.0  # the farm's LORAFARM_HUB_TIMEOUT_S
SLOW_HUB_MS = 3000


def disk_loads(farm: Farm, repo: str) -> int:
    """How often workers loaded the adapter from disk (the farm keeps no parsed adapter in memory)."""
    return sum(
        len(re.findall(rf"event=adapter_loaded adapter={re.escape(repo)}@", t)) for t in worker_logs(farm).values()
    )


@pytest.mark.timeout(150)
def test_hub_slow_then_gone_then_back(one_worker: Farm, figures: Figures) -> None:
    farm = one_worker
    for repo in KNOWN:
        assert post(farm, repo).status_code == 200

    try:
        # A slow Hub: metadata calls time out; what is cached answers, what is not gets a quick 503.
        farm.terminate("devhub")
        farm.start_devhub(delay_ms=SLOW_HUB_MS)
        time.sleep(1.1)  # past the metadata TTL: every answer below needs a refresh
        start = time.perf_counter()
        assert_error(post(farm, UNKNOWN), 503, "hub_unavailable")
        slow_unknown_s = time.perf_counter() - start
        assert slow_unknown_s < HUB_TIMEOUT_S + 1.5
        assert post(farm, KNOWN[0]).status_code == 200

        # No Hub at all.
        farm.kill("devhub")
        time.sleep(1.1)
        before = {repo: disk_loads(farm, repo) for repo in KNOWN}
        for repo in KNOWN:
            resp = post(farm, repo)
            assert resp.status_code == 200, resp.text
        # A combination no worker has fused makes some worker swap, and so load both adapters:
        # from the local file cache, with the Hub gone.
        first, second = KNOWN
        for main, extra in ((first, second), (second, first)):
            resp = post(farm, main, body(adapters=[{"id": extra, "scale": 0.5}]))
            assert resp.status_code == 200, resp.text
        assert all(disk_loads(farm, repo) > before[repo] for repo in KNOWN)
        assert post(farm, SDXL).status_code == 200
        # Unknown to this router: it cannot tell a new LoRA from a missing repo, so 503, not 404 or 500.
        for repo in (UNKNOWN, f"tiny/not-there-{uuid.uuid4().hex[:8]}", f"someone/else-{uuid.uuid4().hex[:8]}"):
            assert_error(post(farm, repo), 503, "hub_unavailable")
    finally:
        if farm.procs["devhub"].poll() is not None:
            farm.start_devhub()
    back = time.monotonic()
    wait_until(lambda: post(farm, UNKNOWN).status_code == 200, 15, interval=0.5, what="the new LoRA served")
    figures(
        unknown_lora_503_with_a_slow_hub_s=round(slow_unknown_s, 2),
        new_lora_served_after_hub_back_s=round(time.monotonic() - back, 2),
    )
