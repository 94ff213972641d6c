"""The widget in a real browser: headless Debian Chromium driven by Playwright, against a farm on loopback.

Needs the Debian packages ``chromium`` and ``chromium-driver`` (``make test`` installs them) and the
``playwright`` Python package; never ``playwright install`` (no download: the system Chromium runs).
A screenshot lands in ``test-artifacts/widget.png``; with ``LORAFARM_UPDATE_DOCS=1`` a small copy
replaces ``docs/img/widget.png`` (the README's).
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image

from lorafarm.farm import Farm, FarmConfig
from tests.conftest import ARTIFACTS, ROOT
from tests.polling import holders, wait_until

pytestmark = [pytest.mark.browser, pytest.mark.slow]

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
LORA = "tiny/sdxl-lora-kohya"
STEPS = 20

# Records every value the progress bar shows, whatever the pace of the events.
RECORD_PROGRESS = """
window.__progress = [];
document.addEventListener("DOMContentLoaded", () => {
  const bar = document.getElementById("progress");
  if (!bar) return;
  new MutationObserver(() => window.__progress.push(Number(bar.getAttribute("aria-valuenow"))))
    .observe(bar, {attributes: true, attributeFilter: ["aria-valuenow"]});
});
"""


@pytest.fixture(scope="module")
def farm(zoo_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Farm]:
    """An SDXL-shaped pool and a FLUX.1 one; workers publish every step, so the bar has steps to show."""
    farm = Farm(
        FarmConfig(
            state_dir=tmp_path_factory.mktemp("farm"),
            zoo_dir=zoo_dir,
            pools=["tiny/sdxl-base", "tiny/flux-base"],
            env={"LORAFARM_DEFAULT_STEPS": "2", "LORAFARM_HEARTBEAT_S": "0.5", "LORAFARM_PROGRESS_INTERVAL_S": "0"},
        )
    )
    try:
        farm.start()
        yield farm
    finally:
        farm.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not Path(CHROMIUM).exists():
        pytest.fail("Chromium is not installed: run `make test`, which installs the Debian packages")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


def wait_for(page: Any, script: str, timeout: float = 60.0) -> Any:
    """Poll ``script`` in the page until it returns a truthy value (no eval: the page's CSP stays on)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = page.evaluate(script)
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {script}")


def test_widget_computes_an_image_with_live_progress(farm: Farm, browser: Any) -> None:
    page = browser.new_page(viewport={"width": 600, "height": 760})
    problems: list[str] = []
    page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: problems.append(str(e)))
    page.add_init_script(RECORD_PROGRESS)

    resp = page.goto(f"{farm.router_url}/widget/{LORA}")
    assert resp is not None and resp.ok
    assert "x-frame-options" not in resp.headers  # embeddable
    assert page.title().startswith(LORA)
    page.fill("#prompt", "an astronaut riding an elephant")
    page.click("#advanced summary")
    page.fill("#steps", str(STEPS))
    page.fill("#seed", "7")
    page.click("#compute")

    wait_for(page, "() => document.getElementById('image').naturalWidth > 0")
    progress = page.evaluate("() => window.__progress")
    moving = [v for v in progress if 0 < v < 100]
    assert moving, f"the bar never showed a step before the end: {progress}"
    assert progress[-1] == 100 and progress == sorted(progress), progress
    assert page.inner_text("#status") == "Done."
    meta = page.inner_text("#meta")
    assert meta.startswith("Computed in ") and "adapter" in meta
    assert page.evaluate("() => document.getElementById('image').naturalWidth") == 64
    assert page.is_hidden("#error")
    assert not problems, problems  # nothing blocked by the page's CSP, no script error

    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "widget.png"
    page.screenshot(path=str(shot), full_page=True)
    small = ARTIFACTS / "widget-small.png"
    with Image.open(shot) as image:
        image.convert("RGB").quantize(colors=64).save(small, optimize=True)
    if os.environ.get("LORAFARM_UPDATE_DOCS") == "1":
        shutil.copyfile(small, ROOT / "docs" / "img" / "widget.png")

    # Pressed again, the adapter is already fused: the widget says it was warm.
    page.click("#compute")
    wait_for(
        page,
        "() => document.getElementById('status').textContent === 'Done.' && "
        "document.getElementById('meta').textContent.includes('warm')",
    )
    page.close()


def test_widget_disables_the_negative_prompt_where_the_family_takes_none(farm: Farm, browser: Any) -> None:
    page = browser.new_page()
    page.goto(f"{farm.router_url}/widget/tiny/flux-lora-diffusers")
    wait_for(page, "() => document.getElementById('widget').dataset.family === 'flux'")
    assert page.is_disabled("#negative")
    assert "guidance-distilled" in (page.get_attribute("#negative", "title") or "")
    page.fill("#prompt", "a flux of elephants")
    page.click("#compute")
    wait_for(page, "() => document.getElementById('image').naturalWidth > 0")
    assert page.is_hidden("#error")

    page.goto(f"{farm.router_url}/widget/{LORA}")  # SDXL takes one
    wait_for(page, "() => document.getElementById('widget').dataset.family === 'sdxl'")
    assert page.is_enabled("#negative")
    page.close()


def test_widget_shows_the_router_error(farm: Farm, browser: Any) -> None:
    page = browser.new_page()
    page.goto(f"{farm.router_url}/widget/tiny/sdxl-lora-gated")
    page.fill("#prompt", "x")
    page.click("#compute")
    text = wait_for(
        page, "() => !document.getElementById('error').hidden && document.getElementById('error').textContent"
    )
    assert "gated_repo" in text
    assert page.is_enabled("#compute")
    page.close()


def test_index_lists_bases_and_held_adapters_and_embeds_in_a_frame(farm: Farm, browser: Any) -> None:
    httpx.post(f"{farm.router_url}/models/tiny/sdxl-lora-a", json={"inputs": "x"}, timeout=60).raise_for_status()
    wait_until(lambda: holders(farm, "tiny/sdxl-lora-a"), 10, what="a heartbeat announcing the adapter")
    page = browser.new_page()
    page.goto(f"{farm.router_url}/")
    links = page.eval_on_selector_all("ul.models a", "els => els.map(e => e.textContent)")
    assert "tiny/sdxl-base" in links and "tiny/sdxl-lora-a" in links
    page.fill("#open input[name=model]", "tiny/sdxl-lora-b")
    page.click("#open button")
    page.wait_for_url(f"{farm.router_url}/widget/tiny/sdxl-lora-b")

    # Another origin (here: a data: page) frames the widget, and its script runs there.
    page.set_content(
        f'<iframe id="w" src="{farm.router_url}/widget/tiny/sdxl-lora-a" width="600" height="500"></iframe>'
    )
    frame = page.frame_locator("#w")
    frame.locator("#compute").wait_for(state="visible", timeout=10_000)
    assert frame.locator("#status").inner_text() == "Type a prompt and press Compute."
    page.close()


def test_widget_sends_the_api_key_the_router_asks_for(farm: Farm, browser: Any) -> None:
    """With LORAFARM_API_KEY set, Compute says 401 and opens the key field; with the key, it works."""
    saved = dict(farm.config.router_env)
    farm.terminate("router")
    farm.config.router_env = saved | {"LORAFARM_API_KEY": "widget-secret"}
    farm.start_router()
    try:
        page = browser.new_page()
        page.add_init_script(RECORD_PROGRESS)
        page.goto(f"{farm.router_url}/widget/{LORA}")
        page.fill("#prompt", "a key please")
        page.click("#compute")
        text = wait_for(
            page, "() => !document.getElementById('error').hidden && document.getElementById('error').textContent"
        )
        assert "unauthorized" in text
        assert page.evaluate("() => document.getElementById('advanced').open")
        page.fill("#key", "widget-secret")
        page.fill("#steps", "12")
        page.click("#compute")
        wait_for(page, "() => document.getElementById('image').naturalWidth > 0")
        progress = page.evaluate("() => window.__progress")
        assert [v for v in progress if 0 < v < 100], progress  # the events came through, with the key
        assert page.inner_text("#status") == "Done."
        assert page.is_hidden("#error")
        page.close()
    finally:
        farm.terminate("router")
        farm.config.router_env = saved
        farm.start_router()
