"""Which generated configurations of a protein are chemically valid: `valid_samples`.

A configuration is valid when

- its energy is finite;
- no stereocentre of the reference structure is inverted (`openmm_bg.systems.chirality`);
- no pair of heavy atoms three or more bonds apart (1-4 pairs and beyond) is closer than
  ``clash_nm`` (0.2 nm by default);
- every ring-closure bond (a bond that closes a ring, so no internal-coordinate transform holds it
  fixed: aromatic rings, the proline ring, disulfides) is within the range the reference frames
  (e.g. MD) show, widened by ``ring_tolerance_nm``;
- every peptide bond is trans: ``|omega| > pi/2`` for ``omega = CA(i)-C(i)-N(i+1)-CA(i+1)`` (methyl
  carbons of ACE/NME caps stand in for CA).

Examples
--------
>>> from openmm_bg.systems import load
>>> ala = load("alanine_dipeptide")
>>> report = valid_samples(ala, ala.positions[None], energies=[0.0])
>>> bool(report.valid[0]), report.n_peptide_bonds
(True, 2)
>>> bad = valid_samples(ala, (ala.positions * [-1.0, 1.0, 1.0])[None], energies=[0.0])   # the mirror image
>>> bool(bad.valid[0]), bool(bad.stereo_ok[0])
(False, False)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..geometry import dihedral
from ..systems import MolecularSystem
from ..systems.chirality import stereocentres
from ..systems.graph import adjacency as _adjacency
from ..systems.graph import ring_closure_bonds

__all__ = ["ValidityReport", "valid_samples", "ring_closure_bonds", "peptide_omegas"]


@dataclass(frozen=True)
class ValidityReport:
    """Per-configuration validity checks (``[n]`` bool arrays) of `valid_samples`.

    Attributes
    ----------
    finite_energy, stereo_ok, no_clash, rings_ok, trans_ok : numpy.ndarray
        The individual checks.
    min_heavy_distance : numpy.ndarray
        ``[n]`` nm, the closest heavy-atom pair three or more bonds apart.
    n_peptide_bonds, n_ring_bonds : int
        How many omegas and ring-closure bonds were checked.
    """

    finite_energy: np.ndarray
    stereo_ok: np.ndarray
    no_clash: np.ndarray
    rings_ok: np.ndarray
    trans_ok: np.ndarray
    min_heavy_distance: np.ndarray
    n_peptide_bonds: int
    n_ring_bonds: int

    @property
    def valid(self) -> np.ndarray:
        """``[n]`` bool: all checks pass."""
        return self.finite_energy & self.stereo_ok & self.no_clash & self.rings_ok & self.trans_ok

    @property
    def fraction(self) -> dict[str, float]:
        """Fraction of configurations passing each check, and ``"valid"`` (all)."""
        keys = ("finite_energy", "stereo_ok", "no_clash", "rings_ok", "trans_ok")
        out = {k: float(np.mean(getattr(self, k))) for k in keys}
        out["valid"] = float(np.mean(self.valid))
        return out

    def __str__(self) -> str:
        return ", ".join(f"{k} {v:.1%}" for k, v in self.fraction.items())


def peptide_omegas(topology) -> np.ndarray:
    """``[m, 4]`` atom indices ``(CA_i, C_i, N_i+1, CA_i+1)`` of the peptide bonds (caps' methyl carbons as CA)."""
    adj, _, res = _adjacency(topology)
    names = [r[2] for r in res]
    out = []
    for c in range(len(adj)):
        if names[c] != "C":
            continue
        for n in adj[c]:
            if names[n] != "N" or res[n][0] == res[c][0]:
                continue
            ca1 = [a for a in adj[c] if names[a] in ("CA", "CH3") and res[a][0] == res[c][0]]
            ca2 = [a for a in adj[n] if names[a] in ("CA", "CH3", "C") and res[a][0] == res[n][0] and a != c]
            if ca1 and ca2:
                out.append((ca1[0], c, n, ca2[0]))
    return np.asarray(out, dtype=int).reshape(-1, 4)


def _far_heavy_pairs(adj, znum) -> np.ndarray:
    """Heavy-atom pairs at least three bonds apart."""
    n = len(adj)
    heavy = np.flatnonzero(znum > 1)
    near = set()
    for a in heavy:
        dist = {int(a): 0}
        frontier = [int(a)]
        for d in (1, 2):
            nxt = []
            for u in frontier:
                for v in adj[u]:
                    if v not in dist:
                        dist[v] = d
                        nxt.append(v)
            frontier = nxt
        near.update((int(a), v) for v in dist)
    mask = np.zeros((n, n), dtype=bool)
    mask[np.ix_(heavy, heavy)] = True
    for a, b in near:
        mask[a, b] = mask[b, a] = False
    i, j = np.nonzero(np.triu(mask, 1))
    return np.stack([i, j], 1)


def valid_samples(system: MolecularSystem, x, energies=None, reference=None, clash_nm: float = 0.2,
                  ring_tolerance_nm: float = 0.005, batch_size: int = 256) -> ValidityReport:
    """Check generated configurations for finite energy, chirality, clashes, ring closure and trans peptides.

    Parameters
    ----------
    system : MolecularSystem
        Its topology (bonds) and reference positions (the stereocentres).
    x : array-like
        ``[n, n_atoms, 3]`` nm.
    energies : array-like, optional
        ``[n]`` energies (any unit; only finiteness is checked); default computed with
        `openmm_bg.energy.energy_for` (reduced, kT).
    reference : array-like or mdtraj.Trajectory, optional
        ``[m, n_atoms, 3]`` frames (e.g. MD) giving each ring-closure bond's allowed range; default
        the reference positions alone.
    clash_nm : float
        Minimum distance (nm) of heavy atoms three or more bonds apart.
    ring_tolerance_nm : float
        Widening of the reference range of ring-closure bond lengths (nm).
    batch_size : int
        Configurations per distance computation (memory).

    Returns
    -------
    ValidityReport
    """
    x = np.asarray(x.xyz if hasattr(x, "xyz") else x, dtype=np.float64)
    if x.ndim != 3 or x.shape[1:] != (system.n_atoms, 3):
        raise ValueError(f"x must be [n, {system.n_atoms}, 3] nm, got shape {x.shape}")
    if not clash_nm >= 0 or not ring_tolerance_nm >= 0:
        raise ValueError("clash_nm and ring_tolerance_nm must be >= 0")
    n = len(x)
    if energies is None:
        from ..energy import energy_for

        energies = energy_for(system)(x)
    energies = np.asarray(energies, dtype=np.float64).reshape(-1)
    if len(energies) != n:
        raise ValueError(f"energies: expected {n} values, got {len(energies)}")
    finite = np.isfinite(energies) & np.isfinite(x).all(axis=(1, 2))
    sc = stereocentres(system.topology, system.positions)
    stereo_ok = ~np.asarray(sc.any_inverted(x), dtype=bool) if len(sc) else np.ones(n, dtype=bool)
    adj, znum, _ = _adjacency(system.topology)
    pairs = _far_heavy_pairs(adj, znum)
    dmin = np.full(n, np.inf)
    for s in range(0, n, batch_size):
        xb = x[s:s + batch_size]
        d = np.linalg.norm(xb[:, pairs[:, 0]] - xb[:, pairs[:, 1]], axis=-1)
        dmin[s:s + batch_size] = np.where(np.isnan(d).any(1), np.nan, d.min(1)) if len(pairs) else np.inf
    ring = np.asarray(ring_closure_bonds(system.topology), dtype=int).reshape(-1, 2)
    ref = system.positions[None] if reference is None else np.asarray(
        reference.xyz if hasattr(reference, "xyz") else reference, dtype=np.float64)
    if len(ring):
        lr = np.linalg.norm(ref[:, ring[:, 0]] - ref[:, ring[:, 1]], axis=-1)
        lo, hi = lr.min(0) - ring_tolerance_nm, lr.max(0) + ring_tolerance_nm
        lx = np.linalg.norm(x[:, ring[:, 0]] - x[:, ring[:, 1]], axis=-1)
        rings_ok = ((lx >= lo) & (lx <= hi)).all(1)
    else:
        rings_ok = np.ones(n, dtype=bool)
    omegas = peptide_omegas(system.topology)
    if len(omegas):
        omega = np.asarray(dihedral(x, *omegas.T))
        trans_ok = (np.abs(omega) > np.pi / 2).all(1)
    else:
        trans_ok = np.ones(n, dtype=bool)
    return ValidityReport(finite_energy=finite, stereo_ok=stereo_ok, no_clash=dmin >= clash_nm, rings_ok=rings_ok,
                          trans_ok=trans_ok, min_heavy_distance=dmin, n_peptide_bonds=len(omegas),
                          n_ring_bonds=len(ring))
