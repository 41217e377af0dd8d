"""Alanine dipeptide's conformations: the shipped C7ax structure and a flat-bottom C7ax restraint.

The states themselves (C7eq, C7ax along phi, `C7AX_PHI_RANGE`) are defined with the system in
:mod:`.peptides`; this module holds what is used to *make data* in the rare C7ax basin: a minimised
C7ax start (`c7ax_structure`) and a copy of the system held inside C7ax by a flat-bottom restraint
on phi (`c7ax_restrained`), whose energy inside the basin is the system's own.

Examples
--------
>>> from openmm_bg.systems import load
>>> from openmm_bg.systems.alanine import c7ax_structure
>>> ala = load("alanine_dipeptide")
>>> bool(ala.states["C7ax"](c7ax_structure()[None])[0])
True
"""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import openmm
import openmm.app as app
import openmm.unit as unit

from ..data import structure_path
from .molecular_system import MolecularSystem
from .peptides import ALANINE_PHI, C7AX_PHI_RANGE

__all__ = ["c7ax_structure", "c7ax_restrained", "in_c7ax", "C7AX_RESTRAINT_PHI"]

#: Flat bottom of `c7ax_restrained` (phi in rad), inside the C7ax state (`C7AX_PHI_RANGE`).
C7AX_RESTRAINT_PHI = (0.25, 1.95)


def c7ax_structure() -> np.ndarray:
    """A minimised C7ax conformation of alanine dipeptide (``systems/alanine_dipeptide_c7ax.pdb``).

    Returns
    -------
    numpy.ndarray
        ``[22, 3]`` positions, nm, float64.
    """
    pdb = app.PDBFile(str(structure_path("alanine_dipeptide_c7ax.pdb")))
    return np.asarray(pdb.getPositions(asNumpy=True).value_in_unit(unit.nanometer), dtype=np.float64)


def in_c7ax(phi) -> np.ndarray:
    """``bool`` array: phi (rad) inside the C7ax state, ``C7AX_PHI_RANGE[0] < phi < C7AX_PHI_RANGE[1]``.

    The same test as the system's ``states["C7ax"]``, on phi values instead of positions.

    Examples
    --------
    >>> in_c7ax([-1.0, 1.0, 2.5]).tolist()
    [False, True, False]
    """
    phi = np.asarray(phi)
    lo, hi = C7AX_PHI_RANGE
    return (phi > lo) & (phi < hi)


def c7ax_restrained(system: MolecularSystem, k_kj_per_mol: float = 1000.0) -> MolecularSystem:
    """A copy of alanine dipeptide ``system`` with a flat-bottom restraint that keeps phi in C7ax.

    The restraint is zero for phi in `C7AX_RESTRAINT_PHI` and ``0.5 k (|phi - centre| - half width)^2``
    outside (distance on the circle, ``k`` in kJ/mol/rad^2), so inside the basin the restrained
    system has the original energy. MD of the restrained system gives frames Boltzmann-distributed
    within C7ax that never leave it (training data; a generator's weights are exact either way).

    Parameters
    ----------
    system : MolecularSystem
        Alanine dipeptide (any solvent or force field of `openmm_bg.systems.peptides.alanine_dipeptide`).
    k_kj_per_mol : float
        Force constant of the walls, kJ/mol/rad^2.

    Returns
    -------
    MolecularSystem
        A new system (the original is unchanged), named ``"<name>_c7ax_restrained"``.

    Examples
    --------
    >>> from openmm_bg.energy import energy_for
    >>> from openmm_bg.systems import load
    >>> ala = load("alanine_dipeptide")
    >>> restrained = c7ax_restrained(ala)
    >>> x = c7ax_structure()[None]
    >>> u = [float(energy_for(s, platform="Reference")(x)[0]) for s in (restrained, ala)]
    >>> bool(abs(u[0] - u[1]) < 1e-9)
    True
    """
    lo, hi = C7AX_RESTRAINT_PHI
    force = openmm.CustomTorsionForce(
        "0.5*k_c7ax*max(0, abs(d) - w_c7ax)^2; d = theta - c_c7ax - 2*pi*floor((theta - c_c7ax + pi)/(2*pi));"
        f" pi = {math.pi:.17g}")
    force.addGlobalParameter("k_c7ax", float(k_kj_per_mol))
    force.addGlobalParameter("c_c7ax", 0.5 * (lo + hi))
    force.addGlobalParameter("w_c7ax", 0.5 * (hi - lo))
    force.addTorsion(*ALANINE_PHI, [])
    omm = openmm.XmlSerializer.deserialize(openmm.XmlSerializer.serialize(system.system))
    omm.addForce(force)
    return replace(system, system=omm, name=f"{system.name}_c7ax_restrained",
                   description=f"{system.description} + flat-bottom phi restraint in C7ax")
