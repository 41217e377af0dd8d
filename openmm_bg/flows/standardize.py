"""A fixed elementwise affine map fitted to data: the flow's first and last layer.

Bond lengths (nm), angles and the whitened core have very different scales; the flow sees them
standardised. Unimodal circular dimensions (e.g. the torsions that place a methyl's second and
third hydrogens, always ~120 degrees from the first) are rotated on the circle so that their mode
sits at 0 and then scaled like real dimensions; a standardised value whose image would wrap
around the circle more than half a period is out of domain (the map is only injective there).
Multimodal circular dimensions (phi, psi, methyl rotors: left to circular splines) keep their
scale but are rotated so that the widest gap in the data sits at the circle's boundary, so no
mode is cut in two there.

``forward`` maps standardised ``v`` -> ``y``: ``y = shift + scale * v`` (wrapped onto
``[low, low + period)`` for circular-shifted dimensions); ``log_det = sum(log scale)``.

Examples
--------
>>> import torch
>>> y = torch.tensor([[0.10, 0.95], [0.12, -0.97], [0.11, 0.99]], dtype=torch.float64)
>>> std = Standardize.fit(y, wrap_mask=[False, True])
>>> v, _ = std.inverse(y)
>>> back, _ = std.forward(v)
>>> bool(torch.allclose(back, y))
True
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from .base import Transform

__all__ = ["Standardize"]


class Standardize(Transform):
    """Fixed elementwise ``y = shift + scale * v`` with optional wrapping on a circle.

    Parameters
    ----------
    shift, scale : torch.Tensor
        ``[n_dof]``; ``scale > 0``.
    wrap_mask : sequence of bool, optional
        Dimensions living on the circle ``[low, low + period)`` whose values are wrapped.
    low, period : float
        The circle of the wrapped dimensions (default ``[-1, 1)``: torsions in units of pi).
    """

    def __init__(self, shift: torch.Tensor, scale: torch.Tensor, wrap_mask: Sequence[bool] | None = None,
                 low: float = -1.0, period: float = 2.0):
        super().__init__()
        shift = torch.as_tensor(shift, dtype=torch.float64)
        scale = torch.as_tensor(scale, dtype=torch.float64)
        if shift.shape != scale.shape or shift.dim() != 1:
            raise ValueError("shift and scale must be 1D tensors of the same length")
        if not (scale > 0).all():
            raise ValueError("scale must be positive")
        wrap = torch.zeros_like(shift, dtype=torch.bool) if wrap_mask is None else \
            torch.as_tensor(list(wrap_mask), dtype=torch.bool)
        self.register_buffer("shift", shift)
        self.register_buffer("scale", scale)
        self.register_buffer("wrap", wrap)
        self.low, self.period = float(low), float(period)

    @classmethod
    def fit(cls, y: torch.Tensor, wrap_mask: Sequence[bool] | None = None,
            identity_mask: Sequence[bool] | None = None, min_scale: float = 1e-6,
            low: float = -1.0, period: float = 2.0) -> Standardize:
        """Mean and standard deviation per dimension of data ``y`` ``[n, n_dof]``.

        ``wrap_mask`` dimensions use the circular mean and the spread of the wrapped deviations;
        ``identity_mask`` dimensions (e.g. multimodal torsions left to circular splines) keep their
        scale but are rotated on the circle so that the middle of the data's widest gap (on ``72``
        bins) sits at the boundary ``low``: a mode that straddled the boundary would otherwise be
        split in two halves that a circular spline must glue back together.
        """
        y = torch.as_tensor(y, dtype=torch.float64)
        n_dof = y.shape[1]
        wrap = torch.zeros(n_dof, dtype=torch.bool) if wrap_mask is None else \
            torch.as_tensor(list(wrap_mask), dtype=torch.bool)
        ident = torch.zeros(n_dof, dtype=torch.bool) if identity_mask is None else \
            torch.as_tensor(list(identity_mask), dtype=torch.bool)
        shift = y.mean(0)
        angle = (y - low) * (2 * math.pi / period)
        circ_mean = torch.atan2(torch.sin(angle).mean(0), torch.cos(angle).mean(0)) * (period / (2 * math.pi))
        circ_mean = _wrap(circ_mean + low, low, period)
        shift = torch.where(wrap, circ_mean, shift)
        dev = torch.where(wrap, _wrap(y - shift, -period / 2, period), y - shift)
        scale = dev.std(0).clamp_min(min_scale)
        shift = torch.where(ident, _emptiest_point(y, low, period) + 0.5 * period, shift)
        shift = torch.where(ident, _wrap(shift, low, period), shift)
        scale = torch.where(ident, torch.ones_like(scale), scale)
        wrap = wrap | ident
        return cls(shift, scale, wrap, low=low, period=period)

    def in_domain(self, v: torch.Tensor) -> torch.Tensor:
        """``[batch]`` bool: wrapped dimensions stay within half a period of their centre."""
        half = 0.5 * self.period
        scaled = (v * self.scale.to(v)).abs()
        ok = torch.where(self.wrap.to(v.device), scaled <= half, torch.isfinite(v))
        return ok.all(-1)

    def forward(self, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Standardised ``v`` ``[batch, n]`` -> ``y``; returns ``(y, log_det [batch])``."""
        y = self.shift.to(v) + self.scale.to(v) * v
        y = torch.where(self.wrap.to(v.device), _wrap(y, self.low, self.period), y)
        return y, self.scale.to(v).log().sum().expand(v.shape[0])

    def inverse(self, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``y`` ``[batch, n]`` -> standardised ``v``; returns ``(v, log_det [batch])``."""
        d = y - self.shift.to(y)
        d = torch.where(self.wrap.to(y.device), _wrap(d, -0.5 * self.period, self.period), d)
        return d / self.scale.to(y), -self.scale.to(y).log().sum().expand(y.shape[0])


def _emptiest_point(y: torch.Tensor, low: float, period: float, bins: int = 72) -> torch.Tensor:
    """``[n_dof]``: per column of ``y``, the centre of the bin farthest from any bin holding more than
    0.1% of the data (the middle of the widest gap), or, where no bin is that empty, of the least
    populated bin after 3-bin circular smoothing."""
    idx = (_wrap(y, low, period) - low) * (bins / period)
    idx = idx.long().clamp(0, bins - 1)
    counts = torch.zeros(bins, y.shape[1], dtype=torch.float64).scatter_add_(0, idx, torch.ones_like(y))
    smooth = counts + counts.roll(1, 0) + counts.roll(-1, 0)
    best = smooth.argmin(0)
    occupied = counts > 1e-3 * y.shape[0]
    k = torch.arange(bins)
    gap = (k[:, None] - k[None, :]).abs()
    gap = torch.minimum(gap, bins - gap).to(torch.float64)  # [bins, bins] circular bin distance
    for d in range(y.shape[1]):
        if occupied[:, d].any() and not occupied[:, d].all():
            best[d] = gap[:, occupied[:, d]].min(1).values.argmax()
    return low + (best.to(torch.float64) + 0.5) * (period / bins)


def _wrap(x: torch.Tensor, low: float, period: float) -> torch.Tensor:
    """Map ``x`` onto ``[low, low + period)``."""
    return torch.remainder(x - low, period) + low
