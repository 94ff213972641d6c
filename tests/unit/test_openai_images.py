"""The OpenAI dialect in pure code: its body read as the Hugging Face body, `loras` paths, error shapes."""

from __future__ import annotations

import json

import pytest

from common import errors
from common.hub import repo_of_path
from common.schemas import MAX_SEED, InferenceRequest, Job
from router.errors import error_body, openai_type
from router.jobs import adapter_specs, build_job
from router.openai_images import parse_generation, parse_size, signature


def body(**fields: object) -> bytes:
    return json.dumps({"prompt": "an elephant", **fields}).encode()


def test_an_openai_body_becomes_the_hugging_face_body_with_the_extras_as_parameters() -> None:
    ask = parse_generation(
        body(
            model=" tiny/sdxl-lora-a ",
            n=3,
            size="64x128",
            response_format="url",
            output_format="webp",
            seed=7,
            num_inference_steps=2,
            guidance_scale=4.5,
            negative_prompt="blurry",
            loras=[{"path": "https://huggingface.co/tiny/sdxl-lora-b", "scale": 0.3}],
            user="someone",
            quality="standard",
        )
    )
    assert (ask.model, ask.images, ask.size, ask.response_format, ask.output_format) == (
        "tiny/sdxl-lora-a",
        3,
        "64x128",
        "url",
        "webp",
    )
    p = ask.body.parameters
    assert ask.body.inputs == "an elephant"
    assert (p.width, p.height, p.seed, p.num_inference_steps, p.guidance_scale) == (64, 128, 7, 2, 4.5)
    assert p.negative_prompt == "blurry" and p.adapters is None
    assert [(s.id, s.scale) for s in adapter_specs(p)] == [("tiny/sdxl-lora-b", 0.3)]


def test_openai_defaults_are_one_png_as_base64_at_the_bases_own_size() -> None:
    ask = parse_generation(body(size="auto"))
    assert (ask.model, ask.images, ask.size, ask.response_format, ask.output_format) == (
        None,
        1,
        None,
        "b64_json",
        "png",
    )
    assert (ask.body.parameters.width, ask.body.parameters.height) == (None, None)


@pytest.mark.parametrize(
    ("fields", "says"),
    [
        ({"size": "64"}, "size: 'WIDTHxHEIGHT'"),
        ({"size": "64X64"}, "size: 'WIDTHxHEIGHT'"),
        ({"size": " 64x64"}, "size: 'WIDTHxHEIGHT'"),
        ({"size": "65x64"}, "size 65x64: width"),
        ({"size": "4096x64"}, "size 4096x64: width"),
        ({"size": "64x0"}, "size 64x0: height"),
        ({"n": 0}, "n"),
        ({"n": 11}, "n"),
        ({"n": "2"}, "n"),
        ({"response_format": "png"}, "response_format"),
        ({"output_format": "gif"}, "output_format"),
        ({"stream": True}, "stream"),
        ({"background": "transparent"}, "background"),
        ({"seed": -1}, "seed"),
        ({"prompt": "   "}, "prompt must not be blank"),
        ({"model": "  "}, "model must not be blank"),
        ({"loras": [{"path": "tiny/a", "weight": 1}]}, "loras.0.weight"),
    ],
)
def test_openai_bodies_it_does_not_take_are_invalid_requests_saying_why(fields: dict[str, object], says: str) -> None:
    with pytest.raises(errors.InvalidRequest) as info:
        parse_generation(body(**fields))
    assert says in info.value.message


@pytest.mark.parametrize("raw", [b"", b"[]", b"not json", b"\xff"])
def test_an_openai_body_must_be_a_json_object(raw: bytes) -> None:
    with pytest.raises(errors.InvalidRequest):
        parse_generation(raw)


def test_sizes() -> None:
    assert parse_size("1024x768") == (1024, 768)
    assert parse_size(None) == parse_size("auto") == (None, None)


# --- loras: a repo id or the Hub page of one, never anything to fetch ----------------------------


@pytest.mark.parametrize(
    "path", ["tiny/sdxl-lora-a", "https://huggingface.co/tiny/sdxl-lora-a", "https://huggingface.co/tiny/sdxl-lora-a/"]
)
def test_a_lora_path_names_a_repo(path: str) -> None:
    assert repo_of_path(path) == "tiny/sdxl-lora-a"


@pytest.mark.parametrize(
    "path",
    [
        "https://evil.example/tiny/sdxl-lora-a",
        "https://huggingface.co.evil.example/tiny/sdxl-lora-a",
        "https://huggingface.co@evil.example/tiny/sdxl-lora-a",
        "https://user:pw@huggingface.co/tiny/sdxl-lora-a",
        "https://huggingface.co:8443/tiny/sdxl-lora-a",
        "http://huggingface.co/tiny/sdxl-lora-a",
        "HTTPS://huggingface.co/tiny/sdxl-lora-a",
        "https://HuggingFace.co/tiny/sdxl-lora-a",
        "file:///etc/passwd",
        "file:tiny/sdxl-lora-a",
        "http://127.0.0.1:6379/tiny/x",
        "http://169.254.169.254/latest/meta-data",
        "https://huggingface.co/tiny/sdxl-lora-a/resolve/main/x.safetensors",
        "https://huggingface.co/tiny/sdxl-lora-a/blob/main/x.safetensors",
        "https://huggingface.co/tiny/sdxl-lora-a?x=1",
        "https://huggingface.co/tiny/sdxl-lora-a#x",
        "https://huggingface.co/tiny%2Fsdxl-lora-a",
        "https://huggingface.co/tiny/sdxl%2Dlora-a",
        "https://huggingface.co/tiny/../secret/x",
        "https://huggingface.co/tiny",
        "https://huggingface.co//tiny/sdxl-lora-a",
        "https://huggingface.co/tiny/sdxl-lora-a\n",
        "https://huggingface.co\\@evil.example/tiny/x",
        "//evil.example/tiny/x",
        "/tiny/sdxl-lora-a",
        "huggingface.co/tiny/sdxl-lora-a",
        "tiny/sdxl%2Dlora-a",
        "tiny/sdxl-lora-a/resolve/main/x.safetensors",
        "hf://tiny/sdxl-lora-a",
    ],
)
def test_any_other_lora_path_is_refused(path: str) -> None:
    with pytest.raises(errors.InvalidRequest):
        repo_of_path(path)


def test_loras_and_adapters_are_one_list_of_the_same_limits() -> None:
    loras = InferenceRequest.model_validate(
        {
            "inputs": "a",
            "parameters": {"loras": [{"path": "https://huggingface.co/u/a", "scale": 0.7}, {"path": "u/b"}]},
        }
    )
    adapters = InferenceRequest.model_validate(
        {"inputs": "a", "parameters": {"adapters": [{"id": "u/a", "scale": 0.7}, {"id": "u/b"}]}}
    )
    assert adapter_specs(loras.parameters) == adapter_specs(adapters.parameters)
    with pytest.raises(ValueError, match="not both"):
        InferenceRequest.model_validate({"inputs": "a", "parameters": {"adapters": [], "loras": []}})
    with pytest.raises(ValueError, match="loras"):
        InferenceRequest.model_validate(
            {"inputs": "a", "parameters": {"loras": [{"path": f"u/{i}"} for i in range(5)]}}
        )
    with pytest.raises(ValueError, match="scale"):
        InferenceRequest.model_validate({"inputs": "a", "parameters": {"loras": [{"path": "u/a", "scale": 5}]}})


def test_a_refused_lora_path_is_named_by_its_place() -> None:
    request = InferenceRequest.model_validate({"inputs": "a", "parameters": {"loras": [{"path": "file:///x"}]}})
    with pytest.raises(errors.InvalidRequest, match=r"parameters\.loras\.0\.path"):
        adapter_specs(request.parameters)


# --- n images, their seeds, and the error shape -------------------------------------------------


def test_image_k_of_a_job_has_seed_plus_k_and_the_last_seed_must_be_one_a_request_may_name() -> None:
    request = InferenceRequest(inputs="a")
    job = build_job(request, "tiny/sdxl-base", [], "png", seed=5, timeout_s=1, images=3)
    assert job.seeds == [5, 6, 7] and job.to_fields()["images"] == "3"
    assert Job(pool="p", prompt="x", seed=9).seeds == [9]
    build_job(request, "p", [], "png", seed=MAX_SEED - 2, timeout_s=1, images=3)
    with pytest.raises(errors.InvalidRequest, match="seed"):
        build_job(request, "p", [], "png", seed=MAX_SEED - 1, timeout_s=1, images=3)


def test_the_openai_error_shape_carries_lorafarms_message_and_type() -> None:
    assert error_body("the queue is full", "queue_full", 429, "openai") == {
        "error": {"message": "the queue is full", "type": "rate_limit_error", "code": "queue_full", "param": None}
    }
    assert error_body("m", "queue_full", 429, "hf") == {"error": "m", "error_type": "queue_full"}
    types = {s: openai_type(s) for s in (400, 401, 403, 404, 413, 422, 429, 500, 503, 504)}
    assert types == {
        400: "invalid_request_error",
        401: "authentication_error",
        403: "permission_error",
        404: "not_found_error",
        413: "invalid_request_error",
        422: "invalid_request_error",
        429: "rate_limit_error",
        500: "server_error",
        503: "server_error",
        504: "server_error",
    }


def test_an_image_url_signature_is_bound_to_the_key_the_job_and_the_image() -> None:
    sig = signature("key", "job1", 0)
    assert len(sig) == 32 and sig == signature("key", "job1", 0)
    assert len({sig, signature("other", "job1", 0), signature("key", "job2", 0), signature("key", "job1", 1)}) == 4
