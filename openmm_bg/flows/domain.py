"""Per-dimension domains of the flow variables: real line, circle, or bounded interval.

A :class:`Domain` says, for every one of the ``n_dof`` dimensions of ``y`` ``[batch, n_dof]``,
which set its values live in:

* ``"real"`` -- the real line (bond lengths and Cartesian core after whitening, ...);
* ``"circular"`` -- the circle, represented by the half-open interval ``[low, high)`` with
  period ``high - low`` (torsions: ``[-pi, pi)``, or ``[-1, 1)`` when normalised);
* ``"interval"`` -- the open interval ``(low, high)`` (bond angles in ``(0, pi)``).

The domain is plain data (Python lists), so it pickles and carries no device; tensors of its
bounds are made on demand (cached per device and dtype) in the dtype of the data. A float32
flow therefore works with the float32-rounded bounds: prefer exactly representable bounds such
as ``[-1, 1)`` (torsions in units of pi) for float32 flows -- ``float32(-pi) < -pi``.

Examples
--------
>>> import math, torch
>>> d = Domain.from_spec(3, circular_mask=[False, True, False], bounded={2: (0.0, math.pi)})
>>> d.kinds
['real', 'circular', 'interval']
>>> d.contains(torch.tensor([[0.3, 3.0, 1.0], [0.3, 3.0, 4.0]])).tolist()
[True, False]
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch

__all__ = ["REAL", "CIRCULAR", "INTERVAL", "Domain"]

REAL = "real"
CIRCULAR = "circular"
INTERVAL = "interval"
_KINDS = (REAL, CIRCULAR, INTERVAL)


@dataclass(frozen=True)
class Domain:
    """Kinds and bounds of each flow dimension.

    Parameters
    ----------
    kinds : list of str
        ``"real"``, ``"circular"`` or ``"interval"`` per dimension, length ``n_dof``.
    low, high : list of float
        Bounds per dimension; ``-inf``/``inf`` for real dimensions. Circular dimensions live on
        ``[low, high)`` with period ``high - low``; interval dimensions on ``(low, high)``.
    """

    kinds: list[str]
    low: list[float]
    high: list[float]

    def __post_init__(self):
        if not (len(self.kinds) == len(self.low) == len(self.high)):
            raise ValueError("kinds, low and high must have the same length")
        for i, (k, lo, hi) in enumerate(zip(self.kinds, self.low, self.high, strict=True)):
            if k not in _KINDS:
                raise ValueError(f"dimension {i}: unknown kind {k!r}, expected one of {_KINDS}")
            if k != REAL and not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
                raise ValueError(f"dimension {i} ({k}): need finite low < high, got ({lo}, {hi})")

    @classmethod
    def real(cls, n_dof: int) -> Domain:
        """All ``n_dof`` dimensions unbounded."""
        return cls([REAL] * n_dof, [-math.inf] * n_dof, [math.inf] * n_dof)

    @classmethod
    def from_spec(
        cls,
        n_dof: int,
        circular_mask: Sequence[bool] | torch.Tensor | None = None,
        bounded: Mapping[int, tuple[float, float]] | Sequence[tuple[float, float] | None] | None = None,
        circular_interval: tuple[float, float] = (-math.pi, math.pi),
    ) -> Domain:
        """Build a domain from a circular mask and a bounded-interval spec.

        Parameters
        ----------
        n_dof : int
            Number of dimensions.
        circular_mask : bool sequence or tensor ``[n_dof]``, optional
            True for circular dimensions (torsions).
        bounded : dict ``{index: (low, high)}`` or sequence ``[n_dof]`` of ``(low, high)`` or None
            Bounded-interval dimensions, e.g. angles ``(0, pi)``. Must not overlap the circular ones.
        circular_interval : (float, float)
            ``[low, high)`` of every circular dimension; the period is ``high - low``.
            Default ``(-pi, pi)``; use ``(-1.0, 1.0)`` for normalised torsions.

        Returns
        -------
        Domain
        """
        kinds = [REAL] * n_dof
        low = [-math.inf] * n_dof
        high = [math.inf] * n_dof
        if circular_mask is not None:
            cm = circular_mask.tolist() if torch.is_tensor(circular_mask) else circular_mask
            mask = [bool(m) for m in cm]
            if len(mask) != n_dof:
                raise ValueError(f"circular_mask has length {len(mask)}, expected {n_dof}")
            for i, m in enumerate(mask):
                if m:
                    kinds[i] = CIRCULAR
                    low[i], high[i] = float(circular_interval[0]), float(circular_interval[1])
        if bounded is not None:
            items = bounded.items() if isinstance(bounded, Mapping) else enumerate(bounded)
            for i, b in items:
                if b is None:
                    continue
                i = int(i)
                if not 0 <= i < n_dof:
                    raise ValueError(f"bounded index {i} out of range for n_dof={n_dof}")
                if kinds[i] == CIRCULAR:
                    raise ValueError(f"dimension {i} is both circular and bounded")
                kinds[i] = INTERVAL
                low[i], high[i] = float(b[0]), float(b[1])
        return cls(kinds, low, high)

    @property
    def n_dof(self) -> int:
        """Number of dimensions."""
        return len(self.kinds)

    def indices(self, kind: str) -> list[int]:
        """Indices of the dimensions of one kind."""
        return [i for i, k in enumerate(self.kinds) if k == kind]

    def relaxed(self, kinds: Sequence[str]) -> Domain:
        """A copy in which the dimensions of the given kinds are treated as real (unbounded)."""
        out = [(REAL, -math.inf, math.inf) if k in kinds else (k, lo, hi)
               for k, lo, hi in zip(self.kinds, self.low, self.high, strict=True)]
        return Domain([o[0] for o in out], [o[1] for o in out], [o[2] for o in out])

    def subset(self, idx: Sequence[int]) -> Domain:
        """The domain of the selected dimensions, in the given order."""
        return Domain([self.kinds[i] for i in idx], [self.low[i] for i in idx], [self.high[i] for i in idx])

    # -- per-(device, dtype) tensor cache, kept out of pickles and comparisons -------------
    def __getstate__(self):
        return {"kinds": self.kinds, "low": self.low, "high": self.high}

    def __setstate__(self, state):
        for k, v in state.items():
            object.__setattr__(self, k, v)

    def _cached(self, key: tuple, make):
        cache = self.__dict__.setdefault("_tensor_cache", {})
        if key not in cache:
            cache[key] = make()
        return cache[key]

    def bounds(self, device=None, dtype=torch.float64) -> tuple[torch.Tensor, torch.Tensor]:
        """``(low, high)`` as tensors ``[n_dof]`` (cached per device and dtype; do not modify)."""
        device = torch.device("cpu") if device is None else torch.device(device)

        def make():
            return (torch.tensor(self.low, device=device, dtype=dtype),
                    torch.tensor(self.high, device=device, dtype=dtype))

        return self._cached(("bounds", device, dtype), make)

    def contains(self, y: torch.Tensor) -> torch.Tensor:
        """Which rows of ``y`` ``[batch, n_dof]`` lie in the domain, ``bool[batch]``.

        Every entry must be finite; circular entries in ``[low, high)``; interval entries in
        ``(low, high)`` (an angle of exactly 0 or pi is degenerate).
        """
        if y.shape[-1] != self.n_dof:
            raise ValueError(f"expected {self.n_dof} dimensions, got {y.shape[-1]}")
        low, high = self.bounds(y.device, y.dtype)
        circ = self._cached(("circ", y.device), lambda: torch.tensor(
            [k == CIRCULAR for k in self.kinds], dtype=torch.bool, device=y.device))
        ok = torch.isfinite(y)
        ok = ok & ((y > low) | (circ & (y == low)))  # real dims: low = -inf
        ok = ok & (y < high)
        return ok.all(dim=-1)

    def _embed_index(self, device, dtype):
        def make():
            real = self.indices(REAL)
            interval = self.indices(INTERVAL)
            circ = self.indices(CIRCULAR)
            lo = [self.low[i] for i in interval + circ]
            hi = [self.high[i] for i in interval + circ]

            def long(v):
                return torch.tensor(v, dtype=torch.long, device=device)

            return (long(real), long(interval), long(circ), torch.tensor(lo, dtype=dtype, device=device),
                    torch.tensor(hi, dtype=dtype, device=device))

        return self._cached(("embed", device, dtype), make)

    def embed(self, y: torch.Tensor) -> torch.Tensor:
        """Features of ``y`` ``[batch, n_dof]`` for a conditioner network, ``[batch, n_features]``.

        Real dimensions pass through; interval dimensions are mapped affinely to ``[-1, 1]``;
        circular dimensions become ``(cos a, sin a)`` with ``a = 2 pi (y - low) / period``, so a
        conditioner is a smooth periodic function of them (continuous across the boundary).
        Features are ordered: real, interval, cos of circular, sin of circular.
        """
        real, interval, circ, lo, hi = self._embed_index(y.device, y.dtype)
        n_i = len(interval)
        feats = [y.index_select(-1, real)]  # index_select: the same values as y[..., idx], several times faster
        if n_i:
            feats.append(2.0 * (y.index_select(-1, interval) - lo[:n_i]) / (hi[:n_i] - lo[:n_i]) - 1.0)
        if len(circ):
            a = (y.index_select(-1, circ) - lo[n_i:]) * (2.0 * math.pi / (hi[n_i:] - lo[n_i:]))
            feats += [torch.cos(a), torch.sin(a)]
        return torch.cat(feats, dim=-1)

    @property
    def n_features(self) -> int:
        """Width of :meth:`embed`'s output."""
        return sum(2 if k == CIRCULAR else 1 for k in self.kinds)
