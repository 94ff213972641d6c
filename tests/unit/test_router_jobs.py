"""From request to job: body parsing, Accept negotiation, adapter composition (pure)."""

from __future__ import annotations

import json
import time

import pytest

from common import errors
from common.hub import Destination
from common.schemas import AdapterRef, InferenceRequest
from router.jobs import MAX_BODY_BYTES, build_job, compose, parse_body, pick_format, random_seed

SDXL, SD15 = "tiny/sdxl-base", "tiny/sd15-base"


def lora(repo_id: str, *pools: str) -> Destination:
    ref = AdapterRef(repo_id=repo_id, revision="a" * 40, weight_name="w.safetensors")
    return Destination(kind="lora", pool=pools[0], pools=pools, adapter=ref)


def base(pool: str) -> Destination:
    return Destination(kind="base", pool=pool, pools=(pool,))


# --- body ---------------------------------------------------------------------------------


def test_parse_body_reads_json_bytes() -> None:
    req = parse_body(b'{"inputs": "a cat", "parameters": {"seed": 3}}')
    assert (req.inputs, req.parameters.seed) == ("a cat", 3)
    assert parse_body('{"inputs": "un chat été"}'.encode()).inputs == "un chat été"


@pytest.mark.parametrize(
    ("raw", "words"),
    [
        (b"", "empty"),
        (b"  \n", "empty"),
        (b"\xff\xfe{}", "UTF-8"),
        (b"inputs=a+cat", "not JSON"),
        (b'{"inputs": "a"', "not JSON"),
        (b'"a cat"', "JSON object"),
        (b"[1, 2]", "JSON object"),
        (b"null", "JSON object"),
        (b'{"inputs": "\\ud800"}', "surrogate"),
        (b'{"inputs": 3}', "inputs"),
        (b'{"inputs": "a", "parameters": {"width": 65}}', "parameters.width"),
        (b'{"inputs": "a", "parameters": {"steps": 2}}', "parameters.steps"),
    ],
)
def test_parse_body_refuses(raw: bytes, words: str) -> None:
    with pytest.raises(errors.InvalidRequest) as info:
        parse_body(raw)
    assert words in info.value.message


def test_validation_message_does_not_echo_input() -> None:
    secret = "s3cr3t-" * 10
    with pytest.raises(errors.InvalidRequest) as info:
        parse_body(json.dumps({"inputs": "a", "parameters": {"negative_prompt": 1, "width": secret}}).encode())
    assert secret not in info.value.message


def test_body_cap_is_far_above_a_valid_body() -> None:
    body = {"inputs": "x" * 4000, "parameters": {"negative_prompt": "y" * 4000}}
    assert len(json.dumps(body)) * 4 < MAX_BODY_BYTES


# --- Accept -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("accept", "fmt"),
    [
        (None, "jpeg"),
        ("", "jpeg"),
        ("*/*", "jpeg"),
        ("image/*", "jpeg"),
        ("image/png", "png"),
        ("IMAGE/PNG", "png"),
        ("image/webp", "webp"),
        ("image/jpeg", "jpeg"),
        ("image/jpg", "jpeg"),
        ("application/json", "jpeg"),
        ("text/html, image/webp;q=0.9, */*;q=0.8", "webp"),
        ("image/png;q=0.5, image/webp", "webp"),
        ("image/png;q=0.5, image/webp;q=0.5", "png"),
        ("image/webp;q=0, image/png", "png"),
        ("image/png;q=abc, image/webp;q=0.1", "webp"),
        ("image/png ; q=1.0", "png"),
    ],
)
def test_pick_format(accept: str | None, fmt: str) -> None:
    assert pick_format(accept) == fmt


# --- composition --------------------------------------------------------------------------


def test_plain_base() -> None:
    assert compose(base(SDXL), [], lora_scale=0.3) == (SDXL, [])


def test_single_lora_with_scale() -> None:
    pool, adapters = compose(lora("t/a", SDXL), [], lora_scale=0.5)
    assert pool == SDXL
    assert [(a.repo_id, a.scale) for a in adapters] == [("t/a", 0.5)]
    _, adapters = compose(lora("t/a", SDXL), [], lora_scale=None)
    assert adapters[0].scale == 1.0


def test_base_with_composed_adapters() -> None:
    pool, adapters = compose(base(SDXL), [(lora("t/a", SDXL), 0.7), (lora("t/b", SD15, SDXL), 0.2)], lora_scale=None)
    assert pool == SDXL
    assert [(a.repo_id, a.scale) for a in adapters] == [("t/a", 0.7), ("t/b", 0.2)]


def test_lora_plus_adapters_and_duplicate_of_the_main_one() -> None:
    _, adapters = compose(lora("t/a", SDXL), [(lora("t/b", SDXL), 0.4)], lora_scale=0.9)
    assert [(a.repo_id, a.scale) for a in adapters] == [("t/a", 0.9), ("t/b", 0.4)]
    _, adapters = compose(lora("t/a", SDXL), [(lora("t/a", SDXL), 0.4)], lora_scale=0.9)
    assert [(a.repo_id, a.scale) for a in adapters] == [("t/a", 0.4)]  # the explicit entry wins


def test_pool_is_the_first_common_one() -> None:
    pool, _ = compose(lora("t/a", SDXL, SD15), [(lora("t/b", SD15), 1.0)], lora_scale=None)
    assert pool == SD15


def test_adapters_of_different_bases_refused() -> None:
    with pytest.raises(errors.AdapterIncompatible, match="t/a, t/b"):
        compose(lora("t/a", SDXL), [(lora("t/b", SD15), 1.0)], lora_scale=None)
    with pytest.raises(errors.AdapterIncompatible):
        compose(base(SDXL), [(lora("t/b", SD15), 1.0)], lora_scale=None)


def test_base_as_adapter_or_twice_refused() -> None:
    with pytest.raises(errors.UnsupportedModel, match="not an adapter"):
        compose(base(SDXL), [(base(SDXL), 1.0)], lora_scale=None)
    with pytest.raises(errors.InvalidRequest, match="twice"):
        compose(base(SDXL), [(lora("t/b", SDXL), 1.0), (lora("T/B", SDXL), 0.5)], lora_scale=None)


def test_build_job() -> None:
    body = InferenceRequest.model_validate(
        {"inputs": "a cat", "parameters": {"negative_prompt": "dog", "num_inference_steps": 2, "width": 64}}
    )
    before = time.time()
    job = build_job(body, SDXL, [], "png", seed=5, timeout_s=30)
    assert (job.pool, job.prompt, job.negative_prompt, job.num_inference_steps, job.width, job.height) == (
        SDXL,
        "a cat",
        "dog",
        2,
        64,
        None,
    )
    assert (job.seed, job.format) == (5, "png")
    assert job.deadline is not None and before + 29 < job.deadline < time.time() + 31


def test_random_seeds_vary_and_fit() -> None:
    seeds = {random_seed() for _ in range(50)}
    assert len(seeds) > 45 and all(0 <= s < 2**32 for s in seeds)
