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
from .dimer import dimer_in_solvent
from .from_sequence import peptide
from .loaders import from_files, from_openmm, from_pdb
from .molecular_system import MolecularSystem, PeriodicSystemError, ReactionCoordinate, State, require_nonperiodic
from .peptides import alanine_dipeptide, trpzip2
from .toy import double_well, mueller_brown
from .trajectory import check_trajectory

__all__ = ["MolecularSystem", "ReactionCoordinate", "State", "load", "names", "from_files",
           "from_pdb", "from_openmm", "kT_kJ_per_mol", "BUILTIN", "PeriodicSystemError", "require_nonperiodic",
           "check_trajectory", "peptide"]

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


def load(name: str, **options) -> MolecularSystem:
    """Build a built-in system by name.

    Parameters
    ----------
    name : str
        One of `names()`, or ``"peptide:SEQUENCE"`` (one-letter codes, e.g. ``"peptide:AAGA"``) for
        `peptide`.
    **options
        Passed to the builder, e.g. ``solvent="implicit"``, ``constraints="hbonds"``,
        ``forcefield="amber14"``, ``temperature=350.0``.
    """
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
        return builder(**options)
    except TypeError as err:
        import inspect

        allowed = list(inspect.signature(builder).parameters)
        raise TypeError(f"bad option for system {name!r}: {err}; allowed options: {allowed}") from err
