"""The 2D bistable dimer in a repulsive solvent (Noe et al., Science 2019, Fig. 3).

36 solvent particles and 2 dimer particles in the xy plane, in a box held by restraining walls
(not periodic). Reduced energy (kT):

- pair repulsion eps*(rm/r)^12, rm = 1.1 nm, between all pairs but the dimer pair;
- dimer bond 2 d' - 25 d'^2 + 10 d'^4 with d' = 2 (d - 1.5), d the dimer distance (nm): a closed
  state near d = 1 nm and an open state near d = 2 nm;
- box walls k (|x| - 3)^2 outside the half-width 3 nm, k = 100, for x and y of every particle;
- the paper's centring restraints of the dimer, 20 (x_1 + x_2)^2 + 20 y_1^2 + 20 y_2^2;
- a stiff harmonic term holding z at 0 (z is not a free dimension).

The pair and bond terms come from ``forcefields/particles_2d.xml`` with the structure in
``systems/dimer_in_solvent.pdb``; the external terms are added here.
"""

from __future__ import annotations

import numpy as np
import openmm
import openmm.app as app
import torch

from ..constants import kT_kJ_per_mol
from ..data import forcefield_path, structure_path
from .molecular_system import MolecularSystem, ReactionCoordinate, interval_state
from .toy import Z_CONFINEMENT

__all__ = ["dimer_in_solvent", "DIMER_PARAMETERS", "dimer_energy"]

DIMER_PARAMETERS = {
    "n_solvent": 36, "eps": 1.0, "rm": 1.1, "slope": 2.0, "a": 25.0, "b": 10.0, "dmid": 1.5,
    "dimer_k": 20.0, "box_halfsize": 3.0, "box_k": 100.0,
}


def dimer_energy(x: torch.Tensor) -> torch.Tensor:
    """Reduced energy (kT) of the dimer system, ``[batch, 38, 3] -> [batch]``, without OpenMM."""
    p = DIMER_PARAMETERS
    n = x.shape[-2]
    diff = x[..., :, None, :] - x[..., None, :, :]
    r2 = (diff**2).sum(-1)
    mask = torch.ones(n, n, dtype=torch.bool, device=x.device).triu(1)
    mask[0, 1] = False
    rep = p["eps"] * (p["rm"] ** 2 / r2[..., mask]) ** 6
    d = torch.linalg.norm(x[..., 1, :] - x[..., 0, :], dim=-1)
    dp = 2 * (d - p["dmid"])
    bond = p["slope"] * dp - p["a"] * dp**2 + p["b"] * dp**4
    h = p["box_halfsize"]
    xy = x[..., :2]
    wall = p["box_k"] * (torch.relu(xy - h) ** 2 + torch.relu(-xy - h) ** 2).sum((-1, -2))
    centre = p["dimer_k"] * ((x[..., 0, 0] + x[..., 1, 0]) ** 2 + x[..., 0, 1] ** 2 + x[..., 1, 1] ** 2)
    confine = 0.5 * Z_CONFINEMENT * (x[..., 2] ** 2).sum(-1)
    return rep.sum(-1) + bond + wall + centre + confine


def _external_terms(kT: float) -> list[openmm.Force]:
    p = DIMER_PARAMETERS
    walls = openmm.CustomExternalForce(
        "kT*(box_k*(step(x-h)*(x-h)^2 + step(-x-h)*(x+h)^2 + step(y-h)*(y-h)^2 + step(-y-h)*(y+h)^2)"
        " + 0.5*kz*z^2)"
    )
    for name, value in (("kT", kT), ("box_k", p["box_k"]), ("h", p["box_halfsize"]),
                        ("kz", Z_CONFINEMENT)):
        walls.addGlobalParameter(name, value)
    for i in range(p["n_solvent"] + 2):
        walls.addParticle(i, [])
    y_restraint = openmm.CustomExternalForce("kT*dimer_k*y^2")
    y_restraint.addGlobalParameter("kT", kT)
    y_restraint.addGlobalParameter("dimer_k", p["dimer_k"])
    y_restraint.addParticle(0, [])
    y_restraint.addParticle(1, [])
    centre = openmm.CustomCompoundBondForce(2, "kT*dimer_k*(x1 + x2)^2")
    centre.addGlobalParameter("kT", kT)
    centre.addGlobalParameter("dimer_k", p["dimer_k"])
    centre.addBond([0, 1], [])
    return [walls, y_restraint, centre]


def dimer_in_solvent(temperature: float = 300.0) -> MolecularSystem:
    """Build the 2D dimer-in-solvent system (38 particles) at ``temperature`` (K).

    Reaction coordinate ``d`` (dimer distance, nm); states ``closed`` (d < 1.5 nm) and
    ``open`` (d > 1.5 nm).
    """
    pdb = app.PDBFile(str(structure_path("dimer_in_solvent.pdb")))
    forcefield = app.ForceField(str(forcefield_path("particles_2d.xml")))
    system = forcefield.createSystem(pdb.topology, nonbondedMethod=app.NoCutoff,
                                     removeCMMotion=False)
    kT = kT_kJ_per_mol(temperature)
    for force in system.getForces():
        for k in range(force.getNumGlobalParameters()):
            if force.getGlobalParameterName(k) == "kT":
                force.setGlobalParameterDefaultValue(k, kT)
    for force in _external_terms(kT):
        system.addForce(force)
    positions = np.asarray(pdb.getPositions(asNumpy=True).value_in_unit(openmm.unit.nanometer))
    d = ReactionCoordinate("d", lambda x: torch.linalg.norm(x[..., 1, :] - x[..., 0, :], dim=-1),
                           atoms=(0, 1), periodic=False, bounds=(0.5, 2.5), unit="nm",
                           description="dimer distance")
    mid = DIMER_PARAMETERS["dmid"]
    free = np.ones_like(positions, dtype=bool)
    free[:, 2] = False
    return MolecularSystem(
        name="dimer_in_solvent", system=system, topology=pdb.topology, positions=positions,
        temperature=temperature, reaction_coordinates={"d": d},
        states={"closed": interval_state("closed", d, 0.0, mid),
                "open": interval_state("open", d, mid, np.inf)},
        rotation_invariant=False, free_dims=free, analytic_energy=dimer_energy,
        description="2D bistable dimer in a repulsive solvent (38 particles, Noe et al. 2019 Fig. 3)",
    )
