"""Stereocentres of a reference structure and detection of inverted samples.

Force fields without chiral terms give a mirror image the same energy, so the target of a Boltzmann
Generator is restricted to the stereoisomer of the input structure (``docs/design.md``, "Chirality").
`stereocentres` finds the tetrahedral stereocentres of the reference: atoms with four bonded
neighbours whose four substituent branches are pairwise different. Branches are compared by a
canonical invariant of the branch seen from the centre (element-based extended connectivity on the
directed bond graph: the element of the neighbour, refined by the multiset of the invariants of the
branches beyond it, up to ``max_depth`` bonds). So methyl and CH2 groups (identical hydrogens) are not
stereocentres; alanine's CA is. Not detected: trivalent centres (amines invert fast anyway),
pseudo-asymmetric centres and centres distinguished only by stereochemistry (meso compounds).

The chirality of a centre in a configuration is the sign of the signed volume
``v_0 . (v_1 x v_2)`` of three of its substituent vectors ``v_a = x_{n_a} - x_centre``; a sample
whose sign differs from the reference (or is zero or NaN) has that centre inverted.

Examples
--------
>>> import openmm_bg.systems as bgs
>>> ala = bgs.load("alanine_dipeptide")
>>> sc = stereocentres(ala.topology, ala.positions)
>>> sc.atoms.tolist()
[8]
>>> mirror = ala.positions * [-1.0, 1.0, 1.0]
>>> sc.any_inverted(mirror[None]).tolist()
[True]
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..geometry import as_tensor
from .graph import topology_graph

__all__ = ["Stereocentres", "stereocentres"]


@dataclass(frozen=True)
class Stereocentres:
    """Stereocentres of a reference structure.

    Attributes
    ----------
    atoms : numpy.ndarray
        ``[m]`` int, the centres.
    neighbours : numpy.ndarray
        ``[m, 3]`` int, three substituents per centre in canonical (branch-invariant) order.
    reference_sign : numpy.ndarray
        ``[m]`` float, +1 or -1: sign of the signed volume in the reference structure.
    names : tuple of str
        Labels such as ``"ALA2:CA"``.
    """

    atoms: np.ndarray
    neighbours: np.ndarray
    reference_sign: np.ndarray
    names: tuple

    def __len__(self) -> int:
        return len(self.atoms)

    def signed_volumes(self, x):
        """Signed volumes ``[batch, m]`` (nm^3) of ``x`` ``[batch, n_atoms, 3]`` (tensor in, tensor out)."""
        t = x if isinstance(x, torch.Tensor) else as_tensor(x, dtype=torch.float64)
        c = torch.as_tensor(self.atoms, dtype=torch.long, device=t.device)
        nb = torch.as_tensor(self.neighbours, dtype=torch.long, device=t.device)
        v = t[:, nb] - t[:, c][:, :, None]
        vol = (v[..., 0, :] * torch.linalg.cross(v[..., 1, :], v[..., 2, :])).sum(-1)
        return vol if isinstance(x, torch.Tensor) else vol.numpy()

    def inverted(self, x):
        """``[batch, m]`` bool: centre inverted (sign flipped, zero volume or NaN) w.r.t. the reference."""
        vol = self.signed_volumes(x)
        if isinstance(vol, torch.Tensor):
            ref = torch.as_tensor(self.reference_sign, dtype=vol.dtype, device=vol.device)
            return ~(vol * ref > 0)
        return ~(vol * self.reference_sign > 0)

    def any_inverted(self, x):
        """``[batch]`` bool: any centre inverted; these samples get weight 0."""
        inv = self.inverted(x)
        return inv.any(-1) if isinstance(inv, torch.Tensor) else inv.any(-1)


def _branch_invariants(znum: np.ndarray, adj: list[list[int]], max_depth: int) -> dict[tuple[int, int], int]:
    """Canonical class of the branch ``c -> n`` (neighbour n seen from c) for every bond, by refinement."""
    edges = [(c, n) for c in range(len(adj)) for n in adj[c]]
    h = {e: int(znum[e[1]]) for e in edges}
    n_classes = len(set(h.values()))
    for _ in range(max_depth):
        keys = {(c, n): (h[(c, n)], tuple(sorted(h[(n, m)] for m in adj[n] if m != c))) for c, n in edges}
        table: dict = {}
        for key in sorted(set(keys.values())):
            table[key] = len(table)
        h = {e: table[k] for e, k in keys.items()}
        if len(table) == n_classes:
            break
        n_classes = len(table)
    return h


def stereocentres(topology, positions, max_depth: int = 64) -> Stereocentres:
    """Find the tetrahedral stereocentres of a reference structure.

    Parameters
    ----------
    topology : openmm.app.Topology or mdtraj.Topology
        With bonds.
    positions : array-like
        ``[n_atoms, 3]`` reference positions (nm), defining the chirality to keep.
    max_depth : int
        Branches identical up to this many bonds from the centre count as identical.

    Returns
    -------
    Stereocentres

    Examples
    --------
    >>> import openmm_bg.systems as bgs
    >>> tz = bgs.load("trpzip2")
    >>> sc = stereocentres(tz.topology, tz.positions)
    >>> len(sc), bool(sc.any_inverted(tz.positions[None])[0])
    (13, False)
    """
    _, znum, names, _, bonds = topology_graph(topology)
    n = len(znum)
    adj: list[list[int]] = [[] for _ in range(n)]
    for a, b in bonds:
        if b not in adj[a]:
            adj[a].append(b)
            adj[b].append(a)
    pos = as_tensor(positions, dtype=torch.float64)
    pos = pos[0] if pos.dim() == 3 else pos
    if pos.shape != (n, 3):
        raise ValueError(f"positions must have shape ({n}, 3) (nm), got {tuple(pos.shape)}")
    h = _branch_invariants(znum, adj, max_depth)
    atoms, nbrs = [], []
    for c in range(n):
        if len(adj[c]) != 4:
            continue
        classes = [h[(c, m)] for m in adj[c]]
        if len(set(classes)) == 4:
            atoms.append(c)
            nbrs.append([m for _, m in sorted(zip(classes, adj[c], strict=True))][:3])
    atoms_a = np.asarray(atoms, dtype=int)
    nbrs_a = np.asarray(nbrs, dtype=int).reshape(-1, 3)
    sc = Stereocentres(atoms_a, nbrs_a, np.ones(len(atoms_a)), tuple(names[a] for a in atoms))
    vol = sc.signed_volumes(pos[None].numpy())[0]
    if not np.all(np.abs(vol) > 0):
        bad = [names[a] for a, v in zip(atoms, vol, strict=True) if not abs(v) > 0]
        raise ValueError(f"reference structure has planar (zero-volume) stereocentres {bad}; check positions")
    return Stereocentres(atoms_a, nbrs_a, np.sign(vol), sc.names)
