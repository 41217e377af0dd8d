"""Automatic Z-matrix of one connected molecule from its bond graph.

`build_zmatrix` splits the atoms into a Cartesian *core* (kept as Cartesian coordinates in a
body-fixed frame, see `openmm_bg.transforms.core`) and *placed* atoms. Every placed atom ``i`` gets a
bond partner ``j``, an angle partner ``k`` and a torsion partner ``l`` that are placed before it
(core atoms count as placed from the start). Rules, chosen to follow heavy-atom chemistry:

- atoms are placed breadth-first from the core, heavy atoms before hydrogens, and among the
  children of one atom chain continuations (more heavy neighbours) first;
- ``j`` is the earliest-placed bonded neighbour (heavy preferred); ``k`` is ``j``'s own bond partner
  (or, for a core ``j``, its earliest-placed bonded neighbour); ``l`` is ``k``'s bond partner, so that
  backbone (phi, psi, omega) and side-chain (chi) dihedrals appear as torsions;
- the first atom placed on a bond ``j-k`` owns the rotatable torsion about it; later atoms on the
  same ``j-k`` (the other hydrogens of a methyl, a carbonyl oxygen, a branch) use that first atom as
  torsion partner (an improper-like, stiff torsion ``i-j-k-first``);
- an atom on a bond inside the core uses another core neighbour of ``j`` (improper torsion).

Default core: backbone N, CA, C of every residue that has all three (proteins, peptides; capped
termini such as ACE/NME are placed atoms). A molecule without such residues gets a small rigid core
of three atoms: the most central heavy atom and two of its neighbours. The first three core atoms
fix the body frame.

Examples
--------
>>> import openmm_bg.systems as bgs
>>> zm = build_zmatrix(bgs.load("alanine_dipeptide").topology)
>>> zm.core.tolist()
[6, 8, 14]
>>> zm.find_torsion(4, 6, 8, 14) is not None   # phi
True
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ..geometry import vector_angle
from ..systems.graph import topology_graph as _graph

__all__ = ["ZMatrix", "build_zmatrix", "DisconnectedTopologyError"]


class DisconnectedTopologyError(ValueError):
    """The topology holds more than one molecule (its bond graph is disconnected)."""


@dataclass(frozen=True)
class ZMatrix:
    """A Z-matrix: Cartesian core atoms plus placed atoms with their reference atoms.

    Attributes
    ----------
    n_atoms : int
        Number of atoms of the molecule.
    core : numpy.ndarray
        ``[n_core]`` int, core atom indices; ``core[0:3]`` fix the frame.
    rows : numpy.ndarray
        ``[n_placed, 4]`` int, ``(i, j, k, l)`` per placed atom in placement order: atom, bond,
        angle and torsion partner.
    proper : numpy.ndarray
        ``[n_placed]`` bool, True where ``l`` is bonded to ``k`` (a proper, rotatable dihedral) and
        False for improper-like torsions (``l`` bonded to ``j``, e.g. methyl hydrogens 2 and 3).
    atom_names : tuple of str
        ``"RES12:CA"`` labels, for messages.
    is_hydrogen : numpy.ndarray
        ``[n_atoms]`` bool.
    bonds : tuple of (int, int)
        The bond graph, ``i < j``.

    Examples
    --------
    >>> import openmm_bg.systems as bgs
    >>> zm = build_zmatrix(bgs.load("alanine_dipeptide").topology)
    >>> zm.rows[0].tolist(), bool(zm.proper[0])   # ACE C placed on N, CA, C: the phi torsion
    ([4, 6, 8, 14], True)
    """

    n_atoms: int
    core: np.ndarray
    rows: np.ndarray
    proper: np.ndarray
    atom_names: tuple
    is_hydrogen: np.ndarray
    bonds: tuple

    @property
    def n_core(self) -> int:
        """Number of core atoms."""
        return len(self.core)

    @property
    def n_placed(self) -> int:
        """Number of placed (non-core) atoms."""
        return len(self.rows)

    @property
    def placed(self) -> np.ndarray:
        """``[n_placed]`` placed atom indices in placement order."""
        return self.rows[:, 0]

    def levels(self) -> np.ndarray:
        """``[n_placed]`` generation of each placed atom: 1 + max generation of its references.

        Core atoms are generation 0; atoms of one generation can be placed simultaneously.
        """
        gen = np.zeros(self.n_atoms, dtype=int)
        out = np.empty(self.n_placed, dtype=int)
        for r, (i, j, k, l) in enumerate(self.rows):
            gen[i] = 1 + max(gen[j], gen[k], gen[l])
            out[r] = gen[i]
        return out

    def find_torsion(self, i: int, j: int, k: int, l: int) -> int | None:
        """Row of the placed atom whose torsion is ``i-j-k-l`` (or ``l-k-j-i``), else None."""
        for r, row in enumerate(self.rows):
            t = tuple(int(a) for a in row)
            if t == (i, j, k, l) or t == (l, k, j, i):
                return r
        return None

    def find_bond(self, i: int, j: int) -> int | None:
        """Row of the placed atom whose Z-matrix bond is ``i-j`` (either order), else None."""
        for r, (a, b, _, _) in enumerate(self.rows):
            if {int(a), int(b)} == {i, j}:
                return r
        return None

    def validate(self) -> None:
        """Raise ValueError unless every atom is core or placed exactly once, after its references."""
        seen = np.zeros(self.n_atoms, dtype=bool)
        if len(set(self.core.tolist())) != len(self.core) or len(self.core) < 3:
            raise ValueError("the core needs at least 3 distinct atoms")
        seen[self.core] = True
        for i, j, k, l in self.rows:
            if seen[i]:
                raise ValueError(f"atom {i} placed twice")
            if len({i, j, k, l}) != 4:
                raise ValueError(f"atom {i}: references {(j, k, l)} not distinct")
            if not (seen[j] and seen[k] and seen[l]):
                raise ValueError(f"atom {i}: a reference of {(j, k, l)} is placed after it")
            seen[i] = True
        if not seen.all():
            raise ValueError(f"atoms never placed: {np.flatnonzero(~seen).tolist()}")

    def describe(self) -> str:
        """A human-readable table of the Z-matrix."""
        lines = ["core: " + ", ".join(f"{a} {self.atom_names[a]}" for a in self.core)]
        for (i, j, k, l), p in zip(self.rows, self.proper, strict=True):
            names = " ".join(self.atom_names[a] for a in (i, j, k, l))
            lines.append(f"{i:5d} {j:5d} {k:5d} {l:5d}  {'proper  ' if p else 'improper'}  {names}")
        return "\n".join(lines)


def _components(n: int, adj: list[list[int]]) -> list[list[int]]:
    comp = np.full(n, -1)
    out = []
    for s in range(n):
        if comp[s] >= 0:
            continue
        stack, members = [s], []
        comp[s] = len(out)
        while stack:
            a = stack.pop()
            members.append(a)
            for b in adj[a]:
                if comp[b] < 0:
                    comp[b] = len(out)
                    stack.append(b)
        out.append(sorted(members))
    return out


def _backbone_core(res) -> list[int]:
    by_res: dict[int, dict[str, int]] = {}
    for idx, (ri, _, name) in enumerate(res):
        by_res.setdefault(ri, {})[name] = idx
    core = []
    for ri in sorted(by_res):
        names = by_res[ri]
        if all(n in names for n in ("N", "CA", "C")):
            core += [names["N"], names["CA"], names["C"]]
    return core


def _bfs_dist(start: int, adj) -> np.ndarray:
    dist = np.full(len(adj), -1)
    dist[start] = 0
    frontier = [start]
    while frontier:
        nxt = []
        for a in frontier:
            for b in adj[a]:
                if dist[b] < 0:
                    dist[b] = dist[a] + 1
                    nxt.append(b)
        frontier = nxt
    return dist


def _auto_core(adj, is_h, ok_angle) -> list[int]:
    """Most central heavy atom (double BFS sweep) with two neighbours (heavy first), not collinear."""
    heavy = [a for a in range(len(adj)) if not is_h[a]] or list(range(len(adj)))
    d0 = _bfs_dist(heavy[0], adj)
    u = max(heavy, key=lambda a: (d0[a], -a))
    du = _bfs_dist(u, adj)
    v = max(heavy, key=lambda a: (du[a], -a))
    dv = _bfs_dist(v, adj)
    # centre: heavy atom minimising the larger of its distances to the two ends, most neighbours
    centres = sorted(heavy, key=lambda a: (max(du[a], dv[a]), -len(adj[a]), a))
    centres += [a for a in sorted(range(len(adj)), key=lambda a: -len(adj[a])) if a not in centres]
    fallback = None
    for centre in centres:
        if len(adj[centre]) < 2:
            continue
        nbrs = sorted(adj[centre], key=lambda a: (bool(is_h[a]), -len(adj[a]), a))
        for p, b in enumerate(nbrs):
            for c in nbrs[p + 1:]:
                fallback = fallback or [centre, b, c]
                if ok_angle(b, centre, c):
                    return [centre, b, c]
    return fallback


def _resolve_core(cartesian, topology, res, adj, is_h, ok_angle) -> list[int]:
    n = len(adj)
    if cartesian is None or (isinstance(cartesian, str) and cartesian in ("auto", "backbone")):
        core = _backbone_core(res)
        if len(core) >= 3:
            return core
        if cartesian == "backbone":
            raise ValueError("cartesian='backbone' but no residue has backbone atoms N, CA and C")
        return _auto_core(adj, is_h, ok_angle)
    if isinstance(cartesian, str):
        import mdtraj

        top = topology if isinstance(topology, mdtraj.Topology) else mdtraj.Topology.from_openmm(topology)
        core = [int(a) for a in top.select(cartesian)]
    else:
        core = [int(a) for a in np.asarray(cartesian).ravel()]
    if len(core) < 3 or len(set(core)) != len(core):
        raise ValueError(f"the Cartesian core needs at least 3 distinct atoms, got {core}")
    if min(core) < 0 or max(core) >= n:
        raise ValueError(f"core atom indices must lie in [0, {n}), got {core}")
    return core


def _angle_deg(pos, a, b, c) -> float:
    u, v = pos[a] - pos[b], pos[c] - pos[b]
    return float(np.degrees(vector_angle(u, v)))


def build_zmatrix(topology, cartesian: str | Sequence[int] | None = None,
                  positions: np.ndarray | None = None, linear_tolerance_deg: float = 5.0) -> ZMatrix:
    """Build a Z-matrix for one connected molecule from its bond graph.

    Parameters
    ----------
    topology : openmm.app.Topology or mdtraj.Topology
        Must contain bonds and describe a single connected molecule.
    cartesian : None, "auto", "backbone", str or sequence of int
        The Cartesian core. ``None``/``"auto"``: backbone N, CA, C of every residue that has them,
        or, for molecules without a backbone, three central atoms. ``"backbone"``: backbone only
        (error if none). Any other string is an mdtraj selection; a sequence gives atom indices
        (order kept: the first three fix the frame and must not be collinear).
    positions : numpy.ndarray, optional
        ``[n_atoms, 3]`` reference positions (nm). If given, angle and torsion partners that are
        (nearly) collinear with the bond in this structure are avoided (linear groups such as
        nitriles and alkynes).
    linear_tolerance_deg : float
        Angles within this many degrees of 0 or 180 count as collinear.

    Returns
    -------
    ZMatrix

    Raises
    ------
    DisconnectedTopologyError
        If the bond graph has more than one connected component (e.g. protein + ligand).

    Examples
    --------
    >>> import openmm_bg.systems as bgs
    >>> zm = build_zmatrix(bgs.load("trpzip2").topology)
    >>> zm.n_core, zm.n_placed
    (36, 182)
    """
    atoms, znum, names, res, bonds = _graph(topology)
    n = len(atoms)
    if n < 3:
        raise ValueError(f"a Z-matrix needs at least 3 atoms, got {n}")
    adj: list[list[int]] = [[] for _ in range(n)]
    for a, b in bonds:
        if b not in adj[a]:
            adj[a].append(b)
            adj[b].append(a)
    comps = _components(n, adj)
    if len(comps) > 1:
        desc = []
        for c in comps[:5]:
            rset = sorted({(res[a][0], res[a][1]) for a in c})
            rnames = [f"{name}{ri + 1}" for ri, name in rset]
            shown = ", ".join(rnames[:4]) + (", ..." if len(rnames) > 4 else "")
            desc.append(f"{len(c)} atoms ({shown})")
        more = f" and {len(comps) - 5} more" if len(comps) > 5 else ""
        raise DisconnectedTopologyError(
            f"the topology is not one connected molecule: its bond graph has {len(comps)} components: "
            f"{'; '.join(desc)}{more}. build_zmatrix handles a single molecule; build the system for "
            "one molecule (e.g. the receptor without the ligand) or check that the topology has bonds"
        )
    is_h = znum == 1
    pos = None
    if positions is not None:
        if hasattr(positions, "value_in_unit"):
            import openmm.unit as unit

            positions = positions.value_in_unit(unit.nanometer)
        pos = np.asarray(positions, dtype=float)
    def ok_angle(a, b, c):
        if pos is None:
            return True
        ang = _angle_deg(pos, a, b, c)
        return linear_tolerance_deg < ang < 180.0 - linear_tolerance_deg

    core = _resolve_core(cartesian, topology, res, adj, is_h, ok_angle)

    order = np.full(n, -1)
    for r, a in enumerate(core):
        order[a] = r
    is_core = np.zeros(n, dtype=bool)
    is_core[core] = True
    parent = np.full(n, -1)
    first_child: dict[tuple[int, int], int] = {}
    heavy_deg = np.array([sum(not is_h[b] for b in adj[a]) for a in range(n)])
    counter = len(core)

    def key(a):
        return (bool(is_h[a]), order[a])

    def first_ok(cands, a, b):
        """First candidate c with a-b-c not (nearly) collinear."""
        for c in cands:
            if ok_angle(a, b, c):
                return c
        return None

    placed_any = [a for a in sorted(range(n), key=lambda a: order[a]) if order[a] >= 0]
    heap: list[tuple] = []

    def push_neighbours(a):
        for b in adj[a]:
            if order[b] < 0:
                heapq.heappush(heap, (bool(is_h[b]), order[a], -heavy_deg[b], b))

    for a in core:
        push_neighbours(a)
    rows, proper = [], []
    while heap:
        _, _, _, i = heapq.heappop(heap)
        if order[i] >= 0:
            continue
        placed_nbrs = sorted((b for b in adj[i] if order[b] >= 0), key=key)
        j = placed_nbrs[0]
        # angle partner
        if not is_core[j] and ok_angle(i, j, parent[j]):
            k = int(parent[j])
        else:
            cands = sorted((b for b in adj[j] if order[b] >= 0 and b != i), key=key)
            k = first_ok(cands, i, j)
            if k is None:  # rare: fall back to any placed atom
                rest = sorted((b for b in placed_any if b not in (i, j) and b not in cands), key=key)
                k = first_ok(rest, i, j)
                k = k if k is not None else (cands + rest)[0]
        # torsion partner
        sib = first_child.get((j, k))
        is_proper = False
        if sib is not None:
            l = sib
        else:
            cands = []
            if not is_core[k] and parent[k] not in (i, j):
                cands.append(int(parent[k]))
            nb_j = sorted((b for b in adj[j] if order[b] >= 0 and b not in (i, k)), key=key)
            nb_k = sorted((b for b in adj[k] if order[b] >= 0 and b not in (i, j)), key=key)
            cands += (nb_j + nb_k) if (is_core[j] and is_core[k]) else (nb_k + nb_j)
            l = first_ok(cands, j, k)
            if l is None:  # rare: fall back to any placed atom
                rest = sorted((b for b in placed_any if b not in (i, j, k) and b not in cands), key=key)
                l = first_ok(rest, j, k)
                l = l if l is not None else (cands + rest)[0]
            first_child[(j, k)] = i
            is_proper = l in adj[k]
        parent[i] = j
        order[i] = counter
        counter += 1
        placed_any.append(i)
        rows.append((i, j, int(k), int(l)))
        proper.append(bool(is_proper))
        push_neighbours(i)
    zm = ZMatrix(n_atoms=n, core=np.asarray(core, dtype=int),
                 rows=np.asarray(rows, dtype=int).reshape(-1, 4), proper=np.asarray(proper, dtype=bool),
                 atom_names=tuple(names), is_hydrogen=is_h,
                 bonds=tuple(sorted((min(a, b), max(a, b)) for a, b in bonds)))
    zm.validate()
    return zm
