"""The plot helpers write real PNG files and leave the caller's matplotlib backend alone."""

from __future__ import annotations

import math
import sys

import matplotlib
import mdtraj
import numpy as np
import pytest

from openmm_bg.analysis.free_energy import free_energy_profile, free_energy_surface
from openmm_bg.analysis.samples import Samples
from openmm_bg.apps import plots
from openmm_bg.data import structure_path
from openmm_bg.systems import load

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def md_samples():
    ala = load("alanine_dipeptide")
    xyz = mdtraj.load(str(structure_path("models/alanine_dipeptide_vacuum_md.h5"))).xyz[::5]
    return Samples.unweighted(ala, xyz)


@pytest.fixture
def svg_backend():
    """A non-Agg backend chosen by the 'user' (as a notebook or GUI would), restored afterwards."""
    before = matplotlib.get_backend()
    matplotlib.use("svg")
    yield "svg"
    matplotlib.use(before)


def test_every_plot_writes_a_png_and_keeps_the_backend(md_samples, svg_backend, tmp_path):
    pyplot = sys.modules.get("matplotlib.pyplot")
    figures_before = pyplot.get_fignums() if pyplot is not None else None
    profile = free_energy_profile(md_samples, "phi", bins=30, n_bootstrap=5)
    surface = free_energy_surface(md_samples, "phi", "psi", bins=30)
    history = [{"step": k, "ml": 10.0 - 0.1 * k, "kl": 5.0 - 0.05 * k, "u_mean": -3.0} for k in range(20)]
    written = [
        plots.plot_free_energies([("B - A", 1.5, 0.2), ("C - A", -0.5, 0.1)], tmp_path / "bars.png",
                                 reference=1.4),
        plots.plot_profile(profile, tmp_path / "profile.png", exact=(profile.centers, profile.free_energy_kT)),
        plots.plot_surface(surface, tmp_path / "surface.png"),
        plots.plot_ramachandran([("MD", md_samples), ("MD again", md_samples)], tmp_path / "rama.png"),
        plots.plot_history(history, tmp_path / "history.png"),
    ]
    assert matplotlib.get_backend() == svg_backend
    for path in written:
        data = path.read_bytes()
        assert data[:8] == PNG_MAGIC and len(data) > 5000, path
    if pyplot is None:
        assert "matplotlib.pyplot" not in sys.modules  # the helpers never import pyplot
    else:
        assert pyplot.get_fignums() == figures_before  # nor register figures with it


def test_history_panels_follow_the_recipe(svg_backend, tmp_path):
    classic = [{"step": k, "ml": 10.0 - 0.1 * k, "kl": 5.0 - 0.05 * k, "u_mean": -3.0, "fab": None} for k in range(20)]
    assert [a for a, _ in plots.history_panels(classic)] == [
        "ML loss (-log p per frame)", "KL / FAB loss", "mean energy of samples (kT)"]
    # an adaptive run: NaN KL and energies, FAB loss, a held-out NLL and an ESS every few steps only
    adaptive = [{"step": k, "ml": 9.0, "kl": math.nan, "u_mean": math.nan, "fab": 8.0 if k >= 10 else math.nan,
                 "val_nll": 9.5 if k % 5 == 0 else None, "fab_ess": 0.3 if k in (10, 15) else None}
                for k in range(20)]
    panels = dict(plots.history_panels(adaptive))
    assert list(panels) == ["ML loss (-log p per frame)", "KL / FAB loss", "ESS/N of the FAB annealing batch"]
    assert [label for label, _, _ in panels["ML loss (-log p per frame)"]] == ["ML loss (training batch)",
                                                                              "held-out NLL"]
    (label, steps, values), = panels["KL / FAB loss"]
    assert label == "FAB loss" and steps.tolist() == list(range(10, 20)) and np.all(values == 8.0)
    assert panels["ESS/N of the FAB annealing batch"][0][1].tolist() == [10, 15]
    assert plots.plot_history(adaptive, tmp_path / "adaptive.png").read_bytes()[:8] == PNG_MAGIC
    with pytest.raises(ValueError, match="no finite loss"):
        plots.plot_history([{"step": 0, "ml": math.nan}], tmp_path / "empty.png")


def test_plot_ramachandran_refuses_no_panels(tmp_path):
    with pytest.raises(ValueError, match="panels is empty"):
        plots.plot_ramachandran([], tmp_path / "x.png")

