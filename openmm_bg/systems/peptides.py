"""Built-in peptides: alanine dipeptide (AMBER ff96 or amber14) and trpzip2 (Amber + OBC2 or amber14 + GBn2).

Examples
--------
>>> from openmm_bg.systems import load
>>> load("alanine_dipeptide", solvent="implicit").n_atoms
22
"""

from __future__ import annotations

import openmm.app as app
import openmm.unit as unit
import torch

from ..data import structure_path
from .lennard_jones import fold_lennard_jones_table
from .molecular_system import MolecularSystem, ReactionCoordinate, dihedral_coordinate, interval_state

__all__ = ["alanine_dipeptide", "trpzip2", "ALANINE_PHI", "ALANINE_PSI", "C7AX_PHI_RANGE"]

#: Atom indices of the backbone dihedrals of alanine dipeptide.
ALANINE_PHI = (4, 6, 8, 14)
ALANINE_PSI = (6, 8, 14, 16)
#: The alpha_L / C7ax basin (rad): 0 < phi < 2.2. C7eq is everything else.
C7AX_PHI_RANGE = (0.0, 2.2)

_CONSTRAINTS = {None: None, "none": None, "hbonds": app.HBonds, "allbonds": app.AllBonds,
                "hangles": app.HAngles}


def _constraints(value):
    key = value.lower() if isinstance(value, str) else value
    if key in _CONSTRAINTS:
        return _CONSTRAINTS[key]
    if value in (app.HBonds, app.AllBonds, app.HAngles):
        return value
    raise ValueError(f"constraints must be one of None, 'hbonds', 'allbonds', 'hangles'; got {value!r}")


def _openmmtools_data(name: str) -> str:
    """Path of a file in openmmtools' data folder, found without importing openmmtools (whose import
    loads pymbar and its banner)."""
    import importlib.util
    from pathlib import Path

    spec = importlib.util.find_spec("openmmtools")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("openmmtools is not installed: pip install openmmtools")
    path = Path(list(spec.submodule_search_locations)[0]) / "data" / name
    if not path.is_file():
        raise FileNotFoundError(f"openmmtools data file {name!r} not found at {path}; reinstall openmmtools")
    return str(path)


def _alanine_metadata():
    phi = dihedral_coordinate("phi", ALANINE_PHI)
    psi = dihedral_coordinate("psi", ALANINE_PSI)
    lo, hi = C7AX_PHI_RANGE
    states = {"C7eq": interval_state("C7eq", phi, lo, hi, complement=True),
              "C7ax": interval_state("C7ax", phi, lo, hi)}
    return {"phi": phi, "psi": psi}, states


def alanine_dipeptide(solvent: str = "vacuum", constraints=None, forcefield: str = "amber96",
                      temperature: float = 300.0) -> MolecularSystem:
    """Alanine dipeptide (Ace-Ala-Nme, 22 atoms).

    Parameters
    ----------
    solvent : {"vacuum", "implicit"}
        Implicit solvent is OBC1 (ff96 default, as openmmtools) or OBC2 (amber14).
    constraints : {None, "hbonds"}
        Bond constraints; the default ``None`` matches the usual BG benchmark.
    forcefield : {"amber96", "amber14"}
        ``"amber96"`` builds exactly openmmtools' ``AlanineDipeptideVacuum/Implicit`` from its
        prmtop; ``"amber14"`` builds from ``systems/alanine_dipeptide.pdb`` with
        ``amber14-all.xml`` (+ ``implicit/obc2.xml``).
    temperature : float
        K.
    """
    if solvent not in ("vacuum", "implicit"):
        raise ValueError(f"solvent must be 'vacuum' or 'implicit', got {solvent!r} "
                         "(explicit solvent is out of scope for a Boltzmann Generator)")
    cons = _constraints(constraints)
    if forcefield in ("amber96", "ff96", "amber99", None):
        prmtop = app.AmberPrmtopFile(_openmmtools_data("alanine-dipeptide-gbsa/alanine-dipeptide.prmtop"))
        inpcrd = app.AmberInpcrdFile(_openmmtools_data("alanine-dipeptide-gbsa/alanine-dipeptide.crd"))
        system = prmtop.createSystem(implicitSolvent=app.OBC1 if solvent == "implicit" else None,
                                     constraints=cons, nonbondedCutoff=None)
        topology, positions = prmtop.topology, inpcrd.getPositions(asNumpy=True)
        label = "AMBER ff96" + (", OBC1" if solvent == "implicit" else "")
    elif forcefield == "amber14":
        pdb = app.PDBFile(str(structure_path("alanine_dipeptide.pdb")))
        files = ["amber14-all.xml"] + (["implicit/obc2.xml"] if solvent == "implicit" else [])
        ff = app.ForceField(*files)
        system = ff.createSystem(pdb.topology, nonbondedMethod=app.NoCutoff, constraints=cons)
        topology, positions = pdb.topology, pdb.getPositions(asNumpy=True)
        label = "amber14" + (", OBC2" if solvent == "implicit" else "")
    else:
        raise ValueError(f"forcefield must be 'amber96' or 'amber14', got {forcefield!r}")
    rcs, states = _alanine_metadata()
    return MolecularSystem(
        name="alanine_dipeptide", system=system, topology=topology,
        positions=positions.value_in_unit(unit.nanometer), temperature=temperature,
        reaction_coordinates=rcs, states=states,
        description=f"alanine dipeptide, {label}, {solvent}",
    )


def trpzip2(constraints=None, temperature: float = 300.0, forcefield: str = "amber") -> MolecularSystem:
    """The 12-residue tryptophan zipper trpzip2 (218 atoms) in implicit solvent.

    Parameters
    ----------
    constraints : {None, "hbonds", "allbonds", "hangles"}
    temperature : float
        K.
    forcefield : {"amber", "amber14"}
        ``"amber"`` (default): the Amber parameters of ``systems/trpzip2/`` (openmmtools'
        ``trpzip2-explicit`` prmtop, an old-format file read with parmed, with water and ions
        stripped and mbondi2 radii assigned; see ``systems/generate_structures.py``) in OBC2.
        The prmtop keeps the stripped water and ion Lennard-Jones types, for which OpenMM would
        build a tabulated LJ force; it is folded back into the ``NonbondedForce``
        (`openmm_bg.systems.lennard_jones`: same energies, MD steps about 2.2x faster on one
        CPU thread, 1.5x on Reference; the GBSA force takes most of what is left).
        ``"amber14"``: the same topology and positions with ``amber14-all.xml`` and GBn2
        (``implicit/gbn2.xml``).
    """
    prmtop = app.AmberPrmtopFile(str(structure_path("trpzip2/trpzip2.prmtop")))
    inpcrd = app.AmberInpcrdFile(str(structure_path("trpzip2/trpzip2.inpcrd")))
    if forcefield == "amber":
        system = prmtop.createSystem(implicitSolvent=app.OBC2, nonbondedMethod=app.NoCutoff,
                                     constraints=_constraints(constraints))
        fold_lennard_jones_table(system, label="trpzip2")
        label = "Amber (prmtop), OBC2"
    elif forcefield == "amber14":
        ff = app.ForceField("amber14-all.xml", "implicit/gbn2.xml")
        system = ff.createSystem(prmtop.topology, nonbondedMethod=app.NoCutoff,
                                 constraints=_constraints(constraints))
        label = "amber14, GBn2"
    else:
        raise ValueError(f"forcefield must be 'amber' (the shipped prmtop, OBC2) or 'amber14' (GBn2), "
                         f"got {forcefield!r}")
    ca = [a.index for a in prmtop.topology.atoms() if a.name == "CA"]
    end_to_end = ReactionCoordinate(
        "end_to_end", lambda x: torch.linalg.norm(x[..., ca[-1], :] - x[..., ca[0], :], dim=-1),
        atoms=(ca[0], ca[-1]), bounds=(0.0, 4.0), unit="nm",
        description="distance between the first and last C-alpha")
    return MolecularSystem(
        name="trpzip2", system=system, topology=prmtop.topology,
        positions=inpcrd.getPositions(asNumpy=True).value_in_unit(unit.nanometer),
        temperature=temperature, reaction_coordinates={"end_to_end": end_to_end},
        description=f"trpzip2 beta hairpin (12 residues, 218 atoms), {label}",
    )


