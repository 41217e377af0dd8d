"""The flow container: a prior plus an invertible map from latent ``z`` to output ``y``.

Densities: ``log p_Y(y) = log p_Z(z) - log|det dy/dz|`` with ``z = inverse(y)``, normalised
on the output domain. (The generator adds the internal-coordinate transform's log-det to get
the density in Cartesian space.)

Examples
--------
>>> import torch
>>> from openmm_bg.flows import build_flow
>>> flow = build_flow(4, kind="realnvp", n_blocks=2, hidden=(16,))
>>> y = flow.sample(8, generator=torch.Generator().manual_seed(1))
>>> flow.log_prob(y).shape
torch.Size([8])
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import nn

from .base import Transform
from .domain import Domain
from .priors import Prior

__all__ = ["Flow", "FlowSample"]


class FlowSample(NamedTuple):
    """Samples with everything needed for exact importance weights.

    Attributes
    ----------
    y : Tensor ``[n, n_dof]``
        Output samples.
    z : Tensor ``[n, n_dof]``
        Their latent points.
    log_det : Tensor ``[n]``
        ``log|det dy/dz|`` (forward direction).
    prior_energy : Tensor ``[n]``
        ``u_Z(z)`` of the (temperature-scaled) prior that drew ``z``, normalised.
    log_prob : Tensor ``[n]``
        ``log p_Y(y) = -prior_energy - log_det``; ``-inf`` where ``y`` is outside the domain.
    in_domain : Tensor ``bool[n]``
        Whether ``y`` lies in the output domain.
    """

    y: torch.Tensor
    z: torch.Tensor
    log_det: torch.Tensor
    prior_energy: torch.Tensor
    log_prob: torch.Tensor
    in_domain: torch.Tensor


class Flow(nn.Module):
    """A normalizing flow: ``y = layers.forward(z)``, ``z ~ prior``.

    Parameters
    ----------
    layers : Transform
        The invertible map (``forward``: z -> y), e.g. a :class:`Sequential`.
    prior : Prior
        Latent prior.
    domain : Domain, optional
        Output domain used by :meth:`in_domain` (default: the prior's). It may be stricter than
        what the layers guarantee (e.g. angles in ``(0, pi)`` left unbounded by the flow);
        samples outside it are out of domain (weight 0) and ``log_prob`` is ``-inf`` there.
    """

    def __init__(self, layers: Transform, prior: Prior, domain: Domain | None = None):
        super().__init__()
        self.layers = layers
        self.prior = prior
        self.domain = prior.domain if domain is None else domain
        if self.domain.n_dof != prior.n_dof:
            raise ValueError("domain and prior disagree on n_dof")

    @property
    def n_dof(self) -> int:
        """Number of dimensions of ``z`` and ``y``."""
        return self.prior.n_dof

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``z`` ``[batch, n_dof]`` -> ``(y, log|det dy/dz|)``."""
        return self.layers(z)

    def inverse(self, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``y`` ``[batch, n_dof]`` -> ``(z, log|det dz/dy|)``."""
        return self.layers.inverse(y)

    def in_domain(self, y: torch.Tensor) -> torch.Tensor:
        """``bool[batch]``: finite and inside the output domain (see :class:`Domain`)."""
        return self.domain.contains(y)

    def log_prob(self, y: torch.Tensor, temperature_scale: float = 1.0) -> torch.Tensor:
        """Normalised ``log p_Y(y)`` ``[batch]``; ``-inf`` for rows outside the domain.

        ``temperature_scale`` selects the temperature-scaled prior (see :class:`Prior`).
        """
        ok = self.in_domain(y)
        y_safe = torch.where(ok[:, None], y, torch.zeros_like(y))  # keep bad rows from producing NaN
        z, log_det = self.inverse(y_safe)
        lp = -self.prior.energy(z, temperature_scale) + log_det
        return torch.where(ok, lp, torch.full_like(lp, -math.inf))

    def sample_with_log_prob(self, n: int, generator: torch.Generator | None = None,
                             temperature_scale: float = 1.0) -> FlowSample:
        """Draw ``n`` samples with latent points, log-dets and exact log densities.

        Parameters
        ----------
        n : int
            Number of samples.
        generator : torch.Generator, optional
            Same generator state, same samples.
        temperature_scale : float
            ``T'/T``: draw from the prior with Gaussian std scaled by ``sqrt(T'/T)``; the
            returned densities are those of this scaled proposal, exactly.

        Returns
        -------
        FlowSample
        """
        z = self.prior.sample(n, generator=generator, temperature_scale=temperature_scale)
        y, log_det = self.forward(z)
        u_z = self.prior.energy(z, temperature_scale)
        ok = self.in_domain(y)
        lp = -u_z - log_det
        return FlowSample(y, z, log_det, u_z, torch.where(ok, lp, torch.full_like(lp, -math.inf)), ok)

    def sample(self, n: int, generator: torch.Generator | None = None,
               temperature_scale: float = 1.0) -> torch.Tensor:
        """Draw ``n`` samples ``y`` ``[n, n_dof]`` (see :meth:`sample_with_log_prob`)."""
        return self.sample_with_log_prob(n, generator, temperature_scale).y

    def nll(self, y: torch.Tensor) -> torch.Tensor:
        """Mean negative log-likelihood of a batch (the ML loss on ``y``), a scalar."""
        return -self.log_prob(y).mean()
