"""Monotone rational-quadratic (RQ) splines: knots, forward and inverse with log-derivatives.

The spline of Durkan et al. (2019, "Neural Spline Flows") maps ``[x_0, x_K]`` onto
``[y_0, y_K]`` through ``K`` bins with knots ``(x_k, y_k)`` and positive knot derivatives
``d_k``. In bin ``k``, with ``w = x_{k+1} - x_k``, ``h = y_{k+1} - y_k``, ``s = h / w`` and
``xi = (x - x_k) / w`` in ``[0, 1]``::

    y = y_k + h (s xi^2 + d_k xi (1 - xi)) / (s + (d_{k+1} + d_k - 2 s) xi (1 - xi))
    dy/dx = s^2 (d_{k+1} xi^2 + 2 s xi (1 - xi) + d_k (1 - xi)^2) / (s + (...) xi (1 - xi))^2

The inverse solves a quadratic in ``xi`` (the numerically stable root). Boundary
conditions are the caller's: ``d_0 = d_K = 1`` gives linear (identity) tails on an unbounded
dimension; ``d_0 = d_K`` on ``[low, low + period)`` gives a diffeomorphism of the circle
(Rezende et al. 2020, "Normalizing Flows on Tori and Spheres").

All functions broadcast over leading dimensions: ``x`` is ``[...]``, knots and derivatives
``[..., K + 1]``.

Examples
--------
>>> import torch
>>> raw = torch.zeros(1, 4)
>>> kx = knots(raw, torch.tensor(-1.0), torch.tensor(1.0))
>>> d = derivatives(torch.zeros(1, 5))
>>> y, ld = rq_spline(torch.tensor([0.3]), kx, kx, d)   # equal knots, unit slopes: identity
>>> round(float(y), 6), abs(round(float(ld), 6))
(0.3, 0.0)
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

__all__ = ["knots", "derivatives", "rq_spline"]


def knots(raw: torch.Tensor, low: torch.Tensor, high: torch.Tensor, min_bin: float = 1e-3) -> torch.Tensor:
    """Knot positions from unnormalised bin sizes.

    Parameters
    ----------
    raw : Tensor ``[..., K]``
        Unnormalised bin sizes (any real values; ``0`` gives equal bins).
    low, high : Tensor broadcastable to ``raw[..., 0]``
        The interval ``[low, high]`` covered by the knots.
    min_bin : float
        Smallest bin, as a fraction of ``high - low``; ``K * min_bin < 1``.

    Returns
    -------
    Tensor ``[..., K + 1]``
        Strictly increasing knots; bin sizes are ``(min_bin + (1 - K min_bin) softmax(raw))
        (high - low)`` and the end knots are exactly ``low`` and ``high``.
    """
    K = raw.shape[-1]
    if min_bin * K >= 1:
        raise ValueError("min_bin * n_bins must be < 1")
    e = torch.exp(raw - raw.amax(dim=-1, keepdim=True))  # softmax; torch.softmax is slow on short rows
    frac = min_bin + (1 - min_bin * K) * e / e.sum(dim=-1, keepdim=True)
    cum = torch.cumsum(frac, dim=-1)
    low = torch.as_tensor(low, dtype=raw.dtype, device=raw.device)[..., None]
    high = torch.as_tensor(high, dtype=raw.dtype, device=raw.device)[..., None]
    inner = low + (high - low) * cum[..., :-1]
    low = low.expand(*raw.shape[:-1], 1)
    high = high.expand(*raw.shape[:-1], 1)
    return torch.cat([low, inner, high], dim=-1)


def derivatives(raw: torch.Tensor, min_derivative: float = 1e-3) -> torch.Tensor:
    """Positive knot derivatives ``min_derivative + softplus(raw + c)``.

    Parameters
    ----------
    raw : Tensor ``[...]``
        Unconstrained values; ``c`` is chosen so that ``raw = 0`` gives exactly 1 (identity).
    min_derivative : float
        Lower bound of the derivatives, in ``(0, 1)``.

    Returns
    -------
    Tensor ``[...]``
        Derivatives ``> min_derivative``.
    """
    c = math.log(math.expm1(1.0 - min_derivative))
    return min_derivative + F.softplus(raw + c)


def _gather(t: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    return t.gather(-1, idx[..., None])[..., 0]


def _keep_in(v: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
    """Rounding guard: keep ``v`` in ``[lo, hi]`` (gradient flows through ``v`` on ties)."""
    return torch.where(v < lo, lo, torch.where(v > hi, hi, v))


def rq_spline(x: torch.Tensor, kx: torch.Tensor, ky: torch.Tensor, d: torch.Tensor,
              inverse: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Evaluate the RQ spline (or its inverse) elementwise.

    Parameters
    ----------
    x : Tensor ``[...]``
        Inputs, inside ``[kx[..., 0], kx[..., -1]]`` (forward) or ``[ky[..., 0], ky[..., -1]]``
        (inverse). Inputs outside are treated as lying in the first/last bin's end point.
    kx, ky : Tensor ``[..., K + 1]``
        Increasing knot positions on the input and output side (forward direction).
    d : Tensor ``[..., K + 1]``
        Positive derivatives at the knots.
    inverse : bool
        Apply the inverse map instead.

    Returns
    -------
    out : Tensor ``[...]``
        Spline value (forward) or preimage (inverse); inside bin ``k`` it lies in
        ``[y_k, y_{k+1}]`` (resp. ``[x_k, x_{k+1}]``) -- rounding is kept inside the bin.
    log_det : Tensor ``[...]``
        ``log |d out / d x|`` of the map applied.
    """
    K = kx.shape[-1] - 1
    search = ky if inverse else kx
    idx = (x[..., None] >= search[..., 1:K]).sum(-1)  # bin index in 0..K-1
    xk, xk1 = _gather(kx, idx), _gather(kx, idx + 1)
    yk, yk1 = _gather(ky, idx), _gather(ky, idx + 1)
    dk, dk1 = _gather(d, idx), _gather(d, idx + 1)
    w, h = xk1 - xk, yk1 - yk
    s = h / w
    if inverse:
        dy = (x - yk).clamp(min=0.0)
        tmp = dk1 + dk - 2 * s
        a = h * (s - dk) + dy * tmp
        b = h * dk - dy * tmp
        c = -s * dy
        disc = (b * b - 4 * a * c).clamp(min=0.0)
        xi = (2 * c / (-b - torch.sqrt(disc))).clamp(0.0, 1.0)
        out = _keep_in(xk + xi * w, xk, xk1)
    else:
        xi = ((x - xk) / w).clamp(0.0, 1.0)
    omx = xi * (1 - xi)
    den = s + (dk1 + dk - 2 * s) * omx
    log_deriv = (2 * torch.log(s) + torch.log(dk1 * xi * xi + 2 * s * omx + dk * (1 - xi) ** 2)
                 - 2 * torch.log(den))
    if inverse:
        return out, -log_deriv
    y = yk + h * (s * xi * xi + dk * omx) / den
    return _keep_in(y, yk, yk1), log_deriv
