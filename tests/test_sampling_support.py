"""Bounded domains (`openmm_bg.sampling.Support`) and the diagonal preconditioner, against quadrature.

Toy target on a circle x0 in [-1, 1) and an interval x1 in (0, 2):
``p(x) = exp(KAPPA cos(pi x0) + sin(2 pi x0) / 2 + A x1)``, its mass piled against the interval's
upper end (many reflections) and smooth across the circle's seam. ``Z`` by quadrature on a fine grid
(and in closed form for ``sin = 0``). Base ``q`` uniform on the box.

- the folded proposal density integrates to 1 and is that of folded Gaussian draws (KS);
- each kernel with the support leaves ``pi_b`` invariant (KS of the marginals at p > 0.01 after
  50 steps from exact samples), never proposes outside the box (``n_invalid = 0``); a MALA that
  folds its proposal but keeps the unfolded Gaussian densities in its test fails the same check;
- fixed-schedule ``Z-hat`` on the box is unbiased (mean of 100 runs of 256 particles within 3 SE),
  preconditioned with frozen scales too; the adaptive preconditioned run is consistent (0.05 in log Z at N = 8000);
- `population_scale` recovers weighted and circular standard deviations.
"""

import math
from dataclasses import replace

import numpy as np
import pytest
import torch
from scipy import stats

from openmm_bg.sampling import (
    HMC,
    MALA,
    AnnealConfig,
    FixedSchedule,
    GeometricPath,
    MoveStats,
    Support,
    ValueAndGrad,
    anneal,
    population_scale,
)

F64 = torch.float64
KAPPA, A, BETA = 2.0, 1.5, 0.7
SUPPORT = Support([-1.0, 0.0], [1.0, 2.0], periodic=[True, False])
LOG_Q = -math.log(2.0 * 2.0)  # uniform on the box of area 4


def _value(x):
    return KAPPA * torch.cos(math.pi * x[:, 0]) + 0.5 * torch.sin(2 * math.pi * x[:, 0]) + A * x[:, 1]


def _grad(x):
    g0 = -KAPPA * math.pi * torch.sin(math.pi * x[:, 0]) + math.pi * torch.cos(2 * math.pi * x[:, 0])
    return torch.stack([g0, torch.full_like(g0, A)], 1)


TARGET = ValueAndGrad(lambda x: (_value(x), _grad(x)))
BASE = ValueAndGrad(lambda x: (torch.full((x.shape[0],), LOG_Q, dtype=F64), torch.zeros_like(x)))

# quadrature: the density factorises into a circle part and an interval part
G0 = np.linspace(-1.0, 1.0, 200001)
G1 = np.linspace(0.0, 2.0, 200001)
F0 = np.exp(KAPPA * np.cos(np.pi * G0) + 0.5 * np.sin(2 * np.pi * G0))
F1 = np.exp(A * G1)
Z = float(np.trapezoid(F0, G0) * np.trapezoid(F1, G1))


def _cdf(grid, density):
    c = np.concatenate([[0.0], np.cumsum(0.5 * (density[1:] + density[:-1]) * np.diff(grid))])
    return c / c[-1]


def pi_beta_cdfs(beta):
    """Marginal CDFs of pi_beta (the uniform base only adds a constant)."""
    return _cdf(G0, F0**beta), _cdf(G1, F1**beta)


def exact_samples(n, seed, beta=BETA):
    c0, c1 = pi_beta_cdfs(beta)
    u = np.random.default_rng(seed).random((n, 2))
    return torch.tensor(np.stack([np.interp(u[:, 0], c0, G0), np.interp(u[:, 1], c1, G1)], 1), dtype=F64)


def ks_pvalues(x, beta=BETA):
    c0, c1 = pi_beta_cdfs(beta)
    return [stats.kstest(x[:, 0].numpy(), lambda v: np.interp(v, G0, c0)).pvalue,
            stats.kstest(x[:, 1].numpy(), lambda v: np.interp(v, G1, c1)).pvalue]


def draw_q(n, seed):
    u = torch.rand(n, 2, generator=torch.Generator().manual_seed(20_000 + seed), dtype=F64)
    return torch.stack([-1.0 + 2.0 * u[:, 0], 2.0 * (1.0 - u[:, 1]) + 0.0], 1).clamp(max=2.0 - 1e-12)


def test_exact_normaliser_by_quadrature():
    from scipy.special import i0

    closed = 2.0 * i0(KAPPA) * (math.exp(2 * A) - 1.0) / A  # without the sine term
    f0 = np.exp(KAPPA * np.cos(np.pi * G0))
    assert np.trapezoid(f0, G0) * np.trapezoid(F1, G1) == pytest.approx(closed, rel=1e-9)


@pytest.mark.parametrize("periodic", [True, False], ids=["circle", "interval"])
def test_folded_density_is_normalised_and_matches_folded_draws(periodic):
    support = Support([0.0], [1.0], periodic=[periodic])
    mean, sd = 1.3, 0.45  # outside the domain, wide: several images count
    y = torch.linspace(0.0, 1.0, 100001, dtype=F64)[:, None]
    dens = support.log_density(y, torch.full_like(y, mean), torch.tensor([sd], dtype=F64)).exp().numpy()
    assert np.trapezoid(dens, y[:, 0].numpy()) == pytest.approx(1.0, abs=1e-8)
    draws = support.fold(mean + sd * torch.randn(20000, 1, generator=torch.Generator().manual_seed(0), dtype=F64))
    assert bool(support.contains(draws).all())
    cdf = _cdf(y[:, 0].numpy(), dens)
    assert stats.kstest(draws[:, 0].numpy(), lambda v: np.interp(v, y[:, 0].numpy(), cdf)).pvalue > 0.01


class _FoldWithoutImages(MALA):
    """Test-only broken MALA: folds the proposal but tests it with plain Gaussian densities."""

    def step(self, path, state, beta, step_size, generator, scale=None):
        h2 = step_size**2
        mean_x = state.x + 0.5 * h2 * state.grad(beta)
        y = path.support.fold(mean_x + step_size * torch.randn(state.x.shape, generator=generator, dtype=F64))
        prop = path.evaluate(y)
        fwd = -((prop.x - mean_x) ** 2).sum(1) / (2 * h2)
        rev = -((state.x - prop.x - 0.5 * h2 * prop.grad(beta)) ** 2).sum(1) / (2 * h2)
        log_u = torch.rand(state.x.shape[0], generator=generator, dtype=F64).log()
        accept = log_u < prop.log_density(beta) - state.log_density(beta) + rev - fwd
        return state.where(accept, prop), MoveStats(accept.numel(), int(accept.sum()), 0)


def run_chains(kernel, step_size, scale=None, n_steps=50, n=4000):
    path = GeometricPath(BASE, TARGET, SUPPORT)
    state, generator, total = path.evaluate(exact_samples(n, 0)), torch.Generator().manual_seed(1), MoveStats()
    for _ in range(n_steps):
        state, s = kernel.step(path, state, BETA, step_size, generator, scale)
        total = total + s
    return state, total


@pytest.mark.parametrize("kernel, step_size, scale", [
    (MALA(), 0.5, None), (MALA(), 0.9, None), (MALA(), 0.4, (1.0, 2.0)), (HMC(3), 0.4, None),
    (HMC(4), 0.3, (1.5, 1.0))],
    ids=["mala-0.5", "mala-0.9", "mala-scaled", "hmc3-0.4", "hmc4-scaled"])
def test_kernels_with_support_leave_pi_beta_invariant(kernel, step_size, scale):
    assert min(ks_pvalues(exact_samples(4000, 0))) > 0.01  # the reference itself
    scale = None if scale is None else torch.tensor(scale, dtype=F64)
    state, total = run_chains(kernel, step_size, scale)
    assert 0.2 < total.acceptance < 0.995 and total.n_invalid == 0  # moves, none wasted at the edges
    assert bool(SUPPORT.contains(state.x).all())
    assert min(ks_pvalues(state.x)) > 0.01


def test_invariance_test_detects_folding_without_image_densities():
    state, _ = run_chains(_FoldWithoutImages(), 0.9)
    assert min(ks_pvalues(state.x)) < 1e-6


def test_without_support_the_edges_waste_proposals():
    """The same chains on a path without the support: out-of-box proposals are rejected (counted)."""
    def boxed(fn, outside):
        def value_grad(x):
            v, g = fn.fn(x)
            inside = SUPPORT.contains(x)
            return torch.where(inside, v, outside), torch.where(inside[:, None], g, 0.0)
        return ValueAndGrad(value_grad)

    path = GeometricPath(boxed(BASE, -math.inf), boxed(TARGET, -math.inf))
    state = path.evaluate(exact_samples(2000, 0))
    _, s = MALA().step(path, state, BETA, 0.5, torch.Generator().manual_seed(1))
    assert s.n_invalid > 0.1 * s.n_proposed


def z_hat_runs(config, n_runs=100, n=256):
    return np.array([math.exp(anneal(BASE, TARGET, draw_q(n, r), replace(config, seed=r), support=SUPPORT)
                              .log_normalizer) for r in range(n_runs)])


def z_score(values, exact):
    return (values.mean() - exact) / (values.std(ddof=1) / math.sqrt(values.size))


@pytest.mark.parametrize("kernel, threshold", [("mala", 0.0), ("mala", 1.0), ("hmc", 0.0)],
                         ids=["mala", "mala-resampling", "hmc"])
def test_fixed_schedule_normalizer_on_the_box_is_unbiased(kernel, threshold):
    config = AnnealConfig(adaptive=False, n_levels=6, step_size=0.6, kernel=kernel, leapfrog_steps=3,
                          mcmc_steps_per_level=2, resample_threshold=threshold)
    z = z_hat_runs(config)
    assert abs(z_score(z, Z)) < 3.0, (z.mean(), Z)
    one = anneal(BASE, TARGET, draw_q(64, 0), replace(config, seed=0), support=SUPPORT)
    assert int(one.n_invalid.sum()) == 0 and bool(SUPPORT.contains(one.positions).all())


def test_preconditioned_adaptive_is_consistent_and_its_frozen_scales_unbiased():
    pilot = anneal(BASE, TARGET, draw_q(8000, 999), AnnealConfig(precondition=True, target_cess=0.9, seed=5,
                                                                 mcmc_steps_per_level=2), support=SUPPORT)
    assert abs(pilot.log_normalizer - math.log(Z)) < 0.05
    assert pilot.scales is not None and pilot.scales.shape == (pilot.n_levels, 2)
    # the weighted circular sd of pi_1 on x0 is below the uniform's; x1 (piled at 2) likewise
    assert bool((pilot.scales[-1] < torch.tensor([2.0, 2.0], dtype=F64) / math.sqrt(12.0)).all())
    frozen = FixedSchedule.from_result(pilot)
    assert frozen.scales is not None and len(frozen.scales) == pilot.n_levels
    z = z_hat_runs(AnnealConfig(adaptive=False, schedule=frozen, mcmc_steps_per_level=2, resample_threshold=0.0))
    assert abs(z_score(z, Z)) < 3.0, (z.mean(), Z)


def test_population_scale():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(200_000, 2, generator=g, dtype=F64) * torch.tensor([0.5, 3.0], dtype=F64)
    log_w = torch.zeros(x.shape[0], dtype=F64)
    assert population_scale(x, log_w).tolist() == pytest.approx([0.5, 3.0], rel=0.01)
    # weights exp(-x0^2 / 2 * 3) turn sd 0.5 (precision 4) into precision 7
    tilted = population_scale(x, -1.5 * x[:, 0] ** 2)
    assert tilted[0].item() == pytest.approx(7**-0.5, rel=0.02)
    # a circle [-1, 1): a narrow wrapped normal centred on the seam has a small circular sd
    seam = torch.remainder(1.0 + 0.1 * torch.randn(100_000, 1, generator=g, dtype=F64) + 1.0, 2.0) - 1.0
    circle = Support([-1.0], [1.0], periodic=[True])
    assert population_scale(seam, torch.zeros(100_000, dtype=F64), circle).item() == pytest.approx(0.1, rel=0.03)
    assert population_scale(seam, torch.zeros(100_000, dtype=F64)).item() > 0.5  # the plain sd is fooled


@pytest.mark.parametrize("kwargs, match", [
    ({"low": [0.0], "high": [math.inf]}, "half-bounded"),
    ({"low": [1.0], "high": [0.0]}, "low < high"),
    ({"low": [-math.inf], "high": [math.inf], "periodic": [True]}, "finite bounds"),
    ({"low": [0.0, 0.0], "high": [1.0]}, "one per dimension"),
    ({"low": [], "high": []}, "at least one"),
])
def test_support_rejects_bad_bounds(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Support(**kwargs)


def test_bad_support_inputs_are_refused_before_any_work():
    with pytest.raises(ValueError, match="outside the support"):
        anneal(BASE, TARGET, torch.tensor([[1.0, 0.5]], dtype=F64), AnnealConfig(), support=SUPPORT)  # x0 = high
    with pytest.raises(ValueError, match="2 dimensions"):
        anneal(BASE, TARGET, torch.zeros(3, 3, dtype=F64) + 0.5, AnnealConfig(), support=SUPPORT)
    with pytest.raises(ValueError, match="Support"):
        GeometricPath(BASE, TARGET, support=(0.0, 1.0))
    with pytest.raises(ValueError, match="adaptive=False"):
        AnnealConfig(adaptive=False, precondition=True)
    with pytest.raises(ValueError, match="scales must be"):
        FixedSchedule((0.0, 1.0), (0.1,), scales=((1.0,), (1.0,)))
    with pytest.raises(ValueError, match="finite and > 0"):
        FixedSchedule((0.0, 1.0), (0.1,), scales=((0.0,),))
    with pytest.raises(ValueError, match="scale must be"):
        MALA().step(GeometricPath(BASE, TARGET), GeometricPath(BASE, TARGET).evaluate(draw_q(4, 0)), 0.5, 0.1,
                    torch.Generator().manual_seed(0), torch.ones(3, dtype=F64))
