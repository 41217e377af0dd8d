"""Old import paths keep working after the layer move (same module objects, same classes)."""

import importlib

import pytest

import openmm_bg
from openmm_bg._compat import MOVED_MODULES


@pytest.mark.parametrize("old", sorted(MOVED_MODULES))
def test_old_module_path_is_the_new_module(old):
    assert importlib.import_module(old) is importlib.import_module(MOVED_MODULES[old])


def test_readme_era_imports():
    from openmm_bg.free_energy import state_free_energy
    from openmm_bg.generator import BoltzmannGenerator, ModelMismatchError  # noqa: F401

    from openmm_bg.analysis.free_energy import state_free_energy as new_sfe
    from openmm_bg.apps.plots import plot_history as new_plot
    from openmm_bg.energy import linlogcut
    from openmm_bg.training import linlogcut as new_cut
    from openmm_bg.training import plot_history

    assert state_free_energy is new_sfe and plot_history is new_plot and linlogcut is new_cut
    assert BoltzmannGenerator is openmm_bg.BoltzmannGenerator
    assert BoltzmannGenerator.__module__ == "openmm_bg.model.generator"


def test_unknown_attribute_still_raises():
    import openmm_bg.energy
    import openmm_bg.training

    with pytest.raises(AttributeError):
        openmm_bg.energy.no_such_name  # noqa: B018
    with pytest.raises(AttributeError):
        openmm_bg.training.no_such_name  # noqa: B018


def test_importing_the_mcmc_moves_prints_nothing():
    """openmmtools imports pymbar, whose import prints a JAX banner: users must not see it."""
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", "import openmm_bg.mcmc"], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert "JAX" not in out.stdout + out.stderr and "timeseries" not in out.stdout + out.stderr
