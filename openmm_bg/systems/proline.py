"""The proline ring-closure check: the CD-N bond that a Z-matrix does not hold.

A Z-matrix (`openmm_bg.transforms`) is a tree: of the five bonds of a proline ring one, CD-N, is
not one of its coordinates, so a generator can in principle produce a proline whose ring is
open. Such a sample has a large energy and gets a tiny weight, but raw samples and resampled
trajectories would show it; `ring_closure_deviation` measures it so that it cannot pass silently.

Examples
--------
>>> from openmm_bg.systems import peptide
>>> pro = peptide("AP")
>>> ring_closure_bonds(pro.topology)
[(24, 16)]
>>> x = pro.positions[None].copy()
>>> float(ring_closure_deviation(pro, x).max()) < 1e-12
True
>>> x[0, 24] += [0.1, 0.0, 0.0]  # pull CD away from N
>>> broken_rings(pro, x).tolist()
[True]
"""

from __future__ import annotations

import numpy as np
import torch

from ..geometry import as_tensor

__all__ = ["ring_closure_bonds", "ring_closure_deviation", "broken_rings", "RING_TOLERANCE"]

#: Deviation (nm) of the CD-N distance from the reference beyond which a ring counts as broken.
RING_TOLERANCE = 0.03


def ring_closure_bonds(topology) -> list[tuple[int, int]]:
    """``(CD, N)`` atom indices of every proline (residue name PRO) of an ``openmm.app.Topology``.

    The proline subset of `openmm_bg.systems.graph.ring_closure_bonds` (every ring's closing bond).
    """
    out = []
    for residue in topology.residues():
        if residue.name != "PRO":
            continue
        atoms = {a.name: a.index for a in residue.atoms()}
        if "CD" in atoms and "N" in atoms:
            out.append((atoms["CD"], atoms["N"]))
    return out


def ring_closure_deviation(system, x) -> np.ndarray:
    """``|d(CD, N) - d_ref|`` (nm) of every proline, ``[batch, n_prolines]`` float64.

    Parameters
    ----------
    system : MolecularSystem
        Gives the topology and the reference positions (``d_ref``).
    x : array-like
        ``[batch, n_atoms, 3]`` positions in nm. NaN positions give NaN.
    """
    bonds = ring_closure_bonds(system.topology)
    t = as_tensor(x, dtype=torch.float64).detach().cpu().numpy()
    if t.ndim != 3 or t.shape[1:] != (system.n_atoms, 3):
        raise ValueError(f"x must have shape [batch, {system.n_atoms}, 3] (nm), got {list(t.shape)}")
    if not bonds:
        return np.zeros((t.shape[0], 0))
    cd, n = (np.array(v) for v in zip(*bonds, strict=True))
    ref = np.linalg.norm(system.positions[cd] - system.positions[n], axis=-1)
    return np.abs(np.linalg.norm(t[:, cd] - t[:, n], axis=-1) - ref)


def broken_rings(system, x, tolerance: float = RING_TOLERANCE) -> np.ndarray:
    """``[batch]`` bool: some proline's CD-N distance is off by more than ``tolerance`` nm (or NaN)."""
    dev = ring_closure_deviation(system, x)
    return ~(dev <= tolerance).all(axis=-1)
