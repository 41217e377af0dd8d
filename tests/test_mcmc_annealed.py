"""Annealed proposals of BoltzmannGeneratorMove (``anneal=``): exact, counted, seeded and serialised.

The statistical tests run independent chains started from exact draws of the double well
(quadrature of x1, Gaussian x2), so the spread between chains is an honest error whatever the
chains' autocorrelation. A test-only variant that accepts a forward path by its weight over the
*plain* importance weight of the current state (no backward path) is biased by design; the same
test detects it.
"""

from __future__ import annotations

import copy
import json
import math

import numpy as np
import openmm
import openmm.unit as unit
import pytest
import torch
from openmmtools import cache, states
from openmmtools.utils import deserialize, serialize
from test_mcmc import double_well as _double_well

import openmm_bg
from openmm_bg.mcmc import BoltzmannGeneratorMove, annealed, clear_model_cache, pilot_schedule
from openmm_bg.model.annealed import latent_path
from openmm_bg.sampling import AnnealConfig, FixedSchedule
from openmm_bg.systems import load

REFERENCE = openmm.Platform.getPlatformByName("Reference")
double_well = _double_well  # test_mcmc's fixture: an untrained generator on 80 % / 20 % well data


def _context_cache() -> cache.ContextCache:
    return cache.ContextCache(platform=REFERENCE, capacity=4)


def _thermo(dw, temperature=300.0):
    return states.ThermodynamicState(dw.system, temperature=temperature * unit.kelvin)


def _apply(move, thermo, x, n_apply=1, cc=None):
    ss = states.SamplerState(np.asarray(x, dtype=np.float64) * unit.nanometer)
    cc = cc or _context_cache()
    for _ in range(n_apply):
        move.apply(thermo, ss, context_cache=cc)
    return ss.positions.value_in_unit(unit.nanometer)


# ----------------------------------------------------------------------------------------- invariance
N_SIGMA = 4.5


class _PlainCurrentWeight(BoltzmannGeneratorMove):
    """Wrong on purpose: no backward path; a forward path is accepted by its weight over the *plain*
    importance weight ``-u(x) - log p_X(x)`` of the current state (``g(x) = -log p_X(x)``)."""

    def _current_path_term(self, gen, path, x_cur, tgen):
        with torch.no_grad():
            return -float(gen.log_prob(torch.as_tensor(x_cur[None]), path.temperature)[0])


@pytest.fixture(scope="module")
def narrow_well():
    """A deliberately poor generator: untrained, 80 % / 20 % of the frames in the left / right well and
    x2 squeezed to half its spread, so that the flow is too narrow in x2 (its plain weights grow like
    exp(1.5 x2^2)); and the frozen schedule of a pilot run (3 levels, 3 preconditioned MALA steps each)."""
    dw = load("double_well")
    left = openmm_bg.simulate(dw, n_frames=400, stride=10, seed=0, platform="Reference", progress=False)
    right = openmm_bg.simulate(dw, n_frames=100, stride=10, seed=1, positions=np.array([[1.7, 0.0, 0.0]]),
                               platform="Reference", progress=False)
    data = np.concatenate([left.xyz, right.xyz])
    data[..., 1] *= 0.5
    gen = openmm_bg.BoltzmannGenerator.build(dw, data, n_blocks=2, hidden=(16,), seed=0)
    pilot = AnnealConfig(target_cess=0.5, n_levels=8, mcmc_steps_per_level=3, precondition=True, step_size=0.5)
    schedule = pilot_schedule(gen, 300.0, n=1000, config=pilot, seed=0)
    config = AnnealConfig(adaptive=False, schedule=schedule, resample_threshold=0.0, mcmc_steps_per_level=3)
    return dw, gen, config


def _exact_draws(n: int, seed: int, temperature: float = 300.0) -> np.ndarray:
    """``[n, 2]`` independent draws of the double well: x1 by inverse CDF of its quadrature, x2 Gaussian."""
    grid = np.linspace(-4.0, 4.0, 400_001)
    density = np.exp(-(grid**4 - 6 * grid**2 + grid) * 300.0 / temperature)
    rng = np.random.default_rng(seed)
    x1 = np.interp(rng.random(n), np.cumsum(density) / density.sum(), grid)
    return np.stack([x1, rng.normal(0.0, math.sqrt(temperature / 300.0), n)], 1)


def _observables(x: np.ndarray) -> np.ndarray:
    """``[n, 3]``: x2^2, |x2| > 1.5 and x1 > 0 (the right well)."""
    return np.stack([x[:, 1] ** 2, np.abs(x[:, 1]) > 1.5, x[:, 0] > 0], 1).astype(np.float64)


def _invariance_z(move, dw, starts: np.ndarray, n_apply: int) -> tuple[np.ndarray, np.ndarray]:
    """Chains from exact draws (independent), ``n_apply`` applies each: z-scores of the paired change of
    each observable (zero mean if the move leaves the Boltzmann distribution invariant) and of the
    final states against the exact values."""
    thermo, cc = _thermo(dw), _context_cache()
    ends = np.array([_apply(move, thermo, [[x1, x2, 0.0]], n_apply, cc)[0, :2] for x1, x2 in starts])
    change = _observables(ends) - _observables(starts)
    z_change = change.mean(0) / (np.maximum(change.std(0, ddof=1), 1e-12) / math.sqrt(len(starts)))
    # exact means and variances: x2 ~ N(0, 1) (var x2^2 = 2), the indicators Bernoulli
    tail, right = math.erfc(1.5 / math.sqrt(2.0)), _double_well_right()
    mean, var = np.array([1.0, tail, right]), np.array([2.0, tail * (1 - tail), right * (1 - right)])
    z_final = (_observables(ends).mean(0) - mean) / np.sqrt(var / len(starts))
    return z_change, z_final


def _double_well_right(temperature: float = 300.0) -> float:
    grid = np.linspace(-4.0, 4.0, 400_001)
    w = np.exp(-(grid**4 - 6 * grid**2 + grid) * 300.0 / temperature)
    return float(w[grid > 0].sum() / w.sum())


def _batched_apply(gen, config, starts: np.ndarray, n_proposals: int, seed: int, plain_current: bool = False,
                   temperature: float = 300.0) -> tuple[np.ndarray, float]:
    """One ``apply`` of the annealed move for every start at once: the move's own forward and backward
    paths (`openmm_bg.mcmc.annealed`), its Metropolis-Hastings loop vectorised over chains.
    ``plain_current``: the test-only variant (no backward path, plain weight of the current state)."""
    path = latent_path(gen, temperature)
    tgen = torch.Generator().manual_seed(seed)
    n = len(starts)
    x = np.zeros((n, 1, 3))
    x[:, 0, :2] = starts
    with torch.no_grad():
        u = gen.reduced_energy(torch.as_tensor(x), temperature).numpy()
        if plain_current:
            g = -gen.log_prob(torch.as_tensor(x), temperature).numpy()
        else:
            g = annealed.backward_terms(gen, path, x, config, tgen)
        fwd = annealed.forward_paths(gen, path, n * n_proposals, config, tgen)
        u_new = gen.reduced_energy(fwd.x, temperature).numpy().reshape(n, n_proposals)
    x_new = fwd.x[:, 0, :2].numpy().reshape(n, n_proposals, 2)
    g_new = np.where(fwd.ok, fwd.log_ratio_term, -np.inf).reshape(n, n_proposals)
    rng = np.random.default_rng(seed)
    state, n_accepted = starts.copy(), 0
    for k in range(n_proposals):
        with np.errstate(invalid="ignore"):
            accept = np.log(rng.random(n)) < -(u_new[:, k] - u) + g_new[:, k] - g
        state[accept], u[accept], g[accept] = x_new[accept, k], u_new[accept, k], g_new[accept, k]
        n_accepted += int(accept.sum())
    return state, n_accepted / (n * n_proposals)


def test_path_space_chain_is_exact_and_needs_the_backward_path(narrow_well):
    """Thousands of chains from exact draws, one apply each (the move's path functions, batched): the
    populations stay exact within 4.5 standard errors; accepting by W_fwd over the plain weight of
    the current state instead spreads x2 by more than 5 standard errors."""
    _, gen, config = narrow_well
    starts = _exact_draws(2500, seed=1)
    z = {}
    for plain in (False, True):
        ends, acceptance = _batched_apply(gen, config, starts, 4, seed=2, plain_current=plain)
        assert 0.1 < acceptance < 0.9
        change = _observables(ends) - _observables(starts)
        z[plain] = change.mean(0) / (np.maximum(change.std(0, ddof=1), 1e-12) / math.sqrt(len(starts)))
    assert np.all(np.abs(z[False]) < N_SIGMA), z
    assert z[True][0] > 5.0 and z[True][1] > 5.0, z


def test_path_space_chain_is_exact_at_another_temperature(narrow_well):
    """At 600 K (the prior scaled by T / T_train, the 300 K pilot's schedule frozen) the paired changes
    of x2^2, the x2 tail and the right-well population stay zero within 4.5 standard errors."""
    _, gen, config = narrow_well
    starts = _exact_draws(1500, seed=4, temperature=600.0)
    ends, acceptance = _batched_apply(gen, config, starts, 4, seed=5, temperature=600.0)
    assert 0.05 < acceptance < 0.9
    change = _observables(ends) - _observables(starts)
    z = change.mean(0) / (np.maximum(change.std(0, ddof=1), 1e-12) / math.sqrt(len(starts)))
    assert np.all(np.abs(z) < N_SIGMA) and float(np.abs(change).sum(0)[2]) > 0, z


@pytest.mark.parametrize("n_chains, n_apply", [(40, 1), pytest.param(400, 2, marks=pytest.mark.slow)])
def test_annealed_move_leaves_the_boltzmann_distribution_invariant(narrow_well, n_chains, n_apply):
    """The move itself (openmmtools ``apply``), independent chains from exact draws: the paired changes
    and the final x2^2, tail and right-well populations are exact within 4.5 standard errors."""
    dw, gen, config = narrow_well
    move = BoltzmannGeneratorMove(gen, n_proposals=16, seed=3, anneal=config)
    z_change, z_final = _invariance_z(move, dw, _exact_draws(n_chains, seed=0), n_apply)
    assert 0.1 < move.acceptance_rate < 0.9
    assert np.all(np.abs(z_change) < N_SIGMA) and np.all(np.abs(z_final) < N_SIGMA), (z_change, z_final)


# ----------------------------------------------------------------------------------------- bookkeeping
def test_counts_seeds_copies_and_serialisation(double_well, tmp_path):
    dw, gen = double_well
    thermo = _thermo(dw)
    schedule = FixedSchedule.linear(3, 0.4)
    move = BoltzmannGeneratorMove(gen, n_proposals=3, seed=2, anneal=schedule, model_path=tmp_path / "dw.pt")
    start = np.array([[-1.2, 1.0, 0.003]])  # above the well minimum: proposals get accepted
    x = _apply(move, thermo, start, n_apply=2)
    assert move.n_proposed == 6 and move.n_accepted > 0
    # K = 3 levels, one MALA step each: (3 forward + 1 backward) x (1 + 3) energy + force evaluations per apply
    assert move.anneal_statistics == {"n_forward_paths": 6, "n_backward_paths": 2, "n_energy_force_evaluations": 32}
    assert x[0, 2] == pytest.approx(0.003)  # the confined component is kept
    again = BoltzmannGeneratorMove(gen, n_proposals=3, seed=2, anneal=schedule)
    np.testing.assert_array_equal(_apply(again, thermo, start, n_apply=2), x)
    assert again.statistics == move.statistics
    # serialised: the schedule and kernel as plain data, counters, and the random stream continues
    data = serialize(move)
    text = json.dumps(data)
    assert "flow_state" not in text and '"betas"' in text
    clear_model_cache()
    restored = deserialize(copy.deepcopy(data))
    assert restored.anneal == move.anneal and restored.anneal_statistics == move.anneal_statistics
    assert restored.statistics == move.statistics
    np.testing.assert_array_equal(_apply(restored, thermo, x), _apply(move, thermo, x))
    assert restored.anneal_statistics == move.anneal_statistics
    # deep copies (one per thermodynamic state) share the model and draw independently
    copies = [copy.deepcopy(move) for _ in range(2)]
    assert copies[0].generator is copies[1].generator is move.generator
    assert not np.array_equal(_apply(copies[0], thermo, x, 3), _apply(copies[1], thermo, x, 3))
    # a plain move stores no annealing settings (and reads back as plain)
    plain = deserialize(serialize(BoltzmannGeneratorMove(gen, n_proposals=2, model_path=tmp_path / "dw.pt")))
    assert plain.anneal is None


def test_kernel_options_and_hmc(double_well):
    dw, gen = double_well
    config = AnnealConfig(adaptive=False, schedule=FixedSchedule.linear(2, 0.3), resample_threshold=0.0,
                          kernel="hmc", leapfrog_steps=3, mcmc_steps_per_level=2)
    move = BoltzmannGeneratorMove(gen, n_proposals=2, seed=0, anneal=config)
    _apply(move, _thermo(dw), [[-1.7, 0.0, 0.0]])
    assert move.anneal.kernel == "hmc" and move.n_proposed == 2
    assert move.anneal_statistics["n_energy_force_evaluations"] == 3 * (1 + 2 * 2 * 3)


def test_refuses_adaptive_or_resampling_settings(double_well):
    dw, gen = double_well
    with pytest.raises(ValueError, match="frozen schedule"):
        BoltzmannGeneratorMove(gen, anneal=AnnealConfig())
    with pytest.raises(ValueError, match="resample_threshold=0"):
        BoltzmannGeneratorMove(gen, anneal=AnnealConfig(adaptive=False))
    with pytest.raises(ValueError, match="seed"):
        BoltzmannGeneratorMove(gen, anneal=AnnealConfig(adaptive=False, resample_threshold=0.0, seed=1))
    with pytest.raises(ValueError, match="independence_steps=0"):
        BoltzmannGeneratorMove(gen, anneal=AnnealConfig(adaptive=False, resample_threshold=0.0, independence_steps=1))
    with pytest.raises(ValueError, match="scale_prior"):
        BoltzmannGeneratorMove(gen, anneal=FixedSchedule.linear(2, 0.1), scale_prior=False)
    with pytest.raises(ValueError, match="FixedSchedule"):
        BoltzmannGeneratorMove(gen, anneal=True)


def test_pilot_schedule_is_frozen_and_reproducible(double_well):
    dw, gen = double_well
    config = AnnealConfig(target_cess=0.9, n_levels=20)
    a = pilot_schedule(gen, 300.0, n=64, config=config, seed=1)
    assert a == pilot_schedule(gen, 300.0, n=64, config=config, seed=1)
    assert a.betas[0] == 0.0 and a.betas[-1] == 1.0 and len(a.step_sizes) >= 2
    fixed = FixedSchedule.linear(3, 0.2)
    assert pilot_schedule(gen, config=AnnealConfig(adaptive=False, schedule=fixed)) == fixed
    with pytest.raises(ValueError, match="n must be"):
        pilot_schedule(gen, n=0)


def test_current_state_without_a_backward_path_rejects_everything():
    """Alanine dipeptide's mirror image (inverted stereocentre): the generator's density of it is zero,
    so it has no backward path and no proposal is accepted (counted as out of domain). With H-bond
    constraints the move runs with the Fixman factor, as the plain move does."""
    ala = load("alanine_dipeptide", constraints="hbonds")
    data = openmm_bg.simulate(ala, n_frames=100, stride=20, seed=0, platform="Reference", progress=False)
    gen = openmm_bg.BoltzmannGenerator.build(ala, data, n_blocks=2, hidden=(16,), seed=0)
    mirror = ala.positions * np.array([-1.0, 1.0, 1.0])
    assert bool(gen.inverted(torch.as_tensor(mirror[None]))[0])
    move = BoltzmannGeneratorMove(gen, n_proposals=3, seed=0, anneal=FixedSchedule.linear(2, 0.05))
    thermo = states.ThermodynamicState(ala.system, temperature=300 * unit.kelvin)
    x = _apply(move, thermo, mirror)
    np.testing.assert_array_equal(x, mirror)
    assert move.statistics["n_out_of_domain"] == 3 and move.n_accepted == 0
    assert move.anneal_statistics["n_forward_paths"] == 0
    # from the proper enantiomer the same move runs, with the Fixman factor of the methyl groups
    x = _apply(move, thermo, ala.positions)
    assert move.anneal_statistics["n_forward_paths"] == 3 and move._fixman_term is not None
    for i, j, d in ala.constraints:  # accepted or not, the constrained bonds hold
        assert np.linalg.norm(x[j] - x[i]) == pytest.approx(d, rel=1e-5)


# ----------------------------------------------------------------------------------------- constraints
@pytest.mark.slow
def test_constrained_annealed_move_samples_what_constrained_langevin_samples():
    """With H-bond constraints (methyl chain of tests/test_mcmc.py, a strongly varying Fixman factor)
    the annealed move alone reproduces the H-C-H angles of constrained Langevin dynamics; independent
    chains from MD frames give honest errors."""
    from test_mcmc import _batch_mean, _cos_hch, methyl_chains, methyl_molecule

    ms = methyl_molecule()
    traj = openmm_bg.simulate(ms, n_frames=4000, stride=200, seed=0, timestep=0.00025, platform="Reference",
                              equilibration_steps=2000, progress=False)
    gen = openmm_bg.BoltzmannGenerator.build(ms, traj[:1000], n_blocks=2, hidden=(16,), seed=0)
    md_mean, md_se = _batch_mean(_cos_hch(traj.xyz))
    schedule = pilot_schedule(gen, 300.0, n=256, config=AnnealConfig(target_cess=0.7, n_levels=8), seed=0)
    config = AnnealConfig(adaptive=False, schedule=schedule, resample_threshold=0.0)
    n_chains = 20
    outs, accepted, ss = methyl_chains(gen, ms, traj, n_chains, 30, anneal=config)
    assert np.mean(accepted) > 0.1
    means = [np.mean(out) for out in outs]
    mean, se = float(np.mean(means)), float(np.std(means, ddof=1) / math.sqrt(n_chains))
    assert abs(mean - md_mean) < N_SIGMA * math.hypot(se, md_se), (mean, se, md_mean, md_se)
    x = ss.positions.value_in_unit(unit.nanometer)
    for i, j, d in ms.constraints:
        assert np.linalg.norm(x[j] - x[i]) == pytest.approx(d, rel=1e-5)
