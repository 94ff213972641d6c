"""Metadata classification (pure), repo id validation, and the resolver's cache on a scripted fetcher."""

from __future__ import annotations

import asyncio
import threading
from types import SimpleNamespace

import pytest

from common import errors
from common.hub import FileInfo, HubResolver, RepoInfo, classify, pick_weight, validate_repo_id

SERVED = ["tiny/sdxl-base", "tiny/sd15-base"]
SHA = "0123456789abcdef0123456789abcdef01234567"
WEIGHTS = FileInfo("pytorch_lora_weights.safetensors", 1000)


def lora(**kw: object) -> RepoInfo:
    fields: dict[str, object] = {
        "id": "tiny/sdxl-lora-diffusers",
        "sha": SHA,
        "tags": ("text-to-image", "diffusers", "lora"),
        "base_model": "tiny/sdxl-base",
        "pipeline_tag": "text-to-image",
        "library_name": "diffusers",
        "files": (FileInfo("README.md", 10), WEIGHTS),
    }
    fields.update(kw)
    return RepoInfo(**fields)  # type: ignore[arg-type]


# --- classify ---------------------------------------------------------------------------


def test_lora_goes_to_its_base_pool_pinned_to_its_sha() -> None:
    dest = classify(lora(), SERVED)
    assert (dest.kind, dest.pool, dest.pools) == ("lora", "tiny/sdxl-base", ("tiny/sdxl-base",))
    assert dest.adapter is not None
    assert dest.adapter.repo_id == "tiny/sdxl-lora-diffusers"
    assert dest.adapter.revision == SHA
    assert dest.adapter.weight_name == "pytorch_lora_weights.safetensors"
    assert dest.adapter.size == 1000
    assert dest.adapter.embeddings_name is None


def test_served_base_runs_plain() -> None:
    base = RepoInfo(id="tiny/sd15-base", sha=SHA, tags=("diffusers", "text-to-image"), pipeline_tag="text-to-image")
    dest = classify(base, SERVED)
    assert (dest.kind, dest.pool, dest.adapter) == ("base", "tiny/sd15-base", None)


def test_base_match_ignores_case_and_keeps_the_pool_spelling() -> None:
    assert classify(RepoInfo(id="Tiny/SDXL-Base", sha=SHA), SERVED).pool == "tiny/sdxl-base"
    assert classify(lora(base_model="TINY/sd15-base"), SERVED).pool == "tiny/sd15-base"


def test_list_base_model_picks_the_first_served_in_preference_order() -> None:
    info = lora(base_model=("someone/other", "tiny/sd15-base", "tiny/sdxl-base"))
    assert classify(info, SERVED).pools == ("tiny/sdxl-base", "tiny/sd15-base")
    assert classify(info, SERVED).pool == "tiny/sdxl-base"
    assert classify(info, list(reversed(SERVED))).pool == "tiny/sd15-base"


def test_base_model_from_hub_tags_when_the_card_has_none() -> None:
    tags = ("lora", "base_model:tiny/sd15-base", "base_model:adapter:tiny/sdxl-base")
    assert classify(lora(base_model=None, tags=tags), SERVED).pool == "tiny/sdxl-base"
    assert classify(lora(base_model=None, tags=("lora", "base_model:tiny/sd15-base")), SERVED).pool == "tiny/sd15-base"


def test_lora_without_base_model_is_unsupported() -> None:
    with pytest.raises(errors.UnsupportedModel, match="base_model"):
        classify(lora(base_model=None), SERVED)


def test_unserved_base_lists_what_is_served() -> None:
    with pytest.raises(errors.BaseNotServed) as info:
        classify(lora(base_model="someone/unserved-base"), SERVED)
    assert "someone/unserved-base" in info.value.message
    assert "tiny/sdxl-base, tiny/sd15-base" in info.value.message


def test_text_to_image_base_not_served() -> None:
    other = RepoInfo(id="someone/other-base", sha=SHA, pipeline_tag="text-to-image", tags=("diffusers",))
    with pytest.raises(errors.BaseNotServed, match="served: tiny/sdxl-base"):
        classify(other, SERVED)


def test_neither_lora_nor_pipeline_is_unsupported() -> None:
    bert = RepoInfo(id="tiny/not-a-pipeline", sha=SHA, pipeline_tag="text-classification", tags=("transformers",))
    with pytest.raises(errors.UnsupportedModel, match="neither"):
        classify(bert, SERVED)


@pytest.mark.parametrize(
    ("flags", "error"),
    [
        ({"gated": "manual"}, errors.GatedRepo),
        ({"gated": "auto"}, errors.GatedRepo),
        ({"private": True}, errors.PrivateRepo),
        ({"disabled": True}, errors.DisabledRepo),
        ({"disabled": True, "gated": "manual", "private": True}, errors.DisabledRepo),
    ],
)
def test_refused_repos(flags: dict[str, object], error: type[errors.LorafarmError]) -> None:
    with pytest.raises(error):
        classify(lora(**flags), SERVED)


def test_gated_and_private_served_when_allowed() -> None:
    info = lora(gated="manual", private=True)
    assert classify(info, SERVED, allow_gated=True, allow_private=True).kind == "lora"
    with pytest.raises(errors.PrivateRepo):
        classify(info, SERVED, allow_gated=True)
    with pytest.raises(errors.DisabledRepo):
        classify(lora(disabled=True), SERVED, allow_gated=True, allow_private=True)


def test_gated_base_is_refused_too() -> None:
    with pytest.raises(errors.GatedRepo):
        classify(RepoInfo(id="tiny/sdxl-base", sha=SHA, gated="manual"), SERVED)


def test_pickle_only_is_unsafe() -> None:
    with pytest.raises(errors.UnsafeAdapterFormat, match="safetensors"):
        classify(lora(files=(FileInfo("pytorch_lora_weights.bin", 10),)), SERVED)


def test_size_cap_from_metadata() -> None:
    big = lora(files=(FileInfo("pytorch_lora_weights.safetensors", 5 * 2**20),))
    with pytest.raises(errors.AdapterTooLarge, match="5242880"):
        classify(big, SERVED, max_adapter_bytes=4 * 2**20)
    assert classify(big, SERVED, max_adapter_bytes=5 * 2**20).kind == "lora"  # at the cap is fine
    unknown = lora(files=(FileInfo("pytorch_lora_weights.safetensors", None),))
    assert classify(unknown, SERVED, max_adapter_bytes=1).kind == "lora"  # the worker checks again


def test_pivotal_embeddings_ride_along() -> None:
    info = lora(files=(FileInfo("embeddings.safetensors", 10), WEIGHTS))
    adapter = classify(info, SERVED).adapter
    assert adapter is not None
    assert (adapter.weight_name, adapter.embeddings_name) == (WEIGHTS.name, "embeddings.safetensors")


@pytest.mark.parametrize(
    ("names", "chosen"),
    [
        (["my_lora.safetensors"], "my_lora.safetensors"),
        (["b.safetensors", "a.safetensors"], "a.safetensors"),
        (["sub/a.safetensors", "z.safetensors"], "z.safetensors"),
        (["a.safetensors", "pytorch_lora_weights.safetensors"], "pytorch_lora_weights.safetensors"),
        (["optimizer.safetensors", "lora.safetensors"], "lora.safetensors"),
        (["model.bin", "lora.safetensors"], "lora.safetensors"),
    ],
)
def test_pick_weight(names: list[str], chosen: str) -> None:
    assert pick_weight([FileInfo(n) for n in names]).name == chosen


@pytest.mark.parametrize("names", [[], ["README.md"], ["embeddings.safetensors"], ["lora.ckpt", "lora.pt"]])
def test_pick_weight_refuses(names: list[str]) -> None:
    with pytest.raises(errors.UnsafeAdapterFormat):
        pick_weight([FileInfo(n) for n in names])


def test_from_model_info() -> None:
    sibling = SimpleNamespace(rfilename="pytorch_lora_weights.safetensors", size=None, lfs=SimpleNamespace(size=77))
    info = SimpleNamespace(
        id="tiny/x",
        sha=SHA,
        tags=["lora"],
        card_data=SimpleNamespace(base_model=["tiny/sdxl-base"]),
        pipeline_tag="text-to-image",
        library_name="diffusers",
        gated=False,
        private=None,
        disabled=None,
        siblings=[sibling, SimpleNamespace(rfilename="README.md", size=5, lfs=None)],
    )
    repo = RepoInfo.from_model_info(info)
    assert repo.base_model == ("tiny/sdxl-base",)
    assert repo.files == (FileInfo("pytorch_lora_weights.safetensors", 77), FileInfo("README.md", 5))
    assert (repo.private, repo.disabled, repo.gated) == (False, False, False)


# --- repo ids ---------------------------------------------------------------------------


@pytest.mark.parametrize("repo_id", ["tiny/sdxl-base", "a/b", "Org_1/name.v2-x", "a" * 96 + "/" + "b" * 96])
def test_valid_repo_ids(repo_id: str) -> None:
    assert validate_repo_id(repo_id) == repo_id


@pytest.mark.parametrize(
    "repo_id",
    [
        "",
        "gpt2",
        "a/b/c",
        "../etc",
        "a/..",
        "a/b..c",
        "a/-b",
        "a/b-",
        "a/.b",
        "a/b--c",
        "a /b",
        "a/b%2Fc",
        "a/b?x=1",
        "a\\b",
        "a" * 97 + "/b",
        "a/" + "b" * 97,
        "é/b",
        "a/b\n",
    ],
)
def test_invalid_repo_ids(repo_id: str) -> None:
    with pytest.raises(errors.InvalidRequest):
        validate_repo_id(repo_id)


# --- the resolver's cache, on a scripted fetcher ------------------------------------------


class Hub:
    """A fetcher whose answers the test scripts: a RepoInfo, or an error to raise."""

    def __init__(self) -> None:
        self.answers: dict[str, RepoInfo | Exception] = {"tiny/sdxl-lora-diffusers": lora()}
        self.calls: list[str] = []
        self.gate = threading.Event()
        self.gate.set()

    def __call__(self, repo_id: str) -> RepoInfo:
        self.calls.append(repo_id)
        self.gate.wait(5)
        answer = self.answers.get(repo_id, errors.RepoNotFound(f"no {repo_id}"))
        if isinstance(answer, Exception):
            raise answer
        return answer


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def resolver(hub: Hub, clock: Clock, **kw: object) -> HubResolver:
    return HubResolver(hub, served=SERVED, ttl_s=300, clock=clock, **kw)  # type: ignore[arg-type]


def test_cache_hit_within_ttl_and_refetch_after() -> None:
    hub, clock = Hub(), Clock()
    r = resolver(hub, clock)
    assert asyncio.run(r.resolve("tiny/sdxl-lora-diffusers")).kind == "lora"
    clock.now += 299
    asyncio.run(r.resolve("tiny/sdxl-lora-diffusers"))
    assert hub.calls == ["tiny/sdxl-lora-diffusers"]
    clock.now += 2
    hub.answers["tiny/sdxl-lora-diffusers"] = lora(sha="f" * 40)
    dest = asyncio.run(r.resolve("tiny/sdxl-lora-diffusers"))
    assert dest.adapter is not None and dest.adapter.revision == "f" * 40  # a new commit is picked up
    assert len(hub.calls) == 2


def test_served_base_needs_no_hub_call() -> None:
    hub = Hub()
    dest = asyncio.run(resolver(hub, Clock()).resolve("tiny/sd15-base"))
    assert (dest.kind, dest.pool, hub.calls) == ("base", "tiny/sd15-base", [])


def test_prefer_reorders_pools() -> None:
    hub = Hub()
    hub.answers["tiny/both"] = lora(id="tiny/both", base_model=("tiny/sdxl-base", "tiny/sd15-base"))
    r = resolver(hub, Clock())
    assert asyncio.run(r.resolve("tiny/both")).pool == "tiny/sdxl-base"
    assert asyncio.run(r.resolve("tiny/both", prefer=["tiny/sd15-base"])).pool == "tiny/sd15-base"


def test_stale_if_error_then_unavailable_for_unknown() -> None:
    hub, clock = Hub(), Clock()
    r = resolver(hub, clock, backoff_s=5)
    asyncio.run(r.resolve("tiny/sdxl-lora-diffusers"))
    clock.now += 10_000  # long expired
    hub.answers["tiny/sdxl-lora-diffusers"] = errors.HubUnavailable("down")
    dest = asyncio.run(r.resolve("tiny/sdxl-lora-diffusers"))
    assert dest.adapter is not None and dest.adapter.revision == SHA  # the stale answer serves
    with pytest.raises(errors.HubUnavailable) as info:
        asyncio.run(r.resolve("tiny/never-seen"))
    assert info.value.retry_after == 5
    calls = len(hub.calls)
    asyncio.run(r.resolve("tiny/sdxl-lora-diffusers"))  # within the backoff: no Hub call at all
    assert len(hub.calls) == calls
    clock.now += 6
    hub.answers["tiny/sdxl-lora-diffusers"] = lora(sha="e" * 40)
    dest = asyncio.run(r.resolve("tiny/sdxl-lora-diffusers"))
    assert dest.adapter is not None and dest.adapter.revision == "e" * 40


def test_hub_timeout_is_unavailable() -> None:
    hub, clock = Hub(), Clock()
    hub.gate.clear()  # the Hub hangs
    r = resolver(hub, clock, timeout_s=0.05)

    async def main() -> None:
        try:
            with pytest.raises(errors.HubUnavailable):
                await r.resolve("tiny/sdxl-lora-diffusers")
        finally:
            hub.gate.set()  # let the abandoned thread end

    asyncio.run(main())


def test_not_found_is_remembered_briefly() -> None:
    hub, clock = Hub(), Clock()
    r = resolver(hub, clock, negative_ttl_s=30)
    for _ in range(3):
        with pytest.raises(errors.RepoNotFound):
            asyncio.run(r.resolve("tiny/nope"))
    assert hub.calls == ["tiny/nope"]
    clock.now += 31
    with pytest.raises(errors.RepoNotFound):
        asyncio.run(r.resolve("tiny/nope"))
    assert len(hub.calls) == 2


def test_concurrent_resolves_share_one_hub_call() -> None:
    hub = Hub()
    hub.gate.clear()
    r = resolver(hub, Clock())

    async def main() -> list[str]:
        tasks = [asyncio.create_task(r.resolve("tiny/sdxl-lora-diffusers")) for _ in range(20)]
        await asyncio.sleep(0.05)
        hub.gate.set()
        return [dest.pool for dest in await asyncio.gather(*tasks)]

    assert asyncio.run(main()) == ["tiny/sdxl-base"] * 20
    assert hub.calls == ["tiny/sdxl-lora-diffusers"]


def test_classification_uses_settings() -> None:
    hub = Hub()
    hub.answers["tiny/g"] = lora(id="tiny/g", gated="manual")
    with pytest.raises(errors.GatedRepo):
        asyncio.run(resolver(hub, Clock()).resolve("tiny/g"))
    assert asyncio.run(resolver(hub, Clock(), allow_gated=True).resolve("tiny/g")).kind == "lora"
    with pytest.raises(errors.AdapterTooLarge):
        asyncio.run(resolver(hub, Clock(), max_adapter_bytes=10).resolve("tiny/sdxl-lora-diffusers"))
