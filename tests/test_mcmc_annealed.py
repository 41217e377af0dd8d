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

import numpy as np
import openmm
import openmm.unit as unit
import pytest
import torch
from openmmtools import cache, states
from openmmtools.utils import deserialize, serialize

import openmm_bg
from openmm_bg.mcmc import BoltzmannGeneratorMove, clear_model_cache, pilot_schedule
from openmm_bg.sampling import AnnealConfig, FixedSchedule
from openmm_bg.systems import load

REFERENCE = openmm.Platform.getPlatformByName("Reference")


def _context_cache() -> cache.ContextCache:
    return cache.ContextCache(platform=REFERENCE, capacity=4)


@pytest.fixture(scope="module")
def double_well():
    """An imperfect generator: untrained, built on 80 % left-well and 20 % right-well frames."""
    dw = load("double_well")
    left = openmm_bg.simulate(dw, n_frames=400, stride=10, seed=0, platform="Reference", progress=False)
    right = openmm_bg.simulate(dw, n_frames=100, stride=10, seed=1, positions=np.array([[1.7, 0.0, 0.0]]),
                               platform="Reference", progress=False)
    gen = openmm_bg.BoltzmannGenerator.build(dw, np.concatenate([left.xyz, right.xyz]), n_blocks=2,
                                             hidden=(16,), seed=0)
    return dw, gen


def _thermo(dw, temperature=300.0):
    return states.ThermodynamicState(dw.system, temperature=temperature * unit.kelvin)


def _apply(move, thermo, x, n_apply=1, cc=None):
    ss = states.SamplerState(np.asarray(x, dtype=np.float64) * unit.nanometer)
    cc = cc or _context_cache()
    for _ in range(n_apply):
        move.apply(thermo, ss, context_cache=cc)
    return ss.positions.value_in_unit(unit.nanometer)


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
    so it has no backward path and no proposal is accepted (counted as out of domain)."""
    ala = load("alanine_dipeptide")
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
    # from the proper enantiomer the same move runs (constraint-free alanine: no Fixman term)
    _apply(move, thermo, ala.positions)
    assert move.anneal_statistics["n_forward_paths"] == 3 and move._fixman_term is None
