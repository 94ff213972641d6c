"""The swap engine: put a set of adapters on a warm pipeline, exactly and in one pass.

Fused: each targeted weight is written as ``W0 + sum(scale_i * up_i @ down_i)`` straight from its
pristine copy (one ``addmm`` into the weight), so inference runs at base speed. Unfused: weights
stay at ``W0`` and a forward hook adds the low-rank terms (only the small matrices are swapped).
Weights the new set does not touch are copied back from their pristine copy; nothing is ever
subtracted, so ``restore()`` returns the base bit-exact whatever came before. When the pristine
budget has no room for the copies a set needs fused, that set is applied unfused instead.

Every write is in place (same tensors, same addresses), which is what keeps a compiled denoiser
valid across swaps (``worker.compiled``). For such a denoiser, ``fixed`` gives its usual LoRA
targets permanent fixed-shape unfused paths (``worker.lowrank.PaddedPath``); an unfused set
that does not fit them is applied fused instead, or refused, by ``FixedRank.overflow``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal

import torch

from common.errors import AdapterIncompatible, InvalidRequest
from worker.adapter import LoraLayer, ParsedAdapter, adapter_nbytes, validate, weight_of
from worker.families import pipeline_family
from worker.fusion import FusedWriter, compute_dtype
from worker.lowrank import FixedRank, LowRankPath, PaddedPath, Term, misfit
from worker.naming import target_name
from worker.pristine import PristineFull, PristinePolicy, PristineStore
from worker.tokens import PivotalTokens

log = logging.getLogger(__name__)

Mode = Literal["fused", "unfused"]
_MEMO = 1024  # adapter sets remembered as too big to fuse
#: Per target: which adapters at which effective scale; equal signatures mean an equal weight.
Signature = tuple[tuple[str, float], ...]


@dataclass(frozen=True)
class SwapReport:
    """What one ``apply`` or ``restore`` did."""

    changed: bool
    seconds: float
    mode: Mode
    touched: int  # weights written or restored, plus low-rank paths set or removed


@dataclass(frozen=True)
class ActiveSet:
    """The adapters on the base now, as (key, strength) in a canonical order, and how they are applied."""

    mode: Mode = "fused"
    adapters: tuple[tuple[str, float], ...] = ()

    @property
    def keys(self) -> list[str]:
        return [key for key, _ in self.adapters]


def target_modules(pipe: Any, components: Sequence[str]) -> dict[str, torch.nn.Module]:
    """Every Linear/Conv2d an adapter may target, by canonical name ``<component>.<module path>``."""
    found: dict[str, torch.nn.Module] = {}
    for component in components:
        model = getattr(pipe, component, None)
        if not isinstance(model, torch.nn.Module):
            continue
        for name, module in model.named_modules():
            if isinstance(module, torch.nn.Linear | torch.nn.Conv2d):
                found[target_name(component, name)] = module
    return found


class SwapEngine:
    """Applies and removes adapters on one loaded pipeline; see the module docstring.

    ``pristine``: where the copies of touched weights live: ``device`` (fastest), ``host`` (pinned
    memory on a GPU machine), or ``auto`` (the device while it keeps ``headroom_bytes`` free);
    host copies stay within ``host_bytes`` (``None``: no cap). ``fixed``: fixed-shape unfused paths
    on the denoiser, for a compiled one (see the module docstring).
    """

    def __init__(
        self,
        pipe: Any,
        *,
        pristine: PristinePolicy = "auto",
        headroom_bytes: int = 2 << 30,
        host_bytes: int | None = None,
        fixed: FixedRank | None = None,
    ) -> None:
        self.pipe = pipe
        self.family = pipeline_family(type(pipe))
        self.modules = target_modules(pipe, self.family.components)
        self._pristine = PristineStore(pristine, headroom_bytes=headroom_bytes, host_bytes=host_bytes)
        self._too_big: set[tuple[tuple[str, float], ...]] = set()
        self._tokens = PivotalTokens(pipe)
        self._writer = FusedWriter()
        self._fused: dict[str, Signature] = {}
        self._paths: dict[str, tuple[Signature, LowRankPath | PaddedPath]] = {}
        self._active = ActiveSet()
        self._lock = threading.Lock()
        self.fixed = fixed
        self._padded = self._padded_paths(fixed) if fixed is not None else {}

    def _padded_paths(self, fixed: FixedRank) -> dict[str, PaddedPath]:
        denoiser = f"{self.family.denoiser}."
        return {
            target: PaddedPath(module, fixed.rank, compute_dtype(weight_of(module)))
            for target, module in self.modules.items()
            if target.startswith(denoiser) and target.endswith(fixed.targets)
        }

    @property
    def active(self) -> ActiveSet:
        return self._active

    @property
    def denoiser_config(self) -> Any:
        """The config of the base's denoiser (a UNet's maps kohya files with Stability block names)."""
        return getattr(self.pipe, self.family.denoiser).config

    @property
    def pristine_bytes(self) -> int:
        """Bytes of pristine copies held (device and host together)."""
        return self._pristine.nbytes

    @property
    def padded_bytes(self) -> int:
        """Bytes of the fixed-shape unfused factors (allocated once, for a compiled denoiser)."""
        return sum(path.nbytes for path in self._padded.values())

    @property
    def padded_targets(self) -> list[str]:
        """The denoiser modules with fixed-shape unfused factors."""
        return sorted(self._padded)

    def pristine_tiers(self) -> dict[str, int]:
        """Bytes of pristine copies held per tier: ``device`` and ``host``."""
        return {"device": self._pristine.device_nbytes, "host": self._pristine.host_nbytes}

    def validate(self, adapter: ParsedAdapter) -> None:
        """Raise AdapterIncompatible unless the adapter fits this base; touches nothing."""
        validate(adapter, self.modules)
        self._tokens.check([adapter])

    def stage(self, adapter: ParsedAdapter) -> ParsedAdapter:
        """Validate and move the adapter's tensors to its targets' device and dtype (safe off-thread)."""
        self.validate(adapter)
        return self._moved(adapter)

    def _moved(self, adapter: ParsedAdapter) -> ParsedAdapter:
        layers: dict[str, LoraLayer] = {}
        for target, layer in adapter.layers.items():
            weight = weight_of(self.modules[target])
            # A base off the device (warm or cold: multi-base workers) has host tensors here.
            down = layer.down.to(device=weight.device, dtype=compute_dtype(weight))
            layers[target] = LoraLayer(down, layer.up.to(down), layer.scale)
        embeddings = None
        if adapter.embeddings is not None:
            embeddings = {
                component: rows.to(getattr(self.pipe, component).get_input_embeddings().weight)
                for component, rows in adapter.embeddings.items()
            }
        return replace(adapter, layers=layers, embeddings=embeddings, nbytes=adapter_nbytes(layers, embeddings))

    def apply(self, adapters: Sequence[tuple[ParsedAdapter, float]], mode: Mode = "fused") -> SwapReport:
        """Make exactly these adapters, at these strengths, active; nothing happens if they already are."""
        start = time.perf_counter()
        if mode not in ("fused", "unfused"):
            raise ValueError(f"mode must be fused or unfused, not {mode!r}")
        wanted = ActiveSet(mode if adapters else "fused", tuple(sorted((a.key, float(s)) for a, s in adapters)))
        if wanted.mode == "fused" and wanted.adapters in self._too_big:
            wanted = replace(wanted, mode="unfused")
        with self._lock:
            if wanted == self._active:
                return SwapReport(False, time.perf_counter() - start, wanted.mode, 0)
            if len({key for key, _ in wanted.adapters}) != len(wanted.adapters):
                raise InvalidRequest("an adapter is listed twice")
            for adapter, _ in adapters:
                validate(adapter, self.modules)
            self._tokens.check([a for a, _ in adapters])
            wanted = self._fit(wanted, adapters)
            if wanted == self._active:
                return SwapReport(False, time.perf_counter() - start, wanted.mode, 0)
            staged = [(self._moved(a), float(s)) for a, s in adapters]
            plan = _plan(staged)
            try:
                try:
                    touched = self._switch(plan, wanted.mode)
                except PristineFull as exc:
                    wanted = self._unfuse_instead(wanted, exc)
                    self._fit(wanted, adapters)
                    touched = self._switch(plan, "unfused")
                self._tokens.set([a for a, _ in staged])
            except BaseException:
                self._reset()
                raise
            self._active = wanted
            _sync()
        return SwapReport(True, time.perf_counter() - start, wanted.mode, touched)

    def _unfuse_instead(self, wanted: ActiveSet, exc: PristineFull) -> ActiveSet:
        """No room for the copies this set needs fused: back to the plain base, to go unfused."""
        log.warning("event=pristine_full adapters=%s mode=unfused reason=%s", "+".join(wanted.keys), exc)
        self._reset()
        if len(self._too_big) >= _MEMO:
            self._too_big.clear()
        self._too_big.add(wanted.adapters)
        return replace(wanted, mode="unfused")

    def _fit(self, wanted: ActiveSet, adapters: Sequence[tuple[ParsedAdapter, float]]) -> ActiveSet:
        """An unfused set that does not fit the fixed paths: fused instead, or refused (``fixed.overflow``)."""
        if wanted.mode != "unfused" or self.fixed is None:
            return wanted
        ranks: dict[str, int] = {}
        for adapter, _ in adapters:
            for target, layer in adapter.layers.items():
                ranks[target] = ranks.get(target, 0) + layer.rank
        reason = misfit(ranks, self._padded, self.fixed.rank, compiled=(self.family.denoiser,))
        if reason is None:
            return wanted
        if self.fixed.overflow == "refuse" or wanted.adapters in self._too_big:
            fused = "; fused, its pristine copies are over the budget" if wanted.adapters in self._too_big else ""
            raise AdapterIncompatible(
                f"{'+'.join(wanted.keys)}: cannot be applied unfused on this compiled worker: {reason}{fused} "
                "(LORAFARM_COMPILE_UNFUSED_RANK, LORAFARM_COMPILE_UNFUSED_TARGETS)"
            )
        log.info("event=unfused_overflow adapters=%s mode=fused reason=%s", "+".join(wanted.keys), reason)
        return replace(wanted, mode="fused")

    def restore(self) -> SwapReport:
        """Return the base to bit-exact: every weight from its pristine copy, hooks and tokens removed."""
        return self.apply([])

    def leave_device(self) -> int:
        """The base is restored and about to leave the device (a multi-base worker switches):
        drop the pristine copies held there. Returns the bytes freed."""
        with self._lock:
            if self._active.adapters:
                raise RuntimeError("restore the base before it leaves the device")
            return self._pristine.drop_device()

    def _switch(self, plan: dict[str, tuple[Signature, list[Term]]], mode: Mode) -> int:
        touched = 0
        fused_plan = plan if mode == "fused" else {}
        unfused_plan = plan if mode == "unfused" else {}
        for target in [t for t in self._paths if t not in unfused_plan]:
            self._paths.pop(target)[1].remove()
            touched += 1
        for target in [t for t in self._fused if t not in fused_plan]:
            self._pristine.restore(target, weight_of(self.modules[target]))
            del self._fused[target]
            touched += 1
        protect = {*fused_plan, *self._fused}  # copies that must outlive this switch
        with torch.no_grad():
            for target, (signature, terms) in fused_plan.items():
                if self._fused.get(target) != signature:
                    weight = weight_of(self.modules[target])
                    base = self._pristine.keep(target, weight, protect=protect)
                    self._fused[target] = ()  # restored by _reset if the write fails midway
                    self._writer.write(weight, base, terms)
                    self._fused[target] = signature
                    touched += 1
        for target, (signature, terms) in unfused_plan.items():
            current = self._paths.get(target)
            if current is None or current[0] != signature:
                path = current[1] if current is not None else self._path(target)
                path.set(terms)
                self._paths[target] = (signature, path)
                touched += 1
        return touched

    def _path(self, target: str) -> LowRankPath | PaddedPath:
        return self._padded.get(target) or LowRankPath(self.modules[target])

    def _reset(self) -> None:
        """Back to the plain base after a failure; every step here is a copy or a removal."""
        for _, path in self._paths.values():
            path.remove()
        self._paths.clear()
        for target in self._fused:
            self._pristine.restore(target, weight_of(self.modules[target]))
        self._fused.clear()
        self._tokens.clear()
        self._active = ActiveSet()


def _plan(staged: Sequence[tuple[ParsedAdapter, float]]) -> dict[str, tuple[Signature, list[Term]]]:
    """Per target: its signature and its (down, up, strength * alpha/rank) terms."""
    plan: dict[str, tuple[Signature, list[Term]]] = {}
    for adapter, strength in staged:
        for target, layer in adapter.layers.items():
            signature, terms = plan.get(target, ((), []))
            scale = strength * layer.scale
            plan[target] = ((*signature, (adapter.key, scale)), [*terms, (layer.down, layer.up, scale)])
    return plan


def _sync() -> None:
    # so that SwapReport.seconds is the real cost on a GPU, not the launch time
    if torch.cuda.is_initialized():
        torch.cuda.synchronize()
