"""TorsionMove: rotors, the von Mises mixture, detailed balance on a one-torsion rotor, MD mixing."""

from __future__ import annotations

import copy
import math

import numpy as np
import openmm
import openmm.unit as unit
import pytest
from openmmtools import mcmc, states
from openmmtools.utils import deserialize, serialize

from openmm_bg.mcmc import (
    FixmanFactor,
    Rotor,
    TorsionGroup,
    TorsionMixture,
    TorsionMove,
    set_torsions,
    side_chain_rotors,
    torsions_of,
)
from openmm_bg.systems import load

KT = 300.0 * unit.kelvin * unit.MOLAR_GAS_CONSTANT_R
KT_KJ = KT.value_in_unit(unit.kilojoule_per_mole)
K1, K3 = 2.0, 1.5  # torsion force constants in kT: U = K1 (1 + cos phi) + K3 (1 + cos 3 phi)


class _NoHastingsTorsionMove(TorsionMove):
    """Test-only: the same proposals accepted with min(1, exp(-du)) -- biased toward q."""

    def _log_proposal_ratio(self, proposed, current):
        return 0.0


# ---------------------------------------------------------------------------------------------- toy rotor
def _rotor_system():
    """Four carbons a-b-c-d: harmonic bonds and angles, a periodic torsion; no non-bonded terms."""
    system = openmm.System()
    for _ in range(4):
        system.addParticle(12.0)
    bonds = openmm.HarmonicBondForce()
    for i in range(3):
        bonds.addBond(i, i + 1, 0.153, 2.0e5)
    angles = openmm.HarmonicAngleForce()
    for i in range(2):
        angles.addAngle(i, i + 1, i + 2, math.radians(111.0), 500.0)
    tors = openmm.PeriodicTorsionForce()
    tors.addTorsion(0, 1, 2, 3, 1, 0.0, K1 * KT_KJ)
    tors.addTorsion(0, 1, 2, 3, 3, 0.0, K3 * KT_KJ)
    for f in (bonds, angles, tors):
        system.addForce(f)
    t = math.radians(111.0)
    x = np.array([[0.0, 0.0, 0.0], [0.153, 0.0, 0.0],
                  [0.153 - 0.153 * math.cos(t), 0.153 * math.sin(t), 0.0], [0.0, 0.0, 0.0]])
    x[3] = x[2] + (x[1] - x[0])  # trans: phi = pi
    return system, x


def _exact_bins(edges):
    phi = np.linspace(-np.pi, np.pi, 200001)[:-1]
    w = np.exp(-(K1 * (1 + np.cos(phi)) + K3 * (1 + np.cos(3 * phi))))
    w /= w.sum()
    return np.array([w[(phi >= a) & (phi < b)].sum() for a, b in zip(edges[:-1], edges[1:], strict=True)])


def _chain(move_cls, n_iter, md_steps=0, seed=0):
    system, x = _rotor_system()
    rotor = Rotor("toy", (0, 1, 2, 3), (3,))
    q = TorsionMixture(weights=[1.0], means=[[1.5]], concentrations=[[1.0]], uniform_weight=0.0)  # off target
    move = move_cls([TorsionGroup("toy", (rotor,), q)], n_proposals=4, seed=seed)
    thermo = states.ThermodynamicState(system, temperature=300 * unit.kelvin)
    sampler_state = states.SamplerState(x * unit.nanometer)
    full = move
    if md_steps:
        full = mcmc.SequenceMove([mcmc.LangevinDynamicsMove(timestep=1 * unit.femtosecond, n_steps=md_steps,
                                                            collision_rate=10 / unit.picosecond), move])
    cache = __import__("openmmtools").cache.ContextCache(platform=openmm.Platform.getPlatformByName("Reference"))
    phis = np.empty(n_iter)
    for it in range(n_iter):
        full.apply(thermo, sampler_state, context_cache=cache)
        phis[it] = rotor.torsion(np.asarray(sampler_state.positions.value_in_unit(unit.nanometer)))
    return phis, move


def _z_scores(phis, n_batches=20):
    edges = np.linspace(-np.pi, np.pi, 7)
    exact = _exact_bins(edges)
    ind = np.stack([(phis >= a) & (phis < b) for a, b in zip(edges[:-1], edges[1:], strict=True)], 1).astype(float)
    batches = ind[: len(ind) // n_batches * n_batches].reshape(n_batches, -1, ind.shape[1]).mean(1)
    mean = batches.mean(0)
    se = batches.std(0, ddof=1) / math.sqrt(n_batches)
    return (mean - exact) / np.maximum(se, 1e-12), exact, mean


def test_detailed_balance_one_torsion_rotor():
    """Only the torsion moves: the chain's torsion histogram is the Boltzmann density exp(-U(phi)) (quadrature),
    with a deliberately off-target von Mises proposal; without the Hastings term the chain is biased > 5 SE."""
    phis, move = _chain(TorsionMove, 1500)
    z, exact, mean = _z_scores(phis)
    assert 0.05 < move.acceptance_rate < 0.95
    assert np.max(np.abs(z)) < 4.5, (z, exact, mean)
    phis_b, _ = _chain(_NoHastingsTorsionMove, 1500)
    z_b, _, mean_b = _z_scores(phis_b)
    assert np.max(np.abs(z_b)) > 5.0, (z_b, exact, mean_b)


@pytest.mark.slow
def test_torsion_move_with_langevin_sequence_move():
    """SequenceMove(LangevinDynamicsMove, TorsionMove): the torsion marginal stays exp(-U(phi))."""
    phis, move = _chain(TorsionMove, 2500, md_steps=10, seed=3)
    z, exact, mean = _z_scores(phis)
    assert move.n_accepted > 100
    assert np.max(np.abs(z)) < 4.5, (z, exact, mean)


# ---------------------------------------------------------------------------------------------- rotors
@pytest.fixture(scope="module")
def trpzip():
    return load("trpzip2")


def test_side_chain_rotors_trpzip2(trpzip):
    rotors = side_chain_rotors(trpzip.topology)
    names = [r.name for r in rotors]
    assert names[:5] == ["SER1 chi1", "TRP2 chi1", "TRP2 chi2", "THR3 chi1", "TRP4 chi1"]
    assert "TRP2 chi3" not in names and not any(n.startswith("GLY") for n in names)  # rings, glycine
    assert sum(n.startswith("LYS8") for n in names) == 4
    top = list(trpzip.topology.atoms())
    thr = rotors[3]
    assert [top[a].name for a in thr.atoms] == ["N", "CA", "CB", "OG1"]
    with_h = side_chain_rotors(trpzip.topology, hydrogens=True)
    assert len(with_h) > len(rotors)  # methyl, hydroxyl, amine rotors


def test_set_torsions_rigid_branches(trpzip):
    lys = [r for r in side_chain_rotors(trpzip.topology) if r.name.startswith("LYS8")]
    x0 = trpzip.positions
    target = np.array([0.3, -2.0, 2.9, -1.0])
    x = set_torsions(x0, lys, target)
    assert np.allclose(torsions_of(x, lys), target, atol=1e-10)
    # every bonded distance is unchanged, the atoms outside the chi1 branch did not move
    for a, b in ((b.atom1.index, b.atom2.index) for b in trpzip.topology.bonds()):
        assert abs(np.linalg.norm(x[a] - x[b]) - np.linalg.norm(x0[a] - x0[b])) < 1e-10
    fixed = np.setdiff1d(np.arange(trpzip.n_atoms), lys[0].moving)
    assert np.array_equal(x[fixed], x0[fixed])
    assert not np.allclose(x, x0)


def test_methyl_rotor_keeps_constraints_and_fixman():
    ala = load("alanine_dipeptide", constraints="hbonds")
    rotor = side_chain_rotors(ala.topology, hydrogens=True)
    x = set_torsions(ala.positions, rotor, [0.4])
    for i, j, _ in ala.constraints:
        assert abs(np.linalg.norm(x[i] - x[j]) - np.linalg.norm(ala.positions[i] - ala.positions[j])) < 1e-12
    f = FixmanFactor(ala.constraints, ala.masses)
    assert f.active
    assert abs(float(f(x[None])[0] - f(ala.positions[None])[0])) < 1e-10


def test_rotor_bad_input():
    with pytest.raises(ValueError, match="distinct"):
        Rotor("r", (0, 1, 1, 2), (2,))
    with pytest.raises(ValueError, match="last atom"):
        Rotor("r", (0, 1, 2, 3), (4,))
    with pytest.raises(ValueError, match="values"):
        set_torsions(np.zeros((4, 3)), [Rotor("r", (0, 1, 2, 3), (3,))], [0.0, 1.0])


# ---------------------------------------------------------------------------------------------- mixture
def test_mixture_normalised_2d_and_sampling_matches_density():
    q = TorsionMixture(weights=[0.7, 0.3], means=[[0.0, 1.0], [2.5, -2.0]], concentrations=[[3.0, 8.0], [1.0, 2.0]],
                       uniform_weight=0.1)
    g = np.linspace(-np.pi, np.pi, 401)[:-1]
    grid = np.stack(np.meshgrid(g, g, indexing="ij"), -1).reshape(-1, 2)
    assert abs(np.exp(q.log_prob(grid)).sum() * (2 * np.pi / 400) ** 2 - 1.0) < 1e-6
    s = q.sample(40000, np.random.default_rng(0))
    # the fraction of samples in a box vs the density's integral there
    box = (np.abs(s[:, 0]) < 0.5) & (np.abs(s[:, 1] - 1.0) < 0.5)
    in_box = (np.abs(grid[:, 0]) < 0.5) & (np.abs(grid[:, 1] - 1.0) < 0.5)
    p = np.exp(q.log_prob(grid[in_box])).sum() * (2 * np.pi / 400) ** 2
    assert abs(box.mean() - p) < 5 * math.sqrt(p * (1 - p) / len(s))


def test_mixture_fit_recovers_rotamers_and_round_trips():
    rng = np.random.default_rng(2)
    phi = np.concatenate([np.stack([rng.vonmises(-1.0, 10, 600), rng.vonmises(3.0, 20, 600)], 1),
                          np.stack([rng.vonmises(1.1, 10, 400), rng.vonmises(-0.5, 20, 400)], 1)])
    q = TorsionMixture.fit(phi, n_components=2, uniform_weight=0.02)
    order = np.argsort(q.means[:, 0])
    assert np.allclose(q.means[order], [[-1.0, 3.0], [1.1, -0.5]], atol=0.1)
    assert np.allclose(q.weights[order] / 0.98, [0.6, 0.4], atol=0.05)
    r = TorsionMixture.from_dict(q.to_dict())
    assert np.allclose(r.log_prob(phi[:10]), q.log_prob(phi[:10]), rtol=0, atol=1e-12)
    assert q.log_prob(phi[:3]).dtype == np.float64


def test_mixture_bad_input():
    with pytest.raises(ValueError, match="uniform_weight"):
        TorsionMixture([1.0], [[0.0]], [[1.0]], uniform_weight=1.0)
    with pytest.raises(ValueError, match="concentrations"):
        TorsionMixture([1.0], [[0.0]], [[-1.0]])
    with pytest.raises(ValueError, match=r"\[K, d\]"):
        TorsionMixture([1.0, 1.0], [[0.0]], [[1.0]])
    with pytest.raises(ValueError, match="finite"):
        TorsionMixture.fit(np.array([[np.nan], [0.0]]))
    with pytest.raises(ValueError, match="expected torsions"):
        TorsionMixture([1.0], [[0.0]], [[1.0]]).log_prob(np.zeros((3, 2)))


# ---------------------------------------------------------------------------------------------- the move on a protein
def test_fit_on_trpzip2_groups_and_serialisation(trpzip):
    rng = np.random.default_rng(0)
    rotors = side_chain_rotors(trpzip.topology)
    frames = np.stack([set_torsions(trpzip.positions, rotors, torsions_of(trpzip.positions, rotors)
                                    + rng.normal(0, 0.2, len(rotors))) for _ in range(30)])
    move = TorsionMove.fit(trpzip, frames, n_components=2, n_proposals=3, seed=1)
    assert [g.name for g in move.groups] == ["SER1", "TRP2", "THR3", "TRP4", "GLU5", "ASN6", "LYS8", "TRP9",
                                             "THR10", "TRP11", "LYS12"]
    assert [g.density.dim for g in move.groups][:2] == [1, 2]
    thermo = states.ThermodynamicState(trpzip.system, temperature=300 * unit.kelvin)
    sampler_state = states.SamplerState(trpzip.positions * unit.nanometer)
    move.apply(thermo, sampler_state)
    assert move.n_proposed == 3 and sum(p for _, p in move.group_statistics.values()) == 3
    restored = deserialize(serialize(move))
    assert isinstance(restored, TorsionMove) and restored.n_proposed == 3
    assert restored.groups[1].rotors == move.groups[1].rotors
    assert np.allclose(restored.groups[1].density.means, move.groups[1].density.means)
    twin = copy.deepcopy(move)
    assert twin._stream == [0]


def test_move_bad_input(trpzip):
    with pytest.raises(ValueError, match="TorsionGroup"):
        TorsionMove([])
    q = TorsionMixture([1.0], [[0.0, 0.0]], [[1.0, 1.0]])
    with pytest.raises(ValueError, match="2 torsions"):
        TorsionGroup("g", (Rotor("r", (0, 1, 2, 3), (3,)),), q)
    with pytest.raises(ValueError, match="frames"):
        TorsionMove.fit(trpzip, np.zeros((3, 10, 3)))
    system, x = _rotor_system()
    big = TorsionMove([TorsionGroup("g", (Rotor("r", (0, 1, 2, 9), (9,)),), TorsionMixture([1.0], [[0.0]], [[1.0]]))])
    thermo = states.ThermodynamicState(system, temperature=300 * unit.kelvin)
    with pytest.raises(ValueError, match="particles"):
        big.apply(thermo, states.SamplerState(x * unit.nanometer))
