"""Reweighting statistics: ESS, tail shape, reweighted means and histograms."""

import numpy as np
import pytest

from openmm_bg.analysis import reweighting as rw


def test_ess_and_share_of_known_weights():
    log_w = np.log([1.0, 1.0, 1.0, 1.0])
    assert rw.kish_ess(log_w) == pytest.approx(4.0)
    log_w = np.array([0.0, -np.inf, -np.inf, np.log(3.0)])
    assert rw.kish_ess(log_w) == pytest.approx(16 / 10)
    assert rw.largest_weight_share(log_w) == pytest.approx(0.75)
    # invariant to a constant shift, stable for huge values
    assert rw.kish_ess(log_w + 1e4) == pytest.approx(16 / 10)


def test_bad_log_weights_are_refused():
    with pytest.raises(ValueError, match="NaN or \\+inf"):
        rw.kish_ess([0.0, np.nan])
    with pytest.raises(ValueError, match="NaN or \\+inf"):
        rw.kish_ess([0.0, np.inf])
    with pytest.raises(ValueError, match="weight zero"):
        rw.kish_ess([-np.inf, -np.inf])
    with pytest.raises(ValueError, match="non-empty"):
        rw.kish_ess([])


@pytest.mark.parametrize("shape", [0.3, 0.9])
def test_pareto_k_recovers_tail_shape(shape):
    """Weights with a Pareto tail of known shape xi: w = U^(-xi) has GPD tail shape xi."""
    rng = np.random.default_rng(0)
    log_w = -shape * np.log(rng.random(20000))
    assert rw.pareto_k(log_w) == pytest.approx(shape, abs=0.1)


def test_pareto_k_of_a_single_dominating_weight_is_infinite():
    log_w = np.full(1000, -900.0)
    log_w[0] = 0.0
    assert rw.pareto_k(log_w) == np.inf
    assert not rw.diagnose(log_w, warn=False).reliable


def test_pareto_k_with_tied_weights_is_fitted_above_the_ties():
    """Copies of resampled particles tie at the tail's threshold: k comes from the weights above.

    9,800 equal weights below 200 distinct ones (the tail of the 300 largest is then one third
    ties): a heavy excess (w = U^-1: shape 1) must read heavy, a light one (uniform on [1, 1.01])
    light; before, both read inf ("one weight dominates").
    """
    rng = np.random.default_rng(3)
    ties = np.zeros(9800)
    heavy = np.concatenate([ties, -np.log(rng.random(200))])
    assert 0.7 < rw.pareto_k(heavy) < 1.4
    light = np.concatenate([ties, np.log1p(0.01 * rng.random(200))])
    assert rw.pareto_k(light) < 0.0
    assert rw.diagnose(light, warn=False).reliable
    almost_flat = np.concatenate([np.zeros(9997), [1e-3, 2e-3, 3e-3]])
    assert rw.pareto_k(almost_flat) == -np.inf


def test_pareto_k_light_tail_and_warning():
    rng = np.random.default_rng(1)
    light = 0.1 * rng.standard_normal(20000)  # log-normal, sigma 0.1: essentially uniform weights
    assert rw.pareto_k(light) < 0.3
    assert rw.diagnose(light).reliable
    heavy = -1.2 * np.log(rng.random(20000))
    with pytest.warns(RuntimeWarning, match="heavy-tailed"):
        diag = rw.diagnose(heavy)
    assert not diag.reliable and "Pareto k" in str(diag)


def test_reweighted_mean_of_gaussian_importance_sampling():
    """Samples from N(0, 1) reweighted to N(1, 1): mean 1 within 4 bootstrap errors."""
    rng = np.random.default_rng(2)
    x = rng.standard_normal(20000)
    log_w = -0.5 * (x - 1.0) ** 2 + 0.5 * x**2
    mean, err = rw.reweighted_mean(x, log_w, n_bootstrap=100, seed=0)
    assert 0 < err < 0.05
    assert abs(mean - 1.0) < 4 * err
    # unit weights reduce to the plain mean and its standard error
    mean0, err0 = rw.reweighted_mean(x, np.zeros_like(x), n_bootstrap=200, seed=0)
    assert mean0 == pytest.approx(x.mean())
    assert err0 == pytest.approx(x.std() / np.sqrt(x.size), rel=0.2)


def test_reweighted_histogram_matches_target_density():
    rng = np.random.default_rng(3)
    x = rng.uniform(-4, 4, 50000)
    log_w = -0.5 * x**2  # uniform proposal reweighted to a standard normal
    density, err, edges = rw.reweighted_histogram(x, log_w, bins=20, range=(-4, 4), n_bootstrap=50)
    centres = 0.5 * (edges[1:] + edges[:-1])
    exact = np.array([np.mean(np.exp(-0.5 * np.linspace(a, b, 101) ** 2))
                      for a, b in zip(edges[:-1], edges[1:])])
    exact /= np.sqrt(2 * np.pi)
    assert np.all(np.abs(density - exact) < 5 * err + 1e-4)
    assert centres.shape == density.shape == err.shape


def test_resample_follows_weights():
    log_w = np.log([0.0 + 1e-300, 1.0, 3.0])
    idx = rw.resample(log_w, n=4000, seed=0)
    counts = np.bincount(idx, minlength=3)
    assert counts[0] == 0 and counts[2] == pytest.approx(3000, abs=1)
