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

import torch
from torch import nn

from .base import Transform
from .domain import Domain
from .priors import Prior

__all__ = ["Flow"]


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

    def sample(self, n: int, generator: torch.Generator | None = None,
               temperature_scale: float = 1.0) -> torch.Tensor:
        """Draw ``n`` samples ``y`` ``[n, n_dof]``: ``z`` from the prior, pushed forward.

        ``temperature_scale`` (``T'/T``) draws from the prior with Gaussian std scaled by
        ``sqrt(T'/T)``; `log_prob` with the same ``temperature_scale`` is their exact density.
        Densities of generated configurations (with the latent points and log-dets) come from
        `openmm_bg.model.BoltzmannGenerator.propose`.
        """
        z = self.prior.sample(n, generator=generator, temperature_scale=temperature_scale)
        return self.forward(z)[0]

    def nll(self, y: torch.Tensor) -> torch.Tensor:
        """Mean negative log-likelihood of a batch (the ML loss on ``y``), a scalar."""
        return -self.log_prob(y).mean()
