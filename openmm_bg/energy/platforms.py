"""Choosing the OpenMM platform for batched energy evaluation.

OpenMM has no batch API, so the energy layer evaluates one configuration after another. Which
platform is fastest for that depends on the system and the machine: per-configuration costs
range from ~30 us (alanine dipeptide in vacuum, Reference) to ~1 ms (OBC1 CustomGBForce), and a
GPU pays a fixed launch latency per call. `select_platform` therefore times a few evaluations on
every available candidate (CUDA, OpenCL, CPU with ``Threads=1`` per worker, Reference) and keeps
the fastest. Results are cached per System (by its XML) within the process.

Examples
--------
>>> from openmm_bg.systems import load
>>> dw = load("double_well")
>>> choice = select_platform(dw.system, dw.positions)
>>> choice.name in available_platforms()
True
"""

from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import dataclass, field

import numpy as np
import openmm

from .context import ContextEvaluator

__all__ = ["PlatformChoice", "available_platforms", "default_properties", "select_platform",
           "CANDIDATES"]

logger = logging.getLogger(__name__)

#: Platforms tried by `select_platform`, in order of preference on ties.
CANDIDATES = ("CUDA", "OpenCL", "CPU", "Reference")

_CACHE: dict[tuple, PlatformChoice] = {}


@dataclass(frozen=True)
class PlatformChoice:
    """The platform chosen for a system.

    Attributes
    ----------
    name : str
        OpenMM platform name.
    properties : dict of str -> str
        Platform properties to create each context with.
    timings : dict of str -> float
        Seconds per configuration (energy + forces) measured for each candidate; empty when the
        user named the platform.
    """

    name: str
    properties: dict[str, str] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)


def available_platforms() -> list[str]:
    """Names of the OpenMM platforms that loaded on this machine, e.g. ``["Reference", "CPU"]``."""
    return [openmm.Platform.getPlatform(i).getName() for i in range(openmm.Platform.getNumPlatforms())]


def default_properties(platform: str) -> dict[str, str]:
    """Platform properties used unless the caller gives some.

    ``CPU`` runs one thread per context (parallelism comes from worker processes);
    ``CUDA``/``OpenCL`` use mixed precision, so that energies are accumulated in double.
    """
    if platform == "CPU":
        return {"Threads": "1"}
    if platform in ("CUDA", "OpenCL"):
        return {"Precision": "mixed"}
    return {}


def _system_key(system: openmm.System) -> str:
    xml = openmm.XmlSerializer.serialize(system)
    return hashlib.sha1(xml.encode()).hexdigest()


def _time_platform(system: openmm.System, name: str, properties: dict[str, str],
                   configurations: np.ndarray, budget_s: float) -> float:
    """Median seconds per configuration (energy and forces) on one platform, after a warm-up call.

    The median, not the mean, so that a moment of load from other processes does not decide.
    """
    ev = ContextEvaluator(system, name, properties)
    ev.evaluate(configurations[:2])
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < len(configurations) and (len(times) < 5 or time.perf_counter() - start < budget_s):
        t0 = time.perf_counter()
        ev.evaluate(configurations[len(times):len(times) + 1])
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def select_platform(system: openmm.System, positions: np.ndarray | None = None,
                    candidates: tuple[str, ...] = CANDIDATES, budget_s: float = 0.05,
                    use_cache: bool = True) -> PlatformChoice:
    """Pick the fastest available platform by timing a few energy+force evaluations on each.

    Parameters
    ----------
    system : openmm.System
        The potential.
    positions : numpy.ndarray, optional
        A reference configuration ``[n_atoms, 3]`` in nm; timings use small perturbations of it.
        Without one, atoms are placed on a cubic lattice of spacing 0.3 nm.
    candidates : tuple of str
        Platform names to try (those that are not available are skipped).
    budget_s : float
        Approximate time spent timing each platform (at least 5 evaluations each).
    use_cache : bool
        Reuse an earlier choice for the same System in this process.

    Returns
    -------
    PlatformChoice
        Name, properties and the measured seconds per configuration.

    Examples
    --------
    >>> from openmm_bg.systems import load
    >>> ala = load("alanine_dipeptide")
    >>> select_platform(ala.system, ala.positions, candidates=("Reference",)).name
    'Reference'
    """
    names = [c for c in candidates if c in available_platforms()]
    if not names:
        raise RuntimeError(f"none of the platforms {candidates} is available; OpenMM has "
                           f"{available_platforms()}")
    key = (_system_key(system), tuple(names)) if use_cache else None
    if key is not None and key in _CACHE:
        return _CACHE[key]
    n_atoms = system.getNumParticles()
    if positions is None:
        side = int(np.ceil(n_atoms ** (1 / 3)))
        grid = np.stack(np.meshgrid(*[np.arange(side)] * 3, indexing="ij"), -1).reshape(-1, 3)
        positions = 0.3 * grid[:n_atoms].astype(np.float64)
    rng = np.random.default_rng(0)
    configurations = np.asarray(positions, dtype=np.float64)[None] + 0.002 * rng.standard_normal(
        (64, n_atoms, 3))
    timings: dict[str, float] = {}
    for name in names:
        try:
            timings[name] = _time_platform(system, name, default_properties(name), configurations, budget_s)
        except Exception as err:  # a platform that cannot run this system (e.g. missing kernels)
            logger.info("platform %s skipped: %s", name, err)
    if not timings:
        raise RuntimeError(f"no OpenMM platform could evaluate this system (tried {names})")
    best = min(timings, key=timings.get)
    summary = ", ".join(f"{k} {v * 1e6:.0f} us" for k, v in timings.items())
    logger.info("OpenMM platform %s chosen by timing (per configuration: %s)", best, summary)
    choice = PlatformChoice(best, default_properties(best), timings)
    if key is not None:
        _CACHE[key] = choice
    return choice
