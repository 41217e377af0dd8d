"""Langevin MD with OpenMM as training data (checks of user trajectories: `openmm_bg.systems.trajectory`).

Examples
--------
>>> import openmm_bg
>>> from openmm_bg.systems import load
>>> traj = openmm_bg.simulate(load("double_well"), n_frames=10, stride=20, seed=1, progress=False)
>>> traj.xyz.shape
(10, 1, 3)
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

import mdtraj
import numpy as np
import openmm
import openmm.unit as unit

from .. import _validation as check
from ..systems import MolecularSystem
from ..systems.hydrogen_mass import HMR_4FS_MASS, lightest_hydrogen_mass
from .partial import PartialRun, fingerprint

if TYPE_CHECKING:
    import torch

__all__ = ["simulate", "default_timestep", "OUTPUT_SUFFIXES"]

#: Trajectory formats `simulate` writes, by suffix of ``output``.
OUTPUT_SUFFIXES = (".h5", ".dcd", ".xtc", ".pdb", ".nc", ".trr")


def _start_positions(system: MolecularSystem, positions) -> np.ndarray:
    """``positions`` (or the system's) as float64 ``[n_atoms, 3]`` nm, checked finite and of the right shape."""
    start = system.positions if positions is None else np.asarray(positions, dtype=np.float64)
    if start.shape != system.positions.shape or not np.all(np.isfinite(start)):
        raise ValueError(f"positions must be finite with shape {system.positions.shape} (nm), got "
                         f"shape {start.shape}" + ("" if start.shape != system.positions.shape
                                                   else " with NaN or inf"))
    return start


def default_timestep(system: MolecularSystem) -> float:
    """A safe Langevin time step in ps: 1 fs for molecules, 2 fs with H-bond constraints, 4 fs with
    H-bond constraints and hydrogen mass repartitioning (every hydrogen at least 1.5 Da:
    ``load(..., constraints="hbonds", hydrogen_mass=1.5)``), 5 fs for the 2D toy systems (unit
    masses, potentials in kT over nm).

    Examples
    --------
    >>> from openmm_bg.systems import load
    >>> [default_timestep(load("alanine_dipeptide", constraints=c, hydrogen_mass=h))
    ...  for c, h in ((None, None), ("hbonds", None), ("hbonds", 1.5))]
    [0.001, 0.002, 0.004]
    """
    if not system.rotation_invariant and system.free_dims is not None:
        return 0.005
    if system.system.getNumConstraints() == 0:
        if system.hydrogen_mass is not None:
            warnings.warn(f"{system.name}: hydrogen mass repartitioning without constraints buys little (the bonds "
                          "to hydrogen still set the time step, 1 fs); load it with constraints='hbonds' "
                          "(--option constraints=hbonds) for 4 fs steps", UserWarning, stacklevel=2)
        return 0.001
    lightest = lightest_hydrogen_mass(system.system, system.topology)
    return 0.004 if lightest is not None and lightest >= HMR_4FS_MASS - 1e-9 else 0.002


def _openmm_seed(seed: int) -> int:
    """OpenMM treats seed 0 as 'pick one at random': map every seed to a positive int."""
    return int(seed) % 2_000_000_000 + 1


def _progress(total: int, enabled: bool, description: str):
    from tqdm.auto import tqdm

    return tqdm(total=total, disable=not enabled, desc=description, unit="frame", leave=False)


def simulate(system: MolecularSystem, n_frames: int, stride: int, temperature: float | None = None,
             seed: int = 0, timestep: float | None = None, friction: float = 1.0,
             positions: np.ndarray | None = None, equilibration_steps: int = 0, minimize: bool = False,
             platform: str | None = None, output: str | os.PathLike | None = None,
             progress: bool = True, resume: bool = False,
             device: str | torch.device | None = None) -> mdtraj.Trajectory:
    """Run Langevin MD (OpenMM ``LangevinMiddleIntegrator``) and return the frames.

    Parameters
    ----------
    system : MolecularSystem
        What to simulate; periodic systems are refused.
    n_frames : int
        Number of frames to return (>= 1).
    stride : int
        MD steps between frames (>= 1).
    temperature : float, optional
        K, positive and finite; ``None`` (default) is the system's temperature.
    seed : int
        Non-negative; seeds the initial velocities and the integrator's noise: same seed and platform, same
        trajectory (Reference and single-threaded CPU are deterministic).
    timestep : float, optional
        ps, positive; default `default_timestep`.
    friction : float
        Collision rate in 1/ps, >= 0 (0 runs without coupling to the bath: constant energy).
    positions : numpy.ndarray, optional
        Start ``[n_atoms, 3]`` in nm; default the reference positions.
    equilibration_steps : int
        Steps (>= 0) run and discarded before the first frame.
    minimize : bool
        Minimise the energy before starting.
    platform : str, optional
        OpenMM platform name; default the fastest by timing (see ``openmm_bg.energy``), keeping the
        deterministic Reference platform unless another one is at least 1.5x faster. Name the
        platform to make runs reproducible across machines.
    output : path, optional
        Also write the frames to this file (format by suffix: one of `OUTPUT_SUFFIXES`); its
        folder must exist. While the run goes, every frame is on disk as it is made in
        ``<output>.partial.dcd``, with a checkpoint in ``<output>.partial.chk``
        (`openmm_bg.md.partial`): a killed run loses nothing and can be continued.
    progress : bool
        Show a progress bar.
    resume : bool
        Continue a run to the same ``output`` that was stopped (killed, interrupted, crashed):
        the frames its checkpoint covers are kept and MD goes on from the checkpoint, on the
        same platform, so the result is the uninterrupted run's. The settings must be those it
        started with (``n_frames`` may grow). Without a stopped run, start from the beginning.
    device : str or torch.device, optional
        ``"cuda"`` / ``"cuda:N"`` run on OpenMM's ``CUDA`` platform on that GPU (mixed precision);
        ``None``, ``"cpu"`` or ``"auto"`` without a usable GPU keep the platform choice above
        (`openmm_bg.energy.devices.resolve_device`). A GPU device with another ``platform`` is refused.

    Returns
    -------
    mdtraj.Trajectory
        ``n_frames`` frames in nm with the system's topology; ``time`` in ps.

    Raises
    ------
    ValueError
        Before any MD, for an argument out of its range (the message names it), a periodic
        system, an unknown platform or an output with an unknown suffix; when a stopped run
        of the same ``output`` exists and ``resume`` is False (nothing is overwritten), or
        ``resume`` is True with other settings than the stopped run's.
    """
    system.require_nonperiodic("openmm_bg.simulate")
    n_frames = check.positive_int("n_frames", n_frames)
    stride = check.positive_int("stride", stride)
    temperature = (system.temperature if temperature is None
                   else check.temperature_kelvin("temperature", temperature))
    dt = default_timestep(system) if timestep is None else check.positive("timestep", timestep, "ps")
    friction = check.non_negative("friction", friction, "1/ps")
    seed = check.non_negative_int("seed", seed)
    equilibration_steps = check.non_negative_int("equilibration_steps", equilibration_steps)
    start = _start_positions(system, positions)
    platform, properties = _platform_of_device(device, platform)
    if platform is not None:
        _check_platform(platform)
    partial = None
    if output is not None:
        _check_output(output)
        partial = PartialRun(output)
    settings = {"system": system.name, "n_atoms": system.n_atoms, "potential": fingerprint(
                    openmm.XmlSerializer.serialize(system.system)), "start": fingerprint(start),
                "temperature": temperature, "timestep": dt, "friction": friction, "stride": stride, "seed": seed,
                "equilibration_steps": equilibration_steps, "minimize": bool(minimize)}
    record = _resume_record(partial, resume, settings, platform, n_frames) if partial is not None else None
    if record is not None:
        platform, properties = record["settings"]["platform"], record["settings"]["properties"]
    elif platform is None:
        platform, properties = _default_platform(system, start)
    settings.update(platform=platform, properties=properties)
    integrator = openmm.LangevinMiddleIntegrator(temperature * unit.kelvin, friction / unit.picosecond,
                                                 dt * unit.picoseconds)
    integrator.setRandomNumberSeed(_openmm_seed(seed))
    context = openmm.Context(system.system, integrator, openmm.Platform.getPlatformByName(platform),
                             properties)
    xyz = np.empty((n_frames, system.n_atoms, 3), dtype=np.float32)
    done = 0
    if record is not None:
        done = record["frames"]
        xyz[:done] = partial.kept_frames(done, system.n_atoms)
        context.loadCheckpoint(record["state"])
    else:
        context.setPositions(start)
        if minimize:
            openmm.LocalEnergyMinimizer.minimize(context)
        context.setVelocitiesToTemperature(temperature * unit.kelvin, _openmm_seed(seed + 7919))
        if equilibration_steps > 0:
            integrator.step(int(equilibration_steps))
    if partial is not None:
        partial.start(xyz[:done])
        if record is None:
            partial.save_checkpoint(context.createCheckpoint(), 0, settings)
    try:
        with _progress(n_frames, progress, f"MD {system.name}") as bar:
            bar.update(done)
            for k in range(done, n_frames):
                integrator.step(int(stride))
                state = context.getState(getPositions=True)
                frame = state.getPositions(asNumpy=True).value_in_unit(unit.nanometer)
                if not np.all(np.isfinite(frame)):
                    raise RuntimeError(f"MD blew up at frame {k} (non-finite positions); lower the time step "
                                       f"(now {dt} ps) or minimise first (minimize=True)")
                xyz[k] = frame
                if partial is not None:
                    partial.write(frame)
                    if partial.checkpoint_due() and k + 1 < n_frames:
                        partial.save_checkpoint(context.createCheckpoint(), k + 1, settings)
                bar.update()
    except BaseException as err:
        if partial is not None:
            partial.close()
            err.add_note(f"{partial.describe()}; continue with resume=True (openmm-bg simulate ... --resume)")
        raise
    times = dt * stride * (np.arange(1, n_frames + 1)) + dt * equilibration_steps
    traj = mdtraj.Trajectory(xyz, system.mdtraj_topology, time=times)
    if partial is not None:
        partial.finish(traj)
    del context, integrator
    return traj


def _resume_record(partial: PartialRun, resume: bool, settings: dict, platform: str | None,
                   n_frames: int) -> dict | None:
    """The checkpoint to continue from, or None to start afresh; refuses to overwrite a stopped run."""
    if not partial.exists():
        return None
    if not resume:
        raise ValueError(f"{partial.describe()}; continue it with resume=True (openmm-bg simulate ... --resume) "
                         f"and the same settings, or delete {partial.frames_path.name} and "
                         f"{partial.checkpoint_path.name} to start over")
    record = partial.load()
    theirs = record["settings"]
    changed = [f"{key} {theirs.get(key)!r} -> {value!r}" for key, value in settings.items()
               if theirs.get(key) != value]
    if platform is not None and platform != theirs["platform"]:
        changed.append(f"platform {theirs['platform']!r} -> {platform!r}")
    if changed:
        raise ValueError(f"cannot continue the stopped run of {partial.output.name} with other settings "
                         f"({'; '.join(changed)}); use the settings it started with, or delete "
                         f"{partial.frames_path.name} and {partial.checkpoint_path.name} to start over")
    if record["frames"] > n_frames:
        raise ValueError(f"n_frames must be at least the {record['frames']} frames the stopped run of "
                         f"{partial.output.name} made already, got {n_frames}")
    return record


def _platform_of_device(device: str | torch.device | None, platform: str | None) -> tuple[str | None, dict]:
    """``(platform, properties)`` of `simulate`'s ``device`` and ``platform`` (checked, before any MD)."""
    if device is None:
        return platform, {}
    from ..energy.devices import openmm_platform_for, resolve_device
    from ..energy.platforms import default_properties

    on_device = openmm_platform_for(resolve_device(device))
    if on_device is None:
        return platform, {}
    name, props = on_device
    if platform is not None and platform != name:
        raise ValueError(f"device={str(device)!r} runs on OpenMM's {name} platform, but platform={platform!r} was "
                         f"given; drop one of them")
    return name, {**default_properties(name), **props}


def _check_platform(name) -> None:
    names = [openmm.Platform.getPlatform(i).getName() for i in range(openmm.Platform.getNumPlatforms())]
    if name not in names:
        raise ValueError(f"platform must be one of the OpenMM platforms on this machine {names} or None "
                         f"(the fastest), got {name!r}")


def _check_output(output) -> None:
    path = Path(output)
    if path.suffix.lower() not in OUTPUT_SUFFIXES:
        raise ValueError(f"output {str(path)!r}: the suffix sets the format; use one of "
                         f"{', '.join(OUTPUT_SUFFIXES)}")
    if not path.parent.is_dir():
        raise ValueError(f"output folder {str(path.parent)!r} does not exist; create it first")


def _default_platform(system: MolecularSystem, positions: np.ndarray) -> tuple[str, dict]:
    """The fastest platform by timing, but Reference unless another is clearly (1.5x) faster.

    Timings on a loaded machine fluctuate; preferring the deterministic Reference platform near a tie
    keeps the choice, and so the trajectory for a given seed, stable between runs.
    """
    from ..energy.platforms import select_platform

    choice = select_platform(system.system, positions)
    reference = choice.timings.get("Reference")
    if choice.name != "Reference" and reference is not None and reference <= 1.5 * choice.timings[choice.name]:
        return "Reference", {}
    return choice.name, choice.properties
