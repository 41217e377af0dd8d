"""Atoms and bonds of a topology as plain arrays: the bond graph the chemistry checks work on.

Examples
--------
>>> import openmm_bg.systems as bgs
>>> atoms, znum, names, residues, bonds = topology_graph(bgs.load("alanine_dipeptide").topology)
>>> names[8], int(znum[8]), len(bonds)
('ALA2:CA', 6, 21)
"""

from __future__ import annotations

import numpy as np

__all__ = ["topology_graph", "adjacency", "ring_closure_bonds"]


def topology_graph(topology) -> tuple[list, np.ndarray, list[str], list[tuple[int, str, str]], list[tuple[int, int]]]:
    """Atoms, element numbers, labels, residues and bonds of an openmm.app or mdtraj Topology.

    Parameters
    ----------
    topology : openmm.app.Topology or mdtraj.Topology

    Returns
    -------
    atoms : list
        The topology's atom objects.
    znum : numpy.ndarray
        ``[n_atoms]`` int, atomic numbers (0 for virtual sites and unknown elements).
    names : list of str
        Labels ``"RES<number>:ATOM"``, e.g. ``"ALA2:CA"`` (residue numbers from 1).
    residues : list of tuple
        ``(residue index, residue name, atom name)`` per atom.
    bonds : list of tuple of int
        Bonded atom index pairs.
    """
    if hasattr(topology, "getNumAtoms"):  # openmm.app.Topology
        atoms = list(topology.atoms())
        bonds = [(b[0].index, b[1].index) for b in topology.bonds()]
    elif hasattr(topology, "n_atoms") and hasattr(topology, "bonds"):  # mdtraj.Topology
        atoms = list(topology.atoms)
        bonds = [(b[0].index, b[1].index) for b in topology.bonds]
    else:
        raise TypeError(f"expected an openmm.app.Topology or mdtraj.Topology, got {type(topology).__name__}")
    names, znum, res = [], [], []
    for a in atoms:
        el = a.element
        z = 0 if el is None else int(getattr(el, "atomic_number", getattr(el, "number", 0)) or 0)
        znum.append(z)
        names.append(f"{a.residue.name}{a.residue.index + 1}:{a.name}")
        res.append((a.residue.index, a.residue.name, a.name))
    return atoms, np.array(znum, dtype=int), names, res, bonds


def adjacency(topology) -> tuple[list[list[int]], np.ndarray, list]:
    """Neighbour lists ``[n_atoms]`` of the bond graph, element numbers ``[n_atoms]`` and residues."""
    atoms, znum, _, res, bonds = topology_graph(topology)
    adj: list[list[int]] = [[] for _ in atoms]
    for a, b in bonds:
        adj[a].append(b)
        adj[b].append(a)
    return adj, znum, res


def ring_closure_bonds(topology) -> list[tuple[int, int]]:
    """Bonds that close a ring: those a breadth-first spanning tree of the bond graph leaves out.

    Examples
    --------
    >>> from openmm_bg.systems import load
    >>> len(ring_closure_bonds(load("trpzip2").topology))   # two rings in each of the four Trp
    8
    """
    adj, _, _ = adjacency(topology)
    seen = np.zeros(len(adj), dtype=bool)
    tree = set()
    for s in range(len(adj)):
        if seen[s]:
            continue
        seen[s] = True
        frontier = [s]
        while frontier:
            nxt = []
            for a in frontier:
                for b in adj[a]:
                    if not seen[b]:
                        seen[b] = True
                        tree.add((min(a, b), max(a, b)))
                        nxt.append(b)
            frontier = nxt
    all_bonds = {(min(a, b), max(a, b)) for a in range(len(adj)) for b in adj[a]}
    return sorted(all_bonds - tree)
