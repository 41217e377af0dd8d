"""Molecular systems: built-in test systems by name and loaders for user files.

Examples
--------
>>> import openmm_bg.systems as bgs
>>> "alanine_dipeptide" in bgs.names()
True
>>> bgs.load("double_well").states["left"].description
'-inf < x1 < 0 nm'
"""

from __future__ import annotations

from collections.abc import Callable

from ..constants import kT_kJ_per_mol
from .coordinates import BACKBONE_BASINS, CoordinateError, backbone_definitions, coordinate
from .dimer import dimer_in_solvent
from .from_sequence import peptide
from .hydrogen_mass import check_hydrogen_mass, repartition_hydrogen_mass
from .loaders import from_files, from_openmm, from_pdb
from .molecular_system import MolecularSystem, PeriodicSystemError, ReactionCoordinate, State, require_nonperiodic
from .peptides import alanine_dipeptide, trpzip2
from .state_files import define, read_state_file, state
from .toy import double_well, mueller_brown
from .trajectory import check_trajectory

__all__ = ["MolecularSystem", "ReactionCoordinate", "State", "load", "names", "from_files",
           "from_pdb", "from_openmm", "kT_kJ_per_mol", "BUILTIN", "PeriodicSystemError", "require_nonperiodic",
           "check_trajectory", "peptide", "coordinate", "state", "define", "read_state_file",
           "backbone_definitions", "BACKBONE_BASINS", "CoordinateError", "repartition_hydrogen_mass"]

#: Built-in systems: name -> builder taking keyword options.
BUILTIN: dict[str, Callable[..., MolecularSystem]] = {
    "double_well": double_well,
    "mueller_brown": mueller_brown,
    "dimer_in_solvent": dimer_in_solvent,
    "alanine_dipeptide": alanine_dipeptide,
    "trpzip2": trpzip2,
}


def names() -> list[str]:
    """Names of the built-in systems."""
    return list(BUILTIN)


def load(name: str, hydrogen_mass: float | None = None, **options) -> MolecularSystem:
    """Build a built-in system by name.

    Parameters
    ----------
    name : str
        One of `names()`, or ``"peptide:SEQUENCE"`` (one-letter codes, e.g. ``"peptide:AAGA"``) for
        `peptide`.
    hydrogen_mass : float, optional
        Dalton: hydrogen mass repartitioning (`MolecularSystem.with_hydrogen_mass`), e.g. ``1.5``
        with ``constraints="hbonds"`` for 4 fs MD steps; same energies. Default: the force field's
        masses. Systems without hydrogens or bonds (the toy systems) refuse it.
    **options
        Passed to the builder, e.g. ``solvent="implicit"``, ``constraints="hbonds"``,
        ``forcefield="amber14"``, ``temperature=350.0``.

    Examples
    --------
    >>> ala = load("alanine_dipeptide", constraints="hbonds", hydrogen_mass=1.5)
    >>> ala.hydrogen_mass, float(ala.masses.min())
    (1.5, 1.5)
    """
    if hydrogen_mass is not None:
        hydrogen_mass = check_hydrogen_mass(hydrogen_mass)  # before the (possibly slow) build
    if isinstance(name, str) and name.lower().startswith("peptide:"):
        builder = peptide
        options = {"sequence": name.split(":", 1)[1], **options}
    elif name not in BUILTIN:
        close = [n for n in BUILTIN if n.startswith(name[:3])]
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise KeyError(f"unknown system {name!r}{hint}; built-in systems: {', '.join(BUILTIN)}")
    else:
        builder = BUILTIN[name]
    try:
        system = builder(**options)
    except TypeError as err:
        import inspect

        allowed = [*inspect.signature(builder).parameters, "hydrogen_mass"]
        raise TypeError(f"bad option for system {name!r}: {err}; allowed options: {allowed}") from err
    return system if hydrogen_mass is None else system.with_hydrogen_mass(hydrogen_mass)
