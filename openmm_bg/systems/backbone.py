"""Backbone coordinates of a peptide: phi/psi of every residue, their basin states, L-amino-acid check.

Names: residues are numbered by their 1-based position in the topology, caps included, so in
ACE-ALA-ALA-NME the amino acids are residues 2 and 3 (as in alanine dipeptide). ``phi_k`` is the
dihedral C(k-1)-N(k)-CA(k)-C(k), ``psi_k`` is N(k)-CA(k)-C(k)-N(k+1) (rad); a residue gets
each angle whose four atoms exist. Every residue with both angles gets three basin states, a
partition of the (phi, psi) torus (rad; the alpha_L split is alanine dipeptide's C7ax range):

- ``alphaL_k``: 0 < phi_k < 2.2 (alpha_L / C7ax, positive phi);
- ``alphaR_k``: not alphaL_k and -2.2 < psi_k < 1.0 (alpha_R, also C7eq's lower half of psi);
- ``beta_k``: the rest (beta, PPII, C5, C7eq with psi above 1.0).

Examples
--------
>>> import openmm_bg.systems as bgs
>>> ala = bgs.load("alanine_dipeptide")
>>> rcs = backbone_coordinates(ala.topology)
>>> sorted(rcs), rcs["phi_2"].atoms
(['phi_2', 'psi_2'], (4, 6, 8, 14))
>>> states = backbone_states(rcs)
>>> sorted(states)
['alphaL_2', 'alphaR_2', 'beta_2']
>>> l_amino_acid_centres(ala.topology).any_inverted(ala.positions[None]).tolist()
[False]
"""

from __future__ import annotations

import numpy as np

from .chirality import Stereocentres
from .molecular_system import ReactionCoordinate, State, dihedral_coordinate, intervals_state

__all__ = ["backbone_coordinates", "backbone_states", "l_amino_acid_centres", "ALPHA_L_PHI", "ALPHA_R_PSI"]

#: alpha_L basin: 0 < phi < 2.2 rad (alanine dipeptide's C7ax range).
ALPHA_L_PHI = (0.0, 2.2)
#: alpha_R basin (outside alpha_L): -2.2 < psi < 1.0 rad.
ALPHA_R_PSI = (-2.2, 1.0)

#: Sign of the signed volume (N - CA) . ((C - CA) x (CB - CA)) of an L-amino acid (from L-alanine);
#: the (CA, CG1, CG2) triple at the CB of L-isoleucine (2S,3S) and the (CA, OG1, CG2) triple at
#: the CB of L-threonine (2S,3R) have the same sign.
L_SIGN = 1.0
_SECOND_CENTRES = {"ILE": ("CB", ("CA", "CG1", "CG2")), "THR": ("CB", ("CA", "OG1", "CG2"))}


def _atoms_by_name(residue) -> dict[str, int]:
    return {a.name: a.index for a in residue.atoms()}


def backbone_coordinates(topology) -> dict[str, ReactionCoordinate]:
    """phi_k and psi_k (rad) of every residue of an ``openmm.app.Topology`` that has them, in residue order."""
    residues = list(topology.residues())
    out: dict[str, ReactionCoordinate] = {}
    for k, res in enumerate(residues):
        atoms = _atoms_by_name(res)
        if not {"N", "CA", "C"} <= set(atoms):
            continue
        label = k + 1
        previous = _atoms_by_name(residues[k - 1]) if k > 0 and residues[k - 1].chain is res.chain else {}
        following = (_atoms_by_name(residues[k + 1])
                     if k + 1 < len(residues) and residues[k + 1].chain is res.chain else {})
        if "C" in previous:
            out[f"phi_{label}"] = dihedral_coordinate(
                f"phi_{label}", (previous["C"], atoms["N"], atoms["CA"], atoms["C"]),
                description=f"phi of {res.name}{label} (C{label - 1}-N-CA-C)")
        if "N" in following:
            out[f"psi_{label}"] = dihedral_coordinate(
                f"psi_{label}", (atoms["N"], atoms["CA"], atoms["C"], following["N"]),
                description=f"psi of {res.name}{label} (N-CA-C-N{label + 1})")
    return out


def backbone_states(coordinates: dict[str, ReactionCoordinate]) -> dict[str, State]:
    """alphaL_k, alphaR_k and beta_k of every residue k with both phi_k and psi_k in ``coordinates``."""
    states: dict[str, State] = {}
    for name, phi in coordinates.items():
        if not name.startswith("phi_") or f"psi_{name[4:]}" not in coordinates:
            continue
        label, psi = name[4:], coordinates[f"psi_{name[4:]}"]
        states[f"alphaL_{label}"] = intervals_state(f"alphaL_{label}", [(phi, *ALPHA_L_PHI, False)])
        states[f"alphaR_{label}"] = intervals_state(f"alphaR_{label}", [(phi, *ALPHA_L_PHI, True),
                                                                        (psi, *ALPHA_R_PSI, False)])
        states[f"beta_{label}"] = intervals_state(f"beta_{label}", [(phi, *ALPHA_L_PHI, True),
                                                                    (psi, *ALPHA_R_PSI, True)])
    return states


def l_amino_acid_centres(topology) -> Stereocentres:
    """The stereocentres of the amino acids (CA with N, C, CB; CB of Ile and Thr) with the signs of L-amino acids.

    ``inverted(x)`` of the result is True where a residue is not the L form (or its CB centre is
    the wrong isomer of L-Ile / L-Thr). Glycine has no centre.
    """
    atoms, neighbours, names = [], [], []
    for k, res in enumerate(topology.residues()):
        by_name = _atoms_by_name(res)
        if {"N", "CA", "C", "CB"} <= set(by_name):
            atoms.append(by_name["CA"])
            neighbours.append([by_name["N"], by_name["C"], by_name["CB"]])
            names.append(f"{res.name}{k + 1}:CA")
        centre = _SECOND_CENTRES.get(res.name)
        if centre is not None and {centre[0], *centre[1]} <= set(by_name):
            atoms.append(by_name[centre[0]])
            neighbours.append([by_name[n] for n in centre[1]])
            names.append(f"{res.name}{k + 1}:{centre[0]}")
    return Stereocentres(np.asarray(atoms, dtype=int), np.asarray(neighbours, dtype=int).reshape(-1, 3),
                         np.full(len(atoms), L_SIGN), tuple(names))
