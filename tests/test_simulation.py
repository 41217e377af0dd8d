"""Langevin MD data generation and user-data checks."""

import mdtraj
import numpy as np
import pytest

import openmm_bg
from openmm_bg.systems import load
from openmm_bg.systems.trajectory import check_trajectory


def test_same_seed_same_trajectory_and_files(tmp_path):
    ala = load("alanine_dipeptide")
    a = openmm_bg.simulate(ala, n_frames=5, stride=50, seed=3, platform="Reference", progress=False,
                           output=tmp_path / "ala.dcd")
    b = openmm_bg.simulate(ala, n_frames=5, stride=50, seed=3, platform="Reference", progress=False)
    c = openmm_bg.simulate(ala, n_frames=5, stride=50, seed=4, platform="Reference", progress=False)
    np.testing.assert_array_equal(a.xyz, b.xyz)
    assert np.abs(a.xyz - c.xyz).max() > 1e-3
    assert a.n_frames == 5 and a.time[-1] == pytest.approx(0.25)
    back = check_trajectory(ala, tmp_path / "ala.dcd")
    np.testing.assert_allclose(back.xyz, a.xyz, atol=1e-4)


def test_double_well_md_samples_left_well_at_temperature():
    """MD in the left well stays near x1 ~ -1.7 with x2 variance ~ 1 (kT units)."""
    dw = load("double_well")
    traj = openmm_bg.simulate(dw, n_frames=2000, stride=20, seed=1, platform="Reference", progress=False, friction=10.0)
    x1, x2 = traj.xyz[:, 0, 0], traj.xyz[:, 0, 1]
    assert np.all(x1 < 0.2)  # a 10 kT barrier is not crossed in 200 ps
    assert 0.6 < x2.var() < 1.5  # u = x2^2/2 gives unit variance
    assert np.abs(traj.xyz[:, 0, 2]).max() < 0.2  # confined to the plane


def test_check_trajectory_errors(tmp_path):
    ala = load("alanine_dipeptide")
    with pytest.raises(FileNotFoundError, match="trajectory file not found"):
        check_trajectory(ala, tmp_path / "nothing.dcd")
    with pytest.raises(ValueError, match=r"shape \[n_frames, 22, 3\]"):
        check_trajectory(ala, np.zeros((3, 21, 3)))
    bad = np.repeat(ala.positions[None], 2, axis=0)
    bad[1, 0, 0] = np.nan
    with pytest.raises(ValueError, match="frames \\[1\\] contain NaN"):
        check_trajectory(ala, bad)
    # atoms in another order
    top = ala.mdtraj_topology.copy()
    a, b = top.atom(4), top.atom(6)  # C and N of the first peptide bond, swapped
    (a.name, a.element), (b.name, b.element) = (b.name, b.element), (a.name, a.element)
    with pytest.raises(ValueError, match="atom order differs.*atom 4"):
        check_trajectory(ala, mdtraj.Trajectory(ala.positions[None], top))
    # another molecule entirely
    dimer = load("dimer_in_solvent")
    with pytest.raises(ValueError, match="has 38 atoms.*has 22"):
        check_trajectory(ala, dimer.to_mdtraj())


def test_check_trajectory_strips_solvent_and_makes_whole():
    from openmmtools.testsystems import AlanineDipeptideExplicit

    explicit = AlanineDipeptideExplicit()
    top = mdtraj.Topology.from_openmm(explicit.topology)
    xyz = np.asarray(explicit.positions.value_in_unit(explicit.positions.unit))[None]
    box = np.array([[v.value_in_unit(v.unit) for v in explicit.system.getDefaultPeriodicBoxVectors()]])
    traj = mdtraj.Trajectory(xyz.astype(np.float32), top)
    traj.unitcell_vectors = box.astype(np.float32)
    ala = load("alanine_dipeptide")
    checked = check_trajectory(ala, traj)
    assert checked.n_atoms == 22
    d = mdtraj.compute_distances(checked, [[4, 6]])[0, 0]
    assert 0.1 < d < 0.2  # bonded atoms stay together
