"""Stereocentre detection and inverted samples."""

from __future__ import annotations

import mdtraj
import numpy as np
import torch

import openmm_bg.systems as bgs
from openmm_bg.transforms import random_rotation, stereocentres


def test_alanine_ca_is_the_only_stereocentre_and_mirror_is_flagged():
    for ff in ("amber96", "amber14"):
        ala = bgs.load("alanine_dipeptide", forcefield=ff)
        sc = stereocentres(ala.topology, ala.positions)
        assert sc.atoms.tolist() == [8] and sc.names == ("ALA2:CA",)
        x = np.stack([ala.positions, ala.positions * [1.0, -1.0, 1.0], -ala.positions])
        assert sc.any_inverted(x).tolist() == [False, True, True]  # inversion through a point mirrors too


def test_rotations_and_noise_keep_chirality_torch_input():
    ala = bgs.load("alanine_dipeptide")
    sc = stereocentres(ala.topology, ala.positions)
    g = torch.Generator().manual_seed(0)
    rot = random_rotation(50, generator=g, dtype=torch.float64)
    x = torch.as_tensor(ala.positions) @ rot.transpose(-1, -2) + 0.005 * torch.randn(50, 22, 3, generator=g,
                                                                                       dtype=torch.float64)
    inv = sc.any_inverted(x)
    assert isinstance(inv, torch.Tensor) and not inv.any()
    x[3, 8] = float("nan")
    assert sc.any_inverted(x).tolist() == [i == 3 for i in range(50)]


def test_swapping_two_substituents_inverts():
    ala = bgs.load("alanine_dipeptide")
    sc = stereocentres(ala.topology, ala.positions)
    x = ala.positions.copy()
    ca, cb, ha = 8, 10, 9
    # reflect HA and CB through the plane N-CA-C: the L -> D inversion
    n, c = x[6] - x[ca], x[14] - x[ca]
    normal = np.cross(n, c) / np.linalg.norm(np.cross(n, c))
    for a in (cb, ha, 11, 12, 13):
        v = x[a] - x[ca]
        x[a] = x[ca] + v - 2 * (v @ normal) * normal
    assert sc.inverted(x[None]).tolist() == [[True]]


def test_trpzip2_stereocentres():
    tz = bgs.load("trpzip2")
    sc = stereocentres(mdtraj.Topology.from_openmm(tz.topology), tz.positions)
    names = set(sc.names)
    residues = [r.name for r in tz.topology.residues()]
    expected_ca = {f"{r}{i + 1}:CA" for i, r in enumerate(residues) if r != "GLY"}
    expected_cb = {f"{r}{i + 1}:CB" for i, r in enumerate(residues) if r == "THR"}
    assert names == expected_ca | expected_cb
    # no methyl / methylene carbon
    elements = [a.element.symbol for a in tz.topology.atoms()]
    for a in sc.atoms:
        nbrs = [b for bond in tz.topology.bonds() for b in (bond[0].index, bond[1].index)
                if a in (bond[0].index, bond[1].index) and b != a]
        assert sum(elements[b] == "H" for b in nbrs) <= 1
