"""Importance weights: effective sample size, tail diagnostics and reweighted estimates.

Log weights are float64 arrays ``[n]``; ``-inf`` is a sample with weight zero (out of domain, an
inverted stereocentre, a failed energy). NaN or ``+inf`` log weights are errors upstream and are
refused rather than silently dropped.

Examples
--------
>>> import numpy as np
>>> log_w = np.array([0.0, 0.0, np.log(2.0), -np.inf])  # the last sample has weight 0
>>> round(kish_ess(log_w), 3)
2.667
>>> round(largest_weight_share(log_w), 3)
0.5
"""

from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass

import numpy as np

__all__ = ["normalized_weights", "kish_ess", "largest_weight_share", "pareto_k", "WeightDiagnostics",
           "diagnose", "reweighted_mean", "reweighted_histogram", "resample", "group_labels", "bootstrap_sums"]

#: Above this Pareto-k the weights' tail is too heavy for reliable estimates (Vehtari et al.).
PARETO_K_THRESHOLD = 0.7


def _check(log_w) -> np.ndarray:
    log_w = np.asarray(log_w, dtype=np.float64)
    if log_w.ndim != 1 or log_w.size == 0:
        raise ValueError(f"log weights must be a non-empty 1D array, got shape {log_w.shape}")
    if np.isnan(log_w).any() or np.isposinf(log_w).any():
        bad = int(np.isnan(log_w).sum() + np.isposinf(log_w).sum())
        raise ValueError(f"{bad} log weights are NaN or +inf; an energy or log-density evaluation failed "
                         "upstream (use -inf for samples that should get weight zero)")
    if np.isneginf(log_w).all():
        raise ValueError("every sample has weight zero (all log weights are -inf): the generator's "
                         "samples are all out of domain, inverted or failed; train it longer")
    return log_w


def normalized_weights(log_w) -> np.ndarray:
    """Self-normalised weights ``[n]`` (sum 1), computed stably in float64."""
    log_w = _check(log_w)
    w = np.exp(log_w - log_w.max())
    return w / w.sum()


def kish_ess(log_w) -> float:
    """Kish effective sample size (sum w)^2 / sum w^2, between 1 and n."""
    w = normalized_weights(log_w)
    return float(1.0 / np.sum(w**2))


def largest_weight_share(log_w) -> float:
    """Share of the total weight carried by the single largest weight (0..1)."""
    return float(normalized_weights(log_w).max())


def pareto_k(log_w) -> float:
    """Shape k of a generalised Pareto distribution fitted to the largest weights.

    The tail of the largest ``M = min(n/5, 3 sqrt(n))`` weights is fitted with the
    Zhang & Stephens (2009) estimator with the weak prior of Vehtari et al. (PSIS, 2015/2024).
    ``k < 0.5``: the weights have finite variance; ``0.5 <= k < 0.7``: usable with care;
    ``k >= 0.7``: estimates (and bootstrap errors) are unreliable. Returns NaN for fewer than
    ~25 non-zero weights.
    """
    log_w = _check(log_w)
    log_w = np.sort(log_w[np.isfinite(log_w)])
    n = log_w.size
    m = int(min(np.floor(0.2 * n), np.ceil(3 * np.sqrt(n))))
    if m < 5:
        return float("nan")
    w = np.exp(log_w - log_w[-1])
    threshold = w[-m - 1]
    tail = w[-m:] - threshold
    if tail[-1] <= 0:  # flat tail: all the largest weights equal
        return float("-inf")
    if tail[int(m / 4 + 0.5) - 1] <= 0:  # most of the tail underflows next to the largest weight
        return float("inf")
    return _gpd_shape(tail)


def _gpd_shape(x: np.ndarray) -> float:
    """Zhang-Stephens posterior-mean estimate of the GPD shape for sorted exceedances ``x``."""
    n = x.size
    prior = 3.0
    n_grid = 30 + int(np.sqrt(n))
    b = 1.0 - np.sqrt(n_grid / (np.arange(1, n_grid + 1) - 0.5))
    b = b / (prior * x[int(n / 4 + 0.5) - 1]) + 1.0 / x[-1]
    k = np.log1p(-b[:, None] * x).mean(axis=1)
    log_lik = n * (np.log(-b / k) - k - 1.0)
    with np.errstate(over="ignore"):  # exp overflow -> inf -> weight 0 for hopeless grid points
        weights = 1.0 / np.exp(log_lik - log_lik[:, None]).sum(axis=1)
    b_post = np.sum(b * weights)
    shape = np.log1p(-b_post * x).mean()
    return float((n * shape + 10 * 0.5) / (n + 10))  # weakly informative prior towards 0.5


@dataclass(frozen=True)
class WeightDiagnostics:
    """Summary of a set of importance weights.

    Attributes
    ----------
    n : int
        Number of samples.
    n_zero : int
        Samples with weight zero (log weight -inf).
    ess : float
        Kish effective sample size.
    ess_fraction : float
        ``ess / n``.
    max_weight_share : float
        Largest normalised weight.
    pareto_k : float
        Tail shape (see `pareto_k`); above 0.7 estimates are unreliable.
    """

    n: int
    n_zero: int
    ess: float
    ess_fraction: float
    max_weight_share: float
    pareto_k: float

    @property
    def reliable(self) -> bool:
        """False when the tail diagnostic says the weights are too heavy-tailed."""
        return not (self.pareto_k >= PARETO_K_THRESHOLD)

    def as_dict(self) -> dict:
        """Plain dictionary (for JSON output)."""
        return asdict(self)

    def __str__(self) -> str:
        return (f"ESS {self.ess:.1f} of {self.n} ({100 * self.ess_fraction:.1f}%), largest weight "
                f"{100 * self.max_weight_share:.2f}%, Pareto k {self.pareto_k:.2f}, "
                f"{self.n_zero} zero-weight samples")


def diagnose(log_w, warn: bool = True) -> WeightDiagnostics:
    """ESS, largest weight share and Pareto-k of log weights ``[n]``; warns when k > 0.7."""
    log_w = _check(log_w)
    ess = kish_ess(log_w)
    diag = WeightDiagnostics(n=log_w.size, n_zero=int(np.isneginf(log_w).sum()), ess=ess,
                             ess_fraction=ess / log_w.size, max_weight_share=largest_weight_share(log_w),
                             pareto_k=pareto_k(log_w))
    if warn and not diag.reliable:
        warnings.warn(f"importance weights are heavy-tailed (Pareto k = {diag.pareto_k:.2f} > "
                      f"{PARETO_K_THRESHOLD}): reweighted estimates and their bootstrap errors are "
                      "unreliable; train the generator longer or use it as an MCMC proposal",
                      RuntimeWarning, stacklevel=2)
    return diag


def _bootstrap_indices(n: int, n_bootstrap: int, seed: int | None) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, n, size=(n_bootstrap, n))


def group_labels(groups, n: int) -> tuple[np.ndarray, int]:
    """Labels ``0 .. G-1`` ``[n]`` of the distinct values of ``groups [n]`` and their number ``G``.

    Raises ValueError unless ``groups`` is one integer per sample.
    """
    groups = np.asarray(groups)
    if groups.shape != (n,) or not np.issubdtype(groups.dtype, np.integer):
        raise ValueError(f"groups must be one integer label per sample, shape ({n},), got {groups.dtype} "
                         f"{groups.shape}")
    distinct, labels = np.unique(groups, return_inverse=True)
    return labels.reshape(n), int(distinct.size)


def bootstrap_sums(contributions, n_bootstrap: int, seed: int | np.random.Generator | None = 0,
                   groups=None) -> np.ndarray:
    """Bootstrap replicas of the column sums of per-sample ``contributions [n, m]``.

    Without ``groups``, each replica resamples the ``n`` samples with replacement. With
    ``groups [n]`` (integer labels) it resamples whole groups instead: ``G`` draws with
    replacement from the ``G`` distinct labels, each drawn group adding all its samples. That is
    the bootstrap for samples that are not independent but fall into independent groups, e.g.
    the particles of sequential Monte Carlo grouped by the initial particle they descend from
    (their "Eve" index, the grouping of the Chan & Lai 2013 variance estimator): resampling
    copies a particle, and its copies must be drawn together.

    Parameters
    ----------
    contributions : array-like
        ``[n]`` or ``[n, m]`` float64, e.g. ``(w_i v_i, w_i)`` for a self-normalised mean.
    n_bootstrap : int
        Replicas (>= 1).
    seed : int, numpy.random.Generator or None
        Randomness of the replicas.
    groups : array-like, optional
        ``[n]`` integer group labels.

    Returns
    -------
    numpy.ndarray
        ``[n_bootstrap, m]`` (``[n_bootstrap]`` for 1D contributions) float64 replica sums.

    Examples
    --------
    >>> c = np.array([1.0, 1.0, 10.0])
    >>> reps = bootstrap_sums(c, 1000, seed=0, groups=[0, 0, 1])  # the two ones travel together
    >>> sorted(set(np.round(reps, 6).tolist()))
    [4.0, 12.0, 20.0]
    """
    c = np.asarray(contributions, dtype=np.float64)
    flat = c.ndim == 1
    c = c[:, None] if flat else c
    if c.ndim != 2 or c.shape[0] == 0:
        raise ValueError(f"contributions must be [n] or [n, m] with n >= 1, got shape {np.shape(contributions)}")
    if isinstance(n_bootstrap, bool) or int(n_bootstrap) < 1:
        raise ValueError(f"n_bootstrap must be >= 1, got {n_bootstrap!r}")
    if groups is None:
        sums = c
    else:
        labels, size = group_labels(groups, c.shape[0])
        sums = np.zeros((size, c.shape[1]))
        np.add.at(sums, labels, c)
    out = _replica_sums(sums, n_bootstrap, seed)
    return out[:, 0] if flat else out


def _replica_sums(sums: np.ndarray, n_bootstrap: int, seed) -> np.ndarray:
    """``[n_bootstrap, m]``: each replica draws the ``G`` rows of ``sums [G, m]`` with replacement."""
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    size = sums.shape[0]
    out = np.empty((int(n_bootstrap), sums.shape[1]))
    for r in range(out.shape[0]):  # O(G) memory per replica, never [n_bootstrap, n]
        counts = np.bincount(rng.integers(0, size, size), minlength=size).astype(np.float64)
        out[r] = counts @ sums
    return out


def reweighted_mean(values, log_w, n_bootstrap: int = 200, seed: int | None = 0,
                    groups=None) -> tuple[float, float]:
    """Self-normalised importance-sampling mean of ``values [n]`` and its bootstrap standard error.

    Parameters
    ----------
    values : array-like
        ``[n]`` observable per sample.
    log_w : array-like
        ``[n]`` log weights.
    n_bootstrap : int
        Bootstrap replicas (resampling samples with replacement); 0 gives error NaN.
    seed : int
        Seed of the bootstrap.
    groups : array-like, optional
        ``[n]`` integer labels of independent groups (e.g. the ancestors of annealed samples):
        the bootstrap resamples whole groups (`bootstrap_sums`).
    """
    values = np.asarray(values, dtype=np.float64)
    w = normalized_weights(log_w)
    if values.shape != w.shape:
        raise ValueError(f"values have shape {values.shape} but log weights {w.shape}")
    mean = float(np.sum(w * values))
    if n_bootstrap <= 0:
        return mean, float("nan")
    if groups is not None:
        with np.errstate(invalid="ignore"):  # 0 x inf: a zero-weight sample contributes nothing
            wv = np.where(w > 0, w * values, 0.0)
        reps = bootstrap_sums(np.stack([wv, w], 1), n_bootstrap, seed, groups)
        return mean, float(np.std(reps[:, 0] / reps[:, 1], ddof=1))
    idx = _bootstrap_indices(w.size, n_bootstrap, seed)
    wb = w[idx]
    means = np.sum(wb * values[idx], axis=1) / wb.sum(axis=1)
    return mean, float(np.std(means, ddof=1))


def reweighted_histogram(values, log_w, bins: int | np.ndarray = 50, range: tuple[float, float] | None = None,
                         n_bootstrap: int = 200, seed: int | None = 0, groups=None):
    """Reweighted probability density of ``values [n]`` with bootstrap standard errors.

    ``groups [n]`` (integer labels of independent groups, e.g. ancestors of annealed samples)
    makes the bootstrap resample whole groups (`bootstrap_sums`).

    Returns
    -------
    density : numpy.ndarray
        ``[n_bins]``, normalised to integrate to 1 over the bins.
    error : numpy.ndarray
        ``[n_bins]`` bootstrap standard error of the density (NaN if ``n_bootstrap`` is 0).
    edges : numpy.ndarray
        ``[n_bins + 1]`` bin edges.
    """
    values = np.asarray(values, dtype=np.float64)
    w = normalized_weights(log_w)
    density, edges = np.histogram(values, bins=bins, range=range, weights=w, density=True)
    if n_bootstrap <= 0:
        return density, np.full_like(density, np.nan), edges
    if groups is not None:
        index = np.digitize(values, edges) - 1
        index[values == edges[-1]] = edges.size - 2  # numpy's last bin is closed
        inside = (index >= 0) & (index < density.size)
        labels, size = group_labels(groups, w.size)
        per_group = np.zeros((size, density.size))  # weight of each group in each bin
        np.add.at(per_group, (labels[inside], index[inside]), w[inside])
        reps = _replica_sums(per_group, n_bootstrap, seed)
        with np.errstate(invalid="ignore", divide="ignore"):
            reps = reps / (reps.sum(axis=1, keepdims=True) * np.diff(edges))
        return density, reps.std(axis=0, ddof=1), edges
    reps = np.empty((n_bootstrap, density.size))
    for r, idx in enumerate(_bootstrap_indices(w.size, n_bootstrap, seed)):
        reps[r] = np.histogram(values[idx], bins=edges, weights=w[idx], density=True)[0]
    return density, reps.std(axis=0, ddof=1), edges


def resample(log_w, n: int | None = None, seed: int | None = 0) -> np.ndarray:
    """Indices of ``n`` samples drawn with probability proportional to their weights (systematic).

    Gives an unweighted set (e.g. a trajectory to write) that follows the reweighted distribution.
    """
    w = normalized_weights(log_w)
    n = w.size if n is None else int(n)
    rng = np.random.default_rng(seed)
    positions = (rng.random() + np.arange(n)) / n
    return np.minimum(np.searchsorted(np.cumsum(w), positions), w.size - 1)
