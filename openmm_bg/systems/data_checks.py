"""Checks that configurations are what they claim to be: bond lengths, distinct frames, chirality.

Coordinates can be wrong in ways that atom counts and names do not show: a DCD or XTC file
stores no atom names, so atoms written in another order than the topology read back as the
system's atoms; coordinates in Angstrom are ten times too large; a solute stripped from
explicit-solvent MD without making it whole has bonds across the periodic box. Bond lengths
see all of these, because at room temperature a bond fluctuates by a few per cent around its
force-field length (C-H about 3 % at 300 K):

- `check_bond_lengths` compares every bond of the topology (and every constraint) with its
  reference length: the constraint distance, else the equilibrium length ``r0`` of the
  System's ``HarmonicBondForce``, else (molecules only) the bond in the reference positions.
  It refuses data whose median over frames is off by more than 25 % for any bond or 10 % in
  the median over bonds, and frames with a bond off by more than 50 % (broken molecules);
- `check_distinct_frames` refuses data whose frames are all the same configuration (up to
  rigid-body motion for molecules) and warns when most frames are repeats;
- `inverted_frames` finds frames with a stereocentre inverted relative to the reference.

All work on whole arrays (``[n_frames, n_bonds]``), so thousands of frames of a protein take
milliseconds. `openmm_bg.systems.trajectory.check_trajectory` runs them on every data set.

Examples
--------
>>> from openmm_bg.systems import load
>>> ala = load("alanine_dipeptide")
>>> check_bond_lengths(ala, ala.positions[None])  # passes: the reference itself
>>> try:
...     check_bond_lengths(ala, 10 * ala.positions[None])
... except ValueError as err:
...     print(str(err)[:73])
bond lengths in the data are 10.0 times the force field's (median over 21
"""

from __future__ import annotations

import warnings

import numpy as np
import openmm

from .chirality import stereocentres
from .molecular_system import MolecularSystem

__all__ = ["TrajectoryWarning", "bond_references", "check_bond_lengths", "check_distinct_frames",
           "inverted_frames", "BOND_TOLERANCE", "MEDIAN_BOND_TOLERANCE", "BROKEN_BOND_TOLERANCE"]

#: A bond whose median over frames is off its reference by more than this (relative) is refused.
BOND_TOLERANCE = 0.25
#: The median over bonds of the per-bond median deviation may be at most this (relative).
MEDIAN_BOND_TOLERANCE = 0.10
#: A frame with any bond off by more than this (relative) holds a broken molecule.
BROKEN_BOND_TOLERANCE = 0.5
#: Frames whose internal distances all agree within this (nm) are the same configuration.
SAME_FRAME_TOLERANCE = 1e-4


class TrajectoryWarning(UserWarning):
    """Data that can be used but look suspicious (repeated frames, inverted stereocentres)."""


def _atom_label(topology, i: int) -> str:
    atom = topology.atom(int(i))
    return f"{atom.residue.name}{atom.residue.index + 1}:{atom.name}"


def bond_references(system: MolecularSystem) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Bonds and constraints of ``system`` with their reference lengths.

    Parameters
    ----------
    system : MolecularSystem

    Returns
    -------
    pairs : numpy.ndarray
        ``[n_bonds, 2]`` int atom indices.
    length : numpy.ndarray
        ``[n_bonds]`` float64 reference lengths in nm: the constraint distance, else ``r0`` of a
        ``HarmonicBondForce`` term, else the distance in the reference positions.
    source : list of str
        ``"constraint"``, ``"force field"`` or ``"reference"`` per bond.

    Notes
    -----
    Systems that are not rotation invariant (toy and particle systems) use only bonds with a
    constraint or a harmonic term: their topology bonds may carry any potential (the dimer's
    bond is bistable).
    """
    constrained = {tuple(sorted((i, j))): d for i, j, d in system.constraints}
    harmonic: dict[tuple[int, int], float] = {}
    for force in system.system.getForces():
        if isinstance(force, openmm.HarmonicBondForce):
            for k in range(force.getNumBonds()):
                i, j, r0, _ = force.getBondParameters(k)
                harmonic.setdefault(tuple(sorted((int(i), int(j)))), float(r0.value_in_unit(openmm.unit.nanometer)))
    topology_bonds = {tuple(sorted((b[0].index, b[1].index))) for b in system.mdtraj_topology.bonds}
    pairs, length, source = [], [], []
    for pair in sorted(topology_bonds | set(constrained)):
        if pair in constrained:
            value, kind = constrained[pair], "constraint"
        elif pair in harmonic:
            value, kind = harmonic[pair], "force field"
        elif system.rotation_invariant:
            value, kind = float(np.linalg.norm(system.positions[pair[1]] - system.positions[pair[0]])), "reference"
        else:
            continue
        if value > 0:
            pairs.append(pair)
            length.append(value)
            source.append(kind)
    return np.asarray(pairs, dtype=int).reshape(-1, 2), np.asarray(length, dtype=np.float64), source


def _bond_table(system, pairs, reference, observed, order) -> str:
    top = system.mdtraj_topology
    return ", ".join(f"{_atom_label(top, pairs[b, 0])}-{_atom_label(top, pairs[b, 1])} "
                     f"{observed[b]:.3g} nm (reference {reference[b]:.3g})" for b in order)


def check_bond_lengths(system: MolecularSystem, xyz: np.ndarray) -> None:
    """Refuse configurations whose bond lengths do not fit the system's (wrong order, units, broken).

    Parameters
    ----------
    system : MolecularSystem
    xyz : numpy.ndarray
        ``[n_frames, n_atoms, 3]`` finite positions in nm.

    Raises
    ------
    ValueError
        Naming the likely cause (Angstrom instead of nm, atoms in another order than the
        topology, molecules broken across a periodic box) and the worst bonds with atom names.
    """
    pairs, reference, _ = bond_references(system)
    if len(pairs) == 0:
        return
    xyz = np.asarray(xyz)
    d = np.linalg.norm(xyz[:, pairs[:, 1]] - xyz[:, pairs[:, 0]], axis=-1)  # [frames, bonds]
    ratio = np.median(d, axis=0) / reference  # per bond
    off = np.abs(ratio - 1.0)
    overall = float(np.median(ratio))
    worst = np.argsort(-off)[:5]
    table = _bond_table(system, pairs, reference, np.median(d, axis=0), worst)
    where = f"(median over {len(pairs)} bonds)"
    if 7.0 < overall < 14.0:
        raise ValueError(f"bond lengths in the data are {overall:.1f} times the force field's {where}: the "
                         "coordinates look like Angstrom; openmm-bg works in nm (divide by 10). "
                         f"Worst bonds: {table}")
    if 0.07 < overall < 0.14:
        raise ValueError(f"bond lengths in the data are {overall:.2f} times the force field's {where}: the "
                         "coordinates look converted from Angstrom to nm twice (multiply by 10). "
                         f"Worst bonds: {table}")
    if np.median(off) > MEDIAN_BOND_TOLERANCE or off[worst[0]] > BOND_TOLERANCE:
        n_bad = int((off > BOND_TOLERANCE).sum())
        raise ValueError(
            f"bond lengths in the data do not fit system {system.name!r}: {n_bad} of {len(pairs)} bonds are off "
            f"their reference by more than {BOND_TOLERANCE:.0%} in the median over frames (median bond "
            f"{overall:.2f} x reference). Likely the atoms are in another order than the system's topology "
            "(a DCD/XTC file stores no atom names: load it with the topology it was written with, or reorder "
            "its atoms), or the data belong to another molecule, or the molecules are broken across a periodic "
            f"box. Worst bonds (median over frames): {table}")
    frame_off = np.abs(d / reference - 1.0)
    broken = np.where(frame_off.max(axis=1) > BROKEN_BOND_TOLERANCE)[0]
    if len(broken):
        bond = int(np.argmax(frame_off[broken[0]]))
        raise ValueError(
            f"{len(broken)} of {len(d)} frames have a bond off its reference length by more than "
            f"{BROKEN_BOND_TOLERANCE:.0%} (frames {broken[:10].tolist()}{' ...' if len(broken) > 10 else ''}; in "
            f"frame {broken[0]}: {_bond_table(system, pairs, reference, d[broken[0]], [bond])}). Likely the "
            "molecule is broken across a periodic box (solvent stripped without making molecules whole: "
            "load the data with its box, e.g. mdtraj.load(..., top=...) of the full system, or image them "
            "with mdtraj's make_molecules_whole before stripping), or these frames are damaged; drop them")


def _internal_fingerprint(system: MolecularSystem, xyz: np.ndarray) -> np.ndarray:
    """``[n_frames, k]``: each atom's distance to the centroid (molecules), else the raw coordinates."""
    if not system.rotation_invariant or xyz.shape[1] < 3:
        return xyz.reshape(len(xyz), -1)
    return np.linalg.norm(xyz - xyz.mean(axis=1, keepdims=True), axis=-1)


def check_distinct_frames(system: MolecularSystem, xyz: np.ndarray) -> None:
    """Refuse data whose frames are all one configuration; warn when most frames are repeats.

    Molecules (rotation-invariant systems) are compared by interatomic distances, so rigidly
    moved copies of one structure count as the same configuration.

    Parameters
    ----------
    system : MolecularSystem
    xyz : numpy.ndarray
        ``[n_frames, n_atoms, 3]`` positions in nm.
    """
    n = len(xyz)
    if n < 2:
        return
    fp = _internal_fingerprint(system, np.asarray(xyz))
    spread = np.abs(fp - fp[0]).max(axis=1)
    if np.all(spread <= SAME_FRAME_TOLERANCE):
        how = " (up to rigid-body motion)" if system.rotation_invariant and xyz.shape[1] >= 3 else ""
        raise ValueError(f"all {n} frames are identical{how}: data for training need configurations "
                         "that differ (thermal fluctuations); check that the MD wrote new positions to each "
                         "frame (a reporter attached to another simulation, or the same frame saved repeatedly)")
    n_distinct = len(np.unique(np.round(fp / SAME_FRAME_TOLERANCE), axis=0))
    if n_distinct < n / 2:
        warnings.warn(f"only {n_distinct} of {n} frames are distinct configurations; the data repeat frames "
                      "(the same file loaded several times?)", TrajectoryWarning, stacklevel=3)


def inverted_frames(system: MolecularSystem, xyz: np.ndarray, warn: bool = True) -> np.ndarray:
    """Indices of frames with a stereocentre inverted relative to the system's reference structure.

    Force fields without chiral terms give a mirror image the same energy, and the Boltzmann
    Generator's target holds the stereoisomer of the reference only (`openmm_bg.systems.chirality`),
    so such frames are outside the target: usually a mirrored data set (one axis flipped) or
    data of another stereoisomer.

    Parameters
    ----------
    system : MolecularSystem
    xyz : numpy.ndarray
        ``[n_frames, n_atoms, 3]`` positions in nm.
    warn : bool
        Issue a `TrajectoryWarning` with the counts and frame indices when there are any.

    Returns
    -------
    numpy.ndarray
        Frame indices (int).
    """
    if not system.rotation_invariant or system.mdtraj_topology.n_bonds == 0:
        return np.zeros(0, dtype=int)
    try:
        sc = stereocentres(system.topology, system.positions)
    except ValueError:  # a planar reference centre: reported where a generator is built
        return np.zeros(0, dtype=int)
    if len(sc) == 0:
        return np.zeros(0, dtype=int)
    inverted = sc.inverted(np.asarray(xyz, dtype=np.float64))  # [frames, centres]
    frames = np.where(inverted.any(axis=1))[0]
    if warn and len(frames):
        per_centre = ", ".join(f"{name} in {int(c)}" for name, c in zip(sc.names, inverted.sum(axis=0)) if c)
        mirror = " (all of them: a mirror image of the reference, e.g. one axis flipped?)" \
            if len(frames) == len(xyz) else ""
        warnings.warn(f"{len(frames)} of {len(xyz)} frames have an inverted stereocentre relative to the "
                      f"system's reference{mirror}: {per_centre} frames; frames "
                      f"{frames[:10].tolist()}{' ...' if len(frames) > 10 else ''}. The generator's target "
                      "holds the reference's stereoisomer only: these frames lie outside it",
                      TrajectoryWarning, stacklevel=3)
    return frames
