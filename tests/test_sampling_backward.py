"""Backward AIS paths (openmm_bg.sampling.backward_log_weights): the path measure they complete is exact.

From end points drawn exactly from the target ``p / Z``, the backward path has the extended target
``P`` as its law, and ``E_P[Q / P] = E[Z / W_bwd] = 1``: the mean of ``exp(-log W_bwd)`` estimates
``1 / Z`` without bias (a harmonic-mean identity). Computing the increment after the kernel instead
of at the point the kernel produced would break it.
"""

from __future__ import annotations

import math

import pytest
import torch

from openmm_bg.sampling import AnnealConfig, FixedSchedule, Support, backward_log_weights

SIGMA_P = 1.5  # p(x) = exp(-x^2 / (2 SIGMA_P^2)) unnormalised, broader than q = N(0, 1): finite variance of Z / W


def _log_q(x):
    return -0.5 * (x**2).sum(1) - 0.5 * x.shape[1] * math.log(2.0 * math.pi)


def _log_p(x):
    return -0.5 * (x**2).sum(1) / SIGMA_P**2


@pytest.mark.parametrize("kernel", ["mala", "hmc"])
def test_backward_weights_give_an_unbiased_inverse_normaliser(kernel):
    g = torch.Generator().manual_seed(4)
    x_end = SIGMA_P * torch.randn(4000, 1, generator=g, dtype=torch.float64)  # exact draws of p / Z
    config = AnnealConfig(adaptive=False, schedule=FixedSchedule((0.0, 0.3, 0.7, 1.0), (0.9, 1.0, 1.2)),
                          kernel=kernel, leapfrog_steps=2, mcmc_steps_per_level=2, seed=1)
    back = backward_log_weights(_log_q, _log_p, x_end, config)
    inv = torch.exp(-back.log_weights)
    exact = 1.0 / (SIGMA_P * math.sqrt(2.0 * math.pi))
    se = float(inv.std()) / math.sqrt(inv.numel())
    assert abs(float(inv.mean()) - exact) < 3.5 * se, (float(inv.mean()), exact, se)
    assert bool((back.acceptance > 0.3).all()) and back.acceptance.shape == (3,)
    assert back.end_log_target.tolist() == _log_p(x_end).tolist()
    evaluations = 4000 * (1 + 3 * 2 * (2 if kernel == "hmc" else 1))
    assert back.n_target_evaluations == evaluations


def test_increments_after_the_kernel_are_biased():
    """The same identity with the increment evaluated at the end point of each level (the wrong order)."""
    g = torch.Generator().manual_seed(5)
    x_end = SIGMA_P * torch.randn(4000, 1, generator=g, dtype=torch.float64)
    config = AnnealConfig(adaptive=False, schedule=FixedSchedule.linear(2, 1.2), mcmc_steps_per_level=3, seed=2)
    right = backward_log_weights(_log_q, _log_p, x_end, config)
    # wrong: the level-K increment at x_K (before its kernel moved it), the level-1 increment at x_1
    one = backward_log_weights(_log_q, _log_p, x_end,
                               AnnealConfig(adaptive=False, schedule=FixedSchedule.linear(1, 1.2),
                                            mcmc_steps_per_level=3, seed=2))
    wrong = 0.5 * (_log_p(x_end) - _log_q(x_end)) + 0.5 * (_log_p(one.positions) - _log_q(one.positions))
    exact = 1.0 / (SIGMA_P * math.sqrt(2.0 * math.pi))
    for log_w, ok in ((right.log_weights, True), (wrong, False)):
        inv = torch.exp(-log_w)
        z = abs(float(inv.mean()) - exact) / (float(inv.std()) / math.sqrt(inv.numel()))
        assert z < 3.5 if ok else z > 5.0, (ok, z)


def test_circular_support_and_zero_density_end_points():
    support = Support([-math.pi], [math.pi], periodic=[True])
    x_end = torch.tensor([[3.0], [-3.1], [0.0]], dtype=torch.float64)

    def log_p(x):  # zero density on x < -3
        return torch.where(x[:, 0] < -3.0, -math.inf, torch.cos(x[:, 0]))

    back = backward_log_weights(lambda x: torch.full_like(x[:, 0], -math.log(2 * math.pi)), log_p, x_end,
                                AnnealConfig(adaptive=False, n_levels=3, step_size=2.0, seed=0), support)
    assert bool(support.contains(back.positions).all())
    assert math.isinf(float(back.log_weights[1])) and bool(torch.isfinite(back.log_weights[[0, 2]]).all())
    assert float(back.positions[1, 0]) == -3.1  # a zero-density end point is never moved


def test_bad_input():
    x = torch.zeros(2, 1, dtype=torch.float64)
    with pytest.raises(ValueError, match="frozen betas"):
        backward_log_weights(_log_q, _log_p, x, AnnealConfig())
    fixed = AnnealConfig(adaptive=False, n_levels=2)
    with pytest.raises(ValueError, match="x_end must be a tensor"):
        backward_log_weights(_log_q, _log_p, torch.zeros(3), fixed)
    with pytest.raises(ValueError, match="non-finite"):
        backward_log_weights(_log_q, _log_p, torch.tensor([[math.nan]]), fixed)
    with pytest.raises(ValueError, match="outside the support"):
        backward_log_weights(_log_q, _log_p, torch.tensor([[4.0]]), fixed, Support([-1.0], [1.0]))
    with pytest.raises(ValueError, match="log_target is NaN"):
        backward_log_weights(_log_q, lambda x: torch.full_like(x[:, 0], math.nan), x, fixed)
    with pytest.raises(ValueError, match="independence_steps=0"):
        backward_log_weights(_log_q, _log_p, x, AnnealConfig(adaptive=False, n_levels=2, independence_steps=1))
