"""Where the particles live, per dimension: the real line, a circle, or an interval with reflecting ends.

A kernel whose Gaussian proposal leaves a bounded domain wastes the move (it is rejected: the
target is zero there). `Support` removes that waste *exactly*: a proposal ``y ~ N(m, s^2)`` is
folded back into the domain, and its density is the density of the folded Gaussian,

- circle ``[low, high)``, period ``P = high - low``: ``y -> low + (y - low) mod P``, density
  ``sum_k N(y + k P; m, s^2)``;
- interval ``(low, high)``, width ``W``: reflection at both ends (``t = (y - low) mod 2W``,
  ``y -> low + t`` if ``t <= W`` else ``low + 2W - t``), density
  ``sum_k N(y + 2kW; m, s^2) + N(2 low - y + 2kW; m, s^2)`` (the preimages of
  ``y`` under the fold),

summed over enough images that the rest is below ``exp(-50)`` of the total. The Metropolis-
Hastings test with those densities (`MALA`) keeps the kernel exactly invariant. For `HMC` the fold
of a leapfrog drift (wrap on a circle; on an interval reflect the position and flip that momentum
component) is reversible and volume-preserving, so no density correction is needed.

A point outside the domain (a circle's ``high`` included) is not in the support; the annealer
refuses such initial particles.

Examples
--------
>>> import math, torch
>>> s = Support([-math.inf, -1.0, 0.0], [math.inf, 1.0, math.pi], periodic=[False, True, False])
>>> s.kinds
('real', 'circular', 'interval')
>>> s.fold(torch.tensor([[5.0, 1.5, -0.5]], dtype=torch.float64)).tolist()
[[5.0, -0.5, 0.5]]
>>> # the folded Gaussian on the circle integrates to 1 over one period
>>> y = torch.linspace(-1, 1, 20001, dtype=torch.float64)[:-1, None]
>>> c = Support([-1.0], [1.0], periodic=[True])
>>> dens = c.log_density(y, torch.full_like(y, 0.9), torch.tensor([0.7], dtype=torch.float64)).exp()
>>> round(float(dens.sum() * 2.0 / 20000), 6)
1.0
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

__all__ = ["Support"]

_TAIL_SD = 10.0  # images up to 10 standard deviations away: the rest is below exp(-50)
_LOG_SQRT_2PI = 0.5 * math.log(2.0 * math.pi)


def _as_vector(name: str, values, n: int | None = None) -> torch.Tensor:
    try:
        t = torch.as_tensor(values, dtype=torch.float64).reshape(-1).clone()
    except (TypeError, ValueError, RuntimeError) as err:
        raise ValueError(f"{name} must be a sequence of numbers, got {values!r}") from err
    if n is not None and t.numel() != n:
        raise ValueError(f"{name} has {t.numel()} entries, low has {n}: give one per dimension")
    return t


class Support:
    """Per-dimension domain of the particles: real, circular ``[low, high)`` or interval ``(low, high)``.

    Parameters
    ----------
    low, high : sequence of float
        ``[d]`` bounds; ``-inf`` and ``inf`` for a real dimension (both or neither infinite).
    periodic : sequence of bool, optional
        ``[d]``: True for a circle (period ``high - low``), False for an interval whose ends reflect.
        Default: no circles.

    Attributes
    ----------
    kinds : tuple of str
        ``"real"``, ``"circular"`` or ``"interval"`` per dimension.
    """

    def __init__(self, low: Sequence[float], high: Sequence[float], periodic: Sequence[bool] | None = None):
        low = _as_vector("low", low)
        high = _as_vector("high", high, low.numel())
        periodic = torch.zeros(low.numel(), dtype=torch.bool) if periodic is None else \
            _as_vector("periodic", periodic, low.numel()).bool()
        if low.numel() < 1:
            raise ValueError("a support needs at least one dimension")
        real = torch.isinf(low) & torch.isinf(high) & (low < 0) & (high > 0)
        bounded = torch.isfinite(low) & torch.isfinite(high)
        if not bool((real | bounded).all()):
            bad = torch.nonzero(~(real | bounded))[:, 0].tolist()
            raise ValueError(f"dimensions {bad}: bounds must be both finite or (-inf, inf); a half-bounded "
                             "dimension is not supported (map it to an interval or the real line)")
        if not bool((high[bounded] > low[bounded]).all()):
            raise ValueError("every bounded dimension needs low < high")
        if bool((periodic & real).any()):
            raise ValueError("a periodic dimension needs finite bounds (its period is high - low)")
        self.low, self.high = low, high
        self.width = torch.where(bounded, high - low, torch.ones_like(low))
        self.circular, self.interval = periodic & bounded, ~periodic & bounded
        self._cache: dict = {}
        self.kinds = tuple("circular" if c else "interval" if i else "real"
                           for c, i in zip(self.circular.tolist(), self.interval.tolist()))

    @property
    def dim(self) -> int:
        """Number of dimensions ``d``."""
        return self.low.numel()

    @property
    def is_real(self) -> bool:
        """True when no dimension is bounded (folding is the identity)."""
        return not bool((self.circular | self.interval).any())

    def _on(self, like: torch.Tensor):
        key = (like.dtype, like.device)
        if key not in self._cache:
            self._cache[key] = (self.low.to(like), self.width.to(like), self.circular.to(like.device),
                                self.interval.to(like.device), (self.circular | self.interval).to(like.device))
        return self._cache[key][:4]

    def check(self, x: torch.Tensor) -> None:
        """Raise ValueError unless ``x [n, d]`` has ``d`` columns and every row lies in the support."""
        if x.dim() != 2 or x.shape[1] != self.dim:
            raise ValueError(f"the support has {self.dim} dimensions, the particles are {list(x.shape)}")
        inside = self.contains(x)
        if not bool(inside.all()):
            raise ValueError(f"{int((~inside).sum())} of the x0 particles lie outside the support "
                             "(circle: [low, high); interval: (low, high)); draw them from q on its domain")

    def contains(self, x: torch.Tensor) -> torch.Tensor:
        """``[n]`` bool: rows inside the support (circles ``[low, high)``, intervals open)."""
        low, width, circ, inter = self._on(x)
        above = torch.where(circ, x >= low, torch.where(inter, x > low, torch.ones_like(circ)))
        below = torch.where(circ | inter, x < low + width, torch.ones_like(circ))
        return (above & below).all(1)

    def fold(self, y: torch.Tensor) -> torch.Tensor:
        """``[n, d]``: ``y`` wrapped onto the circles and reflected into the intervals (real dims unchanged)."""
        if self.is_real:
            return y
        low, width, circ, inter = self._on(y)
        wrapped = low + torch.remainder(y - low, width)
        t = torch.remainder(y - low, 2.0 * width)
        reflected = low + torch.where(t <= width, t, 2.0 * width - t)
        return torch.where(circ, wrapped, torch.where(inter, reflected, y))

    def reflected(self, y: torch.Tensor) -> torch.Tensor:
        """``[n, d]`` bool: the interval coordinates that `fold` mirrors (an odd number of reflections)."""
        low, width, _, inter = self._on(y)
        return inter & (torch.remainder(y - low, 2.0 * width) > width)

    def log_density(self, y: torch.Tensor, mean: torch.Tensor, sd: torch.Tensor | float) -> torch.Tensor:
        """``[n]`` log density at ``y [n, d]`` (in the support) of ``fold(N(mean, diag(sd^2)))``.

        ``mean [n, d]`` may lie anywhere; ``sd`` (a float, ``[d]`` or ``[n, d]``, > 0) are the proposal's
        scales.
        """
        sd = torch.as_tensor(sd, dtype=y.dtype, device=y.device).expand_as(y)
        log_norm = -torch.log(sd) - _LOG_SQRT_2PI
        plain = -0.5 * ((y - mean) / sd) ** 2 + log_norm
        if self.is_real:
            return plain.sum(1)
        low, width, circ, inter = self._on(y)
        # images y + k * period (circle) and also 2 low - y + k * period (interval, period 2W)
        period = torch.where(inter, 2.0 * width, width)
        n_img = int(math.ceil(float((_TAIL_SD * sd / period)[:, circ | inter].max()))) + 1
        shifts = torch.arange(-n_img, n_img + 1, dtype=y.dtype, device=y.device)

        def images(point: torch.Tensor) -> torch.Tensor:
            # nearest image of ``point`` to the mean, then n_img periods on either side: [n, d, 2 n_img + 1]
            d = point - mean
            d = d - period * torch.round(d / period)
            z = (d[..., None] + period[..., None] * shifts) / sd[..., None]
            return torch.logsumexp(-0.5 * z**2, -1)

        folded = images(y)
        folded = torch.where(inter, torch.logaddexp(folded, images(2.0 * low - y)), folded)
        return torch.where(circ | inter, folded + log_norm, plain).sum(1)
