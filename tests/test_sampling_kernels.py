"""Kernels of `openmm_bg.sampling` leave pi_b exactly invariant and never apply an invalid move.

Invariance: 4000 independent chains started from exact samples of pi_b (b = 0.5 between
q = N(0, 3^2) and the double well ``exp(-(x^4 - 4 x^2 + x / 2))``, inverse CDF on a fine quadrature
grid) run 50 kernel steps each; the final positions must pass a Kolmogorov-Smirnov test against the
quadrature CDF at p > 0.01. The same test rejects (p < 1e-6) a Metropolis kernel that omits the
proposal-density ratio (MALA) or the factor b (independence sampler), so it has the power to
see a kernel that is not exact.
"""

import math

import numpy as np
import pytest
import torch
from scipy import stats

from openmm_bg.sampling import HMC, MALA, GeometricPath, Independence, MoveStats

F64 = torch.float64
BETA = 0.5


def log_q(x):
    return -0.5 * (x[:, 0] / 3.0) ** 2 - math.log(3.0 * math.sqrt(2.0 * math.pi))


def double_well(x):
    y = x[:, 0]
    return -(y**4 - 4.0 * y**2 + 0.5 * y)


GRID = np.linspace(-10.0, 10.0, 400001)
_LOG_PI = (1 - BETA) * (-0.5 * (GRID / 3.0) ** 2) + BETA * -(GRID**4 - 4.0 * GRID**2 + 0.5 * GRID)
CDF = np.cumsum(np.exp(_LOG_PI - _LOG_PI.max()))
CDF /= CDF[-1]


def cdf(x):
    return np.interp(x, GRID, CDF)


def exact_samples(n, seed):
    u = np.random.default_rng(seed).random(n)
    return torch.tensor(np.interp(u, CDF, GRID), dtype=F64)[:, None]


class _NoProposalRatio(MALA):
    """Test-only broken MALA: Metropolis test without the proposal densities (not exact)."""

    def step(self, path, state, beta, step_size, generator):
        noise = torch.randn(state.x.shape, generator=generator, dtype=F64)
        proposal = path.evaluate(state.x + 0.5 * step_size**2 * state.grad(beta) + step_size * noise)
        log_u = torch.rand(state.x.shape[0], generator=generator, dtype=F64).log()
        accept = log_u < proposal.log_density(beta) - state.log_density(beta)
        return state.where(accept, proposal), MoveStats(accept.numel(), int(accept.sum()), 0)


def sample_q(n, generator):
    """Exact draws from q = N(0, 3^2) (the proposals of `Independence`)."""
    return 3.0 * torch.randn(n, 1, generator=generator, dtype=F64)


class _NoBeta(Independence):
    """Test-only broken independence sampler: the test ``exp(s(y) - s(x))`` without the factor b
    (it samples p, not pi_b)."""

    def step(self, path, state, beta, step_size, generator, scale=None):
        proposal = path.evaluate(self.sample_q(state.x.shape[0], generator))
        log_u = torch.rand(state.x.shape[0], generator=generator, dtype=F64).log()
        accept = log_u < (proposal.log_p - proposal.log_q) - (state.log_p - state.log_q)
        return state.where(accept, proposal), MoveStats(accept.numel(), int(accept.sum()), 0)


def run_chains(kernel, step_size, n_steps=50, n=4000):
    path = GeometricPath(log_q, double_well)
    state, generator, stats_ = path.evaluate(exact_samples(n, 0)), torch.Generator().manual_seed(1), MoveStats()
    for _ in range(n_steps):
        state, s = kernel.step(path, state, BETA, step_size, generator)
        stats_ = stats_ + s
    return state, stats_, path


@pytest.mark.parametrize("kernel, step_size", [(MALA(), 1.0), (MALA(), 0.4), (HMC(3), 0.6), (HMC(5), 0.3)],
                         ids=["mala-1.0", "mala-0.4", "hmc3-0.6", "hmc5-0.3"])
def test_kernel_leaves_pi_beta_invariant(kernel, step_size):
    assert stats.kstest(exact_samples(4000, 0)[:, 0].numpy(), cdf).pvalue > 0.01  # the reference itself
    state, s, path = run_chains(kernel, step_size)
    assert 0.2 < s.acceptance < 0.99  # the chains really move
    assert s.n_proposed == 4000 * 50 and s.n_invalid == 0
    assert stats.kstest(state.x[:, 0].numpy(), cdf).pvalue > 0.01
    per_step = 1 if isinstance(kernel, MALA) else kernel.leapfrog_steps
    assert path.n_target_evaluations == 4000 * (1 + 50 * per_step)


def test_invariance_test_detects_an_inexact_kernel():
    state, _, _ = run_chains(_NoProposalRatio(), 0.5)
    assert stats.kstest(state.x[:, 0].numpy(), cdf).pvalue < 1e-6


def test_independence_kernel_leaves_pi_beta_invariant_and_jumps_between_wells():
    state, s, path = run_chains(Independence(sample_q), None)
    assert 0.2 < s.acceptance < 0.9 and s.n_proposed == 4000 * 50 and s.n_invalid == 0
    assert stats.kstest(state.x[:, 0].numpy(), cdf).pvalue > 0.01
    assert path.n_target_evaluations == 4000 * 51
    # global moves: chains started all in the left well fill the right one within 25 steps
    left = GeometricPath(log_q, double_well)
    chain, generator = left.evaluate(-exact_samples(4000, 5).abs()), torch.Generator().manual_seed(6)
    for _ in range(25):
        chain, _ = Independence(sample_q).step(left, chain, BETA, None, generator)
    exact_right = 1.0 - cdf(0.0)  # 0.35; 4 standard errors of a fraction of 4000 chains: 0.03
    assert abs(float((chain.x[:, 0] > 0).double().mean()) - exact_right) < 0.03
    # the same test has the power to see a kernel that leaves the wrong density invariant
    broken, _, _ = run_chains(_NoBeta(sample_q), None)
    assert stats.kstest(broken.x[:, 0].numpy(), cdf).pvalue < 1e-6


def test_independence_kernel_checks_its_sampler():
    with pytest.raises(ValueError, match="sample_q must be a callable"):
        Independence(3.0)
    path = GeometricPath(log_q, double_well)
    state = path.evaluate(exact_samples(10, 0))
    with pytest.raises(ValueError, match=r"must return \[10, 1\]"):
        Independence(lambda n, g: torch.zeros(n, 2, dtype=F64)).step(path, state, BETA, None,
                                                                    torch.Generator().manual_seed(0))


def walled(bad):
    def log_p(x):
        return torch.where(x[:, 0] < 0.0, double_well(x), torch.full_like(x[:, 0], bad))
    return log_p


@pytest.mark.parametrize("kernel", [MALA(), HMC(4), Independence(sample_q)], ids=["mala", "hmc", "independence"])
@pytest.mark.parametrize("bad", [-math.inf, math.inf, math.nan], ids=["-inf", "+inf", "nan"])
def test_invalid_proposals_are_rejected_counted_never_applied(kernel, bad):
    path = GeometricPath(log_q, walled(bad))
    start = -exact_samples(1000, 2).abs()
    state, generator, total = path.evaluate(start), torch.Generator().manual_seed(3), MoveStats()
    for _ in range(20):
        state, s = kernel.step(path, state, 1.0, 0.8, generator)
        total = total + s
        assert (state.x[:, 0] < 0.0).all() and torch.isfinite(state.log_p).all()
    assert total.n_invalid > 0 and total.n_accepted > 0
    assert total.n_accepted + total.n_invalid <= total.n_proposed == 20 * 1000


def test_zero_density_particles_stay_and_are_not_proposals():
    path = GeometricPath(log_q, walled(-math.inf))
    x = torch.tensor([[-1.5], [0.7]], dtype=F64)  # the second has p = 0
    state, s = MALA().step(path, path.evaluate(x), 0.5, 0.3, torch.Generator().manual_seed(0))
    assert state.x[1, 0] == 0.7 and s.n_proposed == 1
    assert math.isnan(MoveStats().acceptance)
