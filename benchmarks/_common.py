"""What several benchmark scripts share: paths, the alanine reference, timing, plain MD along phi,
basin-core transitions and the Arrhenius extrapolation.

The scripts are run as ``python benchmarks/<name>.py``, which puts this folder on ``sys.path``.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from openmm_bg.systems import MolecularSystem

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
CACHE = HERE / "cache"
#: Written by ``benchmarks/reference/alanine_reference.py``: ``{solvent: {"delta_a_kT", "error_kT", ...}}``.
REFERENCE = HERE / "reference" / "alanine_reference.json"

#: Basin cores in phi (rad) for counting transitions: C7ax ``0.5 < phi < 1.8``; C7eq ``phi < -0.5`` or
#: ``phi > 2.6``. Narrower than the states, so recrossings of a dividing line do not count.
C7AX_CORE = (0.5, 1.8)
C7EQ_CORE = (-0.5, 2.6)


# ----------------------------------------------------------------------------------------- reference
def alanine_reference(solvent: str = "vacuum", path: str | Path = REFERENCE) -> dict | None:
    """The reference entry for ``solvent`` (``delta_a_kT``, ``error_kT``, runs), or None if absent."""
    path = Path(path)
    if not path.is_file():
        return None
    entry = json.loads(path.read_text()).get(solvent)
    return entry if entry and "delta_a_kT" in entry else None


# ----------------------------------------------------------------------------------------- timing
def best_time(fn: Callable[[], object], repeats: int) -> float:
    """Smallest wall time (s) of ``repeats`` calls (other processes only ever slow a run down)."""
    best = math.inf
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def plain_loop(context, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The fastest straightforward OpenMM loop: ``setPositions`` + ``getState(energy, forces)`` per
    configuration of ``x`` ``[batch, n_atoms, 3]`` (nm); raw energies (kJ/mol) and forces out."""
    energy = np.empty(len(x))
    forces = np.empty_like(x)
    for b, xb in enumerate(x):
        context.setPositions(xb)
        state = context.getState(getEnergy=True, getForces=True)
        energy[b] = state.getPotentialEnergy()._value
        forces[b] = state.getForces(asNumpy=True)._value
    return energy, forces


# ----------------------------------------------------------------------------------------- MD
def fastest_platform(system: MolecularSystem) -> tuple[str, dict]:
    """Name and properties of the OpenMM platform `select_platform` picks for ``system``."""
    from openmm_bg.energy.platforms import select_platform

    choice = select_platform(system.system, system.positions)
    return choice.name, dict(choice.properties)


def langevin_phi(system: MolecularSystem, wall_seconds: float, temperature: float = 300.0, seed: int = 0,
                 start: np.ndarray | None = None, report_steps: int = 100) -> dict:
    """Plain Langevin MD (1 fs, 1/ps) for ``wall_seconds``, phi read every ``report_steps`` steps.

    Returns ``{"platform", "wall_s", "cpu_s", "steps", "phi"}`` (``phi`` a float64 array, rad).
    """
    import openmm
    import openmm.unit as unit

    name, props = fastest_platform(system)
    integrator = openmm.LangevinMiddleIntegrator(temperature * unit.kelvin, 1.0 / unit.picosecond,
                                                 1.0 * unit.femtosecond)
    integrator.setRandomNumberSeed(seed + 1)
    context = openmm.Context(system.system, integrator, openmm.Platform.getPlatformByName(name), props)
    context.setPositions(system.positions if start is None else start)
    context.setVelocitiesToTemperature(temperature * unit.kelvin, seed + 2)
    phi_rc = system.reaction_coordinates["phi"]
    phis, steps = [], 0
    t0, c0 = time.perf_counter(), time.process_time()
    while time.perf_counter() - t0 < wall_seconds:
        integrator.step(report_steps)
        steps += report_steps
        x = context.getState(getPositions=True).getPositions(asNumpy=True).value_in_unit(unit.nanometer)
        phis.append(float(phi_rc(np.asarray(x)[None])[0]))
    return {"platform": name, "wall_s": time.perf_counter() - t0, "cpu_s": time.process_time() - c0,
            "steps": steps, "phi": np.asarray(phis, dtype=np.float64)}


def hot_c7ax_start(system: MolecularSystem, seed: int, n_frames: int, stride: int,
                   temperature: float = 800.0) -> np.ndarray:
    """A configuration with ``0.7 < phi < 1.6`` (inside the C7ax core) from a short hot MD run
    (chirality kept by MD), ``[n_atoms, 3]`` nm."""
    import openmm_bg

    hot = openmm_bg.simulate(system, n_frames=n_frames, stride=stride, temperature=temperature, seed=seed,
                             progress=False)
    phi = system.reaction_coordinates["phi"](hot)
    inside = np.flatnonzero((phi > 0.7) & (phi < 1.6))
    if inside.size == 0:
        raise RuntimeError(f"the {temperature:g} K run did not visit C7ax; use another --seed")
    return hot.xyz[inside[0]].astype(np.float64)


def multistart_md(system: MolecularSystem, path: Path, starts: int, n_frames: int, stride: int, seed: int,
                  equilibration_steps: int):
    """Training MD from ``starts`` `openmm_bg.md.torsion_starts` structures, cached at ``path``.

    ``n_frames // starts`` frames per start, ``stride`` steps apart; a stopped run resumes (its
    finished starts are kept beside ``path`` until the merged file is written). Returns the merged
    ``mdtraj.Trajectory`` and each frame's start index ``[n_frames]``.
    """
    import mdtraj

    from openmm_bg.md import read_origins, simulate_starts, torsion_starts

    if path.exists():
        return mdtraj.load(str(path)), read_origins(path)[0]
    path.parent.mkdir(parents=True, exist_ok=True)
    structures = torsion_starts(system, starts, seed=seed)
    return simulate_starts(system, structures, n_frames=max(1, n_frames // starts), stride=stride, seed=seed,
                           output=path, resume=True, equilibration_steps=equilibration_steps)


# ----------------------------------------------------------------------------------------- transitions
def core_labels(phi: np.ndarray) -> np.ndarray:
    """+1 in the C7ax core, -1 in the C7eq core, 0 in between."""
    phi = np.asarray(phi)
    ax = (phi > C7AX_CORE[0]) & (phi < C7AX_CORE[1])
    eq = (phi < C7EQ_CORE[0]) | (phi > C7EQ_CORE[1])
    return ax.astype(int) - eq.astype(int)


class CoreTransitions:
    """Core-to-core transitions of a stream of phi values and the time committed to each basin.

    A transition is a visit to one core after the last core visited was the other one.
    """

    def __init__(self):
        self.last, self.eq_to_ax, self.ax_to_eq, self.time_eq, self.time_ax = 0, 0, 0, 0.0, 0.0

    @property
    def transitions(self) -> int:
        """Transitions in both directions."""
        return self.eq_to_ax + self.ax_to_eq

    def update(self, phi, dt: float = 0.0) -> None:
        """Add phi values (rad), ``dt`` (any time unit) apart."""
        for label in core_labels(np.atleast_1d(phi)):
            if label != 0 and self.last != 0 and label != self.last:
                if label == 1:
                    self.eq_to_ax += 1
                else:
                    self.ax_to_eq += 1
            if label != 0:
                self.last = label
            if self.last == -1:
                self.time_eq += dt
            elif self.last == 1:
                self.time_ax += dt


def arrhenius(points: list[tuple[float, float]], temperature: float = 300.0) -> tuple[float, float] | None:
    """Rate at ``temperature`` from a fit of ``ln k`` against ``1/T`` over ``(T, k)`` points with ``k > 0``.

    Returns ``(k, slope)`` (``slope`` in K; ``-slope / T`` is the barrier in kT), or None with fewer than
    two usable points. Assumes a temperature-independent barrier and prefactor.
    """
    pts = [(1.0 / t, math.log(k)) for t, k in points if k > 0]
    if len(pts) < 2:
        return None
    x, y = np.array(pts).T
    slope, intercept = np.polyfit(x, y, 1)
    return float(math.exp(intercept + slope / temperature)), float(slope)
