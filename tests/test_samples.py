"""`Samples`: weights carried with the samples, provenance, save/load, and estimators that need q."""

import json

import numpy as np
import pytest

import openmm_bg
from openmm_bg import BoltzmannGenerator, Samples
from openmm_bg.analysis.free_energy import (
    mbar_profile,
    state_free_energy,
    state_free_energy_mbar,
    thermodynamic_free_energy,
    two_generator_estimate,
)
from openmm_bg.systems import load


@pytest.fixture(scope="module")
def double_well():
    dw = load("double_well")
    data = openmm_bg.simulate(dw, n_frames=200, stride=10, seed=0, platform="Reference", progress=False)
    gen = BoltzmannGenerator.build(dw, data, n_blocks=2, hidden=(16,), seed=0)
    return dw, gen


def _deep(x):
    return x[:, 0, 0] < -1.8


def _weighted(plain: Samples) -> Samples:
    """The same configurations with other (explicit) log weights, as an annealed sampler would give."""
    lw = np.where(np.isfinite(plain.log_weights), 0.5 * plain.log_weights, -np.inf)
    return Samples(plain.system, plain.positions, plain.energies, plain.log_prob, log_weights=lw,
                   log_normalizer=-1.25, ancestors=np.arange(len(plain))[::-1].copy(),
                   provenance={"kind": "annealed", "steps": 4})


def test_explicit_log_weights_are_kept_not_rebuilt(double_well):
    dw, gen = double_well
    plain = gen.sample(500, seed=2)
    assert plain.has_proposal_density and plain.provenance["kind"] == "plain"
    assert plain.provenance["seed"] == 2 and plain.provenance["temperature"] == 300.0
    assert plain.provenance["generator"] == gen.identity() and len(gen.identity()["sha1"]) == 16
    np.testing.assert_array_equal(plain.log_weights, -plain.energies - plain.log_prob)
    weighted = _weighted(plain)
    np.testing.assert_array_equal(weighted.log_weights, 0.5 * plain.log_weights)
    assert not weighted.has_proposal_density and weighted.log_normalizer == -1.25
    assert weighted.ess != pytest.approx(plain.ess)
    # conformational free energies only need the weights: fine for any set
    assert np.isfinite(state_free_energy(weighted, "left", _deep, n_bootstrap=0, min_ess=5).delta_a_kT)


def test_weighted_samples_round_trip_and_old_files_load(double_well, tmp_path):
    dw, gen = double_well
    plain = gen.sample(200, seed=0)
    weighted = _weighted(plain)
    back = Samples.load(weighted.save(tmp_path / "weighted.npz"), dw)
    np.testing.assert_array_equal(back.log_weights, weighted.log_weights)
    np.testing.assert_array_equal(back.ancestors, weighted.ancestors)
    assert back.log_normalizer == -1.25 and back.provenance == {"kind": "annealed", "steps": 4}
    again = Samples.load(plain.save(tmp_path / "plain.npz"), dw)
    assert again.has_proposal_density and again.provenance == plain.provenance and again.ancestors is None
    np.testing.assert_array_equal(again.log_weights, plain.log_weights)
    # a file written before samples carried their provenance: plain samples
    old = tmp_path / "old.npz"
    np.savez_compressed(old, positions=plain.positions, energies=plain.energies, log_prob=plain.log_prob,
                        log_weights=plain.log_weights, rejected=plain.rejected, temperature=np.float64(300.0),
                        meta=json.dumps({"system": dw.name, "counts": plain.counts}))
    legacy = Samples.load(old, dw)
    assert legacy.has_proposal_density and legacy.log_normalizer is None
    np.testing.assert_array_equal(legacy.log_weights, plain.log_weights)


def test_bad_explicit_weights_are_refused(double_well):
    dw, gen = double_well
    s = gen.sample(20, seed=0)
    with pytest.raises(ValueError, match="NaN or \\+inf"):
        Samples(dw, s.positions, s.energies, s.log_prob, log_weights=np.full(20, np.nan))
    energies = s.energies.copy()
    energies[3] = np.inf
    with pytest.raises(ValueError, match="failed energy or a rejected"):
        Samples(dw, s.positions, energies, s.log_prob, log_weights=np.zeros(20))
    with pytest.raises(ValueError, match="shape"):
        Samples(dw, s.positions, s.energies, s.log_prob, log_weights=np.zeros(19))
    with pytest.raises(ValueError, match="plain samples"):
        Samples(dw, s.positions, s.energies, s.log_prob, ancestors=np.arange(20))
    with pytest.raises(ValueError, match="integer indices"):
        Samples(dw, s.positions, s.energies, s.log_prob, log_weights=s.log_weights, ancestors=np.zeros(20))


def test_estimators_that_use_q_refuse_samples_without_it(double_well):
    dw, gen = double_well
    weighted = _weighted(gen.sample(200, seed=0))
    hot = dw.with_temperature(600.0)
    with pytest.raises(ValueError, match="thermodynamic_free_energy uses the generator's density.*'annealed'"):
        thermodynamic_free_energy(dw, hot, samples=weighted, generators=[gen])
    with pytest.raises(ValueError, match="two_generator_estimate uses the generator's density"):
        two_generator_estimate(weighted, weighted)
    with pytest.raises(ValueError, match="state_free_energy_mbar uses the generator's density"):
        state_free_energy_mbar(weighted, gen, "left", _deep)
    with pytest.raises(ValueError, match="mbar_profile uses the generator's density"):
        mbar_profile("x1", dw, samples=weighted, generators=[gen])
