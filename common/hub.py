"""Hub metadata: what a repo is (a LoRA for a served base, a served base, or neither) and where it goes.

``classify`` is the pure decision over a ``RepoInfo``; ``HubResolver`` fetches ``RepoInfo``
with ``huggingface_hub`` (in a thread, with a timeout), caches it by repo id with a TTL, and
serves a stale answer when the Hub cannot be reached (stale-if-error).
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from common import errors
from common.schemas import AdapterRef

log = logging.getLogger(__name__)

#: The file diffusers' ``save_lora_weights`` writes, preferred when a repo holds several.
LORA_WEIGHT_NAME = "pytorch_lora_weights.safetensors"
#: Pivotal-tuning embeddings saved beside the LoRA by diffusers' advanced training scripts.
EMBEDDINGS_NAME = "embeddings.safetensors"
_NOT_WEIGHTS = ("optimizer", "scheduler", "checkpoint", "embeddings")
_PART = r"[A-Za-z0-9](?:[A-Za-z0-9._-]{0,94}[A-Za-z0-9])?"
_REPO_ID = re.compile(rf"{_PART}/{_PART}")


def validate_repo_id(repo_id: str) -> str:
    """``org/name`` with the Hub's characters, each part at most 96 long; else ``InvalidRequest``."""
    if not _REPO_ID.fullmatch(repo_id) or ".." in repo_id or "--" in repo_id:
        shown = repo_id if len(repo_id) <= 200 else repo_id[:200] + "..."
        raise errors.InvalidRequest(
            f"invalid repo id {shown!r}: expected org/name (letters, digits, '-', '_', '.'; "
            "no '..' or '--'; each part 1 to 96 characters)"
        )
    return repo_id


#: The one URL form of a repo a ``loras`` path may take: the Hub's page of the repo, nothing more.
_HUB_PAGE = re.compile(rf"https://huggingface\.co/({_PART}/{_PART})/?")


def repo_of_path(path: str, *, where: str = "path") -> str:
    """The repo id a ``loras`` path names: a repo id, or ``https://huggingface.co/<org>/<name>[/]``.

    The path names a repo to resolve on the configured Hub; it is never fetched. Anything else
    (another host or scheme, userinfo, a port, a query, a file inside the repo, percent-escapes)
    is refused with ``InvalidRequest``: the match is on the whole string, so no parser's reading
    of an odd URL can differ from this one.
    """
    page = _HUB_PAGE.fullmatch(path)
    if page is not None:
        return validate_repo_id(page.group(1))
    if "://" in path or ":" in path or path.startswith("/"):
        shown = path if len(path) <= 120 else path[:120] + "..."
        raise errors.InvalidRequest(
            f"{where}: {shown!r} is neither a repo id nor https://huggingface.co/<org>/<name> "
            "(no other host, file link or address is fetched)"
        )
    return validate_repo_id(path)


@dataclass(frozen=True)
class FileInfo:
    """One file of a repo and its size in bytes (None when the Hub did not say)."""

    name: str
    size: int | None = None


@dataclass(frozen=True)
class RepoInfo:
    """What lorafarm needs of a Hub model repo."""

    id: str
    sha: str
    tags: tuple[str, ...] = ()
    base_model: str | tuple[str, ...] | None = None
    pipeline_tag: str | None = None
    library_name: str | None = None
    gated: bool | str = False
    private: bool = False
    disabled: bool = False
    files: tuple[FileInfo, ...] = ()

    @classmethod
    def from_model_info(cls, info: Any) -> RepoInfo:
        """Build from ``huggingface_hub.ModelInfo`` (ask with ``files_metadata=True`` for sizes)."""
        base = getattr(info.card_data, "base_model", None)
        files = tuple(
            FileInfo(s.rfilename, s.size if s.size is not None else (s.lfs.size if s.lfs else None))
            for s in info.siblings or ()
        )
        return cls(
            id=info.id,
            sha=info.sha or "",
            tags=tuple(info.tags or ()),
            base_model=tuple(base) if isinstance(base, list) else base,
            pipeline_tag=info.pipeline_tag,
            library_name=info.library_name,
            gated=info.gated or False,
            private=bool(info.private),
            disabled=bool(info.disabled),
            files=files,
        )

    def bases(self) -> list[str]:
        """Declared base models: card data first, else the Hub's ``base_model:`` tags."""
        if isinstance(self.base_model, str):
            return [self.base_model]
        if self.base_model:
            return [b for b in self.base_model if isinstance(b, str)]
        out = []
        for tag in self.tags:
            if tag.startswith("base_model:adapter:"):
                out.append(tag.removeprefix("base_model:adapter:"))
        if not out:
            out = [
                t.removeprefix("base_model:") for t in self.tags if t.count(":") == 1 and t.startswith("base_model:")
            ]
        return out


@dataclass(frozen=True)
class Destination:
    """Where a repo's jobs go: ``pool`` (preferred) of ``pools`` (every served base it fits)."""

    kind: Literal["lora", "base"]
    pool: str
    pools: tuple[str, ...]
    adapter: AdapterRef | None = None


def _served_match(name: str, served: Sequence[str]) -> str | None:
    # Hub ids are case-insensitive; the pool keeps the operator's spelling.
    lowered = name.lower()
    return next((s for s in served if s.lower() == lowered), None)


def pick_weight(files: Sequence[FileInfo]) -> FileInfo:
    """The ``.safetensors`` file holding the LoRA; ``UnsafeAdapterFormat`` when there is none."""
    tensors = [f for f in files if f.name.endswith(".safetensors")]
    preferred = [f for f in tensors if f.name == LORA_WEIGHT_NAME]
    if preferred:
        return preferred[0]
    # Like diffusers' own guess: skip training leftovers and pivotal-tuning embeddings; root files first.
    candidates = [f for f in tensors if not any(word in f.name.lower() for word in _NOT_WEIGHTS)]
    candidates.sort(key=lambda f: (f.name.count("/"), f.name))
    if not candidates:
        raise errors.UnsafeAdapterFormat("the adapter ships no .safetensors weights (pickle files are never loaded)")
    return candidates[0]


def classify(
    info: RepoInfo,
    served: Sequence[str],
    *,
    allow_gated: bool = False,
    allow_private: bool = False,
    max_adapter_bytes: int | None = None,
) -> Destination:
    """Decide what the repo is and which pool serves it, or raise the ``ModelError``/``AdapterError`` why not.

    ``served`` is in order of preference: a LoRA declaring several bases goes to the first served one.
    """
    if info.disabled:
        raise errors.DisabledRepo(f"{info.id} is disabled on the Hub")
    if info.gated and not allow_gated:
        raise errors.GatedRepo(f"{info.id} is gated; gated repos are not served here")
    if info.private and not allow_private:
        raise errors.PrivateRepo(f"{info.id} is private; private repos are not served here")
    served_list = ", ".join(served) or "none"
    base = _served_match(info.id, served)
    if base is not None:
        return Destination(kind="base", pool=base, pools=(base,))
    if "lora" in (t.lower() for t in info.tags):
        declared = info.bases()
        if not declared:
            raise errors.UnsupportedModel(f"{info.id} is tagged lora but declares no base_model")
        pools = tuple(p for p in served if any(p.lower() == b.lower() for b in declared))
        if not pools:
            wanted = ", ".join(declared)
            raise errors.BaseNotServed(
                f"{info.id} is a LoRA for {wanted}, which is not served here; served: {served_list}"
            )
        weight = pick_weight(info.files)
        if max_adapter_bytes is not None and weight.size is not None and weight.size > max_adapter_bytes:
            raise errors.AdapterTooLarge(
                f"{info.id}: {weight.name} is {weight.size} bytes, over the {max_adapter_bytes}-byte cap"
            )
        names = {f.name for f in info.files}
        ref = AdapterRef(
            repo_id=info.id,
            revision=info.sha,
            weight_name=weight.name,
            embeddings_name=EMBEDDINGS_NAME if EMBEDDINGS_NAME in names else None,
            size=weight.size,
        )
        return Destination(kind="lora", pool=pools[0], pools=pools, adapter=ref)
    if info.pipeline_tag == "text-to-image":
        raise errors.BaseNotServed(f"{info.id} is a text-to-image model not served here; served: {served_list}")
    raise errors.UnsupportedModel(
        f"{info.id} is neither a LoRA (tag 'lora' with a base_model) nor a text-to-image base served here; "
        f"served: {served_list}"
    )


# --- fetching and caching -----------------------------------------------------------------


def hub_fetcher(endpoint: str, token: str | None, timeout_s: float) -> Callable[[str], RepoInfo]:
    """A blocking ``repo_id -> RepoInfo`` over ``huggingface_hub``, raising lorafarm errors."""
    import httpx2
    from huggingface_hub import HfApi
    from huggingface_hub import errors as hf

    # token=False: never send a token found on the machine when the operator configured none.
    api = HfApi(endpoint=endpoint, token=token or False)

    def fetch(repo_id: str) -> RepoInfo:
        try:
            info = api.model_info(repo_id, files_metadata=True, timeout=timeout_s)
        except hf.GatedRepoError as exc:  # a subclass of RepositoryNotFoundError: first
            raise errors.GatedRepo(f"{repo_id} is gated and the configured token has no access") from exc
        except (hf.RepositoryNotFoundError, hf.RevisionNotFoundError) as exc:
            raise errors.RepoNotFound(f"no model repo {repo_id} on the Hub") from exc
        except hf.DisabledRepoError as exc:
            raise errors.DisabledRepo(f"{repo_id} is disabled on the Hub") from exc
        except hf.HfHubHTTPError as exc:
            code = exc.response.status_code if exc.response is not None else 0
            if code in (400, 401, 403, 404):
                raise errors.RepoNotFound(f"no model repo {repo_id} on the Hub") from exc
            raise errors.HubUnavailable(f"the Hub answered {code}") from exc
        except (httpx2.TransportError, hf.OfflineModeIsEnabled, OSError) as exc:
            raise errors.HubUnavailable("the Hub cannot be reached") from exc
        except hf.HFValidationError as exc:
            raise errors.InvalidRequest(f"invalid repo id {repo_id!r}") from exc
        return RepoInfo.from_model_info(info)

    return fetch


@dataclass
class _Entry:
    info: RepoInfo | None
    error: errors.ModelError | None
    expires: float


#: Errors that describe the repo itself: remembered (briefly) like an answer.
_DEFINITIVE = (errors.RepoNotFound, errors.GatedRepo, errors.PrivateRepo, errors.DisabledRepo)


class HubResolver:
    """Resolves repo ids to destinations: TTL cache by repo id, one Hub call per id at a time, stale-if-error."""

    def __init__(
        self,
        fetch: Callable[[str], RepoInfo],
        *,
        served: Sequence[str],
        allow_gated: bool = False,
        allow_private: bool = False,
        max_adapter_bytes: int | None = None,
        ttl_s: float = 300.0,
        negative_ttl_s: float = 30.0,
        timeout_s: float = 10.0,
        backoff_s: float = 5.0,
        max_entries: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.fetch = fetch
        self.served = list(served)
        self.allow_gated = allow_gated
        self.allow_private = allow_private
        self.max_adapter_bytes = max_adapter_bytes
        self.ttl_s = ttl_s
        self.negative_ttl_s = min(negative_ttl_s, ttl_s)
        self.timeout_s = timeout_s
        self.backoff_s = backoff_s
        self.max_entries = max_entries
        self.clock = clock
        self._cache: OrderedDict[str, _Entry] = OrderedDict()
        self._inflight: dict[str, asyncio.Future[RepoInfo]] = {}
        self._down_until = 0.0

    async def resolve(self, repo_id: str, *, prefer: Sequence[str] = ()) -> Destination:
        """The destination of ``repo_id``; a served base needs no Hub call. ``prefer`` reorders the pools."""
        served = [*(p for p in prefer if p in self.served), *(p for p in self.served if p not in prefer)]
        base = _served_match(repo_id, served)
        if base is not None:
            return Destination(kind="base", pool=base, pools=(base,))
        info = await self.info(repo_id)
        return classify(
            info,
            served,
            allow_gated=self.allow_gated,
            allow_private=self.allow_private,
            max_adapter_bytes=self.max_adapter_bytes,
        )

    async def info(self, repo_id: str) -> RepoInfo:
        """The repo's metadata, from the cache while fresh, from the Hub otherwise."""
        key = repo_id.lower()
        entry = self._cache.get(key)
        now = self.clock()
        if entry is not None and (entry.expires > now or now < self._down_until):
            self._cache.move_to_end(key)
            return self._answer(entry)
        if now < self._down_until:
            raise self._unavailable()
        future = self._inflight.get(key)
        if future is None:
            future = asyncio.ensure_future(self._refresh(key, repo_id))
            self._inflight[key] = future
            future.add_done_callback(lambda f: self._settled(key, f))
        return await asyncio.shield(future)

    async def _refresh(self, key: str, repo_id: str) -> RepoInfo:
        try:
            # The thread is bounded by the client's own timeout; wait_for bounds the wait for it.
            info = await asyncio.wait_for(asyncio.to_thread(self.fetch, repo_id), self.timeout_s + 1)
        except _DEFINITIVE as exc:
            self._store(key, _Entry(None, exc, self.clock() + self.negative_ttl_s))
            raise
        except (errors.HubUnavailable, TimeoutError) as exc:
            self._down_until = self.clock() + self.backoff_s
            stale = self._cache.get(key)
            if stale is not None:
                log.warning("event=hub_stale repo=%s error=%s", repo_id, type(exc).__name__)
                return self._answer(stale)
            log.warning("event=hub_unavailable repo=%s error=%s", repo_id, type(exc).__name__)
            raise self._unavailable() from exc
        self._store(key, _Entry(info, None, self.clock() + self.ttl_s))
        return info

    def _settled(self, key: str, future: asyncio.Future[RepoInfo]) -> None:
        self._inflight.pop(key, None)
        if not future.cancelled():
            future.exception()  # retrieved: no "never retrieved" warning when every waiter left

    def _store(self, key: str, entry: _Entry) -> None:
        self._cache[key] = entry
        self._cache.move_to_end(key)
        while len(self._cache) > self.max_entries:
            self._cache.popitem(last=False)

    def _answer(self, entry: _Entry) -> RepoInfo:
        if entry.error is not None:
            raise type(entry.error)(entry.error.message)
        assert entry.info is not None
        return entry.info

    def _unavailable(self) -> errors.HubUnavailable:
        return errors.HubUnavailable("the Hub cannot be reached; try again shortly", retry_after=self.backoff_s)
