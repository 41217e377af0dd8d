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
    """Generator samples with energies, log densities and log weights (all float64).

    Parameters
    ----------
    system : MolecularSystem
        The system sampled.
    positions : numpy.ndarray
        ``[n, n_atoms, 3]`` in nm.
    energies : numpy.ndarray
        ``[n]`` reduced energies u(x) in kT at ``temperature``; ``+inf`` where evaluation failed.
    log_prob : numpy.ndarray
        ``[n]`` log density of the generator in Cartesian space (rigid-body motion uniform);
        ``-inf`` out of domain.
    temperature : float, optional
        K at which ``energies`` and the weights are defined (default: the system's).
    rejected : numpy.ndarray, optional
        ``bool[n]``: samples given weight 0 for another reason (inverted stereocentre).
    counts : dict, optional
        Why samples got weight 0: ``out_of_domain``, ``inverted_chirality``, ``failed_energy``.

    Attributes
    ----------
    log_weights : numpy.ndarray
        ``[n]`` log w = -u(x) - log p_X(x) (up to a constant); ``-inf`` for weight 0.
    """

    system: MolecularSystem
    positions: np.ndarray
    energies: np.ndarray
    log_prob: np.ndarray
    temperature: float | None = None
    rejected: np.ndarray | None = None
    counts: dict = field(default_factory=dict)

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
        if np.isnan(self.energies).any() or np.isnan(self.log_prob).any():
            raise ValueError("NaN energies or log densities: mark failed samples with +inf energy or "
                             "-inf log density instead")
        bad_energy = ~np.isfinite(self.energies)
        bad_domain = ~np.isfinite(self.log_prob)
        self.counts = {"out_of_domain": int(bad_domain.sum()),
                       "failed_energy": int((bad_energy & ~bad_domain).sum()),
                       "inverted_chirality": int((self.rejected & ~bad_domain & ~bad_energy).sum()),
                       **self.counts}
        with np.errstate(invalid="ignore"):
            log_w = -self.energies - self.log_prob
        log_w[bad_energy | bad_domain | self.rejected] = -np.inf
        self.log_weights = log_w

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
        """One paragraph: counts of rejected samples and the weight diagnostics."""
        rejected = ", ".join(f"{v} {k.replace('_', ' ')}" for k, v in self.counts.items())
        return f"{len(self)} samples at {self.temperature:g} K ({rejected}); {self.diagnostics(warn=False)}"

    # ------------------------------------------------------------------ observables
    def coordinate(self, name: str) -> np.ndarray:
        """Values ``[n]`` of a named reaction coordinate of the system."""
        if name not in self.system.reaction_coordinates:
            raise KeyError(f"system {self.system.name!r} has no reaction coordinate {name!r}; it has "
                           f"{sorted(self.system.reaction_coordinates)}")
        return self.system.reaction_coordinates[name](self.positions)

    def expectation(self, values, n_bootstrap: int = 200, seed: int = 0) -> tuple[float, float]:
        """Reweighted mean of ``values [n]`` (or a function of positions) and its bootstrap error."""
        v = values(self.positions) if callable(values) else values
        return reweighting.reweighted_mean(np.asarray(v, dtype=np.float64), self.log_weights,
                                           n_bootstrap=n_bootstrap, seed=seed)

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
        log weights, plus the temperature (K) and counts; written atomically."""
        path = Path(path)
        if path.suffix != ".npz":
            path = path.with_suffix(path.suffix + ".npz") if path.suffix else path.with_suffix(".npz")
        tmp = path.with_name(path.name + ".tmp.npz")
        np.savez_compressed(tmp, positions=self.positions, energies=self.energies, log_prob=self.log_prob,
                            log_weights=self.log_weights, rejected=self.rejected,
                            temperature=np.float64(self.temperature),
                            meta=json.dumps({"system": self.system.name, "counts": self.counts}))
        os.replace(tmp, path)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike, system: MolecularSystem) -> Samples:
        """Read a set written by `save` for ``system``."""
        try:
            with np.load(path) as data:
                positions = data["positions"]
                energies, log_prob, rejected = data["energies"], data["log_prob"], data["rejected"]
                temperature = float(data["temperature"])
                meta = json.loads(str(data["meta"]))
        except (OSError, KeyError, ValueError) as err:
            raise ValueError(f"{path}: not a samples file written by Samples.save ({err})") from err
        if positions.shape[1] != system.n_atoms:
            raise ValueError(f"{path} holds samples of {positions.shape[1]} atoms, system {system.name!r} "
                             f"has {system.n_atoms}")
        return cls(system, positions, energies, log_prob, temperature, rejected, meta.get("counts", {}))
