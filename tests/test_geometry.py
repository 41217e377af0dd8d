"""openmm_bg.geometry, the one home of angles and dihedrals: mdtraj values, stable gradients."""

from __future__ import annotations

import mdtraj
import numpy as np
import pytest
import torch

import openmm_bg.systems as bgs
from openmm_bg import geometry
from openmm_bg.transforms import build_zmatrix
from openmm_bg.transforms.internal import internal_coordinates


@pytest.fixture(scope="module")
def alanine_frames():
    ala = bgs.load("alanine_dipeptide")
    rng = np.random.default_rng(0)
    x = (ala.positions[None] + 0.03 * rng.standard_normal((40, 22, 3))).astype(np.float32)
    return ala, x, build_zmatrix(ala.topology).rows


def _circular_difference(a, b):
    return np.abs(np.angle(np.exp(1j * (np.asarray(a) - np.asarray(b)))))


def test_dihedrals_and_angles_match_mdtraj_on_alanine_frames(alanine_frames):
    ala, x, rows = alanine_frames
    traj = mdtraj.Trajectory(x, ala.mdtraj_topology)
    phi_atoms, phi = mdtraj.compute_phi(traj)
    quads = np.concatenate([rows, phi_atoms])
    expected_d = mdtraj.compute_dihedrals(traj, quads)
    expected_a = mdtraj.compute_angles(traj, quads[:, :3])
    for positions in (x, torch.as_tensor(x, dtype=torch.float64)):  # numpy in and torch in
        d = geometry.dihedral(positions, *quads.T)
        a = geometry.angle(positions, *quads[:, :3].T)
        assert type(d) is type(positions) and d.shape == (len(x), len(quads))
        assert _circular_difference(expected_d, np.asarray(d)).max() < 1e-6
        assert np.abs(expected_a - np.asarray(a)).max() < 1e-6
    # one frame, int atoms
    assert _circular_difference(geometry.dihedral(x[0], *phi_atoms[0]), phi[0, 0]) < 1e-6
    np.testing.assert_allclose(geometry.distance(x, rows[:, 0], rows[:, 1]),
                               mdtraj.compute_distances(traj, rows[:, :2]), atol=1e-6)


def test_transforms_use_the_same_numbers(alanine_frames):
    _, x, rows = alanine_frames
    t = torch.as_tensor(x, dtype=torch.float64)
    i, j, k, l = torch.as_tensor(rows, dtype=torch.long).unbind(1)
    bond, ang, tors = internal_coordinates(t, i, j, k, l)
    assert torch.equal(ang, geometry.angle(t, i, j, k))
    assert torch.equal(tors, geometry.dihedral(t, i, j, k, l))
    assert torch.equal(bond, geometry.distance(t, i, j))


@pytest.mark.parametrize("third", [[-1.0, 0.0, 0.0], [2.0, 0.0, 0.0], [-1.0, 1e-9, 0.0], [-1.0, 0.0, 1e-300]])
def test_angle_gradient_finite_at_collinear(third):
    x = torch.tensor([[[1.0, 0, 0], [0, 0, 0], third]], dtype=torch.float64, requires_grad=True)
    a = geometry.angle(x, 0, 1, 2)
    (g,) = torch.autograd.grad(a.sum(), x)
    assert torch.isfinite(g).all()
    assert a.item() == pytest.approx(0.0 if third[0] > 0 else np.pi, abs=2e-9)


@pytest.mark.parametrize("last, expected", [([1.0, 1, 0], 0.0), ([-1.0, 1, 0], np.pi),
                                            ([-1.0, 1, 1e-12], -np.pi), ([1.0, 1, 1e-12], 0.0)])
def test_dihedral_gradient_finite_at_planar(last, expected):
    x = torch.tensor([[[1.0, 0, 0], [0, 0, 0], [0, 1, 0], last]], dtype=torch.float64, requires_grad=True)
    d = geometry.dihedral(x, 0, 1, 2, 3)
    (g,) = torch.autograd.grad(d.sum(), x)
    assert torch.isfinite(g).all() and g.abs().max() > 0.5  # the planar dihedral still moves
    assert d.item() == pytest.approx(expected, abs=1e-11)


def test_gradients_agree_with_finite_differences():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(3, 4, 3, generator=g, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: geometry.dihedral(t, 0, 1, 2, 3), (x,))
    assert torch.autograd.gradcheck(lambda t: geometry.angle(t, 0, 1, 2), (x,))


def test_vector_functions_take_the_cartesian_axis_anywhere():
    g = torch.Generator().manual_seed(2)
    b = torch.randn(3, 5, 3, generator=g, dtype=torch.float64)  # [bond, batch, xyz]
    last = geometry.bond_dihedral(b[0], b[1], b[2])
    first = geometry.bond_dihedral(b[0].T, b[1].T, b[2].T, dim=0)  # [xyz, batch]
    assert torch.allclose(last, first)
    assert torch.allclose(geometry.vector_angle(b[0], b[1]), geometry.vector_angle(b[0].T, b[1].T, dim=0))
    assert np.allclose(geometry.vector_angle(np.array([1.0, 0, 0]), np.array([0.0, 0, 2])), np.pi / 2)


def test_nan_input_gives_nan_not_a_number():
    x = np.full((1, 4, 3), np.nan)
    assert np.isnan(geometry.dihedral(x, 0, 1, 2, 3)).all() and np.isnan(geometry.angle(x, 0, 1, 2)).all()
