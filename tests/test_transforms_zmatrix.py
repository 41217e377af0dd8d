"""Z-matrix construction on the built-in molecules and openmmtools' T4 lysozyme."""

from __future__ import annotations

import time

import mdtraj
import numpy as np
import openmm.app as app
import pytest
import torch
from openmmtools.testsystems import get_data_filename

import openmm_bg.systems as bgs
from openmm_bg.transforms import DisconnectedTopologyError, MixedTransform, ZMatrix, build_zmatrix

T4 = "data/T4-lysozyme-L99A-implicit/"


def _topology(name):
    if name == "lysozyme":
        return app.AmberPrmtopFile(get_data_filename(T4 + "receptor.prmtop")).topology
    if name == "ala_amber96":
        return bgs.load("alanine_dipeptide").topology
    if name == "ala_amber14":
        return bgs.load("alanine_dipeptide", forcefield="amber14").topology
    if name == "ligand":
        return app.AmberPrmtopFile(get_data_filename(T4 + "ligand.prmtop")).topology
    return bgs.load(name).topology


def check_zmatrix(zm: ZMatrix, topology) -> None:
    """Properties every Z-matrix must have, checked independently of ZMatrix.validate."""
    n = topology.getNumAtoms()
    bonds = {frozenset((b[0].index, b[1].index)) for b in topology.bonds()}
    core = zm.core.tolist()
    placed = zm.rows[:, 0].tolist()
    assert zm.n_atoms == n
    assert sorted(core + placed) == list(range(n)), "every atom core or placed exactly once"
    position = {a: p for p, a in enumerate(core + placed)}
    for i, j, k, l in zm.rows:
        assert len({i, j, k, l}) == 4
        assert position[j] < position[i] and position[k] < position[i] and position[l] < position[i]
        assert frozenset((i, j)) in bonds, "bond partner must be bonded"
    zm.validate()


@pytest.mark.parametrize("name", ["ala_amber96", "ala_amber14", "trpzip2", "lysozyme", "ligand"])
def test_zmatrix_properties(name):
    top = _topology(name)
    zm = build_zmatrix(top)
    check_zmatrix(zm, top)
    # heavy atoms only ever reference heavy atoms (hydrogens are placed last)
    heavy_rows = zm.rows[~zm.is_hydrogen[zm.rows[:, 0]]]
    assert not zm.is_hydrogen[heavy_rows[:, 1:]].any()


@pytest.mark.parametrize("forcefield", ["amber96", "amber14"])
def test_alanine_phi_psi_are_torsions(forcefield):
    ala = bgs.load("alanine_dipeptide", forcefield=forcefield)
    zm = build_zmatrix(ala.topology)
    assert zm.core.tolist() == [6, 8, 14]  # N, CA, C of ALA
    for atoms in [(4, 6, 8, 14), (6, 8, 14, 16)]:
        r = zm.find_torsion(*atoms)
        assert r is not None, f"torsion {atoms} missing"
        assert zm.proper[r]


def test_methyl_hydrogens_share_one_rotatable_torsion():
    zm = build_zmatrix(_topology("ala_amber96"))
    for carbon, hydrogens in [(10, (11, 12, 13)), (1, (0, 2, 3)), (18, (19, 20, 21))]:
        rows = [r for r in zm.rows if r[0] in hydrogens]
        assert all(r[1] == carbon for r in rows)
        first = rows[0]
        assert first[3] not in hydrogens  # the rotatable one references heavy atoms
        for r in rows[1:]:
            assert r[2] == first[2] and r[3] == first[0], "others are placed relative to the first"


def test_protein_backbone_core_and_side_chain_chi():
    top = _topology("trpzip2")
    zm = build_zmatrix(top)
    names = [(a.residue.index, a.name) for a in top.atoms()]
    assert zm.n_core == 36 and all(names[a][1] in ("N", "CA", "C") for a in zm.core)
    index = {k: a for a, k in enumerate(names)}
    # chi1 of TRP2: N-CA-CB-CG, chi2: CA-CB-CG-CD1 or CD2
    chi1 = (index[(1, "CG")], index[(1, "CB")], index[(1, "CA")], index[(1, "N")])
    assert zm.find_torsion(*chi1) is not None
    cg_children = [r for r in zm.rows if r[1] == index[(1, "CG")] and r[2] == index[(1, "CB")]]
    assert cg_children and cg_children[0][3] == index[(1, "CA")]


def test_lysozyme_is_fast():
    top = _topology("lysozyme")
    t0 = time.perf_counter()
    zm = build_zmatrix(top)
    elapsed = time.perf_counter() - t0
    assert zm.n_atoms == 2603 and zm.n_core == 3 * 162
    assert elapsed < 5.0, f"Z-matrix of 2603 atoms took {elapsed:.1f} s"


def test_disconnected_topology_raises_clear_error():
    top = app.AmberPrmtopFile(get_data_filename(T4 + "complex.prmtop")).topology
    with pytest.raises(DisconnectedTopologyError, match="2 components"):
        build_zmatrix(top)


def test_mdtraj_topology_gives_same_zmatrix():
    top = _topology("trpzip2")
    a = build_zmatrix(top)
    b = build_zmatrix(mdtraj.Topology.from_openmm(top))
    assert np.array_equal(a.rows, b.rows) and np.array_equal(a.core, b.core)


def test_small_molecule_gets_small_heavy_core():
    top = _topology("ligand")
    zm = build_zmatrix(top)
    assert zm.n_core == 3
    assert not zm.is_hydrogen[zm.core].any()
    bonds = {frozenset((b[0].index, b[1].index)) for b in top.bonds()}
    c0, c1, c2 = zm.core
    assert frozenset((c0, c1)) in bonds and frozenset((c0, c2)) in bonds


def test_user_core_selection_and_errors():
    top = _topology("ala_amber96")
    zm = build_zmatrix(top, cartesian="element C")
    assert zm.core.tolist() == [1, 4, 8, 10, 14, 18]
    check_zmatrix(zm, top)
    zm = build_zmatrix(top, cartesian=[1, 4, 6])
    assert zm.core.tolist() == [1, 4, 6]
    check_zmatrix(zm, top)
    with pytest.raises(ValueError, match="at least 3"):
        build_zmatrix(top, cartesian=[1, 4])
    with pytest.raises(ValueError, match="backbone"):
        build_zmatrix(_topology("ligand"), cartesian="backbone")
    with pytest.raises(TypeError):
        build_zmatrix("not a topology")


def _acetonitrile():
    """CH3-C#N: a linear C-C-N group, the case where naive references are collinear."""
    top = app.Topology()
    res = top.addResidue("ACN", top.addChain())
    el = app.element
    heavy = [("C1", el.carbon), ("C2", el.carbon), ("N", el.nitrogen)]
    c1, c2, n = (top.addAtom(a, e, res) for a, e in heavy)
    hs = [top.addAtom(f"H{i}", el.hydrogen, res) for i in range(3)]
    for a, b in [(c1, c2), (c2, n)] + [(c1, h) for h in hs]:
        top.addBond(a, b)
    pos = [[0.0, 0, 0], [0.146, 0, 0], [0.261, 0, 0]]
    for i in range(3):
        ang = 2 * np.pi * i / 3
        pos.append([-0.036, 0.103 * np.cos(ang), 0.103 * np.sin(ang)])
    return top, np.array(pos)


def test_linear_references_avoided_with_positions():
    top, pos = _acetonitrile()

    def angle(a, b, c):
        u, v = pos[a] - pos[b], pos[c] - pos[b]
        return np.degrees(np.arctan2(np.linalg.norm(np.cross(u, v)), u @ v))

    naive = build_zmatrix(top)
    c0, c1, c2 = naive.core
    assert angle(c1, c0, c2) > 175  # without positions the frame atoms are collinear
    zm = build_zmatrix(top, positions=pos)
    check_zmatrix(zm, top)
    c0, c1, c2 = zm.core
    assert 5 < angle(c1, c0, c2) < 175
    for i, j, k, l in zm.rows:
        assert 5 < angle(i, j, k) < 175 and 5 < angle(j, k, l) < 175
    # and the transform built from it is exact and finite
    frames = pos + 0.003 * np.random.default_rng(0).normal(size=(30, 6, 3))
    t = MixedTransform(zm, frames)
    x = torch.as_tensor(frames[:5])
    y, ld, rot, trans = t.inverse(x, return_frame=True)
    x2, ld2 = t.forward(y, rot, trans)
    assert torch.isfinite(ld).all() and (x2 - x).abs().max() < 1e-10
