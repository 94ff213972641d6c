"""The devhub against the real huggingface_hub client and real diffusers pipelines, on loopback."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import FluxPipeline, StableDiffusionPipeline, StableDiffusionXLPipeline
from huggingface_hub import HfApi, hf_hub_download, snapshot_download
from huggingface_hub.errors import (
    DisabledRepoError,
    GatedRepoError,
    LocalEntryNotFoundError,
    RemoteEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from safetensors import safe_open
from safetensors.torch import load_file

from devhub.repo import RepoStore
from devhub.zoo import build_many_loras, build_zoo
from lorafarm.farm import free_port, wait_port
from tests.conftest import ROOT, stop
from worker.pipeline import download_base
from worker.settings import WorkerSettings

TOKEN = "devhub-test-token"
WEIGHTS = "pytorch_lora_weights.safetensors"
GOOD_SDXL_LORAS = [
    "tiny/sdxl-lora-diffusers",
    "tiny/sdxl-lora-peft",
    "tiny/sdxl-lora-kohya",
    "tiny/sdxl-lora-kohya-sgm",
    "tiny/sdxl-lora-listbase",
    "tiny/sdxl-lora-pivotal",
    "tiny/sdxl-lora-rank32",
    "tiny/sdxl-lora-a",
    "tiny/sdxl-lora-b",
    "tiny/sdxl-lora-c",
    "tiny/sdxl-lora-huge",
]


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread() -> Iterator[None]:
    """On a shared 2-core machine, torch's default threads spin against each other: 0.1 s becomes 5 s."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def own_devhub(zoo_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """A devhub with a configured token whose request log the tests read. Yields (url, log path)."""
    port = free_port()
    log = tmp_path_factory.mktemp("devhub-log") / "devhub.log"
    cmd = [
        sys.executable,
        "-m",
        "devhub",
        "serve",
        "--root",
        str(zoo_dir),
        "--port",
        str(port),
        "--token",
        TOKEN,
    ]
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
    wait_port(port, proc)
    yield f"http://127.0.0.1:{port}", log
    stop(proc)


def requests_in(log: Path) -> list[str]:
    return [line.split("event=request ", 1)[1] for line in log.read_text().splitlines() if "event=request" in line]


def generate(pipe: StableDiffusionXLPipeline | StableDiffusionPipeline, prompt: str = "a cat") -> np.ndarray:
    image = pipe(prompt, num_inference_steps=2, generator=torch.Generator().manual_seed(0)).images[0]
    return np.asarray(image).astype(np.float32)


@pytest.fixture(scope="module")
def sdxl(devhub_url: str, tmp_path_factory: pytest.TempPathFactory) -> StableDiffusionXLPipeline:
    """tiny/sdxl-base, fetched through the devhub with snapshot_download."""
    cache = tmp_path_factory.mktemp("hf-sdxl")
    folder = snapshot_download("tiny/sdxl-base", endpoint=devhub_url, cache_dir=cache, token=False)
    pipe = StableDiffusionXLPipeline.from_pretrained(folder)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_model_info_shows_card_flags_and_sizes(devhub_url: str, zoo_dir: Path) -> None:
    api = HfApi(endpoint=devhub_url, token=False)
    info = api.model_info("tiny/sdxl-lora-peft", files_metadata=True)
    assert {"lora", "diffusers", "text-to-image"} <= set(info.tags)
    assert info.card_data.base_model == "tiny/sdxl-base"
    assert len(info.sha) == 40 and int(info.sha, 16) >= 0
    assert info.gated is False and info.private is False
    sizes = {s.rfilename: s.size for s in info.siblings}
    assert sizes == {p: (zoo_dir / "tiny/sdxl-lora-peft" / p).stat().st_size for p in ("README.md", WEIGHTS)}
    weights = next(s for s in info.siblings if s.rfilename == WEIGHTS)
    assert weights.lfs is not None and len(weights.lfs.sha256) == 64

    assert api.model_info("tiny/sdxl-lora-listbase").card_data.base_model == ["tiny/sdxl-base"]
    base = api.model_info("tiny/sdxl-base")
    assert base.pipeline_tag == "text-to-image" and base.library_name == "diffusers" and "lora" not in base.tags
    assert api.model_info("tiny/sdxl-lora-gated").gated == "manual"  # metadata is visible, files are not
    assert api.model_info("tiny/sdxl-lora-pivotal").card_data.instance_prompt == "a photo of <s0><s1>"
    huge = api.model_info("tiny/sdxl-lora-huge", files_metadata=True)
    assert next(s.size for s in huge.siblings if s.rfilename == WEIGHTS) >= 4 * 1024 * 1024
    assert not any(s.rfilename.startswith(".") for s in huge.siblings)  # the flags file stays hidden
    assert api.model_info("tiny/sdxl-base", revision=base.sha).sha == base.sha


def test_download_is_cached_and_by_sha_needs_no_request(own_devhub: tuple[str, Path], hf_cache: Path) -> None:
    url, log = own_devhub
    kw = {"endpoint": url, "cache_dir": hf_cache, "token": False}
    before = len(requests_in(log))
    path = hf_hub_download("tiny/sdxl-lora-a", WEIGHTS, **kw)
    assert load_file(path)  # a real safetensors file
    first = requests_in(log)[before:]
    assert [r.split()[0] for r in first] == ["method=HEAD", "method=GET"]

    assert hf_hub_download("tiny/sdxl-lora-a", WEIGHTS, **kw) == path
    second = requests_in(log)[before + len(first) :]
    assert [r.split()[0] for r in second] == ["method=HEAD"]

    sha = HfApi(endpoint=url, token=False).model_info("tiny/sdxl-lora-a").sha
    count = len(requests_in(log))
    assert (
        Path(hf_hub_download("tiny/sdxl-lora-a", WEIGHTS, revision=sha, **kw)).read_bytes() == Path(path).read_bytes()
    )
    assert len(requests_in(log)) == count  # cached and asked by commit sha: no request at all


def test_range_request_and_content_etag(own_devhub: tuple[str, Path], zoo_dir: Path) -> None:
    import httpx

    url, _ = own_devhub
    file_url = f"{url}/tiny/sdxl-base/resolve/main/unet/config.json"
    r = httpx.get(file_url, headers={"Range": "bytes=0-9", "Accept-Encoding": "gzip"})
    assert r.status_code == 206 and r.content == (zoo_dir / "tiny/sdxl-base/unet/config.json").read_bytes()[:10]
    assert "content-encoding" not in r.headers
    head = httpx.head(f"{url}/tiny/sdxl-lora-a/resolve/main/{WEIGHTS}")
    assert head.headers["x-linked-size"] == str((zoo_dir / "tiny/sdxl-lora-a" / WEIGHTS).stat().st_size)
    os.utime(zoo_dir / "tiny/sdxl-lora-a" / WEIGHTS)  # a new mtime is not a new content
    assert httpx.head(f"{url}/tiny/sdxl-lora-a/resolve/main/{WEIGHTS}").headers["etag"] == head.headers["etag"]


def test_snapshot_of_base_generates_64px_image(sdxl: StableDiffusionXLPipeline) -> None:
    image = sdxl("a cat", num_inference_steps=2).images[0]  # default size
    assert image.size == (64, 64)


def test_error_classes(devhub_url: str, hf_cache: Path) -> None:
    kw = {"endpoint": devhub_url, "cache_dir": hf_cache, "token": False}
    api = HfApi(endpoint=devhub_url, token=False)
    with pytest.raises(RepositoryNotFoundError) as missing:
        api.model_info("tiny/no-such-repo")
    assert not isinstance(missing.value, GatedRepoError)
    with pytest.raises(GatedRepoError):
        hf_hub_download("tiny/sdxl-lora-gated", WEIGHTS, **kw)
    with pytest.raises(RemoteEntryNotFoundError):
        hf_hub_download("tiny/sdxl-lora-a", "no-such-file.safetensors", **kw)
    with pytest.raises(RevisionNotFoundError):
        api.model_info("tiny/sdxl-lora-a", revision="v2")
    with pytest.raises(RevisionNotFoundError):
        hf_hub_download("tiny/sdxl-lora-a", WEIGHTS, revision="0" * 40, **kw)
    with pytest.raises(DisabledRepoError):
        api.model_info("tiny/sdxl-lora-disabled")
    # hf_hub_download only re-raises repo-not-found, gated and 401 errors of its HEAD call: a disabled
    # repo's file surfaces as LocalEntryNotFoundError caused by DisabledRepoError.
    with pytest.raises(LocalEntryNotFoundError) as disabled:
        hf_hub_download("tiny/sdxl-lora-disabled", WEIGHTS, **kw)
    assert isinstance(disabled.value.__cause__, DisabledRepoError)
    with pytest.raises(RemoteEntryNotFoundError):
        hf_hub_download("tiny/sdxl-lora-a", ".devhub.json", **kw)


def test_path_traversal_is_refused(devhub_url: str) -> None:
    import http.client

    port = int(devhub_url.rsplit(":", 1)[1])
    for path in (
        "/tiny/sdxl-lora-a/resolve/main/../sdxl-lora-private/README.md",
        "/tiny/sdxl-lora-a/resolve/main/%2e%2e/sdxl-lora-private/README.md",
        "/api/models/tiny/../tiny/sdxl-lora-a",
        "/api/models/tiny/sdxl-lora-a/tree/main/..",
    ):
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        conn.request("GET", path, headers={"Authorization": "Bearer x"})
        assert conn.getresponse().status == 404, path
        conn.close()


def test_private_repo_needs_the_token(own_devhub: tuple[str, Path], devhub_url: str, hf_cache: Path) -> None:
    url, _ = own_devhub
    with pytest.raises(RepositoryNotFoundError):
        HfApi(endpoint=url, token=False).model_info("tiny/sdxl-lora-private")
    with pytest.raises(RepositoryNotFoundError):
        HfApi(endpoint=url, token="wrong-token").model_info("tiny/sdxl-lora-private")
    assert HfApi(endpoint=url, token=TOKEN).model_info("tiny/sdxl-lora-private").private is True
    path = hf_hub_download("tiny/sdxl-lora-private", WEIGHTS, endpoint=url, cache_dir=hf_cache, token=TOKEN)
    assert load_file(path)
    # the token also opens gated repos; a wrong one does not
    with pytest.raises(GatedRepoError):
        hf_hub_download("tiny/sdxl-lora-gated", WEIGHTS, endpoint=url, cache_dir=hf_cache, token="wrong-token")
    assert hf_hub_download("tiny/sdxl-lora-gated", WEIGHTS, endpoint=url, cache_dir=hf_cache, token=TOKEN)
    # without --token, any bearer token is accepted
    assert HfApi(endpoint=devhub_url, token="anything").model_info("tiny/sdxl-lora-private").private is True


@pytest.mark.slow
def test_zoo_is_deterministic(zoo_dir: Path, tmp_path: Path) -> None:
    ids = build_zoo(tmp_path)
    first, second = RepoStore(zoo_dir), RepoStore(tmp_path)
    assert sorted(ids) == first.ids() == second.ids()
    assert len(ids) == 33
    for repo_id in ids:
        assert first.get(repo_id).sha == second.get(repo_id).sha, repo_id  # type: ignore[union-attr]


def test_kohya_file_has_both_text_encoders(zoo_dir: Path) -> None:
    with safe_open(zoo_dir / "tiny/sdxl-lora-kohya" / WEIGHTS, "pt") as f:
        keys = list(f.keys())
    for prefix in ("lora_unet_", "lora_te1_", "lora_te2_"):
        assert any(k.startswith(prefix) and k.endswith(".lora_up.weight") for k in keys), prefix
        assert any(k.startswith(prefix) and k.endswith(".alpha") for k in keys), prefix


def test_pickle_canary_fires_only_when_unpickled(zoo_dir: Path, tmp_path: Path) -> None:
    canary = tmp_path / "canary"
    code = "import pickle, sys; pickle.load(open(sys.argv[1], 'rb'))"
    env = {**os.environ, "LORAFARM_PICKLE_CANARY": str(canary)}
    path = zoo_dir / "tiny/sdxl-lora-pickle/pytorch_lora_weights.bin"
    assert not canary.exists()
    with pytest.raises(pickle.UnpicklingError):
        torch.load(path, weights_only=True)  # the safe loader refuses it
    assert not canary.exists()
    subprocess.run([sys.executable, "-c", code, str(path)], env=env, check=True)
    assert canary.read_text() == "unpickled"


@pytest.mark.parametrize("repo_id", GOOD_SDXL_LORAS)
def test_good_lora_changes_the_image(
    repo_id: str, sdxl: StableDiffusionXLPipeline, devhub_url: str, hf_cache: Path
) -> None:
    base = generate(sdxl)
    folder = snapshot_download(repo_id, endpoint=devhub_url, cache_dir=hf_cache, token=False)
    sdxl.load_lora_weights(folder)
    try:
        assert np.abs(generate(sdxl) - base).mean() > 3.0
    finally:
        sdxl.unload_lora_weights()
    assert np.array_equal(generate(sdxl), base)


def test_pivotal_embeddings_load_as_textual_inversion(
    sdxl: StableDiffusionXLPipeline, devhub_url: str, hf_cache: Path
) -> None:
    path = hf_hub_download(
        "tiny/sdxl-lora-pivotal",
        "embeddings.safetensors",
        endpoint=devhub_url,
        cache_dir=hf_cache,
        token=False,
    )
    emb = load_file(path)
    assert emb["clip_l"].shape == (2, sdxl.text_encoder.config.hidden_size)
    assert emb["clip_g"].shape == (2, sdxl.text_encoder_2.config.hidden_size)
    tokens = ["<s0>", "<s1>"]
    sdxl.load_textual_inversion(emb["clip_l"], token=tokens, text_encoder=sdxl.text_encoder, tokenizer=sdxl.tokenizer)
    sdxl.load_textual_inversion(
        emb["clip_g"], token=tokens, text_encoder=sdxl.text_encoder_2, tokenizer=sdxl.tokenizer_2
    )
    try:
        assert generate(sdxl, "a photo of <s0><s1>").shape == (64, 64, 3)
    finally:
        sdxl.unload_textual_inversion(tokens, tokenizer=sdxl.tokenizer, text_encoder=sdxl.text_encoder)
        sdxl.unload_textual_inversion(tokens, tokenizer=sdxl.tokenizer_2, text_encoder=sdxl.text_encoder_2)


def test_flux_base_downloads_with_its_t5_tokenizer_and_loads_offline(devhub_url: str, hf_cache: Path) -> None:
    settings = WorkerSettings(base="tiny/flux-base", hf_endpoint=devhub_url, hf_cache_dir=str(hf_cache))
    folder = Path(download_base(settings))  # the worker's own allow_patterns
    assert (folder / "tokenizer_2" / "tokenizer.json").exists()
    pipe = FluxPipeline.from_pretrained(folder)  # a local folder: nothing left to download
    pipe.set_progress_bar_config(disable=True)
    config = pipe.transformer.config
    assert (config.num_layers, config.num_single_layers, config.in_channels) == (2, 2, 64)
    assert config.guidance_embeds and pipe.vae.config.latent_channels == 16
    assert pipe.tokenizer_2("an elephant").input_ids[-1] == pipe.tokenizer_2.eos_token_id
    image = pipe("a cat", num_inference_steps=2, width=64, height=64, generator=torch.Generator().manual_seed(0))
    assert image.images[0].size == (64, 64)


def test_sd15_lora_changes_the_image(devhub_url: str, hf_cache: Path) -> None:
    folder = snapshot_download("tiny/sd15-base", endpoint=devhub_url, cache_dir=hf_cache, token=False)
    pipe = StableDiffusionPipeline.from_pretrained(folder)
    pipe.set_progress_bar_config(disable=True)
    base = generate(pipe)
    assert base.shape == (64, 64, 3)
    pipe.load_lora_weights(snapshot_download("tiny/sd15-lora", endpoint=devhub_url, cache_dir=hf_cache, token=False))
    assert np.abs(generate(pipe) - base).mean() > 3.0


@pytest.mark.slow
def test_swap_loras_differ_from_each_other(sdxl: StableDiffusionXLPipeline, zoo_dir: Path) -> None:
    images = []
    for name in ("a", "b", "c"):
        sdxl.load_lora_weights(zoo_dir / f"tiny/sdxl-lora-{name}")
        images.append(generate(sdxl))
        sdxl.unload_lora_weights()
    assert all(np.abs(x - y).mean() > 3.0 for i, x in enumerate(images) for y in images[i + 1 :])


def test_alphas_are_read_from_peft_metadata_and_kohya_keys(sdxl: StableDiffusionXLPipeline, zoo_dir: Path) -> None:
    sdxl.load_lora_weights(zoo_dir / "tiny/sdxl-lora-peft", adapter_name="peft")
    sdxl.load_lora_weights(zoo_dir / "tiny/sdxl-lora-kohya", adapter_name="kohya")
    try:
        assert (sdxl.unet.peft_config["peft"].r, sdxl.unet.peft_config["peft"].lora_alpha) == (4, 8)
        assert (sdxl.unet.peft_config["kohya"].r, sdxl.unet.peft_config["kohya"].lora_alpha) == (4, 2)
        assert "kohya" in sdxl.text_encoder.peft_config and "kohya" in sdxl.text_encoder_2.peft_config
    finally:
        sdxl.unload_lora_weights()


def test_many_loras_are_distinct(tmp_path: Path) -> None:
    ids = build_many_loras(tmp_path, 3)
    assert ids == ["tiny/sdxl-lora-000", "tiny/sdxl-lora-001", "tiny/sdxl-lora-002"]
    store = RepoStore(tmp_path)
    shas = {store.get(i).sha for i in ids}  # type: ignore[union-attr]
    assert len(shas) == 3
    assert store.get(ids[0]).card["base_model"] == "tiny/sdxl-base"  # type: ignore[union-attr]
