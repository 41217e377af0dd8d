"""Annealed sampling: annealed importance sampling / SMC from a base density to a target.

Generic and exact: the annealer works on callables ``[n, d] -> [n]`` (log densities) and knows
nothing of flows or OpenMM; it sits above ``analysis`` and below ``model`` in the layer order
(the generator uses it for annealed samples, `BoltzmannGenerator.sample` with ``anneal=``).

- :mod:`.path`: the geometric path ``pi_b ∝ q^(1-b) p^b`` (`GeometricPath`, `ValueAndGrad`);
- :mod:`.kernels`: `MALA` and `HMC` (local) and `Independence` (proposals from ``q``, global),
  Metropolis-Hastings kernels exactly invariant for ``pi_b``;
- :mod:`.schedule`: `FixedSchedule` (exactly unbiased) and `AdaptiveSchedule` (conditional ESS);
- :mod:`.support`: `Support`, circles and reflecting intervals: proposals folded in, exactly;
- :mod:`.resampling`: ESS-triggered systematic resampling (`Resampler`);
- :mod:`.anneal`: `anneal` and its `AnnealConfig`; :mod:`.result`: `AnnealResult`;
- :mod:`.backward`: `backward_log_weights`, the backward path from a target point (annealed MCMC moves).

Examples
--------
>>> import math, torch
>>> from openmm_bg.sampling import AnnealConfig, anneal
>>> x0 = torch.randn(500, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
>>> log_q = lambda x: -0.5 * (x**2).sum(1) - math.log(2 * math.pi)
>>> result = anneal(log_q, lambda x: -(x**2).sum(1), x0, AnnealConfig(adaptive=False, n_levels=8, seed=0))
>>> abs(result.log_normalizer - math.log(math.pi)) < 0.05  # Z = pi
True
"""

from .anneal import AnnealConfig, anneal, population_scale
from .backward import BackwardPaths, backward_log_weights
from .kernels import HMC, MALA, Independence, Kernel, MoveStats
from .path import GeometricPath, PathPoint, ValueAndGrad
from .resampling import Resampler, log_mean_exp
from .result import AnnealResult
from .schedule import AdaptiveSchedule, FixedSchedule, conditional_ess_fraction
from .support import Support

__all__ = ["anneal", "AnnealConfig", "AnnealResult", "FixedSchedule", "AdaptiveSchedule", "MALA", "HMC",
           "Independence", "Kernel", "MoveStats", "GeometricPath", "PathPoint", "ValueAndGrad", "Resampler",
           "log_mean_exp", "conditional_ess_fraction", "Support", "population_scale", "backward_log_weights",
           "BackwardPaths"]
