"""Coverage: does a generator reach every region of its training data, with enough effective samples?

The training frames are clustered once (`coverage_reference`):

- a peptide (residues with phi and psi): per residue its backbone basins alpha-R, beta and alpha-L
  (`openmm_bg.systems.BACKBONE_BASINS`), one partition of the frames per residue;
- another molecule: k-means on ``(sin, cos)`` of its torsions (the generator's heavy-atom Z-matrix
  torsions, or the system's registered dihedral coordinates);
- a toy system (no rotation invariance): k-means on its free Cartesian coordinates, standardised.

`coverage` then reports, per cluster, its share of the data, of the raw samples and of the
reweighted samples, and the effective samples of the cluster: the Kish ESS
``(sum w)^2 / sum w^2`` of the weights restricted to it. Data shares are not Boltzmann shares
(multi-start or hot data, restrained frames), so a cluster is flagged on its effective samples,
not on share differences: a cluster holding at least ``min_data_share`` of the data with fewer than
``min_ess`` effective samples was lost by the generator, and its reweighted estimates there are
noise.

Examples
--------
>>> import numpy as np
>>> from openmm_bg.systems import load
>>> from openmm_bg.analysis import Samples
>>> dw = load("double_well")
>>> data = np.zeros((200, 1, 3)); data[:120, 0, 0], data[120:, 0, 0] = -1.7, 1.6
>>> data[:, 0, :2] += np.random.default_rng(0).normal(0, 0.1, (200, 2))
>>> ref = coverage_reference(dw, data, n_clusters=2)
>>> left_only = Samples.unweighted(dw, data[:120])
>>> report = coverage(left_only, ref)
>>> [row.name for row in report.lost]
['cluster 2']
>>> print(report.warnings()[0])  # doctest: +ELLIPSIS
the generator lost cluster 2 (x = 1.6 nm, y = 0.0 nm) of your data (0.0 effective samples of 120, ...
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

from ..geometry import dihedral
from ..systems import MolecularSystem
from ..systems.coordinates import backbone_definitions
from . import reweighting

if TYPE_CHECKING:
    from .samples import Samples

__all__ = ["CoverageReference", "ClusterCoverage", "Coverage", "coverage_reference", "coverage",
           "MIN_EFFECTIVE_SAMPLES", "MIN_DATA_SHARE", "kmeans"]

#: A cluster of the data with fewer effective samples than this is reported lost.
MIN_EFFECTIVE_SAMPLES = 30.0
#: Clusters holding less than this share of the data are listed but never flagged.
MIN_DATA_SHARE = 0.01
#: What to do about a lost cluster (the end of the warning).
ADVICE = ("train with more weight on the data (a larger ML weight, a mass-covering recipe) or longer, or with "
          "more data in that region")


# ---------------------------------------------------------------------- k-means
def kmeans(features: np.ndarray, k: int, seed: int = 0, n_init: int = 4, n_iter: int = 100) -> np.ndarray:
    """Centres ``[k, d]`` of k-means (k-means++ starts, Lloyd iterations, best of ``n_init``).

    Examples
    --------
    >>> f = np.concatenate([np.zeros((5, 1)), np.ones((5, 1))])
    >>> np.sort(kmeans(f, 2)[:, 0]).tolist()
    [0.0, 1.0]
    """
    f = np.asarray(features, dtype=np.float64)
    rng = np.random.default_rng(seed)
    best, best_cost = None, math.inf
    for _ in range(n_init):
        centres = [f[rng.integers(len(f))]]
        d2 = ((f - centres[0]) ** 2).sum(1)  # squared distance to the nearest centre so far
        for _ in range(1, k):
            p = d2 / d2.sum() if d2.sum() > 0 else np.full(len(f), 1 / len(f))
            centres.append(f[rng.choice(len(f), p=p)])
            d2 = np.minimum(d2, ((f - centres[-1]) ** 2).sum(1))
        c = np.array(centres)
        for _ in range(n_iter):
            labels = _nearest(f, c)
            new = np.array([f[labels == j].mean(0) if (labels == j).any() else c[j] for j in range(k)])
            if np.allclose(new, c):
                break
            c = new
        cost = float(((f - c[_nearest(f, c)]) ** 2).sum())
        if cost < best_cost:
            best, best_cost = c, cost
    return best


def _nearest(f: np.ndarray, centres: np.ndarray) -> np.ndarray:
    """Index of the nearest centre of each row (memory ``[n, k]``, not ``[n, k, d]``)."""
    d2 = (centres ** 2).sum(1)[None, :] - 2.0 * f @ centres.T
    return np.argmin(d2, axis=1)


def _silhouette(f: np.ndarray, labels: np.ndarray) -> float:
    """Mean silhouette of a labelled set (small sets only: all pairwise distances)."""
    d = np.sqrt(((f[:, None, :] - f[None]) ** 2).sum(-1))
    ks = np.unique(labels)
    if len(ks) < 2:
        return -1.0
    mean_to = np.stack([d[:, labels == k].mean(1) for k in ks], 1)  # [n, k]
    own = np.searchsorted(ks, labels)
    counts = np.array([(labels == k).sum() for k in ks])
    a = mean_to[np.arange(len(f)), own] * counts[own] / np.maximum(counts[own] - 1, 1)
    mean_to[np.arange(len(f)), own] = np.inf
    b = mean_to.min(1)
    return float(np.mean((b - a) / np.maximum(np.maximum(a, b), 1e-300)))


# ---------------------------------------------------------------------- reference
@dataclass(frozen=True)
class CoverageReference:
    """How to cluster configurations, and the training data's count per cluster (JSON-serialisable).

    Attributes
    ----------
    method : str
        ``"backbone basins"``, ``"k-means on torsions"`` or ``"k-means on coordinates"``.
    features : dict
        ``{"kind": "basins"}``, ``{"kind": "torsions", "atoms": [[i, j, k, l], ...]}`` or
        ``{"kind": "cartesian", "index": [[atom, axis], ...], "mean": [...], "scale": [...]}``.
    centres : list of list of float
        k-means centres ``[k, n_features]`` (empty for basins).
    names : list of str
        Cluster names (basins: state names such as ``alphaL_2``).
    partitions : list of str
        The partition each cluster belongs to (``"residue 2"``; ``"k-means"``).
    data_counts : list of int
        Training frames in each cluster.
    n_data : int
        Training frames.
    descriptions : list of str
        What each cluster is (its basin's ranges, or its centre in torsions / coordinates).
    """

    method: str
    features: dict
    centres: list
    names: list
    partitions: list
    data_counts: list
    n_data: int
    descriptions: list

    def as_dict(self) -> dict:
        """Plain dictionary (JSON, model files, samples files)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> CoverageReference:
        """Inverse of `as_dict`."""
        return cls(**d)

    def membership(self, system: MolecularSystem, positions) -> np.ndarray:
        """``bool [n_clusters, n]``: which cluster each configuration is in (NaN rows: none)."""
        x = np.asarray(positions.xyz if hasattr(positions, "xyz") else positions, dtype=np.float64)
        finite = np.isfinite(x).all(axis=(1, 2))
        x = np.where(finite[:, None, None], x, 0.0)
        kind = self.features["kind"]
        if kind == "basins":
            states = backbone_definitions(system)[1]
            missing = [n for n in self.names if n not in states]
            if missing:
                raise ValueError(f"system {system.name!r} has no backbone basins {missing}: the coverage reference "
                                 "was made for another system")
            member = np.stack([states[n](x) for n in self.names])
        else:
            f = _features(self.features, x)
            labels = _nearest(f, np.asarray(self.centres, dtype=np.float64))
            member = labels[None, :] == np.arange(len(self.centres))[:, None]
        return member & finite[None, :]


def _features(spec: dict, x: np.ndarray) -> np.ndarray:
    if spec["kind"] == "torsions":
        atoms = np.asarray(spec["atoms"], dtype=int)
        t = dihedral(torch.as_tensor(x), *(torch.as_tensor(atoms[:, c]) for c in range(4))).numpy()
        return np.concatenate([np.sin(t), np.cos(t)], axis=1)
    index = np.asarray(spec["index"], dtype=int)
    f = x[:, index[:, 0], index[:, 1]]
    return (f - np.asarray(spec["mean"])) / np.asarray(spec["scale"])


def _torsion_label(atoms, centre: np.ndarray) -> str:
    n = len(atoms)
    angles = np.degrees(np.arctan2(centre[:n], centre[n:]))
    parts = [f"{tuple(int(a) for a in q)} {v:.0f} deg" for q, v in zip(atoms, angles, strict=True)]
    return "torsions " + ", ".join(parts[:4]) + (", ..." if len(parts) > 4 else "")


def _position_label(n_atoms: int, index: np.ndarray, centre: np.ndarray) -> str:
    names = [("" if n_atoms == 1 else f"atom {i} ") + "xyz"[a] for i, a in index]
    parts = [f"{round(float(v), 1) + 0.0:.1f}" for v in centre]
    parts = [f"{n} = {v} nm" for n, v in zip(names, parts, strict=True)]
    return ", ".join(parts[:4]) + (", ..." if len(parts) > 4 else "")


def coverage_reference(system: MolecularSystem, data, torsions=None, n_clusters: int | None = None,
                       seed: int = 0, max_frames: int = 20000, basins: bool = True) -> CoverageReference:
    """Cluster training ``data`` of ``system`` (method in the module docstring).

    Parameters
    ----------
    system : MolecularSystem
    data : array-like or mdtraj.Trajectory
        Training frames ``[n, n_atoms, 3]`` (nm).
    torsions : sequence of (int, int, int, int), optional
        Torsions to cluster a molecule without a peptide backbone on (default: the system's
        periodic four-atom reaction coordinates).
    n_clusters : int, optional
        k of k-means (default: 2 to 6, the best mean silhouette on up to 400 frames).
    seed : int
        Seeds k-means.
    max_frames : int
        At most this many frames (evenly strided) are clustered; every frame is counted.
    basins : bool
        Cluster a peptide on its backbone basins (default); False: k-means on torsions as for
        any molecule.

    Raises
    ------
    ValueError
        No data, or a molecule with neither a backbone nor torsions to cluster on.
    """
    x = np.asarray(data.xyz if hasattr(data, "xyz") else data, dtype=np.float64)
    if x.ndim != 3 or x.shape[1:] != (system.n_atoms, 3) or len(x) == 0:
        raise ValueError(f"data must be frames [n >= 1, {system.n_atoms}, 3] (nm) of system {system.name!r}, got "
                         f"shape {x.shape}")
    states = backbone_definitions(system)[1] if system.rotation_invariant and basins else {}
    if states:
        names = list(states)
        member = np.stack([states[n](x) for n in names])
        return CoverageReference("backbone basins", {"kind": "basins"}, [], names,
                                 [f"residue {n.rsplit('_', 1)[1]}" for n in names],
                                 [int(c) for c in member.sum(1)], len(x), [states[n].description for n in names])
    if system.rotation_invariant:
        if torsions is None:
            torsions = [rc.atoms for rc in system.reaction_coordinates.values() if rc.periodic and len(rc.atoms) == 4]
        torsions = [tuple(int(a) for a in q) for q in torsions]
        if not torsions:
            raise ValueError(f"system {system.name!r} has no peptide backbone and no dihedral coordinates to cluster "
                             "its data on; give torsions=[(i, j, k, l), ...]")
        spec = {"kind": "torsions", "atoms": [list(q) for q in torsions]}
        method = "k-means on torsions"
    else:
        free = np.ones((system.n_atoms, 3), dtype=bool) if system.free_dims is None else system.free_dims
        index = np.argwhere(free)
        raw = x[:, index[:, 0], index[:, 1]]
        scale = raw.std(0)
        spec = {"kind": "cartesian", "index": index.tolist(), "mean": raw.mean(0).tolist(),
                "scale": np.where(scale > 0, scale, 1.0).tolist()}
        method = "k-means on coordinates"
    f = _features(spec, x)
    fit = f[:: max(1, len(f) // max_frames)]
    centres = _choose_k(fit, n_clusters, seed)
    labels = _nearest(f, centres)
    order = np.argsort(-np.bincount(labels, minlength=len(centres)), kind="stable")  # largest first
    centres = centres[order]
    labels = _nearest(f, centres)
    counts = np.bincount(labels, minlength=len(centres))
    if spec["kind"] == "torsions":
        descriptions = [_torsion_label(spec["atoms"], c) for c in centres]
    else:
        at = centres * np.asarray(spec["scale"]) + np.asarray(spec["mean"])
        descriptions = [_position_label(system.n_atoms, index, c) for c in at]
    return CoverageReference(method, spec, centres.tolist(), [f"cluster {k + 1}" for k in range(len(centres))],
                             ["k-means"] * len(centres), [int(c) for c in counts], len(x), descriptions)


def _choose_k(f: np.ndarray, n_clusters: int | None, seed: int) -> np.ndarray:
    if n_clusters is not None:
        if isinstance(n_clusters, bool) or not isinstance(n_clusters, int | np.integer) or n_clusters < 1:
            raise ValueError(f"n_clusters must be an integer >= 1, got {n_clusters!r}")
        return kmeans(f, min(int(n_clusters), len(f)), seed=seed)
    small = f[:: max(1, len(f) // 400)]
    best, best_score = kmeans(f, 1, seed=seed), -math.inf
    for k in range(2, min(6, len(small) - 1) + 1):
        centres = kmeans(small, k, seed=seed, n_init=2)
        score = _silhouette(small, _nearest(small, centres))
        if score > best_score:
            best, best_score = centres, score
    return kmeans(f, len(best), seed=seed) if len(best) > 1 else best


# ---------------------------------------------------------------------- report
@dataclass(frozen=True)
class ClusterCoverage:
    """One cluster of the data: its shares and effective samples.

    Attributes
    ----------
    partition, name, description : str
    data_share : float
        Share of the training frames in the cluster.
    raw_share : float
        Share of the samples (any weight) in it.
    reweighted_share : float
        Share of the total weight in it (NaN when every weight is zero).
    ess : float
        Kish ESS of the weights restricted to the cluster.
    n_samples : int
        Samples in it (any weight).
    lost : bool
        ``data_share >= min_data_share`` and ``ess < min_ess``.
    """

    partition: str
    name: str
    description: str
    data_share: float
    raw_share: float
    reweighted_share: float
    ess: float
    n_samples: int
    lost: bool


@dataclass(frozen=True)
class Coverage:
    """Per-cluster coverage of the training data by a sample set (see `coverage`).

    Attributes
    ----------
    method : str
    clusters : tuple of ClusterCoverage
    n_samples, n_data : int
    min_ess, min_data_share : float
    """

    method: str
    clusters: tuple
    n_samples: int
    n_data: int
    min_ess: float
    min_data_share: float

    @property
    def lost(self) -> list[ClusterCoverage]:
        """The clusters of the data the generator lost (too few effective samples)."""
        return [c for c in self.clusters if c.lost]

    @property
    def reliable(self) -> bool:
        """False when a cluster of the data was lost."""
        return not self.lost

    def warnings(self) -> list[str]:
        """One plain-words line per lost cluster."""
        what = "basin" if self.method == "backbone basins" else "cluster"
        return [f"the generator lost {c.name if what == 'cluster' else what + ' ' + c.name} ({c.description}) of "
                f"your data ({c.ess:.1f} effective samples of {self.n_samples}, {100 * c.data_share:.1f}% of the "
                f"data); {ADVICE}" for c in self.lost]

    def table(self) -> str:
        """The per-cluster table (shares in %, effective samples)."""
        lines = [f"coverage of the training data ({self.method}; {self.n_data} frames, {self.n_samples} samples):",
                 f"  {'cluster':<14} {'data':>7} {'raw':>7} {'reweighted':>10} {'ESS':>9}"]
        for c in self.clusters:
            flag = "  LOST" if c.lost else ""
            lines.append(f"  {c.name:<14} {100 * c.data_share:6.1f}% {100 * c.raw_share:6.1f}% "
                         f"{100 * c.reweighted_share:9.1f}% {c.ess:9.1f}{flag}")
        return "\n".join(lines)

    def __str__(self) -> str:
        return "\n".join([self.table(), *self.warnings()])

    def as_dict(self) -> dict:
        """Plain dictionary (for JSON output)."""
        d = asdict(self)
        d["clusters"] = [asdict(c) for c in self.clusters]
        d["lost"] = [c.name for c in self.lost]
        return d


def coverage(samples: Samples, reference: CoverageReference | dict | None = None, data=None,
             min_ess: float = MIN_EFFECTIVE_SAMPLES, min_data_share: float = MIN_DATA_SHARE,
             **cluster_options) -> Coverage:
    """Per-cluster shares (data, raw samples, reweighted) and effective samples of a sample set.

    Parameters
    ----------
    samples : Samples
    reference : CoverageReference or dict, optional
        The clustered training data (`coverage_reference`); default the one the samples carry
        (``samples.coverage_reference``, set by `BoltzmannGenerator.sample`).
    data : array-like or mdtraj.Trajectory, optional
        Training frames to cluster now instead (``cluster_options`` go to `coverage_reference`).
    min_ess : float
        A cluster with fewer effective samples is lost (default 30).
    min_data_share : float
        ... if it holds at least this share of the data (default 1%).

    Raises
    ------
    ValueError
        Neither ``reference`` nor ``data`` given and the samples carry no reference.
    """
    if data is not None:
        if reference is not None:
            raise ValueError("give reference= or data=, not both")
        reference = coverage_reference(samples.system, data, **cluster_options)
    if reference is None:
        reference = getattr(samples, "coverage_reference", None)
    if reference is None:
        raise ValueError("these samples carry no clustering of the training data; give data=TRAINING_FRAMES or "
                         "reference=coverage_reference(system, data)")
    if isinstance(reference, dict):
        reference = CoverageReference.from_dict(reference)
    member = reference.membership(samples.system, samples.positions)
    log_w = samples.log_weights
    total = np.exp(log_w - log_w.max()).sum() if samples.n_weighted else 0.0
    rows = []
    for k, m in enumerate(member):
        lw = log_w[m]
        finite = np.isfinite(lw).any()
        ess = reweighting.kish_ess(lw) if finite else 0.0
        share = float(np.exp(lw - log_w.max()).sum() / total) if total > 0 else math.nan
        data_share = reference.data_counts[k] / reference.n_data
        rows.append(ClusterCoverage(reference.partitions[k], reference.names[k], reference.descriptions[k],
                                    data_share, float(m.mean()) if len(m) else math.nan, share, float(ess),
                                    int(m.sum()), bool(data_share >= min_data_share and ess < min_ess)))
    return Coverage(reference.method, tuple(rows), len(samples), reference.n_data, float(min_ess),
                    float(min_data_share))
