"""valid_samples: each check catches its defect on trpzip2, the native structure passes."""

import numpy as np
import pytest

from openmm_bg.analysis.validity import peptide_omegas, ring_closure_bonds, valid_samples
from openmm_bg.mcmc.rotors import Rotor, _branch
from openmm_bg.systems import load
from openmm_bg.systems.graph import topology_graph


@pytest.fixture(scope="module")
def trpzip():
    return load("trpzip2")


def test_native_valid_and_each_defect_detected(trpzip):
    x0 = trpzip.positions
    names = [a.name for a in trpzip.topology.atoms()]
    mirror = x0 * [-1.0, 1.0, 1.0]
    clash = x0.copy()
    nz = names.index("NZ")  # lysine's amine N: no stereocentre moves with it
    clash[nz] = clash[names.index("CA")] + [0.15, 0.0, 0.0]
    ring = x0.copy()
    a, b = ring_closure_bonds(trpzip.topology)[0]
    ring[b] = ring[a] + 1.3 * (ring[b] - ring[a])
    # cis peptide: turn everything on the N side of the 5th peptide bond by pi about C-N
    ca1, c, n, ca2 = peptide_omegas(trpzip.topology)[5]
    _, _, _, _, bonds = topology_graph(trpzip.topology)
    adj = [[] for _ in range(trpzip.n_atoms)]
    for p, q in bonds:
        adj[p].append(q)
        adj[q].append(p)
    moving = sorted(_branch(adj, int(c), int(n)) - {int(n)})
    cis = Rotor("omega", (int(ca1), int(c), int(n), int(ca2)), moving).rotate(x0, np.pi)
    x = np.stack([x0, mirror, clash, ring, cis, x0])
    r = valid_samples(trpzip, x, energies=[1.0, 1.0, 1.0, 1.0, 1.0, np.inf], reference=x0[None])
    assert r.n_peptide_bonds == 11 and r.n_ring_bonds == 8
    assert r.valid.tolist() == [True, False, False, False, False, False]
    assert r.stereo_ok.tolist() == [True, False, True, True, True, True]
    assert not r.no_clash[2] and r.min_heavy_distance[2] < 0.2
    assert r.rings_ok.tolist() == [True, True, True, False, True, True]
    assert r.trans_ok.tolist() == [True, True, True, True, False, True]
    assert r.finite_energy.tolist() == [True] * 5 + [False]
    assert r.fraction["valid"] == pytest.approx(1 / 6)


def test_energies_computed_when_not_given(trpzip):
    r = valid_samples(trpzip, trpzip.positions[None])
    assert r.valid.tolist() == [True]


def test_bad_input(trpzip):
    with pytest.raises(ValueError, match="x must be"):
        valid_samples(trpzip, np.zeros((2, 5, 3)))
    with pytest.raises(ValueError, match="energies"):
        valid_samples(trpzip, trpzip.positions[None], energies=[1.0, 2.0])


# ---------------------------------------------------------------------------------------------- protein observables
def test_backbone_rmsd_matches_mdtraj(trpzip):
    import mdtraj

    from openmm_bg.analysis.protein import backbone_atoms, backbone_rmsd

    rng = np.random.default_rng(0)
    x = trpzip.positions[None] + rng.normal(0, 0.03, (4, trpzip.n_atoms, 3))
    ours = backbone_rmsd(x, trpzip.positions, trpzip.topology)
    top = mdtraj.Topology.from_openmm(trpzip.topology)
    idx = backbone_atoms(trpzip.topology)
    ref = mdtraj.rmsd(mdtraj.Trajectory(x, top), mdtraj.Trajectory(trpzip.positions[None], top), atom_indices=idx,
                      precentered=False)
    assert len(idx) == 36
    assert np.allclose(ours, ref, atol=1e-5)
    with pytest.raises(ValueError, match="backbone"):
        backbone_rmsd(load("double_well").positions[None], load("double_well").positions, load("double_well").topology)
    # a frame with NaN (an out-of-domain sample) gets NaN, the others their RMSD
    bad = x.copy()
    bad[1, idx[4]] = np.nan
    mixed = backbone_rmsd(bad, trpzip.positions, trpzip.topology)
    assert np.isnan(mixed[1]) and np.allclose(mixed[[0, 2, 3]], ours[[0, 2, 3]], rtol=0, atol=1e-12)


def test_rotamers_and_core_transitions():
    from openmm_bg.analysis.protein import core_transitions, rotamer_populations, rotamer_states

    deg = np.radians
    chi = np.stack([deg([60, 70, 105, 60, 179, -179, 125, -60]), deg([180, 150, 130, 100, 90, 80, 60, 60])], 1)
    assert rotamer_states(chi)[:, 0].tolist() == [0, 0, -1, 0, 1, 1, -1, 2]
    # recrossing into the same core (105 -> 60) is not a transition; 60 -> t -> g- is two
    assert core_transitions(chi).tolist() == [2, 1]
    pops = rotamer_populations(chi)
    assert np.allclose(pops.sum(1), 1.0) and pops[0].tolist() == [4 / 8, 3 / 8, 1 / 8]
    # weights; a NaN torsion (out-of-domain sample) is left out, never counted as g+
    w = np.array([1.0, 0, 0, 0, 3, 0, 0, 0])
    assert rotamer_populations(chi, w)[0].tolist() == [1 / 4, 3 / 4, 0.0]
    with_nan = chi.copy()
    with_nan[0, 0] = np.nan
    assert np.allclose(rotamer_populations(with_nan)[0], [3 / 7, 3 / 7, 1 / 7])
    with pytest.raises(ValueError, match="weights"):
        rotamer_populations(chi, -w)
