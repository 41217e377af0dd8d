"""Resampling of a weighted particle population, triggered by its effective sample size.

`Resampler` decides (Kish ESS / n below a threshold) and draws ancestors by systematic resampling
(`openmm_bg.analysis.reweighting.resample`, seeded from the annealer's ``torch.Generator``).
A particle with weight zero is never drawn. The decision depends only on the current weights and
both outcomes keep the unnormalised particle measure unbiased, so ESS-triggered resampling keeps
the normaliser estimate unbiased.

Examples
--------
>>> import torch
>>> r = Resampler(threshold=0.5)
>>> log_w = torch.tensor([0.0, -float("inf"), -float("inf"), -float("inf")], dtype=torch.float64)
>>> r.should_resample(log_w), r.ancestors(log_w, torch.Generator().manual_seed(0)).tolist()
(True, [0, 0, 0, 0])
>>> round(log_mean_exp(torch.tensor([0.0, 2.0], dtype=torch.float64)), 4)  # log((1 + e^2) / 2)
1.4338
"""

from __future__ import annotations

import math

import torch

from ..analysis.reweighting import kish_ess, resample

__all__ = ["Resampler", "log_mean_exp"]


def log_mean_exp(log_w: torch.Tensor) -> float:
    """``log((1/n) sum exp(log_w))`` in float64; ``-inf`` when every weight is zero."""
    return float(torch.logsumexp(log_w.to(torch.float64), 0)) - math.log(log_w.numel())


class Resampler:
    """Systematic resampling when Kish ESS / n falls below ``threshold``.

    Parameters
    ----------
    threshold : float
        In ``[0, 1]``; 0 never resamples, 1 resamples whenever the weights are not all equal.
    """

    def __init__(self, threshold: float = 0.5):
        if not 0.0 <= threshold <= 1.0:
            raise ValueError(f"resample_threshold must be in [0, 1] (0 disables resampling), got {threshold!r}")
        self.threshold = float(threshold)

    def should_resample(self, log_w: torch.Tensor) -> bool:
        """True when the population's ESS / n is below the threshold."""
        if self.threshold == 0.0:
            return False
        return kish_ess(log_w.detach().cpu().numpy()) < self.threshold * log_w.numel() * (1.0 - 1e-12)

    def ancestors(self, log_w: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """``[n]`` long ancestor indices, drawn with probability proportional to ``exp(log_w)``."""
        seed = int(torch.randint(0, 2**62, (1,), generator=generator, device=generator.device))
        index = resample(log_w.detach().cpu().numpy(), seed=seed)
        return torch.as_tensor(index, dtype=torch.long, device=log_w.device)
