"""Annealed importance sampling / sequential Monte Carlo from a base density q to a target p.

Particles ``x0 ~ q`` are carried along the geometric path ``pi_b ∝ q^(1-b) p^b`` through
``0 = b_0 < b_1 < ... < b_K = 1``. Level ``k``:

1. reweight: ``log w += (b_k - b_{k-1}) (log p - log q)`` at the particles as they are, i.e. *before*
   the level's kernel moves them (evaluating it after the move is a different, biased estimator);
2. resample (systematic) if the population's ESS / n is below ``resample_threshold`` (never at
   the last level); ``log Z-hat`` collects the log mean weight of every closed epoch;
3. move: ``mcmc_steps_per_level`` steps of a kernel (`MALA`, `HMC`) that leaves ``pi_{b_k}`` invariant,
   then ``independence_steps`` proposals drawn from ``q`` itself (`Independence`, global moves;
   needs ``sample_q``), also ``pi_{b_k}``-invariant.

``Z-hat = exp(log_normalizer)`` estimates ``Z = int p dx``; self-normalised averages with the final
weights estimate expectations under ``p / Z``. With a `FixedSchedule` (betas and step sizes frozen
before the run) ``Z-hat`` is exactly unbiased; the adaptive schedule makes both consistent with an
O(1/N) bias.

The annealer knows nothing of flows or OpenMM: ``log_q`` and ``log_target`` are any callables
``[n, d] -> [n]`` (e.g. a target ``p^2 / q`` for flow annealed bootstrap). Kernels take gradients
of them with ``torch.autograd``; wrap a callable in `ValueAndGrad` to supply them yourself.
``log_target`` returns ``-inf`` outside its domain: such particles get weight zero and moves there
are rejected (counted, never applied, never clamped). Raw target values are used: regularise
nothing. The log weights are float64 and never NaN.

Examples
--------
A unit Gaussian from a broader one; ``Z = sqrt(2 pi)``:

>>> import math, torch
>>> g = torch.Generator().manual_seed(0)
>>> x0 = 2.0 * torch.randn(2000, 1, generator=g, dtype=torch.float64)
>>> def log_q(x):
...     return -0.5 * (x[:, 0] / 2.0) ** 2 - math.log(2.0 * math.sqrt(2.0 * math.pi))
>>> result = anneal(log_q, lambda x: -0.5 * x[:, 0] ** 2, x0, AnnealConfig(step_size=0.5, seed=0))
>>> abs(result.log_normalizer - 0.5 * math.log(2.0 * math.pi)) < 0.05
True
>>> result.betas[-1].item(), result.positions.shape
(1.0, torch.Size([2000, 1]))
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from .._validation import non_negative_int, open_fraction, positive, positive_int
from .kernels import HMC, MALA, Independence, Kernel, MoveStats
from .path import GeometricPath, PathPoint
from .resampling import Resampler, log_mean_exp
from .result import AnnealResult
from .schedule import AdaptiveSchedule, FixedSchedule
from .support import Support

__all__ = ["AnnealConfig", "anneal", "population_scale"]

_KERNELS = ("mala", "hmc")
_SEED_SALT = 0xA22EA1  # decorrelates the run's generator from torch.manual_seed(seed)


@dataclass(frozen=True)
class AnnealConfig:
    """Settings of an annealing run (validated on construction).

    Parameters
    ----------
    n_levels : int
        Fixed mode without ``schedule``: number of equally spaced levels. Adaptive mode: the most
        levels; the last one goes to beta = 1.
    kernel : {"mala", "hmc"}
        Markov kernel of every level.
    mcmc_steps_per_level : int
        Kernel steps per level (>= 1).
    step_size : float
        Kernel step size in units of ``x`` (> 0): of every level in fixed mode, of the first level
        in adaptive mode.
    adaptive : bool
        Choose betas by conditional ESS and tune step sizes (`AdaptiveSchedule`, consistent,
        O(1/N) bias). False: `FixedSchedule` (exactly unbiased ``Z-hat``).
    target_cess : float
        Adaptive mode: conditional ESS / n per level, in (0, 1).
    target_acceptance : float or None
        Adaptive mode: acceptance the step size is tuned to, in (0, 1); None: 0.574 for MALA,
        0.65 for HMC.
    resample_threshold : float
        Resample when ESS / n falls below it, in [0, 1]; 0 never resamples.
    leapfrog_steps : int
        HMC leapfrog steps per kernel step (>= 1).
    independence_steps : int
        Proposals drawn from ``q`` per level after the kernel's steps (`Independence`, >= 0):
        global moves that can reach basins local steps cannot, at one evaluation each; their
        acceptance is recorded apart and never tunes the step size. Needs ``sample_q`` in
        `anneal` (the generator supplies it).
    seed : int or None
        Seed of the run's randomness (same seed, same result); None: a fresh one. The generator is
        seeded with a hash of it, not with ``seed`` itself, so that a caller who drew ``x0`` with
        ``torch.Generator().manual_seed(seed)`` does not get the same normals again as kernel noise
        (noise correlated with ``x0`` biases the weights).
    schedule : FixedSchedule or None
        Frozen betas and step sizes (e.g. ``FixedSchedule.from_result(pilot)``); they replace
        ``n_levels`` and ``step_size``. Requires ``adaptive=False``.
    precondition : bool
        Adaptive mode: scale each dimension's moves by the population's weighted standard
        deviation there (circles: the circular one), measured after the level's reweighting and
        resampling, before its kernel runs (a diagonal preconditioner; consistent, O(1/N) bias).
        Fixed mode takes the scales from the schedule (`FixedSchedule.scales`).
    progress : bool
        Show a progress bar (tqdm).
    """

    n_levels: int = 32
    kernel: str = "mala"
    mcmc_steps_per_level: int = 1
    step_size: float = 0.1
    adaptive: bool = True
    target_cess: float = 0.8
    target_acceptance: float | None = None
    resample_threshold: float = 0.5
    leapfrog_steps: int = 5
    independence_steps: int = 0
    seed: int | None = None
    schedule: FixedSchedule | None = None
    precondition: bool = False
    progress: bool = False

    def __post_init__(self):
        for name in ("n_levels", "mcmc_steps_per_level", "leapfrog_steps"):
            object.__setattr__(self, name, positive_int(name, getattr(self, name)))
        object.__setattr__(self, "independence_steps", non_negative_int("independence_steps", self.independence_steps))
        object.__setattr__(self, "step_size", positive("step_size", self.step_size, "units of x"))
        if self.kernel not in _KERNELS:
            raise ValueError(f"kernel must be one of {_KERNELS}, got {self.kernel!r}")
        open_fraction("target_cess", self.target_cess, " (1 would never let beta grow)")
        if self.target_acceptance is not None:
            open_fraction("target_acceptance", self.target_acceptance)
        Resampler(self.resample_threshold)  # validates the threshold
        if self.seed is not None and (isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0):
            raise ValueError(f"seed must be a non-negative integer or None, got {self.seed!r}")
        if self.schedule is not None:
            if not isinstance(self.schedule, FixedSchedule):
                raise ValueError(f"schedule must be a FixedSchedule, got {type(self.schedule).__name__}")
            if self.adaptive:
                raise ValueError("a fixed schedule was given with adaptive=True; pass adaptive=False")
        if self.precondition and not self.adaptive:
            raise ValueError("precondition=True estimates scales from the particles (adaptive mode); with "
                             "adaptive=False pass frozen scales in FixedSchedule(..., scales=...)")

    def make_kernel(self) -> Kernel:
        """The configured kernel."""
        return MALA() if self.kernel == "mala" else HMC(self.leapfrog_steps)

    def make_schedule(self, kernel: Kernel) -> FixedSchedule | AdaptiveSchedule:
        """The configured schedule (``kernel`` supplies the default target acceptance)."""
        if self.schedule is not None:
            return self.schedule
        if not self.adaptive:
            return FixedSchedule.linear(self.n_levels, self.step_size)
        target = kernel.target_acceptance if self.target_acceptance is None else self.target_acceptance
        return AdaptiveSchedule(self.step_size, self.target_cess, target, self.n_levels)


def population_scale(x: torch.Tensor, log_w: torch.Tensor, support: Support | None = None) -> torch.Tensor:
    """``[d]`` weighted standard deviation of the particles ``x [n, d]`` per dimension (float64).

    Circular dimensions of ``support``: the circular standard deviation ``sqrt(-2 ln R) P / (2 pi)``
    (``R`` the weighted mean resultant length, ``P`` the period), capped at ``P / sqrt(12)`` (uniform);
    interval dimensions are capped at ``width / sqrt(12)`` too. A degenerate dimension (all particles
    equal) gets ``1e-12`` times the largest scale, never 0.
    """
    w = torch.softmax(torch.where(torch.isfinite(log_w), log_w, -math.inf), 0)[:, None]
    mean = (w * x).sum(0)
    sd = ((w * (x - mean) ** 2).sum(0)).sqrt()
    if support is not None and not support.is_real:
        low, width = support.low.to(x), support.width.to(x)
        angle = 2.0 * math.pi * (x - low) / width
        r = torch.hypot((w * angle.cos()).sum(0), (w * angle.sin()).sum(0)).clamp(1e-300, 1.0)
        circ_sd = (-2.0 * r.log()).sqrt() * width / (2.0 * math.pi)
        bounded = (support.circular | support.interval).to(x.device)
        sd = torch.where(support.circular.to(x.device), circ_sd, sd)
        sd = torch.where(bounded, torch.minimum(sd, width / math.sqrt(12.0)), sd)
    return torch.clamp(sd, min=1e-12 * float(sd.max()) if float(sd.max()) > 0 else 1.0)


def run_generator(config: AnnealConfig, device) -> torch.Generator:
    """The run's ``torch.Generator`` on ``device``: seeded with a hash of ``config.seed`` (fresh if None)."""
    generator = torch.Generator(device=device)
    if config.seed is None:
        generator.seed()
    else:
        generator.manual_seed(int(np.random.SeedSequence([config.seed, _SEED_SALT]).generate_state(1, np.uint64)[0]))
    return generator


def _initial_state(path: GeometricPath, x0) -> PathPoint:
    if not isinstance(x0, torch.Tensor) or x0.dim() != 2 or x0.shape[0] < 1 or x0.shape[1] < 1:
        shape = list(x0.shape) if isinstance(x0, torch.Tensor) else type(x0).__name__
        raise ValueError(f"x0 must be a tensor [n, d] of samples from q with n, d >= 1, got {shape}")
    if not torch.isfinite(x0).all():
        raise ValueError("x0 has non-finite entries; drop the failed samples from q before annealing")
    if path.support is not None:
        path.support.check(x0.detach().to(torch.float64))
    state = path.evaluate(x0.detach().to(torch.float64))
    bad_q = int((~torch.isfinite(state.log_q)).sum())
    if bad_q:
        raise ValueError(f"log_q is not finite at {bad_q} of the x0 samples; x0 must be drawn from q")
    bad_p = int((torch.isnan(state.log_p) | torch.isposinf(state.log_p)).sum())
    if bad_p:
        raise ValueError(f"log_target is NaN or +inf at {bad_p} of the x0 samples; return -inf for states "
                         "that should get weight zero")
    return state


def anneal(log_q, log_target, x0: torch.Tensor, config: AnnealConfig | None = None,
           support: Support | None = None, sample_q=None) -> AnnealResult:
    """Anneal samples of a normalised ``q`` to an unnormalised ``p``; estimate ``Z`` and weights.

    Parameters
    ----------
    log_q : callable or ValueAndGrad
        ``[n, d] -> [n]`` normalised log density of the base; finite at ``x0``.
    log_target : callable or ValueAndGrad
        ``[n, d] -> [n]`` unnormalised log density of the target; ``-inf`` where it is zero.
    x0 : torch.Tensor
        ``[n, d]`` samples from ``q`` (computed in float64).
    config : AnnealConfig, optional
        Schedule, kernel, resampling and seed; default ``AnnealConfig()``.
    support : Support, optional
        The domain of ``q`` and ``p`` per dimension (circles, intervals): proposals are folded into
        it exactly instead of being rejected at its edges; ``x0`` must lie in it. Default: the real
        line in every dimension.
    sample_q : callable, optional
        ``(n, generator) -> [n, d]`` exact draws from ``q`` (``generator`` a ``torch.Generator``);
        required when ``config.independence_steps > 0``.

    Returns
    -------
    AnnealResult
        Final particles and log weights, ``log Z-hat``, the schedule used, acceptance and cost.

    Raises
    ------
    ValueError
        Bad ``x0`` (or outside ``support``), ``log_q`` not finite at ``x0``, or ``log_target`` NaN /
        ``+inf`` at ``x0``.
    RuntimeError
        Every particle lost its weight (``p`` is zero at all of them).
    """
    from tqdm.auto import tqdm

    config = AnnealConfig() if config is None else config
    if not isinstance(config, AnnealConfig):
        raise ValueError(f"config must be an AnnealConfig, got {type(config).__name__}")
    if config.independence_steps and sample_q is None:
        raise ValueError("independence_steps > 0 proposes from q: pass sample_q=(n, generator) -> [n, d] draws "
                         "from q, or set independence_steps=0")
    independence = Independence(sample_q) if config.independence_steps else None
    path = GeometricPath(log_q, log_target, support)
    state = _initial_state(path, x0)
    kernel = config.make_kernel()
    schedule = config.make_schedule(kernel)
    resampler = Resampler(config.resample_threshold)
    generator = run_generator(config, state.x.device)

    n, n_dim = state.x.shape
    log_w = torch.zeros(n, dtype=torch.float64, device=state.x.device)
    lineage = torch.arange(n, device=state.x.device)
    log_z, ancestors = 0.0, []
    betas, steps, acceptance, invalid, resampled, scales = [0.0], [], [], [], [], []
    independence_acceptance = []
    with tqdm(total=schedule.max_levels, disable=not config.progress, desc="annealing", unit="level") as bar:
        while betas[-1] < 1.0:
            level, beta = len(betas), betas[-1]
            slope = state.log_p - state.log_q  # -inf where p is zero: that particle's weight becomes 0
            new_beta = schedule.next_beta(level, beta, log_w, slope)
            log_w = log_w + (new_beta - beta) * slope
            if torch.isnan(log_w).any() or torch.isposinf(log_w).any():
                raise RuntimeError(f"non-finite log density difference at level {level}: log_q or "
                                   "log_target changed their value at an unmoved particle")
            if torch.isneginf(log_w).all():
                raise RuntimeError(f"every particle has weight zero at level {level} (beta = {new_beta:.3g}): "
                                   "log_target is -inf at all of them")
            resample = new_beta < 1.0 and resampler.should_resample(log_w)
            if resample:
                log_z += log_mean_exp(log_w)
                index = resampler.ancestors(log_w, generator)
                state, lineage = state.take(index), lineage[index]
                ancestors.append(index)
                log_w = torch.zeros_like(log_w)
            step = schedule.step_size(level, steps[-1] if steps else None, acceptance[-1] if acceptance else None)
            if config.precondition:
                scale = population_scale(state.x, log_w, support)
            else:
                scale = schedule.scale(level) if isinstance(schedule, FixedSchedule) else None
            scales.append(scale)
            stats = MoveStats()
            for _ in range(config.mcmc_steps_per_level):
                state, s = kernel.step(path, state, new_beta, step, generator, scale)
                stats = stats + s
            global_stats = MoveStats()
            for _ in range(config.independence_steps):
                state, s = independence.step(path, state, new_beta, None, generator)
                global_stats = global_stats + s
            betas.append(new_beta)
            steps.append(step)
            acceptance.append(stats.acceptance)  # the local kernel's only: it tunes the step size
            independence_acceptance.append(global_stats.acceptance)
            invalid.append(stats.n_invalid + global_stats.n_invalid)
            resampled.append(resample)
            bar.update(1)
            bar.set_postfix(beta=f"{new_beta:.3g}", acceptance=f"{stats.acceptance:.2f}")
    log_z += log_mean_exp(log_w)

    def f64(values):
        return torch.tensor(values, dtype=torch.float64)

    return AnnealResult(
        positions=state.x, log_weights=log_w, log_target=state.log_p,
        log_normalizer=log_z,
        betas=f64(betas), step_sizes=f64(steps), acceptance=f64(acceptance),
        n_invalid=torch.tensor(invalid, dtype=torch.long), resampled=torch.tensor(resampled, dtype=torch.bool),
        scales=None if all(c is None for c in scales) else torch.stack(
            [torch.ones(n_dim, dtype=torch.float64) if c is None else c.cpu() for c in scales]),
        ancestors=ancestors, lineage=lineage,
        n_target_evaluations=path.n_target_evaluations, n_gradient_evaluations=path.n_gradient_evaluations,
        independence_acceptance=f64(independence_acceptance) if independence is not None else None)
