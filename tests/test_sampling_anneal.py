"""Annealed importance sampling / SMC (`openmm_bg.sampling.anneal`): statistics against quadrature.

1D problems with known normalisers: a base q = N(0, 3^2), broader than every target so the weights
have finite variance; targets a unit Gaussian (Z = sqrt(2 pi)) and a double well
``exp(-(x^4 - 4 x^2 + x / 2))`` (Z by quadrature). Tolerances: fixed-schedule means of Z-hat over
independent runs within 3 standard errors of Z (unbiasedness); the adaptive schedule within 0.06
in log Z at N = 20000 (consistency; observed spread ~0.02); weighted means within 3 bootstrap SE.
Every seed is fixed, and the base samples and the annealer use different seeds.
"""

import math
from dataclasses import replace

import numpy as np
import pytest
import torch

from openmm_bg.analysis.reweighting import reweighted_mean
from openmm_bg.sampling import (
    HMC,
    MALA,
    AnnealConfig,
    AnnealResult,
    FixedSchedule,
    GeometricPath,
    ValueAndGrad,
    anneal,
)

SIGMA_Q = 3.0
F64 = torch.float64


def log_q(x):
    return -0.5 * (x[:, 0] / SIGMA_Q) ** 2 - math.log(SIGMA_Q * math.sqrt(2.0 * math.pi))


def log_q2(x):
    return log_q(x[:, :1]) + log_q(x[:, 1:])


def gaussian(x):
    return -0.5 * x[:, 0] ** 2


def double_well(x):
    y = x[:, 0]
    return -(y**4 - 4.0 * y**2 + 0.5 * y)


def _with_grad(log_density, grad):
    """The same density with an analytic gradient (the many-run tests skip autograd's cost)."""
    return ValueAndGrad(lambda x: (log_density(x), grad(x)))


FAST_Q = _with_grad(log_q, lambda x: -x / SIGMA_Q**2)
FAST = {"gaussian": _with_grad(gaussian, lambda x: -x),
        "double_well": _with_grad(double_well, lambda x: -(4.0 * x**3 - 8.0 * x + 0.5))}
GRID = np.linspace(-8.0, 8.0, 160001)
DW_DENSITY = np.exp(-(GRID**4 - 4.0 * GRID**2 + 0.5 * GRID))
Z = {"gaussian": math.sqrt(2.0 * math.pi), "double_well": float(np.trapezoid(DW_DENSITY, GRID))}
TARGETS = {"gaussian": gaussian, "double_well": double_well}


def draw_q(n, seed, dim=1):
    return SIGMA_Q * torch.randn(n, dim, generator=torch.Generator().manual_seed(10_000 + seed), dtype=F64)


def z_hat_runs(name, config, n_runs=200, n=64):
    """exp(log Z-hat) of ``n_runs`` independent runs (independent base samples and seeds)."""
    return np.array([math.exp(anneal(FAST_Q, FAST[name], draw_q(n, r), replace(config, seed=r)).log_normalizer)
                     for r in range(n_runs)])


def z_score(values, exact):
    return (values.mean() - exact) / (values.std(ddof=1) / math.sqrt(values.size))


@pytest.mark.parametrize("threshold", [0.0, 1.0], ids=["no-resampling", "resampling"])
@pytest.mark.parametrize("name", ["gaussian", "double_well"])
def test_fixed_schedule_normalizer_is_unbiased(name, threshold):
    config = AnnealConfig(adaptive=False, n_levels=8, step_size=0.7, mcmc_steps_per_level=2,
                          resample_threshold=threshold)
    z = z_hat_runs(name, config)
    assert abs(z_score(z, Z[name])) < 3.0, (z.mean(), Z[name])
    one = anneal(log_q, TARGETS[name], draw_q(64, 0), config)
    assert bool(one.resampled.any()) == (threshold > 0)
    assert not one.resampled[-1]  # never after the last level


def _wrong_order_log_z(x0, schedule, steps, seed):
    """Test-only AIS variant that reweights AFTER the kernel (biased): built from the public pieces."""
    path = GeometricPath(FAST_Q, FAST["gaussian"])
    generator = torch.Generator().manual_seed(seed)
    state, log_w = path.evaluate(x0), torch.zeros(x0.shape[0], dtype=F64)
    for k in range(1, len(schedule.betas)):
        beta = schedule.betas[k]
        for _ in range(steps):
            state, _ = MALA().step(path, state, beta, schedule.step_sizes[k - 1], generator)
        log_w = log_w + (beta - schedule.betas[k - 1]) * (state.log_p - state.log_q)
    return float(torch.logsumexp(log_w, 0)) - math.log(x0.shape[0])


def sample_q(n, generator):
    return SIGMA_Q * torch.randn(n, 1, generator=generator, dtype=F64)


@pytest.mark.parametrize("threshold", [0.0, 1.0], ids=["no-resampling", "resampling"])
def test_independence_steps_keep_the_normalizer_unbiased(threshold):
    config = AnnealConfig(adaptive=False, n_levels=8, step_size=0.7, independence_steps=2,
                          resample_threshold=threshold)
    z = np.array([math.exp(anneal(FAST_Q, FAST["double_well"], draw_q(64, r), replace(config, seed=r),
                                  sample_q=sample_q).log_normalizer) for r in range(200)])
    assert abs(z_score(z, Z["double_well"])) < 3.0, (z.mean(), Z["double_well"])
    one = anneal(log_q, double_well, draw_q(64, 0), config, sample_q=sample_q)
    assert one.independence_acceptance.shape == (8,) and 0.0 < float(one.independence_acceptance.mean()) < 1.0
    assert anneal(log_q, double_well, draw_q(64, 0), replace(config, independence_steps=0)).independence_acceptance \
        is None
    with pytest.raises(ValueError, match="pass sample_q"):
        anneal(log_q, double_well, draw_q(64, 0), config)


def test_increment_before_the_kernel_matters():
    """K = 4 with well-mixing kernels: the wrong order is off by > 5 SE, the right one within 3 SE."""
    schedule, steps = FixedSchedule.linear(4, step_size=0.8), 5
    config = AnnealConfig(adaptive=False, schedule=schedule, mcmc_steps_per_level=steps, resample_threshold=0.0)
    right = z_hat_runs("gaussian", config)
    wrong = np.array([math.exp(_wrong_order_log_z(draw_q(64, r), schedule, steps, r)) for r in range(200)])
    assert abs(z_score(right, Z["gaussian"])) < 3.0
    assert z_score(wrong, Z["gaussian"]) > 5.0  # samples of pi_k instead of pi_{k-1}: Z ~1.5 x too large


@pytest.mark.parametrize("kernel", ["mala", "hmc"])
def test_adaptive_schedule_is_consistent(kernel):
    result = anneal(log_q, double_well, draw_q(20_000, 1),
                    AnnealConfig(kernel=kernel, step_size=0.5, mcmc_steps_per_level=2, seed=3))
    assert abs(result.log_normalizer - math.log(Z["double_well"])) < 0.06
    betas = result.betas.tolist()
    assert betas[0] == 0.0 and betas[-1] == 1.0 and all(b1 > b0 for b0, b1 in zip(betas[:-1], betas[1:]))
    assert 2 < result.n_levels < 32
    assert len(set(result.step_sizes.tolist())) == result.n_levels  # tuned level by level
    frozen = FixedSchedule.from_result(result)
    assert frozen.betas == tuple(betas) and frozen.step_sizes == tuple(result.step_sizes.tolist())


@pytest.mark.parametrize("kernel", ["mala", "hmc"])
def test_weighted_means_match_quadrature(kernel):
    """No resampling: the particles are independent, so bootstrap errors are valid."""
    result = anneal(log_q, double_well, draw_q(20_000, 2),
                    AnnealConfig(adaptive=False, n_levels=8, step_size=0.5, kernel=kernel, leapfrog_steps=3,
                                 resample_threshold=0.0, seed=4))
    x = result.positions[:, 0].numpy()
    log_w = result.log_weights.numpy()
    for f in (lambda y: y, lambda y: y**2):
        exact = np.trapezoid(f(GRID) * DW_DENSITY, GRID) / Z["double_well"]
        mean, se = reweighted_mean(f(x), log_w, n_bootstrap=200, seed=0)
        assert abs(mean - exact) < 3.0 * se, (mean, se, exact)
    w = np.exp(log_w - log_w.max())
    assert math.isclose(result.ess(), w.sum() ** 2 / (w**2).sum(), rel_tol=1e-9)
    assert result.pareto_k() < 0.7
    assert result.diagnose(warn=False).n == x.size


def hard_wall(bad=-math.inf, wall=0.5):
    def log_p(x):
        return torch.where(x[:, 0] < wall, -0.5 * x[:, 0] ** 2, torch.full_like(x[:, 0], bad))
    return log_p


def test_hard_wall_zero_weight_and_normalizer():
    """q puts ~43% of x0 beyond the wall: those get weight 0 (never NaN) and Z-hat stays unbiased."""
    x0 = draw_q(20_000, 5)
    result = anneal(log_q, hard_wall(), x0,
                    AnnealConfig(adaptive=False, n_levels=6, step_size=0.8, resample_threshold=0.0, seed=5))
    log_w = result.log_weights
    assert not torch.isnan(log_w).any()
    dead = x0[:, 0] >= 0.5
    assert torch.isneginf(log_w[dead]).all() and torch.isfinite(log_w[~dead]).all()
    assert torch.equal(result.positions[dead], x0[dead])  # zero-density particles are not moved
    assert (result.positions[~dead, 0] < 0.5).all()
    assert int(result.n_invalid.sum()) > 0
    w = torch.exp(log_w).numpy()
    exact = math.sqrt(2.0 * math.pi) * 0.5 * (1.0 + math.erf(0.5 / math.sqrt(2.0)))
    assert abs(w.mean() - exact) < 3.0 * w.std() / math.sqrt(w.size)
    assert math.isclose(result.log_normalizer, math.log(w.mean()), rel_tol=1e-12)


@pytest.mark.parametrize("kernel", ["mala", "hmc"])
@pytest.mark.parametrize("bad", [-math.inf, math.inf, math.nan], ids=["-inf", "+inf", "nan"])
def test_invalid_moves_are_rejected_and_counted(kernel, bad):
    x0 = -torch.abs(draw_q(500, 6))  # all inside the wall (p is finite at every x0)
    result = anneal(log_q, hard_wall(bad), x0, AnnealConfig(kernel=kernel, adaptive=False, n_levels=4,
                                                            step_size=1.0, resample_threshold=1.0, seed=6))
    assert (result.positions[:, 0] < 0.5).all()
    assert int(result.n_invalid.sum()) > 0
    assert torch.isfinite(result.log_weights).all() and math.isfinite(result.log_normalizer)
    assert result.resampled[:-1].all() and len(result.ancestors) == result.n_levels - 1


def test_same_seed_same_result_and_bookkeeping():
    config = AnnealConfig(n_levels=16, step_size=0.5, mcmc_steps_per_level=2, seed=11)
    x0 = draw_q(300, 7, dim=2)

    def target(x):
        return gaussian(x) - 0.5 * x[:, 1] ** 2

    a, b = anneal(log_q2, target, x0, config), anneal(log_q2, target, x0, config)
    c = anneal(log_q2, target, x0, AnnealConfig(n_levels=16, step_size=0.5, mcmc_steps_per_level=2, seed=12))
    assert isinstance(a, AnnealResult)
    assert torch.equal(a.positions, b.positions) and torch.equal(a.log_weights, b.log_weights)
    assert a.log_normalizer == b.log_normalizer and not torch.equal(a.positions, c.positions)
    assert a.n_target_evaluations == a.n_gradient_evaluations == 300 * (1 + 2 * a.n_levels)
    lineage = torch.arange(300)
    for index in a.ancestors:
        lineage = lineage[index]
    assert torch.equal(lineage, a.lineage)
    assert 1 <= a.n_distinct_ancestors <= 300 and (len(a.ancestors) == 0) == (a.n_distinct_ancestors == 300)
    assert a.n_distinct_ancestors == len(torch.unique(a.lineage))  # exactly the surviving initial particles
    assert a.positions.shape == (300, 2) and a.log_target.shape == (300,)
    assert torch.allclose(a.log_target, target(a.positions))


def test_value_and_grad_matches_autograd_and_counts_hmc():
    config = AnnealConfig(kernel="hmc", leapfrog_steps=3, adaptive=False, n_levels=5, step_size=0.6, seed=2)
    x0 = draw_q(200, 8)
    auto = anneal(log_q, double_well, x0, config)
    given = anneal(FAST_Q, FAST["double_well"], x0, config)
    assert torch.allclose(auto.positions, given.positions) and torch.allclose(auto.log_weights, given.log_weights)
    assert given.n_target_evaluations == 200 * (1 + 5 * 3)


def test_progress_bar_and_autograd_under_no_grad(capsys):
    """Callers that sample under ``torch.no_grad()`` still get gradients for the kernels."""
    with torch.no_grad():
        result = anneal(log_q, gaussian, draw_q(50, 9), AnnealConfig(n_levels=3, adaptive=False, progress=True,
                                                                      step_size=0.5, seed=0))
    assert "annealing" in capsys.readouterr().err
    assert float(result.acceptance.min()) > 0.5


@pytest.mark.parametrize("kwargs, match", [
    ({"n_levels": 0}, "n_levels"), ({"mcmc_steps_per_level": 1.5}, "mcmc_steps_per_level"),
    ({"leapfrog_steps": 0}, "leapfrog_steps"), ({"step_size": 0.0}, "step_size"),
    ({"step_size": math.inf}, "step_size"), ({"kernel": "langevin"}, "kernel"),
    ({"target_cess": 1.0}, "target_cess"), ({"target_cess": 0.0}, "target_cess"),
    ({"target_acceptance": 1.2}, "target_acceptance"), ({"resample_threshold": -0.1}, "resample_threshold"),
    ({"resample_threshold": 1.5}, "resample_threshold"), ({"seed": -1}, "seed"), ({"seed": 1.0}, "seed"),
    ({"schedule": FixedSchedule.linear(3, 0.1)}, "adaptive=False"), ({"schedule": (0.0, 1.0)}, "FixedSchedule"),
    ({"independence_steps": -1}, "independence_steps"),
])
def test_config_rejects_bad_values(kwargs, match):
    with pytest.raises(ValueError, match=match):
        AnnealConfig(**kwargs)


@pytest.mark.parametrize("betas, steps, match", [
    ((0.0, 0.5), (0.1,), "from 0 to 1"), ((0.0, 0.6, 0.4, 1.0), (0.1,) * 3, "strictly"),
    ((0.0, 1.0), (0.1, 0.1), "one step size per level"), ((0.0, 1.0), (-0.1,), "step size"),
])
def test_fixed_schedule_rejects_bad_values(betas, steps, match):
    with pytest.raises(ValueError, match=match):
        FixedSchedule(betas, steps)


def test_bad_inputs_are_refused_before_any_work():
    x0 = draw_q(10, 0)
    with pytest.raises(ValueError, match="x0 must be a tensor"):
        anneal(log_q, gaussian, x0[:, 0])
    with pytest.raises(ValueError, match="non-finite"):
        anneal(log_q, gaussian, torch.cat([x0, torch.full((1, 1), math.nan, dtype=F64)]))
    with pytest.raises(ValueError, match="NaN or \\+inf"):
        anneal(log_q, hard_wall(math.nan, wall=0.0), x0.abs() + 0.1)
    with pytest.raises(ValueError, match="log_q is not finite"):
        anneal(lambda x: torch.full_like(x[:, 0], -math.inf), gaussian, x0)
    with pytest.raises(ValueError, match="value \\[n\\]"):
        anneal(log_q, lambda x: -x**2, x0)
    with pytest.raises(ValueError, match="AnnealConfig"):
        anneal(log_q, gaussian, x0, {"n_levels": 3})
    with pytest.raises(RuntimeError, match="every particle has weight zero"):
        anneal(log_q, lambda x: torch.full_like(x[:, 0], -math.inf), x0, AnnealConfig(seed=0))


def test_kernels_validate_their_settings():
    with pytest.raises(ValueError, match="leapfrog_steps"):
        HMC(leapfrog_steps=0)
