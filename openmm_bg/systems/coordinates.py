"""Reaction coordinates of any molecule from short expressions: dihedrals, distances, angles, RMSD.

`coordinate` turns an expression into a `ReactionCoordinate` (torch, differentiable), checked
against the system before any work. The grammar (spaces are ignored around ``:`` and ``,``)::

    EXPR   := KIND ":" ARGS | NAME
    KIND   := dihedral (4 atoms) | angle (3 atoms, vertex in the middle) | distance (2 atoms)
            | phi | psi | omega | chi1 | chi2 | chi3 | chi4        (ARGS: one residue number)
            | rmsd                                                  (ARGS: FILE or FILE[SELECTION])
    ATOM   := INDEX            0-based atom index, as in OpenMM and mdtraj
            | RES/NAME         residue number and atom name, e.g. 2/CA

- Residues are numbered 1, 2, ... in topology order (the numbering of openmm-bg's atom labels
  such as ``ALA2:CA``), whatever numbers the structure file gives them.
- ``phi:R`` is ``C(R-1) N(R) CA(R) C(R)``, ``psi:R`` is ``N(R) CA(R) C(R) N(R+1)``, ``omega:R`` is
  ``CA(R) C(R) N(R+1) CA(R+1)`` (the peptide bond after R; the methyl carbon of an ACE or NME cap
  stands in for ``CA``); ``chi1:R`` ... ``chi4:R`` are the side-chain dihedrals of the IUPAC atom names.
- Dihedrals are in rad in ``(-pi, pi]`` (periodic), with mdtraj's sign convention; angles in rad;
  distances in nm.
- ``rmsd:FILE[SELECTION]``: RMSD (nm) after optimal superposition to the structure in FILE (any
  file mdtraj reads, with the system's atoms in the system's order), over the atoms of the mdtraj
  SELECTION (default ``not element H``, the heavy atoms), as ``mdtraj.rmsd``. A relative FILE is
  relative to the current folder (in a TOML file: to the file's folder). The coordinate keeps the
  reference positions of the selected atoms (its ``spec``), so a model file that stores it needs
  the file no more.
- A bare NAME is one of the system's own coordinates (e.g. ``phi`` of alanine dipeptide), or one of
  ``extra`` (coordinates defined in the same state file).

`backbone_definitions` gives every residue's phi and psi (``phi_2``, ``psi_2``) and its backbone
basins (`BACKBONE_BASINS`, defined in `openmm_bg.systems.backbone`).

Examples
--------
>>> import openmm_bg.systems as bgs
>>> ala = bgs.load("alanine_dipeptide")
>>> phi = coordinate(ala, "phi:2")
>>> phi.atoms, phi.periodic
((4, 6, 8, 14), True)
>>> coordinate(ala, "dihedral:1/C, 2/N, 2/CA, 2/C").atoms
(4, 6, 8, 14)
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from .._validation import one_line
from ..geometry import angle, distance
from .backbone import backbone_coordinates, backbone_states
from .molecular_system import MolecularSystem, ReactionCoordinate, dihedral_coordinate

__all__ = ["coordinate", "CoordinateError", "backbone_definitions", "BACKBONE_BASINS", "resolve_atom",
           "rmsd_coordinate", "coordinate_from_spec", "COORDINATE_KINDS"]


class CoordinateError(ValueError):
    """A coordinate or state expression that does not fit the grammar or the system."""


#: Atoms per kind of explicit coordinate.
_N_ATOMS = {"dihedral": 4, "angle": 3, "distance": 2}
#: Side-chain dihedrals: per chi, candidate atom names of the four positions (first match wins).
_CHI = {
    "chi1": (("N",), ("CA",), ("CB",), ("CG", "CG1", "OG", "OG1", "SG")),
    "chi2": (("CA",), ("CB",), ("CG", "CG1"), ("CD", "CD1", "OD1", "ND1", "SD")),
    "chi3": (("CB",), ("CG",), ("CD", "SD"), ("NE", "CE", "OE1")),
    "chi4": (("CG",), ("CD",), ("NE", "CE"), ("CZ", "NZ")),
}
#: Every KIND of the grammar.
COORDINATE_KINDS = ("dihedral", "angle", "distance", "phi", "psi", "omega", *_CHI, "rmsd")

#: Backbone basins of every residue with phi and psi (rad; defined in `openmm_bg.systems.backbone`).
#: Together they cover the whole (phi, psi) plane, each point in exactly one basin: alpha-L is
#: alanine dipeptide's C7ax range of phi (left-handed helix, C7ax), alpha-R the right-handed helix
#: region with its bridge, beta the rest (beta, C5, polyproline II, C7eq).
BACKBONE_BASINS: dict[str, str] = {
    "alphaL": "phi in (0, 2.2)",
    "alphaR": "phi not in (0, 2.2) and psi in (-2.2, 1.0)",
    "beta": "phi not in (0, 2.2) and psi not in (-2.2, 1.0)",
}


# ---------------------------------------------------------------------- atoms
def _residues(system: MolecularSystem) -> list:
    return list(system.topology.residues())


def _residue_list(residues) -> str:
    names = [f"{r.name}{r.index + 1}" for r in residues]
    return " ".join(names if len(names) <= 12 else [*names[:6], "...", *names[-3:]])


def _residue(system: MolecularSystem, text: str, expression: str):
    residues = _residues(system)
    if not re.fullmatch(r"\d+", text):
        raise CoordinateError(f"{expression!r}: residue {text!r} is not a residue number; residues are "
                              f"numbered 1-{len(residues)} in topology order: {_residue_list(residues)}")
    number = int(text)
    if not 1 <= number <= len(residues):
        raise CoordinateError(f"{expression!r}: no residue {number} in system {system.name!r}; residues are "
                              f"numbered 1-{len(residues)} in topology order: {_residue_list(residues)}")
    return residues[number - 1]


def _atom_in(residue, names: tuple[str, ...]):
    by_name = {a.name: a for a in residue.atoms()}
    for n in names:
        if n in by_name:
            return by_name[n]
    return None


def resolve_atom(system: MolecularSystem, text: str, expression: str | None = None) -> int:
    """The 0-based index of an atom reference: ``"INDEX"`` or ``"RES/NAME"`` (e.g. ``"2/CA"``).

    Raises
    ------
    CoordinateError
        An index out of range, an unknown residue or atom name, or text of neither form; the
        message names the expression and what the system has.

    Examples
    --------
    >>> import openmm_bg.systems as bgs
    >>> resolve_atom(bgs.load("alanine_dipeptide"), "2/CA")
    8
    """
    expression = text if expression is None else expression
    text = text.strip()
    n = system.n_atoms
    if re.fullmatch(r"\d+", text):
        index = int(text)
        if index >= n:
            raise CoordinateError(f"{expression!r}: atom index {index} is out of range: system {system.name!r} has "
                                  f"{n} atoms, indices 0-{n - 1} (0-based, as OpenMM and mdtraj)")
        return index
    match = re.fullmatch(r"(\S+)/(\S+)", text)
    if not match:
        raise CoordinateError(f"{expression!r}: {text!r} is not an atom; give a 0-based index (e.g. 4) or "
                              "RESIDUE/NAME (e.g. 2/CA)")
    residue = _residue(system, match.group(1), expression)
    atom = _atom_in(residue, (match.group(2),))
    if atom is None:
        names = ", ".join(a.name for a in residue.atoms())
        raise CoordinateError(f"{expression!r}: residue {residue.name}{residue.index + 1} has no atom "
                              f"{match.group(2)!r}; its atoms are {names}")
    return atom.index


def _named_dihedral(system: MolecularSystem, kind: str, args: str, expression: str) -> tuple[int, ...]:
    residue = _residue(system, args.strip(), expression)
    residues = _residues(system)
    label = f"{residue.name}{residue.index + 1}"
    if kind in _CHI:
        atoms = [_atom_in(residue, names) for names in _CHI[kind]]
        if any(a is None for a in atoms):
            raise CoordinateError(f"{expression!r}: residue {label} has no {kind} (its side chain lacks the atoms "
                                  f"{' '.join('/'.join(n) for n in _CHI[kind])}); give the atoms with dihedral:...")
        return tuple(a.index for a in atoms)
    before = residues[residue.index - 1] if residue.index > 0 else None
    after = residues[residue.index + 1] if residue.index + 1 < len(residues) else None
    if kind == "phi":
        parts = [(before, ("C",)), (residue, ("N",)), (residue, ("CA",)), (residue, ("C",))]
    elif kind == "psi":
        parts = [(residue, ("N",)), (residue, ("CA",)), (residue, ("C",)), (after, ("N",))]
    else:  # omega
        methyl = ("C",) if after is not None and after.name in ("NME", "NMA") else ()
        parts = [(residue, ("CA", "CH3")), (residue, ("C",)), (after, ("N",)), (after, ("CA", "CH3", *methyl))]
    atoms = [None if r is None else _atom_in(r, names) for r, names in parts]
    if any(a is None for a in atoms):
        which = {"phi": "the C of the residue before it and its own N, CA, C",
                 "psi": "its own N, CA, C and the N of the residue after it",
                 "omega": "its own CA, C and the N, CA of the residue after it"}[kind]
        raise CoordinateError(f"{expression!r}: residue {label} has no {kind} ({kind} needs {which}; caps and "
                              f"chain ends have none); residues: {_residue_list(residues)}")
    indices = tuple(a.index for a in atoms)
    link = {"phi": indices[0:2], "psi": indices[2:4], "omega": indices[1:3]}[kind]
    bonded = {frozenset((b[0].index, b[1].index)) for b in system.topology.bonds()}
    if bonded and frozenset(link) not in bonded:
        raise CoordinateError(f"{expression!r}: residue {label} is not bonded to its neighbour (atoms {link[0]} and "
                              f"{link[1]}; a chain break?), so it has no {kind}; give the atoms with dihedral:...")
    return indices


# ---------------------------------------------------------------------- rmsd
def _kabsch_rmsd(x: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """RMSD ``[batch]`` after optimal superposition of centred ``x [batch, m, 3]`` onto ``ref [m, 3]``.

    The largest eigenvalue of the quaternion matrix of the correlation (Horn 1987; Theobald 2005, the
    method of mdtraj.rmsd); eigenvalue gradients are well defined for the simple top eigenvalue.
    """
    x = x - x.mean(dim=-2, keepdim=True)
    ref = (ref - ref.mean(dim=-2, keepdim=True)).to(x)
    r = torch.einsum("bmi,mj->bij", x, ref)  # correlation matrix [batch, 3, 3]
    xx, xy, xz = r[:, 0, 0], r[:, 0, 1], r[:, 0, 2]
    yx, yy, yz = r[:, 1, 0], r[:, 1, 1], r[:, 1, 2]
    zx, zy, zz = r[:, 2, 0], r[:, 2, 1], r[:, 2, 2]
    k = torch.stack([
        torch.stack([xx + yy + zz, yz - zy, zx - xz, xy - yx], -1),
        torch.stack([yz - zy, xx - yy - zz, xy + yx, zx + xz], -1),
        torch.stack([zx - xz, xy + yx, -xx + yy - zz, yz + zy], -1),
        torch.stack([xy - yx, zx + xz, yz + zy, -xx - yy + zz], -1),
    ], -2)
    top = torch.linalg.eigvalsh(k)[:, -1]
    g = (x ** 2).sum(dim=(-2, -1)) + (ref ** 2).sum()
    msd = (g - 2 * top).clamp_min(0.0) / x.shape[-2]
    return torch.sqrt(msd + 1e-30)


def rmsd_coordinate(system: MolecularSystem, path: str | Path, selection: str = "not element H",
                    name: str | None = None) -> ReactionCoordinate:
    """RMSD (nm) to a reference structure after optimal superposition, over an mdtraj atom selection.

    Parameters
    ----------
    system : MolecularSystem
    path : str or Path
        Structure file mdtraj reads (PDB, ...) with the system's atoms in the system's order.
    selection : str
        mdtraj selection of the atoms fitted and measured (default the heavy atoms).
    name : str, optional
        Name of the coordinate (default ``rmsd:PATH[SELECTION]``).

    Raises
    ------
    CoordinateError
        The file is missing or unreadable, holds another number of atoms or other atom names, or
        the selection is invalid or empty.
    """
    import mdtraj

    path = Path(path)
    text = name or f"rmsd:{path}[{selection}]"
    if not path.is_file():
        raise CoordinateError(f"{text!r}: reference structure {str(path)!r} not found")
    try:
        ref = mdtraj.load(str(path))
    except Exception as err:  # mdtraj raises many kinds of errors for unreadable files
        raise CoordinateError(f"{text!r}: cannot read the reference structure {str(path)!r}: {one_line(err)}") from None
    if ref.n_atoms != system.n_atoms:
        raise CoordinateError(f"{text!r}: the reference structure has {ref.n_atoms} atoms, system {system.name!r} "
                              f"{system.n_atoms}; give a structure of the same molecule, atoms in the same order")
    try:
        atoms = system.atom_indices(selection)
    except Exception as err:  # mdtraj's selection parser raises its own errors
        raise CoordinateError(f"{text!r}: bad atom selection {selection!r} (mdtraj syntax, e.g. 'backbone', "
                              f"'name CA'): {one_line(err)}") from None
    if len(atoms) < 3:
        raise CoordinateError(f"{text!r}: the selection {selection!r} has {len(atoms)} atoms; an RMSD needs at least 3")
    mine = [system.mdtraj_topology.atom(int(i)).name for i in atoms]
    theirs = [ref.topology.atom(int(i)).name for i in atoms]
    if mine != theirs:
        k = next(i for i, (a, b) in enumerate(zip(mine, theirs, strict=True)) if a != b)
        raise CoordinateError(f"{text!r}: atom {int(atoms[k])} is {mine[k]!r} in the system but {theirs[k]!r} in "
                              f"{path.name}; the reference must list the system's atoms in the same order")
    spec = {"kind": "rmsd", "atoms": [int(i) for i in atoms], "reference": ref.xyz[0][atoms].astype(float).tolist(),
            "selection": selection, "file": path.name}
    rc = coordinate_from_spec(text, spec)
    with torch.no_grad():
        r0 = float(rc.function(torch.as_tensor(system.positions[None]))[0])
    return replace(rc, bounds=(0.0, max(0.5, 3.0 * r0)))


def coordinate_from_spec(name: str, spec: dict, description: str | None = None) -> ReactionCoordinate | None:
    """The coordinate of a stored recipe (``ReactionCoordinate.spec``), or None for a kind this version does not know.

    Kinds: ``dihedral``, ``angle``, ``distance`` (``atoms``: 4, 3 or 2 indices) and ``rmsd``
    (``atoms``: the fitted atoms, ``reference``: their reference positions ``[m, 3]`` in nm, so
    the coordinate needs no structure file; ``selection`` and ``file`` for its description).
    Bounds are the defaults of the kind (the stored ones are set by `openmm_bg.systems.record`).

    Examples
    --------
    >>> rc = coordinate_from_spec("ends", {"kind": "distance", "atoms": [0, 1]})
    >>> round(float(rc(np.array([[[0.0, 0, 0], [0.3, 0.4, 0]]]))[0]), 6), rc.unit, rc.spec["kind"]
    (0.5, 'nm', 'distance')
    """
    kind = spec.get("kind")
    if kind == "dihedral":
        return dihedral_coordinate(name, spec["atoms"], description=description)
    if kind in ("angle", "distance"):
        atoms = tuple(int(a) for a in spec["atoms"])
        if len(atoms) != _N_ATOMS[kind]:
            raise ValueError(f"coordinate {name!r}: a stored {kind} needs {_N_ATOMS[kind]} atoms, got {list(atoms)}")
        if kind == "angle":
            i, j, k = atoms
            return ReactionCoordinate(name, lambda x: angle(x, i, j, k), atoms=atoms, periodic=False,
                                      bounds=(0.0, math.pi), unit="rad", spec={"kind": kind, "atoms": list(atoms)},
                                      description=description or f"angle of atoms {atoms}")
        i, j = atoms
        return ReactionCoordinate(name, lambda x: distance(x, i, j), atoms=atoms, periodic=False,
                                  bounds=(0.0, 1.0), unit="nm", spec={"kind": kind, "atoms": list(atoms)},
                                  description=description or f"distance of atoms {atoms}")
    if kind == "rmsd":
        atoms = tuple(int(a) for a in spec["atoms"])
        reference = torch.as_tensor(np.asarray(spec["reference"], dtype=np.float64))
        if reference.shape != (len(atoms), 3) or len(atoms) < 3:
            raise ValueError(f"coordinate {name!r}: a stored RMSD needs >= 3 atoms and their reference positions "
                             f"[m, 3], got {len(atoms)} atoms and positions of shape {tuple(reference.shape)}")
        index = torch.as_tensor(atoms, dtype=torch.long)

        def function(x: torch.Tensor) -> torch.Tensor:
            flat = x.reshape(-1, x.shape[-2], 3)[:, index.to(x.device)]
            return _kabsch_rmsd(flat, reference.to(x.device)).reshape(x.shape[:-2])

        stored = {"kind": "rmsd", "atoms": list(atoms), "reference": reference.tolist(),
                  "selection": spec.get("selection"), "file": spec.get("file")}
        return ReactionCoordinate(name, function, atoms=atoms, periodic=False, bounds=(0.0, 0.5), unit="nm",
                                  spec=stored, description=description or f"RMSD to {spec.get('file')} over "
                                  f"'{spec.get('selection')}' after superposition")
    return None


# ---------------------------------------------------------------------- expressions
def _geometric(name: str, kind: str, atoms: tuple[int, ...], system: MolecularSystem,
               description: str) -> ReactionCoordinate:
    if kind in ("dihedral", "phi", "psi", "omega", *_CHI):
        return coordinate_from_spec(name, {"kind": "dihedral", "atoms": list(atoms)}, description)
    rc = coordinate_from_spec(name, {"kind": kind, "atoms": list(atoms)}, description)
    if kind == "distance":
        i, j = atoms
        d0 = float(np.linalg.norm(system.positions[i] - system.positions[j]))
        rc = replace(rc, bounds=(0.0, 2.0 * d0 + 0.5))
    return rc


def coordinate(system: MolecularSystem, expression: str, name: str | None = None,
               extra: Mapping[str, ReactionCoordinate] | None = None,
               base: str | Path | None = None) -> ReactionCoordinate:
    """The `ReactionCoordinate` of an expression (grammar in the module docstring).

    Parameters
    ----------
    system : MolecularSystem
        The system the atoms and residues refer to.
    expression : str
        E.g. ``"phi:2"``, ``"dihedral:4,6,8,14"``, ``"distance:1/CA,5/CA"``, ``"rmsd:ref.pdb[backbone]"``
        or the name of a coordinate of ``system`` or ``extra``.
    name : str, optional
        Name of the result (default: the expression without spaces).
    extra : mapping of str -> ReactionCoordinate, optional
        Further named coordinates a bare NAME may refer to (looked up before the system's).
    base : str or Path, optional
        Folder a relative RMSD reference file is relative to (default the current folder).

    Returns
    -------
    ReactionCoordinate
        A torch function of positions ``[batch, n_atoms, 3]`` (nm) -> ``[batch]``, differentiable.

    Raises
    ------
    CoordinateError
        (a ValueError) an unknown kind or name, the wrong number of atoms, an index out of range, an
        unknown residue or atom name; the message names the problem and the fix.

    Examples
    --------
    >>> import openmm_bg.systems as bgs
    >>> ala = bgs.load("alanine_dipeptide")
    >>> round(float(coordinate(ala, "distance:0,1")(ala.positions[None])[0]), 4)
    0.109
    >>> coordinate(ala, "phi:1")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    openmm_bg.systems.coordinates.CoordinateError: 'phi:1': residue ACE1 has no phi ...
    """
    if not isinstance(expression, str) or not expression.strip():
        raise CoordinateError(f"a coordinate expression must be non-empty text, got {expression!r}; e.g. 'phi:2' "
                              "or 'distance:1/CA,5/CA'")
    text = expression.strip()
    known = {**system.reaction_coordinates, **(extra or {})}
    if ":" not in text:
        if text in known:
            rc = known[text]
            return rc if name is None or name == rc.name else _renamed(rc, name)
        raise CoordinateError(f"system {system.name!r} has no reaction coordinate {text!r}; it has "
                              f"{sorted(known) or 'none'}; or give an expression KIND:ARGS with KIND one of "
                              f"{', '.join(COORDINATE_KINDS)} (e.g. phi:2, distance:1/CA,5/CA)")
    kind, args = (part.strip() for part in text.split(":", 1))
    kind = kind.lower()
    if kind == "rmsd":
        match = re.fullmatch(r"(.+?)(?:\[(.*)\])?", args)
        if not args or match is None:
            raise CoordinateError(f"{text!r}: rmsd takes a structure file, optionally with an mdtraj selection "
                                  "in brackets: rmsd:ref.pdb or rmsd:ref.pdb[backbone]")
        path = Path(match.group(1).strip())
        if base is not None and not path.is_absolute():
            path = Path(base) / path
        selection = (match.group(2) or "").strip() or "not element H"
        return rmsd_coordinate(system, path, selection, name=name or _compact(text))
    if kind not in COORDINATE_KINDS:
        raise CoordinateError(f"{text!r}: unknown coordinate kind {kind!r}; use one of {', '.join(COORDINATE_KINDS)} "
                              "(e.g. phi:2, dihedral:4,6,8,14, distance:1/CA,5/CA, rmsd:ref.pdb)")
    if kind in _N_ATOMS:
        parts = [p.strip() for p in args.split(",")]
        if len(parts) != _N_ATOMS[kind] or not all(parts):
            raise CoordinateError(f"{text!r}: {kind} takes {_N_ATOMS[kind]} atoms separated by commas, got "
                                  f"{len([p for p in parts if p])}; e.g. {kind}:"
                                  f"{','.join(str(k) for k in range(_N_ATOMS[kind]))}")
        atoms = tuple(resolve_atom(system, p, text) for p in parts)
        if len(set(atoms)) != len(atoms):
            raise CoordinateError(f"{text!r}: the atoms {atoms} repeat an atom; give {_N_ATOMS[kind]} different atoms")
    else:
        atoms = _named_dihedral(system, kind, args, text)
    description = f"{kind} of atoms {atoms}"
    return _geometric(name or _compact(text), kind, atoms, system, description)


def _compact(text: str) -> str:
    return re.sub(r"\s*([:,/])\s*", r"\1", text.strip())


def _renamed(rc: ReactionCoordinate, name: str) -> ReactionCoordinate:
    return replace(rc, name=name)


# ---------------------------------------------------------------------- backbone
def backbone_definitions(system: MolecularSystem) -> tuple[dict[str, ReactionCoordinate], dict]:
    """phi and psi of every residue that has them, and the backbone basins of those with both.

    The one definition is `openmm_bg.systems.backbone` (`backbone_coordinates`, `backbone_states`);
    this takes a system and returns both.

    Parameters
    ----------
    system : MolecularSystem

    Returns
    -------
    coordinates : dict of str -> ReactionCoordinate
        ``phi_R`` and ``psi_R`` (rad) per residue number R (caps and chain ends lack one or both).
    states : dict of str -> State
        ``alphaL_R``, ``alphaR_R`` and ``beta_R`` per residue with both, the `BACKBONE_BASINS`; they
        partition the (phi, psi) plane of each residue. Empty dicts for a system without a
        peptide backbone.

    Examples
    --------
    >>> import openmm_bg.systems as bgs
    >>> rcs, states = backbone_definitions(bgs.load("alanine_dipeptide"))
    >>> sorted(rcs), sorted(states)
    (['phi_2', 'psi_2'], ['alphaL_2', 'alphaR_2', 'beta_2'])
    """
    coordinates = backbone_coordinates(system.topology)
    return coordinates, backbone_states(coordinates)
