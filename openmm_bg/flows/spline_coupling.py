"""Rational-quadratic spline coupling for circular, interval and real dimensions.

Each transformed dimension gets its own RQ spline (see :mod:`.splines`) whose bin widths,
heights and knot derivatives are predicted by an MLP of the conditioning dimensions. The
boundary conditions depend on the dimension's kind, so every output lies in its domain by
construction:

* ``circular`` on ``[low, high)``: spline from ``[low, high]`` onto itself with ``d_0 = d_K``,
  so the map and its derivative agree at ``low`` and ``high`` -- a diffeomorphism of the
  circle (Rezende et al. 2020). ``low`` is a fixed point; this loses no generality for 1-D
  densities (the map to any positive density can be taken to fix ``low``), and the
  conditioner moves the rest.
* ``interval`` on ``(low, high)``: spline from ``[low, high]`` onto itself, free end slopes.
* ``real``: spline on ``[-B, B]`` with ``d_0 = d_K = 1`` and identity outside (linear tails;
  Durkan et al. 2019).

Floating-point guard: the exact map never reaches ``high`` on the circle (nor either end of
an interval from inside), but rounding can, within one rounding error of the boundary. Such
an output is replaced by the nearest float inside (``nextafter``): a change of at most one
unit in the last place, below the map's own rounding error, never a wrap or a clamp of a
value the exact map puts outside.

Examples
--------
>>> import math, torch
>>> from openmm_bg.flows.domain import Domain
>>> dom = Domain.from_spec(2, circular_mask=[True, False])
>>> layer = SplineCoupling([True, False], dom, hidden=(16,))
>>> x = torch.tensor([[3.0, 0.5]])
>>> y, ld = layer(x)
>>> bool(torch.allclose(y, x)), bool(ld.abs().max() < 1e-6)   # identity at initialisation
(True, True)
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from .base import MLP, Transform
from .coupling import _split
from .domain import CIRCULAR, REAL, Domain
from .splines import derivatives, knots, rq_spline

__all__ = ["SplineCoupling"]


class SplineCoupling(Transform):
    """Coupling layer with a rational-quadratic spline per transformed dimension.

    Parameters
    ----------
    mask : bool sequence or tensor ``[n_dof]``
        True for the dimensions this layer transforms (any kind); the rest condition it. If
        every dimension is transformed the splines are unconditional (learned constants).
    domain : Domain, optional
        Domain of all ``n_dof`` dimensions (default: all real).
    bins : int
        Number of spline bins ``K``.
    hidden : sequence of int
        Hidden widths of the conditioner MLP.
    tail_bound : float
        ``B``: real dimensions are splined on ``[-B, B]``, identity outside.
    min_bin, min_derivative : float
        Lower bounds on bin fractions and knot derivatives (numerical safety).
    activation : type of nn.Module
        Hidden activation of the conditioner.
    """

    def __init__(self, mask: Sequence[bool] | torch.Tensor, domain: Domain | None = None, bins: int = 8,
                 hidden: Sequence[int] = (64, 64), tail_bound: float = 5.0, min_bin: float = 1e-3,
                 min_derivative: float = 1e-3, activation: type[nn.Module] = nn.SiLU):
        super().__init__()
        mask, domain, idx_t, idx_c = _split(mask, domain)
        if bins < 2:
            raise ValueError("need at least 2 bins")
        self.register_buffer("idx_t", idx_t)
        self.register_buffer("idx_c", idx_c)
        self.cond_domain = domain.subset(idx_c.tolist())
        dom_t = domain.subset(idx_t.tolist())
        kinds = dom_t.kinds
        real = torch.tensor([k == REAL for k in kinds])
        # spline intervals as a Domain (exact Python floats, tensors cached per device and dtype),
        # so a float64 flow sees exact float64 bounds whatever dtype the module was built in;
        # real dimensions are splined on [-tail_bound, tail_bound]
        low = [-tail_bound if k == REAL else lo for k, lo in zip(kinds, dom_t.low, strict=True)]
        high = [tail_bound if k == REAL else hi for k, hi in zip(kinds, dom_t.high, strict=True)]
        self._bounds = Domain(kinds, low, high)
        self.register_buffer("real", real)
        self.register_buffer("circular", torch.tensor([k == CIRCULAR for k in kinds]))
        self.bins = int(bins)
        self.min_bin = float(min_bin)
        self.min_derivative = float(min_derivative)
        self.n_t = len(idx_t)
        self.net = MLP(self.cond_domain.n_features, self.n_t * (3 * bins + 1), hidden, activation)

    def _spline(self, x_t: torch.Tensor, x_c: torch.Tensor, inverse: bool):
        K = self.bins
        raw = self.net(self.cond_domain.embed(x_c)).reshape(*x_c.shape[:-1], self.n_t, 3 * K + 1)
        low, high = self._bounds.bounds(x_t.device, x_t.dtype)
        kx = knots(raw[..., :K], low, high, self.min_bin)
        ky = knots(raw[..., K:2 * K], low, high, self.min_bin)
        d = derivatives(raw[..., 2 * K:], self.min_derivative)
        one = torch.ones_like(d[..., :1])
        d_first = torch.where(self.real[:, None], one, d[..., :1])
        d_last = torch.where(self.circular[:, None], d[..., :1], d[..., K:])
        d_last = torch.where(self.real[:, None], one, d_last)
        d = torch.cat([d_first, d[..., 1:K], d_last], dim=-1)
        inside = (x_t > low) & (x_t < high) | ~self.real
        x_in = torch.where(inside, x_t, torch.zeros_like(x_t)).clamp(min=low, max=high)
        out, ld = rq_spline(x_in, kx, ky, d, inverse=inverse)
        out = torch.where(inside, out, x_t)
        ld = torch.where(inside, ld, torch.zeros_like(ld))
        # rounding guards (see module doc): circular outputs stay below high, interval outputs
        # strictly inside (low, high)
        top = torch.nextafter(high, low)
        bottom = torch.nextafter(low, high)
        interval = ~self.real & ~self.circular
        out = torch.where(~self.real & (out > top), top, out)
        out = torch.where(interval & (out < bottom), bottom, out)
        return out, ld.sum(-1)

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out, ld = self._spline(z.index_select(-1, self.idx_t), z.index_select(-1, self.idx_c), inverse=False)
        return z.index_copy(-1, self.idx_t, out), ld

    def inverse(self, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out, ld = self._spline(y.index_select(-1, self.idx_t), y.index_select(-1, self.idx_c), inverse=True)
        return y.index_copy(-1, self.idx_t, out), ld
