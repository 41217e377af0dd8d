"""The backward path of annealed importance sampling: from a point of the target back to the base.

With a `FixedSchedule` ``0 = b_0 < ... < b_K = 1`` and kernels ``T_k`` that are *reversible* with
respect to ``pi_k = pi_{b_k}`` (`MALA`, `HMC`: Metropolis-Hastings kernels, ``mcmc_steps_per_level``
steps of the same kernel are reversible too), the forward run of `openmm_bg.sampling.anneal`
draws a path ``x_0 ~ q``, ``x_k ~ T_k(x_{k-1}, .)`` with the AIS log weight

    log W(x_0..x_K) = sum_k (b_k - b_{k-1}) [log p(x_{k-1}) - log q(x_{k-1})].

Its extended target, ``P(x_0..x_K) = p(x_K) / Z * prod_k T_k(x_k, x_{k-1})`` (reversibility makes
``T_k`` its own reversal), has ``P / Q = W / Z`` against the forward density
``Q = q(x_0) prod_k T_k(x_{k-1}, x_k)`` and the target ``p / Z`` as the marginal of ``x_K``. Given
the end ``x_K``, the rest of a path distributed as ``P`` is drawn by applying the kernels in
reverse order, ``x_{K-1} ~ T_K(x_K, .)``, ..., ``x_0 ~ T_1(x_1, .)``: what `backward_log_weights`
does, returning ``log W`` of that path (each increment at the point the level-``k`` kernel
produced, ``x_{k-1}``, the same formula as forward). An annealed independence sampler compares this
weight of the current state's refreshed path with ``log W`` of a fresh forward path
(`openmm_bg.mcmc.BoltzmannGeneratorMove` with ``anneal=``).

Only a frozen schedule is allowed: betas, step sizes and scales chosen from the chain itself would
make the kernels depend on the state they move.

Examples
--------
>>> import math, torch
>>> from openmm_bg.sampling import AnnealConfig, FixedSchedule
>>> config = AnnealConfig(adaptive=False, schedule=FixedSchedule.linear(4, 0.5), seed=0)
>>> log_q = lambda x: -0.5 * (x**2).sum(1) - 0.5 * math.log(2 * math.pi)
>>> back = backward_log_weights(log_q, lambda x: -(x**2).sum(1), torch.zeros(3, 1, dtype=torch.float64),
...                             config)
>>> back.log_weights.shape, back.acceptance.shape, back.n_target_evaluations
(torch.Size([3]), torch.Size([4]), 15)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .anneal import AnnealConfig, run_generator
from .kernels import MoveStats
from .path import GeometricPath
from .support import Support

__all__ = ["BackwardPaths", "backward_log_weights"]


@dataclass(frozen=True)
class BackwardPaths:
    """Backward paths from given end points (one per row), with their AIS log weights.

    Attributes
    ----------
    positions : torch.Tensor
        ``[n, d]`` the paths' starts ``x_0`` (where the last kernel, of level 1, left them).
    log_weights : torch.Tensor
        ``[n]`` float64 ``log W`` of each path; ``-inf`` where ``p`` is zero at the end point.
    acceptance : torch.Tensor
        ``[K]`` float64 accepted fraction of the kernel proposals of level ``k = 1..K``.
    n_invalid : torch.Tensor
        ``[K]`` long: proposals of level ``k`` rejected as out of domain or non-finite.
    end_log_target : torch.Tensor
        ``[n]`` float64 ``log p`` at the end points ``x_end``.
    n_target_evaluations, n_gradient_evaluations : int
        Rows of ``log_target`` evaluated, and of those with a gradient (the end points included).
    """

    positions: torch.Tensor
    log_weights: torch.Tensor
    acceptance: torch.Tensor
    n_invalid: torch.Tensor
    end_log_target: torch.Tensor
    n_target_evaluations: int
    n_gradient_evaluations: int


def _fixed(config) -> AnnealConfig:
    if not isinstance(config, AnnealConfig):
        raise ValueError(f"config must be an AnnealConfig, got {type(config).__name__}")
    if config.adaptive:
        raise ValueError("a backward path needs frozen betas and step sizes: pass AnnealConfig(adaptive=False, "
                         "schedule=FixedSchedule(...)), e.g. FixedSchedule.from_result(pilot) of an earlier run")
    return config


def backward_log_weights(log_q, log_target, x_end: torch.Tensor, config: AnnealConfig,
                         support: Support | None = None) -> BackwardPaths:
    """Backward AIS paths from the end points ``x_end`` (kernels of levels ``K, ..., 1``) and their weights.

    Parameters
    ----------
    log_q, log_target : callable or ValueAndGrad
        As for `openmm_bg.sampling.anneal`: ``[n, d] -> [n]`` log densities of the base and the target.
    x_end : torch.Tensor
        ``[n, d]`` end points (states of the target, e.g. of a Markov chain), computed in float64;
        ``log_q`` must be finite there. Rows where ``log_target`` is ``-inf`` get ``log W = -inf``.
    config : AnnealConfig
        ``adaptive=False``: the betas, step sizes and scales of the schedule, the kernel, its steps
        per level and the seed (``resample_threshold`` is not used: each path is on its own).
    support : Support, optional
        The domain of both densities (as for `anneal`); ``x_end`` must lie in it.

    Returns
    -------
    BackwardPaths

    Raises
    ------
    ValueError
        An adaptive config, a bad ``x_end`` (shape, non-finite, outside ``support``), ``log_q`` not
        finite or ``log_target`` NaN / ``+inf`` at ``x_end``.
    """
    config = _fixed(config)
    if config.independence_steps:
        raise ValueError("backward paths take the local kernels only (a level of local steps followed by proposals "
                         "from q is not reversible as a whole); set independence_steps=0")
    if not isinstance(x_end, torch.Tensor) or x_end.dim() != 2 or min(x_end.shape) < 1:
        shape = list(x_end.shape) if isinstance(x_end, torch.Tensor) else type(x_end).__name__
        raise ValueError(f"x_end must be a tensor [n, d] of end points with n, d >= 1, got {shape}")
    x_end = x_end.detach().to(torch.float64)
    if not torch.isfinite(x_end).all():
        raise ValueError("x_end has non-finite entries")
    if support is not None and not bool(support.contains(x_end).all()):
        raise ValueError("x_end has rows outside the support (circle: [low, high); interval: (low, high))")
    path = GeometricPath(log_q, log_target, support)
    state = path.evaluate(x_end)
    if not torch.isfinite(state.log_q).all():
        raise ValueError("log_q is not finite at some rows of x_end: the end points must lie where q > 0")
    if (torch.isnan(state.log_p) | torch.isposinf(state.log_p)).any():
        raise ValueError("log_target is NaN or +inf at some rows of x_end; return -inf for zero density")
    end_log_target = state.log_p
    kernel = config.make_kernel()
    schedule = config.make_schedule(kernel)
    betas = schedule.betas
    generator = run_generator(config, state.x.device)
    log_w = torch.zeros(state.x.shape[0], dtype=torch.float64, device=state.x.device)
    acceptance, invalid = [], []
    for level in range(len(betas) - 1, 0, -1):
        beta = betas[level]
        stats = MoveStats()
        for _ in range(config.mcmc_steps_per_level):
            state, s = kernel.step(path, state, beta, schedule.step_size(level, None, None), generator,
                                   schedule.scale(level))
            stats = stats + s
        # the increment of level k at x_{k-1}, the point the level-k kernel produced (b_k - b_{k-1} > 0)
        log_w = log_w + (beta - betas[level - 1]) * (state.log_p - state.log_q)
        acceptance.append(stats.acceptance)
        invalid.append(stats.n_invalid)
    if torch.isnan(log_w).any():
        raise RuntimeError("NaN in a backward log weight: log_q or log_target changed their value at a point")
    return BackwardPaths(
        positions=state.x, log_weights=log_w,
        acceptance=torch.tensor(acceptance[::-1], dtype=torch.float64),
        n_invalid=torch.tensor(invalid[::-1], dtype=torch.long), end_log_target=end_log_target,
        n_target_evaluations=path.n_target_evaluations, n_gradient_evaluations=path.n_gradient_evaluations)
