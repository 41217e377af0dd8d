"""Free energies between thermodynamic states against analytic harmonic oscillators; bad input.

A 1-particle 3D harmonic oscillator U = k |r|^2 / 2 (kJ/mol) has the configurational partition
function Z = (2 pi kT / k)^(3/2) (nm^3), so f = -log Z and A = kT f are exact.
"""

import json
import math
import subprocess
import sys

import numpy as np
import openmm
import openmm.app as app
import pytest

import openmm_bg
from openmm_bg import BoltzmannGenerator, Samples
from openmm_bg.analysis.free_energy import (
    InsufficientSamplesError,
    MBARProblem,
    state_free_energy,
    thermodynamic_free_energy,
    two_generator_estimate,
)
from openmm_bg.systems import from_openmm


def oscillator(k: float, temperature: float, name: str, n_particles: int = 1):
    system = openmm.System()
    force = openmm.CustomExternalForce("0.5*k*(x^2+y^2+z^2)")
    force.addGlobalParameter("k", k)
    topology = app.Topology()
    chain = topology.addChain()
    residue = topology.addResidue("PRT", chain)
    for i in range(n_particles):
        system.addParticle(1.0)
        force.addParticle(i, [])
        topology.addAtom(f"P{i}", app.Element.getBySymbol("Ar"), residue)
    system.addForce(force)
    return from_openmm(system, topology, np.zeros((n_particles, 3)), temperature=temperature, name=name)


def exact_f(system, k: float) -> float:
    """Reduced free energy -log Z of the oscillator (Z in nm^3)."""
    return -1.5 * math.log(2 * math.pi * system.kT / k)


K_A, K_B = 100.0, 300.0


@pytest.fixture(scope="module")
def oscillators():
    a = oscillator(K_A, 300.0, "ho_a")
    b = oscillator(K_B, 350.0, "ho_b")
    md_a = openmm_bg.simulate(a, n_frames=4000, stride=50, seed=0, platform="Reference", progress=False)
    md_b = openmm_bg.simulate(b, n_frames=4000, stride=50, seed=1, platform="Reference", progress=False)
    # a generator "trained" by its whitening alone: built from equilibrium samples of A
    gen_a = BoltzmannGenerator.build(a, md_a, n_blocks=1, hidden=(8,), seed=0)
    # a deliberately poor generator for B: built from frames at 3x the temperature (too broad)
    hot = openmm_bg.simulate(b.with_temperature(1050.0), n_frames=1000, stride=50, seed=2, platform="Reference",
                             progress=False)
    gen_b = BoltzmannGenerator.build(b, hot, n_blocks=1, hidden=(8,), seed=0)
    return a, b, md_a, md_b, gen_a, gen_b


def _check(result, exact_reduced, exact_kj=None):
    assert abs(result.delta_f - exact_reduced) < 4 * result.error_f, (str(result), exact_reduced)
    assert abs(result.delta_f - exact_reduced) < 0.05, (str(result), exact_reduced)
    assert 0 < result.error_f < 0.0125
    if exact_kj is not None:
        assert abs(result.delta_a_kJ_mol - exact_kj) < 4 * result.error_kJ_mol, (str(result), exact_kj)


def test_unbiased_estimators_match_analytic_oscillators(oscillators):
    """Different force constants and temperatures: MBAR, EXP, BAR (BG + MD) and MBAR with two
    generators, each within 4 sigma and 0.05 of the exact reduced difference; kJ/mol too."""
    a, b, md_a, md_b, gen_a, gen_b = oscillators
    exact = exact_f(b, K_B) - exact_f(a, K_A)
    exact_kj = b.kT * exact_f(b, K_B) - a.kT * exact_f(a, K_A)
    samples_a = gen_a.sample(20000, seed=1)
    assert samples_a.ess_fraction > 0.5

    mbar = thermodynamic_free_energy(a, b, samples=samples_a)
    assert mbar.method == "mbar" and mbar.reliable
    _check(mbar, exact, exact_kj)
    exp = thermodynamic_free_energy(a, b, samples=samples_a, method="exp")
    assert exp.method == "exp"
    _check(exp, exact, exact_kj)
    bar = thermodynamic_free_energy(a, b, samples=samples_a, generators=gen_a, md_a=md_a, md_b=md_b,
                                    method="bar")
    _check(bar, exact, exact_kj)
    both = thermodynamic_free_energy(a, b, samples=[samples_a, gen_b.sample(20000, seed=2)],
                                     generators=[gen_a, gen_b], md_a=md_a, md_b=md_b)
    _check(both, exact, exact_kj)
    assert both.generator_consistency < 0.05  # both generators are normalised: f_gen2 - f_gen1 = 0
    # the result objects: a readable line and JSON
    assert "reduced" in str(both) and "kJ/mol" in str(both)
    d = json.loads(json.dumps(both.as_dict()))
    assert d["method"] == "mbar" and d["delta_f"] == pytest.approx(both.delta_f)
    assert d["delta_a_kcal_mol"] == pytest.approx(both.delta_a_kJ_mol / 4.184)


def test_plain_md_bar_and_exp(oscillators):
    """Without a generator: BAR between the MD ensembles; kJ/mol is undetermined across temperatures
    (no normalised reference), but defined at one temperature."""
    a, b, md_a, md_b, _, _ = oscillators
    exact = exact_f(b, K_B) - exact_f(a, K_A)
    bar = thermodynamic_free_energy(a, b, md_a=md_a, md_b=md_b)
    assert bar.method == "bar"
    assert abs(bar.delta_f - exact) < 4 * bar.error_f
    assert math.isnan(bar.delta_a_kJ_mol) and "undetermined" in str(bar)
    # one temperature, stiffer spring: EXP from A alone (narrower target: good overlap)
    b300 = oscillator(K_B, 300.0, "ho_b300")
    exp = thermodynamic_free_energy(a, b300, md_a=md_a)
    assert exp.method == "exp"
    exact300 = exact_f(b300, K_B) - exact_f(a, K_A)
    assert abs(exp.delta_f - exact300) < 4 * exp.error_f
    assert exp.delta_a_kJ_mol == pytest.approx(exp.delta_f * a.kT)


def test_temperature_change_with_one_generator_sampled_at_two_temperatures(oscillators):
    """300 K vs 350 K of the same system: one generator sampled at both temperatures (two sets)."""
    a, _, _, _, gen_a, _ = oscillators
    hot = a.with_temperature(350.0)
    exact = exact_f(hot, K_A) - exact_f(a, K_A)
    result = thermodynamic_free_energy(a, 350.0, samples=[gen_a.sample(10000, seed=3),
                                                          gen_a.sample(10000, temperature=350.0, seed=4)],
                                       generators=[gen_a, gen_a])
    assert result.temperature_b == 350.0
    _check(result, exact, hot.kT * exact_f(hot, K_A) - a.kT * exact_f(a, K_A))
    assert result.two_generator is not None


def test_two_generator_estimate_is_biased_by_the_kl_difference(oscillators):
    """<J_KL^B> - <J_KL^A> is a difference of upper bounds: with a poor generator for B it lies
    above the exact value by KL_B - KL_A > 0, far outside its sampling error."""
    a, b, md_a, md_b, gen_a, gen_b = oscillators
    exact = exact_f(b, K_B) - exact_f(a, K_A)
    samples_a, samples_b = gen_a.sample(10000, seed=5), gen_b.sample(10000, seed=6)
    result = thermodynamic_free_energy(a, b, samples=[samples_a, samples_b], generators=[gen_a, gen_b])
    two = result.two_generator
    assert two is not None and "upper bounds" in str(two) and "bias" in str(two)
    assert two.delta_f - exact > 4 * two.error, (str(two), exact)  # sign of the bias
    assert two.bias > 0.1 and two.kl_b > two.kl_a
    assert two.delta_f - result.delta_f == pytest.approx(two.bias, abs=1e-9)
    # each J_KL is an upper bound of its state's f
    assert two.j_kl_a > exact_f(a, K_A) - 4 * two.error
    assert two.j_kl_b > exact_f(b, K_B) - 4 * two.error
    # the standalone function gives the same numbers
    alone = two_generator_estimate(samples_a, samples_b)
    assert alone.delta_f == pytest.approx(two.delta_f)
    assert math.isnan(alone.kl_a)


# ---------------------------------------------------------------------- bad input
@pytest.fixture(scope="module")
def double_well_samples(dw, dw_data):
    gen = BoltzmannGenerator.build(dw, dw_data, n_blocks=1, hidden=(8,), seed=0)
    return dw, gen.sample(2000, seed=0)


def test_empty_and_weightless_states_are_refused(double_well_samples):
    system, samples = double_well_samples
    # training data only from the left well: no sample reaches x1 > 2.5
    with pytest.raises(InsufficientSamplesError, match="holds no samples"):
        state_free_energy(samples, "left", lambda x: x[:, 0, 0] > 2.5)
    inner = samples.positions[:, 0, 0] < -1.7
    lp = np.where(inner, samples.log_prob, -np.inf)  # everything at x1 > -1.7 out of domain
    broken = Samples(system, samples.positions, np.where(inner, samples.energies, np.inf), lp)
    assert (~inner).sum() > 100
    with pytest.raises(InsufficientSamplesError, match=r"holds \d+ samples but all have weight zero"):
        state_free_energy(broken, "left", lambda x: x[:, 0, 0] > -1.7)
    with pytest.raises(InsufficientSamplesError, match="effective samples"):
        state_free_energy(samples, "left", lambda x: x[:, 0, 0] > 0.0, min_ess=1e9)
    with pytest.raises(ValueError, match="no samples given"):
        state_free_energy([], "left", "right")


def test_bad_states_and_mismatched_topologies(double_well_samples, oscillators):
    system, samples = double_well_samples
    with pytest.raises(KeyError, match="no state 'C7ax'"):
        state_free_energy(samples, "left", "C7ax")
    with pytest.raises(ValueError, match="one boolean per configuration"):
        state_free_energy(samples, "left", lambda x: x[:, 0] > 0)
    with pytest.raises(ValueError, match="different temperatures"):
        state_free_energy([samples, Samples(system, samples.positions, samples.energies, samples.log_prob,
                                            temperature=350.0)], "left", "right")
    a, b, md_a, md_b, gen_a, _ = oscillators
    two_particles = oscillator(K_A, 300.0, "ho2", n_particles=2)
    with pytest.raises(ValueError, match="share a topology.*1 atoms.*2"):
        thermodynamic_free_energy(a, two_particles, md_a=md_a)
    with pytest.raises(ValueError, match="share a topology"):
        thermodynamic_free_energy(a, b, samples=samples)  # double-well samples for oscillator states
    with pytest.raises(ValueError, match="share a topology"):
        state_free_energy([samples, gen_a.sample(100)], "left", "right")
    with pytest.raises(ValueError, match="pass generators"):
        thermodynamic_free_energy(a, b, samples=gen_a.sample(100), md_b=md_b)
    with pytest.raises(ValueError, match="method must be"):
        thermodynamic_free_energy(a, b, samples=gen_a.sample(100), method="tsallis")
    with pytest.raises(ValueError, match="no data"):
        thermodynamic_free_energy(a, b)


def test_state_free_energy_result_object(double_well_samples):
    _, samples = double_well_samples
    r = state_free_energy(samples, "left", lambda x: x[:, 0, 0] < -1.7, min_ess=5)
    assert r.delta_a_kT > 0 and r.error_kT > 0 and r.n_b < r.n_a
    assert r.delta_a_kJ_mol == pytest.approx(r.delta_a_kT * r.temperature * 0.0083144626, rel=1e-6)
    assert r.delta_a_kcal_mol == pytest.approx(r.delta_a_kJ_mol / 4.184)
    text = str(r)
    for part in ("kT", "kJ/mol", "kcal/mol", "ESS", "Pareto k", "largest weight"):
        assert part in text
    d = json.loads(json.dumps(r.as_dict()))
    assert d["diagnostics_a"]["ess"] == pytest.approx(r.ess_a)
    with pytest.raises(AttributeError):
        r.delta_a_kT = 0.0  # frozen


def test_pymbar_import_is_quiet():
    code = ("import openmm_bg.analysis.free_energy as fe; fe.pymbar_module(); "
            "import numpy as np; fe.pymbar_module().other_estimators.exp(np.zeros(3))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "JAX" not in out.stdout + out.stderr
    assert "timeseries" not in out.stdout + out.stderr


# ---------------------------------------------------------------------- the MBAR problem object
def test_mbar_problem_gives_thermodynamic_free_energy_numbers(oscillators):
    """Built as thermodynamic_free_energy builds it (two generators, MD of both states decorrelated on
    u_B - u_A), the problem object gives the same numbers; u_kn and N_k are computed once."""
    a, b, md_a, md_b, gen_a, gen_b = oscillators
    sets = [gen_a.sample(5000, seed=21), gen_b.sample(5000, seed=22)]
    r = thermodynamic_free_energy(a, b, samples=sets, generators=[gen_a, gen_b], md_a=md_a, md_b=md_b)
    problem = MBARProblem(sets, [gen_a, gen_b], targets=[a, b], md=[(0, md_a), (1, md_b)], decorrelate=[(2, 3)])
    assert problem.n_generators == 2 and problem.n_states == 4
    assert problem.delta_f(2, 3) == (r.delta_f, r.error_f)
    f, cov = problem.free_energies()
    assert r.delta_a_kJ_mol == pytest.approx(b.kT * f[3] - a.kT * f[2], rel=1e-12)
    assert r.generator_consistency == pytest.approx(abs(f[1]), rel=1e-12)
    assert problem.weight_diagnostics(2).ess == r.diagnostics_a.ess
    assert problem.counts() == r.n_samples
    assert [s.n_kept for s in problem.subsampling] == problem.N_k[2:].tolist()
    assert all(s.n_kept < s.n_frames for s in problem.subsampling)  # correlated MD was thinned
    # the blocks: the target energies on a set are the stored ones rescaled, -log p its own density
    np.testing.assert_array_equal(problem.reduced_potential(2, sampled_from=0), sets[0].energies)
    np.testing.assert_array_equal(problem.reduced_potential(0, sampled_from=0), -sets[0].log_prob)
    np.testing.assert_allclose(problem.reduced_potential(3, sampled_from=2),
                               0.5 * K_B * (problem.positions[10000:10000 + problem.N_k[2]] ** 2).sum((1, 2)) / b.kT,
                               rtol=1e-12)
    u1, u2 = problem.u_kn, problem.u_kn
    assert u1 is u2 and u1.shape == (4, problem.N_k.sum()) and not problem.N_k.flags.writeable
    assert problem.positions.shape == (u1.shape[1], 1, 3)
    # BAR between the generator and each target from the blocks of one object: the "bar" method's numbers
    one = MBARProblem(sets[0], gen_a, targets=[a, b], md=[(0, md_a), (1, md_b)], decorrelate=[(1, 2)])
    bar = thermodynamic_free_energy(a, b, samples=sets[0], generators=gen_a, md_a=md_a, md_b=md_b, method="bar")
    pymbar = openmm_bg.analysis.free_energy.pymbar_module()
    f_bar = [pymbar.other_estimators.bar(one.reduced_potential(k, 0) - one.reduced_potential(0, 0),
                                         one.reduced_potential(0, k) - one.reduced_potential(k, k))["Delta_f"]
             for k in (1, 2)]
    assert bar.delta_f == pytest.approx(f_bar[1] - f_bar[0], rel=1e-12)
    assert f_bar[0] == pytest.approx(exact_f(a, K_A), abs=0.05)


def test_mbar_problem_is_lazy_and_checks_its_input(oscillators):
    a, b, md_a, md_b, gen_a, _ = oscillators
    samples = gen_a.sample(500, seed=23)
    # without generators only the generator's own block can be evaluated: asked for, others say why
    problem = MBARProblem(samples, targets=[a, b], md=[(1, md_b)])
    assert problem.reduced_potential(2, sampled_from=0).shape == (500,)
    with pytest.raises(ValueError, match="need the generators"):
        problem.u_kn  # noqa: B018
    with pytest.raises(ValueError, match="no data"):
        MBARProblem(targets=[a])
    with pytest.raises(ValueError, match="one generator per sample set"):
        MBARProblem([samples, samples], gen_a, targets=[a])
    with pytest.raises(ValueError, match="target index"):
        MBARProblem(samples, gen_a, targets=[a], md=[(1, md_b)])
    with pytest.raises(ValueError, match="decorrelate entries"):
        MBARProblem(samples, gen_a, targets=[a], md=[(0, md_a)], decorrelate=[(0, 7)])
    with pytest.raises(ValueError, match="share a topology"):
        MBARProblem(samples, gen_a, targets=[oscillator(K_A, 300.0, "two", n_particles=2)])
    with pytest.raises(InsufficientSamplesError, match="no MD frame lies in state"):
        MBARProblem(samples, gen_a, targets=[(a, lambda x: x[:, 0, 0] > 10.0)], md=[(0, md_a)])
    with pytest.raises(ValueError, match="observables must have shape"):
        MBARProblem(samples, targets=[a]).expectations(np.zeros(3), state=1)


def test_public_names():
    import openmm_bg.analysis.free_energy as fe

    assert "MBARProblem" in fe.__all__ and all(hasattr(fe, name) for name in fe.__all__)
    assert not {"KJ_PER_KCAL", "DEFAULT_MIN_ESS", "MIN_OVERLAP"} & set(fe.__all__)
    assert fe.KJ_PER_KCAL == 4.184  # still importable
