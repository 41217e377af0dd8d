"""Checks of trajectories that users bring: atom count and order, solvent, whole molecules.

Examples
--------
>>> import numpy as np
>>> from openmm_bg.systems import load
>>> from openmm_bg.systems.trajectory import check_trajectory
>>> ala = load("alanine_dipeptide")
>>> check_trajectory(ala, ala.positions[None]).n_frames
1
"""

from __future__ import annotations

import os
from pathlib import Path

import mdtraj
import numpy as np
import openmm.app

from .data_checks import TrajectoryWarning, check_bond_lengths, check_distinct_frames, inverted_frames
from .molecular_system import MolecularSystem
from .trajectory_files import read_trajectory

__all__ = ["check_trajectory", "TrajectoryWarning"]


def check_trajectory(system: MolecularSystem, data, top=None) -> mdtraj.Trajectory:
    """Check and prepare user data for training: atoms, solvent, whole molecules, geometry.

    Parameters
    ----------
    system : MolecularSystem
        The system the data must belong to.
    data : mdtraj.Trajectory, path, or array
        A trajectory, a trajectory file (DCD/XTC need ``top`` or use the system's topology), or
        positions ``[n_frames, n_atoms, 3]`` in nm (numpy array or torch tensor).
    top : mdtraj.Topology, openmm.app.Topology, path, optional
        Topology for trajectory files without one (default: the system's).

    Returns
    -------
    mdtraj.Trajectory
        Solvent stripped, molecules made whole (when the data carry a box), atoms checked
        against the system.

    Raises
    ------
    ValueError
        For anything that would make the data silently wrong: another atom count, atom names
        in another order, NaN or inf, all frames identical, bond lengths that do not fit the
        system (atoms in another order than the topology, Angstrom instead of nm, molecules
        broken across a periodic box; see `openmm_bg.systems.data_checks`).
        A damaged file that decodes only partly (fewer frames than its header says, see
        `openmm_bg.systems.trajectory_files`) is refused with the numbers.
    FileNotFoundError
        For a missing data or topology file.

    Warns
    -----
    TrajectoryWarning
        When most frames are repeats, or frames have an inverted stereocentre relative to the
        system's reference structure (counts and frame indices).
    """
    if not isinstance(system, MolecularSystem):
        raise ValueError(f"system must be a MolecularSystem (openmm_bg.systems.load, from_files, ...), "
                         f"got {type(system).__name__}")
    top = _topology(top)
    if isinstance(data, str | os.PathLike):
        path = Path(data)
        if not path.is_file():
            raise FileNotFoundError(f"trajectory file not found: {str(path)!r}")
        traj = read_trajectory(path, top if top is not None else system.mdtraj_topology,
                               f"of {system.name} ({system.n_atoms} atoms)")
    elif isinstance(data, mdtraj.Trajectory):
        traj = data
    else:
        try:
            xyz = np.asarray(getattr(data, "detach", lambda: data)(), dtype=np.float32)
        except (TypeError, ValueError) as err:
            raise ValueError(f"data must be an mdtraj.Trajectory, a trajectory file or positions "
                             f"[n_frames, {system.n_atoms}, 3] in nm, got {type(data).__name__}") from err
        if xyz.ndim != 3 or xyz.shape[1:] != (system.n_atoms, 3):
            raise ValueError(f"positions must have shape [n_frames, {system.n_atoms}, 3] (nm), "
                             f"got {xyz.shape}")
        traj = mdtraj.Trajectory(xyz, system.mdtraj_topology)
    if traj.n_frames == 0:
        raise ValueError(f"data has no frames; {system.name} needs at least one configuration")
    if traj.n_atoms != system.n_atoms:
        stripped = traj.remove_solvent() if traj.topology.n_residues else traj
        if stripped.n_atoms != system.n_atoms:
            raise ValueError(f"trajectory has {traj.n_atoms} atoms ({stripped.n_atoms} without solvent) "
                             f"but system {system.name!r} has {system.n_atoms}; load the data with the "
                             "topology it was simulated with, or strip other molecules")
        traj = stripped
    _check_atom_order(system, traj)
    if traj.unitcell_vectors is not None:
        traj = traj.make_molecules_whole(inplace=False)
    if not np.all(np.isfinite(traj.xyz)):
        bad = np.where(~np.isfinite(traj.xyz).all(axis=(1, 2)))[0]
        raise ValueError(f"trajectory frames {bad[:10].tolist()} contain NaN or inf coordinates")
    check_distinct_frames(system, traj.xyz)
    check_bond_lengths(system, traj.xyz)
    inverted_frames(system, traj.xyz)
    return traj


def _topology(top):
    """``top`` as something `mdtraj.load` takes: None, an mdtraj.Topology, or a structure file."""
    if top is None or isinstance(top, mdtraj.Topology):
        return top
    if isinstance(top, openmm.app.Topology):
        return mdtraj.Topology.from_openmm(top)
    if isinstance(top, mdtraj.Trajectory):
        return top.topology
    if isinstance(top, str | os.PathLike):
        if not Path(top).is_file():
            raise FileNotFoundError(f"topology file not found: {str(top)!r}")
        return str(top)
    raise ValueError(f"top must be None (the system's topology), an mdtraj or OpenMM Topology, or a "
                     f"structure file (.pdb, .prmtop, ...), got {type(top).__name__}")


def _check_atom_order(system: MolecularSystem, traj: mdtraj.Trajectory) -> None:
    ours = list(system.mdtraj_topology.atoms)
    theirs = list(traj.topology.atoms)
    for a, b in zip(ours, theirs):
        same_element = a.element is None or b.element is None or a.element.symbol == b.element.symbol
        if not same_element or a.name != b.name:
            raise ValueError(f"atom order differs from system {system.name!r}: atom {a.index} is "
                             f"{a.residue.name}:{a.name} in the system but {b.residue.name}:{b.name} in "
                             "the trajectory; reorder the trajectory's atoms to the system's topology")
