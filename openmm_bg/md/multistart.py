"""Training data from several starts: `simulate_starts` runs MD from each structure and merges the frames.

A single MD run of a peptide rarely crosses between backbone basins; starting one run in each basin
(`torsion_starts` makes such structures by rotating phi/psi of every residue) and, optionally,
running some of them hot gives training data that covers the basins. Each frame's origin is
recorded: with ``output="md.h5"`` the file ``md.h5.origins.json`` (written atomically, before the
trajectory) lists every start with its label, temperature, seed and its frames
``[first_frame, first_frame + n_frames)``; `read_origins` turns it into the start index of
every frame. Frames of hot starts are not Boltzmann-distributed at the system's temperature: fine
for maximum-likelihood training data, not for estimates.

While the run goes, each start has its own crash-safe run (`openmm_bg.md.partial`) in the folder
``md.h5.starts/``; ``resume=True`` keeps finished starts and continues the stopped one.

Examples
--------
>>> import openmm_bg.systems as bgs
>>> dw = bgs.load("double_well")
>>> starts = [[[-1.0, 0.0, 0.0]], [[1.0, 0.0, 0.0]]]
>>> traj, origins = simulate_starts(dw, starts, n_frames=5, stride=10, progress=False, platform="Reference")
>>> traj.n_frames, origins.tolist()
(10, [0, 0, 0, 0, 0, 1, 1, 1, 1, 1])
"""

from __future__ import annotations

import json
import math
import os
import shutil
from collections.abc import Sequence
from pathlib import Path

import mdtraj
import numpy as np
import openmm
import openmm.unit as unit

from .. import _validation as check
from .._output import write_text_atomic
from ..geometry import dihedral
from ..systems import MolecularSystem
from ..systems.backbone import backbone_coordinates, l_amino_acid_centres
from .partial import fingerprint
from .simulation import _check_output, simulate

__all__ = ["simulate_starts", "torsion_starts", "read_origins", "origins_path", "BASIN_CENTRES"]

#: (phi, psi) in degrees of the backbone basins `torsion_starts` draws from.
BASIN_CENTRES = {"alphaR": (-63.0, -43.0), "beta": (-120.0, 130.0), "PPII": (-75.0, 145.0), "alphaL": (57.0, 47.0)}
_FORMAT = "openmm-bg multi-start 1"


def origins_path(output: str | os.PathLike) -> Path:
    """The origins file of a multi-start ``output``: ``<output>.origins.json``."""
    output = Path(output)
    return output.with_name(output.name + ".origins.json")


def _as_starts(system: MolecularSystem, starts) -> tuple[np.ndarray, list[str]]:
    """``[k, n_atoms, 3]`` start positions (nm) and a label for each."""
    if isinstance(starts, np.ndarray | mdtraj.Trajectory | str | os.PathLike):
        starts = [starts]
    positions, labels = [], []
    for item in starts:
        if isinstance(item, str | os.PathLike):
            path = Path(item)
            if not path.is_file():
                raise FileNotFoundError(f"start structure not found: {str(path)!r}")
            traj = (mdtraj.load(str(path)) if path.suffix.lower() in (".pdb", ".h5")
                    else mdtraj.load(str(path), top=system.mdtraj_topology))
            frames, label = traj.xyz.astype(np.float64), path.name
        elif isinstance(item, mdtraj.Trajectory):
            frames, label = item.xyz.astype(np.float64), "trajectory"
        else:
            frames = np.asarray(item, dtype=np.float64)
            frames, label = (frames[None] if frames.ndim == 2 else frames), "positions"
        if frames.ndim != 3 or frames.shape[1:] != (system.n_atoms, 3):
            raise ValueError(f"starts: {label} has shape {list(frames.shape)}; every start must be "
                             f"[{system.n_atoms}, 3] positions of {system.name!r} (nm)")
        if not np.isfinite(frames).all():
            raise ValueError(f"starts: {label} contains NaN or inf")
        for f, frame in enumerate(frames):
            positions.append(frame)
            labels.append(label if len(frames) == 1 else f"{label}[{f}]")
    if not positions:
        raise ValueError("starts must hold at least one structure")
    return np.stack(positions), labels


def simulate_starts(system: MolecularSystem, starts, n_frames: int, stride: int,
                    temperature: float | Sequence[float] | None = None, seed: int = 0,
                    output: str | os.PathLike | None = None, resume: bool = False, progress: bool = True,
                    **md_options) -> tuple[mdtraj.Trajectory, np.ndarray]:
    """Langevin MD from each of several starts, merged into one data set with each frame's origin.

    Parameters
    ----------
    system : MolecularSystem
        What to simulate.
    starts : array, trajectory, path or a list of them
        Start structures: arrays ``[n_atoms, 3]`` or ``[k, n_atoms, 3]`` (nm), ``mdtraj.Trajectory``
        objects or structure/trajectory files (every frame is a start); a single array or
        trajectory holds ``k`` starts.
    n_frames : int
        Frames per start (>= 1).
    stride : int
        MD steps between frames.
    temperature : float or sequence of float, optional
        K; one for all starts or one per start (e.g. some hot); default the system's.
    seed : int
        Start ``k`` runs with seed ``seed + k``.
    output : path, optional
        Trajectory file of the merged frames (`openmm_bg.md.simulation.OUTPUT_SUFFIXES`), with
        the origins in `origins_path` ``(output)``; both written atomically.
    resume : bool
        Continue a stopped run to the same ``output`` (finished starts are kept).
    progress : bool
        Progress bars.
    **md_options
        Passed to `openmm_bg.simulate` (``timestep``, ``friction``, ``equilibration_steps``,
        ``minimize``, ``platform``).

    Returns
    -------
    (mdtraj.Trajectory, numpy.ndarray)
        All frames, start after start, and the start index of every frame ``[n_total]`` int.
    """
    positions, labels = _as_starts(system, starts)
    n_frames, stride = check.positive_int("n_frames", n_frames), check.positive_int("stride", stride)
    seed = check.non_negative_int("seed", seed)
    temps = [temperature] * len(positions) if temperature is None or np.ndim(temperature) == 0 else list(temperature)
    if len(temps) != len(positions):
        raise ValueError(f"temperature: give one value or one per start ({len(positions)}), got {len(temps)}")
    temps = [system.temperature if t is None else check.temperature_kelvin("temperature", t) for t in temps]
    parts = None
    if output is not None:
        _check_output(output)
        parts = Path(output).with_name(Path(output).name + ".starts")
        if parts.exists() and not resume:
            raise ValueError(f"a stopped multi-start run of {Path(output).name} exists ({parts}); continue it with "
                             "resume=True (openmm-bg simulate ... --resume), or delete the folder to start over")
        parts.mkdir(exist_ok=True)
    entries, frames = [], []
    for k, (start, t) in enumerate(zip(positions, temps, strict=True)):
        info = {"index": k, "label": labels[k], "temperature": t, "seed": seed + k, "first_frame": k * n_frames,
                "n_frames": n_frames, "stride": stride, "start": fingerprint(start)}
        part = None if parts is None else parts / f"start_{k:03d}.h5"
        done = None if part is None else part.with_suffix(".json")
        if done is not None and done.is_file() and part.is_file() and json.loads(done.read_text()) == info:
            traj = mdtraj.load(str(part))
        else:
            traj = simulate(system, n_frames, stride, temperature=t, seed=seed + k, positions=start, output=part,
                            progress=progress, resume=resume, **md_options)
            if done is not None:
                write_text_atomic(done, json.dumps(info))
        frames.append(traj.xyz)
        entries.append(info)
    merged = mdtraj.Trajectory(np.concatenate(frames), system.mdtraj_topology,
                               time=np.arange(len(positions) * n_frames, dtype=np.float64))
    origins = np.repeat(np.arange(len(positions)), n_frames)
    if output is not None:
        output = Path(output)
        write_text_atomic(origins_path(output), json.dumps(
            {"format": _FORMAT, "system": system.name, "n_frames": int(merged.n_frames), "starts": entries}, indent=1))
        writing = output.with_name(f"{output.stem}.writing{output.suffix}")
        merged.save(str(writing))
        os.replace(writing, output)
        shutil.rmtree(parts)
    return merged, origins


def read_origins(output: str | os.PathLike) -> tuple[np.ndarray, list[dict]]:
    """The start index of every frame ``[n_frames]`` and the starts' records, from `origins_path` ``(output)``."""
    path = origins_path(output)
    if not path.is_file():
        raise FileNotFoundError(f"no origins file {str(path)!r}: {Path(output).name} was not written by "
                                "simulate_starts (openmm-bg simulate --starts / --torsion-starts)")
    record = json.loads(path.read_text())
    if record.get("format") != _FORMAT:
        raise ValueError(f"{path}: not an openmm-bg origins file")
    origins = np.full(record["n_frames"], -1, dtype=int)
    for entry in record["starts"]:
        origins[entry["first_frame"]:entry["first_frame"] + entry["n_frames"]] = entry["index"]
    return origins, record["starts"]


def _moving_side(n_atoms: int, bonds: list[tuple[int, int]], j: int, k: int) -> np.ndarray | None:
    """Atoms reached from k without crossing the bond j-k; None if the bond is in a ring."""
    adjacency: list[list[int]] = [[] for _ in range(n_atoms)]
    for a, b in bonds:
        adjacency[a].append(b)
        adjacency[b].append(a)
    seen, stack = {k}, [k]
    while stack:
        a = stack.pop()
        for b in adjacency[a]:
            if (a, b) in ((k, j),) or b in seen:
                continue
            if b == j:
                return None
            seen.add(b)
            stack.append(b)
    return np.array(sorted(seen))


def _set_dihedral(x: np.ndarray, atoms, moving: np.ndarray, target: float) -> None:
    i, j, k, l = atoms
    current = float(dihedral(x[None], i, j, k, l)[0])
    angle = target - current
    axis = (x[k] - x[j]) / np.linalg.norm(x[k] - x[j])
    v = x[moving] - x[j]
    cos, sin = math.cos(angle), math.sin(angle)
    x[moving] = x[j] + v * cos + np.cross(axis, v) * sin + np.outer(v @ axis, axis) * (1 - cos)


def torsion_starts(system: MolecularSystem, n: int, seed: int = 0,
                   basins: Sequence[str] = ("alphaR", "beta", "alphaL"), minimize: bool = True,
                   platform: str = "Reference") -> np.ndarray:
    """``n`` start structures of a peptide with every residue's (phi, psi) set to a random basin's centre.

    Each residue gets a basin drawn uniformly from ``basins`` (keys of `BASIN_CENTRES`), with 10 deg
    of noise; proline's phi (in its ring) is kept. The structure is then minimised (``minimize``)
    to remove clashes; draws whose minimised energy is not finite or whose chirality changed are
    drawn again (up to 20 times each).

    Returns
    -------
    numpy.ndarray
        ``[n, n_atoms, 3]`` positions, nm.
    """
    n, seed = check.positive_int("n", n), check.non_negative_int("seed", seed)
    unknown = [b for b in basins if b not in BASIN_CENTRES]
    if unknown or not basins:
        raise ValueError(f"basins must be names from {sorted(BASIN_CENTRES)}, got {list(basins)!r}")
    rcs = backbone_coordinates(system.topology)
    if not rcs:
        raise ValueError(f"system {system.name!r} has no backbone phi/psi (not a peptide); give the starts instead")
    bonds = [(a.index, b.index) for a, b in system.topology.bonds()]
    residues = list(dict.fromkeys(name.split("_", 1)[1] for name in rcs))
    sides = {name: _moving_side(system.n_atoms, bonds, rc.atoms[1], rc.atoms[2]) for name, rc in rcs.items()}
    centres = l_amino_acid_centres(system.topology)
    rng = np.random.default_rng(seed)
    context = openmm.Context(system.system, openmm.VerletIntegrator(0.001), openmm.Platform.getPlatformByName(platform))
    out = []
    for _ in range(n):
        for _attempt in range(20):
            x = system.positions.copy()
            for label in residues:
                basin = BASIN_CENTRES[basins[rng.integers(len(basins))]]
                for kind, centre in zip(("phi", "psi"), basin, strict=True):
                    name = f"{kind}_{label}"
                    if name not in rcs or sides[name] is None:
                        continue
                    target = centre + rng.normal(scale=10.0)
                    _set_dihedral(x, rcs[name].atoms, sides[name], math.radians((target + 180.0) % 360.0 - 180.0))
            if minimize:
                context.setPositions(x)
                openmm.LocalEnergyMinimizer.minimize(context, 10.0, 0)
                state = context.getState(getPositions=True, getEnergy=True)
                x = state.getPositions(asNumpy=True).value_in_unit(unit.nanometer)
                if not math.isfinite(state.getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole)):
                    continue
            if not centres.inverted(np.asarray(x)[None]).any():
                out.append(np.asarray(x, dtype=np.float64))
                break
        else:
            raise RuntimeError(f"torsion_starts: no valid start for {system.name!r} in 20 draws; give the starts")
    return np.stack(out)
