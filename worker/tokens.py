"""Pivotal-tuning tokens: added to the tokenizers and text encoders with their adapter, removed with it.

The base embedding matrix and the tokenizer's backend are never written: adding tokens swaps in a
copy of each (the base rows plus the new ones), removing them puts the originals back, so the base
stays bit-exact. Same effect as diffusers' ``load_textual_inversion`` without its mean-resizing
(random draws from the global RNG and a covariance over the whole vocabulary on every load).
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from common.errors import AdapterIncompatible
from worker.adapter import ParsedAdapter
from worker.naming import tokenizer_of


@dataclass
class _Base:
    """What a text encoder and its tokenizer looked like before any token was added."""

    embedding: torch.nn.Embedding
    weight: torch.nn.Parameter
    num_embeddings: int
    vocab_size: int | None
    backend: Any


class PivotalTokens:
    """The pivotal tokens currently added to one pipeline, by adapter key."""

    def __init__(self, pipe: Any) -> None:
        self.pipe = pipe
        self._base: dict[str, _Base] = {}
        self._loaded: tuple[str, ...] = ()
        self._lock = threading.RLock()  # a prefetch thread may check while the job thread swaps

    @property
    def loaded(self) -> tuple[str, ...]:
        """Keys of the adapters whose tokens are in the tokenizers now."""
        return self._loaded

    def check(self, adapters: Sequence[ParsedAdapter]) -> None:
        """Raise AdapterIncompatible unless all these adapters' tokens can be added together."""
        with self._lock:
            self._check(adapters)

    def _check(self, adapters: Sequence[ParsedAdapter]) -> None:
        seen: dict[str, str] = {}
        for adapter in adapters:
            for component, rows in (adapter.embeddings or {}).items():
                encoder = getattr(self.pipe, component, None)
                tokenizer = getattr(self.pipe, tokenizer_of(component), None)
                if encoder is None or tokenizer is None or not hasattr(tokenizer, "_tokenizer"):
                    raise AdapterIncompatible(f"{adapter.key}: the base cannot take tokens for {component}")
                width = self._base_embedding(component).embedding_dim
                if rows.shape[-1] != width:
                    raise AdapterIncompatible(f"{adapter.key}: {component} embeddings are not {width} wide")
                vocab = self._base_vocab(component)
                for token in adapter.tokens:
                    other = seen.get(f"{component}/{token}")
                    if token in vocab or (other is not None and other != adapter.key):
                        raise AdapterIncompatible(f"{adapter.key}: token {token} is already taken")
                    seen[f"{component}/{token}"] = adapter.key

    def set(self, adapters: Sequence[ParsedAdapter]) -> bool:
        """Make exactly these adapters' tokens present; True when anything changed."""
        wanted = tuple(a.key for a in adapters if a.embeddings)
        with self._lock:
            if wanted == self._loaded:
                return False
            self.clear()
            for adapter in adapters:
                for component, rows in (adapter.embeddings or {}).items():
                    self._add(component, adapter.tokens, rows)
            self._loaded = wanted
            return True

    def clear(self) -> None:
        """Remove every added token; the base matrices and tokenizers come back as they were."""
        with self._lock:
            for component, base in self._base.items():
                encoder = getattr(self.pipe, component)
                base.embedding.weight = base.weight
                base.embedding.num_embeddings = base.num_embeddings
                encoder.set_input_embeddings(base.embedding)
                if base.vocab_size is not None:
                    encoder.config.vocab_size = base.vocab_size
                getattr(self.pipe, tokenizer_of(component))._tokenizer = base.backend
            self._base.clear()
            self._loaded = ()

    def _base_embedding(self, component: str) -> torch.nn.Embedding:
        base = self._base.get(component)
        embedding = getattr(self.pipe, component).get_input_embeddings()
        return base.embedding if base is not None else embedding

    def _base_vocab(self, component: str) -> dict[str, int]:
        base = self._base.get(component)
        tokenizer = getattr(self.pipe, tokenizer_of(component))
        backend = base.backend if base is not None else tokenizer._tokenizer
        return dict(backend.get_vocab(with_added_tokens=True))

    def _add(self, component: str, tokens: Sequence[str], rows: torch.Tensor) -> None:
        from tokenizers import Tokenizer

        encoder = getattr(self.pipe, component)
        tokenizer = getattr(self.pipe, tokenizer_of(component))
        embedding = encoder.get_input_embeddings()
        if component not in self._base:
            backend = tokenizer._tokenizer
            self._base[component] = _Base(
                embedding,
                embedding.weight,
                embedding.num_embeddings,
                getattr(encoder.config, "vocab_size", None),
                backend,
            )
            tokenizer._tokenizer = Tokenizer.from_str(backend.to_str())  # a copy; the original stays clean
        tokenizer.add_tokens(list(tokens))
        ids = tokenizer.convert_tokens_to_ids(list(tokens))
        old = embedding.weight.detach()
        weight = old.new_zeros((max(old.shape[0], max(ids) + 1), old.shape[1]))
        weight[: old.shape[0]] = old
        weight[ids] = rows.to(old)
        embedding.weight = torch.nn.Parameter(weight, requires_grad=False)
        embedding.num_embeddings = weight.shape[0]
        encoder.config.vocab_size = weight.shape[0]
