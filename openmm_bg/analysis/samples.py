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
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import mdtraj
import numpy as np

from .._validation import one_line, temperature_kelvin
from ..systems import MolecularSystem
from . import reweighting
from .reweighting import InsufficientSamplesError

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
        self.temperature = temperature_kelvin(
            "temperature", self.system.temperature if self.temperature is None else self.temperature)
        if self.rejected is None:
            self.rejected = np.zeros(n, dtype=bool)
        self.rejected = np.asarray(self.rejected, dtype=bool)
        if self.rejected.shape != (n,):
            raise ValueError(f"rejected must have shape [{n}], got {self.rejected.shape}")
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

    @property
    def n_weighted(self) -> int:
        """Number of samples with weight > 0 (finite log weight)."""
        return int(np.isfinite(self.log_weights).sum())

    def zero_weight_reason(self) -> str:
        """Why the samples have weight zero, with the counts (for messages); e.g. ``"all 200 samples
        have weight zero (0 out of domain, 200 failed energy, 0 inverted chirality)"``."""
        n_zero = len(self) - self.n_weighted
        reasons = ", ".join(f"{v} {k.replace('_', ' ')}" for k, v in self.counts.items())
        unexplained = n_zero - sum(v for v in self.counts.values() if isinstance(v, int | np.integer))
        if unexplained > 0:
            reasons += f", {unexplained} given weight zero by the producer ({self.provenance.get('kind')})"
        which = "all" if n_zero == len(self) else f"{n_zero} of"
        return f"{which} {len(self)} samples have weight zero ({reasons})"

    def require_weight(self, what: str = "a reweighted estimate") -> None:
        """Raise `InsufficientSamplesError` (with the counts of `zero_weight_reason`) when every sample has
        weight zero: no estimate can be made from such a set.

        Examples
        --------
        >>> import numpy as np
        >>> from openmm_bg.systems import load
        >>> s = Samples(load("double_well"), np.zeros((2, 1, 3)), np.full(2, np.inf), np.zeros(2))
        >>> s.zero_weight_reason()
        'all 2 samples have weight zero (0 out of domain, 2 failed energy, 0 inverted chirality)'
        >>> s.require_weight("a free energy")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        openmm_bg.analysis.reweighting.InsufficientSamplesError: no sample has weight > 0, so a free energy ...
        """
        if self.n_weighted == 0:
            raise InsufficientSamplesError(
                f"no sample has weight > 0, so {what} cannot be estimated: {self.zero_weight_reason()}; check "
                "that the generator is used with the system it was trained for, or train it longer")

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
        """ESS, largest weight's share and Pareto-k (warns when the weights are heavy-tailed);
        `InsufficientSamplesError` when every weight is zero."""
        self.require_weight("weight diagnostics")
        return reweighting.diagnose(self.log_weights, warn=warn)

    @property
    def ess(self) -> float:
        """Kish effective sample size of the weights (0 when every weight is zero)."""
        return reweighting.kish_ess(self.log_weights) if self.n_weighted else 0.0

    @property
    def ess_fraction(self) -> float:
        """``ess / n``."""
        return self.ess / len(self)

    @property
    def weights(self) -> np.ndarray:
        """Self-normalised weights ``[n]`` (sum 1)."""
        self.require_weight("normalised weights")
        return reweighting.normalized_weights(self.log_weights)

    def summary(self) -> str:
        """One paragraph: counts of rejected samples and the weight diagnostics (ESS, largest weight
        share, Pareto k); for annealed sets also the levels, energy evaluations and distinct ancestors."""
        rejected = ", ".join(f"{v} {k.replace('_', ' ')}" for k, v in self.counts.items())
        if not self.n_weighted:
            return (f"{len(self)} samples at {self.temperature:g} K ({rejected}); EVERY SAMPLE HAS WEIGHT ZERO: "
                    "no reweighted estimate is possible")
        text = f"{len(self)} samples at {self.temperature:g} K ({rejected}); {self.diagnostics(warn=False)}"
        text += _ring_note(self)
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
        self.require_weight("an expectation")
        v = values(self.positions) if callable(values) else values
        return reweighting.reweighted_mean(np.asarray(v, dtype=np.float64), self.log_weights,
                                           n_bootstrap=n_bootstrap, seed=seed, groups=self.ancestors)

    # ------------------------------------------------------------------ export
    def to_mdtraj(self) -> mdtraj.Trajectory:
        """All samples (unweighted, raw) as an ``mdtraj.Trajectory``."""
        return mdtraj.Trajectory(self.positions.astype(np.float32), self.system.mdtraj_topology)

    def resample(self, n: int | None = None, seed: int = 0) -> mdtraj.Trajectory:
        """An unweighted trajectory of ``n`` samples drawn in proportion to their weights."""
        self.require_weight("a resampled trajectory")
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
        """Read a set written by `save` for ``system`` (files of earlier versions are plain samples).

        Raises
        ------
        FileNotFoundError
            No such file.
        ValueError
            One line naming the file: not a readable ``.npz`` (damaged, truncated, foreign), arrays
            missing or of the wrong shape, or samples of another system (another atom count).
        """
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"samples file not found: {str(path)!r}")
        arrays, meta = _read_samples_file(path)
        positions = arrays["positions"]
        saved_for = meta.get("system")
        if positions.shape[1] != system.n_atoms:
            raise ValueError(f"{path} holds samples of {positions.shape[1]} atoms (system {saved_for!r}), system "
                             f"{system.name!r} has {system.n_atoms}: load it with the system it was sampled for")
        if isinstance(saved_for, str) and saved_for != system.name:
            warnings.warn(f"{path} was written for system {saved_for!r} and is loaded for {system.name!r} (same "
                          "number of atoms): its energies and weights are those of the system it was sampled for",
                          UserWarning, stacklevel=2)
        provenance = meta.get("provenance") or {"kind": "plain"}
        plain = provenance.get("kind") == "plain"
        try:
            return cls(system, positions, arrays["energies"], arrays["log_prob"], arrays["temperature"],
                       arrays["rejected"], meta.get("counts") or {},
                       log_weights=None if plain else arrays["log_weights"],
                       log_normalizer=meta.get("log_normalizer"), ancestors=arrays["ancestors"],
                       provenance=provenance)
        except ValueError as err:
            raise ValueError(f"{path}: inconsistent samples file ({one_line(err)}); {_REWRITE}") from None


#: How to make a good samples file (the fix named by `Samples.load`'s errors).
_REWRITE = "give a file written by Samples.save or `openmm-bg sample`"


def _read_samples_file(path: Path) -> tuple[dict, dict]:
    """The arrays and metadata of a samples file, each checked for presence, type and shape."""
    def bad(why: str) -> ValueError:
        return ValueError(f"{path}: not a samples file written by Samples.save ({why}); {_REWRITE}")

    def unreadable(err: BaseException) -> ValueError:
        return ValueError(f"{path}: not a readable samples file (corrupt or truncated?): {one_line(err)}; "
                          f"{_REWRITE}")

    required = ("positions", "energies", "log_prob", "rejected", "temperature", "meta")
    try:
        data = np.load(path, allow_pickle=False)
    except Exception as err:  # damaged, truncated or foreign files raise many different errors
        raise unreadable(err) from None
    if not isinstance(data, np.lib.npyio.NpzFile):
        raise bad(f"a single {type(data).__name__}, not an .npz archive of arrays")
    try:
        with data:  # damaged entries fail only when read (zlib, zip CRC, EOF, pickled objects)
            arrays = {k: data[k] for k in (*required, "log_weights", "ancestors") if k in data.files}
    except Exception as err:
        raise unreadable(err) from None
    missing = [k for k in required if k not in arrays]
    if missing:
        raise bad(f"no {', '.join(missing)} array{'s' if len(missing) > 1 else ''}")
    x = arrays["positions"]
    if x.ndim != 3 or x.shape[2] != 3 or not np.issubdtype(x.dtype, np.floating):
        raise bad(f"positions must be floats of shape [n, n_atoms, 3], got {x.dtype} {x.shape}")
    n = x.shape[0]
    for key in ("energies", "log_prob", "rejected", "log_weights"):
        a = arrays.get(key)
        if a is not None and (a.shape != (n,) or not (np.issubdtype(a.dtype, np.number) or a.dtype == bool)):
            raise bad(f"{key} must be numbers of shape [{n}], got {a.dtype} {a.shape}")
    t = arrays["temperature"]
    if t.shape != () or not np.issubdtype(t.dtype, np.number):
        raise bad(f"temperature must be one number (K), got {t.dtype} {t.shape}")
    arrays["temperature"] = float(t)
    arrays.setdefault("log_weights", None)
    arrays.setdefault("ancestors", None)
    try:
        meta = json.loads(str(arrays["meta"]))
    except ValueError as err:
        raise bad(f"its metadata is not JSON: {one_line(err)}") from None
    if not isinstance(meta, dict):
        raise bad(f"its metadata must be a JSON object, got {type(meta).__name__}")
    for key, kind in (("counts", dict), ("provenance", dict)):
        if meta.get(key) is not None and not isinstance(meta[key], kind):
            raise bad(f"metadata {key!r} must be a JSON object, got {meta[key]!r}")
    normalizer = meta.get("log_normalizer")
    if normalizer is not None and (isinstance(normalizer, bool) or not isinstance(normalizer, int | float)):
        raise bad(f"metadata 'log_normalizer' must be a number or null, got {normalizer!r}")
    return arrays, meta


def _ring_note(samples: Samples) -> str:
    """``"; K raw samples have an open proline ring ..."`` for peptides with prolines, else ``""``."""
    from ..systems.proline import RING_TOLERANCE, broken_rings, ring_closure_bonds

    if not ring_closure_bonds(samples.system.topology):
        return ""
    finite = np.isfinite(samples.positions).all(axis=(1, 2))
    n_open = int(broken_rings(samples.system, samples.positions[finite]).sum())
    return f"; {n_open} raw samples have an open proline ring (CD-N off by > {RING_TOLERANCE:g} nm)"
