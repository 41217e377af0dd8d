"""Bad input to the analysis layer (issue 17): zero-weight sets and states, bad temperatures, bad sizes and
counts, damaged samples files. Every case is one clear error naming the problem, never a number made of
nothing (``0 +- 0``, NaN printed as a number) and never a hang."""

import dataclasses
import json
import math
import zipfile

import numpy as np
import openmm
import pytest
from test_bad_input_model import assert_one_line_error

from openmm_bg import BoltzmannGenerator, Samples
from openmm_bg.analysis import reweighting as rw
from openmm_bg.analysis.free_energy import (
    InsufficientSamplesError,
    MBARProblem,
    free_energy_profile,
    free_energy_surface,
    mbar_profile,
    state_free_energy,
    state_free_energy_mbar,
    thermodynamic_free_energy,
    two_generator_estimate,
)

BAD_TEMPERATURES = [math.nan, 0.0, -5.0, math.inf, -math.inf]


@pytest.fixture(scope="module")
def gen(dw, dw_data):
    return BoltzmannGenerator.build(dw, dw_data, n_blocks=2, hidden=(16,), seed=0)


@pytest.fixture(scope="module")
def samples(gen):
    return gen.sample(300, seed=0)


def _weightless(samples, cause: str) -> Samples:
    """``samples`` with weight zero everywhere, for one reason."""
    n = len(samples)
    if cause == "failed energy":
        return Samples(samples.system, samples.positions, np.full(n, np.inf), samples.log_prob)
    if cause == "out of domain":
        return Samples(samples.system, np.full_like(samples.positions, np.nan), samples.energies,
                       np.full(n, -np.inf))
    assert cause == "inverted chirality"
    return Samples(samples.system, samples.positions, samples.energies, samples.log_prob, rejected=np.ones(n, bool))


def _broken_target(dw):
    """The double well with an extra force whose energy is NaN everywhere (every energy fails)."""
    system = openmm.XmlSerializer.deserialize(openmm.XmlSerializer.serialize(dw.system))
    force = openmm.CustomExternalForce("1/(x-x)")
    force.addParticle(0, [])
    system.addForce(force)
    return dataclasses.replace(dw, system=system, name="double_well_broken")


def _left(x):
    return x[:, 0, 0] < -1.7


# ---------------------------------------------------------------------------------- 1. zero weights
CAUSES = ["failed energy", "out of domain", "inverted chirality"]


@pytest.mark.parametrize("cause", CAUSES)
@pytest.mark.parametrize("method", ["auto", "mbar", "bar", "exp"])
def test_thermodynamic_free_energy_refuses_a_set_without_weight(samples, dw, cause, method):
    """Was: ``0.000 +- 0.000`` with full ESS and no warning (MBAR)."""
    broken = _weightless(samples, cause)
    with pytest.raises(InsufficientSamplesError, match=rf"all 300 samples have weight zero \(.*300 {cause}"):
        thermodynamic_free_energy(dw, 350.0, samples=broken, method=method)


def test_one_weightless_set_among_several_is_named(samples, gen, dw):
    broken = _weightless(samples, "failed energy")
    with pytest.raises(InsufficientSamplesError, match="sample set 2 of 2: .*weight zero"):
        thermodynamic_free_energy(dw, 350.0, samples=[samples, broken], generators=[gen, gen])
    with pytest.raises(InsufficientSamplesError, match="sample set 2 of 2"):
        state_free_energy([samples, broken], "left", _left)


@pytest.mark.parametrize("method", ["mbar", "exp"])
def test_a_target_state_where_every_energy_fails_is_refused(samples, dw, method):
    """Every sample has weight zero *for the target*: was a meaningless MBAR number."""
    with pytest.raises(InsufficientSamplesError, match="double_well_broken at 300 K"):
        thermodynamic_free_energy(dw, _broken_target(dw), samples=samples, method=method)


@pytest.mark.parametrize("cause", CAUSES)
def test_state_free_energy_and_profiles_refuse_sets_without_weight(samples, cause):
    broken = _weightless(samples, cause)
    for call in (lambda: state_free_energy(broken, "left", _left),
                 lambda: free_energy_profile(broken, "x1"),
                 lambda: free_energy_surface(broken, "x1", "x2"),
                 lambda: broken.diagnostics(),
                 lambda: broken.expectation(np.zeros(len(broken))),
                 lambda: broken.resample(10)):
        with pytest.raises(InsufficientSamplesError, match=f"300 {cause}"):
            call()
    assert "EVERY SAMPLE HAS WEIGHT ZERO" in broken.summary() and broken.ess == 0.0


def test_mbar_based_estimators_refuse_sets_without_weight(samples, gen, dw):
    broken = _weightless(samples, "failed energy")
    for call in (lambda: mbar_profile("x1", dw, broken, generators=gen),
                 lambda: state_free_energy_mbar(broken, gen, "left", _left),
                 lambda: two_generator_estimate(broken, samples),
                 lambda: MBARProblem(broken, targets=[dw])):
        with pytest.raises(InsufficientSamplesError, match="300 failed energy"):
            call()


def test_a_state_without_weighted_samples_is_refused(samples):
    lp = np.where(_left(samples.positions), -np.inf, samples.log_prob)  # the left well: out of domain
    partly = Samples(samples.system, samples.positions, samples.energies, lp)
    with pytest.raises(InsufficientSamplesError, match="all have weight zero"):
        state_free_energy(partly, "left", _left)


def test_weight_functions_refuse_all_zero_weights_with_their_own_error():
    for call in (rw.diagnose, rw.kish_ess, rw.normalized_weights, rw.resample,
                 lambda lw: rw.reweighted_mean(np.ones(3), lw), lambda lw: rw.reweighted_histogram(np.ones(3), lw)):
        with pytest.raises(InsufficientSamplesError, match="every sample has weight zero"):
            call(np.full(3, -np.inf))


def test_bins_without_weighted_samples_are_refused_not_nan(samples):
    """Was: a histogram / profile of NaN (``0 of 50 bins filled, range 0 to nan kT``)."""
    with pytest.raises(InsufficientSamplesError, match="no sample with weight > 0 falls inside the bins"):
        rw.reweighted_histogram(np.array([0.0, 1.0]), np.zeros(2), bins=4, range=(5.0, 6.0))
    with pytest.raises(InsufficientSamplesError, match="falls inside the bins"):
        free_energy_profile(samples, "x1", range=(5.0, 6.0))
    with pytest.raises(InsufficientSamplesError, match="falls inside the bins"):
        free_energy_surface(samples, "x1", "x2", range=((5.0, 6.0), (-1.0, 1.0)))


def test_zero_weight_samples_may_carry_nan_values(samples):
    """A sample with weight zero (e.g. out of domain: NaN positions) does not turn a mean into NaN."""
    mean, err = rw.reweighted_mean([1.0, 3.0, np.nan], [0.0, 0.0, -np.inf], n_bootstrap=50)
    assert mean == pytest.approx(2.0) and np.isfinite(err)
    density, _, _ = rw.reweighted_histogram([1.0, 3.0, np.nan], [0.0, 0.0, -np.inf], bins=2, n_bootstrap=0)
    assert np.isfinite(density).all()
    with pytest.raises(ValueError, match="1 values of samples with weight > 0 are NaN"):
        rw.reweighted_mean([1.0, np.nan, 3.0], [0.0, 0.0, -np.inf])
    x = samples.positions.copy()
    x[:10] = np.nan  # ten samples out of domain
    lp = samples.log_prob.copy()
    lp[:10] = -np.inf
    part = Samples(samples.system, x, samples.energies, lp)
    mean, _ = part.expectation(lambda pos: pos[:, 0, 0])
    assert np.isfinite(mean) and -2.5 < mean < -1.0


def test_no_error_bar_is_said_not_printed_as_nan(samples):
    """``n_bootstrap=0``: was ``+- nan``."""
    r = state_free_energy(samples, "left", _left, n_bootstrap=0, min_ess=5)
    text = str(r)
    assert "no error bar" in text and "nan" not in text.lower() and math.isnan(r.error_kT)
    assert r.as_dict()["error_kT"] is None
    p = free_energy_profile(samples, "x1", n_bootstrap=0)
    assert "no error bars" in str(p) and "nan" not in str(p).lower()
    few = Samples(samples.system, samples.positions[:10], samples.energies[:10], samples.log_prob[:10])
    assert "Pareto k n/a" in str(few.diagnostics(warn=False))


# ---------------------------------------------------------------------------------- 1. temperatures
@pytest.mark.parametrize("temperature", BAD_TEMPERATURES)
def test_bad_temperatures_are_refused_in_one_line(samples, gen, dw, temperature):
    """Was: ``f(double_well at nan K) = ...``, ``ZeroDivisionError`` for 0, inf accepted."""
    with pytest.raises(ValueError, match="state_b must be a positive, finite temperature in K"):
        thermodynamic_free_energy(dw, temperature, samples=samples)
    with pytest.raises(ValueError, match="state_a must be a positive, finite temperature in K"):
        thermodynamic_free_energy(temperature, dw, samples=samples)
    with pytest.raises(ValueError, match="temperature must be a positive, finite temperature in K"):
        dw.with_temperature(temperature)
    with pytest.raises(ValueError, match="temperature must be a positive, finite temperature in K"):
        Samples(dw, samples.positions, samples.energies, samples.log_prob, temperature=temperature)
    with pytest.raises(ValueError, match="temperature must be a positive, finite temperature in K"):
        Samples.unweighted(dw, samples.positions, temperature=temperature)
    hot = dataclasses.replace(dw)
    hot.temperature = temperature  # a state whose temperature was set by hand
    for call in (lambda: thermodynamic_free_energy(dw, hot, samples=samples),
                 lambda: two_generator_estimate(samples, samples, state_a=dw, state_b=hot),
                 lambda: mbar_profile("x1", hot, samples, generators=gen),
                 lambda: MBARProblem(samples, targets=[hot])):
        with pytest.raises(ValueError, match="must be a positive, finite temperature in K"):
            call()


# ---------------------------------------------------------------------------------- 2. sizes and counts
@pytest.mark.parametrize("n_bootstrap", [-1, 1, 2.5, "200", None, True])
def test_bad_n_bootstrap_is_refused(samples, n_bootstrap):
    """Was: -1 silently meant "no error bar" (``+- nan``), 1 gave NaN with a numpy warning."""
    values, log_w = np.zeros(len(samples)), samples.log_weights
    for call in (lambda: state_free_energy(samples, "left", _left, n_bootstrap=n_bootstrap),
                 lambda: free_energy_profile(samples, "x1", n_bootstrap=n_bootstrap),
                 lambda: rw.reweighted_mean(values, log_w, n_bootstrap=n_bootstrap),
                 lambda: rw.reweighted_histogram(values, log_w, n_bootstrap=n_bootstrap),
                 lambda: samples.expectation(values, n_bootstrap=n_bootstrap)):
        with pytest.raises(ValueError, match=r"n_bootstrap must be 0 \(no error bar\) or an integer >= 2"):
            call()


@pytest.mark.parametrize("seed", [-1, 1.5, "0"])
def test_bad_bootstrap_seed_is_refused(samples, seed):
    values, log_w = np.zeros(len(samples)), samples.log_weights
    for call in (lambda: state_free_energy(samples, "left", _left, seed=seed),
                 lambda: free_energy_profile(samples, "x1", seed=seed),
                 lambda: rw.reweighted_mean(values, log_w, seed=seed),
                 lambda: rw.resample(log_w, seed=seed)):
        with pytest.raises(ValueError, match="seed must be an integer >= 0"):
            call()


BAD_BINS = [0, 1, -5, 2.5, "auto", None, True, [0.0, 1.0], [0.0, 0.0, 1.0], [1.0, 0.5, 0.0], [[0.0, 1.0, 2.0]],
            [0.0, np.nan, 1.0], [0.0, 1.0, np.inf]]


@pytest.mark.parametrize("bins", BAD_BINS)
def test_bad_bins_of_a_profile_are_refused(samples, gen, dw, bins):
    for call in (lambda: free_energy_profile(samples, "x1", bins=bins),
                 lambda: mbar_profile("x1", dw, samples, bins=bins),
                 lambda: free_energy_surface(samples, "x1", "x2", bins=bins),
                 lambda: free_energy_surface(samples, "x1", "x2", bins=(10, bins))):
        with pytest.raises(ValueError, match=r"bins(\[\d\]| of a surface)? must be a number of bins >= 2 or"):
            call()


@pytest.mark.parametrize("bins", [0, -1, 1.5, "auto", [0.0], [2.0, 1.0]])
def test_bad_bins_of_a_histogram_are_refused(bins):
    with pytest.raises(ValueError, match="bins must be a number of bins >= 1 or strictly increasing"):
        rw.reweighted_histogram(np.arange(5.0), np.zeros(5), bins=bins)


BAD_RANGES = [(1.0, 0.0), (0.0, 0.0), (np.nan, 1.0), (0.0, np.inf), (0.0,), (0.0, 1.0, 2.0), "ab", 5.0]


@pytest.mark.parametrize("range_", BAD_RANGES)
def test_bad_ranges_are_refused(samples, dw, range_):
    for call in (lambda: free_energy_profile(samples, "x1", range=range_),
                 lambda: mbar_profile("x1", dw, samples, range=range_),
                 lambda: rw.reweighted_histogram(np.arange(5.0), np.zeros(5), range=range_),
                 lambda: free_energy_surface(samples, "x1", "x2", range=((-2.0, 2.0), range_))):
        with pytest.raises(ValueError, match=r"range(\[1\])? must be \(low, high\) with finite low < high"):
            call()


@pytest.mark.parametrize("min_ess", [0, -1.0, np.nan, np.inf, "30"])
def test_bad_min_ess_is_refused(samples, gen, min_ess):
    for call in (lambda: state_free_energy(samples, "left", _left, min_ess=min_ess),
                 lambda: state_free_energy_mbar(samples, gen, "left", _left, min_ess=min_ess)):
        with pytest.raises(ValueError, match="min_ess must be positive and finite"):
            call()


@pytest.mark.parametrize("n", [0, -1, 2.5, "10"])
def test_bad_resample_count_is_refused(samples, n):
    """Was: ``n=0`` gave an empty trajectory, a negative ``n`` a numpy error."""
    with pytest.raises(ValueError, match="n must be an integer >= 1"):
        rw.resample(samples.log_weights, n=n)
    with pytest.raises(ValueError, match="n must be an integer >= 1"):
        samples.resample(n)


def test_bad_method_is_refused_before_any_work(samples, dw):
    with pytest.raises(ValueError, match="method must be 'auto', 'mbar', 'bar' or 'exp'"):
        thermodynamic_free_energy(dw, 350.0, samples=_weightless(samples, "failed energy"), method="tsallis")


def test_good_counts_still_work(samples):
    assert rw.reweighted_histogram(np.arange(5.0), np.zeros(5), bins=1.0, n_bootstrap=0)[0].shape == (1,)
    p = free_energy_profile(samples, "x1", bins=np.linspace(-2.5, -1.0, 6), n_bootstrap=2, seed=None)
    assert p.free_energy_kT.shape == (5,) and len(samples.resample(3.0)) == 3


# ---------------------------------------------------------------------------------- 4. samples files
def _saved(samples, tmp_path):
    return samples.save(tmp_path / "samples.npz")


def _load_refused(path, system, *parts):
    """Loading ``path`` is one ValueError line naming the file (and ``parts``)."""
    return assert_one_line_error(lambda: Samples.load(path, system), path, *parts)


def test_a_missing_samples_file_is_file_not_found(dw, tmp_path):
    with pytest.raises(FileNotFoundError, match="samples file not found"):
        Samples.load(tmp_path / "missing.npz", dw)


@pytest.mark.parametrize("cut", [0.1, 0.5, 0.9, 0.99])
def test_a_truncated_samples_file_is_one_line(samples, dw, tmp_path, cut):
    """Was: zipfile.BadZipFile / EOFError tracebacks."""
    path = _saved(samples, tmp_path)
    raw = path.read_bytes()
    path.write_bytes(raw[:int(cut * len(raw))])
    _load_refused(path, dw, "corrupt or truncated", "Samples.save")


@pytest.mark.parametrize("where", [0.2, 0.5, 0.8])
def test_damaged_bytes_in_a_samples_file_are_one_line(samples, dw, tmp_path, where):
    path = _saved(samples, tmp_path)
    raw = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as z:  # damage the compressed data of the positions, not the zip's index
        info = z.getinfo("positions.npy")
    start = info.header_offset + 30 + len(info.filename) + len(info.extra)
    raw[start + int(where * info.compress_size)] ^= 0xFF
    path.write_bytes(bytes(raw))
    _load_refused(path, dw, "corrupt or truncated", "Samples.save")


def _rewrite(samples, path, **changes):
    arrays = {"positions": samples.positions, "energies": samples.energies, "log_prob": samples.log_prob,
              "log_weights": samples.log_weights, "rejected": samples.rejected,
              "temperature": np.float64(samples.temperature),
              "meta": json.dumps({"system": samples.system.name, "counts": samples.counts,
                                  "provenance": samples.provenance})}
    arrays.update(changes)
    np.savez_compressed(path, **{k: v for k, v in arrays.items() if v is not None})
    return path


FOREIGN = [
    ("other-arrays", {"positions": None, "energies": None, "weights": np.zeros(3)},
     "no positions, energies arrays"),
    ("positions-2d", {"positions": np.zeros((300, 3))}, "positions must be floats of shape [n, n_atoms, 3]"),
    ("positions-strings", {"positions": np.array([["a"]])}, "positions must be floats"),
    ("energies-short", {"energies": np.zeros(299)}, "energies must be numbers of shape [300]"),
    ("rejected-long", {"rejected": np.zeros(301, bool)}, "rejected must be numbers of shape [300]"),
    ("temperature-array", {"temperature": np.zeros(2)}, "temperature must be one number (K)"),
    ("temperature-zero", {"temperature": np.float64(0.0)}, "temperature must be a positive, finite temperature"),
    ("meta-not-json", {"meta": "{system: dw"}, "its metadata is not JSON"),
    ("meta-a-list", {"meta": "[1, 2]"}, "its metadata must be a JSON object"),
    ("counts-a-list", {"meta": json.dumps({"counts": [1]})}, "metadata 'counts' must be a JSON object"),
    ("normalizer-a-string", {"meta": json.dumps({"log_normalizer": "x", "provenance": {"kind": "annealed"}})},
     "metadata 'log_normalizer' must be a number or null"),
    ("weights-nan", {"log_weights": np.full(300, np.nan), "meta": json.dumps({"provenance": {"kind": "annealed"}})},
     "inconsistent samples file (log_weights contain NaN"),
]


@pytest.mark.parametrize("name, changes, message", FOREIGN, ids=[f[0] for f in FOREIGN])
def test_foreign_or_malformed_samples_files_are_one_line(samples, dw, tmp_path, name, changes, message):
    """Was: KeyError, IndexError, AttributeError or a Samples error without the file's name."""
    path = _rewrite(samples, tmp_path / f"{name}.npz", **changes)
    _load_refused(path, dw, message, "Samples.save")


def test_files_that_are_not_npz_archives_are_one_line(samples, dw, tmp_path):
    text = tmp_path / "text.npz"
    text.write_text("positions,energies\n1,2\n")
    _load_refused(text, dw, "corrupt or truncated")
    single = tmp_path / "single.npz"
    with open(single, "wb") as f:
        np.save(f, samples.positions)
    _load_refused(single, dw, "a single ndarray, not an .npz archive")
    pickled = tmp_path / "objects.npz"
    np.savez(pickled, positions=np.array([{"x": 1}], dtype=object))
    _load_refused(pickled, dw, "corrupt or truncated")


def test_samples_of_another_system_are_refused_with_the_fix(samples, tmp_path):
    from openmm_bg.systems import load

    path = _saved(samples, tmp_path)
    _load_refused(path, load("alanine_dipeptide"), "holds samples of 1 atoms (system 'double_well')",
                  "system 'alanine_dipeptide' has 22", "load it with the system it was sampled for")
    with pytest.warns(UserWarning, match="written for system 'double_well' and is loaded for 'mueller_brown'"):
        Samples.load(path, load("mueller_brown"))


def test_good_samples_files_still_load(samples, dw, tmp_path):
    back = Samples.load(_saved(samples, tmp_path), dw)
    np.testing.assert_array_equal(back.log_weights, samples.log_weights)
    assert back.temperature == samples.temperature and back.counts == samples.counts
