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

import math
import numbers
import warnings
from dataclasses import asdict, dataclass

import numpy as np

from .._validation import non_negative_int, number, positive_int

__all__ = ["InsufficientSamplesError", "normalized_weights", "kish_ess", "largest_weight_share", "pareto_k",
           "WeightDiagnostics", "diagnose", "format_k", "reweighted_mean", "reweighted_histogram", "resample",
           "group_labels", "bootstrap_sums"]

#: Above this Pareto-k the weights' tail is too heavy for reliable estimates (Vehtari et al.).
PARETO_K_THRESHOLD = 0.7


class InsufficientSamplesError(ValueError):
    """Too few samples with weight > 0 for an estimate to mean anything: none at all, none inside a
    state or the bins' range, or fewer effective samples than asked for."""


def _check(log_w) -> np.ndarray:
    log_w = np.asarray(log_w, dtype=np.float64)
    if log_w.ndim != 1 or log_w.size == 0:
        raise ValueError(f"log weights must be a non-empty 1D array, got shape {log_w.shape}")
    if np.isnan(log_w).any() or np.isposinf(log_w).any():
        bad = int(np.isnan(log_w).sum() + np.isposinf(log_w).sum())
        raise ValueError(f"{bad} log weights are NaN or +inf; an energy or log-density evaluation failed "
                         "upstream (use -inf for samples that should get weight zero)")
    if np.isneginf(log_w).all():
        raise InsufficientSamplesError(
            f"every sample has weight zero (all {log_w.size} log weights are -inf): the generator's samples "
            "are all out of domain, inverted or failed; no reweighted estimate is possible (check the "
            "system the generator is used with, or train it longer)")
    return log_w


def check_n_bootstrap(n_bootstrap) -> int:
    """Bootstrap replicas: 0 (no error bar) or an integer >= 2 (a standard deviation needs two).

    Examples
    --------
    >>> check_n_bootstrap(0), check_n_bootstrap(200)
    (0, 200)
    >>> check_n_bootstrap(1)
    Traceback (most recent call last):
    ...
    ValueError: n_bootstrap must be 0 (no error bar) or an integer >= 2, got 1
    """
    what = "n_bootstrap must be 0 (no error bar) or an integer >= 2"
    try:
        n = non_negative_int("n_bootstrap", n_bootstrap)
    except ValueError:
        raise ValueError(f"{what}, got {n_bootstrap!r}") from None
    if n == 1:
        raise ValueError(f"{what}, got 1")
    return n


def check_seed(seed) -> int | None:
    """A bootstrap or resampling seed: None or an integer >= 0."""
    return None if seed is None else non_negative_int("seed", seed)


def check_bins(bins, min_bins: int = 1, name: str = "bins") -> int | np.ndarray:
    """``bins`` as a count (int >= ``min_bins``) or as strictly increasing, finite edges (float64 array).

    Examples
    --------
    >>> check_bins(10), check_bins([0.0, 0.5, 2.0]).tolist()
    (10, [0.0, 0.5, 2.0])
    >>> check_bins([0.0, 0.0, 1.0])
    Traceback (most recent call last):
    ...
    ValueError: bins must be a number of bins >= 1 or strictly increasing, finite edges; got edges that do not increase
    """
    what = f"{name} must be a number of bins >= {min_bins} or strictly increasing, finite edges"
    if isinstance(bins, numbers.Real) and not isinstance(bins, bool):
        if isinstance(bins, numbers.Integral) or (math.isfinite(bins) and bins == int(bins)):
            if int(bins) >= min_bins:
                return int(bins)
        raise ValueError(f"{what}; got {bins}")
    if isinstance(bins, str | bytes | bool) or bins is None:
        raise ValueError(f"{what}; got {bins!r}")
    try:
        edges = np.asarray(bins, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"{what}; got {type(bins).__name__}") from None
    if edges.ndim != 1 or edges.size < min_bins + 1:
        raise ValueError(f"{what}; got edges of shape {edges.shape} (at least {min_bins + 1} are needed)")
    if not np.isfinite(edges).all():
        raise ValueError(f"{what}; got edges that are not all finite")
    if not (np.diff(edges) > 0).all():
        raise ValueError(f"{what}; got edges that do not increase")
    return edges


def check_range(range_, name: str = "range") -> tuple[float, float] | None:
    """``None`` or ``(low, high)`` with finite ``low < high``.

    Examples
    --------
    >>> check_range((-1, 2))
    (-1.0, 2.0)
    """
    if range_ is None:
        return None
    what = f"{name} must be (low, high) with finite low < high"
    if isinstance(range_, str | bytes) or not hasattr(range_, "__len__") or len(range_) != 2:
        raise ValueError(f"{what}, got {range_!r}")
    try:
        low, high = (number(name, v) for v in range_)
    except ValueError:
        raise ValueError(f"{what}, got {range_!r}") from None
    if not low < high:
        raise ValueError(f"{what}, got {range_!r}")
    return low, high


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
    ~25 non-zero weights, ``inf`` when the tail underflows next to the largest weight (one weight
    dominates) and ``-inf`` for a flat tail (the largest weights all equal).

    Tied weights (copies of resampled particles that no move has separated yet) can make most of
    the tail equal to the threshold weight; the fit then uses the exceedances over that tied value,
    which a generalised Pareto tail shares with the original threshold (threshold stability).
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
    if tail[int(m / 4 + 0.5) - 1] <= 0:
        if threshold == 0:  # most of the tail underflows next to the largest weight
            return float("inf")
        tail = tail[tail > 0]  # ties at the threshold: fit above the tied value
        if tail.size < 5:
            return float("-inf")
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
                f"{100 * self.max_weight_share:.2f}%, Pareto k {format_k(self.pareto_k)}, "
                f"{self.n_zero} zero-weight samples")


def format_k(k: float) -> str:
    """A Pareto k for printing: two decimals, or ``"n/a"`` where it is undetermined (NaN: too few weights).

    Examples
    --------
    >>> format_k(0.4321), format_k(float("nan"))
    ('0.43', 'n/a')
    """
    return "n/a" if math.isnan(k) else f"{k:.2f}"


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


def _weighted_values(values, log_w: np.ndarray, what: str = "values") -> np.ndarray:
    """``values [n]`` as float64, checked where the weight is > 0 (finite) and 0 where it is zero: a
    zero-weight sample (e.g. out of domain, NaN positions) may carry any value, NaN included."""
    values = np.asarray(values, dtype=np.float64)
    if values.shape != log_w.shape:
        raise ValueError(f"{what} have shape {values.shape} but log weights {log_w.shape}")
    weighted = np.isfinite(log_w)
    bad = weighted & ~np.isfinite(values)
    if bad.any():
        raise ValueError(f"{int(bad.sum())} {what} of samples with weight > 0 are NaN or infinite; an observable "
                         "must be finite wherever a sample carries weight")
    return np.where(weighted, values, 0.0)


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
        ``[n]`` observable per sample; finite wherever the weight is > 0 (values of zero-weight
        samples are ignored, NaN included).
    log_w : array-like
        ``[n]`` log weights.
    n_bootstrap : int
        Bootstrap replicas (resampling samples, or whole groups, with replacement): 0 (no error bar: NaN) or >= 2.
    seed : int, optional
        Seed of the bootstrap (>= 0).
    groups : array-like, optional
        ``[n]`` integer labels of independent groups (e.g. the ancestors of annealed samples):
        the bootstrap resamples whole groups (`bootstrap_sums`).

    Raises
    ------
    InsufficientSamplesError
        Every weight is zero.
    ValueError
        Bad arguments, or a NaN / infinite value of a sample with weight > 0.

    Examples
    --------
    >>> import math
    >>> import numpy as np
    >>> mean, error = reweighted_mean([1.0, 3.0, np.nan], [0.0, 0.0, -np.inf], n_bootstrap=0)
    >>> mean, math.isnan(error)
    (2.0, True)
    """
    n_bootstrap, seed = check_n_bootstrap(n_bootstrap), check_seed(seed)
    log_w = _check(log_w)
    values = _weighted_values(values, log_w)
    w = normalized_weights(log_w)
    mean = float(np.sum(w * values))
    if n_bootstrap == 0:
        return mean, float("nan")
    if groups is not None:
        with np.errstate(invalid="ignore"):  # 0 x inf: a zero-weight sample contributes nothing
            wv = np.where(w > 0, w * values, 0.0)
        reps = bootstrap_sums(np.stack([wv, w], 1), n_bootstrap, seed, groups)
        return mean, float(np.std(reps[:, 0] / reps[:, 1], ddof=1))
    idx = _bootstrap_indices(w.size, n_bootstrap, seed)
    wb = w[idx]
    total = wb.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):  # a replica that drew no weight has no mean
        means = np.sum(wb * values[idx], axis=1) / total
    means = means[total > 0]
    return mean, float(np.std(means, ddof=1)) if means.size > 1 else float("nan")


def reweighted_histogram(values, log_w, bins: int | np.ndarray = 50, range: tuple[float, float] | None = None,
                         n_bootstrap: int = 200, seed: int | None = 0, groups=None):
    """Reweighted probability density of ``values [n]`` with bootstrap standard errors.

    Parameters
    ----------
    values : array-like
        ``[n]`` observable per sample (values of zero-weight samples are ignored, NaN included).
    log_w : array-like
        ``[n]`` log weights.
    bins : int or array-like
        Number of bins (>= 1) or strictly increasing bin edges.
    range : (float, float), optional
        ``(low, high)`` with ``low < high``; default the range of the weighted values.
    n_bootstrap : int
        Bootstrap replicas: 0 (no error bars: NaN) or >= 2.
    seed : int, optional
        Seed of the bootstrap.
    groups : array-like, optional
        ``[n]`` integer labels of independent groups (e.g. ancestors of annealed samples): the
        bootstrap resamples whole groups (`bootstrap_sums`).

    Returns
    -------
    density : numpy.ndarray
        ``[n_bins]``, normalised to integrate to 1 over the bins.
    error : numpy.ndarray
        ``[n_bins]`` bootstrap standard error of the density (NaN if ``n_bootstrap`` is 0).
    edges : numpy.ndarray
        ``[n_bins + 1]`` bin edges.

    Raises
    ------
    InsufficientSamplesError
        Every weight is zero, or no sample with weight > 0 falls inside the bins.
    """
    bins, range = check_bins(bins), check_range(range)
    n_bootstrap, seed = check_n_bootstrap(n_bootstrap), check_seed(seed)
    log_w = _check(log_w)
    weighted = np.isfinite(log_w)
    values = _weighted_values(values, log_w)
    w = normalized_weights(log_w)
    if isinstance(bins, int):
        if range is None:  # the weighted values' range (zero-weight samples carry placeholders)
            low, high = float(values[weighted].min()), float(values[weighted].max())
            range = (low, high) if high > low else (low - 0.5, high + 0.5)
        edges = np.linspace(range[0], range[1], bins + 1)
    else:
        edges = bins
    inside = weighted & (values >= edges[0]) & (values <= edges[-1])
    if not (w[inside] > 0).any():
        raise InsufficientSamplesError(
            f"no sample with weight > 0 falls inside the bins ({edges[0]:g} to {edges[-1]:g}; the weighted "
            f"values span {values[weighted].min():g} to {values[weighted].max():g}): widen the range or the bins")
    values = np.where(weighted, values, edges[0] - 1.0)  # zero-weight samples: in no bin
    density, edges = np.histogram(values, bins=edges, weights=w, density=True)
    if n_bootstrap == 0:
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
    reps = np.full((n_bootstrap, density.size), np.nan)
    for r, idx in enumerate(_bootstrap_indices(w.size, n_bootstrap, seed)):
        counts = np.histogram(values[idx], bins=edges, weights=w[idx])[0]
        if counts.sum() > 0:  # a replica that drew no weight inside the bins has no density
            reps[r] = counts / counts.sum() / np.diff(edges)
    filled = np.isfinite(reps[:, 0])
    error = reps[filled].std(axis=0, ddof=1) if filled.sum() > 1 else np.full_like(density, np.nan)
    return density, error, edges


def resample(log_w, n: int | None = None, seed: int | None = 0) -> np.ndarray:
    """Indices of ``n`` samples drawn with probability proportional to their weights (systematic).

    Gives an unweighted set (e.g. a trajectory to write) that follows the reweighted distribution.

    Parameters
    ----------
    log_w : array-like
        ``[n_samples]`` log weights (not all ``-inf``).
    n : int, optional
        Number of indices, >= 1 (default: as many as samples).
    seed : int, optional
        Seed (>= 0).

    Examples
    --------
    >>> import numpy as np
    >>> resample([-np.inf, 0.0, np.log(3.0)], n=4).tolist()
    [1, 2, 2, 2]
    """
    n = None if n is None else positive_int("n", n)
    seed = check_seed(seed)
    w = normalized_weights(log_w)
    n = w.size if n is None else n
    rng = np.random.default_rng(seed)
    positions = (rng.random() + np.arange(n)) / n
    return np.minimum(np.searchsorted(np.cumsum(w), positions), w.size - 1)
