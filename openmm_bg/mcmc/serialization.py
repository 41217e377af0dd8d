"""What a move stores and how it gets its generator back: topology dictionaries, the model cache.

A serialised move (``MultiStateReporter`` storage, ``openmmtools.utils.serialize``) holds the *path*
of the saved generator, not its weights, and a compact description of the system (`system_info`:
name, temperature, topology, reference positions); a move read back rebuilds the `MolecularSystem`
from it and the state's ``System``. Models are loaded once per process: a cache keyed by the resolved
path and the file's modification time, shared by every move (deep copies, one per thermodynamic
state in the multistate samplers, share one model).

Examples
--------
>>> from openmm_bg.systems import load
>>> info = system_info(load("alanine_dipeptide"))
>>> len(info["topology"]["atoms"]), info["temperature"]
(22, 300.0)
>>> topology_from_dict(info["topology"]).getNumBonds()
21
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import openmm
import openmm.app as app
import torch

from ..model.fileformat import read_model_file
from ..model.fingerprint import check_fingerprint, system_fingerprint
from ..model.generator import BoltzmannGenerator
from ..systems import MolecularSystem

__all__ = ["clear_model_cache", "model_key", "cached", "cached_generator", "generator_for_state", "register_model_path",
           "topology_to_dict", "topology_from_dict", "system_info", "molecular_system"]

# (resolved path, mtime_ns) -> BoltzmannGenerator; shared by every move of this process
_MODEL_CACHE: dict[tuple[str, int], BoltzmannGenerator] = {}


def clear_model_cache() -> None:
    """Forget the generators loaded by deserialised moves (the next use reloads them from disk)."""
    _MODEL_CACHE.clear()


def model_key(path: str | os.PathLike) -> tuple[str, int]:
    """``(resolved path, modification time in ns)`` of a saved generator: the cache key."""
    p = Path(path).expanduser().resolve()
    if not p.is_file():
        raise FileNotFoundError(f"saved generator not found: {str(p)!r} (the move stores the path of the "
                                "generator, not its weights; keep the model file next to the storage)")
    return str(p), p.stat().st_mtime_ns


def cached_generator(path: str | os.PathLike, system: MolecularSystem) -> tuple[BoltzmannGenerator, str]:
    """The generator saved at ``path`` for ``system`` (loaded once per process) and its resolved path.

    Raises `ModelMismatchError` if the file belongs to another system, also when it is already loaded.
    """
    key = model_key(path)
    gen = _MODEL_CACHE.get(key)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        if gen is None:
            gen = BoltzmannGenerator.load(key[0], system)
            _MODEL_CACHE[key] = gen
        else:  # already loaded in this process: still refuse another system
            check_fingerprint(system_fingerprint(gen.system), system)
    return gen, key[0]


def generator_for_state(path: str | os.PathLike, info: dict, openmm_system: openmm.System) -> BoltzmannGenerator:
    """The generator of a deserialised move: from the cache, or loaded for the system described by
    ``info`` (`system_info`) with the thermodynamic state's ``openmm_system`` (copied)."""
    import copy

    key = model_key(path)
    gen = _MODEL_CACHE.get(key)
    if gen is None:
        ms = molecular_system(info, copy.deepcopy(openmm_system))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # another Hamiltonian is fine: u is the state's
            gen = BoltzmannGenerator.load(key[0], ms)
        _MODEL_CACHE[key] = gen
    return gen


def cached(path: str | os.PathLike) -> BoltzmannGenerator | None:
    """The generator of ``path`` if this process has loaded it (``None`` otherwise or without a file)."""
    try:
        return _MODEL_CACHE.get(model_key(path))
    except FileNotFoundError:
        return None


def register_model_path(generator: BoltzmannGenerator, model_path: str | os.PathLike) -> str:
    """Save ``generator`` at ``model_path`` unless the file exists, in which case it must hold this
    generator (same weights and system); put it in the cache; returns the resolved path."""
    path = Path(model_path).expanduser()
    if not path.exists():
        generator.save(path)
    else:
        payload = read_model_file(path)
        state = generator.flow.state_dict()
        stored = payload["flow_state"]
        same = set(stored) == set(state) and all(
            torch.equal(stored[k].cpu(), state[k].detach().cpu()) for k in state)
        current = system_fingerprint(generator.system)  # an older file's fingerprint may lack later entries
        if not same or any(current.get(k) != v for k, v in payload["fingerprint"].items()):
            raise ValueError(f"{str(path)!r} holds another model than this generator; save the "
                             "generator to a new path (or pass a path that does not exist yet and the "
                             "move saves it)")
    resolved = str(path.resolve())
    # copies deserialised in this process (SequenceMove copies through serialisation) share it
    _MODEL_CACHE.setdefault(model_key(resolved), generator)
    return resolved


# ---------------------------------------------------------------------------------------------- topology
def topology_to_dict(topology: app.Topology) -> dict:
    """Chains, residues, atoms (name, element, residue) and bonds of ``topology`` as plain lists."""
    atoms, residues, chains = [], [], []
    for chain in topology.chains():
        chains.append(chain.id)
    for residue in topology.residues():
        residues.append([residue.name, residue.chain.index, str(residue.id)])
    for atom in topology.atoms():
        atoms.append([atom.name, atom.element.symbol if atom.element is not None else "",
                      atom.residue.index])
    bonds = [[b[0].index, b[1].index] for b in topology.bonds()]
    return {"chains": chains, "residues": residues, "atoms": atoms, "bonds": bonds}


def topology_from_dict(d: dict) -> app.Topology:
    """The ``openmm.app.Topology`` of a dictionary from `topology_to_dict`."""
    top = app.Topology()
    chains = [top.addChain(cid) for cid in d["chains"]]
    residues = [top.addResidue(name, chains[int(c)], id=rid) for name, c, rid in d["residues"]]
    atoms = [top.addAtom(name, app.Element.getBySymbol(el) if el else None, residues[int(r)])
             for name, el, r in d["atoms"]]
    for a, b in d["bonds"]:
        top.addBond(atoms[int(a)], atoms[int(b)])
    return top


def system_info(system: MolecularSystem) -> dict:
    """What a move stores about its system (plain data; the ``System`` comes from the state)."""
    return {
        "name": system.name, "temperature": float(system.temperature),
        "topology": topology_to_dict(system.topology),
        "positions": [[float(v) for v in row] for row in system.positions],
        "rotation_invariant": bool(system.rotation_invariant),
        "free_dims": None if system.free_dims is None else system.free_dims.astype(bool).tolist(),
    }


def molecular_system(info: dict, openmm_system: openmm.System) -> MolecularSystem:
    """The `MolecularSystem` of stored `system_info` with ``openmm_system``."""
    free = info.get("free_dims")
    return MolecularSystem(name=info["name"], system=openmm_system,
                           topology=topology_from_dict(info["topology"]),
                           positions=np.asarray(info["positions"], dtype=np.float64),
                           temperature=float(info["temperature"]),
                           rotation_invariant=bool(info["rotation_invariant"]),
                           free_dims=None if free is None else np.asarray(free, dtype=bool))
