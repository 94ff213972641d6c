"""Where a worker's bases live: on the device, in pinned host memory, on disk. Pure bookkeeping, no torch.

A worker serving several bases keeps on the device those that fit (*active*: a job for them
starts at once), copies of others in pinned host memory (*warm*: a switch is one host-to-device
copy) and the rest only in the Hub's disk cache (*cold*: a switch reads their files again, never
the Hub). Each tier is a byte budget, not a count. When a base must come to the device and does
not fit beside the ones there, bases leave the device; when a host copy does not fit, copies
leave host memory. Both evictions follow GreedyDual (Young, 1994): LRU in which a base's credit,
each time it is used, is the tier's clock plus what it would cost to bring the base back
(measured), and the clock advances to each victim's credit. With equal costs it is plain LRU;
a base that is slow to reload stays longer.

The disk tier evicts nothing (a base leaving it would have to be downloaded again): bases whose
files do not fit its budget are refused at start, like a base larger than the device budget.

:meth:`Tiers.activate` returns the moves to carry out, in order (``worker/residency.py`` does the
copies, ``worker/bases.py`` calls both); the bookkeeping is updated as it plans.
"""

from __future__ import annotations

from collections.abc import Container
from dataclasses import dataclass
from typing import Literal

Tier = Literal["active", "warm", "cold"]
MoveKind = Literal["to_host", "free_device", "to_disk", "drop_host", "load_warm", "load_cold"]
SwitchKind = Literal["warm", "cold"]

#: Rates assumed until a switch has been measured, in bytes per second (estimates, not
#: measurements): host-to-device over PCIe 4.0 x16 from pinned memory, and a local NVMe read.
ASSUMED_H2D_BYTES_S = 25e9
ASSUMED_DISK_BYTES_S = 2e9
#: Weight of a new measurement in a base's switch costs (exponential average).
_COST_WEIGHT = 0.3


class BaseDoesNotFit(ValueError):
    """A base is larger than the device budget, or the bases' files exceed the disk budget."""


@dataclass(frozen=True)
class Budgets:
    """Bytes of base weights each tier may hold; ``None``: no cap."""

    device: int
    host: int | None = None
    disk: int | None = None


@dataclass(frozen=True)
class Move:
    """One step of a plan, for one base.

    ``to_host``: copy device to host, then free the device copy; ``free_device``: free the device
    copy (a host copy is held); ``to_disk``: free the device copy, no host copy (the base goes
    cold); ``drop_host``: free the host copy; ``load_warm``: host to device; ``load_cold``: disk to
    device, keeping a host copy when ``keep_host``.
    """

    base: str
    kind: MoveKind
    keep_host: bool = False


@dataclass
class _Base:
    name: str
    nbytes: int
    disk_bytes: int
    device: bool
    host: bool
    warm_s: float
    cold_s: float
    device_credit: float = 0.0
    host_credit: float = 0.0


class Tiers:
    """The bases of one worker and which tiers hold each (see the module docstring)."""

    def __init__(self, budgets: Budgets) -> None:
        self.budgets = budgets
        self._bases: dict[str, _Base] = {}
        self._device_clock = 0.0
        self._host_clock = 0.0

    def add(self, name: str, nbytes: int, *, disk_bytes: int) -> list[Move]:
        """Register a base just loaded into host memory, and bring it to the device.

        Raises :class:`BaseDoesNotFit` when it can never be active (larger than the device budget)
        or when the bases' files would exceed the disk budget.
        """
        if nbytes > self.budgets.device:
            raise BaseDoesNotFit(
                f"base {name} needs {nbytes} bytes on the device, over the device budget of "
                f"{self.budgets.device} bytes (LORAFARM_BASE_DEVICE_BYTES)"
            )
        on_disk = disk_bytes + sum(b.disk_bytes for b in self._bases.values())
        if self.budgets.disk is not None and on_disk > self.budgets.disk:
            raise BaseDoesNotFit(
                f"the files of this worker's bases take {on_disk} bytes with {name}, over the disk budget of "
                f"{self.budgets.disk} bytes (LORAFARM_BASE_DISK_BYTES)"
            )
        warm_s = nbytes / ASSUMED_H2D_BYTES_S
        self._bases[name] = _Base(
            name, nbytes, disk_bytes, False, True, warm_s, warm_s + disk_bytes / ASSUMED_DISK_BYTES_S
        )
        moves = self.activate(name)
        return moves + self._trim_host()

    def activate(self, name: str) -> list[Move]:
        """The moves that bring ``name`` to the device (none when it is there), evicting as needed."""
        base = self._bases[name]
        moves: list[Move] = []
        if not base.device:
            moves += self._make_device_room(base)
            if base.host:
                moves.append(Move(name, "load_warm"))
            else:
                # A copy of what is read is kept only in room that no warm base needs.
                dropped, keep = self._host_room(base, leaving_device=False, protect={name})
                moves += [*dropped, Move(name, "load_cold", keep_host=keep)]
                base.host = keep
            base.device = True
        base.device_credit = self._device_clock + base.warm_s
        base.host_credit = self._host_clock + max(0.0, base.cold_s - base.warm_s)
        if all(b.device for b in self._bases.values()):
            # Nothing can be evicted from the device any more: host copies would never be read.
            moves += [Move(b.name, "drop_host") for b in self._bases.values() if b.host]
            for b in self._bases.values():
                b.host = False
        return moves

    def _make_device_room(self, base: _Base) -> list[Move]:
        moves: list[Move] = []
        while self._used("device") + base.nbytes > self.budgets.device:
            victim = min(
                (b for b in self._bases.values() if b.device and b is not base),
                key=lambda b: (b.device_credit, b.name),
            )
            self._device_clock = victim.device_credit
            victim.device = False
            if victim.host:
                moves.append(Move(victim.name, "free_device"))
                continue
            dropped, kept = self._host_room(victim, leaving_device=True, protect={base.name})
            moves += [*dropped, Move(victim.name, "to_host" if kept else "to_disk")]
            victim.host = kept
        return moves

    def _host_room(self, base: _Base, *, leaving_device: bool, protect: Container[str]) -> tuple[list[Move], bool]:
        """Room in host memory for a copy of ``base``: the copies to drop, and whether it fits.

        Copies are dropped in :meth:`_host_rank` order while ``base`` ranks above them; when
        ``base`` itself would be the next victim, nothing is dropped and it does not fit.
        """
        if self.budgets.host is None:
            return [], True
        need = self._used("host") + base.nbytes - self.budgets.host
        held = [b for b in self._bases.values() if b.host and b.name not in protect and b is not base]
        order = sorted(
            [*held, base], key=lambda b: self._host_rank(b, on_device=(not leaving_device) if b is base else None)
        )
        victims: list[_Base] = []
        for b in order:
            if need <= 0:
                break
            if b is base:
                return [], False
            victims.append(b)
            need -= b.nbytes
        if need > 0:
            return [], False
        return [self._drop_host(v) for v in victims], True

    def _trim_host(self) -> list[Move]:
        """Drop host copies, in :meth:`_host_rank` order, until the host budget holds."""
        moves: list[Move] = []
        while self.budgets.host is not None and self._used("host") > self.budgets.host:
            victim = min((b for b in self._bases.values() if b.host), key=self._host_rank)
            moves.append(self._drop_host(victim))
        return moves

    def _host_rank(self, base: _Base, on_device: bool | None = None) -> tuple[bool, float, str]:
        """Eviction order of host copies: those of bases on the device first (they lose no tier:
        only a later copy back), then the lowest GreedyDual credit."""
        device = base.device if on_device is None else on_device
        return (not device, base.host_credit, base.name)

    def _drop_host(self, victim: _Base) -> Move:
        if not victim.device:
            self._host_clock = max(self._host_clock, victim.host_credit)
        victim.host = False
        return Move(victim.name, "drop_host")

    # --- what the heartbeat and the metrics read ------------------------------------------

    def tier(self, name: str) -> Tier:
        base = self._bases[name]
        return "active" if base.device else "warm" if base.host else "cold"

    def switch_s(self, name: str) -> float:
        """Expected seconds to make ``name`` active now: 0, its warm or its cold switch cost."""
        base = self._bases[name]
        return 0.0 if base.device else base.warm_s if base.host else base.cold_s

    def costs(self, name: str) -> tuple[float, float]:
        """(warm, cold) switch seconds of ``name``: measured, or estimated from its bytes until then."""
        base = self._bases[name]
        return base.warm_s, base.cold_s

    def observe(self, name: str, kind: SwitchKind, seconds: float) -> None:
        """A measured switch of ``name``: the cost placement and eviction will expect next time."""
        base = self._bases[name]
        if kind == "warm":
            base.warm_s += _COST_WEIGHT * (seconds - base.warm_s)
        else:
            base.cold_s += _COST_WEIGHT * (seconds - base.cold_s)

    def tier_bytes(self, name: str | None = None) -> dict[str, int]:
        """Bytes held per tier (``device``, ``host``, ``disk``), for one base or all of them."""
        bases = [self._bases[name]] if name is not None else list(self._bases.values())
        return {
            "device": sum(b.nbytes for b in bases if b.device),
            "host": sum(b.nbytes for b in bases if b.host),
            "disk": sum(b.disk_bytes for b in bases),
        }

    def _used(self, tier: Literal["device", "host"]) -> int:
        return self.tier_bytes()[tier]

    def __contains__(self, name: object) -> bool:
        return name in self._bases

    def names(self) -> list[str]:
        return list(self._bases)
