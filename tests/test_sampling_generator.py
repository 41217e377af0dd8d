"""Annealed samples of a generator (``gen.sample(n, anneal=...)``) on the double well against quadrature.

The generator is deliberately poor: its coordinate statistics come from MD in both wells (so its
proposal covers both), then a few ML steps on frames from ONE well pull it towards that well, so
the right well gets few samples with large plain weights. Annealing must fix that exactly:
Delta A(left -> right) within 0.1 kT of 2D quadrature, a higher ESS/N than plain samples at the
same seed, and stated errors that cover the exact value as often as they claim.
"""

import argparse
import dataclasses
import json
import math
import os
import subprocess
import sys

import mdtraj
import numpy as np
import pytest
import torch
from scipy import integrate

import openmm_bg
from openmm_bg import BoltzmannGenerator, Samples
from openmm_bg.analysis import reweighting
from openmm_bg.analysis.free_energy import (
    free_energy_profile,
    mbar_profile,
    state_free_energy,
    state_free_energy_mbar,
    thermodynamic_free_energy,
    two_generator_estimate,
)
from openmm_bg.apps.cli import _anneal_config, build_parser, main
from openmm_bg.model.annealed import GENERATOR_DEFAULT, anneal_overrides, generator_anneal_config, latent_path
from openmm_bg.sampling import AnnealConfig
from openmm_bg.training import Stage, Trainer


def exact_delta_a() -> float:
    """-log(Z_right / Z_left) of u = x1^4 - 6 x1^2 + x1 + x2^2 / 2 by 2D quadrature (states x1 > 0, x1 < 0)."""
    def z(lo, hi):
        return integrate.dblquad(lambda x2, x1: math.exp(-(x1**4 - 6 * x1**2 + x1 + 0.5 * x2**2)),
                                 lo, hi, -12.0, 12.0, epsabs=1e-12, epsrel=1e-10)[0]
    return -math.log(z(0.0, 6.0) / z(-6.0, 0.0))


EXACT = exact_delta_a()


@pytest.fixture(scope="module")
def poor(dw, dw_data):
    """A generator whose statistics span both wells, trained 10 ML steps on left-well frames only."""
    right = dw.positions.copy()
    right[0, :2] = (1.6, 0.0)
    md_right = openmm_bg.simulate(dw, n_frames=150, stride=10, seed=1, platform="Reference", positions=right,
                                  friction=10.0, progress=False)
    gen = BoltzmannGenerator.build(dw, mdtraj.join([dw_data, md_right]), n_blocks=2, hidden=(16,), seed=0)
    Trainer(gen, dw_data, [Stage("ml", 10, batch_size=64)], seed=0, progress=False).fit()
    assert dw_data.xyz[:, 0, 0].max() < 0  # the training frames are all in the left well
    return gen


def test_exact_value_by_quadrature():
    assert EXACT == pytest.approx(3.38, abs=0.01)  # also the 1D value of test_free_energy_double_well


def test_annealed_delta_a_matches_quadrature_with_higher_ess_than_plain(poor):
    plain = poor.sample(20000, seed=1)
    annealed = poor.sample(20000, seed=1, anneal=AnnealConfig())
    r = state_free_energy(annealed, "left", "right")
    assert abs(r.delta_a_kT - EXACT) < 0.1, (str(r), EXACT)
    assert abs(r.delta_a_kT - EXACT) < 3 * r.error_kT
    assert annealed.ess_fraction > plain.ess_fraction + 0.1, (annealed.summary(), plain.summary())
    assert r.ess_b > state_free_energy(plain, "left", "right", n_bootstrap=0).ess_b  # the rare well gained most
    # the log normaliser estimates log Z, Z = int exp(-u) dx1 dx2 (the generator's density is one over the
    # free components x1, x2): the constant the log mean of plain weights estimates too
    log_z = math.log(integrate.dblquad(lambda x2, x1: math.exp(-(x1**4 - 6 * x1**2 + x1 + 0.5 * x2**2)),
                                       -6.0, 6.0, -12.0, 12.0, epsabs=1e-12, epsrel=1e-10)[0])
    assert annealed.log_normalizer == pytest.approx(log_z, abs=0.05)
    assert plain.log_normalizer is None


def test_provenance_counts_and_summary(poor):
    n, levels = 300, 6
    s = poor.sample(n, seed=3, anneal=AnnealConfig(adaptive=False, n_levels=levels, mcmc_steps_per_level=2,
                                                   step_size=0.3))
    p = s.provenance
    assert p["kind"] == "annealed" and p["space"] == "latent" and not s.has_proposal_density
    assert p["seed"] == 3 and p["temperature"] == 300.0 and p["n_levels"] == levels
    assert p["betas"] == pytest.approx([k / levels for k in range(levels + 1)])
    assert len(p["acceptance"]) == levels and all(0 < a <= 1 for a in p["acceptance"])
    # MALA: the initial particles, then one energy + forces per particle and kernel step (every F(z) of the
    # double well's Cartesian transform is in domain); the final positions once more without forces
    assert p["n_energy_force_evaluations"] == n * (1 + levels * 2)
    assert p["n_energy_evaluations"] == n * (2 + levels * 2)
    assert p["n_distinct_ancestors"] == len(np.unique(s.ancestors)) <= n
    assert s.ancestors.min() >= 0 and s.ancestors.max() < n
    text = s.summary()
    for part in ("ESS", "largest weight", "Pareto k", f"{p['n_energy_evaluations']} energy evaluations",
                 f"{p['n_distinct_ancestors']} distinct ancestors"):
        assert part in text, text
    # energies are the target's reduced energies at the final positions, log_prob the generator's density there
    np.testing.assert_allclose(s.energies, poor.reduced_energy(s.positions).numpy(), rtol=1e-12)
    np.testing.assert_allclose(s.log_prob, poor.log_prob(torch.as_tensor(s.positions)).detach().numpy(),
                               atol=1e-4)


def test_global_moves_are_exact_and_counted(poor):
    """Independence proposals from the prior (``independence_steps``): Delta A still matches quadrature,
    each proposal costs one energy + force evaluation, and their acceptance is recorded per level."""
    n, levels = 4000, 6
    config = AnnealConfig(adaptive=False, n_levels=levels, step_size=0.3, independence_steps=2, resample_threshold=0)
    s = poor.sample(n, seed=5, anneal=config)
    p = s.provenance
    assert p["n_energy_force_evaluations"] == n * (1 + levels * 3)  # 1 MALA step + 2 proposals per level
    assert len(p["independence_acceptance"]) == levels and all(0 < a < 1 for a in p["independence_acceptance"])
    r = state_free_energy(s, "left", "right")
    assert abs(r.delta_a_kT - EXACT) < max(3 * r.error_kT, 0.1), (str(r), EXACT)
    assert poor.sample(50, seed=5, anneal=AnnealConfig(n_levels=3, adaptive=False)).provenance[
        "independence_acceptance"] is None


def test_seeds_streams_and_temperature(poor):
    config = AnnealConfig(n_levels=4, adaptive=False, step_size=0.3)
    a, b = poor.sample(200, seed=5, anneal=config), poor.sample(200, seed=5, anneal=config, threads=1)
    np.testing.assert_array_equal(a.positions, b.positions)  # same seed, same samples (any thread count)
    np.testing.assert_array_equal(a.log_weights, b.log_weights)
    c = poor.sample(200, seed=6, anneal=config)
    assert not np.array_equal(a.positions, c.positions)
    # the initial particles are the plain draws of the same seed, and ancestors index them: with a
    # vanishing step size every particle stays (near) where its ancestor started
    still = poor.sample(300, seed=7, anneal=AnnealConfig(adaptive=False, n_levels=3, step_size=1e-9))
    plain = poor.sample(300, seed=7)
    assert still.provenance["n_resampling"] >= 1 and still.provenance["n_distinct_ancestors"] < 300
    np.testing.assert_allclose(still.positions, plain.positions[still.ancestors], atol=1e-6)
    with pytest.raises(ValueError, match="leave AnnealConfig.seed as None"):
        poor.sample(10, anneal=AnnealConfig(seed=1))
    with pytest.raises(ValueError, match="anneal must be an openmm_bg.sampling.AnnealConfig"):
        poor.sample(10, anneal="mala")
    with pytest.raises(ValueError, match="n must be an integer >= 1"):
        poor.sample(0, anneal=True)
    hot = poor.sample(300, seed=5, temperature=600.0, anneal=config)
    assert hot.temperature == 600.0 and hot.provenance["temperature"] == 600.0
    np.testing.assert_allclose(hot.energies, poor.reduced_energy(hot.positions, 600.0).numpy(), rtol=1e-12)


def test_latent_target_gradient_comes_from_openmm_forces(poor):
    """log_target(z) = -u(F(z)) + log|det J|: its gradient (through OpenMMEnergy's force-based backward)
    against central finite differences of its value."""
    path = latent_path(poor, 300.0, batch_size=7, threads=2)
    z = torch.randn(16, poor.n_dof, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    value, grad = path.log_target.fn(z)
    assert value.dtype == torch.float64 and torch.isfinite(value).all()
    assert path.n_energy_evaluations == 16
    h = 1e-3
    for d in range(poor.n_dof):
        e = torch.zeros_like(z)
        e[:, d] = h
        fd = (path.log_target.fn(z + e)[0] - path.log_target.fn(z - e)[0]) / (2 * h)
        np.testing.assert_allclose(grad[:, d].numpy(), fd.numpy(), rtol=2e-2, atol=2e-2)
    assert path.n_energy_evaluations == 16 * (1 + 2 * poor.n_dof)


def test_plain_sampling_is_the_same_with_any_thread_count(poor):
    before = torch.get_num_threads()
    one = poor.sample(1000, seed=4, batch_size=128, threads=1)
    two = poor.sample(1000, seed=4, batch_size=128, threads=2)
    assert torch.get_num_threads() == before  # the caller's setting is restored
    np.testing.assert_array_equal(one.positions, two.positions)
    np.testing.assert_array_equal(one.log_weights, two.log_weights)
    with pytest.raises(ValueError, match="threads must be an integer >= 1"):
        poor.sample(10, threads=0)


def test_calibration_of_stated_errors(poor):
    """100 independent annealed sets of 500 particles: the bootstrap over ancestral lineages covers the
    exact Delta A with its 1-sigma error in 57-79 % and its 2-sigma error in >= 88 % of them. The plain
    bootstrap's coverage is printed, not asserted (heavy-tailed weights under-cover by design)."""
    cover = {"annealed": [], "plain": []}
    for k in range(100):
        for kind, option in (("annealed", AnnealConfig()), ("plain", None)):
            s = poor.sample(500, seed=1000 + k, anneal=option)
            r = state_free_energy(s, "left", "right", min_ess=1, n_bootstrap=200, seed=k, warn=False)
            cover[kind].append(abs(r.delta_a_kT - EXACT) / r.error_kT)
    z = {kind: np.asarray(v) for kind, v in cover.items()}
    print(f"\ncoverage of the exact Delta A over 100 sets of 500: annealed 1 sigma {np.mean(z['annealed'] < 1):.2f}, "
          f"2 sigma {np.mean(z['annealed'] < 2):.2f}; plain (not asserted) 1 sigma {np.mean(z['plain'] < 1):.2f}, "
          f"2 sigma {np.mean(z['plain'] < 2):.2f}")
    assert 0.57 <= np.mean(z["annealed"] < 1) <= 0.79
    assert np.mean(z["annealed"] < 2) >= 0.88


def test_lineage_bootstrap_draws_copies_together():
    c = np.array([1.0, 1.0, 10.0])
    reps = reweighting.bootstrap_sums(c, 2000, seed=0, groups=[0, 0, 1])
    assert sorted(set(np.round(reps, 9).tolist())) == [4.0, 12.0, 20.0]  # never 1 + 10 or 3
    # groups of one sample each: the plain bootstrap, bit for bit
    rng = np.random.default_rng(1)
    values, log_w = rng.normal(size=400), rng.normal(size=400)
    assert reweighting.reweighted_mean(values, log_w, groups=np.arange(400)) == reweighting.reweighted_mean(values,
                                                                                                             log_w)
    # every sample copied 4 times: grouped by lineage the error is that of the 100 originals, not half of it
    copies = np.repeat(np.arange(100), 4)
    grouped = reweighting.reweighted_mean(values[copies], log_w[copies], n_bootstrap=2000, groups=copies)[1]
    iid = reweighting.reweighted_mean(values[copies], log_w[copies], n_bootstrap=2000)[1]
    original = reweighting.reweighted_mean(values[:100], log_w[:100], n_bootstrap=2000)[1]
    assert grouped == pytest.approx(original, rel=0.1) and iid == pytest.approx(original / 2, rel=0.15)
    with pytest.raises(ValueError, match="one integer label per sample"):
        reweighting.bootstrap_sums(c, 10, groups=[0.5, 1.0, 2.0])


def test_annealed_sets_in_estimators_round_trip_and_refusals(poor, dw, tmp_path):
    s = poor.sample(1000, seed=2, anneal=AnnealConfig())
    assert 0 < s.provenance["n_distinct_ancestors"] < len(s)  # resampled at least once: lineages matter
    # estimators that only need weights take it, and bootstrap lineages
    profile = free_energy_profile(s, "x1", bins=20, range=(-2.5, 2.5))
    assert np.isfinite(profile.free_energy_kT).sum() > 10 and np.nanmax(profile.error_kT) > 0
    mean, err = s.expectation(lambda x: x[:, 0, 0])
    assert -2.0 < mean < 0.0 and err > 0
    r = state_free_energy(s, "left", "right", min_ess=5)
    assert "largest weight" in str(r).split("all weights")[0]  # per state, next to the number
    # those that use the generator's density as a reference refuse it
    with pytest.raises(ValueError, match="thermodynamic_free_energy uses the generator's density.*'annealed'"):
        thermodynamic_free_energy(dw, dw.with_temperature(600.0), samples=s, generators=[poor])
    with pytest.raises(ValueError, match="two_generator_estimate uses the generator's density"):
        two_generator_estimate(s, s)
    with pytest.raises(ValueError, match="state_free_energy_mbar uses the generator's density"):
        state_free_energy_mbar(s, poor, "left", "right")
    with pytest.raises(ValueError, match="mbar_profile uses the generator's density"):
        mbar_profile("x1", dw, samples=s, generators=[poor])
    # save / load keeps weights, normaliser, ancestors and provenance
    back = Samples.load(s.save(tmp_path / "annealed.npz"), dw)
    np.testing.assert_array_equal(back.log_weights, s.log_weights)
    np.testing.assert_array_equal(back.ancestors, s.ancestors)
    np.testing.assert_array_equal(back.positions, s.positions)
    assert back.log_normalizer == s.log_normalizer and back.provenance == s.provenance
    assert not back.has_proposal_density and back.summary() == s.summary()


def test_cli_sample_and_free_energy_with_anneal(poor, tmp_path, capsys):
    model = tmp_path / "poor.bg"
    poor.save(model, extra={"system_spec": {"name": "double_well", "options": {}}})
    out = tmp_path / "annealed.npz"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(os.getcwd()), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-m", "openmm_bg.apps.cli", "sample", str(model), "-n", "400", "--anneal",
                           "--anneal-levels", "5", "--anneal-fixed", "--anneal-step-size", "0.3",
                           "--anneal-global", "1", "-o", str(out)],
                          capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    # one MALA step and one proposal from the prior per level
    assert f"{400 * (2 + 5 * 2)} energy evaluations ({400 * 11} with forces)" in done.stdout, done.stdout
    s = Samples.load(out, poor.system)
    assert s.provenance["kind"] == "annealed" and s.provenance["anneal"]["adaptive"] is False
    assert s.provenance["betas"] == pytest.approx([0.0, 0.2, 0.4, 0.6, 0.8, 1.0])
    # the flags override single fields of the one default, and the provenance says which
    assert s.provenance["anneal_overrides"] == {"n_levels": 5, "step_size": 0.3, "adaptive": False,
                                                "independence_steps": 1}
    assert len(s.provenance["independence_acceptance"]) == 5
    assert s.provenance["anneal"]["target_cess"] == GENERATOR_DEFAULT.target_cess
    assert ("settings changed from the default: n_levels=5, step_size=0.3, adaptive=False, independence_steps=1"
            in done.stdout), done.stdout
    # free-energy --anneal in-process, HMC; explicit small options keep it CI-sized (the default has up to
    # 200 levels)
    assert main(["free-energy", str(model), "--states", "left,right", "-n", "600", "--bootstrap", "20", "--anneal",
                 "--anneal-kernel", "hmc", "--anneal-steps", "2", "--anneal-fixed", "--anneal-levels", "10",
                 "--anneal-resample-threshold", "0.3", "-o", str(tmp_path / "fe")]) == 0
    printed = capsys.readouterr().out
    evaluations = 600 * (2 + 10 * 2 * GENERATOR_DEFAULT.leapfrog_steps)  # 2 kernel steps of 5 leapfrog steps
    assert f"{evaluations} energy evaluations" in printed and "A(right) - A(left)" in printed, printed
    report = json.loads((tmp_path / "fe" / "free_energy.json").read_text())["anneal"]
    assert report["anneal_overrides"] == {"n_levels": 10, "kernel": "hmc", "mcmc_steps_per_level": 2,
                                          "adaptive": False, "resample_threshold": 0.3}
    assert report["n_levels"] == 10 and report["anneal"]["leapfrog_steps"] == GENERATOR_DEFAULT.leapfrog_steps
    # bad options: exit code 2 with one error line, before any work
    for args, message in ((["--anneal", "--anneal-steps", "0"], "expected an integer >= 1"),
                          (["--anneal", "--anneal-global", "-1"], "expected an integer >= 0"),
                          (["--anneal", "--anneal-step-size", "-1"], "expected a finite number > 0"),
                          (["--anneal", "--anneal-cess", "1"], "expected a number in (0, 1)"),
                          (["--anneal", "--anneal-resample-threshold", "1.5"], "expected a number in [0, 1]"),
                          (["--anneal", "--anneal-fixed", "--anneal-cess", "0.9"], "not apply with --anneal-fixed"),
                          (["--anneal-levels", "4"], "--anneal-levels only apply with --anneal"),
                          (["--anneal-resample-threshold", "0"], "--anneal-resample-threshold only apply")):
        with pytest.raises(SystemExit) if "expected" in message else _no_exit():
            code = main(["sample", str(model), "-n", "10", "-o", str(tmp_path / "x.npz"), *args])
            assert code == 2
        err = capsys.readouterr().err
        assert message in err and "error:" in err, err


def test_anneal_true_is_the_generator_default(poor):
    s = poor.sample(200, seed=4, anneal=True)
    settings = {k: v for k, v in dataclasses.asdict(GENERATOR_DEFAULT).items() if k not in ("seed", "progress")}
    assert {k: v for k, v in s.provenance["anneal"].items() if k != "seed"} == settings
    assert s.provenance["anneal_overrides"] == {}
    assert 1 < s.provenance["n_levels"] <= GENERATOR_DEFAULT.n_levels


def test_cli_anneal_uses_the_generator_default():
    """``--anneal`` alone is ``gen.sample(anneal=True)``'s `GENERATOR_DEFAULT`; its help states those defaults."""
    parser = build_parser()
    for command in ("sample", "free-energy"):
        args = parser.parse_args([command, "model.bg", "-o", "out.npz", "--anneal"])
        assert _anneal_config(args) == GENERATOR_DEFAULT
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices["sample"]
    text = " ".join(sub.format_help().split())
    for fragment in (f"default {GENERATOR_DEFAULT.n_levels})", f"default {GENERATOR_DEFAULT.target_cess})",
                     f"default {GENERATOR_DEFAULT.kernel})", f"default {GENERATOR_DEFAULT.mcmc_steps_per_level})",
                     f"default {GENERATOR_DEFAULT.resample_threshold})", "GENERATOR_DEFAULT"):
        assert fragment in text, (fragment, text)
    args = parser.parse_args(["sample", "m.bg", "-o", "o.npz", "--anneal", "--anneal-levels", "7", "--anneal-cess",
                              "0.9"])
    assert _anneal_config(args) == dataclasses.replace(GENERATOR_DEFAULT, n_levels=7, target_cess=0.9)
    assert anneal_overrides(_anneal_config(args)) == {"n_levels": 7, "target_cess": 0.9}
    with pytest.raises(ValueError, match=r"unknown AnnealConfig field\(s\) \['levels'\]"):
        generator_anneal_config(levels=3)
    with pytest.raises(ValueError, match="target_cess"):
        generator_anneal_config(target_cess=1.0)


class _no_exit:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False
