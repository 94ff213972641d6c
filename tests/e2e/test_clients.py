"""The clients people already use, against a whole farm on loopback: every example of docs/CLIENTS.md
run as written, and the real ``openai`` SDK's images, seeds, URLs and exceptions."""

from __future__ import annotations

import base64
import io
import json
import re
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import openai
import pytest
from openai import OpenAI
from PIL import Image

from lorafarm.farm import REPO_ROOT, Farm

pytestmark = pytest.mark.slow

LORA = "tiny/sdxl-lora-kohya"
DOCS = REPO_ROOT / "docs" / "CLIENTS.md"
KEY = "clients-api-key"


def examples() -> list[tuple[str, str]]:
    """The ``sh`` and ``python`` blocks of docs/CLIENTS.md, in order."""
    return re.findall(r"```(sh|python)\n(.*?)```", DOCS.read_text(), re.S)


def run_example(farm: Farm, language: str, code: str, cwd: Path) -> str:
    code = code.replace("http://127.0.0.1:8888", farm.router_url)
    argv = ["bash", "-euo", "pipefail", "-c", code] if language == "sh" else [sys.executable, "-c", code]
    done = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, f"{language} example failed:\n{code}\n{done.stdout}\n{done.stderr}"
    return done.stdout


def client(farm: Farm, key: str = "unused") -> OpenAI:
    # No retries: a retry would hide the first answer, which is what these tests read.
    return OpenAI(base_url=f"{farm.router_url}/v1", api_key=key, max_retries=0, timeout=120)


def decoded(response: openai.types.ImagesResponse) -> list[bytes]:
    return [base64.b64decode(item.b64_json or "") for item in response.data or []]


@contextmanager
def router_with(farm: Farm, env: dict[str, str]) -> Iterator[None]:
    """The block runs against the farm's router restarted with ``env``; the usual one comes back after."""
    saved = dict(farm.config.router_env)
    farm.terminate("router")
    farm.config.router_env = saved | env
    farm.start_router()
    try:
        yield
    finally:
        farm.terminate("router")
        farm.config.router_env = saved
        farm.start_router()


# --- the documented examples ----------------------------------------------------------------------


def test_every_example_of_the_clients_doc_runs_as_written(farm: Farm, tmp_path: Path) -> None:
    blocks = examples()
    assert [lang for lang, _ in blocks] == ["sh", "python", "python", "python"]
    outputs = [run_example(farm, lang, code, tmp_path) for lang, code in blocks]
    print("\n".join(outputs))  # what README shows

    images = json.loads((tmp_path / "images.json").read_text())
    assert [item["seed"] for item in images["data"]] == [1, 2]
    first = base64.b64decode(images["data"][0]["b64_json"])
    assert (tmp_path / "elephant.png").read_bytes() == first  # the link serves the same image
    assert Image.open(tmp_path / "composed.png").format == "PNG"
    models = {m["id"]: m for m in json.loads((tmp_path / "models.json").read_text())["data"]}
    assert models["tiny/sdxl-base"]["kind"] == "base" and models[LORA]["kind"] == "lora"

    assert re.fullmatch(
        r"elephant-0\.png: seed 1, \d+ bytes\nelephant-1\.png: seed 2, \d+ bytes\n"
        r"n=1 with seed 2 is image 1: True\nmodels: tiny/sdxl-base, tiny/sd15-base, .*\n",
        outputs[1],
    ), outputs[1]
    assert outputs[2].splitlines() == [
        "PermissionDeniedError 403 gated_repo - tiny/sdxl-lora-gated is gated; gated repos are not served here",
        "UnprocessableEntityError 422 invalid_request - size 65x64: width: Input should be a multiple of 8",
        "NotFoundError 404 repo_not_found - no model repo tiny/nope on the Hub",
    ], outputs[2]
    assert outputs[3] == "(64, 64) (64, 64)\n"
    # The same composition, by the Hugging Face body with `loras` and by the OpenAI route with extras.
    composed = client(farm).images.generate(
        model="tiny/sdxl-base",
        prompt="an elephant",
        extra_body={"seed": 1, "loras": [{"path": "tiny/sdxl-lora-a", "scale": 0.7}]},
    )
    assert decoded(composed) == [(tmp_path / "composed.png").read_bytes()]


# --- the openai SDK -------------------------------------------------------------------------------


def test_n_images_are_distinct_and_a_seed_repeats_them_exactly(farm: Farm) -> None:
    sdk = client(farm)
    two = sdk.images.generate(model=LORA, prompt="an elephant", n=2, size="64x64", response_format="b64_json")
    images = decoded(two)
    assert len(images) == 2 and images[0] != images[1]
    assert {Image.open(io.BytesIO(i)).size for i in images} == {(64, 64)}
    seeds = [item.seed for item in two.data or []]  # random, reported
    assert seeds[1] == seeds[0] + 1

    args = {"model": LORA, "prompt": "an elephant", "n": 2, "size": "64x64", "extra_body": {"seed": 77}}
    first, second = sdk.images.generate(**args), sdk.images.generate(**args)  # type: ignore[call-overload]
    assert decoded(first) == decoded(second) and len(set(decoded(first))) == 2
    assert (two.output_format, two.size, two.model_extra) == ("png", "64x64", {"model": LORA})
    assert two.created > 0


def test_url_answers_fetch_the_images(farm: Farm) -> None:
    args = {"model": LORA, "prompt": "an elephant", "n": 2, "size": "64x64", "extra_body": {"seed": 5}}
    linked = client(farm).images.generate(response_format="url", output_format="jpeg", **args)  # type: ignore[call-overload]
    inline = client(farm).images.generate(output_format="jpeg", **args)  # type: ignore[call-overload]
    fetched = [httpx.get(item.url or "", timeout=30) for item in linked.data or []]
    assert [r.status_code for r in fetched] == [200, 200]
    assert [r.headers["content-type"] for r in fetched] == ["image/jpeg"] * 2
    assert [r.content for r in fetched] == decoded(inline)
    assert all((item.url or "").startswith(f"{farm.router_url}/v1/images/") for item in linked.data or [])


def test_invalid_input_and_refused_repos_raise_the_sdks_exceptions(farm: Farm) -> None:
    sdk = client(farm)
    with pytest.raises(openai.UnprocessableEntityError, match="size 64x20: height"):
        sdk.images.generate(model=LORA, prompt="an elephant", size="64x20")
    with pytest.raises(openai.PermissionDeniedError, match="gated") as gated:
        sdk.images.generate(model="tiny/sdxl-lora-gated", prompt="an elephant")
    assert gated.value.code == "gated_repo" and gated.value.type == "permission_error"
    with pytest.raises(openai.NotFoundError, match="tiny/nope"):
        sdk.images.generate(model="tiny/nope", prompt="an elephant")
    with pytest.raises(openai.UnprocessableEntityError, match="loras"):
        sdk.images.generate(
            model=LORA, prompt="an elephant", extra_body={"loras": [{"path": "https://huggingface.co@127.0.0.1/a/b"}]}
        )


def test_a_full_queue_and_a_missing_key_raise_rate_limit_and_authentication_errors(farm: Farm) -> None:
    with router_with(farm, {"LORAFARM_API_KEY": KEY, "LORAFARM_QUEUE_MAX": "4"}):
        with pytest.raises(openai.AuthenticationError, match="API key"):
            client(farm, "wrong").images.generate(model=LORA, prompt="an elephant")
        with pytest.raises(openai.AuthenticationError):
            client(farm, "wrong").models.list()
        auth = {"Authorization": f"Bearer {KEY}"}
        # Four long images in hand hold the pool at its bound while they run.
        body = {"model": LORA, "n": 4, "inputs": "an elephant", "parameters": {"num_inference_steps": 150}}
        long = httpx.post(f"{farm.router_url}/jobs", json=body, headers=auth, timeout=30)
        assert long.status_code == 202, long.text
        try:
            with pytest.raises(openai.RateLimitError, match="full") as full:
                client(farm, KEY).images.generate(model=LORA, prompt="an elephant")
            assert full.value.code == "queue_full" and int(full.value.response.headers["retry-after"]) >= 1
        finally:
            httpx.delete(f"{farm.router_url}/jobs/{long.json()['id']}", headers=auth, timeout=30)
