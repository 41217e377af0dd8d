"""What ties a saved generator to its system: `system_fingerprint`, `check_fingerprint`, `ModelMismatchError`.

A generator is valid only for the atoms, masses and constraints it was trained on; other force
parameters (another solvent model, modified charges) keep the weights exact but lower the ESS.
Masses that differ only by hydrogen mass repartitioning (the same mass of every heavy atom with
its hydrogens, ``load(..., hydrogen_mass=1.5)``) are accepted: the generator is a density over
positions, which masses do not change; MD and the Fixman factor of a move take the masses of the
System they run (files written before this ``"group_masses"`` entry need equal masses).

Examples
--------
>>> from openmm_bg.systems import load
>>> fp = system_fingerprint(load("double_well"))
>>> fp["n_atoms"], sorted(fp)[:2]
(1, ['atoms', 'constraints'])
"""

from __future__ import annotations

import hashlib
import warnings
from typing import Any

import numpy as np
import openmm

from ..systems import MolecularSystem
from ..systems.hydrogen_mass import group_masses

__all__ = ["ModelMismatchError", "system_fingerprint", "check_fingerprint"]


class ModelMismatchError(ValueError):
    """A saved generator does not belong to the system it is loaded for."""


def system_fingerprint(system: MolecularSystem) -> dict[str, Any]:
    """What a generator must match: atoms, masses, constraints; and a hash of the forces."""
    atoms = [f"{a.residue.name}:{a.name}:{a.element.symbol if a.element else ''}"
             for a in system.topology.atoms()]
    masses = np.round(system.masses, 4).tolist()
    groups = np.round(group_masses(system.system, system.topology), 4).tolist()
    constraints = [(i, j, round(d, 6)) for i, j, d in system.constraints]
    forces = [openmm.XmlSerializer.serialize(f) for f in system.system.getForces()]
    return {
        "n_atoms": system.n_atoms,
        "atoms": hashlib.sha1("|".join(atoms).encode()).hexdigest(),
        "masses": hashlib.sha1(str(masses).encode()).hexdigest(),
        "group_masses": hashlib.sha1(str(groups).encode()).hexdigest(),
        "constraints": hashlib.sha1(str(constraints).encode()).hexdigest(),
        "n_constraints": len(constraints),
        "forces": hashlib.sha1("".join(forces).encode()).hexdigest(),
    }


def check_fingerprint(saved: dict, system: MolecularSystem, what: str = "generator") -> None:
    """Raise `ModelMismatchError` for another topology, masses or constraints; warn for other forces.

    Masses that differ only by hydrogen mass repartitioning pass (module docstring).
    """
    current = system_fingerprint(system)
    repartitioned = saved.get("group_masses") == current["group_masses"]  # older files have none: False
    for key, label in (("n_atoms", "number of atoms"), ("atoms", "atoms (names, residues, elements)"),
                       ("masses", "masses"), ("constraints", "constraints")):
        if key == "masses" and repartitioned:
            continue  # the same masses up to hydrogen mass repartitioning
        if saved.get(key) != current[key]:
            raise ModelMismatchError(
                f"this {what} was trained for another system: its {label} differ from {system.name!r} "
                f"({saved.get('n_atoms')} vs {current['n_atoms']} atoms, {saved.get('n_constraints')} vs "
                f"{current['n_constraints']} constraints). Load it with the system it was trained on, or "
                "train a new generator for this one")
    if saved.get("forces") != current["forces"]:
        warnings.warn(f"the force parameters of {system.name!r} differ from those the {what} was trained "
                      "with; weights stay exact for the new system, but expect a lower ESS",
                      UserWarning, stacklevel=3)
