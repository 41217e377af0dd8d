"""Bond/angle/torsion ops agree with mdtraj and NeRF placement inverts them."""

from __future__ import annotations

import mdtraj
import numpy as np
import torch

import openmm_bg.systems as bgs
from openmm_bg.transforms import build_zmatrix
from openmm_bg.transforms.internal import (
    bond_angles,
    bond_lengths,
    internal_coordinates,
    place_atoms,
    torsions,
)


def test_internal_coordinates_match_mdtraj_and_place_inverts():
    ala = bgs.load("alanine_dipeptide")
    g = torch.Generator().manual_seed(0)
    x = torch.as_tensor(ala.positions) + 0.02 * torch.randn(6, 22, 3, generator=g, dtype=torch.float64)
    rows = build_zmatrix(ala.topology).rows
    i, j, k, l = torch.as_tensor(rows, dtype=torch.long).unbind(1)
    b, a, t = internal_coordinates(x, i, j, k, l)
    traj = mdtraj.Trajectory(x.numpy(), ala.mdtraj_topology)
    assert np.allclose(b.numpy(), mdtraj.compute_distances(traj, rows[:, :2]), atol=1e-6)
    assert np.allclose(a.numpy(), mdtraj.compute_angles(traj, rows[:, :3]), atol=1e-5)
    assert np.allclose(t.numpy(), mdtraj.compute_dihedrals(traj, rows), atol=1e-5)
    assert torch.allclose(b, bond_lengths(x, i, j)) and torch.allclose(a, bond_angles(x, i, j, k))
    assert torch.allclose(t, torsions(x, i, j, k, l))
    placed = place_atoms(x[:, j], x[:, k], x[:, l], b, a, t)
    assert (placed - x[:, i]).abs().max() < 1e-12


def test_angles_exact_near_linear_without_clamping():
    x = torch.tensor([[[1.0, 0, 0], [0, 0, 0], [-1.0, 1e-9, 0], [0, 0, 0]]], dtype=torch.float64)
    idx = [torch.tensor([v]) for v in (0, 1, 2)]
    a = bond_angles(x, *idx)
    assert 0 < np.pi - a.item() < 2e-9
    assert bond_angles(x, torch.tensor([0]), torch.tensor([1]), torch.tensor([3])).item() == 0.0  # zero bond
