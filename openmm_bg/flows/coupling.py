"""RealNVP affine coupling (Dinh et al. 2017) with a tanh-bounded log-scale.

For the transformed dimensions ``T`` (``mask`` True) and the others ``C``::

    y_T = z_T * exp(s(z_C)) + t(z_C),   y_C = z_C,   log|det| = sum s,
    s = s_max * tanh(a / s_max)   (bounded log-scale; ~a for small a)

where ``(a, t)`` come from an MLP of the conditioning dimensions (embedded by the domain:
circular ones as cos/sin). The MLP's last layer starts at zero, so the layer starts as the
identity. Transformed dimensions must be real (unbounded): an affine map does not preserve
an interval or the circle.

Examples
--------
>>> import torch
>>> layer = AffineCoupling([True, False, True, False], hidden=(16,))
>>> z = torch.randn(5, 4)
>>> y, ld = layer(z)
>>> bool(torch.allclose(y, z)), ld.shape   # identity at initialisation
(True, torch.Size([5]))
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from .base import MLP, Transform
from .domain import REAL, Domain

__all__ = ["AffineCoupling"]


def _as_mask(mask: Sequence[bool] | torch.Tensor) -> torch.Tensor:
    mask = torch.as_tensor(mask, dtype=torch.bool)
    if mask.ndim != 1:
        raise ValueError("mask must be 1-D")
    return mask


def _split(mask: Sequence[bool] | torch.Tensor, domain: Domain | None):
    """Validated ``(mask, domain, transformed indices, conditioning indices)`` of a coupling layer."""
    mask = _as_mask(mask)
    n = len(mask)
    domain = Domain.real(n) if domain is None else domain
    if domain.n_dof != n:
        raise ValueError(f"mask has {n} dimensions, domain {domain.n_dof}")
    idx_t = torch.nonzero(mask).flatten()
    idx_c = torch.nonzero(~mask).flatten()
    if len(idx_t) == 0:
        raise ValueError("mask selects no dimension to transform")
    return mask, domain, idx_t, idx_c


class AffineCoupling(Transform):
    """Affine coupling layer on ``[batch, n_dof]``.

    Parameters
    ----------
    mask : bool sequence or tensor ``[n_dof]``
        True for the dimensions this layer transforms; the rest condition the transform.
    domain : Domain, optional
        Domain of all ``n_dof`` dimensions (default: all real). Transformed dimensions must be
        real; conditioning dimensions are embedded with :meth:`Domain.embed`.
    hidden : sequence of int
        Hidden widths of the conditioner MLP.
    scale_bound : float
        ``s_max``: the log-scale lies in ``(-s_max, s_max)`` (stability).
    activation : type of nn.Module
        Hidden activation of the conditioner.
    """

    def __init__(self, mask: Sequence[bool] | torch.Tensor, domain: Domain | None = None,
                 hidden: Sequence[int] = (64, 64), scale_bound: float = 2.0,
                 activation: type[nn.Module] = nn.SiLU):
        super().__init__()
        mask, domain, idx_t, idx_c = _split(mask, domain)
        bad = [int(i) for i in idx_t if domain.kinds[int(i)] != REAL]
        if bad:
            raise ValueError(f"affine coupling can only transform real dimensions; {bad} are not")
        self.register_buffer("idx_t", idx_t)
        self.register_buffer("idx_c", idx_c)
        self.cond_domain = domain.subset(idx_c.tolist())
        self.scale_bound = float(scale_bound)
        self.net = MLP(self.cond_domain.n_features, 2 * len(idx_t), hidden, activation)

    def _params(self, x_c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        a, t = self.net(self.cond_domain.embed(x_c)).chunk(2, dim=-1)
        s = self.scale_bound * torch.tanh(a / self.scale_bound)
        return s, t

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        s, t = self._params(z.index_select(-1, self.idx_c))
        return z.index_copy(-1, self.idx_t, z.index_select(-1, self.idx_t) * torch.exp(s) + t), s.sum(-1)

    def inverse(self, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        s, t = self._params(y.index_select(-1, self.idx_c))
        return y.index_copy(-1, self.idx_t, (y.index_select(-1, self.idx_t) - t) * torch.exp(-s)), -s.sum(-1)
