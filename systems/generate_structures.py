"""Regenerate the structure files in this folder (run from the repository root).

    python systems/generate_structures.py

- ``alanine_dipeptide.pdb``: openmmtools' alanine-dipeptide structure written with OpenMM's
  PDB writer (standard names, for ``forcefield="amber14"``).
- ``trpzip2/trpzip2.prmtop``, ``trpzip2/trpzip2.inpcrd``: openmmtools' ``trpzip2-explicit``
  (an old-format prmtop that OpenMM cannot read) loaded with parmed, water and ions stripped,
  mbondi2 radii assigned for OBC2, saved in the current prmtop format.
- ``alanine_dipeptide_c7ax.pdb``: a C7ax (alpha_L) conformation of alanine dipeptide (ff96, vacuum),
  taken from an 800 K run and energy-minimised; starting point for MD in the rare basin.
- ``dimer_in_solvent.pdb``: the 2D dimer (closed, d = 1 nm) and 36 solvent particles on a grid,
  energy-minimised in the plane.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import openmm
import openmm.app as app
import openmm.unit as unit

HERE = Path(__file__).resolve().parent


def _data(name: str) -> str:
    from openmmtools.testsystems import get_data_filename

    return get_data_filename(f"data/{name}")


def alanine_pdb() -> None:
    prmtop = app.AmberPrmtopFile(_data("alanine-dipeptide-gbsa/alanine-dipeptide.prmtop"))
    crd = app.AmberInpcrdFile(_data("alanine-dipeptide-gbsa/alanine-dipeptide.crd"))
    with open(HERE / "alanine_dipeptide.pdb", "w") as fh:
        app.PDBFile.writeFile(prmtop.topology, crd.getPositions(), fh)


def trpzip2_files() -> None:
    import parmed
    from parmed.tools import changeRadii

    structure = parmed.load_file(_data("trpzip2-explicit/trpzip2.prmtop"),
                                 xyz=_data("trpzip2-explicit/trpzip2.crd"))
    structure.strip(":WAT,HOH,Na+,Cl-,NA,CL,K+")  # noqa: B005 (parmed mask, not str.strip)
    changeRadii(structure, "mbondi2").execute()
    structure.box = None
    out = HERE / "trpzip2"
    out.mkdir(exist_ok=True)
    structure.save(str(out / "trpzip2.prmtop"), format="amber", overwrite=True)
    structure.save(str(out / "trpzip2.inpcrd"), format="rst7", overwrite=True)


def dimer_pdb(seed: int = 0) -> None:
    topology = app.Topology()
    chain = topology.addChain()
    dimer = topology.addResidue("DIM", chain)
    a = topology.addAtom("D1", None, dimer)
    b = topology.addAtom("D2", None, dimer)
    topology.addBond(a, b)
    for _ in range(36):
        topology.addAtom("S", None, topology.addResidue("SOL", chain))
    locs = np.linspace(-2.5, 2.5, 6)
    grid = np.array([(x, y) for x in locs for y in locs])
    xy = np.vstack([[[-0.5, 0.0], [0.5, 0.0]], grid])
    positions = np.hstack([xy, np.zeros((38, 1))])
    with open(HERE / "dimer_in_solvent.pdb", "w") as fh:
        app.PDBFile.writeFile(topology, positions * 10 * unit.angstrom, fh)
    # minimise in the plane with the system itself
    from openmm_bg.systems import load

    system = load("dimer_in_solvent")
    context = openmm.Context(system.system, openmm.VerletIntegrator(0.001),
                             openmm.Platform.getPlatformByName("Reference"))
    context.setPositions(positions)
    openmm.LocalEnergyMinimizer.minimize(context, 1e-3, 1000)
    minimized = context.getState(getPositions=True).getPositions(asNumpy=True)
    minimized = np.asarray(minimized.value_in_unit(unit.nanometer))
    minimized[:, 2] = 0.0
    with open(HERE / "dimer_in_solvent.pdb", "w") as fh:
        app.PDBFile.writeFile(topology, minimized * 10 * unit.angstrom, fh)


def alanine_c7ax_pdb(seed: int = 0) -> None:
    import openmm_bg
    from openmm_bg.systems import load

    system = load("alanine_dipeptide")
    phi = system.reaction_coordinates["phi"]
    hot = openmm_bg.simulate(system, n_frames=4000, stride=50, temperature=800.0, seed=seed, progress=False,
                             platform="Reference")
    values = phi(hot)
    frame = int(np.flatnonzero((values > 0.9) & (values < 1.4))[0])
    context = openmm.Context(system.system, openmm.VerletIntegrator(0.001),
                             openmm.Platform.getPlatformByName("Reference"))
    context.setPositions(hot.xyz[frame].astype(np.float64))
    openmm.LocalEnergyMinimizer.minimize(context, 1e-3, 2000)
    positions = context.getState(getPositions=True).getPositions()
    with open(HERE / "alanine_dipeptide_c7ax.pdb", "w") as fh:
        app.PDBFile.writeFile(system.topology, positions, fh)


if __name__ == "__main__":
    alanine_pdb()
    alanine_c7ax_pdb()
    trpzip2_files()
    dimer_pdb()
