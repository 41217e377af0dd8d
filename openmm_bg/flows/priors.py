"""Latent priors: per-dimension standard Gaussian, uniform on the circle, uniform on an interval.

The prior's domain is the latent domain: real dimensions get ``N(0, 1)``, circular ones the
uniform density ``1 / period`` on ``[low, high)``, interval ones ``1 / (high - low)`` on
``(low, high)``. ``energy(z)`` is ``u_Z(z) = -log p_Z(z)`` *including* the normalisation
constants, so ``log p_Y(y) = -u_Z(z) + log|det dz/dy|`` is a normalised density.

Temperature scaling: ``temperature_scale = T'/T`` multiplies the Gaussian standard deviation
by ``sqrt(T'/T)`` (the uniform factors are unchanged); ``energy``/``log_prob`` with the same
``temperature_scale`` are the exact densities of that scaled prior, so importance weights of
samples drawn from it stay exact.

Examples
--------
>>> import math, torch
>>> from openmm_bg.flows.domain import Domain
>>> prior = Prior(Domain.from_spec(2, circular_mask=[False, True]))
>>> z = prior.sample(3, generator=torch.Generator().manual_seed(0))
>>> z.shape
torch.Size([3, 2])
>>> e = prior.energy(torch.zeros(1, 2))
>>> bool(torch.isclose(e, torch.tensor(0.5 * math.log(2 * math.pi) + math.log(2 * math.pi))))
True
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .domain import INTERVAL, REAL, Domain

__all__ = ["Prior"]


class Prior(nn.Module):
    """Product prior over ``n_dof`` latent dimensions.

    Parameters
    ----------
    domain : Domain or int
        Latent domain (an int ``n`` means ``n`` real dimensions: a standard Gaussian).

    Notes
    -----
    Floating-point parameters follow ``.to(dtype)``; sampling uses the dtype and device of the
    module unless ``dtype``/``device`` are given.
    """

    def __init__(self, domain: Domain | int):
        super().__init__()
        self.domain = Domain.real(domain) if isinstance(domain, int) else domain
        gauss = torch.tensor([k == REAL for k in self.domain.kinds])
        g_list = gauss.tolist()
        low = torch.tensor([0.0 if g else lo for g, lo in zip(g_list, self.domain.low, strict=True)],
                           dtype=torch.float64)
        high = torch.tensor([1.0 if g else hi for g, hi in zip(g_list, self.domain.high, strict=True)],
                            dtype=torch.float64)
        self.register_buffer("gauss", gauss)
        self.register_buffer("interval", torch.tensor([k == INTERVAL for k in self.domain.kinds]))
        self.register_buffer("_dummy", torch.zeros((), dtype=torch.get_default_dtype()), persistent=False)
        self._low = low
        self._high = high
        self._cache: dict = {}
        # normalisation of the uniform factors: sum of log(width) over non-Gaussian dims
        self._log_volume = float(torch.log(high - low)[~gauss].sum())

    def __getstate__(self):
        state = super().__getstate__() if hasattr(super(), "__getstate__") else self.__dict__
        return {**state, "_cache": {}}  # device tensors are rebuilt on demand

    @property
    def n_dof(self) -> int:
        """Number of latent dimensions."""
        return self.domain.n_dof

    def _bounds(self, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        key = (like.device, like.dtype)
        if key not in self._cache:
            self._cache[key] = (self._low.to(like.device, like.dtype), self._high.to(like.device, like.dtype))
        return self._cache[key]

    def sample(self, n: int, generator: torch.Generator | None = None, temperature_scale: float = 1.0,
               dtype: torch.dtype | None = None, device: torch.device | str | None = None) -> torch.Tensor:
        """Draw ``n`` latent samples ``[n, n_dof]``.

        Parameters
        ----------
        n : int
            Number of samples.
        generator : torch.Generator, optional
            Source of randomness (same generator state, same samples). Must live on ``device``.
        temperature_scale : float
            ``T'/T``; Gaussian standard deviation multiplied by ``sqrt(temperature_scale)``.
        dtype, device : optional
            Default: those of the module.

        Returns
        -------
        Tensor ``[n, n_dof]``
            Gaussian dims real; circular dims in ``[low, high)``; interval dims in ``(low, high)``.
        """
        if temperature_scale <= 0:
            raise ValueError("temperature_scale must be > 0")
        dtype = self._dummy.dtype if dtype is None else dtype
        device = self._dummy.device if device is None else device
        shape = (n, self.n_dof)
        g = torch.randn(shape, generator=generator, dtype=dtype, device=device)
        u = torch.rand(shape, generator=generator, dtype=dtype, device=device)
        low, high = self._bounds(g)
        # torch.rand draws multiples of 2^-24 (float32) / 2^-53 (float64) in [0, 1); shifting by
        # half a step keeps the grid uniform and makes it open, so interval samples avoid ``low``
        u = torch.where(self.interval.to(device), u + torch.finfo(dtype).eps / 4, u)
        uni = low + (high - low) * u
        # rounding guard: u < 1 but low + width * u may round up to high
        uni = torch.minimum(uni, torch.nextafter(high, low))
        return torch.where(self.gauss.to(device), g * math.sqrt(temperature_scale), uni)

    def energy(self, z: torch.Tensor, temperature_scale: float = 1.0) -> torch.Tensor:
        """``u_Z(z) = -log p_Z(z)`` ``[batch]``, normalised; ``+inf`` outside the latent domain.

        Gaussian dims: ``z^2 / (2 tau) + log(2 pi tau) / 2`` with ``tau = temperature_scale``;
        uniform dims: ``log(width)``.
        """
        gauss = self.gauss.to(z.device)
        tau = float(temperature_scale)
        zg = torch.where(gauss, z, torch.zeros_like(z))
        n_gauss = int(gauss.sum())
        u = (zg * zg).sum(-1) / (2 * tau) + 0.5 * n_gauss * math.log(2 * math.pi * tau) + self._log_volume
        ok = self.domain.contains(z)
        return torch.where(ok, u, torch.full_like(u, math.inf))

    def log_prob(self, z: torch.Tensor, temperature_scale: float = 1.0) -> torch.Tensor:
        """``log p_Z(z)`` ``[batch]`` (``-inf`` outside the latent domain)."""
        return -self.energy(z, temperature_scale)
