"""What an annealing run returns: weighted particles, the normaliser estimate and run statistics."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..analysis import reweighting

__all__ = ["AnnealResult"]


@dataclass(frozen=True)
class AnnealResult:
    """Weighted particles at beta = 1 (the target) and what it cost to get them.

    Attributes
    ----------
    positions : torch.Tensor
        ``[n, d]`` final particles.
    log_weights : torch.Tensor
        ``[n]`` float64 unnormalised log weights accumulated since the last resampling (there is
        none after the last level); ``-inf`` is weight zero, never NaN.
    log_target : torch.Tensor
        ``[n]`` float64 ``log p`` at ``positions``.
    log_normalizer : float
        ``log Z-hat``: the sum over resampling epochs of the log mean of the epoch's weights.
        ``Z-hat`` is unbiased for ``Z = int p`` with a `FixedSchedule`.
    betas : torch.Tensor
        ``[K + 1]`` float64, from 0 to 1.
    step_sizes : torch.Tensor
        ``[K]`` float64, the step size of each level.
    acceptance : torch.Tensor
        ``[K]`` float64 accepted fraction of each level's proposals (NaN without proposals).
    n_invalid : torch.Tensor
        ``[K]`` long: proposals rejected per level because they were out of domain or non-finite.
    resampled : torch.Tensor
        ``[K]`` bool: whether the population was resampled at level ``k`` (before its kernel).
    ancestors : list of torch.Tensor
        One ``[n]`` long tensor per resampling event: particle ``i`` after it descends from particle
        ``ancestors[j][i]`` before it.
    lineage : torch.Tensor
        ``[n]`` long: the index in ``x0`` each final particle descends from.
    n_target_evaluations, n_gradient_evaluations : int
        Rows of ``log_target`` evaluated (calls x batch), and of those with a gradient.
    scales : torch.Tensor or None
        ``[K, d]`` float64 per-dimension kernel scales of each level (preconditioned runs), else None.
    independence_acceptance : torch.Tensor or None
        ``[K]`` float64 acceptance of the proposals from ``q`` per level
        (``AnnealConfig.independence_steps > 0``), else None.
    """

    positions: torch.Tensor
    log_weights: torch.Tensor
    log_target: torch.Tensor
    log_normalizer: float
    betas: torch.Tensor
    step_sizes: torch.Tensor
    acceptance: torch.Tensor
    n_invalid: torch.Tensor
    resampled: torch.Tensor
    ancestors: list[torch.Tensor] = field(repr=False)
    lineage: torch.Tensor = field(repr=False)
    n_target_evaluations: int = 0
    n_gradient_evaluations: int = 0
    scales: torch.Tensor | None = field(default=None, repr=False)
    independence_acceptance: torch.Tensor | None = field(default=None, repr=False)

    @property
    def n_levels(self) -> int:
        """Number of levels ``K``."""
        return int(self.step_sizes.numel())

    @property
    def n_distinct_ancestors(self) -> int:
        """Distinct initial particles the final population descends from."""
        return int(torch.unique(self.lineage).numel())

    def _log_w(self):
        return self.log_weights.detach().cpu().numpy()

    def ess(self) -> float:
        """Kish effective sample size of the final weights.

        It measures the weights only; resampled particles that share an ancestor are not
        independent (see `n_distinct_ancestors`).
        """
        return reweighting.kish_ess(self._log_w())

    def pareto_k(self) -> float:
        """Pareto-k tail diagnostic of the final weights (above 0.7: unreliable)."""
        return reweighting.pareto_k(self._log_w())

    def diagnose(self, warn: bool = True) -> reweighting.WeightDiagnostics:
        """ESS, largest weight share and Pareto k of the final weights."""
        return reweighting.diagnose(self._log_w(), warn=warn)
