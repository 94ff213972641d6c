"""Adapters ready to apply: download (Hub disk cache), parse, stage, keep in a host LRU, prefetch."""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

from huggingface_hub import errors as hf_errors
from huggingface_hub import hf_hub_download

from common import errors
from common.schemas import AdapterRef
from worker.adapter import LoraLayer, ParsedAdapter, read_adapter
from worker.cache import ByteLRU
from worker.engine import SwapEngine
from worker.settings import WorkerSettings

log = logging.getLogger(__name__)


class AdapterStore:
    """Gets parsed adapters by ``repo@sha``: from host memory, else from the Hub (or its disk cache)."""

    def __init__(self, settings: WorkerSettings, *, engine: SwapEngine) -> None:
        self._settings = settings
        self._engine = engine
        self.cache: ByteLRU[str, ParsedAdapter] = ByteLRU(settings.host_cache_bytes, size_of=lambda a: a.nbytes)
        self._lock = threading.Lock()
        self._inflight: dict[str, Future[ParsedAdapter]] = {}
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="prefetch")
        #: Smoothed seconds to download, parse and stage an adapter (None until the first).
        self.fetch_s: float | None = None

    def get(self, ref: AdapterRef) -> ParsedAdapter:
        """The parsed, staged adapter; waits for a prefetch of it already under way."""
        cached = self.cache.get(ref.key)
        if cached is not None:
            return cached
        with self._lock:
            future = self._inflight.get(ref.key)
        if future is not None:
            return future.result()
        return self._load(ref)

    def prefetch(self, ref: AdapterRef) -> None:
        """Start fetching and parsing ``ref`` in the background, unless held or under way."""
        if ref.key in self.cache:
            return
        with self._lock:
            if ref.key in self._inflight:
                return
            future = self._pool.submit(self._load, ref)
            self._inflight[ref.key] = future
        future.add_done_callback(lambda _f: self._forget(ref.key))

    def holds(self) -> list[str]:
        return list(self.cache.keys())

    def to_host(self) -> None:
        """Move every held adapter to host memory, once its base has left the device (the swap
        that next applies one moves it back). Nothing to do when they are there already."""
        for key in list(self.cache):  # least recently used first: re-put in the same order
            adapter = self.cache.pop(key)
            if adapter is not None:
                self.cache.put(key, on_host(adapter))

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    def _forget(self, key: str) -> None:
        with self._lock:
            self._inflight.pop(key, None)

    def _load(self, ref: AdapterRef) -> ParsedAdapter:
        start = time.perf_counter()
        weights = fetch_file(self._settings, ref, ref.weight_name)
        embeddings = fetch_file(self._settings, ref, ref.embeddings_name) if ref.embeddings_name else None
        parsed = read_adapter(
            weights,
            key=ref.key,
            embeddings=embeddings,
            max_bytes=self._settings.max_adapter_bytes,
            max_rank=self._settings.max_rank,
            family=self._engine.family,
            denoiser_config=self._engine.denoiser_config,
        )
        parsed = self._engine.stage(parsed)
        self.cache.put(ref.key, parsed)
        seconds = time.perf_counter() - start
        self.fetch_s = seconds if self.fetch_s is None else 0.7 * self.fetch_s + 0.3 * seconds
        log.info("event=adapter_loaded adapter=%s bytes=%d", ref.key, parsed.nbytes)
        return parsed


def on_host(adapter: ParsedAdapter) -> ParsedAdapter:
    """The adapter with its tensors in host memory, same dtypes (the same tensors if there already)."""
    layers = {t: LoraLayer(layer.down.cpu(), layer.up.cpu(), layer.scale) for t, layer in adapter.layers.items()}
    embeddings = {c: rows.cpu() for c, rows in adapter.embeddings.items()} if adapter.embeddings else None
    return replace(adapter, layers=layers, embeddings=embeddings)


def fetch_file(settings: WorkerSettings, ref: AdapterRef, filename: str | None) -> Path:
    """One adapter file of ``ref``, downloaded or from the disk cache: safetensors only, size capped."""
    if not filename or not filename.endswith(".safetensors"):
        raise errors.UnsafeAdapterFormat(f"{ref.repo_id} has no .safetensors weights; other formats are never loaded")
    if ref.size is not None and ref.size > settings.max_adapter_bytes:
        raise errors.AdapterTooLarge(f"{ref.repo_id}: {ref.size} bytes is over the cap of {settings.max_adapter_bytes}")
    try:
        return Path(
            hf_hub_download(
                ref.repo_id,
                filename,
                revision=ref.revision,
                endpoint=settings.hf_endpoint,
                cache_dir=settings.hf_cache_dir,
                token=settings.hf_token,
            )
        )
    except hf_errors.LocalEntryNotFoundError as exc:
        if isinstance(exc.__cause__, hf_errors.DisabledRepoError):
            raise errors.DisabledRepo(f"{ref.repo_id} is disabled") from exc
        # Not in the disk cache and the Hub cannot be reached.
        raise errors.HubUnavailable(f"the Hub cannot be reached to fetch {ref.repo_id}", retry_after=5) from exc
    except hf_errors.GatedRepoError as exc:
        raise errors.GatedRepo(f"{ref.repo_id} is gated") from exc
    except hf_errors.DisabledRepoError as exc:
        raise errors.DisabledRepo(f"{ref.repo_id} is disabled") from exc
    except hf_errors.RepositoryNotFoundError as exc:
        raise errors.RepoNotFound(f"{ref.repo_id} was not found") from exc
    except (hf_errors.EntryNotFoundError, hf_errors.RevisionNotFoundError) as exc:
        raise errors.RepoNotFound(f"{ref.repo_id}@{ref.revision} has no file {filename}") from exc
    except hf_errors.HfHubHTTPError as exc:
        raise errors.HubUnavailable(f"the Hub failed to serve {ref.repo_id}", retry_after=5) from exc
