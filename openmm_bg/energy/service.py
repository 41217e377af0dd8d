"""`energy_for`: one shared `OpenMMEnergy` per system, temperature and options.

Analysis code asks for "the reduced energy of this system at this temperature" in many places
(free energies, reweighting to other states, the systems listing). `energy_for` answers all of
them from one cache, so that a system's OpenMM contexts are built once per process and its
platform is timed once:

- the same system, temperature and options give the **same object**;
- another temperature gives another object on the **same contexts** (`OpenMMEnergy.at_temperature`:
  ``u = U / kT``, only the factor differs);
- the platform choice is `select_platform`'s, cached per System (by its XML) for the process.

A system is identified by its fingerprint (the SHA-1 of its XML serialisation, with the reference
positions), not by object identity: equal Systems share contexts, and a System changed after its
first use (a force added, a parameter set) gets new ones instead of stale energies.

Lifetime: cached energies live until `close_energies` is called or the interpreter exits (then
`close_energies` runs by ``atexit``); with ``n_workers > 1`` that stops their worker processes.
Do not ``close()`` an energy obtained here while others may use it; if one is closed anyway, the
next `energy_for` call for it builds a fresh one. A process forked from one holding cached
energies starts with an empty cache (contexts are not shared across processes). Lookups and
creation are thread-safe; evaluation is serialised per evaluator by `OpenMMEnergy`'s lock.

Examples
--------
>>> from openmm_bg.systems import load
>>> dw = load("double_well")
>>> energy = energy_for(dw, platform="Reference")
>>> energy is energy_for(dw, platform="Reference")
True
>>> hot = energy_for(dw.with_temperature(600.0), platform="Reference")
>>> hot is energy_for(dw, 600.0, platform="Reference"), hot.temperature
(True, 600.0)
>>> float(hot([[[1.0, 0.5, 0.0]]])[0])  # (1 - 6 + 1 + 0.125) / 2: half the 300 K value
-1.9375
"""

from __future__ import annotations

import atexit
import hashlib
import os
import threading
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import openmm
import torch

from ..geometry import as_tensor
from ..systems.molecular_system import MolecularSystem
from .devices import resolve_device
from .openmm_energy import OpenMMEnergy, _strip_temperature
from .platforms import _system_key

__all__ = ["energy_for", "close_energies", "cached_energies"]

#: `OpenMMEnergy` options `energy_for` accepts, with their defaults (keys of the cache).
OPTIONS: dict[str, Any] = {"platform": None, "n_workers": 1, "platform_properties": None, "backend": "openmm",
                           "allow_periodic": False, "reference_positions": None, "device": None,
                           "timeout": None}


@dataclass
class _Entry:
    base: OpenMMEnergy  # owns the contexts / pool
    by_temperature: dict[float, OpenMMEnergy] = field(default_factory=dict)


_LOCK = threading.Lock()
_CACHE: dict[tuple, _Entry] = {}
_OWNER_PID = os.getpid()


def _positions_key(positions: Any) -> str | None:
    if positions is None:
        return None
    x = np.ascontiguousarray(as_tensor(positions, torch.float64).detach().cpu().numpy())
    return hashlib.sha1(x.tobytes()).hexdigest() + str(x.shape)


def _options_key(options: dict[str, Any]) -> tuple:
    props = options["platform_properties"]
    device = resolve_device(options["device"])  # checked here, before any work; "cpu" shares the default's energy
    return (options["platform"], int(options["n_workers"]),
            tuple(sorted((str(k), str(v)) for k, v in (props or {}).items())), options["backend"],
            bool(options["allow_periodic"]), None if device.type == "cpu" else str(device),
            options["timeout"])


def _forget_if_forked() -> None:
    global _OWNER_PID
    if os.getpid() != _OWNER_PID:  # contexts and pools of the parent are not ours to use or close
        _CACHE.clear()
        _OWNER_PID = os.getpid()


def energy_for(system: MolecularSystem | openmm.System, temperature: Any = None, **options: Any) -> OpenMMEnergy:
    """The shared `OpenMMEnergy` of ``system`` at ``temperature``.

    Parameters
    ----------
    system : MolecularSystem or openmm.System
        The potential; a `MolecularSystem` also gives the default temperature and the reference
        positions (platform timing, ``reference_energy``).
    temperature : float or openmm.unit.Quantity, optional
        K; default the `MolecularSystem`'s (required for a plain ``openmm.System``).
    **options
        Any of ``platform``, ``n_workers``, ``platform_properties``, ``backend``, ``allow_periodic``,
        ``reference_positions``, ``device``, ``timeout`` (see `OpenMMEnergy`). Different options give
        different energies (e.g. ``platform="Reference"`` for exact float64 checks).

    Returns
    -------
    OpenMMEnergy
        Cached: the same object for the same system fingerprint, temperature and options; objects for
        other temperatures share its contexts. Owned by the cache: see the module notes on lifetime.

    Raises
    ------
    ValueError
        Unknown option, missing or non-positive temperature (and whatever `OpenMMEnergy` refuses).

    Examples
    --------
    >>> from openmm_bg.systems import load
    >>> ala = load("alanine_dipeptide")
    >>> u = energy_for(ala, platform="Reference")(ala.positions[None])
    >>> u.dtype, u.shape
    (torch.float64, torch.Size([1]))
    """
    unknown = sorted(set(options) - set(OPTIONS))
    if unknown:
        raise ValueError(f"energy_for got unknown option(s) {unknown}; it accepts {sorted(OPTIONS)}")
    opts = {**OPTIONS, **options}
    if isinstance(system, MolecularSystem):
        omm = system.system
        if temperature is None:
            temperature = system.temperature
        if opts["reference_positions"] is None:
            opts["reference_positions"] = system.positions
    elif isinstance(system, openmm.System):
        omm = system
    else:
        raise TypeError(f"system must be a MolecularSystem or an openmm.System, got {type(system).__name__}")
    if temperature is None:
        raise ValueError("energy_for needs a temperature (K) with a plain openmm.System: "
                         "energy_for(system, temperature=300.0)")
    temperature = _strip_temperature(temperature)
    key = (_system_key(omm), _positions_key(opts["reference_positions"]), _options_key(opts))
    with _LOCK:
        _forget_if_forked()
        entry = _CACHE.get(key)
        if entry is not None and entry.base.closed:
            del _CACHE[key]
            entry = None
        if entry is None:
            base = OpenMMEnergy(system, temperature=temperature, **opts)
            entry = _CACHE[key] = _Entry(base, {temperature: base})
        energy = entry.by_temperature.get(temperature)
        if energy is None:
            energy = entry.by_temperature[temperature] = entry.base.at_temperature(temperature)
    return energy


def cached_energies() -> list[OpenMMEnergy]:
    """The energies in the cache (one per system and options; temperatures share them), for inspection."""
    with _LOCK:
        _forget_if_forked()
        return [e.base for e in _CACHE.values()]


def close_energies() -> None:
    """Close every cached energy (stopping worker pools) and empty the cache; runs at interpreter exit.

    Energies handed out before stay usable where they evaluate in-process; those with worker pools
    are closed. Later `energy_for` calls build new ones.
    """
    with _LOCK:
        _forget_if_forked()
        entries = list(_CACHE.values())
        _CACHE.clear()
    for entry in entries:
        entry.base.close()


atexit.register(close_energies)
