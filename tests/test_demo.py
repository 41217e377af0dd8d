"""`openmm-bg demo`: the smoke mode end to end, and the shipped pretrained generator."""

import json
from pathlib import Path

import numpy as np
import pytest

import openmm_bg
from openmm_bg.apps.cli import main
from openmm_bg.apps.demo import PRETRAINED, REFERENCE_DELTA_A_KT
from openmm_bg.data import structure_path
from openmm_bg.systems import load

REFERENCE = Path(__file__).resolve().parents[1] / "benchmarks" / "reference" / "alanine_reference.json"


def test_demo_quick_writes_plots_and_summary(tmp_path, capsys):
    assert main(["demo", "--quick", "--seed", "3", "-o", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "[1/4] MD of alanine dipeptide" in out and "effective sample size" in out
    assert "A(C7ax) - A(C7eq)" in out
    for name in ("ramachandran.png", "profile_phi.png"):
        assert (tmp_path / name).stat().st_size > 5000
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["n_samples"] == 5000
    assert 0 < summary["diagnostics"]["ess"] <= 5000
    assert summary["timings_s"]["total"] > 0 and (tmp_path / "model.bg").exists()


def test_shipped_generator_matches_the_builtin_system_and_the_reference(tmp_path, capsys):
    """The pretrained demo model loads against the built-in system (fingerprint checked on load), keeps
    the chirality, and its reweighted samples give the reference Delta A within the stated error."""
    system = load("alanine_dipeptide")
    gen = openmm_bg.BoltzmannGenerator.load(structure_path(PRETRAINED), system)
    samples = gen.sample(20_000, seed=11, progress=False)
    diag = samples.diagnostics(warn=False)
    assert samples.counts["inverted_chirality"] == 0 and samples.counts["out_of_domain"] < 20
    assert diag.ess_fraction > 0.05, diag
    from openmm_bg.analysis.free_energy import state_free_energy

    fe = state_free_energy(samples, "C7eq", "C7ax", warn=False, seed=0)
    reference = json.loads(REFERENCE.read_text())["vacuum"]
    # the value the demo prints is the committed reference
    assert REFERENCE_DELTA_A_KT == pytest.approx((reference["delta_a_kT"], reference["error_kT"]), abs=0.006)
    tolerance = 4 * np.hypot(fe.error_kT, reference["error_kT"]) + 0.2
    assert fe.delta_a_kT == pytest.approx(reference["delta_a_kT"], abs=tolerance)
    # and the default demo runs on it without training
    assert main(["demo", "--samples", "5000", "-o", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "loading the pretrained generator" in out and "[1/4] MD" not in out
    assert json.loads((tmp_path / "summary.json").read_text())["n_samples"] == 5000


def test_c7ax_restraint_is_zero_inside_the_basin_and_a_flat_bottom_wall_outside():
    """The training-data restraint of the implicit-solvent benchmark: the system's own energy for
    phi inside the flat bottom, 0.5 k (|phi - centre| - half width)^2 on the circle outside."""
    import mdtraj

    from openmm_bg.apps import demo
    from openmm_bg.energy import energy_for
    from openmm_bg.systems.alanine import C7AX_RESTRAINT_PHI, c7ax_restrained

    assert demo.c7ax_restrained is c7ax_restrained and demo.C7AX_RESTRAINT_PHI == C7AX_RESTRAINT_PHI  # compat

    ala = load("alanine_dipeptide")
    xyz = mdtraj.load(str(structure_path("models/alanine_dipeptide_vacuum_md.h5"))).xyz[::10].astype(np.float64)
    phi = ala.reaction_coordinates["phi"](xyz)
    lo, hi = C7AX_RESTRAINT_PHI
    assert (phi < lo).any() and ((phi > lo) & (phi < hi)).any()  # frames on both sides
    k = 250.0
    diff = (energy_for(c7ax_restrained(ala, k_kj_per_mol=k), platform="Reference")(xyz)
            - energy_for(ala, platform="Reference")(xyz)).numpy()
    distance = np.abs(np.angle(np.exp(1j * (phi - 0.5 * (lo + hi)))))
    expected = 0.5 * k * np.maximum(0.0, distance - 0.5 * (hi - lo)) ** 2 / ala.kT
    np.testing.assert_allclose(diff, expected, rtol=1e-6, atol=1e-6)
    assert diff.max() > 10.0
