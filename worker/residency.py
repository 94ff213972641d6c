"""The weights of one loaded pipeline, moved between the device, pinned host memory and the disk.

A base's modules stay the same objects whatever tier holds their weights: a move rebinds each
parameter's and buffer's ``.data`` (so shared parameters stay shared, and the swap engine's
module references stay valid). A warm base's modules hold its host copies; a cold base's hold
one-element placeholders of the right shape and dtype (an adapter can still be checked against
them) and are read again from the files the pipeline was loaded from, in the Hub's disk cache:
never from the Hub, never re-parsed (the pipeline object and its configs are kept).

On CUDA the host copies are pinned and every copy is ``non_blocking``, synchronised once per
move. On a CPU, "device" and "host" are the same memory: the device copy is a second tensor and
a switch is a memory copy, not a PCIe transfer. Tensors the files do not hold under their own
name (a tied or non-persistent one) are kept in host memory when the base goes cold.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open


@dataclass
class _Tensor:
    """One parameter or buffer of the pipeline, and where its copies are."""

    module: torch.nn.Module
    name: str
    param: bool
    shape: torch.Size
    dtype: torch.dtype
    host: torch.Tensor | None
    #: ``<component>.<module path>.<name>``, as the component's files name it.
    key: str
    #: The file and key its value is read from when the base is cold; None: kept in host memory.
    disk: tuple[Path, str] | None = None


class BaseWeights:
    """Every tensor of one pipeline's modules, and which tier holds it (see the module docstring).

    Built right after the pipeline is loaded into host memory: those tensors become the host
    copies (pinned on CUDA when ``pin``). Nothing is on the device until :meth:`load_warm`.
    """

    def __init__(self, pipe: Any, device: str, *, pin: bool = False) -> None:
        self.device = torch.device(device)
        self._pin = pin and self.device.type == "cuda"
        self._tensors = list(_collect(pipe))
        self.on_device = False
        self.has_host = True
        #: Files read for cold loads (each counted once per load): a warm switch reads none.
        self.disk_reads = 0
        folder = Path(pipe.name_or_path) if getattr(pipe, "name_or_path", None) else None
        self._files = _index_files(folder, pipe, self._tensors) if folder else set()
        for t in self._tensors:
            if self._pin:
                t.host = _current(t).pin_memory()
                _bind(t, t.host)

    @property
    def nbytes(self) -> int:
        """Bytes of all the base's tensors (one copy)."""
        return sum(_nbytes(t) for t in self._tensors)

    @property
    def disk_bytes(self) -> int:
        """Bytes of the files a cold load reads."""
        return sum(f.stat().st_size for f in self._files)

    def load_warm(self) -> None:
        """Host to device: a copy of every tensor from its host copy."""
        for t in self._tensors:
            assert t.host is not None, "load_warm needs the host copies"
            _bind(t, self._to_device(t.host))
        self._finish(on_device=True)

    def to_host(self) -> None:
        """Device to host: new (pinned) host copies, then the device copies are freed."""
        for t in self._tensors:
            t.host = self._host_copy(_current(t))
            _bind(t, t.host)
        self._finish(on_device=False, has_host=True)

    def free_device(self) -> None:
        """Free the device copies; the host copies (which must be held) stay bound."""
        for t in self._tensors:
            assert t.host is not None, "free_device needs the host copies"
            _bind(t, t.host)
        self._finish(on_device=False)

    def to_disk(self) -> None:
        """Free the device copies without a host copy: the base is cold (read again when needed)."""
        for t in self._tensors:
            if t.disk is None:
                t.host = t.host if t.host is not None else self._host_copy(_current(t))
                _bind(t, t.host)
            else:
                t.host = None
                _bind(t, torch.zeros((), dtype=t.dtype).expand(t.shape))
        self._finish(on_device=False, has_host=False)

    def drop_host(self) -> None:
        """Free the host copies (those a cold base needs, of tensors no file holds, stay)."""
        for t in self._tensors:
            if self.on_device or t.disk is not None:
                t.host = None
                if not self.on_device:
                    _bind(t, torch.zeros((), dtype=t.dtype).expand(t.shape))
        self.has_host = False

    def load_cold(self, *, keep_host: bool) -> None:
        """Disk to device: every file read once; with ``keep_host`` the host copies are kept too."""
        by_file: dict[Path, list[_Tensor]] = {}
        for t in self._tensors:
            if t.disk is not None:
                by_file.setdefault(t.disk[0], []).append(t)
        for path, tensors in by_file.items():
            self.disk_reads += 1
            with safe_open(str(path), framework="pt", device="cpu") as f:
                for t in tensors:
                    assert t.disk is not None
                    value = f.get_tensor(t.disk[1]).to(t.dtype)
                    t.host = self._host_copy(value) if keep_host else None
                    _bind(t, self._to_device(t.host if t.host is not None else value))
        for t in self._tensors:
            if t.disk is None:
                assert t.host is not None
                _bind(t, self._to_device(t.host))
        self._finish(on_device=True, has_host=keep_host)

    def matches_host(self) -> bool:
        """Every tensor bound now equals its host copy, where it has one (a check for benchmarks)."""
        return all(torch.equal(_current(t).cpu(), t.host) for t in self._tensors if t.host is not None)

    def _to_device(self, host: torch.Tensor) -> torch.Tensor:
        out = torch.empty(host.shape, dtype=host.dtype, device=self.device)
        out.copy_(host, non_blocking=self._pin)
        return out

    def _host_copy(self, value: torch.Tensor) -> torch.Tensor:
        out = torch.empty(value.shape, dtype=value.dtype, pin_memory=self._pin)
        out.copy_(value, non_blocking=self._pin)
        return out

    def _finish(self, *, on_device: bool, has_host: bool | None = None) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.on_device = on_device
        if has_host is not None:
            self.has_host = has_host


def _collect(pipe: Any) -> list[_Tensor]:
    """Every parameter and buffer of the pipeline's modules, each once (shared ones included once)."""
    seen: set[int] = set()
    out: list[_Tensor] = []
    for component, model in pipe.components.items():
        if not isinstance(model, torch.nn.Module):
            continue
        for prefix, module in model.named_modules():
            for kind, tensors in (("param", module._parameters), ("buffer", module._buffers)):
                for name, tensor in tensors.items():
                    if tensor is None or id(tensor) in seen:
                        continue
                    seen.add(id(tensor))
                    full = f"{component}.{prefix}.{name}" if prefix else f"{component}.{name}"
                    out.append(_Tensor(module, name, kind == "param", tensor.shape, tensor.dtype, tensor.data, full))
    return out


def _index_files(folder: Path, pipe: Any, tensors: list[_Tensor]) -> set[Path]:
    """Point each tensor at the component file holding it under its own name and shape; the
    others (tied, non-persistent, renamed on load) get no disk source. Returns the files used."""
    keys: dict[str, tuple[Path, tuple[int, ...]]] = {}
    for component in pipe.components:
        for path in sorted((folder / component).glob("*.safetensors")):
            with safe_open(str(path), framework="pt", device="cpu") as f:
                for key in f.keys():  # noqa: SIM118 (safe_open is no dict)
                    keys[f"{component}.{key}"] = (path, tuple(f.get_slice(key).get_shape()))
    used: set[Path] = set()
    for t in tensors:
        found = keys.get(t.key)
        if found is not None and found[1] == tuple(t.shape):
            t.disk = (found[0], t.key.split(".", 1)[1])
            used.add(found[0])
    return used


def _current(t: _Tensor) -> torch.Tensor:
    """The tensor bound on the module now."""
    tensor = t.module._parameters[t.name] if t.param else t.module._buffers[t.name]
    assert tensor is not None
    return tensor.data


def _bind(t: _Tensor, value: torch.Tensor) -> None:
    """Make ``value`` the data of the module's parameter or buffer (the Parameter object is kept)."""
    if t.param:
        param = t.module._parameters[t.name]
        assert param is not None
        param.data = value
    else:
        t.module._buffers[t.name] = value


def _nbytes(t: _Tensor) -> int:
    return t.shape.numel() * t.dtype.itemsize
