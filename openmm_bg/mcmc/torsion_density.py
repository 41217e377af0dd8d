"""`TorsionMixture`: an exact density on the torus for torsion proposals (a von Mises mixture).

``q(phi) = w_0 / (2 pi)^d + sum_k w_k prod_i exp(kappa_ki cos(phi_i - mu_ki)) / (2 pi I_0(kappa_ki))``

over ``d`` torsions in radians: a mixture of products of von Mises densities (one component per
rotamer, so correlated torsions such as chi1/chi2 are described jointly) plus a uniform component
of weight ``w_0``, which keeps ``q > 0`` everywhere (a proposal that can reach every torsion value,
and bounded Hastings ratios). Normalised with respect to ``dphi_1 ... dphi_d`` on ``[-pi, pi)^d``;
log densities in float64. `TorsionMixture.fit` fits it to MD torsions by expectation maximisation.

Examples
--------
>>> import numpy as np
>>> q = TorsionMixture(weights=[1.0], means=[[0.0]], concentrations=[[4.0]], uniform_weight=0.1)
>>> phi = np.linspace(-np.pi, np.pi, 20001)[:-1, None]
>>> round(float(np.exp(q.log_prob(phi)).mean() * 2 * np.pi), 6)   # normalised
1.0
>>> q.sample(3, np.random.default_rng(0)).shape
(3, 1)
"""

from __future__ import annotations

import math

import numpy as np
from scipy.special import i0e

__all__ = ["TorsionMixture"]

_LOG_2PI = math.log(2.0 * math.pi)


def _log_norm(kappa: np.ndarray) -> np.ndarray:
    """``log(2 pi I_0(kappa))``, stable for large ``kappa``."""
    return _LOG_2PI + np.log(i0e(kappa)) + kappa


def logsumexp(a: np.ndarray, axis: int, keepdims: bool = False) -> np.ndarray:
    """``log sum exp`` along ``axis`` (numpy only: scipy's costs milliseconds on tiny arrays)."""
    m = np.max(a, axis=axis, keepdims=True)
    m = np.where(np.isfinite(m), m, 0.0)
    out = np.log(np.sum(np.exp(a - m), axis=axis, keepdims=True)) + m
    return out if keepdims else np.squeeze(out, axis=axis)


def _kappa_from_r(r: np.ndarray, max_kappa: float) -> np.ndarray:
    """Concentration with mean resultant length ``r`` (Best-Fisher approximation of ``A^-1``)."""
    r = np.clip(r, 0.0, 1.0 - 1e-12)
    k = np.where(r < 0.53, 2 * r + r**3 + 5 * r**5 / 6,
                 np.where(r < 0.85, -0.4 + 1.39 * r + 0.43 / (1 - r), 1.0 / (r**3 - 4 * r**2 + 3 * r)))
    return np.clip(k, 1e-3, max_kappa)


class TorsionMixture:
    """A mixture of products of von Mises densities over ``d`` torsions, plus a uniform component.

    Parameters
    ----------
    weights : array-like
        ``[K]`` weights of the von Mises components (normalised together with ``uniform_weight``).
    means : array-like
        ``[K, d]`` rad.
    concentrations : array-like
        ``[K, d]`` ``kappa`` (positive; ``1/kappa`` is roughly the variance in rad^2).
    uniform_weight : float
        Weight ``w_0`` in ``[0, 1)`` of the uniform component.

    Attributes
    ----------
    dim : int
        ``d``, the number of torsions.
    """

    def __init__(self, weights, means, concentrations, uniform_weight: float = 0.05):
        w = np.asarray(weights, dtype=np.float64).reshape(-1)
        mu = np.asarray(means, dtype=np.float64)
        kappa = np.asarray(concentrations, dtype=np.float64)
        if mu.ndim != 2 or mu.shape[0] != len(w) or kappa.shape != mu.shape:
            raise ValueError(f"means and concentrations must be [K, d] with K = len(weights) = {len(w)}, "
                             f"got {mu.shape} and {kappa.shape}")
        if not (np.all(np.isfinite(w)) and np.all(w >= 0) and w.sum() > 0):
            raise ValueError("weights must be finite, non-negative and not all zero")
        if not np.all(np.isfinite(mu)) or not (np.all(np.isfinite(kappa)) and np.all(kappa > 0)):
            raise ValueError("means must be finite and concentrations finite and positive")
        if not 0.0 <= float(uniform_weight) < 1.0:
            raise ValueError(f"uniform_weight must lie in [0, 1), got {uniform_weight}")
        self.uniform_weight = float(uniform_weight)
        self.weights = (1.0 - self.uniform_weight) * w / w.sum()
        self.means = np.angle(np.exp(1j * mu))
        self.concentrations = kappa
        self.dim = mu.shape[1]

    # ------------------------------------------------------------------ density
    def _component_log_probs(self, phi: np.ndarray) -> np.ndarray:
        """``[n, K]`` ``log w_k + log p_k(phi)``."""
        kappa = self.concentrations[None]
        c = kappa * np.cos(phi[:, None, :] - self.means[None]) - _log_norm(self.concentrations)[None]
        with np.errstate(divide="ignore"):
            return np.log(self.weights)[None] + c.sum(-1)

    def log_prob(self, phi) -> np.ndarray:
        """``[n]`` float64 ``log q(phi)`` for ``phi`` ``[n, d]`` (rad, any period)."""
        phi = self._check(phi)
        parts = [self._component_log_probs(phi)]
        if self.uniform_weight > 0:
            parts.append(np.full((len(phi), 1), math.log(self.uniform_weight) - self.dim * _LOG_2PI))
        return logsumexp(np.concatenate(parts, axis=1), axis=1)

    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """``[n, d]`` torsions (rad, in ``[-pi, pi)``) drawn from ``q``."""
        p = np.concatenate([[self.uniform_weight], self.weights])
        comp = np.minimum(np.searchsorted(np.cumsum(p / p.sum()), rng.random(int(n)), side="right"), len(p) - 1)
        out = rng.uniform(-math.pi, math.pi, size=(int(n), self.dim))
        vm = comp > 0
        if vm.any():
            k = comp[vm] - 1
            out[vm] = rng.vonmises(self.means[k], self.concentrations[k])
        return np.angle(np.exp(1j * out))

    def _check(self, phi) -> np.ndarray:
        phi = np.asarray(phi, dtype=np.float64)
        if phi.ndim == 1 and self.dim == 1:
            phi = phi[:, None]
        if phi.ndim != 2 or phi.shape[1] != self.dim:
            raise ValueError(f"expected torsions [n, {self.dim}] in rad, got shape {phi.shape}")
        return phi

    # ------------------------------------------------------------------ fitting
    @classmethod
    def fit(cls, phi, n_components: int = 6, uniform_weight: float = 0.05, n_iter: int = 200,
            max_concentration: float = 200.0, seed: int = 0) -> TorsionMixture:
        """Fit the von Mises components to torsions ``phi`` ``[n, d]`` (rad) by expectation maximisation.

        The uniform component's weight is fixed (not fitted); components start at distinct data
        points (k-means++ seeding on the torus) with ``kappa = 5``; empty components are dropped.

        Parameters
        ----------
        phi : array-like
            ``[n, d]`` torsions, rad (e.g. `openmm_bg.mcmc.rotors.torsions_of` of MD frames).
        n_components : int
            ``K``, at most the number of distinct frames.
        uniform_weight : float
            ``w_0``.
        n_iter : int
            EM iterations.
        max_concentration : float
            Upper bound on ``kappa`` (a floor on the component widths).
        seed : int
            Seeds the initialisation.

        Examples
        --------
        >>> import numpy as np
        >>> rng = np.random.default_rng(1)
        >>> phi = np.concatenate([rng.vonmises(-1.0, 8.0, 500), rng.vonmises(2.0, 8.0, 500)])[:, None]
        >>> q = TorsionMixture.fit(phi, n_components=2)
        >>> np.round(np.sort(q.means[:, 0]), 1).tolist()
        [-1.0, 2.0]
        """
        phi = np.asarray(phi, dtype=np.float64)
        if phi.ndim == 1:
            phi = phi[:, None]
        if phi.ndim != 2 or len(phi) < 2 or not np.all(np.isfinite(phi)):
            raise ValueError(f"phi must be finite torsions [n_frames >= 2, d] in rad, got shape {phi.shape}")
        k_max = int(n_components)
        if k_max < 1:
            raise ValueError(f"n_components must be >= 1, got {n_components}")
        k_max = min(k_max, len(phi))
        rng = np.random.default_rng(seed)
        # k-means++ seeding with the chord distance on the torus
        centres = [phi[rng.integers(len(phi))]]
        for _ in range(1, k_max):
            d2 = np.min([(2 - 2 * np.cos(phi - c)).sum(-1) for c in centres], axis=0)
            if d2.sum() <= 0:
                break
            centres.append(phi[rng.choice(len(phi), p=d2 / d2.sum())])
        mu = np.array(centres)
        kappa = np.full_like(mu, 5.0)
        w = np.full(len(mu), 1.0 / len(mu))
        for _ in range(int(n_iter)):
            model = cls(w, mu, kappa, uniform_weight=0.0)
            lp = model._component_log_probs(phi)
            resp = np.exp(lp - logsumexp(lp, axis=1, keepdims=True))
            nk = resp.sum(0)
            keep = nk > 1e-8 * len(phi)
            resp, nk = resp[:, keep], nk[keep]
            w = nk / nk.sum()
            s = resp.T @ np.sin(phi)
            c = resp.T @ np.cos(phi)
            mu = np.arctan2(s, c)
            r = np.sqrt(s**2 + c**2) / nk[:, None]
            kappa = _kappa_from_r(r, max_concentration)
        return cls(w, mu, kappa, uniform_weight=uniform_weight)

    # ------------------------------------------------------------------ serialisation
    def to_dict(self) -> dict:
        """Plain lists and floats (for `TorsionMove`'s serialisation); `from_dict` reads it back."""
        return {"weights": self.weights.tolist(), "means": self.means.tolist(),
                "concentrations": self.concentrations.tolist(), "uniform_weight": self.uniform_weight}

    @classmethod
    def from_dict(cls, d: dict) -> TorsionMixture:
        """Inverse of `to_dict`."""
        return cls(d["weights"], d["means"], d["concentrations"], uniform_weight=d["uniform_weight"])

    def __repr__(self) -> str:
        return f"TorsionMixture(dim={self.dim}, n_components={len(self.weights)}, uniform_weight={self.uniform_weight})"
