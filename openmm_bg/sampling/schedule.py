"""Annealing schedules: the inverse temperatures ``0 = b_0 < ... < b_K = 1`` and per-level step sizes.

- `FixedSchedule`: betas and step sizes given in advance. With them the normaliser estimate of
  `anneal` is exactly unbiased and weighted averages are exact up to the usual O(1/N) of
  self-normalisation. Get one from a pilot run with `FixedSchedule.from_result`: a schedule tuned
  on *other* particles is fixed with respect to the run that uses it.
- `AdaptiveSchedule`: the next beta by bisection so that the conditional ESS of the level's
  incremental weights hits ``target_cess`` (Zhou, Johansen & Aston, 2016), and the step size from
  the previous level's acceptance. Both depend on the particles, so the estimates are only
  consistent, with an O(1/N) bias. Adaptation only ever uses moves already made and accepted or
  rejected (never the move being tested), so every kernel stays exactly ``pi_b``-invariant.

A schedule answers two questions for the annealer: `next_beta` (before level ``k``'s weights
are updated) and `step_size` (before its kernel runs).

Examples
--------
>>> FixedSchedule.linear(4, step_size=0.1).betas
(0.0, 0.25, 0.5, 0.75, 1.0)
>>> import torch
>>> log_w, slope = torch.zeros(1000, dtype=torch.float64), torch.linspace(-10, 0, 1000, dtype=torch.float64)
>>> beta = AdaptiveSchedule(target_cess=0.9).next_beta(1, 0.0, log_w, slope)
>>> 0.0 < beta < 1.0, round(conditional_ess_fraction(log_w, beta * slope), 6)
(True, 0.9)
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import torch

from .._validation import open_fraction, positive, positive_int

__all__ = ["FixedSchedule", "AdaptiveSchedule", "conditional_ess_fraction"]


def conditional_ess_fraction(log_w: torch.Tensor, increment: torch.Tensor) -> float:
    """Conditional ESS / n of log incremental weights ``increment [n]`` given log weights ``log_w [n]``.

    ``(sum_i W_i v_i)^2 / (sum_i W_i v_i^2)`` with normalised weights ``W`` and ``v = exp(increment)``
    (1 for a constant increment). Particles with weight zero, or that every positive step kills
    (``increment = -inf``), are left out: no choice of beta keeps them.
    """
    keep = torch.isfinite(log_w) & torch.isfinite(increment)
    if not keep.any():
        return float("nan")
    lw, inc = log_w[keep], increment[keep]
    log_num = 2.0 * torch.logsumexp(lw + inc, 0)
    log_den = torch.logsumexp(lw + 2.0 * inc, 0) + torch.logsumexp(lw, 0)
    return float(torch.exp(log_num - log_den))


@dataclass(frozen=True)
class FixedSchedule:
    """Betas and step sizes fixed before the run (the exactly unbiased mode).

    Parameters
    ----------
    betas : sequence of float
        ``[K + 1]``, strictly increasing from 0 to 1.
    step_sizes : sequence of float
        ``[K]``, the step size of level ``k = 1..K`` (units of ``x``), each > 0.
    scales : sequence of sequences of float, optional
        ``[K, d]`` per-dimension kernel scales (diagonal preconditioner) of each level, each > 0;
        None: 1 everywhere.
    """

    betas: tuple[float, ...]
    step_sizes: tuple[float, ...]
    scales: tuple[tuple[float, ...], ...] | None = None

    def __post_init__(self):
        betas = tuple(float(b) for b in self.betas)
        steps = tuple(positive("every step size", s, "units of x") for s in self.step_sizes)
        if len(betas) < 2 or betas[0] != 0.0 or betas[-1] != 1.0:
            raise ValueError(f"betas must run from 0 to 1 with at least one level, got {betas}")
        if any(b1 <= b0 for b0, b1 in zip(betas[:-1], betas[1:])):
            raise ValueError(f"betas must increase strictly, got {betas}")
        if len(steps) != len(betas) - 1:
            raise ValueError(f"one step size per level: {len(betas) - 1} levels but {len(steps)} step sizes")
        object.__setattr__(self, "betas", betas)
        object.__setattr__(self, "step_sizes", steps)
        if self.scales is not None:
            scales = tuple(tuple(float(v) for v in row) for row in self.scales)
            if len(scales) != len(steps) or len({len(row) for row in scales}) != 1:
                raise ValueError(f"scales must be [K, d] with K = {len(steps)} levels, one row of d scales each")
            if not all(math.isfinite(v) and v > 0.0 for row in scales for v in row):
                raise ValueError("every scale must be finite and > 0")
            object.__setattr__(self, "scales", scales)

    @property
    def max_levels(self) -> int:
        """Number of levels ``K``."""
        return len(self.step_sizes)

    @classmethod
    def linear(cls, n_levels: int, step_size: float) -> FixedSchedule:
        """``n_levels`` equally spaced betas, one step size for all levels."""
        n_levels = positive_int("n_levels", n_levels)
        step_size = positive("step_size", step_size, "units of x")
        return cls(tuple(k / n_levels for k in range(n_levels + 1)), (step_size,) * n_levels)

    @classmethod
    def from_result(cls, result) -> FixedSchedule:
        """The betas and step sizes an (adaptive) pilot `AnnealResult` used, frozen for new runs."""
        scales = None if result.scales is None else tuple(map(tuple, result.scales.tolist()))
        return cls(tuple(result.betas.tolist()), tuple(result.step_sizes.tolist()), scales)

    def next_beta(self, level: int, beta: float, log_w: torch.Tensor, slope: torch.Tensor) -> float:
        """``b_level``."""
        return self.betas[level]

    def step_size(self, level: int, previous: float | None, acceptance: float | None) -> float:
        """The step size of ``level`` (1-based)."""
        return self.step_sizes[level - 1]

    def scale(self, level: int) -> torch.Tensor | None:
        """``[d]`` float64 kernel scales of ``level`` (1-based), or None (1 everywhere)."""
        return None if self.scales is None else torch.tensor(self.scales[level - 1], dtype=torch.float64)


@dataclass(frozen=True)
class AdaptiveSchedule:
    """Betas by conditional-ESS bisection, step sizes tuned towards a target acceptance.

    Parameters
    ----------
    initial_step_size : float
        Step size of the first level (units of ``x``).
    target_cess : float
        In (0, 1): conditional ESS / n of every level's incremental weights. Higher: more, smaller
        levels. 0.5 to 0.9 are usual.
    target_acceptance : float
        In (0, 1): the step size of level ``k`` is that of level ``k - 1`` times
        ``exp(2 (acceptance_{k-1} - target_acceptance))``.
    max_levels : int
        When level ``max_levels`` is reached, it goes straight to beta = 1 (with a warning).
    """

    initial_step_size: float = 0.1
    target_cess: float = 0.8
    target_acceptance: float = 0.574
    max_levels: int = 100

    def __post_init__(self):
        object.__setattr__(self, "initial_step_size", positive("step_size", self.initial_step_size, "units of x"))
        open_fraction("target_cess", self.target_cess, " (1 would never let beta grow)")
        open_fraction("target_acceptance", self.target_acceptance)
        object.__setattr__(self, "max_levels", positive_int("max_levels", self.max_levels))

    def next_beta(self, level: int, beta: float, log_w: torch.Tensor, slope: torch.Tensor) -> float:
        """The largest beta in ``(beta, 1]`` whose increments ``(b - beta) slope`` keep the target CESS.

        ``slope [n]`` is ``log p - log q`` at the particles (``-inf`` where ``p`` is zero).
        """
        if level >= self.max_levels:
            if level == self.max_levels and beta < 1.0:
                warnings.warn(f"the adaptive schedule reached n_levels = {self.max_levels} at beta = {beta:.3g}; "
                              "the last level jumps to beta = 1 (weights may degenerate): raise n_levels",
                              RuntimeWarning, stacklevel=3)
            return 1.0

        def cess(b: float) -> float:
            return conditional_ess_fraction(log_w, (b - beta) * slope)

        if not cess(1.0) < self.target_cess:
            return 1.0
        lo, hi = beta, 1.0
        for _ in range(60):
            mid = 0.5 * (lo + hi)
            if cess(mid) >= self.target_cess:
                lo = mid
            else:
                hi = mid
        return lo if lo > beta else hi

    def step_size(self, level: int, previous: float | None, acceptance: float | None) -> float:
        """First level: ``initial_step_size``; then tuned from the previous level's acceptance."""
        if previous is None:
            return float(self.initial_step_size)
        if acceptance is None or not math.isfinite(acceptance):
            return previous
        return previous * math.exp(2.0 * (acceptance - self.target_acceptance))
