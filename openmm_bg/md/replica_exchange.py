"""Parallel tempering (temperature replica exchange) with openmmtools as training data.

`replica_exchange` runs ``n`` replicas of a system at geometrically spaced temperatures from
the target temperature up (openmmtools ``ParallelTemperingSampler``, one
``LangevinDynamicsMove`` of ``stride`` steps per iteration, then exchanges between all states),
and returns the frames of the lowest (target) temperature, one per iteration, as a trajectory
`openmm_bg.simulate` would give: the trainer takes it as it is. Hot replicas cross barriers
that MD at the target temperature does not, so a protein's data need hours, not days. (Cite
openmmtools and Chodera & Shirts, J. Chem. Phys. 135, 194110 (2011) for the sampler.)

Everything the sampler does is stored as it goes (openmmtools ``MultiStateReporter``, every
iteration) in ``<output>.replicas.nc`` with its checkpoint file and the run's settings in
``<output>.replicas.json``. A run asked again with the same settings reads its frames from that
store (a cache: no MD); a run that was stopped (killed, interrupted) continues from its last
iteration with ``resume=True``, and a longer run (more frames) extends a finished one.

Examples
--------
>>> import os, tempfile
>>> from openmm_bg.systems import load
>>> out = os.path.join(tempfile.mkdtemp(), "pt.h5")
>>> run = replica_exchange(load("alanine_dipeptide"), n_frames=3, stride=5, temperatures="300:600:3",
...                        output=out, platform="Reference", progress=False)
>>> run.trajectory.xyz.shape, [round(t) for t in run.temperatures]
((3, 22, 3), [300, 424, 600])
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path

import mdtraj
import numpy as np
import openmm
import openmm.unit as unit

from .. import _validation as check
from .._quiet_imports import openmmtools_module
from ..systems import MolecularSystem
from .partial import fingerprint
from .simulation import (
    _check_output,
    _check_platform,
    _default_platform,
    _progress,
    _start_positions,
    default_timestep,
    simulate,
)

__all__ = ["replica_exchange", "ReplicaExchangeRun", "parse_temperature_ladder", "replica_store_paths"]

_FORMAT = "openmm-bg replica exchange 1"
_LADDER = re.compile(r"^\s*([^:]+):([^:]+):([^:]+)\s*$")


def parse_temperature_ladder(spec) -> tuple[float, float, int]:
    """``"300:450:6"`` (or a 3-tuple) as ``(lowest K, highest K, number of temperatures)``, checked.

    Raises
    ------
    ValueError
        Naming what is wrong: not three fields, a temperature that is not positive and finite,
        highest not above lowest, fewer than 2 temperatures.

    Examples
    --------
    >>> parse_temperature_ladder("300:450:6")
    (300.0, 450.0, 6)
    """
    if isinstance(spec, str):
        match = _LADDER.match(spec)
        if match is None:
            raise ValueError(f"temperatures must be LOWEST:HIGHEST:N in K, e.g. 300:450:6, got {spec!r}")
        fields = match.groups()
    else:
        fields = tuple(spec)
        if len(fields) != 3:
            raise ValueError(f"temperatures must be (lowest K, highest K, number), got {spec!r}")
    low = check.temperature_kelvin("lowest temperature", _number(fields[0]))
    high = check.temperature_kelvin("highest temperature", _number(fields[1]))
    n = check.integer("number of temperatures", _number(fields[2]), low=2)
    if not high > low:
        raise ValueError(f"the highest temperature must be above the lowest, got {low:g} K to {high:g} K")
    return low, high, n


def _number(text):
    if isinstance(text, str):
        try:
            return float(text) if any(c in text for c in ".eE") else int(text)
        except ValueError:
            return text.strip()  # the checks name it
    return text


def replica_store_paths(output: str | os.PathLike) -> tuple[Path, Path, Path]:
    """The store of a run to ``output``: (openmmtools storage ``.nc``, its checkpoint ``.nc``, settings ``.json``)."""
    output = Path(output)
    storage = output.with_name(output.name + ".replicas.nc")
    return storage, storage.with_name(storage.stem + "_checkpoint.nc"), output.with_name(output.name + ".replicas.json")


@dataclass(frozen=True)
class ReplicaExchangeRun:
    """What `replica_exchange` gives.

    Attributes
    ----------
    trajectory : mdtraj.Trajectory
        One frame per iteration at the lowest temperature (nm; ``time`` in ps).
    temperatures : tuple of float
        K, lowest first (geometric ladder).
    acceptance : numpy.ndarray
        ``[n_temperatures - 1]``: fraction of accepted exchanges between neighbouring temperatures.
    storage : pathlib.Path
        The openmmtools store (``<output>.replicas.nc``).
    reused : bool
        The frames came from the store of an earlier run with the same settings (no MD).
    """

    trajectory: mdtraj.Trajectory
    temperatures: tuple
    acceptance: np.ndarray
    storage: Path
    reused: bool

    def frames_at(self, state: int, topology: mdtraj.Topology | None = None) -> mdtraj.Trajectory:
        """The frames at temperature ``temperatures[state]`` (0 = lowest), one per iteration."""
        state = check.integer("state", state, low=0)
        if state >= len(self.temperatures):
            raise ValueError(f"state must be below the number of temperatures {len(self.temperatures)}, got {state}")
        return _read_frames(self.storage, state, topology or self.trajectory.topology,
                            float(self.trajectory.timestep) if self.trajectory.n_frames > 1 else 0.0,
                            len(self.trajectory))


def replica_exchange(system: MolecularSystem, n_frames: int, stride: int, temperatures,
                     output: str | os.PathLike, seed: int = 0, timestep: float | None = None,
                     friction: float = 1.0, positions: np.ndarray | None = None,
                     equilibration_steps: int = 0, minimize: bool = False, platform: str | None = None,
                     progress: bool = True, resume: bool = False) -> ReplicaExchangeRun:
    """Parallel tempering MD (openmmtools); the lowest temperature's frames as training data.

    Parameters
    ----------
    system : MolecularSystem
        Non-periodic.
    n_frames : int
        Iterations (>= 1): one frame per iteration at each temperature.
    stride : int
        MD steps (``LangevinDynamicsMove``, velocities redrawn at each iteration's start, as
        exchanges change the temperature) between exchange attempts and frames (>= 1).
    temperatures : str or (float, float, int)
        ``"LOWEST:HIGHEST:N"`` in K (see `parse_temperature_ladder`): ``N`` temperatures spaced
        geometrically. The lowest must be the system's temperature: its frames are the data.
    output : path
        Trajectory file of the lowest-temperature frames (format by suffix, as `simulate`); its
        folder must exist. The run's store is kept beside it (`replica_store_paths`).
    seed : int
        Non-negative; seeds the equilibration MD. openmmtools draws the Langevin noise and the
        exchanges itself, so replica exchange runs are not bit-reproducible.
    timestep : float, optional
        ps; default `default_timestep` (2 fs with H-bond constraints).
    friction : float
        1/ps, > 0.
    positions : numpy.ndarray, optional
        Start of every replica ``[n_atoms, 3]`` in nm; default the system's positions.
    equilibration_steps : int
        MD steps at the lowest temperature (`simulate`) before the replicas start (>= 0).
    minimize : bool
        Minimise the energy first.
    platform : str, optional
        OpenMM platform; default as `simulate` (the fastest by timing, Reference near a tie).
    progress : bool
        Show a progress bar (iterations).
    resume : bool
        Continue a stopped run of the same ``output`` from its last stored iteration (the
        settings must be those it started with; ``n_frames`` may grow). A finished run with the
        same settings is read back without ``resume``; one with fewer frames is extended.

    Returns
    -------
    ReplicaExchangeRun

    Raises
    ------
    ValueError
        Before any MD: an argument out of range (named), a lowest temperature other than the
        system's, a periodic system, an unknown platform or output suffix, a store of this
        ``output`` with other settings, or a stopped run and ``resume`` False.
    """
    system.require_nonperiodic("openmm_bg.md.replica_exchange")
    _require_no_kT_parameter(system)
    n_frames = check.positive_int("n_frames", n_frames)
    stride = check.positive_int("stride", stride)
    low, high, n_states = parse_temperature_ladder(temperatures)
    if abs(low - system.temperature) > 1e-9 * system.temperature:
        raise ValueError(f"the lowest temperature is the one the frames are for and must be the system's "
                         f"{system.temperature:g} K, got {low:g} K (load the system at {low:g} K, or start "
                         f"the ladder at {system.temperature:g})")
    dt = default_timestep(system) if timestep is None else check.positive("timestep", timestep, "ps")
    friction = check.positive("friction", friction, "1/ps")
    seed = check.non_negative_int("seed", seed)
    equilibration_steps = check.non_negative_int("equilibration_steps", equilibration_steps)
    start = _start_positions(system, positions)
    if platform is not None:
        _check_platform(platform)
    _check_output(output)
    storage, checkpoint, settings_path = replica_store_paths(output)
    settings = {"format": _FORMAT, "system": system.name, "n_atoms": system.n_atoms,
                "potential": fingerprint(openmm.XmlSerializer.serialize(system.system)),
                "start": fingerprint(start), "temperatures": [low, high, n_states], "stride": stride,
                "timestep": dt, "friction": friction, "seed": seed,
                "equilibration_steps": equilibration_steps, "minimize": bool(minimize)}
    done, platform = _stored_run(storage, checkpoint, settings_path, settings, platform, n_frames, resume)
    tools = openmmtools_module()
    if platform is None:
        platform = _default_platform(system, start)[0]
    settings["platform"] = platform
    reused = done >= n_frames
    if not reused:
        if done == 0:
            for path in (storage, checkpoint):
                path.unlink(missing_ok=True)
            if minimize or equilibration_steps > 0:
                start = simulate(system, n_frames=1, stride=max(equilibration_steps, 1), seed=seed, timestep=dt,
                                 friction=friction, positions=start, minimize=minimize, platform=platform,
                                 progress=False).xyz[0].astype(np.float64)
        settings_path.write_text(json.dumps({**settings, "n_frames_asked": n_frames}, indent=1))
        reporter = _reporter(tools, storage, None if done == 0 else "a")  # a new store: create() opens it
        try:
            with contextlib.redirect_stdout(io.StringIO()):  # openmmtools prints its citations here
                if done == 0:
                    sampler = _new_sampler(tools, system, start, stride, dt, friction, (low, high, n_states),
                                           reporter, n_frames)
                else:
                    sampler = tools.multistate.ParallelTemperingSampler.from_storage(reporter)
            _set_platform(tools, sampler, platform)
            with _progress(n_frames, progress, f"replica exchange {system.name} ({n_states} temperatures)") as bar:
                bar.unit = "iteration"
                bar.update(done)
                for _ in range(done, n_frames):
                    sampler.extend(1)
                    bar.update()
        except BaseException as err:
            err.add_note(f"the replica exchange run to {output} is stored in {storage.name} up to its last complete "
                         "iteration; continue with resume=True (openmm-bg simulate ... --replica-exchange ... "
                         "--resume)")
            raise
        finally:
            reporter.close()
    ladder = tuple(float(t) for t in np.geomspace(low, high, n_states))
    traj = _read_frames(storage, 0, system.mdtraj_topology, dt * stride, n_frames)
    traj.save(str(output))
    return ReplicaExchangeRun(traj, ladder, _acceptance(tools, storage, n_frames), storage, reused)


def _require_no_kT_parameter(system: MolecularSystem) -> None:
    for force in system.system.getForces():
        names = [force.getGlobalParameterName(k) for k in range(force.getNumGlobalParameters())] \
            if hasattr(force, "getNumGlobalParameters") else []
        if "kT" in names:
            raise ValueError(f"{system.name}: its {type(force).__name__} has a global parameter 'kT' (as the 2D toy "
                             "systems do), which clashes with the kT of openmmtools' integrators; run "
                             "openmm_bg.simulate at each temperature instead")


def _reporter(tools, storage: Path, mode: str):
    return tools.multistate.MultiStateReporter(str(storage), open_mode=mode, checkpoint_interval=1)


def _new_sampler(tools, system, start, stride, dt, friction, ladder, reporter, n_frames):
    low, high, n_states = ladder
    move = tools.mcmc.LangevinDynamicsMove(timestep=dt * unit.picoseconds, collision_rate=friction / unit.picosecond,
                                           n_steps=stride, reassign_velocities=True)
    sampler = tools.multistate.ParallelTemperingSampler(mcmc_moves=move, number_of_iterations=n_frames)
    state = tools.states.ThermodynamicState(system.system, temperature=low * unit.kelvin)
    sampler.create(state, tools.states.SamplerState(start * unit.nanometer), reporter,
                   min_temperature=low * unit.kelvin, max_temperature=high * unit.kelvin, n_temperatures=n_states)
    return sampler


def _set_platform(tools, sampler, platform: str) -> None:
    chosen = openmm.Platform.getPlatformByName(platform)
    sampler.energy_context_cache = tools.cache.ContextCache(capacity=None, time_to_live=None, platform=chosen)
    sampler.sampler_context_cache = tools.cache.ContextCache(capacity=None, time_to_live=None, platform=chosen)


def _stored_iterations(storage: Path) -> int:
    """Iterations of a store that are complete (positions in the checkpoint file), 0 without a store."""
    if not storage.exists():
        return 0
    tools = openmmtools_module()
    reporter = _reporter(tools, storage, "r")
    try:
        return int(reporter.read_last_iteration(last_checkpoint=True))
    finally:
        reporter.close()


def _stored_run(storage, checkpoint, settings_path, settings, platform, n_frames, resume):
    """(iterations stored, platform to use): 0 for a new run; refuses another run's store or a silent resume."""
    if not settings_path.exists():
        return 0, platform
    delete = f"delete {storage.name}, {checkpoint.name} and {settings_path.name} to start over"
    try:
        theirs = json.loads(settings_path.read_text())
    except (OSError, ValueError) as err:
        raise ValueError(f"{settings_path.name} cannot be read ({err}); {delete}") from None
    changed = [f"{key} {theirs.get(key)!r} -> {value!r}" for key, value in settings.items()
               if theirs.get(key) != value]
    if platform is not None and platform != theirs.get("platform"):
        changed.append(f"platform {theirs.get('platform')!r} -> {platform!r}")
    if changed:
        raise ValueError(f"{storage.name} holds a replica exchange run with other settings ({'; '.join(changed)}); "
                         f"use the settings it started with, or {delete}")
    done = _stored_iterations(storage)
    if done == 0:
        return 0, theirs.get("platform")
    finished = theirs.get("n_frames_asked", math.inf) <= done
    if done < n_frames and not finished and not resume:
        raise ValueError(f"{storage.name} holds a stopped replica exchange run ({done} iterations); continue it with "
                         f"resume=True (openmm-bg simulate ... --resume) and the same settings, or {delete}")
    return done, theirs.get("platform")


def _read_frames(storage: Path, state: int, topology, frame_time: float, n_frames: int) -> mdtraj.Trajectory:
    """The frames of thermodynamic state ``state`` for iterations 1..n_frames (the replica there each time)."""
    tools = openmmtools_module()
    reporter = _reporter(tools, storage, "r")
    try:
        where = np.asarray(reporter.read_replica_thermodynamic_states())  # [iteration, replica] -> state
        if where.shape[0] <= n_frames:
            raise ValueError(f"{storage.name} holds {where.shape[0] - 1} iterations, fewer than the {n_frames} asked")
        xyz = np.empty((n_frames, topology.n_atoms, 3), dtype=np.float32)
        for k in range(n_frames):
            replica = int(np.flatnonzero(where[k + 1] == state)[0])
            xyz[k] = reporter.read_sampler_states(k + 1)[replica].positions.value_in_unit(unit.nanometer)
    finally:
        reporter.close()
    return mdtraj.Trajectory(xyz, topology, time=frame_time * np.arange(1, n_frames + 1))


def _acceptance(tools, storage: Path, n_frames: int) -> np.ndarray:
    reporter = _reporter(tools, storage, "r")
    try:
        accepted, proposed = reporter.read_mixing_statistics(slice(1, n_frames + 1))
    finally:
        reporter.close()
    accepted, proposed = np.asarray(accepted).sum(axis=0), np.asarray(proposed).sum(axis=0)
    n = accepted.shape[0]
    pairs = np.array([accepted[i, i + 1] + accepted[i + 1, i] for i in range(n - 1)], dtype=np.float64)
    tries = np.array([proposed[i, i + 1] + proposed[i + 1, i] for i in range(n - 1)], dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(tries > 0, pairs / np.maximum(tries, 1), math.nan)
