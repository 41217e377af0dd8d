"""Energy regularisation for training: the lin-log cut.

Early in KL training a flow proposes configurations with huge energies (overlapping atoms give
OpenMM's own finite but enormous values, failed evaluations give ``+inf``). The lin-log cut
keeps the loss and its gradient bounded:

    u -> u                                 if u < high
    u -> high + log(1 + u - high)          if u >= high
    then clamped at ``max``; non-finite u -> ``max`` with zero gradient.

It is used in training losses only, never in importance weights.

Molecules sit at very different absolute energies (alanine dipeptide in vacuum near -30 kT,
trpzip2 near -700 kT), so ``high`` and ``max`` can be given relative to a reference energy, e.g.
the energy of the system's reference structure or the mean energy of the training data.

Examples
--------
>>> import torch
>>> u = torch.tensor([-5.0, 10.0, 1e9, float("inf"), float("nan")], dtype=torch.float64)
>>> linlogcut(u, high=0.0, max=100.0)
tensor([-5.0000,  2.3979,  4.6151,  4.6151,  4.6151], dtype=torch.float64)
"""

from __future__ import annotations

import torch

__all__ = ["linlogcut", "LinLogCut", "DEFAULT_HIGH", "DEFAULT_MAX"]

#: Default start of the logarithmic regime, in kT above the reference energy.
DEFAULT_HIGH = 1e3
#: Default clamp, in kT above the reference energy (before the log compression).
DEFAULT_MAX = 1e9


def linlogcut(u: torch.Tensor, high: float = DEFAULT_HIGH, max: float = DEFAULT_MAX,
              reference: float | torch.Tensor | None = None) -> torch.Tensor:
    """Lin-log cut of reduced energies with a well-defined gradient everywhere.

    Parameters
    ----------
    u : torch.Tensor
        Reduced energies ``[batch]`` (kT), any float dtype; may contain ``inf``/``nan``.
    high : float
        Start of the logarithmic regime (kT). Absolute if ``reference`` is None, otherwise
        relative to it (``reference + high``).
    max : float
        Clamp (kT) applied *before* the log compression, absolute or relative like ``high``; the
        largest output is ``high + log(1 + max - high)``. Non-finite ``u`` map to that value.
        Must be >= ``high``.
    reference : float or torch.Tensor, optional
        Reference energy (kT), e.g. the energy of the reference structure. With the defaults
        (``high = 1000``, ``max = 1e9``) and a reference, the cut is sensible for any system.

    Returns
    -------
    torch.Tensor
        Same shape and dtype as ``u``; gradient 1 below ``high``, ``1 / (1 + u - high)`` above,
        and exactly 0 where ``u`` is clamped or non-finite (never NaN).

    Examples
    --------
    >>> import torch
    >>> u = torch.tensor([-710.0, -300.0, float("inf")], dtype=torch.float64, requires_grad=True)
    >>> v = linlogcut(u, high=100.0, reference=-700.0)  # trpzip2-like energies
    >>> v.sum().backward()
    >>> u.grad
    tensor([1.0000, 0.0033, 0.0000], dtype=torch.float64)
    """
    if reference is not None:
        high = high + reference
        max = max + reference
    high_t = torch.as_tensor(high, dtype=u.dtype, device=u.device)
    max_t = torch.as_tensor(max, dtype=u.dtype, device=u.device)
    if bool((max_t < high_t).any()):
        raise ValueError(f"linlogcut needs max >= high, got high={high}, max={max}")
    finite = torch.isfinite(u)
    # Replace non-finite entries before any arithmetic, so their gradient is 0 and never NaN.
    safe = torch.where(finite, u, max_t)
    clamped = torch.minimum(safe, max_t)
    excess = (clamped - high_t).clamp(min=0.0)  # zero (and zero gradient) below high
    return torch.where(clamped < high_t, clamped, high_t + torch.log1p(excess))


class LinLogCut(torch.nn.Module):
    """`linlogcut` as a module with fixed parameters.

    Parameters
    ----------
    high, max : float
        As in `linlogcut` (kT).
    reference : float, optional
        Reference energy (kT) that ``high`` and ``max`` are relative to.

    Examples
    --------
    >>> import torch
    >>> cut = LinLogCut(high=10.0, max=1e6)
    >>> cut(torch.tensor([5.0, 11.0], dtype=torch.float64))  # 10 + log(2)
    tensor([ 5.0000, 10.6931], dtype=torch.float64)
    """

    def __init__(self, high: float = DEFAULT_HIGH, max: float = DEFAULT_MAX, reference: float | None = None):
        super().__init__()
        self.high, self.max, self.reference = float(high), float(max), reference

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        return linlogcut(u, self.high, self.max, self.reference)

    def extra_repr(self) -> str:
        ref = "" if self.reference is None else f", reference={self.reference:g}"
        return f"high={self.high:g}, max={self.max:g}{ref}"
