"""Load user systems: Amber, CHARMM and GROMACS files (parmed), PDB + force field, or OpenMM objects.

Every loader returns a `MolecularSystem` built for vacuum (``implicit_solvent=None``) or an
implicit-solvent model (``"OBC1"``, ``"OBC2"``, ``"GBn"``, ``"GBn2"``, ``"HCT"``) with no
cutoff. Periodic input (a box, explicit solvent) still loads, flagged ``periodic``, so that later
layers can refuse it with a clear message.

Examples
--------
>>> from openmmtools.testsystems import get_data_filename
>>> from openmm_bg.systems import from_files
>>> top = get_data_filename("data/alanine-dipeptide-gbsa/alanine-dipeptide.prmtop")
>>> crd = get_data_filename("data/alanine-dipeptide-gbsa/alanine-dipeptide.crd")
>>> from_files(top, crd).n_atoms
22
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import openmm
import openmm.app as app
import openmm.unit as unit

from .._validation import temperature_kelvin
from .hydrogen_mass import check_hydrogen_mass
from .lennard_jones import fold_lennard_jones_table
from .molecular_system import MolecularSystem

__all__ = ["from_files", "from_pdb", "from_openmm"]

_IMPLICIT = {None: None, "vacuum": None, "obc1": app.OBC1, "obc2": app.OBC2, "gbn": app.GBn,
             "gbn2": app.GBn2, "hct": app.HCT}
_SOLVENT_RESIDUES = {"HOH", "WAT", "SOL", "TIP3", "TIP3P", "T3P", "SPC", "TIP4", "TP4"}
_ION_RESIDUES = {"NA", "CL", "K", "MG", "CA", "ZN", "NA+", "CL-", "K+", "SOD", "CLA", "POT", "LI", "RB", "CS", "F",
                 "BR", "I"}
_TOPOLOGY_SUFFIXES = {".prmtop": "amber", ".parm7": "amber", ".top": "gromacs",
                      ".psf": "charmm"}


def _implicit(value):
    key = value.lower() if isinstance(value, str) else value
    if key not in _IMPLICIT:
        raise ValueError(f"implicit_solvent must be one of None, 'OBC1', 'OBC2', 'GBn', 'GBn2', "
                         f"'HCT'; got {value!r}")
    return _IMPLICIT[key]


def _hydrogen_mass(value) -> float | None:
    """The checked ``hydrogen_mass`` option (dalton), before any work; None: the force field's masses."""
    return None if value is None else check_hydrogen_mass(value)


def _repartitioned(system: MolecularSystem, hydrogen_mass: float | None) -> MolecularSystem:
    return system if hydrogen_mass is None else system.with_hydrogen_mass(hydrogen_mass)


def _existing(path, what: str) -> Path:
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{what} file not found: {str(p)!r}; check the path")
    return p


def from_openmm(system: openmm.System, topology: app.Topology, positions, temperature: float = 300.0,
                name: str = "user_system", rotation_invariant: bool | None = None,
                hydrogen_mass: float | None = None) -> MolecularSystem:
    """Wrap an OpenMM System, Topology and positions a user already has.

    Parameters
    ----------
    system : openmm.System
    topology : openmm.app.Topology
    positions : array-like or Quantity
        ``[n_atoms, 3]``, nm if unitless.
    temperature : float or openmm.unit.Quantity
        K; positive and finite.
    name : str
    rotation_invariant : bool, optional
        Default: True unless the System has external (positional) forces or a periodic box.
    hydrogen_mass : float, optional
        Dalton: hydrogen mass repartitioning of a copy of ``system``
        (`MolecularSystem.with_hydrogen_mass`); default the System's masses.

    Notes
    -----
    The System is used as given. One that OpenMM built from a prmtop stripped of water or ions
    carries a tabulated Lennard-Jones force for the unused types; ``from_files`` folds it, or
    call `openmm_bg.systems.lennard_jones.fold_lennard_jones_table` on the System first (same
    energies, faster MD).
    """
    temperature = temperature_kelvin("temperature", temperature)
    hydrogen_mass = _hydrogen_mass(hydrogen_mass)
    if hasattr(positions, "value_in_unit"):
        positions = positions.value_in_unit(unit.nanometer)
    positions = np.asarray(positions, dtype=np.float64)
    if rotation_invariant is None:
        external = any(isinstance(f, openmm.CustomExternalForce) for f in system.getForces())
        rotation_invariant = not external and not system.usesPeriodicBoundaryConditions()
    return _repartitioned(MolecularSystem(name=name, system=system, topology=topology, positions=positions,
                                          temperature=temperature, rotation_invariant=rotation_invariant,
                                          description=f"user system {name}"), hydrogen_mass)


def from_pdb(pdb, forcefield: Sequence[str] | str = ("amber14-all.xml",), implicit_solvent=None,
             constraints=None, temperature: float = 300.0, name: str | None = None,
             hydrogen_mass: float | None = None) -> MolecularSystem:
    """Build a system from a PDB file and OpenMM force-field XML files.

    Parameters
    ----------
    pdb : str or Path
        PDB file with all atoms, hydrogens included.
    forcefield : list of str
        XML files for ``openmm.app.ForceField``, e.g. ``["amber14-all.xml", "implicit/obc2.xml"]``
        (the implicit-solvent XML decides the solvent model).
    constraints : None, app.HBonds, ...
    temperature : float or openmm.unit.Quantity
        K; positive and finite.
    hydrogen_mass : float, optional
        Dalton: hydrogen mass repartitioning (`MolecularSystem.with_hydrogen_mass`), e.g. 1.5 with
        ``constraints=app.HBonds`` for 4 fs MD steps; default the force field's masses.
    """
    temperature = temperature_kelvin("temperature", temperature)
    hydrogen_mass = _hydrogen_mass(hydrogen_mass)
    path = _existing(pdb, "PDB")
    files = [forcefield] if isinstance(forcefield, str) else list(forcefield)
    if implicit_solvent is not None:
        raise ValueError("from_pdb takes the implicit-solvent model as a force-field XML file, "
                         "e.g. forcefield=['amber14-all.xml', 'implicit/obc2.xml']")
    structure = app.PDBFile(str(path))
    try:
        ff = app.ForceField(*files)
    except (ValueError, OSError) as err:
        raise ValueError(f"could not read force-field files {files}: {err}") from err
    _check_templates(ff, structure.topology, path.name, files)
    periodic = structure.topology.getPeriodicBoxVectors() is not None and _has_water(structure.topology)
    method = app.PME if periodic else app.NoCutoff
    try:
        system = ff.createSystem(structure.topology, nonbondedMethod=method, constraints=constraints)
    except ValueError as err:
        raise ValueError(
            f"could not parameterise {path.name}: {err}. Add hydrogens (e.g. "
            "openmm.app.Modeller.addHydrogens or pdbfixer), use standard residue names, or "
            "add the XML file with the missing residue templates to `forcefield`"
        ) from err
    return _repartitioned(MolecularSystem(
        name=name or path.stem, system=system, topology=structure.topology,
        positions=structure.getPositions(asNumpy=True).value_in_unit(unit.nanometer),
        temperature=temperature, description=f"{path.name} with {', '.join(files)}"), hydrogen_mass)


def _residue_list(residues) -> str:
    """E.g. ``"HOH (3 residues, the first HOH 1 in chain B)"``."""
    names = ", ".join(sorted({r.name for r in residues}))
    first = residues[0]
    count = f"{len(residues)} residues, the first" if len(residues) > 1 else "residue"
    return f"{names} ({count} {first.name} {first.id} in chain {first.chain.id})"


def _check_templates(ff: app.ForceField, topology: app.Topology, label: str, files: list[str]) -> None:
    """Name the residues the force field has no template for, and the fix, before OpenMM's generic error."""
    unmatched = ff.getUnmatchedResidues(topology)
    if not unmatched:
        return
    solvent = [r for r in unmatched if r.name.upper() in _SOLVENT_RESIDUES]
    ions = [r for r in unmatched if r.name.upper() in _ION_RESIDUES]
    if solvent:
        raise ValueError(
            f"could not parameterise {label}: no template for the water {_residue_list(solvent)}: the force "
            f"field {files} has no water model. Strip the water (openmm.app.Modeller.deleteWater; a Boltzmann "
            "Generator needs a non-periodic system: use implicit solvent, e.g. add 'implicit/obc2.xml'), "
            "or add a water model such as 'amber14/tip3p.xml' to the force field")
    if ions:
        raise ValueError(
            f"could not parameterise {label}: no template for the ions {_residue_list(ions)}; add the force "
            f"field's ion parameters (for amber14: 'amber14/tip3p.xml', which holds its ions) to {files}, or "
            "remove the ions")
    raise ValueError(
        f"could not parameterise {label}: the force field {files} has no template for {_residue_list(unmatched)}. "
        "Add missing hydrogens (openmm.app.Modeller.addHydrogens or pdbfixer), use standard residue names, "
        "or add the XML file with the missing residue templates to `forcefield`")


def _has_water(topology: app.Topology) -> bool:
    """Explicit solvent present? (A box alone is not enough: GROMACS files always carry one.)"""
    return any(r.name in _SOLVENT_RESIDUES for r in topology.residues())


def _openmm_reads_prmtop(path: Path) -> bool:
    """True for current-format prmtops (``%FLAG`` sections), which OpenMM's own reader handles."""
    with open(path) as fh:
        return fh.readline().startswith("%VERSION") or "%FLAG" in fh.read(4096)


def _from_amber_openmm(top: Path, crd: Path, solvent, constraints, temperature, name, label):
    """Amber files through OpenMM's reader, so the System equals OpenMM's own conventions."""
    try:
        prmtop = app.AmberPrmtopFile(str(top))
        inpcrd = app.AmberInpcrdFile(str(crd))
    except Exception as err:
        raise ValueError(f"could not read {top.name} / {crd.name}: {err}") from err
    positions = inpcrd.getPositions(asNumpy=True).value_in_unit(unit.nanometer)
    if positions.shape[0] != prmtop.topology.getNumAtoms():
        raise ValueError(f"{crd.name} holds {positions.shape[0]} atoms but {top.name} defines "
                         f"{prmtop.topology.getNumAtoms()}; use the coordinate file that belongs to "
                         "this topology")
    periodic = prmtop.topology.getPeriodicBoxVectors() is not None and _has_water(prmtop.topology)
    system = prmtop.createSystem(nonbondedMethod=app.PME if periodic else app.NoCutoff,
                                 implicitSolvent=solvent, constraints=constraints)
    fold_lennard_jones_table(system, label=top.name)
    return MolecularSystem(name=name or top.stem, system=system, topology=prmtop.topology,
                           positions=positions, temperature=temperature,
                           description=f"{top.name} (amber)" + (f", {label}" if solvent else ""))


def from_files(topology, coordinates=None, parameters: Sequence[str] | str | None = None,
               implicit_solvent=None, constraints=None, temperature: float = 300.0,
               name: str | None = None, hydrogen_mass: float | None = None) -> MolecularSystem:
    """Load Amber (prmtop + inpcrd), CHARMM (psf + crd/pdb + parameter files) or GROMACS (top + gro).

    Files are read with parmed, which also handles old-format Amber prmtops that OpenMM's own
    reader rejects. A Lennard-Jones table that the readers build although every pair of atom types
    follows the combining rules (a file stripped of water or ions keeps their unused types) is
    folded back into the ``NonbondedForce`` (`openmm_bg.systems.lennard_jones`): same energies,
    faster steps (trpzip2 in OBC2: about 2x on one CPU thread). A table that must stay (genuine NBFIX) is kept with a
    `TabulatedLennardJonesWarning` naming its cost.

    Parameters
    ----------
    topology : str or Path
        ``.prmtop``/``.parm7`` (Amber), ``.psf`` (CHARMM) or ``.top`` (GROMACS).
    coordinates : str or Path
        ``.inpcrd``/``.rst7``/``.crd`` (Amber), ``.crd``/``.pdb`` (CHARMM), ``.gro`` (GROMACS).
    parameters : list of str, optional
        CHARMM parameter/topology files (``.prm``, ``.rtf``, ``.str``); required for CHARMM.
    implicit_solvent : None or str
        ``None`` (vacuum), ``"OBC1"``, ``"OBC2"``, ``"GBn"``, ``"GBn2"``, ``"HCT"``.
    constraints : None, app.HBonds, ...
    temperature : float or openmm.unit.Quantity
        K; positive and finite.
    hydrogen_mass : float, optional
        Dalton: hydrogen mass repartitioning (`MolecularSystem.with_hydrogen_mass`), e.g. 1.5 with
        ``constraints=app.HBonds`` for 4 fs MD steps; default the file's masses.
    """
    hydrogen_mass = _hydrogen_mass(hydrogen_mass)
    return _repartitioned(_from_files(topology, coordinates, parameters, implicit_solvent, constraints, temperature,
                                      name), hydrogen_mass)


def _from_files(topology, coordinates, parameters, implicit_solvent, constraints, temperature, name):
    import parmed

    temperature = temperature_kelvin("temperature", temperature)
    top = _existing(topology, "topology")
    kind = _TOPOLOGY_SUFFIXES.get(top.suffix.lower())
    if kind is None:
        raise ValueError(f"unknown topology format {top.suffix!r}; expected one of "
                         f"{sorted(_TOPOLOGY_SUFFIXES)} (Amber, GROMACS, CHARMM)")
    if coordinates is None:
        raise ValueError(f"{top.name}: give the coordinate file too (inpcrd/rst7, gro, crd or pdb)")
    crd = _existing(coordinates, "coordinate")
    solvent = _implicit(implicit_solvent)
    try:
        if kind == "charmm":
            if not parameters:
                raise ValueError("CHARMM input needs its parameter files: parameters=['par.prm', "
                                 "'top.rtf', ...]")
            params = [parameters] if isinstance(parameters, str | Path) else list(parameters)
            for p in params:
                _existing(p, "CHARMM parameter")
            structure = parmed.load_file(str(top))
            pset = parmed.charmm.CharmmParameterSet(*map(str, params))
            structure.load_parameters(pset)
            structure.coordinates = parmed.load_file(str(crd)).coordinates
        elif kind == "amber" and _openmm_reads_prmtop(top):
            return _from_amber_openmm(top, crd, solvent, constraints, temperature, name, implicit_solvent)
        else:
            structure = parmed.load_file(str(top), xyz=str(crd))
    except (parmed.exceptions.ParmedError, OSError, KeyError, IndexError) as err:
        raise ValueError(f"could not read {top.name} / {crd.name} with parmed: {err}") from err
    positions = np.asarray(structure.coordinates, dtype=np.float64) / 10.0  # Angstrom -> nm
    if positions.shape[0] != len(structure.atoms):
        raise ValueError(f"{crd.name} holds {positions.shape[0]} atoms but {top.name} defines "
                         f"{len(structure.atoms)}; use the coordinate file that belongs to this topology")
    periodic = structure.box is not None and _has_water(structure.topology)
    kwargs = {"nonbondedMethod": app.PME if periodic else app.NoCutoff, "constraints": constraints}
    if solvent is not None:
        kwargs["implicitSolvent"] = solvent
    system = structure.createSystem(**kwargs)
    fold_lennard_jones_table(system, label=top.name)
    return MolecularSystem(name=name or top.stem, system=system, topology=structure.topology,
                           positions=positions, temperature=temperature,
                           description=f"{top.name} ({kind})" + (f", {implicit_solvent}" if solvent else ""))
