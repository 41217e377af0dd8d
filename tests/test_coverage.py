"""Coverage diagnostics: a generator that lost a basin of its data is flagged, a covering one is not."""

import json

import mdtraj
import numpy as np
import pytest

from openmm_bg import BoltzmannGenerator
from openmm_bg.analysis import Samples
from openmm_bg.analysis.coverage import MIN_EFFECTIVE_SAMPLES, CoverageReference, coverage, coverage_reference
from openmm_bg.apps.cli import main
from openmm_bg.data import structure_path
from openmm_bg.model.coverage import COVERAGE_KEY, _zmatrix_torsions
from openmm_bg.systems import load
from openmm_bg.training import Stage, Trainer

SMALL = {"n_blocks": 2, "hidden": (16,), "seed": 0}
PRETRAINED = "models/alanine_dipeptide_vacuum.bg"


@pytest.fixture(scope="module")
def both_wells(dw_data):
    """Data holding both wells of the double well: the 300 MD frames of the left well of ``dw_data``
    and their mirror images x -> -x in the right well."""
    left = dw_data.xyz.astype(np.float64)
    assert (left[:, 0, 0] < 0).all()
    right = left.copy()
    right[:, 0, 0] *= -1
    return np.concatenate([left, right])


def _trained(system, data, steps=150):
    gen = BoltzmannGenerator.build(system, data, **SMALL)
    Trainer(gen, data, [Stage("ml", steps, batch_size=128)], progress=False).fit()
    return gen


def test_generator_trained_on_one_well_is_flagged_when_the_data_hold_both(dw, both_wells):
    one_well = _trained(dw, both_wells[:300])
    samples = one_well.sample(3000, seed=0)
    assert (samples.positions[:, 0, 0] > 0).mean() < 0.01  # it never reaches the right well
    report = samples.coverage(data=both_wells)
    assert report.method == "k-means on coordinates" and report.n_data == 600
    assert report.lost and not report.reliable
    for c in report.lost:  # exactly the right well's clusters are lost
        assert c.ess < MIN_EFFECTIVE_SAMPLES and c.data_share >= 0.01 and c.description.startswith("x = 1.")
    kept = [c for c in report.clusters if not c.lost]
    assert kept and all(c.description.startswith("x = -1.") and c.ess > 100 for c in kept)
    assert sum(c.data_share for c in report.lost) == pytest.approx(0.5)
    text = str(report)
    assert "LOST" in text and "the generator lost cluster" in text and "effective samples" in text
    assert "train with more weight on the data" in text and "more data in that region" in text
    # shares are fractions of all samples / weight / frames
    assert sum(c.raw_share for c in report.clusters) == pytest.approx(1.0)
    assert sum(c.reweighted_share for c in report.clusters) == pytest.approx(1.0)
    # with that clustering attached, the samples call themselves unreliable
    samples.coverage_reference = coverage_reference(dw, both_wells).as_dict()
    assert any("cluster(s) of the training data lost" in r for r in samples.unreliable())
    assert "the generator lost cluster" in samples.summary()


def test_generator_of_both_wells_is_not_flagged(dw, both_wells):
    gen = _trained(dw, both_wells)
    report = gen.sample(3000, seed=0).coverage()  # the clustering made at build time
    assert report.n_data == 600 and len(report.clusters) >= 2
    assert not report.lost, str(report)
    assert all(c.ess >= MIN_EFFECTIVE_SAMPLES for c in report.clusters)


def test_normal_dw_gen_is_not_flagged_and_its_summary_has_the_table(dw_gen, tmp_path):
    reference = dw_gen.coverage_reference
    assert COVERAGE_KEY not in dw_gen.extra
    assert reference["method"] == "k-means on coordinates" and reference["n_data"] == 300
    samples = dw_gen.sample(3000, seed=0)
    report = samples.coverage()
    assert not report.lost, str(report)
    text = samples.summary()
    assert "coverage of the training data (k-means on coordinates; 300 frames, 3000 samples)" in text
    assert "LOST" not in text
    # the clustering travels with the samples file and the model file
    back = Samples.load(samples.save(tmp_path / "s.npz"), dw_gen.system)
    assert back.coverage_reference == samples.coverage_reference and back.summary() == text
    dw_gen.save(tmp_path / "m.bg")
    loaded = BoltzmannGenerator.load(tmp_path / "m.bg", dw_gen.system)
    assert loaded.coverage_reference == reference and COVERAGE_KEY not in loaded.extra
    json.dumps(reference)  # plain data
    assert CoverageReference.from_dict(reference).as_dict() == reference


def test_alanine_is_clustered_on_backbone_basins_and_on_torsions_on_request():
    ala = load("alanine_dipeptide")
    md = mdtraj.load(str(structure_path("models/alanine_dipeptide_vacuum_md.h5")))[::10]
    ref = coverage_reference(ala, md)
    assert ref.method == "backbone basins" and ref.names == ["alphaL_2", "alphaR_2", "beta_2"]
    assert ref.partitions == ["residue 2"] * 3 and sum(ref.data_counts) == md.n_frames
    alpha_l = ref.data_counts[0] / md.n_frames
    phi = ala.reaction_coordinates["phi"](md)
    assert alpha_l == pytest.approx(((phi > 0) & (phi < 2.2)).mean())
    assert 0.02 < alpha_l < 0.5  # the shipped data hold (restrained) C7ax frames
    # the MD frames themselves, unweighted: as many effective samples as frames in each basin, and a
    # basin with fewer than 30 of them (alpha-L in these 334 frames) is flagged
    report = coverage(Samples.unweighted(ala, md), ref)
    assert [c.data_share for c in report.clusters] == pytest.approx([c.raw_share for c in report.clusters])
    assert [c.ess for c in report.clusters] == pytest.approx([c.n_samples for c in report.clusters])
    assert [c.lost for c in report.clusters] == [c.n_samples < 30 for c in report.clusters]
    assert report.lost and "the generator lost basin alphaL_2 (0 < phi_2 < 2.2 rad) of your data" in str(report)
    # k-means on (sin, cos) of phi and psi (k by silhouette): one cluster with phi > 0 (C7ax), others phi < 0
    km = coverage_reference(ala, md, basins=False)
    assert km.method == "k-means on torsions" and km.features["atoms"] == [[4, 6, 8, 14], [6, 8, 14, 16]]
    centres = np.asarray(km.centres)
    phis = np.degrees(np.arctan2(centres[:, 0], centres[:, 2]))
    assert (phis > 0).sum() == 1 and (phis < 0).sum() >= 1
    assert km.data_counts[int(np.argmax(phis))] / md.n_frames == pytest.approx(alpha_l, abs=0.02)
    assert "(4, 6, 8, 14) 64 deg" in km.descriptions[int(np.argmax(phis))]


def test_generator_of_a_molecule_clusters_its_data_and_flags_a_lost_basin():
    """The shipped alanine model against its data: the basin table; data without C7ax frames
    cannot make C7ax count as lost (its data share is below 1%)."""
    ala = load("alanine_dipeptide")
    gen = BoltzmannGenerator.load(structure_path(PRETRAINED), ala)
    assert (4, 6, 8, 14) in _zmatrix_torsions(gen.transform)
    md = mdtraj.load(str(structure_path("models/alanine_dipeptide_vacuum_md.h5")))[::10]
    samples = gen.sample(4000, seed=1)
    report = samples.coverage(data=md)
    assert [c.name for c in report.clusters] == ["alphaL_2", "alphaR_2", "beta_2"]
    beta = report.clusters[2]
    assert beta.ess > MIN_EFFECTIVE_SAMPLES and beta.raw_share > 0.3
    # only C7eq frames as data: the alpha-L basin holds < 1% of them and is never flagged
    phi = ala.reaction_coordinates["phi"](md)
    eq_only = coverage(samples, data=md[np.flatnonzero(phi < 0)])
    assert eq_only.clusters[0].data_share == 0 and not eq_only.clusters[0].lost


def test_unreliable_line_on_heavy_tailed_weights(dw, capsys):
    from openmm_bg.apps.cli import _print_reliability

    log_w = np.log(np.random.default_rng(0).pareto(0.9, 4000) + 1.0)  # tail index ~1.1: k ~ 0.9
    heavy = Samples(dw, np.zeros((4000, 1, 3)), np.zeros(4000), -log_w)
    assert heavy.diagnostics(warn=False).pareto_k >= 0.7
    _print_reliability(heavy)
    out = capsys.readouterr().out
    assert out.startswith("UNRELIABLE: Pareto k ") and ">= 0.7" in out and "cannot be trusted" in out
    light = Samples(dw, np.zeros((4000, 1, 3)), np.zeros(4000), np.zeros(4000))
    assert light.unreliable() == []
    _print_reliability(light)
    assert capsys.readouterr().out == ""


def test_cli_train_prints_the_coverage_table(tmp_path, capsys, both_wells):
    import mdtraj as md

    data = tmp_path / "md.h5"
    md.Trajectory(both_wells[:300].astype(np.float32), load("double_well").mdtraj_topology).save(str(data))
    config = tmp_path / "stages.toml"
    config.write_text('[[stage]]\nname = "ml"\nsteps = 20\nbatch_size = 64\n')
    assert main(["train", "double_well", "--data", str(data), "--config", str(config), "--n-blocks", "2",
                 "--hidden", "16", "--coverage-samples", "2000", "--rc", "distance:0,0", "-o",
                 str(tmp_path / "m.bg")]) == 2  # a bad --rc is refused before any work
    assert "--rc: 'distance:0,0': the atoms (0, 0) repeat an atom" in capsys.readouterr().err
    assert not (tmp_path / "m.bg").exists()
    assert main(["train", "double_well", "--data", str(data), "--config", str(config), "--n-blocks", "2",
                 "--hidden", "16", "--coverage-samples", "2000", "-o", str(tmp_path / "m.bg")]) == 0
    out = capsys.readouterr().out
    assert "check on 2000 samples" in out and "coverage of the training data (k-means on coordinates; 300 frames" in out
    # free-energy with the states of a TOML file (two states: compared without naming them)
    toml = tmp_path / "states.toml"
    toml.write_text('[coordinates]\nx = "distance:0,0"\n')
    assert main(["free-energy", str(tmp_path / "m.bg"), "--states", str(toml), "-o", str(tmp_path / "fe")]) == 2
    assert "states.toml: [coordinates] x: 'distance:0,0'" in capsys.readouterr().err
    toml.write_text('[states]\nwide = "x1 < 5"\nall = { x1 = [-5, 6], x2 = ["-inf", "inf"] }\n')
    assert main(["free-energy", str(tmp_path / "m.bg"), "--states", str(toml), "-n", "2000", "--bootstrap", "5",
                 "-o", str(tmp_path / "fe")]) == 0
    assert "A(all) - A(wide)" in capsys.readouterr().out


def test_cli_free_energy_with_user_states_equals_the_builtin_states(tmp_path, capsys):
    """On the shipped alanine model: --state definitions of C7eq/C7ax by residue give exactly the numbers of
    the built-in states, --profile takes an expression, and bad definitions are refused before sampling."""
    model = str(structure_path(PRETRAINED))
    common = ["-n", "10000", "--seed", "1", "--bootstrap", "20"]
    assert main(["free-energy", model, "--states", "C7eq,C7ax", *common, "-o", str(tmp_path / "a")]) == 0
    assert main(["free-energy", model, "--state", "eq:phi:2 not in (0, 2.2)", "--state", "ax:phi:2 in (0, 2.2)",
                 "--profile", "psi:2", *common, "-o", str(tmp_path / "b")]) == 0
    out = capsys.readouterr().out
    assert "A(ax) - A(eq)" in out and "profile along psi:2" in out
    builtin, user = (json.loads((tmp_path / k / "free_energy.json").read_text())["free_energy"] for k in "ab")
    assert user["delta_a_kT"] == builtin["delta_a_kT"] and user["error_kT"] == builtin["error_kT"]
    assert (user["n_a"], user["n_b"]) == (builtin["n_a"], builtin["n_b"])
    assert (tmp_path / "b" / "profile_psi_2.png").stat().st_size > 1000
    assert main(["free-energy", model, "--state", "eq:phi:9 < 0", "--state", "ax:phi:2 > 0", "-o",
                 str(tmp_path / "d")]) == 2
    err = capsys.readouterr().err
    assert "no residue 9" in err and "sampling" not in err
    assert main(["free-energy", model, "--state", "eq:phi:2 < 0", "-o", str(tmp_path / "d")]) == 2
    assert "name the two states to compare with --states A,B" in capsys.readouterr().err
