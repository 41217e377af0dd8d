"""Observables of protein conformations: backbone RMSD, chi1 rotamers and their transitions.

- `backbone_rmsd`: RMSD (nm) of the backbone atoms N, CA, C to a reference after optimal
  superposition (Kabsch);
- `rotamer_states`: the chi1 rotamer of each torsion, g+ (+60 deg), t (180 deg) or g- (-60 deg),
  with ``-1`` outside the cores (within ``half_width`` of a rotamer centre);
- `rotamer_populations`: fraction of frames per rotamer (the nearest centre, no gaps);
- `core_transitions`: committed core-to-core transitions (entering a core other than the last
  one visited), the count that barrier recrossings inside a core do not inflate.

Examples
--------
>>> import numpy as np
>>> chi = np.radians([[60.0], [100.0], [170.0], [130.0], [175.0], [-50.0]])
>>> rotamer_states(chi)[:, 0].tolist()
[0, -1, 1, -1, 1, 2]
>>> core_transitions(chi).tolist()
[2]
"""

from __future__ import annotations

import numpy as np

__all__ = ["ROTAMERS", "backbone_rmsd", "rotamer_states", "rotamer_populations", "core_transitions"]

#: chi1 rotamer names and centres (rad).
ROTAMERS = (("g+", np.pi / 3), ("t", np.pi), ("g-", -np.pi / 3))


def backbone_atoms(topology) -> np.ndarray:
    """Indices of the backbone atoms N, CA, C of the residues that have all three."""
    by_res: dict = {}
    for a in topology.atoms():
        by_res.setdefault(a.residue.index, {})[a.name] = a.index
    out = []
    for r in sorted(by_res):
        names = by_res[r]
        if all(n in names for n in ("N", "CA", "C")):
            out += [names["N"], names["CA"], names["C"]]
    return np.asarray(out, dtype=int)


def backbone_rmsd(x, reference: np.ndarray, topology) -> np.ndarray:
    """``[n]`` RMSD (nm) of the backbone N, CA, C of ``x`` ``[n, n_atoms, 3]`` to ``reference`` ``[n_atoms, 3]``.

    After optimal superposition (translation and rotation, Kabsch; reflections excluded). A frame
    with NaN or inf backbone coordinates (e.g. an out-of-domain generator sample) gets NaN.

    Examples
    --------
    >>> from openmm_bg.systems import load
    >>> t = load("trpzip2")
    >>> rot = np.array([[0.0, -1, 0], [1, 0, 0], [0, 0, 1]])
    >>> float(backbone_rmsd((t.positions @ rot.T + 1.0)[None], t.positions, t.topology)[0]) < 1e-10
    True
    """
    idx = backbone_atoms(topology)
    if len(idx) < 3:
        raise ValueError("the topology has no residue with backbone atoms N, CA and C")
    x = np.asarray(x.xyz if hasattr(x, "xyz") else x, dtype=np.float64)[:, idx]
    ref = np.asarray(reference, dtype=np.float64)[idx]
    if not np.isfinite(ref).all():
        raise ValueError("reference: the backbone positions contain NaN or inf")
    out = np.full(len(x), np.nan)
    ok = np.isfinite(x).all(axis=(1, 2))
    x = x[ok] - x[ok].mean(1, keepdims=True)
    ref = ref - ref.mean(0)
    h = np.einsum("nai,aj->nij", x, ref)
    u, s, vt = np.linalg.svd(h)
    d = np.sign(np.linalg.det(u @ vt))
    s[:, -1] *= d
    e = (x**2).sum((1, 2)) + (ref**2).sum() - 2 * s.sum(1)
    out[ok] = np.sqrt(np.maximum(e, 0.0) / len(idx))
    return out


def _distance_to_centres(chi: np.ndarray) -> np.ndarray:
    centres = np.array([c for _, c in ROTAMERS])
    return np.abs(np.angle(np.exp(1j * (np.asarray(chi, dtype=np.float64)[..., None] - centres))))


def rotamer_states(chi, half_width: float = np.radians(40.0)) -> np.ndarray:
    """``[n_frames, n_torsions]`` int: 0 (g+), 1 (t), 2 (g-) inside a core, ``-1`` between cores."""
    d = _distance_to_centres(chi)
    state = d.argmin(-1)
    return np.where(d.min(-1) <= half_width, state, -1)


def rotamer_populations(chi, weights=None) -> np.ndarray:
    """``[n_torsions, 3]`` fraction of frames nearest to g+, t, g- (rows sum to 1).

    ``weights`` (``[n_frames]``, >= 0, e.g. importance weights) weight the frames; default equal.
    Frames whose torsion is NaN (e.g. out-of-domain samples) are left out of that torsion's row; a
    row with no finite value (or zero weight) is NaN.
    """
    chi = np.asarray(chi, dtype=np.float64)
    state = _distance_to_centres(chi).argmin(-1)
    w = np.ones(len(chi)) if weights is None else np.asarray(weights, dtype=np.float64).reshape(-1)
    if len(w) != len(chi) or not (np.isfinite(w).all() and (w >= 0).all()):
        raise ValueError(f"weights must be {len(chi)} finite values >= 0")
    w = np.where(np.isfinite(chi), w[:, None], 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.stack([(w * (state == k)).sum(0) / w.sum(0) for k in range(3)], axis=-1)


def core_transitions(chi, half_width: float = np.radians(40.0)) -> np.ndarray:
    """``[n_torsions]`` committed core-to-core transitions along a trajectory ``chi`` ``[n_frames, n_torsions]``."""
    states = rotamer_states(chi, half_width)
    out = np.zeros(states.shape[1], dtype=int)
    for t in range(states.shape[1]):
        core = states[states[:, t] >= 0, t]
        out[t] = int(np.count_nonzero(core[1:] != core[:-1]))
    return out
