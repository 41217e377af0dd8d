"""Each package's ``__all__`` is its public API: every name resolves, and a star import gives exactly it."""

from __future__ import annotations

import importlib
import pkgutil

import pytest

import openmm_bg

PACKAGES = ["openmm_bg"] + sorted(
    m.name for m in pkgutil.walk_packages(openmm_bg.__path__, "openmm_bg.") if m.ispkg
    and not m.name.startswith("openmm_bg.data."))


@pytest.mark.parametrize("name", PACKAGES)
def test_all_lists_resolvable_names(name):
    package = importlib.import_module(name)
    assert isinstance(package.__all__, list), f"{name} has no __all__"
    assert len(set(package.__all__)) == len(package.__all__), f"{name}.__all__ repeats a name"
    missing = [n for n in package.__all__ if not hasattr(package, n)]
    assert not missing, f"{name}.__all__ names {missing}, which {name} does not define"
    namespace: dict = {}
    exec(f"from {name} import *", namespace)
    assert set(namespace) - {"__builtins__"} == set(package.__all__)


@pytest.mark.parametrize("module, names", [
    ("openmm_bg.flows.splines", ["knots", "rq_spline", "derivatives"]),
    ("openmm_bg.flows.builder", ["block_masks"]),
    ("openmm_bg.transforms.core", ["SO3_VOLUME", "Whitening", "frame_coordinates", "frame_positions"]),
    ("openmm_bg.transforms.dims", ["DOMAINS"]),
    ("openmm_bg.transforms.internal", ["bond_lengths", "bond_angles", "torsions", "place_atoms",
                                       "internal_coordinates"]),
])
def test_internals_stay_importable_from_their_modules(module, names):
    mod = importlib.import_module(module)
    assert all(hasattr(mod, n) for n in names)
    package = importlib.import_module(module.rsplit(".", 1)[0])
    assert not set(names) & set(package.__all__)  # but are not part of the package's API


def test_utility_modules_and_layer_entry_points_are_public():
    assert {"constants", "geometry", "systems", "simulate", "BoltzmannGenerator", "Samples"} <= set(openmm_bg.__all__)
    from openmm_bg import apps, systems

    assert {"run_demo", "plot_ramachandran", "plot_history"} <= set(apps.__all__)
    assert {"PeriodicSystemError", "require_nonperiodic"} <= set(systems.__all__)
