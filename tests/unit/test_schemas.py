"""Wire schemas: the Inference API body's validation, and round trips of what travels through Redis."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from common.schemas import (
    MAX_ADAPTERS,
    MAX_PROMPT_CHARS,
    AdapterRef,
    InferenceRequest,
    Job,
    JobResult,
    JobStatus,
    WorkerState,
    adapter_set_key,
)


def test_minimal_body() -> None:
    req = InferenceRequest.model_validate({"inputs": "a cat"})
    assert req.inputs == "a cat"
    assert req.parameters.seed is None and req.parameters.adapters is None


def test_full_body() -> None:
    body = {
        "inputs": "a cat",
        "parameters": {
            "num_inference_steps": 2,
            "guidance_scale": 5.0,
            "negative_prompt": "blurry",
            "width": 64,
            "height": 128,
            "seed": 2**63 - 1,
            "lora_scale": 0.5,
            "adapters": [{"id": "tiny/sdxl-lora-a", "scale": 0.7}, {"id": "tiny/sdxl-lora-b"}],
        },
    }
    params = InferenceRequest.model_validate(body).parameters
    assert params.adapters is not None and params.adapters[1].scale == 1.0
    assert (params.width, params.height, params.seed) == (64, 128, 2**63 - 1)


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"inputs": ""},
        {"inputs": "   "},
        {"inputs": 3},
        {"inputs": ["a"]},
        {"inputs": "x" * (MAX_PROMPT_CHARS + 1)},
        {"inputs": "a", "extra": 1},
        {"inputs": "a", "parameters": {"num_inference_steps": 0}},
        {"inputs": "a", "parameters": {"num_inference_steps": 151}},
        {"inputs": "a", "parameters": {"num_inference_steps": "many"}},
        {"inputs": "a", "parameters": {"guidance_scale": -1}},
        {"inputs": "a", "parameters": {"guidance_scale": 31}},
        {"inputs": "a", "parameters": {"guidance_scale": float("nan")}},
        {"inputs": "a", "parameters": {"width": 63}},
        {"inputs": "a", "parameters": {"width": 100}},
        {"inputs": "a", "parameters": {"height": 4096}},
        {"inputs": "a", "parameters": {"seed": -1}},
        {"inputs": "a", "parameters": {"seed": 2**63}},
        {"inputs": "a", "parameters": {"lora_scale": 5}},
        {"inputs": "a", "parameters": {"unknown": 1}},
        {"inputs": "a", "parameters": {"adapters": [{"id": "a/b", "scale": 9}]}},
        {"inputs": "a", "parameters": {"adapters": [{"id": ""}]}},
        {"inputs": "a", "parameters": {"adapters": [{"id": f"a/b{i}"} for i in range(MAX_ADAPTERS + 1)]}},
        {"inputs": "a", "parameters": {"negative_prompt": "x" * (MAX_PROMPT_CHARS + 1)}},
    ],
)
def test_invalid_bodies(body: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        InferenceRequest.model_validate(body)


def test_job_round_trips_through_stream_fields() -> None:
    ref = AdapterRef(repo_id="tiny/a", revision="a" * 40, scale=0.5, weight_name="w.safetensors", size=3)
    job = Job(pool="tiny/sdxl-base", adapters=[ref], prompt="p", seed=7, format="png", deadline=5.0)
    fields = {k.encode(): v.encode() for k, v in job.to_fields().items()}
    assert Job.from_fields(fields) == job
    assert Job.from_fields(job.to_fields()) == job  # type: ignore[arg-type]
    assert ref.key == f"tiny/a@{'a' * 40}"
    with pytest.raises(ValueError):
        Job.from_fields({b"other": b"x"})


def test_job_ids_are_unique() -> None:
    assert len({Job(pool="p", prompt="x", seed=1).id for _ in range(100)}) == 100


def test_result_status_and_worker_state_round_trip() -> None:
    result = JobResult(job_id="j", status="failed", error="e", error_type="adapter_corrupt")
    assert JobResult.model_validate_json(result.model_dump_json()) == result
    status = JobStatus(job_id="j", state="running", step=1, steps=2)
    assert JobStatus.model_validate_json(status.model_dump_json()) == status
    state = WorkerState(worker_id="w", pool="p", fused=["a@1"], cached=["a@1", "b@2"])
    assert WorkerState.loads(state.dumps()) == state
    assert WorkerState.loads(state.dumps().encode()) == state


def test_adapter_set_key_names_adapters_at_their_strengths_in_any_order() -> None:
    a = AdapterRef(repo_id="u/a", revision="1")
    b = AdapterRef(repo_id="u/b", revision="2", scale=0.3)
    assert adapter_set_key([]) is None
    assert adapter_set_key([a]) == "u/a@1"
    assert adapter_set_key([a, b]) == adapter_set_key([b, a]) == "u/a@1+u/b@2*0.3"
    half = a.model_copy(update={"scale": 0.5})
    assert adapter_set_key([half]) != adapter_set_key([a])
    nearly = a.model_copy(update={"scale": 0.5 + 1e-12})
    assert adapter_set_key([nearly]) != adapter_set_key([half])
