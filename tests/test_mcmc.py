"""openmmtools integration: Boltzmann-Generator MCMC moves (openmm_bg.mcmc).

Statistical tests use fixed seeds and >= 4.5 sigma tolerances, with standard errors from batch means.
"""

from __future__ import annotations

import copy
import json
import math
import os
import time
from pathlib import Path

import numpy as np
import openmm
import openmm.app as app
import openmm.unit as unit
import pytest
import torch
from openmmtools import cache, mcmc, states
from openmmtools.utils import deserialize, serialize

import openmm_bg
from openmm_bg.energy import energy_for
from openmm_bg.mcmc import (
    BoltzmannGeneratorMove,
    FixmanFactor,
    LatentMetropolisMove,
    clear_model_cache,
    fixman_log_factor,
)
from openmm_bg.model.generator import ModelMismatchError
from openmm_bg.systems import from_openmm, load

REFERENCE = openmm.Platform.getPlatformByName("Reference")
N_SIGMA = 4.5


def _context_cache() -> cache.ContextCache:
    return cache.ContextCache(platform=REFERENCE, capacity=4)


def _batch_mean(values: np.ndarray, n_batches: int = 20) -> tuple[float, float]:
    v = np.asarray(values, dtype=np.float64)
    v = v[: len(v) // n_batches * n_batches].reshape(n_batches, -1).mean(1)
    return float(v.mean()), float(v.std(ddof=1) / math.sqrt(n_batches))


def _run(move, thermo, positions, n_apply, record, context_cache=None):
    ss = states.SamplerState(positions)
    cc = context_cache or _context_cache()
    out = []
    for _ in range(n_apply):
        move.apply(thermo, ss, context_cache=cc)
        out.append(record(ss.positions.value_in_unit(unit.nanometer)))
    return np.array(out), ss


# ----------------------------------------------------------------------------------------- double well
def _double_well_exact(temperature: float) -> dict:
    """Quadrature of the double well at ``temperature`` (the potential is in kT at 300 K)."""
    x = np.linspace(-4.0, 4.0, 400_001)
    w = np.exp(-(x**4 - 6 * x**2 + x) * 300.0 / temperature)
    w /= w.sum()
    return {"right": float(w[x > 0].sum()), "mean_x1": float((x * w).sum())}


@pytest.fixture(scope="module")
def double_well():
    """An imperfect generator: untrained, built on 80 % left-well and 20 % right-well frames."""
    dw = load("double_well")
    # Reference platform: the same data (and so the same generator) on every machine
    left = openmm_bg.simulate(dw, n_frames=400, stride=10, seed=0, platform="Reference", progress=False)
    right = openmm_bg.simulate(dw, n_frames=100, stride=10, seed=1, positions=np.array([[1.7, 0.0, 0.0]]),
                               platform="Reference", progress=False)
    data = np.concatenate([left.xyz, right.xyz])
    gen = openmm_bg.BoltzmannGenerator.build(dw, data, n_blocks=2, hidden=(16,), seed=0)
    return dw, gen


_SEEDED_CHAIN = """
import sys
import numpy as np
import openmm.unit as unit
from openmmtools import cache, mcmc, states
import openmm, openmm_bg
from openmm_bg.mcmc import BoltzmannGeneratorMove
from openmm_bg.systems import load
dw = load("double_well")
gen = openmm_bg.BoltzmannGenerator.load(sys.argv[1], dw)
move = BoltzmannGeneratorMove(gen, n_proposals=4, seed=7)
thermo = states.ThermodynamicState(dw.system, temperature=300 * unit.kelvin)
ss = states.SamplerState(dw.positions * unit.nanometer)
cc = cache.ContextCache(platform=openmm.Platform.getPlatformByName("Reference"), capacity=2)
for _ in range(6):
    move.apply(thermo, ss, context_cache=cc)
print(repr(ss.positions.value_in_unit(unit.nanometer)[0].tolist()), move.n_accepted)
"""


def test_a_seeded_move_draws_the_same_in_every_process(double_well, tmp_path):
    """openmmtools hashes the System with Python's per-process string hash; the move's random streams
    must not depend on it: two processes with different PYTHONHASHSEED give the same chain."""
    import subprocess
    import sys

    _, gen = double_well
    path = tmp_path / "dw.pt"
    gen.save(path)
    out = []
    for hash_seed in ("1", "2"):
        run = subprocess.run([sys.executable, "-c", _SEEDED_CHAIN, str(path)], capture_output=True, text=True,
                             timeout=300, env={**os.environ, "PYTHONHASHSEED": hash_seed})
        assert run.returncode == 0, run.stderr[-2000:]
        out.append(run.stdout.strip().splitlines()[-1])
    assert out[0] == out[1], out


class _WithoutHastings(BoltzmannGeneratorMove):
    """Wrong on purpose: the acceptance drops the proposal densities (the Hastings term)."""

    def _log_proposal_ratio(self, proposed, current):
        return 0.0


def _dw_chain(gen, dw, temperature, n_apply, n_proposals=4, seed=3, move_class=BoltzmannGeneratorMove, **kw):
    thermo = states.ThermodynamicState(dw.system,
                                       temperature=temperature * unit.kelvin)
    move = move_class(gen, n_proposals=n_proposals, seed=seed, **kw)
    x1, _ = _run(move, thermo, dw.positions * unit.nanometer, n_apply, lambda x: x[0, 0])
    return x1, move


def test_bg_move_samples_double_well_exactly_and_fails_without_hastings(double_well):
    """Only the BG move, imperfect flow: exact well population and <x1>; dropping the Hastings term
    (proposal densities) gives a distribution biased towards the flow, detected by the same test."""
    dw, gen = double_well
    exact = _double_well_exact(300.0)
    results = {}
    for hastings in (True, False):
        x1, move = _dw_chain(gen, dw, 300.0, n_apply=1500, n_proposals=6,
                             move_class=BoltzmannGeneratorMove if hastings else _WithoutHastings)
        assert move.n_proposed == 1500 * 6
        right, right_se = _batch_mean(x1 > 0)
        mean, mean_se = _batch_mean(x1)
        z_right = abs(right - exact["right"]) / max(right_se, 1e-3)
        z_mean = abs(mean - exact["mean_x1"]) / max(mean_se, 1e-3)
        results[hastings] = (z_right, z_mean, move.acceptance_rate)
    z_right, z_mean, acc = results[True]
    assert 0.05 < acc < 0.9
    assert z_right < N_SIGMA and z_mean < N_SIGMA, results
    z_right, z_mean, _ = results[False]
    assert max(z_right, z_mean) > N_SIGMA, results  # the same test fails without the Hastings term


def test_bg_move_exact_at_another_temperature(double_well):
    """The state's reduced potential is the target: a 300 K generator samples 600 K exactly."""
    dw, gen = double_well
    exact = _double_well_exact(600.0)
    x1, move = _dw_chain(gen, dw, 600.0, n_apply=800, n_proposals=4, seed=5)
    right, right_se = _batch_mean(x1 > 0)
    assert abs(right - exact["right"]) < N_SIGMA * max(right_se, 1e-3), (right, right_se, exact)
    assert exact["right"] > 2 * _double_well_exact(300.0)["right"]  # really another distribution


def test_latent_move_is_exact(double_well):
    """The latent random walk (with Jacobian terms) samples the double well at 900 K exactly."""
    dw, gen = double_well
    exact = _double_well_exact(900.0)
    thermo = states.ThermodynamicState(dw.system, temperature=900 * unit.kelvin)
    move = LatentMetropolisMove(gen, step_size=0.8, n_steps=8, seed=11)
    x1, _ = _run(move, thermo, dw.positions * unit.nanometer, 600, lambda x: x[0, 0])
    assert 0.1 < move.acceptance_rate < 0.95
    mean, mean_se = _batch_mean(x1)
    right, right_se = _batch_mean(x1 > 0)
    assert abs(mean - exact["mean_x1"]) < N_SIGMA * max(mean_se, 1e-3), (mean, mean_se, exact)
    assert abs(right - exact["right"]) < N_SIGMA * max(right_se, 1e-3), (right, right_se, exact)


def test_acceptance_updates_sampler_state(double_well):
    """Accepted jumps: positions and energy from the context, velocities redrawn; confined z kept;
    same seed, same chain."""
    dw, gen = double_well
    thermo = states.ThermodynamicState(dw.system, temperature=300 * unit.kelvin)
    start = np.array([[-1.7, 0.1, 0.003]])
    ss = states.SamplerState(start * unit.nanometer,
                             velocities=np.zeros((1, 3)) * unit.nanometer / unit.picosecond)
    # ~15 % of proposals from the well's minimum are accepted: 200 of them all fail with p ~ 1e-12
    move = BoltzmannGeneratorMove(gen, n_proposals=200, seed=0)
    move.apply(thermo, ss, context_cache=_context_cache())
    assert move.n_accepted > 0
    x = ss.positions.value_in_unit(unit.nanometer)
    assert not np.allclose(x[0, :2], start[0, :2]) and x[0, 2] == pytest.approx(0.003)
    u = float(energy_for(dw, platform="Reference")(x[None])[0])
    assert thermo.reduced_potential(ss) == pytest.approx(u, abs=1e-6)
    v = ss.velocities.value_in_unit(unit.nanometer / unit.picosecond)
    assert np.any(v != 0)
    # reproducible
    again = states.SamplerState(start * unit.nanometer)
    move2 = BoltzmannGeneratorMove(gen, n_proposals=200, seed=0)
    move2.apply(thermo, again, context_cache=_context_cache())
    assert move2.statistics == move.statistics
    np.testing.assert_allclose(again.positions.value_in_unit(unit.nanometer), x)


# ----------------------------------------------------------------------------------------- Fixman factor
def test_fixman_factor_matches_gradients_of_constraints():
    """0.5 log det Z from explicit constraint gradients (autograd), up to the constant of
    single constraints, for alanine dipeptide with H-bond constraints."""
    ala = load("alanine_dipeptide", constraints="hbonds")
    cons, masses = ala.constraints, ala.masses
    rng = np.random.default_rng(0)
    xs = ala.positions[None] + 0.01 * rng.standard_normal((3, ala.n_atoms, 3))
    ours = fixman_log_factor(xs, cons, masses)
    full = []
    inv_m = torch.as_tensor(np.repeat(1.0 / masses, 3))
    for x in xs:
        xt = torch.as_tensor(x.reshape(-1))

        def g(flat):
            p = flat.reshape(-1, 3)
            return torch.stack([torch.linalg.norm(p[j] - p[i]) - d for i, j, d in cons])

        jac = torch.autograd.functional.jacobian(g, xt)  # [n_constraints, 3N]
        z = (jac * inv_m) @ jac.T
        full.append(0.5 * float(torch.linalg.slogdet(z)[1]))
    diff = np.array(full) - ours
    np.testing.assert_allclose(diff, diff[0], atol=1e-10)
    assert np.ptp(ours) > 1e-5  # methyl hydrogens share their carbon: not constant
    assert not FixmanFactor(load("alanine_dipeptide").constraints, masses).active
    assert not FixmanFactor([(0, 1, 0.1), (2, 3, 0.1)], np.ones(4)).active


def methyl_molecule(carbon_mass: float = 2.0) -> openmm_bg.systems.MolecularSystem:
    """A 7-atom CH3-C-C-C chain with constrained C-H bonds, heavy hydrogens (12 Da) and a light methyl
    carbon, so that the Fixman factor varies strongly with the H-C-H angles."""
    names, elements = ["C1", "H1", "H2", "H3", "C2", "C3", "C4"], ["C", "H", "H", "H", "C", "C", "C"]
    top = app.Topology()
    res = top.addResidue("MOL", top.addChain())
    atoms = [top.addAtom(n, app.Element.getBySymbol(e), res) for n, e in zip(names, elements, strict=True)]
    for a, b in [(0, 1), (0, 2), (0, 3), (0, 4), (4, 5), (5, 6)]:
        top.addBond(atoms[a], atoms[b])
    system = openmm.System()
    for m in [carbon_mass, 12.0, 12.0, 12.0, 12.0, 12.0, 12.0]:
        system.addParticle(m)
    bonds = openmm.HarmonicBondForce()
    for a, b in [(0, 4), (4, 5), (5, 6)]:
        bonds.addBond(a, b, 0.153, 2.0e5)
    system.addForce(bonds)
    for a, b in [(0, 1), (0, 2), (0, 3)]:
        system.addConstraint(a, b, 0.109)
    angles = openmm.HarmonicAngleForce()
    for a, b, c in [(1, 0, 2), (1, 0, 3), (2, 0, 3), (1, 0, 4), (2, 0, 4), (3, 0, 4)]:
        angles.addAngle(a, b, c, np.deg2rad(109.5), 150.0)
    for a, b, c in [(0, 4, 5), (4, 5, 6)]:
        angles.addAngle(a, b, c, np.deg2rad(112.0), 400.0)
    system.addForce(angles)
    torsion = openmm.PeriodicTorsionForce()
    torsion.addTorsion(0, 4, 5, 6, 3, 0.0, 2.0)
    system.addForce(torsion)
    pos = np.zeros((7, 3))
    pos[4], pos[5], pos[6] = [0.153, 0, 0], [0.2, 0.145, 0], [0.353, 0.15, 0.02]
    c = -1 / 3
    pos[1:4] = 0.109 * np.array([[c, math.sqrt(8 / 9), 0], [c, -math.sqrt(2 / 9), math.sqrt(2 / 3)],
                                 [c, -math.sqrt(2 / 9), -math.sqrt(2 / 3)]])
    return from_openmm(system, top, pos, temperature=300.0, name="methyl_chain")


def _cos_hch(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    x = x[None] if x.ndim == 2 else x
    out = []
    for a, b in [(1, 2), (1, 3), (2, 3)]:
        u, v = x[:, a] - x[:, 0], x[:, b] - x[:, 0]
        out.append((u * v).sum(-1) / np.linalg.norm(u, axis=-1) / np.linalg.norm(v, axis=-1))
    return np.mean(out, axis=0)


def methyl_chains(gen, ms, traj, n_chains: int, n_steps: int, **move_options):
    """Independent chains of `BoltzmannGeneratorMove` alone (4 proposals, seeds 1, 2, ...) from MD frames:
    each chain's cos(H-C-H) series, each move's acceptance rate, and the last chain's sampler state."""
    thermo = states.ThermodynamicState(ms.system, temperature=300 * unit.kelvin)
    cc = _context_cache()
    outs, accepted = [], []
    for c in range(n_chains):
        move = BoltzmannGeneratorMove(gen, n_proposals=4, seed=1 + c, **move_options)
        ss = states.SamplerState(traj.openmm_positions(c * (len(traj) // n_chains)))
        out = []
        for _ in range(n_steps):
            move.apply(thermo, ss, context_cache=cc)
            out.append(_cos_hch(ss.positions.value_in_unit(unit.nanometer))[0])
        assert move._fixman_term is not None
        accepted.append(move.acceptance_rate)
        outs.append(out)
    return outs, accepted, ss


@pytest.fixture(scope="module")
def methyl():
    ms = methyl_molecule()
    traj = openmm_bg.simulate(ms, n_frames=4000, stride=200, seed=0, timestep=0.00025, platform="Reference",
                              equilibration_steps=2000, progress=False)
    gen = openmm_bg.BoltzmannGenerator.build(ms, traj[:1000], n_blocks=2, hidden=(16,), seed=0)
    return ms, traj, gen


def test_constrained_move_samples_what_constrained_langevin_samples(methyl):
    """The move alone (with the Fixman factor) reproduces the H-C-H angle distribution of constrained
    Langevin dynamics; velocities after a jump satisfy the constraints.

    An independence sampler from a weak (untrained) generator sticks now and then on a state of large
    weight, so one long chain's batch means understate its error (CI once saw a 250-step run in one
    bin). Independent chains started from MD frames (already in equilibrium) give honest errors: the
    spread between chains includes the sticking.
    """
    ms, traj, gen = methyl
    md = _cos_hch(traj.xyz.astype(np.float64))
    md_mean, md_se = _batch_mean(md)
    edges = np.quantile(md, np.linspace(0, 1, 7))
    edges[0], edges[-1] = -1.0, 1.0
    md_bin_se = np.array([_batch_mean((np.digitize(md, edges) - 1) == k)[1] for k in range(6)])
    n_chains, n_steps = 20, 60
    outs, accepted, ss = methyl_chains(gen, ms, traj, n_chains, n_steps)
    means = [np.mean(out) for out in outs]
    fracs = [np.histogram(out, edges)[0] / n_steps for out in outs]
    assert np.mean(accepted) > 0.1
    mean, se = float(np.mean(means)), float(np.std(means, ddof=1) / math.sqrt(n_chains))
    assert abs(mean - md_mean) < N_SIGMA * math.hypot(se, md_se), (mean, se, md_mean, md_se)
    # histogram on 6 quantile bins of MD: each holds 1/6 of the move's samples within its stated error
    fracs = np.array(fracs)
    frac, frac_se = fracs.mean(0), fracs.std(0, ddof=1) / math.sqrt(n_chains)
    z = (frac - 1 / 6) / np.hypot(frac_se, md_bin_se)
    assert np.all(np.abs(z) < N_SIGMA), (frac, frac_se, md_bin_se)
    # velocities after an accepted jump are tangent to the constraints
    x = ss.positions.value_in_unit(unit.nanometer)
    v = ss.velocities.value_in_unit(unit.nanometer / unit.picosecond)
    for i, j, d in ms.constraints:
        assert np.linalg.norm(x[j] - x[i]) == pytest.approx(d, rel=1e-5)
        assert abs(np.dot(v[j] - v[i], x[j] - x[i])) < 1e-4


def test_latent_move_on_a_constrained_molecule(methyl):
    """The latent walk of a rotation-invariant, constrained molecule (frame kept, Fixman factor)
    reproduces the constrained-Langevin H-C-H distribution."""
    ms, traj, gen = methyl
    md_mean, md_se = _batch_mean(_cos_hch(traj.xyz.astype(np.float64)))
    thermo = states.ThermodynamicState(ms.system, temperature=300 * unit.kelvin)
    move = LatentMetropolisMove(gen, step_size=0.5, n_steps=4, seed=3)
    out, ss = _run(move, thermo, traj.openmm_positions(0), 300, lambda x: _cos_hch(x)[0])
    assert 0.1 < move.acceptance_rate < 0.9
    mean, se = _batch_mean(out)
    assert abs(mean - md_mean) < N_SIGMA * math.hypot(se, md_se), (mean, se, md_mean, md_se)
    # the frame is kept: the first core atom does not drift away with the latent steps
    x = ss.positions.value_in_unit(unit.nanometer)
    assert np.linalg.norm(x.mean(0) - traj.xyz[0].mean(0)) < 0.5


# ----------------------------------------------------------------------------------------- molecules
@pytest.fixture(scope="module")
def alanine(tmp_path_factory):
    ala = load("alanine_dipeptide")
    data = openmm_bg.simulate(ala, n_frames=300, stride=20, seed=0, platform="Reference", progress=False)
    gen = openmm_bg.BoltzmannGenerator.build(ala, data, n_blocks=2, hidden=(32,), seed=0)
    path = tmp_path_factory.mktemp("model") / "ala.pt"
    gen.save(path)
    return ala, gen, path


def _ala_thermo(ala, temperature=300.0, system=None):
    return states.ThermodynamicState(system or ala.system, temperature=temperature * unit.kelvin)


def test_sequence_and_weighted_moves_with_langevin(alanine):
    ala, gen, path = alanine
    thermo = _ala_thermo(ala)
    bg = BoltzmannGeneratorMove(gen, n_proposals=3, seed=0)
    latent = LatentMetropolisMove(gen, step_size=0.05, n_steps=2, seed=0)
    langevin = mcmc.LangevinDynamicsMove(timestep=1 * unit.femtosecond, n_steps=10)
    seq = mcmc.SequenceMove([langevin, bg, latent])
    sampler = mcmc.MCMCSampler(thermo, states.SamplerState(ala.positions * unit.nanometer), seq)
    sampler.run(3, context_cache=_context_cache())
    assert seq.move_list[1].n_proposed == 9 and seq.move_list[2].n_proposed == 6
    weighted = mcmc.WeightedMove([(langevin, 0.5), (bg, 0.5)])
    sampler = mcmc.MCMCSampler(thermo, states.SamplerState(ala.positions * unit.nanometer), weighted)
    sampler.run(4, context_cache=_context_cache())
    assert np.all(np.isfinite(sampler.sampler_state.positions.value_in_unit(unit.nanometer)))


def test_proposals_are_randomly_oriented_at_the_current_centre(alanine):
    """Rotation-invariant molecules: an accepted proposal sits at the current centre of mass."""
    ala, gen, _ = alanine
    thermo = _ala_thermo(ala, temperature=3000.0)  # hot: proposals get accepted
    start = ala.positions + np.array([1.0, -2.0, 0.5])
    ss = states.SamplerState(start * unit.nanometer)
    move = BoltzmannGeneratorMove(gen, n_proposals=30, seed=4, scale_prior=False)
    move.apply(thermo, ss, context_cache=_context_cache())
    assert move.n_accepted > 0
    m = ala.masses
    x = ss.positions.value_in_unit(unit.nanometer)
    np.testing.assert_allclose((x * m[:, None]).sum(0) / m.sum(), (start * m[:, None]).sum(0) / m.sum(),
                               atol=1e-6)
    assert not gen.inverted(x[None])[0]


def test_refuses_other_masses_or_constraints(alanine):
    ala, gen, _ = alanine
    hb = load("alanine_dipeptide", constraints="hbonds")
    move = BoltzmannGeneratorMove(gen, seed=0)
    with pytest.raises(ModelMismatchError, match="constraints"):
        move.apply(_ala_thermo(ala, system=hb.system), states.SamplerState(ala.positions * unit.nanometer),
                   context_cache=_context_cache())
    heavy = copy.deepcopy(ala.system)
    heavy.setParticleMass(0, 3.0)
    with pytest.raises(ModelMismatchError, match="masses"):
        move.apply(_ala_thermo(ala, system=heavy), states.SamplerState(ala.positions * unit.nanometer),
                   context_cache=_context_cache())
    # another Hamiltonian with the same atoms, masses and constraints is fine (u is the state's)
    implicit = load("alanine_dipeptide", solvent="implicit")
    move.apply(_ala_thermo(ala, system=implicit.system), states.SamplerState(ala.positions * unit.nanometer),
               context_cache=_context_cache())
    assert move.n_proposed == 1


def test_serialisation_stores_the_path_and_copies_share_the_model(alanine, tmp_path):
    ala, gen, path = alanine
    unsaved = BoltzmannGeneratorMove(gen, n_proposals=2, seed=7)
    with pytest.raises(ValueError, match="model_path"):
        serialize(unsaved)
    assert copy.copy(unsaved).generator is gen and copy.deepcopy(unsaved).generator is gen  # no path needed
    target = tmp_path / "saved_by_move.pt"
    move = BoltzmannGeneratorMove(gen, n_proposals=2, seed=7, model_path=target)
    assert target.is_file() and move.model_path == str(target.resolve())
    noisy = ala.positions[None] + 0.01 * np.random.default_rng(0).standard_normal((30, 22, 3))
    other = openmm_bg.BoltzmannGenerator.build(ala, noisy, n_blocks=2, hidden=(32,), seed=5)
    with pytest.raises(ValueError, match="another model"):
        BoltzmannGeneratorMove(other, model_path=target)
    move.apply(_ala_thermo(ala), states.SamplerState(ala.positions * unit.nanometer),
               context_cache=_context_cache())
    data = serialize(move)
    text = json.dumps(data)  # plain data, no weights
    assert "flow_state" not in text and len(text) < 20_000
    clear_model_cache()
    restored = deserialize(copy.deepcopy(data))
    assert restored.statistics == move.statistics and restored.n_proposals == 2 and restored.generator is None
    restored.apply(_ala_thermo(ala), states.SamplerState(ala.positions * unit.nanometer),
                   context_cache=_context_cache())
    loaded = restored.generator
    assert loaded is not None and loaded is not gen
    again = deserialize(copy.deepcopy(data))
    assert again.generator is loaded  # one model per (path, mtime) per process
    copies = [copy.deepcopy(again) for _ in range(3)]
    assert all(c.generator is loaded for c in copies)
    assert len({tuple(c._stream) for c in copies}) == 3  # independent random streams
    # a re-saved model file (new mtime) is loaded again
    time.sleep(0.01)
    os.utime(target, None)
    clear_model_cache()
    fresh = deserialize(copy.deepcopy(data))
    fresh.apply(_ala_thermo(ala), states.SamplerState(ala.positions * unit.nanometer),
                context_cache=_context_cache())
    assert fresh.generator is not loaded
    from_file = BoltzmannGeneratorMove(str(target), system=ala, n_proposals=2)
    assert from_file.generator is fresh.generator and from_file.model_path == str(target.resolve())
    with pytest.raises(TypeError, match="system"):
        BoltzmannGeneratorMove(str(target))
    with pytest.raises(ModelMismatchError):
        BoltzmannGeneratorMove(str(target), system=load("alanine_dipeptide", constraints="hbonds"))
    latent = LatentMetropolisMove(gen, step_size=0.1, model_path=path)
    back = deserialize(serialize(latent))
    assert back.step_size == 0.1 and back.model_path == str(Path(path).resolve())
    (tmp_path / "missing.pt").write_bytes(b"")
    data["model_path"] = str(tmp_path / "gone.pt")
    with pytest.raises(FileNotFoundError, match="gone.pt"):
        deserialize(data).apply(_ala_thermo(ala), states.SamplerState(ala.positions * unit.nanometer),
                                context_cache=_context_cache())


def test_replica_exchange_storage_and_resume(alanine, tmp_path):
    from openmmtools.multistate import MultiStateReporter, ReplicaExchangeSampler

    ala, gen, path = alanine
    move = mcmc.SequenceMove([mcmc.LangevinDynamicsMove(timestep=1 * unit.femtosecond, n_steps=5),
                              BoltzmannGeneratorMove(gen, n_proposals=2, seed=0, model_path=path)])
    thermo = [_ala_thermo(ala, t) for t in (300.0, 400.0)]
    storage = str(tmp_path / "rex.nc")
    sampler = ReplicaExchangeSampler(mcmc_moves=move, number_of_iterations=2)
    reporter = MultiStateReporter(storage, checkpoint_interval=1)
    sampler.create(thermo, states.SamplerState(ala.positions * unit.nanometer), storage=reporter)
    sampler.energy_context_cache = _context_cache()
    sampler.sampler_context_cache = _context_cache()
    sampler.run()
    bg_moves = [m.move_list[1] for m in sampler._mcmc_moves]
    assert all(m.generator is gen for m in bg_moves)  # per-state copies share the in-memory model
    assert sum(m.n_proposed for m in bg_moves) == 2 * 2 * 2
    reporter.close()
    del sampler
    clear_model_cache()
    resumed = ReplicaExchangeSampler.from_storage(storage)
    resumed.energy_context_cache = _context_cache()
    resumed.sampler_context_cache = _context_cache()
    assert resumed.iteration == 2
    resumed.extend(1)
    assert resumed.iteration == 3
    moves = [m.move_list[1] for m in resumed._mcmc_moves]
    assert sum(m.n_proposed for m in moves) == 3 * 2 * 2
    assert moves[0].generator is moves[1].generator is not None
    resumed._reporter.close()


# ----------------------------------------------------------------------------------------- slow
@pytest.mark.slow
def test_alanine_c7ax_population_against_reference():
    """Langevin + BG move in vacuum at 300 K: C7ax free energy against the lead's reference.

    Uses the generator in ``$OPENMM_BG_ALANINE_MODEL`` if set (e.g. the alanine benchmark's model),
    otherwise the shipped vacuum model; the chain runs a fixed number of iterations (an earlier
    version trained and ran for fixed wall-clock times and failed under load)."""
    ref_file = Path(__file__).resolve().parents[1] / "benchmarks" / "reference" / "alanine_reference.json"
    if not ref_file.is_file():
        pytest.skip(f"reference {ref_file} not written yet (the lead produces it)")
    ref = json.loads(ref_file.read_text())["vacuum"]
    import importlib.util
    import sys

    sys.path.insert(0, str(ref_file.parents[1]))  # the benchmark scripts import their _common module
    spec = importlib.util.spec_from_file_location("mcmc_mixing", ref_file.parents[1] / "mcmc_mixing.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    ala = load("alanine_dipeptide")
    model = os.environ.get("OPENMM_BG_ALANINE_MODEL") or (ref_file.parents[2] / "systems" / "models"
                                                           / "alanine_dipeptide_vacuum.bg")
    gen = openmm_bg.BoltzmannGenerator.load(model, ala)
    result = bench.run_chain(ala, gen, wall_seconds=math.inf, seed=1, md_steps=100, n_proposals=50,
                             iterations=2000)
    assert result["transitions"] >= 10, (
        f"only {result['transitions']} C7eq <-> C7ax transitions (acceptance {result['acceptance']:.2g}): "
        "the generator is too weak for a population estimate; set OPENMM_BG_ALANINE_MODEL to a better one")
    p_ax = result["c7ax_fraction"]
    delta_a = -math.log(p_ax / (1 - p_ax))
    se = result["c7ax_fraction_se"] / (p_ax * (1 - p_ax))
    tolerance = N_SIGMA * math.hypot(se, ref.get("error_kT", 0.0))
    assert abs(delta_a - ref["delta_a_kT"]) < tolerance, (delta_a, se, ref)


def test_constrained_langevin_samples_the_fixman_weighted_measure(methyl):
    """Why the move needs the Fixman factor: constrained Langevin's mean Fixman factor agrees with the
    exact average under exp(-u) sqrt(det Z) (importance sampling from the generator, which has the
    fixed-bond measure) and not with the average under exp(-u) alone."""
    ms, traj, gen = methyl
    fix = FixmanFactor(ms.constraints, ms.masses)
    md_mean, md_se = _batch_mean(fix(traj.xyz.astype(np.float64)))
    samples = gen.sample(60_000, seed=3)
    ok = np.isfinite(samples.log_weights)
    f = fix(samples.positions[ok])
    z = {}
    for use in (True, False):
        lw = samples.log_weights[ok] + (f if use else 0.0)
        w = np.exp(lw - lw.max())
        w /= w.sum()
        mean = float((w * f).sum())
        se = math.sqrt(float((w**2 * (f - mean) ** 2).sum()))  # delta-method SE of the ratio estimate
        assert 1 / (w**2).sum() > 5000  # enough effective samples for a reference
        z[use] = abs(mean - md_mean) / math.hypot(se, md_se)
    assert z[True] < N_SIGMA and z[False] > N_SIGMA, z


def _methyl_cosines(ala) -> list[tuple[int, int, int]]:
    """(carbon, h1, h2) triples of the methyl groups of alanine dipeptide."""
    hydrogens: dict[int, list[int]] = {}
    for a, b in ala.mdtraj_topology.bonds:
        for c, h in ((a, b), (b, a)):
            if c.element.symbol == "C" and h.element.symbol == "H":
                hydrogens.setdefault(c.index, []).append(h.index)
    return [(c, hs[p], hs[q]) for c, hs in hydrogens.items() if len(hs) == 3
            for p, q in ((0, 1), (0, 2), (1, 2))]


@pytest.mark.slow
def test_alanine_hbonds_langevin_plus_move_keeps_hch_distribution():
    """Alanine dipeptide with H-bond constraints: the methyl H-C-H angle distribution of constrained
    Langevin alone and of Langevin + BG move (briefly trained generator) agree."""
    from openmm_bg.training import Stage, Trainer

    ala = load("alanine_dipeptide", constraints="hbonds")
    triples = _methyl_cosines(ala)
    assert len(triples) == 9  # ACE, ALA and NME methyl groups

    def mean_cos(x):
        x = np.asarray(x, dtype=np.float64)
        x = x[None] if x.ndim == 2 else x
        out = []
        for c, a, b in triples:
            u, v = x[:, a] - x[:, c], x[:, b] - x[:, c]
            out.append((u * v).sum(-1) / np.linalg.norm(u, axis=-1) / np.linalg.norm(v, axis=-1))
        return np.mean(out, axis=0)

    md = openmm_bg.simulate(ala, n_frames=4000, stride=100, seed=0, equilibration_steps=5000, progress=False)
    md_mean, md_se = _batch_mean(mean_cos(md.xyz))
    gen = openmm_bg.BoltzmannGenerator.build(ala, md[:2000], n_blocks=4, hidden=(64, 64), seed=0)
    Trainer(gen, md[:2000], [Stage("ml", steps=600, lr=1e-3, batch_size=128)], seed=0, progress=False).fit()
    gen.flow.eval()
    thermo = states.ThermodynamicState(ala.system, temperature=300 * unit.kelvin)
    langevin = mcmc.LangevinDynamicsMove(timestep=2 * unit.femtosecond, n_steps=50)
    bg = BoltzmannGeneratorMove(gen, n_proposals=10, seed=0)
    sampler = mcmc.MCMCSampler(thermo, states.SamplerState(md.openmm_positions(0)),
                               mcmc.SequenceMove([langevin, bg]))
    cc = _context_cache()
    out = []
    for _ in range(3000):
        sampler.run(1, context_cache=cc)
        out.append(mean_cos(sampler.sampler_state.positions.value_in_unit(unit.nanometer))[0])
    assert bg.n_accepted > 20
    mean, se = _batch_mean(np.array(out))
    assert abs(mean - md_mean) < N_SIGMA * math.hypot(se, md_se), (mean, se, md_mean, md_se)
