"""Hydrogen mass repartitioning: same energies and forces, conserved total mass, 4 fs MD, carried by model files."""

import math
import subprocess
import sys
import time

import mdtraj
import numpy as np
import openmm
import openmm.unit as unit
import pytest
from test_lennard_jones import _energies_forces  # energies (kJ/mol) and forces on the Reference platform

import openmm_bg
from openmm_bg.constants import MOLAR_GAS_CONSTANT
from openmm_bg.md import default_timestep
from openmm_bg.systems import from_files, from_openmm, from_pdb, load, repartition_hydrogen_mass
from openmm_bg.systems.record import decode_record, encode_record, system_from_record, system_record

HMR = 1.5


def _hydrogens(system):
    return np.array([a.index for a in system.topology.atoms() if a.element is not None and a.element.symbol == "H"])


def _md_frames(system, n=3):
    traj = openmm_bg.simulate(system, n_frames=n, stride=20, seed=3, timestep=0.001, platform="Reference",
                              progress=False)
    return traj.xyz.astype(np.float64)


@pytest.mark.parametrize("name, options", [("alanine_dipeptide", {}), ("alanine_dipeptide", {"constraints": "hbonds"}),
                                           ("trpzip2", {"constraints": "hbonds"})])
def test_same_energies_forces_and_total_mass(name, options):
    plain = load(name, **options)
    hmr = load(name, hydrogen_mass=HMR, **options)
    assert hmr.hydrogen_mass == HMR and plain.hydrogen_mass is None
    h = _hydrogens(plain)
    np.testing.assert_array_equal(hmr.masses[h], HMR)
    assert abs(hmr.masses.sum() - plain.masses.sum()) <= 1e-12 * plain.masses.sum()
    heavy = np.setdiff1d(np.arange(plain.n_atoms), h)
    assert (hmr.masses[heavy] < plain.masses[heavy]).sum() > 0 and (hmr.masses[heavy] > HMR).all()
    assert hmr.constraints == plain.constraints
    assert hmr.system is not plain.system and plain.masses[h].max() < 1.01  # the original System is untouched
    frames = _md_frames(hmr)
    for (e0, f0), (e1, f1) in zip(_energies_forces(plain.system, frames), _energies_forces(hmr.system, frames),
                                  strict=True):
        assert math.isfinite(e0) and abs(e1 - e0) <= 1e-12 * abs(e0)
        np.testing.assert_allclose(f1, f0, rtol=1e-12, atol=1e-12 * np.abs(f0).max())


def test_each_heavy_atom_gives_what_its_hydrogens_gain():
    ala = load("alanine_dipeptide")
    hmr = ala.with_hydrogen_mass(HMR)
    # atom 1 is the ACE methyl carbon with hydrogens 0, 2, 3
    assert hmr.masses[1] == pytest.approx(ala.masses[1] - 3 * (HMR - ala.masses[0]), rel=1e-14)
    assert hmr.masses[4] == ala.masses[4]  # the carbonyl carbon has no hydrogen


def test_file_loaders_take_the_option():
    from openmmtools.testsystems import get_data_filename

    top = get_data_filename("data/alanine-dipeptide-gbsa/alanine-dipeptide.prmtop")
    crd = get_data_filename("data/alanine-dipeptide-gbsa/alanine-dipeptide.crd")
    amber = from_files(top, crd, hydrogen_mass=HMR)
    assert amber.hydrogen_mass == HMR and (amber.masses[_hydrogens(amber)] == HMR).all()
    pdb = get_data_filename("data/alanine-dipeptide-gbsa/alanine-dipeptide.pdb")
    built = from_pdb(pdb, forcefield=["amber14-all.xml"], constraints=openmm.app.HBonds, hydrogen_mass=2.0)
    assert (built.masses[_hydrogens(built)] == 2.0).all() and default_timestep(built) == 0.004
    wrapped = from_openmm(amber.system, amber.topology, amber.positions, hydrogen_mass=1.2)
    assert (wrapped.masses[_hydrogens(wrapped)] == 1.2).all()
    assert default_timestep(load("peptide:A", constraints="hbonds", hydrogen_mass=HMR)) == 0.004


@pytest.mark.parametrize("value", [0, -1.0, float("nan"), float("inf"), "heavy", True])
def test_bad_values_refused_before_any_work(value):
    start = time.process_time()
    with pytest.raises(ValueError, match="hydrogen_mass must be positive and finite"):
        load("trpzip2", hydrogen_mass=value)
    assert time.process_time() - start < 0.05  # before building the System (which takes ~0.2 s of CPU)


def test_refused_repartitions():
    ala = load("alanine_dipeptide")
    with pytest.raises(ValueError, match="heavy atom atom 1 .*CH3.* use a smaller hydrogen_mass"):
        ala.with_hydrogen_mass(4.0)  # the methyl carbon would keep 12.01 - 3 x 2.99 Da
    with pytest.raises(ValueError, match="needs hydrogens, and the topology has none"):
        load("double_well", hydrogen_mass=HMR)
    unbonded = openmm.app.Topology()  # the same atoms without bonds
    chain, residues = unbonded.addChain(), {}
    for atom in ala.topology.atoms():
        if atom.residue.index not in residues:
            residues[atom.residue.index] = unbonded.addResidue(atom.residue.name, chain)
        unbonded.addAtom(atom.name, atom.element, residues[atom.residue.index])
    with pytest.raises(ValueError, match="hydrogen atom 0 .* has no bonds in the topology"):
        repartition_hydrogen_mass(ala.system, unbonded, HMR)
    h2 = openmm.System()
    top = openmm.app.Topology()
    residue = top.addResidue("H2", top.addChain())
    atoms = [top.addAtom(f"H{k}", openmm.app.element.hydrogen, residue) for k in (1, 2)]
    top.addBond(*atoms)
    for _ in atoms:
        h2.addParticle(1.008)
    with pytest.raises(ValueError, match="bonds only to hydrogens"):
        repartition_hydrogen_mass(h2, top, HMR)


def test_massless_hydrogens_are_left_alone():
    ala = load("alanine_dipeptide")
    system = openmm.XmlSerializer.clone(ala.system)
    system.setParticleMass(0, 0.0)
    out = repartition_hydrogen_mass(system, ala.topology, HMR)
    assert out.getParticleMass(0).value_in_unit(unit.dalton) == 0.0
    assert out.getParticleMass(1).value_in_unit(unit.dalton) == pytest.approx(12.01 - 2 * (HMR - 1.008), rel=1e-14)


def test_record_and_model_file_keep_the_masses(tmp_path):
    from openmm_bg import BoltzmannGenerator

    hmr = load("alanine_dipeptide", constraints="hbonds", hydrogen_mass=HMR)
    again = system_from_record(decode_record(encode_record(system_record(hmr))))
    np.testing.assert_array_equal(again.masses, hmr.masses)
    assert again.hydrogen_mass == HMR
    data = openmm_bg.simulate(hmr, n_frames=40, stride=10, seed=0, platform="Reference", progress=False)
    gen = BoltzmannGenerator.build(hmr, data, n_blocks=1, hidden=(8,), seed=0)
    loaded = BoltzmannGenerator.load(gen.save(tmp_path / "hmr.bg"))
    np.testing.assert_array_equal(loaded.system.masses, hmr.masses)
    assert loaded.system.hydrogen_mass == HMR and default_timestep(loaded.system) == 0.004


def test_default_timestep_and_the_no_constraints_warning():
    assert default_timestep(load("alanine_dipeptide", constraints="hbonds", hydrogen_mass=1.2)) == 0.002
    with pytest.warns(UserWarning, match="without constraints buys little"):
        assert default_timestep(load("alanine_dipeptide", hydrogen_mass=HMR)) == 0.001


def test_4fs_langevin_middle_run_keeps_300_K():
    """80 ps of alanine dipeptide (H bonds constrained, hydrogens at 1.5 Da) at 4 fs: finite, and the mean kinetic
    temperature of 400 samples 200 fs apart within 15 K of 300 K (its standard error is about 4 K)."""
    hmr = load("alanine_dipeptide", constraints="hbonds", hydrogen_mass=HMR)
    integrator = openmm.LangevinMiddleIntegrator(300 * unit.kelvin, 1.0 / unit.picosecond, 0.004 * unit.picoseconds)
    integrator.setRandomNumberSeed(11)
    context = openmm.Context(hmr.system, integrator, openmm.Platform.getPlatformByName("Reference"))
    context.setPositions(hmr.positions)
    context.setVelocitiesToTemperature(300 * unit.kelvin, 5)
    integrator.step(2500)  # 10 ps of equilibration
    n_dof = 3 * hmr.n_atoms - hmr.system.getNumConstraints() - 3  # a CMMotionRemover takes the centre of mass
    assert any(isinstance(f, openmm.CMMotionRemover) for f in hmr.system.getForces())
    temperatures, energies = [], []
    for _ in range(400):
        integrator.step(50)
        state = context.getState(getEnergy=True, getPositions=True)
        kinetic = state.getKineticEnergy().value_in_unit(unit.kilojoule_per_mole)
        temperatures.append(2 * kinetic / (n_dof * MOLAR_GAS_CONSTANT))
        energies.append(state.getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole))
    assert np.isfinite(energies).all() and np.isfinite(state.getPositions(asNumpy=True)._value).all()
    assert abs(np.mean(temperatures) - 300.0) < 15.0, np.mean(temperatures)


def test_fixman_factor_uses_the_state_masses():
    """A move mixed with HMR MD takes the Fixman factor of the System the MD runs (the thermodynamic state's)."""
    from openmmtools import cache, states

    from openmm_bg.mcmc import TorsionGroup, TorsionMove, fixman_log_factor
    from openmm_bg.mcmc.rotors import Rotor
    from openmm_bg.mcmc.torsion_move import TorsionMixture

    plain = load("alanine_dipeptide", constraints="hbonds")
    hmr = plain.with_hydrogen_mass(HMR)
    x = _md_frames(hmr, n=2)
    f_plain = fixman_log_factor(x, plain.constraints, plain.masses)
    f_hmr = fixman_log_factor(x, hmr.constraints, hmr.masses)
    assert np.all(np.abs(f_hmr - f_plain) > 0.1)  # the masses enter the factor
    assert [a.name for a in hmr.topology.atoms()][10:14] == ["CB", "HB1", "HB2", "HB3"]
    methyl = Rotor("ALA2 methyl", (6, 8, 10, 11), (11, 12, 13))
    move = TorsionMove([TorsionGroup("methyl", (methyl,), TorsionMixture([1.0], [[0.0]], [[1.0]]))], seed=0)
    thermo = states.ThermodynamicState(hmr.system, temperature=300 * unit.kelvin)
    move.apply(thermo, states.SamplerState(x[0] * unit.nanometer),
               context_cache=cache.ContextCache(platform=openmm.Platform.getPlatformByName("Reference")))
    np.testing.assert_allclose(move._fixman(x), f_hmr, rtol=1e-12)


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "openmm_bg.apps.cli", *args], capture_output=True, text=True)


def test_cli_hydrogen_mass(tmp_path):
    out = tmp_path / "md.h5"
    bad = _cli("simulate", "alanine_dipeptide", "--hydrogen-mass", "-1", "-o", str(out))
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1
    assert "--hydrogen-mass: must be positive and finite (dalton)" in bad.stderr and not out.exists()
    run = _cli("simulate", "alanine_dipeptide", "--option", "constraints=hbonds", "--hydrogen-mass", "1.5",
               "-n", "3", "--stride", "10", "--platform", "Reference", "-o", str(out))
    assert run.returncode == 0, run.stderr
    traj = mdtraj.load(str(out))
    assert traj.n_frames == 3 and np.isfinite(traj.xyz).all()
    assert traj.time[1] - traj.time[0] == pytest.approx(10 * 0.004)  # the 4 fs default


def test_a_generator_of_the_plain_system_serves_its_repartitioned_twin():
    """Masses that differ only by repartitioning pass the fingerprint (the generator is a density over positions);
    any other change of masses is still refused."""
    from openmm_bg.model.fingerprint import ModelMismatchError, check_fingerprint, system_fingerprint

    plain = load("alanine_dipeptide", constraints="hbonds")
    saved = system_fingerprint(plain)
    hmr = plain.with_hydrogen_mass(HMR)
    assert saved["masses"] != system_fingerprint(hmr)["masses"]
    check_fingerprint(saved, hmr)
    other = openmm.XmlSerializer.clone(plain.system)
    other.setParticleMass(0, 3.0)
    with pytest.raises(ModelMismatchError, match="masses"):
        check_fingerprint(saved, from_openmm(other, plain.topology, plain.positions))
    older = {k: v for k, v in saved.items() if k != "group_masses"}  # files written before the entry
    with pytest.raises(ModelMismatchError, match="masses"):
        check_fingerprint(older, hmr)


def test_a_checkpoint_written_before_the_group_masses_entry_resumes(dw_gen, dw_data, tmp_path):
    import torch

    from openmm_bg.training import Stage, Trainer

    ckpt = tmp_path / "run.ckpt"

    def trainer():
        return Trainer(dw_gen, dw_data, [Stage("ml", 4, batch_size=16)], seed=0, checkpoint=ckpt, checkpoint_every=1,
                       progress=False)

    trainer().fit()
    state = torch.load(ckpt, weights_only=False)
    del state["run"]["system"]["group_masses"]
    state["step"] = 2
    torch.save(state, ckpt)
    trainer().fit(resume=True)  # not refused as "another training run (different system)"
    assert torch.load(ckpt, weights_only=False)["step"] == 4
