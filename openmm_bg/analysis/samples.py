"""`Samples`: configurations drawn from a Boltzmann Generator with their exact importance weights.

Examples
--------
>>> import numpy as np
>>> from openmm_bg.systems import load
>>> from openmm_bg.analysis.samples import Samples
>>> from openmm_bg.energy import energy_for
>>> dw = load("double_well")
>>> x = np.zeros((3, 1, 3)); x[:, 0, 0] = [-1.7, -1.6, 1.5]
>>> s = Samples(dw, x, energies=energy_for(dw)(x).numpy(), log_prob=np.zeros(3))
>>> s.log_weights.shape, round(s.ess_fraction, 2) <= 1.0
((3,), True)
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import mdtraj
import numpy as np

from ..systems import MolecularSystem
from . import reweighting

__all__ = ["Samples"]


@dataclass
class Samples:
    """Weighted configurations with energies, log densities and log weights (all float64).

    Plain samples (independent draws of a generator, `BoltzmannGenerator.sample`) get their log
    weights from the definition ``log w = -u(x) - log p_X(x)``. Samples produced otherwise (e.g. by
    annealed importance sampling or resampling) carry their own ``log_weights``, and then
    ``log_prob`` is not the density of the set: `has_proposal_density` tells estimators that need
    one (temperature reweighting, MBAR with the generator as reference) to refuse them.

    Parameters
    ----------
    system : MolecularSystem
        The system sampled.
    positions : numpy.ndarray
        ``[n, n_atoms, 3]`` in nm (NaN rows: out of the generator's domain, no configuration).
    energies : numpy.ndarray
        ``[n]`` reduced energies u(x) in kT at ``temperature``; ``+inf`` where evaluation failed.
    log_prob : numpy.ndarray
        ``[n]`` log density of the proposal in Cartesian space (rigid-body motion uniform);
        ``-inf`` out of domain.
    temperature : float, optional
        K at which ``energies`` and the weights are defined (default: the system's).
    rejected : numpy.ndarray, optional
        ``bool[n]``: samples given weight 0 for another reason (inverted stereocentre).
    counts : dict, optional
        Why samples got weight 0: ``out_of_domain``, ``inverted_chirality``, ``failed_energy``.
    log_weights : numpy.ndarray, optional
        ``[n]`` log weights (up to a constant) of samples that are not plain draws; default: computed
        as ``-u - log p_X``. Must be ``-inf`` (weight 0) where the energy failed or the sample is
        rejected; NaN and ``+inf`` are refused.
    log_normalizer : float, optional
        Estimate of ``log Z`` (up to the same constant as the weights) where the producer has one,
        e.g. from annealed importance sampling; ``None`` for plain samples.
    ancestors : numpy.ndarray, optional
        ``int[n]`` index of each sample's ancestor after resampling (for annealed samples: the
        initial particle it descends from); ``None`` for plain samples. Samples with the same
        ancestor are correlated: bootstraps (`expectation`, the free-energy estimators) resample
        whole lineages.
    provenance : dict, optional
        How the set was made (JSON-serialisable), e.g. ``{"kind": "plain", "generator": ..., "seed":
        0, "temperature": 300.0}``. ``kind`` defaults to ``"plain"`` without explicit ``log_weights``
        and to ``"weighted"`` with them.

    Attributes
    ----------
    log_weights : numpy.ndarray
        ``[n]`` log w = -u(x) - log p_X(x) (up to a constant) for plain samples; ``-inf`` for weight 0.
    """

    system: MolecularSystem
    positions: np.ndarray
    energies: np.ndarray
    log_prob: np.ndarray
    temperature: float | None = None
    rejected: np.ndarray | None = None
    counts: dict = field(default_factory=dict)
    log_weights: np.ndarray | None = None
    log_normalizer: float | None = None
    ancestors: np.ndarray | None = None
    provenance: dict = field(default_factory=dict)

    def __post_init__(self):
        self.positions = np.asarray(self.positions)
        self.energies = np.asarray(self.energies, dtype=np.float64)
        self.log_prob = np.asarray(self.log_prob, dtype=np.float64)
        n = self.positions.shape[0]
        if self.energies.shape != (n,) or self.log_prob.shape != (n,):
            raise ValueError(f"energies and log_prob must have shape [{n}], got {self.energies.shape} "
                             f"and {self.log_prob.shape}")
        if self.temperature is None:
            self.temperature = self.system.temperature
        if self.rejected is None:
            self.rejected = np.zeros(n, dtype=bool)
        self.rejected = np.asarray(self.rejected, dtype=bool)
        if np.isnan(self.energies).any() or np.isnan(self.log_prob).any():
            raise ValueError("NaN energies or log densities: mark failed samples with +inf energy or "
                             "-inf log density instead")
        bad_energy = ~np.isfinite(self.energies)
        bad_domain = ~np.isfinite(self.log_prob)
        self.counts = {"out_of_domain": int(bad_domain.sum()),
                       "failed_energy": int((bad_energy & ~bad_domain).sum()),
                       "inverted_chirality": int((self.rejected & ~bad_domain & ~bad_energy).sum()),
                       **self.counts}
        self.provenance = dict(self.provenance)
        if self.log_weights is None:
            with np.errstate(invalid="ignore"):
                log_w = -self.energies - self.log_prob
            log_w[bad_energy | bad_domain | self.rejected] = -np.inf
            self.log_weights = log_w
            self.provenance.setdefault("kind", "plain")
        else:
            self.log_weights = self._checked_log_weights(self.log_weights, n, bad_energy | self.rejected)
            self.provenance.setdefault("kind", "weighted")
        if self.ancestors is not None:
            self.ancestors = np.asarray(self.ancestors)
            if self.ancestors.shape != (n,) or not np.issubdtype(self.ancestors.dtype, np.integer):
                raise ValueError(f"ancestors must be integer indices of shape [{n}], got {self.ancestors.dtype} "
                                 f"{self.ancestors.shape}")
        if self.log_normalizer is not None:
            self.log_normalizer = float(self.log_normalizer)
            if math.isnan(self.log_normalizer):
                raise ValueError("log_normalizer is NaN; pass None if there is no estimate")
        if self.provenance["kind"] == "plain" and (self.ancestors is not None or self.log_normalizer is not None):
            raise ValueError("plain samples (independent draws) have no ancestors or log_normalizer; give "
                             "provenance={'kind': ...} naming how the set was made")

    @staticmethod
    def _checked_log_weights(log_w, n: int, zero: np.ndarray) -> np.ndarray:
        log_w = np.array(log_w, dtype=np.float64)
        if log_w.shape != (n,):
            raise ValueError(f"log_weights must have shape [{n}], got {log_w.shape}")
        if np.isnan(log_w).any() or np.isposinf(log_w).any():
            raise ValueError("log_weights contain NaN or +inf; mark weight 0 with -inf")
        if np.isfinite(log_w[zero]).any():
            raise ValueError(f"{int(np.isfinite(log_w[zero]).sum())} samples with a failed energy or a rejected "
                             "configuration have a finite log weight; give them -inf (weight 0)")
        return log_w

    @property
    def has_proposal_density(self) -> bool:
        """Whether ``log_prob`` is the density the samples were drawn from (plain samples only).

        Estimators that use the generator as a normalised reference density (temperature
        reweighting, BAR/MBAR with the generator as a state, the two-generator estimate) need it.
        """
        return self.provenance.get("kind") == "plain"

    def __len__(self) -> int:
        return self.positions.shape[0]

    @classmethod
    def unweighted(cls, system: MolecularSystem, positions, temperature: float | None = None) -> Samples:
        """Plain configurations (MD frames, raw generator draws) as a sample set with equal weights.

        Parameters
        ----------
        system : MolecularSystem
        positions : array-like or mdtraj.Trajectory
            ``[n, n_atoms, 3]`` in nm.
        temperature : float, optional
            K (default: the system's).

        Examples
        --------
        >>> import numpy as np
        >>> from openmm_bg.systems import load
        >>> s = Samples.unweighted(load("double_well"), np.zeros((4, 1, 3)))
        >>> s.ess, bool((s.log_weights == 0).all())
        (4.0, True)
        """
        x = np.asarray(positions.xyz if hasattr(positions, "xyz") else positions, dtype=np.float64)
        n = len(x)
        return cls(system, x, energies=np.zeros(n), log_prob=np.zeros(n), temperature=temperature)

    # ------------------------------------------------------------------ diagnostics
    def diagnostics(self, warn: bool = True) -> reweighting.WeightDiagnostics:
        """ESS, largest weight's share and Pareto-k (warns when the weights are heavy-tailed)."""
        return reweighting.diagnose(self.log_weights, warn=warn)

    @property
    def ess(self) -> float:
        """Kish effective sample size of the weights."""
        return reweighting.kish_ess(self.log_weights)

    @property
    def ess_fraction(self) -> float:
        """``ess / n``."""
        return self.ess / len(self)

    @property
    def weights(self) -> np.ndarray:
        """Self-normalised weights ``[n]`` (sum 1)."""
        return reweighting.normalized_weights(self.log_weights)

    def summary(self) -> str:
        """One paragraph: counts of rejected samples and the weight diagnostics (ESS, largest weight
        share, Pareto k); for annealed sets also the levels, energy evaluations and distinct ancestors."""
        rejected = ", ".join(f"{v} {k.replace('_', ' ')}" for k, v in self.counts.items())
        text = f"{len(self)} samples at {self.temperature:g} K ({rejected}); {self.diagnostics(warn=False)}"
        p = self.provenance
        if p.get("kind") == "annealed":
            text += (f"; annealed in {p.get('n_levels')} levels ({p.get('n_resampling', 0)} resamplings), "
                     f"{p.get('n_energy_evaluations')} energy evaluations, "
                     f"{p.get('n_distinct_ancestors')} distinct ancestors of {len(self)}")
        return text

    # ------------------------------------------------------------------ observables
    def coordinate(self, name: str) -> np.ndarray:
        """Values ``[n]`` of a named reaction coordinate of the system."""
        if name not in self.system.reaction_coordinates:
            raise KeyError(f"system {self.system.name!r} has no reaction coordinate {name!r}; it has "
                           f"{sorted(self.system.reaction_coordinates)}")
        return self.system.reaction_coordinates[name](self.positions)

    def expectation(self, values, n_bootstrap: int = 200, seed: int = 0) -> tuple[float, float]:
        """Reweighted mean of ``values [n]`` (or a function of positions) and its bootstrap error.

        With `ancestors` (annealed or resampled sets) the bootstrap resamples whole lineages.
        """
        v = values(self.positions) if callable(values) else values
        return reweighting.reweighted_mean(np.asarray(v, dtype=np.float64), self.log_weights,
                                           n_bootstrap=n_bootstrap, seed=seed, groups=self.ancestors)

    # ------------------------------------------------------------------ export
    def to_mdtraj(self) -> mdtraj.Trajectory:
        """All samples (unweighted, raw) as an ``mdtraj.Trajectory``."""
        return mdtraj.Trajectory(self.positions.astype(np.float32), self.system.mdtraj_topology)

    def resample(self, n: int | None = None, seed: int = 0) -> mdtraj.Trajectory:
        """An unweighted trajectory of ``n`` samples drawn in proportion to their weights."""
        idx = reweighting.resample(self.log_weights, n=n, seed=seed)
        return mdtraj.Trajectory(self.positions[idx].astype(np.float32), self.system.mdtraj_topology)

    def save(self, path: str | os.PathLike) -> Path:
        """Write the weighted set: ``.npz`` with positions (nm), energies (kT), log densities and
        log weights, plus the temperature (K), counts, provenance and (where set) the log normaliser
        and ancestors; written atomically."""
        path = Path(path)
        if path.suffix != ".npz":
            path = path.with_suffix(path.suffix + ".npz") if path.suffix else path.with_suffix(".npz")
        tmp = path.with_name(path.name + ".tmp.npz")
        try:
            meta = json.dumps({"system": self.system.name, "counts": self.counts, "provenance": self.provenance,
                               "log_normalizer": self.log_normalizer})
        except TypeError as err:
            raise ValueError(f"provenance must be JSON-serialisable to be saved ({err})") from err
        extra = {} if self.ancestors is None else {"ancestors": self.ancestors}
        np.savez_compressed(tmp, positions=self.positions, energies=self.energies, log_prob=self.log_prob,
                            log_weights=self.log_weights, rejected=self.rejected,
                            temperature=np.float64(self.temperature), meta=meta, **extra)
        os.replace(tmp, path)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike, system: MolecularSystem) -> Samples:
        """Read a set written by `save` for ``system`` (files of earlier versions are plain samples)."""
        try:
            with np.load(path) as data:
                positions = data["positions"]
                energies, log_prob, rejected = data["energies"], data["log_prob"], data["rejected"]
                temperature = float(data["temperature"])
                meta = json.loads(str(data["meta"]))
                log_weights = data["log_weights"] if "log_weights" in data else None
                ancestors = data["ancestors"] if "ancestors" in data else None
        except (OSError, KeyError, ValueError) as err:
            raise ValueError(f"{path}: not a samples file written by Samples.save ({err})") from err
        if positions.shape[1] != system.n_atoms:
            raise ValueError(f"{path} holds samples of {positions.shape[1]} atoms, system {system.name!r} "
                             f"has {system.n_atoms}")
        provenance = meta.get("provenance") or {"kind": "plain"}
        plain = provenance.get("kind") == "plain"
        return cls(system, positions, energies, log_prob, temperature, rejected, meta.get("counts", {}),
                   log_weights=None if plain else log_weights, log_normalizer=meta.get("log_normalizer"),
                   ancestors=ancestors, provenance=provenance)
