"""A `MolecularSystem` as plain data, so that a model file can carry the system it was trained for.

`system_record` turns a system into a JSON-able dictionary: the serialized ``openmm.System``
(``openmm.XmlSerializer``), the topology (chains, residues, atoms with elements, bonds with type
and order, box), the reference positions (nm, float64, exactly), temperature, name, description,
``rotation_invariant``, ``free_dims``, and the reaction coordinates and states that carry a
``spec`` (a recipe such as ``{"kind": "dihedral", "atoms": [...]}``). Coordinates and states
that are only functions cannot be stored; their names are listed under ``"not_stored"``.
The serialized System carries the masses, so a system with hydrogen mass repartitioning rebuilds
with the same masses; ``hydrogen_mass`` (dalton or None) records the value it was built with.
`system_from_record` rebuilds the system; `encode_record` / `decode_record` turn a record into
gzip-compressed bytes and back. A toy system's ``analytic_energy`` (a shortcut for tests) is not
stored: the rebuilt system computes the same energy with OpenMM.

Spec kinds (`openmm_bg.systems.coordinates.coordinate_from_spec`): coordinates ``"dihedral"``,
``"angle"``, ``"distance"`` (``atoms``) and ``"rmsd"`` (``atoms`` and their reference positions,
embedded: no structure file is needed to rebuild it); states ``"intervals"`` (``terms``, a list of
``{"coordinate", "low", "high", "complement"}`` naming stored coordinates, all of which must
hold) and ``"clauses"`` (the states of `openmm_bg.systems.state_files.state`: each clause embeds its
coordinate's entry and ``{"op", "low", "high"}``). A record written by a later version with kinds
this one does not know rebuilds without them (a warning names them); the ``"angle"``,
``"distance"``, ``"rmsd"`` and ``"clauses"`` kinds are newer than the first records, whose readers
rebuild without them.

Examples
--------
>>> import openmm_bg.systems as bgs
>>> ala = bgs.load("alanine_dipeptide")
>>> again = system_from_record(decode_record(encode_record(system_record(ala))))
>>> again.n_atoms, sorted(again.states), bool((again.positions == ala.positions).all())
(22, ['C7ax', 'C7eq'], True)
>>> bool(again.states["C7eq"](ala.positions[None])[0])
True
"""

from __future__ import annotations

import dataclasses
import gzip
import json
import warnings

import numpy as np
import openmm
import openmm.app as app

from .molecular_system import MolecularSystem, ReactionCoordinate, State, intervals_state
from .state_files import coordinate_entry, coordinate_from_entry, state_from_spec

__all__ = ["RECORD_VERSION", "system_record", "system_from_record", "encode_record", "decode_record"]

#: Version of the record layout written by `system_record`.
RECORD_VERSION = 1
_BOND_TYPES = {"Single": app.Single, "Double": app.Double, "Triple": app.Triple, "Aromatic": app.Aromatic,
               "Amide": app.Amide}


def _topology_record(topology: app.Topology) -> dict:
    chains = []
    for chain in topology.chains():
        residues = []
        for res in chain.residues():
            atoms = [[a.name, a.element.symbol if a.element is not None else None, a.id] for a in res.atoms()]
            residues.append({"name": res.name, "id": res.id, "insertion_code": res.insertionCode, "atoms": atoms})
        chains.append({"id": chain.id, "residues": residues})
    bonds = [[b.atom1.index, b.atom2.index, None if b.type is None else str(b.type), b.order]
             for b in topology.bonds()]
    box = topology.getPeriodicBoxVectors()
    box = None if box is None else [[float(v) for v in vec.value_in_unit(openmm.unit.nanometer)] for vec in box]
    return {"chains": chains, "bonds": bonds, "box": box}


def _topology_from_record(record: dict) -> app.Topology:
    topology = app.Topology()
    atoms = []
    for chain_record in record["chains"]:
        chain = topology.addChain(chain_record["id"])
        for res_record in chain_record["residues"]:
            res = topology.addResidue(res_record["name"], chain, res_record["id"], res_record["insertion_code"])
            for name, symbol, atom_id in res_record["atoms"]:
                element = None if symbol is None else app.Element.getBySymbol(symbol)
                atoms.append(topology.addAtom(name, element, res, atom_id))
    for i, j, kind, order in record["bonds"]:
        topology.addBond(atoms[i], atoms[j], _BOND_TYPES.get(kind) if kind else None, order)
    if record.get("box") is not None:
        topology.setPeriodicBoxVectors([openmm.Vec3(*v) for v in record["box"]] * openmm.unit.nanometer)
    return topology




def system_record(system: MolecularSystem) -> dict:
    """The system as a JSON-able dictionary (see the module docstring)."""
    coordinates = [coordinate_entry(rc) for rc in system.reaction_coordinates.values() if rc.spec is not None]
    stored = {c["name"] for c in coordinates}
    states = [{"name": s.name, "spec": s.spec, "description": s.description} for s in system.states.values()
              if s.spec is not None and all(t["coordinate"] in stored for t in s.spec.get("terms", []))]
    kept = stored | {s["name"] for s in states}
    return {
        "record_version": RECORD_VERSION, "name": system.name, "description": system.description,
        "temperature": float(system.temperature), "rotation_invariant": bool(system.rotation_invariant),
        "free_dims": None if system.free_dims is None else system.free_dims.tolist(),
        "hydrogen_mass": system.hydrogen_mass,
        "system_xml": openmm.XmlSerializer.serialize(system.system),
        "topology": _topology_record(system.topology), "positions": system.positions.tolist(),
        "coordinates": coordinates, "states": states,
        "not_stored": sorted((set(system.reaction_coordinates) | set(system.states)) - kept),
    }


def _rebuild_state(entry: dict, coordinates: dict[str, ReactionCoordinate]) -> State | None:
    spec = entry["spec"]
    if spec.get("kind") == "clauses":
        return state_from_spec(entry["name"], spec, entry.get("description", ""))
    if spec.get("kind") != "intervals" or not all(t["coordinate"] in coordinates for t in spec["terms"]):
        return None
    terms = [(coordinates[t["coordinate"]], t["low"], t["high"], t["complement"]) for t in spec["terms"]]
    return dataclasses.replace(intervals_state(entry["name"], terms), description=entry.get("description", ""))


def system_from_record(record: dict) -> MolecularSystem:
    """The `MolecularSystem` of a `system_record` (ValueError for a record that is not one)."""
    if not isinstance(record, dict) or record.get("record_version") not in range(1, RECORD_VERSION + 1):
        version = record.get("record_version") if isinstance(record, dict) else None
        raise ValueError(f"not a system record this openmm-bg reads (record_version {version!r}, reads up to "
                         f"{RECORD_VERSION})")
    system = openmm.XmlSerializer.deserialize(record["system_xml"])
    coordinates, skipped = {}, []
    for entry in record["coordinates"]:
        rc = coordinate_from_entry(entry)
        if rc is None:
            skipped.append(entry["name"])
        else:
            coordinates[rc.name] = rc
    states = {}
    for entry in record["states"]:
        state = _rebuild_state(entry, coordinates)
        if state is None:
            skipped.append(entry["name"])
        else:
            states[state.name] = state
    if skipped:
        warnings.warn(f"the stored system {record['name']!r} has coordinates/states of kinds this version does not "
                      f"know; rebuilt without {skipped}", UserWarning, stacklevel=2)
    free_dims = record.get("free_dims")
    return MolecularSystem(
        name=record["name"], system=system, topology=_topology_from_record(record["topology"]),
        positions=np.asarray(record["positions"], dtype=np.float64), temperature=record["temperature"],
        reaction_coordinates=coordinates, states=states, rotation_invariant=record["rotation_invariant"],
        free_dims=None if free_dims is None else np.asarray(free_dims, dtype=bool),
        description=record.get("description", ""), hydrogen_mass=record.get("hydrogen_mass"))


def encode_record(record: dict) -> bytes:
    """gzip-compressed JSON of a record (floats written exactly)."""
    return gzip.compress(json.dumps(record, separators=(",", ":")).encode(), compresslevel=6, mtime=0)


def decode_record(data: bytes) -> dict:
    """The record of `encode_record` bytes."""
    return json.loads(gzip.decompress(data).decode())
