"""Peptides from their sequence: `peptide` builds, parameterises and minimises a capped peptide offline.

How the structure is built (no network, no template library beyond OpenMM's and pdbfixer's):

1. this module's own builder places the backbone (ACE cap, N, CA, C, O of every residue, NME
   cap) from ideal internal coordinates (Engh-Huber bond lengths and angles, trans peptide
   bonds, phi/psi of an extended strand, phi -65 deg for proline) by the natural extension
   reference frame (NeRF), and each CB at its ideal L position;
2. pdbfixer adds the remaining side-chain atoms (its residue templates superposed on the atoms
   present, then relaxed with the backbone fixed) and the hydrogens at pH 7 (Lys, Arg charged,
   Asp, Glu charged, His by hydrogen bonding);
3. the System is made by ``openmm.app.ForceField`` (default ``amber14-all.xml``; implicit
   solvent adds ``implicit/obc2.xml``, whose OBC2 ``CustomGBForce`` is then replaced by the
   equivalent native ``GBSAOBCForce``, `openmm_bg.systems.gbsa.native_obc2`), no cutoff;
4. the structure is energy-minimised on the Reference platform and every residue is checked to
   be the L-amino acid (`openmm_bg.systems.backbone.l_amino_acid_centres`).

Every step is seeded and runs on the Reference platform, so a sequence gives the same positions
every time. The system carries phi/psi coordinates and basin states of every residue
(`openmm_bg.systems.backbone`; names ``phi_k``, ``psi_k``, ``alphaR_k``, ``beta_k``,
``alphaL_k`` with k the residue's 1-based position, caps included).

Examples
--------
>>> pep = peptide("AG")
>>> pep.n_atoms, [r.name for r in pep.topology.residues()]
(29, ['ACE', 'ALA', 'GLY', 'NME'])
>>> sorted(pep.reaction_coordinates)
['phi_2', 'phi_3', 'psi_2', 'psi_3']
"""

from __future__ import annotations

import io
import math
import random
from collections.abc import Sequence

import numpy as np
import openmm
import openmm.app as app
import openmm.unit as unit

from .._validation import one_line, temperature_kelvin
from .backbone import backbone_coordinates, backbone_states, l_amino_acid_centres
from .gbsa import native_obc2
from .molecular_system import MolecularSystem
from .peptides import _constraints

__all__ = ["peptide", "ONE_LETTER", "parse_sequence"]

#: One-letter codes of the 20 standard amino acids and their residue names.
ONE_LETTER = {"A": "ALA", "R": "ARG", "N": "ASN", "D": "ASP", "C": "CYS", "Q": "GLN", "E": "GLU", "G": "GLY",
              "H": "HIS", "I": "ILE", "L": "LEU", "K": "LYS", "M": "MET", "F": "PHE", "P": "PRO", "S": "SER",
              "T": "THR", "W": "TRP", "Y": "TYR", "V": "VAL"}
_FORCEFIELDS = {"amber14": "amber14-all.xml", "amber99sbildn": "amber99sbildn.xml", "amber99sb": "amber99sb.xml"}

# ideal geometry (nm, degrees)
_B = {"N-CA": 0.1458, "CA-C": 0.1525, "C-N": 0.1329, "C-O": 0.1231, "CA-CB": 0.1530, "CH3-C": 0.1520}
_A = {"N-CA-C": 111.2, "CA-C-N": 116.2, "C-N-CA": 121.7, "CA-C-O": 120.5, "N-C-O": 123.0, "N-CA-CB": 110.5}
_EXTENDED = (-150.0, 150.0)
_PRO_PHI = -65.0
_CB_DIHEDRAL = -122.6  # C-N-CA-CB of an L-amino acid (deg)


def parse_sequence(sequence: str) -> list[str]:
    """Residue names of a one-letter sequence (case-insensitive); a clear ValueError for anything else.

    Examples
    --------
    >>> parse_sequence("agp")
    ['ALA', 'GLY', 'PRO']
    """
    if not isinstance(sequence, str) or not sequence.strip():
        raise ValueError(f"sequence must be a non-empty string of one-letter amino-acid codes, got {sequence!r}")
    letters = sequence.strip().upper()
    bad = sorted({c for c in letters if c not in ONE_LETTER})
    if bad:
        raise ValueError(f"sequence {sequence!r}: unknown residue letter(s) {', '.join(map(repr, bad))}; use the "
                         f"one-letter codes of the 20 standard amino acids: {''.join(sorted(ONE_LETTER))}")
    return [ONE_LETTER[c] for c in letters]


def _place(a, b, c, bond: float, angle: float, torsion: float) -> np.ndarray:
    """Position of d with |cd| = bond, angle bcd = angle (deg) and dihedral abcd = torsion (deg) (NeRF)."""
    theta, phi = math.radians(angle), math.radians(torsion)
    bc = (c - b) / np.linalg.norm(c - b)
    n = np.cross(b - a, bc)
    n /= np.linalg.norm(n)
    m = np.cross(n, bc)
    along, across = -bond * math.cos(theta), bond * math.sin(theta)
    return c + along * bc + across * math.cos(phi) * m + across * math.sin(phi) * n


def _backbone(residues: list[str], caps: bool) -> list[tuple[str, str, np.ndarray]]:
    """(residue index, atom name, position nm) of the backbone heavy atoms and CBs."""
    torsions = [((_PRO_PHI if r == "PRO" else _EXTENDED[0]), _EXTENDED[1]) for r in residues]
    out: list[tuple[int, str, np.ndarray]] = []
    # three seed atoms: ACE CH3, ACE C, N of the first residue (or a dummy C before the first N without caps)
    prev_ca = np.zeros(3)
    prev_c = np.array([_B["CH3-C"], 0.0, 0.0])
    a = math.radians(180.0 - _A["CA-C-N"])
    n = prev_c + _B["C-N"] * np.array([math.cos(a), math.sin(a), 0.0])
    if caps:
        out += [(0, "CH3", prev_ca), (0, "C", prev_c)]
    first = 1 if caps else 0  # without caps, the seed CH3 and C only orient the first residue
    for k, name in enumerate(residues):
        phi, psi = torsions[k]
        ca = _place(prev_ca, prev_c, n, _B["N-CA"], _A["C-N-CA"], 180.0)
        c = _place(prev_c, n, ca, _B["CA-C"], _A["N-CA-C"], phi)
        if k == 0 and caps:
            out.append((0, "O", _place(ca, n, prev_c, _B["C-O"], _A["N-C-O"], 0.0)))
        next_n = _place(n, ca, c, _B["C-N"], _A["CA-C-N"], psi)
        res = first + k
        out += [(res, "N", n), (res, "CA", ca), (res, "C", c),
                (res, "O", _place(n, ca, c, _B["C-O"], _A["CA-C-O"], psi + 180.0))]
        if name != "GLY":
            out.append((res, "CB", _place(c, n, ca, _B["CA-CB"], _A["N-CA-CB"], _CB_DIHEDRAL)))
        if not caps and k == len(residues) - 1:  # the carboxylate's second oxygen, where the next N would be
            out.append((res, "OXT", _place(n, ca, c, _B["C-O"], _A["CA-C-O"], psi)))
        prev_ca, prev_c, n = ca, c, next_n
    if caps:
        res = first + len(residues)
        out += [(res, "N", n), (res, "C", _place(prev_ca, prev_c, n, _B["N-CA"], _A["C-N-CA"], 180.0))]
    return out


def _seed_pdb(names: list[str], atoms) -> str:
    lines = []
    for serial, (res, atom, xyz) in enumerate(atoms, start=1):
        x, y, z = (10.0 * xyz).tolist()  # Angstrom
        label = f" {atom:<3}" if len(atom) < 4 else atom
        lines.append(f"ATOM  {serial:5d} {label} {names[res]:>3} A{res + 1:4d}    {x:8.3f}{y:8.3f}{z:8.3f}"
                     f"  1.00  0.00          {atom[0]:>2}")
    return "\n".join(lines) + "\nTER\nEND\n"


def _structure(residues: list[str], caps: bool):
    """Topology and positions (nm) with all atoms, hydrogens included (pdbfixer for side chains and H)."""
    from pdbfixer import PDBFixer

    names = (["ACE"] if caps else []) + residues + (["NME"] if caps else [])
    fixer = PDBFixer(pdbfile=io.StringIO(_seed_pdb(names, _backbone(residues, caps))))
    fixer.platform = openmm.Platform.getPlatformByName("Reference")
    fixer.missingResidues = {}
    fixer.findMissingAtoms()
    state = random.getstate()  # openmm.app.Modeller places some hydrogens with Python's random module
    try:
        random.seed(1)
        fixer.addMissingAtoms(seed=1)
        fixer.addMissingHydrogens(7.0)
    finally:
        random.setstate(state)
    return fixer.topology, np.asarray(fixer.positions.value_in_unit(unit.nanometer), dtype=np.float64)


def _forcefield_files(forcefield, solvent: str) -> list[str]:
    if isinstance(forcefield, str):
        files = [_FORCEFIELDS.get(forcefield, forcefield)]
    elif isinstance(forcefield, Sequence) and forcefield and all(isinstance(f, str) for f in forcefield):
        files = list(forcefield)
    else:
        raise ValueError(f"forcefield must be one of {sorted(_FORCEFIELDS)} or a list of OpenMM force-field XML "
                         f"files, got {forcefield!r}")
    if solvent == "implicit" and not any(f.startswith("implicit/") for f in files):
        files.append("implicit/obc2.xml")
    return files


def _minimise(system: openmm.System, positions: np.ndarray) -> np.ndarray:
    context = openmm.Context(system, openmm.VerletIntegrator(0.001), openmm.Platform.getPlatformByName("Reference"))
    context.setPositions(positions)
    openmm.LocalEnergyMinimizer.minimize(context, 1.0, 0)
    out = context.getState(getPositions=True).getPositions(asNumpy=True).value_in_unit(unit.nanometer)
    return np.asarray(out, dtype=np.float64)


def peptide(sequence: str, caps: bool = True, solvent: str = "vacuum", forcefield="amber14",
            temperature: float = 300.0, constraints=None) -> MolecularSystem:
    """A peptide built from its one-letter sequence, parameterised, minimised, with phi/psi and basin states.

    Parameters
    ----------
    sequence : str
        One-letter codes of the 20 standard amino acids, N to C terminus, e.g. ``"AAGA"``
        (case-insensitive); other letters are refused with the list of allowed ones.
    caps : bool
        Cap with ACE and NME (default); without caps the termini are charged (NH3+, COO-).
    solvent : {"vacuum", "implicit"}
        Implicit solvent is OBC2 as OpenMM's native ``GBSAOBCForce`` (with the ACE surface term).
    forcefield : str or list of str
        ``"amber14"`` (``amber14-all.xml``, default), ``"amber99sbildn"``, ``"amber99sb"``, or a
        list of OpenMM force-field XML files (for implicit solvent, ``implicit/obc2.xml`` is added
        unless the list names an ``implicit/`` file; only OBC2 becomes native).
    temperature : float
        K, positive and finite.
    constraints : {None, "hbonds", "allbonds", "hangles"}
        Bond constraints (default none).

    Returns
    -------
    MolecularSystem
        Named ``"peptide:" + sequence`` (upper case); ``openmm_bg.systems.load("peptide:AAGA")``
        builds the same system.

    Raises
    ------
    ValueError
        For an unknown letter, solvent, force field or constraint, before any work; for a force
        field without templates for the built residues (the atom names are Amber's).
    RuntimeError
        If the built structure has a residue that is not the L-amino acid (a builder bug).
    """
    residues = parse_sequence(sequence)
    if solvent not in ("vacuum", "implicit"):
        raise ValueError(f"solvent must be 'vacuum' or 'implicit', got {solvent!r} "
                         "(explicit solvent is out of scope for a Boltzmann Generator)")
    constraints = _constraints(constraints)
    if isinstance(caps, str) and caps.lower() in ("true", "false"):  # from the command line's --option caps=false
        caps = caps.lower() == "true"
    if not isinstance(caps, bool):
        raise ValueError(f"caps must be True or False, got {caps!r}")
    if not caps and len(residues) == 1:
        raise ValueError(f"sequence {sequence!r}: a single uncapped amino acid (N and C terminus at once) has no "
                         "force-field template; use caps=True or two residues or more")
    temperature = temperature_kelvin("temperature", temperature)
    files = _forcefield_files(forcefield, solvent)
    try:
        ff = app.ForceField(*files)
    except (ValueError, OSError) as err:
        raise ValueError(f"could not read force-field files {files}: {err}") from err
    topology, positions = _structure(residues, caps)
    try:
        system = native_obc2(ff.createSystem(topology, nonbondedMethod=app.NoCutoff, constraints=constraints))
    except Exception as err:  # OpenMM raises ValueError or a bare Exception for template problems
        raise ValueError(f"could not parameterise peptide {sequence!r} with {files}: {one_line(err)}. The builder "
                         "names atoms as the Amber force fields do (ACE/NME caps): use an Amber force field such "
                         "as 'amber14'") from err
    positions = _minimise(system, positions)
    centres = l_amino_acid_centres(topology)
    wrong = [n for n, bad in zip(centres.names, centres.inverted(positions[None])[0], strict=True) if bad]
    if wrong:
        raise RuntimeError(f"peptide {sequence!r}: the built structure has D centres at {wrong}; please report")
    coordinates = backbone_coordinates(topology)
    label = "".join(sequence.split()).upper()
    solvent_text = "OBC2 (GBSAOBCForce)" if solvent == "implicit" else "vacuum"
    return MolecularSystem(
        name=f"peptide:{label}", system=system, topology=topology, positions=positions, temperature=temperature,
        reaction_coordinates=coordinates, states=backbone_states(coordinates),
        description=(f"{'Ace-' if caps else ''}{'-'.join(r.capitalize() for r in residues)}{'-Nme' if caps else ''}, "
                     f"{', '.join(files)}, {solvent_text}"))
