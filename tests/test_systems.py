"""Built-in systems: they build, match openmmtools and their analytic formulas."""

import mdtraj
import numpy as np
import openmm
import pytest
import torch
from openmmtools import testsystems

import openmm_bg.systems as bgs
from openmm_bg.energy import energy_for
from openmm_bg.systems.toy import MUELLER_BROWN_PARAMETERS


def reduced(system, x=None) -> np.ndarray:
    """u = U/kT ``[batch]`` on the Reference platform (float64), at the reference positions by default."""
    return energy_for(system, platform="Reference")(system.positions[None] if x is None else x).numpy()


@pytest.mark.parametrize("name", bgs.names())
def test_every_builtin_builds_with_finite_energy(name):
    system = bgs.load(name)
    assert system.n_atoms == system.topology.getNumAtoms() == system.positions.shape[0]
    energy = reduced(system)
    assert energy.shape == (1,) and np.isfinite(energy).all()
    assert not system.periodic
    assert system.summary().startswith(name)


@pytest.mark.parametrize("options", [
    {"solvent": "vacuum", "forcefield": "amber14"},
    {"solvent": "implicit", "forcefield": "amber14"},
    {"solvent": "implicit"},
    {"constraints": "hbonds"},
])
def test_alanine_variants_build(options):
    system = bgs.load("alanine_dipeptide", **options)
    assert system.n_atoms == 22
    assert np.isfinite(reduced(system)).all()
    n_h_bonds = 12  # 12 hydrogens, each bonded to one heavy atom
    assert len(system.constraints) == (n_h_bonds if options.get("constraints") else 0)


@pytest.mark.parametrize("solvent, reference", [
    ("vacuum", testsystems.AlanineDipeptideVacuum),
    ("implicit", testsystems.AlanineDipeptideImplicit),
])
def test_alanine_defaults_equal_openmmtools(solvent, reference):
    ours = bgs.load("alanine_dipeptide", solvent=solvent)
    theirs = reference(constraints=None)
    rng = np.random.default_rng(0)
    x = ours.positions[None] + 0.01 * rng.standard_normal((3, 22, 3))
    theirs_system = bgs.from_openmm(theirs.system, theirs.topology, theirs.positions)
    np.testing.assert_array_equal(reduced(ours, x), reduced(theirs_system, x))
    np.testing.assert_allclose(ours.positions, theirs.positions.value_in_unit(openmm.unit.nanometer))
    assert ours.system.getNumConstraints() == 0 and ours.temperature == 300.0


def test_trpzip2_has_218_atoms_and_obc2():
    system = bgs.load("trpzip2")
    assert system.n_atoms == 218
    names = [f.__class__.__name__ for f in system.system.getForces()]
    assert "GBSAOBCForce" in names
    assert not any(r.name in ("WAT", "HOH", "Na+", "Cl-") for r in system.topology.residues())
    # strongly negative, as a solvated peptide in kT should be
    assert -900 < reduced(system)[0] < -500


def _double_well(x, y):
    return x**4 - 6 * x**2 + x + 0.5 * y**2


def _mueller_brown(x, y):
    p = MUELLER_BROWN_PARAMETERS
    return 0.1 * sum(
        p["A"][k] * np.exp(p["a"][k] * (x - p["x0"][k]) ** 2
                           + p["b"][k] * (x - p["x0"][k]) * (y - p["y0"][k])
                           + p["c"][k] * (y - p["y0"][k]) ** 2)
        for k in range(4))


@pytest.mark.parametrize("name, formula, temperature", [
    ("double_well", _double_well, 300.0),
    ("double_well", _double_well, 450.0),
    ("mueller_brown", _mueller_brown, 300.0),
])
def test_toy_energy_equals_formula(name, formula, temperature):
    system = bgs.load(name, temperature=temperature)
    rng = np.random.default_rng(1)
    xy = rng.uniform(-1.5, 1.5, size=(20, 2))
    x = np.zeros((20, 1, 3))
    x[:, 0, :2] = xy
    expected = formula(xy[:, 0], xy[:, 1])
    np.testing.assert_allclose(reduced(system, x), expected, rtol=1e-10, atol=1e-10)
    analytic = system.analytic_energy(torch.tensor(x)).numpy()
    np.testing.assert_allclose(analytic, expected, rtol=1e-12, atol=1e-12)
    # z is confined, not free
    assert system.free_dims.tolist() == [[True, True, False]]
    x[:, 0, 2] = 0.1
    assert (reduced(system, x) > expected).all()


def _dimer_numpy(x):
    """Independent numpy version of the paper's dimer energy (kT) for points in the plane."""
    xy = x[:, :, :2]
    n = xy.shape[1]
    energies = []
    for conf in xy:
        e = 0.0
        for i in range(n):
            for j in range(i + 1, n):
                if (i, j) == (0, 1):
                    continue
                e += (1.1 / np.linalg.norm(conf[i] - conf[j])) ** 12
        d = np.linalg.norm(conf[0] - conf[1])
        dp = 2 * (d - 1.5)
        e += 2 * dp - 25 * dp**2 + 10 * dp**4
        for v in conf.ravel():
            if abs(v) > 3.0:
                e += 100 * (abs(v) - 3.0) ** 2
        e += 20 * (conf[0, 0] + conf[1, 0]) ** 2 + 20 * conf[0, 1] ** 2 + 20 * conf[1, 1] ** 2
        energies.append(e)
    return np.array(energies)


def test_dimer_energy_equals_formula():
    system = bgs.load("dimer_in_solvent")
    assert system.n_atoms == 38 and not system.rotation_invariant
    rng = np.random.default_rng(2)
    x = np.repeat(system.positions[None], 4, axis=0)
    x[:, :, :2] += 0.1 * rng.standard_normal((4, 38, 2))
    x[1, 5, 0] = 3.4  # one particle pushed through the wall
    x[2, 1, :2] = x[2, 0, :2] + [1.9, 0.3]  # open dimer
    expected = _dimer_numpy(x)
    np.testing.assert_allclose(reduced(system, x), expected, rtol=1e-9)
    np.testing.assert_allclose(system.analytic_energy(torch.tensor(x)).numpy(), expected, rtol=1e-10)
    d = system.reaction_coordinates["d"](x)
    np.testing.assert_array_equal(system.states["open"](x), d > 1.5)
    assert system.states["closed"](system.positions[None])[0]


def test_alanine_phi_psi_match_mdtraj():
    system = bgs.load("alanine_dipeptide")
    rng = np.random.default_rng(3)
    # the reference structure is planar (phi = psi = pi): perturb it to test both signs
    x = system.positions[None] + 0.02 * rng.standard_normal((10, 22, 3))
    traj = system.to_mdtraj(x)
    expected = mdtraj.compute_dihedrals(traj, [[4, 6, 8, 14], [6, 8, 14, 16]])
    phi = system.reaction_coordinates["phi"](traj)
    psi = system.reaction_coordinates["psi"](x)
    assert np.ptp(phi) > 0.5
    np.testing.assert_allclose(np.stack([phi, psi], 1), expected, atol=1e-5)
    # mdtraj's own phi/psi definition finds the same atoms
    phi_atoms, _ = mdtraj.compute_phi(traj)
    assert tuple(phi_atoms[0]) == (4, 6, 8, 14)
    # the coordinate stays differentiable on tensors
    x = torch.tensor(system.positions[None], requires_grad=True)
    system.reaction_coordinates["phi"](x).sum().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def test_alanine_states_partition_phi():
    system = bgs.load("alanine_dipeptide")
    x = np.repeat(system.positions[None], 7, axis=0)
    phi = system.reaction_coordinates["phi"](x)
    c7ax, c7eq = system.states["C7ax"](x), system.states["C7eq"](x)
    assert (c7ax ^ c7eq).all()
    np.testing.assert_array_equal(c7ax, (phi > 0) & (phi < 2.2))
    assert c7eq[0]  # the reference structure is in C7eq


def test_temperature_option_scales_toy_kT():
    cold, hot = bgs.load("double_well", temperature=300.0), bgs.load("double_well", temperature=600.0)
    x = np.array([[[1.0, 0.5, 0.0]]])
    np.testing.assert_allclose(reduced(cold, x), reduced(hot, x))
    assert hot.kT == pytest.approx(2 * cold.kT)


def test_unknown_system_and_bad_options():
    with pytest.raises(KeyError, match="unknown system 'alanine'.*alanine_dipeptide"):
        bgs.load("alanine")
    with pytest.raises(TypeError, match="allowed options"):
        bgs.load("double_well", solvent="implicit")
    with pytest.raises(ValueError, match="explicit solvent is out of scope"):
        bgs.load("alanine_dipeptide", solvent="explicit")
    with pytest.raises(ValueError, match="forcefield must be"):
        bgs.load("alanine_dipeptide", forcefield="charmm36")
    with pytest.raises(ValueError, match="constraints must be"):
        bgs.load("alanine_dipeptide", constraints="some")
