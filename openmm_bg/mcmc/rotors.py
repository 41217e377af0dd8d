"""Rotors: rotatable bonds with the rigid branch that turns about them, for `TorsionMove`.

A rotor is a bond ``b-c`` outside any ring together with the atoms on ``c``'s side of it (the
*branch*). Its torsion is the proper dihedral ``a-b-c-d`` of four bonded atoms. Setting that torsion
rotates the whole branch rigidly about the ``b-c`` axis: every torsion about the same bond (the
second and third hydrogen of a methyl, a branch atom whose Z-matrix torsion is defined relative to
a sibling, the improper-like torsions of `openmm_bg.transforms.ZMatrix`) turns by the same angle,
and every bond, angle and other torsion is unchanged. Improper-like torsions are therefore never
moved on their own: a rotor moves the whole rotor. The map is an isometry of the branch with the
axis atoms fixed, so it preserves the Cartesian volume and every distance constraint (bonds to
hydrogens included), and with it the Fixman factor of the constraints.

`side_chain_rotors` finds the side-chain rotors (chi1, chi2, ...) of the residues of a protein or
peptide from its bond graph; `set_torsions` applies new torsion values to a configuration.

Examples
--------
>>> import numpy as np
>>> from openmm_bg.systems import load
>>> ala = load("alanine_dipeptide")
>>> rotors = side_chain_rotors(ala.topology, hydrogens=True)
>>> [r.name for r in rotors]
['ALA2 chi1']
>>> x = set_torsions(ala.positions, rotors, [1.0])
>>> round(float(rotors[0].torsion(x)), 6)
1.0
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ..systems.graph import topology_graph

__all__ = ["Rotor", "side_chain_rotors", "set_torsions", "torsions_of"]


@dataclass(frozen=True)
class Rotor:
    """A rotatable bond ``b-c`` and the branch on ``c``'s side of it.

    Attributes
    ----------
    name : str
        Label, e.g. ``"TRP2 chi1"``.
    atoms : tuple of int
        ``(a, b, c, d)``: the torsion ``a-b-c-d`` (rad, convention of ``mdtraj.compute_dihedrals``),
        about the axis ``b-c``.
    moving : tuple of int
        The branch: atoms that turn with the torsion (``c``'s side of ``b-c``, without ``c``).
    residue : int
        Index of the residue (0-based), -1 where unknown.

    Examples
    --------
    >>> r = Rotor("toy", (0, 1, 2, 3), (3,))
    >>> r.axis
    (1, 2)
    """

    name: str
    atoms: tuple
    moving: tuple
    residue: int = -1

    def __post_init__(self):
        atoms = tuple(int(a) for a in self.atoms)
        moving = tuple(int(a) for a in self.moving)
        if len(atoms) != 4 or len(set(atoms)) != 4:
            raise ValueError(f"rotor {self.name!r}: atoms must be 4 distinct indices (a, b, c, d), got {atoms}")
        if not moving or atoms[3] not in moving:
            raise ValueError(f"rotor {self.name!r}: the moving branch must contain the torsion's last atom d")
        if set(atoms[:3]) & set(moving):
            raise ValueError(f"rotor {self.name!r}: atoms a, b, c of the torsion must not move")
        object.__setattr__(self, "atoms", atoms)
        object.__setattr__(self, "moving", moving)

    @property
    def axis(self) -> tuple[int, int]:
        """``(b, c)``: the bond the branch turns about."""
        return self.atoms[1], self.atoms[2]

    def torsion(self, x: np.ndarray) -> np.ndarray:
        """The torsion ``a-b-c-d`` (rad, in ``(-pi, pi]``) of ``x`` ``[..., n_atoms, 3]`` (nm)."""
        a, b, c, d = (np.asarray(x, dtype=np.float64)[..., i, :] for i in self.atoms)
        b1, b2, b3 = b - a, c - b, d - c
        n1, n2 = _cross(b1, b2), _cross(b2, b3)
        m = _cross(b2 / np.sqrt((b2 * b2).sum(-1))[..., None], n1)
        return np.arctan2((m * n2).sum(-1), (n1 * n2).sum(-1))

    def rotate(self, x: np.ndarray, angle: float) -> np.ndarray:
        """A copy of ``x`` ``[n_atoms, 3]`` with the branch turned by ``angle`` rad about ``b -> c``.

        The torsion grows by ``angle``; everything else (bonds, angles, other torsions) is unchanged.
        """
        x = np.array(x, dtype=np.float64)
        b, c = x[self.atoms[1]], x[self.atoms[2]]
        k = (c - b) / np.linalg.norm(c - b)
        idx = np.asarray(self.moving)
        v = x[idx] - c
        cos, sin = np.cos(angle), np.sin(angle)
        # Rodrigues: v cos + (k x v) sin + k (k . v)(1 - cos)
        x[idx] = c + v * cos + _cross(k[None], v) * sin + np.outer(v @ k, k) * (1.0 - cos)
        return x


def _cross(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """``u x v`` over the last axis (faster than ``np.cross`` for small arrays)."""
    u0, u1, u2 = u[..., 0], u[..., 1], u[..., 2]
    v0, v1, v2 = v[..., 0], v[..., 1], v[..., 2]
    return np.stack([u1 * v2 - u2 * v1, u2 * v0 - u0 * v2, u0 * v1 - u1 * v0], axis=-1)


def torsions_of(x: np.ndarray, rotors: Sequence[Rotor]) -> np.ndarray:
    """``[..., n_rotors]`` torsions (rad) of the rotors in ``x`` ``[..., n_atoms, 3]`` (nm)."""
    return np.stack([r.torsion(x) for r in rotors], axis=-1)


def set_torsions(x: np.ndarray, rotors: Sequence[Rotor], values) -> np.ndarray:
    """A copy of ``x`` ``[n_atoms, 3]`` (nm) with each rotor's torsion set to ``values`` (rad).

    The rotors are turned in the order given, each by the difference between its target and its
    torsion at that moment; with rotors ordered from the root outwards (as `side_chain_rotors`
    returns them) every rotor ends at its target, since turning a rotor changes no torsion of the
    rotors before it (their four atoms move rigidly or not at all).
    """
    values = np.asarray(values, dtype=np.float64).reshape(-1)
    if len(values) != len(rotors):
        raise ValueError(f"values: expected {len(rotors)} torsions, got {len(values)}")
    x = np.array(x, dtype=np.float64)
    for r, v in zip(rotors, values, strict=True):
        x = r.rotate(x, float(v - r.torsion(x)))
    return x


def _branch(adj: list[list[int]], b: int, c: int) -> set[int] | None:
    """Atoms on ``c``'s side of bond ``b-c`` (with ``c``), or None if the bond lies in a ring."""
    seen, stack = {c}, [c]
    while stack:
        a = stack.pop()
        for n in adj[a]:
            if a == c and n == b:
                continue
            if n == b:
                return None
            if n not in seen:
                seen.add(n)
                stack.append(n)
    return seen


def _pick(names: list[str], cands: list[int]) -> int:
    """The standard chi partner among ``cands``: names ending in '1' or without a digit, then by name
    (CG1 over CG2, OG1 over CG2, CD1 over CD2, OD1 over ND2)."""
    def key(a):
        n = names[a]
        return (not (n[-1] == "1" or not n[-1].isdigit()), n)
    return min(cands, key=key)


def side_chain_rotors(topology, residues: Sequence[int] | None = None, hydrogens: bool = False) -> list[Rotor]:
    """The side-chain rotors (chi1, chi2, ...) of the residues of a protein or peptide.

    Walks each residue's side chain from its CA: every bond outside a ring whose branch holds a
    heavy atom (and, with ``hydrogens=True``, also methyl, hydroxyl and amine rotors that only turn
    hydrogens) is a rotor, with the torsion ``N-CA-CB-XG`` for chi1 and ``XA-XB-XG-XD`` further out
    (the partner named ``...1`` where there is a choice, e.g. ``N-CA-CB-OG1`` for Thr). Bonds in
    rings (the proline ring, aromatic rings) are not rotors. Residues without N and CA (caps,
    ligands) and glycine have none.

    Parameters
    ----------
    topology : openmm.app.Topology or mdtraj.Topology
        With bonds.
    residues : sequence of int, optional
        Residue indices (0-based) to include; default all.
    hydrogens : bool
        Also include rotors whose branch holds only hydrogens.

    Returns
    -------
    list of Rotor
        Grouped by residue, from the CA outwards within a residue (chi1, chi2, ...).

    Examples
    --------
    >>> from openmm_bg.systems import load
    >>> [r.name for r in side_chain_rotors(load("trpzip2").topology, residues=[0, 1])]
    ['SER1 chi1', 'TRP2 chi1', 'TRP2 chi2']
    """
    atoms, znum, _, res, bonds = topology_graph(topology)
    n = len(atoms)
    adj: list[list[int]] = [[] for _ in range(n)]
    for a, b in bonds:
        adj[a].append(b)
        adj[b].append(a)
    names = [r[2] for r in res]
    heavy = znum != 1
    by_res: dict[int, dict[str, int]] = {}
    for i, (ri, _, name) in enumerate(res):
        by_res.setdefault(ri, {})[name] = i
    wanted = None if residues is None else {int(r) for r in residues}
    out = []
    for ri in sorted(by_res):
        if wanted is not None and ri not in wanted:
            continue
        atoms_r = by_res[ri]
        if "CA" not in atoms_r or "N" not in atoms_r:
            continue
        ca, nn = atoms_r["CA"], atoms_r["N"]
        rname = atoms[ca].residue.name
        backbone = {nn, atoms_r.get("C", -1)}
        # side-chain roots: heavy neighbours of CA other than the backbone
        queue = [(nn, ca, c) for c in adj[ca] if heavy[c] and c not in backbone]
        k = 0
        while queue:
            a, b, c = queue.pop(0)
            branch = _branch(adj, b, c)
            if branch is None or ca in branch:
                continue
            moving = sorted(branch - {c})
            nxt = [d for d in adj[c] if d != b]
            heavy_next = [d for d in nxt if heavy[d]]
            if heavy_next or (hydrogens and nxt):
                k += 1
                d = _pick(names, heavy_next or nxt)
                out.append(Rotor(f"{rname}{ri + 1} chi{k}", (a, b, c, d), tuple(moving), residue=ri))
            for d in sorted(heavy_next, key=lambda t: (not (names[t][-1] == "1" or not names[t][-1].isdigit()),
                                                       names[t])):
                queue.append((b, c, d))
    return out
